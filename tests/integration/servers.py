"""Real services on 127.0.0.1 for the integration tests: moto's S3 server, an MLflow tracking
server (SQLite backend, artifacts in that S3), and a fault-injecting HTTP proxy to put in front of
either. Every process is started by the tests from the virtual environment's own binaries and
terminated by them."""

from __future__ import annotations

import http.client
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable

BIN = Path(sys.executable).parent
DUMMY_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary(name: str) -> str:
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} is not installed in {BIN} (pip install -e '.[tracking]')")
    return found


class Server:
    """A child process serving HTTP on ``port``; ``stop()`` ends it (and only it)."""

    def __init__(self, args: list[str], port: int, ready_path: str, env: dict | None = None,
                 log: Path | None = None, timeout: float = 90.0):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        out = open(log, "wb") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:] if log else ""
                raise RuntimeError(f"{args[0]} exited with {self.proc.returncode} before answering:\n{tail}")
            try:
                with urllib.request.urlopen(self.url + ready_path, timeout=2):
                    return
            except OSError:
                if time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"{args[0]} did not answer {self.url + ready_path} within {timeout:.0f} s")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and its workers
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def start_moto(log: Path) -> Server:
    port = free_port()
    return Server([binary("moto_server"), "-H", "127.0.0.1", "-p", str(port)], port, "/moto-api/", log=log)


def start_mlflow(workdir: Path, s3_endpoint: str, artifacts: str, log: Path) -> Server:
    port = free_port()
    env = {**DUMMY_AWS, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}
    args = [binary("mlflow"), "server", "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
            "--artifacts-destination", artifacts, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    return Server(args, port, "/health", env=env, log=log, timeout=120)


# A rule sees (method, path, n) — n counts the requests that matched it so far — and returns None
# to forward the request, an HTTP status to answer with instead, or "drop" to close the connection.
Rule = Callable[[str, str, int], "int | str | None"]


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream``, failing the requests its rules pick."""

    _HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}

    def __init__(self, upstream: str):
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.rules: list[tuple[Callable[[str, str], bool], Callable[[int], "int | str | None"]]] = []
        self.counts: dict[int, int] = {}
        self.seen: list[tuple[str, str, str]] = []   # (method, path, outcome)
        self.authorizations: list[str | None] = []  # the Authorization header of every request
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self):
                body = self._body()
                action = proxy.action(self.command, self.path)
                with proxy.lock:
                    proxy.seen.append((self.command, self.path, str(action or "forwarded")))
                    proxy.authorizations.append(self.headers.get("Authorization"))
                if action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if isinstance(action, int):
                    msg = b"injected fault"
                    self.send_response(action)
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in proxy._HOP}
                if body or "Content-Length" in self.headers or "chunked" in self.headers.get("Transfer-Encoding", ""):
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in proxy._HOP and k.lower() != "content-length":
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def fail(self, match: Callable[[str, str], bool], outcome: Callable[[int], "int | str | None"]) -> None:
        """Add a rule: requests for which ``match(method, path)`` holds get ``outcome(n)`` (n: how
        many matched before)."""
        self.rules.append((match, outcome))

    def action(self, method: str, path: str):
        with self.lock:
            for i, (match, outcome) in enumerate(self.rules):
                if match(method, path):
                    n = self.counts.get(i, 0)
                    self.counts[i] = n + 1
                    result = outcome(n)
                    if result is not None:
                        return result
        return None

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()
            self.counts.clear()
            self.seen.clear()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
