"""S3 through boto3: ``s3://`` URIs wherever the library takes a path.

Reads go through a local cache that mirrors the bucket (``<cache>/<bucket>/<key>``), so a dataset's
relative paths resolve there exactly as in the bucket; an object is downloaded again only when its
ETag changed. Writes upload a file or a folder; a folder's ``card.json`` and ``manifest.csv`` go
last, so a dataset whose upload failed half way has no manifest and cannot be loaded as if complete.

Configuration comes from the environment only, and credentials are never logged:

- credentials: boto3's usual chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, a profile,
  a web identity or instance role);
- endpoint: ``FFR_S3_ENDPOINT_URL``, else ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL`` or
  ``MLFLOW_S3_ENDPOINT_URL`` (MinIO, moto, Ceph ...); AWS itself when none is set;
- ``FFR_S3_CACHE`` (default ``$FFR_CACHE/s3`` or ``~/.cache/ffr/s3``), ``FFR_S3_RETRIES`` (attempts per request and per
  transfer, default 5).
"""

from __future__ import annotations

import json
import os
import posixpath
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, TypeVar

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (BotoCoreError, ClientError, ConnectionError as BotoConnectionError,
                                 NoCredentialsError, PartialCredentialsError)

from ffr.integrations import ServiceError

T = TypeVar("T")

ENDPOINT_VARS = ("FFR_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
# Written last when a folder is uploaded: their presence means the dataset is complete.
_LAST = ("card.json", "manifest.csv")
_TRANSIENT_CODES = {"RequestTimeout", "RequestTimeoutException", "SlowDown", "Throttling", "ThrottlingException",
                    "InternalError", "ServiceUnavailable", "503", "500", "502", "504"}


class S3Error(ServiceError):
    """An S3 operation failed for a reason the user must fix (credentials, bucket, key), or kept
    failing after its retries."""


class UnsafeKeyError(ValueError):
    """An object's key cannot be mirrored safely: its local path would leave the cache folder of
    the prefix being downloaded (a ``..`` component, a symlink), or is ambiguous (an empty or ``.``
    component, a backslash, a NUL). Nothing is written when a download meets one."""


def is_s3(path) -> bool:
    return isinstance(path, str) and path.startswith("s3://")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` → ``("bucket", "a/b")``."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r}: no bucket name")
    return bucket, key.strip("/")


def endpoint_url() -> str | None:
    """The S3 endpoint from the environment (None: AWS)."""
    return next((os.environ[v] for v in ENDPOINT_VARS if os.environ.get(v)), None)


def retries() -> int:
    return max(1, int(os.environ.get("FFR_S3_RETRIES", "5")))


def s3_client():
    """A boto3 S3 client: endpoint from the environment, botocore's standard retry mode (exponential
    backoff with jitter on throttling, 5xx and connection errors), bounded timeouts."""
    session = boto3.session.Session()
    if session.get_credentials() is None:
        raise S3Error("no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                      "(or AWS_PROFILE / a role) in the environment")
    cfg = Config(retries={"max_attempts": retries(), "mode": "standard"}, connect_timeout=5, read_timeout=60,
                 s3={"addressing_style": "path"} if endpoint_url() else None)
    return session.client("s3", endpoint_url=endpoint_url(), config=cfg)


def _transient(err: BaseException) -> bool:
    if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
        return False
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0
        return code in _TRANSIENT_CODES or status >= 500
    # s3transfer wraps the cause of a failed upload in S3UploadFailedError (a plain Exception).
    return isinstance(err, (BotoConnectionError, BotoCoreError)) or type(err).__name__ == "S3UploadFailedError"


def _explain(err: BaseException, uri: str, action: str) -> S3Error:
    if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
        return S3Error(f"{action} {uri}: no usable AWS credentials in the environment "
                       "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            return S3Error(f"{action} {uri}: bucket {parse_s3_uri(uri)[0]!r} does not exist"
                           f" (endpoint {endpoint_url() or 'AWS'})")
        if code in ("NoSuchKey", "404"):
            return S3Error(f"{action} {uri}: no such object")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return S3Error(f"{action} {uri}: access denied ({code}); check the credentials in the environment")
    return S3Error(f"{action} {uri} failed after {retries()} attempt(s): {type(err).__name__}: {err}")


def with_retries(fn: Callable[[], T], uri: str, action: str, attempts: int | None = None,
                 base_delay: float = 0.5) -> T:
    """Run ``fn`` and retry it with exponential backoff and jitter on transient errors.

    botocore already retries each request; this covers whole transfers (a multipart upload whose
    part kept failing is aborted by boto3 and started again here). Permanent errors raise
    :class:`S3Error` at once, transient ones after the last attempt."""
    attempts = attempts or retries()
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as err:  # classified below: permanent errors are not retried
            if isinstance(err, S3Error):
                raise
            if not _transient(err) or attempt == attempts:
                raise _explain(err, uri, action) from err
            time.sleep(base_delay * 2 ** (attempt - 1) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def cache_dir() -> Path:
    """``$FFR_S3_CACHE``, else ``$FFR_CACHE/s3``, else ``~/.cache/ffr/s3``."""
    if os.environ.get("FFR_S3_CACHE"):
        return Path(os.environ["FFR_S3_CACHE"])
    return Path(os.environ.get("FFR_CACHE", Path.home() / ".cache" / "ffr")) / "s3"


def _show(bucket: str, key: str) -> str:
    """``s3://bucket/key`` for a message, control characters (a NUL) escaped."""
    return f"s3://{bucket}/" + "".join(c if c.isprintable() else repr(c)[1:-1] for c in key)


def _inside(base: Path, rel: str, bucket: str, key: str, where: str = "the cache") -> Path:
    """``base`` joined with the ``/``-separated ``rel`` (the part of ``key`` below the prefix that
    ``base`` mirrors), refused with :class:`UnsafeKeyError` unless it is a plain relative path that
    stays inside ``base``, symlinks resolved. Every local path made from a key goes through here."""
    def refuse(why: str):
        return UnsafeKeyError(f"{_show(bucket, key)}: {why}; refusing to write outside {where}")

    if "\x00" in key:
        raise refuse("key contains a NUL character")
    if "\\" in key:
        raise refuse("key contains a backslash (a path separator on some systems)")
    parts = rel.split("/") if rel else []
    if ".." in parts:
        raise refuse("key escapes the prefix (a '..' component)")
    if "" in parts:
        raise refuse("key has an empty path component (an absolute-looking key or '//')")
    if "." in parts:
        raise refuse("key has a '.' component")
    path = base.joinpath(*parts)
    real_base, real = os.path.realpath(base), os.path.realpath(path)
    if real != real_base and not real.startswith(real_base.rstrip(os.sep) + os.sep):
        raise refuse(f"key resolves to {real}, outside {real_base} (a symlink?)")
    return path


def _below(prefix: str, key: str) -> str:
    """The part of ``key`` below ``prefix`` ("" for the prefix itself; all of it below the bucket)."""
    if key == prefix:
        return ""
    if not prefix:
        return key
    if not key.startswith(prefix + "/"):
        raise AssertionError(f"{key!r} is not under {prefix!r}")  # callers list under the prefix
    return key[len(prefix) + 1:]


def _mirror_dir(bucket: str, prefix: str) -> Path:
    """``<cache>/<bucket>/<prefix>``, checked to stay inside the cache."""
    bucket_dir = _inside(cache_dir(), bucket, bucket, prefix)
    return _inside(bucket_dir, prefix, bucket, prefix)


def local_mirror(uri: str) -> Path:
    """Where ``uri`` lives in the cache (``<cache>/<bucket>/<key>``); an :class:`UnsafeKeyError`
    for a key that would not stay inside it."""
    bucket, key = parse_s3_uri(uri)
    return _mirror_dir(bucket, key)


class _Index:
    """ETags of the cached objects of one bucket (one JSON file), so unchanged objects are kept."""

    def __init__(self, bucket: str):
        # Kept beside the mirror, not in it, so a mirrored folder holds exactly the bucket's files.
        self.path = cache_dir() / ".etags" / f"{bucket}.json"
        try:
            self.etags = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.etags = {}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.etags))
        os.replace(tmp, self.path)


def _parallel(fn: Callable, items: list) -> None:
    """``fn`` over ``items`` on 8 threads; the first failure cancels what has not started and is raised."""
    pool = ThreadPoolExecutor(8)
    try:
        for fut in [pool.submit(fn, item) for item in items]:
            fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _list(s3, bucket: str, prefix: str, uri: str) -> dict[str, str]:
    """Key → ETag of every object under ``prefix``."""
    out = {}

    def page_all():
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = obj["ETag"]
        return out

    return with_retries(page_all, uri, "listing")


def _fetch(s3, bucket: str, keys: dict[str, str], index: _Index, prefix: str) -> None:
    """Download ``keys`` (key → ETag, each ``prefix`` or under it) into the mirror, skipping those
    cached with the same ETag. Every key's local path is checked to stay inside the prefix's
    mirror folder before anything is downloaded (:class:`UnsafeKeyError` otherwise). Each file is
    written to a temporary name and renamed, so a cached file is always complete."""
    base = _mirror_dir(bucket, prefix)
    dests = {key: _inside(base, _below(prefix, key), bucket, key) for key in keys}

    def one(key: str) -> None:
        dest = dests[key]
        if dest.is_file() and index.etags.get(key) == keys[key]:
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.name}.{os.getpid()}.part")
        uri = f"s3://{bucket}/{key}"
        with_retries(lambda: s3.download_file(bucket, key, str(tmp)), uri, "downloading")
        os.replace(tmp, dest)
        index.etags[key] = keys[key]

    try:
        _parallel(one, sorted(keys))
    finally:
        index.save()


def resolve_path(path) -> Path:
    """A local path for ``path``: itself unless it is an ``s3://`` URI; then the object (or every
    object under the prefix) downloaded into the cache, and its mirror path returned."""
    if not is_s3(path):
        return Path(path)
    bucket, key = parse_s3_uri(path)
    s3 = s3_client()
    found = _list(s3, bucket, key, path)
    if key in found:  # an object (a prefix of other keys too, at most: take the object)
        found = {key: found[key]}
    else:
        found = {k: e for k, e in found.items() if (k.startswith(key + "/") or not key) and not k.endswith("/")}
    if not found:
        raise S3Error(f"{path}: no such object or prefix")
    _fetch(s3, bucket, found, _Index(bucket), key)
    return local_mirror(path)


def download_prefix(uri: str, dest: str | os.PathLike, client=None) -> Path:
    """Download every object under the prefix ``uri`` into ``dest``, keeping the key layout below
    the prefix; returns ``dest``. A FileNotFoundError when nothing is there. (Callers that cache,
    like the diffusers backend, make the folder appear atomically themselves.)"""
    bucket, prefix = parse_s3_uri(uri)
    s3 = client or s3_client()
    start = f"{prefix}/" if prefix else ""
    keys = [k for k in _list(s3, bucket, start, uri) if not k.endswith("/")]  # no folder markers
    if not keys:
        raise FileNotFoundError(f"no objects under {uri}")
    dest = Path(dest)
    targets = {k: _inside(dest, k[len(start):], bucket, k, where=str(dest)) for k in keys}  # all before any write

    def one(key: str) -> None:
        target = targets[key]
        target.parent.mkdir(parents=True, exist_ok=True)
        with_retries(lambda: s3.download_file(bucket, key, str(target)), f"s3://{bucket}/{key}", "downloading")

    _parallel(one, keys)
    return dest


def fetch_dataset(uri: str) -> Path:
    """The dataset directory at ``uri`` (``manifest.csv`` + ``card.json``) and exactly the images
    its rows name, downloaded into the cache; returns the local dataset directory. The card's
    ``root`` may point above the dataset folder (a split sharing its source's images): it is
    resolved inside the bucket."""
    import pandas as pd

    bucket, key = parse_s3_uri(uri)
    if key.endswith("manifest.csv"):
        key = posixpath.dirname(key)
    s3 = s3_client()
    index = _Index(bucket)
    heads = {}
    for name in _LAST:
        k = posixpath.join(key, name)
        try:
            heads[k] = with_retries(lambda: s3.head_object(Bucket=bucket, Key=k), f"s3://{bucket}/{k}",
                                    "reading")["ETag"]
        except S3Error as e:
            raise S3Error(f"s3://{bucket}/{key}: not a dataset ({e})") from None
    _fetch(s3, bucket, heads, index, key)
    local = local_mirror(f"s3://{bucket}/{key}")
    card_root = json.loads((local / "card.json").read_text()).get("root", ".")
    root = posixpath.normpath(posixpath.join(key, card_root)) if key else posixpath.normpath(card_root)
    if root.startswith(".."):
        raise S3Error(f"s3://{bucket}/{key}/card.json: root {card_root!r} points outside the bucket")
    root = "" if root == "." else root
    rows = pd.read_csv(local / "manifest.csv", dtype=str, usecols=["path"], keep_default_na=False)["path"]
    wanted = {posixpath.normpath(posixpath.join(root, p)) for p in rows if p}
    listed = _list(s3, bucket, root + "/" if root else "", uri)
    missing = sorted(w for w in wanted if w not in listed)
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise S3Error(f"{uri}: {len(missing)} image(s) named by the manifest are not in the bucket: "
                      f"{missing[:5]}{more}")
    _fetch(s3, bucket, {k: listed[k] for k in wanted}, index, root)
    return local


def upload(local: str | os.PathLike, uri: str, transfer: TransferConfig | None = None) -> str:
    """Upload a file, or a folder's files under the prefix ``uri``; returns ``uri`` once every byte is
    stored. Each file is one atomic S3 object (a multipart upload is completed or aborted); a
    folder's ``card.json`` and ``manifest.csv`` go last, so a dataset interrupted mid-upload is not
    loadable as if complete. Transient failures are retried with backoff; others raise
    :class:`S3Error`."""
    local = Path(local)
    bucket, key = parse_s3_uri(uri)
    s3 = s3_client()
    if local.is_file():
        body, last = [(local, key)], []
    elif local.is_dir():
        rels = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
        body = [(local / r, posixpath.join(key, r) if key else r) for r in rels if r not in _LAST]
        last = [(local / r, posixpath.join(key, r) if key else r) for r in _LAST if r in rels]
    else:
        raise FileNotFoundError(f"nothing to upload at {local}")

    def one(item):
        path, k = item
        with_retries(lambda: s3.upload_file(str(path), bucket, k, Config=transfer), f"s3://{bucket}/{k}", "uploading")

    _parallel(one, body)  # raises the first failure: the manifest is then never written
    for item in last:
        one(item)
    return uri
