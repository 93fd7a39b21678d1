"""What an evaluation reports: the class sets of ``eval.classes`` (19, or SYNTHIA's 16 and 13),
the views of the argmax they need (``--mask-absent``), the protocol a score was measured with
(the labels' size, flip averaging, how the weights were chosen), the per-class IoU tables, the
fields of the results JSON and the final ``mIoU:`` lines.

One 19-class confusion matrix serves every reported set (``ConfusionMatrix.iou(classes)``); a
*view* restricts the argmax to a set of trainIds (the ``--mask-absent`` protocol), and the
default view, None, is the model's own argmax."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataset.labels import CLASS_NAMES, CLASS_SUBSETS, NUM_CLASSES
from utils.config import Config
from utils.evaluation.inference import View
from utils.evaluation.metrics import ConfusionMatrix, format_iou_table, miou_name, nanmean


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


@dataclass(frozen=True)
class Protocol:
    """How a score was measured: the labels' size (``eval.label_size``: "full", or "input",
    resized with the images to ``input_size``, ``data.val.resize``), flip averaging
    (``eval.flip``; None where it is not known: predictions on disk) and how the weights scored
    were chosen (``selection``: "last", "file given: NAME", "best of N on val: NAME ...")."""

    label_size: str
    input_size: tuple[int, int] | None
    flip: bool | None
    selection: str

    def fields(self) -> dict[str, Any]:
        """The results JSON's ``protocol`` field."""
        size = list(self.input_size) if self.input_size is not None else None
        return {"label_size": self.label_size, "input_size": size, "flip": self.flip,
                "selection": self.selection}  # fmt: skip

    def line(self) -> str:
        """The line above the IoU tables, e.g. ``protocol: labels at full resolution
        (eval.label_size=full), flip on, snapshot: last``."""
        flip = "flip unknown" if self.flip is None else f"flip {'on' if self.flip else 'off'}"
        labels = label_words(self.label_size, self.input_size)
        return (
            f"protocol: {labels} (eval.label_size={self.label_size}), {flip}, "
            f"snapshot: {self.selection}"
        )


def protocol_of(cfg: Config, selection: str) -> Protocol:
    """The ``Protocol`` of a score measured with ``cfg``'s evaluation settings (``eval.*``,
    ``data.val.resize``) on the weights ``selection`` names."""
    return Protocol(cfg.eval.label_size, cfg.data.val.resize, cfg.eval.flip, selection)


def label_words(label_size: str, input_size: Sequence[int] | None = None) -> str:
    """``label_size`` in words: "labels at full resolution", or "labels resized (nearest) with
    the image to WxH"."""
    if label_size == "full":
        return "labels at full resolution"
    if input_size is None:
        return "labels at the images' size (nearest)"
    return f"labels resized (nearest) with the image to {input_size[0]}x{input_size[1]}"


def file_selection(path: str | Path) -> str:
    """How one weights file given on the command line was chosen: "last" for a run's
    ``last.pth``, else "file given: NAME"."""
    name = Path(path).name
    return "last" if name == "last.pth" else f"file given: {name}"


def class_tables(
    rows: dict[str, dict[int, list[float]]],
    classes: Sequence[int],
    mask_absent: bool,
    protocol: Protocol | None = None,
) -> str:
    """One IoU table per reported class count (``rows``: label -> ``class_ious``; a row without
    a count is left out of its table), each subset's below a line that says how predictions of
    the classes outside the set were scored; first, with ``protocol``, its ``line()``."""
    tables = [protocol.line()] if protocol is not None else []
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
