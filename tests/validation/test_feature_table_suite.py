"""The feature-table suite that export runs on the Feast repo's tables (validation/suites.py)."""
from __future__ import annotations

import pandas as pd
import pytest

from feature_repo import feature_tables
from feature_repo import names as n
from validation.suites import feature_table_suite, run_suite


@pytest.fixture(scope="module")
def item_stats() -> pd.DataFrame:
    t0 = pd.Timestamp("2011-03-01", tz="UTC")
    events = pd.DataFrame({
        n.USER_ID: ["u1", "u1", "u2", None], n.ITEM_ID: ["A", "A", "A", "B"],
        n.EVENT_TYPE: n.PURCHASE, n.QUANTITY: [1, 2, 1, 3], n.UNIT_PRICE: [2.0, 2.0, 2.5, 1.0],
        n.EVENT_TIMESTAMP: [t0, t0 + pd.Timedelta(days=2), t0 + pd.Timedelta(days=2), t0]})
    return feature_tables.item_purchase_stats(events)


def _failed_columns(verdict: dict) -> set[str]:
    return {f.get("column") for f in verdict["failures"]}


def test_the_table_as_written_passes(item_stats):
    verdict = run_suite(item_stats, feature_table_suite(n.ITEM_STATS_VIEW), "item_stats")
    assert verdict["success"], verdict["failures"]


@pytest.mark.parametrize("column, value", [(n.ITEM_REPEAT_RATE, 1.5), (n.ITEM_REPEAT_RATE, -0.1),
                                           (n.ITEM_BUYER_COUNT, -1), (n.ITEM_REPEAT_RATE, None)])
def test_a_value_out_of_range_or_missing_fails_naming_the_column(item_stats, column, value):
    bad = item_stats.copy()
    bad[column] = bad[column].astype("float64")
    bad.loc[bad.index[0], column] = value
    verdict = run_suite(bad, feature_table_suite(n.ITEM_STATS_VIEW), "item_stats")
    assert not verdict["success"]
    assert _failed_columns(verdict) == {column}


@pytest.fixture(scope="module")
def windows() -> dict[str, pd.DataFrame]:
    t0 = pd.Timestamp("2011-03-01", tz="UTC")
    events = pd.DataFrame({
        n.USER_ID: ["u1", "u1", "u2", "u2"], n.ITEM_ID: ["A", "A", "A", "B"],
        n.EVENT_TYPE: [n.PURCHASE, n.PURCHASE, n.VIEW, n.PURCHASE], n.QUANTITY: [1, 2, 1, 3],
        n.UNIT_PRICE: [2.0, 2.0, 2.5, 1.0],
        n.EVENT_TIMESTAMP: [t0, t0 + pd.Timedelta(days=2), t0 + pd.Timedelta(days=3), t0 + pd.Timedelta(days=9)]})
    return {n.USER_WINDOWS_VIEW: feature_tables.user_purchase_windows(events),
            n.ITEM_WINDOWS_VIEW: feature_tables.item_activity_windows(events)}


@pytest.mark.parametrize("table, column, value", [
    (n.USER_WINDOWS_VIEW, "user_revenue_30d", -1.0), (n.USER_WINDOWS_VIEW, "user_purchases_7d", None),
    (n.ITEM_WINDOWS_VIEW, "item_purchases_30d", -2.0), (n.ITEM_WINDOWS_VIEW, "item_conversion_30d", -0.5)])
def test_the_activity_windows_are_checked_too(windows, table, column, value):
    """Export's gate runs the suite on every table of FEATURE_TABLES; the windows feed the ranker. A
    conversion above 1 (purchases without logged views, as on Online Retail) is allowed; below 0 is not."""
    good = windows[table]
    assert len(good) and run_suite(good, feature_table_suite(table), table)["success"]
    if table == n.ITEM_WINDOWS_VIEW:
        above = good.copy()
        above["item_conversion_30d"] = 12.8
        assert run_suite(above, feature_table_suite(table), table)["success"]
    bad = good.copy()
    bad[column] = bad[column].astype("float64")
    bad.loc[bad.index[0], column] = value
    verdict = run_suite(bad, feature_table_suite(table), table)
    assert not verdict["success"] and _failed_columns(verdict) == {column}
