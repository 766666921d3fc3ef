"""Materializing in windows (pipelines/build_features.py, bounded memory on large logs) gives the same online
state as one window, on the real Feast repo and the newest-wins SQLite store."""
from __future__ import annotations

import datetime as dt

import pandas as pd

from feature_repo import names as n
from pipelines import build_features
from tests.feature_repo.test_online_stores import shop_repo

REFS = [f"{n.USER_STATS_VIEW}:{n.USER_PURCHASE_COUNT}", f"{n.USER_WINDOWS_VIEW}:user_purchases_30d",
        f"{n.USER_PROFILE_VIEW}:{n.USER_TOP_CATEGORY}"]


def test_windows_cover_the_span_at_event_quantiles(monkeypatch):
    monkeypatch.setattr(build_features, "EVENTS_PER_WINDOW", 250)
    times = pd.Series(pd.date_range("2024-01-01", periods=1000, freq="h", tz="UTC"))
    start, end = dt.datetime(2023, 6, 1, tzinfo=dt.timezone.utc), dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc)
    w = build_features.materialization_windows(start, end, times)
    assert len(w) == 4 and w[0][0] == start and w[-1][1] == end
    assert all(a[1] == b[0] for a, b in zip(w, w[1:]))  # contiguous
    counts = [((times >= lo) & (times < hi)).sum() for lo, hi in w]
    assert all(200 <= c <= 300 for c in counts), counts  # about a quarter each, not a quarter of the span
    assert build_features.materialization_windows(start, end, times[:10]) == [(start, end)]


def test_windowed_materialization_equals_one_window(tmp_path, monkeypatch):
    (tmp_path / "one").mkdir()
    (tmp_path / "many").mkdir()
    one, events, _ = shop_repo(tmp_path / "one", None, n_users=30, n_items=20, purchases_per_user=10)
    many, _, _ = shop_repo(tmp_path / "many", None, n_users=30, n_items=20, purchases_per_user=10)
    start = dt.datetime(2010, 12, 1, tzinfo=dt.timezone.utc)
    end = pd.Timestamp(events[n.EVENT_TIMESTAMP].max()).floor("D").to_pydatetime() + dt.timedelta(days=1)
    one.materialize(start_date=start, end_date=end)
    monkeypatch.setattr(build_features, "EVENTS_PER_WINDOW", max(1, len(events) // 5))
    windows = build_features.materialization_windows(start, end, events[n.EVENT_TIMESTAMP])
    assert len(windows) >= 5
    for lo, hi in windows:
        many.materialize(start_date=lo, end_date=hi)
    users = [{n.USER_ID: u} for u in sorted(events[n.USER_ID].dropna().unique())]
    a = one.get_online_features(features=REFS, entity_rows=users).to_dict(include_event_timestamps=True)
    b = many.get_online_features(features=REFS, entity_rows=users).to_dict(include_event_timestamps=True)
    assert a == b and any(v is not None for v in a[n.USER_PURCHASE_COUNT])


def test_no_materialize_builds_offline_only_then_a_normal_run_fills_the_online_store(tmp_path):
    """`cartwise build-features --no-materialize`: tables and registry written, offline point-in-time reads
    work, the online store is left empty; the next run without the flag materializes everything."""
    import yaml
    from feast import FeatureStore

    from cartwise.cli import main
    from tests.synthetic import make_shop, write_ingest

    config = tmp_path / "cartwise.yaml"
    config.write_text(yaml.safe_dump({"data": {"work_dir": "work"}, "evaluation": {"split_date": "2011-04-10"}}))
    events, items = make_shop()
    write_ingest(tmp_path / "work", events, items)
    assert main(["build-features", "--config", str(config), "--no-materialize"]) in (0, None)
    store = FeatureStore(repo_path=str(tmp_path / "work" / "feature_store"))
    users = sorted(events[n.USER_ID].dropna().unique())[:20]
    online = store.get_online_features(features=REFS, entity_rows=[{n.USER_ID: u} for u in users]).to_dict()
    assert all(v is None for v in online[n.USER_PURCHASE_COUNT])  # nothing online
    end = events[n.EVENT_TIMESTAMP].max().floor("D") + pd.Timedelta(days=1)
    offline = store.get_historical_features(
        entity_df=pd.DataFrame({n.USER_ID: users, n.EVENT_TIMESTAMP: end}), features=REFS).to_df()
    assert offline[n.USER_PURCHASE_COUNT].notna().sum() == len(users)  # every sampled user bought before the end
    assert main(["build-features", "--config", str(config)]) in (0, None)
    store = FeatureStore(repo_path=str(tmp_path / "work" / "feature_store"))
    online = store.get_online_features(features=REFS, entity_rows=[{n.USER_ID: u} for u in users]).to_dict()
    by_user = offline.set_index(n.USER_ID)[n.USER_PURCHASE_COUNT]
    assert online[n.USER_PURCHASE_COUNT] == [by_user[u] for u in users]
