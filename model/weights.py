"""One loader for G's weights: this repository's checkpoints and every public DeepLab-v2 file.

``read_weights(path)`` reads a file safely (``weights_only=True``), recognises its layout and
converts it to G's parameter names; ``load_weights(model, path, purpose)`` converts what the
model needs converted, checks keys and shapes strictly and loads, returning a ``LoadReport``.

==============  ===========================================================================
layout          recognised by, and what is converted
==============  ===========================================================================
checkpoint      this repository's ``{"setup", "step", "models": {"G": ...}, "config", ...}``
maxsquare       ``{"state_dict": {"module.<name>": ...}, "epoch", "optimizer", ...}``
deeplab_init    every key ``Scale.<name>``: the DeepLab-v2 init file (ADVENT's ImageNet file
                has the same form); its own ``layer5`` is used only where it fits (dropped
                when the classes differ)
torchvision     ``fc.*`` and no classifier: torchvision's ResNet-101; ``fc.*`` is dropped
deeplab_v2      a raw state dict: AdaptSegNet, CLAN, FeatureToAdapt and ADVENT snapshots
==============  ===========================================================================

Any layout may carry a ``module.`` prefix (``nn.DataParallel``), which is removed. BatchNorm
``num_batches_tracked`` buffers that files saved before PyTorch 0.4.1 lack are filled with 0.
``deeplab_init`` and ``torchvision`` hold a backbone only: they are initial weights
(``model.init_from``), never a trained G (``--restore``).

A file from elsewhere also says how many classes it predicts: ``preset_for`` takes the count
from the file when it is 19, or 16 or 13 (SYNTHIA -> Cityscapes models trained on those
classes, e.g. MaxSquare's ``--num_classes 16``, whose outputs are the subset's classes in
trainId order), and says so; the load report names the count.

Released AdaptSegNet and MaxSquare models store four ASPP convs per classifier, but their
forward returned after the first two (docs/method.md): loaded into a two-branch model (preset
``adaptsegnet``/``maxsquare``), the stored branches 2 and 3 are dropped and the drop is logged.
Nothing else is dropped from a trained G: a four-branch model never loses a branch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from model import mit_weights
from model.deeplabv2 import ASPP_DILATIONS, DeepLabV2
from model.layouts import (
    LAYOUTS,
    LoadReport,
    Purpose,
    Weights,
    check_tensors,
    class_count,
    strip_prefix,
)
from utils.checkpoint import (
    CheckpointError,
    generator_of,
    is_training_checkpoint,
    load_checkpoint,
    load_state_strict,
)
from utils.config import EVAL_CLASSES, ModelConfig

try:  # numpy >= 2
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import scalar as _np_scalar

log = logging.getLogger(__name__)

DEEPLAB_LAYOUTS = ("maxsquare", "deeplab_init", "torchvision", "deeplab_v2")
BACKBONE_ONLY = ("deeplab_init", "torchvision")
HEADS = ("layer5", "layer6")  # C1, C2

# MaxSquare stores numpy scalars (best_MIou) beside the weights: values, not code.
_NUMPY_SCALARS = [
    np.dtype,
    *(type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)),
    _np_scalar,
    (_np_scalar, "numpy.core.multiarray.scalar"),
    (_np_scalar, "numpy._core.multiarray.scalar"),
]


class Structure(NamedTuple):
    """What a state dict says about the network that produced it."""

    num_classes: int | None  # None: no classifier
    multi_level: bool | None  # C1 narrower than C2 (reads layer3); None: not both heads
    branches: int | None  # ASPP convs stored per classifier
    layers: tuple[int, ...]  # blocks per stage
    base_width: int | None


def read_weights(path: str | Path) -> Weights:
    """Read ``path`` with ``weights_only=True`` and convert it to G's names; an unknown layout
    is an error listing the layouts tried and the first keys seen."""
    path = str(path)
    with torch.serialization.safe_globals(_NUMPY_SCALARS):
        obj = load_checkpoint(path)
    notes: list[str] = []
    config = None
    teacher = None
    if is_training_checkpoint(obj):
        state, config, note = generator_of(obj, path)
        layout = "checkpoint"
        notes.append(note)
        teacher = obj["models"].get("teacher")
    elif (mit := mit_weights.recognise(obj, path)) is not None:
        return mit
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        layout, state = "maxsquare", obj["state_dict"]
        notes.append("unwrapped state_dict")
    elif isinstance(obj, dict):
        layout, state = "", obj
    else:
        raise CheckpointError(f"{path}: expected a dict of weights, the file holds a {type(obj)}")
    check_tensors(state, path)
    state = strip_prefix(state, "module.", notes)
    if not layout:
        if state and all(k.startswith("Scale.") for k in state):
            layout, state = "deeplab_init", strip_prefix(state, "Scale.", notes)
        elif "fc.weight" in state and not _head_keys(state):
            layout = "torchvision"
        elif "conv1.weight" in state and _head_keys(state):
            layout = "deeplab_v2"
        else:
            raise CheckpointError(
                f"{path}: unknown weights layout; tried {', '.join(LAYOUTS.values())}; "
                f"first keys: {', '.join(list(state)[:8]) or '(none)'}"
            )
    return Weights(path, layout, state, config, tuple(notes), teacher)


def scored_weights(weights: Weights, model: str) -> Weights:
    """The weights ``eval.model`` scores: G's (``student``), or a self-training run's mean
    teacher (``teacher``: its checkpoint's ``models.teacher``); an error naming the file when it
    holds no teacher."""
    if model != "teacher":
        return weights
    if weights.teacher is None:
        raise CheckpointError(
            f"{weights.path}: eval.model=teacher, but the file holds no teacher (only a "
            f"self-training run's checkpoint, train_dacs_norm.py's, has models.teacher)"
        )
    notes = (*weights.notes, "the mean teacher (models.teacher)")
    return replace(weights, state=weights.teacher, notes=notes)


def infer_preset(weights: Weights) -> str:
    """The preset of a trained G's file, from its classifiers and its layout; an error when the
    file cannot tell (a multi-level four-branch file is AdaptSegNet's or ADVENT's)."""
    s = structure(weights.state)
    where = f"{weights.path} ({LAYOUTS[weights.layout]})"
    if s.num_classes is None or s.multi_level is None:
        raise CheckpointError(f"{where}: no C1 and C2 classifiers, so no preset to infer")
    if not s.multi_level and s.branches == 4:
        return "clan"
    if s.multi_level and weights.layout == "maxsquare":
        return "maxsquare"
    if s.multi_level and s.branches == 2:
        return "adaptsegnet"  # only the used branches stored: same switches as maxsquare
    raise CheckpointError(f"{where}: cannot infer the preset: {_suggestion(s, weights.layout)}")


def preset_for(cfg: ModelConfig, weights: Weights) -> ModelConfig:
    """``cfg`` fitted to ``weights``. The preset: the one ``cfg`` names; else, for this
    repository's checkpoints, the switches as given; else the one inferred from the file. The
    classes: a file from elsewhere that predicts 19, 16 or 13 sets ``num_classes``."""
    found = structure(weights.state).num_classes
    if weights.layout != "checkpoint" and found in EVAL_CLASSES and found != cfg.num_classes:
        log.info("%s: %s found in the file (model.num_classes=%d)", weights.path,
                 class_count(found), found)  # fmt: skip
        cfg = replace(cfg, num_classes=found)
    if cfg.preset or weights.layout == "checkpoint":
        return cfg
    preset = infer_preset(weights)
    log.info("%s: preset %s inferred from the file, %s (give --preset to choose)", weights.path,
             preset, class_count(found))  # fmt: skip
    return replace(cfg, preset=preset)


def load_weights(
    model: DeepLabV2, source: str | Path | Weights, purpose: Purpose = "restore"
) -> LoadReport:
    """Load a file into ``model``: ``purpose="init"`` takes the backbone strictly and each
    classifier that fits (others keep their init); ``"restore"`` takes all of G strictly.

    Every mismatch left after the conversions is a ``CheckpointError`` listing missing,
    unexpected and mis-shaped keys and the preset or sizes that would have matched."""
    if purpose not in ("init", "restore"):
        raise ValueError(f"purpose must be 'init' or 'restore', got {purpose!r}")
    weights = source if isinstance(source, Weights) else read_weights(source)
    path, state, notes = weights.path, dict(weights.state), list(weights.notes)
    if purpose == "restore" and weights.layout in BACKBONE_ONLY:
        raise CheckpointError(
            f"{path}: a {LAYOUTS[weights.layout]} holds initial weights (backbone only), not a "
            f"trained G: use it as model.init_from"
        )
    own = model.state_dict()
    if weights.layout == "torchvision":
        fc = [k for k in state if k.startswith("fc.")]
        for k in fc:
            del state[k]
        notes.append(f"dropped the ImageNet classifier ({', '.join(fc)})")
    _fill_num_batches_tracked(state, own, notes)
    file_s, model_s = structure(state), structure(own)
    if purpose == "restore" and file_s.num_classes not in (None, model_s.num_classes):
        raise CheckpointError(
            f"{path}: the file predicts {file_s.num_classes} classes, the model "
            f"{model_s.num_classes} (model.num_classes)"
        )
    if (
        weights.layout != "checkpoint"
        and file_s.multi_level
        and file_s.branches == 4
        and model_s.multi_level
        and model_s.branches == 2
    ):
        _drop_unused_branches(state, notes)
    kept_init: list[str] = []
    if purpose == "init":
        for head in HEADS:
            kept_init += _fit_head(state, own, head, notes)
    try:
        load_state_strict(model, state, path)
    except CheckpointError as err:
        raise CheckpointError(f"{err}\n  {_hint(file_s, model_s, weights.layout)}") from None
    loaded = len(state) - len(kept_init)
    report = LoadReport(path, weights.layout, purpose, loaded, tuple(notes), tuple(kept_init),
                        file_s.num_classes)  # fmt: skip
    log.info("%s weights: %s", purpose, report)
    return report


def structure(state: Mapping[str, Tensor]) -> Structure:
    """Classes, multi-level, stored ASPP branches, blocks per stage and stem width of a G
    state dict (in G's names)."""
    heads = {
        head: state[f"{head}.conv2d_list.0.weight"]
        for head in HEADS
        if f"{head}.conv2d_list.0.weight" in state
    }
    num_classes = next((int(w.shape[0]) for w in reversed(heads.values())), None)
    multi_level = None
    if len(heads) == 2:
        multi_level = heads["layer5"].shape[1] < heads["layer6"].shape[1]
    branches = max((_branch_count(state, head) for head in heads), default=None)
    layers = tuple(
        len({k.split(".")[1] for k in state if k.startswith(f"layer{n}.") and "conv1" in k})
        for n in range(1, 5)
    )
    stem = state.get("conv1.weight")
    return Structure(
        num_classes, multi_level, branches, layers, None if stem is None else int(stem.shape[0])
    )


def _branch_count(state: Mapping[str, Tensor], head: str) -> int:
    """ASPP convs stored for classifier ``head``."""
    return len({k.split(".")[2] for k in state if k.startswith(f"{head}.conv2d_list.")})


def _head_keys(state: Mapping[str, Tensor]) -> list[str]:
    return [k for k in state if k.split(".")[0] in HEADS]


def _fill_num_batches_tracked(
    state: dict[str, Tensor], own: dict[str, Tensor], notes: list[str]
) -> None:
    """BatchNorm counters that files saved before PyTorch 0.4.1 lack: 0, as a fresh BN."""
    filled = [
        k
        for k in own
        if k.endswith(".num_batches_tracked")
        and k not in state
        and k.removesuffix("num_batches_tracked") + "running_mean" in state
    ]
    for k in filled:
        state[k] = torch.zeros_like(own[k])
    if filled:
        notes.append(f"filled {len(filled)} absent BatchNorm num_batches_tracked with 0")


def _drop_unused_branches(state: dict[str, Tensor], notes: list[str]) -> None:
    """Branches 2 and 3 of a two-branch release: stored, never used by its forward."""
    unused = [
        k
        for k in state
        if k.split(".")[0] in HEADS and k.split(".")[1] == "conv2d_list" and k.split(".")[2] in "23"
    ]
    for k in unused:
        del state[k]
    notes.append(
        f"dropped the stored, unused ASPP branches 2 and 3 (dilations {ASPP_DILATIONS[2]}, "
        f"{ASPP_DILATIONS[3]}) of C1 and C2 ({len(unused)} tensors): the released two-branch "
        f"forward never read them"
    )


def _fit_head(
    state: dict[str, Tensor], own: dict[str, Tensor], head: str, notes: list[str]
) -> list[str]:
    """Initial weights: keep the file's classifier ``head`` only if it fits the model exactly;
    otherwise use the model's own init. Returns the model keys kept at init."""
    mine = {k: v for k, v in own.items() if k.startswith(f"{head}.")}
    theirs = {k: v for k, v in state.items() if k.startswith(f"{head}.")}
    if theirs.keys() == mine.keys() and all(v.shape == mine[k].shape for k, v in theirs.items()):
        return []
    name = {"layer5": "C1 (layer5)", "layer6": "C2 (layer6)"}[head]
    if not theirs:
        reason = "not in the file"
    else:
        first = f"{head}.conv2d_list.0.weight"
        a, b = theirs.get(first), mine[first]
        if a is not None and a.shape[0] != b.shape[0]:
            reason = f"{a.shape[0]} classes in the file, {b.shape[0]} in the model"
        elif a is not None and a.shape[1] != b.shape[1]:
            reason = f"reads {a.shape[1]} channels in the file, {b.shape[1]} in the model"
        else:
            n_file, n_model = _branch_count(theirs, head), _branch_count(mine, head)
            reason = f"{n_file} ASPP branches in the file, {n_model} in the model"
        for k in theirs:
            del state[k]
    state.update(mine)
    notes.append(f"{name} kept at its initial values: {reason}")
    return list(mine)


def _suggestion(s: Structure, layout: str) -> str:
    """The preset (or switches) a state dict of structure ``s`` in ``layout`` needs."""
    if s.num_classes is None or s.multi_level is None:
        return "this looks like a backbone without classifiers: use it as model.init_from"
    level = "multi-level" if s.multi_level else "single-level"
    if s.multi_level and (s.branches == 2 or layout == "maxsquare"):
        return f"this looks like a {level} two-branch model: use model.preset=maxsquare"
    count = {2: "two", 4: "four"}.get(s.branches, str(s.branches))
    what = f"this looks like a {level} {count}-branch model"
    if not s.multi_level:
        if s.branches == 4:
            return f"{what}: use model.preset=clan"
        return f"{what}: use model.multi_level=false model.aspp_branches={s.branches}"
    return (
        f"{what}: use model.preset=adaptsegnet or maxsquare (their forward used two of the four "
        f"stored branches) or model.preset=advent (all four)"
    )


def _hint(file_s: Structure, model_s: Structure, layout: str) -> str:
    """The layout that would have matched: preset and, where they differ, sizes."""
    sizes = []
    if file_s.layers != model_s.layers and all(file_s.layers):
        sizes.append(f"model.layers=[{','.join(map(str, file_s.layers))}]")
    if file_s.base_width not in (None, model_s.base_width):
        sizes.append(f"model.base_width={file_s.base_width}")
    if file_s.num_classes not in (None, model_s.num_classes):
        sizes.append(f"model.num_classes={file_s.num_classes}")
    hint = _suggestion(file_s, layout)
    return hint + (f"; sizes: {' '.join(sizes)}" if sizes else "")
