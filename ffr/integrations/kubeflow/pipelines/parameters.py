"""The pipelines' parameters, each described once, for the Kubeflow UI's run form.

The pipelines share most parameters; :data:`PARAMETER_DOCS` holds one description per name and
:func:`documented` writes a pipeline function's Google-style docstring from it, which KFP turns
into the ``description`` of every root input (``ffr run --help`` lists them too). The names a
parameter allows come from the registries where importing them costs no torch; objectives and
backbones live beside torch, so their names are written out and tests/test_run_form.py holds them
against the registries.
"""

from __future__ import annotations

import inspect
from typing import Callable

from ffr.balance import STRATEGIES
from ffr.config import WARMUP_STEPS
from ffr.data.sources import ADAPTERS  # importing sources registers the public datasets' adapters
from ffr.synthesis import SYNTHESIS_BACKENDS
from ffr.synthesis.filters import FILTERS
from ffr.synthesis.prompts import shipped_prompt_sets


def _names(names) -> str:
    return ", ".join(names)


_BASELINES = [s for s in STRATEGIES.names() if s != "ffr"]
_GATE = "Promotion gate (after registration): "

PARAMETER_DOCS: dict[str, str] = {
    # data
    "data_source": "The real dataset: demo (a built-in benchmark, data_demo_name, built in the run) or a "
              "dataset folder every pod can read (an s3:// URI with the csv adapter), read by data_adapter.",
    "data_adapter": f"How data_source is read, one of {_names(ADAPTERS.names())}: csv = manifest.csv + card.json "
                      "(what ffr data import writes), folder = <split>/<class>/<bias>/ image folders, the others = "
                      "that public dataset as distributed. Ignored for data_source demo.",
    "data_adapter_options": "The adapter's options as JSON, e.g. {\"label\": \"Blond_Hair\", \"bias\": \"Male\"} for "
                      "celeba; {} = its defaults.",
    "data_bias_rate": "Fraction of each class's train and val images that carry the class's majority bias after "
                 "subsampling, between 0 and 1 exclusive (e.g. 0.95; 0.99 is more biased). The test split is kept "
                 "whole.",
    "train_seed": "Seed of the bias-rate subsampling and of every training step (initialisation, data order).",
    "data_min_val_per_group": "Real validation images kept per minority group at least, whatever the bias rate "
                         "(checkpoint selection needs every group).",
    "data_demo_per_digit": "data_source demo, digits only: images of each digit kept (10-50 for a quick look); 0 = the "
                      "whole benchmark.",
    "data_demo_name": "The built-in benchmark built in the run when the data is the demo (data_source demo; retrain: "
                 "data_repo empty): digits (MNIST digits on textures), "
                 "faces (LFW photographs under a warm or cool cast) or galaxies (Hubble Deep Field sources in a "
                 "red or blue band).",
    "data_repo": "Git URL of the DVC project holding the dataset (an S3 remote: credentials from the ffr-s3 "
                 "secret); empty = the built-in demo benchmark.",
    "data_path": "The dataset folder (manifest.csv + card.json + images) inside data_repo.",
    "data_rev": "Revision of data_repo to train on: a tag, branch or commit; empty = its default branch. Recorded "
                "in the model version's lineage.",
    "data_endpoint": "S3 endpoint URL of a non-AWS DVC remote (MinIO, Ceph); empty = $AWS_ENDPOINT_URL (ffr-s3 "
                     "secret), else AWS.",
    # synthesis
    "synthesis_backend": f"Synthesis backend, one of {_names(SYNTHESIS_BACKENDS.names())}: procedural = digits "
                         "on procedural textures (CPU, the demo's); diffusers = Stable Diffusion or another "
                         "diffusers text-to-image model (GPU; model and prompts in synthesis_options); folder = "
                         "existing images per group (source in synthesis_options).",
    "synthesis_seed": "Base seed of the synthetic images: each image's seed derives from it, its group and its "
                      "index, so reruns and retries render the same images.",
    "synthesis_batch_size": "Images a synthesis step renders at once (GPU memory and speed).",
    "synthesis_options": "The backend's options as JSON, e.g. diffusers {\"model\": \"<hub id, folder or s3:// "
                         "URI>\", \"prompts\": \"<prompt file or one of "
                         f"{_names(shipped_prompt_sets())}>\", \"steps\": 25, \"scheduler\": \"dpm++\", "
                         "\"guidance_scale\": 7.5}, folder {\"source\": \"<folder or manifest>\"}; {} = the "
                         "backend's defaults. An unknown key fails the step, naming it.",
    "synthesis_filters": f"Filters that reject synthetic images (re-rendered with the next attempt's seed), a "
                         f"JSON list of specs; known: {_names(FILTERS.names())}. E.g. [\"grayscale\"] (the "
                         "paper's), [\"grayscale:tolerance=3\", \"clip:model=DIR,min_score=20\"], "
                         "[\"harmful:scorers=s3://bucket/scorers/harmful.json\"] (harmful-sample pruning with the "
                         "scorers `ffr synthesize scorers` trained); [] = none.",
    "synthesis_shards": "Parallel synthesis steps per group (at most one per image).",
    # training
    "train_backbone": "The network: small_cnn (~57k parameters, the demo's), tiny_cnn (half its width), resnet18, "
                "resnet50 (224 px; resnet50 is the paper's), resnet18_small, resnet50_small (a stem for 32-64 px "
                "images).",
    "train_weights": "Pretrained backbone weights: a torchvision-format state dict file every pod can read (e.g. "
               "ImageNet ResNet-50); empty = random init. Nothing is downloaded.",
    "train_image_size": "Training and evaluation image size in pixels (images are resized to size x size): 32 for the "
                  "demo, 224 for ResNets on photographs.",
    "train_objective": "Objective of every step that trains on real data (FFR step 2, the baselines; FFR step 1 is "
                 "always erm): erm, resample (group-balanced sampling), groupdro (online GroupDRO), dfr (erm, then "
                 "the last layer refit on the real validation split).",
    "train_objective_options": "The objective's options as JSON, e.g. {\"eta\": 0.01} for groupdro, {\"n_refits\": 20} "
                         "for dfr; {} = its defaults.",
    "train_batch_size": "Training images per batch (over all processes of a step).",
    "train_baselines": f"The baselines trained beside FFR, in parallel: a JSON list of {{\"strategy\", \"lr\"}} "
                 f"(and \"weight_decay\", optional), strategy one of {_names(_BASELINES)} (none = real only, usb = "
                 "synthetic images fill every group up to the largest, asb = the same synthetic budget added "
                 "evenly to every group), lr its learning rate. The defaults are the settings the equal-budget "
                 "grids ranked best on validation (docs/sweep.md, Defaults from evidence).",
    "train_baseline_epochs": "Epochs of each baseline's training.",
    "train_pretrain_epochs": "Epochs of FFR step 1 (training on the balanced synthetic images only).",
    "train_pretrain_lr": "Learning rate of FFR step 1.",
    "train_finetune_epochs": "Epochs of FFR step 2 (fine-tuning step 1's model on the real images only).",
    "train_finetune_lr": "Learning rate of FFR step 2.",
    "train_min_steps": "Every training step takes at least this many optimizer steps: a small dataset gets more "
                 "epochs than its train_*_epochs (0: off).",
    "train_max_steps": "Every training step takes at most this many optimizer steps (0: no cap).",
    "train_patience": "Every training step stops after this many epochs without a better validation worst-group "
                f"accuracy, once train_min_steps are done — or before, once {WARMUP_STEPS} steps are taken and the last "
                f"{WARMUP_STEPS} did not improve it (warmup_steps) — (0: no early stopping).",
    "train_finetune_options": "FFR step 2's variant as JSON, any other training setting, e.g. {\"freeze_stages\": 2}, "
                        "{\"l2sp\": 0.1}, {\"lpft_epochs\": 5}, {\"backbone_lr_mult\": 0.1}, "
                        "{\"select_init\": true}, {\"lpft_epochs\": 0} for plain fine-tuning; {} = the default, "
                        "LP-FT (the first 5 epochs train the head alone: the variant the grids ranked best on "
                        "validation). An unknown key fails the step, naming it.",
    "train_processes": "Processes per training step, data-parallel in its pod (torchrun, one per GPU: compile "
                       "with --gpu --accelerator-limit N); 1 = one process.",
    "train_device": "Where training and evaluation run: auto (a GPU when the pod has one, else the CPU), cpu, cuda or "
              "cuda:N.",
    # the sweep pipeline
    "sweep_config": "The sweep's grid as YAML, what `ffr sweep --config` reads: data (or datasets), backbone, strategies, "
              "objectives, bias_rates, seeds, train/pretrain/finetune settings, search per strategy, equal_search. "
              "Checked in the first step; the default is a small digits grid that runs as it is.",
    "sweep_stage_store": "Where the trained stages are kept, every task reaching it: s3://bucket/prefix (credentials "
                   "from the ffr-s3 secret) or a shared folder. Stages are keyed by content: a rerun, or another "
                   "sweep over the same data, trains only what the store lacks. Required on a cluster (ffr run "
                   "uses the run folder).",
    "sweep_stages_per_task": "Trained stages per training task (a task trains them one after the other): fewer, "
                       "longer tasks for a large grid.",
    "sweep_cells_per_task": "Cells per evaluation task.",
    # tracking and registry
    "mlflow_uri": "MLflow tracking server URI (e.g. http://mlflow.mlflow:5000); empty = $MLFLOW_TRACKING_URI "
                  "(ffr-mlflow secret); neither set: nothing is tracked or registered.",
    "mlflow_experiment": "MLflow experiment of the pipeline's run (its steps' runs nest under it).",
    "mlflow_artifacts": "Artifact root of a new MLflow experiment (e.g. s3://bucket/mlflow); empty = the "
                        "server's default.",
    "mlflow_registered_model": "Name of the model in the MLflow model registry; the trained model becomes its "
                             "@challenger version.",
    "gate_margin": _GATE + "worst-group accuracy (a fraction, 0-1) the challenger must gain over the @champion "
                           "to replace it, e.g. 0.005 = half a point.",
    "gate_tolerance": _GATE + "the largest drop of any group's accuracy (a fraction) a promoted challenger may "
                              "have against the champion.",
    "gate_floor": _GATE + "worst-group accuracy (a fraction) every champion must reach, the first one included.",
}


MIN_FORM_NOTE = (" Needs Kubeflow Pipelines 2.4 or later: older run forms mark the fields whose default is 0, "
                 "false or empty as missing (ffr upload warns).")


def form_guide(data: str = "data_source (a dataset folder or s3:// URI; data_adapter, data_adapter_options), "
                             "data_bias_rate") -> str:
    """What a pipeline's description tells the person at the Kubeflow UI's run form, which lists
    the fields alphabetically and shows none of their descriptions: that every default works, which
    fields to fill in for their own data and model, where each field is described, and the Kubeflow
    Pipelines version the form needs."""
    return (" Run form: every field has a working default (the built-in demo benchmark), so Start runs as it is. "
            f"Your data: {data}. Your model: train_backbone, train_image_size, train_weights (a pretrained state "
            "dict), train_device. Tracking: mlflow_uri (empty: the ffr-mlflow secret), mlflow_registered_model, "
            "gate_floor. The form lists the fields alphabetically, so each group shares a prefix (data_, gate_, "
            "mlflow_, synthesis_, train_), and shows no descriptions: `ffr run <pipeline> --help` and "
            "docs/kubeflow.md (The run form) describe each." + MIN_FORM_NOTE)


def documented(returns: str | None = None) -> Callable:
    """Decorator (under ``@dsl.pipeline``) giving a pipeline function a Google-style docstring:
    its own text, an ``Args:`` entry per parameter from :data:`PARAMETER_DOCS` and ``returns``
    as the description of its output (None: it has none). A parameter without a description raises ``KeyError``
    when the pipeline is built, so none reaches the run form undescribed."""

    def deco(fn: Callable) -> Callable:
        names = list(inspect.signature(fn).parameters)
        missing = [n for n in names if not PARAMETER_DOCS.get(n)]
        if missing:
            raise KeyError(f"pipeline function {fn.__name__}: parameter(s) {missing} have no description in "
                           "ffr/integrations/kubeflow/pipelines/parameters.py PARAMETER_DOCS")
        args = "".join(f"    {n}: {PARAMETER_DOCS[n]}\n" for n in names)
        # "Output" names a pipeline's return value in KFP's reading of the Returns section.
        tail = f"\nReturns:\n    Output: {returns}\n" if returns else ""
        fn.__doc__ = f"{inspect.cleandoc(fn.__doc__ or '')}\n\nArgs:\n{args}{tail}"
        return fn

    return deco


# KFP's parameter types (``ParameterType`` names) as the Python types a value must have.
_TYPES = {"NUMBER_INTEGER": int, "NUMBER_DOUBLE": float, "BOOLEAN": bool, "STRING": str, "LIST": list,
          "STRUCT": dict}


def parameter_types(pipeline) -> dict[str, type]:
    """The type of each parameter of a built pipeline: int, float, bool, str, list or dict."""
    from kfp.dsl.types.type_utils import get_parameter_type_name

    return {k: _TYPES[get_parameter_type_name(v.type)] for k, v in pipeline.component_spec.inputs.items()}


def format_parameters(name: str, pipeline, prog: str = "ffr run", width: int = 100) -> str:
    """The parameters of pipeline ``name`` (built) as ``ffr run --help`` lists them: name, type,
    default (as JSON, which ``--param`` reads) and the run form's description."""
    import json
    import textwrap

    types = parameter_types(pipeline)
    lines = textwrap.wrap(f"parameters of pipeline {name!r} (--param NAME=VALUE sets one; '{prog} PIPELINE "
                          "--help' lists another pipeline's):", width)
    for k, spec in pipeline.component_spec.inputs.items():
        lines.append(f"  {k} ({types[k].__name__}) = {json.dumps(spec.default)}")
        lines += textwrap.wrap(spec.description or "", width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)
