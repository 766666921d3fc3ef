"""Feature tables behind the sources in `feature_repo/definitions.py`.

Where it sits: canonical events (pipelines/ingest) -> these functions ->
parquet tables that Feast joins point in time (offline) and materializes
(online). Pure pandas; no I/O.

Point-in-time rule: a snapshot row stamped at midnight `D` (UTC) is computed
only from events strictly before `D`, and both its `event_timestamp` and its
`created_timestamp` are `D`. An entity row at time `t` therefore sees the
snapshot of the last midnight at or before `t`, which never contains an event
at or after `t`: nothing from the future leaks into a training row.
"""
from __future__ import annotations

import pandas as pd

from feature_repo import names as n


def _day_end(ts: pd.Series) -> pd.Series:
    """The midnight after each timestamp: when a snapshot including it becomes valid."""
    return ts.dt.floor("D") + pd.Timedelta(days=1)


def _stamp(df: pd.DataFrame) -> pd.DataFrame:
    df[n.EVENT_TIMESTAMP] = df[n.EVENT_TIMESTAMP].astype("datetime64[us, UTC]")
    df[n.CREATED_TIMESTAMP] = df[n.EVENT_TIMESTAMP]
    return df


def _cumulative_distinct(df: pd.DataFrame, key: str, value: str) -> pd.DataFrame:
    """Per (key, snapshot) the number of distinct `value`s seen up to that snapshot."""
    first = df.groupby([key, value], observed=True)["valid_from"].min().reset_index()
    per_day = first.groupby([key, "valid_from"]).size().rename("new").reset_index()
    per_day["cum"] = per_day.groupby(key)["new"].cumsum()
    return per_day[[key, "valid_from", "cum"]]


def user_purchase_stats(events: pd.DataFrame) -> pd.DataFrame:
    """Cumulative purchase statistics per customer, one row per day with purchases.

    Args:
        events: canonical event log (any event types; only customer purchases count).

    Returns:
        Columns user_id, event_timestamp, created_timestamp and names.USER_FEATURES.
    """
    p = events[(events[n.EVENT_TYPE] == n.PURCHASE) & events[n.USER_ID].notna()].copy()
    cols = [n.USER_ID, n.EVENT_TIMESTAMP, n.CREATED_TIMESTAMP, *n.USER_FEATURES]
    if p.empty:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in cols})
    p["valid_from"] = _day_end(p[n.EVENT_TIMESTAMP])
    p["revenue"] = p[n.QUANTITY] * p[n.UNIT_PRICE].fillna(0.0)
    daily = (
        p.groupby([n.USER_ID, "valid_from"])
        .agg(lines=(n.ITEM_ID, "size"), revenue=("revenue", "sum"))
        .reset_index()
        .sort_values([n.USER_ID, "valid_from"])
    )
    g = daily.groupby(n.USER_ID)
    daily[n.USER_PURCHASE_COUNT] = g["lines"].cumsum().astype("int64")
    daily[n.USER_REVENUE] = g["revenue"].cumsum().astype("float64")
    daily[n.USER_DAYS_ACTIVE] = (g.cumcount() + 1).astype("int64")
    for col, value in ((n.USER_ORDER_COUNT, n.SESSION_ID), (n.USER_DISTINCT_ITEMS, n.ITEM_ID)):
        cum = _cumulative_distinct(p, n.USER_ID, value).rename(columns={"cum": col})
        daily = daily.merge(cum, on=[n.USER_ID, "valid_from"], how="left")
        daily[col] = daily.groupby(n.USER_ID)[col].ffill().fillna(0).astype("int64")
    orders = daily[n.USER_ORDER_COUNT].where(daily[n.USER_ORDER_COUNT] > 0, 1)
    daily[n.USER_AVG_ORDER_VALUE] = (daily[n.USER_REVENUE] / orders).astype("float64")
    daily = daily.rename(columns={"valid_from": n.EVENT_TIMESTAMP})
    return _stamp(daily)[cols].reset_index(drop=True)


def item_purchase_stats(events: pd.DataFrame) -> pd.DataFrame:
    """Cumulative sales per item (guest purchases included), one row per day with sales.

    Args:
        events: canonical event log.

    Returns:
        Columns item_id, event_timestamp, created_timestamp and names.ITEM_FEATURES.
    """
    p = events[events[n.EVENT_TYPE] == n.PURCHASE].copy()
    cols = [n.ITEM_ID, n.EVENT_TIMESTAMP, n.CREATED_TIMESTAMP, *n.ITEM_FEATURES]
    if p.empty:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in cols})
    p["valid_from"] = _day_end(p[n.EVENT_TIMESTAMP])
    p["revenue"] = p[n.QUANTITY] * p[n.UNIT_PRICE].fillna(0.0)
    daily = (
        p.groupby([n.ITEM_ID, "valid_from"])
        .agg(lines=(n.USER_ID, "size"), revenue=("revenue", "sum"))
        .reset_index()
        .sort_values([n.ITEM_ID, "valid_from"])
    )
    g = daily.groupby(n.ITEM_ID)
    daily[n.ITEM_PURCHASE_COUNT] = g["lines"].cumsum().astype("int64")
    daily[n.ITEM_REVENUE] = g["revenue"].cumsum().astype("float64")
    buyers = _cumulative_distinct(p[p[n.USER_ID].notna()], n.ITEM_ID, n.USER_ID)
    daily = daily.merge(buyers.rename(columns={"cum": n.ITEM_BUYER_COUNT}), on=[n.ITEM_ID, "valid_from"], how="left")
    daily[n.ITEM_BUYER_COUNT] = daily.groupby(n.ITEM_ID)[n.ITEM_BUYER_COUNT].ffill().fillna(0).astype("int64")
    daily = daily.rename(columns={"valid_from": n.EVENT_TIMESTAMP})
    return _stamp(daily)[cols].reset_index(drop=True)


def item_content(items: pd.DataFrame) -> pd.DataFrame:
    """Content features of every catalog item, valid from the item's first appearance.

    Args:
        items: canonical item catalog.

    Returns:
        Columns item_id, event_timestamp (= first_seen), created_timestamp, category, price.
    """
    out = items[[n.ITEM_ID, n.FIRST_SEEN, n.CATEGORY, n.PRICE]].rename(columns={n.FIRST_SEEN: n.EVENT_TIMESTAMP}).copy()
    out[n.CATEGORY] = out[n.CATEGORY].astype("string").fillna("unknown").astype(object)
    out[n.PRICE] = out[n.PRICE].astype("float64")
    out[n.ITEM_ID] = out[n.ITEM_ID].astype(object)
    return _stamp(out)[[n.ITEM_ID, n.EVENT_TIMESTAMP, n.CREATED_TIMESTAMP, n.CATEGORY, n.PRICE]].reset_index(drop=True)
