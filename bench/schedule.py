"""Schedule quality: cycles per timestep against the lower bound (SPEC §10).

    python bench/schedule.py [--target pcm-256x256]

For the shipped example models and a 7-layer MNIST-size SNU network (784-256x6-10,
built with the IR API so the script needs no torch), prints each compiled model's
crossbars, initiation interval (``cycles_per_timestep``), ``cycles_lower_bound``, their
ratio (goal <= 1.10), latency and energy per timestep, straight from ``report.json``, for
both placements: ``pack`` (fewest crossbars) and ``spread`` (a crossbar per tile); and,
packed, with tile duplication ``--duplicate 2`` and ``4`` (copies of the busy crossbars,
docs/isa.md), where the target has the crossbars for them (a row says so otherwise).
"""

from __future__ import annotations

import argparse
import itertools
import math
from pathlib import Path

import numpy as np

from snuc.backends.schedule import schedule_graph
from snuc.driver import build_report, lower, resolve_target
from snuc.frontend.onnx_import import import_onnx
from snuc.ir import Graph, SnucError, TensorType
from snuc.ir.ops import Dense, SNULayer
from snuc.passes.placement import PLACEMENTS
from snuc.reporting import format_table

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

DUPLICATES = (2, 4)
"""``--duplicate`` factors measured beside the plain placements."""


def mnist_size_network(sizes: tuple[int, ...] = (784, 256, 256, 256, 256, 256, 256, 10)) -> Graph:
    """A feed-forward SNU stack of ``sizes`` (7 weight layers by default), random weights."""
    rng = np.random.default_rng(0)
    graph = Graph("mnist_snu7")
    x = graph.add_input("x", TensorType("f32", ("B", sizes[0])))
    decay = graph.add_constant("decay", np.float32(0.8))
    bias = graph.add_constant("bias", np.float32(-1.0))
    for i, (n_in, n) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = (rng.standard_normal((n_in, n)) / math.sqrt(n_in)).astype(np.float32)
        graph.add_constant(f"w{i}", w)
        s_prev = graph.add_state(f"s{i}", TensorType("f32", ("B", n)))
        y_prev = graph.add_state(f"y{i}", TensorType("f32", ("B", n)))
        (a,) = graph.add_node(Dense(), (x, f"w{i}"), f"a{i}")
        s, y = graph.add_node(SNULayer(), (a, s_prev, y_prev, decay, bias), (f"s{i}n", f"y{i}n"))
        graph.set_next(s_prev, s)
        graph.set_next(y_prev, y)
        x = y
    graph.outputs = [x]
    return graph


def models() -> dict[str, Graph]:
    found = {"snu_small": import_onnx(EXAMPLES / "snu_small.onnx")}
    for path in sorted((EXAMPLES / "models").glob("*.onnx")):
        found[path.stem] = import_onnx(path)
    found["mnist-size 784-256x6-10 (IR)"] = mnist_size_network()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="pcm-256x256")
    args = parser.parse_args()
    rows = []
    target = resolve_target(args.target)
    options = [(p, 1) for p in PLACEMENTS] + [("pack", k) for k in DUPLICATES]
    for (name, graph), (placement, k) in itertools.product(models().items(), options):
        try:
            lowered = lower(graph, target, placement=placement, duplicate=k)
        except SnucError as e:  # not enough crossbars for the copies
            needed = str(e).split(" crossbars")[0].rsplit(" ", 1)[-1]
            rows.append([name, placement, k, f"({needed} needed)", *["-"] * 5])
            continue
        report = build_report(lowered, target, schedule_graph(lowered, target))
        ii, bound = report["cycles_per_timestep"], report["cycles_lower_bound"]
        rows.append(
            [
                name,
                placement,
                k,
                report["crossbars_used"],
                ii,
                bound,
                f"{ii / bound:.3f}",
                report["latency_cycles"],
                f"{report['energy_pj_per_timestep']['total'] / 1000:.1f}",
            ]
        )
    header = [
        "model",
        "placement",
        "duplicate",
        "crossbars",
        "II (cycles)",
        "lower bound",
        "II / bound",
        "latency",
        "nJ/step",
    ]
    print(f"target {args.target}")
    print(format_table(header, rows), end="")


if __name__ == "__main__":
    main()
