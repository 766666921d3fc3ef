"""Offline candidate generation: own items always in, one row per pair, quotas, scores for any pair."""
import numpy as np
import pandas as pd

from cartwise.config import CandidateQuotas
from feature_repo import names as n
from pipelines.candidates import CandidateGenerator, candidate_recall
from pipelines.new_items import insert_slots

T = pd.Timestamp("2011-03-01", tz="UTC")


def _purchases():
    # u1 bought a, b; u2 bought a, c; u3 bought b, c, d; a guest bought e (popular, no customer)
    rows = [("u1", "a", 10), ("u1", "b", 9), ("u2", "a", 8), ("u2", "c", 7), ("u3", "b", 6), ("u3", "c", 5),
            ("u3", "d", 4), (None, "e", 3), (None, "e", 2), (None, "e", 1),
            ("u1", "z", -1)]  # after the cut-off: must not count
    return pd.DataFrame({
        n.USER_ID: pd.array([r[0] for r in rows], dtype="string"),
        n.ITEM_ID: [r[1] for r in rows],
        n.EVENT_TIMESTAMP: [T - pd.Timedelta(days=r[2]) for r in rows],
        n.QUANTITY: 1, n.UNIT_PRICE: 1.0,
    })


def test_candidates_keep_own_items_first_and_are_unique_per_user():
    gen = CandidateGenerator(CandidateQuotas(item_knn=2, ease=2, popularity=2, two_tower=0)).fit(_purchases(), T)
    c = gen.generate(["u1", "u2", "nobody"])
    assert not c.duplicated([n.USER_ID, n.ITEM_ID]).any()
    u1 = c[c[n.USER_ID] == "u1"]
    assert set(u1[u1[n.CANDIDATE_SOURCE] == "own"][n.ITEM_ID]) == {"a", "b"}
    assert u1[n.CANDIDATE_SOURCE].iloc[:2].tolist() == ["own", "own"]
    assert "z" not in set(c[n.ITEM_ID])  # bought after the cut-off
    # popularity counts guest lines: e (3 lines) is the most popular item
    assert "e" in set(c[c[n.USER_ID] == "nobody"][n.ITEM_ID])
    # an unknown user has no own items and no co-purchase scores
    nobody = c[c[n.USER_ID] == "nobody"]
    assert (nobody[n.CANDIDATE_SOURCE] == "popularity").all()
    assert (nobody[list(n.SOURCE_SCORES)] == 0).all().all()
    # repeat scores are positive exactly on own items
    assert ((u1[n.REPEAT_SCORE] > 0) == (u1[n.CANDIDATE_SOURCE] == "own")).all()


def test_item_knn_candidates_are_co_purchases():
    gen = CandidateGenerator(CandidateQuotas(item_knn=1, ease=0, popularity=0, two_tower=0)).fit(_purchases(), T)
    c = gen.generate(["u1"])
    knn = c[c[n.CANDIDATE_SOURCE] == "item_knn"]
    # u1 has a, b; c is co-bought with a (u2) and with b (u3): the strongest neighbour not owned
    assert knn[n.ITEM_ID].tolist() == ["c"]
    assert float(knn[n.KNN_SCORE].iloc[0]) > 0


def test_extra_candidates_get_scores_and_unknown_items_score_zero():
    gen = CandidateGenerator(CandidateQuotas(item_knn=0, ease=0, popularity=0, two_tower=5)).fit(_purchases(), T)
    c = gen.generate(["u1"], extra={"two_tower": {"u1": ["c", "a", "brand-new"]}})
    assert c[n.CANDIDATE_SOURCE].tolist() == ["own", "own", "two_tower", "two_tower"]  # a stays "own"
    new = c[c[n.ITEM_ID] == "brand-new"]
    assert (new[list(n.SOURCE_SCORES)] == 0).all().all()
    scored = gen.score_pairs(["u1"], ["c"])
    np.testing.assert_allclose(scored[n.KNN_SCORE].iloc[0], c[c[n.ITEM_ID] == "c"][n.KNN_SCORE].iloc[0])


def test_candidate_recall_and_slots():
    c = pd.DataFrame({n.USER_ID: ["u", "u", "v"], n.ITEM_ID: ["a", "b", "c"]})
    # u finds 1 of {a, x}; v finds 1 of {c}: mean (0.5 + 1) / 2
    assert candidate_recall(c, {"u": {"a", "x"}, "v": {"c"}}) == 0.75
    out = insert_slots({"u": ["a", "b", "c"]}, {"u": ["b", "n1", "n2"]}, slots=1, first_position=2)
    assert out["u"] == ["a", "n1", "b", "c"]  # b is already listed: the first new one not in the list
    assert insert_slots({"u": ["a"]}, {"u": ["n1"]}, 2, 5)["u"] == ["a", "n1"]


def test_above_ease_max_items_ease_is_not_fitted_and_scores_zero():
    """EASE's dense items x items inverse is skipped past `ranking.ease_max_items`: no EASE candidates, its
    score 0 for every pair (generated or scored later), the other sources as without the limit."""
    quotas = CandidateQuotas(item_knn=2, ease=2, popularity=2, two_tower=0)
    full = CandidateGenerator(quotas).fit(_purchases(), T)
    capped = CandidateGenerator(quotas, ease_max_items=3).fit(_purchases(), T)  # 4 customer items before T
    assert full.ease_ is not None and capped.ease_ is None
    a, b = full.generate(["u1", "u2"]), capped.generate(["u1", "u2"])
    assert (a[n.CANDIDATE_SOURCE] == "ease").any() or (a[n.EASE_SCORE] != 0).any()  # the limit changes something
    assert not (b[n.CANDIDATE_SOURCE] == "ease").any() and (b[n.EASE_SCORE] == 0).all()
    others = [c for c in n.SOURCE_SCORES if c != n.EASE_SCORE]
    keep = a[a[n.CANDIDATE_SOURCE] != "ease"].reset_index(drop=True)
    pd.testing.assert_frame_equal(keep[[n.USER_ID, n.ITEM_ID, *others]],
                                  b[b[n.CANDIDATE_SOURCE] != "ease"].reset_index(drop=True)[[n.USER_ID, n.ITEM_ID, *others]])
    assert (capped.score_pairs(["u1", "u2"], ["c", "d"])[n.EASE_SCORE] == 0).all()
    assert (capped.score_pairs(["u1", "u2"], ["c", "d"])[n.KNN_SCORE] ==
            full.score_pairs(["u1", "u2"], ["c", "d"])[n.KNN_SCORE]).all()


def test_from_config_takes_the_ease_limit():
    from cartwise.config import parse_config

    cfg = parse_config({"data": {"adapter": "canonical", "paths": ["x.parquet"]}, "ranking": {"ease_max_items": 7}},
                       source="test")
    gen = CandidateGenerator.from_config(cfg)
    assert gen.ease_max_items == 7 and gen.quotas == cfg.ranking.candidates


def test_evaluation_leaves_the_ease_baseline_out_above_the_limit():
    from pipelines.evaluate import baseline_lists

    p = _purchases()
    both = baseline_lists(p, ["u1", "u2"], T, ["e", "a", "b", "c", "d"], 5)
    capped = baseline_lists(p, ["u1", "u2"], T, ["e", "a", "b", "c", "d"], 5, ease_max_items=3)
    assert "ease" in both and "ease" not in capped
    assert {k: v for k, v in both.items() if k != "ease"} == capped
