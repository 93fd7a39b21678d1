"""MaxSquare + Norm (train_maxsquare_norm.py): each term's weight, which heads train, the
initial weights it starts from, the config it refuses, and an exact resume."""

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN, spy_terms, write_layout

import train_clan_norm
import train_maxsquare_norm
import train_norm_only
from utils.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent

MAXSQUARE = ["model.preset=maxsquare", "train.device=cpu", "optim.warmup_steps=0",
             "optim.schedule_steps=1000"]  # fmt: skip
TINY = [*TINY_TRAIN, "train.device=cpu", "model.preset=maxsquare", "optim.schedule_steps=12"]


def _state(small_model, *overrides):
    torch.manual_seed(0)
    cfg = load_config(None, [*small_model, *MAXSQUARE, *overrides])
    train_maxsquare_norm.check(cfg)
    return train_maxsquare_norm.build(cfg, torch.device("cpu"))


def _spy_terms(monkeypatch, names):
    """Each loss the step computes, with d(total)/d(term): its weight in the total."""
    return spy_terms(monkeypatch, train_maxsquare_norm, names)


def test_maxsquare_norm_terms_enter_the_total_with_their_weight(
    monkeypatch, small_model, small_batches
):
    state = _state(small_model, "loss.lambda_norm=0.5", "loss.maxsquare.lambda_target=0.25")
    seen = _spy_terms(monkeypatch, ["cross_entropy", "stepwise_norm_loss", "max_square_loss"])
    train_maxsquare_norm.train_step(state, *small_batches, 5)
    d_norm = 1 - 1.5 * 5 / 1000
    assert [(r["name"], r["grad"]) for r in seen] == [
        ("cross_entropy", 1.0),  # C2 on the source
        ("stepwise_norm_loss", pytest.approx(0.5 * d_norm)),  # source features
        ("max_square_loss", pytest.approx(0.25)),  # C2 on the target
        ("stepwise_norm_loss", pytest.approx(0.5 * d_norm)),  # target features
    ]


def test_iw_multi_terms_enter_the_total_with_their_weight(monkeypatch, small_model, small_batches):
    state = _state(small_model, "loss.lambda_norm=0.5", "loss.maxsquare.lambda_target=0.25",
                   "loss.maxsquare.image_wise=true", "loss.maxsquare.multi=true",
                   "loss.maxsquare.lambda_aux=0.125", "loss.maxsquare.threshold=0.0")  # fmt: skip
    seen = _spy_terms(monkeypatch, ["cross_entropy", "stepwise_norm_loss",
                                    "image_wise_max_square_loss"])  # fmt: skip
    terms = train_maxsquare_norm.train_step(state, *small_batches, 5)
    d_norm = 1 - 1.5 * 5 / 1000
    assert [(r["name"], r["grad"]) for r in seen] == [
        ("cross_entropy", 1.0),  # C2 on the source
        ("stepwise_norm_loss", pytest.approx(0.5 * d_norm)),
        ("cross_entropy", pytest.approx(0.125)),  # C1 on the source, x lambda_aux
        ("image_wise_max_square_loss", pytest.approx(0.25)),
        ("stepwise_norm_loss", pytest.approx(0.5 * d_norm)),
        ("cross_entropy", pytest.approx(0.125 * 0.25)),  # C1's pseudo-labels, x aux x target
    ]
    assert float(terms["pseudo_label_share"]) == 1.0  # threshold 0: every pixel kept


def test_c1_trains_only_with_multi(small_model, small_batches):
    for multi, c1_trains in (("false", False), ("true", True)):
        state = _state(small_model, f"loss.maxsquare.multi={multi}")
        state.optimizers["G"].step = lambda: None  # keep the gradients
        train_maxsquare_norm.train_step(state, *small_batches, 5)
        c1 = [p.grad for p in state.model.layer5.parameters()]
        assert all(g is not None for g in c1) == c1_trains
        for name, p in state.model.named_parameters():
            if p.requires_grad and not name.startswith("layer5"):
                assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_the_source_stage_has_no_target_pass(small_model):
    stage = _state(small_model, "loss.lambda_norm=0", "loss.maxsquare.lambda_target=0")
    assert not stage.uses_target
    assert _state(small_model, "loss.lambda_norm=0").uses_target  # plain MaxSquare


def test_a_maxsquare_source_checkpoint_loads_as_the_init_and_predicts_alike(tmp_path, small_model):
    path, released, _ = write_layout(tmp_path, "maxsquare")  # module. prefix, C1 on layer3
    state = _state(small_model, f"model.init_from={path}")
    model = state.model.eval()
    x = torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(x), released(x)
        assert torch.equal(model.predict(ours), released.predict(theirs))
        assert torch.equal(ours.p1, theirs.p1)  # C1 too: the layout's aux head on layer3


def test_our_source_only_checkpoint_loads_as_the_init(tmp_path, small_model):
    path, produced, _ = write_layout(tmp_path, "checkpoint")  # Source only: the clan preset
    state = _state(small_model, f"model.init_from={path}")
    ours, theirs = state.model.state_dict(), produced.state_dict()
    backbone = [k for k in theirs if k.startswith(("conv1", "bn1", "layer1", "layer2",
                                                   "layer3", "layer4"))]  # fmt: skip
    assert backbone and all(torch.equal(ours[k], theirs[k]) for k in backbone)


def test_an_init_file_of_another_layout_is_refused_naming_it(tmp_path, small_model):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(Exception, match="other.pth"):
        _state(small_model, f"model.init_from={path}")


@pytest.mark.parametrize(
    "override, message",
    [
        ("loss.lambda_adv=0.5", "loss.lambda_adv=0.5: a key of CLAN's discriminator"),
        ("optim.lr_d=0.1", "optim.lr_d=0.1: a key of CLAN's"),
        ("model.preset=clan", "model.predict_with='sum': MaxSquare trains and predicts with C2"),
    ],
)
def test_keys_it_cannot_train_are_refused_before_any_file(tmp_path, synthetic, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train_maxsquare_norm.main(
            [
                "--config",
                "configs/demo/maxsquare_source.yaml",
                *synthetic,
                *TINY,
                override,
                f"train.out_dir={tmp_path / 'runs'}",
            ]
        )
    assert not (tmp_path / "runs").exists()


def test_a_missing_init_from_names_the_key_and_the_config_that_writes_it(tmp_path, monkeypatch):
    """The MaxSquare demo before its source stage: the error names model.init_from and the
    stage's config, before any file is written."""
    config = str(ROOT / "configs" / "demo" / "maxsquare_norm.yaml")
    monkeypatch.chdir(tmp_path)  # where no source stage has run
    with pytest.raises(ConfigError) as refused:
        train_maxsquare_norm.main(["--config", config, "train.device=cpu"])
    assert str(refused.value) == (
        "model.init_from=runs/demo/maxsquare_source/checkpoints/last.pth: no such file; it is "
        "the checkpoint of a run of configs/demo/maxsquare_source.yaml: train that first"
    )
    with pytest.raises(ConfigError, match="model.init_from=x.pth: no such file; point it at"):
        train_maxsquare_norm.main(["--config", config, "model.init_from=x.pth"])
    assert list(tmp_path.iterdir()) == []


def test_multi_needs_c1_on_layer3():
    cfg = load_config(None, ["model.preset=", "model.multi_level=false", "model.predict_with=c2",
                             "loss.maxsquare.multi=true"])  # fmt: skip
    with pytest.raises(ConfigError, match="loss.maxsquare.multi=true needs C1 on layer3"):
        train_maxsquare_norm.check(cfg)


def test_resumed_iw_multi_norm_run_equals_uninterrupted(tmp_path, synthetic):
    def run(name, steps, resume=None):
        args = (["--resume", str(resume)] if resume else
                ["--config", "configs/demo/maxsquare_iw_multi_norm.yaml", *synthetic, *TINY,
                 "model.init_from=", f"train.out_dir={tmp_path}", f"train.run_name={name}",
                 "train.save_every=0"])  # fmt: skip
        assert train_maxsquare_norm.main([*args, f"train.max_steps={steps}"]) == 0
        return tmp_path / name

    full = run("full", 4)
    part = run("part", 2)
    run("part", 4, resume=part)

    def logged(folder):
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return [
            {k: v for k, v in r.items() if "sec_per_step" not in k}
            for r in rows
            if "train/loss_seg" in r
        ]  # (not the evaluations)

    a, b = logged(full), logged(part)
    assert a == b and len(a) == 4
    assert {"train/loss_target", "train/loss_target_aux", "train/loss_norm_t"} <= set(a[-1])


def test_bf16_keeps_the_target_losses_in_float32_and_trains(small_model, small_batches):
    from conftest import state_weights

    from utils.distributed import DistInfo
    from utils.training.state import prepare

    state = _state(small_model, "train.amp=bf16", "loss.maxsquare.image_wise=true",
                   "loss.maxsquare.multi=true", "loss.maxsquare.threshold=0.1")  # fmt: skip
    prepare(state, DistInfo())
    before = state_weights(state)
    terms = train_maxsquare_norm.train_step(state, *small_batches, 20)
    for name in ("loss_seg", "loss_seg_aux", "loss_target", "loss_target_aux", "loss_norm_t"):
        assert terms[name].dtype == torch.float32 and torch.isfinite(terms[name]), name
    after = state_weights(state)
    for name in ("G.layer1.0.conv1.weight", "G.layer5.conv2d_list.0.weight",
                 "G.layer6.conv2d_list.0.weight"):  # fmt: skip
        assert not torch.equal(before[name], after[name]), name


@pytest.mark.parametrize("script", [train_clan_norm, train_norm_only], ids=["clan", "norm_only"])
def test_the_other_scripts_refuse_maxsquare_keys_rather_than_ignore_them(
    tmp_path, synthetic, script
):
    name = f"{script.__name__}.py"
    message = (
        f"invalid config for {name}:\n  loss.maxsquare.image_wise=True: a key of "
        f"MaxSquare's target losses (train_maxsquare_norm.py); {name} has no use for it"
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        script.main(["--config", f"configs/demo/{script.SETUP}.yaml", *synthetic, *TINY_TRAIN,
                     "train.device=cpu", "loss.maxsquare.image_wise=true",
                     f"train.out_dir={tmp_path / 'runs'}"])  # fmt: skip
    assert not (tmp_path / "runs").exists()
    # at its default the key is no one's business: the script's own check passes
    script.check(load_config(f"configs/demo/{script.SETUP}.yaml"))
