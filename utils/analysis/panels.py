"""Pictures of predictions: the paper's Fig. 4/5 panels and the overlays of ``predict.py``.

The picture functions are pure: arrays (and softmax tensors) in, an (H, W, 3) uint8 RGB array
out. A prediction panel is one row, image | ground truth | prediction | error map | entropy
map; a comparison panel has one row per image, image | ground truth | one prediction per
checkpoint. Tiles are drawn at the size of the image the model was given (the resized input):
labels, predictions and errors are subsampled to it (nearest), the entropy resized (bilinear).

Error map: correct pixels grey, wrong ones red, ignored ones black. Entropy map: the
per-pixel entropy of the softmax over K classes divided by log(K), so 0 is a one-hot
prediction and 1 a uniform one, in matplotlib's "inferno" colours (black to yellow).

Below the pictures: the scripts' shared ``--panels`` flags, the choice of images, and the
functions that run a model over the chosen images and write the PNGs.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from dataset.datasets import SegmentationDataset
from dataset.labels import CLASS_NAMES, IGNORE_INDEX, PALETTE, colorize
from dataset.transforms import denormalize
from model.contract import Segmenter
from utils.config import take_overrides
from utils.errors import UsageError
from utils.evaluation.inference import predict_scores, predicted_train_ids
from utils.evaluation.predictions import panel_path
from utils.files import save_png

log = logging.getLogger(__name__)

CORRECT_RGB = (200, 200, 200)
WRONG_RGB = (220, 0, 0)
IGNORED_RGB = (0, 0, 0)
PREDICTION_TITLES = ("image", "ground truth", "prediction", "errors", "entropy")

# (1, 3, h, w) normalised image, (H, W) label size -> (1, K, H, W) softmax probabilities
ProbsFn = Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]


def entropy_map(probs: torch.Tensor) -> torch.Tensor:
    """(K, H, W) softmax probabilities -> (H, W) entropy ``-sum_k p_k log p_k / log K`` in
    [0, 1] (``0 log 0 = 0``), computed in float32."""
    K = probs.shape[0]
    p = probs.float()
    return (-torch.special.xlogy(p, p).sum(0) / math.log(K)).clamp(0, 1)


def error_map(pred: np.ndarray, label: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(H, W) trainIds against (H, W) labels -> (H, W, 3) uint8: ``WRONG_RGB`` where they
    differ, ``CORRECT_RGB`` where they agree, ``IGNORED_RGB`` where the label is ignored."""
    if pred.shape != label.shape:
        raise ValueError(f"prediction {pred.shape} and label {label.shape} differ in shape")
    out = np.empty((*label.shape, 3), dtype=np.uint8)
    out[:] = CORRECT_RGB
    out[pred != label] = WRONG_RGB
    out[label == ignore_index] = IGNORED_RGB
    return out


def heat_colours(values: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 in matplotlib's "inferno" colour map."""
    from matplotlib import colormaps  # a slow import: on first use only

    return colormaps["inferno"](np.clip(values, 0, 1), bytes=True)[..., :3]


def overlay(image: np.ndarray, pred: np.ndarray, alpha: float) -> np.ndarray:
    """(H, W, 3) uint8 image blended with the Cityscapes colours of (H, W) trainIds:
    ``(1 - alpha) * image + alpha * colours``."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    blend = (1 - alpha) * image.astype(np.float32) + alpha * colorize(pred).astype(np.float32)
    return blend.round().astype(np.uint8)


def legend(classes: Sequence[int], swatch: int = 18) -> np.ndarray:
    """(H, W, 3) uint8 RGB: one row per trainId in ``classes``, its colour's swatch beside its
    name."""
    font = _font(swatch - 4)
    names = [CLASS_NAMES[c] for c in classes]
    width = 2 * swatch + max(math.ceil(font.getlength(name)) for name in names)
    image = Image.new("RGB", (width, len(names) * (swatch + 4) + 4), "white")
    draw = ImageDraw.Draw(image)
    for row, (c, name) in enumerate(zip(classes, names)):
        top = 4 + row * (swatch + 4)
        draw.rectangle((4, top, 3 + swatch, top + swatch - 1), fill=PALETTE[c], outline="black")
        draw.text((swatch + 10, top + 1), name, fill="black", font=font)
    return np.asarray(image)


def prediction_panel(image: np.ndarray, label: np.ndarray, probs: torch.Tensor) -> np.ndarray:
    """image | ground truth | prediction | error map | entropy map, with a title row.

    ``image``: (h, w, 3) uint8, the input as the model saw it; ``label``: (H, W) trainIds
    (255 ignored); ``probs``: (K, H, W) softmax probabilities at the label's size (K = 19, or
    16 / 13 for a SYNTHIA model, whose outputs are mapped to their trainIds)."""
    size = image.shape[:2]
    pred = predicted_train_ids(probs[None])[0].to(torch.uint8).cpu().numpy()
    label, pred = _fit(label.astype(np.uint8), size), _fit(pred, size)
    entropy = _fit(entropy_map(probs).cpu().numpy(), size)
    tiles = [image, colorize(label), colorize(pred), error_map(pred, label), heat_colours(entropy)]
    return stack_rows([tiles], PREDICTION_TITLES)


def comparison_panel(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    preds: Sequence[Sequence[np.ndarray]],
    names: Sequence[str],
) -> np.ndarray:
    """One row per image: image | ground truth | ``preds[c][i]`` for each checkpoint c, with
    ``names[c]`` over its column. Images (h, w, 3) uint8; labels and predictions (H, W)."""
    if len(preds) != len(names):
        raise ValueError(f"{len(preds)} prediction columns for {len(names)} names")
    rows = []
    for i, (image, label) in enumerate(zip(images, labels)):
        size = image.shape[:2]
        row = [image, colorize(_fit(label.astype(np.uint8), size))]
        row += [colorize(_fit(column[i].astype(np.uint8), size)) for column in preds]
        rows.append(row)
    return stack_rows(rows, ("image", "ground truth", *names))


def stack_rows(
    rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str], gap: int = 4
) -> np.ndarray:
    """Equal-sized (h, w, 3) uint8 tiles on a white canvas, ``gap`` pixels apart, with a row of
    ``titles`` (one per column) on top."""
    h, w = rows[0][0].shape[:2]
    columns = len(titles)
    if any(len(row) != columns or any(t.shape != (h, w, 3) for t in row) for row in rows):
        raise ValueError(f"every row needs {columns} tiles of {h}x{w}x3")
    font = _font(max(10, w // 24))
    header = font.getbbox("Ag")[3] + gap
    canvas = Image.new("RGB", (columns * (w + gap) - gap, header + len(rows) * (h + gap) - gap),
                       "white")  # fmt: skip
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(titles):
        draw.text((c * (w + gap), 0), _shorten(title, font, w), fill="black", font=font)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            canvas.paste(Image.fromarray(tile), (c * (w + gap), header + r * (h + gap)))
    return np.asarray(canvas)


def add_panel_flags(parser: argparse.ArgumentParser) -> None:
    """``--panels``, ``--panel-images``, ``--panel-seed`` and ``--panels-dir``, which
    ``check_panel_flags`` checks after parsing."""
    parser.add_argument(
        "--panels", type=int, metavar="K", help="write prediction panels of K val images"
    )
    parser.add_argument(
        "--panel-images", nargs="+", metavar="NAME",
        help="draw these val images (a name as in the dataset, a file name or a stem)",
    )  # fmt: skip
    parser.add_argument(
        "--panel-seed", type=int, metavar="S", help="seed of the random choice (default: 0)"
    )
    parser.add_argument("--panels-dir", metavar="DIR", help="where panels go (default: below)")


def check_panel_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Overrides that ``--panel-images`` swallowed go back to the overrides; ``--panels`` is
    the number of images (the number named when only ``--panel-images`` is given); the other
    panel flags need one of the two."""
    take_overrides(parser, args, "panel_images")
    if args.panel_images:
        if args.panels is None:
            args.panels = len(args.panel_images)
        elif args.panels != len(args.panel_images):
            parser.error(f"--panels {args.panels} but --panel-images names "
                         f"{len(args.panel_images)} images")  # fmt: skip
        if args.panel_seed is not None:
            parser.error("--panel-seed draws images at random: not with --panel-images")
    if args.panels is not None and args.panels < 1:
        parser.error(f"--panels: expected a number of images >= 1, got {args.panels}")
    if not args.panels and (args.panel_seed is not None or args.panels_dir):
        parser.error("--panel-seed and --panels-dir need --panels or --panel-images")


def panel_indices(args: argparse.Namespace, dataset: SegmentationDataset) -> list[int]:
    """The images of ``dataset`` the panels show, as ``check_panel_flags`` left the flags
    (none without ``--panels``)."""
    if not args.panels:
        return []
    names = [name for _, _, name in dataset.items]
    seed = args.panel_seed if args.panel_seed is not None else 0
    chosen = choose_images(names, args.panels, args.panel_images, seed)
    if len(chosen) < args.panels:
        log.warning("--panels %d: there are %d images, drawing them all", args.panels, len(names))
    return chosen


def choose_images(
    names: Sequence[str], count: int | None, wanted: Sequence[str] | None, seed: int
) -> list[int]:
    """Indices into ``names`` of the images to draw, in dataset order: those ``wanted`` (each
    given as the dataset's name, its file name or its stem), else ``count`` drawn at random
    with ``seed`` (all of them when there are fewer)."""
    if wanted:
        keys: dict[str, int] = {}
        for i, name in enumerate(names):
            for key in (name, Path(name).name, Path(name).stem):
                keys.setdefault(key, i)
        missing = [w for w in wanted if w not in keys]
        if missing:
            shown = ", ".join(names[:3])
            raise UsageError(
                f"--panel-images: no val image named {', '.join(missing)} (names look like "
                f"{shown}{', ...' if len(names) > 3 else ''})"
            )
        return sorted({keys[w] for w in wanted})
    count = min(count or 0, len(names))
    return sorted(random.Random(seed).sample(range(len(names)), count))


def model_probs(model: Segmenter, device: torch.device, flip: bool) -> ProbsFn:
    """``model``'s softmax probabilities (eval mode, ``flip``-averaged) on ``device``."""
    model.eval()
    return lambda image, size: predict_scores(model, image.to(device), size, flip=flip)


def write_prediction_panels(
    dataset: torch.utils.data.Dataset, indices: Sequence[int], probs_of: ProbsFn, panels_dir: Path
) -> list[Path]:
    """A ``prediction_panel`` PNG per image ``indices`` of ``dataset`` (samples with labels),
    with the probabilities ``probs_of`` gives; returns the paths written."""
    written = []
    for i in indices:
        sample = dataset[i]
        probs = probs_of(sample.image[None], tuple(sample.label.shape))[0].cpu()
        panel = prediction_panel(_rgb(sample.image), sample.label.numpy(), probs)
        written.append(save_png(panel, panel_path(panels_dir, sample.name)))
    return written


def predicted_labels(
    dataset: torch.utils.data.Dataset, indices: Sequence[int], probs_of: ProbsFn
) -> list[np.ndarray]:
    """The (H, W) uint8 argmax of ``probs_of`` for each image ``indices`` of ``dataset``."""
    preds = []
    for i in indices:
        sample = dataset[i]
        probs = probs_of(sample.image[None], tuple(sample.label.shape))
        preds.append(predicted_train_ids(probs)[0].to(torch.uint8).cpu().numpy())
    return preds


def write_comparison_panel(
    dataset: torch.utils.data.Dataset,
    indices: Sequence[int],
    preds: Sequence[Sequence[np.ndarray]],
    names: Sequence[str],
    path: Path,
) -> Path:
    """``comparison_panel`` of images ``indices`` of ``dataset`` with ``preds[c]`` (one array
    per image) of each checkpoint c, written to ``path``."""
    samples = [dataset[i] for i in indices]
    panel = comparison_panel(
        [_rgb(s.image) for s in samples], [s.label.numpy() for s in samples], preds, names
    )
    return save_png(panel, path)


def _rgb(image: torch.Tensor) -> np.ndarray:
    """(3, h, w) normalised BGR -> (h, w, 3) uint8 RGB."""
    return denormalize(image).permute(1, 2, 0).numpy()


def _fit(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) array at (h, w) = ``size``: uint8 by nearest neighbour, float by bilinear."""
    if array.shape == tuple(size):
        return array
    h, w = size
    resample = Image.NEAREST if array.dtype == np.uint8 else Image.BILINEAR
    return np.asarray(Image.fromarray(array).resize((w, h), resample))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed-size bitmap font
        return ImageFont.load_default()


def _shorten(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
    """``text``, cut from the left with "..." until it fits ``width`` pixels."""
    shown = text
    while len(shown) > 1 and font.getlength(shown) > width:
        shown = shown[1:]
    return shown if shown == text else "..." + shown[3:]
