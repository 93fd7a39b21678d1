"""Feature-space analysis (analyze_features.py, utils/analysis/features.py) and the per-class IoU
comparison (utils/analysis/compare_iou.py): label majority vote, the seeded sample shared by every
checkpoint, PAD and MMD against hand-made cases, the figures end to end, bad input."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_MODEL
from tqdm import tqdm

import analyze_features
from dataset.build import ensure_data
from model.deeplabv2 import DeepLabV2
from utils.analysis import compare_iou
from utils.analysis.features import (
    choose_images,
    class_mmd2,
    extract_domain,
    grid_labels,
    median_bandwidth,
    mmd2,
    proxy_a_distance,
    sample_positions,
    split_evenly,
)
from utils.checkpoint import CheckpointError
from utils.config import load_config, to_dict
from utils.errors import OutputExistsError, UsageError, run
from utils.losses import feature_norm

TINY = [*TINY_MODEL, "train.device=cpu", "data.source.resize=[128,70]",
        "data.val.resize=[128,64]"]  # fmt: skip
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def setup(synthetic, tmp_path_factory):
    """The tiny synthetic benchmark's config and two checkpoints of differently seeded tiny
    G's (BN statistics moved off their defaults, so the features are not trivial)."""
    cfg = load_config(None, [*synthetic, *TINY])
    ensure_data(cfg.data)
    folder = tmp_path_factory.mktemp("ckpts")
    paths, models = [], []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = DeepLabV2(layers=(1, 1, 1, 1), base_width=8).eval()
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.normal_(0, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
        path = folder / f"seed{seed}" / "last.pth"
        path.parent.mkdir()
        torch.save(
            {
                "setup": "norm_only",
                "step": 1,
                "models": {"G": model.state_dict()},
                "optimizers": {},
                "config": to_dict(cfg),
                "metric": None,
            },
            path,
        )
        paths.append(str(path))
        models.append(model)
    return cfg, paths, models


def test_labels_reach_the_feature_grid_by_majority_vote():
    label = torch.tensor(
        [
            [0, 0, 1, 1, 255, 255],
            [0, 2, 1, 1, 255, 3],
            [5, 5, 7, 7, 4, 4],
            [5, 255, 255, 255, 4, 6],
        ]
    )
    # cells (2x2 blocks): {0,0,0,2} -> 0; {1,1,1,1} -> 1; {255,255,255,3} -> ignored;
    # {5,5,5,255} -> 5; {7,7,255,255}: a tie, the class wins; {4,4,4,6} -> 4
    assert grid_labels(label, (2, 3)).tolist() == [[0, 1, 255], [5, 7, 4]]
    # 3 rows on 2 cells: rows 0 and 1 -> cell 0 (floor(y * 2 / 3)), row 2 -> cell 1;
    # {3, 3, 2, 2}: a tie between classes goes to the lower trainId
    assert grid_labels(torch.tensor([[3, 2], [3, 2], [9, 9]]), (2, 1)).tolist() == [[2], [9]]
    assert grid_labels(torch.full((4, 4), 255), (1, 1)).tolist() == [[255]]


def test_seeded_draws():
    labels = torch.tensor([[0, 255, 1], [2, 3, 255]])
    pos = sample_positions(labels, 3, seed=0, stream=0, index=5)
    assert pos.tolist() == sorted(pos.tolist()) and set(pos.tolist()) <= {0, 2, 3, 4}
    assert np.array_equal(pos, sample_positions(labels, 3, seed=0, stream=0, index=5))
    draws = {tuple(sample_positions(labels, 2, seed=s, stream=0, index=5)) for s in range(20)}
    assert len(draws) > 1  # the seed matters
    assert sample_positions(labels, 10, seed=0, stream=0, index=5).tolist() == [0, 2, 3, 4]
    assert split_evenly(10, 4) == [3, 3, 2, 2]
    assert choose_images(6, 3, seed=0, stream=1) == choose_images(6, 3, seed=0, stream=1)
    assert len(set(choose_images(6, 3, seed=0, stream=1))) == 3


def test_features_shapes_and_the_same_pixels_for_every_checkpoint(setup):
    cfg, _, models = setup
    dataset = analyze_features.analysis_dataset(cfg.data.val)
    indices = [0, 2]
    a, b = (
        extract_domain(
            m, dataset, indices, 30, torch.device("cpu"), seed=3, stream=1, progress=False
        )
        for m in models
    )
    # the same image/pixel positions, labels and per-pixel labels; other features
    for field in ("image", "position", "label"):
        assert np.array_equal(getattr(a.sample, field), getattr(b.sample, field))
    assert np.array_equal(a.labels, b.labels) and not np.allclose(a.features, b.features)

    # shapes: a 128x64 input gives a 17x9 grid of 256-d features (width 8 x 32)
    h, w = 9, 17
    assert a.features.shape == (30, 256) and a.norms.shape == a.labels.shape == (2 * h * w,)
    assert np.bincount(a.sample.image).tolist() == [15, 0, 15]  # split evenly
    # each sampled pixel is its image's feature, at its position, with its grid label
    for i, index in enumerate(indices):
        sample = dataset[index]
        with torch.no_grad():
            feats = models[0](sample.image[None], heads=False).features  # 1 x C x h x w
        assert feats.shape[-2:] == (h, w)
        grid = grid_labels(sample.label, (h, w)).reshape(-1).numpy()
        assert np.array_equal(a.labels[i * h * w : (i + 1) * h * w], grid)
        norms = feature_norm(feats).reshape(-1).numpy()
        assert np.allclose(a.norms[i * h * w : (i + 1) * h * w], norms)
        own = a.sample.image == index
        expected = feats[0].reshape(256, -1)[:, a.sample.position[own]].T.numpy()
        assert np.allclose(a.features[own], expected)
        assert np.array_equal(a.sample.label[own], grid[a.sample.position[own]])
        assert (grid[a.sample.position[own]] != 255).all()


def test_proxy_a_distance_separable_and_inseparable():
    rng = np.random.default_rng(0)
    images = np.repeat(np.arange(10), 30)  # 300 pixels from 10 images per domain
    source = rng.normal(size=(300, 8))
    shifted = rng.normal(size=(300, 8)) + np.array([6.0] + [0.0] * 7)
    alike = rng.normal(size=(300, 8))
    pad, err = proxy_a_distance(source, shifted, images, images, seed=0)
    assert err == 0.0 and pad == 2.0
    pad, err = proxy_a_distance(source, alike, images, images, seed=0)
    assert abs(pad) < 0.3 and 0.4 < err < 0.6
    with pytest.raises(ValueError, match="2 images"):
        proxy_a_distance(source, alike, np.zeros(300), images, seed=0)


def test_mmd_by_hand():
    x, y = np.array([[0.0], [1.0]]), np.array([[2.0], [4.0]])
    # squared distances in x U y: 1, 4, 16, 1, 9, 4 -> median s^2 = 4
    assert median_bandwidth(np.concatenate([x, y])) == 4.0
    # k = exp(-d^2 / 8): k(0,1) = e^-1/8; k(2,4) = e^-1/2; x-y pairs d^2 = 4, 16, 1, 9
    by_hand = (
        math.exp(-1 / 8)
        + math.exp(-1 / 2)
        - 2 * (math.exp(-4 / 8) + math.exp(-16 / 8) + math.exp(-1 / 8) + math.exp(-9 / 8)) / 4
    )
    assert by_hand == pytest.approx(0.514520, abs=1e-6)
    assert mmd2(x, y) == pytest.approx(by_hand, rel=1e-12)
    # s^2 = 1: k = exp(-d^2 / 2)
    assert mmd2(x, y, bandwidth=1.0) == pytest.approx(0.365211, abs=1e-6)
    # per class: class 1 has too few pixels in the target; classes absent give None
    labels_x, labels_y = np.array([0, 0, 1, 1]), np.array([0, 0, 1])
    xs, ys = np.concatenate([x, x + 10]), np.concatenate([y, [[11.0]]])
    overall, per_class = class_mmd2(xs, ys, labels_x, labels_y, num_classes=3, min_pixels=2)
    assert per_class[0] == pytest.approx(by_hand, rel=1e-12)
    assert per_class[1:] == [None, None] and overall == pytest.approx(mmd2(xs, ys))


def test_analyze_features_end_to_end(setup, synthetic, tmp_path, capsys, monkeypatch):
    cfg, paths, _ = setup
    bars = []  # (description, steps done, total) of each bar of the script's own, once closed

    class RecordedBar(tqdm):
        def close(self):
            if not self.disable:  # a bar shown, closed for the first time
                bars.append((self.desc, self.n, self.total))
            super().close()

    monkeypatch.setattr(analyze_features, "tqdm", RecordedBar)
    out = tmp_path / "analysis"
    args = [
        "--restore",
        *paths,
        "--out",
        str(out),
        "--images",
        "2",
        "--pixels-per-domain",
        "40",
        "--seed",
        "1",
        *synthetic,
        *TINY,
    ]
    assert analyze_features.main(args) == 0
    for name in analyze_features.FIGURES:
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
    result = json.loads((out / "analysis.json").read_text())
    assert [c["name"] for c in result["checkpoints"]] == ["seed0/last.pth", "seed1/last.pth"]
    assert result["sampled_pixels"]["source"]["total"] == 40
    assert result["sampled_pixels"]["target"]["total"] == 40
    source = analyze_features.analysis_dataset(cfg.data.source)
    chosen = choose_images(len(source), 2, seed=1, stream=0)
    assert result["images"]["source"] == [source.items[i][2] for i in chosen]
    first, second = result["checkpoints"]
    assert first["mean_norm"]["source"] > 0 and first["mean_norm"] != second["mean_norm"]
    assert -2 <= first["pad"] <= 2 and first["pad"] == 2 * (
        1 - 2 * first["domain_classifier_error"]
    )
    assert set(first["mmd2_per_class"]) == set(first["mean_norm_per_class"])
    printed = capsys.readouterr().out
    assert "| checkpoint" in printed and "seed1/last.pth" in printed and "MMD^2" in printed
    # the long silent phases have a bar: PCA and t-SNE per checkpoint, then the four figures
    assert bars == [("seed0/last.pth: projections", 2, 2), ("seed1/last.pth: projections", 2, 2),
                    ("figures", 4, 4)]  # fmt: skip

    # the same command again is refused: it would overwrite the files
    with pytest.raises(
        OutputExistsError, match="already holds 5 of this run's files .*norm_hist.png.*--overwrite"
    ):
        analyze_features.main(args)


def test_analyze_features_bad_input(setup, synthetic, tmp_path, capsys):
    _, paths, _ = setup
    base = ["--out", str(tmp_path / "o"), *synthetic, *TINY]
    with pytest.raises(CheckpointError, match="absent.pth: not a file"):
        analyze_features.main(["--restore", paths[0], str(tmp_path / "absent.pth"), *base])
    with pytest.raises(UsageError, match="--images 5: the target set has only 3 images"):
        analyze_features.main(["--restore", paths[0], "--images", "5", *base])
    with pytest.raises(SystemExit) as exit_info:
        analyze_features.main(["--restore", paths[0], "--images", "1", *base])
    assert exit_info.value.code == 2 and "--images 1: at least 2" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written


def _results_files(tmp_path):
    run_dir = tmp_path / "run_a"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(
        json.dumps({"step": 4, "mIoU": 0.3, "iou": [0.5] * 18 + [float("nan")]})
    )
    evaluated = tmp_path / "b.pth.results.json"
    evaluated.write_text(
        json.dumps(
            {"restore": "b.pth", "mIoU": 0.4, "iou": {n: 0.25 for n in compare_iou.CLASS_NAMES}}
        )
    )
    return [str(run_dir / "results.json"), str(evaluated)]


def test_compare_iou_table_and_plot(tmp_path, capsys):
    files = _results_files(tmp_path)
    out = tmp_path / "plot.png"
    assert (
        compare_iou.main(["--results", *files, "--baseline", "paper:only norm", "--out", str(out)])
        == 0
    )
    assert out.read_bytes().startswith(PNG) and out.stat().st_size > 5000
    table = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| ")
    }
    assert list(table) == [
        "method",
        "run_a",
        "b.pth.results",
        "paper: Only Norm",
        "run_a - paper: Only Norm",
        "b.pth.results - paper: Only Norm",
    ]
    assert table["run_a"][0] == "50.00" and table["run_a"][18] == "nan"
    assert table["run_a"][19] == "50.00"  # the mIoU leaves the absent class out
    assert table["b.pth.results - paper: Only Norm"][0] == "-61.59"  # 25 - 86.59 (road)
    assert table["run_a - paper: Only Norm"][16] == "48.15"  # 50 - 1.85 (train)

    # a sweep gives its final and selected rows; labels name the files; a row as baseline
    sweep = tmp_path / "sweep.results.json"
    snaps = [
        {
            "restore": f"s{i}.pth",
            "mIoU": 0.1 * i,
            "iou": {n: 0.1 * i for n in compare_iou.CLASS_NAMES},
        }
        for i in (1, 2, 3)
    ]
    sweep.write_text(
        json.dumps({"snapshots": snaps, "final": "s2.pth", "selected_on_val": "s3.pth"})
    )
    rows = compare_iou.collect_rows([files[0], str(sweep)], ["A", "S"])
    assert list(rows) == ["A", "S (final)", "S (selected on val)"]
    assert rows["S (final)"][0] == pytest.approx(0.2)
    assert compare_iou.add_baseline(rows, "S (final)") == "S (final)"
    assert "A - S (final)" in compare_iou.comparison_table(rows, "S (final)")


def test_compare_iou_says_which_files_are_not_scored_on_cityscapes_val(tmp_path, capsys):
    files = _results_files(tmp_path)  # neither records its config: nothing is said
    out = tmp_path / "plot.png"
    paper = ["--baseline", "paper:CLAN", "--out", str(out), "--overwrite"]
    assert compare_iou.main(["--results", *files, *paper]) == 0
    assert "not like for like" not in capsys.readouterr().out
    demo = to_dict(load_config("configs/demo/norm_only.yaml"))
    (tmp_path / "run_a" / "config.yaml").write_text(yaml.safe_dump(demo))  # a demo run's
    record = json.loads(Path(files[1]).read_text())
    cityscapes = to_dict(load_config(None))  # the defaults: Cityscapes val
    Path(files[1]).write_text(json.dumps({**record, "config": cityscapes}))
    assert compare_iou.main(["--results", *files, *paper]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        f"{files[0]}: not like for like: ours is scored on the synthetic benchmark's val split "
        "(data/synthetic/Cityscapes), while the paper's row 'CLAN' is GTA5 -> Cityscapes, "
        "scored on Cityscapes val; the difference compares two different val sets"
    )
    assert lines[1].startswith("| method")  # one line: the other file is on Cityscapes val
    assert compare_iou.main(["--results", *files, "--out", str(out), "--overwrite"]) == 0
    assert "not like for like" not in capsys.readouterr().out  # no paper row: nothing to say


def test_compare_iou_bad_input(tmp_path, capsys):
    files = _results_files(tmp_path)
    out = str(tmp_path / "plot.png")
    with pytest.raises(UsageError, match="--baseline 'nope': no such row.*'run_a'"):
        compare_iou.main(["--results", *files, "--baseline", "nope", "--out", out])
    with pytest.raises(UsageError, match="no such row in the paper's Table 1"):
        compare_iou.main(["--results", *files, "--baseline", "paper:nope", "--out", out])
    with pytest.raises(UsageError, match="--labels: 1 labels for 2 results files"):
        compare_iou.main(["--results", *files, "--labels", "x", "--out", out])
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"loss": 1.0}))
    with pytest.raises(compare_iou.ResultsFileError, match="odd.json: expected a results JSON"):
        compare_iou.main(["--results", str(odd), "--out", out])
    (tmp_path / "plot.png").write_bytes(b"")
    assert run(compare_iou.main, ["--results", *files, "--out", out]) == 2
    assert "plot.png exists: pass --overwrite" in capsys.readouterr().err
