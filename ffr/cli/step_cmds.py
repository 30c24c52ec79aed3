"""``ffr train`` and ``ffr evaluate``: one training stage, one evaluation; ``ffr report``: several
evaluations compared (the report the Kubeflow comparison writes); ``ffr dvc-pipeline``: the DVC
stages that run them for a strategy. ``ffr train`` builds the
stage's request from the experiment config (:meth:`ffr.train.request.StageRequest.for_stage`, as a grid
cell does) and hands it to :func:`ffr.steps.train_stage`; the DVC training stages run it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ffr.cli.common import config_parent, tracker, tracking_parent, write_csv


def cmd_train(args) -> int:
    from ffr.balance import stage_plan
    from ffr.config import load_config
    from ffr.train.request import CONFIG_NAMES, StageRequest
    from ffr.steps import train_stage
    from ffr.train.stage import stage_files

    cfg = load_config(args.config, args.set)
    request = StageRequest.for_stage(cfg, stage_plan(args.stage, args.strategy), args.seed, args.strategy)
    request = request.with_refs(train_data=args.train, val_data=args.val, init=args.init, out=args.out)
    with tracker(args, args.stage, Path(args.out).parent) as t:
        summary = train_stage(request, tracker=t, names={**CONFIG_NAMES, "seed": "--seed"},
                              echo=None if args.quiet else lambda line: print(line, file=sys.stderr, flush=True))
    if args.history_csv:  # per-epoch scalars for `dvc plots`
        history = stage_files(args.out)[1]
        write_csv(args.history_csv, [json.loads(line) for line in history.read_text().splitlines()])
    v = summary["val"]
    print(f"{args.stage}: best epoch {summary['best_epoch']}, val WGA {v['worst_group_acc']:.3f}, "
          f"balanced {v['balanced_acc']:.3f} -> {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    from ffr.steps import evaluate_step

    with tracker(args, f"evaluate-{args.split}", Path(args.out or ".").parent) as t:
        m = evaluate_step(args.model, args.data, args.split, args.out, tracker=t)
    if args.groups_csv:  # one row per group: what `dvc plots` draws
        write_csv(args.groups_csv, [{"group": g, **v} for g, v in m["groups"].items()])
    print(f"{args.split}: worst-group {m['worst_group_acc']:.3f} ({m['worst_group']}), "
          f"balanced {m['balanced_acc']:.3f}, average {m['average_acc']:.3f}")
    for g, v in m["groups"].items():
        acc = "absent" if v["acc"] is None else f"{v['acc']:.3f}"
        print(f"  {g:<24} {acc:>8}  n={v['n']}")
    return 0


def cmd_report(args) -> int:
    from ffr.data.manifest import Manifest
    from ffr.results.views import format_group_table, write_comparison

    evaluations = []
    for path in args.evaluation:
        m = json.loads(Path(path).read_text())
        if not isinstance(m, dict) or "groups" not in m:
            raise ValueError(f"{path}: not an evaluation (ffr evaluate --out writes one)")
        evaluations.append({**m, "strategy": m.get("strategy") or Path(path).stem})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pool = Manifest.load(args.synthetic, check_files=False) if args.synthetic else None
    summary = write_comparison(evaluations, out / "summary.json", out / "report.html", out / "comparison.md", pool)
    print(format_group_table(summary["results"]))
    print(f"\nreport: {(out / 'report.html').resolve()}")
    return 0


def cmd_dvc_pipeline(args) -> int:
    from ffr.dvc_pipeline import write_dvc_pipeline

    out = Path(args.out)
    code = args.code if args.code is not None else ("ffr" if (out / "ffr" / "__init__.py").is_file() else "")
    written = write_dvc_pipeline(out, args.strategy, code or None)
    for path in written:
        print(f"wrote {path}")
    from ffr.dvc_pipeline import PLOTS_TEMPLATE

    if not any(p.name == PLOTS_TEMPLATE for p in written):
        print("ffr: note: `dvc plots show` will load its plotting library from a CDN (blank offline); install "
              "ffr[plots] and rerun for a page that draws with no network", file=sys.stderr)
    elif not (out / ".dvc").is_dir():
        print(f"no DVC project here yet: after `dvc init`, rerun this command or pass --html-template "
              f"{PLOTS_TEMPLATE} to `dvc plots show`")
    return 0


def add_parsers(sub) -> None:
    """``train``, ``evaluate``, ``report`` and ``dvc-pipeline``."""
    p = sub.add_parser("train", parents=[config_parent(), tracking_parent()], help="one call of the training loop")
    p.add_argument("--train", required=True, help="training manifest directory")
    p.add_argument("--val", required=True, help="dataset directory whose real 'val' rows select the checkpoint")
    p.add_argument("--stage", default="train", help="the stage: train (none, usb, asb), pretrain or finetune "
                                                    "(ffr), or another strategy's (with --strategy)")
    p.add_argument("--strategy", help="the strategy whose stage it is (default: the one stage of that name)")
    p.add_argument("--init", help="checkpoint to start from (FFR step 2: step 1's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="checkpoint path (.pt)")
    p.add_argument("--history-csv", help="also write the per-epoch metrics as CSV (for plots)")
    p.add_argument("--quiet", action="store_true", help="no line per epoch on stderr (the summary line stays)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", parents=[tracking_parent()], help="group metrics of a checkpoint on a split")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--out")
    p.add_argument("--groups-csv", help="also write per-group accuracy as CSV (group,acc,n) for plots")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="several strategies' evaluations side by side: the comparison report the "
                                      "Kubeflow comparison pipeline writes")
    p.add_argument("evaluation", nargs="+", help="evaluation files (ffr evaluate --out); a file without a strategy "
                                                 "is named by its file name")
    p.add_argument("--synthetic", help="synthetic pool whose images the report shows")
    p.add_argument("--out", required=True, help="folder for summary.json, report.html and comparison.md")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("dvc-pipeline", help="write dvc.yaml (and params.yaml's missing sections) from a strategy's "
                                            "stage plan: prepare, synthesize, balance, its stages, evaluate")
    p.add_argument("--strategy", default="ffr", help="the strategy whose stages DVC runs (default ffr)")
    p.add_argument("--out", default=".", help="the DVC project folder (default: here)")
    p.add_argument("--code", help="the code folder every stage depends on (default: ffr when the project holds "
                                  "the package, else none)")
    p.set_defaults(func=cmd_dvc_pipeline)
