"""The loss terms of utils/losses.py against values worked out by hand: the segmentation
losses, the feature norm and its stepwise loss, CLAN's discrepancy and weighted BCE, MaxSquare's
target losses (plain, image-wise weighted, multi-level pseudo-labels; and against the released
definition at batch 1), and DACS's pixel-weighted cross-entropy."""

import math

import pytest
import torch

from utils.losses import (
    IGNORE_INDEX,
    cross_entropy,
    discrepancy_map,
    feature_norm,
    focal_loss,
    head_loss,
    image_wise_max_square_loss,
    image_wise_weights,
    max_square_loss,
    multi_level_pseudo_label,
    pixel_weighted_cross_entropy,
    segmentation_loss,
    stepwise_norm_loss,
    stepwise_norm_term,
    weight_discrepancy_loss,
    weighted_bce_with_logits,
)

LN3 = math.log(3.0)


def _logits(h=1, w=3):
    # two classes, softmax = (1/4, 3/4) at every pixel
    return torch.tensor([0.0, LN3]).view(1, 2, 1, 1).expand(1, 2, h, w).clone()


# --- segmentation losses ---------------------------------------------------------------------


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


# --- the feature norm and its stepwise loss --------------------------------------------------


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


# --- CLAN's terms ----------------------------------------------------------------------------


def test_discrepancy_map_by_hand():
    # softmax(p1) = (1/2, 1/2), softmax(p2) = (1/4, 3/4):
    # cos = (1/8 + 3/8) / (sqrt(1/2) sqrt(10/16))
    p1 = torch.zeros(1, 2, 1, 1)
    p2 = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)
    cos = 0.5 / (math.sqrt(0.5) * math.sqrt(10 / 16))
    assert discrepancy_map(p1, p2).shape == (1, 1, 1, 1)
    assert discrepancy_map(p1, p2).item() == pytest.approx(1 - cos, rel=1e-6)
    assert discrepancy_map(p2, p2).item() == pytest.approx(0.0, abs=1e-6)


def test_weighted_bce_by_hand():
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 1, 1, 2)  # sigmoid: 1/2, 3/4
    weight = torch.tensor([0.0, 0.5]).view(1, 1, 1, 2)
    # label 0: BCE = -ln(1 - sigmoid) = ln 2, ln 4
    assert weighted_bce_with_logits(logits, 0.0).item() == pytest.approx(
        (math.log(2) + math.log(4)) / 2, rel=1e-6
    )
    # (40 M + 0.4) * BCE: 0.4 ln 2 and 20.4 ln 4
    expected = (0.4 * math.log(2) + 20.4 * math.log(4)) / 2
    assert weighted_bce_with_logits(logits, 0.0, weight, 40.0, 0.4).item() == pytest.approx(
        expected, rel=1e-6
    )
    # label 1: -ln(sigmoid) = ln 2, ln(4/3)
    assert weighted_bce_with_logits(logits, 1.0).item() == pytest.approx(
        (math.log(2) + math.log(4 / 3)) / 2, rel=1e-6
    )


def test_weight_discrepancy_by_hand():
    w1 = torch.tensor([1.0, 0.0, 1.0])
    w2 = torch.tensor([1.0, 1.0, 0.0])
    assert weight_discrepancy_loss(w1, w2).item() == pytest.approx(1.5)  # cos 1/2, plus 1
    assert weight_discrepancy_loss(w1, -w1).item() == pytest.approx(0.0, abs=1e-7)


# --- MaxSquare's target losses ---------------------------------------------------------------


def _prob(b=2, c=4, h=3, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(b, c, h, w, generator=g) * 3, dim=1)


def _released_image_wise(prob, ratio):
    """The released IW definition, written out for one image (batch 1): a histogram of the
    argmax over the C classes, w_c = 1 / max(N_c^r * N^(1-r), 1), the argmax class's weight on
    every channel, and the sum over B * C."""
    assert prob.shape[0] == 1
    c = prob.shape[1]
    argmax = prob.argmax(dim=1)[0]
    hist = torch.histc(argmax.float(), bins=c, min=0, max=c - 1)
    w_class = 1 / torch.max(hist**ratio * hist.sum() ** (1 - ratio), torch.ones(1))
    weight = w_class[argmax]  # H x W, broadcast over the channels as at batch 1
    return -torch.sum(prob**2 * weight) / (1 * c)


def test_max_square_of_a_one_hot_prob_is_minus_one_over_2c_with_its_gradient():
    b, c, h, w = 2, 4, 3, 5
    prob = torch.zeros(b, c, h, w)
    prob[:, 1] = 1.0
    prob.requires_grad_()
    loss = max_square_loss(prob)
    loss.backward()
    assert loss.item() == pytest.approx(-1 / (2 * c), abs=1e-7)
    assert torch.allclose(prob.grad, -prob.detach() / (b * c * h * w))


def test_max_square_gradient_is_minus_prob_over_the_count_for_any_prob():
    prob = _prob().requires_grad_()
    max_square_loss(prob).backward()
    assert torch.allclose(prob.grad, -prob.detach() / prob.numel(), atol=1e-9)


def test_image_wise_with_ratio_zero_is_twice_the_plain_loss():
    prob = _prob()
    assert image_wise_max_square_loss(prob, 0.0).item() == pytest.approx(
        2 * max_square_loss(prob).item(), rel=1e-6
    )


def test_image_wise_weights_by_hand():
    # one 1 x 4 image, 2 classes: argmax = 0, 0, 0, 1; N = 4, ratio 0.5
    prob = torch.tensor([[[[0.9, 0.8, 0.6, 0.3]], [[0.1, 0.2, 0.4, 0.7]]]])
    weights = image_wise_weights(prob, 0.5)
    w0, w1 = 1 / (3**0.5 * 4**0.5), 1 / (1**0.5 * 4**0.5)
    assert torch.allclose(weights, torch.tensor([[[w0, w0, w0, w1]]]))
    expected = -(w0 * (0.81 + 0.01 + 0.64 + 0.04 + 0.36 + 0.16) + w1 * (0.09 + 0.49)) / 2
    assert image_wise_max_square_loss(prob, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_image_wise_weights_are_floored_at_one_in_the_denominator():
    # N_c^r N^(1-r) < 1 only for tiny images: 1 pixel, so the weight is 1 / max(1, 1) = 1
    prob = torch.tensor([[[[0.7]], [[0.3]]]])
    assert image_wise_weights(prob, 0.2).item() == 1.0


def test_image_wise_weights_are_constant_within_a_class_detached_and_on_every_channel():
    prob = _prob(b=1, c=3, h=4, w=4).requires_grad_()
    weights = image_wise_weights(prob, 0.2)
    assert not weights.requires_grad
    argmax = prob.argmax(dim=1)
    for k in argmax.unique():
        assert weights[argmax == k].unique().numel() == 1
    # every channel of a pixel gets that pixel's weight: d loss / d prob = -2 prob w / (B C)
    image_wise_max_square_loss(prob, 0.2).backward()
    expected = -2 * prob.detach() * weights.unsqueeze(1) / (1 * 3)
    assert torch.allclose(prob.grad, expected, atol=1e-8)


def test_image_wise_equals_the_released_definition_at_batch_one():
    prob = _prob(b=1, c=19, h=8, w=16, seed=3)
    ours = image_wise_max_square_loss(prob, 0.2)
    assert ours.item() == pytest.approx(_released_image_wise(prob, 0.2).item(), rel=1e-6)


def test_image_wise_at_batch_two_is_the_mean_of_the_per_image_losses():
    prob = _prob(b=2, c=4, h=6, w=7, seed=5)
    per_image = [image_wise_max_square_loss(prob[i : i + 1], 0.2) for i in range(2)]
    assert image_wise_max_square_loss(prob, 0.2).item() == pytest.approx(
        (per_image[0] + per_image[1]).item() / 2, rel=1e-6
    )
    # ... and each image is weighted by its own counts: swapping the images changes nothing
    assert image_wise_max_square_loss(prob.flip(0), 0.2).item() == pytest.approx(
        image_wise_max_square_loss(prob, 0.2).item(), rel=1e-6
    )


def test_multi_level_pseudo_labels_or_the_thresholds_and_take_the_averaged_argmax():
    # 2 classes, 4 pixels in a row
    main = torch.tensor([[[[0.96, 0.40, 0.50, 0.60]], [[0.04, 0.60, 0.50, 0.40]]]])
    aux = torch.tensor([[[[0.10, 0.02, 0.50, 0.70]], [[0.90, 0.98, 0.50, 0.30]]]])
    label = multi_level_pseudo_label(main, aux, threshold=0.95)
    # pixel 0: main confident; average (0.53, 0.47) -> class 0
    # pixel 1: aux confident; average (0.21, 0.79) -> class 1
    # pixels 2, 3: neither head above 0.95 -> ignored
    assert label.tolist() == [[[0, 1, IGNORE_INDEX, IGNORE_INDEX]]]
    assert label.dtype == torch.int64


def test_multi_level_pseudo_labels_carry_no_gradient():
    main = _prob(b=1, c=3).requires_grad_()
    aux = _prob(b=1, c=3, seed=1).requires_grad_()
    label = multi_level_pseudo_label(main, aux, threshold=0.5)
    assert not label.requires_grad and main.grad is None


# --- DACS's loss on the mixed images ---------------------------------------------------------


def test_pixel_weighted_ce_counts_ignored_pixels_in_the_mean_as_zero() -> None:
    logits = torch.tensor([[[[2.0, 0.0, 1.0]], [[0.0, 2.0, 1.0]]]])  # 1 x 2 x 1 x 3
    label = torch.tensor([[[0, 0, 255]]])
    weight = torch.tensor([[[1.0, 0.5, 1.0]]])
    ce0 = -torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0]
    ce1 = -torch.log_softmax(torch.tensor([0.0, 2.0]), 0)[0]
    expected = (1.0 * ce0 + 0.5 * ce1 + 0.0) / 3
    torch.testing.assert_close(pixel_weighted_cross_entropy(logits, label, weight), expected)


# --- the module as a whole -------------------------------------------------------------------


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
    from dataset import labels

    assert IGNORE_INDEX == labels.IGNORE_INDEX
