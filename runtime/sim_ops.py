"""The simulator's instructions as kernels over numbered slots, and what each slot holds.

Every instruction of a program (docs/isa.md) becomes a :class:`SimOp`: a kernel
``kernel(slots)`` (a closure, like the NumPy backend's, see :mod:`plan_kernels`) and the
slots it reads and writes, each with a :class:`Slot` that says which array it holds at
timestep t: a copy of a buffer (``t mod copies``, modulo variable expansion), the value of
an earlier timestep through a state, a row of the input sequence, a message in flight, or
a fixed array (constants, scratch). The simulator (:mod:`snuc.runtime.simulator`) binds the
slots for each window of ``ii`` cycles and runs the kernels in the order of their absolute
cycles.

What the instructions compute, per mode:

* ``mvm``: ``float``: the exact window product ``x[..., r0:r1] @ W[r0:r1, c0:c1]``; the
  "codes" buffer holds it and ``adc`` passes it on. ``quantized``/``pcm``: DAC, column
  currents in float64 (plus read noise, pcm), and the ADC's integer codes, with the same
  float operations in the same order as the NumPy backend's tile
  (:class:`~snuc.runtime.plan_tiles.TileChip`), whose programmed conductances it uses.
* ``adc``: ``y = float32(code * adc_range / (2**(adc_bits-1) - 1) * s * alpha)``.
* vector ops: the NumPy backend's in-place kernels (:func:`plan_kernels.node_kernel`) for
  the IR op the instruction names, or the interpreter's semantics.
* ``send``/``recv``: copy the buffer (or its window) into a message and out of it into the
  destination's buffer; a message whose source stays intact until the ``recv`` is read
  straight from the source.

Every ``mvm`` adds the rows it drives with a non-zero input (after the DAC) to a tally in
slot 0; every spiking neuron update adds its spikes there too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# Instructions are plain data (backends/isa.py): the runtime only reads them.
from snuc.backends.isa import Block, Tile, VectorOp
from snuc.ir.crossbar import adc_max_code, dac_grid
from snuc.ir.graph import Node
from snuc.ir.types import BATCH, Dim, TensorType
from snuc.runtime import plan_kernels as kernels
from snuc.runtime.plan_tiles import NoiseStream, TileChip

try:  # NumPy's own entry points: np.clip and np.count_nonzero reach them through Python
    from numpy._core._multiarray_umath import clip as _clip
    from numpy._core._multiarray_umath import count_nonzero as _count_nonzero
except ImportError:  # pragma: no cover - a NumPy without them: the public functions
    _clip, _count_nonzero = np.clip, np.count_nonzero
# np.dot without its __array_function__ dispatch (NEP 18's ``_implementation``): the
# simulator's arrays are plain ndarrays, and the dispatch costs a third of a row's product.
_dot = getattr(np.dot, "_implementation", np.dot)

Kernel = Callable[[list], None]

TALLY = 0
"""Slot 0 holds the run's tally: a list of counts (driven rows, spikes) by index."""


@dataclass(frozen=True)
class Slot:
    """What a slot holds at timestep t.

    Attributes:
        kind: ``"copy"``: buffer ``name`` of ``unit`` as written at step ``t - distance``;
            ``"feed"``: input ``name`` at step ``t - distance``; ``"ring"``: the message of
            step t of transfer ``name``; ``"history"``: row t of output ``name``;
            ``"fixed"``: ``make(kit)``, the same at every step.
        unit: the buffer's unit (``"copy"``).
        name: the buffer, input, transfer or output.
        distance: timesteps back; before the first timestep, zeros.
        make: ``"fixed"``: builds the array (or object) from the run's kit (its batch
            size and read-noise streams), once per kit: the plan keeps it for later runs.
        matrix: bind a ``[M, K]`` view of the array (all leading axes in one), as a
            crossbar reads and writes it.
    """

    kind: str
    unit: Any = None
    name: str = ""
    distance: int = 0
    make: Callable[[Any], Any] | None = None
    matrix: bool = False


def fixed(make: Callable[[Any], Any]) -> Slot:
    return Slot("fixed", make=make)


def constant(value: Any) -> Slot:
    return Slot("fixed", make=lambda kit: value)


@dataclass
class SimOp:
    """One instruction, compiled.

    Attributes:
        order: sort key within a window of ``ii`` cycles (cycle in the window, rank,
            older timesteps first, block, instruction).
        stage: ``start // ii``: in window k it runs for timestep ``k - stage``.
        slots: ``(slot number, what it holds)`` for every slot the kernel uses.
        kernel: the computation.
        tag: ``(K, j)``: it runs only for timesteps t with ``t mod K == j``; None: all.
    """

    order: tuple
    stage: int
    slots: list[tuple[int, Slot]]
    kernel: Kernel
    tag: tuple[int, int] | None = None


class SlotTable:
    """Hands out slot numbers; slot 0 is the tally."""

    def __init__(self) -> None:
        self.slots: list[tuple[int, Slot]] = []
        self.count = 1

    def new(self, slot: Slot) -> int:
        self.slots.append((self.count, slot))
        self.count += 1
        return self.count - 1

    def take(self) -> list[tuple[int, Slot]]:
        """The slots handed out since the last call."""
        taken, self.slots = self.slots, []
        return taken


def concrete(shape: tuple[Dim, ...], batch: int) -> tuple[int, ...]:
    return tuple(batch if d == BATCH else d for d in shape)


class Allocator:
    """Scratch for :func:`plan_kernels.node_kernel`, allocated once per kit."""

    def __init__(self, table: SlotTable) -> None:
        self.table = table

    def temp(self, dtype: np.dtype | type, shape: tuple[Dim, ...]) -> int:
        return self.table.new(fixed(lambda kit: np.empty(concrete(shape, kit.batch), dtype)))

    def full(self, value: np.ndarray, shape: tuple[Dim, ...]) -> int:
        return self.table.new(
            fixed(lambda kit: np.broadcast_to(value, concrete(shape, kit.batch)).copy())
        )

    def workspace(self, chip: TileChip, type_: TensorType) -> int:
        raise NotImplementedError("vector instructions read no crossbar tile")

    def noise(self, chip: TileChip) -> int:
        raise NotImplementedError("vector instructions read no crossbar tile")


# --------------------------------------------------------------------------- crossbars


class Converted:
    """A tile's input as its DACs convert it, ``[M, K]`` float64, allocated per kit.

    Tiles on one core that read the same rows of the same buffer through the same DAC
    range in the same timestep (the column blocks of a wide layer) share one: the first
    converts, the others read it (the conversion is a function of those alone).

    Attributes:
        x_q: the converted input.
        squared: ``x_q ** 2`` (noisy tiles with multi-bit inputs: read-noise variance).
        driven: rows driven with a non-zero input, over the vectors.
    """

    def __init__(self, chip: TileChip, rows: int) -> None:
        self.x_q = np.empty((rows, chip.n_rows))
        if chip.noisy and not chip.binary_input:
            self.squared = np.empty((rows, chip.n_rows))
        self.driven = 0


class StepNoise:
    """A duplicated tile's read-noise block ``[T, *out]``, handed out by timestep.

    The copies of a tile share its one block (SPEC §6), each taking the steps it serves,
    in their own order: copy j's ``mvm`` of step t may run before copy j-1's of step
    t - 1 (the copies start at different cycles). The block is drawn from the tile's
    stream in step order, and steps drawn ahead wait until their copy takes them.
    """

    def __init__(self, stream: NoiseStream, per_step: int) -> None:
        self._stream = stream
        self._per_step = per_step
        self._drawn = 0
        self._ahead: dict[int, np.ndarray] = {}
        self._servings: list[_Serving] = []

    def restart(self) -> None:
        """Start over, for a new run (its stream started over too): no step drawn or
        taken."""
        self._drawn = 0
        self._ahead.clear()
        for serving in self._servings:
            serving.restart()

    def step(self, t: int) -> np.ndarray:
        """``block[t]``, flat; each step is taken once."""
        while self._drawn <= t:
            self._ahead[self._drawn] = self._stream.take(self._per_step).copy()
            self._drawn += 1
        return self._ahead.pop(t)

    def serving(self, k: int, j: int) -> _Serving:
        """What copy j of K takes: steps j, j + K, j + 2K, ... in turn."""
        serving = _Serving(self, k, j)
        self._servings.append(serving)
        return serving


class _Serving:
    """One copy's share of a :class:`StepNoise`, with the ``take`` of a noise stream."""

    def __init__(self, steps: StepNoise, k: int, j: int) -> None:
        self._steps = steps
        self._k = k
        self._j = j
        self._next = j

    def restart(self) -> None:
        self._next = self._j

    def take(self, n: int) -> np.ndarray:
        """The normals of the next step this copy serves (``n`` of them: all the step's)."""
        block = self._steps.step(self._next)
        if block.size != n:
            raise RuntimeError(f"read noise of {block.size} values per step, asked for {n}")
        self._next += self._k
        return block


class Workspace:
    """Float64 scratch of one tile's reads of ``rows`` input vectors, allocated per kit."""

    def __init__(self, chip: TileChip, rows: int) -> None:
        self.current = np.empty((rows, chip.n_cols))
        if chip.noisy:
            self.spread = np.empty((rows, chip.n_cols))
            self.spread_flat = self.spread.reshape(-1)


def mvm_kernel(
    x: int,
    codes: int,
    tally: int,
    *,
    tile: Tile,
    x_width: int,
    x_dtype: np.dtype | None,
    chip: TileChip | None,
    weight: np.ndarray | None,
    converted: int,
    converts: bool,
    work: int,
    noise: int | None,
) -> Kernel:
    """``mvm``: the tile's ADC codes (``float``: its exact product) of the step's input.

    The float operations are those of the NumPy backend's tile read
    (``TileChip._read_block``), in the same order, so every element rounds the same; a
    few are left out or merged where that cannot change a result: the DAC's grid origin
    is skipped when it is 0 (that changes at most the sign of a zero, which no later step
    sees), its clip is a maximum and a minimum (one ``clip`` where neither bound is 0: the
    same values, signed zeros included), and the ADC's rounding writes the codes
    (integers, held in float64 so that a NaN input stays NaN as in the NumPy backend).

    A step's arrays hold a few hundred elements, so a NumPy call costs more than its
    arithmetic: the scalars are 0-d float64 arrays (a Python float is converted at every
    call), outputs are passed positionally, the rows window is taken only when it is not
    the whole operand, and a product of one row takes ``np.dot`` (:func:`row_product`).

    Args:
        x, codes: slots of the operand ``[M, K]`` (all the weight's rows) and of the
            codes ``[M, c]``.
        tally: index in the tally where the driven rows add up.
        tile: the tile (its rows window).
        x_width: K, the operand's last axis.
        x_dtype: float mode: the dtype of the operand and of the codes when they are
            buffers of the simulator of one dtype (their rows have unit stride), else None.
        chip: the programmed tile (quantized, pcm); None in float mode.
        weight: float mode: the tile's window of the weight, contiguous.
        converted: slot of the tile's :class:`Converted` input (quantized, pcm).
        converts: this tile converts the input (else an earlier tile sharing it did).
        work: slot of the tile's :class:`Workspace` (quantized, pcm).
        noise: slot of the tile's read-noise stream (pcm).
    """
    rows = None if tile.rows == (0, x_width) else slice(*tile.rows)
    matmul, dot, count = np.matmul, _dot, _count_nonzero
    if chip is None:
        by_row = x_dtype is not None and row_product(weight, x_dtype)

        def exact(s: list) -> None:
            window = s[x] if rows is None else s[x][:, rows]
            s[TALLY][tally] += count(window)
            if by_row and window.shape[0] == 1:
                dot(window, weight, s[codes])
            else:
                matmul(window, weight, s[codes])

        return exact
    divide, multiply, rint = np.divide, np.multiply, np.rint
    full_scale, m = _scalar(chip.adc_range), _scalar(adc_max_code(chip.adc_bits))
    lo, hi = chip.dac
    origin, step = dac_grid(lo, hi, chip.dac_bits)
    origin_, step_ = _scalar(origin), _scalar(step)
    dac_clip = _clipper(lo, hi)
    binary = chip.binary_input
    conductance, variance = chip.conductance_us, chip.variance_us2
    float64 = np.dtype(np.float64)
    by_row = row_product(conductance, float64) and (
        variance is None or row_product(variance, float64)
    )
    adc_clip = _clipper(-1.0, 1.0) if variance is not None or not never_clips(chip) else None

    def read(s: list) -> None:
        done = s[converted]
        x_q = done.x_q
        if converts:
            x_q[...] = s[x] if rows is None else s[x][:, rows]
            if not binary:  # crossbar.dac_quantize, in place
                dac_clip(x_q)
                if origin:
                    np.subtract(x_q, origin_, x_q)
                divide(x_q, step_, x_q)
                rint(x_q, x_q)
                multiply(x_q, step_, x_q)
                if origin:
                    np.add(x_q, origin_, x_q)
                if variance is not None:
                    multiply(x_q, x_q, done.squared)
            done.driven = count(x_q)
        s[TALLY][tally] += done.driven
        ws = s[work]
        current = ws.current
        product = dot if by_row and x_q.shape[0] == 1 else matmul
        product(x_q, conductance, current)
        if variance is not None:
            spread = ws.spread
            # x_q**2 == x_q for x_q in {0, 1}.
            product(x_q if binary else done.squared, variance, spread)
            np.sqrt(spread, spread)
            flat = ws.spread_flat
            multiply(flat, s[noise].take(flat.size), flat)
            np.add(current, spread, current)
        # The ADC's codes: crossbar.adc_quantize up to its rounding.
        divide(current, full_scale, current)
        if adc_clip is not None:
            adc_clip(current)
        multiply(current, m, current)
        rint(current, s[codes])

    return read


def row_product(weight: np.ndarray, dtype: np.dtype) -> bool:
    """Whether ``np.dot(x, weight, out)`` computes ``np.matmul(x, weight, out)`` bit for
    bit for one row x ``[1, K]`` of ``dtype`` with unit stride (and out ``[1, N]``, C
    order, of that dtype), at about half its cost per call.

    Both hand such a row to BLAS's gemv with the same arguments (row major, transposed,
    K by N, leading dimension N, unit strides) when the weight is C-contiguous and of
    the row's dtype, float32 or float64, with more than one row and column (with one,
    NumPy takes other paths, which may differ).
    """
    k, n = weight.shape
    return (
        weight.flags.c_contiguous
        and weight.dtype == dtype
        and dtype in (np.dtype(np.float32), np.dtype(np.float64))
        and k > 1
        and n > 1
    )


def _scalar(value: float) -> np.ndarray:
    """A float64 operand of every element: a 0-d array, which NumPy takes without the
    conversion a Python float costs at each call (the same float64 value)."""
    return np.asarray(value, np.float64)


def _clipper(lo: float, hi: float) -> Callable[[np.ndarray], None]:
    """Clip a float64 array to ``[lo, hi]`` in place, as ``maximum`` then ``minimum``.

    NumPy's ``clip`` computes the same values (NaN stays NaN) in one call, except that
    the sign of a zero at a bound of 0 may differ; ``maximum``/``minimum`` are kept for
    such a bound.
    """
    lo_, hi_ = _scalar(lo), _scalar(hi)
    if lo and hi:

        def clip(a: np.ndarray) -> None:
            _clip(a, lo_, hi_, a)

        return clip

    def clip_by_parts(a: np.ndarray) -> None:
        np.maximum(a, lo_, out=a)
        np.minimum(a, hi_, out=a)

    return clip_by_parts


def never_clips(chip: TileChip) -> bool:
    """Whether no input can drive a column of a noiseless tile past the ADC's full scale.

    ``|I_j| <= max(|lo|, |hi|) * sum_i |G_ij|`` for every DAC output; when that is at most
    the full scale F (as for the quantize pass's default ranges; 1e-9 relative is allowed
    for the order of the sums), ``|I / F|`` exceeds 1 by at most about 1e-9, so ``rint(I
    / F * m)`` is m, what the clip to ``[-1, 1]`` would give: the clip can be left out.
    """
    drive = max(abs(chip.dac[0]), abs(chip.dac[1]))
    bound = drive * float(np.abs(chip.conductance_us).sum(axis=0).max(initial=0.0))
    return bound <= chip.adc_range * (1 + 1e-9)


def adc_kernel(
    codes: int,
    out: int,
    *,
    chip: TileChip | None,
    scratch: int | None = None,
    gain: int | None = None,
    same_dtype: bool = False,
) -> Kernel:
    """``adc``: values from codes, ``float32(code * adc_range / m * s * alpha)`` (the rest
    of ``crossbar.adc_quantize`` and the tile's gain, as the NumPy backend computes them,
    in float64, rounded once to the result's dtype); float mode: a copy.

    Args:
        codes, out: slots of the codes and of the values.
        chip: the programmed tile (quantized, pcm); None in float mode.
        scratch: slot of a float64 array of the values' shape (quantized, pcm).
        gain: slot of the tile's gain ``s * alpha`` broadcast to the values' shape (an
            operand of the result's shape takes NumPy's fastest path).
        same_dtype: float mode: codes and values have one dtype (see :func:`copy_kernel`);
            else the values' dtype holds float64 values cast ``same_kind`` (an assignment
            rounds them as ``copyto`` does, which is kept where it rejects the cast).
    """
    if chip is None:
        return copy_kernel(codes, out, None, None, same_dtype)
    multiply, divide = np.multiply, np.divide
    full_scale, m = _scalar(chip.adc_range), _scalar(adc_max_code(chip.adc_bits))

    def read_out(s: list) -> None:
        values = s[scratch]
        multiply(s[codes], full_scale, values)
        divide(values, m, values)
        multiply(values, s[gain], values)
        if same_dtype:
            s[out][...] = values
        else:
            np.copyto(s[out], values, casting="same_kind")

    return read_out


# --------------------------------------------------------------------------- digital work


def vector_kernel(
    instr: VectorOp,
    ins: list[int],
    outs: list[int],
    *,
    types: Mapping[str, TensorType],
    constants: Mapping[str, np.ndarray],
    alloc: Allocator,
    spikes: int | None,
) -> Kernel:
    """A vector instruction: the NumPy backend's kernel of its IR op
    (:func:`plan_kernels.node_kernel`), writing into its result buffers; with ``spikes``
    (a tally index) it also counts its spikes (its last result: the neuron update's ``y``
    or a step's output)."""
    node = Node(
        instr.ir_op(),
        tuple(name[1:] for name in instr.srcs),
        tuple(name[1:] for name in instr.dsts),
    )
    return kernels.node_kernel(
        node,
        ins,
        outs,
        [False] * len(outs),
        types=types,
        invariants=constants,
        chips={},
        alloc=alloc,
        tally=None if spikes is None else (TALLY, spikes),
    )


def spiking(instr: VectorOp) -> bool:
    """Whether the instruction's last result is spikes: a step, or an SNU update with
    ``h = step``."""
    attrs = dict(instr.attrs)
    return instr.opcode == "step" or (instr.opcode == "snu" and attrs.get("h") == "step")


# --------------------------------------------------------------------------- transfers


def copy_kernel(
    src: int,
    dst: int,
    src_window: tuple[int, int] | None,
    dst_window: tuple[int, int] | None,
    same_dtype: bool = False,
) -> Kernel:
    """Copy ``src`` (or the window ``[lo, hi)`` of its last axis) into ``dst`` (or its
    window): a buffer into a message, a message into a buffer, or a buffer into one of
    another unit. ``same_dtype``: both hold one dtype, so an assignment copies (cheaper
    than ``copyto``, which is kept where it checks the cast)."""
    take = slice(*src_window) if src_window is not None else slice(None)
    put = slice(*dst_window) if dst_window is not None else slice(None)
    if src_window is None and dst_window is None and same_dtype:

        def assign(s: list) -> None:
            s[dst][...] = s[src]

        return assign
    if src_window is None and dst_window is None:

        def whole(s: list) -> None:
            np.copyto(s[dst], s[src])

        return whole
    if same_dtype:

        def assign_part(s: list) -> None:
            s[dst][..., put] = s[src][..., take]

        return assign_part

    def part(s: list) -> None:
        np.copyto(s[dst][..., put], s[src][..., take])

    return part


def record_kernel(value: int, row: int, same_dtype: bool = False) -> Kernel:
    """Keep an output's value of the step: ``row = value``."""
    return copy_kernel(value, row, None, None, same_dtype)


def operand_type(block: Block, name: str) -> TensorType:
    """The declared type of a name the block reads."""
    for decl in block.decls:
        if decl.name == name and decl.type is not None:
            return decl.type
    raise KeyError(name)
