"""The component image, built by `make image-test` (which sets ``FFR_TEST_IMAGE``): its labels
and user, and every component executed from its file system — the command a Kubeflow pod runs
(``python3 -m kfp.dsl.executor_main`` with executor input JSON) — through whole pipelines on
tiny settings: prepare → synthesize → collect → balance → train → evaluate → report, with the
MLflow tracking and register steps, and the retraining pipeline's data-revision step. Nothing of
this checkout is visible inside: the steps import the image's own ffr and kfp.

Skipped unless ``FFR_TEST_IMAGE`` names a built image; needs root (mount, chroot) and podman.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

IMAGE = os.environ.get("FFR_TEST_IMAGE", "")
pytestmark = pytest.mark.skipif(not IMAGE or shutil.which("podman") is None or os.geteuid() != 0,
                                reason="set FFR_TEST_IMAGE to a built image (make image-test); needs root and podman")

TINY = {"data_demo_per_digit": 10, "data_bias_rate": 0.9, "synthesis_shards": 1, "train_pretrain_epochs": 1, "train_finetune_epochs": 1, "train_min_steps": 0,
        "train_device": "cpu"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from chroot import ImageRoot

    runs = tmp_path_factory.mktemp("image-runs")
    with ImageRoot(IMAGE, binds=[runs]) as r:
        r.runs = runs
        yield r


@pytest.fixture
def in_image(root, monkeypatch):
    """The KFP local runner with every step executed in the image."""
    from kfp import local
    from kfp.local import docker_task_handler

    from chroot import ChrootTaskHandler

    monkeypatch.setattr(docker_task_handler, "DockerTaskHandler", ChrootTaskHandler)
    monkeypatch.setattr(ChrootTaskHandler, "root", root)
    monkeypatch.setattr(ChrootTaskHandler, "executed", [])
    return local.DockerRunner()


def test_labels_user_and_revision(root):
    import ffr
    from ffr.revision import code_revision

    commit, _ = code_revision()
    assert root.labels["org.opencontainers.image.version"] == ffr.__version__
    assert root.labels["org.opencontainers.image.revision"] == commit == root.env["FFR_GIT_COMMIT"]
    assert root.labels["org.opencontainers.image.source"].startswith("https://")
    # the base the image was built from, recorded as OCI says (make image-test passes its own)
    assert root.labels["org.opencontainers.image.base.name"] == os.environ.get(
        "FFR_TEST_BASE_IMAGE", "localhost/ffr-debian-base:bookworm")
    assert root.user.split(":")[0] not in ("", "0", "root")


def test_the_image_has_its_own_python_with_everything_the_components_import(root):
    code = ("import json, os, sys, ffr, ffr.integrations.kubeflow.components as components, ffr.integrations.kubeflow.pipelines, kfp, torch, torchvision, mlflow, dvc, s3fs, diffusers;"
            "from ffr.integrations import serving;"
            "print(json.dumps({'ffr': ffr.__file__, 'python': sys.executable, 'uid': os.getuid(),"
            " 'components': len(components.ALL), 'tag': __import__('ffr.revision').revision.image_tag()}))")
    out = root.run(["python3", "-c", code])
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["ffr"].startswith("/opt/venv/") and info["python"].startswith("/opt/venv/")
    assert info["uid"] != 0 and info["components"] >= 10
    import ffr
    from ffr.revision import code_revision

    assert info["tag"] == f"{ffr.__version__}-{code_revision()[0][:12]}"  # the image names itself as it was built
    # the folders KFP's launcher stages artifacts in (and /models) belong to the user; the code does not
    owners = root.run(["stat", "-c", "%n %u", "/gcs", "/minio", "/s3", "/models", "/opt/venv/bin/python3"]).stdout.split("\n")
    uid = root.user.split(":")[0]
    assert [line.split()[1] for line in owners if line][:4] == [uid] * 4
    assert owners[4].split()[1] == "0"


def test_comparison_pipeline_runs_every_step_in_the_image(root, in_image):
    from ffr.integrations.kubeflow.components.image import base_image
    from ffr.integrations.kubeflow.pipelines.run import run_local
    from chroot import ChrootTaskHandler

    run = run_local("comparison", {**TINY, "train_baseline_epochs": 1}, root.runs, progress=False, mlflow="local",
                    runner=in_image)
    assert list(run.results) == ["none", "usb", "asb", "ffr"]
    for strategy, m in run.results.items():
        assert 0.0 <= m["worst_group_acc"] <= m["average_acc"] <= 1.0 and m["groups"], strategy
    functions = [f for _, f in ChrootTaskHandler.executed]
    assert {"prepare_data", "synthesize_shard", "collect_shards", "balance_data", "train_model", "evaluate_model",
            "comparison_report", "start_tracking", "register_model"} <= set(functions)
    assert functions.count("train_model") == 5 and functions.count("evaluate_model") == 4
    assert {image for image, _ in ChrootTaskHandler.executed} == {base_image()}
    assert len(list(run.run_dir.glob("outputs/**/model.pt"))) == 5
    assert (run.output.parent / "report").read_text().count("<table") >= 1
    # the steps' MLflow runs, written from inside the image into the run folder's store
    from mlflow import MlflowClient

    client = MlflowClient(run.mlflow_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) >= 10 and all(r.info.status == "FINISHED" for r in runs)
    commits = {r.data.tags.get("ffr.git_commit") for r in runs if "ffr.git_commit" in r.data.tags}
    assert commits == {root.env["FFR_GIT_COMMIT"]}  # the image's revision: no checkout inside
    assert client.get_model_version("ffr", "1").source


def test_retrain_pipeline_fetches_its_data_in_the_image(root, in_image):
    from ffr.integrations.kubeflow.pipelines.run import run_local
    from chroot import ChrootTaskHandler

    run = run_local("retrain", {k: v for k, v in TINY.items() if k != "data_demo_per_digit"} | {"data_bias_rate": 0.95},
                    root.runs, progress=False, mlflow=None, runner=in_image)
    assert "fetch_data_revision" in [f for _, f in ChrootTaskHandler.executed]
    assert list(run.results) == ["ffr"]


def test_the_sweep_pipeline_compiled_for_a_cluster_runs_in_the_image(root, in_image, tmp_path):
    """`ffr compile sweep --gpu --parallelism 4`, loaded back and run with every step in the image:
    the data, the plan, the levels of training into the stage store, the cells, the report."""
    import yaml

    from ffr.integrations.kubeflow.pipelines.platform import Platform
    from ffr.integrations.kubeflow.pipelines.run import compile_pipeline, run_local
    from chroot import ChrootTaskHandler

    config = {"data": {"dataset": "demo", "image_size": 16, "demo": {"per_digit": 10, "image_size": 16}},
              "strategies": ["none", "ffr"], "bias_rates": [0.9], "seeds": [0], "device": "cpu",
              **{s: {"epochs": 1, "min_steps": 0, "batch_size": 32} for s in ("train", "pretrain", "finetune")}}
    compiled = compile_pipeline("sweep", root.runs / "sweep.yaml", Platform(gpu=True, parallelism=4),
                                {"sweep_config": yaml.safe_dump(config)})
    run = run_local("sweep", {}, root.runs, progress=False, mlflow=None, runner=in_image, compiled=compiled)
    assert sorted({r["strategy"] for r in run.results}) == ["ffr", "none"] and all(r["selected"] for r in run.results)
    functions = [f for _, f in ChrootTaskHandler.executed]
    assert {"check_sweep_config", "prepare_sweep_data", "plan_sweep_stages", "train_sweep_batch",
            "evaluate_sweep_batch", "sweep_report"} <= set(functions)
    assert len(list((run.run_dir / "stages").glob("*/model.pt.json"))) == 3  # none; FFR's steps 1 and 2
