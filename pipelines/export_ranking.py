"""The ranking model's part of a bundle: the tower, its feature spec, item features and source-score state.

Where it sits: train_ranking -> export -> **write_ranker** -> `<bundle>/ranking/`
-> `serving/ranking.py` (:class:`serving.ranking.LearnedRanker`), which scores
each request's candidates with the same features the model was trained on:

- `ranking_tower/`: the SavedModel of `pipelines/train_ranking.py` (signature
  `score_stacked`) and its `training_summary.json`;
- `spec.json`: the feature names in the model's column order, the value each
  takes when missing (`pipelines.build_dataset.FILL_VALUES`, else 0, exactly
  as `build_ranking_dataset.ranking_features` fills training rows), the
  bundle's as-of instant and the half-lives of the repeat scores;
- `items/`: an :class:`feature_repo.item_matrix.ItemFeatureMatrix` of the numeric
  item fields of the `ranking_v1` service, read point in time at the as-of
  instant through Feast (unfilled: the on-demand views see NaN where Feast
  would), one row per catalog item in index order: the candidate fast path;
- `pairs.parquet`, `category_pairs.parquet`: the (user, item) and (user,
  category) keys that have a row in `user_item_history` /
  `user_category_history` at the as-of instant (keys only: serving reads
  the values online);
- `scores/`: what the source scores (`names.SOURCE_SCORES`) need, fitted by
  :class:`pipelines.candidates.CandidateGenerator` on the purchases before
  the as-of instant: the item-kNN similarity (CSR arrays), EASE's weight
  matrix (when the model reads `ease_score`), and each customer's purchase
  profile (its items with the recency-weighted line sums at the as-of
  instant for both half-lives, which serving decays to the request time).

Per-request user and user x item features are read online at serve time
(Feast); nothing of them is copied here.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from cartwise.config import CartwiseConfig
from feature_repo import definitions
from feature_repo import names as n
from pipelines.baselines import RECENCY_HALF_LIFE_DAYS
from pipelines.build_dataset import FILL_VALUES
from pipelines.build_ranking_dataset import ranking_feature_names
from pipelines.candidates import REPEAT_RECENT_HALF_LIFE_DAYS, CandidateGenerator
from pipelines.manifest import read_json
from pipelines.progress import Log, default_log, step
from pipelines.train_ranking import SAVED_MODEL
from feature_repo.item_matrix import TS_PREFIX, ItemFeatureMatrix

STAGE = "export"
RANKING_DIR = "ranking"
#: item views of the ranking service whose numeric fields the bundle's item matrix holds
ITEM_VIEWS = ("item_purchase_stats", "item_activity_windows", "item_content")


def item_matrix_as_of(store, item_ids: list[str], as_of: pd.Timestamp) -> ItemFeatureMatrix:
    """The numeric item fields of every catalog item, point in time at `as_of` through Feast, NaN where missing."""
    refs = definitions.numeric_refs(ITEM_VIEWS)
    entity_df = pd.DataFrame({n.ITEM_ID: pd.Series(item_ids, dtype=object), n.EVENT_TIMESTAMP: pd.Timestamp(as_of)})
    out = store.get_historical_features(entity_df=entity_df, features=refs, filter_by_created_timestamp=True).to_df()
    if len(out) != len(entity_df):
        raise RuntimeError(f"item feature lookup returned {len(out)} rows for {len(entity_df)} items")
    out = out.drop_duplicates(n.ITEM_ID).set_index(n.ITEM_ID).loc[item_ids]
    cols = {}
    for ref in refs:
        name = ref.split(":", 1)[1]
        col = out[name]
        if col.dtype == object or str(col.dtype) == "boolean":  # in_stock: True / False / None
            col = col.astype(object).map(lambda v: np.nan if pd.isna(v) else float(v))
        cols[name] = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
    cols.update(row_times(store, item_ids, as_of))
    return ItemFeatureMatrix(item_ids, cols)


def row_times(store, item_ids: list[str], as_of: pd.Timestamp) -> dict[str, np.ndarray]:
    """For each item view with a ttl, the event time of the row the point-in-time join picked at `as_of` (the
    latest with event and created time at or before it, read from the view's offline table), so serving can
    treat a value older than the ttl at the request time as missing, as Feast would at that instant."""
    out = {}
    for name in ITEM_VIEWS:
        view = store.get_feature_view(name)
        if not view.ttl or view.ttl.total_seconds() <= 0:
            continue
        t = pd.read_parquet(view.batch_source.path, columns=[n.ITEM_ID, n.EVENT_TIMESTAMP, n.CREATED_TIMESTAMP])
        ev = pd.to_datetime(t[n.EVENT_TIMESTAMP], utc=True)
        cr = pd.to_datetime(t[n.CREATED_TIMESTAMP], utc=True)
        seen = t[(ev <= as_of) & (cr <= as_of)]  # a row without a created time is never visible under the filter
        last = pd.to_datetime(seen[n.EVENT_TIMESTAMP], utc=True).groupby(seen[n.ITEM_ID].astype(str)).max()
        last = last[last >= as_of - view.ttl]  # older rows are outside the ttl at as_of already: no value
        unix = last.map(lambda ts: ts.timestamp())
        out[TS_PREFIX + name] = unix.reindex(item_ids).to_numpy(dtype=np.float64)
    return out


def fill_values(features: list[str]) -> dict[str, float]:
    """What each model feature takes when missing: FILL_VALUES (numbers, True as 1), else 0 (the training fill)."""
    out = {}
    for name in features:
        value = FILL_VALUES.get(name, 0.0)
        out[name] = float(value) if isinstance(value, (bool, int, float)) else 0.0
    return out


def write_ranker(staging: Path, model_dir: Path | None, store, purchases: pd.DataFrame, item_ids: list[str],
                 as_of: pd.Timestamp, config: CartwiseConfig, log: Log = default_log) -> dict | None:
    """Write `<staging>/ranking/` when ranking is enabled and a trained ranking model exists.

    Args:
        staging: the bundle being written.
        model_dir: a directory holding `ranking_tower/` and `training_summary.json`: the run's
            `<work_dir>/ranking_model/` (export) or the parent bundle's `ranking/` (`cartwise index update`);
            None: no ranker.
        store: the Feast store (item features as of `as_of`).
        purchases: every purchase line (guests included).
        item_ids: the catalog in index order.
        as_of: the bundle's as-of instant.
        config: `ranking` (quotas, enabled) and `evaluation.popularity_days`.

    Returns:
        Manifest fields (`ranking`), or None when the bundle has no ranker (ranking disabled or not trained).

    Raises:
        ValueError: the trained model names a feature serving cannot produce.
    """
    if not config.ranking.enabled or model_dir is None or not (Path(model_dir) / SAVED_MODEL).is_dir():
        why = ("ranking.enabled is false" if not config.ranking.enabled else
               f"no trained model at {model_dir}" if model_dir is not None else "no trained model")
        log(f"[{STAGE}] no ranking model in the bundle ({why}): serving ranks by retrieval scores")
        return None
    model_dir = Path(model_dir)
    summary = read_json(model_dir / "training_summary.json")
    features = list(summary["features"])
    unknown = [f for f in features if f not in ranking_feature_names()]
    if unknown:
        raise ValueError(f"{model_dir}: the ranking model reads {unknown}, which serving cannot produce "
                         "(not ranking_v1 numeric features nor source scores); retrain it with `cartwise train-ranking`")
    out = staging / RANKING_DIR
    with step(STAGE, f"ranking model, item features of {len(item_ids):,} items and source-score state", log) as s:
        shutil.copytree(model_dir / SAVED_MODEL, out / SAVED_MODEL)
        shutil.copy2(model_dir / "training_summary.json", out / "training_summary.json")
        item_matrix_as_of(store, item_ids, as_of).save(out / "items")
        gen = CandidateGenerator.from_config(config)
        gen.fit(purchases, as_of)
        if n.EASE_SCORE in features and gen.ease_ is None:
            log(f"[{STAGE}] warning: {len(gen.interactions_.item_ids_):,} items sold before {as_of:%Y-%m-%d} exceed "
                f"ranking.ease_max_items ({config.ranking.ease_max_items:,}): serving scores EASE as 0; the ranker "
                "was trained with it wherever its cut-offs had fewer items (retrain, or raise the limit)")
        write_score_state(out / "scores", gen, with_ease=n.EASE_SCORE in features and gen.ease_ is not None)
        write_pair_keys(out, store, as_of)
        spec = {"features": features, "fill": fill_values(features), "as_of": pd.Timestamp(as_of).isoformat(),
                "half_life_days": {"repeat": RECENCY_HALF_LIFE_DAYS, "repeat_recent": REPEAT_RECENT_HALF_LIFE_DAYS},
                "training_end": summary.get("training_end")}
        (out / "spec.json").write_text(json.dumps(spec, indent=1))
        s["result"] = f"{len(features)} features, trained to {summary.get('training_end')}"
    return {"ranking": {"features": len(features), "training_end": summary.get("training_end"),
                        "score_items": len(gen.interactions_.item_ids_)}}


def write_score_state(directory: Path, gen: CandidateGenerator, with_ease: bool) -> None:
    """The source-score state of a fitted generator, as .npy arrays and a parquet profile table (no pickle).

    Files: `items.json` (score columns' item ids), `knn_{indptr,indices,data}.npy`
    (the item-kNN similarity, CSR), `ease.npy` (when `with_ease`) and
    `profiles.parquet` (user_id, col, w_long, w_recent: every customer's
    items with their recency-weighted line sums at the as-of instant, float32 as the generator holds them).
    """
    directory.mkdir(parents=True, exist_ok=True)
    inter = gen.interactions_
    (directory / "items.json").write_text(json.dumps(inter.item_ids_.tolist()))
    S = gen.knn_.similarity_.tocsr()
    S.sort_indices()
    for part in ("indptr", "indices", "data"):
        np.save(directory / f"knn_{part}.npy", getattr(S, part), allow_pickle=False)
    if with_ease:
        np.save(directory / "ease.npy", np.ascontiguousarray(gen.ease_.weights_, dtype=np.float32), allow_pickle=False)
    X, R = inter.weighted_.tocoo(), gen.recent_.weighted_.tocsr()
    if not np.array_equal(gen.recent_.item_ids_, inter.item_ids_):
        raise RuntimeError("the two repeat profiles index different items")
    recent = np.asarray(R[X.row, X.col], dtype=np.float32).ravel()
    prof = pd.DataFrame({n.USER_ID: inter.user_ids_[X.row].astype(str), "col": X.col.astype(np.int64),
                         "w_long": X.data.astype(np.float32), "w_recent": recent})
    prof.sort_values([n.USER_ID, "col"]).to_parquet(directory / "profiles.parquet", index=False)


def write_pair_keys(directory: Path, store, as_of: pd.Timestamp) -> None:
    """Which user x item and user x category rows exist at `as_of`: `pairs.parquet` (user_id, item_id) and
    `category_pairs.parquet` (user_id, category_key), read from the views' offline tables.

    Serving reads online only the candidates' pairs listed here (or in the session): every other pair has
    no row, online as offline.
    """
    for view, key, name in ((definitions.user_item_history, n.ITEM_ID, "pairs.parquet"),
                            (definitions.user_category_history, n.CATEGORY_KEY, "category_pairs.parquet")):
        path = store.get_feature_view(view.name).batch_source.path
        t = pd.read_parquet(path, columns=[n.USER_ID, key, n.EVENT_TIMESTAMP])
        t = t[pd.to_datetime(t[n.EVENT_TIMESTAMP], utc=True) <= pd.Timestamp(as_of)]
        keys = t[[n.USER_ID, key]].astype(str).drop_duplicates().sort_values([n.USER_ID, key])
        keys.to_parquet(directory / name, index=False)
