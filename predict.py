r"""Segment a folder of your own images with a trained G: trainId PNGs, colours and overlays.

    python predict.py --restore runs/RUN/checkpoints/last.pth --input photos/ --out preds/
    python predict.py --restore GTA2Cityscapes_CLAN.pth --input photos/ --out preds/ --flip
    python predict.py --restore ADVENT.pth --preset advent --input photos/ --out preds/ --device cpu
    python predict.py --restore last.pth --input photos/ --out preds/ data.val.resize=[2048,1024]

Every image under ``--input`` (searched recursively; every format PIL reads: png, jpg, bmp,
tif, webp, ppm...; the log names the other files, which are skipped) is turned upright by its
EXIF orientation, resized as the checkpoint's config resizes Cityscapes val
(``data.val.resize``, 1024x512 by default, whatever the image's aspect ratio), and its logits
are upsampled back to the image's own size before the argmax, as ``evaluate_cityscapes.py``
does. ``--flip`` averages the softmax with the mirrored image's. For ``photos/a/b.jpg`` it
writes:

    preds/a/b.png            trainIds 0..18 (what evaluate_cityscapes.py --pred-dir reads)
    preds/color/a/b.png      the Cityscapes colours
    preds/overlay/a/b.png    the image blended with them (--alpha: the colours' weight)
    preds/legend.png         once: the colour of each class the model predicts (kept if there)

The checkpoint is loaded as ``evaluate_cityscapes.py`` loads it: its stored config (or
``--config``, or the defaults for files from elsewhere, whose preset is inferred unless
``--preset`` names it), with ``key.sub=value`` overrides on top. Existing outputs are kept
unless ``--overwrite``. A file that cannot be read is reported and skipped; the others are
segmented.

Exit status: 0 when every image was segmented; 1 when some files could not be read (they are
listed at the end; every other image was written); 2 when bad input stops the run before any
image (an argument, the config, the checkpoint, an --input without images, existing outputs).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dataset.datasets import CorruptImageError
from dataset.folder import find_images, listed, read_upright
from dataset.labels import output_train_ids
from dataset.transforms import PairedTransform, TransformSpec
from model.build import preset_name
from model.contract import Segmenter
from utils.analysis.panels import legend, overlay
from utils.distributed import DistInfo, describe
from utils.errors import UsageError, add_debug_flag, refuse_overwrite, run
from utils.evaluation.inference import predict_scores, predicted_train_ids
from utils.evaluation.predictions import prediction_paths, save_prediction
from utils.evaluation.prepare import (
    add_checkpoint_flags,
    checkpoint_overrides,
    prepare_eval,
)
from utils.files import save_png
from utils.logger import setup_logging

log = logging.getLogger("predict")

EXIT_UNREADABLE = 1
LEGEND = "legend.png"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--restore", required=True, metavar="CKPT", help="weights of G")
    parser.add_argument("--input", required=True, metavar="DIR", help="folder of images")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the outputs")
    add_checkpoint_flags(parser)
    parser.add_argument(
        "--device", metavar="auto|cpu|cuda[:N]", help="sets train.device (default: the config's)"
    )
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="weight of the colours in the overlay (0..1)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace files in --out")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if not 0 <= args.alpha <= 1:
        parser.error(f"--alpha: expected a number in [0, 1], got {args.alpha}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    root, out = Path(args.input), Path(args.out)
    images = input_images(root, out)
    if not args.overwrite:
        refuse_overwrite(out, "--out", [p for path in images for p in outputs(root, path, out)])

    overrides = checkpoint_overrides(args)
    if args.device:
        overrides.append(f"train.device={args.device}")
    ev = prepare_eval([args.restore], args.config, overrides, data=False)  # the user's images
    cfg, device = ev.cfg, ev.device
    model, model_cfg, _ = ev.restore(0)
    model.eval().to(device)
    transform = PairedTransform(TransformSpec(resize=cfg.data.val.resize))
    flip = cfg.eval.flip
    log.info("%d images from %s; preset %s, input resized to %s, flip averaging %s, %s",
             len(images), root, preset_name(model_cfg), cfg.data.val.resize or "(unchanged)",
             "on" if flip else "off", describe(DistInfo(), device))  # fmt: skip

    if args.overwrite or not (out / LEGEND).exists():  # the colours of an earlier run are kept
        save_png(legend(output_train_ids(model_cfg.num_classes)), out / LEGEND)
    unreadable = []
    for path in tqdm(images, desc="predict", unit="image"):
        try:
            image = read_photo(path)
        except CorruptImageError as err:
            log.error("%s (skipped)", err)
            unreadable.append(str(err))
            continue
        pred = segment(model, image, transform, device, flip=flip)
        name = path.relative_to(root).as_posix()
        save_prediction(pred, name, out)
        save_png(overlay(image, pred, args.alpha), outputs(root, path, out)[2])
    log.info("%d of %d images segmented into %s", len(images) - len(unreadable), len(images), out)
    if unreadable:
        print(
            f"error: {len(unreadable)} of {len(images)} files could not be read:", file=sys.stderr
        )
        for message in unreadable:
            print(f"  {message}", file=sys.stderr)
        return EXIT_UNREADABLE
    return 0


def input_images(root: Path, out: Path) -> list[Path]:
    """Every file under ``root`` whose extension PIL opens (outside ``out``), sorted; an error
    when there are none, or when two would write the same output (``a.jpg`` and ``a.png``)."""
    if not root.is_dir():
        raise UsageError(f"--input {root}: not a folder")
    images, others = find_images(root, exclude=[out])  # outputs inside --input are not inputs
    if not images:
        raise UsageError(f"--input {root}: no images (no file with an extension PIL reads, such "
                         f"as .png, .jpg, .tif, .webp)")  # fmt: skip
    if others:
        log.info(skipping([p.relative_to(root).as_posix() for p in others]))
    owner: dict[Path, Path] = {}
    for path in images:
        for target in outputs(root, path, out):
            if target in owner:
                raise UsageError(f"{owner[target]} and {path} would both be written to {target}: "
                                 f"rename one")  # fmt: skip
            owner[target] = path
    return images


def skipping(others: list[str]) -> str:
    """What the log says of the files under --input that are not images: how many, and the
    first few by name."""
    if len(others) == 1:
        return f"skipping 1 file that is not an image by its extension: {others[0]}"
    return f"skipping {len(others)} files that are not images by their extension: {listed(others)}"


def outputs(root: Path, path: Path, out: Path) -> tuple[Path, Path, Path]:
    """The trainId PNG, the colour PNG and the overlay of image ``path`` under ``out``."""
    name = path.relative_to(root).as_posix()
    return (*prediction_paths(name, out), (out / "overlay" / name).with_suffix(".png"))


def read_photo(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of any image PIL reads, upright by its EXIF orientation; a
    ``CorruptImageError`` naming the file when it cannot be decoded."""
    return read_upright(path).permute(1, 2, 0).numpy()


@torch.no_grad()
def segment(
    model: Segmenter,
    image: np.ndarray,
    transform: PairedTransform,
    device: torch.device,
    *,
    flip: bool = False,
) -> np.ndarray:
    """(H, W) uint8 trainIds of an (H, W, 3) uint8 RGB image: ``transform`` (the eval resize),
    logits upsampled to (H, W), argmax (of the flip-averaged softmax with ``flip``)."""
    x, _ = transform(torch.from_numpy(image).permute(2, 0, 1), None, torch.Generator())
    space = "prob" if flip else "logit"  # without flip: the argmax of the logits, as evaluate
    scores = predict_scores(model, x[None].to(device), image.shape[:2], flip=flip, space=space)
    return predicted_train_ids(scores)[0].to(torch.uint8).cpu().numpy()  # 16/13 outputs mapped


if __name__ == "__main__":
    sys.exit(run(main))
