"""Checkpoint writing and safe, strict loading."""

import os
import pickle

import pytest
import torch
from torch import nn

from model.deeplabv2 import DeepLabV2
from model.weights import load_weights, read_weights
from utils.checkpoint import CheckpointError, load_checkpoint, load_state_strict, save_checkpoint


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_round_trip_and_atomic_write(tmp_path):
    path = tmp_path / "sub" / "ckpt.pth"
    obj = {"step": 3, "models": {"G": {"w": torch.arange(4.0)}}, "config": {"a": [1, 2]}}
    save_checkpoint(obj, path)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 3 and torch.equal(loaded["models"]["G"]["w"], torch.arange(4.0))
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pth"]  # no temporary left behind


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "last.pth"
    save_checkpoint({"step": 1}, path)
    with pytest.raises((pickle.PicklingError, AttributeError)):
        save_checkpoint({"step": 2, "bad": lambda: None}, path)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pth: refused by the safe loader"):
        load_checkpoint(path)


def test_truncated_and_missing_files(tmp_path):
    path = tmp_path / "t.pth"
    save_checkpoint({"w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="t.pth: cannot be read"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a file \\(missing\\)"):
        load_checkpoint(tmp_path / "absent.pth")
    with pytest.raises(CheckpointError, match="not a file \\(a folder\\)"):
        load_checkpoint(tmp_path)


def test_strict_loading_lists_missing_unexpected_and_shapes():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["extra.weight"] = torch.zeros(1)
    del state["1.bias"]
    state["0.weight"] = torch.zeros(5, 2)
    with pytest.raises(CheckpointError) as err:
        load_state_strict(model, state, "file.pth")
    text = str(err.value)
    assert "file.pth" in text and "missing keys (1): 1.bias" in text
    assert "unexpected keys (1): extra.weight" in text
    assert "0.weight: checkpoint (5, 2) vs model (3, 2)" in text


def test_read_weights_unwraps_the_common_layouts(tmp_path):
    w = torch.ones(1)

    def state(obj):
        torch.save(obj, tmp_path / "f.pth")
        return read_weights(tmp_path / "f.pth").state

    assert state({"models": {"G": {"conv1.weight": w}}}) == {"conv1.weight": w}
    assert state({"state_dict": {"module.conv1.weight": w}}) == {"conv1.weight": w}
    assert state({"Scale.conv1.weight": w}) == {"conv1.weight": w}
    with pytest.raises(CheckpointError, match="state dict of tensors"):
        state({"a": 1})


def test_initial_weights_keep_backbone_and_drop_foreign_classifier(tmp_path):
    torch.manual_seed(0)
    donor = DeepLabV2(num_classes=21, layers=(1, 1, 1, 1), base_width=8)
    path = tmp_path / "init.pth"
    torch.save({f"Scale.{k}": v for k, v in donor.state_dict().items()}, path)
    model = DeepLabV2(num_classes=19, layers=(1, 1, 1, 1), base_width=8)
    fresh_c1 = model.layer5.conv2d_list[0].weight.clone()
    load_weights(model, str(path), purpose="init")
    torch.testing.assert_close(model.conv1.weight, donor.conv1.weight)
    torch.testing.assert_close(model.layer4[0].conv3.weight, donor.layer4[0].conv3.weight)
    torch.testing.assert_close(model.layer5.conv2d_list[0].weight, fresh_c1)
    # a backbone of another shape is an error, not a partial load
    other = DeepLabV2(layers=(1, 1, 1, 1), base_width=16)
    torch.save(other.state_dict(), path)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_weights(model, str(path), purpose="init")


def test_unreadable_files_say_what_they_are(tmp_path):
    import argparse

    from utils.checkpoint import CheckpointError, load_checkpoint

    (tmp_path / "text.pth").write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="text.pth: not a PyTorch file"):
        load_checkpoint(tmp_path / "text.pth")
    torch.save({"x": argparse.Namespace(a=1)}, tmp_path / "code.pth")
    with pytest.raises(CheckpointError, match=r"safe loader .*\(WeightsUnpickler error: Unsu") as e:
        load_checkpoint(tmp_path / "code.pth")
    assert "\n" not in str(e.value)  # torch's long message cut to its one telling line


def test_each_process_resumes_with_its_own_random_state(tmp_path):
    """Under torchrun every rank's dropout draws from its own stream: a checkpoint keeps each
    rank's state, and rank r restores the r-th (rank 0's alone in a one-process run's)."""
    from torch import nn

    from utils.checkpoint import restore_training, rng_state, training_checkpoint

    cpu = torch.device("cpu")
    model = nn.Linear(2, 2)
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        states.append(rng_state(cpu))
    ckpt = training_checkpoint("norm_only", 3, {"G": model}, {}, None, {}, None, cpu, states)
    assert len(ckpt["rng"]["ranks"]) == 2
    draws = []
    for rank in (0, 1):
        torch.manual_seed(99)
        assert restore_training(ckpt, {"G": model}, {}, None, cpu, "ckpt", rank) == 3
        draws.append(torch.rand(3))
    torch.manual_seed(1)
    assert torch.equal(draws[1], torch.rand(3)) and not torch.equal(draws[0], draws[1])
    one = training_checkpoint("norm_only", 3, {"G": model}, {}, None, {}, None, cpu, states[:1])
    assert "ranks" not in one["rng"]  # one process: its state, as before
