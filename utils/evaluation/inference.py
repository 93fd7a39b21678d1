"""mIoU on the target val split (SPEC.md, "Evaluation"): input resized, logits upsampled to the
full-resolution label, argmax, one confusion matrix over the split.

With flip averaging, the softmax probabilities of the image and of its mirror image (mirrored
back) are averaged at the label resolution: logits are upsampled first, as without flip, so a
flip-free prediction is exactly the argmax of the logits. An ensemble weighs its members'
scores (probabilities or logits, each member flip-averaged the same way) and one pass scores
every member and the ensemble together.

Predictions are trainIds: a model's output channels map to trainIds by
``dataset.labels.output_train_ids`` (19 outputs: themselves; 16 or 13: the SYNTHIA subsets), so
one 19-class confusion matrix serves every model and every reported class set (19, 16, 13;
``ConfusionMatrix.iou(classes)``). A *view* restricts the argmax to a set of trainIds (the
``--mask-absent`` protocol); the default view, None, is the model's own argmax."""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from dataset.datasets import Batch
from dataset.labels import CLASS_NAMES, CLASS_SUBSETS, NUM_CLASSES, colorize, output_train_ids
from model.deeplabv2 import DeepLabV2
from utils.config import PRESETS, Config, config_from_dict, load_config, split_overrides
from utils.errors import (
    MissingPredictionError,
    OutputExistsError,
    PredictionError,
    UsageError,
)
from utils.evaluation.metrics import ConfusionMatrix, format_iou_table, miou_name, nanmean
from utils.losses import upsample_to

log = logging.getLogger(__name__)

Space = Literal["prob", "logit"]
SPACES: tuple[str, ...] = ("prob", "logit")
View = tuple[int, ...] | None  # the trainIds an argmax may choose; None: every output


@torch.no_grad()
def predict_logits(model: DeepLabV2, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The model's prediction logits (``p1 + p2`` or C2) upsampled to ``size`` (H, W)."""
    return upsample_to(model.predict(model(image)).float(), size)


@torch.no_grad()
def predict_scores(
    model: DeepLabV2,
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


def class_views(classes: Sequence[int], mask_absent: bool) -> list[View]:
    """The views that reporting ``classes`` needs: the model's own argmax (which gives the
    19-class scores, and every subset's without ``mask_absent``), then with ``mask_absent`` an
    argmax restricted to each reported subset of fewer than 19 classes."""
    masked = [CLASS_SUBSETS[k] for k in classes if mask_absent and k != NUM_CLASSES]
    return [None, *masked]


def class_ious(
    cms: Sequence[ConfusionMatrix], classes: Sequence[int], mask_absent: bool
) -> dict[int, list[float]]:
    """Per reported class count, the IoUs of its classes (trainId order), from the matrices of
    ``class_views(classes, mask_absent)``, in that order."""
    masked = iter(cms[1:])
    out = {}
    for k in classes:
        cm = next(masked) if mask_absent and k != NUM_CLASSES else cms[0]
        out[k] = cm.iou(CLASS_SUBSETS[k])
    return out


def class_tables(
    rows: dict[str, dict[int, list[float]]], classes: Sequence[int], mask_absent: bool
) -> str:
    """One IoU table per reported class count (``rows``: label -> ``class_ious``; a row without
    a count is left out of its table), each subset's below a line that says how predictions of
    the classes outside the set were scored."""
    tables = []
    for k in classes:
        if k != NUM_CLASSES:
            absent = ", ".join(c for i, c in enumerate(CLASS_NAMES) if i not in CLASS_SUBSETS[k])
            rule = (
                "--mask-absent: the argmax is taken over these classes only"
                if mask_absent
                else "a prediction of an absent class is an error (a false negative of the "
                "true class)"
            )
            tables.append(f"{k} classes (without {absent}); {rule}:")
        shown = {label: by_k[k] for label, by_k in rows.items() if k in by_k}
        tables.append(format_iou_table(shown, k))
    return "\n".join(tables)


def class_results(
    ious: dict[int, list[float]],
    cms: Sequence[ConfusionMatrix],
    mask_absent: bool,
    by_name: bool = True,
) -> dict[str, Any]:
    """The results-JSON fields of ``class_ious``: ``mIoU`` and ``iou`` for the 19 classes of the
    model's own argmax, whichever sets were reported, then ``mIoU16``/``iou16`` and
    ``mIoU13``/``iou13`` for the subsets reported, and ``mask_absent`` with them. IoUs by class
    name, or with ``by_name=False`` as lists in trainId order (a run's ``results.json``)."""

    def per_class(classes: Sequence[int], values: list[float]) -> dict[str, float] | list[float]:
        return {CLASS_NAMES[c]: v for c, v in zip(classes, values)} if by_name else values

    out: dict[str, Any] = {
        "mIoU": cms[0].miou(),
        "iou": per_class(CLASS_SUBSETS[NUM_CLASSES], cms[0].iou()),
    }
    for k, values in ious.items():
        if k != NUM_CLASSES:
            out[miou_name(k)] = nanmean(values)
            out[f"iou{k}"] = per_class(CLASS_SUBSETS[k], values)
    if any(k != NUM_CLASSES for k in ious):
        out["mask_absent"] = mask_absent
    return out


def mask_note(classes: Sequence[int], mask_absent: bool) -> list[str]:
    """The row-label note of ``--mask-absent``: none where it changes nothing."""
    changes = mask_absent and any(k != NUM_CLASSES for k in classes)
    return ["absent classes masked"] if changes else []


def class_mious(ious: dict[int, list[float]]) -> dict[int, float]:
    """The mean of each reported class set's IoUs (``class_ious``), in the order reported."""
    return {k: nanmean(values) for k, values in ious.items()}


def miou_lines(mious: dict[int, float]) -> list[str]:
    """``mIoU: NN.NN`` (19 classes), ``mIoU16: NN.NN``, ... in the order reported."""
    return [f"{miou_name(k)}: {100 * miou:.2f}" for k, miou in mious.items()]


@torch.no_grad()
def evaluate_views(
    model: DeepLabV2,
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
    model: DeepLabV2,
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
    models: Sequence[DeepLabV2],
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
    models: Sequence[DeepLabV2],
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


def add_checkpoint_flags(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--preset`` and ``--flip``, which ``checkpoint_overrides`` reads: how
    ``evaluate_cityscapes.py`` and ``predict.py`` configure a checkpoint."""
    parser.add_argument("--config", help="YAML for the model and data.val (default: checkpoint's)")
    parser.add_argument(
        "--preset", choices=list(PRESETS), help="network layout (sets model.preset)"
    )
    parser.add_argument(
        "--flip", action="store_true", help="average with the mirrored image (sets eval.flip)"
    )


def checkpoint_overrides(args: argparse.Namespace) -> list[str]:
    """``args.overrides`` with ``--preset`` and ``--flip`` as the overrides they stand for."""
    overrides = list(args.overrides)
    if args.preset:
        overrides.append(f"model.preset={args.preset}")
    if args.flip:
        overrides.append("eval.flip=true")
    return overrides


def add_class_flags(parser: argparse.ArgumentParser) -> None:
    """``--classes`` and ``--mask-absent``, which ``check_class_flags`` and ``class_overrides``
    read: which class sets a score reports, and how predictions of the classes outside a set
    count."""
    parser.add_argument(
        "--classes", nargs="+", metavar="{19,16,13}",
        help="class sets to report (sets eval.classes; default: the config's, [19], or [16, "
        "13] for SYNTHIA configs): 16 = without terrain, truck, train; 13 = also without "
        "wall, fence, pole",
    )  # fmt: skip
    parser.add_argument(
        "--mask-absent", action="store_true",
        help="take the argmax over each set's classes only (sets eval.mask_absent); without "
        "it a prediction of a class outside the set is an error of the true class",
    )  # fmt: skip


def check_class_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--classes`` as ints; the ``key.sub=value`` words it swallowed go to the overrides."""
    if not args.classes:
        return
    words, moved = split_overrides(args.classes)
    args.overrides = [*moved, *args.overrides]
    choices = [str(k) for k in CLASS_SUBSETS]
    bad = [w for w in words if w not in choices]
    if bad or not words:
        parser.error(f"--classes: expected class counts from {', '.join(choices)}, got "
                     f"{' '.join(bad) or 'none'}")  # fmt: skip
    args.classes = [int(w) for w in words]


def class_overrides(args: argparse.Namespace) -> list[str]:
    """``--classes`` and ``--mask-absent`` as the overrides they stand for."""
    overrides = []
    if args.classes:
        overrides.append(f"eval.classes=[{','.join(map(str, args.classes))}]")
    if args.mask_absent:
        overrides.append("eval.mask_absent=true")
    return overrides


def eval_config(
    config_path: str | None, stored: dict[str, Any] | None, overrides: Sequence[str]
) -> Config:
    """The config to evaluate a file with: ``config_path`` if given, else the config stored in
    the checkpoint, else the defaults; ``overrides`` on top."""
    if config_path:
        return load_config(config_path, overrides)
    if stored is not None:
        return config_from_dict(stored, overrides)
    return load_config(None, overrides)


def _labels(batch: Batch, device: torch.device) -> torch.Tensor:
    if batch.label is None:
        raise ValueError("evaluation needs labels: the val dataset was built without them")
    return batch.label.to(device, non_blocking=True)


def prediction_paths(name: str, save_dir: Path) -> tuple[Path, Path]:
    """Where ``save_prediction`` writes image ``name``: its trainId PNG and its colour PNG."""
    return (save_dir / name).with_suffix(".png"), (save_dir / "color" / name).with_suffix(".png")


def refuse_overwrite(folder: Path, option: str, targets: Sequence[Path]) -> None:
    """An error naming the files ``folder`` (given as ``option``) already holds among
    ``targets``, the files this run would write; targets outside ``folder`` are not checked."""
    existing = [p for p in targets if p.exists() and folder in p.parents]
    if existing:
        shown = ", ".join(str(p) for p in existing[:3])
        raise OutputExistsError(
            f"{option} {folder} already holds {len(existing)} of this run's files ({shown}"
            f"{', ...' if len(existing) > 3 else ''}): pass --overwrite to replace them"
        )


def short_names(paths: Sequence[str | Path]) -> list[str]:
    """Display names: the shortest trailing parts of each path that tell the files apart, a
    run's checkpoint (``RUN/checkpoints/X.pth``) named with its run (``RUN/X.pth``). The same
    file given twice keeps its name twice: the caller numbers them."""

    def trail(path: Path, depth: int) -> str:
        if path.parent.name == "checkpoints" and path.parent.parent.name:
            path, depth = path.parent.parent / path.name, max(depth, 2)
        return "/".join(path.parts[-depth:])

    files = [Path(p) for p in paths]
    for depth in range(1, max(len(p.parts) for p in files) + 1):
        names = [trail(p, depth) for p in files]
        if len(set(names)) == len(names):
            return names
    return [trail(p, 1) for p in files]


def save_prediction(pred: np.ndarray, name: str, save_dir: Path) -> None:
    """``save_dir/<name>``: trainId PNG (what ``--pred-dir`` reads); ``save_dir/color/<name>``:
    the Cityscapes colours."""
    for path, array in zip(prediction_paths(name, save_dir), (pred, colorize(pred))):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)


def find_prediction(pred_dir: Path, name: str) -> Path:
    """The prediction for image ``name``: ``pred_dir/<name>`` or, as many repositories write
    them, ``pred_dir/<basename>``."""
    for candidate in (pred_dir / name, pred_dir / Path(name).name):
        candidate = candidate.with_suffix(".png")
        if candidate.is_file():
            return candidate
    raise MissingPredictionError(
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
        raise MissingPredictionError(f"--pred-dir {pred_dir}: not a folder")
    cm = ConfusionMatrix(num_classes)
    for i in tqdm(range(len(dataset)), desc="score", disable=not progress, leave=False):
        sample = dataset[i]
        path = find_prediction(pred_dir, sample.name)
        pred = np.asarray(Image.open(path))
        if pred.ndim != 2:
            raise PredictionError(
                f"{path}: expected a single-channel trainId PNG, got shape {pred.shape}"
            )
        if pred.shape != tuple(sample.label.shape):
            raise PredictionError(
                f"{path}: prediction is {pred.shape[1]}x{pred.shape[0]} (WxH), the label is "
                f"{sample.label.shape[1]}x{sample.label.shape[0]}"
            )
        if pred.max() >= num_classes:
            raise PredictionError(
                f"{path}: values must be trainIds 0..{num_classes - 1}, found {int(pred.max())}"
            )
        cm.update(torch.from_numpy(pred.astype(np.int64)), sample.label)
    return cm
