"""The reference interpreter: the oracle that runs a step graph over whole sequences.

This module is the oracle (STYLE.md): backends are tested against it, and it is tested
against onnxruntime on the corresponding ONNX ops. It evaluates each node with its op's
reference semantics (:mod:`snuc.runtime.semantics`, registered by op class), steps the
states in time, and checks every computed value against its declared type.

Run modes (SPEC §6) change only what a crossbar tile (``xbar.mvm``) computes: ``float``
is its exact window product; ``quantized`` and ``pcm`` pass it through the DAC, the
conductance pairs (``snuc.ir.crossbar``), the ADC and, in ``pcm``, the PCM device model
(``snuc.runtime.pcm``). docs/quantization.md gives the equations and the error bound.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, overload

import numpy as np

from snuc.ir import ops
from snuc.ir.crossbar import adc_quantize, dac_quantize
from snuc.ir.errors import SnucError, VerifyError
from snuc.ir.graph import Graph, Node
from snuc.ir.target import TargetSpec
from snuc.ir.types import BATCH, TensorType
from snuc.runtime.chip import program_tile
from snuc.runtime.config import RunConfig, run_config, run_target
from snuc.runtime.pcm import noise_spread
from snuc.runtime.read_noise import NoiseStream, sequences_of
from snuc.runtime.run_state import ChunkState, Resumption, RunState
from snuc.runtime.semantics import OP_SEMANTICS

# --------------------------------------------------------------------------- evaluation


def _evaluate(node: Node, args: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """:func:`evaluate_node` without the floating-point error state (the caller sets it)."""
    meaning = OP_SEMANTICS.get(type(node.op))
    if meaning is None:
        raise SnucError(
            f"{node.loc.prefix()}op {node.op.NAME} (%{node.id}) has no reference semantics; "
            f"known ops: {', '.join(sorted(cls.NAME for cls in OP_SEMANTICS))}"
        )
    node.op.check_arity(len(args), node.loc)
    try:
        results = meaning(node.op, *args)
    except SnucError as err:
        raise SnucError(f"{node.loc.prefix()}{node.op.NAME} %{node.id}: {err}") from None
    return tuple(np.asarray(r) for r in results)


def evaluate_node(node: Node, args: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Compute one node's results from its operand values (one per ``node.inputs``).

    Args:
        node: the node; its op's class selects the semantics in :data:`OP_SEMANTICS`.
        args: the operand arrays, in ``node.inputs`` order, with concrete batch sizes.

    Returns:
        The results, one array per ``node.outputs``.

    Raises:
        SnucError: the op has no semantics, or its operands are invalid at run time
            (integer division by zero, an out-of-range gather index); names the node.
    """
    with np.errstate(all="ignore"):
        return _evaluate(node, args)


# --------------------------------------------------------------------------- crossbar tiles


class _Tile:
    """How one ``xbar.mvm`` computes in ``quantized`` and ``pcm`` modes; set up once per run.

    Per step (SPEC §6; docs/quantization.md)::

        x_q   = DAC(x[..., r0:r1])                    float64, over op.dac with dac_bits
        I     = x_q @ G  (+ sqrt(x_q**2 @ var) * n_t)  float64 column sums (+ read noise:
                                                       float32, pcm.noise_spread)
        I_hat = ADC(I)                                 full scale op.adc_range, adc_bits
        y     = float32(I_hat * s * alpha)             digital scale, drift compensation

    ``G`` is G+ - G- per weight (devices summed): the quantised targets, or in ``pcm``
    mode the programmed devices after drift, with ``var`` their read-noise variances and
    ``n_t`` step t of the tile's read-noise block. A duplicated tile (docs/isa.md "Tile
    duplication") in ``pcm`` mode is K programmed arrays: step t reads copy ``t mod K``
    (its ``G``, ``var`` and ``alpha``), with the tile's one read-noise block.
    """

    def __init__(
        self,
        node: Node,
        copies: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
        target: TargetSpec,
        read_noise: NoiseStream | None,
        dtype: np.dtype,
    ) -> None:
        """``copies``: ``(G, s * alpha, var)`` of each copy (one for a tile without
        copies; ``var`` None without read noise)."""
        self.rows = slice(*node.op.rows)
        self.dac = node.op.dac
        self.adc_range = node.op.adc_range
        self.dac_bits = target.dac_bits
        self.adc_bits = target.adc_bits
        self.copies = copies
        self.read_noise = read_noise
        self.dtype = dtype

    def mvm(self, x: np.ndarray, step: int) -> np.ndarray:
        """The tile's output at ``step`` for its operand ``x`` (all the weight's rows)."""
        conductance_us, gain, variance_us2 = self.copies[step % len(self.copies)]
        x_q = dac_quantize(x[..., self.rows], self.dac[0], self.dac[1], self.dac_bits)
        current = np.matmul(x_q, conductance_us)
        if self.read_noise is not None:
            noise = self.read_noise.take(current.size).reshape(current.shape)
            current += noise_spread(x_q, variance_us2) * noise  # float32, added in float64
        read = adc_quantize(current, self.adc_range, self.adc_bits)
        return (read * gain).astype(self.dtype)


def crossbar_tiles(nodes: Iterable[Node], mode: str) -> list[Node]:
    """The ``xbar.mvm`` nodes a quantized or pcm run programs, checked.

    Shared by every backend, so each refuses the same graphs with the same words.

    Raises:
        SnucError: an untiled ``xbar.dense`` or ``xbar.conv``, a tile without an ADC
            range, or two tiles with the same number; one line naming the node.
    """
    tiles: list[Node] = []
    numbers: dict[int, str] = {}
    for node in nodes:
        if isinstance(node.op, (ops.Dense, ops.Conv)):
            raise SnucError(
                f"{node.loc.prefix()}{node.op.NAME} %{node.id} is not tiled; mode {mode!r} "
                "runs crossbar tiles only: compile with the lower-conv, tile, place and "
                "quantize passes"
            )
        if not isinstance(node.op, ops.CrossbarMVM):
            continue
        op = node.op
        if op.adc_range <= 0:
            raise SnucError(
                f"{node.loc.prefix()}xbar.mvm %{node.id} (tile {op.tile}) has no ADC range; "
                f"mode {mode!r} needs a quantised graph: compile with the quantize pass"
            )
        for number in (op.tile, *op.copy_tiles):  # a copy's number keys its own chip
            if number in numbers:
                raise SnucError(
                    f"{node.loc.prefix()}xbar.mvm %{node.id} and %{numbers[number]} are both "
                    f"tile {number}; tile numbers must be unique (the tile pass numbers them)"
                )
            numbers[number] = node.id
        tiles.append(node)
    return tiles


def _tiles(
    graph: Graph,
    nodes: Sequence[Node],
    *,
    mode: str,
    target: TargetSpec,
    seed: int,
    t_inference_s: float,
    drift_compensation: str | None,
    steps: int,
    batch: int,
    batch_offset: int = 0,
    start: ChunkState | None = None,
) -> dict[str, _Tile]:
    """Every ``xbar.mvm``'s per-run state by node id: the chip a run of ``steps`` steps
    of ``batch`` sequences uses (``start``: where the read-noise streams of a run going on
    from an earlier piece stand)."""
    tiles: dict[str, _Tile] = {}
    for node in crossbar_tiles(nodes, mode):
        copies = program_tile(graph, node, mode, target, seed, t_inference_s, drift_compensation)
        # Steps draw block[0], block[1], ... in turn: the block, never held whole.
        type_ = graph.type_of(node.id)
        noise = (
            None
            if mode == "quantized"
            else NoiseStream(
                seed,
                node.op.tile,
                steps,
                sequences=sequences_of(type_, batch),
                per_step=math.prod(type_.concrete(batch)),
                offset=batch_offset,
                start=None if start is None else start.noise.get(node.op.tile),
            )
        )
        tiles[node.id] = _Tile(node, copies, target, noise, graph.type_of(node.id).np_dtype)
    return tiles


# --------------------------------------------------------------------------- the time loop


@overload
def run(
    graph: Graph,
    inputs: np.ndarray | Mapping[str, np.ndarray],
    config: RunConfig | None = ...,
    *,
    target: TargetSpec | str | None = ...,
    trace: Literal[False] = ...,
    state: RunState | None = ...,
    return_state: Literal[False] = ...,
    **options: Any,
) -> dict[str, np.ndarray]: ...


@overload
def run(
    graph: Graph,
    inputs: np.ndarray | Mapping[str, np.ndarray],
    config: RunConfig | None = ...,
    *,
    target: TargetSpec | str | None = ...,
    trace: Literal[True],
    state: RunState | None = ...,
    return_state: Literal[False] = ...,
    **options: Any,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]: ...


@overload
def run(
    graph: Graph,
    inputs: np.ndarray | Mapping[str, np.ndarray],
    config: RunConfig | None = ...,
    *,
    target: TargetSpec | str | None = ...,
    trace: Literal[False] = ...,
    state: RunState | None = ...,
    return_state: Literal[True],
    **options: Any,
) -> tuple[dict[str, np.ndarray], RunState]: ...


def run(
    graph: Graph,
    inputs: np.ndarray | Mapping[str, np.ndarray],
    config: RunConfig | None = None,
    *,
    target: TargetSpec | str | None = None,
    trace: bool = False,
    state: RunState | None = None,
    return_state: bool = False,
    **options: Any,
) -> Any:
    """Run a step graph over whole sequences (SPEC §1): the reference time loop.

    Every state starts at zeros of its type at the actual batch size (or where ``state``
    left it); each step evaluates the nodes in ``graph.nodes()`` order on that step's
    inputs; at the end of the step every state takes the value of its ``next``.

    Args:
        graph: the step graph; it is verified first.
        inputs: time-major arrays ``[T, B, ...]``: one array when the graph has one input,
            else a dict by input name. Each must have the input type's rank plus one and
            its non-batch dimensions. Float inputs must be float32 or float64 (cast to the
            input's float dtype, so float64 is rounded to float32 for an ``f32`` input);
            integer inputs (token ids) must have an integer dtype (cast, range-checked);
            bool inputs must be bool. All inputs share T and B.
        config: the mode, the chip and its age (:class:`~snuc.runtime.config.RunConfig`;
            default: ``float``); ``quantized`` and ``pcm`` need a graph compiled with the
            ``tile`` and ``quantize`` passes (no ``xbar.dense`` or ``xbar.conv`` left).
            Digital ops are the same in every mode; ``float``'s ``xbar.mvm`` is the exact
            window product; docs/quantization.md gives the order of operations of the
            others. The interpreter runs the batch whole: ``batch_size`` is not used,
            ``batch_offset`` keys the read noise.
        target: the chip the graph was compiled for (a TargetSpec or a target name);
            required by ``quantized`` and ``pcm``, ignored by ``float``.
        trace: also return every node result stacked over time.
        state: go on from where an earlier run over the sequences' previous piece
            stopped (:class:`~snuc.runtime.run_state.RunState`): its states, its step
            count (a duplicated tile's copy) and its read-noise streams; the run must be
            of the same graph, configuration and batch.
        return_state: also return where this run stops, for the next piece.
        **options: fields of ``config`` to replace, by name (``mode="pcm", seed=1``).

    Returns:
        Every graph output stacked over time, ``[T, B, ...]``, by output name; with
        ``trace``, a pair ``(outputs, values)`` where ``values`` holds every node result
        stacked the same way, by value name; with ``return_state``, the
        :class:`~snuc.runtime.run_state.RunState` after these (``(outputs, state)`` or
        ``(outputs, values, state)``).

    Raises:
        SnucError: a bad configuration, a missing target, a graph not compiled for the
            mode, a missing, unknown or badly typed input, a ``state`` of another run, or
            a run-time error of a node (see :func:`evaluate_node`). Each message is one
            line.
        VerifyError: the graph is malformed.
    """
    config = run_config(config, options)
    spec = run_target(config, target)
    graph.verify()
    feeds = bind_inputs(graph, inputs)
    steps, batch = sequence_extent(graph, feeds)
    types = graph.values()
    nodes = list(graph.nodes())
    resume = Resumption.of(graph, config, batch, [(0, batch)], state, return_state)
    start = resume.start(config.batch_offset, batch)
    tiles = (
        {}
        if spec is None
        else _tiles(
            graph,
            nodes,
            mode=config.mode,
            target=spec,
            seed=config.seed,
            t_inference_s=config.t_inference_s,
            drift_compensation=config.drift_compensation,
            steps=steps,
            batch=batch,
            batch_offset=config.batch_offset,
            start=start,
        )
    )

    recorded = list(dict.fromkeys(graph.outputs))
    if trace:
        recorded += [v for node in nodes for v in node.outputs if v not in recorded]
    stacked = {
        v: np.empty((steps, *types[v].concrete(batch)), dtype=types[v].np_dtype) for v in recorded
    }

    env: dict[str, np.ndarray] = dict(graph.constants)
    states = dict(start.values) if start is not None else resume.zeros(batch)
    step0 = resume.step
    with np.errstate(all="ignore"):
        for t in range(steps):
            env.update(states)
            for name, seq in feeds.items():
                env[name] = seq[t]
            for node in nodes:
                args = [env[v] for v in node.inputs]
                tile = tiles.get(node.id)
                results = _evaluate(node, args) if tile is None else (tile.mvm(args[0], step0 + t),)
                for name, value in zip(node.outputs, results, strict=True):
                    if t == 0:
                        _check_result(node, name, value, types[name], batch)
                    env[name] = value
            for name, out in stacked.items():
                out[t] = env[name]
            states = {s.name: env[s.next] for s in graph.states}

    outputs = {v: stacked[v] for v in graph.outputs}
    if not return_state:
        return (outputs, stacked) if trace else outputs
    ended = ChunkState(
        states,
        {n.op.tile: tiles[n.id].read_noise.position() for n in nodes if _noisy(tiles.get(n.id))},
    )
    end = resume.end(steps, {config.batch_offset: ended})
    return (outputs, stacked, end) if trace else (outputs, end)


def _noisy(tile: _Tile | None) -> bool:
    return tile is not None and tile.read_noise is not None


def bind_inputs(
    graph: Graph, inputs: np.ndarray | Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Map each graph input to its checked (and possibly cast) sequence array.

    Raises:
        SnucError: a missing, unknown or badly typed input (see :func:`run`); one line.
    """
    if isinstance(inputs, Mapping):
        missing = [n for n in graph.inputs if n not in inputs]
        if missing:
            raise SnucError(
                f"missing input {', '.join('%' + n for n in missing)}; graph @{graph.name} "
                f"takes {', '.join('%' + n for n in graph.inputs)}"
            )
        unknown = [str(n) for n in inputs if n not in graph.inputs]
        if unknown:
            raise SnucError(
                f"unknown input {', '.join(unknown)}; graph @{graph.name} "
                f"takes {', '.join('%' + n for n in graph.inputs)}"
            )
        given = dict(inputs)
    elif len(graph.inputs) == 1:
        given = {graph.inputs[0]: inputs}
    else:
        raise SnucError(
            f"graph @{graph.name} has {len(graph.inputs)} inputs "
            f"({', '.join('%' + n for n in graph.inputs)}); pass a dict by input name"
        )
    return {n: _checked_input(n, graph.type_of(n), given[n]) for n in graph.inputs}


def _expected_shape(type_: TensorType) -> str:
    return "[" + ", ".join(["T", *(str(d) for d in type_.shape)]) + "]"


def _checked_input(name: str, type_: TensorType, value: object) -> np.ndarray:
    """``value`` as the sequence of input ``name``; a one-line SnucError if it does not fit."""
    if not isinstance(value, np.ndarray):
        raise SnucError(
            f"input %{name}: expected a NumPy array {_expected_shape(type_)}, "
            f"got {type(value).__name__}"
        )
    if value.ndim != type_.rank + 1:
        raise SnucError(
            f"input %{name}: expected rank {type_.rank + 1} {_expected_shape(type_)} "
            f"(time first), got rank {value.ndim} with shape {list(value.shape)}"
        )
    for axis, (want, got) in enumerate(zip(type_.shape, value.shape[1:], strict=True), start=1):
        if want != BATCH and want != got:
            raise SnucError(
                f"input %{name}: expected shape {_expected_shape(type_)}, "
                f"got {list(value.shape)} (axis {axis} should be {want})"
            )
    return _cast_input(name, type_, value)


def _cast_input(name: str, type_: TensorType, value: np.ndarray) -> np.ndarray:
    """Cast ``value`` to the input's dtype where that is safe; a SnucError otherwise."""
    target = type_.np_dtype
    kind = target.kind
    if kind == "f":
        ok = value.dtype in (np.dtype(np.float32), np.dtype(np.float64))
        want = "float32 (or float64)"
    elif kind in "iu":
        ok = value.dtype.kind in "iu"
        want = "integer (token ids)"
    else:
        ok = value.dtype == target
        want = str(target)
    if not ok:
        raise SnucError(f"input %{name}: expected {want} values for {type_}, got {value.dtype}")
    if kind in "iu" and value.size:
        info = np.iinfo(target)
        low, high = value.min(), value.max()
        if low < info.min or high > info.max:
            raise SnucError(
                f"input %{name}: values [{low}, {high}] do not fit {type_.dtype} "
                f"[{info.min}, {info.max}]"
            )
    return value.astype(target, copy=False)


def sequence_extent(graph: Graph, feeds: Mapping[str, np.ndarray]) -> tuple[int, int]:
    """The common sequence length T and batch size B of bound inputs (:func:`bind_inputs`).

    A graph whose inputs carry no batch dimension runs with B = 1.
    """
    lengths = {n: a.shape[0] for n, a in feeds.items()}
    batches = {}
    for n, a in feeds.items():
        type_ = graph.type_of(n)
        if type_.has_batch:
            batches[n] = a.shape[1 + type_.shape.index(BATCH)]
    for what, sizes in (("sequence length T", lengths), ("batch size B", batches)):
        if len(set(sizes.values())) > 1:
            listed = ", ".join(f"%{n}: {s}" for n, s in sizes.items())
            raise SnucError(f"inputs disagree on the {what} ({listed}); give them equal sizes")
    steps = next(iter(lengths.values()))
    batch = next(iter(batches.values()), 1)
    return steps, batch


def _check_result(node: Node, name: str, value: np.ndarray, type_: TensorType, batch: int) -> None:
    """A computed value must have its declared type; otherwise the semantics are wrong."""
    shape = type_.concrete(batch)
    if value.shape != shape or value.dtype != type_.np_dtype:
        raise VerifyError(
            f"{node.loc.prefix()}{node.op.NAME} %{name} computed {value.dtype}{list(value.shape)}, "
            f"but its type is {type_} ({list(shape)} at batch {batch})"
        )
