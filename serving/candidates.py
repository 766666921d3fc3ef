"""`Candidates`: the one type every serving stage takes and returns (STYLE.md section 5).

Where it sits: retrieval sources create it, ranking rescores it, business
rules (`serving/rules.py`) filter, re-weight and pin it, diversity
(`serving/diversity.py`) reorders it, and the response is read off it.

It is an ordered list held as parallel NumPy arrays: position ``i`` of every
array describes the item at list position ``i``. The list order is the
authority (after pins it need not follow the scores). Instances are never
changed in place: the arrays are read-only views and every helper returns a
new instance, so a stage can hand its input on unchanged (and the rule chain
can tell "did nothing" by identity).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

#: names a per-item column may not take (they are the core arrays)
CORE = ("item_id", "score", "source", "category")


def _frozen(a: np.ndarray) -> np.ndarray:
    v = a.view()
    v.flags.writeable = False
    return v


def _objects(values: object) -> np.ndarray:
    if isinstance(values, np.ndarray):
        return values.astype(object, copy=False)  # a '<U' array becomes Python str
    seq = list(values)  # type: ignore[call-overload]
    out = np.empty(len(seq), dtype=object)
    out[:] = seq
    return out


@dataclass(frozen=True, eq=False)
class Candidates:
    """An ordered candidate list with scores, provenance, category and optional per-item columns.

    Args:
        ids: (n,) object array of item ids (str).
        scores: (n,) float64 scores, higher is better.
        sources: (n,) object array: the retrieval source that found each item
            (`two_tower`, `popularity`, `pin`, ...).
        categories: (n,) object array: each item's category (None when unknown).
        columns: optional per-item columns, each an array whose first axis is n
            (e.g. `in_stock` (n,) bool, `margin` (n,) float, `embedding` (n, d)).

    Raises:
        ValueError: arrays of different lengths, or a column named like a core array.
    """

    ids: np.ndarray
    scores: np.ndarray
    sources: np.ndarray
    categories: np.ndarray
    columns: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = _objects(self.ids)
        n = len(ids)
        scores = np.asarray(self.scores, dtype=np.float64)
        sources = _objects(self.sources)
        categories = _objects(self.categories)
        if scores.shape != (n,) or sources.shape != (n,) or categories.shape != (n,):
            raise ValueError(f"ids, scores, sources and categories must all have length {n}, got "
                             f"{scores.shape}, {sources.shape}, {categories.shape}")
        cols = {}
        for name, col in self.columns.items():
            if name in CORE:
                raise ValueError(f"column {name!r} clashes with a core array ({', '.join(CORE)})")
            col = np.asarray(col)
            if col.ndim == 0 or col.shape[0] != n:
                raise ValueError(f"column {name!r} has {col.shape[0] if col.ndim else 0} rows, expected {n}")
            cols[name] = _frozen(col)
        object.__setattr__(self, "ids", _frozen(ids))
        object.__setattr__(self, "scores", _frozen(scores))
        object.__setattr__(self, "sources", _frozen(sources))
        object.__setattr__(self, "categories", _frozen(categories))
        object.__setattr__(self, "columns", MappingProxyType(cols))

    # --- construction ---

    @classmethod
    def from_lists(cls, ids: Sequence[str], scores: Sequence[float] | np.ndarray,
                   sources: Sequence[str] | str = "unknown", categories: Sequence[object] | None = None,
                   columns: Mapping[str, Sequence | np.ndarray] | None = None) -> "Candidates":
        """Build from plain sequences.

        Args:
            ids: n item ids.
            scores: n scores.
            sources: n source names, or one name for all.
            categories: n categories (None: all unknown).
            columns: optional per-item columns of length n.

        Returns:
            The candidates in the given order.
        """
        n = len(ids)
        src = _objects([sources] * n) if isinstance(sources, str) else _objects(sources)
        cat = _objects([None] * n) if categories is None else _objects(categories)
        cols = {k: np.asarray(v) for k, v in (columns or {}).items()}
        return cls(_objects(ids), np.asarray(scores, dtype=np.float64), src, cat, cols)

    @classmethod
    def empty(cls) -> "Candidates":
        """No candidates."""
        return cls.from_lists([], [])

    # --- reading ---

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[tuple[str, float, str, str | None]]:
        """(item_id, score, source, category) per position, in list order."""
        return zip(self.ids.tolist(), self.scores.tolist(), self.sources.tolist(), self.categories.tolist())

    def column(self, name: str) -> np.ndarray:
        """The per-item column `name`.

        Raises:
            KeyError: naming the missing column and the ones present.
        """
        try:
            return self.columns[name]
        except KeyError:
            raise KeyError(f"candidates have no column {name!r} (have: {sorted(self.columns) or 'none'})") from None

    def equals(self, other: "Candidates") -> bool:
        """Same items in the same order with the same scores (columns are not compared)."""
        return self is other or (len(self) == len(other) and bool(np.array_equal(self.ids, other.ids))
                                 and bool(np.array_equal(self.scores, other.scores, equal_nan=True)))

    # --- new instances ---

    def take(self, idx: np.ndarray | Sequence[int]) -> "Candidates":
        """The rows at integer positions `idx` (in that order) or where boolean mask `idx` is True."""
        idx = np.asarray(idx)
        if idx.dtype != bool:
            idx = idx.astype(np.intp, copy=False)
        return Candidates(self.ids[idx], self.scores[idx], self.sources[idx], self.categories[idx],
                          {k: v[idx] for k, v in self.columns.items()})

    def head(self, k: int) -> "Candidates":
        """The first `k` in list order (itself when it has no more than `k`)."""
        return self if len(self) <= k else self.take(np.arange(max(k, 0)))

    def ranked(self) -> "Candidates":
        """Sorted by score, highest first; ties keep list order (itself when already so)."""
        order = np.argsort(-self.scores, kind="stable")
        return self if np.array_equal(order, np.arange(len(self))) else self.take(order)

    def top(self, k: int) -> "Candidates":
        """The `k` highest scores, highest first; ties keep list order."""
        return self.ranked().head(k)

    def with_scores(self, scores: np.ndarray | Sequence[float]) -> "Candidates":
        """The same list with new scores (list order unchanged; call :meth:`ranked` to re-sort)."""
        return Candidates(self.ids, np.asarray(scores, dtype=np.float64), self.sources, self.categories, self.columns)

    def with_columns(self, **columns: np.ndarray | Sequence) -> "Candidates":
        """The same list with columns added or replaced."""
        new = {k: np.asarray(v) for k, v in columns.items()}
        return Candidates(self.ids, self.scores, self.sources, self.categories, {**self.columns, **new})

    def append(self, other: "Candidates") -> "Candidates":
        """`other` after this list; both must carry the same columns.

        Raises:
            ValueError: the column names differ.
        """
        if set(self.columns) != set(other.columns):
            raise ValueError(f"cannot append candidates with columns {sorted(other.columns)} "
                             f"to candidates with columns {sorted(self.columns)}")
        return Candidates(np.concatenate([self.ids, other.ids]), np.concatenate([self.scores, other.scores]),
                          np.concatenate([self.sources, other.sources]),
                          np.concatenate([self.categories, other.categories]),
                          {k: np.concatenate([v, other.columns[k]]) for k, v in self.columns.items()})

    def __repr__(self) -> str:
        shown = ", ".join(f"{i}:{s:.3g}" for i, s, *_ in list(self)[:5])
        more = f", ... ({len(self)} items)" if len(self) > 5 else ""
        return f"Candidates([{shown}{more}], columns={sorted(self.columns)})"
