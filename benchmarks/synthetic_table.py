"""The synthetic benchmark's results table: every setup, several seeds, mean and std.

Trains and evaluates Source only, Norm only (and its BatchNorm control, lambda_norm 1e-9, and
lambda_norm 1e-2), CLAN, CLAN + Norm and an oracle (trained on the target's own labels) with the
demo configs on the built-in synthetic benchmark, through ``benchmarks.seeds``, and writes a
markdown table of per-class IoU and mIoU (mean +- std over seeds), with every run's results
and provenance in a JSON file beside it:

    python -m benchmarks.synthetic_table --seeds 0 1 2 --readme
    python -m benchmarks.synthetic_table --from-json --readme   # no training

Runs go to ``runs/table/<setup>-seed<S>``; finished runs are reused and interrupted ones
resumed, so a stopped table continues where it stopped. Extra ``key=value`` overrides apply to
every run. ``--readme`` rewrites the table's generated blocks (between their markers) from the
JSON, in the files given or by default in the table's docs page (``PAGES``) and, for the main
table, the README's mIoU summary; it flags runs whose commit is older than a change to the code
they depend on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import ensemble
from benchmarks.seeds import markdown_table, run_staged, summary
from dataset.labels import NUM_CLASSES
from utils.config import take_overrides
from utils.errors import UsageError, add_debug_flag, run
from utils.logger import write_json
from utils.provenance import command_line, footer, provenance, short_commit, stale
from utils.readme import block, find_block, update_block
from utils.setups import MAXSQUARE_START
from utils.setups import SETUPS as TABLE

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "python -m benchmarks.synthetic_table"  # what the blocks' markers name
MAIN, SUMMARY = "synthetic-table", "synthetic-summary"  # the README sums up the main table
PAGES = {  # each table's block lives on its docs page; the main table's summary in the README
    "synthetic-table": ("docs/synthetic.md", "README.md"),
    "synthetic-table-released": ("docs/protocols.md",),
    "synthetic-table-synthia": ("docs/synthia.md",),
    "synthetic-table-maxsquare": ("docs/maxsquare.md",),
    "synthetic-table-dacs": ("docs/dacs.md",),
    "synthetic-table-dacs-synthia": ("docs/dacs.md",),
    "synthetic-table-daformer": ("docs/daformer.md",),
    "synthetic-table-daformer-bf16": ("docs/daformer.md",),
}


class Row(NamedTuple):
    """A row: its label, training script, config and extra overrides, and the first stage
    (a config) it starts from, if any (``benchmarks.seeds --start``)."""

    label: str
    script: str
    config: str
    extra: tuple[str, ...] = ()
    start: str | None = None


class Ensemble(NamedTuple):
    """A row of ``ensemble.py`` over other rows' runs of the same seed, flip averaging on."""

    label: str
    members: tuple[str, ...]  # setups
    weights: tuple[float, ...]


NORM_ONLY, CLAN = "train_norm_only.py", "train_clan_norm.py"
MAXSQUARE, DACS = "train_maxsquare_norm.py", "train_dacs_norm.py"
# Every variant of the table of setups is a row, named by its demo config; then the rows of
# this benchmark alone: an oracle, the released protocol, SYNTHIA, controls and an ensemble.
SETUPS: dict[str, Row | Ensemble] = {
    **{Path(v.demo).stem: Row(v.label, s.script, v.demo, (), v.start)
       for s in TABLE for v in s.variants if v.demo},
    "oracle": Row(
        "Oracle (target labels)",
        NORM_ONLY,
        "configs/demo/source_only.yaml",
        (
            "data.source.dataset=cityscapes",
            "data.source.root=data/synthetic/Cityscapes",
            "data.source.resize=[256,128]",
            "data.source.crop=null",
        ),
    ),
    "norm_only_released": Row(
        "Norm only, released protocol", NORM_ONLY, "configs/demo/released/norm_only.yaml"
    ),
    "norm_only_released_once": Row(
        "Norm only, released protocol but each weight updated once",
        NORM_ONLY,
        "configs/demo/released/norm_only.yaml",
        ("optim.backbone_updates=once",),
    ),
    "clan_norm_released": Row(
        "CLAN + Norm, released protocol", CLAN, "configs/demo/released/clan_norm.yaml"
    ),
    "synthia_source_only": Row(
        "Source only (SYNTHIA)", NORM_ONLY, "configs/demo/synthia/source_only.yaml"
    ),
    "synthia_norm_only": Row("Norm only (SYNTHIA)", NORM_ONLY,
                             "configs/demo/synthia/norm_only.yaml"),
    "synthia_clan_norm": Row("CLAN + Norm (SYNTHIA)", CLAN, "configs/demo/synthia/clan_norm.yaml"),
    "norm_only_bn": Row(
        "Norm only, lambda_norm 1e-9 (target pass, no norm gradient)",
        NORM_ONLY,
        "configs/demo/norm_only.yaml",
        ("loss.lambda_norm=1e-9",),
    ),
    "norm_only_strong": Row(
        "Norm only, lambda_norm 1e-2",
        NORM_ONLY,
        "configs/demo/norm_only.yaml",
        ("loss.lambda_norm=1e-2",),
    ),
    # the controls: the same 200 steps from the same start, with the target pass but (almost) no
    # target gradient, and with no target pass at all (continued source training)
    "maxsquare_bn": Row("MaxSquare, lambda_target 1e-9 (target pass, no target gradient)",
                        MAXSQUARE, "configs/demo/maxsquare.yaml",
                        ("loss.maxsquare.lambda_target=1e-9",), MAXSQUARE_START),
    "maxsquare_continued": Row("Source only, 200 more steps (no target pass)",
                               MAXSQUARE, "configs/demo/maxsquare.yaml",
                               ("loss.maxsquare.lambda_target=0",), MAXSQUARE_START),
    # The paper's "Max Square + Norm *": 0.7 on the Norm-only model, 0.3 on MaxSquare, flip on.
    "maxsquare_ensemble": Ensemble("Norm only (0.7) + MaxSquare (0.3) ensemble, flip",
                                   ("norm_only", "maxsquare"), (0.7, 0.3)),
    "synthia_dacs": Row("DACS (SYNTHIA)", DACS, "configs/demo/synthia/dacs.yaml"),
    "synthia_dacs_norm": Row("DACS + Norm (SYNTHIA)", DACS, "configs/demo/synthia/dacs_norm.yaml"),
    # DAFormer's step in bfloat16 autocast (the mixed precision its speed figures use) against
    # the float32 rows: does the precision change what the recipe and the norm loss reach?
    "daformer_bf16": Row("DAFormer, bf16", DACS, "configs/demo/daformer.yaml", ("train.amp=bf16",)),
    "daformer_norm_bf16": Row("DAFormer + Norm, bf16", DACS, "configs/demo/daformer_norm.yaml",
                              ("train.amp=bf16",)),
}  # fmt: skip
MAXSQUARE_ROWS = [s for s in SETUPS if s.startswith("maxsquare")]
DACS_ROWS = [s for s in SETUPS if "dacs" in s]
DAFORMER_ROWS = [s for s in SETUPS if s.startswith("daformer")]


def run_setup(setup: str, seeds: Sequence[int], runs: Path, overrides: Sequence[str]) -> list[dict]:
    """Every seed of one setup (``benchmarks.seeds``: finished runs reused, interrupted ones
    resumed, a first stage trained first); returns their ``results.json``."""
    row = SETUPS[setup]
    if isinstance(row, Ensemble):
        return [_ensemble(row, setup, s, runs, overrides) for s in seeds]
    return [run_staged(row.script, row.config, s, runs, setup, overrides, row.start, row.extra)
            for s in seeds]  # fmt: skip


def _ensemble(row: Ensemble, setup: str, seed: int, runs: Path, overrides: Sequence[str]) -> dict:
    """``ensemble.py`` of the members' runs of ``seed`` (trained first where missing), with
    flip averaging; reused when its results file exists."""
    for member in row.members:
        run_setup(member, [seed], runs, overrides)
    results = runs / f"{setup}-seed{seed}.json"
    if not results.is_file():
        members = [str(runs / f"{m}-seed{seed}" / "checkpoints" / "last.pth") for m in row.members]
        status = ensemble.main(["--restore", *members, "--weights", *map(str, row.weights),
                                "--flip", "--results", str(results), *overrides])  # fmt: skip
        if status != 0:
            raise UsageError(f"ensemble.py for {setup}, seed {seed}, exited with {status}")
    return _iou_lists(json.loads(results.read_text()))


def _iou_lists(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` with its IoUs as lists in trainId order, as a training run's results hold
    them (``ensemble.py`` writes them by class name)."""
    out = dict(results)
    for key, value in results.items():
        if key.startswith("iou") and isinstance(value, dict):
            out[key] = list(value.values())  # (written in trainId order)
    return out


def table_data(
    rows: dict[str, list[dict]], seeds: Sequence[int], classes: int, command: str
) -> dict[str, Any]:
    """What the table is made of: per row, every seed's results (with its run's provenance)."""
    return {"seeds": list(seeds), "classes": classes, "rows": rows,
            "provenance": provenance(command)}  # fmt: skip


def commits(data: dict[str, Any]) -> list[str]:
    """The distinct commits of the table's runs, in order of appearance."""
    seen = {}
    for results in data["rows"].values():
        for r in results:
            seen.setdefault(short_commit(r.get("provenance") or {}), None)
    return list(seen)


def markdown(data: dict[str, Any], flags: Sequence[str] = ()) -> str:
    """The table and its footer (the runs' commits, how the table was made), and ``flags``
    (``staleness``, at generation time) as a warning line: the table's file in benchmarks/."""
    runs = ", ".join(commits(data))
    text = (
        f"{markdown_table(data['rows'], data.get('classes', NUM_CLASSES))}\n\n"
        f"<sub>Runs made at commit {runs}{' (not recorded)' if runs == 'unknown' else ''}.</sub> "
        f"{footer(data['provenance'])}"
    )
    return text + ("\n\n**Stale:** " + "; ".join(flags) + "." if flags else "")


def staleness(data: dict[str, Any]) -> list[str]:
    """Why runs of the table may not be what the checked-out code gives, one line per reason."""
    reasons = {}
    for label, results in data["rows"].items():
        for r in results:
            why = stale(r.get("provenance") or {})
            if why:
                reasons.setdefault(why, []).append(label)
    return [f"{why} ({', '.join(dict.fromkeys(labels))})" for why, labels in reasons.items()]


def readme_block(data: dict[str, Any], name: str) -> str:
    """The generated block of table ``name`` on its docs page, markers included: the table and
    a link to its file in benchmarks/, which holds the runs' commits, the machine and any stale
    flag (the docs page carries no history)."""
    where = f"benchmarks/{name.replace('-', '_')}.md"
    table = markdown_table(data["rows"], data.get("classes", NUM_CLASSES))
    note = f"<sub>The runs, their commits and machine: [`{where}`](../{where}).</sub>"
    return block(name, SOURCE, f"{table}\n\n{note}")


def summary_block(data: dict[str, Any]) -> str:
    """The README's summary of a table: its rows' mIoU, mean ± std over the seeds."""
    lines = ["| method | mIoU |", "|---|---|"]
    for label, results in data["rows"].items():
        m = summary(results)["mIoU"]
        cell = f"{100 * m['mean']:.1f}" if len(results) == 1 else (
            f"{100 * m['mean']:.1f} ± {100 * m['std']:.1f}")  # fmt: skip
        lines.append(f"| {label} | {cell} |")
    return block(SUMMARY, SOURCE, "\n".join(lines))


def write_blocks(data: dict[str, Any], name: str, paths: Sequence[Path]) -> list[str]:
    """Rewrite, in each of ``paths``, every block of table ``name`` it holds: the table's own
    and, for the main table, its summary (an error for a file that holds none); returns a line
    per file."""
    blocks = {name: readme_block(data, name)}
    if name == MAIN:
        blocks[SUMMARY] = summary_block(data)
    report = []
    for path in paths:
        if not path.is_file():
            raise UsageError(f"--readme {path}: not a file")
        text = path.read_text()
        held = [b for b in blocks if find_block(text, b) is not None]
        if not held:
            raise UsageError(f"--readme {path}: no block {' or '.join(map(repr, blocks))} to "
                             f"write in")  # fmt: skip
        changed = [update_block(path, b, blocks[b]) for b in held]
        report.append(f"{path}: {'updated' if any(changed) else 'already up to date'}")
    return report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", nargs="+", default=[0, 1, 2], metavar="S")
    parser.add_argument(
        "--setups",
        nargs="+",
        default=[
            s
            for s in SETUPS
            if "_released" not in s
            and not s.startswith("synthia")
            and s not in MAXSQUARE_ROWS + DACS_ROWS + DAFORMER_ROWS
        ],
        metavar="SETUP",
        help=f"{', '.join(SETUPS)} (default: all but the released-protocol, SYNTHIA, MaxSquare, "
        "DACS and DAFormer rows, which are run on their own)",
    )
    parser.add_argument(
        "--classes", type=int, choices=[19, 16], default=19,
        help="the table's classes (16: SYNTHIA's, with mIoU16 and mIoU13)",
    )  # fmt: skip
    parser.add_argument("--runs", type=Path, default=Path("runs/table"), help="run folders")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/synthetic_table.md"),
                        help="the markdown table; its data (every run's results) beside it as "
                        ".json")  # fmt: skip
    parser.add_argument(
        "--readme", type=Path, nargs="*", metavar="FILE",
        help="also rewrite the table's generated blocks in these files (none given: its docs "
        "page, and the README's summary for the main table)",
    )  # fmt: skip
    parser.add_argument(
        "--from-json", action="store_true",
        help="train nothing: make the table (and --readme) from --out's .json",
    )  # fmt: skip
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    add_debug_flag(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    take_overrides(parser, args, "seeds", int, "integers")
    take_overrides(parser, args, "setups", choices=list(SETUPS))
    data_path = args.out.with_suffix(".json")
    if args.from_json:
        if not data_path.is_file():
            raise UsageError(f"--from-json: no {data_path} to make the table from (--out "
                             f"{args.out}; a run without --from-json writes it)")  # fmt: skip
        data = json.loads(data_path.read_text())
    else:
        start = time.perf_counter()
        rows = {SETUPS[s].label: run_setup(s, args.seeds, args.runs, args.overrides)
                for s in args.setups}  # fmt: skip
        command = command_line(["-m", "benchmarks.synthetic_table"], argv)
        data = table_data(rows, args.seeds, args.classes, command)
        write_json(data_path, data)
        print(f"{(time.perf_counter() - start) / 60:.1f} min this call")
    flags = staleness(data)
    table = markdown(data, flags)
    args.out.write_text(table + "\n")
    print(table)
    for flag in flags:
        print(f"warning: stale runs: {flag}", file=sys.stderr)
    if args.readme is not None:
        name = args.out.stem.replace("_", "-")
        paths = args.readme or [ROOT / page for page in PAGES.get(name, ())]
        print("\n".join(write_blocks(data, name, paths)))
    print(f"written to {args.out} and {data_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
