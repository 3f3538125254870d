"""Tests of the ONNX importer: errors, the two forms, lowering of each op, and numbers.

Numerical checks run the imported step graph with the reference interpreter and the ONNX
model with onnxruntime on random inputs: float outputs agree within 1e-5, spikes exactly.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_models as models  # tests/ is on sys.path under pytest (no __init__.py)
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from snuc.frontend.onnx_import import SUPPORTED_OPS, import_onnx
from snuc.ir.errors import SnucError
from snuc.ir.graph import Graph
from snuc.ir.types import TensorType
from snuc.runtime.interpreter import run

SPEC_STEP_OPS = {
    "MatMul", "Gemm", "Conv", "Gather", "Add", "Sub", "Mul", "Div", "Neg", "Relu",
    "LeakyRelu", "Sigmoid", "Tanh", "Greater", "GreaterOrEqual", "Less", "Cast", "Where",
    "Identity", "Constant", "Flatten", "Reshape", "Transpose", "Concat", "Squeeze",
    "Unsqueeze", "MaxPool", "AveragePool", "ReduceSum", "ReduceMean", "Softmax", "LogSoftmax",
}  # fmt: skip
"""The ops SPEC §2 says a step body may use."""


# ---------------------------------------------------------------------- helpers


def _error(model, match: str, **kwargs) -> str:
    """Import ``model`` expecting a one-line SnucError whose message contains ``match``."""
    with pytest.raises(SnucError) as info:
        import_onnx(model, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert match in message, message
    return message


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _ort_sequence(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """onnxruntime on a sequence-form model: one call on the whole ``X[T, B, ...]``."""
    session = _session(model)
    outputs = session.run(None, {session.get_inputs()[0].name: x})
    return {o.name: v for o, v in zip(session.get_outputs(), outputs, strict=True)}


def _ort_steps(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """onnxruntime on a step-form model, looped over time with zero initial states."""
    session = _session(model)
    meta = {p.key: p.value for p in model.metadata_props}
    pairs = json.loads(meta.get(models.STATE_KEY, "{}"))
    inputs = {i.name: i for i in session.get_inputs()}
    (x_name,) = [name for name in inputs if name not in pairs.values()]
    steps, batch = x.shape[:2]
    states = {
        name: np.zeros([batch, *inputs[name].shape[1:]], np.float32) for name in pairs.values()
    }
    names = [o.name for o in session.get_outputs()]
    stacked: dict[str, list[np.ndarray]] = {n: [] for n in names if n not in pairs}
    for t in range(steps):
        results = dict(zip(names, session.run(None, {x_name: x[t], **states}), strict=True))
        for name in stacked:
            stacked[name].append(results[name])
        states = {inp: results[out] for out, inp in pairs.items()}
    return {name: np.stack(values) for name, values in stacked.items()}


def _compare(model: onnx.ModelProto, x: np.ndarray, *, spikes: bool = False) -> dict:
    """Import ``model``, run both sides, and check every output; returns the outputs."""
    graph = import_onnx(model)
    sequence = any(n.op_type == "Scan" for n in model.graph.node)
    want = _ort_sequence(model, x) if sequence else _ort_steps(model, x)
    got = run(graph, x)
    for name, value in want.items():
        if sequence and name.startswith("final/"):
            continue
        assert got[name].shape == value.shape, name
        if spikes:
            np.testing.assert_array_equal(got[name], value, err_msg=name)
        else:
            np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-5, err_msg=name)
    return got


def _ops(graph: Graph) -> list[str]:
    return [node.op.NAME for node in graph.nodes()]


def _random(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------- loading errors


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "absent.onnx"
    message = _error(path, "no such file")
    assert str(path) in message


def test_directory_is_not_a_model(tmp_path):
    _error(tmp_path, "is not a file")


def test_text_file_is_not_onnx(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a model\n")
    message = _error(path, "not an ONNX file")
    assert str(path) in message


def test_random_bytes_are_not_onnx(tmp_path):
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _error(path, str(path))


def test_truncated_file_is_reported(tmp_path):
    data = models.snu_step_model().SerializeToString()
    path = tmp_path / "half.onnx"
    path.write_bytes(data[: len(data) // 2])
    message = _error(path, "truncated")
    assert str(path) in message


def test_model_file_loads_from_path(tmp_path):
    path = tmp_path / "ok.onnx"
    onnx.save(models.snu_step_model(), path)
    assert import_onnx(path) == import_onnx(str(path)) == import_onnx(models.snu_step_model())


def test_checker_rejection_is_reported():
    model = models.single_op_model("Relu", (3,))
    model.graph.node[0].input[0] = "undefined_value"
    _error(model, "ONNX checker rejects")


def test_unsupported_op_names_op_node_and_supported_list():
    message = _error(models.single_op_model("Erf", (3,)), "Erf")
    assert "'erf'" in message  # the node's name
    assert "supports" in message and "MatMul" in message and "Softmax" in message


def test_unsupported_op_in_scan_body_is_named():
    model = models.snu_scan_model()
    body = next(a.g for a in model.graph.node[-1].attribute if a.name == "body")
    relu = next(n for n in body.node if n.op_type == "Relu")
    relu.op_type = "Erf"  # Softplus is supported since issue 12
    _error(model, "Erf")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weight_names_the_initializer(bad):
    model = models.snu_step_model()
    weights = next(t for t in model.graph.initializer if t.name == "l0.W")
    array = numpy_helper.to_array(weights).copy()
    array[1, 2] = bad
    weights.CopyFrom(numpy_helper.from_array(array, "l0.W"))
    _error(model, "'l0.W'")


def test_non_finite_weight_in_scan_body_is_found():
    model = models.snu_scan_model()
    body = next(a.g for a in model.graph.node[-1].attribute if a.name == "body")
    bias = next(t for t in body.initializer if t.name == "l0.b")
    bias.CopyFrom(numpy_helper.from_array(np.full(5, -np.inf, np.float32), "l0.b"))
    _error(model, "'l0.b' holds Inf")


def test_non_finite_constant_node_is_named():
    spec = models.StepSpec(x=("x", TensorProto.FLOAT, (3,)))
    spec.node("Constant", [], "scale", "Constant", value_floats=[1.0, np.nan, 2.0])
    spec.node("Mul", ["x", "scale"], "y", "Mul")
    spec.output = ("y", (3,))
    _error(models.as_step_model(spec, "nan_constant", metadata=False), "'scale' holds NaN")


def test_input_of_unsupported_element_type_is_named():
    model = models.single_op_model("Relu", (3,), x_elem=TensorProto.FLOAT16)
    _error(model, "input 'x' has element type FLOAT16")


def test_non_zero_initial_state_is_named():
    message = _error(models.snu_scan_model(init_value=0.25), "is not zero")
    assert "'init/state_0'" in message and "'scan'" in message


def test_dynamic_feature_dimension_names_the_input():
    model = models.snu_step_model()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "F"
    message = _error(model, "'x'")
    assert "'F'" in message and "axis 1" in message


def test_unresolvable_shape_computation_names_the_value():
    _error(models.shape_computation_model("unresolvable"), "'batch_plus_one'")


def test_state_pairing_with_missing_output_lists_outputs():
    message = _error(
        models.snu_step_model(metadata=False), "'l0.s_nxt'", state_pairs={"l0.s_nxt": "l0.s"}
    )
    assert "y, l0.s_next, l0.y_next" in message


def test_state_pairing_with_missing_input_lists_inputs():
    message = _error(
        models.snu_step_model(metadata=False), "'s_prev'", state_pairs={"l0.s_next": "s_prev"}
    )
    assert "x, l0.s, l0.y" in message


def test_metadata_pairing_that_is_not_json_is_reported():
    model = models.snu_step_model()
    model.metadata_props[0].value = "{l0.s_next: l0.s"
    _error(model, "snuc.state")


def test_state_must_keep_its_type():
    message = _error(
        models.snu_step_model(metadata=False), "must keep its type", state_pairs={"l0.s_next": "x"}
    )
    assert "'l0.s_next'" in message and "f32[B, 6]" in message


def test_step_model_needs_a_sequence_input():
    _error(models.dense_model(n_in=4, n_out=3), "every input is a state", state_pairs={"y": "x"})


@pytest.mark.parametrize(
    ("attrs", "match"),
    [
        ({"scan_input_axes": [1]}, "scan_input_axes"),
        ({"scan_input_directions": [1]}, "scan_input_directions"),
        ({"scan_output_directions": [1]}, "scan_output_directions"),
        ({"scan_output_axes": [1]}, "scan_output_axes"),
    ],
)
def test_scan_must_run_forward_over_axis_0(attrs, match):
    message = _error(models.snu_scan_model(scan_attrs=attrs), match)
    assert "'scan'" in message


def test_state_pairs_are_rejected_for_sequence_form():
    _error(models.snu_scan_model(), "sequence form", state_pairs={"a": "b"})


def test_op_mixing_timesteps_after_scan_names_the_node():
    message = _error(models.snu_scan_model(readout="time_sum"), "'out/ReduceSum'")
    assert "timesteps" in message


def test_using_a_final_scan_state_is_an_error():
    model = models.snu_scan_model(final_states_as_outputs=True)
    model.graph.node.append(helper.make_node("Relu", ["final/l0.s"], ["r"], name="use_final"))
    model.graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, ["B", 5]))
    _error(model, "final state")


# ---------------------------------------------------------------------- step form


def test_step_form_with_metadata_structure():
    graph = import_onnx(models.snu_step_model(n_in=6, n_hidden=5))
    assert graph.name == "snu_step"
    assert graph.inputs == ["x"]
    assert graph.type_of("x") == TensorType("f32", ("B", 6))
    assert [(s.name, s.next) for s in graph.states] == [("l0.s", "l0.s_next"), ("l0.y", "y")]
    assert graph.outputs == ["y"]
    for value in ("l0.s", "l0.y", "l0.s_next", "y"):
        assert graph.type_of(value) == TensorType("f32", ("B", 5))
    assert _ops(graph) == [
        "xbar.dense",
        "dig.sub",
        "dig.mul",
        "dig.mul",
        "dig.add",
        "dig.relu",
        "dig.add",
        "dig.greater",
        "dig.cast",
    ]
    assert graph.producer("l0_a").inputs == ("x", "l0.W")
    assert graph.producer("l0_a").loc.source == "onnx:l0/MatMul"


def test_step_form_with_state_pairs_equals_metadata():
    pairs = {"l0.s_next": "l0.s", "l0.y_next": "l0.y"}
    from_args = import_onnx(models.snu_step_model(metadata=False), state_pairs=pairs)
    assert from_args == import_onnx(models.snu_step_model())


def test_state_pairs_override_metadata():
    graph = import_onnx(models.snu_step_model(), state_pairs={"l0.s_next": "l0.s"})
    assert graph.inputs == ["x", "l0.y"]
    assert [s.name for s in graph.states] == ["l0.s"]
    assert graph.outputs == ["y"]  # l0.y_next is an Identity of y


def test_step_form_without_pairing_has_no_states():
    graph = import_onnx(models.snu_step_model(metadata=False))
    assert graph.inputs == ["x", "l0.s", "l0.y"]
    assert graph.states == []
    assert graph.outputs == ["y", "l0.s_next"]


def test_every_node_keeps_its_onnx_name_as_location():
    model = models.snu_step_model(recurrent=True)
    names = {f"onnx:{n.name}" for n in model.graph.node}
    graph = import_onnx(model)
    assert {node.loc.source for node in graph.nodes()} <= names


def test_recurrent_step_uses_previous_spikes():
    graph = import_onnx(models.snu_step_model(recurrent=True))
    dense_inputs = [n.inputs for n in graph.nodes() if n.op.NAME == "xbar.dense"]
    assert dense_inputs == [("x", "l0.W"), ("l0.y", "l0.H")]


@pytest.mark.parametrize(
    ("step", "tail"),
    [("greater", ["dig.greater", "dig.cast"]), ("where", ["dig.greater", "dig.where"])],
)
def test_spike_variants_lower_faithfully(step, tail):
    graph = import_onnx(models.snu_step_model(step=step))
    assert _ops(graph)[-2:] == tail
    assert graph.type_of(graph.producer("l0_fire").id) == TensorType("bool", ("B", 5))


def test_swapped_operands_keep_their_order():
    graph = import_onnx(models.snu_step_model(operand_order="swapped"))
    assert graph.producer("l0_sl").inputs == ("l0.decay", "l0.s")
    assert graph.producer("l0_v").inputs == ("l0.b", "l0.s_next")


# ---------------------------------------------------------------------- sequence form


@pytest.mark.parametrize("init", ["constant_of_shape", "slice", "expand"])
def test_sequence_form_zero_states_from_shape(init):
    graph = import_onnx(models.snu_scan_model((6, 5, 4), init=init))
    assert graph.inputs == ["X"] and graph.type_of("X") == TensorType("f32", ("B", 6))
    assert [(s.name, str(graph.type_of(s.name))) for s in graph.states] == [
        ("l0.s", "f32[B, 5]"),
        ("l0.y", "f32[B, 5]"),
        ("l1.s", "f32[B, 4]"),
        ("l1.y", "f32[B, 4]"),
    ]
    assert [s.next for s in graph.states] == ["l0.s_next", "l0.y_next", "l1.s_next", "Y"]
    assert graph.outputs == ["Y"]


def test_sequence_form_equals_step_form():
    step = import_onnx(models.snu_step_model(recurrent=True))
    sequence = import_onnx(models.snu_scan_model(recurrent=True))
    assert _ops(step) == _ops(sequence)
    assert step.constants.keys() == sequence.constants.keys()


def test_final_states_as_outputs_are_left_out():
    graph = import_onnx(models.snu_scan_model(final_states_as_outputs=True))
    assert graph.outputs == ["Y"]


def test_post_scan_ops_move_into_the_step():
    graph = import_onnx(models.snu_scan_model(readout="dense_sigmoid"))
    assert _ops(graph)[-3:] == ["xbar.dense", "dig.add", "dig.sigmoid"]
    assert graph.type_of("Y") == TensorType("f32", ("B", 3))
    assert graph.producer("Y").loc.source == "onnx:out/Sigmoid"


def test_post_scan_axes_are_shifted():
    graph = import_onnx(models.snu_scan_model(readout="log_softmax"))
    assert graph.producer("Y").op.axis == 1
    reshaped = import_onnx(models.snu_scan_model(readout="flatten_step"))
    assert reshaped.producer("out_u").op.shape == ("B", 5, 1)
    assert reshaped.producer("out_t").op.perm == (0, 2, 1)
    assert reshaped.producer("Y").op.shape == ("B", 5)


def test_data_movement_after_scan_moves_into_the_step():
    graph = import_onnx(models.snu_scan_model(readout="per_step_chain"))
    assert _ops(graph)[-8:] == [
        "dig.reshape",  # Unsqueeze
        "dig.transpose",
        "dig.reshape",  # Squeeze
        "dig.gather",  # Slice
        "dig.concat",
        "dig.gather",
        "dig.reduce_mean",
        "dig.mul",  # Expand
    ]
    assert graph.producer("out_c").op.axis == 1
    assert graph.producer("out_m").op.axes == (1,)
    assert graph.type_of("Y") == TensorType("f32", ("B", 3))


def test_constant_broadcast_to_the_sequence_after_scan():
    graph = import_onnx(models.snu_scan_model(readout="shifted"))
    add = graph.producer("Y")
    assert graph.constants[add.inputs[1]].shape == (1, 5)
    assert graph.type_of("Y") == TensorType("f32", ("B", 5))


def test_two_scans_in_a_row():
    graph = import_onnx(models.two_scan_model((6, 5, 4)))
    assert [s.name for s in graph.states] == ["l0.s", "l0.y", "l1.s", "l1.y"]
    assert graph.producer("l1_a").inputs == ("H", "l1.W")  # l1.W captured from outside
    assert graph.outputs == ["Y"]


def test_sequence_input_with_static_sizes():
    model = models.snu_scan_model()
    for value in (model.graph.input[0], model.graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        dims[0].dim_value, dims[1].dim_value = 7, 1
    graph = import_onnx(model)
    assert graph.type_of("X") == TensorType("f32", ("B", 6))
    assert graph.type_of("l0.s") == TensorType("f32", ("B", 5))


@pytest.mark.parametrize("inside", [False, True])
def test_embedding_on_token_ids(inside):
    graph = import_onnx(models.embedding_snu_scan_model(inside=inside))
    assert graph.type_of("X") == TensorType("i64", ("B",))
    gather = graph.producer("emb_e")
    assert gather.op.NAME == "dig.gather" and gather.inputs == ("emb.E", "X")
    assert graph.type_of("emb_e") == TensorType("f32", ("B", 4))


# ---------------------------------------------------------------------- matrix ops


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"trans_a": True},
        {"trans_b": True, "alpha": 0.5, "beta": 2.0},
        {"bias": "matrix", "beta": 0.0},
        {"bias": None, "alpha": -1.5},
        {"const_side": "left"},
        {"const_side": "left", "trans_a": True, "alpha": 1.5, "beta": 0.5},
    ],
)
def test_gemm_lowering(options):
    model = models.dense_model(**options)
    graph = import_onnx(model)
    ops = _ops(graph)
    assert "xbar.dense" in ops and "dig.matmul" not in ops
    dense = next(n for n in graph.nodes() if n.op.NAME == "xbar.dense")
    weights = graph.constants[dense.inputs[1]]
    # Whichever side and transposition, the crossbar holds alpha * w for the layer's
    # [n_in, n_out] matrix w, which the model stores as W or W^T.
    stored = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "W"))
    left = options.get("const_side") == "left"
    transposed = not options.get("trans_a") if left else options.get("trans_b")
    w = stored.T if transposed else stored
    np.testing.assert_array_equal(weights, w * np.float32(options.get("alpha", 1.0)))
    has_bias = options.get("bias", "vector") is not None and options.get("beta", 1.0) != 0
    assert ("dig.add" in ops) == has_bias
    _compare(model, _random((3, 5, 4)))


def test_gemm_bias_is_scaled_by_beta():
    graph = import_onnx(models.dense_model(beta=2.0))
    add = graph.producer("y")
    bias = graph.constants[add.inputs[1]]
    c = numpy_helper.to_array(
        next(t for t in models.dense_model().graph.initializer if t.name == "c")
    )
    np.testing.assert_array_equal(bias, c * np.float32(2.0))


@pytest.mark.parametrize("side", ["right", "left"])
def test_matmul_with_constant_on_either_side(side):
    model = models.dense_model(op="matmul", const_side=side)
    graph = import_onnx(model)
    ops = _ops(graph)
    assert ops.count("xbar.dense") == 1 and "dig.matmul" not in ops
    assert graph.outputs == ["y"] and graph.type_of("y") == TensorType("f32", ("B", 3))
    _compare(model, _random((2, 4, 4)))


def test_matmul_of_two_computed_values_runs_digitally():
    model = _two_input_matmul()
    graph = import_onnx(model)
    assert _ops(graph) == ["dig.transpose", "dig.matmul"]
    _compare(model, _random((2, 3, 3, 4)))


def _two_input_matmul() -> onnx.ModelProto:
    spec = models.StepSpec(x=("x", TensorProto.FLOAT, (3, 4)))
    spec.node("Transpose", ["x"], "xt", "Transpose", perm=[0, 2, 1])
    spec.node("MatMul", ["x", "xt"], "y", "MatMul")
    spec.output = ("y", (3, 3))
    return models.as_step_model(spec, "gram", metadata=False)


def test_constant_subgraph_is_folded():
    spec = models.StepSpec(x=("x", TensorProto.FLOAT, (4,)))
    w = _random((3, 4), seed=3)
    spec.const("W_t", w)
    spec.const("two", np.array(2.0, np.float32))
    spec.node("Transpose", ["W_t"], "W", "Transpose", perm=[1, 0])
    spec.node("Mul", ["W", "two"], "W2", "Mul")
    spec.node("MatMul", ["x", "W2"], "y", "MatMul")
    spec.output = ("y", (3,))
    model = models.as_step_model(spec, "folded", metadata=False)
    graph = import_onnx(model)
    assert _ops(graph) == ["xbar.dense"]
    np.testing.assert_array_equal(graph.constants["W2"], w.T * np.float32(2))
    _compare(model, _random((2, 3, 4)))


# ---------------------------------------------------------------------- conv and pooling


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_conv_pool_flatten(pool):
    model = models.conv_snu_step_model(pool=pool)
    graph = import_onnx(model)
    ops = _ops(graph)
    assert ops[:2] == ["xbar.conv", "dig.add"]
    assert ("dig.maxpool" if pool == "max" else "dig.avgpool") in ops
    assert graph.producer("conv_a").inputs[1] == "conv.b"
    assert graph.constants["conv.b"].shape == (1, 3, 1, 1)
    flat = graph.producer("flat_y")
    assert flat.op.NAME == "dig.reshape" and flat.op.shape == ("B", 27)
    assert graph.type_of("l0.s") == TensorType("f32", ("B", 3, 6, 6))
    _compare(model, _random((3, 2, 2, 6, 6)))


# ---------------------------------------------------------------------- op semantics


def _single(op, x_shape, x_seed=0, *, steps=2, batch=3, **kwargs) -> Graph:
    model = models.single_op_model(op, x_shape, **kwargs)
    x = _random((steps, batch, *x_shape), seed=x_seed)
    _compare(model, x)
    return import_onnx(model)


@pytest.mark.parametrize(("opset", "axis"), [(11, 1), (11, -2), (13, 1), (13, -1), (11, 2)])
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_axis_per_opset(op, opset, axis):
    graph = _single(op, (2, 3), opset=opset, axis=axis)
    ops = _ops(graph)
    if opset == 11 and axis in (1, -2):
        assert ops[0] == "dig.reshape" and graph.producer(graph.outputs[0]).op.NAME == "dig.reshape"
    else:
        assert len(ops) == 1


def test_softmax_over_the_batch_is_an_error():
    _error(models.single_op_model("Softmax", (3,), opset=13, axis=0), "batch")


@pytest.mark.parametrize(
    ("op", "opset", "attrs", "axes"),
    [
        ("ReduceSum", 13, {"keepdims": 0}, [2]),
        ("ReduceSum", 11, {"keepdims": 1, "axes": [-1]}, None),
        ("ReduceMean", 17, {"keepdims": 0, "axes": [1, 2]}, None),
        ("ReduceMean", 18, {"keepdims": 1}, [1]),
        ("ReduceSum", 13, {"keepdims": 1, "noop_with_empty_axes": 0}, np.zeros(0, np.int64)),
    ],
)
def test_reductions(op, opset, attrs, axes):
    consts = [] if axes is None else [np.asarray(axes, np.int64)]
    if axes is not None and len(axes) == 0:
        # Empty axes without noop_with_empty_axes reduce every axis, the batch too.
        _error(models.single_op_model(op, (2, 3), opset=opset, consts=consts, **attrs), "batch")
        return
    graph = _single(op, (2, 3), opset=opset, consts=consts, **attrs)
    assert _ops(graph) == [{"ReduceSum": "dig.reduce_sum", "ReduceMean": "dig.reduce_mean"}[op]]


def test_reduction_with_noop_for_empty_axes_is_an_alias():
    model = models.single_op_model(
        "ReduceSum", (2, 3), consts=[np.zeros(0, np.int64)], noop_with_empty_axes=1
    )
    graph = import_onnx(model)
    assert len(graph) == 0 and graph.outputs == ["x"]  # an output aliasing the input


def test_reduce_over_the_batch_is_an_error():
    _error(models.single_op_model("ReduceSum", (3,), opset=11, axes=[0]), "batch")


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize(
    "attrs",
    [
        {"kernel_shape": [2, 2], "strides": [2, 2]},
        {"kernel_shape": [3, 3], "pads": [1, 0, 1, 2]},
        {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
        {"kernel_shape": [2, 3], "strides": [2, 1], "auto_pad": "SAME_LOWER"},
        {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},
    ],
)
def test_pooling_attributes(op, attrs):
    _single(op, (2, 6, 7) if "ceil_mode" not in attrs else (2, 6, 6), **attrs)


def test_average_pool_counts_padding_when_asked():
    graph = _single(
        "AveragePool", (1, 4, 4), kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1
    )
    assert graph.producer("y").op.count_include_pad


def test_pool_ceil_mode_that_changes_the_output_is_an_error():
    model = models.single_op_model(
        "MaxPool", (1, 5, 5), kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1
    )
    _error(model, "ceil_mode")


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_conv_auto_pad(auto_pad):
    w = _random((2, 1, 3, 2), seed=5)
    graph = _single("Conv", (1, 5, 6), consts=[w], auto_pad=auto_pad, strides=[2, 1])
    assert graph.producer("y").op.NAME == "xbar.conv"


def test_grouped_dilated_conv_with_pads():
    w = _random((4, 1, 2, 2), seed=6)
    _single("Conv", (2, 6, 6), consts=[w], group=2, dilations=[2, 1], pads=[1, 0, 0, 1])


@pytest.mark.parametrize(
    ("op", "attrs", "consts"),
    [
        ("LeakyRelu", {"alpha": 0.2}, []),
        ("Tanh", {}, []),
        ("Neg", {}, []),
        ("Sigmoid", {}, []),
        ("Div", {}, [np.array([2.0, -4.0, 0.5], np.float32)]),
        ("Sub", {}, [np.array(1.5, np.float32)]),
        ("GreaterOrEqual", {}, [np.zeros(3, np.float32)]),
        ("Less", {}, [np.zeros((1, 3), np.float32)]),
        ("Transpose", {"perm": [0, 2, 1]}, []),
        ("Flatten", {"axis": 1}, []),
    ],
)
def test_element_and_data_movement_ops(op, attrs, consts):
    x_shape = (2, 3) if op in ("Transpose", "Flatten") else (3,)
    graph = _single(op, x_shape, consts=consts, **attrs)
    assert len(graph) == 1


def test_concat_of_computed_values():
    spec = models.StepSpec(x=("x", TensorProto.FLOAT, (2, 3)))
    spec.node("Neg", ["x"], "n", "Neg")
    spec.node("Concat", ["x", "n"], "y", "Concat", axis=-1)
    spec.output = ("y", (2, 6))
    model = models.as_step_model(spec, "concat", metadata=False)
    assert import_onnx(model).producer("y").op.axis == 2
    _compare(model, _random((2, 3, 2, 3)))


@pytest.mark.parametrize("to", [TensorProto.INT64, TensorProto.BOOL])
def test_cast(to):
    graph = _single("Cast", (3,), to=to)
    assert graph.producer("y").op.to == {TensorProto.INT64: "i64", TensorProto.BOOL: "bool"}[to]


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_and_unsqueeze_axes_per_opset(opset):
    spec = models.StepSpec(x=("x", TensorProto.FLOAT, (1, 3)))
    if opset >= 13:
        spec.const("axes", np.array([1], np.int64))
        spec.node("Squeeze", ["x", "axes"], "s", "Squeeze")
        spec.const("axes2", np.array([-1, 1], np.int64))
        spec.node("Unsqueeze", ["s", "axes2"], "y", "Unsqueeze")
    else:
        spec.node("Squeeze", ["x"], "s", "Squeeze", axes=[1])
        spec.node("Unsqueeze", ["s"], "y", "Unsqueeze", axes=[-1, 1])
    spec.output = ("y", (1, 3, 1))
    model = models.as_step_model(spec, "squeeze", opset=opset, metadata=False)
    graph = import_onnx(model)
    assert graph.producer("s").op.shape == ("B", 3)
    assert graph.producer("y").op.shape == ("B", 1, 3, 1)
    _compare(model, _random((2, 3, 1, 3)))


@pytest.mark.parametrize("indices", [np.array([2, 0], np.int64), np.array(-1, np.int64)])
def test_gather_with_constant_indices(indices):
    graph = _single("Gather", (2, 3), consts=[indices], axis=2)
    gathered = graph.constants[graph.producer("y").inputs[1]]
    assert np.all(gathered >= 0)


def test_slice_becomes_gathers():
    spec = models.StepSpec(x=("x", TensorProto.FLOAT, (4, 6)))
    for name, values in (
        ("starts", [-1, 1]),
        ("ends", [-5, 1000]),
        ("axes", [1, 2]),
        ("steps", [-2, 2]),
    ):
        spec.const(name, np.array(values, np.int64))
    spec.node("Slice", ["x", "starts", "ends", "axes", "steps"], "y", "Slice")
    spec.output = ("y", (2, 3))
    model = models.as_step_model(spec, "slice", metadata=False)
    graph = import_onnx(model)
    assert _ops(graph) == ["dig.gather", "dig.gather"]
    _compare(model, _random((2, 3, 4, 6)))


@pytest.mark.parametrize(
    "kind",
    ["gather_concat", "scalar_gather", "slice_prod", "batch_arith", "constant_of_shape", "expand"],
)
def test_shape_computations_resolve_symbolically(kind):
    model = models.shape_computation_model(kind)
    graph = import_onnx(model)
    if kind not in ("constant_of_shape", "expand"):
        assert _ops(graph) == ["dig.reshape"] and graph.producer("y").op.shape == ("B", 6)
    _compare(model, _random((2, 3, 2, 3)))


def test_unsupported_op_on_constants_is_folded():
    spec = models.StepSpec(x=("x", TensorProto.FLOAT, (4,)))
    spec.const("W_sq", np.abs(_random((4, 3), seed=4)))
    spec.node("Sqrt", ["W_sq"], "W", "Sqrt")
    spec.node("MatMul", ["x", "W"], "y", "MatMul")
    spec.output = ("y", (3,))
    model = models.as_step_model(spec, "sqrt_weights", metadata=False)
    graph = import_onnx(model)
    assert _ops(graph) == ["xbar.dense"] and graph.constants["W"].shape == (4, 3)
    _compare(model, _random((2, 3, 4)))


def test_control_flow_is_unsupported_even_on_constants():
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["v"], value_float=1.0)],
        "branch",
        [],
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, [])],
    )
    spec = models.StepSpec(x=("x", TensorProto.FLOAT, (3,)))
    spec.const("cond", np.array(True))
    spec.node("If", ["cond"], "k", "If", then_branch=branch, else_branch=branch)
    spec.node("Mul", ["x", "k"], "y", "Mul")
    spec.output = ("y", (3,))
    _error(models.as_step_model(spec, "if_model", metadata=False), "op If is not supported")


def test_supported_ops_cover_the_spec():
    assert list(SUPPORTED_OPS) == sorted(SUPPORTED_OPS)
    assert set(SUPPORTED_OPS) >= SPEC_STEP_OPS


# ---------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"recurrent": True, "decay_per_neuron": True},
        {"gemm_transb": True, "step": "where", "operand_order": "swapped"},
        {"g": "identity", "h": "sigmoid", "recurrent": True},
    ],
)
def test_snu_step_model_matches_onnxruntime(options):
    x = _random((9, 4, 6), seed=11)
    got = _compare(models.snu_step_model(**options), x, spikes=options.get("h") != "sigmoid")
    if options.get("h") != "sigmoid":
        assert 0 < got["y"].mean() < 1  # the check compares real spike trains


@pytest.mark.parametrize(
    "options",
    [
        {"sizes": (6, 5, 4), "recurrent": True},
        {"init": "expand", "readout": "dense_sigmoid"},
        {"init": "slice", "readout": "log_softmax", "gemm_transb": True},
        {"readout": "flatten_step", "step": "where"},
        {"readout": "shifted", "opset": 11, "init": "expand"},
        {"readout": "per_step_chain", "h": "sigmoid"},
    ],
)
def test_snu_scan_model_matches_onnxruntime(options):
    x = _random((8, 3, 6), seed=12)
    _compare(models.snu_scan_model(**options), x, spikes=options.get("readout") is None)


def test_two_scan_model_matches_onnxruntime():
    got = _compare(models.two_scan_model(), _random((6, 3, 6), seed=16), spikes=True)
    assert 0 < got["Y"].mean() < 1


def test_conv_scan_model_matches_onnxruntime():
    _compare(models.conv_snu_scan_model(), _random((4, 2, 2, 6, 6), seed=13))


@pytest.mark.parametrize("inside", [False, True])
def test_embedding_model_matches_onnxruntime(inside):
    x = np.random.default_rng(14).integers(0, 10, (7, 3)).astype(np.int64)
    _compare(models.embedding_snu_scan_model(inside=inside), x, spikes=True)


def test_step_and_sequence_forms_agree_in_onnxruntime():
    """The builders' two forms of one network compute the same (a check of the builders)."""
    x = _random((6, 2, 6), seed=15)
    step = _ort_steps(models.snu_step_model(recurrent=True), x)["y"]
    sequence = _ort_sequence(models.snu_scan_model(recurrent=True), x)["Y"]
    np.testing.assert_array_equal(step, sequence)
