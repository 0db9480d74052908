"""The decoded image store and the per-split class tables built from it.

Every image of a prepared dataset folder is decoded and preprocessed once into a ``uint8``
tensor, cached on disk beside the data, and rebuilt only when the images it came from change
(their paths, sizes or modification times). A split is then a dense ``uint8 [classes,
images_per_class, ...]`` tensor, rotations applied in memory, that episodes index directly on
the target device: no image is decoded per episode.

Preprocessing follows the reference (its ``Resize`` to 1.15 x the input size, a square, then
``CenterCrop``). Characters: grayscale, resized to 32x32, centre crop 28x28, stored as
``[28, 28]``. Photographs: RGB, resized to 96x96 and stored so (``[3, 96, 96]``), the 84x84
crop (centred, or random with ``--train_aug``) taken per episode (:mod:`data.augment`). The
reference converts characters to RGB (three equal channels) and normalises each channel with
its ImageNet mean and std; episodes do that on the device, for as many channels as the
backbone reads (:mod:`data.episodes`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cli.errors import UserError
from data.augment import stored_size
from data.benchmarks import FILELISTS, OWN_DESCRIPTION, Benchmark, find
from storage import atomic

# ImageNet's per-channel statistics, with which the reference normalises the RGB copies.
CHANNEL_MEAN = (0.485, 0.456, 0.406)
CHANNEL_STD = (0.229, 0.224, 0.225)
STORE_VERSION = 2  # bump when the preprocessing changes, so old caches are rebuilt (2: deep and
# transparent images scaled and laid on white)
_ROTATION = re.compile(r"/rot(\d{3})$")


@dataclass(frozen=True)
class ImageForm:
    """How a dataset's images are stored: the side of the stored square, and colour (RGB)
    or not (grayscale, cropped to ``size`` from the Resize square at once)."""
    size: int
    colour: bool

    @property
    def cache_name(self) -> str:
        return f".store_rgb{self.size}px.pt" if self.colour else f".store_{self.size}px.pt"

    @property
    def shape(self) -> tuple[int, ...]:
        return (3, self.size, self.size) if self.colour else (self.size, self.size)


CHARACTER_FORM = ImageForm(28, colour=False)


def load_image(path: Path, form: ImageForm = CHARACTER_FORM) -> np.ndarray:
    """Decode one image of a prepared dataset into its stored form."""
    try:
        return decode(path, form)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read image {path}: {exc}; prepare the data again") from None


# The largest image decoded: 150 megapixels (12,247 x 12,247), more than a 100-megapixel
# photograph; a larger file is more likely a decompression bomb (PIL's own limit warns at
# 89 and raises at 179 megapixels, as a traceback).
MAX_PIXELS = 150_000_000
# Where an image is transparent, it is laid on white: the character benchmarks' background
# (dark strokes on white, Omniglot's polarity), and a neutral one for photographs.
BACKGROUND = 255
_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def standard_mode(im: Image.Image) -> Image.Image:
    """``im`` in a mode that converts to 8-bit grey or RGB without losing it: images of 16
    or 32 bits, integer or float, scaled to 0-255 from their type's range (PIL's convert
    would clip them to 255, leaving a near-white image), and transparent ones composited on
    :data:`BACKGROUND` (convert would drop the alpha, leaving whatever colour the transparent
    pixels hold: black, usually, under black strokes)."""
    if im.mode in _HIGH_DEPTH:
        values = np.asarray(im, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError("it has pixel values that are not finite numbers")
        low, high = float(values.min()), float(values.max())
        if low < 0:  # no range to read it in: stretched to 0-255
            values = (values - low) / max(high - low, 1e-12)
        else:
            # 16-bit types by their range; 32-bit ones (integer or float) by the smallest of
            # the usual ranges that holds their values (float 0-1, 8, 16, 31 bits)
            ranges = ((65535,) if im.mode.startswith("I;16") else
                      ((1.0,) if im.mode == "F" else ()) + (255, 65535, 2**31 - 1))
            full = next((r for r in ranges if high <= r), high)
            values = values / full
        return Image.fromarray(np.round(values * 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (BACKGROUND,) * 3 + (255,))
        return Image.alpha_composite(background, im)
    return im


def _too_large(size: str) -> ValueError:
    return ValueError(f"it is {size}more than the {MAX_PIXELS:,} pixels decoded here (a "
                      "decompression bomb, or a scan to make smaller first)")


def decode(path: Path, form: ImageForm = CHARACTER_FORM) -> np.ndarray:
    """Any image PIL reads -> ``uint8`` of ``form.shape``: grayscale resized to the Resize
    square and centre-cropped, or RGB resized to the square (channels first); deep and
    transparent images first brought to 8 bits on white (:func:`standard_mode`). An image
    of more than :data:`MAX_PIXELS` is refused (ValueError) before it is decoded."""
    with warnings.catch_warnings():  # PIL's own check warns, or raises, on opening
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            opened = Image.open(path)
        except Image.DecompressionBombError:
            raise _too_large("") from None
    with opened as im:
        if im.size[0] * im.size[1] > MAX_PIXELS:
            raise _too_large(f"{im.size[0]:,} x {im.size[1]:,} pixels, ")
        im = standard_mode(im)
        if form.colour:
            im = im.convert("RGB").resize((form.size, form.size), Image.BILINEAR)
            return np.ascontiguousarray(np.asarray(im).transpose(2, 0, 1))
        side = stored_size(form.size)
        im = im.convert("L").resize((side, side), Image.BILINEAR)
    offset = (side - form.size) // 2
    return np.asarray(im)[offset:offset + form.size, offset:offset + form.size].copy()


def read_filelist(path: Path) -> dict:
    try:
        with open(path) as f:
            filelist = json.load(f)
        assert len(filelist["image_names"]) == len(filelist["image_labels"])
        return filelist
    except (OSError, ValueError, KeyError, AssertionError) as exc:
        raise UserError(f"filelist {path} is missing or unreadable ({exc}); "
                        "prepare the data again") from None


class ImageStore:
    """All images listed by the filelists of one dataset folder, decoded once."""

    def __init__(self, folder: Path, paths: list[str], images: torch.Tensor):
        self.folder = folder
        self.index = {p: i for i, p in enumerate(paths)}
        self.images = images

    @classmethod
    def open(cls, folder: Path, form: ImageForm = CHARACTER_FORM,
             verbose: bool = True) -> "ImageStore":
        """Load the cached store of ``folder``, building (or rebuilding) it if stale."""
        folder = Path(folder)
        root = images_root(folder)
        filelists = [folder / f"{name}.json" for name in FILELISTS
                     if (folder / f"{name}.json").is_file()]
        paths = sorted({name for filelist in filelists
                        for name in read_filelist(filelist)["image_names"]})
        fingerprint = _fingerprint(root, paths)
        cache = folder / form.cache_name
        if cache.exists():
            try:
                stored = torch.load(cache, weights_only=True)
                if stored["fingerprint"] == fingerprint:
                    return cls(folder, stored["paths"], stored["images"])
            except Exception:  # an unreadable cache is simply rebuilt
                pass
        if verbose:
            print(f"Decoding {len(paths):,} images of {root} into {cache} (once) ...",
                  flush=True)
        images, _ = decode_all([root / p for p in paths], form)
        return cls.save(folder, paths, torch.from_numpy(images), form, fingerprint)

    @classmethod
    def save(cls, folder: Path, paths: list[str], images: torch.Tensor, form: ImageForm,
             fingerprint: str | None = None) -> "ImageStore":
        """Cache ``images`` (decoded from ``paths``, relative to the folder's image root) as
        the store of ``folder``: later runs load it instead of decoding."""
        if fingerprint is None:
            fingerprint = _fingerprint(images_root(folder), paths)
        stored = {"fingerprint": fingerprint, "paths": paths, "images": images}
        cache = folder / form.cache_name
        try:
            atomic.write_file(cache, lambda f: torch.save(stored, f))
        except atomic.WriteError as exc:  # a read-only or full data folder: decode each time
            print(f"note: {exc}; the images stay decoded in memory for this run only",
                  flush=True)
        return cls(folder, paths, images)


def images_root(folder: Path) -> Path:
    """Where the filelists' image paths of ``folder`` start: the folder itself for a
    prepared dataset, or the image folder its ``benchmark.json`` names (python -m data.folder
    writes a benchmark beside the images, never into their folder)."""
    try:
        described = json.loads((Path(folder) / OWN_DESCRIPTION).read_text())
    except (OSError, ValueError):
        return Path(folder)
    images = described.get("images") if isinstance(described, dict) else None
    return Path(images) if isinstance(images, str) else Path(folder)


def _fingerprint(root: Path, paths: list[str]) -> str:
    digest = hashlib.sha256(f"v{STORE_VERSION}".encode())
    for p in paths:
        try:
            st = (root / p).stat()
        except OSError:
            raise UserError(f"image {root / p} listed in the filelists is missing; "
                            "prepare the data again") from None
        digest.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def decode_all(paths: list[Path], form: ImageForm, strict: bool = True
               ) -> tuple[np.ndarray, list[int]]:
    """Every image of ``paths`` in its stored form, decoded by as many processes as there
    are cores. ``strict``: a file that cannot be decoded is an error; otherwise its index is
    returned among the unusable ones (its slot of the array stays zero)."""
    out = np.zeros((len(paths), *form.shape), dtype=np.uint8)
    unusable = []
    workers = min(os.cpu_count() or 1, 8)
    decoder = partial(load_image if strict else _decode_or_none, form=form)
    if workers > 1 and len(paths) > 2000:
        with ProcessPoolExecutor(workers, initializer=_die_with,
                                 initargs=(os.getpid(),)) as pool:
            decoded = pool.map(decoder, paths, chunksize=256)
            for i, image in enumerate(decoded):
                if image is None:
                    unusable.append(i)
                else:
                    out[i] = image
    else:
        for i, path in enumerate(paths):
            image = decoder(path)
            if image is None:
                unusable.append(i)
            else:
                out[i] = image
    return out, unusable


def _die_with(parent: int) -> None:
    """A decoding worker ends with the process that started it: killed (even by SIGKILL or
    the OOM killer, which leave it no time to stop its pool), it would otherwise keep
    decoding, orphaned, for nothing. Linux's parent-death signal does this; elsewhere a killed
    parent leaves its workers to finish their chunk."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() != parent:  # the parent died before the signal was asked for
        os._exit(1)


def _decode_or_none(path: Path, form: ImageForm) -> np.ndarray | None:
    try:
        return decode(path, form)
    except Exception:  # PIL raises many types for a file that is not an image
        return None


@dataclass
class SplitImages:
    """The classes of one split: ``images[c, i]`` is image i of class c (rotated if the class
    is a rotation); ``counts[c]`` how many of ``images[c]`` are real (the rest is padding)."""
    name: str
    label_names: list[str]
    images: torch.Tensor
    counts: np.ndarray

    @property
    def n_classes(self) -> int:
        return len(self.label_names)

    @property
    def min_count(self) -> int:
        return int(self.counts.min())


def load_split(data_dir: Path, benchmark: Benchmark | str, split: str, verbose: bool = True
               ) -> SplitImages:
    """The class table of ``split`` of ``benchmark`` (or of the ``--dataset`` naming one) from
    the prepared data in ``data_dir``."""
    benchmark = find(benchmark) if isinstance(benchmark, str) else benchmark
    folder_name, filelist_name = benchmark.splits[split]
    folder = Path(data_dir) / folder_name
    form = ImageForm(benchmark.stored_size, benchmark.colour)
    store = ImageStore.open(folder, form, verbose)
    filelist = read_filelist(folder / f"{filelist_name}.json")
    per_class: list[list[int]] = [[] for _ in filelist["label_names"]]
    for name, label in zip(filelist["image_names"], filelist["image_labels"]):
        per_class[label].append(store.index[name])
    counts = np.array([len(c) for c in per_class])
    if counts.min() == 0:
        raise UserError(f"{folder / filelist_name}.json has a class without images; "
                        "prepare the data again")
    images = torch.zeros((len(per_class), int(counts.max()), *form.shape), dtype=torch.uint8)
    for c, (label, indices) in enumerate(zip(filelist["label_names"], per_class)):
        class_images = store.images[indices]
        rotation = _ROTATION.search(label)
        if rotation:
            # Counter-clockwise like the reference's PIL rotate; the centre crop of a square
            # image commutes with a quarter turn, so rotating after preprocessing is exact.
            class_images = torch.rot90(class_images, int(rotation.group(1)) // 90, dims=(-2, -1))
        images[c, :len(indices)] = class_images
    return SplitImages(split, list(filelist["label_names"]), images, counts)
