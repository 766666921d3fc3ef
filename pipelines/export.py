"""Export a versioned serving bundle, only from a validated training set.

Where it sits: validate_dataset (passing verdict) + train_retrieval +
evaluate -> **export** -> `<work_dir>/bundles/<version>/` and the `CURRENT`
pointer that serving reads (layout and loaders in `cartwise/bundle.py`).

The bundle holds both towers (SavedModel), the item table and embeddings of
the whole catalog as of the data's end, the ScaNN index over them (pybind
serialization), the popularity fallback, the purchase history used for
"exclude purchased", the validation verdict, the metrics, the config and a
manifest with the sha256 of every file. It is written to a staging directory,
renamed into place, and only then does `CURRENT` move (atomic rename).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata as md
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from cartwise import bundle as b
from cartwise.config import CartwiseConfig
from feature_repo import names as n
from pipelines.build_features import open_store
from pipelines.build_index import build_searcher, recall_vs_brute_force
from pipelines.evaluate import popular_items, purchase_history
from pipelines.feature_frames import item_features_as_of, user_features_as_of
from pipelines.layout import Layout
from pipelines.manifest import read_json, write_json
from pipelines.progress import Log, default_log, step
from pipelines.train_retrieval import CANDIDATE_FLOATS, CANDIDATE_STRINGS, QUERY_FLOATS, QUERY_STRINGS, tensors

STAGE = "export"
GOLDEN_QUERIES = 200
LIBRARIES = ("tensorflow", "tf-keras", "tensorflow-recommenders", "scann", "feast", "great-expectations", "pandas", "numpy")


class ExportRefused(RuntimeError):
    """Export preconditions failed (no passing validation, index recall too low)."""


def _versions() -> dict[str, str]:
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = md.version(lib)
        except md.PackageNotFoundError:
            out[lib] = "missing"
    return out


def _publish(staging: Path, bundles: Path, version: str) -> Path:
    final = bundles / version
    os.replace(staging, final)
    tmp = bundles / f".{b.CURRENT}.tmp"
    tmp.write_text(version + "\n")
    os.replace(tmp, bundles / b.CURRENT)
    return final


def run(config: CartwiseConfig, *, log: Log = default_log) -> dict:
    """Build, verify and publish a bundle.

    Returns:
        The bundle manifest.

    Raises:
        ExportRefused: the training set's verdict is missing or failing, or the
            index recall on golden queries is below `retrieval.index.min_recall`.
    """
    layout = Layout(config.work_dir)
    verdict_path = layout.dataset / "validation.json"
    if not verdict_path.is_file() or not read_json(verdict_path).get("success"):
        raise ExportRefused(f"{verdict_path}: no passing validation verdict; export needs one")
    events = pd.read_parquet(layout.ingest / "events.parquet")
    items = pd.read_parquet(layout.ingest / "items.parquet")
    as_of = pd.Timestamp(events[n.EVENT_TIMESTAMP].max()).floor("D") + pd.Timedelta(days=1)
    store = open_store(layout.feature_store)

    bundles = layout.bundles
    bundles.mkdir(parents=True, exist_ok=True)
    for orphan in bundles.glob(".staging-*"):
        shutil.rmtree(orphan, ignore_errors=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    staging = bundles / f".staging-{stamp}"
    staging.mkdir()

    for tower in (b.QUERY_TOWER, b.CANDIDATE_TOWER):
        shutil.copytree(layout.model / tower, staging / tower)
    ids = items[n.ITEM_ID].astype(str).tolist()
    with step(STAGE, f"embed the catalog ({len(ids):,} items) as of {as_of:%Y-%m-%d} and build the ScaNN index", log) as s:
        frame = item_features_as_of(store, ids, as_of)
        emb = b.load_tower(staging / b.CANDIDATE_TOWER)(tensors(frame, CANDIDATE_STRINGS, CANDIDATE_FLOATS))
        searcher, params = build_searcher(emb, config.retrieval.index, k=config.retrieval.k)
        searcher.serialize(str(_mkdir(staging / b.INDEX_DIR)), relative_path=True)
        np.save(staging / b.EMBEDDINGS, emb.astype(np.float32), allow_pickle=False)
        s["result"] = f"{params['type']}"

    purchases = events[events[n.EVENT_TYPE] == n.PURCHASE]
    history = purchase_history(purchases)
    golden_users = (history.groupby(n.USER_ID)["purchases"].sum().sort_values(ascending=False)
                    .head(GOLDEN_QUERIES).index.tolist())
    with step(STAGE, f"index recall@10 vs brute force on {len(golden_users)} golden queries", log) as s:
        if golden_users:
            q = b.load_tower(staging / b.QUERY_TOWER)(tensors(user_features_as_of(store, golden_users, as_of),
                                                              QUERY_STRINGS, QUERY_FLOATS))
            recall = recall_vs_brute_force(searcher, emb, q, k=10)
        else:
            recall = 1.0
        s["result"] = f"{recall:.3f}"
    if recall < config.retrieval.index.min_recall:
        shutil.rmtree(staging)
        raise ExportRefused(f"index recall@10 {recall:.3f} < retrieval.index.min_recall "
                            f"{config.retrieval.index.min_recall}; raise num_leaves_to_search or reorder")

    table = frame[[n.ITEM_ID, n.CATEGORY, n.PRICE]].merge(items[[n.ITEM_ID, n.TITLE]].astype({n.ITEM_ID: str}),
                                                          on=n.ITEM_ID, how="left")
    table.to_parquet(staging / b.ITEMS, index=False)
    (staging / b.POPULAR).write_text(json.dumps(popular_items(purchases, as_of, config.evaluation.popularity_days)))
    history.to_parquet(staging / b.HISTORY, index=False)
    for src, name in ((verdict_path, "validation.json"), (layout.evaluation / "metrics.json", "metrics.json"),
                      (layout.model / "training_summary.json", "training_summary.json")):
        if src.is_file():
            shutil.copy2(src, staging / name)
    write_json(staging / "config.json", config.model_dump(mode="json"))

    files = b.file_hashes(staging)
    version = f"v{stamp}-{hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:8]}"
    manifest = {
        "version": version,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "as_of": as_of.isoformat(),
        "feature_store": str(layout.feature_store),
        "feature_services": {"query": n.RETRIEVAL_QUERY_SERVICE, "candidate": n.RETRIEVAL_CANDIDATE_SERVICE},
        "query_inputs": {"strings": QUERY_STRINGS, "floats": QUERY_FLOATS},
        "index": {**params, "recall_at_10_vs_brute_force": recall, "golden_queries": len(golden_users)},
        "libraries": _versions(),
        "files": files,
    }
    write_json(staging / b.MANIFEST, manifest)
    b.verify(staging)
    final = _publish(staging, bundles, version)
    log(f"[{STAGE}] published {final} (CURRENT -> {version})")
    return manifest


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p
