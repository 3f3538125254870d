"""Exporters' spellings of ReLU and Heaviside become ``dig.relu`` and ``dig.step`` where
they are exactly that, and stay as written where they are not (issue 12).

Each model also compiles and equals onnxruntime and the interpreter in every backend
(:func:`test_onnx_ops.check`), so a rewrite that changed a number would fail there.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from test_onnx_ops import _const, _onnxruntime, check, node, op_model  # tests/ is on sys.path

from snuc.frontend.onnx_import import import_onnx
from snuc.passes.canonicalize import Canonicalize
from snuc.runtime.interpreter import run

FLOAT = onnx.TensorProto.FLOAT
ZERO, ONE, TWO = _const("zero", 0.0), _const("one", 1.0), _const("two", 2.0)


def canonical(model: onnx.ModelProto) -> list[str]:
    """The op names after ``canonicalize``, the crossbar's dense op dropped."""
    graph = Canonicalize().run(import_onnx(model), None)
    return [n.op.NAME for n in graph.nodes() if n.op.NAME != "xbar.dense"]


RELU = {
    "Clip(x, 0) opset 11": (11, [node("Clip", ["h", "zero"])]),
    "Clip(x, 0, none) opset 13": (13, [node("Clip", ["h", "zero", ""])]),
    "Max(x, 0)": (13, [node("Max", ["h", "zero"])]),
    "Max(0, x)": (13, [node("Max", ["zero", "h"])]),
    "Max(x, 0) opset 8": (8, [node("Max", ["h", "zero"])]),
}


@pytest.mark.parametrize("form", sorted(RELU))
def test_relu_spellings_become_dig_relu(form, tmp_path):
    opset, nodes = RELU[form]
    model = op_model(nodes, opset=opset, inits=(ZERO,))
    assert canonical(model) == ["dig.relu"]
    check(model, tmp_path)


NOT_RELU = {
    "Clip(x, 0, 6)": (13, [node("Clip", ["h", "zero", "six"])], "dig.clip"),
    # Before opset 11 the missing max is float32's largest value: inf becomes that.
    "Clip(x, min=0) opset 6": (6, [node("Clip", ["h"], min=0.0)], "dig.clip"),
    "Max(x, 0.5)": (13, [node("Max", ["h", "half"])], "dig.max"),
}


@pytest.mark.parametrize("form", sorted(NOT_RELU))
def test_near_relu_spellings_stay(form, tmp_path):
    opset, nodes, name = NOT_RELU[form]
    inits = (ZERO, _const("six", 6.0), _const("half", 0.5))
    model = op_model(nodes, opset=opset, inits=inits)
    assert canonical(model) == [name]
    check(model, tmp_path)


def test_a_zero_that_broadcasts_x_stays_a_max(tmp_path):
    model = op_model([node("Max", ["h", "zeros"])], inits=(_const("zeros", np.zeros((3, 1, 4))),))
    assert canonical(model) == ["dig.max"]


STEP = {
    "Cast(x > 0)": [node("Greater", ["h", "zero"], "g"), node("Cast", ["g"], to=FLOAT)],
    "Where(x > 0, 1, 0)": [
        node("Greater", ["h", "zero"], "g"),
        node("Where", ["g", "one", "zero"]),
    ],
    "Cast(sign(x) > 0)": [
        node("Sign", ["h"], "s"),
        node("Greater", ["s", "zero"], "g"),
        node("Cast", ["g"], to=FLOAT),
    ],
    "Cast(0 < sign(x))": [
        node("Sign", ["h"], "s"),
        node("Less", ["zero", "s"], "g"),
        node("Cast", ["g"], to=FLOAT),
    ],
    "Where(x == 0, 0, Cast(x > 0))": [
        node("Greater", ["h", "zero"], "g"),
        node("Cast", ["g"], "c", to=FLOAT),
        node("Equal", ["h", "zero"], "e"),
        node("Where", ["e", "zero", "c"]),
    ],
}


@pytest.mark.parametrize("form", sorted(STEP))
def test_heaviside_spellings_become_dig_step(form, tmp_path):
    model = op_model(STEP[form], inits=(ZERO, ONE))
    assert canonical(model) == ["dig.step"]
    check(model, tmp_path)


NOT_STEP = {
    # sign(0) = 0: (sign(x) + 1) / 2 is 0.5 at x == 0, where the step is 0.
    "(sign(x) + 1) / 2": [
        node("Sign", ["h"], "s"),
        node("Add", ["s", "one"], "a"),
        node("Div", ["a", "two"]),
    ],
    # Dynamo's torch.heaviside(x, 0): 1 at NaN, where the step is 0.
    "Where(x == 0, 0, Where(x < 0, 0, 1))": [
        node("Less", ["h", "zero"], "l"),
        node("Where", ["l", "zero", "one"], "w"),
        node("Equal", ["h", "zero"], "e"),
        node("Where", ["e", "zero", "w"]),
    ],
    "Cast(sign(x) >= 0)": [
        node("Sign", ["h"], "s"),
        node("GreaterOrEqual", ["s", "zero"], "g"),
        node("Cast", ["g"], to=FLOAT),
    ],
    "Where(x == 0, 1, Cast(x > 0))": [
        node("Greater", ["h", "zero"], "g"),
        node("Cast", ["g"], "c", to=FLOAT),
        node("Equal", ["h", "zero"], "e"),
        node("Where", ["e", "one", "c"]),
    ],
}


@pytest.mark.parametrize("form", sorted(NOT_STEP))
def test_inexact_heaviside_spellings_stay(form, tmp_path):
    model = op_model(NOT_STEP[form], inits=(ZERO, ONE, TWO))
    last = model.graph.node[-1].op_type
    assert canonical(model)[-1] == f"dig.{last.lower()}"  # the output is no step
    check(model, tmp_path)


# --------------------------------------------------------------------------- torch exports


def _torch_export(module, path, dynamo: bool) -> onnx.ModelProto:
    torch = pytest.importorskip("torch")
    x = torch.randn(2, 4)
    kwargs = {"dynamo": True} if dynamo else {"dynamo": False, "opset_version": 17}
    torch.onnx.export(module, (x,), str(path), input_names=["x"], output_names=["y"], **kwargs)
    return onnx.load(str(path))


def _modules():
    torch = pytest.importorskip("torch")

    class Spike(torch.nn.Module):
        def forward(self, x):
            return (x > 0).float()

    class Clamp(torch.nn.Module):
        def forward(self, x):
            return torch.clamp(x, min=0)

    class Maximum(torch.nn.Module):
        def forward(self, x):
            return torch.maximum(x, torch.tensor(0.0))

    class Heaviside(torch.nn.Module):
        def forward(self, x):
            return torch.heaviside(x, torch.tensor(0.0))

    return {"spike": Spike(), "clamp": Clamp(), "maximum": Maximum(), "heaviside": Heaviside()}


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize(
    ("name", "want"),
    [("spike", "dig.step"), ("clamp", "dig.relu"), ("maximum", "dig.relu"), ("heaviside", None)],
)
def test_what_torch_exports_for_relu_and_heaviside(name, want, dynamo, tmp_path):
    pytest.importorskip("onnxscript")
    if name == "heaviside" and not dynamo:
        pytest.skip("the legacy exporter cannot export aten::heaviside")
    model = _torch_export(_modules()[name], tmp_path / f"{name}.onnx", dynamo)
    ops = [n.op.NAME for n in Canonicalize().run(import_onnx(model), None).nodes()]
    if want is None:
        # Dynamo writes Where(x == 0, 0, Where(x < 0, 0, 1)): 1 at NaN, not a step.
        assert "dig.step" not in ops and "dig.equal" in ops
    else:
        assert ops == [want]
    x = np.random.default_rng(0).standard_normal((3, 2, 4)).astype(np.float32)
    x[0, 0, 0] = 0.0
    np.testing.assert_array_equal(run(import_onnx(model), x)["y"], _onnxruntime(model, x))
