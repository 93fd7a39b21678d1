"""Prediction panels: the pictures on hand-made inputs, the choice of images, and the panels
``evaluate_cityscapes.py --panels`` and ``ensemble.py --panels`` write."""

import math

import numpy as np
import pytest
import torch
from conftest import TINY_EVAL
from PIL import Image

import ensemble
import evaluate_cityscapes
from dataset.build import ensure_data
from dataset.labels import colorize
from model.deeplabv2 import DeepLabV2
from utils.analysis.panels import (
    CORRECT_RGB,
    IGNORED_RGB,
    WRONG_RGB,
    choose_images,
    comparison_panel,
    entropy_map,
    error_map,
    overlay,
    prediction_panel,
    stack_rows,
)
from utils.config import load_config, to_dict
from utils.errors import OutputExistsError, UsageError

GAP = 4


def test_entropy_is_one_for_uniform_and_zero_for_one_hot():
    K = 19
    assert torch.allclose(entropy_map(torch.full((K, 3, 5), 1 / K)), torch.ones(3, 5))
    one_hot = torch.zeros(K, 3, 5)
    one_hot[7] = 1
    assert torch.equal(entropy_map(one_hot), torch.zeros(3, 5))
    halves = torch.tensor([0.5, 0.5, 0.0, 0.0]).view(4, 1, 1)  # log 2 / log 4
    assert entropy_map(halves).item() == pytest.approx(0.5)
    skewed = torch.tensor([0.7, 0.2, 0.1]).view(3, 1, 1)
    by_hand = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)) / math.log(3)
    assert entropy_map(skewed).item() == pytest.approx(by_hand, rel=1e-6)


def test_error_map_by_hand():
    pred = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    label = np.array([[0, 2], [255, 3]], dtype=np.uint8)
    expected = np.array([[CORRECT_RGB, WRONG_RGB], [IGNORED_RGB, CORRECT_RGB]], dtype=np.uint8)
    np.testing.assert_array_equal(error_map(pred, label), expected)
    assert len({CORRECT_RGB, WRONG_RGB, IGNORED_RGB}) == 3
    with pytest.raises(ValueError, match="differ in shape"):
        error_map(pred, label[:1])


def test_overlay_blends_image_and_colours():
    image = np.full((2, 3, 3), 100, dtype=np.uint8)
    pred = np.array([[0, 1, 2], [10, 13, 18]], dtype=np.uint8)
    np.testing.assert_array_equal(overlay(image, pred, 0.0), image)
    np.testing.assert_array_equal(overlay(image, pred, 1.0), colorize(pred))
    half = np.round((100 + colorize(pred).astype(float)) / 2)
    np.testing.assert_array_equal(overlay(image, pred, 0.5), half.astype(np.uint8))


def _tile(panel, row, column, h, w, rows=1):
    """Tile (row, column) of a panel of ``rows`` rows of (h, w) tiles under a title row."""
    header = panel.shape[0] - rows * (h + GAP) + GAP
    top, left = header + row * (h + GAP), column * (w + GAP)
    return panel[top : top + h, left : left + w]


def test_prediction_panel_tiles():
    h, w, K = 6, 10, 19
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    blocks = np.array([[0, 1, 255, 3, 4], [5, 6, 7, 255, 9], [10, 11, 12, 13, 14]], np.uint8)
    label = np.kron(blocks, np.ones((2, 2), np.uint8))  # (6, 10): 2x2 blocks
    pred = np.where(blocks == 255, 2, blocks).astype(np.uint8)  # any class where ignored
    pred[0, 0], pred[2, 4] = 18, 0  # two wrong blocks
    probs = torch.full((K, 3, 5), 0.1 / (K - 1))
    probs.scatter_(0, torch.from_numpy(pred.astype(np.int64))[None], 0.9)
    probs = probs.repeat_interleave(2, 1).repeat_interleave(2, 2)  # (K, 6, 10), label size
    panel = prediction_panel(image, label, probs)
    assert panel.dtype == np.uint8 and panel.shape[1] == 5 * w + 4 * GAP and panel.shape[2] == 3
    np.testing.assert_array_equal(_tile(panel, 0, 0, h, w), image)
    np.testing.assert_array_equal(_tile(panel, 0, 1, h, w), colorize(label))
    np.testing.assert_array_equal(
        _tile(panel, 0, 2, h, w), colorize(np.kron(pred, np.ones((2, 2), np.uint8)))
    )
    errors = _tile(panel, 0, 3, h, w)
    assert (errors[:2, :2] == WRONG_RGB).all() and (errors[4:, 8:] == WRONG_RGB).all()
    assert (errors[:2, 4:6] == IGNORED_RGB).all() and (errors[2:4, 2:4] == CORRECT_RGB).all()
    assert ((errors == WRONG_RGB).all(-1)).sum() == 8
    entropy = _tile(panel, 0, 4, h, w)
    assert len(np.unique(entropy.reshape(-1, 3), axis=0)) == 1  # the same entropy everywhere

    # a label twice the image's size: subsampled to the tiles
    big = np.kron(label, np.ones((2, 2), np.uint8))
    bigger = probs.repeat_interleave(2, 1).repeat_interleave(2, 2)
    np.testing.assert_array_equal(prediction_panel(image, big, bigger), panel)


def test_comparison_panel_and_stacking():
    h, w = 4, 6
    images = [np.full((h, w, 3), v, np.uint8) for v in (10, 20)]
    labels = [np.full((h, w), c, np.uint8) for c in (1, 2)]
    preds = [[np.full((h, w), c, np.uint8) for c in (3, 4)] for _ in range(3)]
    preds[2][1][:] = 5
    panel = comparison_panel(images, labels, preds, ["A", "B", "C"])
    assert panel.shape[1] == 5 * w + 4 * GAP
    assert (_tile(panel, 1, 0, h, w, rows=2) == 20).all()
    np.testing.assert_array_equal(_tile(panel, 1, 1, h, w, rows=2), colorize(labels[1]))
    np.testing.assert_array_equal(_tile(panel, 0, 3, h, w, rows=2), colorize(preds[1][0]))
    np.testing.assert_array_equal(_tile(panel, 1, 4, h, w, rows=2), colorize(preds[2][1]))
    with pytest.raises(ValueError, match="3 prediction columns for 2 names"):
        comparison_panel(images, labels, preds, ["A", "B"])
    with pytest.raises(ValueError, match="tiles of 4x6x3"):
        stack_rows([[images[0], images[0][:2]]], ["x", "y"])


def test_choose_images():
    names = [f"city/c_{i:06d}_leftImg8bit.png" for i in range(10)]
    drawn = choose_images(names, 4, None, seed=3)
    assert len(drawn) == 4 == len(set(drawn)) and drawn == sorted(drawn)
    assert choose_images(names, 4, None, seed=3) == drawn  # seeded
    assert any(choose_images(names, 4, None, seed=s) != drawn for s in range(4, 8))
    assert choose_images(names, 50, None, seed=0) == list(range(10))
    wanted = ["city/c_000007_leftImg8bit.png", "c_000002_leftImg8bit.png", "c_000005_leftImg8bit"]
    assert choose_images(names, None, wanted, seed=0) == [2, 5, 7]
    with pytest.raises(UsageError, match="no val image named nope"):
        choose_images(names, None, ["nope"], seed=0)


@pytest.fixture(scope="module")
def val(synthetic):
    """conftest's tiny synthetic benchmark, generated: 3 val images of 192x96."""
    ensure_data(load_config(None, synthetic).data)
    return synthetic


def checkpoint(path, seed):
    """This repository's checkpoint of a seeded tiny G."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = DeepLabV2(layers=(1, 1, 1, 1), base_width=8)
    torch.save({"setup": "norm_only", "step": 1, "models": {"G": model.state_dict(), "D": {}},
                "optimizers": {}, "config": to_dict(load_config(None, TINY_EVAL)),
                "metric": None}, path)  # fmt: skip
    return path


def test_evaluate_writes_k_panels_of_its_predictions(tmp_path, val):
    ckpt = checkpoint(tmp_path / "a.pth", 0)
    preds = tmp_path / "preds"
    args = ["--restore", str(ckpt), "--panels", "2", "--save-dir", str(preds), *val]
    assert evaluate_cityscapes.main(args) == 0
    panels = sorted((preds / "panels").glob("*.png"))
    assert len(panels) == 2
    for path in panels:
        panel = np.array(Image.open(path))
        assert panel.shape[1] == 5 * 128 + 4 * GAP and panel.shape[0] > 64
        # the prediction tile is the saved prediction, subsampled to the 128x64 input
        (saved,) = (p for p in preds.glob(f"*/{path.stem}.png") if p.parent.name != "panels")
        ids = Image.open(saved).resize((128, 64), Image.NEAREST)
        np.testing.assert_array_equal(_tile(panel, 0, 2, 64, 128), colorize(np.array(ids)))
    # the default seed draws the same images again (replacing them needs --overwrite); another
    # seed, elsewhere, others
    with pytest.raises(OutputExistsError, match="--save-dir"):
        evaluate_cityscapes.main(args)
    assert evaluate_cityscapes.main([*args, "--overwrite"]) == 0
    assert sorted((preds / "panels").glob("*.png")) == panels
    other = tmp_path / "other"
    assert evaluate_cityscapes.main([*args[:4], "--panel-seed", "1", "--panels-dir", str(other),
                                     *val]) == 0  # fmt: skip
    drawn = sorted(other.glob("*.png"))
    assert len(drawn) == 2 and [p.name for p in drawn] != [p.name for p in panels]
    # by name, beside the checkpoint without --save-dir
    name = panels[0].stem
    assert evaluate_cityscapes.main(["--restore", str(ckpt), "--panel-images", name,
                                     *val]) == 0  # fmt: skip
    assert [p.name for p in (tmp_path / "a.pth.panels").iterdir()] == [f"{name}.png"]
    with pytest.raises(UsageError, match="no val image named nope"):
        evaluate_cityscapes.main(["--restore", str(ckpt), "--panel-images", "nope", *val])


def test_several_checkpoints_give_a_comparison(tmp_path, val):
    files = [checkpoint(tmp_path / f"run{i}" / "last.pth", seed=i) for i in range(3)]
    out = tmp_path / "cmp"
    args = ["--restore", *map(str, files), "--panels", "2", "--panels-dir", str(out), *val]
    assert evaluate_cityscapes.main(args) == 0
    assert [p.name for p in out.iterdir()] == ["comparison.png"]
    panel = np.array(Image.open(out / "comparison.png"))
    assert panel.shape[1] == 5 * 128 + 4 * GAP  # image, label, three checkpoints
    assert panel.shape[0] > 2 * 64 + GAP  # two rows and the titles
    columns = [_tile(panel, 0, c, 64, 128, rows=2) for c in (2, 3, 4)]
    assert not np.array_equal(columns[0], columns[1])  # different models, different maps
    # the first row, first checkpoint: its prediction of the first image drawn
    preds = tmp_path / "preds"
    assert evaluate_cityscapes.main(["--restore", str(files[0]), "--save-dir", str(preds),
                                     *val]) == 0  # fmt: skip
    saved = sorted(p for p in preds.glob("*/*.png") if p.parent.name != "color")
    first = saved[choose_images([p.name for p in saved], 2, None, seed=0)[0]]
    ids = np.array(Image.open(first).resize((128, 64), Image.NEAREST))
    np.testing.assert_array_equal(columns[0], colorize(ids))
    # the comparison is kept unless --overwrite
    stamp = (out / "comparison.png").stat().st_mtime_ns
    with pytest.raises(OutputExistsError, match="--panels-dir .* already holds 1 .*--overwrite"):
        evaluate_cityscapes.main(args)
    assert (out / "comparison.png").stat().st_mtime_ns == stamp


def test_ensemble_panels_and_bad_flags(tmp_path, val, capsys):
    a, b = checkpoint(tmp_path / "a.pth", 0), checkpoint(tmp_path / "b.pth", 1)
    args = ["--restore", str(a), str(b), "--panels", "1", "--combine", "logit", "--",
            *TINY_EVAL, *val]  # fmt: skip
    assert ensemble.main(args) == 0
    (panel,) = (tmp_path / "a.pth.ensemble.panels").glob("*.png")
    assert np.array(Image.open(panel)).shape[1] == 5 * 128 + 4 * GAP
    with pytest.raises(OutputExistsError, match="--panels-dir .* already holds 1 .*--overwrite"):
        ensemble.main(args)
    assert ensemble.main(["--overwrite", *args]) == 0
    for bad, message in (
        (["--pred-dir", str(tmp_path), "--panels", "2"], "--panels needs --restore"),
        (["--restore", str(a), "--panel-seed", "1"], "need --panels"),
        (["--restore", str(a), "--panels", "0"], ">= 1"),
        (["--restore", str(a), "--panels", "2", "--panel-images", "x"], "names 1 images"),
    ):
        with pytest.raises(SystemExit):
            evaluate_cityscapes.main(bad)
        assert message in capsys.readouterr().err


def test_a_16_output_model_is_shown_in_trainid_colours():
    """Output k of a SYNTHIA 16-class model is trainId CLASS_SUBSETS[16][k] (index 9 is sky,
    trainId 10), in the panel and in predict.py's labels alike."""
    from dataset.labels import CLASS_SUBSETS, colorize
    from utils.analysis.panels import predicted_labels, prediction_panel

    probs = torch.zeros(16, 8, 8)
    probs[9] = 1.0
    assert CLASS_SUBSETS[16][9] == 10
    label = np.full((8, 8), 10, dtype=np.uint8)
    panel = prediction_panel(np.zeros((8, 8, 3), np.uint8), label, probs)
    sky = colorize(np.array([[10]], dtype=np.uint8))[0, 0]
    assert (panel == sky).all(axis=-1).sum() >= 2 * 64  # the label tile and the prediction tile
    dataset = [type("S", (), {"image": torch.zeros(3, 8, 8), "label": torch.zeros(8, 8)})()]
    preds = predicted_labels(dataset, [0], lambda image, size: probs[None])
    assert (preds[0] == 10).all()
