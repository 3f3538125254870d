"""Thread counts of the runtime benches: parsed, pinned before NumPy loads, one process each.

BLAS takes its thread count from the environment when NumPy (or torch) loads; threadpoolctl
can change it later, but not every library's pool the same way. So a bench pins its count
before it imports NumPy (this module imports nothing that loads it),
and measuring several counts (``--threads 1,2``) means one process per count: the script
runs itself again with ``--threads N --json`` and reads the results.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
"""The environment variables that size BLAS's and OpenMP's thread pools."""


def thread_counts(text: str) -> list[int]:
    """The value of ``--threads``: one count or several, comma-separated, each at least 1."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 1 or 1,2, got {text!r}") from None
    if min(counts) < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be at least 1, got {text!r}")
    return counts


def parse_with_threads(
    parser: argparse.ArgumentParser, argv: list[str] | None = None
) -> argparse.Namespace:
    """``parser``'s arguments with ``--threads`` added: ``thread_counts`` holds every count
    asked for, ``threads`` the first (this process's)."""
    parser.add_argument(
        "--threads",
        type=thread_counts,
        default=[1],
        help="threads for every runtime; several (1,2) run one process each",
    )
    args = parser.parse_args(argv)
    args.thread_counts = args.threads
    args.threads = args.thread_counts[0]
    return args


def pin_threads(threads: int) -> None:
    """Size BLAS's and OpenMP's pools to ``threads``; before NumPy or torch loads."""
    for variable in VARIABLES:
        os.environ[variable] = str(threads)


def pinned_threads() -> int:
    """The thread count :func:`pin_threads` set for this process."""
    return int(os.environ[VARIABLES[0]])


def without_threads(argv: list[str]) -> list[str]:
    """``argv`` less its ``--threads`` (either spelling) and ``--json``."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--threads":
            skip = True
        elif not arg.startswith("--threads=") and arg != "--json":
            rest.append(arg)
    return rest


def per_thread_runs(counts: list[int]) -> list[dict]:
    """The running script's JSON result at each of ``counts``, each in a fresh process
    started with this process's arguments (less ``--threads`` and ``--json``)."""
    argv = without_threads(sys.argv[1:])
    results = []
    for count in counts:
        command = [sys.executable, sys.argv[0], *argv, "--threads", str(count), "--json"]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.stderr.write(done.stderr)
            raise SystemExit(f"{' '.join(command)} failed ({done.returncode})")
        results.append(json.loads(done.stdout))
    return results
