"""The graph's use-lists and node order, held to a brute-force recomputation.

Every mutation (adding and inserting nodes, removing them, rewriting a node's op and
inputs, replacing all uses of a value, the renaming ``take_place`` does, setting a state's
next value, dropping dead code, copying) must leave the producer, the users and the states
of every value, and the order of the nodes, what a scan of the whole graph says they are.
The brute-force order keeps its own list of the nodes in key order (appended nodes last,
inserted nodes just before the node named) and repeatedly takes the first node whose
operands are all computed, the definition of ``Graph.nodes``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snuc.ir import Graph, TensorType, VerifyError
from snuc.ir.graph import Node
from snuc.ir.ops import Add, Mul, Neg, Relu
from snuc.passes.base import erase_unused, take_place

ROW = TensorType("f32", ("B", 4))


def _graph() -> Graph:
    g = Graph("g")
    g.add_input("x", ROW)
    g.add_state("s", ROW)
    g.add_constant("w", np.ones(4, np.float32))
    return g


class Model:
    """A graph and, beside it, the nodes in key order as the operations put them."""

    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.keyed = [n.id for n in graph.nodes()]

    def sync(self, inserted_before: str | None = None, new_id: str | None = None) -> None:
        """Survivors keep their place; a node inserted ``before`` another goes there, any
        other new node goes last."""
        present = _node_ids(self.g)
        keyed = [nid for nid in self.keyed if nid in present]
        for nid in [nid for nid in present if nid not in set(keyed)]:
            if nid == new_id and inserted_before in keyed:
                keyed.insert(keyed.index(inserted_before), nid)
            else:
                keyed.append(nid)
        self.keyed = keyed

    def all_nodes(self) -> dict[str, Node]:
        return {nid: self.g.producer(nid) for nid in self.keyed}

    def expected_order(self) -> list[str] | None:
        """The first ready node in key order, again and again; None on a cycle."""
        nodes = self.all_nodes()
        producer = {o: nid for nid, n in nodes.items() for o in n.outputs}
        done: set[str] = set()
        order: list[str] = []
        while len(order) < len(nodes):
            ready = [
                nid
                for nid in self.keyed
                if nid not in done
                and all(producer.get(v) in done or v not in producer for v in nodes[nid].inputs)
            ]
            if not ready:
                return None
            order.append(ready[0])
            done.add(ready[0])
        return order

    def check(self) -> None:
        """Every use-list and the order agree with a scan of the whole graph."""
        g, nodes = self.g, self.all_nodes()
        for value in g.values():
            producers = [nid for nid, n in nodes.items() if value in n.outputs]
            assert (g.producer(value) is None) == (not producers)
            if producers:
                assert g.producer(value).id == producers[0] and len(producers) == 1
            users = [nid for nid in self.keyed if value in nodes[nid].inputs]
            assert [n.id for n in g.users(value)] == users
            assert g.has_users(value) == bool(users)
            fed = [s for s in g.states if s.next == value]
            assert g.states_fed_by(value) == fed
            assert g.uses_outside_nodes(value) == (bool(fed) or value in g.outputs)
            assert g.is_used(value) == bool(users or fed or value in g.outputs)
        for value in ("s", "x", "nope"):
            assert g.is_state(value) == any(s.name == value for s in g.states)
        expected = self.expected_order()
        if expected is None:
            with pytest.raises(VerifyError, match="has a cycle"):
                g.nodes()
        else:
            assert [n.id for n in g.nodes()] == expected
        for hint in ("add", "relu", "x"):
            name = g.fresh(hint)
            assert not g.has_value(name)
            taken = [f"{hint}_{i}" for i in range(1, 200) if g.has_value(f"{hint}_{i}")]
            if name != hint:
                i = int(name.rsplit("_", 1)[1])
                assert g.has_value(hint) and all(f"{hint}_{j}" in taken for j in range(1, i))


def _node_ids(g: Graph) -> list[str]:
    """The ids of the nodes, in the order their names were claimed (no order needed)."""
    return [v for v in g.values() if g.producer(v) is not None and g.producer(v).id == v]


def _row_values(g: Graph) -> list[str]:
    return [v for v, t in g.values().items() if t == ROW]


@st.composite
def _edit(draw, model: Model) -> None:
    """Apply one random edit to ``model.g``; errors the graph must raise are checked."""
    g = model.g
    values = _row_values(g)
    nodes = [g.producer(nid) for nid in _node_ids(g)]
    kind = draw(
        st.sampled_from(
            ["add", "add", "insert", "remove", "rewrite", "replace", "take", "next", "out", "dead"]
        )
        if nodes
        else st.just("add")
    )
    if kind in ("add", "insert"):
        op = draw(st.sampled_from([Add(), Mul(), Neg(), Relu()]))
        arity = 1 if isinstance(op, Neg | Relu) else 2
        constants = list(g.constants) if arity == 2 else []
        inputs = [draw(st.sampled_from([*values, *constants]))]
        inputs += [draw(st.sampled_from(values)) for _ in range(arity - 1)]
        before = draw(st.sampled_from(nodes)) if kind == "insert" else None
        (out,) = g.add_node(op, inputs, before=before)
        model.sync(before.id if before else None, out)
    elif kind == "remove":
        node = draw(st.sampled_from(nodes))
        if any(g.is_used(o) for o in node.outputs):
            with pytest.raises(VerifyError, match="still used"):
                g.remove_node(node)
        else:
            g.remove_node(node)
        model.sync()
    elif kind == "rewrite":
        node = draw(st.sampled_from(nodes))
        op = draw(st.sampled_from([Add(), Mul()]))
        g.rewrite_node(node, op, [draw(st.sampled_from(values)) for _ in range(2)])
        model.sync()
    elif kind == "replace":
        g.replace_uses(draw(st.sampled_from(values)), draw(st.sampled_from(values)))
        model.sync()
    elif kind == "take":
        old = draw(st.sampled_from([n for n in nodes if len(n.outputs) == 1]))
        if model.expected_order() is None:
            return
        (new,) = g.add_node(Relu(), [draw(st.sampled_from(["x", "s"]))])
        take_place(g, (old.id,), g.producer(new))
        model.keyed.remove(old.id)  # the node under the old name is a new one, added last
        erase_unused(g, old.inputs)
        model.sync()
    elif kind == "next":
        g.set_next("s", draw(st.sampled_from(values)))
    elif kind == "out":
        g.outputs.append(draw(st.sampled_from(values)))
    elif kind == "dead" and model.expected_order() is not None:
        if draw(st.booleans()):
            g.remove_dead()
            model.sync()
        else:
            model.g = g.copy()
            assert model.g == g
            model.keyed = [n.id for n in g.nodes()]


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_use_lists_match_a_brute_force_scan_through_random_edits(data):
    model = Model(_graph())
    for _ in range(data.draw(st.integers(1, 30))):
        data.draw(_edit(model))
        model.check()


# --------------------------------------------------------------------------- structure


def _chain() -> tuple[Graph, list[str]]:
    """x -> relu a -> neg b -> add c(b, a) -> output c; state s takes b."""
    g = _graph()
    (a,) = g.add_node(Relu(), ["x"], "a")
    (b,) = g.add_node(Neg(), [a], "b")
    (c,) = g.add_node(Add(), [b, a], "c")
    g.set_next("s", b)
    g.outputs.append(c)
    return g, [a, b, c]


def test_users_and_producer_after_building():
    g, (a, b, c) = _chain()
    assert [n.id for n in g.users(a)] == [b, c]
    assert [n.id for n in g.users(b)] == [c]
    assert g.users(c) == [] and g.is_used(c)
    assert g.producer(b).op == Neg() and g.producer("x") is None
    assert g.states_fed_by(b) == [g.state("s")] and g.states_fed_by(a) == []


def test_a_node_using_a_value_twice_is_one_user_and_stays_until_it_goes():
    g, (a, _, _) = _chain()
    (d,) = g.add_node(Mul(), [a, a], "d")
    assert [n.id for n in g.users(a)].count(d) == 1
    g.remove_node(g.producer(d))
    assert d not in [n.id for n in g.users(a)] and not g.has_value(d)


def test_remove_refuses_a_used_result_and_forgets_the_erased_uses():
    g, (a, b, c) = _chain()
    with pytest.raises(VerifyError, match="still used"):
        g.remove_node(g.producer(b))
    g.outputs.remove(c)
    g.remove_node(g.producer(c))
    assert [n.id for n in g.users(a)] == [b] and g.users(b) == []


def test_replace_uses_moves_operands_outputs_and_state_nexts():
    g, (a, b, c) = _chain()
    (r,) = g.add_node(Relu(), ["x"], "r")
    g.replace_uses(b, r)
    assert g.users(b) == [] and not g.is_used(b)
    assert [n.id for n in g.users(r)] == [c]
    assert g.producer(c).inputs == (r, a)
    assert g.state("s").next == r and g.states_fed_by(r) == [g.state("s")]
    g.replace_uses(c, a)
    assert g.outputs == [a]


def test_rewrite_node_keeps_names_and_place_and_moves_uses():
    g, (a, b, c) = _chain()
    g.rewrite_node(g.producer(c), Mul(), ["x", "x"])
    assert g.producer(c).op == Mul() and g.producer(c).inputs == ("x", "x")
    assert [n.id for n in g.users(a)] == [b] and [n.id for n in g.users("x")] == [a, c]
    with pytest.raises(VerifyError, match="change the types"):
        g.rewrite_node(g.producer(c), Relu(), ["w"])


def test_insert_before_takes_the_place_of_the_node_named():
    g, (a, b, c) = _chain()
    (early,) = g.add_node(Relu(), ["x"], "early", before=g.producer(a))
    (mid,) = g.add_node(Relu(), [a], "mid", before=g.producer(b))
    (mid2,) = g.add_node(Relu(), [mid], "mid2", before=g.producer(b))
    (last,) = g.add_node(Relu(), ["x"], "last")
    assert [n.id for n in g.nodes()] == [early, a, mid, mid2, b, c, last]
    assert [n.id for n in g.copy().nodes()] == [early, a, mid, mid2, b, c, last]


def test_order_puts_an_appended_node_as_early_as_its_operands_allow_by_key():
    g, (a, b, c) = _chain()
    g.outputs.clear()
    g.outputs.append(a)
    g.set_next("s", a)
    (r,) = g.add_node(Relu(), ["x"], "r")
    (u,) = g.add_node(Add(), [r, a], "u")
    assert [n.id for n in g.nodes()] == [a, b, c, r, u]
    g.rewrite_node(g.producer(b), Neg(), [u])
    assert [n.id for n in g.nodes()] == [a, r, u, b, c]


def test_a_cycle_is_refused_by_nodes_and_verify():
    g, (a, b, c) = _chain()
    g.replace_uses("x", c)
    with pytest.raises(VerifyError, match="has a cycle"):
        list(g.nodes())
    with pytest.raises(VerifyError, match="has a cycle"):
        g.verify()


def test_take_place_renames_with_every_use_moved():
    g, (a, b, c) = _chain()
    (new,) = g.add_node(Relu(), ["x"])
    take_place(g, (b,), g.producer(new))
    assert not g.has_value(new)
    assert g.producer(b).op == Relu() and g.producer(b).inputs == ("x",)
    assert [n.id for n in g.users(b)] == [c] and g.state("s").next == b
    assert [n.id for n in g.users(a)] == [c]


def test_remove_constant_and_reorder_constants():
    g, _ = _chain()
    g.add_constant("k", np.zeros(4, np.float32))
    (d,) = g.add_node(Add(), ["x", "k"], "d")
    with pytest.raises(VerifyError, match="still used"):
        g.remove_constant("k")
    g.remove_node(g.producer(d))
    g.reorder_constants(["k", "w"])
    assert list(g.constants) == ["k", "w"]
    with pytest.raises(VerifyError, match="other ones"):
        g.reorder_constants(["k"])
    g.remove_constant("k")
    assert not g.has_value("k") and list(g.constants) == ["w"]


def test_fresh_names_reuse_the_smallest_released_one():
    g = _graph()
    names = [g.add_node(Relu(), ["x"])[0] for _ in range(5)]
    assert names == ["relu", "relu_1", "relu_2", "relu_3", "relu_4"]
    g.remove_node(g.producer("relu_3"))
    g.remove_node(g.producer("relu_1"))
    assert [g.add_node(Relu(), ["x"])[0] for _ in range(3)] == ["relu_1", "relu_3", "relu_5"]
    g.add_input("relu_6", ROW)
    assert g.fresh("relu") == "relu_7"
    for odd in ("relu_0", "relu_01"):
        g.add_node(Relu(), ["x"], odd)
        g.remove_node(g.producer(odd))
    assert g.fresh("relu") == "relu_7"


def test_states_cannot_be_replaced_wholesale():
    g, _ = _chain()
    with pytest.raises(AttributeError):
        g.states = []  # type: ignore[misc]
