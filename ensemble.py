r"""Ensemble of trained DeepLab-v2 models on Cityscapes val: P = sum_i w_i softmax(G_i(x)).

Each member predicts with its own preset (p1 + p2, or C2 alone for the multi-level models),
with ``--flip`` averaged with its mirrored image; members are combined in probability space
(``--combine logit`` weighs logits instead) with weights normalised to sum 1 (default: equal).
One pass over the data scores every member and the ensemble; the table has a row per member,
one for the ensemble and the ensemble minus the best member, per class.

The paper's "*" rows weigh the Norm-only model 0.7 and the released model 0.3, with flip:

    python ensemble.py --restore runs/norm_only/checkpoints/last.pth GTA2Cityscapes_CLAN.pth \
        --weights 0.7 0.3 --flip                                    # CLAN + Norm*
    python ensemble.py --restore runs/norm_only/checkpoints/last.pth GTA5_MaxSquare.pth \
        --presets auto maxsquare --weights 0.7 0.3 --flip           # MaxSquare + Norm*
    python ensemble.py --restore A.pth B.pth --save-dir preds/      # + the ensemble's PNGs
    python ensemble.py --restore A.pth B.pth --offload   # one member on the GPU at a time
    python ensemble.py --restore A.pth B.pth --panels 4  # + the ensemble's prediction panels
    python ensemble.py --restore A.pth B.pth --classes 16 13  # SYNTHIA -> Cityscapes' class sets

``--classes`` and ``--mask-absent`` choose the class sets reported and how predictions of the
classes outside a set count, ``--label-size full|input`` the labels' size (full resolution, or
resized with the image to ``data.val.resize``: MaxSquare's evaluation), and
``--subset-protocol ignore_outside|full_matrix`` which pixels a set's IoUs count, as in
``evaluate_cityscapes.py`` (default: the first member's ``eval.classes``, ``eval.label_size``
and ``eval.subset_protocol``).

Each member's config is ``--config`` if given, else the one stored in its checkpoint, else the
defaults (files from elsewhere: preset from ``--presets`` or inferred from the file); the data
and evaluation settings are the first member's. Overrides ``key.sub=value`` go before
``--restore`` or after ``--``: ``ensemble.py --restore A.pth B.pth -- data.val.root=/data/cs``.

``--panels K`` draws K val images as ``evaluate_cityscapes.py --panels`` does, with the
ensemble's prediction and the entropy of its probabilities (of the softmax of its weighted
logits with ``--combine logit``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from model.build import Restored, preset_name
from model.contract import Segmenter
from utils.analysis.panels import (
    ProbsFn,
    add_panel_flags,
    check_panel_flags,
    panel_indices,
    write_prediction_panels,
)
from utils.config import PRESETS, take_overrides, to_dict
from utils.errors import UsageError, add_debug_flag, run
from utils.evaluation import reports
from utils.evaluation.inference import (
    SPACES,
    combine_scores,
    evaluate_ensemble,
    member_scores,
    normalise_weights,
)
from utils.evaluation.metrics import nanmean
from utils.evaluation.predictions import refuse_replacing
from utils.evaluation.prepare import (
    Evaluation,
    add_class_flags,
    add_output_flags,
    check_class_flags,
    class_overrides,
    prepare_eval,
)
from utils.logger import setup_logging
from utils.provenance import command_line, refuse_other_settings, write_results

log = logging.getLogger("ensemble")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--restore", nargs="+", required=True, metavar="CKPT", help="two or more weights files"
    )
    parser.add_argument("--weights", nargs="+", metavar="W", help="one per member (default: equal)")
    parser.add_argument(
        "--presets", nargs="+", metavar="PRESET",
        help=f"one per member: {', '.join(PRESETS)} or auto (the checkpoint's config, or "
        "inferred from the file)",
    )  # fmt: skip
    parser.add_argument("--combine", choices=SPACES, default="prob", help="weigh probs or logits")
    parser.add_argument(
        "--flip", action="store_true", help="each member averaged with the mirrored image"
    )
    add_output_flags(parser, "write the ensemble's PNGs here")
    parser.add_argument(
        "--offload", action="store_true", help="keep members on the CPU between forward passes"
    )
    parser.add_argument("--config", help="YAML for every member (default: each checkpoint's)")
    add_class_flags(parser)
    add_panel_flags(parser)
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    parser.epilog = (
        "results JSON default: <save-dir>/results.json, else <first checkpoint>.ensemble.json; "
        "one that holds the record of other members, weights or settings is kept unless "
        "--overwrite. "
        "--panels-dir default: <save-dir>/panels, else <first checkpoint>.ensemble.panels"
    )
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    take_overrides(parser, args, "restore")
    take_overrides(parser, args, "weights", float, "numbers")
    take_overrides(parser, args, "presets", choices=[*PRESETS, "auto"])
    if len(args.restore) < 2:
        parser.error("--restore needs two or more checkpoints")
    if args.presets and len(args.presets) != len(args.restore):
        parser.error(f"--presets: {len(args.presets)} presets for {len(args.restore)} checkpoints")
    check_panel_flags(parser, args)
    check_class_flags(parser, args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    weights = normalise_weights(args.weights, len(args.restore))
    overrides = [*args.overrides, *(["eval.flip=true"] if args.flip else []),
                 *class_overrides(args)]  # fmt: skip
    presets = args.presets or ["auto"] * len(args.restore)
    ev = prepare_eval(args.restore, args.config, overrides,
                      member_overrides=[[] if p == "auto" else [f"model.preset={p}"]
                                        for p in presets])  # fmt: skip
    cfg, val = ev.cfg, ev.val
    save_dir = Path(args.save_dir) if args.save_dir else None
    first = Path(args.restore[0])
    beside = (
        save_dir / "results.json" if save_dir else first.with_name(first.name + ".ensemble.json")
    )
    results = Path(args.results or beside)
    chosen = panel_indices(args, val)
    beside = save_dir / "panels" if save_dir else first.with_name(first.name + ".ensemble.panels")
    panels_dir = Path(args.panels_dir) if args.panels_dir else beside
    if not args.overwrite:
        members = [{"restore": p, "weight": w} for p, w in zip(args.restore, weights)]
        refuse_other_settings(results, {"members": members, "combine": args.combine,
                                        "config": to_dict(cfg)})  # fmt: skip
        refuse_replacing([n for _, _, n in val.items], save_dir, results, panels_dir,
                         [val.items[i][2] for i in chosen])  # fmt: skip

    members = [ev.restore(i) for i in range(len(args.restore))]
    _check_classes(args.restore, members)
    presets = [preset_name(m.config) for m in members]
    labels = [
        f"{i + 1}: {short} ({preset}, w {w:.2f})"
        for i, (short, preset, w) in enumerate(
            zip(reports.short_names(args.restore), presets, weights)
        )
    ]
    flip = cfg.eval.flip
    log.info(
        "ensemble of %d members, weights %s, %s space, flip averaging %s%s",
        len(members), [round(w, 4) for w in weights], args.combine, "on" if flip else "off",
        ", offloaded to the CPU between passes" if args.offload else "",
    )  # fmt: skip
    classes, mask, device = cfg.eval.classes, cfg.eval.mask_absent, ev.device
    models = [m.model for m in members]
    member_cms, ensemble_cms = evaluate_ensemble(
        models, weights, labels, ev.loader, device, flip=flip, combine=args.combine,
        offload=args.offload, save_dir=save_dir, views=reports.class_views(classes, mask),
    )  # fmt: skip
    if chosen:
        probs_of = _ensemble_probs(models, weights, labels, device, flip, args.combine,
                                   args.offload)  # fmt: skip
        written = write_prediction_panels(val, chosen, probs_of, panels_dir)
        log.info("%d prediction panels written to %s", len(written), panels_dir)
    _report(args, argv, ev, presets, weights, labels, member_cms, ensemble_cms, results)
    return 0


def _report(
    args: argparse.Namespace, argv: Sequence[str] | None, ev: Evaluation, presets: list[str],
    weights: list[float], labels: list[str], member_cms: list, ensemble_cms: list, results: Path,
) -> None:  # fmt: skip
    """The table (a row per member, the ensemble, the ensemble minus its best member), the
    results JSON and the final ``mIoU:`` lines."""
    cfg, flip = ev.cfg, ev.cfg.eval.flip
    classes, mask, subsets = cfg.eval.classes, cfg.eval.mask_absent, cfg.eval.subset_protocol
    member_ious = [reports.class_ious(cms, classes, mask, subsets) for cms in member_cms]
    ious = reports.class_ious(ensemble_cms, classes, mask, subsets)
    first_set = classes[0]  # the best member is the best on the first class set
    best = max(range(len(member_ious)), key=lambda i: nanmean(member_ious[i][first_set]))
    rows = dict(zip(labels, member_ious))
    notes = [args.combine, f"flip {'on' if flip else 'off'}", *reports.mask_note(classes, mask)]
    rows[f"ensemble ({', '.join(notes)})"] = ious
    rows[f"ensemble - {best + 1} (best member)"] = {
        k: [a - b for a, b in zip(ious[k], member_ious[best][k])] for k in classes
    }
    scored = reports.protocol_of(cfg, f"files given: {len(labels)} members")
    print(reports.class_tables(rows, classes, mask, scored))
    fields = {
        "members": [
            {"restore": path, "preset": preset, "weight": w,
             **reports.class_results(member_iou, cms, mask, subsets)}
            for path, preset, w, member_iou, cms in zip(
                args.restore, presets, weights, member_ious, member_cms
            )
        ],
        "combine": args.combine,
        "flip": flip,
        "val_root": cfg.data.val.root,
        "num_images": len(ev.val),
        **reports.class_results(ious, ensemble_cms, mask, subsets),
        "best_member": best + 1,
    }  # fmt: skip
    write_results(results, fields, command_line("ensemble.py", argv), to_dict(cfg), ev.device,
                  protocol=scored.fields())  # fmt: skip
    log.info("results written to %s", results)
    print("\n".join(reports.miou_lines(reports.class_mious(ious))))


def _check_classes(paths: Sequence[str], members: Sequence[Restored]) -> None:
    """All members must predict the same classes (files from elsewhere set their own count)."""
    if len({m.config.num_classes for m in members}) > 1:
        counts = ", ".join(f"{p}: {m.config.num_classes}" for p, m in zip(paths, members))
        raise UsageError(f"ensemble members predict different numbers of classes ({counts})")


def _ensemble_probs(
    models: Sequence[Segmenter], weights: Sequence[float], names: Sequence[str],
    device: torch.device, flip: bool, combine: str, offload: bool,
) -> ProbsFn:  # fmt: skip
    """The ensemble's probabilities for the panels: ``sum_i w_i P_i``, or with ``combine``
    "logit" the softmax of ``sum_i w_i logits_i`` (its argmax is the ensemble's prediction)."""

    def probs_of(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        scores = member_scores(models, image.to(device), size, flip=flip, space=combine,
                               offload=offload)  # fmt: skip
        total = combine_scores(scores, weights, names)
        return total if combine == "prob" else total.softmax(1)

    return probs_of


if __name__ == "__main__":
    sys.exit(run(main))
