"""Lifting neurons the way other tools write them (SPEC §1.1, issue 12).

snnTorch's ``Leaky`` (subtract and zero reset), ``Leaky`` with ``beta = 1`` (an IF),
``Synaptic`` and ``RLeaky`` step modules, exported with ``torch.onnx.export``, and
onnx.helper models with the spike carried as a state: each compiles, equals onnxruntime
in float mode (1e-5, identical spikes), runs in pcm mode, and lifts: ``--emit ir`` holds
one neuron op per layer and no step, compare or where op.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import run_cli
from onnx import TensorProto, helper, numpy_helper
from test_onnx_import import _ort_steps  # onnxruntime looped over a step model's time

from snuc import driver
from snuc.ir.neurons import NEURON_OPS

STATE_KEY = "snuc.state"
N_IN, N, N_OUT = 6, 8, 3
LOOSE = ("dig.step", "dig.greater", "dig.less", "dig.where", "dig.cast")


def _save(model: onnx.ModelProto, states: dict[str, str], path: Path) -> Path:
    entry = model.metadata_props.add()
    entry.key, entry.value = STATE_KEY, json.dumps(states)
    onnx.save(model, path)
    return path


def _spikes(seed: int, steps: int = 25, batch: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((steps, batch, N_IN)) < 0.5).astype(np.float32)


def _neuron_ops(capsys, path: Path, *extra: str) -> list[str]:
    """The ops of ``snuc compile --emit ir``'s lines that compute values."""
    status, out, err = run_cli(capsys, "compile", str(path), "--emit", "ir", *extra)
    assert status == 0, err
    return [line.split("= ")[1].split("(")[0] for line in out.splitlines() if " = " in line]


def _check_against_onnxruntime(path: Path, seed: int = 0) -> None:
    """Float mode equals onnxruntime (real values to 1e-5, spikes exactly); pcm runs."""
    model = onnx.load(path)
    x = _spikes(seed)
    want = _ort_steps(model, x)
    art = driver.compile_model(path)
    got = art.run(x, mode="float")
    got = got if isinstance(got, dict) else {art.graph.outputs[0]: got}
    for name, value in want.items():
        if np.isin(value, (0.0, 1.0)).all():
            np.testing.assert_array_equal(got[name], value, err_msg=name)
        else:
            np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-5, err_msg=name)
    pcm = art.run(x, mode="pcm", seed=1)
    for value in pcm.values() if isinstance(pcm, dict) else [pcm]:
        assert value.shape[:2] == x.shape[:2] and np.isfinite(value).all()


# --------------------------------------------------------------------------- snnTorch


def _snntorch_model(kind: str, path: Path, width: int = N) -> Path:
    """A Linear -> neuron (``width`` of them) -> Linear readout step module of snnTorch,
    exported to ONNX."""
    snn = pytest.importorskip("snntorch")
    torch = pytest.importorskip("torch")
    torch.manual_seed(3)
    neurons = {
        "leaky_subtract": lambda: snn.Leaky(beta=0.8, threshold=0.5),
        "leaky_zero": lambda: snn.Leaky(beta=0.8, threshold=0.5, reset_mechanism="zero"),
        "leaky_if": lambda: snn.Leaky(beta=1.0, threshold=0.5),
        "synaptic": lambda: snn.Synaptic(alpha=0.6, beta=0.8, threshold=0.5),
        "rleaky": lambda: snn.RLeaky(beta=0.8, threshold=0.5, linear_features=width),
    }
    states = {
        "synaptic": ("syn", "mem"),
        "rleaky": ("spk", "mem"),
    }.get(kind, ("mem",))

    class Step(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(N_IN, width)
            self.neuron = neurons[kind]()
            self.readout = torch.nn.Linear(width, N_OUT)

        def forward(self, x, *previous):
            results = self.neuron(self.fc(x) * 2.0, *previous)
            spk = results[0]
            new = results if kind == "rleaky" else results[1:]
            return (self.readout(spk), *new)

    module = Step()
    zeros = [torch.zeros(2, width) for _ in states]
    names = [f"{s}_out" for s in states]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.rand(2, N_IN), *zeros),
            path,
            input_names=["x", *states],
            output_names=["y", *names],
            dynamic_axes={name: {0: "B"} for name in ("x", "y", *states, *names)},
            dynamo=False,
        )
    return _save(onnx.load(path), dict(zip(names, states, strict=True)), path)


SNNTORCH = {
    "leaky_subtract": "snu.lif_sub",
    "leaky_zero": "snu.layer",
    "leaky_if": "snu.if",
    "synaptic": "snu.cuba",
    "rleaky": "snu.lif_sub",
}


@pytest.mark.parametrize("kind", SNNTORCH)
def test_snntorch_neurons_lift_and_equal_onnxruntime(kind, tmp_path, capsys):
    path = _snntorch_model(kind, tmp_path / f"{kind}.onnx")
    ops = _neuron_ops(capsys, path)
    assert [op for op in ops if op in NEURON_OPS] == [SNNTORCH[kind]]
    assert not set(ops) & set(LOOSE), ops
    _check_against_onnxruntime(path)


@pytest.mark.parametrize("kind", SNNTORCH)
def test_no_lift_leaves_the_neurons_loose(kind, tmp_path, capsys):
    path = _snntorch_model(kind, tmp_path / f"{kind}.onnx")
    ops = _neuron_ops(capsys, path, "--no-lift")
    assert not set(ops) & set(NEURON_OPS)
    assert "dig.step" in ops


# --------------------------------------------------------------------------- onnx.helper


def lif_initializers(rng: np.random.Generator) -> list[onnx.TensorProto]:
    """A LIF layer's constants: ``W`` [N_IN, N], per-neuron ``decay``, threshold ``theta``
    0.4, and the scalars ``zero`` and ``one``."""
    return [
        numpy_helper.from_array((rng.standard_normal((N_IN, N)) * 0.8).astype(np.float32), "W"),
        numpy_helper.from_array(rng.uniform(0.6, 0.9, N).astype(np.float32), "decay"),
        numpy_helper.from_array(np.float32(0.4), "theta"),
        numpy_helper.from_array(np.float32(0.0), "zero"),
        numpy_helper.from_array(np.float32(1.0), "one"),
    ]


def _helper_lif(spike: str, *, recomputed: bool, integrate: bool = False) -> onnx.ModelProto:
    """A LIF layer (reset by subtraction) in onnx.helper, the spike spelled ``spike``:
    ``greater`` (Greater(v, θ) + Cast), ``less`` (Less(θ, v) + Cast), ``where``
    (Where(Greater(v - θ, 0), 1, 0)). ``recomputed``: the reset is H(v_prev - θ) (only the
    membrane is a state), else the spike is carried as a state. ``integrate``: no decay
    (an IF)."""
    init = lif_initializers(np.random.default_rng(5))
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"])]

    def heaviside(v: str, out: str) -> None:
        if spike == "greater":
            nodes.append(helper.make_node("Greater", [v, "theta"], [f"{out}_b"]))
        elif spike == "less":
            nodes.append(helper.make_node("Less", ["theta", v], [f"{out}_b"]))
        else:
            nodes.append(helper.make_node("Sub", [v, "theta"], [f"{out}_d"]))
            nodes.append(helper.make_node("Greater", [f"{out}_d", "zero"], [f"{out}_b"]))
            nodes.append(helper.make_node("Where", [f"{out}_b", "one", "zero"], [out]))
            return
        nodes.append(helper.make_node("Cast", [f"{out}_b"], [out], to=TensorProto.FLOAT))

    if recomputed:
        heaviside("v_prev", "reset")
    reset = "reset" if recomputed else "y_prev"
    if integrate:
        nodes.append(helper.make_node("Add", ["a", "v_prev"], ["x_in"]))
    else:
        nodes.append(helper.make_node("Mul", ["v_prev", "decay"], ["leak"]))
        nodes.append(helper.make_node("Add", ["a", "leak"], ["x_in"]))
    nodes.append(helper.make_node("Mul", ["theta", reset], ["drop"]))
    nodes.append(helper.make_node("Sub", ["x_in", "drop"], ["v"]))
    heaviside("v", "y")
    nodes.append(helper.make_node("Identity", ["y"], ["out"]))
    states = {"v": "v_prev"} if recomputed else {"v": "v_prev", "y": "y_prev"}
    return step_model("lif", nodes, init, states)


def step_model(
    name: str, nodes: list[onnx.NodeProto], init: list[onnx.TensorProto], states: dict[str, str]
) -> onnx.ModelProto:
    """A step-form model: input ``x`` ``[B, N_IN]``, output ``out`` and the states
    (``{next: previous}``, each ``[B, N]``) paired in its metadata."""
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", N_IN])]
    inputs += [
        helper.make_tensor_value_info(s, TensorProto.FLOAT, ["B", N]) for s in states.values()
    ]
    outputs = [
        helper.make_tensor_value_info(o, TensorProto.FLOAT, ["B", N]) for o in ("out", *states)
    ]
    graph = helper.make_graph(nodes, name, inputs, outputs, init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.metadata_props.add(key=STATE_KEY, value=json.dumps(states))
    return model


@pytest.mark.parametrize("spike", ["greater", "less", "where"])
@pytest.mark.parametrize("recomputed", [False, True], ids=["spike-state", "recomputed-reset"])
@pytest.mark.parametrize("integrate", [False, True], ids=["lif", "if"])
def test_helper_lifs_lift_in_every_spelling(spike, recomputed, integrate, tmp_path, capsys):
    path = tmp_path / "lif.onnx"
    onnx.save(_helper_lif(spike, recomputed=recomputed, integrate=integrate), path)
    ops = _neuron_ops(capsys, path)
    assert [op for op in ops if op in NEURON_OPS] == ["snu.if" if integrate else "snu.lif_sub"]
    assert not set(ops) & set(LOOSE), ops
    _check_against_onnxruntime(path, seed=2)


def test_a_negative_threshold_keeps_a_recomputed_reset_loose(tmp_path, capsys):
    """H(v_prev - θ) is 1 at the first step when θ < 0: no state of zeros carries it."""
    model = _helper_lif("greater", recomputed=True)
    (theta,) = [t for t in model.graph.initializer if t.name == "theta"]
    theta.CopyFrom(numpy_helper.from_array(np.float32(-0.1), "theta"))
    path = tmp_path / "lif.onnx"
    onnx.save(model, path)
    assert not set(_neuron_ops(capsys, path)) & set(NEURON_OPS)
    _check_against_onnxruntime(path)


def test_a_leaky_integrator_readout_lifts(tmp_path, capsys):
    """A LIF layer read out by a leaky integrator: ``v = a + decay * v_prev``."""
    model = _helper_lif("greater", recomputed=True)
    rng = np.random.default_rng(6)
    weights = (rng.standard_normal((N, N_OUT)) * 0.5).astype(np.float32)
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(weights, "W_out"),
            numpy_helper.from_array(np.float32(0.9), "li_decay"),
        ]
    )
    model.graph.node.extend(
        [
            helper.make_node("MatMul", ["y", "W_out"], ["li_in"]),
            helper.make_node("Mul", ["li_decay", "li_prev"], ["li_leak"]),
            helper.make_node("Add", ["li_in", "li_leak"], ["li"]),
            helper.make_node("Identity", ["li"], ["li_out"]),
        ]
    )
    model.graph.input.append(
        helper.make_tensor_value_info("li_prev", TensorProto.FLOAT, ["B", N_OUT])
    )
    for name in ("li", "li_out"):
        model.graph.output.append(
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", N_OUT])
        )
    model.metadata_props[0].value = json.dumps({"v": "v_prev", "li": "li_prev"})
    path = tmp_path / "li.onnx"
    onnx.save(model, path)
    ops = _neuron_ops(capsys, path)
    assert [op for op in ops if op in NEURON_OPS] == ["snu.lif_sub", "snu.li"]
    _check_against_onnxruntime(path)
