"""Figures: reliability diagrams and episode sheets (test.py --plot, predict.py --plot) and
training curves from metrics logs.

    python -m reports.plots curves RUN [RUN ...] [--labels NAME ...] --out curves.png
    python -m reports.plots tensorboard RUN [RUN ...] --logdir tensorboard

where RUN is a checkpoint folder (holding metrics.jsonl), a metrics.jsonl file or a run folder
of results/runs/. matplotlib is needed only here, and only imported when a figure is drawn;
tensorboard only for the export.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cli.errors import UserError, run_cli
from reports.calibration import FEW_PREDICTIONS, ReliabilityBins
from storage import atomic, records


def require_matplotlib():
    """pyplot with a file-only backend, or one clear error if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install matplotlib") from None
    return plt


# A bin with fewer predictions than FEW_PREDICTIONS is drawn faded, its count written above it.
FADED = 0.3  # the alpha of a faded bin
SMALLEST_GAP = 0.002  # a gap drawn: below this (under a pixel at 100 dpi) it is not drawn


@dataclass
class BinBar:
    """What the diagram draws for one non-empty bin."""
    centre: float
    count: int
    accuracy: float
    confidence: float
    few: bool  # fewer than FEW_PREDICTIONS predictions: faded, its count written

    @property
    def gap(self) -> str | None:
        """The gap drawn: "over" where the mean confidence is above the accuracy, "under"
        below; None where they differ by less than SMALLEST_GAP (so that a legend lists no
        style that cannot be seen)."""
        if abs(self.confidence - self.accuracy) < SMALLEST_GAP:
            return None
        return "over" if self.confidence > self.accuracy else "under"


def reliability_bars(bins: ReliabilityBins, few: int = FEW_PREDICTIONS) -> list[BinBar]:
    """The bars of one panel: one per non-empty bin (an empty bin draws nothing)."""
    width = bins.edges[1] - bins.edges[0]
    return [BinBar(edge + width / 2, n, a, c, n < few)
            for edge, n, a, c in zip(bins.edges, bins.counts, bins.accuracy, bins.confidence)
            if n]


# The legend entries, in this order; a panel lists those it draws.
ACCURACY = "accuracy"
OVER = "gap: confidence above accuracy"
UNDER = "gap: accuracy above confidence"
FEW = f"fewer than {FEW_PREDICTIONS} predictions: faded, n written"


def legend_entries(bars: list[BinBar]) -> list[str]:
    """The legend of a panel drawing ``bars``: exactly the styles it draws."""
    drawn = {ACCURACY: any(b.accuracy > 0 for b in bars),
             OVER: any(b.gap == "over" for b in bars),
             UNDER: any(b.gap == "under" for b in bars),
             FEW: any(b.few for b in bars)}
    return [label for label, shown in drawn.items() if shown]


def reliability_figure(panels: dict[str, ReliabilityBins], title: str):
    """The figure of :func:`reliability_diagram` (the caller closes it): per panel, accuracy
    against confidence above (the diagonal is perfect calibration; the title gives the
    panel's ECE), the predictions per bin below (log scale, so that a handful still shows),
    and the panel's legend under both, outside the axes, where it cannot cover a bar."""
    plt = require_matplotlib()
    from matplotlib.colors import to_rgba
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(3, len(panels), figsize=(4.5 * len(panels), 7), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1, 0.6]})
    for column, (name, bins) in enumerate(panels.items()):
        top, bottom, key = (axes[row][column] for row in range(3))
        width = bins.edges[1] - bins.edges[0]
        bars = reliability_bars(bins)
        styles = {ACCURACY: dict(facecolor="tab:blue", edgecolor="black"),
                  OVER: dict(facecolor="red", alpha=0.3, linewidth=0),
                  UNDER: dict(fill=False, hatch="///", edgecolor="red"),
                  FEW: dict(fill=False, edgecolor="black", linestyle=":")}
        for bar in bars:
            alpha = FADED if bar.few else 1.0
            if bar.accuracy > 0:
                top.bar(bar.centre, bar.accuracy, width=width, **styles[ACCURACY], alpha=alpha)
            # The gap to the bin's mean confidence: above the bar where the model is
            # over-confident (filled), inside it where it is under-confident (hatched, so
            # that no mixed colour appears).
            if bar.gap:
                style = dict(styles[OVER if bar.gap == "over" else UNDER])
                style["alpha"] = style.get("alpha", 1.0) * alpha
                top.bar(bar.centre, abs(bar.confidence - bar.accuracy), width=width,
                        bottom=min(bar.accuracy, bar.confidence), **style)
            if bar.few:  # a dotted outline, so that a faded bar still shows where it is
                high = max(bar.accuracy, bar.confidence)
                top.bar(bar.centre, high, width=width, **styles[FEW])
                inside = high > 0.8  # no room above: write it at the top of the bar
                top.text(bar.centre, high - 0.02 if inside else high + 0.02, f"n={bar.count}",
                         rotation=90, ha="center", va="top" if inside else "bottom",
                         fontsize=7)
            bottom.bar(bar.centre, bar.count, width=width, color="grey", edgecolor="black",
                       alpha=alpha)
        top.plot([0, 1], [0, 1], "k--", linewidth=1)
        top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy",
                title=f"{name}, ECE {bins.ece:.3f}")
        top.tick_params(labelbottom=False)
        bottom.set_yscale("log")
        bottom.set(xlim=(0, 1), ylim=(0.5, max(bins.counts) * 3), xlabel="confidence",
                   ylabel="predictions")
        handles = {ACCURACY: Patch(**styles[ACCURACY]), OVER: Patch(**styles[OVER]),
                   UNDER: Patch(**styles[UNDER]),
                   FEW: Patch(facecolor=to_rgba("tab:blue", FADED), edgecolor="black",
                              linestyle=":")}
        labels = legend_entries(bars)
        key.axis("off")
        key.legend([handles[label] for label in labels], labels, loc="upper center",
                   frameon=False)
    # Wrapped to the figure's width: one panel is 4.5 inches, narrower than a run's title.
    fig.suptitle("\n".join(textwrap.wrap(title, int(4.5 * len(panels) * TITLE_CHARS_PER_INCH))))
    fig.tight_layout()
    return fig


TITLE_CHARS_PER_INCH = 8.5  # of a suptitle at matplotlib's default size, with a margin


def reliability_diagram(panels: dict[str, ReliabilityBins], path: Path, title: str) -> Path:
    """Write :func:`reliability_figure`, one column per entry of ``panels`` (e.g. before and
    after temperature scaling), to the PNG ``path``."""
    plt = require_matplotlib()
    save_figure(plt, reliability_figure(panels, title), path)
    return path


@dataclass
class EpisodeSheet:
    """What one episode shows: the support images ``uint8 [ways, shots, (3,) H, W]`` of the
    classes ``names`` (in label order), the queries ``uint8 [queries, (3,) H, W]`` with
    their predicted labels and, where known, their true ones."""
    support: np.ndarray
    names: list[str]
    queries: np.ndarray
    predicted: list[int]
    truth: list[int] | None = None


def episode_sheet(sheet: EpisodeSheet, path: Path, title: str, columns: int = 10) -> Path:
    """The support set, a row per class, above the queries, each captioned with its
    predicted class (and its true class when it is wrong, framed in red; right ones in
    green), written to the PNG ``path``."""
    plt = require_matplotlib()
    ways, shots = sheet.support.shape[:2]
    columns = max(columns, shots)
    query_rows = -(-len(sheet.queries) // columns)
    fig, axes = plt.subplots(ways + query_rows, columns, squeeze=False,
                             figsize=(1.25 * columns, 1.45 * (ways + query_rows) + 0.6))
    for ax in axes.flat:
        ax.axis("off")

    def show(ax, pixels, caption: str, colour: str | None = None) -> None:
        image = pixels.transpose(1, 2, 0) if pixels.ndim == 3 else pixels
        ax.imshow(image, cmap=None if pixels.ndim == 3 else "gray", vmin=0, vmax=255)
        ax.set_title(caption, fontsize=7, color=colour or "black")
        if colour:  # a frame: the axis back on, ticks hidden
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(2.5)

    short = lambda name: name if len(name) <= 18 else name[:17] + "\u2026"  # noqa: E731
    for c in range(ways):
        for k in range(shots):
            show(axes[c, k], sheet.support[c, k], f"support: {short(sheet.names[c])}"
                 if k == 0 else "")
    for q, pixels in enumerate(sheet.queries):
        predicted = sheet.names[sheet.predicted[q]]
        if sheet.truth is None:
            show(axes[ways + q // columns, q % columns], pixels, short(predicted))
            continue
        right = sheet.predicted[q] == sheet.truth[q]
        caption = short(predicted) if right else (f"{short(predicted)}\n"
                                                  f"(is {short(sheet.names[sheet.truth[q]])})")
        show(axes[ways + q // columns, q % columns], pixels, caption,
             "tab:green" if right else "tab:red")
    if sheet.truth is not None:
        correct = sum(p == t for p, t in zip(sheet.predicted, sheet.truth))
        title += f": {correct} of {len(sheet.queries)} queries right (wrong ones framed in red)"
    fig.suptitle(title, fontsize=9, wrap=True)
    fig.tight_layout()
    save_figure(plt, fig, path)
    return path


def confusion_figure(classes: list[str], counts: list[list[int]], title: str,
                     path: Path) -> Path:
    """The confusion matrix of labelled queries (rows: true class, columns: predicted), each
    cell its count, shaded by the fraction of its row."""
    plt = require_matplotlib()
    side = max(4.0, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(side, side))
    totals = [max(1, sum(row)) for row in counts]
    shares = np.array([[c / t for c in row] for row, t in zip(counts, totals)])
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i, row in enumerate(counts):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center",
                    color="white" if shares[i, j] > 0.6 else "black")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted",
           ylabel="true class")
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    right = sum(counts[i][i] for i in range(len(classes)))
    ax.set_title("\n".join(textwrap.wrap(f"{title}: {right}/{sum(map(sum, counts))} right",
                                          int(side * TITLE_CHARS_PER_INCH))), fontsize="medium")
    fig.tight_layout()
    save_figure(plt, fig, path)
    return path


def save_figure(plt, fig, path: Path) -> None:
    """A PNG written whole or not at all (a full disk leaves no half image)."""
    try:
        atomic.write_file(Path(path), lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)


def metrics_file(run: Path) -> Path:
    """The metrics log of ``run``: a metrics.jsonl file, a checkpoint folder holding one, or a
    folder with exactly one checkpoint folder below it (results/runs/NAME; earlier attempts
    left out)."""
    if run.is_file() or (run / "metrics.jsonl").is_file():
        return run if run.is_file() else run / "metrics.jsonl"
    found = [p for p in run.rglob("metrics.jsonl") if "earlier" not in p.relative_to(run).parts]
    if len(found) != 1:
        raise UserError(f"{run}: " + ("no metrics.jsonl in it" if not found else
                                      f"{len(found)} metrics logs in it; name one"))
    return found[0]


def read_metrics(run: Path) -> list[dict]:
    path = metrics_file(run)
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line]
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the metrics log {path}: {exc}") from None


@dataclass
class Curve:
    """One run's epochs, the name its lines carry and the ways of its tasks (for chance)."""
    label: str
    records: list[dict]
    n_way: int | None


def curve(run: Path, label: str | None = None) -> Curve:
    """The run's metrics and, from the args.json beside them, its ways; its label: ``label``,
    else the experiment's name for a run of results/runs/NAME, else its method, shots and
    seed."""
    path = metrics_file(run)
    args_path = path.parent / "args.json"
    args = json.loads(args_path.read_text()) if args_path.exists() else {}
    parts = path.resolve().parts
    if label is None and "runs" in parts[:-2] and parts[parts.index("runs") + 2:][:1] == \
            ("checkpoints",):
        label = parts[parts.index("runs") + 1]
    if label is None:
        label = (f"{args['method']} {args['n_shot']}-shot, seed {args['seed']}" if args
                 else path.parent.name)
    return Curve(label, read_metrics(path), args.get("train_n_way"))


def changes(records: list[dict], key: str) -> list[tuple[int, object, object]]:
    """(epoch, before, after) wherever ``key`` takes a new value: the first epoch trained
    in a new phase of HyperMAML's schedule, or at a new learning rate."""
    found, previous = [], None
    for record in records:
        value = record.get(key)
        if previous is not None and value is not None and value != previous:
            found.append((record["epoch"], previous, value))
        previous = value if value is not None else previous
    return found


PHASE_STYLE = {"linestyle": "--", "linewidth": 1.0, "alpha": 0.6}
LR_STYLE = {"linestyle": "-.", "linewidth": 1.0, "alpha": 0.6}


def curves_figure(curves: list[Curve]):
    """Training loss (left) and accuracy (right) per epoch, one colour per run: training
    accuracy faint, validation with its 95% band (the reference's +- over the validation
    episodes), chance for each number of ways, and, in the run's colour, a dashed line where
    HyperMAML's phase changes (warm-up -> switch -> hypernetwork) and a dash-dotted one where
    the learning rate changes."""
    plt = require_matplotlib()
    from matplotlib.lines import Line2D
    entries = len(curves) + len({c.n_way for c in curves if c.n_way}) + 3
    legend_inches = 0.2 * math.ceil(entries / 2) + 0.25  # one legend below both panels
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.2 + legend_inches))
    marks: dict[tuple[str, int], tuple[set, str]] = {}  # (kind, epoch) -> colours, text
    for run in curves:
        epochs = [r["epoch"] for r in run.records]
        line, = loss_ax.plot(epochs, [r["train_loss"] for r in run.records], label=run.label)
        colour = line.get_color()
        acc_ax.plot(epochs, [r["train_acc"] for r in run.records], color=colour, alpha=0.35,
                    linewidth=1)
        validated = [r for r in run.records if "val_acc" in r]
        if validated:
            val = np.array([r["val_acc"] for r in validated])
            half = np.array([r.get("val_ci95", 0.0) for r in validated])
            at = [r["epoch"] for r in validated]
            acc_ax.plot(at, val, color=colour, marker="." if len(at) < 60 else None,
                        label=run.label)
            acc_ax.fill_between(at, val - half, val + half, color=colour, alpha=0.15,
                                linewidth=0)
        for epoch, _, phase in changes(run.records, "phase"):
            marks.setdefault(("phase", epoch), (set(), str(phase)))[0].add(colour)
        for epoch, _, lr in changes(run.records, "lr"):
            marks.setdefault(("lr", epoch), (set(), f"lr {lr:.2g}"))[0].add(colour)
    for (kind, epoch), (colours, text) in sorted(marks.items(), key=lambda m: m[0][1]):
        # A change several runs share is drawn once, in black; one run's in its colour.
        colour = colours.pop() if len(colours) == 1 else "black"
        style = PHASE_STYLE if kind == "phase" else LR_STYLE
        for ax in (loss_ax, acc_ax):
            ax.axvline(epoch, color=colour, **style)
        acc_ax.annotate(text, (epoch, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(2, -3), textcoords="offset points", rotation=90, va="top",
                        fontsize="x-small", color=colour)
    for n_way in sorted({c.n_way for c in curves if c.n_way}):
        acc_ax.axhline(100 / n_way, color="grey", linestyle=":", linewidth=1.2,
                       label=f"chance, {n_way}-way ({100 / n_way:.0f}%)")
    handles, labels = acc_ax.get_legend_handles_labels()
    style = {"color": "black"}
    extra = [("faint: training accuracy; band: validation's 95% interval",
              Line2D([], [], color="black", alpha=0.35))]
    kinds = {kind for kind, _ in marks}
    if "phase" in kinds:
        extra.append(("phase change (warm-up, switch, hypernetwork)",
                      Line2D([], [], **style, **PHASE_STYLE)))
    if "lr" in kinds:
        extra.append(("learning-rate change", Line2D([], [], **style, **LR_STYLE)))
    fig.legend(handles + [h for _, h in extra], labels + [t for t, _ in extra],
               fontsize="small", loc="lower center", ncol=2, frameon=False)
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="training loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 100),
               title="validation accuracy (training faint)")
    fig.tight_layout(rect=(0, legend_inches / (4.2 + legend_inches), 1, 1))
    return fig


def training_curves(runs: list[Path], path: Path, labels: list[str] | None = None) -> Path:
    """The figure of :func:`curves_figure` for ``runs`` (labels: see :func:`curve`), as a
    PNG."""
    plt = require_matplotlib()
    labels = labels or [None] * len(runs)
    fig = curves_figure([curve(run, label) for run, label in zip(runs, labels)])
    save_figure(plt, fig, path)
    return path


def tensorboard_export(runs: list[Path], logdir: Path) -> list[Path]:
    """Each run's metrics as TensorBoard scalars under ``logdir/LABEL`` (metrics.jsonl is
    read, never changed); the folders written."""
    written = []
    for run in runs:
        found = curve(run)
        folder = logdir / found.label.replace("/", "_").replace(" ", "_").replace(",", "")
        with records.TensorBoardLog(folder, purge_after=-1) as board:
            if not board.on:
                raise UserError("the TensorBoard export needs the tensorboard package: pip "
                                "install tensorboard")
            for record in found.records:
                board.append(record)
        written.append(folder)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Draw training curves from metrics logs.")
    sub = parser.add_subparsers(dest="figure", required=True)
    curves = sub.add_parser("curves", help="loss and accuracy per epoch of one or more runs")
    curves.add_argument("runs", nargs="+", type=Path,
                        help="checkpoint folders or metrics.jsonl files")
    curves.add_argument("--out", type=Path, default=Path("curves.png"), help="PNG to write")
    curves.add_argument("--labels", nargs="+", help="the runs' names in the legend (default: "
                        "the experiment of a results/runs/NAME run, else method, shots, seed)")
    board = sub.add_parser("tensorboard", help="write runs' metrics as TensorBoard scalars "
                           "(needs the tensorboard package; metrics.jsonl is only read)")
    board.add_argument("runs", nargs="+", type=Path, help="as for curves")
    board.add_argument("--logdir", type=Path, default=Path("tensorboard"),
                       help="where to write (tensorboard --logdir DIR shows them)")
    args = parser.parse_args(argv)
    if args.figure == "curves" and args.labels and len(args.labels) != len(args.runs):
        parser.error(f"--labels names {len(args.labels)} runs, but {len(args.runs)} are given")

    def draw() -> int:
        if args.figure == "tensorboard":
            for folder in tensorboard_export(args.runs, args.logdir):
                print(f"wrote {folder}")
            print(f"view with: tensorboard --logdir {args.logdir}")
            return 0
        print(f"wrote {training_curves(args.runs, args.out, args.labels)}")
        return 0

    return run_cli(draw)


if __name__ == "__main__":
    sys.exit(main())
