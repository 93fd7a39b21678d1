"""Segmentation network G (DeepLab-v2), its presets and its one weights loader."""

from model.build import Restored, apply_preset, build_model, preset_name, restore_model
from model.deeplabv2 import DeepLabV2, SegOutput, deeplabv2_resnet101
from model.discriminator import FCDiscriminator
from model.weights import (
    LAYOUTS,
    PRESETS,
    LoadReport,
    Weights,
    infer_preset,
    load_weights,
    preset_for,
    read_weights,
)

__all__ = [
    "LAYOUTS",
    "PRESETS",
    "DeepLabV2",
    "FCDiscriminator",
    "LoadReport",
    "Restored",
    "SegOutput",
    "Weights",
    "apply_preset",
    "build_model",
    "deeplabv2_resnet101",
    "infer_preset",
    "load_weights",
    "preset_for",
    "preset_name",
    "read_weights",
    "restore_model",
]
