"""DAFormer's ImageNet feature distance (Hoyer et al., CVPR 2022), as pure functions of tensors.

The student's encoder is pulled towards a frozen copy of itself as it was at the start (its
ImageNet weights), on the source images, where the label is a "thing" class:

    L_fd = mean over the masked cells of || F(x_s) - F_0(x_s) ||_2

``F`` the last stage of the encoder (MiT's; DeepLab-v2's layer4), ``F_0`` the frozen copy's, run
in eval mode. A cell of the feature map is masked in when the source label, downscaled to the
feature map by the majority class of each cell, holds one of the classes and that class covers
at least ``min_ratio`` of the cell (DAFormer's ``downscale_label_ratio`` and
``masked_feat_dist``, ``mmseg/models/uda/dacs.py``).

Unlike DAFormer's mean over an empty selection (NaN when no cell qualifies), the distance of a
batch without a qualifying cell is 0, and nothing is read back to the host.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from utils.losses import IGNORE_INDEX


def downscale_label_ratio(
    label: torch.Tensor,
    scale: int,
    min_ratio: float,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """``B x H x W`` trainIds -> ``B x (H // scale) x (W // scale)``: each ``scale x scale``
    cell's majority class (the ignore label counting as a class of its own), or
    ``ignore_index`` where that is the ignore label or covers less than ``min_ratio`` of the
    cell."""
    if scale < 1:
        raise ValueError(f"downscale_label_ratio: scale must be >= 1, got {scale}")
    lab = label.long()
    lab = torch.where(lab == ignore_index, torch.full_like(lab, num_classes), lab)
    one_hot = F.one_hot(lab, num_classes + 1).permute(0, 3, 1, 2).float()
    ratio, cls = F.avg_pool2d(one_hot, kernel_size=scale).max(dim=1)
    ignored = (cls == num_classes) | (ratio < min_ratio)
    return torch.where(ignored, torch.full_like(cls, ignore_index), cls)


def feature_distance_mask(
    label: torch.Tensor,
    feature_size: Sequence[int],
    classes: Sequence[int],
    min_ratio: float,
    num_classes: int,
) -> torch.Tensor:
    """The cells of a ``h x w`` feature map (``feature_size``) that the distance reads:
    ``B x h x w`` bool. The label is downscaled by DAFormer's factor ``W // w``; where the
    feature map is larger than that (sizes that are not multiples of the stride), its extra
    cells are left out. ``classes`` empty: every cell whose majority is a class."""
    h, w = feature_size
    scale = max(1, label.shape[-1] // w)
    cells = downscale_label_ratio(label, scale, min_ratio, num_classes)[:, :h, :w]
    if classes:  # compared with each class as a number: no tensor copied to the device, so
        # no host sync, and the step stays capturable as a CUDA graph
        mask = torch.zeros_like(cells, dtype=torch.bool)
        for c in classes:
            mask |= cells == c
    else:
        mask = cells != IGNORE_INDEX
    return F.pad(mask, (0, w - mask.shape[-1], 0, h - mask.shape[-2]))


def masked_feature_distance(
    features: torch.Tensor, frozen: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The mean over the masked cells of the per-cell L2 distance between ``B x C x h x w``
    ``features`` and ``frozen`` (no gradient to it); 0 where no cell is masked."""
    dist = torch.linalg.vector_norm(features.float() - frozen.detach().float(), dim=1)
    m = mask.to(dist.dtype)
    return (dist * m).sum() / m.sum().clamp(min=1)
