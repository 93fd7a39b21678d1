"""Tests for the DeepLab-v2 network G (model/deeplabv2.py); CPU only, no downloaded weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model.contract import Segmenter
from model.deeplabv2 import DeepLabV2, SegOutput

RESNET101 = (3, 4, 23, 3)  # blocks per stage

FULL_PARAMS = 45_301_976  # ResNet-101 without fc (42,500,160) + 2 x 4 ASPP convs 2048 -> 19
SMALL = {"num_classes": 5, "layers": (1, 1, 1, 1), "base_width": 16}  # 512 feature channels
ALLOWED_PREFIXES = ("conv1.", "bn1.", *(f"layer{i}." for i in range(1, 7)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def full_model() -> DeepLabV2:
    return DeepLabV2(19, layers=RESNET101).eval()


def meta_model(**kwargs: object) -> DeepLabV2:
    """A full-size model on the meta device: real structure and shapes, no memory or compute."""
    with torch.device("meta"):
        return DeepLabV2(**{"num_classes": 19, "layers": RESNET101, **kwargs})


def small_model(**kwargs: object) -> DeepLabV2:
    return DeepLabV2(**{**SMALL, **kwargs})


def bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k
    }


def test_full_parameter_count(full_model: DeepLabV2) -> None:
    assert sum(p.numel() for p in full_model.parameters()) == FULL_PARAMS
    assert full_model.layer4[-1].conv3.out_channels == 2048  # the channels of F


def test_full_state_dict_keys(full_model: DeepLabV2) -> None:
    keys = set(full_model.state_dict())
    for key in (
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.running_var",
        "layer3.0.downsample.0.weight",
        "layer4.0.downsample.1.weight",
        "layer3.22.conv3.weight",
        "layer4.2.bn3.bias",
        "layer5.conv2d_list.3.bias",
        "layer6.conv2d_list.0.weight",
    ):
        assert key in keys
    assert all(k.startswith(ALLOWED_PREFIXES) for k in keys)
    assert "layer3.23.conv1.weight" not in keys
    assert "layer1.1.downsample.0.weight" not in keys
    assert not any(k.startswith("layer5.conv2d_list.4") for k in keys)
    assert not any(".conv1.bias" in k or ".conv2.bias" in k or ".conv3.bias" in k for k in keys)
    block = {k.split(".", 2)[2] for k in keys if k.startswith("layer2.0.")}
    assert {name.rsplit(".", 1)[0] for name in block} == {
        "conv1",
        "bn1",
        "conv2",
        "bn2",
        "conv3",
        "bn3",
        "downsample.0",
        "downsample.1",
    }


def test_full_conv_geometry(full_model: DeepLabV2) -> None:
    assert full_model.layer2[0].conv1.stride == (2, 2)  # caffe style: stride on the 1x1 conv
    assert full_model.layer2[0].conv2.stride == (1, 1)
    assert full_model.layer2[0].downsample[0].stride == (2, 2)
    assert all(b.conv2.dilation == (2, 2) == b.conv2.padding for b in full_model.layer3)
    assert all(b.conv2.dilation == (4, 4) == b.conv2.padding for b in full_model.layer4)
    assert full_model.maxpool.ceil_mode
    convs = full_model.layer6.conv2d_list
    assert [c.dilation[0] for c in convs] == [c.padding[0] for c in convs] == [6, 12, 18, 24]


def test_multi_level_c1_reads_layer3() -> None:
    model = meta_model(multi_level=True)
    assert model.layer5.conv2d_list[0].weight.shape == (19, 1024, 3, 3)
    assert model.layer6.conv2d_list[0].weight.shape == (19, 2048, 3, 3)


def test_two_branches_have_two_convs() -> None:
    keys = set(meta_model(aspp_branches=2).state_dict())
    assert "layer5.conv2d_list.1.weight" in keys
    assert "layer5.conv2d_list.2.weight" not in keys
    assert "layer6.conv2d_list.2.bias" not in keys


def test_full_model_shapes_at_512x1024_on_meta() -> None:
    # A real CPU forward at 512x1024 takes ~14 s; the meta device checks the exact shapes.
    out = meta_model()(torch.empty(1, 3, 512, 1024, device="meta"))
    assert out.p1.shape == out.p2.shape == (1, 19, 65, 129)
    assert out.features.shape == (1, 2048, 65, 129)


def test_full_model_runs(full_model: DeepLabV2) -> None:
    with torch.no_grad():
        out = full_model(torch.randn(1, 3, 128, 256))
    assert isinstance(out, SegOutput)
    assert out.p1.shape == out.p2.shape == (1, 19, 17, 33)
    assert out.features.shape == (1, 2048, 17, 33)
    assert torch.isfinite(out.features).all()


@pytest.mark.parametrize(("size", "expected"), [((512, 1024), (65, 129)), ((128, 256), (17, 33))])
def test_small_model_output_stride_8(size: tuple[int, int], expected: tuple[int, int]) -> None:
    model = small_model().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.features.shape == (1, 512, *expected)
    assert out.p1.shape == out.p2.shape == (1, 5, *expected)


@pytest.mark.parametrize("multi_level", [False, True])
def test_every_trainable_parameter_gets_gradient(multi_level: bool) -> None:
    model = small_model(multi_level=multi_level).train()
    out = model(torch.randn(2, 3, 64, 64))
    (out.p1.sum() + out.p2.sum() + out.features.norm()).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_bn_affine_params_frozen_and_outside_param_groups() -> None:
    model = small_model()
    bn_params = [
        p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()
    ]
    assert bn_params and not any(p.requires_grad for p in bn_params)
    grouped = {id(p) for g in model.param_groups(0.1) for p in g["params"]}
    assert not grouped & {id(p) for p in bn_params}


def test_param_groups_cover_trainable_params_once() -> None:
    model = small_model()
    backbone, heads = model.param_groups(2.5e-4)
    assert (backbone["name"], backbone["lr"], backbone["lr_mult"]) == ("backbone", 2.5e-4, 1.0)
    assert (heads["name"], heads["lr"], heads["lr_mult"]) == ("classifiers", 2.5e-3, 10.0)
    head_ids = {id(p) for p in [*model.layer5.parameters(), *model.layer6.parameters()]}
    assert {id(p) for p in heads["params"]} == head_ids
    grouped = [id(p) for g in (backbone, heads) for p in g["params"]]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in model.parameters() if p.requires_grad}
    torch.optim.SGD(model.param_groups(2.5e-4), lr=2.5e-4, momentum=0.9)


def test_heads_false_skips_classifiers() -> None:
    model = small_model().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        full, bare = model(x), model(x, heads=False)
    assert bare.p1 is None and bare.p2 is None
    assert torch.equal(bare.features, full.features)


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_bn_stats(freeze: bool) -> None:
    model = small_model(freeze_bn_stats=freeze)
    before = bn_buffers(model)
    model.eval().train()
    assert model.training
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.training != freeze for m in bns)
    model(torch.randn(2, 3, 64, 64))
    after = bn_buffers(model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert (not changed) if freeze else len(changed) == len(before)


def test_predict_sum_and_c2() -> None:
    x = torch.randn(1, 3, 64, 64)
    summed = small_model(predict_with="sum").eval()
    with torch.no_grad():
        out = summed(x)
    assert torch.equal(summed.predict(out), out.p1 + out.p2)
    c2 = small_model(predict_with="c2").eval()
    assert torch.equal(c2.predict(out), out.p2)
    with pytest.raises(ValueError, match="heads=False"):
        summed.predict(out._replace(p1=None, p2=None))
    # the heads that predict() combines: what a self-training setup trains
    assert summed.predicted_heads(out) == (out.p1, out.p2) and c2.predicted_heads(out) == (out.p2,)


def test_deeplabv2_meets_the_model_contract_that_the_rest_uses() -> None:
    assert isinstance(small_model(), Segmenter)
    assert not isinstance(nn.Conv2d(3, 3, 1), Segmenter)  # a module without G's methods
    # outside model/, G is known by its contract only: no module imports the family's class
    root = Path(__file__).resolve().parent.parent
    users = [p for p in [*root.glob("*.py"), *(root / "utils").rglob("*.py"),
                         *(root / "benchmarks").rglob("*.py")]
             if "model.deeplabv2" in p.read_text()]  # fmt: skip
    assert users == []


@pytest.mark.parametrize("multi_level", [False, True])
def test_classifier_weights(multi_level: bool) -> None:
    model = small_model(multi_level=multi_level)
    w1, w2 = model.classifier_weights()
    assert w1.ndim == w2.ndim == 1
    assert w1.numel() == sum(p.numel() for p in model.layer5.parameters())
    assert w2.numel() == sum(p.numel() for p in model.layer6.parameters())
    first = model.layer5.conv2d_list[0].weight
    assert torch.equal(w1[: first.numel()], first.flatten())
    (w1.sum() + w2.square().sum()).backward()
    for p in [*model.layer5.parameters(), *model.layer6.parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_classifier_weights_cosine_has_gradient() -> None:
    model = small_model()
    w1, w2 = model.classifier_weights()
    (F.cosine_similarity(w1, w2, dim=0) + 1).backward()
    assert all(p.grad is not None for p in model.layer5.parameters())
    assert all(p.grad is not None for p in model.layer6.parameters())


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"aspp_branches": 3}, "3"),
        ({"predict_with": "c1"}, "'c1'"),
        ({"num_classes": 0}, "0"),
        ({"layers": (1, 1, 1)}, r"\(1, 1, 1\)"),
        ({"layers": (1, 0, 1, 1)}, r"\(1, 0, 1, 1\)"),
        ({"layers": (1, 1.5, 1, 1)}, "1.5"),
        ({"base_width": -8}, "-8"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, object], bad: str) -> None:
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=rf"{name}.*{bad}"):
        small_model(**kwargs)


def test_building_and_restoring_dispatch_on_the_family() -> None:
    from dataclasses import replace

    from conftest import tiny_cfg

    from model.build import FAMILIES, build_model, restore_model
    from model.weights import Weights
    from utils.checkpoint import CheckpointError
    from utils.config import ARCHS

    built = build_model(tiny_cfg())
    assert set(FAMILIES) == set(ARCHS) and isinstance(built, DeepLabV2)
    # a file from elsewhere: the family whose layouts hold it; an unknown layout is refused
    file = Weights("theirs.pth", "deeplab_v2", built.state_dict(), None, ())
    restored = restore_model(tiny_cfg(), file)
    assert isinstance(restored.model, DeepLabV2) and restored.config.arch == "deeplabv2"
    with pytest.raises(CheckpointError, match="theirs.pth: no network family reads layout 'x'"):
        restore_model(tiny_cfg(), replace(file, layout="x"))
