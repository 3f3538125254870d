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

The pass rewrites the graph in place through its use-lists: a dense's tiles and sums are
inserted just before it and the dense itself becomes the last of them, so the nodes keep
their order (the tiles where the dense was) and the pass costs time linear in the graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from snuc.ir.errors import SnucError
from snuc.ir.graph import Graph, Node
from snuc.ir.ops import Add, Concat, CrossbarMVM, Op
from snuc.ir.target import DEFAULT_TARGET, parse_target
from snuc.passes.base import Pass, register_pass

if TYPE_CHECKING:
    from snuc.ir.target import TargetSpec


def target_or_default(target: TargetSpec | None) -> TargetSpec:
    """``target``, or the default target (SPEC §3: ``pcm-256x256``) when none is given."""
    return parse_target(DEFAULT_TARGET) if target is None else target


def blocks(size: int, limit: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges covering ``0..size`` in order, each at most ``limit`` long."""
    return [(start, min(start + limit, size)) for start in range(0, size, limit)]


def tile_dense(graph: Graph, node: Node, target: TargetSpec, first_tile: int) -> int:
    """Replace ``xbar.dense`` ``node`` by its tiles and their sums, in place.

    The tiles and partial sums go just before the dense; the dense itself becomes the
    last of them (the concat, the last sum or the only tile), keeping its name.

    Args:
        graph: the graph ``node`` belongs to.
        node: the ``xbar.dense``.
        target: gives the block sizes.
        first_tile: the number of the first tile.

    Returns:
        The number of the next tile.

    Raises:
        SnucError: the weight matrix has no rows or no columns.
    """
    x, weight = node.inputs
    k, n = graph.type_of(weight).shape
    if k == 0 or n == 0:
        raise SnucError(
            f"{node.loc.prefix()}xbar.dense %{node.id} has an empty weight matrix @{weight} "
            f"[{k}, {n}]; a crossbar needs at least one row and column of weights"
        )
    row_blocks = blocks(k, target.rows)
    col_blocks = blocks(n, target.weight_cols)
    layer = node.id

    def insert(op: Op, inputs: tuple[str, ...], hint: str) -> str:
        return graph.add_node(op, inputs, graph.fresh(hint), node.loc, before=node)[0]

    if len(row_blocks) == 1 and len(col_blocks) == 1:
        op = CrossbarMVM(layer=layer, tile=first_tile, rows=row_blocks[0], cols=col_blocks[0])
        graph.rewrite_node(node, op, (x, weight))
        return first_tile + 1
    tiles: dict[tuple[int, int], str] = {}
    tile = first_tile
    for i, rows in enumerate(row_blocks):
        for j, cols in enumerate(col_blocks):
            op = CrossbarMVM(layer=layer, tile=tile, rows=rows, cols=cols)
            tiles[i, j] = insert(op, (x, weight), f"{layer}_t{tile}")
            tile += 1
    sums = []
    for j in range(len(col_blocks)):
        total = tiles[0, j]
        for i in range(1, len(row_blocks)):
            operands = (total, tiles[i, j])
            if i < len(row_blocks) - 1:
                total = insert(Add(), operands, f"{layer}_c{j}_r{i}")
            elif len(col_blocks) == 1:
                graph.rewrite_node(node, Add(), operands)
                return tile
            else:
                total = insert(Add(), operands, f"{layer}_c{j}")
        sums.append(total)
    graph.rewrite_node(node, Concat(axis=-1), sums)
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
        graph = graph.copy()
        nodes = list(graph.nodes())
        existing = [n.op.tile for n in nodes if isinstance(n.op, CrossbarMVM)]
        next_tile = max(existing, default=-1) + 1
        for node in nodes:
            if node.op.NAME == "xbar.dense":
                next_tile = tile_dense(graph, node, target, next_tile)
        return graph
