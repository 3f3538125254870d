"""Export SNU networks from PyTorch to ONNX, and check every export with onnxruntime.

Two forms (SPEC §2):

* :func:`export` writes the **sequence form**: input ``X[T, B, ...]`` (token ids
  ``X[T, B]``), an ONNX ``Scan`` over axis 0 whose body is one timestep, output
  ``Y[T, B, ...]``. ``T`` and ``B`` are symbolic. The outer graph builds the zero initial
  states from ``Shape(X)`` with Slice / Concat / ConstantOfShape / Constant only.
* :func:`export_step` writes the **step form**: inputs ``x_t`` and the states, outputs
  ``out_t`` and the new states, paired in ``metadata_props["snuc.state"]``.

How: ``torch.onnx.export`` (the dynamo exporter, with onnxscript's optimiser folding
constants) exports one call of the network's ``step`` with every state as an explicit
input and output; that step graph becomes the Scan body unchanged apart from the order of
its inputs and outputs (Scan wants states first). The body keeps its weights as float32
initializers, so a Scan body is itself a complete step graph. Only the ops the compiler
supports may appear in it; anything else is a :class:`SnucError` at export time.

Every export is checked (``verify=True``): onnxruntime runs the written file on random
sequences of several lengths and batch sizes, spike-like (binary) and real-valued, and
every output and every layer state at every step must match PyTorch eager within ``atol``
(a flipped spike differs by 1). The file appears at ``path`` only once it has passed.
The check lives in :mod:`snuc.frontend.export_check`; what a step takes and carries (its
state slots and signature), in :mod:`snuc.frontend.export_signature`.

State names: a layer at ``layers.<i>`` of the network with state ``(s, y)`` has state
inputs ``layers.<i>.s``, ``layers.<i>.y`` and state outputs ``layers.<i>.s_next``,
``layers.<i>.y_next``. ``metadata_props["snuc.layers"]`` describes the layers as JSON.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import onnx
import torch
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper
from torch import nn

from snuc.frontend.export_check import check_against_torch
from snuc.frontend.export_signature import (
    EXAMPLE_BATCH,
    X_NAME,
    Y_NAME,
    Signature,
    example_step_input,
    first_line,
    fresh_name,
    names_in,
    state_slots,
)
from snuc.frontend.layers import (
    SNU,
    ConvSNU,
    Flatten,
    Readout,
    SNUNetwork,
    TimeMajor,
)
from snuc.ir.errors import SnucError

__all__ = ["STEP_OPS", "export", "export_step", "verify_export"]

STEP_OPS = frozenset(
    {
        "MatMul", "Gemm", "Conv", "Gather", "Add", "Sub", "Mul", "Div", "Neg", "Relu",
        "LeakyRelu", "Sigmoid", "Tanh", "Greater", "GreaterOrEqual", "Less", "Cast", "Where",
        "Identity", "Constant", "Flatten", "Reshape", "Transpose", "Concat", "Squeeze",
        "Unsqueeze", "MaxPool", "AveragePool", "ReduceSum", "ReduceMean", "Softmax",
        "LogSoftmax",
    }
)  # fmt: skip
"""ONNX ops a step body may hold (SPEC §2)."""

MIN_OPSET = 18
"""The dynamo exporter's oldest opset."""

STEP_IN, STEP_OUT = "x_t", "out_t"
_DTYPES = {"float32": torch.float32, "int64": torch.int64}


class _FlatStep(nn.Module):
    """``net.step`` with the nested state flattened: ``(x_t, states) -> (*new_states, out_t)``."""

    def __init__(self, net: SNUNetwork, counts: tuple[int, ...]) -> None:
        super().__init__()
        self.net = net
        self.counts = counts

    def forward(self, x_t: torch.Tensor, states: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        nested, i = [], 0
        for n in self.counts:
            nested.append(tuple(states[i : i + n]))
            i += n
        out_t, new_state = self.net.step(x_t, tuple(nested))
        # States first: when out_t is also a state (a last SNU layer's y), the exporter
        # copies the later output with an Identity, and the state keeps the direct value.
        return (*(t for layer_state in new_state for t in layer_state), out_t)


# --------------------------------------------------------------------------- public API


def export(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    input_features: int | Sequence[int] | None = None,
    example_input: torch.Tensor | None = None,
    input_dtype: str | torch.dtype | None = None,
    opset: int = MIN_OPSET,
    verify: bool = True,
    check_lengths: Sequence[int] = (1, 7, 50),
    check_batches: Sequence[int] = (1, 3),
    seed: int = 0,
    atol: float = 1e-5,
) -> Path:
    """Write ``model`` as a sequence-form ONNX model (a Scan over time) and check it.

    Args:
        model: an :class:`SNUNetwork` or a single time-major layer (SNU, ConvSNU, ...).
        path: the ``.onnx`` file to write; replaced only once the new model has passed.
        input_features: one sample's input shape at one step, e.g. ``88`` or
            ``(1, 28, 28)``; inferred from the first layer when it is dense or an
            embedding (token ids take ``()``).
        example_input: alternatively, a sequence ``[T, B, ...]`` whose shape and dtype give
            the input's.
        input_dtype: ``"float32"`` or ``"int64"`` (token ids); default int64 when the first
            layer is ``nn.Embedding``, else float32.
        opset: the ONNX opset, at least 18.
        verify: compare onnxruntime on the written model with PyTorch (recommended).
        check_lengths, check_batches: the sequence lengths T and batch sizes B to check.
        seed: seeds the random check inputs.
        atol: the largest difference allowed on any output or state (relative to the
            tensor's largest magnitude where that exceeds 1).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        SnucError: the model cannot be exported with supported ops, or the check failed.
    """
    net, sig = _prepare(model, input_features, example_input, input_dtype)
    step_model = _export_step_graph(net, sig, opset)
    seq_model = _sequence_model(step_model, sig)
    _add_metadata(seq_model, net, sig, form="sequence")
    return _write_checked(
        seq_model, Path(path), net, verify, check_lengths, check_batches, seed, atol
    )


def export_step(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    input_features: int | Sequence[int] | None = None,
    example_input: torch.Tensor | None = None,
    input_dtype: str | torch.dtype | None = None,
    opset: int = MIN_OPSET,
    verify: bool = True,
    check_lengths: Sequence[int] = (1, 7, 50),
    check_batches: Sequence[int] = (1, 3),
    seed: int = 0,
    atol: float = 1e-5,
) -> Path:
    """Write ``model`` as a step-form ONNX model (one timestep) and check it.

    Inputs are ``x_t`` then the states; outputs ``out_t`` then the new states;
    ``metadata_props["snuc.state"]`` maps each state output to its input. Arguments and
    errors are those of :func:`export`; ``example_input`` is still a sequence.
    """
    net, sig = _prepare(model, input_features, example_input, input_dtype)
    step_model = _export_step_graph(net, sig, opset)
    _add_metadata(step_model, net, sig, form="step")
    pairs = {slot.next_name: slot.name for slot in sig.slots}
    helper.set_model_props(
        step_model,
        {**{p.key: p.value for p in step_model.metadata_props}, "snuc.state": json.dumps(pairs)},
    )
    return _write_checked(
        step_model, Path(path), net, verify, check_lengths, check_batches, seed, atol
    )


def verify_export(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    check_lengths: Sequence[int] = (1, 7, 50),
    check_batches: Sequence[int] = (1, 3),
    seed: int = 0,
    atol: float = 1e-5,
) -> None:
    """Check that the ONNX file at ``path`` (either form) computes what ``model`` computes.

    onnxruntime and PyTorch eager run the same random sequences (every length in
    ``check_lengths`` with every batch size in ``check_batches``; binary and real-valued
    inputs, or random token ids); every output and every state must agree within ``atol``.

    Raises:
        SnucError: on the first mismatch, naming the tensor, the error, T and B.
    """
    path = Path(path)
    onnx_model = _load(path)
    net = _reference_copy(model)
    check_against_torch(onnx_model, path.name, net, check_lengths, check_batches, seed, atol)


# ----------------------------------------------------------------------- the network side


def _reference_copy(model: nn.Module) -> SNUNetwork:
    """A CPU float32 copy of ``model`` in eval mode, as an :class:`SNUNetwork`."""
    if not isinstance(model, TimeMajor):
        raise SnucError(
            f"cannot export {type(model).__name__}: expected an SNUNetwork or a time-major "
            "layer from snuc.frontend.layers"
        )
    net = copy.deepcopy(model).cpu().float().eval()
    return net if isinstance(net, SNUNetwork) else SNUNetwork(net)


def _prepare(
    model: nn.Module,
    input_features: int | Sequence[int] | None,
    example_input: torch.Tensor | None,
    input_dtype: str | torch.dtype | None,
) -> tuple[SNUNetwork, Signature]:
    net = _reference_copy(model)
    first = net.layers[0]
    if example_input is not None:
        if example_input.dim() < 2:
            raise SnucError(
                f"example_input has shape {tuple(example_input.shape)}; expected a "
                "time-major sequence [T, B, ...]"
            )
        features = tuple(example_input.shape[2:])
        dtype = torch.int64 if not example_input.is_floating_point() else torch.float32
    else:
        features = _default_features(first, input_features)
        dtype = torch.int64 if isinstance(first, nn.Embedding) else torch.float32
    if input_dtype is not None:
        dtype = _parse_dtype(input_dtype)
    vocab = None
    if dtype == torch.int64:
        if not isinstance(first, nn.Embedding):
            raise SnucError(
                f"int64 input (token ids) needs nn.Embedding as the first layer, found "
                f"{type(first).__name__}; use input_dtype='float32'"
            )
        vocab = first.num_embeddings
    slots, counts = state_slots(net, features, dtype)
    return net, Signature(features, dtype, vocab, slots, counts)


def _default_features(first: nn.Module, input_features: int | Sequence[int] | None) -> tuple:
    if input_features is not None:
        if isinstance(input_features, int):
            return (input_features,)
        return tuple(int(d) for d in input_features)
    if isinstance(first, SNU):
        return (first.in_features,)
    if isinstance(first, Readout):
        return (first.linear.in_features,)
    if isinstance(first, nn.Linear):
        return (first.in_features,)
    if isinstance(first, nn.Embedding):
        return ()
    raise SnucError(
        f"cannot tell the input shape of a network starting with {type(first).__name__}; "
        "pass input_features=(C, H, W) or an example_input"
    )


def _parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise SnucError(f"input_dtype={dtype!r} is not supported; use 'float32' or 'int64'")


def _describe_layers(net: SNUNetwork, sig: Signature) -> list[dict]:
    """JSON-able description of the layers for ``metadata_props["snuc.layers"]``."""
    states = iter(sig.slots)
    out = []
    for i, (layer, n) in enumerate(zip(net.layers, sig.counts, strict=True)):
        entry: dict = {"name": f"layers.{i}", "states": [next(states).name for _ in range(n)]}
        if isinstance(layer, SNU | ConvSNU):
            entry["kind"] = "conv_snu" if isinstance(layer, ConvSNU) else "snu"
            entry["g"] = layer.g
            entry["h"] = "sigmoid" if layer.soft else "step"
            entry["recurrent"] = bool(getattr(layer, "recurrent", False))
        elif isinstance(layer, Readout):
            entry["kind"] = "readout"
            entry["activation"] = layer.activation
        elif isinstance(layer, Flatten):
            entry["kind"] = "flatten"
        else:
            entry["kind"] = type(layer).__name__
        out.append(entry)
    return out


# ------------------------------------------------------------------------ the ONNX side


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter (missing torchvision, deprecations) for one export."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _export_step_graph(net: SNUNetwork, sig: Signature, opset: int) -> onnx.ModelProto:
    """One step of ``net`` as an ONNX model: inputs ``x_t`` + states, outputs ``out_t`` +
    new states, with only :data:`STEP_OPS`."""
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise SnucError(
            f"opset {opset} is not supported; use {MIN_OPSET} to {onnx.defs.onnx_opset_version()}"
        )
    x_t = example_step_input(sig.features, sig.dtype, sig.vocab)
    states = [torch.zeros(EXAMPLE_BATCH, *slot.shape) for slot in sig.slots]
    batch = torch.export.Dim("B")
    # A list, not a tuple: torch.export takes an empty tuple of dynamic shapes for a list.
    dynamic = ({0: batch}, [{0: batch} for _ in states])
    step = _FlatStep(net, sig.counts).eval()
    try:
        with torch.no_grad(), _quiet_exporter():
            program = torch.onnx.export(
                step,
                (x_t, states),
                dynamo=True,
                dynamic_shapes=dynamic,
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; all mean "cannot export"
        root = exc
        while root.__cause__ is not None:
            root = root.__cause__
        raise SnucError(
            f"torch.onnx.export failed on the network's step ({type(root).__name__}: "
            f"{first_line(root)}); only layers from snuc.frontend.layers and per-step "
            "modules are supported"
        ) from exc
    model = program.model_proto
    _normalise_step_graph(model, sig)
    _check_step_ops(model.graph)
    return model


def _normalise_step_graph(model: onnx.ModelProto, sig: Signature) -> None:
    """Name the step graph's inputs, outputs and weights; drop the exporter's node notes."""
    graph = model.graph
    graph.name = "step"
    _name_batch_axis(graph)
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    renames = {init.name: init.name.removeprefix("net.") for init in graph.initializer}
    in_names = [STEP_IN, *(slot.name for slot in sig.slots)]
    renames.update({v.name: new for v, new in zip(graph.input, in_names, strict=True)})
    _rename_values(graph, renames)
    _name_outputs(graph, [*(slot.next_name for slot in sig.slots), STEP_OUT])
    outputs = list(graph.output)
    del graph.output[:]
    graph.output.extend(outputs[-1:] + outputs[:-1])  # out_t first, as x_t is first


def _name_batch_axis(graph: onnx.GraphProto) -> None:
    """Call the batch axis ``B`` everywhere (the exporter may invent a name for it)."""
    dims = graph.input[0].type.tensor_type.shape.dim
    symbol = dims[0].dim_param if dims else ""
    if not symbol:
        raise SnucError(
            "the exported step has a fixed batch size; the network's step must work for "
            "any batch size (do not depend on x_t.shape[0])"
        )
    for group in (graph.input, graph.output, graph.value_info):
        for value in group:
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param == symbol:
                    dim.dim_param = "B"


def _rename_values(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    renames = {old: new for old, new in renames.items() if old != new}
    if not renames:
        return
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for group in (graph.input, graph.output, graph.value_info, graph.initializer):
        for item in group:
            item.name = renames.get(item.name, item.name)


def _name_outputs(graph: onnx.GraphProto, names: list[str]) -> None:
    """Give graph output ``i`` the name ``names[i]``.

    A value that is a graph input, an initializer, or already taken by an earlier output
    gets an ``Identity`` (ONNX names each value once); otherwise it is renamed in place.
    """
    produced = {out for node in graph.node for out in node.output}
    taken: set[str] = set()
    outputs = list(graph.output)
    for value, name in zip(outputs, names, strict=True):
        old = value.name
        if old == name:
            taken.add(name)
            continue
        if old in produced and old not in taken:
            _rename_values(graph, {old: name})
            produced = (produced - {old}) | {name}
        else:
            graph.node.append(helper.make_node("Identity", [old], [name], name=f"{name}/Identity"))
            value.name = name
        taken.add(name)


def _check_step_ops(graph: onnx.GraphProto) -> None:
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in STEP_OPS:
            raise SnucError(
                f"the exported step uses op {node.op_type} (node {node.name!r}), which snuc "
                f"does not support; supported: {', '.join(sorted(STEP_OPS))}"
            )


def _sequence_model(step_model: onnx.ModelProto, sig: Signature) -> onnx.ModelProto:
    """Wrap the step graph in a Scan over time, with zero initial states built from X."""
    body = onnx.GraphProto()
    body.CopyFrom(step_model.graph)
    ins, outs = list(body.input), list(body.output)
    del body.input[:], body.output[:]
    body.input.extend(ins[1:] + ins[:1])  # a Scan body takes the states first, then x_t
    body.output.extend(outs[1:] + outs[:1])
    taken = names_in(body) | {X_NAME, Y_NAME}

    elem = TensorProto.INT64 if sig.dtype == torch.int64 else TensorProto.FLOAT
    x_info = helper.make_tensor_value_info(X_NAME, elem, ["T", "B", *sig.features])
    shape, batch = fresh_name("X_shape", taken), fresh_name("batch", taken)
    start, end = fresh_name("batch_start", taken), fresh_name("batch_end", taken)
    nodes = [
        helper.make_node("Shape", [X_NAME], [shape], name="init/Shape"),
        _int_constant(start, [1]),
        _int_constant(end, [2]),
        helper.make_node("Slice", [shape, start, end], [batch], name="init/Slice"),
    ]
    zeros_by_shape: dict[tuple[int, ...], str] = {}
    for slot in sig.slots:
        if slot.shape in zeros_by_shape:
            continue
        k = len(zeros_by_shape)
        dims, full = fresh_name(f"state_dims_{k}", taken), fresh_name(f"state_shape_{k}", taken)
        zeros = fresh_name(f"zeros_{k}", taken)
        nodes += [
            _int_constant(dims, list(slot.shape)),
            helper.make_node("Concat", [batch, dims], [full], axis=0, name=f"init/Concat_{k}"),
            helper.make_node(
                "ConstantOfShape",
                [full],
                [zeros],
                value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]),
                name=f"init/ConstantOfShape_{k}",
            ),
        ]
        zeros_by_shape[slot.shape] = zeros
    finals = [fresh_name(f"{slot.name}_final", taken) for slot in sig.slots]
    nodes.append(
        helper.make_node(
            "Scan",
            [*(zeros_by_shape[slot.shape] for slot in sig.slots), X_NAME],
            [*finals, Y_NAME],
            name="scan",
            body=body,
            num_scan_inputs=1,
        )
    )
    out_type = outs[0].type.tensor_type
    y_dims = ["T", "B", *(d.dim_value for d in out_type.shape.dim[1:])]
    y_info = helper.make_tensor_value_info(Y_NAME, out_type.elem_type, y_dims)
    graph = helper.make_graph(nodes, "snu_sequence", [x_info], [y_info])
    model = helper.make_model(graph, opset_imports=list(step_model.opset_import))
    model.ir_version = step_model.ir_version
    model.producer_name = "snuc.frontend.export"
    return model


def _int_constant(name: str, values: list[int]) -> onnx.NodeProto:
    return helper.make_node(
        "Constant",
        [],
        [name],
        value=helper.make_tensor(name, TensorProto.INT64, [len(values)], values),
        name=f"init/{name}",
    )


def _add_metadata(model: onnx.ModelProto, net: SNUNetwork, sig: Signature, *, form: str) -> None:
    props = {p.key: p.value for p in model.metadata_props}
    props["snuc.form"] = form
    props["snuc.layers"] = json.dumps(_describe_layers(net, sig))
    helper.set_model_props(model, props)


# ------------------------------------------------------------------- writing and checking


def _write_checked(
    model: onnx.ModelProto,
    path: Path,
    net: SNUNetwork,
    verify: bool,
    check_lengths: Sequence[int],
    check_batches: Sequence[int],
    seed: int,
    atol: float,
) -> Path:
    """Check ``model``, write it to a temporary file, verify it, then move it to ``path``."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise SnucError(f"the exported model fails the ONNX checker: {first_line(exc)}") from exc
    if not path.parent.is_dir():
        raise SnucError(f"cannot write {path}: directory {path.parent} does not exist")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        if verify:
            check_against_torch(
                _load(tmp), path.name, net, check_lengths, check_batches, seed, atol
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _load(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(path)
    except OSError as exc:
        raise SnucError(f"cannot read {path}: {exc.strerror or first_line(exc)}") from exc
    except DecodeError as exc:
        raise SnucError(f"{path} is not an ONNX model (the protobuf does not parse)") from exc
