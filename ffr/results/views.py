"""Human-readable views of evaluation results: the group metrics table printed by the CLI, and
self-contained HTML reports (group table, synthetic samples embedded as images, the comparison of
strategies) that pipeline UIs such as Kubeflow's show as they are.

``results`` everywhere maps a column name (a strategy) to the metrics of
:func:`ffr.steps.evaluate_step` (``worst_group_acc``, ``balanced_acc``, ``average_acc``,
``groups``: ``{"<label>_<bias>": {"acc", "n"}}``, optionally ``confusion`` and ``classes``).
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

from ffr.data.manifest import Manifest, group_key

SUMMARY = (("worst_group_acc", "worst-group acc"), ("balanced_acc", "balanced acc"), ("average_acc", "average acc"),
           ("train_weighted_acc", "average acc, train-weighted"))


def _acc(v) -> str:
    return "—" if v is None else f"{v:.3f}"


def _rows(results: dict[str, dict]) -> list[tuple[str, list[str]]]:
    """(row name, one cell per column): the summary figures, then each group's accuracy (n)."""
    cols = list(results)
    rows = [(name, [_acc(results[c].get(key)) for c in cols]) for key, name in SUMMARY]
    groups = list(next(iter(results.values()))["groups"]) if results else []
    for g in groups:
        cells = []
        for c in cols:
            v = results[c]["groups"].get(g, {"acc": None, "n": 0})
            cells.append(f"{_acc(v['acc'])} (n={int(v['n'])})")
        rows.append((f"group {g}", cells))
    return rows


def format_group_table(results: dict[str, dict]) -> str:
    """A plain-text table: the summary accuracies and each group's accuracy, one column per entry
    of ``results``."""
    rows = _rows(results)
    head = ["metric"] + list(results)
    width = [max(len(r[0]) for r in rows + [(head[0], [])])]
    width += [max([len(head[i + 1])] + [len(r[1][i]) for r in rows]) for i in range(len(results))]
    lines = [head[0].ljust(width[0]) + "".join(f"  {h:>{w}}" for h, w in zip(head[1:], width[1:]))]
    for name, cells in rows:
        lines.append(name.ljust(width[0]) + "".join(f"  {c:>{w}}" for c, w in zip(cells, width[1:])))
    return "\n".join(lines)


def group_table_html(results: dict[str, dict]) -> str:
    """The table of :func:`format_group_table` as HTML; each column's worst group is marked."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in results)
    body = []
    for name, cells in _rows(results):
        tds = []
        for col, cell in zip(results, cells):
            worst = name == f"group {results[col].get('worst_group')}"
            tds.append(f"<td{' class=worst' if worst else ''}>{html.escape(cell)}</td>")
        body.append(f"<tr><th>{html.escape(name)}</th>{''.join(tds)}</tr>")
    return f"<table><tr><th>metric</th>{head}</tr>{''.join(body)}</table>"


def confusion_html(metrics: dict) -> str:
    """The confusion matrix (rows: true class, columns: predicted class) as an HTML table."""
    classes, m = metrics.get("classes"), metrics.get("confusion")
    if not classes or m is None:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in classes)
    rows = "".join(f"<tr><th>{html.escape(c)}</th>{''.join(f'<td>{int(v)}</td>' for v in row)}</tr>"
                   for c, row in zip(classes, m))
    return f"<table><tr><th>true \\ predicted</th>{head}</tr>{rows}</table>"


def _png_data_uri(path, size: int) -> str:
    from PIL import Image

    from ffr.data.loading import to_rgb

    with Image.open(path) as im:
        im = to_rgb(im).resize((size, size), Image.NEAREST)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def samples_html(manifest: Manifest, per_group: int = 4, size: int = 64) -> str:
    """The first ``per_group`` images of every group of ``manifest`` (in path order), embedded as
    PNG data URIs, one row per group."""
    frame = manifest.frame.sort_values("path", kind="stable")
    rows = []
    for label, bias in manifest.card.groups:
        sel = frame[(frame["label"] == label) & (frame["bias"] == bias)].head(per_group)
        imgs = "".join(f'<img src="{_png_data_uri(manifest.root / p, size)}" width="{size}" height="{size}" '
                       f'title="{html.escape(str(prompt or p))}">'
                       for p, prompt in zip(sel["path"], sel["prompt"]))
        rows.append(f"<tr><th>{html.escape(group_key(label, bias))}</th><td>{imgs or '(none)'}</td></tr>")
    return f"<table>{''.join(rows)}</table>"


_STYLE = ("<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;margin:.5em 0}"
          "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{text-align:left}"
          "td.worst{background:#fde2e2}img{margin:1px}</style>")


def html_page(title: str, sections: list[tuple[str, str]]) -> str:
    """A standalone HTML page: a title and (heading, HTML body) sections, empty bodies skipped."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{_STYLE}"
             f"</head><body><h1>{html.escape(title)}</h1>"]
    parts += [f"<h2>{html.escape(h)}</h2>{body}" for h, body in sections if body]
    return "".join(parts) + "</body></html>\n"


def ffr_gain(results: dict[str, dict]) -> dict | None:
    """FFR's test worst-group accuracy against the best other column of ``results`` (None when
    ``ffr`` or any baseline is missing, or a worst-group accuracy is undefined)."""
    base = {k: v["worst_group_acc"] for k, v in results.items() if k != "ffr" and v.get("worst_group_acc") is not None}
    ffr = results.get("ffr", {}).get("worst_group_acc")
    if ffr is None or not base:
        return None
    best = max(base, key=base.get)
    return {"best_baseline": best, "best_baseline_wga": base[best], "ffr_wga": ffr, "ffr_gain_wga": ffr - base[best]}


def evaluation_report_html(results: dict[str, dict], title: str, synthetic: Manifest | None = None,
                           per_group: int = 4) -> str:
    """The report of one or several evaluated models: group table, confusion matrices, and a few
    synthetic images per group when the synthetic pool is given."""
    sections = [("Group accuracy (worst group of each column shaded)", group_table_html(results))]
    gain = ffr_gain(results)
    if gain:
        sections.append(("FFR against the best baseline",
                         f"<p>FFR worst-group accuracy {gain['ffr_wga']:.3f}; best baseline "
                         f"{html.escape(gain['best_baseline'])} {gain['best_baseline_wga']:.3f}; "
                         f"difference {gain['ffr_gain_wga']:+.3f}.</p>"))
    sections += [(f"Confusion matrix — {name}", confusion_html(m)) for name, m in results.items()]
    if synthetic is not None and len(synthetic):
        sections.append((f"Synthetic samples ({per_group} per group)", samples_html(synthetic, per_group)))
    return html_page(title, sections)


COMPARISON_TITLE = "Strategies compared: test split"


def write_comparison(evaluations: list[dict], summary_path: str | os.PathLike, html_path: str | os.PathLike,
                     markdown_path: str | os.PathLike | None = None, synthetic: Manifest | None = None) -> dict:
    """The comparison report of several strategies' evaluations (:func:`ffr.steps.evaluate_step`
    files, each with its ``strategy``), composed once for ``ffr report`` and the pipelines'
    report step: ``summary_path`` (JSON: every result in strategy order and FFR's gain over the
    best baseline), ``html_path`` (group table, confusion matrices, synthetic samples) and, when
    given, ``markdown_path`` (the group table). Returns the summary."""
    from ffr.results.tables import STRATEGY_ORDER

    rank = {s: i for i, s in enumerate(STRATEGY_ORDER)}
    rank["ffr"] = len(rank) + 1  # the product last, after any other strategy
    results = {m["strategy"]: m for m in sorted(evaluations, key=lambda m: (rank.get(m["strategy"], len(rank)),
                                                                          m["strategy"]))}
    gain = ffr_gain(results)
    summary = {"results": results, "ffr_gain": gain}
    Path(summary_path).write_text(json.dumps(summary, indent=2))
    Path(html_path).write_text(evaluation_report_html(results, COMPARISON_TITLE, synthetic))
    if markdown_path is not None:
        Path(markdown_path).write_text(
            f"# {COMPARISON_TITLE}\n\n```\n{format_group_table(results)}\n```\n"
            + (f"\nFFR's gain in worst-group accuracy over the best baseline: {gain['ffr_gain_wga']:+.3f}\n"
               if gain else ""))
    return summary
