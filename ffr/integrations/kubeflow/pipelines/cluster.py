"""Kubeflow Pipelines clusters: submit a run, schedule a recurring run, upload a pipeline (or a new
version of it) so that the Kubeflow UI lists it; on multi-user clusters with a credential
(:class:`Credentials`) and a profile namespace.

The CLI (``ffr submit / schedule / upload``) imports this module lazily, so the core ``ffr``
package never imports kfp. Every failure is a :class:`PipelineError` that says why: a bad cron
expression or parameter before anything is sent, an unreachable host, a refused credential or a
refused request (HTTP status and reason) without a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import ffr
from ffr.integrations.kubeflow.pipelines.definitions import get_pipeline
from ffr.integrations.kubeflow.pipelines.platform import Platform
from ffr.integrations import ServiceError
from ffr.integrations.kubeflow.pipelines.cron import validate_cron
from ffr.integrations.kubeflow.pipelines.run import PipelineError, compile_pipeline, typed_params


class KubeflowUnavailable(PipelineError, ServiceError):
    """The Kubeflow Pipelines API could not be reached, did not answer in time, or answered
    something that is not its API: a service problem (the CLI's exit code 3), not bad input."""


# Seconds a request to the Kubeflow Pipelines API may take ($FFR_KFP_TIMEOUT): an API whose health
# check answers but whose calls stall must not keep `ffr submit` waiting forever.
def request_timeout() -> float:
    """The timeout of one Kubeflow Pipelines API request, in seconds (``$FFR_KFP_TIMEOUT``, default 60)."""
    text = os.environ.get("FFR_KFP_TIMEOUT", "60")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise PipelineError(f"$FFR_KFP_TIMEOUT: expected a positive number of seconds, got {text!r}")
    return value

# ------------------------------------------------------------------------------------ credentials
TOKEN_ENV, SA_TOKEN_ENV, COOKIE_ENV = "KF_PIPELINES_TOKEN", "KF_PIPELINES_SA_TOKEN_PATH", "KF_PIPELINES_COOKIE"
# Where Kubeflow projects a pod's pipelines token (kfp.client.KF_PIPELINES_SA_TOKEN_PATH), and
# where Kubernetes puts the pod's namespace.
SA_TOKEN_DEFAULT = "/var/run/secrets/kubeflow/pipelines/token"
POD_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
_ACCEPTED = (f"accepted: --token or ${TOKEN_ENV} (a bearer token), --sa-token-path or ${SA_TOKEN_ENV} "
             f"(a service-account token file), --cookie or ${COOKIE_ENV} (the Dex / oauth2-proxy session "
             "cookie, e.g. 'authservice_session=...'), with --namespace naming your Kubeflow profile")


@dataclass(frozen=True)
class Credentials:
    """How ffr authenticates to a Kubeflow Pipelines API: nothing, a bearer token, a
    service-account token file (read on every request: the kubelet rotates it) or an auth
    session cookie. The health check and kfp.Client send the same one. Secret values never
    appear in ``repr`` or in a message."""

    token: str | None = field(default=None, repr=False)
    sa_token_path: str | None = None
    cookie: str | None = field(default=None, repr=False)
    source: str = ""  # where it came from, for messages: "--token", "$KF_PIPELINES_COOKIE", ...

    def __post_init__(self):
        kinds = [k for k in ("token", "sa_token_path", "cookie") if getattr(self, k)]
        if len(kinds) > 1:
            raise PipelineError(f"give one Kubeflow Pipelines credential, not {' and '.join(kinds)}")

    @classmethod
    def _one(cls, named: dict) -> Credentials | None:
        given = {src: (kind, v.strip()) for src, (kind, v) in named.items() if v and v.strip()}
        if len(given) > 1:
            raise PipelineError(f"give one Kubeflow Pipelines credential, not {' and '.join(given)}; {_ACCEPTED}")
        return next((cls(**{kind: v}, source=src) for src, (kind, v) in given.items()), None)

    @classmethod
    def from_env(cls, environ=None) -> Credentials:
        """The credential the environment names.

        Args:
            environ: the environment (default ``os.environ``): ``KF_PIPELINES_TOKEN``,
                ``KF_PIPELINES_SA_TOKEN_PATH`` or ``KF_PIPELINES_COOKIE``, at most one of them; with
                none, the pod's projected pipelines token if there is one (inside a Kubeflow pod).
        """
        env = os.environ if environ is None else environ
        found = cls._one({f"${TOKEN_ENV}": ("token", env.get(TOKEN_ENV)),
                          f"${SA_TOKEN_ENV}": ("sa_token_path", env.get(SA_TOKEN_ENV)),
                          f"${COOKIE_ENV}": ("cookie", env.get(COOKIE_ENV))})
        if found is None and os.path.isfile(SA_TOKEN_DEFAULT):
            found = cls(sa_token_path=SA_TOKEN_DEFAULT, source=SA_TOKEN_DEFAULT)
        return found or cls()

    @classmethod
    def from_args(cls, args, environ=None) -> Credentials:
        """The credential of the command line, else of the environment (a flag wins over every variable).

        Args:
            args: parsed arguments with ``token``, ``sa_token_path`` and ``cookie`` (at most one set).
            environ: the environment for :meth:`from_env` when no flag is given.
        """
        found = cls._one({"--token": ("token", getattr(args, "token", None)),
                          "--sa-token-path": ("sa_token_path", getattr(args, "sa_token_path", None)),
                          "--cookie": ("cookie", getattr(args, "cookie", None))})
        return found or cls.from_env(environ)

    @property
    def kind(self) -> str:
        """What is sent, for messages (never the value)."""
        if self.token:
            return f"a bearer token from {self.source or 'the caller'}"
        if self.sa_token_path:
            return f"the service-account token in {self.sa_token_path}"
        return f"a session cookie from {self.source or 'the caller'}" if self.cookie else "no credential"

    def _bearer(self) -> str | None:
        if not self.sa_token_path:
            return self.token
        where = f"service-account token file {self.sa_token_path}" + (f" ({self.source})" if self.source else "")
        try:
            text = Path(self.sa_token_path).read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise PipelineError(f"{where}: cannot read it: {getattr(e, 'strerror', None) or e}") from None
        if not text:
            raise PipelineError(f"{where} is empty")
        return _one_line(text, where)

    def headers(self) -> dict[str, str]:
        """The HTTP headers that carry the credential, as kfp.Client sends them
        (``Authorization: Bearer ...`` or ``Cookie: ...``)."""
        bearer = self._bearer()
        if bearer:
            return {"Authorization": f"Bearer {_one_line(bearer, self.kind)}"}
        return {"Cookie": _one_line(self.cookie, self.kind)} if self.cookie else {}

    def client_kwargs(self) -> dict:
        """The credential as :class:`kfp.Client` arguments."""
        if self.token or self.cookie:  # a value no HTTP header can carry is refused here, in words that do not
            self.headers()             # show it (a token file is read by the client, and checked once it exists)
        elif self.sa_token_path and Path(self.sa_token_path).is_file():
            self._bearer()
        if self.token:
            return {"existing_token": self.token}
        if self.sa_token_path:
            from kfp.client import ServiceAccountTokenVolumeCredentials

            return {"credentials": ServiceAccountTokenVolumeCredentials(path=self.sa_token_path)}
        return {"cookies": self.cookie} if self.cookie else {}

    def redact(self, text: str) -> str:
        """``text`` with every secret value of this credential replaced by ``***``."""
        secrets = [self.token, self.cookie] + [c.partition("=")[2].strip() for c in (self.cookie or "").split(";")]
        if self.sa_token_path:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                secrets.append(Path(self.sa_token_path).read_text().strip())
        forms = set()
        for secret in secrets:
            if secret and len(secret) >= 4:  # as given, and as a repr or an error message escapes it
                forms |= {secret, repr(secret.encode())[2:-1], secret.encode("unicode_escape").decode("ascii")}
        for form in sorted(forms, key=len, reverse=True):
            text = text.replace(form, "***")
        return text


def _one_line(value: str, where: str) -> str:
    """``value`` (a credential), refused when it holds a line break or another control character:
    no HTTP header can carry one, and the error http.client would raise shows the value."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise PipelineError(f"{where}: the credential contains a line break or another control character (it is "
                            "not shown); a token or cookie is one line — check how it was copied")
    return value


def _auth_failed(host: str, code, creds: Credentials, where: str, body=None) -> str:
    why = "authentication failed"
    if code == 403 and creds.kind != "no credential":
        why += " or the credential may not use this namespace (is --namespace one of your profiles?)"
    said = _server_message(body)
    why += f" (the server said{said})" if said else ""
    return creds.redact(f"Kubeflow Pipelines at {host} answered HTTP {code} {where}: {why}; sent {creds.kind}; "
                        f"{_ACCEPTED}")


def _server_message(body) -> str:
    with contextlib.suppress(Exception):
        data = json.loads(body)
        msg = data.get("message") or data.get("error")
        if msg:
            return f": {str(msg)[:300]}"
    return ""


@contextlib.contextmanager
def _api_errors(host: str, creds: Credentials, doing: str):
    """kfp.Client's exceptions as a :class:`PipelineError`: the HTTP status and reason (and the
    server's message), secrets redacted, no traceback."""
    from kfp_server_api import ApiException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ApiException as e:
        if e.status in (401, 403):
            raise PipelineError(_auth_failed(host, e.status, creds, f"when asked to {doing}", e.body)) from None
        raise PipelineError(creds.redact(f"Kubeflow Pipelines at {host} refused to {doing}: HTTP {e.status} "
                                         f"{e.reason}{_server_message(e.body)}")) from None
    except HTTPError as e:
        raise KubeflowUnavailable(creds.redact(f"cannot reach Kubeflow Pipelines at {host} to {doing}: {e}")) from None


# -------------------------------------------------------------------------------------- endpoint
MIN_FORM_KFP = (2, 4)  # older run forms treat a default of 0, false or "" as missing (KFP issue 11515)


def run_form_problem(host: str, credentials: Credentials | None = None, timeout: float = 10.0) -> str:
    """What the Kubeflow UI's run form at ``host`` gets wrong about ffr's pipelines, or "": a
    Kubeflow Pipelines older than 2.4 (its version from ``GET /apis/v1beta1/healthz``,
    ``tag_name``) marks every field whose default is 0, false or empty as "Missing parameter" and
    keeps Start disabled until each is typed in. Unknown versions say nothing."""
    creds, tag = credentials or Credentials(), ""
    for api in ("v2beta1", "v1beta1"):  # the version: tag_name of either health reply
        try:
            request = urllib.request.Request(f"{host.rstrip('/')}/apis/{api}/healthz", headers=creds.headers())
            with urllib.request.urlopen(request, timeout=timeout) as r:
                tag = str(json.loads(r.read()).get("tag_name") or "")
        except (OSError, ValueError, AttributeError):
            continue
        if tag:
            break
    found = re.match(r"v?(\d+)\.(\d+)", tag)
    if not found or tuple(map(int, found.groups())) >= MIN_FORM_KFP:
        return ""
    return (f"Kubeflow Pipelines {tag} at {host}: its run form marks the fields whose default is 0, false or "
            f"empty (min_steps, patience, weights, mlflow_uri, ...) as \"Missing parameter\" and keeps Start "
            f"disabled until each is typed in (fixed in Kubeflow Pipelines {'.'.join(map(str, MIN_FORM_KFP))}); "
            "type the defaults in, start runs with `ffr submit`, or upgrade")
def check_endpoint(host: str, credentials: Credentials | None = None, timeout: float = 10.0) -> dict:
    """Fail fast, with a clear message, when ``host`` is not a reachable Kubeflow Pipelines API
    or refuses the credential (``GET /apis/v2beta1/healthz``, sent with it). kfp.Client would
    otherwise retry for half a minute.

    Args:
        host: the API's URL, e.g. ``http://localhost:8080``.
        credentials: what to authenticate with (default none).
        timeout: seconds to wait for the answer.

    Returns:
        The health reply, e.g. ``{"multi_user": true, ...}``.
    """
    creds = credentials or Credentials()
    if not re.match(r"^https?://", host or ""):
        raise PipelineError(f"--host must be an http(s) URL of the Kubeflow Pipelines API, got {host!r}")
    url, body = host.rstrip("/") + "/apis/v2beta1/healthz", None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=creds.headers()), timeout=timeout) as r:
            body, landed = r.read(), r.geturl()
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            with contextlib.suppress(OSError):
                body = e.read()
            raise PipelineError(_auth_failed(host, e.code, creds, f"on {url}", body)) from None
        raise PipelineError(f"Kubeflow Pipelines at {host} answered HTTP {e.code} on {url} "
                            "(is this the KFP API address?)") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise KubeflowUnavailable(f"cannot reach Kubeflow Pipelines at {host}: {reason}") from None
    with contextlib.suppress(ValueError):
        info = json.loads(body)
        if isinstance(info, dict):
            return info
    page = urllib.parse.urlsplit(landed)
    if page[:3] != urllib.parse.urlsplit(url)[:3]:  # redirected to a login page (Dex, oauth2-proxy)
        where = f"on {url} (a redirect to the login page {page._replace(query='', fragment='').geturl()})"
        raise PipelineError(_auth_failed(host, 302, creds, where))
    raise KubeflowUnavailable(f"Kubeflow Pipelines at {host} did not answer JSON on {url} (is this the KFP API "
                              "address?)")


def _client(host: str, namespace: str | None, creds: Credentials):
    import kfp

    with warnings.catch_warnings():  # "only works with KFP v2.0.0-beta.2 and later": so do we
        warnings.filterwarnings("ignore", category=FutureWarning)
        with _api_errors(host, creds, "connect"):
            client = kfp.Client(host=host, namespace=namespace or "kubeflow", **creds.client_kwargs())
    _bound(client, request_timeout())
    return client


def _bound(client, seconds: float) -> None:
    """Give every request of ``client`` (its API services share one REST client) a connect and
    read timeout of ``seconds``: kfp.Client sends them with none, which urllib3 reads as "wait
    forever" whatever its pools' defaults say."""
    rest = client._run_api.api_client.rest_client
    send = rest.request

    def request(*args, _request_timeout=None, **kwargs):
        return send(*args, _request_timeout=_request_timeout or (min(seconds, 10.0), seconds), **kwargs)

    rest.request = request


def _answer(value, what: str, host: str) -> str:
    """``value`` (an id the API answered), or :class:`KubeflowUnavailable` when it is not one: a
    server that answers with something else is not a working Kubeflow Pipelines API."""
    if not isinstance(value, str) or not value.strip():
        raise KubeflowUnavailable(f"Kubeflow Pipelines at {host} answered without {what} (got {value!r}): is this "
                                  "the KFP API address, and does it run KFP 2?")
    return value


def _prepare(host: str, name: str, params: dict, platform: Platform | None, tmp: str, namespace: str | None,
             creds: Credentials, needs_namespace: bool = True):
    """Check the parameters, then the endpoint (and, on a multi-user cluster, the namespace), then
    compile, then connect: the cheap failures come first. ``params`` are checked and converted to
    their parameters' types in place. Returns (package path, client, namespace)."""
    typed = typed_params(name, get_pipeline(name, platform), params)
    params.clear()  # a parameter given under its old name is now under its run-form name only
    params.update(typed)
    multi_user = check_endpoint(host, creds).get("multi_user") is True
    if multi_user and not namespace and needs_namespace:
        with contextlib.suppress(OSError):  # inside a pod: its own namespace, as kfp.Client does
            namespace = Path(POD_NAMESPACE_FILE).read_text().strip() or None
        if not namespace:
            raise PipelineError(f"Kubeflow Pipelines at {host} is multi-user: pass --namespace (your Kubeflow profile)")
    package = str(compile_pipeline(name, Path(tmp) / f"{name}.yaml", platform))
    return package, _client(host, namespace, creds), namespace


# ------------------------------------------------------------------------------- runs and uploads
def submit(host: str, name: str = "ffr", params: dict | None = None, experiment: str = "ffr",
           run_name: str | None = None, platform: Platform | None = None, namespace: str | None = None,
           credentials: Credentials | None = None) -> str:
    """Create a run of a pipeline on a Kubeflow Pipelines API.

    Args:
        host: the API's URL.
        name: the pipeline (``ffr``, ``comparison``, ``retrain``).
        params: pipeline parameters (unknown names are refused before anything is sent).
        experiment: the experiment the run goes to (created if missing).
        run_name: the run's name (default: pipeline and time).
        platform: the cluster settings the pipeline is compiled for.
        namespace: the Kubeflow profile (multi-user clusters) of the experiment and the run.
        credentials: what to authenticate with (default :meth:`Credentials.from_env`).

    Returns:
        The run's id.
    """
    params, creds = dict(params or {}), credentials or Credentials.from_env()
    with tempfile.TemporaryDirectory() as tmp:
        package, client, namespace = _prepare(host, name, params, platform, tmp, namespace, creds)
        with _api_errors(host, creds, f"create a run of {name!r} in experiment {experiment!r}"):
            exp = client.create_experiment(experiment, namespace=namespace)
            run = client.run_pipeline(exp.experiment_id, run_name or f"{name} {datetime.now():%Y-%m-%d %H:%M:%S}",
                                      pipeline_package_path=package, params=params)
    return _answer(getattr(run, "run_id", None), "a run id", host)


def schedule(host: str, cron: str, name: str = "retrain", params: dict | None = None, experiment: str = "ffr",
             job_name: str | None = None, platform: Platform | None = None, namespace: str | None = None,
             max_concurrency: int = 1, credentials: Credentials | None = None) -> str:
    """Create a recurring run of a pipeline on a Kubeflow Pipelines API (runs missed while paused
    are not caught up).

    Args:
        host: the API's URL.
        cron: a 6-field cron expression (see :func:`validate_cron`), checked before anything is sent.
        name: the pipeline (default ``retrain``).
        params: pipeline parameters.
        experiment: the experiment the runs go to (created if missing).
        job_name: the recurring run's name (default: pipeline and cron).
        platform: the cluster settings the pipeline is compiled for.
        namespace: the Kubeflow profile (multi-user clusters) of the experiment and the runs.
        max_concurrency: how many of its runs may run at once.
        credentials: what to authenticate with (default :meth:`Credentials.from_env`).

    Returns:
        The recurring run's id.
    """
    cron = validate_cron(cron)
    params, creds = dict(params or {}), credentials or Credentials.from_env()
    with tempfile.TemporaryDirectory() as tmp:
        package, client, namespace = _prepare(host, name, params, platform, tmp, namespace, creds)
        with _api_errors(host, creds, f"create a recurring run of {name!r} in experiment {experiment!r}"):
            exp = client.create_experiment(experiment, namespace=namespace)
            job = client.create_recurring_run(exp.experiment_id, job_name or f"{name} ({cron})", cron_expression=cron,
                                              max_concurrency=max_concurrency, no_catchup=True, params=params,
                                              pipeline_package_path=package)
    return _answer(getattr(job, "recurring_run_id", None), "a recurring run id", host)


@dataclass
class Upload:
    """An uploaded pipeline version: ``created`` when the upload made the pipeline too."""

    pipeline_id: str
    version_id: str | None
    pipeline_name: str
    version_name: str
    created: bool
    warning: str = ""   # what the cluster's run form will get wrong (:func:`run_form_problem`)


def upload(host: str, name: str = "ffr", pipeline_name: str | None = None, version: str | None = None,
           description: str | None = None, platform: Platform | None = None, namespace: str | None = None,
           credentials: Credentials | None = None) -> Upload:
    """Upload a pipeline to a Kubeflow Pipelines API so that its UI lists it: a new pipeline
    (with its first version, which KFP names after the pipeline), or a new version of the
    pipeline of that name when there is one.

    Args:
        host: the API's URL.
        name: the pipeline (``ffr``, ``comparison``, ``retrain``).
        pipeline_name: its name in the UI (default: the pipeline's own, e.g. ``ffr-retrain``).
        version: the new version's name (default ``<ffr version>-<UTC time>``, unique per upload).
        description: shown in the UI.
        platform: the cluster settings the pipeline is compiled for.
        namespace: the Kubeflow profile the pipeline belongs to (default: shared).
        credentials: what to authenticate with (default :meth:`Credentials.from_env`).

    Returns:
        The pipeline's and the version's ids and names.
    """
    creds = credentials or Credentials.from_env()
    pipeline_name = pipeline_name or get_pipeline(name, platform).name
    version = version or f"{ffr.__version__}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S-%f}"
    with tempfile.TemporaryDirectory() as tmp:
        package, client, namespace = _prepare(host, name, {}, platform, tmp, namespace, creds, needs_namespace=False)
        with _api_errors(host, creds, f"upload pipeline {pipeline_name!r}"):
            flt = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name",
                                              "stringValue": pipeline_name}]})
            found = client.list_pipelines(filter=flt, namespace=namespace, page_size=2).pipelines or []
            for listed in found if isinstance(found, list) else [found]:  # pipelines, not a string's characters
                _answer(getattr(listed, "pipeline_id", None), "a pipeline id in its pipeline listing", host)
            if len(found) > 1:
                raise PipelineError(f"{len(found)} pipelines on {host} are named {pipeline_name!r}; pass --name")
            if found:
                v = client.upload_pipeline_version(package, version, pipeline_id=found[0].pipeline_id,
                                                   description=description)
                return Upload(_answer(v.pipeline_id, "a pipeline id", host), v.pipeline_version_id, pipeline_name,
                              version, created=False, warning=run_form_problem(host, creds))
            p = client.upload_pipeline(package, pipeline_name, description=description, namespace=namespace)
            first = client.list_pipeline_versions(p.pipeline_id, page_size=1,
                                                  sort_by="created_at desc").pipeline_versions or []
    return Upload(_answer(p.pipeline_id, "a pipeline id", host), first[0].pipeline_version_id if first else None, pipeline_name,
                  first[0].display_name if first else pipeline_name, created=True,
                  warning=run_form_problem(host, creds))
