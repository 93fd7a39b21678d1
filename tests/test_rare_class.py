"""DAFormer's rare-class sampling (dataset/rare_class.py), its class statistics' cache
(dataset/class_stats.py) and mmseg's cat_max_ratio crop (dataset/transforms.py), on tiny GTA5
label PNGs; then a short Norm-only run with both, resumed exactly."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import metrics_rows, norm_only_run
from PIL import Image

import train_norm_only
from dataset.class_stats import (
    ClassStats,
    cache_file,
    default_cache_dir,
    load_class_stats,
    save_class_stats,
)
from dataset.datasets import GTA5, infinite_loader
from dataset.labels import ID_TO_TRAIN_ID, IGNORE_INDEX
from dataset.rare_class import (
    REDRAWS,
    NoRareClassError,
    RareClassCrops,
    class_probabilities,
    rare_classes,
    redraw_seed,
)
from dataset.transforms import CROP_TRIES, PairedTransform, TransformSpec, accepts_crop
from utils.checkpoint import load_checkpoint
from utils.config import ConfigError, load_config
from utils.distributed import DistInfo
from utils.training.loop import _rare_classes

LABEL_ID = {int(t): i for i, t in enumerate(ID_TO_TRAIN_ID) if t != IGNORE_INDEX}  # trainId -> id


def _stats(counts, path=Path("stats.json")) -> ClassStats:
    labels = tuple(f"labels/{i:05d}.png" for i in range(len(counts)))
    return ClassStats(np.asarray(counts, np.int64), labels, path, "root", "key", fresh=False)


def _save_label(path: Path, train_ids: np.ndarray) -> None:
    """A GTA5 label: palettised, its indices the label ids of ``train_ids`` (255: id 0)."""
    ids = np.vectorize(lambda t: LABEL_ID.get(int(t), 0))(train_ids).astype(np.uint8)
    label = Image.fromarray(ids).convert("P")
    label.putpalette([(i * 7 + c * 50) % 256 for i in range(256) for c in range(3)])
    label.save(path)


def _gta5(root: Path, train_ids: list[np.ndarray]) -> Path:
    """A GTA5 folder of the given trainId maps, with grey images."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i, ids in enumerate(train_ids):
        _save_label(root / "labels" / f"{i:05d}.png", ids)
        Image.fromarray(np.full((*ids.shape, 3), 90, np.uint8)).save(
            root / "images" / f"{i:05d}.png"
        )
    return root


def _maps() -> list[np.ndarray]:
    """Three 32x64 trainId maps: road everywhere; a 10x10 car in the first, a 6x6 rider in the
    second (36 pixels), 255 in the third's top rows."""
    maps = [np.zeros((32, 64), np.uint8) for _ in range(3)]
    maps[0][20:30, 40:50] = 13
    maps[1][2:8, 2:8] = 12
    maps[2][:4] = IGNORE_INDEX
    return maps


# --- the keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.rcs.temperature=0"], "data.rcs.temperature: expected a number > 0, got 0.0"),
        (["data.rcs.min_pixels=-1"], "data.rcs.min_pixels: expected a number >= 0, got -1"),
        (["data.rcs.min_crop_ratio=-0.5"], "data.rcs.min_crop_ratio: expected a number >= 0"),
        (["data.source.cat_max_ratio=0"], "data.source.cat_max_ratio: expected a number > 0 and"),
        (["data.source.cat_max_ratio=1.5"], "data.source.cat_max_ratio: expected a number > 0"),
        (["data.target.cat_max_ratio=0.75"], "data.target.cat_max_ratio=0.75: a crop's class"),
        (["data.val.cat_max_ratio=0.75"], "data.val.cat_max_ratio=0.75: it chooses among crops"),
        (["data.source.crop=null", "data.source.cat_max_ratio=0.5"], "data.source.crop is null"),
    ],
)
def test_the_keys_ranges_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)


def test_the_defaults_are_daformers_and_off():
    cfg = load_config()
    assert not cfg.data.rcs.enabled and cfg.data.rcs.cache_dir == ""
    assert (cfg.data.rcs.temperature, cfg.data.rcs.min_pixels) == (0.01, 3000)
    assert cfg.data.rcs.min_crop_ratio == 0.5
    assert {getattr(cfg.data, d).cat_max_ratio for d in ("source", "target", "val")} == {1.0}


# --- the probabilities and candidates ---------------------------------------------------------


def test_probabilities_are_the_softmax_of_one_minus_the_shares_over_classes_that_occur():
    # class totals 600, 300, 100 (shares 0.6, 0.3, 0.1); class 3 never occurs
    counts = [[500, 100, 0, 0], [100, 200, 100, 0]]
    classes, p1 = class_probabilities(np.asarray(counts), temperature=1.0)
    assert classes.tolist() == [0, 1, 2]
    e = [math.exp(0.4), math.exp(0.7), math.exp(0.9)]  # exp(1 - f_c)
    assert p1 == pytest.approx([x / sum(e) for x in e], rel=1e-12)
    assert p1 == pytest.approx([0.250089, 0.337585, 0.412327], abs=1e-6)
    _, p001 = class_probabilities(np.asarray(counts), temperature=0.01)  # logits 40, 70, 90
    tail = [math.exp(-50), math.exp(-20), 1.0]
    assert p001 == pytest.approx([x / sum(tail) for x in tail], rel=1e-9)
    assert p001[1] == pytest.approx(2.061153618e-9, rel=1e-8)


def test_an_image_is_a_candidate_with_more_than_min_pixels_and_a_class_without_one_is_dropped():
    counts = [[3001, 3000, 10], [0, 2999, 5000], [4000, 0, 0]]
    rare = rare_classes(_stats(counts), temperature=1.0, min_pixels=3000, min_crop_ratio=0.5)
    assert rare.classes == (0, 2) and rare.dropped == (1,)  # 3000 is not more than 3000
    assert [c.tolist() for c in rare.candidates] == [[0, 2], [1]]
    _, full = class_probabilities(np.asarray(counts), 1.0)
    assert rare.probs == pytest.approx(
        [full[0] / (full[0] + full[2]), full[2] / (full[0] + full[2])]
    )
    assert rare.crop_pixels == 1500
    assert rare_classes(_stats(counts), 1.0, 3000, min_crop_ratio=0).crop_pixels is None


def test_no_candidate_is_an_error_naming_the_file_and_the_min_pixels_that_fits():
    counts = [[120, 7], [80, 0]]
    with pytest.raises(NoRareClassError) as refused:
        rare_classes(_stats(counts, Path("/c/gta5-1.json")), 0.01, 3000, 0.5)
    message = str(refused.value)
    assert "data.rcs.min_pixels=3000" in message and "/c/gta5-1.json" in message
    assert "largest count of one class in one image is 120 (class 0 in labels/00000.png)" in message
    assert "data.rcs.min_pixels=119 admits" in message
    assert rare_classes(_stats(counts), 0.01, 119, 0.5).classes == (0,)
    with pytest.raises(NoRareClassError, match="hold no pixel of any class"):
        rare_classes(_stats([[0, 0], [0, 0]]), 0.01, 0, 0.5)


# --- the draws -------------------------------------------------------------------------------


def test_draw_frequencies_approach_p_and_images_are_uniform_among_candidates():
    counts = [[900, 300, 0], [900, 0, 200], [900, 300, 200], [0, 300, 0]]
    rare = rare_classes(_stats(counts), temperature=0.5, min_pixels=100, min_crop_ratio=0)
    draws = list(itertools.islice(iter(rare.sampler(seed=3)), 20000))
    for k, c in enumerate(rare.classes):
        mine = [index for index, _, drawn in draws if drawn == c]
        assert len(mine) / len(draws) == pytest.approx(rare.probs[k], abs=0.015)
        assert set(mine) == set(rare.candidates[k].tolist())
        shares = np.bincount(mine, minlength=4)[rare.candidates[k]] / len(mine)
        assert shares == pytest.approx(1 / len(rare.candidates[k]), abs=0.03)


def test_the_stream_is_a_pure_function_of_seed_position_and_rank():
    rare = rare_classes(_stats([[900, 300], [900, 200], [50, 400]]), 0.5, 100, 0)
    take = lambda sampler, n: list(itertools.islice(iter(sampler), n))  # noqa: E731
    full = take(rare.sampler(seed=5), 40)
    assert take(rare.sampler(seed=5, start=15), 25) == full[15:]  # a resume draws the tail
    shards = [take(rare.sampler(seed=5, rank=r, world_size=2), 20) for r in range(2)]
    assert [shards[p % 2][p // 2] for p in range(40)] == full
    assert take(rare.sampler(seed=5, start=3, rank=1, world_size=2), 5) == shards[1][3:8]
    assert take(rare.sampler(seed=6), 40) != full
    assert [seed for _, seed, _ in full] == [(5 * 1_000_003 + p) % 2**63 for p in range(40)]


@pytest.fixture
def gta5(tmp_path):
    return _gta5(tmp_path / "GTA5", _maps())


def _crops(gta5: Path, crop_pixels: float | None, crop=(16, 16)) -> RareClassCrops:
    return RareClassCrops(GTA5(gta5, PairedTransform(TransformSpec(crop=crop))), crop_pixels)


def _seeds_used(crops: RareClassCrops, monkeypatch) -> list[int]:
    """The seeds of every transform ``crops`` applies from now on."""
    seeds, transform = [], crops.dataset.transform

    def spy(image, label, rng):
        seeds.append(rng.initial_seed())
        return transform(image, label, rng)

    monkeypatch.setattr(crops.dataset, "transform", spy)
    return seeds


def test_a_crop_is_redrawn_until_it_holds_enough_of_the_class(gta5, monkeypatch):
    crops = _crops(gta5, crop_pixels=50)  # the 100-pixel car in a 16x16 crop of 64x32
    seeds = _seeds_used(crops, monkeypatch)
    redrawn = 0
    for seed in range(30):
        seeds.clear()
        sample = crops[0, seed, 13]
        assert 1 <= len(seeds) <= REDRAWS + 1 and seeds[0] == seed
        assert seeds[1:] == [redraw_seed(seed, j) for j in range(1, len(seeds))]
        if len(seeds) <= REDRAWS:  # stopped early: the crop holds enough
            assert int((sample.label == 13).sum()) > 50
        redrawn += len(seeds) > 1
    assert redrawn >= 10  # most first crops miss the car


def test_the_redraw_stops_after_ten_and_is_off_without_a_threshold(gta5, monkeypatch):
    never = _crops(gta5, crop_pixels=10**6)
    image, label, _ = never.dataset.load(1)
    last = never.dataset.transform(image, label, torch.Generator().manual_seed(redraw_seed(7, 10)))
    seeds = _seeds_used(never, monkeypatch)
    assert torch.equal(never[1, 7, 12].label, last[1])  # the 10th re-draw, used as it is
    assert len(seeds) == 1 + REDRAWS == 11
    off = _crops(gta5, crop_pixels=None)
    plain = off.dataset[1, 7]
    seeds = _seeds_used(off, monkeypatch)
    assert torch.equal(off[1, 7, 12].image, plain.image) and seeds == [7]
    assert torch.equal(off[1, 7, 12].label, plain.label)


def test_the_loader_draws_the_same_batches_for_any_workers_and_from_a_resume(gta5):
    stats = _stats([[1948, 100, 0], [2012, 0, 36], [1792, 0, 0]])
    rare = rare_classes(stats, 0.5, min_pixels=30, min_crop_ratio=0.5)
    data = _crops(gta5, rare.crop_pixels)
    serial = list(itertools.islice(infinite_loader(data, 2, seed=4, rare=rare), 4))
    workers = list(itertools.islice(infinite_loader(data, 2, 4, num_workers=2, rare=rare), 4))
    resumed = list(itertools.islice(infinite_loader(data, 2, 4, start_step=2, rare=rare), 2))
    for a, b in zip(serial, workers, strict=True):
        assert a.names == b.names and torch.equal(a.label, b.label)
    for a, b in zip(serial[2:], resumed, strict=True):
        assert a.names == b.names and torch.equal(a.image, b.image)


# --- cat_max_ratio ---------------------------------------------------------------------------


def _halves() -> torch.Tensor:
    """(1, 4, 8): class 0 in columns 0-3, class 1 in 4-7; 4x4 crops at left 0..4 hold 0, 4,
    8, 12, 16 pixels of class 1: only left 2 has its largest class below 0.75 (0.5)."""
    label = torch.zeros(1, 4, 8, dtype=torch.uint8)
    label[..., 4:] = 1
    return label


def test_accepts_crop_is_mmsegs_rule():
    label = _halves()
    accepted = [accepts_crop(label[..., :, x : x + 4], 0.75) for x in range(5)]
    assert accepted == [False, False, True, False, False]  # 0.75 itself is not below 0.75
    assert [accepts_crop(label[..., :, x : x + 4], 0.76) for x in range(5)] == [0, 1, 1, 1, 0]
    ignored = torch.tensor([[0, 0, 1, 1], [255, 255, 255, 255]], dtype=torch.uint8)
    assert accepts_crop(ignored, 0.75)  # 2 of 0 and 2 of 1: the ignored pixels do not count
    assert not accepts_crop(torch.tensor([[3, 255, 255, 255]], dtype=torch.uint8), 0.99)
    assert not accepts_crop(torch.full((2, 2), 255, dtype=torch.uint8), 0.99)


def _windows(seed: int, tries: int) -> list[int]:
    """The left offsets a 4x4 crop of the 4x8 label draws (top is always 0) from ``seed``."""
    rng = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(tries):
        torch.randint(1, (), generator=rng)  # top: [0, 0]
        out.append(int(torch.randint(5, (), generator=rng)))
    return out


def test_the_crop_is_the_first_accepted_of_ten_tries_or_the_eleventh():
    image, label = torch.zeros(3, 4, 8, dtype=torch.uint8), _halves()[0]
    ratio, plain = (
        PairedTransform(TransformSpec(crop=(4, 4), cat_max_ratio=0.75)),
        PairedTransform(TransformSpec(crop=(4, 4))),
    )
    fallbacks = 0
    for seed in range(60):
        _, cropped = ratio(image, label, torch.Generator().manual_seed(seed))
        lefts = _windows(seed, CROP_TRIES + 1)
        expected = 2 if 2 in lefts[:CROP_TRIES] else lefts[CROP_TRIES]
        fallbacks += 2 not in lefts[:CROP_TRIES]
        assert torch.equal(cropped, label[:, expected : expected + 4].long())
        _, one = plain(image, label, torch.Generator().manual_seed(seed))  # 1.0: one draw
        assert torch.equal(one, label[:, lefts[0] : lefts[0] + 4].long())
    assert 0 < fallbacks < 20  # (4/5)^10 of the seeds: the eleventh window, unchecked


# --- the cache -------------------------------------------------------------------------------


def _counting_reads(monkeypatch) -> list[Path]:
    reads = []
    read = GTA5.read_label
    monkeypatch.setattr(GTA5, "read_label", lambda self, p: reads.append(p) or read(self, p))
    return reads


def test_the_statistics_are_counted_once_then_read_from_the_cache(gta5, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    data = GTA5(gta5, PairedTransform(TransformSpec()))
    reads = _counting_reads(monkeypatch)
    first = load_class_stats(data, 19, progress=False)
    assert first.fresh and len(reads) == 3 and not first.path.exists()
    assert first.counts[:, 0].tolist() == [1948, 2012, 1792]  # road: all but the car / rider / 255
    assert first.counts[:, 13].tolist() == [100, 0, 0] and first.counts[:, 12].tolist() == [
        0,
        36,
        0,
    ]
    save_class_stats(first)
    assert first.path.parent == tmp_path / "xdg" / "feature_to_adapt" / "class_stats"
    assert [p.name for p in first.path.parent.iterdir()] == [first.path.name]  # no temporary file
    again = load_class_stats(data, 19, progress=False)
    assert not again.fresh and len(reads) == 3 and np.array_equal(again.counts, first.counts)


@pytest.mark.parametrize("damage", ["missing", "empty", "not json", "truncated", "stale"])
def test_a_missing_unreadable_or_stale_cache_is_counted_again(damage, gta5, monkeypatch, caplog):
    data = GTA5(gta5, PairedTransform(TransformSpec()))
    save_class_stats(load_class_stats(data, 19, progress=False))
    path = cache_file(data, 19)
    text = path.read_text()
    if damage == "missing":
        path.unlink()
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "not json":
        path.write_text("counts: [1, 2]\n")
    elif damage == "truncated":
        path.write_text(text[: len(text) // 2])
    else:  # a label changes: the rider grows to 8x8
        grown = _maps()[1]
        grown[2:10, 2:10] = 12
        _save_label(gta5 / "labels" / "00001.png", grown)
        os.utime(gta5 / "labels" / "00001.png", ns=(1, 1))
    reads = _counting_reads(monkeypatch)
    with caplog.at_level(logging.INFO, logger="dataset.class_stats"):
        stats = load_class_stats(data, 19, progress=False)
    assert stats.fresh and len(reads) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == (damage != "missing") and all(str(path) in w for w in warnings)
    if damage == "stale":
        assert "stale" in warnings[0] and stats.counts[1, 12] == 64


def test_the_cache_folder_follows_xdg_cache_home_then_home(monkeypatch, tmp_path, cache_home):
    assert default_cache_dir() == cache_home / "feature_to_adapt" / "class_stats"  # conftest's
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "feature_to_adapt" / "class_stats"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "feature_to_adapt" / "class_stats"


def test_a_failed_write_keeps_the_cache_that_was_there(gta5, monkeypatch, caplog, tmp_path):
    data = GTA5(gta5, PairedTransform(TransformSpec()))
    stats = load_class_stats(data, 19, str(tmp_path / "cache"), progress=False)
    save_class_stats(stats)
    before = stats.path.read_bytes()

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with caplog.at_level(logging.WARNING, logger="dataset.class_stats"):
        save_class_stats(dataclasses.replace(stats, counts=stats.counts * 2, key="other"))
    assert stats.path.read_bytes() == before and len(list(stats.path.parent.iterdir())) == 1
    assert "No space left on device" in caplog.text


def test_the_loop_refuses_a_min_pixels_no_image_passes_and_writes_nothing(gta5, tmp_path):
    cache = tmp_path / "cache"
    overrides = ["data.rcs.enabled=true", f"data.rcs.cache_dir={cache}", "data.num_workers=0"]
    cfg = load_config(None, [*overrides, "data.rcs.min_pixels=3000"])
    data = GTA5(gta5, PairedTransform(TransformSpec()))
    with pytest.raises(NoRareClassError) as refused:
        _rare_classes(cfg, data, DistInfo())
    assert str(cache_file(data, 19, str(cache))) in str(refused.value)
    assert "data.rcs.min_pixels=2011 admits" in str(refused.value) and not cache.exists()
    rare = _rare_classes(load_config(None, [*overrides, "data.rcs.min_pixels=2011"]), data,
                         DistInfo())  # fmt: skip
    assert rare.classes == (0,) and [p.name for p in cache.iterdir()] == [cache_file(data, 19).name]
    assert json.loads(next(cache.iterdir()).read_text())["counts"][1][0] == 2012


# --- a run -----------------------------------------------------------------------------------


def test_a_run_with_rare_class_sampling_and_cat_max_ratio_resumes_exactly(tmp_path, synthetic):
    rcs = ["data.rcs.enabled=true", "data.rcs.min_pixels=200", "data.source.cat_max_ratio=0.75"]
    full = norm_only_run(tmp_path, synthetic, "full", *rcs, "train.max_steps=2")
    part = norm_only_run(tmp_path, synthetic, "part", *rcs, "train.max_steps=1")
    assert train_norm_only.main(["--resume", str(part), "train.max_steps=2"]) == 0
    keys = ["train/loss_seg", "train/feat_norm_s", "train/feat_norm_t"]
    a = [[r[k] for k in keys] for r in metrics_rows(full) if "train/loss_seg" in r]
    b = [[r[k] for k in keys] for r in metrics_rows(part) if "train/loss_seg" in r]
    assert a == b and len(a) == 2
    wa = load_checkpoint(full / "checkpoints" / "last.pth")["models"]["G"]
    wb = load_checkpoint(part / "checkpoints" / "last.pth")["models"]["G"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert "rare-class sampling: P(c)" in (full / "train.log").read_text()
