"""One scene: sample a street, place the objects on its sidewalks and road, paint everything back
to front, and ``render`` it into an RGB image and its label map."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from dataset.synthetic.background import (
    draw_clouds,
    draw_facades,
    draw_fences,
    draw_ground,
    draw_skyline,
    draw_walls,
)
from dataset.synthetic.domains import (
    DOMAINS,
    EGO_VEHICLE_ID,
    OUT_OF_ROI_ID,
    STREAMS,
    UNLABELED_ID,
    jitter,
)
from dataset.synthetic.effects import night, photograph
from dataset.synthetic.geometry import SIDES, Street, sample_camera, sample_street
from dataset.synthetic.objects import person, pole, static, tree, two_wheeler, vehicle
from dataset.synthetic.painter import Painter


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
    p: Painter, rng: np.random.Generator, st: Street
) -> list[tuple[float, Callable[[], None]]]:
    """Everything on the sidewalks and the road, as (depth, draw) pairs."""
    items = []

    def add(z: float, draw: Callable[..., None], *args) -> None:
        items.append((z, partial(draw, p, rng, *args)))

    for i, sign in SIDES:
        edge, walk = st.edge[i], st.walk[i]
        for _ in range(1 + int(rng.poisson(1.4))):
            z = float(rng.uniform(4.0, 70.0))
            add(z, pole, sign * (edge + float(rng.uniform(0.3, 0.7))), z, -sign)
        if not st.terrain[i] and rng.random() < 0.6:
            for _ in range(int(rng.integers(1, 4))):
                z = float(rng.uniform(5.0, 80.0))
                add(z, tree, sign * (edge + 0.75 * (walk - edge)), z, False)
        if rng.random() < 0.4:
            z = float(rng.uniform(4.0, 40.0))
            add(z, static, sign * (walk - 0.5), z)
        for _ in range(int(rng.poisson(0.5))):  # parked two-wheelers
            z = float(rng.uniform(4.0, 35.0))
            add(z, two_wheeler, sign * (edge + 0.9), z, bool(rng.random() < 0.4), False)
    for _ in range(int(rng.poisson(3.5))):
        i, sign = SIDES[int(rng.integers(0, 2))]
        if rng.random() < 0.8:
            x = sign * float(rng.uniform(st.edge[i] + 0.4, st.walk[i] - 0.3))
            z = float(rng.uniform(3.5, 60.0))
        else:  # crossing the road
            x, z = float(rng.uniform(-st.edge[0], st.edge[1])), float(rng.uniform(7.0, 35.0))
        add(z, person, x, z)
    for _ in range(int(rng.poisson(1.6))):
        x = st.lanes[int(rng.integers(0, len(st.lanes)))][0] + float(rng.uniform(-1.0, 1.0))
        z = float(rng.uniform(5.0, 50.0))
        add(z, two_wheeler, x, z, bool(rng.random() < 0.5), True)
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
            add(z, vehicle, kind, x + float(rng.normal(0.0, 0.2)), z, length, direction)
    for i, sign in SIDES:  # parked cars
        for _ in range(int(rng.integers(1, 5)) if st.parking[i] else 0):
            z, length = float(rng.uniform(4.0, 60.0)), float(rng.uniform(3.8, 4.8))
            direction = 1 if rng.random() < 0.5 else -1
            add(z, vehicle, "car", sign * (st.edge[i] - 1.15), z, length, direction)
    return items


def _draw_scene(p: Painter, rng: np.random.Generator, hood_label: int | None) -> None:
    """Sample one street layout and paint it back to front: ground, far row, facades, walls,
    trees on the grass strips, fences, then sidewalk and road objects sorted by depth."""
    st = sample_street(rng, grass="terrain" not in p.domain.absent)
    draw_clouds(p, rng)
    draw_ground(p, rng, st)
    draw_skyline(p, rng, st)
    draw_facades(p, rng, st)
    draw_walls(p, rng, st)
    verge = []
    for i, sign in SIDES:
        for _ in range(int(rng.poisson(2.5)) if st.terrain[i] else 0):
            z, bush = float(rng.uniform(4.0, 90.0)), bool(rng.random() < 0.4)
            verge.append(
                (z, sign * float(rng.uniform(st.walk[i] + 0.5, st.building[i] - 0.5)), bush)
            )
    for z, x, bush in sorted(verge, reverse=True):
        tree(p, rng, x, z, bush)
    draw_fences(p, rng, st)
    for _, draw in sorted(_objects(p, rng, st), key=lambda item: -item[0]):
        draw()
    if hood_label is not None:  # the bonnet of the recording car, with a highlight
        width, height = p.camera.size
        top, jit = height * (1.0 - float(rng.uniform(0.08, 0.14))), jitter(rng)
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


def render(
    seed: int, domain: str, split: str, index: int, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (H, W, 3) uint8 RGB and (H, W) uint8 Cityscapes label ids.

    ``domain`` is "source" or "synthia" (split "all"), or "target" or "night" (split "train" or
    "val").
    """
    rng = np.random.default_rng([seed, *STREAMS[(domain, split)], index])
    look = DOMAINS[domain]
    camera = sample_camera(rng, size, look)
    light = (rng.uniform(0.8, 1.15) * (1.0 + rng.normal(0.0, 0.06, 3))).tolist()
    painter = Painter(camera, look, light, jitter(rng))
    hood: int | None = None
    if look.photographic:  # Cityscapes: the recording car's bonnet is always in view
        hood = EGO_VEHICLE_ID
    elif look.hood_chance and rng.random() < look.hood_chance:  # GTA5: in some frames
        hood = UNLABELED_ID
    _draw_scene(painter, rng, hood)
    rgb, ids = np.asarray(painter.image), np.array(painter.label)
    if look.photographic:
        rgb = photograph(rgb, ids, rng)
        if domain == "night":
            rgb = night(rgb, ids, rng)
        ids[-2:, :] = ids[:, :2] = ids[:, -2:] = OUT_OF_ROI_ID  # a thin border, as Cityscapes
    return rgb, ids
