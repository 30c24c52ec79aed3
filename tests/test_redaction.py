"""Credentials inside a tracking URI never reach a message (issue 13): ``redact_uri`` hides the
password of the URI's user info and secret query parameters, and every message that names a
tracking URI goes through it, down to the ``ffr`` command line."""

from __future__ import annotations

import base64
import http.server
import os
import socket
import threading

import pytest

from ffr import paths as mt
from ffr.integrations.mlflow_server import TrackingError, check_server

SECRET = "s3cret"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("uri, shown", [
    ("http://alice:s3cret@127.0.0.1:1/", "http://alice:***@127.0.0.1:1/"),
    ("https://alice:s3cret@mlflow.example.com:5000/base", "https://alice:***@mlflow.example.com:5000/base"),
    ("http://alice:p%40s3cret@host/", "http://alice:***@host/"),       # percent-encoded '@'
    ("http://alice:p@s3cret@host/", "http://alice:***@host/"),         # a raw '@' in the password
    ("http://alice:@host/", "http://alice:***@host/"),                 # an empty password
    ("http://host:5000/?token=s3cret", "http://host:5000/?token=***"),
    ("http://host/?x=1&access_token=s3cret&y=2", "http://host/?x=1&access_token=***&y=2"),
    ("http://host/?password=s3cret", "http://host/?password=***"),
    ("http://host/?Password=s3cret;page=2", "http://host/?Password=***;page=2"),
    ("http://host/?X-Amz-Signature=s3cret&X-Amz-Credential=s3cret", "http://host/?X-Amz-Signature=***&X-Amz-Credential=***"),
    ("http://host/?api_key=s3cret", "http://host/?api_key=***"),
    ("http://host/#access_token=s3cret", "http://host/#access_token=***"),
    ("http://bob:s3cret@host/?token=s3cret", "http://bob:***@host/?token=***"),
])
def test_redact_uri_hides_passwords_and_tokens(uri, shown):
    assert mt.redact_uri(uri) == shown
    assert SECRET not in mt.redact_uri(uri)
    assert mt.redact_uri(mt.redact_uri(uri)) == shown  # idempotent


@pytest.mark.parametrize("uri", [
    "http://127.0.0.1:5000", "https://mlflow.example.com/", "http://alice@host:5000/",
    "sqlite:////tmp/run/mlflow.db", "file:///tmp/mlruns", "databricks", "databricks://profile", "",
    "http://host/?page=2&sort=asc", "http://host/api?author=x",
])
def test_redact_uri_leaves_uris_without_secrets_alone(uri):
    assert mt.redact_uri(uri) == uri


def test_redact_uri_in_a_message_naming_the_uri():
    msg = ("API request to http://alice:s3cret@127.0.0.1:1/api/2.0/mlflow/runs/create failed with exception "
           "HTTPConnectionPool(host='127.0.0.1', port=1); also 'https://u:s3cret@h/?token=s3cret'")
    out = mt.redact_uri(msg)
    assert SECRET not in out
    assert "http://alice:***@127.0.0.1:1/api/2.0/mlflow/runs/create" in out and "https://u:***@h/?token=***" in out


def test_unreachable_server_error_shows_no_credentials():
    uri = f"http://alice:{SECRET}@127.0.0.1:{_closed_port()}/?token={SECRET}"
    with pytest.raises(TrackingError) as e:
        check_server(uri, attempts=1)
    assert SECRET not in str(e.value)
    assert "alice:***@127.0.0.1" in str(e.value) and "not reachable" in str(e.value)


def test_health_check_sends_the_user_info_as_basic_auth():
    """The user info is not part of the host: the health check sends it as an Authorization
    header (as MLflow's own client does), not to a DNS lookup of ``alice:s3cret@127.0.0.1``."""
    seen = []

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        check_server(f"http://alice:{SECRET}@127.0.0.1:{server.server_port}/", attempts=1)
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [("/health", "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode())]


def test_guarded_errors_show_no_credentials():
    pytest.importorskip("mlflow")
    from mlflow.exceptions import MlflowException

    from ffr.integrations.mlflow_server import guarded

    @guarded("reading the run")
    def fails():
        raise MlflowException(f"API request to http://alice:{SECRET}@127.0.0.1:1/api/2.0/mlflow/runs/get failed")

    with pytest.raises(TrackingError) as e:
        fails()
    assert SECRET not in str(e.value) and "http://alice:***@127.0.0.1:1/api/2.0" in str(e.value)


@pytest.fixture
def fast_mlflow_env(monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # configure() sets this default for a URI with credentials: restore the variable afterwards.
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "")
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")


@pytest.mark.parametrize("command", ["compare", "promote"])
def test_cli_never_prints_the_password_of_a_tracking_uri(command, tmp_path, capfd, fast_mlflow_env):
    from ffr.cli import main

    uri = f"http://alice:{SECRET}@127.0.0.1:{_closed_port()}/"
    argv = {"compare": ["compare", "--mlflow", uri, "--out", str(tmp_path / "out"), "--quiet"],
            "promote": ["promote", "--mlflow", uri, "--name", "x", "--version", "1"]}[command]
    rc = main(argv)
    out, err = capfd.readouterr()
    assert SECRET not in out and SECRET not in err
    assert rc != 0
    assert "ffr: error:" in err and "alice:***@127.0.0.1" in err
    assert "Traceback" not in err
    # MLflow's own "View run ... at: <tracking URI>/#/..." line would print the password: off.
    assert os.environ.get("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT") == "true"
