"""What the command families share: the config and tracking options, the MLflow run a command
reports to, and small output helpers."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path


def config_parent() -> argparse.ArgumentParser:
    """``--config FILE`` and ``--set KEY=VALUE``: an experiment config (:mod:`ffr.config`)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", help="YAML file overriding the defaults")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (dotted, e.g. finetune.lr=1e-4); repeatable")
    return p


def tracking_parent() -> argparse.ArgumentParser:
    """``--mlflow [URI]``, ``--experiment``, ``--run-name``: where a command reports."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--mlflow", nargs="?", const="local", default=os.environ.get("MLFLOW_TRACKING_URI"),
                   metavar="URI", help="log to MLflow: a tracking URI (http://host:5000, sqlite:///x.db), or no "
                                       "value for a local store in the output folder (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--experiment", default="ffr", help="MLflow experiment name")
    p.add_argument("--run-name", help="MLflow run name")
    return p


@contextlib.contextmanager
def tracker(args, default_name: str, out_dir):
    """The MLflow run the command reports to, or None without ``--mlflow`` (and on every rank but
    the first under ``torchrun``: one run per command)."""
    if not getattr(args, "mlflow", None) or os.environ.get("RANK", "0") != "0":
        yield None
        return
    from ffr.integrations.mlflow_runs import mlflow_run, ui_link
    from ffr.integrations.mlflow_server import source_tags
    from ffr.integrations.mlflow_server import local_store
    from ffr.paths import redact_uri

    uri, artifacts = (local_store(out_dir) if args.mlflow == "local" else (args.mlflow, None))
    command = getattr(args, "command", None) or default_name
    with mlflow_run(uri, args.experiment, args.run_name or default_name, artifact_location=artifacts,
                    tags={"ffr.command": " ".join(sys.argv[1:3]), "ffr.pipeline": command,
                          **source_tags(f"ffr {command}")}) as t:
        print(f"MLflow run {t.run_id} at {redact_uri(uri)}", file=sys.stderr)
        experiment_id = t.client.get_run(t.run_id).info.experiment_id
        yield t
    link = ui_link(uri, experiment_id)
    if args.mlflow == "local":
        print(f"MLflow UI: mlflow ui --backend-store-uri {uri} --port 5000  (then open {link})")
    else:
        print(f"MLflow UI: {redact_uri(link)}", file=sys.stderr)


def registry_uri(args) -> str:
    """The MLflow store holding the model registry: ``--mlflow-dir RUN_DIR``'s local store, else
    ``--mlflow`` (default ``$MLFLOW_TRACKING_URI``)."""
    from ffr.integrations.mlflow_server import local_store

    if args.mlflow_dir and not (Path(args.mlflow_dir) / "mlflow.db").is_file():
        raise ValueError(f"--mlflow-dir {args.mlflow_dir}: no MLflow store there (mlflow.db); name the folder of a "
                         "run that tracked into its own store (ffr run's run folder)")
    uri = local_store(args.mlflow_dir)[0] if args.mlflow_dir else args.mlflow
    if not uri:
        raise ValueError("no MLflow registry: pass --mlflow URI (or set MLFLOW_TRACKING_URI) or --mlflow-dir RUN_DIR")
    return uri


def write_csv(path, rows: list[dict]) -> None:
    """``rows`` as a CSV file (what ``dvc plots`` draws)."""
    import pandas as pd

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def split_counts(m) -> dict:
    """Images per group of each split of manifest ``m``, for :func:`ffr.data.splits.format_group_counts`."""
    return {s: m.select(split=s).group_counts() for s in ("train", "val", "test")}
