"""Run commands inside a container image's file system without a container engine's runtime:
``podman image mount`` (read-only) + ``chroot``, as the image's own user and with the image's
own environment, nothing of the caller's (no PYTHONPATH, no virtual environment). What a
Kubeflow pod does with the image, less the isolation: /proc, /dev and the host's network are
shared; /tmp and $HOME are fresh tmpfs mounts (the image stays read-only, as under a
``readOnlyRootFilesystem`` security context); folders of the caller's can be bound in at the
same path, which is how KFP's launcher shares the pipeline root with a step.

The local KFP runner drives it through :class:`ChrootTaskHandler`, which takes the place of
its Docker task handler: every step of a local pipeline run then executes the component's
command (``python3 -m kfp.dsl.executor_main --executor_input {...}``) in the image.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from kfp.local import status


def podman(*args: str) -> str:
    out = subprocess.run(["podman", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout.strip()


class ImageRoot:
    """The file system of ``image`` mounted for ``chroot``; ``binds``: host folders (under /tmp)
    made visible at the same path. A context manager: everything is unmounted on exit."""

    def __init__(self, image: str, binds: list[str | os.PathLike] = ()):
        self.image, self.binds = image, [Path(b).resolve() for b in binds]
        config = json.loads(podman("image", "inspect", image))[0]["Config"]
        self.labels = config.get("Labels") or {}
        self.env = dict(e.split("=", 1) for e in config.get("Env") or [])
        self.user = config.get("User") or "0"
        self.workdir = config.get("WorkingDir") or "/"
        self.root: Path | None = None
        self._mounts: list[Path] = []

    def _mount(self, *args: str, target: Path) -> None:
        subprocess.run(["mount", *args, str(target)], check=True, capture_output=True)
        self._mounts.append(target)

    def __enter__(self) -> "ImageRoot":
        self.root = Path(podman("image", "mount", self.image))
        try:
            uid = self.user.split(":")[0]
            self._mount("-t", "proc", "proc", target=self.root / "proc")
            self._mount("--rbind", "/dev", target=self.root / "dev")
            self._mount("-t", "tmpfs", "-o", "mode=1777", "tmpfs", target=self.root / "tmp")
            self._mount("-t", "tmpfs", "-o", f"mode=0755,uid={uid},gid={uid}", "tmpfs",
                        target=self.root / self.env.get("HOME", "/home/ffr").lstrip("/"))
            for b in self.binds:
                if not b.is_relative_to("/tmp"):
                    raise ValueError(f"{b}: only folders under /tmp can be bound into the read-only image")
                target = self.root / str(b).lstrip("/")
                target.mkdir(parents=True, exist_ok=True)
                self._mount("--bind", str(b), target=target)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for target in reversed(self._mounts):
            subprocess.run(["umount", "--lazy", "--recursive", str(target)], capture_output=True)
        self._mounts.clear()
        if self.root is not None:
            podman("image", "unmount", self.image)
            self.root = None

    def command(self, argv: list[str], env: dict[str, str] | None = None) -> list[str]:
        """``argv`` as the image's user, in its working folder, with only the image's environment
        (plus ``env``)."""
        user = self.user if ":" in self.user else f"{self.user}:{self.user}"
        variables = [f"{k}={v}" for k, v in {**self.env, **(env or {})}.items()]
        return ["chroot", f"--userspec={user}", str(self.root), "/usr/bin/env", "-i", "-C", self.workdir,
                *variables, *argv]

    def run(self, argv: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(argv, env), capture_output=True, text=True, **kw)


class ChrootTaskHandler:
    """A KFP local task handler that runs the step's container command in :attr:`root` (set by
    the test), and records what ran (:attr:`executed`: the image named and the function)."""

    root: ImageRoot | None = None
    executed: list[tuple[str, str]] = []

    def __init__(self, image: str, full_command: list[str], pipeline_root: str, runner, env_vars=None):
        self.image, self.full_command, self.pipeline_root = image, list(full_command), pipeline_root
        self.env_vars = dict(env_vars or {})

    def run(self) -> status.Status:
        root = type(self).root
        uid = int(root.user.split(":")[0])
        for bound in [*root.binds, self.pipeline_root]:  # what the launcher made belongs to the step's user
            for dirpath, dirnames, filenames in os.walk(bound):
                os.chown(dirpath, uid, uid)
                for f in filenames:
                    os.chown(os.path.join(dirpath, f), uid, uid)
        function = self.full_command[self.full_command.index("--function_to_execute") + 1]
        type(self).executed.append((self.image, function))
        with subprocess.Popen(root.command(self.full_command, self.env_vars), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, bufsize=1) as p:
            for line in iter(p.stdout.readline, ""):
                print(line, end="")
            code = p.wait()
        return status.Status.SUCCESS if code == 0 else status.Status.FAILURE
