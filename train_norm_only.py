r"""Norm only (the paper's "Only Norm loss"), and Source only with ``loss.lambda_norm=0``.

G is trained with the segmentation loss on source crops and the step-wise L2 feature-norm loss
on the backbone features of source and target crops; no discriminator.

    python train_norm_only.py --config configs/demo/norm_only.yaml          # synthetic, CPU
    python train_norm_only.py --config configs/gta5_to_cityscapes/norm_only.yaml \
        model.init_from=weights/DeepLab_resnet_pretrained_init-f81d91e8.pth
    python train_norm_only.py --config configs/gta5_to_cityscapes/source_only.yaml
    python train_norm_only.py --resume runs/norm_only-20261127-120000       # continue a run
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

from dataset.datasets import Batch
from utils.config import Config, refuse
from utils.errors import run
from utils.losses import feature_norm, segmentation_loss, stepwise_norm_loss, stepwise_norm_term
from utils.setups import foreign_keys
from utils.training.cli import main as engine_main
from utils.training.state import TrainState, build_generator, norm_step_values

SETUP = "norm_only"


def build(cfg: Config, device: torch.device) -> TrainState:
    """G and its SGD optimizer (backbone x1, classifiers x10)."""
    model, optimizer = build_generator(cfg, device)
    return TrainState(
        cfg=cfg,
        device=device,
        model=model,
        modules={"G": model},
        optimizers={"G": optimizer},
        base_lrs={"G": cfg.optim.lr},
        uses_target=cfg.loss.lambda_norm > 0,  # Source only has no target pass
        partial_g_passes=cfg.loss.lambda_norm > 0,  # the target pass skips the heads
        schedule=norm_step_values,
    )


def train_step(
    state: TrainState, source: Batch, target: Batch | None, step: int
) -> dict[str, torch.Tensor | float]:
    """One step: source (L_seg + norm), then target (norm, features only); one backward each."""
    cfg, g = state.cfg, state.run("G")
    state.optimizers["G"].zero_grad(set_to_none=True)
    lambda_norm = cfg.loss.lambda_norm
    d_norm = state.values(step)["damping_norm"]  # a number, or the CUDA graph's tensor

    label = state.to_device(source.label)
    with state.autocast():
        out_s = g(state.to_device(source.image))
    loss_seg = segmentation_loss(out_s.p1, out_s.p2, label, cfg.loss.seg, cfg.loss.focal_gamma)
    loss_norm_s = stepwise_norm_term(out_s.features, cfg.loss.delta_r, lambda_norm)
    loss_source = (
        loss_seg
        + lambda_norm * d_norm * loss_norm_s
    )  # fmt: skip
    state.backward(loss_source)
    terms: dict[str, torch.Tensor | float] = {
        "loss_seg": loss_seg.detach(),
        "loss_norm_s": loss_norm_s.detach(),
        "feat_norm_s": feature_norm(out_s.features.detach()).mean(),
        "damping_norm": d_norm,
    }

    if target is not None:
        with state.autocast():
            out_t = g(state.to_device(target.image), heads=False)
        loss_norm_t = stepwise_norm_loss(out_t.features, cfg.loss.delta_r)
        loss_target = lambda_norm * d_norm * loss_norm_t
        state.backward(loss_target)
        terms["loss_norm_t"] = loss_norm_t.detach()
        terms["feat_norm_t"] = feature_norm(out_t.features.detach()).mean()

    state.step_optimizers()
    return terms


def check(cfg: Config) -> None:
    """The other setups' keys, which this setup would ignore, refused before any work."""
    refuse("train_norm_only.py", foreign_keys(cfg, "train_norm_only.py"))


def main(argv: Sequence[str] | None = None) -> int:
    return engine_main(__doc__, SETUP, build, train_step, argv, check=check)


if __name__ == "__main__":
    sys.exit(run(main))
