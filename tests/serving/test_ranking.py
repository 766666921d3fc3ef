"""The learned ranker at serve time (serving/ranking.py) against the training rows: zero train / serve skew.

On the synthetic shop's real bundle (real Feast repo, SQLite online store, the trained DCN ranker): for
customers at the bundle's as-of instant, the feature matrix the ranker builds per request (online user and
user x item reads, the bundle's item matrix, the on-demand views, the source scores) equals the features
`pipelines/build_ranking_dataset.ranking_features` reads point in time through Feast for the same pairs, and
the source scores `pipelines/candidates.CandidateGenerator` computes offline. Then: served scores are the
model's probabilities, the repeat scores decay with the request time, and a failing online read keeps the
retrieval order with a flag.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from cartwise.bundle import current_bundle
from feature_repo import definitions
from feature_repo import names as n
from feature_repo.feature_tables import category_keys
from pipelines.build_features import open_store
from pipelines.build_ranking_dataset import ranking_features
from pipelines.candidates import CandidateGenerator
from serving.features import OnlineStoreUnavailable
from serving.pipeline import FALLBACK_RANKING, Recommender
from serving.ranking import LearnedRanker
from serving.request import SessionContext

USERS = 12
RANDOM_ITEMS = 15  # per user, beside the training candidates: items they never bought, some in their categories


@pytest.fixture(scope="module")
def served(trained_shop):
    cfg, events, items, _ = trained_shop
    rec = Recommender.from_bundle_dir(current_bundle(cfg.work_dir / "bundles"))
    return cfg, events, items, rec


def test_bundle_ranker_is_served(served):
    *_, rec = served
    assert isinstance(rec.ranker, LearnedRanker)
    assert set(rec.ranker.user_fields) <= set(rec.features.names)  # one lookup reads the ranker's user views too


def test_served_features_equal_training_rows(served):
    cfg, events, items, rec = served
    ranker: LearnedRanker = rec.ranker
    as_of = pd.Timestamp(ranker.spec["as_of"])
    purchases = events[events[n.EVENT_TYPE] == n.PURCHASE]
    customers = purchases[n.USER_ID].dropna().astype(str).value_counts()
    # the heaviest buyers, some middling and some light ones
    users = sorted(set(customers.index[:4]) | set(customers.index[len(customers) // 2:][:4])
                   | set(customers.index[-4:]))[:USERS]
    gen = CandidateGenerator.from_config(cfg).fit(purchases, as_of)
    pairs = gen.generate(users)
    rng = np.random.default_rng(0)
    extra = [(u, i) for u in users for i in rng.choice(rec.catalog.item_ids, RANDOM_ITEMS, replace=False)]
    extra = pd.DataFrame(extra, columns=[n.USER_ID, n.ITEM_ID])
    extra = pd.concat([extra, gen.score_pairs(extra[n.USER_ID].tolist(), extra[n.ITEM_ID].tolist())], axis=1)
    pairs = pd.concat([pairs, extra], ignore_index=True).drop_duplicates([n.USER_ID, n.ITEM_ID])
    offline = ranking_features(open_store(cfg.work_dir / "feature_store"), pairs, as_of, category_keys(items))

    checked = nonzero_pairs = 0
    for user, rows in offline.groupby(n.USER_ID, sort=False):
        query, flags, _ = rec.query(user, session=SessionContext(time=as_of.to_pydatetime()))
        assert query.features is not None, flags
        cat_rows = np.array([rec.catalog.row_of[i] for i in rows[n.ITEM_ID]], dtype=np.int64)
        served_x = ranker.matrix(cat_rows, query).astype(np.float32)
        expected = rows[ranker.features].to_numpy(dtype=np.float32)
        for j, name in enumerate(ranker.features):
            np.testing.assert_allclose(served_x[:, j], expected[:, j], rtol=2e-6, atol=1e-6,
                                       err_msg=f"user {user}, feature {name}")
        checked += len(rows)
        nonzero_pairs += int((rows[n.UI_PURCHASES] > 0).sum())
    assert checked >= USERS * RANDOM_ITEMS
    assert nonzero_pairs > 0  # user x item rows were read online, not only missing ones compared


def test_scores_are_the_models_probabilities_and_rank_the_list(served):
    *_, rec = served
    ranker: LearnedRanker = rec.ranker
    user = str(rec.bundle.history[n.USER_ID].value_counts().index[0])
    now = pd.Timestamp(ranker.spec["as_of"]).to_pydatetime()
    out = rec.recommend(user, 10, session=SessionContext(time=now))
    assert out.items and "fallback" not in " ".join(out.flags)
    query, _, _ = rec.query(user, session=SessionContext(time=now))
    rows = np.array([rec.catalog.row_of[i.item_id] for i in out.items], dtype=np.int64)
    logits = ranker.model(ranker.matrix(rows, query).astype(np.float32))
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    assert not rec.rules.chain.rules  # no re-weighting rule in the test bundle: served scores are the model's
    np.testing.assert_allclose([i.score for i in out.items], probs, rtol=1e-6)
    assert all(0.0 < p < 1.0 for p in probs)


def test_served_model_runs_in_numpy_with_the_saved_models_logits(served):
    """Serving scores with the NumPy forward pass (models/ranking.NumpyRankingTower), equal to the SavedModel's
    `score_stacked` on real request matrices."""
    import tensorflow as tf

    *_, rec = served
    ranker: LearnedRanker = rec.ranker
    assert ranker.model.engine == "numpy", ranker.model.engine_reason
    now = pd.Timestamp(ranker.spec["as_of"]).to_pydatetime()
    users = rec.bundle.history[n.USER_ID].astype(str).value_counts().index[:5]
    for user in users:
        query, _, _ = rec.query(user, session=SessionContext(time=now))
        x = ranker.matrix(np.arange(len(rec.catalog), dtype=np.int64), query).astype(np.float32)
        expected = ranker.model.module.score_stacked(tf.constant(x)).numpy()
        np.testing.assert_allclose(ranker.model(x), expected, rtol=1e-5, atol=1e-5, err_msg=user)


def test_repeat_scores_decay_with_request_time(served):
    *_, rec = served
    ranker: LearnedRanker = rec.ranker
    user = str(rec.bundle.history[n.USER_ID].value_counts().index[0])
    rows = rec.catalog.users[user].rows[:5]
    as_of = pd.Timestamp(ranker.spec["as_of"]).to_pydatetime()
    half = ranker.spec["half_life_days"]["repeat_recent"]
    now = ranker.state.scores(user, rows, as_of)
    later = ranker.state.scores(user, rows, as_of + dt.timedelta(days=half))
    assert (now[n.REPEAT_RECENT_SCORE] > 0).all()
    np.testing.assert_allclose(later[n.REPEAT_RECENT_SCORE], now[n.REPEAT_RECENT_SCORE] * 0.5, rtol=1e-6)
    np.testing.assert_array_equal(later[n.KNN_SCORE], now[n.KNN_SCORE])  # binary profile: no decay


def test_failed_online_read_keeps_retrieval_order_with_a_flag(served):
    *_, rec = served
    ranker: LearnedRanker = rec.ranker
    user = str(rec.bundle.history[n.USER_ID].value_counts().index[0])

    def down(_read):
        raise OnlineStoreUnavailable("ConnectionError: store stopped")

    saved = ranker.read
    ranker.read = down
    try:
        out = rec.recommend(user, 5)
    finally:
        ranker.read = saved
    assert FALLBACK_RANKING in out.flags
    assert any("ranking: online features unavailable" in w for w in out.warnings)
    assert out.items


def test_shopper_without_features_keeps_retrieval_scores(served):
    *_, rec = served
    out = rec.recommend(None, 5, session=SessionContext(cart=[str(rec.catalog.item_ids[0])]))
    cands, _ = rec.retriever.retrieve_within(rec.query(None, session=SessionContext(
        cart=[str(rec.catalog.item_ids[0])]))[0], rec.config.retrieval.k, None)
    assert out.items
    retrieval = dict(zip(cands.ids.tolist(), cands.scores.tolist()))
    assert not rec.rules.chain.rules  # only diversity may act, and it reorders without rescoring
    for item in out.items:
        assert item.score == pytest.approx(retrieval[item.item_id])


def test_request_time_defaults_to_the_bundle_as_of_when_configured(served):
    cfg, *_, rec = served
    as_of = rec.bundle.manifest["as_of"]
    live = rec.query("U002")[0].now
    assert abs((live - dt.datetime.now(dt.timezone.utc)).total_seconds()) < 60  # default: the wall clock
    replay = Recommender(rec.bundle, rec.features, config=rec.config.model_copy(update={
        "serving": rec.config.serving.model_copy(update={"request_time": "bundle"})}))
    assert replay.query("U002")[0].now == pd.Timestamp(as_of).to_pydatetime()
    given = dt.datetime(2011, 5, 1, 12, tzinfo=dt.timezone.utc)
    assert replay.query("U002", session=SessionContext(time=given))[0].now == given  # a request's own time wins


def test_item_window_values_expire_at_the_request_time_as_online(served):
    """The item matrix is read at the as-of instant; at a later request time a value older than its view's
    ttl is missing (the fill value), as Feast's online store read with staleness would give it."""
    *_, rec = served
    ranker: LearnedRanker = rec.ranker
    user = str(rec.bundle.history[n.USER_ID].value_counts().index[0])
    rows = np.arange(min(200, len(rec.catalog)), dtype=np.int64)
    as_of = pd.Timestamp(ranker.spec["as_of"]).to_pydatetime()
    windows = [f.name for f in definitions.item_activity_windows.features if f.name in ranker.features]
    stats = [f for f in ("item_purchase_count", "item_buyer_count") if f in ranker.features]
    assert windows and stats
    idx = {f: ranker.features.index(f) for f in windows + stats}
    at = {}
    for label, when in (("as_of", as_of), ("later", as_of + dt.timedelta(days=400))):
        query, _, _ = rec.query(user, session=SessionContext(time=when))
        at[label] = ranker.matrix(rows, query)
    fill = dict(zip(ranker.features, ranker.fill))
    assert any((at["as_of"][:, idx[f]] != fill[f]).any() for f in windows)  # there were values to expire
    for f in windows:  # every row is older than the 31-day ttl 400 days later
        np.testing.assert_array_equal(at["later"][:, idx[f]], fill[f], err_msg=f)
    for f in stats:  # no ttl: unchanged
        np.testing.assert_array_equal(at["later"][:, idx[f]], at["as_of"][:, idx[f]], err_msg=f)


def test_a_bug_in_the_rankers_read_is_not_taken_for_a_store_outage(served):
    """Only OnlineStoreUnavailable counts against the shared circuit breaker; another exception is a bug."""
    *_, rec = served
    breaker = rec.features.breaker
    before = breaker.state

    def buggy():
        raise TypeError("a bug, not the store")

    with pytest.raises(TypeError):
        rec.features.guarded(buggy)
    assert breaker.state == before == "closed"


def test_knn_scores_from_the_users_rows_or_the_candidates_columns_are_profile_times_similarity(served,
                                                                                             monkeypatch):
    """`ScoreState._knn` reads the user's rows of S, or the candidates' columns where those hold fewer entries;
    both ways give what `profile @ S` gives (scipy, float64), for heavy and light buyers and few or many
    candidates, and both ways are taken."""
    import scipy.sparse as sp

    *_, rec = served
    state = rec.ranker.state
    users = sorted(state.span, key=lambda u: state.span[u][0] - state.span[u][1])  # most items first
    users = users[:3] + users[len(users) // 2:][:3] + users[-3:]
    by_target = []
    spy = state._knn_by_target
    monkeypatch.setattr(state, "_knn_by_target", lambda *a: by_target.append(1) or spy(*a))
    rng = np.random.default_rng(0)
    taken = set()
    for user in users:
        s, e = state.span[user]
        cols, w = state.cols[s:e], state.w_long[s:e]
        for m in (3, min(state.n, 200)):
            targets = rng.choice(state.n, m, replace=False)
            want = [sp.csr_matrix((np.ones(len(cols)), (np.zeros(len(cols), int), cols)), shape=(1, state.n)),
                    sp.csr_matrix((w.astype(np.float64), (np.zeros(len(cols), int), cols)), shape=(1, state.n))]
            want = [np.asarray((p @ state.knn.astype(np.float64))[:, targets].todense()).ravel() for p in want]
            before = len(by_target)
            got = state._knn(cols, (None, w), targets)
            taken.add(len(by_target) > before)
            for g, t in zip([*got, *spy(cols, (None, w), targets)], want * 2):
                assert g.dtype == np.float32
                np.testing.assert_allclose(g, t, rtol=2e-6, atol=1e-7, err_msg=user)
    assert taken == {True, False}


def test_pair_matrix_decodes_what_the_provider_read_answers(served):
    """`PairReader.matrix` on the repo's SQLite store (rows fetched by serialized key, values decoded here, each
    distinct one once) answers what Feast's provider read answers, as numbers: for pairs with and without a row,
    a key asked twice, fields in another order or missing from the view, twice (the decoded values kept)."""
    import copy

    from serving.ranking import CATEGORY_VIEW, PAIR_VIEW

    *_, rec = served
    reader = rec.ranker.pairs
    assert reader._serialized is not None
    provider = copy.copy(reader)
    provider._serialized = None  # Feast's provider `online_read`, ValueProtos converted by `read`
    ranker = rec.ranker
    users = list(ranker.pair_rows)[:6]
    pair_keys = [(u, str(rec.catalog.item_ids[r])) for u in users for r in ranker.pair_rows[u][:8]]
    pair_keys += [(users[0], "no such item"), pair_keys[0]]
    fields = [*reversed(ranker.pair_fields), "not a field"]
    cat_keys = [(u, c) for u in users for c in ranker.category_names[ranker.category_pairs.get(u, [])][:3]]
    cat_keys += [(users[0], "none")]
    for view, join_keys, keys, fs in ((PAIR_VIEW, [n.USER_ID, n.ITEM_ID], pair_keys, fields),
                                      (CATEGORY_VIEW, [n.USER_ID, n.CATEGORY_KEY], cat_keys,
                                       ranker.category_fields)):
        reader._decoded.clear()
        want = provider.matrix(view, join_keys, keys, fs)
        assert np.isfinite(want).sum() > len(keys)  # rows were found
        assert np.isnan(want[-2 if view == PAIR_VIEW else -1]).all()  # no row
        for _ in range(2):
            got = reader.matrix(view, join_keys, keys, fs)
            np.testing.assert_array_equal(got, want)
        assert 0 < len(reader._decoded) < np.isfinite(want).sum()  # distinct values decoded once
    assert reader.matrix(PAIR_VIEW, [n.USER_ID, n.ITEM_ID], [], fields).shape == (0, len(fields))
