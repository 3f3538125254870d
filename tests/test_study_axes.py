"""The compile options as study axes (SPEC §12): calibrated converter ranges (a
calibration file, as ``snuc compile --calibrate`` takes), ``--placement`` and
``--duplicate``. A study over them gives the rows that separate ``snuc compile`` and
``snuc eval`` runs give, its cache key follows the calibration file's bytes, and every bad
value is one line and exit 2 before any work.

Everything runs on ``examples/snu_small.onnx`` (32 inputs, 10 sigmoid outputs) scored with
``mse`` on a small custom data set made here.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_line_error, run_cli

import snuc
from snuc.eval_results import RUN_FIELDS
from snuc.ir.target import parse_target
from snuc.runtime.artefact import load
from snuc.study import run_study
from snuc.study_spec import load_study

MODEL = Path(__file__).resolve().parents[1] / "examples" / "snu_small.onnx"

SPEC = """
models = ["{model}"]
tasks = "custom"
data = "d.npz"
metric = "mse"
modes = ["quantized", "pcm"]
t_inference = "1h"
seeds = [0, 1]
drift_compensation = "on"
batch_size = 8
{axes}

[output]
cache = "cache"
"""

# The run columns compared with ``snuc eval``'s rows (the model's name and the study's
# own columns differ by construction).
COMPARED = [k for k in RUN_FIELDS if k != "model"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A directory with the data set ``d.npz`` and calibration samples ``cal.npy``."""
    root = tmp_path_factory.mktemp("axes")
    rng = np.random.default_rng(4)
    x = (rng.random((6, 24, 32)) < 0.3).astype(np.float32)
    y = snuc.compile(MODEL).run(x, mode="float")
    targets = y + rng.normal(0.0, 0.01, y.shape).astype(np.float32)
    np.savez(root / "d.npz", inputs=x, lengths=rng.integers(2, 7, 24), targets=targets)
    np.save(root / "cal.npy", (rng.random((8, 16, 32)) < 0.1).astype(np.float32))
    return root


def _spec(root: Path, axes: str, name: str = "study.toml") -> Path:
    path = root / name
    path.write_text(SPEC.format(model=MODEL, axes=axes))
    return path


def _eval_artefact(capsys, root: Path, artefact: Path, out: Path) -> list[dict]:
    """``snuc eval`` of a compiled artefact with the spec's options, as rows."""
    status, _, err = run_cli(
        capsys, "eval", artefact, "--task", "custom", "--data", root / "d.npz", "--metric",
        "mse", "--modes", "quantized,pcm", "--t-inference", "1h", "--seeds", "0,1",
        "--drift-compensation", "on", "--batch-size", 8, "--jsonl", out, "--workers", 1,
        "--cache", root / "cache",
    )  # fmt: skip
    assert status == 0, err
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.parametrize(
    ("axes", "column", "compile_options"),
    [
        ('calibrate = ["none", "cal.npy"]', "calibrate",
         {"none": [], "cal.npy": ["--calibrate", "cal.npy"]}),
        ('placement = ["pack", "spread"]', "placement",
         {"pack": [], "spread": ["--placement", "spread"]}),
        ("duplicate = [1, 2]", "duplicate", {1: [], 2: ["--duplicate", "2"]}),
    ],
)  # fmt: skip
def test_a_study_over_a_compile_option_gives_the_rows_of_separate_compiles(
    root, tmp_path, capsys, axes, column, compile_options
) -> None:
    study = load_study(_spec(root, axes))
    rows = run_study(study, executor="serial")
    labels = {"cal.npy": f"cal.npy@{_sha256(root / 'cal.npy')[:8]}"}
    assert len(rows) == 2 * 3
    assert [r[column] for r in rows[::3]] == [labels.get(v, v) for v in compile_options]
    if column != "calibrate":  # each mapping takes other crossbars on snu_small
        assert rows[0]["crossbars"] != rows[3]["crossbars"]
    for value, options in compile_options.items():
        artefact = tmp_path / f"{value}.snuc"
        cwd = Path.cwd()
        os.chdir(root)  # the calibration file's path as the spec gives it
        try:
            status, _, err = run_cli(capsys, "compile", MODEL, "-o", artefact, *options)
        finally:
            os.chdir(cwd)
        assert status == 0, err
        separate = _eval_artefact(capsys, root, artefact, tmp_path / f"{value}.jsonl")
        mine = [r for r in rows if r[column] == labels.get(value, value)]
        report = load(artefact).report
        assert {(r["crossbars"], r["est_timestep_ns"]) for r in mine} == {
            (report["crossbars_used"], report["schedule"]["timestep_ns"])
        }
        assert [[r[k] for k in COMPARED] for r in mine] == [
            [r[k] for k in COMPARED] for r in separate
        ]


def test_calibrated_ranges_change_the_rows_and_key_the_cache_by_content(root, tmp_path) -> None:
    study = load_study(_spec(root, 'calibrate = ["none", "cal.npy"]'), {"modes": ["quantized"]})
    rows = run_study(study, executor="serial")
    assert rows[0]["value"] != rows[1]["value"]  # the calibrated ADC ranges are other ones
    keys = [b.key() for b in study.builds]
    other = tmp_path / "cal.npy"
    np.save(other, np.load(root / "cal.npy")[:4])  # the same name, other samples
    spec = root / "other.toml"
    spec.write_text(SPEC.format(model=MODEL, axes=f'calibrate = ["none", "{other}"]'))
    moved = load_study(spec)
    assert moved.builds[0].key() == keys[0] and moved.builds[1].key() != keys[1]
    uncalibrated = load_study(_spec(root, "", name="plain.toml"))
    assert uncalibrated.builds[0].key() == keys[0]  # "none" keys as a spec without the axis
    assert "calibrate" not in run_study(uncalibrated, executor="serial")[0]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_named_calibration_files_in_two_folders_are_two_columns(root, tmp_path) -> None:
    other = tmp_path / "cal.npy"
    np.save(other, np.load(root / "cal.npy")[:4])  # the same name, other samples
    spec = root / "two.toml"
    spec.write_text(SPEC.format(model=MODEL, axes=f'calibrate = ["{root / "cal.npy"}", "{other}"]'))
    rows = run_study(load_study(spec, {"modes": ["quantized"]}), executor="serial")
    assert [r["calibrate"] for r in rows] == [
        f"cal.npy@{_sha256(root / 'cal.npy')[:8]}",
        f"cal.npy@{_sha256(other)[:8]}",
    ]
    assert rows[0]["calibrate"] != rows[1]["calibrate"]


@pytest.mark.parametrize(
    ("axes", "needles"),
    [
        ('calibrate = ["missing.npy"]', ["calibration file", "missing.npy does not exist"]),
        ("calibrate = []", ["calibrate is an empty list"]),
        ("calibrate = [1]", ["calibrate item = 1 must be a string"]),
        ('calibrate = ["cal.npy", "cal.npy"]', ["cal.npy is listed twice"]),
        ('calibrate = ["d.npz"]', ["calibration file", "d.npz"]),
        ('calibrate = "none"\nduplicate = [1, 1]', ["duplicate 1 is listed twice"]),
    ],
)
def test_bad_axes_are_one_line_before_any_work(root, tmp_path, capsys, axes, needles) -> None:
    spec = _spec(root, axes, name="bad.toml")
    cache = tmp_path / "cache"
    status, out, err = run_cli(capsys, "eval", "--spec", spec, "--cache", cache)
    assert_one_line_error(status, err, str(spec), *needles)
    assert out == "" and not cache.exists()  # nothing compiled, nothing written


def test_compile_options_of_an_artefact_and_a_missing_file_on_the_command_line(
    root, tmp_path, capsys
) -> None:
    artefact = tmp_path / "m.snuc"
    snuc.compile(MODEL).save(artefact)
    cache = tmp_path / "cache"
    common = ["--task", "custom", "--data", root / "d.npz", "--metric", "mse", "--cache", cache]
    status, _, err = run_cli(capsys, "eval", artefact, *common, "--calibrate", root / "cal.npy")
    assert_one_line_error(status, err, "calibrate are compile options", "m.snuc")
    status, _, err = run_cli(capsys, "eval", MODEL, *common, "--calibrate", "none,nowhere.npy")
    assert_one_line_error(status, err, "calibration file nowhere.npy does not exist")
    assert not cache.exists()


def _energies(root: Path, targets: str, name: str) -> dict[tuple[str, int, int], float]:
    """Each build's (target name, rows, cols) and energy per MVM (pJ) for ``[targets]``."""
    spec = root / name
    spec.write_text(SPEC.format(model=MODEL, axes="") + f"\n[targets]\n{targets}\n")
    builds = load_study(spec).builds
    return {(b.target.name, b.target.rows, b.target.cols): b.target.energy_mvm_pj for b in builds}


def test_a_study_that_resizes_the_array_scales_the_energy_per_mvm_by_its_devices(root) -> None:
    quoted = parse_target("pcm-256x256").energy_mvm_pj  # for 256 x 256 devices
    resized = _energies(root, 'base = ["pcm-256x256"]\nrows = [64, 512]\ncols = [128]', "r.toml")
    assert resized == {
        ("pcm-64x128", 64, 128): quoted / 8,
        ("pcm-512x128", 512, 128): quoted,
    }
    # Presets and pcm-RxC names keep their figures; an explicit figure wins.
    kept = _energies(root, 'base = ["pcm-128x128", "pcm-64x64"]', "k.toml")
    assert set(kept.values()) == {quoted}
    given = _energies(root, "rows = [64]\nenergy_mvm_pj = [100.0]", "g.toml")
    assert list(given.values()) == [100.0]
