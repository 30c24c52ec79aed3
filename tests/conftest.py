"""Shared fixtures: tiny datasets written to disk in the real manifest format."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ffr.data.manifest import DatasetCard, Manifest
from helpers import write_png


def pytest_collection_modifyitems(config, items):
    """Every test under tests/integration/ is in the ``integration`` tier (real servers)."""
    for item in items:
        if "integration" in Path(str(item.fspath)).relative_to(Path(__file__).parent).parts[:-1]:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _no_stale_log_handlers():
    """Drop logging handlers whose stream an earlier test's output capture has closed (a library
    that configured logging in-process, the KFP local runner's, holds pytest's capture file of
    that test). Logged to, such a handler prints "--- Logging error --- Traceback" into the
    current test's stderr, which tests that assert no traceback reach the user would misread; a
    command run by a user has no such handler."""
    import logging

    for logger in [logging.getLogger(), *[lg for lg in logging.Logger.manager.loggerDict.values()
                                          if isinstance(lg, logging.Logger)]]:
        for handler in list(logger.handlers):
            if getattr(getattr(handler, "stream", None), "closed", False):
                logger.removeHandler(handler)
    yield


@pytest.fixture(autouse=True)
def _no_inherited_tracking_uri(monkeypatch):
    """Every test starts without ``$MLFLOW_TRACKING_URI`` and leaves none behind.
    ``mlflow.set_tracking_uri`` writes the variable into ``os.environ`` (so that subprocesses
    inherit it); without this a test that tracked to a server would make every later command
    whose default reads the variable (``ffr run --mlflow``) use that server."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        mlflow.set_tracking_uri(None)  # the module's own global too, not only the variable


@pytest.fixture
def card() -> DatasetCard:
    return DatasetCard(name="toy", classes=["cat", "dog"], bias_values=["indoor", "outdoor"],
                       majority_bias={"cat": "indoor", "dog": "outdoor"})


@pytest.fixture
def make_dataset(tmp_path, card):
    """``make_dataset({(split, label, bias): n, ...})`` writes PNGs + manifest + card and
    returns the dataset directory."""

    def make(counts: dict, name: str = "ds"):
        root = tmp_path / name
        rows, seed = [], 0
        for (split, label, bias), n in counts.items():
            for i in range(n):
                rel = f"{split}/{label}/{bias}/{i:04d}.png"
                write_png(root / rel, seed)
                seed += 1
                rows.append({"path": rel, "label": label, "bias": bias, "split": split, "source": "real"})
        Manifest.from_records(rows, card, root).save(root)
        return root

    return make
