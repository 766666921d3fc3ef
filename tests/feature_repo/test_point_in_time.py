"""Point-in-time correctness of the training-set join against a naive oracle.

The oracle recomputes each feature straight from the raw events: a row at
time t may only see purchases strictly before the midnight at or before t
(snapshots are stamped at the midnight after the day they summarize). Any
value written after t would show up as a mismatch; any dropped entity row as
a length or id mismatch.
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
from pipelines.build_features import feature_store_yaml, write_tables

pytestmark = pytest.mark.integration
T0 = pd.Timestamp("2011-03-01", tz="UTC")
USERS = ["u1", "u2", "u3"]
ITEMS = ["A", "B", "C"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    d = tmp_path_factory.mktemp("feast_repo")
    (d / "feature_store.yaml").write_text(yaml.safe_dump(feature_store_yaml(d)))
    (d / "data").mkdir()
    return d


def _events(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=[n.USER_ID, n.ITEM_ID, "minute", n.QUANTITY])
    df[n.EVENT_TIMESTAMP] = (T0 + pd.to_timedelta(df["minute"], unit="min")).astype("datetime64[us, UTC]")
    df[n.EVENT_ID] = [f"e{i}" for i in range(len(df))]
    df[n.SESSION_ID] = [f"s{i // 2}" for i in range(len(df))]
    df[n.EVENT_TYPE] = "purchase"
    df[n.UNIT_PRICE] = 2.0
    return df


def _items(events: pd.DataFrame) -> pd.DataFrame:
    first = events.groupby(n.ITEM_ID)[n.EVENT_TIMESTAMP].min().reindex(ITEMS).fillna(T0)
    return pd.DataFrame({n.ITEM_ID: ITEMS, n.CATEGORY: ["x", "y", "x"], n.PRICE: [1.0, 2.0, 3.0],
                         n.FIRST_SEEN: pd.to_datetime(first.tolist(), utc=True)})


def _oracle(events: pd.DataFrame, key: str, value: str, t: pd.Timestamp) -> tuple[int, float]:
    seen = events[(events[key] == value) & (events[n.EVENT_TIMESTAMP] < t.floor("D"))]
    return len(seen), float((seen[n.QUANTITY] * seen[n.UNIT_PRICE]).sum())


event_rows = st.lists(st.tuples(st.sampled_from(USERS), st.sampled_from(ITEMS),
                                st.integers(0, 10 * 24 * 60), st.integers(1, 5)), min_size=1, max_size=40)
entity_rows = st.lists(st.tuples(st.sampled_from(USERS + ["nobody"]), st.sampled_from(ITEMS),
                                 st.integers(0, 12 * 24 * 60)), min_size=1, max_size=30)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=event_rows, ents=entity_rows)
def test_join_matches_naive_oracle_and_keeps_every_row(repo, rows, ents):
    events = _events(rows)
    write_tables(events, _items(events), repo / "data", log=lambda m: None)
    store = FeatureStore(repo_path=str(repo))
    store.apply(definitions.all_objects(repo / "data"))

    entity_df = pd.DataFrame(ents, columns=[n.USER_ID, n.ITEM_ID, "minute"])
    entity_df[n.EVENT_TIMESTAMP] = (T0 + pd.to_timedelta(entity_df["minute"], unit="min")).astype("datetime64[us, UTC]")
    entity_df[n.EVENT_ID] = [f"q{i}" for i in range(len(entity_df))]
    entity_df = entity_df.drop(columns="minute")

    out, _ = join_point_in_time(store, entity_df)

    assert list(out[n.EVENT_ID]) == list(entity_df[n.EVENT_ID])  # nothing dropped, order kept
    for row in out.itertuples(index=False):
        d = row._asdict()
        t = pd.Timestamp(d[n.EVENT_TIMESTAMP])
        count, revenue = _oracle(events, n.USER_ID, d[n.USER_ID], t)
        assert d[n.USER_PURCHASE_COUNT] == count
        assert d[n.USER_REVENUE] == pytest.approx(revenue)
        icount, irevenue = _oracle(events, n.ITEM_ID, d[n.ITEM_ID], t)
        assert d[n.ITEM_PURCHASE_COUNT] == icount
        assert d[n.ITEM_REVENUE] == pytest.approx(irevenue)


def test_snapshot_never_contains_its_own_day():
    # two purchases on 2011-03-01 and one on 2011-03-03: snapshots at 03-02 (2 lines) and 03-04 (3 lines)
    events = _events([("u1", "A", 60, 1), ("u1", "B", 600, 1), ("u1", "A", 2 * 24 * 60 + 5, 2)])
    t = feature_tables.user_purchase_stats(events)
    assert list(t[n.EVENT_TIMESTAMP].dt.strftime("%m-%d")) == ["03-02", "03-04"]
    assert list(t[n.USER_PURCHASE_COUNT]) == [2, 3]
    assert list(t[n.USER_ORDER_COUNT]) == [1, 2]          # sessions s0 (rows 0,1) and s1 (row 2)
    assert list(t[n.USER_DISTINCT_ITEMS]) == [2, 2]
    assert np.allclose(t[n.USER_REVENUE], [4.0, 8.0])
    assert (t[n.CREATED_TIMESTAMP] == t[n.EVENT_TIMESTAMP]).all()
