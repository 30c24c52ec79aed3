"""``ffr submit`` and ``ffr schedule`` against a Kubeflow Pipelines API.

No cluster exists here: the tests start a small HTTP server on 127.0.0.1 that speaks the KFP
v2beta1 endpoints these commands call (healthz, list/create experiments, create run, create
recurring run) with the JSON the real API returns, and record every request, so the tests check
what a cluster would receive. Unreachable hosts, wrong endpoints and bad cron expressions get
clear errors before anything is sent.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

pytest.importorskip("kfp")

from ffr.cli import main  # noqa: E402
from pipelines.run import PipelineError, schedule, submit, validate_cron  # noqa: E402


class FakeKFP:
    """The KFP v2beta1 REST endpoints ffr uses, with an in-memory store."""

    def __init__(self, experiments=(), status: int = 200):
        self.requests: list[tuple[str, str, dict]] = []
        self.experiments = [dict(e) for e in experiments]
        self.status = status
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

            def do_GET(self):
                fake.requests.append(("GET", self.path, {}))
                url = urlparse(self.path)
                if fake.status != 200:
                    return self._reply({"error": "nope"}, fake.status)
                if url.path == "/apis/v2beta1/healthz":
                    return self._reply({"multi_user": False})
                if url.path == "/apis/v2beta1/experiments":
                    flt = json.loads(parse_qs(url.query)["filter"][0])
                    name = flt["predicates"][0]["string_value" if "string_value" in flt["predicates"][0] else "stringValue"]
                    found = [e for e in fake.experiments if e["display_name"] == name]
                    return self._reply({"experiments": found, "total_size": len(found)})
                self._reply({"error": f"no route {url.path}"}, 404)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                fake.requests.append(("POST", self.path, body))
                path = urlparse(self.path).path
                if path == "/apis/v2beta1/experiments":
                    exp = {**body, "experiment_id": f"exp-{len(fake.experiments) + 1}"}
                    fake.experiments.append(exp)
                    return self._reply(exp)
                if path == "/apis/v2beta1/runs":
                    return self._reply({**body, "run_id": "run-42", "state": "PENDING"})
                if path == "/apis/v2beta1/recurringruns":
                    return self._reply({**body, "recurring_run_id": "rr-7", "status": "ENABLED"})
                self._reply({"error": f"no route {path}"}, 404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def posts(self, path: str) -> list[dict]:
        return [b for m, p, b in self.requests if m == "POST" and urlparse(p).path == path]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def no_kfp_context(tmp_path, monkeypatch):
    """kfp.Client reads ~/.config/kfp/context.json: keep the user's out of the tests."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def free_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more


def test_submit_creates_experiment_and_run():
    with FakeKFP() as kfp_api:
        run_id = submit(kfp_api.url, "ffr", {"pretrain_epochs": 5, "bias_rate": 0.99}, experiment="team-a",
                        run_name="nightly")
    assert run_id == "run-42"
    (exp,) = kfp_api.posts("/apis/v2beta1/experiments")
    assert exp["display_name"] == "team-a"
    (run,) = kfp_api.posts("/apis/v2beta1/runs")
    assert run["experiment_id"] == "exp-1" and run["display_name"] == "nightly"
    spec = run["pipeline_spec"]
    assert spec["pipeline_spec"]["pipelineInfo"]["name"] == "ffr"
    assert run["runtime_config"]["parameters"] == {"pretrain_epochs": 5, "bias_rate": 0.99}
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
                     "--param", "finetune_epochs=3"])
    assert code == 0
    assert "recurring run rr-7" in capsys.readouterr().out
    (job,) = kfp_api.posts("/apis/v2beta1/recurringruns")
    assert job["display_name"] == "weekly"
    assert job["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * MON"
    assert int(job["max_concurrency"]) == 1 and job["no_catchup"] is True and job["mode"] == "ENABLE"
    assert job["runtime_config"]["parameters"] == {"finetune_epochs": 3}


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
    assert main(["submit", "--host", url]) == 2
    assert "cannot reach Kubeflow Pipelines" in capsys.readouterr().err
    with pytest.raises(PipelineError, match="must be an http"):
        submit("localhost:8080", "ffr")


@pytest.mark.parametrize("status,hint", [(404, "is this the KFP API address"), (403, "authentication needed")])
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
