"""The NumPy runtime backend: the reference semantics, scheduled for speed.

``run_numpy`` computes what ``snuc.runtime.interpreter.run`` computes (SPEC §6: the same
outputs for the same graph, input, mode, seed and batch size, ``|Δ| <= 1e-5``), but
instead of evaluating every node at every step it follows a :class:`Plan`:

* **Layer-major schedule** (:mod:`snuc.runtime.plan_schedule`). Work that is not on a
  recurrence through a state runs once for many steps, time folded into the batch
  (``[n * B, ...]``): a layer's input product is one matrix product. Only recurrences
  (neuron updates, recurrent products) run step by step, one loop per recurrence, layer
  after layer.
* **Time blocks.** The schedule runs over blocks of ``n`` consecutive steps, every step of
  the schedule on one block before the next block; states carry from block to block.
  ``n`` keeps each value of a block near :data:`BLOCK_ELEMENTS` elements, so a block's
  values stay in cache, their arrays are allocated once per run and reused, and memory does
  not grow with T (a run at batch 1 is usually one block). Only the graph's outputs are
  held for all T.
* **In-place kernels** (:mod:`snuc.runtime.plan_kernels`). Every node is a closure over
  preallocated arrays that computes with ufuncs and ``out=``: the SNU update is seven of
  them, a step of a loop allocates nothing, and a loop's states read the slot their
  ``next`` was written to one step before, so nothing is copied.
* **Chips set up once** (:mod:`snuc.runtime.plan_tiles`). In ``quantized`` and ``pcm``
  modes each tile's conductances, programming noise, drift and compensation are computed
  when the plan is built; read noise is drawn per run from each tile's stream in the
  interpreter's order. Crossbar sums are float64 before the ADC.

Floating-point agreement with the interpreter: element-wise work is the same operation in
the same order, bit for bit. Matrix products sum in whatever order BLAS picks for the
shape (a product over ``[n * B, K]`` rows may round differently from one over ``[B, K]``),
so float32 products may differ in the last bits, and an ADC code can move only when a
float64 column current lies within a few ulps of a decision boundary.

A plan holds no per-run state, only data it caches per batch size: read-only constants,
and the runners, block arrays and read-noise streams of finished runs, which the next run
at the same batch and block size takes instead of allocating its own (a run takes a kit
no other run holds; states and streams start over). One plan serves any number of runs
at any T and B, also from several threads at once.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from snuc.ir.crossbar import guaranteed_ranges
from snuc.ir.errors import VerifyError
from snuc.ir.graph import Graph, Node, State
from snuc.ir.target import TargetSpec
from snuc.ir.types import BATCH, Dim, TensorType
from snuc.runtime import plan_kernels as kernels
from snuc.runtime.config import RunConfig, plan_run_config, run_config, run_target
from snuc.runtime.interpreter import bind_inputs, evaluate_node, sequence_extent
from snuc.runtime.plan_fusion import fuse_float_tiles
from snuc.runtime.plan_schedule import Loop, Parallel, PerStep, Schedule, Shift, schedule
from snuc.runtime.plan_tiles import (
    NoiseStream,
    TileChip,
    Workspace,
    block_rows,
    draw_ahead,
    program_tiles,
)

__all__ = ["BLOCK_ELEMENTS", "Plan", "run_numpy"]

BLOCK_ELEMENTS = 1 << 16
"""A time block holds about this many elements of the largest value (at least two steps)."""

_CACHED_BATCH_SIZES = 8
"""Per-batch-size data a plan keeps (shapes, broadcast constants) for this many sizes."""

BACKGROUND_NOISE_ELEMENTS = 1 << 17
"""A pcm run draws its read noise on a background thread when it needs this many normals;
below, starting the thread costs more than it saves."""


def run_numpy(
    graph: Graph,
    inputs: np.ndarray | Mapping[str, np.ndarray],
    config: RunConfig | None = None,
    *,
    target: TargetSpec | str | None = None,
    progress: bool = False,
    **options: Any,
) -> dict[str, np.ndarray]:
    """Run a step graph over whole sequences: ``interpreter.run``'s results, faster.

    Arguments, checks and results are those of :func:`snuc.runtime.interpreter.run`
    (without ``trace``), except that ``config.batch_size`` cuts the batch into chunks of
    at most that many sequences, each chunk a run of its own (SPEC §6: pcm's read noise
    is drawn per run as ``[T, chunk, ...]``, so results depend on the chunk size), keyed
    also by the chunk's first sequence (``batch_offset + lo``), so that chunks do not
    repeat each other's noise: the first chunk is the run of its sequences alone. Also:

    Args:
        progress: show a progress bar over the steps on stderr (needs tqdm; silently
            none without it). The caller decides whether stderr is a terminal.

    Returns:
        Every graph output stacked over time, ``[T, B, ...]``, by output name.

    Raises:
        SnucError: as ``interpreter.run``. One line each.
        VerifyError: the graph is malformed.
    """
    config = run_config(config, options)
    return Plan.build(graph, config, target=target).run(inputs, config, progress=progress)


@dataclass(frozen=True, eq=False)
class Plan:
    """A graph prepared for fast runs in one mode on one chip: build once, run often.

    Attributes:
        graph: the verified step graph.
        config: the configuration it is built for; its batch options are ``run``'s default.
        target: the chip's parameters (None in float mode).
        schedule: the order of work (:func:`snuc.runtime.plan_schedule.schedule`) of
            the graph as the plan runs it (in float mode with each tiled layer as one
            product: :func:`snuc.runtime.plan_fusion.fuse_float_tiles`).
        invariants: every value that is the same at all steps (constants and nodes of
            constants only), computed once.
        chips: the crossbar tiles as programmed, by node id (quantized and pcm).
    """

    graph: Graph
    config: RunConfig
    target: TargetSpec | None
    schedule: Schedule
    invariants: Mapping[str, np.ndarray]
    chips: Mapping[str, TileChip]
    _programs: tuple[_Program, ...]
    _shared: frozenset[str]
    _min_block: int
    _noise_thread: bool
    _types: Mapping[str, TensorType]
    _shape_cache: dict[int, dict[str, tuple[int, ...]]] = field(default_factory=dict)
    _idle: dict[tuple[int, int], list[_Kit]] = field(default_factory=dict)

    def shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        """Every value's shape at a batch size (cached: runs at one batch size repeat)."""
        found = self._shape_cache.get(batch)
        if found is None:
            if len(self._shape_cache) >= _CACHED_BATCH_SIZES:
                self._shape_cache.clear()
            found = {v: t.concrete(batch) for v, t in self._types.items()}
            self._shape_cache[batch] = found
        return found

    @classmethod
    def build(
        cls,
        graph: Graph,
        config: RunConfig | None = None,
        *,
        target: TargetSpec | str | None = None,
        noise_thread: bool = True,
        **options: Any,
    ) -> Plan:
        """Check the options, verify the graph, schedule it and program its chip.

        Arguments are those of :func:`run_numpy`, plus ``noise_thread``: in pcm mode, let
        runs draw read noise ahead on one background thread (same numbers; False keeps a
        run on the calling thread alone, for measurements with pinned threads).

        Raises:
            SnucError: an unknown mode or a bad option, a missing target, a graph not
                compiled for the mode (one line each).
            VerifyError: the graph is malformed.
        """
        config = run_config(config, options)
        spec = run_target(config, target)
        graph.verify()
        chips: dict[str, TileChip] = {}
        if spec is not None:
            ranges = guaranteed_ranges(graph)
            chips = program_tiles(
                graph,
                graph.nodes(),
                mode=config.mode,
                target=spec,
                seed=config.seed,
                t_inference_s=config.t_inference_s,
                drift_compensation=config.drift_compensation,
                binary_values=[v for v, r in ranges.items() if r.binary],
            )
        # Float tiles are exact window products: a tiled layer is its one product.
        scheduled = fuse_float_tiles(graph) if spec is None else graph
        order = schedule(scheduled, noisy_tiles=config.mode == "pcm")
        invariants = _fold_invariants(scheduled, order, chips)
        spikes = frozenset(v for v, r in guaranteed_ranges(scheduled).items() if r.binary)
        programs = tuple(
            _compile(scheduled, step, invariants, chips, spikes) for step in order.steps
        )
        shared = {v for p in programs for v in p.shared}
        chained = max((p.chained for p in programs), default=0)
        return cls(
            graph=graph,
            config=config,
            target=spec,
            schedule=order,
            invariants=invariants,
            chips=chips,
            _programs=programs,
            _shared=frozenset(shared | set(graph.inputs)),
            _min_block=2 + chained,
            _noise_thread=noise_thread,
            _types=graph.values(),
        )

    def run(
        self,
        inputs: np.ndarray | Mapping[str, np.ndarray],
        config: RunConfig | None = None,
        *,
        progress: bool = False,
        **options: Any,
    ) -> dict[str, np.ndarray]:
        """Run the plan over whole sequences; see :func:`run_numpy`.

        ``config`` (default: the plan's) with ``options`` replaced gives the run's batch
        options; its other options must be the plan's.

        Raises:
            SnucError: a missing, unknown or badly typed input, a bad ``batch_size`` or
                ``batch_offset``, or a configuration that needs another plan.
        """
        config = plan_run_config(self.config, config, options)
        batch_size, batch_offset = config.batch_size, config.batch_offset
        feeds = bind_inputs(self.graph, inputs)
        steps, batch = sequence_extent(self.graph, feeds)
        batched = any(self.graph.type_of(n).has_batch for n in feeds)
        chunks = batch_chunks(batch, batch_size, batched)
        with progress_bar(progress, len(chunks) * steps) as bar:
            results = []
            for lo, hi in chunks:
                chunk = {n: self._batch_slice(n, a, lo, hi) for n, a in feeds.items()}
                run = _Run(self, chunk, steps, hi - lo if batched else 1, bar, batch_offset + lo)
                results.append(run.outputs())
        if len(results) == 1:
            return results[0]
        return {v: self._join(v, [r[v] for r in results]) for v in results[0]}

    def _batch_slice(self, name: str, array: np.ndarray, lo: int, hi: int) -> np.ndarray:
        type_ = self.graph.type_of(name)
        if not type_.has_batch:
            return array
        index = [slice(None)] * array.ndim
        index[1 + type_.shape.index(BATCH)] = slice(lo, hi)
        return array[tuple(index)]

    def _join(self, name: str, parts: list[np.ndarray]) -> np.ndarray:
        type_ = self.graph.type_of(name)
        if not type_.has_batch:
            return parts[0]
        return np.concatenate(parts, axis=1 + type_.shape.index(BATCH))


def batch_chunks(batch: int, batch_size: int | None, batched: bool) -> list[tuple[int, int]]:
    """``[lo, hi)`` ranges of the batch that run separately (``batch_size`` as checked by
    :class:`~snuc.runtime.config.RunConfig`)."""
    if batch_size is None or not batched or batch <= batch_size:
        return [(0, batch)]
    return [(lo, min(lo + batch_size, batch)) for lo in range(0, batch, batch_size)]


@contextmanager
def progress_bar(enabled: bool, total: int) -> Iterator[Any]:
    """A tqdm bar over steps on stderr; None when disabled or tqdm is not installed."""
    if not enabled:
        yield None
        return
    try:
        from tqdm import tqdm
    except ImportError:
        yield None
        return
    with tqdm(total=total, file=sys.stderr, unit="step", leave=False) as bar:
        yield bar


def _fold_invariants(
    graph: Graph, order: Schedule, chips: Mapping[str, TileChip]
) -> dict[str, np.ndarray]:
    """Constants and the results of nodes of constants only, computed once."""
    values: dict[str, np.ndarray] = dict(graph.constants)
    with np.errstate(all="ignore"):
        for node in order.invariant:
            args = [values[v] for v in node.inputs]
            chip = chips.get(node.id)
            if chip is None:
                results = evaluate_node(node, args)
            else:
                rows = args[0].reshape(-1, args[0].shape[-1])
                out = np.empty((rows.shape[0], chip.n_cols), chip.dtype)
                chip.read(rows, out, Workspace(chip, block_rows(chip, rows.shape[0])))
                results = (out.reshape(*args[0].shape[:-1], chip.n_cols),)
            values.update(zip(node.outputs, results, strict=True))
    return values


# --------------------------------------------------------------------------- one run


def block_steps(min_steps: int, step_elements: int, steps: int) -> int:
    """Steps per time block: about :data:`BLOCK_ELEMENTS` elements of the largest value,
    at least ``min_steps`` (a loop's states read slots up to that many steps back), at
    most the run's ``steps``."""
    return max(1, min(max(min_steps, BLOCK_ELEMENTS // step_elements), steps))


class _Run:
    """One run of a plan over one chunk of the batch, block by block.

    Values shared between steps live per block as ``[n, ...]`` arrays: views of the inputs,
    of the output arrays (``[T, ...]``, allocated once) or of a block-sized array allocated
    once per run and reused by every block.
    """

    def __init__(
        self,
        plan: Plan,
        feeds: dict[str, np.ndarray],
        steps: int,
        batch: int,
        bar: Any,
        offset: int = 0,
    ) -> None:
        """``offset``: the chunk's first sequence within the whole batch (keys read noise)."""
        self.plan = plan
        self.offset = offset
        self.types = plan._types
        self.steps = steps
        self.batch = batch
        self.bar = bar
        self.feeds = feeds
        self.shapes = plan.shapes(batch)
        self.block = block_steps(plan._min_block, self._step_elements(), steps)
        self._noise: dict[str, NoiseStream] = {}
        self._pool: ThreadPoolExecutor | None = None
        outputs = {v for v in plan.graph.outputs if v in plan._shared and v not in feeds}
        self.out_arrays = {v: self.array(v, steps) for v in outputs}
        self._buffer_names = [v for v in plan._shared if v not in feeds and v not in outputs]

    def _step_elements(self) -> int:
        """Elements per step of the largest value held in a block array (inputs are views)."""
        shared = self.plan._shared - self.feeds.keys()
        return max([1, *(math.prod(self.shapes[v]) for v in shared)])

    def array(self, value: str, steps: int) -> np.ndarray:
        """A new, uninitialised ``[steps, ...]`` array for ``value``."""
        type_ = self.types[value]
        return np.empty((steps, *self.shapes[value]), type_.np_dtype)

    def noise(self, chip: TileChip) -> NoiseStream:
        """The run's read-noise stream of a tile, created on first use."""
        stream = self._noise.get(chip.node.id)
        if stream is None:
            total = self._noise_total(chip.node.id)
            per_step = math.prod(self.shapes[chip.node.id])
            stream = NoiseStream(
                self.plan.config.seed,
                chip.tile,
                total,
                self._pool,
                offset=self.offset,
                per_step=per_step,
                ahead=False,
            )
            self._noise[chip.node.id] = stream
        return stream

    def _noise_total(self, node_id: str) -> int:
        """Normals a noisy tile draws in this run: its block ``[T, *out]``."""
        return self.steps * math.prod(self.shapes[node_id])

    def outputs(self) -> dict[str, np.ndarray]:
        """Run every block; the graph's outputs as fresh ``[T, ...]`` arrays."""
        if self.steps > 0:
            self._pool = self._noise_pool()
            try:
                with np.errstate(all="ignore"):
                    self._run_blocks()
            finally:
                if self._pool is not None:
                    self._pool.shutdown(wait=True, cancel_futures=True)
        result = {}
        for v in self.plan.graph.outputs:
            if v in self.out_arrays:
                result[v] = self.out_arrays[v]
            elif v in self.feeds:
                result[v] = self.feeds[v].copy()
            else:
                shape = (self.steps, *self.shapes[v])
                result[v] = np.broadcast_to(self.plan.invariants[v], shape).copy()
        return result

    def _noise_pool(self) -> ThreadPoolExecutor | None:
        """A one-thread executor drawing read noise ahead, when there is enough to draw."""
        if not self.plan._noise_thread:
            return None
        noisy = [c for c in self.plan.chips.values() if c.noisy]
        total = sum(self.steps * math.prod(self.shapes[c.node.id]) for c in noisy)
        if total < BACKGROUND_NOISE_ELEMENTS:
            return None
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="snuc-read-noise")

    def _run_blocks(self) -> None:
        """Run every block with a kit of the plan's idle ones (its read-noise streams
        started over for this run and its offset), or a new one; the plan keeps the kit for
        its next run at this batch and block size."""
        key = (self.batch, self.block)
        idle = self.plan._idle.get(key)
        try:
            kit = idle.pop() if idle else None
        except IndexError:  # another thread took the last one
            kit = None
        if kit is None:
            kit = self._kit()
        else:
            for node_id, stream in kit[2].items():
                total = self._noise_total(node_id)
                stream.restart(total, self._pool, offset=self.offset, ahead=False)
        runners, buffers, streams = kit
        draw_ahead(streams.values())  # in the order the blocks read them
        for t0 in range(0, self.steps, self.block):
            n = min(self.block, self.steps - t0)
            values = {v: a[t0 : t0 + n] for v, a in self.feeds.items()}
            values.update((v, a[t0 : t0 + n]) for v, a in self.out_arrays.items())
            values.update((v, a[:n]) for v, a in buffers.items())
            for runner in runners:
                runner(values, t0, n)
            if self.bar is not None:
                self.bar.update(n)
        if len(self.plan._idle) >= _CACHED_BATCH_SIZES and key not in self.plan._idle:
            self.plan._idle.clear()
        self.plan._idle.setdefault(key, []).append(kit)

    def _kit(self) -> _Kit:
        """The runners of the plan's steps, the block arrays they share and the read-noise
        streams they draw from (by node id)."""
        buffers = {v: self.array(v, self.block) for v in self._buffer_names}
        runners = [program.start(self) for program in self.plan._programs]
        return runners, buffers, self._noise


Runner = Any
"""``runner(values, t0, n)``: one step of the schedule on the block of steps
``[t0, t0 + n)``; ``values`` maps each shared value to its ``[n, ...]`` array. A block
with ``t0 == 0`` starts a run: the runner resets what it carries from block to block, so
a plan reuses its runners (and their arrays) run after run."""

_Kit = tuple[list[Runner], dict[str, np.ndarray], dict[str, NoiseStream]]
"""A run's runners, its block arrays of shared values and its read-noise streams,
reusable by a later run."""


class _Program:
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


def _compile(
    graph: Graph,
    step: Parallel | PerStep | Shift | Loop,
    invariants: Mapping[str, np.ndarray],
    chips: Mapping[str, TileChip],
    spikes: frozenset[str],
) -> _Program:
    """The program of one step of the schedule (``spikes``: the values that hold only 0
    and 1, whose float crossbar products skip silent inputs)."""
    if isinstance(step, Parallel):
        return _ParallelProgram(graph, step.node, invariants, chips, spikes)
    if isinstance(step, PerStep):
        return _PerStepProgram(graph, step.node, invariants, chips)
    if isinstance(step, Shift):
        return _ShiftProgram(step.state, invariants)
    return _LoopProgram(graph, step, invariants, chips, spikes)


class _Slots:
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
            if len(self._constants) >= _CACHED_BATCH_SIZES:
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


class _ParallelProgram(_Program):
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
        self._slots = _Slots()
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


class _PerStepProgram(_Program):
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


class _ShiftProgram(_Program):
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

        def runner(values: dict[str, np.ndarray], t0: int, n: int) -> None:
            if t0 == 0:
                carry.fill(0)
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


class _LoopProgram(_Program):
    """A recurrence compiled to kernels over numbered slots (:mod:`plan_kernels`).

    Slots hold, per run: invariant operands; operands from other steps and results other
    steps read (views ``[t]`` of the block's ``[n, ...]`` arrays, set before each step);
    ``next`` values of states only the loop reads (two arrays used in turn); other
    results and the kernels' scratch (one array each); results of views and of the
    interpreter's semantics used only within the step (set by their kernel); and states
    (an array of zeros at step 0, then the slot their ``next`` had the step before). The
    slots live for the whole run, so states carry from one block to the next.
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
        self._slots = _Slots()
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
        self._snu = self._snu_recurrence(loop, published)

    def _snu_recurrence(
        self, loop: Loop, published: list[str]
    ) -> tuple[kernels.SnuSteps, str, str, str, int, int] | None:
        """For a loop that is one ``snu.layer`` whose states are its own previous results
        (a neuron layer without recurrent weights) and whose states no one else reads:
        ``(steps, a, s_next, y_next, s, y)``, the slots the whole-block update
        (``kernel.steps``) uses; else None (the loop runs kernel by kernel)."""
        if len(loop.nodes) != 1 or published or self.chained:
            return None
        (node,) = loop.nodes
        steps = getattr(self._kernels[0], "steps", None)
        if steps is None or node.op.NAME != "snu.layer":
            return None
        a, s_prev, y_prev = node.inputs[:3]
        s_next, y_next = node.outputs
        nexts = {st.name: st.next for st in loop.states}
        if (
            nexts != {s_prev: s_next, y_prev: y_next}
            or a in nexts
            or a not in {v for _, v in self._moving_in}
        ):
            return None
        index = self._index
        return (steps, a, s_next, y_next, index[s_prev], index[y_prev])

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
            (slot, np.zeros(run.shapes[value], types[value].np_dtype))
            for slot, value in self._states
        ]
        pairs = [
            (slot, tuple(np.empty(run.shapes[v], types[v].np_dtype) for _ in "ab"))
            for slot, v in self._pingpong
        ]
        moving_names = self._moving_in + self._moving
        program, carry, records = self._kernels, self._carry, self._records
        chained = self.chained > 0
        if self._snu is not None:
            by_name = {v: pair for (_, v), (_, pair) in zip(self._pingpong, pairs, strict=True)}
            return self._snu_runner(slots, by_name, initial, frozenset(run._buffer_names))

        def runner(values: dict[str, np.ndarray], t0: int, n: int) -> None:
            if t0 == 0:
                for slot, zeros in initial:
                    slots[slot] = zeros
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

    def _snu_runner(
        self,
        slots: list,
        pairs: dict[str, tuple[np.ndarray, np.ndarray]],
        initial: list[tuple[int, np.ndarray]],
        buffered: frozenset[str],
    ) -> Runner:
        """The runner of a one-layer SNU loop: one ``steps`` call per block, writing each
        step's results straight into the block's arrays (or the pair whose turn it is).

        The steps of a block are handed over as lists of per-step views. Those of the
        run's block arrays (``buffered``: the kit's, reused run after run) and of the
        pairs are made once per block size and kept with the runner: making three views
        a step cost about a tenth of a step of a 150-neuron layer at batch 1."""
        steps, a, s_next, y_next, s_slot, y_slot = self._snu
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
                for slot, zeros in initial:
                    slots[slot] = zeros
            slots[s_slot], slots[y_slot] = steps(
                slots,
                history(values, a, t0, n),
                history(values, s_next, t0, n),
                history(values, y_next, t0, n),
                slots[s_slot],
                slots[y_slot],
            )

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
