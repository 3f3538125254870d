"""The cycle-level simulator against the NumPy backend, side by side (SPEC §10).

Both backends run the same artefact: a JSB-size network (Woźniak et al. 2020: 88 piano
keys in, a layer of 150 spiking SNUs with per-neuron decay, 88 sigmoid outputs) built with
the IR ``Graph`` API and compiled for ``pcm-256x256`` by the default pipeline (no ONNX or
PyTorch needed). Inputs are piano-roll-like spikes (5 % of the keys), ``T = 128`` steps,
at batch 1 and 64, in every mode. Each time is the best of several runs after a warm-up
(plans are built once, as ``Artefact.run`` caches them), the two backends timed in turn;
the ratio is simulator over NumPy (the goal: at most 5).

Runs and BLAS use one thread unless ``--threads`` says otherwise (set before NumPy loads): the
simulator's per-timestep products are small, and a multi-threaded BLAS on a busy machine
makes both backends' times noisy.

Usage::

    python bench/simulator.py                 # float, quantized, pcm at batch 1 and 64
    python bench/simulator.py --modes pcm --batches 1 --steps 256
    python bench/simulator.py --json
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import sys
import time

PIANO_KEYS = 88
HIDDEN = 150


def build_artefact(target_name: str, seed: int = 0):
    """The 88-150-88 SNU network, compiled into an in-memory artefact."""
    import numpy as np

    from snuc.backends.asm import print_program
    from snuc.backends.program import emit_program
    from snuc.backends.schedule import schedule_graph
    from snuc.driver import build_report, lower
    from snuc.ir import Graph, TensorType
    from snuc.ir.ops import Add, Dense, Sigmoid, SNULayer
    from snuc.ir.target import parse_target
    from snuc.runtime.artefact import Artefact

    rng = np.random.default_rng(seed)
    g = Graph("jsb_snu")
    x = g.add_input("x", TensorType("f32", ("B", PIANO_KEYS)))
    w1 = rng.standard_normal((PIANO_KEYS, HIDDEN)) * 2 / np.sqrt(PIANO_KEYS)
    w2 = rng.standard_normal((HIDDEN, PIANO_KEYS)) / np.sqrt(HIDDEN)
    g.add_constant("W1", w1.astype(np.float32))
    g.add_constant("W2", w2.astype(np.float32))
    g.add_constant("decay", rng.uniform(0.6, 0.95, HIDDEN).astype(np.float32))
    g.add_constant("bias", (-0.5 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32))
    g.add_constant("b2", (0.1 * rng.standard_normal(PIANO_KEYS)).astype(np.float32))
    s = g.add_state("s", TensorType("f32", ("B", HIDDEN)))
    y = g.add_state("y", TensorType("f32", ("B", HIDDEN)))
    (a,) = g.add_node(Dense(), (x, "W1"), "a")
    s_next, y_next = g.add_node(SNULayer(), (a, s, y, "decay", "bias"), ("s_next", "y_next"))
    g.set_next(s, s_next)
    g.set_next(y, y_next)
    (logits,) = g.add_node(Dense(), (y_next, "W2"), "logits")
    (shifted,) = g.add_node(Add(), (logits, "b2"), "shifted")
    (p,) = g.add_node(Sigmoid(), (shifted,), "p")
    g.outputs = [p]
    target = parse_target(target_name)
    graph = lower(g, target)
    schedule = schedule_graph(graph, target)
    return Artefact(
        graph=graph,
        target=target.to_dict(),
        report=build_report(graph, target, schedule),
        program=print_program(emit_program(graph, schedule)),
        source="jsb_snu (bench/simulator.py)",
    )


def best_seconds(runs: dict[str, object], min_seconds: float, min_runs: int) -> dict[str, float]:
    """The best wall time of each ``runs[name]()``, timed in turn (so a change in the
    machine's load hits both alike) at least ``min_runs`` times and ``min_seconds`` each."""
    for run in runs.values():
        run()  # warm-up: builds and caches the plan
    best = dict.fromkeys(runs, float("inf"))
    total = dict.fromkeys(runs, 0.0)
    count = 0
    while count < min_runs or min(total.values()) < min_seconds:
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            elapsed = time.perf_counter() - start
            best[name] = min(best[name], elapsed)
            total[name] += elapsed
        count += 1
    return best


def measure(args: argparse.Namespace) -> list[dict]:
    import numpy as np

    art = build_artefact(args.target)
    rows = []
    for batch in args.batches:
        x = (np.random.default_rng(1).random((args.steps, batch, PIANO_KEYS)) < 0.05).astype(
            np.float32
        )
        for mode in args.modes:
            # One artefact object per backend: an artefact caches one plan at a time.
            arts = {backend: dataclasses.replace(art) for backend in ("numpy", "sim")}
            runs = {
                backend: functools.partial(a.run, x, backend=backend, mode=mode)
                for backend, a in arts.items()
            }
            seconds = best_seconds(runs, args.min_seconds, args.min_runs)
            stats = arts["sim"].last_stats
            rows.append(
                {
                    "mode": mode,
                    "batch": batch,
                    "steps": args.steps,
                    "numpy_ms": seconds["numpy"] * 1e3,
                    "sim_ms": seconds["sim"] * 1e3,
                    "ratio": seconds["sim"] / seconds["numpy"],
                    "numpy_seq_per_s": batch / seconds["numpy"],
                    "sim_seq_per_s": batch / seconds["sim"],
                    "cycles_per_timestep": stats.cycles_per_timestep,
                    "energy_pj_per_timestep": stats.energy_pj_per_timestep,
                }
            )
    return rows


def table(rows: list[dict]) -> str:
    head = (
        "| mode      | batch | numpy ms | sim ms  | sim / numpy | numpy seq/s | sim seq/s "
        "| cycles/step | pJ/step |"
    )
    rule = (
        "|-----------|-------|----------|---------|-------------|-------------|-----------"
        "|-------------|---------|"
    )
    lines = [head, rule]
    for r in rows:
        lines.append(
            f"| {r['mode']:<9} | {r['batch']:>5} | {r['numpy_ms']:>8.2f} | {r['sim_ms']:>7.2f} "
            f"| {r['ratio']:>11.2f} | {r['numpy_seq_per_s']:>11.1f} | {r['sim_seq_per_s']:>9.1f} "
            f"| {r['cycles_per_timestep']:>11} | {r['energy_pj_per_timestep']:>7.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="pcm-256x256")
    parser.add_argument("--modes", default="float,quantized,pcm")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--min-runs", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads of every run (SNUC_THREADS) and of BLAS, set before NumPy loads",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    args.batches = [int(b) for b in args.batches.split(",") if b]
    if "numpy" in sys.modules:
        print("warning: NumPy already loaded; --threads may not apply", file=sys.stderr)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "SNUC_THREADS"):
        os.environ[var] = str(args.threads)
    rows = measure(args)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    import numpy as np

    print(
        f"{args.target}, JSB-size {PIANO_KEYS}-{HIDDEN}-{PIANO_KEYS} SNU network, "
        f"T = {args.steps}; Python {platform.python_version()}, NumPy {np.__version__}, "
        f"threads {args.threads} (runs and BLAS)"
    )
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
