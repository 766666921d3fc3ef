"""Retrieval sources: known answers on a hand-made catalog, the merge (quotas, dedupe with attribution,
fallbacks), wiring errors, and the contract every source meets on the synthetic shop's real bundle.

`SourceContract` is the family's contract mixin (STYLE.md sections 6 and 8): a
test class for a source inherits it and says how to build the source; the
mixin draws requests (known, unknown and anonymous users, carts, viewed
items, categories, exclusions, unknown ids) and checks that the answer is a
subset of the catalog, at most n long, free of excluded ids, sorted by score
and attributed to the source, and that asking twice gives the same answer.
"""
from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cartwise.bundle import current_bundle
from cartwise.config import (
    BoughtTogetherSourceConfig, ContentSourceConfig, PopularInCategorySourceConfig, PopularitySourceConfig,
    RepeatSourceConfig, TwoTowerSourceConfig, parse_config,
)
from serving import sources
from serving.candidates import Candidates
from serving.pipeline import Recommender
from serving.request import SessionContext
from serving.sources import (
    FOUND_BY, RETRIEVAL_SCORE, ROW, BoughtTogetherSource, Catalog, ContentSource, PopularInCategorySource,
    PopularitySource, Query, RepeatSource, Retriever, RowSet, ScannSource, Source, SourceWiringError, scale,
)

UTC = dt.timezone.utc
AS_OF = pd.Timestamp("2011-01-31", tz="UTC")

# --- a catalog small enough to work out by hand --------------------------------------------------------------
#
# rows:        0     1     2     3     4     5      6      7
ITEMS = ["a", "b", "c", "d", "e", "f", "g", "h"]
CATS = ["mugs", "mugs", "mugs", "toys", "toys", "lamps", "lamps", None]
# popularity 1 / (1 + rank among catalog items): d 1, a 1/2, f 1/3, b 1/4, c 1/5, g 1/6 ("x" is not in the catalog)
POPULAR = ["d", "a", "f", "b", "x", "c", "g"]
# u1 bought a twice, 1 day before the as-of, and e 4 times, 30 days before
HISTORY = pd.DataFrame({"user_id": ["u1", "u1"], "item_id": ["a", "e"], "purchases": [2, 4],
                        "last_purchase": [AS_OF - pd.Timedelta(days=1), AS_OF - pd.Timedelta(days=30)]})
PAIRS = pd.DataFrame({"item_id": ["a", "a", "b", "b", "e", "zz"], "neighbour_id": ["b", "c", "a", "d", "f", "a"],
                      "score": [0.8, 0.4, 0.8, 0.5, 0.6, 0.9]})
CONTENT = np.array([[1, 0], [0.8, 0.6], [0, 1], [1, 0], [0.6, 0.8], [0, 1], [0, 0], [0.6, -0.8]], dtype=np.float32)


@pytest.fixture(scope="module")
def tiny() -> Catalog:
    return Catalog(ITEMS, CATS, POPULAR, HISTORY, AS_OF, bought_together=PAIRS, content=CONTENT)


def q(catalog: Catalog, user=None, cart=(), viewed=(), category=None, exclude=()) -> Query:
    excluded = np.zeros(len(catalog), dtype=bool)
    excluded[catalog.rows(list(exclude))[0]] = True
    return Query(user, None, None, catalog.rows(list(cart))[0], catalog.rows(list(viewed))[0],
                 catalog.category_code_of.get(category, -1), excluded, int(excluded.sum()), dt.datetime.now(UTC))


def listed(c: Candidates) -> list[tuple[str, float]]:
    return [(i, round(s, 4)) for i, s, *_ in c]


def test_scale_is_min_max_with_constant_lists_at_one():
    assert scale(np.array([3.0, 2.0, 1.0])).tolist() == [1.0, 0.5, 0.0]
    assert scale(np.array([-0.2, -0.6])).tolist() == [1.0, 0.0]  # negative dot products too
    assert scale(np.array([7.0, 7.0])).tolist() == [1.0, 1.0] and scale(np.array([0.3])).tolist() == [1.0]
    assert scale(np.zeros(0)).tolist() == []


def test_catalog_arrays(tiny):
    assert tiny.popular_rows.tolist() == [3, 0, 5, 1, 2, 6]
    assert tiny.popularity.round(4).tolist() == [0.5, 0.25, 0.2, 1.0, 0.0, 0.3333, 0.1667, 0.0]
    assert tiny.category_codes.tolist() == [1, 1, 1, 2, 2, 0, 0, -1]  # lamps, mugs, toys; h unknown
    h = tiny.users["u1"]
    assert h.rows.tolist() == [0, 4] and h.age_days.tolist() == [1.0, 30.0]  # newest first
    indptr, nbr, score = tiny.neighbours  # "zz" is not in the catalog: its pair is dropped
    assert indptr.tolist() == [0, 2, 4, 4, 4, 5, 5, 5, 5] and nbr.tolist() == [1, 2, 0, 3, 5]
    rows, unknown = tiny.rows(["b", "nope", "b", "a"])
    assert rows.tolist() == [1, 0] and unknown == ["nope"]


def test_bought_together_sums_weighted_neighbours_of_the_seeds(tiny):
    src = BoughtTogetherSource(BoughtTogetherSourceConfig(type="bought_together")).bind(tiny)
    # cart a (weight 1): b 0.8, c 0.4
    assert listed(src.retrieve(q(tiny, cart=["a"]), 10)) == [("b", 0.8), ("c", 0.4)]
    # + viewed b (weight 0.5): a 0.4 and d 0.25, but a and b are seeds, never returned
    assert listed(src.retrieve(q(tiny, cart=["a"], viewed=["b"]), 10)) == [("c", 0.4), ("d", 0.25)]
    # u1's latest purchases a, e (weight 0.5 each): b 0.4, f 0.3, c 0.2
    assert listed(src.retrieve(q(tiny, user="u1"), 10)) == [("b", 0.4), ("f", 0.3), ("c", 0.2)]
    assert listed(src.retrieve(q(tiny, user="u1"), 2)) == [("b", 0.4), ("f", 0.3)]
    assert listed(src.retrieve(q(tiny, user="u1", exclude=["f"]), 10)) == [("b", 0.4), ("c", 0.2)]
    assert len(src.retrieve(q(tiny), 10)) == 0


def test_content_blends_text_cosine_and_category(tiny):
    src = ContentSource(ContentSourceConfig(type="content", text_weight=0.5)).bind(tiny)
    # viewed a = (1, 0), mugs: 0.5 * cos + 0.5 * [mugs] -> b 0.9, c 0.5, d 0.5 (tie: catalog order), e 0.3, h 0.3;
    # f (cos 0, lamps) and g (no text) score 0: not similar, not returned; a is the seed
    assert listed(src.retrieve(q(tiny, viewed=["a"]), 10)) == [("b", 0.9), ("c", 0.5), ("d", 0.5), ("e", 0.3),
                                                                 ("h", 0.3)]
    # the latest view weighs 1, the one before 1/2: viewed c then a -> weights 1/3 (c) and 2/3 (a)
    got = dict(listed(src.retrieve(q(tiny, viewed=["c", "a"]), 10)))
    assert got["b"] == pytest.approx(0.5 * (0.8 * 2 / 3 + 0.6 / 3) + 0.5, abs=1e-4) and "a" not in got
    # no viewed items: the cart is the query
    assert listed(src.retrieve(q(tiny, cart=["a"]), 1)) == [("b", 0.9)]
    # a category alone: its items first (d and e, whose mean embedding is (0.894, 0.447))
    top = src.retrieve(q(tiny, category="toys"), 10)
    assert set(top.ids[:2].tolist()) == {"d", "e"} and top.scores[0] == pytest.approx(0.5 + 0.5 * 0.8944, abs=1e-3)
    assert len(src.retrieve(q(tiny), 10)) == 0
    # without text: category only
    plain = ContentSource(ContentSourceConfig(type="content", text_weight=0.0)).bind(tiny)
    assert listed(plain.retrieve(q(tiny, viewed=["a"]), 10)) == [("b", 1.0), ("c", 1.0)]


def test_row_set_answers_like_a_mask():
    mask = np.zeros(10, dtype=bool)
    mask[[7, 2]] = True
    rs = RowSet([7, 2, 7], 10)
    assert rs.rows.tolist() == [2, 7] and rs.count == rs.sum() == 2 and rs.any()
    assert rs[np.arange(10)].tolist() == mask.tolist() and rs[2] is True and rs[np.int64(3)] is False
    assert 7 in rs and 3 not in rs and np.asarray(rs).tolist() == mask.tolist()
    assert RowSet.from_mask(mask).rows.tolist() == [2, 7] and not RowSet((), 10).any()
    assert RowSet((), 10)[np.array([1, 2])].tolist() == [False, False]
    with pytest.raises(TypeError):
        rs[np.array([0.5])]
    # a Query given an (N,) mask keeps a RowSet; excluding() adds rows without a catalog-size copy
    query = Query(None, None, None, np.zeros(0, np.int64), np.zeros(0, np.int64), -1, mask, 2, AS_OF)
    assert isinstance(query.excluded, RowSet) and query.excluded.rows.tolist() == [2, 7]
    more = query.excluding(np.array([5, 2]))
    assert more.excluded.rows.tolist() == [2, 5, 7] and more.n_excluded == 3 and query.n_excluded == 2
    assert query.excluding(np.zeros(0, np.int64)) is query


# --- content: the index against a full scan by the definition ----------------------------------------------


def _content_reference(catalog: Catalog, tw: float, seed_items: int, query: Query, n: int, centroids):
    """The content source by its docstring, scoring every row: (rows, scores), best first, ties by row."""
    codes = catalog.category_codes
    seeds = query.viewed[-seed_items:] if len(query.viewed) else query.cart[-seed_items:]
    share = np.zeros(len(catalog.category_names))
    if len(seeds):
        w = 0.5 ** np.arange(len(seeds))[::-1]
        w = w / w.sum()
        for s, ws in zip(seeds, w):
            if codes[s] >= 0:
                share[codes[s]] += ws
        text = (w @ catalog.content[seeds]).astype(np.float32) if catalog.content is not None else None
    elif query.category >= 0:
        share[query.category] = 1.0
        text = centroids[query.category].astype(np.float32) if centroids is not None else None
    else:
        return np.zeros(0, np.int64), np.zeros(0)
    score = (1.0 - tw) * np.where(codes >= 0, share[np.maximum(codes, 0)], 0.0)
    if tw > 0:
        score = score + tw * (catalog.content @ text)
    rows = np.arange(len(catalog))
    ok = (score > 1e-9) & ~np.isin(rows, seeds) & ~np.asarray(query.excluded)
    rows = rows[ok]
    order = np.lexsort((rows, -score[rows]))[:n]
    return rows[order], score[rows[order]]


def _content_catalog(kind: str, n_items: int = 3000, seed: int = 0) -> Catalog:
    rng = np.random.default_rng(seed)
    n_cat = 12
    cat = rng.integers(0, n_cat, n_items)
    cats = [f"c{c}" if rng.random() > 0.05 else None for c in cat]  # 5% unknown category
    if kind == "clustered":  # category centres plus noise of varying size, some items without text
        centres = rng.standard_normal((n_cat, 16)).astype(np.float32) * 3
        content = centres[cat] + rng.standard_normal((n_items, 16)).astype(np.float32) * rng.uniform(0.2, 3.0)
        content[rng.random(n_items) < 0.03] = 0.0
    else:  # "ties": a handful of axis directions (dot products exact, so scores tie exactly), some zero rows
        content = np.zeros((n_items, 16), dtype=np.float32)
        axis = rng.integers(0, 5, n_items)
        content[np.arange(n_items), axis] = rng.choice([-1.0, 1.0], n_items, p=[0.2, 0.8])
        content[rng.random(n_items) < 0.1] = 0.0
    ids = [f"X{i:05d}" for i in range(n_items)]
    return Catalog(ids, cats, ids[:50], None, None, content=content)


def _content_queries(catalog: Catalog, count: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    n_items = len(catalog)
    for i in range(count):
        viewed = rng.integers(0, n_items, int(rng.integers(0, 5)))
        cart = rng.integers(0, n_items, int(rng.integers(0, 3)))
        category = int(rng.integers(-1, len(catalog.category_names)))
        excluded = np.zeros(n_items, dtype=bool)
        excluded[rng.integers(0, n_items, int(rng.integers(0, 30)))] = True
        yield (Query(None, None, None, cart, viewed, category, excluded, int(excluded.sum()), AS_OF),
               int(rng.choice([1, 5, 37, 200, n_items])))


@pytest.mark.parametrize("kind", ["clustered", "ties"])
@pytest.mark.parametrize("text_weight", [0.5, 1.0, 0.0])
@pytest.mark.parametrize("leaf_size,step,full_scan_share", [(None, None, None), (7, 16, None), (5, 8, 0.0)])
def test_content_index_returns_what_a_full_scan_returns(monkeypatch, kind, text_weight, leaf_size, step,
                                                        full_scan_share):
    """Same items, same order (ties by row), same scores as scoring every row; exclusions, seeds, small leaves,
    many steps and the full-scan fallback (share 0) included."""
    if leaf_size:
        monkeypatch.setattr(sources, "CONTENT_LEAF_SIZE", leaf_size)
    if step:
        monkeypatch.setattr(sources, "CONTENT_STEP", step)
    if full_scan_share is not None:
        monkeypatch.setattr(sources, "FULL_SCAN_SHARE", full_scan_share)
    catalog = _content_catalog(kind)
    src = ContentSource(ContentSourceConfig(type="content", text_weight=text_weight)).bind(catalog)
    assert (src.index_ is not None) == (text_weight > 0)
    for query, n in _content_queries(catalog, 60):
        want_rows, want_scores = _content_reference(catalog, text_weight, 3, query, n, src.centroids_)
        # the top of the reference excluded too: the next ones must come up
        for excl in (query, query.excluding(want_rows[:3])):
            if excl is not query:
                want_rows, want_scores = _content_reference(catalog, text_weight, 3, excl, n, src.centroids_)
            got = src.retrieve(excl, n)
            assert got.column(ROW).tolist() == want_rows.tolist()
            np.testing.assert_allclose(got.scores, want_scores, rtol=0, atol=1e-6)
            full = src.scores(excl)
            if full is not None:  # the source's own full scan agrees
                np.testing.assert_allclose(full[got.column(ROW)], got.scores, rtol=0, atol=1e-6)


def test_content_sources_of_one_catalog_share_its_content_index():
    """Two content sources (other weights, quotas) over one catalog search one index, one leaf-order copy of
    the embeddings, read-only; each answers what it answers alone over a catalog of its own."""
    catalog = _content_catalog("clustered")
    configs = [ContentSourceConfig(type="content", text_weight=0.5),
               ContentSourceConfig(type="content", text_weight=1.0, seed_items=1)]
    shared = [ContentSource(cfg).bind(catalog) for cfg in configs]
    assert shared[0].index_ is shared[1].index_ is catalog.content_index()
    assert not shared[0].index_.content.flags.writeable
    alone = [ContentSource(cfg).bind(_content_catalog("clustered")) for cfg in configs]
    assert alone[0].index_ is not shared[0].index_
    for query, n in _content_queries(catalog, 20):
        for a, b in zip(shared, alone):
            got, want = a.retrieve_rows(query, n), b.retrieve_rows(query, n)
            assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()
    with pytest.raises(ValueError, match="no content embeddings"):
        Catalog(["a"], ["x"], [], None, AS_OF).content_index()


def test_content_index_reads_a_small_part_of_a_clustered_catalog(monkeypatch):
    catalog = _content_catalog("clustered", n_items=20_000)
    src = ContentSource(ContentSourceConfig(type="content")).bind(catalog)
    read = []
    gather = sources._gather

    def counting(indptr, seeds):
        pos, owner = gather(indptr, seeds)
        read.append(len(pos))
        return pos, owner

    monkeypatch.setattr(sources, "_gather", counting)
    query, _ = next(_content_queries(catalog, 1, seed=5))
    query = dataclasses.replace(query, viewed=np.array([10, 11, 12]))
    got = src.retrieve(query, 50)
    assert len(got) == 50 and 0 < sum(read) < len(catalog) // 4


def test_repeat_weighs_purchases_by_recency(tiny):
    src = RepeatSource(RepeatSourceConfig(type="repeat", half_life_days=30)).bind(tiny)
    # e: 4 x 0.5 ** (30 / 30) = 2.0 beats a: 2 x 0.5 ** (1 / 30) = 1.954 (older, but bought more)
    assert listed(src.retrieve(q(tiny, user="u1"), 10)) == [("e", 2.0), ("a", 1.9543)]
    short = RepeatSource(RepeatSourceConfig(type="repeat", half_life_days=1)).bind(tiny)
    assert short.retrieve(q(tiny, user="u1"), 10).ids.tolist() == ["a", "e"]  # 2 x 0.5 > 4 x 0.5 ** 30
    assert len(src.retrieve(q(tiny, user="nobody"), 10)) == 0 and len(src.retrieve(q(tiny), 10)) == 0


def test_popular_in_category_uses_session_and_user_categories(tiny):
    src = PopularInCategorySource(PopularInCategorySourceConfig(type="popular_in_category")).bind(tiny)
    assert listed(src.retrieve(q(tiny, category="mugs"), 10)) == [("a", 0.5), ("b", 0.25), ("c", 0.2)]
    # the cart's category (lamps) and the viewed item's (toys: e is not a best seller)
    assert src.retrieve(q(tiny, cart=["g"], viewed=["e"]), 10).ids.tolist() == ["d", "f", "g"]
    # u1 bought mugs and toys
    assert src.retrieve(q(tiny, user="u1", exclude=["a"]), 10).ids.tolist() == ["d", "b", "c"]
    assert len(src.retrieve(q(tiny, category="unknown-cat"), 10)) == 0


def test_popularity_skips_excluded(tiny):
    src = PopularitySource(PopularitySourceConfig(type="popularity")).bind(tiny)
    assert src.retrieve(q(tiny, exclude=["d", "f"]), 3).ids.tolist() == ["a", "b", "c"]


def test_popularity_sources_return_what_a_full_scan_returns():
    """Both read only the head of their best-first lists (n + the number excluded); the answer is the full
    scan's: every best seller of the categories (or of the shop) the query allows, best first, the first n."""
    rng = np.random.default_rng(3)
    n_items, n_cats = 3000, 12
    ids = [f"P{i:05d}" for i in range(n_items)]
    cats = [f"c{k}" for k in rng.integers(0, n_cats, n_items)]
    popular = [ids[i] for i in rng.permutation(n_items)[:2000]]
    catalog = Catalog(ids, cats, popular, None, None)
    pop = PopularitySource(PopularitySourceConfig(type="popularity")).bind(catalog)
    in_cat = PopularInCategorySource(PopularInCategorySourceConfig(type="popular_in_category")).bind(catalog)
    best_first = catalog.popular_rows
    heavy = 0
    for i in range(200):
        excluded = np.zeros(n_items, dtype=bool)
        # often the best sellers themselves, so the answer has to reach past the head
        excluded[best_first[:int(rng.integers(0, 60))]] = True
        excluded[rng.integers(0, n_items, int(rng.integers(0, 300)))] = True
        viewed = rng.integers(0, n_items, int(rng.integers(0, 4)))
        category = int(rng.integers(-1, n_cats))
        query = Query(None, None, None, np.zeros(0, dtype=np.int64), viewed, category, excluded,
                      int(excluded.sum()), AS_OF)
        n = int(rng.choice([1, 7, 50, 400, n_items]))
        allowed = best_first[~excluded[best_first]]
        assert pop.retrieve(query, n).column(ROW).tolist() == allowed[:n].tolist()
        wanted = {int(c) for c in catalog.category_codes[viewed]} | {category}
        in_wanted = allowed[np.isin(catalog.category_codes[allowed], list(wanted - {-1}))]
        got = in_cat.retrieve(query, n)
        assert got.column(ROW).tolist() == in_wanted[:n].tolist(), i
        np.testing.assert_array_equal(got.scores, catalog.popularity[in_wanted[:n]])
        heavy += query.n_excluded > n
        for none in (0, -3):  # nothing asked, nothing answered
            assert len(pop.retrieve(query, none)) == len(in_cat.retrieve(query, none)) == 0
    assert heavy > 20  # many queries exclude more rows than they ask for
    # an item listed twice among the best sellers keeps its best rank, once
    twice = Catalog(ids[:3], ["c0"] * 3, [ids[2], ids[0], ids[2], ids[1]], None, None)
    assert twice.popular_rows.tolist() == [2, 0, 1] and twice.popularity.tolist() == [0.5, 1 / 3, 1.0]
    one = Query(None, None, None, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), 0,
                np.zeros(3, dtype=bool), 0, AS_OF)
    for src in (PopularitySource(PopularitySourceConfig(type="popularity")),
                PopularInCategorySource(PopularInCategorySourceConfig(type="popular_in_category"))):
        assert src.bind(twice).retrieve(one, 2).ids.tolist() == [ids[2], ids[0]]


def _retriever(catalog, sources, k=5):
    return Retriever.from_config(parse_config({"retrieval": {"k": k, "sources": sources}}).retrieval, catalog)


MIXED = [{"type": "repeat", "quota": 2}, {"type": "bought_together", "quota": 3},
         {"type": "popular_in_category", "quota": 3, "fallback": False}, "popularity"]


def test_merge_dedupes_with_attribution_and_respects_quotas(tiny):
    r = _retriever(tiny, MIXED)
    query = q(tiny, user="u1", cart=["a"], exclude=["a"])
    # repeat: e 2.0 (a excluded) -> scaled 1. bought_together (seeds a, a, e): b 1.2, c 0.6, f 0.3 -> 1, 1/3, 0.
    # popular_in_category (mugs from the cart and u1; toys from u1): d 1, b 1/4, c 1/5 -> 1, 1/16, 0.
    # b and c are found twice and keep bought_together's higher scaled score; ties at 1 go to the source
    # declared first: e (repeat), b (bought_together), d (popular_in_category).
    got = r.retrieve(query, 5)
    assert got.ids.tolist() == ["e", "b", "d", "c", "f"]
    assert got.sources.tolist() == ["repeat", "bought_together", "popular_in_category", "bought_together",
                                    "bought_together"]
    assert got.scores.round(4).tolist() == [1.0, 1.0, 1.0, 0.3333, 0.0]
    assert [r.found_by(m) for m in got.column(FOUND_BY).tolist()] == [
        ["repeat"], ["bought_together", "popular_in_category"], ["popular_in_category"],
        ["bought_together", "popular_in_category"], ["bought_together"]]
    assert got.column(RETRIEVAL_SCORE).round(4).tolist() == [2.0, 1.2, 1.0, 0.6, 0.3]  # raw, of the attributed source
    assert got.column(ROW).tolist() == [4, 1, 3, 2, 5]
    # quotas: bought_together capped at 2 loses f, so the budget has a free place, which the popularity
    # fallback fills with its best unfound item: f again, now attributed to popularity
    capped = _retriever(tiny, [MIXED[0], {**MIXED[1], "quota": 2}, *MIXED[2:]]).retrieve(query, 5)
    assert capped.ids.tolist() == ["e", "b", "d", "c", "f"] and (capped.sources == "bought_together").sum() == 2
    assert capped.sources[-1] == "popularity" and capped.scores[-1] < 0


def test_fallbacks_only_fill_the_budget_below_everything_else(tiny):
    r = _retriever(tiny, MIXED)
    query = q(tiny, user="u1", cart=["a"], exclude=["a"])
    # budget 7: the five above, then popularity adds what nobody found: g (1/6, alone: scaled 1 -> 1 - 1 - 1 = -1)
    got = r.retrieve(query, 7)
    assert got.ids.tolist() == ["e", "b", "d", "c", "f", "g"] and got.sources[-1] == "popularity"
    assert got.scores[-1] == -1.0 and got.scores[:-1].min() >= 0.0
    assert len(r.retrieve(query, 5)) == 5  # full: the fallback is not asked
    # an anonymous shopper with nothing in play: popularity only, scores in [-2, -1], best first
    anon = r.retrieve(q(tiny), 3)
    assert anon.ids.tolist() == ["d", "a", "f"] and anon.scores[0] == -1.0 and anon.scores.min() >= -2.0


def test_weights_scale_a_source(tiny):
    r = _retriever(tiny, [{"type": "repeat", "weight": 0.5}, {"type": "bought_together"}])
    got = r.retrieve(q(tiny, user="u1"), 10)
    # repeat e 1.0 x 0.5, a 0 (2 items: scaled 1 and 0); bought_together b 1, f 0.5, c 0
    assert listed(got)[:3] == [("b", 1.0), ("e", 0.5), ("f", 0.5)]


def test_sources_needing_a_missing_bundle_part_fail_when_wired():
    bare = Catalog(ITEMS, CATS, POPULAR, HISTORY, AS_OF)  # no index, no co-purchase table, no content
    with pytest.raises(SourceWiringError, match=r"retrieval\.sources\.1 \(bought_together\).*bought_together\.parquet"):
        _retriever(bare, ["popularity", "bought_together"])
    with pytest.raises(SourceWiringError, match="two_tower.*ScaNN index"):
        _retriever(bare, ["two_tower"])
    _retriever(bare, ["content", "repeat", "popular_in_category", "popularity"])  # these need nothing extra


class FixedSource(Source):
    """A custom source (by dotted path): the ids in its params, scored by list order; no `row` column."""

    def retrieve(self, query, n):
        ids = list(self.config["ids"])[:n]
        return Candidates.from_lists(ids, -np.arange(len(ids), dtype=float), self.name)


class RowsSource(Source):
    """A custom source with its own `row` column: a row twice and a row outside the catalog."""

    def retrieve(self, query, n):
        return Candidates.from_lists(["c", "x", "c", "a"], [3.0, 2.5, 2.0, 1.0], self.name,
                                     columns={ROW: np.array([2, -1, 2, 0])})


class NoAPopularity(PopularitySource):
    """A built-in source subclassed to change what `retrieve` answers (drops item "a")."""

    def retrieve(self, query, n):
        got = super().retrieve(query, n + 1)
        return got.take(got.ids != "a").head(n)


def test_a_subclass_overriding_retrieve_is_served_what_it_answers(tiny):
    plain = _retriever(tiny, ["popularity"]).retrieve(q(tiny), 4)
    assert "a" in plain.ids.tolist()
    got = _retriever(tiny, [{"type": "tests.serving.test_sources.NoAPopularity", "name": "pop",
                             "params": {"type": "popularity"}}]).retrieve(q(tiny), 4)
    assert "a" not in got.ids.tolist() and len(got) == 4
    src = NoAPopularity(None, "pop").bind(tiny)
    rows, scores = src.retrieve_rows(q(tiny), 4)
    mine = src.retrieve(q(tiny), 4)
    assert rows.tolist() == mine.column(ROW).tolist() and scores.tolist() == mine.scores.tolist()


def test_custom_sources_by_dotted_path_and_wiring_errors(tiny):
    r = _retriever(tiny, [{"type": "tests.serving.test_sources.FixedSource", "name": "fixed",
                           "params": {"ids": ["c", "nope", "a"]}}])
    got = r.retrieve(q(tiny), 5)  # unknown ids are dropped, rows looked up
    assert got.ids.tolist() == ["c", "a"] and got.column(ROW).tolist() == [2, 0] and set(got.sources) == {"fixed"}
    assert got.column(RETRIEVAL_SCORE).tolist() == [-0.0, -2.0]  # each kept id keeps its own score
    # an item listed twice keeps its first place; a `row` outside the catalog is dropped
    r = _retriever(tiny, [{"type": "tests.serving.test_sources.FixedSource", "name": "fixed",
                           "params": {"ids": ["c", "a", "c", "nope", "a", "b"]}}])
    got = r.retrieve(q(tiny), 6)
    assert got.ids.tolist() == ["c", "a", "b"] and got.column(RETRIEVAL_SCORE).tolist() == [-0.0, -1.0, -5.0]
    rows, scores = r.slots[0].source.retrieve_rows(q(tiny), 6)  # distinct rows, as every source answers
    assert rows.tolist() == [2, 0, 1] and scores.tolist() == [-0.0, -1.0, -5.0]
    r = _retriever(tiny, [{"type": "tests.serving.test_sources.RowsSource", "name": "rows"}])
    got = r.retrieve(q(tiny), 6)
    assert got.column(ROW).tolist() == [2, 0] and got.column(RETRIEVAL_SCORE).tolist() == [3.0, 1.0]
    with pytest.raises(SourceWiringError, match="cannot import 'no.such.Source'"):
        _retriever(tiny, [{"type": "no.such.Source"}])
    with pytest.raises(SourceWiringError, match="is not a serving.sources.Source subclass"):
        _retriever(tiny, [{"type": "serving.sources.Catalog"}])


# --- the contract, on the synthetic shop's real bundle -------------------------------------------------------

USERS = [f"U{u:03d}" for u in range(12)] + ["never-seen", None]
SHOP_ITEMS = [f"I{i:03d}" for i in range(48)]
ids_st = st.lists(st.sampled_from(SHOP_ITEMS + ["not-an-item"]), max_size=6)


@st.composite
def requests_st(draw) -> dict:
    session = draw(st.none() | st.builds(
        SessionContext, cart=ids_st, viewed=ids_st,
        category=st.none() | st.sampled_from(["cat0", "cat1", "cat2", "cat3", "unknown-cat"])))
    return {"user_id": draw(st.sampled_from(USERS)), "exclude": draw(ids_st),
            "exclude_purchased": draw(st.booleans()), "session": session}


@pytest.fixture(scope="module")
def shop(trained_shop) -> Recommender:
    cfg, *_ = trained_shop
    return Recommender.from_bundle_dir(current_bundle(cfg.work_dir / "bundles"))


@pytest.mark.integration
class SourceContract:
    """Mixin: every source's answer is valid for any request. Subclasses define `make` and `productive`."""

    def make(self) -> Source:
        raise NotImplementedError

    #: a request this source answers with something
    productive: dict = {}

    # one test body shared by every source class is what a contract mixin is (hypothesis flags it)
    @settings(max_examples=60, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])
    @given(req=requests_st(), n=st.integers(0, 60))
    def test_answer_is_a_valid_candidate_list(self, shop, req, n):
        src = self.make().bind(shop.catalog)
        query, _, _ = shop.query(**req)
        got = src.retrieve(query, n)
        cat = shop.catalog
        assert isinstance(got, Candidates) and len(got) <= n
        ids = got.ids.tolist()
        assert len(set(ids)) == len(ids) and set(ids) <= set(cat.item_ids.tolist())
        rows = got.column(ROW)
        assert cat.item_ids[rows].tolist() == ids and cat.categories[rows].tolist() == got.categories.tolist()
        assert not query.excluded[rows].any() and isinstance(query.excluded, RowSet)
        assert set(ids).isdisjoint(req["exclude"])
        if req["session"] is not None:
            assert set(ids).isdisjoint(req["session"].cart)  # the pipeline excludes the cart
        assert np.isfinite(got.scores).all() and (np.diff(got.scores) <= 0).all()
        assert set(got.sources.tolist()) <= {src.name}
        again = src.retrieve(query, n)
        assert again.ids.tolist() == ids and again.scores.tolist() == got.scores.tolist()
        # what the retriever reads: the same rows and scores, without candidates
        rows_only, scores_only = src.retrieve_rows(query, n)
        assert rows_only.dtype == np.int64 and scores_only.dtype == np.float64
        assert rows_only.tolist() == rows.tolist() and scores_only.tolist() == got.scores.tolist()

    def test_answers_the_request_it_is_for(self, shop):
        src = self.make().bind(shop.catalog)
        query, _, _ = shop.query(**{"user_id": None, **self.productive})
        assert len(src.retrieve(query, 10)) == 10


class TestScannSource(SourceContract):
    productive = {"user_id": "U002"}

    def make(self):
        return ScannSource(TwoTowerSourceConfig(type="two_tower"))

    def test_catalog_takes_the_index_parameters_from_the_manifest(self, shop):
        assert shop.catalog.index == shop.bundle.manifest["index"] and shop.catalog.index["type"]

    def test_matches_the_bundle_search(self, shop):
        query, _, _ = shop.query("U002")
        idx, _ = shop.bundle.searcher.search(query.embedding, final_num_neighbors=5)
        assert self.make().bind(shop.catalog).retrieve(query, 5).column(ROW).tolist() == list(idx)


class TestBoughtTogetherSource(SourceContract):
    productive = {"session": SessionContext(cart=["I000", "I001"])}

    def make(self):
        return BoughtTogetherSource(BoughtTogetherSourceConfig(type="bought_together"))


class TestContentSource(SourceContract):
    productive = {"session": SessionContext(viewed=["I003"])}

    def make(self):
        return ContentSource(ContentSourceConfig(type="content"))


class TestRepeatSource(SourceContract):
    productive = {"user_id": "U002"}

    def make(self):
        return RepeatSource(RepeatSourceConfig(type="repeat"))


class TestPopularInCategorySource(SourceContract):
    productive = {"session": SessionContext(category="cat2")}

    def make(self):
        return PopularInCategorySource(PopularInCategorySourceConfig(type="popular_in_category"))


class TestPopularitySource(SourceContract):
    productive = {}

    def make(self):
        return PopularitySource(PopularitySourceConfig(type="popularity"))
