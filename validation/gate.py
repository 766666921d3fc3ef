"""The fail-closed drift gate: Great Expectations suites plus drift against the blessed reference.

Where it sits: validation, in front of export. `pipelines/export.py` runs it on
the event log and the training set (and the feature tables' suites) before it
builds a bundle; `cartwise validate --candidate FILE` runs it on a raw file.
The reference is the profile stored in the CURRENT bundle (`reference/`), i.e.
what the last successful export was built from.

The verdict is fail-closed. Its `status` is `pass` only when every
expectation was evaluated and held and every drift statistic had a threshold
and stayed within it; an empty batch, a missing threshold or a drifted feature
give `blocked`; an exception inside validation (GE or the statistics) or a
suite that evaluated fewer expectations than it holds give `error`. Both
`blocked` and `error` stop export.
"""
from __future__ import annotations

import traceback
from typing import Any, Mapping

import pandas as pd

from feature_repo import names as n
from validation import drift
from validation.suites import event_log_suite, reference_suite, run_suite

PASS, BLOCKED, ERROR = "pass", "blocked", "error"
_RANK = {PASS: 0, BLOCKED: 1, ERROR: 2}
EVENT_LOG, TRAINING_SET = "event_log", "training_set"


def event_log_frame(events: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """The event log as the gate sees it: canonical events plus each item's category.

    Args:
        events: canonical events (pipelines/schema.py).
        items: canonical catalog; its category is joined so a new-category
            drift is measured in rows (events), not in catalog lines.
    """
    cat = items[[n.ITEM_ID, n.CATEGORY]].drop_duplicates(n.ITEM_ID)
    cat = cat.astype({n.ITEM_ID: "string"})
    out = events.astype({n.ITEM_ID: "string"}).merge(cat, on=n.ITEM_ID, how="left")
    return out


def _trim(ge: dict) -> dict:
    return {k: v for k, v in ge.items() if k != "results"}


def evaluate(df: pd.DataFrame, dataset: str, *, reference: dict | None, thresholds: Mapping[str, Any],
             overrides: Mapping[str, Mapping[str, Any]] | None = None, min_rows: int = 1,
             suite=None) -> dict:
    """Gate one batch.

    Args:
        df: the batch (event log frame, training set, ...).
        dataset: its name in the verdict.
        reference: the blessed reference profile, or None before the first
            export (then only the static `suite` runs and the verdict says so).
        thresholds: `validation.drift` thresholds (missing or null keys block).
        overrides: per-feature thresholds.
        min_rows: fewest rows the batch may have.
        suite: GE suite to use without a reference (default: the event-log suite).

    Returns:
        The verdict: `status` (pass | blocked | error), `success`, `failures`
        (feature, statistic, value, threshold, source), the GE summary, the
        drift checks and `error` when validation itself failed.
    """
    v: dict[str, Any] = {"dataset": dataset, "rows": int(len(df)), "status": ERROR, "success": False,
                         "failures": [], "reference": None, "expectations": None, "drift": None}
    try:
        if df.empty:
            v.update(status=BLOCKED, error="empty batch")
            v["failures"].append({"feature": "<table>", "statistic": "rows", "value": 0, "threshold": min_rows,
                                  "source": "gate"})
            return v
        if reference is not None:
            v["reference"] = {"dataset": reference.get("dataset"), "rows": reference.get("rows"),
                              "days": reference.get("days"), "bundle": reference.get("bundle")}
            nc = thresholds.get("max_null_fraction_change")
            ns = thresholds.get("max_new_category_share")
            suite = reference_suite(reference, min_rows=min_rows, max_null_fraction_change=nc or 0.0,
                                    max_new_category_share=ns or 0.0)
        elif suite is None:
            suite = event_log_suite(min_rows=min_rows)
        ge = run_suite(df, suite, dataset)
        v["expectations"] = _trim(ge)
        for f in ge["failures"]:
            v["failures"].append({"feature": f["column"] or "<table>", "statistic": f["expectation"],
                                  "value": f.get("error") or f["observed"], "threshold": None,
                                  "source": "expectation"})
        if reference is not None:
            d = drift.compare(reference, df, thresholds, overrides)
            v["drift"] = d
            for c in d["failures"]:
                v["failures"].append({**{k: c.get(k) for k in ("feature", "statistic", "value", "threshold")},
                                      "source": "drift", **({"reason": c["reason"]} if "reason" in c else {})})
        if ge.get("error"):
            # a validator that raised or skipped expectations is an error, not a verdict on the data
            v.update(status=ERROR, error=ge["error"])
        else:
            v["status"] = BLOCKED if v["failures"] else PASS
    except Exception as exc:  # fail closed: any bug or surprise inside validation blocks export
        v.update(status=ERROR, error=f"validation raised {type(exc).__name__}: {exc}",
                 traceback=traceback.format_exc(limit=5))
    v["success"] = v["status"] == PASS
    return v


def combine(verdicts: list[dict], **extra: Any) -> dict:
    """One verdict over several datasets: the worst status wins.

    Returns:
        `{"status", "success", "datasets": {name: verdict}, "failures": [... with dataset]}`.
    """
    status = max((x["status"] for x in verdicts), key=_RANK.__getitem__, default=ERROR)
    failures = [{"dataset": x["dataset"], **f} for x in verdicts for f in x["failures"]]
    errors = [f"{x['dataset']}: {x['error']}" for x in verdicts if x.get("error")]
    return {"status": status, "success": status == PASS, "failures": failures, "errors": errors,
            "datasets": {x["dataset"]: x for x in verdicts}, **extra}


def summary_lines(verdict: dict, limit: int = 20) -> list[str]:
    """Human-readable lines naming each failing feature and statistic."""
    lines = [f"  error: {e}" for e in verdict.get("errors", [])]
    for f in verdict["failures"][:limit]:
        value = f["value"]
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, dict):
            value = value.get("observed_value", value.get("unexpected_percent", value))
        lines.append(f"  {f['dataset']}.{f['feature']}: {f['statistic']} = {value}"
                     + (f" (threshold {f['threshold']})" if f.get("threshold") is not None else "")
                     + (f" [{f['reason']}]" if f.get("reason") else ""))
    if len(verdict["failures"]) > limit:
        lines.append(f"  ... {len(verdict['failures']) - limit} more in the verdict JSON")
    return lines
