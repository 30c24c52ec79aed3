"""Session-wide real services for the integration tests (see servers.py): one moto S3 server and one
MLflow server (SQLite backend, artifacts in a bucket of that S3) started once, stopped at the end."""

from __future__ import annotations

import os

import pytest

from tests.integration.servers import DUMMY_AWS, FaultProxy, start_mlflow, start_moto

ARTIFACT_BUCKET = "mlflow-artifacts"


@pytest.fixture(scope="session")
def moto(tmp_path_factory):
    """moto's S3 server on a free port of 127.0.0.1."""
    pytest.importorskip("moto")
    server = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(moto, tmp_path_factory):
    """``mlflow server`` with a SQLite backend and its artifacts in moto's S3 (one per session:
    it takes about 10 s to start)."""
    pytest.importorskip("mlflow")
    import boto3

    boto3.client("s3", endpoint_url=moto.url, **_boto_kwargs()).create_bucket(Bucket=ARTIFACT_BUCKET)
    work = tmp_path_factory.mktemp("mlflow")
    server = start_mlflow(work, moto.url, f"s3://{ARTIFACT_BUCKET}/artifacts", work / "mlflow.log")
    yield server
    server.stop()


def _boto_kwargs() -> dict:
    return {"aws_access_key_id": DUMMY_AWS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": DUMMY_AWS["AWS_SECRET_ACCESS_KEY"],
            "region_name": DUMMY_AWS["AWS_DEFAULT_REGION"]}


@pytest.fixture
def s3_env(moto, monkeypatch, tmp_path):
    """Dummy credentials, the moto endpoint, a fresh cache and short retries, for this test only."""
    for k, v in DUMMY_AWS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("FFR_S3_ENDPOINT_URL", moto.url)
    monkeypatch.setenv("FFR_S3_CACHE", str(tmp_path / "s3cache"))
    monkeypatch.setenv("FFR_S3_RETRIES", "3")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto


@pytest.fixture
def bucket(s3_env, request):
    """A fresh bucket named after the test."""
    import boto3

    name = "t-" + request.node.name.lower().replace("_", "-")[:50].strip("-") + f"-{os.getpid()}"
    boto3.client("s3", endpoint_url=s3_env.url, **_boto_kwargs()).create_bucket(Bucket=name)
    return name


@pytest.fixture
def mlflow_env(mlflow_server, monkeypatch):
    """Fast bounded retries for the MLflow client in this test, and system metrics sampled every
    second (MLflow's default of 10 s logs nothing for a run shorter than that)."""
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    return mlflow_server


@pytest.fixture
def proxy_to():
    """``proxy_to(server)``: a fault-injecting proxy in front of a server, closed after the test."""
    made = []

    def make(server) -> FaultProxy:
        p = FaultProxy(server.url)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()
