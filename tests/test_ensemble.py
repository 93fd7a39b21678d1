"""Flip averaging, the ensemble's arithmetic, evaluate_cityscapes.py and ensemble.py on every
layout (their tables, presets, weights and bad input), the protocols of the paper's rows beside
this run's, and the 16- and 13-class reports."""

import json

import pytest
import torch
from conftest import (
    LAYOUT_FILES,
    TINY_EVAL,
    Evil,
    checkpoint_dict,
    producer,
    write_layout,
)
from torch import nn

import ensemble
import evaluate_cityscapes
from dataset.build import build_dataset
from dataset.datasets import eval_loader
from dataset.labels import CLASS_NAMES, CLASS_SUBSETS, SYNTHIA_13, SYNTHIA_16
from utils.checkpoint import CheckpointError
from utils.config import load_config
from utils.errors import run
from utils.evaluation.inference import (
    combine_scores,
    evaluate,
    normalise_weights,
    predict_logits,
    predict_scores,
)
from utils.evaluation.metrics import ConfusionMatrix
from utils.evaluation.paper_results import TABLE1, paper_row


def symmetric_model():
    """A G whose every kernel is mirror-symmetric: flip-equivariant for widths 8m + 1 whose
    strides line up (33 -> 17 -> 9 -> 5)."""
    model = producer()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_((m.weight + m.weight.flip(-1)) / 2)
    return model


def test_flip_averaging():
    model = symmetric_model()
    x = torch.randn(1, 3, 24, 33)
    x = (x + x.flip(-1)) / 2  # a flip-symmetric input
    plain = predict_scores(model, x, (48, 65))
    torch.testing.assert_close(predict_scores(model, x, (48, 65), flip=True), plain)
    generic = producer(seed=1)
    y = torch.randn(1, 3, 24, 40)
    probs = predict_scores(generic, y, (24, 40), flip=True)
    mirrored = predict_logits(generic, y.flip(-1), (24, 40)).softmax(1).flip(-1)
    expected = (predict_logits(generic, y, (24, 40)).softmax(1) + mirrored) / 2
    torch.testing.assert_close(probs, expected)
    logits = predict_scores(generic, y, (24, 40), space="logit")
    assert torch.equal(logits.argmax(1), predict_scores(generic, y, (24, 40)).argmax(1))
    with pytest.raises(ValueError, match="space must be one of"):
        predict_scores(generic, y, (24, 40), space="log")


def test_weights_and_combination():
    assert normalise_weights(None, 3) == [1 / 3] * 3
    assert normalise_weights([0.7, 0.3], 2) == [0.7, 0.3]
    assert normalise_weights([7, 3], 2) == [0.7, 0.3]
    with pytest.raises(ValueError, match="3 weights for 2 checkpoints"):
        normalise_weights([1, 1, 1], 2)
    with pytest.raises(ValueError, match="sum to a positive number"):
        normalise_weights([0, 0], 2)
    with pytest.raises(ValueError, match="finite and >= 0"):
        normalise_weights([1, -0.5], 2)
    a, b = torch.rand(1, 19, 4, 5), torch.rand(1, 19, 4, 5)
    assert torch.equal(combine_scores([a, b], [1.0, 0.0], ["a", "b"]), a)
    assert torch.equal(combine_scores([a, a], [0.5, 0.5], ["a", "a"]), a)
    torch.testing.assert_close(combine_scores([a, b], [0.7, 0.3], ["a", "b"]), 0.7 * a + 0.3 * b)
    with pytest.raises(ValueError, match="outputs differ: a gives \\(1, 19, 4, 5\\), b gives"):
        combine_scores([a, torch.rand(1, 19, 4, 6)], [0.5, 0.5], ["a", "b"])
    with pytest.raises(ValueError, match="b gives \\(1, 16, 4, 5\\)"):
        combine_scores([a, torch.rand(1, 16, 4, 5)], [0.5, 0.5], ["a", "b"])


def test_paper_rows():
    assert len(TABLE1) == 9 and all(len(r.iou) == 19 for r in TABLE1.values())
    for name, row in TABLE1.items():  # the stated mIoU is the per-class mean, but one
        if name != "CLAN + Norm":
            assert sum(row.iou) / 19 == pytest.approx(row.miou, abs=0.05), name
    assert paper_row("clan + norm*")[0] == "CLAN + Norm*"
    # the paper scored every row with AdaptSegNet's evaluation but MaxSquare's, as it reports it
    scored_as = {name: (r.protocol.label_size, r.protocol.flip) for name, r in TABLE1.items()}
    assert scored_as == {**{name: ("full", True) for name in TABLE1}, "MaxSquare": ("input", True)}
    assert "44.6" in TABLE1["MaxSquare"].protocol.evaluation
    assert "chosen on val" in TABLE1["Only Norm"].protocol.selection
    with pytest.raises(ValueError, match="no such row.*'Only Norm'"):
        paper_row("Norm only")


def reference_miou(model, synthetic, flip=False):
    cfg = load_config(None, [*TINY_EVAL, *synthetic])
    val = build_dataset(cfg.data.val, with_labels=True, evaluation=True)
    cm = evaluate(model, eval_loader(val), torch.device("cpu"), progress=False, flip=flip)
    return cm.iou(), cm.miou()


def reference_ensemble_miou(models, weights, synthetic, space):
    """The ensemble by hand: sum_i w_i * (flip-averaged scores of member i), argmax, one matrix."""
    cfg = load_config(None, [*TINY_EVAL, *synthetic])
    val = build_dataset(cfg.data.val, with_labels=True, evaluation=True)
    cm = ConfusionMatrix(19)
    for batch in eval_loader(val):
        size = tuple(batch.label.shape[-2:])
        total = sum(
            w * predict_scores(m.eval(), batch.image, size, flip=True, space=space)
            for w, m in zip(weights, models)
        )
        cm.update(total.argmax(1), batch.label)
    return cm.miou()


def last_line(capsys):
    return capsys.readouterr().out.rstrip().splitlines()[-1]


@pytest.mark.parametrize("layout", list(LAYOUT_FILES))
def test_evaluate_cityscapes_loads_every_layout(tmp_path, synthetic, capsys, layout):
    path, model, named = write_layout(tmp_path, layout, synthetic)
    args = ["--restore", str(path), *(["--preset", named] if named else []), *TINY_EVAL, *synthetic]
    assert evaluate_cityscapes.main(args) == 0
    _, miou = reference_miou(model, synthetic)
    assert last_line(capsys) == f"mIoU: {100 * miou:.2f}"
    saved = json.loads(path.with_name(path.name + ".results.json").read_text())
    assert saved["mIoU"] == miou and saved["flip"] is False


def test_evaluate_flip_preset_and_compare_with(tmp_path, synthetic, capsys):
    path, model, _ = write_layout(tmp_path, "maxsquare", synthetic)
    args = ["--restore", str(path), "--flip", "--compare-with", "maxsquare + norm*",
            "--results", str(tmp_path / "r.json"), *TINY_EVAL, *synthetic]  # fmt: skip
    assert evaluate_cityscapes.main(args) == 0
    out = capsys.readouterr().out
    _, miou = reference_miou(model, synthetic, flip=True)
    assert out.rstrip().splitlines()[-1] == f"mIoU: {100 * miou:.2f}"
    assert "maxsquare (maxsquare, flip on)" in out
    assert "paper: MaxSquare + Norm* (stated mIoU 46.81)" in out and "ours - paper" in out
    assert ("paper row 'MaxSquare + Norm*' was scored with full-resolution labels (AdaptSegNet's "
            "evaluation), 19 classes, flip on; this run: label_size=full, flip=on, snapshot: "
            "file given: maxsquare.pth\n") in out  # fmt: skip
    assert "protocol: labels at full resolution (eval.label_size=full), flip on" in out
    assert "compare like with like" not in out  # the same protocol: no warning
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["flip"] is True and saved["preset"] == "maxsquare"
    assert saved["layout"] == "maxsquare"
    with pytest.raises(ValueError, match="no such row"):
        evaluate_cityscapes.main([*args[:3], "--compare-with", "DeepLab"])
    # MaxSquare's own 46.4 was scored at the input size: said, and warned of
    maxsquare = ["--restore", str(path), "--compare-with", "MaxSquare", "--results",
                 str(tmp_path / "m.json"), *TINY_EVAL, *synthetic]  # fmt: skip
    assert evaluate_cityscapes.main(maxsquare) == 0
    out = capsys.readouterr().out
    assert ("paper row 'MaxSquare' was scored with labels resized (nearest) with the image to the "
            "input size (MaxSquare's own evaluation") in out  # fmt: skip
    assert "this run: label_size=full, flip=off" in out
    assert "use --label-size input and --flip to compare like with like" in out
    # (m.json holds the first evaluation's record: replacing it needs --overwrite)
    assert evaluate_cityscapes.main([*maxsquare, "--label-size", "input", "--flip",
                                     "--overwrite"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "this run: label_size=input, flip=on" in out and "like with like" not in out
    assert json.loads((tmp_path / "m.json").read_text())["protocol"]["label_size"] == "input"
    with pytest.raises(SystemExit):
        evaluate_cityscapes.main(["--pred-dir", str(tmp_path), "--flip"])


def test_self_ensemble_equals_the_model(tmp_path, synthetic, capsys):
    path, model, _ = write_layout(tmp_path, "checkpoint", synthetic)
    solo = tmp_path / "solo"
    assert evaluate_cityscapes.main(["--restore", str(path), "--save-dir", str(solo)]) == 0
    duo = tmp_path / "duo"
    capsys.readouterr()
    args = ["--restore", str(path), str(path), "--save-dir", str(duo), "--offload"]
    assert ensemble.main(args) == 0
    out = capsys.readouterr().out
    _, miou = reference_miou(model, synthetic)
    assert out.rstrip().splitlines()[-1] == f"mIoU: {100 * miou:.2f}"
    assert "1: checkpoint.pth (clan, w 0.50)" in out and "2: checkpoint.pth" in out
    saved = json.loads((duo / "results.json").read_text())
    assert saved["mIoU"] == miou and [m["mIoU"] for m in saved["members"]] == [miou, miou]
    for png in solo.rglob("*.png"):
        assert png.read_bytes() == (duo / png.relative_to(solo)).read_bytes()
    # existing files are kept unless --overwrite
    with pytest.raises(FileExistsError, match="already holds 7 of this run's files.*--overwrite"):
        ensemble.main(args)
    assert ensemble.main([*args, "--overwrite"]) == 0


def test_ensemble_members_keep_their_presets_and_weights(tmp_path, synthetic, capsys):
    clan, clan_model, _ = write_layout(tmp_path, "clan", synthetic)
    ms, ms_model, _ = write_layout(tmp_path, "maxsquare", synthetic)
    base = ["--restore", str(clan), str(ms), "--flip", "--", *TINY_EVAL, *synthetic]
    assert ensemble.main(["--weights", "1", "0", "--results", str(tmp_path / "a.json"), *base]) == 0
    saved = json.loads((tmp_path / "a.json").read_text())
    clan_iou, clan_miou = reference_miou(clan_model, synthetic, flip=True)
    _, ms_miou = reference_miou(ms_model, synthetic, flip=True)
    assert [m["preset"] for m in saved["members"]] == ["clan", "maxsquare"]
    assert [m["mIoU"] for m in saved["members"]] == [clan_miou, ms_miou]
    assert saved["mIoU"] == clan_miou and list(saved["iou"].values()) == pytest.approx(
        clan_iou, nan_ok=True
    )
    assert saved["flip"] is True and saved["combine"] == "prob"
    assert saved["protocol"] == {"label_size": "full", "input_size": [128, 64], "flip": True,
                                 "selection": "files given: 2 members"}  # fmt: skip
    args = ["--weights", "0.7", "0.3", "--combine", "logit", "--presets", "clan", "maxsquare"]
    assert ensemble.main([*args, "--results", str(tmp_path / "b.json"), *base]) == 0
    out = capsys.readouterr().out
    assert "ensemble (logit, flip on)" in out and "(best member)" in out
    weighted = json.loads((tmp_path / "b.json").read_text())
    assert weighted["members"][0]["weight"] == 0.7
    expected = reference_ensemble_miou([clan_model, ms_model], [0.7, 0.3], synthetic, "logit")
    assert weighted["mIoU"] == pytest.approx(expected, abs=1e-12)
    swapped = reference_ensemble_miou([clan_model, ms_model], [0.3, 0.7], synthetic, "logit")
    assert swapped != pytest.approx(expected, abs=1e-6)  # the weighting decides the result
    # --label-size input: the first member alone scores as evaluate_cityscapes.py scores it
    at_input = ["--label-size", "input", "--results", str(tmp_path / "c.json")]
    assert ensemble.main(["--weights", "1", "0", *at_input, *base]) == 0
    alone = ["--restore", str(clan), "--flip", *at_input[:3], str(tmp_path / "d.json"),
             *TINY_EVAL, *synthetic]  # fmt: skip
    assert evaluate_cityscapes.main(alone) == 0
    ens, solo = (json.loads((tmp_path / f).read_text()) for f in ("c.json", "d.json"))
    assert ens["protocol"]["label_size"] == solo["protocol"]["label_size"] == "input"
    assert ens["mIoU"] == solo["mIoU"] and ens["mIoU"] != clan_miou


def test_ensemble_bad_input(tmp_path, synthetic):
    path, _, _ = write_layout(tmp_path, "clan", synthetic)
    common = [*TINY_EVAL, *synthetic]
    with pytest.raises(SystemExit):
        ensemble.main(["--restore", str(path), "--", *common])  # one member
    with pytest.raises(SystemExit):
        ensemble.main(["--restore", str(path), str(path), "--presets", "clan", "--", *common])
    with pytest.raises(SystemExit):
        ensemble.main(["--restore", str(path), "model.base_width=8"])  # override swallowed
    with pytest.raises(ValueError, match="3 weights for 2 checkpoints"):
        ensemble.main(["--restore", str(path), str(path), "--weights", "1", "1", "1"])
    with pytest.raises(ValueError, match="sum to a positive number"):
        ensemble.main(["--restore", str(path), str(path), "--weights", "0", "0"])
    small = tmp_path / "small.pth"
    torch.save(checkpoint_dict(producer(num_classes=5), [*common, "model.num_classes=5"]), small)
    big = tmp_path / "big.pth"
    torch.save(checkpoint_dict(producer(), common), big)
    with pytest.raises(ValueError, match="different numbers of classes.*small.pth: 5.*big.pth: 19"):
        ensemble.main(["--restore", str(small), str(big)])
    evil = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, evil)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:300])
    save_dir = tmp_path / "never"
    for bad, message in ((evil, "refused by the safe loader"), (truncated, "cannot be read")):
        args = ["--restore", str(path), str(bad), "--save-dir", str(save_dir), "--", *common]
        with pytest.raises(CheckpointError, match=message):
            ensemble.main(args)
    assert not save_dir.exists()  # nothing written before the first prediction


def reference_subset_cm(model, synthetic, view=None):
    """The confusion matrix by hand: output k of a K-class model is trainId CLASS_SUBSETS[K][k];
    ``view``: the argmax over the outputs whose trainId it holds."""
    cfg = load_config(None, [*TINY_EVAL, *synthetic])
    val = build_dataset(cfg.data.val, with_labels=True, evaluation=True)
    cm = ConfusionMatrix(19)
    for batch in eval_loader(val):
        logits = predict_logits(model.eval(), batch.image, tuple(batch.label.shape[-2:]))
        train_ids = torch.tensor(CLASS_SUBSETS[logits.shape[1]])
        if view is not None:
            outside = [k for k, c in enumerate(train_ids.tolist()) if c not in view]
            logits[:, outside] = -torch.inf
        cm.update(train_ids[logits.argmax(1)], batch.label)
    return cm


def test_evaluate_reports_16_and_13_classes(tmp_path, synthetic, capsys):
    model = producer("maxsquare", num_classes=16, seed=3)
    path = tmp_path / "ms16.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    args = ["--restore", str(path), "--classes", "16", "13", "--results", str(tmp_path / "r.json"),
            *TINY_EVAL, *synthetic]  # fmt: skip
    assert evaluate_cityscapes.main(args) == 0
    out = capsys.readouterr().out
    cm = reference_subset_cm(model, synthetic)
    lines = out.rstrip().splitlines()
    assert lines[-2:] == [f"mIoU16: {100 * cm.miou(SYNTHIA_16):.2f}",
                          f"mIoU13: {100 * cm.miou(SYNTHIA_13):.2f}"]  # fmt: skip
    assert "16 classes (without terrain, truck, train); a prediction of an absent class" in out
    assert "13 classes (without wall, fence, pole, terrain, truck, train)" in out
    assert "| mIoU16 |" in out and "| mIoU13 |" in out and "|   mIoU |" not in out
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["mIoU16"] == cm.miou(SYNTHIA_16) and saved["mIoU13"] == cm.miou(SYNTHIA_13)
    assert list(saved["iou16"]) == [CLASS_NAMES[c] for c in SYNTHIA_16]
    assert list(saved["iou13"].values()) == pytest.approx(cm.iou(SYNTHIA_13), nan_ok=True)
    assert saved["mIoU"] == cm.miou() and saved["mask_absent"] is False  # keys kept
    with pytest.raises(ValueError, match="--compare-with: the paper's rows are 19-class"):
        evaluate_cityscapes.main([*args, "--compare-with", "CLAN"])


def test_mask_absent_restricts_the_argmax_and_says_so(tmp_path, synthetic, capsys):
    path, model, _ = write_layout(tmp_path, "clan", synthetic)
    common = ["--restore", str(path), "--classes", "19", "16", "13", *TINY_EVAL, *synthetic]
    assert evaluate_cityscapes.main([*common, "--results", str(tmp_path / "plain.json")]) == 0
    assert evaluate_cityscapes.main([*common, "--mask-absent", "--results",
                                     str(tmp_path / "masked.json")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    plain = json.loads((tmp_path / "plain.json").read_text())
    masked = json.loads((tmp_path / "masked.json").read_text())
    full = reference_subset_cm(model, synthetic)
    # The random model predicts absent classes (terrain 0.5%, train 7%, fence 82% of pixels):
    assert full.iou(SYNTHIA_16) != pytest.approx([full.iou()[c] for c in SYNTHIA_16], nan_ok=True)
    assert plain["mIoU"] == masked["mIoU"] == full.miou()  # the 19 classes: never masked
    assert plain["mIoU16"] == full.miou(SYNTHIA_16)
    for k, subset in ((16, SYNTHIA_16), (13, SYNTHIA_13)):
        assert masked[f"mIoU{k}"] == reference_subset_cm(model, synthetic, subset).miou(subset)
    assert masked["mIoU13"] != plain["mIoU13"] and masked["mask_absent"] is True
    assert "--mask-absent: the argmax is taken over these classes only" in out
    assert "(clan, flip off, absent classes masked)" in out
    with pytest.raises(SystemExit):
        evaluate_cityscapes.main(["--pred-dir", str(tmp_path), "--mask-absent"])


def test_sweep_and_ensemble_report_the_class_sets(tmp_path, synthetic, capsys):
    a, model_a, _ = write_layout(tmp_path, "checkpoint", synthetic)
    b = tmp_path / "step_000002.pth"
    torch.save(checkpoint_dict(producer(seed=1), [*TINY_EVAL, *synthetic]), b)
    step1 = tmp_path / "step_000001.pth"
    step1.write_bytes(a.read_bytes())
    sets = ["--classes", "16", "13", "--mask-absent"]
    assert evaluate_cityscapes.main(["--restore", str(step1), str(b), *sets]) == 0
    out = capsys.readouterr().out
    sweep = json.loads((tmp_path / "sweep.results.json").read_text())
    masked = reference_subset_cm(model_a, synthetic, SYNTHIA_16).miou(SYNTHIA_16)
    assert sweep["snapshots"][0]["mIoU16"] == masked
    assert "selected on val, absent classes masked)" in out and "(mIoU16)" in out
    assert out.rstrip().splitlines()[-1].startswith("mIoU13: ")
    args = ["--restore", str(a), str(a), "--results", str(tmp_path / "e.json"), *sets]
    assert ensemble.main(args) == 0
    saved = json.loads((tmp_path / "e.json").read_text())
    assert saved["mIoU16"] == masked and saved["members"][0]["mIoU16"] == masked
    assert "ensemble (prob, flip off, absent classes masked)" in capsys.readouterr().out
    ms16 = tmp_path / "ms16.pth"
    torch.save({"state_dict": producer("maxsquare", num_classes=16).state_dict()}, ms16)
    with pytest.raises(ValueError, match=r"different numbers of classes.*pth: 19.*ms16.pth: 16"):
        ensemble.main(["--restore", str(a), str(ms16), "--", *TINY_EVAL, *synthetic])


def refused(capsys, module, argv, results, *named):
    """``module`` run as a script refuses ``argv`` with one error line naming ``results`` (left
    as it was), the ways out and ``named``."""
    before = results.read_bytes()
    capsys.readouterr()
    assert run(module.main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: results file {results} ")
    for words in ("--overwrite", "--results FILE", *named):
        assert words in err, (words, err)
    assert results.read_bytes() == before


def test_a_results_file_of_other_settings_is_kept(tmp_path, synthetic, capsys):
    path, _, _ = write_layout(tmp_path, "checkpoint", synthetic)
    common = ["--restore", str(path), *TINY_EVAL, *synthetic]
    results = path.with_name(path.name + ".results.json")
    assert evaluate_cityscapes.main([*common, "--flip"]) == 0
    assert evaluate_cityscapes.main([*common, "--flip"]) == 0  # the same settings: refreshed
    refused(capsys, evaluate_cityscapes, common, results, "eval.flip: true there, false now")
    assert evaluate_cityscapes.main([*common, "--results", str(tmp_path / "other.json")]) == 0
    assert evaluate_cityscapes.main([*common, "--overwrite"]) == 0
    assert json.loads(results.read_text())["flip"] is False
    refused(capsys, evaluate_cityscapes, [*common, "--label-size", "input"], results,
            "eval.label_size: full there, input now")  # fmt: skip
    # a --pred-dir score never replaces the model's results that --save-dir wrote there
    preds = tmp_path / "preds"
    assert evaluate_cityscapes.main([*common, "--flip", "--save-dir", str(preds)]) == 0
    scored = ["--pred-dir", str(preds), *synthetic]
    refused(capsys, evaluate_cityscapes, [*scored, "--results", str(preds / "results.json")],
            preds / "results.json",
            f"checkpoint: {path} there, none now; pred_dir: none there, {preds} now")  # fmt: skip
    assert json.loads((preds / "results.json").read_text())["flip"] is True
    assert evaluate_cityscapes.main(scored) == 0  # its own record: pred_dir.results.json
    # a file that is not one of ours
    for text, words in (("not json\n", "is not JSON"), ('{"a": 1}\n', "not a results file")):
        (tmp_path / "theirs.json").write_text(text)
        refused(capsys, evaluate_cityscapes, [*common, "--results", str(tmp_path / "theirs.json")],
                tmp_path / "theirs.json", words)  # fmt: skip


def test_ensembles_and_sweeps_keep_the_results_of_others(tmp_path, synthetic, capsys):
    a, _, _ = write_layout(tmp_path, "checkpoint", synthetic)
    b = tmp_path / "b.pth"
    torch.save(checkpoint_dict(producer(seed=1), [*TINY_EVAL, *synthetic]), b)
    common = [*TINY_EVAL, *synthetic]
    results = a.with_name(a.name + ".ensemble.json")
    pair = ["--restore", str(a), str(b)]
    assert ensemble.main([*pair, "--weights", "0.7", "0.3", "--", *common]) == 0
    refused(capsys, ensemble, [*pair, "--weights", "0.3", "0.7", "--", *common], results,
            "weights: [0.7, 0.3] there, [0.3, 0.7] now")  # fmt: skip
    refused(capsys, ensemble, ["--restore", str(a), str(a), "--", *common], results,
            f"members: [{a}, {b}] there, [{a}, {a}] now")  # fmt: skip
    assert ensemble.main([*pair, "--weights", "7", "3", "--", *common]) == 0  # the same weights
    steps = [tmp_path / "step_000001.pth", tmp_path / "step_000002.pth"]
    for step, source in zip(steps, (a, b)):
        step.write_bytes(source.read_bytes())
    sweep = ["--restore", *map(str, steps), *common]
    assert evaluate_cityscapes.main(sweep) == 0
    refused(capsys, evaluate_cityscapes, [*sweep, "--flip"], tmp_path / "sweep.results.json",
            "eval.flip: false there, true now")  # fmt: skip
    refused(capsys, evaluate_cityscapes, ["--restore", str(steps[0]), str(a), *common],
            tmp_path / "sweep.results.json", "snapshots: [")  # fmt: skip


def test_the_val_set_a_result_was_scored_on_beside_the_papers():
    from utils.evaluation.paper_results import other_val_set, val_set_note

    def data(dataset="cityscapes", split="val", root="data/Cityscapes", synthetic=""):
        return {"val": {"dataset": dataset, "split": split, "root": root},
                "synthetic": {"root": synthetic}}  # fmt: skip

    assert other_val_set(data()) is None  # Cityscapes val: what every row was scored on
    assert other_val_set(data(synthetic="data/synthetic")) is None  # generated elsewhere
    synthetic = data(root="data/synthetic/Cityscapes", synthetic="data/synthetic")
    words = "the synthetic benchmark's val split (data/synthetic/Cityscapes)"
    assert other_val_set(synthetic) == words
    assert other_val_set(data(split="train")) == "cityscapes train (data/Cityscapes)"
    assert other_val_set(data("acdc", root="data/ACDC")) == "acdc val (data/ACDC)"
    assert other_val_set(data("folder", root="night/val")) == "the labelled folder night/val"
    assert val_set_note("CLAN", data()) is None
    assert val_set_note("CLAN", synthetic) == (
        "not like for like: ours is scored on the synthetic benchmark's val split "
        "(data/synthetic/Cityscapes), while the paper's row 'CLAN' is GTA5 -> Cityscapes, scored "
        "on Cityscapes val; the difference compares two different val sets"
    )


def test_compare_with_says_when_ours_is_not_scored_on_cityscapes_val(tmp_path, synthetic, capsys):
    path, _, _ = write_layout(tmp_path, "checkpoint", synthetic)
    common = ["--compare-with", "CLAN", *TINY_EVAL, *synthetic]
    note = "not like for like: ours is scored on the synthetic benchmark's val split ("
    assert evaluate_cityscapes.main(["--restore", str(path), *common]) == 0
    lines = capsys.readouterr().out.splitlines()
    (line,) = (i for i, text in enumerate(lines) if text.startswith(note))
    assert lines[line - 1].startswith("paper row 'CLAN' was scored with")  # above the table
    assert lines[line + 1].startswith("protocol: ") and lines[line + 2].startswith("| method")
    rest = "while the paper's row 'CLAN' is GTA5 -> Cityscapes, scored on Cityscapes val"
    assert rest in lines[line] and lines[line].endswith("compares two different val sets")
    steps = [tmp_path / "step_000001.pth", tmp_path / "step_000002.pth"]
    for step in steps:
        step.write_bytes(path.read_bytes())
    assert evaluate_cityscapes.main(["--restore", *map(str, steps), *common]) == 0
    assert note in capsys.readouterr().out  # a sweep's comparison too
    # the same images as a Cityscapes val set (not generated as the synthetic benchmark): no line
    elsewhere = ["--restore", str(path), "--results", str(tmp_path / "cs.json")]
    assert evaluate_cityscapes.main([*elsewhere, *common, "data.synthetic.root="]) == 0
    out = capsys.readouterr().out
    assert "paper row 'CLAN' was scored with" in out and "not like for like" not in out
