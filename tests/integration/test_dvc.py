"""DVC over the ffr CLI: the digest ffr records is the one DVC writes; `dvc repro` runs the
pipeline of dvc.yaml on the demo; `dvc exp run --set-param` sweeps; the data goes to an S3 remote
(moto on 127.0.0.1) and comes back byte-identical into a fresh clone."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ffr.dvc_pipeline import write_plots_template
from ffr.integrations.dvc import dir_digest, locked_outputs
from tests.integration.servers import BIN, DUMMY_AWS, binary

REPO = Path(__file__).resolve().parents[2]
pytest.importorskip("dvc")


def _env(tmp_path: Path, extra: dict | None = None) -> dict:
    """PATH with an `ffr` that runs this checkout's code with this interpreter, and no DVC analytics."""
    shim = tmp_path / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "ffr").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m ffr.cli "$@"\n')
    (shim / "ffr").chmod(0o755)
    return {**os.environ, "PATH": f"{shim}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(REPO), "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", **(extra or {})}


def run(args, cwd, env):
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"{' '.join(map(str, args))} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_dir_digest_is_the_version_dvc_records(tmp_path, make_dataset):
    ds = make_dataset({("train", "cat", "indoor"): 3, ("test", "dog", "outdoor"): 2}, name="proj/data")
    env = _env(tmp_path)
    dvc = binary("dvc")
    run([dvc, "init", "--no-scm", "-q"], ds.parent, env)
    run([dvc, "add", "-q", "data"], ds.parent, env)
    recorded = yaml.safe_load((ds.parent / "data.dvc").read_text())["outs"][0]["md5"]
    assert dir_digest(ds) == recorded
    assert dir_digest(ds / "manifest.csv") == __import__("hashlib").md5((ds / "manifest.csv").read_bytes()).hexdigest()


@pytest.mark.slow
def test_repro_sweep_push_and_pull_into_a_fresh_clone(tmp_path, s3_env, bucket):
    """The project's own dvc.yaml and params.yaml (shrunk further through `dvc exp`'s --set-param
    only where noted) in a scratch git repository, with a copy of ffr/: the stages' code deps (the
    commands run this checkout's ffr, through _env's shim)."""
    env = _env(tmp_path, {**DUMMY_AWS})
    dvc, git = binary("dvc"), shutil.which("git")
    proj = tmp_path / "proj"
    proj.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, proj / name)
    shutil.copytree(REPO / "ffr", proj / "ffr", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["prepare"]["per_digit"] = 12   # smaller than the demo default: test time
    params["pretrain"]["epochs"] = params["finetune"]["epochs"] = 2
    params["finetune"]["lpft_epochs"] = 1
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([git, "init", "-q"], proj, env)
    run([dvc, "init", "-q"], proj, env)
    assert write_plots_template(proj) == proj / "dvc_plots.html"  # what ffr dvc-pipeline writes beside dvc.yaml
    run([dvc, "remote", "add", "-d", "s3store", f"s3://{bucket}/dvc"], proj, env)
    run([dvc, "remote", "modify", "--local", "s3store", "endpointurl", s3_env.url], proj, env)

    repro = subprocess.run([dvc, "repro"], cwd=proj, env=env, capture_output=True, text=True)
    assert repro.returncode == 0, repro.stderr[-3000:]
    assert "is empty" not in repro.stdout + repro.stderr  # no output or dependency DVC finds empty
    metrics = json.loads((proj / "metrics" / "test.json").read_text())
    assert 0 <= metrics["worst_group_acc"] <= 1
    shown = json.loads(run([dvc, "metrics", "show", "--json"], proj, env))
    assert "worst_group_acc" in json.dumps(shown)
    plots = json.loads(run([dvc, "plots", "show", "--json"], proj, env))
    assert {"plots/test_groups.csv", "plots/finetune_history.csv"} <= set(json.dumps(plots).replace('"', " ").split())
    run([dvc, "plots", "show", "-o", "plots_page"], proj, env)  # plain `dvc plots show`: .dvc/config names the page
    page = (proj / "plots_page" / "index.html").read_text()
    assert not re.search(r"<script[^>]*\bsrc=", page), "the page loads a script from elsewhere"
    assert "vegaEmbed" in page and "test_groups" in page
    locked = locked_outputs(proj / "dvc.lock")
    assert locked["data/prepared"] == dir_digest(proj / "data" / "prepared")
    assert locked["data/source"] == dir_digest(proj / "data" / "source")
    assert run([dvc, "status", "-q"], proj, env).strip() == ""          # up to date: nothing to rerun

    run([git, "add", "-A"], proj, env)
    run([git, "commit", "-qm", "baseline"], proj, env)
    run([dvc, "push", "-q"], proj, env)

    clone = tmp_path / "clone"
    run([git, "clone", "-q", str(proj), str(clone)], tmp_path, env)
    run([dvc, "remote", "modify", "--local", "s3store", "endpointurl", s3_env.url], clone, env)
    assert not (clone / "data" / "source").exists()
    run([dvc, "pull", "-q"], clone, env)
    for out_dir in ("data/source", "data/prepared", "data/synthetic", "data/balanced", "models/finetune"):
        assert _files(clone / out_dir) == _files(proj / out_dir), out_dir

    # A sweep point: only the stages downstream of the changed parameter rerun.
    out = run([dvc, "exp", "run", "--set-param", "finetune.lr=0.003", "--name", "lr3e-3"], proj, env)
    assert "Running stage 'finetune'" in out and "Running stage 'prepare'" not in out
    table = json.loads(run([dvc, "exp", "show", "--json"], proj, env))
    assert "lr3e-3" in json.dumps(table) and "0.003" in json.dumps(table)


def test_get_revision_brings_back_each_version_from_the_s3_remote(tmp_path, s3_env, bucket, make_dataset):
    """What the retraining pipeline's data step does: a dataset at a git revision of a DVC project,
    downloaded from the project's S3 remote, with its DVC version as lineage."""
    from ffr.integrations.dvc import get_revision

    env = _env(tmp_path, {**DUMMY_AWS})
    dvc, git = binary("dvc"), shutil.which("git")
    proj = tmp_path / "proj"
    ds = make_dataset({("train", "cat", "indoor"): 3, ("test", "dog", "outdoor"): 2}, name="proj/data")
    run([git, "init", "-q"], proj, env)
    run([dvc, "init", "-q"], proj, env)
    run([dvc, "remote", "add", "-d", "s3store", f"s3://{bucket}/dvc"], proj, env)
    versions = {}
    for tag, extra in (("v1", 0), ("v2", 1)):
        if extra:
            (ds / "extra.txt").write_text("a second version\n")
        run([dvc, "add", "-q", "data"], proj, env)
        run([git, "add", "-A"], proj, env)
        run([git, "commit", "-qm", tag], proj, env)
        run([git, "tag", tag], proj, env)
        run([dvc, "remote", "modify", "--local", "s3store", "endpointurl", s3_env.url], proj, env)
        run([dvc, "push", "-q"], proj, env)
        versions[tag] = (yaml.safe_load((proj / "data.dvc").read_text())["outs"][0]["md5"], _files(ds))
    for tag, (md5, files) in versions.items():
        out = tmp_path / f"got-{tag}"
        info = get_revision(str(proj), "data", out, rev=tag, endpoint_url=s3_env.url)
        assert info["dvc_md5"] == md5 and _files(out) == files
        assert info["commit"] == run([git, "rev-parse", tag], proj, env).strip()
    assert versions["v1"][0] != versions["v2"][0]


def _changed_stages(proj: Path, env: dict) -> dict:
    """`dvc status`: stage name -> what changed, for every stage that `dvc repro` would rerun."""
    out = run([binary("dvc"), "status", "--json"], proj, env).strip()
    return json.loads(out or "{}")


def test_status_after_a_code_edit_reruns_the_stages_and_bytecode_does_not(tmp_path):
    """Every stage of dvc.yaml depends on the code it runs, the ffr package folder: an edit of any
    module — the training loop, or a module added since — reruns every stage; the bytecode Python
    writes beside the code (.dvcignore) does not. In a git clone of this repository, with the
    working tree's dvc.yaml and params.yaml; `dvc commit` records stand-in outputs instead of a
    `dvc repro`: what is tested is what DVC hashes, not what the stages compute (that is
    test_repro_sweep_push_and_pull_into_a_fresh_clone)."""
    env = _env(tmp_path)
    dvc, git = binary("dvc"), shutil.which("git")
    clone = tmp_path / "clone"
    run([git, "clone", "-q", str(REPO), str(clone)], tmp_path, env)
    for name in ("dvc.yaml", "params.yaml"):   # the working tree's: may be ahead of the last commit
        shutil.copy(REPO / name, clone / name)
    if not (clone / ".dvc").is_dir():
        run([dvc, "init", "-q"], clone, env)
    stages = yaml.safe_load((clone / "dvc.yaml").read_text())["stages"]
    assert all("ffr" in st["deps"] for st in stages.values())
    for st in stages.values():
        paths = [d for d in st.get("deps", []) if d != "ffr"] + list(st.get("outs", []))
        paths += [next(iter(p)) if isinstance(p, dict) else p for p in st.get("metrics", []) + st.get("plots", [])]
        for rel in paths:
            target = clone / rel
            if target.suffix in (".csv", ".json"):
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(f"{rel}\n")
            else:
                target.mkdir(parents=True, exist_ok=True)
                (target / "stand-in.txt").write_text(f"{rel}\n")
    run([dvc, "commit", "-f", "-q"], clone, env)
    assert _changed_stages(clone, env) == {}

    (clone / "ffr" / "train" / "__pycache__").mkdir(exist_ok=True)
    (clone / "ffr" / "train" / "__pycache__" / "loop.cpython-311.pyc").write_bytes(b"bytecode")
    assert _changed_stages(clone, env) == {}
    with (clone / "ffr" / "train" / "loop.py").open("a") as f:
        f.write("# an edit\n")
    changed = _changed_stages(clone, env)
    assert set(changed) == set(stages) and "ffr" in json.dumps(changed["pretrain"]), changed
    run([git, "checkout", "-q", "--", "ffr/train/loop.py"], clone, env)
    assert _changed_stages(clone, env) == {}
    (clone / "ffr" / "new_module.py").write_text("X = 1\n")
    assert set(_changed_stages(clone, env)) == set(stages)
