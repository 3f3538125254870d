"""Iterative modulo scheduling (after Rau 1994) of placed operations on the chip's resources.

The planner (:mod:`snuc.backends.schedule`) binds every node of a graph to a unit and
turns it into :class:`Placement` records: an instruction (:mod:`snuc.ir.machine_isa`) on a
unit, with its cost and its dependencies. This module gives every one a start cycle such
that a new timestep can start every ``ii`` cycles, layer k of step t running beside layer
k+1 of step t-1. Dependencies inside a step and across steps (state edges) hold, and no
resource (a crossbar, an LDU, a GDU, a network link) runs two operations at once in the
repeating pattern (the :class:`_ModuloTable` the placement fills).

It owns the bounds (:func:`recurrence_bound` of a loop, by Bellman-Ford on
``latency - ii * distance``) and the search: :class:`ModuloScheduler` tries ``ii`` from the
lower bound up, each with the placement modes of :data:`_MODES`.
"""

from __future__ import annotations

import bisect
import heapq
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from snuc.ir.machine import Cost, Unit
from snuc.ir.machine_isa import Instruction
from snuc.ir.scc import strongly_connected


@dataclass(frozen=True)
class Placement:
    """One instruction of one timestep, bound to a unit, as the scheduler places it.

    The instruction alone is what the program holds; a placement adds what only the
    scheduler needs: the unit (a program's block), the cost there (read at every
    placement try), the dependencies and the IR node (for the report and the tests).

    Attributes:
        index: position in the schedule's operations.
        instr: the instruction; its ``start`` is the cycle it starts at within its
            timestep (0 until scheduled).
        unit: where it runs (for ``send``: the source).
        cost: ``instr.cost(target, unit)``.
        deps: ``(op index, distance)``: it needs that op's result from ``distance``
            timesteps earlier (0: the same step; 1 and more: through states).
        node: the IR node it computes ("" for transfers).
    """

    index: int
    instr: Instruction
    unit: Unit
    cost: Cost
    deps: tuple[tuple[int, int], ...] = ()
    node: str = ""

    @property
    def start(self) -> int:
        return self.instr.start

    @property
    def end(self) -> int:
        """The cycle from which its result can be used."""
        return self.instr.start + self.cost.latency

    @property
    def mnemonic(self) -> str:
        return self.instr.mnemonic

    @property
    def tag(self) -> tuple[int, int] | None:
        return self.instr.tag

    @property
    def results(self) -> tuple[str, ...]:
        return self.instr.results

    @property
    def operands(self) -> tuple[str, ...]:
        return self.instr.operands


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


def recurrence_bound(comp: Sequence[int], ops: Sequence[Placement]) -> int:
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


class ModuloScheduler:
    """Iterative modulo scheduling of fixed-latency operations on fixed resources.

    Operations are placed by list scheduling: of those whose predecessors are placed,
    the one that can start first goes next, the one with the longest path after it
    (its height) first among equals. A loop of several operations (a strongly connected
    component through state edges) is placed as a whole.
    """

    def __init__(self, ops: Sequence[Placement], duplicate: int = 1) -> None:
        self.ops = ops
        self.duplicate = duplicate
        n = len(ops)
        self.succ: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        for op in ops:
            for p, d in op.deps:
                self.succ[p].append((op.index, d))
        self.comps = strongly_connected(n, [[c for c, _ in out] for out in self.succ])
        self.comp_of = [0] * n
        for k, comp in enumerate(self.comps):
            for m in comp:
                self.comp_of[m] = k
        self.height = self._heights()
        loops = [
            k for k, comp in enumerate(self.comps) if len(comp) > 1 or self._self_loop(comp[0])
        ]
        self.loop_bound = {k: recurrence_bound(self.comps[k], ops) for k in loops}
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
