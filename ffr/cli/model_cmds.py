"""``ffr promote`` and ``ffr serve``: the MLflow model registry — a trained model registered as the
challenger and the promotion gate applied; a registered model served over HTTP."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ffr.cli.common import registry_uri


def cmd_promote(args) -> int:
    from ffr.integrations import model_registry as registry
    from ffr.promotion import Evaluation, GatePolicy

    uri = registry_uri(args)
    if args.history:
        return _print_history(registry.history(uri, args.name))
    if args.rollback:
        was, now = registry.rollback(uri, args.name, {"command": "ffr promote --rollback"})
        print(f"{args.name}@{registry.CHAMPION} -> version {now} (rolled back from version {was})")
        return 0
    policy = GatePolicy(args.margin, args.tolerance, args.floor).check(
        {"margin": "--margin", "tolerance": "--tolerance", "floor": "--floor"})
    context = {"command": "ffr promote"}
    if args.version is None:
        lineage = {}
        for item in args.lineage:
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise ValueError(f"--lineage expects KEY=VALUE, got {item!r}")
            lineage[key] = value
        if args.run_id:
            model_uri, evaluation, found, run_id = registry.from_run(uri, args.run_id)
            lineage = {**found, **lineage}
        else:
            if not (args.model_uri and args.evaluation):
                raise ValueError("pass --run-id, or --model-uri with --evaluation, or --version")
            evaluation = Evaluation.from_metrics(_read_evaluation(args.evaluation))
            model_uri, run_id = args.model_uri, None
        version, decision = registry.register_and_gate(uri, args.name, model_uri, evaluation, lineage, policy, run_id,
                                                       args.data, args.device, context)
        print(f"registered {args.name} version {version} (alias {registry.CHALLENGER}) from {model_uri}")
    else:
        version, decision = args.version, registry.promote(uri, args.name, args.version, policy, args.data,
                                                           args.device, context)
    print(f"gate for {args.name} version {version}: {decision.summary}")
    if decision.promote:
        print(f"{args.name}@{registry.CHAMPION} -> version {version}  (load: models:/{args.name}@{registry.CHAMPION})")
        return 0
    # A decision, not an error: exit 1 so that a scheduled job or a CI step can act on it.
    print(f"{args.name}@{registry.CHAMPION} unchanged: version {version} was "
          f"{'refused' if decision.refused else 'not promoted'}", file=sys.stderr)
    return 1


def _read_evaluation(path: str) -> dict:
    """An evaluation file (``ffr evaluate --out``); a file that is not one is an error naming it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--evaluation {path}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--evaluation {path}: not an evaluation (ffr evaluate --out writes one)")
    return data


def _print_history(records: list[dict]) -> int:
    """The decision history, one line a decision, oldest first."""
    if not records:
        print("no decisions yet")
        return 0
    for r in records:
        def wga(side):
            e = r.get(side)
            return "-" if not e else f"{e['worst_group_acc']:.4f} on {str(e['test_digest'])[:12]}"
        where = r.get("pipeline_run_id") or r.get("command") or ""
        print(f"{r['time']}  {r['action']:<8} version {r['version']:<4} {r['verdict']:<9} champion before: "
              f"{r.get('champion_version') or '-':<4} challenger {wga('challenger')}, champion {wga('champion')}  "
              f"{where}")
        for reason in r.get("reasons") or []:
            print(f"    {reason}")
    return 0


def cmd_serve(args) -> int:
    from ffr.integrations.serving import curl_example, resolve_version, serve
    from ffr.paths import redact_uri

    uri = registry_uri(args)
    alias = None if args.version else args.alias
    version = resolve_version(uri, args.name, alias, args.version)
    print(f"serving {args.name} version {version} from {redact_uri(uri)} on http://{args.host}:{args.port}/invocations",
          flush=True)
    print(f"  ask it: {curl_example(args.host, args.port)}", flush=True)
    return serve(uri, args.name, alias, version, args.host, args.port, args.workers)


def add_parsers(sub) -> None:
    """``promote`` and ``serve``."""
    from ffr.promotion import GATE_FLOOR, GATE_MARGIN, GATE_TOLERANCE

    p = sub.add_parser("promote", help="register a trained model as the challenger and run the promotion gate")
    p.add_argument("--mlflow", default=os.environ.get("MLFLOW_TRACKING_URI"), metavar="URI",
                   help="tracking server / store holding the registry (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--mlflow-dir", metavar="RUN_DIR", help="use the local store of a run folder instead")
    p.add_argument("--name", required=True, help="registered model name")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--history", action="store_true", help="list every gate decision and rollback, oldest first")
    src.add_argument("--rollback", action="store_true",
                     help="move @champion back to the version the current champion replaced (recorded as a decision)")
    src.add_argument("--run-id", help="MLflow run (pipeline, compare cell or stage) whose model and test evaluation to register")
    src.add_argument("--model-uri", help="model to register (runs:/..., models:/...), with --evaluation")
    src.add_argument("--version", help="re-run the gate for an existing version")
    p.add_argument("--evaluation", help="test metrics JSON written by `ffr evaluate --out`")
    p.add_argument("--data", metavar="DIR", help="the prepared dataset whose test split the challenger was evaluated "
                                                 "on: the champion is evaluated there too before the gate (needed "
                                                 "when the champion was evaluated on other test data)")
    p.add_argument("--device", default="auto", help="where the champion is evaluated (default auto)")
    p.add_argument("--lineage", action="append", default=[], metavar="KEY=VALUE", help="extra lineage tag; repeatable")
    p.add_argument("--margin", type=float, default=GATE_MARGIN, help="required worst-group accuracy gain (fraction)")
    p.add_argument("--tolerance", type=float, default=GATE_TOLERANCE,
                   help="largest allowed drop of any group's accuracy")
    p.add_argument("--floor", type=float, default=GATE_FLOOR, help="worst-group accuracy every champion must reach")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("serve", help="serve a registered model (default @champion) over HTTP: images in, class out")
    p.add_argument("name", help="registered model name")
    p.add_argument("--alias", default="champion", help="the alias to serve (default champion)")
    p.add_argument("--version", help="serve this version instead of an alias")
    p.add_argument("--mlflow", default=os.environ.get("MLFLOW_TRACKING_URI"), metavar="URI",
                   help="tracking server / store holding the registry (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--mlflow-dir", metavar="RUN_DIR", help="use the local store of a run folder instead")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5001)
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_serve)

