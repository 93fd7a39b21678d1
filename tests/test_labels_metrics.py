"""Label table and IoU against cityscapesscripts, the dataset's official scripts."""

import math

import numpy as np
import pytest
import torch
from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval
from cityscapesscripts.helpers.labels import labels as cs_labels
from PIL import Image

from dataset.labels import CLASS_NAMES, ID_TO_TRAIN_ID, LABEL_IDS, PALETTE, colorize
from utils.metrics import ConfusionMatrix, format_iou_table

CS_NAMES = {"light": "traffic light", "sign": "traffic sign"}


def test_label_table_matches_cityscapesscripts():
    for label in cs_labels:
        if label.id < 0:
            continue
        expected = label.trainId if label.trainId not in (-1, 255) else 255
        assert ID_TO_TRAIN_ID[label.id] == expected, label.name
        if expected != 255:
            assert CS_NAMES.get(CLASS_NAMES[expected], CLASS_NAMES[expected]) == label.name
            assert PALETTE[expected] == label.color
            assert LABEL_IDS[expected] == label.id
    assert (ID_TO_TRAIN_ID[34:] == 255).all()


def test_colorize_uses_palette_and_black_for_ignore():
    out = colorize(np.array([[0, 13, 255]], dtype=np.uint8))
    assert out.shape == (1, 3, 3)
    assert tuple(out[0, 0]) == PALETTE[0] and tuple(out[0, 1]) == PALETTE[13]
    assert tuple(out[0, 2]) == (0, 0, 0)


def test_confusion_matrix_hand_case():
    # 3 classes; target/pred over 8 pixels, one ignored.
    target = torch.tensor([0, 0, 0, 1, 1, 2, 2, 255])
    pred = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    # class 0: TP 2, FN 1, FP 0 -> 2/3; class 1: TP 1, FN 1, FP 1 -> 1/3; class 2: TP 2, FP 1 -> 2/3
    assert cm.iou() == pytest.approx([2 / 3, 1 / 3, 2 / 3])
    assert cm.miou() == pytest.approx(5 / 9)
    assert cm.pixel_accuracy() == pytest.approx(5 / 7)


def test_confusion_matrix_nan_for_absent_class_and_errors():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    iou = cm.iou()
    assert iou[:2] == [1.0, 1.0] and math.isnan(iou[2])
    assert cm.miou() == 1.0
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2), torch.zeros(3))
    # Out-of-range values are counted on the device and reported when the matrix is read.
    cm.update(torch.tensor([0, 1]), torch.tensor([7, -1]))
    with pytest.raises(ValueError, match="label values must be in \\[0, 3\\).*: 2 pixels"):
        cm.iou()
    bad_pred = ConfusionMatrix(3)
    bad_pred.update(torch.tensor([3, 0, 5]), torch.tensor([0, 0, 255]))  # 5: ignored pixel
    with pytest.raises(ValueError, match="predicted values must be in \\[0, 3\\): 1 pixels"):
        bad_pred.miou()


def _cityscapes_oracle(tmp_path, preds, gts):
    """Per-trainId IoU from cityscapesscripts on label-id PNGs."""
    train_to_id = np.array(LABEL_IDS, dtype=np.uint8)
    pred_files, gt_files = [], []
    for i, (p, g) in enumerate(zip(preds, gts)):
        pf, gf = tmp_path / f"pred_{i}.png", tmp_path / f"gt_{i}_gtFine_labelIds.png"
        Image.fromarray(train_to_id[p]).save(pf)
        Image.fromarray(g).save(gf)
        pred_files.append(str(pf))
        gt_files.append(str(gf))
    args = cs_eval.args
    args.quiet, args.JSONOutput, args.evalInstLevelScore = True, False, False
    result = cs_eval.evaluateImgLists(pred_files, gt_files, args)
    scores = result["classScores"]
    return [scores[CS_NAMES.get(n, n)] for n in CLASS_NAMES]


def test_miou_matches_cityscapesscripts(tmp_path):
    rng = np.random.default_rng(0)
    all_ids = np.array([label.id for label in cs_labels if label.id >= 0], dtype=np.uint8)
    preds, gts = [], []
    for i in range(3):
        gt = rng.choice(all_ids, size=(24, 40)).astype(np.uint8)  # includes ignored ids
        truth = ID_TO_TRAIN_ID[gt]
        pred = np.where(rng.random(gt.shape) < 0.6, truth, rng.integers(0, 19, gt.shape))
        pred = np.where(pred == 255, rng.integers(0, 19, gt.shape), pred).astype(np.uint8)
        if i == 2:  # leave class 16 (train, label id 31) out of the last image only
            gt = np.where(gt == 31, 0, gt).astype(np.uint8)  # id 0: unlabeled, ignored
            pred = np.where(pred == 16, 15, pred).astype(np.uint8)
        preds.append(pred)
        gts.append(gt)
    assert 16 in preds[0] and 31 in gts[0] and 16 not in preds[2] and 31 not in gts[2]
    cm = ConfusionMatrix(19)
    for p, g in zip(preds, gts):
        cm.update(torch.from_numpy(p.astype(np.int64)), torch.from_numpy(ID_TO_TRAIN_ID[g]).long())
    expected = _cityscapes_oracle(tmp_path, preds, gts)
    assert cm.iou() == pytest.approx(expected, abs=1e-12)


def test_format_iou_table_rows_and_miou():
    table = format_iou_table({"a": [0.5] * 18 + [math.nan], "b": [1.0] * 19})
    lines = table.splitlines()
    assert len(lines) == 4
    assert lines[0].split("|")[2].strip() == "road" and "mIoU" in lines[0]
    assert lines[2].split("|")[-2].strip() == "50.00"  # nan-mean over 18 classes
    assert lines[2].split("|")[-3].strip() == "nan"
    assert lines[3].split("|")[-2].strip() == "100.00"
