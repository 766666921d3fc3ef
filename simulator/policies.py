"""What a session is shown in a simulated A/B test: the real serving pipeline or a named baseline.

Where it sits: `simulator/abtest.py` asks each arm's policy for the lists of
its sessions. :class:`BundlePolicy` serves every session through
`serving.pipeline.Recommender` over an exported bundle (Feast online user
features included), exactly as `cartwise serve` would; the baselines
(`popular`, `random`, `repeat`) read only the event log, like a shop's
simple fallbacks. :class:`OraclePolicy` reads the world's ground truth and is
only an upper bound for testing the harness.

A policy never learns which arm it is in, and shoppers react through the same
funnel whatever the policy: any difference between arms comes from what the
lists contain.
"""
from __future__ import annotations

import abc
from pathlib import Path

import numpy as np
import pandas as pd

from feature_repo import names as n
from simulator.world import Sessions, Shop, dedupe_lists, rng_for


def item_index(item_ids) -> np.ndarray:
    """`"i123"` -> 123 (-1 for anything the simulator did not make)."""
    out = np.full(len(item_ids), -1, dtype=np.int64)
    for j, s in enumerate(item_ids):
        if isinstance(s, str) and s.startswith("i") and s[1:].isdigit():
            out[j] = int(s[1:])
    return out


class Policy(abc.ABC):
    """One arm's list maker.

    Args:
        shop: the simulated shop (baselines read its catalog size and launch days only).
        k: list length.
    """

    served_by_model: int = 0

    def __init__(self, shop: Shop, k: int):
        self.shop, self.k = shop, k

    @abc.abstractmethod
    def lists(self, sess: Sessions, day: int) -> np.ndarray:
        """(sessions, k) item indices, -1 for an empty slot."""

    def refresh(self, events: pd.DataFrame, day: int) -> None:
        """Re-read the event log up to the start of `day` (default: nothing to update)."""


class PopularPolicy(Policy):
    """The same list for everyone: most purchased items of the last `days` days."""

    def __init__(self, shop: Shop, k: int, days: int = 30):
        super().__init__(shop, k)
        self.days, self.top = days, np.full(k, -1, dtype=np.int64)

    def refresh(self, events: pd.DataFrame, day: int) -> None:
        cut = self.shop.start + pd.Timedelta(days=day)
        p = events[(events[n.EVENT_TYPE] == n.PURCHASE) & (events[n.EVENT_TIMESTAMP] >= cut - pd.Timedelta(days=self.days))]
        counts = p.groupby(n.ITEM_ID).size().reset_index(name="c").sort_values(["c", n.ITEM_ID],
                                                                              ascending=[False, True])
        top = item_index(counts[n.ITEM_ID].astype(str).tolist()[: self.k])
        self.top = np.r_[top, np.full(self.k - len(top), -1)]

    def lists(self, sess: Sessions, day: int) -> np.ndarray:
        return np.tile(self.top, (len(sess), 1))


class RandomPolicy(Policy):
    """k distinct launched items drawn uniformly for every session."""

    def __init__(self, shop: Shop, k: int, stream_offset: int = 0):
        super().__init__(shop, k)
        self.offset = stream_offset

    def lists(self, sess: Sessions, day: int) -> np.ndarray:
        rng = rng_for(self.shop.seed, "policy", day * 8 + self.offset)
        live = np.flatnonzero(self.shop.launched(day))
        draw = live[rng.integers(0, len(live), (len(sess), 3 * self.k))]
        draw = dedupe_lists(draw)
        # keep the first k distinct draws of each row
        order = np.argsort(draw < 0, axis=1, kind="stable")
        return np.take_along_axis(draw, order, axis=1)[:, : self.k]


class RepeatPolicy(PopularPolicy):
    """The shopper's own purchased items, most recent first, then popular items."""

    def refresh(self, events: pd.DataFrame, day: int) -> None:
        super().refresh(events, day)
        p = events[events[n.EVENT_TYPE] == n.PURCHASE].sort_values(n.EVENT_TIMESTAMP, ascending=False)
        p = p.drop_duplicates([n.USER_ID, n.ITEM_ID])
        self.own = {u: item_index(g[n.ITEM_ID].astype(str).tolist()[: self.k]) for u, g in p.groupby(n.USER_ID)}

    def lists(self, sess: Sessions, day: int) -> np.ndarray:
        out = np.tile(self.top, (len(sess), 1))
        for j, u in enumerate(sess.user):
            own = getattr(self, "own", {}).get(f"u{u}")
            if own is not None and len(own):
                rest = [i for i in self.top if i not in set(own)]
                out[j] = np.r_[own, rest][: self.k]
        return out


class OraclePolicy(Policy):
    """The k items with the highest true purchase probability for the shopper in the session's context.

    Reads the world's ground truth: a ceiling for harness tests, not a policy a shop could run.
    """

    def lists(self, sess: Sessions, day: int) -> np.ndarray:
        shop = self.shop
        live = np.flatnonzero(shop.launched(day))
        appeal = shop.appeal(day)
        out = np.full((len(sess), self.k), -1, dtype=np.int64)
        for j in range(len(sess)):
            m = len(live)
            pc, pa_, pb, _ = shop.funnel(np.full(m, sess.user[j]), live, day, rank=np.zeros(m),
                                         device=np.full(m, sess.device[j]), hour=np.full(m, sess.hour[j]),
                                         weekend=np.full(m, sess.weekend[j]), category=np.full(m, sess.category[j]),
                                         appeal=appeal)
            p = pc * pa_ * pb
            top = live[np.argsort(-p, kind="stable")[: self.k]]
            out[j, : len(top)] = top
        return out


class BundlePolicy(Policy):
    """Every session served in-process by the real serving pipeline over an exported bundle.

    Args:
        shop: the simulated shop.
        k: list length.
        bundle_dir: the bundle to load (its manifest names the Feast repo of online features).
        exclude_purchased: passed to `Recommender.recommend`.
        refresher: called with (events, day) on refresh; returns the new bundle
            directory (e.g. after ingest -> build_features -> export), or None.
    """

    def __init__(self, shop: Shop, k: int, bundle_dir: Path, exclude_purchased: bool = True, refresher=None):
        super().__init__(shop, k)
        self.exclude_purchased, self.refresher = exclude_purchased, refresher
        self._load(Path(bundle_dir))
        self.requests = 0

    def _load(self, bundle_dir: Path) -> None:
        from serving.pipeline import Recommender

        self.bundle_dir = bundle_dir
        self.recommender = Recommender.from_bundle_dir(bundle_dir)

    def refresh(self, events: pd.DataFrame, day: int) -> None:
        if self.refresher is not None:
            new = self.refresher(events, day)
            if new is not None:
                self._load(Path(new))

    def lists(self, sess: Sessions, day: int) -> np.ndarray:
        out = np.full((len(sess), self.k), -1, dtype=np.int64)
        for j, u in enumerate(sess.user):
            rec = self.recommender.recommend(f"u{u}", self.k, exclude_purchased=self.exclude_purchased)
            self.requests += 1
            if any(it.source == "two_tower" for it in rec.items):
                self.served_by_model += 1
            idx = item_index([it.item_id for it in rec.items])[: self.k]
            out[j, : len(idx)] = idx
        return out
