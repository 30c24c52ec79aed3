"""Every component's ``python_func`` on tiny artifacts (kfp's artifact classes pointing into a
temporary folder): the unit tier of the component tests. The pipeline tier runs them through the
KFP local runner (tests/test_pipelines.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("kfp")

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Metrics, Model  # noqa: E402

from ffr.integrations.kubeflow.components import (ALL, balance_data, base_image, check_config, collect_shards,  # noqa: E402
                                     comparison_report, evaluate_model, fetch_data_revision, prepare_data,
                                     synthesize_shard, train_model)
from ffr.rules import ConfigError  # noqa: E402
from ffr.data.manifest import Manifest, group_key  # noqa: E402
from ffr.integrations.dvc import dir_digest  # noqa: E402
from ffr.steps import synthetic_need  # noqa: E402
from ffr.synthesis import create_backend, plan_requests  # noqa: E402

STRATEGIES = ["usb", "asb", "ffr"]


def art(cls, path: Path):
    """A kfp artifact whose local path is ``path``."""
    return cls(name=path.name, uri=str(path), metadata={})


def assert_self_contained(directory: str | Path) -> Manifest:
    """The dataset in ``directory`` loads, and every image it names lies inside the folder."""
    m = Manifest.load(directory)
    root = Path(directory).resolve()
    assert all(root in p.resolve().parents for p in m.abs_paths())
    return m


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """prepare → synthesize (every work item) → collect, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("components")
    ds, card = art(Dataset, tmp / "dataset"), art(Artifact, tmp / "card.json")
    work = prepare_data.python_func(dataset=ds, card=card, source="demo", bias_rate=0.9, demo_per_digit=10,
                                    synthesis_for=STRATEGIES, num_shards=2)
    shards = []
    for i, item in enumerate(work):
        # The local runner hands numbers back as floats: the component must cope.
        item = {k: float(v) if isinstance(v, int) else v for k, v in item.items()}
        shard = art(Dataset, tmp / f"shard{i}")
        synthesize_shard.python_func(card=card, work=item, shard=shard, seed=3)
        shards.append(shard)
    pool = art(Dataset, tmp / "pool")
    collect_shards.python_func(card=card, shards=shards, pool=pool)
    return {"tmp": tmp, "dataset": ds, "card": card, "work": work, "shards": shards, "pool": pool}


def test_components_run_in_the_project_image_and_install_nothing():
    for comp in ALL:
        container = comp.component_spec.implementation.container
        assert container.image == base_image()
        assert "pip install" not in " ".join(container.command + (container.args or []))
        assert comp.component_spec.description, f"{comp.name} has no docstring for the KFP UI"


def test_base_image_names_a_repository_or_a_reference(monkeypatch):
    from ffr import __version__
    from ffr.revision import image_tag

    tag = image_tag()  # <version>-<12 hex digits of the commit>[-dirty], what `make image` builds
    assert tag.startswith(f"{__version__}-") and len(tag.split("-")[1]) == 12
    monkeypatch.setenv("FFR_IMAGE", "registry.example.com:5000/team/elsewhere")  # no back-channel: not read
    assert base_image() == f"ghcr.io/ffr-project/ffr:{tag}"
    assert base_image("registry.example.com:5000/team/ffr") == f"registry.example.com:5000/team/ffr:{tag}"
    assert base_image("registry.example.com:5000/team/ffr:0.1.0-cuda") == "registry.example.com:5000/team/ffr:0.1.0-cuda"


def test_prepare_outputs_a_self_contained_split_and_the_work_list(flow):
    ds = flow["dataset"]
    m = assert_self_contained(ds.path)
    assert ds.metadata["digest"] == m.digest()
    assert ds.metadata["dvc_md5"] == dir_digest(ds.path)  # the version `dvc add` would record
    assert ds.metadata["groups"]["train"] == {group_key(*g): n for g, n in m.select(split="train").group_counts().items()}
    assert json.loads(Path(flow["card"].path).read_text())["classes"] == m.card.classes
    need = synthetic_need(ds.path, STRATEGIES)
    by_group: dict = {}
    for item in flow["work"]:
        assert item["num_shards"] == 2 and item["count"] == need[(item["label"], item["bias"])]
        by_group.setdefault((item["label"], item["bias"]), []).append(item["shard"])
    assert by_group == {g: [0, 1] for g, n in need.items() if n > 0}


def test_prepare_builds_the_benchmark_the_run_form_names(tmp_path):
    """``demo_name`` reaches the Kubeflow steps: the faces benchmark is built inside the artifact
    and split to the bias rate; the work list plans its groups."""
    ds, card = art(Dataset, tmp_path / "dataset"), art(Artifact, tmp_path / "card.json")
    work = prepare_data.python_func(dataset=ds, card=card, source="demo", demo_name="faces", bias_rate=0.95,
                                    synthesis_for=["ffr"], num_shards=1)
    m = assert_self_contained(ds.path)
    assert m.card.name == "faces" and json.loads(Path(card.path).read_text())["bias_name"] == "lighting"
    assert len(m.select(split="train")) == 630 and ds.metadata["bias_rate"] == 0.95
    assert {(w["label"], w["bias"]) for w in work} == {(c, b) for c in ("face", "nonface") for b in ("warm", "cool")}
    with pytest.raises(ValueError, match="digits benchmark only"):
        prepare_data.python_func(dataset=art(Dataset, tmp_path / "d2"), card=art(Artifact, tmp_path / "c2.json"),
                                 source="demo", demo_name="faces", demo_per_digit=10)


def test_the_retraining_fetch_builds_the_benchmark_the_run_form_names(tmp_path):
    """``retrain`` with no ``data_repo``: its fetch step builds the benchmark ``demo_name`` names
    (the whole one, unsplit) and says which in the lineage it hands to the registry."""
    ds = art(Dataset, tmp_path / "fetched")
    fetch_data_revision.python_func(dataset=ds, demo_name="galaxies")
    m = assert_self_contained(ds.path)
    assert m.card.name == "galaxies" and ds.metadata["repo"] == "demo" and ds.metadata["demo_name"] == "galaxies"
    assert ds.metadata["dvc_md5"] == dir_digest(ds.path)
    with pytest.raises(ValueError, match="unknown built-in benchmark 'galaxy'"):
        fetch_data_revision.python_func(dataset=art(Dataset, tmp_path / "f2"), demo_name="galaxy")


def test_shards_collect_into_the_unsharded_pool(flow):
    pool = assert_self_contained(flow["pool"].path)
    need = synthetic_need(flow["dataset"].path, STRATEGIES)
    assert pool.group_counts() == need
    assert flow["pool"].metadata["rows"] == sum(need.values()) and flow["pool"].metadata["shards"] == len(flow["shards"])
    assert flow["pool"].metadata["dvc_md5"] == dir_digest(flow["pool"].path)
    # The same images (by seed) as one unsharded synthesis would render.
    backend = create_backend("procedural", pool.card)
    assert sorted(pool.frame["seed"].astype(int)) == sorted(r.seed for r in plan_requests(backend, need, base_seed=3))
    for shard in flow["shards"]:
        assert shard.metadata["synthetic"] == shard.metadata["rows"] > 0


def test_collect_of_no_shards_is_an_empty_pool(flow, tmp_path):
    pool = art(Dataset, tmp_path / "pool")
    collect_shards.python_func(card=flow["card"], shards=[], pool=pool)
    assert len(Manifest.load(pool.path)) == 0 and pool.metadata["rows"] == 0


@pytest.mark.slow
def test_balance_train_evaluate_report(flow, tmp_path):
    ds, pool = flow["dataset"], flow["pool"]
    sets = art(Dataset, tmp_path / "sets")
    balance_data.python_func(real=ds, synthetic=pool, training_sets=sets, strategy="ffr")
    pre, fine = assert_self_contained(Path(sets.path) / "pretrain"), assert_self_contained(Path(sets.path) / "finetune")
    assert pre.is_synthetic().all() and not fine.is_synthetic().any()
    assert sets.metadata["stages"]["pretrain"]["n"] == len(pre) and sets.metadata["strategy"] == "ffr"

    def plan(**form):
        """The run plan the check step makes of a run form (FFR alone)."""
        plan, synthesis_for, fingerprint = check_config.python_func(
            **{"pretrain_epochs": 1, "finetune_epochs": 1, "min_steps": 0, "pretrain_lr": 1e-3, "finetune_lr": 1e-3,
               "device": "cpu", **form})
        assert synthesis_for == ["ffr"] and fingerprint == "demo"
        return plan

    # a step-2 variant and objective options reach the training loop through the run plan; an
    # unknown option, or one that is a run-form field of its own, is named by the check step
    with pytest.raises(ConfigError, match=r"finetune_options: unknown field\(s\) \['freeze_stage'\]"):
        plan(finetune_options={"freeze_stage": 1})
    with pytest.raises(ConfigError, match=r"finetune_options: \['lr'\] are parameters of their own"):
        plan(finetune_options={"lr": 0.1})
    step1, step2 = art(Model, tmp_path / "step1"), art(Model, tmp_path / "step2")
    variant = plan(objective="groupdro", objective_options={"eta": 0.05},
                   finetune_options={"select_init": True, "freeze_stages": 1.0})  # Struct: 1 arrives as 1.0
    assert variant["strategies"]["ffr"]["pretrain"]["objective"] == "erm"  # FFR's step 1 is always ERM
    train_model.python_func(training_sets=sets, val_data=ds, model=step1, run_plan=variant, strategy="ffr",
                            stage="pretrain")
    train_model.python_func(training_sets=sets, val_data=ds, model=step2, run_plan=variant, strategy="ffr",
                            stage="finetune", init_model=step1)
    history = [json.loads(line) for line in (Path(step2.path) / "model.pt.history.jsonl").read_text().splitlines()]
    assert history[0]["epoch"] == -1  # select_init: step 1's weights were evaluated as epoch -1
    assert any(k.startswith("groupdro/q/") for k in history[-1])
    assert (Path(step2.path) / "model.pt").is_file()
    # a stage planned to start from another needs it: trained in the step, or handed in
    with pytest.raises(ValueError, match="starts from stage 'pretrain'"):
        train_model.python_func(training_sets=sets, val_data=ds, model=art(Model, tmp_path / "bad"),
                                run_plan=variant, strategy="ffr", stage="finetune")
    # data-parallel in 2 processes (torchrun, gloo on the CPU): one checkpoint, one history
    ddp = art(Model, tmp_path / "step2_ddp")
    train_model.python_func(training_sets=sets, val_data=ds, model=ddp, stage="finetune", init_model=step1,
                            run_plan=plan(finetune_epochs=2, train_processes=2), strategy="ffr")
    lines = (Path(ddp.path) / "model.pt.history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]
    assert ddp.metadata["processes"] == 2 and ddp.metadata["train_digest"] == fine.digest()
    assert sorted(p.name for p in Path(ddp.path).iterdir()) == ["model.pt", "model.pt.history.jsonl", "model.pt.json"]
    assert 0.0 <= ddp.metadata["val_worst_group_acc"] <= 1.0
    assert step2.metadata["stage"] == "finetune" and step2.metadata["train_digest"] == fine.digest()
    assert step2.metadata["strategy"] == "ffr" and step2.metadata["objective"] == "groupdro"
    assert step2.metadata["train_dvc_md5"].endswith(".dir")
    assert 0.0 <= step2.metadata["val_worst_group_acc"] <= 1.0
    # every stage of a strategy in one step (how the comparison trains a baseline): the same
    # models as one step per stage
    both = art(Model, tmp_path / "both")
    train_model.python_func(training_sets=sets, val_data=ds, model=both, run_plan=variant, strategy="ffr")
    assert (Path(both.path) / "pretrain" / "model.pt").is_file() and both.metadata["stage"] == "finetune"
    assert (Path(both.path) / "model.pt.history.jsonl").read_text() == \
        (Path(step2.path) / "model.pt.history.jsonl").read_text()

    metrics, confusion = art(Metrics, tmp_path / "metrics"), art(ClassificationMetrics, tmp_path / "confusion")
    report = art(HTML, tmp_path / "report.html")
    evaluate_model.python_func(model=step2, data=ds, metrics=metrics, confusion=confusion, report=report,
                               strategy="ffr", synthetic=pool, device="cpu")
    result = json.loads(Path(metrics.path).read_text())
    test = Manifest.load(ds.path).select(split="test")
    assert result["strategy"] == "ffr" and result["n"] == len(test)
    assert metrics.metadata["test/worst_group_acc"] == result["worst_group_acc"]
    for g, v in result["groups"].items():
        assert metrics.metadata[f"test/group/{g}/acc"] == v["acc"]
    matrix = confusion.metadata["confusionMatrix"]
    assert sum(sum(r["row"]) for r in matrix["rows"]) == len(test)
    html = Path(report.path).read_text()
    # 4 synthetic samples per group (every group of this pool has at least 4), embedded as PNG.
    assert html.count("data:image/png;base64,") == 4 * len(test.card.groups)
    assert all(g in html for g in test.card.group_keys)


def test_comparison_report_orders_strategies_and_measures_ffr_gain(tmp_path):
    def evaluation(strategy, wga):
        path = tmp_path / f"{strategy}.json"
        groups = {"a_x": {"acc": wga, "n": 5}, "a_y": {"acc": 1.0, "n": 5}}
        path.write_text(json.dumps({"strategy": strategy, "worst_group_acc": wga, "worst_group": "a_x",
                                    "balanced_acc": (wga + 1) / 2, "average_acc": (wga + 1) / 2, "groups": groups}))
        return art(Metrics, path)

    report, summary = art(HTML, tmp_path / "report.html"), art(Metrics, tmp_path / "summary")
    comparison_report.python_func(baselines=[evaluation("asb", 0.4), evaluation("none", 0.2), evaluation("usb", 0.5)],
                                  product=evaluation("ffr", 0.75), report=report, summary=summary)
    data = json.loads(Path(summary.path).read_text())
    assert list(data["results"]) == ["none", "usb", "asb", "ffr"]
    assert data["ffr_gain"]["best_baseline"] == "usb"
    assert summary.metadata["ffr_gain_wga"] == pytest.approx(0.25)
    assert summary.metadata["none/test/worst_group_acc"] == pytest.approx(0.2)
    html = Path(report.path).read_text()
    assert html.index(">none<") < html.index(">usb<") < html.index(">asb<") < html.index(">ffr<")
    assert "+0.250" in html
