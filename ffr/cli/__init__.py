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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ffr`` console script: bad input is ``ffr: error: ...`` and exit 2, an
    unreachable service exit 3."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"ffr: error: {msg}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from ffr.integrations import ServiceError

        if not isinstance(e, ServiceError):
            raise
        print(f"ffr: error: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
