"""Training checkpoints for the scripts in this folder: what a checkpoint holds, writing it
atomically, reading it back, and the resumable loop over one epoch's batches.

A checkpoint is written at the end of every epoch and, inside an epoch, after the batch
that finds ``--checkpoint-every`` seconds gone since the last one (also when
``--stop-after-batches`` is reached, or a SIGTERM arrives while the script runs). It holds
the model, the optimiser, the best-on-validation state, the per-epoch log, the time spent,
every random generator the run draws from (Python's, NumPy's global one, PyTorch's on the
CPU and on CUDA, and the script's own per-epoch generators) and, mid-epoch, the position
in the epoch: the batches done and the script's running values (loss sums, the recurrent
state carried between windows). A run resumed from it draws the same numbers in the same
order as one that never stopped, so on the same device it ends on the same weights, bit
for bit (tests/test_training.py checks this).

A script's epoch is written against :class:`EpochRun`::

    def train_epoch(epoch, run):
        rng = run.keep_generator(epoch_generator(seed, epoch))   # after drawing the order
        sums = run.carry(loss=0.0, seen=0)                        # the saved ones on resume
        for index in run.batches(count, desc=f"epoch {epoch}"):   # skips the batches done
            ...                                                   # may checkpoint after it
        return sums["loss"] / sums["seen"]

Anything else that changes from batch to batch must live in ``run.carry``.
"""

from __future__ import annotations

import os
import random
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from snuc.ir.errors import SnucError

FORMAT = 2
"""Checkpoint layout version: 2 adds random states and the position inside an epoch (a
version-1 file, written at an epoch's end only, still resumes)."""


class TrainingStopped(Exception):
    """Training stopped on request (``--stop-after-batches`` or SIGTERM) after a checkpoint."""


# ------------------------------------------------------------------------- random states


def random_states() -> dict[str, Any]:
    """The state of every global generator: Python's, NumPy's, PyTorch's (CPU and CUDA)."""
    legacy = np.random.get_state(legacy=False)
    legacy["state"] = {"key": legacy["state"]["key"].tolist(), "pos": legacy["state"]["pos"]}
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": legacy,
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: dict[str, Any]) -> None:
    """Restore what :func:`random_states` returned (CUDA only where a device is present)."""
    random.setstate(_as_tuples(states["python"]))
    legacy = dict(states["numpy"])
    legacy["state"] = {
        "key": np.asarray(legacy["state"]["key"], dtype=np.uint32),
        "pos": legacy["state"]["pos"],
    }
    np.random.set_state(legacy)
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])


def _as_tuples(value: Any) -> Any:
    """Lists back to tuples (``random.setstate`` wants tuples; a reload may give lists)."""
    if isinstance(value, list | tuple):
        return tuple(_as_tuples(v) for v in value)
    return value


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor in it (in nested tuples, lists, dicts) moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple | list):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


# ------------------------------------------------------------------------ files on disk


def write_atomically(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it over ``path``:
    a crash at any moment leaves either the old checkpoint or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def read(path: Path) -> dict[str, Any]:
    """Load a checkpoint's dictionary (tensors on the CPU, no arbitrary objects)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, EOFError, OSError) as exc:
        raise SnucError(f"checkpoint {path} cannot be read ({_first_line(exc)})") from None


def misfit(path: Path, exc: BaseException) -> SnucError:
    """The error for a checkpoint that does not belong to this run's network."""
    return SnucError(
        f"checkpoint {path} does not fit this network ({_first_line(exc)}); delete it or "
        "pass another --checkpoint"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ------------------------------------------------------------------------ stop requests


class StopRequests:
    """Why training should stop at the next batch boundary: a batch budget for this
    process (``--stop-after-batches``) or a SIGTERM caught by :meth:`catch_sigterm`."""

    def __init__(self, max_batches: int | None) -> None:
        self.max_batches = max_batches
        self.batches = 0
        self.signalled = False

    def count_batch(self) -> None:
        self.batches += 1

    @property
    def reason(self) -> str | None:
        """Why to stop now, or None to go on."""
        if self.signalled:
            return "SIGTERM"
        if self.max_batches is not None and self.batches >= self.max_batches:
            return f"--stop-after-batches {self.max_batches}"
        return None

    def catch_sigterm(self) -> Callable[[], None]:
        """Turn SIGTERM into a stop at the next batch boundary (after a checkpoint).

        Returns:
            A function that puts the previous handler back.
        """
        previous = signal.getsignal(signal.SIGTERM)

        def handler(signum: int, frame: FrameType | None) -> None:
            self.signalled = True

        signal.signal(signal.SIGTERM, handler)
        return lambda: signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------- one epoch's loop


class EpochRun:
    """One epoch's batches, started fresh or resumed from the middle.

    Args:
        epoch: the epoch (1-based).
        resume: the ``position`` of a mid-epoch checkpoint of this epoch, or None.
        device: where the carried tensors go on resume.
        save: ``save(position)`` writes a checkpoint with this epoch's position.
        due: ``due()`` is True when a periodic checkpoint is due.
        stops: the stop requests, counted once per batch.
        progress: wraps the batch indices in a progress bar, or not (``progress(it,
            desc=...)``).
    """

    def __init__(
        self,
        epoch: int,
        *,
        resume: dict[str, Any] | None,
        device: torch.device,
        save: Callable[[dict[str, Any]], None],
        due: Callable[[], bool],
        stops: StopRequests,
        progress: Callable[..., Iterator[int]],
    ) -> None:
        self.epoch = epoch
        self._resume = resume
        self._device = device
        self._save = save
        self._due = due
        self._stops = stops
        self._progress = progress
        self._generators: list[np.random.Generator] = []
        self._carry: dict[str, Any] = {}
        self.done = 0
        self.count = 0

    def keep_generator(self, rng: np.random.Generator) -> np.random.Generator:
        """Save ``rng`` with mid-epoch checkpoints; on resume, :meth:`batches` sets it back
        to where it was. Register it after the draws that every start repeats (the
        epoch's order) and before the per-batch ones."""
        self._generators.append(rng)
        return rng

    def carry(self, **initial: Any) -> dict[str, Any]:
        """The epoch's running values (saved mid-epoch): ``initial`` on a fresh start, the
        saved ones (tensors on the training device) when resuming."""
        if self._resume is not None:
            self._carry = to_device(dict(self._resume["carry"]), self._device)
        else:
            self._carry = dict(initial)
        return self._carry

    def batches(self, count: int, *, desc: str) -> Iterator[int]:
        """Yield the indices of the batches still to run, ``0 .. count - 1`` on a fresh
        start. Call it after seeding the epoch's generators: on resume it first restores
        every random state saved mid-epoch. After each batch it checkpoints when one is
        due, and raises :class:`TrainingStopped` (after checkpointing) when asked to stop.
        """
        start = 0
        if self._resume is not None:
            start = self._resume["batch"]
            set_random_states(self._resume["random"])
            saved = self._resume["generators"]
            if len(saved) != len(self._generators):
                raise SnucError(
                    f"the checkpoint holds {len(saved)} epoch generators, this script keeps "
                    f"{len(self._generators)}: it was written by another version"
                )
            for rng, state in zip(self._generators, saved, strict=True):
                rng.bit_generator.state = state
            self._resume = None
        self.done, self.count = start, count
        for index in self._progress(range(start, count), desc=desc):
            yield index
            self.done = index + 1
            self._stops.count_batch()
            if self.done == count:
                break  # the epoch's end: fit checkpoints (and stops) after validating
            reason = self._stops.reason
            if reason is not None or self._due():
                self._save(self.position())
            if reason is not None:
                raise TrainingStopped(reason)

    def position(self) -> dict[str, Any]:
        """Where the epoch stands: what a mid-epoch checkpoint stores."""
        return {
            "batch": self.done,
            "batches": self.count,
            "carry": self._carry,
            "random": random_states(),
            "generators": [rng.bit_generator.state for rng in self._generators],
        }
