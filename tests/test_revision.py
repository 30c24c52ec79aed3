"""Image naming: the tag follows the code (version + revision, dirty when the image's files
changed), a pushed digest pins a compiled pipeline, and bad records are refused."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import ffr
from ffr import revision


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A git work tree holding an ``ffr`` folder, which ``source_root`` points at."""
    run = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    run("config", "user.email", "t@example.com")
    run("config", "user.name", "t")
    (tmp_path / "ffr").mkdir()
    (tmp_path / "ffr" / "__init__.py").write_text("")
    (tmp_path / "docs.md").write_text("x")
    run("add", "-A")
    run("commit", "-qm", "init")
    monkeypatch.setattr(revision, "source_root", lambda: tmp_path)
    monkeypatch.delenv("FFR_GIT_COMMIT", raising=False)
    return tmp_path


def test_tag_is_version_and_revision_and_marks_image_changes_dirty(checkout):
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True).stdout.strip()
    assert revision.image_tag() == f"{ffr.__version__}-{commit[:12]}"
    (checkout / "docs.md").write_text("changed")  # not in the image: still clean
    assert revision.image_tag() == f"{ffr.__version__}-{commit[:12]}"
    (checkout / "ffr" / "__init__.py").write_text("changed = 1\n")
    assert revision.image_tag() == f"{ffr.__version__}-{commit[:12]}-dirty"


def test_without_a_checkout_the_image_revision_is_used(tmp_path, monkeypatch):
    monkeypatch.setattr(revision, "source_root", lambda: tmp_path)  # no git here
    monkeypatch.setenv("FFR_GIT_COMMIT", "0123456789abcdef0123")
    assert revision.code_revision() == ("0123456789abcdef0123", False)
    assert revision.image_tag() == f"{ffr.__version__}-0123456789ab"
    monkeypatch.setenv("FFR_GIT_COMMIT", "unknown")
    assert revision.image_tag() == ffr.__version__


def test_a_recorded_push_pins_the_compiled_image(checkout, monkeypatch):
    from ffr.integrations.kubeflow.components.image import base_image

    digest = "sha256:" + "ab" * 32
    ref = f"registry.example.com/team/ffr:{revision.image_tag()}"
    path = revision.record_push(ref, digest + "\n")
    assert json.loads(path.read_text()) == {ref: digest}
    assert base_image("registry.example.com/team/ffr") == f"{ref}@{digest}"
    # nothing pushed there
    assert base_image("registry.example.com/other/ffr") == f"registry.example.com/other/ffr:{revision.image_tag()}"
    with pytest.raises(ValueError, match="not an image digest"):
        revision.record_push(ref, "latest")
    (checkout / revision.PUSH_RECORD).write_text("{not json")
    assert revision.pushed_digest(ref) is None


def test_the_command_line_prints_what_make_image_uses():
    run = lambda *a: subprocess.run([sys.executable, "-m", "ffr.revision", *a], capture_output=True, text=True)  # noqa: E731
    assert run("version").stdout.strip() == ffr.__version__
    assert run().stdout.strip() == revision.image_tag()
    assert run("bogus").returncode == 2
