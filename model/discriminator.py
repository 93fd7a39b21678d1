"""The fully-convolutional discriminator D of Tsai et al. (AdaptSegNet), used by CLAN."""

from __future__ import annotations

import torch
from torch import nn


class FCDiscriminator(nn.Module):
    """Five 4x4 stride-2 convs, ``K -> ndf -> 2ndf -> 4ndf -> 8ndf -> 1``, LeakyReLU(0.2) after
    the first four. Input ``B x K x H x W`` class probabilities; output ``B x 1 x H/32 x W/32``
    logits (source 0, target 1). Parameter names match the public checkpoints."""

    def __init__(self, num_classes: int = 19, ndf: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_classes, ndf, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(ndf, ndf * 2, 4, stride=2, padding=1)
        self.conv3 = nn.Conv2d(ndf * 2, ndf * 4, 4, stride=2, padding=1)
        self.conv4 = nn.Conv2d(ndf * 4, ndf * 8, 4, stride=2, padding=1)
        self.classifier = nn.Conv2d(ndf * 8, 1, 4, stride=2, padding=1)
        self.leaky_relu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = self.leaky_relu(conv(x))
        return self.classifier(x)
