"""Offline metrics on lists whose answers are worked out by hand."""
import math

import pytest

from pipelines.metrics import evaluate_lists, hit_at_k, ndcg_at_k, recall_at_k


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
