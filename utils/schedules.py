"""Learning-rate and damping schedules: pure functions of the step, so resumed runs continue
exactly.

This module imports nothing: it can be copied into another repository as it is.
"""

from __future__ import annotations

WARMUP_FORMS = ("scaled", "released", "mmcv")  # optim.warmup_form
MMCV_WARMUP_RATIO = 1e-6  # DAFormer's warmup_ratio: where mmcv's linear warm-up starts


def poly_lr(
    step: int,
    base_lr: float,
    total_steps: int,
    power: float,
    warmup_steps: int,
    warmup_form: str = "scaled",
) -> float:
    """``base_lr * (1 - i/N)^power`` after a linear warm-up over the first W steps, which is
    ``scaled``: the poly value times ``(i + 1) / W``; ``released`` (the authors' code):
    ``base_lr * i / W`` alone (0 at step 0), so the rate drops to the poly value at step W; or
    ``mmcv`` (DAFormer's ``warmup='linear'``): the poly value times ``r + (1 - r) i / W``,
    r = ``MMCV_WARMUP_RATIO``."""
    if warmup_form not in WARMUP_FORMS:
        raise ValueError(f"optim.warmup_form: expected one of {', '.join(WARMUP_FORMS)}, got "
                         f"{warmup_form!r}")  # fmt: skip
    warming = warmup_steps > 0 and step < warmup_steps
    if warming and warmup_form == "released":
        return base_lr * step / warmup_steps
    progress = min(step, total_steps) / total_steps
    lr = base_lr * (1.0 - progress) ** power
    if warming and warmup_form == "mmcv":
        lr *= MMCV_WARMUP_RATIO + (1.0 - MMCV_WARMUP_RATIO) * step / warmup_steps
    elif warming:
        lr *= (step + 1) / warmup_steps
    return lr


def damping(step: int, total_steps: int) -> float:
    """Adversarial and weight-discrepancy damping ``d = 1 - i/N`` (never below 0)."""
    return max(0.0, 1.0 - step / total_steps)


def norm_damping(step: int, total_steps: int, clamp: bool = True) -> float:
    """Norm-loss damping ``d_norm = max(0, 1 - 1.5 i/N)``; ``clamp=False`` is the released code's
    form, which turns negative after 2N/3 steps."""
    d = 1.0 - 1.5 * step / total_steps
    return max(0.0, d) if clamp else d
