r"""One config over several seeds: mean ± std of the final-step target-val mIoU, per class.

    python -m benchmarks.seeds --config configs/demo/norm_only.yaml --seeds 0 1 2
    python -m benchmarks.seeds --config configs/gta5_to_cityscapes/clan_norm.yaml --seeds 0 1 2 \
        model.init_from=weights/DeepLab_resnet_pretrained_init-f81d91e8.pth
    python -m benchmarks.seeds --start configs/demo/maxsquare_source.yaml \
        --config configs/demo/maxsquare_norm.yaml --seeds 0 1 2

Each seed trains in ``<runs>/<name>-seed<S>`` (``--runs``, default ``<train.out_dir>/seeds``, so
that configs of other benchmarks or protocols with one file name stay apart; ``--name``,
default the config's file name) with the script that trains the config (inferred from the
config's name, or ``--script``). A finished run (its ``results.json`` at the last step) is
reused, an interrupted one is resumed from its ``last.pth``, and a run folder trained with other
settings is an error naming them (it is never overwritten). The per-class table (IoU %, mean ±
sample std over the seeds, each run's final step, as DAFormer-style reporting does) is printed
and written to ``<runs>/<name>.seeds.md``, with every run's results and provenance in
``<runs>/<name>.seeds.json``.

A setup that starts from another run's G (MaxSquare starts from a source-only model) runs in two
stages: ``--start CONFIG`` trains that first stage for each seed in ``<runs>/<its name>-seed<S>``
(reused when finished, as any run) and starts the seed's run from its ``last.pth``
(``model.init_from``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dataset.labels import CLASS_SUBSETS, NUM_CLASSES
from utils.config import (
    ConfigError,
    config_from_dict,
    load_config,
    read_yaml,
    take_overrides,
    to_dict,
)
from utils.errors import UsageError, UserError, add_debug_flag, run
from utils.evaluation.metrics import SHORT_NAMES, miou_name
from utils.evaluation.reports import recorded_subset_protocol
from utils.logger import write_json
from utils.protocols import flatten
from utils.provenance import command_line, footer, provenance
from utils.setups import SETUPS, script_for_config, script_module

SCRIPTS = {setup.script: script_module(setup) for setup in SETUPS}  # the table's scripts
# Settings that do not change what a run computes: a reused run may differ in these.
NOT_RESULTS = {"train.device", "train.out_dir", "train.run_name", "train.log_every",
               "train.image_every", "train.save_every", "train.keep_checkpoints",
               "data.num_workers", "eval.num_workers", "train.max_steps"}  # fmt: skip


class RunMismatchError(ConfigError):
    """A run folder holds a run of other settings than the ones asked for."""


class RunStoppedError(UserError, RuntimeError):
    """A run stopped (a signal) before writing its results."""


def script_for(config: str, script: str | None) -> str:
    """The training script of ``config``: ``script`` if given, else from the config's name
    (``utils.setups.script_for_config``)."""
    if script is not None:
        return script
    setup = script_for_config(config)
    if setup is None:
        known = [Path(v.demo).stem for s in SETUPS for v in s.variants if v.demo]
        raise UsageError(
            f"--config {config}: cannot tell its training script from the name "
            f"{Path(config).stem!r} (a name that starts with one of {', '.join(known)}): give "
            f"--script {' or '.join(SCRIPTS)}"
        )
    return setup.script


def _check_same_settings(run_dir: Path, wanted: dict[str, Any]) -> None:
    stored = flatten(to_dict(config_from_dict(read_yaml(run_dir / "config.yaml"))))
    diff = [f"{k}: {stored.get(k)!r} there, {v!r} now" for k, v in flatten(wanted).items()
            if k not in NOT_RESULTS and stored.get(k) != v]  # fmt: skip
    if diff:
        raise RunMismatchError(
            f"{run_dir} holds a run with other settings ({'; '.join(diff)}): remove it or give "
            f"another --runs/--name"
        )


def run_seed(
    script: str, config: str, seed: int, runs: Path, name: str, overrides: Sequence[str]
) -> dict[str, Any]:
    """Train one seed (or reuse / resume its run); returns its ``results.json``."""
    run_name = f"{name}-seed{seed}"
    run_dir = runs / run_name
    args = [*overrides, f"train.seed={seed}", f"train.out_dir={runs}", f"train.run_name={run_name}"]
    wanted = load_config(config, args)
    results = run_dir / "results.json"
    if run_dir.is_dir():
        _check_same_settings(run_dir, to_dict(wanted))
        if results.is_file():
            done = json.loads(results.read_text())
            if done["step"] == wanted.train.max_steps:
                return done
    start = time.perf_counter()
    if (run_dir / "checkpoints" / "last.pth").is_file():
        argv = ["--resume", str(run_dir), *overrides]
    else:
        argv = ["--config", config, *args]
    status = SCRIPTS[script].main(argv)
    if status != 0 or not results.is_file():  # stopped by a signal: its last.pth is saved
        raise RunStoppedError(
            f"{run_dir} stopped before its results (exit status {status}); run the same command "
            f"again to resume it"
        )
    print(f"{run_name}: {time.perf_counter() - start:.0f} s", flush=True)
    return json.loads(results.read_text())


def run_staged(
    script: str,
    config: str,
    seed: int,
    runs: Path,
    name: str,
    overrides: Sequence[str],
    start: str | None = None,
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """``run_seed``, after its first stage when there is one: ``start`` (a config) trained for
    the same seed with the same ``overrides``, whose ``last.pth`` the run starts from. ``extra``
    overrides are the run's alone (a control row's), so rows that differ only in them share
    one first stage."""
    if start is None:
        return run_seed(script, config, seed, runs, name, [*extra, *overrides])
    stage = Path(start).stem
    run_seed(script_for(start, None), start, seed, runs, stage, overrides)
    init = runs / f"{stage}-seed{seed}" / "checkpoints" / "last.pth"
    return run_seed(script, config, seed, runs, name,
                    [*extra, *overrides, f"model.init_from={init}"])  # fmt: skip


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (0 for one value) of the finite ``values``; NaN, NaN for none."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.mean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def _key(name: str, classes: int) -> str:
    """A results file's key for ``classes``: ``iou``/``mIoU`` for 19, ``iou16``/``mIoU16``..."""
    return name if classes == NUM_CLASSES else f"{name}{classes}"


def summary(results: Sequence[dict[str, Any]], classes: int = NUM_CLASSES) -> dict[str, Any]:
    """Mean and std of the mIoU and of each class's IoU over runs (fractions), on the 19
    classes or on a SYNTHIA subset (16, 13: the results' ``iou16``/``mIoU16``... keys)."""
    ious = [r[_key("iou", classes)] for r in results]
    per_class = [mean_std([x[c] for x in ious]) for c in range(len(ious[0]))]
    miou = mean_std([r[_key("mIoU", classes)] for r in results])
    return {
        "mIoU": {"mean": miou[0], "std": miou[1]},
        "iou": {"mean": [m for m, _ in per_class], "std": [s for _, s in per_class]},
    }


def subset_protocol(rows: dict[str, Sequence[dict[str, Any]]]) -> str:
    """The one ``eval.subset_protocol`` the runs of ``rows`` (label -> results) scored their
    subsets with, a results file without the field read as ``ignore_outside``; an error naming
    each row's where they differ, since their mIoU16 and mIoU13 would not compare."""
    by_row = {label: sorted({recorded_subset_protocol(r) for r in results})
              for label, results in rows.items()}  # fmt: skip
    found = {p for protocols in by_row.values() for p in protocols}
    if len(found) > 1:
        each = "; ".join(f"{label}: {', '.join(p)}" for label, p in by_row.items())
        raise UsageError(
            f"the runs' subsets were scored with different eval.subset_protocol ({each}): "
            f"score them with one (evaluate_cityscapes.py --subset-protocol) before tabling them"
        )
    return found.pop() if found else "ignore_outside"


def _cell(mean: float, std: float, count: int) -> str:
    if math.isnan(mean):
        return "nan"
    return f"{100 * mean:.1f}" if count == 1 else f"{100 * mean:.1f} ± {100 * std:.1f}"


def markdown_table(rows: dict[str, Sequence[dict[str, Any]]], classes: int = NUM_CLASSES) -> str:
    """Rows of per-class IoU and mIoU, each cell mean ± std over the row's runs (percent). On
    16 classes (SYNTHIA) the mIoU over SYNTHIA's 13 follows, as its papers report; a subset's
    rows must share one ``eval.subset_protocol`` (``subset_protocol``)."""
    if classes != NUM_CLASSES:
        subset_protocol(rows)
    means = [16, 13] if classes == 16 else [classes]
    head = ["method", *(SHORT_NAMES[c] for c in CLASS_SUBSETS[classes]),
            *(miou_name(k) for k in means)]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for label, results in rows.items():
        s, n = summary(results, classes), len(results)
        per_class = [_cell(m, sd, n) for m, sd in zip(s["iou"]["mean"], s["iou"]["std"])]
        mious = []
        for k in means:
            m = summary(results, k)["mIoU"]
            mious.append(f"**{_cell(m['mean'], m['std'], n)}**")
        lines.append("| " + " | ".join([label, *per_class, *mious]) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="experiment YAML")
    parser.add_argument("--seeds", nargs="+", default=[0, 1, 2], metavar="S")
    parser.add_argument("--script", choices=list(SCRIPTS), help="default: from the config's name")
    parser.add_argument("--runs", type=Path, help="run folders (default: <train.out_dir>/seeds)")
    parser.add_argument("--name", help="run name prefix (default: the config's file name)")
    parser.add_argument(
        "--start",
        metavar="CONFIG",
        help="a first stage, trained per seed, that each run starts from",
    )
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    take_overrides(parser, args, "seeds", int, "integers")
    script = script_for(args.config, args.script)
    name = args.name or Path(args.config).stem
    cfg = load_config(args.config, args.overrides)  # a bad one fails before any run
    args.runs = args.runs or Path(cfg.train.out_dir) / "seeds"
    if args.start:
        load_config(args.start, args.overrides)
        script_for(args.start, None)
    classes = cfg.eval.classes[0]  # the table's classes: 19, or SYNTHIA's 16 (and 13)
    results = [run_staged(script, args.config, s, args.runs, name, args.overrides, args.start)
               for s in args.seeds]  # fmt: skip
    label = f"{name} ({len(results)} seed{'s' * (len(results) > 1)})"
    stamp = provenance(command_line(["-m", "benchmarks.seeds"], argv))
    table = markdown_table({label: results}, classes)
    runs_json = [{"seed": s, "run": str(args.runs / f"{name}-seed{s}"), **r}
                 for s, r in zip(args.seeds, results)]  # fmt: skip
    subsets = (
        {"subset_protocol": subset_protocol({label: results})} if classes != NUM_CLASSES else {}
    )
    write_json(args.runs / f"{name}.seeds.json", {
        "config": args.config, "script": script, "start": args.start,
        "overrides": args.overrides, "seeds": args.seeds, "classes": classes, **subsets,
        **summary(results, classes), "runs": runs_json, "provenance": stamp,
    })  # fmt: skip
    (args.runs / f"{name}.seeds.md").write_text(f"{table}\n\n{footer(stamp)}\n")
    print(table)
    s = summary(results, classes)["mIoU"]
    print(f"{miou_name(classes)} over seeds {args.seeds}: {100 * s['mean']:.2f} ± "
          f"{100 * s['std']:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
