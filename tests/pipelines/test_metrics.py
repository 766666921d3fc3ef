"""Offline metrics on lists whose answers are worked out by hand."""
import math
import random

import pytest

from pipelines.metrics import (average_precision_at_k, category_spread_at_k, cohort_recall, coverage_curve,
                               evaluate_lists, hit_at_k, map_at_k, ndcg_at_k, recall_at_k, revenue_hit_rate_at_k)


def test_ndcg_binary_gain_by_hand():
    # relevant {a, c}; list a, b, c: DCG = 1/log2(2) + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3)
    assert ndcg_at_k(["a", "b", "c"], {"a", "c"}, 3) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(["a", "c"], {"a", "c"}, 2) == pytest.approx(1.0)
    assert ndcg_at_k(["b"], {"a"}, 1) == 0.0
    # only the top k count: c at rank 3 is outside k=2
    assert ndcg_at_k(["a", "b", "c"], {"a", "c"}, 2) == pytest.approx(1.0 / (1 + 1 / math.log2(3)))


def test_hit_and_recall():
    assert hit_at_k(["x", "y"], {"y"}, 1) == 0.0 and hit_at_k(["x", "y"], {"y"}, 2) == 1.0
    assert recall_at_k(["a", "b", "c"], {"a", "c", "d", "e"}, 3) == pytest.approx(0.5)


def test_evaluate_lists_means_and_coverage():
    lists = {"u1": ["a", "b"], "u2": ["a", "c"], "u3": ["z"]}
    relevant = {"u1": {"a"}, "u2": {"b"}, "u3": set()}  # u3 has nothing relevant: excluded
    m = evaluate_lists(lists, relevant, [1, 2], catalog={"a", "b", "c", "d"})
    assert m["users"] == 2
    assert m["hit_rate@1"] == pytest.approx(0.5)   # u1 hits at 1, u2 never
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["coverage@1"] == pytest.approx(1 / 4)  # only "a" shown at k=1
    assert m["coverage@2"] == pytest.approx(3 / 4)  # a, b, c


def test_average_precision_by_hand():
    # relevant {a, c, d}; list a, b, c: hits at ranks 1 and 3 -> precision 1/1 and 2/3;
    # k=3, min(k, |rel|) = 3 -> AP = (1 + 2/3) / 3 = 5/9
    assert average_precision_at_k(["a", "b", "c"], {"a", "c", "d"}, 3) == pytest.approx(5 / 9)
    # k=2: only a counts, min(2, 3) = 2 -> 1/2
    assert average_precision_at_k(["a", "b", "c"], {"a", "c", "d"}, 2) == pytest.approx(0.5)
    # a perfect top 2 of a user with 3 relevant items scores 1 (divisor min(k, |rel|))
    assert average_precision_at_k(["c", "a"], {"a", "c", "d"}, 2) == pytest.approx(1.0)
    # a repeated id counts once: second "a" is not a hit -> (1 + 2/3) / 2
    assert average_precision_at_k(["a", "a", "c"], {"a", "c"}, 3) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision_at_k(["x"], set(), 1) == 0.0


def test_map_at_k_means_over_users_with_relevant_items():
    lists = {"u1": ["a", "b"], "u2": ["x", "b"], "u3": ["a"]}
    relevant = {"u1": {"a"}, "u2": {"b"}, "u3": set()}
    # u1: hit at 1 -> AP 1; u2: hit at 2 -> precision 1/2, divisor min(2, 1) = 1 -> 0.5; u3 has nothing
    assert map_at_k(lists, relevant, 2) == pytest.approx((1 + 0.5) / 2)
    assert map_at_k(lists, {"u": set()}, 2) == 0.0


def test_revenue_hit_rate_is_pooled_share_of_revenue():
    lists = {"u1": ["a", "b", "c"], "u2": ["x", "y"]}
    revenue = {"u1": {"a": 10.0, "c": 30.0}, "u2": {"y": 60.0, "z": 0.0}}
    # k=1: only u1's "a" (10) is caught out of 10 + 30 + 60 = 100 -> 0.1
    assert revenue_hit_rate_at_k(lists, revenue, 1) == pytest.approx(0.1)
    # k=2: a (10) and y (60) -> 0.7; k=3: + c (30) -> 1.0
    assert revenue_hit_rate_at_k(lists, revenue, 2) == pytest.approx(0.7)
    assert revenue_hit_rate_at_k(lists, revenue, 3) == pytest.approx(1.0)
    # restricted to u2: 60 / 60
    assert revenue_hit_rate_at_k(lists, revenue, 2, users=["u2"]) == pytest.approx(1.0)
    assert revenue_hit_rate_at_k(lists, {}, 2) == 0.0


def test_category_spread_by_hand():
    cats = {"a": "toys", "b": "toys", "c": "kitchen", "d": "garden"}
    lists = {"u1": ["a", "b", "c", "d"], "u2": ["c", "z"], "u3": []}
    s = category_spread_at_k(lists, cats, 3)
    # u1 top 3 = toys, toys, kitchen -> 2 distinct, top share 2/3;
    # u2 = kitchen, unknown (None) -> 2 distinct, top share 1/2; u3 is empty and left out
    assert s["distinct@3"] == pytest.approx(2.0)
    assert s["top_share@3"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert category_spread_at_k({}, cats, 3) == {"distinct@3": 0.0, "top_share@3": 0.0}


def test_coverage_curve_by_hand():
    lists = {"u1": ["a", "b", "c"], "u2": ["a", "d", "zz"]}
    catalog = {"a", "b", "c", "d", "e"}
    # k=1: {a} -> 1/5; k=2: {a, b, d} -> 3/5; k=3: + c ("zz" is not in the catalog) -> 4/5
    assert coverage_curve(lists, [3, 1, 2], catalog) == [[1, 0.2], [2, 0.6], [3, 0.8]]
    # agrees with evaluate_lists' coverage@k
    m = evaluate_lists(lists, {"u1": {"a"}, "u2": {"a"}}, [1, 2, 3], catalog)
    assert [m["coverage@1"], m["coverage@2"], m["coverage@3"]] == pytest.approx([0.2, 0.6, 0.8])


def test_cohort_recall_by_hand():
    lists = {"u1": ["new1", "a", "new2"], "u2": ["a", "b"], "u3": ["new1"]}
    relevant = {"u1": {"new1", "new2", "a"}, "u2": {"new3"}, "u3": {"a"}}
    cold = {"new1", "new2", "new3"}
    # u1: cold relevant {new1, new2}, top 2 has new1 -> 1/2; u2: {new3}, not shown -> 0;
    # u3 bought no cold item -> left out
    assert cohort_recall(lists, relevant, cold, 2) == {"users": 2, "recall@2": pytest.approx(0.25)}
    assert cohort_recall(lists, relevant, set(), 2) == {"users": 0, "recall@2": 0.0}


def test_evaluate_lists_map_and_revenue_keys():
    lists = {"u1": ["a", "b", "c"], "u2": ["x", "b"]}
    relevant = {"u1": {"a", "c"}, "u2": {"b"}}
    revenue = {"u1": {"a": 5.0, "c": 15.0, "old": 80.0}, "u2": {"b": 20.0}}
    m = evaluate_lists(lists, relevant, [2, 3], catalog={"a", "b", "c"}, revenue=revenue)
    # u1 AP@2 = 1 / min(2, 2) = 0.5; u2 AP@2 = (1/2) / 1 = 0.5 -> MAP@2 0.5
    assert m["map@2"] == pytest.approx(0.5)
    # u1 AP@3 = (1 + 2/3) / 2 = 5/6; u2 0.5 -> (5/6 + 1/2) / 2 = 2/3
    assert m["map@3"] == pytest.approx(2 / 3)
    # revenue outside the relevant set ("old") is ignored: k=2 catches a (5) and b (20) of 5 + 15 + 20 = 40
    assert m["revenue_hit_rate@2"] == pytest.approx(25 / 40)
    assert m["revenue_hit_rate@3"] == pytest.approx(1.0)
    for key in ("users", "ndcg@2", "hit_rate@2", "recall@2", "coverage@2"):
        assert key in m
    assert "revenue_hit_rate@2" not in evaluate_lists(lists, relevant, [2], catalog=set())


def test_evaluate_lists_matches_per_user_functions():
    rng = random.Random(0)
    items = [f"i{j}" for j in range(40)]
    lists = {f"u{j}": rng.sample(items, 25) for j in range(30)}
    relevant = {u: set(rng.sample(items, rng.randint(0, 8))) for u in lists}
    m = evaluate_lists(lists, relevant, [1, 5, 20], catalog=set(items))
    users = [u for u in lists if relevant[u]]
    for k in (1, 5, 20):
        assert m[f"ndcg@{k}"] == pytest.approx(sum(ndcg_at_k(lists[u], relevant[u], k) for u in users) / len(users))
        assert m[f"hit_rate@{k}"] == pytest.approx(sum(hit_at_k(lists[u], relevant[u], k) for u in users) / len(users))
        assert m[f"recall@{k}"] == pytest.approx(sum(recall_at_k(lists[u], relevant[u], k) for u in users) / len(users))
        assert m[f"map@{k}"] == pytest.approx(map_at_k(lists, relevant, k))


def test_new_item_pool_chance_level_by_hand_and_by_simulation():
    """Two slots from a pool of four: a cold-item buyer whose one cold item is in the pool finds it with
    probability 1/2; one with a second cold item outside the pool gets half that recall; a user without cold
    items does not count. Random picks, simulated, average the same."""
    import statistics

    from pipelines.evaluate import new_item_pool

    pool = ["a", "b", "c", "d"]
    relevant = {"u1": {"a", "x"}, "u2": {"a", "z"}, "u3": {"x"}}
    cold = {"a", "z", "b"}
    got = new_item_pool(pool, 2, relevant, cold)
    assert got == {"items": 4, "slots": 2, "cold_items_in_pool": 2, "chance_cold_recall": round((0.5 + 0.25) / 2, 4)}
    rng = random.Random(0)
    sims = []
    for _ in range(20000):
        picks = set(rng.sample(pool, 2))
        sims.append(statistics.mean([len(picks & (r & cold)) / len(r & cold) for r in relevant.values() if r & cold]))
    assert abs(statistics.mean(sims) - got["chance_cold_recall"]) < 0.01
