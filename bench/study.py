"""A study's throughput on local workers, and the overhead of Ray and Dask (SPEC §10, §12).

One study, heavy enough that start-up does not dominate: ``examples/models/mnist_snu7.onnx``
in pcm mode on the first 2,000 MNIST test images (20 rate-coding steps), 12 configurations
(3 chips x 2 drift times x drift compensation on and off). The artefact is compiled into a
fresh cache first and the data read once (both timed apart), then the same study runs

* on 1 local worker (in this process, its runs and BLAS on ``--threads`` threads,
  default 1: ``SNUC_THREADS`` too, else a run would split its batch over every core),
* on 2 local worker processes (BLAS pinned to half the cores each),
* on Ray with 1 CPU and on Dask with 1 worker process, each local cluster started before
  its run and stopped after it (start-up timed apart, so that an idle cluster never runs
  beside another executor's run),

``--repeats`` times, the executors taking turns so that a change of the machine's load
touches each alike; each executor's best time counts. The script prints configurations
per minute, the speed-up of 2 workers over 1 (the goal on 2 idle cores: 1.8x or more),
the overhead per configuration of Ray and of Dask against 1 local worker, and the load
average around every run (on a loaded machine the numbers measure the contention, not the
study). Every run's rows must equal the first's (the script fails otherwise).

One BLAS thread by default, set before NumPy loads: on a busy machine a multi-threaded
BLAS in one process can be many times slower than one thread (on the shared 2-core
machine, at load 9, ten times), which would measure the contention, not the study.

Usage::

    python bench/study.py                      # needs the data at $SNUC_DATA
    python bench/study.py --repeats 3          # best of three, executors taking turns
    python bench/study.py --limit 500 --no-ray --no-dask  # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

SPEC = """
models = ["{model}"]
tasks = "mnist"
limit = {limit}
batch_size = 500
modes = "pcm"
seeds = [0, 1, 2]
t_inference = ["1h", "1d"]
drift_compensation = ["on", "off"]

[output]
cache = "{cache}"
"""


def load() -> str:
    """The 1-, 5- and 15-minute load averages."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


@contextlib.contextmanager
def ray_cluster() -> Iterator[dict[str, Any]]:
    """A local Ray cluster with 1 CPU; the study joins it (``run_study``'s options)."""
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        yield {"executor": "ray"}
    finally:
        ray.shutdown()


@contextlib.contextmanager
def dask_cluster() -> Iterator[dict[str, Any]]:
    """A local Dask cluster of 1 worker process with 1 thread, BLAS on 1 thread."""
    import logging

    from dask.distributed import LocalCluster

    from snuc.study_exec import pinned_blas

    with pinned_blas(1):
        cluster = LocalCluster(
            n_workers=1, threads_per_worker=1, dashboard_address=None, silence_logs=logging.ERROR
        )
    with cluster:
        yield {"executor": "dask", "address": cluster.scheduler_address}


def executors(args: argparse.Namespace) -> list[tuple[str, Callable[[], Any]]]:
    """Each executor's label and a context manager giving its ``run_study`` options."""
    chosen = [
        ("1 local worker", lambda: contextlib.nullcontext({"workers": 1})),
        ("2 local workers", lambda: contextlib.nullcontext({"workers": 2})),
    ]
    if not args.no_ray:
        chosen.append(("ray, 1 CPU", ray_cluster))
    if not args.no_dask:
        chosen.append(("dask, 1 worker", dask_cluster))
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=2000, help="MNIST test images (2000)")
    parser.add_argument("--repeats", type=int, default=1, help="turns of every executor (1)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray executor")
    parser.add_argument("--no-dask", action="store_true", help="skip the Dask executor")
    parser.add_argument("--threads", type=int, default=1, help="threads of 1 worker (1)")
    args = parser.parse_args()
    # Before NumPy loads (importing snuc loads it); the local executor re-pins its workers.
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "SNUC_THREADS"):
        os.environ[variable] = str(args.threads)

    from snuc.eval_tasks import TASKS
    from snuc.study import compile_builds, run_study
    from snuc.study_spec import load_study

    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "study.toml"
        model = ROOT / "examples" / "models" / "mnist_snu7.onnx"
        spec.write_text(SPEC.format(model=model, limit=args.limit, cache=Path(tmp) / "cache"))
        study = load_study(spec)
        count = len(study.configurations)
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"Python {platform.python_version()}; load average {load()}")  # fmt: skip
        start = time.perf_counter()
        compile_builds(study, Path(tmp) / "cache", [b.key() for b in study.builds])
        TASKS["mnist"].loader(study.split, study.data_dir)  # the first read warms the disk cache
        print(f"study: {count} configurations; compile (once, cached) and a first read of "
              f"the data: {time.perf_counter() - start:.1f} s")  # fmt: skip

        best: dict[str, float] = {}
        reference = None
        same = True
        for turn in range(args.repeats):
            for label, cluster in executors(args):
                start = time.perf_counter()
                with cluster() as options:
                    ready = time.perf_counter()
                    before = load()
                    rows = run_study(study, **options)
                    seconds = time.perf_counter() - ready
                started = f", cluster start {ready - start:.1f} s" if ready - start > 0.05 else ""
                print(f"[{turn + 1}] {label:<16} {seconds:7.1f} s {60 * count / seconds:6.2f} "
                      f"configurations/min (load {before} -> {load()}{started})")  # fmt: skip
                best[label] = min(best.get(label, seconds), seconds)
                reference = rows if reference is None else reference
                same = same and rows == reference

        print(f"best of {args.repeats}:")
        for label, seconds in best.items():
            print(f"  {label:<16} {60 * count / seconds:6.2f} configurations/min")
        one = best["1 local worker"]
        print(f"speed-up of 2 workers over 1: {one / best['2 local workers']:.2f}x (goal 1.8x)")
        for label in ("ray, 1 CPU", "dask, 1 worker"):
            if label in best:
                overhead = (best[label] - one) / count
                print(f"{label.split(',')[0]} overhead per configuration vs 1 local worker: "
                      f"{overhead:+.2f} s ({best[label] / one:.2f}x the time)")  # fmt: skip
        print(f"rows identical on every executor: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
