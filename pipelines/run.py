"""Launchers: run a pipeline with the KFP local runner (the default: no cluster), compile it to
YAML, submit it to a Kubeflow Pipelines endpoint, or schedule it there as a recurring run.

The CLI (``ffr run / compile / submit / schedule``) imports this module lazily, so the core
``ffr`` package never imports kfp.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import ffr
from ffr.results.views import format_group_table
from pipelines.definitions import get_pipeline
from pipelines.platform import Platform


class PipelineError(ValueError):
    """A pipeline could not be built, run, compiled, submitted or scheduled; the message says why."""


def pipeline_parameters(pipeline) -> dict:
    """The pipeline's parameters and their defaults, as the run form shows them."""
    return {k: v.default for k, v in pipeline.component_spec.inputs.items()}


def parse_params(items: list[str] | None) -> dict:
    """``key=value`` strings (values parsed as YAML: ``3``, ``1e-4``, ``[a, b]``) into a dict."""
    from ffr.config import parse_set

    params = {}
    for item in items or []:
        key, value = parse_set(item)
        params[key] = value
    return params


def _check_params(name: str, pipeline, params: dict) -> None:
    known = pipeline_parameters(pipeline)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise PipelineError(f"pipeline {name!r} has no parameter(s) {unknown}; known: {sorted(known)}")


# ---------------------------------------------------------------------------------------- local run
@dataclass
class LocalRun:
    """A finished local run: its folder, the pipeline's output file, and the results per strategy."""

    run_dir: Path
    output: Path
    results: dict
    seconds: float
    mlflow_uri: str | None = None


def load_results(path: str | os.PathLike) -> dict[str, dict]:
    """Test metrics per strategy from a pipeline's output file (an ``evaluate_model`` metrics file
    or a ``comparison_report`` summary)."""
    data = json.loads(Path(path).read_text())
    return data["results"] if "results" in data else {data["strategy"]: data}


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
    import components
    import pipelines

    for pkg in (ffr, components, pipelines):
        src = Path(pkg.__file__).resolve().parent
        if runs_dir == src or src in runs_dir.parents:
            raise PipelineError(f"runs folder {runs_dir} is inside the source package {src}; choose another")


class _Tee:
    """A stdout stand-in for the local runner: everything goes to the log file; the lines that
    say which task started or finished are also written to ``console`` (the real stdout).
    Thread-safe (the runner executes ParallelFor iterations in threads)."""

    _KEEP = re.compile(r"Running pipeline|Executing task|finished with status")

    def __init__(self, log, console):
        self.log, self.console, self._buf, self._lock = log, console, "", threading.Lock()

    def write(self, s: str) -> int:
        with self._lock:
            self.log.write(s)
            self._buf += s
            *lines, self._buf = self._buf.split("\n")
            if lines:
                self.log.flush()
            if self.console is not None:
                for line in lines:
                    if self._KEEP.search(line):
                        self.console.write(line.strip() + "\n")
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
        from ffr.integrations.mlflow_tracking import local_store

        uri, artifacts = local_store(run_dir)
        return {"mlflow_uri": uri, "mlflow_artifacts": artifacts}
    return {"mlflow_uri": mlflow}


def _fail_open_runs(uri: str) -> None:
    """After a failed local run: the runs its store (in the run folder, so all of them are this
    run's) still has open end as FAILED."""
    with contextlib.suppress(Exception):
        from mlflow import MlflowClient

        client = MlflowClient(uri)
        for exp in client.search_experiments():
            for r in client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'"):
                client.set_terminated(r.info.run_id, "FAILED")


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


def run_local(name: str = "ffr", params: dict | None = None, runs_dir: str | os.PathLike = "runs",
              progress: bool = True, mlflow: str | None = None) -> LocalRun:
    """Run pipeline ``name`` with the KFP local runner (subprocesses in this Python environment).

    Everything the run writes lies in one new folder ``<runs_dir>/<name>-<timestamp>/``:
    ``outputs/`` (every task's artifacts), ``run.log`` (the runner's and the tasks' output),
    ``run.json`` (parameters, status, output) and ``results.txt`` (the group metrics table). The
    runner's scratch workspace is a subfolder the run creates; the runner deletes it at the end.
    Nothing outside the run folder is written or deleted. ``progress`` prints a line as each
    task starts and ends. ``mlflow``: ``local`` tracks the run and registers its model in an MLflow
    store inside the run folder (``mlflow.db``, ``mlartifacts/``), a URI in that server; None:
    only if ``params`` say so.
    """
    from kfp import local

    params = dict(params or {})
    pipeline = get_pipeline(name, Platform.local())
    _check_params(name, pipeline, params)
    runs_dir = Path(runs_dir).resolve()
    _refuse_source_tree(runs_dir)
    run_dir = _new_run_dir(runs_dir, name)
    workspace = run_dir / "workspace"
    workspace.mkdir()  # created here, so the runner's clean-up removes only what this run made
    record = {"pipeline": name, "params": params, "run_dir": str(run_dir), "status": "running",
              "started": datetime.now().isoformat(timespec="seconds")}
    (run_dir / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    tracking = _tracking_params(pipeline, params, mlflow, run_dir)
    mlflow_uri = tracking.get("mlflow_uri") or params.get("mlflow_uri")
    record["mlflow"] = mlflow_uri
    (run_dir / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(run_dir / "outputs"),
               workspace_root=str(workspace), raise_on_error=True)
    t0 = time.perf_counter()
    console = sys.stdout if progress else None
    if progress:
        print(f"running pipeline {name!r} locally in {run_dir} (log: {run_dir / 'run.log'})")
    try:
        inherited = os.environ.get("MLFLOW_TRACKING_URI")
        shared = mlflow not in (None, "local", "none") and mlflow == inherited
        with open(run_dir / "run.log", "w") as log, _subprocess_path(), warnings.catch_warnings(), \
                _env_without("MLFLOW_TRACKING_URI", keep=shared):
            # The components name the project's image, not a "python" one: the runner's warning
            # about it does not apply (the subprocess runs in this environment).
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            # Resources, display names and secrets are cluster settings; locally they do nothing.
            warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
            with contextlib.redirect_stdout(_Tee(log, console)), _keep_print():
                task = pipeline(**params, **tracking)
        output = Path(task.output.path)
        results = load_results(output)
    except Exception as e:
        record.update(status="failed", error=f"{type(e).__name__}: {e}", seconds=round(time.perf_counter() - t0, 2))
        (run_dir / "run.json").write_text(json.dumps(record, indent=2) + "\n")
        if mlflow == "local" and tracking:
            _fail_open_runs(mlflow_uri)
        raise PipelineError(f"pipeline {name!r} failed: {e}\n(see {run_dir / 'run.log'})") from e
    seconds = time.perf_counter() - t0
    record.update(status="succeeded", seconds=round(seconds, 2), output=str(output))
    (run_dir / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    (run_dir / "results.txt").write_text(format_group_table(results) + "\n")
    return LocalRun(run_dir, output, results, seconds, mlflow_uri)


# ------------------------------------------------------------------------------------------ compile
def compile_pipeline(name: str, out: str | os.PathLike, platform: Platform | None = None) -> Path:
    """Write pipeline ``name`` (built for ``platform``) as KFP IR YAML to ``out``."""
    from kfp import compiler

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(get_pipeline(name, platform), str(out))
    return out


# ------------------------------------------------------------------------------------ cluster APIs
_FIELDS = [  # (name, low, high, names) of the 6 fields of a Kubeflow cron expression
    ("second", 0, 59, None), ("minute", 0, 59, None), ("hour", 0, 23, None),
    ("day-of-month", 1, 31, None),
    ("month", 1, 12, ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]),
    ("day-of-week", 0, 6, ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]),
]
_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
_CRON_HELP = ("Kubeflow takes 6 fields: second minute hour day-of-month month day-of-week, "
              "e.g. '0 0 3 * * *' (every day at 03:00:00) or '0 30 2 * * MON' (Mondays at 02:30:00)")


def validate_cron(expr: str) -> str:
    """Check a Kubeflow (robfig/cron, with seconds) cron expression; return it normalised
    (single spaces). A :class:`PipelineError` names the bad field otherwise."""
    text = " ".join(str(expr).split())
    if text in _DESCRIPTORS or re.fullmatch(r"@every ((\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+)", text):
        return text
    fields = text.split(" ") if text else []
    if len(fields) != 6:
        raise PipelineError(f"bad cron expression {expr!r}: {len(fields)} field(s); {_CRON_HELP}")

    def value(tok: str, name, low, high, names) -> int:
        if names and tok.upper() in names:
            return names.index(tok.upper()) + low
        if not tok.isdigit():
            raise PipelineError(f"bad cron expression {expr!r}: {name} field has {tok!r}, not a number"
                                + (f" or one of {', '.join(names)}" if names else "") + f"; {_CRON_HELP}")
        v = int(tok)
        if not low <= v <= high:
            raise PipelineError(f"bad cron expression {expr!r}: {name} {v} is outside {low}-{high}; {_CRON_HELP}")
        return v

    for field_text, (name, low, high, names) in zip(fields, _FIELDS):
        for part in field_text.split(","):
            rng, _, step = part.partition("/")
            if step and (not step.isdigit() or int(step) == 0):
                raise PipelineError(f"bad cron expression {expr!r}: {name} step {step!r} is not a positive integer")
            if rng == "?" and name in ("day-of-month", "day-of-week") and not step:
                continue
            if rng == "*":
                continue
            lo, dash, hi = rng.partition("-")
            a = value(lo, name, low, high, names)
            if dash and value(hi, name, low, high, names) < a:
                raise PipelineError(f"bad cron expression {expr!r}: {name} range {rng!r} runs backwards")
    return text


def check_endpoint(host: str, timeout: float = 10.0) -> None:
    """Fail fast, with a clear message, when ``host`` is not a reachable Kubeflow Pipelines API
    (``GET /apis/v2beta1/healthz``). kfp.Client would otherwise retry for half a minute."""
    if not re.match(r"^https?://", host or ""):
        raise PipelineError(f"--host must be an http(s) URL of the Kubeflow Pipelines API, got {host!r}")
    url = host.rstrip("/") + "/apis/v2beta1/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            r.read()
    except urllib.error.HTTPError as e:
        hint = " (authentication needed?)" if e.code in (401, 403) else " (is this the KFP API address?)"
        raise PipelineError(f"Kubeflow Pipelines at {host} answered HTTP {e.code} on {url}{hint}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise PipelineError(f"cannot reach Kubeflow Pipelines at {host}: {reason}") from None


def _client(host: str, namespace: str | None):
    import kfp

    with warnings.catch_warnings():  # "only works with KFP v2.0.0-beta.2 and later": so do we
        warnings.filterwarnings("ignore", category=FutureWarning)
        return kfp.Client(host=host, namespace=namespace or "kubeflow")


def _package(host: str, name: str, params: dict, platform: Platform | None, tmp: str) -> str:
    """Check the parameters, then the endpoint, then compile: the cheap failures come first."""
    _check_params(name, get_pipeline(name, platform), params)
    check_endpoint(host)
    return str(compile_pipeline(name, Path(tmp) / f"{name}.yaml", platform))


def submit(host: str, name: str = "ffr", params: dict | None = None, experiment: str = "ffr",
           run_name: str | None = None, platform: Platform | None = None, namespace: str | None = None) -> str:
    """Create a run of pipeline ``name`` on the Kubeflow Pipelines API at ``host``; returns its id."""
    params = dict(params or {})
    with tempfile.TemporaryDirectory() as tmp:
        package = _package(host, name, params, platform, tmp)
        client = _client(host, namespace)
        exp = client.create_experiment(experiment, namespace=namespace)
        run = client.run_pipeline(exp.experiment_id, run_name or f"{name} {datetime.now():%Y-%m-%d %H:%M:%S}",
                                  pipeline_package_path=package, params=params)
    return run.run_id


def schedule(host: str, cron: str, name: str = "retrain", params: dict | None = None, experiment: str = "ffr",
             job_name: str | None = None, platform: Platform | None = None, namespace: str | None = None,
             max_concurrency: int = 1) -> str:
    """Create a recurring run of pipeline ``name`` on ``host`` with the 6-field ``cron``
    expression (runs missed while paused are not caught up); returns its id."""
    cron = validate_cron(cron)
    params = dict(params or {})
    with tempfile.TemporaryDirectory() as tmp:
        package = _package(host, name, params, platform, tmp)
        client = _client(host, namespace)
        exp = client.create_experiment(experiment, namespace=namespace)
        job = client.create_recurring_run(exp.experiment_id, job_name or f"{name} ({cron})", cron_expression=cron,
                                          max_concurrency=max_concurrency, no_catchup=True, params=params,
                                          pipeline_package_path=package)
    return job.recurring_run_id


def main_table(run: LocalRun) -> str:
    """What ``ffr run`` prints: the group metrics table and where the run lies."""
    text = f"{format_group_table(run.results)}\n\nrun folder: {run.run_dir} ({run.seconds:.0f} s)"
    if run.mlflow_uri and run.mlflow_uri.startswith("sqlite:"):
        text += (f"\nMLflow: mlflow ui --backend-store-uri {run.mlflow_uri} --port 5000  "
                 "(then open http://127.0.0.1:5000)")
    elif run.mlflow_uri:
        text += f"\nMLflow: {run.mlflow_uri}"
    for line in registration_lines(run.run_dir):
        text += f"\n{line}"
    return text


def registration_lines(run_dir: str | os.PathLike) -> list[str]:
    """What the run's register step decided: the registered version and the promotion gate's
    verdict (read from its ``decision`` output)."""
    lines = []
    for path in sorted(Path(run_dir).glob("outputs/**/register-model*/decision")):
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if d.get("registered"):
            verdict = "promoted to @champion" if d.get("promoted") else ("refused" if d.get("refused") else
                                                                         "not promoted (champion kept)")
            lines.append(f"registered: {d['model']} version {d['version']}, {verdict}: {d['summary']}")
        else:
            lines.append(f"registered: no ({d.get('summary', '')})")
    return lines


if __name__ == "__main__":  # pragma: no cover - convenience: python -m pipelines.run [name]
    print(main_table(run_local(sys.argv[1] if len(sys.argv) > 1 else "ffr")))
