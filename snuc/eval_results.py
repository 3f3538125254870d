"""``snuc eval``'s results: the rows of a sweep, their means over seeds, and their forms.

:func:`snuc.evaluate.evaluate` returns one row per run (keys :data:`RUN_FIELDS`);
:func:`aggregate` gives mean ± sample standard deviation over seeds;
:func:`format_results`, :func:`to_csv` and :func:`to_markdown` render them, and
:func:`write_text_atomic` writes files by temporary name and rename.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from snuc.eval_tasks import TASKS
from snuc.ir.errors import SnucError
from snuc.reporting import format_table
from snuc.runtime.config import DETERMINISTIC_MODES

YEAR_S = 365 * 86400.0
"""A year in :func:`format_duration` and ``--t-inference``: 365 days."""

RUN_FIELDS = (
    "task",
    "split",
    "model",
    "target",
    "backend",
    "mode",
    "t_inference_s",
    "drift_compensation",
    "seed",
    "coding_seed",
    "metric",
    "value",
    "count",
    "energy_nj_per_step",
    "timestep_ns",
)
"""Keys of a row of :func:`~snuc.evaluate.evaluate`: one run. ``t_inference_s``,
``drift_compensation`` and ``seed`` are None in the deterministic modes; ``coding_seed``
seeds the input coding of a task with coded inputs (mnist), None for the others;
``drift_compensation`` is ``"global"``, ``"column"`` or ``"off"`` in pcm mode; ``count``
is how many frames, images or tokens were scored. ``backend`` is ``numpy`` or ``sim``;
with ``sim``, ``energy_nj_per_step`` is the simulated chip's energy per sequence per
timestep over the whole split (padding steps included) and ``timestep_ns`` its measured
time per timestep; None with ``numpy``."""

AGGREGATE_FIELDS = (
    "task",
    "split",
    "model",
    "target",
    "backend",
    "mode",
    "t_inference_s",
    "drift_compensation",
    "metric",
    "mean",
    "std",
    "n_seeds",
    "count",
    "energy_nj_per_step",
    "timestep_ns",
)
"""Keys of a row of :func:`aggregate`: one configuration over its seeds: the chips'
(``seed``) and, for a task with coded inputs (mnist), the codings' (``coding_seed``);
``n_seeds`` counts the runs pooled. ``std`` is the sample standard deviation (ddof 1),
None with fewer than two runs; the energy and time
per step are means over the seeds (None with the ``numpy`` backend)."""

CSV_FIELDS = (
    "kind",
    "task",
    "split",
    "model",
    "target",
    "backend",
    "mode",
    "t_inference_s",
    "t_inference",
    "drift_compensation",
    "seed",
    "coding_seed",
    "metric",
    "value",
    "std",
    "n_seeds",
    "count",
    "energy_nj_per_step",
    "timestep_ns",
)
"""Columns of :func:`to_csv`: ``kind`` is ``run`` (one row per seed, ``value`` the
metric) or ``mean`` (one row per configuration, ``value`` the mean over seeds). A study's
rows add their own columns after these (:func:`extra_fields`)."""


PER_RUN_FIELDS = ("seed", "coding_seed", "value", "count", "config_id")
"""Row keys that differ between the runs :func:`aggregate` pools (and ``config_id``, a
study row's key)."""

_MEASURED = ("energy_nj_per_step", "timestep_ns")


def extra_fields(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The keys of ``rows`` beyond :data:`RUN_FIELDS` (a study's axes and figures), in
    order of first appearance."""
    extra = {k: None for row in rows for k in row if k not in RUN_FIELDS}
    return list(extra)


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation over seeds of each configuration.

    Args:
        rows: rows of :func:`snuc.evaluate.evaluate` or of a study (whose extra columns,
            its axes, also tell configurations apart, and are kept).

    Returns:
        One row per configuration (keys :data:`AGGREGATE_FIELDS`, then the extra
        columns) in order of first appearance; ``std`` is None with fewer than two seeds;
        ``count`` is the first run's (every run of a configuration scores the same data).
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    extras = [k for k in extra_fields(rows) if k not in PER_RUN_FIELDS]
    keys = [
        k for k in AGGREGATE_FIELDS if k in RUN_FIELDS and k not in ("value", "count", *_MEASURED)
    ]
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in keys + extras), []).append(row)
    result = []
    for group in groups.values():
        values = np.array([r["value"] for r in group], dtype=np.float64)
        result.append(
            {
                **{k: group[0][k] for k in keys},
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else None,
                "n_seeds": len(values),
                "count": group[0]["count"],
                **{k: _mean_or_none([r.get(k) for r in group]) for k in _MEASURED},
                **{k: group[0].get(k) for k in extras},
            }
        )
    return result


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    return None if any(v is None for v in values) else float(np.mean(values))


def format_duration(seconds: float | None) -> str:
    """A time since programming in human units: ``1 s``, ``1 h``, ``1 day``, ``2 years``.

    The largest unit of year (365 days), day, h, min, s that the time reaches; up to three
    significant digits. None (a deterministic mode) is ``-``.
    """
    if seconds is None:
        return "-"
    for unit, size in (("year", YEAR_S), ("day", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            amount = seconds / size
            text = f"{amount:.3g}"
            plural = "s" if unit in ("year", "day") and text != "1" else ""
            return f"{text} {unit}{plural}"
    return f"{seconds:.3g} s"


def _metric_text(row: dict[str, Any]) -> str:
    digits = _digits(row["metric"])
    text = f"{row['mean']:.{digits}f}"
    if row["std"] is not None:
        text += f" ± {row['std']:.{digits}f}"
    return text


def _digits(metric: str) -> int:
    return next((t.digits for t in TASKS.values() if t.metric == metric), 4)


def _label(metric: str) -> str:
    return next((t.label for t in TASKS.values() if t.metric == metric), metric)


def _summary_table(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the aggregated rows, shared by the text and Markdown tables."""
    aggregated = aggregate(rows)
    metrics = {r["metric"] for r in aggregated}
    metric_header = _label(next(iter(metrics))) if len(metrics) == 1 else "metric"
    axes = varying_axes(aggregated)
    header = ["task", "target", *axes, "mode", "t_inference", "compensation", metric_header]
    header.append("seeds")
    cells = [
        [
            r["task"],
            r["target"],
            *(_cell(r[a]) for a in axes),
            r["mode"],
            format_duration(r["t_inference_s"]),
            r["drift_compensation"] or "-",
            _metric_text(r),
            "-" if r["mode"] in DETERMINISTIC_MODES and r["n_seeds"] == 1 else str(r["n_seeds"]),
        ]
        for r in aggregated
    ]
    if any(r["energy_nj_per_step"] is not None for r in aggregated):  # the simulator's
        header += ["nJ/step", "ns/step"]
        for row, r in zip(cells, aggregated, strict=True):
            row += [_optional(r["energy_nj_per_step"], ".2f"), _optional(r["timestep_ns"], ".0f")]
    return header, cells


_FIGURES = ("crossbars", "est_energy_nj_per_step", "est_timestep_ns")


def varying_axes(aggregated: Sequence[dict[str, Any]]) -> list[str]:
    """The study columns of aggregated rows that take more than one value: axes shown in
    tables (the compiler's figures follow from them and are left out)."""
    skip = (*PER_RUN_FIELDS, *_FIGURES, *AGGREGATE_FIELDS)
    candidates = [k for k in extra_fields(aggregated) if k not in skip]
    return [k for k in ["model", *candidates] if len({_cell(r.get(k)) for r in aggregated}) > 1]


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _optional(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_results(rows: Sequence[dict[str, Any]]) -> str:
    """The aggregated rows as an aligned text table (what ``snuc eval`` prints)."""
    header, cells = _summary_table(rows)
    return format_table(header, cells)


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The aggregated rows as a Markdown table (``snuc eval --markdown``)."""
    header, cells = _summary_table(rows)
    lines = [_markdown_row(header), _markdown_row(["---"] * len(header))]
    lines.extend(_markdown_row(row) for row in cells)
    return "\n".join(lines) + "\n"


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """Every run (``kind`` = ``run``), then every configuration's mean (``kind`` = ``mean``).

    Columns are :data:`CSV_FIELDS`; None is an empty cell; floats keep full precision.
    """
    fields = [*CSV_FIELDS, *extra_fields(rows)]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(_csv_row({**row, "kind": "run", "std": None, "n_seeds": 1}, fields))
    for row in aggregate(rows):
        mean = {**row, "kind": "mean", "seed": None, "value": row["mean"]}
        writer.writerow(_csv_row(mean, fields))
    return out.getvalue()


def _csv_row(row: dict[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    row = {**row, "t_inference": format_duration(row["t_inference_s"])}
    if row["t_inference_s"] is None:
        row["t_inference"] = None
    return {k: "" if row.get(k) is None else row[k] for k in fields}


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """Check, before a long sweep, that a result file can be written at ``path``.

    Raises:
        SnucError: the directory does not exist, or ``path`` is a directory.
    """
    path = Path(path)
    if path.is_dir():
        raise SnucError(f"cannot write {path}: it is a directory; name a file")
    parent = path.parent
    if not parent.is_dir():
        raise SnucError(f"cannot write {path}: directory {parent} does not exist; create it first")
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` by a temporary file beside it and a rename.

    An existing file is replaced only by the complete new one; on failure nothing is left.

    Raises:
        SnucError: the directory is missing or unwritable, or the write failed.
    """
    path = check_output_path(path)
    temp: Path | None = None
    try:
        temp = _claim_temp(path)
        with open(temp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
        temp = None
    except OSError as exc:
        raise SnucError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if temp is not None:
            with contextlib.suppress(OSError):
                temp.unlink()
    return path


def _claim_temp(path: Path) -> Path:
    """A new hidden file beside ``path``. Unlike ``tempfile``'s (mode 0600), it gets the
    default permissions, which the finished file keeps."""
    while True:
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            with open(candidate, "x"):
                return candidate
        except FileExistsError:
            continue
