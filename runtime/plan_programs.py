"""The NumPy backend's compiled steps: one program per step of a plan's schedule.

A :class:`~snuc.runtime.numpy_backend.Plan` compiles each step of its schedule
(:mod:`snuc.runtime.plan_schedule`) once into a :class:`Program`: a node that folds time
into the batch (:class:`ParallelProgram`), a node run step by step by the interpreter's
semantics or its tile's read, a state shifted by one step, or a recurrence of kernels
over numbered slots (:mod:`snuc.runtime.plan_kernels`). This module owns those programs
and the slots and scratch their kernels use; a run (``numpy_backend._Run``) starts each
program once and calls the runner it returns for every block of steps. A run in pieces
(:mod:`snuc.runtime.run_state`) starts the states from where the previous piece left
them and reads where they end (:class:`StateCarry`), once per run, never per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from snuc.ir.errors import VerifyError
from snuc.ir.graph import Graph, Node, State
from snuc.ir.neurons import NeuronOp
from snuc.ir.types import BATCH, Dim, TensorType
from snuc.runtime import neuron_kernels
from snuc.runtime import plan_kernels as kernels
from snuc.runtime.interpreter import evaluate_node
from snuc.runtime.plan_schedule import Loop, Parallel, PerStep, Shift
from snuc.runtime.plan_tiles import TileChip, block_rows

if TYPE_CHECKING:
    from snuc.runtime.numpy_backend import _Run

CACHED_SIZES = 8
"""Per-size data (broadcast constants) a program keeps for this many batch or block sizes."""

Runner = Any
"""``runner(values, t0, n)``: one step of the schedule on the block of steps
``[t0, t0 + n)``; ``values`` maps each shared value to its ``[n, ...]`` array. A block
with ``t0 == 0`` starts a run: the runner resets what it carries from block to block, so
a plan reuses its runners (and their arrays) run after run."""


class StateCarry:
    """The states at a run's edges, for the programs of one kit (the runners a plan
    reuses run after run).

    Attributes:
        start: the states the run starts from, by name (the kit's runner reads it at
            ``t0 == 0``); a state not in it starts at zeros.
    """

    def __init__(self) -> None:
        self.start: Mapping[str, np.ndarray] = {}
        self._ends: list[Callable[[], dict[str, np.ndarray]]] = []

    def on_end(self, read: Callable[[], dict[str, np.ndarray]]) -> None:
        """Register how a program reads the states it holds after a run's last block."""
        self._ends.append(read)

    def ended(self) -> dict[str, np.ndarray]:
        """Every state after the run's last block (copies: the kit's arrays are reused)."""
        states: dict[str, np.ndarray] = {}
        for read in self._ends:
            states.update((name, np.array(value)) for name, value in read().items())
        return states


class Program:
    """One step of the schedule, compiled when the plan is built.

    Attributes:
        shared: the values it reads from or writes for other steps (and outputs).
        chained: for loops, how many of its states take another state as ``next``.
    """

    shared: frozenset[str] = frozenset()
    chained: int = 0

    def start(self, run: _Run) -> Runner:
        """Allocate what a run needs; return the runner of its blocks."""
        raise NotImplementedError


def compile_step(
    graph: Graph,
    step: Parallel | PerStep | Shift | Loop,
    invariants: Mapping[str, np.ndarray],
    chips: Mapping[str, TileChip],
    spikes: frozenset[str],
) -> Program:
    """The program of one step of the schedule (``spikes``: the values that hold only 0
    and 1, whose float crossbar products skip silent inputs)."""
    if isinstance(step, Parallel):
        return ParallelProgram(graph, step.node, invariants, chips, spikes)
    if isinstance(step, PerStep):
        return _PerStepProgram(graph, step.node, invariants, chips)
    if isinstance(step, Shift):
        return _ShiftProgram(step.state, invariants)
    return _LoopProgram(graph, step, invariants, chips, spikes)


class Slots:
    """Numbered slots of a program and the scratch its kernels asked for."""

    def __init__(self) -> None:
        self.count = 0
        self.temps: list[tuple[int, np.dtype, tuple[Dim, ...]]] = []
        self.fulls: list[tuple[int, np.ndarray, tuple[Dim, ...]]] = []
        self._constants: dict[int, list[tuple[int, np.ndarray]]] = {}
        self.workspaces: list[tuple[int, TileChip, TensorType]] = []
        self.noises: list[tuple[int, TileChip]] = []

    def new(self) -> int:
        self.count += 1
        return self.count - 1

    def temp(self, dtype: np.dtype | type, shape: tuple[Dim, ...]) -> int:
        slot = self.new()
        self.temps.append((slot, np.dtype(dtype), shape))
        return slot

    def full(self, value: np.ndarray, shape: tuple[Dim, ...]) -> int:
        slot = self.new()
        self.fulls.append((slot, value, shape))
        return slot

    def constants(
        self, rows: int, shape_of: Callable[[tuple[Dim, ...]], tuple[int, ...]]
    ) -> list[tuple[int, np.ndarray]]:
        """The :meth:`full` arrays for a leading size ``rows``, shaped by ``shape_of``.

        They are read-only, so runs share them: they are built once per size (a few sizes
        are kept).
        """
        found = self._constants.get(rows)
        if found is None:
            if len(self._constants) >= CACHED_SIZES:
                self._constants.clear()
            found = []
            for slot, value, shape in self.fulls:
                array = np.broadcast_to(value, shape_of(shape)).copy()
                array.setflags(write=False)
                found.append((slot, array))
            self._constants[rows] = found
        return found

    def workspace(self, chip: TileChip, type_: TensorType) -> int:
        slot = self.new()
        self.workspaces.append((slot, chip, type_))
        return slot

    def noise(self, chip: TileChip) -> int:
        slot = self.new()
        self.noises.append((slot, chip))
        return slot


def _fold(array: np.ndarray) -> np.ndarray:
    """``[n, B, ...]`` as ``[n * B, ...]``: time folded into the batch."""
    return array.reshape(array.shape[0] * array.shape[1], *array.shape[2:])


class ParallelProgram(Program):
    """A node outside any recurrence: one kernel call per block, time folded into the batch.

    Local slots: operands, then results, then the kernel's scratch.
    """

    def __init__(
        self,
        graph: Graph,
        node: Node,
        invariants: Mapping[str, np.ndarray],
        chips: Mapping[str, TileChip],
        spikes: frozenset[str],
    ) -> None:
        self.node = node
        self.shared = frozenset(
            [v for v in node.inputs if v not in invariants] + list(node.outputs)
        )
        self._inputs = [(v, invariants.get(v)) for v in node.inputs]
        self._slots = Slots()
        ins = [self._slots.new() for _ in node.inputs]
        outs = [self._slots.new() for _ in node.outputs]
        self._kernel = kernels.node_kernel(
            node,
            ins,
            outs,
            [False] * len(outs),
            types=graph.values(),
            invariants=invariants,
            chips=chips,
            alloc=self._slots,
            spikes=spikes,
        )

    def start(self, run: _Run) -> Runner:
        rows = run.block * run.batch
        slots: list[Any] = [None] * self._slots.count
        temps = []
        for slot, dtype, shape in self._slots.temps:
            temps.append((slot, np.empty((rows, *shape[1:]), dtype)))
        temps += self._slots.constants(rows, lambda shape: (rows, *shape[1:]))
        for slot, chip, type_ in self._slots.workspaces:
            per_row = math.prod(d for d in type_.shape[1:-1])
            slots[slot] = chip.workspace(block_rows(chip, rows * per_row))
        for slot, chip in self._slots.noises:
            slots[slot] = run.noise(chip)
        inputs, outputs, kernel = self._inputs, self.node.outputs, self._kernel
        batch = run.batch

        def runner(values: dict[str, np.ndarray], t0: int, n: int) -> None:
            i = 0
            for v, fixed in inputs:
                slots[i] = _fold(values[v]) if fixed is None else fixed
                i += 1
            for v in outputs:
                slots[i] = _fold(values[v])
                i += 1
            for slot, array in temps:
                slots[slot] = array[: n * batch]
            kernel(slots)

        return runner


class _PerStepProgram(Program):
    """A node outside any recurrence whose values cannot fold time: step by step, by the
    interpreter's semantics (or its tile's read)."""

    def __init__(
        self,
        graph: Graph,
        node: Node,
        invariants: Mapping[str, np.ndarray],
        chips: Mapping[str, TileChip],
    ) -> None:
        self.node = node
        self.shared = frozenset(
            [v for v in node.inputs if v not in invariants] + list(node.outputs)
        )
        self._inputs = [(v, invariants.get(v)) for v in node.inputs]
        self._types = [graph.type_of(v) for v in node.outputs]
        self._chip = chips.get(node.id)

    def start(self, run: _Run) -> Runner:
        chip, node = self._chip, self.node
        work = stream = None
        if chip is not None:
            per_step = math.prod(run.shapes[node.id][:-1])
            work = chip.workspace(block_rows(chip, per_step))
            stream = run.noise(chip) if chip.noisy else None

        def runner(values: dict[str, np.ndarray], t0: int, n: int) -> None:
            for t in range(n):
                args = [values[v][t] if fixed is None else fixed for v, fixed in self._inputs]
                if chip is not None:
                    rows = args[0].reshape(-1, args[0].shape[-1])
                    out = values[node.id][t].reshape(-1, chip.n_cols)
                    chip.read(rows, out, work, stream)
                    continue
                results = evaluate_node(node, args)
                for name, type_, result in zip(node.outputs, self._types, results, strict=True):
                    if t0 + t == 0:
                        _check(node, name, result, type_, run.batch)
                    values[name][t] = result

        return runner


def _check(node: Node, name: str, value: np.ndarray, type_: TensorType, batch: int) -> None:
    """A computed value must have its declared type; otherwise the semantics are wrong."""
    shape = type_.concrete(batch)
    if value.shape != shape or value.dtype != type_.np_dtype:
        raise VerifyError(
            f"{node.loc.prefix()}{node.op.NAME} %{name} computed {value.dtype}{list(value.shape)}, "
            f"but its type is {type_} ({list(shape)} at batch {batch})"
        )


class _ShiftProgram(Program):
    """A state outside any recurrence: ``S_0 = 0``, ``S_t = next_{t-1}``, across blocks."""

    def __init__(self, state: State, invariants: Mapping[str, np.ndarray]) -> None:
        self.state = state
        self._fixed = invariants.get(state.next)
        self.shared = frozenset(
            [state.name] if self._fixed is not None else [state.name, state.next]
        )

    def start(self, run: _Run) -> Runner:
        name, nxt, fixed = self.state.name, self.state.next, self._fixed
        carry = np.zeros(run.shapes[name], run.types[name].np_dtype)
        edges = run.carry
        edges.on_end(lambda: {name: carry})

        def runner(values: dict[str, np.ndarray], t0: int, n: int) -> None:
            if t0 == 0:
                carry[...] = edges.start.get(name, 0)
            out = values[name]
            out[0] = carry
            source = fixed if fixed is not None else values[nxt]
            if fixed is not None:
                out[1:] = fixed
                carry[...] = fixed
            else:
                out[1:] = source[: n - 1]
                carry[...] = source[n - 1]

        return runner


class _LoopProgram(Program):
    """A recurrence compiled to kernels over numbered slots (:mod:`plan_kernels`).

    Slots hold, per run: invariant operands; operands from other steps and results other
    steps read (views ``[t]`` of the block's ``[n, ...]`` arrays, set before each step);
    ``next`` values of states only the loop reads (two arrays used in turn); other
    results and the kernels' scratch (one array each); results of views and of the
    interpreter's semantics used only within the step (set by their kernel); and states
    (an array of zeros, or the run's start, at step 0, then the slot their ``next`` had
    the step before). The slots live for the whole run, so states carry from one block to the next.
    """

    def __init__(
        self,
        graph: Graph,
        loop: Loop,
        invariants: Mapping[str, np.ndarray],
        chips: Mapping[str, TileChip],
        spikes: frozenset[str],
    ) -> None:
        types = graph.values()
        self._types = types
        self._slots = Slots()
        self._index: dict[str, int] = {}
        self._fixed: list[tuple[int, np.ndarray]] = []
        self._moving_in: list[tuple[int, str]] = []
        self._moving: list[tuple[int, str]] = []
        self._pingpong: list[tuple[int, str]] = []
        self._buffers: list[tuple[int, str]] = []
        self._kernels: list[kernels.Kernel] = []

        inside = {n.id for n in loop.nodes}
        names = {s.name for s in loop.states}
        exported = _values_needed_after(graph, loop, inside)
        nexts = {s.next for s in loop.states}
        # A state whose next is another state reads that slot a step later, when one of
        # two arrays used in turn would already be overwritten.
        self.chained = sum(s.next in names for s in loop.states)
        for s in loop.states:
            self._index[s.name] = self._slots.new()
        for node in loop.nodes:
            ins = [self._operand(v, invariants) for v in node.inputs]
            writes = kernels.writes(node, types[node.id].np_dtype, chips)
            outs, bound = [], []
            for out in node.outputs:
                slot = self._index[out] = self._slots.new()
                outs.append(slot)
                if out in exported or (self.chained and out in nexts):
                    self._moving.append((slot, out))
                elif out in nexts:
                    self._pingpong.append((slot, out))
                elif writes:
                    self._buffers.append((slot, out))
                bound.append(not writes and out not in exported and out not in nexts)
            self._kernels.append(
                kernels.node_kernel(
                    node,
                    ins,
                    outs,
                    bound,
                    types=types,
                    invariants=invariants,
                    chips=chips,
                    alloc=self._slots,
                    spikes=spikes,
                )
            )
        self._carry = [(self._index[s.name], self._index[s.next]) for s in loop.states]
        self._states = [(self._index[s.name], s.name) for s in loop.states]
        published = _states_needed_after(graph, loop, inside)
        self._records = [(self._index[name], name) for name in published]
        self.shared = frozenset([v for _, v in self._moving_in + self._moving] + published)
        self._neuron = self._neuron_recurrence(loop, published)

    def _neuron_recurrence(
        self, loop: Loop, published: list[str]
    ) -> tuple[neuron_kernels.NeuronSteps, str, tuple[str, ...], tuple[int, ...]] | None:
        """For a loop that is one neuron op whose states are its own previous results
        (a neuron layer without recurrent weights) and whose states no one else reads:
        ``(steps, a, results, state slots)``, what the whole-block update (``kernel.steps``)
        uses; else None (the loop runs kernel by kernel)."""
        if len(loop.nodes) != 1 or published or self.chained:
            return None
        (node,) = loop.nodes
        steps = getattr(self._kernels[0], "steps", None)
        if steps is None or not isinstance(node.op, NeuronOp):
            return None
        by_name = dict(zip(node.op.OPERANDS_NAMED, node.inputs, strict=True))
        a, previous = node.inputs[0], tuple(by_name[p] for p in node.op.PREVIOUS)
        nexts = {st.name: st.next for st in loop.states}
        if (
            nexts != dict(zip(previous, node.outputs, strict=True))
            or a in nexts
            or a not in {v for _, v in self._moving_in}
        ):
            return None
        return (steps, a, tuple(node.outputs), tuple(self._index[p] for p in previous))

    def _operand(self, value: str, invariants: Mapping[str, np.ndarray]) -> int:
        if value in self._index:
            return self._index[value]
        slot = self._index[value] = self._slots.new()
        if value in invariants:
            self._fixed.append((slot, invariants[value]))
        else:
            self._moving_in.append((slot, value))
        return slot

    def start(self, run: _Run) -> Runner:
        batch, types = run.batch, self._types
        slots: list[Any] = [None] * self._slots.count
        for slot, array in self._fixed:
            slots[slot] = array
        for slot, value in self._buffers:
            slots[slot] = np.empty(run.shapes[value], types[value].np_dtype)
        for slot, dtype, shape in self._slots.temps:
            slots[slot] = np.empty(_concrete(shape, batch), dtype)
        for slot, array in self._slots.constants(batch, lambda shape: _concrete(shape, batch)):
            slots[slot] = array
        for slot, chip, type_ in self._slots.workspaces:
            slots[slot] = chip.workspace(math.prod(_concrete(type_.shape, batch)[:-1]))
        for slot, chip in self._slots.noises:
            slots[slot] = run.noise(chip)
        initial = [
            (slot, value, np.zeros(run.shapes[value], types[value].np_dtype))
            for slot, value in self._states
        ]
        edges = run.carry
        edges.on_end(lambda: {value: slots[slot] for slot, value in self._states})
        pairs = [
            (slot, tuple(np.empty(run.shapes[v], types[v].np_dtype) for _ in "ab"))
            for slot, v in self._pingpong
        ]
        moving_names = self._moving_in + self._moving
        program, carry, records = self._kernels, self._carry, self._records
        chained = self.chained > 0
        if self._neuron is not None:
            by_name = {v: pair for (_, v), (_, pair) in zip(self._pingpong, pairs, strict=True)}
            return self._neuron_runner(
                slots, by_name, initial, edges, frozenset(run._buffer_names)
            )

        def runner(values: dict[str, np.ndarray], t0: int, n: int) -> None:
            if t0 == 0:
                start = edges.start
                for slot, value, zeros in initial:
                    slots[slot] = start.get(value, zeros)
            # Per step, each moving slot takes element k of a list: views [k] of the
            # block's arrays (made by one C-level iteration), or the array of the pair
            # whose turn step t0 + k is.
            moving = [(slot, list(values[v])) for slot, v in moving_names]
            moving += [(slot, [pair[(t0 + k) & 1] for k in range(n)]) for slot, pair in pairs]
            recorded = [(slot, values[v]) for slot, v in records]
            for k in range(n):
                for slot, views in moving:
                    slots[slot] = views[k]
                for kernel in program:
                    kernel(slots)
                for slot, array in recorded:
                    array[k] = slots[slot]
                if chained:
                    carried = [slots[nxt] for _, nxt in carry]
                    for (state, _), value in zip(carry, carried, strict=True):
                        slots[state] = value
                else:
                    for state, nxt in carry:
                        slots[state] = slots[nxt]

        return runner

    def _neuron_runner(
        self,
        slots: list,
        pairs: dict[str, tuple[np.ndarray, np.ndarray]],
        initial: list[tuple[int, str, np.ndarray]],
        edges: StateCarry,
        buffered: frozenset[str],
    ) -> Runner:
        """The runner of a one-layer neuron loop: one ``steps`` call per block, writing each
        step's results straight into the block's arrays (or the pair whose turn it is).

        The steps of a block are handed over as lists of per-step views. Those of the
        run's block arrays (``buffered``: the kit's, reused run after run) and of the
        pairs are made once per block size and kept with the runner: making three views
        a step cost about a tenth of a step of a 150-neuron layer at batch 1."""
        steps, a, results, state_slots = self._neuron
        kept: dict[tuple[str, int, int], list[np.ndarray]] = {}

        def history(values: dict[str, np.ndarray], v: str, t0: int, n: int):
            pair = pairs.get(v)
            if pair is None and v not in buffered:
                return values[v]
            key = (v, n, 0 if pair is None else t0 & 1)
            views = kept.get(key)
            if views is None:
                # The block array's first n steps, or the pair's arrays in turn.
                views = list(values[v]) if pair is None else [pair[(t0 + k) & 1] for k in range(n)]
                kept[key] = views
            return views

        def runner(values: dict[str, np.ndarray], t0: int, n: int) -> None:
            if t0 == 0:
                start = edges.start
                for slot, value, zeros in initial:
                    slots[slot] = start.get(value, zeros)
            last = steps(
                slots,
                history(values, a, t0, n),
                *[history(values, r, t0, n) for r in results],
                *[slots[i] for i in state_slots],
            )
            for slot, value in zip(state_slots, last, strict=True):
                slots[slot] = value

        return runner


def _concrete(shape: tuple[Dim, ...], batch: int) -> tuple[int, ...]:
    return tuple(batch if d == BATCH else d for d in shape)


def _values_needed_after(graph: Graph, loop: Loop, inside: set[str]) -> set[str]:
    """Results of the loop's nodes that outputs, other steps or other states read."""
    produced = {v for n in loop.nodes for v in n.outputs}
    needed = {v for v in graph.outputs if v in produced}
    for node in graph.nodes():
        if node.id not in inside:
            needed.update(v for v in node.inputs if v in produced)
    names = {s.name for s in loop.states}
    needed.update(s.next for s in graph.states if s.name not in names and s.next in produced)
    return needed


def _states_needed_after(graph: Graph, loop: Loop, inside: set[str]) -> list[str]:
    """The loop's states that outputs, other steps or other states read."""
    names = {s.name for s in loop.states}
    needed = {v for v in graph.outputs if v in names}
    for node in graph.nodes():
        if node.id not in inside:
            needed.update(v for v in node.inputs if v in names)
    needed.update(s.next for s in graph.states if s.name not in names and s.next in names)
    return [s.name for s in loop.states if s.name in needed]
