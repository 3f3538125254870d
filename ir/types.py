"""Tensor types of the IR: a dtype and a shape whose dimensions are ints or the batch.

Every value in a step graph is one timestep's tensor. The batch dimension is symbolic
(``"B"``) so a compiled model runs at any batch size; every other dimension is static.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from snuc.ir.errors import UNKNOWN, Loc, VerifyError

BATCH = "B"
Dim = int | str

DTYPES: dict[str, np.dtype] = {
    "f32": np.dtype(np.float32),
    "f64": np.dtype(np.float64),
    "i64": np.dtype(np.int64),
    "i32": np.dtype(np.int32),
    "bool": np.dtype(np.bool_),
}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def dtype_name(dtype: np.dtype | type) -> str:
    """The IR name (``f32``, ``i64``, ...) of a NumPy dtype; raises for unsupported ones."""
    dt = np.dtype(dtype)
    try:
        return _DTYPE_NAMES[dt]
    except KeyError:
        raise VerifyError(
            f"dtype {dt} is not supported; expected one of {', '.join(DTYPES)}"
        ) from None


@dataclass(frozen=True)
class TensorType:
    """The type of one value: ``f32[B, 150]``.

    Attributes:
        dtype: one of :data:`DTYPES`' keys.
        shape: dimensions; each a non-negative int or :data:`BATCH`.
    """

    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise VerifyError(f"unknown dtype {self.dtype!r}; expected one of {', '.join(DTYPES)}")
        for d in self.shape:
            if isinstance(d, bool) or not (isinstance(d, int) and d >= 0 or d == BATCH):
                raise VerifyError(f"bad dimension {d!r} in shape {self.shape}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def np_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]

    @property
    def has_batch(self) -> bool:
        return BATCH in self.shape

    def concrete(self, batch: int) -> tuple[int, ...]:
        """The shape with the batch dimension set to ``batch``."""
        return tuple(batch if d == BATCH else d for d in self.shape)

    def static_size(self) -> int:
        """Number of elements per batch entry (product of the static dimensions)."""
        return int(np.prod([d for d in self.shape if d != BATCH], dtype=np.int64))

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"

    @staticmethod
    def of(array: np.ndarray) -> TensorType:
        return TensorType(dtype_name(array.dtype), tuple(int(d) for d in array.shape))


def broadcast_shapes(shapes: list[tuple[Dim, ...]], loc: Loc = UNKNOWN) -> tuple[Dim, ...]:
    """NumPy/ONNX multidirectional broadcasting over symbolic shapes.

    A batch dimension broadcasts with 1 and with itself; against any other size it is an
    error, since the result would depend on the batch size.
    """
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for axis in range(rank):
        dims = [s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0]
        non_one = {d for d in dims if d != 1}
        if not non_one:
            out.append(1)
        elif len(non_one) == 1:
            out.append(non_one.pop())
        else:
            raise VerifyError(
                f"{loc.prefix()}shapes {', '.join(map(_fmt_shape, shapes))} do not broadcast"
            )
    return tuple(out)


def _fmt_shape(shape: tuple[Dim, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def promote(dtypes: list[str], loc: Loc = UNKNOWN) -> str:
    """The common dtype of a binary arithmetic op's operands; they must agree."""
    kinds = set(dtypes)
    if len(kinds) != 1:
        raise VerifyError(f"{loc.prefix()}operand dtypes {sorted(kinds)} differ")
    return dtypes[0]
