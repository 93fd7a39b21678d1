"""G from the ``model`` config section: its family (``model.arch``), its preset, its initial
weights, or a trained file.

``FAMILIES`` names each network family once: how to build it from the ``model`` section, the
weights layouts it reads, how a file from elsewhere sets the section (its preset, its classes)
and how a file is loaded into it. Building dispatches on ``model.arch``; restoring a file on
its layout (this repository's checkpoints on the ``model.arch`` they record).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from model import mit_weights
from model.contract import Segmenter
from model.daformer import DAFormer
from model.deeplabv2 import DeepLabV2
from model.weights import (
    DEEPLAB_LAYOUTS,
    LAYOUTS,
    LoadReport,
    Purpose,
    Weights,
    load_weights,
    preset_for,
    read_weights,
)
from utils.checkpoint import CheckpointError
from utils.config import PRESETS, ModelConfig, apply_preset

log = logging.getLogger(__name__)


class Family(NamedTuple):
    """A network family: what building and restoring it need."""

    build: Callable[[ModelConfig, str], Segmenter]  # an untrained G as the section describes,
    # its norm loss reading the features loss.norm_features names
    layouts: tuple[str, ...]  # the layouts (model.weights.LAYOUTS) of its files from elsewhere
    fit: Callable[[ModelConfig, Weights], ModelConfig]  # the section a file from elsewhere needs
    load: Callable[[Segmenter, Weights, Purpose], LoadReport]  # a file into G, checked


class Restored(NamedTuple):
    """A trained G, the model config it was built from (preset applied) and the load report."""

    model: Segmenter
    config: ModelConfig
    report: LoadReport


def preset_name(cfg: ModelConfig) -> str:
    """How results name the network: DeepLab-v2's preset (the one ``cfg`` names or whose
    switches it has; ``custom`` for other switches), or DAFormer's MiT size (``daformer
    mit_b5``)."""
    if cfg.arch == "daformer":
        return f"daformer {cfg.backbone}"
    cfg = apply_preset(cfg)
    switches = (cfg.multi_level, cfg.aspp_branches, cfg.predict_with)
    return cfg.preset or next((n for n, p in PRESETS.items() if p == switches), "custom")


def _deeplabv2(cfg: ModelConfig, norm_features: str = "backbone") -> DeepLabV2:
    """A DeepLab-v2 as ``cfg`` describes (preset applied); the norm loss reads layer4."""
    cfg = apply_preset(cfg)
    return DeepLabV2(
        num_classes=cfg.num_classes,
        layers=cfg.layers,
        base_width=cfg.base_width,
        multi_level=cfg.multi_level,
        aspp_branches=cfg.aspp_branches,
        predict_with=cfg.predict_with,
        freeze_bn_stats=cfg.freeze_bn_stats,
    )


def _daformer(cfg: ModelConfig, norm_features: str = "backbone") -> DAFormer:
    """A MiT encoder and DAFormer's head as ``cfg`` describes."""
    return DAFormer(cfg.num_classes, cfg.backbone, cfg.head_channels, norm_features)


FAMILIES: dict[str, Family] = {
    "deeplabv2": Family(_deeplabv2, DEEPLAB_LAYOUTS, preset_for, load_weights),
    "daformer": Family(_daformer, mit_weights.MIT_LAYOUTS, mit_weights.fit, mit_weights.load),
}


def build_model(cfg: ModelConfig, norm_features: str = "backbone") -> Segmenter:
    """G of the family ``model.arch`` as ``cfg`` describes, its norm loss reading the
    features ``norm_features`` names (``loss.norm_features``); ``cfg.init_from`` loads initial
    weights (the backbone strictly, classifiers where they fit)."""
    family = FAMILIES[cfg.arch]
    model = family.build(cfg, norm_features)
    if cfg.init_from:
        weights = read_weights(cfg.init_from)
        if (arch := _family_of(weights)) != cfg.arch:
            raise CheckpointError(
                f"model.init_from={cfg.init_from}: a {LAYOUTS[weights.layout]} of "
                f"model.arch={arch}; this config builds {cfg.arch}"
            )
        family.load(model, weights, "init")
    return model


def restore_model(cfg: ModelConfig, source: str | Path | Weights) -> Restored:
    """A trained G from a file of any layout: the family of its layout (this repository's
    checkpoints: ``cfg.arch``, the one they record), the preset ``cfg`` names or, for files
    from elsewhere, the one inferred from the file; no initial weights; every key checked."""
    weights = source if isinstance(source, Weights) else read_weights(source)
    arch = cfg.arch if weights.layout == "checkpoint" else _family_of(weights)
    family = FAMILIES[arch]
    cfg = apply_preset(family.fit(replace(cfg, arch=arch, init_from=""), weights))
    model = family.build(cfg, "backbone")
    return Restored(model, cfg, family.load(model, weights, "restore"))


def _family_of(weights: Weights) -> str:
    """The family of a file: the ``model.arch`` this repository's checkpoints record (none
    recorded: deeplabv2), or the one whose layouts hold a file from elsewhere."""
    if weights.layout == "checkpoint":
        return (weights.config or {}).get("model", {}).get("arch", "deeplabv2")
    for arch, family in FAMILIES.items():
        if weights.layout in family.layouts:
            return arch
    raise CheckpointError(f"{weights.path}: no network family reads layout {weights.layout!r}")
