"""Spike products without silent rows and inputs (``snuc.runtime.plan_sparse``), in the
NumPy backend's float products and its quantised and pcm tile reads, and the order in
which a run's read-noise streams are drawn ahead (``read_noise.draw_ahead``).

The reduced products must give the dense product's numbers (silent rows exactly ``+0``),
choose the reduction the module describes, and leave every backend equal to the
reference interpreter when they are forced onto the small test networks.
"""

from __future__ import annotations

from concurrent.futures import Future

import numpy as np
import pytest
from equivalence import assert_same  # tests/ is on sys.path under pytest
from test_numpy_backend import MODES, TARGET, snu_stack, spikes

from snuc.runtime import plan_kernels, plan_sparse, plan_tiles, read_noise
from snuc.runtime.interpreter import run
from snuc.runtime.numpy_backend import Plan


def _spike_block(m=256, k=200, rate=0.05, silent_rows=0.0, silent_cols=0.0, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.random((m, k)) < rate).astype(np.float32)
    x[rng.random(m) < silent_rows] = 0
    x[:, rng.random(k) < silent_cols] = 0
    return x


def _weight(k=200, n=96, seed=1):
    return np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32)


@pytest.mark.parametrize(
    ("block", "want_rows", "want_cols"),
    [
        (dict(rate=0.3), False, False),  # dense: the full product
        (dict(silent_rows=0.3), False, False),  # too few silent rows to repay a gather
        (dict(silent_rows=0.7), True, False),  # silent rows, every input active
        (dict(rate=0.02, silent_rows=0.8, silent_cols=0.5), True, True),  # both
    ],
)
def test_spike_products_equal_the_dense_product(block, want_rows, want_cols, monkeypatch):
    monkeypatch.setattr(plan_sparse, "MIN_MULTIPLY_ADDS", 0)
    x, w = _spike_block(**block), _weight()
    rows = plan_sparse.active_rows(x)
    assert (rows is not None) == want_rows
    if rows is not None:
        np.testing.assert_array_equal(rows, np.flatnonzero(x.any(axis=1)))
        cols = plan_sparse.active_columns(x[rows])
        assert (cols is not None) == want_cols
        if cols is not None:
            np.testing.assert_array_equal(cols, np.flatnonzero(x.any(axis=0)))
    out = np.full((x.shape[0], w.shape[1]), np.nan, np.float32)
    plan_sparse.spike_matmul(x, w, out)
    np.testing.assert_allclose(out, x @ w, rtol=0, atol=1e-5)
    silent = ~x.any(axis=1)
    assert not np.signbit(out[silent]).any() and not out[silent].any()


def test_a_block_without_spikes_is_zeros_without_a_product(monkeypatch):
    monkeypatch.setattr(plan_sparse, "MIN_MULTIPLY_ADDS", 0)
    x, w = np.zeros((256, 200), np.float32), _weight()
    assert plan_sparse.active_rows(x).size == 0
    monkeypatch.setattr(np, "matmul", lambda *a, **k: pytest.fail("a product"))
    out = np.full((256, w.shape[1]), np.nan, np.float32)
    plan_sparse.spike_matmul(x, w, out)
    assert not out.any() and not np.signbit(out).any()


def test_small_products_stay_dense(monkeypatch):
    """Below MIN_MULTIPLY_ADDS no support is searched at all."""
    monkeypatch.setattr(plan_sparse, "active_rows", lambda x: pytest.fail("searched"))
    x = _spike_block(m=8, k=16, silent_rows=0.9)
    w = _weight(k=16, n=4)
    out = np.empty((8, 4), np.float32)
    plan_sparse.spike_matmul(x, w, out)
    np.testing.assert_allclose(out, x @ w, rtol=0, atol=1e-6)


def _counted(monkeypatch) -> dict[str, int]:
    """Force the reductions onto every product and count the blocks found silent enough
    (in float products and in tile reads)."""
    calls = {"float": 0, "tile": 0}
    monkeypatch.setattr(plan_sparse, "MIN_MULTIPLY_ADDS", 0)
    monkeypatch.setattr(plan_tiles, "SPARSE_MIN_MULTIPLY_ADDS", 0)
    rows = plan_sparse.active_rows

    def counting(where):
        def counted(x):
            found = rows(x)
            calls[where] += found is not None
            return found

        return counted

    monkeypatch.setattr(plan_sparse, "active_rows", counting("float"))
    monkeypatch.setattr(plan_tiles, "active_rows", counting("tile"))
    return calls


def _padded(steps=12, batch=4, features=6, seed=40):
    """Spike inputs whose sequences end early (zero padding) at different steps, so the
    deeper layers see blocks with silent rows and, at the end, without any spike."""
    x = spikes((steps, batch, features), rate=0.6, seed=seed)
    for b, length in enumerate((3, 5, 8, 12)[:batch]):
        x[length:, b] = 0
    return x


@pytest.mark.parametrize("mode", MODES)
def test_backends_equal_the_interpreter_with_reduced_products(mode, monkeypatch):
    calls = _counted(monkeypatch)
    graph = snu_stack(sizes=(6, 24, 16, 5), recurrent=(False, True, False))
    x = _padded()
    plan = Plan.build(graph, mode=mode, target=TARGET)
    assert_same(run(graph, x, mode=mode, target=TARGET), plan.run(x))
    assert calls["tile" if mode != "float" else "float"] > 0


def test_a_silent_layer_reads_zeros_in_every_mode(monkeypatch):
    """A layer whose input never spikes: its products are skipped (float) and its tiles
    read their silent row (quantized, pcm); the outputs are still the interpreter's."""
    _counted(monkeypatch)
    graph = snu_stack(sizes=(6, 24, 16, 5), recurrent=(False, False, False))
    x = np.zeros((10, 3, 6), np.float32)
    for mode in MODES:
        plan = Plan.build(graph, mode=mode, target=TARGET)
        assert_same(run(graph, x, mode=mode, target=TARGET), plan.run(x))


def test_float_products_of_spikes_take_the_spike_kernel(monkeypatch):
    """Products of spike values use spike_matmul; the real-valued input's does not."""
    used = []
    monkeypatch.setattr(plan_kernels, "spike_matmul", lambda x, w, o: used.append(w.shape))
    graph = snu_stack(sizes=(6, 24, 16, 5), recurrent=(False, False, False))
    Plan.build(graph).run(spikes((4, 2, 6)))
    assert sorted(used) == sorted([(24, 16), (16, 5), (5, 3)])


class _RecordingPool:
    """An executor that runs each job at once and records which stream asked."""

    def __init__(self) -> None:
        self.order: list[int] = []

    def submit(self, fn, n):
        self.order.append(fn.__self__._tile)
        future = Future()
        future.set_result(fn(n))
        return future


def test_a_runs_streams_draw_their_first_pieces_first():
    PER_STEP = read_noise.NOISE_BLOCK_ELEMENTS  # noqa: N806 (a piece of one step)
    pool = _RecordingPool()
    streams = [
        read_noise.NoiseStream(0, tile, 10, pool, per_step=PER_STEP, ahead=False)
        for tile in (4, 7, 9)
    ]
    assert pool.order == []
    read_noise.draw_ahead(streams)
    ahead = read_noise.NOISE_LOOKAHEAD
    assert pool.order == [4, 7, 9] * ahead
    alone = read_noise.NoiseStream(0, 4, 10, _RecordingPool(), per_step=PER_STEP)
    want = alone.take(3 * read_noise.NOISE_BLOCK_ELEMENTS)
    np.testing.assert_array_equal(streams[0].take(3 * read_noise.NOISE_BLOCK_ELEMENTS), want)


def test_a_tile_read_without_silent_rows_gives_each_row_its_own_noise(monkeypatch):
    """Reading only the active rows of a block gives, row for row, the dense read with the
    same normals: each active row keeps the normals of its own position in the stream."""
    monkeypatch.setattr(plan_tiles, "SPARSE_MIN_MULTIPLY_ADDS", 0)
    graph = snu_stack(sizes=(6, 24, 16, 5), recurrent=(False, False, False))
    plan = Plan.build(graph, mode="pcm", target=TARGET)
    chip = next(c for c in plan.chips.values() if c.binary_input)
    k = chip.rows.stop
    x = _spike_block(m=3000, k=k, rate=0.5, silent_rows=0.7, seed=5)
    normals = np.random.default_rng(6).standard_normal(x.shape[0] * chip.n_cols) * 50
    work = chip.workspace(x.shape[0])
    dense = np.empty((x.shape[0], chip.n_cols), chip.dtype)
    chip._read_dense(x, dense, work, normals.copy())
    reduced = np.full_like(dense, np.nan)
    chip._read_block(x, reduced, work, normals.copy())
    np.testing.assert_array_equal(reduced, dense)
    silent = ~x.any(axis=1)
    np.testing.assert_array_equal(
        reduced[silent], np.broadcast_to(chip.silent_row, dense[silent].shape)
    )
