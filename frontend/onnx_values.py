"""What an ONNX value is at import time, and integer arithmetic on symbolic shapes.

While the importer walks an ONNX graph it keeps, for every value name, one of:

* :class:`Const` -- an array known now (initializers, ``Constant``, folded nodes).
* :class:`Sym` -- an integer tensor that depends on the batch ``B`` (or, outside a Scan,
  on the sequence length ``T``): what ``Shape`` gives and the arithmetic exporters do on
  it. :class:`SymbolicEval` evaluates that arithmetic (:mod:`snuc.frontend.onnx_shapes`).
* :class:`Splat` -- a constant broadcast to a shape that holds ``B`` (``ConstantOfShape``
  or ``Expand`` of a symbolic shape); it is used as a broadcasting constant operand.
* :class:`Tensor` -- a value computed at run time: an IR value of the step graph.
* :class:`FinalState` -- a Scan's final state, which snuc does not compute.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from snuc.frontend import onnx_shapes as shp
from snuc.frontend.onnx_eval import attr, type_name
from snuc.frontend.onnx_shapes import SymbolicError
from snuc.ir.errors import SnucError


@dataclass(frozen=True, eq=False)
class Const:
    """A value known at import; ``name`` is its ONNX name (the IR constant's name hint)."""

    array: np.ndarray
    name: str


@dataclass(frozen=True, eq=False)
class Sym:
    """An integer tensor (a shape) with elements that are ints or :class:`SymDim`."""

    array: np.ndarray
    dtype: np.dtype


@dataclass(frozen=True, eq=False)
class Splat:
    """``array`` broadcast to ``shape``; ``array`` has size 1 where ``shape`` is symbolic."""

    array: np.ndarray
    shape: tuple


@dataclass(frozen=True)
class Tensor:
    """A run-time value: the IR value ``name`` (one timestep of it)."""

    name: str


@dataclass(frozen=True)
class FinalState:
    """A Scan's final state (``scan`` describes the node); snuc computes no such value."""

    scan: str


Value = Const | Sym | Splat | Tensor | FinalState


class SymbolicEval:
    """One node's integer arithmetic on shapes: object arrays of ints and SymDims.

    Args:
        node: the node; its inputs are :class:`Const` or :class:`Sym`, one at least a Sym.
        vals: its inputs' values (None for an omitted optional input).
        opset: the model's default-domain opset (it decides where ``axes`` are given).
    """

    def __init__(self, node: onnx.NodeProto, vals: list[Value | None], opset: int) -> None:
        self.opset = opset
        self.node = node
        self.vals = vals
        self.dtype = next(v.dtype for v in vals if isinstance(v, Sym))

    def arg(self, i: int) -> np.ndarray | None:
        if i >= len(self.vals) or self.vals[i] is None:
            return None
        value = self.vals[i]
        if isinstance(value, Sym):
            return value.array
        if isinstance(value, Const) and value.array.dtype.kind in "iub":
            return value.array if value.array.dtype == bool else shp.as_object_array(value.array)
        raise SymbolicError(f"{self.node.op_type} mixes a shape with non-integer values")

    def ints(self, i: int) -> list[int] | None:
        array = self.arg(i)
        if array is None:
            return None
        if shp.has_symbols(array):
            raise SymbolicError(f"input {i} of {self.node.op_type} must not depend on B or T")
        return [int(d) for d in array.reshape(-1)]

    def axes(self, since: int) -> list[int] | None:
        if self.opset >= since:
            return self.ints(1)
        axes = attr(self.node, "axes")
        return None if axes is None else list(axes)

    def run(self) -> Sym | Const:
        """The node's (first) output; raises SymbolicError when it cannot be resolved."""
        op = self.node.op_type
        handler = getattr(self, f"_{op}") if op in SYMBOLIC_OPS else None
        if handler is None:
            raise SymbolicError(
                f"{op} on a value that depends on the batch size or sequence length is not "
                f"supported (snuc evaluates {', '.join(SYMBOLIC_OPS)} on shapes)"
            )
        # NumPy gives a bare element (not a 0-d array) for a scalar result such as a Gather
        # of one dimension.
        try:
            result = handler()
        except (ValueError, IndexError, TypeError) as err:  # malformed shapes or attributes
            if isinstance(err, SnucError):
                raise
            raise SymbolicError(f"{op} cannot be evaluated on these shapes: {err}") from None
        if not isinstance(result, np.ndarray):
            result = np.array(result, dtype=object)
        return shape_value(result, self.dtype)

    def _elementwise(self, fn: Callable[..., object]) -> np.ndarray:
        return shp.elementwise(fn, self.arg(0), self.arg(1))

    def _Add(self) -> np.ndarray:  # noqa: N802 - named after the ONNX op
        return self._elementwise(shp.ARITHMETIC["Add"])

    def _Sub(self) -> np.ndarray:  # noqa: N802
        return self._elementwise(shp.ARITHMETIC["Sub"])

    def _Mul(self) -> np.ndarray:  # noqa: N802
        return self._elementwise(shp.ARITHMETIC["Mul"])

    def _Div(self) -> np.ndarray:  # noqa: N802
        return self._elementwise(shp.ARITHMETIC["Div"])

    def _Equal(self) -> np.ndarray:  # noqa: N802
        self.dtype = np.dtype(bool)
        return self._elementwise(shp.equal)

    def _Where(self) -> np.ndarray:  # noqa: N802
        cond = self.arg(0)
        if cond is None or cond.dtype != bool:
            raise SymbolicError("Where needs a constant condition")
        return np.where(cond, self.arg(1), self.arg(2)).astype(object)

    def _Cast(self) -> np.ndarray:  # noqa: N802
        to = int(attr(self.node, "to"))
        if to not in (TensorProto.INT64, TensorProto.INT32):
            raise SymbolicError(f"cannot cast a symbolic shape to {type_name(to)}")
        self.dtype = helper.tensor_dtype_to_np_dtype(to)
        return self.arg(0)

    def _Gather(self) -> np.ndarray:  # noqa: N802
        data = self.arg(0)
        axis = int(attr(self.node, "axis", 0)) % max(data.ndim, 1)
        idx = np.asarray(self.ints(1)).reshape(self.vals[1].array.shape)
        idx = np.where(idx < 0, idx + data.shape[axis], idx)
        return np.take(data, idx, axis=axis)

    def _Slice(self) -> np.ndarray:  # noqa: N802
        data = self.arg(0)
        if self.opset >= 10:
            starts, ends, axes, steps = (self.ints(i) for i in (1, 2, 3, 4))
        else:
            starts, ends = attr(self.node, "starts"), attr(self.node, "ends")
            axes, steps = attr(self.node, "axes"), None
        axes = list(range(len(starts))) if axes is None else axes
        steps = [1] * len(starts) if steps is None else steps
        index = [slice(None)] * data.ndim
        for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
            index[axis % data.ndim] = slice(start, end, step)
        return data[tuple(index)]

    def _Concat(self) -> np.ndarray:  # noqa: N802
        parts = [self.arg(i) for i in range(len(self.vals))]
        return np.concatenate(
            [p for p in parts if p is not None], axis=int(attr(self.node, "axis"))
        )

    def _Unsqueeze(self) -> np.ndarray:  # noqa: N802
        data = self.arg(0)
        axes = self.axes(since=13) or []
        rank = data.ndim + len(axes)
        return np.expand_dims(data, tuple(sorted(a % rank for a in axes)))

    def _Squeeze(self) -> np.ndarray:  # noqa: N802
        data = self.arg(0)
        axes = self.axes(since=13)
        return np.squeeze(data, None if axes is None else tuple(a % data.ndim for a in axes))

    def _Reshape(self) -> np.ndarray:  # noqa: N802
        data = self.arg(0)
        shape = shp.resolve_reshape(data.shape, self.ints(1), bool(attr(self.node, "allowzero", 0)))
        return data.reshape(shape)

    def _ReduceProd(self) -> np.ndarray:  # noqa: N802
        data = self.arg(0)
        axes = self.axes(since=18)
        keepdims = bool(attr(self.node, "keepdims", 1))
        axis = tuple(range(data.ndim)) if not axes else tuple(a % data.ndim for a in axes)
        return np.asarray(np.multiply.reduce(data, axis=axis, keepdims=keepdims), dtype=object)


def shape_value(array: np.ndarray, dtype: np.dtype | type = np.int64) -> Sym | Const:
    """A computed shape: symbolic when some element depends on B or T, else constant."""
    if shp.has_symbols(array):
        return Sym(array, np.dtype(dtype))
    return Const(np.asarray(array.tolist(), dtype=dtype).reshape(array.shape), "shape")


SYMBOLIC_OPS = tuple(sorted(n[1:] for n in vars(SymbolicEval) if n[:1] == "_" and n[1:2].isupper()))
"""Ops evaluated at import on shapes that depend on the batch size or sequence length."""
