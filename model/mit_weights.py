"""The DAFormer family's weights files: SegFormer's ImageNet MiT encoders, and the trained
checkpoints of DAFormer, HRDA and MIC.

==========  ==============================================================================
layout      recognised by, and what is converted
==========  ==============================================================================
mit_init    SegFormer's ``mit_b0.pth`` .. ``mit_b5.pth``: ``patch_embed1.*``, ``block1.*``, ...,
            ``norm4.*`` and an ImageNet ``head.*``, which is dropped; also with smp's
            ``encoder.`` prefix, or under ``state_dict`` or ``model``. Initial weights only.
daformer    mmcv's ``{"meta", "state_dict"}`` of a self-training run: the student under
            ``model.``, the EMA teacher under ``ema_model.``, the frozen ImageNet copy under
            ``imnet_model.`` and MIC's ``mic.`` (not read); or bare ``backbone.*`` /
            ``decode_head.*`` keys
==========  ==============================================================================

The student is what a file's G is (as DAFormer's ``tools/test.py`` scores it); the teacher
is scored on request (``eval.model=teacher``). A file's MiT size, classes and head channels
are read from its tensors; a file of another size than the model's is an error naming the
``model.backbone`` that fits, and so is a head other than DAFormer's (HRDA's scale attention
included).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from torch import Tensor, nn

from model.layouts import LAYOUTS, LoadReport, Purpose, Weights, check_tensors, strip_prefix
from model.mit import MIT_VARIANTS
from utils.checkpoint import CheckpointError, load_state_strict
from utils.config import ModelConfig

log = logging.getLogger(__name__)

MIT_LAYOUTS = ("mit_init", "daformer")
UDA_PARTS = ("model.", "ema_model.", "imnet_model.", "mic.")  # the UDA wrappers' modules (MIC's
# masking module holds a teacher of its own when its alpha differs from the EMA teacher's)
MIT_KEY = "patch_embed1.proj.weight"  # every MiT encoder has it


def recognise(obj: Any, path: str) -> Weights | None:
    """``obj`` (a loaded file) as a MiT-family ``Weights``, or None when it is not one."""
    if not isinstance(obj, dict):
        return None
    notes: list[str] = []
    state = obj
    for wrapper in ("state_dict", "model"):
        if isinstance(obj.get(wrapper), dict) and not isinstance(obj.get(wrapper), Tensor):
            state, notes = obj[wrapper], [f"unwrapped {wrapper}"]
            break
    keys = list(state)
    if any(k.startswith(UDA_PARTS[0] + "backbone.") for k in keys):
        return _uda(state, path, notes)
    if any(k.startswith(("backbone.", "decode_head.")) for k in keys):
        check_tensors(state, path)
        _refuse_other_heads(state, path)
        return Weights(path, "daformer", dict(state), None, tuple(notes))
    encoder = strip_prefix(state, "encoder.", notes)
    if MIT_KEY in encoder:
        check_tensors(encoder, path)
        head = [k for k in encoder if k.startswith("head.")]
        if head:
            notes.append(f"dropped the ImageNet classifier ({', '.join(head)})")
        converted = {"backbone." + k: v for k, v in encoder.items() if not k.startswith("head.")}
        return Weights(path, "mit_init", converted, None, tuple(notes))
    return None


def _uda(state: dict[str, Any], path: str, notes: list[str]) -> Weights:
    """A DAFormer / HRDA / MIC training checkpoint: the student, and the teacher when stored."""
    check_tensors(state, path)
    parts = {p: {k.removeprefix(p): v for k, v in state.items() if k.startswith(p)}
             for p in UDA_PARTS}  # fmt: skip
    other = [k for k in state if not k.startswith(UDA_PARTS)]
    if other:
        raise CheckpointError(f"{path}: keys outside {', '.join(UDA_PARTS)}: "
                              f"{', '.join(other[:6])}")  # fmt: skip
    student, teacher = parts["model."], parts["ema_model."] or None
    _refuse_other_heads(student, path)
    notes.append("the student (model.*)" + (", the EMA teacher (ema_model.*)" if teacher else ""))
    if parts["imnet_model."]:
        notes.append("not read: the frozen ImageNet copy (imnet_model.*)")
    if parts["mic."]:
        notes.append("not read: MIC's masking teacher (mic.*)")
    return Weights(path, "daformer", student, None, tuple(notes), teacher)


def _refuse_other_heads(state: dict[str, Tensor], path: str) -> None:
    """An error naming the file when its head is not DAFormer's."""
    if any(k.startswith("decode_head.scale_attention.") for k in state):
        raise CheckpointError(
            f"{path}: HRDA's multi-resolution head (decode_head.scale_attention.*) is not "
            f"supported yet; DAFormer's head (decode_head.fuse_layer.aspp_modules.*) is"
        )
    head = [k for k in state if k.startswith("decode_head.")]
    if head and not any(k.startswith("decode_head.fuse_layer.aspp_modules.") for k in head):
        raise CheckpointError(
            f"{path}: the head is not DAFormer's separable-ASPP fusion (no "
            f"decode_head.fuse_layer.aspp_modules.*; first head keys: {', '.join(head[:4])})"
        )


def encoder_sizes(state: dict[str, Tensor]) -> tuple[list[int], list[int]]:
    """The channels and the blocks of each stage of a state dict's ``backbone.*`` keys (the
    stages it holds)."""
    dims = [int(state[f"backbone.patch_embed{i}.proj.weight"].shape[0])
            for i in range(1, 5) if f"backbone.patch_embed{i}.proj.weight" in state]  # fmt: skip
    depths = [len({k.split(".")[2] for k in state if k.startswith(f"backbone.block{i}.")})
              for i in range(1, 5)]  # fmt: skip
    return dims, depths


def variant_of(state: dict[str, Tensor]) -> str | None:
    """The MiT size of a state dict's ``backbone.*`` keys, None when no size matches."""
    dims, depths = encoder_sizes(state)
    return next((name for name, v in MIT_VARIANTS.items()
                 if v.dims == tuple(dims) and v.depths == tuple(depths)), None)  # fmt: skip


def head_size(state: dict[str, Tensor]) -> tuple[int, int] | None:
    """The classes and channels of a state dict's DAFormer head, None without one."""
    w = state.get("decode_head.conv_seg.weight")
    return None if w is None else (int(w.shape[0]), int(w.shape[1]))


def fit(cfg: ModelConfig, weights: Weights) -> ModelConfig:
    """``cfg`` fitted to a file from elsewhere: its MiT size, classes and head channels, each
    logged where it changes the config. This repository's checkpoints keep their config."""
    if weights.layout == "checkpoint":
        return cfg
    variant = variant_of(weights.state)
    if variant is None:
        raise CheckpointError(f"{weights.path}: {_sizes(weights.state)}: no MiT size "
                              f"({', '.join(MIT_VARIANTS)}) has them")  # fmt: skip
    classes, channels = head_size(weights.state) or (cfg.num_classes, cfg.head_channels)
    fitted = replace(cfg, backbone=variant, num_classes=classes, head_channels=channels)
    for key in ("backbone", "num_classes", "head_channels"):
        if getattr(fitted, key) != getattr(cfg, key):
            log.info("%s: model.%s=%s read from the file", weights.path, key,
                     getattr(fitted, key))  # fmt: skip
    return fitted


def load(model: nn.Module, weights: Weights, purpose: Purpose) -> LoadReport:
    """Load a MiT-family file into a DAFormer: ``"init"`` takes the encoder strictly and the
    head where the file has one that fits (else it keeps its init); ``"restore"`` takes all of
    G strictly. A file of another MiT size is an error naming the size that fits."""
    path, state, notes = weights.path, dict(weights.state), list(weights.notes)
    if purpose == "restore" and weights.layout == "mit_init":
        raise CheckpointError(
            f"{path}: a {LAYOUTS['mit_init']} holds initial weights (an encoder only), not a "
            f"trained G: use it as model.init_from"
        )
    own = model.state_dict()
    found, wanted = variant_of(state), model.backbone.name
    if found != wanted:
        fits = f"model.backbone={found}" if found else f"no MiT size fits ({_sizes(state)})"
        raise CheckpointError(f"{path}: the file holds a {found or 'other'} encoder, the model "
                              f"is {wanted} (model.backbone): {fits}")  # fmt: skip
    kept: list[str] = []
    if purpose == "init":
        head = {k: v for k, v in own.items() if k.startswith("decode_head.")}
        theirs = {k: v for k, v in state.items() if k.startswith("decode_head.")}
        if theirs.keys() != head.keys() or any(v.shape != head[k].shape for k, v in theirs.items()):
            kept = list(head)
            state = {k: v for k, v in state.items() if not k.startswith("decode_head.")}
            state.update(head)
            size = head_size(theirs)
            notes.append("the head kept at its initial values: " + (
                "not in the file" if size is None else
                f"{size[0]} classes and {size[1]} channels in the file"))  # fmt: skip
    load_state_strict(model, state, path)
    size = head_size(state)
    report = LoadReport(path, weights.layout, purpose, len(state) - len(kept), tuple(notes),
                        tuple(kept), None if kept or size is None else size[0])  # fmt: skip
    log.info("%s weights: %s", purpose, report)
    return report


def _sizes(state: dict[str, Tensor]) -> str:
    """What a state dict's encoder has: its stages' channels and blocks."""
    dims, depths = encoder_sizes(state)
    return f"stage channels {dims}, blocks {depths}"
