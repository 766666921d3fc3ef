"""Point-in-time correctness of the training-set join against naive oracles.

Oracle 1 recomputes features straight from the raw events: a row at time t
may only see events strictly before the midnight at or before t (snapshots
are stamped at the midnight after the day they summarize), and, for the
session view, events of the same session strictly before t.

Oracle 2 reads the feature table itself, with backfilled rows injected
(created long after their event time): the value visible at t is the one
with the latest event time among rows with event time <= t AND created
time <= t. Any value written after t shows up as a mismatch; a dropped
entity row as an id mismatch.

The join runs on the offline store the pipeline uses (the ASOF store of
feature_repo/offline_store.py; test_offline_store.py checks that it returns
Feast's own DuckDB frame).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from feast import FeatureStore
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feature_repo import definitions, feature_tables
from feature_repo import names as n
from pipelines.build_dataset import join_point_in_time
from pipelines.build_features import ASOF_DUCKDB, feature_store_yaml, write_tables
from pipelines.schema import conform_events, conform_items

pytestmark = pytest.mark.integration
T0 = pd.Timestamp("2011-03-01", tz="UTC")
USERS = ["u1", "u2", "u3"]
ITEMS = ["A", "B", "C"]
TYPES = ["purchase", "purchase", "add_to_cart", "view"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    d = tmp_path_factory.mktemp("feast_repo")
    (d / "feature_store.yaml").write_text(yaml.safe_dump(feature_store_yaml(d)))
    (d / "data").mkdir()
    return d


def _events(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=[n.USER_ID, n.ITEM_ID, "minute", n.QUANTITY, n.EVENT_TYPE, "s"])
    df[n.EVENT_TIMESTAMP] = T0 + pd.to_timedelta(df["minute"], unit="min")
    df[n.EVENT_ID] = [f"e{i}" for i in range(len(df))]
    df[n.SESSION_ID] = df[n.USER_ID] + "-" + df["s"].astype(str)
    df[n.UNIT_PRICE] = 2.0
    df[n.DEVICE] = "mobile"
    df[n.COUNTRY] = None
    df[n.SOURCE] = "test"
    df[n.IS_GUEST] = False
    return conform_events(df)


def _items(events: pd.DataFrame) -> pd.DataFrame:
    first = events.groupby(n.ITEM_ID)[n.EVENT_TIMESTAMP].min().reindex(ITEMS).fillna(T0)
    return conform_items(pd.DataFrame({
        n.ITEM_ID: ITEMS, n.TITLE: ["RED BAG", "BLUE BAG", "RED MUG"], n.CATEGORY: ["x", "y", "x"],
        n.PRICE: [1.0, 2.0, 3.0], n.IN_STOCK: [True, True, False], n.MARGIN: np.nan,
        n.FIRST_SEEN: pd.to_datetime(first.tolist(), utc=True)}))


def _before_day(events, t, **match):
    m = events[n.EVENT_TIMESTAMP] < t.floor("D")
    for k, v in match.items():
        m &= events[k] == v
    return events[m]


event_rows = st.lists(st.tuples(st.sampled_from(USERS), st.sampled_from(ITEMS), st.integers(0, 40 * 24 * 60),
                                st.integers(1, 5), st.sampled_from(TYPES), st.integers(0, 2)),
                      min_size=1, max_size=40)
entity_rows = st.lists(st.tuples(st.sampled_from(USERS + ["nobody"]), st.sampled_from(ITEMS),
                                 st.integers(0, 45 * 24 * 60), st.integers(0, 2)), min_size=1, max_size=25)
# no two identical backfills: rows with the same entity, event and created time have no defined winner (Feast's
# join does not say which it keeps), so the oracle could not tell which value is right
backfills = st.lists(st.tuples(st.sampled_from(USERS), st.integers(0, 40), st.integers(1, 10)), max_size=6,
                     unique_by=lambda b: b)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=event_rows, ents=entity_rows, back=backfills)
def test_join_matches_naive_oracles_and_keeps_every_row(repo, rows, ents, back):
    events = _events(rows)
    items = _items(events)
    write_tables(events, items, repo / "data", log=lambda m: None)
    # backfilled snapshots: valid from midnight `day`, but only written `late` days later
    stats = pd.read_parquet(repo / "data" / "user_purchase_stats.parquet")
    extra = []
    for i, (user, day, late) in enumerate(back):
        ts = T0 + pd.Timedelta(days=day)
        extra.append({**{c: 0 for c in stats.columns}, n.USER_ID: user, n.EVENT_TIMESTAMP: ts,
                      n.CREATED_TIMESTAMP: ts + pd.Timedelta(days=late), n.USER_PURCHASE_COUNT: 10_000 + i})
    if extra:
        stats = pd.concat([stats, pd.DataFrame(extra).astype(stats.dtypes.to_dict())], ignore_index=True)
        stats.to_parquet(repo / "data" / "user_purchase_stats.parquet", index=False)
    store = FeatureStore(repo_path=str(repo))
    assert store.config.offline_store.type == ASOF_DUCKDB  # the store the pipeline runs on
    store.apply(definitions.all_objects(repo / "data"))

    entity_df = pd.DataFrame(ents, columns=[n.USER_ID, n.ITEM_ID, "minute", "s"])
    entity_df[n.EVENT_TIMESTAMP] = (T0 + pd.to_timedelta(entity_df["minute"], unit="min")).astype("datetime64[us, UTC]")
    entity_df[n.EVENT_ID] = [f"q{i}" for i in range(len(entity_df))]
    entity_df[n.SESSION_ID] = entity_df[n.USER_ID] + "-" + entity_df["s"].astype(str)
    entity_df[n.CATEGORY_KEY] = entity_df[n.ITEM_ID].map(dict(zip(items[n.ITEM_ID], items[n.CATEGORY])))
    entity_df = entity_df.drop(columns=["minute", "s"])

    out, _ = join_point_in_time(store, entity_df)

    assert list(out[n.EVENT_ID]) == list(entity_df[n.EVENT_ID])  # nothing dropped, order kept
    purchases = events[events[n.EVENT_TYPE] == "purchase"]
    for d in out.to_dict("records"):
        t, user, item = pd.Timestamp(d[n.EVENT_TIMESTAMP]), d[n.USER_ID], d[n.ITEM_ID]
        # oracle 2: the table as written, created-time cut-off included
        visible = stats[(stats[n.USER_ID] == user) & (stats[n.EVENT_TIMESTAMP] <= t) & (stats[n.CREATED_TIMESTAMP] <= t)]
        want = visible.sort_values([n.EVENT_TIMESTAMP, n.CREATED_TIMESTAMP]).iloc[-1][n.USER_PURCHASE_COUNT] if len(visible) else 0
        assert d[n.USER_PURCHASE_COUNT] == want
        # oracle 1: raw events
        up = _before_day(purchases, t, user_id=user)
        assert d[n.USER_REVENUE] == pytest.approx(float((up[n.QUANTITY] * up[n.UNIT_PRICE]).sum())) or extra
        for w in (7, 30):
            recent = up[up[n.EVENT_TIMESTAMP] >= t.floor("D") - pd.Timedelta(days=w)]
            assert d[f"user_purchases_{w}d"] == len(recent)
        ip = _before_day(purchases, t, item_id=item)
        assert d[n.ITEM_PURCHASE_COUNT] == len(ip)
        buy_days = ip[n.EVENT_TIMESTAMP].dt.floor("D").groupby(ip[n.USER_ID]).nunique()  # no item sold: the fill
        prior = feature_tables.REPEAT_PRIOR_BUYERS
        assert d[n.ITEM_REPEAT_RATE] == pytest.approx(
            ((buy_days >= 2).sum() + prior * feature_tables.REPEAT_PRIOR_RATE) / (len(buy_days) + prior))
        iv = _before_day(events[events[n.EVENT_TYPE] == "view"], t, item_id=item)
        assert d["item_views_7d"] == (iv[n.EVENT_TIMESTAMP] >= t.floor("D") - pd.Timedelta(days=7)).sum()
        ui = _before_day(events, t, user_id=user, item_id=item)
        assert d[n.UI_PURCHASES] == (ui[n.EVENT_TYPE] == "purchase").sum()
        assert d[n.UI_CARTS] == (ui[n.EVENT_TYPE] == "add_to_cart").sum()
        sess = events[(events[n.SESSION_ID] == d[n.SESSION_ID]) & (events[n.EVENT_TIMESTAMP] < t)]
        sess = sess.sort_values([n.EVENT_TIMESTAMP, n.EVENT_ID])
        if len(sess) and t - sess[n.EVENT_TIMESTAMP].max() > definitions.SESSION_TTL:
            sess = sess.iloc[0:0]  # the session expired: its state is no longer served
        assert list(d[n.SESSION_VIEWED]) == list(sess[sess[n.EVENT_TYPE] == "view"][n.ITEM_ID])[-n.SESSION_MAX_ITEMS:]
        assert list(d[n.SESSION_CARTED]) == list(sess[sess[n.EVENT_TYPE] == "add_to_cart"][n.ITEM_ID])[-n.SESSION_MAX_ITEMS:]


def test_snapshot_never_contains_its_own_day():
    # two purchases on 2011-03-01 and one on 2011-03-03: snapshots at 03-02 (2 lines) and 03-04 (3 lines)
    events = _events([("u1", "A", 60, 1, "purchase", 0), ("u1", "B", 600, 1, "purchase", 0),
                      ("u1", "A", 2 * 24 * 60 + 5, 2, "purchase", 1)])
    t = feature_tables.user_purchase_stats(events)
    assert list(t[n.EVENT_TIMESTAMP].dt.strftime("%m-%d")) == ["03-02", "03-04"]
    assert list(t[n.USER_PURCHASE_COUNT]) == [2, 3]
    assert list(t[n.USER_ORDER_COUNT]) == [1, 2]          # sessions u1-0 and u1-1
    assert list(t[n.USER_DISTINCT_ITEMS]) == [2, 2]
    assert np.allclose(t[n.USER_REVENUE], [4.0, 8.0])
    assert (t[n.CREATED_TIMESTAMP] == t[n.EVENT_TIMESTAMP]).all()


def test_repeat_rate_counts_customers_back_on_another_day():
    # A: u1 twice on 03-01 (one day), again on 03-03 and 03-04; u2 on 03-03 and 03-05; a guest on 03-02 and 03-04.
    # B: only a guest buys, twice on two days.
    rows = [("u1", "A", 60, 1, "purchase", 0), ("u1", "A", 120, 1, "purchase", 0),
            (None, "A", 24 * 60 + 5, 1, "purchase", 1), ("u1", "A", 2 * 24 * 60, 1, "purchase", 2),
            ("u2", "A", 2 * 24 * 60 + 30, 1, "purchase", 0), ("u1", "A", 3 * 24 * 60, 1, "purchase", 3),
            (None, "A", 3 * 24 * 60 + 9, 1, "purchase", 4), ("u2", "A", 4 * 24 * 60, 1, "purchase", 1),
            (None, "B", 60, 1, "purchase", 5), (None, "B", 24 * 60 + 60, 1, "purchase", 6)]
    events = _events([(u or "guest", *r) for u, *r in rows])
    events.loc[events[n.USER_ID] == "guest", n.USER_ID] = None  # guest checkouts: no user id
    t = feature_tables.item_purchase_stats(events)
    prior, rate = feature_tables.REPEAT_PRIOR_BUYERS, feature_tables.REPEAT_PRIOR_RATE
    a = t[t[n.ITEM_ID] == "A"]
    # valid from: 03-02 (u1's first day), 03-03 (a guest only), 03-04 (u1 back, u2 new), 03-05 (u1 a third day,
    # a guest), 03-06 (u2 back)
    assert list(a[n.EVENT_TIMESTAMP].dt.strftime("%m-%d")) == ["03-02", "03-03", "03-04", "03-05", "03-06"]
    assert list(a[n.ITEM_BUYER_COUNT]) == [1, 1, 2, 2, 2]
    repeat = np.array([0, 0, 1, 1, 2])  # a third day or a second line on one day counts no one twice
    assert np.allclose(a[n.ITEM_REPEAT_RATE], (repeat + prior * rate) / (a[n.ITEM_BUYER_COUNT] + prior))
    b = t[t[n.ITEM_ID] == "B"]
    assert list(b[n.ITEM_BUYER_COUNT]) == [0, 0] and np.allclose(b[n.ITEM_REPEAT_RATE], rate)  # guests: the prior


def test_windows_change_where_days_enter_and_leave():
    # one purchase on 03-01: a w-day window valid from midnight c covers days c-w .. c-1, so the
    # purchase counts from 03-02 and leaves the 7-day window at 03-09, the 30-day at 04-01, the 90-day at 05-31
    events = _events([("u1", "A", 60, 1, "purchase", 0)])
    w = feature_tables.user_purchase_windows(events)
    assert list(w[n.EVENT_TIMESTAMP].dt.strftime("%m-%d")) == ["03-02", "03-09", "04-01", "05-31"]

    def at(day, col):  # the value a point-in-time join sees on `day`
        rows = w[w[n.EVENT_TIMESTAMP] <= pd.Timestamp(f"2011-{day}", tz="UTC")]
        return rows.iloc[-1][col]

    assert [at(d, "user_purchases_7d") for d in ("03-02", "03-08", "03-09")] == [1, 1, 0]
    assert [at(d, "user_purchases_30d") for d in ("03-09", "03-31", "04-01")] == [1, 1, 0]
    assert [at(d, "user_purchases_90d") for d in ("05-30", "05-31")] == [1, 0]
    assert at("03-05", "user_revenue_7d") == pytest.approx(2.0)


def test_session_rows_at_the_same_instant_are_strictly_ordered():
    # view A then cart B in one session at the same second: the later row must carry both
    events = _events([("u1", "A", 600, 1, "view", 0), ("u1", "B", 600, 1, "add_to_cart", 0)])
    t = feature_tables.session_context(events, _items(events)).sort_values(n.EVENT_TIMESTAMP)
    assert t[n.EVENT_TIMESTAMP].is_unique and (t[n.EVENT_TIMESTAMP] > events[n.EVENT_TIMESTAMP].max()).all()
    last = t.iloc[-1]
    assert list(last[n.SESSION_VIEWED]) == ["A"] and list(last[n.SESSION_CARTED]) == ["B"]


def test_missing_conversion_is_filled_with_the_prior_the_table_writes():
    from pipelines.build_dataset import FILL_VALUES

    events = _events([("u1", "A", 60, 1, "purchase", 0)])
    w = feature_tables.item_activity_windows(events)
    assert w.iloc[-1]["item_purchases_30d"] == 0
    assert w.iloc[-1]["item_conversion_30d"] == pytest.approx(FILL_VALUES["item_conversion_30d"])
