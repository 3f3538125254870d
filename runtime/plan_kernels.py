"""The fast kernels of every IR op, shared by the NumPy backend and the simulator.

Each node becomes a *kernel*: a closure ``kernel(slots)`` that reads its operands from a
list of arrays (``slots``, indexed by numbers fixed when the kernel is made) and writes its
results into preallocated arrays, so running it allocates nothing. The same kernels serve
the NumPy backend's time loops (slots hold one step, ``[B, ...]``), its work done for a
block of steps at once (slots hold ``[n * B, ...]``, time folded into the batch) and the
simulator's vector instructions (one timestep of one unit); the program around them
points the slots at the right arrays. A timestep's arrays are small, so the kernels are
written for a low cost per call: NumPy's functions bound once, outputs passed
positionally, one update per neuron model (:mod:`snuc.runtime.neuron_kernels`, compiled from
each model's update data) and for the sigmoid (:func:`sigmoid_into`). Crossbar tiles read
through :mod:`snuc.runtime.tile_read`.

Every kernel computes exactly what the reference interpreter's semantics compute, with
the same float operations in the same order, so results are bit for bit the same (the
matrix products aside, whose summation order BLAS chooses). Each op class registers its
kernel maker with :func:`kernel` (:data:`FAST_KERNELS`); ops rare in a time loop register
the interpreter's semantics (:func:`generic`), which allocate their results.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from snuc.ir import ops
from snuc.ir.elementwise import ELEMENTWISE
from snuc.ir.graph import Node
from snuc.ir.ops import Op
from snuc.ir.types import BATCH, Dim, TensorType
from snuc.runtime import np_fast
from snuc.runtime.interpreter import evaluate_node
from snuc.runtime.plan_sparse import spike_matmul
from snuc.runtime.plan_tiles import TileChip

Kernel = Callable[[list], None]


class Allocator(Protocol):
    """Where a kernel gets its scratch: slots the program fills once per run."""

    def temp(self, dtype: np.dtype | type, shape: tuple[Dim, ...]) -> int:
        """A scratch array of a value's per-step shape (the program sizes the batch)."""

    def full(self, value: np.ndarray, shape: tuple[Dim, ...]) -> int:
        """An array of a value's per-step shape holding ``value`` broadcast to it: an
        operand of the same shape as the result takes NumPy's fastest path."""

    def workspace(self, chip: TileChip, type_: TensorType) -> int:
        """A tile's float64 workspace for reads of the result type ``type_``."""

    def noise(self, chip: TileChip) -> int:
        """A noisy tile's read-noise stream of the run."""


# Bound once: the kernels of a timestep call them positionally, on small arrays.
_copysign, _exp, _add, _divide = np.copysign, np.exp, np.add, np.divide
_greater, _greater_equal, _maximum = np.greater, np.greater_equal, np.maximum
_absolute, _negative = np.absolute, np.negative


def unary(ufunc: np.ufunc, x: int, out: int) -> Kernel:
    """``out = ufunc(x)``."""

    def kernel(s: list) -> None:
        ufunc(s[x], s[out])

    return kernel


def binary(ufunc: np.ufunc, x: int, y: int, out: int) -> Kernel:
    """``out = ufunc(x, y)`` with broadcasting."""

    def kernel(s: list) -> None:
        ufunc(s[x], s[y], s[out])

    return kernel


def rectify(x: int, zeros: int, out: int) -> Kernel:
    """``out = maximum(x, 0)`` (``maximum`` takes its output by keyword only)."""

    def kernel(s: list) -> None:
        np.maximum(s[x], s[zeros], out=s[out])

    return kernel


def extremum(ufunc: np.ufunc, x: int, y: int, out: int) -> Kernel:
    """``out = ufunc(x, y)`` for ``maximum`` or ``minimum`` (output by keyword only)."""

    def kernel(s: list) -> None:
        ufunc(s[x], s[y], out=s[out])

    return kernel


COPYSIGN_MAX_ELEMENTS = 400
"""``copysign`` makes ``-|x|`` in one call, cheaper than ``absolute`` then ``negative``
on a timestep's few hundred elements (0.24 against 0.35 us at 150 float32), but NumPy
does not vectorise it: from about 400 elements the two calls are cheaper (1.3 against
0.5 us at 2400; 1.2 against 0.27 ms on a block of 720,000)."""


def sigmoid(x: int, out: int, temps: Sequence[int]) -> Kernel:
    """``out = sigmoid(x)`` (:func:`sigmoid_into`); ``temps``: the slots of its scratch."""
    ones, zeros, e, d, num, nonnegative, minus_ones = temps
    into = sigmoid_into

    def kernel(s: list) -> None:
        into(s[x], s[out], s[ones], s[zeros], s[e], s[d], s[num], s[nonnegative], s[minus_ones])

    return kernel


def sigmoid_into(
    x: np.ndarray,
    out: np.ndarray,
    ones: np.ndarray,
    zeros: np.ndarray,
    e: np.ndarray,
    d: np.ndarray,
    num: np.ndarray,
    nonnegative: np.ndarray,
    minus_ones: np.ndarray,
) -> None:
    """The interpreter's ``where(x >= 0, 1 / (1 + e), e / (1 + e))``, ``e = exp(-|x|)``,
    into ``out``, with arrays of ones and zeros, and scratch ``e``, ``d``, ``num`` (x's
    shape and dtype), ``nonnegative`` (bool) and an array of minus ones.

    Without a select (``where``, ``copyto(where=)``, ``heaviside`` branch on every
    element): the numerator ``max(e, x >= 0)`` is 1 where ``x >= 0`` (as ``e <= 1``) and
    ``e`` where ``x < 0``, so each element takes the same one of the two divisions (NaN
    stays NaN). ``-|x|`` is ``copysign(x, -1)`` on small arrays, ``negative(absolute(x))``
    on large ones (:data:`COPYSIGN_MAX_ELEMENTS`): the same bits, NaN included (both keep
    the magnitude and set the sign). Outputs are passed positionally (NumPy parses no
    keywords), ``maximum`` aside.
    """
    if x.size <= COPYSIGN_MAX_ELEMENTS:
        _copysign(x, minus_ones, e)
    else:
        _absolute(x, e)
        _negative(e, e)
    _exp(e, e)
    _add(ones, e, d)
    _greater_equal(x, zeros, nonnegative)
    num[...] = nonnegative
    _maximum(e, num, out=num)
    _divide(num, d, out)


def cast(x: int, out: int) -> Kernel:
    """``out = x`` converted to out's dtype (``astype``'s conversion)."""

    def kernel(s: list) -> None:
        np.copyto(s[out], s[x], casting="unsafe")

    return kernel


def where(cond: int, x: int, y: int, out: int) -> Kernel:
    """``out = x where cond else y``: y everywhere, then x where cond."""

    def kernel(s: list) -> None:
        o = s[out]
        np.copyto(o, s[y])
        np.copyto(o, s[x], where=s[cond])

    return kernel


def concat(xs: Sequence[int], shapes: Sequence[tuple[Dim, ...]], axis: int, out: int) -> Kernel:
    """``out = concatenate(xs, axis)`` of operands of out's dtype: each operand copied into
    its part of ``out`` (``shapes``: theirs, per step)."""
    axis %= len(shapes[0])
    parts = []
    lo = 0
    for x, shape in zip(xs, shapes, strict=True):
        hi = lo + shape[axis]
        parts.append((x, (slice(None),) * axis + (slice(lo, hi),)))
        lo = hi

    def kernel(s: list) -> None:
        o = s[out]
        for x, where in parts:
            o[where] = s[x]

    return kernel


def concat_cast(xs: Sequence[int], axis: int, out: int) -> Kernel:
    """``out = concatenate(xs, axis)`` of operands of several dtypes (cast ``same_kind``)."""
    xs = tuple(xs)

    def kernel(s: list) -> None:
        np.concatenate([s[i] for i in xs], axis=axis, out=s[out])

    return kernel


def matmul(
    x: int, weight: np.ndarray, out: int, rows: slice | None = None, *, spikes: bool = False
) -> Kernel:
    """``out = x[..., rows] @ weight`` (a float crossbar tile, a dense, or a digital matmul
    with a constant right operand); ``rows`` None takes all of x. ``spikes``: x holds only
    0 and 1, so silent inputs and rows leave the product (:func:`plan_sparse.spike_matmul`)."""
    if spikes:
        k, n = weight.shape

        def spiking(s: list) -> None:
            xs = s[x] if rows is None else s[x][..., rows]
            spike_matmul(xs.reshape(-1, k), weight, s[out].reshape(-1, n))

        return spiking
    if rows is None:

        def kernel(s: list) -> None:
            np.matmul(s[x], weight, out=s[out])

        return kernel

    def window(s: list) -> None:
        np.matmul(s[x][..., rows], weight, out=s[out])

    return window


def matmul_values(x: int, y: int, out: int) -> Kernel:
    """``out = x @ y`` of two values (``dig.matmul``)."""

    def kernel(s: list) -> None:
        np.matmul(s[x], s[y], out=s[out])

    return kernel


def tile_read(chip: TileChip, x: int, out: int, work: int, noise: int | None) -> Kernel:
    """A quantised (or pcm) tile: ``chip.read`` of the step's rows ``[M, K]`` into ``[M, c]``;
    ``work`` holds the tile's workspace and ``noise`` its read-noise stream (pcm)."""
    c = chip.n_cols

    def kernel(s: list) -> None:
        xs = s[x]
        stream = None if noise is None else s[noise]
        chip.read(xs.reshape(-1, xs.shape[-1]), s[out].reshape(-1, c), s[work], stream)

    return kernel


def view(x: int, out: int, shape_of: Callable[[np.ndarray], np.ndarray]) -> Kernel:
    """A reshape or transpose whose result is only read within the step: a view, no copy."""

    def kernel(s: list) -> None:
        s[out] = shape_of(s[x])

    return kernel


def view_copy(x: int, out: int, shape_of: Callable[[np.ndarray], np.ndarray]) -> Kernel:
    """A reshape or transpose whose result must live in its own array: copied into it."""

    def kernel(s: list) -> None:
        np.copyto(s[out], shape_of(s[x]))

    return kernel


def generic(
    node: Node, inputs: Sequence[int], outputs: Sequence[int], bind: Sequence[bool]
) -> Kernel:
    """Any op, by the interpreter's semantics; each result is bound to its slot (``bind``)
    or copied into the slot's array."""
    inputs, outputs, bind = tuple(inputs), tuple(outputs), tuple(bind)

    def kernel(s: list) -> None:
        results = evaluate_node(node, [s[i] for i in inputs])
        for slot, result, bound in zip(outputs, results, bind, strict=True):
            if bound:
                s[slot] = result
            else:
                np.copyto(s[slot], result)

    return kernel


@dataclass(frozen=True)
class Build:
    """What a kernel maker gets when a plan is built: one node, its slots and the plan.

    Attributes:
        node: the node.
        ins, outs: slots of its operands and results.
        bound: per result, whether its slot has no array, so the kernel must set it.
        types: every value's type.
        invariants: the values that are the same at every step, by name.
        alloc: gives the kernel its scratch slots.
        spikes: whether operand 0 is guaranteed to hold only 0 and 1.
        tally: where a spiking kernel counts its spikes (see :func:`node_kernel`).
    """

    node: Node
    ins: Sequence[int]
    outs: Sequence[int]
    bound: Sequence[bool]
    types: Mapping[str, TensorType]
    invariants: Mapping[str, np.ndarray]
    alloc: Allocator
    spikes: bool
    tally: tuple[int, int] | None

    @property
    def type(self) -> TensorType:
        """The type of the node's first result."""
        return self.types[self.node.outputs[0]]

    def operand(self, i: int, negate: bool = False) -> int:
        """Operand i's slot; an invariant one broadcast to the result's shape."""
        value = self.invariants.get(self.node.inputs[i])
        if value is None or value.dtype != self.type.np_dtype:
            return self.ins[i]
        return self.alloc.full(-value if negate else value, self.type.shape)

    def constant(self, v: float) -> int:
        """A slot holding ``v`` in the result's dtype, broadcast to its shape."""
        return self.alloc.full(np.asarray(v, self.type.np_dtype), self.type.shape)

    def generic(self) -> Kernel:
        """The interpreter's semantics as the kernel (:func:`generic`)."""
        return generic(self.node, self.ins, self.outs, self.bound)


KernelMaker = Callable[[Build], Kernel]


@dataclass(frozen=True)
class FastKernel:
    """An op's fast form: ``make`` builds its kernel; ``writes(dtype)`` says whether that
    kernel writes into arrays its program provides (for a result of ``dtype``), rather
    than binding its results (a view, or the interpreter's freshly allocated result)."""

    make: KernelMaker
    writes: Callable[[np.dtype], bool]


FAST_KERNELS: dict[type[Op], FastKernel] = {}
"""By op class, its fast kernel; every op has one (a registry test checks it)."""


def _always(dtype: np.dtype) -> bool:
    return True


def _never(dtype: np.dtype) -> bool:
    return False


def kernel(
    *op_classes: type[Op], writes: Callable[[np.dtype], bool] = _always
) -> Callable[[KernelMaker], KernelMaker]:
    """Decorator: register the decorated maker as the fast kernel of ``op_classes``."""

    def register(make: KernelMaker) -> KernelMaker:
        for cls in op_classes:
            if cls in FAST_KERNELS:
                raise RuntimeError(f"fast kernel of {cls.NAME} defined twice")
            FAST_KERNELS[cls] = FastKernel(make, writes)
        return make

    return register


def writes(node: Node, dtype: np.dtype, chips: Mapping[str, TileChip]) -> bool:
    """Whether ``node``'s kernel writes into arrays its program provides (otherwise it
    binds its results: a view, or the interpreter's freshly allocated result)."""
    return node.id in chips or FAST_KERNELS[type(node.op)].writes(dtype)


def node_kernel(
    node: Node,
    ins: Sequence[int],
    outs: Sequence[int],
    bound: Sequence[bool],
    *,
    types: Mapping[str, TensorType],
    invariants: Mapping[str, np.ndarray],
    chips: Mapping[str, TileChip],
    alloc: Allocator,
    spikes: frozenset[str] = frozenset(),
    tally: tuple[int, int] | None = None,
) -> Kernel:
    """The kernel of ``node`` over the slots ``ins`` (operands) and ``outs`` (results):
    a programmed tile's read, else its op's registered :data:`FAST_KERNELS` maker (looked
    up once, here, when the plan is built).

    Args:
        node: the node.
        ins, outs: slots of its operands and results.
        bound: per result, whether its slot has no array, so the kernel must set it (only
            for nodes that do not :func:`write`; a bound view costs no copy).
        types: every value's type.
        invariants: the values that are the same at every step (constants and values
            computed from constants only), by name.
        chips: the programmed tiles (quantized and pcm modes), by node id.
        alloc: gives the kernel its scratch slots.
        spikes: the values guaranteed to hold only 0 and 1 (a float crossbar product of
            one skips its silent inputs and rows).
        tally: ``(slot, index)``: a spiking node (``dig.step``, an SNU with a step)
            adds the spikes of its last result to ``slots[slot][index]`` (the simulator's
            counts); None: it counts nothing.
    """
    chip = chips.get(node.id)
    if chip is not None:
        noise = alloc.noise(chip) if chip.noisy else None
        work = alloc.workspace(chip, types[node.outputs[0]])
        return tile_read(chip, ins[0], outs[0], work, noise)
    build = Build(node, ins, outs, bound, types, invariants, alloc, node.inputs[0] in spikes, tally)
    return FAST_KERNELS[type(node.op)].make(build)


# --------------------------------------------------------------------------- by op


def _defined_kernel(ufunc: np.ufunc) -> KernelMaker:
    """The kernel of an element-wise op whose meaning is ``ufunc`` of one or two operands
    (:mod:`snuc.ir.elementwise`). A binary op's operand of the result's dtype that is the
    same at every step is broadcast to the result's shape first (NumPy's fastest path); a
    comparison's operands keep their own."""

    def make(b: Build) -> Kernel:
        if len(b.ins) == 1:
            return unary(ufunc, b.ins[0], b.outs[0])
        same = [v in b.types and b.types[v].np_dtype == b.type.np_dtype for v in b.node.inputs]
        ins = [b.operand(i) if ok else b.ins[i] for i, ok in enumerate(same)]
        if ufunc in _OUTPUT_BY_KEYWORD:
            return extremum(ufunc, ins[0], ins[1], b.outs[0])
        return binary(ufunc, ins[0], ins[1], b.outs[0])

    return make


_OUTPUT_BY_KEYWORD = (np.maximum, np.minimum)
"""Ufuncs that take their output by keyword only (a positional one is deprecated)."""


for _cls, _definition in ELEMENTWISE.items():
    if _definition.ufunc is None:
        kernel(_cls, writes=_never)(Build.generic)
    else:
        kernel(_cls)(_defined_kernel(_definition.ufunc))


def _float_result(dtype: np.dtype) -> bool:
    return dtype.kind == "f"


@kernel(ops.Div, writes=_float_result)
def _div_kernel(b: Build) -> Kernel:
    # Integer division truncates and checks for zero: the interpreter's semantics do it.
    return _defined_kernel(np.divide)(b) if _float_result(b.type.np_dtype) else b.generic()


@kernel(ops.Relu)
def _relu_kernel(b: Build) -> Kernel:
    return rectify(b.ins[0], b.constant(0), b.outs[0])


@kernel(ops.Step)
def _step_kernel(b: Build) -> Kernel:
    spike = b.alloc.temp(np.bool_, b.type.shape)
    return step(b.ins[0], b.constant(0), spike, b.outs[0], b.tally)


@kernel(ops.Sigmoid)
def _sigmoid_kernel(b: Build) -> Kernel:
    return sigmoid(b.ins[0], b.outs[0], _sigmoid_temps(b.alloc, b.type.np_dtype, b.type.shape))


@kernel(ops.Cast)
def _cast_kernel(b: Build) -> Kernel:
    return cast(b.ins[0], b.outs[0])


@kernel(ops.Where)
def _where_kernel(b: Build) -> Kernel:
    return where(b.ins[0], b.ins[1], b.ins[2], b.outs[0])


@kernel(ops.Concat)
def _concat_kernel(b: Build) -> Kernel:
    inputs, types, dtype = b.node.inputs, b.types, b.type.np_dtype
    if all(v in types and types[v].np_dtype == dtype for v in inputs):
        return concat(b.ins, [types[v].shape for v in inputs], b.node.op.axis, b.outs[0])
    return concat_cast(b.ins, b.node.op.axis, b.outs[0])


@kernel(ops.Dense)
def _dense_kernel(b: Build) -> Kernel:
    return matmul(b.ins[0], b.invariants[b.node.inputs[1]], b.outs[0], spikes=b.spikes)


@kernel(ops.CrossbarMVM)
def _crossbar_mvm_kernel(b: Build) -> Kernel:
    weight = b.invariants[b.node.inputs[1]]
    (r0, r1), (c0, c1) = b.node.op.rows, b.node.op.cols
    rows = None if (r0, r1) == (0, weight.shape[0]) else slice(r0, r1)
    return matmul(b.ins[0], weight[r0:r1, c0:c1], b.outs[0], rows, spikes=b.spikes)


@kernel(ops.MatMul)
def _matmul_kernel(b: Build) -> Kernel:
    return matmul_values(b.ins[0], b.ins[1], b.outs[0])


@kernel(ops.Reshape, ops.Transpose, writes=_never)
def _view_kernel(b: Build) -> Kernel:
    shape_of = _view_function(b.node)
    make = view if b.bound[0] else view_copy
    return make(b.ins[0], b.outs[0], shape_of)


@kernel(
    ops.Conv,
    ops.DigitalConv,
    ops.Im2Col,
    ops.Gather,
    ops.ReduceSum,
    ops.ReduceMean,
    ops.Softmax,
    ops.LogSoftmax,
    ops.MaxPool,
    ops.AvgPool,
    ops.LeakyRelu,
    writes=_never,
)
def _generic_kernel(b: Build) -> Kernel:
    # Rare in a time loop (or run once, on invariants): the interpreter's semantics.
    return b.generic()


def _sigmoid_temps(alloc: Allocator, dtype: np.dtype, shape: tuple[Dim, ...]) -> list[int]:
    temps = [alloc.temp(dtype, shape) for _ in range(3)] + [alloc.temp(np.bool_, shape)]
    ones, zeros, minus_ones = (alloc.full(np.asarray(v, dtype), shape) for v in (1, 0, -1))
    return [ones, zeros, *temps, minus_ones]


def step(x: int, zeros: int, spike: int, out: int, tally: tuple[int, int] | None) -> Kernel:
    """``out = x > 0`` as 0 or 1 in out's dtype, through a bool array (a comparison
    writing floats directly takes NumPy's slow casting path); ``tally``: see
    :func:`node_kernel`."""
    count = np_fast.count_nonzero

    def kernel(s: list) -> None:
        flags = s[spike]
        _greater(s[x], s[zeros], flags)
        s[out][...] = flags
        if tally is not None:
            s[tally[0]][tally[1]] += count(flags)

    return kernel


def _view_function(node: Node) -> Callable[[np.ndarray], np.ndarray]:
    """The reshape (the batch as -1, as the interpreter does) or transpose of ``node``."""
    if isinstance(node.op, ops.Reshape):
        shape = tuple(-1 if d == BATCH else d for d in node.op.shape)
        return lambda x: x.reshape(shape)
    perm = node.op.perm
    return lambda x: x.transpose(perm)


# The neuron models' kernels are compiled from their update data; importing registers them.
from snuc.runtime import neuron_kernels as neuron_kernels  # noqa: E402
