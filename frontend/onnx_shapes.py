"""Symbolic shape arithmetic for the ONNX importer.

Exporters compute shapes at run time (``Shape -> Gather -> Concat -> Reshape``). The
importer evaluates those computations once, at import, over dimensions that may be
symbolic: the batch ``B`` of every step value and, in the outer graph of a sequence-form
model, the sequence length ``T``. A symbolic dimension is a monomial ``c * T**t * B**b``
(:class:`SymDim`), which is closed under the products and exact quotients that shape code
uses (``B * 4``, ``(B * 16) / 16``); anything else (``B + 1``, ``B == 2``) cannot be
decided at import and raises :class:`SymbolicError`.

Shape vectors are NumPy object arrays whose elements are Python ints or :class:`SymDim`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from snuc.ir.types import BATCH, Dim


class SymbolicError(Exception):
    """A shape computation that cannot be decided without knowing ``B`` or ``T``.

    The importer turns it into a :class:`~snuc.ir.errors.SnucError` naming the value.
    """


@dataclass(frozen=True)
class SymDim:
    """The dimension ``coef * T**t * B**b`` (never a plain int: see :func:`monomial`)."""

    coef: int
    t: int = 0
    b: int = 0

    def __str__(self) -> str:
        parts = [str(self.coef)] if self.coef != 1 else []
        parts += ["T"] * self.t + ["B"] * self.b
        return "*".join(parts)

    def __mul__(self, other: object) -> int | SymDim:
        if isinstance(other, SymDim):
            return monomial(self.coef * other.coef, self.t + other.t, self.b + other.b)
        if isinstance(other, int | np.integer):
            return monomial(self.coef * int(other), self.t, self.b)
        return NotImplemented

    __rmul__ = __mul__

    def __add__(self, other: object) -> int | SymDim:
        if isinstance(other, int | np.integer) and other == 0:
            return self
        if isinstance(other, SymDim) and (other.t, other.b) == (self.t, self.b):
            return monomial(self.coef + other.coef, self.t, self.b)
        if isinstance(other, int | np.integer | SymDim):
            raise SymbolicError(f"cannot add {other} to {self}")
        return NotImplemented

    __radd__ = __add__

    def __neg__(self) -> SymDim:
        return SymDim(-self.coef, self.t, self.b)

    def __sub__(self, other: object) -> int | SymDim:
        if isinstance(other, int | np.integer | SymDim):
            return self + (-other)
        return NotImplemented

    def __rsub__(self, other: object) -> int | SymDim:
        if isinstance(other, int | np.integer):
            return (-self) + other
        return NotImplemented


T_DIM = SymDim(1, t=1)
B_DIM = SymDim(1, b=1)


def monomial(coef: int, t: int, b: int) -> int | SymDim:
    """``coef * T**t * B**b``, as a plain int when it does not depend on T or B."""
    if coef == 0 or (t == 0 and b == 0):
        return coef
    return SymDim(coef, t, b)


def is_symbolic(d: object) -> bool:
    return isinstance(d, SymDim)


def div(x: int | SymDim, y: int | SymDim) -> int | SymDim:
    """ONNX integer division (truncating toward zero), exact when a symbol is involved."""
    if not is_symbolic(x) and not is_symbolic(y):
        if y == 0:
            raise SymbolicError("integer division by zero")
        q = abs(int(x)) // abs(int(y))
        return q if (x >= 0) == (y >= 0) else -q
    xs = x if is_symbolic(x) else SymDim(int(x))
    ys = y if is_symbolic(y) else SymDim(int(y))
    if ys.coef == 0 or xs.t < ys.t or xs.b < ys.b or xs.coef % ys.coef:
        raise SymbolicError(f"cannot divide {x} by {y} exactly")
    return monomial(xs.coef // ys.coef, xs.t - ys.t, xs.b - ys.b)


def equal(x: int | SymDim, y: int | SymDim) -> bool:
    """``x == y`` where it is the same for every ``T, B >= 1``; SymbolicError otherwise."""
    if not is_symbolic(x) and not is_symbolic(y):
        return int(x) == int(y)
    if is_symbolic(x) and is_symbolic(y):
        if (x.t, x.b) == (y.t, y.b):
            return x.coef == y.coef
    else:
        sym, k = (x, int(y)) if is_symbolic(x) else (y, int(x))
        # c * T**t * B**b takes every value of c's sign; it never equals 0 or the other sign.
        if k == 0 or (k > 0) != (sym.coef > 0):
            return False
    raise SymbolicError(f"whether {x} equals {y} depends on the batch size or sequence length")


def product(dims: Sequence[int | SymDim]) -> int | SymDim:
    result: int | SymDim = 1
    for d in dims:
        result = result * d
    return result


def as_object_array(array: np.ndarray) -> np.ndarray:
    """An object array of Python ints (and SymDims) with the same shape."""
    out = np.empty(array.shape, dtype=object)
    out.flat[:] = [d if is_symbolic(d) else int(d) for d in array.flat]
    return out


def has_symbols(array: np.ndarray) -> bool:
    return array.dtype == object and any(is_symbolic(d) for d in array.flat)


def elementwise(fn: Callable[..., object], *arrays: np.ndarray) -> np.ndarray:
    """Apply ``fn`` to every tuple of broadcast elements of object arrays."""
    # frompyfunc returns a bare element, not a 0-d array, for 0-d operands.
    result = np.frompyfunc(fn, len(arrays), 1)(*arrays)
    shape = np.broadcast_shapes(*(a.shape for a in arrays))
    return np.asarray(result, dtype=object).reshape(shape)


ARITHMETIC: dict[str, Callable[[object, object], object]] = {
    "Add": operator.add,
    "Sub": operator.sub,
    "Mul": operator.mul,
    "Div": div,
}


def to_ir_dim(d: int | SymDim) -> Dim:
    """The IR dimension for ``d``: an int, or ``B`` for exactly the batch."""
    if d == B_DIM:
        return BATCH
    if is_symbolic(d):
        raise SymbolicError(f"dimension {d} is neither static nor exactly the batch")
    if d < 0:
        raise SymbolicError(f"dimension {d} is negative")
    return int(d)


def from_ir_dim(d: Dim) -> int | SymDim:
    return B_DIM if d == BATCH else int(d)


def format_shape(dims: Sequence[int | SymDim]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def broadcast(a: Sequence[int | SymDim], b: Sequence[int | SymDim]) -> tuple[int | SymDim, ...]:
    """Multidirectional (NumPy) broadcasting of two symbolic shapes."""
    rank = max(len(a), len(b))
    pa = (1,) * (rank - len(a)) + tuple(a)
    pb = (1,) * (rank - len(b)) + tuple(b)
    out = []
    for x, y in zip(pa, pb, strict=True):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            raise SymbolicError(f"shapes {format_shape(a)} and {format_shape(b)} do not broadcast")
    return tuple(out)


def resolve_reshape(
    source: Sequence[int | SymDim], target: Sequence[int | SymDim], allowzero: bool
) -> tuple[int | SymDim, ...]:
    """ONNX Reshape's output shape: ``0`` copies the input dimension, ``-1`` is inferred."""
    dims = list(target)
    if sum(1 for d in dims if not is_symbolic(d) and d == -1) > 1:
        raise SymbolicError(f"target shape {format_shape(target)} has more than one -1")
    for i, d in enumerate(dims):
        if not is_symbolic(d) and d == 0 and not allowzero:
            if i >= len(source):
                raise SymbolicError(
                    f"target shape {format_shape(target)} copies a missing axis {i}"
                )
            dims[i] = source[i]
    if any(not is_symbolic(d) and d < -1 for d in dims):
        raise SymbolicError(f"target shape {format_shape(target)} has a negative dimension")
    if -1 in [d for d in dims if not is_symbolic(d)]:
        k = next(i for i, d in enumerate(dims) if not is_symbolic(d) and d == -1)
        known = product([d for i, d in enumerate(dims) if i != k])
        dims[k] = div(product(source), known)
    if not equal(product(dims), product(source)):
        raise SymbolicError(
            f"cannot reshape {format_shape(source)} to {format_shape(target)}: sizes differ"
        )
    return tuple(dims)
