"""The chip's instructions, each with its cost (docs/isa.md "Instructions").

An instruction is a frozen dataclass that checks its fields when built: :class:`Mvm` (a
crossbar MVM), :class:`Adc` (an ADC read-out), :class:`VectorOp` (digital vector work,
one of :data:`~snuc.ir.machine.DIGITAL_OPS`), :class:`Send` and :class:`Recv` (a transfer
and its arrival) and :class:`Sync` (a timestep boundary). Each names the buffers it
writes and reads (``%v`` a value, ``@c`` a constant, ``$v`` the ADC codes of the tile
computing ``%v``), the cycle it starts at within its timestep, an optional ``(K, j)`` tag
(it runs only at timesteps t with ``t mod K == j``), and knows its :meth:`~Instruction.cost`
on a unit, from the target through :mod:`snuc.ir.machine`.

The scheduler emits these objects, the assembly prints and parses them, the program
checks their timing and the simulator executes them. This module also owns the checks of
a vector instruction's IR attributes (:func:`attr_types`, :func:`attr_noun`).
"""

from __future__ import annotations

import re
import typing
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import ClassVar

from snuc.ir.errors import VerifyError
from snuc.ir.machine import (
    DIGITAL_OPS,
    ENERGY_COMPONENTS,
    FREE,
    Cost,
    Unit,
    digital_cost,
    fixed_ops,
    mvm_cost,
    transfer_cost,
    vector_cost,
)
from snuc.ir.ops import Op
from snuc.ir.target import TargetSpec
from snuc.ir.types import BATCH

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def check_ref(ref: object, sigils: str, what: str) -> None:
    """Raise VerifyError unless ``ref`` is a sigil from ``sigils`` and an IR name."""
    if not (isinstance(ref, str) and ref[:1] in sigils and NAME.fullmatch(ref[1:])):
        wanted = " or ".join(f"{s}name" for s in sigils)
        raise VerifyError(f"{what} must be {wanted}, got {ref!r}")


def check_int(value: object, what: str, minimum: int) -> None:
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
        check_int(self.start, f"{self.MNEMONIC or 'instruction'} start cycle", 0)
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
        check_ref(self.result, "$", "mvm result")
        check_ref(self.operand, "%@", "mvm operand")
        check_int(self.tile, "mvm tile", 0)
        for name in ("rows", "phases", "vectors"):
            check_int(getattr(self, name), f"mvm {name}", 1)

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
        check_ref(self.result, "%", "adc result")
        check_ref(self.operand, "$", "adc operand")
        check_int(self.tile, "adc tile", 0)
        check_int(self.n, "adc n", 1)

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
        cls = info.op
        object.__setattr__(self, "dsts", tuple(self.dsts))
        object.__setattr__(self, "srcs", tuple(self.srcs))
        for r in self.dsts:
            check_ref(r, "%", f"{self.opcode} result")
        for o in self.srcs:
            check_ref(o, "%@", f"{self.opcode} operand")
        lo, hi = cls.OPERANDS
        if len(self.srcs) < lo or (hi is not None and len(self.srcs) > hi):
            want = f"{lo}" if lo == hi else f"{lo} or more"
            raise VerifyError(f"{self.opcode} takes {want} operands, got {len(self.srcs)}")
        if len(self.dsts) != cls.RESULTS:
            raise VerifyError(f"{self.opcode} has {cls.RESULTS} results, got {len(self.dsts)}")
        object.__setattr__(self, "attrs", _normalized_attrs(self.opcode, cls, self.attrs))
        check_int(self.n, f"{self.opcode} n", 0)
        check_int(self.ops, f"{self.opcode} ops", 0)
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
        return DIGITAL_OPS[self.opcode].op(**dict(self.attrs))

    def cost(self, target: TargetSpec, unit: Unit) -> Cost:
        return vector_cost(target, unit, self.opcode, self.n, self.ops)


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
        check_ref(self.value, "%$", "send operand")
        if not isinstance(self.dst, Unit):
            raise VerifyError(f"send destination must be a Unit, got {self.dst!r}")
        check_int(self.nbytes, "send bytes", 1)
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
        check_ref(self.value, "%$", "recv result")
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


# --------------------------------------------------------------------------- totals


def busy_cycles(
    placed: Iterable[tuple[Unit, Instruction]], target: TargetSpec, duplicate: int = 1
) -> dict[str, int]:
    """Busy cycles per timestep of every resource the ``(unit, instruction)`` pairs use,
    by name: an instruction tagged to run at every ``duplicate``-th timestep counts
    ``1 / duplicate`` of its cycles; rounded up."""
    busy: dict[str, int] = defaultdict(int)
    for unit, instr in placed:
        weight = duplicate if instr.tag is None else 1
        for resource, _, cycles in instr.cost(target, unit).reservations:
            busy[resource] += weight * cycles
    return {resource: -(-total // duplicate) for resource, total in busy.items()}


def energy_pj_per_timestep(
    placed: Iterable[tuple[Unit, Instruction]], target: TargetSpec
) -> dict[str, float]:
    """Energy of one timestep (batch 1) of the ``(unit, instruction)`` pairs: ``total``
    and each of :data:`~snuc.ir.machine.ENERGY_COMPONENTS` (a tagged instruction counts
    1/K)."""
    parts = dict.fromkeys(ENERGY_COMPONENTS, 0.0)
    for unit, instr in placed:
        for component, energy in instr.cost(target, unit).energy_pj:
            parts[component] += energy if instr.tag is None else energy / instr.tag[0]
    return {"total": sum(parts.values()), **parts}
