"""What an evaluation reports: the class sets of ``eval.classes`` (19, or SYNTHIA's 16 and 13),
the views of the argmax they need (``--mask-absent``), the protocol a score was measured with
(the labels' size, flip averaging, how a subset's IoUs were counted, how the weights were
chosen), the per-class IoU tables, the fields of the results JSON and the final ``mIoU:`` lines.

One 19-class confusion matrix serves every reported set (``ConfusionMatrix.iou(classes,
subset_protocol)``); a *view* restricts the argmax to a set of trainIds (the ``--mask-absent``
protocol), and the default view, None, is the model's own argmax. The two are orthogonal:
``--mask-absent`` decides what is predicted, ``eval.subset_protocol`` which pixels count."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataset.labels import CLASS_NAMES, CLASS_SUBSETS, NUM_CLASSES
from utils.config import SUBSET_PROTOCOLS, Config
from utils.evaluation.inference import View
from utils.evaluation.metrics import ConfusionMatrix, format_iou_table, miou_name, nanmean


def class_views(classes: Sequence[int], mask_absent: bool) -> list[View]:
    """The views that reporting ``classes`` needs: the model's own argmax (which gives the
    19-class scores, and every subset's without ``mask_absent``), then with ``mask_absent`` an
    argmax restricted to each reported subset of fewer than 19 classes."""
    masked = [CLASS_SUBSETS[k] for k in classes if mask_absent and k != NUM_CLASSES]
    return [None, *masked]


def class_ious(
    cms: Sequence[ConfusionMatrix],
    classes: Sequence[int],
    mask_absent: bool,
    subset_protocol: str,
) -> dict[int, list[float]]:
    """Per reported class count, the IoUs of its classes (trainId order), from the matrices of
    ``class_views(classes, mask_absent)``, in that order; a subset's counted as
    ``subset_protocol`` (``eval.subset_protocol``) says, on its own view's matrix (the 19 classes
    score the same under both)."""
    masked = iter(cms[1:])
    out = {}
    for k in classes:
        cm = next(masked) if mask_absent and k != NUM_CLASSES else cms[0]
        out[k] = cm.iou(CLASS_SUBSETS[k], subset_protocol)
    return out


@dataclass(frozen=True)
class Protocol:
    """How a score was measured: the labels' size (``eval.label_size``: "full", or "input",
    resized with the images to ``input_size``, ``data.val.resize``), flip averaging
    (``eval.flip``; None where it is not known: predictions on disk), how the weights scored
    were chosen (``selection``: "last", "file given: NAME", "best of N on val: NAME ...") and
    how a class subset's IoUs were counted (``subset_protocol``, ``eval.subset_protocol``; None
    where only the 19 classes are reported, which score the same under both)."""

    label_size: str
    input_size: tuple[int, int] | None
    flip: bool | None
    selection: str
    subset_protocol: str | None = None
    model: str | None = None  # a self-training run's scored model (eval.model), else None

    def fields(self) -> dict[str, Any]:
        """The results JSON's ``protocol`` field (``subset_protocol`` only where a subset is
        reported: a file without it scored 19 classes, or predates the key, and reads as
        ``ignore_outside``, ``recorded_subset_protocol``)."""
        size = list(self.input_size) if self.input_size is not None else None
        subset = {} if self.subset_protocol is None else {"subset_protocol": self.subset_protocol}
        model = {} if self.model is None else {"model": self.model}
        return {"label_size": self.label_size, "input_size": size, "flip": self.flip,
                "selection": self.selection, **subset, **model}  # fmt: skip

    def line(self) -> str:
        """The line above the IoU tables, e.g. ``protocol: labels at full resolution
        (eval.label_size=full), flip on, snapshot: last``; where a subset is reported, how its
        IoUs were counted comes before the snapshot: ``..., flip on, subsets: pixels labelled
        outside a set ignored (eval.subset_protocol=ignore_outside), snapshot: last``."""
        flip = "flip unknown" if self.flip is None else f"flip {'on' if self.flip else 'off'}"
        labels = label_words(self.label_size, self.input_size)
        subsets = ""
        if self.subset_protocol is not None:
            words = subset_words(self.subset_protocol)
            subsets = f"subsets: {words} (eval.subset_protocol={self.subset_protocol}), "
        model = "" if self.model is None else f"model: the {self.model} (eval.model), "
        return (
            f"protocol: {labels} (eval.label_size={self.label_size}), {flip}, {subsets}"
            f"{model}snapshot: {self.selection}"
        )


def protocol_of(cfg: Config, selection: str, model: str | None = None) -> Protocol:
    """The ``Protocol`` of a score measured with ``cfg``'s evaluation settings (``eval.*``,
    ``data.val.resize``) on the weights ``selection`` names; ``eval.subset_protocol`` where
    ``eval.classes`` reports a subset; ``model``, a self-training run's scored model."""
    subset = any(k != NUM_CLASSES for k in cfg.eval.classes)
    return Protocol(cfg.eval.label_size, cfg.data.val.resize, cfg.eval.flip, selection,
                    cfg.eval.subset_protocol if subset else None, model)  # fmt: skip


def subset_words(subset_protocol: str) -> str:
    """``subset_protocol`` in words: "pixels labelled outside a set ignored", or "IoUs of the
    19-class matrix, averaged over a set"."""
    if subset_protocol == "ignore_outside":
        return "pixels labelled outside a set ignored"
    return f"IoUs of the {NUM_CLASSES}-class matrix, averaged over a set"


def recorded_subset_protocol(record: Mapping[str, Any]) -> str:
    """The ``eval.subset_protocol`` a results JSON record's subset scores (``mIoU16``,
    ``iou16``, ...) were counted with: the record's own ``subset_protocol`` (a sweep's snapshot,
    an ensemble's member), else its ``protocol``'s; ``ignore_outside`` where neither holds one
    (a file written before the key existed, when that was the only rule, or of 19 classes
    only, where the two agree)."""
    protocol = record.get("protocol")
    value = record.get("subset_protocol")
    if value is None and isinstance(protocol, Mapping):
        value = protocol.get("subset_protocol")
    if value is None:
        return "ignore_outside"
    if value not in SUBSET_PROTOCOLS:
        raise ValueError(
            f"results field subset_protocol {value!r}: expected one of "
            f"{', '.join(SUBSET_PROTOCOLS)} (eval.subset_protocol)"
        )
    return value


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
    subset_protocol: str,
    by_name: bool = True,
) -> dict[str, Any]:
    """The results-JSON fields of ``class_ious``: ``mIoU`` and ``iou`` for the 19 classes of the
    model's own argmax, whichever sets were reported, then ``mIoU16``/``iou16`` and
    ``mIoU13``/``iou13`` for the subsets reported, and with them ``mask_absent`` and
    ``subset_protocol``, the two rules they were scored by (``class_ious``). IoUs by class
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
        out["subset_protocol"] = subset_protocol
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
