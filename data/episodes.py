"""Episodes (few-shot tasks) as a pure function of (seed, split, episode index).

An episode draws ``n_way`` classes of the split uniformly without replacement, then
``n_support + n_query`` images of each class without replacement (the reference's protocol). The draw
uses its own generator seeded with (seed, split, index), so an episode never depends on which
episodes were drawn before it: a resumed run, a validation pass or another process sees the
same tasks. The images are gathered from the split's tensor on the target device and
normalised there, into as many channels as the backbone reads (three equal RGB channels, each
with its own ImageNet statistics, as the reference; or the first alone).
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from cli.errors import UserError
from data import augment
from data.store import CHANNEL_MEAN, CHANNEL_STD, SplitImages


@dataclass
class Episode:
    """One few-shot task, as ready tensors on the target device.

    Images are normalised ``[N, channels, 28, 28]`` floats; labels are 0..n_way-1 in the order the
    classes were drawn, class-major (all shots of class 0 first).
    """
    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    # Seed of the task's own random draws (BayesHMAML's sampled classifiers), so they do not
    # depend on which tasks ran before in the process, nor on which process runs the task.
    seed: int = 0


SPLIT_IDS = {"base": 0, "val": 1, "novel": 2}
TRAIN_QUERY = 16  # queries per class in training and validation (reference)
TEST_QUERY = 15   # queries per class at test time (reference)
AUGMENTATION_STREAM = 1  # the episode's augmentation draws: a stream of their own


def fitting_query_count(split: SplitImages, n_support: int, wanted: int) -> int:
    """``wanted`` queries per class, or fewer if the split's classes are too small.

    Omniglot classes hold 20 drawings, so 5-shot training asks for 21; the reference silently
    got 20 (n_query 15). Here the reduction is explicit and announced by the caller.
    """
    n_query = min(wanted, split.min_count - n_support)
    if n_query < 1:
        raise UserError(f"n_shot {n_support} leaves no query image: the smallest class of the "
                        f"{split.name} split has {split.min_count} images")
    return n_query


class Normaliser:
    """uint8 images -> the backbone's float input ``[..., channels, H, W]``, each channel
    normalised with its ImageNet statistics (as the reference's Normalize), in one
    multiply-add per channel. Grayscale ``[..., H, W]`` is copied into each channel (the
    reference's RGB conversion); colour ``[..., 3, H, W]`` keeps its own."""

    def __init__(self, channels: int, device: torch.device | str = "cpu"):
        std = torch.tensor(CHANNEL_STD[:channels], device=device).view(channels, 1, 1)
        mean = torch.tensor(CHANNEL_MEAN[:channels], device=device).view(channels, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * std), -mean / std
        self.channels = channels

    def __call__(self, pixels: torch.Tensor, colour: bool = False) -> torch.Tensor:
        pixels = pixels if colour else pixels.unsqueeze(-3)
        return torch.addcmul(self.shift, pixels.float(), self.scale)


class EpisodeSampler:
    """Draws episodes of one split; ``episode(i)`` is the same tensor for the same (seed, i)."""

    def __init__(self, split: SplitImages, n_way: int, n_support: int, n_query: int,
                 seed: int, device: torch.device | str = "cpu", channels: int = 3,
                 crop: int | None = None, augment: bool = False):
        """``crop``: colour images are stored larger and cropped to this side, at the centre
        or, with ``augment``, as the reference's training augmentation (drawn from the
        episode's own seed)."""
        if n_way > split.n_classes:
            raise UserError(f"n_way {n_way} is larger than the {split.n_classes} classes of "
                            f"the {split.name} split")
        if n_support + n_query > split.min_count:
            raise UserError(f"n_shot {n_support} + n_query {n_query} is more than the "
                            f"{split.min_count} images of the smallest class of the "
                            f"{split.name} split")
        if seed < 0:
            raise UserError(f"--seed must be >= 0, got {seed}")
        self.split = split
        self.n_way, self.n_support, self.n_query = n_way, n_support, n_query
        self.seed = seed
        self.device = torch.device(device)
        self.images = split.images.to(self.device)
        self.normalise = Normaliser(channels, self.device)
        self.colour = split.images.dim() == 5  # [classes, images, 3, H, W]
        self.crop = crop or split.images.shape[-1]
        self.augment = augment
        self.counts = split.counts
        self.support_y = torch.arange(n_way, device=self.device).repeat_interleave(n_support)
        self.query_y = torch.arange(n_way, device=self.device).repeat_interleave(n_query)

    def with_seed(self, seed: int) -> "EpisodeSampler":
        """The same split, classes and device tensors, another episode stream."""
        if seed < 0:
            raise UserError(f"--seed must be >= 0, got {seed}")
        other = copy.copy(self)
        other.seed = seed
        return other

    def draw(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        """The classes ``[n_way]``, per class the image positions ``[n_way, shots+queries]``,
        and the seed of the task's own random draws."""
        rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split.name], index])
        classes = rng.choice(self.split.n_classes, self.n_way, replace=False)
        per_class = self.n_support + self.n_query
        picks = np.stack([rng.choice(self.counts[c], per_class, replace=False) for c in classes])
        return classes, picks, int(rng.integers(1 << 62))

    def fingerprint(self, count: int) -> str:
        """A digest of episodes 0 .. count-1 of this stream: the names of the classes each
        draws and the images it takes of them. Two tests with equal digests ran on the same
        episodes (results.compare checks it), whatever machine or version drew them."""
        digest = hashlib.sha256()
        for index in range(count):
            classes, picks, _ = self.draw(index)
            digest.update("\0".join(self.split.label_names[c] for c in classes).encode())
            digest.update(picks.astype(np.int64).tobytes())
        return digest.hexdigest()[:16]

    def shown(self, index: int) -> tuple[np.ndarray, list[str]]:
        """Episode ``index``'s images as a person looks at them: ``uint8 [n_way,
        shots+queries, (3,) H, W]``, centre-cropped to the input (never augmented), and the
        names of its classes in label order."""
        classes, picks, _ = self.draw(index)
        pixels = self.images[torch.as_tensor(classes, device=self.device)[:, None],
                             torch.as_tensor(picks, device=self.device)]
        if self.crop != pixels.shape[-1]:
            pixels = augment.centre_crop(pixels, self.crop)
        return pixels.cpu().numpy(), [self.split.label_names[c] for c in classes]

    def episode(self, index: int) -> Episode:
        classes, picks, task_seed = self.draw(index)
        classes_t = torch.as_tensor(classes, device=self.device)
        picks_t = torch.as_tensor(picks, device=self.device)
        pixels = self.images[classes_t[:, None], picks_t]  # [n_way, shots+queries, (3,) S, S]
        if self.augment:
            stream = np.random.default_rng([self.seed, SPLIT_IDS[self.split.name], index,
                                            AUGMENTATION_STREAM])
            generator = torch.Generator().manual_seed(int(stream.integers(1 << 62)))
            pixels = augment.augment(pixels.flatten(0, 1), self.crop, generator
                                     ).view(*pixels.shape[:2], 3, self.crop, self.crop)
        elif self.crop != pixels.shape[-1]:
            pixels = augment.centre_crop(pixels, self.crop)
        x = self.normalise(pixels, self.colour)
        shape = (-1, self.normalise.channels, self.crop, self.crop)
        return Episode(support_x=x[:, :self.n_support].reshape(shape), support_y=self.support_y,
                       query_x=x[:, self.n_support:].reshape(shape), query_y=self.query_y,
                       seed=task_seed)
