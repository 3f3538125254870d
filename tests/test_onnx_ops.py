"""The ONNX ops of issue 12 "More ONNX": every op and opset spelling compiles and runs.

Each model is ``y = op(x @ W, ...)`` (a crossbar layer, then the op under test), built
with onnx.helper. Compiled through the whole pipeline, it equals onnxruntime in float mode
(1e-5; ints and bools exactly), and in every mode the NumPy backend and the simulator
equal the reference interpreter bit for bit.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnx_models as om  # tests/ is on sys.path under pytest (no __init__.py)
import onnxruntime as ort
import pytest
from cli_helpers import assert_one_line_error, run_cli
from onnx import TensorProto, helper, numpy_helper

from snuc import driver
from snuc.backends.program import compile_program
from snuc.frontend.onnx_import import SUPPORTED_OPS, import_onnx
from snuc.ir import Graph, SnucError, elementwise
from snuc.ir.crossbar import RANGE_RULES, ValueRange
from snuc.ir.target import parse_target
from snuc.runtime.artefact import Artefact
from snuc.runtime.interpreter import run
from snuc.runtime.numpy_backend import run_numpy
from snuc.runtime.simulator import run_sim

FLOAT, BOOL, INT64 = TensorProto.FLOAT, TensorProto.BOOL, TensorProto.INT64
MODES = ("float", "quantized", "pcm")
SMALL = "pcm-16x16"
TARGET = parse_target(SMALL)
N = 4


def _const(name: str, value, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def op_model(
    nodes: list[onnx.NodeProto],
    *,
    opset: int = 17,
    inits: tuple[onnx.TensorProto, ...] = (),
    out_elem: int = FLOAT,
    name: str = "op",
) -> onnx.ModelProto:
    """A stateless step model: ``h = x @ W`` on the crossbars, then ``nodes`` from ``h``
    to ``y``; ``x[B, 4]``."""
    w = np.random.default_rng(1).standard_normal((N, N)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="dense"), *nodes],
        name,
        [helper.make_tensor_value_info("x", FLOAT, ["B", N])],
        [onnx.ValueInfoProto(name="y")],
        [numpy_helper.from_array(w, "W"), *inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert model.graph.output[0].type.tensor_type.elem_type == out_elem
    onnx.checker.check_model(model)
    return model


def node(op: str, inputs: list[str], output: str = "y", **attrs) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [output], name=f"{op}_{output}", **attrs)


def _inputs(steps: int = 3, batch: int = 2, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((steps, batch, N)).astype(np.float32)
    x[0, 0, :2] = 0.0  # exact zeros reach the ops (Sign, Equal, Clip at 0)
    return x


def _onnxruntime(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.stack([session.run(None, {"x": step})[0] for step in x])


def compiled(model: onnx.ModelProto, tmp_path: Path) -> Graph:
    path = tmp_path / f"{model.graph.name}.onnx"
    onnx.save(model, path)
    return driver.compile_model(path, SMALL).graph


def check(model: onnx.ModelProto, tmp_path: Path, x: np.ndarray | None = None) -> Graph:
    """Compiled, ``model`` equals onnxruntime in float mode; every backend equals the
    interpreter bit for bit in every mode."""
    x = _inputs() if x is None else x
    graph = compiled(model, tmp_path)
    want = _onnxruntime(model, x)
    got = run(graph, x, mode="float", target=TARGET)["y"]
    assert got.dtype == want.dtype and got.shape == want.shape
    if want.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    else:
        np.testing.assert_array_equal(got, want)
    backends_equal_the_interpreter(graph, x)
    return graph


def backends_equal_the_interpreter(graph: Graph, x: np.ndarray) -> None:
    """In every mode the NumPy backend and the simulator equal the interpreter exactly."""
    program = compile_program(graph, TARGET)
    for mode in MODES:
        oracle = run(graph, x, mode=mode, target=TARGET)
        fast = run_numpy(graph, x, mode=mode, target=TARGET)
        sim, _ = run_sim(graph, x, mode=mode, target=TARGET, program=program)
        for name, value in oracle.items():
            np.testing.assert_array_equal(fast[name], value, err_msg=f"{mode} numpy {name}")
            np.testing.assert_array_equal(sim[name], value, err_msg=f"{mode} sim {name}")


def ir_ops(graph: Graph) -> list[str]:
    return [n.op.NAME for n in graph.nodes()]


# --------------------------------------------------------------------------- element-wise

HALF = (_const("half", 0.5),)
UNARY = {
    "Abs": "dig.abs",
    "Sign": "dig.sign",
    "Exp": "dig.exp",
    "Softplus": "dig.softplus",
    "Neg": "dig.neg",
}


@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary_ops(op, tmp_path):
    graph = check(op_model([node(op, ["h"])]), tmp_path)
    assert UNARY[op] in ir_ops(graph)


@pytest.mark.parametrize(("op", "name"), [("Log", "dig.log"), ("Sqrt", "dig.sqrt")])
def test_ops_of_positive_values(op, name, tmp_path):
    model = op_model([node("Abs", ["h"], "a"), node(op, ["a"])])
    assert name in ir_ops(check(model, tmp_path))


@pytest.mark.parametrize("opset", [8, 12, 13])
@pytest.mark.parametrize(("op", "name"), [("Max", "dig.max"), ("Min", "dig.min")])
def test_variadic_max_and_min(op, name, opset, tmp_path):
    for inputs, count in ((["h"], 0), (["h", "half"], 1), (["h", "half", "b"], 2)):
        inits = (*HALF, _const("b", [0.0, 1.0, -1.0, 2.0]))
        model = op_model([node(op, inputs)], opset=opset, inits=inits, name=f"{op}{len(inputs)}")
        assert ir_ops(check(model, tmp_path)).count(name) == count


def test_max_of_two_computed_values(tmp_path):
    model = op_model([node("Neg", ["h"], "n"), node("Max", ["h", "n"])])
    assert "dig.max" in ir_ops(check(model, tmp_path))


@pytest.mark.parametrize(
    ("base", "exponent"),
    [(np.float32(2.0), None), (np.int64(3), None), (None, np.float32(1.5))],
)
def test_pow(base, exponent, tmp_path):
    if exponent is None:
        inits = (_const("e", base, type(base)),)
        nodes = [node("Pow", ["h", "e"])]
    else:
        inits = (_const("e", exponent),)
        nodes = [node("Abs", ["h"], "a"), node("Pow", ["a", "e"])]
    assert "dig.pow" in ir_ops(check(op_model(nodes, inits=inits), tmp_path))


# --------------------------------------------------------------------------- Clip


CLIP_FORMS = {
    "opset6 min and max": (6, [node("Clip", ["h"], min=-0.5, max=0.5)], (), "dig.clip"),
    # Before opset 11 a missing attribute is float32's extreme, a bound.
    "opset6 min only": (6, [node("Clip", ["h"], min=0.0)], (), "dig.clip"),
    "opset6 no bounds": (6, [node("Clip", ["h"])], (), "dig.clip"),
    "opset11 both": (11, [node("Clip", ["h", "lo", "hi"])], ("lo", "hi"), "dig.clip"),
    "opset13 min only": (13, [node("Clip", ["h", "lo"])], ("lo",), "dig.max"),
    "opset13 max only": (13, [node("Clip", ["h", "", "hi"])], ("hi",), "dig.min"),
    "opset13 none": (13, [node("Clip", ["h"])], (), None),
    "opset13 lo above hi": (13, [node("Clip", ["h", "hi", "lo"])], ("lo", "hi"), "dig.clip"),
}


@pytest.mark.parametrize("form", sorted(CLIP_FORMS))
def test_clip_in_every_opset_form(form, tmp_path):
    opset, nodes, names, name = CLIP_FORMS[form]
    bounds = {"lo": _const("lo", -0.25), "hi": _const("hi", 0.75)}
    graph = check(op_model(nodes, opset=opset, inits=tuple(bounds[n] for n in names)), tmp_path)
    assert ir_ops(graph)[1:] == ([name] if name else [])


def test_clip_of_integers_without_a_bound(tmp_path):
    nodes = [
        node("Cast", ["h"], "i", to=INT64),
        node("Clip", ["i", "lo"], "c"),
        node("Cast", ["c"], "y", to=FLOAT),
    ]
    check(op_model(nodes, opset=13, inits=(_const("lo", 0, np.int64),)), tmp_path)


# --------------------------------------------------------------------------- bools


def test_equal_on_floats_and_integers(tmp_path):
    nodes = [node("Equal", ["h", "zero"], "e"), node("Cast", ["e"], "y", to=FLOAT)]
    check(op_model(nodes, inits=(_const("zero", 0.0),)), tmp_path)
    ints = [
        node("Cast", ["h"], "i", to=INT64),
        node("Equal", ["i", "izero"], "y"),
    ]
    check(op_model(ints, inits=(_const("izero", 0, np.int64),), out_elem=BOOL), tmp_path)


def test_less_or_equal(tmp_path):
    nodes = [node("LessOrEqual", ["h", "zero"], "le"), node("Cast", ["le"], "y", to=FLOAT)]
    graph = check(op_model(nodes, opset=16, inits=(_const("zero", 0.0),)), tmp_path)
    assert "dig.less_equal" in ir_ops(graph)


def test_bool_tensors_through_not_and_or(tmp_path):
    nodes = [
        node("Greater", ["h", "zero"], "p"),
        node("Less", ["h", "half"], "q"),
        node("Not", ["p"], "np"),
        node("And", ["np", "q"], "a"),
        node("Or", ["a", "p"], "o"),
        node("Equal", ["o", "q"], "y"),
    ]
    graph = check(op_model(nodes, inits=(_const("zero", 0.0), *HALF), out_elem=BOOL), tmp_path)
    for name in ("dig.not", "dig.and", "dig.or", "dig.equal"):
        assert name in ir_ops(graph)


def test_bool_constants_and_where_on_bools(tmp_path):
    mask = _const("mask", [True, False, True, False], np.bool_)
    nodes = [
        node("Greater", ["h", "zero"], "p"),
        node("And", ["p", "mask"], "a"),
        node("Where", ["a", "h", "zero"], "y"),
    ]
    check(op_model(nodes, inits=(_const("zero", 0.0), mask)), tmp_path)


# --------------------------------------------------------------------------- data movement


SLICE_FORMS = {
    "opset1 attributes": (1, [node("Slice", ["h"], starts=[1], ends=[3], axes=[1])], ()),
    "opset10 inputs": (10, [node("Slice", ["h", "s", "e", "ax"])], ("s", "e", "ax")),
    "opset13 axes and steps": (13, [node("Slice", ["h", "s", "e", "ax", "st"])], "all"),
    "opset13 negative axis and step": (
        13,
        [node("Slice", ["h", "e", "s0", "nax", "nst"])],
        "neg",
    ),
}


@pytest.mark.parametrize("form", sorted(SLICE_FORMS))
def test_slice_in_every_opset_form(form, tmp_path):
    opset, nodes, which = SLICE_FORMS[form]
    ints = {
        "s": [1], "e": [4], "ax": [1], "st": [2],
        "s0": [0], "nax": [-1], "nst": [-1],
    }  # fmt: skip
    names = {"all": ("s", "e", "ax", "st"), "neg": ("e", "s0", "nax", "nst")}.get(which, which)
    inits = tuple(_const(n, ints[n], np.int64) for n in names)
    check(op_model(nodes, opset=opset, inits=inits), tmp_path)


SPLIT_FORMS = {
    "opset11 equal parts": (11, {}, ()),
    "opset11 split attribute": (11, {"split": [1, 3]}, ()),
    "opset13 split input": (13, {}, ("sizes",)),
    "opset18 num_outputs": (18, {"num_outputs": 2}, ()),
    "opset18 uneven num_outputs": (18, {"num_outputs": 3}, ()),
}


@pytest.mark.parametrize("form", sorted(SPLIT_FORMS))
def test_split_in_every_opset_form(form, tmp_path):
    opset, attrs, names = SPLIT_FORMS[form]
    outputs = ["a", "b", "c"] if attrs.get("num_outputs") == 3 else ["a", "b"]
    split = helper.make_node("Split", ["h", *names], outputs, name="split", axis=1, **attrs)
    join = [node("Neg", [outputs[-1]], "n"), node("Concat", ["n", *outputs[:-1]], "y", axis=1)]
    inits = (_const("sizes", [3, 1], np.int64),) if names else ()
    check(op_model([split, *join], opset=opset, inits=inits), tmp_path)


def test_expand_of_a_computed_value(tmp_path):
    nodes = [
        node("Unsqueeze", ["h"], "u", axes=[1]),
        node("Expand", ["u", "shape"], "y"),
    ]
    model = op_model(nodes, opset=11, inits=(_const("shape", [1, 3, 1], np.int64),))
    check(model, tmp_path)


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_and_unsqueeze_in_both_forms(opset, tmp_path):
    if opset < 13:
        unsqueeze = node("Unsqueeze", ["h"], "u", axes=[1, -1])
        nodes = [unsqueeze, node("Squeeze", ["u"], "y", axes=[1, 3])]
        inits = ()
    else:
        nodes = [node("Unsqueeze", ["h", "ax"], "u"), node("Squeeze", ["u", "ax"], "y")]
        inits = (_const("ax", [1, -1], np.int64),)
    check(op_model(nodes, opset=opset, inits=inits), tmp_path)


# --------------------------------------------------------------------------- errors


def test_the_supported_list_names_the_new_ops():
    new = "Clip Max Min Abs Sign Equal Not And Or Exp Log Pow Sqrt Softplus Slice Split Expand"
    new += " LessOrEqual"
    for op in (*new.split(), "Squeeze", "Unsqueeze"):
        assert op in SUPPORTED_OPS


def test_an_unsupported_op_names_itself_the_node_and_the_list():
    model = op_model([node("Erf", ["h"])])
    with pytest.raises(SnucError) as err:
        import_onnx(model)
    message = str(err.value)
    assert "\n" not in message and "Erf" in message and "Erf_y" in message
    assert "Softplus" in message and "Split" in message


# --------------------------------------------------------------------------- with states


def _leaky_step() -> om.StepSpec:
    """A leaky neuron written with the new ops: ``v = clip(0.9 s + x W, -2, 2)``, spikes
    ``y = cast(sign(v - 1) > 0)``, reset ``s' = max(v - y, -1)``."""
    spec = om.StepSpec(x=("x", FLOAT, (N,)), states=[("s", "s_next", (N,))], output=("y", (N,)))
    w = np.random.default_rng(2).standard_normal((N, N)).astype(np.float32)
    spec.const("W", w)
    for name, value in (("decay", 0.9), ("lo", -2.0), ("hi", 2.0), ("one", 1.0), ("zero", 0.0)):
        spec.const(name, np.float32(value))
    spec.const("floor", np.full(N, -1.0, np.float32))
    spec.node("MatMul", ["x", "W"], "a", "dense")
    spec.node("Mul", ["s", "decay"], "leak", "leak")
    spec.node("Add", ["leak", "a"], "u", "integrate")
    spec.node("Clip", ["u", "lo", "hi"], "v", "clip")
    spec.node("Sub", ["v", "one"], "d", "threshold")
    spec.node("Sign", ["d"], "sg", "sign")
    spec.node("Greater", ["sg", "zero"], "fire", "fire")
    spec.node("Cast", ["fire"], "y", "spike", to=FLOAT)
    spec.node("Sub", ["v", "y"], "r", "reset")
    spec.node("Max", ["r", "floor"], "s_next", "floor")
    return spec


def test_a_step_model_with_states_in_the_new_ops(tmp_path):
    model = om.as_step_model(_leaky_step(), "leaky_step", opset=13)
    graph = compiled(model, tmp_path)
    x = _inputs(steps=6, batch=3) * 2
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    s = np.zeros((3, N), np.float32)
    want = []
    for step in x:
        y, s = session.run(None, {"x": step, "s": s})
        want.append(y)
    np.testing.assert_array_equal(run(graph, x, mode="float", target=TARGET)["y"], np.stack(want))
    backends_equal_the_interpreter(graph, x)


def test_a_scan_body_and_the_outer_graph_in_the_new_ops(tmp_path):
    model = om.as_scan_model(_leaky_step(), "leaky_seq", opset=13)
    scan = next(n for n in model.graph.node if n.op_type == "Scan")
    scan.output[-1] = "spikes"
    model.graph.initializer.append(_const("cap", 0.5))
    model.graph.node.extend(
        [
            helper.make_node("Softplus", ["spikes"], ["soft"], name="soft"),
            helper.make_node("Min", ["soft", "cap"], ["Y"], name="cap"),
        ]
    )
    onnx.checker.check_model(model)
    graph = compiled(model, tmp_path)
    x = _inputs(steps=6, batch=3) * 2
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (want,) = session.run(["Y"], {"X": x})
    got = run(graph, x, mode="float", target=TARGET)["Y"]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    backends_equal_the_interpreter(graph, x)


# --------------------------------------------------------------------------- external data


def _save_external(model: onnx.ModelProto, path: Path) -> Path:
    """Save ``model`` with its weights in ``<name>.data`` beside it (``model`` unchanged)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save(
        copy,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=f"{path.name}.data",
        size_threshold=0,
    )
    return path


def test_weights_in_an_external_data_file_compile(tmp_path):
    model = op_model([node("Relu", ["h"])], name="external")
    path = _save_external(model, tmp_path / "external.onnx")
    assert (tmp_path / "external.onnx.data").stat().st_size > 0
    graph = driver.compile_model(path, SMALL).graph
    x = _inputs()
    np.testing.assert_allclose(
        run(graph, x, mode="float", target=TARGET)["y"], _onnxruntime(model, x), rtol=0, atol=1e-5
    )


def test_a_missing_external_data_file_is_one_line_naming_it(tmp_path, capsys):
    path = _save_external(op_model([node("Relu", ["h"])], name="external"), tmp_path / "m.onnx")
    (tmp_path / "m.onnx.data").unlink()
    with pytest.raises(SnucError) as err:
        driver.compile_model(path, SMALL)
    assert "\n" not in str(err.value) and "m.onnx.data" in str(err.value)
    status, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "m.snuc")
    assert_one_line_error(status, err, "m.onnx.data")


def test_every_new_op_survives_the_artefact_file(tmp_path):
    """The IR text and the assembly print and parse every new op (dig.and, dig.or and
    dig.not are mnemonics, not keywords); the loaded artefact runs as before saving."""
    nodes = [
        node("Greater", ["h", "zero"], "p"),
        node("Not", ["p"], "n"),
        node("Or", ["n", "p"], "o"),
        node("And", ["o", "p"], "q"),
        node("Equal", ["q", "p"], "e"),
        node("Cast", ["e"], "ef", to=FLOAT),
        node("Abs", ["h"], "a"),
        node("Sqrt", ["a"], "r"),
        node("Log", ["r"], "l"),
        node("Exp", ["l"], "x1"),
        node("Softplus", ["x1"], "x2"),
        node("Sign", ["h"], "sg"),
        node("Pow", ["x2", "two"], "x3"),
        node("Clip", ["x3", "zero", "two"], "x4"),
        node("Min", ["x4", "sg"], "x5"),
        node("Max", ["x5", "ef", "zero"], "y"),
    ]
    model = op_model(nodes, inits=(_const("zero", 0.0), _const("two", 2.0)), name="all_ops")
    graph = check(model, tmp_path)
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    artefact = driver.compile_model(path, SMALL)
    loaded = Artefact.load(artefact.save(tmp_path / "all.snuc"))
    x = _inputs()
    for mode in MODES:
        want = run_sim(graph, x, mode=mode, target=TARGET, program=artefact.program)[0]
        got = run_sim(loaded.graph, x, mode=mode, target=TARGET, program=loaded.program)[0]
        np.testing.assert_array_equal(got["y"], want["y"])


def test_a_bool_model_input_and_a_bool_output(tmp_path):
    nodes = [
        node("Not", ["x"], "n"),
        node("Or", ["n", "mask"], "o"),
        node("Cast", ["o"], "f", to=FLOAT),
        helper.make_node("MatMul", ["f", "W"], ["h"], name="dense"),
        node("Greater", ["h", "zero"], "p"),
        node("And", ["p", "o"], "y"),
    ]
    w = np.random.default_rng(3).standard_normal((N, N)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w, "W"),
        _const("zero", 0.0),
        _const("mask", [True, False, False, True], np.bool_),
    ]
    graph = helper.make_graph(
        nodes,
        "bools",
        [helper.make_tensor_value_info("x", BOOL, ["B", N])],
        [helper.make_tensor_value_info("y", BOOL, ["B", N])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = np.random.default_rng(4).random((3, 2, N)) < 0.5
    ir = compiled(model, tmp_path)
    got = run(ir, x, mode="float", target=TARGET)["y"]
    np.testing.assert_array_equal(got, _onnxruntime(model, x))
    backends_equal_the_interpreter(ir, x)


# --------------------------------------------------------------------------- ranges


def test_value_ranges_of_the_new_ops():
    e = elementwise
    spikes, wide = ValueRange(0.0, 1.0, True), ValueRange(-2.0, 1.0)

    def rule(cls, *ranges):
        (result,) = RANGE_RULES[cls](cls(), list(ranges))
        return result

    assert rule(e.Abs, wide) == ValueRange(0.0, 2.0)
    assert rule(e.Abs, spikes) == spikes
    assert rule(e.Sign, wide) == ValueRange(-1.0, 1.0)
    assert rule(e.Sign, spikes).binary
    assert rule(e.Exp, ValueRange(0.0, 1.0)) == ValueRange(1.0, math.e)
    assert rule(e.Exp, ValueRange(0.0, 1e6)).hi == math.inf
    assert rule(e.Log, wide) == ValueRange()
    assert rule(e.Sqrt, ValueRange(4.0, 9.0)) == ValueRange(2.0, 3.0)
    assert rule(e.Softplus, ValueRange(-math.inf, 0.0)) == ValueRange(0.0, math.log(2.0))
    assert rule(e.Clip, ValueRange(-5.0, 5.0), ValueRange(0.0, 0.0), ValueRange(1.0, 1.0)) == (
        ValueRange(0.0, 1.0)
    )
    assert rule(e.Max, spikes, spikes) == spikes and rule(e.Min, wide, spikes) == wide
    assert rule(e.Max, wide, ValueRange(0.0, 0.0)) == ValueRange(0.0, 1.0)
    assert rule(e.Not, spikes) == rule(e.Equal, wide, wide) == spikes
    assert rule(e.Pow, wide, wide) == ValueRange()
