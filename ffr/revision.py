"""Which code is running, and the image tag that names it: the git revision of the checkout ffr
is imported from (``$FFR_GIT_COMMIT`` in an image, which has no checkout), whether the files
that go into the image differ from it, and the tag ``<version>-<revision>`` that `make image`
builds and ``ffr compile`` names. Standard library only: the image build runs it before any
dependency is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import ffr

# What the Dockerfile copies into the image: a change to anything else (docs, tests) leaves the
# image as it was, so it does not mark the tag dirty.
IMAGE_SOURCES = ("Dockerfile", "pyproject.toml", "constraints.txt", "README.md", "docker", "ffr")
REVISION_LENGTH = 12
# What `make push` writes: {"<repository>:<tag>": "sha256:..."} for each image it pushed, in the
# checkout (``$FFR_PUSH_RECORD`` names another file, e.g. one a CI job keeps).
PUSH_RECORD = Path("build") / "pushed-images.json"


def _push_record(root: str | os.PathLike | None) -> Path:
    if os.environ.get("FFR_PUSH_RECORD"):
        return Path(os.environ["FFR_PUSH_RECORD"])
    return Path(root if root is not None else source_root()) / PUSH_RECORD


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def source_root() -> Path:
    """The folder holding the ``ffr`` package (a checkout's root, or site-packages)."""
    return Path(ffr.__file__).resolve().parent.parent


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The commit checked out at ``path`` (default: ffr's own folder); None outside a git work tree."""
    out = _git(Path(path) if path is not None else source_root(), "rev-parse", "HEAD")
    return (out or "").strip() or None


def image_sources_dirty(root: str | os.PathLike | None = None) -> bool:
    """Whether the files the image is built from (:data:`IMAGE_SOURCES`) differ from the commit."""
    root = Path(root) if root is not None else source_root()
    out = _git(root, "status", "--porcelain", "--untracked-files=normal", "--", *IMAGE_SOURCES)
    return bool(out and out.strip())


def code_revision() -> tuple[str | None, bool]:
    """(commit, dirty) of the running code: the checkout's, else ``$FFR_GIT_COMMIT`` (clean)."""
    commit = git_commit()
    if commit:
        return commit, image_sources_dirty()
    env = os.environ.get("FFR_GIT_COMMIT", "").strip()
    return (env if env and env != "unknown" else None), False


def image_tag() -> str:
    """The image tag of the running code: ``<version>-<12 hex digits of the commit>``, with
    ``-dirty`` when the image's files have uncommitted changes; the version alone where no
    revision is known (an installed wheel)."""
    commit, dirty = code_revision()
    if not commit:
        return ffr.__version__
    return f"{ffr.__version__}-{commit[:REVISION_LENGTH]}" + ("-dirty" if dirty else "")


def pushed_digest(reference: str, root: str | os.PathLike | None = None) -> str | None:
    """The digest `make push` recorded for ``reference`` (``repo:tag``) in the checkout, or None."""
    path = _push_record(root)
    try:
        found = json.loads(path.read_text()).get(reference)
    except (OSError, ValueError, AttributeError):
        return None
    return found if isinstance(found, str) and found.startswith("sha256:") else None


def record_push(reference: str, digest: str, root: str | os.PathLike | None = None) -> Path:
    """Record that ``reference`` was pushed with ``digest`` (what ``podman push --digestfile``
    wrote), for :func:`pushed_digest`."""
    digest = digest.strip()
    if not digest.startswith("sha256:") or len(digest) != 71:
        raise ValueError(f"not an image digest: {digest!r}")
    path = _push_record(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = {}
    record[reference] = digest
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def main(argv: list[str]) -> int:
    """``python3 -m ffr.revision [tag|version|commit]`` prints what `make image` builds with;
    ``python3 -m ffr.revision record-push REF DIGEST_FILE`` records a push."""
    if argv[:1] == ["record-push"] and len(argv) == 3:
        print(f"{argv[1]}@{Path(argv[2]).read_text().strip()} recorded in {record_push(argv[1], Path(argv[2]).read_text())}")
        return 0
    commit, _ = code_revision()
    fields = {"tag": image_tag(), "version": ffr.__version__, "commit": commit or "unknown"}
    if len(argv) > 1 or (argv and argv[0] not in fields):
        print(f"usage: python3 -m ffr.revision [{'|'.join(fields)}] | record-push REF DIGEST_FILE")
        return 2
    print(fields[argv[0] if argv else "tag"])
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
