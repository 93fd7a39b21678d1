"""The training scripts' command line: ``--config`` or ``--resume`` and overrides, the run
folder, and the boundary that turns bad input into one-line errors (single process or
torchrun)."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from dataset.labels import NUM_CLASSES
from utils.checkpoint import check_same_stream, resume_checkpoint
from utils.config import (
    Config,
    ConfigError,
    config_from_dict,
    configs_writing,
    dump_yaml,
    load_config,
)
from utils.distributed import broadcast_object, cleanup, describe, init_distributed
from utils.errors import OutputExistsError, UserError, add_debug_flag
from utils.evaluation.reports import miou_lines
from utils.logger import FILE_ONLY, setup_logging
from utils.provenance import command_line
from utils.training.loop import Interrupted, train
from utils.training.state import BuildFn, StepFn

log = logging.getLogger("train")


def parse_args(description: str, argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="experiment YAML (merged onto configs/defaults.yaml)")
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR_OR_CKPT",
        help="continue a run from its checkpoints/last.pth (or from the given checkpoint)",
    )
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.config is None and args.resume is None:
        parser.error("one of --config or --resume is required")
    if args.config is not None and args.resume is not None:
        parser.error(
            "--config with --resume: a resumed run continues with the config its checkpoint "
            "holds; give key.sub=value overrides to change it, or --config alone for a new run"
        )
    return args


def _new_run_dir(cfg: Config, config_path: str) -> Path:
    name = cfg.train.run_name or f"{Path(config_path).stem}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(cfg.train.out_dir) / name
    if run_dir.exists():
        if (run_dir / "checkpoints" / "last.pth").is_file():
            hint = f"continue it with --resume {run_dir} (when no run is training in it)"
        else:  # a run still before its first save, or one that stopped there: it cannot tell
            hint = "it holds no checkpoint yet: remove it when no run is training in it"
        raise OutputExistsError(
            f"run folder {run_dir} already exists: {hint}, or choose another train.run_name"
        )
    (run_dir / "checkpoints").mkdir(parents=True)
    return run_dir


def _remove_unstarted_run(run_dir: Path) -> None:
    """Delete a run folder this invocation created when bad input stopped it before its first
    checkpoint: nothing the user had is touched, and the same run_name can be used again."""
    if any((run_dir / "checkpoints").glob("*.pth")):
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            handler.close()
            root.removeHandler(handler)
    shutil.rmtree(run_dir, ignore_errors=True)


def _config(args: argparse.Namespace, setup: str) -> tuple[Config, dict | None, Path | None]:
    """The run's config (``--config`` with the overrides, or the resumed checkpoint's with
    them), the checkpoint and its path; every check of the config runs here, before any file
    is written."""
    checkpoint, path = None, None
    if args.resume:
        path, checkpoint = resume_checkpoint(args.resume, setup)
        cfg = config_from_dict(checkpoint["config"], args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
        _check_init_from(cfg.model.init_from)
    if cfg.model.num_classes != NUM_CLASSES:
        raise ConfigError(
            f"model.num_classes={cfg.model.num_classes}: training labels are the "
            f"{NUM_CLASSES} Cityscapes trainIds (SYNTHIA's too, as CLAN trains them), so G "
            f"needs {NUM_CLASSES} outputs; 16- and 13-output models can be evaluated, not trained"
        )
    return cfg, checkpoint, path


def _check_init_from(init_from: str) -> None:
    """A new run's initial weights exist, before its folder is made; a missing file that a
    shipped config's run writes (MaxSquare's source stage) names that config."""
    if not init_from or Path(init_from).is_file():
        return
    writers = configs_writing(init_from)
    hint = (
        f"it is the checkpoint of a run of {' or '.join(map(str, writers))}: train that first"
        if writers
        else "point it at a weights file (docs/data.md lists the initial weights)"
    )
    raise ConfigError(f"model.init_from={init_from}: no such file; {hint}")


def main(
    description: str,
    setup: str,
    build: BuildFn,
    train_step: StepFn,
    argv: Sequence[str] | None = None,
    check: Callable[[Config], None] | None = None,
) -> int:
    """Command-line entry shared by the training scripts (single process or torchrun).
    ``check(cfg)`` raises a ``ConfigError`` for combinations the setup cannot train; it runs,
    with every other check of the config, before the run folder is written."""
    args = parse_args(description, argv)
    cfg, checkpoint, path = _config(args, setup)
    if check is not None:
        check(cfg)
    info, device = init_distributed(cfg.train.device)
    try:
        if checkpoint is None:
            run_dir = _new_run_dir(cfg, args.config) if info.is_main else None
            run_dir = broadcast_object(run_dir, info)
            if info.is_main:
                dump_yaml(cfg, run_dir / "config.yaml")
        else:
            check_same_stream(checkpoint, cfg.data.batch_size, info.world_size, path)
            run_dir = path.parent.parent
        setup_logging(run_dir / "train.log" if info.is_main else None,
                      logging.INFO if info.is_main else logging.WARNING)  # fmt: skip
        log.info("run folder: %s; %s", run_dir, describe(info, device))
        try:
            command = command_line(Path(sys.modules[build.__module__].__file__ or setup).name, argv)
            mious = train(cfg, setup, build, train_step, run_dir, checkpoint,
                         str(args.resume or ""), info, device, command)  # fmt: skip
        except Interrupted as stop:
            log.warning("%s; continue with --resume %s", stop, run_dir)
            return 128 + stop.signum
        except UserError as err:
            if checkpoint is None and info.is_main:
                _remove_unstarted_run(run_dir)
            log.error("stopped: %s", err, extra={FILE_ONLY: True})  # the console prints it
            raise
        except Exception:
            log.exception("stopped by an error", extra={FILE_ONLY: True})
            raise
    finally:
        cleanup()
    if info.is_main:
        print("\n".join(miou_lines(mious)) if mious else "not evaluated (data.val.dataset=none)")
    return 0
