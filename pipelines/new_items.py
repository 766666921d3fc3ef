"""Reserved list positions for items with no sales yet, chosen by content similarity (cold items).

Where it sits: evaluate (after ranking) and, later, serving. A ranker trained
on purchases cannot score an item nobody has bought above items with a
history, so without a reserved place a new item is never shown and never
gets the sales that would let it be learned. `ranking.new_item_slots`
positions from `ranking.new_item_first_position` on are given to the new
items whose description embedding (TF-IDF + SVD of the product text,
pipelines/text_embedding.py) is closest to the user's recency-weighted
profile of bought items; the ranked list moves down to make room.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from feature_repo import names as n
from pipelines.baselines import recency_weights


def new_item_lists(embeddings: pd.DataFrame, new_items: Sequence[str], purchases: pd.DataFrame,
                   users: Sequence[str], as_of: pd.Timestamp, length: int,
                   half_life_days: float = 30.0) -> dict[str, list[str]]:
    """The `length` new items most similar to each user's bought items.

    Args:
        embeddings: item_id and names.TEXT_EMBEDDING (list of floats) for the catalog.
        new_items: items with no sale before `as_of`.
        purchases: purchase lines before `as_of` (customers).
        users: users to list.
        as_of: the cut-off (recency weights of the profile).
        length: items per user.
        half_life_days: recency half-life of the profile.

    Returns:
        user -> item ids, most similar first (empty when the user has no
        embedded purchases or there are no new items).
    """
    emb = embeddings.set_index(n.ITEM_ID)[n.TEXT_EMBEDDING]
    new = [i for i in new_items if i in emb.index]
    if not new or length <= 0:
        return {str(u): [] for u in users}
    N = np.vstack([np.asarray(emb[i], dtype=np.float32) for i in new])
    N /= np.linalg.norm(N, axis=1, keepdims=True) + 1e-9
    p = purchases[purchases[n.USER_ID].astype(str).isin({str(u) for u in users})
                  & purchases[n.ITEM_ID].isin(emb.index)].reset_index(drop=True)
    w = recency_weights(p[n.EVENT_TIMESTAMP], as_of, half_life_days)
    bought = p[n.ITEM_ID].to_numpy(dtype=object)
    out = {str(u): [] for u in users}
    k = min(length, len(new))
    new_arr = np.asarray(new, dtype=object)
    for user, idx in p.groupby(p[n.USER_ID].astype(str)).indices.items():
        V = np.vstack([np.asarray(emb[i], dtype=np.float32) for i in bought[idx]])
        profile = (w[idx][:, None] * V).sum(axis=0)
        sims = N @ (profile / (np.linalg.norm(profile) + 1e-9))
        out[user] = new_arr[np.argsort(-sims, kind="stable")[:k]].tolist()
    return out


def insert_slots(lists: Mapping[str, Sequence[str]], new_lists: Mapping[str, Sequence[str]], slots: int,
                 first_position: int) -> dict[str, list[str]]:
    """Put up to `slots` new items at positions first_position, first_position + 1, ... (1-based).

    Items already in a list are not repeated; a list shorter than the
    position gets the new items appended.
    """
    out = {}
    for user, lst in lists.items():
        lst = list(lst)
        picks = [i for i in new_lists.get(user, []) if i not in set(lst)][:slots]
        at = min(first_position - 1, len(lst))
        out[user] = lst[:at] + picks + lst[at:]
    return out
