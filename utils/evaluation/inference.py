"""Predictions and their scores on the target val split (docs/method.md, "Evaluation"): input
resized, logits upsampled to the full-resolution label, argmax, one confusion matrix over the
split.

With flip averaging, the softmax probabilities of the image and of its mirror image (mirrored
back) are averaged at the label resolution: logits are upsampled first, as without flip, so a
flip-free prediction is exactly the argmax of the logits. An ensemble weighs its members'
scores (probabilities or logits, each member flip-averaged the same way) and one pass scores
every member and the ensemble together.

Predictions are trainIds: a model's output channels map to trainIds by
``dataset.labels.output_train_ids`` (19 outputs: themselves; 16 or 13: the SYNTHIA subsets), so
one 19-class confusion matrix serves every model and every reported class set (19, 16, 13;
``ConfusionMatrix.iou(classes)``). A *view* restricts the argmax to a set of trainIds (the
``--mask-absent`` protocol, ``utils.evaluation.reports``); the default view, None, is the
model's own argmax."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from dataset.datasets import Batch
from dataset.labels import NUM_CLASSES, output_train_ids
from model.contract import Segmenter
from utils.errors import (
    UsageError,
)
from utils.evaluation.metrics import ConfusionMatrix
from utils.evaluation.predictions import save_prediction
from utils.losses import upsample_to

log = logging.getLogger(__name__)

Space = Literal["prob", "logit"]
SPACES: tuple[str, ...] = ("prob", "logit")
View = tuple[int, ...] | None  # the trainIds an argmax may choose; None: every output


@torch.no_grad()
def predict_logits(model: Segmenter, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The model's prediction logits (``p1 + p2``, C2, or DAFormer's one head) upsampled to
    ``size`` (H, W) as the model's family resizes (``align_corners``)."""
    return upsample_to(model.predict(model(image)).float(), size, model.align_corners)


@torch.no_grad()
def predict_scores(
    model: Segmenter,
    image: torch.Tensor,
    size: tuple[int, int],
    *,
    flip: bool = False,
    space: Space = "prob",
) -> torch.Tensor:
    """B x K x H x W scores at ``size``: the prediction logits upsampled, then softmax
    probabilities (``space="prob"``) or the logits themselves (``"logit"``); ``flip=True``
    averages them with the scores of the mirrored image, mirrored back."""
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")

    def scores(x: torch.Tensor) -> torch.Tensor:
        logits = predict_logits(model, x, size)  # B x K x H x W
        return logits.softmax(1) if space == "prob" else logits

    out = scores(image)
    if flip:
        out = (out + scores(image.flip(-1)).flip(-1)) / 2
    return out


def predicted_train_ids(scores: torch.Tensor, view: View = None) -> torch.Tensor:
    """B x K x H x W scores -> B x H x W trainIds: the argmax over the outputs (over those whose
    trainId is in ``view``, when given), mapped by ``output_train_ids(K)``."""
    train_ids = torch.tensor(output_train_ids(scores.shape[1]), device=scores.device)
    if view is not None:
        allowed = torch.isin(train_ids, torch.tensor(view, device=scores.device))
        scores = scores.masked_fill(~allowed.view(1, -1, 1, 1), float("-inf"))
    return train_ids[scores.argmax(1)]


@torch.no_grad()
def evaluate_views(
    model: Segmenter,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    views: Sequence[View] = (None,),
    save_dir: str | Path | None = None,
    progress: bool = True,
    *,
    flip: bool = False,
    num_classes: int = NUM_CLASSES,
) -> list[ConfusionMatrix]:
    """Score ``model`` on every batch of ``loader`` (``flip``: average the softmax with the
    mirrored image's), one confusion matrix (over ``num_classes`` label classes) per view of
    the same scores; optionally write the first view's trainId and colour PNGs."""
    was_training = model.training
    model.eval()
    cms = [ConfusionMatrix(num_classes, device=device) for _ in views]
    for batch in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        label = _labels(batch, device)
        image = batch.image.to(device, non_blocking=True)
        space = "prob" if flip else "logit"  # without flip: the argmax of the logits
        scores = predict_scores(model, image, label.shape[-2:], flip=flip, space=space)
        preds = [predicted_train_ids(scores, view) for view in views]
        for pred, cm in zip(preds, cms):
            cm.update(pred, label)
        if save_dir is not None:
            for name, p in zip(batch.names, preds[0].to(torch.uint8).cpu().numpy()):
                save_prediction(p, name, Path(save_dir))
    for cm in cms:
        cm.all_reduce()
    model.train(was_training)
    return cms


def evaluate(
    model: Segmenter,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    num_classes: int = NUM_CLASSES,
    save_dir: str | Path | None = None,
    progress: bool = True,
    *,
    flip: bool = False,
) -> ConfusionMatrix:
    """``evaluate_views`` with the model's own argmax only: its confusion matrix over
    ``num_classes`` label classes."""
    views = (None,)
    return evaluate_views(model, loader, device, views, save_dir, progress, flip=flip,
                          num_classes=num_classes)[0]  # fmt: skip


def normalise_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """Ensemble weights that sum to 1 (``None``: equal); an error names a wrong count, a
    negative or non-finite weight, or a sum that is not positive."""
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise UsageError(f"--weights: {len(weights)} weights for {count} checkpoints")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise UsageError(f"--weights: each weight must be finite and >= 0, got {list(weights)}")
    total = sum(weights)
    if total <= 0:
        raise UsageError(f"--weights must sum to a positive number, got {list(weights)}")
    return [w / total for w in weights]


def combine_scores(
    scores: Sequence[torch.Tensor], weights: Sequence[float], names: Sequence[str]
) -> torch.Tensor:
    """sum_i w_i * scores_i; members whose scores differ in shape (classes or size) are an
    error naming them."""
    for name, s in zip(names[1:], scores[1:]):
        if s.shape != scores[0].shape:
            raise UsageError(
                f"ensemble members' outputs differ: {names[0]} gives {tuple(scores[0].shape)}, "
                f"{name} gives {tuple(s.shape)} (B x K x H x W)"
            )
    total = weights[0] * scores[0]
    for w, s in zip(weights[1:], scores[1:]):
        total = total + w * s
    return total


@torch.no_grad()
def member_scores(
    models: Sequence[Segmenter],
    image: torch.Tensor,
    size: tuple[int, int],
    *,
    flip: bool = False,
    space: Space = "prob",
    offload: bool = False,
) -> list[torch.Tensor]:
    """Each member's ``predict_scores`` for ``image``, computed on the image's device;
    ``offload``: each member visits that device only for its own pass and goes back to the
    CPU."""
    scores = []
    for model in models:
        model.to(image.device)
        scores.append(predict_scores(model, image, size, flip=flip, space=space))
        if offload:
            model.to("cpu")
    return scores


@torch.no_grad()
def evaluate_ensemble(
    models: Sequence[Segmenter],
    weights: Sequence[float],
    names: Sequence[str],
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    num_classes: int = NUM_CLASSES,
    *,
    flip: bool = False,
    combine: Space = "prob",
    offload: bool = False,
    save_dir: str | Path | None = None,
    progress: bool = True,
    views: Sequence[View] = (None,),
) -> tuple[list[list[ConfusionMatrix]], list[ConfusionMatrix]]:
    """One pass over ``loader`` scoring every member and the ensemble ``sum_i w_i S_i``, with
    ``S_i`` member i's ``predict_scores`` in the ``combine`` space (each with its own preset and
    flip averaging), each in every view. ``offload``: members wait on the CPU and each visits
    ``device`` only for its own forward pass. ``save_dir`` receives the ensemble's PNGs (first
    view). Returns the members' matrices (member, then view) and the ensemble's (per view)."""
    for model in models:
        model.eval().to("cpu" if offload else device)
    member_cms = [[ConfusionMatrix(num_classes, device=device) for _ in views] for _ in models]
    ensemble_cms = [ConfusionMatrix(num_classes, device=device) for _ in views]
    for batch in tqdm(loader, desc="ensemble", disable=not progress, leave=False):
        label = _labels(batch, device)
        image = batch.image.to(device, non_blocking=True)
        scores = member_scores(
            models, image, label.shape[-2:], flip=flip, space=combine, offload=offload
        )
        combined = combine_scores(scores, weights, names)
        for s, cms in [*zip(scores, member_cms), (combined, ensemble_cms)]:
            for view, cm in zip(views, cms):
                cm.update(predicted_train_ids(s, view), label)
        if save_dir is not None:
            pred = predicted_train_ids(combined, views[0])
            for name, p in zip(batch.names, pred.to(torch.uint8).cpu().numpy()):
                save_prediction(p, name, Path(save_dir))
    for cm in (*(cm for cms in member_cms for cm in cms), *ensemble_cms):
        cm.all_reduce()
    return member_cms, ensemble_cms


def _labels(batch: Batch, device: torch.device) -> torch.Tensor:
    if batch.label is None:
        raise ValueError("evaluation needs labels: the val dataset was built without them")
    return batch.label.to(device, non_blocking=True)
