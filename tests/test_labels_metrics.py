"""Label table and IoU (19 classes, and the 16 and 13 of SYNTHIA -> Cityscapes) against
cityscapesscripts, the dataset's official scripts; the two subset protocols
(``eval.subset_protocol``) on a matrix made by hand, where results record them and how old
results read back; the confusion matrix of labels resized with the image
(``eval.label_size=input``) against one made by hand."""

import json
import math

import numpy as np
import pytest
import torch
from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval
from cityscapesscripts.helpers.labels import labels as cs_labels
from conftest import TINY_EVAL, TINY_TRAIN, write_layout
from PIL import Image

import evaluate_cityscapes
import train_norm_only
from benchmarks import seeds
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
from utils.errors import UsageError
from utils.evaluation.inference import evaluate_views, predicted_train_ids
from utils.evaluation.metrics import ConfusionMatrix, format_iou_table
from utils.evaluation.prepare import val_dataset, val_loader
from utils.evaluation.reports import (
    class_ious,
    class_results,
    protocol_of,
    recorded_subset_protocol,
)

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
    # full_matrix: cityscapesscripts' own 19-class IoUs, read at the set's classes
    (tmp_path / "all").mkdir()
    all19, _ = _cityscapes_result(tmp_path / "all", preds, gts)
    assert cm.iou(classes, "full_matrix") == pytest.approx([all19[c] for c in classes], abs=1e-12)
    per_class, average = _restricted_oracle(tmp_path, preds, gts, absent, monkeypatch)
    assert cm.iou(classes) == pytest.approx([per_class[c] for c in classes], abs=1e-12)
    assert cm.miou(classes) == pytest.approx(average, abs=1e-12)
    assert all(math.isnan(per_class[c]) for c in absent)
    # The restriction changes each class's IoU (fewer false positives), and the mean is not
    # the 19-class mean rescaled.
    full = cm.iou()
    assert all(cm.iou(classes)[i] > full[c] for i, c in enumerate(classes))
    assert cm.miou(classes) != pytest.approx(cm.miou() * 19 / num_classes, abs=1e-3)


def _matrix(cells: dict[tuple[int, int], int]) -> ConfusionMatrix:
    """A 19-class matrix holding ``cells``: (true class, predicted class) -> pixels."""
    target = [t for (t, _), n in cells.items() for _ in range(n)]
    pred = [p for (_, p), n in cells.items() for _ in range(n)]
    cm = ConfusionMatrix(19)
    cm.update(torch.tensor(pred), torch.tensor(target))
    return cm


# 10 pixels of each of SYNTHIA's 16 classes predicted right; 2 of road predicted sidewalk, 1 of
# building predicted terrain (outside the 16); pixels labelled outside the 16, never predicted
# right: 4 of terrain predicted vegetation, 2 of truck predicted car, 3 of train predicted bus.
HAND = {**{(c, c): 10 for c in SYNTHIA_16},
        (0, 1): 2, (2, 9): 1, (9, 8): 4, (14, 13): 2, (16, 15): 3}  # fmt: skip


def test_the_two_subset_protocols_on_a_matrix_made_by_hand():
    cm = _matrix(HAND)
    # ignore_outside: the rows of terrain, truck and train are not counted. Road: TP 10, FN 2
    # (its whole row) -> 10/12; sidewalk: FP 2 (road's row is in the set) -> 10/12; building:
    # FN 1 (predicted terrain: a false negative, a false positive of nothing) -> 10/11;
    # vegetation, car, bus: their false positives lie in the uncounted rows -> 1.
    ignore = {**dict.fromkeys(SYNTHIA_16, 1.0), 0: 10 / 12, 1: 10 / 12, 2: 10 / 11}
    # full_matrix: every row counts, so vegetation 10/(10 + 4), car 10/(10 + 2), bus 10/(10 + 3)
    full = {**ignore, 8: 10 / 14, 13: 10 / 12, 15: 10 / 13}
    assert cm.iou(SYNTHIA_16) == pytest.approx([ignore[c] for c in SYNTHIA_16])
    assert cm.iou(SYNTHIA_16, "ignore_outside") == cm.iou(SYNTHIA_16)  # the default
    assert cm.iou(SYNTHIA_16, "full_matrix") == pytest.approx([full[c] for c in SYNTHIA_16])
    assert cm.iou(SYNTHIA_13) == pytest.approx([ignore[c] for c in SYNTHIA_13])
    assert cm.iou(SYNTHIA_13, "full_matrix") == pytest.approx([full[c] for c in SYNTHIA_13])
    assert cm.miou(SYNTHIA_16, "full_matrix") == pytest.approx(sum(full.values()) / 16)
    # the 19 classes: terrain (row 4, column 1), truck (row 2) and train (row 3), never right,
    # have IoU 0; the full matrix's IoUs are full_matrix's, and so mIoU16 = mIoU19 x 19/16
    full19 = {**full, 9: 0.0, 14: 0.0, 16: 0.0}
    assert cm.iou() == pytest.approx([full19[c] for c in range(19)])
    assert cm.miou(SYNTHIA_16, "full_matrix") == pytest.approx(cm.miou() * 19 / 16)
    assert cm.miou(SYNTHIA_16) != pytest.approx(cm.miou() * 19 / 16)  # not ignore_outside
    # 19 classes: the two protocols are the same
    for classes in (None, range(19)):
        assert cm.iou(classes, "full_matrix") == cm.iou(classes, "ignore_outside") == cm.iou()


def test_the_identity_needs_the_absent_classes_at_iou_0_not_nan():
    # Nothing labelled or predicted outside the 16: terrain, truck and train have no union,
    # IoU NaN, and the 19-class nan-mean skips them: mIoU16 is mIoU19, not mIoU19 x 19/16.
    inside = {cell: n for cell, n in HAND.items() if all(c in SYNTHIA_16 for c in cell)}
    cm = _matrix(inside)
    assert all(math.isnan(cm.iou()[c]) for c in (9, 14, 16))
    assert cm.miou(SYNTHIA_16, "full_matrix") == cm.miou(SYNTHIA_16) == pytest.approx(cm.miou())
    # Predicted but never labelled (building's pixel predicted terrain): IoU 0 again
    cm = _matrix({**inside, (2, 9): 1})
    assert cm.iou()[9] == 0.0 and math.isnan(cm.iou()[14])
    assert cm.miou(SYNTHIA_16, "full_matrix") == pytest.approx(cm.miou() * 17 / 16)


def test_an_unknown_subset_protocol_is_an_error_naming_the_choices():
    named = (r"subset protocol 'full' \(eval\.subset_protocol, --subset-protocol\): expected "
             r"one of ignore_outside, full_matrix")  # fmt: skip
    with pytest.raises(ValueError, match=named):
        _matrix(HAND).iou(SYNTHIA_16, "full")
    with pytest.raises(ValueError, match="expected one of ignore_outside, full_matrix"):
        _matrix(HAND).miou(None, "all")


def test_mask_absent_and_the_subset_protocol_combine():
    cm = _matrix(HAND)
    # the masked view's argmax over the 16: building's pixel is predicted building
    masked = _matrix({**HAND, (2, 9): 0, (2, 2): 11})
    for protocol in ("ignore_outside", "full_matrix"):
        ious = class_ious([cm, masked, masked], [19, 16, 13], True, protocol)
        assert ious[19] == cm.iou()  # the model's own argmax, whatever the protocol
        assert ious[16] == masked.iou(SYNTHIA_16, protocol)
        assert ious[13] == masked.iou(SYNTHIA_13, protocol)
        assert class_ious([cm], [19, 16], False, protocol)[16] == cm.iou(SYNTHIA_16, protocol)
        results = class_results(ious, [cm, masked, masked], True, protocol)
        assert results["mask_absent"] is True and results["subset_protocol"] == protocol
    # masked, an absent class is never predicted: labelled, its IoU is 0 and the identity holds
    assert masked.iou()[2] == 1.0 and [masked.iou()[c] for c in (9, 14, 16)] == [0.0] * 3
    assert masked.miou(SYNTHIA_16, "full_matrix") == pytest.approx(masked.miou() * 19 / 16)
    # 19 classes only: no subset, so neither rule is recorded
    assert set(class_results({19: cm.iou()}, [cm], False, "full_matrix")) == {"mIoU", "iou"}


def test_the_protocol_records_the_subset_protocol_where_a_subset_is_reported():
    subsets = load_config(None, ["eval.classes=[16,13]", "eval.subset_protocol=full_matrix"])
    scored = protocol_of(subsets, "last")
    assert scored.fields()["subset_protocol"] == "full_matrix"
    assert scored.line() == (
        "protocol: labels at full resolution (eval.label_size=full), flip off, subsets: IoUs "
        "of the 19-class matrix, averaged over a set (eval.subset_protocol=full_matrix), "
        "snapshot: last"
    )
    default = protocol_of(load_config(None, ["eval.classes=[19,16]"]), "last")
    assert default.fields()["subset_protocol"] == "ignore_outside"
    assert "subsets: pixels labelled outside a set ignored (eval.subset_protocol=ignore_" in (
        default.line()
    )
    # 19 classes only: the two protocols agree, and neither the JSON nor the line names one
    only19 = protocol_of(load_config(None, ["eval.subset_protocol=full_matrix"]), "last")
    assert "subset_protocol" not in only19.fields() and "subsets" not in only19.line()


def test_results_without_the_field_read_as_ignore_outside():
    old = {"mIoU16": 0.3, "mask_absent": False,
           "protocol": {"label_size": "full", "input_size": [1024, 512], "flip": True,
                        "selection": "last"}}  # fmt: skip
    assert recorded_subset_protocol(old) == "ignore_outside"
    assert recorded_subset_protocol({"mIoU16": 0.3}) == "ignore_outside"  # no protocol at all
    new = {**old, "protocol": {**old["protocol"], "subset_protocol": "full_matrix"}}
    assert recorded_subset_protocol(new) == "full_matrix"
    assert recorded_subset_protocol({"subset_protocol": "full_matrix"}) == "full_matrix"
    with pytest.raises(ValueError, match="'whole': expected one of ignore_outside, full_matrix"):
        recorded_subset_protocol({"subset_protocol": "whole"})
    # benchmarks.seeds (and benchmarks.synthetic_table) read runs' results.json: an old run
    # tables with one of ignore_outside, and not with one of full_matrix
    row = {"iou": [0.5] * 19, "mIoU": 0.5, "iou16": [0.5] * 16, "mIoU16": 0.5,
           "iou13": [0.5] * 13, "mIoU13": 0.5}  # fmt: skip
    ignore = {**row, "protocol": {"subset_protocol": "ignore_outside"}}
    full = {**row, "protocol": {"subset_protocol": "full_matrix"}}
    assert seeds.subset_protocol({"a": [{**old, **row}], "b": [ignore]}) == "ignore_outside"
    assert "| a | 50.0 |" in seeds.markdown_table({"a": [{**old, **row}], "b": [ignore]}, 16)
    mixed = r"different eval\.subset_protocol \(a: ignore_outside; b: full_matrix\)"
    with pytest.raises(UsageError, match=mixed):
        seeds.markdown_table({"a": [{**old, **row}], "b": [full]}, 16)
    assert "| b | 50.0 |" in seeds.markdown_table({"a": [row], "b": [full]})  # 19: no subset


def test_evaluate_records_the_subset_protocol_flag(tmp_path, synthetic, capsys):
    path, _, _ = write_layout(tmp_path, "clan", synthetic)
    common = ["--restore", str(path), "--classes", "19", "16", "13", *TINY_EVAL, *synthetic]
    plain_json, full_json = tmp_path / "plain.json", tmp_path / "full.json"
    assert evaluate_cityscapes.main([*common, "--results", str(plain_json)]) == 0
    assert "(eval.subset_protocol=ignore_outside), snapshot: " in capsys.readouterr().out
    assert evaluate_cityscapes.main([*common, "--subset-protocol", "full_matrix",
                                     "--results", str(full_json)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    header = ("subsets: IoUs of the 19-class matrix, averaged over a set "
              "(eval.subset_protocol=full_matrix), snapshot: file given: clan.pth")  # fmt: skip
    assert header in out
    plain, full = json.loads(plain_json.read_text()), json.loads(full_json.read_text())
    assert plain["protocol"]["subset_protocol"] == plain["subset_protocol"] == "ignore_outside"
    assert full["protocol"]["subset_protocol"] == full["subset_protocol"] == "full_matrix"
    assert full["config"]["eval"]["subset_protocol"] == "full_matrix"
    assert recorded_subset_protocol(full) == "full_matrix"
    # full_matrix's subset IoUs are the 19-class IoUs; the 19 classes are the same under both
    assert plain["iou"] == full["iou"] and plain["mIoU"] == full["mIoU"]
    for k, subset in ((16, SYNTHIA_16), (13, SYNTHIA_13)):
        names = [CLASS_NAMES[c] for c in subset]
        assert list(full[f"iou{k}"].values()) == pytest.approx([full["iou"][n] for n in names],
                                                               nan_ok=True)  # fmt: skip
    assert full["mIoU13"] != plain["mIoU13"]  # wall, fence and pole are labelled
    assert out.rstrip().splitlines()[-2] == f"mIoU16: {100 * full['mIoU16']:.2f}"
    # 19 classes only: the flag changes nothing and is recorded nowhere but the config
    only19 = tmp_path / "19.json"
    args = ["--restore", str(path), "--subset-protocol", "full_matrix", "--results", str(only19),
            *TINY_EVAL, *synthetic]  # fmt: skip
    assert evaluate_cityscapes.main(args) == 0
    saved = json.loads(only19.read_text())
    assert saved["mIoU"] == plain["mIoU"] and "subset_protocol" not in saved["protocol"]
    assert "subset_protocol" not in saved
    with pytest.raises(SystemExit):
        evaluate_cityscapes.main([*common, "--subset-protocol", "whole"])


def test_training_records_the_subset_protocol_in_results_json(tmp_path, synthetic, capsys):
    args = ["--config", "configs/demo/norm_only.yaml", *TINY_TRAIN, *synthetic,
            "train.device=cpu", "train.max_steps=1", f"train.out_dir={tmp_path}",
            "train.run_name=full", "eval.classes=[19,16]",
            "eval.subset_protocol=full_matrix"]  # fmt: skip
    assert train_norm_only.main(args) == 0
    assert "(eval.subset_protocol=full_matrix), snapshot: last" in capsys.readouterr().out
    results = json.loads((tmp_path / "full" / "results.json").read_text())
    assert results["protocol"]["subset_protocol"] == results["subset_protocol"] == "full_matrix"
    assert results["iou16"] == pytest.approx([results["iou"][c] for c in SYNTHIA_16], nan_ok=True)


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

    align_corners = True  # the contract's: how its logits are resized

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
