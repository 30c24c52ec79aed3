"""Harmful-sample pruning (ffr.synthesis.harmful): the filter's decisions, its scorers trained on
the real training split, the calibrated class floors, and the filter from the CLI and `ffr compare`
with the synthetic budget kept."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from ffr.cli import main
from ffr.config import load_config
from ffr.data.manifest import Manifest
from ffr.synthesis.filters import FILTERS, make_filter
from ffr.synthesis.generation import ImageRequest, create_backend
from ffr.synthesis.harmful import HarmfulFilter, bias_view, pipeline_problem, resolve
from ffr.synthesis.records import REJECTIONS_FILE, read_rejections

TINY = ["train.epochs=2", "train.min_steps=0", "train.patience=0", "train.batch_size=32", "data.image_size=16"]


def _request(label, bias, index=0):
    return ImageRequest(label=label, bias=bias, index=index, attempt=0, seed=index, prompt=None)


class _Scripted(HarmfulFilter):
    """The filter's rules over scripted scorer probabilities (no model)."""

    def __init__(self, probs: dict, **kw):
        self.scorers = [(w, None, None) for w in probs]
        self.class_floors = {str(g): float(v) for g, v in (kw.get("floors") or {"*": 0.0}).items()}
        self.min_bias_prob = kw.get("min_bias_prob", 0.0)
        self._probs = probs

    def probabilities(self, what, images):
        return self._probs[what]


def test_the_rules_class_floor_per_group_and_bias_top_prediction():
    requests = [_request("cat", "indoor", 0), _request("cat", "outdoor", 1), _request("dog", "outdoor", 2),
                _request("dog", "indoor", 3)]
    probs = {"class": (["cat", "dog"], np.array([[0.9, 0.1], [0.05, 0.95], [0.3, 0.7], [0.6, 0.4]])),
             "bias": (["indoor", "outdoor"], np.array([[0.8, 0.2], [0.1, 0.9], [0.9, 0.1], [0.7, 0.3]]))}
    f = _Scripted(probs, floors={"cat_indoor": 0.5, "cat_outdoor": 0.01, "dog_outdoor": 0.2, "dog_indoor": 0.2})
    reasons = f([None] * 4, requests)
    assert reasons[0] is None                                   # its class (0.9 >= 0.5) and its bias
    assert reasons[1] is None                                   # a weak class (0.05) above a low group floor
    assert reasons[2].startswith("harmful: would teach the shortcut") and "'indoor'" in reasons[2]
    assert reasons[3] is None                                   # class 0.4 >= 0.2; indoor is its top bias
    f = _Scripted(probs, floors={"*": 0.5}, min_bias_prob=0.75)
    reasons = f([None] * 4, requests)
    assert reasons[1].startswith("harmful: does not show its class") and "0.050 < 0.5" in reasons[1]
    assert reasons[2].startswith("harmful: would teach the shortcut")  # its class (0.7) passes; its bias does not
    assert reasons[3].startswith("harmful: does not show its class")
    assert reasons[0] is None
    f = _Scripted(probs, floors={"*": 0.0}, min_bias_prob=0.85)
    assert f([None] * 4, requests)[3] == "harmful: bias 'indoor' at 0.700 < min_bias_prob 0.85"


def test_bias_view_swaps_class_and_bias(make_dataset):
    real = Manifest.load(make_dataset({("train", "cat", "indoor"): 3, ("train", "dog", "outdoor"): 2}))
    view = bias_view(real)
    assert view.card.classes == ["indoor", "outdoor"] and view.card.bias_values == ["cat", "dog"]
    assert list(view.frame["label"]) == list(real.frame["bias"]) and list(view.frame["bias"]) == list(real.frame["label"])
    assert view.digest() != real.digest()                    # its own stage key


def test_a_bare_harmful_spec_says_what_it_needs():
    assert "harmful" in FILTERS.names()
    with pytest.raises(ValueError, match="needs its scorers: model=CKPT"):
        resolve(["harmful"])
    with pytest.raises(ValueError, match="needs its scorers"):
        make_filter("harmful")
    assert resolve(["grayscale"]) == ["grayscale"]


@pytest.mark.slow
def test_cli_scorers_then_synthesize_with_pruning_keeps_the_budget(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FFR_CACHE", str(tmp_path / "cache"))
    sets = [a for s in ["data.demo.per_digit=40", "data.demo.image_size=16"] + TINY for a in ("--set", s)]
    assert main(["prepare", "--bias-rate", "0.9", "--out", str(tmp_path / "prep"), *sets]) == 0
    real = tmp_path / "prep"
    assert main(["synthesize", "scorers", "--real", str(real), "--out", str(tmp_path / "scorers"), "--quiet",
                 "--class-quantile", "0.5", *sets]) == 0
    printed = capsys.readouterr().out
    assert "bias scorer:" in printed and "class floors (calibrated" in printed
    spec = next(line for line in printed.splitlines() if line.startswith("filter: "))[len("filter: "):]
    assert spec == f"harmful:scorers={tmp_path / 'scorers' / 'harmful.json'}"
    saved = json.loads((tmp_path / "scorers" / "harmful.json").read_text())
    assert not saved["model"].startswith("/") and saved["class_quantile"] == 0.5   # the folder can move (to S3)
    scorer = make_filter(spec)
    assert [w for w, _, _ in scorer.scorers] == ["class", "bias"]
    assert set(scorer.class_floors) == {"low_grass", "low_brick", "high_grass", "high_brick"}

    # the scorers' file as made: about half of each group is pruned, and every group still gets its count
    out = tmp_path / "pool"
    assert main(["synthesize", "--real", str(real), "--per-group", "12", "--out", str(out), "--quiet",
                 "--filter", spec, "--max-attempts", "50"]) == 0
    assert set(Manifest.load(out).group_counts().values()) == {12}      # the budget is kept: rejects re-rendered
    rejections = read_rejections(out / REJECTIONS_FILE)
    assert len(rejections) >= 8 and all(r["reason"].startswith("harmful: ") for r in rejections)
    assert any(r["reason"].startswith("harmful: does not show its class") for r in rejections)
    recorded = json.loads((out / "synthesis.json").read_text())["filters"][0]
    assert recorded.startswith("harmful(model=model.pt@") and "high_brick:" in recorded
    assert "rejected attempts per group:" in capsys.readouterr().out
    # the same run with another pruning is refused rather than mixed
    assert main(["synthesize", "--real", str(real), "--per-group", "12", "--out", str(out), "--quiet",
                 "--filter", spec + ",class_quantile=0.25", "--max-attempts", "50", *sets]) == 2
    assert "ffr: error:" in capsys.readouterr().err

    # no scorers given: `--real` trains them (with --set's settings) into $FFR_CACHE, once
    assert main(["synthesize", "--real", str(real), "--per-group", "4", "--out", str(tmp_path / "auto"), "--quiet",
                 "--filter", "harmful", "--max-attempts", "50", *sets]) == 0
    cached = sorted(p.name for p in (tmp_path / "cache" / "scorers").iterdir())
    assert len(cached) == 2
    concrete = resolve(["grayscale", "harmful:class_quantile=0.25"], Manifest.load(real), load_config(None, TINY),
                       backend=create_backend("procedural", Manifest.load(real).card))
    assert concrete[0] == "grayscale" and set(concrete[1]) == {"name", "model", "bias_model", "min_class_prob"}
    assert sorted(p.name for p in (tmp_path / "cache" / "scorers").iterdir()) == cached


def test_a_pipeline_takes_harmful_with_its_scorers_named(tmp_path, capsys):
    assert pipeline_problem("grayscale") is None and pipeline_problem("harmful:scorers=s3://b/harmful.json") is None
    assert "ffr synthesize scorers" in pipeline_problem("harmful")
    assert "class_quantile" in pipeline_problem("harmful:model=m.pt,class_quantile=0.2")
    assert main(["compile", "ffr", "--param", 'synthesis_filters=["harmful"]', "--out", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err
    assert "synthesis_filters: 'harmful' needs its scorers in a pipeline" in err
    assert main(["compile", "ffr", "--param", 'synthesis_filters=["harmful:scorers=s3://b/s/harmful.json"]',
                 "--out", str(tmp_path / "p.yaml")]) == 0


def test_bad_harmful_options_exit_2_naming_them(tmp_path, make_dataset, capsys):
    real = make_dataset({("train", "cat", "indoor"): 2, ("val", "cat", "indoor"): 1})
    base = ["synthesize", "--real", str(real), "--per-group", "1", "--out", str(tmp_path / "x"), "--quiet"]
    assert main(base + ["--filter", f"harmful:model={tmp_path / 'missing.pt'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ffr: error:") and "missing.pt" in err
    assert main(base + ["--filter", "harmful:model=x.pt,class_quantile=1.5"]) == 2
    assert "ffr: error:" in capsys.readouterr().err
    assert main(base + ["--filter", "harmful:bogus=1"]) == 2            # refused before any scorer is trained
    assert "unexpected keyword argument 'bogus'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    # a grid's config is checked before anything runs
    assert main(["compare", "--set", "synthesis.filters=[harmful:bogus=2]", "--out", str(tmp_path / "grid")]) == 2
    err = capsys.readouterr().err
    assert "synthesis.filters: filter 'harmful:bogus=2'" in err and not (tmp_path / "grid").exists()


@pytest.mark.slow
def test_compare_prunes_the_pool_it_shares(tmp_path, capsys):
    cfg = {"data": {"dataset": "demo", "image_size": 16, "demo": {"per_digit": 40, "image_size": 16}},
           "strategies": ["usb", "ffr"], "bias_rates": [0.9], "seeds": [0],
           "synthesis": {"filters": ["harmful:class_quantile=0.3"]},
           **{s: {"epochs": 1, "min_steps": 0, "patience": 0, "batch_size": 64} for s in ("train", "pretrain", "finetune")}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert main(["compare", "--config", str(tmp_path / "cfg.yaml"), "--out", str(out)]) == 0
    err = capsys.readouterr().err                       # what it does shows: the scorers' epochs, the pruning
    assert "harmful-sample scorers: scorer-class: epoch 1/1" in err and "scorer-bias: epoch 1/1" in err
    assert "synthetic pool: rejected attempts per group: high_brick " in err
    pool_dir = next((out / "synthetic").iterdir())
    info = json.loads((pool_dir / "synthesis.json").read_text())
    assert info["filters"][0].startswith("harmful(") and info["rejected"] > 0
    assert sorted(p.name for p in (out / "scorers").iterdir())         # trained once, in the grid's folder
    pool = Manifest.load(pool_dir)
    assert pool.group_counts() == {tuple(g.split("_")): n for g, n in info["counts"].items()}
    records = json.loads((out / "results.json").read_text())
    drawn = {r["strategy"]: sum(r["synthetic_per_group"].values()) for r in records}
    assert drawn["usb"] == drawn["ffr"] > 0                            # the same synthetic budget
