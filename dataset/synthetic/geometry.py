"""World geometry: the pinhole camera and its projection, axis-aligned world rectangles, and the
street's lateral layout with the sampling of a street and a camera."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dataset.synthetic.domains import Domain


@dataclass(frozen=True)
class Camera:
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


def rect(plane: str, c, a0, a1, b0, b1) -> np.ndarray:
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


@dataclass(frozen=True)
class Street:
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


SIDES = ((0, -1.0), (1, 1.0))  # (index into the per-side pairs, sign of X)


def sample_street(rng: np.random.Generator, grass: bool = True) -> Street:
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
    return Street(lanes, lane, centre, edge, parking, walk, terrain, building, end, far)


def sample_camera(rng: np.random.Generator, size: tuple[int, int], look: Domain) -> Camera:
    width, height = size
    return Camera(
        size=size,
        focal=float(rng.uniform(*look.focal)) * width,
        cx=width * (0.5 + float(rng.uniform(-0.06, 0.06))),
        cy=height * float(rng.uniform(*look.horizon)),
        elevation=float(rng.uniform(*look.elevation)),
    )
