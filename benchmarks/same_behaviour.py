"""Does a change keep the behaviour? Deterministic CPU runs of two commits, compared bit for bit.

A refactor must change no behaviour. This runs the same short, deterministic work on the
checked-out tree and on another commit (in a temporary git worktree), and compares everything
it wrote:

- every demo setup for 24 steps on the CPU, one thread, no loader workers, logging every step,
  with image grids, an evaluation and a checkpoint every 12 steps (Source only, Norm only, CLAN,
  CLAN + Norm, the released protocol's Norm only and CLAN + Norm, CLAN + Norm in bf16, Norm only
  from the SYNTHIA-layout source, MaxSquare's source stage and, from it, MaxSquare, + IW and
  + IW + Multi, each with and without Norm, DACS and DACS + Norm), and a CLAN + Norm run resumed
  from its step-12 checkpoint;
- ``evaluate_cityscapes.py`` (flip, ``--save-dir``, panels; a sweep with a comparison panel;
  ``--pred-dir``; 19, 16 and 13 classes with ``--mask-absent``), ``ensemble.py`` (flip, PNGs,
  panels), ``predict.py`` and ``analyze_features.py``;
- ``python -m dataset.synthetic`` (the generator's bytes);
- and the other commit's checkpoints read by this tree: its ``last.pth`` evaluated, its
  step-12 checkpoint resumed.

Compared: every logged value (``metrics.jsonl``, TensorBoard scalars, images, histograms and
text), every results JSON, every checkpoint tensor and optimizer state, every PNG's bytes and
every printed table; not compared: wall-clock times, provenance and the log lines' wording.

    python -m benchmarks.same_behaviour --against 2082e7c          # about 10 minutes
    python -m benchmarks.same_behaviour --against HEAD~1 --keep /tmp/behaviour

Exits 0 when everything is identical, 1 with a line per difference otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from utils.errors import UsageError, add_debug_flag, run
from utils.setups import SETUPS

ROOT = Path(__file__).resolve().parent.parent
DETERMINISTIC = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
SHORT = ["train.max_steps=24", "train.device=cpu", "data.num_workers=0", "eval.num_workers=0",
         "train.log_every=1", "train.image_every=12", "train.save_every=12",
         "train.eval_every=12"]  # fmt: skip
# run name -> training script, config, extra overrides ({runs}: the runs folder): every variant
# of the table of setups with a demo config (a later stage from its first stage's last.pth),
# then the released protocol, bf16 and the SYNTHIA-layout source
RUNS = {
    **{Path(v.demo).stem: (s.script, v.demo, [f"model.init_from={{runs}}/{Path(v.start).stem}"
                                              "/checkpoints/last.pth"] if v.start else [])
       for s in SETUPS for v in s.variants if v.demo},
    "released_norm_only": ("train_norm_only.py", "configs/demo/released/norm_only.yaml", []),
    "released_clan_norm": ("train_clan_norm.py", "configs/demo/released/clan_norm.yaml", []),
    "clan_norm_bf16": ("train_clan_norm.py", "configs/demo/clan_norm.yaml",
                       ["train.amp=bf16", "train.max_steps=6", "train.save_every=3",
                        "train.image_every=3", "train.eval_every=0"]),
    "synthia_norm_only": ("train_norm_only.py", "configs/demo/synthia/norm_only.yaml",
                          ["train.max_steps=12"]),
}  # fmt: skip
NOT_COMPARED = {"provenance", "sec_per_step", "train/sec_per_step", "date"}


def plan(out: Path) -> list[tuple[str, list[str]]]:
    """(name, command) of everything run in one tree, writing under ``out``."""
    runs, ck = out / "runs", out / "runs" / "clan_norm" / "checkpoints"
    ev = ["eval.num_workers=0"]
    steps = [(f"train_{name}", [script, "--config", cfg, *SHORT, f"train.out_dir={runs}",
                                f"train.run_name={name}", *(e.format(runs=runs) for e in extra)])
             for name, (script, cfg, extra) in RUNS.items()]  # fmt: skip
    return [
        ("generate", ["-m", "dataset.synthetic", "--out", str(out / "generated"), "--seed", "3",
                      "--num-train", "6", "--num-val", "4", "--num-synthia", "3"]),
        *steps,
        ("resume", ["train_clan_norm.py", "--resume", str(out / "resumed" / "checkpoints" /
                                                           "step_000012.pth")]),
        ("evaluate", ["evaluate_cityscapes.py", "--restore", str(ck / "last.pth"), "--flip",
                      "--save-dir", str(out / "eval_save"), "--panels", "2", *ev]),
        ("sweep", ["evaluate_cityscapes.py", "--restore", str(ck / "step_000012.pth"),
                   str(ck / "step_000024.pth"), "--results", str(out / "sweep.json"), "--panels",
                   "1", "--panels-dir", str(out / "sweep_panels"), *ev]),
        ("pred_dir", ["evaluate_cityscapes.py", "--pred-dir", str(out / "eval_save"), "--results",
                      str(out / "pred_dir.json"), "data.val.root=data/synthetic/Cityscapes", *ev]),
        ("classes", ["evaluate_cityscapes.py", "--restore",
                     str(runs / "synthia_norm_only" / "checkpoints" / "last.pth"), "--classes",
                     "19", "16", "13", "--mask-absent", "--results", str(out / "classes.json"),
                     *ev]),
        ("ensemble", ["ensemble.py", "--restore", str(runs / "norm_only" / "checkpoints" /
                                                      "last.pth"), str(ck / "last.pth"),
                      "--weights", "0.7", "0.3", "--flip", "--save-dir", str(out / "ens_save"),
                      "--panels", "1", "--", *ev]),
        ("predict", ["predict.py", "--restore", str(ck / "last.pth"), "--input",
                     str(out / "photos"), "--out", str(out / "predict"), "--flip", "--device",
                     "cpu"]),
        ("analyze", ["analyze_features.py", "--restore", str(runs / "source_only" / "checkpoints"
                                                              / "last.pth"), str(ck / "last.pth"),
                     "--out", str(out / "analysis"), "--images", "3", "--pixels-per-domain",
                     "150", *ev]),
    ]  # fmt: skip


def run_tree(tree: Path, out: Path, other: Path | None = None) -> None:
    """Everything of ``plan`` in ``tree``, writing under ``out``; with ``other`` (the other
    tree's output), also this tree's reading of the other's checkpoints."""
    out.mkdir(parents=True)
    env = {**os.environ, **DETERMINISTIC}
    for name, command in plan(out):
        if name == "resume":  # the step-12 checkpoint, resumed in a copy of its run folder
            _copy_run(out / "runs" / "clan_norm", out / "resumed")
        if name == "predict":  # a few val images as the user's own photos, one in a sub-folder
            photos = sorted((tree / "data" / "synthetic" / "Cityscapes" / "leftImg8bit" / "val")
                            .rglob("*.png"))[:3]  # fmt: skip
            (out / "photos" / "sub").mkdir(parents=True)
            for i, photo in enumerate(photos):
                shutil.copy(photo, out / "photos" / ("sub" if i else "") / photo.name)
        _run(tree, out, name, command, env)
    if other is not None:
        ck = other / "runs" / "clan_norm" / "checkpoints" / "last.pth"
        _run(tree, out, "old_evaluate", ["evaluate_cityscapes.py", "--restore", str(ck),
                                         "--results", str(out / "old_evaluate.json"),
                                         "eval.num_workers=0"], env)  # fmt: skip
        _copy_run(other / "runs" / "clan_norm", out / "old_resumed")
        resume = out / "old_resumed" / "checkpoints" / "step_000012.pth"
        _run(tree, out, "old_resume", ["train_clan_norm.py", "--resume", str(resume)], env)


def _copy_run(run: Path, to: Path) -> None:
    shutil.copytree(run, to)
    for name in ("last.pth", "step_000024.pth"):
        (to / "checkpoints" / name).unlink()


def _run(tree: Path, out: Path, name: str, command: list[str], env: dict[str, str]) -> None:
    with (out / f"{name}.stdout").open("w") as stdout, (out / f"{name}.stderr").open("w") as err:
        done = subprocess.run([sys.executable, *command], cwd=tree, stdout=stdout, stderr=err,
                              env=env)  # fmt: skip
    if done.returncode:
        raise SystemExit(f"{tree}: {name} failed (exit {done.returncode}); see {out}/{name}.stderr")


@dataclasses.dataclass
class Comparison:
    """Two output trees, ``a`` and ``b``, with their own paths masked in every text."""

    a: Path
    b: Path

    def masked(self, obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: self.masked(v) for k, v in obj.items() if k not in NOT_COMPARED}
        if isinstance(obj, (list, tuple)):
            return [self.masked(v) for v in obj]
        if isinstance(obj, str):
            return obj.replace(str(self.a), "<OUT>").replace(str(self.b), "<OUT>")
        return obj

    def files(self, pa: Path, pb: Path, label: str) -> list[str]:
        """The differences between two files of the same name."""
        if pa.name.startswith("events.out.tfevents"):
            return same(self.masked(_events(pa)), self.masked(_events(pb)), label)
        if pa.suffix in (".json", ".jsonl"):
            return same(self.masked(_json(pa)), self.masked(_json(pb)), label)
        if pa.suffix == ".pth":
            import torch

            load = lambda p: torch.load(p, map_location="cpu", weights_only=True)  # noqa: E731
            return same(self.masked(load(pa)), self.masked(load(pb)), label)
        if pa.suffix in (".stdout", ".yaml"):
            a, b = (self.masked(_printed(p)) for p in (pa, pb))
            return [] if a == b else [f"{label}: the printed text differs"]
        return [] if pa.read_bytes() == pb.read_bytes() else [f"{label}: the bytes differ"]

    def trees(self) -> list[str]:
        """Every difference between the two output trees (the other tree's checkpoints, read by
        ``b``, against ``b``'s own: ``old_*``)."""
        fa, fb = _listing(self.a), _listing(self.b)
        old = {k: fb.pop(k) for k in list(fb) if k.startswith(("old_", "runs/old_"))}
        out = [f"only in {'the other commit' if k in fa else 'this tree'}: {k}"
               for k in sorted(set(fa) ^ set(fb))]  # fmt: skip
        out += [d for k in sorted(set(fa) & set(fb)) for d in self.files(fa[k], fb[k], k)]
        for k, p in sorted(old.items()):
            own = fb.get(k.replace("old_resumed/", "resumed/"))
            if k.startswith("old_resumed/") and own is not None:
                out += [f"old checkpoint: {d}" for d in self.files(own, p, k)]
        if "old_evaluate.json" in old:
            trained = self.masked(_json(fa["runs/clan_norm/results.json"]))
            scored = self.masked(_json(old["old_evaluate.json"]))
            if (trained["mIoU"], trained["iou"]) != (scored["mIoU"], list(scored["iou"].values())):
                out.append("old checkpoint: its evaluation differs from its run's results.json")
        return out


def same(a: Any, b: Any, where: str) -> list[str]:
    """The places where two nested values differ (tensors compared exactly, NaN equal NaN)."""
    import torch

    if torch.is_tensor(a) and torch.is_tensor(b):
        if (a.dtype, a.shape) != (b.dtype, b.shape):
            return [f"{where}: {a.dtype}{list(a.shape)} against {b.dtype}{list(b.shape)}"]
        if a.is_floating_point():  # NaN where the other has NaN counts as equal
            equal = torch.equal(a.isnan(), b.isnan()) and torch.equal(
                a.nan_to_num(), b.nan_to_num()
            )
        else:
            equal = torch.equal(a, b)
        return [] if equal else [f"{where}: the tensors differ"]
    if isinstance(a, dict) and isinstance(b, dict):
        keys = [f"{where}: keys {sorted(set(a) ^ set(b), key=str)}"] if set(a) != set(b) else []
        return keys + [d for k in a if k in b for d in same(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items against {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in same(x, y, f"{where}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if a == b else [f"{where}: {a!r:.80} against {b!r:.80}"]


def _listing(root: Path) -> dict[str, Path]:
    """Files by path below ``root``; TensorBoard event files (named by time and host) by their
    folder and order."""
    files: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix in (".stderr", ".log"):
            continue
        key = str(path.relative_to(root))
        if path.name.startswith("events.out.tfevents"):
            folder = str(path.parent.relative_to(root))
            key = f"{folder}/events{sum(k.startswith(folder + '/events') for k in files)}"
        files[key] = path
    return files


def _json(path: Path) -> Any:
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


_LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING|ERROR) ")
_DURATION = re.compile(r"\b\d+(\.\d+)? (s|min)\b")


def _printed(path: Path) -> str:
    """What a command printed, less its log lines (times, and wording a refactor may change)
    and with its durations masked."""
    lines = [line for line in path.read_text().splitlines() if not _LOG_LINE.match(line)]
    return _DURATION.sub("<duration>", "\n".join(lines))


def _events(path: Path) -> dict[str, list[Any]]:
    """Every TensorBoard record of an event file, without its wall time."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0,
                                                     "histograms": 0, "tensors": 0})  # fmt: skip
    acc.Reload()
    out: dict[str, list[Any]] = {}
    for kind, read in (("scalars", acc.Scalars), ("images", acc.Images),
                       ("histograms", acc.Histograms), ("tensors", acc.Tensors)):  # fmt: skip
        for tag in acc.Tags().get(kind, []):
            if "sec_per_step" in tag:
                continue
            out[f"{kind}/{tag}"] = [_record(e) for e in read(tag)]
    return out


def _record(event: Any) -> list[Any]:
    fields = dataclasses.asdict(event) if dataclasses.is_dataclass(event) else event._asdict()
    fields.pop("wall_time", None)
    return [v.SerializeToString() if hasattr(v, "SerializeToString") else str(v)
            for v in fields.values()]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--against", required=True, metavar="REV", help="the commit to match")
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="keep both trees' outputs here (default: none)"
    )
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    rev = ["git", "rev-parse", "--verify", "--quiet", f"{args.against}^{{commit}}"]
    known = subprocess.run(rev, cwd=ROOT, capture_output=True)
    if known.returncode != 0:
        raise UsageError(f"--against {args.against}: not a commit of this repository")
    work = Path(tempfile.mkdtemp(prefix="same_behaviour-"))
    out = args.keep or work
    other = work / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(other), args.against], cwd=ROOT,
                   check=True, capture_output=True)  # fmt: skip
    try:
        print(f"running {args.against} in {other}, then this tree; outputs in {out}")
        run_tree(other, out / "other")
        run_tree(ROOT, out / "this", other=out / "other")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=ROOT,
                       capture_output=True)  # fmt: skip
    differences = Comparison(out / "other", out / "this").trees()
    for line in differences:
        print(f"differs: {line}")
    compared = len(_listing(out / "this"))
    print(f"{compared} files compared: " + (f"{len(differences)} differences" if differences
                                            else f"identical to {args.against}"))  # fmt: skip
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(run(main))
