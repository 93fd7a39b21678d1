"""Mixed precision (one autocast path, float32 losses, one GradScaler for both optimizers) and
torch.compile (same results as eager), on a small model on the CPU."""

from __future__ import annotations

import pytest
import torch
from conftest import state_weights

import train_clan_norm
from utils.config import load_config
from utils.distributed import DistInfo
from utils.losses import feature_norm
from utils.training.state import TrainState, prepare


def _state(small_model: list[str], *overrides: str) -> TrainState:
    torch.manual_seed(0)
    cfg = load_config(None, [*small_model, *overrides])
    state = train_clan_norm.build(cfg, torch.device("cpu"))
    prepare(state, DistInfo())
    return state


def test_bf16_autocasts_the_networks_and_keeps_norms_and_losses_in_float32(
    small_model, small_batches
):
    state = _state(small_model, "train.amp=bf16")
    source, target = small_batches
    with state.autocast():
        out = state.run("G")(source.image)
    assert out.features.dtype == torch.bfloat16 and out.p1.dtype == torch.bfloat16
    assert feature_norm(out.features).dtype == torch.float32
    before = state_weights(state)
    terms = train_clan_norm.train_step(state, source, target, 20)
    for name, value in terms.items():
        if isinstance(value, float):  # the damping factors
            continue
        assert value.dtype == torch.float32, name
        assert torch.isfinite(value), name
    after = state_weights(state)
    assert all(p.dtype == torch.float32 for p in after.values() if p.is_floating_point())
    for name in ("G.layer1.0.conv1.weight", "G.layer6.conv2d_list.0.weight", "D.conv1.weight"):
        assert not torch.equal(before[name], after[name]), name


def test_fp16_one_grad_scaler_serves_both_optimizers(small_model, small_batches):
    state = _state(small_model, "train.amp=fp16")
    assert state.scaler is not None and state.scaler.is_enabled()
    source, target = small_batches
    # At the default initial scale, 2^16, D's float16 gradients overflow here and only D's
    # step is skipped (each optimizer is unscaled and checked on its own); start lower.
    state.scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    before = state_weights(state)
    train_clan_norm.train_step(state, source, target, 20)
    after = state_weights(state)
    assert state.scaler.get_scale() == 256.0  # no overflow anywhere
    assert not torch.equal(before["G.layer1.0.conv1.weight"], after["G.layer1.0.conv1.weight"])
    assert not torch.equal(before["D.conv1.weight"], after["D.conv1.weight"])

    # A scale that overflows float16 gradients: both optimizers skip the step, the scale drops.
    state.scaler.update(new_scale=torch.tensor(3.0e38))
    train_clan_norm.train_step(state, source, target, 21)
    skipped = state_weights(state)
    for name, module in state.modules.items():
        for key, _ in module.named_parameters():  # (BN running statistics move regardless)
            assert torch.equal(after[f"{name}.{key}"], skipped[f"{name}.{key}"]), key
    assert state.scaler.get_scale() < 3.0e38


def test_off_and_bf16_have_no_grad_scaler(small_model):
    assert _state(small_model, "train.amp=off").scaler is None
    assert _state(small_model, "train.amp=bf16").scaler is None


@pytest.mark.parametrize("updates", ["once", "released"])
def test_compile_gives_the_eager_results(updates, small_model, small_batches):
    source, target = small_batches
    optim = f"optim.backbone_updates={updates}"
    eager, compiled = _state(small_model, optim), _state(small_model, optim, "train.compile=true")
    assert compiled.run("G") is not compiled.modules["G"]  # the compiled wrapper is what runs
    for step in (20, 21):
        logs_e = train_clan_norm.train_step(eager, source, target, step)
        logs_c = train_clan_norm.train_step(compiled, source, target, step)
        for key in logs_e:
            torch.testing.assert_close(logs_c[key], logs_e[key], rtol=1e-3, atol=1e-5, msg=key)
    w_e, w_c = state_weights(eager), state_weights(compiled)
    for name in w_e:
        torch.testing.assert_close(w_c[name], w_e[name], rtol=1e-3, atol=1e-5, msg=name)
