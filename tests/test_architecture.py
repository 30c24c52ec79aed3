"""Standing promises of the code base: the core library imports no orchestration package, and
every registry key can be built."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"kfp", "mlflow", "dvc", "dvc_data", "boto3", "botocore", "s3transfer"}


def _module_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_imports_no_orchestration_package():
    offenders = {}
    for path in (ROOT / "ffr").rglob("*.py"):
        if "integrations" in path.relative_to(ROOT / "ffr").parts:
            continue
        bad = _module_imports(path) & FORBIDDEN
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}, f"ffr core imports {offenders}; move that code to ffr/integrations/"


def test_importing_the_core_loads_none_of_them():
    """Not even indirectly: the integrations are reached lazily, when a URI or a tracker asks."""
    import subprocess
    import sys

    code = ("import sys, ffr.cli, ffr.experiment, ffr.stages, ffr.paths, ffr.tracking, ffr.data.manifest\n"
            f"print(sorted(m for m in {sorted(FORBIDDEN)!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


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
