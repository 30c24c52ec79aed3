"""Plots of a grid's results (PNG, matplotlib's Agg backend: no display needed).

- ``wga_vs_bias_rate``: test worst-group accuracy (mean ± std over seeds, selected
  hyperparameters) against the bias rate, one line per strategy, one panel per objective;
- ``group_accuracy``: per-group test accuracy of the best run of each strategy (highest
  validation WGA among the selected runs; test numbers never choose), one panel per bias rate;
- ``shortcut``: the (B, G) shortcut probe of several models (``ffr probe shortcut --plot``).
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from ffr.results.tables import OBJECTIVE_ORDER, STRATEGY_ORDER, summary_rows


def _ordered(values, order):
    values = set(values)
    return [v for v in order if v in values] + sorted(values - set(order))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_wga_vs_bias_rate(records: list[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Test WGA vs bias rate: a panel per objective, a line per strategy (error bars: std over seeds)."""
    plt = _pyplot()
    rows = summary_rows(records)
    objectives = _ordered({r["objective"] for r in rows}, OBJECTIVE_ORDER)
    strategies = _ordered({r["strategy"] for r in rows}, STRATEGY_ORDER)
    rates = sorted({r["bias_rate"] for r in rows})
    pos = {r: i for i, r in enumerate(rates)}  # evenly spaced: 0.99 and 0.999 stay apart
    fig, axes = plt.subplots(1, len(objectives), figsize=(3.6 * len(objectives), 3.4), sharey=True, squeeze=False)
    for ax, obj in zip(axes[0], objectives):
        for strat in strategies:
            pts = sorted((r["bias_rate"], r["test_worst_group_acc_mean"], r["test_worst_group_acc_std"])
                         for r in rows if r["objective"] == obj and r["strategy"] == strat
                         and r["test_worst_group_acc_mean"] is not None)
            if pts:
                ax.errorbar([pos[p[0]] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                            marker="o", capsize=3, label=strat)
        ax.set_title(obj)
        ax.set_xticks(range(len(rates)), [str(r) for r in rates])
        ax.set_xlabel("bias rate")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test worst-group accuracy")
    axes[0][-1].legend(title="strategy", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path, plt)


def best_runs(records: list[dict]) -> dict[tuple[float, str], dict]:
    """Per (bias rate, strategy), the selected run with the highest validation WGA (then
    balanced accuracy; ties: the first)."""
    best: dict[tuple[float, str], dict] = {}
    for r in records:
        if not r.get("selected", True):
            continue
        k = (r["bias_rate"], r["strategy"])
        score = (r["val"]["worst_group_acc"] or -1.0, r["val"]["balanced_acc"] or -1.0)
        if k not in best or score > (best[k]["val"]["worst_group_acc"] or -1.0, best[k]["val"]["balanced_acc"] or -1.0):
            best[k] = r
    return best


def plot_group_accuracy(records: list[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Per-group test accuracy bars of the best run of each strategy, a panel per bias rate."""
    plt = _pyplot()
    best = best_runs(records)
    rates = sorted({k[0] for k in best})
    strategies = _ordered({k[1] for k in best}, STRATEGY_ORDER)
    groups = list(next(iter(best.values()))["test"]["groups"]) if best else []
    panel_width = max(4.0, 0.3 * len(groups) * max(1, len(strategies)))
    fig, axes = plt.subplots(1, max(1, len(rates)), figsize=(panel_width * max(1, len(rates)), 3.8),
                             sharey=True, squeeze=False)
    width = 0.8 / max(1, len(strategies))
    for ax, rate in zip(axes[0], rates):
        for j, strat in enumerate(strategies):
            r = best.get((rate, strat))
            if r is None:
                continue
            accs = [r["test"]["groups"][g]["acc"] or 0.0 for g in groups]
            ax.bar([i + (j - (len(strategies) - 1) / 2) * width for i in range(len(groups))], accs, width,
                   label=f"{strat} ({r['objective']})")
        ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"bias rate {rate}")
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    shown = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            shown.setdefault(label, handle)
    if shown:  # one legend under the panels: a legend inside a panel hides bars
        fig.legend(list(shown.values()), list(shown), loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=min(len(shown), 6), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path, plt)


def plot_shortcut(results: list[dict], path: str | os.PathLike, title: str = "") -> Path:
    """The shortcut probe (:func:`ffr.probes.shortcut_probe` results) of several models, mean ±
    std over seeds per model: left, how well a linear probe on the model's features tells real
    from synthetic images of the same group (minority and majority groups; 0.5 is chance); right,
    the model's accuracy on the minority groups' real and synthetic images. A model that learned
    "synthetic ⇒ minority" reads synthetic minority images right and real ones wrong."""
    from ffr.probes import shortcut_stats

    plt = _pyplot()
    stats = shortcut_stats(results)
    labels = list(stats)
    fig, axes = plt.subplots(1, 2, figsize=(2 * max(4.0, 0.6 * len(labels)), 4.2), squeeze=False)
    panels = ((axes[0][0], (("probe_minority", "minority groups"), ("probe_majority", "majority groups")),
               "real-vs-synthetic probe accuracy"),
              (axes[0][1], (("minority_real", "real images"), ("minority_synthetic", "synthetic images")),
               "model accuracy, minority groups"))
    for ax, series, ylabel in panels:
        width = 0.8 / len(series)
        for j, (key, name) in enumerate(series):
            xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(labels))]
            means = [(stats[lb][key] or (0.0, 0.0))[0] for lb in labels]
            stds = [(stats[lb][key] or (0.0, 0.0))[1] for lb in labels]
            ax.bar(xs, means, width, yerr=stds, capsize=3, label=name)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].axhline(0.5, color="grey", linestyle="--", linewidth=1)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path, plt)


def _save(fig, path, plt) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")  # legends placed outside the axes included
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_plots(records: list[dict], out_dir: str | os.PathLike) -> list[Path]:
    """Both plots for every dataset of ``records``, under ``out_dir/plots/``."""
    by_ds: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_ds[r.get("dataset") or ""].append(r)
    paths = []
    for ds, rs in sorted(by_ds.items()):
        suffix = f"_{ds}" if len(by_ds) > 1 and ds else ""
        paths.append(plot_wga_vs_bias_rate(rs, Path(out_dir) / "plots" / f"wga_vs_bias_rate{suffix}.png", ds))
        paths.append(plot_group_accuracy(rs, Path(out_dir) / "plots" / f"group_accuracy{suffix}.png", ds))
    return paths
