"""Component: the comparison report of several strategies' evaluations."""

from typing import List

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def comparison_report(
    baselines: Input[List[Metrics]],
    ffr: Input[Metrics],
    report: Output[HTML],
    summary: Output[Metrics],
    synthetic: Input[Dataset] = None,
):
    """Side by side: the baselines' and FFR's test metrics (files written by ``evaluate_model``) in
    one HTML report with a few synthetic images per group; ``summary`` logs each strategy's
    worst-group accuracy and FFR's gain over the best baseline, and holds every result as JSON."""
    import json

    from ffr.data.manifest import Manifest
    from ffr.results.tables import STRATEGY_ORDER
    from ffr.results.views import evaluation_report_html, ffr_gain

    found = [json.load(open(a.path)) for a in [*baselines, ffr]]
    rank = {s: i for i, s in enumerate(STRATEGY_ORDER)}
    results = {m["strategy"]: m for m in sorted(found, key=lambda m: (rank.get(m["strategy"], 99), m["strategy"]))}
    gain = ffr_gain(results)
    for name, m in results.items():
        if m["worst_group_acc"] is not None:
            summary.log_metric(f"{name}/test/worst_group_acc", m["worst_group_acc"])
    if gain:
        summary.log_metric("ffr_gain_wga", gain["ffr_gain_wga"])
    with open(summary.path, "w") as f:
        json.dump({"results": results, "ffr_gain": gain}, f, indent=2)
    pool = Manifest.load(synthetic.path, check_files=False) if synthetic is not None else None
    with open(report.path, "w") as f:
        f.write(evaluation_report_html(results, "Strategies compared: test split", pool))
