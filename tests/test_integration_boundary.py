"""The core library imports no tracking / orchestration / cloud package: only ffr/integrations may."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import ffr

EXTERNAL = {"mlflow", "dvc", "dvc_data", "boto3", "botocore", "s3transfer", "kfp"}
ROOT = Path(ffr.__file__).parent


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_core_module_imports_an_external_service_package():
    offenders = {}
    for path in ROOT.rglob("*.py"):
        if "integrations" in path.relative_to(ROOT).parts:
            continue
        bad = _imports(path) & EXTERNAL
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders, f"core modules importing {sorted(EXTERNAL)}: {offenders}"


def test_importing_the_core_loads_none_of_them():
    code = ("import sys, ffr.cli, ffr.experiment, ffr.stages, ffr.paths, ffr.tracking, ffr.data.manifest\n"
            f"print(sorted(m for m in {sorted(EXTERNAL)!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT.parent).stdout.strip()
    assert out == "[]"
