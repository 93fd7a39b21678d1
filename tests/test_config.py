"""Config loading, overrides and errors."""

from pathlib import Path

import pytest

from utils.config import (
    DEFAULTS_PATH,
    Config,
    ConfigError,
    config_from_dict,
    dump_yaml,
    from_dict,
    load_config,
    read_yaml,
    to_dict,
)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_defaults_hold_paper_values():
    cfg = load_config()
    assert cfg.loss.lambda_norm == 1.5e-4 and cfg.loss.delta_r == 0.12
    assert cfg.optim.lr == 2.5e-4 and cfg.optim.momentum == 0.9
    assert cfg.optim.weight_decay == 5e-4 and cfg.optim.power == 0.9
    assert cfg.optim.schedule_steps == 150_000 and cfg.train.max_steps == 100_000
    assert cfg.optim.warmup_steps == 150_000 // 20
    assert cfg.model.layers == (3, 4, 23, 3) and cfg.model.num_classes == 19
    assert cfg.data.source.crop == (1024, 512) and cfg.data.val.resize == (1024, 512)


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    load_config(path)


def test_every_shipped_configs_runs_have_a_folder_name_of_their_own():
    """Two configs whose runs would share ``<out_dir>/<name>-<timestamp>`` (the released
    protocol's twin of a paper config, one setup on two benchmarks) could not be told apart."""
    folders: dict[tuple[str, str], list[str]] = {}
    for path in sorted(CONFIGS.rglob("*.yaml")):
        if path.name != "defaults.yaml":
            t = load_config(path).train
            folders.setdefault((t.out_dir, t.run_name or path.stem), []).append(str(path))
    shared = {f"{d}/{n}": paths for (d, n), paths in folders.items() if len(paths) > 1}
    assert not shared, shared
    released = load_config(CONFIGS / "demo" / "released" / "clan_norm.yaml").train.out_dir
    assert released == "runs/demo/released"


def test_base_chain_and_overrides():
    cfg = load_config(
        CONFIGS / "demo" / "source_only.yaml",
        ["optim.lr=1e-3", "model.layers=[2,2,2,2]", "data.source.crop=null", "train.device=cpu"],
    )
    assert cfg.loss.lambda_norm == 0.0  # from source_only.yaml
    assert cfg.model.base_width == 16  # from its _base_ norm_only.yaml
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.model.layers == (2, 2, 2, 2)
    assert cfg.data.source.crop is None


def test_yaml_boolean_words_stay_words_in_overrides():
    assert load_config(None, ["train.amp=off"]).train.amp == "off"
    assert load_config(None, ["model.multi_level=true"]).model.multi_level is True
    with pytest.raises(ConfigError, match="model.multi_level: expected true or false"):
        load_config(None, ["model.multi_level=off"])


def test_int_accepted_for_float():
    assert load_config(None, ["loss.lambda_norm=0"]).loss.lambda_norm == 0.0


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", "unknown key optim.lrr"),
        ("nosuch.key=1", "unknown key nosuch"),
        ("model.num_classes=abc", "model.num_classes: expected an integer"),
        ("train.seed=1.5", "train.seed: expected an integer"),
        ("model.multi_level=1", "model.multi_level: expected true or false"),
        ("data.source.crop=[1,2,3]", "data.source.crop"),
        ("model.layers=[1,x]", "model.layers[1]: expected an integer"),
        ("model=3", "model is a section"),
        ("optim.lr", "expected key.sub=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [override])


def test_every_bad_key_of_a_command_is_in_one_error_in_words():
    with pytest.raises(ConfigError) as refused:
        load_config(CONFIGS / "demo" / "norm_only.yaml", [
            "optim.lrr=1", "train.amp=fp8", "data.source.crop=256", "data.batch_size=0",
            "optim.betas_d=[0.9]", "data.source.image_rescale=[[0.8,0.3]]", "model=3",
        ])  # fmt: skip
    assert str(refused.value).splitlines() == [
        "invalid config:",
        "  override 'optim.lrr=1': unknown key optim.lrr (valid keys here: backbone_updates, "
        "betas_d, lr, lr_d, lr_scaling, momentum, optimizer, power, schedule_steps, warmup_form, "
        "warmup_steps, weight_decay, weight_decay_d)",
        "  override 'model=3': model is a section, not a value",
        "  data.source.crop: expected a pair of integers [W, H], or null, got 256",
        "  optim.betas_d: expected a pair of numbers [beta1, beta2], got [0.9]",
        # (crop stood in with its default for the other checks, which would have refused it
        # with image_rescale: no line for a value the user did not give)
        "  train.amp: expected one of off, bf16, fp16, got 'fp8'",
        "  data.batch_size: expected a number >= 1, got 0",
    ]
    with pytest.raises(ConfigError, match=r"image_rescale: expected a list of pairs of numbers "
                                          r"\[scale, probability\], got 0.8"):  # fmt: skip
        load_config(None, ["data.source.image_rescale=0.8"])


def test_unknown_and_missing_keys_in_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss:\n  lambda_nrom: 0.1\n")
    with pytest.raises(ConfigError, match="loss.lambda_nrom"):
        load_config(bad)
    with pytest.raises(ConfigError, match="missing config key.*optim.lr"):
        data = read_yaml(DEFAULTS_PATH)
        del data["optim"]["lr"]
        from_dict(Config, data)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(CONFIGS / "demo" / "norm_only.yaml", ["optim.lr=0.5"])
    dump_yaml(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert config_from_dict(to_dict(cfg)) == cfg


def test_synthia_configs_hold_the_benchmark_settings():
    norm = load_config(CONFIGS / "synthia_to_cityscapes" / "norm_only.yaml")
    assert norm.data.source.dataset == "synthia" and norm.data.source.resize == (1280, 760)
    assert norm.data.source.crop is None and norm.data.target.crop is None
    assert norm.data.target.resize == (1024, 512) and norm.data.val.resize == (1024, 512)
    assert norm.eval.classes == (16, 13) and norm.eval.mask_absent is False
    assert norm.model.num_classes == 19  # trained on 19 outputs, as CLAN's SYNTHIA code
    assert norm.loss.lambda_norm == 1.5e-4 and norm.train.max_steps == 100_000
    clan = load_config(CONFIGS / "synthia_to_cityscapes" / "clan.yaml")
    assert clan.loss.lambda_norm == 0.0 and clan.loss.lambda_local == 10.0
    assert load_config(CONFIGS / "synthia_to_cityscapes" / "clan_norm.yaml").loss.lambda_local == 10
    assert load_config(CONFIGS / "synthia_to_cityscapes" / "source_only.yaml").loss.lambda_norm == 0
    demo = load_config(CONFIGS / "demo" / "synthia" / "clan_norm.yaml")
    gta_demo = load_config(CONFIGS / "demo" / "clan_norm.yaml")
    assert demo.data.source.dataset == "synthia" and demo.data.synthetic.num_synthia > 0
    assert demo.data.source.root == f"{demo.data.synthetic.root}/SYNTHIA"
    assert demo.eval.classes == (16, 13) and demo.loss.lambda_local == 10.0
    assert (demo.model, demo.optim, demo.train.max_steps) == (
        gta_demo.model, gta_demo.optim, gta_demo.train.max_steps
    )  # fmt: skip
    assert load_config().eval.classes == (19,)


@pytest.mark.parametrize("classes", ["[17]", "[]", "[16,16]", "[19,12]"])
def test_eval_classes_are_checked(classes):
    with pytest.raises(ConfigError, match=r"eval\.classes: expected a list of distinct"):
        load_config(None, [f"eval.classes={classes}"])


def test_eval_label_size_is_checked():
    assert load_config().eval.label_size == "full"  # AdaptSegNet's evaluation, the paper's
    assert load_config(None, ["eval.label_size=input"]).eval.label_size == "input"
    with pytest.raises(
        ConfigError, match=r"eval\.label_size: expected one of full, input, got 'half'"
    ):
        load_config(None, ["eval.label_size=half"])
    # a config stored before the key existed (a checkpoint's) loads with the default
    stored = to_dict(load_config())
    del stored["eval"]["label_size"]
    assert config_from_dict(stored).eval.label_size == "full"


def test_the_network_family_and_the_optimizer_are_keys():
    cfg = load_config()
    assert cfg.model.arch == "deeplabv2" and cfg.optim.optimizer == "sgd"
    with pytest.raises(ConfigError) as refused:
        load_config(None, ["model.arch=unet", "model.layers=[0]", "optim.optimizer=adam"])
    # DeepLab-v2's own keys are checked only for model.arch=deeplabv2
    assert str(refused.value).splitlines()[1:] == [
        "  model.arch: expected one of deeplabv2, daformer, got 'unet'",
        "  optim.optimizer: expected one of sgd, adamw, got 'adam'",
    ]
    with pytest.raises(ConfigError, match=r"model\.layers: expected 4 block counts"):
        load_config(None, ["model.layers=[0]"])
    # a config stored before the keys existed (an older checkpoint's) loads with the defaults
    stored = to_dict(cfg)
    del stored["model"]["arch"], stored["optim"]["optimizer"], stored["model"]["backbone"]
    del stored["model"]["head_channels"], stored["loss"]["norm_features"]
    assert config_from_dict(stored) == cfg
