"""G from the ``model`` config section: its preset, its initial weights, or a trained file."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from model.deeplabv2 import DeepLabV2
from model.weights import LoadReport, Weights, load_weights, preset_for, read_weights
from utils.config import PRESETS, ModelConfig, apply_preset

log = logging.getLogger(__name__)


class Restored(NamedTuple):
    """A trained G, the model config it was built from (preset applied) and the load report."""

    model: DeepLabV2
    config: ModelConfig
    report: LoadReport


def preset_name(cfg: ModelConfig) -> str:
    """The preset ``cfg`` names or whose switches it has; ``custom`` for other switches."""
    cfg = apply_preset(cfg)
    switches = (cfg.multi_level, cfg.aspp_branches, cfg.predict_with)
    return cfg.preset or next((n for n, p in PRESETS.items() if p == switches), "custom")


def build_model(cfg: ModelConfig) -> DeepLabV2:
    """A DeepLab-v2 as ``cfg`` describes (preset applied); ``cfg.init_from`` loads initial
    weights (backbone strictly, classifiers where they fit)."""
    cfg = apply_preset(cfg)
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
        load_weights(model, cfg.init_from, purpose="init")
    return model


def restore_model(cfg: ModelConfig, source: str | Path | Weights) -> Restored:
    """A trained G from a file of any layout: the preset ``cfg`` names, else (files from
    elsewhere) the one inferred from the file; no initial weights; every key checked."""
    weights = source if isinstance(source, Weights) else read_weights(source)
    cfg = apply_preset(preset_for(replace(cfg, init_from=""), weights))
    model = build_model(cfg)
    return Restored(model, cfg, load_weights(model, weights, purpose="restore"))
