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
* **In-place kernels** (:mod:`snuc.runtime.plan_kernels`), compiled per step of the
  schedule (:mod:`snuc.runtime.plan_programs`). Every node is a closure over
  preallocated arrays that computes with ufuncs and ``out=``: the SNU update is seven of
  them, a step of a loop allocates nothing, and a loop's states read the slot their
  ``next`` was written to one step before, so nothing is copied.
* **Chips set up once** (:mod:`snuc.runtime.plan_tiles`). In ``quantized`` and ``pcm``
  modes each tile's conductances, programming noise, drift and compensation are computed
  when the plan is built; read noise is drawn per run from each tile's streams (one per
  sequence) in the interpreter's order. Crossbar sums are float64 before the ADC, the
  read-noise term float32 (its variance summed in float64).
* **Threads** (:mod:`snuc.runtime.threads`): a quantized or pcm batch runs in groups of
  sequences, one per thread, with the same outputs as on one thread.

Floating-point agreement with the interpreter: element-wise work is the same operation in
the same order, bit for bit. Matrix products sum in whatever order BLAS picks for the
shape (a product over ``[n * B, K]`` rows may round differently from one over ``[B, K]``),
so float32 products may differ in the last bits, and an ADC code can move only when a
float64 column current lies within a few ulps of a decision boundary.

A plan holds no per-run state, only data it caches per batch size: read-only constants,
and the runners, block arrays and read-noise streams of finished runs, which the next run
at the same batch and block size takes instead of allocating its own (a run takes a kit
no other run holds; states and streams start over). One plan serves any number of runs
at any T and B, also from several threads at once. A run in pieces goes on from the
:class:`~snuc.runtime.run_state.RunState` of the previous piece (``state=``) and returns
its own (``return_state=True``): states, step count and read-noise positions, per chunk.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from snuc.ir.crossbar import guaranteed_ranges
from snuc.ir.graph import Graph
from snuc.ir.target import TargetSpec
from snuc.ir.types import BATCH, TensorType
from snuc.runtime.config import RunConfig, plan_run_config, run_config, run_target
from snuc.runtime.interpreter import bind_inputs, evaluate_node, sequence_extent
from snuc.runtime.plan_fusion import fuse_float_tiles
from snuc.runtime.plan_programs import CACHED_SIZES, Program, Runner, StateCarry, compile_step
from snuc.runtime.plan_schedule import Schedule, schedule
from snuc.runtime.plan_tiles import TileChip, block_rows, program_tiles
from snuc.runtime.read_noise import NoiseStream, draw_ahead, sequences_of
from snuc.runtime.run_state import ChunkState, Resumption, RunState, graph_fingerprint
from snuc.runtime.threads import checked_threads, run_groups, sequence_groups
from snuc.runtime.tile_read import Workspace

__all__ = ["BLOCK_ELEMENTS", "Plan", "run_numpy"]

BLOCK_ELEMENTS = 1 << 16
"""A time block holds about this many elements of the largest value (at least two steps)."""

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
    state: RunState | None = None,
    return_state: bool = False,
    **options: Any,
) -> Any:
    """Run a step graph over whole sequences: ``interpreter.run``'s results, faster.

    Arguments, checks and results are those of :func:`snuc.runtime.interpreter.run`
    (without ``trace``; with ``state`` and ``return_state``), except that
    ``config.batch_size`` cuts the batch into chunks of at most that many sequences, each
    chunk a run of its own (SPEC §6: pcm's read noise is keyed per sequence by its
    global index ``batch_offset + b``, so the chunks give what the whole batch gives, and
    a chunk what its sequences give at their indices). Also:

    Args:
        progress: show a progress bar over the steps on stderr (needs tqdm; silently
            none without it). The caller decides whether stderr is a terminal.

    Returns:
        Every graph output stacked over time, ``[T, B, ...]``, by output name (with
        ``return_state``: and the run's end state).

    Raises:
        SnucError: as ``interpreter.run``. One line each.
        VerifyError: the graph is malformed.
    """
    config = run_config(config, options)
    plan = Plan.build(graph, config, target=target)
    return plan.run(inputs, config, progress=progress, state=state, return_state=return_state)


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
    _programs: tuple[Program, ...]
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
            if len(self._shape_cache) >= CACHED_SIZES:
                self._shape_cache.clear()
            found = {v: t.concrete(batch) for v, t in self._types.items()}
            self._shape_cache[batch] = found
        return found

    @functools.cached_property
    def fingerprint(self) -> str:
        """The graph's fingerprint (a run state's identity), made once per plan."""
        return graph_fingerprint(self.graph)

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
        runs that cannot split their batch draw read noise ahead on a thread of their own
        (:meth:`draws_noise_ahead`; same numbers; False draws it inline on the run's
        threads, for measurements).

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
            compile_step(scheduled, step, invariants, chips, spikes) for step in order.steps
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
        state: RunState | None = None,
        return_state: bool = False,
        threads: int | None = None,
        **options: Any,
    ) -> Any:
        """Run the plan over whole sequences; see :func:`run_numpy`.

        ``config`` (default: the plan's) with ``options`` replaced gives the run's batch
        options; its other options must be the plan's. ``state``: go on from where a run
        over the previous piece of the sequences stopped; ``return_state``: return
        ``(outputs, state)``, the state where this run stops. ``threads``: the threads the
        run may use (None: every core; :mod:`snuc.runtime.threads`): the outputs do not
        depend on it.

        Raises:
            SnucError: a missing, unknown or badly typed input, a bad ``batch_size``,
                ``batch_offset`` or ``threads``, a configuration that needs another plan,
                or a state of another run.
        """
        threads = checked_threads(threads)
        config = plan_run_config(self.config, config, options)
        batch_size, batch_offset = config.batch_size, config.batch_offset
        feeds = bind_inputs(self.graph, inputs)
        steps, batch = sequence_extent(self.graph, feeds)
        batched = any(self.graph.type_of(n).has_batch for n in feeds)
        chunks = batch_chunks(batch, batch_size, batched)
        resume = Resumption.of_plan(self, config, batch, chunks, state, return_state)
        ended: dict[int, ChunkState] = {}
        with progress_bar(progress, len(chunks) * steps) as bar:
            results = []
            for lo, hi in chunks:
                chunk = {n: self._batch_slice(n, a, lo, hi) for n, a in feeds.items()}
                size = hi - lo if batched else 1
                offset = batch_offset + lo
                start = resume.start(offset, size)
                runs = self._run_chunk(chunk, steps, size, offset, bar, threads, start, resume)
                results.append(self._joined([run.result for run in runs]))
                if return_state:
                    ended[offset] = runs[0].ended()
        outputs = self._joined(results)
        return (outputs, resume.end(steps, ended)) if return_state else outputs

    def _run_chunk(
        self,
        chunk: dict[str, np.ndarray],
        steps: int,
        size: int,
        offset: int,
        bar: Any,
        threads: int,
        start: ChunkState | None,
        resume: Resumption,
    ) -> list[_Run]:
        """A chunk's runs: a quantized or pcm run in groups of its sequences, one per
        thread (:mod:`snuc.runtime.threads`); a float run, or a piece of a run (``start``
        given or its state kept), whole."""
        split = self.target is not None and not resume.active
        groups = sequence_groups(size, threads if split else 1)
        whole = len(groups) == 1
        # A run of one group may draw its read noise ahead on a thread of its own, and
        # BLAS then leaves it a core (a batch of one has too few normals for it).
        ahead = whole and self.draws_noise_ahead(steps, size, threads)

        def run(lo: int, hi: int, index: int) -> _Run:
            feeds = chunk
            if not whole:
                feeds = {n: self._batch_slice(n, a, lo, hi) for n, a in chunk.items()}
            shown = bar if index == 0 else None
            group = _Run(self, feeds, steps, hi - lo, shown, offset + lo, start, resume.step,
                         resume.active, ahead)  # fmt: skip
            group.result = group.outputs()
            return group

        return run_groups(
            groups, threads, run, float_products=self.target is None, spare=int(ahead)
        )

    def draws_noise_ahead(self, steps: int, batch: int, threads: int) -> bool:
        """Whether a run of ``steps`` steps of ``batch`` sequences, unsplit, on ``threads``
        threads draws its read noise ahead on a thread of its own: a pcm plan built with
        ``noise_thread``, two threads or more, and at least
        :data:`BACKGROUND_NOISE_ELEMENTS` normals to draw."""
        if not (self._noise_thread and self.config.mode == "pcm" and threads >= 2):
            return False
        shapes = self.shapes(batch)
        noisy = [c for c in self.chips.values() if c.noisy]
        total = sum(steps * math.prod(shapes[c.node.id]) for c in noisy)
        return total >= BACKGROUND_NOISE_ELEMENTS

    def _joined(self, results: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The outputs of runs of consecutive sequences, joined along the batch."""
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
        start: ChunkState | None = None,
        first_step: int = 0,
        keep_state: bool = False,
        noise_ahead: bool = False,
    ) -> None:
        """``offset``: the global index of the run's first sequence (keys read noise);
        ``start``: where an earlier piece of the run left the chunk (None: at zeros, at
        the streams' beginnings), ``first_step`` the piece's first global timestep;
        ``keep_state``: keep where the run leaves the chunk (:meth:`ended`);
        ``noise_ahead``: draw read noise ahead on a thread of its own
        (:meth:`Plan.draws_noise_ahead`)."""
        self.noise_ahead = noise_ahead
        self.result: dict[str, np.ndarray] = {}  # the outputs, once run (a group's)
        self.plan = plan
        self.offset = offset
        self.start = start or ChunkState()
        self.first_step = first_step
        self.keep_state = keep_state
        self.carry = StateCarry()
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
            stream = NoiseStream(
                self.plan.config.seed,
                chip.tile,
                self.steps,
                self._pool,
                sequences=sequences_of(self.types[chip.node.id], self.batch),
                per_step=math.prod(self.shapes[chip.node.id]),
                offset=self.offset,
                ahead=False,
                start=self.start.noise.get(chip.tile),
                first_step=self.first_step,
            )
            self._noise[chip.node.id] = stream
        return stream

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
        """A one-thread executor drawing read noise ahead, where the run does."""
        if not self.noise_ahead:
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
                stream.restart(
                    self.steps,
                    self._pool,
                    offset=self.offset,
                    ahead=False,
                    start=self.start.noise.get(self.plan.chips[node_id].tile),
                    first_step=self.first_step,
                )
        runners, buffers, streams, self.carry = kit
        self.carry.start = self.start.values
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
        if self.keep_state:
            self._ended = ChunkState(
                self.carry.ended(),
                {self.plan.chips[node_id].tile: s.position() for node_id, s in streams.items()},
            )
        if len(self.plan._idle) >= CACHED_SIZES and key not in self.plan._idle:
            self.plan._idle.clear()
        self.plan._idle.setdefault(key, []).append(kit)

    def _kit(self) -> _Kit:
        """The runners of the plan's steps, the block arrays they share and the read-noise
        streams they draw from (by node id)."""
        buffers = {v: self.array(v, self.block) for v in self._buffer_names}
        runners = [program.start(self) for program in self.plan._programs]
        return runners, buffers, self._noise, self.carry

    def ended(self) -> ChunkState:
        """Where the run left the chunk: its states and read-noise positions (a run of no
        steps leaves them where it found them)."""
        if self.steps == 0:
            values = self.start.values or {
                s.name: np.zeros(self.shapes[s.name], self.types[s.name].np_dtype)
                for s in self.plan.graph.states
            }
            return ChunkState(dict(values), dict(self.start.noise))
        return self._ended


_Kit = tuple[list[Runner], dict[str, np.ndarray], dict[str, NoiseStream], StateCarry]
"""A run's runners, its block arrays of shared values, its read-noise streams and its
states' edges, reusable by a later run."""
