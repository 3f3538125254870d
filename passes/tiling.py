"""``tile``: cut every crossbar weight matrix into tiles that fit one crossbar (SPEC §4).

Each ``xbar.dense(x, W[K, N])`` becomes ``xbar.mvm`` tiles over row blocks of at most
``target.rows`` weight rows and column blocks of at most ``target.weight_cols`` weight
columns (a weight takes ``2 * devices_per_polarity`` devices side by side in one row, so a
tile of k weight columns is ``2 * dpp * k`` device columns wide)::

    %fc = xbar.dense(%x, @W)            # W: f32[600, 300] on pcm-256x256 (128 weights a row)

    %fc_t0 = xbar.mvm(%x, @W) {rows = [0, 256],   cols = [0, 128], ...}
    %fc_t1 = xbar.mvm(%x, @W) {rows = [0, 256],   cols = [128, 256], ...}
    ...
    %fc_c0_r1 = dig.add(%fc_t0, %fc_t3)          # row blocks' partial sums, left to right
    %fc_c0 = dig.add(%fc_c0_r1, %fc_t6)
    ...
    %fc = dig.concat(%fc_c0, %fc_c1, %fc_c2) {axis = -1}

Blocks are cut greedily (full blocks, then the remainder). Tile numbers are unique in the
graph and deterministic: graph order, then row block, then column block. Every tile
refers to the whole weight constant and names its window, so tiling copies no weights. The
final value keeps the dense's name (a single tile takes it itself), and every tile's
``layer`` is that name. Results equal the dense's up to float32 rounding of the re-grouped
sums (the interpreter sums a row block's products, then the blocks).

The module also holds :func:`rebuild_graph`, which ``lower-conv`` shares: building a new
graph in one sweep keeps the nodes in source order and costs time linear in the graph,
where rewriting thousands of tiles in place would not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from snuc.ir.errors import SnucError
from snuc.ir.graph import Graph, Node
from snuc.ir.ops import Add, Concat, CrossbarMVM
from snuc.ir.target import DEFAULT_TARGET, parse_target
from snuc.passes.base import Pass, register_pass

if TYPE_CHECKING:
    from snuc.ir.target import TargetSpec


def target_or_default(target: TargetSpec | None) -> TargetSpec:
    """``target``, or the default target (SPEC §3: ``pcm-256x256``) when none is given."""
    return parse_target(DEFAULT_TARGET) if target is None else target


def unused_name(old: Graph, new: Graph, hint: str) -> str:
    """A value name taken neither in ``old`` nor in ``new`` (``hint``, ``hint_1``, ...)."""
    name = new.fresh(hint)
    i = 0
    while old.has_value(name) or new.has_value(name):
        i += 1
        name = new.fresh(f"{hint}_{i}")
    return name


def rebuild_graph(
    graph: Graph,
    lower: Callable[[Graph, Node], bool],
    constants: Callable[[Graph, str], None] | None = None,
) -> Graph:
    """A new graph with ``graph``'s interface, its nodes passed one by one through ``lower``.

    Inputs, states and outputs keep their names. Nodes are visited in ``graph.nodes()``
    order; ``lower(new, node)`` either adds what replaces ``node`` to ``new`` (under
    ``node``'s result names, so later nodes find them) and returns True, or returns False
    and the node is copied as it is. Constant arrays are shared, never copied.

    Args:
        graph: the graph to rebuild; it is not modified.
        lower: adds a node's replacement, or declines.
        constants: ``constants(new, name)`` adds what replaces constant ``name`` (in the
            constants' order); by default every constant is kept.

    Returns:
        The new graph.
    """
    new = Graph(graph.name)
    for name, array in graph.constants.items():
        if constants is None:
            new.add_constant(name, array, copy=False)
        else:
            constants(new, name)
    for name in graph.inputs:
        new.add_input(name, graph.type_of(name))
    for s in graph.states:
        new.add_state(s.name, graph.type_of(s.name))
    for node in graph.nodes():
        if not lower(new, node):
            new.add_node(node.op, node.inputs, node.outputs, node.loc)
    for s in graph.states:
        new.set_next(s.name, s.next)
    new.outputs = list(graph.outputs)
    return new


def blocks(size: int, limit: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges covering ``0..size`` in order, each at most ``limit`` long."""
    return [(start, min(start + limit, size)) for start in range(0, size, limit)]


def tile_dense(source: Graph, new: Graph, node: Node, target: TargetSpec, first_tile: int) -> int:
    """Add the tiles of ``xbar.dense`` ``node`` (of ``source``) and their sums to ``new``.

    Args:
        source: the graph ``node`` belongs to (its names stay reserved).
        new: the graph being built.
        node: the ``xbar.dense``.
        target: gives the block sizes.
        first_tile: the number of the first tile.

    Returns:
        The number of the next tile.

    Raises:
        SnucError: the weight matrix has no rows or no columns.
    """
    x, weight = node.inputs
    k, n = source.type_of(weight).shape
    if k == 0 or n == 0:
        raise SnucError(
            f"{node.loc.prefix()}xbar.dense %{node.id} has an empty weight matrix @{weight} "
            f"[{k}, {n}]; a crossbar needs at least one row and column of weights"
        )
    row_blocks = blocks(k, target.rows)
    col_blocks = blocks(n, target.weight_cols)
    layer = node.id
    single = len(row_blocks) == 1 and len(col_blocks) == 1

    def name(hint: str) -> str:
        return unused_name(source, new, hint)

    tiles: dict[tuple[int, int], str] = {}
    tile = first_tile
    for i, rows in enumerate(row_blocks):
        for j, cols in enumerate(col_blocks):
            op = CrossbarMVM(layer=layer, tile=tile, rows=rows, cols=cols)
            result = layer if single else name(f"{layer}_t{tile}")
            tiles[i, j] = new.add_node(op, (x, weight), result, node.loc)[0]
            tile += 1
    if single:
        return tile
    sums = []
    for j in range(len(col_blocks)):
        total = tiles[0, j]
        for i in range(1, len(row_blocks)):
            if i < len(row_blocks) - 1:
                result = name(f"{layer}_c{j}_r{i}")
            else:
                result = layer if len(col_blocks) == 1 else name(f"{layer}_c{j}")
            total = new.add_node(Add(), (total, tiles[i, j]), result, node.loc)[0]
        sums.append(total)
    if len(sums) > 1:
        new.add_node(Concat(axis=-1), sums, layer, node.loc)
    return tile


@register_pass
@dataclass(frozen=True)
class Tile(Pass):
    """Cut every ``xbar.dense`` into ``xbar.mvm`` tiles of at most one crossbar each.

    ``None`` as the target means the default target. Tiles already in the graph are kept;
    new tile numbers follow theirs.
    """

    name: ClassVar[str] = "tile"

    def run(self, graph: Graph, target: TargetSpec | None) -> Graph:
        target = target_or_default(target)
        existing = [n.op.tile for n in graph.nodes() if isinstance(n.op, CrossbarMVM)]
        next_tile = max(existing, default=-1) + 1

        def lower(new: Graph, node: Node) -> bool:
            nonlocal next_tile
            if node.op.NAME != "xbar.dense":
                return False
            next_tile = tile_dense(graph, new, node, target, next_tile)
            return True

        return rebuild_graph(graph, lower)
