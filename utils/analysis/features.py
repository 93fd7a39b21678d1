r"""Feature-space analysis of G's backbone features (``analyze_features.py``): extraction on
labelled images, a seeded pixel sample that is the same for every checkpoint, and the numbers
reported for it. Pure functions of models and arrays; the figures are in
``utils/analysis/plots.py``.

Features are G's layer4 output F (``SegOutput.features``, stride 8), computed in eval mode
without gradients. Each image's label map is brought to F's grid by **majority vote**: label
pixel (y, x) of an H x W map falls in cell (floor(y h / H), floor(x w / W)) of the h x w grid,
and the cell takes its most frequent label; a cell where ignored pixels (255) are the most
frequent is ignored, and a tie goes to the lower trainId, ahead of "ignored".

The numbers, for each checkpoint:

- mean per-pixel norm ``||F||_2`` per domain (every feature pixel) and per class (the pixels
  whose majority label is that class);
- the proxy A-distance ``PAD = 2 (1 - 2 err)`` (Ben-David et al. 2007; Ganin et al. 2016),
  ``err`` the held-out error of a linear source-vs-target classifier (scikit-learn's
  ``LogisticRegression``, C = 1, on standardised features) trained on the sampled pixels of
  one half of each domain's images and tested on the other half. 2: the domains are linearly
  separable; 0 (or slightly below, by chance): the classifier cannot tell them apart;
- the squared maximum mean discrepancy between the source and target pixels of each class,
  the unbiased estimate of Gretton et al. (2012, eq. 3)::

      MMD^2 = 1/(m(m-1)) sum_{i!=j} k(x_i, x_j) + 1/(n(n-1)) sum_{i!=j} k(y_i, y_j)
              - 2/(mn) sum_{i,j} k(x_i, y_j),      k(a, b) = exp(-||a - b||^2 / (2 s^2)),

  with s^2 the median of the squared distances between distinct points of the pooled sample
  x U y (the median heuristic). The bandwidth follows the features' scale, so features that
  only grew in norm keep the same MMD: it measures how the domains overlap, not how large the
  features are. It can be slightly negative when the two samples are alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from dataset.datasets import SegmentationDataset
from dataset.labels import IGNORE_INDEX, NUM_CLASSES
from model.contract import Segmenter
from utils.losses import feature_norm

DOMAINS: tuple[str, str] = ("source", "target")
MIN_CLASS_PIXELS = 10  # per domain: a class with fewer sampled pixels gets no MMD


class PixelSample(NamedTuple):
    """The sampled feature pixels of one domain, in image order."""

    image: np.ndarray  # (P,) dataset index of each pixel's image
    position: np.ndarray  # (P,) flat index y * w + x in that image's feature grid
    label: np.ndarray  # (P,) its majority label (never ignored)


class DomainFeatures(NamedTuple):
    """One checkpoint's features on one domain's images."""

    norms: np.ndarray  # (M,) float32 ||F||_2 of every feature pixel of every image
    labels: np.ndarray  # (M,) int64 majority label of each of them (255: ignored)
    features: np.ndarray  # (P, C) float32 features of the sampled pixels
    sample: PixelSample


def choose_images(available: int, count: int, seed: int, stream: int) -> list[int]:
    """``count`` distinct indices out of ``available`` images, drawn with the seed
    (``seed``, ``stream``) and sorted."""
    if not 0 < count <= available:
        raise ValueError(f"cannot choose {count} of {available} images")
    rng = np.random.default_rng([seed, stream])
    return sorted(int(i) for i in rng.choice(available, count, replace=False))


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` counts that differ by at most one, larger ones first."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def grid_labels(label: Tensor, size: tuple[int, int], num_classes: int = NUM_CLASSES) -> Tensor:
    """The majority label of each cell of an h x w grid over an H x W label map (module
    docstring): ``(H, W)`` int -> ``(h, w)`` int64, ``IGNORE_INDEX`` where ignored pixels are
    the most frequent. Values outside ``[0, num_classes)`` count as ignored."""
    H, W = label.shape
    h, w = size
    rows = torch.arange(H) * h // H  # (H,) grid row of each label row
    cols = torch.arange(W) * w // W  # (W,)
    cell = rows[:, None] * w + cols[None, :]  # (H, W)
    label = label.to(torch.int64).cpu()
    cls = torch.where((label >= 0) & (label < num_classes), label, num_classes)
    counts = torch.bincount(
        (cell * (num_classes + 1) + cls).reshape(-1), minlength=h * w * (num_classes + 1)
    )
    major = counts.view(h * w, num_classes + 1).argmax(1)  # the first maximum on a tie
    return torch.where(major == num_classes, IGNORE_INDEX, major).view(h, w)


def sample_positions(labels: Tensor, count: int, seed: int, stream: int, index: int) -> np.ndarray:
    """Up to ``count`` flat positions of labelled cells of an ``(h, w)`` grid, uniformly
    without replacement, sorted. The draw depends only on (``seed``, ``stream``, ``index``) and
    the grid's labels, never on the weights, so every checkpoint gets the same pixels."""
    labelled = np.flatnonzero(labels.reshape(-1).numpy() != IGNORE_INDEX)
    rng = np.random.default_rng([seed, stream, index])
    return np.sort(rng.choice(labelled, min(count, labelled.size), replace=False))


@torch.no_grad()
def extract_domain(
    model: Segmenter,
    dataset: SegmentationDataset,
    indices: Sequence[int],
    pixels: int,
    device: torch.device,
    *,
    seed: int,
    stream: int,
    desc: str = "images",
    progress: bool = True,
) -> DomainFeatures:
    """G's features on images ``indices`` of a labelled ``dataset``, one image at a time (so
    their sizes may differ): every pixel's norm and majority label, and the features of
    ``pixels`` sampled pixels, split evenly over the images (an image with fewer labelled
    cells than its share gives all it has). ``stream`` tells the domains' draws apart."""
    model.eval()
    norms, labels, features, images, positions, sampled = [], [], [], [], [], []
    quotas = split_evenly(pixels, len(indices))
    for index, quota in tqdm(
        list(zip(indices, quotas)), desc=desc, unit="img", disable=not progress, leave=False
    ):
        sample = dataset[index]
        if sample.label is None:
            raise ValueError(f"{sample.name}: the analysis needs labels")
        feats = model(sample.image[None].to(device), heads=False).features.float()  # 1 x C x h x w
        _, C, h, w = feats.shape
        grid = grid_labels(sample.label, (h, w))  # h x w
        norms.append(feature_norm(feats).reshape(-1).cpu().numpy())
        labels.append(grid.reshape(-1).numpy())
        pos = sample_positions(grid, quota, seed, stream, index)
        flat = feats.reshape(C, h * w)
        features.append(flat[:, torch.from_numpy(pos).to(device)].T.cpu().numpy())  # k x C
        images.append(np.full(pos.size, index))
        positions.append(pos)
        sampled.append(grid.reshape(-1).numpy()[pos])
    return DomainFeatures(
        norms=np.concatenate(norms),
        labels=np.concatenate(labels).astype(np.int64),
        features=np.concatenate(features),
        sample=PixelSample(
            np.concatenate(images),
            np.concatenate(positions),
            np.concatenate(sampled).astype(np.int64),
        ),
    )


def mean_norms(
    norms: np.ndarray, labels: np.ndarray, num_classes: int = NUM_CLASSES
) -> tuple[float, list[float | None]]:
    """The mean of every pixel's norm, and per class the mean over the pixels labelled with
    it (None for a class with no pixel)."""
    per_class = [
        float(norms[labels == c].mean()) if (labels == c).any() else None
        for c in range(num_classes)
    ]
    return float(norms.mean()), per_class


def held_out_images(images: np.ndarray, seed: int) -> np.ndarray:
    """A boolean mask over pixels: True for those of the held-out half of the images (the
    larger half when the count is odd), chosen with ``seed``."""
    unique = np.unique(images)
    if unique.size < 2:
        raise ValueError(f"a held-out split needs pixels from 2 images or more, got {unique.size}")
    order = np.random.default_rng(seed).permutation(unique)
    return np.isin(images, order[: unique.size // 2], invert=True)


def proxy_a_distance(
    source: np.ndarray,
    target: np.ndarray,
    source_images: np.ndarray,
    target_images: np.ndarray,
    seed: int,
) -> tuple[float, float]:
    """``(PAD, err)``: ``PAD = 2 (1 - 2 err)``, ``err`` the held-out error of a linear
    source-vs-target classifier (module docstring). ``source`` (m, C) and ``target`` (n, C)
    are features; ``*_images`` say which image each row comes from: each domain's images are
    split in halves (with ``seed``), the classifier fits on one and is scored on the other."""
    # Imported on first use: scikit-learn takes a second to import, which every command
    # (and every error) would pay otherwise.
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([source, target]).astype(np.float64)
    y = np.concatenate([np.zeros(len(source)), np.ones(len(target))])
    test = np.concatenate(
        [held_out_images(source_images, seed), held_out_images(target_images, seed + 1)]
    )
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    classifier.fit(x[~test], y[~test])
    err = float((classifier.predict(x[test]) != y[test]).mean())
    return 2 * (1 - 2 * err), err


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(m, C)``, ``(n, C)`` -> ``(m, n)`` squared Euclidean distances, float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.maximum(d, 0)


def median_bandwidth(points: np.ndarray) -> float:
    """s^2 of the median heuristic: the median squared distance between distinct points."""
    d = squared_distances(points, points)
    return float(np.median(d[np.triu_indices(len(points), k=1)]))


def mmd2(x: np.ndarray, y: np.ndarray, bandwidth: float | None = None) -> float:
    """Unbiased MMD^2 between samples ``x`` (m, C) and ``y`` (n, C), m, n >= 2, with the
    Gaussian kernel ``exp(-d^2 / (2 s^2))`` (module docstring); ``bandwidth`` is s^2, by
    default the median heuristic on the pooled sample. Identical points give 0 (no scale)."""
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"MMD needs 2 points or more per sample, got {m} and {n}")
    s2 = median_bandwidth(np.concatenate([x, y])) if bandwidth is None else bandwidth
    if s2 <= 0:
        return 0.0

    def kernel_sum(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.exp(-squared_distances(a, b) / (2 * s2)).sum())

    kxx = (kernel_sum(x, x) - m) / (m * (m - 1))  # the diagonal k(x_i, x_i) = 1 left out
    kyy = (kernel_sum(y, y) - n) / (n * (n - 1))
    return kxx + kyy - 2 * kernel_sum(x, y) / (m * n)


def class_mmd2(
    source: np.ndarray,
    target: np.ndarray,
    source_labels: np.ndarray,
    target_labels: np.ndarray,
    num_classes: int = NUM_CLASSES,
    min_pixels: int = MIN_CLASS_PIXELS,
) -> tuple[float, list[float | None]]:
    """MMD^2 between all source and all target pixels, and per class between the pixels of
    that class (None where a domain has fewer than ``min_pixels`` of them)."""
    per_class = []
    for c in range(num_classes):
        xs, ys = source[source_labels == c], target[target_labels == c]
        enough = min(len(xs), len(ys)) >= max(min_pixels, 2)
        per_class.append(mmd2(xs, ys) if enough else None)
    return mmd2(source, target), per_class


def embed(features: np.ndarray, method: str, seed: int) -> np.ndarray:
    """``(n, C)`` -> ``(n, 2)`` with scikit-learn: ``"pca"`` (PCA), or ``"tsne"`` (t-SNE
    with a PCA initialisation, on the first 50 principal components, perplexity 30 or
    (n - 1) / 3 when the sample is small), seeded."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = features.astype(np.float64)
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "tsne":
        reduced = PCA(n_components=min(50, *x.shape), random_state=seed).fit_transform(x)
        perplexity = min(30.0, (len(x) - 1) / 3)
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        return tsne.fit_transform(reduced)
    raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
