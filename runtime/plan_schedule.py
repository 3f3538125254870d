"""The NumPy backend's schedule: which work runs for all timesteps at once, and which in order.

A step graph says what one timestep computes; the time loop around it (SPEC §1) is the
same for every model. Running the graph node by node at every step, as the reference
interpreter does, pays Python's per-call cost for every op at every step. Most of a
network's work does not need that: a node that is not on a recurrence through a state can
be computed for all T steps at once, as soon as its operands are known for all T.

The analysis builds the *state-augmented* dependence graph: one vertex per node and per
state; an edge from each value's producer to its users, and one from the producer of a
state's ``next`` to the state itself (the state at step t is ``next`` at t - 1). Its
strongly connected components are the recurrences. In topological order of the
components:

* a component with a cycle is a :class:`Loop`: its nodes run step by step, in graph order,
  and its states carry from one step to the next;
* a single node outside any cycle is :class:`Parallel`: one evaluation over all steps,
  with time folded into the batch (``[T * B, ...]``), or :class:`PerStep` when its values
  cannot fold time into the batch (no batch axis, or the batch not leading);
* a single state outside any cycle is a :class:`Shift`: ``S_0 = 0``, ``S_t = next_{t-1}``.

For a feed-forward SNU stack this is the layer-major schedule: layer 1's product over all
T, layer 1's neuron loop, layer 2's product over all T, and so on. A recurrent layer's
loop holds its recurrent product and its neuron update; its input product stays outside.

Nodes whose operands are all constants are *invariant*: they are computed once. In ``pcm``
mode a crossbar tile (``xbar.mvm``) is never invariant, since read noise makes every read
differ.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from snuc.ir.graph import Graph, Node, State
from snuc.ir.scc import strongly_connected
from snuc.ir.types import BATCH, TensorType


@dataclass(frozen=True)
class Parallel:
    """One node evaluated once for all timesteps, time folded into the leading batch axis."""

    node: Node


@dataclass(frozen=True)
class PerStep:
    """One node outside any recurrence whose values cannot fold time into the batch axis."""

    node: Node


@dataclass(frozen=True)
class Shift:
    """A state outside any recurrence: zeros at step 0, its ``next`` of step t - 1 after."""

    state: State


@dataclass(frozen=True)
class Loop:
    """A recurrence: nodes evaluated step by step in graph order; states carried across steps."""

    nodes: tuple[Node, ...]
    states: tuple[State, ...]


Step = Parallel | PerStep | Shift | Loop


@dataclass(frozen=True)
class Schedule:
    """The order of work of one run.

    Attributes:
        invariant: nodes whose results are the same at every step, in graph order; they
            are computed once, before the run.
        steps: everything else, in an order that respects every dependence.
        varying: the names of the values that change over time (inputs, states and the
            results of every scheduled step).
    """

    invariant: tuple[Node, ...]
    steps: tuple[Step, ...]
    varying: frozenset[str]

    @property
    def loops(self) -> tuple[Loop, ...]:
        return tuple(s for s in self.steps if isinstance(s, Loop))


def schedule(graph: Graph, *, noisy_tiles: bool = False) -> Schedule:
    """Partition ``graph`` into invariant nodes and an ordered list of steps (module docstring).

    Args:
        graph: a verified step graph.
        noisy_tiles: crossbar tiles read with noise (``pcm`` mode), so never invariant.

    Returns:
        The schedule; deterministic for a given graph.
    """
    nodes = list(graph.nodes())
    invariant, varying = _split_invariant(graph, nodes, noisy_tiles)
    vertices, edges = _augmented_graph(graph, nodes, varying)
    components = _strongly_connected(vertices, edges)
    by_id = {node.id: node for node in nodes}
    steps = [
        _step_of(graph, by_id, component, edges, varying)
        for component in _topological(vertices, edges, components)
    ]
    return Schedule(tuple(invariant), tuple(steps), frozenset(varying))


def folds_time(graph: Graph, node: Node, varying: AbstractSet[str]) -> bool:
    """Whether ``node`` can be evaluated once over all steps with time folded into the batch.

    Every operand that varies over time and every result must carry the batch as its
    leading axis, and only there: then ``[T, B, ...]`` read as ``[T * B, ...]`` is a batch
    of T * B independent rows, which every op of the IR treats row by row (none reduces,
    concatenates or normalises over the batch; ``infer`` forbids it).
    """
    values = [v for v in node.inputs if v in varying] + list(node.outputs)
    return all(_batch_leads(graph.type_of(v)) for v in values)


def _batch_leads(type_: TensorType) -> bool:
    return type_.rank >= 1 and type_.shape[0] == BATCH and type_.shape.count(BATCH) == 1


def _split_invariant(
    graph: Graph, nodes: Sequence[Node], noisy_tiles: bool
) -> tuple[list[Node], set[str]]:
    """Nodes computable once (all operands constant or invariant), and the varying values."""
    varying = set(graph.inputs) | {s.name for s in graph.states}
    invariant = []
    for node in nodes:
        noisy = noisy_tiles and node.op.NAME == "xbar.mvm"
        if noisy or any(v in varying for v in node.inputs):
            varying.update(node.outputs)
        else:
            invariant.append(node)
    return invariant, varying


Vertex = tuple[str, str]
"""``("node", node id)`` or ``("state", state name)``."""


def _augmented_graph(
    graph: Graph, nodes: Sequence[Node], varying: set[str]
) -> tuple[list[Vertex], dict[Vertex, list[Vertex]]]:
    """Vertices (varying nodes, then states) and edges of the state-augmented graph."""
    vertex_of: dict[str, Vertex] = {}
    vertices: list[Vertex] = []
    for node in nodes:
        if node.id in varying:
            vertices.append(("node", node.id))
            for out in node.outputs:
                vertex_of[out] = ("node", node.id)
    for s in graph.states:
        vertices.append(("state", s.name))
        vertex_of[s.name] = ("state", s.name)
    edges: dict[Vertex, list[Vertex]] = {v: [] for v in vertices}
    for node in nodes:
        if node.id not in varying:
            continue
        for v in dict.fromkeys(node.inputs):
            if v in vertex_of:
                edges[vertex_of[v]].append(("node", node.id))
    for s in graph.states:
        if s.next in vertex_of:
            edges[vertex_of[s.next]].append(("state", s.name))
    return vertices, edges


def _strongly_connected(
    vertices: Sequence[Vertex], edges: dict[Vertex, list[Vertex]]
) -> list[list[Vertex]]:
    """The strongly connected components of the state-augmented graph
    (:func:`snuc.ir.scc.strongly_connected` on the vertices' positions)."""
    position = {v: i for i, v in enumerate(vertices)}
    succ = [[position[w] for w in edges[v]] for v in vertices]
    return [[vertices[i] for i in comp] for comp in strongly_connected(len(vertices), succ)]


def _topological(
    vertices: Sequence[Vertex],
    edges: dict[Vertex, list[Vertex]],
    components: list[list[Vertex]],
) -> list[list[Vertex]]:
    """Components in dependence order; ties go to the one whose first vertex comes first.

    Vertices are ranked by their position in ``vertices`` (graph order, then states), so
    the schedule follows the graph's own order wherever the dependences leave a choice.
    """
    rank = {v: i for i, v in enumerate(vertices)}
    component_of = {v: c for c, members in enumerate(components) for v in members}
    indegree = [0] * len(components)
    successors: list[set[int]] = [set() for _ in components]
    for v, targets in edges.items():
        for w in targets:
            a, b = component_of[v], component_of[w]
            if a != b and b not in successors[a]:
                successors[a].add(b)
                indegree[b] += 1
    first = [min(rank[v] for v in members) for members in components]
    ready = [(first[c], c) for c in range(len(components)) if indegree[c] == 0]
    heapq.heapify(ready)
    ordered = []
    while ready:
        _, c = heapq.heappop(ready)
        ordered.append(sorted(components[c], key=rank.__getitem__))
        for d in successors[c]:
            indegree[d] -= 1
            if indegree[d] == 0:
                heapq.heappush(ready, (first[d], d))
    return ordered


def _step_of(
    graph: Graph,
    by_id: dict[str, Node],
    component: list[Vertex],
    edges: dict[Vertex, list[Vertex]],
    varying: set[str],
) -> Step:
    """The step that runs one component (its vertices in rank order: graph order)."""
    only = component[0]
    cyclic = len(component) > 1 or only in edges[only]
    if cyclic:
        return Loop(
            nodes=tuple(by_id[name] for kind, name in component if kind == "node"),
            states=tuple(graph.state(name) for kind, name in component if kind == "state"),
        )
    kind, name = only
    if kind == "state":
        return Shift(graph.state(name))
    node = graph.producer(name)
    return Parallel(node) if folds_time(graph, node, varying) else PerStep(node)
