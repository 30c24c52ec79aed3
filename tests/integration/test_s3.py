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
    data = os.urandom(11 * 1024 * 1024)  # three parts of 5 MiB at most
    (tmp_path / "big.bin").write_bytes(data)
    s3.upload(tmp_path / "big.bin", f"s3://{bucket}/big.bin", chunksize=5 * 1024 * 1024)
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


# -- hostile keys (issue 13): a listed key never places a file outside the cache

ESCAPE = "cfg/../../../escape/PWNED.txt"  # from <cache>/<bucket>/: <cache>/../escape/PWNED.txt


def _put(bucket, **objects):
    client = _s3()
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)


def _refusal(fn, *args) -> ValueError | None:
    """The ValueError ``fn(*args)`` raises (None when it raises nothing), so that what it wrote
    can be checked before the error is."""
    try:
        fn(*args)
    except ValueError as e:
        return e
    return None


def _nothing_escaped(*paths: Path) -> None:
    for p in paths:
        assert not p.exists(), f"{p} was written outside the cache"
        assert not p.parent.exists() or not any(p.parent.iterdir()), f"{p.parent} holds files (a partial download?)"


def test_prefix_with_a_key_escaping_the_cache_is_refused(bucket, tmp_path):
    _put(bucket, **{"cfg/ok.yaml": b"seeds: [1]\n", ESCAPE: b"pwned"})
    would_be = (s3.cache_dir() / bucket / ESCAPE).resolve()
    assert s3.cache_dir().resolve() not in would_be.parents  # the key does point outside the cache
    err = _refusal(s3.resolve_path, f"s3://{bucket}/cfg")
    _nothing_escaped(would_be)
    assert isinstance(err, s3.UnsafeKeyError)
    assert str(err).startswith(f"s3://{bucket}/{ESCAPE}: key escapes the prefix")
    assert "refusing" in str(err)
    assert not (s3.cache_dir() / bucket / "cfg" / "ok.yaml").exists()  # refused before anything is written


MALFORMED = {  # key under the prefix → what the refusal says
    "a\\..\\..\\b.txt": "backslash",
    "nul\x00.txt": "NUL",
    "/etc/passwd": "absolute-looking",
    "./x.txt": "'.' component",
    "sub/../x.txt": "key escapes the prefix",
}


def test_prefix_with_a_malformed_key_is_refused(bucket):
    # One prefix per case (the bucket fixture names the bucket after the test: no parametrize ids).
    for i, (rest, why) in enumerate(MALFORMED.items()):
        _put(bucket, **{f"c{i}/ok.yaml": b"seeds: [1]\n", f"c{i}/{rest}": b"x"})
        with pytest.raises(ValueError, match=why) as e:
            s3.resolve_path(f"s3://{bucket}/c{i}")
        assert str(e.value).startswith(f"s3://{bucket}/c{i}/"), rest
        assert "\x00" not in str(e.value)  # shown escaped
        assert not (s3.cache_dir() / bucket / f"c{i}").exists()


def test_symlink_in_the_cache_does_not_lead_outside(bucket, tmp_path):
    _put(bucket, **{"cfg/link/x.txt": b"x"})
    outside = tmp_path / "outside"
    outside.mkdir()
    (s3.cache_dir() / bucket / "cfg").mkdir(parents=True)
    (s3.cache_dir() / bucket / "cfg" / "link").symlink_to(outside)
    err = _refusal(s3.resolve_path, f"s3://{bucket}/cfg")
    assert not any(outside.iterdir())
    assert err is not None and "outside the cache" in str(err)


def test_dataset_whose_manifest_names_a_key_escaping_the_cache_is_refused(bucket, tmp_path):
    """A dataset at the bucket's root whose manifest names ``../../escape/PWNED.png``, an object
    that exists under exactly that key: it would land two levels above the bucket's mirror."""
    key = "../../escape/PWNED.png"
    _put(bucket, **{"card.json": b'{"name": "x", "root": "."}', "manifest.csv": f"path\n{key}\n".encode(),
                    key: b"pwned"})
    would_be = (s3.cache_dir() / bucket / key).resolve()
    assert s3.cache_dir().resolve() not in would_be.parents
    err = _refusal(s3.fetch_dataset, f"s3://{bucket}")
    _nothing_escaped(would_be)
    assert err is not None and str(err).startswith(f"s3://{bucket}/{key}: key escapes the prefix")


def test_download_prefix_refuses_a_key_escaping_the_destination(bucket, tmp_path):
    _put(bucket, **{"model/ok.bin": b"ok", "model/../../escape/PWNED.bin": b"pwned"})
    dest = tmp_path / "a" / "dl"
    would_be = (dest / "../../escape/PWNED.bin").resolve()
    assert would_be == tmp_path / "escape" / "PWNED.bin"
    err = _refusal(s3.download_prefix, f"s3://{bucket}/model", dest)
    _nothing_escaped(would_be)
    assert err is not None and str(err).startswith(f"s3://{bucket}/model/../../escape/PWNED.bin: key escapes")
    assert not dest.exists()


def test_cli_config_prefix_with_an_escaping_key_is_a_clean_error(bucket, tmp_path, capsys):
    from ffr.cli import main

    _put(bucket, **{"cfg/ok.yaml": b"seeds: [1]\n", ESCAPE: b"pwned"})
    would_be = (s3.cache_dir() / bucket / ESCAPE).resolve()
    rc = main(["compare", "--config", f"s3://{bucket}/cfg", "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    _nothing_escaped(would_be)
    assert rc == 2
    assert f"ffr: error: s3://{bucket}/{ESCAPE}: key escapes the prefix" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_fingerprint_of_a_prefix_follows_its_content(bucket):
    from ffr.runform import source_fingerprint

    _put(bucket, **{"fp/manifest.csv": b"a,b\n", "fp/images/1.png": b"one", "other/x.png": b"x"})
    first = source_fingerprint(f"s3://{bucket}/fp")
    assert first.startswith("s3-") and source_fingerprint(f"s3://{bucket}/fp/") == first
    _put(bucket, **{"other/y.png": b"y"})  # outside the prefix
    assert source_fingerprint(f"s3://{bucket}/fp") == first
    _put(bucket, **{"fp/images/1.png": b"uno"})  # rewritten under the same key
    second = source_fingerprint(f"s3://{bucket}/fp")
    assert second != first
    _put(bucket, **{"fp/images/2.png": b"two"})
    assert source_fingerprint(f"s3://{bucket}/fp") not in (first, second)
    with pytest.raises(FileNotFoundError, match="no objects"):
        source_fingerprint(f"s3://{bucket}/nothing-here")
