"""Build the feature tables, register them in Feast and materialize them online.

Where it sits: ingest (canonical events + catalog) -> **build_features** ->
a Feast repo under `<work_dir>/feature_store/` (DuckDB offline store over the
parquet tables, joining with ASOF joins; SQLite online store) -> build_dataset (point in time) and
serving (online).
"""
from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from feast import FeatureStore, FeatureView

from cartwise.config import CartwiseConfig, ConfigError, FeaturesConfig
from feature_repo import definitions, feature_tables
from feature_repo import names as n
from pipelines.layout import Layout
from pipelines.manifest import read_json, write_manifest
from pipelines.progress import Log, default_log, step
from pipelines.text_embedding import text_embeddings

STAGE = "features"


ORDERED_SQLITE = "feature_repo.online_stores.OrderedSqliteOnlineStore"
#: Feast's DuckDB offline store with the point-in-time join done by ASOF joins (feature_repo/offline_store.py)
ASOF_DUCKDB = "feature_repo.offline_store.AsofDuckDBOfflineStore"


def online_store_config(features: FeaturesConfig, repo_dir: Path) -> dict:
    """The `online_store` block of feature_store.yaml for the `features` section."""
    if features.online_store == "redis":
        return {"type": "redis", "connection_string": features.redis_connection_string}
    return {"type": ORDERED_SQLITE, "path": str(repo_dir / "data" / "online_store.db")}


def feature_store_yaml(repo_dir: Path, online_store: dict | None = None) -> dict:
    """The Feast config of a run's repo: DuckDB offline (ASOF joins); online the newest-wins SQLite store by default."""
    return {
        "project": "cartwise",
        "registry": str(repo_dir / "data" / "registry.db"),
        "provider": "local",
        "offline_store": {"type": ASOF_DUCKDB},
        "online_store": online_store or {"type": ORDERED_SQLITE, "path": str(repo_dir / "data" / "online_store.db")},
        "entity_key_serialization_version": 3,
        "auth": {"type": "no_auth"},
    }


def _for_parquet(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for c in out.columns:
        if str(out[c].dtype) == "string":
            out[c] = out[c].astype(object)
    return out


_ARROW = {"Int64": pa.int64(), "Float64": pa.float64(), "Float32": pa.float32(), "String": pa.string(),
          "Bool": pa.bool_(), "Array(String)": pa.list_(pa.string()), "Array(Float32)": pa.list_(pa.float32())}


def arrow_schema(view) -> pa.Schema:
    """The parquet schema of a view's table: join keys, timestamps, then features with Feast's types.

    Writing with an explicit schema keeps an empty table or an all-empty list
    column typed (pandas alone would write `null`, which Feast cannot join on).
    """
    join_keys = {e.name: e.join_key for e in (definitions.user, definitions.item, definitions.session,
                                                definitions.category)}
    keys = [pa.field(join_keys[e], pa.string()) for e in view.entities]
    ts = [pa.field(n.EVENT_TIMESTAMP, pa.timestamp("us", tz="UTC")),
          pa.field(n.CREATED_TIMESTAMP, pa.timestamp("us", tz="UTC"))]
    return pa.schema(keys + ts + [pa.field(f.name, _ARROW[str(f.dtype)]) for f in view.features])


def _write_parquet(df: pd.DataFrame, path: Path, view) -> None:
    schema = arrow_schema(view)
    pq.write_table(pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False), path)


#: Table -> the feature view reading it (the schema the table is written with).
TABLE_VIEWS = {
    "user_purchase_stats": definitions.user_purchase_stats, "user_profile": definitions.user_profile,
    "user_purchase_windows": definitions.user_purchase_windows, "item_purchase_stats": definitions.item_purchase_stats,
    "item_activity_windows": definitions.item_activity_windows, "item_content": definitions.item_content,
    "user_item_history": definitions.user_item_history, "user_category_history": definitions.user_category_history,
    "session_context": definitions.session_context,
}


def feature_table_builders(events: pd.DataFrame, items: pd.DataFrame, embedding_size: int = 16) -> dict:
    """Table name -> a function computing it (names match the sources in feature_repo/definitions.py)."""
    return {
        "user_purchase_stats": lambda: feature_tables.user_purchase_stats(events),
        "user_profile": lambda: feature_tables.user_profile(events, items),
        "user_purchase_windows": lambda: feature_tables.user_purchase_windows(events),
        "item_purchase_stats": lambda: feature_tables.item_purchase_stats(events),
        "item_activity_windows": lambda: feature_tables.item_activity_windows(events),
        "item_content": lambda: feature_tables.item_content(items, text_embeddings(items, dim=embedding_size)),
        "user_item_history": lambda: feature_tables.user_item_history(events),
        "user_category_history": lambda: feature_tables.user_category_history(events, items),
        "session_context": lambda: feature_tables.session_context(events, items),
    }


def write_tables(events: pd.DataFrame, items: pd.DataFrame, data_dir: Path, log: Log = default_log,
                 embedding_size: int = 16) -> dict[str, int]:
    """Compute and write every table the Feast sources point at.

    Returns:
        Rows written per table.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, build in feature_table_builders(events, items, embedding_size).items():
        with step(STAGE, f"table {name}", log) as s:
            df = _for_parquet(build())
            _write_parquet(df, data_dir / f"{name}.parquet", TABLE_VIEWS[name])
            counts[name] = len(df)
            s["result"] = f"{len(df):,} rows"
    return counts


def open_store(repo_dir: Path) -> FeatureStore:
    """The run's feature store (config written by :func:`run`)."""
    if not (repo_dir / "feature_store.yaml").is_file():
        raise FileNotFoundError(f"{repo_dir}/feature_store.yaml not found: run `cartwise build-features` first")
    return FeatureStore(repo_path=str(repo_dir))


#: events per materialization window. Feast materializes a window by holding the latest row of every entity
#: active in it as Python protos: a simulator log of 5.3M events (1M+ sessions) needed over 17 GB in one window
EVENTS_PER_WINDOW = 1_000_000


def materialization_windows(start: dt.datetime, end: dt.datetime, times: pd.Series) -> list[tuple[dt.datetime, dt.datetime]]:
    """[start, end] cut at event-time quantiles into consecutive windows of about EVENTS_PER_WINDOW events each
    (one window below that). Materializing them in order gives the same online state as one window: both
    online stores keep the newest value by event time, and a row on a shared boundary is written once."""
    k = max(1, math.ceil(len(times) / EVENTS_PER_WINDOW))
    if k == 1:
        return [(start, end)]
    cuts = pd.to_datetime(times, utc=True).quantile([i / k for i in range(1, k)]).dt.floor("h")
    edges = [start, *sorted({c.to_pydatetime() for c in cuts if start < c.to_pydatetime() < end}), end]
    return list(zip(edges[:-1], edges[1:]))


def run(config: CartwiseConfig, *, repo_dir: Path | None = None, materialize: bool = True,
        log: Log = default_log) -> dict:
    """Write tables, `apply` the definitions, materialize every view to the online store.

    Args:
        config: parsed cartwise.yaml.
        repo_dir: Feast repo to populate (default `<work_dir>/feature_store`).
        materialize: False leaves the online store as it is (offline-only use: training sets and
            benchmarks on a large log; serving then reads nothing new until a run that materializes).
        log: progress output.

    Returns:
        The stage summary (rows per table, materialization window).
    """
    layout = Layout(config.work_dir)
    repo_dir = Path(repo_dir or layout.feature_store).resolve()
    views = sorted(o.name for o in definitions.all_objects() if isinstance(o, FeatureView))
    unknown = sorted(set(config.features.max_age_hours) - set(views))
    if unknown:  # else a misspelt view keeps no limit at all, silently
        raise ConfigError(f"features.max_age_hours: no feature view named {', '.join(map(repr, unknown))} "
                          f"(views: {', '.join(views)})")
    events = pd.read_parquet(layout.ingest / "events.parquet")
    items = pd.read_parquet(layout.ingest / "items.parquet")
    if events.empty:  # e.g. a header-only file: fail here, not deep inside the text embedding
        raise ValueError(f"{layout.ingest / 'events.parquet'} holds no events: nothing to build features from "
                         f"(see {layout.ingest / 'ingest_summary.json'})")
    counts = write_tables(events, items, repo_dir / "data", log, config.features.text_embedding_size)

    if repo_dir != (Path(definitions.__file__).parent).resolve():
        online = online_store_config(config.features, repo_dir)
        (repo_dir / "feature_store.yaml").write_text(yaml.safe_dump(feature_store_yaml(repo_dir, online), sort_keys=False))
    store = open_store(repo_dir)
    with step(STAGE, "feast apply", log):
        store.apply(definitions.all_objects(repo_dir / "data"))
    start = pd.Timestamp(events[n.EVENT_TIMESTAMP].min()).floor("D").to_pydatetime() - dt.timedelta(days=1)
    # up to the midnight after the last event day, inclusive: the snapshot of that day is stamped there, and
    # the windowed tables' later rows (windows emptying after the data ends) stay offline, so the online
    # store holds the state as of the data's end, the instant a bundle is exported as of
    end = pd.Timestamp(events[n.EVENT_TIMESTAMP].max()).floor("D").to_pydatetime() + dt.timedelta(days=1)
    if items[n.FIRST_SEEN].notna().any():
        start = min(start, pd.Timestamp(items[n.FIRST_SEEN].min()).to_pydatetime() - dt.timedelta(days=1))
    views = store.list_feature_views()
    incremental = bool(views) and all(v.materialization_intervals for v in views)
    if not materialize:
        log(f"[{STAGE}] online store left as it is (materialize=False)")
    elif incremental:  # only what is new since the last run's end (Feast keeps the intervals in the registry)
        with step(STAGE, f"materialize incrementally up to {end:%Y-%m-%d} to the online store", log):
            store.materialize_incremental(end_date=end)
    else:
        windows = materialization_windows(start, end, events[n.EVENT_TIMESTAMP])
        del events  # the log is not needed any more: free it before Feast's materialization fills memory
        with step(STAGE, f"materialize {start:%Y-%m-%d}..{end:%Y-%m-%d} to the online store"
                         f"{f' in {len(windows)} windows' if len(windows) > 1 else ''}", log):
            for lo, hi in windows:
                store.materialize(start_date=lo, end_date=hi)
    summary = {"repo_dir": str(repo_dir), "rows": counts,
               "materialized": {"start": start.isoformat(), "end": end.isoformat()} if materialize else None}
    write_manifest(repo_dir, STAGE, {"ingest": read_json(layout.ingest / "manifest.json").get("outputs", {})},
                   {}, summary)
    return summary
