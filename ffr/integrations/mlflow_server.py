"""Reaching an MLflow server: the health check before any call, bounded retries, the errors that
name the server (credentials redacted), the local store of a run folder, and the provenance tags
every run and model carries.

Talking to a server is bounded: the server must answer ``/health`` within a few attempts, and
each request is retried a bounded number of times (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` etc.,
defaulted here to small values when unset); then a :class:`TrackingError` names the server.
"""

from __future__ import annotations

import base64
import functools
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from ffr.integrations import ServiceError
from ffr.paths import redact_uri


# Bounded retries for every request the MLflow client makes (MLflow's own defaults wait minutes).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
                 # system metrics every 2 s (MLflow's 10 s gives a stage of a few seconds one sample)
                 "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "2"}


class TrackingError(ServiceError):
    """The tracking server or registry could not be used; the message says which and why."""


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _health_request(tracking_uri: str) -> urllib.request.Request:
    """``GET <tracking_uri>/health``, the URI's user info (or ``$MLFLOW_TRACKING_USERNAME`` /
    ``_PASSWORD``) sent as a Basic ``Authorization`` header, as MLflow's client does."""
    parts = urllib.parse.urlsplit(tracking_uri)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    url = urllib.parse.urlunsplit((parts.scheme, hostport, parts.path.rstrip("/") + "/health", parts.query, ""))
    request = urllib.request.Request(url)
    if userinfo:
        user, _, password = userinfo.partition(":")
        user, password = urllib.parse.unquote(user), urllib.parse.unquote(password)
    else:  # a bare URI: the credential MLflow's client takes from the environment (ffr run hands it so)
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user or password:
        pair = f"{user or ''}:{password or ''}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(pair).decode())
    return request


def check_server(tracking_uri: str, attempts: int = 3, delay: float = 1.0) -> None:
    """For an HTTP tracking URI, wait for ``/health`` to answer (bounded attempts with backoff);
    raise :class:`TrackingError` when it never does. Local stores need no check. The message
    shows the URI redacted (:func:`redact_uri`)."""
    if not _is_http(tracking_uri):
        return
    request = _health_request(tracking_uri)
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError, ValueError) as e:  # ValueError: a malformed URI (port)
            last = e
        if attempt + 1 < attempts:
            time.sleep(delay * 2 ** attempt)
    raise TrackingError(redact_uri(f"MLflow server {tracking_uri} is not reachable ({attempts} attempts to "
                                   f"{request.full_url}: {last}); start it or set --mlflow / MLFLOW_TRACKING_URI "
                                   "to a running one"))


def configure(tracking_uri: str) -> None:
    """Point MLflow at ``tracking_uri`` with bounded HTTP retries, after checking the server."""
    import mlflow

    for k, v in HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)
    if redact_uri(tracking_uri) != tracking_uri:  # MLflow prints "View run ... at: <URI>/#/..." otherwise
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    check_server(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)


def client_for(tracking_uri: str):
    """An ``MlflowClient`` for a checked ``tracking_uri``."""
    from mlflow import MlflowClient

    configure(tracking_uri)
    return MlflowClient(tracking_uri, registry_uri=tracking_uri)


def guarded(action: str) -> Callable:
    """Turn MLflow and connection failures of ``action`` into a :class:`TrackingError` (whose
    message shows any URI in them redacted: MLflow's name the request URL, credentials included)."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            from mlflow.exceptions import MlflowException

            try:
                return fn(*args, **kwargs)
            except TrackingError:
                raise
            except (MlflowException, OSError) as e:
                raise TrackingError(redact_uri(f"{action} failed: {type(e).__name__}: {e}")) from e
        return inner

    return wrap


def provenance() -> dict[str, str]:
    """What produced a run or a model: the ffr version, the git revision of the code that runs
    (the checkout ffr is imported from; in an image without one, ``$FFR_GIT_COMMIT``, which the
    image sets from its build argument) and, in a cluster, the component image (``$FFR_IMAGE``,
    set on every step by the pipeline). Tags ``ffr.version``, ``ffr.git_commit``, ``ffr.image``."""
    import ffr
    from ffr.revision import code_revision

    commit, dirty = code_revision()
    out = {"ffr.version": ffr.__version__,
           "ffr.git_commit": commit and commit + ("-dirty" if dirty else ""),
           "ffr.image": os.environ.get("FFR_IMAGE")}
    return {k: v for k, v in out.items() if v}


def source_tags(pipeline: str | None, step: str | None = None) -> dict[str, str]:
    """What the runs table's Source column shows for a run of ffr (MLflow's own default is the
    entry script: ``executor_main.py`` in a Kubeflow pod): ``ffr compare``, ``ffr comparison
    pipeline: train``. A pipeline step is a JOB, a command a LOCAL run."""
    if not pipeline:
        return {}
    name = pipeline if pipeline.startswith("ffr ") else f"ffr {pipeline} pipeline"
    return {"mlflow.source.name": name + (f": {step}" if step else ""),
            "mlflow.source.type": "LOCAL" if pipeline.startswith("ffr ") else "JOB"}


def local_store(run_dir: str | os.PathLike) -> tuple[str, str]:
    """A local MLflow store inside a run folder: (SQLite tracking URI, artifact location)."""
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{run_dir / 'mlflow.db'}", (run_dir / "mlartifacts").as_uri()
