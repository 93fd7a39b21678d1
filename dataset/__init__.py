"""Datasets, paired transforms and loaders for GTA5 (or SYNTHIA) -> Cityscapes."""
