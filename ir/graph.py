"""The step graph: one timestep of a network, with its state edges, over networkx.

A :class:`Graph` describes ``step(x_t, states_{t-1}) -> (outputs_t, states_t)``. The time
loop around it is implicit and the same for every model (SPEC §1): states start at zero,
and at the end of each step every state takes the value named by its ``next``.

Values live in one namespace: sequence inputs, states, constants (kept as NumPy arrays)
and node results. Passes use only this class's methods; networkx stays inside it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import networkx as nx
import numpy as np

from snuc.ir.errors import UNKNOWN, Loc, VerifyError
from snuc.ir.ops import Op
from snuc.ir.types import TensorType

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_BAD_CHARS = re.compile(r"[^A-Za-z0-9_.]+")


def sanitize_name(hint: str) -> str:
    """A legal IR identifier derived from ``hint`` (``/fc1/MatMul:0`` -> ``fc1_MatMul_0``)."""
    name = _BAD_CHARS.sub("_", hint).strip("_.") or "v"
    if not _NAME_RE.fullmatch(name):
        name = "v" + name if name[0].isdigit() else "v_" + name
    return name


def is_valid_name(name: str) -> bool:
    return _NAME_RE.fullmatch(name) is not None


@dataclass(frozen=True)
class Node:
    """One op applied to named values, producing named values.

    Attributes:
        op: the operation with its attributes.
        inputs: operand value names.
        outputs: result value names (the first is the node's id).
        loc: where the node came from.
    """

    op: Op
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    loc: Loc = UNKNOWN

    @property
    def id(self) -> str:
        return self.outputs[0]


@dataclass(frozen=True)
class State:
    """A loop-carried value: ``name`` holds the previous step's ``next`` (zeros at t=0)."""

    name: str
    next: str


class Graph:
    """One timestep of a network with its loop-carried states. See the module docstring."""

    def __init__(self, name: str = "model") -> None:
        self.name = sanitize_name(name)
        self.inputs: list[str] = []
        self.states: list[State] = []
        self.outputs: list[str] = []
        self.constants: dict[str, np.ndarray] = {}
        self._types: dict[str, TensorType] = {}
        self._nodes: dict[str, Node] = {}
        self._order: dict[str, int] = {}
        self._producer: dict[str, str] = {}
        self._dag = nx.DiGraph()
        self._counter = 0

    # ------------------------------------------------------------------ naming

    def fresh(self, hint: str = "v") -> str:
        """An unused value name derived from ``hint``: the one naming function of the IR."""
        base = sanitize_name(hint)
        if base not in self._types:
            return base
        i = 1
        while f"{base}_{i}" in self._types:
            i += 1
        return f"{base}_{i}"

    def _claim(self, name: str, type_: TensorType, loc: Loc) -> None:
        if not is_valid_name(name):
            raise VerifyError(f"{loc.prefix()}illegal value name {name!r}")
        if name in self._types:
            raise VerifyError(f"{loc.prefix()}value %{name} is defined twice")
        self._types[name] = type_

    # ------------------------------------------------------------------ building

    def add_input(self, name: str, type_: TensorType, loc: Loc = UNKNOWN) -> str:
        """Declare a sequence input (one timestep of it)."""
        self._claim(name, type_, loc)
        self.inputs.append(name)
        return name

    def add_state(self, name: str, type_: TensorType, loc: Loc = UNKNOWN) -> str:
        """Declare a state input; call :meth:`set_next` once its new value exists."""
        self._claim(name, type_, loc)
        self.states.append(State(name, ""))
        return name

    def set_next(self, state: str, value: str) -> None:
        """Make ``value`` the state's value for the next timestep."""
        for i, s in enumerate(self.states):
            if s.name == state:
                self.states[i] = State(state, value)
                return
        raise VerifyError(f"%{state} is not a state")

    def add_constant(
        self, name: str, array: np.ndarray, loc: Loc = UNKNOWN, *, copy: bool = True
    ) -> str:
        """Add a constant, frozen read-only.

        ``copy=False`` hands the array over without a copy (the caller must not write to
        it afterwards): large models would otherwise hold every weight twice.
        """
        array = np.array(array, copy=True) if copy else np.asarray(array)
        array.setflags(write=False)
        self._claim(name, TensorType.of(array), loc)
        self.constants[name] = array
        return name

    def add_node(
        self,
        op: Op,
        inputs: Iterable[str],
        outputs: Iterable[str] | str | None = None,
        loc: Loc = UNKNOWN,
    ) -> tuple[str, ...]:
        """Append ``op(inputs)``; result types are inferred. Returns the result names.

        ``outputs`` gives the result names (hints are made unique only when omitted).
        """
        inputs = tuple(inputs)
        for v in inputs:
            if v not in self._types:
                raise VerifyError(f"{loc.prefix()}{op.NAME} uses undefined value %{v}")
        op.check_arity(len(inputs), loc)
        types = op.infer(
            tuple(self._types[v] for v in inputs),
            tuple(self.constants.get(v) for v in inputs),
            loc,
        )
        if outputs is None:
            hint = op.NAME.split(".")[-1]
            outputs = []
            for _ in types:
                outputs.append(self.fresh(hint))
                self._types[outputs[-1]] = types[0]  # reserve the name for the next fresh()
            for o in outputs:
                del self._types[o]
        elif isinstance(outputs, str):
            outputs = (outputs,)
        outputs = tuple(outputs)
        if len(outputs) != len(types):
            raise VerifyError(
                f"{loc.prefix()}{op.NAME} has {len(types)} results, got {len(outputs)} names"
            )
        for name, t in zip(outputs, types, strict=True):
            self._claim(name, t, loc)
        node = Node(op, inputs, outputs, loc)
        self._nodes[node.id] = node
        self._order[node.id] = self._counter
        self._counter += 1
        self._dag.add_node(node.id)
        for o in outputs:
            self._producer[o] = node.id
        self._link(node.id, inputs)
        return outputs

    # ------------------------------------------------------------------ queries

    def type_of(self, value: str) -> TensorType:
        try:
            return self._types[value]
        except KeyError:
            raise VerifyError(f"undefined value %{value}") from None

    def has_value(self, value: str) -> bool:
        return value in self._types

    def is_constant(self, value: str) -> bool:
        return value in self.constants

    def is_state(self, value: str) -> bool:
        return any(s.name == value for s in self.states)

    def state(self, name: str) -> State:
        for s in self.states:
            if s.name == name:
                return s
        raise VerifyError(f"%{name} is not a state")

    def producer(self, value: str) -> Node | None:
        """The node computing ``value``; None for inputs, states and constants."""
        nid = self._producer.get(value)
        return None if nid is None else self._nodes[nid]

    def users(self, value: str) -> list[Node]:
        """Nodes that take ``value`` as an operand, in graph order."""
        return [n for n in self.nodes() if value in n.inputs]

    def uses_outside_nodes(self, value: str) -> bool:
        """Whether ``value`` is a graph output or some state's next value."""
        return value in self.outputs or any(s.next == value for s in self.states)

    def nodes(self) -> Iterator[Node]:
        """Nodes in a deterministic topological order (ties broken by insertion order)."""
        for nid in nx.lexicographical_topological_sort(self._dag, key=self._order.__getitem__):
            yield self._nodes[nid]

    def __len__(self) -> int:
        return len(self._nodes)

    def values(self) -> dict[str, TensorType]:
        """Every value's type, by name."""
        return dict(self._types)

    # ------------------------------------------------------------------ rewriting

    def remove_node(self, node: Node) -> None:
        """Remove ``node``; its results must no longer be used."""
        for o in node.outputs:
            if self.users(o) or self.uses_outside_nodes(o):
                raise VerifyError(f"cannot remove {node.op.NAME} %{o}: its result is still used")
        for o in node.outputs:
            del self._types[o]
            del self._producer[o]
        del self._nodes[node.id]
        del self._order[node.id]
        self._dag.remove_node(node.id)

    def replace_op(self, node: Node, op: Op) -> Node:
        """Give ``node`` a new op of the same result types (e.g. new attributes)."""
        current = self._nodes.get(node.id)
        if current is None:
            raise VerifyError(f"%{node.id} is not a node of graph @{self.name}")
        types = op.infer(
            tuple(self._types[v] for v in current.inputs),
            tuple(self.constants.get(v) for v in current.inputs),
            current.loc,
        )
        if types != tuple(self._types[o] for o in current.outputs):
            raise VerifyError(
                f"{current.loc.prefix()}{op.NAME} would change the types of %{node.id}"
            )
        updated = Node(op, current.inputs, current.outputs, current.loc)
        self._nodes[node.id] = updated
        return updated

    def replace_uses(self, old: str, new: str) -> None:
        """Make every use of ``old`` (operands, outputs, state nexts) use ``new``."""
        if self._types[old] != self._types[new]:
            raise VerifyError(
                f"cannot replace %{old}: {self._types[old]} by %{new}: {self._types[new]}"
            )
        for node in list(self._nodes.values()):
            if old in node.inputs:
                inputs = tuple(new if v == old else v for v in node.inputs)
                self._nodes[node.id] = Node(node.op, inputs, node.outputs, node.loc)
                self._link(node.id, inputs)
        self.outputs = [new if v == old else v for v in self.outputs]
        self.states = [State(s.name, new if s.next == old else s.next) for s in self.states]

    def _link(self, node_id: str, inputs: tuple[str, ...]) -> None:
        """Set the node's incoming dependency edges to the producers of ``inputs``."""
        self._dag.remove_edges_from(list(self._dag.in_edges(node_id)))
        self._dag.add_edges_from(
            (self._producer[v], node_id) for v in inputs if v in self._producer
        )

    def remove_dead(self) -> None:
        """Drop nodes and constants that nothing (outputs, states, live nodes) depends on."""
        live: set[str] = set(self.outputs) | {s.next for s in self.states}
        for node in reversed(list(self.nodes())):
            if any(o in live for o in node.outputs):
                live.update(node.inputs)
            else:
                for o in node.outputs:
                    del self._types[o]
                    del self._producer[o]
                del self._nodes[node.id]
                del self._order[node.id]
                self._dag.remove_node(node.id)
        for name in [c for c in self.constants if c not in live]:
            del self.constants[name]
            del self._types[name]

    def copy(self) -> Graph:
        """A copy sharing the (read-only) constant arrays."""
        g = Graph(self.name)
        for name, arr in self.constants.items():
            g.constants[name] = arr
            g._types[name] = self._types[name]
        for name in self.inputs:
            g.add_input(name, self._types[name])
        for s in self.states:
            g.add_state(s.name, self._types[s.name])
        for node in self.nodes():
            g.add_node(node.op, node.inputs, node.outputs, node.loc)
        g.states = list(self.states)
        g.outputs = list(self.outputs)
        return g

    # ------------------------------------------------------------------ checking

    def verify(self) -> None:
        """Check every invariant; raise VerifyError naming the first broken one."""
        if not self.inputs:
            raise VerifyError(f"graph @{self.name} has no sequence input")
        if not self.outputs:
            raise VerifyError(f"graph @{self.name} has no output")
        if not nx.is_directed_acyclic_graph(self._dag):
            raise VerifyError(f"graph @{self.name} has a cycle")
        for node in self.nodes():
            types = node.op.infer(
                tuple(self._types[v] for v in node.inputs),
                tuple(self.constants.get(v) for v in node.inputs),
                node.loc,
            )
            got = tuple(self._types[o] for o in node.outputs)
            if types != got:
                raise VerifyError(
                    f"{node.loc.prefix()}{node.op.NAME} %{node.id} declares "
                    f"{', '.join(map(str, got))} but computes {', '.join(map(str, types))}"
                )
        for s in self.states:
            if not s.next:
                raise VerifyError(f"state %{s.name} has no next value")
            if s.next not in self._types:
                raise VerifyError(f"state %{s.name} takes undefined value %{s.next}")
            if self._types[s.next] != self._types[s.name]:
                raise VerifyError(
                    f"state %{s.name}: {self._types[s.name]} takes %{s.next}: {self._types[s.next]}"
                )
        for o in self.outputs:
            if o not in self._types:
                raise VerifyError(f"output %{o} is undefined")
        for name, arr in self.constants.items():
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise VerifyError(f"constant @{name} holds NaN or Inf")

    # ------------------------------------------------------------------ equality

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        return (
            self.name == other.name
            and self.inputs == other.inputs
            and self.states == other.states
            and self.outputs == other.outputs
            and self._types == other._types
            and list(self.nodes()) == list(other.nodes())
            and self.constants.keys() == other.constants.keys()
            and all(
                a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
                for a, b in ((self.constants[k], other.constants[k]) for k in self.constants)
            )
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"<Graph @{self.name}: {len(self.inputs)} inputs, {len(self.states)} states, "
            f"{len(self._nodes)} nodes, {len(self.constants)} constants>"
        )
