"""Run many short command lines of the repository's scripts as separate processes, without
paying Python's and torch's start-up for each.

A server process imports torch and the scripts once, then forks one child per command line
(at most ``workers`` at a time). Each child becomes the command: ``sys.argv`` is set, the script
(or ``-m`` module) runs as ``__main__``, and the interpreter exits as it would after
``python <argv>`` (uncaught exceptions print their traceback and exit 1, ``SystemExit`` sets the
code, atexit handlers and stream flushes run). Its stderr is captured to a file.

The server computes nothing with torch before forking, so no thread pool is copied into the
children. Used by the bad-input tests, whose cases mostly stop within a second of starting.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRELOAD = ("torch", "numpy", "PIL.Image", "yaml", "train_norm_only", "train_clan_norm",
           "evaluate_cityscapes", "ensemble", "predict", "analyze_features")  # fmt: skip


def run_all(
    jobs: list[dict], workers: int = 3, timeout: float = 300, preload: tuple[str, ...] = PRELOAD
) -> list[dict]:
    """Run ``jobs`` (each ``{"argv": [...], "stderr": path, "limit_file_size": bool}``) and
    return ``{"code": exit code}`` for each, in order. A child still running after ``timeout``
    seconds is killed (code -9). ``preload`` names the modules the server imports first."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__)), str(workers), str(timeout), *preload],
        input=json.dumps(jobs), capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"fork server failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def limit_file_size() -> None:
    """A file over 200 kB can no longer be written: a full disk, as far as a checkpoint goes."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


def _become(job: dict) -> None:
    """In the child: redirect the streams and run the command line as ``python`` would."""
    import runpy

    null = os.open(os.devnull, os.O_RDWR)
    err = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(err, 2)
    if job.get("limit_file_size"):
        limit_file_size()
    argv = job["argv"]
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        runpy.run_path(str(ROOT / argv[0]), run_name="__main__")
    sys.exit(0)


def _serve(jobs: list[dict], workers: int, timeout: float) -> tuple[list[dict] | None, int]:
    """Fork the jobs. In the server, returns their codes (and -1); in a child, returns None
    and the index of the job it is to run."""
    codes: dict[int, int] = {}
    running: dict[int, tuple[int, float]] = {}  # pid -> (job index, start time)
    pending = list(range(len(jobs)))
    while pending or running:
        while pending and len(running) < workers:
            index = pending.pop(0)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                return None, index
            running[pid] = (index, time.monotonic())
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            for child, (_, start) in running.items():
                if time.monotonic() - start > timeout:
                    os.kill(child, signal.SIGKILL)
            time.sleep(0.02)
            continue
        index, _ = running.pop(pid)
        codes[index] = os.waitstatus_to_exitcode(status)
    return [{"code": codes[i]} for i in range(len(jobs))], -1


if __name__ == "__main__":
    sys.path[0] = str(ROOT)  # as for `python script.py` run from the repository root
    import importlib

    for name in sys.argv[3:]:
        importlib.import_module(name)
    all_jobs = json.loads(sys.stdin.read())
    results, mine = _serve(all_jobs, int(sys.argv[1]), float(sys.argv[2]))
    if results is None:
        _become(all_jobs[mine])  # the child: never returns
    print(json.dumps(results))
