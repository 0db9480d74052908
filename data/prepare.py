"""Fetch, validate, unpack and index the Omniglot and EMNIST data of the few-shot benchmarks.

`python -m data.prepare {omniglot,emnist} [--source DIR] [--data_dir ROOT]` turns the raw
public files into a dataset folder `ROOT/<name>` that the data loaders read:

- omniglot: `images_background/` and `images_evaluation/` exactly as in the zips, plus the
  filelists `base.json`, `val.json`, `novel.json` (Vinyals train / val / test; a class is a
  line `Alphabet/characterNN/rotDDD` of the split file, its images are the 20 unrotated
  drawings, and the loader rotates them in memory) and `noLatin.json` (every character
  except the Latin alphabet, unrotated: the base split of the cross_char benchmark).
- emnist: `<class>/<i>.png` with inverted pixels (255 - v, strokes dark on white like
  Omniglot), plus `val.json` (even class ids) and `novel.json` (odd class ids).

Each filelist is `{"label_names": [...], "image_names": [...], "image_labels": [...]}`
with image paths relative to the dataset folder, so the folder can be moved.

Without `--source` the public files are downloaded; with it they are read from a local
copy laid out like `../shared/data/<name>`. The public zips were repacked for the offline
copy, so the archives are validated by content (counts, every PNG decodes) rather than by
checksum. All work happens in a temporary folder inside the dataset folder; results are
moved into place only once everything is valid, and the marker file `.prepared` is written
last, so an interrupted run is detected and redone, and a finished one is never redone.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import http.client
import io
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

from PIL import Image, ImageOps
from tqdm import tqdm

from cli.errors import UserError, run_cli
from data import photos

DATASET_FOLDERS = {"omniglot": "omniglot", "emnist": "emnist", "CUB": "CUB",
                   "miniImagenet": "miniImagenet"}

# Bump whenever the layout or the filelists change, so older preparations are redone.
FORMAT_VERSION = 1
MARKER_NAME = ".prepared"
WORK_FOLDER_NAME = ".prepare-tmp"
PREPARE_LOCK_NAME = ".prepare.lock"

# Raw files of each dataset: path inside a --source folder -> public URL.
_OMNIGLOT_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"
_VINYALS_URL = (
    "https://raw.githubusercontent.com/jakesnell/prototypical-networks/master"
    "/data/omniglot/splits/vinyals/"
)
RAW_FILES = {
    "omniglot": {
        "images_background.zip": _OMNIGLOT_URL + "images_background.zip",
        "images_evaluation.zip": _OMNIGLOT_URL + "images_evaluation.zip",
        "vinyals/train.txt": _VINYALS_URL + "train.txt",
        "vinyals/val.txt": _VINYALS_URL + "val.txt",
        "vinyals/test.txt": _VINYALS_URL + "test.txt",
        "vinyals/trainval.txt": _VINYALS_URL + "trainval.txt",
    },
    "emnist": {"emnist.zip": "https://github.com/NanqingD/DAOSL/raw/master/data/emnist.zip"},
    "CUB": {photos.CUB_ARCHIVE: "https://data.caltech.edu/records/65de6-vp158/files/"
            + photos.CUB_ARCHIVE},
    # The split files only: ImageNet's images are not public (see data/photos.py).
    "miniImagenet": {name: "https://raw.githubusercontent.com/twitter/meta-learning-lstm/"
                     "master/data/miniImagenet/" + name for name in photos.MINI_SPLITS.values()},
}
_DOWNLOAD_TIMEOUT_S = 60
# What a failed download raises; other OS errors (a full disk) are not the network's fault.
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)

# Omniglot zip root folder -> (alphabets, characters, images) it must hold.
OMNIGLOT_ZIP_COUNTS = {
    "images_background": (30, 964, 19_280),
    "images_evaluation": (20, 659, 13_180),
}
DRAWINGS_PER_CHARACTER = 20
# Filelist -> (Vinyals split file, number of lines = rotated classes).
VINYALS_SPLITS = {
    "base": ("train.txt", 4_112),
    "val": ("val.txt", 688),
    "novel": ("test.txt", 1_692),
}
EXCLUDED_ALPHABET = "Latin"  # cross_char tests on letters, so its base split leaves Latin out
EMNIST_CLASSES = 62  # 0-9 digits, 10-35 A-Z, 36-61 a-z
EMNIST_IMAGES_PER_CLASS = 200

# Filelist -> (classes, images) it must hold; the marker records these. The photograph
# datasets are checked by their own structure (data/photos.py) and record what they hold.
EXPECTED_FILELISTS = {
    "omniglot": {
        **{
            split: (classes, classes * DRAWINGS_PER_CHARACTER)
            for split, (_, classes) in VINYALS_SPLITS.items()
        },
        "noLatin": (1_597, 1_597 * DRAWINGS_PER_CHARACTER),
    },
    "emnist": {
        "val": (EMNIST_CLASSES // 2, EMNIST_CLASSES // 2 * EMNIST_IMAGES_PER_CLASS),
        "novel": (EMNIST_CLASSES // 2, EMNIST_CLASSES // 2 * EMNIST_IMAGES_PER_CLASS),
    },
}

_VINYALS_LINE = re.compile(r"(?P<alphabet>[^/]+)/(?P<character>character\d+)/rot(000|090|180|270)")

# A filelist under construction: (label name, image paths relative to the dataset folder) per class.
ClassImages = list[tuple[str, list[str]]]


def default_data_dir() -> Path:
    """The folder that holds the prepared datasets unless `--data_dir` says otherwise."""
    return Path(__file__).resolve().parent.parent / "filelists"


def is_prepared(data_dir: Path, name: str) -> bool:
    """Whether `data_dir/<name>` holds a finished preparation of the current format."""
    dataset_dir = _dataset_dir(data_dir, name)
    try:
        marker = json.loads((dataset_dir / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    expected = EXPECTED_FILELISTS.get(name)
    return (
        isinstance(marker, dict)
        and marker.get("format_version") == FORMAT_VERSION
        and marker.get("dataset") == name
        and isinstance(marker.get("filelists"), dict)
        and (expected is None or marker["filelists"] == _marker_counts(expected))
        and all((dataset_dir / output).exists() for output in _output_names(name))
    )


def prepare(name: str, data_dir: Path, source: Path | None = None) -> Path:
    """Prepare dataset `name` in `data_dir/<name>` (a no-op if already done); return that folder.

    `source` is a folder with the raw files laid out like `../shared/data/<name>`; without it
    the public files are downloaded.
    """
    dataset_dir = _dataset_dir(data_dir, name)
    if is_prepared(data_dir, name):
        print(f"{name}: already prepared in {dataset_dir}", flush=True)
        return dataset_dir
    try:
        dataset_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot prepare {name} in {dataset_dir}: {exc.strerror or exc}") from None
    with _preparing(dataset_dir, name):
        if is_prepared(data_dir, name):  # by the process this one waited for
            print(f"{name}: prepared in {dataset_dir} by another process meanwhile", flush=True)
            return dataset_dir
        return _prepare_locked(name, data_dir, dataset_dir, source)


@contextlib.contextmanager
def _preparing(dataset_dir: Path, name: str):
    """Hold ``dataset_dir``'s preparation lock: runs started together on an unprepared data
    root (a job array, parallel tests) prepare it once, the others waiting and then sharing
    it, instead of removing each other's half-written files. ``flock`` is released by the
    operating system however the holder ends."""
    fd = os.open(dataset_dir / PREPARE_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{name}: another process is preparing it in {dataset_dir}; waiting for it",
                  flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _prepare_locked(name: str, data_dir: Path, dataset_dir: Path, source: Path | None) -> Path:
    started = time.perf_counter()
    _remove_leftovers(dataset_dir, name)
    work_dir = dataset_dir / WORK_FOLDER_NAME
    work_dir.mkdir()
    try:
        raw_dir = _fetch_raw_files(name, source, work_dir / "download")
        filelists = _PREPARERS[name](raw_dir, work_dir)
        print(f"{name}: writing filelists", flush=True)
        counts = _write_filelists(name, filelists, work_dir)
        # Images first, filelists second: a filelist never names images that are not in place.
        for output in _output_names(name):
            os.replace(work_dir / output, dataset_dir / output)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    marker = {"format_version": FORMAT_VERSION, "dataset": name, "filelists": counts}
    _write_atomically(dataset_dir / MARKER_NAME, json.dumps(marker, indent=2) + "\n")
    summary = ", ".join(
        f"{split} {classes:,} classes / {images:,} images"
        for split, (classes, images) in counts.items()
    )
    print(f"{name}: done in {time.perf_counter() - started:.1f} s: {summary}", flush=True)
    return dataset_dir


def _dataset_dir(data_dir: Path, name: str) -> Path:
    if name not in DATASET_FOLDERS:
        raise UserError(
            f"unknown dataset to prepare {name!r}; choose one of {', '.join(DATASET_FOLDERS)}."
        )
    return Path(data_dir).expanduser() / DATASET_FOLDERS[name]


def _output_names(name: str) -> list[str]:
    """What a preparation puts in the dataset folder besides the marker, in moving order."""
    if name == "omniglot":
        images = list(OMNIGLOT_ZIP_COUNTS)
    elif name == "emnist":
        images = [str(index) for index in range(EMNIST_CLASSES)]
    else:
        images = ["images"]
    return images + [f"{split}.json" for split in FILELISTS[name]]


def _marker_counts(filelists: dict[str, tuple[int, int]]) -> dict[str, list[int]]:
    # Lists, not tuples, so that the counts compare equal after a JSON round trip.
    return {split: list(counts) for split, counts in filelists.items()}


def _remove_leftovers(dataset_dir: Path, name: str) -> None:
    """Remove what an interrupted or outdated preparation left, and nothing else.

    The dataset folder may hold files that are not ours (the download script lives in the
    default one), so only the names a preparation creates are removed; the marker goes first
    so that a crash during the cleanup cannot leave a marker over partial results.
    """
    marker = dataset_dir / MARKER_NAME
    leftovers = [marker, marker.with_name(marker.name + ".partial"), dataset_dir / WORK_FOLDER_NAME]
    leftovers += [dataset_dir / output for output in _output_names(name)]
    found = [path for path in leftovers if path.exists() or path.is_symlink()]
    if found:
        print(
            f"{name}: removing the leftovers of an unfinished preparation in {dataset_dir}",
            flush=True,
        )
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text(text)
        os.replace(partial, path)
    except OSError:
        partial.unlink(missing_ok=True)
        raise


# How to point each entry point at an offline copy of the raw files (a folder laid out like
# ../shared/data, holding omniglot/ and emnist/).
_OFFLINE_HINT = ("use an offline copy of the raw files laid out like ../shared/data: "
                 "train.py/test.py --data_source DIR (or FSL_DATA_SOURCE=DIR), or bash "
                 "filelists/NAME/download_NAME.sh --source DIR/NAME")


def _fetch_raw_files(name: str, source: Path | None, download_dir: Path) -> Path:
    """A folder holding the raw files of `name`: `source` after checking it, or a download."""
    if source is not None:
        source = Path(source).expanduser()
        if not source.is_dir():
            raise UserError(
                f"the offline copy {source} is not a folder; give the folder that holds "
                f"{', '.join(RAW_FILES[name])}."
            )
        for relative in RAW_FILES[name]:
            if not (source / relative).is_file():
                raise UserError(
                    f"the offline copy {source} lacks {relative}; it must hold "
                    f"{', '.join(RAW_FILES[name])} (laid out like ../shared/data/{name})."
                )
        print(f"{name}: reading the raw files from {source}", flush=True)
        return source
    print(f"{name}: downloading the raw files", flush=True)
    for relative, url in RAW_FILES[name].items():
        _download(url, download_dir / relative, name)
    return download_dir


def _download(url: str, destination: Path, name: str) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    received = 0
    try:
        with (
            urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response,
            open(destination, "wb") as out,
        ):
            expected = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=expected, unit="B", unit_scale=True, desc=destination.name) as progress:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    received += len(chunk)
                    progress.update(len(chunk))
    except _NETWORK_ERRORS as error:
        reason = getattr(error, "reason", error)
        raise UserError(
            f"downloading {url} failed ({reason}); without internet access, {_OFFLINE_HINT}"
        ) from error
    if expected is not None and received != expected:
        raise UserError(
            f"downloading {url} stopped after {received:,} of {expected:,} bytes; run again, "
            f"or {_OFFLINE_HINT}"
        )


def _natural_key(text: str) -> list[str | int]:
    """Sort key that orders embedded numbers by value: "2.png" comes before "10.png"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _png_members(
    archive: zipfile.ZipFile, zip_path: Path, root: str, depth: int
) -> list[tuple[zipfile.ZipInfo, list[str]]]:
    """The PNG entries of `archive`, each with its path split into `depth` parts below `root`.

    Folder entries and macOS metadata are skipped; any other entry that is not a PNG at the
    expected depth means the archive is not the one we expect.
    """
    members = []
    for info in archive.infolist():
        parts = info.filename.split("/")
        if info.is_dir() or parts[0] == "__MACOSX" or parts[-1].startswith("."):
            continue
        below_root = parts[1:]
        if (
            parts[0] != root
            or len(below_root) != depth
            or not below_root[-1].lower().endswith(".png")
            # Entry names become output paths: refuse anything that could escape the folder.
            or any(part in ("", ".", "..") or "\\" in part for part in below_root)
        ):
            layout = "/".join([root, *["<folder>"] * (depth - 1), "<image>.png"])
            raise UserError(
                f"{zip_path} holds the unexpected entry {info.filename!r} (expected {layout}); "
                "check that it is the right archive."
            )
        members.append((info, below_root))
    return members


def _open_zip(zip_path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as error:
        raise UserError(
            f"{zip_path} is not a readable zip archive ({error}); download it again."
        ) from error


def _decode_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, zip_path: Path
) -> tuple[bytes, Image.Image]:
    """Read one PNG entry (the zip checks its CRC) and decode it fully: its bytes and image."""
    try:
        data = archive.read(info)
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as error:
        raise UserError(
            f"{zip_path}: {info.filename} is not a readable PNG ({error}); "
            "the archive is damaged, download it again."
        ) from error
    if image.format != "PNG":
        raise UserError(
            f"{zip_path}: {info.filename} is a {image.format} image, not a PNG; "
            "check that it is the right archive."
        )
    return data, image


def _prepare_omniglot(raw_dir: Path, work_dir: Path) -> dict[str, ClassImages]:
    """Unpack both Omniglot zips into `work_dir` and build the four filelists."""
    # (alphabet, character) -> its drawings, relative to the dataset folder.
    characters: dict[tuple[str, str], list[str]] = {}
    for root, expected in OMNIGLOT_ZIP_COUNTS.items():
        characters.update(_unpack_omniglot_zip(raw_dir / f"{root}.zip", root, expected, work_dir))

    vinyals_dir = raw_dir / "vinyals"
    splits = {
        split: _read_vinyals_split(vinyals_dir / file, lines, characters)
        for split, (file, lines) in VINYALS_SPLITS.items()
    }
    _check_vinyals_splits(splits, vinyals_dir)
    filelists = {
        split: [
            (line, characters[_vinyals_character(line)]) for line in sorted(lines, key=_natural_key)
        ]
        for split, lines in splits.items()
    }
    filelists["noLatin"] = [
        (f"{alphabet}/{character}", drawings)
        for (alphabet, character), drawings in sorted(
            characters.items(), key=lambda item: _natural_key("/".join(item[0]))
        )
        if alphabet != EXCLUDED_ALPHABET
    ]
    return filelists


def _unpack_omniglot_zip(
    zip_path: Path, root: str, expected: tuple[int, int, int], work_dir: Path
) -> dict[tuple[str, str], list[str]]:
    """Check the structure of one Omniglot zip, then decode every drawing and copy it out."""
    with _open_zip(zip_path) as archive:
        members = _png_members(archive, zip_path, root, depth=3)
        characters: dict[tuple[str, str], list[str]] = {}
        for _, (alphabet, character, drawing) in members:
            characters.setdefault((alphabet, character), []).append(
                f"{root}/{alphabet}/{character}/{drawing}"
            )
        found = (len({alphabet for alphabet, _ in characters}), len(characters), len(members))
        if found != expected:
            raise UserError(
                f"{zip_path} holds {found[0]} alphabets, {found[1]} characters and "
                f"{found[2]:,} images; expected {expected[0]}, {expected[1]} and {expected[2]:,}. "
                "Download it again."
            )
        for (alphabet, character), drawings in characters.items():
            if len(drawings) != DRAWINGS_PER_CHARACTER:
                raise UserError(
                    f"{zip_path}: {alphabet}/{character} has {len(drawings)} drawings, expected "
                    f"{DRAWINGS_PER_CHARACTER}. Download it again."
                )
        print(
            f"{zip_path.name}: {found[0]} alphabets, {found[1]} characters; "
            f"decoding and unpacking {found[2]:,} images",
            flush=True,
        )
        for folder in {
            work_dir / root / alphabet / character for alphabet, character in characters
        }:
            folder.mkdir(parents=True)
        for info, parts in members:
            # The PNGs are the original files: decoding proves them sound, and the bytes are kept.
            data, _ = _decode_member(archive, info, zip_path)
            work_dir.joinpath(root, *parts).write_bytes(data)
    return {key: sorted(drawings, key=_natural_key) for key, drawings in characters.items()}


def _vinyals_character(line: str) -> tuple[str, str]:
    alphabet, character, _ = line.split("/")
    return alphabet, character


def _read_split_file(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").split()
    except UnicodeDecodeError as error:
        raise UserError(
            f"{path} is not a text file of Vinyals classes ({error}); download it again."
        ) from error


def _read_vinyals_split(
    path: Path, expected_lines: int, characters: dict[tuple[str, str], list[str]]
) -> set[str]:
    """The rotated classes of one Vinyals split file, checked against the unpacked characters."""
    lines = _read_split_file(path)
    for line in lines:
        if not _VINYALS_LINE.fullmatch(line):
            raise UserError(
                f"{path}: {line!r} is not of the form Alphabet/characterNN/rotDDD "
                "(DDD one of 000, 090, 180, 270)."
            )
        if _vinyals_character(line) not in characters:
            raise UserError(
                f"{path} names {line!r}, a character in neither Omniglot zip; "
                "check the split files."
            )
    classes = set(lines)
    if len(lines) != expected_lines or len(classes) != expected_lines:
        raise UserError(
            f"{path} holds {len(classes):,} distinct classes in {len(lines):,} lines; "
            f"expected {expected_lines:,}."
        )
    return classes


def _check_vinyals_splits(splits: dict[str, set[str]], vinyals_dir: Path) -> None:
    """The splits must not share a character, and trainval.txt must be exactly train + val."""
    seen: dict[tuple[str, str], str] = {}
    for split, lines in splits.items():
        for line in lines:
            character = _vinyals_character(line)
            if seen.setdefault(character, split) != split:
                raise UserError(
                    f"{'/'.join(character)} is in both the {seen[character]} and the {split} "
                    "Vinyals splits; check the split files."
                )
    trainval = set(_read_split_file(vinyals_dir / "trainval.txt"))
    if trainval != splits["base"] | splits["val"]:
        raise UserError(
            f"{vinyals_dir / 'trainval.txt'} is not the union of train.txt and val.txt; "
            "check the split files."
        )


def _prepare_emnist(raw_dir: Path, work_dir: Path) -> dict[str, ClassImages]:
    """Check the EMNIST zip, write every image inverted into `work_dir`, build the filelists."""
    zip_path = raw_dir / "emnist.zip"
    with _open_zip(zip_path) as archive:
        members = _png_members(archive, zip_path, "emnist", depth=2)
        classes: dict[str, list[str]] = {}
        for _, (label, image) in members:
            classes.setdefault(label, []).append(f"{label}/{image}")
        expected = {str(index) for index in range(EMNIST_CLASSES)}
        if set(classes) != expected:
            missing = sorted(expected - set(classes), key=_natural_key)
            unexpected = sorted(set(classes) - expected, key=_natural_key)
            raise UserError(
                f"{zip_path} holds {len(classes)} classes, expected {EMNIST_CLASSES} named 0 to "
                f"{EMNIST_CLASSES - 1} (missing: {', '.join(missing) or 'none'}; "
                f"unexpected: {', '.join(unexpected) or 'none'}). Download it again."
            )
        for label, images in classes.items():
            if len(images) != EMNIST_IMAGES_PER_CLASS:
                raise UserError(
                    f"{zip_path}: class {label} has {len(images)} images, "
                    f"expected {EMNIST_IMAGES_PER_CLASS}. Download it again."
                )
        print(
            f"{zip_path.name}: {len(classes)} classes; "
            f"decoding, inverting and unpacking {len(members):,} images",
            flush=True,
        )
        for label in classes:
            (work_dir / label).mkdir()
        for info, (label, image_name) in members:
            _, image = _decode_member(archive, info, zip_path)
            ImageOps.invert(image.convert("L")).save(work_dir / label / image_name, format="PNG")
    images = {label: sorted(names, key=_natural_key) for label, names in classes.items()}
    return {
        "val": [(str(index), images[str(index)]) for index in range(0, EMNIST_CLASSES, 2)],
        "novel": [(str(index), images[str(index)]) for index in range(1, EMNIST_CLASSES, 2)],
    }


_PREPARERS = {"omniglot": _prepare_omniglot, "emnist": _prepare_emnist,
              "CUB": photos.prepare_cub, "miniImagenet": photos.prepare_mini_imagenet}
# The filelists each preparation writes.
FILELISTS = {**{name: tuple(splits) for name, splits in EXPECTED_FILELISTS.items()},
             "CUB": ("base", "val", "novel"), "miniImagenet": ("base", "val", "novel", "all")}


def _write_filelists(
    name: str, filelists: dict[str, ClassImages], work_dir: Path
) -> dict[str, list[int]]:
    """Write `<split>.json` for each filelist after checking its size; return the counts."""
    counts = {}
    for split, classes in filelists.items():
        filelist = {
            "label_names": [label for label, _ in classes],
            "image_names": [image for _, images in classes for image in images],
            "image_labels": [index for index, (_, images) in enumerate(classes) for _ in images],
        }
        found = (len(filelist["label_names"]), len(filelist["image_names"]))
        expected = EXPECTED_FILELISTS.get(name, {}).get(split, found)
        if found != expected:
            raise UserError(
                f"the {name} {split} split came out with {found[0]:,} classes and "
                f"{found[1]:,} images, expected {expected[0]:,} and {expected[1]:,}; "
                "check that the raw files are the public ones."
            )
        (work_dir / f"{split}.json").write_text(json.dumps(filelist))
        counts[split] = list(found)
    return counts


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; a bad input prints one `error: ...` line and returns 1."""
    parser = argparse.ArgumentParser(
        prog="python -m data.prepare",
        description="Download (or take from --source), validate, unpack and index a dataset.",
        # The download scripts rewrite relative --source / --data_dir values, and would
        # miss abbreviated option names.
        allow_abbrev=False,
    )
    parser.add_argument("name", choices=sorted(DATASET_FOLDERS), help="dataset to prepare")
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="folder with the raw files laid out like ../shared/data/<name>, for machines "
        "without internet (default: download them)",
    )
    parser.add_argument(
        "--data_dir",
        type=Path,
        default=default_data_dir(),
        help="root of the prepared datasets; the dataset goes to DATA_DIR/<name> "
        "(default: %(default)s)",
    )
    args = parser.parse_args(argv)

    def prepare_from_arguments() -> int:
        prepare(args.name, args.data_dir, args.source)
        return 0

    return run_cli(prepare_from_arguments)


if __name__ == "__main__":
    sys.exit(main())
