"""GTA5, SYNTHIA and Cityscapes readers, a resumable infinite sampler and the loaders built on it.

Every sample is a pure function of (index, seed): ``dataset[index, seed]`` seeds a fresh
``torch.Generator`` for the augmentation. ``InfiniteSampler`` yields those pairs from a stream
that depends only on (seed, position), so ``infinite_loader(..., start_step=k)`` continues a run
exactly, whatever ``num_workers`` is. Data errors are specific exceptions naming the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from dataset.labels import ID_TO_TRAIN_ID, SYNTHIA_ID_TO_TRAIN_ID
from dataset.transforms import PairedTransform
from utils.errors import UserError

logger = logging.getLogger(__name__)

GTA5_LAYOUT = "expected <root>/images/*.png and <root>/labels/*.png (GTA5 layout)"
SYNTHIA_LAYOUT = (
    "expected <root>/RGB/*.png and <root>/GT/LABELS/*.png (SYNTHIA-RAND-CITYSCAPES layout)"
)
CITYSCAPES_LAYOUT = (
    "expected <root>/leftImg8bit/<split>/<city>/*_leftImg8bit.png and "
    "<root>/gtFine/<split>/<city>/*_gtFine_labelIds.png (Cityscapes layout)"
)
CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit.png"
CITYSCAPES_LABEL_SUFFIX = "_gtFine_labelIds.png"


class DatasetError(UserError):
    """Base class of the data errors below."""


class DatasetLayoutError(DatasetError, FileNotFoundError):
    """A root, split folder or list file is missing, or a folder holds no images."""


class MissingFileError(DatasetError, FileNotFoundError):
    """An image or its label, found by scanning or named in a list file, does not exist."""


class CorruptImageError(DatasetError, ValueError):
    """An image or label file cannot be decoded."""


class LabelFormatError(DatasetError, ValueError):
    """A label image is not in its dataset's format: a single-channel id map (PIL mode "P" or
    "L"), or for SYNTHIA a 16-bit multi-channel PNG."""


class SizeMismatchError(DatasetError, ValueError):
    """A label's size differs from its image's where that is not allowed."""


class Sample(NamedTuple):
    image: Tensor  # (3, H, W) float32, normalised BGR
    label: Tensor | None  # (H, W) int64 trainIds, 255 ignored; None for unlabelled data
    name: str  # image path relative to the dataset's image folder


class Batch(NamedTuple):
    image: Tensor  # (B, 3, H, W)
    label: Tensor | None  # (B, H, W) or None
    names: list[str]


def collate(samples: list[Sample]) -> Batch:
    """Stack samples into a ``Batch``; labels must be all present or all None."""
    labels = [s.label for s in samples]
    missing = sum(label is None for label in labels)
    if 0 < missing < len(samples):
        raise ValueError(
            f"cannot batch labelled with unlabelled samples: {[s.name for s in samples]}"
        )
    sizes = {tuple(s.image.shape[-2:]) for s in samples}
    if len(sizes) > 1:
        raise ValueError(
            f"cannot batch images of different sizes {sorted(sizes)} ({[s.name for s in samples]})"
            f": without a crop, a random rescale (scale_range, image_rescale) gives each image its "
            f"own size; use data.batch_size=1 (as the released code) or a crop"
        )
    return Batch(
        image=torch.stack([s.image for s in samples]),
        label=None if missing else torch.stack(labels),
        names=[s.name for s in samples],
    )


def read_image(path: Path) -> Tensor:
    """Decode an image file to uint8 RGB (3, H, W) with PIL (torchvision.io's decoders are
    deprecated since torchvision 0.29)."""
    try:
        with Image.open(path) as pil:
            rgb = np.asarray(pil.convert("RGB"))  # (H, W, 3)
    except (OSError, SyntaxError) as error:
        raise CorruptImageError(f"cannot decode image {path}: {error}") from error
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)


def read_label(path: Path, lut: np.ndarray | None = ID_TO_TRAIN_ID) -> Tensor:
    """Read a label-id PNG (mode "P" indices or "L") and map it with ``lut`` (a 256-entry
    table, default Cityscapes label ids -> trainIds; None: the ids as stored) to (H, W) uint8."""
    try:
        with Image.open(path) as pil:
            pil.load()
            if pil.mode not in ("P", "L"):
                raise LabelFormatError(
                    f'label {path} has PIL mode "{pil.mode}"; expected "P" or "L" label ids '
                    "(a colour label image cannot be used)"
                )
            ids = np.asarray(pil)  # (H, W) uint8 label ids; palette indices for mode "P"
    except (OSError, SyntaxError) as error:
        raise CorruptImageError(f"cannot decode label {path}: {error}") from error
    return torch.from_numpy(ids.copy() if lut is None else lut[ids])


def read_synthia_label(path: Path) -> Tensor:
    """Read a SYNTHIA ``GT/LABELS`` PNG and map it to uint8 trainIds (H, W).

    The file is a 16-bit PNG with 3 or 4 channels whose first channel, in RGB order, holds the
    class id. PIL cannot read such files; OpenCV reads them whole (``IMREAD_UNCHANGED``), in
    BGR(A) order, so the class id is its channel 2."""
    import cv2  # (on first use: only SYNTHIA needs it)

    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # (H, W, C) BGR(A); None if unreadable
    if raw is None:
        raise CorruptImageError(f"cannot decode label {path}: OpenCV cannot read it as an image")
    channels = 1 if raw.ndim == 2 else raw.shape[2]
    if raw.dtype != np.uint16 or channels not in (3, 4):
        raise LabelFormatError(
            f"label {path}: {8 * raw.itemsize}-bit with {channels} channel(s); a SYNTHIA label "
            "is a 16-bit PNG with 3 or 4 channels, the class id in the first (GT/LABELS, not "
            "GT/COLOR)"
        )
    ids = raw[..., 2]  # (H, W) uint16: R, the first channel in RGB order
    return torch.from_numpy(SYNTHIA_ID_TO_TRAIN_ID[np.minimum(ids, 255)])  # ids >= 255: ignored


def _read_list(list_file: str | os.PathLike) -> list[tuple[int, str]]:
    """(line number, entry) for each non-blank line of a list file."""
    path = Path(list_file)
    if not path.is_file():
        raise DatasetLayoutError(f"list file {path} not found")
    lines = path.read_text().splitlines()
    entries = [(number, line.strip()) for number, line in enumerate(lines, 1) if line.strip()]
    if not entries:
        raise DatasetLayoutError(f"list file {path} has no entries")
    return entries


def _require(path: Path, what: str, list_file: str | os.PathLike, number: int, entry: str) -> None:
    if not path.is_file():
        raise MissingFileError(f"{list_file}:{number}: entry '{entry}': {what} {path} not found")


class SegmentationDataset(Dataset[Sample]):
    """(image_path, label_path or None, name) items read and transformed on demand."""

    def __init__(
        self, items: list[tuple[Path, Path | None, str]], transform: PairedTransform
    ) -> None:
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> Sample:
        """``key`` is an index or (index, seed); the seed defaults to the index."""
        index, seed = key if isinstance(key, tuple) else (key, key)
        if not 0 <= index < len(self.items):
            raise IndexError(f"index {index} out of range for {len(self.items)} items")
        image, label, name = self.load(index)
        image, label = self.transform(image, label, torch.Generator().manual_seed(seed))
        return Sample(image, label, name)

    def load(self, index: int) -> tuple[Tensor, Tensor | None, str]:
        """Item ``index`` as read, before the transform: uint8 RGB (3, H, W), uint8 trainIds
        (H, W) fitted to the image (or None), and its name."""
        image_path, label_path, name = self.items[index]
        image = self.read_image(image_path)
        label = None
        if label_path is not None:
            label = self.fit_label(self.read_label(label_path), image, label_path)
        return image, label, name

    def read_image(self, path: Path) -> Tensor:
        """The uint8 RGB (3, H, W) of image file ``path``."""
        return read_image(path)

    def read_label(self, path: Path) -> Tensor:
        """The (H, W) uint8 trainIds of label file ``path`` (Cityscapes label ids)."""
        return read_label(path)

    def fit_label(self, label: Tensor, image: Tensor, label_path: Path) -> Tensor:
        """Check that the (H, W) label matches the (3, H, W) image; subclasses may repair it."""
        if label.shape != image.shape[-2:]:
            raise SizeMismatchError(
                f"label {label_path} is {_size(label)} but its image is {_size(image)}"
            )
        return label


def _size(tensor: Tensor) -> str:
    return f"{tensor.shape[-1]}x{tensor.shape[-2]}"


class FolderPairs(SegmentationDataset):
    """Images in one folder, each with the label of the same name in another (GTA5, SYNTHIA):
    all ``*.png`` images, or those ``list_file`` lists. A missing folder, image or label is an
    error naming it. Subclasses name the folders."""

    NAME = ""  # the dataset, for messages
    IMAGES = ""  # the folders, relative to the root
    LABELS = ""
    LAYOUT = ""  # the expected layout, for messages

    def __init__(
        self,
        root: str | os.PathLike,
        transform: PairedTransform,
        list_file: str | os.PathLike | None = None,
    ) -> None:
        root = Path(root)
        images, labels = root / self.IMAGES, root / self.LABELS
        for folder in (root, images, labels):
            if not folder.is_dir():
                raise DatasetLayoutError(f"{self.NAME} folder {folder} not found: {self.LAYOUT}")
        if list_file is None:
            names = sorted(path.name for path in images.glob("*.png"))
            if not names:
                raise DatasetLayoutError(f"no images in {images}: {self.LAYOUT}")
            label_names = set(os.listdir(labels))
            for name in names:
                if name not in label_names:
                    raise MissingFileError(
                        f"label {labels / name} of image {images / name} not found"
                    )
        else:
            names = []
            for number, name in _read_list(list_file):
                _require(images / name, "image", list_file, number, name)
                _require(labels / name, "label", list_file, number, name)
                names.append(name)
        super().__init__([(images / n, labels / n, n) for n in names], transform)
        self.root = root
        self._warned: set[Path] = set()  # labels a subclass has warned about (GTA5's resized)


class GTA5(FolderPairs):
    """GTA5: ``root/images/<name>.png`` with ``root/labels/<name>.png`` (palettised label ids).

    The few labels whose size differs from their image (15188.png, 17705.png) are resized to
    the image with nearest neighbour, with one warning per file per dataset instance.
    """

    NAME, IMAGES, LABELS, LAYOUT = "GTA5", "images", "labels", GTA5_LAYOUT

    def fit_label(self, label: Tensor, image: Tensor, label_path: Path) -> Tensor:
        """Resize a mismatched (H, W) label to the image with nearest neighbour."""
        if label.shape == image.shape[-2:]:
            return label
        if label_path not in self._warned:
            self._warned.add(label_path)
            logger.warning(
                "GTA5 label %s is %s but its image is %s; resizing the label (nearest)",
                label_path,
                _size(label),
                _size(image),
            )
        resized = torch.nn.functional.interpolate(
            label[None, None], size=image.shape[-2:], mode="nearest-exact"
        )
        return resized[0, 0]


class SYNTHIA(FolderPairs):
    """SYNTHIA-RAND-CITYSCAPES: ``root/RGB/<name>.png`` with ``root/GT/LABELS/<name>.png``
    (16-bit multi-channel, SYNTHIA class ids, read by ``read_synthia_label``).

    A label whose size differs from its image is an error: no SYNTHIA pair is known to need
    GTA5's repair.
    """

    NAME, IMAGES, LABELS, LAYOUT = "SYNTHIA", "RGB", "GT/LABELS", SYNTHIA_LAYOUT

    def read_label(self, path: Path) -> Tensor:
        return read_synthia_label(path)


class Cityscapes(SegmentationDataset):
    """Cityscapes: ``root/leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and gtFine labelIds.

    ``list_file`` lines name images (``aachen/aachen_000000_000019_leftImg8bit.png``) or labels
    (``frankfurt/frankfurt_000000_000294_gtFine_labelIds.png``). A label whose size differs
    from its image is an error (evaluation integrity).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        transform: PairedTransform,
        list_file: str | os.PathLike | None = None,
        with_labels: bool = True,
    ) -> None:
        root = Path(root)
        images, labels = root / "leftImg8bit" / split, root / "gtFine" / split
        for folder in (
            (root, images.parent, labels.parent) if with_labels else (root, images.parent)
        ):
            if not folder.is_dir():
                raise DatasetLayoutError(
                    f"Cityscapes folder {folder} not found: {CITYSCAPES_LAYOUT}"
                )
        for folder in (images, labels) if with_labels else (images,):
            if not folder.is_dir():
                raise DatasetLayoutError(
                    f"Cityscapes split folder {folder} not found: {CITYSCAPES_LAYOUT}"
                )
        if list_file is None:
            names = sorted(
                p.relative_to(images).as_posix() for p in images.glob("*/*_leftImg8bit.png")
            )
            if not names:
                raise DatasetLayoutError(f"no images in {images}/<city>/: {CITYSCAPES_LAYOUT}")
            for name in names:
                label = labels / _label_name(name)
                if with_labels and not label.is_file():
                    raise MissingFileError(f"label {label} of image {images / name} not found")
        else:
            names = []
            for number, entry in _read_list(list_file):
                name = entry
                if entry.endswith(CITYSCAPES_LABEL_SUFFIX):
                    name = entry.removesuffix(CITYSCAPES_LABEL_SUFFIX) + CITYSCAPES_IMAGE_SUFFIX
                elif not entry.endswith(CITYSCAPES_IMAGE_SUFFIX):
                    raise DatasetLayoutError(
                        f"{list_file}:{number}: entry '{entry}' names neither a "
                        f"*{CITYSCAPES_IMAGE_SUFFIX} image nor a *{CITYSCAPES_LABEL_SUFFIX} label"
                    )
                _require(images / name, "image", list_file, number, entry)
                if with_labels:
                    _require(labels / _label_name(name), "label", list_file, number, entry)
                names.append(name)
        items = [(images / n, labels / _label_name(n) if with_labels else None, n) for n in names]
        super().__init__(items, transform)
        self.root = root
        self.split = split


def _label_name(image_name: str) -> str:
    """``city/x_leftImg8bit.png`` -> ``city/x_gtFine_labelIds.png``."""
    return image_name.removesuffix(CITYSCAPES_IMAGE_SUFFIX) + CITYSCAPES_LABEL_SUFFIX


def sample_seed(seed: int, position: int) -> int:
    """Augmentation seed of the item at global stream position ``position`` of a stream
    seeded with ``seed`` (``InfiniteSampler``'s, and rare-class sampling's)."""
    return (seed * 1_000_003 + position) % 2**63


class InfiniteSampler(Sampler[tuple[int, int]]):
    """Endless (index, sample_seed) stream, deterministic in (seed, position) and resumable.

    Epoch e is ``torch.randperm(size)`` seeded with ``seed + e`` (``arange`` without shuffle);
    the global position p runs over all epochs, rank r takes positions r, r + W, r + 2W, ...,
    and ``start`` skips the first ``start`` items of this rank's share in O(1).
    """

    def __init__(
        self,
        size: int,
        seed: int,
        start: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if size <= 0:
            raise ValueError(f"InfiniteSampler needs a non-empty dataset, got size {size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.size, self.seed, self.start = size, seed, start
        self.shuffle, self.rank, self.world_size = shuffle, rank, world_size

    def sample_seed(self, position: int) -> int:
        """Augmentation seed of the item at global stream position ``position``."""
        return sample_seed(self.seed, position)

    def _order(self, epoch: int) -> Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.rank + self.start * self.world_size
        epoch, order = -1, torch.empty(0, dtype=torch.long)
        while True:
            if position // self.size != epoch:
                epoch = position // self.size
                order = self._order(epoch)
            yield int(order[position % self.size]), self.sample_seed(position)
            position += self.world_size


class StreamDraw(Protocol):
    """A draw of its own for ``infinite_loader`` (``dataset.rare_class.RareClasses``)."""

    def sampler(self, seed: int, start: int, rank: int, world_size: int) -> Sampler:
        """The endless key stream of rank ``rank``, ``start`` items in."""
        ...


def infinite_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = True,
    rare: StreamDraw | None = None,
) -> Iterator[Batch]:
    """Endless batches; the same (seed, start_step) gives the same batches for any num_workers.

    ``start_step`` is the number of batches this rank has already consumed. The loader draws
    its workers' base seed from a generator of its own, not from the global RNG, so that
    starting it (again, on a resume) leaves the global stream (dropout's) where it was.
    ``rare``: rare-class sampling's draw, whose (index, seed, class) stream replaces the
    shuffled epochs; ``dataset`` then reads such keys (``dataset.rare_class.RareClassCrops``).
    """
    start = start_step * batch_size
    if rare is not None:
        sampler: Sampler = rare.sampler(seed, start, rank, world_size)
    else:
        sampler = InfiniteSampler(len(dataset), seed, start, shuffle, rank, world_size)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        drop_last=True,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
    return iter(loader)


def eval_loader(
    dataset: Dataset,
    batch_size: int = 1,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """In-order loader over this rank's shard (indices rank, rank + W, ...): no padding, so
    every index is seen exactly once over all ranks. ``pin_memory`` for CUDA evaluation."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=range(rank, len(dataset), world_size),
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0),  # not the global RNG (``infinite_loader``)
    )
