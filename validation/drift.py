"""Reference profiles and drift statistics between a blessed reference and a new batch.

Where it sits: validation, between the data a stage produced (event log,
training set) and export. :func:`profile` summarises a batch into a small JSON
document (no pickle) that is stored with each published bundle under
`reference/`; the bundle CURRENT names is the *blessed reference*. The next
export, or `cartwise validate --candidate FILE`, calls :func:`compare` to
measure how far the new batch has moved from it, feature by feature:

* categorical columns: Jensen-Shannon divergence (base 2, in [0, 1]) of the
  value frequencies and the share of rows carrying a category the reference
  never saw;
* numeric columns: population stability index (PSI) over the reference's
  deciles, which needs no distribution assumption and is cheap on millions of
  rows (the 0.1 / 0.25 rules of thumb come from credit scoring), and a
  Kolmogorov-Smirnov distance on quantiles (largest gap between the two
  empirical CDFs at the reference's percentiles). PSI alone is blunt on
  heavily tied values such as shop prices (a 50% price rise moves few decile
  edges), the KS distance sees every percentile;
* every column: absolute change of the null fraction, and its dtype;
* the table: row ratio (rows per day of data when there is a time column, so a
  one-month file compares fairly with a ten-month reference).

A statistic without a threshold is a failing check, never a silent pass.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import pandas as pd

from feature_repo import names as n

#: Identifier columns: schema and nulls are checked, distributions are not (ids churn by design).
ID_COLUMNS = frozenset({n.EVENT_ID, n.USER_ID, n.ITEM_ID, n.SESSION_ID, n.TITLE})
#: A string column with more distinct values than this in the reference is treated as an id.
MAX_CATEGORIES = 1000
DECILES = np.linspace(0.1, 0.9, 9)
PERCENTILES = np.linspace(0.01, 0.99, 99)
#: Floor of a bin share in PSI / JS, so an empty bin gives a large but finite value.
EPS = 1e-4
STATISTICS = ("js_divergence", "new_category_share", "psi", "ks", "null_fraction_change", "row_ratio_min",
              "row_ratio_max")
#: Threshold key per statistic (cartwise.yaml `validation.drift`).
THRESHOLD_KEYS = {"js_divergence": "max_js_divergence", "new_category_share": "max_new_category_share",
                  "psi": "max_psi", "ks": "max_ks", "null_fraction_change": "max_null_fraction_change",
                  "row_ratio_min": "min_row_ratio", "row_ratio_max": "max_row_ratio"}


def _is_listlike(s: pd.Series) -> bool:
    sample = s.dropna().head(20)
    return len(sample) > 0 and any(isinstance(v, (list, tuple, np.ndarray, dict)) for v in sample)


def column_kind(s: pd.Series) -> str:
    """How a column is monitored: `numeric`, `categorical`, `time`, `id` or `other` (lists)."""
    if s.name in ID_COLUMNS:
        return "id"
    if pd.api.types.is_bool_dtype(s.dtype):
        return "categorical"
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        return "time"
    if pd.api.types.is_numeric_dtype(s.dtype):
        return "numeric"
    if _is_listlike(s):
        return "other"
    return "categorical" if s.dropna().nunique() <= MAX_CATEGORIES else "id"


def _days(df: pd.DataFrame, time_column: str | None) -> float | None:
    if not time_column or time_column not in df.columns or df[time_column].isna().all():
        return None
    t = pd.to_datetime(df[time_column], utc=True)
    # at least one day, so a batch stamped within a single day has a finite rate
    return max(1.0, (t.max() - t.min()).total_seconds() / 86400.0)


def _bins(values: np.ndarray, edges: list[float]) -> np.ndarray:
    idx = np.searchsorted(np.asarray(edges, dtype=float), values, side="right")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(float)
    return counts / max(1.0, counts.sum())


def profile(df: pd.DataFrame, dataset: str, time_column: str | None = n.EVENT_TIMESTAMP) -> dict:
    """Summarise a batch so later batches can be compared with it.

    Args:
        df: the batch (event log, training set, feature table).
        dataset: name recorded in the profile.
        time_column: timestamp column used for the rows-per-day rate, if present.

    Returns:
        JSON-serializable profile: rows, days covered, and per column its
        dtype, kind, null fraction and distribution (decile edges and bin
        shares for numerics, value shares for categoricals).
    """
    out: dict[str, Any] = {"dataset": dataset, "rows": int(len(df)), "time_column": time_column,
                           "days": _days(df, time_column), "columns": {}}
    for col in df.columns:
        s = df[col]
        kind = column_kind(s)
        c: dict[str, Any] = {"dtype": str(s.dtype), "kind": kind,
                             "null_fraction": float(s.isna().mean()) if len(s) else 0.0}
        if kind == "numeric":
            v = s.dropna().to_numpy(dtype=float)
            if len(v):
                edges = sorted(set(np.quantile(v, DECILES).tolist()))
                grid = np.unique(np.quantile(v, PERCENTILES))
                c.update(edges=edges, shares=_bins(v, edges).tolist(), mean=float(v.mean()), std=float(v.std()),
                         min=float(v.min()), max=float(v.max()), ks_grid=grid.tolist(), ks_cdf=_cdf(v, grid).tolist())
        elif kind == "categorical":
            freq = s.dropna().astype(str).value_counts(normalize=True)
            c["shares"] = {str(k): float(x) for k, x in freq.items()}
        out["columns"][str(col)] = c
    return out


def _cdf(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Share of `values` at or below each grid point (empirical CDF)."""
    s = np.sort(values)
    return np.searchsorted(s, grid, side="right") / max(1, len(s))


def ks_on_quantiles(ref_grid, ref_cdf, values: np.ndarray) -> float:
    """Largest |F_ref(x) - F_new(x)| over the reference's percentile points x."""
    if len(values) == 0:
        return 1.0
    return float(np.max(np.abs(np.asarray(ref_cdf) - _cdf(values, np.asarray(ref_grid, float)))))


def psi(ref_shares: np.ndarray, cand_shares: np.ndarray) -> float:
    """Population stability index: sum over bins of (c - r) * ln(c / r)."""
    r = np.clip(np.asarray(ref_shares, float), EPS, None)
    c = np.clip(np.asarray(cand_shares, float), EPS, None)
    return float(np.sum((c - r) * np.log(c / r)))


def js_divergence(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """Jensen-Shannon divergence (base 2, 0 = identical, 1 = disjoint) of two share maps."""
    keys = sorted(set(p) | set(q))
    a = np.array([p.get(k, 0.0) for k in keys], float)
    b = np.array([q.get(k, 0.0) for k in keys], float)
    if a.sum() == 0 or b.sum() == 0:
        return 1.0 if a.sum() != b.sum() else 0.0
    a, b = a / a.sum(), b / b.sum()
    m = (a + b) / 2

    def kl(x, y):
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / y[nz])))

    return max(0.0, min(1.0, 0.5 * kl(a, m) + 0.5 * kl(b, m)))


def _threshold(stat: str, feature: str, thresholds: Mapping[str, Any],
               overrides: Mapping[str, Mapping[str, Any]]) -> float | None:
    key = THRESHOLD_KEYS[stat]
    per = overrides.get(feature, {})
    value = per[key] if key in per else thresholds.get(key)
    return None if value is None else float(value)


def compare(reference: dict, df: pd.DataFrame, thresholds: Mapping[str, Any],
            overrides: Mapping[str, Mapping[str, Any]] | None = None) -> dict:
    """Drift of a batch against a reference profile, as pass/fail checks.

    Args:
        reference: a :func:`profile` of the blessed reference.
        df: the candidate batch.
        thresholds: `max_js_divergence`, `max_psi`, `max_null_fraction_change`,
            `max_new_category_share`, `min_row_ratio`, `max_row_ratio`; a missing
            or null key makes every check needing it fail.
        overrides: per-feature thresholds (same keys) replacing the global ones.

    Returns:
        `{"checks": [...], "failures": [...], "warnings": [...]}`; each check names
        the feature, the statistic, its value and the threshold.
    """
    overrides = overrides or {}
    checks: list[dict] = []
    warnings: list[dict] = []

    def check(feature: str, stat: str, value: float, upper: bool = True) -> None:
        limit = _threshold(stat, feature, thresholds, overrides)
        if limit is None:
            checks.append({"feature": feature, "statistic": stat, "value": value, "threshold": None,
                           "passed": False, "reason": f"missing threshold {THRESHOLD_KEYS[stat]}"})
            return
        ok = bool(value <= limit) if upper else bool(value >= limit)
        if isinstance(value, float) and math.isnan(value):
            ok = False
        checks.append({"feature": feature, "statistic": stat, "value": float(value), "threshold": limit,
                       "passed": ok})

    ref_cols = reference["columns"]
    time_column = reference.get("time_column")
    # table: rows per day when both sides have a time column, else plain rows
    ref_days, cand_days = reference.get("days"), _days(df, time_column)
    if ref_days and cand_days:
        ratio = (len(df) / cand_days) / max(1e-12, reference["rows"] / ref_days)
        basis = "rows_per_day"
    else:
        ratio = len(df) / max(1, reference["rows"])
        basis = "rows"
    check("<table>", "row_ratio_min", ratio, upper=False)
    check("<table>", "row_ratio_max", ratio, upper=True)
    checks[-1]["basis"] = checks[-2]["basis"] = basis

    for col, rc in ref_cols.items():
        if col not in df.columns:
            checks.append({"feature": col, "statistic": "column_missing", "value": 1.0, "threshold": 0.0,
                           "passed": False, "reason": "column of the reference is missing (renamed or dropped)"})
            continue
        s = df[col]
        if str(s.dtype) != rc["dtype"] and not _compatible(rc["dtype"], str(s.dtype)):
            checks.append({"feature": col, "statistic": "dtype", "value": str(s.dtype), "threshold": rc["dtype"],
                           "passed": False, "reason": f"retyped: reference {rc['dtype']}, now {s.dtype}"})
            continue
        null_fraction = float(s.isna().mean()) if len(s) else 0.0
        check(col, "null_fraction_change", abs(null_fraction - rc["null_fraction"]))
        checks[-1]["reference"], checks[-1]["candidate"] = rc["null_fraction"], null_fraction
        if rc["kind"] == "numeric" and "edges" in rc:
            v = s.dropna().to_numpy(dtype=float)
            value = psi(rc["shares"], _bins(v, rc["edges"])) if len(v) else float("inf")
            check(col, "psi", value)
            checks[-1]["reference_mean"], checks[-1]["candidate_mean"] = rc["mean"], float(v.mean()) if len(v) else None
            check(col, "ks", ks_on_quantiles(rc["ks_grid"], rc["ks_cdf"], v))
        elif rc["kind"] == "categorical":
            freq = s.dropna().astype(str).value_counts(normalize=True)
            shares = {str(k): float(x) for k, x in freq.items()}
            check(col, "js_divergence", js_divergence(rc["shares"], shares))
            new = {k: x for k, x in shares.items() if k not in rc["shares"]}
            check(col, "new_category_share", float(sum(new.values())))
            if new:
                checks[-1]["new_categories"] = sorted(new, key=new.get, reverse=True)[:10]
    for col in df.columns:
        if col not in ref_cols:
            warnings.append({"feature": str(col), "statistic": "column_added",
                             "reason": "column not in the reference; not monitored until the next blessed export"})
    return {"checks": checks, "failures": [c for c in checks if not c["passed"]], "warnings": warnings}


def _compatible(ref: str, now: str) -> bool:
    """Dtype spellings that mean the same data (object vs pandas string for text)."""
    text = {"object", "string", "str"}
    norm = lambda d: "string" if d.split("[")[0] in text else d  # noqa: E731
    return norm(ref) == norm(now)
