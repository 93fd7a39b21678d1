"""Datasets from the config: one place that maps ``data.*`` sections to dataset objects."""

from __future__ import annotations

import logging
from pathlib import Path

from dataset.datasets import GTA5, SYNTHIA, Cityscapes, DatasetLayoutError, SegmentationDataset
from dataset.folder import FolderDataset, read_label_map
from dataset.targets import ACDC, CrossCity, DarkZurich
from dataset.transforms import PairedTransform, TransformSpec
from utils.config import DATASETS, NO_VAL, DataConfig, DomainConfig

log = logging.getLogger(__name__)


def ensure_data(cfg: DataConfig) -> None:
    """Create the built-in synthetic benchmark under ``data.synthetic.root`` on first use."""
    if not cfg.synthetic.root:
        return
    from dataset.synthetic import SyntheticSpec, ensure_synthetic

    spec = SyntheticSpec(
        seed=cfg.synthetic.seed,
        num_source=cfg.synthetic.num_source,
        num_train=cfg.synthetic.num_train,
        num_val=cfg.synthetic.num_val,
        source_size=cfg.synthetic.source_size,
        target_size=cfg.synthetic.target_size,
        num_synthia=cfg.synthetic.num_synthia,
        synthia_size=cfg.synthetic.synthia_size,
        num_night=cfg.synthetic.num_night,
        num_night_val=cfg.synthetic.num_night_val,
    )
    ensure_synthetic(Path(cfg.synthetic.root), spec)


def build_dataset(
    cfg: DomainConfig, *, with_labels: bool = True, evaluation: bool = False
) -> SegmentationDataset:
    """The dataset a ``data.source`` / ``data.target`` / ``data.val`` section describes.

    ``evaluation=True`` resizes the image only and keeps labels at full resolution
    (docs/method.md, "Evaluation").
    """
    if cfg.dataset == NO_VAL:
        raise DatasetLayoutError(
            "data.val.dataset is none: this needs a labelled val set; set data.val.dataset, "
            "data.val.root (and for a folder data.val.label_root)"
        )
    spec = TransformSpec(
        resize=cfg.resize,
        scale_range=cfg.scale_range,
        image_rescale=cfg.image_rescale,
        crop=cfg.crop,
        cat_max_ratio=cfg.cat_max_ratio,
        mirror=cfg.mirror,
        blur=cfg.blur,
        label_at_full_resolution=evaluation,
    )
    transform = PairedTransform(spec)
    list_file = cfg.list_file or None
    if cfg.dataset == "gta5":
        return GTA5(cfg.root, transform, list_file=list_file)
    if cfg.dataset == "synthia":
        return SYNTHIA(cfg.root, transform, list_file=list_file)
    if cfg.dataset == "cityscapes":
        return Cityscapes(
            cfg.root, cfg.split, transform, list_file=list_file, with_labels=with_labels
        )
    if cfg.dataset == "folder":
        labelled = with_labels and bool(cfg.label_root)
        return FolderDataset(
            cfg.root,
            transform,
            list_file=list_file,
            label_root=cfg.label_root if labelled else None,
            label_suffix=cfg.label_suffix,
            image_suffix=cfg.image_suffix,
            label_lut=read_label_map(cfg.label_map) if labelled and cfg.label_map else None,
            skip_unreadable=cfg.skip_unreadable and not evaluation,
        )
    labelled = {"with_labels": with_labels, "list_file": list_file}
    if cfg.dataset == "acdc":
        return ACDC(cfg.root, cfg.condition, cfg.split, transform, **labelled)
    if cfg.dataset == "darkzurich":
        return DarkZurich(cfg.root, cfg.condition, cfg.split, transform, **labelled)
    if cfg.dataset == "crosscity":
        return CrossCity(cfg.root, cfg.city, cfg.split, transform, **labelled)
    raise ValueError(f"dataset: expected one of {', '.join(DATASETS)}, got {cfg.dataset!r}")
