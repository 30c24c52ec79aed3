"""The pipelines. Each is built by a function of the :class:`~ffr.integrations.kubeflow.pipelines.platform.Platform`
(image, GPU requests, retries, secrets), registered in :data:`PIPELINES` under the name the CLI uses.

Every parameter has a default, so the Kubeflow UI's run form starts a full run as it is, and a
description (:mod:`ffr.integrations.kubeflow.pipelines.parameters`). The training defaults are the project's
(:mod:`ffr.config`'s constants, the same ``ffr compare`` and ``ffr train`` use) on the built-in
demo benchmark.

The recipe is not written here. The first step checks the run form and plans the run
(:func:`ffr.runform.check_step`: every strategy's stages as requests, the same ``ffr compare``
trains); the pipeline's own strategy (FFR, :data:`ffr.runform.PRODUCT`) is laid out from its stage
plan (:attr:`ffr.balance.Strategy.stages`: one training task per stage, each from the task of the
stage it starts from), and each baseline of the run form trains every stage of its strategy, in
plan order, in one task. A strategy registered later needs no edit here.
"""


from typing import List

from kfp import dsl

from ffr import config as defaults
from ffr.balance import STRATEGIES
from ffr.integrations.kubeflow.components import (balance_data, check_config, collect_shards, comparison_report, evaluate_model,
                                     fetch_data_revision, finish_tracking, plan_baselines, prepare_data,
                                     register_model,
                                     start_tracking, synthesize_shard, train_model)
from ffr.integrations.kubeflow.pipelines.parameters import documented, form_guide
from ffr.integrations.kubeflow.pipelines.platform import CHECK, DATA, EVALUATE, SYNTHESIS, TRACK, TRAIN, Platform
from ffr.plugins import Registry
from ffr.promotion import GATE_FLOOR, GATE_MARGIN, GATE_TOLERANCE
from ffr.runform import PRODUCT, short_names

PIPELINES: Registry = Registry("pipeline")

# The baselines with their evidence-chosen settings (ffr.config.BASELINES): the comparison
# pipeline's default fan-out, editable in the run form.
DEFAULT_BASELINES = [{"strategy": name, **settings} for name, settings in defaults.BASELINES.items()]
# The run-form fields the check step reads (the plan and the refusals come from them).
_FORM = ("objective", "backbone", "weights", "image_size", "batch_size", "seed", "device", "train_processes",
         "pretrain_epochs", "pretrain_lr", "finetune_epochs", "finetune_lr", "train_epochs", "baselines",
         "min_steps", "max_steps", "patience", "finetune_options", "objective_options", "bias_rate",
         "min_val_per_group", "source", "source_adapter", "source_options", "data_repo", "demo_name",
         "demo_per_digit", "synthesis_backend", "synthesis_seed", "synthesis_batch_size", "synthesis_filters",
         "num_shards", "gate_margin", "gate_tolerance", "gate_floor")


def _exit_handler(p: Platform, mlflow_uri, mlflow_experiment) -> dsl.ExitHandler:
    """The group every step of a pipeline runs in: when it ends — succeeded or failed — its exit
    task closes the pipeline's MLflow runs (FAILED, with the cause, when a step failed)."""
    close = p.apply(finish_tracking(mlflow_uri=mlflow_uri, experiment=mlflow_experiment,
                                    pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER), TRACK, "close MLflow runs")
    return dsl.ExitHandler(close, name="pipeline-steps")


def _check(p: Platform, scope: dict):
    """The first step: the run form's fields checked, the run planned, the dataset fingerprinted.
    ``scope``: the pipeline function's parameters."""
    return p.apply(check_config(**{k: scope[k] for k in _FORM if k in scope}), CHECK, "check configuration")


def _data(p: Platform, check, scope: dict, source_data=None):
    """prepare → synthesize (ParallelFor over groups × shards) → collect; returns (prepare, collect).
    Prepare takes ``check``'s dataset fingerprint (its cache keys on the data) and the strategies
    to synthesize for; ``source_data``: a task whose ``dataset`` output replaces ``source``."""
    extra = {"source_data": source_data.outputs["dataset"]} if source_data is not None else {}
    source = {k: scope[k] for k in ("source", "demo_per_digit") if k in scope}
    adapter = {"adapter": scope["source_adapter"], "adapter_options": scope["source_options"]} \
        if "source_adapter" in scope else {}
    prep = p.apply(prepare_data(bias_rate=scope["bias_rate"], seed=scope["seed"],
                                min_val_per_group=scope["min_val_per_group"], demo_name=scope["demo_name"],
                                synthesis_for=check.outputs["synthesis_for"], num_shards=scope["num_shards"],
                                source_digest=check.outputs["fingerprint"], **source, **adapter, **extra),
                   DATA, "prepare data")
    with dsl.ParallelFor(prep.outputs["Output"], name="synthesis-fan-out", parallelism=p.parallelism or None) as work:
        shard = p.apply(synthesize_shard(card=prep.outputs["card"], work=work, backend=scope["synthesis_backend"],
                                         seed=scope["synthesis_seed"], batch_size=scope["synthesis_batch_size"],
                                         backend_options=scope["synthesis_options"],
                                         filters=scope["synthesis_filters"]),
                        SYNTHESIS, "synthesize shard")
    pool = p.apply(collect_shards(card=prep.outputs["card"], shards=dsl.Collected(shard.outputs["shard"])),
                   DATA, "collect synthetic pool")
    return prep, pool


def _tracking(p: Platform, check, name: str, scope: dict) -> tuple:
    """Open the pipeline's MLflow run, once ``check`` passed. Returns (the arguments that nest a
    step's run under it, the opening task): steps find the run by the pipeline run id and run
    after the opening task."""
    params = _params(scope)
    start = p.apply(start_tracking(mlflow_uri=scope["mlflow_uri"], experiment=scope["mlflow_experiment"],
                                   artifact_location=scope["mlflow_artifacts"], pipeline_name=name,
                                   pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, params=params,
                                   integer_params=sorted(k for k, v in params.items()
                                                         if getattr(v, "channel_type", None) == "Integer")),
                    TRACK, "open MLflow run")
    start.after(check)
    return {"mlflow_uri": scope["mlflow_uri"], "mlflow_experiment": scope["mlflow_experiment"],
            "pipeline_run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER}, start


def _tracked(task, tracking: tuple):
    """``task`` with the tracking arguments' ordering: after the pipeline's run is open."""
    task.after(tracking[1])
    return task


def _params(scope: dict) -> dict:
    """A pipeline's scalar parameters (its function's locals at the top) for the parent run's
    params. Lists and dicts are left out (the local runner splices values into the JSON of a
    dict argument as text, which breaks on nested structures; the steps log them), and so are the
    tracking settings themselves."""
    skip = {"mlflow_uri", "mlflow_experiment", "mlflow_artifacts", "config"}  # the sweep's config: its report logs it
    return {k: v for k, v in scope.items()
            if k not in skip and getattr(v, "channel_type", None) in ("String", "Float", "Integer", "Boolean")}


def _evaluate(p: Platform, name: str, model, prep, pool, strategy, device, tracking: tuple):
    task = evaluate_model(model=model.outputs["model"], data=prep.outputs["dataset"],
                          synthetic=pool.outputs["pool"], strategy=strategy, device=device, **tracking[0])
    return p.apply(_tracked(task, tracking), EVALUATE, name)


def _own_strategy(p: Platform, check, prep, pool, scope: dict, tracking: tuple, strategy: str = PRODUCT):
    """balance(strategy) → one training task per stage of its plan, in plan order, each starting
    from the task of the stage it is planned to start from → evaluate. Returns (the last
    training task, the evaluation)."""
    plan = STRATEGIES.get(strategy)
    sets = p.apply(balance_data(real=prep.outputs["dataset"], synthetic=pool.outputs["pool"], strategy=strategy),
                   DATA, f"balance: {strategy}")
    tasks = {}
    for i, stage in enumerate(plan.stages, 1):
        init = tasks.get(stage.init_from)
        task = train_model(training_sets=sets.outputs["training_sets"], val_data=prep.outputs["dataset"],
                           run_plan=check.outputs["plan"], strategy=strategy, stage=stage.name,
                           **({"init_model": init.outputs["model"]} if init is not None else {}), **tracking[0])
        tasks[stage.name] = p.apply(_tracked(task, tracking), TRAIN,
                                    f"{strategy} step {i}: {stage.name} on {stage.data}")
    last = tasks[plan.stages[-1].name]
    return last, _evaluate(p, f"evaluate: {strategy}", last, prep, pool, strategy, scope["device"], tracking)


def _baselines(p: Platform, check, prep, pool, scope: dict, tracking: tuple):
    """Each baseline of the run form, in parallel: balance → every stage of its strategy, in plan
    order, in one training task → evaluate. Returns the evaluation task (inside the loop)."""
    # over the baselines' own run plans: each item carries its requests (the local runner hands a
    # task inside a ParallelFor the loop's item, not an outer task's output)
    plans = p.apply(plan_baselines(plan=check.outputs["plan"]), CHECK, "plan baselines")
    with dsl.ParallelFor(plans.output, name="baselines", parallelism=p.parallelism or None) as b:
        sets = p.apply(balance_data(real=prep.outputs["dataset"], synthetic=pool.outputs["pool"],
                                    strategy=b.strategy), DATA, "balance: baseline")
        model = p.apply(_tracked(train_model(training_sets=sets.outputs["training_sets"],
                                             val_data=prep.outputs["dataset"], run_plan=b, strategy=b.strategy,
                                             **tracking[0]), tracking),
                        TRAIN, "train baseline")
        return _evaluate(p, "evaluate: baseline", model, prep, pool, b.strategy, scope["device"], tracking)


def _register(p: Platform, model, ev, prep, tracking: tuple, scope: dict, source_data=None):
    """Register the model of ``model`` (a train task) as the challenger and run the promotion gate."""
    extra = {"source_data": source_data.outputs["dataset"]} if source_data is not None else {}
    task = register_model(model=model.outputs["model"], metrics=ev.outputs["metrics"], data=prep.outputs["dataset"],
                          registered_model_name=scope["registered_model_name"], gate_margin=scope["gate_margin"],
                          gate_tolerance=scope["gate_tolerance"], gate_floor=scope["gate_floor"], **tracking[0],
                          **extra)
    return p.apply(_tracked(task, tracking), TRACK, "register + promotion gate")


@PIPELINES.register("ffr")
def build_ffr_pipeline(platform: Platform | None = None):
    """The FFR pipeline for ``platform`` (default: a CPU cluster)."""
    p = platform or Platform()

    @dsl.pipeline(name="ffr", description="From Fake to Real: pretrain on balanced synthetic images, "
                                          "fine-tune on real ones, report worst-group accuracy." + form_guide())
    @documented()
    def ffr_pipeline(
        data_source: str = "demo",
        data_adapter: str = "csv",
        data_adapter_options: dict = {},
        data_bias_rate: float = defaults.BIAS_RATE,
        train_seed: int = 0,
        data_min_val_per_group: int = defaults.MIN_VAL_PER_GROUP,
        data_demo_per_digit: int = 0,
        data_demo_name: str = "digits",
        synthesis_backend: str = defaults.SYNTHESIS_BACKEND,
        synthesis_seed: int = 0,
        synthesis_batch_size: int = defaults.SYNTHESIS_BATCH_SIZE,
        synthesis_options: dict = {},
        synthesis_filters: List[str] = [],
        synthesis_shards: int = 2,
        train_backbone: str = defaults.BACKBONE,
        train_weights: str = "",
        train_image_size: int = defaults.IMAGE_SIZE,
        train_objective: str = defaults.OBJECTIVE,
        train_batch_size: int = defaults.BATCH_SIZE,
        train_pretrain_epochs: int = defaults.EPOCHS,
        train_pretrain_lr: float = defaults.PRETRAIN_LR,
        train_finetune_epochs: int = defaults.EPOCHS,
        train_finetune_lr: float = defaults.FINETUNE_LR,
        train_min_steps: int = defaults.MIN_STEPS,
        train_max_steps: int = defaults.MAX_STEPS,
        train_patience: int = defaults.PATIENCE,
        train_finetune_options: dict = {},
        train_objective_options: dict = {},
        train_processes: int = 1,
        train_device: str = "auto",
        mlflow_uri: str = "",
        mlflow_experiment: str = "ffr",
        mlflow_artifacts: str = "",
        mlflow_registered_model: str = "ffr",
        gate_margin: float = GATE_MARGIN,
        gate_tolerance: float = GATE_TOLERANCE,
        gate_floor: float = GATE_FLOOR,
    ):
        """prepare → synthesize (groups × shards) → collect → balance (ffr) → train step 1 →
        train step 2 (init = step 1) → evaluate → register (MLflow model registry, promotion gate).
        With a tracking server (``mlflow_uri`` or the ``ffr-mlflow`` secret) every step logs a
        run nested under the pipeline's; without one nothing is tracked or registered."""
        scope = short_names(locals())
        with _exit_handler(p, mlflow_uri, mlflow_experiment):
            check = _check(p, scope)
            tracking = _tracking(p, check, "ffr", scope)
            prep, pool = _data(p, check, scope)
            model, ev = _own_strategy(p, check, prep, pool, scope, tracking)
            _register(p, model, ev, prep, tracking, scope)

    return ffr_pipeline


@PIPELINES.register("comparison")
def build_comparison_pipeline(platform: Platform | None = None):
    """The comparison pipeline (none / usb / asb / ffr side by side) for ``platform``."""
    p = platform or Platform()

    @dsl.pipeline(name="ffr-comparison", description="The baselines (none, USB, ASB) and FFR on one prepared "
                                                     "dataset and one synthetic pool, compared in one report."
                                                     + form_guide())
    @documented()
    def comparison_pipeline(
        data_source: str = "demo",
        data_adapter: str = "csv",
        data_adapter_options: dict = {},
        data_bias_rate: float = defaults.BIAS_RATE,
        train_seed: int = 0,
        data_min_val_per_group: int = defaults.MIN_VAL_PER_GROUP,
        data_demo_per_digit: int = 0,
        data_demo_name: str = "digits",
        synthesis_backend: str = defaults.SYNTHESIS_BACKEND,
        synthesis_seed: int = 0,
        synthesis_batch_size: int = defaults.SYNTHESIS_BATCH_SIZE,
        synthesis_options: dict = {},
        synthesis_filters: List[str] = [],
        synthesis_shards: int = 2,
        train_backbone: str = defaults.BACKBONE,
        train_weights: str = "",
        train_image_size: int = defaults.IMAGE_SIZE,
        train_objective: str = defaults.OBJECTIVE,
        train_batch_size: int = defaults.BATCH_SIZE,
        train_baselines: List[dict] = DEFAULT_BASELINES,
        train_baseline_epochs: int = defaults.EPOCHS,
        train_pretrain_epochs: int = defaults.EPOCHS,
        train_pretrain_lr: float = defaults.PRETRAIN_LR,
        train_finetune_epochs: int = defaults.EPOCHS,
        train_finetune_lr: float = defaults.FINETUNE_LR,
        train_min_steps: int = defaults.MIN_STEPS,
        train_max_steps: int = defaults.MAX_STEPS,
        train_patience: int = defaults.PATIENCE,
        train_finetune_options: dict = {},
        train_objective_options: dict = {},
        train_processes: int = 1,
        train_device: str = "auto",
        mlflow_uri: str = "",
        mlflow_experiment: str = "ffr",
        mlflow_artifacts: str = "",
        mlflow_registered_model: str = "ffr",
        gate_margin: float = GATE_MARGIN,
        gate_tolerance: float = GATE_TOLERANCE,
        gate_floor: float = GATE_FLOOR,
    ):
        """prepare → synthesize → collect, then each baseline of ``train_baselines`` (``{"strategy",
        "lr"}``, in parallel: balance → train → evaluate) and FFR (balance → step 1 → step 2 →
        evaluate → register), then one comparison report."""
        scope = short_names(locals())
        with _exit_handler(p, mlflow_uri, mlflow_experiment):
            check = _check(p, scope)
            tracking = _tracking(p, check, "comparison", scope)
            prep, pool = _data(p, check, scope)
            ev = _baselines(p, check, prep, pool, scope, tracking)
            model, own_ev = _own_strategy(p, check, prep, pool, scope, tracking)
            _register(p, model, own_ev, prep, tracking, scope)
            p.apply(_tracked(comparison_report(baselines=dsl.Collected(ev.outputs["metrics"]),
                                               product=own_ev.outputs["metrics"], synthetic=pool.outputs["pool"],
                                               **tracking[0]), tracking),
                    EVALUATE, "comparison report")

    return comparison_pipeline


@PIPELINES.register("retrain")
def build_retrain_pipeline(platform: Platform | None = None):
    """The scheduled retraining pipeline (what ``ffr schedule`` runs) for ``platform``."""
    p = platform or Platform()

    @dsl.pipeline(name="ffr-retrain", description="Retrain FFR on a data revision, register the model as the "
                                                  "challenger and promote it only if it beats the champion."
                                                  + form_guide("data_repo (a git URL of a DVC project; empty: the "
                                                               "demo), data_path, data_rev, data_bias_rate"))
    @documented()
    def retrain_pipeline(
        data_repo: str = "",
        data_path: str = "data",
        data_rev: str = "",
        data_endpoint: str = "",
        data_demo_name: str = "digits",
        data_bias_rate: float = defaults.BIAS_RATE,
        train_seed: int = 0,
        data_min_val_per_group: int = defaults.MIN_VAL_PER_GROUP,
        synthesis_backend: str = defaults.SYNTHESIS_BACKEND,
        synthesis_seed: int = 0,
        synthesis_batch_size: int = defaults.SYNTHESIS_BATCH_SIZE,
        synthesis_options: dict = {},
        synthesis_filters: List[str] = [],
        synthesis_shards: int = 2,
        train_backbone: str = defaults.BACKBONE,
        train_weights: str = "",
        train_image_size: int = defaults.IMAGE_SIZE,
        train_objective: str = defaults.OBJECTIVE,
        train_batch_size: int = defaults.BATCH_SIZE,
        train_pretrain_epochs: int = defaults.EPOCHS,
        train_pretrain_lr: float = defaults.PRETRAIN_LR,
        train_finetune_epochs: int = defaults.EPOCHS,
        train_finetune_lr: float = defaults.FINETUNE_LR,
        train_min_steps: int = defaults.MIN_STEPS,
        train_max_steps: int = defaults.MAX_STEPS,
        train_patience: int = defaults.PATIENCE,
        train_finetune_options: dict = {},
        train_objective_options: dict = {},
        train_processes: int = 1,
        train_device: str = "auto",
        mlflow_uri: str = "",
        mlflow_experiment: str = "ffr",
        mlflow_artifacts: str = "",
        mlflow_registered_model: str = "ffr",
        gate_margin: float = GATE_MARGIN,
        gate_tolerance: float = GATE_TOLERANCE,
        gate_floor: float = GATE_FLOOR,
    ):
        """fetch the dataset at ``data_rev`` of the DVC project ``data_repo`` (folder ``data_path``;
        empty repo: the built-in benchmark ``data_demo_name``) → the FFR pipeline → register the model as the challenger
        and run the promotion gate against the champion. The data revision (repo, revision,
        commit, DVC version) is recorded in the model version's lineage."""
        scope = short_names(locals())
        with _exit_handler(p, mlflow_uri, mlflow_experiment):
            check = _check(p, scope)
            tracking = _tracking(p, check, "retrain", scope)
            fetch = p.apply(fetch_data_revision(repo=data_repo, path=data_path, rev=data_rev,
                                                endpoint_url=data_endpoint, demo_name=data_demo_name),
                            DATA, "fetch data revision")
            fetch.set_caching_options(False)  # a branch or tag may move: always ask the repository
            fetch.after(check)
            prep, pool = _data(p, check, scope, source_data=fetch)
            model, ev = _own_strategy(p, check, prep, pool, scope, tracking)
            _register(p, model, ev, prep, tracking, scope, source_data=fetch)

    return retrain_pipeline


_BUILT: dict = {}


def get_pipeline(name: str, platform: Platform | None = None):
    """The pipeline registered as ``name``, built for ``platform`` (default: a CPU cluster).
    Built once per platform and process: kfp's task setters inspect the call stack, which makes
    building a pipeline take seconds."""
    platform = platform or Platform()
    key = (name, repr(platform))
    if key not in _BUILT:
        _BUILT[key] = PIPELINES.get(name)(platform)
    return _BUILT[key]


def __getattr__(attr: str):
    # ``ffr_pipeline``, ``comparison_pipeline``, ``retrain_pipeline``: the default builds, made on first use only.
    names = {"ffr_pipeline": "ffr", "comparison_pipeline": "comparison", "retrain_pipeline": "retrain"}
    if attr in names:
        return get_pipeline(names[attr])
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
