"""The operations of snuc's IR: one frozen class per op, registered by dotted name.

Namespaces:

* ``snu.*``  -- the neuron models lifted from the graph (SPEC §1.1): each defined whole, with
  its kernels' data, ranges and cost, in :mod:`snuc.ir.neurons` (``SNULayer`` re-exported).
* ``xbar.*`` -- matrix work whose weight is a constant: it is mapped onto PCM crossbars.
* ``dig.*``  -- everything else: it runs in the chip's digital units.

What an op is (the :class:`Op` base, the registry by name) is :mod:`snuc.ir.op_base`;
this module re-exports it. What an op *means* is registered against its class: what it
computes by the reference interpreter (``@semantics`` in ``snuc.runtime.semantics``; the
equation is also in each docstring), its value ranges (``RANGE_RULES`` in
``snuc.ir.crossbar``), its chip cost (``DIGITAL_OPS`` in ``snuc.ir.machine``) and its fast
kernel (``@kernel`` in ``snuc.runtime.plan_kernels``); tests/test_op_registry.py names any
op that lacks one. An element-wise op is defined in one place instead: one class in
:mod:`snuc.ir.elementwise` carries its meaning, ranges, cost and ONNX spelling, and those
tables register it from there (its classes are ``snuc.ir.elementwise.Max`` and so on).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from snuc.ir import elementwise as elementwise  # registers the element-wise ops
from snuc.ir.elementwise import Add as Add
from snuc.ir.elementwise import Binary as _Binary
from snuc.ir.elementwise import FloatUnary as _FloatUnary
from snuc.ir.elementwise import Greater as Greater
from snuc.ir.elementwise import GreaterOrEqual as GreaterOrEqual
from snuc.ir.elementwise import Less as Less
from snuc.ir.elementwise import Mul as Mul
from snuc.ir.elementwise import Neg as Neg
from snuc.ir.elementwise import Sub as Sub
from snuc.ir.elementwise import Tanh as Tanh
from snuc.ir.elementwise import Unary as _Unary
from snuc.ir.errors import UNKNOWN, Loc, VerifyError
from snuc.ir.neurons import SNULayer as SNULayer  # re-exported: defined with the family
from snuc.ir.op_base import REGISTRY as REGISTRY  # re-exported: ops by name
from snuc.ir.op_base import Attr as Attr
from snuc.ir.op_base import Op, _axis, _float, _pair, _require, register
from snuc.ir.op_base import op_class as op_class
from snuc.ir.types import BATCH, DTYPES, Dim, TensorType, broadcast_shapes, promote

# --------------------------------------------------------------------------- element-wise


@register
@dataclass(frozen=True)
class Div(_Binary):
    """``z = x / y`` with NumPy broadcasting (integer operands: truncating, as ONNX)."""

    NAME: ClassVar = "dig.div"


@register
@dataclass(frozen=True)
class Relu(_Unary):
    """``y = max(x, 0)``."""

    NAME: ClassVar = "dig.relu"


@register
@dataclass(frozen=True)
class LeakyRelu(_FloatUnary):
    """``y = x if x >= 0 else alpha * x``."""

    NAME: ClassVar = "dig.leaky_relu"
    alpha: float = 0.01

    def check_attrs(self) -> None:
        if not math.isfinite(self.alpha):
            raise VerifyError(f"{self.NAME}: alpha must be finite, got {self.alpha}")


@register
@dataclass(frozen=True)
class Sigmoid(_FloatUnary):
    """``y = 1 / (1 + exp(-x))``."""

    NAME: ClassVar = "dig.sigmoid"


@register
@dataclass(frozen=True)
class Step(_FloatUnary):
    """``y = 1 where x > 0 else 0`` (Heaviside, same dtype as x): the SNU's spike."""

    NAME: ClassVar = "dig.step"


@register
@dataclass(frozen=True)
class Cast(Op):
    """``y = x`` converted to dtype ``to`` (bool to number gives 0/1; float to int truncates)."""

    NAME: ClassVar = "dig.cast"
    to: str = "f32"

    def check_attrs(self) -> None:
        if self.to not in DTYPES:
            raise VerifyError(f"{self.NAME}: unknown dtype {self.to!r}")

    def infer(self, types, consts, loc=UNKNOWN):
        return (TensorType(self.to, types[0].shape),)


@register
@dataclass(frozen=True)
class Where(Op):
    """``z = x where cond else y`` with broadcasting; ``cond`` is bool."""

    NAME: ClassVar = "dig.where"
    OPERANDS: ClassVar = (3, 3)

    def infer(self, types, consts, loc=UNKNOWN):
        cond, x, y = types
        _require(cond.dtype == "bool", self, loc, f"condition must be bool, got {cond}")
        dtype = promote([x.dtype, y.dtype], loc)
        return (TensorType(dtype, broadcast_shapes([t.shape for t in types], loc)),)


# --------------------------------------------------------------------------- matrix work


def _matmul_shape(op: Op, x: TensorType, w: TensorType, loc: Loc) -> tuple[Dim, ...]:
    _require(x.rank >= 1 and w.rank >= 1, op, loc, "operands must have rank >= 1")
    promote([x.dtype, w.dtype], loc)
    if w.rank == 1:
        _require(x.shape[-1] == w.shape[0], op, loc, f"cannot multiply {x} by {w}")
        return x.shape[:-1]
    if x.rank == 1:
        _require(x.shape[0] == w.shape[-2], op, loc, f"cannot multiply {x} by {w}")
        return w.shape[:-2] + w.shape[-1:]
    _require(x.shape[-1] == w.shape[-2], op, loc, f"cannot multiply {x} by {w}")
    batch = broadcast_shapes([x.shape[:-2], w.shape[:-2]], loc)
    return batch + (x.shape[-2], w.shape[-1])


@register
@dataclass(frozen=True)
class MatMul(Op):
    """``z = x @ y`` (NumPy matmul semantics) where neither operand is a constant weight."""

    NAME: ClassVar = "dig.matmul"
    OPERANDS: ClassVar = (2, 2)

    def infer(self, types, consts, loc=UNKNOWN):
        return (TensorType(types[0].dtype, _matmul_shape(self, types[0], types[1], loc)),)


@register
@dataclass(frozen=True)
class Dense(Op):
    """``y = x @ W`` with ``W[K, N]`` a constant: one layer's crossbar work.

    ``x`` is ``[..., K]``; the product runs as MVMs on the crossbars that hold ``W``.
    """

    NAME: ClassVar = "xbar.dense"
    OPERANDS: ClassVar = (2, 2)

    def infer(self, types, consts, loc=UNKNOWN):
        x, w = types
        _require(consts[1] is not None, self, loc, "weight must be a constant")
        _require(w.rank == 2, self, loc, f"weight must be a matrix, got {w}")
        _float(self, x, loc)
        _require(
            x.rank >= 1 and x.shape[-1] == w.shape[0], self, loc, f"cannot multiply {x} by {w}"
        )
        return (TensorType(promote([x.dtype, w.dtype], loc), x.shape[:-1] + (w.shape[1],)),)


@dataclass(frozen=True)
class _Conv2d(Op):
    """Shared attribute checks and shape rule of 2-D convolution."""

    OPERANDS: ClassVar = (2, 2)
    strides: tuple[int, ...] = (1, 1)
    pads: tuple[int, ...] = (0, 0, 0, 0)
    dilations: tuple[int, ...] = (1, 1)
    group: int = 1

    def check_attrs(self) -> None:
        _pair(self.strides, 2, "strides", self.NAME, 1)
        _pair(self.pads, 4, "pads", self.NAME, 0)
        _pair(self.dilations, 2, "dilations", self.NAME, 1)
        if self.group < 1:
            raise VerifyError(f"{self.NAME}: group must be >= 1, got {self.group}")

    def infer(self, types, consts, loc=UNKNOWN):
        x, w = types
        _require(
            x.rank == 4 and w.rank == 4,
            self,
            loc,
            f"expected NCHW input and MCkk weight, got {x}, {w}",
        )
        _float(self, x, loc)
        m, c_per_group, kh, kw = w.shape
        _require(
            x.shape[1] == c_per_group * self.group,
            self,
            loc,
            f"input has {x.shape[1]} channels, weight expects {c_per_group} x {self.group} groups",
        )
        _require(
            isinstance(m, int) and m % self.group == 0,
            self,
            loc,
            "output channels not divisible by group",
        )
        spatial = []
        for i, k in enumerate((kh, kw)):
            size = x.shape[2 + i]
            _require(isinstance(size, int), self, loc, "spatial dimensions must be static")
            span = self.dilations[i] * (k - 1) + 1
            out = (size + self.pads[i] + self.pads[i + 2] - span) // self.strides[i] + 1
            _require(out >= 1, self, loc, f"kernel larger than padded input {x}")
            spatial.append(out)
        return (TensorType(promote([x.dtype, w.dtype], loc), (x.shape[0], m, *spatial)),)


@register
@dataclass(frozen=True)
class Conv(_Conv2d):
    """2-D convolution ``y = conv(x[N,C,H,W], W[M,C/group,kh,kw])`` with constant ``W``.

    ``y[n,m,i,j] = sum_{c,u,v} x_pad[n, g*C/group + c, i*sh + u*dh, j*sw + v*dw] W[m,c,u,v]``
    with ``g = m // (M/group)``. Lowered to ``xbar.dense`` over patches for the crossbars.
    """

    NAME: ClassVar = "xbar.conv"

    def infer(self, types, consts, loc=UNKNOWN):
        _require(consts[1] is not None, self, loc, "weight must be a constant")
        return super().infer(types, consts, loc)


@register
@dataclass(frozen=True)
class DigitalConv(_Conv2d):
    """Like ``xbar.conv`` with a computed (non-constant) weight; runs digitally."""

    NAME: ClassVar = "dig.conv"


@register
@dataclass(frozen=True)
class CrossbarMVM(Op):
    """One tile of a crossbar-mapped matrix: ``y = x[..., r0:r1] @ W[r0:r1, c0:c1]``.

    Made by the ``tile`` pass from ``xbar.dense``; row-split tiles' partial sums are added
    by ``dig.add`` and column blocks joined by ``dig.concat``. ``W`` is the whole constant
    weight matrix; the tile is its window ``rows`` x ``cols``. In ``quantized`` and ``pcm``
    modes the window is programmed as differential conductance pairs with per-column
    digital scales (``snuc.ir.crossbar``); inputs pass a DAC over ``dac = (lo, hi)`` and
    column sums an ADC of full scale ``adc_range`` (0 = not yet calibrated).

    Attributes:
        layer: name of the ``xbar.dense`` value this tile belongs to (for reports).
        tile: tile number, unique in the graph; keys the tile's random streams.
        rows, cols: ``(start, stop)`` of the weight window.
        crossbar: global crossbar index (chip * cores + core); -1 before placement.
        xbar_row, xbar_col: the tile's first physical device row and column on it.
        dac: input range ``(lo, hi)`` of the DAC.
        adc_range: ADC full scale in µS·(input unit); 0 before quantisation.
        copies: crossbars of the tile's copies 1 .. K-1 (``place --duplicate K``, docs/isa.md
            "Tile duplication"); copy 0 is the tile itself on ``crossbar``. Every copy sits
            at the same ``xbar_row``, ``xbar_col`` on its crossbar, and timestep t is
            served by copy ``t mod K``. Empty: no copies.
        copy_tiles: the copies' own tile numbers (unique in the graph), which key their
            programming-noise and drift streams: each copy is a separately programmed
            array. Read noise stays one block per tile, keyed by ``tile``.
    """

    NAME: ClassVar = "xbar.mvm"
    OPERANDS: ClassVar = (2, 2)
    QUIET: ClassVar = ("copies", "copy_tiles")
    layer: str = ""
    tile: int = 0
    rows: tuple[int, ...] = (0, 0)
    cols: tuple[int, ...] = (0, 0)
    crossbar: int = -1
    xbar_row: int = -1
    xbar_col: int = -1
    dac: tuple[float, ...] = (-1.0, 1.0)
    adc_range: float = 0.0
    copies: tuple[int, ...] = ()
    copy_tiles: tuple[int, ...] = ()

    @property
    def duplicates(self) -> int:
        """K: how many copies serve the tile's timesteps (1 without duplication)."""
        return 1 + len(self.copies)

    def copy_crossbar(self, j: int) -> int:
        """The crossbar of copy ``j`` (0: ``crossbar``)."""
        return self.crossbar if j == 0 else self.copies[j - 1]

    def copy_tile(self, j: int) -> int:
        """The tile number of copy ``j`` (0: ``tile``)."""
        return self.tile if j == 0 else self.copy_tiles[j - 1]

    def check_attrs(self) -> None:
        for name in ("rows", "cols"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not 0 <= lo_hi[0] < lo_hi[1]:
                raise VerifyError(f"{self.NAME}: {name} must be (start, stop) with start < stop")
        if self.tile < 0:
            raise VerifyError(f"{self.NAME}: tile must be >= 0, got {self.tile}")
        if len(self.dac) != 2 or not self.dac[0] < self.dac[1]:
            raise VerifyError(f"{self.NAME}: dac must be (lo, hi) with lo < hi, got {self.dac}")
        if not (math.isfinite(self.adc_range) and self.adc_range >= 0):
            raise VerifyError(f"{self.NAME}: adc_range must be finite and >= 0")
        self._check_copies()

    def _check_copies(self) -> None:
        if len(self.copies) != len(self.copy_tiles):
            raise VerifyError(
                f"{self.NAME}: {len(self.copies)} copies but {len(self.copy_tiles)} copy_tiles; "
                "each copy needs a crossbar and a tile number"
            )
        if not self.copies:
            return
        if self.crossbar < 0 or min(self.copies) < 0:
            raise VerifyError(
                f"{self.NAME}: copies need placed crossbars (>= 0), got {list(self.copies)}"
            )
        crossbars = (self.crossbar, *self.copies)
        if len(set(crossbars)) != len(crossbars):
            raise VerifyError(
                f"{self.NAME}: tile {self.tile} and its copies must be on different crossbars, "
                f"got {list(crossbars)}"
            )
        numbers = (self.tile, *self.copy_tiles)
        if min(numbers) < 0 or len(set(numbers)) != len(numbers):
            raise VerifyError(
                f"{self.NAME}: copy_tiles must be distinct tile numbers >= 0 other than "
                f"{self.tile}, got {list(self.copy_tiles)}"
            )

    def infer(self, types, consts, loc=UNKNOWN):
        x, w = types
        _require(consts[1] is not None, self, loc, "weight must be a constant")
        _require(w.rank == 2, self, loc, f"weight must be a matrix, got {w}")
        _float(self, x, loc)
        _require(
            x.rank >= 1 and x.shape[-1] == w.shape[0], self, loc, f"cannot multiply {x} by {w}"
        )
        _require(
            self.rows[1] <= w.shape[0] and self.cols[1] <= w.shape[1],
            self,
            loc,
            f"window rows {self.rows} cols {self.cols} outside weight {w}",
        )
        n = self.cols[1] - self.cols[0]
        return (TensorType(promote([x.dtype, w.dtype], loc), x.shape[:-1] + (n,)),)


@register
@dataclass(frozen=True)
class Im2Col(Op):
    """Patches of a 2-D NCHW input, for a convolution as a matrix product.

    ``y[n, i, j, (c*kh + u)*kw + v] = x_pad[n, c, i*sh + u*dh, j*sw + v*dw]``, so
    ``conv(x, W) = transpose(im2col(x) @ W.reshape(M, -1).T, (0, 3, 1, 2))``.
    """

    NAME: ClassVar = "dig.im2col"
    kernel: tuple[int, ...] = (1, 1)
    strides: tuple[int, ...] = (1, 1)
    pads: tuple[int, ...] = (0, 0, 0, 0)
    dilations: tuple[int, ...] = (1, 1)

    def check_attrs(self) -> None:
        _pair(self.kernel, 2, "kernel", self.NAME, 1)
        _pair(self.strides, 2, "strides", self.NAME, 1)
        _pair(self.pads, 4, "pads", self.NAME, 0)
        _pair(self.dilations, 2, "dilations", self.NAME, 1)

    def infer(self, types, consts, loc=UNKNOWN):
        (x,) = types
        _require(x.rank == 4, self, loc, f"expected an NCHW input, got {x}")
        spatial = []
        for i in range(2):
            size = x.shape[2 + i]
            _require(isinstance(size, int), self, loc, "spatial dimensions must be static")
            span = self.dilations[i] * (self.kernel[i] - 1) + 1
            out = (size + self.pads[i] + self.pads[i + 2] - span) // self.strides[i] + 1
            _require(out >= 1, self, loc, f"kernel larger than padded input {x}")
            spatial.append(out)
        c = x.shape[1]
        _require(isinstance(c, int), self, loc, "channels must be static")
        k = c * self.kernel[0] * self.kernel[1]
        return (TensorType(x.dtype, (x.shape[0], *spatial, k)),)


# --------------------------------------------------------------------------- shape ops


def _reshape_ok(src: tuple[Dim, ...], dst: tuple[Dim, ...]) -> bool:
    if src.count(BATCH) > 1 or src.count(BATCH) != dst.count(BATCH):
        return False
    static = [d for d in src if d != BATCH]
    dst_static = [d for d in dst if d != BATCH]
    return math.prod(static) == math.prod(dst_static)


@register
@dataclass(frozen=True)
class Reshape(Op):
    """``y = reshape(x, shape)`` in row-major order; ``shape`` is fully resolved.

    Flatten, Squeeze and Unsqueeze are reshapes. The batch dimension must stay the
    outermost dimension that carries it, so the reshape is independent of the batch size.
    """

    NAME: ClassVar = "dig.reshape"
    shape: tuple[Dim, ...] = ()

    def check_attrs(self) -> None:
        TensorType("f32", self.shape)

    def infer(self, types, consts, loc=UNKNOWN):
        (x,) = types
        _require(
            _reshape_ok(x.shape, self.shape), self, loc, f"cannot reshape {x} to {list(self.shape)}"
        )
        if BATCH in x.shape:
            before_src = math.prod(d for d in x.shape[: x.shape.index(BATCH)])
            before_dst = math.prod(d for d in self.shape[: self.shape.index(BATCH)])
            _require(
                before_src == before_dst,
                self,
                loc,
                f"reshape {x} to {list(self.shape)} would mix the batch with other dimensions",
            )
        return (TensorType(x.dtype, self.shape),)


@register
@dataclass(frozen=True)
class Transpose(Op):
    """``y = transpose(x, perm)``: ``y.shape[i] = x.shape[perm[i]]``."""

    NAME: ClassVar = "dig.transpose"
    perm: tuple[int, ...] = ()

    def check_attrs(self) -> None:
        if sorted(self.perm) != list(range(len(self.perm))):
            raise VerifyError(f"{self.NAME}: perm {self.perm} is not a permutation")

    def infer(self, types, consts, loc=UNKNOWN):
        (x,) = types
        _require(len(self.perm) == x.rank, self, loc, f"perm {self.perm} does not match {x}")
        return (TensorType(x.dtype, tuple(x.shape[p] for p in self.perm)),)


@register
@dataclass(frozen=True)
class Concat(Op):
    """``y = concatenate(xs, axis)``."""

    NAME: ClassVar = "dig.concat"
    OPERANDS: ClassVar = (1, None)
    axis: int = 0

    def infer(self, types, consts, loc=UNKNOWN):
        rank = types[0].rank
        axis = _axis(self, self.axis, rank, loc)
        dtype = promote([t.dtype for t in types], loc)
        for t in types:
            _require(t.rank == rank, self, loc, "operands differ in rank")
            for i in range(rank):
                _require(
                    i == axis or t.shape[i] == types[0].shape[i],
                    self,
                    loc,
                    f"shapes {', '.join(str(t) for t in types)} differ off axis {axis}",
                )
        sizes = [t.shape[axis] for t in types]
        _require(
            all(isinstance(s, int) for s in sizes), self, loc, "cannot concatenate along the batch"
        )
        shape = list(types[0].shape)
        shape[axis] = sum(sizes)
        return (TensorType(dtype, tuple(shape)),)


@register
@dataclass(frozen=True)
class Gather(Op):
    """``y = take(table, indices, axis)``; with a constant table, an embedding lookup."""

    NAME: ClassVar = "dig.gather"
    OPERANDS: ClassVar = (2, 2)
    axis: int = 0

    def infer(self, types, consts, loc=UNKNOWN):
        table, idx = types
        _require(idx.dtype in ("i64", "i32"), self, loc, f"indices must be integers, got {idx}")
        axis = _axis(self, self.axis, table.rank, loc)
        _require(table.shape[axis] != BATCH, self, loc, "cannot gather along the batch")
        shape = table.shape[:axis] + idx.shape + table.shape[axis + 1 :]
        return (TensorType(table.dtype, shape),)


# --------------------------------------------------------------------------- reductions


@dataclass(frozen=True)
class _Reduce(Op):
    axes: tuple[int, ...] = ()
    keepdims: bool = True

    def infer(self, types, consts, loc=UNKNOWN):
        (x,) = types
        axes = {_axis(self, a, x.rank, loc) for a in self.axes} if self.axes else set(range(x.rank))
        _require(
            all(x.shape[a] != BATCH for a in axes),
            self,
            loc,
            "cannot reduce over the batch dimension (each sequence is independent)",
        )
        if self.keepdims:
            shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        else:
            shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
        return (TensorType(x.dtype, shape),)


@register
@dataclass(frozen=True)
class ReduceSum(_Reduce):
    """``y = sum(x, axes, keepdims)``; empty ``axes`` reduces all axes."""

    NAME: ClassVar = "dig.reduce_sum"


@register
@dataclass(frozen=True)
class ReduceMean(_Reduce):
    """``y = mean(x, axes, keepdims)``; empty ``axes`` reduces all axes."""

    NAME: ClassVar = "dig.reduce_mean"


@dataclass(frozen=True)
class _SoftmaxLike(Op):
    axis: int = -1

    def infer(self, types, consts, loc=UNKNOWN):
        (x,) = types
        _float(self, x, loc)
        axis = _axis(self, self.axis, x.rank, loc)
        _require(x.shape[axis] != BATCH, self, loc, "cannot normalise over the batch")
        return (x,)


@register
@dataclass(frozen=True)
class Softmax(_SoftmaxLike):
    """``y = exp(x - max) / sum(exp(x - max))`` along ``axis``."""

    NAME: ClassVar = "dig.softmax"


@register
@dataclass(frozen=True)
class LogSoftmax(_SoftmaxLike):
    """``y = x - max - log(sum(exp(x - max)))`` along ``axis``."""

    NAME: ClassVar = "dig.log_softmax"


# --------------------------------------------------------------------------- pooling


@dataclass(frozen=True)
class _Pool2d(Op):
    kernel: tuple[int, ...] = (2, 2)
    strides: tuple[int, ...] = (1, 1)
    pads: tuple[int, ...] = (0, 0, 0, 0)

    def check_attrs(self) -> None:
        _pair(self.kernel, 2, "kernel", self.NAME, 1)
        _pair(self.strides, 2, "strides", self.NAME, 1)
        _pair(self.pads, 4, "pads", self.NAME, 0)
        if any(p >= self.kernel[i % 2] for i, p in enumerate(self.pads)):
            # A window of padding alone has no value (max of nothing, mean of nothing).
            raise VerifyError(f"{self.NAME}: pads {self.pads} must be smaller than the kernel")

    def infer(self, types, consts, loc=UNKNOWN):
        (x,) = types
        _require(x.rank == 4, self, loc, f"expected an NCHW input, got {x}")
        _float(self, x, loc)
        spatial = []
        for i in range(2):
            size = x.shape[2 + i]
            _require(isinstance(size, int), self, loc, "spatial dimensions must be static")
            out = (size + self.pads[i] + self.pads[i + 2] - self.kernel[i]) // self.strides[i] + 1
            _require(out >= 1, self, loc, f"window larger than padded input {x}")
            spatial.append(out)
        return (TensorType(x.dtype, (x.shape[0], x.shape[1], *spatial)),)


@register
@dataclass(frozen=True)
class MaxPool(_Pool2d):
    """``y[n,c,i,j] = max over the window`` (padding counts as -inf)."""

    NAME: ClassVar = "dig.maxpool"


@register
@dataclass(frozen=True)
class AvgPool(_Pool2d):
    """``y[n,c,i,j] = mean over the window``; padding is counted only if ``count_include_pad``."""

    NAME: ClassVar = "dig.avgpool"
    count_include_pad: bool = False
