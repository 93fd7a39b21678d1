r"""MaxSquare + Norm: MaxSquare's target losses (Chen et al., 2019) with the step-wise L2
feature-norm loss; plain MaxSquare with ``loss.lambda_norm=0``.

G (the multi-level DeepLab-v2 of the ``maxsquare`` preset: C2 on layer4 is the output, C1 on
layer3 the auxiliary head) is trained with the CE of C2 on source images and MaxSquare's loss
on C2's target probabilities: ``-mean(P^2)/2`` (MaxSquare), or its image-wise weighted form
(``loss.maxsquare.image_wise``, MaxSquare + IW). ``loss.maxsquare.multi`` (+ Multi) trains C1
too: source CE and, on the target, a CE on the pseudo-labels both heads agree on. The norm loss
acts on the layer4 features of both domains. With ``lambda_target`` and ``lambda_norm`` 0 there
is no target pass: source-only training, the stage MaxSquare starts from.

    python train_maxsquare_norm.py --config configs/demo/maxsquare_source.yaml   # the start
    python train_maxsquare_norm.py --config configs/demo/maxsquare_norm.yaml     # then adapt
    python train_maxsquare_norm.py --config configs/gta5_to_cityscapes/maxsquare_iw_norm.yaml \
        model.init_from=pretrained/GTA5_source.pth
    python train_maxsquare_norm.py --resume runs/maxsquare_norm-20261202-120000  # continue
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dataset.datasets import Batch
from utils.config import Config, apply_preset, refuse
from utils.errors import run
from utils.losses import (
    IGNORE_INDEX,
    cross_entropy,
    feature_norm,
    head_loss,
    image_wise_max_square_loss,
    max_square_loss,
    multi_level_pseudo_label,
    stepwise_norm_term,
    upsample_to,
)
from utils.setups import foreign_keys
from utils.training.cli import main as engine_main
from utils.training.state import TrainState, build_generator, norm_step_values

SETUP = "maxsquare_norm"


def build(cfg: Config, device: torch.device) -> TrainState:
    """G and its SGD optimizer (backbone x1, classifiers x10); no discriminator."""
    model, optimizer = build_generator(cfg, device)
    ms = cfg.loss.maxsquare
    return TrainState(
        cfg=cfg,
        device=device,
        model=model,
        modules={"G": model},
        optimizers={"G": optimizer},
        base_lrs={"G": cfg.optim.lr},
        uses_target=ms.lambda_target > 0 or cfg.loss.lambda_norm > 0,
        # C1 trains only with + Multi, and the heads only with a target loss
        partial_g_passes=not ms.multi or ms.lambda_target == 0,
        schedule=norm_step_values,
    )


def train_step(
    state: TrainState, source: Batch, target: Batch | None, step: int
) -> dict[str, torch.Tensor | float]:
    """Source (CE + norm), then target (MaxSquare + norm); one forward and one backward each."""
    cfg, g = state.cfg, state.run("G")
    lo, ms = cfg.loss, cfg.loss.maxsquare
    state.optimizers["G"].zero_grad(set_to_none=True)
    d_norm = state.values(step)["damping_norm"]  # a number, or the CUDA graph's tensor

    y_s = state.to_device(source.label)
    with state.autocast():
        out_s = g(state.to_device(source.image))
    loss_seg = head_loss(out_s.p2, y_s, lo.seg, lo.focal_gamma)  # C2, the output
    loss_norm_s = stepwise_norm_term(out_s.features, lo.delta_r, lo.lambda_norm)
    # + Multi: C1 on layer3 too, weighted lambda_aux (their lambda_seg); no term without it
    loss_seg_aux = head_loss(out_s.p1, y_s, lo.seg, lo.focal_gamma) if ms.multi else None
    loss_source = (
        loss_seg
        + lo.lambda_norm * d_norm * loss_norm_s
        + (ms.lambda_aux * loss_seg_aux if ms.multi else 0.0)
    )  # fmt: skip
    state.backward(loss_source)
    terms: dict[str, torch.Tensor | float] = {}
    if ms.multi:
        terms["loss_seg_aux"] = loss_seg_aux.detach()
    terms.update(loss_seg=loss_seg.detach(), loss_norm_s=loss_norm_s.detach(),
                 feat_norm_s=feature_norm(out_s.features.detach()).mean(),
                 damping_norm=d_norm)  # fmt: skip

    if target is not None:
        terms.update(_target_terms(state, g, state.to_device(target.image), d_norm))

    state.step_optimizers()
    return terms


def _target_terms(
    state: TrainState, g: torch.nn.Module, x_t: torch.Tensor, d_norm: float | torch.Tensor
) -> dict[str, torch.Tensor]:
    """The target pass and its backward: lambda_target x MaxSquare (+ IW) on C2's
    probabilities at input size, the norm loss, and with + Multi C1's pseudo-label CE."""
    lo, ms = state.cfg.loss, state.cfg.loss.maxsquare
    size = x_t.shape[-2:]
    with state.autocast():
        out_t = g(x_t)
    prob_t = F.softmax(upsample_to(out_t.p2, size), dim=1)  # B x C x H x W, float32
    if ms.image_wise:
        loss_ms = image_wise_max_square_loss(prob_t, ms.iw_ratio)
    else:
        loss_ms = max_square_loss(prob_t)
    loss_norm_t = stepwise_norm_term(out_t.features, lo.delta_r, lo.lambda_norm)
    terms = {"loss_target": loss_ms.detach(), "loss_norm_t": loss_norm_t.detach(),
             "feat_norm_t": feature_norm(out_t.features.detach()).mean()}  # fmt: skip
    if ms.multi:  # C1's CE on the pixels whose pseudo-label both heads agree on
        logits_aux = upsample_to(out_t.p1, size)
        label_aux = multi_level_pseudo_label(prob_t, F.softmax(logits_aux, dim=1), ms.threshold)
        loss_target_aux = cross_entropy(logits_aux, label_aux)
        terms["loss_target_aux"] = loss_target_aux.detach()
        terms["pseudo_label_share"] = (label_aux != IGNORE_INDEX).float().mean()
    loss_target = (
        ms.lambda_target * loss_ms
        + lo.lambda_norm * d_norm * loss_norm_t
        + (ms.lambda_aux * ms.lambda_target * loss_target_aux if ms.multi else 0.0)
    )  # fmt: skip
    state.backward(loss_target)
    return terms


def check(cfg: Config) -> None:
    """What this setup cannot train, refused before any work: a model whose output is not C2,
    + Multi without a layer3 C1, and the other setups' keys (this setup has no discriminator and
    no teacher)."""
    model = apply_preset(cfg.model)
    problems = []
    if model.predict_with != "c2":
        problems.append(
            f"model.predict_with={model.predict_with!r}: MaxSquare trains and predicts with C2 "
            f"alone (C1 is its auxiliary head): use model.preset=maxsquare"
        )
    if cfg.loss.maxsquare.multi and not model.multi_level:
        problems.append(
            "loss.maxsquare.multi=true needs C1 on layer3 (model.multi_level=true, as "
            "model.preset=maxsquare sets it)"
        )
    problems += foreign_keys(cfg, "train_maxsquare_norm.py")
    refuse("train_maxsquare_norm.py", problems)


def main(argv: Sequence[str] | None = None) -> int:
    return engine_main(__doc__, SETUP, build, train_step, argv, check=check)


if __name__ == "__main__":
    sys.exit(run(main))
