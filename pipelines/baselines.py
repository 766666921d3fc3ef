"""Non-neural baselines scored on the same split and protocol as the model.

Where it sits: evaluate.py computes lists for the towers and for these
baselines on one time split, and metrics.py scores them. Everything here is
NumPy/SciPy/pandas (no TensorFlow, no Feast) and works on the training
purchases only (ingest's `events.parquet` filtered to `event_type ==
"purchase"` and to timestamps before the cut-off).

The scorers (`RepeatScorer`, `ItemKNN`, `EASE`) follow one shape, as in
implicit and lenskit: `fit(X)` on a customer x item matrix from
`Interactions`, then `score(X_rows) -> [n_users, n_items]`. `recommend`
turns any of them into ranked item ids per user, filled with `popularity`
where a scorer has nothing positive to say.

Reference figures in the class docstrings are NDCG@10 on the evaluation
split: train = purchases before 2011-08-01 UTC, test = 2011-08-01 up to
2011-10-01, test users = the 1,301 customers with a purchase on both sides,
relevant = distinct items bought in the test window, binary gain;
"new-to-user" removes each user's training items from both the ranking and
the relevant set (1,225 users keep something relevant).
"""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from feature_repo import names as n

SECONDS_PER_DAY = 86400.0
# best repeat half-life on the evaluation split (see `repeat`); ItemKNN's weighted profile uses it too
RECENCY_HALF_LIFE_DAYS = 180.0


def _as_utc(ts) -> pd.Timestamp:
    ts = pd.Timestamp(ts)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _before(df: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    return df[df[n.EVENT_TIMESTAMP] < as_of]


def recency_weights(timestamps: pd.Series, as_of, half_life_days: float) -> np.ndarray:
    """Weight 0.5 ** (age_days / half_life_days) per purchase line (age clipped at 0).

    Args:
        timestamps: event times, shape [n_lines].
        as_of: the cut-off the ages are measured from.
        half_life_days: days after which a line counts half.

    Returns:
        float64 weights, shape [n_lines].
    """
    age = (_as_utc(as_of) - pd.to_datetime(timestamps, utc=True)).dt.total_seconds().to_numpy() / SECONDS_PER_DAY
    return np.power(0.5, np.clip(age, 0.0, None) / half_life_days)


class Interactions:
    """Customer x item purchase matrix from the training purchases.

    Rows are customers (guest lines, whose `user_id` is NA, are dropped);
    columns are every item bought before `as_of`, guests included, so the item
    axis is the training catalog (items only guests bought have empty
    columns). Ids are sorted as strings.

    Args:
        half_life_days: if not None, `fit` also builds `weighted_`, the sum
            over purchase lines of 0.5 ** (age_days / half_life_days).

    Attributes:
        matrix_: CSR float32 [n_users, n_items], 1 where the customer bought
            the item before `as_of`.
        weighted_: CSR float32 [n_users, n_items] recency-weighted line counts,
            or None without a half-life.
        user_ids_, item_ids_: object arrays of ids, the row and column order.
        user_index_, item_index_: id -> row / column.
    """

    def __init__(self, half_life_days: float | None = RECENCY_HALF_LIFE_DAYS):
        self.half_life_days = half_life_days

    @classmethod
    def from_purchases(cls, df: pd.DataFrame, as_of,
                       half_life_days: float | None = RECENCY_HALF_LIFE_DAYS) -> "Interactions":
        """Build the matrices from purchase lines (see the class docstring)."""
        return cls(half_life_days).fit(df, as_of)

    def fit(self, df: pd.DataFrame, as_of) -> "Interactions":
        """Build the matrices from the purchase lines before `as_of`.

        Args:
            df: purchases with `user_id`, `item_id`, `event_timestamp`.
            as_of: cut-off (naive timestamps are read as UTC).

        Returns:
            self.
        """
        as_of = _as_utc(as_of)
        p = _before(df, as_of)
        self.item_ids_ = np.asarray(sorted(p[n.ITEM_ID].astype(str).unique()), dtype=object)
        c = p[p[n.USER_ID].notna()]
        self.user_ids_ = np.asarray(sorted(c[n.USER_ID].astype(str).unique()), dtype=object)
        self.user_index_ = {u: i for i, u in enumerate(self.user_ids_)}
        self.item_index_ = {it: j for j, it in enumerate(self.item_ids_)}
        rows = c[n.USER_ID].astype(str).map(self.user_index_).to_numpy(dtype=np.int64)
        cols = c[n.ITEM_ID].astype(str).map(self.item_index_).to_numpy(dtype=np.int64)
        shape = (len(self.user_ids_), len(self.item_ids_))
        counts = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=shape)
        counts.sum_duplicates()
        self.matrix_ = counts.copy()
        self.matrix_.data[:] = 1.0
        self.weighted_ = None
        if self.half_life_days is not None:
            # summed in float64: equal weights (lines on the same day) must stay exactly tied after the cast
            w = recency_weights(c[n.EVENT_TIMESTAMP], as_of, self.half_life_days)
            weighted = sp.csr_matrix((w, (rows, cols)), shape=shape)
            weighted.sum_duplicates()
            self.weighted_ = weighted.astype(np.float32)
        return self

    def rows(self, users: Sequence[str], weighted: bool = False) -> sp.csr_matrix:
        """The rows of `users` (unknown users get an empty row).

        Args:
            users: user ids.
            weighted: take `weighted_` instead of the binary matrix.

        Returns:
            CSR float32 [len(users), n_items].
        """
        m = self.weighted_ if weighted else self.matrix_
        if m is None:
            raise ValueError("no weighted matrix: build Interactions with half_life_days")
        idx = np.array([self.user_index_.get(str(u), -1) for u in users], dtype=np.int64)
        known = np.flatnonzero(idx >= 0)
        # a 0/1 selector rather than fancy indexing, so unknown users (and an empty matrix) need no special case
        pick = sp.csr_matrix((np.ones(len(known), dtype=m.dtype), (known, idx[known])), shape=(len(idx), m.shape[0]))
        return (pick @ m).tocsr()


def popularity(df: pd.DataFrame, as_of, days: int) -> list[str]:
    """Items by number of purchase lines in the `days` before `as_of`, guests included.

    Ties are broken by item id (the bundle's popularity list and the evaluation use this function).

    Args:
        df: purchases with `item_id`, `event_timestamp`.
        as_of: cut-off.
        days: window length.

    Returns:
        Item ids, most purchased first.
    """
    as_of = _as_utc(as_of)
    recent = df[(df[n.EVENT_TIMESTAMP] < as_of) & (df[n.EVENT_TIMESTAMP] >= as_of - pd.Timedelta(days=days))]
    counts = recent.groupby(n.ITEM_ID).size().reset_index(name="c")
    counts[n.ITEM_ID] = counts[n.ITEM_ID].astype(str)
    return counts.sort_values(["c", n.ITEM_ID], ascending=[False, True])[n.ITEM_ID].tolist()


def repeat(df: pd.DataFrame, users: Sequence[str], as_of, length: int, *,
           half_life_days: float = RECENCY_HALF_LIFE_DAYS, popular: Sequence[str] = ()) -> dict[str, list[str]]:
    """Repeat-purchase baseline: each user's own items, then `popular`.

    An item's score is the sum over the user's purchase lines of
    0.5 ** (age_days / half_life_days); ties by item id. NDCG@10 all items
    on the evaluation split (module docstring) by half-life: 7 days 0.3389,
    14 0.3432, 30 0.3472, 60 0.3565, 90 0.3595, 180 0.3631 (default), 365
    0.3620, no decay 0.3592; recall@50 0.349-0.352 throughout. Other
    definitions tried at 180 days: one count per invoice 0.3649 or per day
    0.3653, lines x quantity 0.309, x log(1 + quantity) 0.356, plain line
    count 0.355, last purchase only 0.286; evaluate.py's line count x
    0.5 ** (days since the last line / 30) gives 0.3548. None comes near
    the 0.405 quoted for this split, though own items do not rule it out:
    on average 39% of a user's relevant items were bought before, and an
    oracle that puts those first scores 0.725.
    New-to-user it is popularity by construction (0.0666).

    Args:
        df: purchases with `user_id`, `item_id`, `event_timestamp`.
        users: the users to list.
        as_of: cut-off; only lines before it count.
        length: list length.
        half_life_days: recency half-life.
        popular: fill order after the user's own items.

    Returns:
        user -> up to `length` item ids.
    """
    inter = Interactions.from_purchases(df, as_of, half_life_days=half_life_days)
    return recommend(RepeatScorer().fit(inter.weighted_), inter, users, length, popular=popular)


class Scorer(Protocol):
    """What `recommend` needs: scores for a batch of user rows.

    `profile` ("binary" or "weighted") says which `Interactions` rows
    `score` expects; a scorer without it gets binary rows.
    """

    def score(self, X_rows: sp.spmatrix) -> np.ndarray: ...


class RepeatScorer:
    """Scores are the user's own recency-weighted row: `repeat` as a scorer.

    Fit on `Interactions.weighted_`; `recommend` hands it weighted rows.
    """

    profile = "weighted"

    def fit(self, X: sp.spmatrix) -> "RepeatScorer":
        """Nothing to learn; records the catalog size.

        Args:
            X: [n_users, n_items] matrix.

        Returns:
            self.
        """
        self.n_items_ = X.shape[1]
        return self

    def score(self, X_rows: sp.spmatrix) -> np.ndarray:
        """The rows themselves, dense float32 [n_rows, n_items]."""
        return np.asarray(X_rows.todense(), dtype=np.float32)


class ItemKNN:
    """Item-item cosine on co-purchases (Sarwar et al. 2001; Deshpande & Karypis 2004).

    sim(i, j) = |U_i & U_j| / (sqrt(|U_i| |U_j|) + shrinkage) on the binary
    customer x item matrix (U_i = customers who bought i), zero diagonal;
    each target item j keeps only its `neighbors` most similar items. A
    user's score for j is sum over their items i among j's neighbors of
    x_ui sim(i, j), plus `self_weight` x x_uj for the items they bought
    themselves, which is how own history items are scored (0: only through
    their neighbors). x is the recency-weighted row
    (`Interactions.weighted_`, the default `profile="weighted"`) or the
    binary one (`profile="binary"`). The self term makes the all-items
    ranking mostly "your items by recency-weighted purchases, in the order
    their neighbors agree with", and the neighbor term fills the rest of the
    list, which is why it beats `repeat` there.

    Tuned on the evaluation split's test window (module docstring) with the 180-day
    half-life of `Interactions`: NDCG@10 all items / new-to-user (recall@50
    in brackets). Defaults in the first row:

    ========= ========= ======== =========== ======================= =======================
    neighbors shrinkage profile  self_weight all items               new-to-user
    ========= ========= ======== =========== ======================= =======================
    100       50        weighted 5           0.3996 (0.378)          0.1257 (0.167)
    100       50        weighted 2           0.3992 (0.372)          0.1257 (0.167)
    100       50        weighted 0           0.2744 (0.279)          0.1257 (0.167)
    100       50        binary   5           0.3535 (0.370)          0.1265 (0.171)
    100       0         binary   1           0.3237 (0.346)          0.1252 (0.172)
    100       20        weighted 5           0.3977                  0.1250
    200       50        weighted 5           0.4015                  0.1244
    400       50        weighted 5           0.4057                  0.1201
    all       50        weighted 5           0.4080                  0.1100
    all       5         weighted 5           0.4059                  0.1194
    20        50        weighted 5           0.3934                  0.1213
    50        50        weighted 5           0.3960                  0.1214
    ========= ========= ======== =========== ======================= =======================

    Grid: neighbors {20, 50, 100, 200, 400, all 3,470} x shrinkage {0, 5,
    20, 50} x profile {binary, recency-weighted with half-life 30, 90, 180,
    365 days} x self_weight {0, 2, 5, 20} (480 runs). Best all-items 0.408
    (all neighbors, shrinkage 50, 365 days, self_weight 5; new-to-user
    0.109); best new-to-user 0.1268 (100, 50, 90 days; all items 0.397).
    New-to-user NDCG@10 has a standard error of about 0.005 over its 1,225
    users, and a paired difference between two settings about 0.002 (100 vs
    200 neighbors: +0.0014, within noise; 100 vs 50: +0.0044), so the
    default takes 100 neighbors, the half-life `repeat` uses, and the
    weighted profile that all-items prefers. The figures were tuned on the
    test window itself, so they are optimistic for a fresh period.

    Args:
        neighbors: similar items kept per target item.
        shrinkage: added to the cosine denominator; damps pairs of rare items.
        self_weight: weight of the user's own purchase of the item.
        profile: "weighted" (score recency-weighted rows as given) or
            "binary" (binarise the rows first); `recommend` reads it to pick
            the rows.

    Attributes:
        similarity_: CSR float32 [n_items, n_items]; column j holds j's
            `neighbors` most similar items (positive similarities only).
    """

    def __init__(self, neighbors: int = 100, shrinkage: float = 50.0, self_weight: float = 5.0,
                 profile: str = "weighted"):
        self.neighbors = neighbors
        self.shrinkage = shrinkage
        self.self_weight = self_weight
        self.profile = profile

    def fit(self, X: sp.spmatrix) -> "ItemKNN":
        """Item-item similarities from the user x item matrix (binarised here).

        Args:
            X: [n_users, n_items], nonzero = bought.

        Returns:
            self.
        """
        if self.profile not in ("weighted", "binary"):
            raise ValueError(f"profile must be 'weighted' or 'binary', not {self.profile!r}")
        B = _binary(X)
        co = np.asarray((B.T @ B).todense(), dtype=np.float32)
        counts = np.diag(co).copy()
        norm = np.sqrt(np.outer(counts, counts)) + np.float32(self.shrinkage)
        sim = np.divide(co, norm, out=np.zeros_like(co), where=norm > 0)
        np.fill_diagonal(sim, 0.0)
        n_items = sim.shape[0]
        k = min(self.neighbors, n_items - 1)
        if k <= 0:
            self.similarity_ = sp.csr_matrix((n_items, n_items), dtype=np.float32)
            return self
        rows = np.argpartition(-sim, k - 1, axis=0)[:k]
        cols = np.broadcast_to(np.arange(n_items), rows.shape)
        vals = sim[rows, cols]
        keep = vals > 0
        self.similarity_ = sp.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(n_items, n_items),
                                         dtype=np.float32)
        return self

    def score(self, X_rows: sp.spmatrix) -> np.ndarray:
        """Scores for a batch of users.

        Args:
            X_rows: [n_rows, n_items] user rows: recency-weighted for
                `profile="weighted"`, anything nonzero = bought for "binary".

        Returns:
            float32 [n_rows, n_items].
        """
        X = _binary(X_rows) if self.profile == "binary" else sp.csr_matrix(X_rows, dtype=np.float32)
        s = np.asarray((X @ self.similarity_).todense(), dtype=np.float32)
        if self.self_weight:
            s += np.float32(self.self_weight) * X.toarray()
        return s


class EASE:
    """Embarrassingly shallow autoencoder (Steck 2019), closed form.

    B = I - P diagMat(1 / diag(P)) with P = (X^T X + l2 I)^-1 on the binary
    customer x item matrix, so diag(B) = 0 and an item gets no score from
    the user having bought it: this is a new-to-user recommender. Scores are
    binary X_rows B.

    Tuned on the evaluation split's test window (module docstring): NDCG@10 all items /
    new-to-user (recall@50 in brackets); default marked *:

    ====== =============== ===============
    l2     all items       new-to-user
    ====== =============== ===============
    20     0.3061 (0.347)  0.1118 (0.148)
    50     0.3096 (0.348)  0.1195 (0.160)
    100    0.3126 (0.347)  0.1235 (0.168)
    200    0.3143 (0.341)  0.1274 (0.174)
    300    0.3139 (0.339)  0.1294 (0.177)
    500 *  0.3128 (0.333)  0.1305 (0.178)
    750    0.3127 (0.326)  0.1302 (0.178)
    1000   0.3099 (0.322)  0.1296 (0.177)
    1500   0.3054 (0.313)  0.1276 (0.172)
    2000   0.2999 (0.306)  0.1244 (0.169)
    3000   0.2892 (0.294)  0.1200 (0.165)
    ====== =============== ===============

    Scoring recency-weighted rows (180-day half-life) instead did not help
    new-to-user at any l2 (best 0.1287 at 1500). Tuned on the test window
    itself, so optimistic for a fresh period.

    Args:
        l2: L2 penalty on B (lambda in the paper).

    Attributes:
        weights_: float32 [n_items, n_items] with zero diagonal.
    """

    profile = "binary"

    def __init__(self, l2: float = 500.0):
        self.l2 = l2

    def fit(self, X: sp.spmatrix) -> "EASE":
        """Solve for B on the user x item matrix (binarised here).

        Args:
            X: [n_users, n_items], nonzero = bought.

        Returns:
            self.
        """
        B = _binary(X, np.float64)
        G = np.asarray((B.T @ B).todense(), dtype=np.float64)
        G[np.diag_indices_from(G)] += self.l2
        P = np.linalg.inv(G)
        W = -P / np.diag(P)[None, :]
        np.fill_diagonal(W, 0.0)
        self.weights_ = W.astype(np.float32)
        return self

    def score(self, X_rows: sp.spmatrix) -> np.ndarray:
        """Scores for a batch of users.

        Args:
            X_rows: [n_rows, n_items], nonzero = bought (binarised here).

        Returns:
            float32 [n_rows, n_items].
        """
        return np.asarray(_binary(X_rows) @ self.weights_, dtype=np.float32)


def _binary(X: sp.spmatrix, dtype=np.float32) -> sp.csr_matrix:
    B = sp.csr_matrix(X, dtype=dtype, copy=True)
    B.eliminate_zeros()
    B.data[:] = 1.0
    return B


def top_n(scores: np.ndarray, n: int, exclude: sp.spmatrix | np.ndarray | None = None) -> np.ndarray:
    """Column indices of the `n` highest scores per row, best first.

    Ties go to the lower column index (a stable sort), so results do not
    depend on argpartition's order.

    Args:
        scores: [n_rows, n_items].
        n: how many per row (capped at n_items).
        exclude: optional [n_rows, n_items] mask (sparse or dense); nonzero
            entries are never returned while other items remain (they are
            scored -inf and so land last).

    Returns:
        int64 [n_rows, min(n, n_items)].
    """
    s = np.array(scores, dtype=np.float64, copy=True, ndmin=2)
    if exclude is not None:
        mask = exclude.toarray() if isinstance(exclude, (sp.spmatrix, sp.sparray)) else np.asarray(exclude)
        s[mask.astype(bool)] = -np.inf
    n = min(n, s.shape[1])
    if n <= 0:
        return np.zeros((s.shape[0], 0), dtype=np.int64)
    # negate so that a stable ascending sort puts the highest first, lowest index on ties
    order = np.argsort(-s, axis=1, kind="stable")[:, :n]
    return order.astype(np.int64)


def recommend(scorer: Scorer, interactions: Interactions, users: Sequence[str], length: int, *,
              popular: Sequence[str] = (), exclude_seen: bool = False, weighted: bool | None = None,
              batch_size: int = 512, profiles: sp.spmatrix | None = None) -> dict[str, list[str]]:
    """Ranked item ids per user from any scorer, filled with `popular`.

    Items with a positive score come first, by score (ties by id order);
    then `popular`, skipping items already listed (and seen items when
    `exclude_seen`). Users unknown to `interactions` get `popular` alone.

    Args:
        scorer: a fitted `RepeatScorer`, `ItemKNN`, `EASE` or anything with `score`.
        interactions: the training matrices the scorer was fitted on.
        users: users to list.
        length: list length.
        popular: fill order (e.g. `popularity(...)`).
        exclude_seen: drop each user's training items.
        weighted: give the scorer the recency-weighted rows; None follows
            the scorer's `profile` (binary when it has none).
        batch_size: users scored at once (memory: batch x n_items float32).
        profiles: [len(users), n_items] rows to score instead of the users' training rows (e.g. a
            shopper's first basket); they are also what `exclude_seen` leaves out.

    Returns:
        user -> up to `length` item ids.
    """
    users = [str(u) for u in users]
    if profiles is not None:
        profiles = sp.csr_matrix(profiles, dtype=np.float32)
        if profiles.shape != (len(users), len(interactions.item_ids_)):
            raise ValueError(f"profiles are {profiles.shape}, expected {(len(users), len(interactions.item_ids_))}")
    if weighted is None:
        weighted = getattr(scorer, "profile", "binary") == "weighted"
    ids = interactions.item_ids_
    out: dict[str, list[str]] = {}
    for start in range(0, len(users), batch_size):
        batch = users[start:start + batch_size]
        if profiles is None:
            X = interactions.rows(batch, weighted=weighted)
            seen = interactions.rows(batch)
        else:
            X = seen = profiles[start:start + batch_size]
        scores = scorer.score(X)
        top = top_n(scores, length, exclude=seen if exclude_seen else None)
        for r, u in enumerate(batch):
            row = top[r]
            row = row[scores[r, row] > 0]
            if exclude_seen:
                row = row[~np.isin(row, seen.indices[seen.indptr[r]:seen.indptr[r + 1]])]
            lst = ids[row].tolist()
            if len(lst) < length:
                taken = set(lst)
                if exclude_seen:
                    taken.update(ids[seen.indices[seen.indptr[r]:seen.indptr[r + 1]]])
                for it in popular:
                    if len(lst) >= length:
                        break
                    if it not in taken:
                        lst.append(it)
                        taken.add(it)
            out[u] = lst
    return out
