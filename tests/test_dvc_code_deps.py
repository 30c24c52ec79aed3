"""The code deps of dvc.yaml's stages against the imports of the code they list: every listed module's
top-level ffr imports, and those of the CLI function the stage's command runs, are listed too (the
lazy imports inside other functions are not followed: the lists were taken from the modules the
commands import when run). tests/integration/test_dvc.py checks that `dvc status` sees an edit."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _module_files(name: str) -> set[str]:
    """The files of module ``name`` and of the packages above it, ffr/__init__.py aside."""
    parts, files = name.split("."), set()
    for i in range(2, len(parts) + 1):
        p = Path(*parts[:i])
        files |= {f.as_posix() for f in (p / "__init__.py", p.with_suffix(".py")) if (REPO / f).is_file()}
    return files


def _ffr_imports(statements) -> set[str]:
    files = set()
    for n in statements:
        if isinstance(n, ast.Import):
            names = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom) and n.module and not n.level:
            names = [n.module] + [f"{n.module}.{a.name}" for a in n.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "ffr":
                files |= _module_files(name)
    return files


def _code_deps(stage: dict) -> set[str]:
    return {d for d in stage.get("deps", []) if d.startswith("ffr/")}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_lists_the_modules_its_command_imports(name):
    deps = _code_deps(STAGES[name])
    assert {"ffr/cli.py", "ffr/config.py"} <= deps
    assert all((REPO / d).exists() for d in deps), sorted(d for d in deps if not (REPO / d).exists())
    command = STAGES[name]["cmd"].split()[1]
    cli = ast.parse((REPO / "ffr" / "cli.py").read_text())
    func = next(n for n in cli.body if isinstance(n, ast.FunctionDef) and n.name == f"cmd_{command}")
    wanted = _ffr_imports(ast.walk(func))
    for dep in sorted(d for d in deps if d.endswith(".py")):
        wanted |= _ffr_imports(ast.parse((REPO / dep).read_text()).body)
    assert wanted <= deps, f"{name}: imported but not in its deps: {sorted(wanted - deps)}"


def _by_name(module: str) -> set[str]:
    """The files of ``module`` and of its top-level ffr imports: what loading it by name reads."""
    files = _module_files(module)
    path = REPO / (module.replace(".", "/") + ".py")
    return files | _ffr_imports(ast.parse(path.read_text()).body)


def test_the_stages_list_the_modules_loaded_by_name():
    """The built-in benchmarks' builders (``ffr.data.builtin``) and generators (the procedural
    backend's ``BENCHMARK_GENERATORS``) are imported by name, which the import walk above cannot
    see: editing one must still rerun the stage that runs it."""
    from ffr.data.builtin import BENCHMARKS
    from ffr.synthesis.procedural import BENCHMARK_GENERATORS

    builders = set().union(*(_by_name(b.module) for b in BENCHMARKS.values()))
    generators = set().union(*(_by_name(m) for m, _ in BENCHMARK_GENERATORS.values()))
    assert builders <= _code_deps(STAGES["prepare"]), sorted(builders - _code_deps(STAGES["prepare"]))
    assert builders | generators <= _code_deps(STAGES["synthesize"]), \
        sorted((builders | generators) - _code_deps(STAGES["synthesize"]))


def test_each_stage_depends_on_its_own_code_only():
    """Editing the synthesis code reruns synthesize (and, through its output, what reads it), not
    the training stages directly; the training code is not a dependency of the data stages."""
    for name, stage in STAGES.items():
        deps = _code_deps(stage)
        assert any(d.startswith("ffr/synthesis/") for d in deps) == (name == "synthesize"), name
        assert ("ffr/train/loop.py" in deps) == (name in {"pretrain", "finetune", "evaluate"}), name
