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
  "codes" buffer holds it and ``adc`` passes it on. ``quantized``/``pcm``: the first three
  stages of the fast tile pipeline shared with the NumPy backend
  (:mod:`snuc.runtime.tile_read`: DAC, column currents in float64 plus read noise, the
  ADC's integer codes) on the programmed tile (:class:`~snuc.runtime.plan_tiles.TileChip`),
  compiled with the kernel's slot reads into one function (one Python call per read).
* ``adc``: the pipeline's last stage, ``y = float32(code * adc_range / (2**(adc_bits-1)
  - 1) * s * alpha)``, compiled likewise.
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
from snuc.ir.graph import Node
from snuc.ir.neurons import NeuronOp
from snuc.ir.types import BATCH, Dim, TensorType
from snuc.runtime import np_fast
from snuc.runtime import plan_kernels as kernels
from snuc.runtime.plan_tiles import TileChip
from snuc.runtime.tile_read import compile_read, row_product, squares, tile_code

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
    """``mvm``: the tile's ADC codes (``float``: its exact product) of the step's input:
    the tile pipeline's ``convert``, ``currents`` and ``codes`` (:mod:`tile_read`) with
    the slot reads and the tally, compiled into one function.

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
        converted: slot of the :class:`~snuc.runtime.tile_read.Workspace` holding the
            tile's converted input (quantized, pcm); tiles that convert the same input
            share it.
        converts: this tile converts the input (else an earlier tile sharing it did).
        work: slot of the tile's :class:`~snuc.runtime.tile_read.Workspace` (quantized,
            pcm).
        noise: slot of the tile's read-noise stream (pcm).
    """
    count = np_fast.count_nonzero
    if chip is None:
        rows = None if tile.rows == (0, x_width) else slice(*tile.rows)
        matmul, dot = np.matmul, np_fast.dot
        by_row = x_dtype is not None and row_product(weight, x_dtype)

        def exact(s: list) -> None:
            window = s[x] if rows is None else s[x][:, rows]
            s[TALLY][tally] += count(window)
            if by_row and window.shape[0] == 1:
                dot(window, weight, s[codes])
            else:
                matmul(window, weight, s[codes])

        return exact
    code = tile_code(chip)
    lines = [f"done = s[{converted}]", "x_q = done.x_q"]
    if squares(chip):
        lines.append("squared = done.squared")
    if converts:
        lines += [f"x = s[{x}]", *code.convert, "done.driven = count(x_q)"]
    lines += [f"s[{TALLY}][{tally}] += done.driven", f"ws = s[{work}]", "current = ws.current"]
    if chip.noisy:
        lines += [
            "spread, spread_flat = ws.spread, ws.spread_flat",
            f"normals = s[{noise}].take(spread_flat.size)",
        ]
    lines += [*code.currents, f"codes = s[{codes}]", *code.codes]
    code.names["count"] = count
    return compile_read(code, "s", lines, f"<tile {chip.tile} mvm>")


def adc_kernel(
    codes: int,
    out: int,
    *,
    chip: TileChip | None,
    scratch: int | None = None,
    gain: int | None = None,
    same_dtype: bool = False,
) -> Kernel:
    """``adc``: values from codes, the tile pipeline's ``values`` stage
    (:mod:`tile_read`) with the slot reads, compiled into one function; float mode: a
    copy.

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
    code = tile_code(chip, assign=same_dtype)
    lines = [f"codes, scratch, gain, out = s[{codes}], s[{scratch}], s[{gain}], s[{out}]"]
    return compile_read(code, "s", [*lines, *code.values], f"<tile {chip.tile} adc>")


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
    """Whether the instruction's last result is spikes: a step, or a neuron model that
    spikes (an SNU with ``h = step``, a LIF)."""
    if instr.opcode == "step":
        return True
    op = instr.ir_op()
    return isinstance(op, NeuronOp) and op.spike_result() is not None


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
