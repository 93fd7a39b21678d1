"""G's optimizer: SGD once per parameter (the paper), the authors' released update, or AdamW
(DAFormer's).

The released code (and AdaptSegNet's and CLAN's, which it copies) gives SGD a backbone group
built by ``get_1x_lr_params_NOscale``: for each backbone stage, every module inside it (the
stage itself included) lists every trainable parameter it holds, recursively, so a parameter
appears once per module that encloses it within its stage (the stem conv once, a block's convs
three times, a downsample conv four times). The PyTorch SGD of the time updated a parameter
once per entry, one entry after the other, sharing one momentum buffer (docs/protocols.md, "The
released optimizer"):

    d   = g + wd * p                  (p as already updated by the earlier entries)
    buf = d if p has no buffer yet, else m * buf + d
    p   = p - lr * buf

``ReleasedSGD`` runs exactly that, with each parameter's multiplicity taken from the model's
module structure (``released_backbone_entries``). Today's ``torch.optim.SGD`` runs the same
list differently (PyTorch 1.8 and later), so it is not the reference. ``released_torch14`` is
the same list under PyTorch 1.4 and earlier, whose SGD added the weight decay into ``p.grad``
in place: there, entry j's ``d`` also carries the decay terms of the entries before it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from model.contract import Segmenter
from utils.config import OptimConfig


def released_backbone_entries(stages: Sequence[nn.Module]) -> list[nn.Parameter]:
    """The released code's backbone list: for each stage, for each module in ``stage.modules()``
    (the stage first), that module's trainable ``parameters()``; duplicates kept, in order."""
    return [
        p
        for stage in stages
        for module in stage.modules()
        for p in module.parameters()
        if p.requires_grad
    ]


def with_repeats(entries: Iterable[nn.Parameter]) -> tuple[list[nn.Parameter], list[int]]:
    """The distinct parameters of a list with duplicates (in order of first appearance) and how
    many times each is listed."""
    counts = Counter(entries)  # parameters hash by identity
    return list(counts), list(counts.values())


class ReleasedSGD(torch.optim.Optimizer):
    """SGD with momentum and weight decay that updates each parameter ``repeats`` times per step,
    entry after entry, as the PyTorch SGD the authors ran did for a parameter listed that many
    times (module docstring). Each param group carries ``repeats`` (one count per parameter);
    ``wd_in_grad=True`` is PyTorch 1.4 and earlier, which added the decay into ``p.grad``.
    With every count 1 it is plain SGD with momentum (dampening 0, no Nesterov). A group's
    ``lr`` may be a 0-dim device tensor (``train.cuda_graph``): the update then reads it on the
    device, with no host sync."""

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        wd_in_grad: bool = False,
    ) -> None:
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                    "wd_in_grad": wd_in_grad}  # fmt: skip
        super().__init__(params, defaults)
        for group in self.param_groups:
            repeats = group.setdefault("repeats", [1] * len(group["params"]))
            if len(repeats) != len(group["params"]) or any(k < 1 for k in repeats):
                raise ValueError(
                    f"ReleasedSGD: a group's 'repeats' needs one count >= 1 per parameter, got "
                    f"{len(repeats)} counts for {len(group['params'])} parameters"
                )

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            listed = [
                (p, k) for p, k in zip(group["params"], group["repeats"]) if p.grad is not None
            ]
            for entry in range(max((k for _, k in listed), default=0)):
                params = [p for p, k in listed if k > entry]  # those listed more than `entry` times
                self._update(params, lr, m, wd, group["wd_in_grad"])
        return loss

    def _update(
        self, params: list[torch.Tensor], lr: float, m: float, wd: float, wd_in_grad: bool
    ) -> None:
        """One entry of each of ``params``: the rule of the module docstring."""
        grads = [p.grad for p in params]
        if wd == 0:
            d = grads
        elif wd_in_grad:
            torch._foreach_add_(grads, params, alpha=wd)
            d = grads
        else:
            d = torch._foreach_add(grads, params, alpha=wd)
        if m == 0:
            _descend(params, d, lr)
            return
        bufs = []
        old, old_d = [], []
        for p, d_p in zip(params, d):
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.clone(d_p).detach()
            else:
                old.append(state["momentum_buffer"])
                old_d.append(d_p)
            bufs.append(state["momentum_buffer"])
        if old:
            torch._foreach_mul_(old, m)
            torch._foreach_add_(old, old_d)
        _descend(params, bufs, lr)


def _descend(
    params: list[torch.Tensor], steps: list[torch.Tensor], lr: float | torch.Tensor
) -> None:
    """``p -= lr * s`` for each pair; a tensor ``lr`` is read on the device."""
    if torch.is_tensor(lr):
        torch._foreach_sub_(params, torch._foreach_mul(steps, lr))
    else:
        torch._foreach_add_(params, steps, alpha=-lr)


def build_sgd(
    o: OptimConfig,
    backbone_stages: Sequence[nn.Module],
    groups: list[dict[str, Any]],
) -> torch.optim.Optimizer:
    """G's SGD from ``optim.backbone_updates``: ``once``, ``torch.optim.SGD`` on ``groups``
    (``model.param_groups``); ``released`` / ``released_torch14``, ``ReleasedSGD`` whose
    backbone group lists the released code's entries (``backbone_stages``) with their counts.
    The backbone group must hold exactly the parameters of those stages."""
    sgd_args = {"lr": o.lr, "momentum": o.momentum, "weight_decay": o.weight_decay}
    if o.backbone_updates == "once":
        return torch.optim.SGD(groups, **sgd_args)
    params, repeats = with_repeats(released_backbone_entries(backbone_stages))
    backbone = groups[0]
    if {id(p) for p in params} != {id(p) for p in backbone["params"]}:
        raise ValueError("the released backbone list and the backbone group hold other parameters")
    groups = [{**backbone, "params": params, "repeats": repeats}, *groups[1:]]
    return ReleasedSGD(groups, wd_in_grad=o.backbone_updates == "released_torch14", **sgd_args)


def sgd(o: OptimConfig, model: Segmenter) -> torch.optim.Optimizer:
    """``optim.optimizer=sgd``: ``build_sgd`` on G's groups and its backbone stages."""
    return build_sgd(o, model.backbone_stages(), model.param_groups(o.lr))


def adamw(o: OptimConfig, model: Segmenter) -> torch.optim.Optimizer:
    """``optim.optimizer=adamw``: ``torch.optim.AdamW`` on G's groups (DAFormer's: betas 0.9 and
    0.999, ``optim.weight_decay`` except where a group sets its own, each group's rate set by
    the loop from its ``lr_mult``)."""
    return torch.optim.AdamW(model.param_groups(o.lr), lr=o.lr, weight_decay=o.weight_decay)


# optim.optimizer -> how G's optimizer is built from the optim section and G (its param_groups
# carry each group's lr_mult and any weight-decay exemption): another optimizer is one entry.
OPTIMIZERS: dict[str, Callable[[OptimConfig, Segmenter], torch.optim.Optimizer]] = {
    "sgd": sgd,
    "adamw": adamw,
}
