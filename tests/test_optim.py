"""G's optimizer: once per parameter (torch.optim.SGD), or the released code's duplicated
backbone list stepped entry by entry as the PyTorch of its time did (docs/protocols.md, "The
released optimizer")."""

from __future__ import annotations

import warnings

import pytest
import torch

from model.deeplabv2 import DeepLabV2
from utils.config import ConfigError, load_config
from utils.schedules import poly_lr
from utils.training.optim import ReleasedSGD, build_sgd, released_backbone_entries, with_repeats
from utils.training.state import build_generator

LR, MOMENTUM, WD = 0.1, 0.9, 5e-4


def released_code_list(model: DeepLabV2):
    """``get_1x_lr_params_NOscale`` as the released code writes it (deeplabv2_G.py)."""
    b = [model.conv1, model.bn1, model.layer1, model.layer2, model.layer3, model.layer4]
    for i in range(len(b)):
        for j in b[i].modules():
            for k in j.parameters():
                if k.requires_grad:
                    yield k


def released_code_10x(model: DeepLabV2):
    """``get_10x_lr_params``: the classifiers, once each."""
    yield from model.layer5.parameters()
    yield from model.layer6.parameters()


def _model() -> DeepLabV2:
    torch.manual_seed(0)
    return DeepLabV2(layers=(2, 2, 2, 2), base_width=8)  # second blocks have no downsample


def _cfg(updates: str):
    overrides = [f"optim.backbone_updates={updates}", f"optim.lr={LR}",
                 f"optim.momentum={MOMENTUM}", f"optim.weight_decay={WD}"]  # fmt: skip
    return load_config(None, overrides)


def _optimizer(model: DeepLabV2, updates: str) -> torch.optim.Optimizer:
    return build_sgd(_cfg(updates).optim, model.backbone_stages(), model.param_groups(LR))


def _grads(model: DeepLabV2, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=gen) for p in model.parameters()]


def _set_grads(model: DeepLabV2, grads: list[torch.Tensor]) -> None:
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone() if p.requires_grad else None


def _step_both(a: DeepLabV2, opt_a, b: DeepLabV2, opt_b, steps: int) -> None:
    """Step two optimizers of two equal models with the same random gradients."""
    for step in range(steps):
        grads = _grads(a, step)
        _set_grads(a, grads)
        _set_grads(b, grads)
        opt_a.step()
        opt_b.step()


def _rule_step(entries, lr: float, bufs: dict, wd_in_grad: bool = False) -> None:
    """SPEC's rule, one entry after the other, with the primitive ops of PyTorch 1.5-1.7's SGD
    (``released_torch14``: PyTorch 1.4's, which added the decay into ``p.grad`` in place)."""
    with torch.no_grad():
        for p in entries:
            d = p.grad.add_(p, alpha=WD) if wd_in_grad else p.grad.add(p, alpha=WD)
            if p not in bufs:
                bufs[p] = torch.clone(d).detach()
            else:
                bufs[p].mul_(MOMENTUM).add_(d)
            p.add_(bufs[p], alpha=-lr)


def test_the_released_list_is_derived_from_the_module_structure():
    model = _model()
    entries = released_backbone_entries(model.backbone_stages())
    assert [id(p) for p in entries] == [id(p) for p in released_code_list(model)]
    params, repeats = with_repeats(entries)
    count = {name: repeats[[id(q) for q in params].index(id(p))]
             for name, p in model.named_parameters() if p.requires_grad and "layer5" not in name
             and "layer6" not in name}  # fmt: skip
    assert count["conv1.weight"] == 1  # the stem conv
    assert count["layer1.0.conv2.weight"] == count["layer4.1.conv3.weight"] == 3  # block convs
    assert count["layer3.0.downsample.0.weight"] == 4  # downsample convs
    assert set(count.values()) == {1, 3, 4} and not any("bn" in n for n in count)  # BN frozen
    # the full ResNet-101: one stem conv, 99 block convs, 4 downsample convs
    full = DeepLabV2(layers=(3, 4, 23, 3), base_width=4)
    assert sorted(with_repeats(released_backbone_entries(full.backbone_stages()))[1]) == (
        [1] + [3] * 99 + [4] * 4
    )


@pytest.mark.parametrize("updates", ["released", "released_torch14"])
def test_released_sgd_is_the_rule_applied_entry_by_entry(updates):
    ours, ref = _model(), _model()
    opt = _optimizer(ours, updates)
    assert isinstance(opt, ReleasedSGD)
    backbone, heads = list(released_code_list(ref)), list(released_code_10x(ref))
    bufs: dict = {}
    for step in range(3):
        lr = LR * (1 - step / 10)  # the loop changes the rate between steps
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_mult"]
        grads = _grads(ours, step)
        _set_grads(ours, grads)
        _set_grads(ref, grads)
        opt.step()
        _rule_step(backbone, lr, bufs, updates == "released_torch14")
        _rule_step(heads, 10 * lr, bufs, updates == "released_torch14")
    # bit-identical: the same primitive operations in the same order per parameter
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        assert torch.equal(a, b), name
        if a.requires_grad:
            assert torch.equal(opt.state[a]["momentum_buffer"], bufs[b]), name


def test_the_two_released_variants_differ_only_by_the_decay_in_the_gradient():
    a, b = _model(), _model()
    opt_a, opt_b = _optimizer(a, "released"), _optimizer(b, "released_torch14")
    _step_both(a, opt_a, b, opt_b, steps=2)
    delta = (a.layer1[0].conv1.weight - b.layer1[0].conv1.weight).abs().max()
    assert 0 < delta < 1e-2  # weight decay terms: small, but not rounding
    assert torch.equal(a.conv1.weight, b.conv1.weight)  # listed once: the same update


def test_the_first_step_moves_block_convs_5_6x_and_downsample_convs_9_05x():
    model = _model()
    opt = build_sgd(
        load_config(None, ["optim.backbone_updates=released", "optim.weight_decay=0"]).optim,
        model.backbone_stages(),
        model.param_groups(LR),
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.ones_like(p) if p.requires_grad else None
    opt.step()
    moved = {n: (before[n] - p).mean().item() / LR for n, p in model.named_parameters()}
    # k entries: 1, 1 + 1.9, 1 + 1.9 + 2.71, 1 + 1.9 + 2.71 + 3.439 (momentum 0.9)
    assert moved["conv1.weight"] == pytest.approx(1.0)
    assert moved["layer2.1.conv1.weight"] == pytest.approx(5.61)
    assert moved["layer2.0.downsample.0.weight"] == pytest.approx(9.049)
    assert moved["layer6.conv2d_list.0.weight"] == pytest.approx(10.0)  # x10, listed once


def test_todays_torch_sgd_on_the_released_list_is_not_the_reference():
    ours, today = _model(), _model()
    opt = _optimizer(ours, "released")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "a parameter group with duplicate parameters"
        sgd = torch.optim.SGD(
            [{"params": list(released_code_list(today))},
             {"params": list(released_code_10x(today)), "lr": 10 * LR}],
            lr=LR, momentum=MOMENTUM, weight_decay=WD, foreach=False,
        )  # fmt: skip
    _step_both(ours, opt, today, sgd, steps=3)
    gap = (ours.layer1[0].conv2.weight - today.layer1[0].conv2.weight).abs().max()
    assert gap > 0.1  # entries that share a buffer are not today's separate clones
    # parameters listed once agree: the difference is the duplicates, not the setup
    torch.testing.assert_close(ours.conv1.weight, today.conv1.weight, rtol=1e-6, atol=1e-7)


def test_released_sgd_with_single_entries_is_plain_sgd():
    a, b = _model(), _model()
    groups = [{**g, "repeats": [1] * len(g["params"])} for g in a.param_groups(LR)]
    ours = ReleasedSGD(groups, lr=LR, momentum=MOMENTUM, weight_decay=WD)
    sgd = torch.optim.SGD(b.param_groups(LR), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    _step_both(a, ours, b, sgd, steps=3)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


def test_once_mode_is_torch_sgd_with_each_parameter_once():
    cfg = load_config(None, ["train.device=cpu", "model.layers=[1,1,1,1]", "model.base_width=8"])
    assert cfg.optim.backbone_updates == "once"  # the paper's default
    torch.manual_seed(0)
    model, opt = build_generator(cfg, torch.device("cpu"))
    assert type(opt) is torch.optim.SGD
    listed = [id(p) for g in opt.param_groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(listed) == sorted(trainable) and len(set(listed)) == len(listed)
    assert [g["name"] for g in opt.param_groups] == ["backbone", "classifiers"]


def test_released_sgd_state_round_trips(tmp_path):
    model = _model()
    opt = _optimizer(model, "released")
    _set_grads(model, _grads(model, 0))
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "o.pt")
    fresh = _optimizer(model, "released")
    fresh.load_state_dict(torch.load(tmp_path / "o.pt", weights_only=True))
    assert fresh.param_groups[0]["repeats"] == opt.param_groups[0]["repeats"]
    assert all(
        torch.equal(fresh.state[p]["momentum_buffer"], opt.state[p]["momentum_buffer"])
        for p in model.parameters()
        if p.requires_grad
    )


def test_unknown_backbone_updates_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match="optim.backbone_updates: expected one of once"):
        _optimizer(_model(), "thrice")
    with pytest.raises(ValueError, match="one count >= 1 per parameter"):
        ReleasedSGD([{"params": [torch.nn.Parameter(torch.ones(1))], "repeats": [0]}], lr=0.1)


def test_released_warm_up_form():
    base, n, w = 1.0, 100, 10
    assert poly_lr(0, base, n, 0.9, w, "released") == 0.0
    assert poly_lr(5, base, n, 0.9, w, "released") == pytest.approx(0.5)
    assert poly_lr(9, base, n, 0.9, w, "released") == pytest.approx(0.9)
    assert poly_lr(10, base, n, 0.9, w, "released") == pytest.approx(0.9**0.9)  # poly from W
    assert poly_lr(10, base, n, 0.9, w, "scaled") == poly_lr(10, base, n, 0.9, w, "released")
    assert poly_lr(0, base, n, 1.0, w, "scaled") == pytest.approx(0.1)  # (i + 1) / W x poly
    with pytest.raises(ValueError, match="warmup_form"):
        poly_lr(0, base, n, 0.9, w, "cosine")


def test_a_released_run_resumes_exactly(tmp_path, tiny_run):
    import json

    import train_clan_norm
    from utils.checkpoint import load_checkpoint

    def run(name, *extra):
        args = ["--config", "configs/demo/released/clan_norm.yaml", *tiny_run, "train.device=cpu",
                "data.source.crop=null", "data.source.resize=[96,52]", "data.target.crop=null",
                "data.target.resize=[96,48]", f"train.out_dir={tmp_path}",
                f"train.run_name={name}", *extra]  # whole resized images, rescaled  # fmt: skip
        assert train_clan_norm.main(args) == 0
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().split("\n")
                if x]  # fmt: skip
        return [{k: v for k, v in r.items() if k.startswith("train/loss")} for r in rows
                if "train/loss_seg" in r]  # fmt: skip

    full = run("full", "train.max_steps=4", "train.save_every=0")
    run("part", "train.max_steps=2", "train.save_every=0")
    assert train_clan_norm.main(["--resume", str(tmp_path / "part"), "train.max_steps=4"]) == 0
    part = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().split("\n")
            if x]  # fmt: skip
    assert full == [{k: v for k, v in r.items() if k.startswith("train/loss")} for r in part
                    if "train/loss_seg" in r]  # fmt: skip
    assert len(full) == 4
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pth")
    b = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pth")
    assert sorted(set(a["optimizers"]["G"]["param_groups"][0]["repeats"])) == [1, 3, 4]
    for key, value in a["models"]["G"].items():
        assert torch.equal(value, b["models"]["G"][key]), key


def test_released_sgd_under_fp16_skips_overflowing_steps(small_model, small_batches):
    import train_clan_norm
    from utils.distributed import DistInfo
    from utils.training.state import prepare

    torch.manual_seed(0)
    cfg = load_config(None, [*small_model, "train.amp=fp16", "optim.backbone_updates=released"])
    state = train_clan_norm.build(cfg, torch.device("cpu"))
    prepare(state, DistInfo())
    state.scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    source, target = small_batches
    w0 = state.model.layer1[0].conv2.weight.detach().clone()
    train_clan_norm.train_step(state, source, target, 20)
    w1 = state.model.layer1[0].conv2.weight.detach().clone()
    assert not torch.equal(w0, w1) and state.scaler.get_scale() == 256.0
    state.scaler.update(new_scale=torch.tensor(3.0e38))  # float16 gradients overflow
    train_clan_norm.train_step(state, source, target, 21)
    assert torch.equal(state.model.layer1[0].conv2.weight, w1)  # the step was skipped
