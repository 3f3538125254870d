"""The simulator's clock: when every instruction of every timestep runs, checked cycle by cycle.

A program (docs/isa.md) is one timestep, modulo scheduled: timestep t runs an instruction
that starts at cycle c at absolute cycle ``t * ii + c``. :func:`simulate_timing` lays the
first timesteps of a run out on that absolute time line and checks what the hardware
needs, on every resource and buffer:

* no two reservations of one resource (a crossbar, an LDU, a GDU, a network link) overlap;
* every operand is complete when its reader starts (through a state: the writer of the
  timestep before);
* every ``recv`` is where its ``send``'s last byte arrives;
* no buffer copy is written again (``copies`` of modulo variable expansion) before every
  reader of the value it holds is done.

The timing does not depend on the data, and the pattern repeats every ``ii`` cycles, so
the first few timesteps (enough for every pair of timesteps that can interact) stand for
all of them: a run of any length has the same overlaps, shifted. The measured cycles per
timestep is the time between the completions of consecutive timesteps; the latency the
completion of the first.

With duplicated tiles (docs/isa.md "Tile duplication") an instruction tagged ``(K, j)``
runs only at timesteps t with ``t mod K == j``, and the pattern repeats every K timesteps:
the measured cycles per timestep are then the spacing of completions K timesteps apart,
divided by K, and the latency the longest of K consecutive timesteps'.

A violation is an internal error (:class:`SimulationError`): the compiler emits verified
programs (``Program.verify_schedule``), so only a broken scheduler or a hand-edited
program gets here.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

# The runtime reads the chip's instruction set and its cost model: they are plain data
# and arithmetic on the target (backends/isa.py, passes/schedule.py), not compiler passes.
from snuc.backends.isa import Block, Instruction, Program, Recv, Send, Sync, Unit

__all__ = ["Resolved", "SimulationError", "Timing", "resolve", "simulate_timing"]


class SimulationError(RuntimeError):
    """The program breaks its own timing (an internal error: programs are verified)."""


@dataclass(frozen=True)
class Resolved:
    """What a name a block reads holds at timestep t: ``source``'s value of step t - distance.

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


def resolve(block: Block, name: str) -> Resolved:
    """Follow ``name`` through the block's states to what holds its value."""
    decls = {d.name: d for d in block.decls if d.kind != "output"}
    distance = 0
    seen: set[str] = set()
    while name in decls and decls[name].kind == "state":
        if name in seen:
            return Resolved("zero", name, distance)
        seen.add(name)
        name = decls[name].next
        distance += 1
    decl = decls.get(name)
    kind = decl.kind if decl is not None else "const"
    return Resolved(kind, name, distance)


@dataclass(frozen=True)
class Timing:
    """The measured timing of a program.

    Attributes:
        ii: the program's initiation interval.
        cycles_per_timestep: measured: cycles between the completions of two consecutive
            timesteps in steady state (with duplicated tiles: on average over K).
        latency_cycles: measured: from the start of a timestep to its completion (the
            longest over K consecutive timesteps).
        steps_checked: timesteps laid out and checked.
        busy_cycles: busy cycles per timestep (batch 1) of every resource, by name (a
            tagged instruction counts 1/K; rounded up).
        duplicate: K, the copies duplicated tiles take turns between (1: none).
    """

    ii: int
    cycles_per_timestep: int
    latency_cycles: int
    steps_checked: int
    busy_cycles: dict[str, int]
    duplicate: int = 1

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


@dataclass(frozen=True)
class _Event:
    """One instruction of one timestep on the absolute time line."""

    unit: Unit
    instr: Instruction
    step: int
    start: int
    ready: int  # start + latency: when its results can be used
    done: int  # start + busy cycles: when it stops reading its operands


def horizon(program: Program) -> int:
    """Timesteps enough for every interaction between timesteps: those in flight at once
    (twice, for both sides), the most copies of a buffer and the longest state chain."""
    in_flight = max(1, math.ceil(program.latency_cycles / program.ii))
    copies = max((d.copies for b in program.blocks for d in b.declared("buf")), default=1)
    distance = max(
        (resolve(b, d.name).distance for b in program.blocks for d in b.declared("state")),
        default=0,
    )
    return 2 * in_flight + copies + distance + 2 * program.duplicate


def simulate_timing(program: Program) -> Timing:
    """Lay the first timesteps of ``program`` out in absolute cycles and check them.

    Raises:
        SimulationError: two instructions hold one resource at once, an operand is read
            before it is ready, a ``recv`` is not where its data arrives, or a buffer
            copy is overwritten while still read (module docstring).
    """
    target, ii, k = program.target, program.ii, program.duplicate
    steps = horizon(program)
    events: dict[tuple[Unit, int, int], _Event] = {}
    spans: dict[str, list[tuple[int, int, _Event]]] = defaultdict(list)
    completion = [0] * steps
    busy: dict[str, int] = defaultdict(int)
    for block in program.blocks:
        for index, instr in enumerate(block.instructions):
            if isinstance(instr, Sync):
                continue
            cost = instr.cost(target, block.unit)
            for resource, _, cycles in cost.reservations:
                busy[resource] += cycles * (k if instr.tag is None else 1)
            for t in range(steps):
                if not instr.runs_at(t):
                    continue
                start = t * ii + instr.start
                event = _Event(
                    block.unit, instr, t, start, start + cost.latency, start + cost.cycles
                )
                events[(block.unit, index, t)] = event
                completion[t] = max(completion[t], event.ready)
                for resource, offset, cycles in cost.reservations:
                    if cycles > 0:
                        spans[resource].append((start + offset, start + offset + cycles, event))
    _check_resources(spans)
    for block in program.blocks:
        _check_block(program, block, events, steps)
    gaps = {b - a for a, b in zip(completion, completion[k:], strict=False)}
    if len(gaps) > 1:
        raise SimulationError(
            f"program @{program.name}: timesteps complete at uneven intervals {sorted(gaps)}"
        )
    (gap,) = gaps
    return Timing(
        ii=ii,
        cycles_per_timestep=gap // k,
        latency_cycles=max(completion[t] - t * ii for t in range(k)),
        steps_checked=steps,
        busy_cycles={resource: -(-cycles // k) for resource, cycles in busy.items()},
        duplicate=k,
    )


def _describe(event: _Event) -> str:
    return (
        f"{event.unit}: {event.instr.mnemonic} of timestep {event.step} (cycle "
        f"{event.instr.start}, absolute cycle {event.start})"
    )


def _check_resources(spans: dict[str, list[tuple[int, int, _Event]]]) -> None:
    for resource, held in spans.items():
        held.sort(key=lambda s: (s[0], s[1]))
        for (_, end, a), (start, _, b) in zip(held, held[1:], strict=False):
            if start < end:
                raise SimulationError(
                    f"{_describe(a)} and {_describe(b)} both hold {resource} at absolute "
                    f"cycle {start}"
                )


def _check_block(
    program: Program,
    block: Block,
    events: dict[tuple[Unit, int, int], _Event],
    steps: int,
) -> None:
    unit = block.unit
    writers: dict[str, list[int]] = defaultdict(list)
    for i, instr in enumerate(block.instructions):
        for r in instr.results:
            writers[r].append(i)

    def written(name: str, t: int) -> _Event | None:
        """The write of buffer ``name`` at timestep t (tagged writers take turns)."""
        return next((events[(unit, w, t)] for w in writers[name] if (unit, w, t) in events), None)

    readers: dict[str, list[tuple[int, int]]] = defaultdict(list)  # buffer -> (index, distance)
    for index, instr in enumerate(block.instructions):
        for operand in instr.operands:
            found = resolve(block, operand)
            if found.kind == "buf":
                readers[found.name].append((index, found.distance))
        if isinstance(instr, Send):
            _check_arrival(program, block, index, instr, events, steps)
    for name, reads in readers.items():
        for index, distance in reads:
            for t in range(distance, steps):
                event = events.get((unit, index, t))
                if event is None:
                    continue
                source = written(name, t - distance)
                if source is None:
                    raise SimulationError(
                        f"{_describe(event)} reads {name} of timestep {t - distance}, which "
                        "nothing writes"
                    )
                if event.start < source.ready:
                    raise SimulationError(
                        f"{_describe(event)} reads {name} of timestep {t - distance}, which "
                        f"{source.instr.mnemonic} makes ready only at absolute cycle "
                        f"{source.ready}"
                    )
    for decl in block.declared("buf"):
        copies = decl.copies
        for t in range(copies, steps):
            write = written(decl.name, t)
            if write is None:
                continue
            for index, distance in readers.get(decl.name, ()):
                u = t - copies + distance
                read = events.get((unit, index, u))
                if read is None:  # past the horizon, or not run at timestep u
                    continue
                if read.done > write.start:
                    raise SimulationError(
                        f"{_describe(write)} overwrites copy {t % copies} of {decl.name} "
                        f"(copies {copies}) while {_describe(read)} still reads it until "
                        f"absolute cycle {read.done}"
                    )


def _check_arrival(
    program: Program,
    block: Block,
    index: int,
    send: Send,
    events: dict[tuple[Unit, int, int], _Event],
    steps: int,
) -> None:
    dst = program.block(send.dst)
    (recv_index,) = (
        i
        for i, r in enumerate(dst.instructions)
        if isinstance(r, Recv)
        and r.value == send.value
        and r.src == block.unit
        and r.tag == send.tag
    )
    for t in range(steps):
        if not send.runs_at(t):
            continue
        sent, received = events[(block.unit, index, t)], events[(dst.unit, recv_index, t)]
        if received.start != sent.ready:
            raise SimulationError(
                f"{_describe(sent)} arrives at {dst.unit} at absolute cycle {sent.ready}, "
                f"but its recv is at absolute cycle {received.start}"
            )
