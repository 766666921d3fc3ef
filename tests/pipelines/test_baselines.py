"""Baselines on tiny purchase logs whose answers are worked out by hand, plus brute-force oracles."""
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.baselines import (EASE, Interactions, ItemKNN, RepeatScorer, popularity, recency_weights,
                                 recommend, repeat, top_n)

AS_OF = pd.Timestamp("2020-02-01", tz="UTC")


def _purchases(rows) -> pd.DataFrame:
    """rows: (user or None, item, days before AS_OF)."""
    return pd.DataFrame({
        "user_id": pd.array([u for u, _, _ in rows], dtype="string"),
        "item_id": pd.array([i for _, i, _ in rows], dtype="string"),
        "event_timestamp": [AS_OF - pd.Timedelta(days=d) for _, _, d in rows],
        "quantity": 1, "unit_price": 1.0,
    })


LOG = _purchases([
    ("u1", "a", 10), ("u1", "a", 10), ("u1", "b", 5), ("u1", "c", 20),
    ("u2", "a", 1), ("u2", "d", 1),
    (None, "g", 2), (None, "d", 3),   # guests: not rows of the matrix, but their items are columns
    ("u3", "e", -1),                  # after as_of: ignored
])


def test_interactions_binary_and_recency_weighted():
    inter = Interactions.from_purchases(LOG, AS_OF, half_life_days=10)
    assert list(inter.user_ids_) == ["u1", "u2"]            # u3 only bought after as_of
    assert list(inter.item_ids_) == ["a", "b", "c", "d", "g"]  # guest-only "g" is a column; "e" is not
    assert inter.item_index_["d"] == 3 and inter.user_index_["u2"] == 1
    X = inter.matrix_
    assert sp.isspmatrix_csr(X) and X.dtype == np.float32
    assert X.toarray().tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 1, 0]]  # two "a" lines -> still 1
    W = inter.weighted_.toarray()
    # u1: a = 2 lines x 0.5^(10/10) = 1.0; b = 0.5^(5/10) = 0.7071; c = 0.5^(20/10) = 0.25
    assert W[0] == pytest.approx([1.0, 2 ** -0.5, 0.25, 0, 0], rel=1e-6)
    # u2: one line 1 day old each: 0.5^0.1
    assert W[1] == pytest.approx([0.5 ** 0.1, 0, 0, 0.5 ** 0.1, 0], rel=1e-6)
    assert Interactions.from_purchases(LOG, AS_OF, half_life_days=None).weighted_ is None


def test_interactions_rows_for_unknown_users_are_empty():
    inter = Interactions.from_purchases(LOG, AS_OF.tz_localize(None))  # naive = UTC
    rows = inter.rows(["u2", "nobody", "u1"])
    assert rows.toarray().tolist() == [[1, 0, 0, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 0, 0]]
    with pytest.raises(ValueError, match="half_life_days"):
        Interactions.from_purchases(LOG, AS_OF, half_life_days=None).rows(["u1"], weighted=True)


def test_recency_weights():
    ts = pd.Series([AS_OF - pd.Timedelta(days=30), AS_OF, AS_OF + pd.Timedelta(days=1)])
    # 30 days at half-life 30 -> 0.5; now -> 1; the future is clipped to age 0 -> 1
    assert recency_weights(ts, AS_OF, 30.0) == pytest.approx([0.5, 1.0, 1.0])


def test_popularity_counts_lines_in_window_guests_included_ties_by_id():
    log = _purchases([("u1", "b", 1), (None, "b", 2), ("u2", "a", 3), ("u2", "c", 3), (None, "c", 4),
                      ("u1", "z", 40), ("u1", "z", 41), ("u1", "z", 42)])
    # last 30 days: b 2 lines, c 2, a 1; z is older than the window; b and c tie -> by id
    assert popularity(log, AS_OF, 30) == ["b", "c", "a"]
    assert popularity(log, AS_OF, 60) == ["z", "b", "c", "a"]


def test_repeat_orders_own_items_then_fills_with_popularity():
    # u1 with half-life 10: a 1.0 > b 0.707 > c 0.25 (see test_interactions_...); then popular items not yet listed
    lists = repeat(LOG, ["u1", "u2", "stranger"], AS_OF, 5, half_life_days=10, popular=["d", "a", "g", "b"])
    assert lists["u1"] == ["a", "b", "c", "d", "g"]
    # u2: a and d tie at 0.5^0.1 -> by id
    assert lists["u2"] == ["a", "d", "g", "b"]
    assert lists["stranger"] == ["d", "a", "g", "b"]


def _naive_cosine(X: np.ndarray, shrinkage: float) -> np.ndarray:
    n_items = X.shape[1]
    sim = np.zeros((n_items, n_items))
    for i in range(n_items):
        for j in range(n_items):
            if i != j:
                denom = np.sqrt(X[:, i].sum() * X[:, j].sum()) + shrinkage
                sim[i, j] = float((X[:, i] * X[:, j]).sum()) / denom if denom > 0 else 0.0
    return sim


def test_item_knn_by_hand():
    # u1 {a, b}, u2 {a, b, c}, u3 {c}: |U_a| = |U_b| = |U_c| = 2; co(a, b) = 2, co(a, c) = co(b, c) = 1
    # shrinkage 2: sim(a, b) = 2 / (2 + 2) = 0.5; sim(a, c) = sim(b, c) = 1 / 4
    X = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=np.float32))
    knn = ItemKNN(neighbors=2, shrinkage=2.0, self_weight=0.0, profile="binary").fit(X)
    assert knn.similarity_.toarray() == pytest.approx(np.array([[0, .5, .25], [.5, 0, .25], [.25, .25, 0]]))
    # u3 bought c: a and b score 0.25 each; c itself 0 without a self term, 3 x 1 with self_weight 3
    assert knn.score(X[2]) == pytest.approx(np.array([[.25, .25, 0]]))
    knn3 = ItemKNN(neighbors=2, shrinkage=2.0, self_weight=3.0, profile="binary").fit(X)
    assert knn3.score(X[2]) == pytest.approx(np.array([[.25, .25, 3]]))
    # neighbors=1: column c keeps one of its tied a / b neighbors at 0.25; columns a and b keep each other
    knn1 = ItemKNN(neighbors=1, shrinkage=2.0, self_weight=0.0).fit(X)
    S = knn1.similarity_.toarray()
    assert S[1, 0] == S[0, 1] == pytest.approx(0.5) and S[2, 0] == S[2, 1] == 0
    assert sorted(S[:, 2].tolist()) == pytest.approx([0, 0, .25])


def test_item_knn_matches_brute_force_with_weighted_profile():
    rng = np.random.default_rng(0)
    X = (rng.random((40, 12)) < 0.25).astype(np.float32)
    W = X * rng.uniform(0.1, 3.0, X.shape).astype(np.float32)  # recency-weighted counts
    sim = _naive_cosine(X, 1.5)
    # all neighbors: score = W sim + self_weight W
    full = ItemKNN(neighbors=100, shrinkage=1.5, self_weight=2.0).fit(sp.csr_matrix(X))
    got = full.score(sp.csr_matrix(W))
    assert got.dtype == np.float32 and got.shape == (40, 12)
    assert got == pytest.approx(W @ sim + 2.0 * W, rel=1e-5, abs=1e-6)
    # 4 neighbors: each column keeps the 4 largest similarities (which of tied ones is not specified)
    knn = ItemKNN(neighbors=4, shrinkage=1.5).fit(sp.csr_matrix(X))
    S = knn.similarity_.toarray()
    for j in range(12):
        top4 = sorted(sim[:, j], reverse=True)[:4]
        assert sorted(S[:, j][S[:, j] > 0], reverse=True) == pytest.approx([v for v in top4 if v > 0], rel=1e-5)
        assert np.isin(S[:, j][S[:, j] > 0], sim[:, j].astype(np.float32)).all()
    with pytest.raises(ValueError, match="profile"):
        ItemKNN(profile="other").fit(sp.csr_matrix(X))


def test_ease_matches_per_column_ridge_regression():
    # EASE is min ||X - XB||^2 + l2 ||B||^2 with diag(B) = 0, i.e. for each column j a ridge
    # regression of x_j on the other columns: B[-j, j] = (X_-j^T X_-j + l2 I)^-1 X_-j^T x_j
    rng = np.random.default_rng(1)
    X = (rng.random((60, 8)) < 0.3).astype(np.float64)
    l2 = 5.0
    ease = EASE(l2=l2).fit(sp.csr_matrix(X))
    B = np.zeros((8, 8))
    for j in range(8):
        others = [i for i in range(8) if i != j]
        Xo = X[:, others]
        B[others, j] = np.linalg.solve(Xo.T @ Xo + l2 * np.eye(7), Xo.T @ X[:, j])
    assert ease.weights_ == pytest.approx(B, abs=1e-5)
    assert np.diag(ease.weights_).tolist() == [0.0] * 8
    # scores binarise the rows: weighted input gives the same scores
    rows = sp.csr_matrix(X[:3] * 7.0)
    assert ease.score(rows) == pytest.approx(X[:3] @ B, abs=1e-4)


def test_top_n_ties_and_exclusion():
    scores = np.array([[0.5, 0.9, 0.5, 0.1], [1.0, 1.0, 1.0, 1.0]])
    assert top_n(scores, 3).tolist() == [[1, 0, 2], [0, 1, 2]]  # ties -> lower index first
    excl = sp.csr_matrix(np.array([[0, 1, 0, 0], [1, 1, 1, 0]]))
    assert top_n(scores, 2, exclude=excl).tolist() == [[0, 2], [3, 0]]  # excluded items only after all others
    assert top_n(scores, 10).shape == (2, 4)
    assert top_n(scores, 0).shape == (2, 0)


def test_recommend_positive_scores_then_popularity():
    inter = Interactions.from_purchases(LOG, AS_OF, half_life_days=10)
    # u1 bought a, b, c; u2 bought a, d. A scorer that likes "g" for everyone and "c" for u2, dislikes "b"
    class Fixed:
        profile = "binary"

        def score(self, X_rows):
            s = np.zeros(X_rows.shape, dtype=np.float32)
            s[:, 4] = 2.0   # g
            s[:, 1] = -1.0  # b: negative, so only via the popularity fill
            s[X_rows.toarray()[:, 3] > 0, 2] = 1.0  # c for users who bought d
            return s

    lists = recommend(Fixed(), inter, ["u1", "u2", "new"], 4, popular=["b", "a", "d"])
    assert lists == {"u1": ["g", "b", "a", "d"], "u2": ["g", "c", "b", "a"], "new": ["g", "b", "a", "d"]}
    # exclude_seen drops the user's own items from scores and fill alike
    lists = recommend(Fixed(), inter, ["u1", "u2"], 4, popular=["b", "a", "d"], exclude_seen=True)
    assert lists == {"u1": ["g", "d"], "u2": ["g", "c", "b"]}


def test_recommend_follows_the_scorer_profile():
    # u1 bought "z" yesterday and "a" 50 days ago: weighted rows put z first, binary rows tie -> by id
    log = _purchases([("u1", "a", 50), ("u1", "z", 1)])
    inter = Interactions.from_purchases(log, AS_OF, half_life_days=10)
    rep = RepeatScorer().fit(inter.weighted_)
    assert rep.profile == "weighted" and EASE.profile == "binary"
    assert recommend(rep, inter, ["u1"], 2)["u1"] == ["z", "a"]
    assert recommend(rep, inter, ["u1"], 2, weighted=False)["u1"] == ["a", "z"]
    # ItemKNN's profile picks the rows the same way (self term only: no co-purchases here)
    assert recommend(ItemKNN().fit(inter.matrix_), inter, ["u1"], 2)["u1"] == ["z", "a"]
    assert recommend(ItemKNN(profile="binary").fit(inter.matrix_), inter, ["u1"], 2)["u1"] == ["a", "z"]


def test_recommend_batches_give_the_same_lists():
    rng = np.random.default_rng(2)
    rows = [(f"u{rng.integers(30)}", f"i{rng.integers(25):02d}", int(rng.integers(0, 200))) for _ in range(300)]
    log = _purchases(rows)
    inter = Interactions.from_purchases(log, AS_OF)
    pop = popularity(log, AS_OF, 90)
    users = list(inter.user_ids_) + ["ghost"]
    for scorer in (ItemKNN(neighbors=5).fit(inter.matrix_), EASE(l2=10.0).fit(inter.matrix_)):
        a = recommend(scorer, inter, users, 10, popular=pop, batch_size=7)
        b = recommend(scorer, inter, users, 10, popular=pop)
        assert a == b


def test_recommend_scores_given_profiles_instead_of_the_users_rows():
    rng = np.random.default_rng(3)
    log = _purchases([(f"u{rng.integers(20)}", f"i{rng.integers(25):02d}", int(rng.integers(0, 200)))
                      for _ in range(200)])
    inter = Interactions.from_purchases(log, AS_OF)
    pop = popularity(log, AS_OF, 90)
    knn = ItemKNN(neighbors=5).fit(inter.matrix_)
    users = list(inter.user_ids_)[:6]
    for exclude_seen in (False, True):
        # the users' own weighted rows as profiles: the lists recommend makes from their training rows
        own = recommend(knn, inter, users, 8, popular=pop, exclude_seen=exclude_seen,
                        profiles=inter.rows(users, weighted=True), batch_size=4)
        assert own == recommend(knn, inter, users, 8, popular=pop, exclude_seen=exclude_seen)
    # a profile of strangers (ids unknown to `inter`): their baskets scored, and left out with exclude_seen
    basket = sp.csr_matrix(inter.rows(users[:2], weighted=True))
    got = recommend(knn, inter, ["new1", "new2"], 8, popular=pop, exclude_seen=True, profiles=basket)
    for r, u in enumerate(["new1", "new2"]):
        assert not set(got[u]) & set(inter.item_ids_[basket[r].indices])
        assert got[u] != pop[:8] or not basket[r].nnz
    with pytest.raises(ValueError, match="profiles are"):
        recommend(knn, inter, ["new1"], 8, profiles=basket)


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.tuples(st.sampled_from(["u1", "u2", "u3", None]), st.sampled_from("abcdefgh"),
                               st.integers(0, 100)), min_size=1, max_size=40),
       length=st.integers(0, 10), exclude_seen=st.booleans(), kind=st.sampled_from(["knn", "ease", "repeat"]))
def test_recommend_properties(rows, length, exclude_seen, kind):
    # a subset of the catalog, ordered, len <= length, no repeats, no excluded ids
    log = _purchases(rows)
    inter = Interactions.from_purchases(log, AS_OF)
    scorer = {"knn": lambda: ItemKNN(neighbors=3), "ease": lambda: EASE(l2=1.0),
              "repeat": RepeatScorer}[kind]()
    scorer.fit(inter.weighted_ if kind == "repeat" else inter.matrix_)
    pop = popularity(log, AS_OF, 200)
    users = ["u1", "u2", "u3", "u4"]
    lists = recommend(scorer, inter, users, length, popular=pop, exclude_seen=exclude_seen)
    catalog = set(inter.item_ids_)
    assert set(lists) == set(users)
    for u, lst in lists.items():
        assert len(lst) <= length and len(set(lst)) == len(lst) and set(lst) <= catalog
        seen = set(log[(log.user_id == u).fillna(False) & (log.event_timestamp < AS_OF)].item_id)
        if exclude_seen:
            assert not set(lst) & seen
        # as long as the catalog (less the excluded items) allows, the list is full
        assert len(lst) == min(length, len(catalog - (seen if exclude_seen else set())))
