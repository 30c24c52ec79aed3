"""S3 through s3fs: ``s3://`` URIs wherever the library takes a path.

Reads go through a local cache that mirrors the bucket (``<cache>/<bucket>/<key>``), so a dataset's
relative paths resolve there exactly as in the bucket; an object is downloaded again only when its
ETag changed. Writes upload a file or a folder; a folder's ``card.json`` and ``manifest.csv`` go
last, so a dataset whose upload failed half way has no manifest and cannot be loaded as if complete.

Configuration comes from the environment only, and credentials are never logged:

- credentials: botocore's usual chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, a profile,
  a web identity or instance role);
- endpoint: ``FFR_S3_ENDPOINT_URL``, else ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL`` or
  ``MLFLOW_S3_ENDPOINT_URL`` (MinIO, moto, Ceph ...); AWS itself when none is set;
- ``FFR_S3_CACHE`` (default ``$FFR_CACHE/s3`` or ``~/.cache/ffr/s3``), ``FFR_S3_RETRIES`` (attempts per request and per
  transfer, default 5), ``FFR_S3_TIMEOUT`` (seconds a request may wait for an answer, default 20:
  an endpoint that accepts and never answers fails after ``RETRIES`` × ``TIMEOUT`` seconds).
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

import botocore.session
import s3fs
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError
from s3fs.core import S3_RETRYABLE_ERRORS

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


def _setting(name: str, default: float, kind=int) -> float:
    text = os.environ.get(name, "").strip() or str(default)
    try:
        value = kind(text)
    except ValueError:
        value = 0
    if not value > 0:
        what = "a whole number" if kind is int else "a number of seconds"
        raise ValueError(f"${name}: expected {what} above 0, got {text!r}")
    return value


def retries() -> int:
    """Attempts per request and per transfer (``$FFR_S3_RETRIES``, default 5)."""
    return int(_setting("FFR_S3_RETRIES", 5))


def timeout() -> float:
    """Seconds one request may wait for an answer (``$FFR_S3_TIMEOUT``, default 20)."""
    return float(_setting("FFR_S3_TIMEOUT", 20, float))


def filesystem() -> s3fs.S3FileSystem:
    """The S3 filesystem for the environment's endpoint, credentials and retries (fsspec keeps one
    instance per distinct set, with its connections): botocore's standard retry mode per request
    (exponential backoff with jitter on throttling, 5xx and connection errors), bounded timeouts,
    and no listing cache, so every listing is fresh."""
    creds = botocore.session.get_session().get_credentials()
    if creds is None:
        raise S3Error("no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                      "(or AWS_PROFILE / a role) in the environment")
    creds, endpoint = creds.get_frozen_credentials(), endpoint_url()
    config = {"retries": {"max_attempts": retries(), "mode": "standard"}, "connect_timeout": min(5.0, timeout()),
              "read_timeout": timeout()}
    if endpoint:
        config["s3"] = {"addressing_style": "path"}
    fs = s3fs.S3FileSystem(key=creds.access_key, secret=creds.secret_key, token=creds.token, endpoint_url=endpoint,
                           config_kwargs=config, use_listings_cache=False)
    fs.retries = 1  # botocore retries each request and with_retries each transfer: no third layer
    return fs


def _response(err: BaseException | None) -> tuple[str, int] | None:
    """The S3 error code and HTTP status behind ``err`` (s3fs raises botocore's ClientError as the
    cause of an OSError); None when S3 did not answer."""
    while err is not None and not isinstance(err, ClientError):
        err = err.__cause__
    return None if err is None else (str(err.response.get("Error", {}).get("Code", "")),
                                     err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _transient(err: BaseException) -> bool:
    answer = _response(err)
    if answer is not None:
        return answer[0] in _TRANSIENT_CODES or answer[1] >= 500
    return (isinstance(err, (BotoCoreError, *S3_RETRYABLE_ERRORS))
            and not isinstance(err, (NoCredentialsError, PartialCredentialsError)))


def _explain(err: BaseException, uri: str, action: str, attempts: int) -> S3Error:
    code = (_response(err) or ("", 0))[0]
    if _timed_out(err):
        return S3Error(f"{action} {uri}: S3 at {endpoint_url() or 'AWS'} did not answer within {timeout():g} s "
                       f"({retries()} attempt(s); $FFR_S3_TIMEOUT, $FFR_S3_RETRIES)")
    if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
        return S3Error(f"{action} {uri}: no usable AWS credentials in the environment "
                       "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
    if code == "NoSuchBucket":
        return S3Error(f"{action} {uri}: bucket {parse_s3_uri(uri)[0]!r} does not exist"
                       f" (endpoint {endpoint_url() or 'AWS'})")
    if code in ("NoSuchKey", "404"):
        return S3Error(f"{action} {uri}: no such object")
    if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return S3Error(f"{action} {uri}: access denied ({code}); check the credentials in the environment")
    after = f" after {attempts} attempt(s)" if _transient(err) else ""
    return S3Error(f"{action} {uri} failed{after}: {type(err).__name__}: {err}")


def _timed_out(err: BaseException | None) -> bool:
    """Whether ``err`` (or what caused it) is a request that got no answer in time."""
    from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, (ReadTimeoutError, ConnectTimeoutError, TimeoutError)):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def with_retries(fn: Callable[[], T], uri: str, action: str, attempts: int | None = None,
                 base_delay: float = 0.5) -> T:
    """Run ``fn`` and retry it with exponential backoff and jitter on transient errors.

    botocore already retries each request; this covers whole transfers (a multipart upload whose
    part kept failing is aborted by s3fs and started again here). Permanent errors raise
    :class:`S3Error` at once, transient ones after the last attempt."""
    attempts = attempts or retries()
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as err:  # classified below: permanent errors are not retried
            if isinstance(err, S3Error):
                raise
            if not _transient(err) or attempt == attempts or _timed_out(err):  # botocore retried a timeout already
                raise _explain(err, uri, action, attempt) from err
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


def _list(fs: s3fs.S3FileSystem, bucket: str, prefix: str, uri: str) -> dict[str, str]:
    """Key → ETag of every object whose key starts with ``prefix`` (folder markers left out)."""
    found = with_retries(lambda: fs.find(bucket, prefix=prefix, detail=True), uri, "listing")
    return {name.partition("/")[2]: info["ETag"] for name, info in found.items() if not name.endswith("/")}


def fingerprint(uri: str) -> str:
    """A digest of everything under ``uri`` (a prefix): its keys with their ETags (content
    hashes), so it changes when any object is added, removed or rewritten. One listing, no
    download."""
    import hashlib

    bucket, prefix = parse_s3_uri(uri)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    listed = _list(filesystem(), bucket, prefix, uri)
    if not listed:
        raise FileNotFoundError(f"{uri}: no objects under this prefix")
    text = "\n".join(f"{key[len(prefix):]}\t{etag}" for key, etag in sorted(listed.items()))
    return "s3-" + hashlib.sha256(text.encode()).hexdigest()[:32]


def _fetch(fs: s3fs.S3FileSystem, bucket: str, keys: dict[str, str], prefix: str, dest: Path | None = None) -> None:
    """Download ``keys`` (key → ETag, each ``prefix`` or under it) into ``dest`` with their layout
    below the prefix; into the prefix's mirror in the cache when ``dest`` is None, skipping the
    objects cached with the same ETag. Every key's local path is checked to stay inside that folder
    before anything is downloaded (:class:`UnsafeKeyError` otherwise). Each file is written to a
    temporary name and renamed, so a downloaded file is always complete."""
    base, index = (dest, None) if dest is not None else (_mirror_dir(bucket, prefix), _Index(bucket))
    where = "the cache" if index else str(dest)
    dests = {key: _inside(base, _below(prefix, key), bucket, key, where) for key in keys}

    def one(key: str) -> None:
        dest = dests[key]
        if index and dest.is_file() and index.etags.get(key) == keys[key]:
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.name}.{os.getpid()}.part")
        with_retries(lambda: fs.get_file(f"{bucket}/{key}", str(tmp)), f"s3://{bucket}/{key}", "downloading")
        os.replace(tmp, dest)
        if index:
            index.etags[key] = keys[key]

    try:
        _parallel(one, sorted(keys))
    finally:
        if index:
            index.save()


def resolve_path(path) -> Path:
    """A local path for ``path``: itself unless it is an ``s3://`` URI; then the object (or every
    object under the prefix) downloaded into the cache, and its mirror path returned."""
    if not is_s3(path):
        return Path(path)
    bucket, key = parse_s3_uri(path)
    fs = filesystem()
    found = _list(fs, bucket, key, path)
    if key in found:  # an object (a prefix of other keys too, at most: take the object)
        found = {key: found[key]}
    else:
        found = {k: e for k, e in found.items() if k.startswith(key + "/") or not key}
    if not found:
        raise S3Error(f"{path}: no such object or prefix")
    _fetch(fs, bucket, found, key)
    return local_mirror(path)


def download_prefix(uri: str, dest: str | os.PathLike) -> Path:
    """Download every object under the prefix ``uri`` into ``dest``, keeping the key layout below
    the prefix; returns ``dest``. A FileNotFoundError when nothing is there. (Callers that cache,
    like the diffusers backend, make the folder appear atomically themselves.)"""
    bucket, prefix = parse_s3_uri(uri)
    fs = filesystem()
    keys = _list(fs, bucket, f"{prefix}/" if prefix else "", uri)
    if not keys:
        raise FileNotFoundError(f"no objects under {uri}")
    _fetch(fs, bucket, keys, prefix, Path(dest))
    return Path(dest)


def fetch_dataset(uri: str) -> Path:
    """The dataset directory at ``uri`` (``manifest.csv`` + ``card.json``) and exactly the images
    its rows name, downloaded into the cache; returns the local dataset directory. The card's
    ``root`` may point above the dataset folder (a split sharing its source's images): it is
    resolved inside the bucket."""
    import pandas as pd

    bucket, key = parse_s3_uri(uri)
    if key.endswith("manifest.csv"):
        key = posixpath.dirname(key)
    fs = filesystem()
    try:
        heads = {k: _list(fs, bucket, k, uri).get(k) for k in (posixpath.join(key, n) for n in _LAST)}
    except S3Error as e:
        raise S3Error(f"s3://{bucket}/{key}: not a dataset ({e})") from None
    absent = [k for k, etag in heads.items() if etag is None]
    if absent:
        raise S3Error(f"s3://{bucket}/{key}: not a dataset (s3://{bucket}/{absent[0]}: no such object)")
    _fetch(fs, bucket, heads, key)
    local = local_mirror(f"s3://{bucket}/{key}")
    card_root = json.loads((local / "card.json").read_text()).get("root", ".")
    root = posixpath.normpath(posixpath.join(key, card_root)) if key else posixpath.normpath(card_root)
    if root.startswith(".."):
        raise S3Error(f"s3://{bucket}/{key}/card.json: root {card_root!r} points outside the bucket")
    root = "" if root == "." else root
    rows = pd.read_csv(local / "manifest.csv", dtype=str, usecols=["path"], keep_default_na=False)["path"]
    wanted = {posixpath.normpath(posixpath.join(root, p)) for p in rows if p}
    listed = _list(fs, bucket, root + "/" if root else "", uri)
    missing = sorted(w for w in wanted if w not in listed)
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise S3Error(f"{uri}: {len(missing)} image(s) named by the manifest are not in the bucket: "
                      f"{missing[:5]}{more}")
    _fetch(fs, bucket, {k: listed[k] for k in wanted}, root)
    return local


def upload(local: str | os.PathLike, uri: str, chunksize: int | None = None) -> str:
    """Upload a file, or a folder's files under the prefix ``uri``; returns ``uri`` once every byte is
    stored. Each file is one atomic S3 object (a multipart upload is completed or aborted); a
    folder's ``card.json`` and ``manifest.csv`` go last, so a dataset interrupted mid-upload is not
    loadable as if complete. Transient failures are retried with backoff; others raise
    :class:`S3Error`.

    Args:
        local: a file, or a folder whose files are uploaded with their relative paths as keys.
        uri: the object (for a file) or the prefix (for a folder).
        chunksize: the part size of multipart uploads, which a file of at least two parts gets
            (at least 5 MiB; s3fs's default, 50 MiB, when None).
    """
    local = Path(local)
    bucket, key = parse_s3_uri(uri)
    fs = filesystem()
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
        with_retries(lambda: fs.put_file(str(path), f"{bucket}/{k}", chunksize=chunksize), f"s3://{bucket}/{k}",
                     "uploading")

    _parallel(one, body)  # raises the first failure: the manifest is then never written
    for item in last:
        one(item)
    return uri
