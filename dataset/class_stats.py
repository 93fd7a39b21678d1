"""Per-image class statistics of a labelled dataset, cached on disk: what rare-class sampling
(``dataset.rare_class``) draws from.

For each item, the pixels of each trainId 0..K-1 in its label, read by the dataset's own
``read_label`` (so GTA5's, SYNTHIA's, Cityscapes' and a folder's ids are mapped as training
maps them) at the label's own resolution, before any transform, as DAFormer's
``tools/convert_datasets/gta.py`` counts them. GTA5's few labels of another size than their
image are counted before the nearest resize that ``fit_label`` gives them in training.

The first computation reads every label (with a progress bar, ``num_workers`` processes); the
result is kept as JSON in the cache folder (``data.rcs.cache_dir``; by default
``$XDG_CACHE_HOME/feature_to_adapt/class_stats``, or ``~/.cache/...``), one file per dataset
(its kind, root, class count and label files), holding a key of the label files' relative
paths, sizes and modification times. A cache file that is missing, unreadable (not JSON,
truncated, empty, another shape) or stale (its key differs: a label changed) is computed again,
never an error; a cache folder that cannot be written is a warning, and the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dataset.datasets import DatasetError, SegmentationDataset
from utils.files import atomic_write

logger = logging.getLogger(__name__)

FORMAT = "feature_to_adapt class statistics 1"  # the cache files' format, stored in each


class UnlabelledError(DatasetError, ValueError):
    """Class statistics were asked of a dataset whose items have no labels."""


@dataclass(frozen=True)
class ClassStats:
    """The pixels of each class in each item's label, and where they are cached."""

    counts: np.ndarray  # (N, K) int64: item i's label holds counts[i, c] pixels of trainId c
    labels: tuple[str, ...]  # item i's label file, relative to the root
    path: Path  # the cache file
    root: str  # the dataset's root, for messages
    key: str  # the label files' key (relative paths, sizes, modification times, K)
    fresh: bool  # computed now and not saved yet (False: read from ``path``)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/feature_to_adapt/class_stats``, or ``~/.cache/...`` without it."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "feature_to_adapt" / "class_stats"


def _label_paths(dataset: SegmentationDataset) -> list[Path]:
    """Every item's label file; an item without one is an error naming it."""
    missing = [name for _, label, name in dataset.items if label is None]
    if missing:
        raise UnlabelledError(
            f"class statistics need every item's label; {len(missing)} of {len(dataset)} items "
            f"have none (first: {missing[0]}): rare-class sampling reads a labelled source"
        )
    return [label for _, label, _ in dataset.items]


def _root(dataset: SegmentationDataset) -> Path:
    return Path(getattr(dataset, "root", "/")).resolve()


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()


def cache_file(dataset: SegmentationDataset, num_classes: int, cache_dir: str = "") -> Path:
    """The cache file of ``dataset``'s statistics: named by its kind and a hash of its root,
    its label files' relative paths and the class count, so another subset or copy of a
    dataset has a file of its own."""
    root = _root(dataset)
    relative = [os.path.relpath(path, root) for path in _label_paths(dataset)]
    kind = type(dataset).__name__
    name = _digest([kind, str(root), num_classes, relative])[:16]
    return Path(cache_dir or default_cache_dir()) / f"{kind.lower()}-{name}.json"


def cache_key(dataset: SegmentationDataset, num_classes: int) -> str:
    """What the statistics depend on: the dataset's kind, the class count and each label
    file's path relative to the root, size and modification time."""
    root = _root(dataset)
    files = []
    for path in _label_paths(dataset):
        stat = path.stat()
        files.append([os.path.relpath(path, root), stat.st_size, stat.st_mtime_ns])
    return _digest([type(dataset).__name__, num_classes, files])


class _LabelCounts(Dataset[torch.Tensor]):
    """Item i: the (K,) pixel counts of trainIds 0..K-1 in the dataset's label i."""

    def __init__(self, dataset: SegmentationDataset, num_classes: int) -> None:
        self.dataset, self.num_classes = dataset, num_classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        label = self.dataset.read_label(self.dataset.items[index][1])
        return torch.bincount(label.flatten().long(), minlength=256)[: self.num_classes]


def count_classes(
    dataset: SegmentationDataset, num_classes: int, num_workers: int = 0, progress: bool = True
) -> np.ndarray:
    """(N, K) int64: the pixels of each trainId 0..K-1 in each item's label, every label read
    once (in ``num_workers`` processes), with a progress bar."""
    from tqdm import tqdm

    loader = DataLoader(
        _LabelCounts(dataset, num_classes),
        batch_size=None,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),  # not the global RNG (dropout's)
    )
    bar = tqdm(loader, desc="class statistics", unit="label", disable=not progress)
    rows = [counts.numpy() for counts in bar]
    return np.stack(rows).astype(np.int64) if rows else np.zeros((0, num_classes), np.int64)


def _read_cache(path: Path, key: str, shape: tuple[int, int]) -> tuple[np.ndarray | None, str]:
    """The counts ``path`` holds when its key is ``key`` and their shape ``shape``; else None
    and why not ("" when there is no file)."""
    if not path.is_file():
        return None, ""
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return None, "not a class statistics file"
        if data.get("key") != key:
            return None, "stale: the label files changed since it was written"
        counts = np.asarray(data["counts"], dtype=np.int64)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"unreadable ({type(err).__name__}: {err})"
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        return None, f"not a class statistics file ({type(err).__name__}: {err})"
    if counts.shape != shape or (counts < 0).any():
        return None, f"counts of shape {counts.shape}, expected {shape}"
    return counts, ""


def load_class_stats(
    dataset: SegmentationDataset,
    num_classes: int,
    cache_dir: str = "",
    num_workers: int = 0,
    progress: bool = True,
) -> ClassStats:
    """``dataset``'s statistics from its cache file, or computed when that is missing,
    unreadable or stale (a warning line says which); computed ones are not saved here
    (``save_class_stats``), so that a caller can check them first."""
    path, key = cache_file(dataset, num_classes, cache_dir), cache_key(dataset, num_classes)
    root = _root(dataset)
    labels = tuple(os.path.relpath(p, root) for p in _label_paths(dataset))
    counts, why = _read_cache(path, key, (len(dataset), num_classes))
    if counts is not None:
        logger.info("class statistics of %d labels read from %s", len(dataset), path)
        return ClassStats(counts, labels, path, str(root), key, fresh=False)
    if why:
        logger.warning("class statistics cache %s is %s: computing it again", path, why)
    else:
        logger.info("computing the class statistics of %d labels (cached in %s)", len(dataset),
                    path)  # fmt: skip
    counts = count_classes(dataset, num_classes, num_workers, progress)
    return ClassStats(counts, labels, path, str(root), key, fresh=True)


def save_class_stats(stats: ClassStats) -> None:
    """Write ``stats`` to its cache file atomically (a temporary file, then ``os.replace``),
    the folder made; a folder that cannot be written is a warning, not an error."""
    data = {"format": FORMAT, "key": stats.key, "root": stats.root,
            "labels": list(stats.labels), "counts": stats.counts.tolist()}  # fmt: skip
    text = json.dumps(data, separators=(",", ":")) + "\n"
    try:
        stats.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(stats.path, lambda f: f.write(text.encode()))
    except OSError as err:
        logger.warning("cannot write the class statistics cache %s (%s): they will be computed "
                       "again next time", stats.path, err.strerror or err)  # fmt: skip
