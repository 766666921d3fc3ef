"""Offline candidate generation for the ranking model: which items a user could be shown at a cut-off.

Where it sits: baselines (item-kNN, EASE, popularity, fitted on the purchases
before a cut-off) -> **candidates** -> build_ranking_dataset (training rows
at several cut-offs) and evaluate (the test cut-off). The ranker only ever
sees what the candidates contain, so `candidate_recall` (the share of the
test purchases that are in the candidate set) bounds what ranking can do.

Per user, in this order (a pair keeps the first source that proposed it):
`own` (every item the user bought before: repeat purchase is the strongest
single signal on real shop data), `item_knn` (co-purchase neighbours of the
user's items), `ease`, `popularity` (last `popularity_days`), and any extra
lists the caller passes (the two-tower retrieval at evaluation and serving).
Every pair gets the source scores (item-kNN, EASE and two recency-weighted
repeat scores) whichever source found it, so the
ranker can compare them; an item outside the training catalog (never sold
before the cut-off) scores 0 on all of them.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from cartwise.config import CandidateQuotas
from feature_repo import names as n
from pipelines.baselines import EASE, Interactions, ItemKNN, popularity, top_n

OWN, ITEM_KNN, EASE_SOURCE, POPULARITY = "own", "item_knn", "ease", "popularity"
#: half-life of the short-memory repeat score (the long one is Interactions' default, 180 days)
REPEAT_RECENT_HALF_LIFE_DAYS = 30.0


def _row_values(X, r: int, cols: np.ndarray) -> np.ndarray:
    """Entries X[r, cols] of a CSR matrix as a dense float32 vector."""
    lo, hi = X.indptr[r], X.indptr[r + 1]
    row = dict(zip(X.indices[lo:hi].tolist(), X.data[lo:hi].tolist()))
    return np.array([row.get(c, 0.0) for c in cols.tolist()], dtype=np.float32)


class CandidateGenerator:
    """Candidate pairs and source scores as of one cut-off.

    Args:
        quotas: items per source and user (besides the user's own items).
        popularity_days: window of the popularity source.
        ease_max_items: above this many items EASE is not fitted (`ranking.ease_max_items`): no EASE
            candidates and an EASE score of 0 for every pair; None: no limit.

    Attributes (after `fit`):
        interactions_: the customer x item matrices before the cut-off.
        knn_, ease_: fitted scorers (the kNN without its self term: own
            items are a source of their own, and their score is a feature);
            `ease_` is None above `ease_max_items`.
        popular_: item ids by recent purchase lines.
    """

    def __init__(self, quotas: CandidateQuotas, popularity_days: int = 90, ease_max_items: int | None = None):
        self.quotas = quotas
        self.popularity_days = popularity_days
        self.ease_max_items = ease_max_items

    @classmethod
    def from_config(cls, config) -> "CandidateGenerator":
        """The generator `ranking` and `evaluation` of a CartwiseConfig describe."""
        return cls(config.ranking.candidates, config.evaluation.popularity_days, config.ranking.ease_max_items)

    def fit(self, purchases: pd.DataFrame, as_of: pd.Timestamp) -> "CandidateGenerator":
        """Fit the sources on the purchases strictly before `as_of`.

        Args:
            purchases: purchase lines (user_id NA for guests) with item_id and event_timestamp.
            as_of: the cut-off (tz-aware).

        Returns:
            self.
        """
        self.as_of_ = pd.Timestamp(as_of)
        self.interactions_ = Interactions.from_purchases(purchases, as_of)
        self.recent_ = Interactions.from_purchases(purchases, as_of, half_life_days=REPEAT_RECENT_HALF_LIFE_DAYS)
        X = self.interactions_.matrix_
        self.knn_ = ItemKNN(self_weight=0.0, profile="binary").fit(X)
        limit = self.ease_max_items
        self.ease_ = EASE().fit(X) if limit is None or X.shape[1] <= limit else None
        self.popular_ = popularity(purchases, as_of, self.popularity_days)
        return self

    def generate(self, users: Sequence[str], extra: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
                 batch_size: int = 512) -> pd.DataFrame:
        """Candidate pairs for `users` with their source and source scores.

        Args:
            users: user ids (unknown users get popularity and extras only).
            extra: source name -> user -> item ids, appended after the built-in sources.
            batch_size: users scored at once (memory: batch x catalog float32, x3).

        Returns:
            Columns user_id, item_id, candidate_source and names.SOURCE_SCORES; users in the given order, pairs
            unique per user.
        """
        q, inter = self.quotas, self.interactions_
        items = inter.item_ids_
        pop_idx = np.array([inter.item_index_[i] for i in self.popular_[: q.popularity] if i in inter.item_index_],
                           dtype=np.int64)
        frames = []
        for start in range(0, len(users), batch_size):
            chunk = [str(u) for u in users[start:start + batch_size]]
            Xb = inter.rows(chunk)
            Xw = inter.rows(chunk, weighted=True)
            Xr = self.recent_.rows(chunk, weighted=True)
            knn = self.knn_.score(Xb)
            knn_recent = self._recent(Xw)
            ease = self.ease_.score(Xb) if self.ease_ is not None else None
            knn_top = top_n(knn, q.item_knn, exclude=Xb) if q.item_knn else np.zeros((len(chunk), 0), np.int64)
            ease_top = (top_n(ease, q.ease, exclude=Xb) if q.ease and ease is not None
                        else np.zeros((len(chunk), 0), np.int64))
            for r, user in enumerate(chunk):
                own = Xb.indices[Xb.indptr[r]:Xb.indptr[r + 1]]
                # a source proposes only items it scores above zero (an unknown user gets none from kNN/EASE)
                kt = knn_top[r][knn[r, knn_top[r]] > 0]
                et = ease_top[r][ease[r, ease_top[r]] > 0] if ease is not None else ease_top[r]
                # keep the first source of each item: own, item_knn, ease, popularity
                cols = np.concatenate([own, kt, et, pop_idx])
                srcs = np.repeat([OWN, ITEM_KNN, EASE_SOURCE, POPULARITY], [len(own), len(kt), len(et), len(pop_idx)])
                keep = np.sort(np.unique(cols, return_index=True)[1])
                cols, srcs = cols[keep], srcs[keep]
                frames.append(pd.DataFrame({
                    n.USER_ID: user, n.ITEM_ID: items[cols], n.CANDIDATE_SOURCE: srcs,
                    n.KNN_SCORE: knn[r, cols], n.KNN_RECENT_SCORE: knn_recent[r, cols],
                    n.EASE_SCORE: ease[r, cols] if ease is not None else np.zeros(len(cols), np.float32),
                    n.REPEAT_SCORE: _row_values(Xw, r, cols), n.REPEAT_RECENT_SCORE: _row_values(Xr, r, cols),
                }))
        out = (pd.concat(frames, ignore_index=True) if frames else
               pd.DataFrame(columns=[n.USER_ID, n.ITEM_ID, n.CANDIDATE_SOURCE, *n.SOURCE_SCORES]))
        if extra:
            out = self._add_extra(out, users, extra)
        out[n.ITEM_ID] = out[n.ITEM_ID].astype(object)
        return out.reset_index(drop=True)

    def _add_extra(self, out: pd.DataFrame, users: Sequence[str],
                   extra: Mapping[str, Mapping[str, Sequence[str]]]) -> pd.DataFrame:
        seen = set(zip(out[n.USER_ID], out[n.ITEM_ID]))
        rows = []
        for source, lists in extra.items():
            for user in users:
                for item in lists.get(str(user), ()):
                    if (str(user), item) not in seen:
                        seen.add((str(user), item))
                        rows.append((str(user), item, source))
        if not rows:
            return out
        add = pd.DataFrame(rows, columns=[n.USER_ID, n.ITEM_ID, n.CANDIDATE_SOURCE])
        scores = self.score_pairs(add[n.USER_ID].tolist(), add[n.ITEM_ID].tolist())
        add = pd.concat([add, scores], axis=1)
        # keep each user's rows together, in the order of `users`
        order = {str(u): k for k, u in enumerate(users)}
        both = pd.concat([out, add], ignore_index=True)
        both["_u"] = both[n.USER_ID].map(order)
        return both.sort_values("_u", kind="stable").drop(columns="_u")

    def _recent(self, Xw) -> np.ndarray:
        # the same neighbours over the recency-weighted profile (the scorer itself binarises its input)
        return np.asarray((Xw @ self.knn_.similarity_).todense(), dtype=np.float32)

    def score_pairs(self, users: Sequence[str], items: Sequence[str]) -> pd.DataFrame:
        """The source scores of arbitrary (user, item) pairs (0 for items outside the catalog).

        Returns:
            The names.SOURCE_SCORES columns, one row per pair.
        """
        inter = self.interactions_
        uniq, inv = np.unique(np.asarray(users, dtype=object).astype(str), return_inverse=True)
        col = np.array([inter.item_index_.get(i, -1) for i in items], dtype=np.int64)
        ok = col >= 0
        out = {c: np.zeros(len(items), dtype=np.float32) for c in n.SOURCE_SCORES}
        Xb, Xw = inter.rows(list(uniq)), inter.rows(list(uniq), weighted=True)
        Xr = self.recent_.rows(list(uniq), weighted=True)
        for name, s in ((n.KNN_SCORE, self.knn_.score(Xb)), (n.KNN_RECENT_SCORE, self._recent(Xw)),
                        (n.EASE_SCORE, self.ease_.score(Xb) if self.ease_ is not None else None),
                        (n.REPEAT_SCORE, Xw.toarray()), (n.REPEAT_RECENT_SCORE, Xr.toarray())):
            if s is not None:  # no EASE above ease_max_items: its scores stay 0
                out[name][ok] = s[inv[ok], col[ok]]
        return pd.DataFrame(out)


def candidate_recall(candidates: pd.DataFrame, relevant: Mapping[str, set[str]]) -> float:
    """Mean over users of the share of their relevant items present in their candidates."""
    have = candidates.groupby(n.USER_ID)[n.ITEM_ID].agg(set).to_dict()
    users = [u for u, r in relevant.items() if r]
    if not users:
        return 0.0
    return float(np.mean([len(have.get(u, set()) & relevant[u]) / len(relevant[u]) for u in users]))
