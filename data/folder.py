"""Turn a folder of your own images into a few-shot benchmark:

    python -m data.folder IMAGES [--name NAME] [--data_dir DIR] [--fractions 0.6 0.2 0.2]
                                 [--seed 0] [--image_size 84 | --grayscale]

IMAGES holds one folder per class (named as the class) with that class's images, any format
PIL reads, any size, colour or grayscale; a CUB-style copy (class folders under ``images/``,
metadata files beside it) or a folder whose only subfolder holds the classes is taken as such.
The classes are shuffled with ``--seed`` and split, as whole classes, into base / val / novel
by ``--fractions``. Nothing is written into IMAGES, which may be read-only or a photo library:
the benchmark (the filelists ``base.json``, ``val.json``, ``novel.json``, ``all.json`` with
paths relative to IMAGES, ``classes.txt`` saying which class went where, ``benchmark.json``
and the decoded image store) goes to ``DIR/NAME`` (default ``filelists/<folder name>``), after
which ``--dataset DIR/NAME`` trains and tests on it with train.py and test.py as any
benchmark. Every image is decoded here once; files that are not images are left out and
named. Images are stored as the photograph benchmarks are (RGB, resized to 1.15 x
``--image_size``, cropped to it per episode; ``--train_aug`` allowed), or, with
``--grayscale``, as the character benchmarks (one 28-pixel grey channel copied into three,
no augmentation).

``python -m data.folder --cross BASE EVAL --name NAME`` makes a cross-domain benchmark of two
prepared ones of the same image form, as the reference's ``cross`` (mini-ImageNet -> CUB):
every class of BASE to train on, EVAL's val and novel classes to validate and test on.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from cli.errors import UserError, run_cli
from data.augment import stored_size
from data.benchmarks import OWN_DESCRIPTION, find
from storage import atomic

SPLITS = ("base", "val", "novel")
CLASS_ROOT = "images"  # where CUB-style copies keep their class folders, beside metadata
CLASS_TABLE = "classes.txt"


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def class_root(root: Path) -> Path:
    """The folder whose subfolders are the classes: ``root`` itself, or, when ``root`` holds a
    single folder beside files only (CUB's ``images/`` beside ``classes.txt``, Caltech's
    ``101_ObjectCategories/``), that folder."""
    if not root.is_dir():
        raise UserError(f"{root}: no such folder (it needs one folder of images per class)")
    folders = [p for p in _visible(root) if p.is_dir()]
    if len(folders) == 1 and any(p.is_dir() for p in _visible(folders[0])):
        print(f"note: {root} holds one folder, {folders[0].name}/, beside files only: its "
              "subfolders are taken as the classes", flush=True)
        return folders[0]
    return root


def class_folders(root: Path) -> dict[str, list[str]]:
    """Each class folder's files (not hidden), relative to ``root``, sorted."""
    classes = {}
    for folder in (p for p in _visible(root) if p.is_dir()):
        files = [f"{folder.name}/{p.name}" for p in _visible(folder) if p.is_file()]
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


def _target(data_dir: Path, name: str, images: Path) -> Path:
    """The benchmark folder, refused inside the image folder (which is never written) and
    around it (the folder a user keeps it in, with files of their own beside it)."""
    if not name or "/" in name or name in (".", ".."):
        raise UserError(f"--name {name!r}: give a plain folder name")
    target = (data_dir / name).resolve()
    if target == images or images in target.parents:
        raise UserError(f"{target} is inside the image folder {images}, which is never "
                        "written: give another --data_dir")
    if target in images.parents:
        raise UserError(f"{target} holds the image folder {images}, and is never written: "
                        "give another --data_dir or --name")
    return target


def _claim(target: Path, description: dict) -> None:
    """Create ``target``, or accept it when it holds this very benchmark; anything else in it
    is left alone and refused (another split of the classes, or files of someone else's)."""
    _refuse_foreign(target)
    old = target / OWN_DESCRIPTION
    if old.exists():
        try:
            same = json.loads(old.read_text()) == description
        except (OSError, ValueError):
            same = False
        if not same:
            raise UserError(f"{old} describes another benchmark (other images, split or image "
                            "form); models trained on it would no longer match its filelists: "
                            "give another --name, or remove that folder to split anew")
    target.mkdir(parents=True, exist_ok=True)


def _refuse_foreign(target: Path) -> None:
    if (target.exists() and not (target / OWN_DESCRIPTION).exists()
            and (not target.is_dir() or any(target.iterdir()))):
        raise UserError(f"{target} exists and is not a benchmark made by python -m "
                        "data.folder: give another --name or --data_dir")


def _write_filelists(target: Path, splits: dict[str, list[str]],
                     classes: dict[str, list[str]]) -> None:
    for split, names in {**splits, "all": [n for s in SPLITS for n in splits[s]]}.items():
        filelist = {"label_names": names,
                    "image_names": [f for n in names for f in classes[n]],
                    "image_labels": [i for i, n in enumerate(names) for _ in classes[n]]}
        atomic.write_text(target / f"{split}.json", json.dumps(filelist) + "\n")
    atomic.write_text(target / CLASS_TABLE, "".join(
        f"{split}\t{name}\n" for split in SPLITS for name in splits[split]))


def recipe(dataset: str, colour: bool, shots: int) -> list[str]:
    """train.py's options for a first HyperMAML run on an image-folder benchmark: a short
    schedule (the published architecture, warm-up, switch and lr drop of the 128-epoch rows
    of RESULTS.md, shortened) that trains above chance in minutes on one CPU thread
    (tests/test_image_folders.py runs it), test.py taking the same options. Photographs:
    Conv4Pool with --train_aug, as the published CUB commands; 8 epochs of 100 tasks.
    Grayscale drawings: Conv4 as the character benchmarks (n_task 32, no augmentation); 32
    epochs of 100 tasks."""
    common = ["--dataset", dataset, "--method", "hyper_maml", "--n_shot", str(shots),
              "--lr_scheduler", "multisteplr", "--hm_maml_warmup", "--hn_head_len", "3",
              "--hm_enhance_embeddings", "True", "--hm_use_class_batch_input"]
    if shots > 1:
        common += ["--hn_sup_aggregation", "mean"]
    if colour:
        return common + ["--model", "Conv4Pool", "--train_aug", "--stop_epoch", "2",
                         "--lr", "1e-3", "--milestones", "6",
                         "--hm_maml_warmup_epochs", "1", "--hm_maml_warmup_switch_epochs", "3",
                         "--hn_hidden_size", "256"]
    return common + ["--model", "Conv4", "--stop_epoch", "1", "--lr", "1e-2",
                     "--milestones", "25", "--hm_maml_warmup_epochs", "3",
                     "--hm_maml_warmup_switch_epochs", "10", "--hn_hidden_size", "512"]


def write_benchmark(images: Path, target_dir: Path, name: str | None, fractions: list[float],
                    seed: int, image_size: int, grayscale: bool, ways: tuple[int, int],
                    shots_queries: tuple[int, int]) -> tuple[Path, dict]:
    """Check the image folder ``images`` and write its benchmark under ``target_dir``;
    returns the benchmark's folder and description."""
    from data.store import ImageForm, ImageStore, decode_all
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise UserError(f"--fractions takes three non-negative numbers (base val novel), got "
                        f"{' '.join(map(str, fractions))}")
    if not grayscale and not 8 <= image_size <= 1024:
        raise UserError(f"--image_size must be between 8 and 1024 pixels, got {image_size}")
    shots, queries = shots_queries
    if min(*ways, shots, queries) < 1:
        raise UserError("--train_n_way, --test_n_way, --n_shot and --n_query must be at least "
                        f"1, got {ways[0]}, {ways[1]}, {shots} and {queries}")
    images = images.resolve()
    target = _target(target_dir, name or images.name, images)
    _refuse_foreign(target)  # before the decoding, which takes a while
    root = class_root(images)
    classes = class_folders(root)

    form = ImageForm(28 if grayscale else stored_size(image_size), colour=not grayscale)
    files = [p for paths in classes.values() for p in paths]
    print(f"Decoding {len(files):,} files of {root} ...", flush=True)
    decoded, unusable = decode_all([root / p for p in files], form, strict=False)
    if unusable:
        named = ", ".join(files[i] for i in unusable[:5])
        more = f" and {len(unusable) - 5:,} more" if len(unusable) > 5 else ""
        print(f"note: {len(unusable):,} of the {len(files):,} files are not readable images "
              f"and are left out: {named}{more}", flush=True)
        left_out = {files[i] for i in unusable}
        classes = {c: [p for p in paths if p not in left_out] for c, paths in classes.items()}
        empty = [c for c, paths in classes.items() if not paths]
        if empty:
            raise UserError(f"class folder {root / empty[0]} holds no readable image")

    splits = split_classes(list(classes), fractions, seed)
    train_way, test_way = ways
    for split, names in splits.items():
        needed = train_way if split == "base" else test_way
        if len(names) < needed:
            raise UserError(f"the {split} split gets {len(names)} of the {len(classes)} classes "
                            f"of {root}, fewer than the {needed} of a {needed}-way episode: "
                            "give more classes, other --fractions, or fewer ways")
    small = {n: len(f) for n, f in classes.items() if len(f) < shots + queries}
    if small:
        first, count = next(iter(small.items()))
        raise UserError(f"class {first} of {root} has {count} images, fewer than the {shots} "
                        f"shots + {queries} queries an episode draws from a class; "
                        f"{len(small)} classes are that small: give fewer --n_shot / --n_query "
                        "(and train with that --n_shot) or more images")
    description = {"images": str(root), "image_size": 28 if grayscale else image_size,
                   "colour": not grayscale, "fractions": fractions, "seed": seed,
                   "classes": {split: len(names) for split, names in splits.items()}}
    _claim(target, description)
    _write_filelists(target, splits, classes)
    atomic.write_text(target / OWN_DESCRIPTION, json.dumps(description, indent=2) + "\n")
    kept = sorted(set(range(len(files))) - set(unusable), key=lambda i: files[i])
    ImageStore.save(target, [files[i] for i in kept], torch.from_numpy(decoded[kept]), form)
    return target, description


def write_cross(base: str, evaluation: str, target_dir: Path, name: str) -> Path:
    """A benchmark that trains on every class of ``base`` and validates and tests on the val
    and novel classes of ``evaluation`` (both prepared, of one image form); returns its
    folder."""
    benchmarks = {role: find(dataset) for role, dataset in (("base", base),
                                                           ("evaluation", evaluation))}
    first, second = benchmarks.values()
    if (first.image_size, first.colour) != (second.image_size, second.colour):
        forms = [f"{b.image_size}-pixel {'colour' if b.colour else 'grey'}"
                 for b in benchmarks.values()]
        raise UserError(f"{base} is {forms[0]} and {evaluation} {forms[1]}: a cross-domain "
                        "benchmark needs one image form (make one of them again with "
                        "--image_size or --grayscale)")

    def folder(benchmark, split: str) -> str:
        dataset_folder, filelist = benchmark.splits[split]
        path = (target_dir / dataset_folder).resolve()  # an own benchmark's is absolute
        if not (path / f"{filelist}.json").is_file():
            where = dataset_folder if benchmark.own else f"bash filelists/{dataset_folder}/" \
                                                         f"download_{dataset_folder}.sh"
            raise UserError(f"{path / filelist}.json is missing: prepare it first ({where})")
        return str(path)

    base_folder, base_list = first.splits["base"]
    if first.own and (Path(base_folder) / "all.json").is_file():
        base_list = "all"  # every class of an own benchmark, as cross takes all of mini-ImageNet
    splits = {"base": [folder(first, "base"), base_list],
              **{split: [folder(second, split), second.splits[split][1]]
                 for split in ("val", "novel")}}
    description = {"cross": [base, evaluation], "image_size": first.image_size,
                   "colour": first.colour, "splits": splits}
    target = _target(target_dir, name, Path(splits["base"][0]))
    if any(Path(f) == target for f, _ in splits.values()):
        raise UserError(f"--name {name} is one of the two benchmarks it crosses")
    _claim(target, description)
    atomic.write_text(target / OWN_DESCRIPTION, json.dumps(description, indent=2) + "\n")
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.folder",
                                     description=__doc__.split("\n\n")[0],
                                     epilog="Then: python train.py --dataset DIR/NAME ...")
    parser.add_argument("images", type=Path, nargs="?",
                        help="folder with one folder of images per class")
    parser.add_argument("--cross", nargs=2, metavar=("BASE", "EVAL"),
                        help="instead: a cross-domain benchmark of two prepared ones (each a "
                        "built-in --dataset name or a benchmark folder)")
    parser.add_argument("--name", help="the benchmark's folder under --data_dir (default: the "
                        "image folder's name; required with --cross)")
    parser.add_argument("--data_dir", type=Path, help="where benchmarks are written "
                        "(default filelists/, as train.py's --data_dir)")
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
        from data.prepare import default_data_dir
        data_dir = args.data_dir or default_data_dir()
        if args.cross:
            if args.images or not args.name:
                raise UserError("--cross BASE EVAL takes no image folder and needs --name")
            target = write_cross(*args.cross, data_dir, args.name)
            print(f"{target}: trains on {args.cross[0]}, validates and tests on "
                  f"{args.cross[1]}; train with --dataset {target}")
            return 0
        if args.images is None:
            raise UserError("give the image folder (or --cross BASE EVAL)")
        target, described = write_benchmark(
            args.images, data_dir, args.name, args.fractions, args.seed, args.image_size,
            args.grayscale, (args.train_n_way, args.test_n_way), (args.n_shot, args.n_query))
        counts = ", ".join(f"{split} {n}" for split, n in described["classes"].items())
        print(f"{target}: classes {counts} (which went where: {target / CLASS_TABLE})")
        command = shlex.join(recipe(str(target), described["colour"], args.n_shot))
        print(f"A first run (minutes on a CPU; test.py takes the same options):\n"
              f"  python train.py {command}")
        return 0

    return run_cli(write)


if __name__ == "__main__":
    sys.exit(main())
