"""One suite, two real online stores (SQLite file and a redis-server process):
online/offline parity, newest-by-event-time wins, staleness at read time.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import yaml
from feast import FeatureStore
from hypothesis import given
from hypothesis import strategies as st

from feature_repo import definitions
from feature_repo import names as n
from pipelines.build_features import feature_store_yaml, write_tables
from serving.features import OnlineFeatureReader, push_session_state, session_reader
from tests.synthetic import make_shop

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_url(redis_server):
    """host:port of the real redis-server (tests/conftest.py `redis_server`)."""
    return redis_server.url


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    """A Feast repo with the synthetic shop's tables, on the parametrized online store."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        import redis

        host, port = url.split(":")
        redis.Redis(host=host, port=int(port)).flushall()
        online = {"type": "redis", "connection_string": url}
    else:
        online = None  # the default: feature_repo.online_stores.OrderedSqliteOnlineStore
    return shop_repo(tmp_path, online, n_users=40, n_items=30, purchases_per_user=12)


def shop_repo(tmp_path, online: dict | None, **shop):
    """A Feast repo in `tmp_path` with a synthetic shop's tables applied: (store, events, items)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "feature_store.yaml").write_text(yaml.safe_dump(feature_store_yaml(tmp_path, online)))
    events, items = make_shop(**shop)
    write_tables(events, items, tmp_path / "data", log=lambda m: None)
    fs = FeatureStore(repo_path=str(tmp_path))
    fs.apply(definitions.all_objects(tmp_path / "data"))
    return fs, events, items


PARITY_REFS = [f"{n.USER_STATS_VIEW}:{n.USER_PURCHASE_COUNT}", f"{n.USER_STATS_VIEW}:{n.USER_REVENUE}",
               f"{n.USER_WINDOWS_VIEW}:user_purchases_30d", f"{n.USER_PROFILE_VIEW}:{n.USER_TOP_CATEGORY}"]


def test_online_equals_offline_point_in_time_on_1000_pairs(store):
    """Materialize incrementally to 5 checkpoints; at each, 200 users online == offline as of it."""
    fs, events, _ = store
    rng = np.random.default_rng(0)
    users = sorted(events[n.USER_ID].dropna().unique())
    checkpoints = pd.date_range("2011-01-20 12:00", "2011-04-25 12:00", periods=5, tz="UTC")
    fs.materialize(start_date=dt.datetime(2010, 12, 1, tzinfo=dt.timezone.utc), end_date=checkpoints[0].to_pydatetime())
    compared = 0
    for i, cp in enumerate(checkpoints):
        if i:
            fs.materialize_incremental(end_date=cp.to_pydatetime())
        sample = rng.choice(users, size=200, replace=True)
        online = fs.get_online_features(features=PARITY_REFS, entity_rows=[{n.USER_ID: u} for u in sample]).to_dict()
        offline = fs.get_historical_features(
            entity_df=pd.DataFrame({"row": np.arange(len(sample)), n.USER_ID: sample, n.EVENT_TIMESTAMP: cp}),
            features=PARITY_REFS).to_df().sort_values("row")
        assert list(offline[n.USER_ID]) == list(sample)
        for ref in PARITY_REFS:
            col = ref.split(":")[1]
            a, b = online[col], offline[col].tolist()
            for x, y in zip(a, b):
                if y is None or (isinstance(y, float) and np.isnan(y)):
                    assert x is None, (cp, col)
                else:
                    assert x == pytest.approx(y), (cp, col)
            compared += len(a)
    assert compared == 5 * 200 * len(PARITY_REFS)


def test_newest_event_time_wins_whatever_the_arrival_order(store):
    fs, _, _ = store
    view = fs.get_feature_view(n.USER_STATS_VIEW)
    t1 = pd.Timestamp("2011-06-01", tz="UTC")
    t2 = t1 + pd.Timedelta(days=1)

    def row(ts, count):
        return {n.USER_ID: "late-arrival", n.EVENT_TIMESTAMP: ts, n.CREATED_TIMESTAMP: ts,
                **{f.name: 0 for f in view.features}, n.USER_PURCHASE_COUNT: count}

    fs.write_to_online_store(n.USER_STATS_VIEW, pd.DataFrame([row(t2, 2)]))   # the newer value arrives first
    fs.write_to_online_store(n.USER_STATS_VIEW, pd.DataFrame([row(t1, 1)]))   # then an older, late one
    got = fs.get_online_features(features=[f"{n.USER_STATS_VIEW}:{n.USER_PURCHASE_COUNT}"],
                                 entity_rows=[{n.USER_ID: "late-arrival"}]).to_dict()
    assert got[n.USER_PURCHASE_COUNT] == [2]
    fs.write_to_online_store(n.USER_STATS_VIEW, pd.DataFrame([row(t2 + pd.Timedelta(hours=1), 3), row(t1, 9)]))
    got = fs.get_online_features(features=[f"{n.USER_STATS_VIEW}:{n.USER_PURCHASE_COUNT}"],
                                 entity_rows=[{n.USER_ID: "late-arrival"}]).to_dict()
    assert got[n.USER_PURCHASE_COUNT] == [3]


def _session_row(sid, ts, category):
    return {n.SESSION_ID: sid, n.EVENT_TIMESTAMP: ts, n.CREATED_TIMESTAMP: ts, n.SESSION_CATEGORY: category,
            n.SESSION_VIEWED: ["I001"], n.SESSION_CARTED: [], n.SESSION_DEVICE: "mobile",
            n.SESSION_HOUR: ts.hour, n.SESSION_WEEKDAY: ts.weekday()}


def test_stale_values_are_missing_and_reported(store):
    fs, _, _ = store
    now = pd.Timestamp.now(tz="UTC").floor("s")
    push_session_state(fs, [_session_row("fresh", now - pd.Timedelta(minutes=5), "cat1"),
                            _session_row("old", now - pd.Timedelta(hours=2), "cat2")])
    reader = session_reader(fs)  # the session view's TTL (1 hour) is its max age
    got = reader.read([{n.SESSION_ID: "fresh"}, {n.SESSION_ID: "old"}, {n.SESSION_ID: "never"}], now.to_pydatetime())
    assert got.rows[0][n.SESSION_CATEGORY] == "cat1" and got.rows[0][n.SESSION_VIEWED] == ["I001"]
    assert got.rows[1][n.SESSION_CATEGORY] is None and got.rows[2][n.SESSION_CATEGORY] is None
    assert f"{n.SESSION_VIEW}:{n.SESSION_CATEGORY}" in got.stale and len(got.stale) == len(n.SESSION_FEATURES)
    # a configured max age overrides the TTL
    tight = session_reader(fs, {n.SESSION_VIEW: dt.timedelta(minutes=1)}).read([{n.SESSION_ID: "fresh"}],
                                                                              now.to_pydatetime())
    assert tight.rows[0][n.SESSION_CATEGORY] is None
    # snapshot views never expire (ttl 0): a value from 2011 is still served
    fs.materialize(start_date=dt.datetime(2010, 12, 1, tzinfo=dt.timezone.utc),
                   end_date=dt.datetime(2011, 6, 1, tzinfo=dt.timezone.utc))
    old = OnlineFeatureReader(fs, [f"{n.USER_STATS_VIEW}:{n.USER_PURCHASE_COUNT}"]).read([{n.USER_ID: "U001"}])
    assert old.rows[0][n.USER_PURCHASE_COUNT] == 12 and not old.stale


def test_item_matrix_matches_the_sdk_and_survives_save_and_load(store, tmp_path):
    from feature_repo.item_matrix import ItemFeatureMatrix

    fs, events, items = store
    fs.materialize(start_date=dt.datetime(2010, 12, 1, tzinfo=dt.timezone.utc),
                   end_date=dt.datetime(2011, 6, 1, tzinfo=dt.timezone.utc))
    refs = [f"{n.ITEM_CONTENT_VIEW}:{n.CATEGORY}", f"{n.ITEM_CONTENT_VIEW}:{n.PRICE}",
            f"{n.ITEM_STATS_VIEW}:{n.ITEM_PURCHASE_COUNT}", f"{n.ITEM_CONTENT_VIEW}:{n.TEXT_EMBEDDING}"]
    m = ItemFeatureMatrix.from_online_store(fs, items[n.ITEM_ID].tolist(), refs)
    ask = ["I007", "nope", "I001", "I007"]
    got = m.take(ask)
    sdk = fs.get_online_features(features=refs, entity_rows=[{n.ITEM_ID: i} for i in ask]).to_dict()
    for ref in refs:
        col = ref.split(":")[1]
        for i, (a, b) in enumerate(zip(got[col], sdk[col])):
            if b is None:
                assert a is None or (isinstance(a, float) and np.isnan(a)), (col, i)
            elif isinstance(b, list):
                assert list(a) == pytest.approx(b)
            else:
                assert a == pytest.approx(b) if isinstance(b, float) else a == b
    m.save(tmp_path / "matrix")
    again = ItemFeatureMatrix.load(tmp_path / "matrix").take(ask)
    assert list(again[n.CATEGORY]) == list(got[n.CATEGORY])
    assert np.allclose(again[n.PRICE], got[n.PRICE], equal_nan=True)


def test_ordered_sqlite_read_returns_what_feasts_sqlite_read_returns(tmp_path):
    """OrderedSqliteOnlineStore.online_read (event time parsed once per entity) == Feast's SqliteOnlineStore
    read on the same table: values, event times (UTC) and missing keys, for composite and single keys."""
    from feast.infra.online_stores.sqlite import SqliteOnlineStore
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from feature_repo.online_stores import OrderedSqliteOnlineStore, string_entity_keys

    fs, events, items = shop_repo(tmp_path, None, n_users=30, n_items=20, purchases_per_user=10)
    fs.materialize(start_date=dt.datetime(2010, 12, 1, tzinfo=dt.timezone.utc),
                   end_date=dt.datetime(2011, 12, 1, tzinfo=dt.timezone.utc))
    provider = fs._get_provider()
    store = provider.online_store
    assert isinstance(store, OrderedSqliteOnlineStore)
    users = sorted(events[n.USER_ID].dropna().astype(str).unique())
    item_ids = sorted(items[n.ITEM_ID].astype(str).unique())
    cases = {
        n.USER_ITEM_VIEW: [EntityKey(join_keys=[n.USER_ID, n.ITEM_ID], entity_values=[Value(string_val=u),
                                                                                     Value(string_val=i)])
                           for u in users[:10] for i in item_ids] + [
            EntityKey(join_keys=[n.USER_ID, n.ITEM_ID], entity_values=[Value(string_val="nobody"),
                                                                       Value(string_val=item_ids[0])])],
        n.USER_STATS_VIEW: [EntityKey(join_keys=[n.USER_ID], entity_values=[Value(string_val=u)])
                            for u in [*users, "nobody"]],
    }
    for view, keys in cases.items():
        fv = fs.get_feature_view(view)
        ours = store.online_read(fs.config, fv, keys)
        feasts = SqliteOnlineStore.online_read(store, fs.config, fv, keys)
        assert len(ours) == len(feasts) == len(keys)
        assert sum(v is not None for _, v in ours) > 0 and ours[-1] == (None, None)
        for (ts_a, va), (ts_b, vb) in zip(ours, feasts):
            assert ts_a == ts_b and (ts_a is None or ts_a.tzinfo is not None)
            assert va == vb
        # serving's read of keys serialized without protos (serving/ranking.PairReader) reads the same rows
        values = [[v.string_val for v in k.entity_values] for k in keys]
        assert store.read_serialized(fs.config, fv, string_entity_keys(list(keys[0].join_keys), values)) == ours


@given(join_keys=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=3, unique=True),
       rows=st.lists(st.lists(st.text(max_size=20), min_size=3, max_size=3), min_size=1, max_size=5))
def test_string_entity_keys_are_the_bytes_feast_serializes(join_keys, rows):
    """string_entity_keys == feast.infra.key_encoding_utils.serialize_entity_key (version 3) for string keys,
    whatever the join keys' order and the characters (non-ASCII, empty values)."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from feature_repo.online_stores import string_entity_keys

    rows = [r[:len(join_keys)] for r in rows]
    expected = [serialize_entity_key(EntityKey(join_keys=join_keys, entity_values=[Value(string_val=v) for v in r]),
                                     entity_key_serialization_version=3) for r in rows]
    assert string_entity_keys(join_keys, rows) == expected


def test_direct_sqlite_reads_answer_what_the_sdk_answers(store):
    """On the repo's SQLite store the reader skips the SDK (rows by serialized key); values, event times and
    what is stale are the SDK's. On Redis it keeps the SDK."""
    fs, events, _ = store
    fs.materialize(start_date=dt.datetime(2010, 12, 1, tzinfo=dt.timezone.utc),
                   end_date=dt.datetime(2012, 1, 1, tzinfo=dt.timezone.utc))
    now = pd.Timestamp.now(tz="UTC").floor("s")
    push_session_state(fs, [_session_row("fresh", now - pd.Timedelta(minutes=5), "cat1"),
                            _session_row("old", now - pd.Timedelta(hours=2), "cat2")])
    users = sorted(events[n.USER_ID].dropna().astype(str).unique())
    refs = [*PARITY_REFS, f"{n.USER_PROFILE_VIEW}:{n.USER_PREFERRED_DEVICE}",
            f"{n.USER_WINDOWS_VIEW}:user_revenue_7d"]
    cases = [(OnlineFeatureReader(fs, refs, {n.USER_WINDOWS_VIEW: dt.timedelta(days=30)}),
              [{n.USER_ID: u} for u in [*users, "nobody", ""]]),
             (session_reader(fs), [{n.SESSION_ID: s} for s in ("fresh", "old", "never")])]
    sqlite = fs.config.online_store.type != "redis"
    answers = []
    for reader, rows in cases:
        assert (reader._direct is not None) == sqlite
        got = reader.read(rows, now.to_pydatetime())
        reader._direct = None  # the SDK's path, on the same reader
        want = reader.read(rows, now.to_pydatetime())
        assert got.rows == want.rows and got.stale == want.stale
        assert [[type(v) for v in row.values()] for row in got.rows] == \
            [[type(v) for v in row.values()] for row in want.rows]  # 1 == 1.0 == True: the types too
        assert any(v is not None for row in got.rows for v in row.values())
        answers.append(got)
    users_read, sessions_read = answers
    assert any(f.startswith(n.USER_WINDOWS_VIEW) for f in users_read.stale)  # 2011 windows, 30 days' max age
    assert users_read.rows[-1] == {f.split(":")[1]: None for f in refs}  # no such user
    assert sessions_read.rows[0][n.SESSION_VIEWED] == ["I001"]  # lists come back as lists


def test_a_service_projection_renamed_with_an_alias_reads_the_views_values(store):
    """A FeatureService may rename a view (`view.with_name(alias)`): Feast answers its features under the
    alias; the reader reads them, directly and through the SDK, as it reads the view's own name (it used to
    look them up under the view's name and answer None for every one), and names stale values by the alias."""
    from feast import FeatureService

    fs, events, _ = store
    fs.materialize(start_date=dt.datetime(2010, 12, 1, tzinfo=dt.timezone.utc),
                   end_date=dt.datetime(2012, 1, 1, tzinfo=dt.timezone.utc))
    users = sorted(events[n.USER_ID].dropna().astype(str).unique())
    rows = [{n.USER_ID: u} for u in [*users, "nobody"]]
    stats = fs.get_feature_view(n.USER_STATS_VIEW)
    windows = fs.get_feature_view(n.USER_WINDOWS_VIEW)
    service = FeatureService(name="aliased", features=[stats.with_name("shopper")[[n.USER_PURCHASE_COUNT]],
                                                       windows.with_name("recent")[["user_purchases_30d"]]])
    fs.apply([service])  # the SDK reads a service from the registry
    plain = OnlineFeatureReader(fs, [f"{n.USER_STATS_VIEW}:{n.USER_PURCHASE_COUNT}",
                                     f"{n.USER_WINDOWS_VIEW}:user_purchases_30d"],
                                {n.USER_WINDOWS_VIEW: dt.timedelta(days=30)})
    aliased = OnlineFeatureReader(fs, service, {n.USER_WINDOWS_VIEW: dt.timedelta(days=30)})
    last = pd.Timestamp(events[n.EVENT_TIMESTAMP].max())
    for now in (last + pd.Timedelta(days=1), last + pd.Timedelta(days=60)):  # windows fresh, then stale
        now = now.to_pydatetime()
        aliased._direct = aliased._direct_views()
        want = plain.read(rows, now)
        assert any(row[n.USER_PURCHASE_COUNT] is not None for row in want.rows)
        for path in ("as built", "sdk"):
            if path == "sdk":
                aliased._direct = None
            got = aliased.read(rows, now)
            assert got.rows == want.rows, path
            assert got.stale == [f.replace(n.USER_WINDOWS_VIEW, "recent") for f in want.stale], path
        assert any(row["user_purchases_30d"] is not None for row in want.rows) != bool(want.stale)


def test_a_failing_direct_read_is_the_store_or_falls_back_to_the_sdk(tmp_path, monkeypatch):
    """The SQLite store failing is a store outage (the caller's fallback); a bug in the direct read is not:
    that read and every later one go through the SDK."""
    import sqlite3

    from serving.features import OnlineStoreUnavailable

    fs, events, _ = shop_repo(tmp_path, None, n_users=10, n_items=8, purchases_per_user=4)
    fs.materialize(start_date=dt.datetime(2010, 12, 1, tzinfo=dt.timezone.utc),
                   end_date=dt.datetime(2012, 1, 1, tzinfo=dt.timezone.utc))
    user = str(events[n.USER_ID].dropna().iloc[0])
    reader = OnlineFeatureReader(fs, PARITY_REFS)
    want = reader.read([{n.USER_ID: user}]).rows
    assert reader._direct is not None and want[0][n.USER_PURCHASE_COUNT] is not None

    def locked(rows):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(reader, "_read_direct", locked)
    with pytest.raises(OnlineStoreUnavailable, match="database is locked"):
        reader.read([{n.USER_ID: user}])
    assert reader._direct is not None

    def buggy(rows):
        raise KeyError("a bug of ours")

    monkeypatch.setattr(reader, "_read_direct", buggy)
    assert reader.read([{n.USER_ID: user}]).rows == want and reader._direct is None
