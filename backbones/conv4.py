"""Conv4, the four-block convolutional backbone of the few-shot literature (SPEC section 4).

Each block is conv 3x3 (64 channels, padding 1) -> BatchNorm -> ReLU -> max-pool 2x2; a 28x28
image becomes 64 x 1 x 1, flattened to a 64-d feature.

BatchNorm keeps no running statistics (``track_running_stats=False``): in the MAML family
every call normalises with the statistics of the batch it is given, in training and at test
time alike, so a support set and a query set are each normalised by their own statistics
(transductive BatchNorm, as in the reference).

The input has one channel. The reference (CloserLookFewShot's ``Conv4S`` for Omniglot) loads
the grayscale images as three identical channels and keeps only the first; feeding that one
channel directly is the same network at a third of the first layer's cost.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class Conv4(nn.Module):
    feature_dim = 64

    def __init__(self, in_channels: int = 1, width: int = 64, depth: int = 4):
        super().__init__()
        blocks = []
        for i in range(depth):
            conv = nn.Conv2d(in_channels if i == 0 else width, width, 3, padding=1)
            # He-style init of the reference: N(0, sqrt(2 / (k * k * out_channels))).
            nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (3 * 3 * width)))
            nn.init.zeros_(conv.bias)
            norm = nn.BatchNorm2d(width, track_running_stats=False)
            blocks.append(nn.Sequential(conv, norm, nn.ReLU(inplace=False), nn.MaxPool2d(2)))
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).flatten(1)
