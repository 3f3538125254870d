"""Running pieces of an ONNX model at import time, with onnxruntime.

Two uses: folding a node whose inputs are all constants (so folded float32 values are
exactly what onnxruntime computes), and evaluating the part of a sequence-form model
that computes a Scan's initial states, which snuc requires to be zeros of shape
``[B, ...static]``. Also the graph walks both need: the nodes a set of values depends on,
and the outer-scope names a subgraph captures.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from snuc.ir.errors import SnucError
from snuc.ir.limits import check_tensor_bytes
from snuc.ir.types import BATCH, TensorType, dtype_name

# Two different (T, B) at which the initial-state computation is run: a dimension equal
# to B in both runs is the batch, one that does not change is static, anything else
# depends on T (or on B in another way) and is an error.
_PROBE_SIZES = ((3, 2), (5, 4))
PROBE_SHAPE = max(_PROBE_SIZES)
"""The largest ``(T, B)`` an input is evaluated at during import."""

# Ops whose output can hold more elements than all their inputs together, by an amount
# their input values say: sized before they run (``_expanded_shape``).
_EXPANDING = ("ConstantOfShape", "Expand", "Tile", "Range")

# onnxruntime logs failures on stderr besides raising them; snuc's errors are one line.
ort.set_default_logger_severity(4)


def one_line(text: str, limit: int = 300) -> str:
    """``text`` collapsed onto one line (messages from onnx and onnxruntime span several)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def type_name(elem_type: int) -> str:
    """The ONNX name of an element type, or its number where it names none."""
    try:
        return onnx.TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"element type {elem_type}"


def describe(node: onnx.NodeProto) -> str:
    """How error messages name a node: ``node 'fc1/MatMul' (MatMul)``."""
    if node.name:
        return f"node {node.name!r} ({node.op_type})"
    return f"{node.op_type} node computing {node.output[0]!r}"


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs held in a node's attributes (a Scan's body, an If's branches)."""
    found = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            found.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            found.extend(attr.graphs)
    return found


def free_names(graph: onnx.GraphProto) -> set[str]:
    """Values a (sub)graph uses but does not define: what it captures from outer scopes."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(n for n in node.input if n)
        for sub in subgraphs(node):
            used |= free_names(sub)
        defined.update(node.output)
    used.update(v.name for v in graph.output)
    return used - defined


INITIAL_STATE_INPUTS = {"LSTM": (5, 6), "GRU": (5,)}
"""Per sequence-level recurrent op, the positions of its initial-state inputs."""


def dependencies(node: onnx.NodeProto, *, skip_scan_states: bool) -> list[str]:
    """The values ``node`` reads, including those its subgraphs capture.

    With ``skip_scan_states``, the initial states of a Scan, an LSTM or a GRU are left
    out: the importer evaluates them separately (:meth:`ModelContext.probe`).
    """
    inputs = [n for n in node.input if n]
    if skip_scan_states and node.op_type == "Scan":
        n_scan = int(attr(node, "num_scan_inputs", 0))
        inputs = inputs[len(node.input) - n_scan :]
    if skip_scan_states and node.op_type in INITIAL_STATE_INPUTS:
        skipped = INITIAL_STATE_INPUTS[node.op_type]
        inputs = [n for i, n in enumerate(node.input) if n and i not in skipped]
    for sub in subgraphs(node):
        inputs += sorted(free_names(sub))
    return inputs


def live_nodes(
    graph: onnx.GraphProto, roots: Iterable[str], *, skip_scan_states: bool = False
) -> list[onnx.NodeProto]:
    """The nodes of ``graph`` that ``roots`` depend on, in graph (topological) order."""
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    live: set[int] = set()
    stack = list(roots)
    while stack:
        i = producer.get(stack.pop())
        if i is None or i in live:
            continue
        live.add(i)
        stack.extend(dependencies(graph.node[i], skip_scan_states=skip_scan_states))
    return [node for i, node in enumerate(graph.node) if i in live]


def attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    """An attribute's value (strings decoded), or ``default`` when the node lacks it."""
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


class ModelContext:
    """What every lowering step needs to know about the model being imported.

    Attributes:
        model: the checked model.
        opset: the version of the default (``ai.onnx``) domain.
        sequence_input: the input ``X[T, B, ...]`` of a sequence-form model; None for the
            step form.
    """

    def __init__(self, model: onnx.ModelProto, sequence_input: str | None = None) -> None:
        self.model = model
        self.sequence_input = sequence_input
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)

    def _make_model(self, graph: onnx.GraphProto) -> onnx.ModelProto:
        return helper.make_model(
            graph, opset_imports=list(self.model.opset_import), ir_version=self.model.ir_version
        )

    def fold(self, node: onnx.NodeProto, inputs: Sequence[np.ndarray | None]) -> list[np.ndarray]:
        """Evaluate ``node`` on constant inputs with onnxruntime; one array per output.

        Raises:
            SnucError: onnxruntime fails, or an output would exceed the tensor size limit
                (:mod:`snuc.ir.limits`), checked before anything runs.
        """
        self._check_output_sizes(node, inputs)
        feeds: dict[str, np.ndarray] = {}
        for name, array in zip(node.input, inputs, strict=True):
            if name and name not in feeds:
                feeds[name] = np.asarray(array)
        graph = helper.make_graph(
            [node],
            "fold",
            [
                helper.make_tensor_value_info(
                    name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape
                )
                for name, a in feeds.items()
            ],
            [onnx.ValueInfoProto(name=out) for out in node.output if out],
        )
        try:
            results = _session(self._make_model(graph)).run(None, feeds)
        except Exception as err:  # onnxruntime raises its own exception types
            raise SnucError(
                f"{describe(node)}: cannot evaluate it on its constant inputs: {one_line(err)}"
            ) from None
        it = iter(results)
        return [np.asarray(next(it)) if out else None for out in node.output]

    def initial_states(self, scan: onnx.NodeProto, sequence_input: str) -> list[TensorType]:
        """Evaluate a Scan's initial states and return their types ``[B, ...static]``.

        The outer-graph nodes they depend on run with onnxruntime at two different
        sequence shapes (the input's first two dimensions are made symbolic for it);
        every value must be zero, and only the first dimension may follow the batch.

        Raises:
            SnucError: a state is not zero, or its shape is not ``[B, ...static]``.
        """
        n_states = len(scan.input) - int(attr(scan, "num_scan_inputs", 0))
        names = list(scan.input[:n_states])
        if not names:
            return []
        x_info = next(v for v in self.model.graph.input if v.name == sequence_input)
        runs = self.probe(scan, names, sequence_input)
        return [
            self._state_type(scan, name, [run[i] for run in runs], x_info)
            for i, name in enumerate(names)
        ]

    def probe(
        self, node: onnx.NodeProto, names: list[str], sequence_input: str
    ) -> list[list[np.ndarray]]:
        """Evaluate the outer-graph values ``names`` that ``node`` reads, at each probe size.

        Returns:
            Per probe ``(T, B)`` of ``_PROBE_SIZES``, the arrays of ``names`` in order.

        Raises:
            SnucError: onnxruntime cannot evaluate them, or a value would be too large.
        """
        graph = self.model.graph
        nodes = live_nodes(graph, names)
        used = set(names) | {d for n in nodes for d in dependencies(n, skip_scan_states=False)}
        x_info = next(v for v in graph.input if v.name == sequence_input)
        inputs = []
        if sequence_input in used:
            relaxed = onnx.ValueInfoProto.FromString(x_info.SerializeToString())
            dims = relaxed.type.tensor_type.shape.dim
            dims[0].dim_param, dims[1].dim_param = "T", "B"
            inputs.append(relaxed)
        sub = helper.make_graph(
            nodes,
            "initial_states",
            inputs,
            [onnx.ValueInfoProto(name=n) for n in names],
            initializer=[t for t in graph.initializer if t.name in used],
        )
        return [self._run_probe(node, sub, x_info, t, b, names) for t, b in _PROBE_SIZES]

    def _run_probe(
        self,
        scan: onnx.NodeProto,
        sub: onnx.GraphProto,
        x_info: onnx.ValueInfoProto,
        steps: int,
        batch: int,
        names: list[str],
    ) -> list[np.ndarray]:
        feeds = {}
        if sub.input:
            tensor_type = x_info.type.tensor_type
            dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
            shape = (steps, batch, *(d.dim_value for d in tensor_type.shape.dim[2:]))
            rng = np.random.default_rng(0)
            # Real-valued inputs get random values (a state computed as X * 0 is still
            # zero); integer ones (token ids) get 0, a valid index into any table.
            feeds[x_info.name] = (
                rng.standard_normal(shape).astype(dtype)
                if np.issubdtype(dtype, np.floating)
                else np.zeros(shape, dtype)
            )
        try:
            if not self._probe_is_bounded(sub, steps, batch):
                return self._run_node_by_node(sub, feeds, names)
            return _session(self._make_model(sub)).run(names, feeds)
        except SnucError as err:
            raise SnucError(f"{describe(scan)}: initial states: {err}") from None
        except Exception as err:  # onnxruntime raises its own exception types
            raise SnucError(
                f"{describe(scan)}: cannot evaluate its initial states "
                f"({', '.join(names)}) for a [T={steps}, B={batch}] input: {one_line(err)}"
            ) from None

    def _probe_is_bounded(self, sub: onnx.GraphProto, steps: int, batch: int) -> bool:
        """Check every value of the initial-state graph against the tensor size limit.

        ONNX shape inference with data propagation follows ``Shape`` through ``Gather``,
        ``Slice`` and ``Concat`` into ``ConstantOfShape`` and ``Expand``, so the sizes are
        known before anything is allocated.

        Returns:
            False when an expanding op's output size stays unknown: the probe must then
            run node by node, each node sized by :meth:`fold` before it runs.

        Raises:
            SnucError: a value would exceed the limit.
        """
        probe = onnx.GraphProto.FromString(sub.SerializeToString())
        for info in probe.input:
            dims = info.type.tensor_type.shape.dim
            dims[0].dim_value, dims[1].dim_value = steps, batch
        try:
            inferred = onnx.shape_inference.infer_shapes(self._make_model(probe), data_prop=True)
        except Exception:  # noqa: BLE001 -- inference gives up: take the node-by-node path
            return False
        known = set()
        for info in (*inferred.graph.value_info, *inferred.graph.output):
            shape = _static_shape(info)
            if shape is not None:
                check_tensor_bytes(f"value {info.name!r}", shape, _itemsize(info))
                known.add(info.name)
        return all(
            out in known for n in probe.node if n.op_type in _EXPANDING for out in n.output if out
        )

    def _run_node_by_node(
        self, sub: onnx.GraphProto, feeds: dict[str, np.ndarray], names: list[str]
    ) -> list[np.ndarray]:
        """Evaluate ``sub`` one node at a time with :meth:`fold` (which sizes each first)."""
        env = {t.name: numpy_helper.to_array(t) for t in sub.initializer} | feeds
        for node in sub.node:
            arrays = self.fold(node, [env[i] if i else None for i in node.input])
            env.update((out, a) for out, a in zip(node.output, arrays, strict=True) if out)
        return [env[n] for n in names]

    def _check_output_sizes(
        self, node: onnx.NodeProto, inputs: Sequence[np.ndarray | None]
    ) -> None:
        """Refuse to evaluate ``node`` if an output would exceed the tensor size limit."""
        if node.op_type in _EXPANDING:
            shape, itemsize = _expanded_shape(node, inputs)
            check_tensor_bytes(f"{describe(node)}: its output", shape, itemsize)
            return
        present = [(n, np.asarray(a)) for n, a in zip(node.input, inputs, strict=True) if n]
        graph = helper.make_graph(
            [node],
            "size",
            [
                helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                for n, a in dict(present).items()
            ],
            [onnx.ValueInfoProto(name=out) for out in node.output if out],
        )
        try:
            inferred = onnx.shape_inference.infer_shapes(self._make_model(graph))
        except Exception:  # noqa: BLE001 -- onnxruntime reports the real problem
            return
        for info in inferred.graph.output:
            shape = _static_shape(info)
            if shape is not None:
                what = f"{describe(node)}: output {info.name!r}"
                check_tensor_bytes(what, shape, _itemsize(info))

    def _state_type(
        self,
        scan: onnx.NodeProto,
        name: str,
        values: list[np.ndarray],
        x_info: onnx.ValueInfoProto,
    ) -> TensorType:
        for value in values:
            if value.size and not np.all(value == 0):
                worst = np.nanmax(np.abs(value.astype(np.float64)), initial=np.nan)
                raise SnucError(
                    f"{describe(scan)}: initial state {name!r} is not zero (max |value| "
                    f"{worst:g}); snuc starts every state at zero, so compute it as zeros "
                    f"(e.g. ConstantOfShape of the input's batch size)"
                )
        first, second = (v.shape for v in values)
        batches = [b for _, b in _PROBE_SIZES]
        dims: list[int | str] = []
        for axis, (d1, d2) in enumerate(zip(first, second, strict=True)):
            if [d1, d2] == batches:
                dims.append(BATCH)
            elif d1 == d2:
                dims.append(int(d1))
            else:
                raise SnucError(
                    f"{describe(scan)}: dimension {axis} of initial state {name!r} changes "
                    f"with the sequence length; expected a shape [B, ...static]"
                )
        declared = x_info.type.tensor_type.shape.dim
        static_batch = declared[1].dim_value if declared[1].HasField("dim_value") else None
        if dims and dims[0] == static_batch:
            # A model exported with a static batch builds its states with that size.
            dims[0] = BATCH
        if not dims or dims[0] != BATCH or BATCH in dims[1:]:
            shape = "[" + ", ".join(map(str, dims)) + "]"
            raise SnucError(
                f"{describe(scan)}: initial state {name!r} has shape {shape}; expected "
                f"[B, ...static] with B the input's batch size (its dimension 1)"
            )
        return TensorType(dtype_name(values[0].dtype), tuple(dims))


def _static_shape(info: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    """The shape of a tensor value whose every dimension is known, else None."""
    if not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
        return None
    dims = info.type.tensor_type.shape.dim
    if not all(d.HasField("dim_value") for d in dims):
        return None
    return tuple(max(int(d.dim_value), 0) for d in dims)


def _itemsize(info: onnx.ValueInfoProto) -> int:
    try:
        return helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type).itemsize
    except (KeyError, TypeError):  # undefined or exotic types: assume the widest
        return 8


def _expanded_shape(
    node: onnx.NodeProto, inputs: Sequence[np.ndarray | None]
) -> tuple[tuple[int, ...], int]:
    """The output shape and item size of an op of ``_EXPANDING``, from its inputs' values,
    without computing it (sizes that onnxruntime would refuse count as empty)."""
    op = node.op_type
    first = np.asarray(inputs[0])
    if op == "ConstantOfShape":
        value = attr(node, "value")
        itemsize = 4 if value is None else helper.tensor_dtype_to_np_dtype(value.data_type).itemsize
        return tuple(max(int(d), 0) for d in first.reshape(-1)), itemsize
    if op == "Range":
        start, limit, delta = (float(np.asarray(a).reshape(-1)[0]) for a in inputs[:3])
        steps = (limit - start) / delta if delta else 0.0
        count = math.ceil(steps) if math.isfinite(steps) and steps > 0 else 0
        return (count,), first.dtype.itemsize
    other = [int(d) for d in np.asarray(inputs[1]).reshape(-1)]
    itemsize = first.dtype.itemsize
    if op == "Tile":
        return tuple(s * max(r, 0) for s, r in zip(first.shape, other, strict=False)), itemsize
    try:  # Expand: the two shapes broadcast
        return np.broadcast_shapes(first.shape, tuple(other)), itemsize
    except ValueError:
        return first.shape, itemsize
