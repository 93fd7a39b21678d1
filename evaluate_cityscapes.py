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
    python evaluate_cityscapes.py --restore SYNTHIA_run.pth --classes 16 13  # SYNTHIA's tables
    python evaluate_cityscapes.py --restore SYNTHIA_run.pth --classes 16 13 \
        --subset-protocol full_matrix                    # scored as DACS and DAFormer score

``--panels K`` draws K val images (``--panel-seed``; or those ``--panel-images`` names) as
image | ground truth | prediction | error map | entropy map, one PNG each
(``utils/analysis/panels.py`` says how they read). With several checkpoints it writes one
``comparison.png`` instead: a row per image, image | ground truth | one prediction per
checkpoint.

A sweep (several ``--restore`` files) scores every snapshot on the same val images: one row
each, the final snapshot reported (the last step), the best marked "selected on val": a number
chosen on the set it is measured on, as the paper's "Only Norm" row (the best of 36 snapshots)
was, and so an optimistic one.

``--classes 19|16|13`` (default ``eval.classes``: [19], [16, 13] in the SYNTHIA configs) picks
the class sets reported, each scored from the one confusion matrix: 16 drops terrain, truck and
train, 13 also wall, fence and pole. A 19-output model's prediction of a class outside the set
is an error (a false negative of the true class) unless ``--mask-absent`` takes the argmax over
the set's classes only; the tables say which. ``--subset-protocol ignore_outside|full_matrix``
(``eval.subset_protocol``) says which pixels a set's IoUs count: ignore_outside (the default)
ignores the pixels labelled outside the set, full_matrix takes the IoUs of the 19-class matrix
and averages them over the set (DACS's and DAFormer's evaluation; docs/synthia.md).

``--label-size full|input`` (``eval.label_size``): score against the labels at full resolution,
the predictions upsampled to them (the default: AdaptSegNet's evaluation, which scored the
paper's Table 1), or against the labels resized (nearest) with the image to
``data.val.resize`` (MaxSquare's evaluation). The tables open with the protocol (the labels'
size, flip averaging, with a subset reported the subset protocol, how the snapshot was chosen),
which every results JSON holds under ``protocol``; ``--compare-with`` names the protocol of the
paper's row and warns where this run's differs, and where this run's val set is not Cityscapes
val (the synthetic benchmark's, another dataset's or split's) a line says that the difference
is not like for like.

Without ``--config`` the config stored in the checkpoint is used (the defaults for files from
elsewhere, whose preset is inferred from the file unless ``--preset`` names it); ``key.sub=value``
overrides apply on top, e.g. ``data.val.root=/data/Cityscapes``. ``--pred-dir DIR`` scores
against the labels of the config's val set: ``--config``, else the config recorded in
``DIR/results.json`` by the evaluation that wrote the PNGs (``--save-dir DIR``), else the
defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dataset.datasets import DatasetLayoutError
from dataset.labels import NUM_CLASSES
from model.build import preset_name
from utils.analysis.panels import (
    add_panel_flags,
    check_panel_flags,
    model_probs,
    panel_indices,
    predicted_labels,
    write_comparison_panel,
    write_prediction_panels,
)
from utils.checkpoint import step_in_name
from utils.config import Config, take_overrides, to_dict
from utils.distributed import DistInfo, describe
from utils.errors import UsageError, add_debug_flag, refuse_overwrite, run
from utils.evaluation.inference import evaluate_views
from utils.evaluation.metrics import miou_name, nanmean
from utils.evaluation.paper_results import paper_row, val_set_note
from utils.evaluation.predictions import (
    recorded_config,
    refuse_replacing,
    score_prediction_dir,
)
from utils.evaluation.prepare import (
    Evaluation,
    add_checkpoint_flags,
    add_class_flags,
    add_output_flags,
    check_class_flags,
    checkpoint_overrides,
    class_overrides,
    prepare_eval,
)
from utils.evaluation.reports import (
    Protocol,
    class_ious,
    class_mious,
    class_results,
    class_tables,
    class_views,
    file_selection,
    mask_note,
    miou_lines,
    protocol_of,
    short_names,
)
from utils.logger import setup_logging
from utils.provenance import command_line, refuse_other_settings, write_results

SCRIPT = "evaluate_cityscapes.py"
# --pred-dir DIR's record, beside (and never in place of) the results.json that --save-dir DIR
# wrote with the model's own evaluation
PRED_DIR_RESULTS = "pred_dir.results.json"
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
    add_class_flags(parser)
    parser.add_argument(
        "--compare-with", metavar="ROW", help="print this row of the paper's Table 1 beside ours"
    )
    add_output_flags(parser, "write trainId and colour PNGs here")
    add_panel_flags(parser)
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    parser.epilog = (
        "results JSON default: <save-dir>/results.json, else <checkpoint>.results.json, else "
        f"<pred-dir>/{PRED_DIR_RESULTS}; a sweep: <folder of the last snapshot>/"
        "sweep.results.json; "
        "one that holds the record of other files or settings is kept unless --overwrite. "
        "--panels-dir default: <save-dir>/panels, else <checkpoint>.panels; a sweep: <folder of "
        "the last snapshot>/sweep.panels"
    )
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    take_overrides(parser, args, "restore")
    if args.restore and len(args.restore) > 1 and args.save_dir:
        parser.error("--save-dir writes one model's predictions: give a single --restore")
    if args.pred_dir and (args.flip or args.preset or args.mask_absent):
        parser.error(
            "--flip, --preset and --mask-absent need --restore (predictions on disk are fixed)"
        )
    if args.compare_with:
        paper_row(args.compare_with)  # an unknown row fails before any work
    check_panel_flags(parser, args)
    check_class_flags(parser, args)
    if args.pred_dir and args.panels:
        parser.error("--panels needs --restore (predictions on disk hold no probabilities)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    files = _in_step_order(args.restore) if args.restore else []
    ev = _prepare(args, files)
    if len(files) > 1:
        return sweep(args, ev, argv)
    cfg, val = ev.cfg, ev.val
    classes, mask = cfg.eval.classes, cfg.eval.mask_absent
    chosen = panel_indices(args, val)
    results, panels = _outputs(args, files)
    scored_files = {"restore": files[0] if files else None, "pred_dir": args.pred_dir}
    if not args.overwrite:
        refuse_other_settings(results, {**scored_files, "config": to_dict(cfg)})
        save_dir = Path(args.save_dir) if args.save_dir else None
        refuse_replacing([n for _, _, n in val.items], save_dir, results, panels,
                         [val.items[i][2] for i in chosen])  # fmt: skip
    if not files:
        cms = [score_prediction_dir(args.pred_dir, val)]
        row, preset, flip, layout = Path(args.pred_dir).name, None, None, None
        scored = dataclasses.replace(protocol_of(cfg, f"predictions on disk: {row}"), flip=None)
    else:
        model, model_cfg, report = ev.restore(0)
        preset, flip, layout = preset_name(model_cfg), cfg.eval.flip, report.layout
        log.info("evaluating with preset %s, flip averaging %s, %d classes, %s", preset,
                 "on" if flip else "off", model_cfg.num_classes,
                 describe(DistInfo(), ev.device))  # fmt: skip
        views = class_views(classes, mask)
        cms = evaluate_views(model.to(ev.device), ev.loader, ev.device, views, args.save_dir,
                             flip=flip)  # fmt: skip
        if chosen:
            probs = model_probs(model, ev.device, flip)
            written = write_prediction_panels(val, chosen, probs, panels)
            log.info("%d prediction panels written to %s", len(written), panels)
        notes = [preset, f"flip {'on' if flip else 'off'}", *mask_note(classes, mask)]
        row = f"{Path(files[0]).stem} ({', '.join(notes)})"
        scored = protocol_of(cfg, file_selection(files[0]), ev.scored_model)
    ious = class_ious(cms, classes, mask, cfg.eval.subset_protocol)
    rows = {row: ious}
    if args.compare_with:
        rows.update(_paper_rows(args.compare_with, ious[NUM_CLASSES]))
        print(_paper_protocol(args.compare_with, scored, to_dict(cfg.data)))
    print(class_tables(rows, classes, mask, scored))
    fields = {
        **scored_files, "layout": layout, "preset": preset, "flip": flip,
        "val_root": cfg.data.val.root, "num_images": len(val),
        **class_results(ious, cms, mask, cfg.eval.subset_protocol),
    }  # fmt: skip
    write_results(results, fields, command_line(SCRIPT, argv), to_dict(cfg), ev.device,
                  protocol=scored.fields())  # fmt: skip
    log.info("results written to %s", results)
    print("\n".join(miou_lines(class_mious(ious))))
    return 0


def _prepare(args: argparse.Namespace, files: list[str]) -> Evaluation:
    """``prepare_eval`` for the checkpoints ``files`` or, without them, for ``--pred-dir``,
    whose config is ``--config``, else the one recorded in the folder's ``results.json`` (the
    evaluation that wrote the predictions: its val set and evaluation settings, the PNGs being
    its own argmax), else the defaults; a val set that is not there is an error that says
    where the labels come from and how to point at them."""
    overrides = checkpoint_overrides(args) + class_overrides(args)
    check = functools.partial(_check_class_options, args)
    if files:
        return prepare_eval(files, args.config, overrides, check=check)
    recorded = None if args.config else recorded_config(Path(args.pred_dir))
    source = f"--config {args.config}" if args.config else "the defaults"
    if recorded is not None:
        source = f"the config recorded in {Path(args.pred_dir) / 'results.json'}"
        overrides = ["eval.mask_absent=false", *overrides]
        log.info("--pred-dir: the val set and evaluation settings of %s", source)
    try:
        return prepare_eval([], args.config, overrides, check=check, stored=recorded)
    except DatasetLayoutError as err:
        raise DatasetLayoutError(
            f"{err}. --pred-dir scores the predictions against the labels of the config's val set "
            f"(data.val, here from {source}): name the config the predictions were made with, "
            f"--config CONFIG (e.g. --config configs/demo/norm_only.yaml for a demo model's), or "
            f"point data.val.* at the labels (e.g. data.val.root=DIR)"
        ) from None


def _outputs(args: argparse.Namespace, files: list[str]) -> tuple[Path, Path | None]:
    """Where one evaluation writes its results JSON and its panels (the epilog's defaults)."""
    save_dir = Path(args.save_dir) if args.save_dir else None
    if not files:
        beside, panels = Path(args.pred_dir) / PRED_DIR_RESULTS, None
    else:
        ckpt = Path(files[0])
        beside = ckpt.with_name(ckpt.name + ".results.json")
        panels = Path(args.panels_dir or (save_dir / "panels" if save_dir else None)
                      or ckpt.with_name(ckpt.name + ".panels"))  # fmt: skip
    if save_dir is not None:
        beside = save_dir / "results.json"
    return Path(args.results) if args.results else beside, panels


def _in_step_order(files: list[str]) -> list[str]:
    """Several snapshots in step order when every name holds a step (else as given)."""
    steps = [step_in_name(f) for f in files]
    if len(files) > 1 and all(s is not None for s in steps):
        return [f for _, f in sorted(zip(steps, files))]
    return files


def _check_class_options(args: argparse.Namespace, cfg: Config) -> None:
    """Refuse class options that the chosen scoring cannot honour."""
    classes, mask = cfg.eval.classes, cfg.eval.mask_absent
    if args.pred_dir and mask:
        raise UsageError("eval.mask_absent=true needs --restore: predictions on disk are fixed")
    if args.compare_with and NUM_CLASSES not in classes:
        raise UsageError(
            f"--compare-with: the paper's rows are 19-class GTA5 -> Cityscapes results; report "
            f"19 classes (--classes 19 {' '.join(map(str, classes))}) to compare with them"
        )


def sweep(args: argparse.Namespace, ev: Evaluation, argv: Sequence[str] | None) -> int:
    """Score every ``--restore`` file on the val images of the first one's config: a table row
    per snapshot (in step order when every name holds a step), the last reported as the final
    one, the best marked as selected on val; one JSON with every row."""
    files, cfg, val, device = ev.files, ev.cfg, ev.val, ev.device
    classes, mask = cfg.eval.classes, cfg.eval.mask_absent
    log.info("sweep over %d snapshots; val: %d images from %s; flip averaging %s; %s", len(files),
             len(val), cfg.data.val.root, "on" if cfg.eval.flip else "off",
             describe(DistInfo(), device))  # fmt: skip
    results = Path(args.results) if args.results else Path(files[-1]).parent / "sweep.results.json"
    if not args.overwrite:
        snapshots = [{"restore": path} for path in files]
        refuse_other_settings(results, {"snapshots": snapshots, "config": to_dict(cfg)})
    scored = _score_snapshots(args, ev)
    final = scored[-1]
    first_set = classes[0]  # the snapshot selected on val is the best on the first class set
    best = max(scored, key=lambda r: nanmean(r["ious"][first_set]))
    rows = {}
    for r in scored:
        marks = [m for m, on in (("final", r is final), ("selected on val", r is best)) if on]
        marks += mask_note(classes, mask)
        rows[Path(r["restore"]).stem + (f" ({', '.join(marks)})" if marks else "")] = r["ious"]
    scored_as = protocol_of(cfg, f"best of {len(scored)} on val: {Path(best['restore']).name} "
                                 f"(final: {Path(final['restore']).name})",
                            ev.scored_model)  # fmt: skip
    if args.compare_with:
        name, paper = paper_row(args.compare_with)
        theirs = [v / 100 for v in paper.iou]
        rows.update(_paper_rows(args.compare_with, final["ious"][NUM_CLASSES], "final"))
        rows[f"selected - paper: {name}"] = {
            NUM_CLASSES: [a - b for a, b in zip(best["ious"][NUM_CLASSES], theirs)]
        }
        print(_paper_protocol(args.compare_with, scored_as, to_dict(cfg.data)))
    print(class_tables(rows, classes, mask, scored_as))
    as_json = [{k: v for k, v in r.items() if k != "ious"} for r in scored]
    fields = {
        "flip": cfg.eval.flip, "val_root": cfg.data.val.root, "num_images": len(val),
        "snapshots": as_json, "final": final["restore"], "selected_on_val": best["restore"],
        "note": "selected_on_val is chosen on the images it is scored on: an optimistic number",
    }  # fmt: skip
    write_results(results, fields, command_line(SCRIPT, argv), to_dict(cfg), device,
                  protocol=scored_as.fields())  # fmt: skip
    log.info("results written to %s", results)
    final_miou, best_miou = (nanmean(r["ious"][first_set]) for r in (final, best))
    print(f"final ({Path(final['restore']).name}): {100 * final_miou:.2f}; best "
          f"({Path(best['restore']).name}, selected on val): {100 * best_miou:.2f} "
          f"({miou_name(first_set)})")  # fmt: skip
    print("\n".join(miou_lines(class_mious(final["ious"]))))
    return 0


def _score_snapshots(args: argparse.Namespace, ev: Evaluation) -> list[dict[str, Any]]:
    """Every snapshot scored in turn (one model in memory at a time): its IoUs per class set
    and its results fields; with ``--panels``, one comparison panel of them all."""
    classes, mask, flip = ev.cfg.eval.classes, ev.cfg.eval.mask_absent, ev.cfg.eval.flip
    subset_protocol = ev.cfg.eval.subset_protocol
    chosen = panel_indices(args, ev.val)
    comparison = (
        Path(args.panels_dir or Path(ev.files[-1]).parent / "sweep.panels") / "comparison.png"
    )
    if chosen and not args.overwrite:
        refuse_overwrite(comparison.parent, "--panels-dir", [comparison])
    scored, panel_preds = [], []
    for index, path in enumerate(tqdm(ev.files, desc="snapshots", unit="ckpt")):
        model, model_cfg, _ = ev.restore(index)
        cms = evaluate_views(model.to(ev.device), ev.loader, ev.device, class_views(classes, mask),
                             progress=False, flip=flip)  # fmt: skip
        ious = class_ious(cms, classes, mask, subset_protocol)
        scored.append({"restore": path, "step": step_in_name(path), "ious": ious,
                       "preset": preset_name(model_cfg),
                       **class_results(ious, cms, mask, subset_protocol)})  # fmt: skip
        if chosen:
            probs = model_probs(model, ev.device, flip)
            panel_preds.append(predicted_labels(ev.val, chosen, probs))
        del model
    if chosen:
        path = write_comparison_panel(ev.val, chosen, panel_preds, short_names(ev.files),
                                      comparison)  # fmt: skip
        log.info("comparison of %d checkpoints on %d images written to %s", len(ev.files),
                 len(chosen), path)  # fmt: skip
    return scored


def _paper_rows(
    name: str, ious: list[float], ours: str = "ours"
) -> dict[str, dict[int, list[float]]]:
    """The paper's row (fractions) and ours minus it, per class (19 classes)."""
    name, paper = paper_row(name)
    if paper.note:
        log.info("paper row %r: %s", name, paper.note)
    theirs = [v / 100 for v in paper.iou]
    return {
        f"paper: {name} (stated mIoU {paper.miou:.2f})": {NUM_CLASSES: theirs},
        f"{ours} - paper: {name}": {NUM_CLASSES: [a - b for a, b in zip(ious, theirs)]},
    }


def _paper_protocol(name: str, ours: Protocol, data: dict[str, Any]) -> str:
    """The line that names the protocol the paper's row ``name`` was scored with and this
    run's; where they differ (the labels' size, flip averaging), a warning names the flags that
    would score this run as the row was. Where this run's val set (``data``, the config's data
    section) is not Cityscapes val, a second line says that the difference is not like for
    like."""
    name, paper = paper_row(name)
    theirs = paper.protocol
    flip = "unknown" if ours.flip is None else "on" if ours.flip else "off"
    flags = []
    if ours.label_size != theirs.label_size:
        flags.append(f"--label-size {theirs.label_size}")
    if ours.flip is not None and ours.flip != theirs.flip:
        flags.append("--flip" if theirs.flip else "no --flip")
    if flags:
        log.warning("paper row %r was scored with another protocol than this run: use %s to "
                    "compare like with like", name, " and ".join(flags))  # fmt: skip
    line = (f"paper row {name!r} was scored with {theirs.describe()}; this run: label_size="
            f"{ours.label_size}, flip={flip}, snapshot: {ours.selection}")  # fmt: skip
    other_data = val_set_note(name, data)
    return line if other_data is None else f"{line}\n{other_data}"


if __name__ == "__main__":
    sys.exit(run(main))
