"""``ffr`` — the command line. The same entry points serve people, DVC stages and components.

One module per command family, each with its commands and, beside them, the parsers that reach
them (``add_parsers``): :mod:`~ffr.cli.data_cmds` (data, prepare, synthesize, balance),
:mod:`~ffr.cli.step_cmds` (train, evaluate), :mod:`~ffr.cli.grid_cmds` (compare, sweep, probe),
:mod:`~ffr.cli.pipeline_cmds` (run, compile, submit, schedule, upload: the only ones that import
:mod:`ffr.integrations.kubeflow`), :mod:`~ffr.cli.model_cmds` (promote, serve).
"""

from __future__ import annotations

import argparse
import sys

from ffr.cli import data_cmds, grid_cmds, model_cmds, pipeline_cmds, step_cmds

FAMILIES = (data_cmds, step_cmds, grid_cmds, pipeline_cmds, model_cmds)


def build_parser() -> argparse.ArgumentParser:
    """The ``ffr`` argument parser (reused by every launcher)."""
    from ffr import __version__

    parser = argparse.ArgumentParser(prog="ffr", description="ffr: From Fake to Real — pretrain on balanced "
                                     "synthetic images, fine-tune on real ones, measure worst-group accuracy.")
    parser.add_argument("--version", action="version", version=f"ffr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for family in FAMILIES:
        family.add_parsers(sub)
    return parser


# The options naming a folder or file a command writes: an empty value would mean the current
# directory (a grid written over whatever is there), so it is refused before anything runs.
WRITTEN_PATHS = ("out", "stage_cache", "cache", "mlflow_dir", "runs_dir", "work_dir")


def _refuse_empty_paths(args) -> None:
    for dest in WRITTEN_PATHS:
        value = getattr(args, dest, None)
        if isinstance(value, str) and not value.strip():
            raise ValueError(f"--{dest.replace('_', '-')} is empty: name a folder (the current directory is "
                             "never written into by default)")


def os_error_message(e: OSError) -> str:
    """What the file system refused, in words that name the path and say what to do (a full disk,
    a read-only folder, a name too long, a link to nowhere); what was already written is kept."""
    import errno
    import os

    if e.filename is None:  # raised with a message of our own (or without a path)
        return str(e)
    path = os.fsdecode(e.filename)
    why = {errno.ENOSPC: "no space left on the device: free some and rerun (finished work is kept and resumed)",
           errno.EDQUOT: "the disk quota is exhausted: free some and rerun (finished work is kept and resumed)",
           errno.EROFS: "the file system is read-only: choose a writable folder",
           errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
           errno.ENAMETOOLONG: "a name in this path is longer than the file system allows (255 bytes a name)"}
    if e.errno == errno.EEXIST and os.path.islink(path) and not os.path.exists(path):
        return f"{path}: is a link to {os.readlink(path)}, which does not exist: create that folder or remove the link"
    shown = path if len(path) <= 300 else path[:150] + "…" + path[-100:]
    return f"{shown}: {why.get(e.errno, e.strerror or e)}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ffr`` console script: bad input is ``ffr: error: ...`` and exit 2, an
    unreachable service exit 3."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _refuse_empty_paths(args)
        return int(args.func(args) or 0)
    except OSError as e:
        if isinstance(e, (ConnectionError, TimeoutError)):
            print(f"ffr: error: {e}", file=sys.stderr)
            return 3
        print(f"ffr: error: {os_error_message(e)}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, RuntimeError) as e:
        from ffr.integrations import ServiceError

        if isinstance(e, RuntimeError) and not isinstance(e, ServiceError):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"ffr: error: {msg}", file=sys.stderr)
        return 3 if isinstance(e, ServiceError) else 2  # a service (S3, MLflow, Kubeflow) failed: not bad input


if __name__ == "__main__":
    sys.exit(main())
