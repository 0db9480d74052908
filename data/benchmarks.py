"""What each ``--dataset`` is: which prepared datasets and filelists hold its splits, and in
what form its images reach the backbone.

The character benchmarks (Omniglot, Omniglot -> EMNIST) are grayscale 28 x 28, never
augmented (the reference asserts it); the image benchmarks (CUB, mini-ImageNet, mini-ImageNet
-> CUB) are colour 84 x 84, stored at the reference's Resize square (96 x 96) and cropped, or
augmented with ``--train_aug``, when episodes are built (:mod:`data.augment`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cli.errors import UserError, closest
from data.augment import stored_size

# What python -m data.folder writes into a benchmark folder of its own (see data/folder.py).
OWN_DESCRIPTION = "benchmark.json"


@dataclass(frozen=True)
class Benchmark:
    # split -> (prepared dataset folder, filelist name without .json)
    splits: dict[str, tuple[str, str]]
    image_size: int  # the side of the backbone's input
    colour: bool  # RGB photographs; else grayscale characters

    @property
    def datasets(self) -> list[str]:
        """The prepared datasets the benchmark reads, each once."""
        return list(dict.fromkeys(folder for folder, _ in self.splits.values()))

    @property
    def stored_size(self) -> int:
        """The side images are stored at: the character store holds the final crop, the
        colour store the Resize square that crops are taken from."""
        return stored_size(self.image_size) if self.colour else self.image_size

    @property
    def augmentable(self) -> bool:
        return self.colour

    @property
    def own(self) -> bool:
        """A folder of the user's own images, ready as it is (nothing to prepare)."""
        return all(Path(folder).is_absolute() for folder, _ in self.splits.values())


def _same_folder(folder: str, **filelists: str) -> dict[str, tuple[str, str]]:
    return {split: (folder, filelist) for split, filelist in filelists.items()}


CHARACTERS = dict(image_size=28, colour=False)
PHOTOGRAPHS = dict(image_size=84, colour=True)

BENCHMARKS: dict[str, Benchmark] = {
    "omniglot": Benchmark(_same_folder("omniglot", base="base", val="val", novel="novel"),
                          **CHARACTERS),
    "cross_char": Benchmark({"base": ("omniglot", "noLatin"), "val": ("emnist", "val"),
                             "novel": ("emnist", "novel")}, **CHARACTERS),
    "CUB": Benchmark(_same_folder("CUB", base="base", val="val", novel="novel"), **PHOTOGRAPHS),
    "miniImagenet": Benchmark(_same_folder("miniImagenet", base="base", val="val",
                                           novel="novel"), **PHOTOGRAPHS),
    # The reference's cross-domain setting: all 100 mini-ImageNet classes, then CUB.
    "cross": Benchmark({"base": ("miniImagenet", "all"), "val": ("CUB", "val"),
                        "novel": ("CUB", "novel")}, **PHOTOGRAPHS),
}

# Every filelist name a benchmark reads (python -m data.folder writes base, val, novel and
# all). A dataset folder's image store holds the images these list and no other .json is taken
# for a filelist, so notes or metadata a user keeps beside them change nothing.
FILELISTS = tuple(sorted({name for benchmark in BENCHMARKS.values()
                          for _, name in benchmark.splits.values()}))


TOOLKIT = Path(__file__).resolve().parents[1]


def find(dataset: str) -> Benchmark:
    """The benchmark ``--dataset`` names: a built-in one, or a benchmark folder written by
    ``python -m data.folder`` (of your own images, or a cross-domain pair)."""
    if dataset in BENCHMARKS:
        return BENCHMARKS[dataset]
    folder = benchmark_folder(dataset)
    description = folder / OWN_DESCRIPTION
    try:
        described = json.loads(description.read_text())
    except FileNotFoundError:
        described = None
    except (OSError, ValueError, RecursionError) as exc:
        raise UserError(f"{description} cannot be read ({type(exc).__name__}): make the "
                        "benchmark again with python -m data.folder") from None
    if described is not None:
        try:
            if "splits" in described:  # a cross-domain pair: splits in other benchmark folders
                splits = {split: (str(Path(described["splits"][split][0])),
                                  str(described["splits"][split][1]))
                          for split in ("base", "val", "novel")}
            else:
                splits = {split: (str(folder), split) for split in ("base", "val", "novel")}
            size, colour = described["image_size"], described["colour"]
            if type(size) is int and 8 <= size <= 1024 and isinstance(colour, bool):
                return Benchmark(splits, size, colour)
        except (KeyError, TypeError, IndexError):
            pass
        raise UserError(f"{description} is not a benchmark description python -m data.folder "
                        "writes (altered or damaged): make the benchmark again with it")
    if not folder.exists() and ("/" in dataset or dataset.startswith((".", "~"))):
        # Meant as a folder: say it is missing, and which folder beside it was meant.
        path = Path(dataset).expanduser()
        for parent in ([path.parent] if path.is_absolute() else
                       [path.parent, TOOLKIT / path.parent, TOOLKIT / "filelists" / path.parent]):
            if parent.is_dir():
                close = closest(path.name, [p.name for p in parent.iterdir() if p.is_dir()])
                hint = f" (did you mean {path.parent / close}?)" if close else ""
                break
        else:
            hint = ""
        raise UserError(f"--dataset {dataset}: no such folder{hint}")
    close = closest(dataset, BENCHMARKS)
    hint = f"did you mean {close}? " if close else ""
    raise UserError(f"--dataset {dataset}: neither one of {', '.join(BENCHMARKS)} nor a "
                    f"benchmark folder written by python -m data.folder ({hint}a "
                    f"benchmark folder holds its {OWN_DESCRIPTION})")


def benchmark_folder(dataset: str) -> Path:
    """The folder a ``--dataset`` that is not built in names: a path from the working
    directory, else from the toolkit's folder (``filelists/cub100``), else a name under
    ``filelists/`` (``cub100``), the first that holds a benchmark; so that a model file's
    dataset is found from wherever test.py or predict.py runs."""
    path = Path(dataset).expanduser()
    candidates = [path] if path.is_absolute() else [path, TOOLKIT / path,
                                                    TOOLKIT / "filelists" / path]
    for candidate in candidates:
        if (candidate / OWN_DESCRIPTION).is_file():
            return candidate.resolve()
    return candidates[0].resolve()


def folder_name(dataset: str) -> str:
    """How a run's checkpoint folder names the benchmark: its name, or its folder's."""
    return dataset if dataset in BENCHMARKS else Path(dataset).expanduser().resolve().name
