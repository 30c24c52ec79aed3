"""s3:// paths against a real S3 server (moto, on 127.0.0.1): datasets, checkpoints and configs
load from URIs; uploads are retried on transient faults and never leave a half-written dataset
that looks complete."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

boto3 = pytest.importorskip("boto3")

from ffr.config import load_config  # noqa: E402
from ffr.data.manifest import Manifest  # noqa: E402
from ffr.data.splits import bias_rate_split  # noqa: E402
from ffr.integrations import s3  # noqa: E402
from ffr.train.backbones import create_model  # noqa: E402
from ffr.train.loop import load_checkpoint, save_checkpoint  # noqa: E402

COUNTS = {(s, l, b): 4 for s in ("train", "val", "test") for l in ("cat", "dog") for b in ("indoor", "outdoor")}


def _s3(endpoint=None):
    return boto3.client("s3", endpoint_url=endpoint or os.environ["FFR_S3_ENDPOINT_URL"])


def test_dataset_round_trip(make_dataset, bucket):
    ds = make_dataset(COUNTS)
    assert s3.upload(ds, f"s3://{bucket}/datasets/toy") == f"s3://{bucket}/datasets/toy"
    m = Manifest.load(f"s3://{bucket}/datasets/toy")
    local = Manifest.load(ds)
    assert len(m) == len(local) == 48
    assert m.digest() == local.digest()
    assert [p.read_bytes() for p in m.abs_paths()] == [p.read_bytes() for p in local.abs_paths()]


def test_split_whose_images_live_above_it(make_dataset, bucket, tmp_path):
    """A prepared split keeps its images in the source folder (card root '../source'): loading it
    from S3 fetches exactly the images its rows name, from the bucket."""
    src = make_dataset(COUNTS, name="data/source")
    split, _ = bias_rate_split(Manifest.load(src), 0.75, seed=0, min_val_per_group=1)
    split.save(tmp_path / "data" / "prepared")
    s3.upload(tmp_path / "data", f"s3://{bucket}/data")
    m = Manifest.load(f"s3://{bucket}/data/prepared")
    assert m.digest() == split.digest()
    fetched = {p.relative_to(s3.cache_dir()).as_posix() for p in s3.cache_dir().rglob("*.png")}
    assert fetched == {f"{bucket}/data/source/{p}" for p in split.frame["path"]}
    assert len(fetched) < len(Manifest.load(src))


def test_cache_keeps_unchanged_objects_and_refreshes_changed_ones(tmp_path, bucket):
    (tmp_path / "cfg.yaml").write_text("backbone: small_cnn\nseeds: [3]\n")
    uri = f"s3://{bucket}/configs/cfg.yaml"
    s3.upload(tmp_path / "cfg.yaml", uri)
    assert load_config(uri).seeds == [3]
    cached = s3.local_mirror(uri)
    before = cached.stat().st_mtime_ns
    assert load_config(uri, ["seeds=[4]"]).seeds == [4]
    assert cached.stat().st_mtime_ns == before  # same ETag: not downloaded again
    (tmp_path / "cfg.yaml").write_text("backbone: small_cnn\nseeds: [5]\n")
    s3.upload(tmp_path / "cfg.yaml", uri)
    assert load_config(uri).seeds == [5]


def test_checkpoint_from_s3(tmp_path, bucket):
    model = create_model("small_cnn", 2)
    save_checkpoint(tmp_path / "m.pt", model, {"backbone": "small_cnn", "classes": ["a", "b"]})
    s3.upload(tmp_path / "m.pt", f"s3://{bucket}/models/m.pt")
    loaded, meta = load_checkpoint(f"s3://{bucket}/models/m.pt")
    assert meta["classes"] == ["a", "b"]
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_clear_errors(bucket, monkeypatch, tmp_path):
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    with pytest.raises(s3.S3Error, match="bucket 'no-such-bucket' does not exist") as e:
        s3.resolve_path("s3://no-such-bucket/x.csv")
    assert secret not in str(e.value)
    with pytest.raises(s3.S3Error, match="no such object or prefix"):
        s3.resolve_path(f"s3://{bucket}/missing/manifest.csv")
    with pytest.raises(s3.S3Error, match="not a dataset"):
        Manifest.load(f"s3://{bucket}/missing")
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    with pytest.raises(s3.S3Error, match="no AWS credentials"):
        s3.resolve_path(f"s3://{bucket}/x")


def test_transient_faults_are_retried(tmp_path, bucket, proxy_to, s3_env, monkeypatch):
    proxy = proxy_to(s3_env)
    monkeypatch.setenv("FFR_S3_ENDPOINT_URL", proxy.url)
    # The first two PUTs of the object fail: botocore retries them.
    proxy.fail(lambda m, p: m == "PUT" and "/obj.bin" in p, lambda n: 503 if n < 2 else None)
    (tmp_path / "obj.bin").write_bytes(os.urandom(1000))
    s3.upload(tmp_path / "obj.bin", f"s3://{bucket}/obj.bin")
    assert [o for _, p, o in proxy.seen if "/obj.bin" in p] == ["503", "503", "forwarded"]
    assert _s3(s3_env.url).get_object(Bucket=bucket, Key="obj.bin")["Body"].read() == (tmp_path / "obj.bin").read_bytes()


def test_multipart_part_failing_past_request_retries_restarts_the_upload(tmp_path, bucket, proxy_to, s3_env,
                                                                         monkeypatch):
    from boto3.s3.transfer import TransferConfig

    proxy = proxy_to(s3_env)
    monkeypatch.setenv("FFR_S3_ENDPOINT_URL", proxy.url)
    # Part 2 of the first multipart upload fails on every attempt botocore makes, so that transfer
    # fails and is aborted; our own retry starts a new upload, which succeeds.
    first = []

    def part2_of_first_upload(m, p):
        upload_id = p.partition("uploadId=")[2].split("&")[0]
        if upload_id and not first:
            first.append(upload_id)
        return m == "PUT" and "partNumber=2" in p and upload_id == first[0]

    proxy.fail(part2_of_first_upload, lambda n: "drop")
    data = os.urandom(6 * 1024 * 1024)
    (tmp_path / "big.bin").write_bytes(data)
    cfg = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024,
                         max_concurrency=1)
    s3.upload(tmp_path / "big.bin", f"s3://{bucket}/big.bin", transfer=cfg)
    client = _s3(s3_env.url)
    assert client.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == data
    assert sum(1 for m, p, _ in proxy.seen if m == "POST" and p.endswith("?uploads")) == 2  # restarted once
    assert any(m == "DELETE" and first[0] in p for m, p, _ in proxy.seen)                   # first one aborted
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_s3_down_mid_upload_leaves_no_loadable_dataset(make_dataset, bucket, proxy_to, s3_env, monkeypatch):
    ds = make_dataset(COUNTS)
    proxy = proxy_to(s3_env)
    monkeypatch.setenv("FFR_S3_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("FFR_S3_RETRIES", "2")
    # S3 disappears after the 10th PUT: every later request has its connection dropped.
    puts = []
    proxy.fail(lambda m, p: True, lambda n: "drop" if len(puts) >= 10 else None)
    proxy.fail(lambda m, p: m == "PUT", lambda n: puts.append(n))
    with pytest.raises(s3.S3Error, match="uploading .* failed after 2 attempt"):
        s3.upload(ds, f"s3://{bucket}/toy")
    client = _s3(s3_env.url)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert 0 < len(keys) < 49 and "toy/manifest.csv" not in keys and "toy/card.json" not in keys
    monkeypatch.setenv("FFR_S3_ENDPOINT_URL", s3_env.url)
    with pytest.raises(s3.S3Error, match="not a dataset"):
        Manifest.load(f"s3://{bucket}/toy")


def test_prompt_file_and_folder_source_from_s3(tmp_path, bucket, card):
    from ffr.synthesis.folder import FolderBackend
    from ffr.synthesis.prompts import PromptSet
    from helpers import write_png

    shipped = PromptSet.load("waterbirds")
    (tmp_path / "p.yaml").write_text(Path(shipped.source).read_text())
    s3.upload(tmp_path / "p.yaml", f"s3://{bucket}/prompts/p.yaml")
    assert PromptSet.load(f"s3://{bucket}/prompts/p.yaml").groups == shipped.groups
    for i, (label, b) in enumerate(card.groups):
        write_png(tmp_path / "imgs" / f"{label}_{b}" / "0.png", i)
    s3.upload(tmp_path / "imgs", f"s3://{bucket}/imgs")
    backend = FolderBackend(card, f"s3://{bucket}/imgs")
    assert all(len(v) == 1 for v in backend.files.values())
