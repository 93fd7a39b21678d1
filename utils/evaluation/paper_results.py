"""The paper's Table 1 (GTA5 -> Cityscapes, DeepLab-v2 ResNet-101) as data.

Per-class IoU in percent, in trainId order (the paper's column order), and the mIoU the paper
states. Every row was measured with horizontal-flip averaging (docs/method.md, "Evaluation"). Rows
marked * are ensembles of a released model (weight 0.3) with the Norm-only model (0.7).

Each row carries the protocol it was scored with, as far as the paper says: every row but
MaxSquare's with AdaptSegNet's evaluation code (19 classes, labels at full resolution,
predictions upsampled to them); MaxSquare's 46.4 is the number MaxSquare reports, from its own
code (labels resized with the image to the input size, flip, its best checkpoint chosen on
val), where the paper measured 44.6 for the released model with AdaptSegNet's
(docs/evaluation.md, "Two evaluation protocols").

Every row was scored on Cityscapes val: ``other_val_set`` says where a result was scored on
another set (the synthetic benchmark, another dataset or split), and ``val_set_note`` gives the
line that a comparison of such a result with a row must carry.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from utils.errors import UsageError


class RowProtocol(NamedTuple):
    """How a row of Table 1 was scored."""

    label_size: str  # as eval.label_size: "full" (AdaptSegNet's evaluation) or "input"
    evaluation: str  # whose evaluation code
    flip: bool = True
    selection: str = ""  # how its snapshot was chosen, where the paper says

    def describe(self) -> str:
        """In words, e.g. "full-resolution labels (AdaptSegNet's evaluation), 19 classes, flip
        on"."""
        labels = (
            "full-resolution labels"
            if self.label_size == "full"
            else "labels resized (nearest) with the image to the input size"
        )
        flip = f"flip {'on' if self.flip else 'off'}"
        parts = [f"{labels} ({self.evaluation})", "19 classes", flip, self.selection]
        return ", ".join(p for p in parts if p)


ADAPTSEGNET_EVALUATION = RowProtocol("full", "AdaptSegNet's evaluation")


class PaperRow(NamedTuple):
    iou: tuple[float, ...]  # 19 per-class IoUs, percent, trainId order
    miou: float  # as the paper states it
    note: str = ""
    protocol: RowProtocol = ADAPTSEGNET_EVALUATION


TABLE1: dict[str, PaperRow] = {
    "AdaptSegNet": PaperRow(
        (86.5, 36.0, 79.9, 23.4, 23.3, 23.9, 35.2, 14.8, 83.4, 33.3,
         75.6, 58.5, 27.6, 73.7, 32.5, 35.4, 3.9, 30.1, 28.1),
        42.4,
    ),
    "CLAN": PaperRow(
        (87.0, 27.1, 79.6, 27.3, 23.3, 28.3, 35.5, 24.2, 83.6, 27.4,
         74.2, 58.6, 28.0, 76.2, 33.1, 36.7, 6.7, 31.9, 31.4),
        43.2,
    ),
    "SWD": PaperRow(
        (92.0, 46.4, 82.4, 24.8, 24.0, 35.1, 33.4, 34.2, 83.6, 30.4,
         80.9, 56.9, 21.9, 82.0, 24.4, 28.7, 6.1, 25.0, 33.6),
        44.5,
    ),
    "MaxSquare": PaperRow(
        (89.4, 43.0, 82.1, 30.5, 21.3, 30.3, 34.7, 24.0, 85.3, 39.4,
         78.2, 63.0, 22.9, 84.6, 36.4, 43.0, 5.5, 34.7, 33.5),
        46.4,
        "as MaxSquare reports it; the paper's own evaluation of the released model gave 44.6",
        RowProtocol(
            "input",
            "MaxSquare's own evaluation; AdaptSegNet's gave the released model 44.6",
            True,
            "its best checkpoint chosen on val",
        ),
    ),
    "Source only": PaperRow(
        (75.8, 16.8, 77.2, 12.5, 21.0, 25.5, 30.1, 20.1, 81.3, 24.6,
         70.3, 53.8, 26.4, 49.9, 17.2, 25.9, 6.5, 25.3, 36.0),
        36.6,
    ),
    "Only Norm": PaperRow(
        (86.59, 26.65, 79.63, 27.15, 22.61, 29.37, 37.19, 27.39, 83.21, 31.44,
         73.7, 60.36, 28.91, 81.92, 33.41, 36.53, 1.85, 32.23, 36.44),
        44.03,
        "best of 36 snapshots (2k..72k) chosen on val",
        RowProtocol("full", "AdaptSegNet's evaluation", True,
                    "best of 36 snapshots (2k..72k) chosen on val"),
    ),
    "CLAN + Norm*": PaperRow(
        (87.73, 25.41, 80.32, 28.65, 23.41, 29.47, 37.49, 26.6, 83.93, 35.38,
         74.38, 60.39, 28.9, 83.48, 35.42, 39.36, 1.1, 32.83, 36.27),
        44.76,
    ),
    "CLAN + Norm": PaperRow(
        (88.83, 33.17, 81.48, 32.66, 24.24, 32.28, 37.65, 27.53, 83.94, 33.88,
         75.42, 60.99, 28.11, 84.73, 33.36, 42.76, 0.97, 31.13, 36.66),
        45.67,
        "the mean of the per-class values is 45.78",
    ),
    "MaxSquare + Norm*": PaperRow(
        (89.57, 40.32, 82.06, 33.58, 23.35, 29.77, 36.11, 23.68, 84.33, 39.61,
         74.89, 60.31, 27.3, 83.84, 42.8, 45.95, 1.9, 32.16, 37.87),
        46.81,
    ),
}  # fmt: skip


def paper_row(name: str, option: str = "--compare-with") -> tuple[str, PaperRow]:
    """The Table 1 row called ``name`` (case and spaces ignored); an error, naming the
    ``option`` that gave it, lists the rows."""
    wanted = _key(name)
    for row_name, row in TABLE1.items():
        if _key(row_name) == wanted:
            return row_name, row
    raise UsageError(
        f"{option} {name!r}: no such row in the paper's Table 1 "
        f"(rows: {', '.join(repr(n) for n in TABLE1)})"
    )


def _key(name: str) -> str:
    return "".join(name.split()).lower()


def other_val_set(data: Mapping[str, Any]) -> str | None:
    """Where a result whose config's ``data`` section (a plain dict) is ``data`` was scored, in
    words, when that is not Cityscapes val: the synthetic benchmark's val split (a Cityscapes
    layout under ``data.synthetic.root``), a labelled folder, another dataset or split; None
    for Cityscapes val."""
    val = data.get("val") or {}
    dataset, split, root = val.get("dataset"), val.get("split"), val.get("root")
    synthetic = (data.get("synthetic") or {}).get("root")
    inside = bool(synthetic and root) and Path(os.path.abspath(root)).is_relative_to(
        os.path.abspath(synthetic)
    )
    if dataset == "cityscapes" and inside:
        return f"the synthetic benchmark's {split} split ({root})"
    if dataset == "folder":
        return f"the labelled folder {root}"
    if dataset != "cityscapes" or split != "val":
        return f"{dataset} {split} ({root})"
    return None


def val_set_note(name: str, data: Mapping[str, Any]) -> str | None:
    """The line beside a comparison with the paper's row ``name`` of a result scored with
    ``data`` (a config's ``data`` section) on another set than Cityscapes val; None where the
    result was scored on Cityscapes val."""
    other = other_val_set(data)
    if other is None:
        return None
    return (
        f"not like for like: ours is scored on {other}, while the paper's row {name!r} is GTA5 -> "
        f"Cityscapes, scored on Cityscapes val; the difference compares two different val sets"
    )
