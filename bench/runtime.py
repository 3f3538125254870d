"""Runtime throughput: the NumPy backend against onnxruntime and PyTorch eager (SPEC §10).

Two networks built with snuc's PyTorch frontend, as in the paper:

* **JSB**: 88 -> SNU 150 -> sigmoid readout 88, T = 128 steps (music prediction);
* **MNIST**: 784 -> 6 x SNU 256 -> SNU 10, T = 20 steps (rate-coded digits).

Each is exported to the sequence-form ONNX model (a Scan over time) and compiled for
``pcm-256x256``. Measured side by side in one process, in sequences per second on spike
inputs (rate 0.2) at batch 1 and 64:

* **ours**: ``Plan.run`` of the NumPy backend in ``float`` mode (the plan built once);
* **ORT**: onnxruntime on the same sequence-form ONNX model;
* **torch**: PyTorch eager on the frontend model (``torch.no_grad``);
* **pcm**: the NumPy backend in ``pcm`` mode, with read noise drawn ahead on a thread of
  its own where a run cannot split its batch (the default) and inline, on the run's own
  threads (**pcm inline noise**; at ``--threads 2`` a batch of 64 still runs as two
  groups on two threads: the column is not a one-thread run, ``--threads 1`` is).

Every configuration is timed ``--repeats`` times, round-robin so that all see the same
machine load, each repeat long enough to last ``--min-time`` seconds; the table gives the
best repeat. Threads are pinned for everyone to ``--threads``: ``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` are set before NumPy loads (and
threadpoolctl limits them too when it is installed), ``torch.set_num_threads``, and
onnxruntime's ``intra_op_num_threads`` (``inter_op_num_threads = 1``, sequential).

* **aihwkit**: the same networks on IBM's aihwkit, its analog layers with the PCM
  statistical model (``bench/aihwkit_snu.py``, run with the Python of a separate virtualenv
  named by ``--aihwkit-python`` or ``SNUC_AIHWKIT_PYTHON``; left out with a one-line reason
  otherwise), against ``pcm``: sequences per second and their ratio.

``--threads 1,2`` measures each thread count in a process of its own (the threads are
pinned before NumPy loads) and reports them side by side.

Then, for the NumPy backend alone (left out with ``--throughput-only``):

* the spike rate of every layer on the benchmark's inputs, and the share of rows (a step
  of one sequence) without any spike, from PyTorch on the frontend model;
* **silent rows**: runs with the spike products that leave out silent rows and inputs
  (``runtime/plan_sparse.py``, the default) against runs with every product dense, on
  the two networks and, when the data directory is found (``--data-dir``, ``SNUC_DATA``
  or ``../shared/data``), on the shipped trained models ``jsb_snu`` (a padded batch of
  64 test chorales) and ``mnist_snu7`` (64 rate-coded test digits);
* a dense BLAS matrix product against the sum of the weight rows that spike
  (``W[idx].sum(0)`` per row).

Usage::

    python bench/runtime.py                      # 1 thread, 5 repeats
    python bench/runtime.py --threads 2 --repeats 7
    python bench/runtime.py --json
    python bench/runtime.py --threads 1,2 --aihwkit-python AIHWKIT_VENV/bin/python
"""

from __future__ import annotations

import argparse
import os
import sys

from threads import parse_with_threads, per_thread_runs, pin_threads, pinned_threads


def _arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (best is kept)")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per repeat")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--data-dir", help="data directory for the trained models' rows (default: as snuc)"
    )
    parser.add_argument(
        "--aihwkit-python",
        default=os.environ.get("SNUC_AIHWKIT_PYTHON"),
        help="Python of a virtualenv with aihwkit (default: $SNUC_AIHWKIT_PYTHON)",
    )
    parser.add_argument(
        "--aihwkit-tile",
        choices=("rpucuda", "torch"),
        default="rpucuda",
        help="aihwkit's inference tile (bench/aihwkit_snu.py)",
    )
    parser.add_argument(
        "--throughput-only",
        action="store_true",
        help="leave out the spike rates, silent rows and spike products",
    )
    return parse_with_threads(parser, argv)


ARGS = _arguments() if __name__ == "__main__" else None
if ARGS is not None:
    pin_threads(ARGS.threads)

import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from contextlib import contextmanager, nullcontext  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

NETWORKS = {
    # name: (input features, steps, description)
    "JSB": (88, 128, "88-150-88 SNU, sigmoid readout"),
    "MNIST": (784, 20, "784-256x6-10 SNU"),
}
BATCHES = (1, 64)
RATE = 0.2
TARGET = "pcm-256x256"
GOALS = {
    # (batch, versus): ours must be at least this many times as fast
    (1, "ORT"): 1.5,
    (1, "torch"): 5.0,
    (64, "ORT"): 1.0,
    (64, "torch"): 1.5,
}
PCM_GOAL = 4.0
"""pcm may take at most this many times float's time."""


def build_network(name: str):
    """The frontend model of ``name`` (fixed seed), in eval mode."""
    import torch

    from snuc.frontend.layers import SNU, Readout, SNUNetwork

    torch.manual_seed(0)
    if name == "JSB":
        return SNUNetwork(SNU(88, 150), Readout(150, 88, "sigmoid")).eval()
    hidden = [SNU(256, 256, bias_init=-0.5) for _ in range(5)]
    return SNUNetwork(SNU(784, 256, bias_init=-0.5), *hidden, SNU(256, 10, bias_init=-0.5)).eval()


def spike_input(name: str, batch: int) -> np.ndarray:
    """The benchmark's input for ``name`` at ``batch``: spikes at rate :data:`RATE`,
    ``[T, batch, features]`` float32, from a generator seeded with the batch size."""
    features, steps, _ = NETWORKS[name]
    x = np.random.default_rng(batch).random((steps, batch, features)) < RATE
    return x.astype(np.float32)


def compile_network(name: str, workdir: Path):
    """``name``'s frontend model, its sequence-form ONNX file in ``workdir`` (written once)
    and its graph compiled for :data:`TARGET`."""
    from snuc import driver
    from snuc.frontend.export import export

    net = build_network(name)
    path = workdir / f"{name}.onnx"
    if not path.exists():
        features = NETWORKS[name][0]
        export(net, path, input_features=features, check_lengths=(3,), check_batches=(2,))
    return net, path, driver.compile_model(path, TARGET).graph


def machine() -> dict:
    """What the numbers were measured on."""
    model = platform.processor() or "unknown"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(
            line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    memory = "unknown"
    try:
        with open("/proc/meminfo") as f:
            kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        memory = f"{kib / 2**20:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    import onnxruntime
    import torch

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory": memory,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
    }


def thread_limits(threads: int):
    """threadpoolctl's limit on every BLAS/OpenMP pool, when it is installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return nullcontext(), "environment variables (threadpoolctl not installed)"
    return threadpool_limits(threads), "environment variables and threadpoolctl"


def best_time(runners: dict[str, Callable[[], object]], repeats: int, min_time: float) -> dict:
    """Seconds per call of each runner: the best of ``repeats``, round-robin."""
    calls = {}
    for name, run in runners.items():
        run()  # warm up; also sizes the repeat
        start = time.perf_counter()
        run()
        once = max(time.perf_counter() - start, 1e-6)
        calls[name] = max(1, round(min_time / once))
    best = dict.fromkeys(runners, float("inf"))
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                run()
            best[name] = min(best[name], (time.perf_counter() - start) / calls[name])
    return best


def plan_run(plan, x: np.ndarray, threads: int):
    """One run of the NumPy backend's ``plan`` on ``x``: the bench's one call of
    ``Plan.run``, so that every configuration runs alike.

    ``threads`` is pinned for the whole process (:func:`pin_threads`) and passed to
    ``Plan.run`` too, which splits a pcm or quantized batch over that many threads.
    """
    assert threads == pinned_threads(), "threads are pinned per process"
    return plan.run(x, threads=threads)


def measure_network(name: str, args: argparse.Namespace, workdir: Path) -> list[dict]:
    """Rows of the throughput table for one network, both batch sizes."""
    import onnxruntime as ort
    import torch

    from snuc.runtime.numpy_backend import Plan

    steps = NETWORKS[name][1]
    net, path, graph = compile_network(name, workdir)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    plans = {
        "float": Plan.build(graph, mode="float"),
        "pcm": Plan.build(graph, mode="pcm", target=TARGET),
        "pcm inline noise": Plan.build(graph, mode="pcm", target=TARGET, noise_thread=False),
    }
    rows = []
    for batch in BATCHES:
        x = spike_input(name, batch)
        xt = torch.from_numpy(x)

        def eager(xt=xt):
            with torch.no_grad():
                return net(xt)

        runners = {
            "ours": lambda x=x: plan_run(plans["float"], x, args.threads),
            "ORT": lambda x=x: session.run(None, {"X": x}),
            "torch": eager,
            "pcm": lambda x=x: plan_run(plans["pcm"], x, args.threads),
            "pcm inline noise": lambda x=x: plan_run(plans["pcm inline noise"], x, args.threads),
        }
        (ours_y,) = plans["float"].run(x).values()
        (ort_y,) = session.run(None, {"X": x})
        seconds = best_time(runners, args.repeats, args.min_time)
        rows.append(
            {
                "network": name,
                "batch": batch,
                "steps": steps,
                "seq_per_s": {k: batch / v for k, v in seconds.items()},
                "ours_vs_ORT": seconds["ORT"] / seconds["ours"],
                "ours_vs_torch": seconds["torch"] / seconds["ours"],
                "pcm_over_float": seconds["pcm"] / seconds["ours"],
                "pcm_inline_noise_over_float": seconds["pcm inline noise"] / seconds["ours"],
                "max_abs_diff_vs_ORT": float(np.max(np.abs(ours_y - ort_y))),
            }
        )
    return rows


def write_aihwkit_input(path: Path) -> None:
    """The benchmark networks' layers (frontend weights, biases, decays) and spike inputs,
    in the ``.npz`` form that bench/aihwkit_snu.py reads."""
    arrays, layers = {}, {}
    for name in NETWORKS:
        net = build_network(name)
        layers[name] = len(net.layers)
        for index, layer in enumerate(net.layers):
            key = f"{name}/{index}"
            if type(layer).__name__ == "SNU":
                arrays[f"{key}/kind"] = np.array("snu")
                arrays[f"{key}/weight"] = layer.weight.detach().numpy()
                arrays[f"{key}/bias"] = layer.bias.detach().numpy()
                arrays[f"{key}/decay"] = layer.effective_decay().detach().numpy()
            else:  # the JSB network's sigmoid Readout
                arrays[f"{key}/kind"] = np.array("readout")
                arrays[f"{key}/weight"] = layer.linear.weight.detach().numpy()
                arrays[f"{key}/bias"] = layer.linear.bias.detach().numpy()
                arrays[f"{key}/decay"] = np.zeros((), np.float32)
        for batch in BATCHES:
            arrays[f"{name}/x/{batch}"] = spike_input(name, batch)
    inputs = [[name, batch] for name in NETWORKS for batch in BATCHES]
    arrays["spec"] = np.array(json.dumps({"layers": layers, "inputs": inputs}))
    np.savez(path, **arrays)


def aihwkit_throughput(args: argparse.Namespace, workdir: Path) -> dict:
    """bench/aihwkit_snu.py's result with ``--aihwkit-python`` on :data:`NETWORKS`, at
    ``args.threads`` (pinned in its environment as here), or ``{"skipped": reason}``."""
    if not args.aihwkit_python:
        return {"skipped": "no --aihwkit-python (or SNUC_AIHWKIT_PYTHON) given"}
    path = workdir / "aihwkit_input.npz"
    write_aihwkit_input(path)
    script = Path(__file__).resolve().parent / "aihwkit_snu.py"
    command = [args.aihwkit_python, str(script), "--input", str(path), "--tile", args.aihwkit_tile]
    command += ["--threads", str(args.threads), "--repeats", str(args.repeats)]
    command += ["--min-time", str(args.min_time)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as err:
        return {"skipped": f"{args.aihwkit_python} does not run: {err}"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return {"skipped": f"bench/aihwkit_snu.py failed ({done.returncode}): {last}"}
    return json.loads(done.stdout)


def add_aihwkit(throughput: list[dict], aihwkit: dict) -> None:
    """aihwkit's sequences per second into the throughput rows, with pcm's speed over it
    (``pcm_vs_aihwkit``: > 1 where snuc's pcm mode is faster)."""
    speeds = {(r["network"], r["batch"]): r["seq_per_s"] for r in aihwkit.get("rows", [])}
    for row in throughput:
        speed = speeds.get((row["network"], row["batch"]))
        if speed is None:
            continue
        row["seq_per_s"]["aihwkit"] = speed
        row["pcm_vs_aihwkit"] = row["seq_per_s"]["pcm"] / speed
        row["pcm_inline_noise_vs_aihwkit"] = row["seq_per_s"]["pcm inline noise"] / speed


def layer_rates(name: str) -> list[dict]:
    """Spike rate and silent-row share of each layer's spikes on the benchmark's input
    (rate 0.2 at batch 64), from PyTorch eager on the frontend model."""
    import torch

    net = build_network(name)
    h = torch.from_numpy(spike_input(name, 64))
    rows = []
    with torch.no_grad():
        for index, layer in enumerate(net.layers):
            state, outs = None, []
            for x_t in h.unbind(0):
                out, state = layer.step(x_t, state)
                outs.append(out)
            h = torch.stack(outs)
            if type(layer).__name__ != "SNU":
                continue
            y = h.reshape(-1, h.shape[-1]).numpy()
            rows.append(
                {
                    "network": name,
                    "layer": index + 1,
                    "units": y.shape[1],
                    "rate": float(y.mean()),
                    "silent_rows": float((y.max(axis=1) == 0).mean()),
                }
            )
    return rows


@contextmanager
def dense_products():
    """Every product dense: the search for silent rows switched off (float and tiles)."""
    from snuc.runtime import plan_sparse, plan_tiles

    saved = plan_sparse.MIN_MULTIPLY_ADDS, plan_tiles.SPARSE_MIN_MULTIPLY_ADDS
    plan_sparse.MIN_MULTIPLY_ADDS = plan_tiles.SPARSE_MIN_MULTIPLY_ADDS = sys.maxsize
    try:
        yield
    finally:
        plan_sparse.MIN_MULTIPLY_ADDS, plan_tiles.SPARSE_MIN_MULTIPLY_ADDS = saved


def _trained_cases(data_dir: str | None) -> list[tuple[str, object, np.ndarray]]:
    """The shipped trained models with 64 test sequences each, or none without data."""
    from snuc import datasets, driver
    from snuc.ir.errors import SnucError

    try:
        root = datasets.resolve_data_dir(data_dir)
    except SnucError as err:
        print(f"trained models left out: {err}", file=sys.stderr)
        return []
    models = Path(__file__).resolve().parent.parent / "examples" / "models"
    images, _ = datasets.load_mnist("test", root)
    digits = datasets.rate_code(images[:64], 20, np.random.default_rng(0)).astype(np.float32)
    chorales, _ = datasets.pad_sequences(datasets.load_jsb("test", root)[:64])
    cases = []
    for model, x in (("jsb_snu", chorales.astype(np.float32)), ("mnist_snu7", digits)):
        graph = driver.compile_model(models / f"{model}.onnx", TARGET).graph
        cases.append((f"{model} (trained)", graph, x))
    return cases


def silent_rows(args: argparse.Namespace, workdir: Path) -> list[dict]:
    """Time per run with the spike products and with every product dense."""
    from snuc.runtime.numpy_backend import Plan

    cases = []
    for name in NETWORKS:
        graph = compile_network(name, workdir)[2]
        cases.append((name, graph, {b: spike_input(name, b) for b in BATCHES}))
    for name, graph, x in _trained_cases(args.data_dir):
        cases.append((name, graph, {b: np.ascontiguousarray(x[:, :b]) for b in BATCHES}))
    rows = []
    for name, graph, inputs in cases:
        for mode in ("float", "pcm"):
            plan = Plan.build(graph, mode=mode, target=None if mode == "float" else TARGET)
            for batch, xb in inputs.items():

                def dense(plan=plan, xb=xb):
                    with dense_products():
                        plan.run(xb)

                seconds = best_time(
                    {"spikes": lambda plan=plan, xb=xb: plan.run(xb), "dense": dense},
                    args.repeats,
                    args.min_time,
                )
                rows.append(
                    {
                        "network": name,
                        "mode": mode,
                        "batch": batch,
                        "steps": xb.shape[0],
                        "spikes_ms": seconds["spikes"] * 1e3,
                        "dense_ms": seconds["dense"] * 1e3,
                        "speedup": seconds["dense"] / seconds["spikes"],
                    }
                )
    return rows


def spike_products(repeats: int, min_time: float) -> list[dict]:
    """Dense product against sums of the weight rows that spike, at several rates and sizes.

    ``rows``: per input row, ``W[idx].sum(0)`` of its spiking indices (a Python loop over
    rows); ``gather``: one gather of every spike's weight row and ``np.add.reduceat``.
    """
    rows = []
    rng = np.random.default_rng(0)
    for batch, k, n in ((1, 150, 150), (1, 256, 256), (64, 256, 256), (1280, 256, 256)):
        w = rng.standard_normal((k, n)).astype(np.float32)
        for rate in (0.01, 0.05, 0.2):
            x = (rng.random((batch, k)) < rate).astype(np.float32)
            x[:, 0] = 1.0  # every row spikes at least once: reduceat needs non-empty segments
            out = np.empty((batch, n), np.float32)

            def dense(x=x, w=w, out=out):
                np.matmul(x, w, out=out)

            def row_sums(x=x, w=w, out=out):
                for i, row in enumerate(x):
                    np.sum(w[np.flatnonzero(row)], axis=0, out=out[i])

            def gather(x=x, w=w, out=out):
                spiking_rows, spiking_inputs = np.nonzero(x)
                starts = np.flatnonzero(np.diff(spiking_rows, prepend=-1))
                np.add.reduceat(w[spiking_inputs], starts, axis=0, out=out)

            times = best_time(
                {"dense": dense, "rows": row_sums, "gather": gather}, repeats, min_time / 4
            )
            rows.append(
                {
                    "shape": f"[{batch},{k}] @ [{k},{n}]",
                    "rate": rate,
                    "dense_us": times["dense"] * 1e6,
                    "row_sums_us": times["rows"] * 1e6,
                    "gather_us": times["gather"] * 1e6,
                }
            )
    return rows


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join([line, rule, *body])


def report(result: dict) -> str:
    """The Markdown tables of one benchmark run."""
    m = result["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']} RAM; Python {m['python']}, "
        f"NumPy {m['numpy']}, onnxruntime {m['onnxruntime']}, torch {m['torch']}.",
        f"Threads: {result['threads']} for every runtime, pinned by {result['pinning']}; "
        f"best of {result['repeats']} repeats of at least {result['min_time']} s each.",
        "Load average (1, 5, 15 min) before / after: "
        + " / ".join(
            ", ".join(f"{x:.2f}" for x in result[k])
            for k in ("load_average_before", "load_average_after")
        )
        + f" on {m['cores']} cores.",
        "",
    ]
    rows = []
    for r in result["throughput"]:
        s = r["seq_per_s"]
        goal_ort, goal_torch = GOALS[(r["batch"], "ORT")], GOALS[(r["batch"], "torch")]
        rows.append(
            [
                f"{r['network']} (T={r['steps']})",
                str(r["batch"]),
                f"{s['ours']:,.0f}",
                f"{s['ORT']:,.0f}",
                f"{s['torch']:,.0f}",
                f"{r['ours_vs_ORT']:.2f}x (goal {goal_ort:g}x)",
                f"{r['ours_vs_torch']:.2f}x (goal {goal_torch:g}x)",
                f"{r['pcm_over_float']:.2f}x / {r['pcm_inline_noise_over_float']:.2f}x",
                f"{r['max_abs_diff_vs_ORT']:.1e}",
            ]
        )
    headers = [
        "network",
        "batch",
        "ours seq/s",
        "ORT seq/s",
        "torch seq/s",
        "ours/ORT",
        "ours/torch",
        f"pcm/float time (goal <= {PCM_GOAL:g}x; noise thread / inline)",
        "max |ours - ORT|",
    ]
    lines.append(_table(headers, rows))
    lines += ["", *aihwkit_report(result)]
    if "layer_rates" in result:
        lines += ["", *backend_report(result)]
    return "\n".join(lines)


def aihwkit_report(result: dict) -> list[str]:
    """The lines of the pcm-against-aihwkit table (or why it was left out)."""
    aihwkit = result["aihwkit"]
    if "skipped" in aihwkit:
        return [f"pcm against aihwkit left out: {aihwkit['skipped']}."]
    lines = [
        f"pcm against aihwkit {aihwkit['aihwkit']} (torch {aihwkit['torch']}, "
        f"{aihwkit['tile_class']} of {aihwkit['tile']} tiles, PCM statistical model, "
        f"t_inference {aihwkit['t_inference_s']:g} s), {aihwkit['threads']} thread(s):",
        "",
    ]
    rows = [
        [
            f"{r['network']} (T={r['steps']})",
            str(r["batch"]),
            f"{r['seq_per_s']['pcm']:,.0f}",
            f"{r['seq_per_s']['pcm inline noise']:,.0f}",
            f"{r['seq_per_s']['aihwkit']:,.0f}",
            f"{r['pcm_vs_aihwkit']:.2f}x / {r['pcm_inline_noise_vs_aihwkit']:.2f}x",
        ]
        for r in result["throughput"]
        if "pcm_vs_aihwkit" in r
    ]
    headers = [
        "network",
        "batch",
        "pcm seq/s",
        "pcm inline-noise seq/s",
        "aihwkit seq/s",
        "pcm/aihwkit speed (noise thread / inline)",
    ]
    return [*lines, _table(headers, rows)]


def backend_report(result: dict) -> list[str]:
    """The NumPy backend's own tables: spike rates, silent rows, spike products."""
    lines = ["Spikes per layer on the benchmark's inputs (batch 64):", ""]
    rate_rows = [
        [
            r["network"],
            str(r["layer"]),
            str(r["units"]),
            f"{r['rate']:.3f}",
            f"{100 * r['silent_rows']:.1f} %",
        ]
        for r in result["layer_rates"]
    ]
    lines.append(_table(["network", "layer", "units", "spike rate", "silent rows"], rate_rows))
    lines += ["", "Silent rows left out of spike products, against every product dense:", ""]
    silent = [
        [
            f"{r['network']} (T={r['steps']})",
            r["mode"],
            str(r["batch"]),
            f"{r['dense_ms']:.3f}",
            f"{r['spikes_ms']:.3f}",
            f"{r['speedup']:.2f}x",
        ]
        for r in result["silent_rows"]
    ]
    headers = ["network", "mode", "batch", "dense ms", "spike products ms", "speed-up"]
    lines.append(_table(headers, silent))
    lines += [
        "",
        "Spike inputs: dense product against summing the weight rows that spike (us):",
        "",
    ]
    spike_rows = [
        [
            r["shape"],
            f"{r['rate']:g}",
            f"{r['dense_us']:.1f}",
            f"{r['row_sums_us']:.1f}",
            f"{r['gather_us']:.1f}",
        ]
        for r in result["spike_products"]
    ]
    headers = ["product", "spike rate", "dense", "row sums", "gather + reduceat"]
    lines.append(_table(headers, spike_rows))
    return lines


def threads_report(results: list[dict]) -> str:
    """Each thread count's throughput side by side (one process each)."""
    counts = [r["threads"] for r in results]
    rows = []
    for index, first in enumerate(results[0]["throughput"]):
        per = [r["throughput"][index] for r in results]
        pcm = [p["seq_per_s"]["pcm"] for p in per]
        aihwkit = [p["seq_per_s"].get("aihwkit") for p in per]
        rows.append(
            [
                f"{first['network']} (T={first['steps']})",
                str(first["batch"]),
                " / ".join(f"{p['seq_per_s']['ours']:,.0f}" for p in per),
                " / ".join(f"{p['ours_vs_ORT']:.2f}x" for p in per),
                " / ".join(f"{v:,.0f}" for v in pcm),
                " / ".join(f"{v / pcm[0]:.2f}x" for v in pcm),
                " / ".join(f"{p['pcm_over_float']:.2f}x" for p in per),
                " / ".join("-" if v is None else f"{v:,.0f}" for v in aihwkit),
                " / ".join(
                    f"{p['pcm_vs_aihwkit']:.2f}x" if "pcm_vs_aihwkit" in p else "-" for p in per
                ),
            ]
        )
    label = " / ".join(str(c) for c in counts)
    headers = [
        "network",
        "batch",
        "ours seq/s",
        "ours/ORT",
        "pcm seq/s",
        f"pcm over {counts[0]} thread(s)",
        "pcm/float time",
        "aihwkit seq/s",
        "pcm/aihwkit",
    ]
    return f"Threads {label}, one process each:\n\n" + _table(headers, rows)


def main_threads(args: argparse.Namespace) -> int:
    """Several thread counts: one process each, reported side by side."""
    results = per_thread_runs(args.thread_counts)
    if args.json:
        json.dump({"thread_counts": args.thread_counts, "runs": results}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for result in results:
        print(f"## {result['threads']} thread(s)\n\n{report(result)}\n")
    print(threads_report(results))
    return 0


def main(args: argparse.Namespace) -> int:
    if len(args.thread_counts) > 1:
        return main_threads(args)
    import torch

    torch.set_num_threads(args.threads)
    limits, pinning = thread_limits(args.threads)
    result = {
        "machine": machine(),
        "threads": args.threads,
        "pinning": pinning + ", torch.set_num_threads, ORT intra_op_num_threads",
        "repeats": args.repeats,
        "min_time": args.min_time,
        "command": "python " + " ".join(sys.argv),
        "throughput": [],
        # Other jobs on the machine move every number: the load is part of the result.
        "load_average_before": list(os.getloadavg()),
    }
    with limits, tempfile.TemporaryDirectory() as tmp:
        for name in NETWORKS:
            result["throughput"] += measure_network(name, args, Path(tmp))
        # Right after snuc's runs, under the load they saw.
        result["aihwkit"] = aihwkit_throughput(args, Path(tmp))
        add_aihwkit(result["throughput"], result["aihwkit"])
        if not args.throughput_only:
            result["layer_rates"] = [row for name in NETWORKS for row in layer_rates(name)]
            result["silent_rows"] = silent_rows(args, Path(tmp))
            result["spike_products"] = spike_products(args.repeats, args.min_time)
    result["load_average_after"] = list(os.getloadavg())
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
