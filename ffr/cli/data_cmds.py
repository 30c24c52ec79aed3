"""``ffr data …``, ``ffr prepare``, ``ffr synthesize [collect]``, ``ffr balance``: the data steps.
Each command maps its arguments onto one call of :mod:`ffr.steps` (or, for ``ffr data``, of the
dataset layer), as the DVC stages and the Kubeflow components do."""

from __future__ import annotations

import sys
from pathlib import Path

from ffr.cli.common import config_parent, split_counts


def cmd_data_demo(args) -> int:
    from ffr.data.builtin import BUILTIN_DATASETS
    from ffr.data.splits import format_group_counts

    dataset = BUILTIN_DATASETS.get(args.name)
    m = dataset.build(args.out, {"seed": args.seed} if args.seed is not None else {})
    print(f"{dataset.name} benchmark: {len(m)} real images in {Path(args.out).resolve()}")
    print(format_group_counts(split_counts(m)))
    return 0


def cmd_data_validate(args) -> int:
    from ffr.data.manifest import Manifest
    from ffr.data.splits import format_group_counts

    m = Manifest.load(args.manifest, check_files="decode" if not args.no_files else False)
    print(f"{args.manifest}: OK, {len(m)} rows")
    print(format_group_counts(split_counts(m)))
    return 0


def cmd_data_import(args) -> int:
    from ffr.config import parse_set
    from ffr.data.splits import format_group_counts
    from ffr.data.sources import load_dataset

    options = dict(parse_set(o) for o in args.option)
    if args.no_files:
        options["check_files"] = False
    m = load_dataset(args.adapter, args.source, **options)
    path = m.save(args.out)
    print(f"{args.adapter}: {len(m)} images → {path}")
    print(format_group_counts(split_counts(m)))
    return 0


def cmd_data_split(args) -> int:
    from ffr.data.manifest import Manifest
    from ffr.data.sources import refuse_overwriting_source
    from ffr.data.splits import bias_rate_split

    refuse_overwriting_source(args.out, args.manifest)
    m = Manifest.load(args.manifest)
    out, report = bias_rate_split(m, args.bias_rate, args.seed, args.min_val_per_group)
    out_dir = Path(args.out)
    out.save(out_dir)
    report.save(out_dir / "split_report.json")
    print(report.format())
    return 0


def cmd_prepare(args) -> int:
    from ffr.config import load_config
    from ffr.data.splits import format_group_counts
    from ffr.steps import prepare_step

    cfg = load_config(args.config, args.set)
    demo = cfg.data.demo
    if cfg.data.dataset == "demo" and (args.demo_name is not None or args.demo_per_digit is not None):
        # DVC's run form (params.yaml); another dataset ignores both, as the Kubeflow run form does
        from ffr.data.builtin import DEFAULT, run_form_options

        demo = run_form_options(args.demo_name or DEFAULT, args.demo_per_digit or 0)
    m = prepare_step(cfg.data.dataset, args.out, args.bias_rate, args.seed, cfg.data.min_val_per_group,
                     demo, args.source, cfg.data.adapter, cfg.data.options)
    print(format_group_counts(split_counts(m)))
    for line in _split_warnings(m):
        print(f"ffr: {line}", file=sys.stderr)
    return 0


def _split_warnings(m) -> list[str]:
    """What a split's report warns about (groups absent from validation or test)."""
    from ffr.data.splits import SplitReport

    counts = {s: {f"{l}|{b}": n for (l, b), n in m.select(split=s, source="real").group_counts().items()}
              for s in ("train", "val", "test")}
    return SplitReport(0.0, 0, counts, counts).warnings()


def _synthesis_counts(args, card) -> dict:
    """Images per group from --per-group, --count GROUP=N, or --real + --strategy; --group restricts."""
    from ffr.data.manifest import group_key
    from ffr.rules import require

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
        counts = {g: require("count", args.per_group, "--per-group") for g in card.groups}
    elif args.real:
        from ffr.steps import synthetic_need

        counts = synthetic_need(args.real, args.strategy or ["usb", "asb", "ffr"])
        if not any(counts.values()):
            raise ValueError(f"--real {args.real}: nothing to render: strategies {args.strategy or ['usb', 'asb', 'ffr']} "
                             "need no synthetic image for its train split (it has no train rows, or needs none)")
    else:
        raise ValueError("say how many images: --per-group N, --count GROUP=N, or --real DIR [--strategy S]")
    if args.group:
        wanted = {group(name) for name in args.group}
        counts = {g: n for g, n in counts.items() if g in wanted}
    return counts


def cmd_synthesize(args) -> int:
    from ffr.config import parse_set
    from ffr.data.manifest import CARD_FILE, DatasetCard
    from ffr.data.splits import format_group_counts
    from ffr.rules import require
    from ffr.steps import synthesize_step
    from ffr.synthesis.generation import check_shard
    from ffr.synthesis.records import shard_record_dir

    if args.card is None and args.real is None:
        raise ValueError("--card (or --real, whose card is used) is required")
    if args.out is None:
        raise ValueError("--out is required")
    require("count", args.batch_size, "--batch-size")
    require("count", args.max_attempts, "--max-attempts")
    check_shard(args.shard, args.num_shards, ("--shard", "--num-shards"))
    card = DatasetCard.load(args.card or Path(args.real) / CARD_FILE)
    counts = _synthesis_counts(args, card)
    options = dict(parse_set(o) for o in args.option)
    options.update({k: v for k, v in (("model", args.model), ("prompts", args.prompts)) if v is not None})
    # a fan-out over groups keeps each task's record apart; shards of one --out run side by side
    record = shard_record_dir(args.out, args.shard, args.num_shards, [g for g in card.groups if g in counts]) \
        if args.group else None
    filters = _resolve_filters(args, card, options)
    made = not Path(args.out).exists()
    try:
        run, record = synthesize_step(card, counts, args.out, args.backend, args.seed, args.batch_size, options,
                                      filters, args.max_attempts, args.shard, args.num_shards, record,
                                      progress=not args.quiet)
    except BaseException:
        if made and Path(args.out).is_dir() and not any(Path(args.out).rglob("*.png")):
            import shutil  # a refused run leaves no folder it made (only its lock and empty records)

            shutil.rmtree(args.out, ignore_errors=True)
        raise
    per_group = run.manifest.group_counts()
    print(format_group_counts({"images": {g: per_group[g] for g in counts}}))
    print(f"{len(run.manifest)} images ({run.info['resumed']} kept from an earlier run, {run.info['rejected']} "
          f"attempts rejected) in {Path(args.out).resolve()}; record: {record}")
    if run.rejections:
        print("rejected attempts per group: " + ", ".join(f"{g} {n}" for g, n in run.rejected_per_group().items()))
    return 0


def _resolve_filters(args, card, options: dict) -> list:
    """``--filter`` specs with a ``harmful`` one made concrete (:func:`ffr.synthesis.harmful.resolve`):
    scorers trained on ``--real`` (with ``--config``/``--set``'s model and training settings) unless
    given, and class floors calibrated on this run's backend."""
    from ffr.synthesis.harmful import NAME, resolve

    if not any(str(f).split(":")[0].strip() == NAME for f in args.filter):
        return list(args.filter)
    from ffr.config import load_config
    from ffr.data.manifest import Manifest
    from ffr.synthesis.generation import create_backend

    real = Manifest.load(args.real) if args.real else None
    echo = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    return resolve(args.filter, real, load_config(args.config, args.set), echo=echo,
                   backend=create_backend(args.backend, card, **options), seed=args.seed)


def cmd_synthesize_scorers(args) -> int:
    from ffr.config import load_config, parse_set
    from ffr.data.manifest import Manifest
    from ffr.synthesis.generation import create_backend
    from ffr.synthesis.harmful import CLASS_QUANTILE, HarmfulFilter, calibrate, train_scorers, write_scorers

    real = Manifest.load(args.real)
    quantile = CLASS_QUANTILE if args.class_quantile is None else args.class_quantile
    backend = create_backend(args.backend, real.card, **dict(parse_set(o) for o in args.option))  # refuse before training
    opts = train_scorers(real, load_config(args.config, args.set), args.out,
                         echo=None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True)))
    opts["min_class_prob"] = calibrate(HarmfulFilter(**opts), backend, quantile, args.seed)
    path = write_scorers(args.out, {**opts, "class_quantile": quantile, "backend": args.backend, "seed": args.seed})
    for option in ("model", "bias_model"):
        if option in opts:
            print(f"{'class' if option == 'model' else 'bias'} scorer: {opts[option]}")
    print("class floors (calibrated on the backend's images): "
          + ", ".join(f"{g} {v:.3g}" for g, v in opts["min_class_prob"].items()))
    print(f"filter: harmful:scorers={path}")
    return 0


def cmd_synthesize_collect(args) -> int:
    from ffr.steps import collect_step

    m = collect_step(args.shards, args.out)
    print(f"collected {len(args.shards)} shard run(s): {len(m)} images in {Path(args.out).resolve()}")
    return 0


def cmd_balance(args) -> int:
    from ffr.steps import balance_step

    summary = balance_step(args.strategy, args.real, args.synthetic, args.out)
    for st in summary["stages"]:
        print(f"{st['name']}: {st['n']} images ({st['synthetic']} synthetic) {st['groups']}")
    return 0


def add_parsers(sub) -> None:
    """The data commands: ``data demo / validate / import / split``, ``prepare``, ``synthesize``
    (and ``synthesize collect``), ``balance``."""
    from ffr import config as defaults
    from ffr.data.builtin import BUILTIN_DATASETS, DEFAULT

    data = sub.add_parser("data", help="datasets: the built-in demo, validation, bias-rate splits")
    dsub = data.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser("demo", help="build a built-in offline benchmark (real images shipped in installed packages)",
                        epilog="benchmarks: " + "; ".join(f"{n}: {b.summary}" for n, b in BUILTIN_DATASETS.items()))
    p.add_argument("--out", required=True)
    p.add_argument("--name", default=DEFAULT, choices=BUILTIN_DATASETS.names(),
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

    p = sub.add_parser("synthesize", parents=[config_parent()],
                       help="render synthetic images per group (resumable, shardable); 'synthesize collect' "
                            "merges shard runs, 'synthesize scorers' trains the harmful filter's scorers")
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
                   help="grayscale[:tolerance=3], clip:model=DIR[,min_score=20] or harmful[:model=CKPT,"
                        "bias_model=CKPT,class_quantile=0.1] (scorers trained on --real, with --config/--set's "
                        "model and training settings, when not given); repeatable")
    p.add_argument("--max-attempts", type=int, default=defaults.MAX_ATTEMPTS, help="attempts per image before giving up")
    p.add_argument("--out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synthesize)
    ssub = p.add_subparsers(dest="synthesize_command")
    c = ssub.add_parser("collect", help="merge shard runs into one validated synthetic dataset")
    c.add_argument("shards", nargs="+", help="record directories of the shard runs (out/shards/...)")
    c.add_argument("--out", required=True, dest="out")
    c.set_defaults(func=cmd_synthesize_collect)
    c = ssub.add_parser("scorers", parents=[config_parent()],
                        help="train the harmful filter's class and bias scorers on a prepared dataset's real "
                             "train rows (selected on its val rows); prints the filter spec that uses them")
    c.add_argument("--real", required=True, help="prepared real dataset directory (ffr prepare)")
    c.add_argument("--out", required=True, help="the scorers (OUT/<key>/model.pt) and OUT/harmful.json, what "
                                                 "harmful:scorers= reads")
    c.add_argument("--backend", default=defaults.SYNTHESIS_BACKEND, help="the backend whose images calibrate the "
                                                                         "class floors (the pool's)")
    c.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="backend option; repeatable")
    c.add_argument("--seed", type=int, default=0, help="the pool's base seed (calibration images use others)")
    c.add_argument("--class-quantile", type=float, help="share of each group's images the class test prunes "
                                                        "(default 0.1; 0: no class test)")
    c.add_argument("--quiet", action="store_true", help="no line per epoch")
    c.set_defaults(func=cmd_synthesize_scorers)

    p = sub.add_parser("prepare", parents=[config_parent()], help="load a dataset and split it to a bias rate")
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
