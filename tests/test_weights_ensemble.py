"""Every public DeepLab-v2 layout loads exactly (loader, evaluate_cityscapes.py, ensemble.py),
presets, flip averaging and the ensemble's arithmetic and bad inputs."""

import json
import os

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

import ensemble
import evaluate_cityscapes
from dataset.build import build_dataset, ensure_data
from dataset.datasets import eval_loader
from dataset.labels import CLASS_NAMES, CLASS_SUBSETS, SYNTHIA_13, SYNTHIA_16
from model.build import build_model, preset_name, restore_model
from model.deeplabv2 import DeepLabV2
from model.weights import infer_preset, load_weights, read_weights
from utils.checkpoint import CheckpointError
from utils.config import PRESETS, ConfigError, load_config, to_dict
from utils.evaluation.inference import (
    combine_scores,
    evaluate,
    normalise_weights,
    predict_logits,
    predict_scores,
)
from utils.evaluation.metrics import ConfusionMatrix
from utils.evaluation.paper_results import TABLE1, paper_row

TINY = ["model.layers=[1,1,1,1]", "model.base_width=8", "data.val.resize=[128,64]",
        "eval.num_workers=0", "data.num_workers=0", "train.device=cpu"]  # fmt: skip
SIZE = {"layers": (1, 1, 1, 1), "base_width": 8}


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "data"
    overrides = [
        f"data.synthetic.root={root}", "data.synthetic.num_source=1", "data.synthetic.num_train=1",
        "data.synthetic.num_val=3", "data.synthetic.target_size=[192,96]",
        f"data.val.root={root}/Cityscapes",
    ]  # fmt: skip
    ensure_data(load_config(None, overrides).data)
    return overrides


def producer(preset="clan", num_classes=19, seed=0, **size):
    """A seeded random G in eval mode whose BN statistics and affine parameters are not the
    defaults, so that a load that skipped or misplaced any tensor would show."""
    torch.manual_seed(seed)
    p = PRESETS[preset]
    model = DeepLabV2(num_classes, multi_level=p.multi_level, aspp_branches=p.aspp_branches,
                      predict_with=p.predict_with, **{**SIZE, **size})  # fmt: skip
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(7)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.normal_(0, 0.1)
    return model.eval()


def unused_branches(model):
    """Branches 2 and 3 of a two-branch release: stored at their N(0, 0.01) init, never used."""
    extra = {}
    for head in ("layer5", "layer6"):
        w = model.state_dict()[f"{head}.conv2d_list.0.weight"]
        for i in (2, 3):
            extra[f"{head}.conv2d_list.{i}.weight"] = torch.randn_like(w) * 0.01
            extra[f"{head}.conv2d_list.{i}.bias"] = torch.zeros(w.shape[0])
    return extra


def without_counters(state):
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def checkpoint_dict(model, cfg_overrides):
    """This repository's checkpoint, with a stored config describing ``model``."""
    cfg = load_config(None, cfg_overrides)
    return {"setup": "norm_only", "step": 7, "models": {"G": model.state_dict(), "D": {}},
            "optimizers": {}, "config": to_dict(cfg), "metric": None}  # fmt: skip


# layout name -> (preset of the producing model, preset to name, file content from the model)
LAYOUT_FILES = {
    "checkpoint": ("clan", None, lambda m, ov: checkpoint_dict(m, ov)),
    "clan": ("clan", None, lambda m, ov: without_counters(m.state_dict())),
    "feature_to_adapt": ("clan", None, lambda m, ov: m.state_dict()),
    "adaptsegnet": (
        "adaptsegnet", "adaptsegnet",
        lambda m, ov: without_counters({**m.state_dict(), **unused_branches(m)}),
    ),
    "maxsquare": (
        "maxsquare", None,
        lambda m, ov: {
            "epoch": 3, "iteration": 2000, "best_MIou": np.float64(0.41),
            "state_dict": {f"module.{k}": v for k, v in {**m.state_dict(),
                                                         **unused_branches(m)}.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 2.5e-4, "params": [0, 1]}]},
        },
    ),
    "advent": ("advent", "advent", lambda m, ov: m.state_dict()),
}  # fmt: skip


def write_layout(tmp_path, layout, overrides=()):
    """(path, producing model, preset to name) for ``layout``."""
    preset, named, content = LAYOUT_FILES[layout]
    model = producer(preset)
    path = tmp_path / f"{layout}.pth"
    torch.save(content(model, [*TINY, *overrides, f"model.preset={preset}"]), path)
    return path, model, named


def tiny_cfg(*extra):
    return load_config(None, [*TINY, *extra]).model


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
    torch.save(checkpoint_dict(producer("advent"), [*TINY, "model.preset=advent"]), own)
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


def symmetric_model():
    """A G whose every kernel is mirror-symmetric: flip-equivariant for widths 8m + 1 whose
    strides line up (33 -> 17 -> 9 -> 5)."""
    model = producer()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_((m.weight + m.weight.flip(-1)) / 2)
    return model


def test_flip_averaging():
    model = symmetric_model()
    x = torch.randn(1, 3, 24, 33)
    x = (x + x.flip(-1)) / 2  # a flip-symmetric input
    plain = predict_scores(model, x, (48, 65))
    torch.testing.assert_close(predict_scores(model, x, (48, 65), flip=True), plain)
    generic = producer(seed=1)
    y = torch.randn(1, 3, 24, 40)
    probs = predict_scores(generic, y, (24, 40), flip=True)
    mirrored = predict_logits(generic, y.flip(-1), (24, 40)).softmax(1).flip(-1)
    expected = (predict_logits(generic, y, (24, 40)).softmax(1) + mirrored) / 2
    torch.testing.assert_close(probs, expected)
    logits = predict_scores(generic, y, (24, 40), space="logit")
    assert torch.equal(logits.argmax(1), predict_scores(generic, y, (24, 40)).argmax(1))
    with pytest.raises(ValueError, match="space must be one of"):
        predict_scores(generic, y, (24, 40), space="log")


def test_weights_and_combination():
    assert normalise_weights(None, 3) == [1 / 3] * 3
    assert normalise_weights([0.7, 0.3], 2) == [0.7, 0.3]
    assert normalise_weights([7, 3], 2) == [0.7, 0.3]
    with pytest.raises(ValueError, match="3 weights for 2 checkpoints"):
        normalise_weights([1, 1, 1], 2)
    with pytest.raises(ValueError, match="sum to a positive number"):
        normalise_weights([0, 0], 2)
    with pytest.raises(ValueError, match="finite and >= 0"):
        normalise_weights([1, -0.5], 2)
    a, b = torch.rand(1, 19, 4, 5), torch.rand(1, 19, 4, 5)
    assert torch.equal(combine_scores([a, b], [1.0, 0.0], ["a", "b"]), a)
    assert torch.equal(combine_scores([a, a], [0.5, 0.5], ["a", "a"]), a)
    torch.testing.assert_close(combine_scores([a, b], [0.7, 0.3], ["a", "b"]), 0.7 * a + 0.3 * b)
    with pytest.raises(ValueError, match="outputs differ: a gives \\(1, 19, 4, 5\\), b gives"):
        combine_scores([a, torch.rand(1, 19, 4, 6)], [0.5, 0.5], ["a", "b"])
    with pytest.raises(ValueError, match="b gives \\(1, 16, 4, 5\\)"):
        combine_scores([a, torch.rand(1, 16, 4, 5)], [0.5, 0.5], ["a", "b"])


def test_paper_rows():
    assert len(TABLE1) == 9 and all(len(r.iou) == 19 for r in TABLE1.values())
    for name, row in TABLE1.items():  # the stated mIoU is the per-class mean, but one
        if name != "CLAN + Norm":
            assert sum(row.iou) / 19 == pytest.approx(row.miou, abs=0.05), name
    assert paper_row("clan + norm*")[0] == "CLAN + Norm*"
    with pytest.raises(ValueError, match="no such row.*'Only Norm'"):
        paper_row("Norm only")


# ---- through the scripts -------------------------------------------------------------------


def reference_miou(model, synthetic, flip=False):
    cfg = load_config(None, [*TINY, *synthetic])
    val = build_dataset(cfg.data.val, with_labels=True, evaluation=True)
    cm = evaluate(model, eval_loader(val), torch.device("cpu"), progress=False, flip=flip)
    return cm.iou(), cm.miou()


def reference_ensemble_miou(models, weights, synthetic, space):
    """The ensemble by hand: sum_i w_i * (flip-averaged scores of member i), argmax, one matrix."""
    cfg = load_config(None, [*TINY, *synthetic])
    val = build_dataset(cfg.data.val, with_labels=True, evaluation=True)
    cm = ConfusionMatrix(19)
    for batch in eval_loader(val):
        size = tuple(batch.label.shape[-2:])
        total = sum(
            w * predict_scores(m.eval(), batch.image, size, flip=True, space=space)
            for w, m in zip(weights, models)
        )
        cm.update(total.argmax(1), batch.label)
    return cm.miou()


def last_line(capsys):
    return capsys.readouterr().out.rstrip().splitlines()[-1]


@pytest.mark.parametrize("layout", list(LAYOUT_FILES))
def test_evaluate_cityscapes_loads_every_layout(tmp_path, synthetic, capsys, layout):
    path, model, named = write_layout(tmp_path, layout, synthetic)
    args = ["--restore", str(path), *(["--preset", named] if named else []), *TINY, *synthetic]
    assert evaluate_cityscapes.main(args) == 0
    _, miou = reference_miou(model, synthetic)
    assert last_line(capsys) == f"mIoU: {100 * miou:.2f}"
    saved = json.loads(path.with_name(path.name + ".results.json").read_text())
    assert saved["mIoU"] == miou and saved["flip"] is False


def test_evaluate_flip_preset_and_compare_with(tmp_path, synthetic, capsys):
    path, model, _ = write_layout(tmp_path, "maxsquare", synthetic)
    args = ["--restore", str(path), "--flip", "--compare-with", "maxsquare + norm*",
            "--results", str(tmp_path / "r.json"), *TINY, *synthetic]  # fmt: skip
    assert evaluate_cityscapes.main(args) == 0
    out = capsys.readouterr().out
    _, miou = reference_miou(model, synthetic, flip=True)
    assert out.rstrip().splitlines()[-1] == f"mIoU: {100 * miou:.2f}"
    assert "maxsquare (maxsquare, flip on)" in out
    assert "paper: MaxSquare + Norm* (stated mIoU 46.81)" in out and "ours - paper" in out
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["flip"] is True and saved["preset"] == "maxsquare"
    assert saved["layout"] == "maxsquare"
    with pytest.raises(ValueError, match="no such row"):
        evaluate_cityscapes.main([*args[:3], "--compare-with", "DeepLab"])
    with pytest.raises(SystemExit):
        evaluate_cityscapes.main(["--pred-dir", str(tmp_path), "--flip"])


def test_self_ensemble_equals_the_model(tmp_path, synthetic, capsys):
    path, model, _ = write_layout(tmp_path, "checkpoint", synthetic)
    solo = tmp_path / "solo"
    assert evaluate_cityscapes.main(["--restore", str(path), "--save-dir", str(solo)]) == 0
    duo = tmp_path / "duo"
    capsys.readouterr()
    args = ["--restore", str(path), str(path), "--save-dir", str(duo), "--offload"]
    assert ensemble.main(args) == 0
    out = capsys.readouterr().out
    _, miou = reference_miou(model, synthetic)
    assert out.rstrip().splitlines()[-1] == f"mIoU: {100 * miou:.2f}"
    assert "1: checkpoint.pth (clan, w 0.50)" in out and "2: checkpoint.pth" in out
    saved = json.loads((duo / "results.json").read_text())
    assert saved["mIoU"] == miou and [m["mIoU"] for m in saved["members"]] == [miou, miou]
    for png in solo.rglob("*.png"):
        assert png.read_bytes() == (duo / png.relative_to(solo)).read_bytes()
    # existing files are kept unless --overwrite
    with pytest.raises(FileExistsError, match="already holds 7 of this run's files.*--overwrite"):
        ensemble.main(args)
    assert ensemble.main([*args, "--overwrite"]) == 0


def test_ensemble_members_keep_their_presets_and_weights(tmp_path, synthetic, capsys):
    clan, clan_model, _ = write_layout(tmp_path, "clan", synthetic)
    ms, ms_model, _ = write_layout(tmp_path, "maxsquare", synthetic)
    base = ["--restore", str(clan), str(ms), "--flip", "--", *TINY, *synthetic]
    assert ensemble.main(["--weights", "1", "0", "--results", str(tmp_path / "a.json"), *base]) == 0
    saved = json.loads((tmp_path / "a.json").read_text())
    clan_iou, clan_miou = reference_miou(clan_model, synthetic, flip=True)
    _, ms_miou = reference_miou(ms_model, synthetic, flip=True)
    assert [m["preset"] for m in saved["members"]] == ["clan", "maxsquare"]
    assert [m["mIoU"] for m in saved["members"]] == [clan_miou, ms_miou]
    assert saved["mIoU"] == clan_miou and list(saved["iou"].values()) == pytest.approx(
        clan_iou, nan_ok=True
    )
    assert saved["flip"] is True and saved["combine"] == "prob"
    args = ["--weights", "0.7", "0.3", "--combine", "logit", "--presets", "clan", "maxsquare"]
    assert ensemble.main([*args, "--results", str(tmp_path / "b.json"), *base]) == 0
    out = capsys.readouterr().out
    assert "ensemble (logit, flip on)" in out and "(best member)" in out
    weighted = json.loads((tmp_path / "b.json").read_text())
    assert weighted["members"][0]["weight"] == 0.7
    expected = reference_ensemble_miou([clan_model, ms_model], [0.7, 0.3], synthetic, "logit")
    assert weighted["mIoU"] == pytest.approx(expected, abs=1e-12)
    swapped = reference_ensemble_miou([clan_model, ms_model], [0.3, 0.7], synthetic, "logit")
    assert swapped != pytest.approx(expected, abs=1e-6)  # the weighting decides the result


def test_ensemble_bad_input(tmp_path, synthetic):
    path, _, _ = write_layout(tmp_path, "clan", synthetic)
    common = [*TINY, *synthetic]
    with pytest.raises(SystemExit):
        ensemble.main(["--restore", str(path), "--", *common])  # one member
    with pytest.raises(SystemExit):
        ensemble.main(["--restore", str(path), str(path), "--presets", "clan", "--", *common])
    with pytest.raises(SystemExit):
        ensemble.main(["--restore", str(path), "model.base_width=8"])  # override swallowed
    with pytest.raises(ValueError, match="3 weights for 2 checkpoints"):
        ensemble.main(["--restore", str(path), str(path), "--weights", "1", "1", "1"])
    with pytest.raises(ValueError, match="sum to a positive number"):
        ensemble.main(["--restore", str(path), str(path), "--weights", "0", "0"])
    small = tmp_path / "small.pth"
    torch.save(checkpoint_dict(producer(num_classes=5), [*common, "model.num_classes=5"]), small)
    big = tmp_path / "big.pth"
    torch.save(checkpoint_dict(producer(), common), big)
    with pytest.raises(ValueError, match="different numbers of classes.*small.pth: 5.*big.pth: 19"):
        ensemble.main(["--restore", str(small), str(big)])
    evil = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, evil)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:300])
    save_dir = tmp_path / "never"
    for bad, message in ((evil, "refused by the safe loader"), (truncated, "cannot be read")):
        args = ["--restore", str(path), str(bad), "--save-dir", str(save_dir), "--", *common]
        with pytest.raises(CheckpointError, match=message):
            ensemble.main(args)
    assert not save_dir.exists()  # nothing written before the first prediction


@pytest.mark.parametrize("module", [ensemble, evaluate_cityscapes])
def test_help(module, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert "usage" in capsys.readouterr().out


# ---- SYNTHIA's class sets: 16-output files, --classes, --mask-absent -----------------------


def reference_subset_cm(model, synthetic, view=None):
    """The confusion matrix by hand: output k of a K-class model is trainId CLASS_SUBSETS[K][k];
    ``view``: the argmax over the outputs whose trainId it holds."""
    cfg = load_config(None, [*TINY, *synthetic])
    val = build_dataset(cfg.data.val, with_labels=True, evaluation=True)
    cm = ConfusionMatrix(19)
    for batch in eval_loader(val):
        logits = predict_logits(model.eval(), batch.image, tuple(batch.label.shape[-2:]))
        train_ids = torch.tensor(CLASS_SUBSETS[logits.shape[1]])
        if view is not None:
            outside = [k for k, c in enumerate(train_ids.tolist()) if c not in view]
            logits[:, outside] = -torch.inf
        cm.update(train_ids[logits.argmax(1)], batch.label)
    return cm


def test_a_16_class_file_loads_with_its_class_count(tmp_path, synthetic, caplog):
    model = producer("maxsquare", num_classes=16)
    path = tmp_path / "SYNTHIA_MaxSquare.pth"
    state = {f"module.{k}": v for k, v in {**model.state_dict(), **unused_branches(model)}.items()}
    torch.save({"epoch": 1, "state_dict": state}, path)
    cfg = load_config(None, TINY)
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


def test_evaluate_reports_16_and_13_classes(tmp_path, synthetic, capsys):
    model = producer("maxsquare", num_classes=16, seed=3)
    path = tmp_path / "ms16.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    args = ["--restore", str(path), "--classes", "16", "13", "--results", str(tmp_path / "r.json"),
            *TINY, *synthetic]  # fmt: skip
    assert evaluate_cityscapes.main(args) == 0
    out = capsys.readouterr().out
    cm = reference_subset_cm(model, synthetic)
    lines = out.rstrip().splitlines()
    assert lines[-2:] == [f"mIoU16: {100 * cm.miou(SYNTHIA_16):.2f}",
                          f"mIoU13: {100 * cm.miou(SYNTHIA_13):.2f}"]  # fmt: skip
    assert "16 classes (without terrain, truck, train); a prediction of an absent class" in out
    assert "13 classes (without wall, fence, pole, terrain, truck, train)" in out
    assert "| mIoU16 |" in out and "| mIoU13 |" in out and "|   mIoU |" not in out
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["mIoU16"] == cm.miou(SYNTHIA_16) and saved["mIoU13"] == cm.miou(SYNTHIA_13)
    assert list(saved["iou16"]) == [CLASS_NAMES[c] for c in SYNTHIA_16]
    assert list(saved["iou13"].values()) == pytest.approx(cm.iou(SYNTHIA_13), nan_ok=True)
    assert saved["mIoU"] == cm.miou() and saved["mask_absent"] is False  # keys kept
    with pytest.raises(ValueError, match="--compare-with: the paper's rows are 19-class"):
        evaluate_cityscapes.main([*args, "--compare-with", "CLAN"])


def test_mask_absent_restricts_the_argmax_and_says_so(tmp_path, synthetic, capsys):
    path, model, _ = write_layout(tmp_path, "clan", synthetic)
    common = ["--restore", str(path), "--classes", "19", "16", "13", *TINY, *synthetic]
    assert evaluate_cityscapes.main([*common, "--results", str(tmp_path / "plain.json")]) == 0
    assert evaluate_cityscapes.main([*common, "--mask-absent", "--results",
                                     str(tmp_path / "masked.json")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    plain = json.loads((tmp_path / "plain.json").read_text())
    masked = json.loads((tmp_path / "masked.json").read_text())
    full = reference_subset_cm(model, synthetic)
    # The random model predicts absent classes (terrain 0.5%, train 7%, fence 82% of pixels):
    assert full.iou(SYNTHIA_16) != pytest.approx([full.iou()[c] for c in SYNTHIA_16], nan_ok=True)
    assert plain["mIoU"] == masked["mIoU"] == full.miou()  # the 19 classes: never masked
    assert plain["mIoU16"] == full.miou(SYNTHIA_16)
    for k, subset in ((16, SYNTHIA_16), (13, SYNTHIA_13)):
        assert masked[f"mIoU{k}"] == reference_subset_cm(model, synthetic, subset).miou(subset)
    assert masked["mIoU13"] != plain["mIoU13"] and masked["mask_absent"] is True
    assert "--mask-absent: the argmax is taken over these classes only" in out
    assert "(clan, flip off, absent classes masked)" in out
    with pytest.raises(SystemExit):
        evaluate_cityscapes.main(["--pred-dir", str(tmp_path), "--mask-absent"])


def test_sweep_and_ensemble_report_the_class_sets(tmp_path, synthetic, capsys):
    a, model_a, _ = write_layout(tmp_path, "checkpoint", synthetic)
    b = tmp_path / "step_000002.pth"
    torch.save(checkpoint_dict(producer(seed=1), [*TINY, *synthetic]), b)
    step1 = tmp_path / "step_000001.pth"
    step1.write_bytes(a.read_bytes())
    sets = ["--classes", "16", "13", "--mask-absent"]
    assert evaluate_cityscapes.main(["--restore", str(step1), str(b), *sets]) == 0
    out = capsys.readouterr().out
    sweep = json.loads((tmp_path / "sweep.results.json").read_text())
    masked = reference_subset_cm(model_a, synthetic, SYNTHIA_16).miou(SYNTHIA_16)
    assert sweep["snapshots"][0]["mIoU16"] == masked
    assert "selected on val, absent classes masked)" in out and "(mIoU16)" in out
    assert out.rstrip().splitlines()[-1].startswith("mIoU13: ")
    args = ["--restore", str(a), str(a), "--results", str(tmp_path / "e.json"), *sets]
    assert ensemble.main(args) == 0
    saved = json.loads((tmp_path / "e.json").read_text())
    assert saved["mIoU16"] == masked and saved["members"][0]["mIoU16"] == masked
    assert "ensemble (prob, flip off, absent classes masked)" in capsys.readouterr().out
    ms16 = tmp_path / "ms16.pth"
    torch.save({"state_dict": producer("maxsquare", num_classes=16).state_dict()}, ms16)
    with pytest.raises(ValueError, match=r"different numbers of classes.*pth: 19.*ms16.pth: 16"):
        ensemble.main(["--restore", str(a), str(ms16), "--", *TINY, *synthetic])
