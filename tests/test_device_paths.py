"""Paths that only a GPU takes, checked on the CPU where a CPU can catch their class of bug.

The meta device stands in for the GPU: its tensors have shapes and dtypes but no data, so a
value that silently stays on the CPU meets a meta tensor and fails as it would meet a CUDA one,
and a host sync (``.item()``, ``int(tensor)``, boolean indexing) fails as it would stall a GPU.
The CUDA suite (tests/test_cuda.py) runs the same paths on a real GPU.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import pytest
import torch
from conftest import tiny_sized

import evaluate_cityscapes
import train_clan_norm
import train_dacs_norm
import train_maxsquare_norm
import train_norm_only
import utils.training.loop as engine
from benchmarks.speed import SETUPS
from utils.checkpoint import load_checkpoint, match_param_layout, save_checkpoint
from utils.config import ConfigError, load_config
from utils.distributed import DistInfo, init_distributed, resolve_device
from utils.evaluation.metrics import ConfusionMatrix
from utils.training.meters import LogStep, accumulate, stack_means
from utils.training.state import TrainState, prepare


def _state(script, overrides: list[str]) -> TrainState:
    torch.manual_seed(0)
    state = script.build(load_config(None, overrides), torch.device("cpu"))
    prepare(state, DistInfo())
    return state


def _on_meta(state: TrainState) -> TrainState:
    """The state with G and D on the meta device and the optimizers' steps left out (an
    optimizer cannot step on meta); the step's own code runs unchanged."""
    for module in state.modules.values():
        module.to("meta")
    state.device = torch.device("meta")
    state.step_optimizers = lambda: None
    return state


@contextlib.contextmanager
def no_copies_from_the_host(device: torch.device) -> Iterator[None]:
    """Fail on a tensor made on ``device`` from host data within the block: ``torch.tensor``
    or ``torch.as_tensor`` of numbers there, or a blocking ``.to`` from the CPU. On a GPU each
    is a copy from pageable memory that waits for it, which a CUDA graph cannot capture; the
    step's inputs and draws come non-blocking."""
    made, converted, moved = torch.tensor, torch.as_tensor, torch.Tensor.to

    def there(t: torch.Tensor) -> bool:
        return t.device.type == device.type

    def tensor(data, *args, **kwargs):
        out = made(data, *args, **kwargs)
        assert not there(out), f"torch.tensor({data!r}) copied to {device} in a step"
        return out

    def as_tensor(data, *args, **kwargs):
        out = converted(data, *args, **kwargs)
        host = not torch.is_tensor(data) or data.device.type == "cpu"
        assert not (host and there(out)), f"torch.as_tensor({data!r}) copied to {device}"
        return out

    def to(self, *args, **kwargs):
        out = moved(self, *args, **kwargs)
        blocking = not kwargs.get("non_blocking", any(a is True for a in args))
        assert not (self.device.type == "cpu" and there(out) and blocking), (
            f"a blocking .to({device}) of a host tensor {tuple(self.shape)} in a step"
        )
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "tensor", tensor)
        mp.setattr(torch, "as_tensor", as_tensor)
        mp.setattr(torch.Tensor, "to", to)
        yield


@pytest.mark.parametrize("setup", list(SETUPS))
def test_a_steps_logged_values_are_on_its_device_or_plain_numbers(
    setup, small_model, small_batches
):
    """... and the step copies nothing from the host but its batches and draws (non-blocking:
    ``no_copies_from_the_host``)."""
    script, extra = SETUPS[setup]
    state = _on_meta(_state(script, [*small_model, *tiny_sized(extra)]))
    source, target = small_batches
    tgt = target if state.uses_target else None
    sums: dict = {}
    for step in (0, 20):  # the first step (plain BCE) and one past the warm-up
        with no_copies_from_the_host(state.device):
            terms = script.train_step(state, source, tgt, step)
        for key, value in terms.items():
            if torch.is_tensor(value):
                assert value.device.type == "meta", f"{setup}: {key} is on {value.device}"
                assert value.numel() == 1, key
            else:
                assert isinstance(value, (int, float)), f"{setup}: {key} is {type(value)}"
        accumulate(sums, terms)
    # the backward passes ran on the device too; MaxSquare without + Multi and DACS leave C1
    # untrained
    c1_untrained = (script is train_maxsquare_norm and not state.cfg.loss.maxsquare.multi) or (
        script is train_dacs_norm and getattr(state.model, "predict_with", "") == "c2"
    )  # DACS's one classifier (DAFormer has one head, which it trains)
    grads = {f"{name}.{n}": p.grad for name, m in state.modules.items()
             for n, p in m.named_parameters() if p.requires_grad}  # fmt: skip
    for name, grad in grads.items():
        if c1_untrained and name.startswith("G.layer5."):
            assert grad is None, name
        else:
            assert grad is not None and grad.device.type == "meta", name
    # the loop's logging step stacks them all into one tensor on the device
    keys, means = stack_means(sums, 2, state.device)
    assert keys == sorted(terms) and means.device.type == "meta" and means.shape == (len(keys),)


def test_logged_values_are_averaged_whatever_they_are():
    sums: dict = {}
    accumulate(
        sums, {"a": torch.tensor(1.0), "b": 0.5, "c": torch.tensor(2.0, dtype=torch.bfloat16)}
    )
    accumulate(
        sums, {"a": torch.tensor(3.0), "b": 1.5, "c": torch.tensor(4.0, dtype=torch.bfloat16)}
    )
    assert isinstance(sums["b"], float) and sums["a"].dtype == torch.float32
    means = LogStep(sums, 2, DistInfo(), torch.device("cpu")).read()
    assert means == {"a": 2.0, "b": 1.0, "c": 3.0}


def test_confusion_matrix_update_makes_no_host_sync():
    label = torch.randint(0, 19, (2, 8, 8), device="meta")
    cm = ConfusionMatrix(19, device="meta")
    cm.update(label, label)  # no .item(), no boolean indexing: works on data-less tensors
    assert cm.counts.device.type == "meta"
    # and a CPU batch is moved to the matrix's device
    cm.update(torch.zeros(2, 8, 8, dtype=torch.long), torch.zeros(2, 8, 8, dtype=torch.long))


def _fake_gpus(monkeypatch, count: int) -> list:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    return current


def test_each_local_rank_gets_its_own_gpu(monkeypatch):
    _fake_gpus(monkeypatch, 2)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"needs GPU 2 for local rank 1 .* has 2 GPU\(s\)"):
        resolve_device("cuda:1", local_rank=1)
    with pytest.raises(ConfigError, match=r"'cuda:2': needs GPU 2, but this machine has 2"):
        resolve_device("cuda:2")
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("cuda:x")


def test_no_cuda_is_an_error_unless_auto(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda:0")


def test_torchrun_ranks_start_nccl_on_their_own_gpus(monkeypatch):
    current = _fake_gpus(monkeypatch, 4)
    groups = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(
        torch.distributed,
        "init_process_group",
        lambda backend, device_id=None: groups.append((backend, device_id)),
    )
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        info, device = init_distributed("cuda:2")
        assert info.distributed and info.rank == rank and device == torch.device("cuda", 2 + rank)
    assert current == [torch.device("cuda", 2), torch.device("cuda", 3)]
    assert groups == [("nccl", torch.device("cuda", 2)), ("nccl", torch.device("cuda", 3))]
    # one process under torchrun is distributed too (its nccl/gloo paths run)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    info, _ = init_distributed("cuda")
    assert info.distributed and info.world_size == 1


@pytest.mark.parametrize("script", [train_clan_norm, train_norm_only])
def test_mixed_precision_upsamples_logits_in_float32(
    script, small_model, small_batches, upsampled_dtypes
):
    state = _state(script, [*small_model, "train.amp=bf16"])
    source, target = small_batches  # 48x64 images: logits and D's maps are smaller
    script.train_step(state, source, target, 20)
    # CLAN + Norm: p_s1, p_s2, p_t1, p_t2, D's target map in the G step, D's two maps in the
    # D step; Norm only: p1 and p2 inside the segmentation loss
    expected = 7 if script is train_clan_norm else 2
    assert upsampled_dtypes == [torch.float32] * expected


def test_training_evaluates_in_float32_as_evaluate_cityscapes(tmp_path, tiny_run, monkeypatch):
    autocast_on = []
    evaluate = engine.evaluate_views

    def spy(*args, **kwargs):
        autocast_on.append(torch.is_autocast_enabled("cpu"))
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(engine, "evaluate_views", spy)
    args = ["--config", "configs/demo/norm_only.yaml", *tiny_run, "train.device=cpu",
            "train.amp=bf16", "train.max_steps=2", f"train.out_dir={tmp_path}",
            "train.run_name=bf16"]  # fmt: skip
    assert train_norm_only.main(args) == 0
    assert autocast_on == [False]
    trained = json.loads((tmp_path / "bf16" / "results.json").read_text())
    out = tmp_path / "eval.json"
    ckpt = tmp_path / "bf16" / "checkpoints" / "last.pth"
    assert evaluate_cityscapes.main(["--restore", str(ckpt), "--results", str(out)]) == 0
    evaluated = json.loads(out.read_text())
    assert evaluated["mIoU"] == trained["mIoU"]
    assert list(evaluated["iou"].values()) == pytest.approx(trained["iou"], nan_ok=True, abs=0)


def test_grad_scaler_state_is_checkpointed_and_restored(small_model, tmp_path):
    state = _state(train_clan_norm, [*small_model, "train.amp=fp16"])
    state.scaler.scale(torch.ones(()))  # the scale exists from the first scaled loss on
    state.scaler.update(new_scale=torch.tensor(1024.0))
    save_checkpoint(state.checkpoint("clan_norm", 7), tmp_path / "a.pth")
    ckpt = load_checkpoint(tmp_path / "a.pth")  # weights_only: plain numbers
    assert ckpt["scaler"]["scale"] == 1024.0
    fresh = _state(train_clan_norm, [*small_model, "train.amp=fp16"])
    assert fresh.scaler.get_scale() == 2.0**16
    assert fresh.restore(ckpt, "a.pth") == 7
    assert fresh.scaler.get_scale() == 1024.0
    assert fresh.scaler.state_dict() == state.scaler.state_dict()


def test_an_fp16_run_resumes_exactly(tmp_path, tiny_run):
    def run(name, *extra):
        args = [
            "--config",
            "configs/demo/clan_norm.yaml",
            *tiny_run,
            "train.device=cpu",
            "train.amp=fp16",
            f"train.out_dir={tmp_path}",
            f"train.run_name={name}",
            *extra,
        ]
        assert train_clan_norm.main(args) == 0  # fmt: skip
        return tmp_path / name

    def logged(run_dir):
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [
            {k: v for k, v in r.items() if k.startswith("train/") and k != "train/sec_per_step"}
            for r in rows
            if "train/loss_seg" in r
        ]

    full = run("full", "train.max_steps=4")
    part = run("part", "train.max_steps=2")
    ckpt = load_checkpoint(part / "checkpoints" / "last.pth")
    # D's float16 gradients overflow at the initial scale: the scale has moved by step 2, so a
    # resume that started the scaler afresh would skip other steps than the full run did
    assert ckpt["scaler"]["scale"] < 2.0**16
    assert train_clan_norm.main(["--resume", str(part), "train.max_steps=4"]) == 0
    assert logged(part) == logged(full) and len(logged(full)) == 4
    a = load_checkpoint(full / "checkpoints" / "last.pth")
    b = load_checkpoint(part / "checkpoints" / "last.pth")
    assert a["scaler"] == b["scaler"]
    for name in ("G", "D"):
        assert all(
            torch.equal(a["models"][name][k], b["models"][name][k]) for k in a["models"][name]
        )


def test_restored_optimizer_buffers_take_the_parameters_memory_layout(tmp_path):
    # Saved by a run in NCHW (a CPU run, or train.channels_last=false), resumed in channels_last.
    conv = torch.nn.Conv2d(3, 4, 3)
    sgd = torch.optim.SGD(conv.parameters(), lr=0.1, momentum=0.9)
    conv(torch.randn(1, 3, 5, 5)).sum().backward()
    sgd.step()
    save_checkpoint({"opt": sgd.state_dict()}, tmp_path / "o.pth")
    conv.to(memory_format=torch.channels_last)
    fresh = torch.optim.SGD(conv.parameters(), lr=0.1, momentum=0.9)
    fresh.load_state_dict(load_checkpoint(tmp_path / "o.pth")["opt"])
    loaded = fresh.state[conv.weight]["momentum_buffer"]
    assert loaded.stride() != conv.weight.stride()
    match_param_layout(fresh)
    restored = fresh.state[conv.weight]["momentum_buffer"]
    assert restored.stride() == conv.weight.stride() and torch.equal(restored, loaded)
    assert restored.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("config", ["clan_norm", "clan", "norm_only", "source_only"])
def test_demo_configs_use_the_gpu_when_there_is_one(config):
    assert load_config(f"configs/demo/{config}.yaml").train.device == "auto"
