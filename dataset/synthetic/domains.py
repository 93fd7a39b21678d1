"""The synthetic benchmark's domains and the vocabulary every drawer shares.

Each domain's look: class colours, their spread, haze, shading and the viewpoint's ranges; the
random stream of each (domain, split); the target's texture per class; Cityscapes label ids by
class name and the ignored ids that scenes draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dataset.labels import CLASS_NAMES, LABEL_IDS

ID = dict(zip(CLASS_NAMES, LABEL_IDS))  # class name -> Cityscapes label id
UNLABELED_ID, EGO_VEHICLE_ID, OUT_OF_ROI_ID, STATIC_ID = 0, 1, 3, 4  # ignored ids we draw

Colour = tuple[int, int, int]
Jitter = Sequence[float]  # (brightness, r, g, b) standard normals of one instance
FLAT: Jitter = (0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Domain:
    """The appearance of one domain: class colours, their spread and the image formation."""

    colours: dict[str, Colour]  # mean colour of each class, plus parts ("window", "skin", ...)
    colour_jitter: float  # per-channel std of an instance's colour
    brightness_jitter: float  # relative std of an instance's brightness
    haze: float  # weight of the horizon colour at infinite distance
    haze_distance: float  # metres
    side_shade: float  # brightness of faces that run along the street
    photographic: bool  # texture, lighting, exposure, blur and sensor noise (effects.photograph)
    # The viewpoint: ranges of the focal length (x W), the horizon row (x H) and the camera's
    # height (metres).
    focal: tuple[float, float] = (0.68, 0.82)
    horizon: tuple[float, float] = (0.38, 0.47)
    elevation: tuple[float, float] = (1.35, 1.8)
    hood_chance: float = 0.0  # how often an unlabelled bonnet is in view (photographic: always)
    absent: frozenset[str] = frozenset()  # classes this world lacks


_SOURCE = Domain(
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
_TARGET = Domain(
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
_SYNTHIA = Domain(
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

# The night domain is the target's world and camera after dark and in fog (effects.night).
DOMAINS = {"source": _SOURCE, "target": _TARGET, "synthia": _SYNTHIA, "night": _TARGET}
# (domain, split) -> the two seed words after the dataset seed.
STREAMS = {
    ("source", "all"): (0, 0),
    ("target", "train"): (1, 1),
    ("target", "val"): (1, 2),
    ("synthia", "all"): (2, 0),
    ("night", "train"): (3, 1),
    ("night", "val"): (3, 2),
}

# Classes whose instances vary more than the rest (in both domains).
SPREAD = {"building": 2.2, "car": 2.6, "person": 2.0, "rider": 1.6, "truck": 1.4, "sky": 0.6}

# Relative texture amplitude per class in the target domain (camera images are not flat).
_TEXTURE = {
    "road": 0.04, "sidewalk": 0.05, "building": 0.06, "wall": 0.06, "fence": 0.06,
    "pole": 0.03, "light": 0.03, "sign": 0.03, "vegetation": 0.16, "terrain": 0.1,
    "sky": 0.015, "person": 0.04, "rider": 0.04, "car": 0.03, "truck": 0.03, "bus": 0.03,
    "train": 0.03, "motorcycle": 0.04, "bicycle": 0.04,
}  # fmt: skip
TEXTURE_LUT = np.full(256, 0.03, dtype=np.float32)
TEXTURE_LUT[[ID[name] for name in _TEXTURE]] = list(_TEXTURE.values())


def jitter(rng: np.random.Generator) -> list[float]:
    return rng.standard_normal(4).tolist()
