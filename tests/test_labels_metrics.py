"""Label table and IoU (19 classes, and the 16 and 13 of SYNTHIA -> Cityscapes) against
cityscapesscripts, the dataset's official scripts; the confusion matrix of labels resized with
the image (``eval.label_size=input``) against one made by hand."""

import math

import numpy as np
import pytest
import torch
from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval
from cityscapesscripts.helpers.labels import labels as cs_labels
from conftest import TINY_EVAL
from PIL import Image

from dataset.labels import (
    CLASS_NAMES,
    CLASS_SUBSETS,
    ID_TO_TRAIN_ID,
    LABEL_IDS,
    PALETTE,
    SYNTHIA_13,
    SYNTHIA_16,
    colorize,
)
from utils.config import load_config
from utils.evaluation.inference import evaluate_views, predicted_train_ids
from utils.evaluation.metrics import ConfusionMatrix, format_iou_table
from utils.evaluation.prepare import val_dataset, val_loader

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
    return _cityscapes_result(tmp_path, preds, gts)[0]


def _cityscapes_result(tmp_path, preds, gts):
    """cityscapesscripts' per-trainId IoU and class average on label-id PNGs."""
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
    return [scores[CS_NAMES.get(n, n)] for n in CLASS_NAMES], result["averageScoreClasses"]


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


# --- the 16- and 13-class protocols (SYNTHIA -> Cityscapes) ----------------------------------


def test_subsets_are_the_papers_classes():
    names16 = {CLASS_NAMES[c] for c in SYNTHIA_16}
    names13 = {CLASS_NAMES[c] for c in SYNTHIA_13}
    assert names16 == set(CLASS_NAMES) - {"terrain", "truck", "train"} and len(SYNTHIA_16) == 16
    assert names13 == names16 - {"wall", "fence", "pole"} and len(SYNTHIA_13) == 13
    assert list(SYNTHIA_16) == sorted(SYNTHIA_16)  # the papers' column order: trainId order
    assert {19: tuple(range(19)), 16: SYNTHIA_16, 13: SYNTHIA_13} == CLASS_SUBSETS


def test_subset_iou_hand_case():
    # Classes 0..2, subset {0, 1}: class 2 is absent from the protocol.
    target = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 0, 2, 1, 1, 0, 2, 1])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    # All 3: class 0 TP 2, FN 2, FP 1 -> 2/5; class 1 TP 1, FN 1, FP 2 -> 1/4.
    assert cm.iou() == pytest.approx([2 / 5, 1 / 4, 1 / 3])
    # Subset {0, 1}: the pixel of 0 predicted 2 stays an FN of 0; the pixel of 2 predicted 1
    # (an ignored label) is no FP of 1: class 0 -> 2/5, class 1 TP 1, FN 1, FP 1 -> 1/3.
    assert cm.iou([0, 1]) == pytest.approx([2 / 5, 1 / 3])
    assert cm.miou([0, 1]) == pytest.approx((2 / 5 + 1 / 3) / 2)
    assert cm.miou([0, 1]) != pytest.approx(cm.miou() * 3 / 2)  # never a rescaled mean


def _restricted_oracle(tmp_path, preds, gts, absent, monkeypatch):
    """cityscapesscripts' per-class IoU and class average with the trainIds ``absent`` (and so
    their label ids) marked ignoreInEval, as its evaluation restricted to the others."""
    ignored = {LABEL_IDS[c] for c in absent}
    patched = {i: lab._replace(ignoreInEval=True) if i in ignored else lab
               for i, lab in cs_eval.id2label.items()}  # fmt: skip
    monkeypatch.setattr(cs_eval, "id2label", patched)
    return _cityscapes_result(tmp_path, preds, gts)


@pytest.mark.parametrize("num_classes", [16, 13])
def test_subset_miou_matches_cityscapesscripts(tmp_path, monkeypatch, num_classes):
    rng = np.random.default_rng(num_classes)
    all_ids = np.array([label.id for label in cs_labels if label.id >= 0], dtype=np.uint8)
    classes = CLASS_SUBSETS[num_classes]
    absent = [c for c in range(19) if c not in classes]
    preds, gts = [], []
    for _ in range(3):
        gt = rng.choice(all_ids, size=(24, 40)).astype(np.uint8)  # every class, ignored ids too
        truth = ID_TO_TRAIN_ID[gt]
        pred = np.where(rng.random(gt.shape) < 0.5, truth, rng.integers(0, 19, gt.shape))
        pred = np.where(pred == 255, rng.integers(0, 19, gt.shape), pred).astype(np.uint8)
        preds.append(pred)
        gts.append(gt)
    # Absent classes are both predicted (on pixels of present classes) and labelled.
    present = np.isin(ID_TO_TRAIN_ID[gts[0]], classes)
    assert np.isin(preds[0][present], absent).sum() > 20
    assert np.isin(ID_TO_TRAIN_ID[gts[0]], absent).sum() > 20
    cm = ConfusionMatrix(19)
    for p, g in zip(preds, gts):
        cm.update(torch.from_numpy(p.astype(np.int64)), torch.from_numpy(ID_TO_TRAIN_ID[g]).long())
    per_class, average = _restricted_oracle(tmp_path, preds, gts, absent, monkeypatch)
    assert cm.iou(classes) == pytest.approx([per_class[c] for c in classes], abs=1e-12)
    assert cm.miou(classes) == pytest.approx(average, abs=1e-12)
    assert all(math.isnan(per_class[c]) for c in absent)
    # The restriction changes each class's IoU (fewer false positives), and the mean is not
    # the 19-class mean rescaled.
    full = cm.iou()
    assert all(cm.iou(classes)[i] > full[c] for i, c in enumerate(classes))
    assert cm.miou(classes) != pytest.approx(cm.miou() * 19 / num_classes, abs=1e-3)


def test_format_iou_table_subset_columns():
    table = format_iou_table({"a": [0.5] * 16}, 16)
    head = [cell.strip() for cell in table.splitlines()[0].split("|")[2:-1]]
    assert head == ["road", "sdwk", "bldng", "wall", "fence", "pole", "light", "sign", "vgtn",
                    "sky", "person", "rider", "car", "bus", "mcycl", "bcycl", "mIoU16"]  # fmt: skip
    table13 = format_iou_table({"a": [0.25] * 13}, 13)
    head13 = [cell.strip() for cell in table13.splitlines()[0].split("|")[2:-1]]
    assert head13[3] == "light" and head13[-1] == "mIoU13" and len(head13) == 14
    assert table13.splitlines()[2].split("|")[-2].strip() == "25.00"
    with pytest.raises(ValueError, match="19 IoUs for 16 classes"):
        format_iou_table({"a": [0.5] * 19}, 16)


def test_predictions_map_outputs_to_train_ids_and_views_restrict_the_argmax():
    scores19 = torch.zeros(1, 19, 1, 3)
    scores19[0, [9, 2, 16], 0, [0, 1, 2]] = 1.0  # terrain, building, train
    scores19[0, 8, 0, 0] = 0.5  # vegetation second at pixel 0
    scores19[0, 15, 0, 2] = 0.5  # bus second at pixel 2
    assert predicted_train_ids(scores19).tolist() == [[[9, 2, 16]]]
    assert predicted_train_ids(scores19, SYNTHIA_16).tolist() == [[[8, 2, 15]]]
    scores16 = torch.zeros(1, 16, 1, 2)
    scores16[0, [9, 15], 0, [0, 1]] = 1.0  # output 9 is sky (trainId 10), 15 bicycle (18)
    assert predicted_train_ids(scores16).tolist() == [[[10, 18]]]
    scores16[0, 3, 0, 1] = 0.5  # wall second
    assert predicted_train_ids(scores16, SYNTHIA_13).tolist() == [[[10, 18]]]
    scores16[0, 15, 0, 1] = 0.0  # now wall leads; masked, the first of the tied rest (road)
    assert predicted_train_ids(scores16).tolist() == [[[10, 3]]]
    assert predicted_train_ids(scores16, SYNTHIA_13).tolist() == [[[10, 0]]]
    with pytest.raises(ValueError, match="5 outputs"):
        predicted_train_ids(torch.zeros(1, 5, 1, 1))


class _FixedPrediction(torch.nn.Module):
    """A stand-in G that predicts ``pred`` (h x w trainIds) whatever the image: one-hot logits
    at that size, so nothing is upsampled when the label has it too."""

    def __init__(self, pred):
        super().__init__()
        self.pred = pred

    def forward(self, image):
        return image

    def predict(self, out):
        logits = torch.nn.functional.one_hot(self.pred, 19).permute(2, 0, 1).float()
        return logits[None].expand(out.shape[0], -1, -1, -1)


def _tiny_cityscapes(root, label):
    """A one-image Cityscapes val split under ``root`` whose label holds ``label``'s trainIds
    (255: ignored); returns the overrides that point ``data.val`` at it."""
    ids = np.zeros_like(label)  # label id 0 (unlabelled) is ignored
    for train_id, label_id in enumerate(LABEL_IDS):
        ids[label == train_id] = label_id
    h, w = label.shape
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    for folder, suffix, array in (("leftImg8bit", "leftImg8bit", image),
                                  ("gtFine", "gtFine_labelIds", ids)):  # fmt: skip
        (root / folder / "val" / "c").mkdir(parents=True)
        Image.fromarray(array).save(root / folder / "val" / "c" / f"c_000000_000000_{suffix}.png")
    return [f"data.val.root={root}"]


def test_label_size_input_scores_the_label_resized_by_nearest_with_the_image(tmp_path):
    label = (np.arange(6 * 9).reshape(6, 9) % 19).astype(np.uint8)  # 9x6: every pixel its own
    label[2, :] = 255  # an ignored row
    data = [*TINY_EVAL, *_tiny_cityscapes(tmp_path, label), "data.val.resize=[6,4]"]
    # Nearest from 9x6 to 6x4 by hand: output pixel i reads input pixel floor((i + 0.5) * 1.5)
    rows, cols = [0, 2, 3, 5], [0, 2, 3, 5, 6, 8]
    resized = label[np.ix_(rows, cols)]
    assert (resized == np.asarray(Image.fromarray(label).resize((6, 4), Image.NEAREST))).all()
    pred = torch.from_numpy(resized.astype(np.int64) % 255)  # right where labelled...
    pred[0, ::2] = (pred[0, ::2] + 1) % 19  # ...but for three pixels of the first row
    expected = torch.zeros(19, 19, dtype=torch.int64)
    for t, p in zip(resized.reshape(-1).tolist(), pred.reshape(-1).tolist()):
        if t != 255:
            expected[t, p] += 1
    assert expected.sum() == 18 and expected.trace() == 15  # 6 pixels ignored, 3 wrong

    cfg = load_config(None, [*data, "eval.label_size=input"])
    val = val_dataset(cfg)
    assert val[0].image.shape == (3, 4, 6) and (val[0].label.numpy() == resized).all()
    loader = val_loader(cfg, val, None)
    cm = evaluate_views(_FixedPrediction(pred), loader, torch.device("cpu"), progress=False)[0]
    assert torch.equal(cm.mat, expected)
    iou = cm.iou()
    assert (iou[0], iou[1], iou[7], iou[10]) == (0.0, 0.0, 0.5, 1.0)  # a miss, a false positive
    assert math.isnan(iou[18])  # in the full-size label only

    # the default keeps the label at full size (the prediction is upsampled to it)
    full = val_dataset(load_config(None, data))
    assert full[0].image.shape == (3, 4, 6) and (full[0].label.numpy() == label).all()
