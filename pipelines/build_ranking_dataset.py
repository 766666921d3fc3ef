"""Point-in-time training set of the ranking model: candidates at cut-offs, labelled by later purchases.

Where it sits: build_features (Feast repo) -> **build_ranking_dataset** ->
train_ranking. Evaluation builds the same rows at the test cut-off with
:func:`ranking_rows` (without labels it does not know), so training and
evaluation rows come from one function.

For each cut-off T (`ranking.cutoffs_days_before_end` days before the last
cut-off whose `ranking.label_days` window ends at the training end):

1. the candidate sources are fitted on the purchases before T
   (pipelines/candidates.py);
2. the users are the customers who bought before T and in [T, T + label_days)
   (the same definition as the evaluation's test users: a user with no
   purchase in the window has nothing to rank);
3. features are read through Feast's `get_historical_features` with the
   `ranking_v1` service at T (the tables are daily snapshots stamped at the
   midnight after the day they summarise; with the created-timestamp filter),
   so no row sees anything from its label window;
4. label 1 if the user bought the item in [T, T + label_days). Weight of a
   positive: `objective.event_weights.purchase`, times up to
   `objective.value_weight_cap` for a valuable line, times
   `objective.recency.multiplier` when the purchase falls in the last
   `recency.window_days` before the training end; negatives weigh 1.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cartwise.config import CartwiseConfig
from feature_repo import definitions
from feature_repo import names as n
from feature_repo.feature_tables import category_keys
from pipelines.build_dataset import fill_missing, train_cutoff
from pipelines.build_features import open_store
from pipelines.candidates import CandidateGenerator, candidate_recall
from pipelines.layout import Layout
from pipelines.manifest import write_json, write_manifest
from pipelines.progress import Log, default_log, step

STAGE = "ranking_dataset"

#: request-time outputs that are constant at a midnight cut-off but vary at serving time: left out (skew)
_TIME_OF_DAY = ("request_hour", "request_weekday")


def ranking_feature_names() -> list[str]:
    """Float inputs of the ranking model: the numeric features of the `ranking_v1` service and the
    candidate source scores. Absolute times (`*_unix`) are left out (they do not generalise across
    time; their request-relative versions are in the on-demand views), and so is margin (unknown on
    most shops' data)."""
    names: list[str] = []
    for view in definitions.ranking_v1.feature_view_projections:
        fields = view.features
        names += [f.name for f in fields if definitions.is_numeric(f) and not f.name.endswith("_unix")
                  and f.name not in (n.MARGIN, *_TIME_OF_DAY)]
    names += list(n.SOURCE_SCORES)
    return list(dict.fromkeys(names))


def ranking_cutoffs(config: CartwiseConfig) -> list[pd.Timestamp]:
    """Training cut-offs, oldest first; the newest one's label window ends at the training end."""
    r = config.ranking
    last = train_cutoff(config) - pd.Timedelta(days=r.label_days)
    return sorted(last - pd.Timedelta(days=d) for d in r.cutoffs_days_before_end)


def ranking_features(store, pairs: pd.DataFrame, as_of: pd.Timestamp, categories: pd.Series) -> pd.DataFrame:
    """The `ranking_v1` features of (user, item) pairs as of `as_of`, read point in time through Feast.

    Args:
        store: the Feast store.
        pairs: user_id, item_id (+ any columns, kept).
        as_of: the cut-off; features are the snapshots stamped at or before it.
        categories: item_id -> category key (`feature_tables.category_keys`: the join key of the user x
            category view).

    Returns:
        `pairs` with the feature columns, same rows and order; missing values filled as in training.

    Raises:
        RuntimeError: Feast returned a different number of rows.
    """
    # tables are daily snapshots stamped at the midnight after the day they summarise, so a row at the
    # cut-off (a midnight) sees exactly the days before it and nothing of the label window
    ts = pd.Timestamp(as_of)
    entity_df = pairs[[n.USER_ID, n.ITEM_ID]].copy()
    entity_df["_row"] = np.arange(len(entity_df))
    entity_df[n.CATEGORY_KEY] = entity_df[n.ITEM_ID].map(categories).fillna("unknown").astype(str)
    entity_df[n.EVENT_TIMESTAMP] = ts
    entity_df[n.REQUEST_TS] = np.int64(ts.timestamp())
    out = store.get_historical_features(entity_df=entity_df, features=store.get_feature_service(n.RANKING_SERVICE),
                                        filter_by_created_timestamp=True).to_df()
    if len(out) != len(entity_df):
        raise RuntimeError(f"ranking feature join returned {len(out)} rows for {len(entity_df)} pairs")
    out = out.sort_values("_row").reset_index(drop=True)
    fill_missing(out)
    keep = [c for c in ranking_feature_names() if c in out.columns]
    feats = out[keep].apply(pd.to_numeric, errors="coerce").astype("float32").fillna(0.0)
    return pd.concat([pairs.reset_index(drop=True), feats], axis=1)


def label_weights(pairs: pd.DataFrame, window: pd.DataFrame, config: CartwiseConfig, end: pd.Timestamp,
                  median_line_value: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels and sample weights of candidate pairs from the purchases in their label window.

    Args:
        pairs: user_id, item_id.
        window: purchase lines in the label window (customers).
        config: objective weights.
        end: the training end (recency multiplier window is before it).
        median_line_value: median purchase line value of the training data.

    Returns:
        label float32 [N] (1 bought), weight float32 [N].
    """
    o = config.objective
    w = window.assign(value=window[n.QUANTITY].astype(float) * window[n.UNIT_PRICE].astype(float))
    per_pair = w.groupby([n.USER_ID, n.ITEM_ID]).agg(value=("value", "max"), last=(n.EVENT_TIMESTAMP, "max"))
    key = pd.MultiIndex.from_arrays([pairs[n.USER_ID].astype(str), pairs[n.ITEM_ID].astype(str)])
    per_pair.index = pd.MultiIndex.from_arrays([per_pair.index.get_level_values(0).astype(str),
                                                per_pair.index.get_level_values(1).astype(str)])
    hit = per_pair.reindex(key)
    label = hit["value"].notna().to_numpy()
    weight = np.ones(len(pairs), dtype=np.float64)
    value = np.clip(hit["value"].to_numpy(dtype=float) / max(median_line_value, 1e-9), 1.0, o.value_weight_cap)
    recent = (hit["last"] >= end - pd.Timedelta(days=o.recency.window_days)).to_numpy(dtype=bool)
    pos = o.event_weights.get(n.PURCHASE, 1.0) * value * np.where(recent, o.recency.multiplier, 1.0)
    weight[label] = pos[label]
    return label.astype("float32"), weight.astype("float32")


def ranking_rows(config: CartwiseConfig, store, purchases: pd.DataFrame, items: pd.DataFrame,
                 as_of: pd.Timestamp, users, extra=None) -> tuple[pd.DataFrame, CandidateGenerator]:
    """Candidates of `users` at `as_of` with their Feast features (no labels).

    Args:
        config: `ranking.candidates`, `evaluation.popularity_days`.
        store: the Feast store.
        purchases: all purchase lines (the generator only uses those before `as_of`).
        items: the catalog (item_id, category).
        as_of: the cut-off.
        users: user ids.
        extra: more candidate lists, source -> user -> item ids (e.g. the two-tower).

    Returns:
        The feature rows and the fitted generator.
    """
    gen = CandidateGenerator.from_config(config).fit(purchases, as_of)
    pairs = gen.generate(list(users), extra=extra)
    return ranking_features(store, pairs, as_of, category_keys(items)), gen


def run(config: CartwiseConfig, *, log: Log = default_log) -> dict:
    """Build `<work_dir>/ranking_dataset/train.parquet` (one block of rows per cut-off) and its manifest."""
    layout = Layout(config.work_dir)
    out_dir = layout.root / STAGE
    for path, cmd in ((layout.ingest / "events.parquet", "ingest"),
                      (layout.feature_store / "feature_store.yaml", "build-features")):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; run `cartwise {cmd}` first")
    events = pd.read_parquet(layout.ingest / "events.parquet")
    items = pd.read_parquet(layout.ingest / "items.parquet")
    purchases = events[events[n.EVENT_TYPE] == n.PURCHASE]
    end = train_cutoff(config)
    train_p = purchases[purchases[n.EVENT_TIMESTAMP] < end]
    line_value = (train_p[n.QUANTITY].astype(float) * train_p[n.UNIT_PRICE].astype(float)).median()
    store = open_store(layout.feature_store)
    blocks, per_cutoff = [], []
    for k, cutoff in enumerate(ranking_cutoffs(config)):
        label_end = cutoff + pd.Timedelta(days=config.ranking.label_days)
        before = train_p[(train_p[n.EVENT_TIMESTAMP] < cutoff) & train_p[n.USER_ID].notna()]
        window = train_p[(train_p[n.EVENT_TIMESTAMP] >= cutoff) & (train_p[n.EVENT_TIMESTAMP] < label_end)
                         & train_p[n.USER_ID].notna()]
        users = sorted(set(before[n.USER_ID].astype(str)) & set(window[n.USER_ID].astype(str)))
        if not users:
            log(f"[{STAGE}] cut-off {cutoff:%Y-%m-%d}: no customer bought both before and after it; skipped")
            continue
        with step(STAGE, f"cut-off {cutoff:%Y-%m-%d}: candidates and point-in-time features "
                         f"for {len(users):,} users", log) as s:
            rows, _ = ranking_rows(config, store, train_p, items, cutoff, users)
            rows[n.LABEL], rows[n.WEIGHT] = label_weights(rows, window, config, end, line_value)
            rows["cutoff"] = cutoff
            rows["group"] = k * 1_000_000 + rows[n.USER_ID].astype("category").cat.codes.astype(np.int64)
            relevant = {str(u): set(g[n.ITEM_ID].astype(str)) for u, g in window.groupby(n.USER_ID)}
            recall = candidate_recall(rows, {u: relevant[u] for u in users})
            s["result"] = f"{len(rows):,} rows, {rows[n.LABEL].mean():.3f} positive, candidate recall {recall:.3f}"
        blocks.append(rows)
        per_cutoff.append({"cutoff": cutoff.isoformat(), "users": len(users), "rows": len(rows),
                           "positives": int(rows[n.LABEL].sum()), "candidate_recall": round(recall, 4)})
    if not blocks:
        raise ValueError("no ranking rows: every cut-off lacks customers who bought before and after it; "
                         "lower ranking.label_days or ranking.cutoffs_days_before_end")
    train = pd.concat(blocks, ignore_index=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    train.to_parquet(out_dir / "train.parquet", index=False)
    summary = {"rows": len(train), "positives": int(train[n.LABEL].sum()), "cutoffs": per_cutoff,
               "features": ranking_feature_names(), "label_days": config.ranking.label_days,
               "training_end": end.isoformat()}
    write_json(out_dir / "summary.json", summary)
    write_manifest(out_dir, STAGE, {"events": str(layout.ingest / "events.parquet"),
                                    "feature_store": str(layout.feature_store)},
                   {"ranking": config.ranking.model_dump(mode="json"),
                    "objective": config.objective.model_dump(mode="json")}, summary)
    return summary
