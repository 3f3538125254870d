"""Running a study's configurations: the artefact cache, the job a worker runs, and the
executors that run jobs (SPEC §12).

* The **cache** is a directory of compiled artefacts named by their build's content hash
  (:meth:`~snuc.study_spec.Build.key`): a (model, target, mapping) compiles once, ever.
* A :class:`Job` is one configuration, self-contained and picklable: a worker needs only
  the artefact (by hash) and the task's data (by key) to turn it into a row. Every
  configuration's randomness is keyed by its own seed, so rows do not depend on which
  worker runs it or when.
* Executors: ``serial`` (in this process); ``local`` worker processes (spawned, each
  one's BLAS pinned to its share of the cores by environment variables set before NumPy
  loads in it); ``ray`` (an existing cluster at ``address``, or a local one), where the
  artefacts and data travel through Ray's object store by content hash, so no shared file
  system is assumed; ``dask`` (a Dask distributed scheduler at ``address``, or a local
  cluster), where they are scattered to the workers the same way. Each yields rows as
  they finish.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from snuc.ir.errors import SnucError
from snuc.runtime.threads import THREADS_VARIABLE, default_threads

EXECUTORS = ("local", "serial", "ray", "dask")
BLAS_THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


@dataclass(frozen=True)
class Job:
    """One configuration for a worker.

    Attributes:
        id: the configuration's content hash (its row's key).
        artefact: the content hash of its artefact in the cache.
        data: the key of its task's data (see :func:`data_key`).
        task: the task's name; ``metric``: the custom task's metric.
        options: the task options; ``run``: the run configuration; ``backend``.
        fields: the row's columns that the configuration fixes (model, target, axes...).
    """

    id: str
    artefact: str
    data: str
    task: str
    metric: Any
    options: Any
    run: Any
    backend: str
    fields: dict[str, Any]


def data_key(task: str, split: str, data: str | None) -> str:
    """The key of a task's data: its name and split, or the custom ``.npz`` path."""
    return f"{task}:{split}" if data is None else f"custom:{data}"


# --------------------------------------------------------------------------- the cache


def cache_path(cache: str | os.PathLike[str], key: str) -> Path:
    """Where the artefact of build ``key`` lives in the cache (a zip file)."""
    return Path(cache) / f"{key}.snuc.zip"


def default_cache() -> Path:
    """``$SNUC_CACHE``, else ``~/.cache/snuc/artefacts``."""
    given = os.environ.get("SNUC_CACHE")
    return Path(given) if given else Path.home() / ".cache" / "snuc" / "artefacts"


# --------------------------------------------------------------------------- one job


class Resources:
    """What jobs read, loaded once per process: artefacts by hash, data by key, and the
    last prepared chunks (the configurations of one artefact share them)."""

    def __init__(self, data: dict[str, Any], cache: str | None = None) -> None:
        self.data = data
        self.cache = cache
        self._artefacts: dict[str, Any] = {}
        self._pieces: dict[tuple, Any] = {}

    def artefact(self, key: str) -> Any:
        if key not in self._artefacts:
            from snuc.runtime.artefact import load

            if len(self._artefacts) >= 2:  # bounded memory: jobs come grouped by artefact
                self._artefacts.pop(next(iter(self._artefacts)))
            self._artefacts[key] = load(self.artefact_path(key))
        return self._artefacts[key]

    def artefact_path(self, key: str) -> Path:
        return cache_path(self.cache, key)

    def pieces(self, job: Job, task: Any, art: Any) -> Any:
        memo = (job.artefact, job.data, job.options)
        if memo not in self._pieces:
            self._pieces.clear()
            self._pieces[memo] = task.prepare(self.data[job.data], art, job.options)
        return self._pieces[memo]


def run_job(job: Job, resources: Resources) -> dict[str, Any]:
    """The row of one configuration."""
    from snuc import evaluate as ev

    art = resources.artefact(job.artefact)
    if job.task == "custom":
        task = ev.resolve_task("custom", resources.data[job.data], job.metric)
    else:
        task = ev.resolve_task(job.task)
    pieces = resources.pieces(job, task, art)
    scored = ev.score_pieces(art, task, pieces, job.run, job.backend)
    coding = job.options.coding_seed if task.coded else None
    base = {k: job.fields[k] for k in ("split", "model", "target")}
    row = ev.run_row(task, base, job.backend, job.run, coding, scored)
    return {**row, **job.fields, "config_id": job.id}


# --------------------------------------------------------------------------- executors


def execute(
    jobs: Sequence[Job],
    resources: Resources,
    *,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Rows of ``jobs`` as they finish (in any order).

    Raises:
        SnucError: an unknown executor, Ray or Dask missing, or a job's own error.
    """
    if executor not in EXECUTORS:
        raise SnucError(f"unknown executor {executor!r}; expected one of {', '.join(EXECUTORS)}")
    if executor == "ray":
        yield from _ray(jobs, resources, address, workers)
        return
    if executor == "dask":
        yield from _dask(jobs, resources, address, workers)
        return
    count = min(workers or cpu_count(), len(jobs))
    if executor == "serial" or count <= 1:
        for job in jobs:
            yield run_job(job, resources)
        return
    yield from _local(jobs, resources, count)


def cpu_count() -> int:
    """The cores this process may run on."""
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# Worker processes: the process's Resources, set by the pool's initializer.
_WORKER: list[Resources] = []


def _init_worker(data: dict[str, Any], cache: str) -> None:
    _WORKER[:] = [Resources(data, cache)]


def _run_in_worker(job: Job) -> dict[str, Any]:
    return run_job(job, _WORKER[0])


_THREAD_VARIABLES = (*BLAS_THREAD_VARIABLES, THREADS_VARIABLE)
"""What sizes a worker's threads: BLAS's pools and snuc's runs."""


def worker_threads(workers: int) -> int:
    """Threads of each of ``workers`` worker processes on this machine: the process's run
    threads (``--threads``, :data:`~snuc.runtime.threads.THREADS_VARIABLE`, default every
    core) shared out, at least one."""
    return max(1, default_threads() // workers)


@contextlib.contextmanager
def pinned_blas(threads: int) -> Iterator[None]:
    """The BLAS thread variables, and snuc's (the threads of a run), set to ``threads``
    while the block runs: processes started inside inherit them and read them when NumPy
    loads and when they run."""
    saved = {name: os.environ.get(name) for name in _THREAD_VARIABLES}
    os.environ.update({name: str(threads) for name in _THREAD_VARIABLES})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _local(jobs: Sequence[Job], resources: Resources, workers: int) -> Iterator[dict[str, Any]]:
    """Spawned worker processes, each running on ``threads // workers`` threads (the
    process's run threads, default every core; BLAS and snuc's runs, so that workers on
    all cores draw no read noise on threads of their own). On an error or an interrupt
    the jobs not started are cancelled."""
    with pinned_blas(worker_threads(workers)):
        pool = ProcessPoolExecutor(
            workers,
            mp_context=get_context("spawn"),
            initializer=_init_worker,
            initargs=(resources.data, str(resources.cache)),
        )
        try:
            pending = {pool.submit(_run_in_worker, job) for job in jobs}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _ray(
    jobs: Sequence[Job], resources: Resources, address: str | None, workers: int | None
) -> Iterator[dict[str, Any]]:
    """Ray tasks, one per job; artefact bytes and data go through the object store once
    each, by content hash, and each Ray worker keeps what it fetched."""
    try:
        import ray
    except ImportError:
        raise SnucError(
            "--executor ray needs Ray: pip install 'snuc[ray]' (or 'ray>=2.9')"
        ) from None
    started = not ray.is_initialized()
    # ray.init installs signal handlers of its own that ray.shutdown leaves behind.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    if started:
        options = {"address": address} if address else {"num_cpus": workers or cpu_count()}
        try:
            ray.init(
                **options, include_dashboard=False, log_to_driver=False, configure_logging=False
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"at {address}" if address else "on this machine"
            raise SnucError(f"cannot start or join a Ray cluster {where}: {exc}") from None
    try:
        artefacts = {
            key: ray.put(resources.artefact_path(key).read_bytes())
            for key in dict.fromkeys(job.artefact for job in jobs)
        }
        data = {key: ray.put(resources.data[key]) for key in dict.fromkeys(j.data for j in jobs)}
        # One CPU per task, so each runs on one thread: BLAS and snuc's own (a task
        # left at its default would split its batch over every core of its node).
        one_thread = {"env_vars": dict.fromkeys(_THREAD_VARIABLES, "1")}
        remote = ray.remote(num_cpus=1, max_retries=3, runtime_env=one_thread)(_ray_job)
        pending = [remote.remote(job, [artefacts[job.artefact]], [data[job.data]]) for job in jobs]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started:
            ray.shutdown()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


def _ray_job(job: Job, artefact_ref: list[Any], data_ref: list[Any]) -> dict[str, Any]:
    """A job in a Ray worker: the artefact and data are fetched from the object store
    (the refs come wrapped in lists so that Ray hands them over unresolved) only when this
    worker does not hold them yet."""
    import ray

    return _remote_job(job, lambda: ray.get(artefact_ref[0]), lambda: ray.get(data_ref[0]))


def _dask(
    jobs: Sequence[Job], resources: Resources, address: str | None, workers: int | None
) -> Iterator[dict[str, Any]]:
    """Dask tasks, one per job, on the scheduler at ``address`` or on a local cluster of
    ``workers`` processes (threads shared out as for ``local``, :func:`worker_threads`);
    artefact bytes and data are scattered to the cluster once each; a task lost with its
    worker is run again by the scheduler (its ``allowed-failures``), a job's own error is
    reported at once."""
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise SnucError(
            "--executor dask needs Dask: pip install 'snuc[dask]' (or 'dask[distributed]')"
        ) from None
    with contextlib.ExitStack() as stack:
        try:
            cluster = address
            if address is None:
                count = workers or cpu_count()
                with pinned_blas(worker_threads(count)):
                    cluster = stack.enter_context(
                        LocalCluster(
                            n_workers=count,
                            threads_per_worker=1,
                            dashboard_address=None,
                            silence_logs=logging.ERROR,
                        )
                    )
            client = stack.enter_context(Client(cluster))
        except (OSError, TimeoutError, ValueError) as exc:
            where = f"at {address}" if address else "on this machine"
            raise SnucError(f"cannot start or join a Dask cluster {where}: {exc}") from None
        # A one-item list scatters its item whole (a dict would be scattered per key).
        artefacts = {
            key: client.scatter([resources.artefact_path(key).read_bytes()])[0]
            for key in dict.fromkeys(job.artefact for job in jobs)
        }
        data = {
            key: client.scatter([resources.data[key]])[0]
            for key in dict.fromkeys(job.data for job in jobs)
        }
        futures = [
            client.submit(
                _dask_job,
                job,
                artefacts[job.artefact],
                data[job.data],
                key=f"snuc-{job.id}",
                pure=False,
            )
            for job in jobs
        ]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            client.cancel(futures)


def _dask_job(job: Job, artefact: bytes, data: Any) -> dict[str, Any]:
    """A job in a Dask worker: Dask hands over the scattered artefact and data."""
    return _remote_job(job, lambda: artefact, lambda: data)


_REMOTE_WORKER: list[Resources] = []
_REMOTE_LOCK = threading.Lock()


def _remote_job(job: Job, artefact: Callable[[], bytes], data: Callable[[], Any]) -> dict[str, Any]:
    """A job in a cluster's worker process: the artefact (``artefact()``, its bytes) is
    written to the process's own cache and the data (``data()``) kept, each only when
    this process does not hold it yet; no shared file system is assumed."""
    with _REMOTE_LOCK:  # a Dask worker runs several threads
        if not _REMOTE_WORKER:
            _REMOTE_WORKER.append(Resources({}, tempfile.mkdtemp(prefix="snuc-worker-cache-")))
    resources = _REMOTE_WORKER[0]
    path = resources.artefact_path(job.artefact)
    if not path.exists():
        temp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        temp.write_bytes(artefact())
        os.replace(temp, path)
    if job.data not in resources.data:
        resources.data[job.data] = data()
    return run_job(job, resources)
