"""One stage request, one validator, one recipe: a setting travels from each entry point to the
training loop inside one request object; every rule's words are written once and every entry
point refuses a bad value with the same message; the recipe comes from the strategy's stage plan,
so a strategy with another plan runs through ``ffr compare``, the Kubeflow pipelines and DVC with
no edit to them."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ the call path
class _Index:
    """Every function of ``ffr/`` by qualified name, with the names each one may call resolved
    through its module's and its own imports (enough to follow the library's own calls)."""

    def __init__(self):
        self.functions: dict[str, tuple[ast.FunctionDef, str]] = {}
        self.imports: dict[str, dict[str, str]] = {}
        for path in (ROOT / "ffr").rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
            tree = ast.parse(path.read_text())
            self.imports[module] = self._imports(tree.body)
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    self.functions.setdefault(f"{module}.{node.name}", (node, module))

    @staticmethod
    def _imports(body) -> dict[str, str]:
        out = {}
        for node in body:
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
        return out

    def callees(self, name: str) -> list[str]:
        node, module = self.functions[name]
        local = {**self.imports[module], **self._imports([n for n in ast.walk(node) if isinstance(n, ast.ImportFrom)])}
        out = []
        for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
            f = call.func
            if isinstance(f, ast.Name):
                target = local.get(f.id, f"{module}.{f.id}")
            elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in local:
                target = f"{local[f.value.id]}.{f.attr}"  # Class.method / module.function
            else:
                continue
            if target in self.functions:
                out.append(target)
        return out

    def path(self, start: str, goal: str) -> list[str] | None:
        """The first call path from ``start`` to ``goal`` (breadth first)."""
        todo, seen = [[start]], {start}
        while todo:
            path = todo.pop(0)
            if path[-1] == goal:
                return path
            for nxt in self.callees(path[-1]):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(path + [nxt])
        return None


SCALAR_SETTINGS = {"cfg", "epochs", "lr", "min_steps", "max_steps", "patience", "batch_size", "backbone",
                   "objective", "image_size", "seed", "device", "weights", "stage"}


def _rebuilds_train_config(node: ast.FunctionDef) -> list[int]:
    """Lines where ``node`` makes a TrainConfig from loose values or a dict."""
    lines = []
    for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
        name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
        if name == "TrainConfig" or (name == "from_dict" and call.args and getattr(call.args[0], "id", "") == "TrainConfig"):
            lines.append(call.lineno)
    return lines


@pytest.mark.parametrize("entry", ["ffr.integrations.kubeflow.components.train.train_model", "ffr.cli.step_cmds.cmd_train"])
def test_settings_reach_the_loop_as_one_request(entry):
    """From the Kubeflow train step and from ``ffr train`` to ``fit``: every function below the
    entry point takes the stage as one request (or the spec that holds it; the Kubeflow step's
    library call, the run plan of requests), none takes a setting as a loose argument, and none
    makes a TrainConfig of its own."""
    index = _Index()
    path = index.path(entry, "ffr.train.loop.fit")
    assert path is not None, f"{entry} does not reach the training loop"
    assert "ffr.train.stage.run_stage" in path and "ffr.steps.train_stage" in path, path
    for name in path[1:-1]:
        node, _ = index.functions[name]
        params = node.args.args + node.args.kwonlyargs
        args = {a.arg for a in params}
        annotations = {ast.unparse(a.annotation) for a in params if a.annotation}
        assert not args & SCALAR_SETTINGS, f"{name} takes settings one by one: {sorted(args & SCALAR_SETTINGS)}"
        assert annotations & {"StageRequest", "StageSpec"} or "run_plan" in args, \
            f"{name} on the path {path} takes no request"
        assert _rebuilds_train_config(node) == [], f"{name} rebuilds a TrainConfig below the entry point"


def test_the_path_walker_sees_a_rebuilt_config():
    tree = ast.parse("def f(d):\n    from ffr.config import TrainConfig, from_dict\n    return from_dict(TrainConfig, d)\n")
    assert _rebuilds_train_config(tree.body[0]) == [3]


def test_a_request_travels_as_json_and_keeps_its_rules():
    from ffr.config import TrainConfig
    from ffr.train.request import StageRequest
    from ffr.rules import ConfigError

    r = StageRequest("finetune", TrainConfig(epochs=3, lpft_epochs=2), strategy="ffr", objective="groupdro",
                     objective_options={"eta": 0.05}, processes=2, train_data="t", val_data="v", out="o.pt")
    back = StageRequest.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back == r and back.problems() == []
    floats = {**r.to_dict(), "seed": 3.0, "settings": {**r.to_dict()["settings"], "epochs": 3.0}}  # a Struct's doubles
    assert StageRequest.from_dict(floats).settings.epochs == 3
    with pytest.raises(ConfigError, match=r"request.settings: unknown field\(s\) \['epoch'\]"):
        StageRequest.from_dict({**r.to_dict(), "settings": {"epoch": 3}})
    bad = StageRequest("finetune", TrainConfig(epochs=0), image_size=4, device="gpu", processes=0, objective="ermm")
    text = "\n".join(map(str, bad.problems()))
    for line in ("finetune.epochs: 0 must be at least 1", "image_size: 4 must be in [8, 1024] pixels",
                 "device: 'gpu' is not a device", "processes: 0 must be at least 1",
                 "objective: unknown objective 'ermm'"):
        assert line in text, line


# ---------------------------------------------------------------------------- rules written once
def _messages() -> dict[str, set[str]]:
    """Each validation message of ffr/ (the words of a rule: "must be ...", "must not be ...") →
    the functions (or module tables) that write it."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / "ffr").rglob("*.py"):
        tree = ast.parse(path.read_text())
        owners = {}
        for func in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(func):
                owners.setdefault(id(node), func.name)  # the outermost function that holds it
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            else:
                continue
            for m in re.finditer(r"\bmust (?:not )?be [^;:(\n]*", text):
                where = f"{path.relative_to(ROOT).as_posix()}:{owners.get(id(node), '<module>')}"
                found.setdefault(m.group(0).strip(" ,."), set()).add(where)
    return found


def test_every_rule_is_written_once():
    """A rule's words live in one function, or in ffr.rules' table: two places that say "must be
    at least 1" are two copies of one rule, free to drift."""
    found = _messages()
    assert "must be at least 1" in found and "must be a number in {}" not in found  # the scan sees the rules
    assert found["must be at least 1"] == {"ffr/rules.py:<module>"}
    twice = {m: sorted(w) for m, w in found.items() if len(w) > 1}
    assert twice == {}, f"rules written in more than one place: {twice}"


@pytest.mark.parametrize("param, line", [
    ("data_bias_rate=1.5", "data_bias_rate: 1.5 must be a number in (0, 1)"),
    ("train_finetune_epochs=-3", "train_finetune_epochs: -3 must be at least 1"),
    ("data_demo_name=cats", "data_demo_name: unknown built-in benchmark 'cats'; known: digits, faces, galaxies"),
    ("train_device=cuda:x", "train_device: 'cuda:x' is not a device: auto, cpu, cuda, cuda:N or mps"),
])
def test_compile_refuses_what_the_check_step_refuses_in_its_words(tmp_path, capsys, param, line):
    pytest.importorskip("kfp")
    from ffr.cli import main
    from ffr.integrations.kubeflow.components import check_config
    from ffr.integrations.kubeflow.pipelines import get_pipeline
    from ffr.integrations.kubeflow.pipelines.run import parse_params, pipeline_parameters, typed_params
    from ffr.rules import ConfigError
    from ffr.runform import short_names

    out = tmp_path / "c.yaml"
    assert main(["compile", "comparison", "--param", param, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert not out.exists() and err.startswith("ffr: error: invalid run configuration:\n") and f"  - {line}\n" in err
    # the pipeline's first step, given the same run form (as a cluster hands it the values)
    pipeline = get_pipeline("comparison")
    form = {**pipeline_parameters(pipeline), **typed_params("comparison", pipeline, parse_params([param]), check=False)}
    with pytest.raises(ConfigError) as e:
        # under the step's input names, as the pipeline wires its fields (ffr.runform.short_names)
        check_config.python_func(**{k: v for k, v in short_names(form).items() if k in check_config.component_spec.inputs})
    assert err == f"ffr: error: {e.value}\n"


def test_cli_flags_are_checked_by_the_same_rules(tmp_path, capsys):
    pytest.importorskip("kfp")
    from ffr.cli import main

    assert main(["compile", "ffr", "--parallelism", "-1", "--out", str(tmp_path / "x.yaml")]) == 2
    assert "--parallelism: -1 must be 0 (no cap) or more" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ the recipe
def test_dvc_yaml_is_written_from_the_stage_plan():
    from ffr.dvc_pipeline import dvc_yaml

    assert (ROOT / "dvc.yaml").read_text() == dvc_yaml("ffr"), "run `ffr dvc-pipeline --strategy ffr`"
    text = dvc_yaml("none", code=None)
    assert "synthesize:" not in text and "--init" not in text and "ffr train --strategy none --stage train" in text


THREE_STAGES = '''
"""A strategy of three stages, registered by a plug-in module: synthetic pretraining, a mixed
stage from it, real fine-tuning from that."""
from ffr.balance import StagePlan, Strategy, _register, equal_share


@_register
class ThreeStages(Strategy):
    name = "three"
    stages = (StagePlan("pretrain", "synthetic", objective="erm"),
              StagePlan("train", "mixed", init_from="pretrain", group_by="label_bias_source"),
              StagePlan("finetune", "real", init_from="train"))

    def synthetic_budget(self, real_counts):
        return equal_share(real_counts)
'''


@pytest.fixture
def three_stages(tmp_path, monkeypatch):
    """The plug-in ``three_stage_strategy`` on the path and in ``$FFR_PLUGINS`` (so the grid's
    worker processes and the pipeline's steps load it too); unregistered afterwards."""
    from ffr import plugins
    from ffr.balance import STRATEGIES

    (tmp_path / "plug").mkdir()
    (tmp_path / "plug" / "three_stage_strategy.py").write_text(THREE_STAGES)
    monkeypatch.syspath_prepend(str(tmp_path / "plug"))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path / 'plug'}:{__import__('os').environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv(plugins.PLUGINS_ENV, "three_stage_strategy")
    assert "three" in STRATEGIES
    yield STRATEGIES.get("three")
    monkeypatch.delenv(plugins.PLUGINS_ENV)
    STRATEGIES._items.pop("three", None)
    plugins._loaded.discard("three_stage_strategy")
    __import__("sys").modules.pop("three_stage_strategy", None)


def test_a_missing_plugin_is_an_error_naming_it(monkeypatch):
    from ffr import plugins
    from ffr.balance import STRATEGIES

    monkeypatch.setenv(plugins.PLUGINS_ENV, "no_such_ffr_plugin")
    with pytest.raises(ImportError, match="ffr plug-in 'no_such_ffr_plugin'"):
        STRATEGIES.names()


def test_a_three_stage_strategy_gets_its_dvc_pipeline(three_stages):
    from ffr.dvc_pipeline import dvc_stages

    stages = dvc_stages("three", code=None)["stages"]
    assert [s for s in stages if s not in ("prepare", "synthesize", "balance", "evaluate")] == \
        ["pretrain", "train", "finetune"]
    assert "--init" not in stages["pretrain"]["cmd"] and "models/pretrain" in stages["train"]["deps"]
    assert "--init models/train/model.pt" in stages["finetune"]["cmd"] and "models/finetune" in stages["evaluate"]["deps"]


@pytest.mark.slow
def test_a_three_stage_strategy_runs_through_compare(three_stages, tmp_path):
    from ffr.config import from_dict, ExperimentConfig
    from ffr.experiment import compare

    cfg = from_dict(ExperimentConfig, {
        "data": {"dataset": "demo", "image_size": 16, "demo": {"per_digit": 10, "image_size": 16}},
        "strategies": ["none", "three"], "bias_rates": [0.9], "seeds": [0], "device": "cpu",
        **{s: {"epochs": 1, "min_steps": 0, "batch_size": 32} for s in ("train", "pretrain", "finetune")}})
    records = compare(cfg, tmp_path / "out", progress=False, workers=2)
    three = next(r for r in records if r["strategy"] == "three")
    assert [s["name"] for s in three["stages"]] == ["pretrain", "train", "finetune"]
    assert [s["request"]["strategy"] for s in three["stages"]] == ["three"] * 3
    assert three["stages"][1]["train_data"]["synthetic"] > 0 and three["stages"][2]["train_data"]["synthetic"] == 0
    assert len({s["key"] for s in three["stages"]}) == 3 and 0 <= three["test"]["worst_group_acc"] <= 1


@pytest.mark.slow
def test_a_three_stage_strategy_runs_through_the_comparison_pipeline(three_stages, tmp_path):
    """Registered here, unknown to ffr/integrations/kubeflow/: the comparison pipeline runs it as a baseline (every
    stage in plan order in one step) on the KFP local runner."""
    pytest.importorskip("kfp")
    from ffr.integrations.kubeflow.pipelines.run import run_local

    run = run_local("comparison", {"data_demo_per_digit": 10, "data_bias_rate": 0.9, "synthesis_shards": 1, "train_pretrain_epochs": 1,
                                   "train_finetune_epochs": 1, "train_baseline_epochs": 1, "train_min_steps": 0, "train_device": "cpu",
                                   "train_baselines": [{"strategy": "none", "lr": 1e-3}, {"strategy": "three", "lr": 1e-3}]},
                    tmp_path / "runs", progress=False)
    assert list(run.results) == ["none", "three", "ffr"]
    assert run.results["three"]["model"]["stage"] == "finetune" and run.results["three"]["model"]["strategy"] == "three"
    (trained,) = [p.parent.parent for p in run.run_dir.glob("outputs/**/model/train/model.pt")]
    assert (trained / "pretrain" / "model.pt").is_file() and (trained / "model.pt").is_file()


def test_the_report_is_composed_once_for_the_cli_and_the_report_step(tmp_path, capsys):
    pytest.importorskip("kfp")
    from kfp.dsl import HTML, Metrics

    from ffr.cli import main
    from ffr.integrations.kubeflow.components import comparison_report

    def evaluation(strategy, wga):
        path = tmp_path / f"{strategy}.json"
        path.write_text(json.dumps({"strategy": strategy, "worst_group_acc": wga, "worst_group": "a_x",
                                    "balanced_acc": 0.8, "average_acc": 0.8,
                                    "groups": {"a_x": {"acc": wga, "n": 5}, "a_y": {"acc": 1.0, "n": 5}}}))
        return path

    files = [evaluation("ffr", 0.7), evaluation("none", 0.2), evaluation("usb", 0.5)]
    assert main(["report", *map(str, files), "--out", str(tmp_path / "cli")]) == 0
    assert "worst-group acc" in capsys.readouterr().out
    art = lambda cls, p: cls(name=p.name, uri=str(p), metadata={})  # noqa: E731
    summary, report = art(Metrics, tmp_path / "summary"), art(HTML, tmp_path / "report.html")
    comparison_report.python_func(baselines=[art(Metrics, files[1]), art(Metrics, files[2])],
                                  product=art(Metrics, files[0]), report=report, summary=summary)
    assert json.loads((tmp_path / "cli" / "summary.json").read_text()) == json.loads(Path(summary.path).read_text())
    assert (tmp_path / "cli" / "report.html").read_text() == Path(report.path).read_text()
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    assert main(["report", str(bad), "--out", str(tmp_path / "x")]) == 2
