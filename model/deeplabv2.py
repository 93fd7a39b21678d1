"""DeepLab-v2 segmentation network G: caffe-style dilated ResNet-101 and two ASPP classifiers.

Parameter names follow the public DeepLab-v2 checkpoints (`conv1`, `bn1`, `layer1..layer4`,
`layer5.conv2d_list.{i}` for C1, `layer6.conv2d_list.{i}` for C2), so released AdaptSegNet,
CLAN and FeatureToAdapt weights load with `load_state_dict(strict=True)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from model.contract import SegOutput
from utils.config import PREDICT_WITH

ASPP_DILATIONS = (6, 12, 18, 24)
CLASSIFIER_LR_MULT = 10.0


def _frozen_bn(channels: int) -> nn.BatchNorm2d:
    """BatchNorm whose affine parameters never train (running statistics still may)."""
    bn = nn.BatchNorm2d(channels)
    for p in bn.parameters():
        p.requires_grad = False
    return bn


class Bottleneck(nn.Module):
    """Caffe-style bottleneck: the stride sits on the first 1x1 conv, the 3x3 conv is dilated."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        width = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)
        self.bn1 = _frozen_bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = _frozen_bn(planes)
        self.conv3 = nn.Conv2d(planes, width, 1, bias=False)
        self.bn3 = _frozen_bn(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ASPPClassifier(nn.Module):
    """Sum of parallel dilated 3x3 convs (dilation = padding = 6, 12, 18, 24)[:branches].

    Released AdaptSegNet / MaxSquare checkpoints store four branches but their forward used only
    the first two: `branches=2` builds those two; the loader decides about the stored others.
    """

    def __init__(self, in_channels: int, num_classes: int, branches: int) -> None:
        super().__init__()
        self.branches = branches
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True)
            for d in ASPP_DILATIONS[:branches]
        )
        for conv in self.conv2d_list:
            # Weights N(0, 0.01) as in the released code; biases keep PyTorch's default init.
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        """x: B x C x h x w -> logits B x K x h x w."""
        out = self.conv2d_list[0](x)  # B x K x h x w
        for conv in self.conv2d_list[1:]:
            out = out + conv(x)
        return out


def _make_layer(
    inplanes: int, planes: int, blocks: int, stride: int = 1, dilation: int = 1
) -> nn.Sequential:
    """One ResNet stage; its first block always has a projection shortcut (also layer3/4)."""
    width = planes * Bottleneck.expansion
    downsample = nn.Sequential(
        nn.Conv2d(inplanes, width, 1, stride=stride, bias=False), _frozen_bn(width)
    )
    first = Bottleneck(inplanes, planes, stride, dilation, downsample)
    rest = (Bottleneck(width, planes, dilation=dilation) for _ in range(1, blocks))
    return nn.Sequential(first, *rest)


class DeepLabV2(nn.Module):
    """DeepLab-v2 with output stride 8 and two ASPP classifiers C1 (`layer5`), C2 (`layer6`).

    C2 reads layer4; C1 reads layer4, or layer3 when `multi_level=True`. BN affine parameters
    never train; `freeze_bn_stats=True` keeps every BN on its running statistics in train mode.
    """

    align_corners = True  # how its logits are resized to labels and images (nn.Upsample's)

    def __init__(
        self,
        num_classes: int = 19,
        layers: Sequence[int] = (3, 4, 23, 3),
        base_width: int = 64,
        multi_level: bool = False,
        aspp_branches: int = 4,
        predict_with: str = "sum",
        freeze_bn_stats: bool = False,
    ) -> None:
        super().__init__()
        _check_args(num_classes, layers, base_width, aspp_branches, predict_with)
        self.multi_level = multi_level
        self.predict_with = predict_with
        self.freeze_bn_stats = freeze_bn_stats

        self.conv1 = nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = _frozen_bn(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        c1, c2, c3, c4 = (base_width * m * Bottleneck.expansion for m in (1, 2, 4, 8))
        self.layer1 = _make_layer(base_width, base_width, layers[0])
        self.layer2 = _make_layer(c1, 2 * base_width, layers[1], stride=2)
        self.layer3 = _make_layer(c2, 4 * base_width, layers[2], dilation=2)
        self.layer4 = _make_layer(c3, 8 * base_width, layers[3], dilation=4)
        self.layer5 = ASPPClassifier(c3 if multi_level else c4, num_classes, aspp_branches)
        self.layer6 = ASPPClassifier(c4, num_classes, aspp_branches)
        self.train()

    def train(self, mode: bool = True) -> DeepLabV2:
        """Set train/eval mode; with `freeze_bn_stats` every BN stays in eval mode."""
        super().train(mode)
        if self.freeze_bn_stats:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, x: Tensor, heads: bool = True) -> SegOutput:
        """x: B x 3 x H x W -> SegOutput at output stride 8 (ceil mode: 512 x 1024 -> 65 x 129).

        Channel counts in the comments are for the full width (base_width=64).
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # B x 64 x H/4 x W/4
        x = self.layer2(self.layer1(x))  # B x 512 x h x w
        x3 = self.layer3(x)  # B x 1024 x h x w
        features = self.layer4(x3)  # B x 2048 x h x w
        if not heads:
            return SegOutput(None, None, features)
        p1 = self.layer5(x3 if self.multi_level else features)  # B x K x h x w
        p2 = self.layer6(features)  # B x K x h x w
        return SegOutput(p1, p2, features)

    def predict(self, out: SegOutput) -> Tensor:
        """Logits used for prediction: p1 + p2 (`predict_with="sum"`) or p2 (`"c2"`)."""
        if out.p1 is None or out.p2 is None:
            raise ValueError("predict() needs classifier outputs; got a forward(heads=False)")
        return out.p1 + out.p2 if self.predict_with == "sum" else out.p2

    def predicted_heads(self, out: SegOutput) -> tuple[Tensor, ...]:
        """The heads' logits that `predict` combines: C1 and C2 (`"sum"`), or C2 (`"c2"`)."""
        return (out.p2,) if self.predict_with == "c2" else (out.p1, out.p2)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer groups: trainable backbone params at lr, classifier params at 10 x lr."""
        heads = [*self.layer5.parameters(), *self.layer6.parameters()]
        head_ids = {id(p) for p in heads}
        backbone = [p for p in self.parameters() if p.requires_grad and id(p) not in head_ids]
        return [
            {"params": backbone, "lr": lr, "lr_mult": 1.0, "name": "backbone"},
            {
                "params": [p for p in heads if p.requires_grad],
                "lr": CLASSIFIER_LR_MULT * lr,
                "lr_mult": CLASSIFIER_LR_MULT,
                "name": "classifiers",
            },
        ]

    def backbone_stages(self) -> list[nn.Module]:
        """The backbone's stages in the released code's order (stem conv, stem BN, layer1..4):
        what its ``get_1x_lr_params_NOscale`` walks to build the optimizer's backbone group."""
        return [self.conv1, self.bn1, self.layer1, self.layer2, self.layer3, self.layer4]

    def classifier_weights(self) -> tuple[Tensor, Tensor]:
        """Flattened concatenation of all C1 parameters and of all C2 parameters."""
        w1 = torch.cat([p.flatten() for p in self.layer5.parameters()])
        w2 = torch.cat([p.flatten() for p in self.layer6.parameters()])
        return w1, w2


def _check_args(
    num_classes: int,
    layers: Sequence[int],
    base_width: int,
    aspp_branches: int,
    predict_with: str,
) -> None:
    """Raise ValueError naming the first invalid constructor argument."""
    if not _is_positive_int(num_classes):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if (
        not isinstance(layers, Sequence)
        or len(layers) != 4
        or not all(_is_positive_int(n) for n in layers)
    ):
        raise ValueError(f"layers must be 4 positive ints, got {layers!r}")
    if not _is_positive_int(base_width):
        raise ValueError(f"base_width must be a positive int, got {base_width!r}")
    if aspp_branches not in (2, 4):
        raise ValueError(f"aspp_branches must be 2 or 4, got {aspp_branches!r}")
    if predict_with not in PREDICT_WITH:
        raise ValueError(f"predict_with must be one of {PREDICT_WITH}, got {predict_with!r}")


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
