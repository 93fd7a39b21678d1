"""The schedules of utils/schedules.py (poly learning rate with warm-up, the dampings) against
values worked out by hand."""

import pytest

from utils.schedules import damping, norm_damping, poly_lr


def test_poly_lr_by_hand():
    assert poly_lr(0, 1.0, 100, 0.9, 0) == 1.0
    assert poly_lr(50, 2.0, 100, 0.9, 0) == pytest.approx(2.0 * 0.5**0.9)
    assert poly_lr(100, 1.0, 100, 0.9, 0) == 0.0
    assert poly_lr(200, 1.0, 100, 0.9, 0) == 0.0
    # warm-up: (i + 1) / W times the poly value
    assert poly_lr(4, 1.0, 100, 1.0, 10) == pytest.approx(0.96 * 0.5)
    assert poly_lr(9, 1.0, 100, 1.0, 10) == pytest.approx(0.91)
    assert poly_lr(10, 1.0, 100, 1.0, 10) == pytest.approx(0.90)


def test_damping_by_hand():
    assert damping(0, 150) == 1.0
    assert damping(75, 150) == 0.5
    assert damping(300, 150) == 0.0
    assert norm_damping(50, 150) == pytest.approx(0.5)
    assert norm_damping(100, 150) == pytest.approx(0.0)
    assert norm_damping(120, 150) == 0.0
    assert norm_damping(120, 150, clamp=False) == pytest.approx(-0.2)


def test_daformers_warm_up_is_mmcvs_linear_warm_up_from_a_ratio_of_1e_6():
    # mmcv's PolyLrUpdaterHook, warmup='linear': k = (1 - i / W)(1 - r); lr = regular x (1 - k)
    base, n, w, r = 6e-5, 40000, 1500, 1e-6
    for i in (0, 1, 750, 1499):
        regular = base * (1 - i / n)
        k = (1 - i / w) * (1 - r)
        assert poly_lr(i, base, n, 1.0, w, "mmcv") == pytest.approx(regular * (1 - k), rel=1e-12)
    assert poly_lr(0, base, n, 1.0, w, "mmcv") == pytest.approx(6e-11)
    assert poly_lr(1500, base, n, 1.0, w, "mmcv") == pytest.approx(base * (1 - 1500 / n))
    assert poly_lr(39999, base, n, 1.0, w, "mmcv") == pytest.approx(base / n)
