"""The neuron family (SPEC §1.1): every model in every mode, on every backend.

Each model is built in the IR (a dense input layer, optionally recurrent through its own
spikes, feeding the neuron op, then a dense readout), lowered through the whole pipeline
and run: the interpreter's plain semantics are checked against the equations written
out here in float64; the NumPy backend and the simulator against the interpreter, bit for
bit in quantized and pcm modes (crossbar sums are exact there) and within SPEC §6's bound
in float mode (BLAS orders the float products' sums).
"""

from __future__ import annotations

import numpy as np
import pytest
from equivalence import assert_same

from snuc import driver
from snuc.backends.program import compile_program
from snuc.ir import Graph, TensorType, VerifyError, ops
from snuc.ir.neurons import NEURON_OPS, NeuronOp
from snuc.ir.target import parse_target
from snuc.ir.text import parse_graph, print_graph
from snuc.runtime.interpreter import run as interpret
from snuc.runtime.numpy_backend import Plan, run_numpy
from snuc.runtime.simulator import SimPlan, run_sim

TARGET = parse_target("pcm-16x16")
MODES = ("float", "quantized", "pcm")
N_IN, N, N_OUT = 6, 20, 5

MODELS: list[tuple[str, dict]] = [
    ("snu.layer", {"g": "identity"}),
    ("snu.lif_sub", {}),
    ("snu.if", {}),
    ("snu.cuba", {"reset": "subtract"}),
    ("snu.cuba", {"reset": "zero"}),
    ("snu.li", {}),
]
PARAMETERS = {
    "decay": (0.6, 0.95),
    "syn_decay": (0.3, 0.8),
    "threshold": (0.2, 0.6),
    "bias": (-0.6, -0.2),
}


def _model_id(model: tuple[str, dict]) -> str:
    name, attrs = model
    return name + "".join(f"-{v}" for v in attrs.values())


def neuron_graph(name: str, attrs: dict, recurrent: bool, seed: int = 0) -> Graph:
    """``x -> dense -> (+ H y_prev) -> <name> -> dense -> out``; parameters per neuron."""
    rng = np.random.default_rng(seed)
    op: NeuronOp = NEURON_OPS[name](**attrs)
    g = Graph(name.replace(".", "_"))
    x = g.add_input("x", TensorType("f32", ("B", N_IN)))
    g.add_constant("W", (rng.standard_normal((N_IN, N)) * 0.8).astype(np.float32))
    (a,) = g.add_node(ops.Dense(), [x, "W"], "a")
    states = {p: g.add_state(p, TensorType("f32", ("B", N))) for p in op.PREVIOUS}
    if recurrent:
        # Small enough that the LI, fed back its membrane, stays bounded.
        g.add_constant("H", (rng.standard_normal((N, N)) * 0.05).astype(np.float32))
        (r,) = g.add_node(ops.Dense(), [states[op.PREVIOUS[-1]], "H"], "r")
        (a,) = g.add_node(ops.Add(), [a, r], "ar")
    operands = [a]
    for operand in op.OPERANDS_NAMED[1:]:
        if operand in states:
            operands.append(states[operand])
        else:
            lo, hi = PARAMETERS[operand]
            operands.append(g.add_constant(operand, rng.uniform(lo, hi, N).astype(np.float32)))
    results = g.add_node(op, operands, list(op.RESULTS_NAMED))
    for previous, result in zip(op.PREVIOUS, results, strict=True):
        g.set_next(states[previous], result)
    g.add_constant("W_out", (rng.standard_normal((N, N_OUT)) * 0.5).astype(np.float32))
    (out,) = g.add_node(ops.Dense(), [results[-1], "W_out"], "out")
    g.outputs += [out, *results]
    return g


def inputs(steps: int = 12, batch: int = 3, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((steps, batch, N_IN)) < 0.5).astype(np.float32)


def reference(name: str, attrs: dict, graph: Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    """The model's equations (SPEC §1, §1.1) stepped in float64, recurrence included."""
    c = {k: v.astype(np.float64) for k, v in graph.constants.items()}
    steps, batch = x.shape[:2]
    zeros = np.zeros((batch, N))
    i, v, y = zeros, zeros, zeros
    out: dict[str, list[np.ndarray]] = {r: [] for r in ("i", "v", "y")}
    for t in range(steps):
        feedback = v if name == "snu.li" else y  # the op's last result
        a = x[t] @ c["W"] + (feedback @ c["H"] if "H" in c else 0)
        if name == "snu.layer":
            v = a + c["decay"] * v * (1 - y)
            y = (v + c["bias"] > 0) * 1.0
        elif name == "snu.li":
            v = c["decay"] * v + a
        else:
            if name == "snu.cuba":
                i = c["syn_decay"] * i + a
                a = i
            decay = 1.0 if name == "snu.if" else c["decay"]
            if attrs.get("reset", "subtract") == "subtract":
                v = decay * v + a - y * c["threshold"]
            else:
                v = decay * v * (1 - y) + a
            y = (v > c["threshold"]) * 1.0
        out["i"].append(i)
        out["v"].append(v)
        out["y"].append(y)
    return {k: np.stack(vs) for k, vs in out.items()}


@pytest.mark.parametrize("recurrent", [False, True])
@pytest.mark.parametrize("model", MODELS, ids=_model_id)
def test_the_interpreter_computes_the_models_equations(model, recurrent):
    name, attrs = model
    graph = neuron_graph(name, attrs, recurrent)
    x = inputs()
    got = interpret(graph, x)
    want = reference(name, attrs, graph, x)
    membrane = "s" if name == "snu.layer" else "v"
    np.testing.assert_allclose(got[membrane], want["v"], rtol=1e-4, atol=1e-4)
    if NEURON_OPS[name](**attrs).spike_result() is not None:
        spikes = "y"
        # Spikes agree except where float32 rounding puts the membrane on the threshold.
        assert (got[spikes] != want["y"]).mean() < 0.01
    if name == "snu.cuba":
        np.testing.assert_allclose(got["i"], want["i"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("recurrent", [False, True])
@pytest.mark.parametrize("model", MODELS, ids=_model_id)
def test_every_model_runs_bit_for_bit_on_both_backends_in_every_mode(model, recurrent):
    name, attrs = model
    graph = driver.lower(neuron_graph(name, attrs, recurrent), TARGET)
    program = compile_program(graph, TARGET)
    x = inputs()
    for mode in MODES:
        want = interpret(graph, x, mode=mode, target=TARGET, seed=4)
        numpy = run_numpy(graph, x, mode=mode, target=TARGET, seed=4)
        sim, stats = run_sim(graph, x, mode=mode, target=TARGET, program=program, seed=4)
        if mode == "float":
            # BLAS picks the float products' summation order: SPEC §6's bound.
            assert_same(want, numpy)
            assert_same(numpy, sim)
        else:
            _assert_bits(numpy, want, mode)
            _assert_bits(sim, want, mode)
        if NEURON_OPS[name](**attrs).spike_result() is not None:
            assert sum(layer.spikes for layer in stats.spikes) == int(numpy["y"].sum())


@pytest.mark.parametrize("model", MODELS, ids=_model_id)
def test_every_model_runs_in_pieces_as_in_one_run(model):
    """Issue 17's pieces carry every neuron model's states: 3 uneven pieces equal the whole
    run on every backend (bit for bit; the NumPy backend's float products to SPEC §6's
    bound, as for snu.layer)."""
    name, attrs = model
    graph = driver.lower(neuron_graph(name, attrs, recurrent=True), TARGET)
    program = compile_program(graph, TARGET)
    x = inputs(steps=13)
    for mode in MODES:
        runs = {
            "interpreter": lambda part, state, mode=mode: interpret(
                graph, part, mode=mode, target=TARGET, seed=4, state=state, return_state=True
            ),
            "numpy": Plan.build(graph, mode=mode, target=TARGET, seed=4).run,
            "sim": SimPlan.build(graph, mode=mode, target=TARGET, program=program, seed=4).run,
        }
        for backend, run in runs.items():
            whole, _ = run(x, None) if backend == "interpreter" else (run(x), None)
            state, parts = None, []
            for a, b in ((0, 5), (5, 6), (6, 13)):
                if backend == "interpreter":
                    y, state = run(x[a:b], state)
                else:
                    y, state = run(x[a:b], state=state, return_state=True)
                parts.append(y)
            got = {k: np.concatenate([p[k] for p in parts]) for k in whole}
            if backend == "numpy" and mode == "float":
                assert_same(whole, got)
            else:
                _assert_bits(got, whole, mode)


def _assert_bits(got: dict[str, np.ndarray], want: dict[str, np.ndarray], mode: str) -> None:
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=f"{mode} {key}")


@pytest.mark.parametrize("model", MODELS, ids=_model_id)
def test_a_neuron_op_prints_and_parses_back(model):
    name, attrs = model
    graph = neuron_graph(name, attrs, recurrent=True)
    text = print_graph(graph)
    assert f"= {name}(" in text
    assert print_graph(parse_graph(text, arrays=graph.constants)) == text


@pytest.mark.parametrize("model", MODELS, ids=_model_id)
def test_a_long_sequence_takes_the_block_update_and_keeps_the_bits(model):
    """A non-recurrent layer runs as one whole-block update on the NumPy backend; across
    several blocks it keeps the interpreter's bits (quantized: exact crossbar sums)."""
    name, attrs = model
    graph = driver.lower(neuron_graph(name, attrs, recurrent=False), TARGET)
    plan = Plan.build(graph, mode="quantized", target=TARGET)
    assert sum(getattr(p, "_neuron", None) is not None for p in plan._programs) == 1
    x = inputs(steps=300, batch=2)
    _assert_bits(plan.run(x), interpret(graph, x, mode="quantized", target=TARGET), "quantized")


def test_a_bad_reset_is_named():
    with pytest.raises(VerifyError, match="reset must be one of"):
        NEURON_OPS["snu.cuba"](reset="half")
