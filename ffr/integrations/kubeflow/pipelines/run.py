"""Launchers: run a pipeline with the KFP local runner (the default: no cluster), or compile it to
YAML. Submitting, scheduling and uploading to a Kubeflow Pipelines cluster is :mod:`pipelines.cluster`.

The CLI (``ffr run / compile``) imports this module lazily, so the core ``ffr`` package never
imports kfp.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import ffr
from ffr.results.views import format_group_table
from ffr.integrations.kubeflow.pipelines.definitions import get_pipeline
from ffr.integrations.kubeflow.pipelines.platform import Platform


class PipelineError(ValueError):
    """A pipeline could not be built, run, compiled, submitted or scheduled; the message says why."""


def pipeline_parameters(pipeline) -> dict:
    """The pipeline's parameters and their defaults, as the run form shows them (an integer
    parameter's default is an int, also in a pipeline loaded back from its YAML, which stores 8 as 8.0)."""
    from ffr.integrations.kubeflow.pipelines.parameters import parameter_types

    types = parameter_types(pipeline)
    return {k: int(v.default) if types[k] is int and isinstance(v.default, float) and v.default.is_integer()
            else v.default for k, v in pipeline.component_spec.inputs.items()}


def parse_params(items: list[str] | None) -> dict:
    """``key=value`` strings (values parsed as YAML: ``3``, ``1e-4``, ``[a, b]``) into a dict;
    ``key=@FILE`` takes the file's text (the sweep's ``sweep_config=@configs/sweep_demo.yaml``)."""
    from ffr.config import parse_set

    params = {}
    for item in items or []:
        key, eq, raw = item.partition("=")
        if eq and raw.startswith("@"):
            path = Path(raw[1:])
            if not path.is_file():
                raise PipelineError(f"--param {key.strip()}=@{path}: no such file")
            params[key.strip()] = path.read_text(encoding="utf-8")
            continue
        key, value = parse_set(item)
        params[key] = value
    return params


def _check_params(name: str, pipeline, params: dict) -> dict:
    """``params`` under pipeline ``name``'s names: a name the run form had before its fields were
    grouped by prefix is replaced, with a warning on stderr (:func:`ffr.runform.form_names`); a
    name the pipeline does not have is a :class:`PipelineError`."""
    from ffr.runform import FORM_FIELDS, form_names

    known = pipeline_parameters(pipeline)
    twice = sorted(k for k in params if k not in known and FORM_FIELDS.get(k) in params)
    if twice:
        raise PipelineError(f"pipeline {name!r}: {', '.join(f'{k!r} and {FORM_FIELDS[k]!r}' for k in twice)} "
                            "name the same parameter (its old and its run-form name); give one")
    params, notes = form_names(params, known)
    for note in notes:
        print(f"ffr: warning: {note}", file=sys.stderr)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise PipelineError(f"pipeline {name!r} has no parameter(s) {unknown}; known: {sorted(known)}")
    return params


# ---------------------------------------------------------------------------------------- local run
@dataclass
class LocalRun:
    """A finished local run: its folder, the pipeline's output file, and the results per strategy."""

    run_dir: Path
    output: Path
    results: dict
    seconds: float
    mlflow_uri: str | None = None


def load_results(path: str | os.PathLike) -> dict[str, dict] | list[dict]:
    """Test metrics per strategy from a pipeline's output file (an ``evaluate_model`` metrics file
    or a ``comparison_report`` summary), or a sweep's records (its ``results.json``)."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, list):
        return data
    return data["results"] if "results" in data else {data["strategy"]: data}


def results_text(results) -> str:
    """A local run's results as ``ffr run`` prints them: the group table of each strategy, or a
    sweep's tables (selected candidates with 95% intervals, worst-group accuracy per column)."""
    if isinstance(results, list):
        from ffr.results.tables import markdown_table, wga_pivot

        return f"{markdown_table(results)}\n\n{wga_pivot(results)}"
    return format_group_table(results)


def _new_run_dir(runs_dir: Path, name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        run_dir = runs_dir / (f"{name}-{stamp}" + (f"-{i}" if i else ""))
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            continue
    raise PipelineError(f"{runs_dir}: cannot create a new run folder for {name!r}")


def _refuse_source_tree(runs_dir: Path) -> None:
    src = Path(ffr.__file__).resolve().parent
    if runs_dir == src or src in runs_dir.parents:
        raise PipelineError(f"runs folder {runs_dir} is inside the source package {src}; choose another")


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _Tee:
    """A stdout stand-in for the local runner: everything goes to the log file; the lines that
    say which task started or finished are also written to ``console`` (the real stdout).
    Thread-safe (the runner executes ParallelFor iterations in threads)."""

    _KEEP = re.compile(r"Running pipeline|Executing task|finished with status")

    def __init__(self, log, console):
        self.log, self.console, self._buf, self._lock = log, console, "", threading.Lock()
        self._color = bool(console is not None and getattr(console, "isatty", lambda: False)())

    def write(self, s: str) -> int:
        from ffr.paths import redact_uri

        s = redact_uri(s)  # a URI's password never reaches the log or the console
        with self._lock:
            self.log.write(_ANSI.sub("", s))  # the log is read in editors and CI logs: no colour codes
            self._buf += s
            *lines, self._buf = self._buf.split("\n")
            if lines:
                self.log.flush()
            if self.console is not None:
                for line in lines:
                    if self._KEEP.search(line):
                        self.console.write((line if self._color else _ANSI.sub("", line)).strip() + "\n")
                        self.console.flush()
        return len(s)

    def flush(self) -> None:
        self.log.flush()


@contextlib.contextmanager
def _subprocess_path():
    """Components run in subprocesses: let them import the same ``ffr`` as this process."""
    root = str(Path(ffr.__file__).resolve().parent.parent)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([root] + ([old] if old else []))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


@contextlib.contextmanager
def _keep_print():
    """Restore ``builtins.print`` afterwards: the runner indents task logs by swapping it, and
    two ParallelFor threads doing so at once can leave the indenting version installed. Likewise
    drop the logging handlers the runner attached to the redirected stdout (the run's log file,
    closed after the run): a later log record would otherwise fail with a logging traceback."""
    import builtins
    import logging

    original = builtins.print
    try:
        yield
    finally:
        builtins.print = original
        loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                           if isinstance(lg, logging.Logger)]
        for lg in loggers:
            for h in list(lg.handlers):
                if isinstance(getattr(h, "stream", None), _Tee):
                    lg.removeHandler(h)


def _tracking_params(pipeline, params: dict, mlflow: str | None, run_dir: Path) -> dict:
    """The pipeline's tracking parameters for ``mlflow``: ``local`` (a store in the run folder,
    artifacts beside it), a tracking URI, or None (nothing added)."""
    if not mlflow or "mlflow_uri" in params or "mlflow_uri" not in pipeline_parameters(pipeline):
        return {}
    if mlflow == "local":
        from ffr.integrations.mlflow_server import local_store

        uri, artifacts = local_store(run_dir)
        return {"mlflow_uri": uri, "mlflow_artifacts": artifacts}
    return {"mlflow_uri": mlflow}


def _without_password(params: dict, mlflow: str | None, env: dict) -> tuple[dict, str | None]:
    """``params`` and ``mlflow`` with the password of a tracking URI (``http://user:pw@host``) taken
    out: the user and password go into ``env`` (``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``, which
    MLflow's client reads), so the run record, the log and the steps' arguments hold the bare URI."""
    def strip(uri):
        if not isinstance(uri, str):
            return uri
        from ffr.paths import split_credentials

        bare, user, password = split_credentials(uri)
        if password is not None:
            env.update(MLFLOW_TRACKING_USERNAME=user or "", MLFLOW_TRACKING_PASSWORD=password)
        return bare

    params = dict(params)
    if "mlflow_uri" in params:
        params["mlflow_uri"] = strip(params["mlflow_uri"])
    return params, strip(mlflow)


@contextlib.contextmanager
def _env_with(values: dict):
    """The ``with`` block with environment variables ``values`` set (the runner's steps inherit them)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _env_without(name: str, keep: bool = False):
    """The ``with`` block without environment variable ``name`` (the runner's steps inherit the
    environment: an inherited ``MLFLOW_TRACKING_URI`` must not send a local run to a shared server)."""
    value = None if keep else os.environ.pop(name, None)
    try:
        yield
    finally:
        if value is not None:
            os.environ[name] = value


def result_file(run_dir: str | os.PathLike) -> Path:
    """The file holding a finished local run's results: the comparison report's summary, else
    the one evaluation's metrics (the pipelines return nothing: their steps run inside an exit
    handler, and KFP takes no pipeline output from inside one)."""
    outputs = Path(run_dir) / "outputs"
    found = (sorted(outputs.glob("**/comparison-report*/summary")) or sorted(outputs.glob("**/sweep-report*/results/results.json"))
             or sorted(outputs.glob("**/evaluate-model*/metrics")))
    if len(found) != 1:
        raise PipelineError(f"{outputs}: expected one comparison summary, sweep report or evaluation, found {len(found)}")
    return found[0]


_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)): ?(.*)$")


def display_names(pipeline) -> dict[str, str]:
    """Task name (``train-model-2``) → the display name the Kubeflow UI shows (``ffr step 2:
    fine-tune on real``), over the pipeline's DAG and its sub-DAGs (loops, exit handler)."""
    spec = pipeline.pipeline_spec
    dags = [spec.root.dag] + [c.dag for c in spec.components.values() if c.HasField("dag")]
    return {name: task.task_info.name for dag in dags for name, task in dag.tasks.items()}


def failure_summary(log_path: str | os.PathLike, pipeline) -> str | None:
    """Which step failed and why, read from a local run's log: the display name of each failed
    step (the first one first) and the last exception its log shows, with the lines that
    continue the message. None when the log names no failed step."""
    try:
        lines = [_ANSI.sub("", line.rstrip("\n")) for line in Path(log_path).read_text(errors="replace").splitlines()]
    except OSError:
        return None
    names = display_names(pipeline)
    failed = [m[1] for line in lines if (m := re.search(r"Task '([^']+)' finished with status FAILURE", line))]
    if not failed:
        return None
    task = failed[0]
    start = max((i for i, line in enumerate(lines) if f"Executing task '{task}'" in line), default=0)
    end = next((i for i, line in enumerate(lines) if i > start and f"Task '{task}' finished" in line), len(lines))
    body = [line.strip() for line in lines[start:end]]  # the runner indents a step's log
    cause = None
    for i, line in enumerate(body):
        if _EXCEPTION.match(line):
            more = []
            for nxt in body[i + 1:]:
                if not nxt.startswith("- "):
                    break
                more.append(f"  {nxt}")
            cause = "\n".join([line, *more])
    base = re.sub(r"-(\d+|iteration-\d+)$", "", task)
    step = names.get(task) or names.get(base) or task
    text = f"step {step!r} ({task}) failed" + (f": {cause}" if cause else "")
    others = [t for t in dict.fromkeys(failed[1:]) if t != task]
    if others:
        text += f"\n(then also failed or skipped: {', '.join(others)})"
    return text


def run_local(name: str = "ffr", params: dict | None = None, runs_dir: str | os.PathLike = "runs",
              progress: bool = True, mlflow: str | None = None, runner=None, precheck: bool = True,
              compiled: str | os.PathLike | None = None) -> LocalRun:
    """Run pipeline ``name`` with the KFP local runner (subprocesses in this Python environment).

    Everything the run writes lies in one new folder ``<runs_dir>/<name>-<timestamp>/``:
    ``outputs/`` (every task's artifacts), ``run.log`` (the runner's and the tasks' output),
    ``run.json`` (parameters, status, output) and ``results.txt`` (the group metrics table). The
    runner's scratch workspace is a subfolder the run creates; the runner deletes it at the end.
    Nothing outside the run folder is written or deleted. ``progress`` prints a line as each
    task starts and ends. ``mlflow``: ``local`` tracks the run and registers its model in an MLflow
    store inside the run folder (``mlflow.db``, ``mlartifacts/``), a URI in that server; None:
    only if ``params`` say so. ``runner``: the KFP local runner configuration (default
    subprocesses of this Python environment; the image test passes one that runs each step in
    the component image). ``precheck``: refuse a bad run form here, before a run folder is made
    (False leaves it to the pipeline's first step, as on a cluster whose run form was edited).
    ``compiled``: run this compiled YAML of pipeline ``name`` (``ffr compile``'s output, loaded
    back) instead of building it here.
    """
    from kfp import local

    params = dict(params or {})
    if compiled is not None:
        from kfp import components

        pipeline = components.load_component_from_file(str(compiled))
    else:
        pipeline = get_pipeline(name, Platform.local())
    params = _check_params(name, pipeline, params)
    params = typed_params(name, pipeline, params, check=precheck)  # a 0 for a float parameter is 0.0
    inherited = os.environ.get("MLFLOW_TRACKING_URI")
    shared = mlflow not in (None, "local", "none") and mlflow == inherited
    secrets: dict = {}
    params, mlflow = _without_password(params, mlflow, secrets)  # the password travels in the environment
    runs_dir = Path(runs_dir).resolve()
    _refuse_source_tree(runs_dir)
    run_dir = _new_run_dir(runs_dir, name)
    workspace = run_dir / "workspace"
    workspace.mkdir()  # created here, so the runner's clean-up removes only what this run made
    record = {"pipeline": name, "params": params, "run_dir": str(run_dir), "status": "running",
              "started": datetime.now().isoformat(timespec="seconds")}
    (run_dir / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    if "sweep_stage_store" in pipeline_parameters(pipeline) and not params.get("sweep_stage_store"):
        params["sweep_stage_store"] = str(run_dir / "stages")  # the sweep's tasks share the run folder
    tracking = _tracking_params(pipeline, params, mlflow, run_dir)
    mlflow_uri = tracking.get("mlflow_uri") or params.get("mlflow_uri")
    record["mlflow"] = mlflow_uri
    (run_dir / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    local.init(runner=runner or local.SubprocessRunner(use_venv=False), pipeline_root=str(run_dir / "outputs"),
               workspace_root=str(workspace), raise_on_error=True)
    t0 = time.perf_counter()
    console = sys.stdout if progress else None
    if progress:
        print(f"running pipeline {name!r} locally in {run_dir} (log: {run_dir / 'run.log'})")
    try:
        with open(run_dir / "run.log", "w") as log, _subprocess_path(), warnings.catch_warnings(), \
                _env_without("MLFLOW_TRACKING_URI", keep=shared), _env_with(secrets):
            # The components name the project's image, not a "python" one: the runner's warning
            # about it does not apply (the subprocess runs in this environment).
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            # Resources, display names and secrets are cluster settings; locally they do nothing.
            warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
            with contextlib.redirect_stdout(_Tee(log, console)), _keep_print():
                pipeline(**params, **tracking)
        output = result_file(run_dir)
        results = load_results(output)
    except Exception as e:
        from ffr.paths import redact_uri

        cause = redact_uri(failure_summary(run_dir / "run.log", pipeline) or _ANSI.sub("", f"{type(e).__name__}: {e}"))
        record.update(status="failed", error=cause, seconds=round(time.perf_counter() - t0, 2))
        (run_dir / "run.json").write_text(json.dumps(record, indent=2) + "\n")
        raise PipelineError(f"pipeline {name!r} failed: {cause}\n(see {run_dir / 'run.log'})") from e
    seconds = time.perf_counter() - t0
    record.update(status="succeeded", seconds=round(seconds, 2), output=str(output))
    (run_dir / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    (run_dir / "results.txt").write_text(results_text(results) + "\n")
    return LocalRun(run_dir, output, results, seconds, mlflow_uri)


# ------------------------------------------------------------------------------------------ compile
def typed_params(name: str, pipeline, params: dict, check: bool = True) -> dict:
    """``params`` checked against pipeline ``name``'s parameters and converted to their types (an
    integer for a float parameter becomes a float; an empty value for a string parameter, which
    YAML reads as null, the empty string). A :class:`PipelineError` names a parameter the pipeline
    does not have, or one whose value does not fit its type, and the type it expects. With
    ``check``, the run form they make with the other parameters' defaults is then checked as the
    pipeline's first step checks it (:func:`ffr.runform.check_form`: the same refusal, in the same
    words, before anything is compiled, run or sent to a cluster)."""
    from ffr.integrations.kubeflow.pipelines.parameters import parameter_types

    params = _check_params(name, pipeline, params)
    types = parameter_types(pipeline)
    typed = {}
    for key, value in params.items():
        want = types[key]
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif want is str and value is None:
            value = ""
        elif want is str and isinstance(value, (dict, list)):  # a document given inline: its YAML text
            import yaml

            value = yaml.safe_dump(value, sort_keys=False)
        if not isinstance(value, want) or (want in (int, float) and isinstance(value, bool)):
            hint = (f"; quote it to pass it as text: --param {key}='\"{value}\"'"
                    if want is str and isinstance(value, (int, float, bool)) else "")
            raise PipelineError(f"pipeline {name!r} parameter {key!r} expects {want.__name__}, got {value!r} "
                                f"({type(value).__name__}){hint}")
        typed[key] = value
    if check:
        from ffr.runform import check_form

        check_form({**pipeline_parameters(pipeline), **typed})
    return typed


def compile_pipeline(name: str, out: str | os.PathLike, platform: Platform | None = None,
                     params: dict | None = None) -> Path:
    """Write pipeline ``name`` (built for ``platform``) as KFP IR YAML to ``out``. ``params``
    (name → value) replace those parameters' defaults in it: what the run form starts with."""
    from kfp import compiler

    pipeline = get_pipeline(name, platform)
    defaults = typed_params(name, pipeline, dict(params or {}))
    for key, value in defaults.items():  # a document default (the sweep's config) on one line:
        if isinstance(value, str) and "\n" in value:  # KFP's header comment breaks on a multi-line one
            from ffr.config import yaml_load

            doc = yaml_load(value, f"--param {key}")
            if isinstance(doc, (dict, list)):
                defaults[key] = json.dumps(doc)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(out), pipeline_parameters=defaults or None)
    return out


def main_table(run: LocalRun) -> str:
    """What ``ffr run`` prints: the group metrics table and where the run lies."""
    text = f"{results_text(run.results)}\n\nrun folder: {run.run_dir} ({run.seconds:.0f} s)"
    if run.mlflow_uri and run.mlflow_uri.startswith("sqlite:"):
        text += (f"\nMLflow: mlflow ui --backend-store-uri {run.mlflow_uri} --port 5000  "
                 "(then open http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning: a run folder's "
                 "store holds one experiment, id 1)")
    elif run.mlflow_uri:
        text += f"\nMLflow: {run.mlflow_uri}"
    for line in registration_lines(run.run_dir):
        text += f"\n{line}"
    return text


def registration_lines(run_dir: str | os.PathLike) -> list[str]:
    """What the run's register step decided: the registered version and the promotion gate's
    verdict (read from its ``decision`` output)."""
    lines = []
    for path in sorted(Path(run_dir).glob("outputs/**/register-*/decision")):
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if d.get("registered"):
            verdict = "promoted to @champion" if d.get("promoted") else ("refused" if d.get("refused") else
                                                                         "not promoted (champion kept)")
            lines.append(f"registered: {d['model']} version {d['version']}, {verdict}: {d['summary']}")
            if (Path(run_dir) / "mlflow.db").is_file():
                alias = "" if d.get("promoted") else f" --version {d['version']}"
                lines.append(f"serve it: ffr serve {d['model']}{alias} --mlflow-dir {run_dir}  (then: "
                             f"ffr serve prints a curl line that asks it about an image)")
        else:
            lines.append(f"registered: no ({d.get('summary', '')})")
    return lines


if __name__ == "__main__":  # pragma: no cover - convenience: python -m ffr.integrations.kubeflow.pipelines.run [name]
    print(main_table(run_local(sys.argv[1] if len(sys.argv) > 1 else "ffr")))
