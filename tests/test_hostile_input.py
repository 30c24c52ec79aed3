"""Hostile input, round two (issue 22): nothing written outside ``--out``, no dataset replaced by
its own split, 16-bit and rotated images read as they look, a stage cache that trusts nothing on
disk it cannot verify, byte-reproducible checkpoints, no credential in any message. The one-line
refusals are rows of tests/test_bad_input.py; what needs a look at files afterwards is here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ffr.cli import main
from tests.test_bad_input import _dataset

TINY_TRAIN = ["--set", "backbone=tiny_cnn", "--set", "data.image_size=8", "--set", "train.epochs=2",
              "--set", "train.min_steps=0", "--set", "train.patience=0", "--set", "train.batch_size=8"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ a dataset is never replaced
@pytest.mark.parametrize("argv", [
    lambda ds: ["prepare", "--set", f"data.dataset={ds}", "--bias-rate", "0.9", "--out", ds],
    lambda ds: ["data", "split", ds, "--bias-rate", "0.9", "--out", ds],
    lambda ds: ["data", "split", ds / "manifest.csv", "--bias-rate", "0.9", "--out", ds],
    lambda ds: ["data", "demo", "--out", ds],
], ids=["prepare", "split", "split-of-the-csv", "demo-over-it"])
def test_a_dataset_is_never_replaced_by_what_is_made_from_it(argv, tmp_path, capsys):
    ds = _dataset(tmp_path / "ds")
    before = _snapshot(ds)
    assert main([str(a) for a in argv(ds)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ffr: error:") and str(ds) in err and "Traceback" not in err
    assert _snapshot(ds) == before  # not one byte of the dataset changed


def test_the_demo_prepared_into_its_own_source_folder_is_refused(tmp_path, capsys):
    """The demo's source is built in OUT/../source by default: a prepare into that folder would
    replace the build with its split, and every later prepare would split the split."""
    argv = ["prepare", "--set", "data.demo.per_digit=10", "--bias-rate", "0.9"]
    assert main([*argv, "--out", str(tmp_path / "prep")]) == 0
    before = _snapshot(tmp_path / "source")
    assert main([*argv, "--out", str(tmp_path / "source")]) == 2
    assert "is the folder of the dataset it is made from" in capsys.readouterr().err
    assert _snapshot(tmp_path / "source") == before


def test_an_interrupted_demo_build_is_finished_not_refused(tmp_path):
    """The guard against building over a user's dataset knows a build of its own: one killed
    after its manifest but before its spec file is completed by the next run."""
    from ffr.data.builtin import BUILTIN_DATASETS

    demo = BUILTIN_DATASETS.get("digits")
    built = demo.build(tmp_path / "d", {"per_digit": 6})
    spec = next((tmp_path / "d").glob("*_spec.json"))
    spec.unlink()
    (tmp_path / "d" / (spec.name + ".building")).touch()  # as the build leaves it until its last file
    assert len(demo.build(tmp_path / "d", {"per_digit": 6})) == len(built) and spec.is_file()
    assert not (tmp_path / "d" / (spec.name + ".building")).exists()


# -------------------------------------------------------------------- images read as they look
def test_a_16_bit_png_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    from ffr.data.loading import decode_image

    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")  # what PIL makes of it: 16-bit grey
    pixels = decode_image(tmp_path / "deep.png", 64)
    assert pixels.shape == (64, 64, 3) and pixels[:, 0].max() == 0 and pixels[:, -1].min() == 255
    assert abs(float(pixels.mean()) - 127.5) < 2  # a ramp, not 99% white


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    from ffr.data.loading import decode_image

    im = Image.new("RGB", (4, 2), (0, 0, 0))
    im.putpixel((3, 0), (255, 255, 255))  # the top-right corner white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    im.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    with Image.open(tmp_path / "rot.jpg") as raw:
        assert raw.size == (4, 2)
    upright = decode_image(tmp_path / "rot.jpg", 4)
    assert upright[3, 3].mean() > 128 > upright[0, 3].mean()  # corner moved to bottom-right, as a viewer shows it


def test_a_decompression_bomb_is_a_named_refusal_in_validate(tmp_path, capsys, monkeypatch):
    from PIL import Image

    ds = _dataset(tmp_path / "ds")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # our 8 × 8 images then count as bombs
    assert main(["data", "validate", str(ds)]) == 2
    err = capsys.readouterr().err
    assert "ffr: error:" in err and "DecompressionBombError" in err and "manifest.csv" in err


# ------------------------------------------------------------- checkpoints and the stage cache
def _train(tmp_path: Path, out: Path, *extra) -> None:
    prep = tmp_path / "prep"
    if not prep.is_dir():
        assert main(["prepare", "--set", f"data.dataset={_dataset(tmp_path / 'ds')}", "--bias-rate", "0.8",
                     "--set", "data.min_val_per_group=1", "--out", str(prep)]) == 0
    assert main(["train", "--train", str(prep), "--val", str(prep), *TINY_TRAIN, *extra, "--out", str(out)]) == 0


def test_two_identical_trainings_write_identical_checkpoint_bytes(tmp_path, monkeypatch):
    """The temporary file's name (per process) must not end up inside the checkpoint: DVC would
    see a changed output on every rerun."""
    import ffr.paths

    _train(tmp_path, tmp_path / "a" / "model.pt")
    monkeypatch.setattr(ffr.paths.os, "getpid", lambda: 424242)  # as another process would be
    _train(tmp_path, tmp_path / "b" / "model.pt")
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()


def _cached_stage(tmp_path: Path, seed: int):
    """A stage trained into a stage cache: (its request's spec, its result)."""
    from ffr.config import load_config
    from ffr.data.manifest import Manifest
    from ffr.grid import Cell
    from ffr.train.stage import StageSpec, run_stage

    cfg = load_config(None, ["backbone=tiny_cnn", "data.image_size=8", "train.epochs=2", "train.min_steps=0",
                             "train.patience=0", "train.batch_size=8", "device=cpu"])
    if not (tmp_path / "prep").is_dir():
        _train(tmp_path, tmp_path / "warm.pt")  # the prepared split
    m = Manifest.load(tmp_path / "prep")
    request = Cell("none", 0.8, seed, {}, cfg).requests()["train"]
    spec = StageSpec(request, m.select(split="train"), m.select(split="val"))
    return spec, run_stage(spec, cache_dir=tmp_path / "stages")


def test_a_damaged_stage_cache_entry_is_never_used(tmp_path, capsys):
    from ffr.paths import file_digest
    from ffr.train.stage import run_stage

    spec, first = _cached_stage(tmp_path, seed=0)
    ckpt = first.checkpoint
    original = ckpt.read_bytes()
    assert json.loads(Path(f"{ckpt}.json").read_text())["sha256"] == file_digest(ckpt)  # recorded with the stage
    assert not first.reused and run_stage(spec, cache_dir=tmp_path / "stages").reused
    data = bytearray(original)
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights
    ckpt.write_bytes(bytes(data))
    again = run_stage(spec, cache_dir=tmp_path / "stages")
    err = capsys.readouterr().err
    assert not again.reused and "not those recorded when it was trained" in err and str(ckpt.parent) in err
    assert again.val == first.val and ckpt.read_bytes() == original  # trained again: the same model
    ckpt.write_bytes(original[: len(original) // 2])  # a half-written file
    assert not run_stage(spec, cache_dir=tmp_path / "stages").reused
    assert "Traceback" not in capsys.readouterr().err
    assert run_stage(spec, cache_dir=tmp_path / "stages").reused  # the entry was made whole again


def test_stage_cache_entries_swapped_under_each_others_keys_are_never_used(tmp_path, capsys):
    import shutil

    from ffr.train.stage import run_stage

    spec0, r0 = _cached_stage(tmp_path, seed=0)
    spec1, r1 = _cached_stage(tmp_path, seed=1)
    a, b = r0.checkpoint.parent, r1.checkpoint.parent
    shutil.move(a, a.with_name("swap"))
    shutil.move(b, a)
    shutil.move(a.with_name("swap"), b)
    again0 = run_stage(spec0, cache_dir=tmp_path / "stages")
    again1 = run_stage(spec1, cache_dir=tmp_path / "stages")
    assert not again0.reused and not again1.reused
    assert "an entry moved or copied under another key" in capsys.readouterr().err
    assert again0.val == r0.val and again1.val == r1.val


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder on a read-only file system (a tmpfs mounted read-only): permissions alone do not
    stop root, a read-only mount does. Skipped where mounting is not allowed."""
    import os
    import subprocess

    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "none", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and mount (a read-only tmpfs): root ignores file permissions")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_a_read_only_stage_cache_on_a_miss_is_a_named_refusal_keeping_what_was_made(tmp_path, read_only_folder,
                                                                                   capsys):
    out = tmp_path / "out"
    code = main(["compare", "--out", str(out), "--stage-cache", str(read_only_folder), "--quiet",
                 "--set", "strategies=[none]", "--set", "bias_rates=[0.95]", "--set", "seeds=[0]",
                 "--set", "backbone=tiny_cnn", "--set", "data.demo={per_digit: 30}", "--set", "train.epochs=1",
                 "--set", "train.min_steps=0", "--set", "train.num_threads=1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"ffr: error: {read_only_folder}/") and "the file system is read-only" in err
    assert (out / "data" / "manifest.csv").is_file() and (out / "config.yaml").is_file()  # what was made is kept


# ----------------------------------------------------------------------------- credentials
@pytest.mark.parametrize("kind", ["token", "cookie", "sa_token_path"])
def test_a_credential_with_a_line_break_is_refused_without_showing_it(kind, tmp_path):
    from ffr.integrations.kubeflow.pipelines.cluster import Credentials, PipelineError

    secret = "s3cret-part-one\ns3cret-part-two"
    value = secret
    if kind == "sa_token_path":
        (tmp_path / "token").write_text(secret + "\n")
        value = str(tmp_path / "token")
    with pytest.raises(PipelineError) as e:
        Credentials(**{kind: value}, source="--x").headers()
    assert "line break" in str(e.value) and "s3cret" not in str(e.value)


def test_redaction_also_hides_a_secret_as_a_repr_escapes_it():
    from ffr.integrations.kubeflow.pipelines.cluster import Credentials

    token = "t\u00f6ken-0123"
    creds = Credentials(token=token)
    said = f"Invalid header value {('Bearer ' + token).encode()!r}"  # http.client's words
    assert creds.redact(said) == "Invalid header value b'Bearer ***'"


def test_a_run_hands_its_steps_a_tracking_uri_without_the_password():
    from ffr.integrations.kubeflow.pipelines.run import _without_password

    env: dict = {}
    params, mlflow = _without_password({"mlflow_uri": "http://alice:s3cret@host:5000/base"}, None, env)
    assert params["mlflow_uri"] == "http://host:5000/base" and mlflow is None
    assert env == {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "s3cret"}
    _, mlflow = _without_password({}, "https://bob:p%40ss@mlflow.example.com", env)
    assert mlflow == "https://mlflow.example.com" and env["MLFLOW_TRACKING_PASSWORD"] == "p@ss"
    assert _without_password({}, "local", {}) == ({}, "local")


def test_the_run_log_never_holds_a_password(tmp_path):
    from ffr.integrations.kubeflow.pipelines.run import _Tee

    with open(tmp_path / "run.log", "w") as log:
        tee = _Tee(log, None)
        tee.write("connecting to http://alice:s3cret@127.0.0.1:5000/api\n")
    assert "s3cret" not in (tmp_path / "run.log").read_text() and "alice:***@" in (tmp_path / "run.log").read_text()


# ---------------------------------------------------------------- a Kubeflow API that misbehaves
class _OddKFP:
    """A server whose health check answers as Kubeflow's does, and whose other endpoints ``stall``
    (accept, never answer) or answer ``garbage`` (JSON that is not what the API returns)."""

    def __init__(self, mode: str):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        release = self.release = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, body) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _any(self):
                if "healthz" in self.path:
                    return self._answer({"commit_sha": "x", "tag_name": "2.4.0", "multi_user": False})
                if mode == "stall":
                    release.wait(120)
                    return None
                return self._answer({"pipelines": "ab"} if "pipelines" in self.path else {"garbage": True})

            do_GET = do_POST = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("argv", [["submit"], ["upload"], ["schedule", "--cron", "0 0 3 * * *"]],
                         ids=["submit", "upload", "schedule"])
def test_a_kubeflow_api_that_stalls_is_an_exit_3_not_a_hang(argv, monkeypatch, capsys):
    import time

    pytest.importorskip("kfp")
    monkeypatch.setenv("FFR_KFP_TIMEOUT", "1")
    api = _OddKFP("stall")
    try:
        t0 = time.monotonic()
        assert main([*argv, "--host", api.url]) == 3
        assert time.monotonic() - t0 < 30  # seconds, not forever (the requests' timeout is 1 s here)
    finally:
        api.close()
    err = capsys.readouterr().err
    assert err.startswith("ffr: error: cannot reach Kubeflow Pipelines") and "timed out" in err.lower()


@pytest.mark.parametrize("argv, what", [(["submit"], "a run id"), (["schedule", "--cron", "0 0 3 * * *"],
                                                                    "a recurring run id"),
                                        (["upload"], "a pipeline id")], ids=["submit", "schedule", "upload"])
def test_a_kubeflow_api_answering_garbage_is_never_a_success(argv, what, capsys):
    pytest.importorskip("kfp")
    api = _OddKFP("garbage")
    try:
        code = main([*argv, "--host", api.url])
    finally:
        api.close()
    out, err = capsys.readouterr()
    assert code == 3 and what in err and "Traceback" not in err
    assert "created on" not in out and "new version" not in out  # no success line (kfp's own links may name None)


def test_a_cron_that_never_fires_is_refused():
    from ffr.integrations.kubeflow.pipelines.cluster import validate_cron
    from ffr.integrations.kubeflow.pipelines.run import PipelineError

    for never in ("0 0 3 31 2 *", "0 0 3 30 FEB ?", "0 0 3 31 4,6,9,11 *"):
        with pytest.raises(PipelineError, match="never occurs"):
            validate_cron(never)
    for sometimes in ("0 0 3 29 2 *", "0 0 3 31 1-3 *", "0 0 3 31 2 MON", "0 0 3 1/5 * *"):
        assert validate_cron(sometimes) == sometimes


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path, capsys):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))
    assert len(bomb) < 1024  # 1 KB that would expand to 9**9 values
    (tmp_path / "bomb.yaml").write_text(bomb)
    assert main(["compare", "--config", str(tmp_path / "bomb.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "bomb.yaml" in err and "expands to more than" in err
    assert not (tmp_path / "out").exists()


def test_an_s3_endpoint_that_never_answers_is_an_exit_3_in_seconds(tmp_path, monkeypatch, capsys):
    """It accepts the connection and says nothing: every request times out, botocore retries it,
    and the command ends naming the endpoint and the settings that bound the wait."""
    import socket
    import time

    pytest.importorskip("s3fs")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # the kernel accepts; nobody reads or answers
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    for name, value in {"FFR_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                        "FFR_S3_TIMEOUT": "1", "FFR_S3_RETRIES": "2", "FFR_S3_CACHE": str(tmp_path / "c")}.items():
        monkeypatch.setenv(name, value)
    try:
        t0 = time.monotonic()
        assert main(["data", "validate", "s3://bucket/ds"]) == 3
        assert time.monotonic() - t0 < 60
    finally:
        listener.close()
    err = capsys.readouterr().err
    assert err.startswith("ffr: error:") and "did not answer within 1 s" in err and endpoint in err


@pytest.mark.parametrize("name, value", [("FFR_S3_RETRIES", "abc"), ("FFR_S3_TIMEOUT", "-3"),
                                         ("FFR_KFP_TIMEOUT", "soon")])
def test_a_bad_service_setting_is_named(name, value, monkeypatch, capsys):
    monkeypatch.setenv(name, value)
    monkeypatch.setenv("FFR_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    argv = ["submit", "--host", "http://127.0.0.1:9"] if name.startswith("FFR_KFP") else ["data", "validate", "s3://b/d"]
    if name.startswith("FFR_KFP"):
        from ffr.integrations.kubeflow.pipelines.cluster import request_timeout

        with pytest.raises(ValueError, match=f"\\${name}: expected"):
            request_timeout()
        return
    assert main(argv) == 2
    assert f"${name}: expected" in capsys.readouterr().err


# ------------------------------------------------------------------- accepted, failing later: no more
def test_a_sweep_refuses_a_later_datasets_missing_folder_before_the_first_grid(tmp_path, capsys):
    import yaml

    ds = _dataset(tmp_path / "ds")
    cfg = {"datasets": {"first": {"data.dataset": str(ds)}, "second": {"data.dataset": str(tmp_path / "typo")}},
           "strategies": ["none"], "seeds": [0]}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["sweep", "--config", str(tmp_path / "sweep.yaml"), "--out", str(tmp_path / "sw")]) == 2
    err = capsys.readouterr().err
    assert "datasets.second" in err and "typo" in err and "no such dataset folder" in err
    assert not (tmp_path / "sw" / "first").exists()  # nothing of the first grid was trained


def test_the_smallest_digits_benchmark_has_every_split(tmp_path):
    from ffr.data.builtin import BUILTIN_DATASETS

    m = BUILTIN_DATASETS.get("digits").build(tmp_path / "d", {"per_digit": 3})
    assert {s: len(m.select(split=s)) for s in ("train", "val", "test")} == {"train": 10, "val": 10, "test": 10}


@pytest.mark.parametrize("argv, message", [
    (["prepare", "--demo-per-digit", "-4", "--bias-rate", "0.9"], "demo_per_digit -4: expected 0"),
    (["compile", "ffr", "--image", "my image:1"], "--image 'my image:1': not an image reference"),
    (["compile", "ffr", "--toleration", ":::"], "--toleration ':::': expected KEY"),
    (["compile", "ffr", "--node-selector", "a b=c"], "--node-selector 'a b=c': expected LABEL=VALUE"),
    (["compile", "ffr", "--shm-size", "lots"], "--shm-size 'lots': expected a size"),
], ids=["negative-per-digit", "image-with-space", "toleration", "node-selector", "shm-size"])
def test_cluster_and_demo_settings_are_checked_before_anything_is_built(argv, message, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ffr: error:") and message in err and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- what the file system refuses
def test_a_file_of_another_kind_as_a_model_is_a_named_refusal(tmp_path, capsys):
    ds = _dataset(tmp_path / "ds")
    for model in ("/etc/passwd", tmp_path / "junk.pt"):
        if model != "/etc/passwd":
            model.write_bytes(bytes(range(256)) * 12)
        assert main(["evaluate", "--model", str(model), "--data", str(ds), "--out", str(tmp_path / "m.json")]) == 2
        err = capsys.readouterr().err
        assert f"{model} is not a readable ffr checkpoint" in err and "Traceback" not in err


def test_an_out_through_a_dangling_link_or_with_a_too_long_name_is_named(tmp_path, capsys):
    ds = _dataset(tmp_path / "ds")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert main(["data", "split", str(ds), "--bias-rate", "0.9", "--out", str(tmp_path / "dangling")]) == 2
    assert "is a link to" in capsys.readouterr().err
    assert main(["data", "split", str(ds), "--bias-rate", "0.9", "--out", str(tmp_path / ("a" * 300))]) == 2
    assert "longer than the file system allows" in capsys.readouterr().err


def test_a_full_disk_is_a_named_refusal_that_keeps_what_was_made(tmp_path, monkeypatch, capsys):
    import errno

    import ffr.data.manifest

    ds = _dataset(tmp_path / "ds")
    assert main(["data", "split", str(ds), "--bias-rate", "0.9", "--out", str(tmp_path / "s")]) == 0
    before = _snapshot(tmp_path / "s")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "s" / "manifest.csv"))

    monkeypatch.setattr(ffr.data.manifest.os, "replace", full)
    assert main(["data", "split", str(ds), "--bias-rate", "0.8", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "manifest.csv: no space left on the device" in err and "Traceback" not in err
    assert _snapshot(tmp_path / "s") == before  # the earlier split is whole; no temporary file is left


def test_temporary_files_of_a_killed_process_are_cleaned_up_by_the_next_write(tmp_path):
    import subprocess
    import sys

    from ffr.paths import temp_beside, write_json

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    mine = temp_beside(tmp_path / "x.json")
    left = mine.with_name(mine.name.replace(f".{__import__('os').getpid()}.", f".{dead_pid}."))
    left.write_text("half")  # what a killed writer leaves
    other_host = tmp_path / f"x.json.another-host.{dead_pid}.tmp"
    other_host.write_text("half")  # a writer on another machine sharing the folder: not ours to judge
    write_json(tmp_path / "x.json", {"a": 1})
    assert not left.exists() and other_host.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["x.json", other_host.name])


@pytest.mark.parametrize("bad, message", [(b"\xff", "not UTF-8 text (line 3, byte {at} of the file"),
                                          (b"\x00", "line 3: a NUL byte (byte {at} of the file)")],
                         ids=["not-utf8", "nul"])
def test_a_damaged_manifest_byte_is_named_where_it_is(bad, message, tmp_path, capsys):
    ds = _dataset(tmp_path / "ds")
    raw = (ds / "manifest.csv").read_bytes()
    at = raw.index(b"\n", raw.index(b"\n") + 1) + 4  # inside the second row's path (line 3)
    (ds / "manifest.csv").write_bytes(raw[:at] + bad + raw[at + 1:])
    assert main(["data", "validate", str(ds)]) == 2
    err = capsys.readouterr().err
    assert "manifest.csv" in err and message.format(at=at) in err


@pytest.mark.parametrize("extra, message", [(["--num-shards", "0"], "--num-shards: 0 must be at least 1"),
                                            (["--shard", "3", "--num-shards", "2"], "--shard 3: must be in [0, 2)"),
                                            (["--option", "bogus=1"], "unknown option(s)")],
                         ids=["no-shards", "shard-past-the-end", "bad-option"])
def test_a_refused_synthesis_leaves_no_folder_behind(extra, message, tmp_path, capsys):
    ds = _dataset(tmp_path / "ds")
    out = tmp_path / "synthetic"
    assert main(["synthesize", "--card", str(ds / "card.json"), "--per-group", "2", *extra, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_a_global_sweep_problem_is_listed_once_and_one_every_dataset_overrides_is_none(tmp_path, capsys):
    import yaml

    def sweep(datasets):
        (tmp_path / "s.yaml").write_text(yaml.safe_dump({"datasets": datasets, "strategies": ["none"], "seeds": [0],
                                                         "train": {"lr": -1}}))
        return main(["sweep", "--config", str(tmp_path / "s.yaml"), "--dry-run", "--out", str(tmp_path / "sw")])

    assert sweep({"a": {}, "b": {}, "c": {"train.epochs": 0}}) == 2
    err = capsys.readouterr().err
    assert err.count("lr: -1.0 must be positive") == 1 and "datasets.c.train.epochs: 0 must be at least 1" in err
    assert sweep({"a": {"train.lr": 0.1}, "b": {"train.lr": 0.01}}) == 0  # every dataset sets its own


def test_synthesis_for_a_dataset_with_no_train_rows_says_so(tmp_path, capsys):
    from tests.test_bad_input import GROUPS

    ds = _dataset(tmp_path / "ds", {k: n for k, n in GROUPS.items() if k[0] != "train"})
    assert main(["synthesize", "--real", str(ds), "--strategy", "ffr", "--out", str(tmp_path / "syn")]) == 2
    err = capsys.readouterr().err
    assert f"--real {ds}: nothing to render" in err and "no train rows" in err and not (tmp_path / "syn").exists()


def test_a_full_disk_while_saving_a_model_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    """`ffr train` rerun into the same checkpoint when the disk fills as it saves: exit 2 naming the
    file, the previous model, history and summary whole, no temporary file left."""
    import errno

    import ffr.train.loop

    out = tmp_path / "m" / "model.pt"
    _train(tmp_path, out)
    before = _snapshot(out.parent)
    real_replace = ffr.train.loop.os.replace

    def full(src, dst):
        if str(dst).endswith("model.pt"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(ffr.train.loop.os, "replace", full)
    prep = tmp_path / "prep"
    assert main(["train", "--train", str(prep), "--val", str(prep), *TINY_TRAIN, "--seed", "1",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out}: no space left on the device" in err and "Traceback" not in err
    assert _snapshot(out.parent) == before


def test_a_full_disk_during_synthesis_is_named_and_the_rerun_finishes_it(tmp_path, monkeypatch, capsys):
    """ENOSPC part way through rendering: exit 2 naming the file and the cause, no traceback, the
    images already written kept and no half-written one left; a rerun with space renders the rest
    and reuses what was there."""
    import errno

    from PIL import Image

    ds = _dataset(tmp_path / "ds")
    out = tmp_path / "synthetic"
    real_save, saved = Image.Image.save, []

    def save(self, fp, *args, **kwargs):
        if len(saved) == 3:  # the fourth image: the disk is full after a few bytes
            Path(fp).write_bytes(b"\x89PNG partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(fp))
        saved.append(fp)
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    argv = ["synthesize", "--card", str(ds / "card.json"), "--per-group", "2", "--quiet", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "ffr: error:" in err and "no space left on the device" in err and "Traceback" not in err
    kept = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*.png")}
    assert len(kept) == 3 and not list(out.rglob("*.tmp"))
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert main(argv) == 0
    after = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*.png")}
    assert all(after[name] == data for name, data in kept.items()) and len(after) >= 8  # 4 groups × 2


def test_a_full_disk_when_a_grid_writes_its_tables_keeps_every_cell(tmp_path, monkeypatch, capsys):
    """ENOSPC as `ffr compare` writes results.json after its cells trained: exit 2 naming the
    file, no traceback, every cell's record kept; the rerun trains nothing and writes the tables."""
    import errno

    import ffr.paths
    from ffr.config import save_config
    from test_concurrency import folder_dataset, tiny

    cfg = tmp_path / "grid.yaml"
    save_config(tiny(folder_dataset(tmp_path / "ds")), cfg)
    out = tmp_path / "out"
    real_replace = ffr.paths.os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == "results.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(ffr.paths.os, "replace", replace)
    argv = ["compare", "--config", str(cfg), "--out", str(out), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "results.json: no space left on the device" in err and "Traceback" not in err
    cells = {p: p.read_bytes() for p in out.glob("cells/*/record.json")}
    assert cells and not (out / "results.json").exists() and not list(out.glob("results.json*"))
    monkeypatch.setattr(ffr.paths.os, "replace", real_replace)
    assert main(argv) == 0
    assert (out / "results.json").is_file() and {p: p.read_bytes() for p in out.glob("cells/*/record.json")} == cells
