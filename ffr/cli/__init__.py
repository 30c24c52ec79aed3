"""``ffr`` — the command line. The same entry points serve people, DVC stages and components.

One module per command family, each with its commands and, beside them, the parsers that reach
them (``add_parsers``): :mod:`~ffr.cli.data_cmds` (data, prepare, synthesize, balance),
:mod:`~ffr.cli.step_cmds` (train, evaluate), :mod:`~ffr.cli.grid_cmds` (compare, sweep, probe),
:mod:`~ffr.cli.pipeline_cmds` (run, compile, submit, schedule, upload: the only ones that import
:mod:`ffr.kubeflow`), :mod:`~ffr.cli.model_cmds` (promote, serve).
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ffr`` console script: bad input is ``ffr: error: ...`` and exit 2, an
    unreachable service exit 3."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _refuse_empty_paths(args)
        return int(args.func(args) or 0)
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError, KeyError,
            RuntimeError) as e:
        from ffr.integrations import ServiceError

        if isinstance(e, RuntimeError) and not isinstance(e, ServiceError):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"ffr: error: {msg}", file=sys.stderr)
        return 3 if isinstance(e, ServiceError) else 2  # a service (S3, MLflow, Kubeflow) failed: not bad input


if __name__ == "__main__":
    sys.exit(main())
