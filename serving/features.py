"""Online feature lookups through Feast, with staleness enforced at read time.

Where it sits: request -> **online features** (Feast online store: SQLite by
default, Redis in production) -> query tower / ranking -> ScaNN. User and
session features are read here: through Feast's SDK, or on the repo's SQLite
store straight by serialized key (the same rows, without the SDK's response
objects); candidate item features come from the item feature matrix
(`feature_repo/item_matrix.py`), not row by row.

Feast does not filter online values by TTL (feast#6821): a value written
long ago is returned as if it were fresh. :class:`OnlineFeatureReader` reads
each value's event time and treats a value older than its view's maximum age
(default: the view's TTL) as missing, and reports it.

An unreachable store must not make every request wait for it. Two things
bound that wait in :class:`OnlineUserFeatures`:

* a **circuit breaker** (:class:`CircuitBreaker`): after a failed read, reads
  fail fast (``OnlineStoreUnavailable`` at once, so the request falls back to
  popularity without touching the store) for ``cooldown`` seconds; then one
  trial read goes through (half-open) while every other read keeps failing
  fast; its success closes the breaker, its failure opens it for another
  cool-down. ``ping()`` (``/health/ready``) goes through the same breaker:
  ``unavailable`` at once while open, at most one probe per cool-down.
* **short socket timeouts** for a Redis store (:data:`REDIS_SERVING_TIMEOUTS`),
  set on the serving process's own copy of the store config, not in
  feature_store.yaml, so that materialization's large pipelined writes keep
  redis-py's defaults. They bound a host that does not answer (a black hole,
  a hung server). A refused connection fails at once but redis-py still
  retries it 3 times with exponential backoff (about 3-4 s in all, not
  settable through Feast's ``connection_string``): the breaker is what keeps
  that to one read per cool-down.
"""
from __future__ import annotations

import copy
import datetime as dt
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from feast import FeatureStore

from feature_repo import names as n

log = logging.getLogger(__name__)

TS_SUFFIX = "__ts"
#: the largest magnitude a float32 model input holds: a finite float64 beyond it turns infinite in the cast
#: (the query tower's and the ranker's inputs impute such values, serving/pipeline.py and serving/ranking.py)
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: redis-py socket timeouts (seconds) of the serving reads, appended to a Redis `connection_string` that does
#: not set them itself (Feast passes `key=value` items of the string to `redis.Redis(**kwargs)`). A user's
#: features are one small HMGET pipeline, answered in well under a millisecond by a healthy server.
REDIS_SERVING_TIMEOUTS = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}
#: seconds the breaker stays open after a failed read before letting one trial read through
DEFAULT_COOLDOWN = 5.0


class OnlineStoreUnavailable(RuntimeError):
    """The online store could not be read; serving falls back to popularity."""


@dataclass
class OnlineRead:
    """Values of one lookup: one dict per entity row (feature -> value or None), and what was stale."""

    rows: list[dict[str, Any]]
    stale: list[str] = field(default_factory=list)


class OnlineFeatureReader:
    """Reads features of one or more views for entity rows, dropping stale values.

    Args:
        store: a Feast FeatureStore.
        refs: `view:feature` references or a FeatureService (a projection renamed in it,
            `view.with_name(alias)`, is answered under its alias, as Feast answers it).
        max_age: per view name, the oldest age a value may have (default: the view's TTL;
            a view with no TTL is never stale).
    """

    def __init__(self, store: FeatureStore, refs, max_age: dict[str, dt.timedelta] | None = None):
        self.store = store
        self.refs = refs
        # (view, feature, the name Feast answers it under: the projection's alias, else the view)
        if hasattr(refs, "feature_view_projections"):
            self.features = [(p.name, f.name, p.name_to_use()) for p in refs.feature_view_projections
                             for f in p.features]
            remapped = any(p.join_key_map for p in refs.feature_view_projections)
        else:
            self.features = [(*r.split(":", 1), r.split(":", 1)[0]) for r in refs]
            remapped = False
        pairs = [(view, feat) for view, feat, _ in self.features]
        self.pairs = pairs
        ttl = {}
        for view, _ in pairs:
            if view not in ttl:
                try:
                    fv = store.get_feature_view(view)
                    ttl[view] = fv.ttl if fv.ttl and fv.ttl.total_seconds() > 0 else None
                except Exception:  # an on-demand view has no stored time
                    ttl[view] = None
        self.max_age = {**ttl, **(max_age or {})}
        # a projection reading other join keys (`with_join_key_map`): the SDK maps them
        self._direct = None if remapped else self._direct_views()

    def _read_direct(self, entity_rows: list[dict]) -> dict[str, list]:
        """What `get_online_features(...).to_dict(include_event_timestamps=True)` answers, read by serialized
        key: `view__feature` -> values and `view__feature__ts` -> unix seconds (0 where there is no row)."""
        from feast.type_map import feast_value_type_to_python_type

        from feature_repo.online_stores import string_entity_keys

        resp: dict[str, list] = {}
        for name, (fv, join_keys, feats) in self._direct.items():
            keys = string_entity_keys(join_keys, [[row[k] for k in join_keys] for row in entity_rows])
            got = self._online.read_serialized(self.store.config, fv, keys)
            for feat in feats:
                values, stamps = [], []
                for ts, row in got:
                    v = row.get(feat) if row is not None else None
                    values.append(None if v is None else feast_value_type_to_python_type(v))
                    stamps.append(int(ts.timestamp()) if ts is not None and row is not None else 0)
                resp[f"{name}__{feat}"] = values
                resp[f"{name}__{feat}{TS_SUFFIX}"] = stamps
        return resp

    def _direct_views(self) -> dict[str, tuple[Any, list[str], list[str]]] | None:
        """{the name answered under (alias or view): (FeatureView, its join keys, the features read)} when every
        view can be read as the ranker reads user x item rows: straight from the repo's SQLite store by
        serialized key (`OrderedSqliteOnlineStore.read_serialized`, string join keys, key serialization version
        3); None otherwise (Redis, an on-demand view, other keys): the SDK. The join keys are kept (Feast's
        `join_keys` property builds its list anew on every call)."""
        from feature_repo.online_stores import OrderedSqliteOnlineStore

        online = getattr(self.store._get_provider(), "online_store", None)
        if not isinstance(online, OrderedSqliteOnlineStore) or self.store.config.entity_key_serialization_version != 3:
            return None
        views = {}
        for view, _, name in self.features:
            if name in views:
                continue
            try:
                fv = self.store.get_feature_view(view)
            except Exception:  # an on-demand view: computed by the SDK
                return None
            if not fv.join_keys or any(str(c.dtype) != "String" for c in fv.entity_columns):
                return None
            views[name] = (fv, list(fv.join_keys), [])
        for _, feat, name in self.features:
            views[name][2].append(feat)
        self._online = online
        self._join_keys = sorted({k for _, keys, _ in views.values() for k in keys})
        return views

    def read(self, entity_rows: list[dict], now: dt.datetime | None = None) -> OnlineRead:
        """Look up `entity_rows`; values older than their view's max age come back as None.

        On the repo's SQLite store the rows are read by serialized key, without the SDK's request and
        response objects (a request's user + session lookup p50 0.24 ms through the SDK, 0.11 ms so:
        benchmarks/bench_features.py, 2026-11-28; tests/feature_repo/test_online_stores.py reads both ways
        and compares); elsewhere through the SDK.

        Args:
            entity_rows: join keys per row, e.g. `[{"user_id": "17850"}]`.
            now: the request time (default: now, UTC).

        Raises:
            OnlineStoreUnavailable: the store raised.
        """
        now = now or dt.datetime.now(dt.timezone.utc)
        resp = None
        if self._direct is not None and all(isinstance(row.get(k), str) for row in entity_rows
                                            for k in self._join_keys):
            try:
                resp = self._read_direct(entity_rows)
            except (sqlite3.Error, OSError) as exc:  # the store failed: a fallback, never a 5xx
                raise OnlineStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
            except Exception as exc:  # noqa: BLE001  our reading code, not the store: the SDK from now on
                log.warning("direct online read failed (%s: %s); reading through Feast's SDK from now on",
                            type(exc).__name__, exc)
                self._direct = None
        if resp is None:
            try:
                resp = self.store.get_online_features(features=self.refs, entity_rows=entity_rows,
                                                      full_feature_names=True).to_dict(include_event_timestamps=True)
            except Exception as exc:  # any store failure is a fallback, never a 5xx
                raise OnlineStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        out = OnlineRead(rows=[{} for _ in entity_rows])
        now_s = now.timestamp()
        for view, feat, name in self.features:
            key = f"{name}__{feat}"
            values = resp.get(key, [None] * len(entity_rows))
            stamps = resp.get(key + TS_SUFFIX, [0] * len(entity_rows))
            limit = self.max_age.get(view)
            for i, (v, ts) in enumerate(zip(values, stamps)):
                if v is not None and limit is not None and ts and now_s - ts > limit.total_seconds():
                    out.stale.append(f"{name}:{feat}")
                    v = None
                out.rows[i][feat] = v
        return out


def _float_or_as_is(value: Any) -> Any:
    """A stored value as a float (a missing one as 0.0, what training fills a user statistic with); one that is
    not a number as it is, for the stage that reads it to impute and count (a `float()` here raised, a 500)."""
    if value is None:
        return 0.0
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


class CircuitBreaker:
    """Closed -> (a read fails) open for `cooldown` s -> half-open: one trial read -> closed or open again.

    Thread-safe: serving calls it from several request threads at once. While
    the trial read is in flight every other caller is refused (fails fast).

    Args:
        cooldown: seconds to refuse reads after a failure.
        clock: monotonic seconds (a test may pass its own).
    """

    def __init__(self, cooldown: float = DEFAULT_COOLDOWN, clock: Callable[[], float] = time.monotonic):
        if cooldown < 0:
            raise ValueError(f"cooldown must be >= 0, got {cooldown}")
        self.cooldown, self.clock = cooldown, clock
        self._lock = threading.Lock()
        self._retry_at: float | None = None  # None: closed
        self._trial = False  # the half-open trial read is in flight
        self.last_error: str | None = None
        self.opened = 0  # closed -> open transitions
        self.refused = 0  # reads failed fast
        self.trials = 0  # half-open trial reads let through

    @property
    def state(self) -> str:
        with self._lock:
            if self._retry_at is None:
                return "closed"
            return "half_open" if self._trial or self.clock() >= self._retry_at else "open"

    def allow(self) -> bool:
        """True: read the store (closed, or this caller is the trial read). False: fail fast."""
        with self._lock:
            if self._retry_at is None:
                return True
            if self._trial or self.clock() < self._retry_at:
                self.refused += 1
                return False
            self._trial = True
            self.trials += 1
            return True

    def succeeded(self) -> None:
        with self._lock:
            self._retry_at, self._trial, self.last_error = None, False, None

    def failed(self, error: str) -> None:
        with self._lock:
            if self._retry_at is None:
                self.opened += 1
            self._retry_at, self._trial, self.last_error = self.clock() + self.cooldown, False, error

    def released(self) -> None:
        """The trial read ended without a verdict (an unexpected error): the next caller may try again."""
        with self._lock:
            self._trial = False

    def refusal(self) -> OnlineStoreUnavailable:
        with self._lock:
            wait = max(0.0, (self._retry_at or 0.0) - self.clock())
            return OnlineStoreUnavailable(f"circuit open for {wait:.1f}s more after: {self.last_error}")


def _with_serving_timeouts(store: FeatureStore, timeouts: dict[str, float] | None) -> None:
    """Append `timeouts` to a Redis online store's connection string (in memory, this store only), unless the
    string sets them already. Before the first read: Feast builds its Redis client from the string once."""
    online = store.config.online_store
    if not timeouts or getattr(online, "type", None) != "redis":
        return
    conn = online.connection_string
    have = {item.split("=", 1)[0].strip() for item in conn.split(",") if "=" in item}
    extra = [f"{k}={v}" for k, v in timeouts.items() if k not in have]
    if extra:
        online.connection_string = ",".join([conn, *extra])


class OnlineUserFeatures:
    """The query tower's user features from the online store, behind a circuit breaker.

    Args:
        repo_path: the Feast repo (feature_store.yaml) the bundle was built with.
        service: feature service name (`retrieval_query_v1`).
        max_age: per view, the oldest value served (default: the view's TTL).
        cooldown: seconds reads fail fast after a failed read (see :class:`CircuitBreaker`).
        redis_timeouts: redis-py socket timeouts for a Redis store whose connection string does not set them
            (default :data:`REDIS_SERVING_TIMEOUTS`; None or {}: redis-py's defaults, i.e. none).
    """

    def __init__(self, repo_path: Path, service: str, max_age: dict[str, dt.timedelta] | None = None,
                 cooldown: float = DEFAULT_COOLDOWN, redis_timeouts: dict[str, float] | None = REDIS_SERVING_TIMEOUTS):
        if not (Path(repo_path) / "feature_store.yaml").is_file():
            raise FileNotFoundError(f"{repo_path}/feature_store.yaml not found (feature store of the bundle)")
        self.store = FeatureStore(repo_path=str(repo_path))
        _with_serving_timeouts(self.store, redis_timeouts)
        self.breaker = CircuitBreaker(cooldown)
        self.service = self.store.get_feature_service(service)
        self._max_age = max_age
        self.reader = OnlineFeatureReader(self.store, self.service, max_age)
        self.names = [feat for _, feat in self.reader.pairs]
        #: the service's own features (`with_refs` adds others, e.g. the ranker's user views)
        self.query_names = list(self.names)
        self.last_stale: list[str] = []

    def get(self, user_id: str, now: dt.datetime | None = None) -> dict[str, float] | None:
        """Features of one user, or None when the store has no fresh value for any of them.

        Raises:
            OnlineStoreUnavailable: the store raised, or the breaker is open (raised at once).
        """
        got = self._read([{n.USER_ID: user_id}], now)
        self.last_stale = got.stale
        values = got.rows[0]
        if all(values.get(name) is None for name in self.query_names):  # judged on the service's own features
            return None
        return {k: _float_or_as_is(v) for k, v in values.items()}

    def _read(self, entity_rows: list[dict], now: dt.datetime | None = None) -> OnlineRead:
        return self.guarded(lambda: self.reader.read(entity_rows, now))

    def guarded(self, read: Callable[[], Any]) -> Any:
        """Run one online-store read behind the circuit breaker (also the ranker's user x item reads).

        `read` raises OnlineStoreUnavailable for a store failure (counted by
        the breaker); anything else it raises is a bug, passed on as it is and
        not counted against the store.

        Raises:
            OnlineStoreUnavailable: the breaker is open (at once), or `read` raised it.
        """
        if not self.breaker.allow():
            raise self.breaker.refusal()
        try:
            got = read()
        except OnlineStoreUnavailable as exc:
            self.breaker.failed(str(exc))
            raise
        except BaseException:
            self.breaker.released()
            raise
        self.breaker.succeeded()
        return got

    def with_refs(self, refs: Sequence[str]) -> "OnlineUserFeatures":
        """A reader of this one's features plus `refs` (`view:feature`), sharing its store and circuit breaker.

        Used when the bundle has a ranker: its user features come in the same single lookup as the
        query tower's.
        """
        have = {f"{view}:{feat}" for view, feat in self.reader.pairs}
        extra = [r for r in refs if r not in have]
        if not extra:
            return self
        other = copy.copy(self)
        other.reader = OnlineFeatureReader(self.store, [f"{v}:{f}" for v, f in self.reader.pairs] + extra,
                                           self._max_age)
        other.names = [feat for _, feat in other.reader.pairs]
        return other

    def ping(self) -> bool:
        """True when a read succeeds (used by /health/ready). While the breaker is open: False at once, and at
        most one probe (the half-open trial) per cool-down."""
        try:
            self._read([{n.USER_ID: "__health_check__"}])
            return True
        except OnlineStoreUnavailable:
            return False


def session_reader(store: FeatureStore, max_age: dict[str, dt.timedelta] | None = None) -> OnlineFeatureReader:
    """A reader of the session context view (pushed in real time by serving)."""
    return OnlineFeatureReader(store, [f"{n.SESSION_VIEW}:{f}" for f in n.SESSION_FEATURES], max_age)


def push_session_state(store: FeatureStore, rows: Iterable[dict]) -> None:
    """Write session state through the push source (online only), e.g. after each shopper event.

    Args:
        store: the Feast store.
        rows: dicts with session_id, event_timestamp, created_timestamp and names.SESSION_FEATURES.
    """
    import pandas as pd
    from feast.data_source import PushMode

    store.push(n.SESSION_PUSH_SOURCE, pd.DataFrame(list(rows)), to=PushMode.ONLINE)
