"""DAFormer's released procedure (``mmseg/models/uda/dacs.py`` of lhoyer/DAFormer), which
``benchmarks.speed`` times against our DACS step with ``model.arch=daformer``
(``reference_daformer_step``; ``reference_dacs_step`` hands such a state to it).

Their step, in their order, float32 and eager: the source forward and its loss's backward
(kept for the feature distance with ``retain_graph``), the logged values read back
(mmseg's ``_parse_losses``: an ``.item()`` each, the head's pixel accuracy among them); the
feature distance with its own backward, the frozen copy's forward without gradient in eval
mode, the label downscaled with boolean-mask writes and the distance averaged over a boolean
selection (host syncs); the teacher's pseudo-labels, their weight read back (``.item()``, and
the label copied to the host for its size); ClassMix with the batch's classes by
``torch.unique`` for each image, the mix, jitter and blur one image at a time; the mixed
forward and backward. MiT's attention is SegFormer's explicit ``softmax(q k^T * scale) v``
with its copies (``explicit_attention``). The norm term, which their code lacks, has its own
backward through each pass, as the paper's code has it (``reference_dacs_step``). The random
draws are ours (the same ``step_values``), so the update is the same as our step's.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import train_dacs_norm
from dataset.datasets import Batch
from dataset.transforms import IMG_MEAN_BGR
from model.mit import Attention
from utils import losses
from utils.config import DacsConfig
from utils.schedules import norm_damping
from utils.self_training import (
    blur_kernel_size,
    color_jitter,
    freeze_stochastic_layers,
    gaussian_blur,
)
from utils.training.state import TrainState


def _segformer_attention(self: Attention, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """MiT's attention as SegFormer's ``mix_transformer.py`` computes it: the attention matrix
    materialised, ``softmax(q k^T * scale) v``, with a contiguous copy after each permute."""
    b, n, c = x.shape
    d = c // self.heads
    q = self.q(x).reshape(b, n, self.heads, d).permute(0, 2, 1, 3).contiguous()
    if self.reduction > 1:
        x = x.permute(0, 2, 1).contiguous().reshape(b, c, h, w)
        x = self.norm(self.sr(x).reshape(b, c, -1).permute(0, 2, 1).contiguous())
    kv = self.kv(x).reshape(b, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4).contiguous()
    k, v = kv[0], kv[1]
    attn = ((q @ k.transpose(-2, -1).contiguous()) * d**-0.5).softmax(dim=-1)
    return self.proj((attn @ v).transpose(1, 2).contiguous().reshape(b, n, c))


@contextlib.contextmanager
def explicit_attention(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Within the block, every MiT ``Attention`` in ``modules`` computes SegFormer's explicit
    form (``_segformer_attention``) instead of ``F.scaled_dot_product_attention``; the same
    function to float32 rounding. Only these instances change (their own ``forward``), and
    they are restored on leaving: our step's path is untouched."""
    swapped = [m for module in modules for m in module.modules() if isinstance(m, Attention)]
    for m in swapped:
        m.forward = types.MethodType(_segformer_attention, m)
    try:
        yield
    finally:
        for m in swapped:
            del m.forward


def _decode_losses(
    logits: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None
) -> torch.Tensor:
    """mmseg's decode-head losses: CE over all pixels (ignored ones count 0), each weighted by
    ``weight`` where given, averaged; the pixel accuracy (top-1 over every pixel); both read
    back, as ``_parse_losses`` logs them. Returns the loss."""
    ce = F.cross_entropy(logits, label, ignore_index=losses.IGNORE_INDEX, reduction="none")
    loss = (ce * weight.float() if weight is not None else ce).mean()
    correct = logits.topk(1, dim=1)[1].transpose(0, 1).eq(label.unsqueeze(0))
    acc = correct.reshape(-1).float().sum(0, keepdim=True).mul_(100.0 / label.numel())
    loss.item(), acc.item()
    return loss


def _downscale_label_ratio(label: torch.Tensor, scale: int, min_ratio: float, k: int):
    """DAFormer's ``downscale_label_ratio``: each cell's majority class, the ignore label
    swapped in and out by boolean-mask writes."""
    out = label.clone()
    out[out == losses.IGNORE_INDEX] = k
    one_hot = F.one_hot(out.long(), num_classes=k + 1).permute(0, 3, 1, 2)
    ratio, cls = torch.max(F.avg_pool2d(one_hot.float(), kernel_size=scale), dim=1)
    cls[cls == k] = losses.IGNORE_INDEX
    cls[ratio < min_ratio] = losses.IGNORE_INDEX
    return cls


def _feature_distance_backward(state: TrainState, x_s: torch.Tensor, y_s: torch.Tensor, out_s):
    """DAFormer's ``calc_feat_dist`` and its backward: the frozen copy's encoder without
    gradient in eval mode; the label's cells of ``fd_classes``; the mean distance over a
    boolean selection of them, read back. The feature map's cells beyond the downscaled label
    (sizes that are not multiples of the stride) are left out, as ours does; an empty
    selection's NaN has no gradient, as in their code."""
    ds, k = state.cfg.loss.dacs, state.cfg.model.num_classes
    frozen = state.modules["imnet"]
    with torch.no_grad():
        frozen.eval()
        feat_imnet = frozen.backbone(frozen.own_input(x_s))[-1].detach()
    feat = out_s.stages[-1]
    h, w = feat.shape[-2:]
    cells = _downscale_label_ratio(y_s, max(1, y_s.shape[-1] // w), ds.fd_min_ratio, k)
    if ds.fd_classes:
        classes = torch.tensor(list(ds.fd_classes), device=y_s.device)
        mask = torch.any(cells[..., None] == classes, -1)
    else:
        mask = cells != losses.IGNORE_INDEX
    mask = F.pad(mask[:, :h, :w], (0, w - min(w, mask.shape[-1]), 0, h - min(h, mask.shape[-2])))
    dist = torch.norm(feat - feat_imnet, dim=1, p=2)[mask]
    loss = ds.fd_lambda * torch.mean(dist)
    loss.item()
    loss.backward()


def _pseudo_labels(state: TrainState, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's labels and pixel weights: its share of confident pixels read back (and
    the label copied to the host for its size), zeroed on the top and bottom rows."""
    ds = state.cfg.loss.dacs
    teacher = freeze_stochastic_layers(state.modules["teacher"])
    ema_logits = teacher.predict(state.run("teacher")(x_t))
    pseudo_prob, pseudo_label = torch.max(torch.softmax(ema_logits.detach(), dim=1), dim=1)
    ps_large_p = pseudo_prob.ge(ds.threshold).long() == 1
    ps_size = np.size(pseudo_label.cpu().numpy())  # their np.array(pseudo_label.cpu())
    pseudo_weight = torch.sum(ps_large_p).item() / ps_size
    weight = pseudo_weight * torch.ones(pseudo_prob.shape, device=x_t.device)
    if ds.ignore_top > 0:
        weight[:, : ds.ignore_top, :] = 0
    if ds.ignore_bottom > 0:
        weight[:, -ds.ignore_bottom :, :] = 0
    return pseudo_label, weight


def _class_mix(
    ds: DacsConfig,
    v: dict,
    x_s: torch.Tensor,
    y_s: torch.Tensor,
    x_t: torch.Tensor,
    pseudo: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DAFormer's ``get_class_masks`` and ``strong_transform``, one image at a time: the pool
    by ``torch.unique`` (of the batch's labels, or the image's), half of it drawn with our
    keys, the mask by comparing the label with each drawn class; image, label and weight
    mixed; jitter and blur."""
    label_t, weight_t = pseudo  # the teacher's labels and their pixel weights
    mean = torch.tensor(IMG_MEAN_BGR, device=x_s.device).view(3, 1, 1)
    ky, kx = (blur_kernel_size(n, ds.blur_kernel) for n in x_s.shape[-2:])
    images, labels, weights = [], [], []
    for i in range(x_s.shape[0]):
        classes = torch.unique(y_s if ds.mix_classes == "batch" else y_s[i])
        if not ds.mix_ignore:
            classes = classes[classes != losses.IGNORE_INDEX]
        drawn = classes[v["mix_keys"][i, classes.cpu()].argsort()[: (len(classes) + 1) // 2]]
        label, drawn = torch.broadcast_tensors(y_s[i], drawn.view(-1, 1, 1))
        mask = label.eq(drawn).sum(0, keepdim=True).float()
        image = mask * x_s[i] + (1 - mask) * x_t[i]
        if v["jitter_on"] > 0:
            rgb = color_jitter(((image + mean) / 255).flip(0).unsqueeze(0), v["jitter"][i : i + 1])
            image = rgb[0].flip(0) * 255 - mean
        if v["blur_on"] > 0:
            rgb = ((image + mean) / 255).flip(0).unsqueeze(0)
            image = gaussian_blur(rgb, float(v["blur_sigma"]), (ky, kx))[0].flip(0) * 255 - mean
        images.append(image)
        labels.append((mask[0] * y_s[i] + (1 - mask[0]) * label_t[i]).long())
        weights.append(mask[0] + (1 - mask[0]) * weight_t[i])
    return torch.stack(images), torch.stack(labels), torch.stack(weights)


def _norm_backward(state: TrainState, features: torch.Tensor, step: int) -> None:
    """The norm term of one pass with its own backward through it (the paper's code's form)."""
    lo = state.cfg.loss
    if lo.lambda_norm > 0:
        d_norm = norm_damping(step, state.cfg.optim.schedule_steps, lo.clamp_norm_damping)
        term = lo.lambda_norm * d_norm * losses.stepwise_norm_loss(features, lo.delta_r)
        term.backward(retain_graph=True)


def reference_daformer_step(
    state: TrainState, source: Batch, target: Batch | None, step: int
) -> None:
    """DAFormer's released step (module docstring), from the same random draws as ours."""
    assert target is not None
    with explicit_attention(state.modules.values()):
        _daformer_step(state, source, target, step)


def _daformer_step(state: TrainState, source: Batch, target: Batch, step: int) -> None:
    cfg, g = state.cfg, state.run("G")
    ds = cfg.loss.dacs
    v = train_dacs_norm.step_values(cfg, step)
    optimizer = state.optimizers["G"]
    optimizer.zero_grad(set_to_none=True)
    x_s, y_s = state.to_device(source.image), state.to_device(source.label)
    x_t = state.to_device(target.image)
    fd = ds.fd_lambda > 0
    out_s = g(x_s)  # the student's source forward (return_feat: the stages kept)
    _norm_backward(state, out_s.features, step)
    weight_s = None if ds.source_ce == "all" else (y_s != losses.IGNORE_INDEX).float()
    if weight_s is not None:  # the valid pixels' mean (loss.dacs.source_ce=valid)
        weight_s = weight_s * weight_s.numel() / weight_s.sum().clamp(min=1)
    _decode_losses(out_s.p2, y_s, weight_s).backward(retain_graph=fd)
    if fd:
        _feature_distance_backward(state, x_s, y_s, out_s)
    x_mix, y_mix, w_mix = _class_mix(ds, v, x_s, y_s, x_t, _pseudo_labels(state, x_t))
    out_m = g(x_mix)
    _norm_backward(state, out_m.features, step)
    (ds.lambda_mix * _decode_losses(out_m.p2, y_mix, w_mix)).backward()
    optimizer.step()
    alpha = min(1 - 1 / (step + 1), ds.ema_alpha)  # their _update_ema, one parameter at a time
    teacher, student = state.modules["teacher"], state.modules["G"]
    with torch.no_grad():
        for ema_param, param in zip(teacher.parameters(), student.parameters(), strict=True):
            ema_param.data[:] = alpha * ema_param.data[:] + (1 - alpha) * param.data[:]
