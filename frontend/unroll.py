"""Fold a time loop that an exporter unrolled back into one step (SPEC §2.1 "Unrolled time").

``torch.onnx.export`` of a Python ``for`` loop over time writes T copies of the loop body:
the input ``X[T, B, ...]`` is sliced per step (``Gather`` on axis 0, or ``Slice``/``Split``
then ``Squeeze``), every copy reads the weights and the previous copy's values, and the
per-step outputs are stacked (``Unsqueeze`` + ``Concat`` on axis 0) or returned as a list.
This module finds the copies and turns the model into the step form (SPEC §2) that
:mod:`snuc.frontend.onnx_import` compiles, so the artefact runs any T.

How the copies are found:

* a node belongs to step ``t`` when the earliest per-step output that needs it is step
  ``t``'s; nodes that read no timestep of the input (weights, shapes, zero initial states)
  belong to no step;
* the last step is the loop body. Every step from 1 on must be the same graph as the body
  (same ops, attributes and constants, wired alike), reading the previous step's values
  where the body reads its states; the first that is not is named in the error;
* step 0 may differ in structure, since exporters fold the zero initial states into it;
  it is accepted when it computes what the body computes on zero states, which is checked
  by running both on a random input with onnxruntime.

Outputs that only the last step computes (final states) are left out, as for a Scan.
:mod:`snuc.frontend.unroll_step` writes the body as a step-form model and runs the step-0
check.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from snuc.frontend.onnx_eval import attr, describe
from snuc.frontend.unroll_step import LoopBody, check_step_zero, step_model
from snuc.ir.errors import SnucError

__all__ = ["fold_unrolled", "is_unrolled"]


@dataclass
class _Loop:
    """What the unrolled graph looks like, before its steps are matched.

    Attributes:
        x: the sequence input.
        steps: T, the number of copies.
        x_at: ``{value: t}`` for the per-step slices of the input, ``x[t]``.
        consts: the graph's constants.
        per_step: ``(output name, [o_0 .. o_{T-1}])`` for every per-step output.
        skipped: the slicing and stacking nodes (indices), which the step form has not.
    """

    x: onnx.ValueInfoProto
    steps: int
    x_at: dict[str, int]
    consts: _Constants
    per_step: list[tuple[str, list[str]]] = field(default_factory=list)
    skipped: set[int] = field(default_factory=set)


@dataclass
class _Match:
    """Step ``t`` matched against the loop body (the last step).

    Attributes:
        image: ``{body value: step-t value}``.
        reads: ``{body state read: step-(t-1) value}`` (the body's values from step T-2).
    """

    image: dict[str, str] = field(default_factory=dict)
    reads: dict[str, str] = field(default_factory=dict)


class _Differs(Exception):  # noqa: N818 -- internal signal, never leaves this module
    """Step ``t`` is not the loop body: the message says how, ``user`` in which node."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.user: onnx.NodeProto | None = None

    def __str__(self) -> str:
        why = self.args[0]
        return why if self.user is None else f"{describe(self.user)}: {why}"


# ---------------------------------------------------------------------- detection


def is_unrolled(proto: onnx.ModelProto) -> bool:
    """Whether the model reads its only input one timestep at a time (axis 0 slices).

    Raises:
        SnucError: when it reads every index of axis 1 one at a time and stacks as many
            outputs: a batch-first loop, which snuc's time-major sequences cannot hold.
    """
    x = _sequence_input(proto.graph)
    if x is None:
        return False
    consts = _Constants(proto.graph)
    taken: dict[int, set] = defaultdict(set)
    for node in proto.graph.node:
        for axis, index in _slices(node, x.name, consts):
            taken[axis].add(index)
    if taken[0]:
        return True
    dims = x.type.tensor_type.shape.dim
    steps = dims[1].dim_value if len(dims) >= 3 else 0
    if steps >= 3 and taken[1] in (set(range(steps)), {None}) and _stacks(proto.graph, steps):
        raise SnucError(
            f"input {x.name!r} is read one timestep at a time along axis 1 (batch first, "
            f"X[B, T, ...]); snuc's sequences are time-major, X[T, B, ...]: loop over "
            f"x[t] on axis 0 of a time-major input"
        )
    return False


def _stacks(graph: onnx.GraphProto, steps: int) -> bool:
    """Whether an output concatenates ``steps`` values (per-step outputs, stacked)."""
    producer = {out: node for node in graph.node for out in node.output}
    return any(
        o.name in producer
        and producer[o.name].op_type == "Concat"
        and len(producer[o.name].input) == steps
        for o in graph.output
    )


def _sequence_input(graph: onnx.GraphProto) -> onnx.ValueInfoProto | None:
    weights = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in weights]
    if len(inputs) != 1 or not inputs[0].type.HasField("tensor_type"):
        return None
    if len(inputs[0].type.tensor_type.shape.dim) < 2:
        return None
    return inputs[0]


class _Constants:
    """The graph's initializers and Constant outputs, as arrays made on first use (a
    model's weights are read only where a comparison needs them)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self._protos: dict[str, onnx.TensorProto | onnx.AttributeProto] = {
            t.name: t for t in graph.initializer
        }
        for node in graph.node:
            if node.op_type == "Constant" and len(node.attribute) == 1:
                self._protos[node.output[0]] = node.attribute[0]
        self._arrays: dict[str, np.ndarray] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._protos

    def get(self, name: str) -> np.ndarray | None:
        if name not in self._arrays and name in self._protos:
            proto = self._protos[name]
            if isinstance(proto, onnx.AttributeProto):
                proto = helper.get_attribute_value(proto)
            value = numpy_helper.to_array(proto) if isinstance(proto, onnx.TensorProto) else proto
            self._arrays[name] = np.asarray(value)
        return self._arrays.get(name)


def _int_of(consts: _Constants, name: str) -> list[int] | None:
    value = consts.get(name)
    if value is None or value.dtype.kind not in "iu":
        return None
    return [int(i) for i in value.reshape(-1)]


def _slices(node: onnx.NodeProto, x: str, consts: _Constants) -> list[tuple[int, int | None]]:
    """``(axis, index)`` for each timestep ``node`` takes of ``x`` (index None: Split)."""
    if not node.input or node.input[0] != x:
        return []
    if node.op_type == "Gather":
        index = consts.get(node.input[1])
        if index is None or index.ndim != 0 or index.dtype.kind not in "iu":
            return []
        return [(int(attr(node, "axis", 0)), int(index))]
    if node.op_type == "Slice":
        starts, ends, axes = _slice_args(node, consts)
        if starts is None or ends is None or len(starts) != 1 or ends[0] - starts[0] != 1:
            return []
        return [((axes or [0])[0], starts[0])]
    if node.op_type == "Split":
        return [(int(attr(node, "axis", 0)), None)]
    return []


def _slice_args(
    node: onnx.NodeProto, consts: _Constants
) -> tuple[list[int] | None, list[int] | None, list[int] | None]:
    """A Slice's starts, ends and axes (attributes before opset 10, inputs since)."""
    if len(node.input) == 1:
        return attr(node, "starts"), attr(node, "ends"), attr(node, "axes")
    args = [_int_of(consts, name) if name else None for name in node.input[1:4]]
    steps = _int_of(consts, node.input[4]) if len(node.input) > 4 and node.input[4] else None
    if steps not in (None, [1]):
        return None, None, None
    return args[0], args[1], args[2] if len(args) > 2 else None


# ---------------------------------------------------------------------- the loop


def _find_loop(proto: onnx.ModelProto, source: str) -> _Loop:
    """The input's per-step slices and the per-step outputs."""
    graph = proto.graph
    x = _sequence_input(graph)
    dim = x.type.tensor_type.shape.dim[0]
    if not dim.HasField("dim_value"):
        raise SnucError(
            f"{source}: input {x.name!r} is read one timestep at a time, but its time axis 0 "
            f"is dynamic ({dim.dim_param or '?'!r}); export the loop with a fixed T"
        )
    steps = int(dim.dim_value)
    consts = _Constants(graph)
    loop = _Loop(x=x, steps=steps, x_at={}, consts=consts)
    users = _consumers(graph)
    for i, node in enumerate(graph.node):
        for _, index in _slices(node, x.name, consts):
            loop.skipped.add(i)
            if index is not None:
                _take_slice(loop, graph, users, i, index % steps)
            else:
                _take_split(loop, graph, users, i, source)
    if len(set(loop.x_at.values())) < 3 or steps < 3:
        raise SnucError(
            f"{source}: input {x.name!r} is read one timestep at a time over "
            f"{len(set(loop.x_at.values()))} of its {steps} steps; snuc folds an unrolled "
            f"loop that reads every step: export it with at least 3 timesteps"
        )
    _find_outputs(loop, graph, users, source)
    return loop


def _consumers(graph: onnx.GraphProto) -> dict[str, list[int]]:
    users: dict[str, list[int]] = defaultdict(list)
    for i, node in enumerate(graph.node):
        for name in node.input:
            if name:
                users[name].append(i)
    return users


def _take_slice(
    loop: _Loop, graph: onnx.GraphProto, users: dict[str, list[int]], i: int, t: int
) -> None:
    """A Gather gives ``x[t]``; a Slice gives ``x[t:t+1]``, squeezed by its users."""
    node = graph.node[i]
    if node.op_type == "Gather":
        loop.x_at[node.output[0]] = t
        return
    _take_squeezed(loop, graph, users, node.output[0], t)


def _take_split(
    loop: _Loop, graph: onnx.GraphProto, users: dict[str, list[int]], i: int, source: str
) -> None:
    node = graph.node[i]
    if len(node.output) != loop.steps:
        raise SnucError(
            f"{source}: {describe(node)} splits input {loop.x.name!r} into "
            f"{len(node.output)} parts along time; snuc folds a loop that takes one "
            f"timestep at a time"
        )
    for t, out in enumerate(node.output):
        _take_squeezed(loop, graph, users, out, t)


def _take_squeezed(
    loop: _Loop, graph: onnx.GraphProto, users: dict[str, list[int]], value: str, t: int
) -> None:
    """Every user of a one-step slice ``[1, B, ...]`` squeezes axis 0 away."""
    consts = loop.consts
    for j in users.get(value, []):
        user = graph.node[j]
        if user.op_type != "Squeeze" or _unsqueeze_axes(user, consts) not in (None, [0]):
            raise SnucError(
                f"{describe(user)}: uses x[{t}:{t + 1}] of input {loop.x.name!r} without "
                f"squeezing the time axis; snuc folds a loop whose step reads x[t]"
            )
        loop.skipped.add(j)
        loop.x_at[user.output[0]] = t


def _find_outputs(
    loop: _Loop, graph: onnx.GraphProto, users: dict[str, list[int]], source: str
) -> None:
    """Stacked outputs (Unsqueeze on axis 0, Concat on axis 0), else a list of outputs."""
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output}
    loose = []
    for info in graph.output:
        parts = _stacked(graph, producer, loop.consts, info.name, loop.steps, source)
        if parts is None:
            loose.append(info.name)
            continue
        loop.skipped.add(producer[info.name])
        loop.skipped.update(producer[p] for p in parts)
        loop.per_step.append((info.name, [graph.node[producer[p]].input[0] for p in parts]))
    if loose and len(loose) % loop.steps == 0 and not loop.per_step:
        per = len(loose) // loop.steps
        for k in range(per):
            loop.per_step.append((loose[k], loose[k::per]))
    if not loop.per_step:
        raise SnucError(
            f"{source}: an unrolled loop over time whose outputs are not per-step outputs; "
            f"snuc computes outputs at every timestep: return torch.stack(outputs) (time "
            f"first), or the list of per-step outputs"
        )


def _stacked(
    graph: onnx.GraphProto,
    producer: dict[str, int],
    consts: _Constants,
    name: str,
    steps: int,
    source: str,
) -> list[str] | None:
    """The Unsqueeze outputs a stacked output concatenates, in time order, else None."""
    if name not in producer:
        return None
    concat = graph.node[producer[name]]
    if concat.op_type != "Concat" or len(concat.input) != steps:
        return None
    parts = list(concat.input)
    nodes = [graph.node[producer[p]] if p in producer else None for p in parts]
    if not all(n is not None and n.op_type == "Unsqueeze" for n in nodes):
        return None
    axes = {tuple(_unsqueeze_axes(n, consts) or ()) for n in nodes}
    if axes == {(0,)} and int(attr(concat, "axis", 0)) == 0:
        return parts
    raise SnucError(
        f"{source}: output {name!r} stacks the steps along axis "
        f"{int(attr(concat, 'axis', 0))}; snuc's outputs are time-major, Y[T, B, ...]: "
        f"stack them on axis 0 (torch.stack(outputs))"
    )


def _unsqueeze_axes(node: onnx.NodeProto, consts: _Constants) -> list[int] | None:
    """The axes of an Unsqueeze or Squeeze (an input since opset 13, an attribute before)."""
    if len(node.input) > 1:
        return _int_of(consts, node.input[1])
    return attr(node, "axes")


# ---------------------------------------------------------------------- the steps


@dataclass
class _Steps:
    """The loop's nodes by step, and where each value comes from.

    Attributes:
        nodes: the graph's nodes.
        producer: ``{value: node index}``.
        step_of: ``{node index: step}`` for nodes that read a timestep of the input.
        by_step: node indices of each step, in graph order.
        consts: constant values (initializers, Constant outputs).
    """

    nodes: list[onnx.NodeProto]
    producer: dict[str, int]
    step_of: dict[int, int]
    by_step: list[list[int]]
    consts: _Constants

    def step_of_value(self, name: str) -> int | None:
        i = self.producer.get(name)
        return None if i is None else self.step_of.get(i)


def _partition(proto: onnx.ModelProto, loop: _Loop, source: str) -> _Steps:
    """Each varying node's step: the earliest per-step output that needs it."""
    nodes = list(proto.graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    first: dict[int, int] = {}
    for _, parts in loop.per_step:
        for t, part in enumerate(parts):
            _mark(nodes, producer, part, t, first, loop.skipped)
    latest = _latest_input(nodes, loop)
    step_of = {}
    for i, t in first.items():
        if i not in latest:
            continue
        if latest[i] > t:
            raise SnucError(
                f"{source}: the output at step {t} depends on the input at step {latest[i]} "
                f"(through {describe(nodes[i])}); snuc runs causal networks"
            )
        step_of[i] = t
    by_step: list[list[int]] = [[] for _ in range(loop.steps)]
    for i in sorted(step_of):
        by_step[step_of[i]].append(i)
    return _Steps(nodes, producer, step_of, by_step, loop.consts)


def _mark(
    nodes: list[onnx.NodeProto],
    producer: dict[str, int],
    root: str,
    t: int,
    first: dict[int, int],
    skipped: set[int],
) -> None:
    """Lower ``first`` to ``t`` for every node ``root`` depends on."""
    stack = [root]
    while stack:
        i = producer.get(stack.pop())
        if i is None or i in skipped or first.get(i, t + 1) <= t:
            continue
        first[i] = t
        stack.extend(n for n in nodes[i].input if n)


def _latest_input(nodes: list[onnx.NodeProto], loop: _Loop) -> dict[int, int]:
    """``{node index: latest step of the input it reads}`` for nodes that read one."""
    latest_of_value = dict(loop.x_at)
    latest = {}
    for i, node in enumerate(nodes):
        if i in loop.skipped:
            continue
        seen = [latest_of_value[n] for n in node.input if n in latest_of_value]
        if seen:
            latest[i] = max(seen)
            for out in node.output:
                latest_of_value[out] = latest[i]
    return latest


# ---------------------------------------------------------------------- matching


class _Matcher:
    """Matches one step against the loop body, value by value from the outputs back."""

    def __init__(self, steps: _Steps, loop: _Loop, t: int, body: int) -> None:
        self.steps = steps
        self.loop = loop
        self.t = t
        self.body = body
        self.match = _Match()
        self.node_image: dict[int, int] = {}

    def run(self) -> _Match:
        for _, parts in self.loop.per_step:
            self.value(parts[self.body], parts[self.t])
        if len(self.node_image) != len(self.steps.by_step[self.t]):
            extra = sorted(set(self.steps.by_step[self.t]) - set(self.node_image.values()))
            raise _Differs(f"{describe(self.steps.nodes[extra[0]])} has no counterpart")
        return self.match

    def value(self, u: str, v: str) -> None:
        seen = self.match.image.get(u)
        if seen is not None:
            if seen != v:
                raise _Differs(f"it uses {v!r} where the loop body uses {u!r}")
            return
        self.match.image[u] = v
        where_u = self.steps.step_of_value(u)
        if u in self.loop.x_at:
            if self.loop.x_at.get(v) != self.t:
                raise _Differs(f"it reads {v!r} where the loop body reads x[t]")
        elif where_u == self.body:
            self.node(u, v)
        elif where_u == self.body - 1:
            self.state_read(u, v)
        elif where_u is not None:
            raise _Differs(f"the loop body reads {u!r}, a value of an older step than t-1")
        else:
            self.invariant(u, v)

    def _input(self, user: onnx.NodeProto, u: str, v: str) -> None:
        """Match an input of ``user``; a difference found there is named after ``user``."""
        try:
            self.value(u, v)
        except _Differs as err:
            if err.user is None:
                err.user = user
            raise

    def state_read(self, u: str, v: str) -> None:
        where_v = self.steps.step_of_value(v)
        if where_v != self.t - 1 and not (self.t == 1 and where_v is None):
            raise _Differs(f"it reads {v!r} where the loop body reads the previous step's {u!r}")
        self.match.reads[u] = v

    def node(self, u: str, v: str) -> None:
        i, j = self.steps.producer[u], self.steps.producer.get(v)
        if j is None or self.steps.step_of.get(j) != self.t:
            raise _Differs(f"{v!r} is not computed in this step where the loop body computes {u!r}")
        a, b = self.steps.nodes[i], self.steps.nodes[j]
        if not _same_op(a, b) or list(a.output).index(u) != list(b.output).index(v):
            raise _Differs(f"{describe(b)} stands where the loop body has {describe(a)}")
        self.node_image[i] = j
        for name_a, name_b in zip(a.input, b.input, strict=True):
            if bool(name_a) != bool(name_b):
                raise _Differs(f"{describe(b)}'s optional inputs differ from the loop body's")
            if name_a:
                self._input(b, name_a, name_b)

    def invariant(self, u: str, v: str) -> None:
        """A value no step computes: the same weight, constant or shape."""
        consts = self.steps.consts
        if u == v or _same_constant(consts, u, v):
            return
        i, j = self.steps.producer.get(u), self.steps.producer.get(v)
        if u in consts or i is None or j is None or self.steps.step_of.get(j) is not None:
            raise _Differs(
                f"it uses {_show(consts, v)} where the loop body uses {_show(consts, u)}"
            )
        a, b = self.steps.nodes[i], self.steps.nodes[j]
        if not _same_op(a, b):
            raise _Differs(f"it uses {v!r} where the loop body uses {u!r}")
        for name_a, name_b in zip(a.input, b.input, strict=True):
            if name_a:
                self.value(name_a, name_b)


def _same_op(a: onnx.NodeProto, b: onnx.NodeProto) -> bool:
    def attrs(node: onnx.NodeProto) -> list[bytes]:
        return sorted(x.SerializeToString() for x in node.attribute)

    return (
        a.op_type == b.op_type
        and a.domain == b.domain
        and len(a.input) == len(b.input)
        and len(a.output) == len(b.output)
        and attrs(a) == attrs(b)
    )


def _show(consts: _Constants, name: str) -> str:
    """A value's name, with its value when it is a constant of one element."""
    value = consts.get(name)
    if value is None or value.size != 1:
        return repr(name)
    return f"{name!r} = {value.reshape(-1)[0]:.6g}"


def _same_constant(consts: _Constants, u: str, v: str) -> bool:
    a, b = consts.get(u), consts.get(v)
    return (
        a is not None
        and b is not None
        and a.dtype == b.dtype
        and a.shape == b.shape
        and np.array_equal(a, b, equal_nan=True)
    )


def _match_steps(steps: _Steps, loop: _Loop, source: str) -> list[_Match]:
    """Match steps 1..T-2 to the body (step T-1); matches[t] for t >= 1."""
    body = loop.steps - 1
    matches = [_Match()]
    for t in range(1, body):
        try:
            matches.append(_Matcher(steps, loop, t, body).run())
        except _Differs as err:
            raise _odd_last_step(steps, loop, source) or _differs(
                source, t, body, str(err)
            ) from None
    itself = _Match(image={}, reads={})
    for i in steps.by_step[body]:
        for name in steps.nodes[i].input:
            if steps.step_of_value(name) == body - 1:
                itself.reads[name] = name
    matches.append(itself)
    nexts = _next_values(matches[body - 1], itself, source)
    for t in range(2, loop.steps):
        for u, v in matches[t].reads.items():
            if t - 1 < body and matches[t - 1].image.get(nexts[u]) != v:
                raise _differs(
                    source,
                    t,
                    body,
                    f"it reads {v!r} of step {t - 1} where the loop body reads the previous "
                    f"step's {u!r}",
                )
    return matches


def _odd_last_step(steps: _Steps, loop: _Loop, source: str) -> SnucError | None:
    """The error naming step T-1 when it alone differs: steps 1..T-2 all match step T-2."""
    body = loop.steps - 2
    if body < 2:
        return None
    try:
        for t in range(1, body):
            _Matcher(steps, loop, t, body).run()
    except _Differs:
        return None
    try:
        _Matcher(steps, loop, body + 1, body).run()
    except _Differs as err:
        return _differs(source, body + 1, body, str(err))
    return None


def _next_values(before: _Match, body: _Match, source: str) -> dict[str, str]:
    """``{body state read: the body value that is its next value}``."""
    inverse = {v: u for u, v in before.image.items()}
    nexts = {}
    for u in body.reads:
        if u not in inverse:
            raise SnucError(
                f"{source}: the loop body reads {u!r} of the step before, which has no "
                f"counterpart in the loop body; snuc cannot fold this loop"
            )
        nexts[u] = inverse[u]
    return nexts


def _differs(source: str, t: int, last: int, why: str) -> SnucError:
    return SnucError(
        f"{source}: an unrolled loop over time whose step {t} differs from step {last}, "
        f"taken as the loop body: {why}; snuc folds loops whose steps repeat one body"
    )


# ---------------------------------------------------------------------- the step model


def fold_unrolled(proto: onnx.ModelProto, source: str) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The step form of an unrolled model, and its ``{state output: state input}``.

    Args:
        proto: a model for which :func:`is_unrolled` holds (weights loaded).
        source: how messages name the model.

    Raises:
        SnucError: one line, when the loop cannot be folded: the time axis is dynamic,
            fewer than three steps were exported, an output is not per-step, a step differs
            from the loop body (the message names the first), or step 0 is not the loop
            body on zero states.
    """
    loop = _find_loop(proto, source)
    steps = _partition(proto, loop, source)
    matches = _match_steps(steps, loop, source)
    body = loop.steps - 1
    nexts = _next_values(matches[body - 1], matches[body], source)
    nodes = [_rewrite_shape(steps.nodes[i], loop) for i in _invariant_nodes(steps, loop, source)]
    found = LoopBody(
        proto=proto,
        x=loop.x,
        x_body=next(v for v, t in loop.x_at.items() if t == body),
        outputs=[(name, parts[body], parts[0]) for name, parts in loop.per_step],
        nodes=nodes + [steps.nodes[i] for i in steps.by_step[body]],
        nexts=nexts,
        step_zero={u: matches[1].reads[u] for u in nexts},
    )
    step, pairs = step_model(found, source)
    check_step_zero(found, step, source)
    return step, pairs


def _invariant_nodes(steps: _Steps, loop: _Loop, source: str) -> list[int]:
    """The nodes outside every step that the body needs (weights, shapes), in order."""
    needed: set[int] = set()
    stack = [n for i in steps.by_step[-1] for n in steps.nodes[i].input if n]
    while stack:
        i = steps.producer.get(stack.pop())
        if i is None or i in needed or i in steps.step_of or i in loop.skipped:
            continue
        needed.add(i)
        node = steps.nodes[i]
        if loop.x.name in node.input and node.op_type != "Shape":
            raise SnucError(
                f"{source}: {describe(node)} uses the whole input sequence {loop.x.name!r}; "
                f"snuc folds a loop whose steps each read one timestep x[t]"
            )
        stack.extend(n for n in node.input if n)
    return sorted(needed)


def _rewrite_shape(node: onnx.NodeProto, loop: _Loop) -> onnx.NodeProto:
    """``Shape(X)`` read from one step ``x_t``: the step lacks the time axis."""
    if node.op_type != "Shape" or node.input[0] != loop.x.name:
        return node
    rank = len(loop.x.type.tensor_type.shape.dim)
    start = int(attr(node, "start", 0))
    end = attr(node, "end")
    start = start + rank if start < 0 else start
    end = rank if end is None else (int(end) + rank if int(end) < 0 else int(end))
    if start >= 1:
        return helper.make_node(
            "Shape",
            [loop.x.name],
            list(node.output),
            name=node.name,
            start=start - 1,
            end=max(end - 1, 0),
        )
    raise SnucError(
        f"{describe(node)}: reads the sequence length of input {loop.x.name!r}; a folded "
        f"loop runs any T, so its step cannot depend on T: take the shape of x[t] instead"
    )
