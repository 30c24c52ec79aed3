"""A stage store on object storage: the stage cache of a sweep shared by every pod of a cluster.

A trained stage is the folder ``<store>/<key>/`` (``model.pt``, ``model.pt.history.jsonl``,
``model.pt.json``), ``key`` being the content-addressed :meth:`ffr.train.stage.StageSpec.key` a
local stage cache uses too. Each pod works on a local mirror of the store (the folder the stage
driver reads and writes); around it:

- **found**: a stage whose summary ``model.pt.json`` is in the store is finished (the summary is
  uploaded last, after the model and the history): it is downloaded and loaded, never trained;
- **claim**: a pod that must train a stage first creates ``<key>/claim`` with a conditional write
  (``If-None-Match: *``): of several pods only one succeeds, and it trains;
- **commit**: the trained files are uploaded, the summary last, then the claim removed. A half
  upload has no summary: it is never read as a stage;
- **wait**: a pod whose claim failed waits for the summary and then reads the stage. The claimer
  refreshes its claim every ``heartbeat`` seconds while it trains; a claim not refreshed for
  ``stale_after`` seconds (its pod was killed) is taken over, so a rerun after a killed pod
  finishes the stage and retrains nothing that finished.
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from ffr.integrations.s3 import S3Error, filesystem, parse_s3_uri, with_retries

FILES = ("model.pt", "model.pt.history.jsonl", "model.pt.json")  # the summary last: the commit
CLAIM = "claim"


class S3StageStore:
    """A stage store at ``uri`` (``s3://bucket/prefix``) with a local mirror in ``local`` (default:
    a new temporary folder). ``trained`` lists the keys this store object trained."""

    def __init__(self, uri: str, local: str | os.PathLike | None = None, heartbeat: float = 30.0,
                 stale_after: float = 180.0, poll: float = 2.0, timeout: float = 7 * 24 * 3600.0):
        self.uri = uri.rstrip("/")
        self.bucket, self.prefix = parse_s3_uri(self.uri)
        self.local = Path(local) if local is not None else Path(tempfile.mkdtemp(prefix="ffr-stages-"))
        self.local.mkdir(parents=True, exist_ok=True)
        self.heartbeat, self.stale_after, self.poll, self.timeout = heartbeat, stale_after, poll, timeout
        self.trained: list[str] = []
        self.me = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"

    def _key(self, key: str, name: str) -> str:
        return posixpath.join(self.bucket, self.prefix, key, name) if self.prefix else posixpath.join(self.bucket, key,
                                                                                                       name)

    def finished(self, key: str) -> bool:
        """Whether stage ``key`` is committed in the store."""
        fs = filesystem()
        fs.invalidate_cache(posixpath.dirname(self._key(key, FILES[-1])))
        return with_retries(lambda: fs.exists(self._key(key, FILES[-1])), f"{self.uri}/{key}", "looking up")

    def fetch(self, key: str) -> bool:
        """Download stage ``key`` into the local mirror if it is committed; whether it is."""
        if (self.local / key / FILES[-1]).is_file():
            return True
        if not self.finished(key):
            return False
        fs = filesystem()
        dest = self.local / key
        dest.mkdir(parents=True, exist_ok=True)
        for name in FILES:  # the summary last, locally too: its presence means the stage is whole
            part = dest / f".{name}.part"
            with_retries(lambda: fs.get_file(self._key(key, name), str(part)), f"{self.uri}/{key}/{name}",
                         "downloading")
            os.replace(part, dest / name)
        return True

    def _claim(self, key: str) -> bool:
        """Create the claim of ``key`` if nobody holds it; whether we now do."""
        fs = filesystem()
        body = json.dumps({"by": self.me, "time": time.time()}).encode()
        try:
            fs.pipe_file(self._key(key, CLAIM), body, IfNoneMatch="*")
            return True
        except FileExistsError:  # s3fs's word for 412 Precondition Failed: somebody holds the claim
            return False
        except Exception as e:  # the conditional write failed: 412 (held) or 409 (a concurrent write)
            text = f"{type(e).__name__} {e}"
            if "412" in text or "PreconditionFailed" in text or "409" in text or "ConditionalRequestConflict" in text:
                return False
            raise S3Error(f"{self.uri}/{key}/{CLAIM}: claiming the stage failed: {text}") from e

    def _claim_age(self, key: str) -> float | None:
        """Seconds since the claim of ``key`` was last written (None: no claim)."""
        fs = filesystem()
        path = self._key(key, CLAIM)
        fs.invalidate_cache(posixpath.dirname(path))
        try:
            info = fs.info(path)
        except FileNotFoundError:
            return None
        modified = info.get("LastModified")
        return time.time() - modified.timestamp() if modified is not None else 0.0

    def _release(self, key: str) -> None:
        fs = filesystem()
        try:
            fs.rm_file(self._key(key, CLAIM))
        except FileNotFoundError:
            pass

    def _commit(self, key: str) -> None:
        fs = filesystem()
        for name in FILES:  # the summary last: a stage is committed once, whole
            src = self.local / key / name
            if src.is_file():
                with_retries(lambda: fs.put_file(str(src), self._key(key, name)), f"{self.uri}/{key}/{name}",
                             "uploading")

    def ensure(self, key: str, train: Callable[[Path], object]):
        """Stage ``key``, trained once across every pod that asks: ``train(local)`` is called with
        the local mirror as the stage cache — after downloading the stage when it is committed
        already (the stage driver then loads it), or after claiming it (the driver trains it;
        it is then committed) — and its result returned."""
        deadline = time.time() + self.timeout
        while True:
            if self.fetch(key):
                return train(self.local)
            if self._claim(key):
                break
            age = self._claim_age(key)
            if age is not None and age > self.stale_after:  # its pod is gone: take the stage over
                self._release(key)
                continue
            if time.time() > deadline:
                raise S3Error(f"{self.uri}/{key}: another task claimed this stage and did not finish it in "
                              f"{self.timeout:.0f} s")
            time.sleep(self.poll)
        stop = threading.Event()

        def beat():
            fs = filesystem()
            while not stop.wait(self.heartbeat):
                try:
                    fs.pipe_file(self._key(key, CLAIM), json.dumps({"by": self.me, "time": time.time()}).encode())
                except Exception:  # a missed beat: the next one may pass; a dead pod stops beating
                    pass

        beater = threading.Thread(target=beat, daemon=True)
        beater.start()
        try:
            result = train(self.local)
            self._commit(key)
            self.trained.append(key)
            return result
        finally:
            stop.set()
            beater.join(timeout=5)
            self._release(key)
