"""Sequence-level ONNX LSTM and GRU nodes through the compiler (SPEC §2.1).

``nn.LSTM`` and ``nn.GRU`` exported by ``torch.onnx.export`` (the legacy exporter and the
dynamo one) compile; ``float`` equals onnxruntime, and in ``quantized`` and ``pcm`` the
NumPy backend and the simulator equal the interpreter bit for bit. The attributes torch
never writes are one-line errors.
"""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import snuc
from snuc.datasets import jsb_nll, load_jsb, pad_sequences
from snuc.ir import SnucError
from snuc.ir.target import TargetSpec
from snuc.runtime.interpreter import run as interpret

torch = pytest.importorskip("torch")

FEATURES, HIDDEN, OUT = 5, 4, 3
TARGET = "pcm-16x16"  # small crossbars: W and R split into several tiles
MODELS = Path(__file__).resolve().parents[1] / "examples" / "models"
DYNAMO_STEPS = 6  # the dynamo exporter fixes the sequence length to the example's


class Recurrent(torch.nn.Module):
    """An ``nn.LSTM`` or ``nn.GRU`` of ``layers`` layers and a sigmoid readout."""

    def __init__(self, kind: str, layers: int, bias: bool = True) -> None:
        super().__init__()
        self.rnn = getattr(torch.nn, kind)(FEATURES, HIDDEN, num_layers=layers, bias=bias)
        self.readout = torch.nn.Linear(HIDDEN, OUT)

    def forward(self, x):
        y, _ = self.rnn(x)
        return torch.sigmoid(self.readout(y))


@functools.cache
def exported(kind: str, layers: int, dynamo: bool = False, bias: bool = True) -> bytes:
    """The serialized ONNX export of a seeded :class:`Recurrent` (input ``x``, output ``y``)."""
    torch.manual_seed(layers)
    model = Recurrent(kind, layers, bias).eval()
    x = torch.randn(DYNAMO_STEPS, 2, FEATURES)
    options = {"input_names": ["x"], "output_names": ["y"], "dynamo": dynamo}
    if dynamo:
        pytest.importorskip("onnxscript")
        dim = torch.export.Dim.DYNAMIC
        options["dynamic_shapes"] = ({0: dim, 1: dim},)
    else:
        options["dynamic_axes"] = {"x": {0: "T", 1: "B"}, "y": {0: "T", 1: "B"}}
    path = Path(__import__("tempfile").mkdtemp()) / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, **options)
    return onnx.load(path).SerializeToString()


def model(kind: str, layers: int = 1, **options) -> onnx.ModelProto:
    return onnx.ModelProto.FromString(exported(kind, layers, **options))


def recurrent_node(proto: onnx.ModelProto) -> onnx.NodeProto:
    return next(n for n in proto.graph.node if n.op_type in ("LSTM", "GRU"))


def inputs(steps: int, batch: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((steps, batch, FEATURES)).astype(np.float32)


def onnxruntime_output(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {proto.graph.input[0].name: x})[0]


def assert_float_equals_onnxruntime(proto: onnx.ModelProto, steps: int) -> None:
    art = snuc.compile(proto, target=TARGET)
    for seed in range(2):
        x = inputs(steps, seed=seed)
        np.testing.assert_allclose(
            art.run(x, mode="float"), onnxruntime_output(proto, x), rtol=0, atol=1e-5
        )


# --------------------------------------------------------------------------- float


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("layers", [1, 2])
def test_legacy_exports_equal_onnxruntime_for_any_length(kind, layers):
    for steps in (1, 9, 17):
        assert_float_equals_onnxruntime(model(kind, layers), steps)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("layers", [1, 2])
def test_dynamo_exports_equal_onnxruntime(kind, layers):
    # The dynamo exporter fixes T in the reshape after the node; onnxruntime runs only it.
    proto = model(kind, layers, dynamo=True)
    assert recurrent_node(proto).op_type == kind
    assert_float_equals_onnxruntime(proto, DYNAMO_STEPS)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_a_torch_module_compiles_and_runs_any_length_as_pytorch(kind):
    torch.manual_seed(3)
    net = Recurrent(kind, 2).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        art = snuc.compile(net, example=torch.randn(DYNAMO_STEPS, 2, FEATURES))
    for steps in (DYNAMO_STEPS, 2 * DYNAMO_STEPS + 1):
        x = inputs(steps)
        want = net(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(art.run(x, mode="float"), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_without_biases_and_initial_states(kind):
    proto = model(kind, bias=False)
    node = recurrent_node(proto)
    assert len(node.input) < 4 or not node.input[3]
    del node.input[4:]  # no sequence_lens, no initial states: zeros by definition
    assert_float_equals_onnxruntime(proto, 7)


def test_gru_with_the_reset_gate_before_the_product():
    proto = model("GRU")
    node = recurrent_node(proto)
    (lbr,) = [a for a in node.attribute if a.name == "linear_before_reset"]
    lbr.i = 0
    assert_float_equals_onnxruntime(proto, 7)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_hidden_states_are_ir_states(kind):
    art = snuc.compile(model(kind, 2), target=TARGET)
    states = [s.name for s in art.graph.states]
    assert len(states) == (4 if kind == "LSTM" else 2)


# --------------------------------------------------------------------------- chip modes


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("mode", ["quantized", "pcm"])
def test_backends_equal_the_interpreter_bit_for_bit(kind, layers, mode):
    art = snuc.compile(model(kind, layers), target=TARGET)
    target = TargetSpec.from_dict(art.target)
    x = inputs(8, batch=2, seed=3)
    (want,) = interpret(art.graph, x, mode=mode, seed=5, target=target).values()
    np.testing.assert_array_equal(art.run(x, mode=mode, seed=5), want)
    np.testing.assert_array_equal(art.run(x, mode=mode, seed=5, backend="sim"), want)
    float_error = np.abs(want - onnxruntime_output(model(kind, layers), x)).max()
    assert 0 < float_error < 0.2  # the chip's error is there, and bounded


# --------------------------------------------------------------------------- shipped models


@pytest.mark.parametrize("name", ["jsb_lstm", "jsb_gru"])
def test_shipped_jsb_models_equal_onnxruntime_on_the_test_split(name, data_dir):
    path = MODELS / f"{name}.onnx"
    X, lengths = pad_sequences(load_jsb("test", data_dir))
    got = snuc.compile(path).run(X, mode="float")
    np.testing.assert_allclose(got, onnxruntime_output(onnx.load(path), X), rtol=0, atol=1e-5)
    pytorch_nll = json.loads(path.with_suffix(".json").read_text())["test"]
    assert jsb_nll(got, X, lengths) == pytest.approx(pytorch_nll, abs=1e-5)


# --------------------------------------------------------------------------- errors


def one_line_error(proto: onnx.ModelProto) -> str:
    with pytest.raises(SnucError) as err:
        snuc.compile(proto, target=TARGET)
    message = str(err.value)
    assert message and "\n" not in message
    return message


def with_attribute(proto: onnx.ModelProto, **attributes) -> onnx.ModelProto:
    node = recurrent_node(proto)
    for name, value in attributes.items():
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute(name, value)])
    return proto


@pytest.mark.parametrize(
    ("attributes", "words"),
    [
        ({"direction": "reverse"}, "direction 'reverse'"),
        ({"layout": 1}, "layout 1"),
        ({"clip": 3.0}, "clip"),
        ({"input_forget": 1}, "input_forget"),
        ({"activations": ["Sigmoid", "Relu", "Tanh"]}, "custom activations"),
        ({"activation_alpha": [0.5]}, "custom activations"),
    ],
)
def test_attributes_torch_never_writes_are_refused(attributes, words):
    proto = with_attribute(model("LSTM"), **attributes)
    assert words in one_line_error(proto)


def test_bidirectional_layers_are_refused():
    torch.manual_seed(0)
    net = torch.nn.GRU(FEATURES, HIDDEN, bidirectional=True)
    path = Path(__import__("tempfile").mkdtemp()) / "bi.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.randn(4, 2, FEATURES),),
            path,
            input_names=["x"],
            dynamo=False,
            dynamic_axes={"x": {0: "T", 1: "B"}},
        )
    assert "direction 'bidirectional'" in one_line_error(onnx.load(path))


def test_nonzero_initial_states_are_refused():
    proto = model("GRU")
    for node in proto.graph.node:
        if node.op_type == "ConstantOfShape":
            node.attribute[0].t.CopyFrom(numpy_helper.from_array(np.ones(1, np.float32)))
    assert "initial state" in one_line_error(proto)


def test_sequence_lengths_and_peepholes_are_refused():
    proto = model("LSTM")
    node = recurrent_node(proto)
    proto.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.int32), "lens"))
    node.input[4] = "lens"
    assert "sequence_lens" in one_line_error(proto)
    proto = model("LSTM")
    node = recurrent_node(proto)
    proto.graph.initializer.append(
        numpy_helper.from_array(np.zeros((1, 3 * HIDDEN), np.float32), "P")
    )
    node.input.append("P")
    assert "peephole" in one_line_error(proto)


def test_weights_that_do_not_fit_hidden_size_are_refused():
    proto = with_attribute(model("GRU"), hidden_size=HIDDEN + 1)
    # The ONNX checker does not relate shapes; onnxruntime would fail at run time.
    assert "hidden_size 5" in one_line_error(proto)


def test_the_ops_list_names_lstm_and_gru():
    from snuc.frontend.onnx_import import SUPPORTED_OPS

    assert {"LSTM", "GRU"} <= set(SUPPORTED_OPS)
