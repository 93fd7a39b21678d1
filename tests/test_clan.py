"""CLAN + Norm: D's shape, the step's terms and their weights, D/G freezing, gradients and
updates (its losses: test_losses.py; the loop's resume, pruning and signals: test_loop.py)."""

import math
from pathlib import Path

import pytest
import torch
from conftest import TINY_CPU_TRAIN, spy_terms

import train_clan_norm
from dataset.datasets import Batch
from model.discriminator import FCDiscriminator
from utils.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def test_discriminator_shapes_and_names():
    disc = FCDiscriminator(19)
    assert disc(torch.zeros(1, 19, 512, 1024)).shape == (1, 1, 16, 32)
    assert [n for n, _ in disc.named_parameters()][::2] == [
        "conv1.weight", "conv2.weight", "conv3.weight", "conv4.weight", "classifier.weight"
    ]  # fmt: skip
    assert [m.out_channels for m in disc.children() if hasattr(m, "out_channels")] == [
        64, 128, 256, 512, 1
    ]  # fmt: skip


def _state_and_batches(overrides=()):
    torch.manual_seed(0)
    cfg = load_config(ROOT / "configs/demo/clan_norm.yaml", [*TINY_CPU_TRAIN, *overrides])
    state = train_clan_norm.build(cfg, torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    label = torch.randint(0, 19, (2, 48, 96), generator=g)
    label[:, :4] = 255
    source = Batch(torch.randn(2, 3, 48, 96, generator=g), label, ["a", "b"])
    target = Batch(torch.randn(2, 3, 48, 96, generator=g), None, ["c", "d"])
    return state, source, target


def test_every_trainable_parameter_of_g_and_d_gets_a_gradient():
    state, source, target = _state_and_batches()
    for opt in state.optimizers.values():  # keep the gradients: no update
        opt.step = lambda: None
    train_clan_norm.train_step(state, source, target, step=5)
    for name, module in state.modules.items():
        for pname, p in module.named_parameters():
            if p.requires_grad:
                assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname}"


def test_each_term_enters_the_total_with_its_weight(monkeypatch):
    state, source, target = _state_and_batches(
        ["loss.lambda_norm=0.5", "loss.lambda_adv=0.25", "loss.lambda_weight=0.125"]
    )
    seen = spy_terms(monkeypatch, train_clan_norm, [
        "segmentation_loss", "stepwise_norm_loss", "weighted_bce_with_logits",
        "weight_discrepancy_loss"])  # fmt: skip
    step = 5
    train_clan_norm.train_step(state, source, target, step)
    d = 1 - step / state.cfg.optim.schedule_steps
    d_norm = 1 - 1.5 * step / state.cfg.optim.schedule_steps
    expected = [
        ("segmentation_loss", 1.0),
        ("stepwise_norm_loss", 0.5 * d_norm),  # source
        ("weighted_bce_with_logits", 0.25 * d),  # adversarial (G step)
        ("stepwise_norm_loss", 0.5 * d_norm),  # target
        ("weight_discrepancy_loss", 0.125 * d),
        ("weighted_bce_with_logits", 1.0),  # D: source
        ("weighted_bce_with_logits", 1.0),  # D: target
    ]
    assert [r["name"] for r in seen] == [name for name, _ in expected]
    for record, (name, weight) in zip(seen, expected):
        assert record["grad"] == pytest.approx(weight, rel=1e-6), name


def test_norm_only_terms_enter_the_total_with_their_weight(monkeypatch, small_model, small_batches):
    import train_norm_only

    torch.manual_seed(0)
    cfg = load_config(None, [*small_model, "loss.lambda_norm=0.5"])
    state = train_norm_only.build(cfg, torch.device("cpu"))
    seen = spy_terms(monkeypatch, train_norm_only,
                      ["segmentation_loss", "stepwise_norm_loss"])  # fmt: skip
    train_norm_only.train_step(state, *small_batches, 5)
    d_norm = 1 - 1.5 * 5 / cfg.optim.schedule_steps
    assert [(r["name"], r["grad"]) for r in seen] == [
        ("segmentation_loss", 1.0),
        ("stepwise_norm_loss", pytest.approx(0.5 * d_norm)),
        ("stepwise_norm_loss", pytest.approx(0.5 * d_norm)),
    ]


def test_d_frozen_in_g_step_and_g_untouched_by_d_step(monkeypatch):
    state, source, target = _state_and_batches()
    disc, model = state.modules["D"], state.model
    seen = {}
    real_backward = torch.Tensor.backward

    def spy(self, *args, **kwargs):
        # before each backward: which side has grads so far
        d_grads = [p.grad for p in disc.parameters()]
        seen.setdefault("calls", []).append(
            (all(g is None for g in d_grads), [p.grad.clone() if p.grad is not None else None
                                               for p in model.parameters()])
        )  # fmt: skip
        return real_backward(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", spy)
    for opt in state.optimizers.values():
        opt.step = lambda: None
    train_clan_norm.train_step(state, source, target, step=5)
    calls = seen["calls"]
    assert len(calls) == 3  # source, target, D: one backward per pass
    assert calls[0][0] and calls[1][0] and calls[2][0]  # D had no gradient before its own step
    assert all(p.grad is not None for p in disc.parameters())
    # G's gradients after the target backward equal those at the end: the D step added nothing
    g_before_d = calls[2][1]
    for before, p in zip(g_before_d, model.parameters()):
        if before is None:
            assert p.grad is None
        else:
            assert torch.equal(before, p.grad)


def test_updates_move_g_and_d_only_through_their_optimizers():
    state, source, target = _state_and_batches()
    d0 = {k: v.clone() for k, v in state.modules["D"].state_dict().items()}
    g0 = {k: v.clone() for k, v in state.model.state_dict().items() if "conv" in k}
    terms = train_clan_norm.train_step(state, source, target, step=5)
    assert all(math.isfinite(float(v)) for v in terms.values())
    d1, g1 = state.modules["D"].state_dict(), state.model.state_dict()
    assert any(not torch.equal(d0[k], d1[k]) for k in d0)
    assert any(not torch.equal(g0[k], g1[k]) for k in g0)
    assert 0.0 <= terms["d_acc_s"].item() <= 1.0 and terms["loss_weight"].item() >= 0.0
