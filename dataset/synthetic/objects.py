"""The object drawers: trees and bushes, poles with traffic lights, signs or lamps, pedestrians,
bicycles and motorcycles with or without riders, bins and boxes, cars, trucks, buses and trams.

Each draws one object standing at (x, z), sampling its details as it goes; the scene calls
them sorted far to near.
"""

from __future__ import annotations

import numpy as np

from dataset.synthetic.domains import FLAT, ID, STATIC_ID, Colour, Jitter, jitter
from dataset.synthetic.geometry import rect
from dataset.synthetic.painter import Painter, Sprite


def tree(p: Painter, rng: np.random.Generator, x: float, z: float, bush: bool) -> None:
    jit, s, label = jitter(rng), Sprite(p, x, z), ID["vegetation"]
    height = float(rng.uniform(1.0, 1.8) if bush else rng.uniform(4.5, 10.0))
    radius = float(rng.uniform(0.6, 1.1) if bush else rng.uniform(1.4, 3.2))
    if not bush:
        w, top = radius * 0.12, height - radius
        s.polygon(
            [(-w, 0), (w, 0), (w * 0.7, top), (-w * 0.7, top)],
            label,
            p.colour("trunk", jitter(rng), z),
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


def pole(p: Painter, rng: np.random.Generator, x: float, z: float, road_dir: float) -> None:
    """A pole carrying a traffic light (maybe also on an arm over the road), a sign or a lamp."""
    kind = str(rng.choice(["light", "sign", "lamp"], p=[0.4, 0.4, 0.2]))
    jit, part_jit = jitter(rng), jitter(rng)
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
    s, pole = Sprite(p, x, z, road_dir), p.colour("pole", jit, z)
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
    p: Painter, s: Sprite, cx: float, top: float, jit: Jitter, lit: int, back: bool
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
                p.colour(name, FLAT, s.depth, 1.0 if k == lit else 0.35),
            )


_SIGN_SHAPES = (  # plate outlines (metres); None: round
    None,
    [(-0.38, -0.38), (0.38, -0.38), (0.38, 0.38), (-0.38, 0.38)],
    [(-0.38, -0.3), (0.38, -0.3), (0.0, 0.38)],
    [(0.0, -0.45), (0.45, 0.0), (0.0, 0.45), (-0.45, 0.0)],
)


def _sign(p: Painter, s: Sprite, cy: float, shape: int, jit: Jitter) -> None:
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


def person(p: Painter, rng: np.random.Generator, x: float, z: float) -> None:
    h, stride = float(rng.uniform(1.55, 1.95)), float(rng.uniform(-0.1, 0.1))
    s, label = Sprite(p, x, z), ID["person"]
    colours = {
        "shirt": p.colour("person", jitter(rng), z),
        "trousers": p.colour("person", jitter(rng), z, 0.55),
    }
    for part, polygon, step in _PERSON:
        s.polygon(
            [((u + (step * stride if v == 0 else 0.0)) * h, v * h) for u, v in polygon],
            label,
            colours[part],
        )
    s.ellipse(0.0, 0.92 * h, 0.065 * h, 0.08 * h, label, p.colour("skin", jitter(rng), z))


def _bicycle(p: Painter, s: Sprite, jit: Jitter) -> None:
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


def _motorcycle(p: Painter, s: Sprite, jit: Jitter) -> None:
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


def two_wheeler(
    p: Painter, rng: np.random.Generator, x: float, z: float, moto: bool, ridden: bool
) -> None:
    """A bicycle or motorcycle seen from the side, with its rider or parked."""
    s = Sprite(p, x, z, 1.0 if rng.random() < 0.5 else -1.0)
    (_motorcycle if moto else _bicycle)(p, s, jitter(rng))
    if ridden:
        label, shape, top = ID["rider"], _RIDERS[moto], jitter(rng)
        s.line(shape["leg"], label, p.colour("rider", jitter(rng), z, 0.55), 0.15)
        s.line(shape["torso"], label, p.colour("rider", top, z), 0.34)
        s.line(shape["arm"], label, p.colour("rider", top, z, 0.9), 0.1)
        hx, hy, r = shape["head"]  # a helmet on a motorcycle
        head = p.colour("rider", top, z, 0.4) if moto else p.colour("skin", jitter(rng), z)
        s.ellipse(hx, hy, r, r * (1.0 if moto else 1.1), label, head)


def static(p: Painter, rng: np.random.Generator, x: float, z: float) -> None:
    """A bin or utility box: Cityscapes' ignored 'static' class."""
    w, h = float(rng.uniform(0.25, 0.5)), float(rng.uniform(0.8, 1.4))
    Sprite(p, x, z).polygon(
        [(-w, 0), (w, 0), (w, h), (-w, h)], STATIC_ID, p.colour("static", jitter(rng), z)
    )


def _box(
    p: Painter,
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
        p.face(rect("y", y1, x0, x1, z0, z1), name, jit, 1.12)
    sx = x0 if x0 > 0 else x1 if x1 < 0 else None
    if sx is not None:
        p.face(rect("x", sx, z0, z1, y0, y1), name, jit, p.domain.side_shade)
    p.face(rect("z", z0, x0, x1, y0, y1), name, jit)
    return sx


_VEHICLE_WIDTH = {"car": 1.82, "truck": 2.45, "bus": 2.5, "train": 2.65}


def _car_body(
    p: Painter,
    jit: Jitter,
    xs: tuple[float, float],
    zs: tuple[float, float, float],
    direction: int,
    glass: Colour,
) -> None:
    """A car's body (``zs``: its near and far ends and its length), its cabin with windows
    and its rear (or front) lamps."""
    (x0, x1), (z, z1, length), label = xs, zs, ID["car"]
    _box(p, "car", jit, x0, x1, 0.3, 1.0, z, z1)
    c0, c1 = z + (0.28 if direction > 0 else 0.25) * length, z + 0.74 * length
    csx = _box(p, "car", jit, x0 + 0.12, x1 - 0.12, 1.0, 1.45, c0, c1)  # cabin
    p.fill(rect("z", c0 - 0.01, x0 + 0.22, x1 - 0.22, 1.04, 1.4), label, glass)
    if csx is not None:
        p.fill(rect("x", csx * 0.999, c0 + 0.15, c1 - 0.15, 1.04, 1.4), label, glass)
    lamp = p.colour("lamp_red" if direction > 0 else "lamp_amber", FLAT, z, 0.9)
    for a in (x0 + 0.08, x1 - 0.38):
        p.fill(rect("z", z - 0.01, a, a + 0.3, 0.72, 0.88), label, lamp)


def vehicle(
    p: Painter,
    rng: np.random.Generator,
    kind: str,
    x: float,
    z: float,
    length: float,
    direction: int,
) -> None:
    """A car, truck, bus or tram along the street; ``direction`` -1 shows its front."""
    jit, label = jitter(rng), ID[kind]
    x0, x1, z1 = x - _VEHICLE_WIDTH[kind] / 2, x + _VEHICLE_WIDTH[kind] / 2, z + length
    glass, tyre = p.colour("window", jit, z, 0.8), p.colour("tyre", FLAT, z)
    shadow = p.colour("road", FLAT, z, 0.35)
    p.fill(rect("y", 0.0, x0 - 0.15, x1 + 0.15, z - 0.3, z1 + 0.2), None, shadow)
    r = 0.33 if kind == "car" else 0.5
    for a in (x0 + 0.05, x1 - 0.35):  # tyres under the near face, then along the long face
        p.fill(rect("z", z + 0.6, a, a + 0.3, 0.0, 1.2 * r), label, tyre)
    sx = x0 if x0 > 0 else x1 if x1 < 0 else None
    if sx is not None:
        for zc in (z + 0.9, z1 - 0.9):
            p.disc(rect("x", sx, zc - r, zc + r, 0.0, 2 * r), label, tyre)
    if kind == "car":
        _car_body(p, jit, (x0, x1), (z, z1, length), direction, glass)
    elif kind == "truck":  # cab and cargo box, far part first
        cab, cargo = (
            ((z1 - 2.2, z1), (z, z1 - 2.4)) if direction > 0 else ((z, z + 2.2), (z + 2.4, z1))
        )
        for (a, b), y0, y1, part_jit in sorted(
            [(cab, 0.5, 2.9, jit), (cargo, 0.8, 3.7, jitter(rng))], reverse=True
        ):
            _box(p, "truck", part_jit, x0, x1, y0, y1, a, b)
        if direction < 0:
            p.fill(rect("z", z - 0.01, x0 + 0.15, x1 - 0.15, 1.6, 2.6), label, glass)
    else:  # bus or tram: a long box with a band of side windows
        top, pitch = (3.1, 1.5) if kind == "bus" else (3.5, 2.0)
        _box(p, kind, jit, x0, x1, 0.3, top, z, z1)
        p.fill(
            rect("z", z - 0.01, x0 + 0.15, x1 - 0.15, 1.1 if direction < 0 else 1.8, top - 0.3),
            label,
            glass,
        )
        if sx is not None:
            zs = np.arange(z + 0.4, z1 - pitch * 0.6, pitch)
            p.fill(
                rect("x", sx * 0.999, zs, zs + pitch * 0.8, 1.3, top - 0.6),
                label,
                p.colours("window", jit, zs, p.domain.side_shade),
            )
            if kind == "train":  # joints between the cars
                zs = np.arange(z + 8.0, z1 - 1.0, 8.0)
                p.fill(
                    rect("x", sx * 0.998, zs, zs + 0.35, 0.3, top),
                    label,
                    p.colours("tyre", FLAT, zs),
                )
