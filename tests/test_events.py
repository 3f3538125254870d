"""Event recordings (tonic's structured arrays) binned into spikes and scored as a custom task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import snuc
from snuc import evaluate as ev
from snuc.eval_tasks import read_custom_data
from snuc.events import event_task_arrays, events_to_spikes, save_custom_data
from snuc.ir.errors import SnucError

MODEL = Path(__file__).resolve().parents[1] / "examples" / "snu_small.onnx"
CAMERA = np.dtype([("x", "<i2"), ("y", "<i2"), ("t", "<i8"), ("p", "<i1")])
SENSOR = (4, 4, 2)  # W, H, P: 32 features, snu_small's input
FLOAT_TIMES = np.dtype([("x", "<i2"), ("y", "<i2"), ("t", "<f8"), ("p", "<i1")])


def _events(rows: list[tuple[int, int, int, int]]) -> np.ndarray:
    return np.array(rows, dtype=CAMERA)


def _random_recording(rng: np.random.Generator, count: int, duration_us: int) -> np.ndarray:
    events = np.zeros(count, dtype=CAMERA)
    events["x"], events["y"] = rng.integers(0, 4, count), rng.integers(0, 4, count)
    events["p"], events["t"] = (
        rng.integers(0, 2, count),
        np.sort(rng.integers(0, duration_us, count)),
    )
    return events


def test_each_event_lands_in_its_bin_and_tonics_frame_layout() -> None:
    events = _events(
        [(1, 2, 0, 0), (3, 0, 999, 1), (3, 0, 1500, 1), (3, 0, 1700, 1), (0, 3, 4200, 0)]
    )
    counts = events_to_spikes(events, SENSOR, dt_us=1000, binary=False)
    assert counts.shape == (5, 32) and counts.dtype == np.float32
    frames = counts.reshape(5, 2, 4, 4)  # [T, P, H, W], as tonic's ToFrame draws them
    assert frames[0, 0, 2, 1] == 1 and frames[0, 1, 0, 3] == 1
    assert frames[1, 1, 0, 3] == 2 and frames[4, 0, 3, 0] == 1
    assert counts.sum() == 5 and not counts[2:4].any()
    spikes = events_to_spikes(events, SENSOR, dt_us=1000)
    assert np.array_equal(spikes, np.minimum(counts, 1)) and spikes[1].sum() == 1
    assert np.array_equal(events_to_spikes(events, SENSOR, dt_us=1000, steps=2), spikes[:2])


def test_audio_events_without_y() -> None:
    audio = np.array([(5, 0, 10), (699, 0, 2500)], dtype=[("x", "<i2"), ("p", "<i1"), ("t", "<f8")])
    spikes = events_to_spikes(audio, (700, 1, 1), dt_us=1000)
    assert spikes.shape == (3, 700) and spikes[0, 5] == 1 and spikes[2, 699] == 1


@pytest.mark.parametrize(
    ("events", "sensor", "kwargs", "message"),
    [
        (np.zeros(3), SENSOR, {}, "missing x, y, p, t in a plain array"),
        (_events([(4, 0, 0, 0)]), SENSOR, {}, "x = 4 is outside the sensor"),
        (_events([(0, 0, 0, 2)]), SENSOR, {}, "p = 2 is outside the sensor"),
        (_events([(0, 0, -5, 0)]), SENSOR, {}, "times must be >= 0"),
        (np.array([(0, 0, np.nan, 0)], dtype=FLOAT_TIMES), SENSOR, {}, "NaN or infinite"),
        (_events([(0, 0, 0, 0)]), (4, 4), {}, "sensor_size must be (W, H, P)"),
        (_events([(0, 0, 0, 0)]), SENSOR, {"dt_us": 0}, "dt_us must be a positive"),
        (_events([(0, 0, 0, 0)]), SENSOR, {"steps": 0}, "steps must be at least 1"),
    ],
)
def test_bad_events_are_one_line(events, sensor, kwargs, message) -> None:
    with pytest.raises(SnucError, match="^[^\n]*$") as exc:
        events_to_spikes(events, sensor, **{"dt_us": 1000, **kwargs})
    assert message in str(exc.value)


def test_labels_must_match_the_recordings() -> None:
    with pytest.raises(SnucError, match="labels must be 2 integers"):
        event_task_arrays([_events([(0, 0, 0, 0)])] * 2, [1.5, 2.0], SENSOR, dt_us=1000)


def test_recordings_become_a_custom_task_that_snuc_eval_scores(tmp_path) -> None:
    rng = np.random.default_rng(0)
    recordings = [_random_recording(rng, int(n), int(d)) for n, d in zip(
        rng.integers(20, 60, 12), rng.integers(3000, 8000, 12), strict=True)]  # fmt: skip
    labels = rng.integers(0, 10, 12)
    arrays = event_task_arrays(recordings, labels, SENSOR, dt_us=1000)
    path = save_custom_data(tmp_path / "events.npz", arrays)
    arrays = read_custom_data(path)
    assert not list(tmp_path.glob("*.partial*"))
    lengths = arrays["lengths"]
    assert arrays["inputs"].shape == (lengths.max(), 12, 32) and np.array_equal(
        arrays["targets"], labels
    )
    for n, recording in enumerate(recordings):
        alone = events_to_spikes(recording, SENSOR, dt_us=1000)
        assert lengths[n] == len(alone) and np.array_equal(arrays["inputs"][: len(alone), n], alone)
        assert not arrays["inputs"][len(alone) :, n].any()  # silence after the recording

    y = snuc.compile(MODEL).run(arrays["inputs"], mode="float")
    steps = np.arange(len(y))[:, None] < lengths[None, :]
    counts = np.where(steps[..., None], y, 0).sum(axis=0)
    want = 100.0 * np.mean(np.argmax(counts, axis=1) == labels)
    rows = ev.evaluate(MODEL, "custom", data=path, metric="accuracy-count", modes="float")
    assert rows[0]["value"] == pytest.approx(want) and rows[0]["count"] == 12
