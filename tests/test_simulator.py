"""The cycle-level simulator backend (``snuc.runtime.simulator``, ``--backend sim``).

SPEC §6: the simulator computes what the NumPy backend computes (``|Δ| <= 1e-5``, spikes
identical) for the same artefact, input, mode, seed and batch size: on the example model
and on hand-built ONNX models compiled for a small target (row- and column-split tiles,
partial sums, transfers between cores and chips), in all three modes. SPEC §7: its
measured cycles per timestep are the schedule's ``ii``; its energy follows activity (a
fully driven 256 x 256 MVM is 13.4 nJ, rows without a spike cost nothing); its spikes per
layer are the interpreter's. Bad programs are one-line errors, also through the CLI.
No timings: speed is measured by ``bench/simulator.py``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_models as om
import pytest
from cli_helpers import run_cli
from equivalence import assert_same  # tests/ is on sys.path under pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import snuc
from snuc import driver
from snuc.backends.program import compile_program
from snuc.ir import Graph, ParseError, SnucError, TensorType, ops
from snuc.ir.target import TargetSpec, parse_target
from snuc.runtime.artefact import Artefact
from snuc.runtime.interpreter import run as interpret
from snuc.runtime.numpy_backend import run_numpy
from snuc.runtime.simulator import SimPlan, SimStats, SimulationError, format_stats, run_sim

MODES = ("float", "quantized", "pcm")
SMALL = "pcm-16x16"  # small crossbars: layers split into row and column tiles
TARGET = parse_target(SMALL)
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "snu_small.onnx"


# --------------------------------------------------------------------------- helpers


def check_modes(graph: Graph, x, target=TARGET, modes=MODES, **options) -> SimStats:
    """The simulator equals the NumPy backend on ``x`` in every mode; the last stats."""
    program = compile_program(graph, target)
    for mode in modes:
        want = run_numpy(graph, x, mode=mode, target=target, **options)
        got, stats = run_sim(graph, x, mode=mode, target=target, program=program, **options)
        assert_same(want, got)
    return stats


def compiled(model: onnx.ModelProto, tmp_path: Path, target=SMALL, **options) -> Graph:
    path = tmp_path / f"{model.graph.name}.onnx"
    onnx.save(model, path)
    return driver.compile_model(path, target, **options).graph


def spikes(shape, rate: float = 0.4, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) < rate).astype(np.float32)


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


@pytest.fixture(scope="module")
def example() -> Artefact:
    return snuc.compile(EXAMPLE)


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("inputs", ["spikes", "real"])
def test_the_example_model_equals_the_numpy_backend(example, mode, inputs):
    rng = np.random.default_rng(1)
    if inputs == "spikes":
        x = spikes((17, 3, 32), seed=1)
    else:
        x = rng.uniform(-1.3, 1.3, (17, 3, 32)).astype(np.float32)
    want = example.run(x, backend="numpy", mode=mode, seed=4)
    got = example.run(x, backend="sim", mode=mode, seed=4)
    assert_same({"Y": want}, {"Y": got})


ONNX_MODELS = {
    "feed_forward": (lambda: om.snu_scan_model((6, 20, 9)), (6,)),
    "recurrent": (lambda: om.snu_scan_model((6, 20), recurrent=True), (6,)),
    "soft_identity_per_neuron": (
        lambda: om.snu_scan_model((6, 20, 7), h="sigmoid", g="identity", decay_per_neuron=True),
        (6,),
    ),
    "step_form_recurrent": (lambda: om.snu_step_model(6, 18, recurrent=True), (6,)),
    "conv_max": (lambda: om.conv_snu_scan_model(), (2, 6, 6)),
    "conv_avg_step_form": (lambda: om.conv_snu_step_model(pool="avg"), (2, 6, 6)),
    "two_scans": (lambda: om.two_scan_model((6, 20, 9)), (6,)),
    "gemm_where_swapped": (
        lambda: om.snu_scan_model((6, 12), gemm_transb=True, step="where", operand_order="swapped"),
        (6,),
    ),
    "states_as_outputs": (
        lambda: om.snu_scan_model((6, 12), final_states_as_outputs=True),
        (6,),
    ),
}


@pytest.mark.parametrize("name", sorted(ONNX_MODELS))
def test_hand_built_onnx_models_equal_the_numpy_backend(name, tmp_path):
    make, features = ONNX_MODELS[name]
    graph = compiled(make(), tmp_path)
    check_modes(graph, spikes((13, 3, *features), seed=3))


def test_nan_and_out_of_range_inputs_are_the_numpy_backends(example):
    """A NaN input leaves NaN in the first layer's state (its spikes stay 0)."""
    x = np.random.default_rng(2).uniform(-3, 3, (8, 2, 32)).astype(np.float32)
    x[2, 0, 5] = np.nan
    x[4, 1, 7] = np.inf
    for mode in MODES:
        want = example.run(x, backend="numpy", mode=mode)
        got = example.run(x, backend="sim", mode=mode)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("low", [-0.3, 0.2])
def test_calibrated_ranges_that_clip_are_the_numpy_backends(low):
    """Calibrated on small inputs, the DAC and ADC ranges clip larger ones; positive
    samples give the DAC a grid that does not start at zero."""
    rng = np.random.default_rng(0)
    calibration = rng.uniform(low, 0.4, (10, 4, 32)).astype(np.float32)
    art = snuc.compile(EXAMPLE, calibrate=calibration)
    x = rng.uniform(-1, 1, (10, 3, 32)).astype(np.float32)
    for mode in MODES:
        want = art.run(x, backend="numpy", mode=mode)
        assert_same({"Y": want}, {"Y": art.run(x, backend="sim", mode=mode)})


def test_conductance_levels_two_devices_per_polarity_and_few_bits(tmp_path):
    toml = tmp_path / "chip.toml"
    toml.write_text(
        'base = "pcm-16x16"\nconductance_levels = 16\ndevices_per_polarity = 2\n'
        "dac_bits = 4\nadc_bits = 6\n"
    )
    target = parse_target(toml)
    graph = compiled(om.snu_scan_model((6, 20, 9), recurrent=True), tmp_path, target=target)
    check_modes(graph, spikes((12, 3, 6), seed=8), target=target)


def test_token_id_embeddings_run_on_the_global_unit(tmp_path):
    graph = compiled(om.embedding_snu_scan_model(inside=True), tmp_path)
    ids = np.random.default_rng(4).integers(0, 10, (15, 3), dtype=np.int32)
    check_modes(graph, ids)


def test_a_stateless_dense_model_on_real_inputs(tmp_path):
    graph = compiled(om.dense_model(n_in=20, n_out=18), tmp_path)
    x = np.random.default_rng(5).standard_normal((9, 4, 20)).astype(np.float32)
    check_modes(graph, x)


def test_tiles_on_several_chips_talk_over_chip_links(tmp_path):
    """Four cores per chip: the layers spread over chips, partial sums cross chip links."""
    toml = tmp_path / "chip.toml"
    toml.write_text('base = "pcm-16x16"\ncores = 4\n')
    path = tmp_path / "rnn.onnx"
    onnx.save(om.snu_scan_model((6, 20, 9), recurrent=True), path)
    art = driver.compile_model(path, parse_target(toml), chips=4)
    assert art.report["chips"] > 1
    stats = check_modes(
        art.graph, spikes((11, 2, 6), seed=6), target=TargetSpec.from_dict(art.target)
    )
    assert stats.component_energy_pj("chip_link") > 0
    assert stats.component_energy_pj("noc") > 0


def test_messages_in_flight_for_many_timesteps(tmp_path):
    """Slow chip links and fast MVMs: a transfer takes many timesteps, so its source is
    overwritten before its data arrives and the message must be held in flight."""
    toml = tmp_path / "chip.toml"
    toml.write_text('base = "pcm-16x16"\ncores = 2\nmvm_cycles = 8\nchip_link_cycles = 200\n')
    path = tmp_path / "ff.onnx"
    onnx.save(om.snu_scan_model((6, 20, 9)), path)
    art = driver.compile_model(path, parse_target(toml), chips=8)
    stats = check_modes(
        art.graph, spikes((25, 2, 6), seed=6), target=TargetSpec.from_dict(art.target)
    )
    assert stats.latency_cycles > 10 * stats.cycles_per_timestep


def test_pcm_options_and_batch_chunks_are_the_numpy_backends(tmp_path):
    graph = compiled(om.snu_scan_model((6, 20), recurrent=True), tmp_path)
    x = spikes((12, 5, 6), seed=7)
    for options in (
        {"seed": 7, "t_inference_s": 86400.0},
        {"drift_compensation": "column"},
        {"drift_compensation": None, "t_inference_s": 0.0},
        {"batch_size": 2},
    ):
        check_modes(graph, x, modes=("pcm",), **options)


def _ir_stack() -> Graph:
    """Two dense SNU layers, the second recurrent, built in the IR, and a delayed input
    added to a constant as a second output (a state of an input, a constant operand)."""
    rng = np.random.default_rng(0)
    g = Graph("ir_stack")
    x = g.add_input("x", TensorType("f32", ("B", 6)))
    h = x
    for i, (n_in, n, recurrent) in enumerate([(6, 20, False), (20, 12, True)]):
        g.add_constant(f"W{i}", (rng.standard_normal((n_in, n)) * 0.8).astype(np.float32))
        g.add_constant(f"decay{i}", np.float32(0.8))
        g.add_constant(f"bias{i}", (rng.standard_normal(n) * 0.2 - 0.4).astype(np.float32))
        s = g.add_state(f"s{i}", TensorType("f32", ("B", n)))
        y = g.add_state(f"y{i}", TensorType("f32", ("B", n)))
        (a,) = g.add_node(ops.Dense(), [h, f"W{i}"], f"a{i}")
        if recurrent:
            g.add_constant(f"H{i}", (rng.standard_normal((n, n)) * 0.4).astype(np.float32))
            (r,) = g.add_node(ops.Dense(), [y, f"H{i}"], f"r{i}")
            (a,) = g.add_node(ops.Add(), [a, r], f"ar{i}")
        s_next, h = g.add_node(
            ops.SNULayer(), [a, s, y, f"decay{i}", f"bias{i}"], [f"sn{i}", f"yn{i}"]
        )
        g.set_next(s, s_next)
        g.set_next(y, h)
    delayed = g.add_state("delayed", TensorType("f32", ("B", 6)))
    g.set_next(delayed, x)
    g.add_constant("k", np.arange(6, dtype=np.float32))
    (z,) = g.add_node(ops.Add(), [delayed, "k"], "z")
    g.outputs += [h, z, delayed]
    return driver.lower(g, TARGET)


def test_states_of_constants_and_loops_of_states():
    """A state holding a constant (zeros, then the constant) and two states that hold
    each other (zeros for ever), both also outputs."""
    g = Graph("odd_states")
    x = g.add_input("x", TensorType("f32", ("B", 4)))
    g.add_constant("k", np.arange(4, dtype=np.float32))
    c = g.add_state("c", TensorType("f32", (4,)))
    g.set_next(c, "k")
    a = g.add_state("a", TensorType("f32", ("B", 4)))
    b = g.add_state("b", TensorType("f32", ("B", 4)))
    g.set_next(a, b)
    g.set_next(b, a)
    (y,) = g.add_node(ops.Add(), [x, c], "y")
    (z,) = g.add_node(ops.Add(), [y, a], "z")
    g.outputs += [z, c, a]
    x = np.random.default_rng(9).standard_normal((5, 2, 4)).astype(np.float32)
    check_modes(driver.lower(g, TARGET), x)


@settings(max_examples=10, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 20), min_size=2, max_size=4),
    flags=st.lists(st.booleans(), min_size=6, max_size=6),
    steps=st.integers(1, 9),
    batch=st.integers(1, 3),
    mode=st.sampled_from(MODES),
    seed=st.integers(0, 1000),
)
def test_random_snu_stacks_equal_the_numpy_backend(sizes, flags, steps, batch, mode, seed):
    """Stacks of (recurrent, spiking or soft) SNU layers from the ONNX builders."""
    layers = len(sizes) - 1
    model = om.snu_scan_model(
        tuple(sizes),
        seed=seed,
        recurrent=flags[0],
        h="sigmoid" if flags[1] else "step",
        g="identity" if flags[2] else "relu",
        decay_per_neuron=flags[3],
    )
    with tempfile.TemporaryDirectory() as tmp:
        graph = compiled(model, Path(tmp))
    x = spikes((steps, batch, sizes[0]), rate=0.5, seed=seed + layers)
    check_modes(graph, x, modes=(mode,), seed=seed)


@pytest.mark.parametrize("steps", [1, 2, 3, 20])
def test_short_and_long_sequences_of_an_ir_graph(steps):
    check_modes(_ir_stack(), spikes((steps, 2, 6), seed=8))


def test_an_empty_sequence_runs_no_timestep():
    got, stats = run_sim(_ir_stack(), np.zeros((0, 2, 6), np.float32), target=TARGET)
    assert all(v.shape[:2] == (0, 2) for v in got.values())
    assert stats.total_cycles == 0 and stats.energy_pj == 0


def test_a_plan_serves_many_runs_and_keeps_their_stats():
    graph = _ir_stack()
    plan = SimPlan.build(graph, mode="pcm", target=TARGET, seed=2)
    assert plan.last_stats is None
    short, long = spikes((5, 2, 6), seed=9), spikes((23, 4, 6), seed=10)
    first = plan.run(short)
    assert plan.last_stats.timesteps == 5 and plan.last_stats.sequences == 2
    assert_same(run_numpy(graph, long, mode="pcm", target=TARGET, seed=2), plan.run(long))
    assert plan.last_stats.timesteps == 23 and plan.last_stats.sequences == 4
    again = plan.run(short, progress=True)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])


# --------------------------------------------------------------------------- cycles


def test_measured_cycles_per_timestep_are_the_schedules_ii(example):
    x = spikes((9, 3, 32), seed=11)
    example.run(x, backend="sim", mode="quantized")
    stats = example.last_stats
    report = example.report
    assert stats.cycles_per_timestep == report["cycles_per_timestep"]
    assert stats.latency_cycles == report["latency_cycles"]
    ii, latency = report["cycles_per_timestep"], report["latency_cycles"]
    assert latency > ii  # several timesteps in flight at once
    assert stats.total_cycles == (3 * 9 - 1) * ii + latency
    assert stats.time_s == pytest.approx(stats.total_cycles * 1e-9)


def test_cycles_of_a_pipelined_multi_tile_program(tmp_path):
    graph = compiled(om.snu_scan_model((6, 20, 9), recurrent=True), tmp_path)
    program = compile_program(graph, TARGET)
    _, stats = run_sim(graph, spikes((6, 1, 6)), target=TARGET, program=program)
    assert stats.cycles_per_timestep == program.ii
    assert stats.latency_cycles == program.latency_cycles
    assert stats.total_cycles == 5 * program.ii + program.latency_cycles


def test_a_program_that_breaks_its_timing_is_an_internal_error(example):
    """An ADC read-out moved before its MVM is done: the timing check refuses it."""
    lines = example.program.splitlines()
    (at,) = [i for i, line in enumerate(lines) if "adc %linear = $linear" in line]
    start = lines[at].split(":")[0]
    lines[at] = lines[at].replace(f"{start}:", "   200:", 1)  # its mvm runs 133 .. 266
    with pytest.raises(SimulationError, match="reads \\$linear"):
        SimPlan.build(example.graph, mode="float", program="\n".join(lines))


def test_two_mvms_on_one_crossbar_at_once_are_refused(example):
    lines = example.program.splitlines()
    (at,) = [i for i, line in enumerate(lines) if "mvm $linear_1 =" in line]
    start = lines[at].split(":")[0]
    lines[at] = lines[at].replace(f"{start}:", "   140:", 1)
    with pytest.raises(SimulationError, match="both hold xbar 0"):
        SimPlan.build(example.graph, program="\n".join(lines))


# --------------------------------------------------------------------------- energy


def _dense_256() -> Graph:
    """One 256 x 128 weight: a single tile filling a 256 x 256 crossbar."""
    g = Graph("dense256")
    x = g.add_input("x", TensorType("f32", ("B", 256)))
    rng = np.random.default_rng(0)
    g.add_constant("W", (rng.standard_normal((256, 128)) / 16).astype(np.float32))
    (y,) = g.add_node(ops.Dense(), [x, "W"], "y")
    g.outputs += [y]
    return g


def test_a_fully_driven_256x256_mvm_costs_13_4_nJ():
    target = parse_target("pcm-256x256")
    graph = driver.lower(_dense_256(), target)
    x = np.ones((4, 2, 256), np.float32)
    _, stats = run_sim(graph, x, mode="quantized", target=target)
    assert stats.row_activity == 1.0
    per_timestep = stats.component_energy_pj("crossbar") / (4 * 2)
    assert per_timestep == pytest.approx(13400.0)
    # Fully active, the energy is the schedule's static estimate.
    program = compile_program(graph, target)
    assert stats.energy_pj_per_timestep == pytest.approx(program.energy_pj_per_timestep()["total"])


def test_rows_without_input_cost_nothing_and_phases_multiply(tmp_path):
    graph = driver.lower(_dense_256(), parse_target("pcm-256x256"))
    x = spikes((6, 3, 256), rate=0.3, seed=12)
    per_row = 13400.0 / 256
    _, stats = run_sim(graph, x, mode="pcm", target="pcm-256x256")
    assert stats.rows_driven == np.count_nonzero(x)
    assert stats.component_energy_pj("crossbar") == pytest.approx(np.count_nonzero(x) * per_row)
    toml = tmp_path / "phases.toml"
    toml.write_text('base = "pcm-256x256"\ninput_phases = 4\n')
    four = parse_target(toml)
    _, stats4 = run_sim(driver.lower(_dense_256(), four), x, mode="quantized", target=four)
    assert stats4.component_energy_pj("crossbar") == pytest.approx(
        4 * stats.component_energy_pj("crossbar")
    )


def test_energy_falls_with_spike_activity(example):
    dense, sparse = spikes((20, 2, 32), rate=0.9, seed=13), spikes((20, 2, 32), rate=0.1, seed=13)
    energies = {}
    for name, x in (("dense", dense), ("sparse", sparse)):
        example.run(x, backend="sim", mode="pcm")
        energies[name] = example.last_stats
    dense_stats, sparse_stats = energies["dense"], energies["sparse"]
    assert sparse_stats.component_energy_pj("crossbar") < dense_stats.component_energy_pj(
        "crossbar"
    )
    assert sparse_stats.energy_pj_per_timestep < dense_stats.energy_pj_per_timestep
    for component in ("adc", "ldu", "gdu", "noc", "chip_link"):  # not data dependent
        assert sparse_stats.component_energy_pj(component) == pytest.approx(
            dense_stats.component_energy_pj(component)
        )


def test_the_energy_table_adds_up(example):
    example.run(spikes((10, 2, 32), seed=14), backend="sim", mode="float")
    stats = example.last_stats
    data = json.loads(json.dumps(stats.to_dict()))
    assert [row["component"] for row in data["energy"]] == [
        "crossbar",
        "adc",
        "ldu",
        "gdu",
        "noc",
        "chip_link",
    ]
    assert sum(row["energy_pj"] for row in data["energy"]) == pytest.approx(data["energy_pj"])
    assert sum(row["share"] for row in data["energy"]) == pytest.approx(1.0)
    assert data["energy_pj_per_inference"] == pytest.approx(data["energy_pj"] / 2)
    assert data["energy_pj_per_timestep"] == pytest.approx(data["energy_pj"] / 20)
    text = format_stats(stats)
    for needle in ("cycles per timestep", "crossbar MVM", "ADC read-out", "LDU ops", "NoC"):
        assert needle in text


# --------------------------------------------------------------------------- spikes


@pytest.mark.parametrize("mode", MODES)
def test_spikes_per_layer_are_the_interpreters(tmp_path, mode):
    graph = compiled(om.snu_scan_model((6, 20, 9), recurrent=True), tmp_path)
    x = spikes((14, 3, 6), seed=15)
    _, trace = interpret(graph, x, mode=mode, target=TARGET, trace=True)
    _, stats = run_sim(graph, x, mode=mode, target=TARGET)
    assert len(stats.spikes) == 2
    for layer in stats.spikes:
        assert layer.spikes == int(trace[layer.value].sum())
        assert layer.slots == trace[layer.value].size
        assert layer.neurons == trace[layer.value][0, 0].size


# --------------------------------------------------------------------------- errors


def test_malformed_assembly_is_a_one_line_parse_error(example):
    text = example.program.replace("mvm $linear =", "mvm $linear ==", 1)
    with pytest.raises(ParseError) as err:
        SimPlan.build(example.graph, program=text)
    assert "program.s" in one_line(err) and "line" in one_line(err)


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ("{tile = 2, rows = 48", "{tile = 9, rows = 48", "tile 9"),
        ("  core 0 {", "  core 99 {", "core 99"),
    ],
)
def test_programs_using_missing_tiles_or_cores_are_one_line_errors(example, old, new, needle):
    assert old in example.program
    with pytest.raises(ParseError) as err:
        SimPlan.build(example.graph, program=example.program.replace(old, new, 1))
    assert needle in one_line(err)


def test_a_program_of_another_graph_is_a_one_line_error(tmp_path, example):
    other = compiled(om.snu_scan_model((32, 10)), tmp_path, target="pcm-256x256")
    with pytest.raises(SnucError) as err:
        SimPlan.build(other, program=example.program)
    assert "use the artefact's own program" in one_line(err)


def test_a_program_for_another_target_is_a_one_line_error(example):
    with pytest.raises(SnucError) as err:
        SimPlan.build(
            example.graph, mode="quantized", target="pcm-512x512", program=example.program
        )
    assert "pcm-512x512" in one_line(err)


def test_a_graph_without_a_program_is_scheduled_here(example):
    x = spikes((7, 2, 32), seed=16)
    with_program = run_sim(example.graph, x, target="pcm-256x256", program=example.program)
    without = run_sim(example.graph, x, target="pcm-256x256")
    assert_same(with_program[0], without[0])
    assert with_program[1] == without[1]


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def saved(tmp_path, example) -> tuple[Path, Path]:
    art = tmp_path / "small.snuc"
    example.save(art)
    x = tmp_path / "x.npy"
    np.save(x, spikes((12, 3, 32), seed=17))
    return art, x


def test_snuc_run_with_the_simulator_prints_its_stats(saved, capsys):
    art, x = saved
    status, _, err = run_cli(capsys, "run", art, "--input", x, "--backend", "sim", "--mode", "pcm")
    assert status == 0, err
    got = np.load(x.with_name("x.out.npy"))
    want = snuc.load(art).run(np.load(x), backend="numpy", mode="pcm")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    for needle in ("cycles per timestep  532", "crossbar MVM", "spiking layer", "layers.0.y"):
        assert needle in err, err


def test_snuc_run_with_a_bad_program_exits_2_with_one_line(tmp_path, example, capsys):
    bad = Artefact(
        graph=example.graph,
        target=example.target,
        report=example.report,
        program=example.program.replace("{tile = 2, rows = 48", "{tile = 9, rows = 48", 1),
    )
    path = tmp_path / "bad.snuc"
    bad.save(path)
    x = tmp_path / "x.npy"
    np.save(x, spikes((4, 1, 32)))
    status, _, err = run_cli(capsys, "run", path, "--input", x, "--backend", "sim")
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snuc: error: ")
    assert "program.s is not what graph.ir compiles to" in lines[0]  # refused on load
    assert not x.with_name("x.out.npy").exists()
