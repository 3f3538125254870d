"""``place``: give every crossbar tile a crossbar and a position on it (SPEC §4).

A tile of ``rows = (r0, r1)`` and ``cols = (c0, c1)`` occupies ``r1 - r0`` device rows and
``2 * devices_per_polarity * (c1 - c0)`` device columns (each weight's G+ and G− devices
side by side in one row). :func:`pack_tiles` packs these rectangles onto ``R x C``
crossbars so that none overlaps another or the crossbar's edge; several small tiles may
share a crossbar. The pass writes each tile's ``crossbar`` (global index
``chip * cores + core``: crossbars fill chip 0 first), ``xbar_row`` and ``xbar_col``.

Sharing is safe for the arithmetic: an MVM of one tile drives only its own rows and reads
only its own columns (the other tiles on those rows are not read), and tiles sharing a
crossbar take turns, which the schedule accounts for.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

from snuc.ir.errors import SnucError
from snuc.ir.graph import Graph
from snuc.ir.machine import crossbar_work
from snuc.ir.ops import CrossbarMVM
from snuc.passes.base import Pass, register_pass
from snuc.passes.tiling import target_or_default

if TYPE_CHECKING:
    from snuc.ir.target import TargetSpec


PLACEMENTS = ("pack", "spread")
"""Placement strategies of the ``place`` pass (see :class:`Place`)."""


@dataclass(frozen=True)
class Slot:
    """Where one tile sits: its crossbar and its first device row and column on it."""

    crossbar: int
    row: int
    col: int


@dataclass
class _Shelf:
    """A band of rows on one crossbar, filled left to right; ``used`` columns are taken."""

    crossbar: int
    row: int
    height: int
    used: int


def pack_tiles(sizes: Sequence[tuple[int, int]], rows: int, cols: int) -> list[Slot]:
    """Pack rectangles of ``(device rows, device columns)`` onto ``rows x cols`` crossbars.

    Shelf first-fit decreasing height, over all crossbars at once: tiles are taken in
    order of decreasing height (then width, then their index in ``sizes``); each goes to
    the leftmost free place of the first shelf, in (crossbar, row) order, that has room;
    failing that, on a new shelf at the bottom of the first crossbar with enough rows
    left; failing that, on a new crossbar. Shelves are as high as the first (highest) tile
    placed on them. The packing is deterministic, rectangles never overlap or cross a
    crossbar's edge, and every tile opens at most one crossbar, so the count never exceeds
    the number of tiles (one tile per crossbar).

    Args:
        sizes: each tile's height and width in devices, each at least 1.
        rows, cols: the crossbar's size in devices.

    Returns:
        One :class:`Slot` per tile, in the order of ``sizes``; crossbars are numbered
        0, 1, ... without gaps.

    Raises:
        ValueError: a size is not positive or does not fit one crossbar.
    """
    for i, (h, w) in enumerate(sizes):
        if not (1 <= h <= rows and 1 <= w <= cols):
            raise ValueError(
                f"tile {i} of {h} x {w} devices does not fit a {rows} x {cols} crossbar"
            )
    if not sizes:
        return []
    narrowest = min(w for _, w in sizes)
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i][0], -sizes[i][1], i))
    shelves: list[_Shelf] = []  # shelves with room for the narrowest tile, (crossbar, row) order
    free_rows: list[int] = []  # by crossbar: rows below its last shelf
    roomy: list[int] = []  # crossbars with free rows, ascending
    slots: list[Slot | None] = [None] * len(sizes)
    for i in order:
        h, w = sizes[i]
        # Heights only decrease, so every open shelf is high enough; only width matters.
        shelf = next((s for s in shelves if cols - s.used >= w), None)
        if shelf is None:
            crossbar = next((c for c in roomy if free_rows[c] >= h), None)
            if crossbar is None:
                crossbar = len(free_rows)
                free_rows.append(rows)
                roomy.append(crossbar)
            shelf = _Shelf(crossbar, rows - free_rows[crossbar], h, 0)
            free_rows[crossbar] -= h
            if free_rows[crossbar] == 0:
                roomy.remove(crossbar)
            bisect.insort(shelves, shelf, key=lambda s: (s.crossbar, s.row))
        slots[i] = Slot(shelf.crossbar, shelf.row, shelf.used)
        shelf.used += w
        if cols - shelf.used < narrowest:
            shelves.remove(shelf)
    return slots  # type: ignore[return-value]


def tile_footprint(op: CrossbarMVM, target: TargetSpec) -> tuple[int, int]:
    """The device rows and device columns tile ``op`` occupies on ``target``'s crossbars."""
    return op.rows[1] - op.rows[0], target.devices_per_weight * (op.cols[1] - op.cols[0])


def crossbars_bound(shapes: Sequence[tuple[int, int]], target: TargetSpec) -> int:
    """Crossbars the weight matrices ``[K, N]`` take at one tile per crossbar.

    ``sum ceil(K / R) * ceil(N / weight_cols)``; :func:`pack_tiles` never needs more. It
    equals ``sum ceil(K / R) * ceil(2 * dpp * N / C)`` when ``C`` is a multiple of
    ``2 * dpp`` (every preset), and can exceed it otherwise: a weight's devices cannot be
    split over two crossbars, so ``C mod 2 * dpp`` columns of each crossbar stay unused.
    """
    return sum(math.ceil(k / target.rows) * math.ceil(n / target.weight_cols) for k, n in shapes)


def check_capacity(needed: int, target: TargetSpec, why: str = "") -> None:
    """Raise SnucError (one line, with the counts) if ``needed`` crossbars exceed ``target``'s.

    ``why`` follows the count in the message (`` with --duplicate 2, 3 of them copies``).
    """
    if needed <= target.crossbars_available:
        return
    chips = math.ceil(needed / target.cores)
    raise SnucError(
        f"model needs {needed} crossbars{why} ({chips} chips of {target.cores} cores); target "
        f"{target.name} has {target.crossbars_available} (chips={target.chips}); "
        f"compile with --chips {chips}"
    )


def check_duplicate(duplicate: object) -> int:
    """``duplicate`` (``--duplicate K``) as an int >= 1; a one-line SnucError otherwise."""
    if isinstance(duplicate, bool) or not isinstance(duplicate, int) or duplicate < 1:
        raise SnucError(
            f"--duplicate takes an integer >= 1 (copies of each busy crossbar), got {duplicate!r}"
        )
    return duplicate


def duplicate_crossbars(graph: Graph, target: TargetSpec, duplicate: int) -> Graph:
    """``graph`` (placed) with every busy crossbar's tiles copied onto spare crossbars.

    A crossbar whose MVM cycles per timestep are more than ``1 / duplicate`` of the
    busiest crossbar's (:func:`~snuc.ir.machine.crossbar_work`) gets ``duplicate - 1``
    copies, each on a crossbar of its own after the ones in use (the copies of the first
    such crossbar first), holding copies of all its tiles at their positions. Each copy
    of a tile takes a new tile number after the largest in use, in order of tile number
    and copy. Timestep t is served by copy ``t mod duplicate`` (docs/isa.md).

    Raises:
        SnucError: the copies need more crossbars than ``cores * chips``.
    """
    tiles = sorted(
        (n for n in graph.nodes() if isinstance(n.op, CrossbarMVM)), key=lambda n: n.op.tile
    )
    if duplicate == 1 or not tiles:
        return graph
    work = crossbar_work(graph, target)
    busiest = max(work.values())
    chosen = sorted(c for c, cycles in work.items() if cycles * duplicate > busiest)
    used = max(work) + 1
    extra = duplicate - 1
    copied = len(chosen) * extra
    check_capacity(used + copied, target, f" with --duplicate {duplicate}, {copied} of them copies")
    copies = {c: tuple(used + i * extra + j for j in range(extra)) for i, c in enumerate(chosen)}
    graph = graph.copy()
    number = max(n.op.tile for n in tiles) + 1
    for node in tiles:
        if node.op.crossbar in copies:
            numbers = tuple(range(number, number + extra))
            number += extra
            graph.replace_op(
                node, replace(node.op, copies=copies[node.op.crossbar], copy_tiles=numbers)
            )
    return graph


@register_pass
@dataclass(frozen=True)
class Place(Pass):
    """Place every ``xbar.mvm`` tile on a crossbar with :func:`pack_tiles`.

    Every tile is placed afresh, in tile-number order. ``None`` as the target means the
    default target.

    Attributes:
        strategy: ``"pack"`` (default) shares crossbars between small tiles, fewest
            crossbars; ``"spread"`` gives every tile a crossbar of its own, so no two MVMs
            queue for one crossbar: more crossbars for a shorter timestep.
        duplicate: K (``--duplicate``): every crossbar with more than 1/K of the busiest
            crossbar's MVM work gets K - 1 copies on spare crossbars
            (:func:`duplicate_crossbars`), and timesteps take turns between the copies:
            up to K times the crossbars for up to a K-times shorter timestep. 1 (default):
            no copies.

    Raises:
        SnucError: a tile does not fit the target's crossbar (it was tiled for another
            target), or the model (with its copies) needs more crossbars than
            ``cores * chips``; ``duplicate`` is not an integer >= 1.
    """

    name: ClassVar[str] = "place"
    strategy: str = "pack"
    duplicate: int = 1

    def __post_init__(self) -> None:
        if self.strategy not in PLACEMENTS:
            raise SnucError(
                f"unknown placement {self.strategy!r}; expected one of {', '.join(PLACEMENTS)}"
            )
        check_duplicate(self.duplicate)

    def run(self, graph: Graph, target: TargetSpec | None) -> Graph:
        target = target_or_default(target)
        graph = graph.copy()
        tiles = sorted(
            (n for n in graph.nodes() if isinstance(n.op, CrossbarMVM)), key=lambda n: n.op.tile
        )
        sizes = [tile_footprint(n.op, target) for n in tiles]
        for node, (h, w) in zip(tiles, sizes, strict=True):
            if h > target.rows or w > target.cols:
                raise SnucError(
                    f"{node.loc.prefix()}tile %{node.id} takes {h} x {w} devices, more than "
                    f"target {target.name}'s {target.rows} x {target.cols} crossbar; run the "
                    "tile pass for this target"
                )
        if self.strategy == "spread":
            slots = [Slot(i, 0, 0) for i in range(len(sizes))]
        else:
            slots = pack_tiles(sizes, target.rows, target.cols)
        check_capacity(max((s.crossbar for s in slots), default=-1) + 1, target)
        for node, slot in zip(tiles, slots, strict=True):
            op = replace(
                node.op,
                crossbar=slot.crossbar,
                xbar_row=slot.row,
                xbar_col=slot.col,
                copies=(),
                copy_tiles=(),
            )
            graph.replace_op(node, op)
        return duplicate_crossbars(graph, target, self.duplicate)
