"""Human-readable text of a compile report (``snuc report`` without ``--json``)."""

from __future__ import annotations

from typing import Any


def format_table(header: list[str], rows: list[list[Any]]) -> str:
    """Rows under a header, columns aligned, a rule below the header."""
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def format_report(report: dict[str, Any]) -> str:
    """The report as a few aligned tables: target, mapping summary, per-layer figures."""
    target = report["target"]
    summary = [
        ["target", target["name"]],
        [
            "crossbars used / available",
            f"{report['crossbars_used']} / {report['crossbars_available']}",
        ],
        ["chips needed / available", f"{report['chips']} / {report['chips_available']}"],
        ["weights", report["weights"]],
        ["devices", report["devices"]],
        ["utilization", f"{report['utilization']:.1%}"],
    ]
    for key, label in (
        ("cycles_per_timestep", "cycles per timestep (II)"),
        ("cycles_lower_bound", "cycles lower bound"),
        ("latency_cycles", "latency (cycles)"),
        ("energy_pj_per_timestep", "energy per timestep (pJ)"),
    ):
        if key in report:
            value = report[key]
            summary.append([label, value["total"] if isinstance(value, dict) else value])
    duplication = report.get("schedule", {}).get("duplication")
    if duplication:
        summary.append(
            [
                "tile duplication",
                f"{duplication['crossbars_duplicated']} crossbar(s) x "
                f"{duplication['copies']} copies, timestep t on copy t mod "
                f"{duplication['copies']}",
            ]
        )
    text = format_table(["quantity", "value"], summary)
    layers = report.get("layers", [])
    if layers:
        rows = [[row["layer"], row["weights"], row["tiles"], row["crossbars"]] for row in layers]
        text += "\n" + format_table(["layer", "weights", "tiles", "crossbars"], rows)
    neurons = report.get("neurons", [])
    if neurons:
        rows = [
            [r["layer"], r["model"], r["neurons"], r["cycles"], r["energy_pj"]] for r in neurons
        ]
        header = ["neuron layer", "model", "neurons", "cycles", "energy (pJ)"]
        text += "\n" + format_table(header, rows)
    return text
