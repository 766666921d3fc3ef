"""The serving pipeline, built once per bundle: features -> retrieve -> rank -> rules (+ diversity) -> top K.

Where it sits: built at start-up (and at each hot swap, `serving/hotswap.py`)
from a verified bundle (`cartwise/bundle.py`) and the Feast online store; the
HTTP app (`serving/app.py`), batch recommendations (`cartwise recommend`),
the demo and the A/B simulator call :meth:`Recommender.recommend`.

Per request, each stage taking and returning one :class:`Candidates`:

1. **features**: the user's online features (Feast) and the session context
   (category, device) -> the query tower's embedding, plus the session
   (cart, viewed items, category) and the exclusions as catalog rows -> a
   :class:`serving.sources.Query`. Unknown item ids and categories in the
   request are ignored and reported in `warnings`. A known user with no
   fresh features (or an unreachable store), an unknown user or an anonymous
   one (`flags` say why) with a session (a known category, viewed or cart
   items) is embedded from the session alone: user id "unknown", zero
   statistics, the session's category and device, which the tower was
   trained to read for shoppers it does not know (`models/towers.py`
   `QueryTower`); so `two_tower` serves it beside the session sources.
   Without a session, or with a tower that embeds every session category
   alike, there is no embedding and the session and fallback sources serve.
2. **retrieve**: :class:`serving.sources.Retriever`, the sources of
   `retrieval.sources` with their quotas, merged and deduplicated with
   attribution (how scores are made comparable: `serving/sources.py`).
   Active `insert: true` pins join here.
3. **columns**: :class:`ItemColumns` gathers the candidate columns the later
   stages declare (`in_stock`, `margin`, `price`, `embedding`) from the
   bundle's arrays by catalog row: one NumPy gather each.
4. **rank**: a :class:`Ranker`, then sorted: the bundle's learned ranker
   when it has one (`<bundle>/ranking/`, :class:`serving.ranking.LearnedRanker`:
   purchase probability from the features the model was trained on; its user
   features join stage 1's single lookup; a failed online read keeps the
   retrieval order, flagged `fallback:ranking_features_unavailable`), else
   :class:`RetrievalScoreRanker` (the merged retrieval score). A ranker given
   to the constructor replaces either and is kept across hot swaps.
5. **rules**: the bundle's `rules:` and `diversity:` as a
   :class:`serving.rules.RuleChain`; :class:`RuleStage` also records which
   rules acted on each served item.
6. the :class:`serving.overrides.OverrideTracker` records the ranked top K
   against the served top K.

**Time budgets** (`serving.budgets_ms`, :class:`cartwise.config.BudgetsConfig`;
milliseconds, `null` turns one off; the defaults are generous and only cut a
stuck request):

* `features` (default off: the Redis socket timeouts and the circuit breaker
  of `serving/features.py` bound a dead store already): each online-store read
  of the request runs on a worker thread and the request waits for it at most
  this long. Past it for the user lookup, the request goes on as if the store
  were unavailable (session-only embedding, popularity), flagged
  `fallback:features_over_budget`; past it for one of the learned ranker's
  reads (user x item, user x category rows), the candidates keep the retrieval
  order, flagged `fallback:ranking_features_unavailable`. A Python thread cannot be interrupted, so
  the read itself finishes in the background (its result, or failure, still
  reaches the store's circuit breaker); while :data:`MAX_ABANDONED_READS` such
  reads are still running, further requests do not start another and fall
  back at once.
* `retrieval`: the non-fallback sources run in declared order; once the
  budget is spent the ones not started yet are skipped (flag
  `budget:retrieval`, a warning names them) and the fallback sources still
  fill the list to its length. A source that has started is never
  interrupted, so the stage can overrun by its slowest source.
* `total`: counted from the request's start and checked before the rules. Past
  it the optional stage, diversity, is skipped (flag `budget:total`, with a
  warning); the rules and pins are business-critical and always run.

Flags say what a budget changed in the answer; every overrun of a stage (also
one that left nothing to skip) is counted on the recommender's registry as
`cartwise_budget_overruns_total{stage}` (:class:`BudgetOverruns`).

The pipeline reads the `retrieval`, `rules`, `diversity` and `serving`
sections of the config the bundle was exported with (`config.json` in the
bundle), so a bundle carries its own rules. Wiring is checked when the
:class:`Recommender` is built: an unknown or unimportable source, a source
needing a bundle file the bundle lacks, a rule, diversity method or ranker
reading a column the pipeline cannot fill all raise
:class:`PipelineWiringError` naming the bundle, before any request.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

from cartwise.bundle import LoadedBundle, load_bundle
from cartwise.config import CartwiseConfig, ConfigError, parse_config
from feature_repo import names as n
from serving.candidates import Candidates
from serving.diversity import EMBEDDING, Diversifier
from serving.features import FLOAT32_MAX, OnlineStoreUnavailable, OnlineUserFeatures
from serving.overrides import OverrideTracker, RuleStep
from serving.request import SessionContext
from serving.rules import PIN_SOURCE, PinRule, Rule, RuleChain, RuleContext
from serving.sources import FOUND_BY, RETRIEVAL_SCORE, ROW, Catalog, Query, Retriever, RowSet

log = logging.getLogger("cartwise.serving")

COLD_ANONYMOUS = "cold_start:anonymous"
COLD_UNKNOWN = "cold_start:unknown_user"
FALLBACK_STORE = "fallback:online_store_unavailable"
FALLBACK_FEATURES_BUDGET = "fallback:features_over_budget"
FALLBACK_RANKING = "fallback:ranking_features_unavailable"
BUDGET_RETRIEVAL = "budget:retrieval"
BUDGET_TOTAL = "budget:total"
#: stages with a time budget (`serving.budgets_ms`), as labelled on the overrun counter
BUDGET_STAGES = ("features", "retrieval", "total")
#: online-store reads still running after their request stopped waiting; at this many, requests fall back at once
MAX_ABANDONED_READS = 8
#: config sections the pipeline reads from the bundle's config.json
SERVING_SECTIONS = ("retrieval", "rules", "diversity", "serving")
#: unknown ids named in one warning (the count is always given)
WARN_IDS = 5
#: the query tower's value for "no such user / no session context" (its out-of-vocabulary row, as in training)
UNKNOWN = "unknown"
#: session-context inputs of the query tower (pipelines/train_retrieval.py QUERY_CONTEXT)
SESSION_INPUTS = (n.SESSION_CATEGORY, n.SESSION_DEVICE)
#: session embeddings kept per bundle, by (category, device)
SESSION_CACHE = 4096
_POS = "_pos"  # candidate column: position in the ranked list, to follow items through the rules


class PipelineWiringError(ConfigError):
    """A pipeline that cannot serve this bundle; the message names the bundle, the stage and the reason."""


class FeaturesOverBudget(OnlineStoreUnavailable):
    """The online-store read took longer than `serving.budgets_ms.features`; the request stopped waiting."""


@dataclass
class Recommended:
    """One served item.

    Attributes:
        item_id: the item.
        score: its final score (ranker, then re-weighting rules).
        source: the retrieval source it is attributed to (`pin` for an inserted pin).
        rules: rules that acted on this item: re-weights that changed its
            score, reorders and diversity that moved it into the top K, the
            pin that placed it (filters act on the items they remove).
        found_by: every source that found it, in declared order.
    """

    item_id: str
    score: float
    source: str
    rules: list[str] = field(default_factory=list)
    found_by: list[str] = field(default_factory=list)


@dataclass
class Recommendation:
    """The answer to one request.

    Attributes:
        user_id: as asked.
        items: at most k, in served order.
        bundle_version: the bundle that answered.
        flags: why the answer is not the personalised one (cold start, store down).
        warnings: parts of the request that were ignored (unknown item ids or category).
        fired: rules (and `diversity`) that changed the top K's ids or order, in the order they ran.
    """

    user_id: str | None
    items: list[Recommended]
    bundle_version: str
    flags: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    fired: list[str] = field(default_factory=list)


def _max_ages(root: Path) -> dict[str, dt.timedelta]:
    """`features.max_age_hours` of the config the bundle was exported with (staleness limits per view)."""
    path = root / "config.json"
    hours = json.loads(path.read_text()).get("features", {}).get("max_age_hours", {}) if path.is_file() else {}
    return {view: dt.timedelta(hours=h) for view, h in hours.items()}


def bundle_config(root: Path) -> CartwiseConfig:
    """The serving sections (:data:`SERVING_SECTIONS`) of the config a bundle was exported with.

    Other sections are left out, so a bundle stays servable when a key of,
    say, `model:` is renamed later. A bundle without config.json gets the defaults.

    Raises:
        ConfigError: naming the file and key.
    """
    path = Path(root) / "config.json"
    raw = json.loads(path.read_text()) if path.is_file() else {}
    return parse_config({k: raw[k] for k in SERVING_SECTIONS if k in raw}, source=str(path))


# --- ranking -------------------------------------------------------------------------------------------------


@runtime_checkable
class Ranker(Protocol):
    """The ranking hook: one score per candidate, higher is better.

    An implementation may declare `requires: tuple[str, ...]`, the candidate
    columns it reads (:attr:`ItemColumns.names`, plus `row`, `found_by`,
    `retrieval_score`); they are checked when the pipeline is built and
    filled per request.
    """

    def score(self, candidates: Candidates, query: Query) -> np.ndarray:
        """Args:
            candidates: (m,) retrieved candidates with the required columns.
            query: the request (user id and features, query embedding, session rows, time).

        Returns:
            (m,) float scores in the candidates' order.
        """


class RetrievalScoreRanker:
    """The default ranker: the merged retrieval score (each source's scores min-max scaled to [0, 1] and weighted,
    fallbacks below; see serving/sources.py)."""

    requires: tuple[str, ...] = ()

    def score(self, candidates: Candidates, query: Query) -> np.ndarray:
        return np.asarray(candidates.scores, dtype=np.float64)


# --- candidate columns ---------------------------------------------------------------------------------------


class ItemColumns:
    """Per-item columns from the bundle, gathered by the candidates' `row` column.

    `in_stock` (float64: 1, 0 or NaN for unknown) and `margin` (float64, NaN
    unknown) come from the bundle's item table when it has them, `price`
    too; `embedding` (D float32) is the candidate tower's item embedding.
    Items outside the catalog (inserted pins) get NaN (zeros for `embedding`).

    Args:
        bundle: the loaded bundle.
    """

    def __init__(self, bundle: LoadedBundle):
        import pandas as pd

        items = bundle.items
        cols: dict[str, np.ndarray] = {}
        if n.IN_STOCK in items:
            cols[n.IN_STOCK] = pd.array(items[n.IN_STOCK], dtype="boolean").to_numpy(dtype=np.float64,
                                                                                     na_value=np.nan)
        for name in (n.MARGIN, n.PRICE):
            if name in items:
                cols[name] = pd.to_numeric(items[name], errors="coerce").to_numpy(np.float64)
        if bundle.item_embeddings is not None:
            cols[EMBEDDING] = np.asarray(bundle.item_embeddings, dtype=np.float32)
        self.columns = cols

    @property
    def names(self) -> tuple[str, ...]:
        """Columns this stage can add."""
        return tuple(self.columns)

    def fill(self, candidates: Candidates, names: Sequence[str]) -> Candidates:
        """`candidates` with the columns `names` added (itself when `names` is empty)."""
        if not names:
            return candidates
        rows = np.asarray(candidates.column(ROW))
        known = rows >= 0
        safe = np.where(known, rows, 0)
        out = {}
        for name in names:
            col = self.columns[name][safe]
            if not known.all():
                col[~known] = 0.0 if name == EMBEDDING else np.nan
            out[name] = col
        return candidates.with_columns(**out)


# --- rules, with what each did to each item ------------------------------------------------------------------

_TRACE: ContextVar[list | None] = ContextVar("cartwise_rule_trace", default=None)


class _TracedRule(Rule):
    """A rule that also notes (name, kind, before, after) in the request's trace when it changes the list."""

    def __init__(self, inner: Rule):
        super().__init__(inner.config, inner.name)
        self.inner = inner
        self.kind = inner.kind  # type: ignore[misc]

    @property
    def requires(self) -> tuple[str, ...]:
        return self.inner.requires

    def __call__(self, candidates: Candidates, context: RuleContext) -> Candidates:
        out = self.inner(candidates, context)
        trace = _TRACE.get()
        if trace is not None and out is not candidates:
            trace.append((self.name, self.kind, candidates, out))
        return out


class _TracedDiversity:
    """The diversity stage, traced like :class:`_TracedRule` (kind `reorder`)."""

    name = Diversifier.name

    def __init__(self, inner: Diversifier):
        self.inner = inner
        self.config = inner.config

    @property
    def requires(self) -> tuple[str, ...]:
        return self.inner.requires

    def __call__(self, candidates: Candidates, k: int) -> Candidates:
        out = self.inner(candidates, k)
        trace = _TRACE.get()
        if trace is not None and out is not candidates:
            trace.append((self.name, "reorder", candidates, out))
        return out


class RuleStage:
    """The `rules` stage: a :class:`RuleChain` (its own `apply` decides the list and what fired), plus, per
    served item, the rules that acted on it.

    Args:
        chain: the configured chain.
    """

    def __init__(self, chain: RuleChain):
        self.chain = chain
        traced = [r if isinstance(r, PinRule) else _TracedRule(r) for r in chain.rules]
        self._traced = RuleChain(traced, _TracedDiversity(chain.diversity) if chain.diversity is not None else None)
        self._traced_no_diversity = RuleChain(traced, None)  # a request over its total budget
        self._pin_item = {r.name: r.config.item for r in chain.rules if isinstance(r, PinRule)}

    def apply(self, candidates: Candidates, context: RuleContext, k: int, diversity: bool = True
              ) -> tuple[Candidates, list[str], list[list[str]], list[RuleStep]]:
        """Run the chain and cut to `k`.

        Args:
            candidates: (m,) ranked, with the chain's required columns.
            context: request time, country, flags.
            k: the list length served.
            diversity: False: skip the diversity stage (the rules and pins still run).

        Returns:
            The served candidates, the rules that fired (RuleChain semantics),
            per served item the rules that acted on it, and each rule's change
            to the list in order (for the override tracker: rules and
            diversity from the trace, then one step per fired pin, all pins
            sharing the placement's before and after).
        """
        if not self.chain.rules and (self.chain.diversity is None or not diversity):
            top = candidates.head(k)
            return top, [], [[] for _ in range(len(top))], []
        chain = self._traced if diversity else self._traced_no_diversity
        m = len(candidates)
        trace: list = []
        token = _TRACE.set(trace)
        try:
            out, fired = chain.apply(candidates.with_columns(**{_POS: np.arange(m)}), context, k)
        finally:
            _TRACE.reset(token)
        acted: list[list[str]] = [[] for _ in range(len(out))]
        steps = [RuleStep(name, before, after) for name, _, before, after in trace]
        steps += [RuleStep(r, trace[-1][3] if trace else candidates, out, self._pin_item[r])
                  for r in fired if r in self._pin_item]
        if not trace and not fired:
            return out, fired, acted, steps
        served_at = np.full(m, -1, dtype=np.int64)
        served_at[out.column(_POS)] = np.arange(len(out))
        for name, kind, before, after in trace:
            if kind == "filter":  # acts on the items it removes, which are not served
                continue
            bpos, apos = before.column(_POS), after.column(_POS)
            if kind == "reweight":
                prev = np.full(m, np.nan)
                prev[bpos] = before.scores
                old = prev[apos]
                hit = apos[(after.scores != old) & ~(np.isnan(after.scores) & np.isnan(old))]
            else:  # moved into the top k
                rank = np.full(m, m, dtype=np.int64)
                rank[bpos] = np.arange(len(before))
                top = apos[:k]
                hit = top[rank[top] >= k]
            served = served_at[hit]
            for j in served[served >= 0].tolist():
                acted[j].append(name)
        ids = out.ids.tolist()
        for name in fired:
            item = self._pin_item.get(name)
            if item is not None and item in ids:
                acted[ids.index(item)].append(name)
        return out, fired, acted, steps


# --- the recommender -----------------------------------------------------------------------------------------


def _unknown_warning(where: str, ids: Sequence[str]) -> str:
    uniq = list(dict.fromkeys(ids))
    shown = ", ".join(repr(i) for i in uniq[:WARN_IDS]) + (", ..." if len(uniq) > WARN_IDS else "")
    return f"{where}: ignored {len(uniq)} unknown item id{'s' if len(uniq) > 1 else ''}: {shown}"


#: session devices in the probe of the query tower's NumPy pass (besides "unknown"): the values a shop's
#: requests most likely carry; a tower that knows others has them read from the same lookup table
PROBE_DEVICES = ("mobile", "desktop", "tablet", "app")
#: at most this many catalog categories (evenly spread) in that probe: every value goes through one table
PROBE_CATEGORIES = 200


class Recommender:
    """Answers "what should this shopper see now" from one bundle: the whole serving pipeline, built once.

    Args:
        bundle: a loaded, verified bundle.
        features: online user features (Feast).
        config: the serving sections to use (default: the bundle's own config.json).
        ranker: the ranking stage (default: the bundle's learned ranker, else :class:`RetrievalScoreRanker`).
        registry: Prometheus registry for the rule-override metrics (default:
            a private one; :attr:`registry` either way).

    Raises:
        PipelineWiringError: the configured sources, rules, diversity or
            ranker cannot run on this bundle (naming which and why).
    """

    def __init__(self, bundle: LoadedBundle, features: OnlineUserFeatures, config: CartwiseConfig | None = None,
                 ranker: Ranker | None = None, registry: Any = None):
        self.bundle = bundle
        self.features = features
        where = f"bundle {bundle.root.name}"
        try:
            self.config = config if config is not None else bundle_config(bundle.root)
        except ConfigError as e:
            raise PipelineWiringError(f"{where}: {e}") from None
        q = bundle.manifest["query_inputs"]
        self.string_inputs, self.float_inputs = list(q["strings"]), list(q["floats"])
        self.catalog = Catalog.from_bundle(bundle)
        self.embed_query = self._query_embedder()
        self.embeds_sessions = self._tower_reads_sessions()
        self._session_embedding = lru_cache(maxsize=SESSION_CACHE)(self._embed_session)
        self.n_items = len(bundle.item_ids)
        # per bundle, so a hot-swapped bundle answers with its own catalog's titles and categories
        items = bundle.items.set_index("item_id")
        self.titles = items["title"].astype(object).where(items["title"].notna(), None).to_dict()
        self.categories = items["category"].astype(object).where(items["category"].notna(), None).to_dict()
        #: the ranker given by the caller (kept across hot swaps); None: the bundle's own, or retrieval scores
        self.given_ranker = ranker
        if ranker is None:
            ranker = self._bundle_ranker(where)
        self.ranker: Ranker = ranker if ranker is not None else RetrievalScoreRanker()
        self.item_columns = ItemColumns(bundle)
        try:
            self.retriever = Retriever.from_config(self.config.retrieval, self.catalog)
            chain = RuleChain.from_config(self.config.rules, self.config.diversity)
            available = {*Retriever.adds, *self.item_columns.names}
            chain.check_columns(available)
            lacking = [c for c in getattr(self.ranker, "requires", ()) if c not in available]
            if lacking:
                raise PipelineWiringError(f"ranker {type(self.ranker).__name__} needs columns {lacking} "
                                          f"(available: {sorted(available)})")
        except ConfigError as e:
            raise PipelineWiringError(f"{where}: {e}") from None
        self.rules = RuleStage(chain)
        needed = set(chain.required_columns) | set(getattr(self.ranker, "requires", ()))
        self._fill = tuple(sorted(needed & set(self.item_columns.names)))
        self.tracker = OverrideTracker.from_config(self.config.serving, registry, chain.names)
        self.registry = self.tracker.registry
        self.imputed = ImputedFeatures()
        self.registry.register(self.imputed)
        self.budgets = self.config.serving.budgets_ms
        self.overruns = BudgetOverruns()
        self.registry.register(self.overruns)
        self._reads_lock = threading.Lock()
        self._abandoned_reads = 0

    def _bundle_ranker(self, where: str) -> Ranker | None:
        """The bundle's learned ranker (`<bundle>/ranking/`, :class:`serving.ranking.LearnedRanker`), or None
        when the bundle has none. Its user features join the features stage's single lookup."""
        from serving.ranking import RANKING_DIR, LearnedRanker, PairReader, RankerWiringError, user_refs

        root = self.bundle.root / RANKING_DIR
        if not root.is_dir():
            return None
        store = getattr(self.features, "store", None)
        try:
            pairs = PairReader(store) if store is not None else None
            guarded = getattr(self.features, "guarded", None) or (lambda fn: fn())
            # the ranker's reads: through the store's circuit breaker, each within the features budget
            ranker = LearnedRanker(root, self.catalog, self.categories, pairs,
                                   read=lambda fn: self._within_budget(lambda: guarded(fn)),
                                   max_age=_max_ages(self.bundle.root),
                                   imputed=lambda names: self.imputed.add(names))  # counted with the query's
        except RankerWiringError as e:
            raise PipelineWiringError(f"{where}: ranker: {e}") from None
        if hasattr(self.features, "with_refs"):
            self.features = self.features.with_refs(user_refs())
        return ranker

    @property
    def version(self) -> str:
        return self.bundle.version

    def default_time(self) -> dt.datetime:
        """The time of a request that gives none (`serving.request_time`): now, or the bundle's as-of instant."""
        if self.config.serving.request_time == "bundle" and self.bundle.manifest.get("as_of"):
            return _instant(self.bundle.manifest["as_of"])
        return dt.datetime.now(dt.timezone.utc)

    @classmethod
    def from_bundle_dir(cls, root: Path, features: OnlineUserFeatures | None = None, *, ranker: Ranker | None = None,
                        registry: Any = None) -> "Recommender":
        """Load and verify a bundle (sha256, golden queries), connect to its feature store, build the pipeline.

        Args:
            root: the bundle directory.
            features: an open online-store reader to reuse when it reads the
                bundle's store and service (hot swaps keep the connection).
            ranker: the ranking stage (default: the bundle's learned ranker, else retrieval scores).
            registry: Prometheus registry for the override metrics.

        Raises:
            BundleError: the bundle does not verify or load.
            PipelineWiringError: its config cannot be served (see the class).
        """
        bundle = load_bundle(root)
        store, service = Path(bundle.manifest["feature_store"]), bundle.manifest["feature_services"]["query"]
        if features is None or getattr(features, "key", None) != (str(store), service):
            features = OnlineUserFeatures(store, service, max_age=_max_ages(root))
            features.key = (str(store), service)
        return cls(bundle, features, ranker=ranker, registry=registry)

    # --- stage 1: features ---

    def _read_features(self, user_id: str, now: dt.datetime | None = None) -> dict | None:
        """`self.features.get(user_id, now)`, waited for at most `budgets_ms.features` (:meth:`_within_budget`).

        `now` (the request's time) is what staleness is measured against (`serving/features.py`).

        Raises:
            FeaturesOverBudget: as :meth:`_within_budget`.
            OnlineStoreUnavailable: the store failed (as `features.get`).
        """
        return self._within_budget(lambda: self.features.get(user_id, now))

    def _within_budget(self, read: Callable[[], Any]) -> Any:
        """`read()`, one online-store read of the request (the user lookup, a ranker's pair read), waited for
        at most `budgets_ms.features` (see the module docstring).

        Raises:
            FeaturesOverBudget: not answered within the budget, or too many
                earlier reads are still running in the background.
            Whatever `read` raises.
        """
        budget = self.budgets.features
        if budget is None:
            return read()
        with self._reads_lock:
            if self._abandoned_reads >= MAX_ABANDONED_READS:
                raise FeaturesOverBudget(f"{self._abandoned_reads} online-store reads over budget still running")
        box: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                box["value"] = read()
            except BaseException as exc:  # handed to the waiting request
                box["error"] = exc
            finally:
                with self._reads_lock:
                    done.set()
                    if box.get("abandoned"):
                        self._abandoned_reads -= 1

        threading.Thread(target=run, name="cartwise-online-read", daemon=True).start()
        if not done.wait(budget / 1000.0):
            with self._reads_lock:
                if not done.is_set():
                    box["abandoned"] = True
                    self._abandoned_reads += 1
                    raise FeaturesOverBudget(f"online features not read within {budget:g} ms")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _embed(self, user_id: str, feats: dict | None, context: dict[str, str]) -> np.ndarray:
        """One query-tower call: (D,) float32.

        Args:
            user_id: the id input (:data:`UNKNOWN` for a shopper the tower does not know).
            feats: online features (None: zero statistics).
            context: session inputs by name (:data:`SESSION_INPUTS`).
        """
        feats = feats or {}
        inputs = {}
        for name in self.string_inputs:
            value = user_id if name == n.USER_ID else context.get(name, feats.get(name, UNKNOWN))
            inputs[name] = np.asarray([str(value)], dtype=object)
        inputs.update({name: np.asarray([feats.get(name, 0.0)], dtype=np.float32) for name in self.float_inputs})
        return self.embed_query(inputs)[0]

    def _session_inputs(self, categories: Sequence[str]) -> dict[str, np.ndarray]:
        """Query-tower inputs of shoppers known only by a session in each of `categories` (zero statistics)."""
        m = len(categories)
        inputs = {name: np.asarray([UNKNOWN] * m, dtype=object) for name in self.string_inputs}
        if n.SESSION_CATEGORY in inputs:
            inputs[n.SESSION_CATEGORY] = np.asarray(categories, dtype=object)
        inputs.update({name: np.zeros(m, dtype=np.float32) for name in self.float_inputs})
        return inputs

    def _query_embedder(self) -> Callable[[dict], np.ndarray]:
        """The query tower as requests call it: its NumPy pass where that gives the SavedModel's own
        embeddings on the probe (`models.towers.query_embedder`), else the SavedModel (a bundle without
        golden queries, a tower of another shape, a function given without its module).

        The probe: the bundle's golden users (real features, no session), the same users each in a session
        of a catalog category on a device of :data:`PROBE_DEVICES`, and session-only shoppers of every
        category (at most :data:`PROBE_CATEGORIES`, evenly spread) on every such device.
        """
        from models.towers import query_embedder

        reference = self.bundle.embed_query
        module = getattr(reference, "module", None)
        golden = self.bundle.golden_inputs if module is not None else None
        probe = None
        names = (*self.string_inputs, *self.float_inputs)
        if golden is not None and all(name in golden for name in names):
            every = self.catalog.category_names
            cats = [UNKNOWN, *every[::max(1, -(-len(every) // PROBE_CATEGORIES))]]
            devices = [UNKNOWN, *PROBE_DEVICES]
            pairs = [(c, d) for c in cats for d in devices]
            sessions = self._session_inputs([c for c, _ in pairs])
            if n.SESSION_DEVICE in sessions:
                sessions[n.SESSION_DEVICE] = np.asarray([d for _, d in pairs], dtype=object)
            in_session = dict(golden)  # the golden users again, their session columns replaced below
            rows = len(in_session[self.string_inputs[0]])
            for name, values in ((n.SESSION_CATEGORY, cats), (n.SESSION_DEVICE, devices)):
                if name in in_session:
                    in_session[name] = np.asarray([values[i % len(values)] for i in range(rows)], dtype=object)
            probe = {name: np.concatenate([np.asarray(golden[name]), in_session[name], sessions[name]])
                     for name in names}
        embed = query_embedder(reference, module, self.string_inputs, self.float_inputs, probe)
        if embed.engine_reason is not None:
            # a pass that was checked and rejected is code drift worth seeing; no probe or module is expected
            level = logging.WARNING if probe is not None else logging.INFO
            log.log(level, "bundle %s: the query tower runs in TensorFlow (%s)", self.bundle.root.name,
                    embed.engine_reason)
        return embed

    def _tower_reads_sessions(self) -> bool:
        """Whether the query tower embeds a shopper it does not know differently by session category.

        Not when it has no session inputs (bundles exported before them), or
        when every catalog category gets the "unknown" embedding: a tower
        whose training set never held a session context (a log whose
        "sessions" are purchases days apart, beyond the session view's TTL)
        has no category vocabulary, and its one anonymous embedding would
        put the same two-tower list above every session source.
        """
        names = [UNKNOWN, *self.catalog.category_names]
        if n.SESSION_CATEGORY not in self.string_inputs or len(names) < 2:
            return False
        emb = np.asarray(self.embed_query(self._session_inputs(names)), dtype=np.float32)
        reads = bool(np.abs(emb[1:] - emb[:1]).max() > 1e-6)
        if not reads:
            log.info("bundle %s: the query tower embeds every session category alike (no session context in its "
                     "training data); shoppers known only by their session are served without two_tower",
                     self.bundle.root.name)
        return reads

    def _embed_session(self, category: str, device: str) -> np.ndarray:
        """The embedding of a shopper known only by the session (cached per bundle: see :data:`SESSION_CACHE`)."""
        emb = self._embed(UNKNOWN, None, {n.SESSION_CATEGORY: category, n.SESSION_DEVICE: device})
        emb.setflags(write=False)  # shared by every request of that session context
        return emb

    def _session_context(self, session: SessionContext | None, category: int, viewed: np.ndarray,
                         cart: np.ndarray) -> tuple[dict[str, str], bool]:
        """The query tower's session inputs, and whether the session says anything about the shopper.

        The category is the request's (when the catalog knows it), else the
        category of the latest viewed item, else of the latest cart item: in
        training `session_category` is the category of the last item touched
        in the session (feature_repo/feature_tables.py `session_context`).

        Args:
            session: the request's session (None: none).
            category: the session category's code (-1: none or unknown).
            viewed: (v,) rows of the known viewed items, oldest first.
            cart: (c,) rows of the known cart items, request order.

        Returns:
            ({session_category, session_device}, usable): `usable` when there
            is a known category, viewed or cart item to embed a shopper by.
        """
        if session is None:
            return {n.SESSION_CATEGORY: UNKNOWN, n.SESSION_DEVICE: UNKNOWN}, False
        cat = self.catalog
        name = cat.category_names[category] if category >= 0 else None
        if name is None:
            latest = [r for r in (*viewed[::-1].tolist(), *cart[::-1].tolist()) if cat.categories[r] is not None]
            name = cat.categories[latest[0]] if latest else None
        usable = category >= 0 or len(viewed) > 0 or len(cart) > 0
        return {n.SESSION_CATEGORY: name or UNKNOWN, n.SESSION_DEVICE: session.device or UNKNOWN}, usable

    def _embedding(self, user_id: str | None, flags: list[str], context: dict[str, str], usable: bool,
                   warnings: list[str], now: dt.datetime | None = None) -> tuple[dict | None, np.ndarray | None]:
        """The user side of stage 1: (online features, query embedding).

        A known user with fresh features is embedded from them and the
        session context; anyone else (anonymous, unknown, stale, store down,
        each flagged) from a usable session alone, else not at all.
        """
        def session_only() -> np.ndarray | None:  # None: no usable session, or a tower that cannot read one
            if not (usable and self.embeds_sessions):
                return None
            return self._session_embedding(context[n.SESSION_CATEGORY], context[n.SESSION_DEVICE])

        if user_id is None:
            flags.append(COLD_ANONYMOUS)
            return None, session_only()
        if user_id not in self.catalog.users:
            flags.append(COLD_UNKNOWN)
            return None, session_only()
        try:
            feats = self._read_features(user_id, now)
        except FeaturesOverBudget:
            flags.append(FALLBACK_FEATURES_BUDGET)
            self.overruns.add("features")
            return None, session_only()
        except OnlineStoreUnavailable:
            flags.append(FALLBACK_STORE)
            return None, session_only()
        if feats is None:
            flags.append(COLD_UNKNOWN)
            return None, session_only()
        feats, bad = impute_non_finite(feats, self.float_inputs)
        if bad:
            self.imputed.add(bad)
            warnings.append(f"features: non-finite {', '.join(bad)} served as the training default (0)")
        return feats, self._embed(user_id, feats, context)

    def query(self, user_id: str | None, exclude: Sequence[str] = (), exclude_purchased: bool = False,
              session: SessionContext | None = None) -> tuple[Query, list[str], list[str]]:
        """The features stage: a request as the sources see it.

        Args:
            user_id: the shopper, or None for an anonymous session.
            exclude: item ids never to return.
            exclude_purchased: also exclude the user's past purchases.
            session: the current session: its category and device feed the
                query tower, its items and category the session sources.

        Returns:
            (query, flags, warnings); `query.embedding` is (D,) float32 or
            None (no features and no usable session).
        """
        cat = self.catalog
        flags: list[str] = []
        warnings: list[str] = []
        rows, unknown = cat.rows(list(exclude))
        if unknown:
            warnings.append(_unknown_warning("exclude", unknown))
        excluded = [rows]  # catalog rows, as a RowSet below: no (N,) mask per request
        cart = viewed = np.zeros(0, dtype=np.int64)
        category = -1
        now = self.default_time()
        if session is not None:
            cart, unknown = cat.rows(session.cart)
            if unknown:
                warnings.append(_unknown_warning("session.cart", unknown))
            rev, unknown = cat.rows(session.viewed[::-1])  # a re-viewed item counts at its latest view
            viewed = rev[::-1].copy()
            if unknown:
                warnings.append(_unknown_warning("session.viewed", unknown[::-1]))
            if session.category is not None:
                category = cat.category_code_of.get(session.category, -1)
                if category < 0:
                    warnings.append(f"session.category: ignored unknown category {session.category!r}")
            excluded.append(cart)  # already in the cart
            now = session.time or now
        if exclude_purchased and user_id is not None and user_id in cat.users:
            excluded.append(cat.users[user_id].rows)
        context, usable = self._session_context(session, category, viewed, cart)
        feats, emb = self._embedding(user_id, flags, context, usable, warnings, now)
        never = RowSet(np.concatenate(excluded), len(cat))
        q = Query(user_id, emb, feats, cart, viewed, category, never, never.count, now)
        return q, flags, warnings

    # --- stage 2b: pins that no source found ---

    def _add_pinned(self, candidates: Candidates, context: RuleContext, query: Query,
                    exclude: Sequence[str]) -> Candidates:
        """`RuleChain.add_pinned` on retrieved candidates (which carry their catalog rows): a pin's item is
        looked for by row, and one the request excludes (`exclude`: ids, with the cart's; or an excluded
        catalog row) is not inserted."""
        chain = self.rules.chain
        if not chain.insertable_items:
            return candidates
        rows = np.asarray(candidates.column(ROW))
        row_of = self.catalog.row_of

        def present(item: str) -> bool:
            r = row_of.get(item, -1)
            return r >= 0 and bool((rows == r).any())

        banned = set(exclude)
        new = [(i, row_of.get(i, -1)) for i in chain.pins_to_insert(context, present) if i not in banned]
        new = [(i, r) for i, r in new if not (r >= 0 and query.excluded[r])]
        if not new:
            return candidates
        new_rows = np.asarray([r for _, r in new], dtype=np.int64)
        new = [i for i, _ in new]
        extra = chain.pinned(new, candidates.scores, self.categories,
                             {ROW: new_rows, FOUND_BY: np.zeros(len(new), dtype=np.int64),
                              RETRIEVAL_SCORE: np.full(len(new), np.nan)})
        return candidates.append(extra)

    # --- the whole pipeline ---

    def recommend(self, user_id: str | None, k: int, exclude: list[str] | tuple = (),
                  exclude_purchased: bool = False, session: SessionContext | None = None) -> Recommendation:
        """Top-k items for a user.

        Args:
            user_id: the shopper, or None for an anonymous session.
            k: list length.
            exclude: item ids never to return.
            exclude_purchased: also leave out items this user bought before.
            session: the shopper's current session (validated, time in UTC):
                its cart is never returned; cart, viewed items and category
                feed the session sources; its time is the rules' "now".

        Returns:
            Items with score, source and the rules that acted on them, the
            bundle version, fallback flags (also what a time budget changed:
            see the module docstring) and warnings about ignored input.
        """
        budgets = self.budgets
        start = time.perf_counter()
        query, flags, warnings = self.query(user_id, exclude, exclude_purchased, session)
        context = RuleContext(query.now)
        began = time.perf_counter()
        deadline = began + budgets.retrieval / 1000.0 if budgets.retrieval is not None else None
        cands, skipped = self.retriever.retrieve_within(query, max(self.config.retrieval.k, k), deadline)
        if deadline is not None and time.perf_counter() > deadline:
            self.overruns.add("retrieval")
        if skipped:
            flags.append(BUDGET_RETRIEVAL)
            warnings.append(f"retrieval: over its {budgets.retrieval:g} ms budget, skipped {', '.join(skipped)}")
        # never served: the request's exclusions and the cart, by id (a pin may name an item the catalog lacks)
        cands = self._add_pinned(cands, context, query, [*exclude, *(session.cart if session is not None else ())])
        cands = self.item_columns.fill(cands, self._fill)
        try:
            scores = np.asarray(self.ranker.score(cands, query), dtype=np.float64)
        except OnlineStoreUnavailable as e:  # the ranker's own online reads failed: keep the retrieval order
            if isinstance(e, FeaturesOverBudget):
                self.overruns.add("features")
            flags.append(FALLBACK_RANKING)
            warnings.append(f"ranking: online features unavailable ({e}); candidates kept in retrieval order")
            scores = np.asarray(cands.scores, dtype=np.float64)
        if scores.shape != (len(cands),):
            raise ValueError(f"ranker {type(self.ranker).__name__} returned shape {scores.shape} "
                             f"for {len(cands)} candidates")
        ranked = cands.with_scores(scores).ranked()
        diversity = True
        if budgets.total is not None and (time.perf_counter() - start) * 1000.0 > budgets.total:
            self.overruns.add("total")
            if self.rules.chain.diversity is not None:
                diversity = False
                flags.append(BUDGET_TOTAL)
                warnings.append(f"diversity: skipped, the request was over its total budget of {budgets.total:g} ms")
        served, fired, acted, steps = self.rules.apply(ranked, context, k, diversity=diversity)
        self.tracker.record(ranked, served, fired, k, steps=steps)
        found = served.column(FOUND_BY).tolist()
        items = [Recommended(i, float(s), src, rules, self.retriever.found_by(f) if src != PIN_SOURCE else [])
                 for (i, s, src, _), rules, f in zip(served, acted, found)]
        return Recommendation(user_id, items, self.bundle.version, flags, warnings, fired)


def _instant(text: str) -> dt.datetime:
    """An ISO 8601 instant from a manifest as an aware UTC datetime."""
    t = dt.datetime.fromisoformat(text)
    return (t if t.tzinfo is not None else t.replace(tzinfo=dt.timezone.utc)).astimezone(dt.timezone.utc)


def impute_non_finite(feats: dict, names: Sequence[str]) -> tuple[dict, list[str]]:
    """Online features with NaN, infinite, non-numeric or float32-overflowing values of `names` replaced by 0.

    0 is what training fills a missing user statistic with
    (pipelines/build_dataset.py FILL_VALUES); an infinite value (or a finite
    one past float32's range, infinite once cast for the tower) would make
    the query embedding NaN, which ScaNN refuses.

    Returns:
        (features, names of the imputed features).
    """
    bad = []
    for name in names:
        if name not in feats:
            continue
        try:
            value = float(feats[name])
            ok = bool(np.isfinite(value)) and abs(value) <= FLOAT32_MAX
        except (TypeError, ValueError):
            ok = False
        if not ok:
            bad.append(name)
    if not bad:
        return feats, bad
    return {**feats, **{name: 0.0 for name in bad}}, bad


class ImputedFeatures:
    """Prometheus collector: online feature values served as the training default, by feature."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def add(self, names: Sequence[str]) -> None:
        with self._lock:
            for name in names:
                self.counts[name] = self.counts.get(name, 0) + 1

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily("cartwise_imputed_features", "Non-finite online feature values served as "
                                     "the training default", labels=["feature"])
        with self._lock:
            for name, count in sorted(self.counts.items()):
                family.add_metric([name], count)
        yield family

    def describe(self) -> Iterator[Any]:
        return iter(())


class BudgetOverruns:
    """Prometheus collector: requests over a stage's time budget (`serving.budgets_ms`), by stage."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counts: dict[str, int] = dict.fromkeys(BUDGET_STAGES, 0)

    def add(self, stage: str) -> None:
        with self._lock:
            self.counts[stage] = self.counts.get(stage, 0) + 1

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily("cartwise_budget_overruns", "Requests over a stage's time budget "
                                     "(serving.budgets_ms)", labels=["stage"])
        with self._lock:
            for stage, count in self.counts.items():
                family.add_metric([stage], count)
        yield family

    def describe(self) -> Iterator[Any]:
        return iter(())


class RecommenderMetrics:
    """A Prometheus collector for an app's registry: the metrics of whichever recommender is in service.

    Each :class:`Recommender` (one per bundle) has its own override tracker
    and registry; `serving.app.create_app` registers this collector once,
    `app.state.registry.register(RecommenderMetrics(lambda: slot.current))`,
    which keeps them on `/metrics` across hot swaps without registering the
    new bundle's metrics again. A swap starts the counters from zero, which
    Prometheus reads as a counter reset.

    Args:
        current: returns the recommender in service (one without a
            `registry` contributes nothing).
    """

    def __init__(self, current: Callable[[], Recommender]):
        self.current = current

    def collect(self) -> Iterator[Any]:
        """The metrics of the recommender in service now."""
        registry = getattr(self.current(), "registry", None)
        if registry is not None:
            yield from registry.collect()
