"""A Reshape whose target fixes the time axis to a constant (issue 13 review).

The dynamo exporter writes ``[6, -1, H]`` after an LSTM or GRU exported on 6 steps; the
importer takes the constant for T there (tests/test_rnn.py), or where the model's input
declares the same T, and refuses it elsewhere in one line.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from snuc.frontend.onnx_import import import_onnx
from snuc.ir.errors import SnucError
from snuc.runtime.interpreter import run

FEATURES, HIDDEN, STEPS = 3, 2, 6


def reshaped_input_lstm(steps: int | str) -> onnx.ModelProto:
    """``X[steps, B, F] -> Reshape [6, -1, F] -> LSTM -> Squeeze``: the reshape that fixes
    T sits before the LSTM, on the model's input."""
    rng = np.random.default_rng(0)
    weights = {
        "W": rng.standard_normal((1, 4 * HIDDEN, FEATURES)),
        "R": rng.standard_normal((1, 4 * HIDDEN, HIDDEN)),
        "B": rng.standard_normal((1, 8 * HIDDEN)),
        "shape": np.array([STEPS, -1, FEATURES]),
        "axes": np.array([1]),
    }
    initializers = [
        numpy_helper.from_array(a.astype(np.int64 if a.dtype.kind == "i" else np.float32), n)
        for n, a in weights.items()
    ]
    nodes = [
        helper.make_node("Reshape", ["X", "shape"], ["x6"], name="fix_t"),
        helper.make_node("LSTM", ["x6", "W", "R", "B"], ["Y4"], name="lstm", hidden_size=HIDDEN),
        helper.make_node("Squeeze", ["Y4", "axes"], ["Y"], name="squeeze"),
    ]
    graph = helper.make_graph(
        nodes,
        "fixed_t",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [steps, "B", FEATURES])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [steps, "B", HIDDEN])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_a_fixed_time_reshape_after_no_recurrent_node_is_refused() -> None:
    with pytest.raises(SnucError) as info:
        import_onnx(reshaped_input_lstm("T"))
    message = str(info.value)
    assert "\n" not in message
    assert "fix_t" in message and "fixes the time axis to 6 steps" in message, message


def test_a_fixed_time_reshape_of_the_declared_length_is_per_step() -> None:
    model = reshaped_input_lstm(STEPS)
    x = np.random.default_rng(1).standard_normal((STEPS, 2, FEATURES)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, {"X": x})[0]
    got = run(import_onnx(model), x)
    np.testing.assert_allclose(got["Y"], want, rtol=0, atol=1e-5)
