"""Confusion matrix, per-class IoU and mIoU (one matrix over the whole split), on all 19
classes or on a subset of them (SYNTHIA -> Cityscapes: 16 and 13), a subset's IoUs counted by
one of two protocols (``eval.subset_protocol``: ``ConfusionMatrix.iou``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist

from dataset.labels import CLASS_SUBSETS, IGNORE_INDEX, NUM_CLASSES
from utils.config import SUBSET_PROTOCOLS


class ConfusionMatrix:
    """``mat[t, p]`` counts pixels of true class t predicted as p; ``ignore_index`` is skipped.

    ``update`` never waits for the device (no ``.item()``, no boolean indexing): labels or
    predictions outside ``[0, num_classes)`` are counted on the device beside the matrix and
    raise a ``ValueError`` when the matrix is read, once, after the loop.
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = k = num_classes
        # k*k cells, then: bad labels, bad predictions, ignored pixels.
        self.counts = torch.zeros(k * k + 3, dtype=torch.int64, device=device)

    def update(
        self, pred: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
    ) -> None:
        """Add a batch: ``pred`` and ``target`` integer tensors of the same shape."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != label {tuple(target.shape)}")
        k, device = self.num_classes, self.counts.device
        t = target.to(device=device, dtype=torch.int64).reshape(-1)
        p = pred.to(device=device, dtype=torch.int64).reshape(-1)
        bad_t = (t < 0) | (t >= k)
        bad_p = (p < 0) | (p >= k)
        cell = torch.where(bad_p, k * k + 1, t * k + p)
        cell = torch.where(bad_t, k * k, cell)
        cell = torch.where(t == ignore_index, k * k + 2, cell)
        ones = torch.ones((), dtype=torch.int64, device=device).expand_as(cell)
        self.counts.scatter_add_(0, cell, ones)

    @property
    def mat(self) -> torch.Tensor:
        """The k x k matrix (a view); raises if any label or prediction was out of range."""
        k = self.num_classes
        bad_labels, bad_preds = self.counts[k * k : k * k + 2].tolist()
        if bad_labels:
            raise ValueError(
                f"label values must be in [0, {k}) or the ignore index: {bad_labels} pixels "
                f"were not"
            )
        if bad_preds:
            raise ValueError(f"predicted values must be in [0, {k}): {bad_preds} pixels were not")
        return self.counts[: k * k].view(k, k)

    def all_reduce(self) -> None:
        """Sum the counts over processes, so a distributed evaluation is exact."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.counts)

    def iou(
        self, classes: Sequence[int] | None = None, protocol: str = "ignore_outside"
    ) -> list[float]:
        """Per-class ``TP / (TP + FP + FN)`` of ``classes`` (default: all), in their order; NaN
        for a class whose union is empty (neither labelled nor predicted on the pixels counted).

        ``protocol`` (``eval.subset_protocol``) says what a subset S counts; on all the classes
        the two are the same.

        - ``ignore_outside``: a pixel labelled outside S is ignored, and a pixel of class c in
          S predicted as a class outside S is a false negative of c and a false positive of
          nothing: FN counts c's whole row, FP c's column over the rows of S. This is
          cityscapesscripts' IoU with the classes outside S marked ``ignoreInEval``.
        - ``full_matrix``: the IoUs of the whole matrix, read at the classes of S: FN counts
          c's whole row, FP c's whole column, so a pixel labelled outside S and predicted as c
          is a false positive of c: the 19-class scores of DACS's and DAFormer's evaluations,
          averaged over S (docs/synthia.md, "Scoring a subset: two protocols")."""
        if protocol not in SUBSET_PROTOCOLS:
            raise ValueError(
                f"subset protocol {protocol!r} (eval.subset_protocol, --subset-protocol): "
                f"expected one of {', '.join(SUBSET_PROTOCOLS)}"
            )
        m = self.mat.double().cpu()
        rows = list(range(self.num_classes)) if classes is None else list(classes)
        tp = m.diag()
        predicted = m.sum(0) if protocol == "full_matrix" else m[rows].sum(0)
        union = m.sum(1) + predicted - tp
        return [float(tp[c] / union[c]) if union[c] > 0 else math.nan for c in rows]

    def miou(self, classes: Sequence[int] | None = None, protocol: str = "ignore_outside") -> float:
        """Mean IoU over the classes of ``classes`` (default: all) that occur (nan-mean), each
        class's IoU counted as ``protocol`` says (``iou``)."""
        return nanmean(self.iou(classes, protocol))

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


def miou_name(num_classes: int) -> str:
    """``mIoU`` for the 19 classes, ``mIoU16`` / ``mIoU13`` for the SYNTHIA subsets."""
    return "mIoU" if num_classes == NUM_CLASSES else f"mIoU{num_classes}"


def format_iou_table(rows: dict[str, list[float]], num_classes: int = NUM_CLASSES) -> str:
    """Markdown table: one row per method, per-class IoU (percent) in the paper's column order,
    then mIoU. ``rows`` maps a row label to its IoUs (fractions, NaN for absent) of the classes
    of ``CLASS_SUBSETS[num_classes]``: 19, or 16 / 13 (SYNTHIA's papers' columns and mean,
    headed ``mIoU16`` / ``mIoU13``)."""
    names = [SHORT_NAMES[c] for c in CLASS_SUBSETS[num_classes]]
    label_width = max(len("method"), *(len(r) for r in rows))
    head = [f"{'method':<{label_width}}", *(f"{n:>6}" for n in names),
            f"{miou_name(num_classes):>6}"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("-" * (len(h) + 2) for h in head) + "|"]
    for label, ious in rows.items():
        if len(ious) != len(names):
            raise ValueError(f"row {label!r}: {len(ious)} IoUs for {len(names)} classes")
        cells = [f"{label:<{label_width}}", *(_pct(v) for v in ious), _pct(nanmean(ious))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pct(v: float) -> str:
    return "   nan" if math.isnan(v) else f"{100 * v:6.2f}"
