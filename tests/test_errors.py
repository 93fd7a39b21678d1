"""The error boundary and the config schema's errors (the resume and logging fixes of the
audit are the loop's: test_loop.py)."""

from __future__ import annotations

import errno

import pytest

import train_norm_only
from utils.config import AMP_CHOICES, ConfigError, load_config
from utils.errors import UserError, run
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


def test_training_a_model_of_other_than_19_outputs_is_refused(tmp_path):
    import train_norm_only
    from utils.config import ConfigError

    with pytest.raises(ConfigError, match="model.num_classes=16: training labels are the 19"):
        train_norm_only.main(["--config", "configs/demo/norm_only.yaml", "model.num_classes=16",
                              f"train.out_dir={tmp_path}"])  # fmt: skip
    assert not any(tmp_path.iterdir())  # refused before the run folder was made
