"""DAFormer's additions to DACS's self-training (lhoyer/DAFormer, mmseg/models/uda/dacs.py):
the ImageNet feature distance, the batch's ClassMix pool, the pseudo-label weight's cropped
rows, the source CE over all pixels, the teacher without dropout or drop path; and the DACS
script training DAFormer with all of them, resumed exactly (teacher and frozen copy included)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import dacs_run, step_rows

import train_dacs_norm
from model.daformer import DAFormer
from utils.feature_distance import (
    downscale_label_ratio,
    feature_distance_mask,
    masked_feature_distance,
)
from utils.self_training import class_mix_mask, freeze_stochastic_layers, pseudo_weight_map

THINGS = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)  # DAFormer's fd classes


# ---- the feature distance ----


def test_cells_take_their_majority_class_where_it_holds_the_ratio():
    # 4 x 4 cells of 2 x 2 pixels: 4/4, 3/4 and 2/4 of one class, an all-ignored cell
    label = torch.tensor([[[6, 6, 7, 7],
                           [6, 6, 7, 0],
                           [1, 1, 255, 255],
                           [2, 2, 255, 255]]])  # fmt: skip
    cells = downscale_label_ratio(label, 2, 0.75, num_classes=19)
    assert cells.tolist() == [[[6, 7], [255, 255]]]  # 2/4 of class 1 is under 0.75
    assert downscale_label_ratio(label, 2, 0.5, 19).tolist() == [[[6, 7], [1, 255]]]
    # a cell whose majority is the ignore label stays ignored at any ratio
    assert downscale_label_ratio(label, 2, 0.0, 19)[0, 1, 1] == 255


def test_the_mask_keeps_thing_cells_and_pads_a_larger_feature_map():
    label = torch.full((1, 64, 96), 0)  # road, stride-32 cells: 2 x 3
    label[:, :32, 32:64] = 13  # a car filling cell (0, 1)
    label[:, 32:, 64:] = 11  # a person filling cell (1, 2)
    label[:, 32:40, 64:] = 255  # a quarter of it ignored: 0.75 of the cell remains
    mask = feature_distance_mask(label, (2, 3), THINGS, 0.75, 19)
    assert mask.tolist() == [[[False, True, False], [False, False, True]]]
    assert feature_distance_mask(label, (2, 3), (), 0.75, 19).all()  # every majority cell
    # a 100-pixel-wide label on a map of ceil(100 / 32) = 4 columns: DAFormer's factor 100 // 4
    # = 25 gives 4 cells across; rows 64 // 25 = 2 of the map's 3, the third left out
    wide = torch.full((1, 64, 100), 13)
    assert feature_distance_mask(wide, (3, 4), THINGS, 0.75, 19).tolist() == [
        [[True] * 4, [True] * 4, [False] * 4]
    ]


def test_the_distance_is_the_mean_l2_over_the_masked_cells():
    f0 = torch.zeros(1, 2, 2, 2)
    f = torch.zeros(1, 2, 2, 2, requires_grad=True)
    with torch.no_grad():
        f[0, :, 0, 0] = torch.tensor([3.0, 4.0])  # distance 5
        f[0, :, 0, 1] = torch.tensor([0.0, 1.0])  # distance 1
        f[0, :, 1, 1] = torch.tensor([6.0, 8.0])  # distance 10, not masked
    mask = torch.tensor([[[True, True], [True, False]]])
    dist = masked_feature_distance(f, f0, mask)
    assert dist.item() == pytest.approx((5 + 1 + 0) / 3)
    dist.backward()
    assert f.grad[0, :, 1, 1].abs().sum() == 0  # an unmasked cell takes no gradient
    # no qualifying cell: 0, not DAFormer's NaN, and no gradient
    empty = masked_feature_distance(f, f0, torch.zeros_like(mask))
    assert empty.item() == 0 and not torch.isnan(empty)


# ---- ClassMix's pool, the pseudo-label weight, the teacher ----


def test_the_batch_pool_draws_half_of_the_batchs_classes_for_each_image():
    label = torch.tensor([[[0, 0, 1, 1]], [[2, 2, 3, 3]]])  # two images, two classes each
    keys = torch.ones(2, 256)
    keys[0, [1, 2]] = 0.1  # image 0 draws classes 1 and 2 (it holds 1)
    keys[1, [0, 1]] = 0.1  # image 1 draws 0 and 1 (it holds neither)
    batch = class_mix_mask(label, keys=keys, pool="batch")
    assert batch.tolist() == [[[False, False, True, True]], [[False, False, False, False]]]
    # per image (DACS): each draws one of its own two classes
    own = class_mix_mask(label, keys=keys, pool="image")
    assert own.tolist() == [[[False, False, True, True]], [[True, True, False, False]]]
    with pytest.raises(ValueError, match="pool"):
        class_mix_mask(label, keys=keys, pool="dataset")


def test_the_pseudo_weight_is_zero_on_the_cropped_rows():
    w = pseudo_weight_map(torch.tensor(0.25), (2, 8, 3), ignore_top=2, ignore_bottom=3)
    assert w.shape == (2, 8, 3)
    assert w[:, :2].eq(0).all() and w[:, 5:].eq(0).all() and w[:, 2:5].eq(0.25).all()
    assert pseudo_weight_map(torch.tensor(0.5), (1, 4, 4)).eq(0.5).all()


def test_the_teacher_runs_without_dropout_and_drop_path_but_batchnorm_in_train_mode():
    torch.manual_seed(0)
    teacher = DAFormer(19, "mit_demo", head_channels=16).train()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = teacher(x).p2, teacher(x).p2
    assert not torch.equal(a, b)  # dropout and drop path draw
    freeze_stochastic_layers(teacher)
    with torch.no_grad():
        a, b = teacher(x).p2, teacher(x).p2
        assert torch.equal(a, b)
        eval_out = teacher.eval()(x).p2
    assert not torch.allclose(a, eval_out)  # BatchNorm still read the batch's statistics
    blocks = [m for m in teacher.modules() if getattr(m, "stochastic_depth", False)]
    assert blocks and all(not m.training for m in blocks)


def test_the_source_ce_over_all_pixels_counts_ignored_ones_as_zero():
    from utils.config import load_config

    logits = torch.randn(1, 19, 4, 4)
    label = torch.randint(0, 19, (1, 4, 4))
    label[0, 0] = 255  # a quarter ignored
    ce = F.cross_entropy(logits, label, ignore_index=255, reduction="none")
    cfg = load_config(None, ["loss.dacs.source_ce=all"])
    assert train_dacs_norm._source_loss(logits, label, cfg).item() == pytest.approx(
        ce.sum().item() / 16
    )
    valid = load_config(None, [])
    assert train_dacs_norm._source_loss(logits, label, valid).item() == pytest.approx(
        ce.sum().item() / 12
    )


# ---- DAFormer through the DACS script ----

DAFORMER_DACS = [
    *("model.arch=daformer", "model.backbone=mit_demo", "model.head_channels=8"),
    *("optim.optimizer=adamw", "optim.lr=6e-4", "optim.weight_decay=0.01"),
    *("optim.warmup_form=mmcv", "model.init_from="),
    *("loss.dacs.mix_classes=batch", "loss.dacs.ignore_top=4", "loss.dacs.ignore_bottom=8"),
    *("loss.dacs.source_ce=all", "loss.dacs.fd_lambda=0.005", "loss.dacs.ema_alpha=0.999"),
    *("loss.dacs.fd_classes=[]", "loss.dacs.threshold=0.2", "train.image_every=0"),
]


def test_daformer_self_training_resumes_exactly_teacher_and_frozen_copy_included(
    tmp_path, synthetic
):
    full = dacs_run(tmp_path, synthetic, "full", 3, *DAFORMER_DACS)
    part = dacs_run(tmp_path, synthetic, "part", 2, *DAFORMER_DACS)
    dacs_run(tmp_path, synthetic, "part", 3, resume=part)
    a, b = step_rows(full), step_rows(part)
    assert a == b and len(a) == 3
    assert all(row["train/loss_fd"] > 0 for row in a[1:])  # the student has moved
    ckpt_a = torch.load(full / "checkpoints" / "last.pth", weights_only=True)
    ckpt_b = torch.load(part / "checkpoints" / "last.pth", weights_only=True)
    assert set(ckpt_a["models"]) == {"G", "teacher", "imnet"}
    for model in ("G", "teacher", "imnet"):
        for key, value in ckpt_a["models"][model].items():
            assert torch.equal(value, ckpt_b["models"][model][key]), f"{model}.{key}"
    # the frozen copy is the initial network: a fresh run's step-0 G
    init = dacs_run(tmp_path, synthetic, "init", 1, *DAFORMER_DACS)
    ckpt_0 = torch.load(init / "checkpoints" / "last.pth", weights_only=True)
    frozen = ckpt_a["models"]["imnet"]
    assert any(not torch.equal(v, ckpt_a["models"]["G"][k]) for k, v in frozen.items())
    assert all(torch.equal(v, ckpt_0["models"]["imnet"][k]) for k, v in frozen.items())
    # its checkpoint scores like any other run's (the frozen copy is not a candidate)
    import evaluate_cityscapes

    results = tmp_path / "r.json"
    ckpt = str(full / "checkpoints" / "last.pth")
    assert evaluate_cityscapes.main(["--restore", ckpt, "--results", str(results)]) == 0
    scored = json.loads(results.read_text())
    assert (scored["preset"], scored["protocol"]["model"]) == ("daformer mit_demo", "student")


def test_daformer_steps_in_bf16_with_float32_logits_losses_and_weights(monkeypatch):
    """``train.amp=bf16`` (the CPU's and the GPU's mixed precision): the encoder and head run
    in bfloat16, the logits are resized in float32, every loss and the weights stay float32,
    and a step moves the student, the teacher (EMA) but not the frozen copy."""
    from utils.config import load_config
    from utils.distributed import DistInfo
    from utils.training.state import prepare

    torch.manual_seed(0)
    overrides = [*DAFORMER_DACS, "train.device=cpu", "train.amp=bf16", "data.batch_size=2",
                 "loss.lambda_norm=1.5e-4",
                 "loss.dacs.fd_classes=[1,2]", "loss.dacs.fd_min_ratio=0.5"]  # fmt: skip
    state = train_dacs_norm.build(load_config(None, overrides), torch.device("cpu"))
    prepare(state, DistInfo())
    from dataset.datasets import Batch

    gen = torch.Generator().manual_seed(0)
    label = torch.zeros(2, 64, 64, dtype=torch.long)
    label[:, 32:, :32], label[:, 32:, 32:] = 1, 2  # two of the stride-32 cells are things
    source = Batch(torch.randn(2, 3, 64, 64, generator=gen) * 50, label, ["a", "b"])
    target = Batch(torch.randn(2, 3, 64, 64, generator=gen) * 50, None, ["c", "d"])
    with state.autocast():
        out = state.run("G")(source.image)
    assert out.features.dtype == torch.bfloat16 and out.p2.dtype == torch.float32
    before = {name: {k: v.clone() for k, v in m.state_dict().items()}
              for name, m in state.modules.items()}  # fmt: skip
    resized = []  # (channels, dtype) of every F.interpolate input
    interpolate = F.interpolate
    monkeypatch.setattr(F, "interpolate", lambda x, *a, **k: resized.append(
        (x.shape[1], x.dtype)) or interpolate(x, *a, **k))  # fmt: skip
    for step in range(2):
        terms = train_dacs_norm.train_step(state, source, target, step)
    # the head's stage embeddings (8 channels) resize in bfloat16, the logits (19) in float32
    assert {dtype for c, dtype in resized if c == 8} == {torch.bfloat16}
    assert {dtype for c, dtype in resized if c == 19} == {torch.float32}
    for name, value in terms.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == torch.float32 and torch.isfinite(value).all(), name
    assert terms["loss_fd"] > 0  # the student has left its frozen initial copy
    for name, module in state.modules.items():
        for key, value in module.state_dict().items():
            if value.is_floating_point():
                assert value.dtype == torch.float32, f"{name}.{key}"
    moved = {name: not torch.equal(before[name]["decode_head.conv_seg.weight"],
                                   m.state_dict()["decode_head.conv_seg.weight"])
             for name, m in state.modules.items()}  # fmt: skip
    assert moved == {"G": True, "teacher": True, "imnet": False}
