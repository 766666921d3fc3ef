"""The learned ranker at serve time: purchase probability of each candidate, from the features it was trained on.

Where it sits: retrieve (`serving/sources.py`) -> **rank** -> rules -> diversity
(`serving/pipeline.py`). Built once per bundle from `<bundle>/ranking/`
(written by `pipelines/export_ranking.py`); :class:`LearnedRanker` implements
the pipeline's `Ranker` hook.

Per request, the m candidates' feature matrix [m, F] in the model's column order:

* **user** (`user_purchase_stats`, `user_profile`, `user_purchase_windows`):
  the shopper's online features, read once through Feast by the features
  stage (:class:`serving.features.OnlineUserFeatures`, which reads these
  views as well when the bundle has a ranker);
* **item** (`item_purchase_stats`, `item_activity_windows`, `item_content`):
  gathered from the bundle's :class:`feature_repo.item_matrix.ItemFeatureMatrix`, held as one
  row-major block, by catalog row (the fast path: Feast's SDK for 500 items costs 60-110 ms);
* **user x item, user x category** (`user_item_history`,
  `user_category_history`): read online through the online store's own read
  (on the repo's SQLite store with keys serialized without protos,
  `feature_repo.online_stores.string_entity_keys`, and the stored values
  decoded straight to numbers, :meth:`PairReader.matrix`; on others through the
  Feast provider's `online_read`: the SDK's per-row response building is
  what makes it slow) for the pairs that can have a row: those with a row at the bundle's
  as-of instant (`pairs.parquet`, `category_pairs.parquet`) and the
  session's items and their categories. Every other pair has no row, which
  training reads as missing too. So a pair formed after the export, outside
  the session, is not read until the next export (an item bought since
  then, in an earlier session, scores as not bought);
* **request time** (the on-demand views `request_features`,
  `ranking_request_features`): the arithmetic the views themselves call
  (`feature_repo/request_time.py`), on the columns as NumPy arrays, with the
  request time as `request_ts`;
* **source scores** (`names.SOURCE_SCORES`): item-kNN, EASE and the two
  repeat scores from the bundle's `scores/` state, with the repeat weights
  decayed from the bundle's as-of instant to the request time.

Missing values take the training fill (`spec.json`), as
`pipelines/build_ranking_dataset.ranking_features` fills training rows; the
test `tests/serving/test_ranking.py` checks the matrix equals the training
rows' features for the same users at the same instant. The score is the
model's probability (sigmoid of its logit): positive, so the rules'
multiplicative re-weighting keeps its meaning.

A request without user features (anonymous, unknown user, store down) keeps
the retrieval order: the model was trained on customers with a history only.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from feature_repo import definitions, request_time
from feature_repo import names as n
from serving.candidates import Candidates
from feature_repo.item_matrix import TS_PREFIX, ItemFeatureMatrix
from feature_repo.online_stores import OrderedSqliteOnlineStore, string_entity_keys
from serving.features import FLOAT32_MAX, OnlineStoreUnavailable
from serving.sources import ROW, Catalog, Query

RANKING_DIR = "ranking"
_NO_ROWS = np.zeros(0, dtype=np.int64)
#: the category key of an item without a category, as training's join gives it
UNKNOWN_CATEGORY = "unknown"
SECONDS_PER_DAY = 86400.0
#: views by what keys them
USER_VIEWS = ("user_purchase_stats", "user_profile", "user_purchase_windows")
PAIR_VIEW, CATEGORY_VIEW = "user_item_history", "user_category_history"


class RankerWiringError(ValueError):
    """A bundle's ranker that cannot be served (names the file and what is wrong)."""


def user_refs() -> list[str]:
    """`view:feature` references of the numeric user fields the ranker reads (added to the user lookup)."""
    return definitions.numeric_refs(USER_VIEWS)


#: the on-demand views' arithmetic (feature_repo/request_time.py: the functions the views themselves call)
ON_DEMAND = (request_time.request_features, request_time.ranking_request_features)


def _missing(value) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _value(v) -> Any:
    """A Feast ValueProto as a Python scalar (None when unset)."""
    kind = v.WhichOneof("val")
    return None if kind is None or kind == "null_val" else getattr(v, kind)


#: distinct stored values :meth:`PairReader.matrix` keeps decoded (counts, days and flags repeat across rows)
DECODED_VALUES_KEPT = 1 << 16


def _number(value: Any) -> float:
    """A stored value as a float: NaN when missing (filled as training fills it), +inf when it is not a number
    (so that the matrix imputes it and counts it as it does an infinite value)."""
    if value is None:
        return np.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.inf


class ScoreState:
    """Source scores of (user, candidate) pairs: what `pipelines.candidates.CandidateGenerator` computes offline.

    Args:
        directory: `<bundle>/ranking/scores`.
        catalog: the bundle's catalog (maps catalog rows to score columns).
        as_of: the bundle's as-of instant (the repeat weights' reference).
        half_lives: {"repeat": days, "repeat_recent": days}.
    """

    def __init__(self, directory: Path, catalog: Catalog, as_of: pd.Timestamp, half_lives: dict[str, float]):
        items = json.loads((directory / "items.json").read_text())
        col = {item: j for j, item in enumerate(items)}
        self.n = len(items)
        self.col_of_row = np.fromiter((col.get(i, -1) for i in catalog.item_ids.tolist()), dtype=np.int64,
                                      count=len(catalog))
        parts = [np.load(directory / f"knn_{p}.npy", allow_pickle=False) for p in ("data", "indices", "indptr")]
        self.knn = sp.csr_matrix(tuple(parts), shape=(self.n, self.n))
        # its transpose, for reading S[:, j] of the candidates when that is fewer entries than the user's rows
        self.knn_t = self.knn.T.tocsr()
        ease = directory / "ease.npy"
        self.ease = np.load(ease, allow_pickle=False) if ease.is_file() else None
        prof = pd.read_parquet(directory / "profiles.parquet")
        users = prof[n.USER_ID].astype(str).to_numpy()
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.zeros(0, np.int64)
        ends = np.r_[starts[1:], len(users)]
        self.cols = prof["col"].to_numpy(np.int64)
        self.w_long = prof["w_long"].to_numpy(np.float32)
        self.w_recent = prof["w_recent"].to_numpy(np.float32)
        self.span = {users[s]: (int(s), int(e)) for s, e in zip(starts, ends)}
        self.as_of = pd.Timestamp(as_of).timestamp()
        self.half_lives = half_lives

    def _knn(self, cols: np.ndarray, weights: Sequence[np.ndarray | None], targets: np.ndarray) -> list[np.ndarray]:
        """For each weighting w (an array over the user's items, or None for 1): sum over the user's items i of
        w_i S[i, j], for each target column j.

        What `profile @ S` computes offline, from the entries of S that join the user's items (`cols`, sorted
        and distinct) to the targets only (nothing the size of the catalog per request; the entries are
        gathered and placed once for all weightings): the user's rows of S, or the targets' columns where
        those hold fewer entries (a heavy buyer's 1,000+ rows against a few hundred candidates' columns).
        float32 products, summed per target in float64 and rounded to float32 (scipy sums in float32: the
        two differ in the last bits; tests/serving/test_ranking.py allows 2e-6 relative).
        """
        by_row = self.knn.indptr
        by_col = self.knn_t.indptr
        if (by_row[cols + 1] - by_row[cols]).sum() > (by_col[targets + 1] - by_col[targets]).sum():
            return self._knn_by_target(cols, weights, targets)
        S = self.knn
        lo, hi = S.indptr[cols], S.indptr[cols + 1]
        counts = hi - lo
        if counts.sum() == 0:
            return [np.zeros(len(targets), dtype=np.float32) for _ in weights]
        take = np.repeat(lo - np.r_[0, np.cumsum(counts)[:-1]], counts) + np.arange(counts.sum())
        j = S.indices[take]
        data = S.data[take]
        # each neighbour entry to its target's slot (targets are distinct): a search among the m targets,
        # not a sort of the entries (heavy buyers have tens of thousands)
        order = np.argsort(targets)
        ranked = targets[order]
        pos = np.minimum(np.searchsorted(ranked, j), len(ranked) - 1)
        hit = ranked[pos] == j
        slot = pos[hit]
        out = []
        for w in weights:
            v = data if w is None else (np.repeat(w, counts) * data).astype(np.float32)
            sums = np.bincount(slot, weights=v[hit], minlength=len(ranked))
            scored = np.empty(len(targets), dtype=np.float32)
            scored[order] = sums
            out.append(scored)
        return out

    def _knn_by_target(self, cols: np.ndarray, weights: Sequence[np.ndarray | None], targets: np.ndarray
                       ) -> list[np.ndarray]:
        """:meth:`_knn` from the targets' columns of S: each column's entries S[i, j] whose item i is one of the
        user's (`cols` is sorted), weighted and summed per target as the rows' way does."""
        St = self.knn_t
        lo, hi = St.indptr[targets], St.indptr[targets + 1]
        counts = hi - lo
        take = np.repeat(lo - np.r_[0, np.cumsum(counts)[:-1]], counts) + np.arange(counts.sum())
        i = St.indices[take]
        pos = np.minimum(np.searchsorted(cols, i), len(cols) - 1)
        hit = cols[pos] == i
        slot = np.repeat(np.arange(len(targets)), counts)[hit]
        at, data = pos[hit], St.data[take][hit]
        out = []
        for w in weights:
            v = data if w is None else (w[at] * data).astype(np.float32)
            out.append(np.bincount(slot, weights=v, minlength=len(targets)).astype(np.float32))
        return out

    def scores(self, user_id: str, rows: np.ndarray, now: dt.datetime) -> dict[str, np.ndarray]:
        """Every source score of `rows` (catalog rows) for `user_id` at `now`: name -> float32 (m,)."""
        m = len(rows)
        out = {name: np.zeros(m, dtype=np.float32) for name in n.SOURCE_SCORES}
        span = self.span.get(user_id)
        cand = np.where(np.asarray(rows) >= 0, self.col_of_row[np.maximum(rows, 0)], -1)
        ok = cand >= 0
        if span is None or not ok.any():
            return out
        s, e = span
        cols = self.cols[s:e]
        # decayed from the as-of instant to `now` (each line by the same factor, so the sums decay alike)
        age = max(now.timestamp() - self.as_of, 0.0) / SECONDS_PER_DAY
        w_long = (self.w_long[s:e] * 0.5 ** (age / self.half_lives["repeat"])).astype(np.float32)
        w_recent = (self.w_recent[s:e] * 0.5 ** (age / self.half_lives["repeat_recent"])).astype(np.float32)
        c = cand[ok]
        out[n.KNN_SCORE][ok], out[n.KNN_RECENT_SCORE][ok] = self._knn(cols, (None, w_long), c)
        if self.ease is not None:
            ones = sp.csr_matrix((np.ones(len(cols), np.float32), np.arange(len(cols)), [0, len(cols)]),
                                 shape=(1, len(cols)))
            # the user's rows of B at the candidates' columns, read in ascending column order (each row's
            # entries forward in memory: 1.4x less time for heavy buyers), summed as offline, put back in order
            by_col = np.argsort(c)
            ease = np.empty(len(c), dtype=np.float32)
            ease[by_col] = np.asarray(ones @ self.ease[np.ix_(cols, c[by_col])], dtype=np.float32).ravel()
            out[n.EASE_SCORE][ok] = ease
        pos = np.searchsorted(cols, c)
        hit = (pos < len(cols)) & (cols[np.minimum(pos, len(cols) - 1)] == c)
        for name, w in ((n.REPEAT_SCORE, w_long), (n.REPEAT_RECENT_SCORE, w_recent)):
            vals = np.zeros(len(c), dtype=np.float32)
            vals[hit] = w[pos[hit]]
            out[name][ok] = vals
        return out


class PairReader:
    """User x item and user x category rows from the online store through the Feast provider (no SDK response).

    Args:
        store: the Feast FeatureStore of the bundle.
    """

    def __init__(self, store):
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        self._key, self._value = EntityKey, Value
        self.store = store
        self.provider = store._get_provider()
        online = getattr(self.provider, "online_store", None)
        # the repo's SQLite store reads keys serialized without protos (string_entity_keys); others get protos
        self._serialized = online if isinstance(online, OrderedSqliteOnlineStore) else None
        views = definitions.ranking_views()
        self.views = {name: store.get_feature_view(name) for name in (PAIR_VIEW, CATEGORY_VIEW)}
        self.fields = {name: [f.name for f in views[name].features] for name in self.views}
        self._decoded: dict[bytes, float] = {}  # serialized value -> number (`matrix`)

    def read(self, view: str, join_keys: Sequence[str], keys: Sequence[tuple[str, str]]) -> list[dict | None]:
        """One dict of field -> value (None if missing) per key, or None for a key with no row."""
        if not keys:
            return []
        try:
            if self._serialized is not None and self.store.config.entity_key_serialization_version == 3:
                got = self._serialized.read_serialized(self.store.config, self.views[view],
                                                       string_entity_keys(join_keys, keys))
            else:
                V = self._value
                protos = [self._key(join_keys=list(join_keys), entity_values=[V(string_val=a), V(string_val=b)])
                          for a, b in keys]
                got = self.provider.online_read(config=self.store.config, table=self.views[view],
                                                entity_keys=protos, requested_features=self.fields[view])
        except Exception as exc:  # the store failed: a fallback (OnlineUserFeatures.guarded counts it), never a 5xx
            raise OnlineStoreUnavailable(f"{view}: {type(exc).__name__}: {exc}") from exc
        return [None if values is None else {k: _value(v) for k, v in values.items()} for _, values in got]

    def matrix(self, view: str, join_keys: Sequence[str], keys: Sequence[tuple[str, str]],
               fields: Sequence[str]) -> np.ndarray:
        """:meth:`read` as numbers: (len(keys), len(fields)) float64, NaN where a key has no row or a value is
        unset, +inf where a stored value is not a number (:func:`_number`).

        On the repo's SQLite store the stored rows are decoded here: each distinct serialized value once while
        at most :data:`DECODED_VALUES_KEPT` are kept (a heavy buyer's read is ~1,000 values: as protos grouped
        into dicts per key they took 1.2 of the read's 2.9 ms, the SQL 1.7); elsewhere from :meth:`read`.

        Raises:
            OnlineStoreUnavailable: the store failed.
        """
        out = np.full((len(keys), len(fields)), np.nan)
        if not keys:
            return out
        col = {f: j for j, f in enumerate(fields)}
        if self._serialized is None or self.store.config.entity_key_serialization_version != 3:
            for i, values in enumerate(self.read(view, join_keys, keys)):
                for f, v in (values or {}).items():
                    if f in col:
                        out[i, col[f]] = _number(v)
            return out
        serialized = string_entity_keys(join_keys, keys)
        try:
            rows = self._serialized.fetch_serialized(self.store.config, self.views[view], serialized)
        except Exception as exc:  # the store failed, as in `read`
            raise OnlineStoreUnavailable(f"{view}: {type(exc).__name__}: {exc}") from exc
        at: dict[bytes, list[int]] = {}
        for i, key in enumerate(serialized):
            at.setdefault(key, []).append(i)
        decoded, Value = self._decoded, self._value
        ii, jj, vv = [], [], []
        for key, feat, blob, _ in rows:
            j = col.get(feat)
            if j is None:
                continue
            v = decoded.get(blob)
            if v is None:
                v = _number(_value(Value.FromString(blob)))
                if len(decoded) < DECODED_VALUES_KEPT:
                    decoded[blob] = v
            for i in at[key]:
                ii.append(i)
                jj.append(j)
                vv.append(v)
        out[ii, jj] = vv
        return out


class LearnedRanker:
    """The bundle's ranking model as the pipeline's `Ranker` (see the module docstring).

    Args:
        root: `<bundle>/ranking`.
        catalog: the bundle's catalog.
        categories: item id -> category (the bundle's item table).
        pairs: the online reader of user x item / user x category rows
            (None: no online store, every pair missing; tests only).
        read: wraps each online read (the features stage's circuit breaker).
        max_age: per view, the oldest value served (`features.max_age_hours`; default: the view's TTL),
            applied to the item matrix's expiring views at the request time.
        imputed: called with the names of the features a request's matrix held an infinite, non-numeric or
            float32-overflowing value of (served as the training fill); the pipeline counts them.

    Raises:
        RankerWiringError: a file is missing, or the model and its spec disagree.
    """

    requires: tuple[str, ...] = (ROW,)

    def __init__(self, root: Path, catalog: Catalog, categories: dict[str, Any], pairs: PairReader | None,
                 read: Callable[[Callable[[], Any]], Any] | None = None,
                 max_age: dict[str, dt.timedelta] | None = None,
                 imputed: Callable[[Sequence[str]], None] | None = None):
        from models.ranking import load_stacked_scorer

        root = Path(root)
        try:
            self.spec = json.loads((root / "spec.json").read_text())
            self.features = list(self.spec["features"])
            self.fill = np.array([self.spec["fill"][f] for f in self.features], dtype=np.float64)
            items = ItemFeatureMatrix.load(root / "items")
            self.model = load_stacked_scorer(str(root / "ranking_tower"), len(self.features),
                                             probe=self._probe_rows(items))
            self.state = ScoreState(root / "scores", catalog, pd.Timestamp(self.spec["as_of"]),
                                    self.spec["half_life_days"])
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise RankerWiringError(f"{root}: {type(e).__name__}: {e}") from None
        if list(items.item_ids) != catalog.item_ids.tolist():
            raise RankerWiringError(f"{root / 'items'}: item rows differ from the catalog's")
        lacking = [h for h in ("repeat", "repeat_recent") if not isinstance(self.spec["half_life_days"].get(h),
                                                                           (int, float))]
        if lacking:
            raise RankerWiringError(f"{root / 'spec.json'}: half_life_days lacks {lacking}")
        self.catalog = catalog
        self.pairs = pairs
        self.read = read or (lambda fn: fn())
        self.imputed = imputed or (lambda names: None)
        # the item columns as one float64 block, a row per catalog row (the matrix's rows are the catalog's:
        # checked above) and the views' event times last: a request gathers its candidates' rows at once
        # (one column at a time read ~16 scattered values per candidate)
        self.item_fields = [f for f in items.columns if not f.startswith(TS_PREFIX)]
        stamps = [f for f in items.columns if f.startswith(TS_PREFIX)]
        self.item_block = np.empty((len(catalog), len(self.item_fields) + len(stamps)), dtype=np.float64)
        for j, f in enumerate(self.item_fields + stamps):
            self.item_block[:, j] = np.asarray(items.columns[f], dtype=np.float64)
        # views whose values expire: the block column of each item's event time, the view's fields (as
        # block columns), its maximum age
        views = definitions.ranking_views()
        at = {f: j for j, f in enumerate(self.item_fields)}
        self.expiring = []
        for j, f in enumerate(stamps, start=len(self.item_fields)):
            view = f[len(TS_PREFIX):]
            limit = (max_age or {}).get(view) or getattr(definitions, view).ttl
            fields = [at[x.name] for x in views[view].features if x.name in at]
            self.expiring.append((j, np.asarray(fields, dtype=np.intp), limit.total_seconds()))
        self.user_fields = [ref.split(":", 1)[1] for ref in user_refs()]
        self.pair_fields = [f.name for f in views[PAIR_VIEW].features]
        self.category_fields = [f.name for f in views[CATEGORY_VIEW].features]
        # the category key of each row, as training joins it (feature_tables.category_keys), as a code into
        # the sorted key names (requests compare codes, not strings)
        keys = [UNKNOWN_CATEGORY if _missing(categories.get(i)) else str(categories.get(i))
                for i in catalog.item_ids.tolist()]
        names, codes = np.unique(np.array([*keys, UNKNOWN_CATEGORY], dtype=object), return_inverse=True)
        self.category_names: np.ndarray = names
        self.category_code = codes[:-1].astype(np.int64)
        self.unknown_category = int(codes[-1])
        self.pair_rows, self.category_pairs = self._pair_keys(root, catalog, {k: c for c, k in enumerate(names)})
        computed = {*self.user_fields, *items.columns, *self.pair_fields, *self.category_fields,
                    *n.SOURCE_SCORES, *(f.name for fn in ("request_features", n.RANKING_REQUEST_VIEW)
                                         for f in views[fn].features)}
        unknown = [f for f in self.features if f not in computed]
        if unknown:
            raise RankerWiringError(f"{root / 'spec.json'}: the model reads {unknown}, which serving does not compute")

    def _probe_rows(self, items: ItemFeatureMatrix, rows: int = 256) -> np.ndarray:
        """Rows like those served, to check the NumPy scorer on: catalog items' own feature values (the
        bundle's item matrix), the training fill for every other column."""
        n_items = len(items.item_ids)
        take = np.random.default_rng(0).integers(0, n_items, min(rows, n_items)) if n_items else np.zeros(0, int)
        x = np.tile(self.fill, (len(take), 1))
        for j, f in enumerate(self.features):
            col = items.columns.get(f)
            if col is not None and not f.startswith(TS_PREFIX):
                v = np.asarray(col, dtype=np.float64)[take]
                x[:, j] = np.where(np.isnan(v), self.fill[j], v)
        return x.astype(np.float32)

    @staticmethod
    def _pair_keys(root: Path, catalog: Catalog,
                   category_code: dict[str, int]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """user -> catalog rows with a user x item row; user -> codes (`category_code`) of the catalog's
        categories with a user x category row, sorted (a category no catalog item has is never a candidate's)."""
        try:
            pairs = pd.read_parquet(root / "pairs.parquet", columns=[n.USER_ID, n.ITEM_ID])
            cats = pd.read_parquet(root / "category_pairs.parquet", columns=[n.USER_ID, n.CATEGORY_KEY])
        except (OSError, KeyError, ValueError) as e:
            raise RankerWiringError(f"{root}: pair keys: {type(e).__name__}: {e}") from None
        rows = pairs[n.ITEM_ID].map(catalog.row_of).fillna(-1).to_numpy(np.int64)
        pairs = pairs.assign(_row=rows)[rows >= 0]
        by_user = {u: np.unique(g.to_numpy(np.int64)) for u, g in pairs.groupby(n.USER_ID, sort=False)["_row"]}
        code = cats[n.CATEGORY_KEY].astype(str).map(category_code).fillna(-1).to_numpy(np.int64)
        cats = cats.assign(_code=code)[code >= 0]
        by_cat = {u: np.unique(g.to_numpy(np.int64)) for u, g in cats.groupby(n.USER_ID, sort=False)["_code"]}
        return by_user, by_cat

    def score(self, candidates: Candidates, query: Query) -> np.ndarray:
        """Purchase probabilities (m,) of the candidates; the retrieval scores for a shopper without features."""
        if query.user_id is None or query.features is None or len(candidates) == 0:
            return np.asarray(candidates.scores, dtype=np.float64)
        x = self.matrix(np.asarray(candidates.column(ROW), dtype=np.int64), query)
        logits = self.model(x.astype(np.float32))
        return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))

    def _known_rows(self, user_id: str, query: Query) -> np.ndarray:
        """Catalog rows the shopper can have a user x item row for, sorted and distinct: one at the bundle's as-of
        instant, or in the session."""
        rows = self.pair_rows.get(user_id, _NO_ROWS)
        if len(query.cart) or len(query.viewed):
            rows = np.unique(np.concatenate([rows, np.asarray(query.cart, np.int64),
                                             np.asarray(query.viewed, np.int64)]))
        return rows

    def raw(self, rows: np.ndarray, query: Query) -> dict[str, np.ndarray]:
        """The unfilled ranking_v1 columns of the candidates at `rows`, float64 (NaN where a value is missing),
        plus `request_ts`."""
        m = len(rows)
        user = str(query.user_id)
        feats = query.features or {}
        cols: dict[str, np.ndarray] = {}
        for f in self.user_fields:
            cols[f] = np.full(m, _number(feats.get(f)))
        known = rows >= 0
        everything = bool(known.all())
        safe = rows if everything else np.where(known, rows, 0)
        block = self.item_block[safe]
        if not everything:
            block[~known] = np.nan
        now = query.now.timestamp()
        for j, fields, limit in self.expiring:  # older than the view's max age at the request: missing
            stale = (now - block[:, j]) > limit
            if stale.any():
                block[np.ix_(stale, fields)] = np.nan
        for j, f in enumerate(self.item_fields):
            cols[f] = block[:, j]
        for f in (*self.pair_fields, *self.category_fields):
            cols[f] = np.full(m, np.nan)
        known_rows = self._known_rows(user, query)
        # candidates that can have a user x item row (known_rows is sorted)
        if len(known_rows):
            pos = np.minimum(np.searchsorted(known_rows, rows), len(known_rows) - 1)
            at = np.flatnonzero(known & (known_rows[pos] == rows))
        else:
            at = _NO_ROWS
        if self.pairs is not None and len(at):
            items = self.catalog.item_ids[rows[at]].tolist()
            got = self.read(lambda: self.pairs.matrix(PAIR_VIEW, [n.USER_ID, n.ITEM_ID], [(user, i) for i in items],
                                                      self.pair_fields))
            for j, f in enumerate(self.pair_fields):
                cols[f][at] = got[:, j]
        # user x category rows exist for the categories of what the shopper bought (or has in the session)
        codes = self.category_code[safe]
        if not everything:
            codes[~known] = self.unknown_category
        have = self.category_pairs.get(user, _NO_ROWS)
        if len(known_rows):
            have = np.union1d(have, self.category_code[known_rows])
        wanted = np.intersect1d(have, codes)  # sorted codes, i.e. key names in sorted order
        if self.pairs is not None and len(wanted):
            names = self.category_names[wanted].tolist()
            got = self.read(lambda: self.pairs.matrix(CATEGORY_VIEW, [n.USER_ID, n.CATEGORY_KEY],
                                                      [(user, c) for c in names], self.category_fields))
            pos = np.minimum(np.searchsorted(wanted, codes), len(wanted) - 1)
            hit = np.flatnonzero(wanted[pos] == codes)
            for j, f in enumerate(self.category_fields):
                cols[f][hit] = got[pos[hit], j]
        cols[n.REQUEST_TS] = np.full(m, float(int(query.now.timestamp())))
        return cols

    def matrix(self, rows: np.ndarray, query: Query) -> np.ndarray:
        """The model's input [m, F] (float64 before the model's float32 cast): raw columns, on-demand features,
        source scores, missing values filled as in training; infinite, non-numeric and float32-overflowing
        values filled the same way and counted (`imputed`)."""
        cols = self.raw(rows, query)
        for fn in ON_DEMAND:
            cols.update(fn(cols))
        cols.update(self.state.scores(str(query.user_id), rows, query.now))
        x = np.empty((len(rows), len(self.features)), dtype=np.float64)
        for j, f in enumerate(self.features):
            x[:, j] = cols[f]
        # infinite, not a number (+inf, `_number`) or past float32: imputed like a missing value, and counted
        wrong = np.abs(x) > FLOAT32_MAX
        if wrong.any():
            self.imputed([self.features[j] for j in np.flatnonzero(wrong.any(axis=0))])
        bad = np.isnan(x) | wrong
        if bad.any():
            x[bad] = np.broadcast_to(self.fill, x.shape)[bad]
        return x
