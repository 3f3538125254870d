"""``snuc run --diagnostics``: where a mode loses accuracy, layer by layer.

For every neuron layer (each ``snu.*`` op; and every graph output) it compares a run in the
chosen mode with a ``float`` run of the same input: the spike rate in both, the fraction of
spikes that agree, and the mean and largest deviation of the membrane potential (``s`` of
an SNU, ``v`` of the other models, or of the output). Both runs use the reference
interpreter's trace, so the figures are exact for the artefact, the seed and the whole batch.
In ``quantized`` and ``pcm`` modes one row per crossbar layer adds the fraction of its
outputs the ADC saturated (``snuc.runtime.adc_saturation``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from snuc.ir.graph import Graph
from snuc.ir.neurons import NeuronOp
from snuc.ir.target import TargetSpec
from snuc.reporting import format_table
from snuc.runtime.adc_saturation import adc_saturation
from snuc.runtime.config import RunConfig
from snuc.runtime.interpreter import run


def layer_diagnostics(
    graph: Graph,
    inputs: np.ndarray | Mapping[str, np.ndarray],
    config: RunConfig,
    target: TargetSpec,
) -> list[dict[str, Any]]:
    """One row per neuron layer, then one per output (see the module docstring)."""
    _, exact = run(graph, inputs, RunConfig(mode="float"), trace=True)
    _, noisy = run(graph, inputs, config, target=target, trace=True)
    rows = []
    for node in graph.nodes():
        op = node.op
        if not isinstance(op, NeuronOp):
            continue
        if op.result_ranges()[-1] == "unknown":  # no output besides the membrane (LI)
            v = node.outputs[-1]
            rows.append(_row(f"{v} ({op.NAME})", exact[v], noisy[v], None, None, ""))
            continue
        s, y = node.outputs[-2:]
        h = getattr(op, "h", "step")
        rows.append(_row(f"{y} ({h})", exact[s], noisy[s], exact[y], noisy[y], h))
    for name in graph.outputs:
        rows.append(_row(f"output {name}", exact[name], noisy[name], None, None, ""))
    for layer, fraction in adc_saturation(graph, noisy, config, target).items():
        rows.append({"layer": f"{layer} (crossbar)", "adc_saturated": fraction})
    return rows


def _row(
    name: str,
    s_exact: np.ndarray,
    s_noisy: np.ndarray,
    y_exact: np.ndarray | None,
    y_noisy: np.ndarray | None,
    h: str,
) -> dict[str, Any]:
    deviation = np.abs(s_noisy.astype(np.float64) - s_exact)
    row: dict[str, Any] = {
        "layer": name,
        "mean_abs_deviation": float(deviation.mean()) if deviation.size else 0.0,
        "max_abs_deviation": float(deviation.max()) if deviation.size else 0.0,
    }
    if y_exact is not None and y_noisy is not None:
        row["rate_float"] = float(y_exact.mean())
        row["rate"] = float(y_noisy.mean())
        if h == "step":
            row["spike_agreement"] = float((y_exact == y_noisy).mean())
    return row


def format_diagnostics(rows: list[dict[str, Any]], mode: str) -> str:
    """An aligned table of :func:`layer_diagnostics`' rows."""
    header = [
        "layer",
        "rate",
        "rate (float)",
        "spikes agree",
        f"|{mode} - float| mean",
        "max",
        "ADC saturated",
    ]
    table = [
        [
            r["layer"],
            _fmt(r.get("rate"), ".3f"),
            _fmt(r.get("rate_float"), ".3f"),
            _fmt(r.get("spike_agreement"), ".1%"),
            _fmt(r.get("mean_abs_deviation"), ".3g"),
            _fmt(r.get("max_abs_deviation"), ".3g"),
            _fmt(r.get("adc_saturated"), ".2%"),
        ]
        for r in rows
    ]
    return format_table(header, table)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
