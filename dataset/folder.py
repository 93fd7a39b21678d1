"""Any folder of images as a domain (``dataset: folder``): a user's own camera, unlabelled as a
target, or labelled as a source or a val set, with a label map from its own ids to trainIds.

Images are every file under ``root`` whose extension PIL opens (png, jpg, bmp, tif, webp...),
searched recursively, in the sorted order of their relative paths, turned upright by their
EXIF orientation (as ``predict.py`` reads them). A ``list_file`` selects some of them by
relative path. The label of ``a/b.jpg`` is ``<label_root>/a/b<label_suffix>``: the image's
name with ``image_suffix`` (default: its extension) replaced by ``label_suffix`` (default
``.png``), an 8-bit single-channel PNG. Its ids are trainIds unless ``label_map`` names a YAML
file of ``id: trainId`` lines; ids the map does not list are ignored.

Every image header (and each label's) is read when the dataset is built, so an empty folder, a
missing label, a label of another size and an unreadable file are errors naming the file before
any training step; with ``skip_unreadable`` a training set skips unreadable images instead,
counted in the log.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image, ImageOps
from torch import Tensor

from dataset.datasets import (
    CorruptImageError,
    DatasetError,
    DatasetLayoutError,
    LabelFormatError,
    MissingFileError,
    SegmentationDataset,
    SizeMismatchError,
    _read_list,
    _require,
    read_label,
)
from dataset.labels import IGNORE_INDEX, NUM_CLASSES
from dataset.transforms import PairedTransform

logger = logging.getLogger(__name__)

# What PIL raises on a file it cannot open or decode.
UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_SHOWN = 5  # files named in a message


class LabelMapError(DatasetError, ValueError):
    """A ``label_map`` file is missing, not YAML, or maps an id outside 0..255 or to a trainId
    the model does not have."""


def image_extensions() -> frozenset[str]:
    """The file extensions (lower case, with the dot) that PIL can open."""
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def find_images(root: Path, exclude: Iterable[Path] = ()) -> tuple[list[Path], list[Path]]:
    """Every file under ``root`` whose extension PIL opens, outside the folders ``exclude``,
    sorted by relative path; and the other files found there, in the same order."""
    skip = [p.resolve() for p in exclude]
    files = [p for p in root.rglob("*") if p.is_file()]
    files = [p for p in files if not any(s in p.resolve().parents for s in skip)]
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    extensions = image_extensions()
    images = [p for p in files if p.suffix.lower() in extensions]
    return images, [p for p in files if p.suffix.lower() not in extensions]


def read_label_map(path: str | os.PathLike, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """The 256-entry uint8 lookup table of a YAML ``id: trainId`` map; unlisted ids -> 255.

    A trainId is 0..num_classes-1, or 255 to ignore an id explicitly."""
    path = Path(path)
    if not path.is_file():
        raise LabelMapError(f"label_map {path} not found")
    try:
        entries = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise LabelMapError(f"label_map {path} is not YAML: {err}") from err
    if not isinstance(entries, dict) or not entries:
        raise LabelMapError(f"label_map {path}: expected 'id: trainId' lines, got {entries!r}")
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for key, value in entries.items():
        if type(key) is not int or not 0 <= key <= 255:
            raise LabelMapError(f"label_map {path}: id {key!r} is not a label id in 0..255")
        if type(value) is not int or not (0 <= value < num_classes or value == IGNORE_INDEX):
            raise LabelMapError(
                f"label_map {path}: id {key} maps to {value!r}; expected a trainId in "
                f"0..{num_classes - 1} or {IGNORE_INDEX} (ignored)"
            )
        lut[key] = value
    return lut


def read_train_ids(path: Path, hint: str = "") -> Tensor:
    """An 8-bit label PNG of trainIds (0..18, 255 ignored) as (H, W) uint8; any other value is a
    ``LabelFormatError`` naming the file (``hint`` says what to do about it)."""
    ids = read_label(path, lut=None)
    bad = (ids >= NUM_CLASSES) & (ids != IGNORE_INDEX)
    if bad.any():
        values = torch.unique(ids[bad]).tolist()
        raise LabelFormatError(
            f"label {path} holds {values[:_SHOWN]}{'...' if len(values) > _SHOWN else ''}, which "
            f"are not trainIds (0..{NUM_CLASSES - 1}, {IGNORE_INDEX} ignored){hint}"
        )
    return ids


def header_size(path: Path) -> tuple[int, int]:
    """(W, H) of an image as it reads upright (EXIF orientation applied), from its header; a
    ``CorruptImageError`` naming the file when PIL cannot open it."""
    try:
        with Image.open(path) as pil:
            width, height = pil.size
            if pil.getexif().get(0x0112) in _TRANSPOSED:
                width, height = height, width
    except UNREADABLE as err:
        raise CorruptImageError(f"cannot read image {path}: {err}") from err
    return width, height


def read_upright(path: Path) -> Tensor:
    """Decode any image PIL reads to uint8 RGB (3, H, W), upright by its EXIF orientation."""
    try:
        with Image.open(path) as pil:
            rgb = np.array(ImageOps.exif_transpose(pil).convert("RGB"))  # (H, W, 3)
    except UNREADABLE as err:
        raise CorruptImageError(f"cannot read image {path}: {err}") from err
    return torch.from_numpy(rgb).permute(2, 0, 1)


def listed(lines: Sequence[str]) -> str:
    """The first few of ``lines`` joined by commas, then how many more there are."""
    shown = ", ".join(lines[:_SHOWN])
    return shown + (f" and {len(lines) - _SHOWN} more" if len(lines) > _SHOWN else "")


class FolderDataset(SegmentationDataset):
    """The images under ``root`` (see the module docstring), with labels when ``label_root``
    is given. ``label_lut`` maps label ids to trainIds (``read_label_map``); None: the labels
    are trainIds. ``skip_unreadable``: images PIL cannot open are skipped and counted, not an
    error (for training sets only; a val set scores every image)."""

    def __init__(
        self,
        root: str | os.PathLike,
        transform: PairedTransform,
        list_file: str | os.PathLike | None = None,
        label_root: str | os.PathLike | None = None,
        label_suffix: str = ".png",
        image_suffix: str = "",
        label_lut: np.ndarray | None = None,
        skip_unreadable: bool = False,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetLayoutError(f"folder dataset root {root} not found")
        labels = Path(label_root) if label_root else None
        if labels is not None and not labels.is_dir():
            raise DatasetLayoutError(f"folder dataset label_root {labels} not found")
        images = self._images(root, list_file, exclude=[labels] if labels else [])
        unreadable, items = [], []
        for path in images:
            name = path.relative_to(root).as_posix()
            try:
                size = header_size(path)
            except CorruptImageError:
                unreadable.append(name)
                continue
            label = None
            if labels is not None:
                label = self._label(labels, name, image_suffix, label_suffix)
                self._check_label(label, size, path)
            items.append((path, label, name))
        if unreadable and not skip_unreadable:
            raise CorruptImageError(
                f"{len(unreadable)} of {len(images)} images under {root} cannot be read: "
                f"{listed(unreadable)}; skip them in training with skip_unreadable=true"
            )
        if unreadable:
            logger.warning("skipping %d of %d images under %s that cannot be read: %s",
                           len(unreadable), len(images), root, listed(unreadable))  # fmt: skip
        if not items:
            raise DatasetLayoutError(f"no readable image under {root}")
        super().__init__(items, transform)
        self.root, self.label_lut, self.skip_unreadable = root, label_lut, skip_unreadable
        self.skipped = len(unreadable)

    @staticmethod
    def _images(root: Path, list_file: str | os.PathLike | None, exclude: list[Path]) -> list[Path]:
        if list_file is None:
            images, others = find_images(root, exclude)
            if not images:
                found = [p.relative_to(root).as_posix() for p in others]
                raise DatasetLayoutError(
                    f"no images under {root} (searched recursively for the extensions PIL "
                    f"reads: .png, .jpg, .tif, .webp, ...; "
                    f"{'found only ' + listed(found) if found else 'it holds no file'})"
                )
            return images
        images = []
        for number, entry in _read_list(list_file):
            _require(root / entry, "image", list_file, number, entry)
            images.append(root / entry)
        return images

    @staticmethod
    def _label(labels: Path, name: str, image_suffix: str, label_suffix: str) -> Path:
        stem = Path(name)
        suffix = image_suffix or stem.suffix
        if not stem.name.endswith(suffix):
            raise MissingFileError(
                f"image {name} does not end with image_suffix {image_suffix!r}, so its label "
                f"name cannot be formed"
            )
        label = labels / stem.parent / (stem.name.removesuffix(suffix) + label_suffix)
        if not label.is_file():
            raise MissingFileError(f"label {label} of image {name} not found")
        return label

    @staticmethod
    def _check_label(label: Path, size: tuple[int, int], image: Path) -> None:
        try:
            with Image.open(label) as pil:
                label_size = pil.size
        except UNREADABLE as err:
            raise CorruptImageError(f"cannot read label {label}: {err}") from err
        if label_size != size:
            raise SizeMismatchError(
                f"label {label} is {label_size[0]}x{label_size[1]} but its image {image} is "
                f"{size[0]}x{size[1]}"
            )

    def read_image(self, path: Path) -> Tensor:
        return read_upright(path)

    def read_label(self, path: Path) -> Tensor:
        if self.label_lut is None:
            return read_train_ids(path, hint=": give the folder's label ids a label_map")
        return read_label(path, lut=self.label_lut)

    def load(self, index: int) -> tuple[Tensor, Tensor | None, str]:
        """As ``SegmentationDataset``'s; with ``skip_unreadable``, an image that fails to
        decode (its header read, its data did not) is logged and the next one taken."""
        for attempt in range(len(self)):
            try:
                return super().load((index + attempt) % len(self))
            except CorruptImageError as err:
                if not self.skip_unreadable:
                    raise
                logger.warning("%s: skipped, the next image taken instead", err)
        raise CorruptImageError(f"no image under {self.root} can be decoded")
