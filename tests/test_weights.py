"""Every public DeepLab-v2 layout loads exactly through the one loader: this repository's
checkpoints, AdaptSegNet, CLAN, FeatureToAdapt, MaxSquare and ADVENT files, the DeepLab-v2 init
file and torchvision's ResNet; presets, class counts, and the errors that name what would fit."""

import pytest
import torch
from conftest import (
    LAYOUT_FILES,
    SIZE,
    TINY_EVAL,
    Evil,
    checkpoint_dict,
    producer,
    tiny_cfg,
    unused_branches,
    without_counters,
    write_layout,
)
from torchvision.models.resnet import Bottleneck, ResNet

from model.build import build_model, preset_name, restore_model
from model.deeplabv2 import DeepLabV2
from model.weights import infer_preset, load_weights, read_weights
from utils.checkpoint import CheckpointError
from utils.config import PRESETS, ConfigError, load_config


@pytest.mark.parametrize("layout", list(LAYOUT_FILES))
def test_every_trained_layout_restores_the_producers_logits(tmp_path, layout):
    path, model, named = write_layout(tmp_path, layout)
    cfg = tiny_cfg(*([f"model.preset={named}"] if named else []))
    restored, _, report = restore_model(cfg, path)
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(restored.eval()(x).features, model(x).features)
        assert torch.equal(restored.predict(restored(x)), model.predict(model(x)))
    assert report.purpose == "restore" and report.loaded == len(model.state_dict())
    assert restored.state_dict().keys() == model.state_dict().keys()


def test_layouts_are_recognised_and_reported(tmp_path, caplog):
    expected = {
        "checkpoint": "checkpoint",
        "clan": "deeplab_v2",
        "feature_to_adapt": "deeplab_v2",
        "adaptsegnet": "deeplab_v2",
        "maxsquare": "maxsquare",
        "advent": "deeplab_v2",
    }
    for layout, name in expected.items():  # fmt: skip
        assert read_weights(write_layout(tmp_path, layout)[0]).layout == name
    path, _, _ = write_layout(tmp_path, "maxsquare")
    with caplog.at_level("INFO"):
        report = load_weights(producer("maxsquare", seed=1), path)
    notes = " ".join(report.notes)
    assert "unwrapped state_dict" in notes and "removed the key prefix 'module.'" in notes
    assert "dropped the stored, unused ASPP branches 2 and 3" in notes
    assert "dropped the stored, unused" in caplog.text
    path, _, _ = write_layout(tmp_path, "adaptsegnet")
    assert "filled" in " ".join(load_weights(producer("adaptsegnet", seed=1), path).notes)


def test_preset_inference(tmp_path):
    assert infer_preset(read_weights(write_layout(tmp_path, "clan")[0])) == "clan"
    assert infer_preset(read_weights(write_layout(tmp_path, "maxsquare")[0])) == "maxsquare"
    for layout in ("adaptsegnet", "advent"):  # the same keys: the file cannot tell
        with pytest.raises(CheckpointError, match="preset=adaptsegnet or maxsquare.*advent"):
            infer_preset(read_weights(write_layout(tmp_path, layout)[0]))
    path = tmp_path / "two.pth"
    torch.save(producer("adaptsegnet").state_dict(), path)  # only the used branches stored
    assert infer_preset(read_weights(path)) == "adaptsegnet"


def test_presets_set_the_switches_and_unknown_is_an_error():
    for name, p in PRESETS.items():
        model = build_model(tiny_cfg(f"model.preset={name}", "model.multi_level=true"))
        assert (model.multi_level, model.layer5.branches, model.predict_with) == p
        assert preset_name(tiny_cfg(f"model.preset={name}")) == name
    assert preset_name(tiny_cfg("model.aspp_branches=2")) == "custom"
    with pytest.raises(
        ConfigError, match="model.preset: expected one of clan, adaptsegnet.*got 'deeplab'"
    ):
        build_model(tiny_cfg("model.preset=deeplab"))


def test_mismatches_name_the_layout_that_would_match(tmp_path):
    path, _, _ = write_layout(tmp_path, "maxsquare")
    with pytest.raises(CheckpointError) as err:
        restore_model(tiny_cfg("model.preset=clan"), path)
    assert "shape mismatches" in str(err.value)
    assert "this looks like a multi-level two-branch model: use model.preset=maxsquare" in str(
        err.value
    )
    path, _, _ = write_layout(tmp_path, "clan")
    with pytest.raises(
        CheckpointError, match="single-level four-branch model: use model.preset=clan"
    ):
        restore_model(tiny_cfg("model.preset=maxsquare"), path)
    with pytest.raises(
        CheckpointError, match="sizes: model.layers=\\[1,1,1,1\\] model.base_width=8"
    ):
        restore_model(tiny_cfg("model.layers=[1,1,2,1]", "model.base_width=16"), path)
    # a four-branch model never loses branches: this repository's ADVENT-style checkpoint
    own = tmp_path / "own.pth"
    torch.save(checkpoint_dict(producer("advent"), [*TINY_EVAL, "model.preset=advent"]), own)
    with pytest.raises(CheckpointError, match="unexpected keys.*conv2d_list.2"):
        restore_model(tiny_cfg("model.preset=maxsquare"), own)


def test_class_count_mismatch_says_both_counts(tmp_path):
    path = tmp_path / "k21.pth"
    torch.save(producer(num_classes=21).state_dict(), path)
    with pytest.raises(
        CheckpointError, match="k21.pth: the file predicts 21 classes, the model 19"
    ):
        restore_model(tiny_cfg("model.preset=clan"), path)


def test_unreadable_and_unknown_files(tmp_path):
    unknown = tmp_path / "unknown.pth"
    torch.save({"encoder.stem.weight": torch.zeros(1), "head.weight": torch.zeros(1)}, unknown)
    with pytest.raises(CheckpointError) as err:
        read_weights(unknown)
    text = str(err.value)
    assert (
        "unknown weights layout" in text and "first keys: encoder.stem.weight, head.weight" in text
    )
    assert all(desc in text for desc in ("MaxSquare", "torchvision", "'Scale.' prefix"))
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(CheckpointError, match="expected a dict of weights"):
        read_weights(tmp_path / "tensor.pth")
    torch.save({"conv1.weight": torch.zeros(1), "step": 3}, tmp_path / "mixed.pth")
    with pytest.raises(CheckpointError, match="key 'step' holds a int"):
        read_weights(tmp_path / "mixed.pth")
    torch.save({"models": {"D": {}}}, tmp_path / "noG.pth")
    with pytest.raises(CheckpointError, match="without models.G"):
        read_weights(tmp_path / "noG.pth")
    torch.save({"state_dict": {"conv1.weight": Evil()}}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="evil.pth: refused by the safe loader"):
        read_weights(tmp_path / "evil.pth")
    path, _, _ = write_layout(tmp_path, "clan")
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="clan.pth: cannot be read"):
        read_weights(path)


def test_deeplab_init_file_gives_the_backbone(tmp_path):
    coco = producer(num_classes=21)  # the init file: its own 21-class layer5, no layer6
    state = {f"Scale.{k}": v for k, v in without_counters(coco.state_dict()).items()
             if not k.startswith("layer6.")}  # fmt: skip
    path = tmp_path / "DeepLab_resnet_pretrained_init.pth"
    torch.save(state, path)
    torch.manual_seed(5)
    fresh = build_model(tiny_cfg())
    torch.manual_seed(5)
    model = build_model(tiny_cfg(f"model.init_from={path}")).eval()
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(model(x).features, coco(x).features)
    for head in ("layer5", "layer6"):
        for k, v in getattr(fresh, head).state_dict().items():
            assert torch.equal(getattr(model, head).state_dict()[k], v)
    report = load_weights(DeepLabV2(**SIZE), path, purpose="init")
    assert report.layout == "deeplab_init" and len(report.kept_init) == 16
    notes = " ".join(report.notes)
    assert "C1 (layer5) kept at its initial values: 21 classes in the file, 19" in notes
    assert "C2 (layer6) kept at its initial values: not in the file" in notes
    with pytest.raises(CheckpointError, match="holds initial weights.*model.init_from"):
        restore_model(tiny_cfg("model.preset=clan"), path)


def test_torchvision_resnet_gives_the_backbone(tmp_path):
    torch.manual_seed(0)
    tv = ResNet(Bottleneck, [1, 1, 1, 1])
    path = tmp_path / "resnet101.pth"
    torch.save(tv.state_dict(), path)
    torch.manual_seed(3)
    model = DeepLabV2(layers=(1, 1, 1, 1), base_width=64)
    heads = {
        k: v.clone() for k, v in model.state_dict().items() if k.startswith(("layer5", "layer6"))
    }
    report = load_weights(model, path, purpose="init")
    assert report.layout == "torchvision"
    assert "dropped the ImageNet classifier (fc.weight, fc.bias)" in report.notes
    own = model.state_dict()
    for k, v in tv.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(own[k], v), k
    for k, v in heads.items():
        assert torch.equal(own[k], v), k
    with pytest.raises(CheckpointError, match="backbone only"):
        load_weights(model, path, purpose="restore")


def test_a_16_class_file_loads_with_its_class_count(tmp_path, synthetic, caplog):
    model = producer("maxsquare", num_classes=16)
    path = tmp_path / "SYNTHIA_MaxSquare.pth"
    state = {f"module.{k}": v for k, v in {**model.state_dict(), **unused_branches(model)}.items()}
    torch.save({"epoch": 1, "state_dict": state}, path)
    cfg = load_config(None, TINY_EVAL)
    with caplog.at_level("INFO"):
        restored = restore_model(cfg.model, path)
    assert restored.config.num_classes == 16 and preset_name(restored.config) == "maxsquare"
    assert restored.report.num_classes == 16 and "16 classes (the SYNTHIA 16" in str(
        restored.report
    )
    assert "preset maxsquare inferred from the file, 16 classes (the SYNTHIA 16" in caplog.text
    for a, b in zip(restored.model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    five = tmp_path / "five.pth"
    torch.save(producer("clan", num_classes=5).state_dict(), five)
    with pytest.raises(CheckpointError, match="predicts 5 classes, the model 19"):
        restore_model(cfg.model, five)  # no class mapping for 5 outputs: not adopted
