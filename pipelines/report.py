"""A self-contained HTML report of one evaluation's metrics.json.

Where it sits: evaluate writes `evaluation/metrics.json`; **report** turns it
into one HTML file (tables plus matplotlib figures drawn with Agg and
embedded as base64 PNGs; no scripts, stylesheets, fonts or images are
fetched), which goes into the bundle beside the metrics. Every section is
optional: a key missing from metrics.json (or one that cannot be drawn)
gives a short "not available" note instead of an error.

The schema read (every top-level key optional):

    all_items / new_to_user: {method: {"users": n, "ndcg@10": .., "hit_rate@10": .., "recall@10": ..,
                                       "map@10": .., "coverage@10": .., "revenue_hit_rate@10": .., ...}}
    cohorts: {cohort: {method: {"users": n, <metric>@<k>: ..}}}
    coverage_curve: {method: [[k, coverage], ...]}
    category_spread: {method: {"distinct@10": .., "top_share@10": ..}}
    candidates: {"recall": .. (of the whole candidate set), "per_user": .. (its mean size), "by_source": {..},
                 "ranking_ndcg@10_given_candidates": ..}; a "recall@k" map ({"100": .., ...}) is shown too if given
    scores: {method: [float, ...]}
    training: {stage: [{"epoch": 1, "loss": .., "examples_per_s": ..}, ...]}
    test_users, test_purchases, catalog_items, split: {"train_end": .., "test_end": ..}
    rule_overrides: {"requests": n, "k": 10, "top1_override_rate": .., "mean_topk_overlap": .., "note": "..",
                     "by_rule": {rule: {"kind": .., "top1_override_rate": .., "fired_share": ..,
                                        "topk_change_share": .., "topk_out_per_request": ..,
                                        "topk_in_per_request": .., "removed_per_request": ..}}, ...}
                    (added after export by pipelines/override_report.py)
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, ScalarFormatter

VARIANTS = (("all_items", "All items"), ("new_to_user", "New to the user"))
BAR_METRICS = ("ndcg", "hit_rate", "recall", "map")
TABLE_METRICS = ("ndcg", "hit_rate", "recall", "map", "coverage", "revenue_hit_rate")
METRIC_LABELS = {"ndcg": "NDCG", "hit_rate": "HitRate", "recall": "Recall", "map": "MAP",
                 "coverage": "Coverage", "revenue_hit_rate": "Revenue hit rate"}
# models first, then the baselines, then anything else in the order given
METHOD_ORDER = ("model", "retrieval", "ranking", "popularity", "repeat", "item_knn", "ease")

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f4; }
td.best { font-weight: bold; background: #eef6ee; }
p.na { color: #777; font-style: italic; }
img { max-width: 100%; }
.meta td { text-align: left; }
"""


def write_report(metrics: Mapping[str, Any], out_path: Path) -> Path:
    """Write the HTML report of one evaluation.

    Args:
        metrics: the parsed metrics.json (schema in the module docstring);
            any key may be missing.
        out_path: the HTML file to write (parent directories are created).

    Returns:
        `out_path`.
    """
    out_path = Path(out_path)
    body = ["<h1>cartwise evaluation report</h1>", _section(_overview, metrics)]
    for key, title in VARIANTS:
        body.append(f"<h2>{html.escape(title)} <small>(<code>{key}</code>)</small></h2>")
        body.append(_section(partial(_variant, key=key), metrics))
    for title, fn in (("Metrics by cohort", _cohorts), ("Coverage curves", _coverage),
                      ("Category spread", _category_spread),
                      ("Business rules: how often they override the model", _rule_overrides),
                      ("Candidate generation", _candidates),
                      ("Score distributions", _scores), ("Training curves", _training)):
        body.append(f"<h2>{html.escape(title)}</h2>")
        body.append(_section(fn, metrics))
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           "<title>cartwise evaluation report</title>"
           f"<style>{CSS}</style></head><body>\n" + "\n".join(body)
           + f"\n<p class=\"na\">Generated {stamp}.</p>\n</body></html>\n")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(doc, encoding="utf-8")
    return out_path


# --- sections: each returns HTML, or raises _Missing for a "not available" note ---

class _Missing(Exception):
    pass


def _section(fn: Callable[[Mapping[str, Any]], str], metrics: Mapping[str, Any]) -> str:
    try:
        return fn(metrics)
    except _Missing as e:
        return _na(str(e))
    # a malformed entry must not cost the rest of the report
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        return _na(f"could not be drawn ({type(e).__name__}: {e})")


def _na(reason: str) -> str:
    return f'<p class="na">Not available: {html.escape(reason)}.</p>'


def _need(metrics: Mapping[str, Any], key: str) -> Any:
    value = metrics.get(key)
    if not value:
        raise _Missing(f'no "{key}" in the metrics')
    return value


def _overview(metrics: Mapping[str, Any]) -> str:
    rows = []
    split = metrics.get("split") or {}
    for label, value in (("Train end", split.get("train_end")), ("Cut-off", split.get("cutoff")),
                         ("Test end", split.get("test_end")), ("Test users", metrics.get("test_users")),
                         ("Test purchases", metrics.get("test_purchases")),
                         ("Catalog items", metrics.get("catalog_items"))):
        if value is not None:
            rows.append(f"<tr><th>{html.escape(label)}</th><td>{html.escape(_fmt(value))}</td></tr>")
    if not rows:
        raise _Missing("no split or test-set sizes in the metrics")
    return '<table class="meta">' + "".join(rows) + "</table>"


def _variant(metrics: Mapping[str, Any], key: str) -> str:
    by_method = _need(metrics, key)
    methods = _order(by_method)
    ks = _ks(by_method.values())
    cols = [(m, k) for k in ks for m in TABLE_METRICS if any(f"{m}@{k}" in by_method[x] for x in methods)]
    table = _table(methods, [("users", None)] + cols, lambda meth, c: by_method[meth].get(
        "users" if c[1] is None else f"{c[0]}@{c[1]}"))
    bars = [(m, k) for k in ks for m in BAR_METRICS if any(f"{m}@{k}" in by_method[x] for x in methods)]
    if not bars:
        return table + _na("no NDCG, HitRate, Recall or MAP to chart")
    fig = Figure(figsize=(max(6.0, 1.0 + 0.45 * len(bars) * len(methods) / 2), 3.6))
    ax = fig.subplots()
    width = 0.8 / len(methods)
    for j, meth in enumerate(methods):
        values = [_num(by_method[meth].get(f"{m}@{k}")) for m, k in bars]
        ax.bar([i + (j - (len(methods) - 1) / 2) * width for i in range(len(bars))], values, width, label=meth)
    ax.set_xticks(range(len(bars)), [f"{METRIC_LABELS[m]}@{k}" for m, k in bars])
    ax.set_ylabel("mean over test users")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return table + _img(fig, f"{key} metrics per method")


def _cohorts(metrics: Mapping[str, Any]) -> str:
    cohorts = _need(metrics, "cohorts")
    parts = []
    for name, by_method in cohorts.items():
        parts.append(f"<h3>{html.escape(str(name))}</h3>")
        if not by_method:
            parts.append(_na("no methods for this cohort"))
            continue
        methods = _order(by_method)
        keys = sorted({k for m in methods for k in by_method[m] if k != "users"}, key=_metric_sort_key)
        cols = [("users", None)] + [(k, "raw") for k in keys]
        parts.append(_table(methods, cols, lambda meth, c: by_method[meth].get(c[0])))
        if keys:
            fig = Figure(figsize=(max(5.0, 1.2 * len(keys) * max(1, len(methods)) / 3), 3.0))
            ax = fig.subplots()
            width = 0.8 / len(methods)
            for j, meth in enumerate(methods):
                ax.bar([i + (j - (len(methods) - 1) / 2) * width for i in range(len(keys))],
                       [_num(by_method[meth].get(k)) for k in keys], width, label=meth)
            ax.set_xticks(range(len(keys)), keys)
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
            ax.grid(axis="y", alpha=0.3)
            parts.append(_img(fig, f"cohort {name}"))
    return "\n".join(parts)


def _coverage(metrics: Mapping[str, Any]) -> str:
    curves = _need(metrics, "coverage_curve")
    fig = Figure(figsize=(6.5, 3.6))
    ax = fig.subplots()
    for meth in _order(curves):
        pts = sorted((float(k), float(c)) for k, c in curves[meth] if float(k) > 0)  # log axis
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=meth)
    ax.set_xlabel("k (list length)")
    ax.set_ylabel("share of the catalog shown")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_ylim(0, None)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _img(fig, "coverage curves")


def _category_spread(metrics: Mapping[str, Any]) -> str:
    spread = _need(metrics, "category_spread")
    methods = _order(spread)
    keys = sorted({k for m in methods for k in spread[m]}, key=_metric_sort_key)
    return ("<p>distinct@k: mean number of categories in a top k; top_share@k: mean share of the top k "
            "taken by its most frequent category.</p>"
            + _table(methods, [(k, "raw") for k in keys], lambda meth, c: spread[meth].get(c[0]), best=False))


RULE_COLUMNS = (("kind", "kind"), ("top1_override_rate", "top-1 override rate"), ("fired_share", "fired"),
                ("topk_change_share", "top-K set changed"), ("topk_out_per_request", "out of top K / req"),
                ("topk_in_per_request", "into top K / req"), ("removed_per_request", "candidates removed / req"))
RULE_BARS = (("top1_override_rate", "top-1 override rate"), ("fired_share", "fired"),
             ("topk_change_share", "top-K set changed"))


def _rule_overrides(metrics: Mapping[str, Any]) -> str:
    if not metrics.get("rule_overrides"):
        raise _Missing('no "rule_overrides" in the metrics (added after export by `cartwise overrides` or '
                       "`cartwise demo`)")
    sec = metrics["rule_overrides"]
    rows = [("Bundle", sec.get("bundle")), ("Requests (one per test user)", sec.get("requests")),
            ("k", sec.get("k")), ("Business rules declared", ", ".join(sec.get("business_rules") or []) or "none"),
            ("Diversity", sec.get("diversity")), ("Top-1 override rate", sec.get("top1_override_rate")),
            ("Alarm threshold", sec.get("alarm_threshold")), ("Mean top-K overlap", sec.get("mean_topk_overlap"))]
    rows += [(f"flag {f}", c) for f, c in (sec.get("flags") or {}).items()]
    out = [f"<p>{html.escape(str(sec.get('note', '')))}</p>",
           "<p>Every request went through the exported bundle's serving pipeline; a rule's top-1 override rate "
           "counts the requests whose top item its step changed (serving/overrides.py). Fired: it changed the "
           "top K's ids or order.</p>",
           '<table class="meta">' + "".join(f"<tr><th>{html.escape(a)}</th><td>{html.escape(_fmt(b))}</td></tr>"
                                            for a, b in rows if b is not None) + "</table>"]
    by_rule = sec.get("by_rule") or {}
    if not by_rule:
        return "\n".join(out) + _na("no rule or diversity stage in the bundle's config")
    names = list(by_rule)
    out.append("<table><tr><th>rule</th>" + "".join(f"<th>{html.escape(label)}</th>" for _, label in RULE_COLUMNS)
               + "</tr>" + "".join(f"<tr><td>{html.escape(r)}</td>" + "".join(
                   f"<td>{html.escape(_fmt(by_rule[r].get(key)))}</td>" for key, _ in RULE_COLUMNS) + "</tr>"
                   for r in names) + "</table>")
    fig = Figure(figsize=(max(5.0, 1.0 + 1.2 * len(names)), 3.2))
    ax = fig.subplots()
    width = 0.8 / len(RULE_BARS)
    for j, (key, label) in enumerate(RULE_BARS):
        ax.bar([i + (j - (len(RULE_BARS) - 1) / 2) * width for i in range(len(names))],
               [_num(by_rule[r].get(key)) for r in names], width, label=label)
    threshold = sec.get("alarm_threshold")
    if _finite(threshold):
        ax.axhline(threshold, color="C3", linestyle="--", linewidth=1, label="alarm threshold")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("share of requests")
    ax.set_ylim(0, 1)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    out.append(_img(fig, "rule override rates per rule"))
    return "\n".join(out)


def _candidates(metrics: Mapping[str, Any]) -> str:
    cand = _need(metrics, "candidates")
    rows = []
    for k, v in sorted((cand.get("recall@k") or {}).items(), key=lambda kv: _int_or(kv[0])):
        rows.append((f"candidate recall@{k}", v))
    rows += [(key, v) for key, v in cand.items() if key != "recall@k" and not isinstance(v, Mapping)]
    if not rows:
        raise _Missing('"candidates" is empty')
    return ('<table class="meta">' + "".join(
        f"<tr><th>{html.escape(str(a))}</th><td>{html.escape(_fmt(b))}</td></tr>" for a, b in rows) + "</table>")


def _scores(metrics: Mapping[str, Any]) -> str:
    scores = _need(metrics, "scores")
    methods = [m for m in _order(scores) if any(_finite(x) for x in scores[m])]
    if not methods:
        raise _Missing("no finite scores")
    cols = min(3, len(methods))
    rows = math.ceil(len(methods) / cols)
    fig = Figure(figsize=(3.4 * cols, 2.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(methods):
            ax.set_axis_off()
            continue
        values = [float(x) for x in scores[methods[i]] if _finite(x)]
        ax.hist(values, bins=min(50, max(5, len(values) // 10)), color=f"C{i}")
        ax.set_title(f"{methods[i]} (n={len(values):,})", fontsize="small")
        ax.tick_params(labelsize="x-small")
    return _img(fig, "score distributions")


def _training(metrics: Mapping[str, Any]) -> str:
    training = _need(metrics, "training")
    stages = [s for s in training if training[s]]
    if not stages:
        raise _Missing('"training" has no epochs')
    fig = Figure(figsize=(9.0, 2.8 * len(stages)), layout="constrained")
    axes = fig.subplots(len(stages), 2, squeeze=False)
    table = []
    for row, stage in zip(axes, stages):
        log = sorted(training[stage], key=lambda e: e.get("epoch", 0))
        epochs = [e.get("epoch") for e in log]
        for ax, key, label in ((row[0], "loss", "loss"), (row[1], "examples_per_s", "examples / s")):
            pts = [(x, _num(e.get(key))) for x, e in zip(epochs, log) if e.get(key) is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3)
            else:
                ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(f"{stage}: {label}", fontsize="small")
            ax.set_xlabel("epoch", fontsize="small")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        last = log[-1]
        table.append((stage, len(log), last.get("loss"), last.get("examples_per_s")))
    rows = "".join(f"<tr><td>{html.escape(str(s))}</td><td>{n}</td><td>{html.escape(_fmt(loss))}</td>"
                   f"<td>{html.escape(_fmt(eps))}</td></tr>" for s, n, loss, eps in table)
    return ("<table><tr><th>stage</th><th>epochs</th><th>final loss</th><th>examples / s</th></tr>"
            + rows + "</table>" + _img(fig, "training curves"))


# --- helpers ---

def _order(by_method: Mapping[str, Any]) -> list[str]:
    known = [m for m in METHOD_ORDER if m in by_method]
    return known + [m for m in by_method if m not in METHOD_ORDER]


def _ks(rows) -> list[int]:
    ks = set()
    for r in rows:
        for key in r:
            if "@" in key:
                k = _int_or(key.rsplit("@", 1)[1])
                if isinstance(k, int):
                    ks.add(k)
    return sorted(ks)


def _int_or(s):
    try:
        return int(s)
    except (TypeError, ValueError):
        return s


def _metric_sort_key(key: str):
    name, _, k = key.rpartition("@")
    k = _int_or(k)
    return (0, k, name) if isinstance(k, int) else (1, 0, key)


def _num(v) -> float:
    return float(v) if _finite(v) else 0.0


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4f}"
    return str(v)


def _table(methods: Sequence[str], cols: Sequence[tuple], value: Callable[[str, tuple], Any],
           best: bool = True) -> str:
    def head(c):
        if c[1] is None:
            return c[0]
        if c[1] == "raw":
            return c[0]
        return f"{METRIC_LABELS.get(c[0], c[0])}@{c[1]}"

    best_of = {}
    if best and len(methods) > 1:
        for c in cols:
            if c[1] is None:
                continue
            vals = [_num(value(m, c)) for m in methods if _finite(value(m, c))]
            if vals:
                best_of[c] = max(vals)
    out = ["<table><tr><th>method</th>" + "".join(f"<th>{html.escape(head(c))}</th>" for c in cols) + "</tr>"]
    for m in methods:
        cells = []
        for c in cols:
            v = value(m, c)
            cls = ' class="best"' if c in best_of and _finite(v) and v == best_of[c] else ""
            cells.append(f"<td{cls}>{html.escape(_fmt(v))}</td>")
        out.append(f"<tr><td>{html.escape(m)}</td>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


def _img(fig: Figure, alt: str) -> str:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
