"""The table of setups (utils/setups.py): it names every training script and demo config, each
shipped config is told its script and passes that script's checks, and a key one setup owns
is refused by the others."""

from pathlib import Path

import pytest

from utils.config import ConfigError, load_config
from utils.setups import SETUPS, foreign_keys, script_for_config, script_module, scripts, setup_of

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.name != "defaults.yaml")


def test_the_table_names_every_training_script():
    assert sorted(scripts()) == sorted(p.name for p in ROOT.glob("train_*.py"))


def test_every_variant_has_its_demo_config_and_its_first_stage():
    for setup in SETUPS:
        for v in setup.variants:
            for config in (v.demo, v.start):
                assert config is None or (ROOT / config).is_file(), config
            if v.demo is not None:
                assert script_for_config(v.demo) is setup, v.demo
            if v.start is not None:
                assert script_for_config(v.start) is setup and v.start in {
                    w.demo for w in setup.variants
                }
    labels = [v.label for s in SETUPS for v in s.variants]
    assert len(labels) == len(set(labels))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_shipped_config_is_told_its_script_and_passes_its_checks(path):
    setup = script_for_config(path)
    assert setup is not None, path
    script_module(setup).check(load_config(path))


def test_a_key_of_one_setup_is_refused_by_the_others_naming_its_script():
    dacs = load_config(None, ["loss.dacs.lambda_mix=2", "optim.lr_d=0.1"])
    assert foreign_keys(dacs, "train_dacs_norm.py") == [
        "optim.lr_d=0.1: a key of CLAN's discriminator and adversarial loss "
        "(train_clan_norm.py); train_dacs_norm.py has no use for it: remove it"
    ]
    # Norm only's configs are the base of CLAN's: it accepts CLAN's keys, not DACS's
    assert foreign_keys(dacs, "train_norm_only.py") == [
        "loss.dacs.lambda_mix=2.0: a key of DACS's self-training (train_dacs_norm.py); "
        "train_norm_only.py has no use for it: remove it"
    ]
    with pytest.raises(ConfigError) as refused:  # the script's own check asks the table
        script_module(setup_of("train_maxsquare_norm.py")).check(dacs)
    assert str(refused.value).splitlines()[2:] == [
        f"  {line}" for line in foreign_keys(dacs, "train_maxsquare_norm.py")
    ]
    assert foreign_keys(load_config(), "train_clan_norm.py") == []  # the defaults: none set
    with pytest.raises(KeyError, match="train_x.py: no such training script"):
        setup_of("train_x.py")
