"""Print the podman/docker build options that give the image build the same package indexes as
this machine's own pip: ``--build-arg PIP_INDEX_URL / PIP_EXTRA_INDEX_URL / PIP_FIND_LINKS / PIP_CERT``
(from the environment, else pip's configuration) and a read-only ``--volume`` for every local
location among them (``file://`` indexes, wheel folders), mounted at the same path so the URLs
hold inside the build. Nothing is printed when pip uses only its default index. Standard
library only (`make image` runs it with the system Python).
"""

import os
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

SETTINGS = {"index-url": "PIP_INDEX_URL", "extra-index-url": "PIP_EXTRA_INDEX_URL", "find-links": "PIP_FIND_LINKS",
            "cert": "PIP_CERT"}  # a CA bundle: where the network re-signs TLS, pip must trust the same CAs


def pip_config() -> dict[str, str]:
    """pip's configured values (``global.extra-index-url`` etc.) as {setting: value}."""
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    found = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        setting = key.rsplit(".", 1)[-1]
        if setting in SETTINGS and key.split(".", 1)[0] in ("global", "install", ":env:"):
            found[setting] = value.strip().strip("'\"")
    return found


def local_folder(location: str) -> Path | None:
    """The folder to mount for one index or find-links location (None: a remote URL)."""
    url = urlparse(location)
    if url.scheme not in ("", "file"):
        return None
    path = Path(url.path if url.scheme == "file" else location)
    if not path.exists():
        return None
    if path.is_file():  # a CA bundle
        return path
    # an index's simple/ page links to ../../files/: mount the index's parent folder
    return path.parent if path.name == "simple" else path


def build_options() -> list[str]:
    """The build options (see the module docstring)."""
    config = pip_config()
    options, mounts = [], []
    for setting, var in SETTINGS.items():
        value = os.environ.get(var) or config.get(setting)
        if not value:
            continue
        options += ["--build-arg", f"{var}={value}"]
        for location in value.split():
            folder = local_folder(location)
            if folder is not None and folder not in mounts:
                mounts.append(folder)
    for folder in mounts:
        options += ["--volume", f"{folder}:{folder}:ro"]
    return options


if __name__ == "__main__":
    print(shlex.join(build_options()))
