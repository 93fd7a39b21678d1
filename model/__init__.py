"""Segmentation network G (DeepLab-v2)."""

from model.deeplabv2 import DeepLabV2, SegOutput, deeplabv2_resnet101
from model.discriminator import FCDiscriminator

__all__ = ["DeepLabV2", "FCDiscriminator", "SegOutput", "deeplabv2_resnet101"]
