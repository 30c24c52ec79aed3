"""The DVC pipeline of a strategy, written from its stage plan: ``ffr dvc-pipeline`` writes
``dvc.yaml`` (and the sections ``params.yaml`` lacks), so DVC runs the same recipe as ``ffr
compare`` and the Kubeflow pipelines — prepare → synthesize → balance → one ``ffr train`` stage per
stage of the plan (each from the model of the stage it is planned to start from) → evaluate the
last — and a strategy with another plan needs no hand-written stage.

Every stage runs an ``ffr`` command and depends on the code it runs: the ``ffr`` package folder
(``.dvcignore`` leaves its bytecode out), so any code change reruns the pipeline, a new module
included. Only YAML is written here; DVC itself is not imported.

``dvc plots show`` loads its plotting library (Vega) from a CDN: offline its page is blank. The
page template written here (:func:`write_plots_template`) carries the library itself, and a DVC
project's ``.dvc/config`` is pointed at it, so the plots draw with no network.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

# The training settings each stage's params.yaml section holds (a stage's ``--set`` overrides).
STAGE_KEYS = ("epochs", "lr", "batch_size", "min_steps", "patience", "lpft_epochs")
HEADER = """\
# Written by `ffr dvc-pipeline --strategy {strategy}` from the strategy's stage plan (ffr/balance.py): do
# not edit by hand, rerun the command. The stages run the `ffr` CLI (the same entry points the Kubeflow
# components call): prepare -> synthesize -> balance -> one training stage per stage of the plan ->
# evaluate. Parameters come from params.yaml (one section per stage); `dvc repro` reruns what changed,
# `dvc exp run --set-param ...` sweeps. Each stage depends on the code it runs, the ffr package folder.
"""


def dvc_stages(strategy: str = "ffr", code: str | None = "ffr") -> dict:
    """``dvc.yaml``'s content for ``strategy`` (``stages``: name → DVC stage); ``code``: the code
    folder every stage depends on (None: none)."""
    from ffr.balance import STRATEGIES

    impl = STRATEGIES.get(strategy)
    code_deps = [code] if code else []
    stages: dict = {
        "prepare": {
            "cmd": "ffr prepare --set data.dataset=${prepare.dataset} --demo-name ${prepare.demo_name} "
                   "--demo-per-digit ${prepare.per_digit} --set data.min_val_per_group=${prepare.min_val_per_group} "
                   "--bias-rate ${prepare.bias_rate} --seed ${prepare.seed} --source data/source --out data/prepared",
            "deps": code_deps, "params": ["prepare"], "outs": ["data/source", "data/prepared"]},
    }
    balance_deps = ["data/prepared", "data/source"]
    balance_cmd = f"ffr balance --strategy {strategy} --real data/prepared --out data/balanced"
    if impl.uses_synthetic:
        stages["synthesize"] = {
            "cmd": f"ffr synthesize --real data/prepared --strategy {strategy} --backend ${{synthesize.backend}} "
                   "--seed ${synthesize.seed} --quiet --out data/synthetic",
            "deps": ["data/prepared", *code_deps], "params": ["synthesize"], "outs": ["data/synthetic"]}
        balance_deps.append("data/synthetic")
        balance_cmd += " --synthetic data/synthetic"
    stages["balance"] = {"cmd": balance_cmd, "deps": balance_deps + code_deps, "outs": ["data/balanced"]}
    for plan in impl.stages:
        sets = " ".join(f"--set {plan.name}.{k}=${{{plan.name}.{k}}}" for k in STAGE_KEYS)
        init = f" --init models/{plan.init_from}/model.pt" if plan.init_from else ""
        stages[plan.name] = {
            "cmd": f"ffr train --strategy {strategy} --stage {plan.name} --train data/balanced/{plan.name} "
                   f"--val data/prepared{init} --set backbone=${{model.backbone}} "
                   f"--set data.image_size=${{model.image_size}} --seed ${{model.seed}} {sets} "
                   f"--out models/{plan.name}/model.pt --history-csv plots/{plan.name}_history.csv",
            "deps": [f"data/balanced/{plan.name}", "data/prepared", "data/source",
                     *([f"models/{plan.init_from}"] if plan.init_from else []), *code_deps],
            "params": ["model", plan.name], "outs": [f"models/{plan.name}"],
            "plots": [{f"plots/{plan.name}_history.csv": {"cache": False, "x": "epoch", "y": "val/worst_group_acc"}}]}
    last = impl.stages[-1].name
    stages["evaluate"] = {
        "cmd": f"ffr evaluate --model models/{last}/model.pt --data data/prepared --split ${{evaluate.split}} "
               "--out metrics/test.json --groups-csv plots/test_groups.csv",
        "deps": [f"models/{last}", "data/prepared", "data/source", *code_deps], "params": ["evaluate"],
        "metrics": [{"metrics/test.json": {"cache": False}}],
        # a horizontal bar per group: the numbers on x, the groups on y
        "plots": [{"plots/test_groups.csv": {"cache": False, "x": "acc", "y": "group", "template": "bar_horizontal"}}]}
    return {"stages": stages}


def dvc_yaml(strategy: str = "ffr", code: str | None = "ffr") -> str:
    """The text of ``dvc.yaml`` for ``strategy`` (:func:`dvc_stages`), with its header."""
    body = yaml.safe_dump(dvc_stages(strategy, code), sort_keys=False, width=120)
    return HEADER.format(strategy=strategy) + body


def missing_params(strategy: str, params: dict) -> dict:
    """The ``params.yaml`` sections the DVC pipeline of ``strategy`` reads that ``params`` lacks,
    with the project's defaults (a stage's: its experiment-config section's settings)."""
    from ffr.balance import STRATEGIES
    from ffr.config import ExperimentConfig

    cfg = ExperimentConfig()
    wanted = {"prepare": {"dataset": "demo", "demo_name": "digits", "per_digit": 0, "bias_rate": cfg.bias_rates[0],
                          "min_val_per_group": cfg.data.min_val_per_group, "seed": 0},
              "model": {"backbone": cfg.backbone, "image_size": cfg.data.image_size, "seed": 0},
              "evaluate": {"split": "test"}}
    if STRATEGIES.get(strategy).uses_synthetic:
        wanted["synthesize"] = {"backend": cfg.synthesis.backend, "seed": cfg.synthesis.seed}
    for plan in STRATEGIES.get(strategy).stages:
        settings = cfg.stage_settings(plan.name)
        wanted[plan.name] = {k: getattr(settings, k) for k in STAGE_KEYS}
    return {k: v for k, v in wanted.items() if k not in params}


PLOTS_TEMPLATE = "dvc_plots.html"
VEGA_LITE = "5.21"  # the Vega-Lite of DVC's templates (schema v5)


def plots_page_template() -> str | None:
    """An HTML template for ``dvc plots show`` (``{plot_divs}``: DVC's plots) with Vega, Vega-Lite
    and vega-embed inline, taken from vl-convert (the ``plots`` extra); None without it. DVC's own
    template names the CDN in ``{scripts}``, which this one leaves out."""
    try:
        import vl_convert
    except ImportError:
        return None
    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE)
    if "</script" in bundle.lower() or "{plot_divs}" in bundle:  # could not be inlined as it is
        return None
    return ("<!DOCTYPE html>\n<html>\n<head>\n{refresh_tag}\n<meta charset=\"UTF-8\">\n<title>DVC plots</title>\n"
            f"<script>\n{bundle}\n</script>\n</head>\n<body>\n{{plot_divs}}\n</body>\n</html>\n")


def write_plots_template(out_dir: str | os.PathLike = ".") -> Path | None:
    """Write ``out_dir/dvc_plots.html`` (:func:`plots_page_template`) and, in a DVC project (a
    ``.dvc`` folder there), make it ``plots.html_template`` unless one is set: plain ``dvc plots
    show`` then works offline (elsewhere: ``dvc plots show --html-template dvc_plots.html``).
    Returns the template's path, or None when the ``plots`` extra is not installed."""
    text = plots_page_template()
    if text is None:
        return None
    out = Path(out_dir) / PLOTS_TEMPLATE
    out.write_text(text)
    config = Path(out_dir) / ".dvc" / "config"
    if config.parent.is_dir():
        current = config.read_text() if config.is_file() else ""
        if "html_template" not in current:
            line = f"    html_template = ../{PLOTS_TEMPLATE}\n"
            if "[plots]" in current:
                current = current.replace("[plots]\n", "[plots]\n" + line, 1)
            else:
                current += ("" if not current or current.endswith("\n") else "\n") + "[plots]\n" + line
            config.write_text(current)
    return out


def write_dvc_pipeline(out_dir: str | os.PathLike = ".", strategy: str = "ffr", code: str | None = "ffr") -> list[Path]:
    """Write ``out_dir/dvc.yaml`` for ``strategy``, the offline page template of ``dvc plots
    show`` (:func:`write_plots_template`) and add to ``out_dir/params.yaml`` (created if missing)
    the sections it lacks; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dvc.yaml").write_text(dvc_yaml(strategy, code))
    written = [out / "dvc.yaml"]
    template = write_plots_template(out)
    if template is not None:
        written.append(template)
    params_file = out / "params.yaml"
    params = yaml.safe_load(params_file.read_text()) or {} if params_file.is_file() else {}
    missing = missing_params(strategy, params)
    if missing:
        text = params_file.read_text() if params_file.is_file() else ""
        params_file.write_text(text + ("\n" if text and not text.endswith("\n") else "")
                               + yaml.safe_dump(missing, sort_keys=False))
        written.append(params_file)
    return written
