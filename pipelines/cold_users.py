"""The cold-user cohort of the evaluation: shoppers the models have never seen, asked after their first basket.

Where it sits: `pipelines/evaluate.py` (the `cohorts.cold_users` entry of
metrics.json and the report). The protocol's test users bought before the
cut-off, so a customer whose first purchase falls in the test window is in
none of the headline figures; this cohort asks what each route gives such a
shopper once the shop has seen one basket of theirs, as serving would see it
in the cart:

- **cold users**: customers whose first purchase falls in the test window
  and who buy again in it after their first basket (their lines at their
  first purchase time: one invoice on Online Retail);
- **relevant**: the distinct items of their later purchases in the window,
  the basket's own items left out (serving never returns what is in the
  cart, so no list here does);
- **lists**, each without the basket's items:
  `popularity` (the evaluation's popular list: what a shopper without a
  session gets), `item_knn` (the baseline's co-purchase neighbours of the
  basket, then popularity: bought-together), `two_tower` (the query tower as
  serving embeds a shopper it does not know: user id "unknown", zero
  statistics, the session's category, unknown device; the session category
  is the basket's most common category, ties by name; then the ScaNN index;
  left out, as serving leaves it out, when the tower embeds every session
  category alike).

The ranker is not in it: serving ranks only shoppers with online features
(`serving/ranking.py`), and a cold user has none.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cartwise.bundle import search_kwargs
from feature_repo import names as n
from pipelines import baselines
from pipelines.train_retrieval import QUERY_FLOATS, QUERY_STRINGS, tensors

#: the id input, category and device of a shopper the query tower does not know (as serving/pipeline.py feeds it)
UNKNOWN = "unknown"


def cold_user_targets(train: pd.DataFrame, test: pd.DataFrame
                      ) -> tuple[list[str], dict[str, list[str]], dict[str, set[str]]]:
    """The cold users, their first baskets and their relevant items (module docstring).

    Args:
        train: purchase lines before the cut-off (user_id NA for guests).
        test: purchase lines of the test window.

    Returns:
        users (sorted), user -> the basket's distinct items (sorted), user -> relevant items.
    """
    warm = set(train[n.USER_ID].dropna().astype(str))
    t = test[test[n.USER_ID].notna()]
    t = t.assign(**{n.USER_ID: t[n.USER_ID].astype(str), n.ITEM_ID: t[n.ITEM_ID].astype(str)})
    t = t[~t[n.USER_ID].isin(warm)]
    first = t.groupby(n.USER_ID)[n.EVENT_TIMESTAMP].transform("min")
    in_basket = t[n.EVENT_TIMESTAMP] == first
    baskets = {u: sorted(set(g)) for u, g in t[in_basket].groupby(n.USER_ID)[n.ITEM_ID]}
    later = {u: set(g) for u, g in t[~in_basket].groupby(n.USER_ID)[n.ITEM_ID]}
    relevant = {u: items - set(baskets[u]) for u, items in later.items()}
    users = sorted(u for u, r in relevant.items() if r)
    return users, {u: baskets[u] for u in users}, {u: relevant[u] for u in users}


def _without(items: Sequence[str], basket: set[str], length: int) -> list[str]:
    return [i for i in items if i not in basket][:length]


def session_category(basket: Sequence[str], categories: Mapping[str, str]) -> str:
    """The basket's most common known category (ties by name), "unknown" when it has none."""
    counts = pd.Series([categories.get(i) for i in basket], dtype=object).dropna()
    counts = counts[counts.astype(str) != UNKNOWN]
    if counts.empty:
        return UNKNOWN
    tally = counts.astype(str).value_counts()
    return sorted(tally[tally == tally.max()].index)[0]


def _session_embeddings(embed_query: Callable, session_categories: Sequence[str]) -> np.ndarray:
    """The query tower's outputs for shoppers it does not know, one per session category (zero statistics)."""
    frame = pd.DataFrame({n.USER_ID: UNKNOWN, n.SESSION_CATEGORY: list(session_categories)})
    for c in QUERY_STRINGS:
        if c not in frame:
            frame[c] = UNKNOWN
    for c in QUERY_FLOATS:
        frame[c] = np.float32(0.0)
    return np.asarray(embed_query(tensors(frame, QUERY_STRINGS, QUERY_FLOATS)), dtype=np.float32)


def cold_user_lists(users: Sequence[str], baskets: Mapping[str, Sequence[str]], popular: Sequence[str], length: int,
                    interactions: baselines.Interactions, knn: baselines.ItemKNN, embed_query: Callable, searcher,
                    item_ids: np.ndarray, index: Mapping | None,
                    categories: Mapping[str, str]) -> dict[str, dict[str, list[str]]]:
    """Each method's list for each cold user (module docstring), `length` items, none of the basket's.

    Args:
        users, baskets: from :func:`cold_user_targets`.
        popular: item ids, most popular first (the evaluation's popularity).
        length: list length.
        interactions: the customers' purchases before the cut-off (the item-kNN baseline's matrix).
        knn: the item-kNN baseline fitted on it (`evaluate.baseline_lists`' scorer).
        embed_query: the query tower.
        searcher: the ScaNN index over `item_ids`.
        index: the index parameters (`build_searcher`'s, calibrated).
        categories: item id -> category (the session category of a basket).

    Returns:
        method -> user -> item ids; no `two_tower` when the tower embeds every session category alike (a log
        without session context: serving then has no two-tower list for such a shopper either).
    """
    out: dict[str, dict[str, list[str]]] = {"popularity": {}, "item_knn": {}, "two_tower": {}}
    if not users:
        return out
    sets = {u: set(baskets[u]) for u in users}
    widest = max(len(s) for s in sets.values())
    for u in users:
        out["popularity"][u] = _without(popular, sets[u], length)
    # item-kNN over the basket as the profile (the baseline's scorer), then popularity; the basket left out
    index_of = interactions.item_index_
    pairs = [(r, index_of[i]) for r, u in enumerate(users) for i in baskets[u] if i in index_of]
    rows, cols = (list(x) for x in zip(*pairs)) if pairs else ([], [])
    X = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                      shape=(len(users), len(interactions.item_ids_)))
    knn_lists = baselines.recommend(knn, interactions, users, length, popular=popular, exclude_seen=True, profiles=X)
    out["item_knn"] = {u: _without(knn_lists[u], sets[u], length) for u in users}
    # the query tower as serving embeds a shopper it does not know (serving/pipeline.py `_embed_session`), when
    # it reads the session at all (serving's `_tower_reads_sessions`: else serving has no two-tower list for them)
    names = [UNKNOWN, *sorted({str(c) for c in categories.values()} - {UNKNOWN})]
    probe = _session_embeddings(embed_query, names)
    if len(names) < 2 or not np.abs(probe[1:] - probe[:1]).max() > 1e-6:
        del out["two_tower"]
        return out
    q = _session_embeddings(embed_query, [session_category(baskets[u], categories) for u in users])
    k = min(length + widest, len(item_ids))
    idx, _ = searcher.search_batched(np.ascontiguousarray(q), final_num_neighbors=k, **search_kwargs(index, k))
    for u, row in zip(users, idx):
        out["two_tower"][u] = _without(item_ids[row].tolist(), sets[u], length)
    return out
