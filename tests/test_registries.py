"""Every registered strategy, synthesis backend and filter, each through the one entry point
that uses it (backbones, objectives and pipelines have their own parametrized tests; adapters:
tests/test_public_datasets.py)."""

from __future__ import annotations

import pytest

from helpers import write_png
from ffr.balance import STRATEGIES, stage_plan, synthetic_budget, usb_need
from ffr.data.manifest import DatasetCard, Manifest
from ffr.synthesis import SYNTHESIS_BACKENDS
from ffr.synthesis.filters import FILTERS, make_filter

COUNTS = {("cat", "indoor"): 20, ("cat", "outdoor"): 2, ("dog", "indoor"): 3, ("dog", "outdoor"): 18}


def _real_and_pool(card, tmp_path):
    rows = [{"path": f"real/{l}_{b}_{i}.png", "label": l, "bias": b, "split": "train", "source": "real"}
            for (l, b), n in COUNTS.items() for i in range(n)]
    pool = [{"path": f"syn/{l}_{b}/{i}.png", "label": l, "bias": b, "split": "train", "source": "synthetic",
             "seed": i, "generator": "test"} for l, b in card.groups for i in range(40)]
    return Manifest.from_records(rows, card, tmp_path), Manifest.from_records(pool, card, tmp_path)


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_plans_what_it_declares(name, card, tmp_path):
    """The stage plan, the budget and the drawn sets agree: each stage trains on the kind of data
    its plan names, the synthetic rows drawn are the budget, a stage starts only from an earlier
    one, and the budget never exceeds USB's total (the paper's equal-budget rule)."""
    strategy = STRATEGIES.get(name)
    real, pool = _real_and_pool(card, tmp_path)
    budget = strategy.synthetic_budget(real.group_counts())
    assert budget == synthetic_budget(name, COUNTS)
    assert sum(budget.values()) <= sum(usb_need(COUNTS).values())
    assert all(n >= 0 for n in budget.values())
    plan = strategy.plan(real, pool)
    assert [s.name for s in plan.stages] == list(strategy.stage_names)
    sizes = dict(strategy.stage_sizes(len(real), sum(budget.values())))
    drawn = 0
    for i, stage in enumerate(plan.stages):
        synthetic = int(stage.train.is_synthetic().sum())
        kind = stage.plan.data
        assert len(stage.train) == sizes[stage.name]
        if kind == "real":
            assert synthetic == 0 and len(stage.train) == len(real)
        elif kind == "synthetic":
            assert synthetic == len(stage.train) == sum(budget.values())
        else:
            assert synthetic == sum(budget.values()) and len(stage.train) - synthetic == len(real)
        drawn = max(drawn, synthetic)
        if stage.init_from is not None:
            assert stage.init_from in [s.name for s in plan.stages[:i]]
        assert stage.plan.group_by in ("label_bias", "label_bias_source")
        assert stage.plan.group_by == ("label_bias_source" if kind == "mixed" else "label_bias")
        assert stage_plan(stage.name).objective_for("groupdro") == stage.plan.objective_for("groupdro")
    assert drawn == sum(budget.values())
    assert plan.summary()["synthetic_per_group"] == {f"{l}_{b}": n for (l, b), n in budget.items()}
    if strategy.uses_synthetic:
        with pytest.raises(ValueError, match="needs a synthetic pool"):
            strategy.plan(real, None)


def test_ffr_step_one_is_erm_in_one_place():
    assert stage_plan("pretrain").objective_for("groupdro") == "erm"
    assert stage_plan("finetune").objective_for("groupdro") == "groupdro"
    assert stage_plan("train").objective_for("dfr") == "dfr"
    with pytest.raises(KeyError, match="known: finetune, pretrain, train"):
        stage_plan("warmup")


def _backend_options(name, card, tmp_path):
    """(the card, the backend's options) of a tiny run of backend ``name``."""
    if name == "procedural":
        return card, {"image_size": 16}
    if name == "folder":
        src = tmp_path / "src"
        for i, (label, bias) in enumerate(card.groups):
            for j in range(2):
                write_png(src / f"{label}_{bias}" / f"{j}.png", 10 * i + j)
        return card, {"source": str(src)}
    if name == "diffusers":
        pytest.importorskip("diffusers")
        from ffr.synthesis.tiny import build_tiny_pipeline

        birds = DatasetCard(name="waterbirds", classes=["landbird", "waterbird"], bias_values=["land", "water"])
        return birds, {"model": str(build_tiny_pipeline(tmp_path / "tiny-sd")), "prompts": "waterbirds",
                       "steps": 1, "height": 32, "width": 32}
    raise AssertionError(f"synthesis backend {name!r} has no options here: add them")


@pytest.mark.parametrize("name", SYNTHESIS_BACKENDS.names())
def test_every_synthesis_backend_renders_through_the_one_entry_point(name, card, tmp_path):
    """Each backend through synthesize_dataset (what `ffr synthesize`, the Kubeflow shard step and
    compare's pool call): every group rendered, the record written, a rerun renders nothing."""
    from ffr.synthesis.records import CONTACT_SHEET_FILE, INFO_FILE, synthesize_dataset

    card, options = _backend_options(name, card, tmp_path)
    counts = {g: 2 for g in card.groups}
    run, record = synthesize_dataset(name, card, counts, tmp_path / "out", options, base_seed=3, batch_size=2)
    assert run.manifest.group_counts() == counts
    assert (run.manifest.frame["source"] == "synthetic").all()
    assert (record / INFO_FILE).is_file() and (record / CONTACT_SHEET_FILE).is_file()
    again, _ = synthesize_dataset(name, card, counts, tmp_path / "out", options, base_seed=3, batch_size=2)
    assert again.info["resumed"] == len(run.manifest) and again.info["generated"] == 0


def _filter_spec(name, tmp_path):
    if name == "grayscale":
        return "grayscale:tolerance=3"
    if name == "clip":
        pytest.importorskip("transformers")
        from ffr.synthesis.tiny import build_tiny_clip

        return f"clip:model={build_tiny_clip(tmp_path / 'clip')},min_score=-1000"
    if name == "harmful":  # two untrained scorers (the card's classes, its bias values) built here
        import torch

        from ffr.train.backbones import create_model
        from ffr.train.loop import save_checkpoint

        paths = []
        for what, classes in (("class", ["cat", "dog"]), ("bias", ["indoor", "outdoor"])):
            torch.manual_seed(0)
            paths.append(save_checkpoint(tmp_path / f"{what}.pt", create_model("tiny_cnn", 2),
                                         {"backbone": "tiny_cnn", "classes": classes, "image_size": 16,
                                          "normalize": "imagenet"}))
        return f"harmful:model={paths[0]},bias_model={paths[1]},min_class_prob=0.5"
    raise AssertionError(f"filter {name!r} has no spec here: add one")


@pytest.mark.parametrize("name", FILTERS.names())
def test_every_filter_builds_from_its_spec_and_judges_images(name, tmp_path):
    from PIL import Image

    from ffr.synthesis.generation import ImageRequest

    f = make_filter(_filter_spec(name, tmp_path))
    assert f.spec.startswith(name)
    images = [Image.new("RGB", (16, 16), (200, 30, 30)), Image.new("RGB", (16, 16), (90, 90, 90))]
    requests = [ImageRequest("cat", "indoor", i, i, "a photo of a cat indoors") for i in range(2)]
    verdicts = f(images, requests)
    assert len(verdicts) == 2 and all(v is None or isinstance(v, str) for v in verdicts)
    if name == "grayscale":
        assert verdicts[0] is None and verdicts[1] is not None


def test_a_mixed_strategys_grouping_falls_back_when_nothing_synthetic_was_drawn(card, tmp_path):
    """(Y, B, G) on a set without synthetic rows would leave half of GroupDRO's groups empty: the
    stage trains on (Y, B), as the loop's own `auto` does. `ffr train --stage train` (strategy
    unknown) groups by what the set holds."""
    from ffr.config import TrainConfig
    from ffr.train.stage import StageSpec

    real, pool = _real_and_pool(card, tmp_path)
    mixed = STRATEGIES.get("usb").stage("train")
    from ffr.train.request import StageRequest

    def request(settings=None, group_by=mixed.group_by):
        return StageRequest("train", settings or TrainConfig(), group_by=group_by)

    assert StageSpec(request(), real, real).loop_settings().group_by == "label_bias"
    both = Manifest.concat([real, pool])
    assert StageSpec(request(), both, real).loop_settings().group_by == "label_bias_source"
    assert stage_plan("train").group_by == "auto"
    assert StageSpec(request(TrainConfig(group_by="label_bias_source"), "label_bias"), real,
                     real).loop_settings().group_by == "label_bias_source"  # an explicit choice wins
