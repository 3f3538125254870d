"""The NumPy backend (``snuc.runtime.numpy_backend``) against the reference interpreter.

SPEC §6: the backends give the same outputs for the same graph, input, mode, seed and
batch size (``|Δ| <= 1e-5``; spikes identical). Every test here runs the interpreter and
the backend on the same compiled graph: networks from the PyTorch frontend, hand-built
ONNX models (``tests/onnx_models.py``) and IR graphs built for the schedule's corner
cases (delays, state chains, values without a batch axis), in all three modes. Also:
the schedule's structure, time blocks, batch chunks, plan reuse and input errors.
No timings: performance is measured by ``bench/runtime.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_models as om  # tests/ is on sys.path under pytest (no __init__.py)
import pytest
from equivalence import assert_same  # tests/ is on sys.path under pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snuc import driver
from snuc.ir import Graph, SnucError, TensorType, ops
from snuc.ir.target import parse_target
from snuc.runtime import numpy_backend, read_noise
from snuc.runtime.interpreter import run
from snuc.runtime.numpy_backend import Plan, run_numpy
from snuc.runtime.plan_schedule import Loop, Parallel, PerStep, Shift, schedule

MODES = ("float", "quantized", "pcm")
SMALL = "pcm-16x16"  # small crossbars: layers split into row and column tiles
TARGET = parse_target(SMALL)


# --------------------------------------------------------------------------- helpers


def check_modes(graph: Graph, x, modes=MODES, target=TARGET, **options) -> None:
    """The backend equals the interpreter on ``x`` in every mode of ``modes``."""
    for mode in modes:
        want = run(graph, x, mode=mode, target=target, **options)
        got = run_numpy(graph, x, mode=mode, target=target, **options)
        assert_same(want, got)


def compiled(model: onnx.ModelProto, tmp_path: Path, target: str = SMALL) -> Graph:
    path = tmp_path / f"{model.graph.name}.onnx"
    onnx.save(model, path)
    return driver.compile_model(path, target).graph


def spikes(shape, rate: float = 0.4, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) < rate).astype(np.float32)


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


# --------------------------------------------------------------------------- frontend networks


def _frontend_networks() -> dict[str, tuple[object, tuple[int, ...]]]:
    """Networks of snuc's PyTorch frontend (SNU, sSNU, recurrent, convolutional)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from snuc.frontend.layers import SNU, ConvSNU, Flatten, Readout, SNUNetwork, sSNU

    torch.manual_seed(0)
    return {
        "snu": (SNUNetwork(SNU(12, 20), SNU(20, 8, decay=0.7, bias_init=-0.5)), (12,)),
        "ssnu": (SNUNetwork(sSNU(12, 16, g="identity", decay=0.4), Readout(16, 5)), (12,)),
        "recurrent": (
            SNUNetwork(
                SNU(12, 18, recurrent=True, decay=torch.linspace(0.3, 0.9, 18)),
                sSNU(18, 10, recurrent=True),
                Readout(10, 4, "log_softmax"),
            ),
            (12,),
        ),
        "conv": (
            SNUNetwork(
                ConvSNU(1, 4, 3, padding=1),
                torch.nn.MaxPool2d(2),
                Flatten(),
                SNU(4 * 4 * 4, 10, decay=0.9),
                Readout(10, 3, "identity"),
            ),
            (1, 8, 8),
        ),
    }


@pytest.fixture(scope="module")
def frontend_graphs(tmp_path_factory) -> dict[str, tuple[Graph, tuple[int, ...]]]:
    """Each frontend network exported (sequence form) and compiled for a small target."""
    networks = _frontend_networks()
    from snuc.frontend.export import export

    root = tmp_path_factory.mktemp("frontend")
    graphs = {}
    for name, (net, features) in networks.items():
        path = export(
            net.eval(),
            root / f"{name}.onnx",
            input_features=features,
            check_lengths=(3,),
            check_batches=(2,),
        )
        graphs[name] = (driver.compile_model(path, SMALL).graph, features)
    return graphs


@pytest.mark.parametrize("name", ["snu", "ssnu", "recurrent", "conv"])
def test_frontend_networks_equal_the_interpreter_in_every_mode(frontend_graphs, name):
    graph, features = frontend_graphs[name]
    check_modes(graph, spikes((30, 3, *features), seed=1))


def test_real_valued_inputs_pass_the_dac_as_in_the_interpreter(frontend_graphs):
    graph, features = frontend_graphs["ssnu"]
    x = np.random.default_rng(2).uniform(-1.5, 1.5, (20, 2, *features)).astype(np.float32)
    check_modes(graph, x)


# --------------------------------------------------------------------------- hand-built ONNX


ONNX_MODELS = {
    "feed_forward": (lambda: om.snu_scan_model((6, 20, 9)), (6,)),
    "recurrent": (lambda: om.snu_scan_model((6, 20), recurrent=True), (6,)),
    "soft_identity_per_neuron": (
        lambda: om.snu_scan_model((6, 20, 7), h="sigmoid", g="identity", decay_per_neuron=True),
        (6,),
    ),
    "gemm_where_swapped": (
        lambda: om.snu_scan_model((6, 12), gemm_transb=True, step="where", operand_order="swapped"),
        (6,),
    ),
    "step_form_recurrent": (lambda: om.snu_step_model(6, 18, recurrent=True), (6,)),
    "conv_max": (lambda: om.conv_snu_scan_model(), (2, 6, 6)),
    "conv_avg_step_form": (lambda: om.conv_snu_step_model(pool="avg"), (2, 6, 6)),
    "two_scans": (lambda: om.two_scan_model((6, 20, 9)), (6,)),
    "shifted_readout": (lambda: om.snu_scan_model((6, 10), readout="shifted"), (6,)),
}


@pytest.mark.parametrize("name", sorted(ONNX_MODELS))
def test_hand_built_onnx_models_equal_the_interpreter(name, tmp_path):
    make, features = ONNX_MODELS[name]
    graph = compiled(make(), tmp_path)
    check_modes(graph, spikes((23, 3, *features), seed=3))


@pytest.mark.parametrize("inside", [False, True])
def test_token_id_embeddings_equal_the_interpreter(inside, tmp_path):
    graph = compiled(om.embedding_snu_scan_model(inside=inside), tmp_path)
    ids = np.random.default_rng(4).integers(0, 10, (25, 3), dtype=np.int32)
    check_modes(graph, ids)


def test_a_stateless_dense_model_on_real_inputs(tmp_path):
    graph = compiled(om.dense_model(n_in=20, n_out=18), tmp_path)
    x = np.random.default_rng(5).standard_normal((9, 4, 20)).astype(np.float32)
    check_modes(graph, x)


def test_pcm_options_are_those_of_the_interpreter(tmp_path):
    graph = compiled(om.snu_scan_model((6, 20), recurrent=True), tmp_path)
    x = spikes((15, 2, 6), seed=6)
    for options in (
        {"seed": 7, "t_inference_s": 86400.0},
        {"drift_compensation": "column"},
        {"drift_compensation": None, "t_inference_s": 0.0},
    ):
        check_modes(graph, x, modes=("pcm",), **options)


def test_conductance_levels_and_two_devices_per_polarity(tmp_path):
    path = tmp_path / "ff.onnx"
    onnx.save(om.snu_scan_model((6, 20, 9), recurrent=True), path)
    toml = tmp_path / "chip.toml"
    toml.write_text(
        'base = "pcm-16x16"\nconductance_levels = 16\ndevices_per_polarity = 2\n'
        "dac_bits = 4\nadc_bits = 6\n"
    )
    target = parse_target(toml)
    graph = driver.compile_model(path, target).graph
    check_modes(graph, spikes((20, 3, 6), seed=8), target=target)


# --------------------------------------------------------------------------- IR corner cases


def _snu(g: Graph, x: str, n_in: int, n: int, name: str, rng, *, recurrent=False, h="step"):
    """Append a dense SNU layer to an IR graph; returns its spikes (or sigmoid outputs)."""
    g.add_constant(f"{name}.W", (rng.standard_normal((n_in, n)) * 0.8).astype(np.float32))
    g.add_constant(f"{name}.decay", np.float32(0.8))
    g.add_constant(f"{name}.bias", (rng.standard_normal(n) * 0.2 - 0.4).astype(np.float32))
    s = g.add_state(f"{name}.s", TensorType("f32", ("B", n)))
    y = g.add_state(f"{name}.y", TensorType("f32", ("B", n)))
    (a,) = g.add_node(ops.Dense(), [x, f"{name}.W"], f"{name}.a")
    if recurrent:
        g.add_constant(f"{name}.H", (rng.standard_normal((n, n)) * 0.4).astype(np.float32))
        (r,) = g.add_node(ops.Dense(), [y, f"{name}.H"], f"{name}.r")
        (a,) = g.add_node(ops.Add(), [a, r], f"{name}.ar")
    s_next, y_next = g.add_node(
        ops.SNULayer(h=h), [a, s, y, f"{name}.decay", f"{name}.bias"], [f"{name}.sn", f"{name}.yn"]
    )
    g.set_next(s, s_next)
    g.set_next(y, y_next)
    return y_next


def snu_stack(sizes=(6, 20, 12, 5), recurrent=(False, True, False), h=None, seed=0) -> Graph:
    """An IR graph of dense SNU layers, lowered through the whole pipeline (tiled for
    :data:`SMALL`); outputs the last layer's spikes and a sigmoid readout of them."""
    rng = np.random.default_rng(seed)
    g = Graph("stack")
    x = g.add_input("x", TensorType("f32", ("B", sizes[0])))
    hs = h or ["step"] * len(recurrent)
    for i, (n_in, n) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        x = _snu(g, x, n_in, n, f"l{i}", rng, recurrent=recurrent[i], h=hs[i])
    g.add_constant("Wo", (rng.standard_normal((sizes[-1], 3))).astype(np.float32))
    (z,) = g.add_node(ops.Dense(), [x, "Wo"], "z")
    (p,) = g.add_node(ops.Sigmoid(), [z], "p")
    g.outputs += [x, p]
    return driver.lower(g, TARGET)


def delays() -> Graph:
    """States outside any recurrence: a delay of the input, a delay of that delay; outputs
    a state, the input itself and a value of constants only."""
    g = Graph("delays")
    x = g.add_input("x", TensorType("f32", ("B", 4)))
    d1 = g.add_state("d1", TensorType("f32", ("B", 4)))
    d2 = g.add_state("d2", TensorType("f32", ("B", 4)))
    g.set_next(d1, x)
    g.set_next(d2, d1)
    g.add_constant("k", np.arange(4, dtype=np.float32))
    (kk,) = g.add_node(ops.Neg(), ["k"], "kk")
    (y,) = g.add_node(ops.Add(), [d2, x], "y")
    (z,) = g.add_node(ops.Mul(), [y, kk], "z")
    g.outputs += [z, d1, x, kk]
    return g


def corner_loop() -> Graph:
    """A recurrence with a state chain (``c.next = u``: u one step late), a state output,
    generic ops inside the loop (leaky relu, softmax, integer cast and division) and a
    transpose that moves the batch off the leading axis (a step-by-step node)."""
    rng = np.random.default_rng(1)
    g = Graph("corner")
    x = g.add_input("x", TensorType("f32", ("B", 3)))
    u = g.add_state("u", TensorType("f32", ("B", 3)))
    c = g.add_state("c", TensorType("f32", ("B", 3)))
    g.add_constant("H", rng.standard_normal((3, 3)).astype(np.float32))
    g.add_constant("two", np.int64(2))
    (m,) = g.add_node(ops.Dense(), [c, "H"], "m")
    (v,) = g.add_node(ops.Add(), [m, x], "v")
    (w,) = g.add_node(ops.LeakyRelu(alpha=0.1), [v], "w")
    (p,) = g.add_node(ops.Softmax(axis=-1), [w], "p")
    (q,) = g.add_node(ops.Tanh(), [p], "q")
    (n,) = g.add_node(ops.Add(), [q, u], "n")
    g.set_next(u, n)
    g.set_next(c, u)
    (i,) = g.add_node(ops.Cast(to="i64"), [v], "i")
    (j,) = g.add_node(ops.Div(), [i, "two"], "j")
    (t,) = g.add_node(ops.Transpose(perm=(1, 0)), [w], "t")
    (r,) = g.add_node(ops.Relu(), [t], "r")
    g.outputs += [n, c, j, r]
    return g


def no_batch() -> Graph:
    """An input without a batch axis (a run with B = 1) through a recurrence."""
    g = Graph("unbatched")
    x = g.add_input("x", TensorType("f32", (5,)))
    s = g.add_state("s", TensorType("f32", (5,)))
    g.add_constant("decay", np.float32(0.5))
    (d,) = g.add_node(ops.Mul(), [s, "decay"], "d")
    (n,) = g.add_node(ops.Add(), [d, x], "n")
    g.set_next(s, n)
    (y,) = g.add_node(ops.Step(), [n], "y")
    g.outputs.append(y)
    return g


def late_reader() -> Graph:
    """A state read again, within the recurrence, after its next value is written in the
    same step: their arrays must differ (two arrays in turn, alternating by the step)."""
    g = Graph("late")
    x = g.add_input("x", TensorType("f32", ("B", 3)))
    s = g.add_state("s", TensorType("f32", ("B", 3)))
    r = g.add_state("r", TensorType("f32", ("B", 3)))
    g.add_constant("decay", np.float32(0.9))
    (d,) = g.add_node(ops.Mul(), [s, "decay"], "d")
    (e,) = g.add_node(ops.Add(), [d, r], "e")
    (n,) = g.add_node(ops.Add(), [e, x], "n")
    (z,) = g.add_node(ops.Sub(), [n, s], "z")
    g.set_next(s, n)
    g.set_next(r, z)
    g.outputs.append(z)
    return g


def state_cycle() -> Graph:
    """Two states that only feed each other: zeros forever."""
    g = Graph("cycle")
    x = g.add_input("x", TensorType("f32", ("B", 2)))
    a = g.add_state("a", TensorType("f32", ("B", 2)))
    b = g.add_state("b", TensorType("f32", ("B", 2)))
    g.set_next(a, b)
    g.set_next(b, a)
    (y,) = g.add_node(ops.Add(), [a, x], "y")
    g.outputs += [y, b]
    return g


def constant_tile() -> Graph:
    """A crossbar product of a constant: computed once when quantised, read with fresh
    noise at every step in pcm (its result has no batch axis: a step-by-step node)."""
    rng = np.random.default_rng(3)
    g = Graph("constant_tile")
    x = g.add_input("x", TensorType("f32", ("B", 6)))
    g.add_constant("c", rng.uniform(-1, 1, (1, 5)).astype(np.float32))
    g.add_constant("Wc", rng.standard_normal((5, 6)).astype(np.float32))
    g.add_constant("Wx", rng.standard_normal((6, 6)).astype(np.float32))
    (k,) = g.add_node(ops.Dense(), ["c", "Wc"], "k")
    (a,) = g.add_node(ops.Dense(), [x, "Wx"], "a")
    (y,) = g.add_node(ops.Add(), [a, k], "y")
    g.outputs += [y, k]
    return driver.lower(g, TARGET)


def test_the_schedule_is_layer_major():
    graph = snu_stack()
    steps = schedule(graph).steps
    kinds = [type(s).__name__ for s in steps]
    loops = [s for s in steps if isinstance(s, Loop)]
    assert len(loops) == 3
    # Every loop runs after every node it reads from and before every node that reads it.
    position = {}
    for i, s in enumerate(steps):
        for node in s.nodes if isinstance(s, Loop) else [getattr(s, "node", None)]:
            if node is not None:
                position.update((v, i) for v in node.outputs)
    for i, s in enumerate(steps):
        for node in s.nodes if isinstance(s, Loop) else [getattr(s, "node", None)]:
            for v in node.inputs if node is not None else ():
                assert position.get(v, -1) <= i
    # Only the neuron updates and the recurrent layer's product run step by step.
    looped = [n.op.NAME for loop in loops for n in loop.nodes]
    assert looped.count("snu.layer") == 3
    assert sum(name == "xbar.mvm" for name in looped) >= 1
    assert looped.count("xbar.mvm") == sum(
        n.op.NAME == "xbar.mvm" and n.inputs[0] == "l1.y" for n in graph.nodes()
    )
    assert kinds[0] == "Parallel" and kinds[-1] == "Parallel"


def test_delays_and_chains_get_their_own_steps():
    graph = delays()
    steps = schedule(graph).steps
    assert {type(s) for s in steps} == {Shift, Parallel}
    corner = schedule(corner_loop()).steps
    assert any(isinstance(s, PerStep) for s in corner)
    (loop,) = [s for s in corner if isinstance(s, Loop)]
    assert {s.name for s in loop.states} == {"u", "c"}


@pytest.mark.parametrize(
    "make", [snu_stack, delays, corner_loop, no_batch, late_reader, state_cycle, constant_tile]
)
def test_ir_corner_cases_equal_the_interpreter(make):
    graph = make()
    features = graph.type_of("x").shape
    batched = "B" in features
    shape = (17, 3, *features[1:]) if batched else (17, *features)
    x = np.random.default_rng(9).uniform(-1, 1, shape).astype(np.float32)
    tiled = any(n.op.NAME == "xbar.mvm" for n in graph.nodes())
    check_modes(graph, x, modes=MODES if tiled else ("float",))


@pytest.mark.parametrize("make", [snu_stack, delays, corner_loop, late_reader, state_cycle])
@pytest.mark.parametrize("block", [3, 4])
def test_states_carry_across_time_blocks(make, block, monkeypatch):
    """With blocks of a few steps, states, delays and read noise continue across blocks
    (an odd block length checks that two-array slots keep alternating by the step)."""
    monkeypatch.setattr(numpy_backend, "block_steps", lambda least, size, steps: block)
    graph = make()
    x = np.random.default_rng(10).uniform(-1, 1, (23, 2, *graph.type_of("x").shape[1:]))
    tiled = any(n.op.NAME == "xbar.mvm" for n in graph.nodes())
    check_modes(graph, x.astype(np.float32), modes=MODES if tiled else ("float",))


def test_sigmoid_neurons_and_a_recurrent_soft_layer():
    graph = snu_stack(sizes=(5, 9, 7), recurrent=(True, False), h=["sigmoid", "step"], seed=2)
    check_modes(graph, spikes((19, 2, 5), seed=11))


def special_values() -> Graph:
    """Sigmoid, step, relu and both SNU kinds, in a loop and outside it, on any float."""
    g = Graph("special")
    x = g.add_input("x", TensorType("f32", ("B", 11)))
    g.add_constant("decay", np.float32(0.5))
    g.add_constant("bias", np.linspace(-1, 1, 11, dtype=np.float32))
    outs = []
    for h in ("step", "sigmoid"):
        s = g.add_state(f"s_{h}", TensorType("f32", ("B", 11)))
        y = g.add_state(f"y_{h}", TensorType("f32", ("B", 11)))
        s_new, y_new = g.add_node(
            ops.SNULayer(g="identity", h=h), [x, s, y, "decay", "bias"], [f"sn_{h}", f"yn_{h}"]
        )
        g.set_next(s, s_new)
        g.set_next(y, y_new)
        outs += [s_new, y_new]
    for op in (ops.Sigmoid(), ops.Step(), ops.Relu()):
        outs += g.add_node(op, [x], op.NAME.split(".")[1])
    g.outputs += outs
    return g


def test_special_values_give_the_interpreters_bits():
    """NaN, infinities, signed zeros, tiny and huge values: identical results."""
    values = np.array(
        [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 88.7, -88.7, 1e30, -1e30],
        np.float32,
    )
    rng = np.random.default_rng(19)
    x = np.stack([rng.permutation(values) for _ in range(12)]).reshape(6, 2, 11)
    graph = special_values()
    want, got = run(graph, x), run_numpy(graph, x)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.mark.parametrize("steps", [0, 1, 2])
def test_short_sequences(steps):
    graph = snu_stack()
    check_modes(graph, spikes((steps, 2, 6), seed=12))


@settings(max_examples=12, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 20), min_size=2, max_size=4),
    flags=st.lists(st.booleans(), min_size=6, max_size=6),
    steps=st.integers(1, 12),
    batch=st.integers(1, 4),
    mode=st.sampled_from(MODES),
    seed=st.integers(0, 1000),
)
def test_random_snu_stacks_equal_the_interpreter(sizes, flags, steps, batch, mode, seed):
    layers = len(sizes) - 1
    graph = snu_stack(
        sizes=tuple(sizes),
        recurrent=tuple(flags[:layers]),
        h=["sigmoid" if f else "step" for f in flags[3 : 3 + layers]],
        seed=seed,
    )
    x = spikes((steps, batch, sizes[0]), rate=0.5, seed=seed)
    check_modes(graph, x, modes=(mode,), seed=seed)


# --------------------------------------------------------------------------- runs


def test_batch_chunks_are_runs_of_their_own():
    """``batch_size`` = separate runs per chunk, each keyed by its first sequence: pcm
    read noise is drawn per sequence, so the chunks make the whole run."""
    graph = snu_stack()
    x = spikes((14, 5, 6), seed=13)
    got = run_numpy(graph, x, mode="pcm", target=TARGET, batch_size=2)
    parts = [
        run(graph, x[:, i : i + 2], mode="pcm", target=TARGET, batch_offset=i) for i in (0, 2, 4)
    ]
    want = {k: np.concatenate([p[k] for p in parts], axis=1) for k in parts[0]}
    assert_same(want, got)
    whole = run_numpy(graph, x, mode="pcm", target=TARGET)
    assert_same(whole, got)
    for mode in ("float", "quantized"):
        assert_same(
            run_numpy(graph, x, mode=mode, target=TARGET),
            run_numpy(graph, x, mode=mode, target=TARGET, batch_size=3),
        )


def test_a_plan_is_built_once_and_serves_many_runs():
    graph = snu_stack()
    plan = Plan.build(graph, mode="pcm", target=SMALL, seed=3, t_inference_s=60.0)
    short, long = spikes((7, 2, 6), seed=14), spikes((31, 5, 6), seed=15)
    first = plan.run(short)
    assert_same(
        run(graph, long, mode="pcm", target=TARGET, seed=3, t_inference_s=60.0), plan.run(long)
    )
    again = plan.run(short)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert plan.chips and plan.target == TARGET


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("thread", [True, False])
def test_read_noise_drawn_ahead_in_small_pieces_is_the_interpreters(thread, batch, monkeypatch):
    """Pieces of one step on the background thread (a batch of one on two threads), or
    without it (one thread, or a batch split across two)."""
    monkeypatch.setattr(numpy_backend, "BACKGROUND_NOISE_ELEMENTS", 0)
    monkeypatch.setattr(read_noise, "NOISE_BLOCK_ELEMENTS", 7)
    monkeypatch.setattr(read_noise, "NOISE_CALL_ELEMENTS", 1)
    graph = snu_stack()
    x = spikes((13, batch, 6), seed=18)
    plan = Plan.build(graph, mode="pcm", target=TARGET, noise_thread=thread)
    assert_same(run(graph, x, mode="pcm", target=TARGET), plan.run(x, threads=2))


@pytest.mark.parametrize("ahead_from", [0, 10**9])
def test_a_core_is_left_to_the_noise_thread_only_when_one_is_started(ahead_from, monkeypatch):
    """A run of one group on two threads limits BLAS to one thread where it draws its read
    noise ahead on the other, and leaves BLAS both where there is too little noise to draw
    ahead (a batch of one: the thread would not start)."""
    from snuc.runtime import threads as run_threads

    monkeypatch.setattr(numpy_backend, "BACKGROUND_NOISE_ELEMENTS", ahead_from)
    limits, pools = [], []
    real_limit, real_pool = run_threads.blas_threads, numpy_backend._Run._noise_pool
    monkeypatch.setattr(run_threads, "blas_threads", lambda n: limits.append(n) or real_limit(n))
    monkeypatch.setattr(
        numpy_backend._Run, "_noise_pool", lambda r: pools.append(p := real_pool(r)) or p
    )
    graph = snu_stack()
    x = spikes((9, 1, 6), seed=21)
    plan = Plan.build(graph, mode="pcm", target=TARGET)
    ahead = ahead_from == 0
    assert plan.draws_noise_ahead(9, 1, 2) is ahead and not plan.draws_noise_ahead(9, 1, 1)
    assert_same(run(graph, x, mode="pcm", target=TARGET), plan.run(x, threads=2))
    assert limits == [1 if ahead else 2]
    assert [p is not None for p in pools] == [ahead]


def test_outputs_are_fresh_arrays():
    graph = delays()
    x = np.random.default_rng(16).uniform(-1, 1, (6, 2, 4)).astype(np.float32)
    out = run_numpy(graph, x)
    assert not np.shares_memory(out["x"], x)
    out["x"][...] = 7.0
    assert not np.any(x == 7.0)


def test_progress_bar_with_and_without_tqdm(monkeypatch, capsys):
    graph = snu_stack()
    x = spikes((9, 2, 6), seed=17)
    want = run_numpy(graph, x)
    assert_same(want, run_numpy(graph, x, progress=True))
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError
    assert_same(want, run_numpy(graph, x, progress=True))


# --------------------------------------------------------------------------- errors


def _input_errors():
    x = np.zeros((4, 2, 6), np.float32)
    return {
        "rank": x[0],
        "shape": np.zeros((4, 2, 7), np.float32),
        "dtype": x.astype(np.int32),
        "missing": {"y": x},
        "not an array": [[0.0] * 6],
    }


@pytest.mark.parametrize("what", sorted(_input_errors()))
def test_bad_inputs_are_the_interpreters_one_line_errors(what):
    graph = snu_stack()
    bad = _input_errors()[what]
    with pytest.raises(SnucError) as theirs:
        run(graph, bad)
    with pytest.raises(SnucError) as ours:
        run_numpy(graph, bad)
    assert one_line(ours) == one_line(theirs)


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "fast"},
        {"mode": "quantized", "target": None},
        {"mode": "pcm", "seed": -1},
        {"mode": "pcm", "t_inference_s": float("nan")},
        {"mode": "pcm", "drift_compensation": "local"},
    ],
)
def test_bad_options_are_the_interpreters_one_line_errors(options):
    graph = snu_stack()
    x = np.zeros((3, 1, 6), np.float32)
    options = {"target": TARGET, **options}
    with pytest.raises(SnucError) as theirs:
        run(graph, x, **options)
    with pytest.raises(SnucError) as ours:
        run_numpy(graph, x, **options)
    assert one_line(ours) == one_line(theirs)


@pytest.mark.parametrize("batch_size", [0, -2, 1.5, True, "4"])
def test_a_bad_batch_size_is_a_one_line_error(batch_size):
    with pytest.raises(SnucError) as err:
        run_numpy(snu_stack(), np.zeros((3, 2, 6), np.float32), batch_size=batch_size)
    assert "batch_size" in one_line(err) and "positive integer" in one_line(err)


def test_an_untiled_graph_cannot_run_quantized():
    rng = np.random.default_rng(0)
    g = Graph("untiled")
    x = g.add_input("x", TensorType("f32", ("B", 4)))
    g.add_constant("W", rng.standard_normal((4, 3)).astype(np.float32))
    (y,) = g.add_node(ops.Dense(), [x, "W"], "y")
    g.outputs.append(y)
    with pytest.raises(SnucError) as theirs:
        run(g, np.zeros((2, 1, 4), np.float32), mode="quantized", target=TARGET)
    with pytest.raises(SnucError) as ours:
        run_numpy(g, np.zeros((2, 1, 4), np.float32), mode="quantized", target=TARGET)
    assert one_line(ours) == one_line(theirs)


def _snu_fast_paths(plan: Plan) -> int:
    """How many of the plan's loops run as one whole-block neuron update."""
    return sum(getattr(p, "_neuron", None) is not None for p in plan._programs)


def test_one_layer_snu_loops_update_whole_blocks_with_the_interpreters_bits():
    """Each SNU layer of special_values is a loop of its own: both take the whole-block
    update, and every result, signed zeros and NaN payload included, has the
    interpreter's bits."""
    graph = special_values()
    plan = Plan.build(graph)
    assert _snu_fast_paths(plan) == 2
    values = np.array(
        [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 88.7, -88.7, 1e30, -1e30],
        np.float32,
    )
    rng = np.random.default_rng(23)
    x = np.stack([rng.permutation(values) for _ in range(18)]).reshape(9, 2, 11)
    want, got = run(graph, x), plan.run(x)
    for name in want:
        np.testing.assert_array_equal(
            got[name].view(np.uint32), want[name].view(np.uint32), err_msg=name
        )


@pytest.mark.parametrize("block", [2, 3])
def test_whole_block_snu_updates_carry_states_across_blocks(block, monkeypatch):
    """Feed-forward layers of a stack (relu, step by threshold and by sum, sigmoid) take
    the whole-block update; across blocks they equal the interpreter."""
    monkeypatch.setattr(numpy_backend, "block_steps", lambda least, size, steps: block)
    graph = snu_stack(sizes=(5, 9, 7, 4), recurrent=(False, True, False), h=["sigmoid"] * 3)
    assert _snu_fast_paths(Plan.build(graph)) == 2
    check_modes(graph, spikes((11, 3, 5), seed=24), modes=("float",))
    stepped = snu_stack(sizes=(5, 9, 4), recurrent=(False, False), seed=3)
    assert _snu_fast_paths(Plan.build(stepped)) == 2
    check_modes(stepped, spikes((11, 3, 5), seed=25))


def test_runs_reuse_their_arrays_without_carrying_state():
    """A plan without read noise keeps a run's runners for the next run at the same batch
    and block size: every run, in any order of sizes and inputs, equals a fresh plan's,
    and returns arrays of its own."""
    graph = snu_stack()
    plan = Plan.build(graph)
    inputs = [
        spikes((13, 2, 6), seed=26),
        spikes((13, 2, 6), seed=27),
        spikes((5, 2, 6), seed=28),
        spikes((13, 1, 6), seed=29),
        spikes((13, 2, 6), seed=26),
    ]
    results = []
    for x in inputs:
        got = plan.run(x)
        assert_same(run_numpy(graph, x), got)
        results.append(got)
    assert plan._idle
    for name in results[0]:
        np.testing.assert_array_equal(results[0][name], results[-1][name])
        assert not np.shares_memory(results[0][name], results[-1][name])


@pytest.mark.parametrize("noise_thread", [False, True])
def test_noisy_runs_reuse_their_streams_from_the_start(noise_thread, monkeypatch):
    """pcm runs reuse a finished run's read-noise streams, started over: each run draws
    the interpreter's numbers, at any T, with the noise drawn on a thread or not."""
    monkeypatch.setattr(numpy_backend, "BACKGROUND_NOISE_ELEMENTS", 1)
    monkeypatch.setattr(read_noise, "NOISE_BLOCK_ELEMENTS", 7)
    monkeypatch.setattr(read_noise, "NOISE_CALL_ELEMENTS", 1)
    monkeypatch.setattr(numpy_backend, "block_steps", lambda least, size, steps: 3)
    graph = snu_stack()
    plan = Plan.build(graph, mode="pcm", target=TARGET, noise_thread=noise_thread)
    for x in (spikes((9, 1, 6), seed=30), spikes((4, 1, 6), seed=31), spikes((9, 1, 6), seed=30)):
        assert_same(run(graph, x, mode="pcm", target=TARGET), plan.run(x, threads=2))
    assert plan._idle
