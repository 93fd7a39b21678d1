"""Paired image/label transforms whose randomness comes from an explicit ``torch.Generator``.

A sample is a pure function of (index, seed): every random parameter (scale, crop offset,
flip) is drawn from the generator passed in, never from global state, so a resumed run sees
exactly the batches it would have seen without the interruption.

Images enter as uint8 RGB (3, H, W) and leave as float32 BGR minus ``IMG_MEAN_BGR`` (no std
scaling, docs/method.md "The segmentation network G"); labels enter as uint8 trainIds (H, W)
and leave as int64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dataset.labels import IGNORE_INDEX
from utils.image_form import IMG_MEAN_BGR  # (re-exported: the datasets' image form)

__all__ = [
    "IMG_MEAN_BGR",
    "PairedTransform",
    "TransformSpec",
    "accepts_crop",
    "denormalize",
    "normalize",
]


@dataclass(frozen=True)
class TransformSpec:
    """What a ``PairedTransform`` does, in order: resize, rescale, blur, normalise, pad/crop,
    mirror.

    Sizes are (W, H), as in the paper and the released code.
    """

    resize: tuple[int, int] | None = None  # (W, H): whole image bicubic, label nearest
    scale_range: tuple[float, float] = (1.0, 1.0)  # uniform factor: image bilinear, label nearest
    crop: tuple[int, int] | None = None  # (W, H) random crop, padded first (image 0, label 255)
    # < 1: mmseg's RandomCrop(cat_max_ratio): up to 10 windows re-drawn until one holds two
    # classes or more, the largest below this share of its labelled pixels (``_crop_window``)
    cat_max_ratio: float = 1.0
    mirror: bool = False  # horizontal flip of image and label with p = 0.5
    blur: bool = False  # Gaussian blur of the image with p = 0.5, sigma ~ U(0, 1) (MaxSquare's)
    label_at_full_resolution: bool = False  # resize/scale the image only (evaluation)
    # (factor, probability) pairs applied to the image only, e.g. ((0.8, 0.3), (1.1, 0.3)) is
    # the released code's augmentation; the loss then upsamples predictions to the label size.
    image_rescale: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {self.scale_range}")
        for name in ("resize", "crop"):
            size = getattr(self, name)
            if size is not None and (len(size) != 2 or min(size) <= 0):
                raise ValueError(f"{name} must be a positive (W, H) pair, got {size}")
        if not 0 < self.cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio must be in (0, 1], got {self.cat_max_ratio}")
        if sum(p for _, p in self.image_rescale) > 1 or any(
            f <= 0 or p < 0 for f, p in self.image_rescale
        ):
            raise ValueError(
                "image_rescale must be (factor > 0, probability >= 0) pairs with probabilities "
                f"summing to at most 1, got {self.image_rescale}"
            )
        if (self.label_at_full_resolution or self.image_rescale) and self.crop is not None:
            raise ValueError(
                "crop needs image and label at the same size: it cannot be combined with "
                "label_at_full_resolution or image_rescale"
            )


def normalize(image_uint8_rgb: Tensor) -> Tensor:
    """RGB uint8 (..., 3, H, W) -> BGR float32 minus ``IMG_MEAN_BGR`` (..., 3, H, W)."""
    mean = torch.tensor(IMG_MEAN_BGR, dtype=torch.float32, device=image_uint8_rgb.device)
    return image_uint8_rgb.flip(-3).to(torch.float32) - mean.view(3, 1, 1)


def denormalize(image: Tensor) -> Tensor:
    """Inverse of ``normalize``: BGR float minus mean (..., 3, H, W) -> RGB uint8."""
    mean = torch.tensor(IMG_MEAN_BGR, dtype=torch.float32, device=image.device)
    rgb = (image.to(torch.float32) + mean.view(3, 1, 1)).flip(-3)
    return rgb.round().clamp(0, 255).to(torch.uint8)


def _uniform(rng: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=rng).item()


def _randint(rng: torch.Generator, high: int) -> int:
    """Uniform integer in [0, high]."""
    return int(torch.randint(high + 1, (), generator=rng).item())


def _random_blur(image: Tensor, rng: torch.Generator) -> Tensor:
    """MaxSquare's blur: with p = 0.5 a Gaussian blur of sigma ~ U(0, 1) (its PIL
    ``GaussianBlur(radius)`` takes the radius as the standard deviation), here with an odd
    kernel of 2 ceil(3 sigma) + 1 pixels; the label is untouched."""
    import torchvision.transforms.v2.functional as TF

    if torch.rand((), generator=rng).item() >= 0.5:
        return image
    sigma = torch.rand((), generator=rng).item()
    if sigma <= 0.0:
        return image
    kernel = 2 * math.ceil(3 * sigma) + 1
    return TF.gaussian_blur(image, [kernel, kernel], [sigma, sigma])


CROP_TRIES = 10  # mmseg's RandomCrop: windows checked against cat_max_ratio before the last


def accepts_crop(labels: Tensor, cat_max_ratio: float) -> bool:
    """mmseg's ``RandomCrop`` rule: a window is accepted when its labelled pixels (the ignore
    label excluded) hold more than one class and the largest class's count over their sum is
    below ``cat_max_ratio`` (``np.max(cnt) / np.sum(cnt) < cat_max_ratio``)."""
    counts = torch.bincount(labels[labels != IGNORE_INDEX].flatten().long())
    counts = counts[counts > 0]
    return len(counts) > 1 and counts.max().item() / counts.sum().item() < cat_max_ratio


def _crop_window(
    labels: Tensor | None,
    size: tuple[int, int],
    crop: tuple[int, int],
    cat_max_ratio: float,
    rng: torch.Generator,
) -> tuple[int, int]:
    """(top, left) of a ``crop`` = (W, H) window of an image of ``size`` = (H, W): one random
    draw; with ``cat_max_ratio`` < 1 and labels, as mmseg's ``RandomCrop`` does it: while a
    window fails ``accepts_crop``, another is drawn, ``CROP_TRIES`` times at most, and the
    last one drawn is used unchecked."""
    (crop_w, crop_h), (height, width) = crop, size
    top, left = _randint(rng, height - crop_h), _randint(rng, width - crop_w)
    if cat_max_ratio >= 1 or labels is None:
        return top, left
    for _ in range(CROP_TRIES):
        if accepts_crop(labels[..., top : top + crop_h, left : left + crop_w], cat_max_ratio):
            break
        top, left = _randint(rng, height - crop_h), _randint(rng, width - crop_w)
    return top, left


def _random_crop(
    image: Tensor,
    labels: Tensor | None,
    crop: tuple[int, int],
    rng: torch.Generator,
    cat_max_ratio: float = 1.0,
) -> tuple[Tensor, Tensor | None]:
    """A ``crop`` = (W, H) window at a random place (``_crop_window``), the image padded with
    0 (the mean colour, once normalised) and the labels with the ignore label where it is
    smaller."""
    import torchvision.transforms.v2.functional as TF

    crop_w, crop_h = crop
    _, height, width = image.shape
    # left, top, right, bottom: pad right and bottom up to the crop size
    pad = [0, 0, max(crop_w - width, 0), max(crop_h - height, 0)]
    if pad[2] or pad[3]:
        image = TF.pad(image, pad, fill=0.0)
        labels = TF.pad(labels, pad, fill=IGNORE_INDEX) if labels is not None else None
    top, left = _crop_window(labels, image.shape[-2:], crop, cat_max_ratio, rng)
    image = TF.crop(image, top, left, crop_h, crop_w)
    labels = TF.crop(labels, top, left, crop_h, crop_w) if labels is not None else None
    return image, labels


class PairedTransform:
    """Apply a ``TransformSpec`` to an (image, label) pair with randomness from ``rng``."""

    def __init__(self, spec: TransformSpec) -> None:
        self.spec = spec

    def __repr__(self) -> str:
        return f"PairedTransform({self.spec})"

    def __call__(
        self, image: Tensor, label: Tensor | None, rng: torch.Generator
    ) -> tuple[Tensor, Tensor | None]:
        """image: uint8 (3, H, W) RGB; label: uint8 (H, W) trainIds or None.

        Returns float32 (3, H', W') normalised BGR and int64 (H', W') labels (or None).
        """
        # Imported on first use: torchvision's import takes seconds, which every command
        # (and every error a user makes) would otherwise pay before doing anything.
        import torchvision.transforms.v2.functional as TF
        from torchvision.transforms.v2.functional import InterpolationMode

        spec = self.spec
        resize_label = label is not None and not spec.label_at_full_resolution
        if label is not None and label.shape != image.shape[-2:]:
            raise ValueError(f"image {tuple(image.shape)} and label {tuple(label.shape)} differ")
        labels = label[None] if label is not None else None  # (1, H, W) for the v2 kernels

        if spec.resize is not None:
            width, height = spec.resize
            image = TF.resize(image, [height, width], InterpolationMode.BICUBIC, antialias=True)
            if resize_label:
                labels = TF.resize(labels, [height, width], InterpolationMode.NEAREST_EXACT)

        if spec.scale_range != (1.0, 1.0):
            scale = _uniform(rng, *spec.scale_range)
            _, height, width = image.shape
            size = [round(height * scale), round(width * scale)]
            image = TF.resize(image, size, InterpolationMode.BILINEAR, antialias=True)
            if resize_label:
                labels = TF.resize(labels, size, InterpolationMode.NEAREST_EXACT)

        if spec.image_rescale:
            draw = torch.rand((), generator=rng).item()
            for factor, probability in spec.image_rescale:
                if draw < probability:
                    _, height, width = image.shape
                    size = [round(height * factor), round(width * factor)]
                    image = TF.resize(image, size, InterpolationMode.BILINEAR, antialias=True)
                    break
                draw -= probability

        if spec.blur:
            image = _random_blur(image, rng)

        image = normalize(image)  # padding with 0 below is padding with the mean colour

        if spec.crop is not None:
            image, labels = _random_crop(image, labels, spec.crop, rng, spec.cat_max_ratio)

        if spec.mirror and torch.rand((), generator=rng).item() < 0.5:
            image = TF.horizontal_flip(image)
            labels = TF.horizontal_flip(labels) if labels is not None else None

        return image.contiguous(), labels[0].long() if labels is not None else None
