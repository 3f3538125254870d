"""The modelled chip's instruction set: instructions, blocks and programs (docs/isa.md).

A :class:`Program` is one timestep of a model, modulo scheduled: one :class:`Block` per
unit (a core or a chip's GDU) holding its buffer declarations and its instructions, each
with the cycle at which it starts within the timestep. Timestep t runs an instruction
starting at cycle c at ``t * ii + c``, so the steps overlap in a pipeline. Every
instruction names the buffers it writes and reads (``%v`` a value, ``@c`` a constant,
``$v`` the ADC codes of the tile computing ``%v``), so a simulator can execute it. An
instruction tagged ``(K, j)`` runs only at the timesteps t with ``t mod K == j``: the work
of copy j of a duplicated tile (docs/isa.md "Tile duplication").

Instructions are frozen dataclasses that check their fields when built; a program checks
on construction that every name it uses is declared (tiles, units, buffers, matching
``send`` and ``recv``). :meth:`Program.verify_schedule` checks the timing: no resource
runs two instructions at once in the repeating pattern, every operand is ready when read,
and every buffer has enough copies for the timesteps in flight. The cycles and energy of
each instruction come from the target, through the cost model of
``snuc.passes.schedule``, so the program and the schedule it was emitted from agree.
"""

from __future__ import annotations

import functools
import math
import re
import typing
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import ClassVar

from snuc.ir.errors import SnucError, VerifyError
from snuc.ir.ops import REGISTRY, Op
from snuc.ir.target import TargetSpec
from snuc.ir.types import BATCH, TensorType
from snuc.passes.schedule import (
    CORE,
    DIGITAL_OPS,
    ENERGY_COMPONENTS,
    FREE,
    GDU,
    Cost,
    Unit,
    check_unit,
    digital_cost,
    fixed_ops,
    mvm_cost,
    transfer_cost,
)

__all__ = [
    "CORE",
    "DIGITAL_OPS",
    "GDU",
    "Adc",
    "Block",
    "Decl",
    "Instruction",
    "Mvm",
    "Program",
    "ProgramError",
    "Recv",
    "Send",
    "Sync",
    "Tile",
    "Unit",
    "VectorOp",
    "attr_noun",
    "attr_types",
]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


class ProgramError(SnucError):
    """A program breaks a rule of docs/isa.md.

    Attributes:
        item: the tile, block, declaration or instruction at fault (None: the program), so
            that the assembly parser can name its line and column.
    """

    def __init__(self, message: str, item: object = None) -> None:
        super().__init__(message)
        self.item = item


def _check_ref(ref: object, sigils: str, what: str) -> None:
    """Raise VerifyError unless ``ref`` is a sigil from ``sigils`` and an IR name."""
    if not (isinstance(ref, str) and ref[:1] in sigils and _NAME.fullmatch(ref[1:])):
        wanted = " or ".join(f"{s}name" for s in sigils)
        raise VerifyError(f"{what} must be {wanted}, got {ref!r}")


def _check_int(value: object, what: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise VerifyError(f"{what} must be an int >= {minimum}, got {value!r}")


# --------------------------------------------------------------------------- instructions


@dataclass(frozen=True)
class Instruction:
    """Base of every instruction.

    Attributes:
        start: the cycle it starts at, counted from the start of its timestep.
        tag: ``(K, j)``: it runs only at timesteps t with ``t mod K == j`` (the work of
            copy j of a duplicated tile; ``when t mod K = j`` in the assembly); None: at
            every timestep. A keyword argument.
    """

    MNEMONIC: ClassVar[str] = ""

    start: int
    tag: tuple[int, int] | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        _check_int(self.start, f"{self.MNEMONIC or 'instruction'} start cycle", 0)
        if self.tag is not None:
            tag = tuple(self.tag)
            object.__setattr__(self, "tag", tag)
            if not (
                len(tag) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in tag)
                and tag[0] >= 2
                and 0 <= tag[1] < tag[0]
            ):
                raise VerifyError(
                    f"{self.MNEMONIC or 'instruction'} runs at t mod K = j with K >= 2 and "
                    f"0 <= j < K, got {tag}"
                )
        self.check()

    def runs_at(self, step: int) -> bool:
        """Whether it runs at timestep ``step`` (all of them when untagged)."""
        return self.tag is None or step % self.tag[0] == self.tag[1]

    def check(self) -> None:
        """Check the fields; raise VerifyError. Default: nothing more to check."""

    @property
    def mnemonic(self) -> str:
        return self.MNEMONIC

    @property
    def results(self) -> tuple[str, ...]:
        """Buffers it writes on its unit."""
        return ()

    @property
    def operands(self) -> tuple[str, ...]:
        """Buffers it reads on its unit."""
        return ()

    def cost(self, target: TargetSpec, unit: Unit) -> Cost:
        """Its cycles, latency, energy and resource reservations when run on ``unit``."""
        return FREE


@dataclass(frozen=True)
class Mvm(Instruction):
    """``mvm $y = %x {tile, rows, phases, vectors}``: the tile's crossbar MVM.

    Drives the tile's ``rows`` rows with ``x`` through the DACs, ``phases`` times per
    input vector (1 for spikes; ``input_phases`` for multi-bit inputs), for each of
    ``vectors`` input vectors (one per batch entry; a convolution's patches), and leaves
    the ADC codes of the tile's columns in ``$y``.
    """

    MNEMONIC: ClassVar[str] = "mvm"

    result: str
    operand: str
    tile: int
    rows: int
    phases: int = 1
    vectors: int = 1

    def check(self) -> None:
        _check_ref(self.result, "$", "mvm result")
        _check_ref(self.operand, "%@", "mvm operand")
        _check_int(self.tile, "mvm tile", 0)
        for name in ("rows", "phases", "vectors"):
            _check_int(getattr(self, name), f"mvm {name}", 1)

    @property
    def results(self) -> tuple[str, ...]:
        return (self.result,)

    @property
    def operands(self) -> tuple[str, ...]:
        return (self.operand,)

    def cost(self, target: TargetSpec, unit: Unit) -> Cost:
        return mvm_cost(target, unit.index, self.rows, self.phases, self.vectors)


@dataclass(frozen=True)
class Adc(Instruction):
    """``adc %y = $y {tile, n}``: read the tile's ADC codes out into values.

    ``y = code * adc_range / (2**(adc_bits-1) - 1) * s_j * alpha`` for each of the ``n``
    elements (per-column digital scale ``s_j``, drift compensation ``alpha``), on the
    digital unit of the block: the tile's core's LDU, or the unit the codes were sent to.
    """

    MNEMONIC: ClassVar[str] = "adc"

    result: str
    operand: str
    tile: int
    n: int

    def check(self) -> None:
        _check_ref(self.result, "%", "adc result")
        _check_ref(self.operand, "$", "adc operand")
        _check_int(self.tile, "adc tile", 0)
        _check_int(self.n, "adc n", 1)

    @property
    def results(self) -> tuple[str, ...]:
        return (self.result,)

    @property
    def operands(self) -> tuple[str, ...]:
        return (self.operand,)

    def cost(self, target: TargetSpec, unit: Unit) -> Cost:
        return digital_cost(target, unit, self.n, 1)


@dataclass(frozen=True)
class VectorOp(Instruction):
    """``<opcode> %r, ... = %a, @c, ... {<IR attributes>, n, ops}``: digital vector work.

    ``opcode`` is a key of :data:`DIGITAL_OPS`; the instruction computes that entry's IR
    op with the attributes ``attrs`` from the buffers ``srcs`` into ``dsts``, over ``n``
    elements per batch entry, in ``ops`` passes (operations per element).
    """

    opcode: str
    dsts: tuple[str, ...]
    srcs: tuple[str, ...]
    n: int
    ops: int
    attrs: tuple[tuple[str, object], ...] = ()

    def check(self) -> None:
        info = DIGITAL_OPS.get(self.opcode)
        if info is None:
            raise VerifyError(
                f"unknown instruction {self.opcode!r}; expected mvm, adc, send, recv, sync "
                f"or one of {', '.join(DIGITAL_OPS)}"
            )
        cls = REGISTRY[info.ir_name]
        object.__setattr__(self, "dsts", tuple(self.dsts))
        object.__setattr__(self, "srcs", tuple(self.srcs))
        for r in self.dsts:
            _check_ref(r, "%", f"{self.opcode} result")
        for o in self.srcs:
            _check_ref(o, "%@", f"{self.opcode} operand")
        lo, hi = cls.OPERANDS
        if len(self.srcs) < lo or (hi is not None and len(self.srcs) > hi):
            want = f"{lo}" if lo == hi else f"{lo} or more"
            raise VerifyError(f"{self.opcode} takes {want} operands, got {len(self.srcs)}")
        if len(self.dsts) != cls.RESULTS:
            raise VerifyError(f"{self.opcode} has {cls.RESULTS} results, got {len(self.dsts)}")
        object.__setattr__(self, "attrs", _normalized_attrs(self.opcode, cls, self.attrs))
        _check_int(self.n, f"{self.opcode} n", 0)
        _check_int(self.ops, f"{self.opcode} ops", 0)
        expected = fixed_ops(self.opcode, dict(self.attrs))
        if expected is not None and self.ops != expected:
            raise VerifyError(f"{self.opcode} takes {expected} ops per element, got {self.ops}")
        if expected is None and self.ops < 1:
            raise VerifyError(f"{self.opcode} ops must be >= 1, got {self.ops}")

    @property
    def mnemonic(self) -> str:
        return self.opcode

    @property
    def results(self) -> tuple[str, ...]:
        return self.dsts

    @property
    def operands(self) -> tuple[str, ...]:
        return self.srcs

    def ir_op(self) -> Op:
        """The IR op the instruction computes."""
        return REGISTRY[DIGITAL_OPS[self.opcode].ir_name](**dict(self.attrs))

    def cost(self, target: TargetSpec, unit: Unit) -> Cost:
        return digital_cost(target, unit, self.n, self.ops)


@dataclass(frozen=True)
class Send(Instruction):
    """``send %v -> <unit> {bytes[, window]}``: stream a buffer to another unit.

    Holds each link of the route for ``ceil(bytes / noc_bytes_per_cycle)`` cycles; the
    destination's ``recv`` of the same buffer starts when the last byte arrives. With a
    ``window = [lo, hi]`` only elements ``lo:hi`` of the last axis move: the rows that
    the destination's crossbar tiles read, and nothing else there may read the buffer.
    """

    MNEMONIC: ClassVar[str] = "send"

    value: str
    dst: Unit
    nbytes: int
    window: tuple[int, int] | None = None

    def check(self) -> None:
        _check_ref(self.value, "%$", "send operand")
        if not isinstance(self.dst, Unit):
            raise VerifyError(f"send destination must be a Unit, got {self.dst!r}")
        _check_int(self.nbytes, "send bytes", 1)
        if self.window is not None:
            window = tuple(self.window)
            object.__setattr__(self, "window", window)
            if not (
                len(window) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in window)
                and 0 <= window[0] < window[1]
            ):
                raise VerifyError(f"send window must be [lo, hi] with 0 <= lo < hi, got {window}")

    @property
    def operands(self) -> tuple[str, ...]:
        return (self.value,)

    def cost(self, target: TargetSpec, unit: Unit) -> Cost:
        return transfer_cost(target, unit, self.dst, self.nbytes)


@dataclass(frozen=True)
class Recv(Instruction):
    """``recv %v <- <unit>``: the buffer sent from ``src`` is complete from this cycle on."""

    MNEMONIC: ClassVar[str] = "recv"

    value: str
    src: Unit

    def check(self) -> None:
        _check_ref(self.value, "%$", "recv result")
        if not isinstance(self.src, Unit):
            raise VerifyError(f"recv source must be a Unit, got {self.src!r}")

    @property
    def results(self) -> tuple[str, ...]:
        return (self.value,)


@dataclass(frozen=True)
class Sync(Instruction):
    """``sync``: a timestep boundary. At cycle ``k * ii`` of step t, step t + k starts;
    the instructions after it (until the next ``sync``) are pipeline stage k."""

    MNEMONIC: ClassVar[str] = "sync"

    def check(self) -> None:
        if self.tag is not None:
            raise VerifyError("sync marks every timestep's boundary; it takes no when t mod K")


# --------------------------------------------------------------------------- IR attributes


_SCALARS = (bool, int, float, str)


def attr_types(cls: type[Op]) -> dict[str, object]:
    """An IR op class's attribute names and types, in declaration order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _normalized_attrs(
    opcode: str, cls: type[Op], attrs: Iterable[tuple[str, object]]
) -> tuple[tuple[str, object], ...]:
    """Every attribute of the IR op, in declaration order, each of its declared type."""
    given = dict(attrs)
    types = attr_types(cls)
    for key in given:
        if key not in types:
            known = ", ".join(types) or "none"
            raise VerifyError(f"{opcode} has no attribute {key!r} (it has: {known})")
    values = {key: _typed(opcode, key, value, types[key]) for key, value in given.items()}
    try:
        op = cls(**values)
    except VerifyError as exc:
        raise VerifyError(f"{opcode}: {exc}") from None
    return tuple(op.attrs().items())


def _typed(opcode: str, key: str, value: object, hint: object) -> object:
    """``value`` as type ``hint`` (an int as a float where a float is declared)."""
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, tuple | list):
            raise VerifyError(f"{opcode} attribute {key} takes a list, got {value!r}")
        element = typing.get_args(hint)[0]
        return tuple(_typed(opcode, key, v, element) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in _SCALARS:
        ok = isinstance(value, hint) and (hint is bool or not isinstance(value, bool))
    else:  # a dimension: an int or the batch
        ok = value == BATCH or (isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise VerifyError(f"{opcode} attribute {key} takes {attr_noun(hint)}, got {value!r}")
    return value


_NOUNS: dict[object, str] = {
    bool: "true or false",
    int: "an int",
    float: "a float",
    str: "a string",
}


def attr_noun(hint: object) -> str:
    """How an error names what an attribute of type ``hint`` takes: ``an int``, ..."""
    return _NOUNS.get(hint, "an int or B")


# --------------------------------------------------------------------------- tiles, blocks


@dataclass(frozen=True)
class Tile:
    """A weight window programmed on a crossbar (the ``xbar.mvm`` of the IR).

    Attributes:
        number: the tile's number, unique in the program.
        weight: the weight constant's name (no sigil); the window is
            ``weight[rows[0]:rows[1], cols[0]:cols[1]]``.
        layer, rows, cols, crossbar, xbar_row, xbar_col, dac, adc_range: as the IR's
            ``xbar.mvm`` attributes: device rows ``rows[1] - rows[0]`` from ``xbar_row``,
            device columns ``2 * devices_per_polarity * (cols[1] - cols[0])`` from
            ``xbar_col``.
        copy_of, copy: a copy of a duplicated tile (docs/isa.md "Tile duplication"):
            the number of the tile it copies, and j >= 1, the timesteps t mod K = j it
            serves. Programmed separately (its own programming noise and drift), its read
            noise is the copied tile's. ``-1, 0``: not a copy.
    """

    number: int
    weight: str
    layer: str
    rows: tuple[int, int]
    cols: tuple[int, int]
    crossbar: int
    xbar_row: int
    xbar_col: int
    dac: tuple[float, float] = (-1.0, 1.0)
    adc_range: float = 0.0
    copy_of: int = -1
    copy: int = 0

    def __post_init__(self) -> None:
        _check_int(self.number, "tile number", 0)
        _check_int(self.copy_of, f"tile {self.number} copy_of", -1)
        _check_int(self.copy, f"tile {self.number} copy", 0)
        if (self.copy_of >= 0) != (self.copy >= 1):
            raise VerifyError(
                f"tile {self.number}: a copy has copy_of >= 0 and copy >= 1, any other tile "
                f"neither; got copy_of = {self.copy_of}, copy = {self.copy}"
            )
        if not (isinstance(self.weight, str) and _NAME.fullmatch(self.weight)):
            raise VerifyError(f"tile {self.number}: weight {self.weight!r} is not a name")
        if not isinstance(self.layer, str):
            raise VerifyError(f"tile {self.number}: layer must be a string")
        for name in ("rows", "cols"):
            window = tuple(getattr(self, name))
            object.__setattr__(self, name, window)
            if len(window) != 2 or not all(isinstance(v, int) for v in window):
                raise VerifyError(f"tile {self.number}: {name} must be two ints")
            if not 0 <= window[0] < window[1]:
                raise VerifyError(
                    f"tile {self.number}: {name} must be (start, stop) with start < stop"
                )
        for name in ("crossbar", "xbar_row", "xbar_col"):
            _check_int(getattr(self, name), f"tile {self.number} {name}", 0)
        dac = tuple(float(v) for v in self.dac)
        object.__setattr__(self, "dac", dac)
        if len(dac) != 2 or not (math.isfinite(dac[0]) and math.isfinite(dac[1])):
            raise VerifyError(f"tile {self.number}: dac must be two finite numbers")
        if not dac[0] < dac[1]:
            raise VerifyError(f"tile {self.number}: dac must be (lo, hi) with lo < hi")
        object.__setattr__(self, "adc_range", float(self.adc_range))
        if not (math.isfinite(self.adc_range) and self.adc_range >= 0):
            raise VerifyError(f"tile {self.number}: adc_range must be finite and >= 0")

    @property
    def core(self) -> Unit:
        return Unit(CORE, self.crossbar)

    def footprint(self, target: TargetSpec) -> tuple[int, int]:
        """Device rows and device columns the tile occupies."""
        return self.rows[1] - self.rows[0], target.devices_per_weight * (
            self.cols[1] - self.cols[0]
        )


DECL_KINDS = ("input", "const", "state", "buf", "output")
"""Declarations in the order a block lists them (outputs after the instructions)."""

_DECL_SIGILS = {"input": "%", "const": "@", "state": "%", "buf": "%$", "output": "%@"}


@dataclass(frozen=True)
class Decl:
    """A name a block declares.

    Attributes:
        kind: ``input`` (a sequence input arriving at the GDU), ``const`` (a constant in
            the unit's memory), ``state`` (holds ``next`` of the previous timestep; zeros
            at the first), ``buf`` (a buffer an instruction or ``recv`` writes) or
            ``output`` (a graph output collected at the GDU).
        name: with its sigil.
        type: its type per timestep (None for an output).
        next: a state's next value (a buffer or constant of the block).
        copies: a buffer's copies: the timesteps whose values it holds at once
            (``ceil(lifetime / ii)``); timestep t uses copy ``t mod copies``.
    """

    kind: str
    name: str
    type: TensorType | None = None
    next: str = ""
    copies: int = 1

    def __post_init__(self) -> None:
        if self.kind not in DECL_KINDS:
            raise VerifyError(f"unknown declaration {self.kind!r}; expected one of {DECL_KINDS}")
        _check_ref(self.name, _DECL_SIGILS[self.kind], f"{self.kind} name")
        if self.kind == "output" and self.type is not None:
            raise VerifyError(f"output {self.name} takes no type")
        if self.kind != "output" and not isinstance(self.type, TensorType):
            raise VerifyError(f"{self.kind} {self.name}: type must be a TensorType")
        if self.kind == "state":
            _check_ref(self.next, "%@", f"state {self.name} next value")
        elif self.next:
            raise VerifyError(f"{self.kind} {self.name} cannot have a next value")
        _check_int(self.copies, f"{self.kind} {self.name} copies", 1)
        if self.copies != 1 and self.kind != "buf":
            raise VerifyError(f"only a buf has copies, not {self.kind} {self.name}")


def _decl_rank(decl: Decl) -> int:
    return DECL_KINDS.index(decl.kind)


@dataclass(frozen=True)
class Block:
    """What one unit holds and runs.

    Attributes:
        unit: the core or GDU.
        decls: its declarations, kept in :data:`DECL_KINDS` order.
        instructions: in program order (the printer's order).
    """

    unit: Unit
    decls: tuple[Decl, ...] = ()
    instructions: tuple[Instruction, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.unit, Unit):
            raise VerifyError(f"block unit must be a Unit, got {self.unit!r}")
        object.__setattr__(self, "decls", tuple(sorted(self.decls, key=_decl_rank)))
        object.__setattr__(self, "instructions", tuple(self.instructions))

    def declared(self, kind: str) -> Iterator[Decl]:
        return (d for d in self.decls if d.kind == kind)


# --------------------------------------------------------------------------- the program


@dataclass(frozen=True)
class Program:
    """One timestep of a model on a chip, modulo scheduled (docs/isa.md).

    Attributes:
        name: the model's name.
        target: the chip: every instruction's cycles and energy follow from it.
        ii: cycles between the starts of two timesteps.
        latency_cycles: from a timestep's start until its last instruction ends.
        lower_bound: the schedule's lower bound on ``ii`` (SPEC §7).
        tiles: the weight windows on the crossbars, by number.
        blocks: one per unit used: GDUs first, then cores, each by index.

    Raises:
        ProgramError: on construction, for a reference to a missing tile, unit, buffer or
            matching ``send``/``recv``, or an instruction on a unit that cannot run it.
    """

    name: str
    target: TargetSpec
    ii: int
    latency_cycles: int
    lower_bound: int
    tiles: tuple[Tile, ...] = ()
    blocks: tuple[Block, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "tiles", tuple(self.tiles))
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if not (isinstance(self.name, str) and _NAME.fullmatch(self.name)):
            raise ProgramError(f"program name {self.name!r} is not a name")
        if not isinstance(self.target, TargetSpec):
            raise ProgramError("program target must be a TargetSpec")
        try:
            _check_int(self.ii, "ii", 1)
            _check_int(self.latency_cycles, "latency", 0)
            _check_int(self.lower_bound, "lower_bound", 1)
        except VerifyError as exc:
            raise ProgramError(f"program @{self.name}: {exc}") from None
        _Checker(self).check()

    @property
    def tile_map(self) -> dict[int, Tile]:
        return {t.number: t for t in self.tiles}

    @functools.cached_property
    def duplicate(self) -> int:
        """K: timesteps take turns between K copies of duplicated tiles (1: no copies)."""
        return max((i.tag[0] for _, i in self.instructions() if i.tag is not None), default=1)

    def block(self, unit: Unit) -> Block:
        for b in self.blocks:
            if b.unit == unit:
                return b
        raise ProgramError(f"program @{self.name} has no block for {unit}")

    def instructions(self) -> Iterator[tuple[Unit, Instruction]]:
        """Every instruction with its unit, block by block."""
        for b in self.blocks:
            for instr in b.instructions:
                yield b.unit, instr

    def busy_cycles(self) -> dict[str, int]:
        """Busy cycles per timestep of every resource used, by name (a tagged instruction,
        which runs at every K-th timestep, counts 1/K; rounded up)."""
        k = self.duplicate
        busy: dict[str, int] = defaultdict(int)
        for unit, instr in self.instructions():
            weight = k if instr.tag is None else 1
            for resource, _, cycles in instr.cost(self.target, unit).reservations:
                busy[resource] += weight * cycles
        return {resource: -(-total // k) for resource, total in busy.items()}

    def energy_pj_per_timestep(self) -> dict[str, float]:
        """Energy of one timestep (batch 1): ``total`` and each component (a tagged
        instruction counts 1/K)."""
        parts = dict.fromkeys(ENERGY_COMPONENTS, 0.0)
        for unit, instr in self.instructions():
            for component, energy in instr.cost(self.target, unit).energy_pj:
                parts[component] += energy if instr.tag is None else energy / instr.tag[0]
        return {"total": sum(parts.values()), **parts}

    def verify_schedule(self) -> None:
        """Check the timing of the program; raise VerifyError naming the first fault.

        * no instruction holds a resource longer than ``ii``, and no two instructions
          hold one resource at the same cycle of the repeating ``ii``-cycle pattern
          (with duplicated tiles, of the ``K * ii``-cycle pattern of K timesteps, in
          which an instruction tagged ``(K, j)`` runs in the j-th ``ii`` cycles only and
          may hold a resource up to ``K * ii`` cycles);
        * every operand is ready when read: after its writer ends in the same timestep,
          or, through a state, ``ii`` cycles per timestep of distance earlier (every
          writer that serves the timestep read);
        * each ``recv`` starts when its ``send``'s last byte arrives;
        * each buffer has copies for all the timesteps whose values it holds at once;
        * ``latency_cycles`` is the end of the last instruction, and
          ``lower_bound <= ii``.
        """
        _check_resources(self)
        for block in self.blocks:
            _check_block_timing(self, block)
        end = max(
            (
                instr.start + instr.cost(self.target, unit).latency
                for unit, instr in self.instructions()
                if not isinstance(instr, Sync)
            ),
            default=0,
        )
        if end != self.latency_cycles:
            raise VerifyError(
                f"program @{self.name} declares latency {self.latency_cycles}, but its last "
                f"instruction ends at cycle {end}"
            )
        if self.lower_bound > self.ii:
            raise VerifyError(
                f"program @{self.name}: ii {self.ii} is below its lower bound {self.lower_bound}"
            )


class _Checker:
    """The structural rules of a program (every reference resolves)."""

    def __init__(self, program: Program) -> None:
        self.p = program
        self.target = program.target
        self.units = {b.unit: b for b in program.blocks}

    def fail(self, item: object, message: str) -> ProgramError:
        return ProgramError(f"program @{self.p.name}: {message}", item)

    def check(self) -> None:
        self.check_tiles()
        self.check_tags()
        seen: set[Unit] = set()
        for block in self.p.blocks:
            if block.unit in seen:
                raise self.fail(block, f"{block.unit} has two blocks")
            seen.add(block.unit)
            try:
                check_unit(block.unit, self.target)
            except SnucError as exc:
                raise self.fail(block, str(exc)) from None
        for block in self.p.blocks:
            self.check_block(block)

    def check_tiles(self) -> None:
        seen: dict[int, Tile] = {}
        by_crossbar: dict[int, list[Tile]] = defaultdict(list)
        for tile in self.p.tiles:
            if tile.number in seen:
                raise self.fail(tile, f"tile {tile.number} is declared twice")
            seen[tile.number] = tile
            try:
                check_unit(tile.core, self.target)
            except SnucError as exc:
                raise self.fail(tile, f"tile {tile.number} is on a crossbar that {exc}") from None
            h, w = tile.footprint(self.target)
            if tile.xbar_row + h > self.target.rows or tile.xbar_col + w > self.target.cols:
                raise self.fail(
                    tile,
                    f"tile {tile.number} ({h} x {w} devices at row {tile.xbar_row}, column "
                    f"{tile.xbar_col}) does not fit a {self.target.rows} x {self.target.cols} "
                    "crossbar",
                )
            for other in by_crossbar[tile.crossbar]:
                if _overlap(tile, other, self.target):
                    raise self.fail(
                        tile,
                        f"tiles {other.number} and {tile.number} overlap on crossbar "
                        f"{tile.crossbar}",
                    )
            by_crossbar[tile.crossbar].append(tile)
        for tile in self.p.tiles:
            if tile.copy_of >= 0:
                self.check_copy(tile, seen.get(tile.copy_of))

    def check_copy(self, tile: Tile, original: Tile | None) -> None:
        """A copy copies a tile that is not a copy itself, with the same window, ranges
        and position (on another crossbar)."""
        if original is None or original.copy_of >= 0:
            raise self.fail(
                tile,
                f"tile {tile.number} is a copy of tile {tile.copy_of}, which is not an "
                "original tile of the program",
            )
        same = ("weight", "layer", "rows", "cols", "xbar_row", "xbar_col", "dac", "adc_range")
        differ = [name for name in same if getattr(tile, name) != getattr(original, name)]
        if differ:
            raise self.fail(
                tile,
                f"tile {tile.number} is a copy of tile {original.number} but differs in "
                f"{', '.join(differ)}",
            )

    def check_tags(self) -> None:
        """Tagged instructions share one K, and every tile with copies has K - 1 (the
        MVM and read-out of copy j run at t mod K = j: :meth:`check_instruction`)."""
        copies: dict[int, list[Tile]] = defaultdict(list)
        for tile in self.p.tiles:
            if tile.copy_of >= 0:
                copies[tile.copy_of].append(tile)
        self.tile_tags: dict[int, tuple[int, int]] = {}
        for number, made in copies.items():
            k = len(made) + 1
            if sorted(t.copy for t in made) != list(range(1, k)):
                raise self.fail(
                    made[0],
                    f"tile {number} has {len(made)} copies, which must be copies 1..{k - 1}",
                )
            self.tile_tags[number] = (k, 0)
            self.tile_tags.update((t.number, (k, t.copy)) for t in made)
        ks = sorted({i.tag[0] for _, i in self.p.instructions() if i.tag is not None})
        self.duplicate = ks[0] if ks else 1
        if len(ks) > 1:
            instr = next(i for _, i in self.p.instructions() if i.tag and i.tag[0] == ks[1])
            raise self.fail(
                instr,
                f"instructions run at t mod {' and t mod '.join(map(str, ks))}; a program "
                "takes one K",
            )

    def check_block(self, block: Block) -> None:
        unit = block.unit
        where = str(unit)
        defined: dict[str, Decl] = {}
        for decl in block.decls:
            if decl.kind in ("input", "output") and unit.kind != GDU:
                raise self.fail(decl, f"{where}: {decl.kind} {decl.name} belongs in a gdu block")
            if decl.kind == "output":
                continue
            if decl.name in defined:
                raise self.fail(decl, f"{where}: {decl.name} is declared twice")
            defined[decl.name] = decl
        writers: dict[str, list[Instruction]] = defaultdict(list)
        tiles = self.p.tile_map
        for instr in block.instructions:
            self.check_instruction(block, instr, tiles)
            for name in instr.operands:
                if name not in defined:
                    raise self.fail(
                        instr,
                        f"{where}: {instr.mnemonic} at cycle {instr.start} reads "
                        f"{name}, which the block does not declare",
                    )
            for name in instr.results:
                decl = defined.get(name)
                if decl is None or decl.kind != "buf":
                    raise self.fail(
                        instr,
                        f"{where}: {instr.mnemonic} at cycle {instr.start} writes "
                        f"{name}; declare it with buf",
                    )
                if any(not _disjoint(instr.tag, w.tag) for w in writers[name]):
                    raise self.fail(instr, f"{where}: {name} is written twice")
                writers[name].append(instr)
        for decl in block.decls:
            if decl.kind == "buf" and not writers[decl.name]:
                raise self.fail(decl, f"{where}: buf {decl.name} is never written")
            if decl.kind == "state" and decl.next not in defined:
                raise self.fail(
                    decl,
                    f"{where}: state {decl.name} takes {decl.next}, which the block "
                    "does not declare",
                )
            if decl.kind == "output" and decl.name not in defined:
                raise self.fail(decl, f"{where}: output {decl.name} is not declared")
        for instr in block.instructions:
            self.check_coverage(block, instr, writers)
            if isinstance(instr, Adc) and not all(
                self.codes_of(w, instr.tile)
                for w in writers[instr.operand]
                if _feeds(w.tag, instr.tag, 0)
            ):
                raise self.fail(
                    instr,
                    f"{where}: adc at cycle {instr.start} reads {instr.operand}, which "
                    f"no mvm of tile {instr.tile} writes and no recv brings from its core",
                )

    def check_coverage(
        self, block: Block, instr: Instruction, writers: Mapping[str, list[Instruction]]
    ) -> None:
        """Each operand is written at every timestep whose value ``instr`` reads (tagged
        writers serve only their own timesteps)."""
        k = self.duplicate
        for operand in instr.operands:
            found = _resolve(block, operand)
            if found is None or k == 1:
                continue
            name, distance = found
            written = {j for w in writers[name] for j in _steps(w.tag, k)}
            needed = {(j - distance) % k for j in _steps(instr.tag, k)}
            if not needed <= written:
                missing = min(needed - written)
                raise self.fail(
                    instr,
                    f"{block.unit}: {instr.mnemonic} at cycle {instr.start} reads {operand}, "
                    f"which nothing writes at timesteps t mod {k} = {missing}",
                )

    def codes_of(self, writer: Instruction | None, tile: int) -> bool:
        """Whether ``writer`` makes ADC codes of ``tile``: its mvm, or a recv from its core."""
        if isinstance(writer, Mvm):
            return writer.tile == tile
        return (
            isinstance(writer, Recv)
            and tile in self.p.tile_map
            and (writer.src == self.p.tile_map[tile].core)
        )

    def check_instruction(
        self, block: Block, instr: Instruction, tiles: Mapping[int, Tile]
    ) -> None:
        unit, where = block.unit, str(block.unit)
        at = f"{where}: {instr.mnemonic} at cycle {instr.start}"
        if isinstance(instr, Mvm | Adc):
            if isinstance(instr, Mvm) and unit.kind != CORE:
                raise self.fail(instr, f"{at}: only a core runs mvm")
            tile = tiles.get(instr.tile)
            if tile is None:
                known = ", ".join(str(t) for t in sorted(tiles)) or "none"
                raise self.fail(
                    instr,
                    f"{at} uses tile {instr.tile}, which the program does not declare "
                    f"(tiles: {known})",
                )
            if isinstance(instr, Mvm) and tile.crossbar != unit.index:
                raise self.fail(
                    instr,
                    f"{at} uses tile {tile.number}, which is on crossbar "
                    f"{tile.crossbar}, not this core's",
                )
            if isinstance(instr, Mvm) and instr.rows != tile.rows[1] - tile.rows[0]:
                raise self.fail(
                    instr,
                    f"{at} drives {instr.rows} rows, but tile {tile.number} has "
                    f"{tile.rows[1] - tile.rows[0]}",
                )
            tag = self.tile_tags.get(tile.number)
            if instr.tag != tag:
                when = "at every timestep" if tag is None else f"when t mod {tag[0]} = {tag[1]}"
                raise self.fail(instr, f"{at} uses tile {tile.number}, which runs {when}")
        elif isinstance(instr, VectorOp):
            if unit.kind == CORE and DIGITAL_OPS[instr.opcode].gdu_only:
                raise self.fail(instr, f"{at}: only a GDU runs {instr.opcode}, not an LDU")
        elif isinstance(instr, Send):
            self.check_peer(instr, unit, instr.dst, Recv, at)
            if instr.window is not None:
                self.check_window(block, instr, at)
        elif isinstance(instr, Recv):
            self.check_peer(instr, unit, instr.src, Send, at)

    def check_peer(self, instr: Send | Recv, unit: Unit, peer: Unit, kind: type, at: str) -> None:
        """A transfer's other end exists and holds exactly one matching instruction."""
        try:
            check_unit(peer, self.target)
        except SnucError as exc:
            raise self.fail(instr, f"{at}: {exc}") from None
        if peer == unit:
            raise self.fail(instr, f"{at} names its own unit")
        if peer not in self.units:
            raise self.fail(instr, f"{at} names {peer}, which has no block in the program")
        matches = [
            other
            for other in self.units[peer].instructions
            if isinstance(other, kind)
            and other.value == instr.value  # type: ignore[attr-defined]
            and (other.dst if kind is Send else other.src) == unit  # type: ignore[attr-defined]
            and other.tag == instr.tag
        ]
        if len(matches) != 1:
            other = "recv" if kind is Recv else "send"
            raise self.fail(
                instr,
                f"{at} needs one matching {other} of {instr.value} in {peer}, found {len(matches)}",
            )

    def check_window(self, block: Block, send: Send, at: str) -> None:
        """A partial send fits its buffer, and only crossbar tiles whose rows it covers
        read the buffer at the destination."""
        lo, hi = send.window  # type: ignore[misc]
        decl = next((d for d in block.decls if d.name == send.value), None)
        shape = decl.type.shape if decl is not None and decl.type is not None else ()
        if not shape or not isinstance(shape[-1], int) or hi > shape[-1]:
            raise self.fail(send, f"{at}: window [{lo}, {hi}] is outside {send.value}")
        tiles = self.p.tile_map
        dst = self.units[send.dst]
        for instr in dst.instructions:
            for name in instr.operands:
                found = _resolve(dst, name)
                if found is None or found[0] != send.value:
                    continue
                tile = tiles.get(instr.tile) if isinstance(instr, Mvm) else None
                if tile is None or not lo <= tile.rows[0] < tile.rows[1] <= hi:
                    raise self.fail(
                        send,
                        f"{at} moves only [{lo}, {hi}] of {send.value}, but "
                        f"{instr.mnemonic} at cycle {instr.start} in {send.dst} reads more",
                    )


def _steps(tag: tuple[int, int] | None, k: int) -> Iterable[int]:
    """The timesteps mod ``k`` at which an instruction of ``tag`` runs."""
    return range(k) if tag is None else (tag[1],)


def _disjoint(a: tuple[int, int] | None, b: tuple[int, int] | None) -> bool:
    """Whether instructions of tags ``a`` and ``b`` never run at one timestep."""
    return a is not None and b is not None and a[1] != b[1]


def _feeds(writer: tuple[int, int] | None, reader: tuple[int, int] | None, distance: int) -> bool:
    """Whether a reader of tag ``reader`` can read, ``distance`` timesteps back, a value
    a writer of tag ``writer`` made."""
    if writer is None or reader is None:
        return True
    return writer[1] == (reader[1] - distance) % reader[0]


def _overlap(a: Tile, b: Tile, target: TargetSpec) -> bool:
    (ah, aw), (bh, bw) = a.footprint(target), b.footprint(target)
    return (
        a.xbar_row < b.xbar_row + bh
        and b.xbar_row < a.xbar_row + ah
        and a.xbar_col < b.xbar_col + bw
        and b.xbar_col < a.xbar_col + aw
    )


# --------------------------------------------------------------------------- timing checks


def _check_resources(program: Program) -> None:
    """The pattern repeats every ``K * ii`` cycles (K timesteps): a tagged instruction
    holds its resources in its own ``ii``-cycle window of it, any other in all K."""
    ii, k = program.ii, program.duplicate
    period = k * ii
    uses: dict[str, list[tuple[int, int, Unit, Instruction]]] = defaultdict(list)
    for unit, instr in program.instructions():
        longest = ii if instr.tag is None else period
        for resource, offset, cycles in instr.cost(program.target, unit).reservations:
            if cycles > longest:
                raise VerifyError(
                    f"{unit}: {instr.mnemonic} at cycle {instr.start} holds {resource} for "
                    f"{cycles} cycles, more than "
                    + (f"ii = {ii}" if instr.tag is None else f"K * ii = {period}")
                )
            for j in _steps(instr.tag, k):
                a = (instr.start + offset + j * ii) % period
                pieces = [(a, min(a + cycles, period))] + (
                    [(0, a + cycles - period)] if a + cycles > period else []
                )
                for lo, hi in pieces:
                    if hi > lo:
                        uses[resource].append((lo, hi, unit, instr))
    for resource, spans in uses.items():
        spans.sort(key=lambda s: (s[0], s[1]))
        for (_, hi, unit_a, a), (lo, _, unit_b, b) in zip(spans, spans[1:], strict=False):
            if lo < hi:
                raise VerifyError(
                    f"{unit_a}: {a.mnemonic} at cycle {a.start} and {unit_b}: {b.mnemonic} at "
                    f"cycle {b.start} both hold {resource} at cycle {lo} of the "
                    f"{period}-cycle pattern"
                )


def _resolve(block: Block, name: str) -> tuple[str, int] | None:
    """The buffer that holds ``name``'s value and how many timesteps earlier it was
    written; None when no instruction writes it (an input, a constant, a state that only
    ever holds zeros)."""
    states = {d.name: d for d in block.declared("state")}
    distance = 0
    seen = set()
    while name in states:
        if name in seen:
            return None
        seen.add(name)
        name = states[name].next
        distance += 1
    if any(d.name == name and d.kind == "buf" for d in block.decls):
        return name, distance
    return None


def buffer_lifetimes(program: Program, block: Block) -> dict[str, int]:
    """Cycles from when each buffer's writer starts (its earliest, for the tagged
    writers of one buffer) until its last reader is done, counting reads in later
    timesteps (through states) as ``ii`` cycles per step."""
    target, unit, ii = program.target, block.unit, program.ii
    first: dict[str, int] = {}
    for instr in block.instructions:
        for r in instr.results:
            first[r] = min(first.get(r, instr.start), instr.start)
    last = dict(first)
    for instr in block.instructions:
        busy = instr.cost(target, unit).cycles
        for operand in instr.operands:
            found = _resolve(block, operand)
            if found is not None:
                name, distance = found
                last[name] = max(last[name], instr.start + ii * distance + busy)
    return {name: last[name] - first[name] for name in first}


def _check_block_timing(program: Program, block: Block) -> None:
    target, unit, ii = program.target, block.unit, program.ii
    writers: dict[str, list[Instruction]] = defaultdict(list)
    for instr in block.instructions:
        for r in instr.results:
            writers[r].append(instr)
    for instr in block.instructions:
        for operand in instr.operands:
            found = _resolve(block, operand)
            if found is None:
                continue
            name, distance = found
            for writer in writers[name]:
                if not _feeds(writer.tag, instr.tag, distance):
                    continue
                ready = writer.start + writer.cost(target, unit).latency - ii * distance
                if instr.start < ready:
                    step = f" of the timestep {distance} before" if distance else ""
                    raise VerifyError(
                        f"{unit}: {instr.mnemonic} at cycle {instr.start} reads {operand}, but "
                        f"{writer.mnemonic} at cycle {writer.start} makes {name}{step} ready "
                        f"only at cycle {ready}"
                    )
        if isinstance(instr, Send):
            recv = next(
                r
                for r in program.block(instr.dst).instructions
                if isinstance(r, Recv)
                and r.value == instr.value
                and r.src == unit
                and r.tag == instr.tag
            )
            arrival = instr.start + instr.cost(target, unit).latency
            if recv.start != arrival:
                raise VerifyError(
                    f"{unit}: send of {instr.value} at cycle {instr.start} arrives at "
                    f"{instr.dst} at cycle {arrival}, but its recv is at cycle {recv.start}"
                )
    lifetimes = buffer_lifetimes(program, block)
    for decl in block.declared("buf"):
        needed = max(1, math.ceil(lifetimes[decl.name] / ii))
        if decl.copies < needed:
            raise VerifyError(
                f"{unit}: buf {decl.name} lives {lifetimes[decl.name]} cycles, so it needs "
                f"{needed} copies at ii = {ii}, not {decl.copies}"
            )
