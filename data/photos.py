"""Preparation of the photograph datasets, CUB-200-2011 and mini-ImageNet, as the reference
builds them (its ``filelists/CUB/write_CUB_filelist.py`` and
``filelists/miniImagenet/write_miniImagenet_filelist.py``); :mod:`data.prepare` runs them.

- CUB: ``CUB_200_2011.tgz`` unpacked to ``CUB/images/<NNN.Class>/<image>.jpg``; the classes,
  in name order, split by their position i: base where i % 4 is 0 or 2, val where 1, novel
  where 3 (100 / 50 / 50 of the 200).
- mini-ImageNet: Ravi and Larochelle's ``train.csv`` / ``val.csv`` / ``test.csv`` (64 / 16 /
  20 classes of 600 images: lines ``n0153282900000005.jpg,n01532829``) and the ImageNet
  training images they name: the k-th image of a class in the split file is the k-th file of
  ``ILSVRC2012_img_train/<wnid>/`` when the files are ordered by the number after the
  underscore, as the reference reads them. The commonly distributed mini-ImageNet, whose
  ``images/`` folder holds the 60,000 files under the split files' own names, is taken too.
  The chosen images are copied to ``miniImagenet/images/<wnid>/``; ``all.json`` holds the
  100 classes together (the base split of the ``cross`` benchmark).

Every image is decoded once here, so a damaged file stops the preparation with its name.
"""
from __future__ import annotations

import csv
import io
import re
import sys
import tarfile
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from cli.errors import UserError

CUB_ARCHIVE = "CUB_200_2011.tgz"
CUB_ROOT = "CUB_200_2011/images/"
CUB_INDEX = "CUB_200_2011/images.txt"  # "<id> <class folder>/<file>" per image of the archive
CUB_CLASS = re.compile(r"\d{3}\.[^/]+")
CUB_CLASSES = 200  # of the real archive; a smaller (test) archive is prepared with a note
MINI_SPLITS = {"base": "train.csv", "val": "val.csv", "novel": "test.csv"}
MINI_CLASSES = {"base": 64, "val": 16, "novel": 20}
MINI_IMAGES_PER_CLASS = 600
MINI_NAME = re.compile(r"(?P<wnid>n\d{8})(?P<index>\d{8})\.jpg")
IMAGENET_FOLDER = "ILSVRC2012_img_train"
DISTRIBUTED_FOLDER = "images"

ClassImages = list[tuple[str, list[str]]]


def _check_image(data: bytes, where: str) -> None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception as error:  # PIL raises many types for a damaged file
        raise UserError(f"{where} is not a readable image ({error}); the files are damaged, "
                        "fetch them again") from None


def prepare_cub(raw_dir: Path, work_dir: Path) -> dict[str, ClassImages]:
    archive_path = raw_dir / CUB_ARCHIVE
    classes: dict[str, list[str]] = {}
    index: bytes | None = None
    try:
        archive = tarfile.open(archive_path, "r:gz")
    except (tarfile.TarError, OSError) as error:
        raise UserError(f"{archive_path} is not a readable .tgz archive ({error}); download "
                        "it again") from None
    progress = tqdm(desc=f"{CUB_ARCHIVE}: unpacking and decoding", unit=" images",
                    file=sys.stdout, mininterval=2)
    with archive, progress:
        try:
            for member in archive:
                if member.name == CUB_INDEX and member.isfile():
                    index = archive.extractfile(member).read()
                if not member.name.startswith(CUB_ROOT) or not member.isfile():
                    continue
                parts = member.name[len(CUB_ROOT):].split("/")
                if (len(parts) != 2 or not CUB_CLASS.fullmatch(parts[0])
                        or parts[1].startswith(".") or parts[1] in ("", "..")):
                    raise UserError(f"{archive_path} holds the unexpected entry {member.name!r} "
                                    f"(expected {CUB_ROOT}NNN.Class/image.jpg); check that it "
                                    "is CUB-200-2011")
                data = archive.extractfile(member).read()
                _check_image(data, f"{archive_path}: {member.name}")
                target = work_dir / "images" / parts[0] / parts[1]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                classes.setdefault(parts[0], []).append(f"images/{parts[0]}/{parts[1]}")
                progress.update()
        except (tarfile.TarError, EOFError, OSError) as error:
            if isinstance(error, OSError) and error.errno is not None:
                raise  # a full disk is not the archive's fault
            raise UserError(f"{archive_path} is damaged ({error}); download it again") from None
    _check_cub_index(archive_path, index, classes)
    names = sorted(classes)
    if not names or len(names) % 4:
        raise UserError(f"{archive_path} holds {len(names)} classes under {CUB_ROOT}; the "
                        "reference's split needs a multiple of 4 (CUB-200-2011 has 200)")
    if [int(n[:3]) for n in names] != list(range(1, len(names) + 1)):
        raise UserError(f"{archive_path}: the class folders are not numbered 001 to "
                        f"{len(names):03d}; check that it is CUB-200-2011")
    if len(names) != CUB_CLASSES:
        print(f"note: {archive_path} holds {len(names)} classes, not the {CUB_CLASSES} of "
              "CUB-200-2011: prepared as it is", flush=True)
    position = {"base": (0, 2), "val": (1,), "novel": (3,)}
    return {split: [(name, sorted(classes[name])) for i, name in enumerate(names)
                    if i % 4 in remainders] for split, remainders in position.items()}


def _check_cub_index(archive_path: Path, index: bytes | None,
                     classes: dict[str, list[str]]) -> None:
    """The archive's images are exactly those its own images.txt lists: a repacked or
    incomplete archive is refused by content, whatever its size."""
    if index is None:
        raise UserError(f"{archive_path} lacks {CUB_INDEX}; check that it is CUB-200-2011")
    try:
        listed = {line.split(maxsplit=1)[1].strip()
                  for line in index.decode().splitlines() if line.strip()}
    except (UnicodeDecodeError, IndexError):
        raise UserError(f"{archive_path}: {CUB_INDEX} is not of the form '<id> "
                        "<class>/<image>.jpg' per line") from None
    found = {path[len("images/"):] for paths in classes.values() for path in paths}
    for problem, names in (("are missing from it", listed - found),
                           ("are in it but not listed", found - listed)):
        if names:
            raise UserError(f"{archive_path}: {len(names):,} images of {CUB_INDEX} {problem} "
                            f"(the first: {sorted(names)[0]}); download it again")


def _read_split_file(path: Path) -> list[tuple[str, str]]:
    """(file name, wnid) per line of a Ravi-Larochelle split file."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not a readable split file ({error})") from None
    if not rows or rows[0] != ["filename", "label"]:
        raise UserError(f"{path} does not start with the line filename,label; it is not a "
                        "mini-ImageNet split file")
    for row in rows[1:]:
        match = len(row) == 2 and MINI_NAME.fullmatch(row[0])
        if not match or match["wnid"] != row[1]:
            raise UserError(f"{path}: {','.join(row)!r} is not of the form "
                            "nXXXXXXXXNNNNNNNN.jpg,nXXXXXXXX")
    return [(name, wnid) for name, wnid in rows[1:]]


def _imagenet_files(folder: Path) -> list[Path]:
    """A class folder of ImageNet's training set ordered as the reference orders it: by the
    number after the underscore of ``<wnid>_<number>.JPEG``."""
    def number(path: Path) -> int:
        return int(re.split(r"[_.]", path.name)[1])
    try:
        return sorted((p for p in folder.iterdir() if p.is_file()), key=number)
    except (IndexError, ValueError):
        raise UserError(f"{folder} holds a file not named <wnid>_<number>.JPEG") from None


def prepare_mini_imagenet(raw_dir: Path, work_dir: Path) -> dict[str, ClassImages]:
    distributed, imagenet = raw_dir / DISTRIBUTED_FOLDER, raw_dir / IMAGENET_FOLDER
    if not (distributed.is_dir() or imagenet.is_dir()):
        raise UserError(f"{raw_dir} holds the split files but no images: give mini-ImageNet's "
                        f"{DISTRIBUTED_FOLDER}/ folder or ImageNet's {IMAGENET_FOLDER}/ "
                        "(class folders) beside them; ImageNet's images cannot be downloaded "
                        "without an account, so --source DIR is needed")
    filelists: dict[str, ClassImages] = {}
    seen: set[str] = set()
    for split, file_name in MINI_SPLITS.items():
        rows = _read_split_file(raw_dir / file_name)
        per_class: dict[str, list[str]] = {}
        listings: dict[str, list[Path]] = {}
        for name, wnid in tqdm(rows, desc=f"{file_name}: copying and decoding", unit=" images",
                               file=sys.stdout, mininterval=2):
            if distributed.is_dir():
                source = distributed / name
            else:
                if wnid not in listings:
                    listings[wnid] = _imagenet_files(imagenet / wnid)
                k = int(MINI_NAME.fullmatch(name)["index"]) - 1
                if not 0 <= k < len(listings[wnid]):
                    raise UserError(f"{raw_dir / file_name} names image {k + 1} of {wnid}, "
                                    f"whose folder {imagenet / wnid} holds "
                                    f"{len(listings[wnid])}")
                source = listings[wnid][k]
            try:
                data = source.read_bytes()
            except FileNotFoundError:
                raise UserError(f"{source}, named by {file_name}, is missing") from None
            _check_image(data, str(source))
            target = work_dir / "images" / wnid / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            per_class.setdefault(wnid, []).append(f"images/{wnid}/{name}")
        if seen & set(per_class):
            raise UserError(f"{raw_dir / file_name} shares classes with another split file")
        seen |= set(per_class)
        counts = {len(images) for images in per_class.values()}
        if (len(per_class), counts) != (MINI_CLASSES[split], {MINI_IMAGES_PER_CLASS}):
            print(f"note: {file_name} holds {len(per_class)} classes of "
                  f"{'/'.join(map(str, sorted(counts)))} images, not mini-ImageNet's "
                  f"{MINI_CLASSES[split]} of {MINI_IMAGES_PER_CLASS}: prepared as it is",
                  flush=True)
        filelists[split] = [(wnid, sorted(per_class[wnid])) for wnid in sorted(per_class)]
    filelists["all"] = [entry for split in MINI_SPLITS for entry in filelists[split]]
    return filelists
