"""End to end on a tiny synthetic benchmark: train, checkpoint, evaluate, score PNGs (the
shared loop's resume, evaluation during the run and checkpoints: test_loop.py)."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_NORM_ONLY, metrics_rows, norm_only_run
from PIL import Image

import evaluate_cityscapes
from dataset.labels import CLASS_NAMES
from utils.checkpoint import CheckpointError, load_checkpoint
from utils.errors import OutputExistsError, run


def test_norm_only_run_writes_everything(tmp_path, synthetic, capsys):
    run = norm_only_run(tmp_path, synthetic, "a", "train.max_steps=4", "train.save_every=2")
    out = capsys.readouterr().out
    assert "| method" in out and out.rstrip().splitlines()[-1].startswith("mIoU: ")
    assert (run / "config.yaml").is_file() and (run / "train.log").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "last.pth", "step_000002.pth", "step_000004.pth"
    ]  # fmt: skip
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"histograms": 0})
    events.Reload()
    tags = events.Tags()
    assert set(tags["images"]) == {"source/input_label_pred_entropy", "target/input_pred_entropy"}
    assert set(tags["histograms"]) >= {"source/feat_norm_per_pixel", "target/feat_norm_per_pixel"}
    norms = events.Histograms("target/feat_norm_per_pixel")
    assert [h.step for h in norms] == [1, 2, 4]  # step 1, then every image_every=2
    cells = 7 * 13  # G's stride-8 grid of a 96x48 crop (the stem's max-pool rounds up)
    assert all(h.histogram_value.min >= 0 and h.histogram_value.num == cells for h in norms)
    records = [r for r in metrics_rows(run) if "train/loss_seg" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for key in ("loss_norm_s", "loss_norm_t", "feat_norm_s", "feat_norm_t", "lr_G"):
        assert all(math.isfinite(r[f"train/{key}"]) for r in records)
    assert records[0]["train/loss_norm_s"] == pytest.approx(0.12**2, rel=1e-5)
    results = json.loads((run / "results.json").read_text())
    assert results["step"] == 4 and len(results["iou"]) == 19
    assert results["protocol"] == {"label_size": "full", "input_size": [128, 64], "flip": False,
                                   "selection": "last"}  # fmt: skip
    header = "protocol: labels at full resolution (eval.label_size=full), flip off, snapshot: last"
    assert f"{header}\n| method" in out  # the table's first line
    ckpt = load_checkpoint(run / "checkpoints" / "last.pth")
    assert ckpt["setup"] == "norm_only" and ckpt["step"] == 4
    assert set(ckpt["models"]) == {"G"} and "layer6.conv2d_list.0.weight" in ckpt["models"]["G"]

    # the run folder is never reused silently
    with pytest.raises(FileExistsError, match="--resume"):
        norm_only_run(tmp_path, synthetic, "a", "train.max_steps=4")


def test_source_only_has_no_target_pass(tmp_path, synthetic):
    run = norm_only_run(tmp_path, synthetic, "src", "train.max_steps=2",
                        config="configs/demo/source_only.yaml")  # fmt: skip
    records = [r for r in metrics_rows(run) if "train/loss_seg" in r]
    assert records and all("train/loss_norm_t" not in r for r in records)


def test_evaluate_restore_save_dir_and_pred_dir(tmp_path, synthetic, capsys):
    run = norm_only_run(tmp_path, synthetic, "ev", "train.max_steps=2")
    trained = json.loads((run / "results.json").read_text())["mIoU"]
    capsys.readouterr()
    preds = tmp_path / "preds"
    ckpt = run / "checkpoints" / "last.pth"
    assert evaluate_cityscapes.main(["--restore", str(ckpt), "--save-dir", str(preds)]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1] == f"mIoU: {100 * trained:.2f}"
    saved = json.loads((preds / "results.json").read_text())
    assert saved["mIoU"] == pytest.approx(trained) and saved["num_images"] == 3
    assert saved["protocol"]["selection"] == "last" and saved["protocol"]["label_size"] == "full"
    pngs = sorted(p for p in preds.rglob("*.png") if "color" not in p.parts)
    assert len(pngs) == 3 and len(list((preds / "color").rglob("*.png"))) == 3
    assert Image.open(pngs[0]).size == (192, 96)  # full label resolution

    # the same --save-dir again is refused before any work, and changes nothing; --overwrite
    stamp = pngs[0].stat().st_mtime_ns
    with pytest.raises(OutputExistsError, match="--save-dir .* already holds 7 of this run's"):
        evaluate_cityscapes.main(["--restore", str(ckpt), "--save-dir", str(preds)])
    assert pngs[0].stat().st_mtime_ns == stamp
    assert evaluate_cityscapes.main(["--restore", str(ckpt), "--save-dir", str(preds),
                                     "--overwrite"]) == 0  # fmt: skip
    assert pngs[0].stat().st_mtime_ns > stamp
    capsys.readouterr()

    # scoring the written PNGs gives the same number, without a model
    scored = tmp_path / "scored.json"
    args = ["--pred-dir", str(preds), "--results", str(scored), *synthetic, *TINY_NORM_ONLY]
    assert evaluate_cityscapes.main(args) == 0
    assert json.loads(scored.read_text())["mIoU"] == pytest.approx(trained)
    assert json.loads(scored.read_text())["protocol"] == {
        "label_size": "full", "input_size": [128, 64], "flip": None,
        "selection": "predictions on disk: preds",
    }  # fmt: skip

    # flat basenames, as other repositories write them, are found too
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in pngs:
        (flat / p.name).write_bytes(p.read_bytes())
    assert evaluate_cityscapes.main(["--pred-dir", str(flat), *synthetic]) == 0

    # a wrongly sized and a missing prediction are errors naming the file
    Image.open(pngs[0]).resize((96, 48)).save(flat / pngs[0].name)
    with pytest.raises(ValueError, match=f"{pngs[0].name}.*96x48"):
        evaluate_cityscapes.main(["--pred-dir", str(flat), *synthetic])
    (flat / pngs[0].name).unlink()
    with pytest.raises(FileNotFoundError, match=f"no prediction for .*{pngs[0].name}"):
        evaluate_cityscapes.main(["--pred-dir", str(flat), *synthetic])


def test_evaluate_rejects_mismatched_checkpoint(tmp_path, synthetic):
    run = norm_only_run(tmp_path, synthetic, "mm", "train.max_steps=1")
    ckpt = run / "checkpoints" / "last.pth"
    with pytest.raises(CheckpointError, match="shape mismatches"):
        evaluate_cityscapes.main(["--restore", str(ckpt), "model.base_width=16"])
    with pytest.raises(CheckpointError, match="not a file"):
        evaluate_cityscapes.main(["--restore", str(tmp_path / "absent.pth")])


def test_picture_shows_label_at_image_size_entropy_and_feature_norms():
    from dataset.datasets import Batch
    from model.deeplabv2 import DeepLabV2
    from utils.analysis.panels import entropy_map, heat_colours
    from utils.training.images import picture

    torch.manual_seed(0)
    model = DeepLabV2(layers=(1, 1, 1, 1), base_width=8)
    label = torch.zeros(1, 40, 64, dtype=torch.long)
    label[:, 20:] = 255  # bottom half ignored: black
    batch = Batch(torch.randn(1, 3, 32, 52), label, ["a"])  # an image rescaled by 0.8
    grid, norms = picture(model, batch, torch.device("cpu"))
    assert grid.shape == (3, 32 + 4, 4 * (52 + 2) + 2)  # four 32x52 tiles, padding 2
    label_tile = grid[:, 2:34, 56:108]
    assert label_tile[:, :16].float().mean() > 0 and label_tile[:, 16:].sum() == 0
    assert model.training  # back in train mode
    model.eval()
    with torch.no_grad():
        out = model(batch.image)
        probs = torch.nn.functional.interpolate(
            model.predict(out), size=(32, 52), mode="bilinear", align_corners=True
        ).softmax(1)[0]
    expected = heat_colours(entropy_map(probs).numpy())
    entropy_tile = grid[:, 2:34, 164:216].permute(1, 2, 0).numpy()
    assert (abs(entropy_tile.astype(int) - expected.astype(int)) <= 1).all()
    torch.testing.assert_close(norms, out.features[0].norm(dim=0))
    unlabelled, _ = picture(model.train(), Batch(batch.image, None, ["a"]), torch.device("cpu"))
    assert unlabelled.shape == (3, 36, 3 * 54 + 2)  # input | prediction | entropy


def test_a_sweep_scores_every_snapshot_and_reports_the_final_one(tmp_path, synthetic, capsys):
    run = norm_only_run(tmp_path, synthetic, "sw", "train.max_steps=3", "train.save_every=1")
    snaps = sorted(str(p) for p in (run / "checkpoints").glob("step_*.pth"))
    capsys.readouterr()
    out = tmp_path / "sweep.json"
    args = ["--restore", *reversed(snaps), "--results", str(out), "--compare-with", "Only Norm"]
    assert evaluate_cityscapes.main(args) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    rows = report["snapshots"]
    assert [r["step"] for r in rows] == [1, 2, 3]  # step order, whatever the order given
    assert report["final"] == snaps[-1] and report["selected_on_val"] in snaps
    best = max(rows, key=lambda r: r["mIoU"])
    assert report["selected_on_val"] == best["restore"]
    # the final snapshot is what the run itself reported for its last step
    assert rows[-1]["mIoU"] == pytest.approx(json.loads((run / "results.json").read_text())["mIoU"])
    lines = printed.splitlines()
    assert any("step_000003 (final" in line for line in lines)
    assert sum("selected on val" in line for line in lines if line.startswith("| step_")) == 1
    assert any(line.startswith("| paper: Only Norm") for line in lines)
    assert any(line.startswith("| selected - paper: Only Norm") for line in lines)
    assert lines[-1] == f"mIoU: {100 * rows[-1]['mIoU']:.2f}"
    selection = f"best of 3 on val: {Path(best['restore']).name} (final: step_000003.pth)"
    assert report["protocol"] == {"label_size": "full", "input_size": [128, 64], "flip": False,
                                  "selection": selection}  # fmt: skip
    header = "protocol: labels at full resolution (eval.label_size=full), flip off, snapshot: "
    assert header + selection in lines
    paper = (
        "paper row 'Only Norm' was scored with full-resolution labels (AdaptSegNet's "
        "evaluation), 19 classes, flip on, best of 36 snapshots (2k..72k) chosen on val; "
    )
    assert paper + f"this run: label_size=full, flip=off, snapshot: {selection}" in lines
    assert "use --flip to compare like with like" in printed  # the warning, logged to stdout
    assert sorted(rows[0]["iou"]) == sorted(CLASS_NAMES)


def test_a_sweep_refuses_save_dir(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_cityscapes.main(["--restore", "a.pth", "b.pth", "--save-dir", str(tmp_path)])
    assert exit_info.value.code == 2 and "give a single --restore" in capsys.readouterr().err


def test_overrides_after_several_restore_files_are_overrides(tmp_path):
    from utils.config import split_overrides

    (tmp_path / "x.y=1").touch()  # an existing file with such a name stays a file
    files = ["a.pth", "b.pth", "data.val.root=/data", str(tmp_path / "x.y=1"), "eval.flip=true"]
    assert split_overrides(files) == (
        ["a.pth", "b.pth", str(tmp_path / "x.y=1")],
        ["data.val.root=/data", "eval.flip=true"],
    )


def test_a_list_option_gives_back_the_overrides_it_swallowed(capsys):
    """``--seeds 0 1 key=value`` as the docs write it: argparse hands the overrides to the
    option, ``take_overrides`` moves them ahead of the later ones and converts the rest."""
    import argparse

    from utils.config import take_overrides

    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", nargs="+", default=[0, 1, 2])
    parser.add_argument("--setups", nargs="+")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(["--seeds", "3", "4", "model.init_from=a.pth", "--setups", "x",
                              "train.seed=1", "--", "optim.lr=1"])  # fmt: skip
    take_overrides(parser, args, "seeds", int, "integers")
    take_overrides(parser, args, "setups", choices=["x", "y"])
    assert args.seeds == [3, 4] and args.setups == ["x"]
    assert args.overrides == ["train.seed=1", "model.init_from=a.pth", "optim.lr=1"]
    default = parser.parse_args([])
    take_overrides(parser, default, "seeds", int, "integers")
    assert default.seeds == [0, 1, 2] and default.overrides == []
    for argv, dest, message in (
        (["--seeds", "0", "x", "a.b=1"], "seeds", "--seeds: expected integers, got 'x'"),
        (["--seeds", "a.b=1"], "seeds", "--seeds: no value given"),
        (["--setups", "z"], "setups", "--setups: expected one of 'x', 'y', got 'z'"),
    ):
        args = parser.parse_args(argv)
        with pytest.raises(SystemExit) as exit_info:
            take_overrides(parser, args, dest, int if dest == "seeds" else str,
                           "integers", ["x", "y"] if dest == "setups" else ())  # fmt: skip
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_synthia_source_run_reports_16_and_13_classes(tmp_path, capsys):
    root = tmp_path / "data"
    data = [f"data.synthetic.root={root}", "data.synthetic.num_synthia=4",
            "data.synthetic.num_train=4", "data.synthetic.num_val=2",
            "data.synthetic.synthia_size=[160,95]", "data.synthetic.target_size=[192,96]",
            f"data.source.root={root}/SYNTHIA", f"data.target.root={root}/Cityscapes",
            f"data.val.root={root}/Cityscapes", "data.source.resize=[160,95]"]  # fmt: skip
    run = norm_only_run(tmp_path, data, "syn", "train.max_steps=2",
                        config="configs/demo/synthia/norm_only.yaml")  # fmt: skip
    assert not (root / "GTA5").exists() and len(list((root / "SYNTHIA/RGB").iterdir())) == 4
    results = json.loads((run / "results.json").read_text())
    lines = capsys.readouterr().out.rstrip().splitlines()
    assert lines[-2:] == [f"mIoU16: {100 * results['mIoU16']:.2f}",
                          f"mIoU13: {100 * results['mIoU13']:.2f}"]  # fmt: skip
    assert len(results["iou16"]) == 16 and len(results["iou13"]) == 13 and len(results["iou"]) == 19
    assert results["mIoU16"] == pytest.approx(
        sum(v for v in results["iou16"] if not math.isnan(v))
        / sum(not math.isnan(v) for v in results["iou16"])
    )
    val = [r for r in metrics_rows(run) if "val/mIoU16" in r]
    assert val and val[-1]["val/mIoU13"] == pytest.approx(results["mIoU13"])
    # evaluate_cityscapes.py reports the run's class sets by default (its stored eval.classes)
    out = tmp_path / "e.json"
    ckpt = run / "checkpoints" / "last.pth"
    assert evaluate_cityscapes.main(["--restore", str(ckpt), "--results", str(out)]) == 0
    evaluated = json.loads(out.read_text())
    assert (evaluated["mIoU16"], evaluated["mIoU13"]) == (results["mIoU16"], results["mIoU13"])
    assert capsys.readouterr().out.rstrip().splitlines()[-2:] == lines[-2:]


def test_label_size_input_in_training_evaluate_and_pred_dir(tmp_path, synthetic, capsys):
    run = norm_only_run(tmp_path, synthetic, "in", "train.max_steps=2", "eval.label_size=input")
    trained = json.loads((run / "results.json").read_text())
    assert trained["protocol"] == {"label_size": "input", "input_size": [128, 64],
                                   "flip": False, "selection": "last"}  # fmt: skip
    header = "protocol: labels resized (nearest) with the image to 128x64 (eval.label_size=input)"
    assert header in capsys.readouterr().out
    # the checkpoint's config keeps the key: evaluating last.pth scores as the run did
    ckpt, preds = run / "checkpoints" / "last.pth", tmp_path / "preds"
    assert evaluate_cityscapes.main(["--restore", str(ckpt), "--save-dir", str(preds)]) == 0
    saved = json.loads((preds / "results.json").read_text())
    assert saved["mIoU"] == pytest.approx(trained["mIoU"])
    assert saved["protocol"] == trained["protocol"]
    pngs = sorted(p for p in preds.rglob("*.png") if "color" not in p.parts)
    assert len(pngs) == 3 and Image.open(pngs[0]).size == (128, 64)  # the input's size
    # --label-size full scores the same weights against the full-size labels
    full = tmp_path / "full.json"
    args = ["--restore", str(ckpt), "--label-size", "full", "--results", str(full)]
    assert evaluate_cityscapes.main(args) == 0
    assert json.loads(full.read_text())["protocol"]["label_size"] == "full"
    # predictions at the input size score with --label-size input, not against full labels
    # (without the flag, the label size of the evaluation that wrote them, recorded beside them)
    scored = tmp_path / "scored.json"
    args = ["--pred-dir", str(preds), "--results", str(scored), *synthetic, *TINY_NORM_ONLY]
    assert evaluate_cityscapes.main([*args, "--label-size", "input"]) == 0
    assert json.loads(scored.read_text())["mIoU"] == pytest.approx(trained["mIoU"])
    with pytest.raises(ValueError, match="prediction is 128x64 .*, the label is 192x96"):
        evaluate_cityscapes.main([*args, "--label-size", "full", "--overwrite"])
    assert evaluate_cityscapes.main(args) == 0  # the same settings: refreshed
    assert json.loads(scored.read_text())["protocol"]["label_size"] == "input"


def test_pred_dir_scores_with_the_config_recorded_beside_the_predictions(tmp_path, synthetic,
                                                                         capsys):  # fmt: skip
    run_dir = norm_only_run(tmp_path, synthetic, "pd", "train.max_steps=1")
    ckpt, preds = run_dir / "checkpoints" / "last.pth", tmp_path / "preds"
    saving = ["--restore", str(ckpt), "--save-dir", str(preds), "--mask-absent"]
    assert evaluate_cityscapes.main([*saving, "--classes", "19", "16", "13"]) == 0
    model = json.loads((preds / "results.json").read_text())
    # no --config, no overrides: the val set and class sets of the evaluation that wrote them
    scored = tmp_path / "scored.json"
    assert evaluate_cityscapes.main(["--pred-dir", str(preds), "--results", str(scored)]) == 0
    record = json.loads(scored.read_text())
    assert record["mIoU"] == pytest.approx(model["mIoU"]) and record["num_images"] == 3
    assert record["config"]["data"]["val"] == model["config"]["data"]["val"]
    assert record["config"]["eval"]["classes"] == [19, 16, 13] and record["mask_absent"] is False
    # without that record the labels come from the defaults' val set: the error says so
    bare = tmp_path / "bare"
    shutil.copytree(preds, bare)
    (bare / "results.json").unlink()
    capsys.readouterr()
    nowhere = f"data.val.root={tmp_path / 'Cityscapes'}"
    assert run(evaluate_cityscapes.main, ["--pred-dir", str(bare), nowhere]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: Cityscapes folder {tmp_path}")
    for words in ("against the labels of the config's val set (data.val, here from the defaults)",
                  "--config CONFIG (e.g. --config configs/demo/norm_only.yaml", "data.val.*",
                  "data.val.root=DIR"):  # fmt: skip
        assert words in err, words
    demo = ["--config", "configs/demo/norm_only.yaml", *synthetic, *TINY_NORM_ONLY]
    assert evaluate_cityscapes.main(["--pred-dir", str(bare), *demo]) == 0
    assert json.loads((bare / "pred_dir.results.json").read_text())["mIoU"] == pytest.approx(
        model["mIoU"]
    )
    # the default record of --pred-dir goes beside the model's, which it never replaces
    assert evaluate_cityscapes.main(["--pred-dir", str(preds)]) == 0
    assert json.loads((preds / "results.json").read_text()) == model
    assert json.loads((preds / "pred_dir.results.json").read_text())["pred_dir"] == str(preds)
