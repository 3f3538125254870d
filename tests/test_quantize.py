"""Conductance quantisation (``snuc.ir.crossbar``), the ``quantize`` pass and calibration.

The conductance math is checked against hand-computed cases and, with hypothesis, against
its documented properties: exact reconstruction when analog, the level bound otherwise,
devices within [0, g_max] on their levels, one polarity per weight. The converters are
checked for exact grid points, clipping and monotonicity. The pass is checked for the DAC
ranges the graph guarantees, the never-clipping default ADC and calibrated settings.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from snuc.ir import Graph, SnucError, TensorType, ops
from snuc.ir.crossbar import (
    SPIKES,
    UNKNOWN_RANGE,
    ValueRange,
    adc_quantize,
    dac_grid,
    dac_quantize,
    dac_range,
    dac_step,
    default_adc_range,
    guaranteed_ranges,
    level_error_bound,
    quantized_weights,
    tile_conductances,
    weights_from_conductances,
)
from snuc.ir.target import parse_target, with_overrides
from snuc.passes import PASSES, get_pass, run_pipeline
from snuc.passes.quantize import Quantize
from snuc.runtime.calibration import Calibration, calibrate
from snuc.runtime.interpreter import run

TARGET = parse_target("pcm-16x16")
FEW = settings(max_examples=40, deadline=None)
F, N, OUT = 12, 20, 6


def tiled_dense(
    g: Graph, x: str, w: str, name: str, first_tile: int, block: tuple[int, int] = (8, 8)
) -> tuple[str, int]:
    """``x @ W`` as ``xbar.mvm`` tiles of at most ``block`` weight rows x columns, as the
    ``tile`` pass makes them; returns the result's name and the next free tile number."""
    k, n = g.constants[w].shape
    tile, columns = first_tile, []
    for c0 in range(0, n, block[1]):
        partial = None
        for r0 in range(0, k, block[0]):
            rows, cols = (r0, min(r0 + block[0], k)), (c0, min(c0 + block[1], n))
            op = ops.CrossbarMVM(layer=name, tile=tile, rows=rows, cols=cols)
            (y,) = g.add_node(op, [x, w], f"{name}_t{tile}")
            tile += 1
            partial = y if partial is None else g.add_node(ops.Add(), [partial, y])[0]
        columns.append(partial)
    if len(columns) == 1:
        return columns[0], tile
    (out,) = g.add_node(ops.Concat(axis=-1), columns, name)
    return out, tile


def snu_network() -> Graph:
    """x[B, 12] -> tiles ``ax`` (+ recurrent tiles ``ah`` on the spikes) -> SNU -> tiles ``z``."""
    rng = np.random.default_rng(0)
    g = Graph("snu")
    g.add_constant("W", (rng.standard_normal((F, N)) * 0.6).astype(np.float32))
    g.add_constant("H", (rng.standard_normal((N, N)) * 0.3).astype(np.float32))
    g.add_constant("Wo", (rng.standard_normal((N, OUT)) * 0.5).astype(np.float32))
    g.add_constant("decay", np.float32(0.8))
    g.add_constant("bias", np.float32(-0.6))
    g.add_input("x", TensorType("f32", ("B", F)))
    g.add_state("s", TensorType("f32", ("B", N)))
    g.add_state("y", TensorType("f32", ("B", N)))
    ax, tile = tiled_dense(g, "x", "W", "ax", 0)
    ah, tile = tiled_dense(g, "y", "H", "ah", tile)
    (a,) = g.add_node(ops.Add(), [ax, ah], "a")
    s_new, y_new = g.add_node(ops.SNULayer(), [a, "s", "y", "decay", "bias"], ["s_new", "y_new"])
    g.set_next("s", s_new)
    g.set_next("y", y_new)
    z, _ = tiled_dense(g, y_new, "Wo", "z", tile)
    g.outputs += [y_new, z]
    return g


def inputs(seed: int, steps: int = 20, batch: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (steps, batch, F)).astype(np.float32)


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


def target_with(levels: int = 0, dpp: int = 1, g_max: float = 25.0):
    return with_overrides(
        TARGET, conductance_levels=levels, devices_per_polarity=dpp, g_max_us=g_max
    )


# --------------------------------------------------------------------------- conductances


def test_conductances_of_a_small_matrix_by_hand():
    w = np.array([[0.5, -1.0], [0.25, 0.0]], np.float32)
    g_plus, g_minus, scale = tile_conductances(w, (0, 2), (0, 2), TARGET)
    np.testing.assert_array_equal(scale, [0.5 / 25, 1.0 / 25])
    np.testing.assert_array_equal(g_plus[..., 0], [[25.0, 0.0], [12.5, 0.0]])
    np.testing.assert_array_equal(g_minus[..., 0], [[0.0, 25.0], [0.0, 0.0]])
    # Three levels {0, 12.5, 25} hold these exactly; two levels {0, 25} round 12.5 half
    # to even, to 0.
    np.testing.assert_array_equal(quantized_weights(w, (0, 2), (0, 2), target_with(3)), w)
    two = quantized_weights(w, (0, 2), (0, 2), target_with(2))
    np.testing.assert_array_equal(two, [[0.5, -1.0], [0.0, 0.0]])


def test_two_devices_per_polarity_split_a_weight_equally():
    w = np.array([[2.0], [-1.0]])
    g_plus, g_minus, scale = tile_conductances(w, (0, 2), (0, 1), target_with(dpp=2))
    assert g_plus.shape == g_minus.shape == (2, 1, 2)
    np.testing.assert_array_equal(scale, [2.0 / 50])
    np.testing.assert_array_equal(g_plus[0, 0], [25.0, 25.0])
    np.testing.assert_array_equal(g_minus[1, 0], [12.5, 12.5])
    np.testing.assert_array_equal(weights_from_conductances(g_plus, g_minus, scale), w)


def test_the_tile_reads_its_window_of_the_whole_weight():
    w = np.random.default_rng(0).standard_normal((10, 7)).astype(np.float32)
    target = target_with(levels=16, dpp=2)
    window = quantized_weights(w, (3, 9), (2, 5), target)
    np.testing.assert_array_equal(window, quantized_weights(w[3:9, 2:5], (0, 6), (0, 3), target))


def test_a_zero_column_has_no_conductance_and_no_scale():
    w = np.array([[0.0, 1.0], [0.0, -0.5]])
    for target in (target_with(), target_with(levels=4, dpp=2)):
        g_plus, g_minus, scale = tile_conductances(w, (0, 2), (0, 2), target)
        assert scale[0] == 0.0 and not g_plus[:, 0].any() and not g_minus[:, 0].any()
        assert np.all(np.isfinite(scale))
        np.testing.assert_array_equal(weights_from_conductances(g_plus, g_minus, scale)[:, 0], 0)


@st.composite
def weight_windows(draw):
    k, n = draw(st.integers(1, 12)), draw(st.integers(1, 10))
    w = draw(
        hnp.arrays(np.float32, (k, n), elements=st.floats(-4, 4, width=32, allow_subnormal=False))
    )
    if draw(st.booleans()):
        w[:, draw(st.integers(0, n - 1))] = 0.0  # a zero column
    r0 = draw(st.integers(0, k - 1))
    c0 = draw(st.integers(0, n - 1))
    return w, (r0, draw(st.integers(r0 + 1, k))), (c0, draw(st.integers(c0 + 1, n)))


@FEW
@given(case=weight_windows(), dpp=st.sampled_from([1, 2]), g_max=st.sampled_from([25.0, 10.35]))
def test_analog_conductances_reconstruct_the_weights(case, dpp, g_max):
    w, rows, cols = case
    target = target_with(0, dpp, g_max)
    g_plus, g_minus, scale = tile_conductances(w, rows, cols, target)
    window = w[rows[0] : rows[1], cols[0] : cols[1]].astype(np.float64)
    assert g_plus.shape == g_minus.shape == (*window.shape, dpp)
    assert g_plus.dtype == g_minus.dtype == scale.dtype == np.float64
    assert np.all((g_plus >= 0) & (g_plus <= g_max) & (g_minus >= 0) & (g_minus <= g_max))
    assert not np.any((g_plus > 0) & (g_minus > 0)), "one polarity per weight"
    assert np.all(g_plus == g_plus[..., :1]) and np.all(g_minus == g_minus[..., :1])
    peak = np.abs(window).max(axis=0)
    np.testing.assert_array_equal(scale, peak / (dpp * g_max))
    # Each non-zero column's largest weight uses the full range of its devices.
    used = np.maximum(g_plus, g_minus).max(axis=(0, 2))
    np.testing.assert_allclose(used[peak > 0], g_max, rtol=1e-14)
    reconstructed = weights_from_conductances(g_plus, g_minus, scale)
    np.testing.assert_array_equal(reconstructed, quantized_weights(w, rows, cols, target))
    assert np.all(np.abs(reconstructed - window) <= 1e-14 * peak)


@FEW
@given(
    case=weight_windows(),
    dpp=st.sampled_from([1, 2]),
    levels=st.one_of(st.integers(2, 8), st.sampled_from([16, 17, 255, 256])),
)
def test_conductance_levels_stay_within_the_documented_bound(case, dpp, levels):
    w, rows, cols = case
    target = target_with(levels, dpp)
    g_plus, g_minus, scale = tile_conductances(w, rows, cols, target)
    level = 25.0 / (levels - 1)
    for g in (g_plus, g_minus):
        steps = g / level
        np.testing.assert_allclose(steps, np.rint(steps), atol=1e-9)
        assert np.all((g >= 0) & (g <= 25.0))
    window = w[rows[0] : rows[1], cols[0] : cols[1]].astype(np.float64)
    error = np.abs(weights_from_conductances(g_plus, g_minus, scale) - window)
    bound = level_error_bound(scale, target)
    np.testing.assert_allclose(bound, scale * dpp * level / 2)
    assert np.all(error <= bound * (1 + 1e-9))


# --------------------------------------------------------------------------- converters


@FEW
@given(
    x=hnp.arrays(np.float64, st.integers(1, 50), elements=st.floats(-3, 3)),
    lo=st.floats(-2, 0.5),
    width=st.floats(0.01, 3),
    bits=st.integers(1, 12),
)
def test_dac_rounds_to_its_grid_and_clips(x, lo, width, bits):
    hi = lo + width
    origin, step = dac_grid(lo, hi, bits)
    assert step == dac_step(lo, hi, bits)
    x_q = dac_quantize(x, lo, hi, bits)
    assert x_q.dtype == np.float64
    np.testing.assert_array_equal(dac_quantize(x_q, lo, hi, bits), x_q)  # grid points pass
    codes = (x_q - origin) / step
    np.testing.assert_allclose(codes, np.rint(codes), atol=1e-6)
    if lo < 0 < hi:  # sign-magnitude
        assert origin == 0.0
        assert np.all(np.abs(codes) <= max(2 ** (bits - 1) - 1, 1) + 1e-6)
    else:
        assert origin == lo
        assert np.all((codes > -1e-6) & (codes < 2**bits - 1 + 1e-6))
    inside = (x >= lo) & (x <= hi)
    assert np.all(np.abs(x_q - x)[inside] <= step / 2 * (1 + 1e-9))
    ends = dac_quantize([lo, hi], lo, hi, bits)
    assert np.all(np.abs(ends - [lo, hi]) <= step / 2 * (1 + 1e-9))
    np.testing.assert_array_equal(x_q[x <= lo], ends[0])
    np.testing.assert_array_equal(x_q[x >= hi], ends[1])
    order = np.argsort(x)
    assert np.all(np.diff(x_q[order]) >= 0), "monotone"


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize(("lo", "hi"), [(-1.0, 1.0), (-0.3, 2.0), (-5.0, 0.1)])
def test_signed_dac_converts_zero_exactly(bits, lo, hi):
    """A real-valued input of 0 drives nothing: sign-magnitude inputs, zero on the grid."""
    assert dac_quantize([0.0, -0.0], lo, hi, bits).tolist() == [0.0, 0.0]
    step = dac_step(lo, hi, bits)
    assert step == pytest.approx(max(-lo, hi) / (2 ** (bits - 1) - 1))


@pytest.mark.parametrize("bits", range(1, 17))
def test_dac_passes_spikes_and_range_ends_exactly(bits):
    spikes = np.array([0.0, 1.0, 1.0, 0.0], np.float32)
    np.testing.assert_array_equal(dac_quantize(spikes, 0.0, 1.0, bits), spikes)
    np.testing.assert_array_equal(
        dac_quantize([-1.0, 1.0, -5.0, 5.0], -1.0, 1.0, bits), [-1, 1, -1, 1]
    )


def test_dac_rounds_half_to_even():
    # Over (0, 3) with 2 bits the grid is 0, 1, 2, 3: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2.
    np.testing.assert_array_equal(dac_quantize([0.5, 1.5, 2.5], 0.0, 3.0, 2), [0.0, 2.0, 2.0])


@FEW
@given(
    current=hnp.arrays(np.float64, st.integers(1, 50), elements=st.floats(-300, 300)),
    full_scale=st.floats(0.5, 200),
    bits=st.integers(2, 16),
)
def test_adc_rounds_symmetrically_and_clips(current, full_scale, bits):
    m = 2 ** (bits - 1) - 1
    read = adc_quantize(current, full_scale, bits)
    codes = read * m / full_scale
    np.testing.assert_allclose(codes, np.rint(codes), atol=1e-6)
    assert np.all(np.abs(codes) <= m + 1e-6)
    inside = np.abs(current) <= full_scale
    assert np.all(np.abs(read - current)[inside] <= full_scale / (2 * m) * (1 + 1e-9))
    np.testing.assert_allclose(read[current >= full_scale], full_scale)
    np.testing.assert_allclose(read[current <= -full_scale], -full_scale)
    np.testing.assert_array_equal(adc_quantize(-current, full_scale, bits), -read)
    order = np.argsort(current)
    assert np.all(np.diff(read[order]) >= 0), "monotone"
    assert adc_quantize(0.0, full_scale, bits) == 0.0


def test_one_bit_adc_has_codes_minus_one_zero_and_one():
    read = adc_quantize([-3.0, -1.2, -0.2, 0.0, 0.7, 1.2, 9.0], 2.0, 1)
    np.testing.assert_array_equal(read, [-2, -2, 0, 0, 0, 2, 2])


def test_default_adc_range_is_the_largest_column_current():
    g_plus = np.array([[[10.0]], [[0.0]], [[25.0]]]).repeat(2, axis=1)
    g_minus = np.array([[[0.0]], [[5.0]], [[0.0]]]).repeat(2, axis=1)
    g_minus[2, 1, 0] = 25.0  # second column: 10 + 5 + 0
    assert default_adc_range(g_plus, g_minus, (-0.5, 2.0), TARGET) == 40.0 * 2.0
    zeros = np.zeros((3, 2, 1))
    assert default_adc_range(zeros, zeros, (0.0, 1.0), TARGET) == 25.0


# --------------------------------------------------------------------------- value ranges


def ranges_graph() -> Graph:
    rng = np.random.default_rng(0)
    g = Graph("ranges")
    g.add_constant("E", np.array([[-2.0, 0.5], [1.5, 3.0]], np.float32))
    g.add_constant("W", rng.standard_normal((4, 4)).astype(np.float32))
    g.add_constant("decay", np.float32(0.5))
    g.add_constant("bias", np.float32(-1.0))
    g.add_input("x", TensorType("f32", ("B", 4)))
    g.add_input("ids", TensorType("i64", ("B",)))
    g.add_state("s", TensorType("f32", ("B", 4)))
    g.add_state("y", TensorType("f32", ("B", 4)))
    g.add_node(ops.Dense(), ["x", "W"], "a")
    g.add_node(ops.SNULayer(), ["a", "s", "y", "decay", "bias"], ["s_new", "y_new"])
    g.set_next("s", "s_new")
    g.set_next("y", "y_new")
    g.add_node(ops.Sigmoid(), ["a"], "sig")
    g.add_node(ops.Tanh(), ["a"], "th")
    g.add_node(ops.Relu(), ["x"], "rx")
    g.add_node(ops.Step(), ["a"], "st")
    g.add_node(ops.Greater(), ["a", "x"], "gt")
    g.add_node(ops.Cast(to="f32"), ["gt"], "gt_f")
    g.add_node(ops.Concat(axis=-1), ["y", "st", "gt_f"], "spikes")
    g.add_node(ops.Reshape(shape=("B", 2, 6)), ["spikes"], "spikes_2d")
    g.add_node(ops.Gather(), ["E", "ids"], "emb")
    g.add_node(ops.Concat(axis=-1), ["sig", "th"], "mixed")
    g.add_node(ops.Sub(), ["sig", "th"], "diff")
    g.outputs += ["y_new", "spikes_2d", "emb", "mixed", "rx", "diff"]
    return g


def test_the_graph_guarantees_spikes_sigmoids_and_table_ranges():
    ranges = guaranteed_ranges(ranges_graph())
    for name in ("y", "y_new", "st", "gt", "gt_f", "spikes", "spikes_2d"):
        assert ranges[name] == SPIKES, name
    assert ranges["x"] == ranges["a"] == UNKNOWN_RANGE
    assert ranges["sig"] == ValueRange(0.0, 1.0)
    assert ranges["th"] == ValueRange(-1.0, 1.0)
    assert ranges["mixed"] == ValueRange(-1.0, 1.0)
    assert ranges["diff"] == ValueRange(-1.0, 2.0)
    assert ranges["rx"] == ValueRange(0.0, np.inf)
    assert ranges["s"] == ranges["s_new"] == ValueRange(0.0, np.inf)
    assert ranges["emb"] == ValueRange(-2.0, 3.0)


def test_a_state_that_keeps_growing_is_unknown():
    g = Graph("counter")
    g.add_constant("one", np.float32(1.0))
    g.add_input("x", TensorType("f32", ("B", 1)))
    g.add_state("c", TensorType("f32", ("B", 1)))
    g.add_node(ops.Add(), ["c", "one"], "c_new")
    g.set_next("c", "c_new")
    g.add_node(ops.Add(), ["x", "c"], "out")
    g.outputs.append("out")
    ranges = guaranteed_ranges(g)
    assert ranges["c"].hi == np.inf and ranges["c"].lo == 0.0


def test_im2col_padding_adds_zero_to_the_range():
    g = Graph("patches")
    g.add_input("x", TensorType("f32", ("B", 1, 3, 3)))
    g.add_node(ops.Sigmoid(), ["x"], "p")
    g.add_node(ops.Add(), ["p", "p"], "q")  # (0, 2)
    g.add_constant("half", np.float32(0.5))
    g.add_node(ops.Add(), ["q", "half"], "r")  # (0.5, 2.5)
    g.add_node(ops.Im2Col(kernel=(3, 3), pads=(1, 1, 1, 1)), ["r"], "padded")
    g.add_node(ops.Im2Col(kernel=(3, 3)), ["r"], "unpadded")
    g.outputs += ["padded", "unpadded"]
    ranges = guaranteed_ranges(g)
    assert ranges["padded"] == ValueRange(0.0, 2.5)
    assert ranges["unpadded"] == ValueRange(0.5, 2.5)


@pytest.mark.parametrize(
    ("guaranteed", "observed", "expected"),
    [
        (SPIKES, None, (0.0, 1.0)),
        (SPIKES, (0.0, 0.0), (0.0, 1.0)),
        (UNKNOWN_RANGE, None, (-1.0, 1.0)),
        (ValueRange(0.0, 1.0), None, (0.0, 1.0)),
        (ValueRange(0.0, np.inf), None, (0.0, 1.0)),
        (ValueRange(-np.inf, 0.0), None, (-1.0, 0.0)),
        (ValueRange(3.0, np.inf), None, (3.0, 4.0)),
        (ValueRange(-2.0, 3.0), None, (-2.0, 3.0)),
        (UNKNOWN_RANGE, (-4.0, 2.5), (-4.0, 2.5)),
        (ValueRange(0.0, 1.0), (0.2, 0.7), (0.2, 0.7)),
        (ValueRange(0.0, 1.0), (-0.1, 1.3), (0.0, 1.0)),
        (UNKNOWN_RANGE, (0.75, 0.75), (0.0, 0.75)),
        (UNKNOWN_RANGE, (-0.5, -0.5), (-0.5, 0.0)),
        (UNKNOWN_RANGE, (0.0, 0.0), (0.0, 1.0)),
    ],
)
def test_dac_range_from_guarantee_and_calibration(guaranteed, observed, expected):
    assert dac_range(guaranteed, observed) == expected


# --------------------------------------------------------------------------- the pass


def sigmoid_fed_graph() -> Graph:
    """x -> tiles -> sigmoid -> tiles: a real-valued and a (0, 1) tile input."""
    rng = np.random.default_rng(3)
    g = Graph("sig")
    g.add_constant("W1", rng.standard_normal((6, 5)).astype(np.float32))
    g.add_constant("W2", rng.standard_normal((5, 3)).astype(np.float32))
    g.add_input("x", TensorType("f32", ("B", 6)))
    h, tile = tiled_dense(g, "x", "W1", "h", 0, block=(4, 4))
    g.add_node(ops.Sigmoid(), [h], "hs")
    out, _ = tiled_dense(g, "hs", "W2", "out", tile, block=(4, 4))
    g.outputs.append(out)
    return g


def mvm_ops(graph: Graph) -> dict[str, ops.CrossbarMVM]:
    return {n.id: n.op for n in graph.nodes() if n.op.NAME == "xbar.mvm"}


def test_the_pass_is_registered_and_leaves_its_input_alone():
    assert PASSES["quantize"] is Quantize is get_pass("quantize")
    graph = snu_network()
    quantized = run_pipeline(graph, TARGET, [Quantize()])
    assert all(op.adc_range == 0 for op in mvm_ops(graph).values())
    assert all(op.adc_range > 0 for op in mvm_ops(quantized).values())
    assert Quantize().run(graph, None) == Quantize().run(graph, parse_target("pcm-256x256"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        Quantize().ranges = {}  # type: ignore[misc]
    calibrated = Quantize(ranges={"x": (0, 1)}, adc={0: 2})
    assert calibrated == Quantize(ranges={"x": (0.0, 1.0)}, adc={0: 2.0}) != Quantize()
    assert hash(calibrated) == hash(Quantize())


def test_dac_ranges_follow_the_graph_guarantees():
    quantized = mvm_ops(Quantize().run(snu_network(), TARGET))
    for name, op in quantized.items():
        expected = {"ax": (-1.0, 1.0), "ah": (0.0, 1.0), "z": (0.0, 1.0)}[op.layer]
        assert op.dac == expected, name
    sig = mvm_ops(Quantize().run(sigmoid_fed_graph(), TARGET))
    assert {op.layer: op.dac for op in sig.values()} == {"h": (-1.0, 1.0), "out": (0.0, 1.0)}


@pytest.mark.parametrize("target", [TARGET, target_with(levels=8, dpp=2)])
def test_default_adc_never_clips(target):
    graph = Quantize().run(sigmoid_fed_graph(), target)
    for node in graph.nodes():
        if node.op.NAME != "xbar.mvm":
            continue
        op = node.op
        if node.inputs[1] != "W1":
            continue
        g_plus, g_minus, _ = tile_conductances(graph.constants["W1"], op.rows, op.cols, target)
        conductance = g_plus.sum(-1) - g_minus.sum(-1)
        per_column = np.abs(conductance).sum(axis=0)
        assert op.adc_range == pytest.approx(per_column.max() * 1.0)
        # The worst input drives every row with the sign of the strongest column.
        worst = np.sign(conductance[:, per_column.argmax()])
        assert np.abs(worst @ conductance).max() <= op.adc_range * (1 + 1e-12)


def test_calibration_sets_ranges_and_full_scales():
    graph = sigmoid_fed_graph()
    ranges = {"x": (-0.5, 2.0), "hs": (0.1, 0.8)}
    adc = {0: 7.5, 3: 2.25}
    tiles = mvm_ops(Quantize(ranges=ranges, adc=adc).run(graph, TARGET))
    default = mvm_ops(Quantize().run(graph, TARGET))
    for name, op in tiles.items():
        assert op.dac == ranges["x" if op.layer == "h" else "hs"]
        if op.tile in adc:
            assert op.adc_range == adc[op.tile]
        else:
            assert op.adc_range != default[name].adc_range  # the default follows the DAC
            assert op.adc_range > 0


def test_spike_inputs_stay_exact_under_any_calibration():
    tiles = mvm_ops(Quantize(ranges={"y": (0.0, 0.0)}).run(snu_network(), TARGET))
    assert all(op.dac == (0.0, 1.0) for op in tiles.values() if op.layer == "ah")


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        ({"ranges": {"nope": (0.0, 1.0)}}, ["%nope", "calibrate"]),
        ({"adc": {99: 1.0}}, ["tile 99", "calibrate"]),
        ({"ranges": {"x": (1.0, -1.0)}}, ["%x", "lo <= hi"]),
        ({"ranges": {"x": (np.nan, 1.0)}}, ["%x", "finite"]),
        ({"adc": {0: 0.0}}, ["tile 0", "> 0"]),
        ({"adc": {0: -2.0}}, ["tile 0", "> 0"]),
    ],
)
def test_bad_calibration_is_a_one_line_error(options, fragments):
    with pytest.raises(SnucError) as err:
        Quantize(**options).run(sigmoid_fed_graph(), TARGET)
    message = one_line(err)
    for fragment in fragments:
        assert fragment in message


# --------------------------------------------------------------------------- calibration


def test_calibrate_observes_inputs_states_and_currents():
    graph = snu_network()
    x = inputs(5) * 0.8
    cal = calibrate(graph, x, TARGET)
    assert isinstance(cal, Calibration) and cal.steps == x.shape[0] * x.shape[1]
    assert cal.ranges["x"] == (float(x.min()), float(x.max()))
    _, values = run(graph, x, trace=True)
    assert cal.ranges["y"] == (0.0, 1.0)
    assert cal.ranges["y_new"] == (float(values["y_new"].min()), float(values["y_new"].max()))
    for node in graph.nodes():
        if node.op.NAME != "xbar.mvm" or node.op.layer != "ax":
            continue
        op = node.op
        g_plus, g_minus, _ = tile_conductances(graph.constants["W"], op.rows, op.cols, TARGET)
        x_q = dac_quantize(x[..., op.rows[0] : op.rows[1]], *cal.ranges["x"], TARGET.dac_bits)
        peak = np.abs(x_q @ (g_plus.sum(-1) - g_minus.sum(-1))).max()
        assert cal.adc[op.tile] == pytest.approx(peak, rel=1e-12)


def test_calibrated_quantisation_is_closer_to_float_than_the_default():
    graph = snu_network()
    x = inputs(6, batch=16) * 0.5
    cal = calibrate(graph, x, TARGET)
    exact = run(graph, x, trace=True)[1]["ax"]

    def error(quantized: Graph) -> float:
        _, values = run(quantized, x, mode="quantized", target=TARGET, trace=True)
        return float(np.abs(values["ax"] - exact).mean())

    calibrated = error(Quantize(ranges=cal.ranges, adc=cal.adc).run(graph, TARGET))
    assert calibrated < 0.5 * error(Quantize().run(graph, TARGET))


def test_calibration_samples_must_fit_the_graph():
    graph = snu_network()
    with pytest.raises(SnucError) as err:
        calibrate(graph, np.zeros((4, 2, 7), np.float32), TARGET)
    message = one_line(err)
    assert "calibration samples" in message and "%x" in message
    assert "[T, B, 12]" in message and "[4, 2, 7]" in message
    with pytest.raises(SnucError) as err:
        calibrate(graph, np.zeros((0, 2, 12), np.float32), TARGET)
    assert "no timestep" in one_line(err)
