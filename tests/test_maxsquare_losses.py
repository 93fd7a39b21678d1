"""MaxSquare's target losses (plain, image-wise weighted, multi-level pseudo-labels) against
values worked out by hand and against the released definition at batch 1."""

import pytest
import torch

from utils.losses import (
    IGNORE_INDEX,
    image_wise_max_square_loss,
    image_wise_weights,
    max_square_loss,
    multi_level_pseudo_label,
)


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
