"""Import a NIR graph (SPEC §2.1 "NIR") as an ONNX model in snuc's step form (SPEC §2).

NIR (the Neuromorphic Intermediate Representation) describes networks in continuous time
and stores no time step. :func:`nir_to_onnx` discretises each primitive at a given ``dt``
and writes one timestep as an ONNX graph of ops the ONNX importer already supports
(Gemm, Conv, Reshape, AveragePool, Add, Sub, Mul, Greater, Cast, Identity): inputs ``x_t``
and the previous states, outputs ``out_t`` and the new states, the pairing in the
``snuc.state`` metadata. The rest of the compiler sees an ordinary step-form model; the
neurons come out as loose digital ops, which the lift pass may later put on neuron units.

**Discretisation** (NIR's definitions, REFERENCE.md "Networks from other tools"). For a
membrane ``τ dv/dt = (v_leak − v) + r·I`` with the input held over the step:

* ``euler`` (default): ``l = 1 − dt/τ``;  ``exact``: ``l = exp(−dt/τ)``;
* both: ``v_t = l·v_{t−1} + r·(1 − l)·I_t + (1 − l)·v_leak`` — so Euler's input scale is
  ``r·dt/τ`` and its constant ``(dt/τ)·v_leak``, and ``exact`` is the exact solution for an
  input constant over the step.

Without a leak (``IF``, ``I``: ``dv/dt = r·I``) both give ``v_t = v_{t−1} + r·dt·I_t``.
``CubaLIF``/``CubaLI`` discretise their two equations one after the other, the synaptic
current first, and the membrane takes the new current: ``i_t = l_syn·i_{t−1} +
w_in·(1 − l_syn)·x_t``, then the membrane above with ``I_t := i_t`` (SPEC §1.1, and what
snnTorch's ``Synaptic`` computes). For ``exact`` this is each equation solved exactly for
its own input held over the step, not the exact solution of the coupled pair. Euler with
``dt > τ`` makes ``l`` negative and is refused.

**Spikes and reset** (the convention snuc follows): a neuron spikes at step t when
``v_t > v_threshold`` (strictly), and its membrane is then set to ``v_reset`` before the
next step's update. The state carried between steps is the membrane *before* that reset
(snnTorch's ``mem``); the reset is applied in the next step from the spike recomputed from
it, ``y_{t−1} = H(v_{t−1} − θ)`` with ``H(x) = 1`` where ``x > 0``:

    v_t = l·(v_{t−1}·(1 − y_{t−1}) + v_reset·y_{t−1}) + r·(1 − l)·I_t + (1 − l)·v_leak
    y_t = H(v_t − θ)

The spikes are those of "update, spike, reset to v_reset" (the membrane after the reset is
``v_{t−1}·(1 − y_{t−1}) + v_reset·y_{t−1}``). With ``v_reset = 0`` and ``v_leak = 0`` this
is SPEC §1.1's LIF with reset to zero, ``a_t = r·(1 − l)·I_t``, which is an SNU with
g = identity and b = −θ; NIR has no reset by subtraction. Outputs: LIF, CubaLIF, IF and
Threshold give spikes (0/1); LI, CubaLI and I give their membrane.

**Graph.** Edges into one node add up. Nested ``NIRGraph`` nodes are inlined. A cycle must
pass through a neuron: a depth-first walk from the input finds each cycle's closing edge,
and the last neuron on the cycle before it passes its output on one step late (a state
``<neuron>_out`` that starts at zero), as snnTorch's ``RLeaky`` feeds back ``V·y_{t−1}``.
Tensors have NIR's shapes with the batch put in front.

**Where frameworks depart from NIR** (checked with snntorch 1.0.0, nir 1.0.8, nirtorch 2.6):
snnTorch's ``export_to_nir`` writes ``τ = dt/(1 − β)`` and ``r = τ/dt`` with its own
``dt = 1e-4``: compiled with ``dt = 1e-4`` that gives ``l = β`` and input scale 1, its own
step. It writes every ``Leaky``/``Synaptic``/``RLeaky`` as zero-reset (``v_reset = 0``),
whatever the module's ``reset_mechanism``: a subtract-reset network (snnTorch's default)
comes back as its zero-reset twin. Its ``Synaptic`` export sets ``w_in = τ_syn/dt`` so the
current's input scale is 1. Scalar ``β``/threshold export as shape-() parameters that fail
NIR's own type check: give per-neuron tensors. snnTorch's own importer
(``import_from_nir``) assumes ``dt = 1e-4`` too, divides the threshold by ``r·dt/τ`` when
that is not 1 instead of scaling the input (the same spikes, the membrane scaled by
``τ/(r·dt)``), refuses ``v_leak ≠ 0`` and per-neuron thresholds, and reads ``IF`` as a
``Leaky`` with ``β = 0.9`` (NIR's IF has no leak); snuc scales the input and keeps NIR's IF.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from snuc.ir.errors import SnucError

if TYPE_CHECKING:
    import nir

__all__ = ["DISCRETIZATIONS", "is_nir_file", "load_nir", "nir_to_onnx"]

DISCRETIZATIONS = ("euler", "exact")
"""The ``--discretize`` choices (the module docstring gives both)."""

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_OPSET = 17
_IR_VERSION = 8
_STATE_KEY = "snuc.state"  # frontend.onnx_import.STATE_METADATA_KEY (not imported: no cycle)


def _nir() -> Any:
    """The ``nir`` package, or the one-line error naming the extra that installs it."""
    try:
        import nir
    except ImportError:
        raise SnucError("NIR input needs the nir package: pip install 'snuc[nir]'") from None
    return nir


def is_nir_file(path: str | os.PathLike) -> bool:
    """True for a ``.nir`` path or a file that starts with the HDF5 signature (NIR's format)."""
    path = Path(os.fspath(path))
    if path.suffix.lower() == ".nir":
        return True
    try:
        with path.open("rb") as f:
            return f.read(len(_HDF5_MAGIC)) == _HDF5_MAGIC
    except OSError:
        return False


def load_nir(path: str | os.PathLike) -> nir.NIRGraph:
    """Read a ``.nir`` file.

    Raises:
        SnucError: one line, when the file is missing or is not a NIR graph nir can read.
    """
    nir = _nir()
    path = Path(os.fspath(path))
    if not path.is_file():
        raise SnucError(f"{path}: no such file; expected a NIR graph")
    try:
        graph = nir.read(path)
    except Exception as err:  # h5py, nir's asserts and KeyErrors: all mean "not NIR"
        detail = " ".join(str(err).split()) or type(err).__name__
        raise SnucError(f"{path}: not a readable NIR file ({detail[:200]})") from None
    if not isinstance(graph, nir.NIRGraph):
        raise SnucError(f"{path}: holds a single {type(graph).__name__}, not a NIR graph")
    return graph


def nir_to_onnx(
    graph: nir.NIRGraph, *, dt: float | None, discretize: str = "euler"
) -> onnx.ModelProto:
    """One timestep of ``graph`` at time step ``dt`` as a step-form ONNX model (SPEC §2).

    Args:
        graph: the NIR graph: one ``Input``, one or more ``Output`` nodes.
        dt: the time step in the units of the graph's time constants (seconds).
        discretize: ``"euler"`` or ``"exact"`` (the module docstring).

    Returns:
        The model; its input is ``[B, *input shape]``, its state pairing in the metadata.

    Raises:
        SnucError: one line: when ``dt`` is missing or not positive, a primitive is not
            supported, a cycle has no neuron, the graph has not one input, or Euler would
            make a decay negative.
    """
    nir = _nir()
    step = _check_step(dt, discretize)
    flat = _flatten(graph, nir)
    delayed = _delayed_edges(flat)
    order = _topological_order(flat, delayed)
    shapes = _infer_shapes(flat, order, nir)
    b = _Builder()
    values = {name: b.input(name, shapes[name][1]) for name in flat.inputs}
    late = {u: b.input(f"{u}_out", shapes[u][1]) for u in sorted({u for u, _ in delayed})}
    for name in order:
        node = flat.nodes[name]
        in_shape, out_shape = shapes[name]
        if name in flat.inputs:
            continue
        reads = [late[s] if (s, name) in delayed else values[s] for s in flat.preds[name]]
        x = b.sum(reads, name)
        if name in flat.outputs:
            values[name] = b.output(name, x, out_shape)
            continue
        values[name] = _converter(node)(b, step, _safe(name), node, x, in_shape)
        if name in late:
            b.close_state(late[name], values[name], out_shape)
    return b.model("nir_step")


# ---------------------------------------------------------------------- the time step


@dataclass(frozen=True)
class _Step:
    dt: float
    method: str

    def decay(self, tau: np.ndarray, what: str) -> np.ndarray:
        """``l`` for time constants ``tau``: ``1 − dt/τ`` (Euler) or ``exp(−dt/τ)``."""
        tau = np.asarray(tau, dtype=np.float64)
        if not (np.isfinite(tau).all() and (tau > 0).all()):
            raise SnucError(f"{what}: time constants must be positive and finite")
        if self.method == "exact":
            return np.exp(-self.dt / tau)
        leak = 1.0 - self.dt / tau
        if (leak < 0).any():
            raise SnucError(
                f"{what}: dt = {self.dt:g} exceeds the time constant {float(tau.min()):g}, "
                f"where Euler's decay 1 - dt/tau is negative; use a smaller --dt or "
                f"--discretize exact"
            )
        return leak


def _check_step(dt: float | None, discretize: str) -> _Step:
    if dt is None:
        raise SnucError(
            "NIR input needs the time step: NIR is continuous-time and stores none; "
            "give --dt SECONDS (snuc.compile(..., dt=SECONDS) in Python; snnTorch's "
            "export_to_nir assumes 1e-4)"
        )
    if isinstance(dt, bool) or not isinstance(dt, int | float) or not math.isfinite(dt) or dt <= 0:
        raise SnucError(f"--dt must be a positive time step in seconds, got {dt!r}")
    if discretize not in DISCRETIZATIONS:
        raise SnucError(
            f"--discretize must be one of {', '.join(DISCRETIZATIONS)}, got {discretize!r}"
        )
    return _Step(float(dt), discretize)


# ---------------------------------------------------------------------- the graph


@dataclass
class _Flat:
    """The NIR graph with nested graphs inlined: nodes by name, each node's sources."""

    nodes: dict[str, Any] = field(default_factory=dict)
    preds: dict[str, list[str]] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    passes: set[str] = field(default_factory=set)  # a nested graph's Input/Output nodes


def _flatten(graph: nir.NIRGraph, nir: Any) -> _Flat:
    flat = _Flat()
    _inline(flat, graph, "", nir)
    if len(flat.inputs) != 1:
        raise SnucError(
            f"NIR graph: snuc takes one Input node (the sequence input), found "
            f"{len(flat.inputs)}: {', '.join(flat.inputs) or 'none'}"
        )
    if not flat.outputs:
        raise SnucError("NIR graph: no Output node")
    return flat


def _inline(flat: _Flat, graph: nir.NIRGraph, prefix: str, nir: Any) -> tuple[str, str]:
    """Add ``graph``'s nodes under ``prefix``; the names of its Input and Output nodes."""
    ends: dict[str, tuple[str, str]] = {}
    for name, node in graph.nodes.items():
        full = f"{prefix}{name}"
        if isinstance(node, nir.NIRGraph):
            ends[name] = _inline(flat, node, f"{full}.", nir)
            continue
        flat.nodes[full] = node
        flat.preds[full] = []
        is_end = isinstance(node, nir.Input | nir.Output)
        if is_end and prefix:
            flat.passes.add(full)
        elif isinstance(node, nir.Input):
            flat.inputs.append(full)
        elif isinstance(node, nir.Output):
            flat.outputs.append(full)
    for src, dst in graph.edges:
        for end in (src, dst):
            if end not in graph.nodes:
                raise SnucError(f"NIR graph: an edge names {prefix}{end!r}, which is no node")
        src_name = ends[src][1] if src in ends else f"{prefix}{src}"
        dst_name = ends[dst][0] if dst in ends else f"{prefix}{dst}"
        flat.preds[dst_name].append(src_name)
    if not prefix:
        return "", ""
    sub_in = [n for n, v in graph.nodes.items() if isinstance(v, nir.Input)]
    sub_out = [n for n, v in graph.nodes.items() if isinstance(v, nir.Output)]
    if len(sub_in) != 1 or len(sub_out) != 1:
        raise SnucError(
            f"NIR graph: nested graph {prefix[:-1]!r} must have one Input and one Output node"
        )
    return f"{prefix}{sub_in[0]}", f"{prefix}{sub_out[0]}"


_NEURONS = ("LIF", "CubaLIF", "CubaLI", "LI", "IF", "I")


def _stateful(node: Any) -> bool:
    """A neuron: a node whose output depends on earlier steps (it holds a membrane)."""
    return type(node).__name__ in _NEURONS


def _delayed_edges(flat: _Flat) -> set[tuple[str, str]]:
    """The edges that carry the previous step's value: one per cycle, out of a neuron."""
    delayed: set[tuple[str, str]] = set()
    while (cycle := _find_cycle(flat, delayed)) is not None:
        neurons = [i for i, n in enumerate(cycle) if _stateful(flat.nodes[n])]
        if not neurons:
            raise SnucError(
                f"NIR graph: the cycle {' -> '.join([*cycle, cycle[0]])} passes through no "
                f"neuron, so it has no value at any step (an algebraic loop)"
            )
        last = neurons[-1]
        delayed.add((cycle[last], cycle[(last + 1) % len(cycle)]))
    return delayed


def _find_cycle(flat: _Flat, cut: set[tuple[str, str]]) -> list[str] | None:
    """A cycle found walking depth-first from the inputs, in order from where it is entered."""
    succs: dict[str, list[str]] = {n: [] for n in flat.nodes}
    for dst, srcs in flat.preds.items():
        for src in srcs:
            if (src, dst) not in cut:
                succs[src].append(dst)
    state: dict[str, int] = {}  # 1: on the walk's path, 2: done
    path: list[str] = []
    roots = [*flat.inputs, *flat.nodes]
    for root in roots:
        if root in state:
            continue
        stack = [(root, iter(succs[root]))]
        state[root] = 1
        path.append(root)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = 2
            elif state.get(child) == 1:
                return path[path.index(child) :]
            elif child not in state:
                state[child] = 1
                path.append(child)
                stack.append((child, iter(succs[child])))
    return None


def _topological_order(flat: _Flat, delayed: set[tuple[str, str]]) -> list[str]:
    """Nodes in an order where every undelayed source comes before its consumers."""
    waiting = {n: sum((s, n) not in delayed for s in srcs) for n, srcs in flat.preds.items()}
    succs: dict[str, list[str]] = {n: [] for n in flat.nodes}
    for dst, srcs in flat.preds.items():
        for src in srcs:
            if (src, dst) not in delayed:
                succs[src].append(dst)
    ready = [n for n in flat.nodes if waiting[n] == 0]
    order: list[str] = []
    while ready:
        node = ready.pop(0)
        order.append(node)
        for dst in succs[node]:
            waiting[dst] -= 1
            if waiting[dst] == 0:
                ready.append(dst)
    return order


# ---------------------------------------------------------------------- shapes

Shape = tuple[int, ...]


def _infer_shapes(flat: _Flat, order: list[str], nir: Any) -> dict[str, tuple[Shape, Shape]]:
    """Each node's input and output shape (without the batch), from the input forward.

    A node takes its input shape from the first source that has one: sources over a
    delayed edge may come later in ``order``, so the walk repeats until nothing changes.
    """
    shapes: dict[str, tuple[Shape, Shape]] = {}
    changed = True
    while changed:
        changed = False
        for name in order:
            node = flat.nodes[name]
            if name in shapes:
                continue
            if name in flat.inputs:
                shape = _declared(node.input_type.get("input"), name)
            else:
                known = [shapes[s][1] for s in flat.preds[name] if s in shapes]
                if not known:
                    continue
                shape = known[0]
            shapes[name] = (shape, _output_shape(name, node, shape, flat, nir))
            changed = True
    for name in flat.nodes:
        if name not in shapes:
            raise SnucError(f"NIR graph: no input reaches node {name!r}")
        mismatched = [s for s in flat.preds[name] if shapes[s][1] != shapes[name][0]]
        if mismatched:
            got = [list(shapes[s][1]) for s in flat.preds[name]]
            raise SnucError(f"NIR node {name!r}: its inputs have different shapes {got}")
    return shapes


def _declared(shape: Any, name: str) -> Shape:
    if shape is None:
        raise SnucError(f"NIR node {name!r}: the input has no shape")
    return tuple(int(d) for d in np.asarray(shape).reshape(-1))


def _output_shape(name: str, node: Any, shape: Shape, flat: _Flat, nir: Any) -> Shape:
    if name in flat.inputs or name in flat.outputs or name in flat.passes:
        return shape
    kind = type(node).__name__
    if isinstance(node, nir.Affine | nir.Linear):
        weight = np.asarray(node.weight)
        if weight.ndim != 2 or shape != (weight.shape[1],):
            raise SnucError(
                f"NIR node {name!r} ({kind}): weight {list(weight.shape)} does not take an "
                f"input of shape {list(shape)} (a vector of its columns)"
            )
        return (weight.shape[0],)
    if isinstance(node, nir.Conv1d | nir.Conv2d):
        return _conv_geometry(name, node, shape)[0]
    if isinstance(node, nir.SumPool2d | nir.AvgPool2d):
        return _pool_geometry(name, node, shape)[0]
    if isinstance(node, nir.Flatten):
        start, end = _flatten_dims(name, node, shape)
        return (*shape[:start], int(np.prod(shape[start : end + 1])), *shape[end + 1 :])
    params = [np.asarray(getattr(node, p)).shape for p in _PARAMS.get(kind, ())]
    if kind not in _PARAMS:
        raise SnucError(
            f"NIR node {name!r}: primitive {kind} is not supported; snuc supports "
            f"{', '.join(SUPPORTED_PRIMITIVES)}"
        )
    try:
        out = np.broadcast_shapes(shape, *params)
    except ValueError:
        out = None
    if out != shape:
        raise SnucError(
            f"NIR node {name!r} ({kind}): parameters of shape {[list(p) for p in params]} do "
            f"not fit its input of shape {list(shape)}"
        )
    return shape


_PARAMS = {
    "Scale": ("scale",),
    "Threshold": ("threshold",),
    "LIF": ("tau", "r", "v_leak", "v_threshold", "v_reset"),
    "CubaLIF": ("tau_syn", "tau_mem", "r", "v_leak", "v_threshold", "v_reset", "w_in"),
    "CubaLI": ("tau_syn", "tau_mem", "r", "v_leak", "w_in"),
    "LI": ("tau", "r", "v_leak"),
    "IF": ("r", "v_threshold", "v_reset"),
    "I": ("r",),
}

SUPPORTED_PRIMITIVES = (
    "Affine", "Linear", "Conv1d", "Conv2d", "Flatten", "SumPool2d", "AvgPool2d",
    *_PARAMS, "NIRGraph",
)  # fmt: skip


def _pair(value: Any, rank: int) -> tuple[int, ...]:
    values = np.asarray(value).reshape(-1)
    return tuple(int(v) for v in (np.repeat(values, rank) if values.size == 1 else values))


def _conv_geometry(name: str, node: Any, shape: Shape) -> tuple[Shape, tuple[int, ...]]:
    """A convolution's output shape and its pads ``(begin..., end...)``."""
    weight = np.asarray(node.weight)
    rank = weight.ndim - 2
    if len(shape) != rank + 1 or shape[0] != weight.shape[1] * int(node.groups):
        raise SnucError(
            f"NIR node {name!r} ({type(node).__name__}): weight {list(weight.shape)} does not "
            f"take an input of shape {list(shape)}"
        )
    kernel, stride = weight.shape[2:], _pair(node.stride, rank)
    dilation = _pair(node.dilation, rank)
    span = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
    if isinstance(node.padding, str):
        if node.padding == "valid":
            begin = end = (0,) * rank
        else:  # "same", as torch: stride 1, the odd pad at the end
            begin = tuple(s // 2 for s in span)
            end = tuple(s - s // 2 for s in span)
    else:
        begin = end = _pair(node.padding, rank)
    sizes = [
        (n + b + e - s - 1) // st + 1
        for n, b, e, s, st in zip(shape[1:], begin, end, span, stride, strict=True)
    ]
    return (weight.shape[0], *sizes), (*begin, *end)


def _pool_geometry(name: str, node: Any, shape: Shape) -> tuple[Shape, tuple[int, ...]]:
    if len(shape) != 3:
        raise SnucError(
            f"NIR node {name!r}: 2-D pooling needs a [C, H, W] input, got {list(shape)}"
        )
    kernel, stride = _pair(node.kernel_size, 2), _pair(node.stride, 2)
    pads = _pair(node.padding, 2)
    sizes = [
        (n + 2 * p - k) // s + 1 for n, p, k, s in zip(shape[1:], pads, kernel, stride, strict=True)
    ]
    return (shape[0], *sizes), (*pads, *pads)


def _flatten_dims(name: str, node: Any, shape: Shape) -> tuple[int, int]:
    rank = len(shape)
    start = int(node.start_dim) + (rank if int(node.start_dim) < 0 else 0)
    end = int(node.end_dim) + (rank if int(node.end_dim) < 0 else 0)
    if not 0 <= start <= end < rank:
        raise SnucError(
            f"NIR node {name!r} (Flatten): dims {node.start_dim}..{node.end_dim} do not fit "
            f"an input of shape {list(shape)}"
        )
    return start, end


# ---------------------------------------------------------------------- the ONNX graph


_SAFE = re.compile(r"[^A-Za-z0-9_]")


def _safe(name: str) -> str:
    """An ONNX and snuc IR value name for a NIR node name (dots and the like become _)."""
    name = _SAFE.sub("_", name)
    return name if name[:1].isalpha() or name[:1] == "_" else f"n_{name}"


class _Builder:
    """Collects the step graph's nodes, constants, inputs, outputs and state pairs."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.states: dict[str, str] = {}
        self.taken: set[str] = set()

    def fresh(self, hint: str) -> str:
        name, i = hint, 1
        while name in self.taken:
            name, i = f"{hint}_{i}", i + 1
        self.taken.add(name)
        return name

    def const(self, hint: str, array: Any, dtype: Any = np.float32) -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], hint: str, **attrs: Any) -> str:
        out = self.fresh(hint)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def _info(self, name: str, shape: Shape) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", *shape])

    def input(self, hint: str, shape: Shape) -> str:
        name = self.fresh(_safe(hint))
        self.inputs.append(self._info(name, shape))
        return name

    def output(self, hint: str, value: str, shape: Shape) -> str:
        name = self.op("Identity", [value], _safe(hint))
        self.outputs.append(self._info(name, shape))
        return name

    def close_state(self, state_input: str, value: str, shape: Shape) -> None:
        """Output ``value`` as the next value of ``state_input`` (zero at step 0)."""
        self.states[self.output(f"{state_input}_next", value, shape)] = state_input

    def sum(self, values: list[str], hint: str) -> str:
        total = values[0]
        for v in values[1:]:
            total = self.op("Add", [total, v], f"{_safe(hint)}_in")
        return total

    def model(self, name: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", _OPSET)], ir_version=_IR_VERSION
        )
        helper.set_model_props(model, {_STATE_KEY: json.dumps(self.states)})
        onnx.checker.check_model(model)
        return model


# ---------------------------------------------------------------------- primitives

Convert = Callable[[_Builder, _Step, str, Any, str, Shape], str]


def _f32(value: Any) -> np.ndarray:
    return np.asarray(value, dtype=np.float64).astype(np.float32)


def _converter(node: Any) -> Convert:
    kind = type(node).__name__
    table: dict[str, Convert] = {
        "Input": _identity, "Output": _identity,
        "Affine": _affine, "Linear": _affine, "Scale": _scale, "Threshold": _threshold,
        "Conv1d": _conv, "Conv2d": _conv, "Flatten": _flatten_node,
        "SumPool2d": _pool, "AvgPool2d": _pool,
        "LIF": _neuron, "CubaLIF": _neuron, "CubaLI": _neuron, "LI": _neuron,
        "IF": _neuron, "I": _neuron,
    }  # fmt: skip
    if kind not in table:
        raise SnucError(
            f"NIR primitive {kind} is not supported; snuc supports "
            f"{', '.join(SUPPORTED_PRIMITIVES)}"
        )
    return table[kind]


def _identity(b: _Builder, step: _Step, name: str, node: Any, x: str, shape: Shape) -> str:
    return x


def _affine(b: _Builder, step: _Step, name: str, node: Any, x: str, shape: Shape) -> str:
    """``W x (+ b)`` as a Gemm with the weight ``[out, in]`` transposed (on the crossbars)."""
    operands = [x, b.const(f"{name}_weight", _f32(node.weight))]
    if hasattr(node, "bias"):
        operands.append(b.const(f"{name}_bias", _f32(node.bias)))
    return b.op("Gemm", operands, name, transB=1)


def _scale(b: _Builder, step: _Step, name: str, node: Any, x: str, shape: Shape) -> str:
    return b.op("Mul", [x, b.const(f"{name}_scale", _f32(node.scale))], name)


def _heaviside(b: _Builder, v: str, theta: np.ndarray, hint: str) -> str:
    """``H(v − θ)`` as snnTorch writes it: Sub, Greater than 0, Cast to float."""
    shifted = b.op("Sub", [v, b.const(f"{hint}_threshold", _f32(theta))], f"{hint}_shift")
    fired = b.op("Greater", [shifted, b.const(f"{hint}_zero", 0.0)], f"{hint}_fired")
    return b.op("Cast", [fired], hint, to=TensorProto.FLOAT)


def _threshold(b: _Builder, step: _Step, name: str, node: Any, x: str, shape: Shape) -> str:
    return _heaviside(b, x, node.threshold, name)


def _conv(b: _Builder, step: _Step, name: str, node: Any, x: str, shape: Shape) -> str:
    """A Conv; a 1-D one runs as a 2-D one of height 1 (snuc's Conv is 2-D)."""
    out_shape, pads = _conv_geometry(name, node, shape)
    weight = _f32(node.weight)
    strides, dilations = _pair(node.stride, weight.ndim - 2), _pair(node.dilation, weight.ndim - 2)
    if weight.ndim == 3:
        x = b.op("Reshape", [x, b.const(f"{name}_2d", [-1, shape[0], 1, shape[1]], np.int64)],
                 f"{name}_2d_in")  # fmt: skip
        weight = weight[:, :, None, :]
        strides, dilations, pads = (1, *strides), (1, *dilations), (0, pads[0], 0, pads[1])
    operands = [x, b.const(f"{name}_weight", weight), b.const(f"{name}_bias", _f32(node.bias))]
    y = b.op("Conv", operands, name if len(out_shape) == 3 else f"{name}_2d",
             strides=list(strides), dilations=list(dilations), pads=list(pads),
             group=int(node.groups))  # fmt: skip
    if len(out_shape) == 2:
        y = b.op("Reshape", [y, b.const(f"{name}_1d", [-1, *out_shape], np.int64)], name)
    return y


def _pool(b: _Builder, step: _Step, name: str, node: Any, x: str, shape: Shape) -> str:
    """AvgPool2d counts the zero padding (torch's default); SumPool2d is that times k·k."""
    _, pads = _pool_geometry(name, node, shape)
    kernel, strides = _pair(node.kernel_size, 2), _pair(node.stride, 2)
    summing = type(node).__name__ == "SumPool2d"
    y = b.op("AveragePool", [x], f"{name}_mean" if summing else name, kernel_shape=list(kernel),
             strides=list(strides), pads=list(pads), count_include_pad=1)  # fmt: skip
    if summing:
        y = b.op("Mul", [y, b.const(f"{name}_size", float(np.prod(kernel)))], name)
    return y


def _flatten_node(b: _Builder, step: _Step, name: str, node: Any, x: str, shape: Shape) -> str:
    start, end = _flatten_dims(name, node, shape)
    out = (*shape[:start], int(np.prod(shape[start : end + 1])), *shape[end + 1 :])
    return b.op("Reshape", [x, b.const(f"{name}_shape", [-1, *out], np.int64)], name)


def _neuron(b: _Builder, step: _Step, name: str, node: Any, x: str, shape: Shape) -> str:
    """A neuron's step (the module docstring): a synaptic current first if it has one,
    then the membrane, with the reset from the spike recomputed from its last value."""
    what = f"NIR node {name!r} ({type(node).__name__})"
    if hasattr(node, "tau_syn"):
        syn = step.decay(node.tau_syn, what)
        current = b.input(f"{name}_i", shape)
        x = _integrate(b, current, syn, x, np.asarray(node.w_in) * (1.0 - syn), 0.0, f"{name}_i")
        b.close_state(current, x, shape)
    r = np.asarray(node.r, dtype=np.float64)
    tau = getattr(node, "tau", getattr(node, "tau_mem", None))
    if tau is None:  # IF, I: dv/dt = r·I
        leak, scale, drive = np.float64(1.0), r * step.dt, np.float64(0.0)
    else:
        leak = step.decay(tau, what)
        scale, drive = r * (1.0 - leak), np.asarray(node.v_leak) * (1.0 - leak)
    v_prev = b.input(f"{name}_v", shape)
    kept = v_prev
    spiking = hasattr(node, "v_threshold")
    if spiking:
        fired = _heaviside(b, v_prev, node.v_threshold, f"{name}_reset")
        keep = b.op("Sub", [b.const(f"{name}_one", 1.0), fired], f"{name}_keep")
        kept = b.op("Mul", [v_prev, keep], f"{name}_kept")
        if np.any(_f32(node.v_reset) != 0):
            to = b.op("Mul", [fired, b.const(f"{name}_v_reset", _f32(node.v_reset))], f"{name}_to")
            kept = b.op("Add", [kept, to], f"{name}_after_reset")
    v = _integrate(b, kept, leak, x, scale, drive, f"{name}_v")
    b.close_state(v_prev, v, shape)
    return _heaviside(b, v, node.v_threshold, f"{name}_spike") if spiking else v


def _integrate(b: _Builder, prev: str, leak: Any, x: str, scale: Any, drive: Any, hint: str) -> str:
    """``leak·prev + scale·x + drive``, leaving out a factor of 1 and a term of 0 (in float32)."""
    leak, scale, drive = _f32(leak), _f32(scale), _f32(drive)
    if np.any(leak != 1):
        prev = b.op("Mul", [prev, b.const(f"{hint}_decay", leak)], f"{hint}_decayed")
    if np.any(scale != 1):
        x = b.op("Mul", [x, b.const(f"{hint}_scale", scale)], f"{hint}_input")
    total = b.op("Add", [prev, x], hint if not np.any(drive != 0) else f"{hint}_sum")
    if np.any(drive != 0):
        total = b.op("Add", [total, b.const(f"{hint}_drive", drive)], hint)
    return total
