"""The released code's procedures, which ``benchmarks.speed`` times against our steps: CLAN's
and the paper's (``reference_step``), MaxSquare's (``reference_maxsquare_step``) and DACS's
(``reference_dacs_step``, which hands a DAFormer network to DAFormer's procedure in
``references_daformer``). Each makes the same update as the setup's ``train_step`` (checked by
tests/test_benchmark_speed.py); utils.setups names each setup's reference by its function name."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import train_dacs_norm
from benchmarks.speed.references_daformer import reference_daformer_step
from dataset.datasets import Batch
from dataset.transforms import IMG_MEAN_BGR
from model.contract import split_output
from utils import losses
from utils.config import DacsConfig
from utils.schedules import damping, norm_damping
from utils.self_training import blur_kernel_size, color_jitter, gaussian_blur
from utils.training.state import TrainState


def reference_step(state: TrainState, source: Batch, target: Batch | None, step: int) -> None:
    """The released code's procedure: float32, heads on every pass, and the norm term's own
    backward through the backbone before the other terms' (same gradient, more compute)."""
    cfg, model, g = state.cfg, state.model, state.run("G")
    lo, n = cfg.loss, cfg.optim.schedule_steps
    d, d_norm = damping(step, n), norm_damping(step, n, lo.clamp_norm_damping)
    disc = state.modules.get("D")
    for opt in state.optimizers.values():
        opt.zero_grad(set_to_none=True)
    if disc is not None:
        disc.requires_grad_(False)
    y_s = state.to_device(source.label)
    out_s = g(state.to_device(source.image))
    if lo.lambda_norm > 0:
        (lo.lambda_norm * d_norm * losses.stepwise_norm_loss(out_s.features, lo.delta_r)).backward(
            retain_graph=True
        )
    p_s1, p_s2 = (
        losses.upsample_to(out_s.p1, y_s.shape[-2:]),
        losses.upsample_to(out_s.p2, y_s.shape[-2:]),
    )
    losses.segmentation_loss(p_s1, p_s2, y_s, lo.seg, lo.focal_gamma).backward()
    if target is not None:
        x_t = state.to_device(target.image)
        out_t = g(x_t)  # heads on, also where only the features are used
        if lo.lambda_norm > 0:  # CLAN's own code has no norm term and no such backward
            loss_norm = (
                lo.lambda_norm * d_norm * losses.stepwise_norm_loss(out_t.features, lo.delta_r)
            )
            loss_norm.backward(retain_graph=disc is not None)
        if disc is not None:
            p_t1, p_t2 = (
                losses.upsample_to(out_t.p1, x_t.shape[-2:]),
                losses.upsample_to(out_t.p2, x_t.shape[-2:]),
            )
            weight_map = losses.discrepancy_map(p_t1, p_t2)
            prob_t = F.softmax(p_t1 + p_t2, dim=1)
            d_out = losses.upsample_to(disc(prob_t), x_t.shape[-2:])
            map_g = weight_map if step > 0 else None  # train_clan_norm's schedule of M
            map_d = weight_map.detach() if step >= cfg.optim.warmup_steps else None
            loss_adv = losses.weighted_bce_with_logits(d_out, 0.0, map_g, lo.lambda_local, lo.eps)
            loss_weight = losses.weight_discrepancy_loss(*model.classifier_weights())
            (lo.lambda_adv * d * loss_adv + lo.lambda_weight * d * loss_weight).backward()
            disc.requires_grad_(True)
            d_run = state.run("D")
            prob_s = F.softmax(p_s1 + p_s2, dim=1).detach()
            loss_d = losses.weighted_bce_with_logits(
                losses.upsample_to(d_run(prob_s), y_s.shape[-2:]), 0.0
            )
            loss_d = loss_d + losses.weighted_bce_with_logits(
                losses.upsample_to(d_run(prob_t.detach()), x_t.shape[-2:]), 1.0,
                map_d, lo.lambda_local, lo.eps,
            )  # fmt: skip
            loss_d.backward()
    for opt in state.optimizers.values():
        opt.step()


def reference_maxsquare_step(
    state: TrainState, source: Batch, target: Batch | None, step: int
) -> None:
    """MaxSquare's released procedure (``tools/solve_gta5.py``): float32; the source CE's
    backward, then the target loss's; IW's class counts by ``torch.histc`` on the host, one
    image at a time (``utils/loss.py``); the source loss read back every step for its log; and
    the norm term, which their code lacks, with its own backward as the paper's code has it."""
    cfg, g = state.cfg, state.run("G")
    lo, ms = cfg.loss, cfg.loss.maxsquare
    d_norm = norm_damping(step, cfg.optim.schedule_steps, lo.clamp_norm_damping)
    optimizer = state.optimizers["G"]
    optimizer.zero_grad(set_to_none=True)
    y_s = state.to_device(source.label)
    out_s = g(state.to_device(source.image))
    if lo.lambda_norm > 0:
        norm_s = lo.lambda_norm * d_norm * losses.stepwise_norm_loss(out_s.features, lo.delta_r)
        norm_s.backward(retain_graph=True)
    loss = losses.cross_entropy(losses.upsample_to(out_s.p2, y_s.shape[-2:]), y_s)
    if ms.multi:
        aux = losses.cross_entropy(losses.upsample_to(out_s.p1, y_s.shape[-2:]), y_s)
        loss = loss + ms.lambda_aux * aux
    loss.backward()
    loss.item()  # their loss_seg_value += loss.cpu().item() / iter_num
    if target is not None:
        x_t = state.to_device(target.image)
        out_t = g(x_t)
        if lo.lambda_norm > 0:
            norm_t = lo.lambda_norm * d_norm * losses.stepwise_norm_loss(out_t.features, lo.delta_r)
            norm_t.backward(retain_graph=True)
        prob = F.softmax(losses.upsample_to(out_t.p2, x_t.shape[-2:]), dim=1)
        if ms.image_wise:
            b, c = prob.shape[:2]
            argmax = prob.detach().argmax(dim=1)
            weights = []
            for i in range(b):  # their histogram, on the host
                hist = torch.histc(argmax[i].cpu().float(), bins=c, min=0, max=c - 1)
                ratio = ms.iw_ratio
                w = 1 / torch.clamp(hist**ratio * hist.sum() ** (1 - ratio), min=1)
                weights.append(w.to(x_t.device)[argmax[i]])
            loss_t = -(prob**2 * torch.stack(weights).unsqueeze(1)).sum() / (b * c)
        else:
            loss_t = losses.max_square_loss(prob)
        loss_t = ms.lambda_target * loss_t
        if ms.multi:
            logits_aux = losses.upsample_to(out_t.p1, x_t.shape[-2:])
            label = losses.multi_level_pseudo_label(prob, F.softmax(logits_aux, dim=1),
                                                    ms.threshold)  # fmt: skip
            loss_t = loss_t + ms.lambda_aux * ms.lambda_target * losses.cross_entropy(
                logits_aux, label)  # fmt: skip
        loss_t.backward()
    optimizer.step()


def _dacs_mix(
    ds: DacsConfig,
    v: dict,
    x_s: torch.Tensor,
    y_s: torch.Tensor,
    x_t: torch.Tensor,
    label_t: torch.Tensor,
    weight: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """DACS's ClassMix one image at a time (``trainUDA.py``): the classes by ``torch.unique``,
    the mask by comparing the label with each drawn class, the mix, jitter and blur; returns
    the mixed images, their labels and their pixel weights."""
    keys = v["mix_keys"]
    mixed, labels, weights = [], [], []
    mean = torch.tensor(IMG_MEAN_BGR, device=x_s.device).view(3, 1, 1)
    ky, kx = (blur_kernel_size(n, ds.blur_kernel) for n in x_s.shape[-2:])
    for i in range(x_s.shape[0]):
        classes = torch.unique(y_s[i])
        if not ds.mix_ignore:
            classes = classes[classes != losses.IGNORE_INDEX]
        drawn = classes[keys[i, classes.cpu()].argsort()[: (len(classes) + 1) // 2]]
        mask = y_s[i].unsqueeze(0).eq(drawn.view(-1, 1, 1)).sum(0).float()  # generate_class_mask
        image = mask * x_s[i] + (1 - mask) * x_t[i]
        if v["jitter_on"] > 0:
            rgb = ((image + mean) / 255).flip(0)
            rgb = color_jitter(rgb.unsqueeze(0), v["jitter"][i : i + 1])[0]
            image = rgb.flip(0) * 255 - mean
        if v["blur_on"] > 0:
            rgb = ((image + mean) / 255).flip(0)
            rgb = gaussian_blur(rgb.unsqueeze(0), float(v["blur_sigma"]), (ky, kx))[0]
            image = rgb.flip(0) * 255 - mean
        mixed.append(image)
        labels.append((mask * y_s[i] + (1 - mask) * label_t[i]).long())
        weights.append(mask + (1 - mask) * weight)
    return mixed, labels, weights


def reference_dacs_step(state: TrainState, source: Batch, target: Batch | None, step: int) -> None:
    """DACS's released procedure (``trainUDA.py``), from the same random draws as ours: float32;
    the teacher's forward; per image, the classes by ``torch.unique`` (a host sync) and the mask
    by comparing the label with each drawn class; the mix, jitter and blur one image at a time;
    the pixel weight read back (``.item()``); ``L_l + L_u`` (and the norm term with its own
    backward, as the paper's code has it) backward; the losses read back for the log; the
    teacher's update one parameter at a time. With ``model.arch=daformer``: DAFormer's own
    procedure (``reference_daformer_step``)."""
    if state.cfg.model.arch == "daformer":
        return reference_daformer_step(state, source, target, step)
    cfg, g = state.cfg, state.run("G")
    lo, ds = cfg.loss, cfg.loss.dacs
    v = train_dacs_norm.step_values(cfg, step)
    optimizer = state.optimizers["G"]
    optimizer.zero_grad(set_to_none=True)
    teacher, student = state.modules["teacher"], state.modules["G"]
    x_s, y_s = state.to_device(source.image), state.to_device(source.label)
    x_t = state.to_device(target.image)
    size = y_s.shape[-2:]
    with torch.no_grad():
        logits_t = losses.upsample_to(teacher.predict(teacher(x_t)), size)
        max_probs, label_t = torch.max(torch.softmax(logits_t, dim=1), dim=1)
    weight = torch.sum(max_probs.ge(ds.threshold).long() == 1).item() / max_probs.numel()
    mixed, labels, weights = _dacs_mix(ds, v, x_s, y_s, x_t, label_t, weight)
    if ds.student_passes == "two":  # images, then inputs_u_s
        out_s, out_m = g(x_s), g(torch.stack(mixed))
    else:  # the one-pass variant: both batches through one forward
        out = g(torch.cat([x_s, torch.stack(mixed)]))
        out_s, out_m = split_output(out, 2)
    if lo.lambda_norm > 0:
        d_norm = norm_damping(step, cfg.optim.schedule_steps, lo.clamp_norm_damping)
        norm = losses.stepwise_norm_loss(out_s.features, lo.delta_r) + losses.stepwise_norm_loss(
            out_m.features, lo.delta_r)  # fmt: skip
        (lo.lambda_norm * d_norm * norm).backward(retain_graph=True)
    heads = ("p2",) if student.predict_with == "c2" else ("p1", "p2")
    loss_l = sum(losses.cross_entropy(losses.upsample_to(getattr(out_s, h), size), y_s)
                 for h in heads)  # fmt: skip
    y_mix, w_mix = torch.stack(labels), torch.stack(weights)
    ce = torch.nn.CrossEntropyLoss(ignore_index=losses.IGNORE_INDEX, reduction="none")
    loss_u = sum(torch.mean(ce(losses.upsample_to(getattr(out_m, h), size), y_mix) * w_mix)
                 for h in heads)  # fmt: skip
    (loss_l + ds.lambda_mix * loss_u).backward()
    loss_l.item(), loss_u.item()  # their loss_l_value, loss_u_value
    optimizer.step()
    alpha = min(1 - 1 / (step + 1), ds.ema_alpha)  # update_ema_variables
    with torch.no_grad():
        for ema_param, param in zip(teacher.parameters(), student.parameters(), strict=True):
            ema_param.data[:] = alpha * ema_param.data[:] + (1 - alpha) * param.data[:]
