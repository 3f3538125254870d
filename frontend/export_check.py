"""Check an exported ONNX file against its PyTorch network with onnxruntime.

:func:`check_against_torch` runs the file (sequence or step form) and the network on the
same random sequences, spike-like (binary) and real-valued or token ids, and compares the
output and every layer state at every step within a tolerance scaled to the tensor's
magnitude (:func:`_max_error`); a mismatch is a :class:`SnucError` naming the value, the
error and the case.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper
from torch import nn

from snuc.frontend.export_signature import (
    X_NAME,
    Y_NAME,
    Signature,
    fresh_name,
    names_in,
    state_slots,
)
from snuc.frontend.layers import SNUNetwork
from snuc.ir.errors import SnucError


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def check_against_torch(
    onnx_model: onnx.ModelProto,
    file_name: str,
    net: SNUNetwork,
    check_lengths: Sequence[int],
    check_batches: Sequence[int],
    seed: int,
    atol: float,
) -> None:
    """Run ``onnx_model`` and ``net`` on the same random sequences; raise on a mismatch."""
    for what, values in (("check_lengths", check_lengths), ("check_batches", check_batches)):
        if not values or any(int(v) < 1 for v in values):
            raise SnucError(f"{what}={tuple(values)!r}: give one or more sizes, each at least 1")
    form = _form_of(onnx_model)
    sig = _signature_of(onnx_model, net, form)
    run = _sequence_runner(onnx_model, sig) if form == "sequence" else _step_runner(onnx_model, sig)
    cases = _cases(check_lengths, check_batches, sig.dtype)
    for case, (length, batch, kind) in enumerate(cases):
        x = _random_sequence(sig, length, batch, kind, seed=seed * 1000 + case)
        expected = _torch_reference(net, sig, x)
        got = run(x.numpy())
        for name, want in expected.items():
            err = _max_error(got[name], want)
            if not err <= atol:
                raise SnucError(
                    f"export check failed for {file_name}: {name} differs from PyTorch by "
                    f"{err:.3g} (atol {atol:g}) at T={length}, B={batch}, {kind} input; the "
                    "ONNX model does not compute what the network computes"
                )


def _max_error(got: np.ndarray, want: np.ndarray) -> float:
    """The largest difference, relative to the tensor's largest magnitude beyond 1.

    A membrane potential is a sum over hundreds of inputs; float32 summation order alone
    moves it by about 1e-7 of the sum's terms, which exceeds 1e-5 absolute once the layer's
    values reach tens, even at elements that are small after cancellation. The check so
    scales the tolerance with the tensor's magnitude (spikes and tensors within [-1, 1]
    keep the absolute tolerance: a flipped spike still differs by 1).
    """
    if got.shape != want.shape:
        return float("inf")
    if got.size == 0:
        return 0.0
    want64 = want.astype(np.float64)
    scale = max(1.0, float(np.max(np.abs(want64))))
    return float(np.max(np.abs(got.astype(np.float64) - want64))) / scale


def _form_of(onnx_model: onnx.ModelProto) -> str:
    form = {p.key: p.value for p in onnx_model.metadata_props}.get("snuc.form")
    if form not in ("sequence", "step"):
        raise SnucError(
            "the ONNX model has no snuc.form metadata; verify_export checks files written by "
            "snuc.frontend.export only"
        )
    return form


def _signature_of(onnx_model: onnx.ModelProto, net: SNUNetwork, form: str) -> Signature:
    """The network's signature for the input the ONNX file declares."""
    x = onnx_model.graph.input[0].type.tensor_type
    lead = 2 if form == "sequence" else 1  # [T, B, ...] or [B, ...]
    features = tuple(d.dim_value for d in x.shape.dim[lead:])
    dtype = torch.int64 if x.elem_type == TensorProto.INT64 else torch.float32
    first = net.layers[0]
    vocab = first.num_embeddings if isinstance(first, nn.Embedding) else None
    if dtype == torch.int64 and vocab is None:
        raise SnucError(
            "the ONNX model takes token ids but the network does not start with nn.Embedding"
        )
    slots, counts = state_slots(net, features, dtype)
    return Signature(features, dtype, vocab, slots, counts)


def _cases(
    lengths: Sequence[int], batches: Sequence[int], dtype: torch.dtype
) -> list[tuple[int, int, str]]:
    kinds = ("token-id",) if dtype == torch.int64 else ("binary", "real-valued")
    return [(int(t), int(b), kind) for t in lengths for b in batches for kind in kinds]


def _random_sequence(
    sig: Signature, length: int, batch: int, kind: str, *, seed: int
) -> torch.Tensor:
    """Check input. Real values are continuous, so a state landing exactly on the threshold
    (where float rounding could flip a spike) has probability zero."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "token-id":
        return torch.randint(0, sig.vocab, (length, batch), generator=gen)
    shape = (length, batch, *sig.features)
    if kind == "binary":
        return (torch.rand(shape, generator=gen) < 0.3).to(torch.float32)
    return torch.randn(shape, generator=gen)


def _torch_reference(net: SNUNetwork, sig: Signature, x: torch.Tensor) -> dict[str, np.ndarray]:
    """PyTorch eager on ``x``: ``Y`` and every state at every step, by name."""
    outs: list[torch.Tensor] = []
    steps: list[list[torch.Tensor]] = []
    state = None
    with torch.no_grad():
        for x_t in x.unbind(0):
            out_t, state = net.step(x_t, state)
            outs.append(out_t)
            steps.append([t for layer_state in state for t in layer_state])
    result = {Y_NAME: torch.stack(outs).numpy()}
    for k, slot in enumerate(sig.slots):
        result[slot.name] = torch.stack([step[k] for step in steps]).numpy()
    return result


Runner = Callable[[np.ndarray], dict[str, np.ndarray]]


def _sequence_runner(onnx_model: onnx.ModelProto, sig: Signature) -> Runner:
    """Runs the model for ``Y`` and a twin whose Scan also emits every state at every step."""
    scans = [n for n in onnx_model.graph.node if n.op_type == "Scan"]
    if len(scans) != 1:
        raise SnucError(f"a sequence-form model holds one Scan, this one {len(scans)}")
    n = len(sig.slots)
    if len(scans[0].input) != n + 1:
        raise SnucError(
            f"the ONNX model carries {len(scans[0].input) - 1} states but the network has "
            f"{n}; export the network again"
        )
    plain = _session(onnx_model)
    traced = _session(_with_state_traces(onnx_model, sig))

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        (y,) = plain.run([Y_NAME], {X_NAME: x})
        traces = traced.run(None, {X_NAME: x})[1:]
        return {Y_NAME: y, **{slot.name: t for slot, t in zip(sig.slots, traces, strict=True)}}

    return run


def _with_state_traces(onnx_model: onnx.ModelProto, sig: Signature) -> onnx.ModelProto:
    """A copy of a sequence-form model that also outputs each new state as ``[T, B, ...]``
    (its Scan body copies them to scan outputs), after ``Y`` in slot order."""
    model = onnx.ModelProto()
    model.CopyFrom(onnx_model)
    scan = next(n for n in model.graph.node if n.op_type == "Scan")
    body_attr = next(a for a in scan.attribute if a.name == "body")
    body = body_attr.g
    taken = names_in(body) | names_in(model.graph)
    for slot, value in zip(sig.slots, list(body.output), strict=False):
        inner, outer = (
            fresh_name(f"{slot.name}_trace", taken),
            fresh_name(f"{slot.name}_steps", taken),
        )
        body.node.append(helper.make_node("Identity", [value.name], [inner]))
        body.output.append(helper.make_tensor_value_info(inner, TensorProto.FLOAT, None))
        scan.output.append(outer)
        model.graph.output.append(helper.make_tensor_value_info(outer, TensorProto.FLOAT, None))
    return model


def _step_runner(onnx_model: onnx.ModelProto, sig: Signature) -> Runner:
    """Runs the step-form model once per timestep, feeding the new states back."""
    inputs = [v.name for v in onnx_model.graph.input]
    outputs = [v.name for v in onnx_model.graph.output]
    n = len(sig.slots)
    if len(inputs) != n + 1 or len(outputs) != n + 1:
        raise SnucError(
            f"the ONNX model carries {len(inputs) - 1} states but the network has {n}; "
            "export the network again"
        )
    session = _session(onnx_model)

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        states = [np.zeros((x.shape[1], *slot.shape), np.float32) for slot in sig.slots]
        ys: list[np.ndarray] = []
        traces: list[list[np.ndarray]] = [[] for _ in sig.slots]
        for x_t in x:
            out_t, *states = session.run(outputs, dict(zip(inputs, [x_t, *states], strict=True)))
            ys.append(out_t)
            for trace, s in zip(traces, states, strict=True):
                trace.append(s)
        result = {Y_NAME: np.stack(ys)}
        result.update({slot.name: np.stack(t) for slot, t in zip(sig.slots, traces, strict=True)})
        return result

    return run
