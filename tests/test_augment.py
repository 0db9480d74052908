"""The image augmentation on the device against the reference's recipe (torchvision's
RandomResizedCrop parameters, PIL's ImageEnhance, CenterCrop), on fixed inputs and over
many draws."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from data import augment


def reference_crop(side: int, rng: random.Random) -> tuple[int, int, int, int]:
    """RandomResizedCrop.get_params as torchvision documents it, for a square image."""
    area = side * side
    for _ in range(10):
        target = area * rng.uniform(0.08, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= side and 0 < h <= side:
            return rng.randint(0, side - h), rng.randint(0, side - w), h, w
    return 0, 0, side, side


def test_crop_parameters_are_drawn_as_torchvision_draws_them():
    """Area fraction and aspect ratio of 20,000 boxes: the same distribution as the
    reference's rule (quantiles within 0.01, means within 0.005), offsets uniform."""
    n, side = 20_000, 96
    ours = augment.crop_boxes(n, side, torch.Generator().manual_seed(0)).numpy()
    rng = random.Random(0)
    theirs = np.array([reference_crop(side, rng) for _ in range(n)], dtype=float)
    for boxes in (ours, theirs):
        assert (boxes[:, 2:] >= 1).all() and (boxes[:, :2] + boxes[:, 2:] <= side).all()
    quantiles = [0.05, 0.25, 0.5, 0.75, 0.95]
    for stat in (lambda b: b[:, 2] * b[:, 3] / side ** 2, lambda b: b[:, 3] / b[:, 2]):
        a, b = stat(ours), stat(theirs)
        assert abs(a.mean() - b.mean()) < 0.005 * max(1, b.mean())
        assert np.abs(np.quantile(a, quantiles) - np.quantile(b, quantiles)).max() < 0.01 * \
            max(1, b.mean())
    # The top offset, as a fraction of its range, is uniform.
    free = side - ours[:, 2]
    spread = ours[free > 20, 0] / free[free > 20]
    assert abs(spread.mean() - 0.5) < 0.01


def test_flips_and_jitter_factors_over_many_draws():
    images = torch.zeros(4000, 3, 8, 8, dtype=torch.uint8)
    images[:, :, :, :4] = 200  # left half bright: a flip moves it right
    out = augment.augment(images, 8, torch.Generator().manual_seed(3))
    left, right = out[:, 0, :, :2].mean(dim=(1, 2)), out[:, 0, :, -2:].mean(dim=(1, 2))
    flipped = (right > left).float().mean().item()
    assert abs(flipped - 0.5) < 0.03

    # The jitter factors: each of brightness, contrast, colour uniform on [0.6, 1.4]
    # (quantiles within 0.01), uncorrelated with the others.
    factors = augment.jitter_factors(20_000, torch.Generator().manual_seed(4)).numpy()
    quantiles = np.array([0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
    for k in range(3):
        assert np.abs(np.quantile(factors[:, k], quantiles) - (0.6 + 0.8 * quantiles)).max() < 0.01
    assert np.abs(np.corrcoef(factors.T) - np.eye(3)).max() < 0.03
    # ... and augment applies them: a uniform grey image (which crops, flips, contrast and
    # colour leave as it is) comes out scaled by its brightness factor, over the same range.
    grey = torch.full((4000, 3, 8, 8), 100, dtype=torch.uint8)
    brightness = augment.augment(grey, 8, torch.Generator().manual_seed(5))[:, 0, 0, 0] / 100
    assert np.abs(np.quantile(brightness.numpy(), quantiles[1:-1]) -
                  (0.6 + 0.8 * quantiles[1:-1])).max() < 0.02


def test_jitter_is_pil_image_enhance():
    """Brightness, contrast, colour with the same factors: PIL's 8-bit result, to the 8-bit
    rounding PIL does after each of its three steps."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, 24, 24, 3), dtype=np.uint8)
    factors = torch.tensor([[0.7, 1.3, 1.1], [1.35, 0.65, 0.6]])
    ours = augment.jitter(torch.from_numpy(pixels).permute(0, 3, 1, 2).float(), factors)
    for i in range(2):
        image = Image.fromarray(pixels[i])
        for enhancer, factor in zip((ImageEnhance.Brightness, ImageEnhance.Contrast,
                                     ImageEnhance.Color), factors[i].tolist()):
            image = enhancer(image).enhance(factor).convert("RGB")
        theirs = torch.from_numpy(np.array(image)).permute(2, 0, 1).float()
        assert (ours[i] - theirs).abs().max() <= 3


def test_crops_are_resized_as_pil_resizes_them():
    """A box enlarged to the output size (as most crops of a 96-pixel store are enlarged to
    84) is PIL's bilinear resize of the cropped region; the whole image at its own size is
    itself; a flip mirrors."""
    # A smooth photograph-like image (a crop's border samples reach one pixel beyond it
    # here, where PIL's crop stops at the border: noise would exaggerate that difference).
    yy, xx = np.meshgrid(np.arange(40), np.arange(40), indexing="ij")
    pixels = np.stack([127 + 120 * np.sin(xx / 6 + c) * np.cos(yy / 9 - c) for c in range(3)],
                      axis=-1).round().astype(np.uint8)
    image = torch.from_numpy(pixels).permute(2, 0, 1).float()[None]
    box = torch.tensor([[5.0, 7.0, 21.0, 28.0]])  # top, left, height, width
    ours = augment.resized_crops(image, box, 56, torch.tensor([False]))[0]
    theirs = Image.fromarray(pixels).crop((7, 5, 35, 26)).resize((56, 56), Image.BILINEAR)
    theirs = torch.from_numpy(np.array(theirs)).permute(2, 0, 1).float()
    assert (ours - theirs).abs().mean() < 1.0 and (ours - theirs).abs().max() < 12
    whole = torch.tensor([[0.0, 0.0, 40.0, 40.0]])
    same = augment.resized_crops(image, whole, 40, torch.tensor([False]))[0]
    torch.testing.assert_close(same, image[0], atol=1e-3, rtol=0)
    mirrored = augment.resized_crops(image, whole, 40, torch.tensor([True]))[0]
    torch.testing.assert_close(mirrored, image[0].flip(-1), atol=1e-3, rtol=0)


@pytest.mark.parametrize("image_size", [84, 28])
def test_test_time_crop_is_torchvision_centre_crop_of_the_resize(image_size):
    side = augment.stored_size(image_size)
    assert side == int(image_size * 1.15)
    images = torch.arange(side * side).view(1, 1, side, side)
    crop = augment.centre_crop(images, image_size)
    top = int(round((side - image_size) / 2))
    assert torch.equal(crop, images[..., top:top + image_size, top:top + image_size])
    assert crop.shape[-2:] == (image_size, image_size)
