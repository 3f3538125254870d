"""Lowering ONNX nodes to snuc IR nodes, one node at a time.

A :class:`Lowerer` walks ONNX nodes in order, keeping what each ONNX value is at import
time (:mod:`snuc.frontend.onnx_values`). A node whose inputs are all constants is folded
with onnxruntime; one on shapes that depend on the batch is evaluated symbolically; one
that touches a run-time value becomes IR nodes. The same code lowers the Scan body (one
timestep, ``lead = 0``) and the per-timestep ops of a sequence-form model's outer graph
(``lead = 1``), whose run-time values carry the time axis first: there every axis is
shifted by one, and an op that works along the time axis mixes timesteps and is an error.
The lowerings of data movement and reductions live in :mod:`snuc.frontend.onnx_shape_ops`,
those of the element-wise ops defined in :mod:`snuc.ir.elementwise` (and Clip) in
:mod:`snuc.frontend.onnx_elementwise`; the dispatch table here names every lowering by
ONNX op type.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import reduce

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from snuc.frontend import onnx_shapes as shp
from snuc.frontend.onnx_elementwise import DEFINED, lower_clip, lower_defined, passes_through
from snuc.frontend.onnx_eval import (
    ModelContext,
    attr,
    describe,
    live_nodes,
    subgraphs,
    type_name,
)
from snuc.frontend.onnx_rnn import RECURRENT_OPS, lower_recurrent
from snuc.frontend.onnx_shape_ops import (
    lower_concat,
    lower_constant_of_shape,
    lower_expand,
    lower_flatten,
    lower_gather,
    lower_reduce,
    lower_reshape,
    lower_slice,
    lower_softmax,
    lower_split,
    lower_squeeze,
    lower_transpose,
    lower_unsqueeze,
)
from snuc.frontend.onnx_shapes import T_DIM, SymbolicError
from snuc.frontend.onnx_values import (
    Const,
    FinalState,
    Splat,
    Sym,
    SymbolicEval,
    Tensor,
    Value,
    shape_value,
)
from snuc.ir import ops
from snuc.ir.errors import Loc, SnucError
from snuc.ir.graph import Graph
from snuc.ir.types import DTYPES, TensorType

IR_DTYPES = {
    TensorProto.FLOAT: "f32",
    TensorProto.DOUBLE: "f64",
    TensorProto.INT64: "i64",
    TensorProto.INT32: "i32",
    TensorProto.BOOL: "bool",
}
"""ONNX element types snuc computes with, and their IR names."""


_UNARY: dict[str, type[ops.Op]] = {
    "Relu": ops.Relu,
    "Sigmoid": ops.Sigmoid,
}
_BINARY: dict[str, type[ops.Op]] = {
    "Div": ops.Div,
}
_ELEMENTWISE = {*_UNARY, *_BINARY, *DEFINED, "LeakyRelu", "Cast", "Where", "Clip"}

# Ops never folded although their inputs are constant: their outputs are random.
_NONDETERMINISTIC = {
    "Bernoulli",
    "Multinomial",
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
}


def node_loc(node: onnx.NodeProto) -> Loc:
    """The IR location of a node: its ONNX name (the op and output when it has none)."""
    return Loc("onnx:" + (node.name or f"{node.op_type}:{node.output[0]}"))


def _scaled(array: np.ndarray, factor: float) -> np.ndarray:
    """``factor * array`` in the array's dtype (ONNX scalars such as Gemm's alpha)."""
    if factor == 1.0:
        return array
    return (array * array.dtype.type(factor)).astype(array.dtype)


def _swap_last(rank: int) -> tuple[int, ...]:
    return (*range(rank - 2), rank - 1, rank - 2)


class Lowerer:
    """Lowers ONNX nodes into ``graph``; see the module docstring.

    Args:
        graph: the step graph being built.
        ctx: the model being imported.
        lead: 1 for the outer graph of a sequence-form model (run-time values carry the
            time axis first), 0 for a step body.
        parent: the lowerer of the enclosing graph, for values a Scan body captures.
    """

    def __init__(
        self, graph: Graph, ctx: ModelContext, *, lead: int, parent: Lowerer | None = None
    ) -> None:
        self.graph = graph
        self.ctx = ctx
        self.lead = lead
        self.parent = parent
        self.env: dict[str, Value] = {}
        self.hints: dict[str, str] = {}
        self._consts: dict[int, tuple[np.ndarray, str]] = parent._consts if parent else {}

    # ------------------------------------------------------------------ values

    def bind(self, name: str, value: Value) -> None:
        self.env[name] = value

    def prefer_name(self, graph: onnx.GraphProto, value: str, name: str) -> None:
        """Name the IR value behind ``value`` (through Identity nodes) ``name`` if possible.

        Model outputs are often Identity copies of a computed value; naming that value
        after the output keeps the ONNX output names in the step graph.
        """
        producers = {out: node for node in graph.node for out in node.output}
        while value in producers and passes_through(producers[value], self.ctx.opset):
            value = producers[value].input[0]
        self.hints.setdefault(value, name)

    def bind_initializers(self, graph: onnx.GraphProto) -> None:
        for init in graph.initializer:
            self.bind(init.name, Const(numpy_helper.to_array(init), init.name))

    def lookup(self, name: str, node: onnx.NodeProto) -> Value:
        if name in self.env:
            return self.env[name]
        if self.parent is None:
            raise SnucError(f"{describe(node)}: uses {name!r}, which no node computes")
        value = self.parent.lookup(name, node)
        if isinstance(value, Tensor):
            raise SnucError(
                f"{describe(node)}: the Scan body uses the outer value {name!r}, a whole "
                f"sequence; a step can use only its Scan inputs (one timestep) and constants"
            )
        return value

    def full_shape(self, value: Value) -> tuple:
        """A value's shape as the ONNX graph sees it (with the time axis when ``lead``)."""
        if isinstance(value, Tensor):
            dims = self.graph.type_of(value.name).shape
            return (T_DIM,) * self.lead + tuple(shp.from_ir_dim(d) for d in dims)
        if isinstance(value, Splat):
            return value.shape
        return tuple(value.array.shape)

    def constant(self, array: np.ndarray, hint: str, node: onnx.NodeProto) -> str:
        """The IR constant holding ``array`` (one per array object)."""
        cached = self._consts.get(id(array))
        if cached is not None and cached[0] is array:
            return cached[1]
        if array.dtype not in DTYPES.values():
            raise SnucError(
                f"{describe(node)}: constant {hint!r} has dtype {array.dtype}; snuc computes "
                f"with float32, float64, int64, int32 and bool"
            )
        name = self.graph.add_constant(self.graph.fresh(hint), array, node_loc(node))
        self._consts[id(array)] = (array, name)
        return name

    def operand(self, value: Value | None, node: onnx.NodeProto, hint: str) -> str:
        """The IR value for an operand of a run-time op."""
        if isinstance(value, Tensor):
            return value.name
        if isinstance(value, Const):
            return self.constant(value.array, value.name, node)
        if isinstance(value, Splat):
            return self.constant(value.array, hint, node)
        raise SnucError(
            f"{describe(node)}: an operand is computed from the batch size or sequence "
            f"length at run time; snuc needs it to be known at import"
        )

    def tensor(self, value: Value | None, node: onnx.NodeProto) -> str:
        """The IR value of an operand that must be computed at run time."""
        if not isinstance(value, Tensor):
            raise SnucError(
                f"{describe(node)}: expected its data input to be computed from the model "
                f"input, but it is a constant or a shape"
            )
        return value.name

    def emit(
        self,
        node: onnx.NodeProto,
        op: ops.Op,
        inputs: Sequence[str],
        *,
        hint: str | None = None,
    ) -> str:
        """Append an IR node for ``node``; named ``hint``, or after the node's first output."""
        out = node.output[0]
        name = self.graph.fresh(hint or self.hints.get(out, out))
        self.graph.add_node(op, inputs, (name,), node_loc(node))
        return name

    def add_state(self, node: onnx.NodeProto, hint: str, type_: TensorType) -> str:
        """A new IR state for ``node`` (zero at the start), named after ``hint``."""
        return self.graph.add_state(self.graph.fresh(hint), type_, node_loc(node))

    def result(self, node: onnx.NodeProto, op: ops.Op, inputs: Sequence[str]) -> None:
        """Emit the IR node computing the ONNX node's (first) output and bind it."""
        self.bind(node.output[0], Tensor(self.emit(node, op, inputs)))

    def int_list(self, node: onnx.NodeProto, value: Value | None, what: str) -> list[int]:
        if isinstance(value, Const) and value.array.dtype.kind in "iu":
            return [int(i) for i in value.array.reshape(-1)]
        raise SnucError(f"{describe(node)}: its {what} must be integer constants")

    def axes(self, node: onnx.NodeProto, vals: list[Value | None], since: int) -> list[int] | None:
        """A node's ``axes``: an input from opset ``since`` on, an attribute before."""
        if self.ctx.opset >= since:
            value = vals[1] if len(vals) > 1 else None
            return None if value is None else self.int_list(node, value, "axes")
        axes = attr(node, "axes")
        return None if axes is None else list(axes)

    def norm_axis(self, node: onnx.NodeProto, axis: int, rank: int) -> int:
        if not -rank <= axis < rank:
            raise SnucError(f"{describe(node)}: axis {axis} is out of range for rank {rank}")
        return axis % rank

    def step_axis(self, node: onnx.NodeProto, axis: int, rank: int) -> int:
        """An axis of the ONNX value as an axis of the step value."""
        axis = self.norm_axis(node, axis, rank)
        if axis < self.lead:
            raise self.mixes_time(node)
        return axis - self.lead

    def mixes_time(self, node: onnx.NodeProto) -> SnucError:
        return SnucError(
            f"{describe(node)}: works across timesteps (along the time axis 0, or on the "
            f"whole sequence) outside the Scan; only per-timestep ops may surround the Scan"
        )

    # ------------------------------------------------------------------ dispatch

    def run(self, nodes: Sequence[onnx.NodeProto]) -> None:
        for node in nodes:
            self.lower(node)

    def lower(self, node: onnx.NodeProto) -> None:
        """Lower one node; binds every output it computes."""
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            raise unsupported(node)
        if op == "Constant":
            self.bind(node.output[0], Const(_constant_value(node), node.output[0]))
            return
        if op == "Scan":
            self.lower_scan(node)
            return
        if op in RECURRENT_OPS:
            lower_recurrent(self, node)
            return
        vals = [self.lookup(name, node) if name else None for name in node.input]
        for value in vals:
            if isinstance(value, FinalState):
                raise SnucError(
                    f"{describe(node)}: uses the final state of {value.scan}; snuc computes "
                    f"outputs at every timestep, not final states"
                )
        kinds = {type(v) for v in vals if v is not None}
        if op == "Identity":
            self.bind(node.output[0], vals[0])
        elif op == "Shape":
            self._shape(node, vals)
        elif kinds <= {Const}:
            if op in _NONDETERMINISTIC or subgraphs(node):
                raise unsupported(node)
            arrays = self.ctx.fold(node, [None if v is None else v.array for v in vals])
            for name, array in zip(node.output, arrays, strict=True):
                if name:
                    self.bind(name, Const(array, name))
        elif op in ("ConstantOfShape", "Expand"):
            _LOWERINGS[op](self, node, vals)
        elif Tensor in kinds:
            if op not in _LOWERINGS:
                raise unsupported(node)
            _LOWERINGS[op](self, node, vals)
        elif Splat in kinds:
            self._fold_splat(node, vals)
        else:
            self._symbolic(node, vals)

    # ------------------------------------------------------------------ Scan

    def lower_scan(self, node: onnx.NodeProto) -> None:
        """Inline a Scan over time: its body becomes the step, its state variables states."""
        if not self.lead or self.ctx.sequence_input is None:
            raise SnucError(
                f"{describe(node)}: a Scan may appear only in the outer graph of a "
                f"sequence-form model, running over the model input's time axis"
            )
        if self.ctx.opset < 9:
            raise SnucError(f"{describe(node)}: Scan of opset 8 is not supported; use opset >= 9")
        body: onnx.GraphProto = attr(node, "body")
        n_scan = int(attr(node, "num_scan_inputs"))
        if not 1 <= n_scan <= len(node.input):
            raise SnucError(
                f"{describe(node)}: num_scan_inputs is {n_scan}; it must count the Scan's "
                f"inputs after its states (1..{len(node.input)})"
            )
        n_states = len(node.input) - n_scan
        if len(body.input) != len(node.input) or len(body.output) != len(node.output):
            raise SnucError(
                f"{describe(node)}: its body takes {len(body.input)} inputs and gives "
                f"{len(body.output)} outputs, but the Scan has {len(node.input)} inputs and "
                f"{len(node.output)} outputs; they must match one to one"
            )
        self._check_scan_attr(node, "scan_input_directions", [0] * n_scan)
        self._check_scan_attr(node, "scan_output_directions", [0] * (len(body.output) - n_states))
        in_ranks = [len(self.full_shape(self.lookup(x, node))) for x in node.input[n_states:]]
        self._check_scan_attr(node, "scan_input_axes", [-r for r in in_ranks])
        types = self.ctx.initial_states(node, self.ctx.sequence_input)
        child = Lowerer(self.graph, self.ctx, lead=0, parent=self)
        states = []
        for info, type_ in zip(body.input[:n_states], types, strict=True):
            name = self.graph.add_state(self.graph.fresh(info.name), type_, node_loc(node))
            states.append(name)
            child.bind(info.name, Tensor(name))
        for info, outer in zip(body.input[n_states:], node.input[n_states:], strict=True):
            value = self.lookup(outer, node)
            if not isinstance(value, Tensor):
                raise SnucError(
                    f"{describe(node)}: scans over {outer!r}, which does not depend on the "
                    f"model input; snuc scans the input sequence X[T, B, ...]"
                )
            child.bind(info.name, value)
        child.bind_initializers(body)
        for info, outer in zip(body.output[n_states:], node.output[n_states:], strict=True):
            if outer:
                child.prefer_name(body, info.name, self.hints.get(outer, outer))
        child.run(live_nodes(body, [v.name for v in body.output]))
        for info, state, type_ in zip(body.output[:n_states], states, types, strict=True):
            value = child.lookup(info.name, node)
            if not isinstance(value, Tensor) or self.graph.type_of(value.name) != type_:
                got = self.graph.type_of(value.name) if isinstance(value, Tensor) else "a constant"
                raise SnucError(
                    f"{describe(node)}: the body's new state {info.name!r} is {got}, but its "
                    f"initial value is {type_}; a state must keep its type"
                )
            self.graph.set_next(state, value.name)
        scanned = [child.lookup(info.name, node) for info in body.output[n_states:]]
        for info, value in zip(body.output[n_states:], scanned, strict=True):
            if not isinstance(value, Tensor):
                raise SnucError(
                    f"{describe(node)}: Scan output {info.name!r} does not depend on the "
                    f"input or the states; snuc needs per-timestep values"
                )
        out_ranks = [self.graph.type_of(v.name).rank + 1 for v in scanned]
        self._check_scan_attr(node, "scan_output_axes", [-r for r in out_ranks])
        for outer, value in zip(node.output[n_states:], scanned, strict=True):
            if outer:
                self.bind(outer, value)
        for outer in node.output[:n_states]:
            if outer:
                self.bind(outer, FinalState(describe(node)))

    def _check_scan_attr(self, node: onnx.NodeProto, name: str, allowed: list[int]) -> None:
        """Each entry of a Scan's ``name`` must be 0 or its entry in ``allowed``."""
        for i, (v, other) in enumerate(zip(attr(node, name, []), allowed, strict=False)):
            if v not in (0, other):
                raise SnucError(
                    f"{describe(node)}: {name}[{i}] is {v}; snuc needs a forward scan over "
                    f"axis 0 of time-major tensors [T, B, ...] (Scan's defaults)"
                )

    # ------------------------------------------------------------------ import-time values

    def _shape(self, node: onnx.NodeProto, vals: list[Value | None]) -> None:
        value = vals[0]
        dims = value.array.shape if isinstance(value, Sym) else self.full_shape(value)
        start = int(attr(node, "start", 0))
        end = attr(node, "end")
        dims = dims[start:] if end is None else dims[start : int(end)]
        self.bind(node.output[0], shape_value(np.array(list(dims) or [], dtype=object)))

    def _fold_splat(self, node: onnx.NodeProto, vals: list[Value | None]) -> None:
        """An element-wise op on broadcast constants: fold it, keep the symbolic shape."""
        if node.op_type not in _ELEMENTWISE or any(isinstance(v, Sym) for v in vals):
            raise SnucError(
                f"{describe(node)}: {node.op_type} of a constant broadcast to the batch size "
                f"is not supported; compute it from a model input or state instead"
            )
        shape = self._broadcast_shape(node, [self.full_shape(v) for v in vals if v is not None])
        (array,) = self.ctx.fold(node, [None if v is None else v.array for v in vals])
        self.bind(node.output[0], Splat(array, shape))

    def _broadcast_shape(self, node: onnx.NodeProto, shapes: list[tuple]) -> tuple:
        try:
            return reduce(shp.broadcast, shapes)
        except SymbolicError as err:
            raise SnucError(f"{describe(node)}: {err}") from None

    def _symbolic(self, node: onnx.NodeProto, vals: list[Value | None]) -> None:
        """Evaluate integer arithmetic on shapes that hold ``B`` or ``T``."""
        out = node.output[0]
        try:
            self.bind(out, SymbolicEval(node, vals, self.ctx.opset).run())
        except SymbolicError as err:
            raise SnucError(
                f"{describe(node)}: cannot resolve the shape value {out!r} at import: {err}; "
                f"export with static sizes except the batch"
            ) from None

    # ------------------------------------------------------------------ element-wise

    def elementwise(self, node: onnx.NodeProto, vals: list[Value | None], op: ops.Op) -> None:
        """An op with NumPy broadcasting; constants with a time axis must not vary along it."""
        present = [v for v in vals if v is not None]
        shapes = [self.full_shape(v) for v in present]
        rank = max(len(s) for s in shapes)
        names = []
        for i, (value, shape) in enumerate(zip(present, shapes, strict=True)):
            if isinstance(value, Tensor):
                if self.lead and len(shape) != rank:
                    raise self.mixes_time(node)
                names.append(value.name)
                continue
            if self.lead and isinstance(value, Const | Splat) and len(shape) == rank:
                # The constant lines up with the time axis: it must not vary along it.
                if value.array.shape[0] != 1 or shape[0] not in (1, T_DIM):
                    raise self.mixes_time(node)
                value = Splat(value.array[0], shape[1:])
            names.append(self.operand(value, node, f"{node.output[0]}_in{i}"))
        name = self.emit(node, op, names)
        if any(isinstance(v, Splat) for v in present):
            expected = self._broadcast_shape(node, shapes)
            if self.full_shape(Tensor(name)) != expected:
                raise SnucError(
                    f"{describe(node)}: its result has the batch size only through a constant "
                    f"broadcast to it; compute it from a model input or state instead"
                )
        self.bind(node.output[0], Tensor(name))

    def _unary(self, node: onnx.NodeProto, vals: list[Value | None]) -> None:
        self.result(node, _UNARY[node.op_type](), [self.tensor(vals[0], node)])

    def _binary(self, node: onnx.NodeProto, vals: list[Value | None]) -> None:
        self.elementwise(node, vals, _BINARY[node.op_type]())

    def _where(self, node: onnx.NodeProto, vals: list[Value | None]) -> None:
        self.elementwise(node, vals, ops.Where())

    def _leaky_relu(self, node: onnx.NodeProto, vals: list[Value | None]) -> None:
        alpha = float(attr(node, "alpha", 0.01))
        self.result(node, ops.LeakyRelu(alpha=alpha), [self.tensor(vals[0], node)])

    def _cast(self, node: onnx.NodeProto, vals: list[Value | None]) -> None:
        to = int(attr(node, "to"))
        if to not in IR_DTYPES:
            raise SnucError(
                f"{describe(node)}: casts to {type_name(to)}; snuc computes "
                f"with FLOAT, DOUBLE, INT64, INT32 and BOOL"
            )
        self.result(node, ops.Cast(to=IR_DTYPES[to]), [self.tensor(vals[0], node)])

    # ------------------------------------------------------------------ matrix work

    def _matmul(self, node: onnx.NodeProto, vals: list[Value | None]) -> None:
        a, b = vals
        if isinstance(b, Const) and 1 <= b.array.ndim <= 2:
            self._dense(node, self.tensor(a, node), b.array, b.name)
        elif isinstance(a, Const) and 1 <= a.array.ndim <= 2:
            self._dense_left(node, a.array, a.name, self.tensor(b, node))
        else:
            if self.lead and not (
                isinstance(a, Tensor)
                and isinstance(b, Tensor)
                and len(self.full_shape(a)) == len(self.full_shape(b)) >= 3
            ):
                raise self.mixes_time(node)
            out = node.output[0]
            self.result(
                node,
                ops.MatMul(),
                [self.operand(a, node, f"{out}_a"), self.operand(b, node, f"{out}_b")],
            )

    def _dense(self, node: onnx.NodeProto, x: str, w: np.ndarray, w_name: str) -> None:
        """``y = x @ w`` for a constant ``w`` (a vector ``w`` gives ``[..., K] -> [...]``)."""
        if w.ndim == 2:
            self.result(node, ops.Dense(), [x, self.constant(w, w_name, node)])
            return
        column = np.ascontiguousarray(w[:, None])
        y = self.emit(
            node,
            ops.Dense(),
            [x, self.constant(column, w_name, node)],
            hint=f"{node.output[0]}_col",
        )
        self.result(node, ops.Reshape(shape=self.graph.type_of(y).shape[:-1]), [y])

    def _dense_left(self, node: onnx.NodeProto, w: np.ndarray, w_name: str, x: str) -> None:
        """``y = w @ x`` for a constant ``w``, as ``(x^T @ w^T)^T`` on the crossbars."""
        rank = self.graph.type_of(x).rank
        if rank < 2:
            if self.lead:
                raise self.mixes_time(node)
            raise SnucError(
                f"{describe(node)}: multiplies constant {w_name!r} by the vector "
                f"{self.graph.type_of(x)}, which contracts over the batch"
            )
        out = node.output[0]
        xt = self.emit(node, ops.Transpose(perm=_swap_last(rank)), [x], hint=f"{out}_xT")
        if w.ndim == 1:
            column = np.ascontiguousarray(w[:, None])
            y = self.emit(
                node, ops.Dense(), [xt, self.constant(column, w_name, node)], hint=f"{out}_col"
            )
            self.result(node, ops.Reshape(shape=self.graph.type_of(y).shape[:-1]), [y])
            return
        wt = np.ascontiguousarray(w.T)
        yt = self.emit(node, ops.Dense(), [xt, self.constant(wt, w_name, node)], hint=f"{out}_T")
        self.result(node, ops.Transpose(perm=_swap_last(rank)), [yt])

    def _gemm(self, node: onnx.NodeProto, vals: list[Value | None]) -> None:
        """``y = alpha * A' @ B' + beta * C``; a constant A or B goes onto the crossbars."""
        if self.lead:
            raise self.mixes_time(node)
        a, b = vals[0], vals[1]
        c = vals[2] if len(vals) > 2 else None
        alpha = float(attr(node, "alpha", 1.0))
        beta = float(attr(node, "beta", 1.0))
        trans_a = bool(attr(node, "transA", 0))
        trans_b = bool(attr(node, "transB", 0))
        add_c = c is not None and beta != 0.0
        out = node.output[0]
        product_hint = f"{out}_mm" if add_c else None
        if isinstance(b, Const):
            w = _scaled(b.array.T if trans_b else b.array, alpha)
            x = self.tensor(a, node)
            if trans_a:
                x = self.emit(node, ops.Transpose(perm=(1, 0)), [x], hint=f"{out}_aT")
            y = self.emit(
                node,
                ops.Dense(),
                [x, self.constant(np.ascontiguousarray(w), b.name, node)],
                hint=product_hint,
            )
        elif isinstance(a, Const):
            w = _scaled(a.array.T if trans_a else a.array, alpha)  # [M, K]
            x = self.tensor(b, node)
            if not trans_b:
                x = self.emit(node, ops.Transpose(perm=(1, 0)), [x], hint=f"{out}_bT")
            wt = np.ascontiguousarray(w.T)
            yt = self.emit(node, ops.Dense(), [x, self.constant(wt, a.name, node)], hint=f"{out}_T")
            y = self.emit(node, ops.Transpose(perm=(1, 0)), [yt], hint=product_hint)
        else:
            xa, xb = self.operand(a, node, f"{out}_a"), self.operand(b, node, f"{out}_b")
            if trans_a:
                xa = self.emit(node, ops.Transpose(perm=(1, 0)), [xa], hint=f"{out}_aT")
            if trans_b:
                xb = self.emit(node, ops.Transpose(perm=(1, 0)), [xb], hint=f"{out}_bT")
            if alpha == 1.0:
                y = self.emit(node, ops.MatMul(), [xa, xb], hint=product_hint)
            else:
                m = self.emit(node, ops.MatMul(), [xa, xb], hint=f"{out}_ab")
                scale = np.array(alpha, dtype=DTYPES[self.graph.type_of(m).dtype])
                y = self.emit(
                    node,
                    ops.Mul(),
                    [m, self.constant(scale, f"{out}_alpha", node)],
                    hint=product_hint,
                )
        if add_c:
            if isinstance(c, Tensor):
                cv = c.name
                if beta != 1.0:
                    scale = np.array(beta, dtype=DTYPES[self.graph.type_of(cv).dtype])
                    cv = self.emit(
                        node,
                        ops.Mul(),
                        [cv, self.constant(scale, f"{out}_beta", node)],
                        hint=f"{out}_c",
                    )
            elif isinstance(c, Const | Splat) and beta != 1.0:
                cv = self.constant(_scaled(c.array, beta), f"{out}_c", node)
            else:
                cv = self.operand(c, node, f"{out}_c")
            y = self.emit(node, ops.Add(), [y, cv])
        self.bind(out, Tensor(y))

    def _conv(self, node: onnx.NodeProto, vals: list[Value | None]) -> None:
        """2-D convolution; a constant weight goes onto the crossbars, a bias is added."""
        if self.lead:
            raise self.mixes_time(node)
        x = self.tensor(vals[0], node)
        w = vals[1]
        bias = vals[2] if len(vals) > 2 else None
        x_type = self.graph.type_of(x)
        w_shape = tuple(self.full_shape(w))
        if x_type.rank != 4 or len(w_shape) != 4:
            raise SnucError(
                f"{describe(node)}: only 2-D convolution (NCHW input) is supported, got "
                f"input {x_type}"
            )
        kernel = [int(k) for k in w_shape[2:]]
        declared = attr(node, "kernel_shape")
        if declared is not None and list(declared) != kernel:
            raise SnucError(
                f"{describe(node)}: kernel_shape {list(declared)} differs from the weight's "
                f"{kernel}"
            )
        strides = tuple(attr(node, "strides", (1, 1)))
        dilations = tuple(attr(node, "dilations", (1, 1)))
        pads = self._pads(node, x_type, kernel, strides, dilations)
        op_class = ops.Conv if isinstance(w, Const) else ops.DigitalConv
        conv = op_class(
            strides=strides, pads=pads, dilations=dilations, group=int(attr(node, "group", 1))
        )
        out = node.output[0]
        w_name = self.operand(w, node, f"{out}_w")
        if bias is None:
            self.result(node, conv, [x, w_name])
            return
        if not isinstance(bias, Const):
            raise SnucError(f"{describe(node)}: the bias must be a constant")
        y = self.emit(node, conv, [x, w_name], hint=f"{out}_conv")
        b = np.ascontiguousarray(bias.array.reshape(1, -1, 1, 1))
        self.result(node, ops.Add(), [y, self.constant(b, bias.name, node)])

    def _pads(
        self,
        node: onnx.NodeProto,
        x_type: TensorType,
        kernel: Sequence[int],
        strides: Sequence[int],
        dilations: Sequence[int],
    ) -> tuple[int, ...]:
        """Explicit ``(top, left, bottom, right)`` pads from ``pads`` or ``auto_pad``."""
        sizes = x_type.shape[2:]
        if not all(isinstance(s, int) for s in sizes):
            raise SnucError(f"{describe(node)}: spatial dimensions must be static, got {x_type}")
        auto = attr(node, "auto_pad", "NOTSET")
        if auto == "NOTSET":
            pads = tuple(int(p) for p in attr(node, "pads", (0, 0, 0, 0)))
            if len(pads) != 4:
                raise SnucError(f"{describe(node)}: expected 4 pads for 2-D, got {list(pads)}")
            return pads
        if auto == "VALID":
            return (0, 0, 0, 0)
        if auto not in ("SAME_UPPER", "SAME_LOWER"):
            raise SnucError(f"{describe(node)}: unknown auto_pad {auto!r}")
        begin, end = [], []
        for size, k, s, d in zip(sizes, kernel, strides, dilations, strict=True):
            out = -(-size // s)
            total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else large)
            end.append(large if auto == "SAME_UPPER" else small)
        return (*begin, *end)

    def _pool(self, node: onnx.NodeProto, vals: list[Value | None]) -> None:
        if self.lead:
            raise self.mixes_time(node)
        x = self.tensor(vals[0], node)
        x_type = self.graph.type_of(x)
        kernel = tuple(int(k) for k in attr(node, "kernel_shape", ()))
        if x_type.rank != 4 or len(kernel) != 2:
            raise SnucError(
                f"{describe(node)}: only 2-D pooling (NCHW input) is supported, got {x_type}"
            )
        if any(d != 1 for d in attr(node, "dilations", (1, 1))):
            raise SnucError(f"{describe(node)}: dilated pooling is not supported")
        if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
            raise SnucError(f"{describe(node)}: the Indices output of MaxPool is not supported")
        strides = tuple(int(s) for s in attr(node, "strides", (1, 1)))
        pads = self._pads(node, x_type, kernel, strides, (1, 1))
        if attr(node, "ceil_mode", 0):
            for i in range(2):
                span = x_type.shape[2 + i] + pads[i] + pads[i + 2] - kernel[i]
                if span % strides[i]:
                    raise SnucError(
                        f"{describe(node)}: ceil_mode=1 changes the output size here; "
                        f"re-export with ceil_mode=0 (or pad the input explicitly)"
                    )
        if node.op_type == "MaxPool":
            op: ops.Op = ops.MaxPool(kernel=kernel, strides=strides, pads=pads)
        else:
            include = bool(attr(node, "count_include_pad", 0))
            op = ops.AvgPool(kernel=kernel, strides=strides, pads=pads, count_include_pad=include)
        self.result(node, op, [x])

    def _global_average_pool(self, node: onnx.NodeProto, vals: list[Value | None]) -> None:
        if self.lead:
            raise self.mixes_time(node)
        x = self.tensor(vals[0], node)
        rank = self.graph.type_of(x).rank
        self.result(node, ops.ReduceMean(axes=tuple(range(2, rank)), keepdims=True), [x])


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    """The array a Constant node holds."""
    attr = node.attribute[0]
    if attr.name == "value":
        return numpy_helper.to_array(attr.t)
    if attr.name == "value_float":
        return np.array(attr.f, dtype=np.float32)
    if attr.name == "value_floats":
        return np.array(attr.floats, dtype=np.float32)
    if attr.name == "value_int":
        return np.array(attr.i, dtype=np.int64)
    if attr.name == "value_ints":
        return np.array(attr.ints, dtype=np.int64)
    raise SnucError(f"{describe(node)}: a Constant with {attr.name} is not supported")


_LOWERINGS: dict[str, Callable[[Lowerer, onnx.NodeProto, list], None]] = {
    **{op: Lowerer._unary for op in _UNARY},
    **{op: Lowerer._binary for op in _BINARY},
    **dict.fromkeys(DEFINED, lower_defined),
    "Clip": lower_clip,
    "AveragePool": Lowerer._pool,
    "Cast": Lowerer._cast,
    "Concat": lower_concat,
    "ConstantOfShape": lower_constant_of_shape,
    "Conv": Lowerer._conv,
    "Expand": lower_expand,
    "Flatten": lower_flatten,
    "Gather": lower_gather,
    "Gemm": Lowerer._gemm,
    "GlobalAveragePool": Lowerer._global_average_pool,
    "LeakyRelu": Lowerer._leaky_relu,
    "LogSoftmax": lower_softmax,
    "MatMul": Lowerer._matmul,
    "MaxPool": Lowerer._pool,
    "ReduceMean": lower_reduce,
    "ReduceSum": lower_reduce,
    "Reshape": lower_reshape,
    "Slice": lower_slice,
    "Softmax": lower_softmax,
    "Split": lower_split,
    "Squeeze": lower_squeeze,
    "Transpose": lower_transpose,
    "Unsqueeze": lower_unsqueeze,
    "Where": Lowerer._where,
}

SUPPORTED_OPS: tuple[str, ...] = tuple(
    sorted({*_LOWERINGS, "Constant", "Identity", "Shape", *RECURRENT_OPS})
)
"""ONNX op types (default domain) a step body may apply to run-time values."""


def unsupported(node: onnx.NodeProto) -> SnucError:
    op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
    return SnucError(
        f"{describe(node)}: op {op} is not supported; snuc supports {', '.join(SUPPORTED_OPS)}"
    )
