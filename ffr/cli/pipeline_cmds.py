"""``ffr run / compile / submit / schedule / upload``: the Kubeflow pipelines, run locally by the KFP
local runner, compiled, or sent to a Kubeflow Pipelines endpoint. The only commands that import
:mod:`ffr.integrations.kubeflow` (and so kfp), lazily, when they run. Their ``--param`` values are checked as
the pipelines' first step checks the run form (:mod:`ffr.runform`) before anything is compiled or
sent."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _platform(args):
    """Cluster settings from the command line (the kfp glue in ``ffr.integrations.kubeflow.pipelines`` is imported lazily:
    the core package never imports kfp)."""
    from ffr.integrations.kubeflow.components.image import base_image
    from ffr.integrations.kubeflow.pipelines.platform import Platform, parse_node_selector, parse_shm_size, parse_toleration
    from ffr.rules import require

    require("parallelism", args.parallelism, "--parallelism")
    return Platform(image=base_image(args.image or os.environ.get("FFR_IMAGE", "").strip() or None), gpu=args.gpu, accelerator_type=args.accelerator_type, accelerator_limit=args.accelerator_limit,
                    node_selector=parse_node_selector(args.node_selector),
                    tolerations=[parse_toleration(t) for t in args.toleration],
                    shm_size=parse_shm_size(args.shm_size), parallelism=args.parallelism)


def cmd_run(args) -> int:
    from ffr.integrations.kubeflow.pipelines.run import main_table, parse_params, run_local

    inherited = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow = args.mlflow
    if mlflow == "env":
        if not inherited:
            raise ValueError("--mlflow env: $MLFLOW_TRACKING_URI is not set")
        mlflow = inherited
    elif inherited and mlflow == "local":
        from ffr.paths import redact_uri

        print(f"ffr: MLFLOW_TRACKING_URI ({redact_uri(inherited)}) is set but not used: this run tracks into its "
              "own folder's store; pass --mlflow env (or --mlflow URI) to use that server", file=sys.stderr)
    run = run_local(args.pipeline, parse_params(args.param), args.runs_dir, progress=not args.quiet,
                    mlflow=None if mlflow == "none" else mlflow)
    print()
    print(main_table(run))
    return 0


def cmd_compile(args) -> int:
    platform = _platform(args)
    from ffr.integrations.kubeflow.pipelines.definitions import get_pipeline
    from ffr.integrations.kubeflow.pipelines.run import compile_pipeline, parse_params, typed_params

    params = typed_params(args.pipeline, get_pipeline(args.pipeline, platform), parse_params(args.param))
    out = compile_pipeline(args.pipeline, args.out or f"{args.pipeline}-pipeline.yaml", platform, params)
    print(f"pipeline {args.pipeline!r} compiled to {out}"
          + (f" (defaults set: {', '.join(f'{k}={json.dumps(v)}' for k, v in params.items())})" if params else ""))
    return 0


def cmd_submit(args) -> int:
    platform = _platform(args)
    from ffr.integrations.kubeflow.pipelines.cluster import Credentials, submit
    from ffr.integrations.kubeflow.pipelines.run import parse_params

    run_id = submit(args.host, args.pipeline, parse_params(args.param), args.experiment, args.run_name, platform,
                    args.namespace, Credentials.from_args(args))
    print(f"run {run_id} created on {args.host}")
    return 0


def cmd_schedule(args) -> int:
    platform = _platform(args)
    from ffr.integrations.kubeflow.pipelines.cluster import Credentials, schedule
    from ffr.integrations.kubeflow.pipelines.run import parse_params

    job_id = schedule(args.host, args.cron, args.pipeline, parse_params(args.param), args.experiment, args.name,
                      platform, args.namespace, credentials=Credentials.from_args(args))
    print(f"recurring run {job_id} created on {args.host} (cron {args.cron!r})")
    return 0


def cmd_upload(args) -> int:
    platform = _platform(args)
    from ffr.integrations.kubeflow.pipelines.cluster import Credentials, upload

    up = upload(args.host, args.pipeline, args.name, args.version, args.description, platform, args.namespace,
                Credentials.from_args(args))
    what = "created with its first version" if up.created else "has a new version"
    print(f"pipeline {up.pipeline_name!r} ({up.pipeline_id}) {what} {up.version_name!r} ({up.version_id}) "
          f"on {args.host}")
    if up.warning:
        print(f"ffr: warning: {up.warning}", file=sys.stderr)
    return 0


class _PipelineHelp(argparse.Action):
    """``-h/--help`` of ``ffr run`` and ``ffr compile``: the usual help, then the parameters of the
    pipeline named before it, with defaults and descriptions. Listing them builds the pipeline
    (seconds, kfp), so it happens only when help is asked for, never for the other commands."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from ffr.integrations.kubeflow.pipelines.definitions import get_pipeline
        from ffr.integrations.kubeflow.pipelines.parameters import format_parameters

        name = getattr(namespace, "pipeline", None) or "ffr"
        try:
            pipeline = get_pipeline(name)
        except KeyError as e:
            parser.error(e.args[0])
        parser.print_help()
        print()
        print(format_parameters(name, pipeline, parser.prog))
        parser.exit()


def _pipeline_help(p: argparse.ArgumentParser) -> None:
    p.add_argument("-h", "--help", action=_PipelineHelp,
                   help="show this help and the pipeline's parameters (defaults, descriptions), then exit")


def _pipeline_parent(default: str = "ffr") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("pipeline", nargs="?", default=default, help=f"ffr, comparison or retrain (default {default})")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="pipeline parameter (value parsed as YAML, e.g. train_pretrain_epochs=5); repeatable; "
                        "'ffr run PIPELINE --help' lists them")
    return p


def _cluster_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--gpu", action="store_true", help="request accelerators for synthesis and training")
    p.add_argument("--accelerator-type", default="nvidia.com/gpu")
    p.add_argument("--accelerator-limit", type=int, default=1, help="accelerators per GPU step (default 1)")
    p.add_argument("--node-selector", action="append", default=[], metavar="LABEL=VALUE",
                   help="schedule synthesis and training on nodes with this label; repeatable")
    p.add_argument("--toleration", action="append", default=[], metavar="KEY[=VALUE][:EFFECT]",
                   help="let synthesis and training run on nodes with this taint, e.g. nvidia.com/gpu:NoSchedule; "
                        "repeatable")
    p.add_argument("--shm-size", default="4Gi", metavar="SIZE",
                   help="memory-backed /dev/shm of the training steps (torchrun, data-loader workers); 0: none "
                        "(default 4Gi)")
    p.add_argument("--parallelism", type=int, default=0, metavar="N",
                   help="at most N iterations of each fan-out (synthesis shards, baselines) at once (default 0: no cap)")
    p.add_argument("--image", help="component image: a repository (tagged <version>-<git revision>, pinned to the "
                                   "digest `make push` recorded) or a reference with tag; default $FFR_IMAGE or "
                                   "ghcr.io/ffr-project/ffr")
    return p


def _endpoint_parent(experiment: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--host", required=True, help="Kubeflow Pipelines API URL, e.g. http://localhost:8080")
    if experiment:
        p.add_argument("--experiment", default="ffr")
    p.add_argument("--namespace", help="Kubeflow profile namespace (multi-user clusters)")
    a = p.add_argument_group("authentication (multi-user clusters; at most one, a flag wins over the environment)")
    a.add_argument("--token", help="bearer token (default $KF_PIPELINES_TOKEN, which keeps it out of the process list)")
    a.add_argument("--sa-token-path", metavar="FILE", help="service-account token file (default "
                   "$KF_PIPELINES_SA_TOKEN_PATH, else /var/run/secrets/kubeflow/pipelines/token in a Kubeflow pod)")
    a.add_argument("--cookie", help="auth session cookie from Dex / oauth2-proxy, e.g. 'authservice_session=...' "
                                    "(default $KF_PIPELINES_COOKIE)")
    return p


def add_parsers(sub) -> None:
    """``run``, ``compile``, ``submit``, ``schedule``, ``upload``."""
    p = sub.add_parser("run", parents=[_pipeline_parent()], add_help=False,
                       help="run a Kubeflow pipeline locally (KFP local runner, no cluster); print its group metrics")
    _pipeline_help(p)
    p.add_argument("--runs-dir", default="runs", help="each run gets a new folder <runs-dir>/<pipeline>-<timestamp>/")
    p.add_argument("--quiet", action="store_true", help="print only the final table (the log is in the run folder)")
    p.add_argument("--mlflow", default="local", metavar="URI",
                   help="MLflow tracking + registry: 'local' (default) keeps a store in the run folder; a server "
                        "URI; 'env' for $MLFLOW_TRACKING_URI (never used without this flag); or 'none'")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("compile", parents=[_pipeline_parent(), _cluster_parent()], add_help=False,
                       help="write a pipeline's YAML (--param sets a parameter's default in it)")
    _pipeline_help(p)
    p.add_argument("--out", help="output file (default <pipeline>-pipeline.yaml)")
    p.set_defaults(func=cmd_compile)
    p = sub.add_parser("submit", parents=[_pipeline_parent(), _cluster_parent(), _endpoint_parent()],
                       help="create a run on a Kubeflow Pipelines endpoint")
    p.add_argument("--run-name")
    p.set_defaults(func=cmd_submit)
    p = sub.add_parser("schedule", parents=[_pipeline_parent("retrain"), _cluster_parent(), _endpoint_parent()],
                       help="create a recurring run (scheduled retraining) on a Kubeflow Pipelines endpoint")
    p.add_argument("--cron", required=True,
                   help="6 fields: second minute hour day-of-month month day-of-week, e.g. '0 0 3 * * *'")
    p.add_argument("--name", help="recurring run name")
    p.set_defaults(func=cmd_schedule)
    p = sub.add_parser("upload", parents=[_cluster_parent(), _endpoint_parent(experiment=False)],
                       help="upload a pipeline (or a new version of it) to a Kubeflow Pipelines endpoint's UI")
    p.add_argument("pipeline", nargs="?", default="ffr", help="ffr, comparison or retrain (default ffr)")
    p.add_argument("--name", help="pipeline name in the UI (default the pipeline's own: ffr, ffr-comparison, ...)")
    p.add_argument("--version", help="version name when the pipeline exists (default <ffr version>-<UTC time>)")
    p.add_argument("--description")
    p.set_defaults(func=cmd_upload)

