"""Segmentation network G (DeepLab-v2), discriminator D and the one weights loader."""
