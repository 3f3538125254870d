"""Runs on several threads (``threads=``, ``--threads``; runtime/threads.py) and read noise
keyed per sequence (SPEC §6, docs/targets.md "Random streams").

A run's outputs do not depend on its thread count: a quantized or pcm batch is split into
groups of sequences, each with its own sequences' read noise; a float batch is not split.
A sequence's pcm outputs depend on its index alone: not on the batch it runs in, nor on
how that batch is chunked.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_models as om  # tests/ is on sys.path under pytest (no __init__.py)
import pytest
from cli_helpers import assert_one_line_error, run_cli

import snuc
from snuc.ir import SnucError
from snuc.ir.target import TargetSpec
from snuc.runtime import pcm, threads
from snuc.runtime.artefact import Artefact
from snuc.runtime.interpreter import run as interpret
from snuc.runtime.tile_read import Workspace

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "snu_small.onnx"
MODES = ("float", "quantized", "pcm")
T = 11


def spikes(shape: tuple[int, ...], seed: int = 0, rate: float = 0.4) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) < rate).astype(np.float32)


def assert_exactly(want: np.ndarray, got: np.ndarray) -> None:
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Artefact]:
    """The shipped example (real-valued inputs work too); a recurrent two-layer network on
    small crossbars (several tiles per layer); the example with duplicated tiles."""
    path = tmp_path_factory.mktemp("threads") / "recurrent.onnx"
    onnx.save(om.snu_scan_model((6, 20, 9), recurrent=True), path)
    return {
        "example": snuc.compile(EXAMPLE),
        "recurrent": snuc.compile(path, target="pcm-16x16"),
        "duplicated": snuc.compile(EXAMPLE, target="pcm-16x16", duplicate=2),
    }


def features(art: Artefact) -> int:
    return art.graph.type_of(art.graph.inputs[0]).shape[-1]


# --------------------------------------------------------------------------- threads


@pytest.mark.parametrize("backend", ["numpy", "sim"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model", ["example", "recurrent", "duplicated"])
def test_one_two_and_four_threads_give_the_same_outputs(models, model, mode, backend):
    art = models[model]
    x = spikes((T, 5, features(art)), seed=1)
    options = {"backend": backend, "mode": mode, "seed": 3}
    want = art.run(x, threads=1, **options)
    for count in (2, 4):
        assert_exactly(want, art.run(x, threads=count, **options))
    if mode != "float":  # float products of chunks round as chunks (batch_size's docs)
        assert_exactly(want, art.run(x, threads=3, batch_size=2, **options))


@pytest.mark.parametrize("backend", ["numpy", "sim"])
def test_a_noisy_batch_is_really_split_and_a_float_one_is_not(models, backend, monkeypatch):
    """The equalities above would hold with no split at all: the groups each run gets."""
    from snuc.runtime import numpy_backend, sim_run

    seen: list[list[tuple[int, int]]] = []
    real = threads.run_groups
    for module in (numpy_backend, sim_run):
        monkeypatch.setattr(
            module, "run_groups", lambda g, *a, **k: seen.append(g) or real(g, *a, **k)
        )
    art = models["recurrent"]
    x = spikes((T, 5, features(art)), seed=6)
    for mode in MODES:
        art.run(x, backend=backend, mode=mode, threads=2)
    assert seen == [[(0, 5)], [(0, 3), (3, 5)], [(0, 3), (3, 5)]]


@pytest.mark.parametrize("model", ["example", "recurrent", "duplicated"])
def test_the_interpreter_and_both_backends_agree_in_pcm_on_threads(models, model):
    art = models[model]
    x = spikes((T, 5, features(art)), seed=2)
    target = TargetSpec.from_dict(art.target)
    (want,) = interpret(art.graph, x, mode="pcm", target=target, seed=4).values()
    for backend in ("numpy", "sim"):
        for count in (1, 2, 4):
            assert_exactly(want, art.run(x, backend=backend, mode="pcm", seed=4, threads=count))


def test_batches_split_into_near_equal_contiguous_groups():
    assert threads.sequence_groups(5, 2) == [(0, 3), (3, 5)]
    assert threads.sequence_groups(2, 4) == [(0, 1), (1, 2)]
    assert threads.sequence_groups(7, 1) == [(0, 7)]
    assert threads.sequence_groups(0, 3) == [(0, 0)]


def test_the_default_is_every_core_or_the_variable(monkeypatch):
    monkeypatch.delenv(threads.THREADS_VARIABLE, raising=False)
    assert threads.default_threads() == len(__import__("os").sched_getaffinity(0))
    monkeypatch.setenv(threads.THREADS_VARIABLE, "3")
    assert threads.checked_threads(None) == 3
    assert threads.checked_threads(5) == 5


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", "\u00b2", "\u0663"])
def test_a_bad_thread_variable_is_one_line_naming_it(monkeypatch, value):
    monkeypatch.setenv(threads.THREADS_VARIABLE, value)
    with pytest.raises(SnucError) as info:
        threads.checked_threads(None)
    message = str(info.value)
    assert threads.THREADS_VARIABLE in message and repr(value) in message
    assert "\n" not in message
    monkeypatch.setenv(threads.THREADS_VARIABLE, " ")  # empty: unset
    assert threads.default_threads() >= 1
    monkeypatch.setenv(threads.THREADS_VARIABLE, " 3 ")
    assert threads.default_threads() == 3


def test_without_threadpoolctl_runs_take_one_thread_and_more_is_one_line(monkeypatch):
    """threadpoolctl is the extra ``threads``: without it a run defaults to one thread,
    and one that must limit BLAS per group says which extra it needs, in one line."""
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import raises ImportError
    monkeypatch.delenv(threads.THREADS_VARIABLE, raising=False)
    threads._controller.cache_clear()
    threads._has_threadpoolctl.cache_clear()
    try:
        assert threads.default_threads() == 1
        # A run on one thread needs no limit and runs as it would with it.
        assert threads.run_groups([(0, 4)], 1, lambda lo, hi, i: hi - lo) == [4]
        with pytest.raises(SnucError) as info, threads.blas_threads(1):
            pass
        message = str(info.value)
        assert "snuc[threads]" in message and "\n" not in message
    finally:
        threads._controller.cache_clear()
        threads._has_threadpoolctl.cache_clear()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_a_bad_thread_count_is_a_one_line_error(models, bad):
    art = models["example"]
    with pytest.raises(SnucError, match="threads") as err:
        art.run(spikes((3, 2, features(art))), threads=bad)
    assert "\n" not in str(err.value)


def test_snuc_run_takes_threads(models, tmp_path, capsys):
    art = models["recurrent"]
    saved = art.save(tmp_path / "m.snuc")
    x = tmp_path / "x.npy"
    np.save(x, spikes((T, 4, features(art)), seed=5))
    outputs = []
    for count in ("1", "2"):
        out = tmp_path / f"y{count}.npy"
        status, _, _ = run_cli(capsys, "run", str(saved), "--input", str(x), "-o", str(out),
                               "--threads", count)  # fmt: skip
        assert status == 0
        outputs.append(np.load(out))
    assert_exactly(*outputs)
    status, _, err = run_cli(capsys, "run", str(saved), "--input", str(x), "--threads", "0")
    assert_one_line_error(status, err, "threads 0")


def test_snuc_run_refuses_a_bad_thread_variable_and_writes_nothing(
    models, tmp_path, capsys, monkeypatch
):
    saved = models["recurrent"].save(tmp_path / "m.snuc")
    x = tmp_path / "x.npy"
    np.save(x, spikes((T, 2, features(models["recurrent"]))))
    monkeypatch.setenv(threads.THREADS_VARIABLE, "many")
    out = tmp_path / "y.npy"
    status, _, err = run_cli(capsys, "run", str(saved), "--input", str(x), "-o", str(out),
                             "--mode", "pcm")  # fmt: skip
    assert_one_line_error(status, err, "SNUC_THREADS='many'")
    assert not out.exists()


def test_snuc_eval_refuses_a_bad_thread_variable_before_any_work(capsys, monkeypatch, tmp_path):
    """Refused before the data is read or a model compiled, whatever the executor."""
    from snuc import study

    monkeypatch.setenv(threads.THREADS_VARIABLE, "0")
    monkeypatch.setattr(study, "run_study", lambda *a, **k: pytest.fail("the study ran"))
    for executor in ("local", "ray"):
        status, _, err = run_cli(capsys, "eval", str(EXAMPLE), "--task", "jsb",
                                 "--executor", executor, "--csv", tmp_path / "r.csv")  # fmt: skip
        assert_one_line_error(status, err, "SNUC_THREADS='0'")
    assert not (tmp_path / "r.csv").exists()


def test_snuc_eval_refuses_a_bad_thread_count(capsys):
    status, _, err = run_cli(capsys, "eval", "--threads", "-2")
    assert_one_line_error(status, err, "threads -2")


# --------------------------------------------------------------------------- keyed per sequence


@pytest.mark.parametrize("backend", ["numpy", "sim"])
def test_a_sequence_reads_the_same_noise_in_any_batch_and_chunk(models, backend):
    """A batch's pcm outputs are its sequences' outputs run alone at their indices, or in
    chunks (``batch_size``, or the caller's chunks with ``batch_offset``)."""
    art = models["recurrent"]
    x = spikes((T, 7, features(art)), seed=6)
    options = {"backend": backend, "mode": "pcm", "seed": 1, "threads": 1}
    whole = art.run(x, **options)
    assert_exactly(whole, art.run(x, batch_size=3, **options))
    parts = [art.run(x[:, lo : lo + 2], batch_offset=lo, **options) for lo in range(0, 7, 2)]
    assert_exactly(whole, np.concatenate(parts, axis=1))
    assert_exactly(whole[:, 4:5], art.run(x[:, 4:5], batch_offset=4, **options))
    # The index keys it: the same sequence at index 0 reads other noise.
    assert not np.array_equal(whole[:, 4:5], art.run(x[:, 4:5], **options))


def test_identical_sequences_in_one_batch_read_different_noise(models):
    art = models["recurrent"]
    x = np.repeat(spikes((T, 1, features(art)), seed=7), 3, axis=1)
    y = art.run(x, mode="pcm", seed=2)
    assert not np.array_equal(y[:, 0], y[:, 1])
    quantized = art.run(x, mode="quantized")
    assert_exactly(quantized[:, 0], quantized[:, 1])


# --------------------------------------------------------------------------- float32 noise


def test_read_normals_are_float32_standard_normals():
    block = pcm.read_noise_block(2, 5, (400, 8, 64))
    assert block.dtype == np.float32
    n = block.size
    assert abs(float(block.mean(dtype=np.float64))) < 5 / np.sqrt(n)
    assert abs(float(block.std(dtype=np.float64)) - 1) < 5 / np.sqrt(2 * n)
    # Each sequence's stream is its own: sequences are uncorrelated.
    corr = np.corrcoef(block[:, 0].reshape(-1), block[:, 1].reshape(-1))[0, 1]
    assert abs(corr) < 5 / np.sqrt(block[:, 0].size)


def test_the_noise_term_is_the_variance_formula_rounded_to_float32():
    """``sqrt(x² @ σ²) * n`` summed in float64, rounded to float32 (``pcm.noise_spread``):
    the float64 formula to float32's precision, and its noise has that spread."""
    rng = np.random.default_rng(0)
    variance = rng.uniform(0.0, 0.5, (40, 30))
    x = rng.uniform(-1.0, 1.0, (3000, 40))
    spread = pcm.noise_spread(x, variance)
    assert spread.dtype == np.float32
    want = np.sqrt((x * x) @ variance)
    np.testing.assert_allclose(spread, want, rtol=1e-6)
    noise = spread * pcm.read_noise_block(1, 2, (3000, 1, 30))[:, 0]
    assert noise.dtype == np.float32
    ratio = noise / want
    n = ratio.size
    assert abs(float(ratio.mean())) < 5 / np.sqrt(n)
    assert abs(float(ratio.std()) - 1) < 5 / np.sqrt(2 * n)


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 17, 63])
def test_a_rows_noise_term_does_not_depend_on_the_rows_beside_it(rows):
    """The interpreter reads B rows a step, the NumPy backend blocks of T * B rows, a
    split batch fewer: each row's noise term must not depend on how many rows one call
    holds. (A float32 product fails this: BLAS picks its kernel by the row count.)"""
    rng = np.random.default_rng(1)
    variance = rng.uniform(0.0, 0.5, (150, 88))
    x = rng.uniform(0.0, 1.0, (64, 150))
    whole = pcm.noise_spread(x, variance)
    np.testing.assert_array_equal(pcm.noise_spread(x[:rows], variance), whole[:rows])


def test_a_tiles_workspace_holds_the_noise_in_float32(models):
    from snuc.runtime.numpy_backend import Plan

    art = models["example"]
    plan = Plan.build(art.graph, mode="pcm", target=TargetSpec.from_dict(art.target))
    chip = next(c for c in plan.chips.values() if c.noisy)
    assert chip.variance_us2.dtype == np.float64
    work = Workspace(chip, 3)
    assert work.spread.dtype == np.float32
    assert work.current.dtype == np.float64
