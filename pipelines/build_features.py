"""Build the feature tables, register them in Feast and materialize them online.

Where it sits: ingest (canonical events + catalog) -> **build_features** ->
a Feast repo under `<work_dir>/feature_store/` (DuckDB offline store over the
parquet tables, SQLite online store) -> build_dataset (point in time) and
serving (online).
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import yaml
from feast import FeatureStore

from cartwise.config import CartwiseConfig
from feature_repo import definitions, feature_tables
from feature_repo import names as n
from pipelines.layout import Layout
from pipelines.manifest import read_json, write_manifest
from pipelines.progress import Log, default_log, step

STAGE = "features"


def feature_store_yaml(repo_dir: Path, online_store: dict | None = None) -> dict:
    """The Feast config of a run's repo: DuckDB offline, SQLite online by default."""
    return {
        "project": "cartwise",
        "registry": str(repo_dir / "data" / "registry.db"),
        "provider": "local",
        "offline_store": {"type": "duckdb"},
        "online_store": online_store or {"type": "sqlite", "path": str(repo_dir / "data" / "online_store.db")},
        "entity_key_serialization_version": 3,
        "auth": {"type": "no_auth"},
    }


def _for_parquet(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for c in out.columns:
        if str(out[c].dtype) == "string":
            out[c] = out[c].astype(object)
    return out


def write_tables(events: pd.DataFrame, items: pd.DataFrame, data_dir: Path, log: Log = default_log) -> dict[str, int]:
    """Compute and write every table the Feast sources point at.

    Returns:
        Rows written per table.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, build, arg in (
        ("user_purchase_stats", feature_tables.user_purchase_stats, events),
        ("item_purchase_stats", feature_tables.item_purchase_stats, events),
        ("item_content", feature_tables.item_content, items),
    ):
        with step(STAGE, f"table {name}", log) as s:
            df = _for_parquet(build(arg))
            df.to_parquet(data_dir / f"{name}.parquet", index=False)
            counts[name] = len(df)
            s["result"] = f"{len(df):,} rows"
    return counts


def open_store(repo_dir: Path) -> FeatureStore:
    """The run's feature store (config written by :func:`run`)."""
    if not (repo_dir / "feature_store.yaml").is_file():
        raise FileNotFoundError(f"{repo_dir}/feature_store.yaml not found: run `cartwise build-features` first")
    return FeatureStore(repo_path=str(repo_dir))


def run(config: CartwiseConfig, *, repo_dir: Path | None = None, log: Log = default_log) -> dict:
    """Write tables, `apply` the definitions, materialize every view to the online store.

    Args:
        config: parsed cartwise.yaml.
        repo_dir: Feast repo to populate (default `<work_dir>/feature_store`).
        log: progress output.

    Returns:
        The stage summary (rows per table, materialization window).
    """
    layout = Layout(config.work_dir)
    repo_dir = Path(repo_dir or layout.feature_store).resolve()
    events = pd.read_parquet(layout.ingest / "events.parquet")
    items = pd.read_parquet(layout.ingest / "items.parquet")
    counts = write_tables(events, items, repo_dir / "data", log)

    if repo_dir != (Path(definitions.__file__).parent).resolve():
        (repo_dir / "feature_store.yaml").write_text(yaml.safe_dump(feature_store_yaml(repo_dir), sort_keys=False))
    store = open_store(repo_dir)
    with step(STAGE, "feast apply", log):
        store.apply(definitions.all_objects(repo_dir / "data"))
    start = pd.Timestamp(events[n.EVENT_TIMESTAMP].min()).floor("D").to_pydatetime() - dt.timedelta(days=1)
    end = pd.Timestamp(events[n.EVENT_TIMESTAMP].max()).ceil("D").to_pydatetime() + dt.timedelta(days=1)
    if items[n.FIRST_SEEN].notna().any():
        start = min(start, pd.Timestamp(items[n.FIRST_SEEN].min()).to_pydatetime() - dt.timedelta(days=1))
    with step(STAGE, f"materialize {start:%Y-%m-%d}..{end:%Y-%m-%d} to the online store", log):
        store.materialize(start_date=start, end_date=end)
    summary = {"repo_dir": str(repo_dir), "rows": counts,
               "materialized": {"start": start.isoformat(), "end": end.isoformat()}}
    write_manifest(repo_dir, STAGE, {"ingest": read_json(layout.ingest / "manifest.json").get("outputs", {})},
                   {}, summary)
    return summary
