"""Prediction files: trainId and colour PNGs written beside an evaluation (``--save-dir``),
where the prediction panels go, the guard that keeps what these would replace, and trainId
PNGs on disk scored without a model (``--pred-dir``), with the config recorded beside them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from dataset.labels import NUM_CLASSES, colorize
from utils.errors import MissingPredictionError, PredictionError, refuse_overwrite
from utils.evaluation.metrics import ConfusionMatrix
from utils.files import save_png


def prediction_paths(name: str, save_dir: Path) -> tuple[Path, Path]:
    """Where ``save_prediction`` writes image ``name``: its trainId PNG and its colour PNG."""
    return (save_dir / name).with_suffix(".png"), (save_dir / "color" / name).with_suffix(".png")


def save_prediction(pred: np.ndarray, name: str, save_dir: Path) -> None:
    """``save_dir/<name>``: trainId PNG (what ``--pred-dir`` reads); ``save_dir/color/<name>``:
    the Cityscapes colours."""
    for path, array in zip(prediction_paths(name, save_dir), (pred, colorize(pred))):
        save_png(array, path)


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


def recorded_config(pred_dir: Path) -> dict[str, Any] | None:
    """The config recorded in ``pred_dir/results.json`` when that is a results file of this
    repository (it has ``provenance``) with one: the config of the evaluation that wrote the
    predictions there (``--save-dir``), or of an earlier score of them; None otherwise."""
    path = pred_dir / "results.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or "provenance" not in record:
        return None
    config = record.get("config")
    return config if isinstance(config, dict) else None


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


def panel_path(panels_dir: Path, name: str) -> Path:
    """Where the prediction panel of val image ``name`` goes: ``panels_dir/<stem>.png``."""
    return panels_dir / f"{Path(name).stem}.png"


def refuse_replacing(
    names: list[str],
    save_dir: Path | None,
    results: Path,
    panels_dir: Path | None,
    panel_names: list[str],
) -> None:
    """Before any work, unless ``--overwrite``: the files an evaluation of the images ``names``
    would replace in ``save_dir`` (their PNGs and the results JSON, when it goes there) and in
    ``panels_dir`` (the panels of ``panel_names``)."""
    if save_dir is not None:
        targets = [results, *(p for name in names for p in prediction_paths(name, save_dir))]
        refuse_overwrite(save_dir, "--save-dir", targets)
    if panels_dir is not None and panel_names:
        refuse_overwrite(
            panels_dir, "--panels-dir", [panel_path(panels_dir, n) for n in panel_names]
        )
