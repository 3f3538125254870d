"""Plot a task metric against drift time from ``snuc eval --csv`` files.

    python examples/plot_results.py --relative OUT.png RESULTS.csv    # loss against float
    python examples/plot_results.py OUT.png RESULTS.csv [RESULTS.csv ...] [--compensation global]

One panel per task; one line per model and drift-compensation setting, with the spread
over simulated chips as error bars, and the model's float and quantized results as
dotted horizontal lines. With ``--relative`` each value is shown less the model's own
float result (its loss on the chip) and the horizontal lines are left out. Needs
matplotlib (``pip install snuc[plot]``).
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

LABELS = {"nll": "NLL (nats/frame)", "accuracy": "accuracy", "perplexity": "perplexity"}


def read_aggregates(paths: list[Path]) -> list[dict[str, str]]:
    """The aggregated rows (``kind == "mean"``: mean and std over chips) of every CSV."""
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            rows += [row for row in csv.DictReader(f) if row["kind"] == "mean"]
    return rows


def plot(rows: list[dict[str, str]], out: Path, relative: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({row["task"] for row in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        lines: dict[tuple[str, str], list[tuple[float, float, float]]] = defaultdict(list)
        floats = {
            r["model"]: float(r["value"])
            for r in rows
            if r["task"] == task and r["mode"] == "float"
        }
        for row in (r for r in rows if r["task"] == task):
            model = Path(row["model"]).stem
            if relative and row["mode"] != "pcm":
                continue
            if relative and row["model"] not in floats:
                raise SystemExit(
                    f"plot_results.py: --relative needs a float row for {model} ({task})"
                )
            offset = floats[row["model"]] if relative else 0.0
            if row["mode"] != "pcm":
                style = ":" if row["mode"] == "float" else "-."
                ax.axhline(float(row["value"]), ls=style, lw=1, color="grey",
                           label=f"{model}, {row['mode']}")  # fmt: skip
                continue
            key = (model, row["drift_compensation"])
            lines[key].append(
                (float(row["t_inference_s"]), float(row["value"]) - offset, float(row["std"] or 0))
            )
        colors: dict[str, str] = {}  # one colour per model, the line style says compensation
        for (model, compensation), points in sorted(lines.items()):
            points.sort()
            t, value, std = zip(*points, strict=True)
            style = "-o" if compensation != "off" else "--s"
            color = colors.setdefault(model, f"C{len(colors)}")
            ax.errorbar(t, value, yerr=std, fmt=style, ms=4, capsize=3, color=color,
                        label=f"{model}, compensation {compensation}")  # fmt: skip
        metric = next(r["metric"] for r in rows if r["task"] == task)
        ax.set_xscale("log")
        ax.set_xlabel("time since programming (s)")
        ax.set_ylabel(("loss against float, " if relative else "") + LABELS.get(metric, metric))
        ax.set_title(f"{task}: pcm mode, mean ± std over chips")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relative", action="store_true", help="less each model's float")
    parser.add_argument("out", type=Path)
    parser.add_argument("csv", type=Path, nargs="+")
    parser.add_argument(
        "--compensation", default=None, metavar="LIST",
        help="plot only pcm rows with these drift compensations (e.g. global; default all)",
    )  # fmt: skip
    args = parser.parse_args()
    rows = read_aggregates(args.csv)
    if args.compensation is not None:
        keep = set(args.compensation.split(","))
        rows = [r for r in rows if r["mode"] != "pcm" or r["drift_compensation"] in keep]
    plot(rows, args.out, args.relative)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
