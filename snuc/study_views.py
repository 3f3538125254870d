"""Views of a study's rows (SPEC §12): which knob mattered most, Pareto plots of the
metric against the chip's cost, and Parquet files.

The rows are a study's (:func:`snuc.study.run_study`, or a results file read with
:func:`read_rows`); every view works on their means over chips and codings
(:func:`snuc.eval_results.aggregate`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from snuc.eval_results import aggregate, check_output_path, format_duration, varying_axes
from snuc.eval_tasks import lower_is_better
from snuc.ir.errors import SnucError
from snuc.reporting import format_table

KNOB_FIELDS = ("target", "mode", "t_inference_s", "drift_compensation")
"""Run axes that :func:`knob_spread` weighs beside the study's own axes."""

COSTS = (
    ("energy per step (nJ)", ("energy_nj_per_step", "est_energy_nj_per_step")),
    ("time per step (ns)", ("timestep_ns", "est_timestep_ns")),
    ("crossbars", ("crossbars",)),
)
"""The x axes of :func:`plot_pareto`: a label and the columns read (the simulator's
measured figure first, else the compiler's estimate)."""


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a results file (JSON lines), in file order.

    Raises:
        SnucError: a missing file, or a line before the last that is not a row.
    """
    from snuc.study import ResultsFile

    if not Path(path).is_file():
        raise SnucError(f"results file {path} does not exist")
    return list(ResultsFile(path).read().values())


def knob_spread(rows: Sequence[dict[str, Any]]) -> list[tuple[str, float, str, str]]:
    """How much each knob moves the metric: for each axis with several values, the mean
    of the configuration means at each value, and the spread (max - min) of those.

    Returns:
        ``(axis, spread, best value, worst value)`` per axis, largest spread first.
    """
    means = aggregate(rows)
    if not means:
        return []
    lower = lower_is_better(means[0]["metric"])
    result = []
    for axis in [*varying_axes(means), *KNOB_FIELDS]:
        by_value: dict[str, list[float]] = {}
        for row in means:
            if row.get(axis) is None and axis in KNOB_FIELDS:
                continue  # a deterministic mode has no age or compensation
            by_value.setdefault(_text(axis, row.get(axis)), []).append(row["mean"])
        if len(by_value) < 2:
            continue
        averages = {value: float(np.mean(v)) for value, v in by_value.items()}
        ranked = sorted(averages, key=averages.get, reverse=not lower)
        spread = max(averages.values()) - min(averages.values())
        result.append((axis, spread, ranked[0], ranked[-1]))
    return sorted(result, key=lambda item: -item[1])


def _text(axis: str, value: Any) -> str:
    if axis == "t_inference_s":
        return format_duration(value)
    return "-" if value is None else str(value)


def format_knobs(rows: Sequence[dict[str, Any]]) -> str:
    """:func:`knob_spread` as a table: which knob mattered most."""
    spreads = knob_spread(rows)
    if not spreads:
        return ""
    metric = rows[0]["metric"]
    header = ["knob", f"spread of mean {metric}", "best", "worst"]
    cells = [[axis, f"{spread:.4g}", best, worst] for axis, spread, best, worst in spreads]
    return format_table(header, cells)


def pareto_front(costs: Sequence[float], values: Sequence[float], lower: bool) -> list[int]:
    """Indices of the points no other point beats in both cost (lower) and value (lower
    or higher as ``lower``), by increasing cost."""
    order = sorted(range(len(costs)), key=lambda i: (costs[i], values[i] if lower else -values[i]))
    front, best = [], None
    for i in order:
        value = values[i] if lower else -values[i]
        if best is None or value < best:
            front.append(i)
            best = value
    return front


def plot_pareto(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """One figure: the metric's mean over chips against energy per step, time per step
    and crossbars, one point per configuration, its Pareto front drawn.

    Raises:
        SnucError: matplotlib missing, no rows, or rows without the cost columns.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SnucError("Pareto plots need matplotlib: pip install 'snuc[plot]'") from None
    means = aggregate(rows)
    if not means:
        raise SnucError("no rows to plot")
    path = check_output_path(path)
    metric = means[0]["metric"]
    lower = lower_is_better(metric)
    fig, axes = plt.subplots(1, len(COSTS), figsize=(5 * len(COSTS), 4), squeeze=False)
    for ax, (label, columns) in zip(axes[0], COSTS, strict=True):
        costs = [_cost(r, columns) for r in means]
        if any(c is None for c in costs):
            raise SnucError(f"the rows have no {label}: plot the rows of a study")
        values = [r["mean"] for r in means]
        for mode in dict.fromkeys(r["mode"] for r in means):
            picked = [i for i, r in enumerate(means) if r["mode"] == mode]
            ax.scatter([costs[i] for i in picked], [values[i] for i in picked], label=mode, s=18)
        front = pareto_front(costs, values, lower)
        ax.step([costs[i] for i in front], [values[i] for i in front], where="post", color="k")
        ax.set_xlabel(label)
        ax.set_ylabel(f"{metric} ({'lower' if lower else 'higher'} is better)")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _cost(row: dict[str, Any], columns: Sequence[str]) -> float | None:
    return next((row[c] for c in columns if row.get(c) is not None), None)


def write_parquet(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """The rows as a Parquet file (written by a temporary name and a rename).

    Raises:
        SnucError: pyarrow missing, or the file cannot be written.
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise SnucError("Parquet output needs pyarrow: pip install 'snuc[parquet]'") from None
    path = check_output_path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(pa.Table.from_pylist(list(rows)), temp)
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise SnucError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
