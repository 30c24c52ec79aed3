"""Pipelines: every pipeline compiled and validated offline (the YAML loads back as a component
and parses into ``PipelineSpec`` / ``PlatformSpec``, with resource requests, accelerators,
retries, caching and secrets where they belong), and both pipelines executed end to end by the
KFP local runner on tiny demo settings, through ``ffr run`` and ``run_local``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kfp")

from google.protobuf import json_format  # noqa: E402
from kfp import components as kfp_components  # noqa: E402
from kfp.pipeline_spec import pipeline_spec_pb2  # noqa: E402

from ffr.integrations.kubeflow.components import base_image  # noqa: E402
from ffr.cli import main  # noqa: E402
from ffr.data.manifest import group_key  # noqa: E402
from ffr.steps import prepare_step as prepare  # noqa: E402
from ffr.results.views import format_group_table  # noqa: E402
from ffr.integrations.kubeflow.pipelines import PIPELINES, Platform, get_pipeline  # noqa: E402
from ffr.integrations.kubeflow.pipelines.run import PipelineError, compile_pipeline, pipeline_parameters, run_local  # noqa: E402
from ffr.rules import ConfigError  # noqa: E402

TINY = {"data_demo_per_digit": 10, "data_bias_rate": 0.9, "synthesis_shards": 1, "train_pretrain_epochs": 1, "train_finetune_epochs": 1, "train_min_steps": 0,
        "train_device": "cpu"}
# Executor name prefix → step kind (ffr/integrations/kubeflow/pipelines/platform.py).
KINDS = {"exec-check-config": "check", "exec-plan-baselines": "check", "exec-check-sweep-config": "check",
         "exec-sweep-work": "check", "exec-prepare-sweep-data": "synthesis", "exec-plan-sweep-stages": "data",
         "exec-train-sweep-batch": "train", "exec-evaluate-sweep-batch": "evaluate", "exec-sweep-report": "evaluate",
         "exec-register-sweep-selection": "track", "exec-finish-tracking": "track", "exec-prepare-data": "data", "exec-synthesize-shard": "synthesis", "exec-collect-shards": "data",
         "exec-balance-data": "data", "exec-train-model": "train", "exec-evaluate-model": "evaluate",
         "exec-comparison-report": "evaluate", "exec-start-tracking": "track", "exec-register-model": "track",
         "exec-fetch-data-revision": "data"}
# Data steps that must never be cached: a data revision (branch, tag) can move.
UNCACHED = {"exec-fetch-data-revision"}


def kind_of(executor: str) -> str:
    base = executor.rsplit("-", 1)[0] if executor.rsplit("-", 1)[-1].isdigit() else executor
    return KINDS[base]


def load_compiled(path: Path):
    docs = list(yaml.load_all(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
    assert len(docs) == 2, "expected the pipeline spec and the Kubernetes platform spec"
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
    platform = json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec())
    return spec, platform


def all_tasks(spec):
    """(task spec, executor label) of every task, in the root DAG and in every sub-DAG (loops)."""
    dags = [spec.root.dag] + [c.dag for c in spec.components.values() if c.HasField("dag")]
    for dag in dags:
        for task in dag.tasks.values():
            comp = spec.components[task.component_ref.name]
            if comp.executor_label:
                yield task, comp.executor_label


@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
@pytest.mark.parametrize("name", PIPELINES.names())
def test_compiled_pipeline_is_valid_and_cluster_ready(tmp_path, name, gpu):
    path = compile_pipeline(name, tmp_path / f"{name}.yaml", Platform(gpu=gpu, accelerator_type="nvidia.com/gpu",
                                                                      accelerator_limit=2))
    assert kfp_components.load_component_from_file(str(path)).name == get_pipeline(name).name
    spec, platform = load_compiled(path)

    params = spec.root.input_definitions.parameters
    assert set(params) == set(pipeline_parameters(get_pipeline(name)))
    missing = [k for k, p in params.items() if not p.HasField("default_value")]
    assert not missing, f"parameters without a default break the UI's run form: {missing}"

    executors = spec.deployment_spec.fields["executors"].struct_value.fields
    k8s = json_format.MessageToDict(platform.platforms["kubernetes"].deployment_spec)["executors"]
    for exe, value in executors.items():
        container = json_format.MessageToDict(value.struct_value)["container"]
        res = container["resources"]
        assert container["image"] == base_image()
        assert res["resourceCpuRequest"] and res["resourceMemoryRequest"], exe
        if gpu and kind_of(exe) in ("synthesis", "train"):
            assert res["accelerator"]["resourceType"] == "nvidia.com/gpu" and res["accelerator"]["resourceCount"] == "2"
        else:
            assert "accelerator" not in res, exe
        secrets = {s["secretName"]: s for s in k8s[exe]["secretAsEnv"]}
        assert set(secrets) == {"ffr-s3", "ffr-mlflow"} and all(s["optional"] for s in secrets.values())
        envs = {e["envVar"] for s in secrets.values() for e in s["keyToEnv"]}
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI"} <= envs

    kinds_seen = set()
    for task, exe in all_tasks(spec):
        kind = kind_of(exe)
        kinds_seen.add(kind)
        retry = task.retry_policy
        if kind in ("synthesis", "train"):
            assert retry.max_retry_count == 3 and retry.backoff_duration.seconds == 60 and retry.backoff_factor == 2
        else:
            assert retry.max_retry_count == 0, task.task_info.name
        cached = kind in ("data", "synthesis") and exe not in UNCACHED
        assert task.caching_options.enable_cache == cached, task.task_info.name
    assert kinds_seen == {"check", "data", "synthesis", "train", "evaluate", "track"}


def dag_tasks(spec) -> dict:
    """Task name → task spec over the root DAG and every sub-DAG, with each group's own tasks."""
    dags = [spec.root.dag] + [c.dag for c in spec.components.values() if c.HasField("dag")]
    return {name: task for dag in dags for name, task in dag.tasks.items()}


@pytest.mark.parametrize("name", PIPELINES.names())
def test_every_step_runs_after_the_config_check_inside_an_exit_handler(tmp_path, name):
    spec, _ = load_compiled(compile_pipeline(name, tmp_path / f"{name}.yaml"))
    tasks = dag_tasks(spec)
    # the exit task: runs whatever happened, with the pipeline's final status
    exits = [n for n, t in tasks.items() if t.trigger_policy.strategy == t.trigger_policy.ALL_UPSTREAM_TASKS_COMPLETED]
    assert exits == ["finish-tracking"]
    assert any(p.HasField("task_final_status") for p in tasks["finish-tracking"].inputs.parameters.values())
    (group,) = tasks["finish-tracking"].dependent_tasks
    # every step of the group depends, directly or through others, on the config check
    parents = {n: set(t.dependent_tasks) for n, t in tasks.items()}
    # a sub-DAG's tasks inherit its group task's dependencies
    for comp_name, comp in spec.components.items():
        if comp.HasField("dag"):
            owner = next((n for n, t in tasks.items() if t.component_ref.name == comp_name), None)
            for inner in comp.dag.tasks:
                parents[inner] |= parents.get(owner, set()) | ({owner} if owner else set())

    def ancestors(n, seen=None):
        seen = set() if seen is None else seen
        for d in parents.get(n, ()):
            if d not in seen:
                seen.add(d)
                ancestors(d, seen)
        return seen

    steps = [n for n, t in tasks.items() if spec.components[t.component_ref.name].executor_label]
    check = "check-sweep-config" if name == "sweep" else "check-config"
    for n in steps:
        if n not in (check, "finish-tracking"):
            assert check in ancestors(n), f"{n} may run before the config check"
    if name != "sweep":  # the data steps' cache keys on the data: prepare takes the check's fingerprint
        digest = tasks["prepare-data"].inputs.parameters["source_digest"].task_output_parameter
        assert digest.producer_task == "check-config" and digest.output_parameter_key == "fingerprint"
    assert group.startswith("exit-handler")


def test_cluster_scheduling_options_reach_the_compiled_yaml(tmp_path, capsys):
    out = tmp_path / "c.yaml"
    assert main(["compile", "comparison", "--out", str(out), "--gpu", "--node-selector", "pool=gpu",
                 "--toleration", "nvidia.com/gpu:NoSchedule", "--toleration", "team=ml:NoExecute",
                 "--shm-size", "8Gi", "--parallelism", "3"]) == 0
    spec, platform = load_compiled(out)
    k8s = json_format.MessageToDict(platform.platforms["kubernetes"].deployment_spec)["executors"]
    for exe, cfg in k8s.items():
        if kind_of(exe) in ("synthesis", "train"):
            assert cfg["nodeSelector"]["labels"] == {"pool": "gpu"}, exe
            assert {(t["key"], t["operator"], t.get("value"), t["effect"]) for t in cfg["tolerations"]} == \
                {("nvidia.com/gpu", "Exists", None, "NoSchedule"), ("team", "Equal", "ml", "NoExecute")}
        else:
            assert "nodeSelector" not in cfg and "tolerations" not in cfg, exe
        shm = [v for v in cfg.get("emptyDirMounts", []) if v["mountPath"] == "/dev/shm"]
        if kind_of(exe) == "train":
            assert shm == [{"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory", "sizeLimit": "8Gi"}]
        else:
            assert not shm, exe
    loops = [t for t in dag_tasks(spec).values() if t.WhichOneof("iterator")]
    assert len(loops) == 2 and all(t.iterator_policy.parallelism_limit == 3 for t in loops)


@pytest.mark.parametrize("args, msg", [(["--toleration", "a:Sometimes"], "EFFECT one of"),
                                       (["--node-selector", "pool"], "LABEL=VALUE"),
                                       (["--parallelism", "-1"], "--parallelism")])
def test_bad_scheduling_options_are_refused(tmp_path, capsys, args, msg):
    assert main(["compile", "ffr", "--out", str(tmp_path / "x.yaml"), *args]) == 2
    assert msg in capsys.readouterr().err and not (tmp_path / "x.yaml").exists()


@pytest.mark.parametrize("name", [n for n in PIPELINES.names() if n != "sweep"])  # the sweep: test_sweep_pipeline
def test_the_training_steps_take_the_checked_run_plan_and_follow_the_stage_plan(tmp_path, name):
    """Every training step takes the check step's run plan (the requests, whole) and names its
    strategy and stage; FFR's steps are laid out from its stage plan (step 2 starting from step
    1's model), a baseline trains all its strategy's stages in one step."""
    spec, _ = load_compiled(compile_pipeline(name, tmp_path / f"{name}.yaml"))
    wired, names = {}, {n: t for n, t in dag_tasks(spec).items()}
    for task_name, task in names.items():
        exe = spec.components[task.component_ref.name].executor_label
        if not exe or kind_of(exe) != "train":
            continue
        params, artifacts = task.inputs.parameters, task.inputs.artifacts
        plan = params["run_plan"]
        # a baseline's step takes its item of the check step's "baselines" (a run plan of its own)
        assert (plan.task_output_parameter.producer_task, plan.task_output_parameter.output_parameter_key) == \
            ("check-config", "plan") or plan.component_input_parameter.startswith(
                "pipelinechannel--plan-baselines-Output-loop-item")
        stage = params["stage"].runtime_value.constant.string_value if "stage" in params else ""
        strategy = params["strategy"]
        strategy = strategy.runtime_value.constant.string_value if strategy.HasField("runtime_value") else "<loop>"
        init = artifacts["init_model"].task_output_artifact.producer_task if "init_model" in artifacts else None
        wired[(strategy, stage)] = (task.task_info.name, init, task_name)
    by_task = {v[2]: k for k, v in wired.items()}
    laid = {k: (v[0], by_task.get(v[1])) for k, v in wired.items()}
    assert {k: v for k, v in laid.items() if k[0] == "ffr"} == {
        ("ffr", "pretrain"): ("ffr step 1: pretrain on synthetic", None),
        ("ffr", "finetune"): ("ffr step 2: finetune on real", ("ffr", "pretrain"))}
    if name == "comparison":
        assert laid[("<loop>", "")] == ("train baseline", None)
    assert len(laid) == 2 + (name == "comparison")


@pytest.mark.parametrize("name", ["ffr", "comparison"])
def test_the_benchmark_fields_reach_the_check_and_the_data_step(tmp_path, name):
    spec, _ = load_compiled(compile_pipeline(name, tmp_path / f"{name}.yaml"))
    wired = {}
    for task, exe in all_tasks(spec):
        base = exe.rsplit("-", 1)[0] if exe.rsplit("-", 1)[-1].isdigit() else exe
        if base in ("exec-check-config", "exec-prepare-data"):
            params = task.inputs.parameters
            wired[base] = {k: params[k].component_input_parameter.removeprefix("pipelinechannel--")
                           for k in ("demo_name", "demo_per_digit")}
    # each step's input (its own name) from the run form's field (the form's name)
    assert wired == {b: {"demo_name": "data_demo_name", "demo_per_digit": "data_demo_per_digit"}
                     for b in ("exec-check-config", "exec-prepare-data")}


def test_the_retraining_pipelines_benchmark_field_reaches_the_check_and_the_fetch(tmp_path):
    spec, _ = load_compiled(compile_pipeline("retrain", tmp_path / "retrain.yaml"))
    wired = {exe: task.inputs.parameters["demo_name"].component_input_parameter.removeprefix("pipelinechannel--")
             for task, exe in all_tasks(spec) if exe in ("exec-check-config", "exec-fetch-data-revision")}
    assert wired == {"exec-check-config": "data_demo_name", "exec-fetch-data-revision": "data_demo_name"}


def test_local_platform_has_no_retries_or_secrets(tmp_path):
    from kfp import compiler

    path = tmp_path / "local.yaml"
    compiler.Compiler().compile(get_pipeline("ffr", Platform.local()), str(path))
    docs = list(yaml.load_all(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
    assert len(docs) == 1  # no platform (secrets) section
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
    assert all(t.retry_policy.max_retry_count == 0 for t, _ in all_tasks(spec))


def test_cli_compile(tmp_path, capsys):
    out = tmp_path / "cmp.yaml"
    assert main(["compile", "comparison", "--gpu", "--accelerator-type", "nvidia.com/mig-1g.10gb", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert "nvidia.com/mig-1g.10gb" in out.read_text()


def test_unknown_parameter_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(PipelineError, match=r"no parameter\(s\) \['epochs'\].*known: .*pretrain_epochs"):
        run_local("ffr", {"epochs": 3}, tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_failed_local_run_is_recorded_and_cleaned_up(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(PipelineError, match="run.log"):
        run_local("ffr", {"data_source": str(tmp_path / "no-such-dataset")}, runs, progress=False)
    (run_dir,) = runs.iterdir()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed"
    assert "no-such-dataset" in (run_dir / "run.log").read_text()
    assert not (run_dir / "workspace").exists()


def expected_test_counts(tmp_path) -> dict:
    """The test split the tiny settings produce, prepared directly with the library."""
    m = prepare("demo", tmp_path / "ref", TINY["data_bias_rate"], 0, 10, {"per_digit": TINY["data_demo_per_digit"]},
                tmp_path / "ref" / "images")
    return {group_key(*g): n for g, n in m.select(split="test").group_counts().items()}


@pytest.mark.slow
def test_ffr_pipeline_runs_locally_through_the_cli(tmp_path, monkeypatch, capsys):
    runs, cwd = tmp_path / "runs", tmp_path / "cwd"
    runs.mkdir()
    cwd.mkdir()
    (runs / "keep.txt").write_text("not the run's")
    monkeypatch.chdir(cwd)
    argv = ["run", "ffr", "--runs-dir", str(runs)] + [f"--param={k}={v}" for k, v in TINY.items()]
    assert main(argv) == 0
    out = capsys.readouterr().out

    # One new run folder; nothing else written or removed, the runner's workspace gone.
    assert list(cwd.iterdir()) == []
    assert (runs / "keep.txt").read_text() == "not the run's"
    (run_dir,) = [p for p in runs.iterdir() if p.name != "keep.txt"]
    assert run_dir.name.startswith("ffr-")
    # `ffr run` tracks in a local MLflow store in the run folder (what `make demo` shows).
    assert sorted(p.name for p in run_dir.iterdir()) == ["mlartifacts", "mlflow.db", "outputs", "results.txt",
                                                          "run.json", "run.log"]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "succeeded" and record["params"] == TINY
    output = Path(record["output"])
    assert run_dir in output.parents

    result = json.loads(output.read_text())
    assert result["strategy"] == "ffr" and result["model"]["stage"] == "finetune"
    assert {g: v["n"] for g, v in result["groups"].items()} == expected_test_counts(tmp_path)
    table = format_group_table({"ffr": result})
    assert (run_dir / "results.txt").read_text().strip() == table
    assert table in out and "Executing task" in out
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    assert f"mlflow ui --backend-store-uri {uri}" in out and record["mlflow"] == uri
    from mlflow import MlflowClient

    client = MlflowClient(uri, registry_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("ffr").experiment_id])
    assert {r.info.run_name for r in runs if "mlflow.parentRunId" in r.data.tags} == \
        {"pretrain", "finetune", "evaluate ffr", "register"}
    assert all(r.info.status == "FINISHED" for r in runs)
    champion = client.get_model_version_by_alias("ffr", "champion") if result["worst_group_acc"] >= 0.5 else None
    version = client.get_model_version("ffr", "1")
    assert version.tags["gate.decision"] == ("promoted" if champion else "rejected")


@pytest.mark.slow
def test_comparison_pipeline_runs_locally(tmp_path):
    run = run_local("comparison", {**TINY, "train_baseline_epochs": 1, "train_finetune_options": {"select_init": True, "lpft_epochs": 1}},
                    tmp_path / "runs", progress=False)
    assert list(run.results) == ["none", "usb", "asb", "ffr"]
    # the step-2 variant reached FFR's step 2 only (the integer through the runner's JSON too):
    # step 1's weights competed as epoch -1
    histories = list(run.run_dir.glob("outputs/**/model.pt.history.jsonl"))
    first_epochs = sorted(json.loads(h.read_text().splitlines()[0])["epoch"] for h in histories)
    assert first_epochs == [-1, 0, 0, 0, 0]  # finetune; pretrain and three baselines
    counts = expected_test_counts(tmp_path)
    for strategy, m in run.results.items():
        assert {g: v["n"] for g, v in m["groups"].items()} == counts, strategy
    summary = json.loads(run.output.read_text())
    wga = {s: m["worst_group_acc"] for s, m in run.results.items()}
    best = max((s for s in wga if s != "ffr"), key=wga.get)
    assert summary["ffr_gain"]["ffr_gain_wga"] == pytest.approx(wga["ffr"] - wga[best])
    report = run.output.parent / "report"
    html = report.read_text()
    assert all(f">{s}<" in html for s in wga)


def test_run_form_problems_are_all_listed():
    from ffr.runform import form_problems

    ok = dict(train_objective="erm", train_backbone="small_cnn", train_pretrain_epochs=2, train_pretrain_lr=1e-3, train_finetune_epochs=2,
              train_finetune_lr=1e-3, train_finetune_options={"lpft_epochs": 1}, train_objective_options={},
              train_baselines=[{"strategy": "none", "lr": 1e-3}], synthesis_backend="procedural", synthesis_filters=[],
              data_source="demo", data_adapter="csv", data_adapter_options={}, data_bias_rate=0.95, synthesis_shards=2, train_device="auto",
              train_image_size=32, train_batch_size=64)

    def problems(**values):
        return [str(p) for p in form_problems({**ok, **values})]

    assert problems() == []
    bad = problems(train_objective="groupdro", train_objective_options={"etaa": 1}, train_backbone="resnet5",
                   train_finetune_options={"lpft_epochs": -1, "lr": 1},
                   train_baselines=[{"strategy": "nonee", "lr": 1e-3}, {"strategy": "usb", "lr": -1}],
                   synthesis_backend="dalle", data_bias_rate=1.0, synthesis_shards=0, train_device="gpu")
    text = "\n".join(bad)
    # each problem under the run form's own field name
    for needle in ("train_objective_options: ", "resnet5", "train_finetune_options: ['lr']", "nonee",
                   "train_baselines[1].lr: -1", "dalle", "data_bias_rate: 1.0", "synthesis_shards: 0",
                   "train_device: 'gpu'"):
        assert needle in text, needle
    assert any(p.startswith("train_finetune_options.lpft_epochs: -1")
               for p in problems(train_finetune_options={"lpft_epochs": -1}))
    # The built-in benchmark is named on the run form too: a typo, or a digits-only size on another.
    assert problems(demo_name="galaxies") == []
    [name] = problems(data_demo_name="face")
    assert name == "data_demo_name: unknown built-in benchmark 'face'; known: digits, faces, galaxies"
    [size] = problems(data_demo_name="faces", data_demo_per_digit=10)
    assert size.startswith("data_demo_per_digit: ") and "digits benchmark only" in size
    assert problems(data_source="/data/mine", data_demo_name="face") == []  # not the demo: unread


def test_source_fingerprint_follows_the_content_not_the_name(tmp_path):
    from ffr.runform import source_fingerprint

    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "d" / "manifest.csv").write_text("path\nimages/a.png\n")
    (tmp_path / "d" / "images" / "a.png").write_bytes(b"1234")
    first = source_fingerprint(str(tmp_path / "d"))
    assert source_fingerprint("demo") == "demo" and first.startswith("md5-")
    (tmp_path / "d" / "images" / "a.png").write_bytes(b"4321")  # same size, same name, new content
    assert source_fingerprint(str(tmp_path / "d")) != first
    with pytest.raises(FileNotFoundError):
        source_fingerprint(str(tmp_path / "missing"))


@pytest.mark.slow
def test_config_error_fails_the_first_step_with_its_cause(tmp_path):
    bad = {**TINY, "train_objective": "ermm", "train_finetune_options": {"freeze_stages": -1}, "data_demo_name": "face"}
    # refused before a run folder is made, by the check step's own validator ...
    with pytest.raises(ConfigError) as refused:
        run_local("ffr", bad, tmp_path / "refused", progress=False, mlflow="local")
    assert not (tmp_path / "refused").exists()
    # ... and, left to the pipeline (a run form edited on a cluster), by its first step, in the same words
    with pytest.raises(PipelineError) as e:
        run_local("ffr", bad, tmp_path / "runs", progress=False, mlflow="local", precheck=False)
    msg = str(e.value)
    assert str(refused.value) in msg
    assert "step 'check configuration' (check-config) failed" in msg
    assert "unknown objective 'ermm'" in msg and "freeze_stages" in msg and "\x1b[" not in msg
    assert "demo_name: unknown built-in benchmark 'face'; known: digits, faces, galaxies" in msg
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert "\x1b[" not in (run_dir / "run.log").read_text()
    assert not list(run_dir.glob("outputs/**/prepare-data*"))  # nothing ran after the check
    assert json.loads((run_dir / "run.json").read_text())["error"].startswith("step 'check configuration'")


@pytest.mark.slow
def test_a_failed_step_closes_the_pipelines_mlflow_runs_as_failed(tmp_path):
    from mlflow import MlflowClient

    with pytest.raises(PipelineError) as e:
        run_local("ffr", {**TINY, "synthesis_options": {"no_such_option": 1}}, tmp_path / "runs", progress=False,
                  mlflow="local")
    assert "step 'synthesize shard'" in str(e.value) and "no_such_option" in str(e.value)
    (run_dir,) = (tmp_path / "runs").iterdir()
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    runs = client.search_runs([x.experiment_id for x in client.search_experiments()])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FAILED" and parents[0].data.tags["ffr.failure"]
    assert all(r.info.status != "RUNNING" for r in runs)


def test_progress_lines_lose_colour_codes_off_a_terminal_and_keep_them_on_one():
    import io

    from ffr.integrations.kubeflow.pipelines.run import _Tee

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    line = "12:00:00 - INFO - Executing task \x1b[96m'train-model'\x1b[0m\nnoise not shown\n"
    log, plain, term = io.StringIO(), io.StringIO(), Terminal()
    _Tee(log, plain).write(line)
    _Tee(io.StringIO(), term).write(line)
    assert plain.getvalue() == "12:00:00 - INFO - Executing task 'train-model'\n"
    assert "\x1b[96m" in term.getvalue() and "noise" not in term.getvalue()
    assert "\x1b[" not in log.getvalue() and "noise not shown" in log.getvalue()
