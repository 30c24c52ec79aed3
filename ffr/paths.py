"""Paths or URIs: the library's load points accept ``s3://`` URIs wherever they take a path.

A URI is resolved to a local copy (downloaded once into a cache) by :mod:`ffr.integrations.s3`,
imported only when a URI is actually met, so the core keeps no S3 client dependency.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import urllib.parse
from pathlib import Path


def is_remote(path) -> bool:
    """True for an ``s3://`` URI."""
    return isinstance(path, str) and path.startswith("s3://")


def temp_beside(path: str | os.PathLike) -> Path:
    """A temporary name next to ``path``, unique per process and host: a file is written there,
    then renamed over ``path``, so a reader never sees half a file and two processes never share
    one. Temporary files beside ``path`` that a process of this host no longer running left (a
    kill, a full disk) are removed first (:func:`drop_stale_temps`)."""
    path = Path(path)
    drop_stale_temps(path)
    return path.with_name(f"{path.name}.{_HOST}.{os.getpid()}.tmp")


_HOST = re.sub(r"[^A-Za-z0-9-]", "-", __import__("socket").gethostname())[:40] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        return True
    return True


def drop_stale_temps(path: str | os.PathLike) -> None:
    """Remove ``<name>.<host>.<pid>.tmp`` files beside ``path`` whose process, on this host, is
    gone (those of other hosts sharing the folder are left alone); never raises."""
    path = Path(path)
    prefix = f"{path.name}.{_HOST}."
    try:
        leftovers = [p for p in path.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(".tmp")]
    except OSError:
        return
    for p in leftovers:
        pid = p.name[len(prefix):-len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            try:
                p.unlink()
            except OSError:
                pass


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (through :func:`temp_beside`); returns ``path``. On a
    failure (a full disk) ``path`` is as it was and no temporary file is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | os.PathLike, data) -> Path:
    """``data`` as indented JSON, written atomically."""
    import json

    return write_atomic(path, json.dumps(data, indent=2) + "\n")


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (read in chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def inside(root: str | os.PathLike, rel: str | os.PathLike) -> Path:
    """``root / rel``, checked to resolve inside ``root``: every file ffr writes under an output
    folder goes through here, so no name (a class, a bias value, a key) can place it elsewhere."""
    base = Path(root).resolve()
    full = (base / rel).resolve()
    if full != base and base not in full.parents:
        raise ValueError(f"{rel!s}: resolves to {full}, outside the output folder {base}; refusing to write there")
    return base / rel


def local_path(path: str | os.PathLike) -> Path:
    """``path`` itself, or the local copy of the object or prefix an ``s3://`` URI names."""
    if not is_remote(path):
        return Path(path)
    from ffr.integrations.s3 import resolve_path

    return resolve_path(path)


def local_dataset(path: str | os.PathLike) -> Path:
    """A dataset directory (or manifest.csv), or the local copy of one at an ``s3://`` URI: its
    manifest, card and exactly the images its rows name."""
    if not is_remote(path):
        return Path(path)
    from ffr.integrations.s3 import fetch_dataset

    return fetch_dataset(path)


# Where a dataset card's root and images may point (ffr.data.manifest). A root may climb out of
# its card's folder (a prepared split points back at its source images, a shard record at its
# pod's folder), but never to the file system's root, into the system's own directories, or into
# a hidden folder the card's own folder is not in (~/.ssh, ~/.aws, ~/.kube: where credentials
# live), or into another user's home folder. ffr's own caches and the folders a user lists in
# $FFR_DATA_ROOTS are always allowed.
SYSTEM_DIRS = tuple(Path(p) for p in ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc",
                                      "/run", "/sbin", "/sys"))
DATA_DIRS_UNDER_SYSTEM = (Path("/dev/shm"),)  # RAM-disk staging is a data folder
DATA_ROOTS_ENV = "FFR_DATA_ROOTS"


def allowed_data_roots() -> list[Path]:
    """Folders any dataset card may read images from: ffr's caches (``$FFR_CACHE`` or
    ``~/.cache/ffr``, ``$FFR_S3_CACHE``) and those listed in ``$FFR_DATA_ROOTS``
    (``os.pathsep``-separated: what a user allows)."""
    listed = [str(cache_home()), os.environ.get("FFR_S3_CACHE", "")]
    listed += os.environ.get(DATA_ROOTS_ENV, "").split(os.pathsep)
    return [Path(p).expanduser().resolve() for p in listed if p.strip()]


def _under(path: Path, folders) -> bool:
    return any(path == d or d in path.parents for d in folders)


def _home_of(path: Path) -> Path | None:
    """The home folder ``path`` lies in (``/home/<user>``, ``/Users/<user>``, ``/root``), or None."""
    parts = path.parts
    if len(parts) >= 3 and parts[1] in ("home", "Users"):
        return Path(*parts[:3])
    return Path("/root") if len(parts) >= 2 and parts[1] == "root" else None


def data_path_problem(path: Path, card_folder: Path) -> str | None:
    """Why a dataset card in ``card_folder`` may not read ``path`` (its root or an image, both
    resolved), or None. The answer ends a sentence that starts with the path."""
    if _under(path, allowed_data_roots()) or _under(path, DATA_DIRS_UNDER_SYSTEM):
        return None
    if path == Path(path.anchor) or _under(path, SYSTEM_DIRS):
        return "the file system's root or a system directory: images are read only from data folders"
    home = _home_of(path)
    if home is not None and home != _home_of(card_folder) and home != Path.home().resolve():
        return (f"inside another user's home folder {home}, which the card's folder {card_folder} is not in; "
                f"list it in ${DATA_ROOTS_ENV} to allow it")
    base = Path(os.path.commonpath([str(path), str(card_folder)]))
    hidden = [part for part in path.relative_to(base).parts if part.startswith(".")]
    if hidden:
        return (f"inside the hidden folder {hidden[0]!r}, outside the card's folder {card_folder} (where "
                f"credentials live, not images); list the folder in ${DATA_ROOTS_ENV} to allow it")
    return None


_COMPLETE = ".ffr-complete"


def cache_home() -> Path:
    """ffr's cache folder: ``$FFR_CACHE`` or ``~/.cache/ffr``."""
    return Path(os.environ.get("FFR_CACHE") or Path.home() / ".cache" / "ffr")


def default_cache_dir() -> Path:
    """Where models fetched from S3 are kept: ``$FFR_CACHE/models`` or ``~/.cache/ffr/models``."""
    return cache_home() / "models"


def fetch_s3_prefix(uri: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The local copy of the prefix ``uri`` names (a diffusers model), downloaded on first use only. The download goes to
    a temporary folder renamed into place when complete, so a killed download is never mistaken for
    a model."""
    from ffr.integrations.s3 import download_prefix

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    dest = cache / hashlib.sha256(uri.encode()).hexdigest()[:16]
    if (dest / _COMPLETE).is_file():
        return dest
    tmp = dest.with_name(f"{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    download_prefix(uri, tmp)
    (tmp / _COMPLETE).write_text(uri + "\n")
    if (dest / _COMPLETE).is_file():  # another process finished the same download meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        return dest
    shutil.rmtree(dest, ignore_errors=True)  # an incomplete earlier copy
    os.replace(tmp, dest)
    return dest


# The password of a URI's user info (up to the authority's last '@'), and the value of a query or
# fragment parameter whose name says it is a secret.
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#@:'\"<>]*:)[^\s/?#'\"<>]*@")
_PARAM = re.compile(r"(?P<head>[?&;#](?P<name>[^=&;#\s/?'\"<>]+)=)(?P<value>[^&;#\s'\"<>]*)")
_SECRET_NAME = re.compile(r"token|passw|secret|signature|credential|api[-_]?key|^(?:pwd|pass|sig|key|auth|code)$",
                          re.IGNORECASE)


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """(``uri`` without its user info, the user, the password) of an ``http(s)://user:password@host``
    URI (both unquoted: ``p%40ss`` is ``p@ss``); other URIs come back as they are, with None, None.
    What a process hands on to others (a pipeline's steps, a run record) is then the bare URI, and
    the credential travels in the environment (``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``)."""
    parts = urllib.parse.urlsplit(str(uri))
    if parts.scheme not in ("http", "https") or parts.password is None:
        return str(uri), None, None
    host = parts.netloc.rpartition("@")[2]
    bare = urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return bare, urllib.parse.unquote(parts.username or ""), urllib.parse.unquote(parts.password)


def redact_uri(uri: str) -> str:
    """``uri`` fit for a message: the password of its user info and the values of secret-looking
    query or fragment parameters (``token``, ``access_token``, ``password``, ``X-Amz-Signature``,
    ``api_key`` ...) replaced by ``***``; ``http://alice:s3cret@host/`` → ``http://alice:***@host/``.
    Anything else is kept as it is (a user name without a password too). Works as well on a
    message that contains URIs (an MLflow error naming the request URL)."""
    def param(m: re.Match) -> str:
        return m["head"] + "***" if _SECRET_NAME.search(urllib.parse.unquote(m["name"])) else m[0]

    return _PARAM.sub(param, _USERINFO.sub(r"\g<head>***@", str(uri)))
