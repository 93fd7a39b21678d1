"""What a weights file is once read, whatever its network family: its layout's name, its
converted state, the report of a load, and the helpers every family's reader shares.

``model/weights.py`` reads DeepLab-v2's layouts and this repository's checkpoints,
``model/mit_weights.py`` the MiT family's; ``LAYOUTS`` names every layout a family reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor

from utils.checkpoint import CheckpointError
from utils.config import EVAL_CLASSES

Purpose = Literal["init", "restore"]


LAYOUTS: dict[str, str] = {
    "checkpoint": "this repository's checkpoint (models.G)",
    "maxsquare": "MaxSquare checkpoint ({'state_dict': ...})",
    "deeplab_init": "DeepLab-v2 init file ('Scale.' prefix)",
    "torchvision": "torchvision ResNet state dict (ImageNet)",
    "deeplab_v2": "DeepLab-v2 state dict (AdaptSegNet, CLAN, FeatureToAdapt, ADVENT)",
    "mit_init": "SegFormer MiT ImageNet file (mit_b*.pth)",  # model/mit_weights.py's layouts
    "daformer": "DAFormer / HRDA / MIC checkpoint (backbone, decode_head)",
}


@dataclass(frozen=True)
class Weights:
    """A weights file, read and converted to G's parameter names."""

    path: str
    layout: str  # a key of LAYOUTS
    state: dict[str, Tensor]
    config: dict[str, Any] | None  # the stored config (this repository's checkpoints)
    notes: tuple[str, ...]  # conversions applied while reading
    teacher: dict[str, Tensor] | None = None  # a self-training run's mean teacher (DACS)


@dataclass(frozen=True)
class LoadReport:
    """What ``load_weights`` recognised, converted and loaded."""

    path: str
    layout: str
    purpose: Purpose
    loaded: int  # tensors taken from the file
    notes: tuple[str, ...]  # conversions and drops, one sentence each
    kept_init: tuple[str, ...]  # model tensors left at their initial values
    num_classes: int | None = None  # the classes the file's classifiers predict (None: none)

    def __str__(self) -> str:
        classes = f", {class_count(self.num_classes)}" if self.num_classes is not None else ""
        lines = [f"{self.path}: {LAYOUTS[self.layout]}{classes}, {self.loaded} tensors loaded"]
        lines += [f"  {note}" for note in self.notes]
        if self.kept_init:
            lines.append(f"  {len(self.kept_init)} tensors kept at their initial values")
        return "\n".join(lines)


def class_count(num_classes: int) -> str:
    """How a class count reads: ``19 classes``, or the SYNTHIA subset 16 or 13 stand for."""
    if num_classes in EVAL_CLASSES[1:]:  # 16 or 13
        return f"{num_classes} classes (the SYNTHIA {num_classes}, in trainId order)"
    return f"{num_classes} classes"


def check_tensors(state: dict[str, Any], path: str) -> None:
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(
                f"{path}: expected a state dict of tensors; key {key!r} holds a "
                f"{type(value).__name__}"
            )


def strip_prefix(state: dict[str, Tensor], prefix: str, notes: list[str]) -> dict[str, Tensor]:
    """Remove ``prefix`` when every key carries it."""
    if not state or not all(k.startswith(prefix) for k in state):
        return state
    notes.append(f"removed the key prefix {prefix!r}")
    return {k.removeprefix(prefix): v for k, v in state.items()}
