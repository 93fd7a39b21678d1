"""G from the ``model`` config section, with its initial weights."""

from __future__ import annotations

import logging

import torch

from model.deeplabv2 import DeepLabV2
from utils.checkpoint import CheckpointError, load_checkpoint, load_state_strict
from utils.config import ModelConfig

log = logging.getLogger(__name__)

_PREFIXES = ("Scale.", "module.")


def build_model(cfg: ModelConfig) -> DeepLabV2:
    """A DeepLab-v2 as ``cfg`` describes; ``cfg.init_from`` loads initial weights."""
    model = DeepLabV2(
        num_classes=cfg.num_classes,
        layers=cfg.layers,
        base_width=cfg.base_width,
        multi_level=cfg.multi_level,
        aspp_branches=cfg.aspp_branches,
        predict_with=cfg.predict_with,
        freeze_bn_stats=cfg.freeze_bn_stats,
    )
    if cfg.init_from:
        load_initial_weights(model, cfg.init_from)
    return model


def generator_state(obj: object, source: str) -> dict[str, torch.Tensor]:
    """G's state dict from a file's content: this repository's checkpoint (``models.G``), a
    ``{'state_dict': ...}`` wrapper, or a raw state dict; ``Scale.``/``module.`` prefixes go."""
    if isinstance(obj, dict) and isinstance(obj.get("models"), dict) and "G" in obj["models"]:
        obj = obj["models"]["G"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{source}: expected a state dict of tensors")
    state = {}
    for key, value in obj.items():
        for prefix in _PREFIXES:
            key = key.removeprefix(prefix)
        state[key] = value
    return state


def load_initial_weights(model: DeepLabV2, path: str) -> None:
    """Initial weights: the backbone must match exactly; classifier weights whose shapes differ
    (e.g. the DeepLab-v2 init file's own ``layer5``) are dropped and stay at their init."""
    state = generator_state(load_checkpoint(path), path)
    own = model.state_dict()
    dropped = [
        k
        for k in state
        if k.startswith(("layer5.", "layer6.")) and (k not in own or state[k].shape != own[k].shape)
    ]
    kept = {k: v for k, v in state.items() if k not in dropped}
    for k, v in own.items():
        if k.startswith(("layer5.", "layer6.")) and k not in kept:
            kept[k] = v  # classifiers absent or of another class count: keep the fresh init
    kept = {k: v for k, v in kept.items() if k != "fc.weight" and k != "fc.bias"}
    load_state_strict(model, kept, path)
    log.info(
        "initial weights from %s (%d tensors; %d classifier tensors kept at init)",
        path,
        len(state) - len(dropped),
        len(dropped),
    )


def restore_generator(model: DeepLabV2, path: str) -> dict:
    """Load a trained G strictly (every key, every shape); returns the file's content."""
    obj = load_checkpoint(path)
    load_state_strict(model, generator_state(obj, path), path)
    return obj
