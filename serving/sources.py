"""Retrieval sources and their merge: the `retrieve` stage of `features -> retrieve -> rank -> rules`.

Where it sits: :class:`serving.pipeline.Recommender` builds a :class:`Query`
per request (online user features, the session's cart, viewed items and
category, the exclusions) and asks the :class:`Retriever` for candidates;
ranking (`serving/pipeline.py`), the business rules (`serving/rules.py`) and
diversity (`serving/diversity.py`) work on what it returns. Everything here is
built once per bundle from a :class:`Catalog` (the bundle's item table,
index, purchase history, co-purchase table and content embeddings); a source
that needs a part the bundle lacks fails when the pipeline is built, not
per request.

Sources (STYLE.md section 6: a small ABC, a `<Name>Config` in
`cartwise/config.py`, an alias map that also takes a dotted path, a contract
test mixin in tests/serving/test_sources.py):

=====================  ===========================================================
`two_tower`            the query tower's user embedding searched in ScaNN
`bought_together`      co-purchase neighbours of the cart, the last viewed items
                       and the user's latest purchases
`content`              items like the last viewed ones (else the cart, else the
                       session category): text-embedding cosine + same category
`repeat`               the user's own purchases, recency-weighted
`popular_in_category`  best sellers of the categories in play (fallback)
`popularity`           best sellers (fallback)
=====================  ===========================================================

How scores from different sources become comparable (:meth:`Retriever.retrieve`):
each source's raw scores (dot products, co-purchase cosines, decayed counts,
popularity) are min-max scaled to [0, 1] within the list that source returned
(its best item 1, its worst 0; a list of equal scores all 1), then multiplied
by the source's `weight`. An item found by several sources keeps its highest
scaled score and is attributed to that source (ties: the source declared
first); the bit mask of every source that found it is the `found_by` column.
Fallback sources run after the others, only for the places still free in the
candidate budget, on items nobody else found; their scaled scores are shifted
to `weight * scaled - weight - 1`, i.e. into [-1 - weight, -1], below every
non-fallback candidate (>= 0) while keeping their own order. The scaling is
rank-preserving within a source, so a source's best item always competes at
its weight whatever its raw scale; what it loses is the raw gap between
sources, which raw scores cannot express anyway (a cosine is not a count).

The retriever asks each source for catalog rows and raw scores
(:meth:`Source.retrieve_rows`) and builds one :class:`Candidates` after the
merge; the built-in sources (:class:`RowSource`) compute rows and scores and
make candidates only when asked for :meth:`Source.retrieve`, a custom source
implements `retrieve` alone.

Per request everything is NumPy over the rows in play: dictionary lookups
only for the request's own ids, and nothing the size of the catalog (but the
content index's bounds, one per leaf of ~200 items). The exclusions are a
:class:`RowSet` (sorted rows) rather than an (N,) mask, and `content` finds
its best items with a :class:`ContentIndex` built at bind (leaves of
same-category items with bounds on their scores) instead of scoring all
N x d embeddings: the same answer as the full scan, from a few thousand rows
on the benchmark's 1M-item catalog (about 0.3 ms where the full scan took
13-16 ms). When the embeddings do not separate a query's items the index
gives up after a first step and the full scan (:func:`matvec`) runs.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ValidationError

from cartwise.bundle import search_kwargs
from cartwise.config import (
    BoughtTogetherSourceConfig, ConfigError, ContentSourceConfig, CustomSourceConfig, PopularInCategorySourceConfig,
    PopularitySourceConfig, RepeatSourceConfig, RetrievalConfig, TwoTowerSourceConfig, source_names,
)
from cartwise.extensions import load_class
from feature_repo import names as n
from serving.candidates import Candidates

log = logging.getLogger("cartwise.serving")

#: candidate columns the retriever adds
ROW = "row"  # (m,) int64 catalog row of each candidate (-1: not in the catalog, e.g. an inserted pin)
FOUND_BY = "found_by"  # (m,) int64 bit mask over Retriever.names: every source that found the item
RETRIEVAL_SCORE = "retrieval_score"  # (m,) float64 raw score from the source the item is attributed to
#: catalog parts a source may need (Source.needs)
SEARCHER, BOUGHT_TOGETHER, CONTENT = "searcher", "bought_together", "content"
_EMPTY_ROWS = np.zeros(0, dtype=np.int64)


class SourceWiringError(ConfigError):
    """A source that cannot run on this bundle: unimportable class, bad params, a bundle part it needs is missing."""


# --- what sources read ---------------------------------------------------------------------------------------


class RowSet:
    """A set of catalog rows that answers like a boolean mask over the catalog, without being one.

    Held as its sorted distinct rows, so building it, adding to it and asking
    it cost what the rows in play cost, not what the catalog costs (a
    per-request (N,) mask was 1 MB to allocate, fill and sum at 1M items, and
    once more per fallback source). `rowset[i]` (an int) is a bool and
    `rowset[rows]` (an int array) a bool array, as on the mask; `np.asarray`
    gives the mask itself.

    Args:
        rows: the rows in the set (any order, repeats allowed).
        size: the catalog's row count (the mask's length).
    """

    __slots__ = ("rows", "size")

    def __init__(self, rows: Any = (), size: int = 0):
        self.rows: np.ndarray = np.unique(np.asarray(rows, dtype=np.int64).ravel())
        self.size = int(size)

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> "RowSet":
        """The rows set in an (N,) bool mask."""
        mask = np.asarray(mask, dtype=bool)
        return cls(np.flatnonzero(mask), len(mask))

    @property
    def count(self) -> int:
        """How many rows are in the set."""
        return len(self.rows)

    def union(self, rows: np.ndarray) -> "RowSet":
        """This set plus `rows` (self when `rows` is empty)."""
        if len(rows) == 0:
            return self
        out = RowSet.__new__(RowSet)
        out.rows, out.size = np.union1d(self.rows, np.asarray(rows, dtype=np.int64)), self.size
        return out

    def contains(self, rows: np.ndarray) -> np.ndarray:
        """(m,) bool: which of `rows` are in the set."""
        rows = np.asarray(rows)
        if len(self.rows) == 0 or rows.size == 0:
            return np.zeros(rows.shape, dtype=bool)
        at = np.searchsorted(self.rows, rows)
        np.minimum(at, len(self.rows) - 1, out=at)
        return self.rows[at] == rows

    def __getitem__(self, rows: Any) -> Any:
        if isinstance(rows, (int, np.integer)):
            return bool(self.contains(np.asarray([rows]))[0])
        rows = np.asarray(rows)
        if rows.dtype.kind not in "iu":
            raise TypeError(f"a RowSet is indexed by catalog rows (ints), not {rows.dtype}")
        return self.contains(rows)

    def __contains__(self, row: object) -> bool:
        return isinstance(row, (int, np.integer)) and self[row]

    def sum(self) -> int:
        """As on the mask: how many rows are set."""
        return len(self.rows)

    def any(self) -> bool:
        return len(self.rows) > 0

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        mask = np.zeros(self.size, dtype=bool)
        mask[self.rows] = True
        return mask if dtype is None else mask.astype(dtype)

    def __repr__(self) -> str:
        return f"RowSet({self.rows.tolist()[:8]}{'...' if len(self.rows) > 8 else ''}, size={self.size})"


@dataclass(frozen=True)
class Query:
    """One request as the sources see it.

    Args:
        user_id: the shopper (None: anonymous).
        embedding: (D,) float32 query-tower output: from the user's online
            features, or, for a shopper without them (anonymous, unknown,
            store unavailable) but with a session, from the session alone
            (user "unknown"); None when there is neither.
        features: the user's online features (None: none read).
        cart: (c,) int64 catalog rows of the cart's known items, request order.
        viewed: (v,) int64 catalog rows of the known viewed items, oldest first.
        category: the session category's code in :attr:`Catalog.category_names`
            (-1: none, or a category the catalog does not have).
        excluded: the catalog rows never to return, a :class:`RowSet`
            (`excluded[rows]` is a bool array, as on an (N,) mask; an (N,) bool
            mask given here is turned into one).
        n_excluded: how many rows are excluded (ANN searches over-fetch by it).
        now: request time, timezone-aware.
    """

    user_id: str | None
    embedding: np.ndarray | None
    features: Mapping[str, float] | None
    cart: np.ndarray
    viewed: np.ndarray
    category: int
    excluded: RowSet
    n_excluded: int
    now: dt.datetime

    def __post_init__(self) -> None:
        if not isinstance(self.excluded, RowSet):
            object.__setattr__(self, "excluded", RowSet.from_mask(self.excluded))

    def excluding(self, rows: np.ndarray) -> "Query":
        """The same query with `rows` excluded too."""
        if len(rows) == 0:
            return self
        excluded = self.excluded.union(rows)
        out = object.__new__(Query)  # a copy with two fields changed (dataclasses.replace cost ~20 us a call)
        out.__dict__.update(self.__dict__, excluded=excluded, n_excluded=excluded.count)
        return out


@dataclass(frozen=True)
class UserHistory:
    """A known user's purchases: (h,) arrays by last purchase, newest first."""

    rows: np.ndarray  # int64 catalog rows
    purchases: np.ndarray  # float64 purchase lines
    age_days: np.ndarray  # float64 days from the last purchase to the bundle's as-of


#: rows per BLAS call in :func:`matvec`
MATVEC_CHUNK = 4096


def matvec(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """`m @ v` for a tall (N, d) matrix, in blocks of :data:`MATVEC_CHUNK` rows.

    One call on the whole catalog makes OpenBLAS fan out to every core; on a
    busy 2-core server that took 10-16 ms for 50,000 x 16 where the blocks,
    each below its threading threshold, take 0.3 ms.
    """
    out = np.empty(m.shape[0], dtype=np.result_type(m, v))
    for start in range(0, m.shape[0], MATVEC_CHUNK):
        np.matmul(m[start:start + MATVEC_CHUNK], v, out=out[start:start + MATVEC_CHUNK])
    return out


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


class Catalog:
    """The bundle's items as arrays over catalog rows (the index's order), shared read-only by every source.

    Args:
        item_ids: (N,) item ids.
        categories: (N,) category per item (None/NaN: unknown).
        popular: item ids by recent sales, best first (popular.json).
        history: purchase history frame (user_id, item_id, last_purchase, purchases).
        as_of: the bundle's as-of instant (ages of past purchases are taken at it).
        searcher: the ScaNN searcher (None: no `two_tower`).
        index: the searcher's parameters (the manifest's `index`): how deep a query re-orders and how many
            leaves it searches (`cartwise.bundle.search_kwargs`); None or an exact index: the searcher's default.
        bought_together: frame (item_id, neighbour_id, score) or None.
        content: (N, d) content embeddings or None.

    Attributes:
        row_of: item id -> row.
        category_names: distinct known categories; `category_codes` (N,) int64 index into it, -1 unknown.
        popularity: (N,) float64, 1 / (1 + rank) in `popular`, 0 for items not in it.
        popular_rows: (P,) int64 rows of `popular` that are in the catalog, best first.
        users: user id -> :class:`UserHistory`.
        neighbours: CSR over rows (indptr (N+1,), rows, scores) of the co-purchase table, or None.
        content: (N, d) float32 unit rows, or None when the bundle has none (or d == 0).
    """

    def __init__(self, item_ids: Sequence[str], categories: Sequence[object], popular: Sequence[str],
                 history: Any, as_of: Any, searcher: Any = None, bought_together: Any = None,
                 content: np.ndarray | None = None, index: Mapping[str, Any] | None = None):
        import pandas as pd

        self.item_ids = np.asarray([str(i) for i in item_ids], dtype=object)
        self.row_of = {item: i for i, item in enumerate(self.item_ids.tolist())}
        if len(self.row_of) != len(self.item_ids):
            raise ValueError("catalog item ids must be unique")
        cats = np.empty(len(self.item_ids), dtype=object)
        cats[:] = [c if isinstance(c, str) else None for c in categories]
        self.categories = cats
        self.category_names = sorted({c for c in cats.tolist() if c is not None})
        self.category_code_of = {c: i for i, c in enumerate(self.category_names)}
        self.category_codes = np.fromiter((self.category_code_of.get(c, -1) for c in cats.tolist()),
                                          dtype=np.int64, count=len(cats))
        # an item listed twice keeps its best rank (the popularity sources read best-first lists)
        pop_rows = list(dict.fromkeys(self.row_of[i] for i in popular if i in self.row_of))
        self.popular_rows = np.asarray(pop_rows, dtype=np.int64)
        self.popularity = np.zeros(len(self.item_ids))
        self.popularity[self.popular_rows] = 1.0 / (1.0 + np.arange(len(pop_rows)))
        self.as_of = pd.Timestamp(as_of) if as_of is not None else None
        self.users = self._users(history)
        self.searcher = searcher
        self.index = dict(index or {})
        self.neighbours = self._neighbours(bought_together) if bought_together is not None else None
        if content is not None and content.ndim == 2 and content.shape[1] > 0 and content.shape[0] == len(self):
            self.content: np.ndarray | None = _unit_rows(np.asarray(content, dtype=np.float32))
        else:
            self.content = None
        # read-only: the sources hand out views of these (e.g. the head of `popular_rows`)
        for a in (self.item_ids, self.categories, self.category_codes, self.popular_rows, self.popularity,
                  self.content, *(self.neighbours or ())):
            if a is not None:
                a.flags.writeable = False
        self._content_index: ContentIndex | None = None

    def __len__(self) -> int:
        return len(self.item_ids)

    def content_index(self) -> "ContentIndex":
        """The :class:`ContentIndex` over `content` and `category_codes`, built on first use and shared by every
        content source of this catalog (it keeps its own copy of the embeddings: one per catalog, not one per
        source). Needs `content`."""
        if self.content is None:
            raise ValueError("the catalog has no content embeddings to index")
        if self._content_index is None:
            self._content_index = ContentIndex(self.content, self.category_codes)
        return self._content_index

    @classmethod
    def from_bundle(cls, bundle) -> "Catalog":
        """From a :class:`cartwise.bundle.LoadedBundle`."""
        items = bundle.items
        return cls(bundle.item_ids, items[n.CATEGORY].astype(object).tolist(), bundle.popular, bundle.history,
                   bundle.manifest.get("as_of"), bundle.searcher, bundle.bought_together, bundle.content_embeddings,
                   bundle.manifest.get("index"))

    def rows(self, item_ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """Rows of the known ids (request order, duplicates dropped) and the unknown ids."""
        rows, unknown, seen = [], [], set()
        get = self.row_of.get
        for item in item_ids:
            r = get(item)
            if r is None:
                unknown.append(item)
            elif r not in seen:
                seen.add(r)
                rows.append(r)
        return np.asarray(rows, dtype=np.int64), unknown

    def _users(self, history) -> dict[str, UserHistory]:
        import pandas as pd

        if history is None or len(history) == 0:
            return {}
        h = history[history[n.ITEM_ID].astype(str).isin(self.row_of)]
        last = pd.to_datetime(h["last_purchase"], utc=True)
        ref = self.as_of if self.as_of is not None else last.max()
        age = ((ref - last).dt.total_seconds() / 86400.0).clip(lower=0.0).to_numpy(np.float64)
        rows = h[n.ITEM_ID].astype(str).map(self.row_of).to_numpy(np.int64)
        users = h[n.USER_ID].astype(str).to_numpy(object)
        purchases = h["purchases"].to_numpy(np.float64)
        order = np.lexsort((rows, age, users))  # per user: newest first, ties by row
        users, rows, purchases, age = users[order], rows[order], purchases[order], age[order]
        bounds = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1, len(users)]
        return {users[a]: UserHistory(rows[a:b], purchases[a:b], age[a:b]) for a, b in zip(bounds[:-1], bounds[1:])}

    def _neighbours(self, table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = table["item_id"].astype(str).map(self.row_of)
        dst = table["neighbour_id"].astype(str).map(self.row_of)
        ok = (src.notna() & dst.notna()).to_numpy()
        src, dst = src[ok].to_numpy(np.int64), dst[ok].to_numpy(np.int64)
        score = table["score"].to_numpy(np.float64)[ok]
        order = np.lexsort((-score, src))
        src, dst, score = src[order], dst[order], score[order]
        indptr = np.zeros(len(self) + 1, dtype=np.int64)
        np.add.at(indptr, src + 1, 1)
        return np.cumsum(indptr), dst, score


# --- the family ----------------------------------------------------------------------------------------------


class Source(ABC):
    """A retrieval source: candidates for one query.

    Subclasses set `config_class` and `needs` (catalog parts it reads:
    :data:`SEARCHER`, :data:`BOUGHT_TOGETHER`, :data:`CONTENT`); `__init__`
    stores the parameters only, :meth:`bind` computes per-bundle state (ending
    in `_`).

    Args:
        config: the source's typed parameters.
        name: the `source` label of what it finds (default: the config's type).
    """

    config_class: ClassVar[type[BaseModel]]
    needs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any, name: str | None = None):
        self.config = config
        self.name: str = str(name or getattr(config, "name", None) or getattr(config, "type", None)
                             or type(self).__name__)

    def bind(self, catalog: Catalog) -> "Source":
        """Attach the bundle's catalog and precompute what requests need.

        Raises:
            SourceWiringError: the catalog lacks a part in `needs`.
        """
        missing = [p for p in self.needs if getattr(catalog, _PARTS[p], None) is None]
        if missing:
            raise SourceWiringError(f"source {self.name!r} needs {', '.join(_PART_FILES[p] for p in missing)}, "
                                    "which this bundle does not have (re-export it with `cartwise export`)")
        self.catalog_ = catalog
        return self

    @abstractmethod
    def retrieve(self, query: Query, n: int) -> Candidates:
        """Up to `n` candidates for `query`.

        Args:
            query: the request.
            n: most candidates wanted.

        Returns:
            At most n distinct catalog items, none excluded by the query,
            sorted by score (highest first), `sources` = this source's name,
            `categories` from the catalog and the int64 `row` column (a
            custom source may leave `row` out: :meth:`retrieve_rows` looks the
            ids up and drops those outside the catalog).
        """

    def retrieve_rows(self, query: Query, n: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`retrieve`'s answer as (int64 catalog rows, float64 raw scores), best first, at most `n`.

        What the :class:`Retriever` asks for: it merges rows and builds the candidates once, after the
        merge. The built-in sources compute rows and scores and build candidates only when asked for
        :meth:`retrieve` (each source gathered its items' ids and categories from the catalog's object
        arrays at scattered rows, only for the retriever to read the rows back). This default reads them off
        :meth:`retrieve` (a custom source): its `row` column, else its ids looked up in the catalog; ids
        outside the catalog are dropped, and an item listed twice keeps its first place.
        """
        got = self.retrieve(query, n).head(max(n, 0))
        if ROW in got.columns:
            rows = np.asarray(got.column(ROW), dtype=np.int64)
        else:
            row_of = self.catalog_.row_of
            rows = np.fromiter((row_of.get(i, -1) for i in got.ids.tolist()), dtype=np.int64, count=len(got))
        # catalog items only, each once (its first place)
        ok = np.flatnonzero(rows >= 0)
        _, first = np.unique(rows[ok], return_index=True)
        keep = ok[np.sort(first)]
        return rows[keep], np.asarray(got.scores, dtype=np.float64)[keep]

    def _top(self, rows: np.ndarray, scores: np.ndarray, query: Query, n: int, presorted: bool = False
             ) -> tuple[np.ndarray, np.ndarray]:
        """The best `n` of (rows, scores) that the query does not exclude, best first.

        `presorted`: (rows, scores) are best first already; only the first
        n + n_excluded can be among the answer.
        """
        if presorted:
            rows, scores = rows[:max(n, 0) + query.n_excluded], scores[:max(n, 0) + query.n_excluded]
        if query.n_excluded:
            keep = ~query.excluded.contains(rows)
            rows, scores = rows[keep], scores[keep]
        if presorted:
            return rows[:max(n, 0)], scores[:max(n, 0)]
        best = _best(rows, scores, n)
        return rows[best], scores[best]

    def _candidates(self, rows: np.ndarray, scores: np.ndarray) -> Candidates:
        """(rows, scores), in this order, as this source's candidates."""
        c = self.catalog_
        return Candidates(c.item_ids[rows], scores, np.full(len(rows), self.name, dtype=object), c.categories[rows],
                          {ROW: rows})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class RowSource(Source):
    """A source that computes catalog rows and scores (:meth:`_rows`); :meth:`retrieve` wraps them as candidates
    and :meth:`retrieve_rows` hands them over as they are. The built-in sources are row sources.

    A subclass that overrides :meth:`retrieve` alone is served what its `retrieve` answers (read off it, as
    for any custom source), never the rows its parent computes.
    """

    def retrieve(self, query: Query, n: int) -> Candidates:
        return self._candidates(*self._rows(query, n))

    def retrieve_rows(self, query: Query, n: int) -> tuple[np.ndarray, np.ndarray]:
        if type(self).retrieve is not RowSource.retrieve:  # a subclass changed what `retrieve` answers
            return super().retrieve_rows(query, n)
        return self._rows(query, n)

    @abstractmethod
    def _rows(self, query: Query, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(int64 catalog rows, float64 raw scores), best first, at most `n`, none that the query excludes."""


#: no rows, no scores
_NONE = (_EMPTY_ROWS, np.zeros(0))


def _best(rows: np.ndarray, scores: np.ndarray, n: int) -> np.ndarray:
    """Positions of the best `n` of (rows, scores), best first: by score, ties by catalog row.

    Ties at the n-th place are settled by row too (not by where `argpartition` happens to leave them), so the
    answer depends on the set of (row, score) pairs only, not on their order.
    """
    if n <= 0 or len(rows) == 0:
        return np.zeros(0, dtype=np.intp)
    if len(rows) > n:
        cut = -np.partition(-scores, n - 1)[n - 1]  # the n-th best score
        pick = np.flatnonzero(scores >= cut)
    else:
        pick = np.arange(len(rows))
    return pick[np.lexsort((rows[pick], -scores[pick]))[:n]]


_PARTS = {SEARCHER: "searcher", BOUGHT_TOGETHER: "neighbours", CONTENT: "content"}
_PART_FILES = {SEARCHER: "the ScaNN index", BOUGHT_TOGETHER: "bought_together.parquet",
               CONTENT: "item_content_embeddings.npy"}


class ScannSource(RowSource):
    """`two_tower`: the user's query embedding searched in the bundle's ScaNN index; nothing without one.

    Raw score: the dot product of query and item embeddings.
    """

    config_class = TwoTowerSourceConfig
    needs = (SEARCHER,)

    def _rows(self, query: Query, n: int) -> tuple[np.ndarray, np.ndarray]:
        if query.embedding is None or n <= 0:
            return _NONE
        c = self.catalog_
        want = min(len(c), n + query.n_excluded)
        # a tree + AH index re-orders (and returns at most) as many candidates, and searches as many leaves, as
        # a query for `want` neighbours needs
        idx, scores = c.searcher.search(np.asarray(query.embedding, dtype=np.float32), final_num_neighbors=want,
                                        **search_kwargs(c.index, want))
        return self._top(np.asarray(idx, dtype=np.int64), np.asarray(scores, dtype=np.float64), query, n,
                         presorted=True)


def _gather(indptr: np.ndarray, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of every CSR entry of rows `seeds`, and which seed (index into `seeds`) each belongs to."""
    starts, lens = indptr[seeds], indptr[seeds + 1] - indptr[seeds]
    total = int(lens.sum())
    owner = np.repeat(np.arange(len(seeds)), lens)
    pos = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(starts, lens)
    return pos, owner


class BoughtTogetherSource(RowSource):
    """`bought_together`: co-purchase neighbours of the cart, the last viewed items and the user's latest purchases.

    Raw score of an item: sum over seeds of seed weight x the pair's
    co-purchase cosine (bought_together.parquet). Seeds are never returned.
    """

    config_class = BoughtTogetherSourceConfig
    needs = (BOUGHT_TOGETHER,)

    def _rows(self, query: Query, n: int) -> tuple[np.ndarray, np.ndarray]:
        cfg, c = self.config, self.catalog_
        hist = c.users.get(query.user_id) if query.user_id is not None else None
        parts = [(query.cart, cfg.cart_weight), (query.viewed[-cfg.seed_items:], cfg.viewed_weight),
                 (hist.rows[:cfg.seed_items] if hist is not None else _EMPTY_ROWS, cfg.recent_weight)]
        seeds = np.concatenate([r for r, w in parts if w > 0] or [_EMPTY_ROWS])
        weights = np.concatenate([np.full(len(r), w) for r, w in parts if w > 0] or [np.zeros(0)])
        if len(seeds) == 0 or n <= 0:
            return _NONE
        indptr, nbr, score = c.neighbours
        pos, owner = _gather(indptr, seeds)
        if len(pos) == 0:
            return _NONE
        rows, inv = np.unique(nbr[pos], return_inverse=True)
        total = np.bincount(inv, weights=score[pos] * weights[owner], minlength=len(rows))
        keep = total > 0
        at = np.minimum(np.searchsorted(rows, seeds), len(rows) - 1)  # rows is sorted: the seeds' places in it
        keep[at[rows[at] == seeds]] = False
        return self._top(rows[keep], total[keep], query, n)


#: items per leaf of :class:`ContentIndex` (a leaf is scored whole or skipped whole)
CONTENT_LEAF_SIZE = 256
#: items scored by the first step of :meth:`ContentIndex.search`; each next step reads twice as many
CONTENT_STEP = 2048
#: share of the catalog above which reading leaf after leaf costs more than scoring every row in blocks
FULL_SCAN_SHARE = 0.3
_KMEANS_BRANCH, _KMEANS_ITERS = 8, 6
#: leaves put in order first (the rest only when the search gets to them)
_HEAD_LEAVES = 64
#: slack on a leaf's bound, times |q|: a float32 dot product of unit-norm 16-d rows is off by < 1e-6 |q|
_BOUND_SLACK = 1e-5
#: only items scoring above this are returned by `content`
_SIMILAR = 1e-9


def _kmeans_leaves(x: np.ndarray, idx: np.ndarray, leaf_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`idx` cut into leaves of at most `leaf_size` rows by a k-means tree over `x` (rows of x near each other)."""
    leaves, stack = [], [idx]
    while stack:
        ix = stack.pop()
        if len(ix) <= leaf_size:
            leaves.append(ix)
            continue
        k = int(min(_KMEANS_BRANCH, -(-len(ix) // leaf_size)))
        pts = x.take(ix, axis=0)
        centers = pts[rng.choice(len(ix), k, replace=False)].astype(np.float32)
        for _ in range(_KMEANS_ITERS):
            label = np.argmax(pts @ centers.T - 0.5 * np.einsum("ij,ij->i", centers, centers), axis=1)
            count = np.bincount(label, minlength=k)
            onehot = np.zeros((len(ix), k), dtype=np.float32)
            onehot[np.arange(len(ix)), label] = 1.0
            sums = onehot.T @ pts
            ok = count > 0
            centers[ok] = sums[ok] / count[ok, None]
        groups = [ix[label == j] for j in range(k) if count[j]]
        if len(groups) < 2:  # points k-means cannot tell apart (e.g. identical): cut in order
            leaves += np.array_split(ix, -(-len(ix) // leaf_size))
        else:
            stack += groups
    return leaves


class ContentIndex:
    """Exact top-n search for :class:`ContentSource`: `bonus[category] + tw * (x . q)` over unit rows x.

    Built once per catalog (`Catalog.content_index`, shared by its content
    sources; with its own copy of the embeddings in leaf order, N x d
    float32, so that a leaf is one contiguous read): the items
    of each category (unknown categories form one more group) are cut into
    leaves of at most
    :data:`CONTENT_LEAF_SIZE` items by a k-means tree on their embeddings,
    and each leaf keeps its category, centre c and radius r (the farthest of
    its rows from c). For a query, a leaf's items all score at most
    `bonus[leaf category] + tw * min(c . q + |q| r, |q|)` (x = c + (x - c),
    Cauchy-Schwarz; |x| <= 1), so leaves are scored whole, best bound first,
    until the n-th best score found so far beats every remaining bound.
    The answer is the full scan's (same scores, ties by row): only how much
    of the catalog is read depends on the data (for the benchmark's catalog
    a few thousand items of the seeds' categories; an embedding that does not
    separate items reads more, at worst all of it).

    Args:
        content: (N, d) float32 unit (or zero) rows.
        codes: (N,) int64 category codes, -1 unknown.
        leaf_size: most items per leaf (default :data:`CONTENT_LEAF_SIZE`).
        seed: the k-means initialisation's (the answer does not depend on it).
    """

    def __init__(self, content: np.ndarray, codes: np.ndarray, leaf_size: int | None = None, seed: int = 0):
        leaf_size = int(leaf_size or CONTENT_LEAF_SIZE)
        rng = np.random.default_rng(seed)
        by_cat = np.argsort(codes, kind="stable")
        cuts = np.r_[0, np.flatnonzero(np.diff(codes[by_cat])) + 1, len(by_cat)]
        leaves = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            leaves += _kmeans_leaves(content, by_cat[a:b], leaf_size, rng)
        self.perm = np.concatenate(leaves or [_EMPTY_ROWS]).astype(np.int64)  # rows, leaf after leaf
        # the rows' embeddings in that order: a leaf is read as one contiguous block, not row by row
        self.content = content.take(self.perm, axis=0)
        self.content.flags.writeable = False  # shared by the catalog's content sources
        self.sizes = np.asarray([len(leaf) for leaf in leaves], dtype=np.int64)
        self.start = np.r_[0, np.cumsum(self.sizes)].astype(np.int64)
        self.category = codes[self.perm[self.start[:-1]]]
        self.center = np.zeros((len(leaves), content.shape[1]), dtype=np.float64)
        self.radius = np.zeros(len(leaves), dtype=np.float64)
        for i, leaf in enumerate(leaves):
            pts = content.take(leaf, axis=0)
            c = pts.mean(axis=0, dtype=np.float64).astype(np.float32)
            self.center[i] = c
            self.radius[i] = float(np.sqrt(np.einsum("ij,ij->i", pts - c, pts - c).max(initial=0.0)))

    def __len__(self) -> int:
        return len(self.sizes)

    def search(self, q: np.ndarray, bonus: np.ndarray, tw: float, skip: RowSet, n: int
               ) -> tuple[np.ndarray, np.ndarray] | None:
        """The best `n` rows by `bonus[code] + tw * (x . q)` above 1e-9, `skip` left out: (rows, scores), best first.

        None when, once some items are scored, the leaves that could still
        hold a better one hold more than :data:`FULL_SCAN_SHARE` of the
        catalog: the caller scans it whole (cheaper, same answer).

        Args:
            q: (d,) float32 query.
            bonus: (categories + 1,) float64 per category code (the last slot: unknown category).
            tw: weight of the dot product (> 0).
            skip: rows never returned.
            n: most rows wanted.
        """
        q64 = q.astype(np.float64)
        qn = float(np.sqrt(q64 @ q64))
        leaf_bonus = bonus[self.category]
        bound = leaf_bonus + tw * np.minimum(self.center @ q64 + qn * self.radius, qn) + _BOUND_SLACK * qn
        live = np.flatnonzero(bound > _SIMILAR)
        rest = _EMPTY_ROWS  # leaves after the first _HEAD_LEAVES by bound: sorted only if reached
        if len(live) > _HEAD_LEAVES:
            cut = np.partition(bound[live], len(live) - _HEAD_LEAVES)[len(live) - _HEAD_LEAVES]
            live, rest = live[bound[live] >= cut], live[bound[live] < cut]
        order = live[np.argsort(-bound[live], kind="stable")]
        neg_bound = -bound[order]  # ascending
        rows_k, scores_k = _EMPTY_ROWS, np.zeros(0)
        floor, full, i, step = _SIMILAR, False, 0, CONTENT_STEP
        while n > 0:
            if i == len(order):
                if full:
                    rest = rest[bound[rest] >= floor]
                if len(rest) == 0:
                    break
                order = np.concatenate([order, rest[np.argsort(-bound[rest], kind="stable")]])
                neg_bound, rest = -bound[order], _EMPTY_ROWS
            # leaves still able to beat (or tie) the n-th best so far
            end = i + int(np.searchsorted(neg_bound[i:], -floor, side="right")) if full else len(order)
            if end <= i:
                break
            left = np.cumsum(self.sizes[order[i:end]])
            if full and left[-1] > FULL_SCAN_SHARE * len(self.perm):
                return None  # the bounds do not separate this query's items: a full scan is cheaper
            j = min(end, i + 1 + int(np.searchsorted(left, step)))
            step *= 2
            leaves = order[i:j]
            pos, owner = _gather(self.start, leaves)
            rows = self.perm[pos]
            score = leaf_bonus[leaves][owner] + tw * (self.content.take(pos, axis=0) @ q)
            keep = (score >= floor) if full else (score > _SIMILAR)
            if skip.count:
                keep &= ~skip.contains(rows)
            rows_k, scores_k = np.concatenate([rows_k, rows[keep]]), np.concatenate([scores_k, score[keep]])
            if len(rows_k) >= n:
                best = _best(rows_k, scores_k, n)
                rows_k, scores_k = rows_k[best], scores_k[best]
                floor, full = float(scores_k[-1]), True
            i = j
        best = _best(rows_k, scores_k, n)
        return rows_k[best], scores_k[best]


class ContentSource(RowSource):
    """`content`: items like what is being browsed.

    The query is the last `seed_items` viewed items (the latest weighing 1,
    the one before 1/2, ...), else the cart's last items, else the session
    category alone. Raw score: `text_weight` x the seeds' weighted mean cosine
    of description embeddings + (1 - `text_weight`) x the weighted share of
    seeds in the item's category; for a category alone, the cosine to the
    category's mean embedding and 1 for its items. Only items scoring above 0
    are returned (similar to something), never the seeds. Without content
    embeddings in the bundle the score is the category part alone.

    The best items are found without scoring the catalog: with text, by a
    :class:`ContentIndex` built at :meth:`bind`; by category alone, from each
    category's rows in row order (equal scores: ties go to the lower row).
    :meth:`scores` is the full scan by the definition, the reference both
    agree with (same items, same order, same scores; a dot product may
    differ from the full scan's in its last float32 bit, where the BLAS
    kernel sums a row in a different order depending on its place in the
    block it is given: the full scan is not consistent to that bit itself).
    """

    config_class = ContentSourceConfig

    def bind(self, catalog: Catalog) -> "ContentSource":
        super().bind(catalog)
        self.text_weight_ = self.config.text_weight if catalog.content is not None else 0.0
        codes = catalog.category_codes
        self.index_: ContentIndex | None = None
        if self.text_weight_ == 0:  # scores by category alone: each category's rows, ascending
            by_cat = np.argsort(codes, kind="stable")
            self.category_rows_ = by_cat[codes[by_cat] >= 0]
            self.category_start_ = np.searchsorted(codes[self.category_rows_],
                                                   np.arange(len(catalog.category_names) + 1))
        if catalog.content is None:
            log.info("source %s: the bundle has no content embeddings; similarity is by category only", self.name)
            self.centroids_ = None
        else:
            sums = np.zeros((len(catalog.category_names), catalog.content.shape[1]), dtype=np.float64)
            ok = codes >= 0
            np.add.at(sums, codes[ok], catalog.content[ok])
            self.centroids_ = _unit_rows(sums)
            if self.text_weight_ > 0:
                self.index_ = catalog.content_index()
        return self

    def _query(self, query: Query) -> tuple[np.ndarray, np.ndarray | None, np.ndarray] | None:
        """(category weights (categories + 1,), the text query (d,) float32 or None, seeds) or None: no query."""
        cfg, c = self.config, self.catalog_
        seeds = query.viewed[-cfg.seed_items:] if len(query.viewed) else query.cart[-cfg.seed_items:]
        tw = self.text_weight_
        cat_weight = np.zeros(len(c.category_names) + 1)  # slot -1 (the last) collects unknown categories
        if len(seeds):
            w = 0.5 ** np.arange(len(seeds))[::-1]  # the latest seed weighs 1
            w = w / w.sum()
            np.add.at(cat_weight, c.category_codes[seeds], w)
            cat_weight[-1] = 0.0
            text = (w @ c.content[seeds]).astype(np.float32) if tw > 0 else None
        elif query.category >= 0:
            cat_weight[query.category] = 1.0
            text = self.centroids_[query.category].astype(np.float32) if tw > 0 else None
        else:
            return None
        return cat_weight, text, seeds

    def scores(self, query: Query) -> np.ndarray | None:
        """(N,) float64 raw score of every catalog row (None: no query): the definition, by a full scan."""
        got = self._query(query)
        if got is None:
            return None
        cat_weight, text, _ = got
        c, tw = self.catalog_, self.text_weight_
        score = (1.0 - tw) * cat_weight[c.category_codes]
        if text is not None:
            score = score + tw * matvec(c.content, text)
        return score

    def _rows(self, query: Query, n: int) -> tuple[np.ndarray, np.ndarray]:
        got = self._query(query)
        if got is None or n <= 0:
            return _NONE
        cat_weight, text, seeds = got
        tw = self.text_weight_
        bonus = (1.0 - tw) * cat_weight
        skip = query.excluded.union(seeds)
        if text is not None:
            assert self.index_ is not None
            found = self.index_.search(text, bonus, tw, skip, n)
            if found is None:  # the index gave up (its bounds do not separate this query's items): score every row
                score = self.scores(query)
                assert score is not None
                ok = np.flatnonzero(score > _SIMILAR)
                ok = ok[~skip.contains(ok)]
                best = _best(ok, score[ok], n)
                found = ok[best], score[ok[best]]
            rows, scores = found
        else:
            # one score per category: a category's first n + |skip| rows hold its n best (ties by row)
            cats = np.flatnonzero(bonus[:-1] > _SIMILAR)
            starts, ends = self.category_start_[cats], self.category_start_[cats + 1]
            ends = np.minimum(ends, starts + n + skip.count)
            rows = np.concatenate([self.category_rows_[a:b] for a, b in zip(starts, ends)] or [_EMPTY_ROWS])
            scores = np.repeat(bonus[cats], ends - starts)
            keep = ~skip.contains(rows)
            rows, scores = rows[keep], scores[keep]
            best = _best(rows, scores, n)
            rows, scores = rows[best], scores[best]
        return rows, scores


class RepeatSource(RowSource):
    """`repeat`: the user's own past purchases; raw score purchase lines x 0.5 ** (age / half_life_days)."""

    config_class = RepeatSourceConfig

    def bind(self, catalog: Catalog) -> "RepeatSource":
        super().bind(catalog)
        decay = self.config.half_life_days
        self.scores_ = {u: h.purchases * np.power(0.5, h.age_days / decay) for u, h in catalog.users.items()}
        return self

    def _rows(self, query: Query, n: int) -> tuple[np.ndarray, np.ndarray]:
        hist = self.catalog_.users.get(query.user_id) if query.user_id is not None else None
        if hist is None or n <= 0:
            return _NONE
        return self._top(hist.rows, self.scores_[query.user_id], query, n)


class PopularInCategorySource(RowSource):
    """`popular_in_category`: best sellers of the session category, the viewed and cart items' categories and the
    known user's `user_categories` most bought categories. Raw score: the item's popularity (1 / (1 + rank))."""

    config_class = PopularInCategorySourceConfig

    def bind(self, catalog: Catalog) -> "PopularInCategorySource":
        super().bind(catalog)
        pop = catalog.popular_rows
        codes = catalog.category_codes[pop]
        self.by_category_ = [pop[codes == k] for k in range(len(catalog.category_names))]  # each best first
        # and their scores (read in list order, not gathered from the catalog's column per request)
        self.by_category_scores_ = [catalog.popularity[rows] for rows in self.by_category_]
        self.user_categories_: dict[str, np.ndarray] = {}
        if self.config.user_categories > 0:
            for user, h in catalog.users.items():
                uc = catalog.category_codes[h.rows]
                ok = uc >= 0
                if ok.any():
                    counts = np.bincount(uc[ok], weights=h.purchases[ok])
                    top = np.lexsort((np.arange(len(counts)), -counts))[:self.config.user_categories]
                    self.user_categories_[user] = top[counts[top] > 0]
        return self

    def _rows(self, query: Query, n: int) -> tuple[np.ndarray, np.ndarray]:
        c = self.catalog_
        codes = [np.asarray([query.category]), c.category_codes[query.viewed], c.category_codes[query.cart]]
        if query.user_id is not None and query.user_id in self.user_categories_:
            codes.append(self.user_categories_[query.user_id])
        cats = np.unique(np.concatenate(codes))
        cats = cats[cats >= 0]
        if len(cats) == 0 or n <= 0:
            return _NONE
        # each category's list is best first: its first n + n_excluded rows hold its n best the query allows
        # (gathering every row of the categories cost ~0.2 ms a request at 1M items)
        m = max(n, 0) + query.n_excluded
        rows = np.concatenate([self.by_category_[k][:m] for k in cats])
        scores = np.concatenate([self.by_category_scores_[k][:m] for k in cats])
        return self._top(rows, scores, query, n)


class PopularitySource(RowSource):
    """`popularity`: the bundle's best sellers; raw score 1 / (1 + rank)."""

    config_class = PopularitySourceConfig

    def _rows(self, query: Query, n: int) -> tuple[np.ndarray, np.ndarray]:
        # only the first n + n_excluded can be in the answer: their scores alone are read (the whole list's
        # gather cost ~0.9 ms at 1M items, 100k best sellers)
        rows = self.catalog_.popular_rows[:max(n, 0) + query.n_excluded]
        return self._top(rows, self.catalog_.popularity[rows], query, n, presorted=True)


#: source type -> class (a dotted path to any Source subclass works too)
SOURCES: dict[str, str] = {
    "two_tower": "serving.sources.ScannSource",
    "bought_together": "serving.sources.BoughtTogetherSource",
    "content": "serving.sources.ContentSource",
    "repeat": "serving.sources.RepeatSource",
    "popular_in_category": "serving.sources.PopularInCategorySource",
    "popularity": "serving.sources.PopularitySource",
}


def source_class(type_: str) -> type[Source]:
    """The Source class for a type alias or a dotted path.

    Raises:
        SourceWiringError: not importable or not a Source subclass.
    """
    return load_class(SOURCES, type_, Source, SourceWiringError, "source")


def build_source(config: BaseModel, name: str) -> Source:
    """One source from its parsed config (a custom source's `params` are validated by its `config_class`).

    Raises:
        SourceWiringError: an unimportable class or bad params.
    """
    cls = source_class(config.type)  # type: ignore[attr-defined]
    if isinstance(config, CustomSourceConfig):
        params: Any = config.params
        params_cls = getattr(cls, "config_class", None)
        if params_cls is not None:
            try:
                params = params_cls.model_validate(config.params)
            except ValidationError as e:
                errs = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
                raise SourceWiringError(f"params: {errs}") from None
        return cls(params, name)
    return cls(config, name)


def scale(scores: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] (best 1, worst 0; equal or single scores all 1)."""
    if len(scores) == 0:
        return np.zeros(0)
    lo, hi = float(scores.min()), float(scores.max())
    return (scores - lo) / (hi - lo) if hi > lo else np.ones(len(scores))


@dataclass(frozen=True)
class _Slot:
    source: Source
    quota: int | None
    weight: float
    fallback: bool


class Retriever:
    """The `retrieve` stage: every configured source with its quota, merged, deduplicated and attributed.

    Args:
        slots: (source, quota, weight, fallback) in declared order; bound to `catalog`.
        catalog: the bundle's catalog.

    Adds columns :data:`ROW`, :data:`FOUND_BY` and :data:`RETRIEVAL_SCORE`.
    """

    adds = (ROW, FOUND_BY, RETRIEVAL_SCORE)

    def __init__(self, slots: Sequence[tuple[Source, int | None, float, bool]], catalog: Catalog):
        self.slots = [_Slot(*s) for s in slots]
        self.catalog = catalog
        self.names = tuple(s.source.name for s in self.slots)
        self._primary = [i for i, s in enumerate(self.slots) if not s.fallback]
        self._fallback = [i for i, s in enumerate(self.slots) if s.fallback]
        self._labels = np.asarray(self.names, dtype=object)

    @classmethod
    def from_config(cls, retrieval: RetrievalConfig, catalog: Catalog) -> "Retriever":
        """Build and bind every source of `retrieval.sources`.

        Raises:
            SourceWiringError: naming `retrieval.sources.<i>` and the problem.
        """
        names = source_names(list(retrieval.sources))
        slots = []
        for i, (cfg, name) in enumerate(zip(retrieval.sources, names)):
            try:
                src = build_source(cfg, name).bind(catalog)
            except SourceWiringError as e:
                raise SourceWiringError(f"retrieval.sources.{i} ({name}): {e}") from None
            slots.append((src, cfg.quota, cfg.weight, cfg.fallback))
        return cls(slots, catalog)

    def _ask(self, i: int, query: Query, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, raw scores) of source i, at most its quota."""
        slot = self.slots[i]
        want = n if slot.quota is None else min(slot.quota, n)
        rows, scores = slot.source.retrieve_rows(query, want)
        return rows[:max(want, 0)], scores[:max(want, 0)]

    def retrieve(self, query: Query, n: int) -> Candidates:
        """Up to `n` candidates (more when the primary quotas add up to more), by merged score.

        Args:
            query: the request.
            n: the candidate budget; fallbacks fill up to it.

        Returns:
            Candidates ranked by merged score (see the module docstring), each
            attributed to one source, with the row, found_by and raw
            retrieval_score columns.
        """
        return self.retrieve_within(query, n, None)[0]

    def retrieve_within(self, query: Query, n: int, deadline: float | None) -> tuple[Candidates, list[str]]:
        """:meth:`retrieve` under a time budget: the non-fallback sources run in declared order, and once
        `time.perf_counter()` reaches `deadline` the ones not started yet are skipped. A source that has started
        is not interrupted; the fallbacks always run (they fill what the skipped sources left free).

        Args:
            query: the request.
            n: the candidate budget.
            deadline: `time.perf_counter()` seconds (None: no budget).

        Returns:
            (candidates as :meth:`retrieve`, names of the skipped sources in declared order).
        """
        rows_l, raw_l, merged_l, sid_l = [], [], [], []
        skipped: list[str] = []
        for i in self._primary:
            if skipped or (deadline is not None and time.perf_counter() >= deadline):
                skipped.append(self.names[i])
                continue
            rows, scores = self._ask(i, query, n)
            rows_l.append(rows)
            raw_l.append(scores)
            merged_l.append(self.slots[i].weight * scale(scores))
            sid_l.append(np.full(len(rows), i, dtype=np.int64))
        rows = np.concatenate(rows_l or [_EMPTY_ROWS])
        raw = np.concatenate(raw_l or [np.zeros(0)])
        merged = np.concatenate(merged_l or [np.zeros(0)])
        sid = np.concatenate(sid_l or [_EMPTY_ROWS])
        found = np.zeros(0, dtype=np.int64)
        if len(rows):
            # best merged score first, ties: declared source order, then the source's own order
            order = np.lexsort((np.arange(len(rows)), sid, -merged))
            uniq, first, inv = np.unique(rows[order], return_index=True, return_inverse=True)
            bits = np.zeros(len(uniq), dtype=np.int64)
            np.bitwise_or.at(bits, inv, np.left_shift(np.int64(1), sid[order]))
            first_sorted = np.sort(first)
            keep = order[first_sorted]
            found = bits[inv[first_sorted]]
            rows, raw, merged, sid = rows[keep], raw[keep], merged[keep], sid[keep]
        need = n - len(rows)
        if need > 0 and self._fallback:
            q, taken = query, rows  # `taken`: rows found since `q` was made, excluded before the next ask
            for i in self._fallback:
                if need <= 0:
                    break
                q = q.excluding(taken)
                frows, fscores = self._ask(i, q, need)
                w = self.slots[i].weight
                rows = np.concatenate([rows, frows])
                raw = np.concatenate([raw, fscores])
                merged = np.concatenate([merged, w * scale(fscores) - w - 1.0])
                sid = np.concatenate([sid, np.full(len(frows), i, dtype=np.int64)])
                found = np.concatenate([found, np.full(len(frows), 1, dtype=np.int64) << i])
                need -= len(frows)
                taken = frows
        c = self.catalog
        return Candidates(c.item_ids[rows], merged, self._labels[sid], c.categories[rows],
                          {ROW: rows, FOUND_BY: found, RETRIEVAL_SCORE: raw}), skipped

    def found_by(self, mask: int) -> list[str]:
        """Source names in a `found_by` bit mask, in declared order."""
        return [name for i, name in enumerate(self.names) if mask >> i & 1]

    def __repr__(self) -> str:
        return f"Retriever({list(self.names)})"
