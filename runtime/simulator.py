"""The cycle-level simulator backend: runs a compiled program instruction by instruction.

``snuc run --backend sim`` (SPEC §6, §7) executes the artefact's program (docs/isa.md:
one timestep per unit, modulo scheduled) on a simulated chip. Every instruction of
timestep t starts at absolute cycle ``t * ii + start`` and holds its resource (crossbar,
LDU, GDU, network links) for its cost; :func:`~snuc.runtime.sim_timing.simulate_timing`
lays the timesteps out on that time line and checks that no two instructions share a
resource at once, that every operand is ready when read, that data arrives where the
``recv`` says, and that no buffer copy is overwritten while still read. The instructions
then run in the order of their absolute cycles, timesteps overlapping as on the chip:
layer k of step t beside layer k + 1 of step t - 1, each buffer in ``copies`` copies
(timestep t uses copy ``t mod copies``), states reading the previous timestep's copy.

Numbers: the simulator computes the same function as the NumPy backend (SPEC §6,
``|Δ| <= 1e-5``) in every mode: it shares the chip (the programmed tiles of
:func:`~snuc.runtime.plan_tiles.program_tiles`: conductances, programming noise, drift,
compensation), the read-noise streams (each tile's ``(seed, tile)`` stream, or for a chunk
of a batch that does not start at its first sequence ``(seed, tile, offset)``, drawn in the
order of ``read_noise_block(seed, tile, (T, *out), offset=offset)``), the converters and
the digital kernels (:mod:`snuc.runtime.sim_ops`). A batch of sequences runs together: every
instruction works on ``[B, ...]`` buffers.

Duplicated tiles (docs/isa.md "Tile duplication"): an instruction tagged ``(K, j)`` runs
only for timesteps t with ``t mod K == j``; each copy of a tile is its own programmed
array (pcm), and the copies of one tile share its read-noise block, each taking the rows
of the timesteps it serves (:meth:`~snuc.runtime.read_noise.NoiseStream.serving`).

Counts (:class:`SimStats`): the timing does not depend on the data, so cycles come from
the timing simulation: a batch is B sequences streamed through the pipeline back to back
(each starting from zero states), ``(B * T - 1) * cycles_per_timestep + latency`` cycles
in all (with duplicated tiles each sequence starts on copy 0, so every sequence but the
last also waits out the rest of its last turn of K timesteps: ``Timing.total_cycles``).
Energy follows activity: an ``mvm`` costs ``phases * energy_mvm_pj / rows`` for every row
it drives with a non-zero input (a row without a spike costs nothing), while read-outs,
vector operations and transfers cost what the target says per element or byte. Spikes
are counted per spiking layer.

Speed: the program is compiled once into a list of kernels with precomputed slots; the
time loop walks windows of ``ii`` cycles, each running the kernels whose timestep is in
flight, with their buffers bound once per pattern of copies (the steady state repeats).
The arrays and bindings of a run at one batch size are kept by the plan for its next run
(:class:`_Kit`), so a run allocates only its outputs; the timing is checked once, when
the plan is built (it does not depend on the data).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

# The runtime reads the chip's instruction set and assembly: plain data and parsing
# (backends/isa.py, backends/asm.py); it emits a program only for a graph that comes
# without one (backends/program.py), and takes transfer routes from the cost model.
from snuc.backends.asm import parse_program
from snuc.backends.isa import GDU, Adc, Block, Mvm, Program, Recv, Send, Sync, Unit, VectorOp
from snuc.backends.program import compile_program
from snuc.ir.crossbar import guaranteed_ranges
from snuc.ir.errors import SnucError
from snuc.ir.graph import Graph, Node
from snuc.ir.ops import CrossbarMVM
from snuc.ir.target import DEFAULT_TARGET, TargetSpec, parse_target
from snuc.ir.types import BATCH, Dim, TensorType
from snuc.passes.schedule import route
from snuc.runtime import sim_ops as ops
from snuc.runtime.interpreter import (
    bind_inputs,
    check_batch_offset,
    check_run_options,
    sequence_extent,
)
from snuc.runtime.plan_tiles import TileChip, program_tiles
from snuc.runtime.read_noise import NoiseStream
from snuc.runtime.sim_ops import SimOp, Slot, SlotTable
from snuc.runtime.sim_stats import COMPONENTS, EnergyRow, LayerSpikes, SimStats, format_stats
from snuc.runtime.sim_timing import Timing, resolve, simulate_timing
from snuc.runtime.tile_read import Workspace

__all__ = ["SimPlan", "SimStats", "format_stats", "run_sim"]

_PROGRESS_EVERY = 32
"""Windows between updates of the progress bar."""

# --------------------------------------------------------------------------- the plan


def run_sim(
    graph: Graph,
    inputs: np.ndarray | Mapping[str, np.ndarray],
    *,
    mode: str = "float",
    target: TargetSpec | str | None = None,
    seed: int = 0,
    t_inference_s: float = 3600.0,
    drift_compensation: str | None = "global",
    program: Program | str | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    batch_offset: int = 0,
) -> tuple[dict[str, np.ndarray], SimStats]:
    """Simulate a compiled graph's program over whole sequences.

    Arguments are :meth:`SimPlan.build`'s and :meth:`SimPlan.run`'s.

    Returns:
        The outputs ``[T, B, ...]`` by name (the NumPy backend's, to ``1e-5``) and the
        run's statistics.
    """
    plan = SimPlan.build(
        graph,
        mode=mode,
        target=target,
        seed=seed,
        t_inference_s=t_inference_s,
        drift_compensation=drift_compensation,
        program=program,
    )
    return plan.run_with_stats(
        inputs, batch_size=batch_size, progress=progress, batch_offset=batch_offset
    )


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


@dataclass(frozen=True)
class _Output:
    """A graph output: what holds it (:func:`resolve`) and the history that records it."""

    name: str
    kind: str
    source: str
    distance: int
    type: TensorType


class SimPlan:
    """A program compiled for the simulator in one mode on one chip: build once, run often.

    Attributes:
        graph: the compiled graph (its constants, tiles and types).
        program: the program the simulator executes.
        mode, target, seed, t_inference_s, drift_compensation: as the NumPy backend's
            :class:`~snuc.runtime.numpy_backend.Plan`.
        timing: the measured and checked timing of the program.
        chips: the programmed tiles by tile number (quantized and pcm).
        last_stats: the statistics of the most recent run (None before the first).
    """

    def __init__(
        self,
        graph: Graph,
        program: Program,
        mode: str,
        target: TargetSpec,
        seed: int,
        t_inference_s: float,
        drift_compensation: str | None,
        timing: Timing,
        chips: Mapping[int, TileChip],
    ) -> None:
        self.graph = graph
        self.program = program
        self.mode = mode
        self.target = target
        self.seed = seed
        self.t_inference_s = t_inference_s
        self.drift_compensation = drift_compensation
        self.timing = timing
        self.chips = chips
        self.last_stats: SimStats | None = None
        self._layout = _Compiler(graph, program, mode, chips).compile()
        self._clock = _Clock.of(self._layout)
        self._idle: dict[int, list[_Kit]] = {}  # by batch size

    @classmethod
    def build(
        cls,
        graph: Graph,
        *,
        mode: str = "float",
        target: TargetSpec | str | None = None,
        seed: int = 0,
        t_inference_s: float = 3600.0,
        drift_compensation: str | None = "global",
        program: Program | str | None = None,
    ) -> SimPlan:
        """Check the options, read (or emit) the program, check its timing, program the chip.

        Args:
            graph: the compiled graph (after ``tile``, ``place`` and ``quantize``).
            mode: ``"float"``, ``"quantized"`` or ``"pcm"`` (SPEC §6).
            target: the chip the graph was compiled for (a TargetSpec or a name); None:
                the program's.
            seed, t_inference_s, drift_compensation: the pcm chip and its age, as for
                :func:`snuc.runtime.interpreter.run`.
            program: the program: a :class:`Program`, its assembly text (an artefact's
                ``program.s``), or None to schedule the graph and emit it here.

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
        spec = check_run_options(mode, target, seed, t_inference_s, drift_compensation)
        graph.verify()
        program = _the_program(graph, program, spec)
        spec = program.target
        timing = simulate_timing(program)
        chips: dict[int, TileChip] = {}
        _check_tiles(graph, program)
        if mode != "float":
            binary = [v for v, r in guaranteed_ranges(graph).items() if r.binary]
            by_node = program_tiles(
                graph,
                graph.nodes(),
                mode=mode,
                target=spec,
                seed=seed,
                t_inference_s=t_inference_s,
                drift_compensation=drift_compensation,
                binary_values=binary,
            )
            chips = _chips_by_tile(graph, by_node)
        return cls(
            graph,
            program,
            mode,
            spec,
            seed,
            float(t_inference_s),
            drift_compensation,
            timing,
            chips,
        )

    def run(
        self,
        inputs: np.ndarray | Mapping[str, np.ndarray],
        *,
        batch_size: int | None = None,
        progress: bool = False,
        batch_offset: int = 0,
    ) -> dict[str, np.ndarray]:
        """Run sequences ``[T, B, ...]``; their statistics go to :attr:`last_stats`.

        Arguments and results are those of the NumPy backend's ``Plan.run``: ``batch_size``
        runs the batch in chunks (pcm's read noise is drawn per chunk, keyed also by the
        chunk's first sequence ``batch_offset + lo``), ``progress`` shows a bar on stderr.

        Raises:
            SnucError: a missing, unknown or badly typed input, or a bad ``batch_size`` or
                ``batch_offset``.
        """
        return self.run_with_stats(
            inputs, batch_size=batch_size, progress=progress, batch_offset=batch_offset
        )[0]

    def run_with_stats(
        self,
        inputs: np.ndarray | Mapping[str, np.ndarray],
        *,
        batch_size: int | None = None,
        progress: bool = False,
        batch_offset: int = 0,
    ) -> tuple[dict[str, np.ndarray], SimStats]:
        """:meth:`run`, returning the statistics beside the outputs."""
        from snuc.runtime.numpy_backend import batch_chunks, progress_bar

        check_batch_offset(batch_offset)
        feeds = bind_inputs(self.graph, inputs)
        steps, batch = sequence_extent(self.graph, feeds)
        batched = any(self.graph.type_of(n).has_batch for n in feeds)
        chunks = batch_chunks(batch, batch_size, batched)
        tally = [0] * len(self._layout.tallies)
        results = []
        with progress_bar(progress, len(chunks) * steps) as bar:
            for lo, hi in chunks:
                chunk = {n: _batch_slice(self.graph, n, a, lo, hi) for n, a in feeds.items()}
                run = _Run(self, chunk, steps, hi - lo if batched else 1, bar, batch_offset + lo)
                results.append(run.outputs())
                tally = [a + b for a, b in zip(tally, run.tally, strict=True)]
        outputs = results[0]
        if len(results) > 1:
            outputs = {v: _join(self.graph, v, [r[v] for r in results]) for v in outputs}
        stats = self._stats(steps, batch if batched else 1, tally)
        self.last_stats = stats
        return outputs, stats

    def _stats(self, steps: int, sequences: int, tally: list[int]) -> SimStats:
        """The run's statistics from its tally (driven rows and spikes)."""
        layout = self._layout
        runs = steps * sequences
        energy = {c: [a * runs, e * runs] for c, (a, e) in layout.static.items()}
        energy["crossbar"][0] = layout.mvm_phases * runs
        rows_available = layout.mvm_rows * runs
        for j, (static, phases, mvm_rows) in layout.tagged.items():
            served = sequences * len(range(j, steps, layout.duplicate))
            for c, (a, e) in static.items():
                energy[c][0] += a * served
                energy[c][1] += e * served
            energy["crossbar"][0] += phases * served
            rows_available += mvm_rows * served
        spikes = []
        rows = 0
        for (kind, what), counted in zip(layout.tallies, tally, strict=True):
            count = int(counted)
            if kind == "rows":
                energy["crossbar"][1] += count * what
                rows += count
            else:
                value, neurons = what
                spikes.append(LayerSpikes(value, neurons, count, neurons * runs))
        return SimStats(
            program=self.program.name,
            target=self.target.name,
            clock_ghz=self.target.clock_ghz,
            timesteps=steps,
            sequences=sequences,
            cycles_per_timestep=self.timing.cycles_per_timestep,
            latency_cycles=self.timing.latency_cycles,
            total_cycles=self.timing.total_cycles(steps, sequences),
            rows_driven=rows,
            rows_available=rows_available,
            energy=tuple(EnergyRow(c, int(a), float(e)) for c, (a, e) in energy.items()),
            spikes=tuple(spikes),
        )


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


def _batch_slice(graph: Graph, name: str, array: np.ndarray, lo: int, hi: int) -> np.ndarray:
    type_ = graph.type_of(name)
    if not type_.has_batch:
        return array
    index = [slice(None)] * array.ndim
    index[1 + type_.shape.index(BATCH)] = slice(lo, hi)
    return array[tuple(index)]


def _join(graph: Graph, name: str, parts: list[np.ndarray]) -> np.ndarray:
    type_ = graph.type_of(name)
    if not type_.has_batch:
        return parts[0]
    return np.concatenate(parts, axis=1 + type_.shape.index(BATCH))


# --------------------------------------------------------------------------- compiling


@dataclass(frozen=True, eq=False)
class _Layout:
    """A program compiled for runs: what :class:`_Run` executes and allocates.

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
    """

    ops: tuple[SimOp, ...]
    slot_count: int
    buffers: Mapping[tuple[Unit, str], tuple[int, TensorType, np.dtype]]
    rings: Mapping[str, tuple[int, tuple[Dim, ...], np.dtype]]
    outputs: tuple[_Output, ...]
    tallies: tuple[tuple[str, Any], ...]
    static: Mapping[str, tuple[int, float]]
    mvm_phases: int
    mvm_rows: int
    duplicate: int = 1
    tagged: Mapping[int, tuple[Mapping[str, tuple[int, float]], int, int]] = field(
        default_factory=dict
    )


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
        found = resolve(block, name)
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
        if slot.kind == "history":  # as _Run allocates it
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
            if chip.noisy and tag is None:
                noise = table.new(
                    ops.fixed(lambda kit: kit.noise(chip, rows_of(kit.batch) * chip.n_cols))
                )
            elif chip.noisy:  # a copy of a duplicated tile: the steps it serves
                noise = table.new(
                    ops.fixed(
                        lambda kit: kit.noise(chip, rows_of(kit.batch) * chip.n_cols).serving(*tag)
                    )
                )
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
        held = [resolve(block, d.name) for d in block.declared("output")]
        return any(h.kind == "buf" and h.name == name for h in held)

    def outputs(self) -> list[_Output]:
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
            found = resolve(block, ref)
            result.append(
                _Output(name, found.kind, found.name, found.distance, self.graph.type_of(name))
            )
        return result


def _rows_per_step(x_type: TensorType) -> Any:
    """Rows an MVM reads per timestep at batch b: every vector of its operand."""
    return lambda batch: math.prod(x_type.concrete(batch)[:-1])


# --------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class _Clock:
    """Where the windows of a plan's runs repeat.

    Attributes:
        first, last: the lowest and highest stage: a run of T timesteps walks T + last
            windows, window k running the instructions of stage s for timestep k - s.
        steady_from: the first window in which every state reads a timestep of the run
            (none of the zeros before it); the steady state lasts to window T - 1 + first.
        period: windows after which the bindings of the steady state repeat (the
            buffers' copies, the rings' messages and the duplicated tiles' K).
    """

    first: int
    last: int
    steady_from: int
    period: int

    @classmethod
    def of(cls, layout: _Layout) -> _Clock:
        stages = [op.stage for op in layout.ops]
        steady_from = max(
            (op.stage + max((s.distance for _, s in op.slots), default=0) for op in layout.ops),
            default=0,
        )
        sizes = [copies for copies, _, _ in layout.buffers.values()]
        sizes += [size for size, _, _ in layout.rings.values()]
        return cls(
            first=min(stages, default=0),
            last=max(stages, default=0),
            steady_from=steady_from,
            period=math.lcm(layout.duplicate, *sizes),
        )


_CACHED_BATCH_SIZES = 8
"""A plan keeps idle runs' arrays (:class:`_Kit`) for this many batch sizes."""

_Window = tuple[list, list, list]
"""A window of ``ii`` cycles, prepared: its slots, its kernels in order, and its moving
bindings ``(slot number, sequence key, back)``: the slot holds row ``k - back`` of a
sequence of the run (an input or a recorded output, :meth:`_Run._sequence`)."""


class _Kit:
    """What runs at one batch size allocate and bind, kept by the plan for its next runs.

    Buffers, messages, scratch and the windows' bindings do not depend on the data, so
    a plan keeps them for its next run at the same batch size, as the NumPy backend keeps
    its runners; a run takes an idle kit (runs on several threads never share one) and
    brings its inputs, the histories of its outputs and its read-noise streams' start.
    Each run starts from zeroed buffers and messages, as a fresh kit does.

    Attributes:
        plan: the plan.
        batch: B, the sequences run together.
        steps, offset: the run the kit serves now: T and its first sequence (read noise).
        tally: the list in the tally slot (counts of the run).
        base: the slots every window starts from (the fixed arrays and objects).
        windows: prepared windows of the steady state, by ``k mod period``.
        edges: prepared windows before and after the steady state, by k (for runs of
            :attr:`edges_steps` timesteps).
    """

    def __init__(self, plan: SimPlan, batch: int, steps: int, offset: int) -> None:
        self.plan = plan
        self.layout = layout = plan._layout
        self.batch = batch
        self.steps = steps
        self.offset = offset
        self.tally = [0] * len(layout.tallies)
        self._noise: dict[int, NoiseStream] = {}
        self.buffers = {
            key: [np.zeros(type_.concrete(batch), dtype) for _ in range(copies)]
            for key, (copies, type_, dtype) in layout.buffers.items()
        }
        self.zeros = {
            key: np.zeros(type_.concrete(batch), dtype)
            for key, (_, type_, dtype) in layout.buffers.items()
        }
        self.rings = {
            name: [np.zeros(ops.concrete(shape, batch), dtype) for _ in range(size)]
            for name, (size, shape, dtype) in layout.rings.items()
        }
        self.base: list[Any] = [None] * layout.slot_count
        self.base[ops.TALLY] = self.tally
        for op in layout.ops:
            for number, slot in op.slots:
                if slot.kind == "fixed":
                    self.base[number] = slot.make(self)
        self.windows: dict[int, _Window] = {}
        self.edges: dict[int, _Window] = {}
        self.edges_steps = steps

    def start(self, steps: int, offset: int) -> None:
        """Serve a new run: zero the tally, the buffers and the messages, start the read
        noise over for it."""
        self.tally[:] = [0] * len(self.tally)
        for arrays in (*self.buffers.values(), *self.rings.values()):
            for array in arrays:
                array.fill(0)
        if steps != self.edges_steps:
            self.edges.clear()
            self.edges_steps = steps
        for stream in self._noise.values():
            stream.restart(max(1, steps * stream.per_step), offset=offset)
        self.steps, self.offset = steps, offset

    def noise(self, chip: TileChip, per_step: int) -> NoiseStream:
        """The read-noise stream of a tile (created on first use); the copies of a
        duplicated tile share it, each taking its steps (``serving``)."""
        found = self._noise.get(chip.tile)
        if found is None:
            found = self._noise[chip.tile] = NoiseStream(
                self.plan.seed,
                chip.tile,
                max(1, self.steps * per_step),
                offset=self.offset,
                per_step=per_step,
            )
        return found

    def window(self, k: int) -> _Window:
        """The slots, kernels and moving bindings of window k of a run of :attr:`steps`."""
        steps = self.steps
        slots = list(self.base)
        kernels = []
        moving = []
        for op in self.layout.ops:
            t = k - op.stage
            if not 0 <= t < steps or (op.tag is not None and t % op.tag[0] != op.tag[1]):
                continue
            kernels.append(op.kernel)
            for number, slot in op.slots:
                if slot.kind == "fixed":
                    continue
                if slot.kind == "history" or (slot.kind == "feed" and t >= slot.distance):
                    key = (slot.kind, slot.name, slot.matrix)
                    moving.append((number, key, op.stage + slot.distance))
                else:
                    slots[number] = self._bind(slot, t)
        return slots, kernels, moving

    def _bind(self, slot: Slot, t: int) -> Any:
        """What ``slot`` holds at timestep t."""
        value = self._value(slot, t)
        return value.reshape(-1, value.shape[-1]) if slot.matrix else value

    def _value(self, slot: Slot, t: int) -> Any:
        u = t - slot.distance
        if slot.kind == "copy":
            if u < 0:
                return self.zeros[(slot.unit, slot.name)]
            copies = self.buffers[(slot.unit, slot.name)]
            return copies[u % len(copies)]
        if slot.kind == "ring":
            ring = self.rings[slot.name]
            return ring[t % len(ring)]
        if slot.kind == "feed":  # before the input's first step (a later one moves)
            type_ = self.plan.graph.type_of(slot.name)
            return np.zeros(type_.concrete(self.batch), type_.np_dtype)
        value = self.plan.graph.constants[slot.name]  # a constant through a state
        return value if u >= 0 else np.zeros_like(value)


class _Run:
    """One run of a plan over one chunk of the batch.

    The time loop walks windows of ``ii`` cycles: in window k an instruction of stage s
    runs for timestep ``k - s``. Slots are bound per window: in the steady state (every
    instruction's timestep in the run, every state past its zeros) the binding depends
    only on ``k`` modulo the copies' and rings' periods, so those windows reuse bindings
    made once; inputs and recorded outputs, which move with k, are rebound each window.
    The bindings live in a :class:`_Kit` that the plan keeps for its next runs.
    """

    def __init__(
        self,
        plan: SimPlan,
        feeds: dict[str, np.ndarray],
        steps: int,
        batch: int,
        bar: Any,
        offset: int = 0,
    ) -> None:
        """``offset``: the chunk's first sequence within the whole batch (keys read noise)."""
        self.plan = plan
        self.offset = offset
        self.layout = layout = plan._layout
        self.feeds = feeds
        self.steps = steps
        self.batch = batch
        self.bar = bar
        self.tally = [0] * len(layout.tallies)
        self.history = {
            out.source: np.zeros((steps, *out.type.concrete(batch)), out.type.np_dtype)
            for out in layout.outputs
            if out.kind == "buf"
        }

    def outputs(self) -> dict[str, np.ndarray]:
        if self.steps > 0:
            kit = self._take_kit()
            with np.errstate(all="ignore"):
                self._loop(kit)
            self.tally = list(kit.tally)
            self._give_back(kit)
        return {out.name: self._output(out) for out in self.layout.outputs}

    def _take_kit(self) -> _Kit:
        """An idle kit of the plan for this batch size, started for this run, or a new one."""
        idle = self.plan._idle.get(self.batch)
        try:
            kit = idle.pop() if idle else None
        except IndexError:  # another thread took the last one
            kit = None
        if kit is None:
            return _Kit(self.plan, self.batch, self.steps, self.offset)
        kit.start(self.steps, self.offset)
        return kit

    def _give_back(self, kit: _Kit) -> None:
        idle = self.plan._idle
        if len(idle) >= _CACHED_BATCH_SIZES and self.batch not in idle:
            idle.clear()
        idle.setdefault(self.batch, []).append(kit)

    def _output(self, out: _Output) -> np.ndarray:
        shape = (self.steps, *out.type.concrete(self.batch))
        if out.kind == "buf":
            values = self.history[out.source]
        elif out.kind == "input":
            values = self.feeds[out.source[1:]]
        elif out.kind == "const":
            values = np.broadcast_to(self.plan.graph.constants[out.source[1:]], shape)
        else:
            values = np.zeros(shape, out.type.np_dtype)
        d = out.distance
        if d == 0:
            return values if out.kind == "buf" else values.copy()
        shifted = np.zeros(shape, out.type.np_dtype)
        shifted[d:] = values[: max(0, self.steps - d)]
        return shifted

    def _loop(self, kit: _Kit) -> None:
        steps, clock = self.steps, self.plan._clock
        steady_from, period = clock.steady_from, clock.period
        steady_to = steps - 1 + clock.first
        steady: list[_Window | None] = [None] * period
        bar, done = self.bar, 0
        for k in range(steps + clock.last):
            if steady_from <= k <= steady_to:
                window = steady[k % period]
                if window is None:
                    window = steady[k % period] = self._prepared(kit, kit.windows, k % period, k)
            else:
                window = self._prepared(kit, kit.edges, k, k)
            slots, kernels, moving = window
            for number, sequence, back in moving:
                slots[number] = sequence[k - back]
            for kernel in kernels:
                kernel(slots)
            if bar is not None and (k % _PROGRESS_EVERY == _PROGRESS_EVERY - 1 or k == steps - 1):
                finished = min(k + 1, steps)
                bar.update(finished - done)
                done = finished

    def _prepared(self, kit: _Kit, cache: dict[int, _Window], key: int, k: int) -> _Window:
        """Window k of the kit (prepared once, kept under ``key``), its moving bindings
        taking rows of this run's sequences."""
        window = cache.get(key)
        if window is None:
            window = cache[key] = kit.window(k)
        slots, kernels, moving = window
        return slots, kernels, [(n, self._sequence(seq), back) for n, seq, back in moving]

    def _sequence(self, key: tuple[str, str, bool]) -> np.ndarray:
        """The sequence ``(kind, name, matrix)`` of the run: an input (``[T, M, K]`` for a
        crossbar) or an output's history."""
        kind, name, matrix = key
        if kind == "history":
            return self.history[name]
        sequence = self.feeds[name]
        if matrix:
            return sequence.reshape(sequence.shape[0], -1, sequence.shape[-1])
        return sequence
