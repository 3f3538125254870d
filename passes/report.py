"""The mapping part of the compile report (SPEC §7): crossbars, chips, tiles, utilisation.

:func:`mapping_report` reads a placed graph (after ``tile`` and ``place``) and returns
plain ints, floats, strings, lists and dicts, ready for ``json.dumps``. Device counts are
physical: a weight is ``2 * devices_per_polarity`` devices side by side in one row, so a
tile of k weight columns is ``2 * dpp * k`` device columns wide. A grouped convolution's
block-diagonal zeros (``lower-conv``) count as weights, because they occupy devices.
The copies of duplicated tiles (``--duplicate``, docs/isa.md) occupy crossbars and devices
too: they count in ``crossbars_used``, ``tiles``, ``devices`` and ``utilization``, but
not in ``weights`` (they hold the same weights).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from snuc.ir.errors import SnucError
from snuc.ir.graph import Graph
from snuc.ir.machine import HOST, neuron_cost
from snuc.ir.neurons import NeuronOp
from snuc.ir.ops import CrossbarMVM
from snuc.passes.placement import tile_footprint

if TYPE_CHECKING:
    from snuc.ir.target import TargetSpec


def mapping_report(graph: Graph, target: TargetSpec) -> dict[str, Any]:
    """What the mapping of ``graph`` onto ``target`` uses.

    Args:
        graph: a graph whose crossbar work is placed ``xbar.mvm`` tiles.
        target: the target it was placed for.

    Returns:
        A JSON-ready dict with keys ``target`` (:meth:`TargetSpec.to_dict`),
        ``crossbars_used``, ``crossbars_available``, ``chips`` (chips the tiles occupy),
        ``chips_available`` (the target's), ``tiles`` (one ``{layer, tile, crossbar, row0,
        col0, rows, cols}`` per tile and per copy of a duplicated tile, in tile-number
        order, in device rows and columns; a copy adds ``copy_of``, the number of the
        tile it copies, and ``copy``, the j of the timesteps t mod K = j it serves),
        ``utilization`` (devices used over the devices of the crossbars used; 0.0 when none
        is used), ``weights``,
        ``devices`` (``weights * 2 * dpp``, and the copies' devices) and ``layers`` (per
        layer in order of first tile: ``{layer, weights, tiles, crossbars}``, copies'
        crossbars included) and ``neurons`` (per neuron layer in graph order: ``{layer,
        model, neurons, cycles, energy_pj}``, the ``snu.*`` op and its update's cost on
        the neuron units per timestep and sequence).

    Raises:
        SnucError: a tile is not placed yet, or the graph still holds an untiled
            ``xbar.dense`` or ``xbar.conv``.
    """
    tiles = []
    for node in graph.nodes():
        if node.op.NAME in ("xbar.dense", "xbar.conv"):
            raise SnucError(
                f"{node.loc.prefix()}{node.op.NAME} %{node.id} is not tiled; run the "
                "lower-conv, tile and place passes before the mapping report"
            )
        if isinstance(node.op, CrossbarMVM):
            if node.op.crossbar < 0:
                raise SnucError(
                    f"{node.loc.prefix()}tile %{node.id} is not placed; run the place pass "
                    "before the mapping report"
                )
            tiles.append(node.op)
    tiles.sort(key=lambda op: op.tile)

    tile_rows = []
    for op in tiles:
        h, w = tile_footprint(op, target)
        for j in range(op.duplicates):
            row = {
                "layer": op.layer,
                "tile": op.copy_tile(j),
                "crossbar": op.copy_crossbar(j),
                "row0": op.xbar_row,
                "col0": op.xbar_col,
                "rows": h,
                "cols": w,
            }
            tile_rows.append(row if j == 0 else {**row, "copy_of": op.tile, "copy": j})
    tile_rows.sort(key=lambda row: row["tile"])
    weights = sum((op.rows[1] - op.rows[0]) * (op.cols[1] - op.cols[0]) for op in tiles)
    devices = sum(row["rows"] * row["cols"] for row in tile_rows)
    crossbars = {row["crossbar"] for row in tile_rows}
    used = len(crossbars)
    chips_needed = max(crossbars) // target.cores + 1 if crossbars else 0
    return {
        "target": target.to_dict(),
        "crossbars_used": used,
        "crossbars_available": target.crossbars_available,
        "chips": chips_needed,
        "chips_available": target.chips,
        "tiles": tile_rows,
        "utilization": devices / (used * target.devices_per_crossbar) if used else 0.0,
        "weights": weights,
        "devices": devices,
        "layers": _layers(tiles),
        "neurons": _neuron_layers(graph, target),
    }


def _neuron_layers(graph: Graph, target: TargetSpec) -> list[dict[str, Any]]:
    """Each neuron op: where it came from, its model, its neurons and its update's cost."""
    rows = []
    for node in graph.nodes():
        if not isinstance(node.op, NeuronOp):
            continue
        n = graph.type_of(node.outputs[0]).static_size()
        cost = neuron_cost(target, HOST, n, type(node.op))
        rows.append(
            {
                "layer": node.loc.source or node.id,
                "model": node.op.NAME,
                "neurons": n,
                "cycles": cost.cycles,
                "energy_pj": cost.total_energy_pj,
            }
        )
    return rows


def _layers(tiles: list[CrossbarMVM]) -> list[dict[str, Any]]:
    """Weights, tiles and distinct crossbars of each layer, in order of first tile."""
    summary: dict[str, dict[str, Any]] = {}
    crossbars: dict[str, set[int]] = {}
    for op in tiles:
        entry = summary.setdefault(op.layer, {"layer": op.layer, "weights": 0, "tiles": 0})
        entry["weights"] += (op.rows[1] - op.rows[0]) * (op.cols[1] - op.cols[0])
        entry["tiles"] += 1
        crossbars.setdefault(op.layer, set()).update(
            op.copy_crossbar(j) for j in range(op.duplicates)
        )
    return [{**entry, "crossbars": len(crossbars[name])} for name, entry in summary.items()]
