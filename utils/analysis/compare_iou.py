r"""Per-class IoU of several results files, and their differences against a baseline (the
paper's Fig. 6): a plot and a table.

    python -m utils.analysis.compare_iou --results runs/source_only/results.json \
        runs/norm_only/results.json runs/clan_norm/results.json --out iou.png
    python -m utils.analysis.compare_iou --results runs/a/results.json runs/b/results.json \
        --labels "Norm only" "CLAN + Norm" --baseline "Norm only" --out iou.png
    python -m utils.analysis.compare_iou --results last.pth.results.json \
        --baseline paper:"Only Norm" --out iou.png

Every results JSON of the repository reads: a training run's ``results.json`` and
``evaluate_cityscapes.py``'s (``iou`` per class), an ``ensemble.py`` file (the ensemble's
row) and a snapshot sweep's ``sweep.results.json`` (its final snapshot and the one selected
on val). A row is named by ``--labels`` or by its file (a run's folder for ``results.json``).
``--baseline`` names a row, or ``paper:ROW`` a row of the paper's Table 1 (added to the plot);
by default the first row is the baseline. The table (IoU in percent, then each row minus the
baseline) is printed; the plot goes to ``--out``. The paper's rows are GTA5 -> Cityscapes,
scored on Cityscapes val: a file scored on another val set (the synthetic benchmark, as its
config records it, or a run's ``config.yaml``) gets a line above the table saying that its
difference is not like for like, and the plot's difference panel says so too.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dataset.labels import CLASS_NAMES
from utils.analysis.plots import iou_comparison
from utils.config import read_yaml
from utils.errors import UsageError, UserError, add_debug_flag, refuse_overwrite, run
from utils.evaluation.metrics import format_iou_table
from utils.evaluation.paper_results import paper_row, val_set_note
from utils.evaluation.reports import short_names

PAPER_PREFIX = "paper:"


class ResultsFileError(UserError, ValueError):
    """A results JSON that is missing, unreadable or of an unknown shape."""


def read_results(path: str | Path) -> dict[str, list[float]]:
    """The rows of one results JSON: a row suffix (``""`` for a file with one row) -> 19
    per-class IoUs (fractions, NaN for an absent class), in trainId order."""
    path = Path(path)
    if not path.is_file():
        raise ResultsFileError(f"--results {path}: not a file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ResultsFileError(f"--results {path}: not a JSON file ({err})") from err
    if isinstance(data, dict) and isinstance(data.get("snapshots"), list):  # a sweep
        by_file = {s.get("restore"): s for s in data["snapshots"] if isinstance(s, dict)}
        final, selected = by_file.get(data.get("final")), by_file.get(data.get("selected_on_val"))
        if final is None or selected is None:
            raise ResultsFileError(f"--results {path}: a sweep without its final or selected row")
        if final is selected:
            return {" (final, selected on val)": _ious(final, path)}
        return {" (final)": _ious(final, path), " (selected on val)": _ious(selected, path)}
    if isinstance(data, dict) and "iou" in data:  # a run, an evaluation, an ensemble
        return {"": _ious(data, path)}
    raise ResultsFileError(
        f"--results {path}: expected a results JSON with 'iou' (a run, evaluate_cityscapes.py, "
        f"ensemble.py) or 'snapshots' (a sweep)"
    )


def _ious(entry: dict[str, Any], path: Path) -> list[float]:
    """``entry["iou"]``, a list in trainId order or a dict by class name, as 19 floats."""
    iou = entry.get("iou")
    if isinstance(iou, dict):
        missing = [n for n in CLASS_NAMES if n not in iou]
        if missing:
            raise ResultsFileError(f"--results {path}: 'iou' lacks {', '.join(missing)}")
        iou = [iou[n] for n in CLASS_NAMES]
    if not isinstance(iou, list) or len(iou) != len(CLASS_NAMES):
        raise ResultsFileError(f"--results {path}: 'iou' must hold {len(CLASS_NAMES)} classes")
    if not all(isinstance(v, (int, float)) for v in iou):
        raise ResultsFileError(f"--results {path}: 'iou' values must be numbers")
    return [float(v) for v in iou]


def default_label(path: str | Path) -> str:
    """A run's folder for its ``results.json``, else the file name without ``.json``."""
    path = Path(path)
    if path.name == "results.json" and path.parent.name:
        return path.parent.name
    return path.stem


def collect_rows(
    paths: Sequence[str], labels: Sequence[str] | None = None
) -> dict[str, list[float]]:
    """Every row of every file, named ``<label><suffix>``; the labels are ``labels`` or, by
    default, the files' names (made unique with their folders where needed)."""
    if labels is not None and len(labels) != len(paths):
        raise UsageError(f"--labels: {len(labels)} labels for {len(paths)} results files")
    if labels is None:
        defaults = [default_label(p) for p in paths]
        unique = len(set(defaults)) == len(defaults)
        labels = defaults if unique else [p.removesuffix(".json") for p in short_names(paths)]
    rows: dict[str, list[float]] = {}
    for path, label in zip(paths, labels):
        for suffix, ious in read_results(path).items():
            if label + suffix in rows:
                raise UsageError(f"--labels: two rows are called {label + suffix!r}")
            rows[label + suffix] = ious
    return rows


def add_baseline(rows: dict[str, list[float]], baseline: str | None) -> str:
    """The name of the baseline row: ``baseline`` (``paper:ROW`` adds the paper's row to
    ``rows``), or the first row."""
    if baseline is None:
        return next(iter(rows))
    if baseline.startswith(PAPER_PREFIX):
        name, paper = paper_row(baseline.removeprefix(PAPER_PREFIX), "--baseline")
        label = f"paper: {name}"
        rows[label] = [v / 100 for v in paper.iou]
        return label
    if baseline not in rows:
        raise UsageError(
            f"--baseline {baseline!r}: no such row (rows: {', '.join(map(repr, rows))}; or "
            f"{PAPER_PREFIX}ROW for a row of the paper's Table 1)"
        )
    return baseline


def recorded_data(path: str | Path) -> dict[str, Any] | None:
    """The config ``data`` section a results file was scored with: its own ``config``'s, else,
    for a run's ``results.json``, the run folder's ``config.yaml``'s; None where neither is."""
    path = Path(path)
    record = json.loads(path.read_text())  # read_results has checked that it reads
    config = record.get("config") if isinstance(record, dict) else None
    if config is None and (path.parent / "config.yaml").is_file():
        config = read_yaml(path.parent / "config.yaml")
    data = config.get("data") if isinstance(config, dict) else None
    return data if isinstance(data, dict) else None


def val_set_notes(paths: Sequence[str], baseline: str | None) -> list[str]:
    """With a ``paper:ROW`` baseline, a line for each results file scored on another val set
    than the row's Cityscapes val (``val_set_note``); none for another baseline."""
    if baseline is None or not baseline.startswith(PAPER_PREFIX):
        return []
    name, _ = paper_row(baseline.removeprefix(PAPER_PREFIX))
    notes = []
    for path in paths:
        data = recorded_data(path)
        note = None if data is None else val_set_note(name, data)
        if note is not None:
            notes.append(f"{path}: {note}")
    return notes


def comparison_table(rows: dict[str, list[float]], baseline: str) -> str:
    """Markdown: every row, then every other row minus the baseline."""
    diffs = {
        f"{name} - {baseline}": [a - b for a, b in zip(ious, rows[baseline])]
        for name, ious in rows.items()
        if name != baseline
    }
    return format_iou_table({**rows, **diffs})


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m utils.analysis.compare_iou",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--results",
        nargs="+",
        required=True,
        metavar="JSON",
        help="results files (runs, evaluate_cityscapes.py, sweeps, ensembles)",
    )
    parser.add_argument("--labels", nargs="+", metavar="NAME", help="a row name per file")
    parser.add_argument(
        "--baseline", metavar="ROW", help="a row name, or paper:ROW (default: the first row)"
    )
    parser.add_argument("--out", required=True, metavar="PNG", help="where the plot goes")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_debug_flag(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if not args.overwrite:
        refuse_overwrite(out, "--out")
    rows = collect_rows(args.results, args.labels)
    baseline = add_baseline(rows, args.baseline)
    notes = val_set_notes(args.results, args.baseline)
    print("\n".join([*notes, comparison_table(rows, baseline)]))
    out.parent.mkdir(parents=True, exist_ok=True)
    other_data = "not like for like: scored on another val set than the paper's Cityscapes val"
    iou_comparison(out, rows, baseline, other_data if notes else "")
    print(f"plot written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
