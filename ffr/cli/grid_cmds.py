"""``ffr compare``, ``ffr sweep`` and ``ffr probe``: grids of cells (strategy × bias rate × seed ×
hyperparameters × objective) run end to end on one machine, and the diagnostics that read them."""

from __future__ import annotations

import json
from pathlib import Path

from ffr.cli.common import config_parent, tracker, tracking_parent

_STAGE_CACHE_HELP = ("where trained stages are kept and looked up by key (default: OUT/stages); give two "
                     "grids over the same data one folder and the second trains only the stages the first did not")


def cmd_compare(args) -> int:
    from ffr.config import load_config
    from ffr.experiment import compare, stage_cache_dir
    from ffr.results.tables import markdown_table

    cfg = load_config(args.config, args.set)
    stage_cache = stage_cache_dir(args.stage_cache)  # checked before a tracking run is opened
    with tracker(args, "compare", args.out) as t:
        records = compare(cfg, args.out, progress=not args.quiet, workers=args.workers, tracker=t,
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
        from ffr.experiment import prepare_real
        from ffr.sweep_plan import grid_cost
        from ffr.grid import search_budget

        check_sweep(cfg)  # what the run would refuse, the dry run refuses
        from ffr.rules import check, refuse

        if args.plan_for_cluster is not None:
            refuse(check("positive", args.plan_for_cluster, "--plan-for-cluster")
                   + check("count", args.cluster_workers, "--cluster-workers")
                   + check("count", args.stages_per_task, "--stages-per-task")
                   + check("count", args.cells_per_task, "--cells-per-task"), "options")
        for name, overrides in (cfg.datasets or {"": {}}).items():
            eff = with_overrides(cfg, dict(overrides or {}))
            cost = grid_cost(eff, prepare_real(eff, Path(args.out) / name))
            print(f"{name or 'grid'}: {cost['cells']} cells, {cost['trained_stages']} trained stages, "
                  f"{cost['train_images']:,} training and {cost['val_images']:,} validation image passes")
            for objective, counts in search_budget(eff).items():
                print(f"  search candidates ({objective}): " + ", ".join(f"{s} {n}" for s, n in counts.items()))
            if args.plan_for_cluster is not None:
                from ffr.sweep_plan import cluster_estimate

                est = cluster_estimate(cost, args.plan_for_cluster, args.cluster_workers, args.stages_per_task,
                                       args.cells_per_task)
                print(f"  on a cluster (`ffr run/submit sweep`): {est['training_tasks']} training tasks of "
                      f"{args.stages_per_task} stages and {est['evaluation_tasks']} evaluation tasks; at "
                      f"{args.plan_for_cluster:,.0f} images/s a worker, about {est['hours']:.1f} h of training on "
                      f"{args.cluster_workers} workers (an estimate: pod start-up and the wait between levels "
                      "not counted)")
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
    from ffr.rules import require

    real = Manifest.load(args.real).select(split=args.split, source="real")
    synth = Manifest.load(args.synthetic).select(source="synthetic")
    require("epochs", args.epochs, "--epochs")
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


def cmd_defaults(args) -> int:
    from ffr.results.defaults import disagreements, read_evidence, report

    candidates = [c for path in args.evidence for c in read_evidence(path)]
    text = report(candidates)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    if not args.check:
        return 0
    differ = disagreements(candidates)
    for line in differ:
        print(f"ffr: defaults differ from the evidence: {line}")
    print("the defaults (ffr.config) are the evidence's choice" if not differ else
          f"{len(differ)} default(s) differ: set them in ffr/config.py, or say why in docs/sweep.md")
    return 1 if differ else 0


def add_parsers(sub) -> None:
    """``compare``, ``sweep`` and ``probe domain-gap / shortcut``."""
    p = sub.add_parser("compare", parents=[config_parent(), tracking_parent()],
                       help="strategies × bias rates × seeds on a dataset (the demo by default)")
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--workers", type=int, default=1, help="cells run in this many processes (default 1)")
    p.add_argument("--verify", action="store_true",
                   help="check every image file's content against the decoded cache (size and time always are)")
    p.add_argument("--stage-cache", metavar="DIR", help=_STAGE_CACHE_HELP)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("sweep", parents=[config_parent()],
                       help="the full grid: datasets × bias rates × objectives × strategies × seeds × "
                            "hyperparameters, resumable, with tables and plots")
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--dry-run", action="store_true",
                   help="print the grid's cost (cells, trained stages, image passes) and stop")
    p.add_argument("--workers", type=int, default=1, help="cells run in this many processes (default 1)")
    p.add_argument("--stage-cache", metavar="DIR", help=_STAGE_CACHE_HELP)
    p.add_argument("--plan-for-cluster", type=float, metavar="IMAGES_PER_S",
                   help="with --dry-run: the tasks of the Kubeflow sweep pipeline and the wall time at this many "
                        "images per second a worker (measure it: benchmarks/bench_train.py)")
    p.add_argument("--cluster-workers", type=int, default=8, help="with --plan-for-cluster: workers (default 8)")
    p.add_argument("--stages-per-task", type=int, default=8, help="with --plan-for-cluster: the pipeline's "
                                                                  "sweep_stages_per_task (default 8)")
    p.add_argument("--cells-per-task", type=int, default=16, help="with --plan-for-cluster: the pipeline's "
                                                                 "sweep_cells_per_task (default 16)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("defaults", help="the recipe the grids' validation results choose (docs/sweep.md, "
                                         "Defaults from evidence)")
    p.add_argument("evidence", nargs="+", metavar="RESULTS",
                   help="an equal-budget grid's results.json or results.md (or its folder); several: every column "
                        "of each counts")
    p.add_argument("--check", action="store_true",
                   help="exit 1 where ffr's defaults differ from the choice (each difference named)")
    p.add_argument("--out", help="also write the report (Markdown) here")
    p.set_defaults(func=cmd_defaults)

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
