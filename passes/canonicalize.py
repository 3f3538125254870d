"""``canonicalize``: local rewrites that bring exported graphs into one form.

Exporters spell the same computation many ways; the later patterns (``lift-snu``) match
one. Each rule here is pattern -> check -> rewrite; a check that fails returns the reason
(:class:`~snuc.passes.base.Match`), logged at DEBUG level. The rules:

* ``spike``: ``cast(greater(v, c))``, ``cast(less(c, v))`` and their ``where(..., 1, 0)``
  forms, ``c`` a constant, become ``step(v)`` when ``c == 0`` and ``step(v + (-c))``
  otherwise. Exact in IEEE arithmetic with gradual underflow: ``v - c`` rounds to a value
  of the exact difference's sign, so ``v + (-c) > 0`` iff ``v > c``. ``greater_equal``
  stays as written: ``v >= c`` and ``step(v - c)`` differ at ties.
* ``identity``: ``v + 0``, ``0 + v``, ``v - 0``, ``v * 1``, ``1 * v`` become ``v`` when the
  constant neither widens the dtype nor broadcasts ``v`` to a larger shape. Exact, except
  that ``-0.0 + 0.0`` is ``+0.0``: a zero may lose its sign, which no comparison, spike or
  error bound distinguishes.
* ``double-negation``: ``neg(neg(x))`` becomes ``x`` (exact).
* ``relu``: ``max(x, 0)`` and ``max(0, x)`` (what exporters write for ReLU, and what
  ``Clip(x, 0)`` without a max lowers to) become ``relu(x)`` when the zero does not
  broadcast x: ``relu`` is that same ``max``, bit for bit (NaN included).
* ``sign-compare``: ``sign(v) > 0`` and ``0 < sign(v)`` become ``v > 0``: both are true
  exactly where ``v > 0`` (NaN: false both), so their casts become spikes by ``spike``.
* ``step-at-zero``: ``where(v == 0, 0, step(v))`` (torch.heaviside with value 0 written
  out) becomes ``step(v)``, which is 0 at ``v == 0`` too. Dynamo's export of
  ``torch.heaviside(v, 0)``, ``where(v == 0, 0, where(v < 0, 0, 1))``, stays as written: it
  is 1 at NaN where the step is 0. So does ``(sign(v) + 1) / 2``, which is 0.5 at 0.
* ``sub-constant``: ``x - c`` becomes ``x + (-c)`` (exact: IEEE defines ``x - c`` as
  ``x + (-c)``) where that lets an add tree or a spike pattern match, i.e. when the result
  feeds ``dig.add``, ``dig.step`` or ``dig.sigmoid``.

A rewritten value keeps its name. A value that would be replaced by an existing value
(``identity``, ``double-negation``) is left alone when it is a graph output, since removing
it would rename the output.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from snuc.ir.graph import Graph, Node
from snuc.ir.ops import Add, Greater, Relu, Step
from snuc.ir.types import TensorType, broadcast_shapes
from snuc.passes.base import (
    Match,
    Pass,
    constant_of,
    erase_unused,
    is_filled_with,
    register_pass,
    take_place,
)

if TYPE_CHECKING:
    from snuc.ir.target import TargetSpec

_log = logging.getLogger(__name__)

_FLOATS = ("f32", "f64")


@dataclass(frozen=True)
class Rule:
    """One local rewrite.

    Attributes:
        name: what the debug log calls it.
        anchors: the op names a match starts from; other nodes are not tried.
        match: ``match(graph, node)``: what to rewrite, or why not.
        rewrite: ``rewrite(graph, node, found)`` with the value of a successful match.
    """

    name: str
    anchors: frozenset[str]
    match: Callable[[Graph, Node], Match[Any]]
    rewrite: Callable[[Graph, Node, Any], None]


# --------------------------------------------------------------------------- spike


@dataclass(frozen=True)
class Spike:
    """A comparison against a constant that is a Heaviside step: ``step(v - c)``.

    Attributes:
        v: the compared value.
        threshold: the constant ``c``; None when it is zero and ``step(v)`` suffices.
        compare: the comparison node (its loc goes to the new ``v + (-c)``).
    """

    v: str
    threshold: str | None
    compare: Node


def match_spike(graph: Graph, node: Node) -> Match[Spike]:
    """``cast(v > c)`` / ``where(v > c, 1, 0)`` (or ``c < v``) with ``c`` a constant."""
    if node.op.NAME == "dig.where":
        cond, on, off = node.inputs
        if not is_filled_with(constant_of(graph, on), 1):
            return Match.fail(f"the value %{on} taken where the condition holds is not constant 1")
        if not is_filled_with(constant_of(graph, off), 0):
            return Match.fail(f"the value %{off} taken where the condition fails is not constant 0")
    else:
        cond = node.inputs[0]
    compare = graph.producer(cond)
    if compare is None:
        return Match.fail(f"the condition %{cond} is not computed by a comparison")
    kind = compare.op.NAME
    if kind == "dig.greater":
        v, c = compare.inputs
    elif kind == "dig.less":
        c, v = compare.inputs
    elif kind == "dig.greater_equal":
        return Match.fail(
            f"the condition %{cond} is dig.greater_equal, which differs from a step at ties "
            "(v >= c is true at v == c, step(v - c) is not); it stays as written"
        )
    else:
        return Match.fail(f"the condition %{cond} is {kind}, not dig.greater or dig.less")
    threshold = constant_of(graph, c)
    if threshold is None:
        return Match.fail(f"the threshold %{c} of {kind} %{cond} is not a constant")
    vt, result = graph.type_of(v), graph.type_of(node.id)
    if vt.dtype not in _FLOATS:
        return Match.fail(f"the compared value %{v} is {vt}, not a float")
    if result.dtype != vt.dtype:
        return Match.fail(f"the spike is {result.dtype} but the compared value %{v} is {vt.dtype}")
    zero = is_filled_with(threshold, 0)
    shape = vt.shape if zero else broadcast_shapes([vt.shape, threshold.shape])
    if shape != result.shape:
        return Match.fail(f"a step of %{v} would be {TensorType(vt.dtype, shape)}, not {result}")
    return Match.success(Spike(v, None if zero else c, compare))


def rewrite_spike(graph: Graph, node: Node, spike: Spike) -> None:
    """Replace ``node`` by ``step(v)`` or ``step(v + (-c))``, keeping its name."""
    v = spike.v
    if spike.threshold is not None:
        negated = -graph.constants[spike.threshold]
        minus_c = graph.add_constant(graph.fresh(f"{spike.threshold}_neg"), negated)
        (v,) = graph.add_node(Add(), (v, minus_c), loc=spike.compare.loc)
    (step,) = graph.add_node(Step(), (v,), loc=node.loc)
    take_place(graph, (node.id,), graph.producer(step))
    erase_unused(graph, (spike.compare.id,))


# --------------------------------------------------------------------------- identities


def _replaceable(graph: Graph, node: Node, by: str) -> Match[str]:
    """Whether ``node``'s result may be replaced by the existing value ``by``."""
    if graph.type_of(by) != graph.type_of(node.id):
        return Match.fail(
            f"%{node.id} is {graph.type_of(node.id)} but %{by} is {graph.type_of(by)}: the "
            "constant broadcasts it"
        )
    if node.id in graph.outputs:
        return Match.fail(f"%{node.id} is a graph output; replacing it would rename the output")
    return Match.success(by)


def match_identity(graph: Graph, node: Node) -> Match[str]:
    """``v + 0``, ``0 + v``, ``v - 0``, ``v * 1`` or ``1 * v``: the value ``v``."""
    x, y = node.inputs
    neutral = 1 if node.op.NAME == "dig.mul" else 0
    candidates = [x] if node.op.NAME == "dig.sub" else [x, y]
    for v in candidates:
        other = y if v == x else x
        if is_filled_with(constant_of(graph, other), neutral):
            return _replaceable(graph, node, v)
    if node.op.NAME == "dig.sub":
        return Match.fail(f"the subtrahend %{y} is not constant 0")
    return Match.fail(f"neither operand is constant {neutral}")


def match_double_negation(graph: Graph, node: Node) -> Match[str]:
    """``neg(neg(x))``: the value ``x``."""
    inner = graph.producer(node.inputs[0])
    if inner is None or inner.op.NAME != "dig.neg":
        return Match.fail(f"the operand %{node.inputs[0]} is not a dig.neg")
    return _replaceable(graph, node, inner.inputs[0])


def replace_by_existing(graph: Graph, node: Node, value: str) -> None:
    """Make every user of ``node`` use ``value`` instead; drop what became unused."""
    graph.replace_uses(node.id, value)
    erase_unused(graph, (node.id, *node.inputs))


# --------------------------------------------------------------------------- ReLU, Heaviside


def _is_zero(graph: Graph, value: str) -> bool:
    return is_filled_with(constant_of(graph, value), 0)


def match_relu(graph: Graph, node: Node) -> Match[str]:
    """``max(x, 0)`` or ``max(0, x)`` of the shape of x: the value ``x``."""
    x, y = node.inputs
    for v, zero in ((x, y), (y, x)):
        if _is_zero(graph, zero) and not graph.is_constant(v):
            if graph.type_of(v) != graph.type_of(node.id):
                return Match.fail(f"the zero %{zero} broadcasts %{v} to {graph.type_of(node.id)}")
            return Match.success(v)
    return Match.fail("neither operand is a constant 0")


def rewrite_relu(graph: Graph, node: Node, x: str) -> None:
    """Replace ``max(x, 0)`` by ``relu(x)``, keeping its name."""
    (relu,) = graph.add_node(Relu(), (x,), loc=node.loc)
    take_place(graph, (node.id,), graph.producer(relu))
    erase_unused(graph, node.inputs)


def match_sign_compare(graph: Graph, node: Node) -> Match[tuple[str, str]]:
    """``sign(v) > 0`` or ``0 < sign(v)``: ``(v, the zero)``."""
    s, zero = node.inputs if node.op.NAME == "dig.greater" else node.inputs[::-1]
    sign = graph.producer(s)
    if sign is None or sign.op.NAME != "dig.sign":
        return Match.fail(f"the compared value %{s} is not a dig.sign")
    if not _is_zero(graph, zero):
        return Match.fail(f"the threshold %{zero} is not constant 0")
    return Match.success((sign.inputs[0], zero))


def rewrite_sign_compare(graph: Graph, node: Node, found: tuple[str, str]) -> None:
    """Replace ``sign(v) > 0`` by ``v > 0``, keeping its name."""
    v, zero = found
    (compare,) = graph.add_node(Greater(), (v, zero), loc=node.loc)
    take_place(graph, (node.id,), graph.producer(compare))
    erase_unused(graph, node.inputs)


def match_step_at_zero(graph: Graph, node: Node) -> Match[str]:
    """``where(v == 0, 0, step(v))`` (or ``0 == v``): the value ``v``."""
    cond, at_zero, otherwise = node.inputs
    equal, step = graph.producer(cond), graph.producer(otherwise)
    if equal is None or equal.op.NAME != "dig.equal":
        return Match.fail(f"the condition %{cond} is not a dig.equal")
    if step is None or step.op.NAME != "dig.step":
        return Match.fail(f"the value %{otherwise} taken elsewhere is not a dig.step")
    v = step.inputs[0]
    if v not in equal.inputs:
        return Match.fail(f"%{cond} does not compare the step's operand %{v}")
    other = equal.inputs[1] if equal.inputs[0] == v else equal.inputs[0]
    if not (_is_zero(graph, other) and _is_zero(graph, at_zero)):
        return Match.fail(f"%{cond} is not %{v} == 0 or the value taken there is not 0")
    if graph.type_of(otherwise) != graph.type_of(node.id):
        return Match.fail(f"the where broadcasts the step %{otherwise}")
    return Match.success(v)


def rewrite_step(graph: Graph, node: Node, v: str) -> None:
    """Replace ``node`` by ``step(v)``, keeping its name."""
    (step,) = graph.add_node(Step(), (v,), loc=node.loc)
    take_place(graph, (node.id,), graph.producer(step))
    erase_unused(graph, node.inputs)


# --------------------------------------------------------------------------- x - c


_SUB_HELPS = ("dig.add", "dig.step", "dig.sigmoid")


def match_sub_constant(graph: Graph, node: Node) -> Match[str]:
    """``x - c``, ``c`` a constant, used by an add, a step or a sigmoid: the constant."""
    x, c = node.inputs
    if constant_of(graph, c) is None:
        return Match.fail(f"the subtrahend %{c} is not a constant")
    if graph.is_constant(x):
        return Match.fail(f"both operands are constants (%{x} - %{c})")
    if not any(u.op.NAME in _SUB_HELPS for u in graph.users(node.id)):
        return Match.fail(f"no user of %{node.id} is {', '.join(_SUB_HELPS)}; it stays a sub")
    return Match.success(c)


def rewrite_sub_constant(graph: Graph, node: Node, c: str) -> None:
    """Replace ``x - c`` by ``x + (-c)``, keeping its name."""
    minus_c = graph.add_constant(graph.fresh(f"{c}_neg"), -graph.constants[c])
    (added,) = graph.add_node(Add(), (node.inputs[0], minus_c), loc=node.loc)
    take_place(graph, (node.id,), graph.producer(added))


RULES: tuple[Rule, ...] = (
    Rule("spike", frozenset({"dig.cast", "dig.where"}), match_spike, rewrite_spike),
    Rule(
        "identity",
        frozenset({"dig.add", "dig.sub", "dig.mul"}),
        match_identity,
        replace_by_existing,
    ),
    Rule("double-negation", frozenset({"dig.neg"}), match_double_negation, replace_by_existing),
    Rule("relu", frozenset({"dig.max"}), match_relu, rewrite_relu),
    Rule(
        "sign-compare",
        frozenset({"dig.greater", "dig.less"}),
        match_sign_compare,
        rewrite_sign_compare,
    ),
    Rule("step-at-zero", frozenset({"dig.where"}), match_step_at_zero, rewrite_step),
    Rule("sub-constant", frozenset({"dig.sub"}), match_sub_constant, rewrite_sub_constant),
)
"""The rules, tried in this order on every node until none applies."""


def _apply_first(graph: Graph, node: Node) -> bool:
    """Apply the first rule that matches ``node``; log why the others did not."""
    for rule in RULES:
        if node.op.NAME not in rule.anchors:
            continue
        found = rule.match(graph, node)
        if found:
            rule.rewrite(graph, node, found.value)
            _log.debug("canonicalize: %s rewrote %%%s", rule.name, node.id)
            return True
        _log.debug("canonicalize: %s does not apply to %%%s: %s", rule.name, node.id, found.reason)
    return False


@register_pass
@dataclass(frozen=True)
class Canonicalize(Pass):
    """Apply :data:`RULES` until none matches (see the module docstring)."""

    name: ClassVar[str] = "canonicalize"

    def run(self, graph: Graph, target: TargetSpec | None) -> Graph:
        graph = graph.copy()
        changed = True
        while changed:
            changed = False
            for stale in list(graph.nodes()):
                # An earlier rewrite in this sweep may have removed or rewired the node.
                node = graph.producer(stale.id)
                if node is not None and _apply_first(graph, node):
                    changed = True
        return graph
