"""The pipelines. Each is built by a function of the :class:`~pipelines.platform.Platform` (GPU
requests, retries, secrets), registered in :data:`PIPELINES` under the name the CLI uses.

Every parameter has a default, so the Kubeflow UI's run form starts a full run as it is, and a
description (:mod:`pipelines.parameters`), which the run form shows beside it. The training
defaults are the project's (:mod:`ffr.config`'s constants, the same ``ffr compare`` and
``ffr train`` use) on the built-in demo benchmark.
"""


from typing import List

from kfp import dsl

from components import (balance_data, check_config, collect_shards, comparison_report, evaluate_model,
                        fetch_data_revision, finish_tracking, prepare_data, register_model, start_tracking,
                        synthesize_shard, train_model)
from ffr import config as defaults
from ffr.balance import STRATEGIES
from ffr.registry import Registry
from pipelines.parameters import documented
from pipelines.platform import CHECK, DATA, EVALUATE, SYNTHESIS, TRACK, TRAIN, Platform

PIPELINES: Registry = Registry("pipeline")

# The paper's baselines with their learning rates (ASB trains at 1e-4): the comparison pipeline's
# default fan-out, editable in the run form.
DEFAULT_BASELINES = [{"strategy": "none", "lr": defaults.LR}, {"strategy": "usb", "lr": defaults.LR},
                     {"strategy": "asb", "lr": defaults.ASB_LR}]
FFR = STRATEGIES.get("ffr")


def _exit_handler(p: Platform, mlflow_uri, mlflow_experiment) -> dsl.ExitHandler:
    """The group every step of a pipeline runs in: when it ends — succeeded or failed — its exit
    task closes the pipeline's MLflow runs (FAILED, with the cause, when a step failed)."""
    close = p.apply(finish_tracking(mlflow_uri=mlflow_uri, experiment=mlflow_experiment,
                                    pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER), TRACK, "close MLflow runs")
    return dsl.ExitHandler(close, name="pipeline-steps")


def _check(p: Platform, scope: dict, source="demo", source_adapter="csv", source_options=None, baselines=None,
           train_epochs=0):
    """The first step: the run form's values checked (names, every stage's settings, options)
    and the dataset fingerprinted. ``scope``: the pipeline function's parameters."""
    extra = {"baselines": baselines, "train_epochs": train_epochs} if baselines is not None else {}
    names = ("objective", "backbone", "pretrain_epochs", "pretrain_lr", "finetune_epochs", "finetune_lr",
             "min_steps", "max_steps", "patience",
             "finetune_options", "objective_options", "synthesis_backend", "synthesis_filters", "bias_rate",
             "num_shards", "device", "image_size", "batch_size")
    demo = {k: scope[k] for k in ("demo_name", "demo_per_digit") if k in scope}
    task = check_config(**{k: scope[k] for k in names}, source=source, source_adapter=source_adapter,
                        source_options=source_options if source_options is not None else {}, **demo, **extra)
    return p.apply(task, CHECK, "check configuration")


def _data(p: Platform, check, synthesis_for: list, source, bias_rate, seed, min_val_per_group, demo_per_digit,
          synthesis_backend, synthesis_seed, synthesis_batch_size, synthesis_options, synthesis_filters,
          num_shards, source_data=None, source_adapter="csv", source_options=None, demo_name="digits"):
    """prepare → synthesize (ParallelFor over groups × shards) → collect; returns (prepare, collect).
    Prepare takes ``check``'s dataset fingerprint (its cache keys on the data); ``source_data``: a
    task whose ``dataset`` output replaces ``source``."""
    extra = {"source_data": source_data.outputs["dataset"]} if source_data is not None else {}
    prep = p.apply(prepare_data(source=source, bias_rate=bias_rate, seed=seed, min_val_per_group=min_val_per_group,
                                demo_per_digit=demo_per_digit, demo_name=demo_name, synthesis_for=synthesis_for,
                                num_shards=num_shards,
                                adapter=source_adapter, adapter_options=source_options or {},
                                source_digest=check.output, **extra),
                   DATA, "prepare data")
    with dsl.ParallelFor(prep.outputs["Output"], name="synthesis-fan-out", parallelism=p.parallelism or None) as work:
        shard = p.apply(synthesize_shard(card=prep.outputs["card"], work=work, backend=synthesis_backend,
                                         seed=synthesis_seed, batch_size=synthesis_batch_size,
                                         backend_options=synthesis_options, filters=synthesis_filters),
                        SYNTHESIS, "synthesize shard")
    pool = p.apply(collect_shards(card=prep.outputs["card"], shards=dsl.Collected(shard.outputs["shard"])),
                   DATA, "collect synthetic pool")
    return prep, pool


def _tracking(p: Platform, check, name: str, mlflow_uri, mlflow_experiment, mlflow_artifacts, params: dict) -> tuple:
    """Open the pipeline's MLflow run, once ``check`` passed. Returns (the arguments that nest a
    step's run under it, the opening task): steps find the run by the pipeline run id and run
    after the opening task."""
    start = p.apply(start_tracking(mlflow_uri=mlflow_uri, experiment=mlflow_experiment,
                                   artifact_location=mlflow_artifacts, pipeline_name=name,
                                   pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, params=params,
                                   integer_params=sorted(k for k, v in params.items()
                                                         if getattr(v, "channel_type", None) == "Integer")),
                    TRACK, "open MLflow run")
    start.after(check)
    return {"mlflow_uri": mlflow_uri, "mlflow_experiment": mlflow_experiment,
            "pipeline_run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER}, start


def _tracked(task, tracking: tuple | None):
    """``task`` with the tracking arguments' ordering: after the pipeline's run is open."""
    if tracking is not None:
        task.after(tracking[1])
    return task


def _register(p: Platform, model, ev, prep, tracking: tuple, registered_model_name, gate_margin, gate_tolerance,
              gate_floor, source_data=None):
    """Register the model of ``model`` (a train task) as the challenger and run the promotion gate."""
    extra = {"source_data": source_data.outputs["dataset"]} if source_data is not None else {}
    task = register_model(model=model.outputs["model"], metrics=ev.outputs["metrics"], data=prep.outputs["dataset"],
                          registered_model_name=registered_model_name, gate_margin=gate_margin,
                          gate_tolerance=gate_tolerance, gate_floor=gate_floor, **tracking[0], **extra)
    return p.apply(_tracked(task, tracking), TRACK, "register + promotion gate")


def _params(scope: dict) -> dict:
    """A pipeline's scalar parameters (its function's locals at the top) for the parent run's
    params. Lists and dicts are left out (the local runner splices values into the JSON of a
    dict argument as text, which breaks on nested structures; the steps log them), and so are the
    tracking settings themselves."""
    skip = {"mlflow_uri", "mlflow_experiment", "mlflow_artifacts"}
    return {k: v for k, v in scope.items()
            if k not in skip and getattr(v, "channel_type", None) in ("String", "Float", "Integer", "Boolean")}


def _train_settings(scope: dict) -> dict:
    """The settings every training step of a pipeline shares, from its function's parameters."""
    keys = ("backbone", "weights", "image_size", "batch_size", "seed", "device", "min_steps", "max_steps", "patience")
    return {**{k: scope[k] for k in keys}, "processes": scope["train_processes"]}


def _train(p: Platform, name: str, sets, prep, stage: str, epochs, lr, train: dict, objective, init=None,
           tracking: tuple | None = None, options=None, objective_options=None):
    extra = {k: v for k, v in (("options", options), ("objective_options", objective_options)) if v is not None}
    task = train_model(training_sets=sets.outputs["training_sets"], val_data=prep.outputs["dataset"], stage=stage,
                       epochs=epochs, lr=lr, objective=objective, **train, **extra,
                       **(tracking[0] if tracking else {}),
                       **({"init_model": init.outputs["model"]} if init is not None else {}))
    return p.apply(_tracked(task, tracking), TRAIN, name)


def _evaluate(p: Platform, name: str, model, prep, pool, strategy, device, tracking: tuple | None = None):
    task = evaluate_model(model=model.outputs["model"], data=prep.outputs["dataset"],
                          synthetic=pool.outputs["pool"], strategy=strategy, device=device,
                          **(tracking[0] if tracking else {}))
    _tracked(task, tracking)
    return p.apply(task, EVALUATE, name)


def _ffr(p: Platform, prep, pool, train: dict, objective, pretrain_epochs, pretrain_lr, finetune_epochs,
         finetune_lr, tracking: tuple | None = None, finetune_options=None, objective_options=None):
    """balance(ffr) → train step 1 (synthetic, with the objective of FFR's stage plan: ERM) →
    train step 2 (real, from step 1, with ``finetune_options`` and the objective's
    ``objective_options``) → evaluate."""
    sets = p.apply(balance_data(real=prep.outputs["dataset"], synthetic=pool.outputs["pool"], strategy="ffr"),
                   DATA, "balance: ffr")
    step1 = _train(p, "ffr step 1: pretrain on synthetic", sets, prep, "pretrain", pretrain_epochs, pretrain_lr,
                   train, FFR.stage("pretrain").objective_for(objective), tracking=tracking)
    step2 = _train(p, "ffr step 2: fine-tune on real", sets, prep, "finetune", finetune_epochs, finetune_lr,
                   train, objective, init=step1, tracking=tracking, options=finetune_options,
                   objective_options=objective_options)
    return step2, _evaluate(p, "evaluate: ffr", step2, prep, pool, "ffr", train["device"], tracking)


@PIPELINES.register("ffr")
def build_ffr_pipeline(platform: Platform | None = None):
    """The FFR pipeline for ``platform`` (default: a CPU cluster)."""
    p = platform or Platform()

    @dsl.pipeline(name="ffr", description="From Fake to Real: pretrain on balanced synthetic images, "
                                          "fine-tune on real ones, report worst-group accuracy.")
    @documented()
    def ffr_pipeline(
        source: str = "demo",
        source_adapter: str = "csv",
        source_options: dict = {},
        bias_rate: float = defaults.BIAS_RATE,
        seed: int = 0,
        min_val_per_group: int = defaults.MIN_VAL_PER_GROUP,
        demo_per_digit: int = 0,
        demo_name: str = "digits",
        synthesis_backend: str = defaults.SYNTHESIS_BACKEND,
        synthesis_seed: int = 0,
        synthesis_batch_size: int = defaults.SYNTHESIS_BATCH_SIZE,
        synthesis_options: dict = {},
        synthesis_filters: List[str] = [],
        num_shards: int = 2,
        backbone: str = defaults.BACKBONE,
        weights: str = "",
        image_size: int = defaults.IMAGE_SIZE,
        objective: str = defaults.OBJECTIVE,
        batch_size: int = defaults.BATCH_SIZE,
        pretrain_epochs: int = defaults.EPOCHS,
        pretrain_lr: float = defaults.PRETRAIN_LR,
        finetune_epochs: int = defaults.EPOCHS,
        finetune_lr: float = defaults.FINETUNE_LR,
        min_steps: int = defaults.MIN_STEPS,
        max_steps: int = defaults.MAX_STEPS,
        patience: int = defaults.PATIENCE,
        finetune_options: dict = {},
        objective_options: dict = {},
        train_processes: int = 1,
        device: str = "auto",
        mlflow_uri: str = "",
        mlflow_experiment: str = "ffr",
        mlflow_artifacts: str = "",
        registered_model_name: str = "ffr",
        gate_margin: float = 0.005,
        gate_tolerance: float = 0.02,
        gate_floor: float = 0.5,
    ):
        """prepare → synthesize (groups × shards) → collect → balance (ffr) → train step 1 →
        train step 2 (init = step 1) → evaluate → register (MLflow model registry, promotion gate).
        With a tracking server (``mlflow_uri`` or the ``ffr-mlflow`` secret) every step logs a
        run nested under the pipeline's; without one nothing is tracked or registered."""
        scope = dict(locals())
        with _exit_handler(p, mlflow_uri, mlflow_experiment):
            check = _check(p, scope, source, source_adapter, source_options)
            tracking = _tracking(p, check, "ffr", mlflow_uri, mlflow_experiment, mlflow_artifacts, _params(scope))
            prep, pool = _data(p, check, ["ffr"], source, bias_rate, seed, min_val_per_group, demo_per_digit,
                               synthesis_backend, synthesis_seed, synthesis_batch_size, synthesis_options,
                               synthesis_filters, num_shards, source_adapter=source_adapter,
                               source_options=source_options, demo_name=demo_name)
            train = _train_settings(scope)
            step2, ev = _ffr(p, prep, pool, train, objective, pretrain_epochs, pretrain_lr, finetune_epochs,
                             finetune_lr, tracking, finetune_options, objective_options)
            _register(p, step2, ev, prep, tracking, registered_model_name, gate_margin, gate_tolerance, gate_floor)

    return ffr_pipeline


@PIPELINES.register("comparison")
def build_comparison_pipeline(platform: Platform | None = None):
    """The comparison pipeline (none / usb / asb / ffr side by side) for ``platform``."""
    p = platform or Platform()

    @dsl.pipeline(name="ffr-comparison", description="The baselines (none, USB, ASB) and FFR on one prepared "
                                                     "dataset and one synthetic pool, compared in one report.")
    @documented()
    def comparison_pipeline(
        source: str = "demo",
        source_adapter: str = "csv",
        source_options: dict = {},
        bias_rate: float = defaults.BIAS_RATE,
        seed: int = 0,
        min_val_per_group: int = defaults.MIN_VAL_PER_GROUP,
        demo_per_digit: int = 0,
        demo_name: str = "digits",
        synthesis_backend: str = defaults.SYNTHESIS_BACKEND,
        synthesis_seed: int = 0,
        synthesis_batch_size: int = defaults.SYNTHESIS_BATCH_SIZE,
        synthesis_options: dict = {},
        synthesis_filters: List[str] = [],
        num_shards: int = 2,
        backbone: str = defaults.BACKBONE,
        weights: str = "",
        image_size: int = defaults.IMAGE_SIZE,
        objective: str = defaults.OBJECTIVE,
        batch_size: int = defaults.BATCH_SIZE,
        baselines: List[dict] = DEFAULT_BASELINES,
        train_epochs: int = defaults.EPOCHS,
        pretrain_epochs: int = defaults.EPOCHS,
        pretrain_lr: float = defaults.PRETRAIN_LR,
        finetune_epochs: int = defaults.EPOCHS,
        finetune_lr: float = defaults.FINETUNE_LR,
        min_steps: int = defaults.MIN_STEPS,
        max_steps: int = defaults.MAX_STEPS,
        patience: int = defaults.PATIENCE,
        finetune_options: dict = {},
        objective_options: dict = {},
        train_processes: int = 1,
        device: str = "auto",
        mlflow_uri: str = "",
        mlflow_experiment: str = "ffr",
        mlflow_artifacts: str = "",
        registered_model_name: str = "ffr",
        gate_margin: float = 0.005,
        gate_tolerance: float = 0.02,
        gate_floor: float = 0.5,
    ):
        """prepare → synthesize → collect, then each baseline of ``baselines`` (``{"strategy",
        "lr"}``, in parallel: balance → train → evaluate) and FFR (balance → step 1 → step 2 →
        evaluate → register), then one comparison report."""
        scope = dict(locals())
        with _exit_handler(p, mlflow_uri, mlflow_experiment):
            check = _check(p, scope, source, source_adapter, source_options, baselines, train_epochs)
            tracking = _tracking(p, check, "comparison", mlflow_uri, mlflow_experiment, mlflow_artifacts,
                                 _params(scope))
            prep, pool = _data(p, check, ["usb", "asb", "ffr"], source, bias_rate, seed, min_val_per_group,
                               demo_per_digit, synthesis_backend, synthesis_seed, synthesis_batch_size,
                               synthesis_options, synthesis_filters, num_shards, source_adapter=source_adapter,
                               source_options=source_options, demo_name=demo_name)
            train = _train_settings(scope)
            with dsl.ParallelFor(baselines, name="baselines", parallelism=p.parallelism or None) as b:
                sets = p.apply(balance_data(real=prep.outputs["dataset"], synthetic=pool.outputs["pool"],
                                            strategy=b.strategy), DATA, "balance: baseline")
                model = _train(p, "train baseline", sets, prep, "train", train_epochs, b.lr, train, objective,
                               tracking=tracking, objective_options=objective_options)
                ev = _evaluate(p, "evaluate: baseline", model, prep, pool, b.strategy, device, tracking)
            step2, ffr_ev = _ffr(p, prep, pool, train, objective, pretrain_epochs, pretrain_lr, finetune_epochs,
                                 finetune_lr, tracking, finetune_options, objective_options)
            _register(p, step2, ffr_ev, prep, tracking, registered_model_name, gate_margin, gate_tolerance,
                      gate_floor)
            report = p.apply(_tracked(comparison_report(baselines=dsl.Collected(ev.outputs["metrics"]),
                                                        ffr=ffr_ev.outputs["metrics"], synthetic=pool.outputs["pool"],
                                                        **tracking[0]), tracking),
                             EVALUATE, "comparison report")

    return comparison_pipeline


@PIPELINES.register("retrain")
def build_retrain_pipeline(platform: Platform | None = None):
    """The scheduled retraining pipeline (what ``ffr schedule`` runs) for ``platform``."""
    p = platform or Platform()

    @dsl.pipeline(name="ffr-retrain", description="Retrain FFR on a data revision, register the model as the "
                                                  "challenger and promote it only if it beats the champion.")
    @documented()
    def retrain_pipeline(
        data_repo: str = "",
        data_path: str = "data",
        data_rev: str = "",
        data_endpoint: str = "",
        demo_name: str = "digits",
        bias_rate: float = defaults.BIAS_RATE,
        seed: int = 0,
        min_val_per_group: int = defaults.MIN_VAL_PER_GROUP,
        synthesis_backend: str = defaults.SYNTHESIS_BACKEND,
        synthesis_seed: int = 0,
        synthesis_batch_size: int = defaults.SYNTHESIS_BATCH_SIZE,
        synthesis_options: dict = {},
        synthesis_filters: List[str] = [],
        num_shards: int = 2,
        backbone: str = defaults.BACKBONE,
        weights: str = "",
        image_size: int = defaults.IMAGE_SIZE,
        objective: str = defaults.OBJECTIVE,
        batch_size: int = defaults.BATCH_SIZE,
        pretrain_epochs: int = defaults.EPOCHS,
        pretrain_lr: float = defaults.PRETRAIN_LR,
        finetune_epochs: int = defaults.EPOCHS,
        finetune_lr: float = defaults.FINETUNE_LR,
        min_steps: int = defaults.MIN_STEPS,
        max_steps: int = defaults.MAX_STEPS,
        patience: int = defaults.PATIENCE,
        finetune_options: dict = {},
        objective_options: dict = {},
        train_processes: int = 1,
        device: str = "auto",
        mlflow_uri: str = "",
        mlflow_experiment: str = "ffr",
        mlflow_artifacts: str = "",
        registered_model_name: str = "ffr",
        gate_margin: float = 0.005,
        gate_tolerance: float = 0.02,
        gate_floor: float = 0.5,
    ):
        """fetch the dataset at ``data_rev`` of the DVC project ``data_repo`` (folder ``data_path``;
        empty repo: the built-in benchmark ``demo_name``) → the FFR pipeline → register the model as the challenger
        and run the promotion gate against the champion. The data revision (repo, revision,
        commit, DVC version) is recorded in the model version's lineage."""
        scope = dict(locals())
        with _exit_handler(p, mlflow_uri, mlflow_experiment):
            check = _check(p, scope)
            tracking = _tracking(p, check, "retrain", mlflow_uri, mlflow_experiment, mlflow_artifacts, _params(scope))
            fetch = p.apply(fetch_data_revision(repo=data_repo, path=data_path, rev=data_rev,
                                                endpoint_url=data_endpoint, demo_name=demo_name),
                    DATA, "fetch data revision")
            fetch.set_caching_options(False)  # a branch or tag may move: always ask the repository
            fetch.after(check)
            prep, pool = _data(p, check, ["ffr"], "demo", bias_rate, seed, min_val_per_group, 0, synthesis_backend,
                               synthesis_seed, synthesis_batch_size, synthesis_options, synthesis_filters, num_shards,
                               source_data=fetch)
            train = _train_settings(scope)
            step2, ev = _ffr(p, prep, pool, train, objective, pretrain_epochs, pretrain_lr, finetune_epochs,
                             finetune_lr, tracking, finetune_options, objective_options)
            _register(p, step2, ev, prep, tracking, registered_model_name, gate_margin, gate_tolerance, gate_floor,
                      source_data=fetch)

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
