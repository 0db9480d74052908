"""The reference's image pipeline for CUB and mini-ImageNet, on the device, batched.

The reference (CloserLookFewShot's ``TransformLoader``) works on PIL images one at a time:
at validation and test ``Resize`` to 1.15 x the image size (a square, aspect ratio not kept),
then ``CenterCrop``; with ``--train_aug`` ``RandomSizedCrop`` (torchvision's
RandomResizedCrop: area 8-100% of the image, aspect ratio 3/4-4/3, ten tries, then the
largest centred crop that fits), ``ImageJitter`` (brightness, contrast and colour, each
enhanced by a factor drawn from [0.6, 1.4], in that order, as PIL's ImageEnhance does it) and
a horizontal flip with probability 1/2; then ImageNet normalisation.

Here the images are stored once, decoded and resized to the square of ``Resize``
(:mod:`data.store`), and every transform is a tensor operation over a whole batch:

- the test-time crop is exact: a centre crop of the stored square;
- the random crop is drawn with torchvision's rule, but from the stored square rather than
  the original image (so its aspect ratio is relative to the square, and a crop can never
  hold more pixels than the stored 96 x 96 do), and resized bilinearly without
  antialiasing;
- the jitter keeps float precision between its three steps, where PIL rounds each to 8
  bits.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

RESIZE_FACTOR = 1.15  # the reference resizes to int(1.15 * image_size), then crops
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_TRIES = 10
JITTER = 0.4  # brightness, contrast and colour: factors in [1 - 0.4, 1 + 0.4]
# ITU-R 601-2 luma, PIL's convert("L"), which ImageEnhance's contrast and colour use.
LUMA = (0.299, 0.587, 0.114)


def stored_size(image_size: int) -> int:
    """The side images are stored at for an ``image_size`` input: the reference's Resize."""
    return int(image_size * RESIZE_FACTOR)


def centre_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """``[..., S, S]`` -> ``[..., size, size]``, torchvision's CenterCrop offsets."""
    side = images.shape[-1]
    top = int(round((side - size) / 2.0))
    return images[..., top:top + size, top:top + size]


def crop_boxes(n: int, side: int, generator: torch.Generator) -> torch.Tensor:
    """``[n, 4]`` boxes (top, left, height, width) in pixels of a ``side`` x ``side`` image,
    drawn as torchvision's RandomResizedCrop.get_params draws them, for n images at once."""
    area = side * side
    scale = torch.empty(n, CROP_TRIES).uniform_(*CROP_SCALE, generator=generator)
    log_ratio = torch.empty(n, CROP_TRIES).uniform_(math.log(CROP_RATIO[0]),
                                                    math.log(CROP_RATIO[1]),
                                                    generator=generator)
    ratio = torch.exp(log_ratio)
    target = area * scale
    width = torch.round(torch.sqrt(target * ratio))
    height = torch.round(torch.sqrt(target / ratio))
    fits = (width > 0) & (height > 0) & (width <= side) & (height <= side)
    # The first try that fits, as the reference's loop takes it; none: the whole image
    # (the fallback's largest crop within the ratio bounds of a square is the square).
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((n,), -1))
    chosen = first.clamp(min=0)
    rows = torch.arange(n)
    height = torch.where(first >= 0, height[rows, chosen], torch.full((n,), float(side)))
    width = torch.where(first >= 0, width[rows, chosen], torch.full((n,), float(side)))
    # Offsets uniform over the valid positions, as torch.randint(0, side - h + 1).
    top = torch.floor(torch.rand(n, generator=generator) * (side - height + 1))
    left = torch.floor(torch.rand(n, generator=generator) * (side - width + 1))
    return torch.stack([top, left, height, width], 1)


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, size: int,
                  flip: torch.Tensor) -> torch.Tensor:
    """Each image's box resized to ``size`` x ``size`` (bilinear, pixel centres as
    torchvision's resize), mirrored where ``flip``; ``images`` ``[n, C, S, S]`` float."""
    n, _, side, _ = images.shape
    top, left, height, width = (boxes[:, i].to(images) for i in range(4))
    # affine_grid maps output coordinates in [-1, 1] to input coordinates in [-1, 1]
    # (align_corners=False: -1 and 1 are the outer edges of the edge pixels).
    scale_x, scale_y = width / side, height / side
    shift_x = (2 * left + width) / side - 1
    shift_y = (2 * top + height) / side - 1
    sign = 1 - 2 * flip.to(images)
    theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0], theta[:, 0, 2] = scale_x * sign, shift_x
    theta[:, 1, 1], theta[:, 1, 2] = scale_y, shift_y
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


def jitter(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """ImageJitter on ``[n, 3, H, W]`` floats in [0, 255] with ``factors [n, 3]``: brightness
    (towards black), contrast (towards the image's mean grey level), colour (towards its own
    grey), in that order, each clipped to [0, 255] as PIL's blend is."""
    luma = torch.tensor(LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    factors = factors.to(images).view(-1, 3, 1, 1, 1).unbind(1)
    x = (images * factors[0]).clamp(0, 255)
    mean = (x * luma).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True).round()
    x = (mean + factors[1] * (x - mean)).clamp(0, 255)
    grey = (x * luma).sum(1, keepdim=True)
    return (grey + factors[2] * (x - grey)).clamp(0, 255)


def jitter_factors(n: int, generator: torch.Generator) -> torch.Tensor:
    """``[n, 3]`` brightness, contrast and colour factors, each uniform on [0.6, 1.4] and
    drawn independently, as ImageJitter draws ``alpha * (2 * rand - 1) + 1`` per transform."""
    return 1 + JITTER * (torch.rand(n, 3, generator=generator) * 2 - 1)


def augment(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """The reference's training augmentation of ``uint8 [n, 3, S, S]`` stored images:
    float ``[n, 3, size, size]`` in [0, 255], to be normalised as any other input. The draws
    come from ``generator`` (on the CPU) alone."""
    n, _, side, _ = images.shape
    boxes = crop_boxes(n, side, generator).to(images.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    factors = jitter_factors(n, generator)
    return jitter(resized_crops(images.float(), boxes, size, flip), factors)
