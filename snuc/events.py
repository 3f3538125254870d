"""Event-camera and event-audio recordings as spike tensors for ``snuc eval --task custom``.

Neuromorphic data sets (N-MNIST, DVS Gesture, SHD, ...) come as lists of events, one
structured NumPy array per recording with integer fields ``x``, ``p``, ``t`` and, for
cameras, ``y``: the convention of the ``tonic`` library, whose data sets yield exactly
such arrays (``t`` in microseconds from the start of the recording, ``p`` the polarity).
This module bins them into the dense ``[T, N, F]`` spike tensor that a compiled network
reads and writes the ``.npz`` of a custom task (SPEC §12)::

    from snuc.events import event_task_arrays, save_custom_data
    arrays = event_task_arrays(recordings, labels, sensor_size=(34, 34, 2), dt_us=1000)
    save_custom_data("nmnist.npz", arrays)
    # snuc eval model.onnx --task custom --data nmnist.npz --metric accuracy-count

The feature index of an event is ``(p * H + y) * W + x`` for a sensor ``(W, H, P)`` (tonic's
``sensor_size`` order), so ``features.reshape(P, H, W)`` is the frame tonic's ``ToFrame``
draws; time bin ``t // dt_us`` counts from the recording's start, so silent lead-in is kept.
NumPy only: ``tonic`` itself is not needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from snuc.ir.errors import SnucError

__all__ = ["event_task_arrays", "events_to_spikes", "save_custom_data"]


def events_to_spikes(
    events: np.ndarray,
    sensor_size: Sequence[int],
    *,
    dt_us: float,
    steps: int | None = None,
    binary: bool = True,
) -> np.ndarray:
    """One recording's events binned into ``[T, F]`` float32 spikes.

    Args:
        events: a structured array with integer fields ``x``, ``p``, ``t`` (and ``y`` where
            ``sensor_size[1] > 1``); ``t`` in microseconds, non-negative.
        sensor_size: ``(W, H, P)``, tonic's order; ``F = W * H * P``.
        dt_us: the width of a time bin in microseconds (one network timestep).
        steps: keep the first ``steps`` bins (later events are dropped); default: up to the
            last event's bin.
        binary: 1 where a bin holds any event of that feature (a spike); False keeps the
            event count.

    Raises:
        SnucError: a missing field, a coordinate outside the sensor, a negative time, or a
            non-positive ``dt_us``/``steps``; one line.
    """
    width, height, polarities = _sensor(sensor_size)
    if not dt_us > 0:
        raise SnucError(f"dt_us must be a positive number of microseconds, got {dt_us}")
    if steps is not None and steps < 1:
        raise SnucError(f"steps must be at least 1, got {steps}")
    x, y, p, t = _fields(events, height)
    _check_range("x", x, width)
    _check_range("y", y, height)
    _check_range("p", p, polarities)
    if t.size and not np.isfinite(t).all():
        raise SnucError("event times must be finite microseconds; some are NaN or infinite")
    if t.size and t.min() < 0:
        raise SnucError(f"event times must be >= 0 microseconds, got {t.min()}")
    bins = np.floor(t / dt_us).astype(np.int64)
    count = steps if steps is not None else (int(bins.max()) + 1 if bins.size else 1)
    keep = bins < count
    feature = (p[keep] * height + y[keep]) * width + x[keep]
    spikes = np.zeros((count, width * height * polarities), dtype=np.float32)
    np.add.at(spikes, (bins[keep], feature), 1.0)
    return np.minimum(spikes, 1.0) if binary else spikes


def event_task_arrays(
    recordings: Sequence[np.ndarray],
    labels: Sequence[int] | np.ndarray,
    sensor_size: Sequence[int],
    *,
    dt_us: float,
    steps: int | None = None,
    binary: bool = True,
) -> dict[str, np.ndarray]:
    """The custom task's ``inputs [T, N, F]``, ``lengths [N]`` and ``targets [N]``.

    Each recording is binned by :func:`events_to_spikes`; shorter ones are padded with
    silence after their ``length`` steps (the custom metrics ignore steps past it).
    ``T`` is ``steps``, or the longest recording's bins.
    """
    labels = np.asarray(labels)
    if len(recordings) == 0:
        raise SnucError("no recordings to convert")
    if labels.shape != (len(recordings),) or not np.issubdtype(labels.dtype, np.integer):
        raise SnucError(
            f"labels must be {len(recordings)} integers (one per recording), got "
            f"{labels.dtype} {list(labels.shape)}"
        )
    binned = [
        events_to_spikes(r, sensor_size, dt_us=dt_us, steps=steps, binary=binary)
        for r in recordings
    ]
    total = max(b.shape[0] for b in binned)
    inputs = np.zeros((total, len(binned), binned[0].shape[1]), dtype=np.float32)
    for n, b in enumerate(binned):
        inputs[: b.shape[0], n] = b
    lengths = np.array([b.shape[0] for b in binned], dtype=np.int64)
    return {"inputs": inputs, "lengths": lengths, "targets": labels.astype(np.int64)}


def save_custom_data(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write a custom task's arrays (:func:`event_task_arrays`) as the ``.npz`` that
    ``snuc eval --task custom --data`` reads; the file appears whole or not at all."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial.npz")
    try:
        np.savez_compressed(partial, **arrays)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _sensor(sensor_size: Sequence[int]) -> tuple[int, int, int]:
    size = tuple(sensor_size)
    if len(size) != 3 or not all(isinstance(d, (int, np.integer)) and d >= 1 for d in size):
        raise SnucError(
            f"sensor_size must be (W, H, P), three positive integers as in tonic, got {size}"
        )
    return int(size[0]), int(size[1]), int(size[2])


def _fields(events: np.ndarray, height: int) -> tuple[np.ndarray, ...]:
    names = getattr(getattr(events, "dtype", None), "names", None) or ()
    needed = ("x", "p", "t") if height == 1 else ("x", "y", "p", "t")
    missing = [f for f in needed if f not in names]
    if missing:
        raise SnucError(
            f"events need the fields {', '.join(needed)} (tonic's structured arrays); "
            f"missing {', '.join(missing)} in {list(names) or 'a plain array'}"
        )
    x, p = (np.asarray(events[f]).astype(np.int64) for f in ("x", "p"))
    y = np.asarray(events["y"]).astype(np.int64) if "y" in names else np.zeros_like(x)
    t = np.asarray(events["t"]).astype(np.float64)
    return x, y, p, t


def _check_range(name: str, values: np.ndarray, size: int) -> None:
    if values.size and (values.min() < 0 or values.max() >= size):
        bad = values[(values < 0) | (values >= size)][0]
        raise SnucError(f"event field {name} = {bad} is outside the sensor (0..{size - 1})")
