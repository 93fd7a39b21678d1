"""DACS + Norm (train_dacs_norm.py): each term's weight, the teacher (its EMA, no gradient,
checkpointed), the step's random stream, the config it refuses, and an exact resume."""

import json
import re

import pytest
import torch
from conftest import TINY_TRAIN, dacs_run, spy_terms, step_rows

import train_clan_norm
import train_dacs_norm
import train_maxsquare_norm
import train_norm_only
from dataset.datasets import Batch
from utils.config import ConfigError, load_config

DACS = ["model.preset=dacs", "train.device=cpu", "optim.warmup_steps=0",
        "optim.schedule_steps=1000"]  # fmt: skip
TINY = [*TINY_TRAIN, "train.device=cpu", "optim.schedule_steps=12"]


def _state(small_model, *overrides):
    torch.manual_seed(0)
    cfg = load_config(None, [*small_model, *DACS, *overrides])
    return train_dacs_norm.build(cfg, torch.device("cpu"))


def _batches(seed=0):
    gen = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 19, (2, 48, 64), generator=gen)
    label[:, :4] = 255
    source = Batch(torch.randn(2, 3, 48, 64, generator=gen), label, ["s0", "s1"])
    return source, Batch(torch.randn(2, 3, 48, 64, generator=gen), None, ["t0", "t1"])


def test_dacs_norm_terms_enter_the_one_total_with_their_weight(monkeypatch, small_model):
    state = _state(small_model, "loss.lambda_norm=0.5", "loss.dacs.lambda_mix=0.25",
                   "data.batch_size=2")  # fmt: skip
    seen = spy_terms(monkeypatch, train_dacs_norm, ["cross_entropy", "stepwise_norm_loss",
                                                     "pixel_weighted_cross_entropy"])  # fmt: skip
    train_dacs_norm.train_step(state, *_batches(), 5)
    d_norm = 1 - 1.5 * 5 / 1000
    assert [(r["name"], r["grad"]) for r in seen] == [
        ("cross_entropy", 1.0),  # C2 on the source (DACS's one classifier)
        ("pixel_weighted_cross_entropy", pytest.approx(0.25)),  # C2 on the mixed images
        ("stepwise_norm_loss", pytest.approx(0.5 * d_norm)),  # source features
        ("stepwise_norm_loss", pytest.approx(0.5 * d_norm)),  # mixed-image features
    ]


def test_with_both_heads_each_head_has_both_terms(monkeypatch, small_model):
    state = _state(small_model, "model.preset=clan", "loss.dacs.lambda_mix=0.5",
                   "data.batch_size=2")  # fmt: skip
    seen = spy_terms(monkeypatch, train_dacs_norm, ["cross_entropy",
                                                     "pixel_weighted_cross_entropy"])  # fmt: skip
    train_dacs_norm.train_step(state, *_batches(), 5)
    assert [(r["name"], r["grad"]) for r in seen] == [
        ("cross_entropy", 1.0), ("cross_entropy", 1.0),
        ("pixel_weighted_cross_entropy", pytest.approx(0.5)),
        ("pixel_weighted_cross_entropy", pytest.approx(0.5)),
    ]  # fmt: skip


def _grads(state):
    return {n: p.grad.clone() for n, p in state.model.named_parameters() if p.grad is not None}


def test_the_mixed_term_reaches_the_backbone_and_only_c2_trains(small_model):
    grads = {}
    for lam in ("0", "1"):
        state = _state(small_model, f"loss.dacs.lambda_mix={lam}", "data.batch_size=2",
                       "loss.dacs.threshold=0")  # every target pixel weighs 1  # fmt: skip
        state.optimizers["G"].step = lambda: None  # keep the gradients
        train_dacs_norm.train_step(state, *_batches(), 3)
        grads[lam] = _grads(state)
    assert not any(n.startswith("layer5.") for n in grads["1"])  # C1: no gradient at all
    for name in ("layer1.0.conv1.weight", "layer4.0.conv2.weight", "layer6.conv2d_list.0.weight"):
        assert not torch.equal(grads["0"][name], grads["1"][name]), name


def test_the_teacher_takes_no_gradient_and_follows_the_ema(small_model):
    state = _state(small_model, "data.batch_size=2")
    teacher, student = state.modules["teacher"], state.modules["G"]
    train_dacs_norm.train_step(state, *_batches(), 0)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        assert torch.equal(t, s)  # step 0: alpha_0 = 0, the teacher is the student
    before = [t.clone() for t in teacher.parameters()]
    terms = train_dacs_norm.train_step(state, *_batches(1), 1)
    assert terms["ema_alpha"] == 0.5  # min(1 - 1/2, 0.99)
    for b, t, s in zip(before, teacher.parameters(), student.parameters(), strict=True):
        torch.testing.assert_close(t, 0.5 * b + 0.5 * s)


def test_step_values_are_a_function_of_seed_and_step(small_model):
    cfg = load_config(None, [*small_model, *DACS, "data.batch_size=2"])
    a, b = train_dacs_norm.step_values(cfg, 7), train_dacs_norm.step_values(cfg, 7)
    c = train_dacs_norm.step_values(cfg, 8)
    other = load_config(None, [*small_model, *DACS, "data.batch_size=2", "train.seed=5"])
    for key in ("mix_keys", "jitter", "blur_sigma"):
        assert torch.equal(a[key], b[key]), key
        assert not torch.equal(a[key], c[key]), key
        assert not torch.equal(a[key], train_dacs_norm.step_values(other, 7)[key]), key
    assert a["mix_keys"].shape == (2, 256) and a["jitter"].shape == (2, 4)


def test_the_logged_share_and_weight_are_those_of_the_step(small_model):
    state = _state(small_model, "data.batch_size=2", "loss.dacs.threshold=0")
    terms = train_dacs_norm.train_step(state, *_batches(), 3)
    assert float(terms["pseudo_weight"]) == 1.0  # threshold 0: every pixel is confident
    assert 0 < float(terms["mix_share"]) < 1


@pytest.mark.parametrize(
    "override, message",
    [
        ("loss.lambda_adv=0.5", "loss.lambda_adv=0.5: a key of CLAN's discriminator"),
        ("loss.maxsquare.image_wise=true", "loss.maxsquare.image_wise=True: a key of MaxSquare's"),
        (
            "data.target.crop=[64,32]",
            "DACS pastes source pixels onto target images of the same "
            "size; got source [96, 48], target [64, 32]",
        ),
    ],
)
def test_keys_it_cannot_train_are_refused_before_any_file(tmp_path, synthetic, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        train_dacs_norm.main(["--config", "configs/demo/dacs_norm.yaml", *synthetic, *TINY,
                              override, f"train.out_dir={tmp_path / 'runs'}"])  # fmt: skip
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("script", [train_clan_norm, train_norm_only, train_maxsquare_norm],
                         ids=["clan", "norm_only", "maxsquare"])  # fmt: skip
@pytest.mark.parametrize("key", ["loss.dacs.lambda_mix=2", "eval.model=teacher"])
def test_the_other_scripts_refuse_dacs_keys_rather_than_ignore_them(
    tmp_path, synthetic, script, key
):
    name = f"{script.__name__}.py"
    config = "configs/demo/maxsquare_source.yaml" if script is train_maxsquare_norm else (
        f"configs/demo/{script.SETUP}.yaml")  # fmt: skip
    with pytest.raises(
        ConfigError,
        match=re.escape(f"a key of DACS's self-training (train_dacs_norm.py); {name} has no use"),
    ):
        script.main(["--config", config, *synthetic, *TINY, key,
                     f"train.out_dir={tmp_path / 'runs'}"])  # fmt: skip
    assert not (tmp_path / "runs").exists()


def test_resumed_run_equals_uninterrupted_teacher_and_augmentation_included(tmp_path, synthetic):
    full = dacs_run(tmp_path, synthetic, "full", 4, "loss.dacs.threshold=0.2")
    part = dacs_run(tmp_path, synthetic, "part", 2, "loss.dacs.threshold=0.2")
    dacs_run(tmp_path, synthetic, "part", 4, resume=part)
    a, b = step_rows(full), step_rows(part)
    assert a == b and len(a) == 4
    assert {"train/loss_mix", "train/loss_norm_m", "train/pseudo_weight"} <= set(a[-1])
    ckpt_a = torch.load(full / "checkpoints" / "last.pth", weights_only=True)
    ckpt_b = torch.load(part / "checkpoints" / "last.pth", weights_only=True)
    assert set(ckpt_a["models"]) == {"G", "teacher"}
    for model in ("G", "teacher"):
        for key, value in ckpt_a["models"][model].items():
            assert torch.equal(value, ckpt_b["models"][model][key]), f"{model}.{key}"


def test_eval_model_teacher_scores_the_teacher_and_says_so(tmp_path, synthetic, monkeypatch):
    import utils.training.loop as loop

    built, scored = {}, []
    build, evaluate = train_dacs_norm.build, loop.evaluate_views
    monkeypatch.setattr(train_dacs_norm, "build", lambda cfg, dev: built.setdefault(
        "state", build(cfg, dev)))  # fmt: skip
    monkeypatch.setattr(loop, "evaluate_views", lambda model, *a, **k: (
        scored.append(model), evaluate(model, *a, **k))[1])  # fmt: skip
    for name in ("student", "teacher"):
        built.clear()
        run = dacs_run(tmp_path, synthetic, name, 2, f"eval.model={name}")
        module = built["state"].modules["G" if name == "student" else "teacher"]
        assert scored[-1] is module
        assert json.loads((run / "results.json").read_text())["protocol"]["model"] == name


def test_evaluate_cityscapes_scores_the_model_eval_model_names(tmp_path, synthetic):
    import evaluate_cityscapes
    from utils.checkpoint import CheckpointError

    run = dacs_run(tmp_path, synthetic, "run", 2, "eval.model=teacher")
    last = run / "checkpoints" / "last.pth"
    trained = json.loads((run / "results.json").read_text())

    def score(path, *overrides):
        out = tmp_path / f"{len(list(tmp_path.glob('*.json')))}.json"
        assert evaluate_cityscapes.main(["--restore", str(path), "--results", str(out),
                                         *overrides]) == 0  # fmt: skip
        return json.loads(out.read_text())

    teacher = score(last)  # the run's own config: eval.model=teacher
    assert teacher["protocol"]["model"] == "teacher" and teacher["mIoU"] == trained["mIoU"]
    student = score(last, "eval.model=student")
    assert student["protocol"]["model"] == "student"
    ckpt = torch.load(last, weights_only=True)
    del ckpt["models"]["teacher"]
    torch.save(ckpt, tmp_path / "no_teacher.pth")
    with pytest.raises(CheckpointError, match="eval.model=teacher, but the file holds no teacher"):
        score(tmp_path / "no_teacher.pth")


def test_step_values_reach_a_cuda_device_pinned_and_without_a_sync(monkeypatch):
    """``_on_device`` on a CUDA state, with the copy recorded instead of run (no GPU here):
    a host-drawn tensor is pinned, then copied non-blocking; numbers, and tensors already on
    the device or on a CPU state, pass through untouched."""
    calls = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append("pin") or self)

    def to(self, device, non_blocking=False):
        calls.append(("to", str(device), non_blocking))
        return self

    monkeypatch.setattr(torch.Tensor, "to", to)
    cuda = type("State", (), {"device": torch.device("cuda", 0)})()
    drawn = torch.ones(3)
    assert train_dacs_norm._on_device(cuda, drawn) is drawn
    assert calls == ["pin", ("to", "cuda:0", True)]
    calls.clear()
    assert train_dacs_norm._on_device(cuda, 0.5) == 0.5
    cpu = type("State", (), {"device": torch.device("cpu")})()
    assert train_dacs_norm._on_device(cpu, drawn) is drawn
    assert calls == []
