"""mIoU on the target val split (SPEC.md, "Evaluation"): input resized, logits upsampled to the
full-resolution label, argmax, one confusion matrix over the split."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from dataset.labels import NUM_CLASSES, colorize
from model.deeplabv2 import DeepLabV2
from utils.losses import upsample_to
from utils.metrics import ConfusionMatrix

log = logging.getLogger(__name__)


@torch.no_grad()
def predict_logits(model: DeepLabV2, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The model's prediction logits (``p1 + p2`` or C2) upsampled to ``size`` (H, W)."""
    return upsample_to(model.predict(model(image)).float(), size)


@torch.no_grad()
def evaluate(
    model: DeepLabV2,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    num_classes: int = NUM_CLASSES,
    save_dir: str | Path | None = None,
    progress: bool = True,
) -> ConfusionMatrix:
    """Score ``model`` on every batch of ``loader``; optionally write trainId and colour PNGs."""
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes, device=device)
    for batch in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        if batch.label is None:
            raise ValueError("evaluation needs labels: the val dataset was built without them")
        label = batch.label.to(device, non_blocking=True)
        logits = predict_logits(model, batch.image.to(device, non_blocking=True), label.shape[-2:])
        pred = logits.argmax(1)
        cm.update(pred, label)
        if save_dir is not None:
            for name, p in zip(batch.names, pred.to(torch.uint8).cpu().numpy()):
                save_prediction(p, name, Path(save_dir))
    cm.all_reduce()
    model.train(was_training)
    return cm


def save_prediction(pred: np.ndarray, name: str, save_dir: Path) -> None:
    """``save_dir/<name>``: trainId PNG (what ``--pred-dir`` reads); ``save_dir/color/<name>``:
    the Cityscapes colours."""
    for path, array in ((save_dir / name, pred), (save_dir / "color" / name, colorize(pred))):
        path = path.with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)


def find_prediction(pred_dir: Path, name: str) -> Path:
    """The prediction for image ``name``: ``pred_dir/<name>`` or, as many repositories write
    them, ``pred_dir/<basename>``."""
    for candidate in (pred_dir / name, pred_dir / Path(name).name):
        candidate = candidate.with_suffix(".png")
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"--pred-dir {pred_dir}: no prediction for {name} (looked for {pred_dir / name} and "
        f"{pred_dir / Path(name).name})"
    )


def score_prediction_dir(
    pred_dir: str | Path,
    dataset: torch.utils.data.Dataset,
    num_classes: int = NUM_CLASSES,
    progress: bool = True,
) -> ConfusionMatrix:
    """Score trainId PNGs already on disk against ``dataset``'s labels (no model)."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"--pred-dir {pred_dir}: not a folder")
    cm = ConfusionMatrix(num_classes)
    for i in tqdm(range(len(dataset)), desc="score", disable=not progress, leave=False):
        sample = dataset[i]
        path = find_prediction(pred_dir, sample.name)
        pred = np.asarray(Image.open(path))
        if pred.ndim != 2:
            raise ValueError(
                f"{path}: expected a single-channel trainId PNG, got shape {pred.shape}"
            )
        if pred.shape != tuple(sample.label.shape):
            raise ValueError(
                f"{path}: prediction is {pred.shape[1]}x{pred.shape[0]} (WxH), the label is "
                f"{sample.label.shape[1]}x{sample.label.shape[0]}"
            )
        if pred.max() >= num_classes:
            raise ValueError(
                f"{path}: values must be trainIds 0..{num_classes - 1}, found {int(pred.max())}"
            )
        cm.update(torch.from_numpy(pred.astype(np.int64)), sample.label)
    return cm
