"""``schedule``: where and when every piece of one timestep runs on the chip (SPEC §4, §7).

The chip (docs/isa.md) is a set of *units*: cores, each a crossbar with its ADCs and a
local digital unit (LDU), and one global digital unit (GDU) per chip; an on-chip mesh
network joins the cores of a chip, and a slower link joins the chips. This module holds
that machine model (units, routes, the cost of every kind of work, from the target) and
the scheduler.

:func:`schedule_graph` takes a placed graph (``xbar.mvm`` tiles with crossbars) and

1. binds every node to a unit: a tile to its crossbar's core, digital work to the LDU of
   the core that holds its largest operand (or to a GDU, see :data:`DIGITAL_OPS`), a
   tile's read-out to the unit where all its users are, if there is one such unit;
2. turns nodes into operations: per tile an ``mvm`` on the crossbar and an ``adc``
   read-out, one vector operation per digital node, and a transfer wherever a value is
   used on another unit than the one that made it (graph inputs arrive at, and outputs
   leave from, GDU 0);
3. modulo-schedules one timestep (iterative modulo scheduling, after Rau 1994): every
   operation gets a start cycle such that a new timestep can start every ``ii`` cycles,
   layer k of step t running beside layer k+1 of step t-1. Dependencies inside a step
   and across steps (state edges) hold, and no resource (a crossbar, an LDU, a GDU, a
   network link) runs two operations at once in the repeating pattern.

The initiation interval ``ii`` starts at the lower bound (the larger of the busiest
resource's work per timestep and the longest recurrence loop) and grows only when no
schedule fits. The ``schedule`` pass runs :func:`schedule_graph` to check that the graph
can be scheduled and returns the graph unchanged: a schedule is a pure function of graph
and target, so the driver calls :func:`schedule_graph` on the final graph for the program
(``snuc.backends.program``) and the report (:meth:`Schedule.summary`).
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import ClassVar

from snuc.ir.crossbar import guaranteed_ranges
from snuc.ir.errors import SnucError, VerifyError
from snuc.ir.graph import Graph, Node
from snuc.ir.ops import CrossbarMVM
from snuc.ir.target import DEFAULT_TARGET, TargetSpec, parse_target
from snuc.passes.base import Pass, register_pass

CORE, GDU = "core", "gdu"

# --------------------------------------------------------------------------- units


@dataclass(frozen=True, order=True)
class Unit:
    """A place on the chip that holds buffers and runs instructions.

    Attributes:
        kind: ``"core"`` (a crossbar, its ADCs and its LDU, sharing the core's memory) or
            ``"gdu"`` (a chip's global digital unit).
        index: global core index (``chip * cores + core``) or chip index.
    """

    kind: str
    index: int

    def __post_init__(self) -> None:
        if self.kind not in (CORE, GDU):
            raise VerifyError(f"unknown unit kind {self.kind!r}; expected 'core' or 'gdu'")
        if isinstance(self.index, bool) or not isinstance(self.index, int) or self.index < 0:
            raise VerifyError(f"{self.kind} index must be an int >= 0, got {self.index!r}")

    def __str__(self) -> str:
        return f"{self.kind} {self.index}"

    def chip(self, target: TargetSpec) -> int:
        """The chip the unit is on."""
        return self.index // target.cores if self.kind == CORE else self.index

    def compute_resource(self) -> str:
        """The resource that runs its digital work: ``ldu N`` or ``gdu N``."""
        return f"ldu {self.index}" if self.kind == CORE else f"gdu {self.index}"


HOST = Unit(GDU, 0)
"""Where the inputs of a timestep arrive and its outputs are collected."""


def check_unit(unit: Unit, target: TargetSpec) -> None:
    """Raise SnucError (one line) if ``unit`` does not exist on ``target``."""
    if unit.kind == CORE and unit.index >= target.crossbars_available:
        raise SnucError(
            f"{unit} does not exist: target {target.name} has {target.crossbars_available} "
            f"cores (0..{target.crossbars_available - 1}; {target.cores} per chip, "
            f"chips={target.chips})"
        )
    if unit.kind == GDU and unit.index >= target.chips:
        raise SnucError(
            f"{unit} does not exist: target {target.name} has {target.chips} chip(s), one "
            f"global digital unit each (gdu 0..{target.chips - 1})"
        )


# --------------------------------------------------------------------------- the network


def mesh_width(target: TargetSpec) -> int:
    """Routers per row of a chip's mesh: ``ceil(sqrt(cores))``; cores fill it row by row."""
    return math.isqrt(target.cores - 1) + 1


@dataclass(frozen=True)
class Route:
    """The links a transfer crosses, in order.

    Attributes:
        links: resource names: ``noc a>b`` (mesh link between the routers of cores a and
            b), ``noc gduK>r`` / ``noc r>gduK`` (a GDU's port on router r) and
            ``chiplink p>q`` (from chip p to chip q).
    """

    links: tuple[str, ...]

    @property
    def hops(self) -> int:
        """On-chip network links crossed."""
        return sum(1 for link in self.links if link.startswith("noc "))

    @property
    def chip_crossings(self) -> int:
        return len(self.links) - self.hops


def route(src: Unit, dst: Unit, target: TargetSpec) -> Route:
    """The links from ``src`` to ``dst``: XY routing on each chip's mesh.

    A GDU sits on the router of its chip's core 0, which is also where the chip link
    leaves; a transfer between chips goes to core 0's router, over the chip link, and on
    from core 0's router of the other chip. A route goes along the row first, unless the
    corner it would turn at holds no core (a last, partly filled row); then the column
    first.
    """
    links: list[str] = []
    src_chip, dst_chip = src.chip(target), dst.chip(target)
    here = _router(src, target)
    if src.kind == GDU:
        links.append(f"noc gdu{src.index}>{here}")
    if src_chip != dst_chip:
        gateway = src_chip * target.cores
        links += _mesh_path(here, gateway, target)
        links.append(f"chiplink {src_chip}>{dst_chip}")
        here = dst_chip * target.cores
    there = _router(dst, target)
    links += _mesh_path(here, there, target)
    if dst.kind == GDU:
        links.append(f"noc {there}>gdu{dst.index}")
    return Route(tuple(links))


def _router(unit: Unit, target: TargetSpec) -> int:
    """The global index of the core whose router ``unit`` sits on."""
    return unit.index if unit.kind == CORE else unit.index * target.cores


def _mesh_path(a: int, b: int, target: TargetSpec) -> list[str]:
    """Links from router ``a`` to router ``b`` of one chip (global core indices)."""
    base = a - a % target.cores
    width = mesh_width(target)
    y, x = divmod(a - base, width)
    by, bx = divmod(b - base, width)
    if y * width + bx < target.cores:  # the corner (bx, y) holds a core: row first
        points = [(cx, y) for cx in _steps(x, bx)] + [(bx, cy) for cy in _steps(y, by)]
    else:
        points = [(x, cy) for cy in _steps(y, by)] + [(cx, by) for cx in _steps(x, bx)]
    ids = [a] + [base + py * width + px for px, py in points]
    return [f"noc {u}>{v}" for u, v in zip(ids, ids[1:], strict=False)]


def _steps(a: int, b: int) -> range:
    """The coordinates after each unit step from ``a`` to ``b``."""
    step = 1 if b > a else -1
    return range(a + step, b + step, step)


# --------------------------------------------------------------------------- costs


ENERGY_COMPONENTS = ("crossbar", "digital", "noc", "chip_link")
"""Where energy goes: crossbar MVMs (ADC conversion included), digital work (read-outs and
vector ops), the on-chip network and the chip links."""


@dataclass(frozen=True)
class Cost:
    """What one operation takes, from the target's figures.

    Attributes:
        cycles: how long it holds each resource it reserves.
        latency: cycles from its start until its result can be used.
        energy_pj: energy by component (:data:`ENERGY_COMPONENTS`), only non-zero ones.
        reservations: ``(resource, offset, cycles)``: the resource is busy from
            ``start + offset`` for ``cycles``.
    """

    cycles: int
    latency: int
    energy_pj: tuple[tuple[str, float], ...] = ()
    reservations: tuple[tuple[str, int, int], ...] = ()

    @property
    def total_energy_pj(self) -> float:
        return sum(e for _, e in self.energy_pj)


FREE = Cost(0, 0)
"""The cost of a marker (``recv``, ``sync``) or of a view (``reshape``)."""


def mvm_cost(target: TargetSpec, core: int, rows: int, phases: int, vectors: int) -> Cost:
    """``vectors`` MVMs of ``phases`` phases on crossbar ``core`` driving ``rows`` rows.

    Each phase takes ``mvm_cycles`` (ADC conversion included) and ``energy_mvm_pj`` scaled
    by the driven rows over the crossbar's rows (Le Gallo et al. 2023: 13.4 nJ for a fully
    driven 256 x 256 one-phase MVM).
    """
    cycles = vectors * phases * target.mvm_cycles
    energy = vectors * phases * target.energy_mvm_pj * rows / target.rows
    return Cost(cycles, cycles, (("crossbar", energy),), ((f"xbar {core}", 0, cycles),))


def digital_cost(target: TargetSpec, unit: Unit, n: int, ops: int) -> Cost:
    """A vector op of ``ops`` operations per element over ``n`` elements on ``unit``.

    ``ops * ceil(n / digital_lanes)`` cycles and ``energy_digital_op_pj`` per operation on
    each element; ``ops = 0`` (a view such as ``reshape``) is free.
    """
    cycles = ops * math.ceil(n / target.digital_lanes)
    if cycles == 0:
        return FREE
    energy = ops * n * target.energy_digital_op_pj
    return Cost(cycles, cycles, (("digital", energy),), ((unit.compute_resource(), 0, cycles),))


def transfer_cost(target: TargetSpec, src: Unit, dst: Unit, nbytes: int) -> Cost:
    """Moving ``nbytes`` from ``src`` to ``dst`` (cut-through over the route's links).

    Each link is busy for ``ceil(nbytes / noc_bytes_per_cycle)`` cycles, starting when the
    head of the message reaches it: ``noc_hop_cycles`` after the link before it, or
    ``chip_link_cycles`` after a chip link. The latency is the last link's start plus that
    serialisation time; energy ``energy_noc_byte_pj`` per byte and hop plus
    ``energy_chip_link_byte_pj`` per byte and chip crossing.
    """
    path = route(src, dst, target)
    serial = math.ceil(nbytes / target.noc_bytes_per_cycle)
    offset = 0
    reservations = []
    for link in path.links:
        reservations.append((link, offset, serial))
        offset += target.chip_link_cycles if link.startswith("chiplink") else target.noc_hop_cycles
    # ``offset`` is now when the head arrives; the tail follows ``serial`` cycles behind.
    latency = offset + serial
    energy = []
    if path.hops:
        energy.append(("noc", nbytes * path.hops * target.energy_noc_byte_pj))
    if path.chip_crossings:
        energy.append(("chip_link", nbytes * path.chip_crossings * target.energy_chip_link_byte_pj))
    return Cost(serial, latency, tuple(energy), tuple(reservations))


def mvm_shape(graph: Graph, node: Node, target: TargetSpec, binary: bool) -> tuple[int, int, int]:
    """``(rows, phases, vectors)`` of tile ``node``'s MVM per timestep (batch 1).

    ``binary``: its input is guaranteed to be spikes (one phase; else ``input_phases``).
    """
    op: CrossbarMVM = node.op  # type: ignore[assignment]
    x_type = graph.type_of(node.inputs[0])
    vectors = x_type.static_size() // x_type.shape[-1]
    phases = 1 if binary else target.input_phases
    return op.rows[1] - op.rows[0], phases, vectors


def crossbar_work(graph: Graph, target: TargetSpec) -> dict[int, int]:
    """MVM busy cycles per timestep (batch 1) of every crossbar that holds a placed tile,
    by global index, counting only copy 0 of duplicated tiles."""
    binary = {name: r.binary for name, r in guaranteed_ranges(graph).items()}
    work: dict[int, int] = defaultdict(int)
    for node in graph.nodes():
        if isinstance(node.op, CrossbarMVM) and node.op.crossbar >= 0:
            rows, phases, vectors = mvm_shape(
                graph, node, target, binary.get(node.inputs[0], False)
            )
            cost = mvm_cost(target, node.op.crossbar, rows, phases, vectors)
            work[node.op.crossbar] += cost.cycles
    return dict(work)


# --------------------------------------------------------------------------- digital work


@dataclass(frozen=True)
class DigitalOp:
    """One vector instruction of the digital units.

    Attributes:
        ir_name: the IR op it computes (its attributes are the instruction's).
        ops: operations per element; None when it depends on the operands' shapes (the
            instruction then states it).
        gdu_only: only a GDU runs it (reductions, normalisation, table look-ups, digital
            matrix products); an LDU runs the others too.
        meaning: one line for docs and errors.
    """

    ir_name: str
    ops: int | None
    gdu_only: bool
    meaning: str


def _op(ir: str, ops: int | None, meaning: str, gdu_only: bool = False) -> DigitalOp:
    return DigitalOp(ir, ops, gdu_only, meaning)


DIGITAL_OPS: Mapping[str, DigitalOp] = MappingProxyType(
    {
        "acc": _op("dig.add", 1, "accumulate crossbar partial sums: z = x + y"),
        "add": _op("dig.add", 1, "z = x + y"),
        "sub": _op("dig.sub", 1, "z = x - y"),
        "mul": _op("dig.mul", 1, "z = x * y"),
        "scale": _op("dig.mul", 1, "z = x * c with c a constant (affine scaling)"),
        "div": _op("dig.div", 1, "z = x / y"),
        "neg": _op("dig.neg", 1, "y = -x"),
        "relu": _op("dig.relu", 1, "y = max(x, 0)"),
        "leaky_relu": _op("dig.leaky_relu", 1, "y = x if x >= 0 else alpha * x"),
        "sigmoid": _op("dig.sigmoid", 1, "y = 1 / (1 + exp(-x)) (table and interpolation)"),
        "tanh": _op("dig.tanh", 1, "y = tanh(x) (table and interpolation)"),
        "step": _op("dig.step", 1, "y = 1 where x > 0 else 0 (spike)"),
        "greater": _op("dig.greater", 1, "z = x > y"),
        "greater_equal": _op("dig.greater_equal", 1, "z = x >= y"),
        "less": _op("dig.less", 1, "z = x < y"),
        "cast": _op("dig.cast", 1, "y = x converted to another dtype"),
        "where": _op("dig.where", 1, "z = x where c else y"),
        "snu": _op("snu.layer", None, "fused SNU update: s = g(a + l*s'*(1-y')), y = h(s + b)"),
        "reshape": _op("dig.reshape", 0, "view of a buffer in another shape (free)"),
        "transpose": _op("dig.transpose", 1, "copy with permuted axes"),
        "concat": _op("dig.concat", 1, "copy buffers side by side"),
        "im2col": _op("dig.im2col", 1, "copy convolution patches"),
        "maxpool": _op("dig.maxpool", None, "maximum over each window"),
        "avgpool": _op("dig.avgpool", None, "mean over each window"),
        "gather": _op("dig.gather", 1, "table look-up (embedding)", gdu_only=True),
        "reduce_sum": _op("dig.reduce_sum", 1, "sum over axes", gdu_only=True),
        "reduce_mean": _op("dig.reduce_mean", 1, "mean over axes", gdu_only=True),
        "softmax": _op("dig.softmax", 4, "softmax along an axis", gdu_only=True),
        "log_softmax": _op("dig.log_softmax", 4, "log-softmax along an axis", gdu_only=True),
        "matmul": _op("dig.matmul", None, "digital matrix product", gdu_only=True),
        "conv": _op("dig.conv", None, "digital convolution", gdu_only=True),
    }
)
"""Every vector instruction, by mnemonic. ``ops`` counts one pass over the elements per
operation: the fused SNU update is 7 (6 with g = identity), a softmax 4 (max, exp, sum,
divide); a pooling window of k elements k; a digital matrix product K per output."""

_MNEMONIC_OF_IR = {
    info.ir_name: name for name, info in DIGITAL_OPS.items() if name not in ("acc", "scale")
}
_REDUCTIONS = ("reduce_sum", "reduce_mean")


def fixed_ops(mnemonic: str, attrs: Mapping[str, object]) -> int | None:
    """Operations per element of ``mnemonic`` with IR attributes ``attrs``; None if it
    depends on the operands' shapes (``matmul``, ``conv``)."""
    if mnemonic == "snu":
        return 7 if attrs.get("g", "relu") == "relu" else 6
    if mnemonic in ("maxpool", "avgpool"):
        kernel = attrs.get("kernel", (2, 2))
        return int(math.prod(kernel))
    return DIGITAL_OPS[mnemonic].ops


def digital_mnemonic(graph: Graph, node: Node) -> str:
    """The instruction that runs ``node``.

    ``dig.add`` of crossbar partial sums (directly or through other such adds) is
    ``acc``; ``dig.mul`` by a constant is ``scale``.

    Raises:
        SnucError: no instruction computes the node's op.
    """
    name = node.op.NAME
    if name == "dig.add" and any(_is_partial_sum(graph, v) for v in node.inputs):
        return "acc"
    if name == "dig.mul" and any(graph.is_constant(v) for v in node.inputs):
        return "scale"
    mnemonic = _MNEMONIC_OF_IR.get(name)
    if mnemonic is None:
        raise SnucError(
            f"{node.loc.prefix()}{name} %{node.id} has no instruction on the chip; the "
            "digital units run the ops of docs/isa.md"
        )
    return mnemonic


def _is_partial_sum(graph: Graph, value: str) -> bool:
    node = graph.producer(value)
    while node is not None and node.op.NAME == "dig.add":
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
class ScheduledOp:
    """One operation of one timestep, placed in time.

    The fields beyond ``cost`` are the instruction's operands (docs/isa.md); buffers are
    named with sigils: ``%v`` a value, ``@c`` a constant, ``$v`` the ADC codes of the tile
    computing ``%v``.

    Attributes:
        index: position in :attr:`Schedule.ops`.
        mnemonic: ``mvm``, ``adc``, ``send`` (a transfer) or a key of :data:`DIGITAL_OPS`.
        unit: where it runs (for ``send``: the source).
        start: its first cycle, counted from the start of its timestep.
        results, operands: buffers written and read on ``unit``.
        cost: its cycles, latency, energy and reservations.
        deps: ``(op index, distance)``: it needs that op's result from ``distance``
            timesteps earlier (0: the same step; 1 and more: through states).
        node: the IR node it computes ("" for transfers).
        tile, rows, phases, vectors: ``mvm``'s tile, driven rows, phases and input
            vectors per timestep (``adc``: the tile).
        n, ops: elements and operations per element of a read-out or vector op.
        dst, nbytes, window: a transfer's destination, size, and the part of the last
            axis it carries (None: all of it).
        attrs: the IR attributes of a vector op.
        tag: ``(K, j)``: it runs only at timesteps t with ``t mod K == j`` (the work of
            copy j of a duplicated tile, docs/isa.md "Tile duplication"); None: at every
            timestep.
    """

    index: int
    mnemonic: str
    unit: Unit
    start: int
    results: tuple[str, ...]
    operands: tuple[str, ...]
    cost: Cost
    deps: tuple[tuple[int, int], ...] = ()
    node: str = ""
    tile: int = -1
    rows: int = 0
    phases: int = 0
    vectors: int = 0
    n: int = 0
    ops: int = 0
    dst: Unit | None = None
    nbytes: int = 0
    window: tuple[int, int] | None = None
    attrs: tuple[tuple[str, object], ...] = ()
    tag: tuple[int, int] | None = None

    @property
    def end(self) -> int:
        """The cycle from which its result can be used."""
        return self.start + self.cost.latency


@dataclass(frozen=True)
class Schedule:
    """A modulo schedule of one timestep: a new timestep starts every ``ii`` cycles.

    Timestep t runs each op at ``t * ii + op.start``.

    Attributes:
        graph: the scheduled graph's name.
        target: the chip.
        ops: every operation, in creation order (graph order, then transfers).
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
    ops: tuple[ScheduledOp, ...]
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
        return _busy_cycles(self.ops, self.duplicate)

    def energy_pj_per_timestep(self) -> dict[str, float]:
        """Energy of one timestep (batch 1): ``total`` and each of :data:`ENERGY_COMPONENTS`
        (an op tagged to run at every K-th timestep counts 1/K)."""
        parts = dict.fromkeys(ENERGY_COMPONENTS, 0.0)
        for op in self.ops:
            for component, energy in op.cost.energy_pj:
                parts[component] += energy if op.tag is None else energy / op.tag[0]
        return {"total": sum(parts.values()), **parts}

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


def _busy_cycles(ops: Sequence[ScheduledOp], duplicate: int = 1) -> dict[str, int]:
    """Busy cycles per timestep of each resource: an op tagged to run at every
    ``duplicate``-th timestep counts ``1 / duplicate`` of its cycles; rounded up."""
    busy: dict[str, int] = defaultdict(int)
    for op in ops:
        weight = 1 if op.tag is not None else duplicate
        for resource, _, cycles in op.cost.reservations:
            busy[resource] += weight * cycles
    return {resource: -(-total // duplicate) for resource, total in busy.items()}


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
        self.ops: list[ScheduledOp] = []
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
        for k, comp in enumerate(_components(len(nodes), succ)):
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

    def add_op(self, op: ScheduledOp) -> int:
        op = replace(op, index=len(self.ops))
        self.ops.append(op)
        self.deps.append([])
        for r in op.results:
            self.producer[r] = op.index
        return op.index

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
        if readers and all(self.ops[i].mnemonic == "mvm" for i in readers):
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
            ScheduledOp(
                index=-1,
                mnemonic="mvm",
                unit=unit,
                start=0,
                results=(f"${node.id}",),
                operands=(self._ref(x),),
                cost=mvm_cost(self.target, unit.index, rows, phases, vectors),
                node=node.id,
                tile=op.copy_tile(j),
                rows=rows,
                phases=phases,
                vectors=vectors,
                tag=tag,
            )
        )
        self.tile_rows[mvm] = (op.rows[0], op.rows[1])
        n = self.graph.type_of(node.id).static_size()
        codes = mvm
        if readout != unit:
            codes = self.add_op(
                ScheduledOp(
                    index=-1,
                    mnemonic="send",
                    unit=unit,
                    start=0,
                    results=(),
                    operands=(f"${node.id}",),
                    cost=transfer_cost(self.target, unit, readout, self._code_bytes(n)),
                    dst=readout,
                    nbytes=self._code_bytes(n),
                    tag=tag,
                )
            )
            self.deps[codes].append((mvm, 0))
        adc = self.add_op(
            ScheduledOp(
                index=-1,
                mnemonic="adc",
                unit=readout,
                start=0,
                results=(f"%{node.id}",),
                operands=(f"${node.id}",),
                cost=digital_cost(self.target, readout, n, 1),
                node=node.id,
                tile=op.copy_tile(j),
                n=n,
                ops=1,
                tag=tag,
            )
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
        index = self.add_op(
            ScheduledOp(
                index=-1,
                mnemonic=mnemonic,
                unit=unit,
                start=0,
                results=tuple(f"%{o}" for o in node.outputs),
                operands=tuple(self._ref(v) for v in node.inputs),
                cost=digital_cost(self.target, unit, n, ops),
                node=node.id,
                n=n,
                ops=ops,
                attrs=tuple(node.op.attrs().items()),
            )
        )
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
        index = self.add_op(
            ScheduledOp(
                index=-1,
                mnemonic="send",
                unit=src,
                start=0,
                results=(),
                operands=(f"%{value}",),
                cost=transfer_cost(self.target, src, dst, nbytes),
                dst=dst,
                nbytes=nbytes,
                window=window,
                tag=tag,
            )
        )
        self.deps[index] += [(source, 0) for source in sources]
        return index


# --------------------------------------------------------------------------- bounds


def _components(n: int, succ: Sequence[Sequence[int]]) -> list[list[int]]:
    """Strongly connected components (Tarjan, iterative), each sorted."""
    index = [-1] * n
    low = [0] * n
    on_stack = [False] * n
    stack: list[int] = []
    comps: list[list[int]] = []
    counter = 0
    for root in range(n):
        if index[root] >= 0:
            continue
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = True
        work = [(root, 0)]
        while work:
            v, i = work[-1]
            if i < len(succ[v]):
                work[-1] = (v, i + 1)
                w = succ[v][i]
                if index[w] < 0:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack[w] = True
                    work.append((w, 0))
                elif on_stack[w]:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                u = work[-1][0]
                low[u] = min(low[u], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack[w] = False
                    comp.append(w)
                    if w == v:
                        break
                comps.append(sorted(comp))
    return comps


def _feasible(members: Sequence[int], edges: Sequence[tuple[int, int, int, int]], ii: int) -> bool:
    """Whether no loop of ``edges`` (p, c, latency, distance) is longer than ``ii`` per step.

    Bellman-Ford for a positive cycle in weights ``latency - ii * distance``.
    """
    dist = dict.fromkeys(members, 0)
    for _ in range(len(members)):
        changed = False
        for p, c, latency, distance in edges:
            w = dist[p] + latency - ii * distance
            if w > dist[c]:
                dist[c] = w
                changed = True
        if not changed:
            return True
    return False


def _recurrence_bound(comp: Sequence[int], ops: Sequence[ScheduledOp]) -> int:
    """The smallest ``ii`` that the loops inside ``comp`` allow (0 if it has none)."""
    members = set(comp)
    edges = [(p, c, ops[p].cost.latency, d) for c in comp for p, d in ops[c].deps if p in members]
    if not edges:
        return 0
    lo, hi = 0, sum(ops[m].cost.latency for m in comp)
    while lo < hi:
        mid = (lo + hi) // 2
        if _feasible(comp, edges, mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


# --------------------------------------------------------------------------- scheduling


class _ModuloTable:
    """Which cycles of the repeating pattern each resource is busy.

    The pattern is ``period = duplicate * ii`` cycles, ``duplicate`` timesteps (K), so
    that an operation tagged ``(K, j)`` (it runs only at timesteps t with t mod K = j)
    holds its resources in the j-th ``ii``-cycle window only: at ``start + j * ii``. An
    untagged one holds them at ``start + m * ii`` for every m < K. With K = 1 the
    pattern is the ``ii`` cycles of every timestep.
    """

    def __init__(self, ii: int, duplicate: int = 1) -> None:
        self.ii = ii
        self.duplicate = duplicate
        self.period = ii * duplicate
        self.busy: dict[str, list[tuple[int, int]]] = defaultdict(list)

    def _windows(self, tag: tuple[int, int] | None) -> Sequence[int]:
        """Where in the pattern an op of this tag runs, relative to its start."""
        return range(0, self.period, self.ii) if tag is None else (tag[1] * self.ii,)

    def window(self, tag: tuple[int, int] | None) -> int:
        """Cycles after which the reservations of an op of this tag repeat: the most it
        may hold one resource, and the starts worth trying."""
        return self.ii if tag is None else self.period

    def clash(self, resource: str, at: int, cycles: int, tag: tuple[int, int] | None = None) -> int:
        """0 if ``resource`` is free for ``cycles`` from cycle ``at`` (in every window of
        ``tag``); else how far the use must move later before it can fit (every start in
        between clashes too)."""
        for offset in self._windows(tag):
            shift = self._clash(resource, at + offset, cycles)
            if shift:
                return shift
        return 0

    def _clash(self, resource: str, at: int, cycles: int) -> int:
        if cycles == 0:
            return 0
        intervals = self.busy.get(resource)
        if not intervals:
            return 0
        a = at % self.period
        end = a + cycles
        if end > self.period:  # wraps: the next repetition's busy intervals matter
            i = bisect.bisect_left(intervals, (end - self.period, -1)) - 1
            if i >= 0:
                return intervals[i][1] + self.period - a
        i = bisect.bisect_left(intervals, (end, -1)) - 1
        if i >= 0 and intervals[i][1] > a:
            return intervals[i][1] - a
        return 0

    def reserve(
        self, resource: str, at: int, cycles: int, tag: tuple[int, int] | None = None
    ) -> None:
        if cycles == 0:
            return
        for offset in self._windows(tag):
            a = (at + offset) % self.period
            end = a + cycles
            bisect.insort(self.busy[resource], (a, min(end, self.period)))
            if end > self.period:
                bisect.insort(self.busy[resource], (0, end - self.period))

    def gaps(self, resource: str) -> list[tuple[int, int]]:
        """Free ``(start, length)`` stretches of a partly busy ``resource``, around the
        circle."""
        intervals = self.busy[resource]
        following = [*intervals[1:], (intervals[0][0] + self.period, 0)]
        gaps = []
        for (_, e), (s, _) in zip(intervals, following, strict=True):
            if s > e:
                gaps.append((e, s - e))
        return gaps


@dataclass(frozen=True)
class _Mode:
    """How one scheduling attempt places operations.

    Attributes:
        loops_first: place recurrence loops before everything else (so that nothing
            stretches them), then move each loop by whole ``ii`` to follow its inputs.
        packed: put single-resource operations into the tightest free stretch of their
            resource instead of as early as possible: more latency, less fragmentation.
    """

    loops_first: bool
    packed: bool


_MODES = (_Mode(False, False), _Mode(True, False), _Mode(True, True))
"""Tried in order at each ``ii``: the first keeps latency lowest."""


class _Scheduler:
    """Iterative modulo scheduling of fixed-latency operations on fixed resources.

    Operations are placed by list scheduling: of those whose predecessors are placed,
    the one that can start first goes next, the one with the longest path after it
    (its height) first among equals. A loop of several operations (a strongly connected
    component through state edges) is placed as a whole.
    """

    def __init__(self, ops: Sequence[ScheduledOp], duplicate: int = 1) -> None:
        self.ops = ops
        self.duplicate = duplicate
        n = len(ops)
        self.succ: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        for op in ops:
            for p, d in op.deps:
                self.succ[p].append((op.index, d))
        self.comps = _components(n, [[c for c, _ in out] for out in self.succ])
        self.comp_of = [0] * n
        for k, comp in enumerate(self.comps):
            for m in comp:
                self.comp_of[m] = k
        self.height = self._heights()
        loops = [
            k for k, comp in enumerate(self.comps) if len(comp) > 1 or self._self_loop(comp[0])
        ]
        self.loop_bound = {k: _recurrence_bound(self.comps[k], ops) for k in loops}
        self.multi = [k for k in loops if len(self.comps[k]) > 1]
        self.depth = {m: d for k in self.multi for m, d in self._depths(self.comps[k]).items()}

    def _self_loop(self, m: int) -> bool:
        return any(p == m for p, _ in self.ops[m].deps)

    def _same_step_order(self, members: Sequence[int]) -> list[int]:
        """``members`` in topological order of their same-step dependencies."""
        inside = set(members)
        waiting = {
            m: sum(1 for p, d in self.ops[m].deps if d == 0 and p in inside and p != m)
            for m in members
        }
        ready = [m for m in members if waiting[m] == 0]
        order = []
        while ready:
            m = ready.pop()
            order.append(m)
            for c, d in self.succ[m]:
                if d == 0 and c in inside and c != m:
                    waiting[c] -= 1
                    if waiting[c] == 0:
                        ready.append(c)
        return order

    def _heights(self) -> list[int]:
        """The longest same-step path of latencies from each op to the end of the step."""
        height = [0] * len(self.ops)
        for m in reversed(self._same_step_order(range(len(self.ops)))):
            after = (height[c] for c, d in self.succ[m] if d == 0 and c != m)
            height[m] = self.ops[m].cost.latency + max(after, default=0)
        return height

    def _depths(self, comp: Sequence[int]) -> dict[int, int]:
        """Cycles from the start of a loop to each of its ops along same-step
        dependencies, if no resource delayed them."""
        depth: dict[int, int] = {}
        for m in self._same_step_order(comp):
            before = (
                depth[p] + self.ops[p].cost.latency
                for p, d in self.ops[m].deps
                if d == 0 and p in depth and p != m
            )
            depth[m] = max(before, default=0)
        return depth

    @property
    def recurrence_bound(self) -> int:
        return max(self.loop_bound.values(), default=0)

    def run(self, lower_bound: int) -> tuple[int, list[int]]:
        """The smallest ``ii`` from ``lower_bound`` up (in small steps) that schedules.

        At ``cap`` (more than one timestep's whole work end to end) the first mode cannot
        fail: nothing wraps around the pattern and every loop closes.
        """
        cap = 1 + sum(
            op.cost.latency + max((c for _, _, c in op.cost.reservations), default=0)
            for op in self.ops
        )
        ii, step, tries = max(lower_bound, 1), 1, 0
        while True:
            for mode in _MODES:
                starts = self.attempt(ii, mode)
                if starts is not None:
                    return ii, starts
            if ii >= cap:
                raise RuntimeError(f"no modulo schedule at ii={ii}, above its sure bound")
            tries += 1
            if tries % 8 == 0:  # widen the steps when many small ones fail
                step *= 2
            ii = min(cap, ii + max(step, ii // 200))

    def attempt(self, ii: int, mode: _Mode) -> list[int] | None:
        """Start cycles of every op at this ``ii``, or None if this mode finds none."""
        table = _ModuloTable(ii, self.duplicate)
        start: dict[int, int] = {}
        relative: dict[int, int] = {}
        if mode.loops_first:
            for k in sorted(self.multi, key=lambda k: (-self.loop_bound[k], self.comps[k][0])):
                # Only the loop's own dependencies count here: it is moved into place later.
                placed = self._place(self.comps[k], table, mode.packed, {}, ii)
                if placed is None or not self._loop_closes(self.comps[k], placed, ii):
                    return None
                relative.update(placed)
        waiting = [0] * len(self.comps)
        for k, comp in enumerate(self.comps):
            waiting[k] = len({self.comp_of[p] for m in comp for p, _ in self.ops[m].deps} - {k})
        ready = [self._entry(k, start, ii) for k in range(len(self.comps)) if waiting[k] == 0]
        heapq.heapify(ready)
        while ready:
            *_, k = heapq.heappop(ready)
            comp = self.comps[k]
            if mode.loops_first and len(comp) > 1:
                placed = self._aligned(comp, relative, start, ii)
            else:
                floor = self._loop_floor(comp, start, ii) if len(comp) > 1 else None
                placed = self._place(comp, table, mode.packed, start, ii, floor)
                if placed is None or not self._loop_closes(comp, placed, ii):
                    return None
            start.update(placed)
            for kc in {self.comp_of[c] for m in comp for c, _ in self.succ[m]} - {k}:
                waiting[kc] -= 1
                if waiting[kc] == 0:
                    heapq.heappush(ready, self._entry(kc, start, ii))
        return [start[m] for m in range(len(self.ops))]

    def _entry(self, k: int, start: Mapping[int, int], ii: int) -> tuple[int, int, int, int]:
        """Heap entry of a ready component: earliest start, then height, then index."""
        comp = self.comps[k]
        earliest = min(self._earliest(m, {}, start, ii) for m in comp)
        return earliest, -max(self.height[m] for m in comp), comp[0], k

    def _earliest(
        self, m: int, placed: Mapping[int, int], known: Mapping[int, int], ii: int
    ) -> int:
        """When ``m`` may start after its predecessors placed so far (0 if none is)."""
        earliest = 0
        for p, d in self.ops[m].deps:
            t = placed.get(p, known.get(p))
            if t is not None and p != m:
                earliest = max(earliest, t + self.ops[p].cost.latency - ii * d)
        return earliest

    def _place(
        self,
        members: Sequence[int],
        table: _ModuloTable,
        packed: bool,
        known: Mapping[int, int],
        ii: int,
        floor: Mapping[int, int] | None = None,
    ) -> dict[int, int] | None:
        """List-schedule ``members`` after their predecessors (placed here or in
        ``known``) and not before their ``floor``; reserve their resources. None if one
        finds no slot."""
        inside = set(members)
        waiting = {
            m: sum(1 for p, d in self.ops[m].deps if d == 0 and p in inside and p != m)
            for m in members
        }
        placed: dict[int, int] = {}

        def entry(m: int) -> tuple[int, int, int]:
            earliest = max(self._earliest(m, placed, known, ii), floor[m] if floor else 0)
            return earliest, -self.height[m], m

        ready = [entry(m) for m in members if waiting[m] == 0]
        heapq.heapify(ready)
        while ready:
            earliest, _, m = heapq.heappop(ready)
            op = self.ops[m]
            slot = _slot(op.cost.reservations, earliest, table, packed, op.tag)
            if slot is None:
                return None
            for resource, offset, cycles in op.cost.reservations:
                table.reserve(resource, slot + offset, cycles, op.tag)
            placed[m] = slot
            for c, d in self.succ[m]:
                if d == 0 and c in inside and c != m:
                    waiting[c] -= 1
                    if waiting[c] == 0:
                        heapq.heappush(ready, entry(c))
        return placed

    def _loop_floor(
        self, members: Sequence[int], start: Mapping[int, int], ii: int
    ) -> dict[int, int]:
        """Earliest starts that let a loop of several ops, placed where it stands, meet
        its inputs from outside without waiting inside the loop (a wait inside stretches
        the loop past ``ii``)."""
        inside = set(members)
        base = 0
        for m in members:
            for p, d in self.ops[m].deps:
                if p not in inside:
                    ready = start[p] + self.ops[p].cost.latency - ii * d
                    base = max(base, ready - self.depth[m])
        return {m: base + self.depth[m] for m in members}

    def _loop_closes(self, comp: Sequence[int], placed: Mapping[int, int], ii: int) -> bool:
        """Whether every dependency inside ``comp`` holds, loop edges included."""
        members = set(comp)
        return all(
            placed[m] + ii * d >= placed[p] + self.ops[p].cost.latency
            for m in comp
            for p, d in self.ops[m].deps
            if p in members
        )

    def _aligned(
        self, comp: Sequence[int], relative: Mapping[int, int], start: Mapping[int, int], ii: int
    ) -> dict[int, int]:
        """A loop placed first, moved by whole ``ii`` (which keeps its reservations; by
        whole ``duplicate * ii`` if it holds tagged ops) as little as it takes to follow
        its inputs from outside and to start at cycle 0 or later."""
        members = set(comp)
        tagged = any(self.ops[m].tag is not None for m in comp)
        step = ii * self.duplicate if tagged else ii
        k = -(min(relative[m] for m in comp) // step)
        for m in comp:
            for p, d in self.ops[m].deps:
                if p not in members:
                    need = start[p] + self.ops[p].cost.latency - ii * d - relative[m]
                    k = max(k, -(-need // step))
        return {m: relative[m] + k * step for m in comp}


def _slot(
    reservations: Sequence[tuple[str, int, int]],
    earliest: int,
    table: _ModuloTable,
    packed: bool,
    tag: tuple[int, int] | None = None,
) -> int | None:
    """The start, from ``earliest`` on, at which every reservation is free; None if none.

    As soon as possible; or, when ``packed`` and the op holds one resource that is partly
    busy, at the start of that resource's smallest free stretch that fits it. ``tag``:
    the op's ``(K, j)`` (it runs at timesteps t mod K = j only), or None.
    """
    if not reservations:
        return earliest
    if any(cycles > table.window(tag) for _, _, cycles in reservations):
        return None
    window = table.window(tag)
    if packed and len(reservations) == 1 and table.busy.get(reservations[0][0]):
        resource, offset, cycles = reservations[0]
        shift = 0 if tag is None else tag[1] * table.ii
        fits = [
            (length, earliest + (g0 - offset - shift - earliest) % window)
            for g0, length in table.gaps(resource)
            if length >= cycles
        ]
        if table.duplicate > 1:  # an untagged op must fit its other windows too
            fits = [(n, t) for n, t in fits if not table.clash(resource, t + offset, cycles, tag)]
        return min(fits)[1] if fits else None
    t = earliest
    while t - earliest < window:
        shift = 0
        for resource, offset, cycles in reservations:
            shift = table.clash(resource, t + offset, cycles, tag)
            if shift:
                break
        if not shift:
            return t
        t += shift
    return None


# --------------------------------------------------------------------------- entry points


def check_schedulable(graph: Graph) -> None:
    """Raise SnucError naming the first node that keeps ``graph`` from being scheduled:
    an untiled crossbar op or an unplaced tile."""
    for node in graph.nodes():
        if node.op.NAME in ("xbar.dense", "xbar.conv"):
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


def schedule_graph(graph: Graph, target: TargetSpec | None) -> Schedule:
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
    busy = _busy_cycles(ops, duplicate)
    busiest = min(busy, key=lambda r: (-busy[r], r)) if busy else ""
    scheduler = _Scheduler(ops, duplicate)
    lower_bound = max(busy.get(busiest, 0), scheduler.recurrence_bound, 1)
    ii, starts = scheduler.run(lower_bound)
    ops = [replace(op, start=t) for op, t in zip(ops, starts, strict=True)]
    return Schedule(
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


@register_pass
@dataclass(frozen=True)
class SchedulePass(Pass):
    """Check that the graph can be scheduled on the target; returns the graph itself.

    The schedule is a pure function of graph and target, so the pass attaches nothing:
    the driver calls :func:`schedule_graph` on the final graph to emit the program and
    the report. Running the scheduler here reports an unschedulable graph (an untiled
    or unplaced crossbar op, an op without an instruction) at this stage of the pipeline.
    """

    name: ClassVar[str] = "schedule"

    def run(self, graph: Graph, target: TargetSpec | None) -> Graph:
        schedule_graph(graph, target)
        return graph
