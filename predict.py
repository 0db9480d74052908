"""Classify your own images from a few labelled examples with a trained model:

    python predict.py MODEL SUPPORT_DIR QUERY [QUERY ...] [--json]

MODEL is a model file (models/*.safetensors) or a run checkpoint (.tar). SUPPORT_DIR holds one
folder per class, named as the class, with that class's example images; QUERY are images, or
folders of images, to classify. The model adapts to the support set exactly as in test.py
(HyperMAML's hypernetwork update, MAML's inner steps, BayesHMAML's classifier posterior) and
prints, for each query, the predicted class and the probability of every class; for
BayesHMAML also the spread (standard deviation) of those probabilities over classifiers
sampled from its posterior. Labelled queries (class folders) are scored.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from backbones import BACKBONES
from cli import config
from cli.errors import UserError, run_cli
from data import augment
from data.benchmarks import Benchmark, find
from data.episodes import Episode, Normaliser
from data.store import ImageForm, decode
from methods import METHODS
from reports import plots, statistics
from runtime import allocator, loops, progress, setup
from runtime.device import resolve_device
from storage import checkpoints

EXPECTS = """
What the images should be: anything PIL reads, any size, colour or grayscale. Each is turned
into the form of the model's training data (its dataset is in the model file):
- characters (omniglot, cross_char): grayscale, resized to 32x32 (aspect ratio not kept),
  centre crop 28x28, dark strokes on a light background (Omniglot's polarity, to which
  EMNIST was inverted); --invert auto inverts an image whose border is darker than
  mid-grey. The character should fill most of the image, as in Omniglot and EMNIST;
- photographs (CUB, miniImagenet, cross, folders of your own photographs): colour, resized
  to 96x96 (aspect ratio not kept), centre crop 84x84, as the reference tests them.

The support set needs as many classes as the model's ways. Each class needs as many images
as the model's shots where its hypernetwork reads a fixed number (HyperMAML and BayesHMAML
with --hn_sup_aggregation concat); otherwise any number, the same for every class.

Each query is classified with the support set alone (--query_statistics each): BatchNorm
uses the statistics of the batch it is given, at test time too, so the batch is the support
images and that query, and a query's answer never depends on which other queries came with
it. --query_statistics batch normalises the queries of a call together, as a benchmark's
test episode does (test.py). Labels are given to the classes in an order fixed by the
images' content, so renaming or reordering the class folders changes nothing.

Labelled queries (a folder holding one folder per class, named as the support set's
classes) are scored: accuracy with its Wilson 95% interval, the confusion matrix and each
class's accuracy (--plot draws the matrix).
"""


def image_files(path: Path) -> list[Path]:
    """``path`` if it is a file, else the files inside it (not hidden), sorted."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"{path}: no such file or folder")
    return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))


class ImageReader:
    """Images as the model's training data was stored: grayscale characters in Omniglot's
    polarity (inverted if asked, or if ``auto`` finds a dark border), or colour photographs
    resized to the Resize square and centre-cropped to the input size."""

    def __init__(self, benchmark: Benchmark, invert: str):
        self.form = ImageForm(benchmark.stored_size, benchmark.colour)
        self.crop = benchmark.image_size
        self.invert = invert

    def __call__(self, path: Path) -> np.ndarray:
        try:
            pixels = decode(path, self.form)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read image {path}: {exc}") from None
        if self.form.colour:
            return augment.centre_crop(pixels, self.crop).copy()
        border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
        if self.invert == "yes" or (self.invert == "auto" and border.mean() < 128):
            pixels = 255 - pixels
        return pixels


def support_files(folder: Path) -> dict[str, list[Path]]:
    """The image files of each class folder of the support set, checked: at least one each,
    the same number for every class."""
    if not folder.is_dir():
        raise UserError(f"support set {folder}: no such folder (it needs one folder per class)")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"support set {folder} has no class folders (one folder per class, "
                        "holding that class's images)")
    files = {cls.name: image_files(cls) for cls in classes}
    for name, found in files.items():
        if not found:
            raise UserError(f"class {name} of {folder} has no image")
    counts = {name: len(found) for name, found in files.items()}
    if len(set(counts.values())) > 1:
        raise UserError(f"the classes of {folder} hold different numbers of images "
                        f"({', '.join(f'{n}: {c}' for n, c in counts.items())}); give each "
                        "the same number")
    return files


@dataclasses.dataclass
class SupportSet:
    """The classes in label order and their images ``uint8 [classes, shots, ...]``."""
    names: list[str]
    images: np.ndarray


def read_support(files: dict[str, list[Path]], read: ImageReader) -> SupportSet:
    images = {name: [read(f) for f in found] for name, found in files.items()}
    # Label order and shot order from the pixels alone, so that neither file names nor the
    # order the file system lists them in can change a prediction.
    digest = lambda pixels: hashlib.sha256(pixels.tobytes()).hexdigest()  # noqa: E731
    for name in images:
        images[name].sort(key=digest)
    names = sorted(images, key=lambda n: hashlib.sha256(
        "".join(digest(p) for p in images[n]).encode()).hexdigest())
    return SupportSet(names, np.stack([np.stack(images[n]) for n in names]))


# Queries classified together by default: bounded memory (bench/predict_memory.py, on the
# CPU: a peak under 1.3 / 1.7 GB, where one batch grows by 0.4 / 3.6 MB a query).
QUERY_BATCH = {"grey": 1000, "colour": 200}


def load_model(path: Path, device: torch.device, shots: int, precision: str):
    """The trained model in ``path`` (test-time behaviour), its options, its benchmark's
    image form and how it computes, built as test.py builds it (:mod:`runtime.setup`) for a
    support set of ``shots`` images per class, computing in ``precision`` (the caller's
    choice, as in test.py, not the arithmetic the model was trained in)."""
    state = checkpoints.load_checkpoint(path, None)
    say = lambda text: print(text, file=sys.stderr)  # noqa: E731 (stdout holds the answers)
    opts, benchmark = setup.settle(config.Options(precision=precision), {"precision"}, "test",
                                   state, str(path), say, image_benchmark(state))
    compute = setup.choose_compute(opts, device)
    fixed = METHODS[opts.method].fixed_shots(opts)
    if fixed is not None and shots != fixed:
        raise UserError(f"{path} holds a {opts.train_n_way}-way {opts.n_shot}-shot {opts.method} "
                        f"model whose hypernetwork reads exactly {fixed} image(s) per class; "
                        f"the support set has {shots}")
    if shots != opts.n_shot:  # allowed (the inner loop takes any number), rarely as good
        say(f"note: {path} was trained {opts.n_shot}-shot; this support set has {shots} "
            "image(s) per class: a model usually does worse with other shots than it was "
            "trained for")
    opts.n_shot = shots
    model = setup.build_method(opts, benchmark, compute, state, path)
    model.eval()
    model.set_epoch(None)
    if state.get("schedule", {}).get("phase") == "maml-warmup":
        say(f"note: {path} was saved in the pure MAML warm-up: its hypernetwork is untrained")
    return model, opts, benchmark, compute


def image_benchmark(state: dict) -> Benchmark:
    """The benchmark a model was trained on, for the form of its images: looked up, or, for
    a folder of images that is not on this machine, the form its model file records."""
    try:
        return find(state["config"]["dataset"])
    except UserError:
        form = state.get("image_form")
        if not form:
            raise
        return Benchmark({}, int(form["image_size"]), bool(form["colour"]))


def posterior_spread(model, opts, benchmark: Benchmark, compute: setup.Compute,
                     episode: Episode, samples: int, alone: bool) -> torch.Tensor:
    """BayesHMAML: the standard deviation of each query's class probabilities over
    ``samples`` classifiers drawn from the task's posterior: the same weights, asked for one
    sampled classifier per call, each call with its own seed."""
    single = setup.build_method(dataclasses.replace(opts, hm_weight_set_num_test=1), benchmark,
                                compute)
    single.load_state_dict(model.state_dict())
    single.eval()
    single.set_epoch(None)
    return torch.stack([query_probabilities(single, compute,
                                            dataclasses.replace(episode, seed=seed), alone)
                        for seed in range(episode.seed + 1, episode.seed + 1 + samples)]
                       ).std(dim=0)


def query_probabilities(model, compute: setup.Compute, episode: Episode, alone: bool
                        ) -> torch.Tensor:
    """``[queries, classes]`` softmax of the adapted model. ``alone``: each query with the
    support set only, so that BatchNorm's statistics, taken from the batch it normalises,
    come from the support images and that query (its answer depends on nothing else);
    otherwise all queries together, exactly as test.py evaluates an episode."""
    if not alone:
        return softmax_of(model, compute, episode)
    shown = len(episode.support_x)
    rows = []
    for query in episode.query_x.split(1):
        # The support images ride along as queries: they give the statistics; only the last
        # row, the query's, is read.
        with_support = torch.cat([episode.support_x, query])
        rows.append(softmax_of(model, compute, dataclasses.replace(
            episode, query_x=with_support, query_y=episode.query_y.new_zeros(shown + 1)))[-1])
    return torch.stack(rows)


def softmax_of(model, compute: setup.Compute, episode: Episode) -> torch.Tensor:
    with compute.arithmetic():
        result = model.evaluate_task(episode)  # its loss uses placeholder labels: unread
    # A diverged model's NaN logits would "predict" the first class, as in test.py's refusal.
    loops.require_finite([result], "predict.py")
    return torch.softmax(result.logits.float(), dim=1)


def predict(args) -> int:
    if args.plot:
        plots.require_matplotlib()  # before any work, as test.py --plot
    refuse_swapped(args)
    device = resolve_device(args.device)
    files = support_files(args.support)
    n_way, shots = len(files), len(next(iter(files.values())))
    model, opts, benchmark, compute = load_model(args.model, device, shots, args.precision)
    if n_way != opts.train_n_way:
        raise UserError(f"{args.model} holds a {opts.train_n_way}-way model; the support set "
                        f"{args.support} has {n_way} classes")
    queries, labels = query_files(args.queries, set(files))
    read = ImageReader(benchmark, args.invert)
    support = read_support(files, read)
    normalise = Normaliser(BACKBONES[opts.model].input_channels, device)
    pixels = lambda images: torch.from_numpy(images).to(device)  # noqa: E731
    support_x = normalise(pixels(support.images), benchmark.colour).flatten(0, 1)
    support_y = torch.arange(n_way, device=device).repeat_interleave(shots)
    size = args.query_batch or (QUERY_BATCH["colour" if benchmark.colour else "grey"])
    batches = [queries[i:i + size] for i in range(0, len(queries), size)]
    alone = args.query_statistics == "each"
    if len(batches) > 1 and not alone:
        print(f"note: {len(queries):,} queries, classified in {len(batches)} batches of at most "
              f"{size:,} (--query_batch), so that memory stays bounded; BatchNorm takes each "
              "batch's statistics, as test.py's episodes do, so another batch size can change "
              "a few answers", file=sys.stderr)
    probabilities, spreads, drawn = [], [], []
    for batch in progress.progress(batches, len(batches), "query batches"):
        query_pixels = np.stack([read(q) for q in batch])
        episode = Episode(
            support_x=support_x, support_y=support_y,
            query_x=normalise(pixels(query_pixels), benchmark.colour),
            query_y=torch.zeros(len(batch), dtype=torch.long, device=device), seed=args.seed)
        probabilities.append(query_probabilities(model, compute, episode, alone).cpu())
        if METHODS[opts.method].samples_classifiers:
            spreads.append(posterior_spread(model, opts, benchmark, compute, episode,
                                            args.samples, alone).cpu())
        if args.plot:
            drawn.append(query_pixels)
    probabilities = torch.cat(probabilities)
    spread = torch.cat(spreads) if spreads else None
    rows = answers(queries, support.names, probabilities, spread, labels)
    scored = score(rows, support.names) if labels else None
    report(rows, scored, args.json)
    if args.plot:
        sheet = plots.EpisodeSheet(support=support.images, names=support.names,
                                   queries=np.concatenate(drawn),
                                   predicted=probabilities.argmax(dim=1).tolist())
        title = (f"{args.model.name}: {len(queries)} queries classified from {shots} "
                 "example(s) per class")
        sheet_path = args.plot
        if scored:
            plots.confusion_figure(scored["classes"], scored["confusion"], title, args.plot)
            print(f"Confusion matrix: {args.plot}", file=sys.stderr)
            sheet_path = args.plot.with_name(f"{args.plot.stem}_sheet{args.plot.suffix}")
        plots.episode_sheet(sheet, sheet_path, title)
        print(f"Episode sheet: {sheet_path}", file=sys.stderr)
    return 0


def refuse_swapped(args) -> None:
    """The model file comes first: name the mix-up where a folder stands in its place and
    a model file in the support set's."""
    model_like = lambda path: path.suffix in (checkpoints.MODEL_SUFFIX, ".tar")  # noqa: E731
    if args.model.is_dir() and (model_like(args.support) or any(map(model_like, args.queries))):
        raise UserError(f"{args.model} is a folder and a model file comes later: the model "
                        "comes first (python predict.py MODEL SUPPORT_DIR QUERY ...)")


def class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def query_files(paths: list[Path], classes: set[str]) -> tuple[list[Path], list[str] | None]:
    """The query images, and their labels where the queries are labelled: folders holding
    one folder per class (named as the support set's classes), which predict.py then scores."""
    labelled = [p for p in paths if p.is_dir() and class_folders(p)]
    if not labelled:
        found = [f for q in paths for f in image_files(q)]
        if not found:
            raise UserError("no query image given")
        return found, None
    if len(labelled) != len(paths):
        raise UserError("give the queries either as labelled folders (one folder per class, "
                        "to score) or as images and folders of images, not both")
    files, labels = [], []
    for folder in labelled:
        for cls in class_folders(folder):
            if cls.name not in classes:
                raise UserError(f"{cls} is not a class of the support set (its classes: "
                                f"{', '.join(sorted(classes))})")
            for image in image_files(cls):
                files.append(image)
                labels.append(cls.name)
    if not files:
        raise UserError(f"the labelled query folders {', '.join(map(str, labelled))} hold no "
                        "image")
    return files, labels


def answers(queries: list[Path], names: list[str], probabilities: torch.Tensor,
            spread: torch.Tensor | None, labels: list[str] | None) -> list[dict]:
    shown = sorted(range(len(names)), key=lambda i: names[i])  # classes by name
    rows = []
    for q, path in enumerate(queries):
        row = {"query": str(path), "prediction": names[int(probabilities[q].argmax())],
               "probabilities": {names[i]: round(float(probabilities[q, i]), 6) for i in shown}}
        if labels:
            row["label"] = labels[q]
        if spread is not None:
            row["spread"] = {names[i]: round(float(spread[q, i]), 6) for i in shown}
        rows.append(row)
    return rows


def score(rows: list[dict], names: list[str]) -> dict:
    """Accuracy over the labelled queries with its Wilson 95% interval, the confusion
    matrix (rows: true class, columns: predicted; classes by name) and each class's
    accuracy."""
    classes = sorted(names)
    index = {name: i for i, name in enumerate(classes)}
    confusion = [[0] * len(classes) for _ in classes]
    for row in rows:
        confusion[index[row["label"]]][index[row["prediction"]]] += 1
    right = sum(confusion[i][i] for i in range(len(classes)))
    low, high = statistics.proportion_interval(right, len(rows))
    per_class = {name: {"correct": confusion[i][i], "queries": sum(confusion[i])}
                 for i, name in enumerate(classes) if sum(confusion[i])}
    return {"correct": right, "queries": len(rows), "accuracy": right / len(rows),
            "interval95": [low, high], "classes": classes, "confusion": confusion,
            "per_class": per_class}


def report(rows: list[dict], scored: dict | None, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"answers": rows, **scored} if scored else rows, indent=2))
        return
    for row in rows:
        cells = [f"{printable(name)} {p:.3f}" + (f" +- {row['spread'][name]:.3f}"
                                                 if "spread" in row else "")
                 for name, p in row["probabilities"].items()]
        truth = f" [true: {printable(row['label'])}]" if "label" in row else ""
        print(f"{printable(row['query'])}: {printable(row['prediction'])}{truth}  "
              f"({', '.join(cells)})")
    if scored:
        print("\n".join(score_lines(scored)))


def score_lines(scored: dict) -> list[str]:
    low, high = scored["interval95"]
    lines = [f"accuracy {scored['correct']}/{scored['queries']} = "
             f"{100 * scored['accuracy']:.1f}% (95% Wilson interval {100 * low:.1f}-"
             f"{100 * high:.1f}%, over these {scored['queries']} queries)",
             "confusion (rows: true class, columns: predicted):"]
    names = [printable(n) for n in scored["classes"]]
    width = max(6, *map(len, names))
    lines.append(" " * width + "".join(f" {n[:width]:>{width}}" for n in names))
    for name, counts in zip(names, scored["confusion"]):
        lines.append(f"{name:<{width}}" + "".join(f" {c:>{width}}" for c in counts))
    lines.append("per class: " + ", ".join(
        f"{printable(n)} {c['correct']}/{c['queries']}" for n, c in scored["per_class"].items()))
    return lines


def printable(text: str) -> str:
    """``text`` on one line: a class or file name holding a newline or another control
    character is shown escaped, so that each query keeps its one line."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def build_parser() -> argparse.ArgumentParser:
    """predict.py's command line (also rendered on docs/options.md)."""
    parser = config.OneLineParser(description=__doc__,
                                  epilog=EXPECTS,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a model file (.safetensors) or run "
                        "checkpoint (.tar)")
    parser.add_argument("support", type=Path, help="folder with one folder of images per class")
    parser.add_argument("queries", type=Path, nargs="+", help="images or folders of images; "
                        "or labelled folders (one folder per class, named as the support "
                        "set's), which are then scored: accuracy, confusion matrix, per class")
    parser.add_argument("--json", action="store_true",
                        help="print JSON: an array with an object per query; for labelled "
                        "queries one object with that array (as 'answers') and the scores")
    parser.add_argument("--query_statistics", default="each", choices=("each", "batch"),
                        help="each: every query is classified with the support set alone, so "
                        "that its answer does not depend on the other queries (BatchNorm "
                        "takes the statistics of the support images and that query); batch: "
                        "the queries of a batch together, as test.py's episodes (the "
                        "benchmark protocol; default each)")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="also draw the support set "
                        "and each query with its predicted class into this PNG file (for "
                        "labelled queries: the confusion matrix, and the sheet beside it as "
                        "PNG_sheet.png)")
    parser.add_argument("--invert", default="auto", choices=("auto", "yes", "no"),
                        help="turn light strokes on a dark background into the training data's "
                        "dark on light (default: auto, by the image's border)")
    parser.add_argument("--samples", type=int, default=20, help="BayesHMAML: classifiers "
                        "sampled for the spread of the probabilities (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled classifiers")
    parser.add_argument("--query_batch", type=int, default=None,
                        help="queries classified together, which bounds the memory (default "
                        f"{QUERY_BATCH['grey']:,} characters, {QUERY_BATCH['colour']:,} "
                        "photographs: a peak RSS under 1.3 and 1.7 GB)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                        help="where to compute: auto picks cuda, then mps, then cpu")
    precision = next(f for f in dataclasses.fields(config.Options) if f.name == "precision")
    parser.add_argument("--precision", default=precision.default,
                        help=f"{precision.metadata['help']} (default {precision.default}, "
                        "whatever the model was trained in, as in test.py)",
                        **precision.metadata["argparse"])
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 2 <= args.samples <= 1000:
        parser.error(f"--samples must be between 2 (a spread needs two) and 1000, got "
                     f"{args.samples}")
    if args.query_batch is not None and not 1 <= args.query_batch <= 100_000:
        parser.error(f"--query_batch must be between 1 and 100,000, got {args.query_batch}")

    return run_cli(lambda: predict(args))


if __name__ == "__main__":
    allocator.keep_freed_memory()
    sys.exit(main())
