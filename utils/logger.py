"""Run logging: console via ``logging``, a JSON-lines metrics file and TensorBoard."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from utils.files import atomic_write

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FILE_ONLY = "file_only"  # ``extra={FILE_ONLY: True}``: a record for the log file alone


def setup_logging(log_file: str | Path | None = None, level: int = logging.INFO) -> None:
    """Console logging (and a log file in the run folder when given). A record logged with
    ``extra={FILE_ONLY: True}`` (an error the console reports its own way) goes to the file
    only."""
    console = logging.StreamHandler(sys.stdout)
    console.addFilter(lambda record: not getattr(record, FILE_ONLY, False))
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=level, format=LOG_FORMAT, datefmt="%H:%M:%S", handlers=handlers, force=True
    )


class MetricWriter:
    """Scalars to ``metrics.jsonl`` (one JSON object per line) and TensorBoard; images to
    TensorBoard. Files stay open for the run (no reopening every step)."""

    def __init__(self, run_dir: str | Path, purge_after: int = 0) -> None:
        """``purge_after``: a run resumed at that step drops what was logged past it (both
        files), so its logs read as one run."""
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        jsonl = self.run_dir / "metrics.jsonl"
        if purge_after and jsonl.is_file():
            kept = [line for line in jsonl.read_text().splitlines()
                    if line and json.loads(line)["step"] <= purge_after]  # fmt: skip
            atomic_write(jsonl, lambda f: f.write("".join(f"{line}\n" for line in kept).encode()))
        self._jsonl = jsonl.open("a")
        self._tb = SummaryWriter(
            log_dir=str(self.run_dir / "tensorboard"),
            purge_step=purge_after + 1 if purge_after else None,
        )

    def scalars(self, step: int, values: dict[str, float], prefix: str = "") -> None:
        record = {"step": step, **{f"{prefix}{k}": v for k, v in values.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for key, value in values.items():
            self._tb.add_scalar(f"{prefix}{key}", value, step)

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """``image``: 3 x H x W uint8."""
        self._tb.add_image(tag, image, step)

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        """A histogram of ``values`` (any shape) in TensorBoard."""
        self._tb.add_histogram(tag, values.detach().float().flatten().cpu(), step)

    def text(self, tag: str, text: str, step: int) -> None:
        self._tb.add_text(tag, text, step)

    def close(self) -> None:
        self._jsonl.close()
        self._tb.close()


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))
