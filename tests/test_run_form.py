"""A run form that explains itself: every pipeline parameter and every component input and
output has a description in the compiled YAML (what the Kubeflow UI shows beside each field),
``ffr run --help`` lists the parameters with their defaults, and ``ffr compile --param`` sets a
parameter's compiled default after checking its name and type."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys

import pytest
import yaml

pytest.importorskip("kfp")

from ffr.cli import main  # noqa: E402
from ffr.integrations.kubeflow.pipelines import PIPELINES, get_pipeline  # noqa: E402
from ffr.integrations.kubeflow.pipelines.parameters import PARAMETER_DOCS, documented  # noqa: E402
from ffr.integrations.kubeflow.pipelines.run import PipelineError, compile_pipeline, pipeline_parameters, typed_params  # noqa: E402


def spec_of(path) -> dict:
    """The pipeline spec (the first YAML document) of a compiled pipeline."""
    return next(yaml.load_all(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))


def root_defaults(path) -> dict:
    return {k: v.get("defaultValue") for k, v in spec_of(path)["root"]["inputDefinitions"]["parameters"].items()}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("compiled")
    return {name: spec_of(compile_pipeline(name, tmp / f"{name}.yaml")) for name in PIPELINES.names()}


@pytest.mark.parametrize("name", PIPELINES.names())
def test_every_parameter_input_and_output_is_described(compiled, name):
    spec = compiled[name]
    root = spec["root"]
    undescribed = [k for k, v in root["inputDefinitions"]["parameters"].items() if not v.get("description", "").strip()]
    assert not undescribed, f"run form fields without a description: {undescribed}"
    assert "outputDefinitions" not in root  # the steps run inside an exit handler: results are step artifacts
    assert spec["pipelineInfo"]["description"]
    steps = {k: c for k, c in spec["components"].items() if "executorLabel" in c}  # not the loops' sub-DAGs
    assert steps
    for comp, c in steps.items():
        for side in ("inputDefinitions", "outputDefinitions"):
            for kind in ("parameters", "artifacts"):
                missing = [k for k, v in c.get(side, {}).get(kind, {}).items() if not v.get("description", "").strip()]
                assert not missing, f"{comp} {side} {kind} without a description: {missing}"


@pytest.mark.parametrize("name", PIPELINES.names())
def test_the_pipeline_description_guides_the_stock_run_form(compiled, name):
    """Kubeflow's own run form shows the pipeline's description but none of the fields': the
    description says what to fill in (by fields that exist), where each is described, and the
    Kubeflow Pipelines version the form needs."""
    description = compiled[name]["pipelineInfo"]["description"]
    fields = set(compiled[name]["root"]["inputDefinitions"]["parameters"])
    assert "Kubeflow Pipelines 2.4 or later" in description
    if name == "sweep":
        assert {"sweep_config", "sweep_stage_store"} <= fields and "sweep_config (YAML)" in description
        return
    data = {"retrain": ["data_repo", "data_path", "data_rev"]}.get(name, ["data_source", "data_adapter"])
    named = [*data, "data_bias_rate", "train_backbone", "train_image_size", "train_weights", "train_device", "mlflow_uri",
             "mlflow_registered_model", "gate_floor"]
    assert set(named) <= fields, set(named) - fields
    assert all(re.search(rf"\b{f}\b", description) for f in named)
    assert "alphabetically" in description and "ffr run <pipeline> --help" in description


@pytest.mark.parametrize("name", PIPELINES.names())
def test_the_alphabetical_run_form_reads_group_by_group(name):
    """The stock UI sorts the fields by name: every field carries its group's prefix, so each group
    is one run of the sorted form (data, gate, mlflow, sweep, synthesis, train)."""
    groups = ("data_", "gate_", "mlflow_", "sweep_", "synthesis_", "train_")
    fields = sorted(pipeline_parameters(get_pipeline(name)))
    assert all(f.startswith(groups) for f in fields), [f for f in fields if not f.startswith(groups)]
    order = [next(g for g in groups if f.startswith(g)) for f in fields]
    assert order == sorted(order) and len(set(order)) == len([k for k, _ in itertools.groupby(order)])


def test_the_names_before_the_prefixes_still_work_with_a_warning(tmp_path, capsys):
    """``--param`` with a field's old name (before the prefixes) sets the renamed field and says so; a
    name that was never a field is refused as before; the run form's refusals name the new fields."""
    from ffr.runform import FORM_FIELDS, SHORT_NAMES

    assert len(SHORT_NAMES) == len(FORM_FIELDS) and not set(FORM_FIELDS.values()) & set(FORM_FIELDS)
    out = tmp_path / "ffr.yaml"
    assert main(["compile", "--param", "pretrain_epochs=5", "--param", "bias_rate=0.9", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "ffr: warning: parameter 'pretrain_epochs' is now 'train_pretrain_epochs'" in err
    assert "'bias_rate' is now 'data_bias_rate'" in err
    defaults = root_defaults(out)
    assert (defaults["train_pretrain_epochs"], defaults["data_bias_rate"]) == (5, 0.9)
    assert "pretrain_epochs" not in defaults and "bias_rate" not in defaults
    assert main(["compile", "--param", "bias_rate=1.5", "--out", str(tmp_path / "bad.yaml")]) == 2
    assert "data_bias_rate: 1.5 must be a number in (0, 1)" in capsys.readouterr().err
    assert main(["compile", "--param", "bias_rate=0.9", "--param", "data_bias_rate=0.99", "--out",
                 str(tmp_path / "twice.yaml")]) == 2
    assert "'bias_rate' and 'data_bias_rate' name the same parameter" in capsys.readouterr().err
    assert not (tmp_path / "twice.yaml").exists()


def test_parameter_docs_cover_exactly_the_pipelines_parameters_and_every_registered_name():
    from ffr.train.backbones import BACKBONES
    from ffr.train.objectives import OBJECTIVES

    used = set().union(*(pipeline_parameters(get_pipeline(n)) for n in PIPELINES.names()))
    assert set(PARAMETER_DOCS) == used, "PARAMETER_DOCS has stale or missing entries"
    # written out (their registries import torch): held here against the registries
    for key, registry in (("train_objective", OBJECTIVES), ("train_backbone", BACKBONES)):
        missing = [n for n in registry.names() if n not in PARAMETER_DOCS[key]]
        assert not missing, f"the {key} description does not name {missing}"


def test_a_parameter_without_a_description_fails_the_build():
    def pipe(pretrain_epochs: int = 1, undocumented_knob: int = 2):
        """Summary."""

    with pytest.raises(KeyError, match="undocumented_knob"):
        documented(returns="x")(pipe)


def test_compile_param_sets_the_compiled_default(tmp_path, capsys):
    out = tmp_path / "ffr.yaml"
    assert main(["compile", "--param", "train_pretrain_epochs=5", "--param", "train_pretrain_lr=1", "--param", "train_weights=",
                 "--out", str(out)]) == 0
    assert "train_pretrain_epochs=5, train_pretrain_lr=1.0" in capsys.readouterr().out
    defaults = root_defaults(out)
    assert (defaults["train_pretrain_epochs"], defaults["train_pretrain_lr"], defaults["train_weights"]) == (5, 1.0, "")
    assert defaults["train_finetune_epochs"] == pipeline_parameters(get_pipeline("ffr"))["train_finetune_epochs"]


@pytest.mark.parametrize("param, message", [
    ("bogus=1", r"no parameter\(s\) \['bogus'\]; known: .*train_pretrain_epochs"),
    ("train_pretrain_epochs=abc", "'train_pretrain_epochs' expects int, got 'abc'"),
    ("train_pretrain_epochs=1.5", "'train_pretrain_epochs' expects int, got 1.5"),
    ("train_device=3", "'train_device' expects str, got 3 .*quote it"),
    ("synthesis_options=[a]", "'synthesis_options' expects dict"),
])
def test_compile_refuses_an_unknown_parameter_or_a_wrong_type(tmp_path, capsys, param, message):
    out = tmp_path / "x.yaml"
    assert main(["compile", "--param", param, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ffr: error: ")
    assert re.search(message, err), err
    assert not out.exists()


def test_typed_params_converts_to_each_parameter_type():
    p = get_pipeline("comparison")
    typed = typed_params("comparison", p, {"data_bias_rate": 1, "train_seed": 3, "data_source": None, "train_finetune_options": {"l2sp": 0.1},
                                           "train_baselines": [{"strategy": "none", "lr": 0.01}],
                                           "synthesis_filters": ["grayscale"]}, check=False)
    assert typed["data_bias_rate"] == 1.0 and isinstance(typed["data_bias_rate"], float)
    assert typed["train_seed"] == 3 and typed["data_source"] == ""
    assert typed["train_baselines"] == [{"strategy": "none", "lr": 0.01}]
    for bad in ({"train_seed": True}, {"data_bias_rate": False}, {"train_baselines": {}}, {"synthesis_filters": "grayscale"}):
        with pytest.raises(PipelineError, match="expects"):
            typed_params("comparison", p, bad, check=False)


@pytest.mark.parametrize("argv, expected", [
    (["run", "--help"], ["parameters of pipeline 'ffr'", "pretrain_epochs (int) = 40", "Epochs of FFR step 1",
                         "pretrain_lr (float) = 0.0001", 'device (str) = "auto"']),
    (["compile", "comparison", "--help"], ["parameters of pipeline 'comparison'", "baselines (list) = [",
                                           "--out OUT"]),
])
def test_help_lists_the_pipeline_parameters(capsys, argv, expected):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    for text in expected:
        assert text in out


def test_other_commands_do_not_build_the_pipelines():
    # The list is built only for --help: parsing any command line (even `ffr run`) imports no kfp.
    code = ("import sys; from ffr.cli import build_parser; build_parser().parse_args(['run', '--param', 'train_seed=1']); "
            "print(sorted(m for m in ('kfp', 'ffr.integrations.kubeflow.pipelines.definitions') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
