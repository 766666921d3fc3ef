"""How often the business rules override the model, with an alarm.

Where it sits: beside :class:`serving.rules.RuleChain`. Per request serving
records the model's top K before the rules and the final top K after the rules
(and diversity), plus the rules that fired. A top item changed by the rules in
more than `threshold` of recent requests means the training signal and the
shop's intent disagree: the model, not the rules, should change. So the rate
is exported to Prometheus and, above the threshold, logged as a warning once
per crossing and reported by `/health/ready` via :meth:`OverrideTracker.status`.

**Which rule overrode.** `fired` says which rules changed the top K, not which
one moved the top item. Serving also passes the request's :class:`RuleStep`
list (`serving/pipeline.py` `RuleStage.apply`: each rule or diversity that
changed the list, with the list before and after it, then one step per pin
that fired, the pins being placed together) and the tracker measures each
step (:class:`RuleEffect`): the top item changed at that step, the top-K set
changed, items that left and entered the top K, candidates a filter dropped.
A request's top-item override is attributed to every rule whose step changed
the top item (:attr:`OverrideRecord.overridden_by`; usually one, two when a
later rule moves the top item again). Per rule, Prometheus gets
`<namespace>_rule_overrides_total{rule}` (top-item overrides attributed to
the rule) and `<namespace>_rule_topk_changes_total{rule}` (requests whose
top-K set it changed), beside the older `<namespace>_rules_rule_overrides_total{rule}`
(top-item overrides in which the rule *fired*, whatever it did to the top
item); :meth:`OverrideTracker.totals` has every per-rule sum for offline
reports (`pipelines/override_report.py`).

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
from typing import NamedTuple

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from cartwise.config import ServingConfig
from serving.candidates import Candidates

log = logging.getLogger(__name__)


class RuleStep(NamedTuple):
    """One rule's change to a request's list, in the order the rules ran.

    Attributes:
        rule: the rule's label (or `diversity`).
        before: the list before the rule (Candidates or ids, ranked).
        after: the list after it.
        item: for a pin, its item: the pins of a request are placed together,
            so each fired pin gets the same (before, after) and is judged by
            what happened to its own item. None for every other rule.
    """

    rule: str
    before: Candidates | Sequence[str]
    after: Candidates | Sequence[str]
    item: str | None = None


@dataclass(frozen=True)
class RuleEffect:
    """What one rule did to one request's list (compared on the first k of each).

    Attributes:
        rule: the rule's label.
        top1_changed: the top item after the rule differs from the one before
            it (an emptied list counts as changed); for a pin, only when the
            pin's own item arrived at or left the top.
        topk_changed: the set of the top K changed.
        topk_out: items of the top K that left it (filtered, or pushed below K).
        topk_in: items that entered the top K (moved up, or backfilled after a filter).
            A pin counts its own item and the one it displaced.
        removed: candidates dropped from the whole list (filters).
    """

    rule: str
    top1_changed: bool
    topk_changed: bool
    topk_out: int
    topk_in: int
    removed: int


@dataclass(frozen=True)
class OverrideRecord:
    """What the rules did to one request.

    Attributes:
        top1_changed: the first item differs (an emptied list counts as changed).
        overlap: |model top K & final top K| / K (1.0 when both are empty).
        fired: rules that changed the top K, in the order they ran.
        overridden_by: when `top1_changed`, the rules whose step changed the
            top item, in the order they ran (empty otherwise, or without steps).
        effects: per :class:`RuleStep` given, what the rule did.
    """

    top1_changed: bool
    overlap: float
    fired: tuple[str, ...]
    overridden_by: tuple[str, ...] = ()
    effects: tuple[RuleEffect, ...] = ()


def _ids(x: Candidates | Sequence[str], k: int | None) -> list[str]:
    if isinstance(x, Candidates):
        return (x.ids if k is None else x.ids[:k]).tolist()
    return list(x) if k is None else list(x[:k])


def _top1_changed(b: Sequence[str], a: Sequence[str]) -> bool:
    return bool(b) and (not a or a[0] != b[0])


def rule_effect(step: RuleStep, k: int | None = None) -> RuleEffect:
    """What one step did (see :class:`RuleEffect`), comparing the first `k` of each list (all when None)."""
    b, a = _ids(step.before, k), _ids(step.after, k)
    if step.item is None:
        sb, sa = set(b), set(a)
        out, into = len(sb - sa), len(sa - sb)
        removed = max(0, len(step.before) - len(step.after))
        return RuleEffect(step.rule, _top1_changed(b, a), bool(out or into), out, into, removed)
    # a pin: its own item, and the item it displaced when the list is longer than the top K
    full = k is not None and len(step.before) > k
    entered = step.item in a and step.item not in b
    left = step.item in b and step.item not in a
    top1 = _top1_changed(b, a) and step.item in (b[0], a[0] if a else None)
    return RuleEffect(step.rule, top1, entered or left, int(left) + int(entered and full),
                      int(entered) + int(left and full), 0)


@dataclass
class _RuleTotals:
    fired: int = 0          # changed the top K (ids or order)
    involved: int = 0       # fired in a request whose top item changed
    overrides: int = 0      # top-item overrides attributed to it
    top1_changes: int = 0   # its step changed the top item (also when a later rule changed it back)
    topk_changes: int = 0
    topk_out: int = 0
    topk_in: int = 0
    removed: int = 0


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
        self._overlap_total = 0.0
        self._fired_total: dict[str, int] = dict.fromkeys(rules, 0)  # declared rules export zeros from the start
        self._rule_overrides_total: dict[str, int] = dict.fromkeys(rules, 0)
        self._rules: dict[str, _RuleTotals] = {r: _RuleTotals() for r in rules}
        self._prefix = f"{namespace}_rules"
        self._namespace = namespace
        self.registry.register(self)

    @classmethod
    def from_config(cls, serving: ServingConfig, registry: CollectorRegistry | None = None,
                    rules: Iterable[str] = ()) -> "OverrideTracker":
        """From `serving.override_alarm_rate`, `override_window` and `override_min_requests`."""
        return cls(serving.override_alarm_rate, serving.override_window, registry,
                   serving.override_min_requests, rules)

    def record(self, before: Candidates | Sequence[str], after: Candidates | Sequence[str],
               fired: Sequence[str], k: int | None = None, steps: Sequence[RuleStep] = ()) -> OverrideRecord:
        """Record one request.

        Args:
            before: the model's list before the rules (ranked).
            after: the served list.
            fired: the rules that fired (`RuleChain.apply`'s second value).
            k: compare the first k of each (default: both lists whole).
            steps: what each rule did, in order (`RuleStage.apply`'s fourth
                value); without them no override is attributed to a rule.

        Returns:
            What the rules did to this request.
        """
        b, a = _ids(before, k), _ids(after, k)
        top1 = _top1_changed(b, a)
        depth = k if k is not None else max(len(b), len(a))
        overlap = len(set(b) & set(a)) / depth if depth else 1.0
        effects = tuple(rule_effect(s, k) for s in steps)
        by = tuple(dict.fromkeys(e.rule for e in effects if e.top1_changed)) if top1 else ()
        rec = OverrideRecord(top1, overlap, tuple(dict.fromkeys(fired)), by, effects)
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
            self._overlap_total += overlap
            for r in rec.fired:
                self._fired_total[r] = self._fired_total.get(r, 0) + 1
                self._rule_overrides_total[r] = self._rule_overrides_total.get(r, 0) + top1
            self._count_rules(rec)
            top_rules = self._top_rules() if crossed and alarm else ""
        if crossed and alarm:
            log.warning("business rules changed the top item in %.1f%% of the last %d requests (threshold %.1f%%)%s: "
                        "the model's training signal disagrees with the shop's rules; retrain rather than add rules",
                        100 * rate, n, 100 * self.threshold, top_rules)
        elif crossed:
            log.info("rule override rate back to %.1f%% of the last %d requests (threshold %.1f%%)",
                     100 * rate, n, 100 * self.threshold)
        return rec

    def _count_rules(self, rec: OverrideRecord) -> None:
        """Lifetime per-rule sums (under the lock)."""
        def of(rule: str) -> _RuleTotals:
            t = self._rules.get(rule)
            if t is None:
                t = self._rules[rule] = _RuleTotals()
            return t

        for r in rec.fired:
            t = of(r)
            t.fired += 1
            t.involved += rec.top1_changed
        for r in rec.overridden_by:
            of(r).overrides += 1
        changed_topk: set[str] = set()
        for e in rec.effects:
            t = of(e.rule)
            t.top1_changes += e.top1_changed
            t.topk_out += e.topk_out
            t.topk_in += e.topk_in
            t.removed += e.removed
            if e.topk_changed and e.rule not in changed_topk:  # a request counts once per rule
                changed_topk.add(e.rule)
                t.topk_changes += 1

    def totals(self) -> dict:
        """Lifetime sums since the tracker was made (not the window), JSON-able; for offline reports.

        Returns:
            `requests`, `overrides` (top item changed), `overlap_sum` (sum of
            the per-request top-K overlaps), and `rules`: per rule seen or
            declared, `fired`, `involved` (fired in a request whose top item
            changed), `overrides` (top-item overrides attributed to it),
            `top1_changes` (its step changed the top item), `topk_changes`
            (requests whose top-K set it changed), and the sums `topk_out`,
            `topk_in`, `removed` of its :class:`RuleEffect`.
        """
        with self._lock:
            return {"requests": self._requests_total, "overrides": self._overrides_total,
                    "overlap_sum": self._overlap_total,
                    "rules": {r: dict(vars(t)) for r, t in self._rules.items()}}

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
        ns = self._namespace
        with self._lock:
            requests, overrides = self._requests_total, self._overrides_total
            fired, rule_overrides = dict(self._fired_total), dict(self._rule_overrides_total)
            by_rule = {r: (t.overrides, t.topk_changes) for r, t in sorted(self._rules.items())}
            n = len(self._recent)
            rate, alarm = (self._overrides / n if n else 0.0), self._alarm
        families = [
            (CounterMetricFamily(f"{p}_requests", "Requests that went through the business rules"), [([], requests)]),
            (CounterMetricFamily(f"{p}_overrides", "Requests whose top item the rules changed"), [([], overrides)]),
            (CounterMetricFamily(f"{p}_fired", "Requests in which a rule changed the top K", labels=["rule"]),
             [([r], c) for r, c in sorted(fired.items())]),
            (CounterMetricFamily(f"{p}_rule_overrides", "Top-item overrides in which a rule fired", labels=["rule"]),
             [([r], c) for r, c in sorted(rule_overrides.items())]),
            (CounterMetricFamily(f"{ns}_rule_overrides", "Requests whose top item this rule changed "
                                 "(attributed from the per-rule trace)", labels=["rule"]),
             [([r], c) for r, (c, _) in by_rule.items()]),
            (CounterMetricFamily(f"{ns}_rule_topk_changes", "Requests whose top-K set this rule changed",
                                 labels=["rule"]),
             [([r], c) for r, (_, c) in by_rule.items()]),
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
            `_fired_total{rule}`, `_rule_overrides_total{rule}` (overrides in
            which the rule fired), `_override_rate` and `_override_alarm`;
            and `<namespace>_rule_overrides_total{rule}` (overrides attributed
            to the rule) and `<namespace>_rule_topk_changes_total{rule}`.
        """
        yield from self._families(with_samples=True)

    def describe(self) -> Iterator[Metric]:
        """The metric names without values, so a registry refuses a second tracker with the same names."""
        yield from self._families(with_samples=False)
