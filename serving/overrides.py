"""How often the business rules override the model, with an alarm.

Where it sits: beside :class:`serving.rules.RuleChain`. Per request serving
records the model's top K before the rules and the final top K after the rules
(and diversity), plus the rules that fired. A top item changed by the rules in
more than `threshold` of recent requests means the training signal and the
shop's intent disagree: the model, not the rules, should change. So the rate
is exported to Prometheus and, above the threshold, logged as a warning once
per crossing and reported by `/health/ready` via :meth:`OverrideTracker.status`.

The tracker keeps its counts itself and is its registry's collector (no
prometheus_client `Counter` or `Gauge`): once `import feast` has put
prometheus_client in multiprocess mode, metric objects of one name share a
value across every registry of the process (see `serving/__init__.py`), and
each bundle's tracker must count only its own requests.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter as Tally
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from cartwise.config import ServingConfig
from serving.candidates import Candidates

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OverrideRecord:
    """What the rules did to one request.

    Attributes:
        top1_changed: the first item differs (an emptied list counts as changed).
        overlap: |model top K & final top K| / K (1.0 when both are empty).
        fired: rules that changed the top K, in the order they ran.
    """

    top1_changed: bool
    overlap: float
    fired: tuple[str, ...]


def _ids(x: Candidates | Sequence[str], k: int | None) -> list[str]:
    ids = x.ids.tolist() if isinstance(x, Candidates) else list(x)
    return ids if k is None else ids[:k]


class OverrideTracker:
    """Counts rule overrides of the model's top item over a rolling window of requests.

    Thread-safe: uvicorn runs handlers on several threads.

    Args:
        threshold: override rate above which it warns (strictly above).
        window: the rate covers the last `window` requests.
        registry: Prometheus registry the tracker registers itself in as a
            collector; a private one when None (never the global one:
            several apps share a test process).
        min_requests: no alarm before the window holds this many requests.
        rules: rule names to export zero-valued series for from the start.
        namespace: metric name prefix.

    Raises:
        ValueError: threshold outside [0, 1], window or min_requests < 1, or
            `registry` already holds metrics of these names (another tracker).
    """

    def __init__(self, threshold: float = 0.15, window: int = 1000, registry: CollectorRegistry | None = None,
                 min_requests: int = 100, rules: Iterable[str] = (), namespace: str = "cartwise"):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if window < 1 or min_requests < 1:
            raise ValueError(f"window and min_requests must be >= 1, got {window}, {min_requests}")
        self.threshold = threshold
        self.window = window
        self.min_requests = min_requests
        self.registry = registry if registry is not None else CollectorRegistry()
        self._lock = threading.Lock()
        self._recent: deque[OverrideRecord] = deque()
        self._overrides = 0
        self._overlap_sum = 0.0
        self._fired: Tally[str] = Tally()
        self._fired_override: Tally[str] = Tally()
        self._alarm = False
        # lifetime totals for Prometheus (the window above is for the rate and the alarm)
        self._requests_total = 0
        self._overrides_total = 0
        rules = tuple(rules)
        self._fired_total: dict[str, int] = dict.fromkeys(rules, 0)  # declared rules export zeros from the start
        self._rule_overrides_total: dict[str, int] = dict.fromkeys(rules, 0)
        self._prefix = f"{namespace}_rules"
        self.registry.register(self)

    @classmethod
    def from_config(cls, serving: ServingConfig, registry: CollectorRegistry | None = None,
                    rules: Iterable[str] = ()) -> "OverrideTracker":
        """From `serving.override_alarm_rate`, `override_window` and `override_min_requests`."""
        return cls(serving.override_alarm_rate, serving.override_window, registry,
                   serving.override_min_requests, rules)

    def record(self, before: Candidates | Sequence[str], after: Candidates | Sequence[str],
               fired: Sequence[str], k: int | None = None) -> OverrideRecord:
        """Record one request.

        Args:
            before: the model's list before the rules (ranked).
            after: the served list.
            fired: the rules that fired (`RuleChain.apply`'s second value).
            k: compare the first k of each (default: both lists whole).

        Returns:
            What the rules did to this request.
        """
        b, a = _ids(before, k), _ids(after, k)
        top1 = bool(b) and (not a or a[0] != b[0])
        depth = k if k is not None else max(len(b), len(a))
        overlap = len(set(b) & set(a)) / depth if depth else 1.0
        rec = OverrideRecord(top1, overlap, tuple(dict.fromkeys(fired)))
        with self._lock:
            self._recent.append(rec)
            self._add(rec, +1)
            if len(self._recent) > self.window:
                self._add(self._recent.popleft(), -1)
            n = len(self._recent)
            rate = self._overrides / n
            alarm = n >= self.min_requests and rate > self.threshold
            crossed, self._alarm = alarm != self._alarm, alarm
            self._requests_total += 1
            self._overrides_total += top1
            for r in rec.fired:
                self._fired_total[r] = self._fired_total.get(r, 0) + 1
                self._rule_overrides_total[r] = self._rule_overrides_total.get(r, 0) + top1
            top_rules = self._top_rules() if crossed and alarm else ""
        if crossed and alarm:
            log.warning("business rules changed the top item in %.1f%% of the last %d requests (threshold %.1f%%)%s: "
                        "the model's training signal disagrees with the shop's rules; retrain rather than add rules",
                        100 * rate, n, 100 * self.threshold, top_rules)
        elif crossed:
            log.info("rule override rate back to %.1f%% of the last %d requests (threshold %.1f%%)",
                     100 * rate, n, 100 * self.threshold)
        return rec

    def _add(self, rec: OverrideRecord, sign: int) -> None:
        self._overrides += sign * rec.top1_changed
        self._overlap_sum += sign * rec.overlap
        for r in rec.fired:
            self._fired[r] += sign
            if rec.top1_changed:
                self._fired_override[r] += sign

    def _top_rules(self) -> str:
        worst = [f"{r} {c}" for r, c in self._fired_override.most_common(3) if c > 0]
        return f"; most often involved: {', '.join(worst)}" if worst else ""

    @property
    def alarm(self) -> bool:
        """Whether the rolling rate is above the threshold (with enough requests)."""
        return self._alarm

    def rate(self) -> float:
        """Share of the last `window` requests whose top item the rules changed (0.0 before any)."""
        with self._lock:
            return self._overrides / len(self._recent) if self._recent else 0.0

    def rule_rates(self) -> dict[str, dict[str, float]]:
        """Per rule over the window: `fired` (share of requests it changed the top K)
        and `override` (share in which the top item changed and it fired)."""
        with self._lock:
            n = len(self._recent) or 1
            return {r: {"fired": c / n, "override": self._fired_override[r] / n}
                    for r, c in sorted(self._fired.items()) if c > 0}

    def status(self) -> dict:
        """A JSON-able summary for `/health/ready`; has a `warning` while the alarm is on."""
        rules = self.rule_rates()
        with self._lock:
            n = len(self._recent)
            rate = self._overrides / n if n else 0.0
            body: dict = {"status": "warning" if self._alarm else "ok", "override_rate": rate,
                          "threshold": self.threshold, "requests": n, "window": self.window,
                          "min_requests": self.min_requests,
                          "topk_overlap": self._overlap_sum / n if n else 1.0, "rules": rules}
            if self._alarm:
                body["warning"] = (f"rules changed the top item in {100 * rate:.1f}% of the last {n} requests "
                                   f"(threshold {100 * self.threshold:.1f}%): retrain the model on the shop's intent")
        return body

    # --- Prometheus: the tracker is its registry's collector ---

    def _families(self, with_samples: bool) -> Iterator[Metric]:
        p = self._prefix
        with self._lock:
            requests, overrides = self._requests_total, self._overrides_total
            fired, rule_overrides = dict(self._fired_total), dict(self._rule_overrides_total)
            n = len(self._recent)
            rate, alarm = (self._overrides / n if n else 0.0), self._alarm
        families = [
            (CounterMetricFamily(f"{p}_requests", "Requests that went through the business rules"), [([], requests)]),
            (CounterMetricFamily(f"{p}_overrides", "Requests whose top item the rules changed"), [([], overrides)]),
            (CounterMetricFamily(f"{p}_fired", "Requests in which a rule changed the top K", labels=["rule"]),
             [([r], c) for r, c in sorted(fired.items())]),
            (CounterMetricFamily(f"{p}_rule_overrides", "Top-item overrides in which a rule fired", labels=["rule"]),
             [([r], c) for r, c in sorted(rule_overrides.items())]),
            (GaugeMetricFamily(f"{p}_override_rate", "Top-item override rate over the rolling window"),
             [([], rate)]),
            (GaugeMetricFamily(f"{p}_override_alarm", "1 while the override rate is above the threshold"),
             [([], float(alarm))]),
        ]
        for family, samples in families:
            if with_samples:
                for labels, value in samples:
                    family.add_metric(labels, value)
            yield family

    def collect(self) -> Iterator[Metric]:
        """The metrics, for the registry: counters since the tracker was made, rate and alarm over the window.

        Yields:
            `<namespace>_rules_requests_total`, `_overrides_total`,
            `_fired_total{rule}`, `_rule_overrides_total{rule}`,
            `_override_rate` and `_override_alarm`.
        """
        yield from self._families(with_samples=True)

    def describe(self) -> Iterator[Metric]:
        """The metric names without values, so a registry refuses a second tracker with the same names."""
        yield from self._families(with_samples=False)
