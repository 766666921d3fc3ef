"""Diversity: the per-category cap (hypothesis properties and a known answer), MMR, and the spread metric."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cartwise.config import DiversityConfig
from serving.candidates import Candidates
from serving.diversity import Diversifier, category_spread, max_per_category, mmr


@st.composite
def ranked_st(draw, max_size: int = 40) -> Candidates:
    m = draw(st.integers(0, max_size))
    scores = sorted(draw(st.lists(st.floats(-5, 5, allow_nan=False), min_size=m, max_size=m)), reverse=True)
    cats = draw(st.lists(st.sampled_from(["a", "b", "c", "d", None]), min_size=m, max_size=m))
    return Candidates.from_lists([f"i{j}" for j in range(m)], scores, "two_tower", cats)


def _capacity(cands: Candidates, n: int) -> int:
    """How many items a top K can hold without breaking the cap: min(count, n) per known category + unknowns."""
    cats = cands.categories.tolist()
    known = Counter(c for c in cats if c is not None)
    return sum(min(v, n) for v in known.values()) + sum(c is None for c in cats)


@settings(max_examples=300)
@given(cands=ranked_st(), n=st.integers(1, 4), k=st.integers(1, 20))
def test_max_per_category_properties(cands, n, k):
    out = max_per_category(cands, n, k)
    ids, pos = out.ids.tolist(), {i: j for j, i in enumerate(cands.ids)}
    assert sorted(ids) == sorted(cands.ids.tolist())  # a permutation
    top, tail = ids[:k], ids[k:]
    assert [pos[i] for i in top] == sorted(pos[i] for i in top)  # the top K keeps the score order
    assert [pos[i] for i in tail] == sorted(pos[i] for i in tail)  # so do the items behind it
    counts = Counter(c for c in out.categories[:k] if c is not None)
    if _capacity(cands, n) >= min(k, len(cands)):
        assert max(counts.values(), default=0) <= n  # enough other items: the cap holds
    if len(cands):
        assert ids[0] == cands.ids[0]  # the best item is never displaced


def test_max_per_category_known_answer():
    # mugs x4 then toys, garden, mugs; N=2, K=4: a b (mugs) | c d skipped | e (toys) f (garden): a b e f, then c d g
    c = Candidates.from_lists(list("abcdefg"), [7, 6, 5, 4, 3, 2, 1],
                              categories=["mugs", "mugs", "mugs", "mugs", "toys", "garden", "mugs"])
    assert max_per_category(c, 2, 4).ids.tolist() == list("abefcdg")
    assert max_per_category(c, 2, 2) is c  # N >= K: nothing to do
    # only mugs and one toy: the cap cannot hold at K=4, the earliest skipped mug fills in, in score order
    only = Candidates.from_lists(list("abcde"), [5, 4, 3, 2, 1], categories=["mugs"] * 3 + ["toys", "mugs"])
    assert max_per_category(only, 2, 4).ids.tolist() == list("abcde")
    with pytest.raises(ValueError):
        max_per_category(c, 0, 4)


@settings(max_examples=200)
@given(cands=ranked_st(), k=st.integers(1, 20), lam=st.floats(0.0, 1.0))
def test_mmr_is_a_permutation_led_by_the_best_item(cands, k, lam):
    out = mmr(cands, k, lam)
    assert sorted(out.ids.tolist()) == sorted(cands.ids.tolist())
    pos = {i: j for j, i in enumerate(cands.ids)}
    tail = [pos[i] for i in out.ids[k:]]
    assert tail == sorted(tail)
    if len(cands) and lam > 0:
        assert out.scores[0] == cands.scores.max()


def test_mmr_known_answer():
    # rel after min-max scaling: a 1, b 0.9, c 0.8, d 0 (scores 10, 9, 8, 0); categories x x y x.
    # lambda 0.5: pick a; then b: 0.45 - 0.5 = -0.05, c: 0.4 - 0 = 0.4, d: 0 - 0.5 -> c;
    # then b: -0.05, d: -0.5 -> b. Top 3: a c b, then d.
    c = Candidates.from_lists(list("abcd"), [10, 9, 8, 0], categories=["x", "x", "y", "x"])
    assert mmr(c, 3, 0.5).ids.tolist() == list("acbd")
    assert mmr(c, 3, 1.0) is c  # pure relevance on a ranked list changes nothing
    emb = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.0, 0.0]])  # b is a near-copy of a
    assert mmr(c.with_columns(embedding=emb), 2, 0.5, "embedding").ids.tolist() == list("acbd")
    with pytest.raises(KeyError, match="embedding"):
        mmr(c, 2, 0.5, "embedding")
    with pytest.raises(ValueError):
        mmr(c, 2, 1.5)


def test_category_spread():
    # top 4: x x y None -> 2 distinct known categories, largest x = 2 of 4
    c = Candidates.from_lists(list("abcde"), [5, 4, 3, 2, 1], categories=["x", "x", "y", None, "z"])
    assert category_spread(c, 4) == (2, 0.5)
    assert category_spread(["x", "x", "x"], 10) == (1, 1.0)
    assert category_spread(Candidates.empty(), 10) == (0, 0.0)


def test_diversifier_from_config():
    c = Candidates.from_lists(list("abc"), [3, 2, 1], categories=["x", "x", "y"])
    assert Diversifier(DiversityConfig())(c, 2) is c
    assert Diversifier(DiversityConfig(method="max_per_category", max_per_category=1))(c, 2).ids.tolist() == list("acb")
    assert Diversifier(DiversityConfig(method="mmr", mmr_lambda=0.5)).requires == ()
    assert Diversifier(DiversityConfig(method="mmr", similarity="embedding")).requires == ("embedding",)
