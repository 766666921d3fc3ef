"""Incremental index update: new or changed items reach serving without retraining.

Where it sits: ingest (new catalog rows / events) -> build_features (content
and sales features in Feast) -> **update_index** -> a new bundle beside the
CURRENT one, published exactly like an export (`pipelines/export.py`:
staged, verified, golden queries replayed, renamed, CURRENT moved), which a
server started with `--watch` hot-swaps to. Everything after the index (golden
queries, the serving tables serving's sources read, config.json) is written by
export's own `write_tables`, so an updated bundle serves exactly like an
exported one.

The CURRENT bundle's candidate tower (copied byte for byte) embeds only the
items whose candidate-tower inputs (category, price, sales features) differ
from those stored in the bundle, or that are new; unchanged items keep their
stored embeddings, removed items leave the index. New products get an
embedding from their content features (the tower maps an unseen item id to
its out-of-vocabulary row), so they are retrievable before anyone buys them.
"""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd

from cartwise import bundle as b
from cartwise.config import CartwiseConfig
from feature_repo import names as n
from pipelines.build_features import open_store
from pipelines.export import cleanup_orphans, new_staging, publish, write_index, write_tables
from pipelines.export_ranking import RANKING_DIR
from pipelines.feature_frames import item_features_as_of
from pipelines.layout import Layout
from pipelines.progress import Log, default_log, step
from pipelines.train_retrieval import CANDIDATE_FLOATS, CANDIDATE_STRINGS, tensors

STAGE = "index"
#: Files carried over unchanged from the parent bundle (the model and what it was validated and measured on).
CARRIED = (b.QUERY_TOWER, b.CANDIDATE_TOWER, b.REFERENCE_DIR, "validation.json", "metrics.json",
           "training_summary.json", "drift.json", "drift.html")


def diff_items(old: pd.DataFrame, new: pd.DataFrame) -> tuple[list[str], list[str], list[str]]:
    """Which items are new, changed (any candidate-tower input differs) or removed.

    Args:
        old: candidate inputs stored in the parent bundle (`item_features.parquet`).
        new: candidate inputs as of now.

    Returns:
        (new ids, changed ids, removed ids).
    """
    cols = [c for c in [*CANDIDATE_STRINGS, *CANDIDATE_FLOATS] if c != n.ITEM_ID]
    o = old.astype({n.ITEM_ID: str}).set_index(n.ITEM_ID)
    w = new.astype({n.ITEM_ID: str}).set_index(n.ITEM_ID)
    added = [i for i in w.index if i not in o.index]
    removed = [i for i in o.index if i not in w.index]
    both = w.index[w.index.isin(o.index)]
    a, c = o.loc[both, cols], w.loc[both, cols]
    diff = pd.Series(False, index=both)
    for col in cols:
        if col in CANDIDATE_FLOATS:
            # compare what the tower sees (float32), so a float64 round trip is not a change
            diff |= a[col].astype("float32").to_numpy() != c[col].astype("float32").to_numpy()
        else:
            diff |= a[col].astype(str).to_numpy() != c[col].astype(str).to_numpy()
    return added, diff[diff].index.tolist(), removed


def run(config: CartwiseConfig, *, log: Log = default_log) -> dict:
    """Re-embed new and changed items with the CURRENT bundle's towers and publish a new bundle.

    Returns:
        The new bundle's manifest (`index_update` says what changed).

    Raises:
        BundleError: no CURRENT bundle or it fails verification.
        ExportRefused: index recall on golden queries below `retrieval.index.min_recall`.
    """
    layout = Layout(config.work_dir)
    bundles = layout.bundles
    cleanup_orphans(bundles, log)
    parent = b.current_bundle(bundles)
    parent_manifest = b.verify(parent)
    events = pd.read_parquet(layout.ingest / "events.parquet")
    items = pd.read_parquet(layout.ingest / "items.parquet")
    as_of = pd.Timestamp(events[n.EVENT_TIMESTAMP].max()).floor("D") + pd.Timedelta(days=1)
    store = open_store(layout.feature_store)
    ids = items[n.ITEM_ID].astype(str).tolist()

    staging, stamp = new_staging(bundles)
    b.crash_point("staging_created")
    try:
        for name in CARRIED:
            src = parent / name
            if src.is_dir():
                shutil.copytree(src, staging / name)
            elif src.is_file():
                shutil.copy2(src, staging / name)
        b.crash_point("towers_copied")
        with step(STAGE, f"diff {len(ids):,} catalog items against {parent.name} and embed new or changed ones",
                  log) as s:
            frame = item_features_as_of(store, ids, as_of)
            frame[n.ITEM_ID] = frame[n.ITEM_ID].astype(str)
            old_emb = np.load(parent / b.EMBEDDINGS, allow_pickle=False)
            if (parent / b.ITEM_FEATURES).is_file():
                old = pd.read_parquet(parent / b.ITEM_FEATURES)
                added, changed, removed = diff_items(old, frame)
                row_of = {i: k for k, i in enumerate(old[n.ITEM_ID].astype(str))}
            else:  # a bundle from before item_features.parquet: everything is re-embedded
                old, row_of = None, {}
                added, changed, removed = ids, [], []
            todo = set(added) | set(changed)
            emb = np.zeros((len(frame), old_emb.shape[1]), np.float32)
            redo = frame[n.ITEM_ID].isin(todo).to_numpy()
            keep = ~redo
            emb[keep] = old_emb[[row_of[i] for i in frame.loc[keep, n.ITEM_ID]]]
            if redo.any():
                tower = b.load_tower(staging / b.CANDIDATE_TOWER)
                emb[redo] = tower(tensors(frame[redo], CANDIDATE_STRINGS, CANDIDATE_FLOATS))
            searcher, params = write_index(staging, frame, emb, config)
            s["result"] = f"{len(added)} new, {len(changed)} changed, {len(removed)} removed, {int(redo.sum())} embedded"
        b.crash_point("index_serialized")

        # golden queries, the serving tables (item table with stock and margin, co-purchase neighbours, content
        # embeddings, popularity, history) and config.json, exactly as export writes them
        # ... and the parent's ranking model with item features and source scores for the new catalog
        tables = write_tables(staging, store, frame, emb, searcher, params, items, events, as_of, config, log,
                              ranker_from=parent / RANKING_DIR)
        b.crash_point("tables_written")
        update = {"parent": parent.name, "new": len(added), "changed": len(changed), "removed": len(removed),
                  "embedded": int(redo.sum()), "reused": int(keep.sum()), "new_items": added[:50],
                  "changed_items": changed[:50]}
        keep_keys = ("feature_services", "query_inputs", "candidate_inputs", "validation")
        manifest = publish(staging, bundles, stamp, {
            **{k: parent_manifest[k] for k in keep_keys if k in parent_manifest},
            "feature_store": str(layout.feature_store),
            "as_of": as_of.isoformat(),
            **tables,
            "index_update": update,
        }, log)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
