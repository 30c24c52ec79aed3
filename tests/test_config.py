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
    f = tmp_path / "c.yaml"
    f.write_text("trian: {}\n")
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['trian'\]"):
        load_config(f)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


def test_with_overrides_is_a_copy():
    cfg = ExperimentConfig()
    other = with_overrides(cfg, {"train.lr": 0.5})
    assert other.train.lr == 0.5 and cfg.train.lr == 1e-3
