"""Online feature lookups through Feast, with staleness enforced at read time.

Where it sits: request -> **online features** (Feast online store: SQLite by
default, Redis in production) -> query tower / ranking -> ScaNN. User and
session features are read through Feast's SDK here; candidate item features
come from the item feature matrix (`serving/item_matrix.py`), not row by row.

Feast does not filter online values by TTL (feast#6821): a value written
long ago is returned as if it were fresh. :class:`OnlineFeatureReader` reads
each value's event time and treats a value older than its view's maximum age
(default: the view's TTL) as missing, and reports it.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from feast import FeatureStore

from feature_repo import names as n

TS_SUFFIX = "__ts"


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
        refs: `view:feature` references or a FeatureService.
        max_age: per view name, the oldest age a value may have (default: the view's TTL;
            a view with no TTL is never stale).
    """

    def __init__(self, store: FeatureStore, refs, max_age: dict[str, dt.timedelta] | None = None):
        self.store = store
        self.refs = refs
        if hasattr(refs, "feature_view_projections"):
            pairs = [(p.name, f.name) for p in refs.feature_view_projections for f in p.features]
        else:
            pairs = [tuple(r.split(":", 1)) for r in refs]
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

    def read(self, entity_rows: list[dict], now: dt.datetime | None = None) -> OnlineRead:
        """Look up `entity_rows`; values older than their view's max age come back as None.

        Args:
            entity_rows: join keys per row, e.g. `[{"user_id": "17850"}]`.
            now: the request time (default: now, UTC).

        Raises:
            OnlineStoreUnavailable: the store raised.
        """
        now = now or dt.datetime.now(dt.timezone.utc)
        try:
            resp = self.store.get_online_features(features=self.refs, entity_rows=entity_rows,
                                                  full_feature_names=True).to_dict(include_event_timestamps=True)
        except Exception as exc:  # any store failure is a fallback, never a 5xx
            raise OnlineStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        out = OnlineRead(rows=[{} for _ in entity_rows])
        now_s = now.timestamp()
        for view, feat in self.pairs:
            key = f"{view}__{feat}"
            values = resp.get(key, [None] * len(entity_rows))
            stamps = resp.get(key + TS_SUFFIX, [0] * len(entity_rows))
            limit = self.max_age.get(view)
            for i, (v, ts) in enumerate(zip(values, stamps)):
                if v is not None and limit is not None and ts and now_s - ts > limit.total_seconds():
                    out.stale.append(f"{view}:{feat}")
                    v = None
                out.rows[i][feat] = v
        return out


class OnlineUserFeatures:
    """The query tower's user features from the online store.

    Args:
        repo_path: the Feast repo (feature_store.yaml) the bundle was built with.
        service: feature service name (`retrieval_query_v1`).
        max_age: per view, the oldest value served (default: the view's TTL).
    """

    def __init__(self, repo_path: Path, service: str, max_age: dict[str, dt.timedelta] | None = None):
        if not (Path(repo_path) / "feature_store.yaml").is_file():
            raise FileNotFoundError(f"{repo_path}/feature_store.yaml not found (feature store of the bundle)")
        self.store = FeatureStore(repo_path=str(repo_path))
        self.service = self.store.get_feature_service(service)
        self.reader = OnlineFeatureReader(self.store, self.service, max_age)
        self.names = [feat for _, feat in self.reader.pairs]
        self.last_stale: list[str] = []

    def get(self, user_id: str, now: dt.datetime | None = None) -> dict[str, float] | None:
        """Features of one user, or None when the store has no fresh value for any of them.

        Raises:
            OnlineStoreUnavailable: the store raised.
        """
        got = self.reader.read([{n.USER_ID: user_id}], now)
        self.last_stale = got.stale
        values = got.rows[0]
        if all(v is None for v in values.values()):
            return None
        return {k: float(v) if v is not None else 0.0 for k, v in values.items()}

    def ping(self) -> bool:
        """True when a read succeeds (used by /health/ready)."""
        try:
            self.reader.read([{n.USER_ID: "__health_check__"}])
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
