"""The convolutional backbones of the few-shot literature (CloserLookFewShot's ConvNet family).

A block is conv 3x3 (64 channels, padding 1) -> BatchNorm -> ReLU, then max-pool 2x2 in the
first four blocks only. ``Conv4`` is four blocks, flattened: a 28x28 image becomes 64 x 1 x 1
(a 64-d feature), an 84x84 one 64 x 5 x 5 (1,600). ``Conv6`` adds two blocks without pooling.
``Conv4Pool`` ends with global average pooling: 64 features at any image size.

BatchNorm keeps no running statistics (``track_running_stats=False``): in the MAML family
every call normalises with the statistics of the batch it is given, in training and at test
time alike, so a support set and a query set are each normalised by their own statistics
(transductive BatchNorm, as in the reference).

``Conv4`` reads three channels, as the HyperMAML/BayesHMAML reference does on Omniglot and
EMNIST (it comments out CloserLookFewShot's switch to ``Conv4S``): the grayscale image
converted to RGB, each channel normalised with its own ImageNet mean and std. The three
channels carry one image, so a one-channel filter spans the same functions, but it does not
train the same way: the effective filter is the sum of three independently initialised ones
divided by the stds (about sqrt(3) larger at initialisation) and moves about 3x further per
Adam step. The published numbers come from the three-channel network.

``Conv4S`` (CloserLookFewShot's name) reads the first channel alone: a cheaper first layer,
not the published model.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

POOLED_BLOCKS = 4  # the reference max-pools after the first four blocks only


class Conv4(nn.Module):
    # Image channels the backbone reads; the episode sampler builds inputs to match.
    input_channels = 3
    default_depth = 4
    # Global average pooling of the last block's map (Conv4Pool) instead of flattening it.
    average_pool = False

    def __init__(self, image_size: int = 28, width: int = 64, depth: int | None = None):
        super().__init__()
        depth = self.default_depth if depth is None else depth
        blocks, side = [], image_size
        for i in range(depth):
            conv = nn.Conv2d(self.input_channels if i == 0 else width, width, 3, padding=1)
            # He-style init of the reference: N(0, sqrt(2 / (k * k * out_channels))).
            nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (3 * 3 * width)))
            nn.init.zeros_(conv.bias)
            norm = nn.BatchNorm2d(width, track_running_stats=False)
            layers = [conv, norm, nn.ReLU(inplace=False)]
            if i < POOLED_BLOCKS:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            blocks.append(nn.Sequential(*layers))
        if side < 1:
            raise ValueError(f"{image_size}-pixel images are too small for {depth} blocks")
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = width if self.average_pool else width * side * side

    def _features(self, maps: torch.Tensor) -> torch.Tensor:
        """``[n, C, H, W]`` -> ``[n, feature_dim]`` (``C`` may hold several tasks' channels)."""
        return maps.mean(dim=(2, 3)) if self.average_pool else maps.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[n, feature_dim]`` of one set of images ``x [n, C, H, W]``."""
        return self._features(self.blocks(x))

    def forward_tasks(self, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None
                      ) -> torch.Tensor:
        """Features ``[T, n, feature_dim]`` of T tasks' image sets ``x [T, n, C, H, W]``, each
        set normalised by its own BatchNorm statistics, exactly as if each went through alone:
        the batched engine's one way through the backbone.

        ``params`` (``[T, *shape]`` per name) gives each task its own weights (MAML's fast
        weights): one grouped convolution per layer, one group per task. Without it the tasks
        share the module's weights (HyperMAML, whose backbone is not adapted per task): one
        plain convolution over all the sets."""
        tasks, n = x.shape[:2]
        # [n, T * C, H, W]: task t's channels side by side with the others', so that the
        # per-channel BatchNorm statistics are per (task, channel), in one fused call.
        h = x.transpose(0, 1).reshape(n, -1, *x.shape[3:])
        for i, (conv, norm, *_) in enumerate(self.blocks):
            if params is None:
                sets = h.reshape(n, tasks, -1, *h.shape[2:]).transpose(0, 1).flatten(0, 1)
                maps = conv(sets)
                h = maps.reshape(tasks, n, *maps.shape[1:]).transpose(0, 1).flatten(1, 2)
                norm_weight, norm_bias = norm.weight.repeat(tasks), norm.bias.repeat(tasks)
            else:
                weight = params[f"blocks.{i}.0.weight"]
                h = F.conv2d(h, weight.reshape(-1, *weight.shape[2:]),
                             params[f"blocks.{i}.0.bias"].reshape(-1), stride=conv.stride,
                             padding=conv.padding, groups=tasks)
                norm_weight = params[f"blocks.{i}.1.weight"].reshape(-1)
                norm_bias = params[f"blocks.{i}.1.bias"].reshape(-1)
            h = F.batch_norm(h, None, None, norm_weight, norm_bias, training=True, eps=norm.eps)
            h = F.relu(h)
            if i < POOLED_BLOCKS:
                h = F.max_pool2d(h, 2)
        # [n, T * C, H, W] holds task t's map in channels t*C .. (t+1)*C - 1.
        return self._features(h).reshape(n, tasks, -1).transpose(0, 1)


class Conv4S(Conv4):
    """Conv4 on the first image channel alone (CloserLookFewShot's Omniglot backbone)."""
    input_channels = 1


class Conv4Pool(Conv4):
    """Conv4 with global average pooling: 64 features at any image size (the reference's
    backbone for CUB and mini-ImageNet in its HyperMAML/BayesHMAML commands)."""
    average_pool = True


class Conv6(Conv4):
    """Six blocks, the last two without pooling."""
    default_depth = 6
