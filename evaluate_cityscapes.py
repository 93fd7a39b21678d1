r"""mIoU of a trained model (or of predictions on disk) on Cityscapes val.

Input images resized to 1024x512, logits upsampled (bilinear) to the 2048x1024 labels, argmax,
one confusion matrix over the split; per-class table in the paper's column order. ``--flip``
averages the softmax with the mirrored image's, as every number of the paper's Table 1 did.

    python evaluate_cityscapes.py --restore runs/RUN/checkpoints/last.pth
    python evaluate_cityscapes.py --restore runs/RUN/checkpoints/last.pth --flip \
        --compare-with "Only Norm"                       # the paper's row and the difference
    python evaluate_cityscapes.py --restore GTA2Cityscapes_CLAN.pth     # preset inferred: clan
    python evaluate_cityscapes.py --restore GTA2Cityscapes_multi-ed35151c.pth --preset adaptsegnet
    python evaluate_cityscapes.py --restore GTA5_MaxSquare.pth --preset maxsquare --flip
    python evaluate_cityscapes.py --restore ADVENT.pth --preset advent
    python evaluate_cityscapes.py --restore last.pth --save-dir preds/   # + trainId/colour PNGs
    python evaluate_cityscapes.py --pred-dir other_repo/preds/           # score PNGs on disk
    python evaluate_cityscapes.py --restore runs/RUN/checkpoints/step_*.pth --flip  # a sweep
    python evaluate_cityscapes.py --restore last.pth --panels 4          # + 4 prediction panels
    python evaluate_cityscapes.py --restore A.pth B.pth --panels 4     # a comparison of A and B

``--panels K`` draws K val images (``--panel-seed``; or those ``--panel-images`` names) as
image | ground truth | prediction | error map | entropy map, one PNG each (``utils/panels.py``
says how they read). With several checkpoints it writes one ``comparison.png`` instead: a row
per image, image | ground truth | one prediction per checkpoint.

A sweep (several ``--restore`` files) scores every snapshot on the same val images: one row
each, the final snapshot reported (the last step), the best marked "selected on val": a number
chosen on the set it is measured on, as the paper's "Only Norm" row (the best of 36 snapshots)
was, and so an optimistic one.

Without ``--config`` the config stored in the checkpoint is used (the defaults for files from
elsewhere, whose preset is inferred from the file unless ``--preset`` names it); ``key.sub=value``
overrides apply on top, e.g. ``data.val.root=/data/Cityscapes``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from dataset.build import build_dataset, ensure_data
from dataset.datasets import eval_loader
from dataset.labels import CLASS_NAMES
from model.build import preset_name, restore_model
from model.weights import read_weights
from utils.checkpoint import step_in_name
from utils.config import split_overrides, to_dict
from utils.distributed import DistInfo, describe, select_device
from utils.errors import add_debug_flag, run
from utils.evaluation import (
    add_checkpoint_flags,
    checkpoint_overrides,
    eval_config,
    evaluate,
    score_prediction_dir,
    short_names,
)
from utils.logger import setup_logging, write_json
from utils.metrics import format_iou_table
from utils.panels import (
    add_panel_flags,
    check_panel_flags,
    model_probs,
    panel_indices,
    predicted_labels,
    write_comparison_panel,
    write_prediction_panels,
)
from utils.paper_results import paper_row
from utils.provenance import command_line, provenance

SCRIPT = "evaluate_cityscapes.py"
log = logging.getLogger("evaluate")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--restore", nargs="+", metavar="CKPT",
        help="weights of G to evaluate (any layout); several files: a snapshot sweep",
    )  # fmt: skip
    source.add_argument(
        "--pred-dir", metavar="DIR", help="score trainId PNGs named like the images"
    )
    add_checkpoint_flags(parser)
    parser.add_argument(
        "--compare-with", metavar="ROW", help="print this row of the paper's Table 1 beside ours"
    )
    parser.add_argument("--save-dir", metavar="DIR", help="write trainId and colour PNGs here")
    parser.add_argument("--results", metavar="FILE", help="results JSON (default: see below)")
    add_panel_flags(parser)
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    parser.epilog = (
        "results JSON default: <save-dir>/results.json, else <checkpoint>.results.json, else "
        "<pred-dir>/results.json; a sweep: <folder of the last snapshot>/sweep.results.json. "
        "--panels-dir default: <save-dir>/panels, else <checkpoint>.panels; a sweep: <folder of "
        "the last snapshot>/sweep.panels"
    )
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.restore:
        args.restore, moved = split_overrides(args.restore)
        args.overrides = [*moved, *args.overrides]
        if not args.restore:
            parser.error("--restore: no checkpoint given")
    if args.restore and len(args.restore) > 1 and args.save_dir:
        parser.error("--save-dir writes one model's predictions: give a single --restore")
    if args.pred_dir and (args.flip or args.preset):
        parser.error("--flip and --preset need --restore (predictions on disk are fixed)")
    if args.compare_with:
        paper_row(args.compare_with)  # an unknown row fails before any work
    check_panel_flags(parser, args)
    if args.pred_dir and args.panels:
        parser.error("--panels needs --restore (predictions on disk hold no probabilities)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    overrides = checkpoint_overrides(args)
    if args.restore and len(args.restore) > 1:
        return sweep(args, overrides, argv)
    weights = read_weights(args.restore[0]) if args.restore else None
    cfg = eval_config(args.config, weights.config if weights else None, overrides)
    ensure_data(cfg.data)
    val = build_dataset(cfg.data.val, with_labels=True, evaluation=True)
    log.info("val: %d images from %s (split %s)", len(val), cfg.data.val.root, cfg.data.val.split)

    flip, device = None, None
    chosen = panel_indices(args, val)
    if weights is None:
        cm = score_prediction_dir(args.pred_dir, val, cfg.model.num_classes)
        row, default_results = Path(args.pred_dir).name, Path(args.pred_dir) / "results.json"
        preset = None
    else:
        device = select_device(cfg.train.device)
        model, model_cfg, _ = restore_model(cfg.model, weights)
        preset, flip = preset_name(model_cfg), cfg.eval.flip
        pin = device.type == "cuda"
        loader = eval_loader(val, cfg.eval.batch_size, cfg.eval.num_workers, pin_memory=pin)
        log.info("evaluating with preset %s, flip averaging %s, %s", preset,
                 "on" if flip else "off", describe(DistInfo(), device))  # fmt: skip
        cm = evaluate(
            model.to(device), loader, device, model_cfg.num_classes, args.save_dir, flip=flip
        )
        ckpt = Path(args.restore[0])
        if chosen:
            beside = Path(args.save_dir) / "panels" if args.save_dir else None
            panels = Path(args.panels_dir or beside or ckpt.with_name(ckpt.name + ".panels"))
            written = write_prediction_panels(val, chosen, model_probs(model, device, flip), panels)
            log.info("%d prediction panels written to %s", len(written), panels)
        row = f"{ckpt.stem} ({preset}, flip {'on' if flip else 'off'})"
        default_results = ckpt.with_name(ckpt.name + ".results.json")
    if args.save_dir:
        default_results = Path(args.save_dir) / "results.json"
    ious, miou = cm.iou(), cm.miou()
    rows = {row: ious}
    if args.compare_with:
        rows.update(_paper_rows(args.compare_with, ious, flip))
    print(format_iou_table(rows))
    results = Path(args.results) if args.results else default_results
    results.parent.mkdir(parents=True, exist_ok=True)
    write_json(
        results,
        {
            "restore": args.restore[0] if args.restore else None,
            "pred_dir": args.pred_dir,
            "layout": weights.layout if weights else None,
            "preset": preset,
            "flip": flip,
            "val_root": cfg.data.val.root,
            "num_images": len(val),
            "mIoU": miou,
            "iou": dict(zip(CLASS_NAMES, ious)),
            "config": to_dict(cfg),
            "provenance": provenance(command_line(SCRIPT, argv), to_dict(cfg), device),
        },
    )
    log.info("results written to %s", results)
    print(f"mIoU: {100 * miou:.2f}")
    return 0


def sweep(args: argparse.Namespace, overrides: list[str], argv: Sequence[str] | None) -> int:
    """Score every ``--restore`` file on the val images of the first one's config: a table row
    per snapshot (in step order when every name holds a step), the last reported as the final
    one, the best marked as selected on val; one JSON with every row."""
    files = list(args.restore)
    steps = [step_in_name(f) for f in files]
    if all(s is not None for s in steps):
        files = [f for _, f in sorted(zip(steps, files))]
    first = read_weights(files[0])
    cfg = eval_config(args.config, first.config, overrides)
    ensure_data(cfg.data)
    val = build_dataset(cfg.data.val, with_labels=True, evaluation=True)
    device = select_device(cfg.train.device)
    loader = eval_loader(val, cfg.eval.batch_size, cfg.eval.num_workers,
                         pin_memory=device.type == "cuda")  # fmt: skip
    log.info("sweep over %d snapshots; val: %d images from %s; flip averaging %s; %s", len(files),
             len(val), cfg.data.val.root, "on" if cfg.eval.flip else "off",
             describe(DistInfo(), device))  # fmt: skip
    chosen = panel_indices(args, val)
    scored, panel_preds = [], []
    for path in tqdm(files, desc="snapshots", unit="ckpt"):
        weights = first if path == files[0] else read_weights(path)
        own = eval_config(args.config, weights.config, overrides)
        model, model_cfg, _ = restore_model(own.model, weights)
        cm = evaluate(model.to(device), loader, device, model_cfg.num_classes, progress=False,
                      flip=cfg.eval.flip)  # fmt: skip
        scored.append({"restore": path, "step": step_in_name(path), "mIoU": cm.miou(),
                       "preset": preset_name(model_cfg), "iou": cm.iou()})  # fmt: skip
        if chosen:
            probs = model_probs(model, device, cfg.eval.flip)
            panel_preds.append(predicted_labels(val, chosen, probs))
        del model, weights
    if chosen:
        panels = Path(args.panels_dir or Path(files[-1]).parent / "sweep.panels")
        path = write_comparison_panel(val, chosen, panel_preds, short_names(files),
                                      panels / "comparison.png")  # fmt: skip
        log.info("comparison of %d checkpoints on %d images written to %s", len(files),
                 len(chosen), path)  # fmt: skip
    final = scored[-1]
    best = max(scored, key=lambda r: r["mIoU"])
    rows = {}
    for r in scored:
        marks = [m for m, on in (("final", r is final), ("selected on val", r is best)) if on]
        rows[Path(r["restore"]).stem + (f" ({', '.join(marks)})" if marks else "")] = r["iou"]
    if args.compare_with:
        name, paper = paper_row(args.compare_with)
        theirs = [v / 100 for v in paper.iou]
        rows.update(_paper_rows(args.compare_with, final["iou"], cfg.eval.flip, "final"))
        rows[f"selected - paper: {name}"] = [a - b for a, b in zip(best["iou"], theirs)]
    print(format_iou_table(rows))
    results = Path(args.results) if args.results else Path(files[-1]).parent / "sweep.results.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    as_json = [{**r, "iou": dict(zip(CLASS_NAMES, r["iou"]))} for r in scored]
    write_json(results, {
        "flip": cfg.eval.flip, "val_root": cfg.data.val.root, "num_images": len(val),
        "snapshots": as_json, "final": final["restore"], "selected_on_val": best["restore"],
        "note": "selected_on_val is chosen on the images it is scored on: an optimistic number",
        "config": to_dict(cfg),
        "provenance": provenance(command_line(SCRIPT, argv), to_dict(cfg), device),
    })  # fmt: skip
    log.info("results written to %s", results)
    print(f"final ({Path(final['restore']).name}): {100 * final['mIoU']:.2f}; best "
          f"({Path(best['restore']).name}, selected on val): {100 * best['mIoU']:.2f}")  # fmt: skip
    print(f"mIoU: {100 * final['mIoU']:.2f}")
    return 0


def _paper_rows(
    name: str, ious: list[float], flip: bool | None, ours: str = "ours"
) -> dict[str, list[float]]:
    """The paper's row (fractions) and ours minus it, per class."""
    name, paper = paper_row(name)
    if flip is False:
        log.warning("the paper's Table 1 used flip averaging: add --flip to compare like with like")
    if paper.note:
        log.info("paper row %r: %s", name, paper.note)
    theirs = [v / 100 for v in paper.iou]
    return {
        f"paper: {name} (stated mIoU {paper.miou:.2f})": theirs,
        f"{ours} - paper: {name}": [a - b for a, b in zip(ious, theirs)],
    }


if __name__ == "__main__":
    sys.exit(run(main))
