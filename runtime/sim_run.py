"""One run of a simulator plan: the time loop over windows of ``ii`` cycles.

:class:`~snuc.runtime.simulator.SimPlan` compiles a program once into a list of kernels
with precomputed slots (its layout); this module runs them. The time loop walks windows
of ``ii`` cycles, each running the kernels whose timestep is in flight, with their buffers
bound once per pattern of copies (the steady state repeats, :class:`Clock`). The arrays
and bindings of a run at one batch size are kept by the plan for its next run
(:class:`Kit`), so a run allocates only its outputs; the timing is checked once, when the
plan is built (it does not depend on the data). :class:`Run` runs one chunk of a batch
(:func:`batch_slice`, :func:`join`) and records the graph's outputs (:class:`Output`).

A run in pieces (:mod:`snuc.runtime.run_state`) starts where the previous piece stopped:
what a run without one reads as zeros before its first timestep (a state's holder at
step ``t - distance < 0``) it reads from the states it is given (:class:`Earlier`), a
duplicated tile's copies serve the global steps, and the read-noise streams go on; at its
end every state is read back from its holder (:meth:`Run.outputs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from snuc.backends.isa import Program
from snuc.ir.graph import Graph
from snuc.ir.machine_isa import Recv
from snuc.ir.types import BATCH, TensorType
from snuc.runtime import sim_ops as ops
from snuc.runtime.plan_tiles import TileChip
from snuc.runtime.read_noise import NoiseStream, sequences_of
from snuc.runtime.run_state import ChunkState
from snuc.runtime.sim_ops import Slot
from snuc.runtime.threads import run_groups, sequence_groups

if TYPE_CHECKING:  # the plan owns its runs; only its type is named here
    from snuc.runtime.simulator import SimPlan, _Layout

__all__ = [
    "Clock",
    "Earlier",
    "Held",
    "Kit",
    "Output",
    "Run",
    "batch_slice",
    "held_states",
    "join",
]

PROGRESS_EVERY = 32
"""Windows between updates of the progress bar."""


@dataclass(frozen=True)
class Output:
    """A graph output: what holds it (:meth:`Block.resolve`, on ``unit``) and the history
    that records it."""

    name: str
    kind: str
    source: str
    distance: int
    type: TensorType
    unit: Any = None


Held = tuple[str, str, Any, str, int]
"""Where a block's state is held: ``(state, kind, unit, name, distance)``: the state at
step t is, at step ``t - distance``, buffer ``name`` of ``unit`` (kind ``"copy"``),
input ``name`` (``"feed"``) or constant ``name`` (``"const"``); or always zeros
(``"zero"``)."""


def held_states(program: Program) -> tuple[Held, ...]:
    """Where every block's states are held (:data:`Held`). Each state's first is a
    holder that has all of its value: a buffer the block computes, not one a ``recv``
    fills (maybe with a window of the sender's)."""
    complete: list[Held] = []
    received: list[Held] = []
    for block in program.blocks:
        recvs = {i.value for i in block.instructions if isinstance(i, Recv)}
        for decl in block.declared("state"):
            held = block.resolve(decl.name)
            state, d = decl.name[1:], held.distance
            if held.kind == "buf":
                found = (state, "copy", block.unit, held.name, d)
                (received if held.name in recvs else complete).append(found)
            elif held.kind in ("input", "const"):
                kind = "feed" if held.kind == "input" else "const"
                complete.append((state, kind, None, held.name[1:], d))
            else:
                complete.append((state, "zero", None, held.name, d))
    return (*complete, *received)


class Earlier:
    """What a run reads of the steps before its first: the holders' values at global
    steps ``first - k``, which are the states it starts from (zeros for a run from the
    start).

    A read of holder ``(kind, unit, name)`` at ``k`` steps before the run is state s's
    value when s is held there at distance k (every state of a chain of states is held
    by the chain's end, each at its own distance).
    """

    def __init__(self, held: tuple[Held, ...]) -> None:
        self._state_of = {(kind, unit, name, d): s for s, kind, unit, name, d in held}
        self.values: dict[str, np.ndarray] = {}

    def value(self, key: tuple[str, Any, str, int]) -> np.ndarray | None:
        """The value of holder ``(kind, unit, name)`` ``k`` steps before the run (``key``
        ends in k), or None: zeros."""
        state = self._state_of.get(key)
        return None if state is None else self.values.get(state)


@dataclass(frozen=True)
class Clock:
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
    def of(cls, layout: _Layout) -> Clock:
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
"""A plan keeps idle runs' arrays (:class:`Kit`) for this many batch sizes."""

Window = tuple[list, list, list]
"""A window of ``ii`` cycles, prepared: its slots, its kernels in order, and its moving
bindings ``(slot number, sequence key, back)``: the slot holds row ``k - back`` of a
sequence of the run (an input or a recorded output, :meth:`Run._sequence`)."""


class Kit:
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

    def __init__(
        self,
        plan: SimPlan,
        batch: int,
        steps: int,
        offset: int,
        begin: ChunkState,
        first_step: int,
    ) -> None:
        self.plan = plan
        self.layout = layout = plan._layout
        self.batch = batch
        self.steps = steps
        self.offset = offset
        self.start_state = begin
        self.first_step = first_step
        self.earlier = Earlier(layout.states)
        self.earlier.values = begin.values
        self._before: dict[tuple[str, Any, str, int], np.ndarray] = {}
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
        self.windows: dict[tuple[int, int], Window] = {}
        self.edges: dict[int, Window] = {}
        self.edges_steps = steps

    def start(self, steps: int, offset: int, begin: ChunkState, first_step: int) -> None:
        """Serve a new run: zero the tally, the buffers and the messages, start the read
        noise over for it (from ``begin``, the chunk's state after an earlier piece that
        ended before global step ``first_step``)."""
        self.tally[:] = [0] * len(self.tally)
        for arrays in (*self.buffers.values(), *self.rings.values()):
            for array in arrays:
                array.fill(0)
        phase = self.phase
        was_resumed = bool(self.earlier.values)
        self.start_state, self.first_step = begin, first_step
        if steps != self.edges_steps or self.phase != phase:
            self.edges.clear()
            self.edges_steps = steps
        self.earlier.values = begin.values
        if was_resumed or begin.values:  # the windows bind these arrays: fill them in place
            for key, array in self._before.items():
                self._fill_before(key, array)
        for tile, stream in self._noise.items():
            stream.restart(
                steps,
                offset=offset,
                start=begin.noise.get(tile),
                first_step=first_step,
            )
        self.steps, self.offset = steps, offset

    @property
    def phase(self) -> int:
        """The run's first global step modulo the tiles' copies: the steps a duplicated
        tile's copy j serves (``t mod K == j``) depend on it, and so do the windows."""
        return self.first_step % self.layout.duplicate

    def noise(self, chip: TileChip, sequences: int, per_step: int) -> NoiseStream:
        """The read-noise stream of a tile (created on first use) of ``sequences``
        sequences, ``per_step`` normals per step; the copies of a duplicated tile share
        it, each taking its steps (``serving``)."""
        found = self._noise.get(chip.tile)
        if found is None:
            found = self._noise[chip.tile] = NoiseStream(
                self.plan.config.seed,
                chip.tile,
                self.steps,
                sequences=sequences,
                per_step=per_step,
                offset=self.offset,
                start=self.start_state.noise.get(chip.tile),
                first_step=self.first_step,
            )
        return found

    def noise_positions(self) -> dict[int, Any]:
        """Where each tile's read-noise stream stands, by tile number."""
        return {tile: stream.position() for tile, stream in self._noise.items()}

    def before(self, key: tuple[str, Any, str, int], like: np.ndarray) -> np.ndarray:
        """The array a window binds for holder ``key`` (its last item: steps before the
        run), shaped as ``like``: zeros, or the state the run starts from; refilled in
        place for each run, so prepared windows keep it."""
        found = self._before.get(key)
        if found is None:
            found = self._before[key] = np.zeros_like(like)
            self._fill_before(key, found)
        return found

    def _fill_before(self, key: tuple[str, Any, str, int], array: np.ndarray) -> None:
        value = self.earlier.value(key)
        array[...] = 0 if value is None else value

    def window(self, k: int) -> Window:
        """The slots, kernels and moving bindings of window k of a run of :attr:`steps`."""
        steps = self.steps
        slots = list(self.base)
        kernels = []
        moving = []
        for op in self.layout.ops:
            t = k - op.stage
            if not 0 <= t < steps or (
                op.tag is not None and (self.first_step + t) % op.tag[0] != op.tag[1]
            ):
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
                return self.before(
                    ("copy", slot.unit, slot.name, -u), self.zeros[(slot.unit, slot.name)]
                )
            copies = self.buffers[(slot.unit, slot.name)]
            return copies[u % len(copies)]
        if slot.kind == "ring":
            ring = self.rings[slot.name]
            return ring[t % len(ring)]
        if slot.kind == "feed":  # before the input's first step (a later one moves)
            type_ = self.plan.graph.type_of(slot.name)
            like = np.zeros(type_.concrete(self.batch), type_.np_dtype)
            return self.before(("feed", None, slot.name, -u), like)
        value = self.plan.graph.constants[slot.name]  # a constant through a state
        return value if u >= 0 else self.before(("const", None, slot.name, -u), value)


class Run:
    """One run of a plan over one chunk of the batch.

    The time loop walks windows of ``ii`` cycles: in window k an instruction of stage s
    runs for timestep ``k - s``. Slots are bound per window: in the steady state (every
    instruction's timestep in the run, every state past its zeros) the binding depends
    only on ``k`` modulo the copies' and rings' periods, so those windows reuse bindings
    made once; inputs and recorded outputs, which move with k, are rebound each window.
    The bindings live in a :class:`Kit` that the plan keeps for its next runs.
    """

    def __init__(
        self,
        plan: SimPlan,
        feeds: dict[str, np.ndarray],
        steps: int,
        batch: int,
        bar: Any,
        offset: int = 0,
        start: ChunkState | None = None,
        first_step: int = 0,
        keep_state: bool = False,
    ) -> None:
        """``offset``: the global index of the run's first sequence (keys read noise);
        ``start``: where an earlier piece of the run left the chunk (None: at zeros, at
        the streams' beginnings), ``first_step`` the piece's first global timestep;
        ``keep_state``: keep where the run leaves the chunk (:attr:`ended`)."""
        self.plan = plan
        self.offset = offset
        self.start = start or ChunkState()
        self.first_step = first_step
        self.keep_state = keep_state
        self.ended: ChunkState | None = None
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
            if self.keep_state:
                self.ended = ChunkState(self._states_at_end(kit), kit.noise_positions())
            self._give_back(kit)
        elif self.keep_state:
            self.ended = ChunkState(self._states_at_end(None), dict(self.start.noise))
        return {out.name: self._output(out) for out in self.layout.outputs}

    def _states_at_end(self, kit: Kit | None) -> dict[str, np.ndarray]:
        """Every state after the run's last step: its holder's value ``distance`` steps
        before the end (in a buffer's copy, the input, a constant), or, for a run shorter
        than that, the state the run started from that held it then."""
        earlier = Earlier(self.layout.states)
        earlier.values = self.start.values
        states: dict[str, np.ndarray] = {}
        for state, kind, unit, name, distance in self.layout.states:
            if state in states:  # the first holder has all of its value
                continue
            u = self.steps - distance
            type_ = self.plan.graph.type_of(state)
            value: Any = None
            if kind == "zero":
                value = None
            elif u < 0:
                value = earlier.value((kind, unit, name, -u))
            elif kind == "copy":
                assert kit is not None, "a holder written by the run"
                copies = kit.buffers[(unit, name)]
                if len(copies) < distance:
                    raise RuntimeError(
                        f"buffer {name} of {unit} has {len(copies)} copies, "
                        f"but a state reads it {distance} steps back"
                    )
                value = copies[u % len(copies)]
            elif kind == "feed":
                value = self.feeds[name][u]
            else:
                value = self.plan.graph.constants[name]
            array = np.zeros(type_.concrete(self.batch), type_.np_dtype)
            if value is not None:
                array[...] = value
            states[state] = array
        for s in self.plan.graph.states:  # no block reads it, so no output depends on it
            if s.name not in states:
                type_ = self.plan.graph.type_of(s.name)
                states[s.name] = np.zeros(type_.concrete(self.batch), type_.np_dtype)
        return states

    def _take_kit(self) -> Kit:
        """An idle kit of the plan for this batch size, started for this run, or a new one."""
        idle = self.plan._idle.get(self.batch)
        try:
            kit = idle.pop() if idle else None
        except IndexError:  # another thread took the last one
            kit = None
        if kit is None:
            return Kit(self.plan, self.batch, self.steps, self.offset, self.start, self.first_step)
        kit.start(self.steps, self.offset, self.start, self.first_step)
        return kit

    def _give_back(self, kit: Kit) -> None:
        idle = self.plan._idle
        if len(idle) >= _CACHED_BATCH_SIZES and self.batch not in idle:
            idle.clear()
        idle.setdefault(self.batch, []).append(kit)

    def _output(self, out: Output) -> np.ndarray:
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
        if self.start.values:  # the rows before the holder's first value: the start's
            earlier = Earlier(self.layout.states)
            earlier.values = self.start.values
            kind = {"buf": "copy", "input": "feed"}.get(out.kind, out.kind)
            unit = out.unit if kind == "copy" else None
            name = out.source if kind == "copy" else out.source[1:]
            for t in range(min(d, self.steps)):
                value = earlier.value((kind, unit, name, d - t))
                if value is not None:
                    shifted[t] = value
        return shifted

    def _loop(self, kit: Kit) -> None:
        steps, clock = self.steps, self.plan._clock
        steady_from, period = clock.steady_from, clock.period
        steady_to = steps - 1 + clock.first
        steady: list[Window | None] = [None] * period
        bar, done = self.bar, 0
        for k in range(steps + clock.last):
            if steady_from <= k <= steady_to:
                window = steady[k % period]
                if window is None:
                    key = (k % period, kit.phase)
                    window = steady[k % period] = self._prepared(kit, kit.windows, key, k)
            else:
                window = self._prepared(kit, kit.edges, k, k)
            slots, kernels, moving = window
            for number, sequence, back in moving:
                slots[number] = sequence[k - back]
            for kernel in kernels:
                kernel(slots)
            if bar is not None and (k % PROGRESS_EVERY == PROGRESS_EVERY - 1 or k == steps - 1):
                finished = min(k + 1, steps)
                bar.update(finished - done)
                done = finished

    def _prepared(self, kit: Kit, cache: dict[Any, Window], key: Any, k: int) -> Window:
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


def batch_slice(graph: Graph, name: str, array: np.ndarray, lo: int, hi: int) -> np.ndarray:
    type_ = graph.type_of(name)
    if not type_.has_batch:
        return array
    index = [slice(None)] * array.ndim
    index[1 + type_.shape.index(BATCH)] = slice(lo, hi)
    return array[tuple(index)]


def join(graph: Graph, name: str, parts: list[np.ndarray]) -> np.ndarray:
    type_ = graph.type_of(name)
    if not type_.has_batch:
        return parts[0]
    return np.concatenate(parts, axis=1 + type_.shape.index(BATCH))


def join_runs(graph: Graph, results: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The outputs of runs of consecutive sequences, joined along the batch."""
    if len(results) == 1:
        return results[0]
    return {v: join(graph, v, [r[v] for r in results]) for v in results[0]}


def run_chunk(
    plan: SimPlan,
    chunk: dict[str, np.ndarray],
    steps: int,
    size: int,
    split: bool,
    bar: Any,
    offset: int,
    start: ChunkState | None,
    first_step: int,
    threads: int,
    keep_state: bool,
) -> tuple[dict[str, np.ndarray], list[int], ChunkState | None]:
    """One chunk's run of ``size`` sequences, ``split`` into groups of them on as many
    threads (:mod:`snuc.runtime.threads`), or whole, going on from ``start`` and keeping
    its end state when ``keep_state``: its outputs, its tally and where it left the
    chunk."""
    groups = sequence_groups(size, threads if split else 1)
    whole = len(groups) == 1

    def run_group(lo: int, hi: int, index: int) -> tuple[dict[str, np.ndarray], Run]:
        feeds = chunk
        if not whole:
            feeds = {n: batch_slice(plan.graph, n, a, lo, hi) for n, a in chunk.items()}
        shown = bar if index == 0 else None
        run = Run(plan, feeds, steps, hi - lo, shown, offset + lo, start, first_step,
                  keep_state and whole)  # fmt: skip
        return run.outputs(), run

    done = run_groups(groups, threads, run_group, float_products=plan.config.mode == "float")
    tally = [sum(counts) for counts in zip(*(run.tally for _, run in done), strict=True)]
    return join_runs(plan.graph, [outputs for outputs, _ in done]), tally, done[0][1].ended


def noise_of(chip: TileChip, x_type: TensorType, rows_of: Any, tag: Any) -> Any:
    """A kit's read-noise stream of a tile (of a copy of a duplicated tile, ``tag``: the
    steps it serves)."""

    def make(kit: Any) -> Any:
        sequences = sequences_of(x_type, kit.batch)
        stream = kit.noise(chip, sequences, rows_of(kit.batch) * chip.n_cols)
        return stream if tag is None else stream.serving(*tag)

    return make
