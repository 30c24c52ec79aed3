"""A run form that explains itself: every pipeline parameter and every component input and
output has a description in the compiled YAML (what the Kubeflow UI shows beside each field),
``ffr run --help`` lists the parameters with their defaults, and ``ffr compile --param`` sets a
parameter's compiled default after checking its name and type."""

from __future__ import annotations

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
        assert {"config", "stage_store"} <= fields and "config (YAML)" in description
        return
    data = {"retrain": ["data_repo", "data_path", "data_rev"]}.get(name, ["source", "source_adapter"])
    named = [*data, "bias_rate", "backbone", "image_size", "weights", "device", "mlflow_uri",
             "registered_model_name", "gate_floor"]
    assert set(named) <= fields, set(named) - fields
    assert all(re.search(rf"\b{f}\b", description) for f in named)
    assert "alphabetically" in description and "ffr run <pipeline> --help" in description


def test_parameter_docs_cover_exactly_the_pipelines_parameters_and_every_registered_name():
    from ffr.train.backbones import BACKBONES
    from ffr.train.objectives import OBJECTIVES

    used = set().union(*(pipeline_parameters(get_pipeline(n)) for n in PIPELINES.names()))
    assert set(PARAMETER_DOCS) == used, "PARAMETER_DOCS has stale or missing entries"
    # written out (their registries import torch): held here against the registries
    for key, registry in (("objective", OBJECTIVES), ("backbone", BACKBONES)):
        missing = [n for n in registry.names() if n not in PARAMETER_DOCS[key]]
        assert not missing, f"the {key} description does not name {missing}"


def test_a_parameter_without_a_description_fails_the_build():
    def pipe(pretrain_epochs: int = 1, undocumented_knob: int = 2):
        """Summary."""

    with pytest.raises(KeyError, match="undocumented_knob"):
        documented(returns="x")(pipe)


def test_compile_param_sets_the_compiled_default(tmp_path, capsys):
    out = tmp_path / "ffr.yaml"
    assert main(["compile", "--param", "pretrain_epochs=5", "--param", "pretrain_lr=1", "--param", "weights=",
                 "--out", str(out)]) == 0
    assert "pretrain_epochs=5, pretrain_lr=1.0" in capsys.readouterr().out
    defaults = root_defaults(out)
    assert (defaults["pretrain_epochs"], defaults["pretrain_lr"], defaults["weights"]) == (5, 1.0, "")
    assert defaults["finetune_epochs"] == pipeline_parameters(get_pipeline("ffr"))["finetune_epochs"]


@pytest.mark.parametrize("param, message", [
    ("bogus=1", r"no parameter\(s\) \['bogus'\]; known: .*pretrain_epochs"),
    ("pretrain_epochs=abc", "'pretrain_epochs' expects int, got 'abc'"),
    ("pretrain_epochs=1.5", "'pretrain_epochs' expects int, got 1.5"),
    ("device=3", "'device' expects str, got 3 .*quote it"),
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
    typed = typed_params("comparison", p, {"bias_rate": 1, "seed": 3, "source": None, "finetune_options": {"l2sp": 0.1},
                                           "baselines": [{"strategy": "none", "lr": 0.01}],
                                           "synthesis_filters": ["grayscale"]}, check=False)
    assert typed["bias_rate"] == 1.0 and isinstance(typed["bias_rate"], float)
    assert typed["seed"] == 3 and typed["source"] == ""
    assert typed["baselines"] == [{"strategy": "none", "lr": 0.01}]
    for bad in ({"seed": True}, {"bias_rate": False}, {"baselines": {}}, {"synthesis_filters": "grayscale"}):
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
    code = ("import sys; from ffr.cli import build_parser; build_parser().parse_args(['run', '--param', 'seed=1']); "
            "print(sorted(m for m in ('kfp', 'ffr.integrations.kubeflow.pipelines.definitions') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
