"""MiT (Mix Transformer), SegFormer's hierarchical encoder, as DAFormer, HRDA and MIC use it.

Four stages; each embeds its input with an overlapping strided convolution (7x7 stride 4, then
3x3 stride 2), runs pre-norm transformer blocks whose attention reads keys and values from a
map shrunk by the stage's reduction ratio (8, 4, 2, 1), and ends in a LayerNorm. The blocks'
feed-forward mixes positions with a 3x3 depthwise convolution ("Mix-FFN"), so there is no
position embedding. Outputs are the four stages' maps at strides 4, 8, 16 and 32.

Parameter names are those of SegFormer's ImageNet files (``mit_b0.pth`` .. ``mit_b5.pth``) and of
the ``backbone.`` part of DAFormer's checkpoints, so both load with ``strict=True``. Epsilons as
in the original: 1e-6 for the blocks' and the stages' LayerNorms, PyTorch's 1e-5 for those of
the patch embeddings and the attention's reduced map.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MiTVariant(NamedTuple):
    """The sizes that tell one MiT from another."""

    dims: tuple[int, int, int, int]  # channels per stage
    depths: tuple[int, int, int, int]  # blocks per stage
    heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    reductions: tuple[int, int, int, int] = (8, 4, 2, 1)  # spatial reduction of keys/values
    mlp_ratio: int = 4


WIDE = (64, 128, 320, 512)
MIT_VARIANTS: dict[str, MiTVariant] = {
    "mit_b0": MiTVariant((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": MiTVariant(WIDE, (2, 2, 2, 2)),
    "mit_b2": MiTVariant(WIDE, (3, 4, 6, 3)),
    "mit_b3": MiTVariant(WIDE, (3, 4, 18, 3)),
    "mit_b4": MiTVariant(WIDE, (3, 8, 27, 3)),
    "mit_b5": MiTVariant(WIDE, (3, 6, 40, 3)),
    # not a released size: B0's widths with one block a stage, for the CPU demo
    "mit_demo": MiTVariant((32, 64, 160, 256), (1, 1, 1, 1)),
}
BLOCK_EPS = 1e-6  # the blocks' and the stages' LayerNorms (PyTorch's default elsewhere)
DROP_PATH = 0.1  # stochastic depth of the last block; it rises linearly from 0 at the first


class PatchEmbed(nn.Module):
    """An overlapping patch embedding: a strided convolution, then LayerNorm over channels."""

    def __init__(self, in_channels: int, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        """B x C x H x W -> tokens B x (h*w) x dim, and h, w."""
        x = self.proj(x)
        h, w = x.shape[2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class Attention(nn.Module):
    """Multi-head self-attention whose keys and values come from the token map reduced by a
    ``reduction x reduction`` strided convolution (and a LayerNorm) when ``reduction > 1``."""

    def __init__(self, dim: int, heads: int, reduction: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"MiT attention: {dim} channels do not split into {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.reduction = reduction
        if reduction > 1:
            self.sr = nn.Conv2d(dim, dim, reduction, stride=reduction)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.heads, c // self.heads).transpose(1, 2)
        if self.reduction > 1:
            x = self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
            x = self.norm(x)
        k, v = self.kv(x).reshape(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MixFFN(nn.Module):
    """Linear, 3x3 depthwise convolution over the token map, GELU, linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DepthwiseConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class DepthwiseConv(nn.Module):
    """A 3x3 depthwise convolution of tokens laid out as their h x w map (the module holding it
    is named ``dwconv`` in the released files, hence ``mlp.dwconv.dwconv``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, n, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)


class Block(nn.Module):
    """A pre-norm transformer block with stochastic depth on both residual branches."""

    stochastic_depth = True  # random in train mode (a teacher turns it off: self_training)

    def __init__(self, dim: int, heads: int, reduction: int, mlp_ratio: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_EPS)
        self.attn = Attention(dim, heads, reduction)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_EPS)
        self.mlp = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = drop_path

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        x = x + self._drop(self.attn(self.norm1(x), h, w))
        return x + self._drop(self.mlp(self.norm2(x), h, w))

    def _drop(self, branch: Tensor) -> Tensor:
        """Stochastic depth: in training, zero the branch for a sample with probability
        ``drop_path`` and scale the kept ones by 1 / (1 - drop_path)."""
        if not self.training or self.drop_path == 0.0:
            return branch
        keep = 1.0 - self.drop_path
        mask = branch.new_empty(branch.shape[0], 1, 1).bernoulli_(keep)
        return branch * mask / keep


class MixTransformer(nn.Module):
    """MiT: ``forward(x)`` returns the four stages' maps, B x dims[i] x H/s x W/s for
    s = 4, 8, 16, 32 (each after its stage's LayerNorm)."""

    def __init__(self, variant: str = "mit_b5", drop_path: float = DROP_PATH) -> None:
        super().__init__()
        if variant not in MIT_VARIANTS:
            raise ValueError(f"MiT variant {variant!r}: expected one of {', '.join(MIT_VARIANTS)}")
        v = self.variant = MIT_VARIANTS[variant]
        self.name = variant
        rates = torch.linspace(0, drop_path, sum(v.depths), device="cpu").tolist()
        start = 0
        for i, (dim, depth) in enumerate(zip(v.dims, v.depths, strict=True), start=1):
            in_channels = 3 if i == 1 else v.dims[i - 2]
            kernel, stride = (7, 4) if i == 1 else (3, 2)
            self.add_module(f"patch_embed{i}", PatchEmbed(in_channels, dim, kernel, stride))
            blocks = [Block(dim, v.heads[i - 1], v.reductions[i - 1], v.mlp_ratio, rate)
                      for rate in rates[start:start + depth]]  # fmt: skip
            self.add_module(f"block{i}", nn.ModuleList(blocks))
            self.add_module(f"norm{i}", nn.LayerNorm(dim, eps=BLOCK_EPS))
            start += depth
        self.apply(_init)

    @property
    def dims(self) -> tuple[int, int, int, int]:
        return self.variant.dims

    def forward(self, x: Tensor) -> list[Tensor]:
        stages = []
        for i in range(1, 5):
            tokens, h, w = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"block{i}"):
                tokens = block(tokens, h, w)
            tokens = getattr(self, f"norm{i}")(tokens)
            x = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
            stages.append(x)
        return stages


def _init(m: nn.Module) -> None:
    """SegFormer's initialisation from scratch: linear weights truncated-normal (std 0.02),
    LayerNorm 1 and 0, convolutions normal with std sqrt(2 / fan_out), biases 0."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
