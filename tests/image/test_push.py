"""`make push` against a real registry (Debian's docker-registry, the CNCF distribution server,
on 127.0.0.1): the image lands under ``REGISTRY/ffr:<version>-<revision>``, the digest the
registry serves is the one recorded, and ``ffr compile --image REGISTRY/ffr`` pins the pipeline
to it. The small Debian base image stands in for the component image (the mechanics are the
same; pushing 7 GB would only cost minutes).

Skipped unless ``FFR_TEST_IMAGE`` is set (`make image-test`) and docker-registry is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE = os.environ.get("FFR_TEST_PUSH_IMAGE", "localhost/ffr-debian-base:bookworm")
pytestmark = pytest.mark.skipif(not os.environ.get("FFR_TEST_IMAGE") or shutil.which("docker-registry") is None
                                or shutil.which("podman") is None,
                                reason="make image-test with docker-registry installed (apt-get install docker-registry)")


@pytest.fixture
def registry(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "config.yml").write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
                                         f"http:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(tmp_path / "config.yml")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(50):
        try:
            urllib.request.urlopen(url + "/v2/", timeout=1).read()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the registry did not start")
    yield f"127.0.0.1:{port}"
    proc.kill()
    proc.wait()


def test_push_records_the_served_digest_and_compile_pins_it(registry, tmp_path):
    from ffr.revision import image_tag

    env = {**os.environ, "FFR_PUSH_RECORD": str(tmp_path / "pushed.json")}
    out = subprocess.run(["make", "-s", "push", f"IMAGE={BASE}", f"REGISTRY={registry}/team",
                          "PUSH_OPTS=--tls-verify=false"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    ref = f"{registry}/team/ffr:{image_tag()}"
    digest = json.loads((tmp_path / "pushed.json").read_text())[ref]
    req = urllib.request.Request(f"http://{registry}/v2/team/ffr/manifests/{image_tag()}", method="HEAD", headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["Docker-Content-Digest"] == digest
    compiled = tmp_path / "ffr.yaml"
    out = subprocess.run([sys.executable, "-m", "ffr.cli", "compile", "ffr", "--image", f"{registry}/team/ffr",
                          "--out", str(compiled)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    images = {line.split("image:", 1)[1].strip() for line in compiled.read_text().splitlines() if "image:" in line}
    assert images == {f"{ref}@{digest}"}
    # without the record the tag alone is named (nothing pinned that was not pushed)
    out = subprocess.run([sys.executable, "-m", "ffr.cli", "compile", "ffr", "--image", f"{registry}/other/ffr",
                          "--out", str(compiled)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert f"{registry}/other/ffr:{image_tag()}\n" in compiled.read_text()
