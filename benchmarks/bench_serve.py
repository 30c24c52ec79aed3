"""Load on the served model: ``mlflow models serve`` (what ``ffr serve`` starts) of a tiny_cnn
logged as ffr's servable pyfunc, on 127.0.0.1, under concurrent clients sending real PNGs of the
digits benchmark; then the same load with garbage mixed in (text that is not base64, bytes that are
no image, a missing column, a decompression bomb's header, malformed JSON).

Reported: requests/s, p50/p99 latency, the error count of valid requests (must be 0), how the
garbage was answered (every one a 4xx, none a 5xx or a dropped connection), and the server's
memory (RSS of its process tree) before and after. A bounded run, never a timed assertion.

    .venv/bin/python benchmarks/bench_serve.py [--clients 32] [--requests 3000] [--workers 1]

Writes ``$FFR_BENCH_DIR/serve.json`` (default /tmp/ffr-bench) and prints it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import DEFAULT_WORKDIR, demo_images

IMAGE_SIZE = 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants (KiB), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def _servable(workdir: Path, classes: list[str], bias_values: list[str]) -> tuple[str, str]:
    """(tracking URI, model URI) of a tiny_cnn logged as the servable pyfunc in a local store."""
    import mlflow
    import torch

    from ffr.integrations.serving import log_servable
    from ffr.train.backbones import create_model

    torch.manual_seed(0)
    model = create_model("tiny_cnn", len(classes)).eval()
    meta = {"backbone": "tiny_cnn", "classes": classes, "bias_values": bias_values, "image_size": IMAGE_SIZE,
            "normalize": "imagenet", "stage_key": "bench"}
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name("bench-serve")  # its artifacts in the work folder, not ./mlruns
    exp_id = exp.experiment_id if exp else mlflow.create_experiment("bench-serve", (workdir / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp_id):
        info = log_servable(model, meta)
    return uri, info.model_uri


def _garbage(png: bytes) -> list[tuple[str, bytes, str]]:
    """(name, body, content type) of requests a serving model must refuse with a 4xx."""
    bomb = png[:16] + (100_000).to_bytes(4, "big") + (100_000).to_bytes(4, "big") + png[24:]  # a 10^10-pixel header
    split = lambda cells: json.dumps({"dataframe_split": {"columns": ["image"], "data": [[c] for c in cells]}})  # noqa: E731
    return [("not base64", split(["this is not base64!"]).encode(), "application/json"),
            ("not an image", split([base64.b64encode(b"GIF89a" + os.urandom(64)).decode()]).encode(),
             "application/json"),
            ("no image column", json.dumps({"dataframe_split": {"columns": ["x"], "data": [[1]]}}).encode(),
             "application/json"),
            ("bomb header", split([base64.b64encode(bomb).decode()]).encode(), "application/json"),
            ("malformed JSON", b'{"dataframe_split": {', "application/json")]


def _post(url: str, body: bytes, content_type: str) -> tuple[int, float]:
    """(HTTP status, or 0 for a failed connection; seconds)."""
    t0 = time.perf_counter()
    try:
        req = urllib.request.Request(url, body, {"Content-Type": content_type})
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    except OSError:
        status = 0
    return status, time.perf_counter() - t0


def _load(url: str, jobs: list[tuple[str, bytes, str]], clients: int) -> dict:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(lambda job: (job[0], *_post(url, job[1], job[2])), jobs))
    wall = time.perf_counter() - t0
    valid = [(s, dt) for name, s, dt in answers if name == "valid"]
    lat = sorted(dt for _, dt in valid)
    garbage: dict[str, dict[str, int]] = {}
    for name, status, _ in answers:
        if name != "valid":
            kind = "4xx" if 400 <= status < 500 else ("no answer" if status == 0 else str(status))
            garbage.setdefault(name, {}).setdefault(kind, 0)
            garbage[name][kind] += 1
    return {"requests": len(answers), "seconds": round(wall, 2), "requests_per_s": round(len(answers) / wall, 1),
            "valid": len(valid), "valid_errors": sum(1 for s, _ in valid if s != 200),
            "p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
            "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1) if lat else None,
            "garbage_answers": garbage}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=3000, help="valid requests of the first phase")
    parser.add_argument("--workers", type=int, default=1, help="the model server's worker processes")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = parser.parse_args()

    from ffr.integrations.serving import serve_command

    work = args.workdir / "serve"
    work.mkdir(parents=True, exist_ok=True)
    m = demo_images(args.workdir, IMAGE_SIZE, split="test")
    pngs = [p.read_bytes() for p in m.abs_paths()]
    tracking, model_uri = _servable(work, list(m.card.classes), list(m.card.bias_values))
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking,  # the server runs uvicorn from this environment
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    log = open(work / "server.log", "w")
    server = subprocess.Popen(serve_command(model_uri, port=port, workers=args.workers), env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"the model server did not start: see {work / 'server.log'}")
                time.sleep(1)
        url = f"http://127.0.0.1:{port}/invocations"
        valid = [("valid", json.dumps({"dataframe_split": {"columns": ["image"], "data": [
            [base64.b64encode(pngs[i % len(pngs)]).decode()]]}}).encode(), "application/json")
            for i in range(args.requests)]
        _load(url, valid[:64], args.clients)  # warm-up: the first requests import torch's kernels
        rss_before = _rss_kib(server.pid)
        clean = _load(url, valid, args.clients)
        garbage = _garbage(pngs[0])
        mixed_jobs = [job for i, v in enumerate(valid[: args.requests // 2])
                      for job in ([v, garbage[(i // 5) % len(garbage)]] if i % 5 == 0 else [v])]
        mixed = _load(url, mixed_jobs, args.clients)
        rss_after = _rss_kib(server.pid)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
    out = {"model": "tiny_cnn, 32 px, ffr's servable pyfunc", "server": f"mlflow models serve --workers {args.workers}",
           "clients": args.clients, "cpus": os.cpu_count(), "valid_load": clean, "mixed_load": mixed,
           "server_rss_mib": {"before": round(rss_before / 1024, 1), "after": round(rss_after / 1024, 1)}}
    (args.workdir / "serve.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    if clean["valid_errors"] or mixed["valid_errors"]:
        raise SystemExit("valid requests failed under load")
    if any(k != "4xx" for answers in mixed["garbage_answers"].values() for k in answers):
        raise SystemExit("garbage was not refused with a 4xx every time")


if __name__ == "__main__":
    main()
