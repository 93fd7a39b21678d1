"""The released-protocol configs and the paper-vs-released table of docs/protocols.md, kept in
step."""

from __future__ import annotations

from pathlib import Path

import pytest

from utils import protocols
from utils.config import load_config
from utils.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
SETUPS = ["clan_norm", "norm_only", "clan", "source_only"]


def test_the_docs_table_is_generated_from_the_configs():
    page = (ROOT / "docs" / "protocols.md").read_text()
    assert protocols.readme_block() in page, (
        "run: python -m utils.protocols --readme docs/protocols.md"
    )


def test_the_table_names_every_released_choice():
    keys = {key for key, _, _ in protocols.differences()}
    assert {"loss.seg", "data.source.resize", "data.source.image_rescale", "data.target.resize",
            "loss.lambda_weight", "optim.lr_d", "optim.weight_decay_d",
            "loss.clamp_norm_damping", "optim.backbone_updates", "optim.warmup_form",
            "train.max_steps"} <= keys  # fmt: skip


@pytest.mark.parametrize("setup", SETUPS)
def test_each_released_config_differs_from_its_paper_twin_by_the_table_only(setup):
    paper = ROOT / "configs" / "gta5_to_cityscapes" / f"{setup}.yaml"
    released = ROOT / "configs" / "gta5_to_cityscapes" / "released" / f"{setup}.yaml"
    assert protocols.differences(paper, released) == protocols.differences()
    cfg = load_config(released)
    assert cfg.optim.backbone_updates == "released" and cfg.loss.seg == "focal"
    assert cfg.train.max_steps == cfg.optim.schedule_steps == 150000


@pytest.mark.parametrize("setup", SETUPS)
def test_the_demo_twins_carry_the_released_choices(setup):
    cfg = load_config(ROOT / "configs" / "demo" / "released" / f"{setup}.yaml")
    demo = load_config(ROOT / "configs" / "demo" / f"{setup}.yaml")
    assert cfg.optim.backbone_updates == "released" and cfg.optim.warmup_form == "released"
    assert cfg.loss.seg == "focal" and not cfg.loss.clamp_norm_damping
    assert cfg.data.source.crop is None and cfg.data.source.image_rescale == (
        (0.8, 0.3),
        (1.1, 0.3),
    )
    assert cfg.train.max_steps == cfg.optim.schedule_steps  # the released code stops at N
    assert cfg.optim.warmup_steps == cfg.optim.schedule_steps // 20
    assert cfg.loss.lambda_norm == demo.loss.lambda_norm and cfg.model == demo.model


def test_update_readme_rewrites_only_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{protocols.START}\nstale\n{protocols.END}\noutro\n")
    assert protocols.update_readme(readme)
    assert readme.read_text() == f"intro\n{protocols.readme_block()}\noutro\n"
    assert not protocols.update_readme(readme)
    (tmp_path / "bare.md").write_text("no markers")
    with pytest.raises(UsageError, match="markers"):
        protocols.update_readme(tmp_path / "bare.md")
