"""The results tables' uncertainty: mean ± std over seeds and a seeded two-level bootstrap
interval (seeds, then each group's test images) of the mean test WGA and balanced accuracy."""

from __future__ import annotations

import pytest

from ffr.results.tables import bootstrap_interval, markdown_table, summary_rows


def _record(seed, accs, n=250, strategy="ffr"):
    groups = {f"g{i}": {"acc": a, "n": n} for i, a in enumerate(accs)}
    test = {"worst_group_acc": min(accs), "balanced_acc": sum(accs) / len(accs), "average_acc": sum(accs) / len(accs),
            "groups": groups}
    return {"strategy": strategy, "objective": "erm", "bias_rate": 0.95, "seed": seed, "hparams": {},
            "val": {"worst_group_acc": 0.5, "balanced_acc": 0.5}, "test": test, "selected": True}


def test_interval_holds_the_mean_widens_with_seed_spread_and_shrinks_with_test_size():
    steady = [_record(s, [0.6, 0.9, 0.95, 0.9]) for s in range(3)]
    lo, hi = bootstrap_interval(steady)
    assert lo < 0.6 < hi and hi - lo < 0.15  # only test-set noise: binomial on 250 images
    assert bootstrap_interval(steady) == (lo, hi)  # seeded: reproducible tables
    spread = [_record(s, [w, 0.9, 0.95, 0.9]) for s, w in enumerate([0.3, 0.6, 0.9])]
    slo, shi = bootstrap_interval(spread)
    assert slo < 0.6 < shi and shi - slo > 2 * (hi - lo)
    big = [_record(s, [0.6, 0.9, 0.95, 0.9], n=25000) for s in range(3)]
    blo, bhi = bootstrap_interval(big)
    assert bhi - blo < (hi - lo) / 5
    # the min over groups is biased low under resampling when groups are close: the interval says so
    clo, chi = bootstrap_interval([_record(0, [0.8, 0.8, 0.8, 0.8], n=100)])
    assert (clo + chi) / 2 < 0.8
    assert bootstrap_interval(steady, "balanced_acc")[0] < 0.8375 < bootstrap_interval(steady, "balanced_acc")[1]
    assert bootstrap_interval([{"test": {"groups": {}}}]) is None


def test_tables_show_the_interval_beside_mean_and_std():
    records = [_record(s, [0.6, 0.9, 0.95, 0.9]) for s in range(3)] + [_record(s, [0.1, 1.0, 1.0, 0.2], strategy="none")
                                                                     for s in range(3)]
    rows = summary_rows(records)
    assert all(r["test_worst_group_acc_ci_low"] <= r["test_worst_group_acc_mean"] <= r["test_worst_group_acc_ci_high"]
               for r in rows)
    table = markdown_table(records)
    assert "test WGA 95% CI" in table.splitlines()[0]
    ffr_row = next(line for line in table.splitlines() if "| ffr |" in line)
    lo, hi = bootstrap_interval(records[:3])
    assert f"[{lo:.3f}, {hi:.3f}]" in ffr_row and "0.600 ± 0.000" in ffr_row
