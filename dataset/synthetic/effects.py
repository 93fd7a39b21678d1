"""The target's photo effects: texture, lighting gradient, vignetting, exposure, white balance,
blur and sensor noise on a rendered image; and the night domain's darkness, lights and fog."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from dataset.synthetic.domains import ID, TEXTURE_LUT


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


def _glows(ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W) float32 light falling around the scene's lamps: headlights and tail lights on
    some car pixels, street lamps at some pole tops, the traffic lights' own glow."""
    height, width = ids.shape
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    glow = np.zeros((height, width), np.float32)
    for name, count, radius, strength in (("car", 4, 0.025, 0.9), ("light", 4, 0.015, 0.7),
                                          ("pole", 3, 0.04, 0.6)):  # fmt: skip
        rows, cols = np.nonzero(ids == ID[name])
        if name == "pole":  # lamps sit on the upper half of the poles
            upper = rows < np.percentile(rows, 50) if rows.size else rows
            rows, cols = rows[upper], cols[upper]
        if not rows.size:
            continue
        for k in rng.choice(rows.size, size=min(count, rows.size), replace=False):
            r = radius * width * float(rng.uniform(0.7, 1.4))
            glow += strength * np.exp(-((u - cols[k]) ** 2 + (v - rows[k]) ** 2) / (2 * r * r))
    return glow


def night(rgb: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A photographed scene at night in fog: underexposed and blue-shifted, lit by glows around
    its lamps, a fog veil densest at the horizon and brightened by the lights, and stronger
    sensor noise."""
    height, width = ids.shape
    img = (rgb.astype(np.float32) / 255.0) ** 1.2 * float(rng.uniform(0.25, 0.45))
    img *= np.asarray([0.8, 0.9, 1.15], np.float32) * (1.0 + rng.normal(0.0, 0.05, 3))
    glow = _glows(ids, rng)
    img += glow[..., None] * np.asarray([1.0, 0.85, 0.6], np.float32)
    rows = np.arange(height, dtype=np.float32)[:, None] / height
    horizon, density = float(rng.uniform(0.35, 0.5)), float(rng.uniform(0.2, 0.6))
    veil = density * np.exp(-(((rows - horizon) / 0.3) ** 2))  # (H, 1)
    fog = (0.1 + 0.5 * glow)[..., None] * np.asarray([0.85, 0.88, 0.95], np.float32)
    img = img * (1.0 - veil[..., None]) + veil[..., None] * fog
    noise = float(rng.uniform(0.02, 0.04))
    img += rng.standard_normal((height, width, 3), dtype=np.float32) * noise
    return (np.clip(img, 0.0, 1.0) * 255.0).round().astype(np.uint8)
