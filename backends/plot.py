"""A picture of a mapping: the crossbars used, with each tile drawn where it sits.

:func:`plot_crossbars` reads only the report dict (``report.json`` or
``mapping_report`` of passes/report.py), so an artefact's report can be drawn without
the compiler. matplotlib is an optional extra (``pip install snuc[plot]``); it is
imported only when a picture is drawn, and only its object-oriented API is used, so
drawing never touches pyplot's global state or the user's backend.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from snuc.ir.errors import SnucError

MAX_DRAWN = 200
"""Crossbars drawn at most; a note under the title says how many were left out."""

MAX_LEGEND = 20
"""Layers named in the legend at most; the rest are summed up in one entry."""

_GAP = 0.25
"""Space between crossbars, in crossbar widths."""


def plot_crossbars(report: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Draw the crossbars a mapping uses as a grid of ``R x C`` squares and save it.

    Each tile is a rectangle at its device position, coloured by layer (legend beside the
    grid); each crossbar is labelled with its index. The title names the target, the
    crossbars used and the utilisation. Up to :data:`MAX_DRAWN` crossbars are drawn, in
    index order, wrapped into rows; beyond that a note says how many are not shown. The
    file is written under a temporary name and renamed, so a failure leaves nothing.

    Args:
        report: a mapping report (keys ``target``, ``tiles``, ``crossbars_used``,
            ``crossbars_available``, ``utilization``).
        path: the image file; its suffix picks the format (``.png``, ``.svg``, ``.pdf``).

    Raises:
        SnucError: matplotlib is not installed, the report lacks a key, or the file
            cannot be written.
    """
    try:
        from matplotlib.collections import PatchCollection
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch, Rectangle
    except ImportError:
        raise SnucError(
            "plotting crossbars needs matplotlib; install it with: pip install snuc[plot]"
        ) from None
    try:
        target = report["target"]
        rows, cols, name = int(target["rows"]), int(target["cols"]), str(target["name"])
        tiles = list(report["tiles"])
        used = int(report["crossbars_used"])
        available = int(report["crossbars_available"])
        utilization = float(report["utilization"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SnucError(f"not a mapping report: missing or bad entry {exc}") from None

    crossbars = sorted({int(t["crossbar"]) for t in tiles})
    drawn = crossbars[:MAX_DRAWN]
    where = {xb: i for i, xb in enumerate(drawn)}
    per_row = max(1, min(len(drawn), math.ceil(math.sqrt(len(drawn) * 1.6))))
    n_rows = max(1, math.ceil(len(drawn) / per_row))
    # One crossbar is a box of width 1 and height rows / cols (device aspect kept).
    width, height = 1.0, rows / cols
    step_x, step_y = width * (1 + _GAP), height + width * _GAP

    layers = list(dict.fromkeys(str(t["layer"]) for t in tiles))
    colour = {layer: _colour(i) for i, layer in enumerate(layers)}

    fig = Figure(figsize=(min(16.0, 2.0 + 1.1 * per_row), min(40.0, 1.6 + 1.1 * n_rows * height)))
    ax = fig.add_subplot()
    label = 7 if per_row <= 8 else 5
    frames, tile_patches, tile_colours = [], [], []
    for xb, i in where.items():
        x0, y0 = (i % per_row) * step_x, -(i // per_row) * step_y
        frames.append(Rectangle((x0, y0 - height), width, height))
        ax.text(x0 + width / 2, y0 + 0.02, str(xb), ha="center", va="bottom", fontsize=label)
    for t in tiles:
        i = where.get(int(t["crossbar"]))
        if i is None:
            continue
        x0, y0 = (i % per_row) * step_x, -(i // per_row) * step_y
        x = x0 + int(t["col0"]) / cols * width
        y = y0 - (int(t["row0"]) + int(t["rows"])) / rows * height
        tile_patches.append(
            Rectangle((x, y), int(t["cols"]) / cols, int(t["rows"]) / rows * height)
        )
        tile_colours.append(colour[str(t["layer"])])
    ax.add_collection(PatchCollection(frames, facecolor="#f2f2f2", edgecolor="#555555", lw=0.6))
    ax.add_collection(
        PatchCollection(tile_patches, facecolor=tile_colours, edgecolor="black", lw=0.3)
    )
    ax.set_xlim(-_GAP * width, per_row * step_x)
    ax.set_ylim(-n_rows * step_y, step_y * _GAP)
    ax.set_aspect("equal")
    ax.set_axis_off()

    title = f"{name}: {used} of {available} crossbars used, utilisation {utilization:.1%}"
    if len(crossbars) > len(drawn):
        title += f"\n(showing the first {len(drawn)} of {len(crossbars)} crossbars)"
    ax.set_title(title, fontsize=9)
    handles = [Patch(facecolor=colour[layer], edgecolor="black", label=layer) for layer in layers]
    if len(handles) > MAX_LEGEND:
        rest = len(handles) - MAX_LEGEND + 1
        handles = [*handles[: MAX_LEGEND - 1], Patch(color="none", label=f"... {rest} more")]
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    _save_atomically(fig, Path(path))


def _colour(index: int) -> tuple[float, float, float]:
    """A distinct colour per layer: tab20's, then hues spaced by the golden ratio."""
    from matplotlib import colormaps
    from matplotlib.colors import hsv_to_rgb

    if index < 20:
        return tuple(colormaps["tab20"](index)[:3])
    hue = (index * 0.618033988749895) % 1.0
    return tuple(hsv_to_rgb((hue, 0.55, 0.9)))


def _save_atomically(fig: Any, path: Path) -> None:
    """Save ``fig`` to ``path`` by way of a temporary file in the same folder."""
    fmt = path.suffix.lstrip(".").lower() or "png"
    try:
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise SnucError(f"cannot write plot {str(path)!r}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(handle, "wb") as out:
            fig.savefig(out, format=fmt, dpi=150, bbox_inches="tight")
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make the picture private
        os.replace(tmp, path)
    except (OSError, ValueError) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise SnucError(f"cannot write plot {str(path)!r}: {exc}") from None
