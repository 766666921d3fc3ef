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

Per request everything is NumPy over catalog rows: dictionary lookups only
for the request's own ids. `content` scores the whole catalog (N x d, in
blocks: :func:`matvec`), the one cost that grows with the catalog: about
0.3 ms at 50,000 items and 6 ms at 1,000,000 (16-d), where an index over the
content embeddings would be the next step.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ValidationError

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
        excluded: (N,) bool over catalog rows: never return these.
        n_excluded: `excluded.sum()` (ANN searches over-fetch by it).
        now: request time, timezone-aware.
    """

    user_id: str | None
    embedding: np.ndarray | None
    features: Mapping[str, float] | None
    cart: np.ndarray
    viewed: np.ndarray
    category: int
    excluded: np.ndarray
    n_excluded: int
    now: dt.datetime

    def excluding(self, rows: np.ndarray) -> "Query":
        """The same query with `rows` excluded too."""
        if len(rows) == 0:
            return self
        mask = self.excluded.copy()
        mask[rows] = True
        return dataclasses.replace(self, excluded=mask, n_excluded=int(mask.sum()))


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
        reorder: the searcher's re-ordering depth (manifest `index.reorder`; 0: exact search).
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
                 content: np.ndarray | None = None, reorder: int = 0):
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
        pop_rows = [self.row_of[i] for i in popular if i in self.row_of]
        self.popular_rows = np.asarray(pop_rows, dtype=np.int64)
        self.popularity = np.zeros(len(self.item_ids))
        self.popularity[self.popular_rows] = 1.0 / (1.0 + np.arange(len(pop_rows)))
        self.as_of = pd.Timestamp(as_of) if as_of is not None else None
        self.users = self._users(history)
        self.searcher = searcher
        self.reorder = int(reorder or 0)
        self.neighbours = self._neighbours(bought_together) if bought_together is not None else None
        if content is not None and content.ndim == 2 and content.shape[1] > 0 and content.shape[0] == len(self):
            self.content: np.ndarray | None = _unit_rows(np.asarray(content, dtype=np.float32))
        else:
            self.content = None

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def from_bundle(cls, bundle) -> "Catalog":
        """From a :class:`cartwise.bundle.LoadedBundle`."""
        items = bundle.items
        return cls(bundle.item_ids, items[n.CATEGORY].astype(object).tolist(), bundle.popular, bundle.history,
                   bundle.manifest.get("as_of"), bundle.searcher, bundle.bought_together, bundle.content_embeddings,
                   bundle.manifest.get("index", {}).get("reorder", 0))

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
            custom source may leave `row` out: the retriever looks the ids up
            and drops those outside the catalog).
        """

    def _top(self, rows: np.ndarray, scores: np.ndarray, query: Query, n: int, presorted: bool = False
             ) -> Candidates:
        """The best `n` of (rows, scores) that the query does not exclude, as candidates."""
        keep = ~query.excluded[rows]
        rows, scores = rows[keep], scores[keep]
        if presorted:
            rows, scores = rows[:n], scores[:n]
        else:
            if len(rows) > n:
                part = np.argpartition(-scores, n - 1)[:n] if n > 0 else np.zeros(0, dtype=np.intp)
                rows, scores = rows[part], scores[part]
            order = np.lexsort((rows, -scores))  # ties by catalog row: deterministic
            rows, scores = rows[order], scores[order]
        c = self.catalog_
        return Candidates(c.item_ids[rows], scores, np.full(len(rows), self.name, dtype=object), c.categories[rows],
                          {ROW: rows})

    def _none(self) -> Candidates:
        return Candidates(np.zeros(0, dtype=object), np.zeros(0), np.zeros(0, dtype=object),
                          np.zeros(0, dtype=object), {ROW: _EMPTY_ROWS})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


_PARTS = {SEARCHER: "searcher", BOUGHT_TOGETHER: "neighbours", CONTENT: "content"}
_PART_FILES = {SEARCHER: "the ScaNN index", BOUGHT_TOGETHER: "bought_together.parquet",
               CONTENT: "item_content_embeddings.npy"}


class ScannSource(Source):
    """`two_tower`: the user's query embedding searched in the bundle's ScaNN index; nothing without one.

    Raw score: the dot product of query and item embeddings.
    """

    config_class = TwoTowerSourceConfig
    needs = (SEARCHER,)

    def retrieve(self, query: Query, n: int) -> Candidates:
        if query.embedding is None or n <= 0:
            return self._none()
        c = self.catalog_
        want = min(len(c), n + query.n_excluded)
        # a tree + AH index returns at most its re-ordering depth unless asked for more candidates to re-order
        more = {"pre_reorder_num_neighbors": want} if c.reorder and want > c.reorder else {}
        idx, scores = c.searcher.search(np.asarray(query.embedding, dtype=np.float32), final_num_neighbors=want,
                                        **more)
        return self._top(np.asarray(idx, dtype=np.int64), np.asarray(scores, dtype=np.float64), query, n,
                         presorted=True)


def _gather(indptr: np.ndarray, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of every CSR entry of rows `seeds`, and which seed (index into `seeds`) each belongs to."""
    starts, lens = indptr[seeds], indptr[seeds + 1] - indptr[seeds]
    total = int(lens.sum())
    owner = np.repeat(np.arange(len(seeds)), lens)
    pos = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(starts, lens)
    return pos, owner


class BoughtTogetherSource(Source):
    """`bought_together`: co-purchase neighbours of the cart, the last viewed items and the user's latest purchases.

    Raw score of an item: sum over seeds of seed weight x the pair's
    co-purchase cosine (bought_together.parquet). Seeds are never returned.
    """

    config_class = BoughtTogetherSourceConfig
    needs = (BOUGHT_TOGETHER,)

    def retrieve(self, query: Query, n: int) -> Candidates:
        cfg, c = self.config, self.catalog_
        hist = c.users.get(query.user_id) if query.user_id is not None else None
        parts = [(query.cart, cfg.cart_weight), (query.viewed[-cfg.seed_items:], cfg.viewed_weight),
                 (hist.rows[:cfg.seed_items] if hist is not None else _EMPTY_ROWS, cfg.recent_weight)]
        seeds = np.concatenate([r for r, w in parts if w > 0] or [_EMPTY_ROWS])
        weights = np.concatenate([np.full(len(r), w) for r, w in parts if w > 0] or [np.zeros(0)])
        if len(seeds) == 0 or n <= 0:
            return self._none()
        indptr, nbr, score = c.neighbours
        pos, owner = _gather(indptr, seeds)
        if len(pos) == 0:
            return self._none()
        rows, inv = np.unique(nbr[pos], return_inverse=True)
        total = np.bincount(inv, weights=score[pos] * weights[owner], minlength=len(rows))
        keep = ~np.isin(rows, seeds) & (total > 0)
        return self._top(rows[keep], total[keep], query, n)


class ContentSource(Source):
    """`content`: items like what is being browsed.

    The query is the last `seed_items` viewed items (the latest weighing 1,
    the one before 1/2, ...), else the cart's last items, else the session
    category alone. Raw score: `text_weight` x the seeds' weighted mean cosine
    of description embeddings + (1 - `text_weight`) x the weighted share of
    seeds in the item's category; for a category alone, the cosine to the
    category's mean embedding and 1 for its items. Only items scoring above 0
    are returned (similar to something), never the seeds. Without content
    embeddings in the bundle the score is the category part alone.
    """

    config_class = ContentSourceConfig

    def bind(self, catalog: Catalog) -> "ContentSource":
        super().bind(catalog)
        self.text_weight_ = self.config.text_weight if catalog.content is not None else 0.0
        if catalog.content is None:
            log.info("source %s: the bundle has no content embeddings; similarity is by category only", self.name)
            self.centroids_ = None
        else:
            codes = catalog.category_codes
            sums = np.zeros((len(catalog.category_names), catalog.content.shape[1]), dtype=np.float64)
            known = codes >= 0
            np.add.at(sums, codes[known], catalog.content[known])
            self.centroids_ = _unit_rows(sums)
        return self

    def retrieve(self, query: Query, n: int) -> Candidates:
        cfg, c = self.config, self.catalog_
        seeds = query.viewed[-cfg.seed_items:] if len(query.viewed) else query.cart[-cfg.seed_items:]
        tw = self.text_weight_
        if len(seeds):
            w = 0.5 ** np.arange(len(seeds))[::-1]  # the latest seed weighs 1
            w = w / w.sum()
            cat_weight = np.zeros(len(c.category_names) + 1)  # slot -1 (the last) collects unknown categories
            np.add.at(cat_weight, c.category_codes[seeds], w)
            cat_weight[-1] = 0.0
            score = (1.0 - tw) * cat_weight[c.category_codes]
            if tw > 0:
                score = score + tw * matvec(c.content, (w @ c.content[seeds]).astype(np.float32))
        elif query.category >= 0:
            score = (1.0 - tw) * (c.category_codes == query.category)
            if tw > 0:
                score = score + tw * matvec(c.content, self.centroids_[query.category].astype(np.float32))
        else:
            return self._none()
        rows = np.flatnonzero(score > 1e-9)
        rows = rows[~np.isin(rows, seeds)]
        return self._top(rows, np.asarray(score[rows], dtype=np.float64), query, n)


class RepeatSource(Source):
    """`repeat`: the user's own past purchases; raw score purchase lines x 0.5 ** (age / half_life_days)."""

    config_class = RepeatSourceConfig

    def bind(self, catalog: Catalog) -> "RepeatSource":
        super().bind(catalog)
        decay = self.config.half_life_days
        self.scores_ = {u: h.purchases * np.power(0.5, h.age_days / decay) for u, h in catalog.users.items()}
        return self

    def retrieve(self, query: Query, n: int) -> Candidates:
        hist = self.catalog_.users.get(query.user_id) if query.user_id is not None else None
        if hist is None or n <= 0:
            return self._none()
        return self._top(hist.rows, self.scores_[query.user_id], query, n)


class PopularInCategorySource(Source):
    """`popular_in_category`: best sellers of the session category, the viewed and cart items' categories and the
    known user's `user_categories` most bought categories. Raw score: the item's popularity (1 / (1 + rank))."""

    config_class = PopularInCategorySourceConfig

    def bind(self, catalog: Catalog) -> "PopularInCategorySource":
        super().bind(catalog)
        pop = catalog.popular_rows
        codes = catalog.category_codes[pop]
        self.by_category_ = [pop[codes == k] for k in range(len(catalog.category_names))]  # each best first
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

    def retrieve(self, query: Query, n: int) -> Candidates:
        c = self.catalog_
        codes = [np.asarray([query.category]), c.category_codes[query.viewed], c.category_codes[query.cart]]
        if query.user_id is not None and query.user_id in self.user_categories_:
            codes.append(self.user_categories_[query.user_id])
        cats = np.unique(np.concatenate(codes))
        cats = cats[cats >= 0]
        if len(cats) == 0 or n <= 0:
            return self._none()
        rows = np.concatenate([self.by_category_[k] for k in cats])
        return self._top(rows, c.popularity[rows], query, n)


class PopularitySource(Source):
    """`popularity`: the bundle's best sellers; raw score 1 / (1 + rank)."""

    config_class = PopularitySourceConfig

    def retrieve(self, query: Query, n: int) -> Candidates:
        rows = self.catalog_.popular_rows
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

    def _ask(self, i: int, query: Query, n: int) -> tuple[Candidates, np.ndarray]:
        slot = self.slots[i]
        want = n if slot.quota is None else min(slot.quota, n)
        got = slot.source.retrieve(query, want).head(want)
        if ROW in got.columns:
            rows = np.asarray(got.column(ROW), dtype=np.int64)
        else:  # a custom source that only names ids: keep the catalog's items
            rows, _ = self.catalog.rows(got.ids.tolist())
            got = got.take(np.isin(got.ids, self.catalog.item_ids[rows]))
        return got, rows

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
        rows_l, raw_l, merged_l, sid_l = [], [], [], []
        for i in self._primary:
            got, rows = self._ask(i, query, n)
            rows_l.append(rows)
            raw_l.append(got.scores)
            merged_l.append(self.slots[i].weight * scale(got.scores))
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
            q = query.excluding(rows)
            for i in self._fallback:
                if need <= 0:
                    break
                got, frows = self._ask(i, q, need)
                w = self.slots[i].weight
                rows = np.concatenate([rows, frows])
                raw = np.concatenate([raw, got.scores])
                merged = np.concatenate([merged, w * scale(got.scores) - w - 1.0])
                sid = np.concatenate([sid, np.full(len(frows), i, dtype=np.int64)])
                found = np.concatenate([found, np.full(len(frows), 1, dtype=np.int64) << i])
                need -= len(frows)
                q = q.excluding(frows)
        c = self.catalog
        return Candidates(c.item_ids[rows], merged, self._labels[sid], c.categories[rows],
                          {ROW: rows, FOUND_BY: found, RETRIEVAL_SCORE: raw})

    def found_by(self, mask: int) -> list[str]:
        """Source names in a `found_by` bit mask, in declared order."""
        return [name for i, name in enumerate(self.names) if mask >> i & 1]

    def __repr__(self) -> str:
        return f"Retriever({list(self.names)})"
