"""Figures: reliability diagrams (test.py --plot) and training curves from metrics logs.

    python plots.py curves RUN [RUN ...] --out curves.png

where RUN is a checkpoint folder (holding metrics.jsonl) or a metrics.jsonl file. matplotlib
is needed only here, and only imported when a figure is drawn.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import io_utils
from calibration import ReliabilityBins
from errors import UserError, run_cli


def require_matplotlib():
    """pyplot with a file-only backend, or one clear error if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install matplotlib") from None
    return plt


def reliability_diagram(panels: dict[str, ReliabilityBins], path: Path, title: str) -> Path:
    """Per-bin accuracy against confidence (the diagonal is perfect calibration), with the
    bin counts below; one column per entry of ``panels`` (e.g. before/after temperature)."""
    plt = require_matplotlib()
    fig, axes = plt.subplots(2, len(panels), figsize=(4.5 * len(panels), 6), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    for column, (name, bins) in enumerate(panels.items()):
        top, bottom = axes[0][column], axes[1][column]
        width = bins.edges[1] - bins.edges[0]
        centres = [e + width / 2 for e in bins.edges[:-1]]
        shown = [a if n else 0 for a, n in zip(bins.accuracy, bins.counts)]
        top.bar(centres, shown, width=width, edgecolor="black", label="accuracy")
        # The gap to the bin's mean confidence: above the bar where the model is over-confident
        # (filled), inside it where it is under-confident (hatched, so no mixed colour appears).
        for over, style in ((True, dict(color="red", alpha=0.3,
                                        label="gap: confidence above accuracy")),
                            (False, dict(fill=False, hatch="///", edgecolor="red",
                                         label="gap: accuracy above confidence"))):
            gaps = [(min(a, c), abs(c - a)) if n and (c > a) == over else (0, 0)
                    for a, c, n in zip(bins.accuracy, bins.confidence, bins.counts)]
            top.bar(centres, [h for _, h in gaps], bottom=[b for b, _ in gaps], width=width,
                    **style)
        top.plot([0, 1], [0, 1], "k--", linewidth=1)
        top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=name)
        top.legend(loc="upper left")
        bottom.bar(centres, bins.counts, width=width, edgecolor="black", color="grey")
        bottom.set(xlabel="confidence", ylabel="predictions")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(plt, fig, path)
    return path


def save_figure(plt, fig, path: Path) -> None:
    """A PNG written whole or not at all (a full disk leaves no half image)."""
    try:
        io_utils.write_file(Path(path), lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl" if run.is_dir() else run
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line]
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the metrics log {path}: {exc}") from None


def training_curves(runs: list[Path], path: Path) -> Path:
    """Train loss, train accuracy and validation accuracy per epoch, one line per run."""
    plt = require_matplotlib()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        records = read_metrics(run)
        name = (run if run.is_dir() else run.parent).name
        epochs = [r["epoch"] for r in records]
        loss_ax.plot(epochs, [r["train_loss"] for r in records], label=name)
        line, = acc_ax.plot(epochs, [r["train_acc"] for r in records], alpha=0.5,
                            label=f"{name} train")
        validated = [r for r in records if "val_acc" in r]
        acc_ax.plot([r["epoch"] for r in validated], [r["val_acc"] for r in validated],
                    color=line.get_color(), marker=".", label=f"{name} val")
    loss_ax.set(xlabel="epoch", ylabel="training loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)")
    loss_ax.legend()
    acc_ax.legend()
    fig.tight_layout()
    save_figure(plt, fig, path)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Draw training curves from metrics logs.")
    sub = parser.add_subparsers(dest="figure", required=True)
    curves = sub.add_parser("curves", help="loss and accuracy per epoch of one or more runs")
    curves.add_argument("runs", nargs="+", type=Path,
                        help="checkpoint folders or metrics.jsonl files")
    curves.add_argument("--out", type=Path, default=Path("curves.png"), help="PNG to write")
    args = parser.parse_args(argv)

    def draw() -> int:
        print(f"wrote {training_curves(args.runs, args.out)}")
        return 0

    return run_cli(draw)


if __name__ == "__main__":
    sys.exit(main())
