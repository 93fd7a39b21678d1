"""The benchmarks that followed GTA5 -> Cityscapes, with Cityscapes as the labelled source:
ACDC and Dark Zurich (adverse conditions, night), NTHU CrossCity (other cities), in the layouts
they are distributed in (docs/data.md).

- ACDC: ``rgb_anon/<condition>/<split>/<sequence>/<name>_rgb_anon.png`` with
  ``gt/<condition>/<split>/<sequence>/<name>_gt_labelTrainIds.png``; or the conditions merged
  into ``rgb_anon/<split>/`` and ``gt/<split>/``, as DAFormer's README has them rearranged.
- Dark Zurich: ``rgb_anon/<split>/<condition>/<sequence>/<name>_rgb_anon.png``; labels
  ``gt/val/night/<sequence>/<name>_gt_labelTrainIds.png`` for the 50 night val images.
- NTHU CrossCity: ``<City>/Images/{Train,Test}/<name>.jpg`` (or .png) and
  ``<City>/Labels/Test/<name>_eval.png`` (Cityscapes label ids); list files name images with
  or without their extension, as MaxSquare's ``NTHU_list/<City>/List/{train,test}.txt``.

ACDC's and Dark Zurich's labels are trainIds already (a value that is not is an error naming
the file); CrossCity's are mapped from label ids and hold 13 classes.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import Tensor

from dataset.datasets import (
    DatasetLayoutError,
    MissingFileError,
    SegmentationDataset,
    _read_list,
    read_label,
)
from dataset.folder import read_train_ids
from dataset.transforms import PairedTransform

ANON_SUFFIX = "_rgb_anon.png"
TRAIN_ID_SUFFIX = "_gt_labelTrainIds.png"
ACDC_LAYOUT = (
    "expected <root>/rgb_anon/<condition>/<split>/<sequence>/*_rgb_anon.png and "
    "<root>/gt/<condition>/<split>/<sequence>/*_gt_labelTrainIds.png (ACDC layout), or the "
    "conditions merged into <root>/rgb_anon/<split>/ and <root>/gt/<split>/"
)
DARKZURICH_LAYOUT = (
    "expected <root>/rgb_anon/<split>/<condition>/<sequence>/*_rgb_anon.png and, for val, "
    "<root>/gt/val/night/<sequence>/*_gt_labelTrainIds.png (Dark Zurich layout)"
)
CROSSCITY_LAYOUT = (
    "expected <root>/<City>/Images/{Train,Test}/*.jpg and <root>/<City>/Labels/Test/*_eval.png "
    "(NTHU CrossCity layout)"
)
ACDC_CONDITIONS = ("fog", "night", "rain", "snow")


class _AnonymisedPairs(SegmentationDataset):
    """ACDC's and Dark Zurich's naming: images ``<root>/rgb_anon/<part>/.../<name>_rgb_anon.png``
    with trainId labels at the same relative path under ``<root>/gt/``,
    ``<name>_gt_labelTrainIds.png``. Every image ``depth`` levels below each part folder that
    ``_parts`` names for (condition, split), or those a list file names relative to
    ``rgb_anon/``."""

    NAME, LAYOUT = "", ""

    def __init__(
        self,
        root: str | os.PathLike,
        condition: str,
        split: str,
        transform: PairedTransform,
        list_file: str | os.PathLike | None = None,
        with_labels: bool = True,
    ) -> None:
        root = Path(root)
        images, labels = root / "rgb_anon", (root / "gt" if with_labels else None)
        parts, depth = self._parts(root, condition, split)
        for folder in (images, *(images / p for p in parts)):
            if not folder.is_dir():
                raise DatasetLayoutError(f"{self.NAME} folder {folder} not found: {self.LAYOUT}")
        if list_file is None:
            pattern = "/".join(["*"] * depth + [f"*{ANON_SUFFIX}"])
            found = [p for part in parts for p in (images / part).glob(pattern)]
            names = sorted(p.relative_to(images).as_posix() for p in found)
            if not names:
                raise DatasetLayoutError(
                    f"no images in {', '.join(str(images / p) for p in parts)}: {self.LAYOUT}"
                )
        else:
            names = []
            for number, entry in _read_list(list_file):
                if not (images / entry).is_file():
                    raise MissingFileError(
                        f"{list_file}:{number}: entry '{entry}': image {images / entry} not found"
                    )
                names.append(entry)
        items = []
        for name in names:
            label = None
            if labels is not None:
                label = labels / (name.removesuffix(ANON_SUFFIX) + TRAIN_ID_SUFFIX)
                if not label.is_file():
                    raise MissingFileError(f"label {label} of image {images / name} not found")
            items.append((images / name, label, name))
        super().__init__(items, transform)
        self.root, self.condition, self.split = root, condition, split

    def _parts(self, root: Path, condition: str, split: str) -> tuple[list[str], int]:
        """The part folders under ``rgb_anon/`` and how deep their images lie below them."""
        raise NotImplementedError

    def read_label(self, path: Path) -> Tensor:
        return read_train_ids(path)


class ACDC(_AnonymisedPairs):
    """ACDC's ``condition`` (fog, night, rain, snow, or all four) and ``split`` (train, val, or
    test, whose labels are withheld); labels are trainIds."""

    NAME, LAYOUT = "ACDC", ACDC_LAYOUT

    def _parts(self, root: Path, condition: str, split: str) -> tuple[list[str], int]:
        if (root / "rgb_anon" / split).is_dir():  # DAFormer's merged layout: flat split folders
            if condition != "all":
                raise DatasetLayoutError(
                    f"ACDC at {root} has its conditions merged into rgb_anon/{split}/, so "
                    f"condition {condition!r} cannot be selected: use condition all, or the "
                    f"original layout"
                )
            return [split], 0
        conditions = ACDC_CONDITIONS if condition == "all" else (condition,)
        return [f"{c}/{split}" for c in conditions], 1  # <condition>/<split>/<sequence>/


class DarkZurich(_AnonymisedPairs):
    """Dark Zurich's ``split`` and ``condition`` (night, twilight, day); only val/night is
    labelled (trainIds)."""

    NAME, LAYOUT = "Dark Zurich", DARKZURICH_LAYOUT

    def _parts(self, root: Path, condition: str, split: str) -> tuple[list[str], int]:
        return [f"{split}/{condition}"], 1  # <split>/<condition>/<sequence>/


class CrossCity(SegmentationDataset):
    """NTHU CrossCity's ``city`` (Rome, Rio, Tokyo, Taipei) and ``split`` (train, unlabelled;
    test, labelled with Cityscapes label ids of 13 classes). The image of a name is
    ``<name>.jpg``, else ``<name>.png`` (MaxSquare's order); its label ``<name>_eval.png``."""

    EXTENSIONS = (".jpg", ".png")

    def __init__(
        self,
        root: str | os.PathLike,
        city: str,
        split: str,
        transform: PairedTransform,
        list_file: str | os.PathLike | None = None,
        with_labels: bool = True,
    ) -> None:
        root, folder = Path(root), split.capitalize()
        images, labels = root / city / "Images" / folder, root / city / "Labels" / folder
        for path in (images, labels) if with_labels else (images,):
            if not path.is_dir():
                raise DatasetLayoutError(
                    f"NTHU CrossCity folder {path} not found: {CROSSCITY_LAYOUT}"
                )
        found: dict[str, Path] = {}
        for path in sorted(images.iterdir()):  # .jpg before .png
            if path.suffix.lower() in self.EXTENSIONS:
                found.setdefault(path.stem, path)
        if list_file is None:
            names = sorted(found)
            if not names:
                raise DatasetLayoutError(f"no .jpg or .png images in {images}: {CROSSCITY_LAYOUT}")
        else:
            names = []
            for number, entry in _read_list(list_file):
                suffix = Path(entry).suffix
                name = entry.removesuffix(suffix) if suffix.lower() in self.EXTENSIONS else entry
                if name not in found:
                    raise MissingFileError(f"{list_file}:{number}: entry '{entry}': image "
                                           f"{images / name}.jpg (or .png) not found")  # fmt: skip
                names.append(name)
        items = []
        for name in names:
            label = labels / f"{name}_eval.png" if with_labels else None
            if label is not None and not label.is_file():
                raise MissingFileError(f"label {label} of image {found[name]} not found")
            items.append((found[name], label, found[name].name))
        super().__init__(items, transform)
        self.root, self.city, self.split = root, city, split

    def read_label(self, path: Path) -> Tensor:
        """Cityscapes label ids -> trainIds (the 13 classes CrossCity labels)."""
        return read_label(path)
