"""The paper's protocol on the cluster: the ``sweep`` pipeline runs the grid of ``ffr sweep`` as
tasks — the data once, every trained stage once by key, level by level, the cells from the stage
store, the same selection and tables — and gives the same numbers as ``ffr sweep``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kfp")

from ffr.cli import main  # noqa: E402

# The tiny grid of the equivalence: 2 strategies (FFR among them), 2 objectives (DFR among them),
# 2 seeds, 2 candidates each.
TINY = {
    "data": {"dataset": "demo", "image_size": 16, "demo": {"per_digit": 10, "image_size": 16}},
    "objectives": ["erm", "dfr"], "strategies": ["none", "ffr"], "bias_rates": [0.9], "seeds": [0, 1],
    "train": {"epochs": 2, "min_steps": 0, "batch_size": 32},
    "pretrain": {"epochs": 2, "min_steps": 0, "batch_size": 32},
    "finetune": {"epochs": 2, "min_steps": 0, "batch_size": 32},
    "objective_options": {"dfr": {"n_refits": 3}}, "device": "cpu", "equal_search": True,
    "search": {"none": {"train.lr": [1e-3, 1e-4]}, "ffr": {"finetune.lr": [1e-3, 1e-4]}},
}


def _key(r: dict) -> tuple:
    return r["dataset"], r["strategy"], r["objective"], r["bias_rate"], r["seed"], json.dumps(r["hparams"], sort_keys=True)


def train_outputs(run_dir: Path) -> list[dict]:
    """What each training task of a local sweep run reports: the stages it trained and found."""
    return [json.loads(p.read_text())["parameterValues"]["Output"]
            for p in run_dir.glob("outputs/**/train-sweep-batch*/executor_output.json")]


def test_the_plan_trains_each_shared_stage_once_and_orders_it_by_dependency(tmp_path):
    from ffr.checks import sweep_config
    from ffr.sweep_tasks import sweep_data, sweep_plan

    cfg = sweep_config(yaml.safe_dump(TINY))
    sweep_data(cfg, tmp_path)
    plan = sweep_plan(cfg, tmp_path, stages_per_task=3, cells_per_task=5)
    level0 = [s for b in plan["levels"][0] for s in b["stages"]]
    level1 = [s for b in plan["levels"][1] for s in b["stages"]]
    # FFR's step 1 once per seed (shared by its candidates and both objectives); none's stages and
    # FFR's step 2 once per (candidate, seed): DFR trains as ERM, so it shares them
    assert sorted(s["stage"] for s in level0) == ["pretrain"] * 2 + ["train"] * 4
    assert sorted(s["stage"] for s in level1) == ["finetune"] * 4
    keys = [s["key"] for s in level0 + level1]
    assert len(keys) == len(set(keys)) == plan["stages"] == 10 and plan["depth"] == 2
    assert all(len(b["stages"]) <= 3 for level in plan["levels"] for b in level)
    assert sum(len(b["cells"]) for b in plan["cells"]) == 16 and all(len(b["cells"]) <= 5 for b in plan["cells"])


def test_the_sweep_pipeline_is_checked_before_it_is_compiled_and_compiles_for_a_cluster(tmp_path, capsys):
    from kfp import components
    from google.protobuf import json_format

    from tests.test_pipelines import dag_tasks, load_compiled

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "bias_rates": [1.5], "strategies": ["none", "fffr"]}))
    assert main(["compile", "sweep", "--param", f"sweep_config=@{bad}", "--out", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err
    assert "bias_rates[0]: 1.5 must be a number in (0, 1)" in err and "unknown balancing strategy 'fffr'" in err
    assert not (tmp_path / "x.yaml").exists()

    out = tmp_path / "sweep.yaml"
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(TINY))
    assert main(["compile", "sweep", "--gpu", "--parallelism", "4", "--param", f"sweep_config=@{good}",
                 "--param", "sweep_stage_store=s3://bucket/stages", "--out", str(out)]) == 0
    assert components.load_component_from_file(str(out)).name == "ffr-sweep"
    spec, platform = load_compiled(out)
    loops = [t for t in dag_tasks(spec).values() if t.WhichOneof("iterator")]
    assert len(loops) == 3 and all(t.iterator_policy.parallelism_limit == 4 for t in loops)  # 2 levels, the cells
    executors = spec.deployment_spec.fields["executors"].struct_value.fields
    train = json_format.MessageToDict(executors["exec-train-sweep-batch"].struct_value)["container"]
    assert train["resources"]["accelerator"]["resourceCount"] == "1"
    assert yaml.safe_load(spec.root.input_definitions.parameters["sweep_config"].default_value.string_value) == TINY
    # a multi-line config can be given: it becomes one line of JSON in the compiled YAML, whose
    # header comment repeats the defaults (a multi-line default would break it)
    assert "\n" not in spec.root.input_definitions.parameters["sweep_config"].default_value.string_value
    # loaded back, its integer defaults (stored as 8.0) pass the check the first step makes
    from ffr.integrations.kubeflow.pipelines.run import pipeline_parameters, typed_params

    loaded = components.load_component_from_file(str(out))
    assert pipeline_parameters(loaded)["sweep_stages_per_task"] == 8 and typed_params("sweep", loaded, {}) == {}


@pytest.mark.slow
def test_the_sweep_pipeline_gives_ffr_sweeps_numbers_and_trains_each_stage_once(tmp_path):
    from ffr.experiment import sweep
    from ffr.integrations.kubeflow.pipelines.run import run_local
    from ffr.checks import sweep_config

    text = yaml.safe_dump(TINY)
    reference = sweep(sweep_config(text), tmp_path / "ffr-sweep", progress=False, plots=False)
    params = {"sweep_config": text, "sweep_stages_per_task": 3, "sweep_cells_per_task": 5}
    run = run_local("sweep", params, tmp_path / "runs", progress=False)
    assert isinstance(run.results, list) and len(run.results) == len(reference) == 16
    by_key = {_key(r): r for r in reference}
    for r in run.results:  # the same metrics, to the last bit, and the same choice
        ref = by_key[_key(r)]
        assert json.dumps(r["test"], sort_keys=True) == json.dumps(ref["test"], sort_keys=True)
        assert json.dumps(r["val"], sort_keys=True) == json.dumps(ref["val"], sort_keys=True)
        assert r["selected"] == ref["selected"]
    out = run.output.parent
    assert (out / "results.md").read_text() == (tmp_path / "ffr-sweep" / "results.md").read_text()
    # every stage trained exactly once across all tasks, none found: the store held nothing
    reports = train_outputs(run.run_dir)
    trained = [k for r in reports for k in r["trained"]]
    assert len(trained) == len(set(trained)) == 10 and not any(r["found"] for r in reports)
    store = run.run_dir / "stages"
    assert sorted(p.name for p in store.iterdir()) == sorted(trained)
    # a second run over the same store trains nothing, and gives the same numbers
    again = run_local("sweep", {**params, "sweep_stage_store": str(store)}, tmp_path / "runs", progress=False)
    reports = train_outputs(again.run_dir)
    assert not any(r["trained"] for r in reports) and sorted(k for r in reports for k in r["found"]) == sorted(trained)
    assert [r["test"] for r in again.results] == [r["test"] for r in run.results]
