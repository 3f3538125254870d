"""The one timing check of a program, and the timing a verified program runs at.

A program (docs/isa.md) is one timestep, modulo scheduled: timestep t runs an instruction
that starts at cycle c at absolute cycle ``t * ii + c``. :func:`verify_timing` checks what
the hardware needs of that repeating pattern, on every resource and buffer; the scheduler's
self-check (:func:`snuc.backends.program.emit_program`), the tests of loaded assembly and
the simulator (:class:`snuc.runtime.simulator.SimPlan`) all call it:

* no instruction holds a resource longer than ``ii``, and no two instructions hold one
  resource at the same cycle of the repeating ``ii``-cycle pattern (with duplicated tiles,
  of the ``K * ii``-cycle pattern of K timesteps, in which an instruction tagged
  ``(K, j)`` runs in the j-th ``ii`` cycles only and may hold a resource up to
  ``K * ii`` cycles);
* every operand is ready when read: after its writer ends in the same timestep, or,
  through a state, ``ii`` cycles per timestep of distance earlier (every writer that
  serves the timestep read);
* each ``recv`` starts when its ``send``'s last byte arrives;
* each buffer has copies for all the timesteps whose values it holds at once (modulo
  variable expansion: no copy is written again while a reader still needs it);
* ``latency_cycles`` is the end of the last instruction, and ``lower_bound <= ii``.

Checked on the pattern, these hold for every timestep of a run of any length, so a
verified program completes a timestep every ``ii`` cycles (:class:`Timing`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from snuc.backends.isa import Block, Instruction, Program, Recv, Send, Sync, Unit, feeds, tag_steps
from snuc.ir.errors import VerifyError

__all__ = ["Timing", "buffer_lifetimes", "program_timing", "verify_timing"]


@dataclass(frozen=True)
class Timing:
    """The timing of a verified program.

    Attributes:
        ii: the program's initiation interval: cycles between the completions of two
            consecutive timesteps in steady state (with duplicated tiles: on average
            over K).
        latency_cycles: from the start of a timestep to its completion (the longest over
            K consecutive timesteps).
        duplicate: K, the copies duplicated tiles take turns between (1: none).
    """

    ii: int
    latency_cycles: int
    duplicate: int = 1

    @property
    def cycles_per_timestep(self) -> int:
        return self.ii

    def total_cycles(self, steps: int, sequences: int = 1) -> int:
        """Cycles from the first timestep's start to the completion of the last of
        ``sequences`` sequences of ``steps`` timesteps streamed back to back.

        With duplicated tiles every sequence starts on copy 0, so a sequence whose length
        is not a multiple of K leaves the pipeline the remaining timesteps of its turn.
        """
        if steps <= 0 or sequences <= 0:
            return 0
        turns = -(-steps // self.duplicate) * self.duplicate
        slots = (sequences - 1) * turns + steps
        return (slots - 1) * self.cycles_per_timestep + self.latency_cycles


def program_timing(program: Program) -> Timing:
    """Verify ``program``'s timing and return it.

    Raises:
        VerifyError: the program breaks its timing (:func:`verify_timing`).
    """
    verify_timing(program)
    return Timing(program.ii, program.latency_cycles, program.duplicate)


def verify_timing(program: Program) -> None:
    """Check the timing of ``program`` (module docstring); raise VerifyError naming the
    first fault."""
    _check_resources(program)
    for block in program.blocks:
        _check_block(program, block)
    end = max(
        (
            instr.start + instr.cost(program.target, unit).latency
            for unit, instr in program.instructions()
            if not isinstance(instr, Sync)
        ),
        default=0,
    )
    if end != program.latency_cycles:
        raise VerifyError(
            f"program @{program.name} declares latency {program.latency_cycles}, but its last "
            f"instruction ends at cycle {end}"
        )
    if program.lower_bound > program.ii:
        raise VerifyError(
            f"program @{program.name}: ii {program.ii} is below its lower bound "
            f"{program.lower_bound}"
        )


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
            for j in tag_steps(instr.tag, k):
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
            found = block.resolve(operand)
            if found.kind == "buf":
                last[found.name] = max(last[found.name], instr.start + ii * found.distance + busy)
    return {name: last[name] - first[name] for name in first}


def _check_block(program: Program, block: Block) -> None:
    target, unit, ii = program.target, block.unit, program.ii
    writers: dict[str, list[Instruction]] = defaultdict(list)
    for instr in block.instructions:
        for r in instr.results:
            writers[r].append(instr)
    for instr in block.instructions:
        for operand in instr.operands:
            found = block.resolve(operand)
            if found.kind != "buf":
                continue
            name, distance = found.name, found.distance
            for writer in writers[name]:
                if not feeds(writer.tag, instr.tag, distance):
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
