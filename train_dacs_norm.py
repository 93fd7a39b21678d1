r"""DACS + Norm: DACS's self-training (Tranheden et al., WACV 2021) with the step-wise L2
feature-norm loss; plain DACS with ``loss.lambda_norm=0``.

Each step, a mean teacher (an EMA of G, never trained) labels the target images; half of the
classes of each source image are pasted onto a target image (ClassMix), with their labels over
the teacher's; the mixed images are colour-jittered and blurred. G is trained with

    L = L_src + lambda_fd L_fd + lambda_mix L_mix + lambda_norm d_norm (L_norm(F_s) + L_norm(F_mix))

L_src the source CE, L_mix the CE on the mixed images against the mixed labels, each target
pixel weighted by the share of the teacher's confident pixels (source pixels weigh 1), and the
norm loss on the features of the source and mixed images (DeepLab-v2's layer4; DAFormer's last
MiT stage or fused head features, ``loss.norm_features``): one backward per step. The teacher
then moves towards G. The pieces are ``utils.self_training``.

DAFormer (Hoyer et al., CVPR 2022) is this step with ``model.arch=daformer`` and its additions,
each a key of ``loss.dacs`` (off by default): the batch's class pool for ClassMix
(``mix_classes``), pseudo-label weights zeroed on the top and bottom rows (``ignore_top``,
``ignore_bottom``), the source CE averaged over all pixels (``source_ce``), and the ImageNet
feature distance L_fd (``fd_lambda``, ``fd_classes``, ``fd_min_ratio``) between the encoder's
last stage and that of a frozen copy of the initial network (``utils.feature_distance``); the
teacher runs without dropout or drop path. Rare-class sampling is a key of the data.

    python train_dacs_norm.py --config configs/demo/dacs_norm.yaml       # synthetic, CPU
    python train_dacs_norm.py --config configs/gta5_to_cityscapes/dacs_norm.yaml \
        model.init_from=weights/resnet101COCO-41f33a49.pth
    python train_dacs_norm.py --config configs/gta5_to_cityscapes/daformer_norm.yaml \
        model.init_from=weights/mit_b5.pth                                  # DAFormer + Norm
    python train_dacs_norm.py --resume runs/dacs_norm-20261203-120000     # continue a run
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from dataset.datasets import Batch
from dataset.transforms import IMG_MEAN_BGR
from model.build import build_model
from model.contract import last_stage, split_output
from utils.config import Config, ConfigError, apply_preset, refuse
from utils.errors import run
from utils.feature_distance import feature_distance_mask, masked_feature_distance
from utils.losses import (
    feature_norm,
    head_loss,
    pixel_weighted_cross_entropy,
    stepwise_norm_term,
    upsample_to,
)
from utils.self_training import (
    LABEL_VALUES,
    class_mix_mask,
    draw_augmentation,
    ema_alpha,
    ema_blend,
    freeze_stochastic_layers,
    make_teacher,
    mix,
    pseudo_label,
    pseudo_label_weight,
    pseudo_weight_map,
    strong_augment,
)
from utils.setups import foreign_keys
from utils.training.cli import main as engine_main
from utils.training.state import TrainState, build_generator, norm_step_values

SETUP = "dacs_norm"


def build(cfg: Config, device: torch.device) -> TrainState:
    """G (the student) and its optimizer (``optim.optimizer``), and the teacher: G's copy,
    checkpointed with the run, never optimized. With the feature distance, also the frozen
    copy of the initial G that it reads (``imnet``, checkpointed too)."""
    model, optimizer = build_generator(cfg, device)
    modules = {"G": model, "teacher": make_teacher(model)}
    if cfg.loss.dacs.fd_lambda > 0:  # its forward reads the encoder alone (norm placement aside)
        frozen = build_model(cfg.model, "backbone").to(device)
        frozen.load_state_dict(model.state_dict())
        modules["imnet"] = frozen.requires_grad_(False).eval()
    return TrainState(
        cfg=cfg,
        device=device,
        model=model,
        modules=modules,
        optimizers={"G": optimizer},
        base_lrs={"G": cfg.optim.lr},
        uses_target=True,
        partial_g_passes=apply_preset(cfg.model).predict_with == "c2",  # C1 untrained
        schedule=step_values,
        scored="teacher" if cfg.eval.model == "teacher" else "G",
    )


def step_values(cfg: Config, step: int) -> dict[str, float | torch.Tensor]:
    """The step's values, a pure function of the step: d_norm, the teacher's EMA rate, and the
    random draws (ClassMix's class keys, the augmentation's parameters) from a stream seeded by
    the run's seed, the process's rank and the step, so a resumed run draws what the
    uninterrupted one would have."""
    ds = cfg.loss.dacs
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    seed = np.random.SeedSequence([cfg.train.seed, rank, step]).generate_state(1)[0]
    g = torch.Generator().manual_seed(int(seed))
    b = cfg.data.batch_size
    return {
        **norm_step_values(cfg, step),
        "ema_alpha": ema_alpha(step, ds.ema_alpha),
        "mix_keys": torch.rand(b, LABEL_VALUES, generator=g),
        **draw_augmentation(g, b, ds.jitter_p, ds.jitter_strength, ds.blur_p, ds.blur_sigma),
    }


def _on_device(state: TrainState, value: float | torch.Tensor) -> float | torch.Tensor:
    """A step value where the step computes: numbers stay numbers; the CPU draws go to the
    device from pinned memory, without a sync (the CUDA graph's are there already)."""
    if not torch.is_tensor(value) or value.device.type != "cpu" or state.device.type == "cpu":
        return value
    if state.device.type == "cuda":
        value = value.pin_memory()
    return value.to(state.device, non_blocking=True)


def train_step(
    state: TrainState, source: Batch, target: Batch | None, step: int
) -> dict[str, torch.Tensor | float]:
    """The teacher's labels, the mix, then G on the source and mixed images: one backward; the
    optimizer step, then the teacher's EMA update."""
    assert target is not None  # (uses_target)
    cfg, g = state.cfg, state.run("G")
    lo, ds = cfg.loss, cfg.loss.dacs
    state.optimizers["G"].zero_grad(set_to_none=True)
    v = {k: _on_device(state, x) for k, x in state.values(step).items()}
    d_norm = v["damping_norm"]
    x_s, y_s = state.to_device(source.image), state.to_device(source.label)
    x_t = state.to_device(target.image)
    if x_t.shape != x_s.shape:
        raise ConfigError(f"DACS mixes source and target images pixel for pixel: source crops "
                         f"{tuple(x_s.shape)}, target {tuple(x_t.shape)}; give data.source and "
                         f"data.target the same crop")  # fmt: skip
    mixed = _mixed_batch(state, v, x_s, y_s, x_t)

    with state.autocast():
        if ds.student_passes == "one":  # BatchNorm sees both batches' statistics together
            out = g(torch.cat([x_s, mixed.image]))
            out_s, out_m = split_output(out, 2)
        else:  # DACS: a forward per batch
            out_s = g(x_s)
            out_m = g(mixed.image)
    heads = state.model.predicted_heads  # C2 (DACS's one classifier), or C1 and C2
    loss_seg = sum(_source_loss(p, y_s, cfg) for p in heads(out_s))
    loss_fd = _feature_distance(state, x_s, y_s, out_s)
    loss_mix = sum(pixel_weighted_cross_entropy(upsample_to(p, mixed.label.shape[-2:]),
                                                mixed.label, mixed.weight)
                   for p in heads(out_m))  # fmt: skip
    loss_norm_s = stepwise_norm_term(out_s.features, lo.delta_r, lo.lambda_norm)
    loss_norm_m = stepwise_norm_term(out_m.features, lo.delta_r, lo.lambda_norm)
    loss = (
        loss_seg
        + ds.fd_lambda * loss_fd
        + ds.lambda_mix * loss_mix
        + lo.lambda_norm * d_norm * (loss_norm_s + loss_norm_m)
    )  # fmt: skip
    state.backward(loss)
    state.step_optimizers()
    ema_blend(state.modules["teacher"], state.modules["G"], v["ema_alpha"], ds.teacher_bn)
    return {
        "loss_seg": loss_seg.detach(),
        "loss_mix": loss_mix.detach(),
        **({"loss_fd": loss_fd.detach()} if ds.fd_lambda > 0 else {}),
        "loss_norm_s": loss_norm_s.detach(),
        "loss_norm_m": loss_norm_m.detach(),
        "feat_norm_s": feature_norm(out_s.features.detach()).mean(),
        "feat_norm_m": feature_norm(out_m.features.detach()).mean(),
        "pseudo_weight": mixed.pseudo_weight,
        "mix_share": mixed.mask.float().mean(),
        "damping_norm": d_norm,
        "ema_alpha": v["ema_alpha"],
    }


def _source_loss(logits: torch.Tensor, label: torch.Tensor, cfg: Config) -> torch.Tensor:
    """A head's source loss: ``loss.seg`` over the labelled pixels, or CE over all of them, an
    ignored pixel counting 0 (``loss.dacs.source_ce=all``, mmseg's mean, DAFormer's)."""
    lo = cfg.loss
    if lo.dacs.source_ce == "valid":
        return head_loss(logits, label, lo.seg, lo.focal_gamma)
    logits = upsample_to(logits, label.shape[-2:])
    return pixel_weighted_cross_entropy(logits, label, torch.ones_like(label, dtype=torch.float))


def _feature_distance(
    state: TrainState, x_s: torch.Tensor, y_s: torch.Tensor, out_s
) -> torch.Tensor:
    """L_fd: the encoder's last stage on the source images against the frozen initial copy's,
    on the cells of ``loss.dacs.fd_classes`` (0, unused, without the distance)."""
    ds, k = state.cfg.loss.dacs, state.cfg.model.num_classes
    if ds.fd_lambda <= 0:
        return torch.zeros((), device=x_s.device)
    frozen = state.modules["imnet"].eval()  # (in eval mode whatever switched it)
    with torch.no_grad(), state.autocast():
        reference = last_stage(frozen(x_s, heads=False))
    features = last_stage(out_s)
    mask = feature_distance_mask(y_s, features.shape[-2:], ds.fd_classes, ds.fd_min_ratio, k)
    return masked_feature_distance(features, reference, mask)


class Mixed(NamedTuple):
    """ClassMix's batch: the mixed images, labels and pixel weights, the mask of the pasted
    source pixels, and the teacher's confident share (the target pixels' weight)."""

    image: torch.Tensor  # B x 3 x H x W
    label: torch.Tensor  # B x H x W
    weight: torch.Tensor  # B x H x W
    mask: torch.Tensor  # B x H x W, True where the source's pixel is pasted
    pseudo_weight: torch.Tensor  # B x 1 x 1


def _mixed_batch(
    state: TrainState,
    v: dict[str, float | torch.Tensor],
    x_s: torch.Tensor,
    y_s: torch.Tensor,
    x_t: torch.Tensor,
) -> Mixed:
    """The teacher's pseudo-labels (without gradient, in the step's precision), then ClassMix:
    source pixels of the drawn classes over the target, label and weight alike, the mixed
    images strongly augmented."""
    ds = state.cfg.loss.dacs
    teacher = freeze_stochastic_layers(state.modules["teacher"])  # (none in DeepLab-v2)
    with torch.no_grad(), state.autocast():
        logits_t = teacher.predict(state.run("teacher")(x_t))
    prob_t = F.softmax(upsample_to(logits_t, y_s.shape[-2:]), dim=1)
    label_t, _ = pseudo_label(prob_t)
    weight_t = pseudo_label_weight(prob_t, ds.threshold)
    mask = class_mix_mask(y_s, keys=v["mix_keys"], include_ignore=ds.mix_ignore,
                          pool=ds.mix_classes)  # fmt: skip
    augment = {k: v[k] for k in ("jitter_on", "jitter", "blur_on", "blur_sigma")}
    x_mix = strong_augment(mix(mask, x_s, x_t), augment, IMG_MEAN_BGR, ds.blur_kernel)
    y_mix = mix(mask, y_s, label_t)
    w_t = pseudo_weight_map(weight_t, prob_t[:, 0].shape, ds.ignore_top, ds.ignore_bottom)
    w_mix = mix(mask, torch.ones_like(prob_t[:, 0]), w_t)
    return Mixed(x_mix, y_mix, w_mix, mask, weight_t)


def check(cfg: Config) -> None:
    """What this setup cannot train, refused before any work: CLAN's and MaxSquare's keys (it
    has no discriminator and no MaxSquare loss), and source and target crops that differ (the
    mix is pixel for pixel)."""
    problems = foreign_keys(cfg, "train_dacs_norm.py")
    s, t = cfg.data.source, cfg.data.target
    size_s, size_t = s.crop or s.resize, t.crop or t.resize
    if size_s is None or size_t is None or tuple(size_s) != tuple(size_t):
        problems.append(
            f"data.source.crop / data.target.crop: DACS pastes source pixels onto target images "
            f"of the same size; got source {list(size_s) if size_s else None}, target "
            f"{list(size_t) if size_t else None} (set both crops, as the DACS configs do)"
        )
    refuse("train_dacs_norm.py", problems)


def main(argv: Sequence[str] | None = None) -> int:
    return engine_main(__doc__, SETUP, build, train_step, argv, check=check)


if __name__ == "__main__":
    sys.exit(run(main))
