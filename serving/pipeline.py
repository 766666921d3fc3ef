"""The serving pipeline: online features -> two-tower retrieval (ScaNN) -> filters -> top K.

Where it sits: built once at start-up from a verified bundle
(`cartwise/bundle.py`) and the Feast online store; the HTTP app
(`serving/app.py`) and batch recommendations (`cartwise recommend`) call
:meth:`Recommender.recommend`.

Routes: a known user is embedded by the query tower from their online
features and searched in the ScaNN index; an anonymous or unknown user, or
any online-store failure, gets the popularity list, with a flag saying why.
"""
from __future__ import annotations

import datetime as dt
import json

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cartwise.bundle import LoadedBundle, load_bundle
from serving.features import OnlineStoreUnavailable, OnlineUserFeatures

COLD_ANONYMOUS = "cold_start:anonymous"
COLD_UNKNOWN = "cold_start:unknown_user"
FALLBACK_STORE = "fallback:online_store_unavailable"


@dataclass
class Recommended:
    item_id: str
    score: float
    source: str


@dataclass
class Recommendation:
    user_id: str | None
    items: list[Recommended]
    bundle_version: str
    flags: list[str] = field(default_factory=list)


def _max_ages(root: Path) -> dict[str, dt.timedelta]:
    """`features.max_age_hours` of the config the bundle was exported with (staleness limits per view)."""
    path = root / "config.json"
    hours = json.loads(path.read_text()).get("features", {}).get("max_age_hours", {}) if path.is_file() else {}
    return {view: dt.timedelta(hours=h) for view, h in hours.items()}


class Recommender:
    """Answers "what should this shopper see now" from one bundle.

    Args:
        bundle: a loaded, verified bundle.
        features: online user features (Feast).
    """

    def __init__(self, bundle: LoadedBundle, features: OnlineUserFeatures):
        self.bundle = bundle
        self.features = features
        q = bundle.manifest["query_inputs"]
        self.string_inputs, self.float_inputs = list(q["strings"]), list(q["floats"])
        h = bundle.history
        self.purchased = {u: set(g["item_id"].astype(str)) for u, g in h.groupby("user_id")}
        self.n_items = len(bundle.item_ids)
        # per bundle, so a hot-swapped bundle answers with its own catalog's titles and categories
        items = bundle.items.set_index("item_id")
        self.titles = items["title"].astype(object).where(items["title"].notna(), None).to_dict()
        self.categories = items["category"].astype(object).to_dict()

    @property
    def version(self) -> str:
        return self.bundle.version

    @classmethod
    def from_bundle_dir(cls, root: Path, features: OnlineUserFeatures | None = None) -> "Recommender":
        """Load and verify a bundle (sha256, golden queries) and connect to its feature store.

        Args:
            root: the bundle directory.
            features: an open online-store reader to reuse when it reads the
                bundle's store and service (hot swaps keep the connection).
        """
        bundle = load_bundle(root)
        store, service = Path(bundle.manifest["feature_store"]), bundle.manifest["feature_services"]["query"]
        if features is None or getattr(features, "key", None) != (str(store), service):
            features = OnlineUserFeatures(store, service, max_age=_max_ages(root))
            features.key = (str(store), service)
        return cls(bundle, features)

    def _popular(self, k: int, excluded: set[str]) -> list[Recommended]:
        out = []
        for rank, item in enumerate(self.bundle.popular):
            if item not in excluded:
                out.append(Recommended(item, float(1.0 / (rank + 1)), "popularity"))
                if len(out) == k:
                    break
        return out

    def recommend(self, user_id: str | None, k: int, exclude: list[str] | tuple = (),
                  exclude_purchased: bool = False) -> Recommendation:
        """Top-k items for a user.

        Args:
            user_id: the shopper, or None for an anonymous session.
            k: list length.
            exclude: item ids never to return (e.g. the cart).
            exclude_purchased: also leave out items this user bought before.

        Returns:
            Items with score and source, the bundle version and fallback flags.
        """
        excluded = set(exclude)
        flags: list[str] = []
        if user_id is not None and exclude_purchased:
            excluded |= self.purchased.get(user_id, set())
        feats = None
        if user_id is None:
            flags.append(COLD_ANONYMOUS)
        elif user_id not in self.purchased:
            flags.append(COLD_UNKNOWN)
        else:
            try:
                feats = self.features.get(user_id)
            except OnlineStoreUnavailable:
                flags.append(FALLBACK_STORE)
            else:
                if feats is None:
                    flags.append(COLD_UNKNOWN)
        items: list[Recommended] = []
        if feats is not None:
            inputs = {name: np.asarray([user_id], dtype=object) for name in self.string_inputs}
            inputs.update({name: np.asarray([feats.get(name, 0.0)], dtype=np.float32) for name in self.float_inputs})
            q = self.bundle.embed_query(inputs)[0]
            idx, scores = self.bundle.searcher.search(q, final_num_neighbors=min(self.n_items, k + len(excluded)))
            for i, s in zip(idx, scores):
                item = str(self.bundle.item_ids[i])
                if item not in excluded:
                    items.append(Recommended(item, float(s), "two_tower"))
                    if len(items) == k:
                        break
        if len(items) < k:
            have = {r.item_id for r in items}
            items += self._popular(k - len(items), excluded | have)
        return Recommendation(user_id, items, self.bundle.version, flags)
