"""What the repository needs of a segmentation network G, so that another network family can
be trained, scored, ensembled, analysed and used for prediction as DeepLab-v2 is.

A family's module (``model/deeplabv2.py``) defines an ``nn.Module`` with these methods, and
``model/build.py`` names the family once (how to build it from the ``model`` section, and the
weights layouts it reads). The training loop and the setups' steps, evaluation, ensembles,
``predict.py`` and ``analyze_features.py`` use G only through this contract.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

from torch import Tensor, nn


class SegOutput(NamedTuple):
    """What G's forward returns: its heads' logits and the features the norm loss reads."""

    p1: Tensor | None  # the first head's logits (C1), B x K x h x w; None: no such head, or
    # a forward with heads=False
    p2: Tensor | None  # the output head's logits (C2), B x K x h x w; None with heads=False
    features: Tensor  # the features F the step-wise norm loss reads, B x C x h x w
    stages: tuple[Tensor, ...] | None = None  # the encoder's stages, where a family returns
    # them (DAFormer: the four MiT stages; the feature distance reads the last)


@runtime_checkable
class Segmenter(Protocol):
    """G, as the repository uses it. Besides the methods of an ``nn.Module`` (``train``,
    ``eval``, ``parameters``, ``state_dict``...):

    - ``forward(x, heads=True)``: images ``B x 3 x H x W`` to a ``SegOutput``; with
      ``heads=False`` the features alone (a pass that only the norm loss reads);
    - ``predict(out)``: the logits that predictions and evaluation take the argmax of;
    - ``predicted_heads(out)``: the heads' logits that ``predict`` combines (the heads a
      self-training setup trains);
    - ``param_groups(lr)``: the optimizer's groups, each with its ``lr_mult`` (the loop sets
      ``lr = schedule x lr_mult``) and, where a group is exempt, its own ``weight_decay``;
    - ``classifier_weights()``: two heads' parameters, flattened (CLAN's weight-discrepancy
      loss), where a setup needs them;
    - ``backbone_stages()``: the backbone's modules in the order the released DeepLab-v2 code
      walked them (its optimizer's duplicated list), where ``optim.backbone_updates`` asks;
    - ``align_corners``: how its logits are resized to a label's or an image's size.

    Every family's forward takes the images in one form, the datasets' (BGR minus DeepLab-v2's
    mean, ``dataset/transforms.py``); a family with another normalisation converts them first.
    """

    align_corners: bool

    def __call__(self, x: Tensor, heads: bool = True) -> SegOutput: ...

    def predict(self, out: SegOutput) -> Tensor: ...

    def predicted_heads(self, out: SegOutput) -> tuple[Tensor, ...]: ...

    def param_groups(self, lr: float) -> list[dict[str, Any]]: ...

    def classifier_weights(self) -> tuple[Tensor, Tensor]: ...

    def backbone_stages(self) -> list[nn.Module]: ...

    def train(self, mode: bool = True) -> nn.Module: ...

    def eval(self) -> nn.Module: ...


def split_output(out: SegOutput, parts: int) -> list[SegOutput]:
    """A forward of a batch made of ``parts`` equal batches, as the forward of each (every
    tensor chunked along the batch; an absent head stays None)."""

    def chunks(t: Tensor | tuple[Tensor, ...] | None) -> list:
        if t is None:
            return [None] * parts
        if isinstance(t, tuple):
            return [tuple(c) for c in zip(*(s.chunk(parts) for s in t), strict=True)]
        return list(t.chunk(parts))

    return [SegOutput(*fields) for fields in zip(*(chunks(t) for t in out), strict=True)]


def last_stage(out: SegOutput) -> Tensor:
    """The encoder's last stage: ``stages[-1]`` where the family returns its stages (DAFormer's
    last MiT stage), else the backbone features (DeepLab-v2's layer4)."""
    return out.stages[-1] if out.stages is not None else out.features
