"""The dataset on disk: what to generate (``SyntheticSpec``), the files of every image (GTA5,
SYNTHIA and Cityscapes layouts, and the night domain's plain folders), the manifest
``synthetic.json``, ``generate`` (atomic) and ``ensure_synthetic`` (reuse or generate)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from dataset.labels import ID_TO_TRAIN_ID, LABEL_IDS, PALETTE, SYNTHIA_TO_TRAIN_ID
from dataset.synthetic.scene import render
from utils.errors import OutputExistsError

logger = logging.getLogger("dataset.synthetic")  # the package's name, as before the split

FORMAT_VERSION = 2  # bump whenever the pictures change, so stale datasets are not reused
SYNTHIA_FORMAT_VERSION = 1  # the same for the SYNTHIA-layout pictures alone
NIGHT_FORMAT_VERSION = 1  # the same for the night domain's pictures alone
NIGHT_DRIVE = 50  # night frames per drive folder
MANIFEST = "synthetic.json"
TRAIN_CITIES = ("aachen", "bochum")
VAL_CITIES = ("frankfurt", "lindau", "munster")
CITYSCAPES_FRAME = 19  # the annotated frame of every Cityscapes snippet


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
    num_night: int = 0  # night-and-fog frames in the folder layout, unlabelled (a third domain)
    num_night_val: int = 0  # labelled night-and-fog frames (at target_size, as num_night's)

    def __post_init__(self) -> None:
        counts = ("seed", "num_source", "num_train", "num_val", "num_synthia", "num_night",
                  "num_night_val")  # fmt: skip
        for name in counts:
            if getattr(self, name) < 0:
                raise ValueError(f"SyntheticSpec.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("source_size", "target_size", "synthia_size"):
            size = getattr(self, name)
            if len(size) != 2 or min(size) < 32:
                raise ValueError(f"SyntheticSpec.{name} must be (W, H), both >= 32, got {size}")


class _Job(NamedTuple):
    domain: str
    split: str
    index: int
    size: tuple[int, int]
    image: str  # relative paths
    label: str  # "" for an unlabelled image


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
    jobs += [
        _Job("night", "train", i, spec.target_size,
             f"Night/frames/drive_{i // NIGHT_DRIVE:02d}/{i % NIGHT_DRIVE:06d}.jpg", "")
        for i in range(spec.num_night)
    ]  # fmt: skip
    jobs += [
        _Job("night", "val", i, spec.target_size, f"Night/val/images/{i:06d}.jpg",
             f"Night/val/labels/{i:06d}.png")
        for i in range(spec.num_night_val)
    ]  # fmt: skip
    return jobs


def _write(root: Path, job: _Job, seed: int, palette: list[int]) -> None:
    rgb, ids = render(seed, job.domain, job.split, job.index, job.size)
    image_path, label_path = root / job.image, root / job.label
    image_path.parent.mkdir(parents=True, exist_ok=True)
    if job.domain == "night":  # a dashcam's JPEGs; labels are trainIds, as a user's own
        Image.fromarray(rgb).save(image_path, quality=90)
        if job.label:
            label_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ID_TO_TRAIN_ID[ids]).save(label_path)
        return
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
        if spec.num_night == spec.num_night_val == 0 and key in ("num_night", "num_night_val"):
            continue
        record[key] = list(value) if isinstance(value, tuple) else value
    if spec.num_synthia:
        record["synthia_format_version"] = SYNTHIA_FORMAT_VERSION
    if spec.num_night or spec.num_night_val:
        record["night_format_version"] = NIGHT_FORMAT_VERSION
    return record


def _existing_matches(out: Path, spec: SyntheticSpec) -> bool:
    """True if ``out`` holds a complete dataset of ``spec``, False if it does not exist.

    Raises ``OutputExistsError`` (a ``FileExistsError``) when ``out`` exists with anything else
    in it.
    """
    if not out.exists():
        return False
    manifest = out / MANIFEST
    if not manifest.is_file():
        raise OutputExistsError(
            f"{out} exists but is not a complete synthetic dataset (no {MANIFEST}); "
            "remove it or choose another path"
        )
    try:
        found = json.loads(manifest.read_text())
    except json.JSONDecodeError as err:
        raise OutputExistsError(f"{manifest} is not valid JSON ({err}); remove {out}") from err
    expected = _manifest(spec)
    differ = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
    if differ:
        details = "; ".join(
            f"{k}: {found.get(k)!r} on disk, {expected.get(k)!r} requested" for k in differ
        )
        raise OutputExistsError(
            f"{manifest} describes another synthetic dataset ({details}); "
            f"remove {out} or choose another path"
        )
    return True


def generate(out: str | Path, spec: SyntheticSpec, progress: bool = True) -> Path:
    """Write the dataset of ``spec`` to ``out`` atomically; returns ``out``.

    Files go to a temporary sibling folder that is renamed to ``out`` once ``synthetic.json``
    is written, so an interrupted run leaves no partial dataset. An existing complete dataset
    of the same spec is returned as is; anything else at ``out`` raises ``OutputExistsError``.
    ``progress``: a bar over the images of each domain and split as they are written.
    """
    out = Path(out)
    if _existing_matches(out, spec):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        tmp.chmod(0o755)
        palette = _gta5_palette()
        for (domain, split), group in groupby(_jobs(spec), key=lambda j: (j.domain, j.split)):
            name = domain if split == "all" else f"{domain} {split}"
            for job in tqdm(list(group), desc=f"synthetic {name}", unit="img",
                            disable=not progress):  # fmt: skip
                _write(tmp, job, spec.seed, palette)
        (tmp / MANIFEST).write_text(json.dumps(_manifest(spec), indent=2) + "\n")
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def ensure_synthetic(out: str | Path, spec: SyntheticSpec) -> Path:
    """Return ``out`` if it holds the dataset of ``spec``, generating it (with its progress
    bars) if ``out`` is absent.

    Raises ``OutputExistsError`` (naming ``synthetic.json`` and the differing fields) if ``out``
    holds another dataset.
    """
    out = Path(out)
    if _existing_matches(out, spec):
        logger.info("using the synthetic dataset at %s", out)
        return out
    total = (spec.num_source + spec.num_train + spec.num_val + spec.num_synthia + spec.num_night
             + spec.num_night_val)  # fmt: skip
    logger.info(
        "generating the synthetic dataset (%d images, seed %d) at %s", total, spec.seed, out
    )
    start = time.perf_counter()
    generate(out, spec)
    logger.info("synthetic dataset written in %.1f s", time.perf_counter() - start)
    return out
