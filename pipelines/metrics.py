"""Offline ranking metrics: pure functions of ranked lists and relevant sets.

Where it sits: evaluate.py computes lists for the model and the baselines and
scores them here. Binary gain throughout (relevant = distinct items the user
bought in the test window).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence


def ndcg_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """Binary-gain NDCG@k: DCG of the list over the DCG of a perfect list."""
    if not relevant:
        return 0.0
    dcg = sum(1.0 / math.log2(i + 2) for i, item in enumerate(ranked[:k]) if item in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(relevant))))
    return dcg / ideal


def hit_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """1 if any of the top k is relevant."""
    return float(any(item in relevant for item in ranked[:k]))


def recall_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """Share of the relevant items found in the top k."""
    if not relevant:
        return 0.0
    return len(set(ranked[:k]) & relevant) / len(relevant)


def evaluate_lists(lists: Mapping[str, Sequence[str]], relevant: Mapping[str, set[str]],
                   ks: Sequence[int], catalog: set[str]) -> dict[str, float]:
    """Mean metrics over users that have at least one relevant item.

    Args:
        lists: user -> ranked item ids.
        relevant: user -> relevant item ids.
        ks: cut-offs.
        catalog: items counted for coverage (the training catalog).

    Returns:
        `ndcg@k`, `hit_rate@k`, `recall@k`, `coverage@k` for every k, and `users`.
    """
    users = [u for u, rel in relevant.items() if rel]
    out: dict[str, float] = {"users": len(users)}
    for k in ks:
        if users:
            out[f"ndcg@{k}"] = sum(ndcg_at_k(lists.get(u, []), relevant[u], k) for u in users) / len(users)
            out[f"hit_rate@{k}"] = sum(hit_at_k(lists.get(u, []), relevant[u], k) for u in users) / len(users)
            out[f"recall@{k}"] = sum(recall_at_k(lists.get(u, []), relevant[u], k) for u in users) / len(users)
        else:
            out[f"ndcg@{k}"] = out[f"hit_rate@{k}"] = out[f"recall@{k}"] = 0.0
        shown = {i for u in users for i in lists.get(u, [])[:k]}
        out[f"coverage@{k}"] = len(shown & catalog) / len(catalog) if catalog else 0.0
    return out
