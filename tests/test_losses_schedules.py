"""Loss terms and schedules against values worked out by hand."""

import math

import pytest
import torch

from utils.losses import (
    cross_entropy,
    feature_norm,
    focal_loss,
    head_loss,
    segmentation_loss,
    stepwise_norm_loss,
    stepwise_norm_term,
)
from utils.schedules import damping, norm_damping, poly_lr

LN3 = math.log(3.0)


def _logits(h=1, w=3):
    # two classes, softmax = (1/4, 3/4) at every pixel
    return torch.tensor([0.0, LN3]).view(1, 2, 1, 1).expand(1, 2, h, w).clone()


def test_cross_entropy_by_hand_ignores_255():
    label = torch.tensor([[[1, 0, 255]]])
    # mean over the two valid pixels of -ln(3/4) and -ln(1/4)
    expected = (math.log(4 / 3) + math.log(4)) / 2
    assert cross_entropy(_logits(), label).item() == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_all_ignored_is_zero_not_nan():
    logits = _logits().requires_grad_()
    loss = cross_entropy(logits, torch.full((1, 1, 3), 255))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_focal_loss_by_hand():
    label = torch.tensor([[[1, 0, 255]]])
    # -(1 - p)^2 ln p: p = 3/4 -> (1/16) ln(4/3); p = 1/4 -> (9/16) ln 4
    expected = (math.log(4 / 3) / 16 + 9 * math.log(4) / 16) / 2
    assert focal_loss(_logits(), label, gamma=2.0).item() == pytest.approx(expected, rel=1e-6)
    assert focal_loss(_logits(), label, gamma=0.0).item() == pytest.approx(
        cross_entropy(_logits(), label).item(), rel=1e-6
    )


def test_segmentation_loss_upsamples_both_heads_and_sums():
    p = _logits(2, 2)
    label = torch.ones(1, 5, 7, dtype=torch.long)  # larger than the logits: upsampled
    expected = 2 * math.log(4 / 3)  # constant logits stay constant under bilinear upsampling
    assert segmentation_loss(p, p, label).item() == pytest.approx(expected, rel=1e-6)
    focal = segmentation_loss(p, p, label, kind="focal", focal_gamma=2.0)
    assert focal.item() == pytest.approx(2 * math.log(4 / 3) / 16, rel=1e-6)
    with pytest.raises(ValueError, match="loss.seg"):
        segmentation_loss(p, p, label, kind="dice")


def test_head_loss_is_one_heads_share_of_the_segmentation_loss():
    p1, p2 = _logits(2, 2), torch.zeros(1, 2, 2, 2)  # p2: softmax (1/2, 1/2) everywhere
    label = torch.ones(1, 5, 7, dtype=torch.long)
    assert head_loss(p1, label).item() == pytest.approx(math.log(4 / 3), rel=1e-6)
    assert head_loss(p2, label).item() == pytest.approx(math.log(2), rel=1e-6)
    assert head_loss(p1, label, "focal", 2.0).item() == pytest.approx(
        math.log(4 / 3) / 16, rel=1e-6
    )
    assert torch.equal(
        segmentation_loss(p1, p2, label), head_loss(p1, label) + head_loss(p2, label)
    )
    with pytest.raises(ValueError, match="loss.seg"):
        head_loss(p1, label, kind="dice")


def test_the_norm_term_of_a_zero_weight_costs_no_backward():
    features = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    features.requires_grad_()
    trained = stepwise_norm_term(features, 0.12, 1.5e-4)
    logged = stepwise_norm_term(features, 0.12, 0.0)
    assert trained.item() == pytest.approx(0.12**2, rel=1e-5) == logged.item()  # dr^2, float32
    assert trained.requires_grad and not logged.requires_grad  # lambda 0: features detached
    trained.backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_feature_norm_by_hand():
    f = torch.tensor([[[[3.0, 0.0]], [[4.0, 1.0]]]])  # B=1, C=2, h=1, w=2
    assert feature_norm(f).tolist() == [[[5.0, 1.0]]]


def test_stepwise_norm_loss_value_and_gradient_by_hand():
    dr = 0.12
    f = torch.tensor([[[[3.0, 0.0]], [[4.0, 1.0]]]], requires_grad=True)
    loss = stepwise_norm_loss(f, dr)
    # (stopgrad(n) + dr - n)^2 = dr^2 at every pixel
    assert loss.item() == pytest.approx(dr**2)
    loss.backward()
    # d/dF = -2 dr (F / n) / (B h w), B h w = 2: pixel 1 F/n = (0.6, 0.8), pixel 2 (0, 1)
    expected = torch.tensor([[[[-dr * 0.6, 0.0]], [[-dr * 0.8, -dr * 1.0]]]])
    torch.testing.assert_close(f.grad, expected)


def test_stepwise_norm_loss_one_sgd_step_raises_the_norm_by_about_dr():
    torch.manual_seed(0)
    f = torch.randn(2, 8, 3, 3, requires_grad=True)
    n0 = feature_norm(f).detach()
    stepwise_norm_loss(f, 0.12).backward()
    with torch.no_grad():
        f1 = f - (2 * 3 * 3 / 2) * f.grad  # lr = B h w / 2
    # each pixel's gradient is -2 dr F/n / (B h w): this step moves F by dr F/n, the norm by dr
    torch.testing.assert_close(feature_norm(f1) - n0, torch.full_like(n0, 0.12))


def test_poly_lr_by_hand():
    assert poly_lr(0, 1.0, 100, 0.9, 0) == 1.0
    assert poly_lr(50, 2.0, 100, 0.9, 0) == pytest.approx(2.0 * 0.5**0.9)
    assert poly_lr(100, 1.0, 100, 0.9, 0) == 0.0
    assert poly_lr(200, 1.0, 100, 0.9, 0) == 0.0
    # warm-up: (i + 1) / W times the poly value
    assert poly_lr(4, 1.0, 100, 1.0, 10) == pytest.approx(0.96 * 0.5)
    assert poly_lr(9, 1.0, 100, 1.0, 10) == pytest.approx(0.91)
    assert poly_lr(10, 1.0, 100, 1.0, 10) == pytest.approx(0.90)


def test_damping_by_hand():
    assert damping(0, 150) == 1.0
    assert damping(75, 150) == 0.5
    assert damping(300, 150) == 0.0
    assert norm_damping(50, 150) == pytest.approx(0.5)
    assert norm_damping(100, 150) == pytest.approx(0.0)
    assert norm_damping(120, 150) == 0.0
    assert norm_damping(120, 150, clamp=False) == pytest.approx(-0.2)


def test_the_norm_loss_and_its_damping_lift_out_of_the_repository(tmp_path):
    """utils/losses.py and utils/schedules.py copied alone into a folder import with torch as
    their only dependency: the norm loss and its damping work without the repository."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    utils = Path(__file__).resolve().parent.parent / "utils"
    for name in ("losses.py", "schedules.py"):
        shutil.copy(utils / name, tmp_path / name)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import torch, losses, schedules\n"
        "f = torch.tensor([[[[3.0]], [[4.0]]]], requires_grad=True)\n"
        "loss = schedules.norm_damping(50, 150) * losses.stepwise_norm_loss(f, 0.12)\n"
        "loss.backward()\n"
        "repo = [m for m in sys.modules if m.split('.')[0] in ('utils', 'dataset', 'model')]\n"
        "print(round(loss.item(), 6), [round(g, 4) for g in f.grad.flatten().tolist()], repo)\n"
    )
    # -I: no PYTHONPATH, no current folder on sys.path (only the copies' folder is added)
    out = subprocess.run([sys.executable, "-I", "-c", code, str(tmp_path)], cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    # 0.5 * dr^2; the gradient 0.5 * -2 dr F/n over one pixel: F/n = (0.6, 0.8)
    assert out.split() == ["0.0072", "[-0.072,", "-0.096]", "[]"]


def test_the_losses_ignore_the_datasets_ignore_label():
    from dataset.labels import IGNORE_INDEX
    from utils.losses import IGNORE_INDEX as LOSSES_IGNORE_INDEX

    assert LOSSES_IGNORE_INDEX == IGNORE_INDEX
