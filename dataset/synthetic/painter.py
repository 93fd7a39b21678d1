"""The painter, which draws every shape into the RGB image and, with the very same geometry, into
the label map, and the sprite, a flat frame facing the camera for objects drawn in metres."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from dataset.synthetic.domains import ID, SPREAD, Colour, Domain, Jitter
from dataset.synthetic.geometry import Camera


class Painter:
    """Draws shapes into an RGB image and, with identical geometry, into a label-id map."""

    def __init__(self, camera: Camera, domain: Domain, light: Sequence[float], sky: Jitter):
        self.camera, self.domain = camera, domain
        self.light = light  # per-channel gain of the scene's illumination (time of day, weather)
        self.horizon = (0.0, 0.0, 0.0)  # the haze colour; no haze at depth 0
        self.horizon = self.colour("sky", sky, 0.0)
        top = np.asarray(self.colour("sky_top", sky, 0.0))
        width, height = camera.size
        t = np.clip(np.arange(height) / max(camera.cy, 1.0), 0.0, 1.0)[:, None] ** 0.7
        rows = (top + t * (np.asarray(self.horizon) - top)).astype(np.uint8)
        self.image = Image.fromarray(
            np.ascontiguousarray(np.broadcast_to(rows[:, None], (height, width, 3)))
        )
        self.label = Image.new("L", camera.size, ID["sky"])
        self._rgb, self._ids = ImageDraw.Draw(self.image), ImageDraw.Draw(self.label)

    def colour(self, name: str, jitter: Jitter, depth: float, shade: float = 1.0) -> Colour:
        """An instance's colour: class mean, jitter, illumination, shading, then haze towards
        the horizon colour with depth (metres)."""
        d = self.domain
        gain = (1.0 + d.brightness_jitter * jitter[0]) * shade
        spread = d.colour_jitter * SPREAD.get(name, 1.0)
        w = d.haze * (1.0 - math.exp(-max(depth, 0.0) / d.haze_distance))
        return tuple(  # type: ignore[return-value]
            int(min(255.0, max(0.0, (1.0 - w) * (b * k * gain + spread * j * shade) + w * h)))
            for b, k, j, h in zip(d.colours[name], self.light, jitter[1:], self.horizon)
        )

    def colours(self, name: str, jitter: Jitter, depths, shades=1.0) -> np.ndarray:
        """(N, 3) colours of one instance at N depths with N (or one) shades."""
        shades = np.broadcast_to(shades, np.shape(depths))
        return np.array([self.colour(name, jitter, d, s) for d, s in zip(depths, shades)])

    def polygon(self, points: np.ndarray, label: int | None, rgb: Colour) -> None:
        """Fill a pixel polygon; ``label=None`` paints the image only (texture, markings)."""
        xy = points.ravel().tolist()
        self._rgb.polygon(xy, fill=rgb)
        if label is not None:
            self._ids.polygon(xy, fill=label)

    def ellipse(self, box: Sequence[float], label: int | None, rgb: Colour, width: int = 0):
        """Fill (or with ``width`` outline) the ellipse in ``box`` = (u0, v0, u1, v1)."""
        style = {"outline": rgb, "width": width} if width else {"fill": rgb}
        self._rgb.ellipse(box, **style)
        if label is not None:
            style = {"outline": label, "width": width} if width else {"fill": label}
            self._ids.ellipse(box, **style)

    def line(self, points: np.ndarray, label: int | None, rgb: Colour, width: int) -> None:
        """A polyline ``width`` pixels wide."""
        xy = points.ravel().tolist()
        self._rgb.line(xy, fill=rgb, width=width)
        if label is not None:
            self._ids.line(xy, fill=label, width=width)

    def fill(self, world: np.ndarray, label: int | None, rgb) -> None:
        """Project and fill one (4, 3) world rectangle, or those of (N, 4, 3) that are at least
        a pixel wide and tall and in view (``rgb`` then (N, 3))."""
        pixels = self.camera.project(world)
        if pixels.ndim == 2:
            self.polygon(pixels, label, rgb)
            return
        lo, hi = pixels.min(1), pixels.max(1)
        width, height = self.camera.size
        keep = (hi - lo >= (1.0, 1.5)).all(1) & (hi > 0).all(1) & (lo < (width, height)).all(1)
        for i in np.flatnonzero(keep):
            self.polygon(pixels[i], label, tuple(rgb[i].tolist()))

    def face(self, world: np.ndarray, name: str, jitter: Jitter, shade: float = 1.0) -> None:
        """A labelled (4, 3) face of class ``name``, coloured at its mean depth."""
        self.fill(world, ID[name], self.colour(name, jitter, float(world[:, 2].mean()), shade))

    def disc(self, world: np.ndarray, label: int, rgb: Colour) -> None:
        """Fill the ellipse inscribed in a projected world rectangle (a wheel)."""
        pixels = self.camera.project(world)
        self.ellipse([*pixels.min(0).tolist(), *pixels.max(0).tolist()], label, rgb)


class Sprite:
    """A flat drawing frame facing the camera: metres, origin on the ground at (x, z), y up;
    ``facing = -1`` mirrors it."""

    def __init__(self, painter: Painter, x: float, z: float, facing: float = 1.0) -> None:
        self.painter, self.depth, self.facing = painter, z, facing
        self.u, self.v = painter.camera.project(np.array([x, 0.0, z])).tolist()
        self.scale = painter.camera.focal / z  # pixels per metre

    def pixels(self, points: Sequence[Sequence[float]]) -> np.ndarray:
        a = np.asarray(points, dtype=np.float64)
        return np.stack(
            [self.u + self.facing * self.scale * a[:, 0], self.v - self.scale * a[:, 1]], 1
        )

    def polygon(self, points: Sequence[Sequence[float]], label: int | None, rgb: Colour) -> None:
        self.painter.polygon(self.pixels(points), label, rgb)

    def ellipse(
        self,
        cx: float,
        cy: float,
        rx: float,
        ry: float,
        label: int | None,
        rgb: Colour,
        ring: float = 0.0,
    ) -> None:
        """An ellipse, filled or (``ring`` metres thick) outlined."""
        u, v = self.pixels([(cx, cy)])[0].tolist()
        rx, ry = rx * self.scale, ry * self.scale
        width = max(1, round(ring * self.scale)) if ring else 0
        self.painter.ellipse((u - rx, v - ry, u + rx, v + ry), label, rgb, width)

    def line(
        self, points: Sequence[Sequence[float]], label: int, rgb: Colour, width: float
    ) -> None:
        """A polyline ``width`` metres wide (at least one pixel)."""
        self.painter.line(self.pixels(points), label, rgb, max(1, round(width * self.scale)))
