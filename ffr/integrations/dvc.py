"""DVC: the digest DVC gives a data directory, and the dataset versions recorded in a DVC project.

A model's lineage names the data it read by the same version string DVC uses (the ``.dir`` md5 in
``dvc.lock`` / a ``.dvc`` file), so ``dvc checkout`` / ``dvc pull`` of that version brings back
exactly those bytes. The digest is computed here the way DVC 3 does, without importing DVC, so
components that run where no DVC project exists record it too.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import yaml

_CHUNK = 1 << 20
# Directories DVC never tracks inside an output.
_SKIP_DIRS = {".git", ".dvc"}


@functools.lru_cache(maxsize=1 << 16)
def _md5(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def file_md5(path: str | os.PathLike) -> str:
    """The md5 of a file's bytes (DVC 3's ``md5`` hash); remembered while the file's size and
    mtime stay the same, as DVC's state database does, so train/val/test of one root hash it once."""
    st = os.stat(path)
    return _md5(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


def dir_digest(path: str | os.PathLike) -> str:
    """DVC's version of a file (its md5) or a directory (``<md5>.dir``: the md5 of the JSON list of
    ``{"md5", "relpath"}`` entries sorted by relative path)."""
    path = Path(path)
    if path.is_file():
        return file_md5(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no file or directory to digest at {path}")
    entries = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        for name in filenames:
            full = Path(dirpath) / name
            entries.append({"md5": file_md5(full), "relpath": full.relative_to(path).as_posix()})
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def dataset_digests(dataset_dir: str | os.PathLike, root: str | os.PathLike | None = None) -> dict[str, str]:
    """DVC versions of what a manifest depends on: ``dvc_md5`` of the folder holding
    ``manifest.csv`` and, when the card's image root lies outside it, ``dvc_md5_root`` of the root."""
    dataset_dir = Path(dataset_dir)
    if dataset_dir.is_file():
        dataset_dir = dataset_dir.parent
    out = {"dvc_md5": dir_digest(dataset_dir)}
    if root is not None:
        root = Path(root).resolve()
        inside = root == dataset_dir.resolve() or dataset_dir.resolve() in root.parents
        if not inside and root.is_dir():
            out["dvc_md5_root"] = dir_digest(root)
    return out


def locked_outputs(lock_file: str | os.PathLike = "dvc.lock") -> dict[str, str]:
    """Every output of a ``dvc.lock`` → its recorded version (md5), for lineage without rehashing."""
    data = yaml.safe_load(Path(lock_file).read_text()) or {}
    out = {}
    for stage in (data.get("stages") or {}).values():
        for o in stage.get("outs") or []:
            out[o["path"]] = o.get("md5")
    return out


def get_revision(repo: str, path: str, out: str | os.PathLike, rev: str | None = None,
                 endpoint_url: str | None = None) -> dict[str, str]:
    """Download ``path`` as it is at git revision ``rev`` of the DVC project ``repo`` (a git URL or
    folder) into ``out`` — from the project's default remote, e.g. S3 (``endpoint_url`` for a
    non-AWS one; credentials from the environment). Returns its lineage: repo, path, the revision
    asked for and the commit it resolved to, and the data's DVC version (``dvc_md5``)."""
    from dvc.repo.get import get
    from dvc.scm import SCM

    remote_config = {"endpointurl": endpoint_url} if endpoint_url else None
    get(repo, path, out=str(out), rev=rev or None, remote_config=remote_config)
    info = {"repo": repo, "path": path, "rev": rev or "HEAD", "dvc_md5": dir_digest(out)}
    if Path(repo).is_dir():  # a local clone: name the commit too (a remote repo's tag may move)
        info["commit"] = SCM(repo).resolve_rev(rev or "HEAD")
    return info
