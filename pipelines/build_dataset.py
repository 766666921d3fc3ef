"""Point-in-time training set: labelled events joined with the features they could have seen.

Where it sits: build_features (Feast repo) -> **build_dataset** ->
validate_dataset (Great Expectations) -> train_retrieval.

Entity rows are the events that carry a label weight in `objective`
(purchases 1.0, add-to-cart secondary, clicks and views down-weighted),
up to the end of `evaluation.split_date`; the last `recency.window_days`
before that cut-off weigh `recency.multiplier` times more, and a valuable
purchase line up to `value_weight_cap` times more. With
`objective.negatives_per_positive` > 0, sampled negatives (label 0) join them. Features come from
Feast's `get_historical_features` (DuckDB offline store, joining with ASOF joins:
feature_repo/offline_store.py), so each row sees only snapshots stamped at or
before its own timestamp.
"""
from __future__ import annotations

import contextlib
import gc
import os
from pathlib import Path

from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cartwise.config import CartwiseConfig
from feature_repo import definitions, feature_tables, offline_store
from feature_repo import names as n
from pipelines.build_features import arrow_schema, open_store
from pipelines.layout import Layout
from pipelines.manifest import write_json, write_manifest
from pipelines.progress import Log, default_log, step

STAGE = "dataset"
GUEST_USER = "__guest__"
#: entity rows per point-in-time join. Rows are independent in the join, so joining in slices gives the
#: same rows; memory is what changes: one join of the 5.27M entity rows of a 5.3M-event simulator log went
#: past 24 GB and was killed, 1M rows peaked at 11.6 GB and 250k at 7.7 GB (benchmarks/bench_features.py).
JOIN_CHUNK_ROWS = 1_000_000

#: Feature views joined into the training set (the ranking service's views plus sessions).
JOINED_VIEWS = (definitions.user_purchase_stats, definitions.user_profile, definitions.user_purchase_windows,
                definitions.item_purchase_stats, definitions.item_activity_windows, definitions.item_content,
                definitions.user_item_history, definitions.user_category_history, definitions.session_context)


def _fill_value(field):
    """What a row with no snapshot yet means: no history (0), unknown text, in stock, an empty list."""
    kind = str(field.dtype)
    if "Array" in kind:
        return []
    if "String" in kind:
        return "unknown"
    if "Bool" in kind:
        return True
    return 0.0 if "Float" in kind else 0


#: Fill value per feature; margin stays NaN when unknown (no neutral value exists); a conversion
#: with no activity in its window is the prior, exactly what the table writes for that state.
FILL_VALUES = {f.name: _fill_value(f) for v in JOINED_VIEWS for f in v.features if f.name != n.MARGIN}
FILL_VALUES["item_conversion_30d"] = feature_tables.CONVERSION_PRIOR_RATE
FILL_VALUES[n.ITEM_REPEAT_RATE] = feature_tables.REPEAT_PRIOR_RATE


def train_cutoff(config: CartwiseConfig) -> pd.Timestamp:
    """First instant after the training window (midnight after `split_date`, UTC)."""
    return pd.Timestamp(config.evaluation.split_date, tz="UTC") + pd.Timedelta(days=1)


def feature_refs() -> list[str]:
    """`view:feature` references of every joined feature, in a fixed order."""
    return [f"{v.name}:{f.name}" for v in JOINED_VIEWS for f in v.features]


def training_entities(events: pd.DataFrame, config: CartwiseConfig, cutoff: pd.Timestamp,
                      items: pd.DataFrame | None = None) -> pd.DataFrame:
    """Labelled entity rows with sample weights.

    Weight = event-type weight x recency multiplier (last `recency.window_days`
    before the cut-off) x value multiplier (a purchase line worth more than the
    median line weighs up to `objective.value_weight_cap` times more).

    Args:
        events: canonical event log.
        config: objective and data sections are read.
        cutoff: rows at or after it are excluded (they belong to the test window).
        items: catalog, for the category join key (user x category history).

    Returns:
        event_id, user_id, item_id, session_id, category_key, event_type, event_timestamp, weight.
    """
    obj = config.objective
    weights = events[n.EVENT_TYPE].map(obj.event_weights).fillna(0.0).astype("float64")
    keep = (weights > 0) & (events[n.EVENT_TIMESTAMP] < cutoff)
    df = events.loc[keep, [n.EVENT_ID, n.USER_ID, n.ITEM_ID, n.SESSION_ID, n.EVENT_TYPE, n.EVENT_TIMESTAMP,
                           n.QUANTITY, n.UNIT_PRICE]].copy()
    df[n.WEIGHT] = weights[keep]
    if config.data.include_guests_in_training:
        df[n.USER_ID] = df[n.USER_ID].fillna(GUEST_USER)
    else:
        df = df[df[n.USER_ID].notna()].copy()
    value = df[n.QUANTITY] * df[n.UNIT_PRICE]
    is_purchase = (df[n.EVENT_TYPE] == n.PURCHASE) & value.notna()
    if is_purchase.any() and obj.value_weight_cap > 1.0:
        median = float(value[is_purchase].median())
        if median > 0:
            mult = (value / median).clip(lower=1.0, upper=obj.value_weight_cap)
            df.loc[is_purchase, n.WEIGHT] *= mult[is_purchase]
    df = df.drop(columns=[n.QUANTITY, n.UNIT_PRICE])
    cat = items.set_index(n.ITEM_ID)[n.CATEGORY] if items is not None else pd.Series(dtype=object)
    df[n.CATEGORY_KEY] = df[n.ITEM_ID].map(cat).fillna("unknown").astype(object)
    df[n.SESSION_ID] = df[n.SESSION_ID].fillna("").astype(object)
    recent = df[n.EVENT_TIMESTAMP] >= cutoff - pd.Timedelta(days=obj.recency.window_days)
    df.loc[recent, n.WEIGHT] *= obj.recency.multiplier
    for c in (n.EVENT_ID, n.USER_ID, n.ITEM_ID, n.EVENT_TYPE, n.SESSION_ID):
        df[c] = df[c].astype(object)
    return df.sort_values([n.EVENT_TIMESTAMP, n.EVENT_ID]).reset_index(drop=True)


def sample_negatives(entities: pd.DataFrame, items: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    """`k` negative rows per labelled row: items drawn uniformly among those already in the catalog then.

    A negative shares its positive's user, session and time (so it joins the
    same user and session features) and gets label 0, event_type "negative",
    weight 1. An item equal to the positive one is replaced by its neighbour
    in the catalog order; rows with fewer than two items available get none.

    Args:
        entities: labelled rows from :func:`training_entities`.
        items: catalog (item_id, category, first_seen).
        k: negatives per row.
        seed: sampling seed.
    """
    if k == 0 or entities.empty:
        return entities.iloc[0:0]
    # an item without a first appearance (a catalog row no event mentions) is never "available at t"
    cat = items[items[n.FIRST_SEEN].notna()].sort_values([n.FIRST_SEEN, n.ITEM_ID]).reset_index(drop=True)
    ids = cat[n.ITEM_ID].astype(object).to_numpy()
    first = cat[n.FIRST_SEEN].astype("datetime64[us, UTC]").astype("int64").to_numpy()
    when = entities[n.EVENT_TIMESTAMP].astype("datetime64[us, UTC]").astype("int64").to_numpy()
    available = np.searchsorted(first, when, side="right")
    rng = np.random.default_rng(seed)
    rep = entities.loc[entities.index.repeat(k)].reset_index(drop=True)
    avail = np.repeat(available, k)
    pick = np.floor(rng.random(len(rep)) * np.maximum(avail, 1)).astype(np.int64)
    clash = ids[pick] == rep[n.ITEM_ID].to_numpy()
    pick[clash] = (pick[clash] + 1) % np.maximum(avail[clash], 1)
    keep = avail >= 2
    rep = rep[keep].copy()
    rep[n.ITEM_ID] = ids[pick[keep]]
    rep[n.CATEGORY_KEY] = cat[n.CATEGORY].astype(object).to_numpy()[pick[keep]]
    rep[n.EVENT_ID] = rep[n.EVENT_ID] + "~neg" + (np.arange(len(keep))[keep] % k).astype(str)
    rep[n.EVENT_TYPE] = n.NEGATIVE
    rep[n.WEIGHT] = 1.0
    rep[n.LABEL] = 0
    return rep


def join_point_in_time(store, entity_df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Join every feature of JOINED_VIEWS as of each row's timestamp.

    Returns:
        The joined frame (same rows, same order as `entity_df`) and the number
        of filled missing values per feature.

    Raises:
        RuntimeError: Feast returned a different set of rows than it was given.
    """
    # filter_by_created_timestamp: a value backfilled later (created after the row's time) is not visible
    out = store.get_historical_features(entity_df=entity_df, features=feature_refs(),
                                        filter_by_created_timestamp=True).to_df()
    ids = entity_df[n.EVENT_ID].to_numpy()
    if len(out) == len(entity_df) and np.array_equal(out[n.EVENT_ID].to_numpy(), ids):
        # already in order (the ASOF store keeps it): event_id first, as the reordering below puts it
        if out.columns[0] != n.EVENT_ID:
            out = out[[n.EVENT_ID] + [c for c in out.columns if c != n.EVENT_ID]]
    else:
        if len(out) != len(entity_df) or set(out[n.EVENT_ID]) != set(ids):
            raise RuntimeError(f"point-in-time join returned {len(out)} rows for {len(entity_df)} entity rows")
        out = out.set_index(n.EVENT_ID).loc[entity_df[n.EVENT_ID]].reset_index()
    return out, fill_missing(out)


def join_in_chunks(store, entity_df: pd.DataFrame, rows: int | None = None
                   ) -> Iterator[tuple[pd.DataFrame, dict[str, int]]]:
    """:func:`join_point_in_time` on consecutive slices of `rows` entity rows (default `JOIN_CHUNK_ROWS`):
    each slice's joined frame and fill counts, in the entity frame's order."""
    rows = rows or JOIN_CHUNK_ROWS
    for lo in range(0, len(entity_df), rows):
        yield join_point_in_time(store, entity_df.iloc[lo:lo + rows])


def _declared_list_types() -> dict[str, pa.DataType]:
    """Arrow list types of the joined list features, as the feature tables declare them
    (`build_features.arrow_schema`): a slice whose lists are all empty would infer list<null>, which a
    later slice's values cannot be written as."""
    return {field.name: field.type for view in JOINED_VIEWS for field in arrow_schema(view)
            if pa.types.is_list(field.type)}


def write_training_set(store, entity_df: pd.DataFrame, path, rows: int | None = None) -> dict[str, int]:
    """Join `entity_df` slice by slice (:func:`join_in_chunks`) into one parquet file at `path`.

    Written to a temporary file beside `path` and renamed over it only when every slice is in, so a
    failed build never leaves a partial training set in place of the previous one.

    Returns:
        The number of filled missing values per feature, over all slices.

    Raises:
        ValueError: no entity rows.
        RuntimeError: a slice's columns differ from the first slice's.
    """
    if len(entity_df) == 0:
        raise ValueError("no entity rows to build a training set from")
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    lists = _declared_list_types()
    writer, schema, fills = None, None, {}
    try:
        for frame, chunk_fills in join_in_chunks(store, entity_df, rows):
            for col, count in chunk_fills.items():
                fills[col] = fills.get(col, 0) + count
            if writer is None:
                schema = pa.Table.from_pandas(frame, preserve_index=False).schema
                for i, field in enumerate(schema):
                    declared = lists.get(field.name)
                    if declared is not None and field.type != declared:
                        schema = schema.set(i, pa.field(field.name, declared))
                writer = pq.ParquetWriter(str(tmp), schema)
            elif list(frame.columns) != schema.names:
                raise RuntimeError(f"training-set slice with columns {list(frame.columns)}, "
                                   f"expected {schema.names}")
            # every slice in the first slice's types, list features in their declared types
            writer.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False))
            del frame
        writer.close()
        writer = None
        os.replace(tmp, path)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return fills


@contextlib.contextmanager
def _gc_paused():
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def fill_missing(df: pd.DataFrame) -> dict[str, int]:
    """Replace missing feature values in place by FILL_VALUES; returns how many per column."""
    fills = {}
    for col, value in FILL_VALUES.items():
        if col not in df.columns:
            continue
        if isinstance(value, list):
            missing = df[col].isna()  # None or NaN; a sequence is never missing
            # present values stay as Feast returned them (NumPy arrays, as a parquet round trip gives them
            # back: converting each to a list of scalars cost ~0.45 s of a 2 s training-set build)
            with _gc_paused():  # an object per row: the cyclic collector would rescan the heap many times over
                df[col] = [[] if m else v for v, m in zip(df[col].tolist(), missing.tolist())]
        else:
            missing = df[col].isna()
            df[col] = df[col].where(~missing, value).astype(object if isinstance(value, str) else type(value))
        fills[col] = int(missing.sum())
    return fills


def run(config: CartwiseConfig, *, log: Log = default_log) -> dict:
    """Build `<work_dir>/dataset/train.parquet` and its manifest."""
    layout = Layout(config.work_dir)
    events = pd.read_parquet(layout.ingest / "events.parquet")
    items = pd.read_parquet(layout.ingest / "items.parquet")
    cutoff = train_cutoff(config)
    entities = training_entities(events, config, cutoff, items)
    if entities.empty:
        raise ValueError(f"no labelled events before {cutoff:%Y-%m-%d}: check evaluation.split_date and objective.event_weights")
    entities[n.LABEL] = 1
    negatives = sample_negatives(entities, items, config.objective.negatives_per_positive, config.model.seed)
    entities = pd.concat([entities, negatives], ignore_index=True)
    store = open_store(layout.feature_store)
    layout.dataset.mkdir(parents=True, exist_ok=True)
    path = layout.dataset / "train.parquet"
    chunks = -(-len(entities) // JOIN_CHUNK_ROWS)
    with step(STAGE, f"point-in-time join of {len(entities):,} entity rows (get_historical_features"
                     f"{f', {chunks} slices' if chunks > 1 else ''})", log) as s:
        try:
            fills = write_training_set(store, entities, path)
        finally:
            offline_store.clear_cache()  # the kept view reductions: not needed once the set is written
        meta = pq.read_metadata(path)
        s["result"] = f"{meta.num_rows:,} rows, {meta.num_columns} columns"
    if meta.num_rows != len(entities):
        raise RuntimeError(f"{path}: {meta.num_rows} rows written for {len(entities)} entity rows")
    # the joined rows are the entity rows, in order (join_point_in_time checks): counted on the entity frame
    summary = {
        "rows": meta.num_rows,
        "users": int(entities[n.USER_ID].nunique()),
        "items": int(entities[n.ITEM_ID].nunique()),
        "cutoff": cutoff.isoformat(),
        "by_event_type": {k: int(v) for k, v in entities[n.EVENT_TYPE].value_counts().items()},
        "filled_missing": fills,
        "features": feature_refs(),
    }
    write_json(layout.dataset / "dataset_summary.json", summary)
    write_manifest(layout.dataset, STAGE, {"events": str(layout.ingest / "events.parquet"),
                                           "feature_store": str(layout.feature_store)},
                   {"objective": config.objective.model_dump(mode="json"),
                    "data": config.data.model_dump(mode="json"),
                    "split_date": str(config.evaluation.split_date)}, summary)
    return summary
