"""``lift-snu``: find the SNU neuron update in a step graph and make it one ``snu.layer``.

The pattern (SPEC §1, Woźniak et al. 2020), after ``canonicalize``::

    s = g(a + l * s_prev * (1 - y_prev))       g = dig.relu, or absent (identity)
    y = h(s + b)                               h = dig.step | dig.sigmoid

with ``s_prev`` and ``y_prev`` states whose next values are ``s`` and ``y``. Matching
starts from each state ``y_prev`` whose next value is computed by ``h`` and accepts:

* ``s + b`` as ``dig.add(s, b)`` or ``dig.add(b, s)``, ``b`` a constant; or ``h(s)`` alone
  (a new zero bias);
* the sum in any order and association: the ``dig.add`` tree is flattened into terms, one
  of which is the product; the others add up to ``a`` (one term is reused as it is,
  several are summed left to right in their order in the tree);
* the product in any order and association: the ``dig.mul`` tree is flattened into
  factors ``s_prev``, ``1 - y_prev`` and constants, whose product is the decay (none: a
  new decay 1);
* ``1 - y_prev`` as ``dig.sub(1, y)``, ``dig.add(1, dig.neg(y))`` or
  ``dig.add(dig.neg(y), 1)``.

The decay and bias must be constants that broadcast to ``s``. A state wiring other than
the SNU's (``s_prev`` not carrying ``s``, the reset ``1 - y`` taken from another state) is
not an SNU, and stays as it is; so does a computed decay (``dig.sigmoid`` of a parameter,
say): fold constants first. Every pattern that fails says why (:func:`match_snu`, logged
at DEBUG level).

The lifted node takes the names of ``s`` and ``y``; the matched nodes nothing else uses
are removed. Results agree with the original graph up to float32 rounding where the sum or
product is re-associated (spikes are identical except at exact ties), and exactly where
the graph already computes ``a + l * s_prev * (1 - y_prev)`` in the interpreter's order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import reduce
from itertools import takewhile
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from snuc.ir.errors import Loc, VerifyError
from snuc.ir.graph import Graph, Node
from snuc.ir.ops import Add, SNULayer
from snuc.ir.types import TensorType, broadcast_shapes, promote
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

_H = {"dig.step": "step", "dig.sigmoid": "sigmoid"}


@dataclass(frozen=True)
class SNUMatch:
    """One SNU layer found in a graph.

    Attributes:
        s, y: the membrane and the output (spike) computed in this step.
        s_prev, y_prev: the states carrying them to the next step.
        a_terms: the terms whose sum is the synaptic input ``a``.
        decay: the constant factors of the decay product (empty: decay 1).
        bias: the constant bias, or None when there is none.
        g, h: the ``snu.layer`` attributes.
        matched: results of the matched nodes; those left unused are removed.
        loc: where the layer came from.
    """

    s: str
    y: str
    s_prev: str
    y_prev: str
    a_terms: tuple[str, ...]
    decay: tuple[str, ...]
    bias: str | None
    g: str
    h: str
    matched: tuple[str, ...]
    loc: Loc


@dataclass(frozen=True)
class _Product:
    """``decay * s_prev * (1 - y_prev)``: its constant factors, its state, its nodes."""

    decay: tuple[str, ...]
    s_prev: str
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class _Sum:
    """``a + product``: the terms of ``a``, the product, the add nodes."""

    a_terms: tuple[str, ...]
    product: _Product
    nodes: tuple[str, ...]


def _op_name(graph: Graph, value: str) -> str:
    """The op computing ``value``; '' for inputs, states and constants."""
    node = graph.producer(value)
    return "" if node is None else node.op.NAME


def _flatten(graph: Graph, value: str, op_name: str) -> tuple[list[str], list[str]]:
    """Leaves and node results of the tree of ``op_name`` nodes rooted at ``value``."""
    if _op_name(graph, value) != op_name:
        return [value], []
    node = graph.producer(value)
    leaves, nodes = [], [node.id]
    for operand in node.inputs:
        sub_leaves, sub_nodes = _flatten(graph, operand, op_name)
        leaves += sub_leaves
        nodes += sub_nodes
    return leaves, nodes


def _one_minus(graph: Graph, value: str) -> Match[tuple[str, tuple[str, ...]]]:
    """``1 - x`` as ``sub(1, x)``, ``add(1, neg(x))`` or ``add(neg(x), 1)``: x and the nodes."""
    node = graph.producer(value)
    if node is not None and node.op.NAME == "dig.sub":
        one, x = node.inputs
        if is_filled_with(constant_of(graph, one), 1):
            return Match.success((x, (node.id,)))
    if node is not None and node.op.NAME == "dig.add":
        for one, negated in (node.inputs, node.inputs[::-1]):
            neg = graph.producer(negated)
            if is_filled_with(constant_of(graph, one), 1) and neg and neg.op.NAME == "dig.neg":
                return Match.success((neg.inputs[0], (node.id, neg.id)))
    return Match.fail(f"%{value} is not 1 - x")


def _match_product(
    graph: Graph, value: str, s_prevs: list[str], y_prev: str, y: str
) -> Match[_Product]:
    """``value`` as ``decay * s_prev * (1 - y_prev)``, factors in any order and association."""
    node = graph.producer(value)
    if node is None or node.op.NAME != "dig.mul":
        return Match.fail(f"%{value} is not a product")
    factors, nodes = _flatten(graph, value, "dig.mul")
    decay: list[str] = []
    states: list[str] = []
    resets: list[str] = []
    for factor in factors:
        if factor in s_prevs:
            states.append(factor)
        elif graph.is_constant(factor):
            decay.append(factor)
        elif reset := _one_minus(graph, factor):
            x, reset_nodes = reset.value
            if x != y_prev:
                return Match.fail(
                    f"the reset factor %{factor} of %{value} is 1 - %{x}, but the state "
                    f"carrying this layer's output %{y} is %{y_prev}"
                )
            resets.append(factor)
            nodes += reset_nodes
        else:
            return Match.fail(
                f"the factor %{factor} of %{value} is not a constant (a decay must be one), "
                f"nor the state %{' or %'.join(s_prevs)}, nor 1 - %{y_prev}"
            )
    if len(states) != 1:
        return Match.fail(
            f"the product %{value} has {len(states)} factors %{' or %'.join(s_prevs)}, not one"
        )
    if len(resets) != 1:
        return Match.fail(
            f"the product %{value} has {len(resets)} reset factors 1 - %{y_prev}, not one"
        )
    return Match.success(_Product(tuple(decay), states[0], tuple(nodes)))


def _match_sum(graph: Graph, pre: Node, s_prevs: list[str], y_prev: str, y: str) -> Match[_Sum]:
    """``pre`` as ``a + decay * s_prev * (1 - y_prev)``, terms in any order and association."""
    # A product that is a direct operand leaves `a` as the other operand, reused as it is.
    for a, p in (pre.inputs, pre.inputs[::-1]):
        product = _match_product(graph, p, s_prevs, y_prev, y)
        if product:
            return Match.success(_Sum((a,), product.value, (pre.id,)))
    terms, nodes = _flatten(graph, pre.id, "dig.add")
    reasons = []
    for i, term in enumerate(terms):
        product = _match_product(graph, term, s_prevs, y_prev, y)
        if product:
            a_terms = tuple(terms[:i] + terms[i + 1 :])
            return Match.success(_Sum(a_terms, product.value, tuple(nodes)))
        if _op_name(graph, term) == "dig.mul":
            reasons.append(product.reason)
    detail = "; ".join(reasons) if reasons else "it has no product term"
    return Match.fail(
        f"no term of the sum %{pre.id} is decay * %{' or %'.join(s_prevs)} * (1 - %{y_prev}): "
        f"{detail}"
    )


def _split_bias(
    graph: Graph, spike: Node, y_prev: str
) -> Match[tuple[str, str | None, tuple[str, ...]]]:
    """The operand of ``h`` as ``s`` or ``s + b``: ``s`` (a state's next), ``b``, the add."""

    def is_next(value: str) -> bool:
        return any(st.name != y_prev for st in graph.states_fed_by(value))

    u = spike.inputs[0]
    if is_next(u):
        return Match.success((u, None, ()))
    add = graph.producer(u)
    if add is not None and add.op.NAME == "dig.add":
        for s, b in (add.inputs, add.inputs[::-1]):
            if is_next(s):
                if not graph.is_constant(b):
                    return Match.fail(f"the bias %{b} added to the membrane %{s} is not a constant")
                return Match.success((s, b, (add.id,)))
    return Match.fail(
        f"the input %{u} of {spike.op.NAME} %{spike.id} is neither a state's next value s "
        "nor s + bias"
    )


def layer_loc(s_loc: Loc, y_loc: Loc) -> Loc:
    """The source path both locs share, or ``s_loc`` when they share only the scheme.

    ``onnx:/snu1/Relu`` and ``onnx:/snu1/Cast`` give ``onnx:/snu1``, the layer's name.
    """
    s_parts, y_parts = s_loc.source.split("/"), y_loc.source.split("/")
    pairs = zip(s_parts, y_parts, strict=False)
    common = [p for p, _ in takewhile(lambda pq: pq[0] == pq[1], pairs)]
    if len(common) >= 2 and common != s_parts:
        return Loc("/".join(common))
    return s_loc


def match_snu(graph: Graph, y_prev: str) -> Match[SNUMatch]:
    """The SNU layer whose output the state ``y_prev`` carries, or why there is none.

    Args:
        graph: the graph to search (after ``canonicalize``).
        y_prev: the name of a state: the layer's previous output.
    """
    if not graph.is_state(y_prev):
        return Match.fail(f"%{y_prev} is not a state")
    y = graph.state(y_prev).next
    spike = graph.producer(y)
    if spike is None or spike.op.NAME not in _H:
        computed_by = "no node" if spike is None else spike.op.NAME
        return Match.fail(
            f"state %{y_prev} takes %{y}, computed by {computed_by}, not by dig.step or dig.sigmoid"
        )
    split = _split_bias(graph, spike, y_prev)
    if not split:
        return Match.fail(split.reason)
    s, bias, bias_nodes = split.value
    s_prevs = [st.name for st in graph.states_fed_by(s)]
    s_node = graph.producer(s)
    if s_node is not None and s_node.op.NAME == "dig.relu":
        g, pre = "relu", graph.producer(s_node.inputs[0])
    else:
        g, pre = "identity", s_node
    if pre is None or pre.op.NAME != "dig.add":
        return Match.fail(
            f"the membrane %{s} is not g(a + decay * s_prev * (1 - y_prev)) with g relu or "
            "identity: its argument is not a dig.add"
        )
    found = _match_sum(graph, pre, s_prevs, y_prev, y)
    if not found:
        return Match.fail(found.reason)
    terms = found.value
    matched = (*terms.nodes, *terms.product.nodes, s, *bias_nodes, y)
    m = SNUMatch(
        s=s,
        y=y,
        s_prev=terms.product.s_prev,
        y_prev=y_prev,
        a_terms=terms.a_terms,
        decay=terms.product.decay,
        bias=bias,
        g=g,
        h=_H[spike.op.NAME],
        matched=tuple(dict.fromkeys(matched)),
        loc=layer_loc(graph.producer(s).loc, spike.loc),
    )
    problem = _type_problem(graph, m)
    return Match.fail(problem) if problem else Match.success(m)


def _type_problem(graph: Graph, m: SNUMatch) -> str:
    """Why ``snu.layer`` over the match would not compute the types of s and y, or ''."""
    s_type, y_type = graph.type_of(m.s), graph.type_of(m.y)
    a_types = [graph.type_of(t) for t in m.a_terms]
    decay_types = [graph.type_of(c) for c in m.decay] or [TensorType(s_type.dtype, ())]
    try:
        operands = (
            sum_type(a_types),
            graph.type_of(m.s_prev),
            graph.type_of(m.y_prev),
            sum_type(decay_types),
            graph.type_of(m.bias) if m.bias else TensorType(s_type.dtype, ()),
        )
        types = SNULayer(g=m.g, h=m.h).infer(operands, (None,) * 5)
    except VerifyError as exc:
        return f"the layer of %{m.s}, %{m.y} does not fit snu.layer: {exc}"
    if types != (s_type, y_type):
        return (
            f"snu.layer would compute {types[0]}, {types[1]} from a: {operands[0]}, but "
            f"%{m.s}, %{m.y} are {s_type}, {y_type}"
        )
    return ""


def sum_type(types: list[TensorType]) -> TensorType:
    """The type of an element-wise sum or product of values of ``types``."""
    dtype = promote([t.dtype for t in types])
    return TensorType(dtype, broadcast_shapes([t.shape for t in types]))


def rewrite_snu(graph: Graph, m: SNUMatch) -> None:
    """Replace the match by one ``snu.layer`` node that takes the names of s and y."""
    dtype = graph.type_of(m.s).np_dtype
    a = m.a_terms[0]
    for term in m.a_terms[1:]:
        (a,) = graph.add_node(Add(), (a, term), loc=m.loc)
    if len(m.decay) == 1:
        decay = m.decay[0]
    else:
        value = reduce(np.multiply, (graph.constants[c] for c in m.decay), np.ones((), dtype))
        decay = graph.add_constant(graph.fresh("decay"), value.astype(dtype), m.loc)
    bias = m.bias or graph.add_constant(graph.fresh("bias"), np.zeros((), dtype), m.loc)
    s, _ = graph.add_node(SNULayer(g=m.g, h=m.h), (a, m.s_prev, m.y_prev, decay, bias), loc=m.loc)
    take_place(graph, (m.s, m.y), graph.producer(s))
    erase_unused(graph, m.matched)


@register_pass
@dataclass(frozen=True)
class LiftSNU(Pass):
    """Replace every SNU neuron update by a ``snu.layer`` node (see the module docstring)."""

    name: ClassVar[str] = "lift-snu"

    def run(self, graph: Graph, target: TargetSpec | None) -> Graph:
        graph = graph.copy()
        for y_prev in [st.name for st in graph.states]:
            found = match_snu(graph, y_prev)
            if found:
                rewrite_snu(graph, found.value)
                _log.debug("lift-snu: lifted %%%s, %%%s", found.value.s, found.value.y)
            else:
                _log.debug("lift-snu: no SNU at state %%%s: %s", y_prev, found.reason)
        return graph
