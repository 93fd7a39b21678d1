"""The shared training loop (utils/training/loop.py and its command line, utils/training/cli.py),
whatever the setup: the learning rate of each parameter group, the progress bar, a resumed run
continuing exactly and logging as one run, the resume errors, evaluation during the run,
checkpoint pruning, a non-finite loss stopping the run, SIGTERM saving last.pth, and an existing
run folder. What a setup adds (its step, its own modules' resume) is tested in its own file."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_CPU_TRAIN, metrics_rows, norm_only_run, train_run

import train_clan_norm
import train_norm_only
from utils.checkpoint import CheckpointError, load_checkpoint
from utils.config import ConfigError, load_config, read_yaml
from utils.errors import OutputExistsError
from utils.schedules import poly_lr
from utils.training.cli import _new_run_dir
from utils.training.loop import _Checkpointer, _set_learning_rates
from utils.training.meters import bar_keys

ROOT = Path(__file__).resolve().parent.parent


def _clan_run(tmp_path, synthetic, name, *extra):
    args = ["--config", "configs/demo/clan_norm.yaml", *TINY_CPU_TRAIN, *synthetic, *extra]
    return train_run(train_clan_norm.main, tmp_path, name, *args)


# --- the learning rates and the progress bar -------------------------------------------------


@pytest.mark.parametrize("scaling, factor", [("none", 1), ("linear", 4)])
def test_the_loop_sets_each_groups_learning_rate(scaling, factor, small_model):
    cfg = load_config(None, [*small_model, "optim.lr=0.01", "optim.lr_d=0.001",
                             f"optim.lr_scaling={scaling}"])  # fmt: skip
    state = train_clan_norm.build(cfg, torch.device("cpu"))
    lrs = _set_learning_rates(state, 20, world_size=4)
    g = poly_lr(20, 0.01 * factor, 1000, 0.9, 10)
    d = poly_lr(20, 0.001 * factor, 1000, 0.9, 10)
    assert lrs == {"lr_G": pytest.approx(g), "lr_D": pytest.approx(d)}
    backbone, heads = state.optimizers["G"].param_groups
    assert backbone["lr"] == pytest.approx(g) and heads["lr"] == pytest.approx(10 * g)  # x10
    assert state.optimizers["D"].param_groups[0]["lr"] == pytest.approx(d)


def test_the_progress_bar_shows_what_moves():
    terms = {"loss_seg": 1, "loss_norm_s": 0.0144, "loss_norm_t": 0.0144, "loss_adv": 0.7,
             "feat_norm_s": 20.0, "feat_norm_t": 21.0, "d_acc_s": 0.5, "damping": 1.0}  # fmt: skip
    assert bar_keys(terms) == ["loss_seg", "loss_adv", "feat_norm_s", "feat_norm_t"]


# --- resume ----------------------------------------------------------------------------------


def test_resume_continues_step_for_step(tmp_path, synthetic):
    full = norm_only_run(tmp_path, synthetic, "full", "train.max_steps=6", "train.save_every=3")
    part = norm_only_run(tmp_path, synthetic, "part", "train.max_steps=3", "train.save_every=3")
    assert train_norm_only.main(["--resume", str(part), "train.max_steps=6"]) == 0
    a = [r for r in metrics_rows(full) if "train/loss_seg" in r]
    b = [r for r in metrics_rows(part) if "train/loss_seg" in r]
    keys = ["train/loss_seg", "train/feat_norm_s", "train/feat_norm_t", "train/lr_G"]
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    wa = load_checkpoint(full / "checkpoints" / "last.pth")["models"]["G"]
    wb = load_checkpoint(part / "checkpoints" / "last.pth")["models"]["G"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _losses(run):
    return [
        {k: v for k, v in r.items() if k.startswith("train/")}
        for r in metrics_rows(run)
        if "train/loss_seg" in r
    ]


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, synthetic):
    full = _clan_run(tmp_path, synthetic, "full", "train.max_steps=5")
    part = _clan_run(tmp_path, synthetic, "part", "train.max_steps=2")
    assert train_clan_norm.main(["--resume", str(part), "train.max_steps=5"]) == 0
    a = [{k: v for k, v in r.items() if k != "train/sec_per_step"} for r in _losses(full)]
    b = [{k: v for k, v in r.items() if k != "train/sec_per_step"} for r in _losses(part)]
    assert a == b and len(a) == 5
    ca = load_checkpoint(full / "checkpoints" / "last.pth")
    cb = load_checkpoint(part / "checkpoints" / "last.pth")
    for name in ("G", "D"):
        assert all(
            torch.equal(ca["models"][name][k], cb["models"][name][k]) for k in ca["models"][name]
        )
    # the resumed segment's config is the run's config.yaml; the one it replaced is kept
    assert read_yaml(part / "config.yaml")["train"]["max_steps"] == 5
    assert read_yaml(part / "config.before_step_000002.yaml")["train"]["max_steps"] == 2
    assert "train.max_steps: 2 -> 5" in (part / "train.log").read_text()
    # resuming with another D width is refused with the mismatching keys, which the run's log
    # records, the config untouched; another class count before any work (training needs the
    # 19 trainIds)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        train_clan_norm.main(["--resume", str(part), "model.d_width=4", "train.max_steps=6"])
    logged = (part / "train.log").read_text().split(" ERROR train: stopped: ")
    assert len(logged) == 2 and "shape mismatches" in logged[1]
    assert read_yaml(part / "config.yaml")["train"]["max_steps"] == 5
    with pytest.raises(ConfigError, match="model.num_classes=7"):
        train_clan_norm.main(["--resume", str(part), "model.num_classes=7", "train.max_steps=6"])


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


def test_resume_errors(tmp_path, synthetic, capsys):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train_norm_only.main(["--resume", str(tmp_path / "nothing")])
    bogus = tmp_path / "bogus" / "checkpoints" / "last.pth"
    bogus.parent.mkdir(parents=True)
    torch.save({"setup": "clan_norm", "config": {}}, bogus)
    with pytest.raises(CheckpointError, match="setup 'clan_norm'"):
        train_norm_only.main(["--resume", str(bogus.parent.parent)])
    # a resumed run continues with its checkpoint's config: another --config is refused
    with pytest.raises(SystemExit) as exit_info:
        train_norm_only.main(["--resume", str(bogus.parent.parent), "--config", "x.yaml"])
    assert exit_info.value.code == 2 and "--config with --resume" in capsys.readouterr().err


# --- evaluation and checkpoints --------------------------------------------------------------


def test_mid_run_evaluation_and_the_checkpoints_metric(tmp_path, synthetic):
    run = norm_only_run(tmp_path, synthetic, "mid", "train.max_steps=4",
                        "train.eval_every=2", "train.save_every=2")  # fmt: skip
    val = [r for r in metrics_rows(run) if "val/mIoU" in r]
    assert [r["step"] for r in val] == [2, 4]  # every 2 steps, the last one at the end
    at_2 = load_checkpoint(run / "checkpoints" / "step_000002.pth")
    assert at_2["metric"] == pytest.approx(val[0]["val/mIoU"])
    final = json.loads((run / "results.json").read_text())
    assert final["step"] == 4 and final["mIoU"] == pytest.approx(val[1]["val/mIoU"])


def test_periodic_checkpoints_are_pruned_to_the_newest_by_step(tmp_path, synthetic):
    """``train.keep_checkpoints`` reaches the loop, which keeps the newest by step number, not by
    name (step_1000000 sorts before step_999999)."""
    run = _clan_run(tmp_path, synthetic, "keep", "train.max_steps=4", "train.save_every=1",
                    "train.keep_checkpoints=2")  # fmt: skip
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["last.pth", "step_000003.pth", "step_000004.pth"]
    keeper = _Checkpointer(tmp_path / "by_step", keep=2)
    for step in (999_999, 1_000_000, 1_000_001):
        keeper.save({"step": step, "w": torch.zeros(1)}, periodic=True)
    assert sorted(p.name for p in (tmp_path / "by_step").iterdir()) == [
        "last.pth", "step_1000000.pth", "step_1000001.pth"
    ]  # fmt: skip


# --- stopping --------------------------------------------------------------------------------


def test_non_finite_loss_stops_with_the_term(tmp_path, synthetic):
    with pytest.raises(Exception, match="loss_norm_s.*non-finite"):
        _clan_run(tmp_path, synthetic, "nan", "train.max_steps=3", "loss.delta_r=.nan")


def test_sigterm_saves_a_loadable_checkpoint(tmp_path, synthetic):
    args = [sys.executable, "train_clan_norm.py", "--config", "configs/demo/clan_norm.yaml",
            *TINY_CPU_TRAIN, *synthetic, f"train.out_dir={tmp_path}", "train.run_name=sig",
            "train.max_steps=100000", "train.save_every=0"]  # fmt: skip
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics = tmp_path / "sig" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out.decode()[-2000:]
    ckpt = load_checkpoint(tmp_path / "sig" / "checkpoints" / "last.pth")
    assert ckpt["step"] >= 1 and set(ckpt["models"]) == {"G", "D"}
    assert not [p for p in (tmp_path / "sig" / "checkpoints").iterdir() if p.suffix == ".tmp"]
    # and the run continues from it
    assert train_clan_norm.main(["--resume", str(tmp_path / "sig"),
                                 f"train.max_steps={ckpt['step'] + 1}"]) == 0  # fmt: skip
    assert os.path.exists(tmp_path / "sig" / "results.json")


# --- the run folder --------------------------------------------------------------------------


def test_an_existing_run_folder_says_how_to_go_on(tmp_path):
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
