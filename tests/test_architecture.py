"""Standing promises of the code base: the core library imports no orchestration package, and
every registry key can be built."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"kfp", "mlflow", "dvc", "dvc_data", "boto3", "botocore", "s3transfer", "s3fs", "aiobotocore"}


def _module_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


# Packages that may import the orchestration and tracking libraries: the glue, kept at the edge.
EDGES = ("integrations",)  # Kubeflow too: ffr/integrations/kubeflow/


def _core_files():
    for path in (ROOT / "ffr").rglob("*.py"):
        if path.relative_to(ROOT / "ffr").parts[0] not in EDGES:
            yield path


def test_core_imports_no_orchestration_package():
    offenders = {}
    for path in _core_files():
        bad = _module_imports(path) & FORBIDDEN
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}, f"ffr core imports {offenders}; move that code to ffr/integrations/"


def _ffr_imports(path: Path) -> set[str]:
    """Every ``ffr...`` module ``path`` imports, at any depth of its code (lazy imports too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == "ffr")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("ffr"):
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


# The only modules outside ffr/integrations/kubeflow/ that may import it: the CLI's pipeline commands.
KUBEFLOW_USERS = {"ffr/cli/pipeline_cmds.py"}


def test_only_the_clis_pipeline_commands_import_the_kubeflow_package():
    """The library never reaches up into the Kubeflow layer (components, pipelines, launchers);
    only ``ffr run / compile / submit / schedule / upload`` do, lazily."""
    offenders = {}
    for path in (ROOT / "ffr").rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("ffr/integrations/kubeflow/") or rel in KUBEFLOW_USERS:
            continue
        bad = sorted(n for n in _ffr_imports(path) if n.startswith("ffr.integrations.kubeflow"))
        if bad:
            offenders[rel] = bad
    assert offenders == {}, f"imports of ffr.integrations.kubeflow outside the CLI's pipeline commands: {offenders}"


def test_the_installed_packages_claim_no_generic_names():
    """One top-level package, ``ffr``: no ``components`` or ``pipelines`` beside it in
    site-packages."""
    import tomllib

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert find["include"] == ["ffr*"]
    assert not (ROOT / "components").exists() and not (ROOT / "pipelines").exists()


def _module_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _top_level_imports(path: Path, known: set[str]) -> set[str]:
    """The ffr modules ``path`` imports when it is imported (module level, not inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in tree.body:
        if isinstance(node, ast.If):  # TYPE_CHECKING blocks do not run
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in out if n in known}


def test_the_module_imports_have_no_circles():
    files = {_module_of(p): p for p in (ROOT / "ffr").rglob("*.py")}
    graph = {m: _top_level_imports(p, set(files)) - {m} for m, p in files.items()}
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    # a package importing its own submodules (its face) is no circle of the design
    real = [c for c in cycles if not any(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c, c[1:]))]
    assert real == [], f"import circles: {real}"


def test_no_file_of_the_package_is_over_500_lines():
    long = {p.relative_to(ROOT).as_posix(): n for p in (ROOT / "ffr").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}, f"split these by what they do: {long}"


def test_importing_the_core_loads_none_of_them():
    """Not even indirectly: the integrations are reached lazily, when a URI or a tracker asks."""
    import subprocess
    import sys

    code = ("import sys, ffr.cli, ffr.experiment, ffr.steps, ffr.paths, ffr.tracker, ffr.data.manifest, ffr.runform\n"
            f"print(sorted(m for m in {sorted(FORBIDDEN)!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def _loop_fit_uses(path: Path) -> list[int]:
    """Lines of ``path`` that reach the training loop's ``fit``: ``from ffr.train.loop import fit``
    (under any name), or ``fit`` taken from a name bound to the ``ffr.train.loop`` module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    modules, lines = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "ffr.train.loop":
            lines += [node.lineno for a in node.names if a.name in ("fit", "*")]
        elif isinstance(node, ast.ImportFrom) and node.module == "ffr.train":
            modules |= {a.asname or a.name for a in node.names if a.name == "loop"}
        elif isinstance(node, ast.Import):
            modules |= {a.asname for a in node.names if a.name == "ffr.train.loop" and a.asname}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "fit" and isinstance(node.value, ast.Name) \
                and node.value.id in modules:
            lines.append(node.lineno)
    return sorted(lines)


DRIVER = ROOT / "ffr" / "train" / "stage.py"


def test_only_the_stage_driver_calls_the_training_loop():
    """The CLI, DVC, the components, torchrun's ranks and compare's cells all go through
    ffr.train.stage.run_stage; a second caller of fit() is a second stage driver. (benchmarks/
    and tests/ measure and test the loop itself.)"""
    callers = {}
    for folder in ("ffr",):
        for path in (ROOT / folder).rglob("*.py"):
            lines = _loop_fit_uses(path)
            if lines and path != DRIVER:
                callers[str(path.relative_to(ROOT))] = lines
    assert callers == {}, f"fit() called outside the stage driver: {callers}; call ffr.train.stage.run_stage"
    assert _loop_fit_uses(DRIVER), "the stage driver no longer calls fit(): update this test"


def test_the_fit_guard_catches_a_second_driver(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from ffr.train import loop\ndef go(m):\n    return loop.fit(m, 1, 2, 3, 4, 5)\n")
    assert _loop_fit_uses(f) == [3]
    f.write_text("def go(m):\n    from ffr.train.loop import fit as train\n    return train(m)\n")
    assert _loop_fit_uses(f) == [2]
    f.write_text("def go(clf, x, y):\n    return clf.fit(x, y)\n")  # scikit-learn's fit is not the loop
    assert _loop_fit_uses(f) == []


def test_importing_the_config_loads_no_torch():
    """Parsing a config (the CLI's help, a Kubeflow step's validation) must not pay for torch."""
    import subprocess
    import sys

    code = ("import sys, ffr.config, ffr.balance, ffr.data.sources, ffr.train.request, ffr.rules, ffr.runform, ffr.grid;"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_the_guard_catches_an_offender(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    import mlflow.pytorch\n")
    assert "mlflow" in _module_imports(f)


@pytest.mark.parametrize("name", __import__("ffr.train.backbones", fromlist=["BACKBONES"]).BACKBONES.names())
def test_every_backbone_builds_and_embeds(name):
    import torch

    from ffr.train.backbones import create_model

    model = create_model(name, 3).eval()
    size = 64 if name in ("resnet18", "resnet50") else 32
    with torch.inference_mode():
        x = torch.randn(2, 3, size, size)
        feats = model.embed(x)
        assert feats.shape == (2, model.feature_dim)
        assert model(x).shape == (2, 3)


def test_backbone_weights_from_local_file(tmp_path):
    import torch

    from ffr.train.backbones import create_model

    src = create_model("resnet18_small", 10)
    state = {k.removeprefix("features."): v for k, v in src.state_dict().items() if k.startswith("features.")}
    state["fc.weight"] = torch.zeros(1000, 512)  # a torchvision-style file carries its own classifier
    torch.save(state, tmp_path / "w.pt")
    model = create_model("resnet18_small", 2, weights=tmp_path / "w.pt")
    assert torch.equal(model.features.conv1.weight, src.features.conv1.weight)
    torch.save({"nonsense.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not fit backbone"):
        create_model("resnet18_small", 2, weights=tmp_path / "bad.pt")
