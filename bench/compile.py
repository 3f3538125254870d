"""Compile time and peak memory against model size, 10^4 to 10^8 weights (SPEC §10).

Each size is a synthetic SNU network built directly with the IR ``Graph`` API (not through
ONNX, so the numbers measure the compiler's passes, not the importer): ``LAYERS`` square
``xbar.dense`` layers of ``d x d`` float32 weights, each feeding an ``snu.layer`` whose
spikes feed the next. The default pipeline (``--until PASS``: up to that pass) and the
mapping report run for ``pcm-256x256`` (then, as ``snuc compile`` does, the schedule and
the simulator program) with as many chips as the model needs; a second
table gives each pass's time.

Every size runs in a fresh Python process, so its peak resident memory (``ru_maxrss``) is
its own. The table gives the time to build the model (drawing the random weights); the
wall time of the pipeline plus the mapping report; the peak memory of the whole process;
and that peak over the weights' float32 size, ``W``. ``growth / W`` leaves out the
process's footprint before the model was built (the interpreter, NumPy). Goal:
10^8 weights in under a minute with a peak under 3x ``W``, so no pass may copy weights.

Usage::

    python bench/compile.py                       # 10^4 .. 10^7 weights
    python bench/compile.py --max-weights 1e8     # up to 10^8 (about 1 GB of memory)
    python bench/compile.py --until place         # the mapping passes only, no quantize
    python bench/compile.py --json
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

LAYERS = 4
"""Dense + SNU layers in each synthetic network."""


def _rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build_model(weights: int, seed: int = 0):
    """An SNU network of :data:`LAYERS` square dense layers with about ``weights`` weights."""
    import numpy as np

    from snuc.ir import Graph, TensorType
    from snuc.ir.ops import Dense, SNULayer

    d = max(1, round(math.sqrt(weights / LAYERS)))
    rng = np.random.default_rng(seed)
    graph = Graph(f"bench_{weights}")
    x = graph.add_input("x", TensorType("f32", ("B", d)))
    decay = graph.add_constant("decay", np.float32(0.8))
    bias = graph.add_constant("bias", np.float32(-1.0))
    for i in range(LAYERS):
        # Drawn directly as float32 and handed over without a copy: the model itself
        # holds each weight once.
        w = rng.standard_normal((d, d), dtype=np.float32)
        w *= 1 / math.sqrt(d)
        graph.add_constant(f"w{i}", w, copy=False)
        s_prev = graph.add_state(f"s{i}", TensorType("f32", ("B", d)))
        y_prev = graph.add_state(f"y{i}", TensorType("f32", ("B", d)))
        (a,) = graph.add_node(Dense(), (x, f"w{i}"), f"a{i}")
        s, y = graph.add_node(
            SNULayer(), (a, s_prev, y_prev, decay, bias), (f"s{i}_new", f"y{i}_new")
        )
        graph.set_next(s_prev, s)
        graph.set_next(y_prev, y)
        x = y
    graph.outputs = [x]
    return graph, LAYERS * d * d, d


def measure(weights: int, target_name: str, until: str) -> dict:
    """Build one model and compile it; the row of the table (run in a fresh process)."""
    from snuc.backends.asm import print_program
    from snuc.backends.program import emit_program
    from snuc.backends.schedule import schedule_graph
    from snuc.ir.target import parse_target, with_overrides
    from snuc.passes import DEFAULT_PIPELINE, get_pass, run_pipeline
    from snuc.passes.placement import crossbars_bound
    from snuc.passes.report import mapping_report

    baseline = _rss_bytes()
    start = time.perf_counter()
    graph, n_weights, d = build_model(weights)
    build_seconds = time.perf_counter() - start
    target = parse_target(target_name)
    bound = crossbars_bound([(d, d)] * LAYERS, target)
    target = with_overrides(target, chips=max(1, math.ceil(bound / target.cores)))
    names = list(DEFAULT_PIPELINE)
    if until:
        names = names[: names.index(until) + 1]
    passes = [get_pass(name)() for name in names]

    marks = [("start", time.perf_counter())]
    mapped = run_pipeline(
        graph, target, passes, after=lambda name, _: marks.append((name, time.perf_counter()))
    )
    report = mapping_report(mapped, target)
    marks.append(("report", time.perf_counter()))
    if not until:
        # What snuc compile does after the passes: schedule, emit and print the program.
        schedule = schedule_graph(mapped, target)
        marks.append(("schedule", time.perf_counter()))
        print_program(emit_program(mapped, schedule))
        marks.append(("program", time.perf_counter()))
    seconds = marks[-1][1] - marks[0][1]
    # Each pass's time includes the verification run_pipeline does after it.
    pass_seconds = [(name, t - marks[i][1]) for i, (name, t) in enumerate(marks[1:])]

    peak = _rss_bytes()
    size = 4 * n_weights
    return {
        "weights": n_weights,
        "layers": f"{LAYERS} x {d}x{d}",
        "tiles": len(report["tiles"]),
        "crossbars": report["crossbars_used"],
        "chips": report["chips"],
        "utilization": report["utilization"],
        "seconds": seconds,
        "build_seconds": build_seconds,
        "peak_mib": peak / 2**20,
        "baseline_mib": baseline / 2**20,
        "peak_over_weights": peak / size,
        "growth_over_weights": (peak - baseline) / size,
        "passes": names,
        "pass_seconds": pass_seconds,
    }


def _sizes(max_weights: int) -> list[int]:
    return [10**k for k in range(4, 9) if 10**k <= max_weights]


def _table(rows: list[dict]) -> str:
    head = [
        "weights",
        "layers",
        "tiles",
        "crossbars",
        "chips",
        "util",
        "build s",
        "compile s",
        "peak MiB",
        "peak / W",
        "growth / W",
    ]
    body = [
        [
            f"{r['weights']:,}",
            r["layers"],
            f"{r['tiles']:,}",
            f"{r['crossbars']:,}",
            str(r["chips"]),
            f"{r['utilization']:.1%}",
            f"{r['build_seconds']:.2f}",
            f"{r['seconds']:.2f}",
            f"{r['peak_mib']:,.0f}",
            f"{r['peak_over_weights']:.2f}",
            f"{r['growth_over_weights']:.2f}",
        ]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += [
        "| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in body
    ]
    return "\n".join(lines)


def _pass_table(rows: list[dict]) -> str:
    """Seconds per pass (each with its verification), one column per size."""
    head = ["pass", *(f"{r['weights']:.0e}" for r in rows)]
    names = [name for name, _ in rows[-1]["pass_seconds"]]
    body = [
        [name, *(f"{r['pass_seconds'][i][1]:.3f}" for r in rows)] for i, name in enumerate(names)
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += [
        "| "
        + " | ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        + " |"
        for row in body
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--max-weights",
        type=float,
        default=1e7,
        help="largest model, in weights (powers of ten from 1e4 up to this; default 1e7)",
    )
    parser.add_argument("--target", default="pcm-256x256", help="target name (default pcm-256x256)")
    parser.add_argument(
        "--until",
        default="",
        help="stop after this pass of the default pipeline (e.g. place: mapping only)",
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child: one size
    args = parser.parse_args(argv)
    if args.until:
        from snuc.passes import DEFAULT_PIPELINE

        if args.until not in DEFAULT_PIPELINE:
            parser.error(f"--until {args.until}: expected one of {', '.join(DEFAULT_PIPELINE)}")

    if args.one is not None:
        print(json.dumps(measure(args.one, args.target, args.until)))
        return 0
    rows = []
    for weights in _sizes(int(args.max_weights)):
        child = subprocess.run(
            [
                *(sys.executable, __file__, "--one", str(weights)),
                *("--target", args.target, "--until", args.until),
            ],
            capture_output=True,
            text=True,
        )
        if child.returncode != 0:
            sys.stderr.write(child.stderr)
            return child.returncode
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        if not args.json:
            print(f"{weights:.0e} weights: {rows[-1]['seconds']:.2f} s", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        print(f"target {args.target}; passes: {', '.join(rows[0]['passes'])}")
        print(_table(rows))
        print("\nseconds per pass (including the verification after it):")
        print(_pass_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
