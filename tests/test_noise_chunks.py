"""Read noise of a batch run in chunks (``--batch-size``, SPEC §6; docs/targets.md).

Each chunk is a run of its own. Read noise is one stream per sequence, keyed by (seed,
tile) and the sequence's global index (a chunk's first sequence plus its place in the
chunk), so chunks do not repeat each other's noise (identical sequences in two chunks get
different noisy outputs), a chunk at its offset equals the same sequences within the whole
batch, and the backends agree chunk by chunk.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnx_models as om  # tests/ is on sys.path under pytest (no __init__.py)
import pytest
from equivalence import assert_same  # tests/ is on sys.path under pytest

import snuc
from snuc import driver
from snuc import evaluate as ev
from snuc.eval_tasks import Piece
from snuc.ir import SnucError
from snuc.ir.target import TargetSpec, parse_target
from snuc.runtime import pcm
from snuc.runtime.artefact import Artefact
from snuc.runtime.config import RunConfig
from snuc.runtime.interpreter import run as interpret
from snuc.runtime.numpy_backend import Plan, run_numpy
from snuc.runtime.simulator import run_sim

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "snu_small.onnx"
SMALL = "pcm-16x16"  # small crossbars: layers split into row and column tiles
TARGET = parse_target(SMALL)
T = 9


def spikes(shape, rate: float = 0.4, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) < rate).astype(np.float32)


def identical(batch: int, features: int = 32, seed: int = 0) -> np.ndarray:
    """``batch`` copies of one spike sequence ``[T, 1, features]``."""
    return np.repeat(spikes((T, 1, features), seed=seed), batch, axis=1)


def sim(*args, **options) -> dict[str, np.ndarray]:
    """The simulator's outputs (``run_sim`` without its statistics)."""
    return run_sim(*args, **options)[0]


def assert_exactly(want: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


@pytest.fixture(scope="module")
def example() -> Artefact:
    return snuc.compile(EXAMPLE)


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    """A recurrent two-layer network on 16 x 16 crossbars: several tiles per layer."""
    path = tmp_path_factory.mktemp("noise_chunks") / "recurrent.onnx"
    onnx.save(om.snu_scan_model((6, 20, 9), recurrent=True), path)
    return driver.compile_model(path, SMALL).graph


# --------------------------------------------------------------------------- the key


def test_sequence_zero_is_the_seed_and_tile_key_in_float32():
    want = np.random.default_rng([5, 3, pcm.STREAMS["read"]]).standard_normal(16, np.float32)
    got = pcm.read_rng(5, 3, 0).standard_normal(16, np.float32)
    np.testing.assert_array_equal(got, want)
    block = pcm.read_noise_block(5, 3, (4, 2, 2))  # T=4 steps of 2 sequences, 2 columns
    assert block.dtype == np.float32
    np.testing.assert_array_equal(block[:, 0].reshape(-1), want[:8])


def test_sequence_s_is_the_key_advanced_by_s_times_two_to_the_64():
    got = pcm.read_noise_block(5, 3, (16,), offset=2)
    rng = np.random.default_rng([5, 3, pcm.STREAMS["read"]])
    rng.bit_generator.advance(2 << 64)
    np.testing.assert_array_equal(got, rng.standard_normal(16, np.float32))
    np.testing.assert_array_equal(pcm.read_noise_block(5, 3, (16, 3))[:, 2], got)
    # Different from every stream of small seeds, tiles and sequences (other stream names
    # included).
    others = [
        pcm.chip_rng(seed, tile, name).standard_normal(16, np.float32)
        for seed in range(8)
        for tile in range(8)
        for name in pcm.STREAMS
        if name != "read"
    ]
    others += [
        pcm.read_noise_block(seed, tile, (16,), offset=o)
        for seed in range(8)
        for tile in range(8)
        for o in range(8)
        if (seed, tile, o) != (5, 3, 2)
    ]
    assert not any(np.array_equal(got, other) for other in others)


def test_a_bad_sequence_is_a_one_line_error():
    for bad in (-1, 1.5, True, "2", 1 << 64):
        with pytest.raises(SnucError, match="sequence") as err:
            pcm.read_rng(0, 0, bad)
        assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- (a) chunks differ


@pytest.mark.parametrize("backend", ["numpy", "sim"])
def test_identical_sequences_in_two_chunks_get_different_noise(example, backend):
    """Keyed by (seed, tile) alone, the two chunks of identical sequences were the same
    run twice and gave bit-identical outputs; keyed by their first sequence, they differ
    -- as two sequences within one chunk always did."""
    x = identical(4)
    y = example.run(x, backend=backend, mode="pcm", seed=3, batch_size=2)
    assert y.shape == (T, 4, 10)
    assert not np.array_equal(y[:, 0:2], y[:, 2:4])
    assert not np.array_equal(y[:, 0], y[:, 1])
    # The noise alone tells them apart: without it the chunks are equal.
    quantized = example.run(x, backend=backend, mode="quantized", batch_size=2)
    np.testing.assert_array_equal(quantized[:, 0:2], quantized[:, 2:4])


def test_a_chunk_at_an_offset_is_the_run_of_its_sequences_at_that_offset(example):
    """Chunk k of a chunked run is ``Artefact.run(its sequences, batch_offset=first)``:
    what a caller that chunks a batch itself (``snuc eval``) gets."""
    x = spikes((T, 5, 32), seed=4)
    y = example.run(x, mode="pcm", seed=2, batch_size=2)
    for lo in (0, 2, 4):
        alone = example.run(x[:, lo : lo + 2], mode="pcm", seed=2, batch_offset=lo)
        np.testing.assert_array_equal(y[:, lo : lo + 2], alone)
    shifted = example.run(x[:, 2:4], mode="pcm", seed=2)
    assert not np.array_equal(y[:, 2:4], shifted)


def test_a_plan_restarts_its_streams_at_each_runs_offset(tiled):
    """A plan reuses a finished run's noise streams (same batch and block size): each
    reused stream starts at its run's offset, not the previous run's."""
    x = identical(2, features=6, seed=5)

    def fresh(offset: int) -> dict[str, np.ndarray]:
        plan = Plan.build(tiled, mode="pcm", target=TARGET, seed=1)
        return plan.run(x, batch_offset=offset)

    plan = Plan.build(tiled, mode="pcm", target=TARGET, seed=1)
    for offset in (0, 2, 2, 0, 4):
        assert_exactly(fresh(offset), plan.run(x, batch_offset=offset))
    assert any(not np.array_equal(fresh(0)[k], fresh(2)[k]) for k in fresh(0))


def test_a_bad_batch_offset_is_a_one_line_error(tiled):
    x = spikes((T, 2, 6))
    for runner in (run_numpy, interpret, run_sim):
        with pytest.raises(SnucError, match="batch_offset -1 is not valid") as err:
            runner(tiled, x, mode="pcm", target=TARGET, batch_offset=-1)
        assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- (b) backends agree


@pytest.mark.parametrize("batch_size", [2, 3])
def test_chunked_runs_agree_across_the_runtimes(tiled, batch_size):
    """numpy and sim chunk the batch themselves; the interpreter runs each chunk with
    its first sequence as ``batch_offset``. All agree to 1e-5 (spikes exactly)."""
    x = spikes((T, 5, 6), rate=0.5, seed=6)
    x[:, 3] = x[:, 0]  # an identical sequence in another chunk
    options = {"mode": "pcm", "target": TARGET, "seed": 4, "t_inference_s": 86400.0}
    numpy_y = run_numpy(tiled, x, batch_size=batch_size, **options)
    sim_y, _ = run_sim(tiled, x, batch_size=batch_size, **options)
    parts = [
        interpret(tiled, x[:, lo : lo + batch_size], batch_offset=lo, **options)
        for lo in range(0, 5, batch_size)
    ]
    interpreter_y = {k: np.concatenate([p[k] for p in parts], axis=1) for k in parts[0]}
    assert_same(interpreter_y, numpy_y)
    assert_same(interpreter_y, sim_y)
    whole = interpret(tiled, x, **options)  # the same sequences at the same indices
    assert_exactly(whole, numpy_y)


def test_the_artefact_backends_agree_on_chunks(example):
    """Real-valued inputs through the example artefact: numpy, sim and the interpreter
    (one run per chunk at its offset) agree to 1e-5."""
    x = np.random.default_rng(7).uniform(-1.3, 1.3, (T, 5, 32)).astype(np.float32)
    x[:, 4] = x[:, 1]
    want = example.run(x, backend="numpy", mode="pcm", seed=9, batch_size=2)
    got = example.run(x, backend="sim", mode="pcm", seed=9, batch_size=2)
    assert_same({"Y": want}, {"Y": got})
    options = {"mode": "pcm", "target": TargetSpec.from_dict(example.target), "seed": 9}
    parts = [
        interpret(example.graph, x[:, lo : lo + 2], batch_offset=lo, **options)["Y"]
        for lo in (0, 2, 4)
    ]
    assert_same({"Y": np.concatenate(parts, axis=1)}, {"Y": want})


# --------------------------------------------------------------------------- (c) chunk 0


@pytest.mark.parametrize("backend", ["numpy", "sim"])
def test_the_first_chunk_is_the_unchunked_run_of_its_sequences(example, tiled, backend):
    x = spikes((T, 5, 32), seed=8)
    y = example.run(x, backend=backend, mode="pcm", seed=6, batch_size=2)
    alone = example.run(x[:, :2], backend=backend, mode="pcm", seed=6)
    np.testing.assert_array_equal(y[:, :2], alone)

    runner = run_numpy if backend == "numpy" else sim
    x = spikes((T, 5, 6), seed=9)
    options = {"mode": "pcm", "target": TARGET, "seed": 6}
    chunked = runner(tiled, x, batch_size=3, **options)
    first = runner(tiled, x[:, :3], **options)
    for name, value in first.items():
        np.testing.assert_array_equal(chunked[name][:, :3], value)
    # The interpreter's reference run of the same sequences, to 1e-5.
    assert_same(interpret(tiled, x[:, :3], **options), first)


# --------------------------------------------------------------------------- (d) float, quantized


@pytest.mark.parametrize("mode", ["float", "quantized"])
@pytest.mark.parametrize("backend", ["numpy", "sim"])
def test_deterministic_modes_do_not_depend_on_chunks(example, tiled, mode, backend):
    x = identical(4)
    x[:, 1] = spikes((T, 32), seed=10)
    whole = example.run(x, backend=backend, mode=mode)
    for batch_size in (1, 2, 3):
        chunked = example.run(x, backend=backend, mode=mode, batch_size=batch_size)
        np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6)
    offset = example.run(x, backend=backend, mode=mode, batch_offset=7)
    np.testing.assert_allclose(offset, whole, rtol=0, atol=1e-6)

    runner = run_numpy if backend == "numpy" else sim
    x = spikes((T, 5, 6), seed=11)
    options = {"mode": mode, "target": TARGET}
    whole = runner(tiled, x, **options)
    chunked = runner(tiled, x, batch_size=2, **options)
    for name, value in whole.items():
        np.testing.assert_allclose(chunked[name], value, rtol=0, atol=1e-6, err_msg=name)


# --------------------------------------------------------------------------- snuc eval


def test_eval_chunks_are_keyed_as_the_runtimes_chunks(example):
    """``snuc eval`` runs each chunk of a split on its own, passing its first sequence:
    its outputs are those of one ``batch_size`` run of the whole split."""
    x = identical(5)
    seen: list[np.ndarray] = []

    def record(outputs: np.ndarray, piece) -> tuple[float, int]:
        seen.append(outputs)
        return 0.0, 1

    jsb = ev.resolve_task("jsb")
    task = dataclasses.replace(jsb, feed=lambda piece, art: piece.x, score=record)
    pieces = [Piece(x[:, lo : lo + 2], None) for lo in (0, 2, 4)]
    config = RunConfig("pcm", seed=1, t_inference_s=3600.0, drift_compensation="global")
    ev.score_pieces(example, task, pieces, config, "numpy")
    want = example.run(x, mode="pcm", seed=1, batch_size=2)
    np.testing.assert_array_equal(np.concatenate(seen, axis=1), want)
    assert not np.array_equal(seen[0], seen[1])
