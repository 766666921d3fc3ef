"""Online lookup of the query tower's user features through Feast.

Where it sits: request -> **online user features** (Feast online store:
SQLite by default) -> query tower -> ScaNN. Reads the feature service named
in the bundle manifest, so serving reads exactly what training joined.
"""
from __future__ import annotations

from pathlib import Path

from feast import FeatureStore

from feature_repo import names as n


class OnlineStoreUnavailable(RuntimeError):
    """The online store could not be read; serving falls back to popularity."""


class OnlineUserFeatures:
    """User features from the online store.

    Args:
        repo_path: the Feast repo (feature_store.yaml) the bundle was built with.
        service: feature service name (`retrieval_query_v1`).
    """

    def __init__(self, repo_path: Path, service: str):
        if not (Path(repo_path) / "feature_store.yaml").is_file():
            raise FileNotFoundError(f"{repo_path}/feature_store.yaml not found (feature store of the bundle)")
        self.store = FeatureStore(repo_path=str(repo_path))
        self.service = self.store.get_feature_service(service)
        self.names = [f.name for proj in self.service.feature_view_projections for f in proj.features]

    def get(self, user_id: str) -> dict[str, float] | None:
        """Features of one user, or None when the store has no value for any of them.

        Raises:
            OnlineStoreUnavailable: the store raised.
        """
        try:
            row = self.store.get_online_features(features=self.service, entity_rows=[{n.USER_ID: user_id}]).to_dict()
        except Exception as exc:  # any store failure is a fallback, never a 5xx
            raise OnlineStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        values = {name: row.get(name, [None])[0] for name in self.names}
        if all(v is None for v in values.values()):
            return None
        return {k: float(v) if v is not None else 0.0 for k, v in values.items()}

    def ping(self) -> bool:
        """True when a read succeeds (used by /health/ready)."""
        try:
            self.get("__health_check__")
            return True
        except OnlineStoreUnavailable:
            return False
