"""Lowering the ONNX ops of :mod:`snuc.ir.elementwise`, and Clip, for the :class:`Lowerer`.

Every element-wise op defined in :mod:`snuc.ir.elementwise` with an ONNX spelling is
lowered here operand for operand (:data:`DEFINED`); an n-ary one (Max, Min) becomes a
chain of binary ops. Clip becomes ``dig.clip``, or ``dig.max``/``dig.min`` where a bound
is missing. Each function lowers one ONNX node for a
:class:`~snuc.frontend.onnx_lower.Lowerer` (``lw``); the dispatch table ``_LOWERINGS``
there names them by op type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from snuc.frontend.onnx_eval import attr
from snuc.frontend.onnx_values import Const, Value
from snuc.ir.elementwise import ELEMENTWISE, Clip, Elementwise, Max, Min
from snuc.ir.types import DTYPES

if TYPE_CHECKING:
    from snuc.frontend.onnx_lower import Lowerer

DEFINED: dict[str, Elementwise] = {e.onnx: e for e in ELEMENTWISE.values() if e.onnx}
"""ONNX op types lowered operand for operand to an op of :mod:`snuc.ir.elementwise`."""


def lower_defined(lw: Lowerer, node: onnx.NodeProto, vals: list[Value | None]) -> None:
    """An op of :mod:`snuc.ir.elementwise`; a variadic one as a chain of binary ops."""
    definition = DEFINED[node.op_type]
    present = [v for v in vals if v is not None]
    if not definition.variadic or len(present) == 2:
        lw.elementwise(node, present, definition.op())
        return
    acc = present[0]
    for i, value in enumerate(present[1:], 1):
        last = i == len(present) - 1
        out = node.output[0] if last else f"{node.output[0]}_{i}"
        part = onnx.helper.make_node(node.op_type, [], [out], name=node.name or None)
        lw.elementwise(part, [acc, value], definition.op())
        acc = lw.env[out]
    if len(present) == 1:
        lw.bind(node.output[0], acc)


def lower_clip(lw: Lowerer, node: onnx.NodeProto, vals: list[Value | None]) -> None:
    """``min(max(x, lo), hi)``; bounds are inputs from opset 11, attributes before.

    A missing input bound is no bound, as ONNX defines it: one bound is ``dig.max`` or
    ``dig.min``, none the value itself (onnxruntime clamps infinities to the float's
    extremes there; an infinite constant is an import error anyway). Before opset 11 the
    attributes default to float32's extremes (ONNX), which are bounds.
    """
    x = vals[0]
    if lw.ctx.opset >= 11:
        lo, hi = (vals[i] if i < len(vals) else None for i in (1, 2))
    else:
        limit = float(np.finfo(np.float32).max)
        dtype = np.dtype(DTYPES[lw.graph.type_of(lw.tensor(x, node)).dtype])
        lo, hi = (
            Const(np.array(attr(node, name, default), dtype), f"{node.output[0]}_{name}")
            for name, default in (("min", -limit), ("max", limit))
        )
    if lo is not None and hi is not None:
        lw.elementwise(node, [x, lo, hi], Clip())
    elif lo is not None:
        lw.elementwise(node, [x, lo], Max())
    elif hi is not None:
        lw.elementwise(node, [x, hi], Min())
    else:
        lw.bind(node.output[0], x)


def passes_through(node: onnx.NodeProto, opset: int) -> bool:
    """Whether the node's output is its input: Identity, a variadic op of one input, or
    a Clip without bound inputs."""
    variadic = node.op_type in DEFINED and DEFINED[node.op_type].variadic
    unbounded = node.op_type == "Clip" and opset >= 11 and not any(node.input[1:])
    return node.op_type == "Identity" or unbounded or (variadic and len(node.input) == 1)
