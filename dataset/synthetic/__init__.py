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
  SYNTHIA's;
- night (plain folders, ``num_night`` and ``num_night_val`` images, none by default): the
  target's world and camera after dark and in fog, underexposed and blue-shifted, lit by
  headlights and street lamps, a fog veil at the horizon and stronger sensor noise: "your own
  camera", as JPEG frames in drive folders with no labels, and a labelled val folder.

Each image draws from its own ``numpy.random.Generator`` seeded with (seed, domain, split,
index): a file's bytes depend on those alone, never on the counts or the order.

    python -m dataset.synthetic --out data/synthetic --seed 0 --num-train 200 --num-val 60

writes ``<out>/GTA5/{images,labels}/00001.png ...`` (labels: palettised PNGs of Cityscapes
label ids), ``<out>/Cityscapes/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png``
with grey ``gtFine/.../*_gtFine_labelIds.png`` beside, and last ``<out>/synthetic.json`` with
the generation parameters, whose presence marks a complete dataset. ``--num-synthia N`` adds
``<out>/SYNTHIA/RGB/0000000.png ...`` with ``GT/LABELS/<same>.png``: 16-bit 3-channel PNGs
with SYNTHIA's class ids in the first channel (RGB order), written by OpenCV. ``--num-night N
--num-night-val M`` adds ``<out>/Night/frames/drive_00/000000.jpg ...`` (50 a drive) and
``<out>/Night/val/images/000000.jpg ...`` with ``Night/val/labels/000000.png`` (8-bit trainIds,
255 ignored).

The modules, by role: ``domains`` (class colours and each domain's look), ``geometry`` (the
camera, world rectangles and the street's layout), ``painter`` (one drawing into the image and
the label map), ``background`` (ground, skyline, facades, walls, fences), ``objects`` (trees,
poles, lights, signs, people, two-wheelers, vehicles), ``scene`` (the objects' placement, the
drawing order and ``render``), ``effects`` (the target's photo effects) and ``writer`` (the
files, the manifest, ``generate`` and ``ensure_synthetic``); the command line is ``main``, here.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from dataset.synthetic.scene import render
from dataset.synthetic.writer import (
    FORMAT_VERSION,
    SYNTHIA_FORMAT_VERSION,
    TRAIN_CITIES,
    VAL_CITIES,
    SyntheticSpec,
    ensure_synthetic,
    generate,
)
from utils.errors import add_debug_flag, at_least

__all__ = [  # what the loaders, the benchmarks and the tests use
    "FORMAT_VERSION",
    "SYNTHIA_FORMAT_VERSION",
    "TRAIN_CITIES",
    "VAL_CITIES",
    "SyntheticSpec",
    "ensure_synthetic",
    "generate",
    "main",
    "render",
]


def _parser(defaults: SyntheticSpec) -> argparse.ArgumentParser:
    """The command line's options, each defaulting to ``defaults``' value."""
    parser = argparse.ArgumentParser(
        prog="python -m dataset.synthetic", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="dataset root to create")
    parser.add_argument("--seed", type=at_least(0), default=defaults.seed)
    parser.add_argument(
        "--num-source", type=at_least(0), default=defaults.num_source, help="GTA5-layout images"
    )
    parser.add_argument(
        "--num-train", type=at_least(0), default=defaults.num_train, help="Cityscapes train images"
    )
    parser.add_argument(
        "--num-val", type=at_least(0), default=defaults.num_val, help="Cityscapes val images"
    )
    parser.add_argument(
        "--source-size",
        type=at_least(32),
        nargs=2,
        default=defaults.source_size,
        metavar=("W", "H"),
    )
    parser.add_argument(
        "--target-size",
        type=at_least(32),
        nargs=2,
        default=defaults.target_size,
        metavar=("W", "H"),
    )
    parser.add_argument(
        "--num-synthia", type=at_least(0), default=defaults.num_synthia,
        help="SYNTHIA-layout source images (a second source)",
    )  # fmt: skip
    parser.add_argument(
        "--synthia-size",
        type=at_least(32),
        nargs=2,
        default=defaults.synthia_size,
        metavar=("W", "H"),
    )
    parser.add_argument(
        "--num-night", type=at_least(0), default=defaults.num_night,
        help="night-and-fog frames in a plain folder (a third domain, unlabelled)",
    )  # fmt: skip
    parser.add_argument(
        "--num-night-val", type=at_least(0), default=defaults.num_night_val,
        help="labelled night-and-fog frames",
    )  # fmt: skip
    add_debug_flag(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: generate a synthetic dataset (see the module docstring)."""
    args = _parser(SyntheticSpec()).parse_args(argv)
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
        num_night=args.num_night,
        num_night_val=args.num_night_val,
    )
    start = time.perf_counter()
    out = generate(args.out, spec)
    print(f"synthetic dataset at {out} ({time.perf_counter() - start:.1f} s)")
    return 0
