"""Provenance on result files, the multi-seed runner, and the README's generated result tables."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from benchmarks import seeds, synthetic_table
from utils import provenance as prov
from utils import readme
from utils.config import ConfigError, config_from_dict, read_yaml, to_dict
from utils.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
FIELDS = {"commit", "dirty", "torch", "torchvision", "cuda", "cudnn", "device", "command",
          "config_sha256", "date"}  # fmt: skip


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A git repository with one commit, standing in for the checkout."""
    root = tmp_path / "repo"
    (root / "utils").mkdir(parents=True)
    (root / "utils" / "a.py").write_text("a = 1\n")
    (root / "README.md").write_text("readme\n")
    _git(root, "init", "-q")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    monkeypatch.setattr(prov, "ROOT", root)
    return root


def _commit(root: Path, message: str) -> str:
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", message)
    return _git(root, "rev-parse", "--short", "HEAD")


def test_provenance_names_commit_dirt_versions_device_command_config_and_date(repo):
    config = {"train": {"seed": 1}}
    p = prov.provenance("python x.py --a 1", config, torch.device("cpu"))
    assert set(p) == FIELDS
    assert p["commit"] == _git(repo, "rev-parse", "HEAD") and p["dirty"] is False
    assert p["torch"] == torch.__version__ and p["device"].startswith("CPU (")
    assert p["config_sha256"] == prov.config_hash({"train": {"seed": 1}})
    assert p["config_sha256"] != prov.config_hash({"train": {"seed": 2}})
    assert p["date"].startswith("20") and p["date"].endswith("+00:00")
    (repo / "utils" / "a.py").write_text("a = 2\n")  # a tracked file changed: dirty
    (repo / "new.txt").write_text("untracked files do not count\n")
    assert prov.provenance("c")["dirty"] is True


def test_outside_a_checkout_the_commit_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(prov, "ROOT", tmp_path)
    assert prov.git_state() == (None, None)
    assert prov.stale({"commit": None}).startswith("no commit recorded")
    assert prov.stale({"commit": "f" * 40}) is None or "unknown here" in prov.stale(
        {"commit": "f" * 40}
    )


def test_footer_is_one_line_with_the_facts(repo):
    p = prov.provenance("python -m benchmarks.speed --steps 2")
    line = prov.footer(p)
    assert "\n" not in line
    assert f"commit {p['commit'][:10]};" in line and f"torch {torch.__version__}" in line
    assert "`python -m benchmarks.speed --steps 2`" in line
    assert "(uncommitted changes)" in prov.footer({**p, "dirty": True})


def test_a_result_is_stale_when_code_it_depends_on_changed_after_its_commit(repo):
    p = prov.provenance("c")
    assert prov.stale(p) is None
    (repo / "README.md").write_text("docs only\n")
    _commit(repo, "docs")
    assert prov.stale(p) is None  # README.md is not code a result depends on
    (repo / "utils" / "a.py").write_text("a = 3\n")
    later = _commit(repo, "code")
    assert prov.stale(p) == f"the code changed since in 1 commit(s): {later}"
    assert prov.stale({**p, "dirty": True}).startswith("made with uncommitted changes; ")


def test_command_line_quotes_as_a_shell_would():
    assert prov.command_line("train.py", ["--config", "a b.yaml", "x=[1,2]"]) == (
        "python train.py --config 'a b.yaml' 'x=[1,2]'"
    )
    assert prov.command_line(["-m", "benchmarks.seeds"], []) == "python -m benchmarks.seeds"


def test_readme_blocks_are_rewritten_between_their_markers_only(tmp_path):
    path = tmp_path / "README.md"
    old = readme.block("t", "cmd", "old table")
    path.write_text(f"intro\n{old}\noutro\n")
    assert readme.find_block(path.read_text(), "t") == old
    new = readme.block("t", "cmd", "new table")
    assert readme.update_block(path, "t", new)
    assert path.read_text() == f"intro\n{new}\noutro\n"
    assert not readme.update_block(path, "t", new)
    with pytest.raises(UsageError, match="no markers of block 'u'"):
        readme.update_block(path, "u", new)
    with pytest.raises(UsageError, match="other.md: not a file"):
        readme.update_block(tmp_path / "other.md", "t", new)


def _result(miou: float, commit: str = "a" * 40, dirty: bool = False) -> dict:
    iou = [miou] * 18 + [float("nan")]
    return {"step": 4, "mIoU": miou, "iou": iou, "provenance": {"commit": commit, "dirty": dirty}}


def test_seed_summary_is_mean_and_sample_std_per_class():
    results = [_result(0.2), _result(0.3), _result(0.4)]
    s = seeds.summary(results)
    assert s["mIoU"]["mean"] == pytest.approx(0.3) and s["mIoU"]["std"] == pytest.approx(0.1)
    assert s["iou"]["mean"][0] == pytest.approx(0.3)
    assert all(x != x for x in (s["iou"]["mean"][18], s["iou"]["std"][18]))  # NaN: absent
    table = seeds.markdown_table({"row": results})
    assert "| row | 30.0 ± 10.0 |" in table and table.endswith("| nan | **30.0 ± 10.0** |")
    assert "| one | 20.0 |" in seeds.markdown_table({"one": results[:1]})


def test_synthetic_table_footer_names_the_runs_commits_and_flags_stale_runs(repo):
    head = _git(repo, "rev-parse", "HEAD")
    data = {"seeds": [0, 1], "provenance": prov.provenance("python -m benchmarks.synthetic_table"),
            "rows": {"A": [_result(0.2, head), _result(0.3, head)],
                     "B": [_result(0.25, head, dirty=True)]}}  # fmt: skip
    table = synthetic_table.markdown(data)
    assert f"Runs made at commit {head[:10]}, {head[:10]} (uncommitted changes)." in table
    assert synthetic_table.staleness(data) == ["made with uncommitted changes (B)"]
    flagged = synthetic_table.markdown(data, synthetic_table.staleness(data))
    assert flagged.endswith("\n\n**Stale:** made with uncommitted changes (B).")
    # the docs page's block: the table and a link to its file, no commit and no stale flag
    block = synthetic_table.readme_block(data, "t")
    assert block.endswith("\n\n<sub>The runs, their commits and machine: [`benchmarks/t.md`]"
                          "(../benchmarks/t.md).</sub>\n<!-- /t -->")  # fmt: skip
    assert "Stale" not in block and head[:10] not in block


@pytest.mark.parametrize("name", list(synthetic_table.PAGES))
def test_the_docs_tables_are_generated_from_their_result_files(name):
    """Each result table on its docs page is what ``--from-json --readme`` makes of the
    committed JSON, and the README's summary is the main table's mIoU column."""
    data = json.loads((ROOT / "benchmarks" / f"{name.replace('-', '_')}.json").read_text())
    page = synthetic_table.PAGES[name][0]
    found = readme.find_block((ROOT / page).read_text(), name)
    assert found is not None, f"{page} has no {name} block"
    assert found == synthetic_table.readme_block(data, name), (
        f"run: python -m benchmarks.synthetic_table --from-json --out "
        f"benchmarks/{name.replace('-', '_')}.md --readme"
    )
    if name == synthetic_table.MAIN:
        summary = readme.find_block((ROOT / "README.md").read_text(), synthetic_table.SUMMARY)
        assert summary == synthetic_table.summary_block(data)


def test_the_summary_is_the_tables_miou_column_and_blocks_go_where_they_are(tmp_path):
    data = {"seeds": [0, 1], "provenance": prov.provenance("cmd"),
            "rows": {"A": [_result(0.2), _result(0.3)], "B": [_result(0.25)]}}  # fmt: skip
    summary = synthetic_table.summary_block(data)
    assert "| A | 25.0 ± 7.1 |\n| B | 25.0 |" in summary  # std over 2 seeds; one run: no std
    page, front, other = tmp_path / "page.md", tmp_path / "README.md", tmp_path / "other.md"
    page.write_text(f"x\n{readme.block('synthetic-table', 'old', 'old')}\ny\n")
    front.write_text(f"{readme.block('synthetic-summary', 'old', 'old')}\n")
    other.write_text("no block\n")
    report = synthetic_table.write_blocks(data, "synthetic-table", [page, front])
    assert report == [f"{page}: updated", f"{front}: updated"]
    assert synthetic_table.readme_block(data, "synthetic-table") in page.read_text()
    assert front.read_text() == summary + "\n"
    # another table never touches the main table's summary; a file without a block is an error
    with pytest.raises(UsageError, match="other.md: no block 'synthetic-table-released'"):
        synthetic_table.write_blocks(data, "synthetic-table-released", [other])
    with pytest.raises(UsageError, match="README.md: no block 'synthetic-table-released'"):
        synthetic_table.write_blocks(data, "synthetic-table-released", [front])


def test_seeds_trains_reuses_and_refuses_a_folder_of_other_settings(
    tmp_path, tiny_run, monkeypatch
):
    tiny = [*tiny_run, "train.device=cpu", "train.max_steps=2"]
    args = ["--config", "configs/demo/norm_only.yaml", "--seeds", "0", "1", "--runs",
            str(tmp_path), *tiny]  # fmt: skip
    assert seeds.main(args) == 0
    out = json.loads((tmp_path / "norm_only.seeds.json").read_text())
    assert [r["seed"] for r in out["runs"]] == [0, 1]
    assert out["mIoU"]["mean"] == pytest.approx(sum(r["mIoU"] for r in out["runs"]) / 2)
    assert set(out["provenance"]) == FIELDS and out["script"] == "train_norm_only.py"
    run0 = tmp_path / "norm_only-seed0"
    stored = to_dict(config_from_dict(read_yaml(run0 / "config.yaml")))
    results = json.loads((run0 / "results.json").read_text())
    assert results["provenance"]["config_sha256"] == prov.config_hash(stored)
    assert results["provenance"]["command"].startswith("python train_norm_only.py --config")
    assert "Provenance: commit" in (tmp_path / "norm_only.seeds.md").read_text()

    def no_training(argv):
        raise AssertionError(f"a finished run was trained again: {argv}")

    monkeypatch.setitem(seeds.SCRIPTS, "train_norm_only.py", type("S", (), {"main": no_training}))
    assert seeds.main(args) == 0  # both reused
    stopped = type("S", (), {"main": staticmethod(lambda argv: 143)})  # SIGTERM: no results
    monkeypatch.setitem(seeds.SCRIPTS, "train_norm_only.py", stopped)
    with pytest.raises(seeds.RunStoppedError, match=r"norm_only-seed2 stopped .*status 143"):
        seeds.main([*args[:5], "2", *args[5:]])
    with pytest.raises(seeds.RunMismatchError, match=r"optim.lr: [0-9.e-]+ there, 0.02 now"):
        seeds.main([*args, "optim.lr=0.02"])


def test_seeds_takes_overrides_after_the_seeds_as_the_docs_write_them(tmp_path, monkeypatch):
    calls = []

    def fake_training(argv):  # writes the results a finished run leaves
        calls.append(argv)
        over = dict(a.split("=", 1) for a in argv if "=" in a)
        run = Path(over["train.out_dir"]) / over["train.run_name"]
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps({"step": 2, "mIoU": 0.5, "iou": [0.5] * 19}))
        return 0

    monkeypatch.setitem(seeds.SCRIPTS, "train_norm_only.py", type("S", (), {"main": fake_training}))
    assert seeds.main(["--config", "configs/demo/norm_only.yaml", f"train.out_dir={tmp_path}",
                       "--seeds", "0", "1", "train.max_steps=2", "optim.lr=0.02"]) == 0  # fmt: skip
    # each seed's run gets the overrides, then its seed, in <train.out_dir>/seeds
    assert [a[2:6] for a in calls] == [
        ["train.max_steps=2", "optim.lr=0.02", f"train.out_dir={tmp_path}", f"train.seed={seed}"]
        for seed in (0, 1)
    ]
    summary = json.loads((tmp_path / "seeds" / "norm_only.seeds.json").read_text())
    assert summary["seeds"] == [0, 1]
    assert summary["runs"][1]["run"] == str(tmp_path / "seeds" / "norm_only-seed1")
    with pytest.raises(ConfigError, match="unknown key train.max_stepz"):
        seeds.main(["--config", "configs/demo/norm_only.yaml", "--seeds", "0", "train.max_stepz=2"])


def test_seeds_trains_a_first_stage_once_per_seed_and_starts_from_it(tmp_path, tiny_run):
    tiny = [*tiny_run, "train.device=cpu", "train.max_steps=2", "data.source.crop=[96,48]"]
    args = [
        "--start",
        "configs/demo/maxsquare_source.yaml",
        "--config",
        "configs/demo/maxsquare_norm.yaml",
        "--seeds",
        "0",
        "--runs",
        str(tmp_path),
        *tiny,
    ]
    assert seeds.main(args) == 0
    stage = tmp_path / "maxsquare_source-seed0"
    run = tmp_path / "maxsquare_norm-seed0"
    init = read_yaml(run / "config.yaml")["model"]["init_from"]
    assert init == str(stage / "checkpoints" / "last.pth")
    assert json.loads((run / "results.json").read_text())["step"] == 2
    assert json.loads((tmp_path / "maxsquare_norm.seeds.json").read_text())["start"] == args[1]
    # a second call trains neither stage again
    before = {p: p.stat().st_mtime for p in (stage / "checkpoints" / "last.pth",
                                            run / "checkpoints" / "last.pth")}  # fmt: skip
    assert seeds.main(args) == 0
    assert all(p.stat().st_mtime == t for p, t in before.items())


def test_seeds_needs_a_script_it_can_tell():
    with pytest.raises(seeds.UsageError, match="give --script"):
        seeds.main(["--config", "configs/defaults.yaml", "--seeds", "0"])
    assert seeds.script_for("configs/x/clan.yaml", None) == "train_clan_norm.py"
    assert seeds.script_for("my.yaml", "train_norm_only.py") == "train_norm_only.py"
    assert seeds.script_for("configs/demo/maxsquare_iw.yaml", None) == "train_maxsquare_norm.py"
