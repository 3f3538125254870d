"""Emit the simulator program of a scheduled graph (SPEC §4, docs/isa.md).

:func:`emit_program` turns a :class:`~snuc.backends.schedule.ModuloSchedule` into a
:class:`~snuc.backends.isa.Program`: one block per unit, with the buffers, constants,
states, inputs and outputs it holds, every scheduled instruction at its start cycle, a
``recv`` on the destination of every ``send``, and a ``sync`` at each timestep boundary
(every ``ii`` cycles). Buffers get the copies their lifetimes need. The program's timing
is the schedule's, instruction for instruction, and checked as it is emitted.
"""

from __future__ import annotations

import math
from dataclasses import replace

from snuc.backends.isa import GDU, Block, Decl, Instruction, Program, Recv, Send, Sync, Tile
from snuc.backends.schedule import ModuloSchedule, schedule_graph
from snuc.backends.timing import buffer_lifetimes, verify_timing
from snuc.ir.errors import SnucError
from snuc.ir.graph import Graph
from snuc.ir.machine import HOST, Unit
from snuc.ir.ops import CrossbarMVM
from snuc.ir.target import TargetSpec
from snuc.ir.types import TensorType


def compile_program(graph: Graph, target: TargetSpec | None) -> Program:
    """Schedule ``graph`` on ``target`` and emit its program."""
    return emit_program(graph, schedule_graph(graph, target))


def emit_program(graph: Graph, schedule: ModuloSchedule) -> Program:
    """The program that runs ``schedule`` (made by ``schedule_graph(graph, ...)``).

    Raises:
        SnucError: ``schedule`` was made for another graph.
        VerifyError: the program breaks its timing (a scheduler bug: the one timing check,
            :func:`~snuc.backends.timing.verify_timing`, checks every emitted program).
    """
    if schedule.graph != graph.name:
        raise SnucError(
            f"the schedule is of graph @{schedule.graph}, not @{graph.name}; schedule the "
            "graph first"
        )
    # Sorted by (start, rank, op index): at one cycle a boundary (rank 0) comes before
    # what starts in the new stage, and an arrival (rank 1) before its use (rank 2).
    instructions: dict[Unit, list[tuple[tuple[int, int, int], Instruction]]] = {HOST: []}
    for op in schedule.ops:
        instructions.setdefault(op.unit, []).append(((op.start, 2, op.index), op.instr))
        if isinstance(op.instr, Send):
            recv = Recv(op.end, op.instr.value, op.unit, tag=op.tag)
            instructions.setdefault(op.instr.dst, []).append(((op.end, 1, op.index), recv))
    boundaries = [k * schedule.ii for k in range(1, schedule.stages + 1)]
    blocks = []
    for unit in sorted(instructions, key=lambda u: (u.kind != GDU, u.index)):
        marks = [((t, 0, -1), Sync(t)) for t in boundaries]
        ordered = [instr for _, instr in sorted(instructions[unit] + marks, key=lambda e: e[0])]
        blocks.append(Block(unit, _declarations(graph, unit, ordered), tuple(ordered)))
    program = Program(
        name=graph.name,
        target=schedule.target,
        ii=schedule.ii,
        latency_cycles=schedule.latency_cycles,
        lower_bound=schedule.cycles_lower_bound,
        tiles=_tiles(graph),
        blocks=tuple(blocks),
    )
    program = _with_copies(program)
    verify_timing(program)  # the scheduler's self-check
    return program


def _tiles(graph: Graph) -> tuple[Tile, ...]:
    """Every tile of the graph and every copy of a duplicated tile, by number."""
    tiles = []
    for node in graph.nodes():
        op = node.op
        if isinstance(op, CrossbarMVM):
            for j in range(op.duplicates):
                tiles.append(
                    Tile(
                        number=op.copy_tile(j),
                        weight=node.inputs[1],
                        layer=op.layer,
                        rows=(op.rows[0], op.rows[1]),
                        cols=(op.cols[0], op.cols[1]),
                        crossbar=op.copy_crossbar(j),
                        xbar_row=op.xbar_row,
                        xbar_col=op.xbar_col,
                        dac=(op.dac[0], op.dac[1]),
                        adc_range=op.adc_range,
                        copy_of=op.tile if j else -1,
                        copy=j,
                    )
                )
    return tuple(sorted(tiles, key=lambda t: t.number))


def _declarations(graph: Graph, unit: Unit, instructions: list[Instruction]) -> tuple[Decl, ...]:
    """What ``unit`` must declare for ``instructions``: the host's inputs and outputs,
    every constant and state read (and the states and constants those take), and a
    buffer per value written."""
    decls: dict[str, Decl] = {}
    if unit == HOST:
        for name in graph.inputs:
            decls[f"%{name}"] = Decl("input", f"%{name}", graph.type_of(name))
    for instr in instructions:
        for name in instr.results:
            decls[name] = Decl("buf", name, _buffer_type(graph, name))
    reads = [name for instr in instructions for name in instr.operands]
    if unit == HOST:
        reads += [_ref(graph, name) for name in graph.outputs]
    for name in reads:  # grows while states bring in their next values
        if name in decls:
            continue
        value = name[1:]
        if graph.is_constant(value):
            decls[name] = Decl("const", name, graph.type_of(value))
        elif graph.is_state(value):
            following = _ref(graph, graph.state(value).next)
            decls[name] = Decl("state", name, graph.type_of(value), next=following)
            reads.append(following)
    outputs = [Decl("output", _ref(graph, name)) for name in graph.outputs] if unit == HOST else []
    return (*decls.values(), *outputs)


def _ref(graph: Graph, value: str) -> str:
    return f"@{value}" if graph.is_constant(value) else f"%{value}"


def _buffer_type(graph: Graph, name: str) -> TensorType:
    """A buffer's type: the value's, or for ADC codes ``$v`` integers of ``%v``'s shape."""
    t = graph.type_of(name[1:])
    return TensorType("i32", t.shape) if name.startswith("$") else t


def _with_copies(program: Program) -> Program:
    """``program`` with every buffer given the copies its lifetime needs."""
    blocks = []
    for block in program.blocks:
        lifetimes = buffer_lifetimes(program, block)
        decls = tuple(
            replace(d, copies=max(1, math.ceil(lifetimes[d.name] / program.ii)))
            if d.kind == "buf"
            else d
            for d in block.decls
        )
        blocks.append(replace(block, decls=decls))
    return replace(program, blocks=tuple(blocks))
