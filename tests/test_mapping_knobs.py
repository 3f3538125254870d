"""Issue 14's mapping knobs: weight scale per column or per tile, and the ADC full-scale rule.

Target keys ``weight_scaling`` ("column" | "tile"), ``adc_rule`` ("max" | "ksigma") and
``adc_k`` (docs/quantization.md). The defaults leave every artefact as it was; under each
knob the interpreter, the NumPy backend and the simulator agree bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_cli

import snuc
from snuc.ir.crossbar import (
    dac_quantize,
    default_adc_range,
    ksigma_adc_range,
    tile_conductances,
    weights_from_conductances,
)
from snuc.ir.errors import SnucError
from snuc.ir.target import parse_target, with_overrides
from snuc.runtime.adc_saturation import adc_saturation
from snuc.runtime.artefact import Artefact
from snuc.runtime.chip import program_tile
from snuc.runtime.config import RunConfig
from snuc.runtime.interpreter import run as interpret
from snuc.study import run_study
from snuc.study_spec import load_study

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "snu_small.onnx"
KNOBS = (
    {"weight_scaling": "tile"},
    {"adc_rule": "ksigma"},
    {"weight_scaling": "tile", "adc_rule": "ksigma", "adc_k": 1.0},
)


def knob_target(**knobs) -> snuc.ir.target.TargetSpec:
    return with_overrides(parse_target("pcm-256x256"), **knobs)


@pytest.fixture(scope="module")
def compiled() -> dict[str, Artefact]:
    """The example compiled with the defaults and under each knob, by the knobs' text."""
    arts = {"": snuc.compile(EXAMPLE)}
    for knobs in KNOBS:
        arts[repr(knobs)] = snuc.compile(EXAMPLE, knob_target(**knobs))
    return arts


def spikes(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((12, 3, 32)) < 0.3).astype(np.float32)


def one_output(y: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
    assert not isinstance(y, dict)
    return y


# -- the knobs compile into the artefact ---------------------------------------------------


def test_defaults_leave_the_target_record_as_it_was(compiled):
    target = compiled[""].target
    assert not {"weight_scaling", "adc_rule", "adc_k"} & set(target)
    tile = compiled[repr(KNOBS[0])].target
    assert tile["weight_scaling"] == "tile" and "adc_rule" not in tile


def test_an_artefact_with_knobs_loads_back_with_them(compiled, tmp_path):
    art = compiled[repr(KNOBS[2])]
    back = snuc.load(art.save(tmp_path / "knobs.snuc"))
    assert back.target == art.target
    assert back.target["adc_k"] == 1.0


@pytest.mark.parametrize("knobs", KNOBS, ids=repr)
def test_a_knob_changes_the_quantized_outputs(compiled, knobs):
    x = spikes()
    base = one_output(compiled[""].run(x, mode="quantized"))
    other = one_output(compiled[repr(knobs)].run(x, mode="quantized"))
    assert not np.array_equal(base, other)


# -- every backend agrees, bit for bit -----------------------------------------------------


@pytest.mark.parametrize("mode", ["quantized", "pcm"])
@pytest.mark.parametrize("knobs", KNOBS, ids=repr)
def test_backends_agree_bit_for_bit_under_each_knob(compiled, knobs, mode):
    art = compiled[repr(knobs)]
    x = spikes(1)
    target = knob_target(**knobs)
    options = {"seed": 2, "t_inference_s": 86400.0} if mode == "pcm" else {}
    want = interpret(art.graph, x, mode=mode, target=target, **options)
    (name,) = want
    for backend in ("numpy", "sim"):
        got = art.run(
            x,
            backend=backend,
            mode=mode,
            **{"t_inference" if k == "t_inference_s" else k: v for k, v in options.items()},
        )
        np.testing.assert_array_equal(one_output(got), want[name], err_msg=backend)


# -- per-tile scaling ----------------------------------------------------------------------


def test_per_tile_scaling_puts_only_the_largest_weight_at_g_max():
    rng = np.random.default_rng(4)
    w = rng.uniform(-1.0, 1.0, (40, 24))
    w[:, 5] = 0.0  # a column of zeros keeps scale 0 (exact zero output)
    w[7, 11] = -3.0  # the tile's largest |weight|
    target = knob_target(weight_scaling="tile")
    g_plus, g_minus, scale = tile_conductances(w, (0, 40), (0, 24), target)
    g = g_plus.sum(axis=-1) - g_minus.sum(axis=-1)
    assert g_minus[7, 11, 0] == target.g_max_us
    # Every other device is proportional to its weight with the tile's one scale.
    np.testing.assert_allclose(g, w / 3.0 * target.g_max_us, rtol=1e-12, atol=1e-12)
    assert scale[5] == 0.0
    assert set(np.delete(scale, 5)) == {3.0 / target.g_max_us}
    np.testing.assert_allclose(weights_from_conductances(g_plus, g_minus, scale), w, atol=1e-12)
    # Per column, every non-zero column's largest weight sits at g_max instead.
    column = tile_conductances(w, (0, 40), (0, 24), knob_target())
    peaks = np.abs(column[0].sum(-1) - column[1].sum(-1)).max(axis=0)
    np.testing.assert_allclose(np.delete(peaks, 5), target.g_max_us, rtol=1e-15)


def test_per_tile_scaling_with_levels_and_device_pairs():
    w = np.array([[1.0, -0.5], [0.25, 0.1]])
    target = knob_target(weight_scaling="tile", devices_per_polarity=2, conductance_levels=5)
    g_plus, g_minus, scale = tile_conductances(w, (0, 2), (0, 2), target)
    assert set(scale) == {1.0 / (2 * target.g_max_us)}
    levels = target.g_max_us * np.arange(5) / 4
    assert np.isin(g_plus, levels).all() and np.isin(g_minus, levels).all()
    assert g_plus[0, 0].tolist() == [target.g_max_us] * 2
    assert g_minus[0, 1].tolist() == [target.g_max_us / 2] * 2


# -- the bounded ADC rule ------------------------------------------------------------------


def test_ksigma_full_scale_is_the_mean_plus_k_sigma_and_below_the_max():
    g_plus = np.array([[[10.0], [0.0], [5.0]], [[20.0], [3.0], [0.0]]])  # [2, 3, 1]
    g_minus = np.array([[[0.0], [4.0], [0.0]], [[0.0], [0.0], [5.0]]])
    target = knob_target(adc_rule="ksigma", adc_k=0.5)
    # dac (0, 1): mean 0.5 * sum G, sigma 0.5 * sqrt(sum G^2); column 0 is the largest.
    want = 0.5 * 30.0 + 0.5 * 0.5 * np.sqrt(500.0)
    assert ksigma_adc_range(g_plus, g_minus, (0.0, 1.0), target) == pytest.approx(want)
    assert want < default_adc_range(g_plus, g_minus, (0.0, 1.0), target) == 30.0
    # A large k is capped by the never-clipping full scale.
    wide = knob_target(adc_rule="ksigma", adc_k=2.0)
    assert ksigma_adc_range(g_plus, g_minus, (0.0, 1.0), wide) == 30.0


def adc_ranges(art: Artefact) -> dict[int, float]:
    return {n.op.tile: n.op.adc_range for n in art.graph.nodes() if n.op.NAME == "xbar.mvm"}


def test_ksigma_sets_every_tile_below_the_max_rule(compiled):
    base, bounded = adc_ranges(compiled[""]), adc_ranges(compiled[repr(KNOBS[1])])
    assert base.keys() == bounded.keys()
    assert all(bounded[t] < base[t] for t in base)


# -- bad values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("weight_scaling", "row", "'weight_scaling' = 'row' must be one of column, tile"),
        ("adc_rule", 3, "'adc_rule' = '3' must be one of max, ksigma"),
        ("adc_k", 0.0, "'adc_k' = 0.0 is out of range; expected 0.1..1000"),
    ],
)
def test_a_bad_knob_value_is_one_line(key, value, words, tmp_path):
    with pytest.raises(SnucError) as err:
        knob_target(**{key: value})
    assert words in str(err.value) and "\n" not in str(err.value)
    toml = tmp_path / "chip.toml"
    toml.write_text(f'base = "pcm-256x256"\n{key} = {value!r}\n'.replace("'", '"'))
    with pytest.raises(SnucError) as err:
        parse_target(toml)
    assert words in str(err.value) and "\n" not in str(err.value)


# -- saturation counted in --diagnostics ---------------------------------------------------


def test_bounded_rule_clips_a_crafted_input_and_diagnostics_count_it(compiled):
    """Inputs of a column's weights' signs drive it far past one sigma above the mean of
    inputs at random ends of their range; the max rule never saturates on them."""
    bounded = compiled[repr(KNOBS[2])]
    graph, target = bounded.graph, knob_target(**KNOBS[2])
    x = crafted(bounded)
    config = RunConfig(mode="quantized")
    _, traced = interpret(graph, x, config, target=target, trace=True)
    fractions = adc_saturation(graph, traced, config, target)
    assert fractions and max(fractions.values()) > 0
    # The count is of the ADC's end codes: recount the first layer from its currents.
    layer = next(n.op.layer for n in graph.nodes() if n.op.NAME == "xbar.mvm")
    at_end = counted = 0
    for node in graph.nodes():
        if node.op.NAME != "xbar.mvm" or node.op.layer != layer:
            continue
        (tile,) = program_tile(graph, node, "quantized", target, 0, 0.0, None)
        x_in = _tile_input(graph, node, x, traced)[..., slice(*node.op.rows)]
        x_q = dac_quantize(x_in, *node.op.dac, target.dac_bits)
        codes = np.rint(np.clip(x_q @ tile.conductance_us / node.op.adc_range, -1, 1) * 127)
        live = tile.gain != 0
        at_end += int((np.abs(codes) == 127)[..., live].sum())
        counted += codes[..., live].size
    assert at_end > 0
    assert fractions[layer] == pytest.approx(at_end / counted)
    base = compiled[""]
    _, traced = interpret(base.graph, x, config, target=knob_target(), trace=True)
    assert set(adc_saturation(base.graph, traced, config, knob_target()).values()) == {0.0}


def crafted(art: Artefact) -> np.ndarray:
    """Inputs ``[4, 2, 32]``: 0.9 times the signs of the first input tile's column 0 (the
    input's DAC range is (-1, 1); 0.9 keeps the max rule's column current off its end code)."""
    graph = art.graph
    node = next(n for n in graph.nodes() if n.op.NAME == "xbar.mvm" and n.inputs[0] in graph.inputs)
    (r0, r1), (c0, _) = node.op.rows, node.op.cols
    signs = np.sign(graph.constants[node.inputs[1]][r0:r1, c0])
    x = np.zeros((4, 2, 32), np.float32)
    x[..., r0:r1] = 0.9 * signs
    return x


def _tile_input(graph, node, x, traced) -> np.ndarray:
    name = node.inputs[0]
    return x if name in graph.inputs else traced[name]


@pytest.mark.parametrize("mode", ["quantized", "pcm"])
def test_run_diagnostics_shows_the_saturated_fraction(compiled, tmp_path, capsys, mode):
    path = compiled[repr(KNOBS[2])].save(tmp_path / "bounded.snuc")
    x = tmp_path / "x.npy"
    np.save(x, crafted(compiled[repr(KNOBS[2])]))
    status, out, err = run_cli(capsys, "run", path, "--input", x, "--mode", mode, "--diagnostics")
    assert status == 0, err
    assert "ADC saturated" in out
    rows = [line for line in out.splitlines() if "(crossbar)" in line]
    assert rows and any(not line.rstrip().endswith(" 0.00%") for line in rows)


# -- the knobs as study axes ---------------------------------------------------------------

KNOB_SPEC = """
models = ["{model}"]
tasks = "custom"
data = "{data}"
metric = "mse"
modes = ["quantized", "pcm"]
t_inference = "1d"
seeds = [0]
drift_compensation = "on"

[targets]
weight_scaling = ["column", "tile"]
adc_rule = ["max", "ksigma"]

[output]
cache = "{cache}"
"""


def test_a_study_sweeps_both_knobs(tmp_path):
    rng = np.random.default_rng(5)
    x = (rng.random((6, 8, 32)) < 0.3).astype(np.float32)
    y = snuc.compile(EXAMPLE).run(x, mode="float")
    data = tmp_path / "d.npz"
    np.savez(data, inputs=x, lengths=np.full(8, 6), targets=y)
    spec = tmp_path / "study.toml"
    spec.write_text(KNOB_SPEC.format(model=EXAMPLE, data=data, cache=tmp_path / "cache"))
    study = load_study(spec)
    assert len(study.builds) == 4 and len(study.configurations) == 8
    rows = run_study(study, executor="serial")
    knobs = [(r["weight_scaling"], r["adc_rule"]) for r in rows if r["mode"] == "quantized"]
    assert knobs == [("column", "max"), ("column", "ksigma"), ("tile", "max"), ("tile", "ksigma")]
    # Each build is the model compiled for its target, and each pair of knobs scores apart.
    values = {(r["weight_scaling"], r["adc_rule"], r["mode"]): r["value"] for r in rows}
    assert len(set(values.values())) == 8
    quantized = snuc.compile(EXAMPLE, knob_target(weight_scaling="tile", adc_rule="ksigma"))
    y_q = quantized.run(x, mode="quantized")
    assert values["tile", "ksigma", "quantized"] == pytest.approx(float(np.mean((y_q - y) ** 2)))


def test_a_bad_knob_in_a_study_is_one_line(tmp_path, capsys):
    spec = tmp_path / "study.toml"
    text = KNOB_SPEC.format(model=EXAMPLE, data=tmp_path / "d.npz", cache=tmp_path / "c")
    np.savez(
        tmp_path / "d.npz",
        inputs=np.zeros((2, 1, 32), np.float32),
        lengths=[2],
        targets=np.zeros((2, 1, 10), np.float32),
    )
    spec.write_text(text.replace('"tile"]', '"row"]'))
    status, out, err = run_cli(capsys, "eval", "--spec", spec)
    assert status == 2 and out == ""
    assert "'weight_scaling' = 'row' must be one of column, tile" in err
    assert len(err.strip().splitlines()) == 1


# -- snuc compile's options ----------------------------------------------------------------


def test_compile_options_set_the_knobs(tmp_path, capsys):
    out = tmp_path / "k.snuc"
    argv = ["compile", EXAMPLE, "-o", out, "--weight-scaling", "tile", "--adc-rule", "ksigma"]
    status, _, err = run_cli(capsys, *argv, "--adc-k", "2")
    assert status == 0, err
    target = snuc.load(out).target
    assert (target["weight_scaling"], target["adc_rule"], target["adc_k"]) == (
        "tile",
        "ksigma",
        2.0,
    )
    want = snuc.compile(EXAMPLE, knob_target(weight_scaling="tile", adc_rule="ksigma", adc_k=2.0))
    assert adc_ranges(snuc.load(out)) == adc_ranges(want)


def test_a_bad_compile_option_is_one_line(tmp_path, capsys):
    status, out, err = run_cli(
        capsys, "compile", EXAMPLE, "-o", tmp_path / "k.snuc", "--adc-rule", "clip"
    )
    assert status == 2 and out == "" and not (tmp_path / "k.snuc").exists()
    assert "'adc_rule' = 'clip' must be one of max, ksigma" in err
    assert len(err.strip().splitlines()) == 1


# -- k sigma over calibration data ---------------------------------------------------------


@pytest.mark.parametrize("rule", ["max", "ksigma"])
def test_calibration_under_each_adc_rule(rule):
    rng = np.random.default_rng(8)
    samples = rng.uniform(-1.0, 1.0, (10, 4, 32)).astype(np.float32)
    target = knob_target(adc_rule=rule, adc_k=2.0)
    art = snuc.compile(EXAMPLE, target, calibrate=samples)
    node = next(n for n in art.graph.nodes() if n.op.NAME == "xbar.mvm" and n.inputs[0] == "X")
    g_plus, g_minus, _ = tile_conductances(
        art.graph.constants[node.inputs[1]], node.op.rows, node.op.cols, target
    )
    x_q = dac_quantize(samples[..., slice(*node.op.rows)], *node.op.dac, target.dac_bits)
    current = (x_q @ (g_plus.sum(-1) - g_minus.sum(-1))).reshape(-1, g_plus.shape[1])
    peak = np.abs(current).max()
    bound = (np.abs(current.mean(axis=0)) + 2.0 * current.std(axis=0)).max()
    assert bound < peak  # the samples reach beyond two sigma: the rule matters here
    want = peak if rule == "max" else bound
    assert node.op.adc_range == pytest.approx(want, rel=1e-9)
