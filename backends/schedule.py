"""Scheduling a graph onto the chip: binding, operations and the modulo schedule (SPEC §4, §7).

:func:`schedule_graph` takes a placed graph (``xbar.mvm`` tiles with crossbars) and

1. binds every node to a unit: a tile to its crossbar's core, digital work to the LDU of
   the core that holds its largest operand (or to a GDU, see
   :data:`~snuc.ir.machine.DIGITAL_OPS`), a tile's read-out to the unit where all its
   users are, if there is one such unit;
2. turns nodes into instructions (:mod:`snuc.ir.machine_isa`): per tile an ``mvm`` on the
   crossbar and an ``adc`` read-out, one vector instruction per digital node, and a
   ``send`` wherever a value is used on another unit than the one that made it (graph
   inputs arrive at, and outputs leave from, GDU 0), each a :class:`Placement` on its unit;
3. modulo-schedules one timestep (:mod:`snuc.backends.modulo`): every instruction gets a
   start cycle such that a new timestep can start every ``ii`` cycles.

The initiation interval ``ii`` starts at the lower bound (the larger of the busiest
resource's work per timestep and the longest recurrence loop) and grows only when no
schedule fits. The result, a :class:`ModuloSchedule`, holds the placed instructions
themselves: :func:`snuc.backends.program.emit_program` writes them into blocks, and the
report reads :meth:`ModuloSchedule.summary`. The ``schedule`` pass
(passes/schedule.py) runs :func:`schedule_graph` to check that a graph can be
scheduled. This module owns the planner (binding and operations) and the schedule's
figures; the machine it schedules on is :mod:`snuc.ir.machine`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from snuc.backends.modulo import ModuloScheduler, Placement
from snuc.ir.crossbar import guaranteed_ranges
from snuc.ir.errors import SnucError
from snuc.ir.graph import Graph, Node
from snuc.ir.machine import CORE, DIGITAL_OPS, GDU, HOST, MNEMONIC_OF, Unit, fixed_ops, mvm_shape
from snuc.ir.machine_isa import (
    Adc,
    Instruction,
    Mvm,
    Send,
    VectorOp,
    busy_cycles,
    energy_pj_per_timestep,
)
from snuc.ir.ops import Add, Conv, CrossbarMVM, Dense, Mul
from snuc.ir.scc import strongly_connected
from snuc.ir.target import DEFAULT_TARGET, TargetSpec, parse_target

__all__ = ["ModuloSchedule", "Placement", "duplication", "schedule_graph"]

# --------------------------------------------------------------------------- digital work


_REDUCTIONS = ("reduce_sum", "reduce_mean")


def digital_mnemonic(graph: Graph, node: Node) -> str:
    """The instruction that runs ``node``.

    ``dig.add`` of crossbar partial sums (directly or through other such adds) is
    ``acc``; ``dig.mul`` by a constant is ``scale``.

    Raises:
        SnucError: no instruction computes the node's op.
    """
    op = node.op
    if isinstance(op, Add) and any(_is_partial_sum(graph, v) for v in node.inputs):
        return "acc"
    if isinstance(op, Mul) and any(graph.is_constant(v) for v in node.inputs):
        return "scale"
    mnemonic = MNEMONIC_OF.get(type(op))
    if mnemonic is None:
        raise SnucError(
            f"{node.loc.prefix()}{op.NAME} %{node.id} has no instruction on the chip; the "
            "digital units run the ops of docs/isa.md"
        )
    return mnemonic


def _is_partial_sum(graph: Graph, value: str) -> bool:
    node = graph.producer(value)
    while node is not None and isinstance(node.op, Add):
        producers = [graph.producer(v) for v in node.inputs]
        if any(p is not None and isinstance(p.op, CrossbarMVM) for p in producers):
            return True
        node = producers[0]
    return node is not None and isinstance(node.op, CrossbarMVM)


def digital_work(graph: Graph, node: Node, mnemonic: str) -> tuple[int, int]:
    """``(n, ops)``: elements per batch entry and operations per element of ``node``.

    ``n`` is the result's size (the operand's for reductions).
    """
    counted = node.inputs[0] if mnemonic in _REDUCTIONS else node.outputs[0]
    n = graph.type_of(counted).static_size()
    ops = fixed_ops(mnemonic, node.op.attrs())
    if ops is None:
        if mnemonic == "matmul":
            ops = int(graph.type_of(node.inputs[0]).shape[-1])
        else:  # conv: C/group * kh * kw products per output
            ops = int(math.prod(graph.type_of(node.inputs[1]).shape[1:]))
    return n, ops


# --------------------------------------------------------------------------- the schedule


@dataclass(frozen=True)
class ModuloSchedule:
    """A modulo schedule of one timestep: a new timestep starts every ``ii`` cycles.

    Timestep t runs each op at ``t * ii + op.start``.

    Attributes:
        graph: the scheduled graph's name.
        target: the chip.
        ops: every placed instruction, in creation order (graph order, then transfers).
        ii: the initiation interval: cycles per timestep in steady state.
        latency_cycles: from the step's start (inputs at GDU 0) until its last op ends.
        resource_bound: the busiest resource's busy cycles per timestep.
        busiest_resource: that resource's name.
        recurrence_bound: the longest recurrence loop (cycles around a loop through state
            edges, per timestep of distance).
        homes: the unit each node result lives on (for a duplicated tile: copy 0's).
        duplicate: K, the copies of each duplicated tile (1: none); ops tagged ``(K, j)``
            run at every K-th timestep.
        duplicated_crossbars: crossbars whose tiles have copies.
    """

    graph: str
    target: TargetSpec
    ops: tuple[Placement, ...]
    ii: int
    latency_cycles: int
    resource_bound: int
    busiest_resource: str
    recurrence_bound: int
    homes: Mapping[str, Unit] = field(default_factory=dict)
    duplicate: int = 1
    duplicated_crossbars: int = 0

    @property
    def cycles_per_timestep(self) -> int:
        return self.ii

    @property
    def cycles_lower_bound(self) -> int:
        """No schedule of this mapping starts timesteps faster (SPEC §7)."""
        return max(self.resource_bound, self.recurrence_bound, 1)

    @property
    def stages(self) -> int:
        """Timesteps in flight at once: ``ceil(latency / ii)``."""
        return max(1, math.ceil(self.latency_cycles / self.ii))

    def busy_cycles(self) -> dict[str, int]:
        """Busy cycles per timestep of every resource used, by name (an op tagged to run
        at every K-th timestep counts 1/K; rounded up)."""
        return busy_cycles(self.placed(), self.target, self.duplicate)

    def energy_pj_per_timestep(self) -> dict[str, float]:
        """Energy of one timestep (batch 1): ``total`` and each of
        :data:`~snuc.ir.machine.ENERGY_COMPONENTS` (an op tagged to run at every K-th
        timestep counts 1/K)."""
        return energy_pj_per_timestep(self.placed(), self.target)

    def placed(self) -> list[tuple[Unit, Instruction]]:
        """Every instruction with its unit, in the order of :attr:`ops`."""
        return [(op.unit, op.instr) for op in self.ops]

    def summary(self) -> dict[str, object]:
        """The report's schedule figures (SPEC §7), JSON-ready."""
        cores = sorted({op.unit.index for op in self.ops if op.unit.kind == CORE})
        schedule: dict[str, object] = {
            "resource_bound": self.resource_bound,
            "busiest_resource": self.busiest_resource,
            "recurrence_bound": self.recurrence_bound,
            "stages": self.stages,
            "timestep_ns": self.ii * self.target.cycle_ns,
            "cores_used": len(cores),
            "operations": len(self.ops),
        }
        if self.duplicate > 1:
            schedule["duplication"] = {
                "copies": self.duplicate,
                "crossbars_duplicated": self.duplicated_crossbars,
            }
        return {
            "cycles_per_timestep": self.ii,
            "cycles_lower_bound": self.cycles_lower_bound,
            "latency_cycles": self.latency_cycles,
            "energy_pj_per_timestep": self.energy_pj_per_timestep(),
            "schedule": schedule,
        }


# --------------------------------------------------------------------------- building ops


class _Planner:
    """Binds the nodes of a graph to units and makes the operations of one timestep.

    A duplicated tile (``xbar.mvm`` with ``copies``) has its operations once per copy j,
    tagged ``(K, j)``: the MVM on the copy's crossbar, the read-out and the transfers of
    the copy's result. Whoever uses the tile's value depends on every copy's.
    """

    def __init__(self, graph: Graph, target: TargetSpec) -> None:
        self.graph = graph
        self.target = target
        self.binary = {name: r.binary for name, r in guaranteed_ranges(graph).items()}
        self.homes: dict[str, Unit] = {}
        self.copy_homes: dict[str, tuple[Unit, ...]] = {}  # duplicated tile -> read-out units
        self.copy_adcs: dict[str, list[int]] = defaultdict(list)  # ... -> read-out op indices
        self.ops: list[Placement] = []
        self.producer: dict[str, int] = {}  # buffer on its home unit -> op index
        self.available: dict[tuple[str, Unit], tuple[int, ...]] = {}
        self.deps: list[list[tuple[int, int]]] = []
        self.readers: dict[tuple[str, Unit], list[int]] = defaultdict(list)
        # The timesteps (mod K) at which each value's readers on a unit need it made.
        self.reader_tags: dict[tuple[str, Unit], set[tuple[int, int] | None]] = defaultdict(set)
        self.tile_rows: dict[int, tuple[int, int]] = {}  # mvm op index -> weight rows

    def nbytes(self, value: str) -> int:
        """Bytes of one timestep's ``value`` (batch 1) on the wire: spikes take one bit."""
        t = self.graph.type_of(value)
        bits = 1 if self.binary.get(value, False) else t.np_dtype.itemsize * 8
        return max(1, math.ceil(t.static_size() * bits / 8))

    # ---------------------------------------------------------------- binding

    def home_of(self, value: str, seen: frozenset[str] = frozenset()) -> Unit | None:
        """Where ``value`` lives, if known yet; None for constants (every unit has them)."""
        if self.graph.is_constant(value) or value in seen:
            return None
        if value in self.graph.inputs:
            return HOST
        if self.graph.is_state(value):
            return self.home_of(self.graph.state(value).next, seen | {value})
        return self.homes.get(value)

    def bind(self) -> None:
        self.loop_of = self._node_loops()
        tiles = []
        for node in self.graph.nodes():
            if isinstance(node.op, CrossbarMVM):
                unit = Unit(CORE, node.op.crossbar)
                tiles.append(node)
            else:
                unit = self._digital_unit(node)
            for out in node.outputs:
                self.homes[out] = unit
        used_at: dict[str, set[Unit]] = defaultdict(set)
        for node in self.graph.nodes():
            for v in node.inputs:
                used_at[v].add(self.homes[node.outputs[0]])
        outside = set(self.graph.outputs) | {s.next for s in self.graph.states}
        for node in tiles:
            shared = node.id not in outside and len(used_at[node.id]) == 1
            if shared:
                # All its users sit on one unit: read the codes out there. They travel at
                # adc_bits per element, a quarter of the float32 values.
                (self.homes[node.id],) = used_at[node.id]
            op: CrossbarMVM = node.op  # type: ignore[assignment]
            if op.copies:
                self.copy_homes[node.id] = tuple(
                    self.homes[node.id] if shared else Unit(CORE, op.copy_crossbar(j))
                    for j in range(op.duplicates)
                )

    def _node_loops(self) -> dict[str, int]:
        """Each node's strongly connected component in the graph with its state edges:
        nodes of one recurrence loop share a number."""
        nodes = list(self.graph.nodes())
        index = {node.id: i for i, node in enumerate(nodes)}
        succ: list[list[int]] = [[] for _ in nodes]
        for i, node in enumerate(nodes):
            for v in node.inputs:
                producer = self.graph.producer(self._settled(v))
                if producer is not None:
                    succ[index[producer.id]].append(i)
        loop_of = {}
        for k, comp in enumerate(strongly_connected(len(nodes), succ)):
            for i in comp:
                loop_of[nodes[i].id] = k
        return loop_of

    def _digital_unit(self, node: Node) -> Unit:
        """Where a digital node runs: the LDU of the core holding its largest operand,
        else a GDU (or a GDU for what only a GDU runs).

        Operands from the node's own recurrence loop come first: the others can be
        moved ahead of time, while moving a loop's value lengthens the loop.
        """
        best: Unit | None = None
        best_key = (False, -1)
        for v in node.inputs:
            home = self.home_of(v)
            producer = self.graph.producer(self._settled(v))
            same_loop = producer is not None and (
                self.loop_of[producer.id] == self.loop_of[node.id]
            )
            key = (same_loop, self.nbytes(v))
            if home is not None and key > best_key:
                best, best_key = home, key
        if DIGITAL_OPS[digital_mnemonic(self.graph, node)].gdu_only:
            return Unit(GDU, best.chip(self.target) if best is not None else 0)
        return best if best is not None else HOST

    # ---------------------------------------------------------------- operations

    def add_op(self, instr: Instruction, unit: Unit, node: str = "") -> int:
        """Place ``instr`` on ``unit`` (for ``node``); its index."""
        index = len(self.ops)
        cost = instr.cost(self.target, unit)
        self.ops.append(Placement(index, instr, unit, cost, node=node))
        self.deps.append([])
        for r in instr.results:
            self.producer[r] = index
        return index

    def build(self) -> None:
        """Every node's operations, then the transfers and dependencies they need."""
        self.bind()
        reads: list[tuple[int, str]] = []
        for node in self.graph.nodes():
            unit = self.homes[node.outputs[0]]
            if isinstance(node.op, CrossbarMVM):
                for j in range(node.op.duplicates):
                    reads += self._add_tile(node, j)
                self._align_readouts(node)
            else:
                reads += self._add_digital(node, unit)
        for index, value in reads:
            reader = self.ops[index]
            settled, distance = self._settled_distance(value)
            self.readers[(settled, reader.unit)].append(index)
            tag = reader.tag
            if tag is not None:  # the value is made ``distance`` timesteps before the read
                tag = (tag[0], (tag[1] - distance) % tag[0])
            self.reader_tags[(settled, reader.unit)].add(tag)
        for index, value in reads:
            sources, distance = self.make_available(value, self.ops[index].unit)
            self.deps[index] += [(source, distance) for source in sources]
        for value in self.graph.outputs:
            self.make_available(value, HOST)
        self.ops = [
            replace(op, deps=tuple(dict.fromkeys(deps)))
            for op, deps in zip(self.ops, self.deps, strict=True)
        ]

    def _ref(self, value: str) -> str:
        return f"@{value}" if self.graph.is_constant(value) else f"%{value}"

    def _settled(self, value: str) -> str:
        """The value a state holds in the end (through chains of states); else itself."""
        return self._settled_distance(value)[0]

    def _settled_distance(self, value: str) -> tuple[str, int]:
        """:meth:`_settled`, and through how many states (timesteps) it reaches it."""
        seen = set()
        while self.graph.is_state(value) and value not in seen:
            seen.add(value)
            value = self.graph.state(value).next
        return value, len(seen)

    def wire(self, value: str, dst: Unit) -> tuple[int, tuple[int, int] | None]:
        """Bytes a transfer of ``value`` to ``dst`` carries, and the window of its last
        axis it carries when that is not all of it.

        Spikes take one bit per element. A value that only crossbars read on ``dst``
        moves as DAC codes (``dac_bits`` per element), and only the rows its tiles
        there drive; any other value moves whole, at its dtype's width.
        """
        t = self.graph.type_of(value)
        readers = self.readers.get((value, dst), [])
        window = None
        if readers and all(isinstance(self.ops[i].instr, Mvm) for i in readers):
            bits = self.target.dac_bits
            lo = min(self.tile_rows[i][0] for i in readers)
            hi = max(self.tile_rows[i][1] for i in readers)
            if (lo, hi) != (0, t.shape[-1]):
                window = (lo, hi)
        else:
            bits = t.np_dtype.itemsize * 8
        if self.binary.get(value, False):
            bits = 1
        elements = t.static_size()
        if window is not None:
            elements = elements // int(t.shape[-1]) * (window[1] - window[0])
        return max(1, math.ceil(elements * bits / 8)), window

    def _add_tile(self, node: Node, j: int) -> list[tuple[int, str]]:
        """The operations of copy ``j`` of tile ``node`` (0: the tile itself)."""
        op: CrossbarMVM = node.op  # type: ignore[assignment]
        crossbar = op.copy_crossbar(j)
        if crossbar >= self.target.crossbars_available:
            what = f"copy {j} of tile %{node.id}" if j else f"tile %{node.id}"
            raise SnucError(
                f"{node.loc.prefix()}{what} is on crossbar {crossbar}, but target "
                f"{self.target.name} has {self.target.crossbars_available} "
                f"(chips={self.target.chips}); run the place pass for this target"
            )
        unit = Unit(CORE, crossbar)
        readout = self.copy_homes[node.id][j] if op.copies else self.homes[node.id]
        tag = (op.duplicates, j) if op.copies else None
        x = node.inputs[0]
        rows, phases, vectors = mvm_shape(self.graph, node, self.target, self.binary.get(x, False))
        mvm = self.add_op(
            Mvm(0, f"${node.id}", self._ref(x), op.copy_tile(j), rows, phases, vectors, tag=tag),
            unit,
            node.id,
        )
        self.tile_rows[mvm] = (op.rows[0], op.rows[1])
        n = self.graph.type_of(node.id).static_size()
        codes = mvm
        if readout != unit:
            codes = self.add_op(Send(0, f"${node.id}", readout, self._code_bytes(n), tag=tag), unit)
            self.deps[codes].append((mvm, 0))
        adc = self.add_op(
            Adc(0, f"%{node.id}", f"${node.id}", op.copy_tile(j), n, tag=tag), readout, node.id
        )
        self.deps[adc].append((codes, 0))
        if op.copies:
            self.copy_adcs[node.id].append(adc)
        return [(mvm, x)] if not self.graph.is_constant(x) else []

    def _align_readouts(self, node: Node) -> None:
        """Copies of a tile read out on one unit wait for each other's codes: started
        together, their K read-outs (one per timestep class) hold the unit's same cycles
        in each of the K timesteps, as one untagged op would, and leave the rest of the
        pattern whole for untagged work (a few cycles of latency for a denser unit)."""
        homes = self.copy_homes.get(node.id, ())
        if len(set(homes)) != 1:
            return
        adcs = self.copy_adcs[node.id]
        codes = [p for adc in adcs for p, _ in self.deps[adc]]
        for adc in adcs:
            self.deps[adc] += [(p, 0) for p in codes]

    def _code_bytes(self, n: int) -> int:
        return math.ceil(n * self.target.adc_bits / 8)

    def _add_digital(self, node: Node, unit: Unit) -> list[tuple[int, str]]:
        mnemonic = digital_mnemonic(self.graph, node)
        n, ops = digital_work(self.graph, node, mnemonic)
        results = tuple(f"%{o}" for o in node.outputs)
        operands = tuple(self._ref(v) for v in node.inputs)
        attrs = tuple(node.op.attrs().items())
        index = self.add_op(VectorOp(0, mnemonic, results, operands, n, ops, attrs), unit, node.id)
        return [(index, v) for v in node.inputs if not self.graph.is_constant(v)]

    def make_available(
        self, value: str, unit: Unit, seen: frozenset[str] = frozenset()
    ) -> tuple[tuple[int, ...], int]:
        """The ops that make ``value`` usable on ``unit``, and how many steps back.

        Adds a transfer when the value lives elsewhere. One op, or for a duplicated
        tile's value one per copy; none: usable from the start of the step (a constant,
        an input at the host, a state that only ever holds zeros).
        """
        if self.graph.is_constant(value) or value in seen:
            return (), 0
        if self.graph.is_state(value):
            sources, distance = self.make_available(
                self.graph.state(value).next, unit, seen | {value}
            )
            return sources, distance + 1
        key = (value, unit)
        if key not in self.available:
            home = self.home_of(value)
            if value in self.copy_adcs:
                self.available[key] = self._gather_copies(value, unit)
            elif home == unit:
                producer = self.producer.get(f"%{value}")
                self.available[key] = () if producer is None else (producer,)
            else:
                sources, _ = self.make_available(value, home)
                self.available[key] = (self._add_transfer(value, home, unit, sources),)
        return self.available[key], 0

    def _gather_copies(self, value: str, unit: Unit) -> tuple[int, ...]:
        """Every copy's read-out of duplicated tile ``value``, each moved to ``unit`` (at
        the copy's timesteps) where it is made elsewhere."""
        adcs = self.copy_adcs[value]
        sources = []
        for j, (home, adc) in enumerate(zip(self.copy_homes[value], adcs, strict=True)):
            if home == unit:
                sources.append(adc)
            else:
                sources.append(self._add_transfer(value, home, unit, (adc,), (len(adcs), j)))
        return tuple(sources)

    def _add_transfer(
        self,
        value: str,
        src: Unit,
        dst: Unit,
        sources: tuple[int, ...],
        tag: tuple[int, int] | None = None,
    ) -> int:
        """A transfer of ``value`` from ``src`` to ``dst`` after ``sources``. Tagged
        ``tag``, or like its readers on ``dst`` when they all run at one copy's timesteps
        (a duplicated tile's input moves only when that copy needs it)."""
        if tag is None:
            tags = self.reader_tags.get((value, dst), {None})
            if len(tags) == 1:
                (tag,) = tags
        nbytes, window = self.wire(value, dst)
        index = self.add_op(Send(0, f"%{value}", dst, nbytes, window, tag=tag), src)
        self.deps[index] += [(source, 0) for source in sources]
        return index


# --------------------------------------------------------------------------- entry points


def check_schedulable(graph: Graph) -> None:
    """Raise SnucError naming the first node that keeps ``graph`` from being scheduled:
    an untiled crossbar op or an unplaced tile."""
    for node in graph.nodes():
        if isinstance(node.op, (Dense, Conv)):
            raise SnucError(
                f"{node.loc.prefix()}{node.op.NAME} %{node.id} is not tiled; run the "
                "lower-conv, tile and place passes before schedule"
            )
        if isinstance(node.op, CrossbarMVM) and node.op.crossbar < 0:
            raise SnucError(
                f"{node.loc.prefix()}tile %{node.id} is not placed; run the place pass "
                "before schedule"
            )


def duplication(graph: Graph) -> tuple[int, int]:
    """``(K, crossbars)``: the copies of the graph's duplicated tiles (1 if none has
    any) and how many crossbars hold tiles with copies.

    Raises:
        SnucError: tiles with different numbers of copies (one K serves the whole graph).
    """
    tiles = [n.op for n in graph.nodes() if isinstance(n.op, CrossbarMVM) and n.op.copies]
    ks = sorted({op.duplicates for op in tiles})
    if len(ks) > 1:
        raise SnucError(
            f"tiles have {' and '.join(map(str, ks))} copies; one graph takes one number "
            "of copies (run the place pass with one --duplicate)"
        )
    return (ks[0] if ks else 1), len({op.crossbar for op in tiles})


def schedule_graph(graph: Graph, target: TargetSpec | None) -> ModuloSchedule:
    """Bind every node of ``graph`` to a unit and modulo-schedule one timestep.

    Args:
        graph: a verified graph whose crossbar work is placed ``xbar.mvm`` tiles.
        target: the chip (None: the default target).

    Returns:
        The schedule: ops with start cycles, ``ii`` (cycles per timestep), latency, the
        lower bound's parts and the energy per timestep.

    Raises:
        SnucError: an untiled or unplaced crossbar op, a tile on a crossbar the target
            lacks, or an op no instruction computes.
    """
    target = parse_target(DEFAULT_TARGET) if target is None else target
    check_schedulable(graph)
    duplicate, duplicated = duplication(graph)
    planner = _Planner(graph, target)
    planner.build()
    ops = planner.ops
    busy = busy_cycles(((op.unit, op.instr) for op in ops), target, duplicate)
    busiest = min(busy, key=lambda r: (-busy[r], r)) if busy else ""
    scheduler = ModuloScheduler(ops, duplicate)
    lower_bound = max(busy.get(busiest, 0), scheduler.recurrence_bound, 1)
    ii, starts = scheduler.run(lower_bound)
    ops = [replace(op, instr=replace(op.instr, start=t)) for op, t in zip(ops, starts, strict=True)]
    return ModuloSchedule(
        graph=graph.name,
        target=target,
        ops=tuple(ops),
        ii=ii,
        latency_cycles=max((op.end for op in ops), default=0),
        resource_bound=busy.get(busiest, 0),
        busiest_resource=busiest,
        recurrence_bound=scheduler.recurrence_bound,
        homes=MappingProxyType(dict(planner.homes)),
        duplicate=duplicate,
        duplicated_crossbars=duplicated,
    )
