"""S3 access (boto3): the one place ``ffr`` talks to object storage.

The endpoint comes from the usual boto3 configuration (``AWS_ENDPOINT_URL`` for MinIO, moto or
another S3-compatible server; credentials from the environment or ``~/.aws``).
"""

from __future__ import annotations

import os
from pathlib import Path


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → (``bucket``, ``some/prefix``); a ValueError otherwise."""
    if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix.strip("/")


def s3_client():
    """A boto3 S3 client configured from the environment."""
    import boto3

    return boto3.client("s3")


def download_prefix(uri: str, dest: str | os.PathLike, client=None) -> Path:
    """Download every object under ``uri`` (an ``s3://bucket/prefix``) into ``dest``, keeping the
    key layout below the prefix; returns ``dest``. A FileNotFoundError when nothing is there."""
    bucket, prefix = parse_s3_uri(uri)
    client = client or s3_client()
    dest = Path(dest)
    start = f"{prefix}/" if prefix else ""
    found = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=start):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(start):]
            if not rel or rel.endswith("/"):  # folder markers
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(target))
            found += 1
    if not found:
        raise FileNotFoundError(f"no objects under {uri}")
    return dest
