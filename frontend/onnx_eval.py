"""Running pieces of an ONNX model at import time, with onnxruntime.

Two uses: folding a node whose inputs are all constants (so folded float32 values are
exactly what onnxruntime computes), and evaluating the part of a sequence-form model
that computes a Scan's initial states, which snuc requires to be zeros of shape
``[B, ...static]``. Also the graph walks both need: the nodes a set of values depends on,
and the outer-scope names a subgraph captures.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from snuc.ir.errors import SnucError
from snuc.ir.types import BATCH, TensorType, dtype_name

# Two different (T, B) at which the initial-state computation is run: a dimension equal
# to B in both runs is the batch, one that does not change is static, anything else
# depends on T (or on B in another way) and is an error.
_PROBE_SIZES = ((3, 2), (5, 4))


def one_line(text: str, limit: int = 300) -> str:
    """``text`` collapsed onto one line (messages from onnx and onnxruntime span several)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


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


def dependencies(node: onnx.NodeProto, *, skip_scan_states: bool) -> list[str]:
    """The values ``node`` reads, including those its subgraphs capture.

    With ``skip_scan_states``, a Scan's initial states are left out: the importer
    evaluates them separately (:meth:`ModelContext.initial_states`).
    """
    inputs = [n for n in node.input if n]
    if skip_scan_states and node.op_type == "Scan":
        n_scan = int(attr(node, "num_scan_inputs", 0))
        inputs = inputs[len(node.input) - n_scan :]
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
    options.log_severity_level = 3
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
        """Evaluate ``node`` on constant inputs with onnxruntime; one array per output."""
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
        graph = self.model.graph
        n_states = len(scan.input) - int(attr(scan, "num_scan_inputs", 0))
        names = list(scan.input[:n_states])
        if not names:
            return []
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
        runs = [self._run_probe(scan, sub, x_info, t, b, names) for t, b in _PROBE_SIZES]
        return [
            self._state_type(scan, name, [run[i] for run in runs], x_info)
            for i, name in enumerate(names)
        ]

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
            return _session(self._make_model(sub)).run(names, feeds)
        except Exception as err:  # onnxruntime raises its own exception types
            raise SnucError(
                f"{describe(scan)}: cannot evaluate its initial states "
                f"({', '.join(names)}) for a [T={steps}, B={batch}] input: {one_line(err)}"
            ) from None

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
