"""Turn a folder of your own images into a few-shot benchmark:

    python -m data.folder DIR [--fractions 0.6 0.2 0.2] [--seed 0] [--image_size 84]

DIR holds one folder per class (named as the class) with that class's images, any format PIL
reads, any size, colour or grayscale. The classes are shuffled with ``--seed`` and split, as
whole classes, into base / val / novel by ``--fractions``; the filelists ``base.json``,
``val.json``, ``novel.json`` (paths relative to DIR) and ``benchmark.json`` (image size,
colour) are written into DIR, after which ``--dataset DIR`` trains and tests on it with
train.py and test.py as any benchmark. Images are stored as the photograph benchmarks are
(RGB, resized to 1.15 x ``--image_size``, cropped to it per episode; ``--train_aug``
allowed), or, with ``--grayscale``, as the character benchmarks (one 28-pixel grey channel
copied into three, no augmentation).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import io_utils
from data.benchmarks import OWN_DESCRIPTION
from errors import UserError, run_cli

SPLITS = ("base", "val", "novel")


def class_folders(root: Path) -> dict[str, list[str]]:
    """Each class folder's image files (not hidden), relative to ``root``, sorted."""
    if not root.is_dir():
        raise UserError(f"{root}: no such folder (it needs one folder of images per class)")
    classes = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f"{folder.name}/{p.name}" for p in folder.iterdir()
                       if p.is_file() and not p.name.startswith("."))
        if not files:
            raise UserError(f"class folder {folder} holds no image")
        classes[folder.name] = files
    if not classes:
        raise UserError(f"{root} has no class folders (one folder of images per class)")
    return classes


def split_classes(names: list[str], fractions: list[float], seed: int) -> dict[str, list[str]]:
    """Whole classes to base / val / novel: shuffled with ``seed``, cut by ``fractions``
    (rounded, every split at least one class), each split in name order."""
    order = list(np.random.default_rng(seed).permutation(len(names)))
    total = sum(fractions)
    cuts = np.round(np.cumsum(fractions) / total * len(names)).astype(int)
    bounds = [0, *cuts[:-1], len(names)]
    return {split: sorted(names[i] for i in order[bounds[k]:bounds[k + 1]])
            for k, split in enumerate(SPLITS)}


def write_benchmark(root: Path, fractions: list[float], seed: int, image_size: int,
                    grayscale: bool, ways: tuple[int, int], shots_queries: tuple[int, int]
                    ) -> dict:
    """Check and write the benchmark of ``root``; returns its description."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise UserError(f"--fractions takes three non-negative numbers (base val novel), got "
                        f"{' '.join(map(str, fractions))}")
    classes = class_folders(root)
    splits = split_classes(list(classes), fractions, seed)
    train_way, test_way = ways
    for split, names in splits.items():
        needed = train_way if split == "base" else test_way
        if len(names) < needed:
            raise UserError(f"the {split} split gets {len(names)} of the {len(classes)} classes "
                            f"of {root}, fewer than the {needed} of a {needed}-way episode: "
                            "give more classes, other --fractions, or fewer ways")
    shots, queries = shots_queries
    if shots < 1 or queries < 1:
        raise UserError(f"--n_shot and --n_query must be at least 1, got {shots} and {queries}")
    small = {n: len(f) for n, f in classes.items() if len(f) < shots + queries}
    if small:
        name, count = next(iter(small.items()))
        raise UserError(f"class {name} of {root} has {count} images, fewer than the {shots} "
                        f"shots + {queries} queries an episode draws from a class; "
                        f"{len(small)} classes are that small: give fewer --n_shot / --n_query "
                        "(and train with that --n_shot) or more images")
    description = {"image_size": 28 if grayscale else image_size, "colour": not grayscale,
                   "fractions": fractions, "seed": seed,
                   "classes": {split: len(names) for split, names in splits.items()}}
    old = root / OWN_DESCRIPTION
    if old.exists() and json.loads(old.read_text()) != description:
        raise UserError(f"{old} describes another split of these classes; models trained on "
                        "it would no longer match its filelists: remove it to split anew")
    for split, names in splits.items():
        filelist = {"label_names": names,
                    "image_names": [f for n in names for f in classes[n]],
                    "image_labels": [i for i, n in enumerate(names) for _ in classes[n]]}
        io_utils.write_text(root / f"{split}.json", json.dumps(filelist) + "\n")
    io_utils.write_text(old, json.dumps(description, indent=2) + "\n")
    return description


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.folder",
                                     description=__doc__.split("\n\n")[0],
                                     epilog="Then: python train.py --dataset DIR ...")
    parser.add_argument("root", type=Path, help="folder with one folder of images per class")
    parser.add_argument("--fractions", type=float, nargs=3, default=[0.6, 0.2, 0.2],
                        metavar=("BASE", "VAL", "NOVEL"),
                        help="shares of the classes in each split (default 0.6 0.2 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the class shuffle")
    parser.add_argument("--image_size", type=int, default=84,
                        help="side of the backbone's input for colour images (default 84)")
    parser.add_argument("--grayscale", action="store_true",
                        help="characters or other line drawings: 28-pixel grey, as Omniglot")
    parser.add_argument("--train_n_way", type=int, default=5)
    parser.add_argument("--test_n_way", type=int, default=5)
    parser.add_argument("--n_shot", type=int, default=5,
                        help="support images per class of the runs to come (default 5, as "
                        "train.py's); every class needs n_shot + n_query images")
    parser.add_argument("--n_query", type=int, default=1,
                        help="queries per class an episode needs at least (default 1; "
                        "episodes take up to 16 where the classes have them)")
    args = parser.parse_args(argv)

    def write() -> int:
        described = write_benchmark(args.root.resolve(), args.fractions, args.seed,
                                    args.image_size, args.grayscale,
                                    (args.train_n_way, args.test_n_way), (args.n_shot, args.n_query))
        counts = ", ".join(f"{split} {n}" for split, n in described["classes"].items())
        print(f"{args.root}: classes {counts}; train with --dataset {args.root}")
        return 0

    return run_cli(write)


if __name__ == "__main__":
    sys.exit(main())
