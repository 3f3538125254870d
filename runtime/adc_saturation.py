"""ADC saturation of a run: the fraction of each crossbar layer's outputs at the ADC's end code.

An output is saturated when its ADC code is ``+-m`` (``m = 2**(adc_bits-1) - 1``): every
current the ADC clipped (``|I| > F``), and those within half a step below the full scale.
The default full scale (target ``adc_rule = "max"``) clips nothing; a bounded one
(``"ksigma"``) or a calibrated one may (docs/quantization.md). ``snuc run --diagnostics``
shows the fraction per layer.

The codes are read back from a traced run's tile outputs ``y = dtype(code * F / m * s *
alpha)``: a column's saturated outputs are exactly the two values its end codes give (the
same float64 operations as the interpreter's tile), and any two codes give values a
relative ``1 / m`` apart, far more than a float32 rounding. Columns of zero weights
(scale 0) output 0 whatever the current and are left out.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from snuc.ir.crossbar import adc_quantize
from snuc.ir.graph import Graph, Node
from snuc.ir.target import TargetSpec
from snuc.runtime.chip import program_tile
from snuc.runtime.config import RunConfig
from snuc.runtime.interpreter import crossbar_tiles


def adc_saturation(
    graph: Graph, traced: Mapping[str, np.ndarray], config: RunConfig, target: TargetSpec
) -> dict[str, float]:
    """Per crossbar layer (``xbar.mvm``'s ``layer``), the fraction of saturated outputs.

    Args:
        graph: the compiled graph the run used.
        traced: the run's trace (``interpreter.run(..., trace=True)``), every tile's
            output ``[T, B, c]`` by its value name.
        config: the run's configuration; ``float`` mode has no ADC (an empty result).
        target: the chip.

    Returns:
        ``{layer: fraction}`` in graph order; a layer whose outputs all come from zero
        columns, or that ran no step, has fraction 0.
    """
    if config.mode == "float":
        return {}
    counts: dict[str, list[int]] = {}
    for node in crossbar_tiles(graph.nodes(), config.mode):
        saturated, total = _tile_counts(graph, node, traced[node.outputs[0]], config, target)
        count = counts.setdefault(node.op.layer, [0, 0])
        count[0] += saturated
        count[1] += total
    return {layer: (s / n if n else 0.0) for layer, (s, n) in counts.items()}


def _tile_counts(
    graph: Graph, node: Node, y: np.ndarray, config: RunConfig, target: TargetSpec
) -> tuple[int, int]:
    """``(saturated, counted)`` outputs of one tile over its traced outputs ``y``."""
    op = node.op
    copies = program_tile(
        graph,
        node,
        config.mode,
        target,
        config.seed,
        config.t_inference_s,
        config.drift_compensation,
    )
    saturated = counted = 0
    for j, copy in enumerate(copies):
        steps = y[j :: len(copies)]  # step t reads copy t mod K
        live = copy.gain != 0
        ends = [
            (
                adc_quantize(
                    np.full(live.shape, sign * 2.0 * op.adc_range), op.adc_range, target.adc_bits
                )
                * copy.gain
            ).astype(y.dtype)
            for sign in (1.0, -1.0)
        ]
        at_end = (steps == ends[0]) | (steps == ends[1])
        saturated += int(at_end[..., live].sum())
        counted += int(steps[..., live].size)
    return saturated, counted
