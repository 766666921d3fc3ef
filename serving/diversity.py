"""Category spread of the served list: a per-category cap, MMR, and the spread metric.

Where it sits: after the business rules and before pins in
:class:`serving.rules.RuleChain` (pins are contractual and land after
diversity, so a pin may add one item to a full category). Pure
relevance yields homogeneous lists (ten mugs); these reorders trade a little
score order for spread, touching only which items reach the top K.

Items with an unknown category (None or NaN) are never capped, never similar
to anything under category similarity, and not counted by
:func:`category_spread`.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cartwise.config import DiversityConfig
from serving.candidates import Candidates

#: per-item (n, d) column MMR reads when `similarity: embedding`
EMBEDDING = "embedding"


def _known(cat: object) -> bool:
    return cat is not None and cat == cat  # NaN != NaN


def _reorder(candidates: Candidates, first: list[int]) -> Candidates:
    """`first` (positions, in that order), then every other item in list order."""
    if first == list(range(len(first))):
        return candidates
    rest = np.ones(len(candidates), dtype=bool)
    rest[first] = False
    order = np.concatenate([np.asarray(first, dtype=np.intp), np.flatnonzero(rest)])
    return candidates.take(order)


def max_per_category(candidates: Candidates, n: int, k: int) -> Candidates:
    """At most `n` items of one category in the top `k`, greedily.

    Walks the list in order and takes an item unless its category already has
    `n` in the top; skipped items keep their relative order behind the top K.
    When fewer than `k` items fit the cap (too few other categories), the
    earliest skipped items fill the gap, so the top K is never shorter than
    the list allows and is always in list order.

    Args:
        candidates: (m,) in ranked order.
        n: the cap per category (>= 1).
        k: length of the top the cap applies to.

    Returns:
        A permutation of `candidates` (itself when nothing moves).

    Raises:
        ValueError: `n` < 1.
    """
    if n < 1:
        raise ValueError(f"max_per_category needs n >= 1, got {n}")
    k = min(k, len(candidates))
    if k <= 0 or n >= k:
        return candidates
    counts: dict[object, int] = {}
    chosen: list[int] = []
    skipped: list[int] = []
    for i, cat in enumerate(candidates.categories.tolist()):
        if len(chosen) == k:
            break
        if not _known(cat):
            chosen.append(i)
        elif counts.get(cat, 0) < n:
            counts[cat] = counts.get(cat, 0) + 1
            chosen.append(i)
        else:
            skipped.append(i)
    if len(chosen) < k:
        chosen = sorted(chosen + skipped[:k - len(chosen)])
    return _reorder(candidates, chosen)


def _category_codes(categories: np.ndarray) -> np.ndarray:
    codes: dict[object, int] = {}
    return np.fromiter((codes.setdefault(c, len(codes)) if _known(c) else -1 for c in categories.tolist()),
                       dtype=np.int64, count=len(categories))


def mmr(candidates: Candidates, k: int, lambda_: float, similarity: str = "category") -> Candidates:
    """Maximal marginal relevance (Carbonell & Goldstein, 1998) over the top `k`.

    Each step picks ``argmax lambda * rel(i) - (1 - lambda) * max_{j chosen} sim(i, j)``;
    `rel` is the score min-max scaled to [0, 1] over the candidates, so lambda
    means the same whatever the ranker's score scale. Ties go to the earlier
    item; the first pick is the best-scored item whenever lambda > 0.

    Args:
        candidates: (m,) candidates.
        k: how many positions to fill by MMR; the rest follow in list order.
        lambda_: 1.0 is pure relevance, 0.0 pure novelty.
        similarity: `category` (1 for the same known category, else 0) or
            `embedding` (cosine of the (m, d) `embedding` column).

    Returns:
        A permutation of `candidates`.

    Raises:
        ValueError: unknown similarity or lambda outside [0, 1].
        KeyError: `embedding` similarity without an `embedding` column.
    """
    if not 0.0 <= lambda_ <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lambda_}")
    m = len(candidates)
    k = min(k, m)
    if k <= 1:
        return candidates
    s = np.nan_to_num(candidates.scores, nan=-np.inf)
    finite = np.isfinite(s)
    lo, hi = (s[finite].min(), s[finite].max()) if finite.any() else (0.0, 0.0)
    rel = np.where(finite, (s - lo) / (hi - lo) if hi > lo else 0.0, 0.0)
    if similarity == "category":
        codes = _category_codes(candidates.categories)

        def sim(j: int) -> np.ndarray:
            return (codes == codes[j]) & (codes[j] >= 0)
    elif similarity == "embedding":
        e = np.asarray(candidates.column(EMBEDDING), dtype=np.float64).reshape(m, -1)
        norm = np.linalg.norm(e, axis=1, keepdims=True)
        e = np.divide(e, norm, out=np.zeros_like(e), where=norm > 0)

        def sim(j: int) -> np.ndarray:
            return e @ e[j]
    else:
        raise ValueError(f"unknown similarity {similarity!r}; expected category or embedding")
    max_sim = np.zeros(m)
    free = np.ones(m, dtype=bool)
    chosen: list[int] = []
    for _ in range(k):
        gain = np.where(free, lambda_ * rel - (1.0 - lambda_) * max_sim, -np.inf)
        j = int(np.argmax(gain))
        chosen.append(j)
        free[j] = False
        max_sim = np.maximum(max_sim, sim(j))
    return _reorder(candidates, chosen)


class CategorySpread(NamedTuple):
    """How spread the top of a list is over categories."""

    #: distinct known categories in the top k
    distinct: int
    #: items of the most frequent known category / items in the top k (0 for an empty list)
    largest_share: float


def category_spread(candidates: Candidates | np.ndarray | list, k: int) -> CategorySpread:
    """Distinct categories and the largest category's share in the first `k` positions.

    Args:
        candidates: a served list, or its categories in list order.
        k: the cut-off.

    Returns:
        The spread; unknown categories count in the denominator only.
    """
    cats = candidates.categories if isinstance(candidates, Candidates) else np.asarray(candidates, dtype=object)
    top = [c for c in cats[:max(k, 0)].tolist()]
    if not top:
        return CategorySpread(0, 0.0)
    counts: dict[object, int] = {}
    for c in top:
        if _known(c):
            counts[c] = counts.get(c, 0) + 1
    return CategorySpread(len(counts), max(counts.values(), default=0) / len(top))


class Diversifier:
    """The configured diversity stage: `diversity` in cartwise.yaml.

    Args:
        config: method and its parameters.
    """

    name = "diversity"

    def __init__(self, config: DiversityConfig):
        self.config = config

    @property
    def requires(self) -> tuple[str, ...]:
        """Candidate columns this stage reads."""
        c = self.config
        return (EMBEDDING,) if c.method == "mmr" and c.similarity == "embedding" else ()

    def __call__(self, candidates: Candidates, k: int) -> Candidates:
        """Reorder so the top `k` spreads over categories.

        Args:
            candidates: (m,) in ranked order.
            k: the list length served.

        Returns:
            A permutation of `candidates` (itself when nothing moves or method is `none`).
        """
        c = self.config
        if c.method == "max_per_category":
            return max_per_category(candidates, c.max_per_category, k)
        if c.method == "mmr":
            return mmr(candidates, k, c.mmr_lambda, c.similarity)
        return candidates
