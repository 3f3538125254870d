"""What an op of snuc's IR is: the :class:`Op` base class and the registry by dotted name.

An op's fields are its attributes; they are checked when the op is built. ``infer``
checks the operand types and returns the result types. :func:`register` makes an op class
known under its ``NAME``, the op's name in the text IR (:func:`op_class` finds it for the
parser); everything else refers to ops by class. The ops themselves are in
:mod:`snuc.ir.ops`; this module also holds the checks their ``infer`` methods share.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np

from snuc.ir.errors import UNKNOWN, Loc, VerifyError
from snuc.ir.types import TensorType

Attr = int | float | str | bool | tuple

REGISTRY: dict[str, type[Op]] = {}


def register(cls: type[Op]) -> type[Op]:
    """Class decorator: make ``cls`` known under its dotted ``NAME``."""
    if cls.NAME in REGISTRY:
        raise RuntimeError(f"op {cls.NAME} registered twice")
    REGISTRY[cls.NAME] = cls
    return cls


@dataclass(frozen=True)
class Op:
    """Base of all ops. Subclasses are frozen dataclasses whose fields are attributes.

    Class attributes:
        NAME: the dotted name printed in the text IR.
        OPERANDS: (minimum, maximum) number of operands; maximum None = variadic.
        RESULTS: number of results.
        FLOAT_ONLY: operands must be floating point.
        QUIET: attributes the text form prints only when they differ from their default
            (added after the text form was fixed, so that older graphs print as before).
    """

    NAME: ClassVar[str] = ""
    OPERANDS: ClassVar[tuple[int, int | None]] = (1, 1)
    RESULTS: ClassVar[int] = 1
    QUIET: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self.check_attrs()

    def check_attrs(self) -> None:
        """Validate attribute values; raise VerifyError. Default: nothing to check."""

    def attrs(self) -> dict[str, Attr]:
        """Attributes by name, in declaration order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def infer(
        self,
        types: tuple[TensorType, ...],
        consts: tuple[np.ndarray | None, ...],
        loc: Loc = UNKNOWN,
    ) -> tuple[TensorType, ...]:
        """Check operand types (and constant operands where needed); return result types."""
        raise NotImplementedError

    def check_arity(self, n: int, loc: Loc) -> None:
        lo, hi = self.OPERANDS
        if n < lo or (hi is not None and n > hi):
            want = f"{lo}" if lo == hi else f"{lo}..{'any' if hi is None else hi}"
            raise VerifyError(f"{loc.prefix()}{self.NAME} takes {want} operands, got {n}")

    def fail(self, loc: Loc, message: str) -> VerifyError:
        return VerifyError(f"{loc.prefix()}{self.NAME}: {message}")


def _require(cond: bool, op: Op, loc: Loc, message: str) -> None:
    if not cond:
        raise op.fail(loc, message)


def _float(op: Op, t: TensorType, loc: Loc) -> None:
    _require(t.dtype in ("f32", "f64"), op, loc, f"expected a float operand, got {t}")


def _axis(op: Op, axis: int, rank: int, loc: Loc) -> int:
    _require(-rank <= axis < rank, op, loc, f"axis {axis} out of range for rank {rank}")
    return axis % rank


def _pair(v: tuple[int, ...], n: int, name: str, opname: str, minimum: int) -> None:
    if len(v) != n or any(not isinstance(i, int) or i < minimum for i in v):
        raise VerifyError(f"{opname}: {name} must be {n} ints >= {minimum}, got {v}")


def op_class(name: str, loc: Loc = UNKNOWN) -> type[Op]:
    """The class registered under ``name``; a VerifyError naming the known ops otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise VerifyError(f"{loc.prefix()}unknown op {name!r}") from None
