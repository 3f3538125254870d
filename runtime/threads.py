"""The threads a run uses (``--threads``): how many, the BLAS share, the batch's groups.

A run given N threads (default: every core this process may run on, or
:data:`THREADS_VARIABLE`) uses them without
the threads fighting (SPEC §6 results do not depend on N):

* a ``quantized`` or ``pcm`` run of a batch splits it into N contiguous groups of
  sequences (:func:`sequence_groups`), each run on a worker thread of one pool
  (:func:`run_groups`) with BLAS limited to ``N // groups`` threads. Read noise is keyed
  per sequence (SPEC §6), the currents and the noise term's variance are float64 sums (the
  latter rounded to float32), which BLAS computes alike for a row whatever the rows
  beside it (a float32 product would not), so every group reads what the whole run
  would: the outputs are identical for any N;
* a batch that cannot be split (one sequence, a run in pieces) runs on the calling thread;
  a pcm run draws its read noise ahead on one more thread when N >= 2 and it has enough
  normals to draw (``Plan.draws_noise_ahead``), BLAS limited to the N - 1 others (else,
  and for a quantized run, to N);
* a ``float`` run is never split, and BLAS keeps the process's thread count (its
  environment variables, or every core): OpenBLAS's float32 products round a row
  differently with the rows of the call and with its own thread count (which splits the
  rows), so splitting the batch or limiting BLAS by N would make float outputs depend on
  N. (A study's local workers pin BLAS to their share of the cores in their
  environment, :mod:`snuc.study_exec`.)

BLAS's thread count is a setting of the process (threadpoolctl sets it for the run and
restores it after): runs on several threads of the caller at once share it.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import TypeVar

from snuc.ir.errors import SnucError

T = TypeVar("T")


THREADS_VARIABLE = "SNUC_THREADS"
"""An environment variable that sets the default thread count of the process's runs
(``snuc eval --threads``; a study's local workers get their share of the cores)."""


def default_threads() -> int:
    """The threads of a run not told how many: :data:`THREADS_VARIABLE` when set, else
    every core this process may run on (``len(os.sched_getaffinity(0))``) where
    threadpoolctl (extra ``threads``) can share them out, else one.

    Raises:
        SnucError: :data:`THREADS_VARIABLE` is set but not a positive integer (one line;
            an empty value counts as unset).
    """
    given = os.environ.get(THREADS_VARIABLE, "").strip()
    if given:
        count = int(given) if given.isascii() and given.isdecimal() else 0
        if count < 1:
            raise SnucError(
                f"{THREADS_VARIABLE}={given!r} is not valid; expected a positive integer "
                "(or unset it for every core)"
            )
        return count
    if not _has_threadpoolctl():
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def checked_threads(threads: int | None) -> int:
    """``threads`` (None: :func:`default_threads`), checked.

    Raises:
        SnucError: not a positive integer (one line).
    """
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise SnucError(f"threads {threads!r} is not valid; expected a positive integer")
    return threads


def sequence_groups(size: int, threads: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` ranges splitting ``size`` sequences into ``min(threads, size)``
    contiguous groups whose sizes differ by at most one (the first ones larger)."""
    count = max(1, min(threads, size))
    if count == 1:
        return [(0, size)]
    base, extra = divmod(size, count)
    groups, lo = [], 0
    for g in range(count):
        hi = lo + base + (g < extra)
        groups.append((lo, hi))
        lo = hi
    return groups


def run_groups(
    groups: list[tuple[int, int]],
    threads: int,
    run: Callable[[int, int, int], T],
    *,
    float_products: bool = False,
    spare: int = 0,
) -> list[T]:
    """``run(lo, hi, index)`` of every group, on the worker threads of one pool (the first
    on the calling thread), BLAS limited to ``threads // len(groups)`` threads, less
    ``spare`` for a run of one group (the thread that draws its read noise ahead; a run
    of float products, ``float_products``: left at the process's BLAS threads): results
    in the groups' order."""
    spare = spare if len(groups) == 1 else 0
    if float_products and len(groups) == 1:  # nothing to limit, nothing to share
        return [run(*groups[0], 0)]
    limit = None if float_products else max(1, (threads - spare) // len(groups))
    if threads == 1 and not _has_threadpoolctl():  # one thread: nothing to share out
        limit = None
    with blas_threads(limit):
        if len(groups) == 1:
            return [run(*groups[0], 0)]
        pool = _pool(len(groups) - 1)
        futures = [pool.submit(run, lo, hi, i) for i, (lo, hi) in enumerate(groups) if i]
        try:
            first = run(*groups[0], 0)
        finally:  # an error or Ctrl-C in the first group leaves no group running on
            wait(futures)  # the run's state (and the BLAS limit in force) after the call
        return [first, *(f.result() for f in futures)]


@contextmanager
def blas_threads(count: int | None) -> Iterator[None]:
    """BLAS limited to ``count`` threads within the block (restored after; None: left
    as it is)."""
    if count is None:
        yield
        return
    with _controller().limit(limits=count, user_api="blas"):
        yield


@functools.cache
def _has_threadpoolctl() -> bool:
    """Whether threadpoolctl (extra ``threads``) is installed (asked once)."""
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _controller():
    """The process's thread pools (found once: it takes milliseconds).

    Raises:
        SnucError: threadpoolctl is not installed (one line naming the extra).
    """
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        raise SnucError(
            "a run on several threads limits BLAS per group and needs threadpoolctl: "
            "pip install 'snuc[threads]' (or run with --threads 1)"
        ) from None
    return ThreadpoolController()


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads, kept for the process's later runs."""
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="snuc-run")
        return pool
