"""Feast's DuckDB offline store with the point-in-time join done as DuckDB ASOF joins.

Where it sits: feature tables (parquet, pipelines/build_features.py) ->
**offline store** -> `get_historical_features` in pipelines/build_dataset.py
(training sets) and materialization to the online store. Chosen in
`feature_store.yaml` (`offline_store: {type:
feature_repo.offline_store.AsofDuckDBOfflineStore}`), as Feast expects of a
custom store; everything but `get_historical_features` is Feast's DuckDB
store unchanged.

Why: Feast 0.67's DuckDB join (feast.infra.offline_stores.ibis.point_in_time_join)
inner-joins each entity row with every earlier row of its entity, then keeps
the latest with ROW_NUMBER. Item views hold about 55 daily snapshots per item,
so the shipped training set (196,422 rows x 9 views) took 6.9 s against 1.4 s
for a plain DuckDB ASOF join of the same rows (4.9x). Here each view is first
reduced to the rows that can be an answer, then ASOF-joined to a narrow copy of
the entity rows: about 1.5x the plain join for the whole training-set build
(benchmarks/bench_features.py; README, "Benchmarks").

Semantics, identical to Feast's (tests/feature_repo/test_offline_store.py
compares the frames): for an entity row at time t and a view, the row of the
same join keys with the greatest (event_timestamp, created_timestamp) among
those with event_timestamp <= t, also created_timestamp <= t under
`filter_by_created_timestamp`, and, if the view has a ttl, event_timestamp +
ttl >= t; none gives nulls. Reduction: a row is visible from v = its event
time, or max(event, created) under the filter; the answer at t is the best row
visible by t, which is the last "record" (a row at least as good as every row
visible no later than it) with v <= t: an ASOF join on v. When no row is
created after its event time (checked first, one query for all views), the
records are, per keys and event time, the row created last (nulls last, as
Feast orders). The ttl then only blanks an answer older than t - ttl. Entity
rows keep their order (Feast's own join does not keep it); rows that tie on
both timestamps for the same keys are picked arbitrarily, by Feast as here.
"""
from __future__ import annotations

import itertools
import os
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import List, Literal, Union

import ibis
import numpy as np
import pandas as pd
from ibis.expr import datatypes as dt
from ibis.expr.types import Table

from feast.feature_view import FeatureView
from feast.infra.offline_stores import offline_utils
from feast.infra.offline_stores.duckdb import (
    DuckDBOfflineStore,
    DuckDBOfflineStoreConfig,
    _read_data_source,
    _validate_lance_feature_views,
    _write_data_source,
)
from feast.infra.offline_stores.ibis import (
    IbisRetrievalJob,
    _get_entity_df_event_timestamp_range,
    _get_entity_schema,
    _to_utc,
)
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig

TYPE = "feature_repo.offline_store.AsofDuckDBOfflineStore"
_ROW = "__cw_row"  # entity row position, so the result keeps the entity frame's order
#: reduced views kept in DuckDB between calls (see :func:`_cached_candidates`)
CACHE_SIZE = 32
_cache: "OrderedDict[tuple, tuple]" = OrderedDict()  # key -> (backend, temp table, its name)
_names = itertools.count()
#: DuckDB's memory limit as a share of physical memory, or of a container's limit (DuckDB's own default
#: is 80%; it is only ever lowered). The pipeline holds
#: its entity rows and each slice's frame beside DuckDB: a 10.6M-event training-set build peaked at 20.1 GB
#: of this 24 GB machine with the default. Past the limit DuckDB spills to its temp directory.
DUCKDB_MEMORY_SHARE = 0.5
_limited: "weakref.WeakSet" = weakref.WeakSet()


def _memory_bytes() -> int | None:
    """Physical memory, or the cgroup's limit (a container's) when that is lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def _limit_memory(backend) -> None:
    """Lower DuckDB's memory limit on `backend` to DUCKDB_MEMORY_SHARE of the memory, once; never raise it."""
    if backend in _limited:
        return
    total = _memory_bytes()
    if total:
        want = int(total * DUCKDB_MEMORY_SHARE)
        have = backend.con.execute("SELECT value FROM duckdb_settings() WHERE name = 'memory_limit'").fetchone()
        current = _parse_size(have[0]) if have else None
        if current is None or want < current:
            backend.raw_sql(f"SET memory_limit = '{want // 2**20}MB'")
    _limited.add(backend)


def _parse_size(text: str) -> int | None:
    """DuckDB's size text ('19.0 GiB', '512.0 MiB') in bytes."""
    units = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "KB": 10**3, "MB": 10**6,
             "GB": 10**9, "TB": 10**12}
    parts = str(text).split()
    if len(parts) != 2 or parts[1] not in units:
        return None
    try:
        return int(float(parts[0]) * units[parts[1]])
    except ValueError:
        return None


class AsofDuckDBOfflineStoreConfig(DuckDBOfflineStoreConfig):
    """Config of :class:`AsofDuckDBOfflineStore` (same keys as Feast's `duckdb`)."""

    type: Literal["feature_repo.offline_store.AsofDuckDBOfflineStore"] = TYPE


def _view_columns(view: FeatureView, feature_refs: List[str], full_feature_names: bool, repo_path: str):
    """The view's source as Feast reads it (field mapping, UTC timestamps, feature names), and its parts.

    Mirrors `read_fv` in feast.infra.offline_stores.ibis.get_historical_features_ibis.
    """
    if view.batch_source is None:
        raise ValueError(f"Feature view '{view.name}' has no batch_source and cannot be queried.")
    table = _read_data_source(view.batch_source, repo_path)
    for old_name, new_name in view.batch_source.field_mapping.items():
        if old_name in table.columns:
            table = table.rename({new_name: old_name})
    ts = view.batch_source.timestamp_field
    created = view.batch_source.created_timestamp_column or None
    table = table.mutate(**{c: table[c].cast(dt.Timestamp(timezone="UTC")) for c in (ts, created) if c})
    prefix = view.projection.name_to_use()
    features = [fr.split(":")[1] for fr in feature_refs if fr.startswith(f"{prefix}:")]
    if full_feature_names:
        base = view.projection.name_alias or view.name
        table = table.rename({f"{base}__{f}": f for f in features})
        features = [f"{base}__{f}" for f in features]
    join_key_map = view.projection.join_key_map or {e.name: e.name for e in view.entity_columns}
    return table, ts, created, join_key_map, features


def _candidates(table: Table, ts: str, created: str | None, keys: List[str], features: List[str],
                filter_created: bool, backfilled: bool, tag: str) -> Table:
    """The rows that can be some entity row's answer, with the time `<tag>vis` from which they are.

    Columns: `<tag>k<i>` (join keys), `<tag>ts`, `<tag>vis` and the features (names unchanged).
    The answer at t is the latest of these rows with `<tag>vis` <= t (see the module docstring).
    `backfilled`: whether some row is created after its event time (see :func:`_backfilled`).
    """
    k = [f"{tag}k{i}" for i in range(len(keys))]
    cols = {**{name: table[key] for name, key in zip(k, keys)}, f"{tag}ts": table[ts]}
    if created:
        cols[f"{tag}cr"] = table[created]
    t = table.select(**cols, **{f: table[f] for f in features})
    t_ts = t[f"{tag}ts"]
    if not (filter_created and created):
        # visible from its event time: of the rows of one event time, the greatest created time (nulls last)
        t = t.filter(t_ts.notnull())
        order = [ibis.desc(t[f"{tag}cr"])] if created else []
        first = ibis.row_number().over(group_by=[t[c] for c in k] + [t[f"{tag}ts"]], order_by=order) == 0
        return t.filter(first).drop(*([f"{tag}cr"] if created else [])).mutate(**{f"{tag}vis": t[f"{tag}ts"]})

    # visible once both times have passed (a null time never passes Feast's `<=`)
    t = t.filter(t_ts.notnull() & t[f"{tag}cr"].notnull())
    t_ts, t_cr = t[f"{tag}ts"], t[f"{tag}cr"]
    late = t_cr > t_ts
    if not backfilled:
        # every row is visible from its event time: as without the filter
        first = ibis.row_number().over(group_by=[t[c] for c in k] + [t_ts], order_by=[ibis.desc(t_cr)]) == 0
        return t.filter(first).drop(f"{tag}cr").mutate(**{f"{tag}vis": t_ts})
    # Backfilled rows (created after their event time) exist. A record is a row whose (event, created)
    # is the greatest of all rows visible no later than it. A row with created <= event is one iff no
    # row of its event time has a greater created time <= that event time (rows visible by then are
    # no later in event time); a later-created row iff no row visible by its created time has a later
    # event time (a row of its event time visible by then is created no later).
    t = t.mutate(**{f"{tag}vis": ibis.greatest(t_ts, t_cr), f"{tag}late": late})
    vis, t_ts, t_cr, late = t[f"{tag}vis"], t[f"{tag}ts"], t[f"{tag}cr"], t[f"{tag}late"]
    by_vis = ibis.range_window(group_by=[t[c] for c in k], order_by=vis, preceding=None, following=0)
    t = t.mutate(**{
        f"{tag}rn": ibis.row_number().over(group_by=[t[c] for c in k] + [t_ts, late], order_by=[ibis.desc(t_cr)]),
        f"{tag}mts": t_ts.max().over(by_vis)})
    record = ibis.ifelse(t[f"{tag}late"], t[f"{tag}ts"] >= t[f"{tag}mts"], t[f"{tag}rn"] == 0)
    return t.filter(record).drop(f"{tag}cr", f"{tag}late", f"{tag}rn", f"{tag}mts")


def _file_identity(view: FeatureView) -> tuple | None:
    """(path, inode, mtime, ctime, size) of every file of the view's local parquet source; None when it is
    not one (a rewrite replaces the inode or moves the times, whatever the new size)."""
    path = getattr(view.batch_source, "path", None)
    if not path or "://" in str(path) or not Path(path).exists():
        return None
    p = Path(path)
    files = sorted(p.rglob("*")) if p.is_dir() else [p]
    return tuple((str(f), st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
                 for f in files if f.is_file() for st in [os.stat(f)])


def _cached_candidates(view: FeatureView, table: Table, ts: str, created: str | None, keys: List[str],
                       features: List[str], filter_created: bool, backfilled: bool, tag: str) -> Table:
    """:func:`_candidates`, computed once per view, source files and arguments and kept in DuckDB (a temp table).

    A training set is joined in slices of entity rows (pipelines/build_dataset.py); the reduction of a view
    to its candidate rows does not depend on the entity rows, and recomputing it for each slice was most of
    what the 11-slice build of a 10.6M-event log spent beyond the plain ASOF join (241 s against 143 s).
    The key holds each source file's path, inode, times and size (a rewritten table is read again) and the
    source's field mapping; at most `CACHE_SIZE` reductions are kept (the oldest released first), and
    `pipelines/build_dataset.py` clears them once its training set is written.
    """
    identity = _file_identity(view)
    if identity is None:
        return _candidates(table, ts, created, keys, features, filter_created, backfilled, tag)
    mapping = tuple(sorted((view.batch_source.field_mapping or {}).items()))
    key = (identity, mapping, ts, created, tuple(keys), tuple(features), filter_created, backfilled, tag)
    hit = _cache.get(key)
    if hit is not None:
        _cache.move_to_end(key)
        return hit[1]
    # a temp table of our own: ibis 12's Table.cache() releases through `drop_table`, whose SQL the DuckDB
    # installed here rejects ("DROP TABLE IF EXISTS" without a name), so the table is dropped by name
    cand = _candidates(table, ts, created, keys, features, filter_created, backfilled, tag)
    backend = cand._find_backend()
    _limit_memory(backend)
    name = f"cw_candidates_{next(_names)}"
    cached = backend.create_table(name, cand, temp=True)
    _cache[key] = (backend, cached, name)
    while len(_cache) > CACHE_SIZE:
        _drop_oldest()
    return cached


def _drop_oldest() -> None:
    _, (backend, _, name) = _cache.popitem(last=False)
    backend.raw_sql(f'DROP TABLE IF EXISTS temp.main."{name}"')


def clear_cache() -> None:
    """Drop every kept view reduction (the next call reduces the views afresh)."""
    while _cache:
        _drop_oldest()


def _backfilled(views: list) -> set[int]:
    """Positions of the views with a row created after its event time (one query, run now: it shapes the join)."""
    probes = [table.filter(table[created] > table[ts]).limit(1).select(view=ibis.literal(i, type="int64"))
              for i, (table, ts, created, *_) in enumerate(views) if created]
    if not probes:
        return set()
    return set(ibis.union(*probes).execute()["view"].tolist())


def point_in_time_join(entity_table: Table, views: list, event_timestamp_col: str, filter_created: bool,
                       feature_views: List[FeatureView] | None = None) -> Table:
    """ASOF-join every view to the entity rows (which carry their position in `_ROW`).

    Each view is ASOF-joined to a narrow copy of the entity rows (position, time, join keys),
    and the results are joined back on the position: sorting the full, growing rows once per
    view is what a chain of ASOF joins spends most of its time on.

    Args:
        entity_table: entity rows.
        views: `(table, timestamp_field, created_timestamp_column, join_key_map, features, ttl)` per view,
            as returned by :func:`_view_columns` plus the view's ttl.
        event_timestamp_col: the entity rows' time column.
        filter_created: Feast's `filter_by_created_timestamp`.
        feature_views: the FeatureView of each entry of `views`: their reductions are cached between
            calls (:func:`_cached_candidates`); None computes them afresh.

    Returns:
        Entity columns (without `_ROW`) then the features, view by view, in entity row order.
    """
    entity_cols = [c for c in entity_table.columns if c != _ROW]
    keys = list(dict.fromkeys(v for view in views for v in view[3].values()))
    narrow = entity_table.select(_ROW, event_timestamp_col, *keys)
    when = narrow[event_timestamp_col]
    backfilled = _backfilled(views) if filter_created else set()
    joined, outputs, feature_cols = entity_table, [], []
    for i, (table, ts, created, join_key_map, features, ttl) in enumerate(views):
        clash = set(features) & (set(entity_cols) | set(feature_cols))
        if clash:
            raise ValueError(f"feature column(s) {sorted(clash)} clash with entity columns or another view's "
                             "features: rename them or use full_feature_names=True")
        tag = f"__cw{i}_"
        if feature_views is not None:
            cand = _cached_candidates(feature_views[i], table, ts, created, list(join_key_map), features,
                                      filter_created, i in backfilled, tag)
        else:
            cand = _candidates(table, ts, created, list(join_key_map), features, filter_created, i in backfilled,
                               tag)
        preds = [narrow[v] == cand[f"{tag}k{j}"] for j, v in enumerate(join_key_map.values())]
        found = narrow.asof_join(cand, on=when >= cand[f"{tag}vis"], predicates=preds)
        values = {}
        for f in features:
            values[f] = cand[f]
            if ttl:  # Feast: event_timestamp + ttl >= the entity row's time
                fresh = cand[f"{tag}ts"] + ibis.literal(ttl) >= when
                values[f] = ibis.ifelse(fresh, cand[f], ibis.null(cand[f].type()))
        found = found.select(**{f"{tag}row": narrow[_ROW]}, **values)
        joined = joined.left_join(found, entity_table[_ROW] == found[f"{tag}row"])
        outputs.extend(found[f] for f in features)
        feature_cols.extend(features)
    out = joined.select(*[entity_table[c] for c in entity_cols], entity_table[_ROW], *outputs)
    return out.order_by(_ROW).drop(_ROW)


class AsofDuckDBOfflineStore(DuckDBOfflineStore):
    """Feast's DuckDB offline store whose `get_historical_features` joins with ASOF joins (module docstring)."""

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: List[FeatureView],
        feature_refs: List[str],
        entity_df: Union[pd.DataFrame, str],
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
    ) -> RetrievalJob:
        """As `feast.infra.offline_stores.ibis.get_historical_features_ibis`, with the join of this module."""
        if not isinstance(entity_df, pd.DataFrame):
            raise TypeError(f"{TYPE} takes the entity rows as a pandas DataFrame (as Feast's duckdb store), "
                            f"not {type(entity_df).__name__}")
        if _ROW in entity_df.columns:
            raise ValueError(f"entity_df has a column named {_ROW!r}, which this store uses internally")
        _validate_lance_feature_views(feature_views)
        event_timestamp_col = offline_utils.infer_event_timestamp_from_entity_df(
            entity_schema=_get_entity_schema(entity_df=entity_df))
        timestamp_range = _get_entity_df_event_timestamp_range(entity_df, event_timestamp_col)
        entity_df = _to_utc(entity_df, event_timestamp_col)  # in place, as Feast does
        entity_table = ibis.memtable(entity_df.assign(**{_ROW: np.arange(len(entity_df), dtype=np.int64)}))
        views = [(*_view_columns(v, feature_refs, full_feature_names, str(config.repo_path)), v.ttl)
                 for v in feature_views]
        res = point_in_time_join(entity_table, views, event_timestamp_col, filter_by_created_timestamp,
                                 feature_views=list(feature_views))

        odfvs = OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry)
        for odfv in (o for o in odfvs if o.mode == "substrait"):
            res = odfv.transform_ibis(res, full_feature_names)
        return IbisRetrievalJob(
            res,
            [o for o in odfvs if o.mode != "substrait"],
            full_feature_names,
            metadata=RetrievalMetadata(
                features=feature_refs,
                keys=list(set(entity_df.columns) - {event_timestamp_col}),
                min_event_timestamp=timestamp_range[0],
                max_event_timestamp=timestamp_range[1],
            ),
            data_source_writer=_write_data_source,
            staging_location=config.offline_store.staging_location,
            staging_location_endpoint_override=config.offline_store.staging_location_endpoint_override,
            repo_path=str(config.repo_path),
        )
