"""Lowering ONNX data movement and reductions to snuc IR: the :class:`Lowerer`'s shape ops.

Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Concat, Gather, Slice, Split, Expand and
ConstantOfShape move or copy elements; ReduceSum, ReduceMean, Softmax and LogSoftmax
reduce along axes. Each function lowers one ONNX node for a
:class:`~snuc.frontend.onnx_lower.Lowerer` (``lw``), which keeps what every ONNX value is
and emits the IR nodes; the dispatch table ``_LOWERINGS`` there names them by op type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import numpy_helper

from snuc.frontend import onnx_shapes as shp
from snuc.frontend.onnx_eval import attr, describe
from snuc.frontend.onnx_shapes import T_DIM, SymbolicError
from snuc.frontend.onnx_values import Const, Splat, Sym, Tensor, Value
from snuc.ir import ops
from snuc.ir.errors import SnucError
from snuc.ir.types import DTYPES

if TYPE_CHECKING:
    from snuc.frontend.onnx_lower import Lowerer


def reshape_to(lw: Lowerer, node: onnx.NodeProto, x: str, shape: Sequence) -> None:
    """Bind the node's output to ``x`` reshaped to ``shape`` (ONNX view, symbolic dims)."""
    if lw.lead and (not shape or shape[0] != T_DIM):
        raise lw.mixes_time(node)
    try:
        dims = tuple(shp.to_ir_dim(d) for d in shape[lw.lead :])
    except SymbolicError as err:
        raise SnucError(
            f"{describe(node)}: cannot express its output shape {shp.format_shape(shape)} "
            f"per timestep: {err}"
        ) from None
    if dims == lw.graph.type_of(x).shape:
        lw.bind(node.output[0], Tensor(x))
    else:
        lw.result(node, ops.Reshape(shape=dims), [x])


def _shape_operand(lw: Lowerer, node: onnx.NodeProto, value: Value | None) -> list:
    """A shape input (Reshape, Expand, ConstantOfShape) as ints and symbolic dims."""
    if isinstance(value, Const) and value.array.dtype.kind in "iu":
        return [int(d) for d in value.array.reshape(-1)]
    if isinstance(value, Sym):
        return list(value.array.reshape(-1))
    raise SnucError(
        f"{describe(node)}: its shape input is computed from run-time values; snuc "
        f"needs shapes known at import (the batch size may be symbolic)"
    )


def lower_reshape(lw: Lowerer, node: onnx.NodeProto, vals: list[Value | None]) -> None:
    x = lw.tensor(vals[0], node)
    target = _shape_operand(lw, node, vals[1])
    allowzero = bool(attr(node, "allowzero", 0))
    source = lw.full_shape(vals[0])
    try:
        shape = shp.resolve_reshape(source, target, allowzero)
    except SymbolicError as err:
        shape = _fixed_time_reshape(lw, node, source, target, allowzero)
        if shape is None:
            raise SnucError(f"{describe(node)}: cannot resolve {node.output[0]!r}: {err}") from None
    reshape_to(lw, node, x, shape)


_RECURRENT_OPS = ("LSTM", "GRU")
_PASS_THROUGH_OPS = ("Identity", "Transpose", "Squeeze", "Unsqueeze", "Reshape")
"""Ops between a recurrent node and the reshape that fixes T, in the dynamo exporter's
graphs (``LSTM -> Transpose -> Reshape [T, -1, H]``)."""


def _fixed_time_reshape(
    lw: Lowerer, node: onnx.NodeProto, source: Sequence, target: list, allowzero: bool
) -> tuple | None:
    """The reshape of a whole sequence whose target fixes the time axis to a constant.

    The dynamo exporter fixes T in the reshape after an LSTM or GRU (``[6, -1, H]`` for an
    example of 6 steps): where the rest of the target reshapes one step, the constant is
    the sequence length and the reshape is per step (onnxruntime runs only that T). Only
    there, or where the model's sequence input fixes T to the same constant, is the
    constant taken for the time axis.

    Returns:
        The resolved shape, or None where the target does not fix T this way.

    Raises:
        SnucError: the target fixes T, but its input comes from no LSTM or GRU and the
            model's sequence length is not that constant.
    """
    if not lw.lead or not target or shp.is_symbolic(target[0]) or target[0] <= 0:
        return None
    try:
        shape = shp.resolve_reshape(source, [T_DIM, *target[1:]], allowzero)
    except SymbolicError:
        return None
    if _static_steps(lw) != target[0] and not _after_recurrent_node(lw, node.input[0]):
        raise SnucError(
            f"{describe(node)}: its target shape fixes the time axis to {target[0]} steps, "
            f"but its input is no LSTM or GRU output and the model's sequence length is not "
            f"{target[0]}; export the reshape with a symbolic time axis (e.g. [-1, B, ...])"
        )
    return shape


def _static_steps(lw: Lowerer) -> int | None:
    """The sequence length the model's input declares, when it is a constant."""
    graph = lw.ctx.model.graph
    declared = next((i for i in graph.input if i.name == lw.ctx.sequence_input), None)
    if declared is None or not declared.type.tensor_type.shape.dim:
        return None
    first = declared.type.tensor_type.shape.dim[0]
    return first.dim_value if first.HasField("dim_value") and first.dim_value > 0 else None


def _after_recurrent_node(lw: Lowerer, value: str) -> bool:
    """Whether ``value`` is an LSTM's or GRU's output, directly or through data movement."""
    producers = {out: n for n in lw.ctx.model.graph.node for out in n.output}
    seen: set[str] = set()
    while value in producers and value not in seen:
        seen.add(value)
        producer = producers[value]
        if producer.op_type in _RECURRENT_OPS:
            return True
        if producer.op_type not in _PASS_THROUGH_OPS or not producer.input:
            return False
        value = producer.input[0]
    return False


def lower_flatten(lw: Lowerer, node: onnx.NodeProto, vals: list[Value | None]) -> None:
    x = lw.tensor(vals[0], node)
    shape = lw.full_shape(vals[0])
    axis = int(attr(node, "axis", 1))
    axis = axis + len(shape) if axis < 0 else axis
    if not 0 <= axis <= len(shape):
        raise SnucError(f"{describe(node)}: axis {axis} is out of range")
    reshape_to(lw, node, x, (shp.product(shape[:axis]), shp.product(shape[axis:])))


def lower_squeeze(lw: Lowerer, node: onnx.NodeProto, vals: list[Value | None]) -> None:
    x = lw.tensor(vals[0], node)
    shape = lw.full_shape(vals[0])
    axes = lw.axes(node, vals, since=13)
    if axes is None:
        kept = [d for d in shape if d != 1]
    else:
        drop = {lw.norm_axis(node, a, len(shape)) for a in axes}
        for a in drop:
            if shape[a] != 1:
                raise SnucError(f"{describe(node)}: cannot squeeze axis {a} of size {shape[a]}")
        kept = [d for i, d in enumerate(shape) if i not in drop]
    reshape_to(lw, node, x, kept)


def lower_unsqueeze(lw: Lowerer, node: onnx.NodeProto, vals: list[Value | None]) -> None:
    x = lw.tensor(vals[0], node)
    shape = list(lw.full_shape(vals[0]))
    axes = lw.axes(node, vals, since=13) or []
    rank = len(shape) + len(axes)
    for a in sorted(lw.norm_axis(node, a, rank) for a in axes):
        shape.insert(a, 1)
    reshape_to(lw, node, x, shape)


def lower_transpose(lw: Lowerer, node: onnx.NodeProto, vals: list[Value | None]) -> None:
    x = lw.tensor(vals[0], node)
    rank = len(lw.full_shape(vals[0]))
    perm = [int(p) for p in attr(node, "perm", range(rank - 1, -1, -1))]
    if lw.lead:
        if perm[0] != 0:
            raise lw.mixes_time(node)
        perm = [p - 1 for p in perm[1:]]
    if perm == sorted(perm):
        lw.bind(node.output[0], Tensor(x))
    else:
        lw.result(node, ops.Transpose(perm=tuple(perm)), [x])


def lower_concat(lw: Lowerer, node: onnx.NodeProto, vals: list[Value | None]) -> None:
    present = [v for v in vals if v is not None]
    if lw.lead and not all(isinstance(v, Tensor) for v in present):
        raise lw.mixes_time(node)
    rank = len(lw.full_shape(present[0]))
    axis = lw.step_axis(node, int(attr(node, "axis")), rank)
    names = [lw.operand(v, node, f"{node.output[0]}_in{i}") for i, v in enumerate(present)]
    lw.result(node, ops.Concat(axis=axis), names)


def lower_gather(lw: Lowerer, node: onnx.NodeProto, vals: list[Value | None]) -> None:
    data, indices = vals
    shape = lw.full_shape(data)
    axis = lw.norm_axis(node, int(attr(node, "axis", 0)), len(shape))
    if isinstance(indices, Tensor):
        # Embedding lookup (constant table) or gather by computed indices.
        if lw.lead and (isinstance(data, Tensor) or axis != 0):
            raise lw.mixes_time(node)
        table = lw.operand(data, node, f"{node.output[0]}_table")
        step_axis = axis - lw.lead if isinstance(data, Tensor) else axis
        lw.result(node, ops.Gather(axis=step_axis), [table, indices.name])
        return
    x = lw.tensor(data, node)
    step_axis = lw.step_axis(node, axis, len(shape))
    idx = np.asarray(lw.int_list(node, indices, "indices")).reshape(indices.array.shape)
    size = shape[axis]
    if not isinstance(size, int):
        raise SnucError(f"{describe(node)}: cannot gather along the batch")
    idx = np.where(idx < 0, idx + size, idx).astype(np.int64)
    lw.result(node, ops.Gather(axis=step_axis), [x, lw.constant(idx, indices.name, node)])


def lower_slice(lw: Lowerer, node: onnx.NodeProto, vals: list[Value | None]) -> None:
    """Slicing, as one constant-index gather per sliced axis."""
    x = lw.tensor(vals[0], node)
    shape = lw.full_shape(vals[0])
    if lw.ctx.opset >= 10:
        params = [
            None if i >= len(vals) or vals[i] is None else lw.int_list(node, vals[i], what)
            for i, what in ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps"))
        ]
    else:
        params = [attr(node, "starts"), attr(node, "ends"), attr(node, "axes"), None]
    starts, ends, axes, steps = params
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    gathers = []
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        a = lw.norm_axis(node, axis, len(shape))
        size = shape[a]
        if not isinstance(size, int):
            raise SnucError(f"{describe(node)}: cannot slice along the batch or time axis")
        if step == 0:
            raise SnucError(f"{describe(node)}: slice step 0")
        idx = np.arange(size)[slice(start, end, step)]
        if not np.array_equal(idx, np.arange(size)):
            gathers.append((lw.step_axis(node, a, len(shape)), idx.astype(np.int64)))
    if not gathers:
        lw.bind(node.output[0], Tensor(x))
        return
    for i, (axis, idx) in enumerate(gathers):
        hint = None if i == len(gathers) - 1 else f"{node.output[0]}_{i}"
        idx_name = lw.constant(idx, f"{node.output[0]}_idx", node)
        x = lw.emit(node, ops.Gather(axis=axis), [x, idx_name], hint=hint)
    lw.bind(node.output[0], Tensor(x))


def lower_split(lw: Lowerer, node: onnx.NodeProto, vals: list[Value | None]) -> None:
    """Splitting into consecutive parts along an axis, one constant-index gather per part.

    The sizes are the ``split`` attribute before opset 13, the ``split`` input from 13;
    without them, ``num_outputs`` parts (opset 18; the last may be smaller) or equal parts.
    """
    x = lw.tensor(vals[0], node)
    shape = lw.full_shape(vals[0])
    axis = lw.norm_axis(node, int(attr(node, "axis", 0)), len(shape))
    size = shape[axis]
    if not isinstance(size, int):
        raise SnucError(f"{describe(node)}: cannot split along the batch or time axis")
    step_axis = lw.step_axis(node, axis, len(shape))
    sizes = _split_sizes(lw, node, vals, size)
    start = 0
    for output, part in zip(node.output, sizes, strict=True):
        idx = np.arange(start, start + part, dtype=np.int64)
        start += part
        if not output:
            continue
        if part == size:
            lw.bind(output, Tensor(x))
            continue
        name = lw.constant(idx, f"{output}_idx", node)
        lw.bind(output, Tensor(lw.emit(node, ops.Gather(axis=step_axis), [x, name], hint=output)))


def _split_sizes(lw: Lowerer, node: onnx.NodeProto, vals: list[Value | None], size: int) -> list:
    """The sizes of a Split's parts along an axis of ``size`` elements."""
    n = len(node.output)
    if lw.ctx.opset >= 13:
        given = vals[1] if len(vals) > 1 else None
        sizes = None if given is None else lw.int_list(node, given, "split sizes")
    else:
        sizes = attr(node, "split")
        sizes = None if sizes is None else [int(s) for s in sizes]
    if sizes is None:
        parts = int(attr(node, "num_outputs", n))
        chunk = -(-size // parts)
        sizes = [min(chunk, size - i * chunk) for i in range(parts)]
    if len(sizes) != n or sum(sizes) != size or min(sizes) < 0:
        raise SnucError(
            f"{describe(node)}: split sizes {sizes} do not divide the {size} elements of the "
            f"axis into its {n} outputs"
        )
    return sizes


def lower_expand(lw: Lowerer, node: onnx.NodeProto, vals: list[Value | None]) -> None:
    data = vals[0]
    target = _shape_operand(lw, node, vals[1])
    shape = lw.full_shape(data)
    try:
        out = shp.broadcast(shape, target)
    except SymbolicError as err:
        raise SnucError(f"{describe(node)}: {err}") from None
    if not isinstance(data, Tensor):
        array = np.broadcast_to(data.array, [1 if shp.is_symbolic(d) else d for d in out])
        lw.bind(node.output[0], Splat(np.array(array), out))
        return
    if lw.lead and len(out) != len(shape):
        raise lw.mixes_time(node)
    if out == shape:
        lw.bind(node.output[0], Tensor(data.name))
        return
    # Multiplying by ones broadcasts exactly (x * 1 == x for every x, even -0 and NaN).
    dtype = DTYPES[lw.graph.type_of(data.name).dtype]
    ones = np.ones([1 if shp.is_symbolic(d) else d for d in out[lw.lead :]], dtype=dtype)
    lw.result(node, ops.Mul(), [data.name, lw.constant(ones, f"{node.output[0]}_ones", node)])


def lower_constant_of_shape(lw: Lowerer, node: onnx.NodeProto, vals: list[Value | None]) -> None:
    dims = _shape_operand(lw, node, vals[0])
    value = attr(node, "value")
    fill = (
        numpy_helper.to_array(value).reshape(-1) if value is not None else np.zeros(1, np.float32)
    )
    array = np.full([1 if shp.is_symbolic(d) else d for d in dims], fill[0], dtype=fill.dtype)
    lw.bind(node.output[0], Splat(array, tuple(dims)))


def lower_reduce(lw: Lowerer, node: onnx.NodeProto, vals: list[Value | None]) -> None:
    x = lw.tensor(vals[0], node)
    rank = len(lw.full_shape(vals[0]))
    since = 13 if node.op_type == "ReduceSum" else 18
    axes = lw.axes(node, vals, since=since)
    if not axes:
        if lw.ctx.opset >= since and attr(node, "noop_with_empty_axes", 0):
            lw.bind(node.output[0], Tensor(x))
            return
        axes = list(range(rank))
    step_axes = tuple(sorted({lw.step_axis(node, a, rank) for a in axes}))
    keepdims = bool(attr(node, "keepdims", 1))
    op_class = ops.ReduceSum if node.op_type == "ReduceSum" else ops.ReduceMean
    lw.result(node, op_class(axes=step_axes, keepdims=keepdims), [x])


def lower_softmax(lw: Lowerer, node: onnx.NodeProto, vals: list[Value | None]) -> None:
    x = lw.tensor(vals[0], node)
    shape = lw.full_shape(vals[0])
    op_class = ops.Softmax if node.op_type == "Softmax" else ops.LogSoftmax
    if lw.ctx.opset >= 13:
        axis = lw.step_axis(node, int(attr(node, "axis", -1)), len(shape))
        lw.result(node, op_class(axis=axis), [x])
        return
    # Before opset 13 the input is seen as a matrix [prod(dims[:axis]), prod(dims[axis:])]
    # and normalised along its rows: one softmax over all the trailing axes.
    axis = lw.step_axis(node, int(attr(node, "axis", 1)), len(shape)) + lw.lead
    if axis == len(shape) - 1:
        lw.result(node, op_class(axis=-1), [x])
        return
    inner = shape[axis:]
    if not all(isinstance(d, int) for d in inner):
        raise SnucError(
            f"{describe(node)}: normalises over {shp.format_shape(inner)}, which includes the batch"
        )
    out = node.output[0]
    flat_shape = tuple(shp.to_ir_dim(d) for d in (*shape[lw.lead : axis], shp.product(inner)))
    flat = lw.emit(node, ops.Reshape(shape=flat_shape), [x], hint=f"{out}_flat")
    y = lw.emit(node, op_class(axis=-1), [flat], hint=f"{out}_rows")
    lw.result(node, ops.Reshape(shape=lw.graph.type_of(x).shape), [y])
