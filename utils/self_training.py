"""DACS's self-training pieces (Tranheden et al., WACV 2021) as pure functions of tensors.

Each step of DACS (``train_dacs_norm.py``) pastes half of the classes of a source image onto a
target image (ClassMix); the target's part of the mixed label is the argmax of a teacher, an
exponential moving average (EMA) of the student, and it weighs the share of target pixels on
which the teacher is confident. The mixed images are colour-jittered and blurred.

- ``class_mix_mask``: which pixels of each source image are pasted.
- ``mix``: the mixed image, label or weight map.
- ``make_teacher``, ``ema_update`` (``ema_blend`` with a given rate): the mean teacher.
- ``pseudo_label``, ``pseudo_label_weight``, ``pseudo_weight_map``: the teacher's label and
  its weight (DAFormer's: zero on the top and bottom rows).
- ``freeze_stochastic_layers``: the teacher without dropout or drop path (DAFormer's).
- ``draw_augmentation``, ``strong_augment``: the mixed images' colour jitter and blur.

Everything random is drawn from a generator the caller passes, or given as tensors
(``keys``, the augmentation's parameters): the step draws them on the host from a stream that is
a function of the run's seed and the step, so a resumed run continues bit for bit, and none of
these functions reads a value back to the host (``torch.unique`` and ``.item()`` stay out), so
the step can be captured as a CUDA graph. Images are the datasets' BGR minus their mean
(``dataset.transforms.IMG_MEAN_BGR``, passed in: this module imports only torch and the losses).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from utils.losses import IGNORE_INDEX

LABEL_VALUES = 256  # labels are uint8 trainIds: 0..255, 255 ignored
TEACHER_BN = ("keep", "copy")


def class_mix_mask(
    label: torch.Tensor,
    generator: torch.Generator | None = None,
    ignore_index: int = IGNORE_INDEX,
    include_ignore: bool = False,
    keys: torch.Tensor | None = None,
    pool: str = "image",
) -> torch.Tensor:
    """ClassMix's mask: ``B x H x W`` bool, true on the pixels of each source ``label`` (``B x H
    x W`` trainIds) whose class is drawn.

    Per image, of the n classes in the pool (``ignore_index`` excluded, unless
    ``include_ignore``: DACS's released ``trainUDA.py`` leaves it in the pool, the line that
    drops it commented out) ``ceil(n / 2)`` are drawn without replacement: the classes with the
    smallest of the random ``keys`` (``B x 256``, uniform in [0, 1); drawn with ``generator``
    when not given), which is a uniformly random subset of that size. The pool is the image's
    own classes (``pool="image"``, DACS) or those of the whole batch (``"batch"``, DAFormer's
    ``get_class_masks``, whose ``torch.unique(labels)`` reads every label: each image draws its
    own half of the batch's classes, and pastes those of them it holds). No value is read back
    to the host."""
    b = label.shape[0]
    flat = label.reshape(b, -1).long()
    if keys is None:
        device = generator.device if generator is not None else torch.device("cpu")
        keys = torch.rand(b, LABEL_VALUES, generator=generator, device=device)
    keys = keys.to(label.device)
    if keys.shape != (b, LABEL_VALUES):
        raise ValueError(f"class_mix_mask: keys must be {b} x {LABEL_VALUES}, got "
                         f"{tuple(keys.shape)}")  # fmt: skip
    counts = torch.zeros(b, LABEL_VALUES, dtype=torch.int64, device=label.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat))
    present = counts > 0
    if pool == "batch":
        present = present.any(0, keepdim=True).expand(b, -1)
    elif pool != "image":
        raise ValueError(f"class_mix_mask: pool must be 'image' or 'batch', got {pool!r}")
    if not include_ignore:
        drawable = torch.ones(LABEL_VALUES, dtype=torch.bool, device=label.device)
        drawable[ignore_index] = False
        present = present & drawable
    drawn_count = (present.sum(1, keepdim=True) + 1) // 2  # ceil(n / 2)
    # Absent classes sort after every present one (keys < 1), so a present class is drawn when
    # its key is among the drawn_count smallest.
    order = torch.where(present, keys, 2.0).argsort(dim=1, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(LABEL_VALUES,
                                            device=label.device).expand(b, -1))  # fmt: skip
    drawn = present & (rank < drawn_count)
    return drawn.gather(1, flat).view(label.shape)


def mix(mask: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mask * source + (1 - mask) * target`` for a ``B x H x W`` bool ``mask``: images
    (``B x C x H x W``), labels and weight maps (``B x H x W``); exact (a selection, not a
    blend)."""
    m = mask.bool()
    while m.dim() < source.dim():
        m = m.unsqueeze(1)
    return torch.where(m, source, target)


def make_teacher(student: nn.Module) -> nn.Module:
    """The mean teacher at step 0: a copy of ``student`` that never takes gradients, in the
    student's mode (DACS runs its teacher in train mode: BatchNorm on the batch's statistics)."""
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher.train(student.training)


def ema_alpha(step: int, alpha: float = 0.99) -> float:
    """The EMA rate of step ``step``: ``min(1 - 1/(step + 1), alpha)`` (0 at step 0: the teacher
    becomes the student; the true average of the students until the EMA's is longer)."""
    return min(1.0 - 1.0 / (step + 1), alpha)


@torch.no_grad()
def ema_blend(
    teacher: nn.Module,
    student: nn.Module,
    alpha_t: float | torch.Tensor,
    bn_buffers: str = "keep",
) -> None:
    """``theta' <- alpha_t theta' + (1 - alpha_t) theta`` for every parameter (trained or not);
    ``alpha_t`` a number or a 0-dim device tensor (a CUDA graph's). BatchNorm buffers (running
    statistics): ``keep`` the teacher's own (DACS: its EMA runs over ``parameters()`` only) or
    ``copy`` the student's."""
    if bn_buffers not in TEACHER_BN:
        raise ValueError(f"bn_buffers: expected one of {', '.join(TEACHER_BN)}, got {bn_buffers!r}")
    t, s = list(teacher.parameters()), list(student.parameters())
    if len(t) != len(s):
        raise ValueError(f"ema_blend: the teacher has {len(t)} parameters, the student {len(s)}")
    torch._foreach_mul_(t, alpha_t)
    torch._foreach_add_(t, torch._foreach_mul(s, 1 - alpha_t))
    if bn_buffers == "copy":
        for tb, sb in zip(teacher.buffers(), student.buffers(), strict=True):
            tb.copy_(sb)


def ema_update(
    teacher: nn.Module, student: nn.Module, step: int, alpha: float = 0.99, bn_buffers: str = "keep"
) -> float:
    """The teacher's update after step ``step`` (``ema_alpha``, ``ema_blend``); returns the rate."""
    alpha_t = ema_alpha(step, alpha)
    ema_blend(teacher, student, alpha_t, bn_buffers)
    return alpha_t


def pseudo_label(prob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's label and confidence: argmax and max of ``B x K x H x W`` probabilities."""
    confidence, label = prob.max(dim=1)
    return label, confidence


def pseudo_label_weight(prob: torch.Tensor, threshold: float = 0.968) -> torch.Tensor:
    """DACS's weight of the pseudo-labelled pixels (its ``threshold_uniform``): the share of
    all the batch's pixels whose maximum probability reaches ``threshold``, one number per
    batch (a 0-dim tensor, not read back)."""
    return (prob.amax(dim=1) >= threshold).float().mean()


def pseudo_weight_map(
    weight: torch.Tensor, shape: Sequence[int], ignore_top: int = 0, ignore_bottom: int = 0
) -> torch.Tensor:
    """The pseudo-labels' pixel weights, ``B x H x W`` (``shape``): ``weight`` (a number per
    batch or per image) everywhere, 0 on the top ``ignore_top`` and bottom ``ignore_bottom``
    rows (DAFormer's ``pseudo_weight_ignore_top`` / ``_bottom``: rows where the frames'
    rectification borders and the car's hood sit)."""
    out = weight.float().reshape(-1, 1, 1).expand(*shape).clone()
    if ignore_top > 0:
        out[:, :ignore_top] = 0
    if ignore_bottom > 0:
        out[:, -ignore_bottom:] = 0
    return out


def freeze_stochastic_layers(model: nn.Module) -> nn.Module:
    """``model`` with dropout and drop path off, the rest in its mode: DAFormer's teacher runs
    in train mode (BatchNorm on the batch) with its ``_DropoutNd`` and ``DropPath`` layers in
    eval mode. Called before each teacher pass, since the loop and evaluation switch modes.
    A layer is stochastic when it is a dropout or sets ``stochastic_depth`` (the MiT blocks)."""
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) or getattr(m, "stochastic_depth", False):
            m.training = False
    return model


def draw_augmentation(
    generator: torch.Generator,
    batch_size: int,
    jitter_p: float = 0.8,
    strength: float = 0.25,
    blur_p: float = 0.5,
    sigma: Sequence[float] = (0.15, 1.15),
) -> dict[str, torch.Tensor]:
    """One step's augmentation parameters, as DACS draws them: colour jitter with probability
    ``jitter_p`` (one draw for the batch), with brightness, contrast and saturation factors in
    ``[1 - strength, 1 + strength]`` and a hue shift in ``[-strength, strength]`` per image;
    blur with probability ``blur_p`` and one sigma, uniform in ``sigma``, for the batch."""
    u = torch.rand(3, generator=generator)
    factors = torch.rand(batch_size, 4, generator=generator) * (2 * strength)
    factors[:, :3] += 1 - strength
    factors[:, 3] -= strength
    lo, hi = sigma
    return {
        "jitter_on": (u[0] < jitter_p).float(),
        "jitter": factors,
        "blur_on": (u[1] < blur_p).float(),
        "blur_sigma": lo + (hi - lo) * u[2],
    }


def blur_kernel_size(side: int, fraction: float = 0.1) -> int:
    """An odd kernel of about ``fraction`` of ``side``: ``ceil(fraction * side)``, less one when
    that is even (DACS's ``floor(ceil(0.1 s) - 0.5 + ceil(0.1 s) % 2)``)."""
    k = max(1, math.ceil(fraction * side))
    return k if k % 2 else k - 1


def strong_augment(
    image: torch.Tensor,
    params: dict[str, torch.Tensor],
    mean: Sequence[float],
    kernel_fraction: float = 0.1,
) -> torch.Tensor:
    """The mixed images' augmentation: colour jitter (brightness, contrast, saturation, hue, in
    this order) where ``params["jitter_on"]``, then a Gaussian blur (reflect borders, an odd
    kernel of about ``kernel_fraction`` of each side) where ``params["blur_on"]``.

    ``image``: ``B x 3 x H x W`` BGR minus ``mean``, as the datasets give it; the jitter works on
    RGB in [0, 1]. ``params``: ``draw_augmentation``'s, on any device. Labels are not touched
    (neither transform moves a pixel). Unaugmented images come back unchanged, bit for bit."""
    dev = image.device
    p = {k: v.to(dev) for k, v in params.items()}
    # the mean made by fills on the device: a torch.tensor of numbers there would be a
    # blocking copy from the host, which a CUDA graph cannot capture
    m = torch.stack([torch.full((), float(x), device=dev) for x in mean]).view(1, 3, 1, 1)
    rgb = ((image.float() + m) / 255).flip(1)
    rgb = torch.where(p["jitter_on"] > 0, color_jitter(rgb, p["jitter"]), rgb)
    ky = blur_kernel_size(image.shape[-2], kernel_fraction)
    kx = blur_kernel_size(image.shape[-1], kernel_fraction)
    rgb = torch.where(p["blur_on"] > 0, gaussian_blur(rgb, p["blur_sigma"], (ky, kx)), rgb)
    out = (rgb.flip(1) * 255 - m).to(image.dtype)
    return torch.where((p["jitter_on"] > 0) | (p["blur_on"] > 0), out, image)


def color_jitter(rgb: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation and hue of ``B x 3 x H x W`` RGB in [0, 1], each image by
    its row of ``factors`` (``B x 4``: three blend factors, then the hue shift in turns), clamped
    to [0, 1] after each, as torchvision's ``ColorJitter`` does for one order of the four."""
    f = factors.to(rgb).view(-1, 4, 1, 1, 1).unbind(1)
    rgb = (rgb * f[0]).clamp(0, 1)
    mean_gray = _gray(rgb).mean(dim=(-3, -2, -1), keepdim=True)
    rgb = _blend(rgb, mean_gray, f[1])
    rgb = _blend(rgb, _gray(rgb), f[2])
    h, s, v = _rgb_to_hsv(rgb)
    h = torch.remainder(h + f[3].squeeze(1), 1.0)
    return _hsv_to_rgb(h, s, v)


def gaussian_blur(
    rgb: torch.Tensor, sigma: float | torch.Tensor, kernel_size: tuple[int, int]
) -> torch.Tensor:
    """Separable Gaussian blur of ``B x C x H x W`` with an odd ``(ky, kx)`` kernel and reflect
    borders; ``sigma`` may be a 0-dim tensor (the kernel is computed on the device)."""
    c = rgb.shape[1]
    sigma = torch.as_tensor(sigma, dtype=rgb.dtype, device=rgb.device)
    out = rgb
    for axis, k in ((-1, kernel_size[1]), (-2, kernel_size[0])):
        if k % 2 == 0:
            raise ValueError(f"gaussian_blur: kernel sizes must be odd, got {kernel_size}")
        x = torch.arange(k, dtype=rgb.dtype, device=rgb.device) - (k - 1) / 2
        w = torch.exp(-(x**2) / (2 * sigma**2))
        w = (w / w.sum()).repeat(c, 1)
        r = k // 2
        if axis == -1:
            out = F.conv2d(F.pad(out, (r, r, 0, 0), mode="reflect"), w.view(c, 1, 1, k), groups=c)
        else:
            out = F.conv2d(F.pad(out, (0, 0, r, r), mode="reflect"), w.view(c, 1, k, 1), groups=c)
    return out


def _gray(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb.unbind(-3)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)  # torchvision's weights


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    return (ratio * a + (1 - ratio) * b).clamp(0, 1)


def _rgb_to_hsv(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hue in turns [0, 1), saturation and value, each ``B x H x W``."""
    r, g, b = rgb.unbind(-3)
    maxc, minc = rgb.amax(-3), rgb.amin(-3)
    flat = maxc == minc
    chroma = maxc - minc
    s = chroma / torch.where(flat, torch.ones_like(maxc), maxc)
    d = torch.where(flat, torch.ones_like(chroma), chroma)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(flat, torch.zeros_like(h), h)
    return torch.remainder(h / 6.0, 1.0), s, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    h6 = h * 6.0
    sector = torch.floor(h6)
    f = h6 - sector
    sector = sector.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    # (r, g, b) for each of the six sectors of the hue circle
    table = torch.stack([
        torch.stack([v, q, p, p, t, v]),
        torch.stack([t, v, v, q, p, p]),
        torch.stack([p, p, t, v, v, q]),
    ])  # fmt: skip  # 3 x 6 x B x H x W
    index = sector.unsqueeze(0).unsqueeze(0).expand(3, 1, *sector.shape)
    return table.gather(1, index).squeeze(1).movedim(0, -3)
