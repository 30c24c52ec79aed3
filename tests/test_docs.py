"""Every documented command is accounted for: each shell block of README.md and docs/*.md is
read command by command, and every command is

- **run**, when its block is marked ``<!-- docs-test: run -->`` on the line above the fence (in a
  scratch folder, with this checkout's ``ffr``): it must exit 0;
- **checked** otherwise: an ``ffr`` command is parsed by ffr's own argument parser (a renamed
  option or command fails here; values such as ``RUN_ID`` or ``<run id>`` are placeholders), a
  ``make`` target must exist in the Makefile, ``dvc`` and ``mlflow`` subcommands must exist (their
  ``--help``), ``torchrun … -m ffr.cli …`` is parsed as the ``ffr`` command it launches;
- or **needs something this machine has not**, by program, with the reason (:data:`ELSEWHERE`):
  a Kubernetes cluster, a registry login, a served model, system packages.

A command of any other program fails the test: a new kind of command needs a decision here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ffr.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = ("bash", "sh", "shell", "console")
RUN_MARK = "<!-- docs-test: run -->"

# Programs whose commands need what a test here cannot have; the reason is the accounting.
ELSEWHERE = {
    "kubectl": "needs a Kubernetes cluster (the secrets and tokens of docs/kubeflow.md)",
    "podman": "needs a registry to log in to (make push is tested against a local registry by make image-test)",
    "curl": "asks a served model (the request formats are tests/integration/test_serving.py's)",
    "export": "sets a variable for the commands after it",
    "sudo": "installs system packages",
    "for": "shell loop syntax (its body is checked)",
    "done": "shell loop syntax",
}


def _blocks():
    """(file, line, marked for running, text) of every shell block."""
    for doc in DOCS:
        text = doc.read_text()
        for m in re.finditer(r"^( *)```(\w*)\n(.*?)^ *```", text, re.S | re.M):  # list items indent theirs
            if m.group(2) in SHELL:
                line = text[:m.start()].count("\n") + 1
                above = text[:m.start()].rstrip().splitlines()[-1:] or [""]
                yield (doc.relative_to(REPO).as_posix(), line, above[0].strip() == RUN_MARK,
                       textwrap.dedent(m.group(3)))


BLOCKS = list(_blocks())


def commands(block: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and prompt output
    dropped (a block of ``$ cmd`` lines shows output between them), ``;``-separated commands apart."""
    lines = block.splitlines()
    if any(line.startswith("$ ") for line in lines):
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    joined, out = "", []
    for line in lines:
        joined += line.strip() if joined else line.rstrip()
        if joined.endswith("\\"):
            joined = joined[:-1].rstrip() + " "
            continue
        text = _strip_comment(joined).strip()
        joined = ""
        for part in _outside_quotes(text, ";"):
            part = part.strip()
            if part and part not in ("do",):
                out.append(part[3:].strip() if part.startswith("do ") else part)
    return out


def _unquoted(line: str):
    """The positions of ``line`` outside quotes, with their characters."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        else:
            yield i, ch


def _strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` inside quotes stays)."""
    for i, ch in _unquoted(line):
        if ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def _outside_quotes(line: str, sep: str) -> list[str]:
    """``line`` split at each ``sep`` outside quotes."""
    cuts = [i for i, ch in _unquoted(line) if ch == sep]
    return [line[a + 1:b] for a, b in zip([-1, *cuts], [*cuts, len(line)])]


def _argv(command: str) -> list[str]:
    command = re.sub(r"<[^<>]*>", "PLACEHOLDER", command)  # <run id>, <tag>
    command = re.sub(r"\$\([^)]*\)", "VALUE", command)      # $(base64 -w0 photo.png)
    return shlex.split(command)


def check_ffr(argv: list[str]) -> None:
    """Parse ``ffr`` arguments as the CLI does; an elided command (``...``) is checked for its
    command and option names only."""
    parser = build_parser()
    if "..." in argv:
        sub = next(a for a in parser._actions if a.dest == "command").choices[argv[0]]
        known = {o for a in sub._actions for o in a.option_strings}
        unknown = [a.split("=")[0] for a in argv[1:] if a.startswith("--") and a.split("=")[0] not in known]
        assert not unknown, f"ffr {argv[0]} has no option {unknown}"
        return
    try:
        parser.parse_args(argv)
    except SystemExit as e:
        raise AssertionError(f"ffr {' '.join(argv)}: the parser refuses it (exit {e.code})") from None


def check(command: str) -> str:
    """Check one documented command without running it; returns what was done."""
    argv = _argv(command)
    program, args = argv[0], argv[1:]
    while "=" in program and not program.startswith("-") and args:  # VAR=value cmd
        program, args = args[0], args[1:]
    if program == "ffr":
        check_ffr(args)
        return "parsed"
    if program == "torchrun":
        module = args.index("-m")
        assert args[module + 1] == "ffr.cli", argv
        check_ffr(args[module + 2:])
        return "parsed"
    if program == "make":
        targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))
        wanted = [a for a in args if "=" not in a and not a.startswith("-")]
        assert wanted and set(wanted) <= targets, f"make {wanted}: the Makefile has {sorted(targets)}"
        return "make target"
    if program in ("dvc", "mlflow"):
        subs = []
        for a in args:
            if not re.fullmatch(r"[a-z][a-z-]*", a) or len(subs) == 2:
                break
            subs.append(a)
        exe = shutil.which(program, path=str(Path(sys.executable).parent)) or shutil.which(program)
        if exe is None:
            pytest.skip(f"{program} is not installed")
        out = subprocess.run([exe, *subs, "--help"], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "DVC_NO_ANALYTICS": "1"})
        assert out.returncode == 0, f"{program} {' '.join(subs)}: no such command ({out.stderr.strip()[-300:]})"
        return "subcommand"
    if program in ("python", "python3") and args[:1] == ["-c"]:
        compile(args[1], "<docs>", "exec")
        for module, name in re.findall(r"from ([\w.]+) import (\w+)", args[1]):
            assert hasattr(__import__(module, fromlist=[name]), name), f"{module} has no {name}"
        return "compiled"
    if program in ("python", "python3") and args[:1] == ["-m"]:
        __import__(args[1])
        return "imported"
    assert program in ELSEWHERE, f"no decision for a command of {program!r}: {command}"
    return ELSEWHERE[program]


def test_every_shell_block_is_found():
    total = sum(len(re.findall(r"^ *```(?:bash|sh|shell|console)\n", d.read_text(), re.M)) for d in DOCS)
    assert len(BLOCKS) == total >= 30 and {f for f, *_ in BLOCKS} >= {"README.md", "docs/kubeflow.md", "docs/tracking.md"}


@pytest.mark.parametrize("where, line, run, block", BLOCKS, ids=[f"{f}:{n}" for f, n, *_ in BLOCKS])
def test_every_documented_command_is_accounted_for(where, line, run, block, tmp_path):
    done = [(c, check(c)) for c in commands(block)]
    assert done, f"{where}:{line}: a shell block with no command"
    if not run:
        return
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(REPO)}
    for command, _ in done:
        out = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, f"{where}:{line}: `{command}` failed:\n{out.stderr[-2000:]}"


def test_the_checks_catch_what_they_are_for():
    """A renamed option, an unknown command, a missing make target and an unknown program fail."""
    for bad in ("ffr compare --no-such-option 1", "ffr no-such-command", "make no-such-target",
                "ffr train ... --no-such-option", "rsync a b"):
        with pytest.raises(AssertionError):
            check(bad)
    assert commands("a \\\n  b  # note\nc; d") == ["a b", "c", "d"]
    assert commands("python -c \"import x; x.y('#1')\"  # run") == ["python -c \"import x; x.y('#1')\""]
    assert commands("$ python3 -m ffr.revision\n0.1.0-abc\n") == ["python3 -m ffr.revision"]
