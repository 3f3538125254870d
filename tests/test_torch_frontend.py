"""The PyTorch frontend: SNU dynamics against NumPy, the pseudo-derivative, ONNX export."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from torch import nn  # noqa: E402

from snuc.frontend import export as export_mod  # noqa: E402
from snuc.frontend.export import STEP_OPS, export, export_step, verify_export  # noqa: E402
from snuc.frontend.layers import (  # noqa: E402
    SNU,
    ConvSNU,
    Readout,
    SNUNetwork,
    heaviside,
    sSNU,
)
from snuc.ir.errors import SnucError  # noqa: E402

# Ops the outer graph of the sequence form may use to build the zero states (SPEC §2).
INIT_OPS = {
    "Shape",
    "Gather",
    "Slice",
    "Concat",
    "Unsqueeze",
    "ConstantOfShape",
    "Expand",
    "Constant",
}


# ------------------------------------------------------------------------------ helpers


def numpy_snu(x, w, b, decay, *, h=None, g="relu", soft=False):
    """SPEC §1 written out in NumPy (float64); returns (y[T, B, N], s[T, B, N])."""
    x = x.astype(np.float64)
    n = w.shape[0]
    s = np.zeros((x.shape[1], n))
    y = np.zeros((x.shape[1], n))
    ys, ss = [], []
    for x_t in x:
        a = x_t @ w.T
        if h is not None:
            a = a + y @ h.T
        v = a + decay * s * (1.0 - y)
        s = np.maximum(v, 0.0) if g == "relu" else v
        y = 1.0 / (1.0 + np.exp(-(s + b))) if soft else (s + b > 0).astype(np.float64)
        ys.append(y)
        ss.append(s)
    return np.stack(ys), np.stack(ss)


def run_layer(layer, x):
    """The layer's forward output and its state ``s`` at every step."""
    with torch.no_grad():
        y = layer(x)
        state, ss = None, []
        for x_t in x.unbind(0):
            _, state = layer.step(x_t, state)
            ss.append(state[0])
    return y.numpy(), torch.stack(ss).numpy()


def params(layer):
    w = layer.weight.detach().double().numpy()
    b = layer.bias.detach().double().numpy()
    decay = layer.effective_decay().detach().double().numpy()
    h = None if layer.recurrent_weight is None else layer.recurrent_weight.detach().double().numpy()
    return w, b, decay, h


def ort_run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})


def scan_body(model):
    (scan,) = [n for n in model.graph.node if n.op_type == "Scan"]
    return onnx.helper.get_attribute_value(next(a for a in scan.attribute if a.name == "body"))


def dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


# ------------------------------------------------------------------- dynamics vs NumPy


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: SNU(5, 7, bias_init=-0.3), id="snu"),
        pytest.param(lambda: sSNU(5, 7, bias_init=-0.3), id="ssnu"),
        pytest.param(lambda: SNU(5, 7, recurrent=True, bias_init=-0.3), id="recurrent-snu"),
        pytest.param(lambda: sSNU(5, 7, recurrent=True, decay=0.4), id="recurrent-ssnu"),
        pytest.param(
            lambda: SNU(5, 7, decay=torch.linspace(0.1, 1.0, 7), bias_init=-0.3),
            id="per-neuron-decay",
        ),
        pytest.param(lambda: SNU(5, 7, g="identity", bias_init=-0.3), id="identity-g"),
        pytest.param(
            lambda: SNU(5, 7, decay=0.5, decay_trainable=True, bias_init=-0.3),
            id="trainable-decay",
        ),
    ],
)
def test_dynamics_match_numpy(make):
    torch.manual_seed(1)
    layer = make()
    x = torch.randn(12, 3, 5)
    y, s = run_layer(layer, x)
    w, b, decay, h = params(layer)
    y_ref, s_ref = numpy_snu(x.numpy(), w, b, decay, h=h, g=layer.g, soft=layer.soft)
    np.testing.assert_allclose(s, s_ref, atol=1e-5)
    if layer.soft:
        np.testing.assert_allclose(y, y_ref, atol=1e-6)
    else:
        np.testing.assert_array_equal(y, y_ref)
        assert 0.05 < y.mean() < 0.95  # the test says nothing unless neurons spike and rest


def test_reset_after_spike_and_relu_floor():
    layer = SNU(1, 1, decay=0.5, bias_init=-1.0)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    x = torch.tensor([0.6, 0.6, 0.0, -3.0, 0.2]).reshape(5, 1, 1)
    y, s = run_layer(layer, x)
    # s: 0.6; 0.6 + 0.3 = 0.9; 0.45; relu(-3 + 0.225) = 0; 0.2.  A 2.0 input spikes:
    np.testing.assert_allclose(s.ravel(), [0.6, 0.9, 0.45, 0.0, 0.2], atol=1e-6)
    assert y.ravel().tolist() == [0, 0, 0, 0, 0]
    x = torch.tensor([2.0, 0.5]).reshape(2, 1, 1)
    y, s = run_layer(layer, x)
    assert y.ravel().tolist() == [1, 0]
    np.testing.assert_allclose(s.ravel(), [2.0, 0.5], atol=1e-6)  # reset: no leak after a spike


def test_conv_snu_with_1x1_kernel_is_an_snu_per_pixel():
    torch.manual_seed(2)
    conv = ConvSNU(3, 4, 1, decay=torch.tensor([0.2, 0.5, 0.8, 1.0]), bias_init=-0.2)
    dense = SNU(3, 4, decay=torch.tensor([0.2, 0.5, 0.8, 1.0]), bias_init=-0.2)
    with torch.no_grad():
        dense.weight.copy_(conv.weight[:, :, 0, 0])
    x = torch.randn(6, 2, 3, 5, 5)
    y_conv, _ = run_layer(conv, x)
    x_pixels = x.permute(0, 1, 3, 4, 2).reshape(6, 2 * 25, 3)
    y_dense, _ = run_layer(dense, x_pixels)
    y_dense = y_dense.reshape(6, 2, 5, 5, 4).transpose(0, 1, 4, 2, 3)
    np.testing.assert_array_equal(y_conv, y_dense)
    assert 0.05 < y_conv.mean() < 0.95


# ------------------------------------------------------------------- training


def test_pseudo_derivative_is_tanh_derivative():
    v = torch.linspace(-3, 3, 25, dtype=torch.float64, requires_grad=True)
    y = heaviside(v)
    assert y.tolist() == (v > 0).double().tolist()
    y.sum().backward()
    expected = 1 - torch.tanh(v.detach()) ** 2
    torch.testing.assert_close(v.grad, expected)


def test_snu_gradients_flow_to_every_parameter():
    torch.manual_seed(3)
    net = SNUNetwork(SNU(4, 6, recurrent=True, decay_trainable=True, bias_init=-0.2), Readout(6, 2))
    x = torch.randn(8, 3, 4)
    net(x).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_trainable_decay_is_clamped_into_range():
    layer = SNU(2, 3, decay=0.5, decay_trainable=True)
    with torch.no_grad():
        layer.decay.fill_(1.7)
    assert layer.effective_decay().item() == 1.0
    with torch.no_grad():
        layer.decay.fill_(-0.3)
    assert 0 < layer.effective_decay().item() < 1e-3


# ------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: SNU(2, 3, decay=0.0), "(0, 1]"),
        (lambda: SNU(2, 3, decay=1.5), "(0, 1]"),
        (lambda: SNU(2, 3, decay=torch.ones(4) * 0.5), "shape [3]"),
        (lambda: SNU(2, 3, g="tanh"), "g='tanh'"),
        (lambda: Readout(2, 3, activation="relu"), "activation='relu'"),
        (lambda: SNUNetwork(SNU(2, 3), nn.Flatten(start_dim=2)), "nn.Flatten"),
        (lambda: SNUNetwork(), "at least one layer"),
    ],
)
def test_bad_layer_arguments_raise(make, words):
    with pytest.raises(SnucError) as info:
        make()
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_forward_needs_a_time_major_sequence():
    with pytest.raises(SnucError, match=r"x\[T, B"):
        SNU(2, 3)(torch.zeros(0, 1, 2))


# ------------------------------------------------------------------- export


def feed_forward():
    torch.manual_seed(4)
    return SNUNetwork(SNU(6, 8, bias_init=-0.3), SNU(8, 4, bias_init=-0.2))


def test_export_feed_forward_snu_stack(tmp_path):
    net = feed_forward()
    path = export(net, tmp_path / "ff.onnx")
    assert path == tmp_path / "ff.onnx"
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    x = (torch.rand(20, 3, 6) < 0.5).float()
    (y,) = ort_run(path, x)
    with torch.no_grad():
        np.testing.assert_array_equal(y, net(x).numpy())
    assert 0 < y.mean() < 1
    assert [p.name for p in tmp_path.iterdir()] == ["ff.onnx"]  # no temporary left


def test_sequence_form_structure_and_symbolic_time_and_batch(tmp_path):
    net = feed_forward()
    model = onnx.load(export(net, tmp_path / "ff.onnx"))
    graph = model.graph
    assert [v.name for v in graph.input] == ["X"] and [v.name for v in graph.output] == ["Y"]
    assert dims(graph.input[0]) == ["T", "B", 6]
    assert dims(graph.output[0]) == ["T", "B", 4]
    assert {n.op_type for n in graph.node} - INIT_OPS == {"Scan"}
    assert not graph.initializer  # the weights live in the body, a complete step graph
    body = scan_body(model)
    assert {n.op_type for n in body.node} <= STEP_OPS
    assert {"Gemm", "Greater", "Cast", "Relu", "Mul", "Sub"} <= {n.op_type for n in body.node}
    assert [v.name for v in body.input] == [
        "layers.0.s",
        "layers.0.y",
        "layers.1.s",
        "layers.1.y",
        "x_t",
    ]
    assert [v.name for v in body.output][-1] == "out_t"
    assert all(dims(v)[0] == "B" for v in body.input)
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in body.initializer)
    layers = json.loads({p.key: p.value for p in model.metadata_props}["snuc.layers"])
    assert [(entry["kind"], entry["h"]) for entry in layers] == [("snu", "step")] * 2
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for length, batch in [(5, 2), (13, 4)]:
        x = torch.randn(length, batch, 6)
        (y,) = session.run(None, {"X": x.numpy()})
        with torch.no_grad():
            np.testing.assert_array_equal(y, net(x).numpy())


def test_export_ssnu(tmp_path):
    torch.manual_seed(5)
    net = SNUNetwork(sSNU(5, 6, decay=torch.linspace(0.3, 0.9, 6)), sSNU(6, 3, g="identity"))
    path = export(net, tmp_path / "ssnu.onnx")
    ops = {n.op_type for n in scan_body(onnx.load(path)).node}
    assert "Sigmoid" in ops and "Greater" not in ops


def test_export_recurrent_snu(tmp_path):
    torch.manual_seed(6)
    decay = torch.linspace(0.2, 0.9, 6)
    snu = SNU(5, 6, recurrent=True, decay=decay, decay_trainable=True, bias_init=-0.2)
    net = SNUNetwork(snu, Readout(6, 3, "identity"))
    path = export(net, tmp_path / "rec.onnx")
    body = scan_body(onnx.load(path))
    gemm_inputs = [n.input[0] for n in body.node if n.op_type == "Gemm"]
    assert "layers.0.y" in gemm_inputs  # H y_{t-1}
    # The trainable decay's clamp is folded into a constant: no Clip in the body.
    assert any(
        list(t.dims) == [6] and np.allclose(onnx.numpy_helper.to_array(t), decay)
        for t in body.initializer
    )


def test_export_conv_snu_with_pooling_flatten_and_readout(tmp_path):
    torch.manual_seed(7)
    net = SNUNetwork(
        ConvSNU(1, 2, 3, padding=1, bias_init=-0.2, decay=torch.tensor([0.5, 0.9])),
        nn.MaxPool2d(2),
        ConvSNU(2, 3, 3, padding=1, bias_init=-0.2),
        nn.AvgPool2d(2),
        nn.Flatten(),
        SNU(12, 5, bias_init=-0.1),
        Readout(5, 3, "log_softmax"),
    )
    path = export(net, tmp_path / "conv.onnx", input_features=(1, 8, 8), check_lengths=(1, 9))
    model = onnx.load(path)
    assert dims(model.graph.input[0]) == ["T", "B", 1, 8, 8]
    ops = {n.op_type for n in scan_body(model).node}
    assert {"Conv", "MaxPool", "AveragePool", "Reshape", "LogSoftmax"} <= ops


def test_export_token_ids_through_embedding(tmp_path):
    torch.manual_seed(8)
    net = SNUNetwork(nn.Embedding(11, 4), SNU(4, 6, bias_init=-0.2), Readout(6, 11, "softmax"))
    path = export(net, tmp_path / "lm.onnx", check_lengths=(1, 7, 20))
    model = onnx.load(path)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert dims(model.graph.input[0]) == ["T", "B"]
    assert "Gather" in {n.op_type for n in scan_body(model).node}
    x = torch.randint(0, 11, (9, 2))
    (y,) = ort_run(path, x)
    with torch.no_grad():
        np.testing.assert_allclose(y, net(x).numpy(), atol=1e-6)


def test_export_step_form(tmp_path):
    torch.manual_seed(9)
    net = SNUNetwork(sSNU(4, 5, recurrent=True, decay=0.4, g="identity"), Readout(5, 2))
    path = export_step(net, tmp_path / "step.onnx")
    model = onnx.load(path)
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["snuc.state"]) == {
        "layers.0.s_next": "layers.0.s",
        "layers.0.y_next": "layers.0.y",
    }
    assert [v.name for v in model.graph.input] == ["x_t", "layers.0.s", "layers.0.y"]
    assert [v.name for v in model.graph.output] == ["out_t", "layers.0.s_next", "layers.0.y_next"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(6, 3, 4)
    s = y = np.zeros((3, 5), np.float32)
    outs = []
    for x_t in x.numpy():
        out, s, y = session.run(None, {"x_t": x_t, "layers.0.s": s, "layers.0.y": y})
        outs.append(out)
    with torch.no_grad():
        np.testing.assert_allclose(np.stack(outs), net(x).numpy(), atol=1e-6)


def test_a_single_layer_exports_as_a_network(tmp_path):
    torch.manual_seed(10)
    path = export(SNU(3, 4, bias_init=-0.2), tmp_path / "one.onnx", check_lengths=(1, 5))
    assert [v.name for v in scan_body(onnx.load(path)).input] == ["layers.0.s", "layers.0.y", "x_t"]


# ------------------------------------------------------------------- failing loudly


def test_export_fails_when_the_reference_differs(tmp_path, monkeypatch):
    real = export_mod._export_step_graph

    def export_then_change_a_weight(net, sig, opset):
        model = real(net, sig, opset)
        with torch.no_grad():
            net.layers[1].weight[0, 0] += 0.5  # PyTorch now computes something else
        return model

    monkeypatch.setattr(export_mod, "_export_step_graph", export_then_change_a_weight)
    target = tmp_path / "ff.onnx"
    target.write_bytes(b"the previous model")
    with pytest.raises(SnucError, match=r"T=\d+, B=\d+") as info:
        export(feed_forward(), target)
    assert "differs from PyTorch by" in str(info.value)
    assert "\n" not in str(info.value)
    assert target.read_bytes() == b"the previous model"  # replaced only after the check
    assert [p.name for p in tmp_path.iterdir()] == ["ff.onnx"]


def test_verify_export_catches_a_changed_model(tmp_path):
    net = SNUNetwork(sSNU(4, 5, recurrent=True), Readout(5, 2, "identity"))
    path = export(net, tmp_path / "m.onnx", verify=False)
    verify_export(net, path, check_lengths=(3,))
    with torch.no_grad():
        net.layers[0].recurrent_weight[1, 2] += 1e-3
    with pytest.raises(SnucError, match=r"at T=3, B=1"):
        verify_export(net, path, check_lengths=(3,))


def test_unsupported_op_is_named(tmp_path):
    net = SNUNetwork(SNU(4, 4), nn.Hardtanh())
    with pytest.raises(SnucError, match=r"op Clip .*supported: Add"):
        export(net, tmp_path / "bad.onnx")
    assert not list(tmp_path.iterdir())


def test_layer_size_mismatch_names_the_layer(tmp_path):
    with pytest.raises(SnucError, match=r"layers\.1 \(SNU\)"):
        export(SNUNetwork(SNU(4, 4), SNU(5, 2)), tmp_path / "bad.onnx")


def test_conv_input_shape_must_be_given(tmp_path):
    with pytest.raises(SnucError, match="input_features"):
        export(SNUNetwork(ConvSNU(1, 2, 3)), tmp_path / "bad.onnx")


def test_missing_directory_is_an_error(tmp_path):
    with pytest.raises(SnucError, match="does not exist"):
        export(feed_forward(), tmp_path / "nowhere" / "ff.onnx", verify=False)


def test_verify_export_rejects_a_file_that_is_not_onnx(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"garbage\x00\xff\x12")
    with pytest.raises(SnucError, match="is not an ONNX model"):
        verify_export(feed_forward(), path)


def test_check_sizes_must_be_positive(tmp_path):
    with pytest.raises(SnucError, match="check_batches"):
        export(feed_forward(), tmp_path / "ff.onnx", check_batches=(0,))
    assert not list(tmp_path.iterdir())
