"""The speed benchmark's reference procedure and bookkeeping (not its timings: no timed tests).

The reference step stands for the released code's procedure; the ratio ours / reference only
means something if both compute the same update, so that is checked here on a small model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import train_clan_norm
import train_norm_only
from benchmarks import speed
from utils.config import load_config


@pytest.mark.parametrize(
    ("script", "extra"),
    [
        (train_norm_only, []),
        (train_norm_only, ["loss.lambda_norm=0"]),
        (train_clan_norm, []),
        (train_clan_norm, ["loss.lambda_norm=0"]),
    ],
    ids=["norm_only", "source_only", "clan_norm", "clan"],
)
def test_reference_step_makes_the_same_update_as_ours(script, extra, small_model, small_batches):
    # lambda_norm large enough that the norm term visibly moves the backbone
    cfg = load_config(None, [*small_model, "loss.lambda_norm=0.5", *extra])
    source, target = small_batches
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        states.append(script.build(cfg, torch.device("cpu")))
    ours, ref = states
    tgt = target if ours.uses_target else None
    before = {k: v.clone() for k, v in ours.model.state_dict().items()}
    for step in (20, 21):  # past warm-up: every weight map in use
        script.train_step(ours, source, tgt, step)
        speed.reference_step(ref, source, tgt, step)
    for name, module in ours.modules.items():
        theirs = ref.modules[name].state_dict()
        for key, a in module.state_dict().items():
            torch.testing.assert_close(a, theirs[key], rtol=1e-4, atol=1e-6, msg=f"{name}.{key}")
    moved = [k for k, v in ours.model.state_dict().items() if not torch.equal(v, before[k])]
    assert "layer1.0.conv1.weight" in moved


def test_state_bytes_counts_parameters_gradients_and_optimizer_state():
    linear = torch.nn.Linear(3, 2)  # 6 + 2 floats
    bn = torch.nn.BatchNorm1d(2)  # 4 parameter floats; buffers: 2 + 2 floats and one int64
    opt = torch.optim.SGD([*linear.parameters(), *bn.parameters()], lr=0.1, momentum=0.9)
    state = SimpleNamespace(modules={"a": linear, "b": bn}, optimizers={"o": opt})
    params = (8 + 4) * 4
    buffers = 4 * 4 + 8
    assert speed._state_bytes(state) == params + buffers
    bn(linear(torch.randn(4, 3))).sum().backward()
    opt.step()  # gradients and momentum buffers now exist
    assert speed._state_bytes(state) == 3 * params + buffers


def test_benchmark_runs_end_to_end_and_writes_its_table(tmp_path, capsys, small_model):
    out = tmp_path / "speed.md"
    args = [
        "--device", "cpu", "--crop", "48", "64", "--amp", "off", "--steps", "2", "--warmup", "0",
        "--eval-images", "3", "--eval-distinct", "2", "--eval-batch", "2", "--eval-workers", "0",
        "--eval-size", "64", "128", "--eval-cache", str(tmp_path / "eval"), "--out", str(out),
        *small_model, "data.val.resize=[64,32]",
    ]  # fmt: skip
    assert speed.main(args) == 0
    table = out.read_text()
    assert table.strip() in capsys.readouterr().out  # printed too
    rows = [line for line in table.splitlines() if line.startswith("| ") and "ms" not in line]
    assert [r.split("|")[1].strip() for r in rows] == list(speed.SETUPS)
    for row in rows:
        ours, ref, ratio = (float(c) for c in row.split("|")[2:5])
        assert ours > 0 and ref > 0
        assert ratio == pytest.approx(ours / ref, abs=0.02)
    assert "CLAN + Norm / CLAN = " in table
    assert "over 3 images" in table  # two distinct synthetic images, listed up to three
