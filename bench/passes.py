"""Pass time against graph size: canonicalize, lift-snu and tile at 10^3 and 10^4 nodes.

Each size is a chain of SNU layers built with the IR ``Graph`` API in the spelling an
exporter writes (nine nodes a layer, so the graph has about the requested number of
nodes)::

    a = xbar.dense(x, W)                       W: [d, d], one tile each
    p = dig.mul(dig.mul(l, s_prev), dig.sub(1, y_prev))
    s = dig.relu(dig.add(a, p))
    y = dig.cast(dig.greater(dig.sub(s, thr), 0))

``canonicalize`` rewrites every spike twice (the comparison into a step, then the
``s - thr`` under it into ``s + (-thr)``: two sweeps of rewrites), ``lift-snu`` lifts every
layer into one ``snu.layer`` and ``tile`` cuts every dense into tiles; the other passes of
the default pipeline (up to ``quantize``) follow. Each pass runs on the previous one's
output, as in the default pipeline, timed alone (no verification); the best of
``--repeat`` runs counts. The ratio column is the 10^4-node time over the
10^3-node time: 10 for a pass linear in the graph, 100 for a quadratic one (goal: at
most 15). Timed runs follow timeit's convention and pause the garbage collector (a full
collection scans every object of the process, the other graphs included). The calls
ratio is the same ratio for the Python function calls of one run (cProfile): the pass's
work, which a shared machine's load does not disturb.

``--relus N ...`` also times ``snuc compile`` (the whole command, in a fresh process) on a
stateless ONNX step model of N chained Relus, the case issue 16 measured.

Usage::

    python bench/passes.py                     # 10^3 and 10^4 nodes
    python bench/passes.py --relus 1000 3000   # and snuc compile on chained Relus
    python bench/passes.py --json
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NODES_PER_LAYER = 9
"""Nodes of one SNU layer as :func:`build_chain` spells it."""

PASSES = ("canonicalize", "lift-snu", "dead-code", "lower-conv", "tile", "place", "quantize")
"""The passes timed: the default pipeline's, in its order (the goal is set for canonicalize,
lift-snu and tile; the others only carry the graph along, where they cost a copy)."""


def build_chain(nodes: int, width: int = 8, seed: int = 0):
    """A chain of SNU layers in exporter spelling with about ``nodes`` nodes."""
    import numpy as np

    from snuc.ir import Graph, TensorType
    from snuc.ir.ops import Add, Cast, Dense, Greater, Mul, Relu, Sub

    rng = np.random.default_rng(seed)
    graph = Graph(f"chain_{nodes}")
    row = TensorType("f32", ("B", width))
    x = graph.add_input("x", row)
    one = graph.add_constant("one", np.float32(1.0))
    zero = graph.add_constant("zero", np.float32(0.0))
    decay = graph.add_constant("decay", np.float32(0.8))
    threshold = graph.add_constant("thr", np.float32(0.5))
    for i in range(max(1, round(nodes / NODES_PER_LAYER))):
        w = graph.add_constant(f"w{i}", rng.standard_normal((width, width), dtype=np.float32))
        s_prev = graph.add_state(f"s{i}", row)
        y_prev = graph.add_state(f"y{i}", row)
        (a,) = graph.add_node(Dense(), (x, w), f"a{i}")
        (reset,) = graph.add_node(Sub(), (one, y_prev), f"r{i}")
        (kept,) = graph.add_node(Mul(), (decay, s_prev), f"k{i}")
        (product,) = graph.add_node(Mul(), (kept, reset), f"p{i}")
        (pre,) = graph.add_node(Add(), (a, product), f"pre{i}")
        (s,) = graph.add_node(Relu(), (pre,), f"s{i}_new")
        (shifted,) = graph.add_node(Sub(), (s, threshold), f"u{i}")
        (fired,) = graph.add_node(Greater(), (shifted, zero), f"f{i}")
        (y,) = graph.add_node(Cast(to="f32"), (fired,), f"y{i}_new")
        graph.set_next(s_prev, s)
        graph.set_next(y_prev, y)
        x = y
    graph.outputs = [x]
    return graph


def time_passes(nodes: int, repeat: int) -> dict:
    """Seconds of each pass of :data:`PASSES` on a chain of about ``nodes`` nodes."""
    from snuc.ir.target import parse_target
    from snuc.passes import get_pass

    target = parse_target("pcm-256x256")
    graph = build_chain(nodes)
    row = {"nodes": len(graph), "seconds": {}, "calls": {}}
    for name in PASSES:
        best, out = float("inf"), graph
        for _ in range(repeat):
            gc.collect()
            gc.disable()  # as timeit does: a full collection scans the whole process
            start = time.perf_counter()
            out = get_pass(name)().run(graph, target)
            best = min(best, time.perf_counter() - start)
            gc.enable()
        row["seconds"][name] = best
        row["calls"][name] = count_calls(name, graph, target)
        graph = out
    return row


def count_calls(name: str, graph, target) -> int:
    """Python function calls one run of pass ``name`` makes: a measure of its work that,
    unlike its time, a shared machine does not disturb."""
    from snuc.passes import get_pass

    profile = cProfile.Profile()
    profile.enable()
    get_pass(name)().run(graph, target)
    profile.disable()
    return pstats.Stats(profile).total_calls


def relu_chain_model(length: int, path: Path) -> None:
    """Write a stateless ONNX step model ``y = relu(relu(... relu(x)))`` of ``length`` Relus."""
    import onnx
    from onnx import TensorProto, helper

    names = ["x", *(f"r{i}" for i in range(length - 1)), "y"]
    nodes = [
        helper.make_node("Relu", [names[i]], [names[i + 1]], name=f"relu{i}") for i in range(length)
    ]
    graph = helper.make_graph(
        nodes,
        "relu_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, path)


def time_compile(length: int) -> float:
    """Wall seconds of ``snuc compile`` on :func:`relu_chain_model` of ``length`` Relus."""
    snuc = Path(sys.executable).with_name("snuc")
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / f"relus_{length}.onnx"
        relu_chain_model(length, model)
        start = time.perf_counter()
        subprocess.run(
            [str(snuc), "compile", str(model), "-o", str(Path(tmp) / "out.snuc")],
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - start


def _table(rows: list[dict]) -> str:
    """Seconds per pass, one column per size, and the last size's over the first's."""
    head = ["pass", *(f"{r['nodes']:,} nodes s" for r in rows)]
    body = [[name, *(f"{r['seconds'][name]:.3f}" for r in rows)] for name in PASSES]
    if len(rows) > 1:
        head += ["ratio", "calls ratio"]
        for line, name in zip(body, PASSES, strict=True):
            first, last = rows[0], rows[-1]
            line.append(f"{last['seconds'][name] / first['seconds'][name]:.1f}x")
            line.append(f"{last['calls'][name] / first['calls'][name]:.2f}x")
    widths = [max(map(len, column)) for column in zip(head, *body, strict=True)]

    def line(cells: list[str]) -> str:
        padded = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), rule, *map(line, body)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--nodes",
        type=float,
        nargs="+",
        default=[1e3, 1e4],
        help="graph sizes in nodes (default 1e3 1e4; the ratio is the last over the first)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per pass; the best counts")
    parser.add_argument(
        "--relus",
        type=int,
        nargs="*",
        default=[],
        help="also time snuc compile on these numbers of chained Relus (e.g. 1000 3000)",
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)

    rows = [time_passes(int(n), args.repeat) for n in args.nodes]
    compiles = {length: time_compile(length) for length in args.relus}
    if args.json:
        print(json.dumps({"passes": rows, "snuc_compile_relus": compiles}, indent=2))
        return 0
    print(f"seconds per pass (best of {args.repeat}), chained SNU layers:")
    print(_table(rows))
    for length, seconds in compiles.items():
        print(f"snuc compile, {length:,} chained Relus: {seconds:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
