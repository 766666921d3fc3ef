"""User and item feature frames "as of" an instant, read point in time from Feast.

Where it sits: used by training (item embeddings at the cut-off), evaluation
(test users as of the cut-off) and export (the catalog as of the data's end),
so every consumer reads features through the same Feast join as training.
"""
from __future__ import annotations

import pandas as pd

from feature_repo import definitions
from feature_repo import names as n
from pipelines.build_dataset import fill_missing


def _as_of(store, key: str, ids, as_of: pd.Timestamp, views) -> pd.DataFrame:
    ids = pd.Series(pd.unique(pd.Series(list(ids), dtype=object)), dtype=object)
    entity_df = pd.DataFrame({key: ids, n.EVENT_TIMESTAMP: pd.Timestamp(as_of)})
    refs = [f"{v.name}:{f.name}" for v in views for f in v.features]
    out = store.get_historical_features(entity_df=entity_df, features=refs, filter_by_created_timestamp=True).to_df()
    if len(out) != len(entity_df):
        raise RuntimeError(f"feature lookup returned {len(out)} rows for {len(entity_df)} {key}s")
    out = out.drop_duplicates(key).set_index(key).loc[ids].reset_index()
    fill_missing(out)
    return out.drop(columns=[n.EVENT_TIMESTAMP])


def user_features_as_of(store, user_ids, as_of: pd.Timestamp) -> pd.DataFrame:
    """user_id + names.USER_FEATURES for each user, as of `as_of` (0 when no history)."""
    return _as_of(store, n.USER_ID, user_ids, as_of, [definitions.user_purchase_stats])


def item_features_as_of(store, item_ids, as_of: pd.Timestamp) -> pd.DataFrame:
    """item_id + content and sales features for each item, as of `as_of`."""
    return _as_of(store, n.ITEM_ID, item_ids, as_of, [definitions.item_content, definitions.item_purchase_stats])
