"""Where a result came from: stamped on every result file the repository writes.

``provenance()`` gives the git commit (and whether tracked files differed from it), the
versions of torch, torchvision, CUDA and cuDNN, the device, the command line, the resolved
config's hash (the config itself sits in the run folder, or in the file) and the date. JSON
results carry it under ``"provenance"``; markdown tables end with ``footer()``, one line of the
same facts. ``stale()`` says whether code a result depends on changed after its commit.
``refuse_other_settings()`` keeps a results file that holds another evaluation's record.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from utils.errors import OutputExistsError
from utils.logger import write_json
from utils.setups import scripts

ROOT = Path(__file__).resolve().parent.parent
# The settings of a results record that name files (``recorded_settings``): compared as absolute
# paths, so that ./a.pth and a.pth are the same file.
FILE_SETTINGS = ("checkpoint", "pred_dir", "snapshots", "members")
# What a training or evaluation result depends on: a commit touching these after a result's
# own commit makes the result stale (``stale``).
CODE_PATHS = (*scripts(), "evaluate_cityscapes.py", "ensemble.py", "model", "dataset", "utils",
              "configs")  # fmt: skip


def _git(*args: str) -> str | None:
    """``git args`` in the repository's folder; None where git or the repository is missing."""
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> tuple[str | None, bool | None]:
    """The checked-out commit, and whether tracked files differ from it (untracked files, such
    as run folders, do not count); (None, None) outside a git checkout."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit, None if status is None else bool(status)


def device_name(device: torch.device | str | None) -> str:
    if device is None:
        return "unknown"
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"CPU ({torch.get_num_threads()} threads)"
    return str(device)


def command_line(script: str | Sequence[str], argv: Sequence[str] | None) -> str:
    """The command as typed: ``python SCRIPT ARGS`` (``script`` a file name, or a list such as
    ``["-m", "benchmarks.speed"]``; ``argv`` None: this process's own arguments)."""
    args = sys.argv[1:] if argv is None else list(argv)
    head = [script] if isinstance(script, str) else list(script)
    return shlex.join(["python", *head, *args])


def config_hash(config: dict[str, Any] | None) -> str | None:
    """sha256 of the resolved config as canonical JSON (first 16 hex digits)."""
    if config is None:
        return None
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def provenance(
    command: str, config: dict[str, Any] | None = None, device: torch.device | str | None = None
) -> dict[str, Any]:
    """The facts a result file carries (module docstring)."""
    commit, dirty = git_state()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "commit": commit,
        "dirty": dirty,
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),  # (the package's metadata: no slow import)
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "device": device_name(device),
        "command": command,
        "config_sha256": config_hash(config),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_results(
    path: str | Path,
    fields: dict[str, Any],
    command: str,
    config: dict[str, Any],
    device: torch.device | str | None,
    *,
    with_config: bool = True,
    protocol: dict[str, Any] | None = None,
) -> None:
    """The one writer of results JSON files: ``fields``, the evaluation ``protocol`` a score
    was measured with (when given: ``utils.evaluation.reports.Protocol.fields``, under
    ``"protocol"``), the resolved ``config`` (unless ``with_config=False``: a run's
    ``results.json``, whose config is the run folder's ``config.yaml``), then the provenance;
    written atomically, its folder created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**fields, **({"protocol": protocol} if protocol is not None else {}),
              **({"config": config} if with_config else {})}  # fmt: skip
    write_json(path, {**record, "provenance": provenance(command, config, device)})


def recorded_settings(record: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a results record was measured with, by name: the files scored
    (``checkpoint``, ``pred_dir``, a sweep's ``snapshots``, an ensemble's ``members``), an
    ensemble's ``weights`` and ``combine``, and from its config the evaluation protocol
    (``eval.label_size``, ``classes``, ``subset_protocol``, ``flip``, ``mask_absent``, ``model``;
    ``model.preset``) and the val set (``data.val.*``). Predictions on disk (``pred_dir``) had
    no model: no flip, mask, preset or scored model. A setting the record lacks is None."""
    config = record.get("config") or {}
    members = record.get("members") or []
    settings = {
        "checkpoint": record.get("restore"),
        "pred_dir": record.get("pred_dir"),
        "snapshots": [s.get("restore") for s in record.get("snapshots") or []] or None,
        "members": [m.get("restore") for m in members] or None,
        "weights": [m.get("weight") for m in members] or None,
        "combine": record.get("combine"),
    }
    of_model = record.get("pred_dir") is None
    keys = ["label_size", "classes", "subset_protocol"]
    keys += ["flip", "mask_absent", "model"] if of_model else []
    settings.update({f"eval.{k}": (config.get("eval") or {}).get(k) for k in keys})
    if of_model:
        settings["model.preset"] = (config.get("model") or {}).get("preset")
    val = (config.get("data") or {}).get("val") or {}
    settings.update({f"data.val.{k}": v for k, v in val.items()})
    return settings


def refuse_other_settings(path: str | Path, record: Mapping[str, Any]) -> None:
    """Before any work, unless ``--overwrite``: refuse to replace the results file ``path`` when
    it is not a results JSON of this repository, or when its record was measured with other
    settings (``recorded_settings``) than ``record``, what this run will write (its fields and
    config). A setting only one side has (a model's flip, beside predictions on disk) is not
    compared: the files scored differ already. The same settings: the run refreshes its own
    record."""
    path = Path(path)
    if not path.exists():
        return
    ways_out = "pass --overwrite to replace it, or --results FILE to write this one elsewhere"
    if path.is_dir():
        raise OutputExistsError(f"results file {path} is a folder: give --results FILE")
    try:
        existing = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise OutputExistsError(f"results file {path} exists and is not JSON: {ways_out}") from None
    if not isinstance(existing, dict) or "provenance" not in existing:
        raise OutputExistsError(
            f"results file {path} exists and is not a results file of this repository: {ways_out}"
        )
    there = recorded_settings(existing)
    now = recorded_settings(json.loads(json.dumps(record)))  # as the file will hold it
    differ = [
        f"{name}: {_shown(there[name])} there, {_shown(now[name])} now"
        for name in now
        if name in there and _comparable(name, there[name]) != _comparable(name, now[name])
    ]
    if differ:
        more = f"; and {len(differ) - 4} more" if len(differ) > 4 else ""
        raise OutputExistsError(
            f"results file {path} holds the results of other settings ({'; '.join(differ[:4])}"
            f"{more}): {ways_out}"
        )


def _comparable(name: str, value: Any) -> Any:
    """A setting as compared: the files of ``FILE_SETTINGS`` as absolute paths."""
    if name not in FILE_SETTINGS or value is None:
        return value
    if isinstance(value, list):
        return [os.path.abspath(str(v)) for v in value]
    return os.path.abspath(str(value))


def _shown(value: Any) -> str:
    """A setting in a message: JSON's words for booleans, "none" for None, lists in brackets."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return f"[{', '.join(_shown(v) for v in value)}]"
    return str(value)


def short_commit(p: dict[str, Any]) -> str:
    """``provenance()``'s commit, short, marked when tracked files differed from it."""
    commit = (p.get("commit") or "unknown")[:10]
    return commit + (" (uncommitted changes)" if p.get("dirty") else "")


def footer(p: dict[str, Any]) -> str:
    """One markdown line with the facts of ``provenance()``."""
    commit = short_commit(p)
    return (
        f"<sub>Provenance: commit {commit}; {p.get('date')}; torch {p.get('torch')}, "
        f"torchvision {p.get('torchvision')}, CUDA {p.get('cuda')}, cuDNN {p.get('cudnn')}; "
        f"{p.get('device')}; `{p.get('command')}`"
        + (f"; config sha256 {p['config_sha256']}" if p.get("config_sha256") else "")
        + "</sub>"
    )


def changes_since(commit: str | None, paths: Sequence[str] = CODE_PATHS) -> list[str] | None:
    """The commits after ``commit`` that touch ``paths`` (short hashes, newest first); None when
    it cannot be told (no git, an unknown commit)."""
    if not commit or _git("cat-file", "-e", f"{commit}^{{commit}}") is None:
        return None
    out = _git("log", "--format=%h", f"{commit}..HEAD", "--", *paths)
    return None if out is None else out.split()


def stale(p: dict[str, Any], paths: Sequence[str] = CODE_PATHS) -> str | None:
    """Why a result with provenance ``p`` may not be what the checked-out code gives (its tree
    was dirty, or later commits changed ``paths``), or None when it is current."""
    reasons = []
    if p.get("dirty"):
        reasons.append("made with uncommitted changes")
    changes = changes_since(p.get("commit"), paths)
    if not p.get("commit"):
        reasons.append("no commit recorded (made before provenance was stamped, or outside git)")
    elif changes is None:
        reasons.append(f"its commit {p.get('commit')} is unknown here")
    elif changes:
        reasons.append(f"the code changed since in {len(changes)} commit(s): {', '.join(changes)}")
    return "; ".join(reasons) or None
