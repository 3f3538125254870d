"""Small ONNX models built by hand with ``onnx.helper``, shared by the tests.

Every builder returns an ``onnx.ModelProto`` that passes the ONNX checker and runs in
onnxruntime, with random float32 weights drawn from ``seed``. Two forms (SPEC §2):

* step form -- inputs ``x`` and the previous states, outputs ``y`` and the new states,
  paired in ``metadata_props["snuc.state"]`` (:data:`STATE_KEY`);
* sequence form -- input ``X[T, B, ...]``, a Scan over axis 0 whose body is the same step,
  zero initial states computed from ``Shape(X)``, output ``Y[T, B, ...]``.

The SNU layer every builder encodes (Woźniak et al. 2020, SPEC §1), for layer ``i``::

    a   = x W                 (MatMul(x, W), or Gemm(x, W^T, transB=1))
          (+ y_prev H         if recurrent)
    s   = g(a + (s_prev * l) * (1 - y_prev))       g = Relu, or identity
    y   = h(s + b)            h = Cast(Greater(., 0)) or Where(Greater(., 0), 1, 0) (step),
                              or Sigmoid (soft SNU)

with ``W`` ``[n_in, n]`` (N(0, 1) scaled by ``2 / sqrt(n_in)``), decay ``l`` scalar 0.8 or
per neuron in (0.6, 0.95), bias ``b`` per neuron around -0.5, recurrent ``H`` ``[n, n]``.
Value names follow exporters (``l0/MatMul``); state inputs are ``l<i>.s`` and ``l<i>.y``,
their new values ``l<i>.s_next`` and ``l<i>.y_next``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STATE_KEY = "snuc.state"
OPSET = 17
IR_VERSION = 8
FLOAT = TensorProto.FLOAT


@dataclass
class StepSpec:
    """One timestep of a network, before it is wrapped as a step or a sequence model.

    Attributes:
        x: the input's name, element type and shape after the batch.
        states: ``(input, new value, shape after the batch)`` per state.
        output: the name of the per-step output and its shape after the batch.
        nodes, initializers: the step's computation.
    """

    x: tuple[str, int, tuple[int, ...]]
    states: list[tuple[str, str, tuple[int, ...]]] = field(default_factory=list)
    output: tuple[str, tuple[int, ...]] = ("y", ())
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: Sequence[str], output: str, name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=name, **attrs))
        return output


def _finish(graph: onnx.GraphProto, opset: int, metadata: dict[str, str] | None) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION
    )
    for key, value in (metadata or {}).items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(model)
    return model


def _info(name: str, elem: int, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


def as_step_model(
    spec: StepSpec, name: str = "snu_step", *, opset: int = OPSET, metadata: bool = True
) -> onnx.ModelProto:
    """Wrap a step as a step-form model; the pairing goes in the metadata if ``metadata``."""
    x_name, x_elem, x_shape = spec.x
    inputs = [_info(x_name, x_elem, ["B", *x_shape])]
    inputs += [_info(s_in, FLOAT, ["B", *shape]) for s_in, _, shape in spec.states]
    y_name, y_shape = spec.output
    outputs = [_info(y_name, FLOAT, ["B", *y_shape])]
    outputs += [_info(s_out, FLOAT, ["B", *shape]) for _, s_out, shape in spec.states]
    graph = helper.make_graph(spec.nodes, name, inputs, outputs, spec.initializers)
    pairs = {s_out: s_in for s_in, s_out, _ in spec.states}
    return _finish(graph, opset, {STATE_KEY: json.dumps(pairs)} if metadata else None)


def as_scan_model(
    spec: StepSpec,
    name: str = "snu_seq",
    *,
    opset: int = OPSET,
    init: str = "constant_of_shape",
    init_value: float = 0.0,
    readout: str | None = None,
    seed: int = 0,
    final_states_as_outputs: bool = False,
    scan_attrs: dict | None = None,
) -> onnx.ModelProto:
    """Wrap a step as a sequence-form model: a Scan over ``X[T, B, ...]``.

    Args:
        init: how the outer graph builds the initial states from ``Shape(X)``:
            ``"constant_of_shape"`` (Gather the batch, Concat the sizes, ConstantOfShape),
            ``"slice"`` (the same with Slice, as snuc's exporter writes it) or
            ``"expand"`` (Expand a constant ``[1, ...]`` to the batch).
        init_value: the value the states start with (0 for a valid model).
        readout: ops after the Scan on its output ``H[T, B, n]``: None (``Y = H``),
            ``"dense_sigmoid"`` (``Y = Sigmoid(H W_o + b_o)``, ``W_o`` ``[n, 3]``),
            ``"log_softmax"`` (``Y = LogSoftmax(H W_o + b_o, axis=2)``),
            ``"flatten_step"`` (``Y = Reshape(Transpose(H[..., None], [0, 1, 3, 2]),
            [T, B, n])`` via a shape computed from ``Shape(H)``),
            ``"shifted"`` (``Y = H + ConstantOfShape(Shape(H), 0.5)``),
            ``"per_step_chain"`` (Unsqueeze, Transpose, Squeeze, Slice, Concat, Gather,
            ReduceMean and Expand along the feature axes: ``Y[T, B, 3]``),
            ``"time_sum"`` (``Y = H + ReduceSum(H, axis 0)``: mixes timesteps, invalid
            for snuc).
        seed: seeds the readout's weights.
        final_states_as_outputs: also output the Scan's final states.
        scan_attrs: extra Scan attributes (e.g. ``scan_input_axes``).
    """
    rng = np.random.default_rng(seed + 1000)
    _, x_elem, x_shape = spec.x
    outer = StepSpec(x=("X", x_elem, x_shape))
    hidden = "H" if readout else "Y"
    finals = _add_scan(
        outer, spec, "X", hidden, name, init=init, init_value=init_value, scan_attrs=scan_attrs
    )
    out_shape = _readout(outer, readout, hidden, spec.output[1], rng)
    outputs = [_info("Y", FLOAT, ["T", "B", *out_shape])]
    if final_states_as_outputs:
        outputs += [
            _info(f, FLOAT, ["B", *shape])
            for f, (_, _, shape) in zip(finals, spec.states, strict=True)
        ]
    graph = helper.make_graph(
        outer.nodes, name, [_info("X", x_elem, ["T", "B", *x_shape])], outputs, outer.initializers
    )
    return _finish(graph, opset, None)


def _add_scan(
    outer: StepSpec,
    spec: StepSpec,
    x: str,
    out: str,
    name: str,
    *,
    init: str = "constant_of_shape",
    init_value: float = 0.0,
    scan_attrs: dict | None = None,
    tag: str = "",
) -> list[str]:
    """Append to ``outer`` the zero states (from ``Shape(x)``) and a Scan of ``spec`` over
    ``x`` whose per-step output is ``out``; returns the final states' names. ``tag``
    tells apart the value and node names of several Scans."""
    x_name, x_elem, x_shape = spec.x
    body_inputs = [_info(s_in, FLOAT, ["B", *shape]) for s_in, _, shape in spec.states]
    body_inputs.append(_info(x_name, x_elem, ["B", *x_shape]))
    y_name, y_shape = spec.output
    body_outputs = [_info(s_out, FLOAT, ["B", *shape]) for _, s_out, shape in spec.states]
    body_outputs.append(_info(y_name, FLOAT, ["B", *y_shape]))
    body = helper.make_graph(
        spec.nodes, f"{name}_body", body_inputs, body_outputs, spec.initializers
    )
    prefix = f"init{tag}"
    outer.node("Shape", [x], f"{prefix}/shape", f"{prefix}/Shape")
    init_names = [
        _initial_state(outer, prefix, k, shape, init, init_value)
        for k, (_, _, shape) in enumerate(spec.states)
    ]
    finals = [f"final{tag}/{s_in}" for s_in, _, _ in spec.states]
    outer.nodes.append(
        helper.make_node(
            "Scan",
            init_names + [x],
            finals + [out],
            name=f"scan{tag}",
            body=body,
            num_scan_inputs=1,
            **(scan_attrs or {}),
        )
    )
    return finals


def _initial_state(
    outer: StepSpec, p: str, k: int, shape: tuple[int, ...], init: str, value: float
) -> str:
    fill = helper.make_tensor("value", FLOAT, [1], [value])
    sizes = outer.const(f"{p}/sizes_{k}", np.array(shape, dtype=np.int64))
    if init == "slice":
        if k == 0:
            outer.const(f"{p}/start", np.array([1], np.int64))
            outer.const(f"{p}/end", np.array([2], np.int64))
            outer.node(
                "Slice", [f"{p}/shape", f"{p}/start", f"{p}/end"], f"{p}/batch", f"{p}/Slice"
            )
        full = outer.node(
            "Concat", [f"{p}/batch", sizes], f"{p}/full_{k}", f"{p}/Concat_{k}", axis=0
        )
        return outer.node("ConstantOfShape", [full], f"{p}/state_{k}", f"{p}/CoS_{k}", value=fill)
    if k == 0:
        outer.const(f"{p}/one", np.array([1], np.int64))
        outer.node("Gather", [f"{p}/shape", f"{p}/one"], f"{p}/batch", f"{p}/Gather", axis=0)
    full = outer.node("Concat", [f"{p}/batch", sizes], f"{p}/full_{k}", f"{p}/Concat_{k}", axis=0)
    if init == "constant_of_shape":
        return outer.node("ConstantOfShape", [full], f"{p}/state_{k}", f"{p}/CoS_{k}", value=fill)
    if init == "expand":
        base = outer.const(f"{p}/base_{k}", np.full((1, *shape), value, np.float32))
        return outer.node("Expand", [base, full], f"{p}/state_{k}", f"{p}/Expand_{k}")
    raise ValueError(f"unknown init {init!r}")


def _readout(
    outer: StepSpec,
    readout: str | None,
    hidden: str,
    shape: tuple[int, ...],
    rng: np.random.Generator,
) -> tuple[int, ...]:
    if readout is None:
        return shape
    (n,) = shape
    if readout in ("dense_sigmoid", "log_softmax"):
        w = outer.const("out/W", (rng.standard_normal((n, 3)) / np.sqrt(n)).astype(np.float32))
        b = outer.const("out/b", (0.1 * rng.standard_normal(3)).astype(np.float32))
        z = outer.node("MatMul", [hidden, w], "out/z", "out/MatMul")
        z = outer.node("Add", [z, b], "out/zb", "out/Add")
        if readout == "dense_sigmoid":
            outer.node("Sigmoid", [z], "Y", "out/Sigmoid")
        else:
            outer.node("LogSoftmax", [z], "Y", "out/LogSoftmax", axis=2)
        return (3,)
    if readout == "flatten_step":
        outer.const("out/axes", np.array([3], np.int64))
        u = outer.node("Unsqueeze", [hidden, "out/axes"], "out/u", "out/Unsqueeze")
        t = outer.node("Transpose", [u], "out/t", "out/Transpose", perm=[0, 1, 3, 2])
        outer.node("Shape", [hidden], "out/shape", "out/Shape")
        outer.const("out/first2", np.array([0, 1], np.int64))
        outer.node("Gather", ["out/shape", "out/first2"], "out/tb", "out/Gather", axis=0)
        outer.const("out/rest", np.array([-1], np.int64))
        outer.node("Concat", ["out/tb", "out/rest"], "out/target", "out/Concat", axis=0)
        outer.node("Reshape", [t, "out/target"], "Y", "out/Reshape")
        return shape
    if readout == "per_step_chain":
        # Data movement along the non-time axes only: every op moves into the step.
        outer.const("out/ax3", np.array([3], np.int64))
        outer.const("out/ax2", np.array([2], np.int64))
        outer.const("out/one", np.array([1], np.int64))
        outer.const("out/big", np.array([1 << 62], np.int64))
        outer.const("out/pick", np.array([0, 2], np.int64))
        outer.const("out/three", np.array([3], np.int64))
        outer.const("out/zero", np.array([0], np.int64))
        u = outer.node("Unsqueeze", [hidden, "out/ax3"], "out/u", "out/Unsqueeze")
        t = outer.node("Transpose", [u], "out/t", "out/Transpose", perm=[0, 1, 3, 2])
        q = outer.node("Squeeze", [t, "out/ax2"], "out/q", "out/Squeeze")
        sl = outer.node("Slice", [q, "out/one", "out/big", "out/ax2"], "out/sl", "out/Slice")
        c = outer.node("Concat", [sl, hidden], "out/c", "out/Concat", axis=2)
        g = outer.node("Gather", [c, "out/pick"], "out/g", "out/Gather", axis=-1)
        m = outer.node("ReduceMean", [g], "out/m", "out/ReduceMean", axes=[2], keepdims=1)
        outer.node("Shape", [hidden], "out/shape", "out/Shape")
        outer.node("Slice", ["out/shape", "out/zero", "out/ax2"], "out/tb", "out/Slice_1")
        outer.node("Concat", ["out/tb", "out/three"], "out/target", "out/Concat_1", axis=0)
        outer.node("Expand", [m, "out/target"], "Y", "out/Expand")
        return (3,)
    if readout == "shifted":
        outer.node("Shape", [hidden], "out/shape", "out/Shape")
        half = helper.make_tensor("value", FLOAT, [1], [0.5])
        outer.node("ConstantOfShape", ["out/shape"], "out/half", "out/CoS", value=half)
        outer.node("Add", [hidden, "out/half"], "Y", "out/Add")
        return shape
    if readout == "time_sum":
        outer.const("out/axes", np.array([0], np.int64))
        outer.node("ReduceSum", [hidden, "out/axes"], "out/sum", "out/ReduceSum", keepdims=1)
        outer.node("Add", [hidden, "out/sum"], "Y", "out/Add")
        return shape
    raise ValueError(f"unknown readout {readout!r}")


# ---------------------------------------------------------------------- SNU layers


def snu_layer(
    spec: StepSpec,
    i: int,
    x: str,
    n_in: int,
    n: int,
    rng: np.random.Generator,
    *,
    recurrent: bool = False,
    gemm_transb: bool = False,
    step: str = "greater",
    operand_order: str = "normal",
    g: str = "relu",
    h: str = "step",
    decay_per_neuron: bool = False,
    shape: tuple[int, ...] | None = None,
    a: str | None = None,
) -> str:
    """Append SNU layer ``i`` (module docstring) to ``spec``; returns the name of its ``y``.

    ``shape`` is the neurons' shape after the batch (default ``(n,)``); with ``a`` given the
    layer's synaptic input is that value (e.g. a convolution) instead of ``x W``.
    """
    p = f"l{i}"
    shape = shape or (n,)
    swapped = operand_order == "swapped"
    s_prev, y_prev = f"{p}.s", f"{p}.y"
    spec.states += [(s_prev, f"{p}.s_next", shape), (y_prev, f"{p}.y_next", shape)]

    def ordered(u: str, v: str) -> list[str]:
        return [v, u] if swapped else [u, v]

    if a is None:
        w = (rng.standard_normal((n_in, n)) * 2 / np.sqrt(n_in)).astype(np.float32)
        if gemm_transb:
            spec.const(f"{p}.W_t", np.ascontiguousarray(w.T))
            a = spec.node("Gemm", [x, f"{p}.W_t"], f"{p}/a", f"{p}/Gemm", transB=1)
        else:
            spec.const(f"{p}.W", w)
            a = spec.node("MatMul", [x, f"{p}.W"], f"{p}/a", f"{p}/MatMul")
    if recurrent:
        hw = (rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32)
        spec.const(f"{p}.H", hw)
        r = spec.node("MatMul", [y_prev, f"{p}.H"], f"{p}/r", f"{p}/MatMul_rec")
        a = spec.node("Add", ordered(a, r), f"{p}/a_rec", f"{p}/Add_rec")
    if decay_per_neuron:
        decay = rng.uniform(0.6, 0.95, size=shape).astype(np.float32)
    else:
        decay = np.array(0.8, np.float32)
    spec.const(f"{p}.decay", decay)
    spec.const(f"{p}.one", np.array(1.0, np.float32))
    bias_shape = (shape[0],) + (1,) * (len(shape) - 1)
    spec.const(f"{p}.b", (-0.5 + 0.1 * rng.standard_normal(bias_shape)).astype(np.float32))
    keep = spec.node("Sub", [f"{p}.one", y_prev], f"{p}/keep", f"{p}/Sub")
    leak = spec.node("Mul", ordered(s_prev, f"{p}.decay"), f"{p}/sl", f"{p}/Mul")
    leak = spec.node("Mul", ordered(leak, keep), f"{p}/leak", f"{p}/Mul_1")
    pre = spec.node("Add", ordered(a, leak), f"{p}/pre", f"{p}/Add")
    s_out = f"{p}.s_next"
    if g == "relu":
        s = spec.node("Relu", [pre], s_out, f"{p}/Relu")
    else:
        s = spec.node("Identity", [pre], s_out, f"{p}/Identity")
    v = spec.node("Add", ordered(s, f"{p}.b"), f"{p}/v", f"{p}/Add_1")
    y_out = f"{p}.y_next"
    if h == "sigmoid":
        return spec.node("Sigmoid", [v], y_out, f"{p}/Sigmoid")
    spec.const(f"{p}.zero", np.array(0.0, np.float32))
    fire = spec.node("Greater", [v, f"{p}.zero"], f"{p}/fire", f"{p}/Greater")
    if step == "where":
        return spec.node("Where", [fire, f"{p}.one", f"{p}.zero"], y_out, f"{p}/Where")
    return spec.node("Cast", [fire], y_out, f"{p}/Cast", to=FLOAT)


def snu_network(
    sizes: Sequence[int] = (6, 5), *, seed: int = 0, output: str = "y", **layer_options
) -> StepSpec:
    """The step of a stack of SNU layers ``sizes[0] -> sizes[1] -> ...``; options as
    :func:`snu_layer`'s. The output ``y`` is the last layer's ``y`` (an Identity)."""
    rng = np.random.default_rng(seed)
    spec = StepSpec(x=("x", FLOAT, (sizes[0],)))
    x = "x"
    for i, (n_in, n) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        x = snu_layer(spec, i, x, n_in, n, rng, **layer_options)
    spec.node("Identity", [x], output, "out/Identity")
    spec.output = (output, (sizes[-1],))
    return spec


def snu_step_model(
    n_in: int = 6,
    n_hidden: int = 5,
    *,
    seed: int = 0,
    metadata: bool = True,
    opset: int = OPSET,
    **layer_options,
) -> onnx.ModelProto:
    """One SNU layer in step form: ``x[B, n_in]``, states ``l0.s``, ``l0.y`` ``[B, n_hidden]``,
    outputs ``y`` and ``l0.s_next``, ``l0.y_next``. Options: see :func:`snu_layer`
    (``recurrent``, ``gemm_transb``, ``step="where"``, ``operand_order="swapped"``, ``g``,
    ``h``, ``decay_per_neuron``)."""
    spec = snu_network((n_in, n_hidden), seed=seed, **layer_options)
    return as_step_model(spec, opset=opset, metadata=metadata)


def snu_scan_model(
    sizes: Sequence[int] = (6, 5),
    *,
    seed: int = 0,
    opset: int = OPSET,
    init: str = "constant_of_shape",
    init_value: float = 0.0,
    readout: str | None = None,
    final_states_as_outputs: bool = False,
    scan_attrs: dict | None = None,
    **layer_options,
) -> onnx.ModelProto:
    """A stack of SNU layers ``sizes`` in sequence form: ``X[T, B, sizes[0]]`` -> ``Y``.

    The Scan body is :func:`snu_network`'s step; ``init``, ``init_value``, ``readout``,
    ``final_states_as_outputs`` and ``scan_attrs`` are :func:`as_scan_model`'s, the other
    options :func:`snu_layer`'s."""
    spec = snu_network(sizes, seed=seed, **layer_options)
    return as_scan_model(
        spec,
        opset=opset,
        init=init,
        init_value=init_value,
        readout=readout,
        seed=seed,
        final_states_as_outputs=final_states_as_outputs,
        scan_attrs=scan_attrs,
    )


def conv_snu_spec(
    *,
    seed: int = 0,
    channels: int = 2,
    filters: int = 3,
    image: int = 6,
    n_out: int = 4,
    pool: str = "max",
) -> StepSpec:
    """A convolutional SNU step: ``x[B, channels, image, image]`` -> Conv 3x3 (pads 1, bias)
    -> SNU dynamics per pixel (states ``[B, filters, image, image]``, bias per filter) ->
    ``pool`` (``"max"`` or ``"avg"``, 2x2 stride 2) -> Flatten -> Gemm (``transB=1``, bias)
    -> ``y[B, n_out]`` (logits)."""
    rng = np.random.default_rng(seed)
    spec = StepSpec(x=("x", FLOAT, (channels, image, image)))
    wc = (rng.standard_normal((filters, channels, 3, 3)) / 3).astype(np.float32)
    spec.const("conv.W", wc)
    spec.const("conv.b", (0.1 * rng.standard_normal(filters)).astype(np.float32))
    a = spec.node(
        "Conv",
        ["x", "conv.W", "conv.b"],
        "conv/a",
        "conv/Conv",
        kernel_shape=[3, 3],
        pads=[1, 1, 1, 1],
    )
    shape = (filters, image, image)
    y = snu_layer(spec, 0, "x", 0, filters, rng, shape=shape, a=a)
    pool_op = "MaxPool" if pool == "max" else "AveragePool"
    p = spec.node(pool_op, [y], "pool/y", f"pool/{pool_op}", kernel_shape=[2, 2], strides=[2, 2])
    f = spec.node("Flatten", [p], "flat/y", "flat/Flatten", axis=1)
    n_flat = filters * (image // 2) ** 2
    spec.const(
        "fc.W_t", (rng.standard_normal((n_out, n_flat)) / np.sqrt(n_flat)).astype(np.float32)
    )
    spec.const("fc.b", (0.1 * rng.standard_normal(n_out)).astype(np.float32))
    spec.node("Gemm", [f, "fc.W_t", "fc.b"], "y", "fc/Gemm", transB=1)
    spec.output = ("y", (n_out,))
    return spec


def conv_snu_step_model(*, seed: int = 0, **options) -> onnx.ModelProto:
    """:func:`conv_snu_spec`'s network in step form (states paired in the metadata)."""
    return as_step_model(conv_snu_spec(seed=seed, **options), "conv_snu_step")


def conv_snu_scan_model(*, seed: int = 0, **options) -> onnx.ModelProto:
    """:func:`conv_snu_spec`'s network in sequence form, ``X[T, B, channels, image, image]``."""
    return as_scan_model(conv_snu_spec(seed=seed, **options), "conv_snu_seq", seed=seed)


def embedding_snu_scan_model(
    vocab: int = 10, emb: int = 4, n_hidden: int = 5, *, seed: int = 0, inside: bool = False
) -> onnx.ModelProto:
    """Token ids ``X[T, B]`` (int64) -> embedding table ``E[vocab, emb]`` (Gather) -> one SNU
    layer -> ``Y[T, B, n_hidden]``. With ``inside`` the Gather is in the Scan body (on the
    step's ids ``x[B]``); otherwise it runs before the Scan on the whole ``X``, and the
    importer moves it into the step."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((vocab, emb)).astype(np.float32)
    if inside:
        spec = StepSpec(x=("x", TensorProto.INT64, ()))
        spec.const("emb.E", table)
        e = spec.node("Gather", ["emb.E", "x"], "emb/e", "emb/Gather", axis=0)
        y = snu_layer(spec, 0, e, emb, n_hidden, rng)
        spec.node("Identity", [y], "y", "out/Identity")
        spec.output = ("y", (n_hidden,))
        return as_scan_model(spec, "embedding_snu")
    spec = snu_network((emb, n_hidden), seed=seed)
    model = as_scan_model(spec, "embedding_snu")
    graph = model.graph
    scan = next(n for n in graph.node if n.op_type == "Scan")
    scan.input[-1] = "emb/e"
    graph.initializer.append(numpy_helper.from_array(table, "emb.E"))
    gather = helper.make_node("Gather", ["emb.E", "X"], ["emb/e"], name="emb/Gather", axis=0)
    graph.node.insert(list(graph.node).index(scan), gather)
    graph.input[0].CopyFrom(_info("X", TensorProto.INT64, ["T", "B"]))
    onnx.checker.check_model(model)
    return model


# ---------------------------------------------------------------------- single ops


def dense_model(
    *,
    n_in: int = 4,
    n_out: int = 3,
    seed: int = 0,
    op: str = "gemm",
    trans_a: bool = False,
    trans_b: bool = False,
    alpha: float = 1.0,
    beta: float = 1.0,
    bias: str | None = "vector",
    const_side: str = "right",
) -> onnx.ModelProto:
    """A stateless step model ``x[B, n_in] -> y[B, n_out]``: one dense layer ``y = x W + c``.

    ``op="gemm"``: ``Gemm(A, B, C)`` with ``transA``, ``transB``, ``alpha``, ``beta``; the
    weight is B (``const_side="right"``; A = x, or Transpose(x) with ``trans_a``) or A
    (``"left"``: ``y = Transpose(Gemm(W', x, transB=1))``). ``bias`` is ``"vector"``
    (``[n_out]``), ``"matrix"`` (``[1, n_out]``) or None (no C).
    ``op="matmul"``: ``MatMul(x, W)``, or with ``const_side="left"``
    ``Transpose(MatMul(W^T, Transpose(x)))``; ``bias`` is added with Add.
    """
    rng = np.random.default_rng(seed)
    spec = StepSpec(x=("x", FLOAT, (n_in,)))
    w = rng.standard_normal((n_in, n_out)).astype(np.float32)
    c = rng.standard_normal(n_out if bias == "vector" else (1, n_out)).astype(np.float32)
    if op == "matmul":
        if const_side == "right":
            spec.const("W", w)
            z = spec.node("MatMul", ["x", "W"], "z", "MatMul")
        else:
            spec.const("W_t", np.ascontiguousarray(w.T))
            xt = spec.node("Transpose", ["x"], "x_t", "Transpose_x", perm=[1, 0])
            zt = spec.node("MatMul", ["W_t", xt], "z_t", "MatMul")
            z = spec.node("Transpose", [zt], "z", "Transpose_z", perm=[1, 0])
        if bias:
            spec.const("c", c)
            z = spec.node("Add", [z, "c"], "zc", "Add")
        spec.node("Identity", [z], "y", "Identity")
    elif const_side == "right":
        x = spec.node("Transpose", ["x"], "x_t", "Transpose_x", perm=[1, 0]) if trans_a else "x"
        spec.const("W", np.ascontiguousarray(w.T) if trans_b else w)
        inputs = [x, "W"] + (["c"] if bias else [])
        if bias:
            spec.const("c", c)
        spec.node(
            "Gemm",
            inputs,
            "y",
            "Gemm",
            transA=int(trans_a),
            transB=int(trans_b),
            alpha=alpha,
            beta=beta,
        )
    else:
        # y^T = W'^T x^T: A = W^T [n_out, n_in] (stored transposed if trans_a), B = x, transB.
        spec.const("W", w if trans_a else np.ascontiguousarray(w.T))
        inputs = ["W", "x"]
        if bias:
            spec.const("c", c.reshape(-1, 1))  # broadcasts over the batch, now the columns
            inputs.append("c")
        zt = spec.node(
            "Gemm", inputs, "z_t", "Gemm", transA=int(trans_a), transB=1, alpha=alpha, beta=beta
        )
        spec.node("Transpose", [zt], "y", "Transpose_y", perm=[1, 0])
    spec.output = ("y", (n_out,))
    return as_step_model(spec, "dense", metadata=False)


def single_op_model(
    op: str,
    x_shape: Sequence[int],
    *,
    consts: Sequence[np.ndarray] = (),
    opset: int = OPSET,
    x_elem: int = FLOAT,
    **attrs,
) -> onnx.ModelProto:
    """A stateless step model ``y = op(x, *consts, **attrs)`` with ``x[B, *x_shape]``; the
    output's type is what ONNX shape inference gives."""
    spec = StepSpec(x=("x", x_elem, tuple(x_shape)))
    names = [spec.const(f"c{i}", c) for i, c in enumerate(consts)]
    spec.node(op, ["x", *names], "y", op.lower(), **attrs)
    graph = helper.make_graph(
        spec.nodes,
        op.lower(),
        [_info("x", x_elem, ["B", *x_shape])],
        [onnx.ValueInfoProto(name="y")],
        spec.initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION
    )
    return _finish(onnx.shape_inference.infer_shapes(model).graph, opset, None)


def shape_computation_model(kind: str = "gather_concat", *, opset: int = OPSET) -> onnx.ModelProto:
    """A stateless step model on ``x[B, 2, 3]`` whose ops consume shapes computed from
    ``Shape(x)``, as exporters write them:

    * ``"gather_concat"``: ``y = Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1]))``
      -> ``[B, 6]``;
    * ``"scalar_gather"``: the same as torch's TorchScript exporter writes it: Gather with a
      scalar index, then ``Unsqueeze(B * 1)``;
    * ``"slice_prod"``: ``y = Reshape(x, Concat(Slice(Shape(x), 0:1),
      ReduceProd(Slice(Shape(x), 1:3))))`` -> ``[B, 6]``;
    * ``"batch_arith"``: the target's first entry is ``(B * 6) / 6`` and the second
      ``(B * 6) / B`` -> ``[B, 6]``;
    * ``"constant_of_shape"``: ``y = x * ConstantOfShape(Shape(x), 1.5)`` -> ``[B, 2, 3]``;
    * ``"expand"``: ``y = Expand(Slice(x, axis 2, 0:1), Shape(x))`` -> ``[B, 2, 3]``;
    * ``"unresolvable"``: the target's first entry is ``B + 1`` (snuc cannot resolve it).
    """
    spec = StepSpec(x=("x", FLOAT, (2, 3)))
    spec.node("Shape", ["x"], "shape", "Shape")
    spec.const("zero", np.array([0], np.int64))
    spec.const("minus_one", np.array([-1], np.int64))
    y_shape: tuple[int, ...] = (6,)
    if kind in ("gather_concat", "batch_arith", "unresolvable"):
        spec.node("Gather", ["shape", "zero"], "batch", "Gather", axis=0)
        first, second = "batch", "minus_one"
        if kind == "batch_arith":
            spec.const("six", np.array([6], np.int64))
            spec.node("Mul", ["batch", "six"], "b6", "Mul")
            first = spec.node("Div", ["b6", "six"], "b6_6", "Div")
            second = spec.node("Div", ["b6", "batch"], "b6_b", "Div_1")
        elif kind == "unresolvable":
            spec.const("one", np.array([1], np.int64))
            first = spec.node("Add", ["batch", "one"], "batch_plus_one", "Add")
        spec.node("Concat", [first, second], "target", "Concat", axis=0)
        spec.node("Reshape", ["x", "target"], "y", "Reshape")
    elif kind == "scalar_gather":
        spec.const("zero_scalar", np.array(0, np.int64))
        spec.const("one_scalar", np.array(1, np.int64))
        spec.node("Gather", ["shape", "zero_scalar"], "batch", "Gather", axis=0)
        spec.node("Mul", ["batch", "one_scalar"], "batch_1", "Mul")
        spec.node("Unsqueeze", ["batch_1", "zero"], "batch_1d", "Unsqueeze")
        spec.node("Concat", ["batch_1d", "minus_one"], "target", "Concat", axis=0)
        spec.node("Reshape", ["x", "target"], "y", "Reshape")
    elif kind == "slice_prod":
        spec.const("one", np.array([1], np.int64))
        spec.const("three", np.array([3], np.int64))
        spec.node("Slice", ["shape", "zero", "one"], "batch", "Slice")
        spec.node("Slice", ["shape", "one", "three"], "sizes", "Slice_1")
        spec.node("ReduceProd", ["sizes"], "features", "ReduceProd", keepdims=1)
        spec.node("Concat", ["batch", "features"], "target", "Concat", axis=0)
        spec.node("Reshape", ["x", "target"], "y", "Reshape")
    elif kind == "constant_of_shape":
        fill = helper.make_tensor("value", FLOAT, [1], [1.5])
        spec.node("ConstantOfShape", ["shape"], "filled", "ConstantOfShape", value=fill)
        spec.node("Mul", ["x", "filled"], "y", "Mul")
        y_shape = (2, 3)
    elif kind == "expand":
        spec.const("two", np.array([2], np.int64))
        spec.const("one", np.array([1], np.int64))
        spec.node("Slice", ["x", "zero", "one", "two"], "column", "Slice")
        spec.node("Expand", ["column", "shape"], "y", "Expand")
        y_shape = (2, 3)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    spec.output = ("y", y_shape)
    return as_step_model(spec, f"shape_{kind}", opset=opset, metadata=False)


def two_scan_model(sizes: Sequence[int] = (6, 5, 4), *, seed: int = 0) -> onnx.ModelProto:
    """Two SNU layers, each in its own Scan: ``X -> Scan "scan" (layer l0) -> H -> Scan
    "scan2" (layer l1) -> Y``. Scan 2's zero states are built from ``Shape(H)``, so
    evaluating them runs Scan 1; layer l1's weight ``l1.W`` is an outer-graph initializer
    that the body captures."""
    rng = np.random.default_rng(seed)
    outer = StepSpec(x=("X", FLOAT, (sizes[0],)))
    _add_scan(outer, snu_network(sizes[:2], seed=seed), "X", "H", "first")
    second = StepSpec(x=("h", FLOAT, (sizes[1],)))
    y = snu_layer(second, 1, "h", sizes[1], sizes[2], rng)
    second.node("Identity", [y], "y2", "out2/Identity")
    second.output = ("y2", (sizes[2],))
    weight = next(t for t in second.initializers if t.name == "l1.W")
    second.initializers.remove(weight)
    outer.initializers.append(weight)
    _add_scan(outer, second, "H", "Y", "second", tag="2")
    graph = helper.make_graph(
        outer.nodes,
        "two_scans",
        [_info("X", FLOAT, ["T", "B", sizes[0]])],
        [_info("Y", FLOAT, ["T", "B", sizes[2]])],
        outer.initializers,
    )
    return _finish(graph, OPSET, None)
