"""Zero resets spelled as exporters and hand-written models write them (issue 12):
``x - x * y`` and ``Where(y, 0, x)`` lift to ``snu.layer`` like ``x * (1 - y)``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from cli_helpers import run_cli
from onnx import TensorProto, helper
from test_lift_neurons import (
    LOOSE,
    _check_against_onnxruntime,
    _neuron_ops,
    lif_initializers,
    step_model,
)

from snuc.ir.neurons import NEURON_OPS


def _zero_reset_lif(reset: str) -> onnx.ModelProto:
    """``v = a + decay * reset(v_prev, y_prev)``, ``y = H(v - θ)``, both states, with the
    reset spelled ``sub`` (``v - v * y``), ``mul`` (``v * (1 - y)``) or ``where``
    (``Where(Cast(y, bool), 0, v)``)."""
    init = lif_initializers(np.random.default_rng(8))
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"])]
    if reset == "sub":
        nodes.append(helper.make_node("Mul", ["y_prev", "v_prev"], ["vy"]))
        nodes.append(helper.make_node("Sub", ["v_prev", "vy"], ["kept"]))
    elif reset == "mul":
        nodes.append(helper.make_node("Sub", ["one", "y_prev"], ["keep"]))
        nodes.append(helper.make_node("Mul", ["v_prev", "keep"], ["kept"]))
    else:
        nodes.append(helper.make_node("Cast", ["y_prev"], ["fired"], to=TensorProto.BOOL))
        nodes.append(helper.make_node("Where", ["fired", "zero", "v_prev"], ["kept"]))
    nodes += [
        helper.make_node("Mul", ["decay", "kept"], ["leak"]),
        helper.make_node("Add", ["a", "leak"], ["v"]),
        helper.make_node("Greater", ["v", "theta"], ["fire"]),
        helper.make_node("Cast", ["fire"], ["y"], to=TensorProto.FLOAT),
        helper.make_node("Identity", ["y"], ["out"]),
    ]
    return step_model("zero_reset", nodes, init, {"v": "v_prev", "y": "y_prev"})


@pytest.mark.parametrize("reset", ["mul", "sub", "where"])
def test_zero_reset_spellings_lift_to_the_snu(reset, tmp_path, capsys):
    path = tmp_path / "zero.onnx"
    onnx.save(_zero_reset_lif(reset), path)
    ops = _neuron_ops(capsys, path)
    assert [op for op in ops if op in NEURON_OPS] == ["snu.layer"]
    assert not set(ops) & set(LOOSE), ops
    _check_against_onnxruntime(path, seed=4)


@pytest.mark.parametrize("relu", ["Clip", "Max"])
def test_an_snu_with_relu_spelled_clip_or_max_lifts(relu, tmp_path, capsys):
    """g = ReLU spelled Clip(x, 0) or Max(x, 0), as torch.clamp exports it; canonicalize
    rewrites them to dig.relu (the ops engineer's work: skipped until the op imports)."""
    model = _zero_reset_lif("mul")
    nodes = list(model.graph.node)
    (k,) = [i for i, n in enumerate(nodes) if n.output[0] == "v"]
    nodes[k].output[0] = "pre"
    nodes.insert(k + 1, helper.make_node(relu, ["pre", "zero"], ["v"]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    path = tmp_path / "relu.onnx"
    onnx.save(model, path)
    status, _, err = run_cli(capsys, "compile", str(path), "--emit", "ir")
    if status != 0 and f"op {relu} is not supported" in err:
        pytest.skip(f"ONNX {relu} is not imported yet (the ops engineer adds it)")
    ops = _neuron_ops(capsys, path)
    assert [op for op in ops if op in NEURON_OPS] == ["snu.layer"]
    assert "dig.relu" not in ops and "dig.clip" not in ops and "dig.max" not in ops
    _check_against_onnxruntime(path, seed=4)
