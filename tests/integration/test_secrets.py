"""A tracking URI with a password (``http://user:password@host``), through a whole ``ffr run`` of a
Kubeflow pipeline on the KFP local runner against the real MLflow server: the credential reaches
the server (as HTTP basic auth, from the environment the steps inherit) and appears in no output,
log, run record or MLflow store."""

from __future__ import annotations

import base64
import json

import pytest

pytest.importorskip("kfp")
pytest.importorskip("mlflow")

PASSWORD = "s3cret-Pa55w0rd-4711"
TINY = {"data_demo_per_digit": 10, "data_bias_rate": 0.9, "synthesis_shards": 1, "train_pretrain_epochs": 1, "train_finetune_epochs": 1,
        "train_min_steps": 0, "train_patience": 0, "train_backbone": "tiny_cnn", "train_image_size": 16, "train_device": "cpu"}


@pytest.mark.slow
def test_a_tracking_uri_password_reaches_the_server_and_nothing_else(mlflow_env, s3_env, proxy_to, tmp_path, capsys,
                                                                    monkeypatch):
    import boto3
    from mlflow import MlflowClient

    from ffr.cli import main
    from tests.integration.conftest import ARTIFACT_BUCKET, _boto_kwargs

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    proxy = proxy_to(mlflow_env)
    uri = proxy.url.replace("http://", f"http://alice:{PASSWORD}@")
    argv = ["run", "ffr", "--runs-dir", str(tmp_path / "runs"), "--mlflow", uri, "--param", "mlflow_experiment=secrets"]
    for key, value in TINY.items():
        argv += ["--param", f"{key}={value}"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert PASSWORD not in out + err

    run_dir = next((tmp_path / "runs").iterdir())
    for path in run_dir.rglob("*"):  # run.json, run.log, every step's outputs
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "succeeded" and record["mlflow"] == proxy.url

    expected = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    unauthenticated = [seen for seen, auth in zip(proxy.seen, proxy.authorizations) if auth != expected]
    assert proxy.authorizations and not unauthenticated  # every request carried the credential

    client = MlflowClient(mlflow_env.url)
    runs = client.search_runs([client.get_experiment_by_name("secrets").experiment_id])
    assert runs  # tracked
    for r in runs:
        assert PASSWORD not in json.dumps({**r.data.params, **r.data.tags})
    db = next(mlflow_env.log.parent.glob("mlflow.db"))
    assert PASSWORD.encode() not in db.read_bytes()
    s3 = boto3.client("s3", endpoint_url=s3_env.url, **_boto_kwargs())
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=ARTIFACT_BUCKET):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=ARTIFACT_BUCKET, Key=obj["Key"])["Body"].read()
            assert PASSWORD.encode() not in body, obj["Key"]
