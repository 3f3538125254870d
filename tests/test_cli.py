"""The command line end to end: exit codes, one-line errors, nothing half-written (SPEC §8, §9)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_models as models  # tests/ is on sys.path under pytest (no __init__.py)
import pytest
from cli_helpers import run_cli
from onnx import helper

from snuc.driver import stage_names
from snuc.runtime.artefact import load

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "snu_small.onnx"


def _assert_usage_error(status: int, out: str, err: str, *needles: str) -> None:
    """Exit 2, one line 'snuc: error: ...' on stderr naming the problem, no traceback."""
    assert status == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("snuc: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


def _leftovers(directory: Path, before: set[str]) -> set[str]:
    return {p.name for p in directory.iterdir()} - before


# --------------------------------------------------------------------------- success paths


def test_emit_ir_prints_parseable_lifted_ir(capsys) -> None:
    status, out, err = run_cli(capsys, "compile", EXAMPLE, "--emit", "ir")
    assert status == 0, err
    assert "snu.layer" in out and "xbar.mvm" in out
    assert out.startswith("graph @") and out.endswith("}\n")


def test_print_after_import_shows_the_unlifted_graph(capsys) -> None:
    status, out, _ = run_cli(capsys, "compile", EXAMPLE, "--emit", "ir", "--print-after", "import")
    assert status == 0
    assert "dig.greater" in out and "snu.layer" not in out
    status, out, _ = run_cli(
        capsys, "compile", EXAMPLE, "--emit", "ir", "--print-after", "lift-snu"
    )
    assert status == 0
    assert "snu.layer" in out and "xbar.mvm" not in out


def test_print_after_accepts_every_stage_it_lists(capsys) -> None:
    """Every name --print-after's error lists prints that stage's IR (not a KeyError)."""
    for stage in stage_names():
        status, out, err = run_cli(
            capsys, "compile", EXAMPLE, "--emit", "ir", "--print-after", stage
        )
        assert status == 0, f"{stage}: {err}"
        assert out.startswith("graph @"), stage


def test_unknown_print_after_stage(capsys) -> None:
    _assert_usage_error(
        *run_cli(capsys, "compile", EXAMPLE, "--emit", "ir", "--print-after", "lift"),
        "'lift'",
        "lift-snu",
    )


def test_compile_writes_an_artefact_beside_the_model(tmp_path: Path, capsys) -> None:
    model = Path(shutil.copy(EXAMPLE, tmp_path / "m.onnx"))
    status, _, err = run_cli(capsys, "compile", model)
    assert status == 0, err
    art = load(tmp_path / "m.snuc")
    assert art.report["crossbars_used"] >= 1
    status, out, _ = run_cli(capsys, "report", tmp_path / "m.snuc", "--json")
    assert status == 0 and json.loads(out) == art.report
    status, out, _ = run_cli(capsys, "report", tmp_path / "m.snuc")
    assert status == 0 and "crossbars used" in out


def test_step_form_with_state_flags(tmp_path: Path, capsys) -> None:
    path = _save(models.snu_step_model(metadata=False), tmp_path / "step.onnx")
    status, out, err = run_cli(
        capsys, "compile", path, "--emit", "ir", "--print-after", "lift-snu",
        "--state", "l0.s_next=l0.s", "--state", "l0.y_next=l0.y",
    )  # fmt: skip
    assert status == 0, err
    assert "state %l0.s" in out and "snu.layer" in out


def test_closed_stdout_is_not_an_internal_error() -> None:
    """`snuc targets | head -1`: the reader closing the pipe is no internal error."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before snuc writes, so every write fails
    try:
        done = subprocess.run(
            [sys.executable, "-m", "snuc", "targets"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode != 0
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr


def test_console_script_exit_status() -> None:
    """The installed entry point exits with main()'s status (2 for a missing file)."""
    proc = subprocess.run(
        [sys.executable, "-m", "snuc", "compile", "does-not-exist.onnx", "--emit", "ir"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("snuc: error: ") and len(proc.stderr.splitlines()) == 1


# --------------------------------------------------------------------------- SPEC §9 errors


def test_not_an_onnx_file(tmp_path: Path, capsys) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a protobuf\n")
    _assert_usage_error(*run_cli(capsys, "compile", path, "--emit", "ir"), str(path))


def test_truncated_file(tmp_path: Path, capsys) -> None:
    data = EXAMPLE.read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    _assert_usage_error(*run_cli(capsys, "compile", path, "--emit", "ir"), str(path))


def test_graph_that_fails_the_checker(tmp_path: Path, capsys) -> None:
    model = models.snu_step_model()
    model.graph.node[0].input[0] = "nowhere"  # an undefined input
    path = _save(model, tmp_path / "bad.onnx")
    _assert_usage_error(*run_cli(capsys, "compile", path, "--emit", "ir"), "checker")


def test_unsupported_op_names_type_and_node(tmp_path: Path, capsys) -> None:
    path = _save(models.single_op_model("Elu", (4,)), tmp_path / "elu.onnx")
    status, out, err = run_cli(capsys, "compile", path, "--emit", "ir")
    _assert_usage_error(status, out, err, "Elu", "MatMul")
    assert "elu" in err  # the node's name


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_weights(tmp_path: Path, capsys, bad: float) -> None:
    model = models.snu_step_model()
    init = model.graph.initializer[0]
    array = onnx.numpy_helper.to_array(init).copy()
    array.flat[0] = bad
    init.CopyFrom(onnx.numpy_helper.from_array(array, init.name))
    path = _save(model, tmp_path / "nan.onnx")
    _assert_usage_error(*run_cli(capsys, "compile", path, "--emit", "ir"), init.name)


def test_non_zero_initial_states(tmp_path: Path, capsys) -> None:
    path = _save(models.snu_scan_model(init_value=0.5), tmp_path / "init.onnx")
    _assert_usage_error(*run_cli(capsys, "compile", path, "--emit", "ir"), "zero")


def test_state_pairing_naming_a_missing_input(tmp_path: Path, capsys) -> None:
    path = _save(models.snu_step_model(metadata=False), tmp_path / "step.onnx")
    status, out, err = run_cli(
        capsys, "compile", path, "--emit", "ir", "--state", "l0.s_next=l0.nope",
        "--state", "l0.y_next=l0.y",
    )  # fmt: skip
    _assert_usage_error(status, out, err, "l0.nope")


def test_state_pairing_naming_a_missing_output(tmp_path: Path, capsys) -> None:
    model = models.snu_step_model()
    meta = {p.key: p.value for p in model.metadata_props}
    pairs = json.loads(meta[models.STATE_KEY])
    pairs["ghost_out"] = pairs.pop(next(iter(pairs)))
    helper.set_model_props(model, {models.STATE_KEY: json.dumps(pairs)})
    path = _save(model, tmp_path / "meta.onnx")
    _assert_usage_error(*run_cli(capsys, "compile", path, "--emit", "ir"), "ghost_out")


def test_malformed_state_flag(capsys) -> None:
    _assert_usage_error(
        *run_cli(capsys, "compile", EXAMPLE, "--emit", "ir", "--state", "abc"), "OUT=IN"
    )


def test_bad_target_string(capsys) -> None:
    _assert_usage_error(*run_cli(capsys, "compile", EXAMPLE, "--target", "pcm-7x256"), "pcm-7x256")


def test_model_too_large_for_the_target(tmp_path: Path, capsys) -> None:
    before = {p.name for p in tmp_path.iterdir()}
    model = Path(shutil.copy(EXAMPLE, tmp_path / "m.onnx"))
    before.add(model.name)
    status, out, err = run_cli(capsys, "compile", model, "--target", "pcm-8x8", "--chips", "1")
    _assert_usage_error(status, out, err, "crossbars", "--chips")
    assert _leftovers(tmp_path, before) == set()


def test_unwritable_output_leaves_nothing(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    before = {p.name for p in tmp_path.iterdir()}
    status, out, err = run_cli(capsys, "compile", EXAMPLE, "-o", blocker / "m.snuc")
    _assert_usage_error(status, out, err, str(blocker))
    assert _leftovers(tmp_path, before) == set()


def test_usage_errors_are_one_line(capsys) -> None:
    _assert_usage_error(*run_cli(capsys, "compile"), "model")
    _assert_usage_error(*run_cli(capsys, "frobnicate"), "frobnicate")


# --------------------------------------------------------------------------- targets, calibration


def test_targets_lists_presets_and_every_parameter(capsys) -> None:
    status, out, _ = run_cli(capsys, "targets")
    assert status == 0
    for word in ("pcm-256x256", "pcm-128x128", "pcm-512x512", "g_max_us", "adc_bits"):
        assert word in out
    status, out, _ = run_cli(capsys, "targets", "--json")
    described = json.loads(out)
    assert status == 0 and described["default"] == "pcm-256x256"


def test_toml_target_overrides_a_key(tmp_path: Path, capsys) -> None:
    toml = tmp_path / "chip.toml"
    toml.write_text('base = "pcm-128x128"\ncores = 2\nadc_bits = 6\n')
    status, out, err = run_cli(capsys, "compile", EXAMPLE, "--target", toml, "--emit", "report")
    assert status == 0, err
    report = json.loads(out)
    assert report["target"]["rows"] == 128 and report["target"]["adc_bits"] == 6
    assert report["crossbars_available"] == 2


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('base = "pcm-256x256"\ng_maxx_us = 20\n', "g_maxx_us"),
        ('base = "pcm-256x256"\nadc_bits = 99\n', "adc_bits"),
        ('base = "pcm-256x256"\nrows = \n', "chip.toml"),
        ('base = "gpu"\n', "gpu"),
    ],
)
def test_bad_toml_target(tmp_path: Path, capsys, text: str, needle: str) -> None:
    toml = tmp_path / "chip.toml"
    toml.write_text(text)
    _assert_usage_error(
        *run_cli(capsys, "compile", EXAMPLE, "--target", toml, "--emit", "ir"), needle
    )


def test_calibration_sets_ranges_and_a_wrong_shape_is_an_error(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    good = tmp_path / "cal.npy"
    np.save(good, (rng.random((10, 4, 32)) < 0.3).astype(np.float32))
    status, out, err = run_cli(capsys, "compile", EXAMPLE, "--calibrate", good, "--emit", "ir")
    assert status == 0, err
    assert "adc_range = 0.0" not in out

    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((10, 4, 31), np.float32))
    _assert_usage_error(
        *run_cli(capsys, "compile", EXAMPLE, "--calibrate", bad, "--emit", "ir"), "32"
    )
    missing = tmp_path / "missing.npy"
    _assert_usage_error(
        *run_cli(capsys, "compile", EXAMPLE, "--calibrate", missing, "--emit", "ir"), str(missing)
    )


def test_report_plot_draws_the_crossbars(tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    art = tmp_path / "m.snuc"
    assert run_cli(capsys, "compile", EXAMPLE, "-o", art)[0] == 0
    png = tmp_path / "xbars.png"
    status, _, err = run_cli(capsys, "report", art, "--plot", png)
    assert status == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_of_a_missing_artefact(tmp_path: Path, capsys) -> None:
    _assert_usage_error(*run_cli(capsys, "report", tmp_path / "none.snuc"), "none.snuc")


def test_spread_placement_trades_crossbars_for_a_shorter_timestep(capsys) -> None:
    reports = {}
    for placement in ("pack", "spread"):
        status, out, err = run_cli(
            capsys, "compile", EXAMPLE, "--emit", "report", "--placement", placement
        )
        assert status == 0, err
        reports[placement] = json.loads(out)
    packed, spread = reports["pack"], reports["spread"]
    assert spread["crossbars_used"] == len(spread["tiles"]) > packed["crossbars_used"]
    assert all(t["row0"] == 0 and t["col0"] == 0 for t in spread["tiles"])
    assert spread["cycles_per_timestep"] < packed["cycles_per_timestep"]


def test_spread_placement_that_does_not_fit_names_the_chips_it_needs(
    tmp_path: Path, capsys
) -> None:
    toml = tmp_path / "two_cores.toml"
    toml.write_text('base = "pcm-256x256"\ncores = 2\n')
    common = ("compile", EXAMPLE, "--emit", "report", "--target", toml)
    assert run_cli(capsys, *common)[0] == 0  # packed, the four tiles share one crossbar
    status, out, err = run_cli(capsys, *common, "--placement", "spread")
    _assert_usage_error(status, out, err, "needs 4 crossbars", "--chips 2")


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: np.save(p, np.full((3, 2, 32), np.nan, np.float32)), "NaN or Inf"),
        (lambda p: p.write_bytes(EXAMPLE.read_bytes()), "not a .npy array"),
    ],
)
def test_calibration_file_that_cannot_calibrate(tmp_path: Path, capsys, make, needle) -> None:
    path = tmp_path / "cal.npy"
    make(path)
    status, out, err = run_cli(capsys, "compile", EXAMPLE, "--calibrate", path, "--emit", "ir")
    _assert_usage_error(status, out, err, needle)


def test_empty_output_path_is_refused(tmp_path: Path, capsys) -> None:
    _assert_usage_error(*run_cli(capsys, "compile", EXAMPLE, "-o", ""), "empty")
