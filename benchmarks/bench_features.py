"""Feature-layer benchmarks, each a ratio against a baseline run side by side in this process.

Not a test (timings never assert in the suite). Run:

    .venv/bin/python benchmarks/bench_features.py [--events PARQUET --items PARQUET] [--repeats N]
        [--no-stock] [--only-training-set (skips materializing)]

1. Training-set build: `pipelines.build_dataset.join_point_in_time` (Feast
   get_historical_features on the repo's offline store, feature_repo/offline_store.py,
   every joined view, created-timestamp cut-off, missing values filled) against a
   plain DuckDB ASOF join of the same entity rows to the same tables (the lower
   bound: no created-time filter, no Feast, no fill). Both join the slices of
   `JOIN_CHUNK_ROWS` entity rows the pipeline joins (one slice on Online Retail).
   Goal <= 1.5x. Feast's stock DuckDB store runs the same build as a reference
   (--no-stock skips it) and must return the same frame.
2. One request's user + session lookup through Feast's SDK on SQLite: p50 / p99.
   Goal p99 < 2 ms. Beside it, serving's readers (`serving.features.OnlineFeatureReader`,
   staleness included) reading the same rows by serialized key, and the same readers
   through the SDK: their ratio is what the direct read saves.
3. Candidate features for 500 items: ItemFeatureMatrix.take against Feast's
   SDK get_online_features for the same 500 ids. Goal >= 10x.

Default data: the shipped Online Retail file, ingested into a temp work dir
(pass the simulator's canonical output with --events/--items for larger runs).
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from feast import FeatureStore, RepoConfig  # noqa: E402

from cartwise.config import parse_config  # noqa: E402
from feature_repo import names as n  # noqa: E402
from pipelines import build_features, ingest  # noqa: E402
from pipelines.build_dataset import (JOIN_CHUNK_ROWS, JOINED_VIEWS, join_point_in_time, train_cutoff,  # noqa: E402
                                     training_entities)
from pipelines.build_features import TABLE_VIEWS  # noqa: E402
from serving.features import OnlineFeatureReader, push_session_state  # noqa: E402
from feature_repo import offline_store  # noqa: E402
from feature_repo.item_matrix import ItemFeatureMatrix  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def quiet(_):
    pass


def prepare(work: Path, events: str | None, items: str | None, materialize: bool = True):
    if events:
        cfg = parse_config({"data": {"adapter": "canonical", "paths": [events], "work_dir": str(work)},
                            "evaluation": {"split_date": "2100-01-01"}}, base_dir=ROOT)
        if items and Path(items).parent != Path(events).parent:
            raise SystemExit("--items must sit beside --events (the canonical adapter reads items.parquet there)")
    else:
        cfg = parse_config({"data": {"work_dir": str(work)}}, base_dir=ROOT)
    t = time.perf_counter()
    ingest.run(cfg, log=quiet)
    build_features.run(cfg, materialize=materialize, log=quiet)
    print(f"setup (ingest + feature tables{' + materialize' if materialize else ''}): "
          f"{time.perf_counter() - t:.1f}s")
    return cfg


def asof_baseline(entity: pd.DataFrame, data_dir: Path) -> pd.DataFrame:
    """Plain DuckDB ASOF LEFT JOIN of the entity rows to every joined view's table."""
    con = duckdb.connect()
    con.register("entity", entity)
    sql = "SELECT e.*"
    joins = []
    table_of = {view.name: table for table, view in TABLE_VIEWS.items()}
    for i, view in enumerate(JOINED_VIEWS):
        table = table_of[view.name]
        keys = {"user": n.USER_ID, "item": n.ITEM_ID, "session": n.SESSION_ID, "category": n.CATEGORY_KEY}
        on = " AND ".join(f"e.{keys[e]} = t{i}.{keys[e]}" for e in view.entities)
        sql += "".join(f", t{i}.{f.name} AS {f.name}" for f in view.features)
        joins.append(f" ASOF LEFT JOIN read_parquet('{data_dir / (table + '.parquet')}') t{i} "
                     f"ON {on} AND e.{n.EVENT_TIMESTAMP} >= t{i}.{n.EVENT_TIMESTAMP}")
    return con.execute(sql + " FROM entity e" + "".join(joins)).df()


def stock_store(repo: Path) -> FeatureStore:
    """The same repo and registry with Feast's own DuckDB offline store."""
    config = yaml.safe_load((repo / "feature_store.yaml").read_text())
    config["offline_store"] = {"type": "duckdb"}
    return FeatureStore(config=RepoConfig(repo_path=repo, **config))


def bench_training_set(cfg, repeats: int, stock: bool = True) -> None:
    work = cfg.work_dir
    events = pd.read_parquet(work / "ingest" / "events.parquet")
    items = pd.read_parquet(work / "ingest" / "items.parquet")
    entity = training_entities(events, cfg, train_cutoff(cfg), items)
    del events
    # the slices the pipeline joins (build_dataset.JOIN_CHUNK_ROWS); the baseline joins the same slices
    slices = [entity.iloc[lo:lo + JOIN_CHUNK_ROWS] for lo in range(0, len(entity), JOIN_CHUNK_ROWS)]
    store = FeatureStore(repo_path=str(work / "feature_store"))
    feast = stock_store(work / "feature_store") if stock else None
    times = {"cartwise": [], "stock": [], "base": []}
    for _ in range(repeats):  # interleaved, so all see the same machine load
        offline_store.clear_cache()  # each repeat is a whole build: its first slice reduces the views afresh
        t, rows = time.perf_counter(), 0
        for part in slices:
            out, _ = join_point_in_time(store, part)
            rows += len(out)
            if feast is not None:
                ref, _ = join_point_in_time(feast, part)
                pd.testing.assert_frame_equal(out, ref, check_exact=True)
                del ref
            del out
        if feast is None:
            times["cartwise"].append(time.perf_counter() - t)
        else:  # the stock join and the comparison ran in the same loop: timed apart below
            offline_store.clear_cache()
            t = time.perf_counter()
            for part in slices:
                join_point_in_time(store, part)
            times["cartwise"].append(time.perf_counter() - t)
            t = time.perf_counter()
            for part in slices:
                join_point_in_time(feast, part)
            times["stock"].append(time.perf_counter() - t)
        assert rows == len(entity)
        t, base_rows = time.perf_counter(), 0
        for part in slices:
            base_rows += len(asof_baseline(part, work / "feature_store" / "data"))
        times["base"].append(time.perf_counter() - t)
        assert base_rows == len(entity)
    c, b = min(times["cartwise"]), min(times["base"])
    print(f"1. training set, {len(entity):,} rows x {len(JOINED_VIEWS)} views in {len(slices)} slice(s): "
          f"cartwise (ASOF offline store) {c:.2f}s, DuckDB ASOF lower bound {b:.2f}s, ratio {c / b:.2f}x "
          f"(goal <= 1.5x; best of {repeats}); peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.1f} GB")
    if times["stock"]:
        f = min(times["stock"])
        print(f"   Feast's stock DuckDB offline store {f:.2f}s, ratio {f / b:.2f}x (same frame)")


def bench_request_lookup(cfg, requests: int = 300) -> None:
    store = FeatureStore(repo_path=str(cfg.work_dir / "feature_store"))
    events = pd.read_parquet(cfg.work_dir / "ingest" / "events.parquet")
    users = events[n.USER_ID].dropna().unique()[:requests]
    now = pd.Timestamp.now(tz="UTC").floor("s")
    push_session_state(store, [{n.SESSION_ID: f"s{i}", n.EVENT_TIMESTAMP: now, n.CREATED_TIMESTAMP: now,
                                n.SESSION_CATEGORY: "x", n.SESSION_VIEWED: ["a", "b"], n.SESSION_CARTED: [],
                                n.SESSION_DEVICE: "mobile", n.SESSION_HOUR: 1, n.SESSION_WEEKDAY: 2}
                               for i in range(len(users))])
    user_refs = store.get_feature_service(n.RETRIEVAL_QUERY_SERVICE)
    session_refs = [f"{n.SESSION_VIEW}:{f}" for f in n.SESSION_FEATURES]
    # serving's readers (staleness included): by serialized key on this SQLite store, and the same readers
    # through the SDK, timed per request beside the plain SDK calls
    direct = (OnlineFeatureReader(store, user_refs), OnlineFeatureReader(store, session_refs))
    via_sdk = (OnlineFeatureReader(store, user_refs), OnlineFeatureReader(store, session_refs))
    for reader in via_sdk:
        reader._direct = None
    times: dict[str, list[float]] = {"sdk": [], "reader_sdk": [], "reader_direct": []}
    for i, u in enumerate(users):
        rows = ([{n.USER_ID: str(u)}], [{n.SESSION_ID: f"s{i}"}])
        t = time.perf_counter()
        store.get_online_features(features=user_refs, entity_rows=rows[0]).to_dict()
        store.get_online_features(features=session_refs, entity_rows=rows[1]).to_dict()
        times["sdk"].append(time.perf_counter() - t)
        for name, (user_reader, session_reader_) in (("reader_sdk", via_sdk), ("reader_direct", direct)):
            t = time.perf_counter()
            user_reader.read(rows[0], now)
            session_reader_.read(rows[1], now)
            times[name].append(time.perf_counter() - t)
    p50 = {}
    for name, label in (("sdk", "Feast SDK"), ("reader_sdk", "serving's reader through the SDK"),
                        ("reader_direct", "serving's reader by serialized key")):
        ms = np.array(times[name][10:]) * 1000
        p50[name] = np.percentile(ms, 50)
        print(f"2. user + session lookup ({label}, SQLite), {len(ms)} requests: p50 {p50[name]:.2f} ms, "
              f"p99 {np.percentile(ms, 99):.2f} ms (goal p99 < 2 ms)")
    print(f"   serving's reader through the SDK / by serialized key, p50: {p50['reader_sdk'] / p50['reader_direct']:.1f}x")


def bench_candidates(cfg, k: int = 500, repeats: int = 50) -> None:
    store = FeatureStore(repo_path=str(cfg.work_dir / "feature_store"))
    items = pd.read_parquet(cfg.work_dir / "ingest" / "items.parquet")[n.ITEM_ID].tolist()
    refs = [f"{v.name}:{f.name}" for v in (TABLE_VIEWS["item_content"], TABLE_VIEWS["item_purchase_stats"],
                                          TABLE_VIEWS["item_activity_windows"]) for f in v.features]
    t = time.perf_counter()
    matrix = ItemFeatureMatrix.from_online_store(store, items, refs)
    print(f"   item matrix built from the online store: {len(items):,} items x {len(refs)} features "
          f"in {time.perf_counter() - t:.1f}s")
    rng = np.random.default_rng(0)
    sdk_t, fast_t = [], []
    for _ in range(repeats):
        ids = rng.choice(items, size=min(k, len(items)), replace=False).tolist()
        t = time.perf_counter()
        store.get_online_features(features=refs, entity_rows=[{n.ITEM_ID: i} for i in ids]).to_dict()
        sdk_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        matrix.take(ids)
        fast_t.append(time.perf_counter() - t)
    s, f = statistics.median(sdk_t) * 1000, statistics.median(fast_t) * 1000
    print(f"3. {k} candidates x {len(refs)} features: Feast SDK {s:.2f} ms, item matrix {f:.3f} ms (medians), "
          f"ratio {s / f:.0f}x (goal >= 10x)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", help="canonical events parquet (default: ingest the shipped Online Retail file)")
    p.add_argument("--items", help="canonical items parquet beside --events")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-stock", action="store_true", help="skip Feast's stock DuckDB store (slow on large data)")
    p.add_argument("--only-training-set", action="store_true", help="run benchmark 1 only")
    args = p.parse_args()
    print(f"machine: {os.cpu_count()} cores; {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC")
    with tempfile.TemporaryDirectory() as d:
        # benchmark 1 reads the offline store only: skip materializing (753 s on the 5.3M-event log)
        cfg = prepare(Path(d), args.events, args.items, materialize=not args.only_training_set)
        bench_training_set(cfg, args.repeats, stock=not args.no_stock)
        if not args.only_training_set:
            bench_request_lookup(cfg)
            bench_candidates(cfg)


if __name__ == "__main__":
    main()
