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


#: Session context of a batch query: a user looked up at an instant has no live session
#: (serving fills these from the request), which is also what the query tower was trained
#: on for purchases without earlier events in their session.
NO_SESSION = {n.SESSION_CATEGORY: "unknown", n.SESSION_DEVICE: "unknown"}


def user_features_as_of(store, user_ids, as_of: pd.Timestamp) -> pd.DataFrame:
    """Query-tower inputs for each user as of `as_of`.

    Returns:
        user_id, names.USER_FEATURES (0 when no history) and the session
        context columns of :data:`NO_SESSION`.
    """
    out = _as_of(store, n.USER_ID, user_ids, as_of, [definitions.user_purchase_stats])
    for col, value in NO_SESSION.items():
        out[col] = pd.Series([value] * len(out), index=out.index, dtype=object)
    return out


def item_features_as_of(store, item_ids, as_of: pd.Timestamp) -> pd.DataFrame:
    """Candidate-tower inputs for each item as of `as_of`.

    Returns:
        item_id, the item_content features (category, price, price band, the
        description embedding as a float list, ...) and the item_purchase_stats
        features; an item without a content row gets "unknown" and an empty list.
    """
    return _as_of(store, n.ITEM_ID, item_ids, as_of, [definitions.item_content, definitions.item_purchase_stats])
