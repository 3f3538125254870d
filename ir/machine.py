"""The modelled chip, below every stage: units, routes, costs and the digital-op table.

The chip (docs/isa.md) is a set of *units*: cores, each a crossbar with its ADCs and a
local digital unit (LDU), and one global digital unit (GDU) per chip; an on-chip mesh
network joins the cores of a chip, and a slower link joins the chips. This module owns
that machine model, read from a :class:`~snuc.ir.target.TargetSpec`:

* :class:`Unit` and :func:`check_unit`: where work runs;
* :func:`route`: the links a transfer crosses (XY routing on each chip's mesh);
* :class:`Cost` and the cost functions (:func:`mvm_cost`, :func:`digital_cost`,
  :func:`neuron_cost`, :func:`vector_cost`, :func:`transfer_cost`): cycles, latency,
  energy and resource reservations of each kind of work (a neuron model's update on the
  neuron units, with the neuron-unit keys of :mod:`snuc.ir.neurons`), and
  :func:`crossbar_work`, the crossbars' MVM cycles per timestep;
* :data:`DIGITAL_OPS`, :data:`MNEMONIC_OF` and :func:`fixed_ops`: the vector instructions of
  the digital units, by mnemonic and by the op class they compute.

The instructions themselves, each with its cost, are :mod:`snuc.ir.machine_isa`. The
scheduler (:mod:`snuc.backends.schedule`), the program checks (:mod:`snuc.backends.isa`,
:mod:`snuc.backends.timing`), the assembly and the simulator all read the chip here.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from snuc.ir import ops
from snuc.ir.crossbar import guaranteed_ranges
from snuc.ir.elementwise import ELEMENTWISE
from snuc.ir.errors import SnucError, VerifyError
from snuc.ir.graph import Graph, Node
from snuc.ir.neurons import NEURON_OPS, NeuronOp, cost_keys
from snuc.ir.ops import CrossbarMVM, Op
from snuc.ir.target import TargetSpec

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


def neuron_cost(target: TargetSpec, unit: Unit, n: int, model: type[NeuronOp]) -> Cost:
    """The update of ``n`` neurons of ``model`` on ``unit``'s neuron units.

    ``neuron_<model>_cycles`` per ``digital_lanes`` neurons and ``neuron_<model>_energy_pj``
    per neuron (:func:`~snuc.ir.neurons.cost_keys`; the same work as loose vector ops
    costs :func:`digital_cost`).
    """
    cycles_key, energy_key = cost_keys(model)
    cycles = getattr(target, cycles_key) * math.ceil(n / target.digital_lanes)
    if cycles == 0:
        return FREE
    energy = n * getattr(target, energy_key)
    return Cost(cycles, cycles, (("digital", energy),), ((unit.compute_resource(), 0, cycles),))


def vector_cost(target: TargetSpec, unit: Unit, mnemonic: str, n: int, ops: int) -> Cost:
    """A vector instruction over ``n`` elements: a neuron model's on the neuron units
    (:func:`neuron_cost`), any other's as ``ops`` digital operations (:func:`digital_cost`)."""
    op = DIGITAL_OPS[mnemonic].op
    if issubclass(op, NeuronOp):
        return neuron_cost(target, unit, n, op)
    return digital_cost(target, unit, n, ops)


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
        op: the IR op class it computes (its attributes are the instruction's).
        ops: operations per element; None when it depends on the operands' shapes (the
            instruction then states it).
        gdu_only: only a GDU runs it (reductions, normalisation, table look-ups, digital
            matrix products); an LDU runs the others too.
        meaning: one line for docs and errors.
    """

    op: type[Op]
    ops: int | None
    gdu_only: bool
    meaning: str


def _op(op: type[Op], n_ops: int | None, meaning: str, gdu_only: bool = False) -> DigitalOp:
    return DigitalOp(op, n_ops, gdu_only, meaning)


DIGITAL_OPS: Mapping[str, DigitalOp] = MappingProxyType(
    {
        "acc": _op(ops.Add, 1, "accumulate crossbar partial sums: z = x + y"),
        "scale": _op(ops.Mul, 1, "z = x * c with c a constant (affine scaling)"),
        "div": _op(ops.Div, 1, "z = x / y"),
        "relu": _op(ops.Relu, 1, "y = max(x, 0)"),
        "leaky_relu": _op(ops.LeakyRelu, 1, "y = x if x >= 0 else alpha * x"),
        "sigmoid": _op(ops.Sigmoid, 1, "y = 1 / (1 + exp(-x)) (table and interpolation)"),
        "step": _op(ops.Step, 1, "y = 1 where x > 0 else 0 (spike)"),
        "cast": _op(ops.Cast, 1, "y = x converted to another dtype"),
        "where": _op(ops.Where, 1, "z = x where c else y"),
        **{cls.MNEMONIC: _op(cls, None, cls.MEANING) for cls in NEURON_OPS.values()},
        "reshape": _op(ops.Reshape, 0, "view of a buffer in another shape (free)"),
        "transpose": _op(ops.Transpose, 1, "copy with permuted axes"),
        "concat": _op(ops.Concat, 1, "copy buffers side by side"),
        "im2col": _op(ops.Im2Col, 1, "copy convolution patches"),
        "maxpool": _op(ops.MaxPool, None, "maximum over each window"),
        "avgpool": _op(ops.AvgPool, None, "mean over each window"),
        "gather": _op(ops.Gather, 1, "table look-up (embedding)", gdu_only=True),
        "reduce_sum": _op(ops.ReduceSum, 1, "sum over axes", gdu_only=True),
        "reduce_mean": _op(ops.ReduceMean, 1, "mean over axes", gdu_only=True),
        "softmax": _op(ops.Softmax, 4, "softmax along an axis", gdu_only=True),
        "log_softmax": _op(ops.LogSoftmax, 4, "log-softmax along an axis", gdu_only=True),
        "matmul": _op(ops.MatMul, None, "digital matrix product", gdu_only=True),
        "conv": _op(ops.DigitalConv, None, "digital convolution", gdu_only=True),
        **{e.mnemonic: _op(cls, e.cost, e.meaning) for cls, e in ELEMENTWISE.items()},
    }
)
"""Every vector instruction, by mnemonic. ``ops`` counts one pass over the elements per
operation: a neuron model's fused update as many as its loose ops (the SNU's 7, 6 with
g = identity; :meth:`~snuc.ir.neurons.NeuronOp.ops_per_element`), a softmax 4 (max, exp, sum,
divide); a pooling window of k elements k; a digital matrix product K per output."""

MNEMONIC_OF: Mapping[type[Op], str] = MappingProxyType(
    {info.op: name for name, info in DIGITAL_OPS.items() if name not in ("acc", "scale")}
)
"""By op class, the instruction that runs it on the digital units (the chip cost of a
digital op); ``acc`` and ``scale`` are the special cases of ``add`` and ``mul`` the
scheduler picks from the operands."""


def fixed_ops(mnemonic: str, attrs: Mapping[str, object]) -> int | None:
    """Operations per element of ``mnemonic`` with IR attributes ``attrs``; None if it
    depends on the operands' shapes (``matmul``, ``conv``)."""
    op = DIGITAL_OPS[mnemonic].op
    if issubclass(op, NeuronOp):
        return op(**attrs).ops_per_element()
    if mnemonic in ("maxpool", "avgpool"):
        kernel = attrs.get("kernel", (2, 2))
        return int(math.prod(kernel))
    return DIGITAL_OPS[mnemonic].ops
