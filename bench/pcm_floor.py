"""The measured floor of a pcm run of the runtime benchmark's networks, against snuc's time.

Issue 17 allows, in place of pcm at 10x aihwkit, a note of the floor and how far from it
snuc stands. A pcm run of a network at batch B over T steps must, for every crossbar tile
of its compiled artefact (``rows`` x ``cols`` weights, read from the artefact's report, as
compiled for ``pcm-256x256``), read ``M = T * B`` input rows:

* the column currents, ``[M, rows] @ [rows, cols]`` in float64 (exact before the ADC);
* the read-noise variance, the same product in float32 (SPEC §6 allows it);
* ``M * cols`` standard normals, float32.

This script times that work with NumPy alone, on the networks of bench/runtime.py (JSB
88-150-88, T = 128; MNIST 784-256x6-10, T = 20) at batch 64, two ways:

* **floor at peak**: the multiply-adds at BLAS's peak rate (a ``[1024, 1024]`` product of
  each dtype) and the normals at the generator's peak rate (2^22 at once); with several
  threads BLAS uses them all and the normals are drawn in as many parts, one generator and
  thread each (NumPy's generators release the GIL);
* **floor in its shapes**: each tile's two products and its normals timed as they come
  (small products run below BLAS's peak);

and runs snuc's pcm mode (``Plan.run`` of the NumPy backend, the plan built once) on the
same network and batch, with read noise drawn ahead on a thread of its own where the run
cannot split its batch (the default) and inline on the run's threads ("inline"; a batch
split over two threads still runs on two). Everything is timed round-robin, best of ``--repeats``
(bench/runtime.py's loop). What is not in the floor: the DAC and ADC's element-wise
passes, the neurons, the readout; snuc may leave out rows without a spike, which the floor
counts (the benchmark's MNIST network falls silent from its fourth layer).

Usage::

    python bench/pcm_floor.py --threads 1,2 --repeats 7
    python bench/pcm_floor.py --json
"""

from __future__ import annotations

import argparse
import os
import sys

from threads import parse_with_threads, per_thread_runs, pin_threads


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="sequences per run")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (best is kept)")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per repeat")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    return parse_with_threads(parser)


ARGS = _arguments() if __name__ == "__main__" else None
if ARGS is not None:
    pin_threads(ARGS.threads)

import json  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from runtime import (  # noqa: E402
    NETWORKS,
    TARGET,
    _table,
    best_time,
    machine,
    plan_run,
    spike_input,
)

PEAK_SIZE = 1024
"""Side of the square products that measure BLAS's peak rate."""
PEAK_NORMALS = 1 << 22
"""Normals per draw that measure the generator's peak rate."""


def compiled(name: str, workdir: Path):
    """``name``'s benchmark network compiled for :data:`TARGET` (an Artefact)."""
    from runtime import compile_network
    from snuc import driver

    path = compile_network(name, workdir)[1]
    return driver.compile_model(path, TARGET)


def tile_shapes(report: dict) -> list[dict]:
    """Each tile's layer and weight ``rows`` x ``cols`` from the artefact's report (its
    ``cols`` count devices: two per weight per device of a polarity, SPEC §5)."""
    per_weight = 2 * report["target"]["devices_per_polarity"]
    tiles = [
        {"layer": t["layer"], "rows": t["rows"], "cols": t["cols"] // per_weight}
        for t in report["tiles"]
    ]
    for layer in report["layers"]:  # the tiles cover every weight once
        covered = sum(t["rows"] * t["cols"] for t in tiles if t["layer"] == layer["layer"])
        assert covered == layer["weights"], (layer, covered)
    return tiles


class Normals:
    """Draws of float32 standard normals on ``threads`` threads, one generator each."""

    def __init__(self, threads: int) -> None:
        self.generators = [np.random.default_rng(seed) for seed in range(threads)]
        self.pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def drawer(self, count: int) -> Callable[[], None]:
        """A function that draws ``count`` normals into a buffer of its own."""
        out = np.empty(count, np.float32)
        if self.pool is None:
            generator = self.generators[0]
            return lambda: generator.standard_normal(dtype=np.float32, out=out)
        bounds = np.linspace(0, count, len(self.generators) + 1).astype(int)
        parts = [out[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

        def draw() -> None:
            futures = [
                self.pool.submit(g.standard_normal, dtype=np.float32, out=part)
                for g, part in zip(self.generators, parts, strict=True)
            ]
            for future in futures:
                future.result()

        return draw


def product(m: int, k: int, n: int, dtype: type, rng: np.random.Generator) -> Callable:
    """``[m, k] @ [k, n]`` of ``dtype`` into a preallocated output (spikes at rate 0.2)."""
    x = (rng.random((m, k)) < 0.2).astype(dtype)
    w = rng.standard_normal((k, n)).astype(dtype)
    out = np.empty((m, n), dtype)
    return lambda: np.matmul(x, w, out=out)


def runners(args: argparse.Namespace, workdir: Path) -> tuple[dict, dict]:
    """Every timed function (peak rates, each tile's work, snuc's runs) and what each
    network's floor is made of."""
    from snuc.runtime.numpy_backend import Plan

    rng = np.random.default_rng(0)
    normals = Normals(args.threads)
    timed = {
        "peak float64": product(PEAK_SIZE, PEAK_SIZE, PEAK_SIZE, np.float64, rng),
        "peak float32": product(PEAK_SIZE, PEAK_SIZE, PEAK_SIZE, np.float32, rng),
        "peak normals": normals.drawer(PEAK_NORMALS),
    }
    work = {}
    for name in NETWORKS:
        steps = NETWORKS[name][1]
        rows = steps * args.batch
        artefact = compiled(name, workdir)
        tiles = tile_shapes(artefact.report)
        for index, tile in enumerate(tiles):
            key = f"{name}/{index}"
            timed[f"{key}/currents"] = product(rows, tile["rows"], tile["cols"], np.float64, rng)
            timed[f"{key}/variance"] = product(rows, tile["rows"], tile["cols"], np.float32, rng)
            timed[f"{key}/normals"] = normals.drawer(rows * tile["cols"])
        x = spike_input(name, args.batch)
        for label, noise_thread in (("pcm", True), ("pcm inline noise", False)):
            plan = Plan.build(artefact.graph, mode="pcm", target=TARGET, noise_thread=noise_thread)
            timed[f"{name}/{label}"] = lambda plan=plan, x=x: plan_run(plan, x, args.threads)
        work[name] = {"steps": steps, "rows": rows, "tiles": tiles}
    return timed, work


def network_row(name: str, work: dict, seconds: dict, peak: dict) -> dict:
    """One network's floor (at peak and in its shapes) against snuc's pcm time."""
    tiles = []
    for index, tile in enumerate(work["tiles"]):
        key = f"{name}/{index}"
        tiles.append(
            {
                **tile,
                "currents_ms": seconds[f"{key}/currents"] * 1e3,
                "variance_ms": seconds[f"{key}/variance"] * 1e3,
                "normals_ms": seconds[f"{key}/normals"] * 1e3,
            }
        )
    multiply_adds = sum(work["rows"] * t["rows"] * t["cols"] for t in tiles)
    count = sum(work["rows"] * t["cols"] for t in tiles)
    products_peak = multiply_adds * 2e-9 * (1 / peak["float64_gflops"] + 1 / peak["float32_gflops"])
    normals_peak = count * peak["normals_ns"] * 1e-9
    floor_peak = (products_peak + normals_peak) * 1e3
    floor_shapes = sum(t["currents_ms"] + t["variance_ms"] + t["normals_ms"] for t in tiles)
    pcm, inline = seconds[f"{name}/pcm"] * 1e3, seconds[f"{name}/pcm inline noise"] * 1e3
    return {
        "network": name,
        "steps": work["steps"],
        "rows": work["rows"],
        "tiles": tiles,
        "multiply_adds": multiply_adds,
        "normals": count,
        "products_at_peak_ms": products_peak * 1e3,
        "normals_at_peak_ms": normals_peak * 1e3,
        "floor_at_peak_ms": floor_peak,
        "floor_in_shapes_ms": floor_shapes,
        "pcm_ms": pcm,
        "pcm_inline_noise_ms": inline,
        "pcm_over_floor_at_peak": pcm / floor_peak,
        "pcm_over_floor_in_shapes": pcm / floor_shapes,
        "pcm_inline_noise_over_floor_at_peak": inline / floor_peak,
    }


def measure(args: argparse.Namespace) -> dict:
    """This process's result at its pinned thread count."""
    result = {
        "machine": machine(),
        "threads": args.threads,
        "batch": args.batch,
        "repeats": args.repeats,
        "min_time": args.min_time,
        "command": "python " + " ".join(sys.argv),
        "load_average_before": list(os.getloadavg()),
    }
    with tempfile.TemporaryDirectory() as tmp:
        timed, work = runners(args, Path(tmp))
        seconds = best_time(timed, args.repeats, args.min_time)
    result["load_average_after"] = list(os.getloadavg())
    flops = 2 * PEAK_SIZE**3
    peak = {
        "float64_gflops": flops / seconds["peak float64"] * 1e-9,
        "float32_gflops": flops / seconds["peak float32"] * 1e-9,
        "normals_ns": seconds["peak normals"] / PEAK_NORMALS * 1e9,
    }
    result["peak"] = peak
    result["networks"] = [network_row(name, work[name], seconds, peak) for name in NETWORKS]
    return result


def report(result: dict) -> str:
    """The Markdown tables of one thread count."""
    m, peak = result["machine"], result["peak"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores; NumPy {m['numpy']}. Threads: "
        f"{result['threads']}; batch {result['batch']}; best of {result['repeats']} repeats "
        f"of at least {result['min_time']} s; load average (1 min) "
        f"{result['load_average_before'][0]:.2f} -> {result['load_average_after'][0]:.2f}.",
        f"Peak: float64 {peak['float64_gflops']:.1f} GFLOP/s, float32 "
        f"{peak['float32_gflops']:.1f} GFLOP/s ([{PEAK_SIZE}]^2 products), float32 normals "
        f"{peak['normals_ns']:.2f} ns each.",
        "",
    ]
    tile_rows = [
        [
            n["network"],
            t["layer"],
            f"[{n['rows']},{t['rows']}] @ [{t['rows']},{t['cols']}]",
            f"{t['currents_ms']:.2f}",
            f"{t['variance_ms']:.2f}",
            f"{t['normals_ms']:.2f}",
        ]
        for n in result["networks"]
        for t in n["tiles"]
    ]
    headers = ["network", "layer", "tile product", "float64 ms", "float32 ms", "normals ms"]
    lines += [_table(headers, tile_rows), ""]
    rows = [
        [
            f"{n['network']} (T={n['steps']})",
            f"{n['multiply_adds'] / 1e6:,.0f} M",
            f"{n['normals'] / 1e6:.2f} M",
            f"{n['products_at_peak_ms']:.2f} + {n['normals_at_peak_ms']:.2f}",
            f"{n['floor_at_peak_ms']:.2f}",
            f"{n['floor_in_shapes_ms']:.2f}",
            f"{n['pcm_ms']:.2f} / {n['pcm_inline_noise_ms']:.2f}",
            f"{n['pcm_over_floor_at_peak']:.2f}x / {n['pcm_inline_noise_over_floor_at_peak']:.2f}x",
            f"{n['pcm_over_floor_in_shapes']:.2f}x",
        ]
        for n in result["networks"]
    ]
    headers = [
        "network",
        "multiply-adds",
        "normals",
        "products + normals at peak ms",
        "floor at peak ms",
        "floor in shapes ms",
        "snuc pcm ms (noise thread / inline)",
        "pcm / floor at peak",
        "pcm / floor in shapes",
    ]
    return "\n".join([*lines, _table(headers, rows)])


def threads_report(results: list[dict]) -> str:
    """Every thread count's floor and snuc's time side by side."""
    label = " / ".join(str(r["threads"]) for r in results)
    rows = []
    for index, first in enumerate(results[0]["networks"]):
        per = [r["networks"][index] for r in results]
        rows.append(
            [
                f"{first['network']} (T={first['steps']})",
                " / ".join(f"{n['floor_at_peak_ms']:.2f}" for n in per),
                " / ".join(f"{n['floor_in_shapes_ms']:.2f}" for n in per),
                " / ".join(f"{n['pcm_ms']:.2f}" for n in per),
                " / ".join(f"{n['pcm_over_floor_at_peak']:.2f}x" for n in per),
                " / ".join(f"{n['pcm_over_floor_in_shapes']:.2f}x" for n in per),
            ]
        )
    headers = [
        "network",
        "floor at peak ms",
        "floor in shapes ms",
        "snuc pcm ms",
        "pcm / floor at peak",
        "pcm / floor in shapes",
    ]
    return f"Threads {label}, batch {results[0]['batch']}:\n\n" + _table(headers, rows)


def main(args: argparse.Namespace) -> int:
    if len(args.thread_counts) > 1:
        results = per_thread_runs(args.thread_counts)
    else:
        results = [measure(args)]
    if args.json:
        payload = results[0] if len(results) == 1 else {"runs": results}
        json.dump(payload, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for result in results:
        print(f"## {result['threads']} thread(s)\n\n{report(result)}\n")
    if len(results) > 1:
        print(threads_report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
