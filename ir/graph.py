"""The step graph: one timestep of a network, with its state edges and use-lists.

A :class:`Graph` describes ``step(x_t, states_{t-1}) -> (outputs_t, states_t)``. The time
loop around it is implicit and the same for every model (SPEC §1): states start at zero,
and at the end of each step every state takes the value named by its ``next``.

Values live in one namespace: sequence inputs, states, constants (kept as NumPy arrays)
and node results. Passes use only this class's methods.

The graph keeps use-lists (as xDSL's ``SSAValue.uses`` and MLIR do): the producer and the
users of a value, and the states a value feeds, are found in O(1), and every mutation
keeps them right, so a rewrite costs time in what it touches, not in the graph. Nodes
carry a position key; :meth:`Graph.nodes` is the topological order that takes, among the
nodes ready, the one with the smallest key (appended nodes go last, nodes inserted
``before`` another take its place), computed once and kept until the edges change. The
use-lists are the graph's edges, so no second graph library holds them again.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from snuc.ir.errors import UNKNOWN, Loc, VerifyError
from snuc.ir.ops import Op
from snuc.ir.types import TensorType

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_BAD_CHARS = re.compile(r"[^A-Za-z0-9_.]+")
_NUMBERED = re.compile(r"(.+)_([0-9]+)")


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


Key = tuple[int, ...]
"""A node's position key: nodes ready at the same time are ordered by it."""


class _FreshNames:
    """The smallest unused ``base_i`` for each base, without scanning the taken ones again.

    For every base asked about, all of ``base_1 .. base_{next-1}`` were taken when last
    looked at; names of that form released since are kept in a heap. The smallest free
    name is then the smallest released one still free, or the first free one from
    ``next`` on, so asking costs O(log n) amortised where a scan from 1 costs O(n).
    """

    def __init__(self) -> None:
        self._next: dict[str, int] = {}
        self._released: dict[str, list[int]] = {}

    def smallest_free(self, base: str, taken: dict[str, object]) -> str:
        """The smallest ``base_i``, i >= 1, not in ``taken``."""
        released = self._released.get(base, [])
        while released and f"{base}_{released[0]}" in taken:
            heapq.heappop(released)
        if released:
            return f"{base}_{released[0]}"
        i = self._next.get(base, 1)
        while f"{base}_{i}" in taken:
            i += 1
        self._next[base] = i
        return f"{base}_{i}"

    def release(self, name: str) -> None:
        """Note that ``name`` is free again."""
        numbered = _NUMBERED.fullmatch(name)
        if numbered is None:
            return
        base, i = numbered.group(1), int(numbered.group(2))
        if numbered.group(2) != str(i) or i < 1:
            return  # base_0 or base_01: never a name fresh() gives
        if i < self._next.get(base, 1):
            heapq.heappush(self._released.setdefault(base, []), i)


class Graph:
    """One timestep of a network with its loop-carried states. See the module docstring."""

    def __init__(self, name: str = "model") -> None:
        self.name = sanitize_name(name)
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.constants: dict[str, np.ndarray] = {}
        self._states: list[State] = []
        self._state_index: dict[str, int] = {}
        self._feeds: dict[str, dict[str, None]] = {}  # value -> states whose next it is
        self._types: dict[str, TensorType] = {}
        self._nodes: dict[str, Node] = {}
        self._key: dict[str, Key] = {}
        self._producer: dict[str, str] = {}
        self._users: dict[str, dict[str, None]] = {}  # value -> ids of nodes using it
        self._sorted: list[str] | None = None  # node ids in order; None: to recompute
        self._counter = 0
        self._names = _FreshNames()

    @property
    def states(self) -> list[State]:
        """The states in declaration order (read-only: use add_state and set_next)."""
        return self._states

    # ------------------------------------------------------------------ naming

    def fresh(self, hint: str = "v") -> str:
        """An unused value name derived from ``hint``: the one naming function of the IR.

        ``hint`` itself when free, else the smallest free ``hint_1``, ``hint_2``, ...
        """
        base = sanitize_name(hint)
        if base not in self._types:
            return base
        return self._names.smallest_free(base, self._types)

    def _claim(self, name: str, type_: TensorType, loc: Loc) -> None:
        if not is_valid_name(name):
            raise VerifyError(f"{loc.prefix()}illegal value name {name!r}")
        if name in self._types:
            raise VerifyError(f"{loc.prefix()}value %{name} is defined twice")
        self._types[name] = type_

    def _release(self, name: str) -> None:
        """Forget the value ``name`` (no node, state or output may use it any more)."""
        del self._types[name]
        self._users.pop(name, None)
        self._names.release(name)

    # ------------------------------------------------------------------ building

    def add_input(self, name: str, type_: TensorType, loc: Loc = UNKNOWN) -> str:
        """Declare a sequence input (one timestep of it)."""
        self._claim(name, type_, loc)
        self.inputs.append(name)
        return name

    def add_state(self, name: str, type_: TensorType, loc: Loc = UNKNOWN) -> str:
        """Declare a state input; call :meth:`set_next` once its new value exists."""
        self._claim(name, type_, loc)
        self._state_index[name] = len(self._states)
        self._states.append(State(name, ""))
        return name

    def set_next(self, state: str, value: str) -> None:
        """Make ``value`` the state's value for the next timestep."""
        i = self._state_index.get(state)
        if i is None:
            raise VerifyError(f"%{state} is not a state")
        self._feed(i, value)

    def _feed(self, i: int, value: str) -> None:
        """Set state ``i``'s next value to ``value``, keeping the index of what feeds states."""
        old = self._states[i]
        if old.next:
            feeds = self._feeds[old.next]
            del feeds[old.name]
            if not feeds:
                del self._feeds[old.next]
        self._states[i] = State(old.name, value)
        if value:
            self._feeds.setdefault(value, {})[old.name] = None

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
        *,
        before: Node | None = None,
    ) -> tuple[str, ...]:
        """Add ``op(inputs)``; result types are inferred. Returns the result names.

        Args:
            op: the operation.
            inputs: operand value names.
            outputs: the result names (hints are made unique only when omitted).
            loc: where the node comes from.
            before: a node of the graph to insert the new node just before, in the order
                of :meth:`nodes` (as far as the dependencies allow); None appends it.
        """
        inputs = tuple(inputs)
        for v in inputs:
            if v not in self._types:
                raise VerifyError(f"{loc.prefix()}{op.NAME} uses undefined value %{v}")
        types = self._infer(op, inputs, loc)
        if outputs is None:
            outputs = self._claim_fresh(op.NAME.split(".")[-1], types, loc)
        else:
            outputs = (outputs,) if isinstance(outputs, str) else tuple(outputs)
            if len(outputs) != len(types):
                raise VerifyError(
                    f"{loc.prefix()}{op.NAME} has {len(types)} results, got {len(outputs)} names"
                )
            for name, t in zip(outputs, types, strict=True):
                self._claim(name, t, loc)
        node = Node(op, inputs, outputs, loc)
        self._nodes[node.id] = node
        self._key[node.id] = self._next_key(before)
        for o in outputs:
            self._producer[o] = node.id
        self._use(node.id, inputs)
        self._sorted = None
        return outputs

    def _infer(self, op: Op, inputs: tuple[str, ...], loc: Loc) -> tuple[TensorType, ...]:
        """The result types of ``op`` applied to the values ``inputs``."""
        op.check_arity(len(inputs), loc)
        return op.infer(
            tuple(self._types[v] for v in inputs),
            tuple(self.constants.get(v) for v in inputs),
            loc,
        )

    def _claim_fresh(self, hint: str, types: tuple[TensorType, ...], loc: Loc) -> tuple[str, ...]:
        """Claim a fresh name from ``hint`` for each of ``types``, in order."""
        names = []
        for t in types:
            names.append(self.fresh(hint))
            self._claim(names[-1], t, loc)
        return tuple(names)

    def _next_key(self, before: Node | None) -> Key:
        """A key after every other (append), or just below ``before``'s key."""
        self._counter += 1
        if before is None:
            return (self._counter,)
        if self._nodes.get(before.id) is None:
            raise VerifyError(f"%{before.id} is not a node of graph @{self.name}")
        # (..., k - 1) < (..., k - 1, c) < (..., k): the counter c is larger than any
        # used before, so the new node also follows earlier insertions before this one.
        key = self._key[before.id]
        return (*key[:-1], key[-1] - 1, self._counter)

    def _use(self, node_id: str, inputs: Iterable[str]) -> None:
        for v in inputs:
            self._users.setdefault(v, {})[node_id] = None

    def _unuse(self, node_id: str, inputs: Iterable[str]) -> None:
        for v in inputs:
            users = self._users.get(v)
            if users is not None:
                users.pop(node_id, None)

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
        return value in self._state_index

    def state(self, name: str) -> State:
        i = self._state_index.get(name)
        if i is None:
            raise VerifyError(f"%{name} is not a state")
        return self._states[i]

    def states_fed_by(self, value: str) -> list[State]:
        """The states whose next value is ``value``, in declaration order."""
        names = self._feeds.get(value, {})
        return sorted((self.state(n) for n in names), key=lambda s: self._state_index[s.name])

    def producer(self, value: str) -> Node | None:
        """The node computing ``value``; None for inputs, states and constants."""
        nid = self._producer.get(value)
        return None if nid is None else self._nodes[nid]

    def users(self, value: str) -> list[Node]:
        """Nodes that take ``value`` as an operand, each once, in the order of their keys."""
        ids = self._users.get(value)
        if not ids:
            return []
        return [self._nodes[i] for i in sorted(ids, key=self._key.__getitem__)]

    def has_users(self, value: str) -> bool:
        """Whether some node takes ``value`` as an operand."""
        return bool(self._users.get(value))

    def uses_outside_nodes(self, value: str) -> bool:
        """Whether ``value`` is a graph output or some state's next value.

        Outputs are a plain list that callers append to, so this is linear in the
        outputs (a model has few); states are indexed.
        """
        return value in self._feeds or value in self.outputs

    def is_used(self, value: str) -> bool:
        """Whether a node, an output or a state uses ``value``."""
        return self.has_users(value) or self.uses_outside_nodes(value)

    def nodes(self) -> Iterator[Node]:
        """Nodes in a deterministic topological order: of the nodes whose operands are all
        computed, the one with the smallest key comes first.

        Raises:
            VerifyError: the graph has a cycle.
        """
        return iter([self._nodes[nid] for nid in self._order()])

    def _order(self) -> list[str]:
        """Node ids in the order of :meth:`nodes`, computed when the edges changed."""
        if self._sorted is not None:
            return self._sorted
        waiting: dict[str, int] = {}
        ready: list[tuple[Key, str]] = []
        for nid, node in self._nodes.items():
            preds = {self._producer[v] for v in node.inputs if v in self._producer}
            if preds:
                waiting[nid] = len(preds)
            else:
                ready.append((self._key[nid], nid))
        heapq.heapify(ready)
        order = []
        while ready:
            _, nid = heapq.heappop(ready)
            order.append(nid)
            for succ in self._successors(nid):
                waiting[succ] -= 1
                if waiting[succ] == 0:
                    del waiting[succ]
                    heapq.heappush(ready, (self._key[succ], succ))
        if waiting:
            raise VerifyError(f"graph @{self.name} has a cycle")
        self._sorted = order
        return order

    def _successors(self, node_id: str) -> dict[str, None]:
        """The distinct nodes using a result of ``node_id``."""
        return {user: None for o in self._nodes[node_id].outputs for user in self._users.get(o, ())}

    def __len__(self) -> int:
        return len(self._nodes)

    def values(self) -> dict[str, TensorType]:
        """Every value's type, by name."""
        return dict(self._types)

    # ------------------------------------------------------------------ rewriting

    def remove_node(self, node: Node) -> None:
        """Remove ``node``; its results must no longer be used."""
        for o in node.outputs:
            if self.is_used(o):
                raise VerifyError(f"cannot remove {node.op.NAME} %{o}: its result is still used")
        self._erase(self._nodes[node.id])

    def _erase(self, node: Node) -> None:
        """Remove ``node`` and its results, whose uses are the caller's business."""
        self._unuse(node.id, node.inputs)
        for o in node.outputs:
            del self._producer[o]
            self._release(o)
        del self._nodes[node.id]
        del self._key[node.id]
        self._sorted = None

    def remove_constant(self, name: str) -> None:
        """Remove the constant ``name``; nothing may use it any more."""
        if name not in self.constants:
            raise VerifyError(f"@{name} is not a constant of graph @{self.name}")
        if self.is_used(name):
            raise VerifyError(f"cannot remove constant @{name}: it is still used")
        del self.constants[name]
        self._release(name)

    def reorder_constants(self, names: Iterable[str]) -> None:
        """Put the constants in the order of ``names``, which must name each one once."""
        names = list(names)
        if sorted(names) != sorted(self.constants):
            raise VerifyError(f"the new order of graph @{self.name}'s constants names other ones")
        self.constants = {name: self.constants[name] for name in names}

    def replace_op(self, node: Node, op: Op) -> Node:
        """Give ``node`` a new op of the same result types (e.g. new attributes)."""
        current = self._nodes.get(node.id)
        if current is None:
            raise VerifyError(f"%{node.id} is not a node of graph @{self.name}")
        return self.rewrite_node(current, op, current.inputs)

    def rewrite_node(self, node: Node, op: Op, inputs: Iterable[str]) -> Node:
        """Make ``node`` compute ``op(inputs)`` in its place, with its names and loc.

        The new computation must give the results the same types.
        """
        current = self._nodes.get(node.id)
        if current is None:
            raise VerifyError(f"%{node.id} is not a node of graph @{self.name}")
        inputs = tuple(inputs)
        for v in inputs:
            if v not in self._types:
                raise VerifyError(f"{current.loc.prefix()}{op.NAME} uses undefined value %{v}")
        types = self._infer(op, inputs, current.loc)
        if types != tuple(self._types[o] for o in current.outputs):
            raise VerifyError(
                f"{current.loc.prefix()}{op.NAME} would change the types of %{node.id}"
            )
        updated = Node(op, inputs, current.outputs, current.loc)
        self._nodes[node.id] = updated
        if inputs != current.inputs:
            self._unuse(node.id, current.inputs)
            self._use(node.id, inputs)
            self._sorted = None
        return updated

    def replace_uses(self, old: str, new: str) -> None:
        """Make every use of ``old`` (operands, outputs, state nexts) use ``new``."""
        if self._types[old] != self._types[new]:
            raise VerifyError(
                f"cannot replace %{old}: {self._types[old]} by %{new}: {self._types[new]}"
            )
        if old == new:
            return
        for nid in self._users.pop(old, {}):
            node = self._nodes[nid]
            inputs = tuple(new if v == old else v for v in node.inputs)
            self._nodes[nid] = Node(node.op, inputs, node.outputs, node.loc)
            self._users.setdefault(new, {})[nid] = None
        self._sorted = None
        if old in self.outputs:
            self.outputs = [new if v == old else v for v in self.outputs]
        for name in list(self._feeds.get(old, ())):
            self._feed(self._state_index[name], new)

    def remove_dead(self) -> None:
        """Drop nodes and constants that nothing (outputs, states, live nodes) depends on."""
        live: set[str] = set(self.outputs) | set(self._feeds)
        for node in reversed(list(self.nodes())):
            if any(o in live for o in node.outputs):
                live.update(node.inputs)
            else:
                self._erase(node)
        for name in [c for c in self.constants if c not in live]:
            del self.constants[name]
            self._release(name)

    def copy(self) -> Graph:
        """A copy sharing the (read-only) constant arrays and the (immutable) nodes.

        The copy's keys follow this graph's node order, so both order their nodes alike
        and later insertions and appends order the same way in both.
        """
        order = self._order()
        g = Graph(self.name)
        g.inputs = list(self.inputs)
        g.outputs = list(self.outputs)
        g.constants = dict(self.constants)
        g._states = list(self._states)
        g._state_index = dict(self._state_index)
        g._feeds = {value: dict(states) for value, states in self._feeds.items()}
        # Values in the order a graph built afresh would claim them.
        names = [*self.constants, *self.inputs, *(s.name for s in self._states)]
        names += [o for nid in order for o in self._nodes[nid].outputs]
        g._types = {name: self._types[name] for name in names}
        for position, nid in enumerate(order, start=1):
            g._nodes[nid] = self._nodes[nid]
            g._key[nid] = (position,)
        g._counter = len(order)
        g._producer = dict(self._producer)
        g._users = {value: dict(users) for value, users in self._users.items() if users}
        g._sorted = list(order)
        return g

    # ------------------------------------------------------------------ checking

    def verify(self) -> None:
        """Check every invariant; raise VerifyError naming the first broken one."""
        if not self.inputs:
            raise VerifyError(f"graph @{self.name} has no sequence input")
        if not self.outputs:
            raise VerifyError(f"graph @{self.name} has no output")
        for node in self.nodes():  # raises on a cycle
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
            and self._states == other._states
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
