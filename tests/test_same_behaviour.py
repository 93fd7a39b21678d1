"""benchmarks.same_behaviour's comparison: what counts as the same behaviour, on hand-made
output trees (the runs themselves take minutes: the tool is run by hand on a refactor)."""

import json
from pathlib import Path

import torch

from benchmarks.same_behaviour import Comparison, plan, same
from utils.setups import SETUPS

ROOT = Path(__file__).resolve().parent.parent


def _tree(root, loss, weight, provenance, stdout="| table |"):
    (root / "runs" / "r" / "checkpoints").mkdir(parents=True)
    (root / "runs" / "r" / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "train/loss_seg": loss, "train/sec_per_step": provenance}) + "\n"
    )
    results = {"mIoU": 0.5, "iou": [float("nan"), 0.5], "restore": f"{root}/a.pth",
               "provenance": {"date": provenance}}  # fmt: skip
    (root / "results.json").write_text(json.dumps(results))
    torch.save({"models": {"G": {"w": torch.tensor([weight, float("nan")])}}},
               root / "runs" / "r" / "checkpoints" / "last.pth")  # fmt: skip
    (root / "x.stdout").write_text(
        f"12:00:0{provenance} INFO train: took {provenance} s\n{stdout}\n"
    )
    (root / "x.stderr").write_text(f"a progress bar {provenance}\n")


def test_times_provenance_paths_and_log_lines_do_not_count(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _tree(a, 1.25, 0.5, 1)
    _tree(b, 1.25, 0.5, 2)  # other times, dates, paths (its own root) and log lines
    assert Comparison(a, b).trees() == []


def test_a_logged_value_a_weight_or_a_printed_table_that_moves_is_named(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _tree(a, 1.25, 0.5, 1)
    _tree(b, 1.25 + 2**-20, 0.5 + 2**-24, 1, stdout="| other table |")
    assert Comparison(a, b).trees() == [
        "runs/r/checkpoints/last.pth.models.G.w: the tensors differ",
        "runs/r/metrics.jsonl[0].train/loss_seg: 1.25 against 1.2500009536743164",
        "x.stdout: the printed text differs",
    ]
    (b / "results.json").unlink()
    assert "only in the other commit: results.json" in Comparison(a, b).trees()


def test_values_compare_exactly_and_nan_equals_nan():
    nan = float("nan")
    assert same({"a": [1, nan], "t": torch.tensor([nan, 2.0])},
                {"a": [1, nan], "t": torch.tensor([nan, 2.0])}, "x") == []  # fmt: skip
    assert same(torch.zeros(2), torch.zeros(3), "t") == [
        "t: torch.float32[2] against torch.float32[3]"
    ]
    assert same({"a": 1}, {"b": 1}, "d") == ["d: keys ['a', 'b']"]
    assert same([1, 2], [1], "l") == ["l: 2 items against 1"]


def test_the_plan_covers_every_setup_and_script(tmp_path):
    names = [name for name, _ in plan(tmp_path)]
    commands = {command[0] for _, command in plan(tmp_path)}
    setups = [Path(v.demo).stem for s in SETUPS for v in s.variants if v.demo]
    assert len(setups) == 20  # Source only ... DAFormer w/o feature distance: every demo
    assert {f"train_{s}" for s in setups} | {"resume", "evaluate", "sweep", "ensemble",
                                              "predict", "analyze"} <= set(names)  # fmt: skip
    scripts = {p.name for p in ROOT.glob("train_*.py")}
    assert commands == {"-m", *scripts, "evaluate_cityscapes.py", "ensemble.py", "predict.py",
                        "analyze_features.py"}  # fmt: skip
    # a later stage starts from its first stage's run, which the plan trains before it
    stage = names.index("train_maxsquare_source")
    assert all(names.index(f"train_{s}") > stage for s in setups if s.startswith("maxsquare_i"))
