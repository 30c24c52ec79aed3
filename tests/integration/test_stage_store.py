"""The sweep's stage store on object storage (moto's S3 server on 127.0.0.1): a stage two tasks
need is trained by one and read by the other, never twice and never half-written; a claim left by
a killed pod is taken over; the sweep pipeline on the local runner trains every stage once into
the bucket, and a rerun trains none."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("s3fs")


def _train_into(local: Path, key: str, calls: list, seconds: float = 0.0):
    """A stand-in for the stage driver: writes a stage's three files (the summary last), or
    finds it already written."""
    folder = local / key
    if (folder / "model.pt.json").is_file():
        return "found"
    calls.append(key)
    time.sleep(seconds)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.pt").write_bytes(b"weights")
    (folder / "model.pt.history.jsonl").write_text("{}\n")
    (folder / "model.pt.json").write_text(json.dumps({"key": key}))
    return "trained"


def test_two_tasks_racing_for_a_stage_train_it_once(bucket, tmp_path):
    from ffr.integrations.stage_store import S3StageStore

    uri = f"s3://{bucket}/stages"
    stores = [S3StageStore(uri, tmp_path / f"pod{i}", poll=0.2) for i in range(2)]
    calls: list = []
    outcome: dict = {}
    start = threading.Barrier(2)

    def task(i):
        start.wait()
        outcome[i] = stores[i].ensure("k1", lambda local: _train_into(local, "k1", calls, seconds=2.0))

    threads = [threading.Thread(target=task, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert calls == ["k1"] and sorted(outcome.values()) == ["found", "trained"]  # one trainer, one reader
    assert sum(len(s.trained) for s in stores) == 1
    for s in stores:  # both pods hold the whole stage
        assert (s.local / "k1" / "model.pt").read_bytes() == b"weights"
    assert stores[0].finished("k1")
    from ffr.integrations.s3 import filesystem

    assert not filesystem().exists(f"{bucket}/stages/k1/claim")  # released after the commit


def test_a_half_upload_is_no_stage_and_a_dead_claim_is_taken_over(bucket, tmp_path):
    from ffr.integrations.s3 import filesystem
    from ffr.integrations.stage_store import S3StageStore

    uri = f"s3://{bucket}/stages"
    fs = filesystem()
    # a pod killed mid-upload: the model is there, the summary (the commit) and a fresh beat are not
    fs.pipe_file(f"{bucket}/stages/k2/model.pt", b"half")
    fs.pipe_file(f"{bucket}/stages/k2/claim", b"{}")
    store = S3StageStore(uri, tmp_path / "pod", poll=0.2, stale_after=1.5)
    assert not store.finished("k2") and not store.fetch("k2")
    calls: list = []
    assert store.ensure("k2", lambda local: _train_into(local, "k2", calls)) == "trained"  # after the claim went stale
    assert calls == ["k2"] and store.finished("k2")
    other = S3StageStore(uri, tmp_path / "later")
    assert other.ensure("k2", lambda local: _train_into(local, "k2", [])) == "found"
    assert (other.local / "k2" / "model.pt").read_bytes() == b"weights"


@pytest.mark.slow
def test_the_sweep_pipeline_shares_its_stages_through_the_bucket(bucket, s3_env, tmp_path):
    import yaml

    from ffr.integrations.kubeflow.pipelines.run import run_local
    from tests.test_sweep_pipeline import TINY, train_outputs

    params = {"config": yaml.safe_dump(TINY), "stage_store": f"s3://{bucket}/sweep-stages", "stages_per_task": 4,
              "cells_per_task": 8}
    first = run_local("sweep", params, tmp_path / "runs", progress=False)
    trained = [k for r in train_outputs(first.run_dir) for k in r["trained"]]
    assert len(trained) == len(set(trained)) == 10
    from ffr.integrations.s3 import filesystem

    held = {Path(p).parent.name for p in filesystem().glob(f"{bucket}/sweep-stages/*/model.pt.json")}
    assert held == set(trained)
    again = run_local("sweep", params, tmp_path / "runs", progress=False)
    reports = train_outputs(again.run_dir)
    assert not any(r["trained"] for r in reports) and len({k for r in reports for k in r["found"]}) == 10
    assert [r["test"] for r in again.results] == [r["test"] for r in first.results]
