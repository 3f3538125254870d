"""Targets: defaults, the name grammar, presets, TOML overrides, round trips, listings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snuc.ir.errors import SnucError
from snuc.ir.target import (
    DEFAULT_TARGET,
    PARAMS,
    PRESETS,
    TargetSpec,
    describe_targets,
    format_targets,
    parse_target,
    with_overrides,
)

SPEC_DEFAULTS = {
    "rows": 256,
    "cols": 256,
    "cores": 64,
    "chips": 1,
    "devices_per_polarity": 1,
    "g_max_us": 25.0,
    "conductance_levels": 0,
    "dac_bits": 8,
    "adc_bits": 8,
    "input_phases": 1,
    "clock_ghz": 1.0,
    "mvm_cycles": 133,
    "energy_mvm_pj": 13400.0,
    "t0_s": 20.0,
    "t_read_ns": 250.0,
    "prog_noise_scale": 1.0,
    "read_noise_scale": 1.0,
    "drift_scale": 1.0,
}
"""SPEC §3's table."""

EXTRA_DEFAULTS = {
    "digital_lanes": 32,
    "energy_digital_op_pj": 1.0,
    "noc_hop_cycles": 2,
    "noc_bytes_per_cycle": 32,
    "energy_noc_byte_pj": 1.0,
    "chip_link_cycles": 100,
    "energy_chip_link_byte_pj": 10.0,
}
"""Keys snuc adds for mapping and scheduling studies (docs/targets.md)."""

MAPPING_DEFAULTS = {"weight_scaling": "column", "adc_rule": "max", "adc_k": 4.0}
"""Issue 14's mapping knobs: quiet, so ``to_dict`` leaves them out at their defaults."""

NEURON_DEFAULTS = {
    "neuron_snu_cycles": 1,
    "neuron_snu_energy_pj": 3.5,
    "neuron_lif_sub_cycles": 1,
    "neuron_lif_sub_energy_pj": 2.5,
    "neuron_if_cycles": 1,
    "neuron_if_energy_pj": 2.0,
    "neuron_cuba_cycles": 1,
    "neuron_cuba_energy_pj": 4.0,
    "neuron_li_cycles": 1,
    "neuron_li_energy_pj": 1.0,
}
"""The neuron units' costs, two keys per neuron model (ir/neurons.py), last."""


def one_line_error(excinfo: pytest.ExceptionInfo[SnucError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def write(tmp_path: Path, text: str, name: str = "chip.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- defaults and derived values -----------------------------------------------------------


def test_every_key_has_its_documented_default():
    target = parse_target(DEFAULT_TARGET)
    assert target.to_dict() == {
        "name": "pcm-256x256",
        **SPEC_DEFAULTS,
        **EXTRA_DEFAULTS,
        **NEURON_DEFAULTS,
    }
    assert list(PARAMS) == [*SPEC_DEFAULTS, *EXTRA_DEFAULTS, *MAPPING_DEFAULTS, *NEURON_DEFAULTS]
    assert {key: getattr(target, key) for key in MAPPING_DEFAULTS} == MAPPING_DEFAULTS


def test_parameter_types_follow_the_table():
    target = parse_target(DEFAULT_TARGET)
    for key, info in PARAMS.items():
        assert type(getattr(target, key)) is info.kind, key


def test_derived_values():
    target = with_overrides(parse_target("pcm-100x300"), devices_per_polarity=2, chips=3)
    assert target.devices_per_weight == 4
    assert target.weight_cols == 75
    assert target.crossbars_available == 64 * 3
    assert target.devices_per_crossbar == 100 * 300
    fast = with_overrides(target, clock_ghz=2.0)
    assert fast.cycle_ns == 0.5
    assert fast.mvm_ns == pytest.approx(66.5)
    assert parse_target("pcm-257x257").weight_cols == 128


# -- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, rows, cols",
    [
        ("pcm-100x300", 100, 300),
        ("pcm-8x8", 8, 8),
        ("pcm-4096x4096", 4096, 4096),
        ("pcm-8x4096", 8, 4096),
    ],
)
def test_any_size_in_bounds_is_a_target(name, rows, cols):
    target = parse_target(name)
    assert (target.name, target.rows, target.cols) == (name, rows, cols)
    assert target.cores == 64


@pytest.mark.parametrize(
    "name, what",
    [
        ("pcm-7x256", "7 rows"),
        ("pcm-256x7", "7 columns"),
        ("pcm-4097x256", "4097 rows"),
        ("pcm-256x4097", "4097 columns"),
        ("pcm-0x0", "0 rows"),
    ],
)
def test_sizes_out_of_bounds_are_errors(name, what):
    with pytest.raises(SnucError) as excinfo:
        parse_target(name)
    message = one_line_error(excinfo)
    assert name in message and what in message and "8..4096" in message


@pytest.mark.parametrize(
    "spec", ["pcm-abc", "gpu", "", "pcm-256x", "pcm-256x256x2", "pcm-256x256 ", "PCM-256X256"]
)
def test_bad_names_are_errors(spec):
    with pytest.raises(SnucError) as excinfo:
        parse_target(spec)
    message = one_line_error(excinfo)
    assert f"unknown target {spec!r}" in message
    assert "pcm-RxC" in message and ".toml" in message


@given(st.integers(8, 4096), st.integers(8, 4096))
def test_name_round_trips_through_the_target(rows, cols):
    target = parse_target(f"pcm-{rows}x{cols}")
    assert parse_target(target.name) == target
    assert (target.rows, target.cols) == (rows, cols)


def test_presets():
    assert DEFAULT_TARGET == "pcm-256x256"
    assert list(PRESETS) == ["pcm-256x256", "pcm-128x128", "pcm-512x512"]
    for name, target in PRESETS.items():
        assert parse_target(name) == target
        assert target.rows == target.cols == int(name.split("x")[1])


# -- overrides -----------------------------------------------------------------------------


def test_with_overrides_replaces_values_and_keeps_the_name():
    base = parse_target(DEFAULT_TARGET)
    target = with_overrides(base, chips=4, g_max_us=20)
    assert (target.name, target.chips, target.g_max_us) == ("pcm-256x256", 4, 20.0)
    assert type(target.g_max_us) is float
    assert base.chips == 1
    assert with_overrides(base, name="mine").name == "mine"


def test_with_overrides_suggests_the_closest_key():
    with pytest.raises(SnucError) as excinfo:
        with_overrides(parse_target(DEFAULT_TARGET), chip=2)
    assert "unknown target parameter 'chip'; did you mean 'chips'?" in one_line_error(excinfo)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("chips", 0, "'chips' = 0 is out of range; expected 1..1e6"),
        ("devices_per_polarity", 3, "expected 1 or 2"),
        ("conductance_levels", 1, "expected 0 or 2..65536"),
        ("g_max_us", 0.0, "'g_max_us' = 0.0 is out of range"),
        ("g_max_us", float("nan"), "'g_max_us' = nan is out of range"),
        ("prog_noise_scale", -0.1, "'prog_noise_scale' = -0.1 is out of range"),
        ("cores", 64.0, "'cores' = 64.0 (float) must be an integer"),
        ("cores", True, "'cores' = True (bool) must be an integer"),
        ("clock_ghz", "1", "'clock_ghz' = '1' (str) must be a number"),
    ],
)
def test_invalid_values_name_the_key_value_and_range(key, value, expected):
    with pytest.raises(SnucError) as excinfo:
        with_overrides(parse_target(DEFAULT_TARGET), **{key: value})
    assert expected in one_line_error(excinfo)


def test_direct_construction_validates():
    with pytest.raises(SnucError, match="'rows' = 7 is out of range"):
        TargetSpec(rows=7)
    with pytest.raises(SnucError, match="target name ''"):
        TargetSpec(name="")


# -- TOML ----------------------------------------------------------------------------------


def test_toml_overrides_parameters(tmp_path):
    path = write(tmp_path, 'base = "pcm-128x128"\nchips = 4\ng_max_us = 20\ndrift_scale = 0.5\n')
    target = parse_target(str(path))
    assert (target.rows, target.cols, target.chips) == (128, 128, 4)
    assert target.g_max_us == 20.0 and target.drift_scale == 0.5
    assert target.name == "chip.toml"
    assert parse_target(path) == target  # a PathLike works too


def test_toml_name_and_default_base(tmp_path):
    path = write(tmp_path, 'name = "hermes-2dev"\ndevices_per_polarity = 2\n')
    target = parse_target(path)
    assert target.name == "hermes-2dev"
    assert (target.rows, target.cols, target.devices_per_polarity) == (256, 256, 2)


def test_toml_can_override_rows_and_cols(tmp_path):
    target = parse_target(write(tmp_path, "rows = 64\ncols = 1024\n"))
    assert (target.rows, target.cols) == (64, 1024)


def test_toml_unknown_key_suggests_the_closest(tmp_path):
    path = write(tmp_path, 'base = "pcm-256x256"\ng_max = 20.0\n')
    with pytest.raises(SnucError) as excinfo:
        parse_target(path)
    message = one_line_error(excinfo)
    assert str(path) in message
    assert "unknown target parameter 'g_max'; did you mean 'g_max_us'?" in message


def test_toml_out_of_range_value(tmp_path):
    path = write(tmp_path, "adc_bits = 17\n")
    with pytest.raises(SnucError) as excinfo:
        parse_target(path)
    message = one_line_error(excinfo)
    assert str(path) in message and "'adc_bits' = 17 is out of range; expected 1..16" in message


@pytest.mark.parametrize(
    "text, expected",
    [
        ('cores = "64"\n', "'cores' = '64' (str) must be an integer"),
        ("cores = 64.5\n", "'cores' = 64.5 (float) must be an integer"),
        ("t0_s = true\n", "'t0_s' = True (bool) must be a number"),
        ("[chips]\nn = 2\n", "'chips' = {'n': 2} (dict) must be an integer"),
        ("base = 256\n", "'base' = 256 must be a target name"),
        ("name = 3\n", "'name' = 3 must be a string"),
    ],
)
def test_toml_wrong_types(tmp_path, text, expected):
    with pytest.raises(SnucError) as excinfo:
        parse_target(write(tmp_path, text))
    assert expected in one_line_error(excinfo)


@pytest.mark.parametrize("base", ["gpu", "pcm-7x256", "chip.toml"])
def test_toml_bad_base(tmp_path, base):
    path = write(tmp_path, f'base = "{base}"\n')
    with pytest.raises(SnucError) as excinfo:
        parse_target(path)
    message = one_line_error(excinfo)
    assert str(path) in message and base in message


def test_toml_syntax_error(tmp_path):
    path = write(tmp_path, 'base = "pcm-256x256"\nchips = = 2\n')
    with pytest.raises(SnucError) as excinfo:
        parse_target(path)
    message = one_line_error(excinfo)
    assert f"target file {str(path)!r} is not valid TOML" in message and "line 2" in message


def test_toml_missing_file(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(SnucError) as excinfo:
        parse_target(str(missing))
    assert f"cannot read target file {str(missing)!r}" in one_line_error(excinfo)


def test_toml_not_utf8(tmp_path):
    path = tmp_path / "chip.toml"
    path.write_bytes(b"chips = \xff\n")
    with pytest.raises(SnucError) as excinfo:
        parse_target(path)
    assert "cannot read target file" in one_line_error(excinfo)


def test_existing_file_without_toml_suffix_is_read_as_toml(tmp_path):
    assert parse_target(str(write(tmp_path, "chips = 2\n", name="chip.cfg"))).chips == 2


# -- round trips and listings --------------------------------------------------------------


def test_to_dict_from_dict_round_trip():
    target = with_overrides(parse_target("pcm-100x300"), chips=5, g_max_us=20.7, name="x")
    data = target.to_dict()
    assert TargetSpec.from_dict(data) == target
    assert TargetSpec.from_dict(json.loads(json.dumps(data))) == target
    for preset in PRESETS.values():
        assert TargetSpec.from_dict(preset.to_dict()) == preset


def test_from_dict_checks_keys_and_fills_defaults():
    with pytest.raises(SnucError, match="did you mean 'adc_bits'"):
        TargetSpec.from_dict({"name": "x", "adc_bit": 8})
    assert TargetSpec.from_dict({"name": "x", "chips": 2}) == TargetSpec(name="x", chips=2)


def test_describe_targets_lists_presets_and_every_key():
    described = json.loads(json.dumps(describe_targets()))
    assert described["default"] == DEFAULT_TARGET
    assert list(described["presets"]) == list(PRESETS)
    assert list(described["parameters"]) == list(PARAMS)
    for key, entry in described["parameters"].items():
        assert set(entry) == {"type", "default", "unit", "range", "allowed", "meaning", "source"}
        assert entry["default"] == getattr(PRESETS[DEFAULT_TARGET], key)
        assert entry["meaning"] and entry["unit"] and entry["source"], key
    assert described["parameters"]["devices_per_polarity"]["allowed"] == [[1, 1], [2, 2]]
    assert described["parameters"]["rows"]["range"] == "8..4096"


def test_format_targets_is_a_table_of_every_key():
    text = format_targets()
    lines = text.splitlines()
    assert all(name in lines[0] for name in PRESETS)
    for key, info in PARAMS.items():
        row = next(line for line in lines if line.split()[:1] == [key])
        assert info.range_text() in row and info.meaning in row


def test_docs_table_matches_the_parameters():
    docs = (Path(__file__).parents[1] / "docs" / "targets.md").read_text(encoding="utf-8")
    rows = {
        cells[0].strip("`"): cells
        for line in docs.splitlines()
        if line.startswith("| `")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    for key, info in PARAMS.items():
        assert key in rows, f"docs/targets.md has no row for {key}"
        _, default, unit, allowed, *_ = rows[key]
        value = getattr(PRESETS[DEFAULT_TARGET], key)
        assert (default if info.kind is str else float(default)) == value, key
        assert (unit, allowed) == (info.unit, info.range_text()), key
