"""``snuc run`` and the Python API end to end (SPEC §6, §8, §9)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_line_error, run_cli

import snuc
from snuc.ir.target import TargetSpec
from snuc.runtime.interpreter import run as interpret

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "snu_small.onnx"


@pytest.fixture(scope="module")
def artefact(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("art") / "small.snuc"
    snuc.compile(EXAMPLE).save(path)
    return path


@pytest.fixture
def spikes(tmp_path: Path) -> Path:
    x = (np.random.default_rng(0).random((12, 3, 32)) < 0.3).astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, x)
    return path


@pytest.mark.parametrize("mode", ["float", "quantized", "pcm"])
def test_run_writes_what_the_interpreter_computes(artefact, spikes, capsys, mode) -> None:
    status, _, err = run_cli(
        capsys, "run", artefact, "--input", spikes, "--mode", mode, "--seed", 3
    )
    assert status == 0, err
    y = np.load(spikes.with_name("x.out.npy"))
    art = snuc.load(artefact)
    want = interpret(
        art.graph, np.load(spikes), mode=mode, target=TargetSpec.from_dict(art.target), seed=3
    )["Y"]
    assert y.shape == (12, 3, 10)
    np.testing.assert_allclose(y, want, atol=1e-5)


def test_python_api_matches_the_cli(artefact, spikes, tmp_path, capsys) -> None:
    out = tmp_path / "y.npy"
    assert (
        run_cli(capsys, "run", artefact, "--input", spikes, "-o", out, "--t-inference", 86400)[0]
        == 0
    )
    y = snuc.load(artefact).run(np.load(spikes), mode="pcm", seed=0, t_inference=86400.0)
    np.testing.assert_array_equal(np.load(out), y)


def test_pcm_depends_on_seed_and_age_but_is_reproducible(artefact, spikes) -> None:
    art = snuc.load(artefact)
    x = np.load(spikes)
    a = art.run(x, seed=1)
    np.testing.assert_array_equal(a, art.run(x, seed=1))
    assert not np.array_equal(a, art.run(x, seed=2))
    assert not np.array_equal(a, art.run(x, seed=1, t_inference=3.15e7))
    off = art.run(x, seed=1, t_inference=3.15e7, drift_compensation=False)
    assert not np.array_equal(off, art.run(x, seed=1, t_inference=3.15e7))


def test_diagnostics_table(artefact, spikes, capsys) -> None:
    status, out, err = run_cli(capsys, "run", artefact, "--input", spikes, "--diagnostics")
    assert status == 0, err
    assert "layers.0.y_next" in out and "spikes agree" in out and "output Y" in out


def test_batch_size_chunks_give_the_same_float_result(artefact, spikes) -> None:
    art = snuc.load(artefact)
    x = np.load(spikes)
    np.testing.assert_allclose(
        art.run(x, mode="float", batch_size=1), art.run(x, mode="float"), atol=1e-5
    )


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("array", "needle"),
    [
        (np.zeros((12, 32), np.float32), "rank"),
        (np.zeros((12, 3, 31), np.float32), "32"),
        (np.zeros((12, 3, 32), np.int64), "int64"),
    ],
)
def test_bad_input_array_leaves_no_output(artefact, tmp_path, capsys, array, needle) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, array)
    status, _, err = run_cli(capsys, "run", artefact, "--input", path)
    assert_one_line_error(status, err, needle)
    assert not (tmp_path / "bad.out.npy").exists()


def test_input_that_is_not_npy(artefact, tmp_path, capsys) -> None:
    path = tmp_path / "x.npy"
    path.write_text("hello")
    assert_one_line_error(*run_cli(capsys, "run", artefact, "--input", path)[::2], str(path))


def test_missing_artefact(spikes, tmp_path, capsys) -> None:
    status, _, err = run_cli(capsys, "run", tmp_path / "nope.snuc", "--input", spikes)
    assert_one_line_error(status, err, "nope.snuc")


def test_tampered_artefact_member(artefact, spikes, tmp_path, capsys) -> None:
    import shutil

    copy = Path(shutil.copytree(artefact, tmp_path / "t.snuc"))
    ir = copy / "graph.ir"
    ir.write_text(ir.read_text().replace("relu", "rel u", 1))
    status, _, err = run_cli(capsys, "run", copy, "--input", spikes)
    assert_one_line_error(status, err, "graph.ir")


def test_truncated_artefact_member(artefact, spikes, tmp_path, capsys) -> None:
    import shutil

    copy = Path(shutil.copytree(artefact, tmp_path / "t.snuc"))
    arrays = copy / "arrays.npz"
    arrays.write_bytes(arrays.read_bytes()[:100])
    assert_one_line_error(*run_cli(capsys, "run", copy, "--input", spikes)[::2], "arrays.npz")


def test_artefact_of_another_format_version(artefact, spikes, tmp_path, capsys) -> None:
    import shutil

    copy = Path(shutil.copytree(artefact, tmp_path / "v.snuc"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(*run_cli(capsys, "run", copy, "--input", spikes)[::2], "version")


def test_unwritable_output_path(artefact, spikes, tmp_path, capsys) -> None:
    out = tmp_path / "no-such-dir" / "y.npy"
    assert_one_line_error(
        *run_cli(capsys, "run", artefact, "--input", spikes, "-o", out)[::2], "no-such-dir"
    )
    assert not out.parent.exists()
