"""DAFormer's segmentation network: a MiT encoder and DAFormer's context-aware fusion head.

The head embeds each of the encoder's four stages to ``channels`` (256) with a linear layer,
resizes the embeddings bilinearly to stride 4, concatenates them and fuses them with a
depthwise-separable ASPP (dilations 1, 6, 12, 18; no image pooling; BatchNorm and ReLU after
every convolution) and a 3x3 bottleneck; dropout 0.1 and a 1x1 classifier give the logits at
stride 4. Parameter names are those of DAFormer's checkpoints (``backbone.*``,
``decode_head.*``), so its, HRDA's and MIC's trained students load with ``strict=True``.

Its input normalisation is its own: the forward takes the images as every family does (the
datasets' BGR minus DeepLab-v2's mean, ``dataset/transforms.py``) and first turns them into
DAFormer's (RGB minus ImageNet's mean, divided by its std), a per-channel affine map. Its
logits are resized to the input's size as mmseg's ``EncoderDecoder`` does (bilinear,
``align_corners=False``), and so is any further resize (``align_corners``).

The network meets the model contract (``model/contract.py``): one head, whose logits are
``SegOutput.p2``; ``SegOutput.features`` are the features the norm loss reads, at the place
``norm_features`` names: ``backbone`` (the last MiT stage, after its LayerNorm) or ``decoder``
(the head's fused features, before dropout and the classifier). ``SegOutput.stages`` are the
four MiT stages (the ImageNet feature distance reads the last).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.contract import SegOutput
from model.mit import MixTransformer
from utils.image_form import IMG_MEAN_BGR

FUSION_DILATIONS = (1, 6, 12, 18)
HEAD_CHANNELS = 256
DROPOUT = 0.1
HEAD_LR_MULT = 10.0  # parameters whose name holds "head" (DAFormer's paramwise custom_keys)
NO_DECAY = ("norm", "pos_block")  # the other custom keys: no weight decay
NORM_FEATURES = ("backbone", "decoder")
# DAFormer's input normalisation: RGB in [0, 255], ImageNet's mean and std
RGB_MEAN = (123.675, 116.28, 103.53)
RGB_STD = (58.395, 57.12, 57.375)
# the repository's image form, which every family's forward takes: BGR minus IMG_MEAN_BGR
REPOSITORY_MEAN_RGB = IMG_MEAN_BGR[::-1]


class ConvBNReLU(nn.Module):
    """A convolution without bias, BatchNorm and ReLU (mmcv's ``ConvModule``: ``conv``, ``bn``)."""

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int = 1, groups: int = 1):
        super().__init__()
        padding = dilation * (kernel // 2)
        self.conv = nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation,
                              groups=groups, bias=False)  # fmt: skip
        self.bn = nn.BatchNorm2d(cout)
        # mmcv's init: Kaiming normal (fan_out, ReLU), BatchNorm 1 and 0
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class SeparableConv(nn.Module):
    """A dilated 3x3 depthwise ``ConvBNReLU``, then a 1x1 pointwise one."""

    def __init__(self, cin: int, cout: int, dilation: int) -> None:
        super().__init__()
        self.depthwise_conv = ConvBNReLU(cin, cin, 3, dilation=dilation, groups=cin)
        self.pointwise_conv = ConvBNReLU(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class Embedding(nn.Module):
    """A linear embedding of a stage's channels, applied at every position (``proj``)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.proj = nn.Linear(cin, cout)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        return self.proj(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)


class SeparableASPP(nn.Module):
    """The fusion: parallel branches (a 1x1 ``ConvBNReLU`` for dilation 1, a ``SeparableConv``
    for the others), concatenated, then a 3x3 ``ConvBNReLU`` bottleneck."""

    def __init__(self, cin: int, channels: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.aspp_modules = nn.ModuleList(
            ConvBNReLU(cin, channels, 1) if d == 1 else SeparableConv(cin, channels, d)
            for d in dilations
        )
        self.bottleneck = ConvBNReLU(len(dilations) * channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cpu and torch.is_autocast_enabled("cpu"):
            # The fused stages come channels_last-strided (the embeddings' transposes leave
            # them so), and PyTorch's CPU kernel for a dilated depthwise convolution's weight
            # gradient in bfloat16 is wrong on such inputs (over 100% off in torch 2.14; NCHW
            # is within rounding, and faster). Under CPU autocast they go in as NCHW; float32
            # and CUDA keep their layout.
            x = x.contiguous()
        return self.bottleneck(torch.cat([branch(x) for branch in self.aspp_modules], dim=1))


class DAFormerHead(nn.Module):
    """DAFormer's decoder: ``forward(stages)`` returns the fused features (B x channels x H/4 x
    W/4) and the logits at the same size."""

    def __init__(self, in_dims: tuple[int, ...], num_classes: int, channels: int = HEAD_CHANNELS):
        super().__init__()
        self.embed_layers = nn.ModuleDict(
            {str(i): Embedding(d, channels) for i, d in enumerate(in_dims)}
        )
        self.fuse_layer = SeparableASPP(len(in_dims) * channels, channels, FUSION_DILATIONS)
        self.dropout = nn.Dropout2d(DROPOUT)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, 0.0, 0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, stages: list[Tensor]) -> tuple[Tensor, Tensor]:
        size = stages[0].shape[2:]
        embedded = []
        for i, x in enumerate(stages):
            e = self.embed_layers[str(i)](x)
            if e.shape[2:] != size:
                e = F.interpolate(e, size=size, mode="bilinear", align_corners=False)
            embedded.append(e)
        fused = self.fuse_layer(torch.cat(embedded, dim=1))
        return fused, self.conv_seg(self.dropout(fused))


class DAFormer(nn.Module):
    """A MiT encoder (``backbone``) and DAFormer's head (``decode_head``)."""

    align_corners = False  # how its logits are resized to labels and images

    def __init__(
        self,
        num_classes: int = 19,
        backbone: str = "mit_b5",
        head_channels: int = HEAD_CHANNELS,
        norm_features: str = "backbone",
    ) -> None:
        super().__init__()
        if norm_features not in NORM_FEATURES:
            raise ValueError(f"norm_features must be one of {NORM_FEATURES}, got {norm_features!r}")
        self.norm_features = norm_features
        self.backbone = MixTransformer(backbone)
        self.decode_head = DAFormerHead(self.backbone.dims, num_classes, head_channels)
        # x_own = (x.flip(channels) + shift) / scale; buffers that files do not hold
        shift = torch.tensor(REPOSITORY_MEAN_RGB) - torch.tensor(RGB_MEAN)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(RGB_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor, heads: bool = True) -> SegOutput:
        """x: B x 3 x H x W, the repository's image form -> SegOutput; logits (``p2``) at
        H x W. With ``heads=False`` and the norm on the backbone, the head does not run."""
        stages = self.backbone(self.own_input(x))
        if not heads and self.norm_features == "backbone":
            return SegOutput(None, None, stages[-1], tuple(stages))
        fused, logits = self.decode_head(stages)
        if not heads:  # the decoder's features alone: no logits to resize
            return SegOutput(None, None, fused, tuple(stages))
        # to the input's size in float32, as every family's logits (losses.upsample_to): under
        # mixed precision the full-resolution logits that the losses read keep their precision
        logits = F.interpolate(
            logits.float(), size=x.shape[-2:], mode="bilinear", align_corners=False
        )
        features = stages[-1] if self.norm_features == "backbone" else fused
        return SegOutput(None, logits, features, tuple(stages))

    def own_input(self, x: Tensor) -> Tensor:
        """The repository's image form (BGR minus DeepLab-v2's mean) -> DAFormer's (RGB minus
        ImageNet's mean, over its std), in float32."""
        return (x.float().flip(1) + self.shift) / self.scale

    def predict(self, out: SegOutput) -> Tensor:
        """The logits: the one head's."""
        if out.p2 is None:
            raise ValueError("predict() needs the head's output; got a forward(heads=False)")
        return out.p2

    def predicted_heads(self, out: SegOutput) -> tuple[Tensor, ...]:
        return (out.p2,)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """DAFormer's groups: the head at 10 x lr; backbone parameters named ``norm`` (or
        ``pos_block``) without weight decay; the rest at lr with decay. As in mmcv's
        ``paramwise_cfg``, the first key that matches decides, the longest first and ``head``
        before ``norm``, so the head's parameters keep their decay."""
        head, no_decay, rest = [], [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if "head" in name:
                head.append(p)
            elif any(key in name for key in NO_DECAY):
                no_decay.append(p)
            else:
                rest.append(p)
        return [
            {"params": rest, "lr": lr, "lr_mult": 1.0, "name": "backbone"},
            {"params": no_decay, "lr": lr, "lr_mult": 1.0, "weight_decay": 0.0,
             "name": "backbone_norms"},
            {"params": head, "lr": HEAD_LR_MULT * lr, "lr_mult": HEAD_LR_MULT, "name": "head"},
        ]  # fmt: skip

    def classifier_weights(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(
            "DAFormer has one classifier; CLAN's weight discrepancy needs two "
            "(model.arch=deeplabv2)"
        )

    def backbone_stages(self) -> list[nn.Module]:
        raise NotImplementedError(
            "optim.backbone_updates walks DeepLab-v2's ResNet stages; it needs model.arch=deeplabv2"
        )
