"""Config: defaults < YAML < --set, with clear errors."""

from __future__ import annotations

import pytest

from ffr.config import ConfigError, ExperimentConfig, load_config, save_config, with_overrides


def test_layers(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("backbone: resnet18_small\nfinetune: {lr: 1e-4, epochs: 3}\nseeds: [5]\n")
    cfg = load_config(f, ["finetune.epochs=7", "data.image_size=64", "bias_rates=[0.9]"])
    assert cfg.backbone == "resnet18_small"
    assert cfg.finetune.lr == pytest.approx(1e-4) and cfg.finetune.epochs == 7
    assert cfg.pretrain.lr == pytest.approx(1e-4) and cfg.train.lr == pytest.approx(1e-3)
    assert cfg.data.image_size == 64 and cfg.seeds == [5] and cfg.bias_rates == [0.9]
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'finetune.learning_rate'"):
        load_config(None, ["finetune.learning_rate=1"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(None, ["finetune.epochs=many"])
    with pytest.raises(ConfigError, match="expected an integer, got 2.5"):
        load_config(None, ["finetune.epochs=2.5"])
    f = tmp_path / "c.yaml"
    f.write_text("trian: {}\n")
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['trian'\]"):
        load_config(f)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


def test_integral_floats_fill_integer_fields():
    # a Kubeflow dict parameter reaches the component as JSON with doubles only
    from ffr.config import from_dict
    from ffr.train.loop import TrainConfig

    cfg = from_dict(TrainConfig, {"lpft_epochs": 5.0, "freeze_stages": 2.0, "lr": 1})
    assert cfg.lpft_epochs == 5 and type(cfg.lpft_epochs) is int and cfg.freeze_stages == 2
    assert type(cfg.lr) is float


def test_a_partial_stage_mapping_keeps_that_stages_defaults(tmp_path):
    """``pretrain: {epochs: 3}`` in a YAML changes the epochs only: step 1 keeps its learning rate
    and step 2 its LP-FT, not a bare TrainConfig's (which once trained step 1 at 1e-3 unasked)."""
    from ffr import config as defaults

    f = tmp_path / "c.yaml"
    f.write_text("pretrain: {epochs: 3}\nfinetune: {epochs: 4}\ntrain: {lr: 0.01}\n")
    cfg = load_config(f)
    assert (cfg.pretrain.epochs, cfg.pretrain.lr) == (3, defaults.PRETRAIN_LR)
    assert (cfg.finetune.epochs, cfg.finetune.lr, cfg.finetune.lpft_epochs) == (4, defaults.FINETUNE_LR,
                                                                                defaults.FINETUNE_LPFT_EPOCHS)
    assert cfg.train.lr == 0.01 and cfg.train.epochs == defaults.EPOCHS
    f.write_text("finetune: {epochs: 4, lpft_epochs: 0}\n")
    assert load_config(f).finetune.lpft_epochs == 0
    f.write_text("finetune: {epochs: four}\n")
    with pytest.raises(ConfigError, match="finetune.epochs: expected an integer"):
        load_config(f)


def test_with_overrides_is_a_copy():
    cfg = ExperimentConfig()
    other = with_overrides(cfg, {"train.lr": 0.5})
    assert other.train.lr == 0.5 and cfg.train.lr == 1e-3


def test_yaml_merge_keys_still_work_and_odd_keys_are_errors(tmp_path):
    from ffr.config import ConfigError, yaml_load

    assert yaml_load("base: &b {lr: 1}\ntrain:\n  <<: *b\n  lr: 2\n", "x.yaml")["train"] == {"lr": 2}
    with pytest.raises(ConfigError, match="x.yaml: invalid YAML .*plain value"):
        yaml_load("? [1, 2]\n: 3\n", "x.yaml")
    with pytest.raises(ConfigError, match="given twice"):
        yaml_load("a: 1\na: 2\n", "x.yaml")
