"""Bad input, run the way a user runs the scripts (a process each): each case must exit with 2,
print one ``error: ...`` naming the culprit and no traceback, and leave every file as it was."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import forkrun
import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN
from PIL import Image

import evaluate_cityscapes
import train_norm_only
from utils.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
TINY = [*TINY_TRAIN, "train.device=cpu"]


@dataclass
class Env:
    """What the cases share: the tiny benchmark, a trained run, its predictions."""

    tmp: Path
    data: list[str]  # overrides pointing at the tiny synthetic benchmark
    root: Path  # its data folder
    run: Path  # a finished 2-step Norm-only run (checkpoints/last.pth)
    preds: Path  # its trainId predictions of the val split

    @property
    def ckpt(self) -> str:
        return str(self.run / "checkpoints" / "last.pth")

    def train(self, case: Path, *extra: str) -> list[str]:
        """A short Norm-only run writing into the case's own folder."""
        return ["train_norm_only.py", "--config", "configs/demo/norm_only.yaml", *TINY,
                *self.data, f"train.out_dir={case / 'out'}", "train.run_name=r",
                "train.max_steps=2", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_input")
    root = tmp / "data"
    data = [f"data.synthetic.root={root}", "data.synthetic.num_source=4",
            "data.synthetic.num_train=4", "data.synthetic.num_val=3",
            "data.synthetic.source_size=[160,88]", "data.synthetic.target_size=[192,96]",
            f"data.source.root={root}/GTA5", f"data.target.root={root}/Cityscapes",
            f"data.val.root={root}/Cityscapes"]  # fmt: skip
    args = ["--config", "configs/demo/norm_only.yaml", *TINY, *data, f"train.out_dir={tmp}",
            "train.run_name=run", "train.max_steps=2"]  # fmt: skip
    assert train_norm_only.main(args) == 0
    ckpt = tmp / "run" / "checkpoints" / "last.pth"
    assert evaluate_cityscapes.main(["--restore", str(ckpt), "--save-dir", str(tmp / "preds")]) == 0
    return Env(tmp, data, root, tmp / "run", tmp / "preds")


def _copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _a_label(root: Path) -> Path:
    return sorted((root / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))[0]


def _pred_dir(env: Env, case: Path, change: Callable[[Path], None]) -> list[str]:
    preds = _copy_tree(env.preds, case / "preds")
    (preds / "results.json").unlink()  # the model's record: the defaults' val set then
    change(sorted(p for p in preds.rglob("*.png") if "color" not in p.parts)[0])
    return ["evaluate_cityscapes.py", "--pred-dir", str(preds), *env.data]


def _bad_yaml(env: Env, case: Path) -> list[str]:
    (case / "bad.yaml").write_text(f"!!python/object/apply:os.system ['touch {case}/PWNED']\n")
    return ["train_norm_only.py", "--config", str(case / "bad.yaml")]


def _truncated(env: Env, case: Path) -> list[str]:
    (case / "trunc.pth").write_bytes(Path(env.ckpt).read_bytes()[:300])
    return ["evaluate_cityscapes.py", "--restore", str(case / "trunc.pth"), *env.data]


def _text(env: Env, case: Path) -> list[str]:
    (case / "text.pth").write_text("these are not weights\n")
    return ["evaluate_cityscapes.py", "--restore", str(case / "text.pth"), *env.data]


def _pickled(env: Env, case: Path) -> list[str]:
    torch.save({"state_dict": argparse.Namespace(a=1)}, case / "code.pth")
    return ["evaluate_cityscapes.py", "--restore", str(case / "code.pth"), *env.data]


def _list_missing_entry(env: Env, case: Path) -> list[str]:
    (case / "val.txt").write_text("frankfurt/frankfurt_000000_999999_leftImg8bit.png\n")
    return ["evaluate_cityscapes.py", "--restore", env.ckpt, *env.data,
            f"data.val.list_file={case / 'val.txt'}"]  # fmt: skip


def _corrupt_label(env: Env, case: Path) -> list[str]:
    root = _copy_tree(env.root / "Cityscapes", case / "Cityscapes")
    _a_label(root).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return ["evaluate_cityscapes.py", "--restore", env.ckpt, *env.data, f"data.val.root={root}"]


def _label_size(env: Env, case: Path) -> list[str]:
    root = _copy_tree(env.root / "Cityscapes", case / "Cityscapes")
    label = _a_label(root)
    Image.open(label).resize((40, 22), Image.NEAREST).save(label)
    return ["evaluate_cityscapes.py", "--restore", env.ckpt, *env.data, f"data.val.root={root}"]


def _synthia(env: Env, case: Path, label: Callable[[Path], None]) -> list[str]:
    """A Norm-only run on a one-image SYNTHIA folder whose label ``label`` writes (or not)."""
    root = case / "SYNTHIA"
    (root / "RGB").mkdir(parents=True)
    (root / "GT" / "LABELS").mkdir(parents=True)
    Image.fromarray(np.zeros((48, 96, 3), np.uint8)).save(root / "RGB" / "0000000.png")
    label(root / "GT" / "LABELS" / "0000000.png")
    return env.train(case, "data.source.dataset=synthia", f"data.source.root={root}")


def _folder(case: Path, images: int = 2, labels: bool = True) -> tuple[Path, Path]:
    """``case/img/seq/<i>.jpg`` with ``case/lab/seq/<i>.png`` trainId labels (or none)."""
    for i in range(images):
        (case / "img" / "seq").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((48, 96, 3), 90, np.uint8)).save(case / "img" / "seq" / f"{i}.jpg")
        if labels:
            (case / "lab" / "seq").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((48, 96), np.uint8)).save(case / "lab" / "seq" / f"{i}.png")
    return case / "img", case / "lab"


def _folder_val(env: Env, case: Path, change: Callable[[Path, Path], None]) -> list[str]:
    """evaluate_cityscapes.py on a labelled folder that ``change`` breaks."""
    images, labels = _folder(case)
    change(images, labels)
    return ["evaluate_cityscapes.py", "--restore", env.ckpt, *env.data, "data.val.dataset=folder",
            f"data.val.root={images}", f"data.val.label_root={labels}"]  # fmt: skip


def _label_map(case: Path, text: str) -> list[str]:
    (case / "ids.yaml").write_text(text)
    return [f"data.val.label_map={case / 'ids.yaml'}"]


def _folder_target(env: Env, case: Path, change: Callable[[Path], None]) -> list[str]:
    """A Norm-only run whose target is a folder of frames that ``change`` breaks."""
    images, _ = _folder(case, labels=False)
    change(images)
    return env.train(case, "data.target.dataset=folder", f"data.target.root={images}")


def _ensemble_save_dir(env: Env, case: Path) -> list[str]:
    (case / "ens").mkdir()
    (case / "ens" / "results.json").write_text("{}\n")  # from an earlier ensemble
    return ["ensemble.py", "--restore", env.ckpt, env.ckpt, "--save-dir", str(case / "ens"),
            *env.data]  # fmt: skip


def _evaluate_save_dir(env: Env, case: Path) -> list[str]:
    """--save-dir on an earlier evaluation's predictions (a PNG each and no results.json)."""
    preds = _copy_tree(env.preds, case / "preds")
    (preds / "results.json").unlink(missing_ok=True)
    return ["evaluate_cityscapes.py", "--restore", env.ckpt, "--save-dir", str(preds), *env.data]


def _predict_into_a_file(env: Env, case: Path) -> list[str]:
    (case / "file.txt").write_text("mine\n")
    images = env.root / "Cityscapes" / "leftImg8bit" / "val"
    return ["predict.py", "--restore", env.ckpt, "--input", str(images), "--out",
            str(case / "file.txt")]  # fmt: skip


def _pred_dir_other_record(env: Env, case: Path) -> list[str]:
    """--pred-dir where its default results file holds a model's evaluation."""
    preds = _copy_tree(env.preds, case / "preds")
    (preds / "pred_dir.results.json").write_bytes((preds / "results.json").read_bytes())
    return ["evaluate_cityscapes.py", "--pred-dir", str(preds), *env.data]


def _other_flip(env: Env, case: Path) -> list[str]:
    """--flip where a results file holds the evaluation without it."""
    (case / "r.json").write_bytes((env.preds / "results.json").read_bytes())
    return ["evaluate_cityscapes.py", "--restore", env.ckpt, "--flip", "--results",
            str(case / "r.json"), *env.data]  # fmt: skip


def _not_a_folder(env: Env, case: Path) -> list[str]:
    (case / "file.txt").write_text("a file where the runs folder should be\n")
    return env.train(case, f"train.out_dir={case / 'file.txt' / 'runs'}")


def _full_disk(env: Env, case: Path) -> list[str]:
    run = _copy_tree(env.run, case / "run")
    return ["train_norm_only.py", "--resume", str(run), "train.max_steps=3"]


def _mit_b0(env: Env, case: Path) -> list[str]:
    """A Norm-only DAFormer run (mit_demo) from the ImageNet file of another MiT size."""
    from model.mit import MixTransformer

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in MixTransformer("mit_b0").state_dict().items()}
    torch.save({k: torch.zeros(s) for k, s in shapes.items()}, case / "mit_b0.pth")
    return env.train(case, "model.arch=daformer", "model.backbone=mit_demo",
                     "model.head_channels=8", f"model.init_from={case / 'mit_b0.pth'}")  # fmt: skip


def _hrda(env: Env, case: Path) -> list[str]:
    """An mmcv checkpoint whose head is HRDA's (scale attention), to evaluate."""
    from model.daformer import DAFormer

    sd = DAFormer(19, "mit_demo", head_channels=8).state_dict()
    hrda = {k.replace("decode_head.", "decode_head.head."): v for k, v in sd.items()}
    hrda["decode_head.scale_attention.conv_seg.weight"] = torch.zeros(19, 8, 1, 1)
    torch.save({"meta": {}, "state_dict": {f"model.{k}": v for k, v in hrda.items()}},
               case / "hrda.pth")  # fmt: skip
    return ["evaluate_cityscapes.py", "--restore", str(case / "hrda.pth"), *env.data]


# (name, argv builder, what the message must name, files the case may change)
CASES: list[tuple[str, Callable[[Env, Path], list[str]], str, tuple[str, ...]]] = [
    ("config: unknown key", lambda e, c: e.train(c, "train.foo=1"), "train.foo", ()),
    ("config: missing file", lambda e, c: ["train_norm_only.py", "--config", str(c / "no.yaml")],
     "no.yaml", ()),
    ("config: wrong type", lambda e, c: e.train(c, "train.max_steps=abc"), "train.max_steps", ()),
    ("config: python tag", _bad_yaml, "bad.yaml", ()),
    ("config: unknown choice", lambda e, c: e.train(c, "loss.seg=dice"), "loss.seg", ()),
    ("config: out of range", lambda e, c: e.train(c, "data.batch_size=0"), "data.batch_size", ()),
    ("config: crop with image_rescale",
     lambda e, c: e.train(c, "data.source.image_rescale=[[0.8,0.3]]"), "data.source.image_rescale",
     ()),
    ("config: CLAN with a multi-level preset",
     lambda e, c: ["train_clan_norm.py", *e.train(c, "model.preset=adaptsegnet")[1:]],
     "model.multi_level", ()),
    ("config: no such GPU", lambda e, c: e.train(c, "train.device=cuda:99"), "cuda:99", ()),
    ("config: not a device", lambda e, c: e.train(c, "train.device=tpu"), "train.device", ()),
    ("checkpoint: missing",
     lambda e, c: ["evaluate_cityscapes.py", "--restore", str(c / "no.pth"), *e.data],
     "no.pth", ()),
    ("checkpoint: truncated", _truncated, "trunc.pth", ()),
    ("checkpoint: a text file", _text, "text.pth", ()),
    ("checkpoint: pickled code", _pickled, "safe loader", ()),
    ("weights: a MiT file of another size (the new run folder is removed)", _mit_b0,
     "mit_b0.pth: the file holds a mit_b0 encoder, the model is mit_demo (model.backbone): "
     "model.backbone=mit_b0", ()),
    ("checkpoint: HRDA's head", _hrda, "hrda.pth: HRDA's multi-resolution head", ()),
    ("checkpoint: another shape",
     lambda e, c: ["evaluate_cityscapes.py", "--restore", e.ckpt, *e.data, "model.base_width=16"],
     "shape mismatches", ()),
    ("dataset: missing root",
     lambda e, c: ["evaluate_cityscapes.py", "--restore", e.ckpt, *e.data,
                   f"data.val.root={c / 'nowhere'}"], "nowhere", ()),
    ("dataset: missing list file",
     lambda e, c: ["evaluate_cityscapes.py", "--restore", e.ckpt, *e.data,
                   f"data.val.list_file={c / 'val.txt'}"], "val.txt", ()),
    ("dataset: list entry without its image", _list_missing_entry, "frankfurt_000000_999999", ()),
    ("dataset: corrupt label PNG", _corrupt_label, "gtFine_labelIds.png", ()),
    ("dataset: label of another size", _label_size, "40x22", ()),
    ("dataset: SYNTHIA label missing", lambda e, c: _synthia(e, c, lambda p: None),
     "GT/LABELS/0000000.png", ()),
    ("dataset: SYNTHIA label 8-bit (the new run folder is removed)",
     lambda e, c: _synthia(e, c, lambda p: Image.fromarray(np.zeros((48, 96), np.uint8)).save(p)),
     "LABELS/0000000.png: 8-bit with 1 channel", ()),
    ("dataset: missing training root (the new run folder is removed)",
     lambda e, c: e.train(c, f"data.source.root={c / 'GTA5'}"), "GTA5", ()),
    ("dataset: rare-class sampling's min_pixels above every image's counts (nothing cached, "
     "the new run folder removed)",
     lambda e, c: e.train(c, "data.rcs.enabled=true", "data.rcs.min_pixels=1000000"),
     "data.rcs.min_pixels=1000000: no image of the source", ()),
    ("folder: empty (the new run folder is removed)",
     lambda e, c: _folder_target(e, c, lambda d: [p.unlink() for p in d.rglob("*.jpg")]),
     "no images under", ()),
    ("folder: an unreadable frame in training",
     lambda e, c: _folder_target(e, c, lambda d: (d / "seq" / "1.jpg").write_bytes(b"no jpeg")),
     "seq/1.jpg", ()),
    ("folder: an image without its label",
     lambda e, c: _folder_val(e, c, lambda i, lab: (lab / "seq" / "1.png").unlink()),
     "lab/seq/1.png", ()),
    ("folder: a label of another size",
     lambda e, c: _folder_val(e, c, lambda i, lab: Image.fromarray(
         np.zeros((20, 30), np.uint8)).save(lab / "seq" / "0.png")), "30x20", ()),
    ("folder: a label map id outside 0-255",
     lambda e, c: [*_folder_val(e, c, lambda i, lab: None), *_label_map(c, "300: 0\n")],
     "ids.yaml: id 300", ()),
    ("folder: a label map trainId beyond the classes",
     lambda e, c: [*_folder_val(e, c, lambda i, lab: None), *_label_map(c, "7: 19\n")],
     "ids.yaml: id 7 maps to 19", ()),
    ("predictions: missing",
     lambda e, c: _pred_dir(e, c, lambda p: p.unlink()), "no prediction", ()),
    ("predictions: wrong size",
     lambda e, c: _pred_dir(e, c, lambda p: Image.open(p).resize((96, 48)).save(p)), "96x48", ()),
    ("predictions: colour PNG",
     lambda e, c: _pred_dir(e, c, lambda p: Image.open(p).convert("RGB").save(p)),
     "single-channel", ()),
    ("predictions: not trainIds",
     lambda e, c: _pred_dir(
         e, c, lambda p: Image.fromarray(np.full((96, 192), 40, np.uint8)).save(p)),
     "trainIds", ()),
    ("ensemble: weights for other members",
     lambda e, c: ["ensemble.py", "--restore", e.ckpt, e.ckpt, *e.data, "--weights", "0.5"],
     "--weights", ()),
    ("ensemble: negative weight",
     lambda e, c: ["ensemble.py", "--restore", e.ckpt, e.ckpt, *e.data, "--weights", "-1", "2"],
     "--weights", ()),
    ("ensemble: one member", lambda e, c: ["ensemble.py", "--restore", e.ckpt, *e.data],
     "two or more", ()),
    ("ensemble: save-dir holds results", _ensemble_save_dir, "--overwrite", ()),
    ("evaluate: save-dir holds predictions", _evaluate_save_dir, "6 of this run's files", ()),
    ("evaluate: pred-dir's results file holds a model's", _pred_dir_other_record,
     "pred_dir.results.json holds the results of other settings (checkpoint: ", ()),
    ("evaluate: results of another flip", _other_flip, "eval.flip: false there, true now", ()),
    ("resume: another batch size",
     lambda e, c: ["train_norm_only.py", "--resume", str(e.run), "data.batch_size=2"],
     "data.batch_size", ()),
    ("resume: another setup", lambda e, c: ["train_clan_norm.py", "--resume", str(e.run)],
     "setup 'norm_only'", ()),
    ("resume: no checkpoint",
     lambda e, c: ["train_norm_only.py", "--resume", str(c / "nothing")], "no checkpoint", ()),
    ("option: an unknown paper row",
     lambda e, c: ["evaluate_cityscapes.py", "--restore", e.ckpt, *e.data, "--compare-with", "Foo"],
     "--compare-with 'Foo'", ()),
    ("option: a folder as the results file",
     lambda e, c: ["evaluate_cityscapes.py", "--restore", e.ckpt, *e.data, "--results", str(c)],
     "is a folder", ()),
    ("option: a file as the output folder", _predict_into_a_file, "a file is there", ()),
    ("option: a negative seed",
     lambda e, c: ["analyze_features.py", "--restore", e.ckpt, "--out", str(c / "a"),
                   "--seed", "-1"], "--seed", ()),
    ("option: no step to time",  # (tiny sizes: without the check it ran, then failed)
     lambda e, c: ["-m", "benchmarks.speed", "--steps", "0", "--device", "cpu", "--setups",
                   "Norm only", "--crop", "48", "96", "--loader-configs", "--eval-images", "1",
                   "--eval-distinct", "1", "--eval-size", "64", "128", "--eval-cache", str(c),
                   *TINY], "--steps", ()),
    ("option: a table without its data",
     lambda e, c: ["-m", "benchmarks.synthetic_table", "--from-json", "--out", str(c / "t.md")],
     "t.json", ()),
    ("option: a docs page that is not there",
     lambda e, c: ["-m", "utils.protocols", "--readme", str(c / "no.md")], "no.md", ()),
    ("option: not a commit",
     lambda e, c: ["-m", "benchmarks.same_behaviour", "--against", "no-such-commit"],
     "no-such-commit", ()),
    ("option: a negative count",
     lambda e, c: ["-m", "dataset.synthetic", "--out", str(c / "s"), "--num-source", "-1"],
     "--num-source", ()),
    ("config: synthetic images too small",
     lambda e, c: e.train(c, "data.synthetic.source_size=[16,16]"), "data.synthetic.source_size",
     ()),
    ("output: a file where the folder should be", _not_a_folder, "file.txt", ()),
    ("output: the disk fills during a checkpoint", _full_disk, "last.pth",
     ("train.log", "metrics.jsonl", "events.out.tfevents")),
]  # fmt: skip


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def _join(snapshots: dict[str, dict]) -> dict[str, tuple[int, int]]:
    return {f"{top}/{k}": v for top, files in snapshots.items() for k, v in files.items()}


def test_every_bad_input_is_one_clear_line_and_changes_nothing(env):
    """Every case runs as its own process (forked from one that has imported torch and the
    scripts already, see forkrun.py); the files it may touch are compared before and after."""
    assert len(CASES) >= 25
    cases = [env.tmp / f"case{i:02d}" for i in range(len(CASES))]
    jobs, watched = [], []
    for case, (_, build, _, _) in zip(cases, CASES):
        case.mkdir()
        jobs.append({"argv": build(env, case), "stderr": str(case.parent / f"{case.name}.err"),
                     "limit_file_size": build is _full_disk})  # fmt: skip
        watched.append((case, env.run, env.preds, env.root))  # its own inputs and the shared ones
    before = [_join({str(f): _snapshot(f) for f in folders}) for folders in watched]
    codes = [r["code"] for r in forkrun.run_all(jobs)]
    after = [_join({str(f): _snapshot(f) for f in folders}) for folders in watched]
    failures = []
    for index, (name, _, expect, may_change) in enumerate(CASES):
        err, code = Path(jobs[index]["stderr"]).read_text(), codes[index]
        old, new = before[index], after[index]
        last = err.strip().splitlines()[-1] if err.strip() else ""
        changed = sorted(
            k for k in set(old) | set(new)
            if old.get(k) != new.get(k) and not any(m in k for m in may_change)
        )  # fmt: skip
        problems = [
            f"exit {code}" if code != 2 else "",
            "a traceback" if "Traceback" in err else "",
            f"no 'error: ' line: {last!r}" if "error: " not in err else "",
            f"{expect!r} not named" if expect not in err else "",
            f"files changed: {changed}" if changed else "",
        ]
        if any(problems):
            failures.append(f"{name}: {', '.join(p for p in problems if p)}\n    {err[-600:]}")
    assert not failures, "\n".join(failures)


def test_an_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_checkpoint({"step": 1}, path)
    before = path.read_bytes()
    real_save = torch.save

    def dies_midway(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise KeyboardInterrupt  # Ctrl-C (or a kill) during the write

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temporary file left


def test_a_forked_command_exits_as_python_would(tmp_path):
    """The fork server's children against ``python <argv>``: exit codes, tracebacks,
    ``sys.exit("message")``, atexit handlers and a ``-m`` module's arguments."""
    scripts = {
        "raises.py": "raise ValueError('bad value')\n",
        "message.py": "import sys\nsys.exit('error: a message')\n",
        "atexit_.py": "import atexit, sys\natexit.register(lambda: print('bye', file=sys.stderr))\n"
        "sys.exit(3)\n",
        "argv.py": "import sys\nprint(sys.argv[1:], file=sys.stderr)\n",
    }  # fmt: skip
    argvs = [[str(tmp_path / "argv.py"), "a", "--b"], ["-m", "json.tool", str(tmp_path / "no")]]
    for name, text in scripts.items():
        (tmp_path / name).write_text(text)
        argvs.append([str(tmp_path / name)])
    jobs = [{"argv": a, "stderr": str(tmp_path / f"{i}.err")} for i, a in enumerate(argvs)]
    forked = forkrun.run_all(jobs, workers=2, preload=())  # (the bad inputs fork after torch)
    for job, result in zip(jobs, forked):
        python = subprocess.run([sys.executable, *job["argv"]], capture_output=True, text=True,
                                cwd=ROOT)  # fmt: skip
        err = Path(job["stderr"]).read_text()
        assert result["code"] == python.returncode, job["argv"]
        assert err.strip().splitlines()[-1] == python.stderr.strip().splitlines()[-1], job["argv"]
        assert ("Traceback" in err) == ("Traceback" in python.stderr), job["argv"]
