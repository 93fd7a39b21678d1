r"""CLAN + Norm (the paper's main setup), and the CLAN baseline with ``loss.lambda_norm=0``.

G is trained with the segmentation loss on source crops, the step-wise L2 feature-norm loss on
source and target backbone features, CLAN's category-level adversarial loss on target
predictions and the classifiers' weight-discrepancy loss; D learns to tell source (0) from
target (1) predictions.

    python train_clan_norm.py --config configs/demo/clan_norm.yaml          # synthetic, CPU
    python train_clan_norm.py --config configs/gta5_to_cityscapes/clan_norm.yaml \
        model.init_from=weights/DeepLab_resnet_pretrained_init-f81d91e8.pth
    python train_clan_norm.py --config configs/gta5_to_cityscapes/clan.yaml  # CLAN baseline
    python train_clan_norm.py --resume runs/clan_norm-20261127-120000        # continue a run
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dataset.datasets import Batch
from model.contract import SegOutput
from model.discriminator import FCDiscriminator
from utils.config import Config, apply_preset, refuse
from utils.errors import run
from utils.losses import (
    discrepancy_map,
    feature_norm,
    segmentation_loss,
    stepwise_norm_term,
    upsample_to,
    weight_discrepancy_loss,
    weighted_bce_with_logits,
)
from utils.schedules import damping
from utils.setups import foreign_keys
from utils.training.cli import main as engine_main
from utils.training.state import TrainState, build_generator, norm_step_values

SETUP = "clan_norm"
SOURCE, TARGET = 0.0, 1.0  # domain labels of D


def build(cfg: Config, device: torch.device) -> TrainState:
    """G with SGD (backbone x1, classifiers x10) and D with Adam."""
    model, sgd = build_generator(cfg, device)
    disc = FCDiscriminator(cfg.model.num_classes, cfg.model.d_width).to(device)
    disc.train()
    o = cfg.optim
    adam = torch.optim.Adam(
        [{"params": disc.parameters(), "lr": o.lr_d, "lr_mult": 1.0}],
        lr=o.lr_d,
        betas=o.betas_d,
        weight_decay=o.weight_decay_d,
    )
    return TrainState(
        cfg=cfg,
        device=device,
        model=model,
        modules={"G": model, "D": disc},
        optimizers={"G": sgd, "D": adam},
        base_lrs={"G": o.lr, "D": o.lr_d},
        uses_target=True,
        schedule=step_values,
    )


def step_values(cfg: Config, step: int) -> dict[str, float]:
    """The step's scalars, pure functions of the step: the dampings d and d_norm, and whether
    the map M weighs G's adversarial loss (from step 1) and D's target loss (after the warm-up)
    as 1 or 0."""
    return {
        "damping": damping(step, cfg.optim.schedule_steps),
        **norm_step_values(cfg, step),
        "map_adv": float(step > 0),
        "map_d": float(step >= cfg.optim.warmup_steps),
    }


def train_step(
    state: TrainState, source: Batch, target: Batch | None, step: int
) -> dict[str, torch.Tensor | float]:
    """G on source (seg + norm), G on target (norm + adversarial + weight), then D on the
    detached source and target predictions; one backward per pass."""
    assert target is not None
    g, lo = state.run("G"), state.cfg.loss
    disc = state.modules["D"]  # plain D in the G step: no DDP hooks while it is frozen
    for opt in state.optimizers.values():
        opt.zero_grad(set_to_none=True)
    v = state.values(step)  # numbers; under train.cuda_graph, the graph's tensors holding them
    d, d_norm = v["damping"], v["damping_norm"]

    disc.requires_grad_(False)  # G step: D is frozen
    y_s = state.to_device(source.label)
    with state.autocast():
        out_s = g(state.to_device(source.image))
        p_s1, p_s2 = upsample_to(out_s.p1, y_s.shape[-2:]), upsample_to(out_s.p2, y_s.shape[-2:])
    loss_seg = segmentation_loss(p_s1, p_s2, y_s, lo.seg, lo.focal_gamma)
    loss_norm_s = stepwise_norm_term(out_s.features, lo.delta_r, lo.lambda_norm)
    loss_source = (
        loss_seg
        + lo.lambda_norm * d_norm * loss_norm_s
    )  # fmt: skip
    state.backward(loss_source)

    out_t, (p_t1, p_t2), prob_t, d_out = _target_forward(state, state.to_device(target.image))
    weight_map = discrepancy_map(p_t1, p_t2)  # B x 1 x H x W
    loss_adv = weighted_bce_with_logits(  # fool D: target predictions labelled source
        d_out, SOURCE, weight_map, lo.lambda_local, lo.eps, use_map=v["map_adv"]
    )
    loss_norm_t = stepwise_norm_term(out_t.features, lo.delta_r, lo.lambda_norm)
    loss_weight = weight_discrepancy_loss(*state.model.classifier_weights())
    loss_target = (
        lo.lambda_norm * d_norm * loss_norm_t
        + lo.lambda_adv * d * loss_adv
        + lo.lambda_weight * d * loss_weight
    )  # fmt: skip
    state.backward(loss_target)

    # D step: G's predictions detached, so G gets no gradient.
    disc.requires_grad_(True)
    prob_s = F.softmax(p_s1 + p_s2, dim=1).detach()
    d_terms = discriminator_step(state, prob_s, prob_t.detach(), weight_map.detach(),
                                 y_s.shape[-2:], v["map_d"])  # fmt: skip

    state.step_optimizers()
    return {
        "loss_seg": loss_seg.detach(),
        "loss_norm_s": loss_norm_s.detach(),
        "loss_norm_t": loss_norm_t.detach(),
        "loss_adv": loss_adv.detach(),
        "loss_weight": loss_weight.detach(),
        **d_terms,
        "feat_norm_s": feature_norm(out_s.features.detach()).mean(),
        "feat_norm_t": feature_norm(out_t.features.detach()).mean(),
        "weight_map_mean": weight_map.detach().mean(),
        "damping": d,  # the loop logs numbers and tensors on the device alike
        "damping_norm": d_norm,
    }


def _target_forward(
    state: TrainState, x_t: torch.Tensor
) -> tuple[SegOutput, tuple[torch.Tensor, torch.Tensor], torch.Tensor, torch.Tensor]:
    """G on the target images and the frozen D on its predictions: G's outputs, both heads'
    logits and their softmax at input size (float32), and D's logits there."""
    size_t = x_t.shape[-2:]
    with state.autocast():
        out_t = state.run("G")(x_t)
        p_t1, p_t2 = upsample_to(out_t.p1, size_t), upsample_to(out_t.p2, size_t)
        prob_t = F.softmax(p_t1 + p_t2, dim=1)  # float32: upsample_to returns float32
        d_out = upsample_to(state.modules["D"](prob_t), size_t)
    return out_t, (p_t1, p_t2), prob_t, d_out


def discriminator_step(
    state: TrainState,
    prob_s: torch.Tensor,
    prob_t: torch.Tensor,
    weight_map: torch.Tensor,
    size_s: tuple[int, int],
    use_map: float | torch.Tensor,
) -> dict[str, torch.Tensor]:
    """D's backward on G's source (domain 0) and target (1) probabilities, detached, its
    target loss weighted by the detached map M once the warm-up is over (``use_map``); returns
    its logged terms."""
    lo, d_run = state.cfg.loss, state.run("D")
    with state.autocast():
        d_out_s = upsample_to(d_run(prob_s), size_s)
        d_out_t = upsample_to(d_run(prob_t), prob_t.shape[-2:])
    loss_d_s = weighted_bce_with_logits(d_out_s, SOURCE)
    loss_d_t = weighted_bce_with_logits(
        d_out_t, TARGET, weight_map, lo.lambda_local, lo.eps, use_map=use_map
    )
    state.backward(loss_d_s + loss_d_t)
    return {
        "loss_d_s": loss_d_s.detach(),
        "loss_d_t": loss_d_t.detach(),
        "d_acc_s": (d_out_s.detach() < 0).float().mean(),
        "d_acc_t": (d_out_t.detach() > 0).float().mean(),
    }


def check(cfg: Config) -> None:
    """What this setup cannot train, refused before any work: a multi-level model (CLAN's
    weight-discrepancy loss compares C1's and C2's weights, which then differ in shape), and
    the other setups' keys (this setup has no MaxSquare loss and no teacher)."""
    problems = []
    if apply_preset(cfg.model).multi_level:
        problems.append(
            f"model.multi_level=true (model.preset={cfg.model.preset or 'custom'!r}): CLAN's "
            f"weight-discrepancy loss needs C1 and C2 of the same shape, and a multi-level C1 "
            f"reads layer3 ({cfg.model.base_width * 16} channels, C2 reads "
            f"{cfg.model.base_width * 32}); train CLAN with model.preset=clan, or the "
            f"multi-level model with train_norm_only.py"
        )
    problems += foreign_keys(cfg, "train_clan_norm.py")
    refuse("train_clan_norm.py", problems)


def main(argv: Sequence[str] | None = None) -> int:
    return engine_main(__doc__, SETUP, build, train_step, argv, check=check)


if __name__ == "__main__":
    sys.exit(run(main))
