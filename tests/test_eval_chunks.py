"""``snuc eval``'s default chunks are sized by a model's activations (issue 13).

A convolutional model's first layers are many times its input, so chunks sized by inputs
and outputs alone do not fit in memory. These tests run a small convolutional SNU under a
small memory budget and check the peak with tracemalloc, and that chunking changes no
float or quantized result.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from onnx_models import conv_snu_scan_model

from snuc import eval_tasks
from snuc import evaluate as ev
from snuc.driver import compile_model
from snuc.eval_tasks import Batch, sequence_bytes

STEPS, COUNT, CLASSES = 10, 200, 4
BUDGET_SEQUENCES = 10
"""The memory budget in the tests: the estimated run memory of this many sequences."""


@pytest.fixture(scope="module")
def conv_artefact(tmp_path_factory) -> Path:
    """A small convolutional SNU (its conv layer's output is 4 times its input), saved."""
    root = tmp_path_factory.mktemp("conv")
    onnx_path = root / "conv.onnx"
    onnx_path.write_bytes(
        conv_snu_scan_model(channels=2, filters=8, image=12, n_out=CLASSES).SerializeToString()
    )
    return compile_model(onnx_path, "pcm-256x256").save(root / "conv.snuc")


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "inputs": (rng.random((STEPS, COUNT, 2, 12, 12)) < 0.3).astype(np.float32),
        "lengths": np.full(COUNT, STEPS, dtype=np.int64),
        "targets": rng.integers(0, CLASSES, COUNT),
    }


def _one(mode: str) -> dict:
    """One configuration of ``mode`` (pcm: one chip at one time)."""
    return {"modes": [mode], "seeds": [0], "t_inference_s": [3600], "drift_compensation": [True]}


def _budget(model: Path) -> int:
    return BUDGET_SEQUENCES * sequence_bytes(ev.load_artefact(model), STEPS)


def _evaluate(
    model: Path, data: dict[str, np.ndarray], mode: str, batch_size: int | None
) -> tuple[list[np.ndarray], int]:
    """Every chunk's outputs, and the tracemalloc peak of the evaluation once the artefact
    is loaded (afresh, so that each call builds its own plan: parsing the graph's text
    peaks higher than these runs)."""
    chunks: list[np.ndarray] = []

    def keep(batches: Iterable[Batch]) -> float:
        chunks.extend(batch.outputs for batch in batches)
        return 0.0

    art = ev.load_artefact(model)
    tracemalloc.start()
    try:
        ev.evaluate(art, "custom", data=data, metric=keep, batch_size=batch_size, **_one(mode))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return chunks, peak


def test_a_convolutional_models_chunks_are_sized_by_its_activations(conv_artefact) -> None:
    art = ev.load_artefact(conv_artefact)
    per_step_input = 2 * 12 * 12 * 4
    # Far more than inputs and outputs: the conv layer, its patches, states and tiles.
    assert sequence_bytes(art, STEPS) > 10 * STEPS * per_step_input
    assert sequence_bytes(art, 2 * STEPS) == 2 * sequence_bytes(art, STEPS)


@pytest.mark.parametrize("mode", ["float", "quantized", "pcm"])
def test_eval_under_a_small_budget_keeps_its_peak_under_the_budget(
    conv_artefact, data, monkeypatch, mode
) -> None:
    budget = _budget(conv_artefact)
    _, base = _evaluate(conv_artefact, data, mode, batch_size=1)
    _, whole = _evaluate(conv_artefact, data, mode, batch_size=COUNT)
    assert whole - base > 2 * budget, "the whole split must not fit the budget"
    monkeypatch.setattr(eval_tasks, "CHUNK_BYTES", budget)
    chunks, peak = _evaluate(conv_artefact, data, mode, batch_size=None)
    assert [c.shape[1] for c in chunks] == [BUDGET_SEQUENCES] * (COUNT // BUDGET_SEQUENCES)
    assert peak - base <= budget


@pytest.mark.parametrize("mode", ["float", "quantized"])
def test_chunks_give_the_results_of_one_big_chunk(conv_artefact, data, monkeypatch, mode) -> None:
    whole, _ = _evaluate(conv_artefact, data, mode, batch_size=None)
    assert len(whole) == 1, "the default budget runs this split whole"
    monkeypatch.setattr(eval_tasks, "CHUNK_BYTES", _budget(conv_artefact))
    chunks, _ = _evaluate(conv_artefact, data, mode, batch_size=None)
    assert len(chunks) == COUNT // BUDGET_SEQUENCES
    np.testing.assert_array_equal(np.concatenate(chunks, axis=1), whole[0])
    chunked = ev.evaluate(conv_artefact, "custom", data=data, metric="accuracy-count", modes=[mode])
    monkeypatch.undo()
    assert chunked == ev.evaluate(
        conv_artefact, "custom", data=data, metric="accuracy-count", modes=[mode]
    )


def test_an_explicit_batch_size_wins(conv_artefact, data, monkeypatch) -> None:
    monkeypatch.setattr(eval_tasks, "CHUNK_BYTES", _budget(conv_artefact))
    chunks, _ = _evaluate(conv_artefact, data, "float", batch_size=60)
    assert [c.shape[1] for c in chunks] == [60, 60, 60, 20]
