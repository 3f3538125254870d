"""A study's throughput on local workers and on Ray (SPEC §10, §12).

One study, heavy enough that start-up does not dominate: ``examples/models/mnist_snu7.onnx``
in pcm mode on the first 2,000 MNIST test images (20 rate-coding steps), 12 configurations
(3 chips x 2 drift times x drift compensation on and off). The artefact is compiled into a
fresh cache first (timed apart), then the same study runs

* on 1 local worker (in this process, BLAS on ``--threads`` threads, default 1),
* on 2 local worker processes (BLAS pinned to half the cores each),
* on Ray with 1 CPU, the local cluster started beforehand (its start-up timed apart),

and the script prints configurations per minute, the speed-up of 2 workers over 1, and
Ray's overhead per configuration against 1 local worker. Every run's rows must equal the
first's (the script fails otherwise).

One BLAS thread by default, set before NumPy loads: on a busy machine a multi-threaded
BLAS in one process can be many times slower than one thread (on the shared 2-core
machine, at load 9, ten times), which would measure the contention, not the study.

Usage::

    python bench/study.py                      # needs the data at $SNUC_DATA
    python bench/study.py --limit 500 --no-ray # a quick look
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=2000, help="MNIST test images (2000)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray executor")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads of 1 worker (1)")
    args = parser.parse_args()
    # Before NumPy loads (importing snuc loads it); the local executor re-pins its workers.
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(args.threads)

    from snuc.study import compile_builds, run_study
    from snuc.study_spec import load_study

    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "study.toml"
        model = ROOT / "examples" / "models" / "mnist_snu7.onnx"
        spec.write_text(SPEC.format(model=model, limit=args.limit, cache=Path(tmp) / "cache"))
        study = load_study(spec)
        count = len(study.configurations)
        start = time.perf_counter()
        compile_builds(study, Path(tmp) / "cache", [b.key() for b in study.builds])
        print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
        print(f"study: {count} configurations; compile (once, cached): "
              f"{time.perf_counter() - start:.1f} s")  # fmt: skip

        def timed(label: str, **options) -> tuple[float, list]:
            start = time.perf_counter()
            rows = run_study(study, **options)
            seconds = time.perf_counter() - start
            print(f"{label:<24} {seconds:7.1f} s  {60 * count / seconds:6.2f} configurations/min")
            return seconds, rows

        one, reference = timed("1 local worker", workers=1)
        two, rows = timed("2 local workers", workers=2)
        same = rows == reference
        print(f"speed-up of 2 workers over 1: {one / two:.2f}x")
        if not args.no_ray:
            import ray

            start = time.perf_counter()
            ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
            print(f"ray local cluster start: {time.perf_counter() - start:.1f} s")
            on_ray, rows = timed("ray, 1 CPU", executor="ray")
            ray.shutdown()
            same = same and rows == reference
            overhead = (on_ray - one) / count
            print(f"ray overhead per configuration vs 1 local worker: {overhead:+.2f} s "
                  f"({on_ray / one:.2f}x the time)")  # fmt: skip
        print(f"rows identical on every executor: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
