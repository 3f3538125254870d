"""Element-wise digital ops defined in one place each: class, meaning, ranges, cost, ONNX.

An element-wise op here is one class decorated with :func:`elementwise`, which registers
the class (:func:`snuc.ir.op_base.register`) and records in :data:`ELEMENTWISE` everything
the other stages need to know about it:

* ``fn``: what it computes, a NumPy callable on the operands (a ufunc where possible).
  The reference semantics (``snuc.runtime.semantics``) call it; the fast kernel
  (``snuc.runtime.plan_kernels``) calls a ufunc with its output array, anything else
  through the semantics. Both compute the same float operations, so the backends agree
  with the interpreter bit for bit.
* ``ranges``: the bounds of its result from its operands' ranges (``snuc.ir.crossbar``
  wraps them in ``ValueRange``; ``None`` there: nothing is known).
* ``cost`` and ``meaning``: its vector instruction on the digital units, operations per
  element (``snuc.ir.machine.DIGITAL_OPS``; the mnemonic is the name after ``dig.``).
* ``onnx``: the ONNX op type that lowers to it operand for operand (``variadic``: an
  n-ary ONNX op folded into a chain of binary ops), or None when the importer lowers it
  by hand.

Adding an element-wise op is one class here plus tests. This module imports nothing
from the passes or the runtime (the layering of docs/ir.md); ``snuc.ir.ops`` imports it,
so the ops are registered whenever the IR is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from snuc.ir.errors import UNKNOWN
from snuc.ir.op_base import Op, _float, _require, register
from snuc.ir.types import TensorType, broadcast_shapes, promote


class Bounded(Protocol):
    """What a range rule reads of an operand's range (``snuc.ir.crossbar.ValueRange``)."""

    lo: float
    hi: float
    binary: bool


Bounds = tuple[float, float, bool]
"""A result's ``(lo, hi, binary)``: every element in ``[lo, hi]``; binary: 0 or 1 only."""

RangeRule = Callable[[Op, Sequence[Bounded]], Bounds | None]


@dataclass(frozen=True)
class Elementwise:
    """Everything the compiler and the runtime know about one element-wise op.

    Attributes:
        op: the op class.
        fn: ``fn(*operands) -> result``, the op's meaning in NumPy.
        ranges: the result's bounds from the operands' ranges; None result: unknown.
        cost: operations per element of its vector instruction.
        meaning: one line for docs and errors.
        onnx: the ONNX op type lowered to it directly, or None.
        variadic: the ONNX op takes any number of inputs, folded left to right.
    """

    op: type[Op]
    fn: Callable[..., np.ndarray]
    ranges: RangeRule
    cost: int
    meaning: str
    onnx: str | None
    variadic: bool

    @property
    def mnemonic(self) -> str:
        """Its vector instruction's name: the op's name without ``dig.``."""
        return self.op.NAME.removeprefix("dig.")

    @property
    def ufunc(self) -> np.ufunc | None:
        """``fn`` when it is a NumPy ufunc taking one input per operand, else None."""
        fn = self.fn
        if isinstance(fn, np.ufunc) and fn.nin == self.op.OPERANDS[0]:
            return fn
        return None


ELEMENTWISE: dict[type[Op], Elementwise] = {}
"""By op class, the element-wise ops defined in this module."""


def elementwise(
    fn: Callable[..., np.ndarray],
    ranges: RangeRule,
    meaning: str,
    *,
    cost: int = 1,
    onnx: str | None = None,
    variadic: bool = False,
) -> Callable[[type[Op]], type[Op]]:
    """Class decorator: register the op class and its :class:`Elementwise` definition."""

    def define(cls: type[Op]) -> type[Op]:
        register(cls)
        ELEMENTWISE[cls] = Elementwise(cls, fn, ranges, cost, meaning, onnx, variadic)
        return cls

    return define


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Unary(Op):
    """``y = f(x)`` of any dtype, same type as x."""

    def infer(self, types, consts, loc=UNKNOWN):
        return (types[0],)


@dataclass(frozen=True)
class FloatUnary(Unary):
    """``y = f(x)`` of a float x."""

    def infer(self, types, consts, loc=UNKNOWN):
        _float(self, types[0], loc)
        return (types[0],)


@dataclass(frozen=True)
class Binary(Op):
    """``z = f(x, y)`` with NumPy broadcasting; operands of one dtype, the result's."""

    OPERANDS: ClassVar = (2, 2)

    def infer(self, types, consts, loc=UNKNOWN):
        dtype = promote([t.dtype for t in types], loc)
        return (TensorType(dtype, broadcast_shapes([t.shape for t in types], loc)),)


@dataclass(frozen=True)
class Compare(Op):
    """``z = f(x, y)`` (bool) with NumPy broadcasting; operands of one dtype."""

    OPERANDS: ClassVar = (2, 2)

    def infer(self, types, consts, loc=UNKNOWN):
        promote([t.dtype for t in types], loc)
        return (TensorType("bool", broadcast_shapes([t.shape for t in types], loc)),)


@dataclass(frozen=True)
class _Logical(Op):
    """Boolean operands, a boolean result, NumPy broadcasting."""

    def infer(self, types, consts, loc=UNKNOWN):
        for t in types:
            _require(t.dtype == "bool", self, loc, f"expected bool operands, got {t}")
        return (TensorType("bool", broadcast_shapes([t.shape for t in types], loc)),)


# --------------------------------------------------------------------------- ranges


def _binary(r: Bounded) -> bool:
    return bool(r.binary)


def _spikes(op: Op, r: Sequence[Bounded]) -> Bounds:
    return (0.0, 1.0, True)


def _unknown(op: Op, r: Sequence[Bounded]) -> None:
    return None


def _increasing(fn: Callable[[float], float], keeps_binary: bool = False) -> RangeRule:
    """The rule of a non-decreasing function of one operand."""
    return lambda op, r: (fn(r[0].lo), fn(r[0].hi), keeps_binary and r[0].binary)


def _exp(v: float) -> float:
    return math.exp(v) if v < 709.0 else math.inf  # exp(709.8) overflows a double


def _softplus(v: float) -> float:
    return max(v, 0.0) + math.log1p(_exp(-abs(v))) if math.isfinite(v) else max(v, 0.0)


def _sum_range(op: Op, r: Sequence[Bounded]) -> Bounds:
    return (r[0].lo + r[1].lo, r[0].hi + r[1].hi, False)


def _difference_range(op: Op, r: Sequence[Bounded]) -> Bounds:
    return (r[0].lo - r[1].hi, r[0].hi - r[1].lo, False)


def _product_range(op: Op, r: Sequence[Bounded]) -> Bounds:
    a, b = r
    # Interval arithmetic takes 0 * inf as 0 (the product of a zero bound is zero).
    ends = [0.0 if (x == 0 or y == 0) else x * y for x in (a.lo, a.hi) for y in (b.lo, b.hi)]
    return (min(ends), max(ends), a.binary and b.binary)


def _negated_range(op: Op, r: Sequence[Bounded]) -> Bounds:
    return (-r[0].hi, -r[0].lo, False)


def _tanh_range(op: Op, r: Sequence[Bounded]) -> Bounds:
    return (-1.0, 1.0, False)


def _abs_range(op: Op, r: Sequence[Bounded]) -> Bounds:
    lo, hi = r[0].lo, r[0].hi
    if lo >= 0:
        return (lo, hi, r[0].binary)
    if hi <= 0:
        return (-hi, -lo, False)
    return (0.0, max(-lo, hi), False)


def _sign_range(op: Op, r: Sequence[Bounded]) -> Bounds:
    lo, hi = (float(np.sign(v)) for v in (r[0].lo, r[0].hi))
    return (lo, hi, lo >= 0)


def _log_range(op: Op, r: Sequence[Bounded]) -> Bounds | None:
    if r[0].lo < 0:
        return None  # NaN below zero
    return tuple(math.log(v) if v > 0 else -math.inf for v in (r[0].lo, r[0].hi)) + (False,)


def _sqrt_range(op: Op, r: Sequence[Bounded]) -> Bounds | None:
    if r[0].lo < 0:
        return None
    return (math.sqrt(r[0].lo), math.sqrt(r[0].hi), r[0].binary)


def _extremum(pick: Callable[[float, float], float]) -> RangeRule:
    """Max or min: non-decreasing in both operands."""
    return lambda op, r: (pick(r[0].lo, r[1].lo), pick(r[0].hi, r[1].hi), all(map(_binary, r)))


def _clip_range(op: Op, r: Sequence[Bounded]) -> Bounds:
    x, lo, hi = r
    # min(max(x, lo), hi) is non-decreasing in each operand.
    return (
        min(max(x.lo, lo.lo), hi.lo),
        min(max(x.hi, lo.hi), hi.hi),
        all(map(_binary, r)),
    )


# --------------------------------------------------------------------------- meanings


def _clip(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``min(max(x, lo), hi)``: ONNX Clip (``hi`` wins where ``lo > hi``)."""
    return np.minimum(np.maximum(x, lo), hi)


def _pow(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``x ** y`` in x's dtype (ONNX Pow: the exponent may have another type)."""
    return np.power(x, y.astype(x.dtype, copy=False))


def _softplus_fn(x: np.ndarray) -> np.ndarray:
    """``log(1 + exp(x))`` without overflow (``logaddexp(0, x)``)."""
    return np.logaddexp(x.dtype.type(0), x)


# --------------------------------------------------------------------------- the ops


@elementwise(np.add, _sum_range, "z = x + y", onnx="Add")
@dataclass(frozen=True)
class Add(Binary):
    """``z = x + y`` with NumPy broadcasting."""

    NAME: ClassVar = "dig.add"


@elementwise(np.subtract, _difference_range, "z = x - y", onnx="Sub")
@dataclass(frozen=True)
class Sub(Binary):
    """``z = x - y`` with NumPy broadcasting."""

    NAME: ClassVar = "dig.sub"


@elementwise(np.multiply, _product_range, "z = x * y", onnx="Mul")
@dataclass(frozen=True)
class Mul(Binary):
    """``z = x * y`` with NumPy broadcasting."""

    NAME: ClassVar = "dig.mul"


@elementwise(np.greater, _spikes, "z = x > y", onnx="Greater")
@dataclass(frozen=True)
class Greater(Compare):
    """``z = x > y`` (bool)."""

    NAME: ClassVar = "dig.greater"


@elementwise(np.greater_equal, _spikes, "z = x >= y", onnx="GreaterOrEqual")
@dataclass(frozen=True)
class GreaterOrEqual(Compare):
    """``z = x >= y`` (bool)."""

    NAME: ClassVar = "dig.greater_equal"


@elementwise(np.less, _spikes, "z = x < y", onnx="Less")
@dataclass(frozen=True)
class Less(Compare):
    """``z = x < y`` (bool)."""

    NAME: ClassVar = "dig.less"


@elementwise(np.less_equal, _spikes, "z = x <= y", onnx="LessOrEqual")
@dataclass(frozen=True)
class LessOrEqual(Compare):
    """``z = x <= y`` (bool)."""

    NAME: ClassVar = "dig.less_equal"


@elementwise(np.negative, _negated_range, "y = -x", onnx="Neg")
@dataclass(frozen=True)
class Neg(Unary):
    """``y = -x``."""

    NAME: ClassVar = "dig.neg"


@elementwise(np.tanh, _tanh_range, "y = tanh(x) (table and interpolation)", onnx="Tanh")
@dataclass(frozen=True)
class Tanh(FloatUnary):
    """``y = tanh(x)``."""

    NAME: ClassVar = "dig.tanh"


@elementwise(np.maximum, _extremum(max), "z = max(x, y)", onnx="Max", variadic=True)
@dataclass(frozen=True)
class Max(Binary):
    """``z = max(x, y)`` with broadcasting (NaN if either is NaN)."""

    NAME: ClassVar = "dig.max"


@elementwise(np.minimum, _extremum(min), "z = min(x, y)", onnx="Min", variadic=True)
@dataclass(frozen=True)
class Min(Binary):
    """``z = min(x, y)`` with broadcasting (NaN if either is NaN)."""

    NAME: ClassVar = "dig.min"


@elementwise(_clip, _clip_range, "y = min(max(x, lo), hi)", cost=2)
@dataclass(frozen=True)
class Clip(Op):
    """``y = min(max(x, lo), hi)``; operands ``(x, lo, hi)`` of one dtype, broadcast to x.

    A missing ONNX bound is the infinity (or an integer's extreme) of x's dtype.
    """

    NAME: ClassVar = "dig.clip"
    OPERANDS: ClassVar = (3, 3)

    def infer(self, types, consts, loc=UNKNOWN):
        promote([t.dtype for t in types], loc)
        shape = broadcast_shapes([t.shape for t in types], loc)
        _require(shape == types[0].shape, self, loc, f"bounds broadcast x to {shape}")
        return (types[0],)


@elementwise(np.absolute, _abs_range, "y = |x|", onnx="Abs")
@dataclass(frozen=True)
class Abs(Unary):
    """``y = |x|``."""

    NAME: ClassVar = "dig.abs"


@elementwise(np.sign, _sign_range, "y = -1, 0 or 1 as x < 0, x == 0, x > 0", onnx="Sign")
@dataclass(frozen=True)
class Sign(Unary):
    """``y = -1 where x < 0, 0 where x == 0, 1 where x > 0`` (NaN stays NaN)."""

    NAME: ClassVar = "dig.sign"


@elementwise(np.equal, _spikes, "z = x == y", onnx="Equal")
@dataclass(frozen=True)
class Equal(Compare):
    """``z = x == y`` (bool)."""

    NAME: ClassVar = "dig.equal"


@elementwise(np.logical_not, _spikes, "y = not x", onnx="Not")
@dataclass(frozen=True)
class Not(_Logical):
    """``y = not x`` of a bool x."""

    NAME: ClassVar = "dig.not"


@elementwise(np.logical_and, _spikes, "z = x and y", onnx="And")
@dataclass(frozen=True)
class And(_Logical):
    """``z = x and y`` of bools, with broadcasting."""

    NAME: ClassVar = "dig.and"
    OPERANDS: ClassVar = (2, 2)


@elementwise(np.logical_or, _spikes, "z = x or y", onnx="Or")
@dataclass(frozen=True)
class Or(_Logical):
    """``z = x or y`` of bools, with broadcasting."""

    NAME: ClassVar = "dig.or"
    OPERANDS: ClassVar = (2, 2)


@elementwise(np.exp, _increasing(_exp), "y = exp(x) (table and interpolation)", onnx="Exp")
@dataclass(frozen=True)
class Exp(FloatUnary):
    """``y = exp(x)``."""

    NAME: ClassVar = "dig.exp"


@elementwise(np.log, _log_range, "y = log(x) (table and interpolation)", onnx="Log")
@dataclass(frozen=True)
class Log(FloatUnary):
    """``y = log(x)`` (``-inf`` at 0, NaN below)."""

    NAME: ClassVar = "dig.log"


@elementwise(np.sqrt, _sqrt_range, "y = sqrt(x) (table and interpolation)", onnx="Sqrt")
@dataclass(frozen=True)
class Sqrt(FloatUnary):
    """``y = sqrt(x)`` (NaN below 0)."""

    NAME: ClassVar = "dig.sqrt"


@elementwise(_softplus_fn, _increasing(_softplus), "y = log(1 + exp(x))", onnx="Softplus")
@dataclass(frozen=True)
class Softplus(FloatUnary):
    """``y = log(1 + exp(x))``, computed as ``logaddexp(0, x)`` (no overflow)."""

    NAME: ClassVar = "dig.softplus"


@elementwise(_pow, _unknown, "z = x ** y (exp and log tables)", cost=3, onnx="Pow")
@dataclass(frozen=True)
class Pow(Op):
    """``z = x ** y`` in x's dtype with broadcasting; y is converted to x's dtype first."""

    NAME: ClassVar = "dig.pow"
    OPERANDS: ClassVar = (2, 2)

    def infer(self, types, consts, loc=UNKNOWN):
        return (TensorType(types[0].dtype, broadcast_shapes([t.shape for t in types], loc)),)
