"""Hot-swapping the served bundle: load beside, verify, replay golden queries, swap, drain.

Where it sits: between the bundles directory (`CURRENT`, written by export,
`cartwise index update` and `cartwise rollback`) and the HTTP app
(`serving/app.py`). The app asks a :class:`BundleSlot` for the recommender
once per request, so a response is computed by exactly one bundle and carries
its version. A :class:`CurrentWatcher` polls CURRENT (or the loopback-only
`/admin/reload` endpoint calls :meth:`BundleSlot.reload`).

A reload loads the new bundle while the old one keeps serving; loading
verifies every sha256 and replays the bundle's golden queries
(`cartwise.bundle.load_bundle`). Only then is the slot's reference replaced
(one assignment under a lock, atomic for readers). The old bundle is drained:
the swap waits until requests that started on it have finished before
dropping it. A failed load keeps the old bundle serving and raises an alert:
a log line at ERROR and a `degraded` /health/ready naming the failure, until
a later load succeeds.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from cartwise.bundle import CURRENT, BundleError
from serving.pipeline import Recommender
from serving.server import refreeze_after_swap

log = logging.getLogger("cartwise.serving")


@dataclass
class SwapResult:
    """Outcome of one reload attempt."""

    ok: bool
    old_version: str
    new_version: str | None
    seconds: float
    error: str | None = None
    drained: bool = True


@dataclass
class _Entry:
    recommender: Recommender
    in_flight: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)


class BundleSlot:
    """The recommender in service, swappable while requests run.

    Args:
        recommender: the initial, loaded recommender.
        bundles_dir: the bundles directory CURRENT lives in (for reloads by pointer).
        loader: builds a recommender from a bundle directory (default:
            :meth:`load`: verify, load, replay golden queries, keeping the
            ranker and the online-store connection of the one in service).
        drain_timeout: longest wait for in-flight requests on the old bundle.

    Each recommender keeps its own override metrics in a private registry; an
    app exposes whichever is in service through one
    :class:`serving.pipeline.RecommenderMetrics` (`serving/app.py`), so a swap
    never registers metrics twice.
    """

    def __init__(self, recommender: Recommender, bundles_dir: Path | None = None,
                 loader: Callable[..., Recommender] | None = None, drain_timeout: float = 30.0):
        self._entry = _Entry(recommender)
        self.bundles_dir = Path(bundles_dir) if bundles_dir else None
        self.loader = loader or self.load
        self.drain_timeout = drain_timeout
        self._swap_lock = threading.Lock()
        self.alert: str | None = None
        self.swaps: list[SwapResult] = []

    @property
    def current(self) -> Recommender:
        return self._entry.recommender

    def load(self, root: Path) -> Recommender:
        """The default loader: the bundle at `root` with the online-store reader of the one in service, and its
        ranker when the caller gave one (else the new bundle's own).

        Raises:
            BundleError: the bundle does not verify, load or replay its golden queries.
            PipelineWiringError: its config cannot be served.
        """
        current = self.current
        # a ranker the caller gave is kept; a bundle's own learned ranker comes with each bundle
        return Recommender.from_bundle_dir(root, features=current.features,
                                           ranker=getattr(current, "given_ranker", None))

    @property
    def version(self) -> str:
        return self._entry.recommender.version

    @contextlib.contextmanager
    def acquire(self) -> Iterator[Recommender]:
        """The recommender to answer one request with; counted as in flight until the block ends."""
        entry = self._entry  # one read: the whole request uses this bundle
        with entry.cond:
            entry.in_flight += 1
        try:
            yield entry.recommender
        finally:
            with entry.cond:
                entry.in_flight -= 1
                if entry.in_flight == 0:
                    entry.cond.notify_all()

    def reload(self, root: Path | None = None) -> SwapResult:
        """Load `root` (default: the bundle CURRENT names) beside the old one and swap if it is sound.

        Returns:
            The result; on failure the old bundle keeps serving and :attr:`alert` is set.
        """
        t0 = time.perf_counter()
        with self._swap_lock:  # one load at a time; requests are never blocked by it
            old = self._entry
            old_version = old.recommender.version
            try:
                if root is None:
                    if self.bundles_dir is None:
                        raise BundleError("no bundles directory to read CURRENT from")
                    pointer = self.bundles_dir / CURRENT
                    root = self.bundles_dir / pointer.read_text().strip()
                new = self.loader(Path(root))
            except Exception as exc:  # keep serving the old bundle, but say so loudly
                self.alert = f"reload of {Path(root).name if root else 'CURRENT'} failed at " \
                             f"{time.strftime('%Y-%m-%dT%H:%M:%S')}: {type(exc).__name__}: {exc}"
                log.error("bundle reload failed; still serving %s: %s", old_version, self.alert)
                result = SwapResult(False, old_version, None, time.perf_counter() - t0, error=self.alert)
                self.swaps.append(result)
                return result
            self._entry = _Entry(new)  # the swap: a single reference assignment
            self.alert = None
            drained = True
            with old.cond:
                drained = old.cond.wait_for(lambda: old.in_flight == 0, timeout=self.drain_timeout)
            if not drained:
                log.warning("old bundle %s still had %d requests after %.0fs", old_version, old.in_flight,
                            self.drain_timeout)
            result = SwapResult(True, old_version, new.version, time.perf_counter() - t0, drained=drained)
            if drained:
                old = None  # the last reference this slot holds
                refreeze_after_swap()
            log.info("swapped bundle %s -> %s in %.2fs", old_version, new.version, result.seconds)
            self.swaps.append(result)
            return result


class CurrentWatcher:
    """Polls `<bundles>/CURRENT` and reloads the slot when it names another bundle.

    A pointer that names a bundle which failed to load is not retried until
    CURRENT changes again (the alert stays up meanwhile).

    Args:
        slot: the slot to reload.
        interval: seconds between polls.
    """

    def __init__(self, slot: BundleSlot, interval: float = 1.0):
        if slot.bundles_dir is None:
            raise ValueError("the slot has no bundles directory to watch")
        self.slot, self.interval = slot, interval
        self._stop = threading.Event()
        self._failed: str | None = None
        self.thread = threading.Thread(target=self._loop, name="cartwise-bundle-watcher", daemon=True)

    def poll(self) -> SwapResult | None:
        """One check of CURRENT; returns the reload result when a reload was attempted."""
        try:
            target = (self.slot.bundles_dir / CURRENT).read_text().strip()
        except OSError:
            return None
        if not target or target == self.slot.version or target == self._failed:
            return None
        result = self.slot.reload(self.slot.bundles_dir / target)
        self._failed = None if result.ok else target
        return result

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # the watcher must outlive any single bad poll
                log.exception("bundle watcher poll failed")

    def start(self) -> "CurrentWatcher":
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)

    def __enter__(self) -> "CurrentWatcher":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
