"""What stands behind the street's objects: clouds, the ground (road, sidewalks, grass strips,
markings), the distant skyline, the facades with their windows, garden walls and fences."""

from __future__ import annotations

import numpy as np

from dataset.synthetic.domains import ID, Jitter, jitter
from dataset.synthetic.geometry import SIDES, Street, rect
from dataset.synthetic.painter import Painter, Sprite


def draw_clouds(p: Painter, rng: np.random.Generator) -> None:
    width = p.camera.size[0]
    for _ in range(int(rng.integers(0, 5))):
        u, v = rng.uniform(0, width), rng.uniform(0.05, 0.8) * p.camera.cy
        colour = p.colour("cloud", jitter(rng), 0.0)
        for _ in range(int(rng.integers(2, 5))):
            cu, cv = u + rng.normal(0, 0.05 * width), v + rng.normal(0, 0.01 * width)
            rx, ry = rng.uniform(0.04, 0.1) * width, rng.uniform(0.01, 0.025) * width
            p.ellipse((cu - rx, cv - ry, cu + rx, cv + ry), ID["sky"], colour)


def draw_ground(p: Painter, rng: np.random.Generator, st: Street) -> None:
    """Grass (paved where the world has no terrain) beyond everything, road, sidewalks with
    curbs, grass strips, lane markings."""

    def ground(name: str, x0: float, x1: float, z1: float, jit: Jitter, depth: float = 20.0):
        x0, x1 = sorted((x0, x1))
        p.fill(rect("y", 0.0, x0, x1, 0.4, z1), ID[name], p.colour(name, jit, depth))

    far = "sidewalk" if "terrain" in p.domain.absent else "terrain"
    ground(far, -600.0, 600.0, 2000.0, jitter(rng), 300.0)
    road_jit = jitter(rng)
    ground("road", -st.edge[0], st.edge[1], st.far, road_jit)
    for i, sign in SIDES:
        walk_jit = jitter(rng)
        ground("sidewalk", sign * st.building[i], sign * st.edge[i], st.end, walk_jit)
        if st.terrain[i]:
            ground("terrain", sign * st.building[i], sign * st.walk[i], st.end, jitter(rng))
        curb = p.colour("sidewalk", walk_jit, 20.0, p.domain.side_shade)
        p.fill(rect("x", sign * st.edge[i], 0.4, st.end, 0.0, 0.15), ID["sidewalk"], curb)
    # Markings, lighter road: dashes between lanes, a solid line along each side, a crossing.
    mark = p.colour("road", road_jit, 20.0, 1.9)
    z0 = np.arange(rng.uniform(1.0, 10.0), min(st.end, 150.0), 9.0)
    for x in sorted(x - st.lane_width / 2 for x, _ in st.lanes)[1:]:
        w = 0.11 if abs(x - st.centre) < 0.1 else 0.075
        p.fill(rect("y", 0.0, x - w, x + w, z0, z0 + 3.0), ID["road"], np.full((len(z0), 3), mark))
    for i, sign in SIDES:
        x = sign * (st.edge[i] - (2.3 if st.parking[i] else 0.3))
        p.fill(rect("y", 0.0, x - 0.07, x + 0.07, 0.4, st.end), ID["road"], mark)
    if rng.random() < 0.35:
        zc = float(rng.uniform(9.0, 25.0))
        xs = np.arange(-st.edge[0] + 0.5, st.edge[1] - 0.5, 1.1)
        p.fill(rect("y", 0.0, xs, xs + 0.55, zc, zc + 3.0), ID["road"], np.full((len(xs), 3), mark))


def _windows(
    p: Painter,
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
        rect(plane, c, a, a + 0.5 * step, b, b + 1.6),
        None,
        p.colours("window", jit, depth, shades),
    )


def draw_skyline(p: Painter, rng: np.random.Generator, st: Street) -> None:
    """A row of distant buildings and trees across the whole view at the end of the street."""
    blocks, x = [], -float(rng.uniform(150.0, 200.0))
    while x < 200.0:
        w = float(rng.uniform(8.0, 30.0))
        z, h = st.far + float(rng.uniform(0.0, 30.0)), float(rng.uniform(4.0, 32.0))
        blocks.append((z, x, x + w, h, float(rng.random()), jitter(rng)))
        x += w
    for z, x0, x1, h, kind, jit in sorted(blocks, reverse=True):
        if kind < 0.12:
            continue  # a gap: sky
        if kind < 0.35:
            s, w = Sprite(p, (x0 + x1) / 2, z), x1 - x0
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
            p.face(rect("z", z, x0, x1, 0.0, h), "building", jit)
            _windows(p, rng, "z", z, x0, x1, h, jit, 1.0)


def draw_facades(p: Painter, rng: np.random.Generator, st: Street) -> None:
    """Building blocks along both sides, drawn far to near; some gaps hold hedges or walls."""
    side = p.domain.side_shade
    for i, sign in SIDES:
        x, segments, z = sign * st.building[i], [], float(rng.uniform(0.4, 3.0))
        while z < st.end:
            z1 = min(z + float(rng.uniform(8.0, 28.0)), st.end)
            segments.append(
                (z, z1, float(rng.uniform(5.0, 24.0)), float(rng.random()), jitter(rng))
            )
            z = z1
        for z0, z1, h, kind, jit in reversed(segments):
            if kind < 0.1:
                p.face(rect("x", x, z0, z1, 0.0, 1.0 + h / 10), "vegetation", jit, 0.9)
            elif kind < 0.16:
                p.face(rect("x", x, z0, z1, 0.0, 2.0), "wall", jit, side)
            else:
                p.face(rect("z", z0, x, x + sign * 15.0, 0.0, h), "building", jit)  # near end
                p.face(rect("x", x, z0, z1, 0.0, h), "building", jit, side)
                _windows(p, rng, "x", x * 0.999, z0, z1, h, jit, side)
                if rng.random() < 0.5:  # shop front on the ground floor
                    p.fill(
                        rect("x", x * 0.999, z0 + 0.5, z1 - 0.5, 0.3, 2.6),
                        None,
                        p.colour("window", jit, (z0 + z1) / 2, 0.8 * side),
                    )


def draw_walls(p: Painter, rng: np.random.Generator, st: Street) -> None:
    """Garden walls with masonry seams in front of the facades."""
    for i, sign in SIDES:
        for _ in range(int(rng.random() < 0.55) + int(rng.random() < 0.2)):
            x, z0, jit = sign * (st.building[i] - 0.3), float(rng.uniform(3.0, 50.0)), jitter(rng)
            z1, h = z0 + float(rng.uniform(6.0, 28.0)), float(rng.uniform(0.9, 3.0))
            p.face(rect("x", x, z0, z1, 0.0, h), "wall", jit, p.domain.side_shade)
            p.face(rect("y", h, x, x + sign * 0.4, z0, z1), "wall", jit, 1.1)
            ys = np.arange(0.5, h - 0.2, 0.5)
            seams = p.colours("wall", jit, np.full_like(ys, (z0 + z1) / 2), 0.6)
            p.fill(rect("x", x * 0.999, z0, z1, ys, ys + 0.06), None, seams)


def draw_fences(p: Painter, rng: np.random.Generator, st: Street) -> None:
    """Fences along the outer sidewalk edge: a slatted panel with a top rail."""
    for i, sign in SIDES:
        if rng.random() >= 0.5:
            continue
        x, z0, jit = sign * st.walk[i], float(rng.uniform(3.0, 40.0)), jitter(rng)
        z1, h = z0 + float(rng.uniform(6.0, 30.0)), float(rng.uniform(0.9, 1.8))
        p.face(rect("x", x, z0, z1, 0.0, h), "fence", jit, p.domain.side_shade)
        zs = np.arange(z0 + 0.15, z1, 0.3)
        p.fill(rect("x", x * 0.999, zs, zs + 0.06, 0.0, h), None, p.colours("fence", jit, zs, 0.55))
        p.fill(
            rect("x", x * 0.998, z0, z1, h - 0.12, h),
            None,
            p.colour("fence", jit, (z0 + z1) / 2, 1.15),
        )
