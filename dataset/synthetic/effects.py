"""The target's photo effects: texture, lighting gradient, vignetting, exposure, white balance,
blur and sensor noise on a rendered image."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from dataset.synthetic.domains import TEXTURE_LUT


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cell: int) -> np.ndarray:
    """(H, W) float32 noise of unit scale, correlated over about ``cell`` pixels."""
    width, height = size
    small = rng.standard_normal((max(2, height // cell), max(2, width // cell)), dtype=np.float32)
    return np.asarray(Image.fromarray(small).resize(size, Image.Resampling.BICUBIC))


def photograph(rgb: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera look: texture, lighting gradient, vignetting, exposure, white balance, blur, noise."""
    height, width = ids.shape
    size = (width, height)
    fine = 0.3 * rng.standard_normal((height, width), dtype=np.float32)
    light = 1.0 + TEXTURE_LUT[ids] * (fine + _smooth_noise(rng, size, 3))
    light += 0.05 * _smooth_noise(rng, size, 24)
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = u / width - 0.5, v / height - 0.5
    gx, gy = rng.uniform(-0.35, 0.35, 2)
    light *= 1.0 + gx * u + gy * v - float(rng.uniform(0.3, 0.9)) * (u * u + v * v)
    img = rgb.astype(np.float32) * light[..., None]
    mean = img.mean()
    img = (mean + float(rng.uniform(0.8, 1.05)) * (img - mean)) * float(rng.uniform(0.8, 1.05))
    img *= (1.0 + rng.normal(0.0, 0.04, 3)).astype(np.float32)
    blur = ImageFilter.GaussianBlur(float(rng.uniform(0.4, 0.8)))
    img = np.asarray(
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(blur), dtype=np.float32
    )
    img += rng.standard_normal((height, width, 3), dtype=np.float32) * float(rng.uniform(1.5, 3.5))
    return np.clip(img, 0, 255).astype(np.uint8)
