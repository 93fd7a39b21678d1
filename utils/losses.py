"""Loss terms as pure functions of tensors (docs/method.md, "Losses").

Shapes: logits ``B x K x h x w``, labels ``B x H x W`` (trainIds, ``ignore_index`` ignored),
features ``B x C x h x w``. Log-losses and norms are computed in float32 whatever the input
dtype, so the same code serves mixed precision.

This module imports torch only: it can be copied into another repository as it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255  # the datasets' label for pixels outside the classes


def upsample_to(
    logits: torch.Tensor, size: tuple[int, int], align_corners: bool = True
) -> torch.Tensor:
    """Bilinear upsampling (align_corners=True, as DeepLab-v2; DAFormer's is False) of
    ``B x K x h x w`` to ``size``, in float32 whatever the input dtype: under mixed precision the
    full-resolution logits that the losses, the map M and D's input are computed from keep
    float32 precision."""
    logits = logits.float()
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


def cross_entropy(
    logits: torch.Tensor, label: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Pixel-wise CE averaged over non-ignored pixels; ``logits`` already at label size.

    Returns 0 (with a gradient path) when every pixel is ignored, instead of NaN.
    """
    valid = label != ignore_index
    loss = F.cross_entropy(logits.float(), label, ignore_index=ignore_index, reduction="sum")
    return loss / valid.sum().clamp(min=1)


def focal_loss(
    logits: torch.Tensor, label: torch.Tensor, gamma: float, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Focal form ``mean(-(1 - p_y)^gamma * log p_y)`` over non-ignored pixels.

    This is what the released CLAN/FeatureToAdapt code calls ``CrossEntropy2d``; gamma 0 is CE.
    """
    valid = label != ignore_index
    logp = F.log_softmax(logits.float(), dim=1)  # B x K x H x W
    target = torch.where(valid, label, torch.zeros_like(label))
    logp_y = logp.gather(1, target.unsqueeze(1)).squeeze(1)  # B x H x W
    loss = -((1.0 - logp_y.exp()) ** gamma) * logp_y
    return (loss * valid).sum() / valid.sum().clamp(min=1)


def head_loss(
    logits: torch.Tensor,
    label: torch.Tensor,
    kind: str = "ce",
    focal_gamma: float = 2.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """One head's segmentation loss ``l(up(logits), y)``, with l = CE (paper) or focal
    (released code), the logits upsampled to the label's size."""
    logits = upsample_to(logits, tuple(label.shape[-2:]))
    if kind == "ce":
        return cross_entropy(logits, label, ignore_index)
    if kind == "focal":
        return focal_loss(logits, label, focal_gamma, ignore_index)
    raise ValueError(f"loss.seg: expected 'ce' or 'focal', got {kind!r}")


def segmentation_loss(
    p1: torch.Tensor | None,
    p2: torch.Tensor,
    label: torch.Tensor,
    kind: str = "ce",
    focal_gamma: float = 2.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """``L_seg = l(up(p1), y) + l(up(p2), y)``: both heads' ``head_loss``; ``l(up(p2), y)``
    alone for a network of one head (DAFormer's: ``p1`` is None)."""
    loss = head_loss(p2, label, kind, focal_gamma, ignore_index)
    if p1 is None:
        return loss
    return head_loss(p1, label, kind, focal_gamma, ignore_index) + loss


def feature_norm(features: torch.Tensor) -> torch.Tensor:
    """L2 norm over channels at every pixel: ``B x C x h x w`` -> ``B x h x w`` (float32)."""
    return torch.linalg.vector_norm(features.float(), ord=2, dim=1)


def stepwise_norm_loss(features: torch.Tensor, delta_r: float) -> torch.Tensor:
    """Step-wise adaptive feature norm: ``mean((stopgrad(n) + dr - n)^2)``, n = ||F||_2 per pixel.

    ``features``: ``B x C x h x w`` backbone features F(x); the mean runs over the N = B h w
    pixels. ``stopgrad(n)`` is F(x, theta_0), the value of this very forward pass before the
    update, so the loss always equals ``dr^2`` and its gradient pushes every pixel's norm up by
    about dr: d/dF = -2 dr * F / (n * N). No second forward pass is needed.
    """
    norms = feature_norm(features)
    return ((norms.detach() + delta_r - norms) ** 2).mean()


def stepwise_norm_term(features: torch.Tensor, delta_r: float, lambda_norm: float) -> torch.Tensor:
    """``stepwise_norm_loss`` of a term weighted ``lambda_norm`` (unweighted): with lambda_norm
    0 (a setup's baseline) the features are detached, so the term, still logged, costs no
    backward."""
    return stepwise_norm_loss(features if lambda_norm > 0 else features.detach(), delta_r)


def discrepancy_map(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """CLAN's category-level map ``M = 1 - cos(softmax(p1), softmax(p2))`` over classes at every
    pixel: ``B x K x H x W`` logits -> ``B x 1 x H x W`` in [0, 1]."""
    q1 = F.softmax(p1.float(), dim=1)
    q2 = F.softmax(p2.float(), dim=1)
    return 1.0 - F.cosine_similarity(q1, q2, dim=1, eps=1e-12).unsqueeze(1)


def weighted_bce_with_logits(
    logits: torch.Tensor,
    domain: float,
    weight_map: torch.Tensor | None = None,
    lambda_local: float = 40.0,
    eps: float = 0.4,
    use_map: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """``mean((lambda_local * M + eps) * BCE(logits, domain))``; plain ``mean(BCE)`` when
    ``weight_map`` is None or ``use_map`` is 0. ``logits``: D's map at full size
    ``B x 1 x H x W``; ``domain``: the label every pixel is pushed to (source 0, target 1).

    ``use_map`` (1 or 0, a number or a 0-dim tensor) switches the map on and off without a
    branch, as a CUDA graph that replays one step for every step needs: the weight is
    ``use_map * (lambda_local * M + eps) + (1 - use_map)``, exactly the map's weight for 1 and
    exactly 1 for 0."""
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(
        logits, torch.full_like(logits, domain), reduction="none"
    )
    if weight_map is None:
        return bce.mean()
    weight = use_map * (lambda_local * weight_map + eps) + (1 - use_map)
    return (weight * bce).mean()


def weight_discrepancy_loss(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """``cos(w1, w2) + 1`` between the flattened classifier weights (the +1 keeps it positive)."""
    return F.cosine_similarity(w1.float(), w2.float(), dim=0) + 1.0


def max_square_loss(prob: torch.Tensor) -> torch.Tensor:
    """MaxSquare's target loss ``-mean(prob^2) / 2`` over all ``B x C x H x W`` softmax values
    (Chen et al., 2019). ``prob`` keeps its gradient: d/dprob = -prob / (B C H W)."""
    return -(prob.float() ** 2).mean() / 2


def image_wise_weights(prob: torch.Tensor, ratio: float = 0.2) -> torch.Tensor:
    """MaxSquare + IW's per-pixel weight, detached: in each image, a pixel predicted as class c
    weighs ``1 / max(N_c^ratio * N^(1 - ratio), 1)``, with N_c the image's pixels whose argmax
    is c and N its pixel count. ``B x C x H x W`` -> ``B x H x W``.

    The counts are summed on the device (no histogram on the host), so the step stays free of
    host syncs."""
    b, c, h, w = prob.shape
    argmax = prob.detach().argmax(dim=1).flatten(1)  # B x HW
    counts = torch.zeros(b, c, device=prob.device, dtype=torch.float32)
    counts.scatter_add_(1, argmax, torch.ones_like(argmax, dtype=torch.float32))  # N_c: B x C
    n = float(h * w)
    class_weight = 1.0 / torch.clamp(counts**ratio * n ** (1.0 - ratio), min=1.0)  # B x C
    return class_weight.gather(1, argmax).view(b, h, w)


def image_wise_max_square_loss(prob: torch.Tensor, ratio: float = 0.2) -> torch.Tensor:
    """MaxSquare + IW: ``-sum(prob^2 * w) / (B * C)``, each pixel's weight w
    (``image_wise_weights``) multiplying all C channels.

    This is the mean over images of the per-image loss, for any batch. The released code's
    weights broadcast over the channels only at batch 1, where the two agree exactly."""
    b, c = prob.shape[:2]
    weight = image_wise_weights(prob, ratio).unsqueeze(1)  # B x 1 x H x W
    return -((prob.float() ** 2) * weight).sum() / (b * c)


def multi_level_pseudo_label(
    prob_main: torch.Tensor,
    prob_aux: torch.Tensor,
    threshold: float = 0.95,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """MaxSquare + Multi's hard labels for the auxiliary head, without gradient: the argmax of
    ``(P_main + P_aux) / 2`` where either head's maximum probability exceeds ``threshold``, and
    ``ignore_index`` elsewhere. ``B x C x H x W`` twice -> ``B x H x W`` (int64)."""
    prob_main, prob_aux = prob_main.detach().float(), prob_aux.detach().float()
    label = ((prob_main + prob_aux) / 2).argmax(dim=1)
    confident = (prob_main.amax(dim=1) > threshold) | (prob_aux.amax(dim=1) > threshold)
    return torch.where(confident, label, torch.full_like(label, ignore_index))


def pixel_weighted_cross_entropy(
    logits: torch.Tensor,
    label: torch.Tensor,
    weight: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """DACS's loss on the mixed images: ``mean(w * CE)`` over all ``B x H x W`` pixels, an
    ignored pixel counting 0 (and still counted in the mean, as DACS's
    ``CrossEntropyLoss2dPixelWiseWeighted``); ``logits`` already at label size, ``weight``
    ``B x H x W`` (no gradient)."""
    ce = F.cross_entropy(logits.float(), label, ignore_index=ignore_index, reduction="none")
    return (ce * weight.detach().float()).mean()
