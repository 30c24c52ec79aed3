"""The real diffusers generation path on CPU, with a tiny random Stable Diffusion pipeline built and
saved here, then loaded from its directory (no weights are downloaded)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import torch  # noqa: E402

from ffr.data.manifest import DatasetCard, Manifest  # noqa: E402
from ffr.synthesis import SynthesisError, create_backend, image_seed, run_synthesis  # noqa: E402
from ffr.synthesis.generation import ImageRequest, make_request, read_record  # noqa: E402
from ffr.synthesis.fingerprint import fingerprint_dir  # noqa: E402
from ffr.synthesis.prompts import PromptSet, PromptSetError  # noqa: E402
from ffr.synthesis.tiny import build_tiny_clip, build_tiny_pipeline  # noqa: E402

pytestmark = pytest.mark.slow
SIZE = {"steps": 2, "height": 32, "width": 32}
COUNTS = 8  # images per group: 4 blocks of BATCH, one per shard of 4
BATCH = 2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Two threads on a shared two-core machine spend most of their time waiting for each other.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    return build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def wb_card():
    return DatasetCard(name="waterbirds", classes=["landbird", "waterbird"], bias_values=["land", "water"])


@pytest.fixture(scope="module")
def backend(tiny_sd, wb_card):
    return create_backend("diffusers", wb_card, model=str(tiny_sd), prompts="waterbirds", **SIZE)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, backend, wb_card):
    """An uninterrupted, unsharded run."""
    out = tmp_path_factory.mktemp("reference")
    return run_synthesis(backend, wb_card, {g: COUNTS for g in wb_card.groups}, out, base_seed=11, batch_size=BATCH)


def files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_backend_loads_the_directory_with_the_default_sampler(backend, tiny_sd):
    assert type(backend.pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert backend.pipe.scheduler.config.algorithm_type == "dpmsolver++"
    assert backend.pipe.unet.dtype == torch.float32  # fp32 on CPU
    assert backend.generator == f"diffusers:tiny-sd@{fingerprint_dir(tiny_sd)}"
    assert backend.settings["steps"] == 2 and backend.settings["guidance_scale"] == 7.5


def test_per_image_generators_make_images_independent_of_their_batch(backend):
    reqs = [make_request(backend, 0, "landbird", "water", i) for i in range(5)]
    px = lambda im: np.asarray(im).astype(int)  # noqa: E731
    a = backend.generate(reqs[0:3])
    b = backend.generate([reqs[3], reqs[1], reqs[4]])  # same slot, other neighbours: the same bytes
    assert np.array_equal(px(a[1]), px(b[1]))
    single = px(backend.generate([reqs[1]])[0])  # batch of one: the same image up to float rounding
    assert np.abs(single - px(a[1])).mean() < 0.5
    assert np.abs(px(a[0]) - px(a[1])).mean() > 10  # while different seeds give different images
    assert a[0].size == (32, 32)


def test_images_written_with_seeds_prompts_and_generator(reference, backend, wb_card):
    m = reference.manifest
    assert len(m) == 4 * COUNTS and m.frame["generator"].eq(backend.generator).all()
    ps = PromptSet.load("waterbirds")
    for row in m.frame.itertuples():
        i = int(row.path[-10:-4])
        assert row.seed == image_seed(11, row.label, row.bias, i)
        assert row.prompt == ps.prompt(row.label, row.bias, row.seed)
        rec = read_record(m.root / row.path)
        assert rec["settings"]["steps"] == 2 and rec["seed"] == row.seed
    assert Manifest.load(m.save(m.root)).group_counts() == {g: COUNTS for g in wb_card.groups}


def test_one_and_four_shards_give_identical_files(reference, backend, wb_card, tmp_path):
    for s in range(4):
        run_synthesis(backend, wb_card, {g: COUNTS for g in wb_card.groups}, tmp_path, base_seed=11,
                      batch_size=BATCH, shard=s, num_shards=4)
    assert files(tmp_path) == files(reference.manifest.root)


def test_a_killed_run_completes_with_the_same_files(reference, backend, wb_card, tmp_path):
    class Killed(Exception):
        pass

    class Dies:
        generator, settings = backend.generator, backend.settings
        prompt_for = staticmethod(backend.prompt_for)

        def __init__(self):
            self.calls = 0

        def generate(self, requests):
            self.calls += 1
            if self.calls == 5:
                raise Killed
            return backend.generate(requests)

    counts = {g: COUNTS for g in wb_card.groups}
    with pytest.raises(Killed):
        run_synthesis(Dies(), wb_card, counts, tmp_path, base_seed=11, batch_size=BATCH)
    done = sorted(tmp_path.rglob("*.png"))
    assert len(done) == 4 * BATCH
    done[0].write_bytes(done[0].read_bytes()[:100])
    (tmp_path / "waterbird_water").mkdir(exist_ok=True)
    (tmp_path / "waterbird_water" / "000002.png.tmp").write_bytes(b"\x89PNG partial")
    run = run_synthesis(backend, wb_card, counts, tmp_path, base_seed=11, batch_size=BATCH)
    assert run.info["resumed"] == 4 * BATCH - 1 and run.info["generated"] == 4 * COUNTS - run.info["resumed"]
    assert files(tmp_path) == files(reference.manifest.root)
    assert not list(tmp_path.rglob("*.tmp"))


def test_cli_renders_with_the_diffusers_backend(tiny_sd, wb_card, tmp_path):
    from ffr.cli import main

    wb_card.save(tmp_path / "card.json")
    args = ["synthesize", "--card", str(tmp_path / "card.json"), "--backend", "diffusers", "--model", str(tiny_sd),
            "--prompts", "waterbirds", "--option", "steps=2", "--option", "height=32", "--option", "width=32",
            "--option", "scheduler=ddim", "--count", "waterbird_land=2", "--filter", "grayscale", "--quiet",
            "--out", str(tmp_path / "out")]
    assert main(args) == 0
    m = Manifest.load(tmp_path / "out")
    assert len(m) == 2 and m.frame["prompt"].str.startswith("a photo of a ").all()
    info = json.loads((tmp_path / "out" / "synthesis.json").read_text())
    assert info["settings"]["scheduler"] == "ddim" and info["backend_options"]["steps"] == 2
    assert (tmp_path / "out" / "contact_sheet.png").is_file()


def test_bad_prompt_file_and_scheduler_are_rejected(tiny_sd, wb_card, tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("groups:\n  landbird:\n    land: ['a {bird}']\n    water: ['a bird']\n")
    with pytest.raises(PromptSetError, match=r"group landbird_land, template 1 'a \{bird\}': slot 'bird'"):
        create_backend("diffusers", wb_card, model=str(tiny_sd), prompts=str(bad))
    bad.write_text("groups:\n  landbird:\n    land: ['a bird']\n    water: ['a bird']\n")
    with pytest.raises(PromptSetError, match="no prompts for group waterbird_land"):
        create_backend("diffusers", wb_card, model=str(tiny_sd), prompts=str(bad))
    with pytest.raises(ValueError, match="unknown scheduler 'warp'"):
        create_backend("diffusers", wb_card, model=str(tiny_sd), prompts="waterbirds", scheduler="warp", **SIZE)


def test_clip_filter_rejects_low_scores_and_records_them(backend, wb_card, tmp_path):
    from ffr.synthesis.filters import make_filter

    clip = make_filter(f"clip:model={build_tiny_clip(tmp_path / 'clip')}")
    reqs = [make_request(backend, 11, "landbird", "land", i) for i in range(6)]
    scores = clip.scores(backend.generate(reqs), [r.prompt for r in reqs])
    assert scores.shape == (6,) and np.all(np.abs(scores) <= 100)
    threshold = float(np.median(scores))
    f = make_filter({"name": "clip", "model": str(tmp_path / "clip"), "min_score": threshold})
    run = run_synthesis(backend, wb_card, {("landbird", "land"): 6}, tmp_path / "out", base_seed=11, batch_size=3,
                        filters=[f], max_attempts=50)
    rejected0 = {r["index"] for r in run.rejections if r["attempt"] == 0}
    assert rejected0 == {i for i, s in enumerate(scores) if s < threshold}
    assert all(r["reason"].startswith("clip: score") for r in run.rejections)
    for row in run.manifest.frame.itertuples():
        rec = read_record(run.manifest.root / row.path)
        req = ImageRequest(rec["label"], rec["bias"], rec["index"], rec["seed"], rec["prompt"], rec["attempt"])
        assert clip.scores(backend.generate([req]), [req.prompt])[0] >= threshold
    never = make_filter({"name": "clip", "model": str(tmp_path / "clip"), "min_score": 101})
    with pytest.raises(SynthesisError, match="group landbird_water: image 0 was rejected 2 times"):
        run_synthesis(backend, wb_card, {("landbird", "water"): 1}, tmp_path / "out2", filters=[never], max_attempts=2)


def test_model_from_s3_is_downloaded_once(tiny_sd, wb_card, tmp_path, monkeypatch):
    moto = pytest.importorskip("moto")
    pytest.importorskip("moto.server")
    import boto3

    from ffr.integrations import s3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # A moto server on 127.0.0.1, not moto.mock_aws(): s3fs talks to S3 through aiobotocore, which
    # an in-process botocore mock cannot answer.
    server = moto.server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv("FFR_S3_ENDPOINT_URL", f"http://{host}:{port}")
    try:
        client = boto3.client("s3", endpoint_url=f"http://{host}:{port}")
        client.create_bucket(Bucket="models")
        for f in tiny_sd.rglob("*"):
            if f.is_file():
                client.upload_file(str(f), "models", f"sd/tiny/{f.relative_to(tiny_sd).as_posix()}")
        client.put_object(Bucket="models", Key="sd/tiny-other/x.json", Body=b"{}")  # a sibling prefix, not ours
        b = create_backend("diffusers", wb_card, model="s3://models/sd/tiny", prompts="waterbirds",
                           cache_dir=str(tmp_path), **SIZE)
        assert b.generator == f"diffusers:s3://models/sd/tiny@{fingerprint_dir(tiny_sd)}"
        with pytest.raises(FileNotFoundError, match="no objects under s3://models/nothing"):
            s3.download_prefix("s3://models/nothing", tmp_path / "x")
        calls = []
        monkeypatch.setattr(s3, "download_prefix", lambda *a: calls.append(a))
        create_backend("diffusers", wb_card, model="s3://models/sd/tiny", prompts="waterbirds",
                       cache_dir=str(tmp_path), **SIZE)
        assert calls == []  # the cached copy is used
    finally:
        server.stop()
