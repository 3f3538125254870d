"""Import an ONNX model (SPEC §2) as a verified snuc step graph.

Two forms are accepted:

* **Step form** (no Scan): inputs ``x_t`` and the previous states, outputs ``out_t`` and
  the new states. The pairing ``{"<state output>": "<state input>"}`` comes from
  ``state_pairs`` (the CLI's ``--state OUT=IN``) or else from the JSON object in the
  model's ``metadata_props["snuc.state"]``. Every other input is a sequence input and
  every other output an output, in graph order. The first dimension of every input is the
  batch ``B``; the others must be static.
* **Sequence form**: one input ``X[T, B, ...]`` (token ids ``X[T, B]``) and a Scan over
  its axis 0 whose body is the step. The Scan's initial states are evaluated at import
  (they must be zeros of shape ``[B, ...static]``); ops before and after the Scan that
  act on each timestep separately (an embedding lookup of the token ids, a readout layer)
  move into the step with their axes shifted, and an op that mixes timesteps is an error.
  Final Scan states listed as model outputs are not computed and are left out of the
  graph's outputs (snuc computes per-timestep outputs); using one in an op is an error.

Sequence-level ``LSTM`` and ``GRU`` nodes (what ``torch.onnx.export`` writes for ``nn.LSTM``
and ``nn.GRU``) make a model sequence form too: each becomes step ops with its hidden (and
cell) state as IR states (:mod:`snuc.frontend.onnx_rnn`).

A further form, a loop over time that the exporter unrolled (T copies of the step reading
``X[t]``, outputs stacked), is folded back into the step form first
(:mod:`snuc.frontend.unroll`).

Every node is lowered faithfully to generic IR ops (:mod:`snuc.frontend.onnx_lower`);
recognising SNU layers is a later pass. Each IR node carries ``loc("onnx:<node name>")``;
value names come from the ONNX names. Model outputs keep their ONNX names unless one is
an alias (Identity) of another value, whose name it then takes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from snuc.frontend.onnx_eval import (
    INITIAL_STATE_INPUTS,
    PROBE_SHAPE,
    ModelContext,
    live_nodes,
    one_line,
    subgraphs,
    type_name,
)
from snuc.frontend.onnx_lower import IR_DTYPES, SUPPORTED_OPS, Lowerer
from snuc.frontend.onnx_values import FinalState, Tensor
from snuc.frontend.unroll import fold_unrolled, is_unrolled
from snuc.ir.errors import SnucError
from snuc.ir.graph import Graph
from snuc.ir.limits import check_tensor_bytes, load_json
from snuc.ir.types import BATCH, DTYPES, TensorType

__all__ = ["STATE_METADATA_KEY", "SUPPORTED_OPS", "import_onnx"]

SEQUENCE_OPS = ("Scan", *INITIAL_STATE_INPUTS)
"""Ops that run over the whole sequence: a model with one is in sequence form."""

STATE_METADATA_KEY = "snuc.state"
"""The ``metadata_props`` key holding a step-form model's state pairing (JSON)."""


def import_onnx(
    model: str | os.PathLike | onnx.ModelProto,
    state_pairs: Mapping[str, str] | None = None,
) -> Graph:
    """Import an ONNX model as a step graph (see the module docstring for the two forms).

    Args:
        model: a path to an ``.onnx`` file, or a loaded model.
        state_pairs: step form only: ``{state output: state input}``; replaces the pairing
            in the model's metadata. None or empty: use the metadata (no states if absent).

    Returns:
        The verified step graph, named after the ONNX graph.

    Raises:
        SnucError: with a one-line message naming the culprit, when the file is missing,
            is not ONNX, is truncated or fails the ONNX checker; when an op is not
            supported; when a weight holds NaN or Inf; when an initial state is not zero;
            when a shape cannot be resolved; when the state pairing names a missing input
            or output; when a Scan does not run forward over axis 0.
    """
    proto, source = _load(model)
    _check_model(proto, source)
    _check_names(proto.graph, source)
    _check_finite(proto.graph)
    inputs = _inputs(proto.graph)
    sequence_nodes = [node for node in proto.graph.node if node.op_type in SEQUENCE_OPS]
    if not sequence_nodes and is_unrolled(proto):
        if state_pairs:
            raise SnucError(
                f"{source}: state pairs apply to step-form models; this one is a loop over "
                f"time unrolled by its exporter, whose states snuc finds itself"
            )
        proto, pairs = fold_unrolled(proto, source)
        graph = _import_step(proto, _inputs(proto.graph), pairs, source)
    elif sequence_nodes:
        if state_pairs:
            raise SnucError(
                f"{source}: state pairs apply to step-form models; this one is in sequence "
                f"form (a {sequence_nodes[0].op_type}), whose state variables are the states"
            )
        graph = _import_sequence(proto, inputs, source)
    else:
        graph = _import_step(proto, inputs, _pairing(proto, state_pairs, source), source)
    graph.remove_dead()
    graph.verify()
    _check_value_sizes(graph)
    return graph


def _check_value_sizes(graph: Graph) -> None:
    """Every value of one sequence must fit the tensor size limit: the runtimes allocate
    them (times the batch), so a shape of 10^9 is refused here, not at run time."""
    for name, type_ in graph.values().items():
        dims = [1 if d == BATCH else d for d in type_.shape]
        check_tensor_bytes(f"value {name!r} (one sequence)", dims, DTYPES[type_.dtype].itemsize)


# ---------------------------------------------------------------------- loading


def _load(model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """The model and how messages name it (its path, or its graph's name)."""
    if isinstance(model, onnx.ModelProto):
        return model, f"ONNX model {model.graph.name!r}"
    path = Path(os.fspath(model))
    if not path.exists():
        raise SnucError(f"{path}: no such file; expected an ONNX model")
    if not path.is_file():
        raise SnucError(f"{path}: is not a file; expected an ONNX model")
    data = path.read_bytes()
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except DecodeError:
        # ONNX files begin with field 1 (ir_version, a varint): byte 0x08.
        if data[:1] == b"\x08":
            raise SnucError(
                f"{path}: the ONNX file is truncated or corrupt (its protobuf does not "
                f"parse); export or copy it again"
            ) from None
        raise SnucError(f"{path}: not an ONNX file (it does not parse as an ONNX model)") from None
    if not proto.HasField("graph") or proto.ir_version <= 0 or not proto.opset_import:
        raise SnucError(f"{path}: not an ONNX file (no graph, IR version or opset in it)")
    try:
        onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as err:
        # onnx refuses absolute paths, '..' and missing files with a ValidationError.
        raise SnucError(f"{path}: cannot read the model's external data: {one_line(err)}") from None
    return proto, str(path)


def _check_model(proto: onnx.ModelProto, source: str) -> None:
    try:
        onnx.checker.check_model(proto)
    except Exception as err:  # ValidationError, or errors of the checker's C++ core
        raise SnucError(f"{source}: the ONNX checker rejects the model: {one_line(err)}") from None


def _check_names(graph: onnx.GraphProto, source: str) -> None:
    """Every name in every (sub)graph must be text: protobuf hands a string field that is
    not valid UTF-8 over as bytes, which no message or IR name can hold."""
    infos = (*graph.input, *graph.output, *graph.value_info, *graph.initializer)
    names = [graph.name, *(i.name for i in infos)]
    for node in graph.node:
        names += [node.name, node.op_type, node.domain, *node.input, *node.output]
        names += [a.name for a in node.attribute]
        for sub in subgraphs(node):
            _check_names(sub, source)
    if any(isinstance(name, bytes) for name in names):
        raise SnucError(f"{source}: a name in the model is not UTF-8 text; the file is corrupt")


def _check_finite(graph: onnx.GraphProto) -> None:
    """Every float weight, in every (sub)graph, must be finite."""
    for init in graph.initializer:
        _require_finite(numpy_helper.to_array(init), f"initializer {init.name!r}")
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    _require_finite(
                        numpy_helper.to_array(attr.t), f"the Constant {node.output[0]!r}"
                    )
                elif attr.name in ("value_float", "value_floats"):
                    _require_finite(
                        np.array(attr.floats or [attr.f]), f"the Constant {node.output[0]!r}"
                    )
        for sub in subgraphs(node):
            _check_finite(sub)


def _require_finite(array: np.ndarray, what: str) -> None:
    if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
        bad = "NaN" if np.any(np.isnan(array)) else "Inf"
        raise SnucError(
            f"{what} holds {bad}; snuc needs finite weights (check the training run or export)"
        )


def _inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """The graph's real inputs (old IR versions also list the initializers as inputs)."""
    weights = {t.name for t in graph.initializer}
    return [v for v in graph.input if v.name not in weights]


def _step_type(info: onnx.ValueInfoProto, lead: int, expected: str) -> TensorType:
    """The IR type of one timestep of an input: ``[B, ...static]``.

    Args:
        info: the ONNX input.
        lead: how many leading dimensions the ONNX input has before the static ones: 1
            (the batch) for the step form, 2 (time and batch) for the sequence input.
        expected: the shape to name in messages, e.g. ``"[T, B, ...]"``.
    """
    name = info.name
    if not info.type.HasField("tensor_type"):
        raise SnucError(f"input {name!r} is not a tensor; expected {expected}")
    tensor = info.type.tensor_type
    if tensor.elem_type not in IR_DTYPES:
        kind = type_name(tensor.elem_type)
        raise SnucError(
            f"input {name!r} has element type {kind}; snuc takes FLOAT, DOUBLE, INT64, INT32 "
            f"or BOOL inputs"
        )
    if not tensor.HasField("shape") or len(tensor.shape.dim) < lead:
        raise SnucError(f"input {name!r} has no shape or too few dimensions; expected {expected}")
    dims = []
    for axis, dim in enumerate(tensor.shape.dim):
        if axis < lead:
            continue
        if not dim.HasField("dim_value"):
            raise SnucError(
                f"input {name!r} has the dynamic dimension {dim.dim_param or '?'!r} at axis "
                f"{axis}; only {'the time and batch axes' if lead == 2 else 'the batch axis'} "
                f"may be dynamic: export with static sizes for the others"
            )
        dims.append(int(dim.dim_value))
    # The import evaluates a sequence-form model's initial states on inputs of up to
    # PROBE_SHAPE; a step-form input is checked for one sequence.
    lead_dims = PROBE_SHAPE if lead == 2 else (1,)
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
    check_tensor_bytes(f"input {name!r} at import", (*lead_dims, *dims), itemsize)
    return TensorType(IR_DTYPES[tensor.elem_type], (BATCH, *dims))


# ---------------------------------------------------------------------- step form


def _pairing(
    proto: onnx.ModelProto, state_pairs: Mapping[str, str] | None, source: str
) -> dict[str, str]:
    """``{state output: state input}`` from the argument, else from the metadata."""
    if state_pairs:
        return dict(state_pairs)
    text = next((p.value for p in proto.metadata_props if p.key == STATE_METADATA_KEY), None)
    if text is None:
        return {}
    pairs = load_json(text, f"{source}: metadata {STATE_METADATA_KEY!r}")
    if not isinstance(pairs, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in pairs.items()
    ):
        raise SnucError(
            f"{source}: metadata {STATE_METADATA_KEY!r} must be a JSON object mapping state "
            f'outputs to state inputs, {{"<output>": "<input>", ...}}'
        )
    return pairs


def _check_pairing(
    pairs: dict[str, str], inputs: list[str], outputs: list[str], source: str
) -> None:
    for out, inp in pairs.items():
        if out not in outputs:
            raise SnucError(
                f"{source}: the state pairing names output {out!r}, which the model does not "
                f"have; its outputs are: {', '.join(outputs)}"
            )
        if inp not in inputs:
            raise SnucError(
                f"{source}: the state pairing names input {inp!r}, which the model does not "
                f"have; its inputs are: {', '.join(inputs)}"
            )
    seen: dict[str, str] = {}
    for out, inp in pairs.items():
        if inp in seen:
            raise SnucError(
                f"{source}: state input {inp!r} is paired with two outputs, {seen[inp]!r} "
                f"and {out!r}; pair each state input with one output"
            )
        seen[inp] = out


def _import_step(
    proto: onnx.ModelProto, inputs: list[onnx.ValueInfoProto], pairs: dict[str, str], source: str
) -> Graph:
    onnx_graph = proto.graph
    outputs = [o.name for o in onnx_graph.output]
    _check_pairing(pairs, [i.name for i in inputs], outputs, source)
    state_of_input = {inp: out for out, inp in pairs.items()}
    if all(i.name in state_of_input for i in inputs):
        raise SnucError(
            f"{source}: every input is a state; a step-form model needs a sequence input x_t"
        )
    graph = Graph(onnx_graph.name or "model")
    lowerer = Lowerer(graph, ModelContext(proto), lead=0)
    lowerer.bind_initializers(onnx_graph)
    ir_name = {}
    for info in inputs:
        type_ = _step_type(info, 1, "[B, ...] (batch first, then static sizes)")
        name = graph.fresh(info.name)
        if info.name in state_of_input:
            graph.add_state(name, type_)
        else:
            graph.add_input(name, type_)
        ir_name[info.name] = name
        lowerer.bind(info.name, Tensor(name))
    for out in outputs:
        if out not in pairs:
            lowerer.prefer_name(onnx_graph, out, out)
    lowerer.run(live_nodes(onnx_graph, outputs))
    for info in inputs:
        if info.name not in state_of_input:
            continue
        out = state_of_input[info.name]
        value = lowerer.env[out]
        want = graph.type_of(ir_name[info.name])
        got = graph.type_of(value.name) if isinstance(value, Tensor) else "a constant"
        if got != want:
            raise SnucError(
                f"{source}: state output {out!r} is {got}, but its state input "
                f"{info.name!r} is {want}; a state must keep its type"
            )
        graph.set_next(ir_name[info.name], value.name)
    for out in outputs:
        if out not in pairs:
            _add_output(graph, out, lowerer.env[out], source)
    if not graph.outputs:
        raise SnucError(
            f"{source}: every output is a state; a step-form model needs an output out_t "
            f"(add it as an Identity of the value to output)"
        )
    return graph


def _add_output(graph: Graph, name: str, value: object, source: str) -> None:
    if not isinstance(value, Tensor):
        raise SnucError(
            f"{source}: output {name!r} does not depend on the model's input or states; snuc "
            f"computes outputs from the input sequence"
        )
    if value.name not in graph.outputs:
        graph.outputs.append(value.name)


# ---------------------------------------------------------------------- sequence form


def _import_sequence(
    proto: onnx.ModelProto, inputs: list[onnx.ValueInfoProto], source: str
) -> Graph:
    onnx_graph = proto.graph
    if len(inputs) != 1:
        raise SnucError(
            f"{source}: a sequence-form model (with a Scan, LSTM or GRU) takes one input "
            f"X[T, B, ...]; this one takes {', '.join(repr(i.name) for i in inputs) or 'none'}"
        )
    (x,) = inputs
    type_ = _step_type(x, 2, "X[T, B, ...] (time-major, static sizes after the batch)")
    graph = Graph(onnx_graph.name or "model")
    lowerer = Lowerer(graph, ModelContext(proto, sequence_input=x.name), lead=1)
    lowerer.bind_initializers(onnx_graph)
    lowerer.bind(x.name, Tensor(graph.add_input(graph.fresh(x.name), type_)))
    outputs = [o.name for o in onnx_graph.output]
    for out in outputs:
        lowerer.prefer_name(onnx_graph, out, out)
    lowerer.run(live_nodes(onnx_graph, outputs, skip_scan_states=True))
    for out in outputs:
        value = lowerer.env[out]
        if not isinstance(value, FinalState):
            _add_output(graph, out, value, source)
    if not graph.outputs:
        raise SnucError(
            f"{source}: every output is a final Scan state; snuc computes outputs at every "
            f"timestep: output the Scan's per-step outputs"
        )
    return graph
