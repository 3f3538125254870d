"""The cycle-level simulator backend: runs a compiled program instruction by instruction.

``snuc run --backend sim`` (SPEC §6, §7) executes the artefact's program (docs/isa.md:
one timestep per unit, modulo scheduled) on a simulated chip. Every instruction of
timestep t starts at absolute cycle ``t * ii + start`` and holds its resource (crossbar,
LDU, GDU, network links) for its cost; :func:`~snuc.backends.timing.verify_timing`, the
compiler's one timing check, checks on the repeating pattern that no two instructions
share a resource at once, that every operand is ready when read, that data arrives where
the ``recv`` says, and that no buffer copy is overwritten while still read. The instructions
then run in the order of their absolute cycles, timesteps overlapping as on the chip:
layer k of step t beside layer k + 1 of step t - 1, each buffer in ``copies`` copies
(timestep t uses copy ``t mod copies``), states reading the previous timestep's copy.

Numbers: the simulator computes the same function as the NumPy backend (SPEC §6,
``|Δ| <= 1e-5``) in every mode: it shares the chip (the programmed tiles of
:func:`~snuc.runtime.plan_tiles.program_tiles`: conductances, programming noise, drift,
compensation), the read-noise streams (per tile and sequence, ``pcm.read_rng(seed, tile,
s)``, drawn in the order of ``read_noise_block(seed, tile, (T, B, *out),
offset=offset)``), the converters and
the digital kernels (:mod:`snuc.runtime.sim_ops`). A batch of sequences runs together: every
instruction works on ``[B, ...]`` buffers.

Duplicated tiles (docs/isa.md "Tile duplication"): an instruction tagged ``(K, j)`` runs
only for timesteps t with ``t mod K == j``; each copy of a tile is its own programmed
array (pcm), and the copies of one tile share its read-noise block, each taking the rows
of the timesteps it serves (:meth:`~snuc.runtime.read_noise.NoiseStream.serving`).

Inputs in pieces (:mod:`snuc.runtime.run_state`): a run given the state where a run over
the previous piece stopped reads it where a run from the start reads zeros (each state's
holder before the first timestep), serves its duplicated tiles' copies by global step and
goes on with the read-noise streams; it ends by reading every state back from its holder
(:mod:`snuc.runtime.sim_run`).

Counts (:class:`SimStats`): the timing does not depend on the data, so cycles come from
the timing simulation: a batch is B sequences streamed through the pipeline back to back
(each starting from zero states), ``(B * T - 1) * cycles_per_timestep + latency`` cycles
in all (with duplicated tiles each sequence starts on copy 0, so every sequence but the
last also waits out the rest of its last turn of K timesteps: ``Timing.total_cycles``).
Energy follows activity: an ``mvm`` costs ``phases * energy_mvm_pj / rows`` for every row
it drives with a non-zero input (a row without a spike costs nothing), while read-outs,
vector operations and transfers cost what the target says per element or byte. Spikes
are counted per spiking layer.

Speed: the program is compiled once (:class:`_Compiler`) into a list of kernels with
precomputed slots; :mod:`snuc.runtime.sim_run` runs them, window by window.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

# The runtime reads the chip's program and assembly (backends/isa.py, backends/asm.py)
# and its timing check (backends/timing.py); it emits a program only for a graph that
# comes without one (backends/program.py), and takes transfer routes from the machine.
from snuc.backends.asm import parse_program
from snuc.backends.isa import Block, Program
from snuc.backends.program import compile_program
from snuc.backends.timing import Timing, program_timing
from snuc.ir.crossbar import guaranteed_ranges
from snuc.ir.errors import SnucError, VerifyError
from snuc.ir.graph import Graph, Node
from snuc.ir.machine import GDU, Unit, route
from snuc.ir.machine_isa import Adc, Mvm, Recv, Send, Sync, VectorOp
from snuc.ir.ops import CrossbarMVM
from snuc.ir.target import DEFAULT_TARGET, TargetSpec, parse_target
from snuc.ir.types import Dim, TensorType
from snuc.runtime import sim_ops as ops
from snuc.runtime.config import RunConfig, plan_run_config, run_config, run_target
from snuc.runtime.interpreter import bind_inputs, sequence_extent
from snuc.runtime.plan_tiles import TileChip, program_tiles
from snuc.runtime.run_state import ChunkState, Resumption, RunState, graph_fingerprint
from snuc.runtime.sim_ops import SimOp, Slot, SlotTable
from snuc.runtime.sim_run import (
    Clock,
    Held,
    Kit,
    Output,
    batch_slice,
    held_states,
    join_runs,
    noise_of,
    run_chunk,
)
from snuc.runtime.sim_stats import COMPONENTS, SimStats, format_stats, run_stats
from snuc.runtime.threads import checked_threads
from snuc.runtime.tile_read import Workspace

__all__ = ["SimPlan", "SimStats", "SimulationError", "format_stats", "run_sim"]

# --------------------------------------------------------------------------- the plan


def run_sim(
    graph: Graph,
    inputs: np.ndarray | Mapping[str, np.ndarray],
    config: RunConfig | None = None,
    *,
    target: TargetSpec | str | None = None,
    program: Program | str | None = None,
    progress: bool = False,
    **options: Any,
) -> tuple[dict[str, np.ndarray], SimStats]:
    """Simulate a compiled graph's program over whole sequences.

    Arguments are :meth:`SimPlan.build`'s and :meth:`SimPlan.run`'s.

    Returns:
        The outputs ``[T, B, ...]`` by name (the NumPy backend's, to ``1e-5``) and the
        run's statistics.
    """
    config = run_config(config, options)
    plan = SimPlan.build(graph, config, target=target, program=program)
    return plan.run_with_stats(inputs, config, progress=progress)


@dataclass(frozen=True)
class _Transfer:
    """How a send's data reaches its recv.

    Attributes:
        source: what the recv copies from at its timestep: the send's operand itself
            (read straight from the source when it stays intact until the recv) or the
            message of a ring.
        ring: the name of the ring of messages in flight (None when read straight).
        window: the part of the last axis that moves.
    """

    source: Slot
    ring: str | None
    window: tuple[int, int] | None


class SimPlan:
    """A program compiled for the simulator in one mode on one chip: build once, run often.

    Attributes:
        graph: the compiled graph (its constants, tiles and types).
        program: the program the simulator executes.
        config, target: as the NumPy backend's :class:`~snuc.runtime.numpy_backend.Plan`.
        timing: the measured and checked timing of the program.
        chips: the programmed tiles by tile number (quantized and pcm).
        last_stats: the statistics of the most recent run (None before the first).
    """

    def __init__(
        self,
        graph: Graph,
        program: Program,
        config: RunConfig,
        target: TargetSpec,
        timing: Timing,
        chips: Mapping[int, TileChip],
    ) -> None:
        self.graph = graph
        self.program = program
        self.config = config
        self.target = target
        self.timing = timing
        self.chips = chips
        self.last_stats: SimStats | None = None
        self._layout = _Compiler(graph, program, config.mode, chips).compile()
        self._clock = Clock.of(self._layout)
        self._idle: dict[int, list[Kit]] = {}  # by batch size

    @classmethod
    def build(
        cls,
        graph: Graph,
        config: RunConfig | None = None,
        *,
        target: TargetSpec | str | None = None,
        program: Program | str | None = None,
        **options: Any,
    ) -> SimPlan:
        """Check the options, read (or emit) the program, check its timing, program the chip.

        Args:
            graph: the compiled graph (after ``tile``, ``place`` and ``quantize``).
            config: the mode, the pcm chip and its age, as for
                :func:`snuc.runtime.interpreter.run`; its batch options are :meth:`run`'s
                default.
            target: the chip the graph was compiled for (a TargetSpec or a name); None:
                the program's.
            program: the program: a :class:`Program`, its assembly text (an artefact's
                ``program.s``), or None to schedule the graph and emit it here.
            **options: fields of ``config`` to replace, by name.

        Raises:
            SnucError: a bad mode or option; malformed assembly (a ParseError naming line
                and column) or a program that breaks the rules of docs/isa.md (a tile,
                core or buffer that does not exist); a program that does not fit the
                graph or the target. One line each.
            SimulationError: the program breaks its own timing (an internal error).
        """
        if isinstance(program, str):
            program = parse_program(program, filename="program.s")
        if target is None and isinstance(program, Program):
            target = program.target
        config = run_config(config, options)
        spec = run_target(config, target)
        graph.verify()
        program = _the_program(graph, program, spec)
        spec = program.target
        timing = _checked_timing(program)
        chips: dict[int, TileChip] = {}
        _check_tiles(graph, program)
        if config.mode != "float":
            binary = [v for v, r in guaranteed_ranges(graph).items() if r.binary]
            by_node = program_tiles(
                graph,
                graph.nodes(),
                mode=config.mode,
                target=spec,
                seed=config.seed,
                t_inference_s=config.t_inference_s,
                drift_compensation=config.drift_compensation,
                binary_values=binary,
            )
            chips = _chips_by_tile(graph, by_node)
        return cls(graph, program, config, spec, timing, chips)

    @functools.cached_property
    def fingerprint(self) -> str:
        """The graph's fingerprint (a run state's identity), made once per plan."""
        return graph_fingerprint(self.graph)

    def run(
        self,
        inputs: np.ndarray | Mapping[str, np.ndarray],
        config: RunConfig | None = None,
        *,
        progress: bool = False,
        state: RunState | None = None,
        return_state: bool = False,
        threads: int | None = None,
        **options: Any,
    ) -> Any:
        """Run sequences ``[T, B, ...]``; their statistics go to :attr:`last_stats`.

        Arguments, results and errors are those of the NumPy backend's ``Plan.run``
        (``config`` and ``options``: the batch options; ``progress``, ``state``,
        ``return_state``, ``threads``).
        """
        outputs, _, end = self._run(inputs, config, progress, state, return_state, options, threads)
        return (outputs, end) if return_state else outputs

    def run_with_stats(
        self,
        inputs: np.ndarray | Mapping[str, np.ndarray],
        config: RunConfig | None = None,
        *,
        progress: bool = False,
        threads: int | None = None,
        **options: Any,
    ) -> tuple[dict[str, np.ndarray], SimStats]:
        """:meth:`run`, returning the statistics beside the outputs."""
        return self._run(inputs, config, progress, None, False, options, threads)[:2]

    def _run(
        self,
        inputs: np.ndarray | Mapping[str, np.ndarray],
        config: RunConfig | None,
        progress: bool,
        state: RunState | None,
        return_state: bool,
        options: dict[str, Any],
        threads: int | None = None,
    ) -> tuple[dict[str, np.ndarray], SimStats, RunState | None]:
        from snuc.runtime.numpy_backend import batch_chunks, progress_bar

        threads = checked_threads(threads)
        config = plan_run_config(self.config, config, options)
        batch_size, batch_offset = config.batch_size, config.batch_offset
        feeds = bind_inputs(self.graph, inputs)
        steps, batch = sequence_extent(self.graph, feeds)
        batched = any(self.graph.type_of(n).has_batch for n in feeds)
        chunks = batch_chunks(batch, batch_size, batched)
        resume = Resumption.of_plan(self, config, batch, chunks, state, return_state)
        tally = [0] * len(self._layout.tallies)
        results = []
        ended: dict[int, ChunkState] = {}
        with progress_bar(progress, len(chunks) * steps) as bar:
            for lo, hi in chunks:
                chunk = {n: batch_slice(self.graph, n, a, lo, hi) for n, a in feeds.items()}
                size, offset = hi - lo if batched else 1, batch_offset + lo
                start = resume.start(offset, size)
                split = self.config.mode != "float" and not resume.active  # float: never
                outputs, counts, end = run_chunk(
                    self, chunk, steps, size, split, bar, offset, start, resume.step,
                    threads, return_state,
                )  # fmt: skip
                results.append(outputs)
                tally = [a + b for a, b in zip(tally, counts, strict=True)]
                if return_state:
                    ended[offset] = end
        outputs = join_runs(self.graph, results)
        stats = run_stats(
            self._layout, self.program, self.timing, steps, batch if batched else 1, tally
        )
        self.last_stats = stats
        return outputs, stats, resume.end(steps, ended) if return_state else None


class SimulationError(RuntimeError):
    """The program breaks its own timing (an internal error: programs are verified)."""


def _checked_timing(program: Program) -> Timing:
    """The program's timing, checked by the one timing check of the compiler
    (:func:`~snuc.backends.timing.verify_timing`); a fault is an internal error here."""
    try:
        return program_timing(program)
    except VerifyError as exc:
        raise SimulationError(str(exc)) from None


def _the_program(graph: Graph, program: Program | None, spec: TargetSpec | None) -> Program:
    """The program to run, checked against the target the run asks for."""
    if program is None:
        return compile_program(graph, spec if spec is not None else parse_target(DEFAULT_TARGET))
    if not isinstance(program, Program):
        raise SnucError(f"program must be a Program or assembly text, got {type(program).__name__}")
    if spec is not None and spec.to_dict() != program.target.to_dict():
        raise SnucError(
            f"program @{program.name} was compiled for target {program.target.name}, which "
            f"differs from the run's target {spec.name}; recompile the model for it"
        )
    return program


def _chips_by_tile(graph: Graph, by_node: Mapping[str, TileChip]) -> dict[int, TileChip]:
    """The programmed tiles by tile number, each copy of a duplicated tile by its own
    (quantized mode makes no copies: they would hold the same conductances)."""
    chips: dict[int, TileChip] = {}
    for node in graph.nodes():
        chip = by_node.get(node.id)
        if chip is None:
            continue
        op: CrossbarMVM = node.op  # type: ignore[assignment]
        for j in range(op.duplicates):
            chips[op.copy_tile(j)] = chip.copies[j - 1] if j and chip.copies else chip
    return chips


def _check_tiles(graph: Graph, program: Program) -> None:
    """Every tile of the program is an ``xbar.mvm`` of the graph (or one of its copies)
    with the same window."""
    nodes: dict[int, Node] = {}
    copy_of: dict[int, int] = {}
    for n in graph.nodes():
        if isinstance(n.op, CrossbarMVM):
            nodes[n.op.tile] = n
            for number in n.op.copy_tiles:
                nodes[number] = n
                copy_of[number] = n.op.tile
    for tile in program.tiles:
        node = nodes.get(tile.number)
        if node is None:
            known = ", ".join(str(t) for t in sorted(nodes)) or "none"
            raise SnucError(
                f"program @{program.name} declares tile {tile.number}, which graph "
                f"@{graph.name} does not have (its tiles: {known}); use the artefact's own "
                "program"
            )
        op = node.op
        same = (
            tile.weight == node.inputs[1]
            and tile.rows == tuple(op.rows)
            and tile.cols == tuple(op.cols)
            and tile.dac == tuple(op.dac)
            and tile.adc_range == op.adc_range
            and tile.copy_of == copy_of.get(tile.number, -1)
        )
        if not same:
            raise SnucError(
                f"program @{program.name}: tile {tile.number} differs from the graph's "
                f"xbar.mvm %{node.id} (weight, rows, cols, dac, adc_range or copy_of); use the "
                "artefact's own program"
            )


# --------------------------------------------------------------------------- compiling


@dataclass(frozen=True, eq=False)
class _Layout:
    """A program compiled for runs: what :class:`~snuc.runtime.sim_run.Run` executes and allocates.

    Attributes:
        ops: the instructions' kernels, in their order within a window of ``ii`` cycles.
        slot_count: slots handed out (slot 0 is the tally).
        buffers: the copies, type and dtype of each buffer, by ``(unit, name)``.
        rings: the messages and type of each transfer held in flight, by name.
        outputs: the graph's outputs.
        tallies: what each tally index counts: ``("rows", pJ per driven row)`` of an MVM
            or ``("spikes", (value, neurons))`` of a spiking layer.
        static: accesses and energy per sequence and timestep that do not depend on the
            data, by component.
        mvm_phases: MVM phases per sequence and timestep.
        mvm_rows: rows the MVMs could drive per sequence and timestep.
        duplicate: K: instructions tagged ``(K, j)`` run at timesteps t mod K = j only.
        tagged: by j, the ``static``, ``mvm_phases`` and ``mvm_rows`` of those
            instructions, per sequence and timestep they run at.
        states: where each block's states are held, one :data:`~snuc.runtime.sim_run.Held`
            per state declaration: the state at step t is the holder's value at step
            ``t - distance`` (a run in pieces starts from them and ends in them).
    """

    ops: tuple[SimOp, ...]
    slot_count: int
    buffers: Mapping[tuple[Unit, str], tuple[int, TensorType, np.dtype]]
    rings: Mapping[str, tuple[int, tuple[Dim, ...], np.dtype]]
    outputs: tuple[Output, ...]
    tallies: tuple[tuple[str, Any], ...]
    static: Mapping[str, tuple[int, float]]
    mvm_phases: int
    mvm_rows: int
    duplicate: int = 1
    tagged: Mapping[int, tuple[Mapping[str, tuple[int, float]], int, int]] = field(
        default_factory=dict
    )
    states: tuple[Held, ...] = ()


class _Compiler:
    """Turns a program into the :class:`_Layout` of its runs."""

    def __init__(
        self, graph: Graph, program: Program, mode: str, chips: Mapping[int, TileChip]
    ) -> None:
        self.graph = graph
        self.program = program
        self.target = program.target
        self.mode = mode
        self.chips = chips
        self.table = SlotTable()
        self.ops: list[SimOp] = []
        self.buffers: dict[tuple[Unit, str], tuple[int, TensorType, np.dtype]] = {}
        self.rings: dict[str, tuple[int, tuple[Dim, ...], np.dtype]] = {}
        self.tallies: list[tuple[str, Any]] = []
        self.static = {c: [0, 0.0] for c in COMPONENTS}
        self.mvm_phases = 0
        self.mvm_rows = 0
        # By j: what instructions tagged (K, j) add up to (static, [mvm phases, mvm rows]).
        self.tagged: dict[int, tuple[dict[str, list], list[int]]] = {}
        self.conversions: dict[tuple, int] = {}

    def compile(self) -> _Layout:
        for block in self.program.blocks:
            self.declare(block)
        transfers = self.transfers()
        for b, block in enumerate(self.program.blocks):
            for i, instr in enumerate(block.instructions):
                if not isinstance(instr, Sync):
                    self.instruction(b, block, i, instr, transfers)
        return _Layout(
            ops=tuple(sorted(self.ops, key=lambda op: op.order)),
            slot_count=self.table.count,
            buffers=self.buffers,
            rings=self.rings,
            outputs=tuple(self.outputs()),
            tallies=tuple(self.tallies),
            static={c: (a, e) for c, (a, e) in self.static.items()},
            mvm_phases=self.mvm_phases,
            mvm_rows=self.mvm_rows,
            duplicate=self.program.duplicate,
            tagged={
                j: ({c: (a, e) for c, (a, e) in static.items()}, phases, rows)
                for j, (static, (phases, rows)) in sorted(self.tagged.items())
            },
            states=held_states(self.program),
        )

    def declare(self, block: Block) -> None:
        for decl in block.decls:
            if decl.kind == "buf":
                dtype = self.buffer_dtype(decl.name, decl.type)
                self.buffers[(block.unit, decl.name)] = (decl.copies, decl.type, dtype)
            elif decl.kind == "const" and decl.name[1:] not in self.graph.constants:
                raise SnucError(
                    f"program @{self.program.name}: {block.unit} reads constant {decl.name}, "
                    f"which graph @{self.graph.name} does not have; use the artefact's own "
                    "program"
                )
            elif decl.kind == "input" and decl.name[1:] not in self.graph.inputs:
                raise SnucError(
                    f"program @{self.program.name} takes input {decl.name}, which graph "
                    f"@{self.graph.name} does not; use the artefact's own program"
                )

    def buffer_dtype(self, name: str, type_: TensorType) -> np.dtype:
        """A buffer's dtype: its type's, except for ADC codes (``$v``): the exact products
        in float mode, else float64 holding the integer codes (so a NaN input stays NaN,
        as in the NumPy backend, where an int32 code could not hold it)."""
        if not name.startswith("$"):
            return type_.np_dtype
        if self.mode == "float":
            return self.graph.type_of(name[1:]).np_dtype
        return np.dtype(np.float64)

    # ---------------------------------------------------------------- operands

    def operand(self, block: Block, name: str) -> Slot:
        """What ``name`` holds in ``block`` at timestep t."""
        found = block.resolve(name)
        if found.kind == "buf":
            return Slot("copy", block.unit, found.name, found.distance)
        if found.kind == "input":
            return Slot("feed", name=found.name[1:], distance=found.distance)
        if found.kind == "const":
            value = self.graph.constants[found.name[1:]]
            if found.distance == 0:
                return ops.constant(value)
            return Slot("const", name=found.name[1:], distance=found.distance)
        type_ = next(d.type for d in block.decls if d.name == found.name)
        return ops.fixed(lambda kit: np.zeros(type_.concrete(kit.batch), type_.np_dtype))

    def result(self, block: Block, name: str) -> Slot:
        return Slot("copy", block.unit, name, 0)

    def dtype_of(self, slot: Slot) -> np.dtype | None:
        """The dtype of the arrays ``slot`` holds (None: not known here)."""
        if slot.kind == "copy":
            return self.buffers[(slot.unit, slot.name)][2]
        if slot.kind == "ring":
            return self.rings[slot.name][2]
        if slot.kind == "feed":
            return self.graph.type_of(slot.name).np_dtype
        if slot.kind == "history":  # as Run allocates it
            return next(o.type.np_dtype for o in self.outputs() if o.source == slot.name)
        if slot.kind == "const":
            return self.graph.constants[slot.name].dtype
        return None

    def same_dtype(self, a: Slot, b: Slot) -> bool:
        """Whether two slots are known to hold arrays of one dtype."""
        dtype = self.dtype_of(a)
        return dtype is not None and dtype == self.dtype_of(b)

    def transfers(self) -> dict[tuple[Unit, Unit, str, Any], _Transfer]:
        """How each send reaches its recv: straight from the source buffer when no later
        timestep writes that copy before the recv, else through a ring of messages."""
        ii = self.program.ii
        found = {}
        for block in self.program.blocks:
            first: dict[str, int] = {}  # the earliest write of each buffer
            for i in block.instructions:
                for r in i.results:
                    first[r] = min(first.get(r, i.start), i.start)
            for instr in block.instructions:
                if not isinstance(instr, Send):
                    continue
                latency = instr.cost(self.target, block.unit).latency
                source = self.operand(block, instr.value)
                direct = True
                if source.kind == "copy":
                    copies = self.buffers[(block.unit, source.name)][0]
                    direct = (copies - source.distance) * ii + first[source.name] > (
                        instr.start + latency
                    )
                ring = None
                if not direct:
                    # A message lives ``latency`` cycles; two more leave room for the
                    # next timesteps' messages of this send.
                    ring = f"{block.unit}>{instr.dst}:{instr.value}"
                    if instr.tag is not None:
                        ring += f" when t mod {instr.tag[0]} = {instr.tag[1]}"
                    self.rings[ring] = (latency // ii + 2, *self.message_type(block, instr))
                    source = Slot("ring", name=ring)
                key = (block.unit, instr.dst, instr.value, instr.tag)
                found[key] = _Transfer(source, ring, instr.window)
        return found

    def message_type(self, block: Block, send: Send) -> tuple[tuple[Dim, ...], np.dtype]:
        """The shape and dtype of the messages of ``send`` (its window of the buffer)."""
        decl = next(d for d in block.decls if d.name == send.value)
        shape = decl.type.shape
        if send.window is not None:
            lo, hi = send.window
            shape = (*shape[:-1], hi - lo)
        return shape, self.buffer_dtype(send.value, decl.type)

    # ---------------------------------------------------------------- instructions

    def instruction(
        self,
        b: int,
        block: Block,
        i: int,
        instr: Any,
        transfers: dict[tuple[Unit, Unit, str, Any], _Transfer],
    ) -> None:
        stage, offset = divmod(instr.start, self.program.ii)
        tag = instr.tag
        order = (offset, 1 if isinstance(instr, Recv) else 2, -stage, b, i, 0)
        cost = instr.cost(self.target, block.unit)
        table = self.table
        kernel = None
        if isinstance(instr, Mvm):
            kernel = self.mvm(block, instr)
        elif isinstance(instr, Adc):
            kernel = self.adc(block, instr)
            self.add_static("adc", instr.n, cost.total_energy_pj, tag)
        elif isinstance(instr, VectorOp):
            kernel = self.vector(block, instr)
            component = "gdu" if block.unit.kind == GDU else "ldu"
            self.add_static(component, instr.n * instr.ops, cost.total_energy_pj, tag)
        elif isinstance(instr, Send):
            transfer = transfers[(block.unit, instr.dst, instr.value, tag)]
            if transfer.ring is not None:
                source = self.operand(block, instr.value)
                same = self.same_dtype(source, transfer.source)
                src = table.new(source)
                dst = table.new(transfer.source)
                kernel = ops.copy_kernel(src, dst, transfer.window, None, same)
            path = route(block.unit, instr.dst, self.target)
            for component, energy in cost.energy_pj:
                crossed = path.hops if component == "noc" else path.chip_crossings
                self.add_static(component, instr.nbytes * crossed, energy, tag)
        elif isinstance(instr, Recv):
            transfer = transfers[(instr.src, block.unit, instr.value, tag)]
            result = self.result(block, instr.value)
            same = self.same_dtype(transfer.source, result)
            src = table.new(transfer.source)
            dst = table.new(result)
            direct = transfer.ring is None
            window = transfer.window if direct else None
            kernel = ops.copy_kernel(src, dst, window, transfer.window, same)
        if kernel is not None:
            self.ops.append(SimOp(order, stage, table.take(), kernel, tag))
        for name in instr.results:
            if block.unit == Unit(GDU, 0) and self.is_output(block, name):
                history, result = Slot("history", name=name), self.result(block, name)
                row = table.new(history)
                value = table.new(result)
                kernel = ops.record_kernel(value, row, self.same_dtype(result, history))
                self.ops.append(SimOp((*order[:-1], 1), stage, table.take(), kernel, tag))

    def add_static(
        self, component: str, accesses: int, energy_pj: float, tag: tuple[int, int] | None = None
    ) -> None:
        """Count what an instruction moves or computes per timestep it runs at."""
        static = self.static if tag is None else self.tagged_counts(tag)[0]
        static[component][0] += accesses
        static[component][1] += energy_pj

    def tagged_counts(self, tag: tuple[int, int]) -> tuple[dict[str, list], list[int]]:
        if tag[1] not in self.tagged:
            self.tagged[tag[1]] = ({c: [0, 0.0] for c in COMPONENTS}, [0, 0])
        return self.tagged[tag[1]]

    def mvm(self, block: Block, instr: Mvm) -> ops.Kernel:
        tile = self.program.tile_map[instr.tile]
        x_type = ops.operand_type(block, instr.operand)
        chip = self.chips.get(instr.tile)
        table = self.table
        x_slot = replace(self.operand(block, instr.operand), matrix=True)
        codes_slot = replace(self.result(block, instr.result), matrix=True)
        x, codes = table.new(x_slot), table.new(codes_slot)
        # The simulator's own buffers have rows of unit stride (see ops.row_product).
        own = x_slot.kind == "copy" and self.same_dtype(x_slot, codes_slot)
        x_dtype = self.dtype_of(x_slot) if own else None
        work = noise = converted = None
        converts = True
        weight = None
        if chip is None:
            (r0, r1), (c0, c1) = tile.rows, tile.cols
            weight = np.ascontiguousarray(self.graph.constants[tile.weight][r0:r1, c0:c1])
        else:
            rows_of = _rows_per_step(x_type)
            # Tiles of one stage reading the same rows of one operand through one DAC
            # range convert it once (the first, in program order, runs first).
            same_input = (
                block.unit,
                self.operand(block, instr.operand),
                tile.rows,
                chip.dac,
                chip.binary_input,
                chip.noisy,
                instr.start // self.program.ii,
                instr.tag,
            )
            converted = self.conversions.get(same_input)
            converts = converted is None
            if converts:
                converted = self.conversions[same_input] = table.new(
                    ops.fixed(lambda kit: Workspace(chip, rows_of(kit.batch)))
                )
            work = table.new(ops.fixed(lambda kit: Workspace(chip, rows_of(kit.batch))))
            tag = instr.tag
            if chip.noisy:
                noise = table.new(ops.fixed(noise_of(chip, x_type, rows_of, tag)))
        driven = len(self.tallies)
        per_row = instr.phases * self.target.energy_mvm_pj / self.target.rows
        self.tallies.append(("rows", per_row))
        if instr.tag is None:
            self.mvm_phases += instr.vectors * instr.phases
            self.mvm_rows += instr.vectors * instr.rows
        else:
            counts = self.tagged_counts(instr.tag)[1]
            counts[0] += instr.vectors * instr.phases
            counts[1] += instr.vectors * instr.rows
        return ops.mvm_kernel(
            x,
            codes,
            driven,
            tile=tile,
            x_width=x_type.shape[-1],
            x_dtype=x_dtype,
            chip=chip,
            weight=weight,
            converted=converted,
            converts=converts,
            work=work,
            noise=noise,
        )

    def adc(self, block: Block, instr: Adc) -> ops.Kernel:
        chip = self.chips.get(instr.tile)
        table = self.table
        source, result = self.operand(block, instr.operand), self.result(block, instr.result)
        codes, out = table.new(source), table.new(result)
        if chip is None:
            same = self.same_dtype(source, result)
            return ops.adc_kernel(codes, out, chip=None, same_dtype=same)
        type_ = ops.operand_type(block, instr.result)
        scratch = table.new(ops.fixed(lambda kit: np.empty(type_.concrete(kit.batch))))
        gain = table.new(
            ops.fixed(lambda kit: np.broadcast_to(chip.gain, type_.concrete(kit.batch)).copy())
        )
        cast = np.can_cast(np.float64, type_.np_dtype, "same_kind")
        return ops.adc_kernel(codes, out, chip=chip, scratch=scratch, gain=gain, same_dtype=cast)

    def vector(self, block: Block, instr: VectorOp) -> ops.Kernel:
        table = self.table
        ins = [table.new(self.operand(block, name)) for name in instr.srcs]
        outs = [table.new(self.result(block, name)) for name in instr.dsts]
        types = {d.name[1:]: d.type for d in block.decls if d.type is not None and d.name[0] != "$"}
        constants = {d.name[1:]: self.graph.constants[d.name[1:]] for d in block.declared("const")}
        spikes = None
        if ops.spiking(instr):
            spikes = len(self.tallies)
            value = instr.dsts[-1][1:]
            self.tallies.append(("spikes", (value, types[value].static_size())))
        return ops.vector_kernel(
            instr,
            ins,
            outs,
            types=types,
            constants=constants,
            alloc=ops.Allocator(table),
            spikes=spikes,
        )

    # ---------------------------------------------------------------- outputs

    def is_output(self, block: Block, name: str) -> bool:
        """Whether an output of the block is ``name``'s value (now or through states)."""
        held = [block.resolve(d.name) for d in block.declared("output")]
        return any(h.kind == "buf" and h.name == name for h in held)

    def outputs(self) -> list[Output]:
        """Every graph output: what holds it on GDU 0."""
        block = self.program.block(Unit(GDU, 0))
        declared = [d.name for d in block.declared("output")]
        names = [n[1:] for n in declared]
        if sorted(set(names)) != sorted(set(self.graph.outputs)):
            raise SnucError(
                f"program @{self.program.name} outputs {', '.join(declared) or 'nothing'}, but "
                f"graph @{self.graph.name} outputs "
                f"{', '.join('%' + v for v in self.graph.outputs)}; use the artefact's own "
                "program"
            )
        result = []
        for name in dict.fromkeys(self.graph.outputs):
            ref = next(d for d in declared if d[1:] == name)
            found = block.resolve(ref)
            result.append(
                Output(
                    name,
                    found.kind,
                    found.name,
                    found.distance,
                    self.graph.type_of(name),
                    block.unit,
                )
            )
        return result


def _rows_per_step(x_type: TensorType) -> Any:
    """Rows an MVM reads per timestep at batch b: every vector of its operand."""
    return lambda batch: math.prod(x_type.concrete(batch)[:-1])
