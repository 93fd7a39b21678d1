"""DAFormer's rare-class sampling (RCS) of the source: which class to draw, which image, which
crop (lhoyer/DAFormer, ``mmseg/datasets/uda_dataset.py``: ``get_rcs_class_probs``,
``get_rare_class_sample``).

- ``rare_classes``: from the per-image class counts (``dataset.class_stats``), f_c is class c's
  share of all source pixels over the classes that occur, and P(c) = softmax((1 - f_c) / T).
  An image is a candidate for c when it holds more than ``min_pixels`` pixels of c.
- ``RareClassSampler``: each source item draws c ~ P, then one of c's candidates uniformly,
  from a stream that is a pure function of (seed, position), as ``InfiniteSampler``'s, so a
  resumed run draws what the uninterrupted one would have, for any ``num_workers`` and rank.
- ``RareClassCrops``: the sample is transformed again (a new crop, flip ... from a seed derived
  from the item's) while its label holds ``min_pixels * min_crop_ratio`` pixels of c or fewer,
  ``REDRAWS`` times at most; the last one is then used.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from dataset.class_stats import ClassStats
from dataset.datasets import DatasetError, Sample, SegmentationDataset, sample_seed

logger = logging.getLogger(__name__)

REDRAWS = 10  # DAFormer: the first sample, then up to 10 new crops until one holds enough of c
_STREAM = 0x5C5  # tells the class draws' seeds from the augmentation's


class NoRareClassError(DatasetError, ValueError):
    """No class has an image holding more than ``data.rcs.min_pixels`` pixels of it."""


@dataclass(frozen=True)
class RareClasses:
    """What rare-class sampling draws from."""

    classes: tuple[int, ...]  # the trainIds drawn
    probs: np.ndarray  # (len(classes),) float64: P(c), in the same order, summing to 1
    candidates: tuple[np.ndarray, ...]  # per class: the indices of the images it draws from
    dropped: tuple[int, ...]  # classes that occur but have no candidate image
    crop_pixels: float | None  # a crop must hold more pixels of c than this (None: any crop)

    def sampler(
        self, seed: int, start: int = 0, rank: int = 0, world_size: int = 1
    ) -> RareClassSampler:
        """The (index, seed, class) stream of rank ``rank``, ``start`` items in."""
        return RareClassSampler(self, seed, start, rank, world_size)


def class_probabilities(counts: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """(classes, P): the classes that occur in the (N, K) ``counts`` and their probability
    softmax((1 - f_c) / T), f_c the class's share of the pixels of those classes."""
    totals = counts.sum(axis=0)
    classes = np.flatnonzero(totals)
    if not len(classes):
        return classes, np.zeros(0)
    share = totals[classes] / totals[classes].sum()
    logits = (1.0 - share) / temperature
    probs = np.exp(logits - logits.max())
    return classes, probs / probs.sum()


def rare_classes(
    stats: ClassStats, temperature: float, min_pixels: int, min_crop_ratio: float
) -> RareClasses:
    """The classes, their probabilities and candidate images of ``stats``.

    DAFormer asserts that every class that occurs has a candidate image (more than
    ``min_pixels`` pixels of it); here a class without one is dropped from the draw (with a
    warning) and the others' probabilities renormalised: P restricted to the classes kept,
    which is the softmax over them of the same logits. If no class has a candidate, a
    ``NoRareClassError`` names the statistics file and the ``min_pixels`` that would admit one.
    """
    counts = stats.counts
    classes, probs = class_probabilities(counts, temperature)
    candidates = [np.flatnonzero(counts[:, c] > min_pixels) for c in classes]
    kept = [i for i, found in enumerate(candidates) if len(found)]
    if not kept:
        raise NoRareClassError(_no_class_message(stats, min_pixels))
    dropped = tuple(int(classes[i]) for i in range(len(classes)) if i not in kept)
    if dropped:
        logger.warning("rare-class sampling: classes %s have no image with more than %d pixels "
                       "of them: not drawn", list(dropped), min_pixels)  # fmt: skip
    probs = probs[kept] / probs[kept].sum()
    return RareClasses(
        classes=tuple(int(classes[i]) for i in kept),
        probs=probs,
        candidates=tuple(candidates[i] for i in kept),
        dropped=dropped,
        crop_pixels=min_pixels * min_crop_ratio if min_crop_ratio > 0 else None,
    )


def _no_class_message(stats: ClassStats, min_pixels: int) -> str:
    """What ``NoRareClassError`` says: the file, the root, the largest count and what fits."""
    where = f"{stats.path} (computed now, not saved)" if stats.fresh else str(stats.path)
    most = int(stats.counts.max()) if stats.counts.size else 0
    head = (f"data.rcs.min_pixels={min_pixels}: no image of the source {stats.root} holds more "
            f"than {min_pixels} pixels of any class (class statistics of "
            f"{len(stats.counts)} labels: {where}); ")  # fmt: skip
    if most == 0:
        return head + ("its labels hold no pixel of any class, so rare-class sampling has "
                       "nothing to draw: check the source's labels, or "
                       "data.rcs.enabled=false")  # fmt: skip
    image, c = np.unravel_index(int(stats.counts.argmax()), stats.counts.shape)
    return head + (f"the largest count of one class in one image is {most} (class {c} in "
                   f"{stats.labels[image]}): data.rcs.min_pixels={most - 1} admits that "
                   f"class")  # fmt: skip


def redraw_seed(seed: int, redraw: int) -> int:
    """The augmentation seed of an item's ``redraw``-th new crop (1, 2, ...): a hash of the
    item's seed, so that it meets no other item's seed."""
    state = np.random.SeedSequence([seed % 2**63, redraw, _STREAM]).generate_state(1, np.uint64)
    return int(state[0]) % 2**63


class RareClassSampler(Sampler[tuple[int, int, int]]):
    """Endless (index, sample_seed, class) stream, deterministic in (seed, position).

    Position p draws c ~ P, then an index uniformly among c's candidates, from numpy's
    generator seeded with (seed, p); its augmentation seed is ``InfiniteSampler``'s. Rank r
    takes positions r, r + W, r + 2W, ..., and ``start`` skips the first ``start`` items of
    this rank's share in O(1).
    """

    def __init__(
        self, rare: RareClasses, seed: int, start: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.rare, self.seed, self.start = rare, seed, start
        self.rank, self.world_size = rank, world_size

    def draw(self, position: int) -> tuple[int, int, int]:
        """(index, augmentation seed, class) of global stream position ``position``."""
        rng = np.random.default_rng([self.seed % 2**63, position, _STREAM])
        k = int(rng.choice(len(self.rare.classes), p=self.rare.probs))
        candidates = self.rare.candidates[k]
        index = int(candidates[rng.integers(len(candidates))])
        return index, sample_seed(self.seed, position), self.rare.classes[k]

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        position = self.rank + self.start * self.world_size
        while True:
            yield self.draw(position)
            position += self.world_size


class RareClassCrops(Dataset[Sample]):
    """``dataset``'s items by (index, seed, class) keys (``RareClassSampler``'s): the item is
    read once and transformed with ``seed``; while its label holds ``crop_pixels`` pixels of
    the class or fewer, it is transformed again with ``redraw_seed(seed, j)``, j = 1 ..
    ``REDRAWS``, and the last is used (DAFormer's loop in ``get_rare_class_sample``).
    ``crop_pixels`` None: the first transform is used."""

    def __init__(self, dataset: SegmentationDataset, crop_pixels: float | None) -> None:
        self.dataset, self.crop_pixels = dataset, crop_pixels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]) -> Sample:
        index, seed, c = key
        image, label, name = self.dataset.load(index)
        out_image, out_label = self._transform(image, label, seed)
        if self.crop_pixels is not None:
            for redraw in range(1, REDRAWS + 1):
                if int((out_label == c).sum()) > self.crop_pixels:
                    break
                out_image, out_label = self._transform(image, label, redraw_seed(seed, redraw))
        return Sample(out_image, out_label, name)

    def _transform(self, image: Tensor, label: Tensor | None, seed: int) -> tuple[Tensor, Tensor]:
        """The dataset's transform of (image, label) with randomness from ``seed``."""
        out_image, out_label = self.dataset.transform(
            image, label, torch.Generator().manual_seed(seed)
        )
        assert out_label is not None  # (the source is labelled: ``class_stats`` checked it)
        return out_image, out_label
