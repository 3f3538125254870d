"""Float mode: a layer's crossbar tiles computed as the one product they decompose.

The ``tile`` pass cuts ``%L = xbar.dense(%x, @W)`` into ``xbar.mvm`` windows of ``W``: the
row blocks of a column block are added by a left fold of ``dig.add`` in row order, the
column blocks joined by ``dig.concat`` along the last axis, and the final value keeps the
name ``L`` (every tile's ``layer``). In ``float`` mode a tile is its exact window product,
so ``L`` is ``x @ W``: the row blocks' partial sums only regroup the float32 sum (a
difference of float32 rounding, as between any two BLAS kernels), and column blocks do not
change it at all. One product of the whole matrix costs one call where the tiles cost one
per tile, add and concat, and BLAS runs one large product faster than many small ones.

Only that exact structure is fused; anything else (a tile read elsewhere, a window missing
or overlapping, another combination) stays as it is. Quantised modes never fuse: there
every tile has its own conductances, converters and noise.
"""

from __future__ import annotations

from collections import defaultdict

from snuc.ir.graph import Graph, Node
from snuc.ir.ops import Dense


def fuse_float_tiles(graph: Graph) -> Graph:
    """``graph`` with each fully tiled dense layer as one ``xbar.dense`` (module docstring).

    Returns ``graph`` itself when nothing fuses, else a new graph sharing its constants.
    """
    users: dict[str, list[Node]] = defaultdict(list)
    for node in graph.nodes():
        for v in dict.fromkeys(node.inputs):
            users[v].append(node)
    by_layer: dict[str, list[Node]] = defaultdict(list)
    for node in graph.nodes():
        if node.op.NAME == "xbar.mvm":
            by_layer[node.op.layer].append(node)
    dropped: set[str] = set()
    replaced: dict[str, Node] = {}
    for layer, tiles in by_layer.items():
        group = _tile_group(graph, layer, tiles, users)
        if group is not None:
            dropped |= group
            (x, w) = tiles[0].inputs
            last = graph.producer(layer)
            replaced[last.id] = Node(Dense(), (x, w), (layer,), last.loc)
    if not replaced:
        return graph
    return _rebuilt(graph, dropped, replaced)


def _tile_group(
    graph: Graph, layer: str, tiles: list[Node], users: dict[str, list[Node]]
) -> set[str] | None:
    """The ids of the nodes that compute ``layer`` from ``tiles``, or None if they do not
    form exactly the tile pass's structure over the whole weight."""
    if len(tiles) < 2 or not graph.has_value(layer) or graph.producer(layer) is None:
        return None
    x, w = tiles[0].inputs
    if any(t.inputs != (x, w) for t in tiles) or w not in graph.constants:
        return None
    k, n = graph.constants[w].shape
    blocks: dict[tuple[int, ...], list[Node]] = defaultdict(list)
    for t in tiles:
        blocks[t.op.cols].append(t)
    columns = sorted(blocks)
    if not _partition(columns, n):
        return None
    column_values, nodes = [], set()
    for cols in columns:
        row_tiles = sorted(blocks[cols], key=lambda t: t.op.rows)
        if not _partition([t.op.rows for t in row_tiles], k):
            return None
        value = row_tiles[0].id
        nodes.add(value)
        for t in row_tiles[1:]:
            (add,) = users[value] if len(users[value]) == 1 else (None,)
            if add is None or add.op.NAME != "dig.add" or add.inputs != (value, t.id):
                return None
            nodes |= {t.id, add.id}
            value = add.id
        column_values.append(value)
    if len(columns) > 1:
        concat = graph.producer(layer)
        rank = graph.type_of(layer).rank
        if (
            concat.op.NAME != "dig.concat"
            or concat.op.axis not in (-1, rank - 1)
            or list(concat.inputs) != column_values
        ):
            return None
        nodes.add(concat.id)
    elif column_values != [layer]:
        return None
    inner = nodes - {graph.producer(layer).id}
    for node_id in inner:
        outside = [u for u in users[node_id] if u.id not in nodes]
        if outside or graph.uses_outside_nodes(node_id) or len(users[node_id]) != 1:
            return None
    return nodes


def _partition(windows: list[tuple[int, ...]], size: int) -> bool:
    """Whether sorted ``(start, stop)`` windows cover ``[0, size)`` end to end."""
    edge = 0
    for start, stop in windows:
        if start != edge:
            return False
        edge = stop
    return edge == size


def _rebuilt(graph: Graph, dropped: set[str], replaced: dict[str, Node]) -> Graph:
    """A new graph without the ``dropped`` nodes, with ``replaced`` ones swapped in."""
    new = Graph(graph.name)
    for name, array in graph.constants.items():
        new.add_constant(name, array, copy=False)
    for name in graph.inputs:
        new.add_input(name, graph.type_of(name))
    for s in graph.states:
        new.add_state(s.name, graph.type_of(s.name))
    for node in graph.nodes():
        node = replaced.get(node.id, node)
        if node.id in dropped and node.id not in replaced:
            continue
        new.add_node(node.op, node.inputs, node.outputs, node.loc)
    for s in graph.states:
        new.set_next(s.name, s.next)
    new.outputs = list(graph.outputs)
    return new
