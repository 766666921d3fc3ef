"""How often the business rules override the model, measured offline over the evaluation's test users.

Where it sits: after export. The demo (`cartwise demo`) and `cartwise
overrides` load the exported bundle's serving pipeline
(`serving.pipeline.Recommender`) and hand it here; every request runs through
the real pipeline (online features, sources, ranking hook, rules, diversity,
pins) and its :class:`serving.overrides.OverrideTracker` counts what the rules
did, exactly as it does for live traffic. This module only reads the
tracker's lifetime totals before and after (`OverrideTracker.totals`), so it
never imports `serving/` (the layering of setup.cfg) and takes any object
with `recommend`, `tracker` and `rules.chain`.

Measured, over the requests (one per user, k items, no session):

* `top1_override_rate`: share of requests whose top item the rules (and
  diversity, and pins) changed; `mean_topk_overlap`: mean |model top K &
  served top K| / K;
* per rule (`by_rule`): `top1_override_rate` (top-item overrides attributed
  to the rule: its step changed the top item), `fired_share` (it changed
  the top K's ids or order), `topk_change_share` (it changed the top-K set),
  and per request `topk_out` / `topk_in` (items it took out of / brought into
  the top K) and `removed` (candidates a filter dropped from the whole list);
* `flags`: requests per serving flag (cold start, fallbacks), since a
  fallback answer is not the model's.

The section goes into the evaluation's `metrics.json` as `rule_overrides`
and into its `report.html` (pipelines/report.py), with a plain note when no
rule is declared or none fired.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from cartwise.config import CartwiseConfig
from pipelines.layout import Layout
from pipelines.manifest import read_json, write_json
from pipelines.progress import Log, default_log, step

STAGE = "overrides"
KEY = "rule_overrides"
#: requests per user list: one recommendation of this length per test user
DEFAULT_K = 10


def test_users(config: CartwiseConfig) -> list[str]:
    """The evaluation's test users (pipelines/evaluate.py): customers with a purchase in the test window and one
    before the cut-off, sorted."""
    import pandas as pd

    from feature_repo import names as n
    from pipelines.build_dataset import train_cutoff
    from pipelines.evaluate import purchase_history, split_purchases, test_targets

    events = pd.read_parquet(Layout(config.work_dir).ingest / "events.parquet",
                             columns=[n.USER_ID, n.ITEM_ID, n.EVENT_TYPE, n.EVENT_TIMESTAMP])
    ev = config.evaluation
    test_end = pd.Timestamp(ev.test_end, tz="UTC") + pd.Timedelta(days=1) if ev.test_end else None
    train, test = split_purchases(events, train_cutoff(config), test_end)
    return test_targets(purchase_history(train), test)[0]


def _delta(after: dict, before: dict) -> dict:
    rules = {}
    for r, t in after["rules"].items():
        old = before["rules"].get(r, {})
        rules[r] = {key: v - old.get(key, 0) for key, v in t.items()}
    return {"requests": after["requests"] - before["requests"],
            "overrides": after["overrides"] - before["overrides"],
            "overlap_sum": after["overlap_sum"] - before["overlap_sum"], "rules": rules}


def measure(recommender: Any, users: Sequence[str | None], k: int = DEFAULT_K,
            exclude_purchased: bool = False) -> dict:
    """Run one request per user through the recommender and summarise what its rules did.

    Args:
        recommender: a `serving.pipeline.Recommender` (its tracker counts the requests).
        users: user ids (None: an anonymous request).
        k: items per request.
        exclude_purchased: as the request field.

    Returns:
        The `rule_overrides` section (see the module docstring).

    Raises:
        ValueError: no users, or k < 1.
    """
    if not users:
        raise ValueError("no users to measure the rule overrides on")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    tracker = recommender.tracker
    chain = recommender.rules.chain
    before = tracker.totals()
    flags: Counter[str] = Counter()
    for u in users:
        flags.update(recommender.recommend(u, k, exclude_purchased=exclude_purchased).flags)
    t = _delta(tracker.totals(), before)
    n = t["requests"]
    kinds = {r.name: r.kind for r in chain.rules}
    if chain.diversity is not None:
        kinds["diversity"] = "diversity"
    by_rule = {}
    for name in list(chain.names) + sorted(set(t["rules"]) - set(chain.names)):
        r = t["rules"].get(name) or {}
        by_rule[name] = {
            "kind": kinds.get(name, "?"),
            "overrides": r.get("overrides", 0), "fired": r.get("fired", 0),
            "topk_changes": r.get("topk_changes", 0),
            "top1_override_rate": r.get("overrides", 0) / n, "fired_share": r.get("fired", 0) / n,
            "topk_change_share": r.get("topk_changes", 0) / n,
            "topk_out_per_request": r.get("topk_out", 0) / n, "topk_in_per_request": r.get("topk_in", 0) / n,
            "removed_per_request": r.get("removed", 0) / n,
        }
    section = {
        "bundle": getattr(recommender, "version", None), "k": k, "requests": n,
        "exclude_purchased": exclude_purchased,
        "overrides": t["overrides"], "top1_override_rate": t["overrides"] / n,
        "mean_topk_overlap": t["overlap_sum"] / n,
        "alarm_threshold": recommender.config.serving.override_alarm_rate,
        "business_rules": [r.name for r in chain.rules],
        "diversity": chain.diversity.config.method if chain.diversity is not None else "none",
        "by_rule": by_rule, "flags": dict(sorted(flags.items())),
    }
    section["note"] = note(section)
    return section


def note(section: dict) -> str:
    """What the figures say, in plain words (also when nothing happened)."""
    n, rate = section["requests"], section["top1_override_rate"]
    parts = []
    if not section["business_rules"]:
        parts.append("The bundle's config declares no business rules (`rules: []`)"
                     + (f"; only the diversity stage ({section['diversity']}) runs after ranking"
                        if section["diversity"] != "none" else ", and diversity is off: the served list is the "
                        "model's") + ".")
    silent = [r for r, v in section["by_rule"].items() if v["fired"] == 0]
    if silent:
        parts.append(f"Never fired on these {n:,} requests: {', '.join(silent)}.")
    parts.append(f"Rules and diversity changed the model's top item in {100 * rate:.1f}% of {n:,} requests "
                 f"({section['overrides']:,}; alarm threshold {100 * section['alarm_threshold']:.0f}%); "
                 f"mean top-{section['k']} overlap with the model's list {section['mean_topk_overlap']:.3f}.")
    worst = max(section["by_rule"].items(), key=lambda kv: kv[1]["overrides"], default=None)
    if worst and worst[1]["overrides"]:
        parts.append(f"Most top-item overrides: {worst[0]} ({100 * worst[1]['top1_override_rate']:.1f}% of requests).")
    fallback = sum(c for f, c in section["flags"].items() if f.startswith(("fallback", "cold_start")))
    if fallback:
        parts.append(f"{fallback:,} requests were served by a cold-start or fallback route (see flags).")
    return " ".join(parts)


def add_to_evaluation(section: dict, evaluation_dir: Path) -> Path:
    """Put `section` into `evaluation_dir/metrics.json` (key `rule_overrides`) and rewrite its report.html.

    Returns:
        The report's path.

    Raises:
        FileNotFoundError: no metrics.json there (run `cartwise evaluate` first).
    """
    from pipelines.report import write_report

    path = Path(evaluation_dir) / "metrics.json"
    metrics = read_json(path)
    metrics[KEY] = section
    write_json(path, metrics)
    return write_report(metrics, path.parent / "report.html")


def run(config: CartwiseConfig, recommender: Any, *, users: Sequence[str] | None = None, k: int = DEFAULT_K,
        exclude_purchased: bool = False, evaluation_dir: Path | None = None, log: Log = default_log) -> dict:
    """Measure the rule overrides of `recommender` over the test users and add them to the evaluation's outputs.

    Args:
        config: the config of the evaluation (its split gives the test users).
        recommender: the exported bundle's serving pipeline.
        users: requests' user ids (default: :func:`test_users`).
        k: items per request.
        exclude_purchased: as the request field.
        evaluation_dir: where metrics.json and report.html are (default: `<work_dir>/evaluation`).

    Returns:
        The section written.
    """
    users = test_users(config) if users is None else list(users)
    with step(STAGE, f"{len(users):,} requests (k={k}) through bundle {recommender.version}'s serving pipeline",
              log) as s:
        section = measure(recommender, users, k, exclude_purchased)
        s["result"] = f"top-item override rate {section['top1_override_rate']:.3f}"
    report = add_to_evaluation(section, evaluation_dir or Layout(config.work_dir).evaluation)
    log(f"[{STAGE}] {section['note']}")
    for name, v in section["by_rule"].items():
        log(f"[{STAGE}]   {name:<20} top-1 overrides {v['top1_override_rate']:.3f}  fired {v['fired_share']:.3f}  "
            f"top-K changed {v['topk_change_share']:.3f}  out/in per request {v['topk_out_per_request']:.2f}/"
            f"{v['topk_in_per_request']:.2f}  removed {v['removed_per_request']:.2f}")
    log(f"[{STAGE}] added to {report.parent / 'metrics.json'} ({KEY}) and {report}")
    return section
