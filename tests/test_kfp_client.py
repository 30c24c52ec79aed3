"""``ffr submit``, ``ffr schedule`` and ``ffr upload`` against a Kubeflow Pipelines API.

No cluster exists here: the tests start a small HTTP server on 127.0.0.1 that speaks the KFP
v2beta1 endpoints these commands call (healthz, list/create experiments, create run, create
recurring run, list/upload pipelines and pipeline versions, multipart uploads included) with the
JSON the real API returns, and record every request, so the tests check what a cluster would
receive. Unreachable hosts, wrong endpoints and bad cron expressions get clear errors before
anything is sent. A multi-user mode stands for a cluster behind an auth proxy: every request,
healthz included, must carry a given bearer token or session cookie.
"""

from __future__ import annotations

import json
import socket
import threading
from email import policy
from email.parser import BytesParser
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

pytest.importorskip("kfp")

from ffr.cli import main  # noqa: E402
from ffr.integrations.kubeflow.pipelines.cluster import Credentials, check_endpoint, schedule, submit, upload, validate_cron  # noqa: E402
from ffr.integrations.kubeflow.pipelines.run import PipelineError  # noqa: E402

TOKEN = "s3cr3t-t0ken-4711"
COOKIE = "authservice_session=MTcwNjk0-s3ss10n"


def _form(content_type: str, raw: bytes) -> dict[str, bytes]:
    """The parts of a multipart/form-data body, by field name."""
    msg = BytesParser(policy=policy.HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in msg.iter_parts()}


class FakeKFP:
    """The KFP v2beta1 REST endpoints ffr uses, with an in-memory store.

    ``token`` / ``cookie``: a multi-user cluster where every request must carry that bearer token
    / session cookie (HTTP 401 otherwise; ``login``: a redirect to a login page instead, as
    Dex / oauth2-proxy answer a browser). ``namespaces``: the profiles the credential may use
    (HTTP 403 for any other). ``fail``: ``{path: status}`` answers for a path.
    """

    def __init__(self, experiments=(), status: int = 200, token: str | None = None, cookie: str | None = None,
                 login: bool = False, namespaces=None, fail: dict | None = None):
        self.requests: list[tuple[str, str, dict]] = []
        self.auth: list[tuple[str, str | None, str | None]] = []  # (path, Authorization, Cookie) of every request
        self.experiments = [dict(e) for e in experiments]
        self.pipelines: list[dict] = []
        self.versions: list[dict] = []
        self.status, self.token, self.cookie, self.login = status, token, cookie, login
        self.namespaces, self.fail = namespaces, fail or {}
        self.tag = "2.4.0"  # the Kubeflow Pipelines version its health reply names
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _reply(self, body: dict, code: int = 200):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _denied(self) -> bool:
                """Answer for the auth proxy: True when the request does not carry the credential."""
                auth, cookie = self.headers.get("Authorization"), self.headers.get("Cookie")
                fake.auth.append((urlparse(self.path).path, auth, cookie))
                if fake.token and auth == f"Bearer {fake.token}":
                    return False
                if fake.cookie:
                    name, _, value = fake.cookie.partition("=")
                    jar = SimpleCookie(cookie or "")
                    if name in jar and jar[name].value == value:
                        return False
                if not (fake.token or fake.cookie):
                    return False
                if fake.login:
                    self.send_response(302)
                    self.send_header("Location", "/dex/auth?client_id=kubeflow-oidc-authservice&state=xyz")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._reply({"error": "Unauthorized", "code": 16, "message": "Jwt is missing"}, 401)
                return True

            def _forbidden(self, namespace) -> bool:
                if fake.namespaces is None or not namespace or namespace in fake.namespaces:
                    return False
                self._reply({"error": "PermissionDenied", "code": 7, "message": "user is not authorized to access "
                             f"namespace {namespace!r}"}, 403)
                return True

            def do_GET(self):
                fake.requests.append(("GET", self.path, {}))
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/dex/auth":  # the login page: HTML, not the API
                    data = b"<html><body>Log in to Kubeflow</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    return self.wfile.write(data)
                if self._denied():
                    return
                if fake.status != 200:
                    return self._reply({"error": "nope"}, fake.status)
                if url.path == "/apis/v2beta1/healthz":
                    return self._reply({"commit_sha": "0cc5c6f", "tag_name": fake.tag,
                                        "multi_user": bool(fake.token or fake.cookie)})
                if self._forbidden(query.get("namespace")):
                    return
                if url.path in ("/apis/v2beta1/experiments", "/apis/v2beta1/pipelines"):
                    flt = json.loads(query["filter"])
                    name = flt["predicates"][0]["string_value" if "string_value" in flt["predicates"][0] else "stringValue"]
                    if url.path.endswith("experiments"):
                        found = [e for e in fake.experiments if e["display_name"] == name]
                        return self._reply({"experiments": found, "total_size": len(found)})
                    found = [p for p in fake.pipelines if p["display_name"] == name
                             and p["namespace"] == query.get("namespace", "")]
                    return self._reply({"pipelines": found, "total_size": len(found)} if found else {})
                parts = url.path.split("/")  # /apis/v2beta1/pipelines/<id>/versions
                if len(parts) == 6 and parts[3] == "pipelines" and parts[5] == "versions":
                    found = sorted((v for v in fake.versions if v["pipeline_id"] == parts[4]),
                                   key=lambda v: v["created_at"], reverse="desc" in query.get("sort_by", ""))
                    found = found[:int(query.get("page_size", 10))]
                    return self._reply({"pipeline_versions": found, "total_size": len(found)})
                self._reply({"error": f"no route {url.path}"}, 404)

            def do_POST(self):
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Type", "").startswith("multipart/form-data"):
                    body = {**query, **{k: v.decode() for k, v in _form(self.headers["Content-Type"], raw).items()}}
                else:
                    body = json.loads(raw or b"{}")
                fake.requests.append(("POST", self.path, body))
                if self._denied():
                    return
                if url.path in fake.fail:
                    return self._reply({"error": "internal error", "code": 13,
                                        "message": "failed to create the run: database is locked"},
                                       fake.fail[url.path])
                if self._forbidden(body.get("namespace")):
                    return
                if url.path == "/apis/v2beta1/experiments":
                    exp = {**body, "experiment_id": f"exp-{len(fake.experiments) + 1}"}
                    fake.experiments.append(exp)
                    return self._reply(exp)
                if url.path == "/apis/v2beta1/runs":
                    return self._reply({**body, "run_id": "run-42", "state": "PENDING"})
                if url.path == "/apis/v2beta1/recurringruns":
                    return self._reply({**body, "recurring_run_id": "rr-7", "status": "ENABLED"})
                if url.path == "/apis/v2beta1/pipelines/upload":
                    name, ns = query["name"], query.get("namespace", "")
                    if any(p["display_name"] == name and p["namespace"] == ns for p in fake.pipelines):
                        return self._reply({"error": "AlreadyExists", "code": 6,
                                            "message": f"pipeline {name!r} already exists"}, 409)
                    pipeline = {"pipeline_id": f"pl-{len(fake.pipelines) + 1}", "display_name": name, "name": name,
                                "description": query.get("description", ""), "namespace": ns,
                                "created_at": self._now()}
                    fake.pipelines.append(pipeline)
                    self._version(pipeline["pipeline_id"], name, body["uploadfile"])  # the first version
                    return self._reply(pipeline)
                if url.path == "/apis/v2beta1/pipelines/upload_version":
                    pid, name = query["pipelineid"], query["name"]
                    if not any(p["pipeline_id"] == pid for p in fake.pipelines):
                        return self._reply({"error": "NotFound", "code": 5, "message": f"no pipeline {pid}"}, 404)
                    if any(v["pipeline_id"] == pid and v["display_name"] == name for v in fake.versions):
                        return self._reply({"error": "AlreadyExists", "code": 6,
                                            "message": f"pipeline version {name!r} already exists"}, 409)
                    return self._reply(self._version(pid, name, body["uploadfile"]))
                self._reply({"error": f"no route {url.path}"}, 404)

            def _now(self) -> str:
                return f"2025-01-01T00:00:{len(fake.pipelines) + len(fake.versions):02d}Z"

            def _version(self, pid: str, name: str, package: str) -> dict:
                spec = next(yaml.safe_load_all(package))
                version = {"pipeline_id": pid, "pipeline_version_id": f"pv-{len(fake.versions) + 1}",
                           "display_name": name, "name": name, "created_at": self._now(), "pipeline_spec": spec}
                fake.versions.append(version)
                return version

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def posts(self, path: str) -> list[dict]:
        return [b for m, p, b in self.requests if m == "POST" and urlparse(p).path == path]

    def queries(self, path: str) -> list[dict]:
        """The query parameters of every request to ``path``."""
        return [{k: v[0] for k, v in parse_qs(urlparse(p).query).items()} for _, p, _ in self.requests
                if urlparse(p).path == path]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def no_kfp_context(tmp_path, monkeypatch):
    """kfp.Client reads ~/.config/kfp/context.json, ffr the KF_PIPELINES_* credentials: keep the
    user's out of the tests."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("KF_PIPELINES_TOKEN", "KF_PIPELINES_SA_TOKEN_PATH", "KF_PIPELINES_COOKIE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("ffr.integrations.kubeflow.pipelines.cluster.SA_TOKEN_DEFAULT", str(tmp_path / "no-pod-token"))  # tests run in a pod too


def free_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more


def test_submit_creates_experiment_and_run():
    with FakeKFP() as kfp_api:
        run_id = submit(kfp_api.url, "ffr", {"train_pretrain_epochs": 5, "data_bias_rate": 0.99}, experiment="team-a",
                        run_name="nightly")
    assert run_id == "run-42"
    (exp,) = kfp_api.posts("/apis/v2beta1/experiments")
    assert exp["display_name"] == "team-a"
    (run,) = kfp_api.posts("/apis/v2beta1/runs")
    assert run["experiment_id"] == "exp-1" and run["display_name"] == "nightly"
    spec = run["pipeline_spec"]
    assert spec["pipeline_spec"]["pipelineInfo"]["name"] == "ffr"
    assert run["runtime_config"]["parameters"] == {"train_pretrain_epochs": 5, "data_bias_rate": 0.99}
    # The compiled form travels whole: resources and the Kubernetes secrets included.
    assert "resourceCpuRequest" in json.dumps(spec["pipeline_spec"])
    assert "ffr-mlflow" in json.dumps(spec["platform_spec"])


def test_submit_reuses_an_existing_experiment():
    with FakeKFP(experiments=[{"experiment_id": "exp-9", "display_name": "ffr"}]) as kfp_api:
        submit(kfp_api.url, "comparison")
    assert kfp_api.posts("/apis/v2beta1/experiments") == []
    (run,) = kfp_api.posts("/apis/v2beta1/runs")
    assert run["experiment_id"] == "exp-9" and run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "ffr-comparison"


def test_schedule_creates_a_recurring_run_through_the_cli(capsys):
    with FakeKFP() as kfp_api:
        code = main(["schedule", "ffr", "--host", kfp_api.url, "--cron", "0  30 2 * *  MON", "--name", "weekly",
                     "--param", "train_finetune_epochs=3"])
    assert code == 0
    assert "recurring run rr-7" in capsys.readouterr().out
    (job,) = kfp_api.posts("/apis/v2beta1/recurringruns")
    assert job["display_name"] == "weekly"
    assert job["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * MON"
    assert int(job["max_concurrency"]) == 1 and job["no_catchup"] is True and job["mode"] == "ENABLE"
    assert job["runtime_config"]["parameters"] == {"train_finetune_epochs": 3}


def test_schedule_runs_the_retraining_pipeline_by_default(capsys):
    with FakeKFP() as kfp_api:
        assert main(["schedule", "--host", kfp_api.url, "--cron", "0 0 3 * * *",
                     "--param", "data_repo=https://git.example.com/data.git", "--param", "data_rev=main"]) == 0
    (job,) = kfp_api.posts("/apis/v2beta1/recurringruns")
    assert job["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "ffr-retrain"
    assert job["runtime_config"]["parameters"] == {"data_repo": "https://git.example.com/data.git", "data_rev": "main"}


def test_bad_cron_is_refused_before_contacting_the_host():
    with FakeKFP() as kfp_api:
        with pytest.raises(PipelineError, match=r"5 field\(s\); Kubeflow takes 6 fields: second minute hour"):
            schedule(kfp_api.url, "0 3 * * *")
        with pytest.raises(PipelineError, match=r"hour 24 is outside 0-23"):
            schedule(kfp_api.url, "0 0 24 * * *")
    assert kfp_api.requests == []


def test_unreachable_host_is_a_clear_error(capsys):
    url = free_port_url()
    with pytest.raises(PipelineError, match=f"cannot reach Kubeflow Pipelines at {url}"):
        submit(url, "ffr")
    assert main(["submit", "--host", url]) == 3  # a service problem, as MLflow and S3 are
    assert "cannot reach Kubeflow Pipelines" in capsys.readouterr().err
    with pytest.raises(PipelineError, match="must be an http"):
        submit("localhost:8080", "ffr")


@pytest.mark.parametrize("status,hint", [(404, "is this the KFP API address"), (403, "authentication failed")])
def test_endpoint_that_is_not_kfp_is_a_clear_error(status, hint):
    with FakeKFP(status=status) as kfp_api:
        with pytest.raises(PipelineError, match=f"answered HTTP {status}.*{hint}"):
            submit(kfp_api.url, "ffr")
    assert kfp_api.posts("/apis/v2beta1/runs") == []


@pytest.mark.parametrize("expr", ["0 0 3 * * *", "*/15 * * * * ?", "0 30 2 ? * MON-FRI", "0 0 0 1,15 JAN,jul *",
                                  "@daily", "@every 1h30m"])
def test_valid_cron(expr):
    assert validate_cron(expr) == expr


@pytest.mark.parametrize("expr,msg", [("", "0 field"), ("0 0 3 * * * *", "7 field"), ("0 61 * * * *", "minute 61"),
                                      ("0 0 0 0 * *", "day-of-month 0"), ("0 0 0 * FOO *", "month field has 'FOO'"),
                                      ("0 0 0 * * 1/0", "step '0'"), ("0 0 5-2 * * *", "runs backwards"),
                                      ("0 ? * * * *", "minute field has '?'"), ("@every soon", "2 field")])
def test_invalid_cron(expr, msg):
    with pytest.raises(PipelineError, match=msg):
        validate_cron(expr)


# ------------------------------------------------------------------------------ multi-user clusters
COMMANDS = {  # command line (after the pipeline's host) and the POST that proves it did its work
    "submit": (["submit", "ffr", "--experiment", "team-exp"], "/apis/v2beta1/runs"),
    "schedule": (["schedule", "--cron", "0 0 3 * * *", "--experiment", "team-exp"], "/apis/v2beta1/recurringruns"),
    "upload": (["upload", "retrain"], "/apis/v2beta1/pipelines/upload"),
}


def _cli(kfp_api, command: str, *extra: str, namespace: str | None = "team-a") -> int:
    argv, _ = COMMANDS[command]
    return main(argv + ["--host", kfp_api.url] + (["--namespace", namespace] if namespace else []) + list(extra))


def test_credentials_precedence_and_conflicts(tmp_path):
    args = type("Args", (), {"token": None, "sa_token_path": None, "cookie": None})
    assert Credentials.from_args(args(), environ={}).kind == "no credential"
    env = {"KF_PIPELINES_COOKIE": COOKIE}
    assert Credentials.from_args(args(), environ=env).headers() == {"Cookie": COOKIE}
    flag = args()
    flag.token = TOKEN
    creds = Credentials.from_args(flag, environ=env)  # the flag wins over the environment
    assert creds.headers() == {"Authorization": f"Bearer {TOKEN}"} and creds.client_kwargs() == {"existing_token": TOKEN}
    assert TOKEN not in repr(creds) and TOKEN not in creds.kind
    flag.cookie = COOKIE
    with pytest.raises(PipelineError, match=r"one Kubeflow Pipelines credential, not --token and --cookie"):
        Credentials.from_args(flag)
    with pytest.raises(PipelineError, match=r"not \$KF_PIPELINES_TOKEN and \$KF_PIPELINES_COOKIE"):
        Credentials.from_env({"KF_PIPELINES_TOKEN": TOKEN, **env})
    assert Credentials.from_env({"KF_PIPELINES_TOKEN": "  "}).kind == "no credential"
    assert Credentials(cookie=COOKIE).redact(f"got {COOKIE} and MTcwNjk0-s3ss10n") == "got *** and ***"
    sa = Credentials.from_env({"KF_PIPELINES_SA_TOKEN_PATH": str(tmp_path / "token")})
    assert "credentials" in sa.client_kwargs()
    (tmp_path / "token").write_text(TOKEN + "\n")  # read when sent: the kubelet rotates it
    assert sa.headers() == {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize("command", COMMANDS)
def test_no_credential_is_refused_before_anything_is_created(command, capsys):
    with FakeKFP(token=TOKEN) as kfp_api:
        assert _cli(kfp_api, command) == 2
    err = capsys.readouterr().err
    assert "ffr: error:" in err and "answered HTTP 401" in err and "authentication failed" in err
    assert "sent no credential" in err and "--token" in err and "--sa-token-path" in err and "--cookie" in err
    assert "the server said: Jwt is missing" in err
    assert [p for m, p, _ in kfp_api.requests] == ["/apis/v2beta1/healthz"]  # nothing compiled or sent after it


@pytest.mark.parametrize("command", COMMANDS)
def test_a_wrong_token_is_refused_and_never_printed(command, capsys, monkeypatch):
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN + "-old")
    with FakeKFP(token=TOKEN) as kfp_api:
        assert _cli(kfp_api, command) == 2
    out = capsys.readouterr()
    assert "authentication failed" in out.err and "a bearer token from $KF_PIPELINES_TOKEN" in out.err
    assert TOKEN not in out.out + out.err
    assert kfp_api.posts(COMMANDS[command][1]) == []


@pytest.mark.parametrize("command,how", [(c, h) for c in COMMANDS for h in ("token-flag", "token-env", "sa-token-env",
                                                                             "cookie-flag")]
                         + [("submit", "sa-token-flag"), ("submit", "cookie-env")])
def test_credential_reaches_every_request(command, how, tmp_path, monkeypatch, capsys):
    extra = []
    if how == "token-flag":
        extra = ["--token", TOKEN]
    elif how == "token-env":
        monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    elif how.startswith("sa-token"):
        (tmp_path / "token").write_text(TOKEN + "\n")
        if how == "sa-token-env":
            monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "token"))
        else:
            extra = ["--sa-token-path", str(tmp_path / "token")]
    elif how == "cookie-flag":
        extra = ["--cookie", COOKIE]
    else:
        monkeypatch.setenv("KF_PIPELINES_COOKIE", COOKIE)
    cookie = how.startswith("cookie")
    with FakeKFP(token=None if cookie else TOKEN, cookie=COOKIE if cookie else None, namespaces={"team-a"}) as kfp_api:
        assert _cli(kfp_api, command, *extra) == 0, capsys.readouterr().err
    assert len(kfp_api.posts(COMMANDS[command][1])) == 1
    sent = {(a, c) for _, a, c in kfp_api.auth}
    assert sent == ({(None, COOKIE)} if cookie else {(f"Bearer {TOKEN}", None)})
    assert kfp_api.auth[0][0] == "/apis/v2beta1/healthz"  # the health check sends it too
    if command == "upload":  # the pipeline goes to the profile
        assert kfp_api.queries("/apis/v2beta1/pipelines")[0]["namespace"] == "team-a"
        assert kfp_api.queries("/apis/v2beta1/pipelines/upload")[0]["namespace"] == "team-a"
    else:  # the experiment (so its runs) goes to the profile
        assert kfp_api.queries("/apis/v2beta1/experiments")[0]["namespace"] == "team-a"
        (exp,) = kfp_api.posts("/apis/v2beta1/experiments")
        assert exp["namespace"] == "team-a" and exp["display_name"] == "team-exp"
        (run,) = kfp_api.posts(COMMANDS[command][1])
        assert run["experiment_id"] == kfp_api.experiments[0]["experiment_id"] == "exp-1"
    assert TOKEN not in capsys.readouterr().out


def test_a_namespace_the_credential_may_not_use_is_refused(capsys):
    with FakeKFP(token=TOKEN, namespaces={"team-a"}) as kfp_api:
        assert _cli(kfp_api, "submit", "--token", TOKEN, namespace="team-b") == 2
    err = capsys.readouterr().err
    assert "answered HTTP 403" in err and "may not use this namespace" in err and TOKEN not in err
    assert "the server said: user is not authorized to access namespace 'team-b'" in err
    assert kfp_api.posts("/apis/v2beta1/runs") == []


def test_a_multi_user_cluster_needs_a_namespace():
    with FakeKFP(token=TOKEN) as kfp_api:
        with pytest.raises(PipelineError, match="is multi-user: pass --namespace"):
            submit(kfp_api.url, "ffr", credentials=Credentials(token=TOKEN))
    assert kfp_api.posts("/apis/v2beta1/experiments") == []


def test_a_redirect_to_the_login_page_is_an_authentication_error():
    with FakeKFP(cookie=COOKIE, login=True) as kfp_api:
        with pytest.raises(PipelineError, match=r"a redirect to the login page http://127.0.0.1:\d+/dex/auth\): authentication failed"):
            check_endpoint(kfp_api.url)
        assert check_endpoint(kfp_api.url, Credentials(cookie=COOKIE))["multi_user"] is True


@pytest.mark.parametrize("content,msg", [(None, "cannot read it"), ("\n", "is empty")])
def test_a_bad_service_account_token_file_is_named(content, msg, tmp_path, monkeypatch):
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(path))
    with FakeKFP(token=TOKEN) as kfp_api:
        with pytest.raises(PipelineError, match=f"service-account token file {path} .*{msg}"):
            schedule(kfp_api.url, "0 0 3 * * *", namespace="team-a")
    assert kfp_api.requests == []


def test_a_refused_request_is_an_error_with_status_and_reason(capsys):
    with FakeKFP(fail={"/apis/v2beta1/runs": 500}) as kfp_api:
        with pytest.raises(PipelineError, match=r"refused to create a run of 'ffr' in experiment 'ffr': HTTP 500 "
                                                r"Internal Server Error: failed to create the run: database is locked"):
            submit(kfp_api.url, "ffr")
        assert main(["submit", "--host", kfp_api.url, "--token", TOKEN]) == 2
    assert "HTTP 500" in capsys.readouterr().err


def test_upload_twice_adds_a_version_to_the_pipeline(capsys):
    with FakeKFP() as kfp_api:
        assert main(["upload", "retrain", "--host", kfp_api.url, "--description", "scheduled retraining"]) == 0
        first = capsys.readouterr().out
        again = upload(kfp_api.url, "retrain")
        third = upload(kfp_api.url, "retrain", version="v3")
        with pytest.raises(PipelineError, match=r"HTTP 409 Conflict: pipeline version 'v3' already exists"):
            upload(kfp_api.url, "retrain", version="v3")
    assert "pipeline 'ffr-retrain' (pl-1) created with its first version 'ffr-retrain' (pv-1)" in first
    (created,) = kfp_api.posts("/apis/v2beta1/pipelines/upload")
    assert created["name"] == "ffr-retrain" and created["description"] == "scheduled retraining"
    assert "namespace" not in created  # no --namespace: a shared pipeline
    assert yaml.safe_load_all(created["uploadfile"]).__next__()["pipelineInfo"]["name"] == "ffr-retrain"
    assert (again.pipeline_id, again.version_id, again.created) == ("pl-1", "pv-2", False)
    assert again.version_name.startswith("0.") and again.version_name != third.version_name == "v3"
    versions = kfp_api.posts("/apis/v2beta1/pipelines/upload_version")
    assert [v["pipelineid"] for v in versions] == ["pl-1"] * 3 and len(kfp_api.pipelines) == 1
    assert [v["display_name"] for v in kfp_api.versions] == ["ffr-retrain", again.version_name, "v3"]


@pytest.mark.parametrize("tag, warned", [("2.3.0", True), ("2.4.0", False), ("2.17.3", False)])
def test_upload_warns_where_the_run_form_treats_falsy_defaults_as_missing(capsys, tag, warned):
    """Kubeflow Pipelines before 2.4 marks every field whose default is 0, false or empty as
    "Missing parameter" and keeps Start disabled: ffr's pipelines have such defaults, so `ffr
    upload` says so, naming the version and what to do; newer servers get no warning."""
    with FakeKFP() as kfp_api:
        kfp_api.tag = tag
        assert main(["upload", "ffr", "--host", kfp_api.url]) == 0
    err = capsys.readouterr().err
    assert ("Missing parameter" in err and f"Kubeflow Pipelines {tag}" in err and "2.4" in err) == warned, err
