"""The synthetic benchmark's results table: every setup, several seeds, mean and std.

Trains and evaluates Source only, Norm only, CLAN, CLAN + Norm and an oracle (trained on the
target's own labels) with the demo configs on the built-in synthetic benchmark, and writes a
markdown table of per-class IoU and mIoU (mean +- std over seeds):

    python -m benchmarks.synthetic_table --seeds 0 1 2 --out benchmarks/synthetic_table.md

Runs go to ``runs/table/<setup>-seed<S>``; a run whose ``results.json`` exists is reused, so an
interrupted table continues where it stopped. Extra ``key=value`` overrides apply to every run.
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

import train_clan_norm
import train_norm_only
from utils.errors import add_debug_flag, run
from utils.metrics import SHORT_NAMES

# (row label, training script, config, extra overrides)
SETUPS: dict[str, tuple[str, object, str, tuple[str, ...]]] = {
    "source_only": ("Source only", train_norm_only, "configs/demo/source_only.yaml", ()),
    "norm_only": ("Norm only", train_norm_only, "configs/demo/norm_only.yaml", ()),
    "clan": ("CLAN", train_clan_norm, "configs/demo/clan.yaml", ()),
    "clan_norm": ("CLAN + Norm", train_clan_norm, "configs/demo/clan_norm.yaml", ()),
    "oracle": (
        "Oracle (target labels)",
        train_norm_only,
        "configs/demo/source_only.yaml",
        (
            "data.source.dataset=cityscapes",
            "data.source.root=data/synthetic/Cityscapes",
            "data.source.resize=[256,128]",
            "data.source.crop=null",
        ),
    ),
    "norm_only_released": (
        "Norm only, released protocol",
        train_norm_only,
        "configs/demo/released/norm_only.yaml",
        (),
    ),
    "norm_only_released_once": (
        "Norm only, released protocol but each weight updated once",
        train_norm_only,
        "configs/demo/released/norm_only.yaml",
        ("optim.backbone_updates=once",),
    ),
    "clan_norm_released": (
        "CLAN + Norm, released protocol",
        train_clan_norm,
        "configs/demo/released/clan_norm.yaml",
        (),
    ),
    "norm_only_bn": (
        "Norm only, lambda_norm 1e-9 (target pass, no norm gradient)",
        train_norm_only,
        "configs/demo/norm_only.yaml",
        ("loss.lambda_norm=1e-9",),
    ),
    "norm_only_strong": (
        "Norm only, lambda_norm 1e-2",
        train_norm_only,
        "configs/demo/norm_only.yaml",
        ("loss.lambda_norm=1e-2",),
    ),
}


def run_one(setup: str, seed: int, out_dir: Path, overrides: Sequence[str]) -> dict:
    """Train one setup with one seed (or reuse its finished run); returns its results.json."""
    _, script, config, extra = SETUPS[setup]
    name = f"{setup}-seed{seed}"
    results = out_dir / name / "results.json"
    if not results.is_file():
        args = ["--config", config, *extra, f"train.seed={seed}", f"train.out_dir={out_dir}",
                f"train.run_name={name}", *overrides]  # fmt: skip
        if (out_dir / name / "checkpoints" / "last.pth").is_file():
            args = ["--resume", str(out_dir / name), *overrides]
        start = time.perf_counter()
        script.main(args)
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    return json.loads(results.read_text())


def _cell(values: list[float]) -> str:
    values = [100 * v for v in values if not math.isnan(v)]
    if not values:
        return "nan"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def markdown_table(rows: dict[str, list[dict]]) -> str:
    """Rows of per-class IoU and mIoU, each cell mean ± std over seeds (percent)."""
    head = ["method", *SHORT_NAMES, "mIoU"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for label, results in rows.items():
        per_class = [_cell([r["iou"][c] for r in results]) for c in range(len(SHORT_NAMES))]
        miou = _cell([r["mIoU"] for r in results])
        lines.append("| " + " | ".join([label, *per_class, f"**{miou}**"]) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--setups",
        nargs="+",
        default=[s for s in SETUPS if s != "norm_only_bn" and "_released" not in s],
        choices=list(SETUPS),
        help="default: all but norm_only_bn (the target-BatchNorm control) and the released-"
        "protocol rows, which are run on their own",
    )
    parser.add_argument("--runs", type=Path, default=Path("runs/table"), help="run folders")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/synthetic_table.md"))
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = {}
    for setup in args.setups:
        results = [run_one(setup, seed, args.runs, args.overrides) for seed in args.seeds]
        rows[SETUPS[setup][0]] = results
    table = markdown_table(rows)
    minutes = (time.perf_counter() - start) / 60
    note = (
        f"Synthetic benchmark, target val, IoU % (mean ± std over seeds {args.seeds}); "
        f"`python -m benchmarks.synthetic_table {' '.join(argv or sys.argv[1:])}`"
    ).rstrip()
    args.out.write_text(f"{note}\n\n{table}\n")
    print(table)
    print(f"written to {args.out} ({minutes:.1f} min this call)")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
