"""The interpreter's ``quantized`` and ``pcm`` modes (SPEC §6, docs/quantization.md).

Tiled graphs are built here with ``xbar.mvm`` nodes through the Graph API (row blocks
added by ``dig.add``, column blocks joined by ``dig.concat``), then quantised by the
``quantize`` pass. ``quantized`` is held to the documented per-output bound against
``float`` and to a spike agreement rate; ``pcm`` to its reproducibility contract (the seed
alone names the chip), to ``quantized`` when every noise source is off, and to the drift
compensation it promises.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snuc.ir import Graph, Loc, SnucError, TensorType, ops
from snuc.ir.crossbar import adc_quantize, dac_quantize, mvm_error_bound, tile_conductances
from snuc.ir.target import parse_target, with_overrides
from snuc.passes import get_pass, run_pipeline
from snuc.passes.quantize import Quantize
from snuc.runtime import pcm
from snuc.runtime.calibration import calibrate
from snuc.runtime.interpreter import run

F, N, OUT, T, B = 12, 20, 6, 20, 8
TARGET = parse_target("pcm-16x16")
YEAR = 365 * 86400.0
SILENT = with_overrides(TARGET, prog_noise_scale=0.0, read_noise_scale=0.0, drift_scale=0.0)


# --------------------------------------------------------------------------- building graphs


def tiled_dense(
    g: Graph, x: str, w: str, name: str, first_tile: int, block: tuple[int, int] = (8, 8)
) -> tuple[str, int]:
    """``x @ W`` as ``xbar.mvm`` tiles of at most ``block`` weight rows x columns.

    Returns the result's name and the next free tile number.
    """
    k, n = g.constants[w].shape
    tile = first_tile
    columns = []
    for c0 in range(0, n, block[1]):
        partial = None
        for r0 in range(0, k, block[0]):
            op = ops.CrossbarMVM(
                layer=name,
                tile=tile,
                rows=(r0, min(r0 + block[0], k)),
                cols=(c0, min(c0 + block[1], n)),
            )
            (y,) = g.add_node(op, [x, w], f"{name}_t{tile}", loc=Loc(f"onnx:/{name}"))
            tile += 1
            partial = y if partial is None else g.add_node(ops.Add(), [partial, y])[0]
        columns.append(partial)
    if len(columns) == 1:
        return columns[0], tile
    (out,) = g.add_node(ops.Concat(axis=-1), columns, name)
    return out, tile


def snu_network(recurrent: bool = True, seed: int = 0) -> Graph:
    """x[B, 12] -> tiled dense (+ tiled recurrent dense) -> SNU (20) -> tiled dense -> sigmoid.

    Values: ``ax`` (input part of the synaptic input), ``ah`` (recurrent part), ``a``,
    ``s_new``, ``y_new`` (spikes, an output) and ``p`` (an output).
    """
    rng = np.random.default_rng(seed)
    g = Graph("snu")
    g.add_constant("W", (rng.standard_normal((F, N)) * 0.6).astype(np.float32))
    g.add_constant("H", (rng.standard_normal((N, N)) * 0.3).astype(np.float32))
    g.add_constant("Wo", (rng.standard_normal((N, OUT)) * 0.5).astype(np.float32))
    g.add_constant("decay", np.float32(0.8))
    g.add_constant("bias", np.float32(-0.6))
    g.add_input("x", TensorType("f32", ("B", F)))
    g.add_state("s", TensorType("f32", ("B", N)))
    g.add_state("y", TensorType("f32", ("B", N)))
    a, tile = tiled_dense(g, "x", "W", "ax", 0)
    if recurrent:
        ah, tile = tiled_dense(g, "y", "H", "ah", tile)
        (a,) = g.add_node(ops.Add(), [a, ah], "a")
    s_new, y_new = g.add_node(ops.SNULayer(), [a, "s", "y", "decay", "bias"], ["s_new", "y_new"])
    g.set_next("s", s_new)
    g.set_next("y", y_new)
    z, _ = tiled_dense(g, y_new, "Wo", "z", tile)
    (p,) = g.add_node(ops.Sigmoid(), [z], "p")
    g.outputs += [y_new, p]
    return g


def one_tile(k: int = 16, n: int = 8, seed: int = 0, input_shape: tuple = ("B", 16)) -> Graph:
    """A single ``xbar.mvm`` over the whole of a random ``W[k, n]``."""
    rng = np.random.default_rng(seed)
    g = Graph("tile")
    g.add_constant("W", rng.uniform(-1, 1, (k, n)).astype(np.float32))
    g.add_input("x", TensorType("f32", input_shape))
    (y,) = g.add_node(ops.CrossbarMVM(layer="y", tile=3, rows=(0, k), cols=(0, n)), ["x", "W"], "y")
    g.outputs.append(y)
    return g


def quantize(graph: Graph, target=TARGET) -> Graph:
    return Quantize().run(graph, target)


def inputs(seed: int = 1, steps: int = T, batch: int = B, features: int = F) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (steps, batch, features)).astype(np.float32)


def spikes(seed: int = 1, shape=(T, B, 16), rate: float = 0.5) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) < rate).astype(np.float32)


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


def tile_bounds(graph: Graph, value: str, x: np.ndarray, target=TARGET) -> np.ndarray:
    """The summed :func:`mvm_error_bound` of the tiles of the layer named ``value``."""
    total = None
    for node in graph.nodes():
        if node.op.NAME != "xbar.mvm" or node.op.layer != value:
            continue
        op = node.op
        bound = mvm_error_bound(
            x, graph.constants[node.inputs[1]], op.rows, op.cols, op.dac, op.adc_range, target
        )
        if total is None:
            total = np.zeros((*bound.shape[:-1], graph.type_of(value).shape[-1]))
        total[..., op.cols[0] : op.cols[1]] += bound
    return total


# --------------------------------------------------------------------------- float stays


def test_float_mode_ignores_the_converters_and_the_mode_options():
    graph = snu_network()
    x = inputs()
    before = run(graph, x)
    after = run(quantize(graph), x, target=TARGET, seed=5, t_inference_s=1.0)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], strict=True)


# --------------------------------------------------------------------------- quantized


def test_quantized_is_deterministic():
    graph = quantize(snu_network())
    x = inputs()
    first = run(graph, x, mode="quantized", target=TARGET)
    second = run(graph, x, mode="quantized", target="pcm-16x16")
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], strict=True)


def test_quantized_tile_follows_the_equations_exactly():
    target = with_overrides(TARGET, conductance_levels=9, dac_bits=5, adc_bits=6)
    graph = quantize(one_tile(), target)
    op = next(graph.nodes()).op
    x = inputs(features=16) * 1.3  # some inputs clip at the DAC
    y = run(graph, x, mode="quantized", target=target)["y"]
    g_plus, g_minus, scale = tile_conductances(graph.constants["W"], op.rows, op.cols, target)
    current = dac_quantize(x, *op.dac, 5) @ (g_plus.sum(-1) - g_minus.sum(-1))
    expected = (adc_quantize(current, op.adc_range, 6) * scale).astype(np.float32)
    np.testing.assert_array_equal(y, expected, strict=True)


@settings(max_examples=25, deadline=None)
@given(
    k=st.integers(1, 24),
    n=st.integers(1, 10),
    levels=st.sampled_from([0, 2, 16, 255]),
    dac_bits=st.integers(2, 10),
    adc_bits=st.integers(2, 12),
    dpp=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**32 - 1),
)
def test_quantized_tile_stays_within_the_documented_bound(
    k, n, levels, dac_bits, adc_bits, dpp, seed
):
    target = with_overrides(
        TARGET,
        conductance_levels=levels,
        dac_bits=dac_bits,
        adc_bits=adc_bits,
        devices_per_polarity=dpp,
    )
    graph = quantize(one_tile(k, n, seed, ("B", k)), target)
    op = next(graph.nodes()).op
    x = inputs(seed % 1000, steps=3, batch=4, features=k)
    exact = run(graph, x)["y"].astype(np.float64)
    quantized = run(graph, x, mode="quantized", target=target)["y"].astype(np.float64)
    bound = mvm_error_bound(x, graph.constants["W"], op.rows, op.cols, op.dac, op.adc_range, target)
    magnitude = np.abs(x).astype(np.float64) @ np.abs(graph.constants["W"].astype(np.float64))
    float32_rounding = 1e-6 * (magnitude + np.abs(quantized))
    assert np.all(np.abs(quantized - exact) <= bound + float32_rounding)
    # The bound is no platitude: at 8 bits and up it is a few per cent of the scale.
    if min(dac_bits, adc_bits) >= 8 and levels in (0, 255):
        assert np.all(bound <= 0.05 * np.abs(graph.constants["W"]).sum(axis=0) + 1e-12)


def test_quantized_snu_network_is_close_to_float():
    """Documented bound on the first layer's synaptic input at every step (its input is
    the same in both modes); spikes agree at >= 95 % and readouts within 0.05 on average."""
    graph = quantize(snu_network())
    x = inputs(seed=2, batch=16)
    out_f, val_f = run(graph, x, trace=True)
    out_q, val_q = run(graph, x, mode="quantized", target=TARGET, trace=True)
    bound = tile_bounds(graph, "ax", x)
    error = np.abs(val_q["ax"].astype(np.float64) - val_f["ax"])
    assert np.all(error <= bound + 1e-5)
    assert 0.1 < out_f["y_new"].mean() < 0.9, "the test network should spike sometimes"
    assert np.mean(out_q["y_new"] == out_f["y_new"]) >= 0.95
    assert np.abs(out_q["p"] - out_f["p"]).mean() <= 0.05


def test_quantized_runs_a_convolution_tile_over_patches():
    rng = np.random.default_rng(4)
    g = Graph("conv")
    g.add_constant("K", rng.uniform(-1, 1, (18, 4)).astype(np.float32))
    g.add_input("x", TensorType("f32", ("B", 2, 5, 5)))
    (patches,) = g.add_node(ops.Im2Col(kernel=(3, 3), pads=(1, 1, 1, 1)), ["x"], "patches")
    (y,) = g.add_node(ops.CrossbarMVM(layer="c", tile=0, rows=(0, 18), cols=(0, 4)), [patches, "K"])
    g.outputs.append(y)
    graph = quantize(g)
    x = rng.uniform(-1, 1, (3, 2, 2, 5, 5)).astype(np.float32)
    exact = run(graph, x)[y]
    quantized = run(graph, x, mode="quantized", target=TARGET)[y]
    assert quantized.shape == exact.shape == (3, 2, 5, 5, 4)
    noisy = run(graph, x, mode="pcm", target=TARGET)[y]
    assert noisy.shape == exact.shape
    assert np.abs(quantized - exact).max() < 0.05 * np.abs(exact).max()


def conv_snu_network() -> Graph:
    """Conv (2 -> 4 channels, 5 x 5) -> SNU -> flatten -> dense 100 -> 30, untiled."""
    rng = np.random.default_rng(5)
    g = Graph("csnu")
    g.add_constant("K", rng.uniform(-1, 1, (4, 2, 3, 3)).astype(np.float32))
    g.add_constant("W", rng.uniform(-0.3, 0.3, (100, 30)).astype(np.float32))
    g.add_constant("decay", np.float32(0.8))
    g.add_constant("bias", np.float32(-0.5))
    g.add_input("x", TensorType("f32", ("B", 2, 5, 5)))
    g.add_state("s", TensorType("f32", ("B", 4, 5, 5)))
    g.add_state("y", TensorType("f32", ("B", 4, 5, 5)))
    g.add_node(ops.Conv(pads=(1, 1, 1, 1)), ["x", "K"], "c")
    g.add_node(ops.SNULayer(), ["c", "s", "y", "decay", "bias"], ["s_new", "y_new"])
    g.set_next("s", "s_new")
    g.set_next("y", "y_new")
    g.add_node(ops.Reshape(shape=("B", 100)), ["y_new"], "flat")
    g.add_node(ops.Dense(), ["flat", "W"], "out")
    g.outputs.append("out")
    return g


def test_the_mapping_pipeline_with_calibration_runs_in_every_mode():
    target = parse_target("pcm-32x32")
    mapping = [get_pass(name)() for name in ("lower-conv", "tile", "place")]
    mapped = run_pipeline(conv_snu_network(), target, mapping)
    x = np.random.default_rng(6).uniform(-1, 1, (6, 3, 2, 5, 5)).astype(np.float32)
    cal = calibrate(mapped, x, target)
    graph = run_pipeline(mapped, target, [Quantize(ranges=cal.ranges, adc=cal.adc)])
    _, exact = run(graph, x, trace=True)
    _, quantized = run(graph, x, mode="quantized", target=target, trace=True)
    noisy = run(graph, x, mode="pcm", target=target)
    assert noisy["out"].shape == quantized["out"].shape == (6, 3, 30)
    checked = 0
    for node in graph.nodes():
        op, x_name = node.op, node.inputs[0]
        if op.NAME != "xbar.mvm" or not np.array_equal(exact[x_name], quantized[x_name]):
            continue
        bound = mvm_error_bound(
            exact[x_name],
            graph.constants[node.inputs[1]],
            op.rows,
            op.cols,
            op.dac,
            op.adc_range,
            target,
        )
        error = np.abs(quantized[node.id].astype(np.float64) - exact[node.id])
        assert np.all(error <= bound + 1e-5)
        checked += 1
    assert checked >= 1, "the convolution's tile reads the same patches in both modes"


# --------------------------------------------------------------------------- pcm


def test_pcm_is_reproducible_for_a_seed_and_differs_between_seeds():
    graph = quantize(snu_network())
    x = inputs()
    first = run(graph, x, mode="pcm", target=TARGET, seed=7)
    again = run(graph, x, mode="pcm", target=TARGET, seed=7)
    other = run(graph, x, mode="pcm", target=TARGET, seed=8)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name], strict=True)
    assert not np.array_equal(first["p"], other["p"])


def test_pcm_with_every_noise_source_off_is_quantized():
    graph = quantize(snu_network(), SILENT)
    x = inputs()
    quantized = run(graph, x, mode="quantized", target=SILENT)
    for compensation in ("global", "column", None):
        noiseless = run(
            graph, x, mode="pcm", target=SILENT, t_inference_s=YEAR, drift_compensation=compensation
        )
        for name in quantized:
            np.testing.assert_array_equal(noiseless[name], quantized[name], strict=True)


def test_one_seed_programs_one_chip_at_every_inference_time():
    """Programming noise alone: a second and a year after programming read the same."""
    target = with_overrides(TARGET, read_noise_scale=0.0, drift_scale=0.0)
    graph = quantize(snu_network(), target)
    x = inputs()
    second = run(graph, x, mode="pcm", target=target, seed=3, t_inference_s=1.0)
    year = run(graph, x, mode="pcm", target=target, seed=3, t_inference_s=YEAR)
    quantized = run(graph, x, mode="quantized", target=target)
    np.testing.assert_array_equal(second["p"], year["p"], strict=True)
    assert not np.array_equal(second["p"], quantized["p"])


def test_read_noise_is_one_block_per_tile_drawn_from_the_seed_and_tile():
    """The run's noisy tile equals the documented formula with ``read_noise_block``."""
    target = with_overrides(TARGET, prog_noise_scale=0.0, drift_scale=0.0)
    graph = quantize(one_tile(), target)
    node = next(graph.nodes())
    op = node.op
    x = spikes()
    y = run(graph, x, mode="pcm", target=target, seed=11, t_inference_s=60.0)["y"]

    g_plus, g_minus, scale = tile_conductances(graph.constants["W"], op.rows, op.cols, target)
    drifted = pcm.program_array(g_plus, g_minus, target, seed=11, tile=op.tile).at(60.0)
    block = pcm.read_noise_block(11, op.tile, (T, B, 8))
    x_q = dac_quantize(x, *op.dac, target.dac_bits)
    expected = np.stack(
        [
            (adc_quantize(drifted.mvm(x_q[t], noise=block[t]), op.adc_range, 8) * scale).astype(
                np.float32
            )
            for t in range(T)
        ]
    )
    np.testing.assert_array_equal(y, expected, strict=True)
    quiet = run(graph, x, mode="quantized", target=target)["y"]
    assert not np.array_equal(y, quiet)


def test_pcm_outputs_depend_on_the_time_of_inference():
    graph = quantize(snu_network())
    x = inputs()
    second = run(graph, x, mode="pcm", target=TARGET, seed=1, t_inference_s=1.0)
    year = run(graph, x, mode="pcm", target=TARGET, seed=1, t_inference_s=YEAR)
    assert not np.array_equal(second["p"], year["p"])


def mean_magnitude(graph: Graph, x: np.ndarray, **options) -> float:
    return float(np.abs(run(graph, x, mode="pcm", target=TARGET, seed=2, **options)["y"]).mean())


def test_global_drift_compensation_restores_the_output_magnitude():
    graph = quantize(one_tile(32, 8, input_shape=("B", 32)))
    x = spikes(shape=(T, B, 32))
    fresh = mean_magnitude(graph, x, t_inference_s=0.0)
    uncompensated = mean_magnitude(graph, x, t_inference_s=YEAR, drift_compensation=None)
    compensated = mean_magnitude(graph, x, t_inference_s=YEAR)
    assert uncompensated < 0.75 * fresh
    assert compensated == pytest.approx(fresh, rel=0.05)
    # Right after programming there is nothing to compensate.
    at_zero = run(graph, x, mode="pcm", target=TARGET, seed=2, t_inference_s=0.0)["y"]
    at_zero_off = run(
        graph, x, mode="pcm", target=TARGET, seed=2, t_inference_s=0.0, drift_compensation=None
    )["y"]
    np.testing.assert_array_equal(at_zero, at_zero_off, strict=True)


def test_column_drift_compensation_restores_each_column():
    graph = quantize(one_tile(32, 8, input_shape=("B", 32)))
    x = spikes(shape=(T, B, 32))

    def column_means(**options):
        y = run(graph, x, mode="pcm", target=TARGET, seed=2, **options)["y"]
        return np.abs(y).mean(axis=(0, 1))

    fresh = column_means(t_inference_s=0.0)
    column = column_means(t_inference_s=YEAR, drift_compensation="column")
    off = column_means(t_inference_s=YEAR, drift_compensation=None)
    assert np.all(off < 0.8 * fresh)
    # Each column is read back near its fresh magnitude; the factors come from reads of
    # single rows, so a column of mixed signs keeps some drift of its own.
    assert np.all(np.abs(column - fresh) < np.abs(off - fresh))
    assert np.mean(np.abs(column / fresh - 1)) < 0.1


def test_trace_works_in_every_mode():
    graph = quantize(snu_network())
    x = inputs(steps=3)
    for mode in ("quantized", "pcm"):
        outputs, values = run(graph, x, mode=mode, target=TARGET, trace=True)
        np.testing.assert_array_equal(values["p"], outputs["p"])
        assert values["ax"].shape == (3, B, N)


# --------------------------------------------------------------------------- errors


def test_a_graph_without_adc_ranges_needs_the_quantize_pass():
    for mode in ("quantized", "pcm"):
        with pytest.raises(SnucError) as err:
            run(snu_network(), inputs(), mode=mode, target=TARGET)
        message = one_line(err)
        assert "%ax_t0" in message and "tile 0" in message and "quantize pass" in message


def test_an_untiled_crossbar_op_is_an_error():
    g = Graph("dense")
    g.add_constant("W", np.ones((F, 3), np.float32))
    g.add_input("x", TensorType("f32", ("B", F)))
    (y,) = g.add_node(ops.Dense(), ["x", "W"], "y", loc=Loc("onnx:/fc/MatMul"))
    g.outputs.append(y)
    with pytest.raises(SnucError) as err:
        run(g, inputs(), mode="pcm", target=TARGET)
    message = one_line(err)
    assert "xbar.dense %y" in message and "onnx:/fc/MatMul" in message and "tile" in message


@pytest.mark.parametrize("mode", ["quantized", "pcm"])
def test_the_quantised_modes_need_a_target(mode):
    with pytest.raises(SnucError) as err:
        run(quantize(snu_network()), inputs(), mode=mode)
    message = one_line(err)
    assert repr(mode) in message and "target" in message


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"drift_compensation": "local"}, "drift_compensation 'local'"),
        ({"t_inference_s": -1.0}, "t_inference_s"),
        ({"t_inference_s": float("nan")}, "t_inference_s"),
        ({"seed": -1}, "seed -1"),
        ({"seed": 1.5}, "seed 1.5"),
        ({"target": "pcm-3x3"}, "pcm-3x3"),
        ({"target": 42}, "42"),
    ],
)
def test_bad_pcm_options_are_one_line_errors(options, fragment):
    settings_ = {"mode": "pcm", "target": TARGET, **options}
    with pytest.raises(SnucError) as err:
        run(quantize(snu_network()), inputs(), **settings_)
    assert fragment in one_line(err)


def test_tile_numbers_must_be_unique():
    g = Graph("twice")
    g.add_constant("W", np.ones((4, 2), np.float32))
    g.add_input("x", TensorType("f32", ("B", 4)))
    (a,) = g.add_node(ops.CrossbarMVM(tile=1, rows=(0, 4), cols=(0, 1)), ["x", "W"], "a")
    (b,) = g.add_node(ops.CrossbarMVM(tile=1, rows=(0, 4), cols=(1, 2)), ["x", "W"], "b")
    g.outputs += [a, b]
    with pytest.raises(SnucError) as err:
        run(quantize(g), inputs(features=4), mode="pcm", target=TARGET)
    assert "tile 1" in one_line(err)
