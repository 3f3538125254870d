"""Lifting the neuron family (SPEC §1.1) beside the SNU: ``carry-spikes`` and ``lift-neurons``.

``carry-spikes`` (before ``lift-snu``) turns a reset recomputed from the previous membrane
into a state carrying the previous spike, the form the lifts match. snnTorch keeps only
the membrane as state and recomputes ``reset = H(v_{t-1} - θ)``; after ``canonicalize``
that is ``step(v_prev + c)`` (or ``step(v_prev)``, ``c = 0``) for a state ``v_prev``. Where
the step's membrane ``v`` (the state's next value) is also stepped as ``step(v + c)`` with
the same constant (the spike; made when absent), the reset is that spike one step late:
a state ``y_prev`` carrying it replaces the reset (an existing state carrying the spike is
reused). Exact: both compute ``H(v + c)`` of the same ``v``, and at the first step the
reset is ``H(0 + c) = 0`` exactly when every ``c <= 0`` (a non-negative threshold), the
zero a state starts with; otherwise the graph stays as it is. It then spells the zero
reset of a state ``x`` by a spike state ``y`` (``y``'s next value a ``dig.step``) the way
``lift-snu`` matches it, ``x * (1 - y)``: from ``x - x * y`` (factors in either order) and
from ``where(cast(y, bool), 0, x)``. Exact for spikes, but for the sign of a zero
(``x - x`` is ``+0``, ``x * 0`` keeps x's sign) and for an infinite ``x`` where a spike
resets it (``where`` gives 0, the product NaN).

``lift-neurons`` (after ``lift-snu``) finds, from each state ``y_prev`` carrying a spike
``y = step(v + c)`` (or ``step(v)``):

* ``v = X - y_prev * θ`` (the product in either order, ``θ = -c`` a constant: the reset by
  subtraction) with ``X = decay * v_prev + a`` (``snu.lif_sub``) or ``X = v_prev + a``
  (``snu.if``), terms and factors in either order, ``v_prev`` the state carrying ``v``;
* and where ``a`` is itself the next value of a state ``i_prev`` of the form
  ``syn_decay * i_prev + x``: ``snu.cuba`` with ``reset = subtract`` over ``x``;

then every state ``v_prev`` whose next value is ``decay * v_prev + a`` (``snu.li``). A LIF
with reset to zero is an SNU (``lift-snu`` lifts it). Each lifted op computes what the
matched nodes compute in the same order (float additions and multiplications commute
exactly), so lifted results are bit for bit the graph's, except where ``a`` is several
terms of the sum (snnTorch's ``RLeaky``: ``decay * v_prev + W x + V y_prev``): they are
summed first, left to right, which re-associates the sum (results agree to float32
rounding; spikes except at exact ties). A pattern that fails says why (logged at DEBUG
level).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from snuc.ir.errors import VerifyError
from snuc.ir.graph import Graph, Node
from snuc.ir.neurons import IF, CurrentLIF, LeakyIntegrator, LIFSubtract, NeuronOp
from snuc.ir.ops import Add, Mul, Step, Sub
from snuc.passes.base import Match, Pass, erase_unused, is_filled_with, register_pass, take_place
from snuc.passes.lift_snu import layer_loc, sum_type

if TYPE_CHECKING:
    from snuc.ir.target import TargetSpec

_log = logging.getLogger(__name__)


def _node(graph: Graph, value: str, name: str) -> Node | None:
    """The node computing ``value`` if it is a ``name`` op, else None."""
    node = graph.producer(value)
    return node if node is not None and name == node.op.NAME else None


def _spike_of(graph: Graph, value: str) -> tuple[str, np.ndarray | None, tuple[str, ...]] | None:
    """``value`` as ``step(v + c)`` or ``step(v)``: ``(v, c or None, matched nodes)``."""
    step = _node(graph, value, "dig.step")
    if step is None:
        return None
    add = _node(graph, step.inputs[0], "dig.add")
    if add is not None:
        for v, c in (add.inputs, add.inputs[::-1]):
            if graph.is_constant(c) and not graph.is_constant(v):
                return v, graph.constants[c], (add.id, step.id)
    return step.inputs[0], None, (step.id,)


def _same_shift(c1: np.ndarray | None, c2: np.ndarray | None) -> bool:
    """Whether two spike shifts are the same constant (None: zero)."""
    a = np.zeros(()) if c1 is None else c1
    b = np.zeros(()) if c2 is None else c2
    return a.shape == b.shape and bool(np.array_equal(a, b))


# --------------------------------------------------------------------------- carry-spikes


def _spike_after(graph: Graph, v: str, shift: np.ndarray | None) -> str | None:
    """An existing ``step(v + c)`` (or ``step(v)``) of ``v`` with this shift, or None."""
    for user in graph.users(v):
        candidate = user.outputs[0]
        if user.op.NAME == "dig.add":
            steps = [n for n in graph.users(candidate) if n.op.NAME == "dig.step"]
            candidate = steps[0].outputs[0] if steps else ""
        found = _spike_of(graph, candidate) if candidate else None
        if found and found[0] == v and _same_shift(found[1], shift):
            return candidate
    return None


def carry_spike(graph: Graph, reset: Node) -> Match[str]:
    """Replace the recomputed reset ``reset`` (a ``dig.step``) by a state carrying the
    spike of the step before; the state's name, or why not."""
    found = _spike_of(graph, reset.outputs[0])
    if found is None:
        return Match.fail("not a step")
    v_prev, shift, _ = found
    if not graph.is_state(v_prev):
        return Match.fail(f"%{reset.outputs[0]} does not step a state")
    if shift is not None and not bool(np.all(shift <= 0)):
        return Match.fail(f"a negative threshold makes %{reset.outputs[0]} 1 at the first step")
    v = graph.state(v_prev).next
    dtype = graph.type_of(reset.outputs[0])
    if dtype != graph.type_of(v_prev):
        return Match.fail(f"%{reset.outputs[0]} is not of the membrane's type")
    spike = _spike_after(graph, v, shift)
    if spike is None:
        spike = _make_spike(graph, v, shift, reset)
    carried = [st.name for st in graph.states_fed_by(spike)]
    y_prev = carried[0] if carried else graph.add_state(graph.fresh(f"{v_prev}_spike"), dtype)
    if not carried:
        graph.set_next(y_prev, spike)
    graph.replace_uses(reset.outputs[0], y_prev)
    erase_unused(graph, (reset.outputs[0], *[n for n in found[2] if n != reset.id]))
    return Match.success(y_prev)


def _make_spike(graph: Graph, v: str, shift: np.ndarray | None, like: Node) -> str:
    """``step(v + c)`` (or ``step(v)``), with ``like``'s location."""
    shifted = v
    if shift is not None:
        c = graph.add_constant(graph.fresh("threshold_neg"), shift, like.loc)
        (shifted,) = graph.add_node(Add(), (v, c), loc=like.loc)
    (spike,) = graph.add_node(Step(), (shifted,), loc=like.loc)
    return spike


def _spike_state(graph: Graph, value: str) -> bool:
    """Whether ``value`` is a state whose next value is a ``dig.step`` (spikes)."""
    return graph.is_state(value) and _node(graph, graph.state(value).next, "dig.step") is not None


def _zero_reset(graph: Graph, node: Node) -> tuple[str, str] | None:
    """``node`` as ``x - x * y`` or ``where(cast(y, bool), 0, x)``, y a spike state:
    ``(x, y)``; else None."""
    if node.op.NAME == "dig.sub":
        x, product = node.inputs
        mul = _node(graph, product, "dig.mul")
        for a, y in (mul.inputs, mul.inputs[::-1]) if mul else ():
            if a == x and _spike_state(graph, y):
                return x, y
    if node.op.NAME == "dig.where":
        cond, zero, x = node.inputs
        cast = _node(graph, cond, "dig.cast")
        if (
            cast
            and _spike_state(graph, cast.inputs[0])
            and is_filled_with(graph.constants.get(zero), 0)
        ):
            return x, cast.inputs[0]
    return None


def respell_zero_reset(graph: Graph, node: Node) -> bool:
    """Rewrite a zero reset ``node`` as ``x * (1 - y)`` under its name; whether it was one."""
    found = _zero_reset(graph, node)
    if found is None or graph.type_of(found[0]) != graph.type_of(node.outputs[0]):
        return False
    x, y = found
    one = graph.add_constant(graph.fresh("one"), np.ones((), graph.type_of(y).np_dtype), node.loc)
    (keep,) = graph.add_node(Sub(), (one, y), loc=node.loc)
    (product,) = graph.add_node(Mul(), (x, keep), loc=node.loc)
    take_place(graph, (node.outputs[0],), graph.producer(product))
    erase_unused(graph, node.inputs)
    return True


@register_pass
@dataclass(frozen=True)
class CarrySpikes(Pass):
    """Make resets recomputed from the membrane states carrying the spike (module
    docstring)."""

    name: ClassVar[str] = "carry-spikes"

    def run(self, graph: Graph, target: TargetSpec | None) -> Graph:
        graph = graph.copy()
        for node in [n for n in graph.nodes() if n.op.NAME == "dig.step"]:
            if not graph.has_value(node.outputs[0]) or graph.producer(node.outputs[0]) is None:
                continue
            found = carry_spike(graph, node)
            if found:
                _log.debug("carry-spikes: %%%s is now the state %%%s", node.id, found.value)
        for node in [n for n in graph.nodes() if n.op.NAME in ("dig.sub", "dig.where")]:
            if graph.producer(node.outputs[0]) is node and respell_zero_reset(graph, node):
                _log.debug("carry-spikes: the zero reset %%%s is now x * (1 - y)", node.id)
        return graph


# --------------------------------------------------------------------------- lift-neurons


@dataclass(frozen=True)
class NeuronMatch:
    """One neuron layer found in a graph: the op, the terms whose sum is its input ``a``,
    its other operands, the values it replaces and the nodes it matched."""

    op: NeuronOp
    a_terms: tuple[str, ...]
    operands: tuple[str, ...]
    results: tuple[str, ...]
    matched: tuple[str, ...]


def _terms(graph: Graph, value: str) -> tuple[list[str], list[str]]:
    """Leaves and node results of the tree of ``dig.add`` nodes rooted at ``value``."""
    add = _node(graph, value, "dig.add")
    if add is None:
        return [value], []
    leaves, nodes = [], [add.id]
    for operand in add.inputs:
        sub_leaves, sub_nodes = _terms(graph, operand)
        leaves += sub_leaves
        nodes += sub_nodes
    return leaves, nodes


def _decayed(graph: Graph, value: str, state: str) -> Match[tuple[str | None, tuple, tuple]]:
    """``value`` as ``decay * state + a`` or ``state + a``, terms in any order and
    association (``a`` the sum of the other terms, left to right): ``(decay or None,
    a's terms, nodes)``."""
    add = _node(graph, value, "dig.add")
    if add is None:
        return Match.fail(f"%{value} is not a sum")
    # A decayed state that is a direct operand leaves `a` as the other operand, as it is.
    direct = _decayed_terms(graph, list(add.inputs), [add.id], state)
    return direct if direct else _decayed_terms(graph, *_terms(graph, value), state)


def _decayed_terms(
    graph: Graph, terms: list[str], nodes: list[str], state: str
) -> Match[tuple[str | None, tuple, tuple]]:
    """The terms of a sum as ``decay * state`` (or ``state``) and the others."""
    for k, term in enumerate(terms):
        rest = tuple(terms[:k] + terms[k + 1 :])
        if state in rest:
            continue
        if term == state:
            return Match.success((None, rest, tuple(nodes)))
        mul = _node(graph, term, "dig.mul")
        for decay, s in (mul.inputs, mul.inputs[::-1]) if mul else ():
            if s == state and graph.is_constant(decay):
                return Match.success((decay, rest, (*nodes, mul.id)))
    return Match.fail(f"the sum %{nodes[0]} is not decay * %{state} + a")


def match_lif(graph: Graph, y_prev: str) -> Match[NeuronMatch]:
    """The LIF (reset by subtraction), IF or current-based LIF whose spike the state
    ``y_prev`` carries, or why there is none."""
    y = graph.state(y_prev).next
    found = _spike_of(graph, y)
    if found is None:
        return Match.fail(f"state %{y_prev} does not carry a spike")
    v, shift, spike_nodes = found
    v_prevs = [st.name for st in graph.states_fed_by(v)]
    sub = _node(graph, v, "dig.sub")
    if not v_prevs or sub is None:
        return Match.fail(f"%{v} is not a state's next value x - y_prev * threshold")
    x, product = sub.inputs
    mul = _node(graph, product, "dig.mul")
    threshold = next(
        (t for r, t in ((mul.inputs, mul.inputs[::-1]) if mul else ()) if r == y_prev), None
    )
    if threshold is None or not graph.is_constant(threshold):
        return Match.fail(f"%{product} is not %{y_prev} * a constant threshold")
    if not _same_shift(shift, -graph.constants[threshold]) and not (
        shift is None and not np.any(graph.constants[threshold])
    ):
        return Match.fail(f"the spike of %{v} is not H(v - %{threshold})")
    v_prev = v_prevs[0]
    decayed = _decayed(graph, x, v_prev)
    if not decayed:
        return Match.fail(decayed.reason)
    decay, a_terms, nodes = decayed.value
    matched = (*nodes, sub.id, mul.id, *spike_nodes)
    if decay is None:
        return Match.success(
            NeuronMatch(IF(), a_terms, (v_prev, y_prev, threshold), (v, y), matched)
        )
    i_prevs = [st.name for st in graph.states_fed_by(a_terms[0])] if len(a_terms) == 1 else []
    current = _decayed(graph, a_terms[0], i_prevs[0]) if i_prevs else Match.fail("no current")
    if current and current.value[0] is not None:
        syn_decay, x_terms, current_nodes = current.value
        operands = (i_prevs[0], v_prev, y_prev, syn_decay, decay, threshold)
        results = (a_terms[0], v, y)
        lifted = NeuronMatch(CurrentLIF(), x_terms, operands, results, (*matched, *current_nodes))
        return Match.success(lifted)
    operands = (v_prev, y_prev, decay, threshold)
    return Match.success(NeuronMatch(LIFSubtract(), a_terms, operands, (v, y), matched))


def match_li(graph: Graph, v_prev: str) -> Match[NeuronMatch]:
    """The leaky integrator whose membrane the state ``v_prev`` carries, or why not."""
    v = graph.state(v_prev).next
    decayed = _decayed(graph, v, v_prev)
    if not decayed:
        return Match.fail(decayed.reason)
    decay, a_terms, nodes = decayed.value
    if decay is None:
        return Match.fail(f"%{v} has no decay (an integrator of constant decay 1: not lifted)")
    return Match.success(NeuronMatch(LeakyIntegrator(), a_terms, (v_prev, decay), (v,), nodes))


def rewrite(graph: Graph, m: NeuronMatch) -> Match[None]:
    """Replace the match by one node of its op taking the names of its results, or say
    why the op would not compute their types."""
    a_type = sum_type([graph.type_of(t) for t in m.a_terms])
    types = (a_type, *(graph.type_of(v) for v in m.operands))
    try:
        results = m.op.infer(types, (None,) * len(types))
    except VerifyError as exc:
        return Match.fail(f"the layer of %{m.results[-1]} does not fit {m.op.NAME}: {exc}")
    if results != tuple(graph.type_of(r) for r in m.results):
        return Match.fail(f"{m.op.NAME} would not compute the types of %{m.results[-1]}")
    loc = layer_loc(graph.producer(m.results[0]).loc, graph.producer(m.results[-1]).loc)
    a = m.a_terms[0]
    for term in m.a_terms[1:]:
        (a,) = graph.add_node(Add(), (a, term), loc=loc)
    outputs = graph.add_node(m.op, (a, *m.operands), loc=loc)
    take_place(graph, m.results, graph.producer(outputs[0]))
    erase_unused(graph, m.matched)
    return Match.success(None)


@register_pass
@dataclass(frozen=True)
class LiftNeurons(Pass):
    """Replace every LIF (reset by subtraction), IF, current-based LIF and leaky
    integrator by its ``snu.*`` op (see the module docstring)."""

    name: ClassVar[str] = "lift-neurons"

    def run(self, graph: Graph, target: TargetSpec | None) -> Graph:
        graph = graph.copy()
        for matcher in (match_lif, match_li):
            for state in [st.name for st in graph.states]:
                if not graph.is_state(state) or graph.producer(graph.state(state).next) is None:
                    continue
                found = matcher(graph, state)
                done = rewrite(graph, found.value) if found else found
                if done:
                    _log.debug("lift-neurons: lifted %s at %%%s", found.value.op.NAME, state)
                else:
                    _log.debug("lift-neurons: nothing at state %%%s: %s", state, done.reason)
        return graph
