"""``ffr`` — the command line. The same entry points serve people, DVC stages and components."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path


def _config_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", help="YAML file overriding the defaults")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (dotted, e.g. finetune.lr=1e-4); repeatable")
    return p


def _tracking_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--mlflow", nargs="?", const="local", default=os.environ.get("MLFLOW_TRACKING_URI"),
                   metavar="URI", help="log to MLflow: a tracking URI (http://host:5000, sqlite:///x.db), or no "
                                       "value for a local store in the output folder (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--experiment", default="ffr", help="MLflow experiment name")
    p.add_argument("--run-name", help="MLflow run name")
    return p


@contextlib.contextmanager
def _tracker(args, default_name: str, out_dir):
    """The MLflow run the command reports to, or None without ``--mlflow`` (and on every rank but
    the first under ``torchrun``: one run per command)."""
    if not getattr(args, "mlflow", None) or os.environ.get("RANK", "0") != "0":
        yield None
        return
    from ffr.integrations.mlflow_tracking import local_store, mlflow_run, redact_uri

    uri, artifacts = (local_store(out_dir) if args.mlflow == "local" else (args.mlflow, None))
    with mlflow_run(uri, args.experiment, args.run_name or default_name, artifact_location=artifacts,
                    tags={"ffr.command": " ".join(sys.argv[1:3])}) as tracker:
        print(f"MLflow run {tracker.run_id} at {redact_uri(uri)}", file=sys.stderr)
        yield tracker
    if args.mlflow == "local":
        print(f"MLflow UI: mlflow ui --backend-store-uri {uri} --port 5000  (then open http://127.0.0.1:5000)")


def cmd_data_demo(args) -> int:
    from ffr.data.builtin import BENCHMARKS
    from ffr.data.manifest import format_group_counts

    bench = BENCHMARKS[args.name]
    m = bench.build(args.out, {"seed": args.seed} if args.seed is not None else {})
    print(f"{bench.name} benchmark: {len(m)} real images in {Path(args.out).resolve()}")
    print(format_group_counts({s: m.select(split=s).group_counts() for s in ("train", "val", "test")}))
    return 0


def cmd_data_validate(args) -> int:
    from ffr.data.manifest import Manifest, format_group_counts

    m = Manifest.load(args.manifest, check_files="decode" if not args.no_files else False)
    print(f"{args.manifest}: OK, {len(m)} rows")
    print(format_group_counts({s: m.select(split=s).group_counts() for s in ("train", "val", "test")}))
    return 0


def cmd_data_import(args) -> int:
    from ffr.config import parse_set
    from ffr.data.sources import load_dataset
    from ffr.data.manifest import format_group_counts

    options = dict(parse_set(o) for o in args.option)
    if args.no_files:
        options["check_files"] = False
    m = load_dataset(args.adapter, args.source, **options)
    path = m.save(args.out)
    print(f"{args.adapter}: {len(m)} images → {path}")
    print(format_group_counts({s: m.select(split=s).group_counts() for s in ("train", "val", "test")}))
    return 0


def cmd_data_split(args) -> int:
    from ffr.data.manifest import Manifest
    from ffr.data.splits import bias_rate_split

    m = Manifest.load(args.manifest)
    out, report = bias_rate_split(m, args.bias_rate, args.seed, args.min_val_per_group)
    out_dir = Path(args.out)
    out.save(out_dir)
    report.save(out_dir / "split_report.json")
    print(report.format())
    return 0


_STAGE_CACHE_HELP = ("where trained stages are kept and looked up by key (default: OUT/stages); give two "
                     "grids over the same data one folder and the second trains only the stages the first did not")


def cmd_compare(args) -> int:
    from ffr.config import load_config
    from ffr.experiment import compare, stage_cache_dir
    from ffr.results.tables import markdown_table

    cfg = load_config(args.config, args.set)
    stage_cache = stage_cache_dir(args.stage_cache)  # checked before a tracking run is opened
    with _tracker(args, "compare", args.out) as tracker:
        records = compare(cfg, args.out, progress=not args.quiet, workers=args.workers, tracker=tracker,
                          verify=args.verify, stage_cache=stage_cache)
    print()
    print(markdown_table(records))
    print(f"\nresults: {Path(args.out).resolve() / 'results.json'}")
    return 0


def cmd_sweep(args) -> int:
    from ffr.config import load_config
    from ffr.experiment import stage_cache_dir, sweep
    from ffr.results.tables import markdown_table, wga_pivot

    cfg = load_config(args.config, args.set)
    stage_cache = stage_cache_dir(args.stage_cache)
    if args.dry_run:
        from ffr.checks import check_sweep
        from ffr.config import with_overrides
        from ffr.experiment import grid_cost, prepare_real
        from ffr.grid import search_budget

        check_sweep(cfg)  # what the run would refuse, the dry run refuses
        for name, overrides in (cfg.datasets or {"": {}}).items():
            eff = with_overrides(cfg, dict(overrides or {}))
            cost = grid_cost(eff, prepare_real(eff, Path(args.out) / name))
            print(f"{name or 'grid'}: {cost['cells']} cells, {cost['trained_stages']} trained stages, "
                  f"{cost['train_images']:,} training and {cost['val_images']:,} validation image passes")
            for objective, counts in search_budget(eff).items():
                print(f"  search candidates ({objective}): " + ", ".join(f"{s} {n}" for s, n in counts.items()))
        if stage_cache is not None:
            held = sum(1 for _ in stage_cache.glob("*/model.pt.json")) if stage_cache.is_dir() else 0
            print(f"(every stage counted; {stage_cache} holds {held} trained stages, and those this grid shares "
                  "are loaded, not trained)")
        return 0
    records = sweep(cfg, args.out, progress=not args.quiet, plots=not args.no_plots, workers=args.workers,
                    stage_cache=stage_cache)
    print()
    print(markdown_table(records))
    print()
    print(wga_pivot(records))
    print(f"\nresults: {Path(args.out).resolve() / 'results.json'}")
    return 0


def cmd_probe_domain_gap(args) -> int:
    from ffr.data.manifest import Manifest
    from ffr.probes import domain_gap

    real = Manifest.load(args.real).select(split=args.split, source="real")
    synth = Manifest.load(args.synthetic).select(source="synthetic")
    if args.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {args.epochs}")
    result = domain_gap(real, synth, image_size=args.image_size, seed=args.seed, epochs=args.epochs)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    print(f"domain gap (real vs synthetic accuracy): {result['accuracy']:.3f}")
    return 0


def cmd_probe_shortcut(args) -> int:
    from ffr.data.manifest import Manifest
    from ffr.probes import cells_from_results, format_shortcut, probe_checkpoint, summarize_shortcut
    from ffr.train.runtime import resolve_device

    models = list(args.model)
    if args.from_results:
        where = {k: v.split(",") for k, v in (w.split("=", 1) for w in args.where)}
        models += cells_from_results(args.from_results, where)
    if not models:
        raise ValueError("give --model and/or --from-results")
    parts = [Manifest.load(d) for d in args.manifest]
    m = Manifest.concat(parts) if len(parts) > 1 else parts[0]
    real = m.frame["source"] == "real"
    m = Manifest(m.frame[~real | (m.frame["split"] == args.split)], m.card, m.root)
    device = resolve_device(args.device)
    results = [probe_checkpoint(ckpt, m, device, args.seed, args.cache) for ckpt in models]
    text = json.dumps(results if len(results) > 1 else results[0], indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    print()
    print(format_shortcut(results))
    if len(results) > 1:
        print()
        print(summarize_shortcut(results))
    if args.plot:
        from ffr.results.plots import plot_shortcut

        print(f"plot: {plot_shortcut(results, args.plot, args.title or '')}")
    return 0


def _synthesis_counts(args, card) -> dict:
    """Images per group from --per-group, --count GROUP=N, or --real + --strategy; --group restricts."""
    from ffr.data.manifest import group_key

    keys = {group_key(*g): g for g in card.groups}

    def group(name):
        if name not in keys:
            raise ValueError(f"unknown group {name!r}; groups of card {card.name!r}: {sorted(keys)}")
        return keys[name]

    if args.count:
        counts = {}
        for item in args.count:
            name, eq, n = item.rpartition("=")
            if not eq or not n.strip().isdigit():
                raise ValueError(f"--count expects GROUP=N, got {item!r}")
            counts[group(name)] = int(n)
    elif args.per_group is not None:
        if args.per_group < 1:
            raise ValueError(f"--per-group must be at least 1, got {args.per_group}")
        counts = {g: args.per_group for g in card.groups}
    elif args.real:
        from ffr.stages import synthetic_need

        counts = synthetic_need(args.real, args.strategy or ["usb", "asb", "ffr"])
    else:
        raise ValueError("say how many images: --per-group N, --count GROUP=N, or --real DIR [--strategy S]")
    if args.group:
        wanted = {group(name) for name in args.group}
        counts = {g: n for g, n in counts.items() if g in wanted}
    return counts


def cmd_synthesize(args) -> int:
    from ffr.config import parse_set
    from ffr.data.manifest import CARD_FILE, DatasetCard, format_group_counts
    from ffr.synthesis.records import default_record_dir, shard_record_dir, synthesize_dataset

    if args.card is None and args.real is None:
        raise ValueError("--card (or --real, whose card is used) is required")
    if args.out is None:
        raise ValueError("--out is required")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    card = DatasetCard.load(args.card or Path(args.real) / CARD_FILE)
    counts = _synthesis_counts(args, card)
    options = dict(parse_set(o) for o in args.option)
    options.update({k: v for k, v in (("model", args.model), ("prompts", args.prompts)) if v is not None})
    record = None
    if args.group:  # a fan-out over groups: each task keeps its record apart
        record = shard_record_dir(args.out, args.shard, args.num_shards, [g for g in card.groups if g in counts])
    else:  # shards of one --out run side by side: each locks its own record
        record = default_record_dir(args.out, card, counts, args.shard, args.num_shards)
    from ffr.locks import output_lock

    with output_lock(Path(record or args.out), ".ffr.lock"):  # shards writing into one --out lock their records
        run, record = synthesize_dataset(args.backend, card, counts, args.out, options, base_seed=args.seed,
                                         shard=args.shard, num_shards=args.num_shards, batch_size=args.batch_size,
                                         filters=args.filter, max_attempts=args.max_attempts,
                                         progress=not args.quiet, record_dir=record)
    per_group = run.manifest.group_counts()
    print(format_group_counts({"images": {g: per_group[g] for g in counts}}))
    print(f"{len(run.manifest)} images ({run.info['resumed']} kept from an earlier run, {run.info['rejected']} "
          f"attempts rejected) in {Path(args.out).resolve()}; record: {record}")
    rejected = {}
    for r in run.rejections:
        rejected[r["group"]] = rejected.get(r["group"], 0) + 1
    if rejected:
        print("rejected attempts per group: " + ", ".join(f"{g} {n}" for g, n in sorted(rejected.items())))
    return 0


def cmd_synthesize_collect(args) -> int:
    from ffr.synthesis.records import collect

    m = collect(args.shards, args.out)
    print(f"collected {len(args.shards)} shard run(s): {len(m)} images in {Path(args.out).resolve()}")
    return 0


def cmd_prepare(args) -> int:
    from ffr.config import load_config
    from ffr.data.manifest import format_group_counts
    from ffr.data.sources import prepare

    cfg = load_config(args.config, args.set)
    demo = cfg.data.demo
    if cfg.data.dataset == "demo" and (args.demo_name is not None or args.demo_per_digit is not None):
        # DVC's run form (params.yaml); another dataset ignores both, as the Kubeflow run form does
        from ffr.data.builtin import DEFAULT, run_form_options

        demo = run_form_options(args.demo_name or DEFAULT, args.demo_per_digit or 0)
    m = prepare(cfg.data.dataset, args.out, args.bias_rate, args.seed, cfg.data.min_val_per_group,
                demo, args.source, cfg.data.adapter, cfg.data.options)
    print(format_group_counts({s: m.select(split=s).group_counts() for s in ("train", "val", "test")}))
    for line in _split_warnings(m):
        print(f"ffr: {line}", file=sys.stderr)
    return 0


def _split_warnings(m) -> list[str]:
    """What a split's report warns about (groups absent from validation or test)."""
    from ffr.data.splits import SplitReport

    counts = {s: {f"{l}|{b}": n for (l, b), n in m.select(split=s, source="real").group_counts().items()}
              for s in ("train", "val", "test")}
    return SplitReport(0.0, 0, counts, counts).warnings()


def cmd_balance(args) -> int:
    from ffr.stages import balance_stage

    summary = balance_stage(args.strategy, args.real, args.synthetic, args.out)
    for st in summary["stages"]:
        print(f"{st['name']}: {st['n']} images ({st['synthetic']} synthetic) {st['groups']}")
    return 0


def cmd_train(args) -> int:
    from ffr.balance import stage_plan
    from ffr.config import load_config
    from ffr.stages import train_stage

    from ffr.config import ConfigError, experiment_problems

    cfg = load_config(args.config, args.set)
    problems = experiment_problems(cfg)  # device, image size and every stage's settings, before any data
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
    objective = stage_plan(args.stage).objective_for(cfg.objective)
    with _tracker(args, args.stage, Path(args.out).parent) as tracker:
        summary = train_stage(args.train, args.val, args.out, cfg.stage_settings(args.stage), cfg.backbone, objective,
                              objective_options=cfg.objective_options.get(objective), init=args.init,
                              weights=cfg.weights, image_size=cfg.data.image_size,
                              seed=args.seed, device=cfg.device, stage=args.stage, tracker=tracker)
    if args.history_csv:  # per-epoch scalars for `dvc plots`
        history = Path(args.out).with_name(Path(args.out).name + ".history.jsonl")
        _write_csv(args.history_csv, [json.loads(line) for line in history.read_text().splitlines()])
    v = summary["val"]
    print(f"{args.stage}: best epoch {summary['best_epoch']}, val WGA {v['worst_group_acc']:.3f}, "
          f"balanced {v['balanced_acc']:.3f} -> {args.out}")
    return 0


def _write_csv(path, rows: list[dict]) -> None:
    import pandas as pd

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def cmd_evaluate(args) -> int:
    from ffr.stages import evaluate_stage

    with _tracker(args, f"evaluate-{args.split}", Path(args.out or ".").parent) as tracker:
        m = evaluate_stage(args.model, args.data, args.split, args.out, tracker=tracker)
    if args.groups_csv:  # one row per group: what `dvc plots` draws
        _write_csv(args.groups_csv, [{"group": g, **v} for g, v in m["groups"].items()])
    print(f"{args.split}: worst-group {m['worst_group_acc']:.3f} ({m['worst_group']}), "
          f"balanced {m['balanced_acc']:.3f}, average {m['average_acc']:.3f}")
    for g, v in m["groups"].items():
        acc = "absent" if v["acc"] is None else f"{v['acc']:.3f}"
        print(f"  {g:<24} {acc:>8}  n={v['n']}")
    return 0


def _platform(args):
    """Cluster settings from the command line (the kfp glue in ``pipelines`` is imported lazily:
    the core package never imports kfp)."""
    import os

    if getattr(args, "image", None):
        os.environ["FFR_IMAGE"] = args.image  # read when the components are defined
    from pipelines.platform import Platform, parse_node_selector, parse_toleration

    if args.parallelism < 0:
        raise ValueError(f"--parallelism {args.parallelism}: must be 0 (no cap) or more")
    return Platform(gpu=args.gpu, accelerator_type=args.accelerator_type, accelerator_limit=args.accelerator_limit,
                    node_selector=parse_node_selector(args.node_selector),
                    tolerations=[parse_toleration(t) for t in args.toleration],
                    shm_size="" if args.shm_size in ("", "0") else args.shm_size, parallelism=args.parallelism)


def cmd_run(args) -> int:
    from pipelines.run import main_table, parse_params, run_local

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
    from pipelines.definitions import get_pipeline
    from pipelines.run import compile_pipeline, parse_params, typed_params

    params = typed_params(args.pipeline, get_pipeline(args.pipeline, platform), parse_params(args.param))
    out = compile_pipeline(args.pipeline, args.out or f"{args.pipeline}-pipeline.yaml", platform, params)
    print(f"pipeline {args.pipeline!r} compiled to {out}"
          + (f" (defaults set: {', '.join(f'{k}={json.dumps(v)}' for k, v in params.items())})" if params else ""))
    return 0


def cmd_submit(args) -> int:
    platform = _platform(args)
    from pipelines.cluster import Credentials, submit
    from pipelines.run import parse_params

    run_id = submit(args.host, args.pipeline, parse_params(args.param), args.experiment, args.run_name, platform,
                    args.namespace, Credentials.from_args(args))
    print(f"run {run_id} created on {args.host}")
    return 0


def cmd_schedule(args) -> int:
    platform = _platform(args)
    from pipelines.cluster import Credentials, schedule
    from pipelines.run import parse_params

    job_id = schedule(args.host, args.cron, args.pipeline, parse_params(args.param), args.experiment, args.name,
                      platform, args.namespace, credentials=Credentials.from_args(args))
    print(f"recurring run {job_id} created on {args.host} (cron {args.cron!r})")
    return 0


def cmd_upload(args) -> int:
    platform = _platform(args)
    from pipelines.cluster import Credentials, upload

    up = upload(args.host, args.pipeline, args.name, args.version, args.description, platform, args.namespace,
                Credentials.from_args(args))
    what = "created with its first version" if up.created else "has a new version"
    print(f"pipeline {up.pipeline_name!r} ({up.pipeline_id}) {what} {up.version_name!r} ({up.version_id}) "
          f"on {args.host}")
    return 0


class _PipelineHelp(argparse.Action):
    """``-h/--help`` of ``ffr run`` and ``ffr compile``: the usual help, then the parameters of the
    pipeline named before it, with defaults and descriptions. Listing them builds the pipeline
    (seconds, kfp), so it happens only when help is asked for, never for the other commands."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from pipelines.definitions import get_pipeline
        from pipelines.parameters import format_parameters

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
                   help="pipeline parameter (value parsed as YAML, e.g. pretrain_epochs=5); repeatable; "
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


def cmd_promote(args) -> int:
    from ffr.integrations import model_registry as registry
    from ffr.promotion import Evaluation, GatePolicy
    from ffr.integrations.mlflow_tracking import local_store

    uri = local_store(args.mlflow_dir)[0] if args.mlflow_dir else args.mlflow
    if not uri:
        raise ValueError("no MLflow server: pass --mlflow URI (or set MLFLOW_TRACKING_URI)")
    policy = GatePolicy(args.margin, args.tolerance, args.floor)
    version = args.version
    if version is None:
        lineage = dict(kv.split("=", 1) for kv in args.lineage)
        if args.run_id:
            model_uri, evaluation, found, run_id = registry.from_run(uri, args.run_id)
            lineage = {**found, **lineage}
        else:
            if not (args.model_uri and args.evaluation):
                raise ValueError("pass --run-id, or --model-uri with --evaluation, or --version")
            evaluation = Evaluation.from_metrics(json.loads(Path(args.evaluation).read_text()))
            model_uri, run_id = args.model_uri, None
        version = registry.register(uri, args.name, model_uri, evaluation, lineage, run_id)
        print(f"registered {args.name} version {version} (alias {registry.CHALLENGER}) from {model_uri}")
    decision = registry.promote(uri, args.name, version, policy)
    print(f"gate for {args.name} version {version}: {decision.summary}")
    if decision.promote:
        print(f"{args.name}@{registry.CHAMPION} -> version {version}  (load: models:/{args.name}@{registry.CHAMPION})")
        return 0
    # A decision, not an error: exit 1 so that a scheduled job or a CI step can act on it.
    print(f"{args.name}@{registry.CHAMPION} unchanged: version {version} was "
          f"{'refused' if decision.refused else 'not promoted'}", file=sys.stderr)
    return 1


def cmd_serve(args) -> int:
    from ffr.integrations.mlflow_tracking import local_store, redact_uri
    from ffr.integrations.serving import resolve_version, serve

    uri = local_store(args.mlflow_dir)[0] if args.mlflow_dir else args.mlflow
    if not uri:
        raise ValueError("no MLflow registry: pass --mlflow URI (or set MLFLOW_TRACKING_URI) or --mlflow-dir RUN_DIR")
    alias = None if args.version else args.alias
    version = resolve_version(uri, args.name, alias, args.version)
    print(f"serving {args.name} version {version} from {redact_uri(uri)} on http://{args.host}:{args.port}/invocations",
          flush=True)
    print("  ask it: curl -s -H 'Content-Type: application/json' "
          f"http://{args.host}:{args.port}/invocations -d '{{\"dataframe_split\": {{\"columns\": [\"image\"], "
          "\"data\": [[\"'\"$(base64 -w0 photo.png)\"'\"]]}}}}'", flush=True)
    return serve(uri, args.name, alias, version, args.host, args.port, args.workers)


def build_parser() -> argparse.ArgumentParser:
    """The ``ffr`` argument parser (reused by every launcher)."""
    from ffr import __version__
    from ffr import config as defaults

    parser = argparse.ArgumentParser(prog="ffr", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ffr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="datasets: the built-in demo, validation, bias-rate splits")
    dsub = data.add_subparsers(dest="data_command", required=True)
    from ffr.data.builtin import BENCHMARKS, DEFAULT

    p = dsub.add_parser("demo", help="build a built-in offline benchmark (real images shipped in installed packages)",
                        epilog="benchmarks: " + "; ".join(f"{b.name}: {b.summary}" for b in BENCHMARKS.values()))
    p.add_argument("--out", required=True)
    p.add_argument("--name", default=DEFAULT, choices=sorted(BENCHMARKS),
                   help=f"which benchmark (default {DEFAULT}); in a config: data.demo.name")
    p.add_argument("--seed", type=int)
    p.set_defaults(func=cmd_data_demo)
    p = dsub.add_parser("validate", help="validate a manifest; every problem is listed")
    p.add_argument("manifest", help="dataset directory or manifest.csv")
    p.add_argument("--no-files", action="store_true", help="skip opening the image files")
    p.set_defaults(func=cmd_data_validate)
    p = dsub.add_parser("import", help="read a dataset as distributed (waterbirds, celeba, celeba_hq, utkface, "
                                        "spuco_animals, folder, csv) into manifest.csv + card.json")
    p.add_argument("adapter")
    p.add_argument("source", help="the dataset's folder")
    p.add_argument("--out", required=True, help="folder for manifest.csv and card.json")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="adapter option, e.g. label=Blond_Hair; repeatable")
    p.add_argument("--no-files", action="store_true", help="do not open every image to check it")
    p.set_defaults(func=cmd_data_import)
    p = dsub.add_parser("split", help="subsample train/val to a bias rate")
    p.add_argument("manifest")
    p.add_argument("--bias-rate", type=float, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-val-per-group", type=int, default=defaults.MIN_VAL_PER_GROUP)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_data_split)

    p = sub.add_parser("synthesize", help="render synthetic images per group (resumable, shardable); "
                                          "'synthesize collect' merges shard runs")
    p.add_argument("--card", help="card.json of the dataset (default: --real's)")
    p.add_argument("--backend", default=defaults.SYNTHESIS_BACKEND, help="synthesis backend: procedural, diffusers, folder")
    p.add_argument("--model", help="diffusers: hub id, local directory or s3:// URI")
    p.add_argument("--prompts", help="diffusers: prompt file or shipped set (spuco_animals, celebahq, utkface, waterbirds)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="backend option, e.g. steps=50, scheduler=pndm, guidance_scale=7.5, source=DIR; repeatable")
    p.add_argument("--per-group", type=int, help="images per group")
    p.add_argument("--count", action="append", default=[], metavar="GROUP=N", help="images of one group; repeatable")
    p.add_argument("--real", help="prepared real dataset: counts from its train split and --strategy budgets")
    p.add_argument("--strategy", action="append", help="strategies whose synthetic budget to cover (default usb, asb, ffr)")
    p.add_argument("--group", action="append", help="only this group (label_bias); repeatable")
    p.add_argument("--seed", type=int, default=0, help="base seed")
    p.add_argument("--shard", type=int, default=0)
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=defaults.SYNTHESIS_BATCH_SIZE,
                   help=f"images rendered together (default {defaults.SYNTHESIS_BATCH_SIZE})")
    p.add_argument("--filter", action="append", default=[], metavar="SPEC",
                   help="grayscale[:tolerance=3] or clip:model=DIR[,min_score=20]; repeatable")
    p.add_argument("--max-attempts", type=int, default=defaults.MAX_ATTEMPTS, help="attempts per image before giving up")
    p.add_argument("--out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synthesize)
    ssub = p.add_subparsers(dest="synthesize_command")
    c = ssub.add_parser("collect", help="merge shard runs into one validated synthetic dataset")
    c.add_argument("shards", nargs="+", help="record directories of the shard runs (out/shards/...)")
    c.add_argument("--out", required=True, dest="out")
    c.set_defaults(func=cmd_synthesize_collect)

    p = sub.add_parser("prepare", parents=[_config_parent()], help="load a dataset and split it to a bias rate")
    p.add_argument("--bias-rate", type=float, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source", help="where the demo dataset is built (default: next to --out)")
    p.add_argument("--demo-name", help="dataset demo: the built-in benchmark (digits, faces, galaxies), as the "
                                       "Kubeflow run form's demo_name; replaces data.demo")
    p.add_argument("--demo-per-digit", type=int, help="dataset demo, digits only: images of each digit kept "
                                                      "(0: all), as the run form's demo_per_digit")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("balance", help="the training set(s) of a strategy: none, usb, asb, ffr")
    p.add_argument("--strategy", required=True)
    p.add_argument("--real", required=True, help="prepared (split) real dataset directory")
    p.add_argument("--synthetic", help="synthetic pool directory (all strategies but none)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_balance)

    p = sub.add_parser("train", parents=[_config_parent(), _tracking_parent()], help="one call of the training loop")
    p.add_argument("--train", required=True, help="training manifest directory")
    p.add_argument("--val", required=True, help="dataset directory whose real 'val' rows select the checkpoint")
    p.add_argument("--stage", choices=["train", "pretrain", "finetune"], default="train")
    p.add_argument("--init", help="checkpoint to start from (FFR step 2: step 1's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="checkpoint path (.pt)")
    p.add_argument("--history-csv", help="also write the per-epoch metrics as CSV (for plots)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", parents=[_tracking_parent()], help="group metrics of a checkpoint on a split")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--out")
    p.add_argument("--groups-csv", help="also write per-group accuracy as CSV (group,acc,n) for plots")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", parents=[_config_parent(), _tracking_parent()],
                       help="strategies × bias rates × seeds on a dataset (the demo by default)")
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--workers", type=int, default=1, help="cells run in this many processes (default 1)")
    p.add_argument("--verify", action="store_true",
                   help="check every image file's content against the decoded cache (size and time always are)")
    p.add_argument("--stage-cache", metavar="DIR", help=_STAGE_CACHE_HELP)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("sweep", parents=[_config_parent()],
                       help="the full grid: datasets × bias rates × objectives × strategies × seeds × "
                            "hyperparameters, resumable, with tables and plots")
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--dry-run", action="store_true",
                   help="print the grid's cost (cells, trained stages, image passes) and stop")
    p.add_argument("--workers", type=int, default=1, help="cells run in this many processes (default 1)")
    p.add_argument("--stage-cache", metavar="DIR", help=_STAGE_CACHE_HELP)
    p.set_defaults(func=cmd_sweep)

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

    p = sub.add_parser("promote", help="register a trained model as the challenger and run the promotion gate")
    p.add_argument("--mlflow", default=os.environ.get("MLFLOW_TRACKING_URI"), metavar="URI",
                   help="tracking server / store holding the registry (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--mlflow-dir", metavar="RUN_DIR", help="use the local store of a run folder instead")
    p.add_argument("--name", required=True, help="registered model name")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--run-id", help="MLflow run (pipeline, compare cell or stage) whose model and test evaluation to register")
    src.add_argument("--model-uri", help="model to register (runs:/..., models:/...), with --evaluation")
    src.add_argument("--version", help="re-run the gate for an existing version")
    p.add_argument("--evaluation", help="test metrics JSON written by `ffr evaluate --out`")
    p.add_argument("--lineage", action="append", default=[], metavar="KEY=VALUE", help="extra lineage tag; repeatable")
    p.add_argument("--margin", type=float, default=0.005, help="required worst-group accuracy gain (fraction)")
    p.add_argument("--tolerance", type=float, default=0.02, help="largest allowed drop of any group's accuracy")
    p.add_argument("--floor", type=float, default=0.5, help="worst-group accuracy every champion must reach")
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

    probe = sub.add_parser("probe", help="diagnostics")
    psub = probe.add_subparsers(dest="probe_command", required=True)
    p = psub.add_parser("domain-gap", help="accuracy of a classifier telling real from synthetic images")
    p.add_argument("--real", required=True, help="real dataset directory")
    p.add_argument("--synthetic", required=True, help="synthetic dataset directory")
    p.add_argument("--split", default="train")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=3, help="epochs of the real-vs-synthetic classifier")
    p.add_argument("--out")
    p.set_defaults(func=cmd_probe_domain_gap)
    p = psub.add_parser("shortcut", help="the (B, G) shortcut: real-vs-synthetic linear probe per group on a "
                                         "model's features, and minority-group accuracy on real vs synthetic images")
    p.add_argument("--model", action="append", default=[],
                   help="checkpoint (.pt) or a finished grid cell's directory; repeatable")
    p.add_argument("--from-results", metavar="RESULTS_JSON",
                   help="probe the selected cells of a grid's results.json (filtered by --where)")
    p.add_argument("--where", action="append", default=[], metavar="FIELD=V1,V2",
                   help="with --from-results: keep records whose field is one of the values, e.g. "
                        "strategy=usb,asb,ffr; repeatable")
    p.add_argument("--manifest", required=True, action="append",
                   help="dataset directory with real and/or synthetic rows; repeatable (concatenated)")
    p.add_argument("--split", default="test", help="split of the real rows to use (synthetic rows: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--cache", help="embeddings cache folder (default: embeddings/ beside each checkpoint)")
    p.add_argument("--out", help="write the JSON report here")
    p.add_argument("--plot", metavar="PNG", help="write the figure here: probe accuracy and minority-group "
                                                 "accuracy on real vs synthetic images, mean ± std over seeds")
    p.add_argument("--title", help="the figure's title")
    p.set_defaults(func=cmd_probe_shortcut)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ffr`` console script."""
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
