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
            ``"fixed"``: ``make(run)``, the same at every step.
        unit: the buffer's unit (``"copy"``).
        name: the buffer, input, transfer or output.
        distance: timesteps back; before the first timestep, zeros.
        make: ``"fixed"``: builds the array (or object) once per run.
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
    return Slot("fixed", make=lambda run: value)


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
    """Scratch for :func:`plan_kernels.node_kernel`, allocated once per run."""

    def __init__(self, table: SlotTable) -> None:
        self.table = table

    def temp(self, dtype: np.dtype | type, shape: tuple[Dim, ...]) -> int:
        return self.table.new(fixed(lambda run: np.empty(concrete(shape, run.batch), dtype)))

    def full(self, value: np.ndarray, shape: tuple[Dim, ...]) -> int:
        return self.table.new(
            fixed(lambda run: np.broadcast_to(value, concrete(shape, run.batch)).copy())
        )

    def workspace(self, chip: TileChip, type_: TensorType) -> int:
        raise NotImplementedError("vector instructions read no crossbar tile")

    def noise(self, chip: TileChip) -> int:
        raise NotImplementedError("vector instructions read no crossbar tile")


# --------------------------------------------------------------------------- crossbars


class Converted:
    """A tile's input as its DACs convert it, ``[M, K]`` float64, allocated per run.

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

    def step(self, t: int) -> np.ndarray:
        """``block[t]``, flat; each step is taken once."""
        while self._drawn <= t:
            self._ahead[self._drawn] = self._stream.take(self._per_step).copy()
            self._drawn += 1
        return self._ahead.pop(t)

    def serving(self, k: int, j: int) -> _Serving:
        """What copy j of K takes: steps j, j + K, j + 2K, ... in turn."""
        return _Serving(self, k, j)


class _Serving:
    """One copy's share of a :class:`StepNoise`, with the ``take`` of a noise stream."""

    def __init__(self, steps: StepNoise, k: int, j: int) -> None:
        self._steps = steps
        self._k = k
        self._next = j

    def take(self, n: int) -> np.ndarray:
        """The normals of the next step this copy serves (``n`` of them: all the step's)."""
        block = self._steps.step(self._next)
        if block.size != n:
            raise RuntimeError(f"read noise of {block.size} values per step, asked for {n}")
        self._next += self._k
        return block


class Workspace:
    """Float64 scratch of one tile's reads of ``rows`` input vectors, allocated per run."""

    def __init__(self, chip: TileChip, rows: int) -> None:
        self.current = np.empty((rows, chip.n_cols))
        if chip.noisy:
            self.spread = np.empty((rows, chip.n_cols))


def mvm_kernel(
    x: int,
    codes: int,
    tally: int,
    *,
    tile: Tile,
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
    sees), its clip is a maximum and a minimum, and the ADC's rounding writes the codes
    (integers, held in float64 so that a NaN input stays NaN as in the NumPy backend).

    Args:
        x, codes: slots of the operand ``[M, K]`` (all the weight's rows) and of the
            codes ``[M, c]``.
        tally: index in the tally where the driven rows add up.
        tile: the tile (its rows window).
        chip: the programmed tile (quantized, pcm); None in float mode.
        weight: float mode: the tile's window of the weight, contiguous.
        converted: slot of the tile's :class:`Converted` input (quantized, pcm).
        converts: this tile converts the input (else an earlier tile sharing it did).
        work: slot of the tile's :class:`Workspace` (quantized, pcm).
        noise: slot of the tile's read-noise stream (pcm).
    """
    rows = slice(*tile.rows)
    if chip is None:

        def exact(s: list) -> None:
            window = s[x][:, rows]
            s[TALLY][tally] += np.count_nonzero(window)
            np.matmul(window, weight, out=s[codes])

        return exact
    full_scale, m = chip.adc_range, adc_max_code(chip.adc_bits)
    lo, hi = chip.dac
    origin, step = dac_grid(lo, hi, chip.dac_bits)
    binary = chip.binary_input
    conductance, variance = chip.conductance_us, chip.variance_us2
    clips = variance is not None or not never_clips(chip)

    def convert(s: list) -> Converted:
        into = s[converted]
        x_q = into.x_q
        np.copyto(x_q, s[x][:, rows])
        if not binary:  # crossbar.dac_quantize, in place
            np.maximum(x_q, lo, out=x_q)
            np.minimum(x_q, hi, out=x_q)
            if origin:
                np.subtract(x_q, origin, out=x_q)
            np.divide(x_q, step, out=x_q)
            np.rint(x_q, out=x_q)
            np.multiply(x_q, step, out=x_q)
            if origin:
                np.add(x_q, origin, out=x_q)
            if variance is not None:
                np.multiply(x_q, x_q, out=into.squared)
        into.driven = np.count_nonzero(x_q)
        return into

    def read(s: list) -> None:
        done = convert(s) if converts else s[converted]
        s[TALLY][tally] += done.driven
        ws = s[work]
        current = ws.current
        np.matmul(done.x_q, conductance, out=current)
        if variance is not None:
            spread = ws.spread
            # x_q**2 == x_q for x_q in {0, 1}.
            np.matmul(done.x_q if binary else done.squared, variance, out=spread)
            np.sqrt(spread, out=spread)
            np.multiply(spread, s[noise].take(spread.size).reshape(spread.shape), out=spread)
            np.add(current, spread, out=current)
        # The ADC's codes: crossbar.adc_quantize up to its rounding.
        np.divide(current, full_scale, out=current)
        if clips:
            np.maximum(current, -1.0, out=current)
            np.minimum(current, 1.0, out=current)
        np.multiply(current, m, out=current)
        np.rint(current, out=s[codes])

    return read


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


def adc_kernel(codes: int, out: int, scratch: int, chip: TileChip | None) -> Kernel:
    """``adc``: values from codes, ``float32(code * adc_range / m * s * alpha)`` (the rest
    of ``crossbar.adc_quantize`` and the tile's gain, as the NumPy backend computes them);
    float mode: a copy."""
    if chip is None:

        def copy(s: list) -> None:
            np.copyto(s[out], s[codes])

        return copy
    full_scale, m, gain = chip.adc_range, adc_max_code(chip.adc_bits), chip.gain

    def read_out(s: list) -> None:
        values = s[scratch]
        np.multiply(s[codes], full_scale, out=values)
        np.divide(values, m, out=values)
        np.multiply(values, gain, out=s[out], casting="same_kind")

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
    """A vector instruction: the NumPy backend's kernel of its IR op, writing into its
    result buffers; with ``spikes`` (a tally index) it also counts its spikes (its last
    result: the neuron update's ``y`` or a step's output)."""
    node = Node(
        instr.ir_op(),
        tuple(name[1:] for name in instr.srcs),
        tuple(name[1:] for name in instr.dsts),
    )
    kernel = kernels.node_kernel(
        node,
        ins,
        outs,
        [False] * len(outs),
        types=types,
        invariants=constants,
        chips={},
        alloc=alloc,
    )
    if spikes is None:
        return kernel
    y = outs[-1]

    def counted(s: list) -> None:
        kernel(s)
        s[TALLY][spikes] += np.count_nonzero(s[y])

    return counted


def spiking(instr: VectorOp) -> bool:
    """Whether the instruction's last result is spikes: a step, or an SNU update with
    ``h = step``."""
    attrs = dict(instr.attrs)
    return instr.opcode == "step" or (instr.opcode == "snu" and attrs.get("h") == "step")


# --------------------------------------------------------------------------- transfers


def copy_kernel(
    src: int, dst: int, src_window: tuple[int, int] | None, dst_window: tuple[int, int] | None
) -> Kernel:
    """Copy ``src`` (or the window ``[lo, hi)`` of its last axis) into ``dst`` (or its
    window): a buffer into a message, a message into a buffer, or a buffer into one of
    another unit."""
    if src_window is None and dst_window is None:

        def whole(s: list) -> None:
            np.copyto(s[dst], s[src])

        return whole
    take = slice(*src_window) if src_window is not None else slice(None)
    put = slice(*dst_window) if dst_window is not None else slice(None)

    def part(s: list) -> None:
        np.copyto(s[dst][..., put], s[src][..., take])

    return part


def record_kernel(value: int, row: int) -> Kernel:
    """Keep an output's value of the step: ``row = value``."""

    def record(s: list) -> None:
        np.copyto(s[row], s[value])

    return record


def operand_type(block: Block, name: str) -> TensorType:
    """The declared type of a name the block reads."""
    for decl in block.decls:
        if decl.name == name and decl.type is not None:
            return decl.type
    raise KeyError(name)
