"""The generation loop (seeds, shards, filters and retries, resume), prompt sets, filters, the
folder backend, collect and the CLI — with a fake backend whose images are a function of the seed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ffr.data.manifest import DatasetCard, Manifest
from ffr.synthesis import SynthesisError, image_seed, run_synthesis
from ffr.synthesis.generation import read_record
from ffr.synthesis.filters import FILTERS, GrayscaleFilter, make_filter
from ffr.synthesis.records import (CONTACT_SHEET_FILE, REJECTIONS_FILE, collect, read_rejections, save_run,
                                   synthesize_dataset)
from ffr.synthesis.prompts import PromptSet, PromptSetError, shipped_prompt_sets


class FakeBackend:
    """Random-noise images drawn from the request seed; gray when ``gray(request)`` says so."""

    generator = "fake-v1"

    def __init__(self, gray=lambda r: False, size=8):
        self.gray, self.size, self.calls = gray, size, []

    def prompt_for(self, r):
        return f"{r.label} on {r.bias} #{r.seed % 97}"

    def generate(self, requests):
        self.calls.append(len(requests))
        out = []
        for r in requests:
            a = np.random.default_rng(r.seed).integers(0, 256, (self.size, self.size, 3), dtype=np.uint8)
            out.append(Image.fromarray(np.repeat(a[..., :1], 3, axis=-1) if self.gray(r) else a))
        return out


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))
            if p.parent != root and "shards" not in p.parts}


def test_image_seed_attempt_zero_keeps_the_original_derivation():
    legacy = int.from_bytes(hashlib.sha256(b"7|cat|indoor|3").digest()[:8], "little") & ((1 << 63) - 1)
    assert image_seed(7, "cat", "indoor", 3) == image_seed(7, "cat", "indoor", 3, attempt=0) == legacy
    seeds = {image_seed(7, "cat", "indoor", 3, a) for a in range(5)} | {image_seed(7, "cat", "indoor", 4)}
    assert len(seeds) == 6


def odd_gray(r):  # rejects a deterministic ~half of all attempts
    return r.seed % 2 == 1


def test_shards_filters_and_retries_give_the_same_files(tmp_path, card):
    counts = {g: 7 for g in card.groups}
    one = run_synthesis(FakeBackend(odd_gray), card, counts, tmp_path / "one", base_seed=3, batch_size=4,
                        filters=["grayscale"], max_attempts=30)
    assert len(one.manifest) == 28 and one.rejections
    for r in one.rejections:
        assert r["seed"] == image_seed(3, r["label"], r["bias"], r["index"], r["attempt"])
        assert r["reason"].startswith("grayscale")
    for rec in (read_record(tmp_path / "one" / p) for p in one.manifest.frame["path"]):
        assert rec["seed"] == image_seed(3, rec["label"], rec["bias"], rec["index"], rec["attempt"])
        assert [x["attempt"] for x in rec["rejected"]] == list(range(rec["attempt"]))
    shard_rejections = []
    for s in range(3):
        run = run_synthesis(FakeBackend(odd_gray), card, counts, tmp_path / "three", base_seed=3, batch_size=2,
                            shard=s, num_shards=3, filters=["grayscale"], max_attempts=30)
        assert set(run.manifest.frame["path"].str[-10:-4].astype(int) // 2 % 3) == {s}  # blocks of batch_size
        shard_rejections += run.rejections
    assert files(tmp_path / "one") == files(tmp_path / "three")
    key = lambda r: (r["group"], r["index"], r["attempt"])  # noqa: E731
    assert sorted(shard_rejections, key=key) == sorted(one.rejections, key=key)


def test_attempt_cap_names_the_group(tmp_path, card):
    backend = FakeBackend(lambda r: r.label == "dog" and r.bias == "indoor")
    with pytest.raises(SynthesisError, match=r"group dog_indoor: image 0 was rejected 3 times"):
        run_synthesis(backend, card, {("cat", "indoor"): 2, ("dog", "indoor"): 2}, tmp_path, filters=["grayscale"],
                      max_attempts=3)
    assert (tmp_path / "cat_indoor" / "000001.png").is_file()  # what was accepted before is kept


def test_rerun_after_a_kill_verifies_and_completes(tmp_path, card):
    counts = {g: 5 for g in card.groups}
    run_synthesis(FakeBackend(odd_gray), card, counts, tmp_path / "ref", base_seed=1, filters=["grayscale"])
    out = tmp_path / "killed"

    class Killed(Exception):
        pass

    class DiesAfterTwoBatches(FakeBackend):
        def generate(self, requests):
            if len(self.calls) == 2:
                raise Killed
            return super().generate(requests)

    with pytest.raises(Killed):
        run_synthesis(DiesAfterTwoBatches(odd_gray), card, counts, out, base_seed=1, batch_size=3,
                      filters=["grayscale"])
    done = sorted(out.rglob("*.png"))
    assert 0 < len(done) < 20
    done[0].write_bytes(done[0].read_bytes()[:40])  # corrupted (truncated) file
    done[1].unlink()
    leftover = out / "dog_outdoor" / "000004.png.tmp"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"half a png")
    backend = FakeBackend(odd_gray)
    run = run_synthesis(backend, card, counts, out, base_seed=1, batch_size=3, filters=["grayscale"])
    assert files(out) == files(tmp_path / "ref")
    assert not leftover.exists()
    assert run.info["resumed"] == len(done) - 2
    assert sum(backend.calls) >= 20 - run.info["resumed"]
    ref = run_synthesis(FakeBackend(odd_gray), card, counts, tmp_path / "ref", base_seed=1, filters=["grayscale"])
    assert ref.info["generated"] == 0 and ref.rejections == run.rejections  # rejections survive in the PNGs


def test_rerun_refuses_to_mix_runs(tmp_path, card):
    run_synthesis(FakeBackend(), card, {("cat", "indoor"): 2}, tmp_path, base_seed=1)
    with pytest.raises(SynthesisError, match=r"(?s)another run.*expected for base seed 2"):
        run_synthesis(FakeBackend(), card, {("cat", "indoor"): 2}, tmp_path, base_seed=2)
    with pytest.raises(SynthesisError, match=r"filters"):
        run_synthesis(FakeBackend(), card, {("cat", "indoor"): 2}, tmp_path, base_seed=1, filters=["grayscale"])
    foreign = tmp_path / "cat_indoor" / "000001.png"
    Image.new("RGB", (8, 8), "red").save(foreign)  # somebody else's image: reported, never overwritten
    before = foreign.read_bytes()
    with pytest.raises(SynthesisError, match=r"000001.png: it decodes but carries no ffr record"):
        run_synthesis(FakeBackend(), card, {("cat", "indoor"): 2}, tmp_path, base_seed=1)
    assert foreign.read_bytes() == before and read_record(foreign) is None


def test_grayscale_filter_and_specs():
    rng = np.random.default_rng(0)
    colour = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    gray = colour.convert("L").convert("RGB")
    f = make_filter("grayscale:tolerance=4")
    assert isinstance(f, GrayscaleFilter) and f.tolerance == 4 and "tolerance=4" in f.spec
    reasons = f([colour, gray], [None, None])
    assert reasons[0] is None and reasons[1].startswith("grayscale: mean channel spread 0.00")
    assert make_filter({"name": "grayscale"}).tolerance == 3.0
    with pytest.raises(KeyError, match="known: clip, grayscale"):
        make_filter("sepia")
    assert "grayscale" in FILTERS and "clip" in FILTERS
    with pytest.raises(FileNotFoundError, match="local directory"):
        make_filter("clip:model=/nonexistent/clip")


# ------------------------------------------------------------------------------- prompt sets
CARDS = {
    "spuco_animals": [DatasetCard("spuco_birds", ["landbird", "waterbird"], ["land", "water"]),
                      DatasetCard("spuco_dogs", ["small_dog", "big_dog"], ["indoor", "outdoor"])],
    "celebahq": [DatasetCard("celebahq", ["not_smiling", "smiling"], ["female", "male"])],
    "utkface": [DatasetCard("utkface", ["female", "male"], ["young", "old"])],
    "waterbirds": [DatasetCard("waterbirds", ["landbird", "waterbird"], ["land", "water"])],
}


@pytest.mark.parametrize("name", shipped_prompt_sets())
def test_shipped_prompt_sets_validate_and_vary(name):
    ps = PromptSet.load(name)
    for card in CARDS[name]:
        ps.validate(card)
        for label, bias in card.groups:
            prompts = [ps.prompt(label, bias, image_seed(0, label, bias, i)) for i in range(40)]
            assert all("{" not in p and p.strip() for p in prompts)
            assert prompts == [ps.prompt(label, bias, image_seed(0, label, bias, i)) for i in range(40)]
            if name != "celebahq" or label == "not_smiling":
                assert len(set(prompts)) > 1


def test_paper_prompts_are_the_papers(tmp_path):
    spuco, celeb = PromptSet.load("spuco_animals"), PromptSet.load("celebahq")
    assert 10 <= len(spuco.groups[("big_dog", "indoor")].slots["indoor"]) <= 20
    assert 10 <= len(spuco.groups[("landbird", "land")].slots["land"]) <= 20
    assert spuco.prompt("landbird", "water", 5).startswith("a photo of ")
    assert celeb.prompt("smiling", "male", 1) == "a headshot of Male celebrity Smiling"
    assert celeb.prompt("not_smiling", "female", 1) in {"a headshot of Female celebrity with serious face",
                                                         "a headshot of Female celebrity with straight face"}


def write_yaml(tmp_path, text):
    p = tmp_path / "prompts.yaml"
    p.write_text(text)
    return p


def test_bad_prompt_files_are_rejected_naming_group_and_slot(tmp_path, card):
    p = write_yaml(tmp_path, """
groups:
  cat:
    indoor: ["a photo of a {breed} {place}"]
    outdoor:
      templates: ["a cat outdoors"]
      slots: {colour: [red]}
  dog:
    indoor: ["a {dog"]
""")
    with pytest.raises(PromptSetError) as e:
        PromptSet.load(p)
    msg = str(e.value)
    assert str(p) in msg
    assert "group cat_indoor, template 1 'a photo of a {breed} {place}': slot 'breed' is not filled" in msg
    assert "slot 'place' is not filled" in msg
    assert "group cat_outdoor: slot 'colour' is used by no template" in msg
    assert "group dog_indoor, template 1 'a {dog'" in msg

    ok = write_yaml(tmp_path, "slots: {place: [inside]}\ngroups:\n  cat:\n    indoor: ['a cat {place}']\n")
    with pytest.raises(PromptSetError, match=r"no prompts for group cat_outdoor .*of card 'toy'") as e:
        PromptSet.load(ok).validate(card)
    assert "dog_indoor" in str(e.value) and "dog_outdoor" in str(e.value)
    with pytest.raises(PromptSetError, match="not valid YAML"):
        PromptSet.load(write_yaml(tmp_path, "groups: [unclosed"))
    with pytest.raises(PromptSetError, match="slot 'place' has no values"):
        PromptSet.load(write_yaml(tmp_path, "slots: {place: []}\ngroups: {cat: {indoor: ['{place}']}}"))
    with pytest.raises(FileNotFoundError, match="shipped sets: celebahq"):
        PromptSet.load(tmp_path / "nope.yaml")


# ------------------------------------------------------------------------------- folder backend
def test_folder_backend_imports_groups_and_replaces_rejects(tmp_path, card):
    src = tmp_path / "elsewhere"
    for (label, bias) in card.groups:
        for i in range(6):
            d = src / f"{label}_{bias}"
            d.mkdir(parents=True, exist_ok=True)
            a = np.full((8, 8, 3), 10 * i, np.uint8)
            if i != 1:
                a[..., 0] = 200  # colour; file 1 of every group is gray
            Image.fromarray(a).save(d / f"img{i}.png")
    counts = {g: 3 for g in card.groups}
    run = synthesize_dataset("folder", card, counts, tmp_path / "out", {"source": str(src)}, filters=["grayscale"])[0]
    m = Manifest.load(tmp_path / "out")
    assert len(m) == 12 and m.frame["generator"].eq("folder:elsewhere").all() and m.frame["seed"].isna().all()
    # index 1 was gray: attempt 1 takes file 1 + 3 = img4.png
    got = np.asarray(Image.open(tmp_path / "out" / "cat_indoor" / "000001.png"))
    assert got[0, 0, 1] == 40 and {r["index"] for r in run.rejections} == {1}
    # a manifest source carries prompts, seeds and generators over
    sd = tmp_path / "out2"
    synthesize_dataset("folder", card, {("cat", "indoor"): 2}, sd, {"source": str(tmp_path / "out")})
    m2 = Manifest.load(sd)
    assert list(m2.frame["generator"]) == ["folder:elsewhere"] * 2
    with pytest.raises(SynthesisError, match=r"group cat_indoor: 7 requested, 6 found"):
        synthesize_dataset("folder", card, {("cat", "indoor"): 7}, tmp_path / "out3", {"source": str(src)})


# ------------------------------------------------------------------------------- collect + CLI
def test_collect_checks_shards_and_copies_from_other_roots(tmp_path, card):
    from ffr.data.manifest import ManifestError
    from ffr.synthesis import generation as synth_base

    counts = {g: 4 for g in card.groups}
    records = []
    for s in range(2):  # two "pods", each with its own output folder
        run = run_synthesis(FakeBackend(), card, counts, tmp_path / f"pod{s}", base_seed=5, shard=s, num_shards=2)
        records.append(save_run(run, tmp_path / f"pod{s}" / "record"))
    with pytest.raises(ManifestError, match=r"shard\(s\) \[1\] of 2 missing"):
        collect(records[:1], tmp_path / "merged")
    merged = collect(records, tmp_path / "merged")
    assert len(merged) == 16 and (tmp_path / "merged" / CONTACT_SHEET_FILE).is_file()
    whole = run_synthesis(FakeBackend(), card, counts, tmp_path / "whole", base_seed=5)
    assert files(tmp_path / "merged") == files(tmp_path / "whole")
    save_run(whole, tmp_path / "whole")
    assert (tmp_path / "merged" / "manifest.csv").read_text() == (tmp_path / "whole" / "manifest.csv").read_text()
    sheet = Image.open(tmp_path / "merged" / CONTACT_SHEET_FILE)
    assert sheet.height == 4 + 4 * 68  # one row per group
    other = run_synthesis(FakeBackend(), card, counts, tmp_path / "pod9", base_seed=6, shard=1, num_shards=2)
    with pytest.raises(ManifestError, match="base_seed 6 differs from 5"):
        collect([records[0], save_run(other, tmp_path / "pod9" / "record")], tmp_path / "merged2")
    assert synth_base.META_KEY == "ffr"


def test_cli_synthesize_shards_and_collect(tmp_path, card, capsys):
    from ffr.cli import main

    card.save(tmp_path / "card.json")
    base = ["synthesize", "--card", str(tmp_path / "card.json"), "--backend", "procedural", "--count", "cat_indoor=3",
            "--count", "dog_outdoor=2", "--seed", "4", "--quiet", "--filter", "grayscale"]
    assert main(base + ["--out", str(tmp_path / "one")]) == 0
    for s in range(2):
        assert main(base + ["--out", str(tmp_path / "two"), "--shard", str(s), "--num-shards", "2"]) == 0
    shard_dirs = sorted((tmp_path / "two" / "shards").iterdir())
    assert [d.name for d in shard_dirs] == ["cat_indoor+dog_outdoor.000-of-002", "cat_indoor+dog_outdoor.001-of-002"]
    assert main(["synthesize", "collect", "--out", str(tmp_path / "two"), *map(str, shard_dirs)]) == 0
    assert files(tmp_path / "one") == files(tmp_path / "two") and len(files(tmp_path / "one")) == 5
    one = Manifest.load(tmp_path / "one")
    assert one.group_counts()[("cat", "indoor")] == 3 and one.frame["prompt"].str.contains("digit").all()
    assert read_rejections(tmp_path / "one" / REJECTIONS_FILE) == []
    info = json.loads((tmp_path / "one" / "synthesis.json").read_text())
    assert info["backend"] == "procedural" and info["filters"] == ["grayscale(tolerance=3)"]
    assert main(["synthesize", "--card", str(tmp_path / "card.json"), "--count", "bird_sky=2", "--out",
                 str(tmp_path / "x")]) == 2
    assert "unknown group 'bird_sky'" in capsys.readouterr().err


def test_cli_counts_from_a_real_dataset(tmp_path, make_dataset):
    from ffr.cli import main

    real = make_dataset({("train", "cat", "indoor"): 6, ("train", "cat", "outdoor"): 1,
                         ("train", "dog", "indoor"): 2, ("train", "dog", "outdoor"): 5})
    assert main(["synthesize", "--real", str(real), "--strategy", "usb", "--out", str(tmp_path / "s"), "--quiet"]) == 0
    m = Manifest.load(tmp_path / "s")
    assert m.group_counts() == {("cat", "indoor"): 0, ("cat", "outdoor"): 5, ("dog", "indoor"): 4, ("dog", "outdoor"): 1}
