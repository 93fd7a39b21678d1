"""DAFormer's network (MiT encoder + DAFormer head) and its weights files: sizes, key names and
parameter counts from DAFormer's definitions, the attention and the stages worked out by hand,
the contract, the optimizer groups, and every layout it reads (SegFormer's ImageNet encoders,
DAFormer's / MIC's checkpoints) with the errors that name what would fit."""

import logging

import pytest
import torch
import torch.nn.functional as F
from conftest import bf16_head_gradient_errors

from dataset.transforms import normalize
from model.build import build_model, restore_model
from model.contract import Segmenter
from model.daformer import DAFormer
from model.mit import MIT_VARIANTS, Attention
from model.weights import read_weights, scored_weights
from utils.checkpoint import CheckpointError
from utils.config import MIT_BACKBONES, ConfigError, load_config

# (encoder, head with 19 classes): counted on DAFormer's mix_transformer.py and
# daformer_head.py as its daformer_sepaspp_mitb5 config builds them
PARAMETERS = {
    "mit_b0": (3_319_392, 3_581_203),
    "mit_b1": (13_151_424, 3_712_275),
    "mit_b2": (24_196_288, 3_712_275),
    "mit_b3": (44_072_128, 3_712_275),
    "mit_b4": (60_842_688, 3_712_275),
    "mit_b5": (81_443_008, 3_712_275),
}


def small(norm_features="backbone", classes=19):
    """The demo's MiT with a narrow head: quick to run and to write."""
    torch.manual_seed(0)
    return DAFormer(classes, "mit_demo", head_channels=16, norm_features=norm_features)


def cfg(*extra):
    return load_config(None, ["model.arch=daformer", "model.backbone=mit_demo",
                              "model.head_channels=16", *extra]).model  # fmt: skip


@pytest.mark.parametrize("variant", list(PARAMETERS))
def test_parameter_counts_match_daformers_code(variant):
    with torch.device("meta"):
        model = DAFormer(19, variant)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(model.backbone), count(model.decode_head)) == PARAMETERS[variant]
    depths = MIT_VARIANTS[variant].depths
    assert [len(getattr(model.backbone, f"block{i}")) for i in range(1, 5)] == list(depths)


def test_the_config_names_every_mit_size_the_network_builds():
    assert set(MIT_BACKBONES) == set(MIT_VARIANTS)


def test_key_names_and_layer_norm_epsilons_are_the_released_ones():
    model = small()
    keys = set(model.state_dict())
    expected = [
        "backbone.patch_embed1.proj.weight",
        "backbone.block1.0.attn.sr.weight",
        "backbone.block1.0.attn.norm.bias",
        "backbone.block2.0.mlp.dwconv.dwconv.weight",
        "backbone.norm4.weight",
        "decode_head.embed_layers.3.proj.weight",
        "decode_head.fuse_layer.aspp_modules.0.conv.weight",
        "decode_head.fuse_layer.aspp_modules.3.depthwise_conv.bn.running_var",
        "decode_head.fuse_layer.aspp_modules.3.pointwise_conv.conv.weight",
        "decode_head.fuse_layer.bottleneck.bn.weight",
        "decode_head.conv_seg.bias",
    ]
    for key in expected:
        assert key in keys, key
    assert "backbone.block4.0.attn.sr.weight" not in keys  # reduction 1: no reduced map
    mit = model.backbone
    assert mit.block1[0].norm1.eps == mit.norm1.eps == 1e-6
    assert mit.patch_embed1.norm.eps == mit.block1[0].attn.norm.eps == 1e-5
    fuse = model.decode_head.fuse_layer
    dilations = [m.depthwise_conv.conv.dilation[0] for m in fuse.aspp_modules[1:]]
    assert dilations == [6, 12, 18] and fuse.aspp_modules[0].conv.kernel_size == (1, 1)
    assert model.decode_head.dropout.p == 0.1


def test_stochastic_depth_rises_linearly_to_a_tenth():
    with torch.device("meta"):
        mit = DAFormer(19, "mit_b2").backbone
    rates = [b.drop_path for i in range(1, 5) for b in getattr(mit, f"block{i}")]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)
    steps = torch.tensor(rates).diff()
    assert torch.allclose(steps, torch.full_like(steps, 0.1 / 15))


def test_attention_is_softmax_of_queries_and_reduced_keys_times_values():
    torch.manual_seed(1)
    att = Attention(dim=8, heads=2, reduction=2).eval()
    h, w = 4, 6
    x = torch.randn(3, h * w, 8)
    # by hand: keys and values from the 2x2-strided, normalised map
    q = att.q(x).view(3, h * w, 2, 4).transpose(1, 2)
    grid = x.transpose(1, 2).reshape(3, 8, h, w)
    reduced = att.norm(att.sr(grid).flatten(2).transpose(1, 2))  # 3 x 6 x 8
    k, v = att.kv(reduced).view(3, 6, 2, 2, 4).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-2, -1) / 4**0.5, dim=-1)
    expected = att.proj((weights @ v).transpose(1, 2).reshape(3, h * w, 8))
    with torch.no_grad():
        assert torch.allclose(att(x, h, w), expected, atol=1e-6)


@pytest.mark.parametrize("place", ["backbone", "decoder"])
def test_outputs_meet_the_contract_at_strides_4_to_32(place):
    model = small(place).eval()
    assert isinstance(model, Segmenter)
    out = model(torch.randn(2, 3, 96, 160))
    assert [tuple(s.shape) for s in out.stages] == [
        (2, 32, 24, 40), (2, 64, 12, 20), (2, 160, 6, 10), (2, 256, 3, 5)]  # fmt: skip
    assert out.p1 is None and out.p2.shape == (2, 19, 96, 160)  # resized to the input's size
    assert model.predict(out) is out.p2 and model.predicted_heads(out) == (out.p2,)
    expected = out.stages[-1] if place == "backbone" else (2, 16, 24, 40)
    assert out.features is expected if place == "backbone" else out.features.shape == expected


def test_decoder_features_are_the_fused_map_the_classifier_reads():
    model = small("decoder").eval()
    out = model(torch.randn(1, 3, 64, 64))
    logits = model.decode_head.conv_seg(out.features)  # 1 x 19 x 16 x 16, stride 4
    resized = F.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.allclose(resized, out.p2, atol=1e-6)
    assert out.features.min() >= 0  # after the bottleneck's ReLU
    alone = model(torch.randn(1, 3, 64, 64), heads=False)  # a features-only pass
    assert alone.p2 is None and alone.features.shape == out.features.shape


def test_the_input_is_turned_into_daformers_normalisation():
    rgb = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    ours = small().own_input(normalize(rgb))  # the datasets' BGR minus DeepLab-v2's mean
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    assert torch.allclose(ours, (rgb.float() - mean) / std, atol=1e-6)
    assert "shift" not in small().state_dict()  # not a weight: files do not hold it


def test_bf16_gradients_on_the_cpu_follow_float32s_in_every_head_layer():
    """Under CPU bf16 autocast each head parameter's gradient is float32's up to bf16 rounding.
    (PyTorch's CPU bf16 kernel for a dilated depthwise convolution's weight gradient is wrong
    on channels_last inputs, which the fused stages are: that gradient was over 100% off.)"""
    errors = bf16_head_gradient_errors(torch.device("cpu"))
    assert any("depthwise_conv.conv" in n for n in errors)
    assert max(errors.values()) < 0.2, {n: round(e, 3) for n, e in errors.items() if e >= 0.2}


def test_a_features_only_pass_skips_the_head_for_the_backbone_norm(monkeypatch):
    model = small("backbone")
    monkeypatch.setattr(model.decode_head, "forward", lambda s: pytest.fail("head ran"))
    out = model(torch.randn(1, 3, 64, 64), heads=False)
    assert out.p2 is None and out.features.shape == (1, 256, 2, 2)


def test_param_groups_follow_daformers_custom_keys():
    model = small()
    groups = {g["name"]: g for g in model.param_groups(6e-5)}
    names = {id(p): n for n, p in model.named_parameters()}
    head = [names[id(p)] for p in groups["head"]["params"]]
    quiet = [names[id(p)] for p in groups["backbone_norms"]["params"]]
    rest = [names[id(p)] for p in groups["backbone"]["params"]]
    assert all(n.startswith("decode_head.") for n in head) and groups["head"]["lr_mult"] == 10
    assert groups["head"]["lr"] == pytest.approx(6e-4) and "weight_decay" not in groups["head"]
    assert "decode_head.fuse_layer.bottleneck.bn.weight" in head  # "head" matches first
    assert all("norm" in n for n in quiet) and groups["backbone_norms"]["weight_decay"] == 0
    assert "backbone.block1.0.attn.norm.weight" in quiet and "backbone.norm4.bias" in quiet
    assert not any("norm" in n for n in rest) and "backbone.block1.0.attn.q.bias" in rest
    assert sorted(head + quiet + rest) == sorted(names.values())


def test_dropout_and_stochastic_depth_act_in_training_only():
    model = small()
    model.backbone.block4[0].drop_path = 0.5
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).p2, model(x).p2)
        model.train()
        torch.manual_seed(3)
        a = model(x).p2
        torch.manual_seed(4)
        assert not torch.equal(a, model(x).p2)


# ---- weights files ----


def _mmcv(model, teacher=None, imnet=True):
    """A DAFormer / MIC training checkpoint as mmcv writes it."""
    sd = model.state_dict()
    state = {"model." + k: v for k, v in sd.items()}
    state.update({"ema_model." + k: v for k, v in (teacher or sd).items()})
    if imnet:
        state.update({"imnet_model." + k: v for k, v in sd.items()})
    meta = {"mmseg_version": "0.16.0", "CLASSES": ("road", "sidewalk"), "PALETTE": [[128, 64, 128]],
            "iter": 40000}  # fmt: skip
    return {"meta": meta, "state_dict": state}


def _encoder(model, prefix=""):
    """SegFormer's ImageNet file: the encoder's keys and a 1000-class head."""
    sd = {prefix + k.removeprefix("backbone."): v for k, v in model.state_dict().items()
          if k.startswith("backbone.")}  # fmt: skip
    sd[prefix + "head.weight"], sd[prefix + "head.bias"] = torch.randn(1000, 256), torch.zeros(1000)
    return sd


def _same_predictions(a, b):
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        return torch.equal(a.eval()(x).p2, b.eval()(x).p2)


@pytest.mark.parametrize("form", ["daformer", "mic", "bare"])
def test_trained_checkpoints_predict_as_the_model_they_were_written_from(tmp_path, form):
    producer = small()
    path = tmp_path / f"{form}.pth"
    if form == "bare":
        torch.save(producer.state_dict(), path)
    else:
        content = _mmcv(producer)
        if form == "mic":  # MIC's masking module with a teacher of its own
            content["state_dict"].update({"mic.teacher.ema_model." + k: v for k, v in
                                          producer.state_dict().items()})  # fmt: skip
        torch.save(content, path)
    restored, fitted, report = restore_model(load_config(None, ["model.arch=daformer"]).model, path)
    assert (fitted.backbone, fitted.head_channels, fitted.num_classes) == ("mit_demo", 16, 19)
    assert _same_predictions(restored, producer)
    assert report.layout == "daformer" and report.loaded == len(producer.state_dict())


def test_the_student_is_scored_by_default_and_the_teacher_on_request(tmp_path):
    student, teacher = small(), small()
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.1)
    torch.save(_mmcv(student, teacher.state_dict()), tmp_path / "run.pth")
    weights = read_weights(tmp_path / "run.pth")
    assert any("imnet_model" in n for n in weights.notes)
    restored = restore_model(cfg(), weights).model
    assert _same_predictions(restored, student)
    restored = restore_model(cfg(), scored_weights(weights, "teacher")).model
    assert _same_predictions(restored, teacher)


@pytest.mark.parametrize("prefix", ["", "encoder."])
def test_an_imagenet_encoder_loads_strictly_and_its_head_is_dropped(tmp_path, prefix, caplog):
    source = small()
    torch.save(_encoder(source, prefix), tmp_path / "mit.pth")
    with caplog.at_level(logging.INFO):
        model = build_model(cfg(f"model.init_from={tmp_path / 'mit.pth'}"))
    for k, v in source.state_dict().items():
        if k.startswith("backbone."):
            assert torch.equal(model.state_dict()[k], v), k
    assert "dropped the ImageNet classifier (head.weight, head.bias)" in caplog.text
    assert "the head kept at its initial values" in caplog.text


def test_an_encoder_of_another_size_names_the_size_that_fits(tmp_path):
    with torch.device("meta"):
        b0 = DAFormer(19, "mit_b0")
    state = {k: torch.zeros(v.shape) for k, v in _encoder(b0).items()}
    path = tmp_path / "mit_b0.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"mit_b0.pth.*mit_b0 encoder.*mit_demo.*"
                                              r"model.backbone=mit_b0"):  # fmt: skip
        build_model(cfg(f"model.init_from={path}"))
    with pytest.raises(CheckpointError, match="initial weights .*model.init_from"):
        restore_model(cfg(), path)


def test_other_heads_and_other_families_are_refused_by_name(tmp_path):
    sd = small().state_dict()
    hrda = {k.replace("decode_head.", "decode_head.head."): v for k, v in sd.items()}
    hrda["decode_head.scale_attention.conv_seg.weight"] = torch.zeros(19, 16, 1, 1)
    torch.save({"state_dict": {"model." + k: v for k, v in hrda.items()}}, tmp_path / "hrda.pth")
    with pytest.raises(CheckpointError, match=r"hrda.pth: HRDA's .*scale_attention"):
        read_weights(tmp_path / "hrda.pth")
    segformer = {k: v for k, v in sd.items() if not k.startswith("decode_head.")}
    segformer["decode_head.linear_fuse.conv.weight"] = torch.zeros(16, 64, 1, 1)
    torch.save(segformer, tmp_path / "segformer.pth")
    with pytest.raises(CheckpointError, match=r"segformer.pth: the head is not DAFormer's"):
        read_weights(tmp_path / "segformer.pth")
    torch.save(_encoder(small()), tmp_path / "mit.pth")
    family = (
        r"init_from=.*mit.pth: a SegFormer MiT .*model.arch=daformer; this config builds deeplabv2"
    )
    with pytest.raises(CheckpointError, match=family):
        build_model(load_config(None, [f"model.init_from={tmp_path / 'mit.pth'}"]).model)


def test_family_keys_are_checked_where_the_family_is_chosen():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.backbone=mit_b0", "loss.norm_features=decoder"])
    assert "model.backbone=mit_b0: a key of model.arch=daformer" in str(err.value)
    assert "loss.norm_features: DeepLab-v2" in str(err.value)
    with pytest.raises(ConfigError, match="model.backbone: expected one of mit_b0"):
        load_config(None, ["model.arch=daformer", "model.backbone=mit_b7"])
    built = build_model(cfg("model.layers=[1]"), "decoder")  # DeepLab-v2's keys: not read
    assert isinstance(built, DAFormer) and built.norm_features == "decoder"


def test_an_own_checkpoint_restores_on_the_arch_it_records(tmp_path):
    from utils.config import to_dict

    producer = small()
    full = load_config(None, ["model.arch=daformer", "model.backbone=mit_demo",
                              "model.head_channels=16"])  # fmt: skip
    torch.save({"setup": "norm_only", "step": 1, "models": {"G": producer.state_dict()},
                "config": to_dict(full)}, tmp_path / "own.pth")  # fmt: skip
    weights = read_weights(tmp_path / "own.pth")
    assert weights.layout == "checkpoint"
    restored = restore_model(full.model, weights).model
    assert isinstance(restored, DAFormer) and _same_predictions(restored, producer)


def test_adamw_takes_the_groups_decay_and_the_loop_sets_their_rates():
    from utils.training.optim import OPTIMIZERS

    o = load_config(None, ["model.arch=daformer", "optim.optimizer=adamw", "optim.lr=6e-5",
                           "optim.weight_decay=0.01"]).optim  # fmt: skip
    opt = OPTIMIZERS["adamw"](o, small())
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)
    decay = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert decay == {"backbone": 0.01, "backbone_norms": 0.0, "head": 0.01}
    with pytest.raises(ConfigError, match="backbone_updates=released: the released update is SGD"):
        load_config(None, ["optim.optimizer=adamw", "optim.backbone_updates=released"])


# ---- training ----

DAFORMER_RUN = [
    *("model.arch=daformer", "model.backbone=mit_demo", "model.head_channels=8"),
    *("optim.optimizer=adamw", "optim.lr=6e-4", "optim.weight_decay=0.01"),
    *("optim.warmup_form=mmcv", "loss.norm_features=decoder", "train.image_every=0"),
]


def test_norm_only_trains_daformer_resumes_exactly_and_its_checkpoint_scores(tmp_path, synthetic):
    from conftest import metrics_rows, norm_only_run

    import train_clan_norm
    import train_norm_only
    from utils.checkpoint import load_checkpoint

    full = norm_only_run(tmp_path, synthetic, "full", *DAFORMER_RUN, "train.max_steps=3")
    part = norm_only_run(tmp_path, synthetic, "part", *DAFORMER_RUN, "train.max_steps=2")
    assert train_norm_only.main(["--resume", str(part), "train.max_steps=3"]) == 0

    # dropout and stochastic depth draw from the global RNG: the resumed steps draw as the
    # uninterrupted ones did (the loaders do not draw from it when they start again)
    def losses(run):
        rows = [r for r in metrics_rows(run) if "train/loss_seg" in r]
        return [{k: v for k, v in r.items() if k != "train/sec_per_step"} for r in rows]

    assert losses(full) == losses(part) and len(losses(full)) == 3
    a, b = (load_checkpoint(r / "checkpoints" / "last.pth") for r in (full, part))
    assert all(torch.equal(a["models"]["G"][k], v) for k, v in b["models"]["G"].items())
    assert a["config"]["model"]["arch"] == "daformer"
    # the head's group at 10x the rate
    groups = a["optimizers"]["G"]["param_groups"]
    assert [g["lr_mult"] for g in groups] == [1.0, 1.0, 10.0]
    weights = read_weights(full / "checkpoints" / "last.pth")
    restored = restore_model(cfg("model.head_channels=8"), weights).model
    assert isinstance(restored, DAFormer)
    with pytest.raises(ConfigError, match="model.arch=daformer: train_clan_norm.py trains "
                                          "model.arch=deeplabv2 only"):  # fmt: skip
        train_clan_norm.main(["--config", "configs/demo/clan_norm.yaml", *synthetic, *DAFORMER_RUN])


def test_a_joint_forward_splits_into_each_batchs():
    from model.contract import split_output

    model = small().eval()
    a, b = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        first, second = split_output(model(torch.cat([a, b])), 2)
        alone = model(b)
    assert first.p1 is None and first.p2.shape[0] == 2 and len(second.stages) == 4
    assert torch.allclose(second.p2, alone.p2, atol=1e-5)
    assert all(torch.allclose(s, t, atol=1e-5) for s, t in zip(second.stages, alone.stages))
