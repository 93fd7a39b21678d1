"""mIoU of a trained model (or of predictions on disk) on Cityscapes val.

Input images resized to 1024x512, logits upsampled (bilinear) to the 2048x1024 labels, argmax,
one confusion matrix over the split; per-class table in the paper's column order.

    python evaluate_cityscapes.py --restore runs/RUN/checkpoints/last.pth
    python evaluate_cityscapes.py --restore GTA2City.pth \
        --config configs/gta5_to_cityscapes/norm_only.yaml
    python evaluate_cityscapes.py --restore last.pth --save-dir preds/   # + trainId/colour PNGs
    python evaluate_cityscapes.py --pred-dir other_repo/preds/           # score PNGs on disk

Without ``--config`` the config stored in the checkpoint is used (the defaults for files from
elsewhere); ``key.sub=value`` overrides apply on top, e.g. ``data.val.root=/data/Cityscapes``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from dataset.build import build_dataset, ensure_data
from dataset.datasets import eval_loader
from dataset.labels import CLASS_NAMES
from model.build import build_model, restore_generator
from utils.checkpoint import load_checkpoint
from utils.config import config_from_dict, load_config
from utils.engine import resolve_device
from utils.evaluation import evaluate, score_prediction_dir
from utils.logger import setup_logging, write_json
from utils.metrics import format_iou_table

log = logging.getLogger("evaluate")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--restore", metavar="CKPT", help="checkpoint of G to evaluate")
    source.add_argument(
        "--pred-dir", metavar="DIR", help="score trainId PNGs named like the images"
    )
    parser.add_argument("--config", help="YAML for the model and data.val (default: checkpoint's)")
    parser.add_argument("--save-dir", metavar="DIR", help="write trainId and colour PNGs here")
    parser.add_argument("--results", metavar="FILE", help="results JSON (default: see below)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    parser.epilog = (
        "results JSON default: <save-dir>/results.json, else <checkpoint>.results.json, else "
        "<pred-dir>/results.json"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    stored = load_checkpoint(args.restore) if args.restore else None
    if args.config:
        cfg = load_config(args.config, args.overrides)
    elif isinstance(stored, dict) and isinstance(stored.get("config"), dict):
        cfg = config_from_dict(stored["config"], args.overrides)
    else:
        cfg = load_config(None, args.overrides)
    ensure_data(cfg.data)
    val = build_dataset(cfg.data.val, with_labels=True, evaluation=True)
    log.info("val: %d images from %s (split %s)", len(val), cfg.data.val.root, cfg.data.val.split)

    if args.pred_dir:
        cm = score_prediction_dir(args.pred_dir, val, cfg.model.num_classes)
        row, default_results = Path(args.pred_dir).name, Path(args.pred_dir) / "results.json"
    else:
        device = resolve_device(cfg.train.device)
        model = build_model(cfg.model)
        restore_generator(model, args.restore)
        model.to(device)
        loader = eval_loader(val, cfg.eval.batch_size, cfg.eval.num_workers)
        cm = evaluate(model, loader, device, cfg.model.num_classes, save_dir=args.save_dir)
        ckpt = Path(args.restore)
        row, default_results = ckpt.stem, ckpt.with_name(ckpt.name + ".results.json")
    if args.save_dir:
        default_results = Path(args.save_dir) / "results.json"
    ious, miou = cm.iou(), cm.miou()
    print(format_iou_table({row: ious}))
    results = Path(args.results) if args.results else default_results
    results.parent.mkdir(parents=True, exist_ok=True)
    write_json(
        results,
        {
            "restore": args.restore,
            "pred_dir": args.pred_dir,
            "val_root": cfg.data.val.root,
            "num_images": len(val),
            "mIoU": miou,
            "iou": dict(zip(CLASS_NAMES, ious)),
        },
    )
    log.info("results written to %s", results)
    print(f"mIoU: {100 * miou:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
