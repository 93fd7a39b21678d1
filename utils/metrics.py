"""Confusion matrix, per-class IoU and mIoU (one matrix over the whole split)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from dataset.labels import IGNORE_INDEX


class ConfusionMatrix:
    """``mat[t, p]`` counts pixels of true class t predicted as p; ``ignore_index`` is skipped."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(
        self, pred: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
    ) -> None:
        """Add a batch: ``pred`` and ``target`` integer tensors of the same shape."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != label {tuple(target.shape)}")
        k = self.num_classes
        valid = target != ignore_index
        t = target[valid].to(torch.int64)
        p = pred[valid].to(torch.int64)
        if t.numel() and (int(t.max()) >= k or int(t.min()) < 0):
            raise ValueError(f"label values must be in [0, {k}) or {ignore_index}")
        if p.numel() and (int(p.max()) >= k or int(p.min()) < 0):
            raise ValueError(f"predicted values must be in [0, {k})")
        self.mat += torch.bincount(t * k + p, minlength=k * k).reshape(k, k).to(self.mat.device)

    def all_reduce(self) -> None:
        """Sum the matrix over processes, so a distributed evaluation is exact."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat)

    def iou(self) -> list[float]:
        """Per-class ``TP / (TP + FP + FN)``; NaN for a class absent from labels and predictions."""
        m = self.mat.double().cpu()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        return [float(tp[c] / union[c]) if union[c] > 0 else math.nan for c in range(len(tp))]

    def miou(self) -> float:
        """Mean IoU over classes that occur (nan-mean)."""
        return nanmean(self.iou())

    def pixel_accuracy(self) -> float:
        m = self.mat.double()
        return float(m.diag().sum() / m.sum().clamp(min=1))


# The paper's Table 1 column headings, in trainId order.
SHORT_NAMES: tuple[str, ...] = (
    "road", "sdwk", "bldng", "wall", "fence", "pole", "light", "sign", "vgtn", "trrn",
    "sky", "person", "rider", "car", "truck", "bus", "train", "mcycl", "bcycl",
)  # fmt: skip


def nanmean(values: list[float]) -> float:
    present = [v for v in values if not math.isnan(v)]
    return sum(present) / len(present) if present else math.nan


def format_iou_table(rows: dict[str, list[float]], names: tuple[str, ...] = SHORT_NAMES) -> str:
    """Markdown table: one row per method, per-class IoU (percent) in the paper's column order,
    then mIoU. ``rows`` maps a row label to its per-class IoUs (fractions, NaN for absent)."""
    label_width = max(len("method"), *(len(r) for r in rows))
    head = [f"{'method':<{label_width}}", *(f"{n:>6}" for n in names), "  mIoU"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("-" * (len(h) + 2) for h in head) + "|"]
    for label, ious in rows.items():
        cells = [f"{label:<{label_width}}", *(_pct(v) for v in ious), _pct(nanmean(ious))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pct(v: float) -> str:
    return "   nan" if math.isnan(v) else f"{100 * v:6.2f}"
