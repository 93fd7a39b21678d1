"""The error boundary, the config schema, and the resume and logging fixes of the audit."""

from __future__ import annotations

import errno
import json

import pytest
import torch

import train_norm_only
from utils.config import AMP_CHOICES, ConfigError, load_config
from utils.errors import UserError, run
from utils.training.loop import _Checkpointer
from utils.training.meters import bar_keys
from utils.training.state import AMP_DTYPES


def test_a_user_error_is_one_line_and_exit_2(capsys):
    def bad(argv):
        raise ConfigError("train.amp: expected one of off, bf16, fp16, got 'fp8'")

    assert run(bad, []) == 2
    assert (
        capsys.readouterr().err == "error: train.amp: expected one of off, bf16, fp16, got 'fp8'\n"
    )
    with pytest.raises(ConfigError):  # --debug: the traceback
        run(bad, ["--debug"])


def test_fta_debug_shows_tracebacks_and_bugs_keep_theirs(monkeypatch):
    def bad(argv):
        raise UserError("x")

    monkeypatch.setenv("FTA_DEBUG", "1")
    with pytest.raises(UserError):
        run(bad, [])

    def bug(argv):
        raise ZeroDivisionError("a bug")

    monkeypatch.delenv("FTA_DEBUG")
    with pytest.raises(ZeroDivisionError):
        run(bug, [])


def test_an_unwritable_output_is_a_user_error_but_other_os_errors_are_bugs(capsys):
    def full(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/a/checkpoints/last.pth")

    assert run(full, []) == 2
    assert capsys.readouterr().err == (
        "error: cannot write /runs/a/checkpoints/last.pth: No space left on device\n"
    )

    def other(argv):
        raise OSError(errno.EBADF, "Bad file descriptor")

    with pytest.raises(OSError):
        run(other, [])


def test_every_invalid_choice_fails_at_load_time_and_names_its_key():
    overrides = ["loss.seg=dice", "train.amp=fp8", "optim.lr_scaling=quadratic",
                 "data.source.dataset=foo", "train.log_every=0", "optim.schedule_steps=0",
                 "data.batch_size=0", "model.preset=deeplab", "train.device=tpu",
                 "optim.momentum=1.5", "model.aspp_branches=3"]  # fmt: skip
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    message = str(info.value)
    for key in ("loss.seg", "train.amp", "optim.lr_scaling", "data.source.dataset",
                "train.log_every", "optim.schedule_steps", "data.batch_size", "model.preset",
                "train.device", "optim.momentum", "model.aspp_branches"):  # fmt: skip
        assert f"\n  {key}: expected" in message, key


def test_choices_live_in_the_schema():
    assert tuple(AMP_DTYPES) == AMP_CHOICES


def test_a_bad_config_writes_nothing(tmp_path, synthetic):
    args = ["--config", "configs/demo/norm_only.yaml", *synthetic, f"train.out_dir={tmp_path}",
            "train.run_name=x", "train.amp=fp8", "train.device=cpu"]  # fmt: skip
    with pytest.raises(ConfigError, match="train.amp"):
        train_norm_only.main(args)
    assert list(tmp_path.iterdir()) == []


def test_a_resumed_run_logs_as_one_run(tmp_path, synthetic):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = ["--config", "configs/demo/norm_only.yaml", *synthetic, "model.layers=[1,1,1,1]",
            "model.base_width=8", "data.source.crop=[96,48]", "data.target.crop=[96,48]",
            "data.val.resize=[128,64]", "data.num_workers=0", "eval.num_workers=0",
            "train.device=cpu", "train.log_every=1", "train.image_every=0",
            "train.max_steps=4", "train.save_every=2", f"train.out_dir={tmp_path}",
            "train.run_name=r"]  # fmt: skip
    assert train_norm_only.main(args) == 0
    run_dir = tmp_path / "r"
    resume = ["--resume", str(run_dir / "checkpoints" / "step_000002.pth"), "train.max_steps=4"]
    assert train_norm_only.main(resume) == 0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss_seg" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if "val/mIoU" in r] == [4]  # the first run's is purged
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss_seg")] == [1, 2, 3, 4]


def test_periodic_checkpoints_are_pruned_by_step(tmp_path):
    keeper = _Checkpointer(tmp_path, keep=2)
    for step in (999_999, 1_000_000, 1_000_001):
        keeper.save({"step": step, "w": torch.zeros(1)}, periodic=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "last.pth", "step_1000000.pth", "step_1000001.pth"
    ]  # fmt: skip


def test_the_progress_bar_shows_what_moves():
    terms = {"loss_seg": 1, "loss_norm_s": 0.0144, "loss_norm_t": 0.0144, "loss_adv": 0.7,
             "feat_norm_s": 20.0, "feat_norm_t": 21.0, "d_acc_s": 0.5, "damping": 1.0}  # fmt: skip
    assert bar_keys(terms) == ["loss_seg", "loss_adv", "feat_norm_s", "feat_norm_t"]


def test_an_existing_run_folder_says_how_to_go_on(tmp_path):
    from utils.errors import OutputExistsError
    from utils.training.cli import _new_run_dir

    cfg = load_config(None, [f"train.out_dir={tmp_path}", "train.run_name=r"])
    (tmp_path / "r" / "checkpoints").mkdir(parents=True)
    # a run still training before its first save looks the same: the message does not guess
    with pytest.raises(OutputExistsError) as refused:
        _new_run_dir(cfg, "x.yaml")
    assert "holds no checkpoint yet: remove it when no run is training in it, or choose" in str(
        refused.value
    ) and "stopped" not in str(refused.value)
    torch.save({}, tmp_path / "r" / "checkpoints" / "last.pth")
    with pytest.raises(OutputExistsError, match=f"continue it with --resume {tmp_path / 'r'}"):
        _new_run_dir(cfg, "x.yaml")


def test_training_a_model_of_other_than_19_outputs_is_refused(tmp_path):
    import train_norm_only
    from utils.config import ConfigError

    with pytest.raises(ConfigError, match="model.num_classes=16: training labels are the 19"):
        train_norm_only.main(["--config", "configs/demo/norm_only.yaml", "model.num_classes=16",
                              f"train.out_dir={tmp_path}"])  # fmt: skip
    assert not any(tmp_path.iterdir())  # refused before the run folder was made
