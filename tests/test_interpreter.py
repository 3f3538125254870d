"""The reference interpreter against onnxruntime (op by op) and against SPEC §1 (time loop).

Ops that onnxruntime computes exactly are compared bit for bit. Ops where it approximates
a transcendental function or sums in another order are compared with a bound scaled by the
magnitudes involved (for a dot product, ``sum |x| |w|``), at 1e-6 relative.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper, numpy_helper

from snuc.ir import REGISTRY, Graph, Loc, SnucError, TensorType, VerifyError, ops
from snuc.runtime.interpreter import evaluate_node, run
from snuc.runtime.semantics import OP_SEMANTICS

OPSET = 18
SEEDS = st.integers(0, 2**32 - 1)
FEW = settings(max_examples=20, deadline=None)

ONNX_TYPE = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float64): TensorProto.DOUBLE,
    np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.bool_): TensorProto.BOOL,
}
IR_DTYPE = {
    "f32": np.float32,
    "f64": np.float64,
    "i64": np.int64,
    "i32": np.int32,
    "bool": np.bool_,
}


# --------------------------------------------------------------------------- helpers


def ort_run(op_type, feeds, *, initializers=None, out_dtype=None, **attrs) -> np.ndarray:
    """onnxruntime's result of a one-node model ``op_type(*feeds, *initializers)``."""
    initializers = initializers or {}
    feeds = {n: np.asarray(a) for n, a in feeds.items()}
    out_dtype = np.dtype(out_dtype or next(iter(feeds.values())).dtype)
    node = helper.make_node(op_type, [*feeds, *initializers], ["out"], **attrs)
    graph = helper.make_graph(
        [node],
        "one_node",
        [helper.make_tensor_value_info(n, ONNX_TYPE[a.dtype], a.shape) for n, a in feeds.items()],
        [helper.make_tensor_value_info("out", ONNX_TYPE[out_dtype], None)],
        initializer=[numpy_helper.from_array(a, n) for n, a in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)[0]


def ir_eval(op, *args: np.ndarray) -> tuple[np.ndarray, ...]:
    """``evaluate_node`` of ``op`` on ``args``, checking the results against ``op.infer``.

    Every operand is a graph constant, so ops that need a constant weight accept it.
    """
    g = Graph("one_node")
    names = [g.add_constant(f"a{i}", a) for i, a in enumerate(args)]
    outs = g.add_node(op, names)
    results = evaluate_node(g.producer(outs[0]), args)
    assert len(results) == len(outs)
    for value, name in zip(results, outs, strict=True):
        t = g.type_of(name)
        assert value.shape == t.shape and value.dtype == t.np_dtype, (value.shape, t)
    return results


def randn(rng: np.random.Generator, shape, scale: float = 1.0) -> np.ndarray:
    return np.asarray(rng.standard_normal(shape) * scale, dtype=np.float32)


def assert_exact(ours: np.ndarray, theirs: np.ndarray) -> None:
    np.testing.assert_array_equal(ours, theirs, strict=True)


def assert_within(ours: np.ndarray, theirs: np.ndarray, bound) -> None:
    """Same dtype and shape, and ``|ours - theirs| <= bound`` element-wise."""
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    err = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
    assert np.all(err <= bound), f"max error {err.max()} exceeds the bound"


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


# --------------------------------------------------------------------------- coverage


def test_every_registered_op_has_documented_semantics():
    assert set(REGISTRY.values()) <= set(OP_SEMANTICS)
    for cls, fn in OP_SEMANTICS.items():
        assert fn.__doc__, f"{cls.NAME} has no equation in its docstring"


# --------------------------------------------------------------------------- element-wise

BINARY = [("Add", ops.Add), ("Sub", ops.Sub), ("Mul", ops.Mul), ("Div", ops.Div)]


def _with_zeros(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Sprinkle +0 and -0 into ``x`` so divisions by zero and signed zeros are exercised."""
    x = x.copy()
    x[rng.random(x.shape) < 0.1] = 0.0
    x[rng.random(x.shape) < 0.05] = -0.0
    return x


@pytest.mark.parametrize(("onnx_op", "ir_op"), BINARY)
@FEW
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=4, max_side=4), seed=SEEDS)
def test_float_binary_matches_onnxruntime_exactly(onnx_op, ir_op, shapes, seed):
    rng = np.random.default_rng(seed)
    x, y = (_with_zeros(rng, randn(rng, s, 10)) for s in shapes.input_shapes)
    (ours,) = ir_eval(ir_op(), x, y)
    assert_exact(ours, ort_run(onnx_op, {"x": x, "y": y}))


@pytest.mark.parametrize(("onnx_op", "ir_op"), BINARY)
@pytest.mark.parametrize("dtype", [np.int64, np.int32])
@FEW
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=5), seed=SEEDS)
def test_integer_binary_matches_onnxruntime_exactly(onnx_op, ir_op, dtype, shapes, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-60, 61, shapes.input_shapes[0]).astype(dtype)
    y = rng.integers(-9, 10, shapes.input_shapes[1]).astype(dtype)
    y[y == 0] = 7  # ONNX leaves integer division by zero undefined
    (ours,) = ir_eval(ir_op(), x, y)
    assert_exact(ours, ort_run(onnx_op, {"x": x, "y": y}))


def test_integer_division_truncates_toward_zero():
    x = np.array([7, -7, 7, -7, 6, -6], dtype=np.int64)
    y = np.array([2, 2, -2, -2, 3, -3], dtype=np.int64)
    (ours,) = ir_eval(ops.Div(), x, y)
    assert_exact(ours, np.array([3, -3, -3, 3, 2, 2], dtype=np.int64))


def test_integer_division_by_zero_is_an_error_naming_the_node():
    g = Graph("div")
    g.add_input("x", TensorType("i64", ("B", 3)))
    g.add_constant("d", np.array([1, 0, 2], dtype=np.int64))
    (q,) = g.add_node(ops.Div(), ["x", "d"], "q", loc=Loc("onnx:/Div"))
    with pytest.raises(SnucError) as err:
        evaluate_node(g.producer(q), (np.ones((2, 3), np.int64), g.constants["d"]))
    message = one_line(err)
    assert "onnx:/Div" in message and "%q" in message and "division by zero" in message


UNARY_EXACT = [
    ("Neg", ops.Neg(), {}),
    ("Relu", ops.Relu(), {}),
    ("LeakyRelu", ops.LeakyRelu(alpha=0.1), {"alpha": 0.1}),
    ("LeakyRelu", ops.LeakyRelu(alpha=0.01), {}),
]


@pytest.mark.parametrize(("onnx_op", "ir_op", "attrs"), UNARY_EXACT)
@FEW
@given(shape=hnp.array_shapes(min_dims=0, max_dims=4, max_side=5), seed=SEEDS)
def test_exact_unary_matches_onnxruntime(onnx_op, ir_op, attrs, shape, seed):
    rng = np.random.default_rng(seed)
    x = _with_zeros(rng, randn(rng, shape, 5))
    (ours,) = ir_eval(ir_op, x)
    assert_exact(ours, ort_run(onnx_op, {"x": x}, **attrs))


# onnxruntime evaluates the logistic and tanh with polynomial approximations; its logistic
# is off by up to ~2e-7 absolute for large negative x, where ours stays a few ulp accurate.
TRANSCENDENTAL = [("Sigmoid", ops.Sigmoid(), 3e-7), ("Tanh", ops.Tanh(), 1e-7)]


@pytest.mark.parametrize(("onnx_op", "ir_op", "atol"), TRANSCENDENTAL)
@FEW
@given(shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=6), seed=SEEDS)
def test_transcendental_unary_matches_onnxruntime(onnx_op, ir_op, atol, shape, seed):
    rng = np.random.default_rng(seed)
    x = randn(rng, shape, 8)
    (ours,) = ir_eval(ir_op, x)
    theirs = ort_run(onnx_op, {"x": x})
    assert_within(ours, theirs, 1e-6 * np.abs(theirs) + atol)


def test_sigmoid_is_stable_and_accurate_at_the_extremes():
    x = np.array([-1000, -100, -30, -1, 0, 1, 30, 100, 1000], dtype=np.float32)
    (ours,) = ir_eval(ops.Sigmoid(), x)
    exact = np.exp(-np.logaddexp(0.0, -x.astype(np.float64)))
    assert np.all(np.isfinite(ours))
    # Results below float32's normal range keep fewer significant bits.
    np.testing.assert_allclose(ours, exact, rtol=1e-6, atol=1e-44)


def test_step_is_heaviside_with_zero_at_zero():
    x = np.array([-np.inf, -1.5, -0.0, 0.0, 1e-30, 2.0, np.inf], dtype=np.float32)
    (ours,) = ir_eval(ops.Step(), x)
    assert_exact(ours, np.heaviside(x, 0).astype(np.float32))


@pytest.mark.parametrize(
    ("onnx_op", "ir_op"),
    [
        ("Greater", ops.Greater()),
        ("GreaterOrEqual", ops.GreaterOrEqual()),
        ("Less", ops.Less()),
    ],
)
@FEW
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=5), seed=SEEDS)
def test_comparisons_match_onnxruntime_including_ties(onnx_op, ir_op, shapes, seed):
    rng = np.random.default_rng(seed)
    x, y = (rng.integers(-2, 3, s).astype(np.float32) for s in shapes.input_shapes)
    (ours,) = ir_eval(ir_op, x, y)
    assert_exact(ours, ort_run(onnx_op, {"x": x, "y": y}, out_dtype=np.bool_))


CASTS = [
    ("f32", "i64"),
    ("f32", "i32"),
    ("f32", "bool"),
    ("f32", "f64"),
    ("f64", "f32"),
    ("bool", "f32"),
    ("bool", "i64"),
    ("i64", "f32"),
    ("i32", "i64"),
    ("i64", "i32"),
]


@pytest.mark.parametrize(("src", "dst"), CASTS)
@FEW
@given(shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=5), seed=SEEDS)
def test_cast_matches_onnxruntime(src, dst, shape, seed):
    rng = np.random.default_rng(seed)
    values = np.asarray(rng.standard_normal(shape) * 50)
    values[rng.random(shape) < 0.2] = 0.0
    if src == "bool":
        x = values > 0
    elif src in ("i64", "i32"):
        x = np.round(values).astype(IR_DTYPE[src])
    else:
        x = values.astype(IR_DTYPE[src])
    x = np.asarray(x)
    (ours,) = ir_eval(ops.Cast(to=dst), x)
    theirs = ort_run(
        "Cast", {"x": x}, out_dtype=IR_DTYPE[dst], to=ONNX_TYPE[np.dtype(IR_DTYPE[dst])]
    )
    assert_exact(ours, theirs)


def test_cast_truncates_floats_toward_zero():
    x = np.array([-2.7, -0.5, 0.5, 2.7], dtype=np.float32)
    (ours,) = ir_eval(ops.Cast(to="i64"), x)
    assert_exact(ours, np.array([-2, 0, 0, 2], dtype=np.int64))


@FEW
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=3, max_dims=3, max_side=4), seed=SEEDS)
def test_where_matches_onnxruntime(shapes, seed):
    rng = np.random.default_rng(seed)
    c_shape, x_shape, y_shape = shapes.input_shapes
    cond = rng.random(c_shape) < 0.5
    x, y = randn(rng, x_shape), randn(rng, y_shape)
    (ours,) = ir_eval(ops.Where(), cond, x, y)
    assert_exact(ours, ort_run("Where", {"c": cond, "x": x, "y": y}, out_dtype=np.float32))


# --------------------------------------------------------------------------- SNU


def spec_snu(a, s_prev, y_prev, decay, bias, g, h):
    """SPEC §1 in float64: s = g(a + l s (1 - y)), y = h(s + b)."""
    a, s_prev, y_prev, decay, bias = (
        np.asarray(v, np.float64) for v in (a, s_prev, y_prev, decay, bias)
    )
    s = a + decay * s_prev * (1.0 - y_prev)
    if g == "relu":
        s = np.maximum(s, 0.0)
    z = s + bias
    y = np.heaviside(z, 0.0) if h == "step" else 1.0 / (1.0 + np.exp(-z))
    return s, y, z


@pytest.mark.parametrize("g", ["relu", "identity"])
@pytest.mark.parametrize("h", ["step", "sigmoid"])
@pytest.mark.parametrize("per_neuron", [True, False])
@FEW
@given(batch=st.integers(1, 4), neurons=st.integers(1, 12), seed=SEEDS)
def test_snu_layer_matches_spec(g, h, per_neuron, batch, neurons, seed):
    rng = np.random.default_rng(seed)
    a = randn(rng, (batch, neurons), 2)
    s_prev = np.abs(randn(rng, (batch, neurons), 2))
    y_prev = (
        (rng.random((batch, neurons)) < 0.4).astype(np.float32)
        if h == "step"
        else rng.random((batch, neurons)).astype(np.float32)
    )
    shape = (neurons,) if per_neuron else ()
    decay = rng.uniform(0.05, 1.0, shape).astype(np.float32)
    bias = rng.uniform(-2.0, 0.0, shape).astype(np.float32)
    s, y = ir_eval(ops.SNULayer(g=g, h=h), a, s_prev, y_prev, decay, bias)
    s_ref, y_ref, z_ref = spec_snu(a, s_prev, y_prev, decay, bias, g, h)
    scale = np.abs(a) + np.abs(decay * s_prev) + np.abs(bias)
    assert_within(s.astype(np.float64), s_ref, 1e-6 * scale)
    if h == "step":
        clear = np.abs(z_ref) > 1e-5 * scale  # spikes may differ only at near-exact ties
        assert_exact(y[clear], y_ref[clear].astype(np.float32))
        assert set(np.unique(y)) <= {0.0, 1.0}
    else:
        assert_within(y.astype(np.float64), y_ref, 1e-6)


def test_snu_layer_does_not_spike_at_exactly_the_threshold():
    a = np.array([[0.5, 0.75, 1.0]], dtype=np.float32)
    zeros = np.zeros_like(a)
    s, y = ir_eval(ops.SNULayer(), a, zeros, zeros, np.float32(0.8), np.float32(-0.75))
    assert_exact(s, a)
    assert_exact(y, np.array([[0.0, 0.0, 1.0]], dtype=np.float32))


def test_snu_layer_resets_where_it_spiked():
    a = np.zeros((1, 2), np.float32)
    s_prev = np.array([[2.0, 2.0]], np.float32)
    y_prev = np.array([[1.0, 0.0]], np.float32)
    s, _ = ir_eval(ops.SNULayer(), a, s_prev, y_prev, np.float32(0.5), np.float32(-1.0))
    assert_exact(s, np.array([[0.0, 1.0]], np.float32))


# --------------------------------------------------------------------------- matrix work


@FEW
@given(
    lead=hnp.array_shapes(min_dims=0, max_dims=2, max_side=4),
    k=st.integers(1, 40),
    n=st.integers(1, 20),
    seed=SEEDS,
)
def test_dense_matches_onnxruntime_matmul(lead, k, n, seed):
    rng = np.random.default_rng(seed)
    x, w = randn(rng, (*lead, k)), randn(rng, (k, n), 0.5)
    (ours,) = ir_eval(ops.Dense(), x, w)
    theirs = ort_run("MatMul", {"x": x, "w": w})
    assert_within(ours, theirs, 1e-6 * (np.abs(x).astype(np.float64) @ np.abs(w)))


@FEW
@given(
    shapes=st.sampled_from(
        [
            ((5,), (5, 3)),
            ((4, 5), (5,)),
            ((2, 4, 5), (2, 5, 3)),
            ((2, 1, 4, 5), (3, 5, 2)),
            ((4, 5), (3, 5, 6)),
        ]
    ),
    seed=SEEDS,
)
def test_digital_matmul_matches_onnxruntime(shapes, seed):
    rng = np.random.default_rng(seed)
    x, y = randn(rng, shapes[0]), randn(rng, shapes[1])
    (ours,) = ir_eval(ops.MatMul(), x, y)
    theirs = ort_run("MatMul", {"x": x, "y": y})
    assert_within(ours, theirs, 1e-6 * np.matmul(np.abs(x).astype(np.float64), np.abs(y)))


@st.composite
def conv_cases(draw):
    group = draw(st.integers(1, 3))
    c, m = group * draw(st.integers(1, 3)), group * draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilations = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    hw = (draw(st.integers(1, 8)), draw(st.integers(1, 8)))
    for i in range(2):
        assume(hw[i] + pads[i] + pads[i + 2] >= dilations[i] * (kernel[i] - 1) + 1)
    return (draw(st.integers(1, 2)), c, m, hw, kernel, strides, dilations, pads, group)


@pytest.mark.parametrize("conv", [ops.Conv, ops.DigitalConv])
@FEW
@given(case=conv_cases(), seed=SEEDS)
def test_conv_matches_onnxruntime(conv, case, seed):
    n, c, m, hw, kernel, strides, dilations, pads, group = case
    rng = np.random.default_rng(seed)
    x, w = randn(rng, (n, c, *hw)), randn(rng, (m, c // group, *kernel))
    op = conv(strides=strides, pads=pads, dilations=dilations, group=group)
    (ours,) = ir_eval(op, x, w)
    attrs = dict(strides=strides, pads=pads, dilations=dilations, group=group)
    theirs = ort_run("Conv", {"x": x, "w": w}, **attrs)
    scale = ort_run("Conv", {"x": np.abs(x), "w": np.abs(w)}, **attrs)
    assert_within(ours, theirs, 1e-6 * scale.astype(np.float64) + 1e-30)


# --------------------------------------------------------------------------- shape ops


@FEW
@given(
    case=st.sampled_from(
        [
            ((2, 3, 4), (24,)),
            ((2, 3, 4), (6, 4)),
            ((2, 3, 4), (4, 1, 6)),
            ((6,), (2, 1, 3)),
            ((1, 5), (5,)),
        ]
    ),
    seed=SEEDS,
)
def test_reshape_matches_onnxruntime(case, seed):
    src, dst = case
    x = randn(np.random.default_rng(seed), src)
    (ours,) = ir_eval(ops.Reshape(shape=dst), x)
    theirs = ort_run("Reshape", {"x": x}, initializers={"shape": np.array(dst, np.int64)})
    assert_exact(ours, theirs)


def test_reshape_resolves_the_batch_dimension():
    g = Graph("flatten")
    g.add_input("x", TensorType("f32", ("B", 3, 4)))
    (y,) = g.add_node(ops.Reshape(shape=("B", 12)), ["x"], "y")
    x = randn(np.random.default_rng(0), (5, 3, 4))
    (ours,) = evaluate_node(g.producer(y), (x,))
    theirs = ort_run("Reshape", {"x": x}, initializers={"shape": np.array([5, 12], np.int64)})
    assert_exact(ours, theirs)


@FEW
@given(data=st.data(), shape=hnp.array_shapes(min_dims=1, max_dims=4, max_side=4), seed=SEEDS)
def test_transpose_matches_onnxruntime(data, shape, seed):
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    x = randn(np.random.default_rng(seed), shape)
    (ours,) = ir_eval(ops.Transpose(perm=perm), x)
    assert_exact(ours, ort_run("Transpose", {"x": x}, perm=perm))


@FEW
@given(
    base=hnp.array_shapes(min_dims=1, max_dims=3, max_side=4),
    sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    data=st.data(),
    seed=SEEDS,
)
def test_concat_matches_onnxruntime(base, sizes, data, seed):
    axis = data.draw(st.integers(-len(base), len(base) - 1))
    rng = np.random.default_rng(seed)
    parts = []
    for size in sizes:
        shape = list(base)
        shape[axis] = size
        parts.append(randn(rng, shape))
    (ours,) = ir_eval(ops.Concat(axis=axis), *parts)
    feeds = {f"x{i}": p for i, p in enumerate(parts)}
    assert_exact(ours, ort_run("Concat", feeds, axis=axis))


@FEW
@given(
    table_shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
    idx_shape=hnp.array_shapes(min_dims=0, max_dims=2, max_side=4),
    data=st.data(),
    seed=SEEDS,
)
def test_gather_matches_onnxruntime(table_shape, idx_shape, data, seed):
    axis = data.draw(st.integers(-len(table_shape), len(table_shape) - 1))
    rng = np.random.default_rng(seed)
    table = randn(rng, table_shape)
    size = table_shape[axis]
    indices = rng.integers(-size, size, idx_shape).astype(np.int64)
    (ours,) = ir_eval(ops.Gather(axis=axis), table, indices)
    assert_exact(ours, ort_run("Gather", {"table": table, "indices": indices}, axis=axis))


def test_gather_out_of_range_is_an_error():
    table = randn(np.random.default_rng(0), (10, 3))
    with pytest.raises(SnucError) as err:
        ir_eval(ops.Gather(), table, np.array([1, 10], np.int64))
    assert "index 10 is out of range [-10, 10)" in one_line(err)


# --------------------------------------------------------------------------- reductions


@pytest.mark.parametrize(
    ("onnx_op", "ir_op"),
    [
        ("ReduceSum", ops.ReduceSum),
        ("ReduceMean", ops.ReduceMean),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
@FEW
@given(shape=hnp.array_shapes(min_dims=1, max_dims=4, max_side=5), data=st.data(), seed=SEEDS)
def test_reductions_match_onnxruntime(onnx_op, ir_op, dtype, shape, data, seed):
    rank = len(shape)
    chosen = data.draw(st.lists(st.integers(0, rank - 1), unique=True, max_size=rank))
    axes = tuple(a - rank if data.draw(st.booleans()) else a for a in chosen)
    keepdims = data.draw(st.booleans())
    rng = np.random.default_rng(seed)
    x = randn(rng, shape, 10) if dtype == np.float32 else rng.integers(-50, 51, shape).astype(dtype)
    (ours,) = ir_eval(ir_op(axes=axes, keepdims=keepdims), x)
    inits = {"axes": np.array(axes, np.int64)} if axes else {}
    theirs = ort_run(onnx_op, {"x": x}, initializers=inits, keepdims=int(keepdims))
    if dtype == np.float32:
        (scale,) = ir_eval(ir_op(axes=axes, keepdims=keepdims), np.abs(x).astype(np.float64))
        assert_within(ours, theirs, 1e-6 * scale)
    else:
        assert_exact(ours, theirs)


@pytest.mark.parametrize(
    ("onnx_op", "ir_op", "atol"),
    [
        ("Softmax", ops.Softmax, 1e-7),
        ("LogSoftmax", ops.LogSoftmax, 1e-6),
    ],
)
@FEW
@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=8), data=st.data(), seed=SEEDS)
def test_softmax_family_matches_onnxruntime(onnx_op, ir_op, atol, shape, data, seed):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = randn(np.random.default_rng(seed), shape, 10)
    (ours,) = ir_eval(ir_op(axis=axis), x)
    theirs = ort_run(onnx_op, {"x": x}, axis=axis)
    assert_within(ours, theirs, 1e-6 * np.abs(theirs) + atol)


def test_softmax_is_stable_for_large_inputs():
    x = np.array([[1000.0, 1000.0, -1000.0]], dtype=np.float32)
    (soft,) = ir_eval(ops.Softmax(), x)
    (log_soft,) = ir_eval(ops.LogSoftmax(), x)
    assert_exact(soft, np.array([[0.5, 0.5, 0.0]], np.float32))
    np.testing.assert_allclose(log_soft, [[-np.log(2), -np.log(2), -2000 - np.log(2)]], rtol=1e-6)


# --------------------------------------------------------------------------- pooling


@st.composite
def pool_cases(draw):
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    # onnxruntime requires each pad to be smaller than the kernel
    pads = tuple(draw(st.integers(0, kernel[i % 2] - 1)) for i in range(4))
    hw = (draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    for i in range(2):
        assume(hw[i] + pads[i] + pads[i + 2] >= kernel[i])
    return (draw(st.integers(1, 2)), draw(st.integers(1, 3)), hw, kernel, strides, pads)


@FEW
@given(case=pool_cases(), seed=SEEDS)
def test_maxpool_matches_onnxruntime_exactly(case, seed):
    n, c, hw, kernel, strides, pads = case
    x = randn(np.random.default_rng(seed), (n, c, *hw)) - 3.0  # negative: padding must not win
    (ours,) = ir_eval(ops.MaxPool(kernel=kernel, strides=strides, pads=pads), x)
    theirs = ort_run("MaxPool", {"x": x}, kernel_shape=kernel, strides=strides, pads=pads)
    assert_exact(ours, theirs)


@pytest.mark.parametrize("count_include_pad", [False, True])
@FEW
@given(case=pool_cases(), seed=SEEDS)
def test_avgpool_matches_onnxruntime(count_include_pad, case, seed):
    n, c, hw, kernel, strides, pads = case
    x = randn(np.random.default_rng(seed), (n, c, *hw)) + 1.0
    op = ops.AvgPool(kernel=kernel, strides=strides, pads=pads, count_include_pad=count_include_pad)
    (ours,) = ir_eval(op, x)
    attrs = dict(kernel_shape=kernel, strides=strides, pads=pads)
    theirs = ort_run("AveragePool", {"x": x}, count_include_pad=int(count_include_pad), **attrs)
    scale = ort_run(
        "AveragePool", {"x": np.abs(x)}, count_include_pad=int(count_include_pad), **attrs
    )
    assert_within(ours, theirs, 1e-6 * scale.astype(np.float64))


def test_avgpool_padding_counts_only_when_asked():
    x = np.ones((1, 1, 2, 2), np.float32)
    exclude = ops.AvgPool(kernel=(2, 2), pads=(1, 1, 0, 0))
    include = ops.AvgPool(kernel=(2, 2), pads=(1, 1, 0, 0), count_include_pad=True)
    assert_exact(ir_eval(exclude, x)[0], np.ones((1, 1, 2, 2), np.float32))
    assert_exact(ir_eval(include, x)[0], np.array([[[[0.25, 0.5], [0.5, 1.0]]]], np.float32))


# --------------------------------------------------------------------------- run: the time loop

F, N, OUT = 6, 16, 5


def snu_network(g_act="relu", h_act="step", recurrent=True, seed=0):
    """A recurrent SNU layer and a sigmoid readout, built with the Graph API.

    Returns the graph and its parameters as float32 arrays.
    """
    rng = np.random.default_rng(seed)
    p = {
        "W": randn(rng, (F, N), 1.0),
        "H": randn(rng, (N, N), 0.3),
        "decay": rng.uniform(0.6, 1.0, N).astype(np.float32),
        "bias": rng.uniform(-1.0, -0.3, N).astype(np.float32),
        "Wo": randn(rng, (N, OUT), 0.5),
    }
    g = Graph("rsnu")
    for name, value in p.items():
        g.add_constant(name, value)
    g.add_input("x", TensorType("f32", ("B", F)))
    g.add_state("s", TensorType("f32", ("B", N)))
    g.add_state("y", TensorType("f32", ("B", N)))
    (a,) = g.add_node(ops.Dense(), ["x", "W"], "ax")
    if recurrent:
        (ah,) = g.add_node(ops.Dense(), ["y", "H"], "ah")
        (a,) = g.add_node(ops.Add(), [a, ah], "a")
    s_new, y_new = g.add_node(
        ops.SNULayer(g=g_act, h=h_act), [a, "s", "y", "decay", "bias"], ["s_new", "y_new"]
    )
    g.set_next("s", s_new)
    g.set_next("y", y_new)
    (z,) = g.add_node(ops.Dense(), [y_new, "Wo"], "z")
    (p_out,) = g.add_node(ops.Sigmoid(), [z], "p")
    g.outputs += [y_new, p_out]
    return g, p


def spec_loop(x, p, g_act="relu", h_act="step", recurrent=True):
    """SPEC §1's time loop over ``x[T, B, F]`` in float64: states start at zero."""
    steps, batch = x.shape[:2]
    s = np.zeros((batch, N))
    y = np.zeros((batch, N))
    spikes, probs = [], []
    for t in range(steps):
        a = x[t].astype(np.float64) @ p["W"]
        if recurrent:
            a = a + y @ p["H"]
        s, y, _ = spec_snu(a, s, y, p["decay"], p["bias"], g_act, h_act)
        spikes.append(y)
        probs.append(1.0 / (1.0 + np.exp(-(y @ p["Wo"]))))
    return np.stack(spikes), np.stack(probs)


@pytest.mark.parametrize(("g_act", "h_act"), [("relu", "step"), ("identity", "sigmoid")])
def test_recurrent_snu_run_matches_spec_over_50_steps(g_act, h_act):
    graph, params = snu_network(g_act, h_act)
    x = randn(np.random.default_rng(1), (50, 3, F))
    out = run(graph, x)
    y_ref, p_ref = spec_loop(x, params, g_act, h_act)
    assert set(out) == {"y_new", "p"}
    assert out["y_new"].shape == (50, 3, N) and out["y_new"].dtype == np.float32
    assert out["p"].shape == (50, 3, OUT) and out["p"].dtype == np.float32
    if h_act == "step":
        assert 0.05 < out["y_new"].mean() < 0.95, "the test network should spike sometimes"
        assert_exact(out["y_new"], y_ref.astype(np.float32))
    else:
        assert np.abs(out["y_new"] - y_ref).max() <= 1e-5
    assert np.abs(out["p"] - p_ref).max() <= 1e-5


def test_states_start_at_zero_on_every_run():
    graph, params = snu_network(recurrent=False)
    x = randn(np.random.default_rng(2), (1, 4, F))
    first = run(graph, x)
    s0 = np.maximum(x[0] @ params["W"], 0)
    assert_exact(first["y_new"][0], (s0 + params["bias"] > 0).astype(np.float32))
    assert_exact(run(graph, x)["y_new"], first["y_new"])


def test_outputs_are_causal():
    graph, _ = snu_network()
    rng = np.random.default_rng(3)
    x = randn(rng, (30, 2, F))
    padded = np.concatenate([x, randn(rng, (10, 2, F), 5.0)])
    short, long = run(graph, x), run(graph, padded)
    for name in short:
        assert_exact(long[name][:30], short[name])


def test_batched_run_equals_one_sequence_at_a_time():
    graph, _ = snu_network()
    x = randn(np.random.default_rng(4), (40, 5, F))
    batched = run(graph, x)
    for b in range(5):
        alone = run(graph, x[:, b : b + 1])
        assert_exact(alone["y_new"][:, 0], batched["y_new"][:, b])
        # BLAS may sum a single row in another order than a batch: allow rounding only.
        np.testing.assert_allclose(alone["p"][:, 0], batched["p"][:, b], rtol=0, atol=1e-6)


def test_trace_returns_every_node_result_over_time():
    graph, _ = snu_network()
    x = randn(np.random.default_rng(5), (7, 2, F))
    outputs, values = run(graph, x, trace=True)
    assert set(values) == {"ax", "ah", "a", "s_new", "y_new", "z", "p"}
    for name, value in values.items():
        assert value.shape == (7, *graph.type_of(name).concrete(2))
    assert_exact(values["p"], outputs["p"])
    # The state carries the previous step's spikes into the recurrent product.
    np.testing.assert_allclose(
        values["ah"][1:], values["y_new"][:-1] @ graph.constants["H"], atol=1e-6
    )
    assert_exact(values["ah"][0], np.zeros((2, N), np.float32))


def test_empty_sequence_gives_empty_outputs():
    graph, _ = snu_network()
    out = run(graph, np.zeros((0, 3, F), np.float32))
    assert out["p"].shape == (0, 3, OUT)


def conv_network(seed=0):
    """Conv -> SNU -> max pool -> flatten (reshape with B) -> dense, over [B, 1, 6, 6]."""
    rng = np.random.default_rng(seed)
    g = Graph("csnu")
    g.add_constant("K", randn(rng, (4, 1, 3, 3)))
    g.add_constant("decay", np.float32(0.8))
    g.add_constant("bias", np.float32(-0.5))
    g.add_constant("Wo", randn(rng, (36, 3)))
    g.add_input("x", TensorType("f32", ("B", 1, 6, 6)))
    g.add_state("s", TensorType("f32", ("B", 4, 6, 6)))
    g.add_state("y", TensorType("f32", ("B", 4, 6, 6)))
    (c,) = g.add_node(ops.Conv(pads=(1, 1, 1, 1)), ["x", "K"], "conv")
    s_new, y_new = g.add_node(ops.SNULayer(), [c, "s", "y", "decay", "bias"], ["s_new", "y_new"])
    g.set_next("s", s_new)
    g.set_next("y", y_new)
    (pooled,) = g.add_node(ops.MaxPool(kernel=(2, 2), strides=(2, 2)), [y_new], "pool")
    (flat,) = g.add_node(ops.Reshape(shape=("B", 36)), [pooled], "flat")
    (logits,) = g.add_node(ops.Dense(), [flat, "Wo"], "logits")
    g.outputs.append(logits)
    return g


def test_conv_network_runs_at_any_batch_and_its_conv_stage_matches_onnxruntime():
    graph = conv_network()
    x = randn(np.random.default_rng(6), (5, 3, 1, 6, 6))
    outputs, values = run(graph, x, trace=True)
    assert outputs["logits"].shape == (5, 3, 3)
    assert 0 < values["y_new"].mean() < 1
    kernel = graph.constants["K"]
    for t in range(5):
        theirs = ort_run("Conv", {"x": x[t], "w": kernel}, pads=(1, 1, 1, 1))
        scale = ort_run("Conv", {"x": np.abs(x[t]), "w": np.abs(kernel)}, pads=(1, 1, 1, 1))
        assert_within(values["conv"][t], theirs, 1e-6 * scale.astype(np.float64))
    alone = run(graph, x[:, 1:2])
    np.testing.assert_allclose(alone["logits"][:, 0], outputs["logits"][:, 1], atol=1e-5)


def token_network():
    """Token ids i64[B] -> embedding -> dense -> log-softmax."""
    rng = np.random.default_rng(7)
    g = Graph("lm")
    g.add_constant("E", randn(rng, (10, 4)))
    g.add_constant("W", randn(rng, (4, 10)))
    g.add_input("ids", TensorType("i64", ("B",)))
    (emb,) = g.add_node(ops.Gather(), ["E", "ids"], "emb")
    (z,) = g.add_node(ops.Dense(), [emb, "W"], "z", loc=Loc("onnx:/dense"))
    (out,) = g.add_node(ops.LogSoftmax(), [z], "logp")
    g.outputs.append(out)
    return g


def test_token_ids_of_any_integer_dtype_are_accepted():
    graph = token_network()
    ids = np.random.default_rng(8).integers(0, 10, (6, 2))
    out64 = run(graph, ids.astype(np.int64))["logp"]
    out32 = run(graph, ids.astype(np.int32))["logp"]
    assert out64.shape == (6, 2, 10) and out64.dtype == np.float32
    assert_exact(out32, out64)
    expected = graph.constants["E"][ids] @ graph.constants["W"]
    np.testing.assert_allclose(np.exp(out64).sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        out64 - out64.max(-1, keepdims=True), expected - expected.max(-1, keepdims=True), atol=1e-5
    )


def test_out_of_vocabulary_token_is_an_error_naming_the_node():
    with pytest.raises(SnucError) as err:
        run(token_network(), np.array([[1, 12]], np.int64))
    message = one_line(err)
    assert "dig.gather %emb" in message and "index 12" in message


def test_float64_input_is_rounded_to_float32():
    graph, _ = snu_network()
    x = np.random.default_rng(9).standard_normal((8, 2, F))
    as64, as32 = run(graph, x), run(graph, x.astype(np.float32))
    for name in as32:
        assert_exact(as64[name], as32[name])


def two_input_graph():
    g = Graph("two")
    g.add_input("u", TensorType("f32", ("B", 3)))
    g.add_input("v", TensorType("f32", ("B", 3)))
    (w,) = g.add_node(ops.Add(), ["u", "v"], "w")
    g.outputs.append(w)
    return g


def test_inputs_by_name():
    u, v = (randn(np.random.default_rng(i), (4, 2, 3)) for i in (10, 11))
    assert_exact(run(two_input_graph(), {"u": u, "v": v})["w"], u + v)


BAD_INPUTS = [
    ("rank", lambda: snu_network()[0], np.zeros((5, F), np.float32), ["%x", "rank 3", "rank 2"]),
    (
        "features",
        lambda: snu_network()[0],
        np.zeros((5, 2, F + 1), np.float32),
        ["%x", "[T, B, 6]", "[5, 2, 7]"],
    ),
    (
        "int for float",
        lambda: snu_network()[0],
        np.zeros((5, 2, F), np.int64),
        ["%x", "float32", "int64"],
    ),
    ("float for ids", token_network, np.zeros((5, 2), np.float32), ["%ids", "integer", "float32"]),
    ("not an array", lambda: snu_network()[0], [[[0.0] * F]], ["%x", "NumPy array", "list"]),
    ("missing name", two_input_graph, {"u": np.zeros((2, 1, 3), np.float32)}, ["missing", "%v"]),
    (
        "unknown name",
        two_input_graph,
        {
            "u": np.zeros((2, 1, 3), np.float32),
            "v": np.zeros((2, 1, 3), np.float32),
            "q": np.zeros((2, 1, 3), np.float32),
        },
        ["unknown input q"],
    ),
    (
        "bare array, two inputs",
        two_input_graph,
        np.zeros((2, 1, 3), np.float32),
        ["2 inputs", "dict"],
    ),
    (
        "lengths differ",
        two_input_graph,
        {"u": np.zeros((2, 1, 3), np.float32), "v": np.zeros((3, 1, 3), np.float32)},
        ["sequence length", "%u: 2", "%v: 3"],
    ),
    (
        "batches differ",
        two_input_graph,
        {"u": np.zeros((2, 1, 3), np.float32), "v": np.zeros((2, 4, 3), np.float32)},
        ["batch size"],
    ),
    (
        "ids too large",
        lambda: _i32_token_graph(),
        np.full((2, 1), 2**40, np.int64),
        ["%ids", "do not fit i32"],
    ),
]


def _i32_token_graph():
    g = Graph("ids32")
    g.add_constant("E", np.eye(3, dtype=np.float32))
    g.add_input("ids", TensorType("i32", ("B",)))
    (emb,) = g.add_node(ops.Gather(), ["E", "ids"], "emb")
    g.outputs.append(emb)
    return g


@pytest.mark.parametrize(
    ("what", "make_graph", "inputs", "fragments"), BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS]
)
def test_bad_inputs_are_one_line_errors(what, make_graph, inputs, fragments):
    with pytest.raises(SnucError) as err:
        run(make_graph(), inputs)
    message = one_line(err)
    for fragment in fragments:
        assert fragment in message


def test_an_unknown_mode_is_an_error_listing_the_modes():
    graph, _ = snu_network()
    with pytest.raises(SnucError) as err:
        run(graph, np.zeros((2, 1, F), np.float32), mode="fast")
    message = one_line(err)
    assert "'fast'" in message and "float, quantized, pcm" in message


def test_a_result_that_contradicts_its_type_is_caught(monkeypatch):
    graph, _ = snu_network()
    monkeypatch.setitem(OP_SEMANTICS, ops.Sigmoid, lambda op, x: (x[:1],))
    with pytest.raises(VerifyError, match="dig.sigmoid %p computed"):
        run(graph, np.zeros((2, 3, F), np.float32))
