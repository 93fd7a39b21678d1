"""DACS's pieces (utils.self_training): ClassMix's mask, the mix, the mean teacher, the
pseudo-label weight and the strong augmentation, checked against values worked out by hand (its
loss on the mixed images, pixel_weighted_cross_entropy of utils/losses.py: test_losses.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dataset.transforms import IMG_MEAN_BGR, normalize
from utils.self_training import (
    LABEL_VALUES,
    blur_kernel_size,
    class_mix_mask,
    color_jitter,
    draw_augmentation,
    ema_alpha,
    ema_blend,
    ema_update,
    gaussian_blur,
    make_teacher,
    mix,
    pseudo_label,
    pseudo_label_weight,
    strong_augment,
)


def _label(*rows_per_image: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows_per_image, dtype=torch.int64)


# --- class_mix_mask -------------------------------------------------------------------------


def test_class_mix_mask_is_the_drawn_classes_and_draws_half_of_them_rounded_up() -> None:
    label = _label([[0, 0, 1, 2], [3, 4, 255, 255]], [[7, 7, 7, 7], [7, 7, 7, 255]])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        mask = class_mix_mask(label, g)
        assert mask.shape == label.shape and mask.dtype == torch.bool
        for i, present in enumerate(({0, 1, 2, 3, 4}, {7})):
            drawn = {int(c) for c in label[i][mask[i]].unique()}
            assert drawn <= present and len(drawn) == math.ceil(len(present) / 2)
            # exactly "label in the drawn classes": every pixel of a drawn class, no other
            assert torch.equal(mask[i], torch.isin(label[i], torch.tensor(sorted(drawn))))
            assert not mask[i][label[i] == 255].any()  # ignore is not a class by default


def test_class_mix_mask_ignore_key_puts_the_ignore_label_in_the_pool() -> None:
    # one class and the ignore label: with it in the pool n = 2, ceil(2/2) = 1 is drawn, so
    # over many draws the ignored pixels are pasted sometimes, and then the class is not
    label = _label([[5, 5, 255, 255]])
    g = torch.Generator().manual_seed(1)
    pasted_ignore = 0
    for _ in range(40):
        mask = class_mix_mask(label, g, include_ignore=True)
        assert int(mask[0, 0].sum()) in (0, 2) and mask[0, 0, 0] != mask[0, 0, 2]
        pasted_ignore += int(mask[0, 0, 2])
        assert class_mix_mask(label, g).equal(label == 5)  # without: 5 is drawn, always
    assert 5 < pasted_ignore < 35


def test_class_mix_mask_is_deterministic_for_a_seeded_generator_and_follows_the_keys() -> None:
    label = torch.randint(0, 19, (3, 16, 16), generator=torch.Generator().manual_seed(2))
    a = class_mix_mask(label, torch.Generator().manual_seed(7))
    b = class_mix_mask(label, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    keys = torch.rand(3, LABEL_VALUES, generator=torch.Generator().manual_seed(7))
    assert torch.equal(class_mix_mask(label, keys=keys), a)  # the generator draws the keys
    # the drawn classes are those with the smallest keys among the present ones
    present = label[0].unique()
    smallest = present[keys[0, present].argsort()[: math.ceil(len(present) / 2)]]
    assert torch.equal(a[0], torch.isin(label[0], smallest))
    with pytest.raises(ValueError, match="keys must be 3 x 256"):
        class_mix_mask(label, keys=keys[:, :19])


def test_class_mix_mask_of_an_all_ignored_image_is_empty() -> None:
    label = torch.full((1, 4, 4), 255)
    assert not class_mix_mask(label, torch.Generator().manual_seed(0)).any()


# --- mix ------------------------------------------------------------------------------------


def test_mix_takes_the_source_under_the_mask_and_the_target_elsewhere() -> None:
    mask = torch.tensor([[[True, False], [False, True]]])
    src_img, tgt_img = torch.full((1, 3, 2, 2), 1.5), torch.full((1, 3, 2, 2), -2.0)
    img = mix(mask, src_img, tgt_img)
    assert img.shape == (1, 3, 2, 2)
    assert torch.equal(img[:, :, 0, 0], src_img[:, :, 0, 0]) and (img[:, :, 0, 1] == -2).all()
    assert torch.equal(mix(mask, torch.full((1, 2, 2), 3), torch.full((1, 2, 2), 9)),
                       torch.tensor([[[3, 9], [9, 3]]]))  # fmt: skip  # labels
    w = mix(mask, torch.ones(1, 2, 2), torch.full((1, 2, 2), 0.25))  # weights
    assert torch.equal(w, torch.tensor([[[1.0, 0.25], [0.25, 1.0]]]))


# --- the mean teacher -----------------------------------------------------------------------


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))


def test_the_teacher_is_the_student_at_step_0_and_takes_no_gradient() -> None:
    student = _net()
    teacher = make_teacher(student)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(1.0)  # the teacher starts elsewhere: step 0 must make it the student
    assert ema_update(teacher, student, step=0) == 0.0
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        assert torch.equal(t, s) and not t.requires_grad
    out = teacher(torch.randn(2, 3, 4, 4)).sum()
    assert not out.requires_grad  # nothing of the teacher is in any graph


def test_ema_step_t_follows_the_formula() -> None:
    student, teacher = _net(), _net()
    with torch.no_grad():
        for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
            t.fill_(1.0)
            s.fill_(3.0)
    # step 5: alpha_t = min(1 - 1/6, 0.99) = 5/6; 5/6 * 1 + 1/6 * 3 = 4/3
    assert ema_update(teacher, student, step=5) == pytest.approx(5 / 6)
    for t in teacher.parameters():
        torch.testing.assert_close(t, torch.full_like(t, 4 / 3))
    assert ema_alpha(10_000) == 0.99
    assert ema_alpha(10_000, alpha=0.9999) == pytest.approx(1 - 1 / 10_001)
    # a 0-dim tensor rate (a CUDA graph's) gives the same update
    t2 = _net()
    with torch.no_grad():
        for t in t2.parameters():
            t.fill_(1.0)
    ema_blend(t2, student, torch.tensor(5 / 6))
    for t in t2.parameters():
        torch.testing.assert_close(t, torch.full_like(t, 4 / 3))


def test_teacher_bn_buffers_are_kept_or_copied_as_the_key_says() -> None:
    student = _net()
    kept, copied = make_teacher(student), make_teacher(student)
    student(torch.randn(4, 3, 5, 5) * 3 + 2)  # train mode: the student's running stats move
    bn_s = student[1]
    ema_update(kept, student, 3, bn_buffers="keep")
    ema_update(copied, student, 3, bn_buffers="copy")
    assert torch.equal(kept[1].running_mean, torch.zeros(4))  # its own, untouched
    assert torch.equal(copied[1].running_mean, bn_s.running_mean)
    assert torch.equal(copied[1].running_var, bn_s.running_var)
    with pytest.raises(ValueError, match="bn_buffers: expected one of keep, copy"):
        ema_update(kept, student, 3, bn_buffers="average")


# --- pseudo-labels --------------------------------------------------------------------------


def test_pseudo_label_weight_is_the_share_of_confident_pixels() -> None:
    # 2 images x 2 pixels, 2 classes: max probabilities 0.99, 0.968 (reaches it), 0.9, 0.5
    p = torch.tensor([[0.99, 0.968], [0.9, 0.5]])
    prob = torch.stack([p, 1 - p], dim=1).view(2, 2, 1, 2)  # B x K x H x W
    assert pseudo_label_weight(prob, 0.968).item() == pytest.approx(2 / 4)
    assert pseudo_label_weight(prob, 0.95).dim() == 0
    label, conf = pseudo_label(prob)
    assert label.tolist() == [[[0, 0]], [[0, 0]]]  # the 0.5 tie goes to the first class
    torch.testing.assert_close(conf, torch.tensor([[[0.99, 0.968]], [[0.9, 0.5]]]))


# --- the strong augmentation ----------------------------------------------------------------


def test_blur_kernel_is_odd_and_about_a_tenth_of_the_side() -> None:
    assert blur_kernel_size(512) == 51  # ceil(51.2) = 52, even: 51, as DACS's formula gives
    assert blur_kernel_size(510) == 51 and blur_kernel_size(128) == 13
    assert blur_kernel_size(1024) == 103 and blur_kernel_size(5) == 1
    assert all(blur_kernel_size(s) % 2 == 1 for s in range(1, 2000))


def test_draw_augmentation_ranges_and_probabilities() -> None:
    g = torch.Generator().manual_seed(0)
    draws = [draw_augmentation(g, 2) for _ in range(2000)]
    jitter = torch.stack([d["jitter"] for d in draws])  # N x 2 x 4
    assert ((jitter[..., :3] >= 0.75) & (jitter[..., :3] <= 1.25)).all()
    assert ((jitter[..., 3] >= -0.25) & (jitter[..., 3] <= 0.25)).all()
    sigma = torch.stack([d["blur_sigma"] for d in draws])
    assert ((sigma >= 0.15) & (sigma <= 1.15)).all()
    jitter_share = torch.stack([d["jitter_on"] for d in draws]).mean().item()
    blur_share = torch.stack([d["blur_on"] for d in draws]).mean().item()
    assert abs(jitter_share - 0.8) < 0.04 and abs(blur_share - 0.5) < 0.04


def _images(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return normalize(torch.randint(0, 256, (2, 3, 20, 30), generator=g, dtype=torch.uint8))


def test_strong_augment_off_is_the_identity_and_on_changes_only_the_image() -> None:
    x = _images()
    off = {"jitter_on": torch.tensor(0.0), "jitter": torch.ones(2, 4), "blur_on": torch.tensor(0.0),
           "blur_sigma": torch.tensor(0.5)}  # fmt: skip
    assert torch.equal(strong_augment(x, off, IMG_MEAN_BGR), x)
    on = {**off, "jitter_on": torch.tensor(1.0), "blur_on": torch.tensor(1.0)}
    on["jitter"] = torch.tensor([[1.2, 0.8, 1.1, 0.1], [0.9, 1.2, 0.8, -0.2]])
    y = strong_augment(x, on, IMG_MEAN_BGR)
    assert y.shape == x.shape and y.dtype == x.dtype and not torch.allclose(y, x)
    # the output is still an image the datasets could give: RGB in [0, 255] before the mean
    mean = torch.tensor(IMG_MEAN_BGR).view(1, 3, 1, 1)
    assert (y + mean).min() >= -1e-3 and (y + mean).max() <= 255 + 1e-3


def test_color_jitter_matches_torchvision_for_the_same_factors_and_order() -> None:
    tvf = pytest.importorskip("torchvision.transforms.v2.functional")
    rgb = torch.rand(2, 3, 9, 11, generator=torch.Generator().manual_seed(3))
    factors = torch.tensor([[1.2, 0.8, 1.1, 0.1], [0.9, 1.2, 0.8, -0.2]])
    ours = color_jitter(rgb, factors)
    for i in range(2):
        b, c, s, h = factors[i].tolist()
        ref = tvf.adjust_hue(tvf.adjust_saturation(tvf.adjust_contrast(
            tvf.adjust_brightness(rgb[i], b), c), s), h)  # fmt: skip
        torch.testing.assert_close(ours[i], ref, atol=1e-5, rtol=0)
    same = color_jitter(rgb, torch.tensor([[1.0, 1.0, 1.0, 0.0]] * 2))
    torch.testing.assert_close(same, rgb, atol=1e-6, rtol=0)


def test_gaussian_blur_preserves_a_constant_and_matches_torchvision() -> None:
    tvf = pytest.importorskip("torchvision.transforms.v2.functional")
    flat = torch.full((1, 3, 12, 12), 0.4)
    torch.testing.assert_close(gaussian_blur(flat, 0.8, (5, 5)), flat)
    rgb = torch.rand(1, 3, 16, 20, generator=torch.Generator().manual_seed(4))
    ref = tvf.gaussian_blur(rgb, [5, 3], [0.9, 0.9])  # kernel [kx, ky], reflect borders
    torch.testing.assert_close(gaussian_blur(rgb, torch.tensor(0.9), (3, 5)), ref, atol=1e-6,
                               rtol=0)  # fmt: skip
    with pytest.raises(ValueError, match="odd"):
        gaussian_blur(rgb, 0.9, (4, 5))
