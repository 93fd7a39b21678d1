"""Procedural street scenes: the repository's built-in GTA5 -> Cityscapes benchmark.

Every image is a street seen from a car: a random layout (camera pitch and height, lanes,
sidewalks, grass strips, facades with windows, walls, fences, poles carrying traffic lights
and signs, trees, pedestrians, riders on bicycles and motorcycles, cars, trucks, buses and
sometimes a tram) is projected through a pinhole camera and painted back to front, with the
label map drawn from the very same polygons. Both domains sample layouts the same way; only
the appearance differs, the way game frames differ from camera frames:

- source (GTA5 layout): saturated game palette, flat colours, hard edges, bright even light,
  clear air, no noise;
- target (Cityscapes layout): greyer, shifted class colours (overcast sky, mauve road, olive
  vegetation, grey cars...), more haze, texture noise, a lighting gradient with vignetting, a
  slight blur, sensor noise and a random brightness, contrast and white balance per image.

Each image draws from its own ``numpy.random.Generator`` seeded with (seed, domain, split,
index): a file's bytes depend on those alone, never on the counts or the order.

    python -m dataset.synthetic --out data/synthetic --seed 0 --num-train 200 --num-val 60

writes ``<out>/GTA5/{images,labels}/00001.png ...`` (labels: palettised PNGs of Cityscapes
label ids), ``<out>/Cityscapes/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png``
with grey ``gtFine/.../*_gtFine_labelIds.png`` beside, and last ``<out>/synthetic.json`` with
the generation parameters, whose presence marks a complete dataset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dataset.labels import CLASS_NAMES, LABEL_IDS, PALETTE

try:
    from tqdm import tqdm
except ImportError:  # the progress bar is optional
    tqdm = None

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "synthetic.json"
TRAIN_CITIES = ("aachen", "bochum")
VAL_CITIES = ("frankfurt", "lindau", "munster")
CITYSCAPES_FRAME = 19  # the annotated frame of every Cityscapes snippet

ID = dict(zip(CLASS_NAMES, LABEL_IDS))  # class name -> Cityscapes label id
UNLABELED_ID, EGO_VEHICLE_ID, OUT_OF_ROI_ID, STATIC_ID = 0, 1, 3, 4  # ignored ids we draw

Colour = tuple[int, int, int]
Jitter = Sequence[float]  # (brightness, r, g, b) standard normals of one instance
_FLAT: Jitter = (0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; sizes are (W, H)."""

    seed: int = 0
    num_source: int = 200  # GTA5-layout images
    num_train: int = 200  # Cityscapes train images (labels written too: the oracle uses them)
    num_val: int = 60
    source_size: tuple[int, int] = (480, 264)
    target_size: tuple[int, int] = (512, 256)

    def __post_init__(self) -> None:
        for name in ("seed", "num_source", "num_train", "num_val"):
            if getattr(self, name) < 0:
                raise ValueError(f"SyntheticSpec.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("source_size", "target_size"):
            size = getattr(self, name)
            if len(size) != 2 or min(size) < 32:
                raise ValueError(f"SyntheticSpec.{name} must be (W, H) with both >= 32, got {size}")


# --------------------------------------------------------------------------- appearance


@dataclass(frozen=True)
class _Domain:
    """The appearance of one domain: class colours, their spread and the image formation."""

    colours: dict[str, Colour]  # mean colour of each class, plus parts ("window", "skin", ...)
    colour_jitter: float  # per-channel std of an instance's colour
    brightness_jitter: float  # relative std of an instance's brightness
    haze: float  # weight of the horizon colour at infinite distance
    haze_distance: float  # metres
    side_shade: float  # brightness of faces that run along the street
    photographic: bool  # texture noise, lighting, blur, sensor noise, exposure


_SOURCE = _Domain(
    colours={
        "road": (84, 84, 94), "sidewalk": (205, 182, 150), "building": (192, 128, 92),
        "wall": (170, 160, 110), "fence": (156, 104, 52), "pole": (128, 132, 146),
        "light": (48, 48, 36), "sign": (24, 92, 230), "vegetation": (38, 165, 44),
        "terrain": (150, 196, 64), "sky": (165, 210, 252), "person": (215, 52, 70),
        "rider": (250, 150, 20), "car": (30, 92, 220), "truck": (232, 232, 238),
        "bus": (252, 208, 28), "train": (210, 42, 42), "motorcycle": (36, 34, 48),
        "bicycle": (220, 36, 150), "sky_top": (52, 126, 242), "cloud": (250, 250, 255),
        "window": (70, 130, 200), "skin": (240, 190, 150), "trunk": (115, 70, 30),
        "lamp_red": (255, 40, 30), "lamp_amber": (255, 200, 0), "lamp_green": (30, 255, 90),
        "tyre": (22, 22, 26), "static": (40, 120, 60), "hood": (150, 20, 20),
    },
    colour_jitter=16.0,
    brightness_jitter=0.10,
    haze=0.25,
    haze_distance=260.0,
    side_shade=0.72,
    photographic=False,
)  # fmt: skip

_TARGET = _Domain(
    colours={
        "road": (104, 94, 104), "sidewalk": (164, 154, 146), "building": (140, 124, 112),
        "wall": (142, 138, 120), "fence": (120, 100, 80), "pole": (108, 110, 114),
        "light": (50, 50, 44), "sign": (70, 96, 150), "vegetation": (78, 112, 58),
        "terrain": (140, 150, 96), "sky": (188, 200, 214), "person": (120, 70, 80),
        "rider": (168, 128, 80), "car": (70, 90, 130), "truck": (196, 196, 196),
        "bus": (196, 170, 100), "train": (150, 74, 70), "motorcycle": (44, 42, 50),
        "bicycle": (140, 70, 110), "sky_top": (120, 145, 185), "cloud": (225, 228, 232),
        "window": (70, 86, 104), "skin": (190, 160, 140), "trunk": (88, 72, 56),
        "lamp_red": (190, 80, 70), "lamp_amber": (200, 170, 90), "lamp_green": (100, 190, 130),
        "tyre": (26, 26, 28), "static": (64, 90, 70), "hood": (48, 46, 50),
    },
    colour_jitter=9.0,
    brightness_jitter=0.15,
    haze=0.45,
    haze_distance=150.0,
    side_shade=0.86,
    photographic=True,
)  # fmt: skip

_DOMAINS = {"source": _SOURCE, "target": _TARGET}
_STREAMS = {("source", "all"): (0, 0), ("target", "train"): (1, 1), ("target", "val"): (1, 2)}

# Classes whose instances vary more than the rest (in both domains).
_SPREAD = {"building": 2.2, "car": 2.6, "person": 2.0, "rider": 1.6, "truck": 1.4, "sky": 0.6}

# Relative texture amplitude per class in the target domain (camera images are not flat).
_TEXTURE = {
    "road": 0.06, "sidewalk": 0.08, "building": 0.09, "wall": 0.1, "fence": 0.1,
    "pole": 0.05, "light": 0.04, "sign": 0.04, "vegetation": 0.24, "terrain": 0.16,
    "sky": 0.025, "person": 0.06, "rider": 0.06, "car": 0.05, "truck": 0.05, "bus": 0.05,
    "train": 0.05, "motorcycle": 0.06, "bicycle": 0.06,
}  # fmt: skip
_TEXTURE_LUT = np.full(256, 0.05, dtype=np.float32)
_TEXTURE_LUT[[ID[name] for name in _TEXTURE]] = list(_TEXTURE.values())


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Camera:
    """Pinhole camera at X = 0, looking along +Z; world Y points up from the ground."""

    size: tuple[int, int]  # (W, H)
    focal: float  # pixels
    cx: float
    cy: float  # the horizon row
    elevation: float  # metres above the ground

    def project(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) world points (Z > 0) -> (..., 2) pixel coordinates."""
        x, y, z = points[..., 0], points[..., 1], points[..., 2]
        return np.stack(
            [self.cx + self.focal * x / z, self.cy + self.focal * (self.elevation - y) / z], -1
        )


def _side(x: float, z0: float, z1: float, y0: float, y1: float) -> np.ndarray:
    """Rectangle in the vertical plane X = x (a face that runs along the street)."""
    return np.array([[x, y0, z0], [x, y0, z1], [x, y1, z1], [x, y1, z0]])


def _front(z: float, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """Rectangle in the vertical plane Z = z (a face towards the camera)."""
    return np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]])


def _flat(y: float, x0: float, x1: float, z0: float, z1: float) -> np.ndarray:
    """Rectangle in the horizontal plane Y = y (ground, roofs)."""
    return np.array([[x0, y, z0], [x1, y, z0], [x1, y, z1], [x0, y, z1]])


def _side_grid(x: float, z0: np.ndarray, z1: np.ndarray, y0: np.ndarray, y1: np.ndarray):
    """Many rectangles in the plane X = x at once: (N, 4, 3)."""
    xs = np.full_like(z0, x)
    return np.stack(
        [
            np.stack([xs, y0, z0], -1),
            np.stack([xs, y0, z1], -1),
            np.stack([xs, y1, z1], -1),
            np.stack([xs, y1, z0], -1),
        ],
        1,
    )


def _front_grid(z: float, x0: np.ndarray, x1: np.ndarray, y0: np.ndarray, y1: np.ndarray):
    """Many rectangles in the plane Z = z at once: (N, 4, 3)."""
    zs = np.full_like(x0, z)
    return np.stack(
        [
            np.stack([x0, y0, zs], -1),
            np.stack([x1, y0, zs], -1),
            np.stack([x1, y1, zs], -1),
            np.stack([x0, y1, zs], -1),
        ],
        1,
    )


class _Painter:
    """Draws shapes into an RGB image and, with identical geometry, into a label-id map."""

    def __init__(self, camera: _Camera, domain: _Domain, light: Sequence[float], sky_jitter: Jitter):
        self.camera = camera
        self.domain = domain
        self.light = light  # per-channel gain of the scene's illumination (time of day, weather)
        self.horizon = (0.0, 0.0, 0.0)  # colour() needs it; no haze at depth 0
        self.horizon = self.colour("sky", sky_jitter, 0.0)
        top = np.asarray(self.colour("sky_top", sky_jitter, 0.0), dtype=np.float32)
        width, height = camera.size
        t = np.clip(np.arange(height, dtype=np.float32) / max(camera.cy, 1.0), 0.0, 1.0) ** 0.7
        rows = top + t[:, None] * (np.asarray(self.horizon, dtype=np.float32) - top)
        sky = np.broadcast_to(rows[:, None, :], (height, width, 3)).astype(np.uint8)
        self.image = Image.fromarray(sky)
        self.label = Image.new("L", camera.size, ID["sky"])
        self._rgb = ImageDraw.Draw(self.image)
        self._ids = ImageDraw.Draw(self.label)

    def colour(self, name: str, jitter: Jitter, depth: float, shade: float = 1.0) -> Colour:
        """An instance's colour: class mean, jitter, shading, then haze towards the horizon."""
        d = self.domain
        gain = (1.0 + d.brightness_jitter * jitter[0]) * shade
        spread = d.colour_jitter * _SPREAD.get(name, 1.0)
        w = d.haze * (1.0 - math.exp(-max(depth, 0.0) / d.haze_distance))
        return tuple(  # type: ignore[return-value]
            int(min(255.0, max(0.0, (1.0 - w) * (b * gain * k + spread * j) + w * h)))
            for b, j, h, k in zip(d.colours[name], jitter[1:], self.horizon, self.light)
        )

    def polygon(self, points: np.ndarray, label: int | None, rgb: Colour) -> None:
        """Fill a pixel polygon; ``label=None`` paints the image only (texture, markings)."""
        xy = points.ravel().tolist()
        self._rgb.polygon(xy, fill=rgb)
        if label is not None:
            self._ids.polygon(xy, fill=label)

    def ellipse(self, box: Sequence[float], label: int | None, rgb: Colour, width: int = 0):
        """Fill (or, with ``width``, outline) the ellipse inside ``box`` = (u0, v0, u1, v1)."""
        if width:
            self._rgb.ellipse(box, outline=rgb, width=width)
            if label is not None:
                self._ids.ellipse(box, outline=label, width=width)
        else:
            self._rgb.ellipse(box, fill=rgb)
            if label is not None:
                self._ids.ellipse(box, fill=label)

    def line(self, points: np.ndarray, label: int | None, rgb: Colour, width: int) -> None:
        """A polyline ``width`` pixels wide."""
        xy = points.ravel().tolist()
        self._rgb.line(xy, fill=rgb, width=width)
        if label is not None:
            self._ids.line(xy, fill=label, width=width)

    def quad(self, world: np.ndarray, label: int | None, rgb: Colour) -> None:
        """Project and fill a planar world polygon (all Z > 0)."""
        self.polygon(self.camera.project(world), label, rgb)

    def quads(self, world: np.ndarray, label: int | None, rgbs: Sequence[Colour]) -> None:
        """Project (N, 4, 3) rectangles and fill those at least a pixel tall and wide."""
        pixels = self.camera.project(world)
        lo, hi = pixels.min(1), pixels.max(1)
        width, height = self.camera.size
        keep = (
            (hi[:, 0] - lo[:, 0] >= 1.0)
            & (hi[:, 1] - lo[:, 1] >= 1.5)
            & (hi[:, 0] > 0)
            & (lo[:, 0] < width)
            & (hi[:, 1] > 0)
            & (lo[:, 1] < height)
        )
        for i in np.flatnonzero(keep):
            self.polygon(pixels[i], label, rgbs[i])

    def box_ellipse(self, world: np.ndarray, label: int | None, rgb: Colour) -> None:
        """Fill the ellipse inscribed in the bounding box of a projected world rectangle."""
        pixels = self.camera.project(world)
        self.ellipse([*pixels.min(0).tolist(), *pixels.max(0).tolist()], label, rgb)


class _Sprite:
    """A flat drawing frame facing the camera: metres, origin on the ground at (x, z), y up.

    ``facing = -1`` mirrors the drawing left-right.
    """

    def __init__(self, painter: _Painter, x: float, z: float, facing: float = 1.0) -> None:
        self.painter = painter
        self.u, self.v = painter.camera.project(np.array([x, 0.0, z])).tolist()
        self.scale = painter.camera.focal / z  # pixels per metre
        self.facing = facing
        self.depth = z

    def pixels(self, points: Sequence[Sequence[float]]) -> np.ndarray:
        """(N, 2) local metres -> (N, 2) pixels."""
        a = np.asarray(points, dtype=np.float64)
        return np.stack([self.u + self.facing * self.scale * a[:, 0], self.v - self.scale * a[:, 1]], 1)

    def polygon(self, points: Sequence[Sequence[float]], label: int | None, rgb: Colour) -> None:
        """Fill a polygon given in local metres."""
        self.painter.polygon(self.pixels(points), label, rgb)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, label: int | None, rgb: Colour,
                ring: float = 0.0) -> None:  # fmt: skip
        """Fill an ellipse (or draw a ring ``ring`` metres thick) given in local metres."""
        u, v = self.pixels([(cx, cy)])[0].tolist()
        rx, ry = rx * self.scale, ry * self.scale
        width = max(1, round(ring * self.scale)) if ring else 0
        self.painter.ellipse((u - rx, v - ry, u + rx, v + ry), label, rgb, width)

    def line(self, points: Sequence[Sequence[float]], label: int | None, rgb: Colour,
             width: float) -> None:  # fmt: skip
        """A polyline ``width`` metres wide (at least one pixel)."""
        self.painter.line(self.pixels(points), label, rgb, max(1, round(width * self.scale)))


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class _Street:
    """Lateral layout; per-side tuples are (left, right) distances from the camera's X = 0."""

    lanes: tuple[tuple[float, int], ...]  # (centre X, +1 driving away / -1 oncoming)
    lane_width: float
    centre: float  # X of the line between the two directions
    edge: tuple[float, float]  # road edge
    parking: tuple[bool, bool]  # a parking strip inside the road edge
    walk: tuple[float, float]  # outer edge of the sidewalk
    terrain: tuple[bool, bool]  # a grass strip between sidewalk and buildings
    building: tuple[float, float]  # facade line
    end: float  # Z where the facades stop
    far: float  # Z of the distant row that closes the view


_SIDES = ((0, -1.0), (1, 1.0))  # (index into per-side tuples, sign of X)
_Draw = Callable[[], None]


def _sample_street(rng: np.random.Generator) -> _Street:
    lane = float(rng.uniform(2.9, 3.6))
    n_away, n_oncoming = (int(n) for n in rng.integers(1, 3, 2))
    own = int(rng.integers(0, n_away))  # the camera's lane, counted from the centre line
    centre = -lane * (own + 0.5) + float(rng.normal(0.0, 0.3))
    lanes = tuple((centre + lane * (i + 0.5), 1) for i in range(n_away))
    lanes += tuple((centre - lane * (i + 0.5), -1) for i in range(n_oncoming))
    parking = tuple(bool(p) for p in rng.random(2) < 0.4)
    edge = (
        -(centre - lane * n_oncoming - 2.3 * parking[0]),
        centre + lane * n_away + 2.3 * parking[1],
    )
    walk = tuple(e + float(w) for e, w in zip(edge, rng.uniform(2.0, 4.5, 2)))
    terrain = tuple(bool(t) for t in rng.random(2) < 0.6)
    grass = rng.uniform(1.5, 4.5, 2)
    building = tuple(w + (float(g) if t else 0.0) + float(rng.uniform(0.0, 1.0))
                     for w, g, t in zip(walk, grass, terrain))  # fmt: skip
    end = float(rng.uniform(90.0, 220.0))
    return _Street(lanes, lane, centre, edge, parking, walk, terrain, building, end,
                   end + float(rng.uniform(10.0, 60.0)))  # fmt: skip


def _sample_camera(rng: np.random.Generator, size: tuple[int, int]) -> _Camera:
    width, height = size
    return _Camera(
        size=size,
        focal=float(rng.uniform(0.68, 0.82)) * width,
        cx=width * (0.5 + float(rng.uniform(-0.06, 0.06))),
        cy=height * float(rng.uniform(0.38, 0.47)),
        elevation=float(rng.uniform(1.35, 1.8)),
    )


def _jitter(rng: np.random.Generator) -> list[float]:
    return rng.standard_normal(4).tolist()


# --------------------------------------------------------------------------- background


def _draw_clouds(p: _Painter, rng: np.random.Generator) -> None:
    width, _ = p.camera.size
    for _ in range(int(rng.integers(0, 5))):
        u, v = rng.uniform(0, width), rng.uniform(0.05, 0.8) * p.camera.cy
        colour = p.colour("cloud", _jitter(rng), 0.0)
        for _ in range(int(rng.integers(2, 5))):
            du, dv = rng.normal(0, 0.05 * width), rng.normal(0, 0.01 * width)
            rx, ry = rng.uniform(0.04, 0.1) * width, rng.uniform(0.01, 0.025) * width
            p.ellipse((u + du - rx, v + dv - ry, u + du + rx, v + dv + ry), ID["sky"], colour)


def _draw_ground(p: _Painter, rng: np.random.Generator, st: _Street) -> None:
    """Grass beyond everything, road, sidewalks with curbs, grass strips, lane markings."""
    near = 0.4
    p.quad(_flat(0.0, -600.0, 600.0, near, 2000.0), ID["terrain"], p.colour("terrain", _jitter(rng), 300.0))
    road_jit = _jitter(rng)
    road = p.colour("road", road_jit, 20.0)
    p.quad(_flat(0.0, -st.edge[0], st.edge[1], near, st.far), ID["road"], road)
    for i, sign in _SIDES:
        walk_jit = _jitter(rng)
        inner, outer = sorted((sign * st.building[i], sign * st.edge[i]))
        p.quad(_flat(0.0, inner, outer, near, st.end), ID["sidewalk"], p.colour("sidewalk", walk_jit, 20.0))
        if st.terrain[i]:
            inner, outer = sorted((sign * st.building[i], sign * st.walk[i]))
            p.quad(_flat(0.0, inner, outer, near, st.end), ID["terrain"],
                   p.colour("terrain", _jitter(rng), 20.0))  # fmt: skip
        curb = p.colour("sidewalk", walk_jit, 20.0, p.domain.side_shade)
        p.quad(_side(sign * st.edge[i], near, st.end, 0.0, 0.15), ID["sidewalk"], curb)
    mark = p.colour("road", road_jit, 20.0, 1.9)
    # Dashed lines between lanes, a solid line at each side of the carriageway.
    dividers = sorted(x - st.lane_width / 2 for x, _ in st.lanes)[1:]
    phase = rng.uniform(0.0, 9.0)
    z0 = np.arange(phase, min(st.end, 150.0), 9.0) + 1.0
    for x in dividers:
        width = 0.15 if abs(x - st.centre) > 0.1 else 0.22
        world = np.stack([_flat(0.0, x - width / 2, x + width / 2, a, a + 3.0) for a in z0])
        p.quads(world, ID["road"], [mark] * len(world))
    for i, sign in _SIDES:
        x = sign * (st.edge[i] - (2.3 if st.parking[i] else 0.3))
        p.quad(_flat(0.0, x - 0.07, x + 0.07, near, st.end), ID["road"], mark)
    if rng.random() < 0.35:  # zebra crossing
        zc = float(rng.uniform(9.0, 25.0))
        xs = np.arange(-st.edge[0] + 0.5, st.edge[1] - 0.5, 1.1)
        world = np.stack([_flat(0.0, x, x + 0.55, zc, zc + 3.0) for x in xs])
        p.quads(world, ID["road"], [mark] * len(world))


def _draw_skyline(p: _Painter, rng: np.random.Generator, st: _Street) -> None:
    """A row of distant buildings and trees across the whole view at the end of the street."""
    blocks = []
    x = -float(rng.uniform(150.0, 200.0))
    while x < 200.0:
        w = float(rng.uniform(8.0, 30.0))
        blocks.append((st.far + float(rng.uniform(0.0, 30.0)), x, x + w, float(rng.uniform(4.0, 32.0)),
                       float(rng.random()), _jitter(rng)))  # fmt: skip
        x += w
    for z, x0, x1, h, kind, jit in sorted(blocks, reverse=True):
        if kind < 0.12:
            continue  # a gap: sky
        if kind < 0.35:
            s = _Sprite(p, (x0 + x1) / 2, z)
            for k in range(4):
                r = h / 3 * (0.7 + 0.1 * k)
                colour = p.colour("vegetation", jit, z, 0.85 + 0.08 * k)
                s.ellipse((x1 - x0) * (k / 3 - 0.5) * 0.7, r, (x1 - x0) / 3, r, ID["vegetation"], colour)
            continue
        p.quad(_front(z, x0, x1, 0.0, h), ID["building"], p.colour("building", jit, z))
        _windows_front(p, rng, z, x0, x1, h, jit)


def _windows_front(p: _Painter, rng: np.random.Generator, z: float, x0: float, x1: float,
                   h: float, jit: Jitter) -> None:  # fmt: skip
    step = float(rng.uniform(2.5, 4.0))
    xs, ys = np.arange(x0 + 1.0, x1 - 1.0, step), np.arange(3.0, h - 1.5, 3.2)
    if not len(xs) or not len(ys):
        return
    gx, gy = (a.ravel() for a in np.meshgrid(xs, ys))
    world = _front_grid(z, gx, gx + 0.5 * step, gy, gy + 1.5)
    shades = rng.uniform(0.7, 1.2, len(gx))
    p.quads(world, None, [p.colour("window", jit, z, s) for s in shades])


def _draw_facades(p: _Painter, rng: np.random.Generator, st: _Street) -> None:
    """Building blocks along both sides, drawn far to near; gaps hold hedges or walls."""
    for i, sign in _SIDES:
        x = sign * st.building[i]
        segments = []
        z = float(rng.uniform(0.4, 3.0))
        while z < st.end:
            z1 = min(z + float(rng.uniform(8.0, 28.0)), st.end)
            segments.append((z, z1, float(rng.uniform(5.0, 24.0)), float(rng.random()), _jitter(rng)))
            z = z1
        for z0, z1, h, kind, jit in reversed(segments):
            depth = (z0 + z1) / 2
            if kind < 0.1:
                p.quad(_side(x, z0, z1, 0.0, 2.5 * h / 24 + 1.0), ID["vegetation"],
                       p.colour("vegetation", jit, depth, 0.9))  # fmt: skip
                continue
            if kind < 0.16:
                p.quad(_side(x, z0, z1, 0.0, 2.0), ID["wall"], p.colour("wall", jit, depth, p.domain.side_shade))
                continue
            colour = p.colour("building", jit, depth)
            p.quad(_front(z0, x, x + sign * 15.0, 0.0, h), ID["building"], colour)
            p.quad(_side(x, z0, z1, 0.0, h), ID["building"], p.colour("building", jit, depth, p.domain.side_shade))
            step = float(rng.uniform(2.5, 4.0))
            zs, ys = np.arange(z0 + 1.0, z1 - 1.5, step), np.arange(3.2, h - 1.2, 3.2)
            if len(zs) and len(ys):
                gz, gy = (a.ravel() for a in np.meshgrid(zs, ys))
                shades = rng.uniform(0.65, 1.15, len(gz)) * p.domain.side_shade
                world = _side_grid(x * 0.999, gz, gz + 0.5 * step, gy, gy + 1.6)
                p.quads(world, None, [p.colour("window", jit, float(zz), s) for zz, s in zip(gz, shades)])
            if rng.random() < 0.5:  # shop front on the ground floor
                p.quad(_side(x * 0.999, z0 + 0.5, z1 - 0.5, 0.3, 2.6), None,
                       p.colour("window", jit, depth, 0.8 * p.domain.side_shade))  # fmt: skip


def _draw_walls(p: _Painter, rng: np.random.Generator, st: _Street) -> None:
    """Garden walls in front of the facades."""
    for i, sign in _SIDES:
        for _ in range(int(rng.random() < 0.55) + int(rng.random() < 0.2)):
            x = sign * (st.building[i] - 0.3)
            z0 = float(rng.uniform(3.0, 50.0))
            z1, h, jit = z0 + float(rng.uniform(6.0, 28.0)), float(rng.uniform(0.9, 3.0)), _jitter(rng)
            depth = (z0 + z1) / 2
            p.quad(_side(x, z0, z1, 0.0, h), ID["wall"], p.colour("wall", jit, depth, p.domain.side_shade))
            p.quad(_flat(h, x, x + sign * 0.4, z0, z1), ID["wall"], p.colour("wall", jit, depth, 1.1))
            ys = np.arange(0.5, h - 0.2, 0.5)
            seams = _side_grid(x * 0.999, np.full_like(ys, z0), np.full_like(ys, z1), ys, ys + 0.06)
            p.quads(seams, None, [p.colour("wall", jit, depth, 0.6)] * len(ys))


def _draw_fences(p: _Painter, rng: np.random.Generator, st: _Street) -> None:
    """Fences along the outer sidewalk edge: a slatted panel with a top rail."""
    for i, sign in _SIDES:
        if rng.random() >= 0.5:
            continue
        x = sign * st.walk[i]
        z0 = float(rng.uniform(3.0, 40.0))
        z1, h, jit = z0 + float(rng.uniform(6.0, 30.0)), float(rng.uniform(0.9, 1.8)), _jitter(rng)
        depth = (z0 + z1) / 2
        p.quad(_side(x, z0, z1, 0.0, h), ID["fence"], p.colour("fence", jit, depth, p.domain.side_shade))
        zs = np.arange(z0 + 0.15, z1, 0.3)
        slats = _side_grid(x * 0.999, zs, zs + 0.06, np.zeros_like(zs), np.full_like(zs, h))
        p.quads(slats, None, [p.colour("fence", jit, float(z), 0.55) for z in zs])
        p.quad(_side(x * 0.998, z0, z1, h - 0.12, h), None, p.colour("fence", jit, depth, 1.15))


# --------------------------------------------------------------------------- objects


def _tree(p: _Painter, rng: np.random.Generator, x: float, z: float, bush: bool) -> _Draw:
    jit, trunk_jit = _jitter(rng), _jitter(rng)
    height = float(rng.uniform(1.0, 1.8) if bush else rng.uniform(4.5, 10.0))
    radius = float(rng.uniform(0.6, 1.1) if bush else rng.uniform(1.4, 3.2))
    blobs = rng.uniform(-1.0, 1.0, (int(rng.integers(4, 8)), 2)).tolist()
    sizes = rng.uniform(0.55, 0.9, len(blobs)).tolist()
    shades = rng.uniform(0.8, 1.15, len(blobs)).tolist()

    def draw() -> None:
        s = _Sprite(p, x, z)
        label = ID["vegetation"]
        if not bush:
            w = radius * 0.12
            s.polygon([(-w, 0), (w, 0), (w * 0.7, height - radius), (-w * 0.7, height - radius)],
                      label, p.colour("trunk", trunk_jit, z))  # fmt: skip
        cy = radius * 0.8 if bush else height - radius
        for (dx, dy), size, shade in zip(blobs, sizes, shades):
            r = radius * size
            s.ellipse(dx * radius * 0.6, cy + dy * radius * 0.4, r, r * 0.9, label,
                      p.colour("vegetation", jit, z, shade))  # fmt: skip

    return draw


def _pole(p: _Painter, rng: np.random.Generator, x: float, z: float, road_dir: float) -> _Draw:
    """A pole carrying a traffic light (maybe on an arm over the road), a sign, or a lamp."""
    kind = rng.choice(["light", "sign", "lamp"], p=[0.4, 0.4, 0.2])
    jit, part_jit = _jitter(rng), _jitter(rng)
    height = float(rng.uniform(2.6, 3.6) if kind == "sign" else rng.uniform(3.4, 4.4))
    if kind == "lamp":
        height = float(rng.uniform(6.0, 9.0))
    arm = float(rng.uniform(2.5, 5.0)) if kind == "lamp" or (kind == "light" and rng.random() < 0.35) else 0.0
    lit = int(rng.integers(0, 3))
    back = kind == "light" and rng.random() < 0.25
    extra_sign = kind == "light" and rng.random() < 0.3
    shape = int(rng.integers(0, 4))

    def draw() -> None:
        s = _Sprite(p, x, z, road_dir)
        pole = p.colour("pole", jit, z)
        s.polygon([(-0.08, 0), (0.08, 0), (0.07, height), (-0.07, height)], ID["pole"], pole)
        if arm:
            s.polygon([(0, height - 0.12), (arm, height - 0.12), (arm, height), (0, height)], ID["pole"], pole)
        if kind == "lamp":
            s.ellipse(arm, height - 0.1, 0.4, 0.12, ID["pole"], p.colour("pole", jit, z, 1.2))
        if kind == "light":
            for cx, top in ((0.0, height), (arm, height - 0.1)) if arm else ((0.0, height),):
                _traffic_light(p, s, cx, top, part_jit, lit, back)
        if kind == "sign" or extra_sign:
            _sign(p, s, height - (0.5 if kind == "sign" else 1.6), shape, part_jit)

    return draw


def _traffic_light(p: _Painter, s: _Sprite, cx: float, top: float, jit: Jitter, lit: int,
                   back: bool) -> None:  # fmt: skip
    label = ID["light"]
    s.polygon([(cx - 0.19, top - 1.0), (cx + 0.19, top - 1.0), (cx + 0.19, top), (cx - 0.19, top)],
              label, p.colour("light", jit, s.depth))  # fmt: skip
    if back:
        return
    for k, name in enumerate(("lamp_red", "lamp_amber", "lamp_green")):
        shade = 1.0 if k == lit else 0.35
        s.ellipse(cx, top - 0.18 - 0.32 * k, 0.11, 0.11, label, p.colour(name, _FLAT, s.depth, shade))


def _sign(p: _Painter, s: _Sprite, cy: float, shape: int, jit: Jitter) -> None:
    """A traffic sign: a plate of the sign colour around a lighter symbol."""
    label, r = ID["sign"], 0.38
    plate, inner = p.colour("sign", jit, s.depth), p.colour("sign", jit, s.depth, 1.8)
    if shape == 0:
        s.ellipse(0.0, cy, r, r, label, plate)
        s.ellipse(0.0, cy, r * 0.6, r * 0.6, label, inner)
        return
    outline = {
        1: [(-r, -r), (r, -r), (r, r), (-r, r)],
        2: [(-r, -r * 0.8), (r, -r * 0.8), (0, r)],
        3: [(0, -r * 1.2), (r * 1.2, 0), (0, r * 1.2), (-r * 1.2, 0)],
    }[shape]
    s.polygon([(x, cy + y) for x, y in outline], label, plate)
    s.polygon([(x * 0.55, cy + y * 0.55) for x, y in outline], label, inner)


def _person_shapes(h: float, stride: float) -> dict[str, list[tuple[float, float]]]:
    """A standing pedestrian, facing the camera, ``h`` metres tall."""
    return {
        "legs_l": [(-0.1 * h, 0.5 * h), (-0.01 * h, 0.5 * h), (-0.02 * h + stride, 0), (-0.08 * h + stride, 0)],
        "legs_r": [(0.01 * h, 0.5 * h), (0.1 * h, 0.5 * h), (0.08 * h - stride, 0), (0.02 * h - stride, 0)],
        "torso": [(-0.11 * h, 0.48 * h), (0.11 * h, 0.48 * h), (0.13 * h, 0.82 * h), (-0.13 * h, 0.82 * h)],
        "arm_l": [(-0.17 * h, 0.8 * h), (-0.12 * h, 0.8 * h), (-0.14 * h, 0.47 * h), (-0.18 * h, 0.47 * h)],
        "arm_r": [(0.12 * h, 0.8 * h), (0.17 * h, 0.8 * h), (0.18 * h, 0.47 * h), (0.14 * h, 0.47 * h)],
    }  # fmt: skip


def _person(p: _Painter, rng: np.random.Generator, x: float, z: float) -> _Draw:
    h = float(rng.uniform(1.55, 1.95))
    stride = float(rng.uniform(-0.06, 0.06)) * h
    top, legs, skin = _jitter(rng), _jitter(rng), _jitter(rng)

    def draw() -> None:
        s = _Sprite(p, x, z)
        label = ID["person"]
        shapes = _person_shapes(h, stride)
        trousers = p.colour("person", legs, z, 0.55)
        shirt = p.colour("person", top, z)
        for part, colour in (("legs_l", trousers), ("legs_r", trousers), ("arm_l", shirt), ("arm_r", shirt)):
            s.polygon(shapes[part], label, colour)
        s.polygon(shapes["torso"], label, shirt)
        s.ellipse(0.0, 0.92 * h, 0.065 * h, 0.08 * h, label, p.colour("skin", skin, z))

    return draw


def _bicycle(p: _Painter, s: _Sprite, jit: Jitter) -> None:
    """A bicycle seen from the side, front wheel towards +x."""
    label, r = ID["bicycle"], 0.34
    frame, tyre = p.colour("bicycle", jit, s.depth), p.colour("tyre", jit, s.depth)
    for cx in (-0.52, 0.52):
        s.ellipse(cx, r, r, r, label, tyre, ring=0.06)
    s.line([(-0.52, r), (0.0, 0.3), (-0.12, 0.86), (-0.52, r)], label, frame, 0.05)
    s.line([(0.0, 0.3), (0.42, 0.86), (0.52, r)], label, frame, 0.05)
    s.line([(-0.12, 0.86), (0.42, 0.88), (0.38, 1.02), (0.28, 1.02)], label, frame, 0.04)
    s.polygon([(-0.25, 0.88), (0.0, 0.88), (0.0, 0.94), (-0.25, 0.94)], label, tyre)


def _motorcycle(p: _Painter, s: _Sprite, jit: Jitter) -> None:
    """A motorcycle seen from the side, front wheel towards +x."""
    label, r = ID["motorcycle"], 0.32
    body, tyre = p.colour("motorcycle", jit, s.depth), p.colour("tyre", jit, s.depth)
    for cx in (-0.72, 0.7):
        s.ellipse(cx, r, r, r, label, tyre)
        s.ellipse(cx, r, r * 0.45, r * 0.45, label, p.colour("motorcycle", jit, s.depth, 1.8))
    s.line([(0.7, r), (0.52, 1.08)], label, body, 0.07)
    s.polygon([(-0.95, 0.62), (-0.35, 0.58), (-0.2, 0.3), (0.3, 0.3), (0.58, 0.72), (0.62, 0.98),
               (0.38, 1.05), (0.15, 0.92), (-0.35, 0.86), (-0.95, 0.82)], label, body)  # fmt: skip
    s.line([(-0.2, 0.4), (-0.9, 0.45)], label, p.colour("motorcycle", jit, s.depth, 2.2), 0.06)


def _rider_shapes(moto: bool) -> dict[str, list[tuple[float, float]]]:
    """Seated rider (side view, facing +x): hip, knee, foot, shoulder, hand and head centre."""
    if moto:
        return {"leg": [(-0.25, 0.95), (0.18, 0.82), (0.02, 0.42)], "torso": [(-0.25, 0.95), (0.12, 1.5)],
                "arm": [(0.12, 1.45), (0.5, 1.08)], "head": [(0.2, 1.66)]}  # fmt: skip
    return {"leg": [(-0.12, 0.95), (0.14, 0.66), (0.04, 0.26)], "torso": [(-0.12, 0.95), (0.18, 1.48)],
            "arm": [(0.18, 1.44), (0.32, 1.02)], "head": [(0.26, 1.64)]}  # fmt: skip


def _rider(p: _Painter, rng: np.random.Generator, x: float, z: float, moto: bool,
           ridden: bool) -> _Draw:  # fmt: skip
    """A bicycle or motorcycle seen from the side, with its rider or parked."""
    facing = 1.0 if rng.random() < 0.5 else -1.0
    vehicle, top, legs, skin = _jitter(rng), _jitter(rng), _jitter(rng), _jitter(rng)

    def draw() -> None:
        s = _Sprite(p, x, z, facing)
        (_motorcycle if moto else _bicycle)(p, s, vehicle)
        if not ridden:
            return
        label, shapes = ID["rider"], _rider_shapes(moto)
        s.line(shapes["leg"], label, p.colour("rider", legs, z, 0.55), 0.15)
        s.line(shapes["torso"], label, p.colour("rider", top, z), 0.34)
        s.line(shapes["arm"], label, p.colour("rider", top, z, 0.9), 0.1)
        (hx, hy), = shapes["head"]  # fmt: skip
        head = p.colour("rider", top, z, 0.4) if moto else p.colour("skin", skin, z)
        s.ellipse(hx, hy, 0.14 if moto else 0.11, 0.14 if moto else 0.13, label, head)

    return draw


def _visible_side(x0: float, x1: float) -> float | None:
    """X of the long face of a box [x0, x1] that the camera at X = 0 sees, if any."""
    return x0 if x0 > 0 else x1 if x1 < 0 else None


def _box(p: _Painter, x0: float, x1: float, y0: float, y1: float, z0: float, z1: float,
         name: str, jit: Jitter) -> float | None:  # fmt: skip
    """Draw the visible faces of an axis-aligned box; returns the X of its visible long face."""
    label, depth = ID[name], (z0 + z1) / 2
    if y1 < p.camera.elevation:
        p.quad(_flat(y1, x0, x1, z0, z1), label, p.colour(name, jit, depth, 1.12))
    sx = _visible_side(x0, x1)
    if sx is not None:
        p.quad(_side(sx, z0, z1, y0, y1), label, p.colour(name, jit, depth, p.domain.side_shade))
    p.quad(_front(z0, x0, x1, y0, y1), label, p.colour(name, jit, z0))
    return sx


def _window_band(p: _Painter, name: str, jit: Jitter, sx: float | None, z0: float, z1: float,
                 y0: float, y1: float, pitch: float) -> None:  # fmt: skip
    """Side windows of a bus or tram: a row of dark panes along the visible long face."""
    if sx is None:
        return
    zs = np.arange(z0 + 0.4, z1 - pitch * 0.6, pitch)
    world = _side_grid(sx * 0.999, zs, zs + pitch * 0.8, np.full_like(zs, y0), np.full_like(zs, y1))
    p.quads(world, ID[name], [p.colour("window", jit, float(z), p.domain.side_shade) for z in zs])


def _wheels(p: _Painter, name: str, sx: float | None, x0: float, x1: float, z0: float,
            z1: float, r: float) -> None:  # fmt: skip
    """Tyres under a vehicle: two seen under the near face, and the long face's ellipses."""
    label, tyre = ID[name], p.colour("tyre", _FLAT, z0)
    for a, b in ((x0 + 0.05, x0 + 0.35), (x1 - 0.35, x1 - 0.05)):
        p.quad(_front(z0 + 0.6, a, b, 0.0, r * 1.2), label, tyre)
    if sx is not None:
        for zc in (z0 + 0.9, z1 - 0.9):
            p.box_ellipse(_side(sx, zc - r, zc + r, 0.0, 2 * r), label, tyre)


def _vehicle(p: _Painter, rng: np.random.Generator, kind: str, x: float, z: float, length: float,
             direction: int) -> _Draw:  # fmt: skip
    """A car, truck, bus or tram along the street; ``direction`` -1 shows its front."""
    jit, cargo_jit = _jitter(rng), _jitter(rng)
    width = {"car": float(rng.uniform(1.7, 1.95)), "truck": 2.45, "bus": 2.5, "train": 2.65}[kind]
    x0, x1, z1 = x - width / 2, x + width / 2, z + length

    def draw() -> None:
        p.quad(_flat(0.0, x0 - 0.15, x1 + 0.15, z - 0.3, z1 + 0.2), None,
               p.colour("road", _FLAT, z, 0.35))  # fmt: skip
        glass = p.colour("window", jit, z, 0.8)
        label = ID[kind]
        if kind == "car":
            sx = _visible_side(x0, x1)
            _wheels(p, "car", sx, x0, x1, z, z1, 0.33)
            _box(p, x0, x1, 0.3, 1.0, z, z1, "car", jit)
            c0, c1 = (z + 0.28 * length, z + 0.75 * length) if direction > 0 else (z + 0.25 * length, z + 0.72 * length)
            csx = _box(p, x0 + 0.12, x1 - 0.12, 1.0, 1.45, c0, c1, "car", jit)
            p.quad(_front(c0 - 0.01, x0 + 0.22, x1 - 0.22, 1.04, 1.4), label, glass)
            if csx is not None:
                p.quad(_side(csx * 0.999, c0 + 0.15, c1 - 0.15, 1.04, 1.4), label, glass)
            lamp = "lamp_red" if direction > 0 else "lamp_amber"
            for a in (x0 + 0.08, x1 - 0.38):
                p.quad(_front(z - 0.01, a, a + 0.3, 0.72, 0.88), label, p.colour(lamp, _FLAT, z, 0.9))
        elif kind == "truck":
            sx = _visible_side(x0, x1)
            _wheels(p, "truck", sx, x0, x1, z, z1, 0.5)
            cab, box = (z1 - 2.2, z1), (z, z1 - 2.4)
            if direction < 0:
                cab, box = (z, z + 2.2), (z + 2.4, z1)
            parts = sorted([(cab, 0.5, 2.9, jit), (box, 0.8, 3.7, cargo_jit)], reverse=True)
            for (a, b), y0, y1, part_jit in parts:
                _box(p, x0, x1, y0, y1, a, b, "truck", part_jit)
            if direction < 0:
                p.quad(_front(z - 0.01, x0 + 0.15, x1 - 0.15, 1.6, 2.6), label, glass)
        else:
            top = 3.1 if kind == "bus" else 3.5
            sx = _visible_side(x0, x1)
            _wheels(p, kind, sx, x0, x1, z, z1, 0.48)
            _box(p, x0, x1, 0.3, top, z, z1, kind, jit)
            _window_band(p, kind, jit, sx, z, z1, 1.3, top - 0.6, 1.5 if kind == "bus" else 2.0)
            y0 = 1.1 if direction < 0 else 1.8
            p.quad(_front(z - 0.01, x0 + 0.15, x1 - 0.15, y0, top - 0.3), label, glass)
            if kind == "train" and sx is not None:
                joints = np.arange(z + 8.0, z1 - 1.0, 8.0)
                world = _side_grid(sx * 0.998, joints, joints + 0.35, np.full_like(joints, 0.3), np.full_like(joints, top))
                p.quads(world, label, [p.colour("tyre", _FLAT, float(j)) for j in joints])

    return draw


def _static(p: _Painter, rng: np.random.Generator, x: float, z: float) -> _Draw:
    """A bin or utility box: Cityscapes' ignored 'static' class."""
    jit, w, h = _jitter(rng), float(rng.uniform(0.5, 1.0)), float(rng.uniform(0.8, 1.4))

    def draw() -> None:
        _Sprite(p, x, z).polygon([(-w / 2, 0), (w / 2, 0), (w / 2, h), (-w / 2, h)], STATIC_ID,
                                 p.colour("static", jit, z))  # fmt: skip

    return draw


def _place(rng: np.random.Generator, occupied: list[tuple[int, float, float]], lanes: int,
           length: float, z_min: float, z_max: float) -> tuple[int, float] | None:  # fmt: skip
    """A free (lane, Z) for a vehicle of ``length``, or None after a few tries."""
    for _ in range(8):
        lane, z = int(rng.integers(0, lanes)), float(rng.uniform(z_min, z_max))
        if all(o != lane or z + length + 2.0 < a or z > b + 2.0 for o, a, b in occupied):
            occupied.append((lane, z, z + length))
            return lane, z
    return None


def _objects(p: _Painter, rng: np.random.Generator, st: _Street) -> list[tuple[float, _Draw]]:
    """Everything standing on the sidewalks and the road, as (depth, draw) pairs."""
    items: list[tuple[float, _Draw]] = []
    for i, sign in _SIDES:
        edge, walk = st.edge[i], st.walk[i]
        toward_road = -sign
        for _ in range(1 + int(rng.poisson(1.4))):
            z = float(rng.uniform(4.0, 70.0))
            items.append((z, _pole(p, rng, sign * (edge + float(rng.uniform(0.3, 0.7))), z, toward_road)))
        if not st.terrain[i] and rng.random() < 0.6:
            for _ in range(int(rng.integers(1, 4))):
                z = float(rng.uniform(5.0, 80.0))
                items.append((z, _tree(p, rng, sign * (edge + 0.75 * (walk - edge)), z, False)))
        if rng.random() < 0.4:
            z = float(rng.uniform(4.0, 40.0))
            items.append((z, _static(p, rng, sign * (walk - 0.5), z)))
        for _ in range(int(rng.poisson(0.5))):  # parked two-wheelers
            z = float(rng.uniform(4.0, 35.0))
            items.append((z, _rider(p, rng, sign * (edge + 0.9), z, bool(rng.random() < 0.4), False)))
    for _ in range(int(rng.poisson(3.5))):
        i, sign = _SIDES[int(rng.integers(0, 2))]
        if rng.random() < 0.8:
            x = sign * float(rng.uniform(st.edge[i] + 0.4, st.walk[i] - 0.3))
            z = float(rng.uniform(3.5, 60.0))
        else:  # crossing the road
            x, z = float(rng.uniform(-st.edge[0], st.edge[1])), float(rng.uniform(7.0, 35.0))
        items.append((z, _person(p, rng, x, z)))
    for _ in range(int(rng.poisson(1.6))):
        lane_x, _ = st.lanes[int(rng.integers(0, len(st.lanes)))]
        x, z = lane_x + float(rng.uniform(-1.0, 1.0)), float(rng.uniform(5.0, 50.0))
        items.append((z, _rider(p, rng, x, z, bool(rng.random() < 0.5), True)))
    # Vehicles: big ones first so that they find room; the camera's lane starts further away.
    occupied: list[tuple[int, float, float]] = [
        (k, 0.0, 7.0) for k, (x, _) in enumerate(st.lanes) if abs(x) < st.lane_width / 2
    ]
    fleet = []
    if rng.random() < 0.5:
        fleet.append(("train", float(rng.uniform(18.0, 32.0))))
    if rng.random() < 0.55:
        fleet.append(("bus", float(rng.uniform(10.0, 13.0))))
    if rng.random() < 0.55:
        fleet.append(("truck", float(rng.uniform(6.0, 9.0))))
    fleet += [("car", float(rng.uniform(3.8, 4.8))) for _ in range(1 + int(rng.poisson(2.5)))]
    for kind, length in fleet:
        spot = _place(rng, occupied, len(st.lanes), length, 4.0, 70.0)
        if spot is not None:
            x, direction = st.lanes[spot[0]]
            x += float(rng.normal(0.0, 0.2))
            items.append((spot[1], _vehicle(p, rng, kind, x, spot[1], length, direction)))
    for i, sign in _SIDES:  # parked cars
        if st.parking[i]:
            for _ in range(int(rng.integers(1, 5))):
                z, length = float(rng.uniform(4.0, 60.0)), float(rng.uniform(3.8, 4.8))
                x = sign * (st.edge[i] - 1.15)
                items.append((z, _vehicle(p, rng, "car", x, z, length, 1 if rng.random() < 0.5 else -1)))
    return items


def _draw_hood(p: _Painter, rng: np.random.Generator, label: int) -> None:
    """The bonnet of the recording car across the bottom of the image."""
    width, height = p.camera.size
    top = height * (1.0 - float(rng.uniform(0.08, 0.14)))
    box = (-0.35 * width, top, 1.35 * width, top + 1.2 * height)
    jit = _jitter(rng)
    p.ellipse(box, label, p.colour("hood", jit, 0.0))
    shine = (0.2 * width, top + 0.02 * height, 0.8 * width, top + 0.6 * height)
    p.ellipse(shine, None, p.colour("hood", jit, 0.0, 1.35))


def _draw_scene(p: _Painter, rng: np.random.Generator, hood_label: int | None) -> None:
    """Sample one street layout and paint it back to front."""
    st = _sample_street(rng)
    _draw_clouds(p, rng)
    _draw_ground(p, rng, st)
    _draw_skyline(p, rng, st)
    _draw_facades(p, rng, st)
    _draw_walls(p, rng, st)
    verge: list[tuple[float, _Draw]] = []  # trees and bushes on the grass strips
    for i, sign in _SIDES:
        if st.terrain[i]:
            for _ in range(int(rng.poisson(2.5))):
                z = float(rng.uniform(4.0, 90.0))
                x = sign * float(rng.uniform(st.walk[i] + 0.5, st.building[i] - 0.5))
                verge.append((z, _tree(p, rng, x, z, bush=bool(rng.random() < 0.4))))
    for _, draw in sorted(verge, key=lambda item: -item[0]):
        draw()
    _draw_fences(p, rng, st)
    for _, draw in sorted(_objects(p, rng, st), key=lambda item: -item[0]):
        draw()
    if hood_label is not None:
        _draw_hood(p, rng, hood_label)


# --------------------------------------------------------------------------- image formation


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cell: int) -> np.ndarray:
    """(H, W) float32 standard-ish noise correlated over about ``cell`` pixels."""
    width, height = size
    small = rng.standard_normal((max(2, height // cell), max(2, width // cell)), dtype=np.float32)
    return np.asarray(Image.fromarray(small, "F").resize(size, Image.Resampling.BICUBIC))


def _photograph(rgb: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera look: texture, lighting gradient, vignetting, exposure, white balance, blur, noise."""
    height, width = ids.shape
    size = (width, height)
    amp = _TEXTURE_LUT[ids]
    texture = 0.5 * rng.standard_normal((height, width), dtype=np.float32) + _smooth_noise(rng, size, 3)
    light = 1.0 + amp * texture + 0.05 * _smooth_noise(rng, size, 24)
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = u / width - 0.5, v / height - 0.5
    gx, gy = rng.uniform(-0.35, 0.35, 2)
    light *= 1.0 + gx * u + gy * v - float(rng.uniform(0.15, 0.45)) * (u * u + v * v) * 2.0
    img = rgb.astype(np.float32) * light[..., None]
    mean = img.mean()
    img = (mean + float(rng.uniform(0.7, 1.05)) * (img - mean)) * float(rng.uniform(0.72, 1.1))
    img *= (1.0 + rng.normal(0.0, 0.04, 3)).astype(np.float32)
    blurred = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.0)))
    )
    noise = rng.standard_normal((height, width, 3), dtype=np.float32) * float(rng.uniform(2.0, 5.0))
    return np.clip(np.asarray(blurred, dtype=np.float32) + noise, 0, 255).astype(np.uint8)


def render(
    seed: int, domain: str, split: str, index: int, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (H, W, 3) uint8 RGB and (H, W) uint8 Cityscapes label ids.

    ``domain`` is "source" (split "all") or "target" (split "train" or "val").
    """
    domain_code, split_code = _STREAMS[(domain, split)]
    rng = np.random.default_rng([seed, domain_code, split_code, index])
    look = _DOMAINS[domain]
    camera = _sample_camera(rng, size)
    light = (rng.uniform(0.85, 1.1) * (1.0 + rng.normal(0.0, 0.05, 3))).tolist()
    painter = _Painter(camera, look, light, _jitter(rng))
    if look.photographic:  # Cityscapes: the Mercedes bonnet, always in view
        hood: int | None = EGO_VEHICLE_ID
    else:  # GTA5: unlabelled bonnet in some frames
        hood = UNLABELED_ID if rng.random() < 0.6 else None
    _draw_scene(painter, rng, hood)
    rgb = np.asarray(painter.image)
    ids = np.array(painter.label)
    if look.photographic:
        rgb = _photograph(rgb, ids, rng)
        ids[-2:, :] = OUT_OF_ROI_ID  # Cityscapes marks a thin border as out of roi
        ids[:, :2] = OUT_OF_ROI_ID
        ids[:, -2:] = OUT_OF_ROI_ID
    return rgb, ids


# --------------------------------------------------------------------------- files


class _Job(NamedTuple):
    domain: str
    split: str
    index: int
    size: tuple[int, int]
    image: str  # relative paths
    label: str


def _gta5_palette() -> list[int]:
    palette = [0] * 768
    for label_id, rgb in zip(LABEL_IDS, PALETTE):
        palette[3 * label_id : 3 * label_id + 3] = rgb
    return palette


def _jobs(spec: SyntheticSpec) -> list[_Job]:
    jobs = [
        _Job("source", "all", i, spec.source_size, f"GTA5/images/{i + 1:05d}.png", f"GTA5/labels/{i + 1:05d}.png")
        for i in range(spec.num_source)
    ]
    for split, count, cities in (("train", spec.num_train, TRAIN_CITIES), ("val", spec.num_val, VAL_CITIES)):
        for i in range(count):
            city = cities[i % len(cities)]
            stem = f"{city}/{city}_{i // len(cities):06d}_{CITYSCAPES_FRAME:06d}"
            jobs.append(_Job("target", split, i, spec.target_size,
                             f"Cityscapes/leftImg8bit/{split}/{stem}_leftImg8bit.png",
                             f"Cityscapes/gtFine/{split}/{stem}_gtFine_labelIds.png"))  # fmt: skip
    return jobs


def _write(root: Path, job: _Job, seed: int, palette: list[int]) -> None:
    rgb, ids = render(seed, job.domain, job.split, job.index, job.size)
    image_path, label_path = root / job.image, root / job.label
    image_path.parent.mkdir(parents=True, exist_ok=True)
    label_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(image_path, compress_level=1)
    label = Image.fromarray(ids)  # mode "L": Cityscapes labelIds
    if job.domain == "source":
        label.putpalette(palette)  # mode "P" whose indices are label ids: GTA5
    label.save(label_path)


def _manifest(spec: SyntheticSpec) -> dict:
    record = {"format_version": FORMAT_VERSION}
    for key, value in dataclasses.asdict(spec).items():
        record[key] = list(value) if isinstance(value, tuple) else value
    return record


def _existing_matches(out: Path, spec: SyntheticSpec) -> bool:
    """True if ``out`` holds a complete dataset of ``spec``, False if it does not exist.

    Raises FileExistsError when ``out`` exists with anything else in it.
    """
    if not out.exists():
        return False
    manifest = out / MANIFEST
    if not manifest.is_file():
        raise FileExistsError(
            f"{out} exists but is not a complete synthetic dataset (no {MANIFEST}); "
            "remove it or choose another path"
        )
    try:
        found = json.loads(manifest.read_text())
    except json.JSONDecodeError as err:
        raise FileExistsError(f"{manifest} is not valid JSON ({err}); remove {out}") from err
    expected = _manifest(spec)
    differ = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
    if differ:
        details = "; ".join(f"{k}: {found.get(k)!r} on disk, {expected.get(k)!r} requested" for k in differ)
        raise FileExistsError(
            f"{manifest} describes another synthetic dataset ({details}); remove {out} or choose another path"
        )
    return True


def generate(out: str | Path, spec: SyntheticSpec, progress: bool = True) -> Path:
    """Write the dataset of ``spec`` to ``out`` atomically; returns ``out``.

    Files go to a temporary sibling folder that is renamed to ``out`` once ``synthetic.json``
    is written, so an interrupted run leaves no partial dataset. An existing complete dataset
    of the same spec is returned as is; anything else at ``out`` raises FileExistsError.
    """
    out = Path(out)
    if _existing_matches(out, spec):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        tmp.chmod(0o755)
        jobs = _jobs(spec)
        palette = _gta5_palette()
        bar = tqdm(jobs, desc="synthetic", unit="img") if progress and tqdm is not None else jobs
        for job in bar:
            _write(tmp, job, spec.seed, palette)
        (tmp / MANIFEST).write_text(json.dumps(_manifest(spec), indent=2) + "\n")
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def ensure_synthetic(out: str | Path, spec: SyntheticSpec) -> Path:
    """Return ``out`` if it holds the dataset of ``spec``, generating it if ``out`` is absent.

    Raises FileExistsError (naming ``synthetic.json`` and the differing fields) if ``out``
    holds another dataset.
    """
    out = Path(out)
    if _existing_matches(out, spec):
        logger.info("using the synthetic dataset at %s", out)
        return out
    total = spec.num_source + spec.num_train + spec.num_val
    logger.info("generating the synthetic dataset (%d images, seed %d) at %s", total, spec.seed, out)
    start = time.perf_counter()
    generate(out, spec, progress=False)
    logger.info("synthetic dataset written in %.1f s", time.perf_counter() - start)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: generate a synthetic dataset (see the module docstring)."""
    defaults = SyntheticSpec()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="dataset root to create")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--num-source", type=int, default=defaults.num_source, help="GTA5-layout images")
    parser.add_argument("--num-train", type=int, default=defaults.num_train, help="Cityscapes train images")
    parser.add_argument("--num-val", type=int, default=defaults.num_val, help="Cityscapes val images")
    parser.add_argument("--source-size", type=int, nargs=2, default=defaults.source_size, metavar=("W", "H"))
    parser.add_argument("--target-size", type=int, nargs=2, default=defaults.target_size, metavar=("W", "H"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = SyntheticSpec(
        seed=args.seed,
        num_source=args.num_source,
        num_train=args.num_train,
        num_val=args.num_val,
        source_size=tuple(args.source_size),
        target_size=tuple(args.target_size),
    )
    start = time.perf_counter()
    out = generate(args.out, spec)
    print(f"synthetic dataset at {out} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
