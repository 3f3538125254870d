"""The step-form model of a folded loop body, and the check that step 0 is that body.

:mod:`snuc.frontend.unroll` finds the loop body of an unrolled time loop; this module
writes it as a step-form ONNX model (input ``x_t`` and the states, outputs ``out_t`` and
the next states, SPEC §2) and checks, by running the original model's step 0 and the body
on zero states with onnxruntime, that step 0 is the body with the exporter's zero initial
states folded in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from snuc.frontend.onnx_eval import one_line
from snuc.ir.errors import SnucError

__all__ = ["LoopBody", "check_step_zero", "step_model"]

# The random input the step-0 check runs on: a batch of two, values N(0, 2^2) so that
# thresholds near the usual 0..1 are crossed both ways.
_CHECK_BATCH = 2
_CHECK_SCALE = 2.0
_CHECK_TOL = 1e-5


@dataclass
class LoopBody:
    """The loop body found in an unrolled model.

    Attributes:
        proto: the unrolled model.
        x: its sequence input ``X[T, B, ...]``.
        x_body: the value the body reads as ``x[t]``.
        outputs: ``(output name, body value, step-0 value)`` per per-step output; the
            output is stacked unless its name is the step-0 value (a list of outputs).
        nodes: the body's nodes, after the nodes of weights and shapes it needs.
        nexts: ``{state (a value the body reads from the step before): its next value}``.
        step_zero: ``{state: the value step 0 passes to step 1 for it}``.
    """

    proto: onnx.ModelProto
    x: onnx.ValueInfoProto
    x_body: str
    outputs: list[tuple[str, str, str]]
    nodes: list[onnx.NodeProto]
    nexts: dict[str, str]
    step_zero: dict[str, str]


def step_model(body: LoopBody, source: str) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The loop body as a step-form model, and its ``{state output: state input}``."""
    proto, x = body.proto, body.x
    types = _value_types(proto)
    nodes = [helper.make_node("Identity", [x.name], [body.x_body], name="x_t"), *body.nodes]
    inputs = [_drop_time(x, x.name)]
    outputs, pairs = [], {}
    for name, value, first in body.outputs:
        nodes.append(helper.make_node("Identity", [value], [name], name=f"{name}_t"))
        info = next(o for o in proto.graph.output if o.name == name)
        outputs.append(_drop_time(info, name) if name != first else info)
    for k, (u, w) in enumerate(body.nexts.items()):
        if u not in types:
            raise SnucError(f"{source}: the shape of the state {u!r} cannot be inferred")
        inputs.append(helper.make_value_info(u, types[u]))
        out = f"{u}.next"
        nodes.append(helper.make_node("Identity", [w], [out], name=f"state{k}_next"))
        outputs.append(helper.make_value_info(out, types[u]))
        pairs[out] = u
    used = {n for node in nodes for n in node.input}
    graph = helper.make_graph(
        nodes,
        proto.graph.name or "model",
        inputs,
        outputs,
        [t for t in proto.graph.initializer if t.name in used],
    )
    step = helper.make_model(graph, opset_imports=list(proto.opset_import))
    step.ir_version = proto.ir_version
    step.functions.extend(proto.functions)
    return step, pairs


def _value_types(proto: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # noqa: BLE001 -- the checker's C++ errors; fall back to what is written
        inferred = proto
    g = inferred.graph
    return {v.name: v.type for v in (*g.value_info, *g.input, *g.output)}


def _drop_time(info: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    tensor = info.type.tensor_type
    dims = [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
        for d in tensor.shape.dim[1:]
    ]
    return helper.make_tensor_value_info(name, tensor.elem_type, dims)


# ---------------------------------------------------------------------- step 0


def check_step_zero(body: LoopBody, step: onnx.ModelProto, source: str) -> None:
    """Step 0 must compute what the body computes on zero states (checked by running both).

    Raises:
        SnucError: naming step 0 and the output or value that differs.
    """
    probes = {f"{u}.next": v for u, v in body.step_zero.items()}
    x = _random_input(body.x)
    want = _run(_with_outputs(body.proto, probes.values()), {body.x.name: x})
    feeds = {body.x.name: x[0]}
    for info in step.graph.input[1:]:
        feeds[info.name] = np.zeros(_batch_shape(info.type, x.shape[1]), _dtype(info.type))
    got = _run(step, feeds)
    for name, _, first in body.outputs:
        value = want[name] if name == first else want[name][0]
        _compare(value, got[name], f"output {name!r}", source)
    for k, (out, v) in enumerate(probes.items()):
        _compare(want[f"snuc_probe_{k}"], got[out], f"its value {v!r}", source)


def _compare(want: np.ndarray, got: np.ndarray, what: str, source: str) -> None:
    if want.shape == got.shape and np.allclose(want, got, rtol=_CHECK_TOL, atol=_CHECK_TOL):
        return
    gap = (
        f"differs by {float(np.max(np.abs(want.astype(float) - got.astype(float)))):.3g}"
        if want.shape == got.shape
        else f"has shape {list(want.shape)}, not {list(got.shape)}"
    )
    raise SnucError(
        f"{source}: an unrolled loop over time whose step 0 differs from the loop body "
        f"(the last step) run on zero states: {what} {gap}; snuc folds loops whose states "
        f"start at zero"
    )


def _with_outputs(proto: onnx.ModelProto, values: Iterable[str]) -> onnx.ModelProto:
    """The model with ``values`` as extra outputs (through Identity, of any type)."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    for k, value in enumerate(values):
        name = f"snuc_probe_{k}"
        model.graph.node.append(helper.make_node("Identity", [value], [name]))
        model.graph.output.append(onnx.ValueInfoProto(name=name))
    return model


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    try:
        results = session.run(None, feeds)
    except Exception as err:  # noqa: BLE001 -- onnxruntime raises several kinds
        raise SnucError(f"onnxruntime cannot run the step-0 check: {one_line(err)}") from None
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, results, strict=True))


def _random_input(x: onnx.ValueInfoProto) -> np.ndarray:
    tensor = x.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else _CHECK_BATCH for d in tensor.shape.dim]
    dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type)
    rng = np.random.default_rng(0)
    if dtype.kind == "f":
        return (rng.standard_normal(dims) * _CHECK_SCALE).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, dims).astype(bool)
    return rng.integers(0, 2, dims).astype(dtype)


def _batch_shape(type_: onnx.TypeProto, batch: int) -> list[int]:
    dims = type_.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else batch for d in dims]


def _dtype(type_: onnx.TypeProto) -> np.dtype:
    return helper.tensor_dtype_to_np_dtype(type_.tensor_type.elem_type)
