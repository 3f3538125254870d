"""What the chip holds: each crossbar tile programmed once for a run, for every backend.

A tile (an ``xbar.mvm`` node) holds its weight window as conductance pairs
(``snuc.ir.crossbar.tile_conductances``: G+ and G- per weight, one column scale ``s``).
In ``quantized`` mode the chip holds those targets exactly; in ``pcm`` mode it is the
chip ``seed`` names (``snuc.runtime.pcm``: programming noise and drift exponents drawn
from the tile's streams), read ``t_inference_s`` after programming, its outputs scaled by
the drift compensation ``alpha``. A duplicated tile (``place --duplicate K``) is K
separately programmed arrays in ``pcm`` mode, copy j as its own tile number
(``op.copy_tile(j)``); in ``quantized`` mode its copies hold the same conductances, so one
stands for all. The interpreter and the fast backends all take their tiles from here.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from snuc.ir.crossbar import tile_conductances
from snuc.ir.graph import Graph, Node
from snuc.ir.target import TargetSpec
from snuc.runtime import pcm


class ProgrammedTile(NamedTuple):
    """One array of a tile as a run reads it (float64).

    Attributes:
        conductance_us: ``G`` ``[r, c]``: G+ - G- per weight (devices summed).
        gain: ``s * alpha`` ``[c]``: digital scale times drift compensation.
        variance_us2: read-noise variance per weight ``[r, c]`` (pcm), else None.
    """

    conductance_us: np.ndarray
    gain: np.ndarray
    variance_us2: np.ndarray | None


def program_tile(
    graph: Graph,
    node: Node,
    mode: str,
    target: TargetSpec,
    seed: int,
    t_inference_s: float,
    drift_compensation: str | None,
) -> list[ProgrammedTile]:
    """The arrays of the tile ``node`` (an ``xbar.mvm`` of ``graph``): one in
    ``quantized`` mode, one per copy in ``pcm`` mode (copy 0 first).

    Args:
        graph: the compiled (tiled and quantised) graph.
        node: the tile.
        mode: ``"quantized"`` or ``"pcm"``.
        target: the chip's parameters.
        seed, t_inference_s, drift_compensation: the pcm chip and its age (checked by
            the caller).
    """
    op = node.op
    g_plus, g_minus, scale = tile_conductances(
        graph.constants[node.inputs[1]], op.rows, op.cols, target
    )
    if mode == "quantized":
        conductance = g_plus.sum(axis=-1) - g_minus.sum(axis=-1)
        return [ProgrammedTile(conductance, scale, None)]
    copies = []
    for j in range(op.duplicates):
        chip = pcm.program_array(g_plus, g_minus, target, seed=seed, tile=op.copy_tile(j))
        drifted = chip.at(t_inference_s)
        alpha = pcm.compensation_scale(chip, t_inference_s, drift_compensation)
        copies.append(
            ProgrammedTile(
                np.ascontiguousarray(drifted.weights_us),
                scale * alpha,
                np.ascontiguousarray(drifted.read_variance_us2),
            )
        )
    return copies
