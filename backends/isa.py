"""Programs of the modelled chip: tiles, blocks and their structural rules (docs/isa.md).

A :class:`Program` is one timestep of a model, modulo scheduled: one :class:`Block` per
unit (a core or a chip's GDU) holding its buffer declarations and its instructions
(:mod:`snuc.ir.machine_isa`), each with the cycle at which it starts within the timestep.
Timestep t runs an instruction starting at cycle c at ``t * ii + c``, so the steps overlap
in a pipeline. An instruction tagged ``(K, j)`` runs only at the timesteps t with
``t mod K == j``: the work of copy j of a duplicated tile (docs/isa.md "Tile
duplication").

This module owns the program's structure: a program checks on construction that every
name it uses is declared (tiles, units, buffers, matching ``send`` and ``recv``), and
:meth:`Block.resolve` follows a name through the block's states to what holds its value
(the one place states are resolved). The timing is checked by
:func:`snuc.backends.timing.verify_timing`; the cycles and energy of each instruction come
from the target through :mod:`snuc.ir.machine`, so the program and the schedule it was
emitted from agree.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from snuc.ir.errors import SnucError, VerifyError
from snuc.ir.machine import CORE, DIGITAL_OPS, GDU, Unit, check_unit
from snuc.ir.machine_isa import (
    NAME,
    Adc,
    Instruction,
    Mvm,
    Recv,
    Send,
    Sync,
    VectorOp,
    busy_cycles,
    check_int,
    check_ref,
    energy_pj_per_timestep,
)
from snuc.ir.target import TargetSpec
from snuc.ir.types import TensorType

# The instruction classes are re-exported: a program is read as blocks of them.
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
    "Resolved",
    "Send",
    "Sync",
    "Tile",
    "Unit",
    "VectorOp",
]


class ProgramError(SnucError):
    """A program breaks a rule of docs/isa.md.

    Attributes:
        item: the tile, block, declaration or instruction at fault (None: the program), so
            that the assembly parser can name its line and column.
    """

    def __init__(self, message: str, item: object = None) -> None:
        super().__init__(message)
        self.item = item


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
        check_int(self.number, "tile number", 0)
        check_int(self.copy_of, f"tile {self.number} copy_of", -1)
        check_int(self.copy, f"tile {self.number} copy", 0)
        if (self.copy_of >= 0) != (self.copy >= 1):
            raise VerifyError(
                f"tile {self.number}: a copy has copy_of >= 0 and copy >= 1, any other tile "
                f"neither; got copy_of = {self.copy_of}, copy = {self.copy}"
            )
        if not (isinstance(self.weight, str) and NAME.fullmatch(self.weight)):
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
            check_int(getattr(self, name), f"tile {self.number} {name}", 0)
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
        check_ref(self.name, _DECL_SIGILS[self.kind], f"{self.kind} name")
        if self.kind == "output" and self.type is not None:
            raise VerifyError(f"output {self.name} takes no type")
        if self.kind != "output" and not isinstance(self.type, TensorType):
            raise VerifyError(f"{self.kind} {self.name}: type must be a TensorType")
        if self.kind == "state":
            check_ref(self.next, "%@", f"state {self.name} next value")
        elif self.next:
            raise VerifyError(f"{self.kind} {self.name} cannot have a next value")
        check_int(self.copies, f"{self.kind} {self.name} copies", 1)
        if self.copies != 1 and self.kind != "buf":
            raise VerifyError(f"only a buf has copies, not {self.kind} {self.name}")


def _decl_rank(decl: Decl) -> int:
    return DECL_KINDS.index(decl.kind)


@dataclass(frozen=True)
class Resolved:
    """What a name a block reads holds at timestep t: ``name``'s value of step t - distance.

    Attributes:
        kind: ``"buf"`` (a buffer an instruction of the block writes), ``"input"`` (a
            sequence input, GDU 0), ``"const"`` (a constant) or ``"zero"`` (a state that
            only ever holds zeros: a loop of states).
        name: the buffer, input or constant (with its sigil).
        distance: timesteps back (through states); before the first, the value is zeros.
    """

    kind: str
    name: str
    distance: int = 0


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

    @functools.cached_property
    def _holders(self) -> dict[str, Decl]:
        """The declarations that hold values (every kind but outputs), by name: made once,
        so that resolving every operand of a block costs time linear in its size."""
        return {d.name: d for d in self.decls if d.kind != "output"}

    def resolve(self, name: str) -> Resolved:
        """Follow ``name`` through the block's states to what holds its value."""
        decls = self._holders
        distance = 0
        seen: set[str] = set()
        while name in decls and decls[name].kind == "state":
            if name in seen:
                return Resolved("zero", name, distance)
            seen.add(name)
            name = decls[name].next
            distance += 1
        decl = decls.get(name)
        return Resolved(decl.kind if decl is not None else "const", name, distance)


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
        if not (isinstance(self.name, str) and NAME.fullmatch(self.name)):
            raise ProgramError(f"program name {self.name!r} is not a name")
        if not isinstance(self.target, TargetSpec):
            raise ProgramError("program target must be a TargetSpec")
        try:
            check_int(self.ii, "ii", 1)
            check_int(self.latency_cycles, "latency", 0)
            check_int(self.lower_bound, "lower_bound", 1)
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
        return busy_cycles(self.instructions(), self.target, self.duplicate)

    def energy_pj_per_timestep(self) -> dict[str, float]:
        """Energy of one timestep (batch 1): ``total`` and each component (a tagged
        instruction counts 1/K)."""
        return energy_pj_per_timestep(self.instructions(), self.target)


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
                if feeds(w.tag, instr.tag, 0)
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
            found = block.resolve(operand)
            if found.kind != "buf" or k == 1:
                continue
            name, distance = found.name, found.distance
            written = {j for w in writers[name] for j in tag_steps(w.tag, k)}
            needed = {(j - distance) % k for j in tag_steps(instr.tag, k)}
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
                found = dst.resolve(name)
                if found.kind != "buf" or found.name != send.value:
                    continue
                tile = tiles.get(instr.tile) if isinstance(instr, Mvm) else None
                if tile is None or not lo <= tile.rows[0] < tile.rows[1] <= hi:
                    raise self.fail(
                        send,
                        f"{at} moves only [{lo}, {hi}] of {send.value}, but "
                        f"{instr.mnemonic} at cycle {instr.start} in {send.dst} reads more",
                    )


def tag_steps(tag: tuple[int, int] | None, k: int) -> Iterable[int]:
    """The timesteps mod ``k`` at which an instruction of ``tag`` runs."""
    return range(k) if tag is None else (tag[1],)


def _disjoint(a: tuple[int, int] | None, b: tuple[int, int] | None) -> bool:
    """Whether instructions of tags ``a`` and ``b`` never run at one timestep."""
    return a is not None and b is not None and a[1] != b[1]


def feeds(writer: tuple[int, int] | None, reader: tuple[int, int] | None, distance: int) -> bool:
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
