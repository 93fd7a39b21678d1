"""Procedural street scenes: the repository's built-in GTA5 (or SYNTHIA) -> Cityscapes benchmark.

Every image is a street seen from a car: a random layout (camera pitch and height, lanes,
sidewalks, grass strips, facades with windows, walls, fences, poles carrying traffic lights
and signs, trees, pedestrians, riders on bicycles and motorcycles, cars, trucks, buses and
sometimes a tram) is projected through a pinhole camera and painted back to front, with the
label map drawn from the very same polygons. Both domains sample layouts the same way; only
the appearance differs, the way game frames differ from camera frames:

- source (GTA5 layout): saturated game palette, flat colours, hard edges, bright even light,
  clear air, no noise;
- target (Cityscapes layout): greyer, shifted class colours (paler sky, mauve road, olive
  vegetation, grey-blue cars...), more haze, texture noise, a lighting gradient with
  vignetting, a slight blur, sensor noise and a random brightness, contrast and white balance
  per image;
- a second source (SYNTHIA-RAND-CITYSCAPES layout, ``num_synthia`` images, none by default):
  another viewpoint (a higher camera, a wider lens, the horizon higher in the frame, no
  bonnet), a pale, low-contrast palette (the target's hues washed towards a cool white) with
  hard side shading and little haze, and a world without terrain, trucks and trains, as
  SYNTHIA's.

Each image draws from its own ``numpy.random.Generator`` seeded with (seed, domain, split,
index): a file's bytes depend on those alone, never on the counts or the order.

    python -m dataset.synthetic --out data/synthetic --seed 0 --num-train 200 --num-val 60

writes ``<out>/GTA5/{images,labels}/00001.png ...`` (labels: palettised PNGs of Cityscapes
label ids), ``<out>/Cityscapes/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png``
with grey ``gtFine/.../*_gtFine_labelIds.png`` beside, and last ``<out>/synthetic.json`` with
the generation parameters, whose presence marks a complete dataset. ``--num-synthia N`` adds
``<out>/SYNTHIA/RGB/0000000.png ...`` with ``GT/LABELS/<same>.png``: 16-bit 3-channel PNGs
with SYNTHIA's class ids in the first channel (RGB order), written by OpenCV.
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

from dataset.labels import CLASS_NAMES, LABEL_IDS, PALETTE, SYNTHIA_TO_TRAIN_ID
from utils.errors import add_debug_flag, run

try:
    from tqdm import tqdm
except ImportError:  # the progress bar is optional
    tqdm = None

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # bump whenever the pictures change, so stale datasets are not reused
SYNTHIA_FORMAT_VERSION = 1  # the same for the SYNTHIA-layout pictures alone
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
    num_synthia: int = 0  # SYNTHIA-layout images (a second source)
    synthia_size: tuple[int, int] = (480, 285)  # 1280x760's aspect

    def __post_init__(self) -> None:
        for name in ("seed", "num_source", "num_train", "num_val", "num_synthia"):
            if getattr(self, name) < 0:
                raise ValueError(f"SyntheticSpec.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("source_size", "target_size", "synthia_size"):
            size = getattr(self, name)
            if len(size) != 2 or min(size) < 32:
                raise ValueError(f"SyntheticSpec.{name} must be (W, H), both >= 32, got {size}")


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
    photographic: bool  # texture, lighting, exposure, blur and sensor noise (_photograph)
    # The viewpoint: ranges of the focal length (x W), the horizon row (x H) and the camera's
    # height (metres).
    focal: tuple[float, float] = (0.68, 0.82)
    horizon: tuple[float, float] = (0.38, 0.47)
    elevation: tuple[float, float] = (1.35, 1.8)
    hood_chance: float = 0.0  # how often an unlabelled bonnet is in view (photographic: always)
    absent: frozenset[str] = frozenset()  # classes this world lacks


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
    hood_chance=0.6,
)  # fmt: skip

# Greyer and shifted. A small CNN trained on 150 source images reaches about 55% of the
# target mIoU of the same CNN trained on the target (25.5 vs 48.1 at 256x128), close to the
# GTA5 -> Cityscapes ratio (36.6 vs ~65).
_TARGET = _Domain(
    colours={
        "road": (100, 92, 102), "sidewalk": (172, 160, 147), "building": (150, 125, 108),
        "wall": (148, 142, 118), "fence": (127, 101, 74), "pole": (112, 114, 120),
        "light": (50, 50, 42), "sign": (61, 95, 166), "vegetation": (70, 123, 55),
        "terrain": (142, 159, 90), "sky": (173, 203, 234), "person": (139, 66, 78),
        "rider": (184, 132, 68), "car": (62, 90, 148), "truck": (203, 203, 204),
        "bus": (207, 178, 86), "train": (162, 68, 64), "motorcycle": (42, 40, 50),
        "bicycle": (156, 63, 118), "sky_top": (83, 133, 212), "cloud": (235, 237, 241),
        "window": (70, 95, 123), "skin": (200, 166, 142), "trunk": (93, 72, 51),
        "lamp_red": (203, 72, 62), "lamp_amber": (211, 176, 72), "lamp_green": (86, 203, 122),
        "tyre": (25, 25, 28), "static": (59, 96, 68), "hood": (48, 46, 50),
    },
    colour_jitter=9.0,
    brightness_jitter=0.15,
    haze=0.45,
    haze_distance=150.0,
    side_shade=0.86,
    photographic=True,
)  # fmt: skip

# SYNTHIA-like: another engine and another camera. A pale, cool rendering: the target's hues
# washed 45% of the way towards a cool white (where the GTA5-like source saturates them), hard
# sunlight (dark side faces), little haze; seen from higher up with a wider lens; no terrain,
# trucks or trains (SYNTHIA has none), so the far ground is paved.
_PALE = (235, 238, 245)
_SYNTHIA = _Domain(
    colours={
        name: tuple(round(c + 0.45 * (w - c)) for c, w in zip(colour, _PALE))
        for name, colour in _TARGET.colours.items()
    },
    colour_jitter=12.0,
    brightness_jitter=0.18,
    haze=0.12,
    haze_distance=400.0,
    side_shade=0.6,
    photographic=False,
    focal=(0.56, 0.68),
    horizon=(0.28, 0.38),
    elevation=(2.2, 3.6),
    absent=frozenset({"terrain", "truck", "train"}),
)

_DOMAINS = {"source": _SOURCE, "target": _TARGET, "synthia": _SYNTHIA}
# (domain, split) -> the two seed words after the dataset seed.
_STREAMS = {
    ("source", "all"): (0, 0),
    ("target", "train"): (1, 1),
    ("target", "val"): (1, 2),
    ("synthia", "all"): (2, 0),
}

# Classes whose instances vary more than the rest (in both domains).
_SPREAD = {"building": 2.2, "car": 2.6, "person": 2.0, "rider": 1.6, "truck": 1.4, "sky": 0.6}

# Relative texture amplitude per class in the target domain (camera images are not flat).
_TEXTURE = {
    "road": 0.04, "sidewalk": 0.05, "building": 0.06, "wall": 0.06, "fence": 0.06,
    "pole": 0.03, "light": 0.03, "sign": 0.03, "vegetation": 0.16, "terrain": 0.1,
    "sky": 0.015, "person": 0.04, "rider": 0.04, "car": 0.03, "truck": 0.03, "bus": 0.03,
    "train": 0.03, "motorcycle": 0.04, "bicycle": 0.04,
}  # fmt: skip
_TEXTURE_LUT = np.full(256, 0.03, dtype=np.float32)
_TEXTURE_LUT[[ID[name] for name in _TEXTURE]] = list(_TEXTURE.values())


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Camera:
    """Pinhole camera at X = 0 looking along +Z; world Y points up from the ground (metres)."""

    size: tuple[int, int]  # (W, H)
    focal: float  # pixels
    cx: float
    cy: float  # the horizon row
    elevation: float

    def project(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) world points (Z > 0) -> (..., 2) pixel coordinates."""
        out = np.empty(points.shape[:-1] + (2,))
        scale = self.focal / points[..., 2]
        out[..., 0] = self.cx + scale * points[..., 0]
        out[..., 1] = self.cy + scale * (self.elevation - points[..., 1])
        return out


def _rect(plane: str, c, a0, a1, b0, b1) -> np.ndarray:
    """Axis-aligned world rectangles, (..., 4, 3); scalars or arrays broadcast.

    ``plane`` "x": X = c, a along Z, b along Y (faces along the street); "z": Z = c, a along
    X, b along Y (faces towards the camera); "y": Y = c, a along X, b along Z (ground, roofs).
    """
    ia, ib, ic = {"x": (2, 1, 0), "z": (0, 1, 2), "y": (0, 2, 1)}[plane]
    c, a0, a1, b0, b1 = (np.asarray(v, dtype=np.float64)[..., None] for v in (c, a0, a1, b0, b1))
    out = np.empty(
        np.broadcast_shapes(c.shape, a0.shape, a1.shape, b0.shape, b1.shape)[:-1] + (4, 3)
    )
    out[..., ic] = c
    out[..., 0::3, ia], out[..., 1:3, ia] = a0, a1  # corners (a0, b0) (a1, b0) (a1, b1) (a0, b1)
    out[..., 0:2, ib], out[..., 2:4, ib] = b0, b1
    return out


class _Painter:
    """Draws shapes into an RGB image and, with identical geometry, into a label-id map."""

    def __init__(self, camera: _Camera, domain: _Domain, light: Sequence[float], sky: Jitter):
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
        spread = d.colour_jitter * _SPREAD.get(name, 1.0)
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


class _Sprite:
    """A flat drawing frame facing the camera: metres, origin on the ground at (x, z), y up;
    ``facing = -1`` mirrors it."""

    def __init__(self, painter: _Painter, x: float, z: float, facing: float = 1.0) -> None:
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


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class _Street:
    """Lateral layout; per-side pairs are (left, right) distances from the camera's X = 0."""

    lanes: tuple[tuple[float, int], ...]  # (centre X, +1 driving away / -1 oncoming)
    lane_width: float
    centre: float  # X of the line between the two directions
    edge: tuple[float, float]  # road edge
    parking: tuple[bool, bool]  # a parking strip inside the road edge
    walk: tuple[float, float]  # outer edge of the sidewalk
    terrain: tuple[bool, bool]  # a grass strip between sidewalk and facades
    building: tuple[float, float]  # facade line
    end: float  # Z where the facades stop
    far: float  # Z of the distant row that closes the view


_SIDES = ((0, -1.0), (1, 1.0))  # (index into the per-side pairs, sign of X)


def _sample_street(rng: np.random.Generator, grass: bool = True) -> _Street:
    """A street; ``grass=False``: no grass strips (the draws are the same either way)."""
    lane = float(rng.uniform(2.9, 3.6))
    n_away, n_oncoming = (int(n) for n in rng.integers(1, 3, 2))
    own = int(rng.integers(0, n_away))  # the camera's lane, counted from the centre line
    centre = -lane * (own + 0.5) + float(rng.normal(0.0, 0.3))
    lanes = tuple((centre + lane * (i + 0.5), 1) for i in range(n_away))
    lanes += tuple((centre - lane * (i + 0.5), -1) for i in range(n_oncoming))
    parking = tuple(bool(p) for p in rng.random(2) < 0.4)
    edge = (
        lane * n_oncoming + 2.3 * parking[0] - centre,
        centre + lane * n_away + 2.3 * parking[1],
    )
    walk = tuple((np.asarray(edge) + rng.uniform(2.0, 4.5, 2)).tolist())
    terrain = tuple(bool(t) and grass for t in rng.random(2) < 0.6)
    grass = np.where(terrain, rng.uniform(1.5, 4.5, 2), 0.0)
    building = tuple((np.asarray(walk) + grass + rng.uniform(0.0, 1.0, 2)).tolist())
    end = float(rng.uniform(90.0, 220.0))
    far = end + float(rng.uniform(10.0, 60.0))
    return _Street(lanes, lane, centre, edge, parking, walk, terrain, building, end, far)


def _sample_camera(rng: np.random.Generator, size: tuple[int, int], look: _Domain) -> _Camera:
    width, height = size
    return _Camera(
        size=size,
        focal=float(rng.uniform(*look.focal)) * width,
        cx=width * (0.5 + float(rng.uniform(-0.06, 0.06))),
        cy=height * float(rng.uniform(*look.horizon)),
        elevation=float(rng.uniform(*look.elevation)),
    )


def _jitter(rng: np.random.Generator) -> list[float]:
    return rng.standard_normal(4).tolist()


# --------------------------------------------------------------------------- background


def _draw_clouds(p: _Painter, rng: np.random.Generator) -> None:
    width = p.camera.size[0]
    for _ in range(int(rng.integers(0, 5))):
        u, v = rng.uniform(0, width), rng.uniform(0.05, 0.8) * p.camera.cy
        colour = p.colour("cloud", _jitter(rng), 0.0)
        for _ in range(int(rng.integers(2, 5))):
            cu, cv = u + rng.normal(0, 0.05 * width), v + rng.normal(0, 0.01 * width)
            rx, ry = rng.uniform(0.04, 0.1) * width, rng.uniform(0.01, 0.025) * width
            p.ellipse((cu - rx, cv - ry, cu + rx, cv + ry), ID["sky"], colour)


def _draw_ground(p: _Painter, rng: np.random.Generator, st: _Street) -> None:
    """Grass (paved where the world has no terrain) beyond everything, road, sidewalks with
    curbs, grass strips, lane markings."""

    def ground(name: str, x0: float, x1: float, z1: float, jit: Jitter, depth: float = 20.0):
        x0, x1 = sorted((x0, x1))
        p.fill(_rect("y", 0.0, x0, x1, 0.4, z1), ID[name], p.colour(name, jit, depth))

    far = "sidewalk" if "terrain" in p.domain.absent else "terrain"
    ground(far, -600.0, 600.0, 2000.0, _jitter(rng), 300.0)
    road_jit = _jitter(rng)
    ground("road", -st.edge[0], st.edge[1], st.far, road_jit)
    for i, sign in _SIDES:
        walk_jit = _jitter(rng)
        ground("sidewalk", sign * st.building[i], sign * st.edge[i], st.end, walk_jit)
        if st.terrain[i]:
            ground("terrain", sign * st.building[i], sign * st.walk[i], st.end, _jitter(rng))
        curb = p.colour("sidewalk", walk_jit, 20.0, p.domain.side_shade)
        p.fill(_rect("x", sign * st.edge[i], 0.4, st.end, 0.0, 0.15), ID["sidewalk"], curb)
    # Markings, lighter road: dashes between lanes, a solid line along each side, a crossing.
    mark = p.colour("road", road_jit, 20.0, 1.9)
    z0 = np.arange(rng.uniform(1.0, 10.0), min(st.end, 150.0), 9.0)
    for x in sorted(x - st.lane_width / 2 for x, _ in st.lanes)[1:]:
        w = 0.11 if abs(x - st.centre) < 0.1 else 0.075
        p.fill(_rect("y", 0.0, x - w, x + w, z0, z0 + 3.0), ID["road"], np.full((len(z0), 3), mark))
    for i, sign in _SIDES:
        x = sign * (st.edge[i] - (2.3 if st.parking[i] else 0.3))
        p.fill(_rect("y", 0.0, x - 0.07, x + 0.07, 0.4, st.end), ID["road"], mark)
    if rng.random() < 0.35:
        zc = float(rng.uniform(9.0, 25.0))
        xs = np.arange(-st.edge[0] + 0.5, st.edge[1] - 0.5, 1.1)
        p.fill(
            _rect("y", 0.0, xs, xs + 0.55, zc, zc + 3.0), ID["road"], np.full((len(xs), 3), mark)
        )


def _windows(
    p: _Painter,
    rng: np.random.Generator,
    plane: str,
    c: float,
    a0: float,
    a1: float,
    height: float,
    jit: Jitter,
    shade: float,
) -> None:
    """A grid of window panes (image only) on a facade in ``plane`` at ``c`` spanning a0..a1."""
    step = float(rng.uniform(2.5, 4.0))
    a, b = np.meshgrid(np.arange(a0 + 1.0, a1 - 1.5, step), np.arange(3.2, height - 1.2, 3.2))
    a, b = a.ravel(), b.ravel()
    depth = a if plane == "x" else np.full_like(a, c)
    shades = rng.uniform(0.7, 1.15, len(a)) * shade
    p.fill(
        _rect(plane, c, a, a + 0.5 * step, b, b + 1.6),
        None,
        p.colours("window", jit, depth, shades),
    )


def _draw_skyline(p: _Painter, rng: np.random.Generator, st: _Street) -> None:
    """A row of distant buildings and trees across the whole view at the end of the street."""
    blocks, x = [], -float(rng.uniform(150.0, 200.0))
    while x < 200.0:
        w = float(rng.uniform(8.0, 30.0))
        z, h = st.far + float(rng.uniform(0.0, 30.0)), float(rng.uniform(4.0, 32.0))
        blocks.append((z, x, x + w, h, float(rng.random()), _jitter(rng)))
        x += w
    for z, x0, x1, h, kind, jit in sorted(blocks, reverse=True):
        if kind < 0.12:
            continue  # a gap: sky
        if kind < 0.35:
            s, w = _Sprite(p, (x0 + x1) / 2, z), x1 - x0
            for k in range(4):
                r = h / 3 * (0.7 + 0.1 * k)
                s.ellipse(
                    w * (k / 3 - 0.5) * 0.7,
                    r,
                    w / 3,
                    r,
                    ID["vegetation"],
                    p.colour("vegetation", jit, z, 0.85 + 0.08 * k),
                )
        else:
            p.face(_rect("z", z, x0, x1, 0.0, h), "building", jit)
            _windows(p, rng, "z", z, x0, x1, h, jit, 1.0)


def _draw_facades(p: _Painter, rng: np.random.Generator, st: _Street) -> None:
    """Building blocks along both sides, drawn far to near; some gaps hold hedges or walls."""
    side = p.domain.side_shade
    for i, sign in _SIDES:
        x, segments, z = sign * st.building[i], [], float(rng.uniform(0.4, 3.0))
        while z < st.end:
            z1 = min(z + float(rng.uniform(8.0, 28.0)), st.end)
            segments.append(
                (z, z1, float(rng.uniform(5.0, 24.0)), float(rng.random()), _jitter(rng))
            )
            z = z1
        for z0, z1, h, kind, jit in reversed(segments):
            if kind < 0.1:
                p.face(_rect("x", x, z0, z1, 0.0, 1.0 + h / 10), "vegetation", jit, 0.9)
            elif kind < 0.16:
                p.face(_rect("x", x, z0, z1, 0.0, 2.0), "wall", jit, side)
            else:
                p.face(_rect("z", z0, x, x + sign * 15.0, 0.0, h), "building", jit)  # near end
                p.face(_rect("x", x, z0, z1, 0.0, h), "building", jit, side)
                _windows(p, rng, "x", x * 0.999, z0, z1, h, jit, side)
                if rng.random() < 0.5:  # shop front on the ground floor
                    p.fill(
                        _rect("x", x * 0.999, z0 + 0.5, z1 - 0.5, 0.3, 2.6),
                        None,
                        p.colour("window", jit, (z0 + z1) / 2, 0.8 * side),
                    )


def _draw_walls(p: _Painter, rng: np.random.Generator, st: _Street) -> None:
    """Garden walls with masonry seams in front of the facades."""
    for i, sign in _SIDES:
        for _ in range(int(rng.random() < 0.55) + int(rng.random() < 0.2)):
            x, z0, jit = sign * (st.building[i] - 0.3), float(rng.uniform(3.0, 50.0)), _jitter(rng)
            z1, h = z0 + float(rng.uniform(6.0, 28.0)), float(rng.uniform(0.9, 3.0))
            p.face(_rect("x", x, z0, z1, 0.0, h), "wall", jit, p.domain.side_shade)
            p.face(_rect("y", h, x, x + sign * 0.4, z0, z1), "wall", jit, 1.1)
            ys = np.arange(0.5, h - 0.2, 0.5)
            seams = p.colours("wall", jit, np.full_like(ys, (z0 + z1) / 2), 0.6)
            p.fill(_rect("x", x * 0.999, z0, z1, ys, ys + 0.06), None, seams)


def _draw_fences(p: _Painter, rng: np.random.Generator, st: _Street) -> None:
    """Fences along the outer sidewalk edge: a slatted panel with a top rail."""
    for i, sign in _SIDES:
        if rng.random() >= 0.5:
            continue
        x, z0, jit = sign * st.walk[i], float(rng.uniform(3.0, 40.0)), _jitter(rng)
        z1, h = z0 + float(rng.uniform(6.0, 30.0)), float(rng.uniform(0.9, 1.8))
        p.face(_rect("x", x, z0, z1, 0.0, h), "fence", jit, p.domain.side_shade)
        zs = np.arange(z0 + 0.15, z1, 0.3)
        p.fill(
            _rect("x", x * 0.999, zs, zs + 0.06, 0.0, h), None, p.colours("fence", jit, zs, 0.55)
        )
        p.fill(
            _rect("x", x * 0.998, z0, z1, h - 0.12, h),
            None,
            p.colour("fence", jit, (z0 + z1) / 2, 1.15),
        )


# --------------------------------------------------------------------------- objects
# Each draws one object standing at (x, z), sampling its details as it goes; the scene calls
# them sorted far to near.


def _tree(p: _Painter, rng: np.random.Generator, x: float, z: float, bush: bool) -> None:
    jit, s, label = _jitter(rng), _Sprite(p, x, z), ID["vegetation"]
    height = float(rng.uniform(1.0, 1.8) if bush else rng.uniform(4.5, 10.0))
    radius = float(rng.uniform(0.6, 1.1) if bush else rng.uniform(1.4, 3.2))
    if not bush:
        w, top = radius * 0.12, height - radius
        s.polygon(
            [(-w, 0), (w, 0), (w * 0.7, top), (-w * 0.7, top)],
            label,
            p.colour("trunk", _jitter(rng), z),
        )
    cy = radius * 0.8 if bush else height - radius
    for _ in range(int(rng.integers(4, 8))):
        dx, dy, size, shade = (
            rng.uniform(-1.0, 1.0, 2).tolist() + rng.uniform([0.55, 0.8], [0.9, 1.15]).tolist()
        )
        r = radius * size
        s.ellipse(
            dx * radius * 0.6,
            cy + dy * radius * 0.4,
            r,
            r * 0.9,
            label,
            p.colour("vegetation", jit, z, shade),
        )


def _pole(p: _Painter, rng: np.random.Generator, x: float, z: float, road_dir: float) -> None:
    """A pole carrying a traffic light (maybe also on an arm over the road), a sign or a lamp."""
    kind = str(rng.choice(["light", "sign", "lamp"], p=[0.4, 0.4, 0.2]))
    jit, part_jit = _jitter(rng), _jitter(rng)
    height = float(
        {
            "sign": rng.uniform(2.6, 3.6),
            "light": rng.uniform(3.4, 4.4),
            "lamp": rng.uniform(6.0, 9.0),
        }[kind]
    )
    arm = (
        float(rng.uniform(2.5, 5.0))
        if kind == "lamp" or (kind == "light" and rng.random() < 0.35)
        else 0.0
    )
    s, pole = _Sprite(p, x, z, road_dir), p.colour("pole", jit, z)
    s.polygon([(-0.08, 0), (0.08, 0), (0.07, height), (-0.07, height)], ID["pole"], pole)
    if arm:
        s.polygon(
            [(0, height - 0.12), (arm, height - 0.12), (arm, height), (0, height)], ID["pole"], pole
        )
    if kind == "lamp":
        s.ellipse(arm, height - 0.1, 0.4, 0.12, ID["pole"], p.colour("pole", jit, z, 1.2))
    if kind == "light":
        lit, back = int(rng.integers(0, 3)), bool(rng.random() < 0.25)
        for cx, top in ((0.0, height), (arm, height - 0.1))[: 2 if arm else 1]:
            _traffic_light(p, s, cx, top, part_jit, lit, back)
    if kind == "sign" or (kind == "light" and rng.random() < 0.3):
        _sign(p, s, height - (0.5 if kind == "sign" else 1.6), int(rng.integers(0, 4)), part_jit)


def _traffic_light(
    p: _Painter, s: _Sprite, cx: float, top: float, jit: Jitter, lit: int, back: bool
) -> None:
    """A housing hanging from ``top``; seen from the front, its three lamps, one of them lit."""
    label = ID["light"]
    s.polygon(
        [(cx - 0.19, top - 1.0), (cx + 0.19, top - 1.0), (cx + 0.19, top), (cx - 0.19, top)],
        label,
        p.colour("light", jit, s.depth),
    )
    if not back:
        for k, name in enumerate(("lamp_red", "lamp_amber", "lamp_green")):
            s.ellipse(
                cx,
                top - 0.18 - 0.32 * k,
                0.11,
                0.11,
                label,
                p.colour(name, _FLAT, s.depth, 1.0 if k == lit else 0.35),
            )


_SIGN_SHAPES = (  # plate outlines (metres); None: round
    None,
    [(-0.38, -0.38), (0.38, -0.38), (0.38, 0.38), (-0.38, 0.38)],
    [(-0.38, -0.3), (0.38, -0.3), (0.0, 0.38)],
    [(0.0, -0.45), (0.45, 0.0), (0.0, 0.45), (-0.45, 0.0)],
)


def _sign(p: _Painter, s: _Sprite, cy: float, shape: int, jit: Jitter) -> None:
    """A traffic sign: a plate of the sign colour around a lighter symbol."""
    label, outline = ID["sign"], _SIGN_SHAPES[shape]
    plate, inner = p.colour("sign", jit, s.depth), p.colour("sign", jit, s.depth, 1.8)
    for scale, colour in ((1.0, plate), (0.58, inner)):
        if outline is None:
            s.ellipse(0.0, cy, 0.38 * scale, 0.38 * scale, label, colour)
        else:
            s.polygon([(x * scale, cy + y * scale) for x, y in outline], label, colour)


# A standing pedestrian facing the camera, in units of its height: (part, polygon, how the
# points on the ground move with the stride).
_PERSON = (
    ("trousers", [(-0.1, 0.5), (-0.01, 0.5), (-0.02, 0.0), (-0.08, 0.0)], 1.0),
    ("trousers", [(0.01, 0.5), (0.1, 0.5), (0.08, 0.0), (0.02, 0.0)], -1.0),
    ("shirt", [(-0.17, 0.8), (-0.12, 0.8), (-0.14, 0.47), (-0.18, 0.47)], 0.0),
    ("shirt", [(0.12, 0.8), (0.17, 0.8), (0.18, 0.47), (0.14, 0.47)], 0.0),
    ("shirt", [(-0.11, 0.48), (0.11, 0.48), (0.13, 0.82), (-0.13, 0.82)], 0.0),
)


def _person(p: _Painter, rng: np.random.Generator, x: float, z: float) -> None:
    h, stride = float(rng.uniform(1.55, 1.95)), float(rng.uniform(-0.1, 0.1))
    s, label = _Sprite(p, x, z), ID["person"]
    colours = {
        "shirt": p.colour("person", _jitter(rng), z),
        "trousers": p.colour("person", _jitter(rng), z, 0.55),
    }
    for part, polygon, step in _PERSON:
        s.polygon(
            [((u + (step * stride if v == 0 else 0.0)) * h, v * h) for u, v in polygon],
            label,
            colours[part],
        )
    s.ellipse(0.0, 0.92 * h, 0.065 * h, 0.08 * h, label, p.colour("skin", _jitter(rng), z))


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


_MOTORCYCLE_BODY = [
    (-0.95, 0.62), (-0.35, 0.58), (-0.2, 0.3), (0.3, 0.3), (0.58, 0.72), (0.62, 0.98),
    (0.38, 1.05), (0.15, 0.92), (-0.35, 0.86), (-0.95, 0.82),
]  # fmt: skip


def _motorcycle(p: _Painter, s: _Sprite, jit: Jitter) -> None:
    """A motorcycle seen from the side, front wheel towards +x."""
    label, r = ID["motorcycle"], 0.32
    body, tyre = p.colour("motorcycle", jit, s.depth), p.colour("tyre", jit, s.depth)
    for cx in (-0.72, 0.7):
        s.ellipse(cx, r, r, r, label, tyre)
        s.ellipse(cx, r, r * 0.45, r * 0.45, label, p.colour("motorcycle", jit, s.depth, 1.8))
    s.line([(0.7, r), (0.52, 1.08)], label, body, 0.07)
    s.polygon(_MOTORCYCLE_BODY, label, body)
    s.line([(-0.2, 0.4), (-0.9, 0.45)], label, p.colour("motorcycle", jit, s.depth, 2.2), 0.06)


# Seated riders (side view, facing +x): leg hip-knee-foot, torso hip-shoulder, arm
# shoulder-hand, head centre and radius.
_RIDERS = {
    True: {
        "leg": [(-0.25, 0.95), (0.18, 0.82), (0.02, 0.42)],
        "torso": [(-0.25, 0.95), (0.12, 1.5)],
        "arm": [(0.12, 1.45), (0.5, 1.08)],
        "head": (0.2, 1.66, 0.14),
    },
    False: {
        "leg": [(-0.12, 0.95), (0.14, 0.66), (0.04, 0.26)],
        "torso": [(-0.12, 0.95), (0.18, 1.48)],
        "arm": [(0.18, 1.44), (0.32, 1.02)],
        "head": (0.26, 1.64, 0.12),
    },
}  # fmt: skip


def _two_wheeler(
    p: _Painter, rng: np.random.Generator, x: float, z: float, moto: bool, ridden: bool
) -> None:
    """A bicycle or motorcycle seen from the side, with its rider or parked."""
    s = _Sprite(p, x, z, 1.0 if rng.random() < 0.5 else -1.0)
    (_motorcycle if moto else _bicycle)(p, s, _jitter(rng))
    if ridden:
        label, shape, top = ID["rider"], _RIDERS[moto], _jitter(rng)
        s.line(shape["leg"], label, p.colour("rider", _jitter(rng), z, 0.55), 0.15)
        s.line(shape["torso"], label, p.colour("rider", top, z), 0.34)
        s.line(shape["arm"], label, p.colour("rider", top, z, 0.9), 0.1)
        hx, hy, r = shape["head"]  # a helmet on a motorcycle
        head = p.colour("rider", top, z, 0.4) if moto else p.colour("skin", _jitter(rng), z)
        s.ellipse(hx, hy, r, r * (1.0 if moto else 1.1), label, head)


def _static(p: _Painter, rng: np.random.Generator, x: float, z: float) -> None:
    """A bin or utility box: Cityscapes' ignored 'static' class."""
    w, h = float(rng.uniform(0.25, 0.5)), float(rng.uniform(0.8, 1.4))
    _Sprite(p, x, z).polygon(
        [(-w, 0), (w, 0), (w, h), (-w, h)], STATIC_ID, p.colour("static", _jitter(rng), z)
    )


def _box(
    p: _Painter,
    name: str,
    jit: Jitter,
    x0: float,
    x1: float,
    y0: float,
    y1: float,
    z0: float,
    z1: float,
) -> float | None:
    """The visible faces of an axis-aligned box: roof if below the camera, the long face seen
    from X = 0 (its X is returned, None if the box straddles X = 0) and the near face."""
    if y1 < p.camera.elevation:
        p.face(_rect("y", y1, x0, x1, z0, z1), name, jit, 1.12)
    sx = x0 if x0 > 0 else x1 if x1 < 0 else None
    if sx is not None:
        p.face(_rect("x", sx, z0, z1, y0, y1), name, jit, p.domain.side_shade)
    p.face(_rect("z", z0, x0, x1, y0, y1), name, jit)
    return sx


_VEHICLE_WIDTH = {"car": 1.82, "truck": 2.45, "bus": 2.5, "train": 2.65}


def _vehicle(
    p: _Painter,
    rng: np.random.Generator,
    kind: str,
    x: float,
    z: float,
    length: float,
    direction: int,
) -> None:
    """A car, truck, bus or tram along the street; ``direction`` -1 shows its front."""
    jit, label = _jitter(rng), ID[kind]
    x0, x1, z1 = x - _VEHICLE_WIDTH[kind] / 2, x + _VEHICLE_WIDTH[kind] / 2, z + length
    glass, tyre = p.colour("window", jit, z, 0.8), p.colour("tyre", _FLAT, z)
    shadow = p.colour("road", _FLAT, z, 0.35)
    p.fill(_rect("y", 0.0, x0 - 0.15, x1 + 0.15, z - 0.3, z1 + 0.2), None, shadow)
    r = 0.33 if kind == "car" else 0.5
    for a in (x0 + 0.05, x1 - 0.35):  # tyres under the near face, then along the long face
        p.fill(_rect("z", z + 0.6, a, a + 0.3, 0.0, 1.2 * r), label, tyre)
    sx = x0 if x0 > 0 else x1 if x1 < 0 else None
    if sx is not None:
        for zc in (z + 0.9, z1 - 0.9):
            p.disc(_rect("x", sx, zc - r, zc + r, 0.0, 2 * r), label, tyre)
    if kind == "car":
        _box(p, "car", jit, x0, x1, 0.3, 1.0, z, z1)
        c0, c1 = z + (0.28 if direction > 0 else 0.25) * length, z + 0.74 * length
        csx = _box(p, "car", jit, x0 + 0.12, x1 - 0.12, 1.0, 1.45, c0, c1)  # cabin
        p.fill(_rect("z", c0 - 0.01, x0 + 0.22, x1 - 0.22, 1.04, 1.4), label, glass)
        if csx is not None:
            p.fill(_rect("x", csx * 0.999, c0 + 0.15, c1 - 0.15, 1.04, 1.4), label, glass)
        lamp = p.colour("lamp_red" if direction > 0 else "lamp_amber", _FLAT, z, 0.9)
        for a in (x0 + 0.08, x1 - 0.38):
            p.fill(_rect("z", z - 0.01, a, a + 0.3, 0.72, 0.88), label, lamp)
    elif kind == "truck":  # cab and cargo box, far part first
        cab, cargo = (
            ((z1 - 2.2, z1), (z, z1 - 2.4)) if direction > 0 else ((z, z + 2.2), (z + 2.4, z1))
        )
        for (a, b), y0, y1, part_jit in sorted(
            [(cab, 0.5, 2.9, jit), (cargo, 0.8, 3.7, _jitter(rng))], reverse=True
        ):
            _box(p, "truck", part_jit, x0, x1, y0, y1, a, b)
        if direction < 0:
            p.fill(_rect("z", z - 0.01, x0 + 0.15, x1 - 0.15, 1.6, 2.6), label, glass)
    else:  # bus or tram: a long box with a band of side windows
        top, pitch = (3.1, 1.5) if kind == "bus" else (3.5, 2.0)
        _box(p, kind, jit, x0, x1, 0.3, top, z, z1)
        p.fill(
            _rect("z", z - 0.01, x0 + 0.15, x1 - 0.15, 1.1 if direction < 0 else 1.8, top - 0.3),
            label,
            glass,
        )
        if sx is not None:
            zs = np.arange(z + 0.4, z1 - pitch * 0.6, pitch)
            p.fill(
                _rect("x", sx * 0.999, zs, zs + pitch * 0.8, 1.3, top - 0.6),
                label,
                p.colours("window", jit, zs, p.domain.side_shade),
            )
            if kind == "train":  # joints between the cars
                zs = np.arange(z + 8.0, z1 - 1.0, 8.0)
                p.fill(
                    _rect("x", sx * 0.998, zs, zs + 0.35, 0.3, top),
                    label,
                    p.colours("tyre", _FLAT, zs),
                )


def _place(
    rng: np.random.Generator, occupied: list[tuple[int, float, float]], lanes: int, length: float
) -> tuple[int, float] | None:
    """A free (lane, Z) for a vehicle of ``length``, or None after a few tries."""
    for _ in range(8):
        lane, z = int(rng.integers(0, lanes)), float(rng.uniform(4.0, 70.0))
        if all(o != lane or z + length + 2.0 < a or z > b + 2.0 for o, a, b in occupied):
            occupied.append((lane, z, z + length))
            return lane, z
    return None


def _objects(
    p: _Painter, rng: np.random.Generator, st: _Street
) -> list[tuple[float, Callable[[], None]]]:
    """Everything on the sidewalks and the road, as (depth, draw) pairs."""
    items = []

    def add(z: float, draw: Callable[..., None], *args) -> None:
        items.append((z, partial(draw, p, rng, *args)))

    for i, sign in _SIDES:
        edge, walk = st.edge[i], st.walk[i]
        for _ in range(1 + int(rng.poisson(1.4))):
            z = float(rng.uniform(4.0, 70.0))
            add(z, _pole, sign * (edge + float(rng.uniform(0.3, 0.7))), z, -sign)
        if not st.terrain[i] and rng.random() < 0.6:
            for _ in range(int(rng.integers(1, 4))):
                z = float(rng.uniform(5.0, 80.0))
                add(z, _tree, sign * (edge + 0.75 * (walk - edge)), z, False)
        if rng.random() < 0.4:
            z = float(rng.uniform(4.0, 40.0))
            add(z, _static, sign * (walk - 0.5), z)
        for _ in range(int(rng.poisson(0.5))):  # parked two-wheelers
            z = float(rng.uniform(4.0, 35.0))
            add(z, _two_wheeler, sign * (edge + 0.9), z, bool(rng.random() < 0.4), False)
    for _ in range(int(rng.poisson(3.5))):
        i, sign = _SIDES[int(rng.integers(0, 2))]
        if rng.random() < 0.8:
            x = sign * float(rng.uniform(st.edge[i] + 0.4, st.walk[i] - 0.3))
            z = float(rng.uniform(3.5, 60.0))
        else:  # crossing the road
            x, z = float(rng.uniform(-st.edge[0], st.edge[1])), float(rng.uniform(7.0, 35.0))
        add(z, _person, x, z)
    for _ in range(int(rng.poisson(1.6))):
        x = st.lanes[int(rng.integers(0, len(st.lanes)))][0] + float(rng.uniform(-1.0, 1.0))
        z = float(rng.uniform(5.0, 50.0))
        add(z, _two_wheeler, x, z, bool(rng.random() < 0.5), True)
    # Vehicles, big ones first so that they find room; the camera's own lane is clear to 9 m.
    occupied = [(k, 0.0, 7.0) for k, (x, _) in enumerate(st.lanes) if abs(x) < st.lane_width / 2]
    fleet = [
        (kind, float(rng.uniform(lo, hi)))
        for kind, chance, lo, hi in (
            ("train", 0.5, 18.0, 32.0),
            ("bus", 0.55, 10.0, 13.0),
            ("truck", 0.55, 6.0, 9.0),
        )
        if rng.random() < chance
    ]
    fleet += [("car", float(rng.uniform(3.8, 4.8))) for _ in range(1 + int(rng.poisson(2.5)))]
    fleet = [(kind, length) for kind, length in fleet if kind not in p.domain.absent]
    for kind, length in fleet:
        spot = _place(rng, occupied, len(st.lanes), length)
        if spot is not None:
            (x, direction), z = st.lanes[spot[0]], spot[1]
            add(z, _vehicle, kind, x + float(rng.normal(0.0, 0.2)), z, length, direction)
    for i, sign in _SIDES:  # parked cars
        for _ in range(int(rng.integers(1, 5)) if st.parking[i] else 0):
            z, length = float(rng.uniform(4.0, 60.0)), float(rng.uniform(3.8, 4.8))
            direction = 1 if rng.random() < 0.5 else -1
            add(z, _vehicle, "car", sign * (st.edge[i] - 1.15), z, length, direction)
    return items


def _draw_scene(p: _Painter, rng: np.random.Generator, hood_label: int | None) -> None:
    """Sample one street layout and paint it back to front: ground, far row, facades, walls,
    trees on the grass strips, fences, then sidewalk and road objects sorted by depth."""
    st = _sample_street(rng, grass="terrain" not in p.domain.absent)
    _draw_clouds(p, rng)
    _draw_ground(p, rng, st)
    _draw_skyline(p, rng, st)
    _draw_facades(p, rng, st)
    _draw_walls(p, rng, st)
    verge = []
    for i, sign in _SIDES:
        for _ in range(int(rng.poisson(2.5)) if st.terrain[i] else 0):
            z, bush = float(rng.uniform(4.0, 90.0)), bool(rng.random() < 0.4)
            verge.append(
                (z, sign * float(rng.uniform(st.walk[i] + 0.5, st.building[i] - 0.5)), bush)
            )
    for z, x, bush in sorted(verge, reverse=True):
        _tree(p, rng, x, z, bush)
    _draw_fences(p, rng, st)
    for _, draw in sorted(_objects(p, rng, st), key=lambda item: -item[0]):
        draw()
    if hood_label is not None:  # the bonnet of the recording car, with a highlight
        width, height = p.camera.size
        top, jit = height * (1.0 - float(rng.uniform(0.08, 0.14))), _jitter(rng)
        p.ellipse(
            (-0.35 * width, top, 1.35 * width, top + 1.2 * height),
            hood_label,
            p.colour("hood", jit, 0.0),
        )
        p.ellipse(
            (0.2 * width, top + 0.02 * height, 0.8 * width, top + 0.6 * height),
            None,
            p.colour("hood", jit, 0.0, 1.35),
        )


# --------------------------------------------------------------------------- image formation


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cell: int) -> np.ndarray:
    """(H, W) float32 noise of unit scale, correlated over about ``cell`` pixels."""
    width, height = size
    small = rng.standard_normal((max(2, height // cell), max(2, width // cell)), dtype=np.float32)
    return np.asarray(Image.fromarray(small).resize(size, Image.Resampling.BICUBIC))


def _photograph(rgb: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera look: texture, lighting gradient, vignetting, exposure, white balance, blur, noise."""
    height, width = ids.shape
    size = (width, height)
    fine = 0.3 * rng.standard_normal((height, width), dtype=np.float32)
    light = 1.0 + _TEXTURE_LUT[ids] * (fine + _smooth_noise(rng, size, 3))
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


def render(
    seed: int, domain: str, split: str, index: int, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (H, W, 3) uint8 RGB and (H, W) uint8 Cityscapes label ids.

    ``domain`` is "source" or "synthia" (split "all") or "target" (split "train" or "val").
    """
    rng = np.random.default_rng([seed, *_STREAMS[(domain, split)], index])
    look = _DOMAINS[domain]
    camera = _sample_camera(rng, size, look)
    light = (rng.uniform(0.8, 1.15) * (1.0 + rng.normal(0.0, 0.06, 3))).tolist()
    painter = _Painter(camera, look, light, _jitter(rng))
    hood: int | None = None
    if look.photographic:  # Cityscapes: the recording car's bonnet is always in view
        hood = EGO_VEHICLE_ID
    elif look.hood_chance and rng.random() < look.hood_chance:  # GTA5: in some frames
        hood = UNLABELED_ID
    _draw_scene(painter, rng, hood)
    rgb, ids = np.asarray(painter.image), np.array(painter.label)
    if look.photographic:
        rgb = _photograph(rgb, ids, rng)
        ids[-2:, :] = ids[:, :2] = ids[:, -2:] = OUT_OF_ROI_ID  # a thin border, as Cityscapes
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


def _synthia_ids() -> np.ndarray:
    """256-entry table: Cityscapes label id -> SYNTHIA class id (0, void, for the rest)."""
    table = np.zeros(256, dtype=np.uint16)
    for synthia_id, train_id in SYNTHIA_TO_TRAIN_ID.items():
        table[LABEL_IDS[train_id]] = synthia_id
    return table


CITYSCAPES_TO_SYNTHIA_ID = _synthia_ids()


def write_synthia_label(path: Path, ids: np.ndarray) -> None:
    """Write (H, W) SYNTHIA class ids as SYNTHIA does: a 16-bit 3-channel PNG, the class id in
    the first channel in RGB order. The second holds a stand-in for SYNTHIA's instance ids
    (1000 + the class id, 0 on void), the third zeros, so a reader that takes another channel
    than the first gets other numbers."""
    import cv2  # (on first use: only the SYNTHIA layout needs it)

    classes = ids.astype(np.uint16)
    instances = np.where(classes > 0, 1000 + classes, 0).astype(np.uint16)
    bgr = np.stack([np.zeros_like(classes), instances, classes], axis=-1)  # OpenCV: B, G, R
    if not cv2.imwrite(str(path), bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
        raise OSError(f"OpenCV could not write {path}")


def _jobs(spec: SyntheticSpec) -> list[_Job]:
    jobs = [
        _Job(
            "source",
            "all",
            i,
            spec.source_size,
            f"GTA5/images/{i + 1:05d}.png",
            f"GTA5/labels/{i + 1:05d}.png",
        )
        for i in range(spec.num_source)
    ]
    jobs += [
        _Job(
            "synthia",
            "all",
            i,
            spec.synthia_size,
            f"SYNTHIA/RGB/{i:07d}.png",
            f"SYNTHIA/GT/LABELS/{i:07d}.png",
        )
        for i in range(spec.num_synthia)
    ]
    for split, count, cities in (
        ("train", spec.num_train, TRAIN_CITIES),
        ("val", spec.num_val, VAL_CITIES),
    ):
        for i in range(count):
            city = cities[i % len(cities)]
            stem = f"{city}/{city}_{i // len(cities):06d}_{CITYSCAPES_FRAME:06d}"
            jobs.append(
                _Job(
                    "target",
                    split,
                    i,
                    spec.target_size,
                    f"Cityscapes/leftImg8bit/{split}/{stem}_leftImg8bit.png",
                    f"Cityscapes/gtFine/{split}/{stem}_gtFine_labelIds.png",
                )
            )
    return jobs


def _write(root: Path, job: _Job, seed: int, palette: list[int]) -> None:
    rgb, ids = render(seed, job.domain, job.split, job.index, job.size)
    image_path, label_path = root / job.image, root / job.label
    image_path.parent.mkdir(parents=True, exist_ok=True)
    label_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(image_path, compress_level=1)
    if job.domain == "synthia":
        write_synthia_label(label_path, CITYSCAPES_TO_SYNTHIA_ID[ids])
        return
    label = Image.fromarray(ids)  # mode "L": Cityscapes labelIds
    if job.domain == "source":
        label.putpalette(palette)  # mode "P" whose indices are label ids: GTA5
    label.save(label_path)


def _manifest(spec: SyntheticSpec) -> dict:
    """The generation parameters; without a SYNTHIA source, its fields are left out, so that
    datasets written before it existed still match."""
    record = {"format_version": FORMAT_VERSION}
    for key, value in dataclasses.asdict(spec).items():
        if spec.num_synthia == 0 and key in ("num_synthia", "synthia_size"):
            continue
        record[key] = list(value) if isinstance(value, tuple) else value
    if spec.num_synthia:
        record["synthia_format_version"] = SYNTHIA_FORMAT_VERSION
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
        details = "; ".join(
            f"{k}: {found.get(k)!r} on disk, {expected.get(k)!r} requested" for k in differ
        )
        raise FileExistsError(
            f"{manifest} describes another synthetic dataset ({details}); "
            f"remove {out} or choose another path"
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
    total = spec.num_source + spec.num_train + spec.num_val + spec.num_synthia
    logger.info(
        "generating the synthetic dataset (%d images, seed %d) at %s", total, spec.seed, out
    )
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
    parser.add_argument(
        "--num-source", type=int, default=defaults.num_source, help="GTA5-layout images"
    )
    parser.add_argument(
        "--num-train", type=int, default=defaults.num_train, help="Cityscapes train images"
    )
    parser.add_argument(
        "--num-val", type=int, default=defaults.num_val, help="Cityscapes val images"
    )
    parser.add_argument(
        "--source-size", type=int, nargs=2, default=defaults.source_size, metavar=("W", "H")
    )
    parser.add_argument(
        "--target-size", type=int, nargs=2, default=defaults.target_size, metavar=("W", "H")
    )
    parser.add_argument(
        "--num-synthia", type=int, default=defaults.num_synthia,
        help="SYNTHIA-layout source images (a second source)",
    )  # fmt: skip
    parser.add_argument(
        "--synthia-size", type=int, nargs=2, default=defaults.synthia_size, metavar=("W", "H")
    )
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    spec = SyntheticSpec(
        seed=args.seed,
        num_source=args.num_source,
        num_train=args.num_train,
        num_val=args.num_val,
        source_size=tuple(args.source_size),
        target_size=tuple(args.target_size),
        num_synthia=args.num_synthia,
        synthia_size=tuple(args.synthia_size),
    )
    start = time.perf_counter()
    out = generate(args.out, spec)
    print(f"synthetic dataset at {out} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
