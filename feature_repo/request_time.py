"""The arithmetic of the request-time (on-demand) features, written once for Feast and for serving.

Where it sits: the on-demand feature views `request_features` and
`ranking_request_features` (feature_repo/definitions.py) call these
functions on the joined training frame inside `get_historical_features`;
the learned ranker at serve time (`serving/ranking.py`) calls them on a
request's candidate columns as NumPy arrays, so both compute exactly the
same values (tests/serving/test_ranking.py compares the two), and serving
skips pandas (calling the views' pandas functions on 500 rows cost about
8 ms a request, measured in a profile under load; these functions on arrays 0.08 ms).

Inputs are float64 arrays, NaN where Feast's join found no row; times are
Unix seconds, `request_ts` the request's. A request time before 1970 is
never served (serving.request.MIN_TIME), so the hour and weekday follow
from whole days since the epoch (1970-01-01 was a Thursday, weekday 3).
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import pandas as pd

DAY = 86400.0


def _filled(x: np.ndarray, value) -> np.ndarray:
    """x with NaN replaced by `value` (a scalar or an array of the same shape), as pandas' fillna."""
    return np.where(np.isnan(x), value, x)


def request_features(c: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Hour and weekday of the request, days since the user's last purchase (-1: none), the item's age in
    days, its price relative to the user's average order value (0: unknown)."""
    ts = np.asarray(c["request_ts"], dtype=np.float64)
    whole = np.floor(ts).astype(np.int64)
    out = {"request_hour": (whole // 3600) % 24, "request_weekday": (whole // 86400 + 3) % 7}
    last = _filled(c["user_last_purchase_unix"], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["days_since_last_purchase"] = np.where(last > 0, (ts - last) / DAY, -1.0)
        out["item_age_days"] = (ts - _filled(c["first_seen_unix"], ts)) / DAY
        aov = _filled(c["user_avg_order_value"], 0.0)
        out["price_to_user_aov"] = _filled(_filled(c["price"], 0.0) / np.where(aov > 0, aov, np.nan), 0.0)
    return out


def ranking_request_features(c: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Days since this user last (and first) bought this item and this category (-1: never), the category's
    share of the user's purchase lines, and the mean interval between the user's purchase days of the item
    (-1: fewer than two)."""
    ts = np.asarray(c["request_ts"], dtype=np.float64)
    out = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for col, src in (("ui_days_since_purchase", "ui_last_purchase_unix"),
                         ("uc_days_since_purchase", "uc_last_purchase_unix")):
            last = _filled(c[src], 0.0)
            out[col] = np.where(last > 0, (ts - last) / DAY, -1.0)
        total = _filled(c["user_purchase_count"], 0.0)
        share = _filled(c["uc_purchases"], 0.0) / np.where(total > 0, total, np.nan)
        out["uc_share"] = _filled(share, 0.0)
        first = _filled(c["ui_first_purchase_unix"], 0.0)
        out["ui_days_since_first_purchase"] = np.where(first > 0, (ts - first) / DAY, -1.0)
        days = _filled(c["ui_purchase_days"], 0.0)
        last = _filled(c["ui_last_purchase_unix"], 0.0)
        gap = (last - first) / DAY / np.where(days > 1, days - 1, np.nan)
        out["ui_repurchase_interval"] = _filled(gap, -1.0)
    return out


#: input columns of each function
INPUTS = {
    "request_features": ("request_ts", "user_last_purchase_unix", "first_seen_unix", "user_avg_order_value", "price"),
    "ranking_request_features": ("request_ts", "ui_last_purchase_unix", "uc_last_purchase_unix",
                                 "user_purchase_count", "uc_purchases", "ui_first_purchase_unix", "ui_purchase_days"),
}


def on_frame(fn: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]], inputs: pd.DataFrame) -> pd.DataFrame:
    """`fn` applied to a joined frame, as an on-demand view returns it (same index; missing values as NaN)."""
    cols = {c: pd.to_numeric(inputs[c], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
            for c in INPUTS[fn.__name__]}
    return pd.DataFrame(fn(cols), index=inputs.index)
