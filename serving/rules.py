"""Business rules after ranking: out-of-stock removal, promotions, margin targets, regulatory blocks, pins.

Where it sits: the last serving stage, `features -> retrieve -> rank -> rules`.
Rules are declared in order in cartwise.yaml (`rules:`, parsed by
`cartwise/config.py`) and built once into a :class:`RuleChain` at start-up,
so a missing column or an unimportable rule class fails before the first
request. Each rule is pure (no I/O): whatever it needs (stock, margin) comes
in as a candidate column that serving fills from the online store.

Order inside :meth:`RuleChain.apply`:

1. every non-pin rule in declared order: filters (`out_of_stock`, `block`)
   drop items and keep the order; re-weights (`promotion`, `margin_target`)
   change scores and re-sort by score (ties keep list order);
2. diversity (`diversity:` section), on the top K;
3. pins, all at once, whatever their place in the list: a pinned item moves
   to exactly its 1-based position (or the end of a shorter list), so later
   stages cannot move it. A pin only moves a candidate: an item that was
   filtered out (blocked, out of stock) stays out, because a regulation
   outranks a contract. A pin with `insert: true` is added to the candidates
   by :meth:`RuleChain.add_pinned` *before* serving fills the columns, so it
   goes through the same stock and block checks as any candidate;
4. the first k.

A rule "fired" when it changed which items are in the top k or their order;
that list is what :class:`serving.overrides.OverrideTracker` counts.
"""
from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ValidationError

from cartwise.config import (
    BlockRuleConfig, ConfigError, CustomRuleConfig, DiversityConfig, MarginTargetRuleConfig, OutOfStockRuleConfig,
    PinRuleConfig, PromotionRuleConfig, rule_names,
)
from cartwise.extensions import load_class
from feature_repo import names as n
from serving.candidates import Candidates
from serving.diversity import Diversifier

#: source recorded for a pinned item that no retrieval source found
PIN_SOURCE = "pin"


class RuleWiringError(ConfigError):
    """A rule chain that cannot run: unimportable class, bad params, missing column, clashing pins."""


@dataclass(frozen=True)
class RuleContext:
    """What a rule may know about the request besides the candidates.

    Args:
        now: request time, timezone-aware (promotion and pin windows compare against it).
        country: the shopper's country as the shop names it (None: unknown).
        flags: request flags (e.g. `age_unverified`) that switch flag-scoped blocks on.

    Raises:
        ValueError: `now` is naive.
    """

    now: dt.datetime
    country: str | None = None
    flags: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.now.tzinfo is None or self.now.utcoffset() is None:
            raise ValueError("RuleContext.now must be timezone-aware")
        object.__setattr__(self, "flags", frozenset(self.flags))

    @classmethod
    def current(cls, country: str | None = None, flags: Iterable[str] = ()) -> "RuleContext":
        """A context at the current UTC time."""
        return cls(dt.datetime.now(dt.timezone.utc), country, frozenset(flags))


def top_changed(before: Candidates, after: Candidates, k: int | None = None) -> bool:
    """Whether the first `k` ids (all when None) differ in membership or order."""
    a, b = (before.ids, after.ids) if k is None else (before.ids[:k], after.ids[:k])
    return not np.array_equal(a, b)


#: up to this many wanted values, `_member` compares the column with each (in C); above, one set lookup per value
_SMALL_SET = 16


def _member(values: np.ndarray, wanted: frozenset) -> np.ndarray:
    if not wanted:
        return np.zeros(len(values), dtype=bool)
    if len(wanted) <= _SMALL_SET:  # 500 candidates, 2 + 2 values: 17 us against 42 for the set lookups
        hit = np.zeros(len(values), dtype=bool)
        try:
            for w in wanted:
                hit |= np.asarray(values == w, dtype=bool)
            return hit
        except TypeError:  # a value whose == has no truth value (pd.NA): the set lookup below answers False
            pass
    return np.fromiter((v in wanted for v in values.tolist()), dtype=bool, count=len(values))


def _boost(scores: np.ndarray, factor: np.ndarray | float) -> np.ndarray:
    # Two-tower scores are dot products and may be negative: multiplying a
    # negative score by 1.5 would demote it. Dividing negatives instead keeps
    # "factor > 1 moves the item up" true for every score.
    return np.where(scores >= 0, scores * factor, scores / factor)


def _false(col: np.ndarray) -> np.ndarray:
    """True where a stock-like column is explicitly False/0; unknown (None, NA, NaN) is not False."""
    if col.dtype == bool:
        return ~col
    if col.dtype.kind in "iuf":
        return col == 0
    num = (bool, np.bool_, int, float, np.integer, np.floating)
    return np.fromiter((isinstance(v, num) and v == 0 for v in col.tolist()), dtype=bool, count=len(col))


class Rule(ABC):
    """A business rule: a pure function of the candidates and the request context.

    Subclasses set `kind` (what the contract tests check: `filter` returns an
    ordered subset, `reweight` a re-sorted permutation with new scores,
    `reorder` a permutation with the same scores), `config_class`, and
    `requires` (candidate columns read). `__init__` stores the parameters only.

    Args:
        config: the rule's typed parameters.
        name: label in logs and metrics (default: the config's `name`, else its type).
    """

    kind: ClassVar[Literal["filter", "reweight", "reorder"]]
    config_class: ClassVar[type[BaseModel]]

    def __init__(self, config: Any, name: str | None = None):
        self.config = config
        self.name: str = str(name or getattr(config, "name", None) or getattr(config, "type", None)
                             or type(self).__name__)

    @property
    def requires(self) -> tuple[str, ...]:
        """Candidate columns this rule reads (checked when the chain is built)."""
        return ()

    @abstractmethod
    def __call__(self, candidates: Candidates, context: RuleContext) -> Candidates:
        """Apply the rule.

        Args:
            candidates: (m,) in ranked order.
            context: request time, country, flags.

        Returns:
            At most m candidates; the input object itself when nothing changes.
        """

    def apply(self, candidates: Candidates, context: RuleContext, k: int | None = None) -> tuple[Candidates, bool]:
        """The rule's output and whether it fired (changed the top `k` ids or their order; all when None)."""
        out = self(candidates, context)
        return out, out is not candidates and top_changed(candidates, out, k)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class OutOfStockRule(Rule):
    """Drops candidates whose `in_stock` column is False; unknown stock (None, NaN) stays."""

    kind = "filter"
    config_class = OutOfStockRuleConfig

    @property
    def requires(self) -> tuple[str, ...]:
        return (n.IN_STOCK,)

    def __call__(self, candidates: Candidates, context: RuleContext) -> Candidates:
        drop = _false(candidates.column(n.IN_STOCK))
        return candidates.take(~drop) if drop.any() else candidates


class PromotionRule(Rule):
    """Multiplies the scores of listed items and categories by `factor` inside [start, end) of the request time."""

    kind = "reweight"
    config_class = PromotionRuleConfig

    def __init__(self, config: PromotionRuleConfig, name: str | None = None):
        super().__init__(config, name)
        self._items, self._categories = frozenset(config.items), frozenset(config.categories)

    def __call__(self, candidates: Candidates, context: RuleContext) -> Candidates:
        if not self.config.active(context.now):
            return candidates
        hit = _member(candidates.ids, self._items) | _member(candidates.categories, self._categories)
        if not hit.any() or self.config.factor == 1.0:
            return candidates
        s = candidates.scores
        return candidates.with_scores(np.where(hit, _boost(s, self.config.factor), s)).ranked()


class MarginTargetRule(Rule):
    """Steers towards margin: score x category multiplier x exp(margin_weight x margin).

    exp keeps the multiplier positive for loss-making items and is ~1 + w*m
    for small margins; an unknown margin (NaN) leaves the score alone.
    """

    kind = "reweight"
    config_class = MarginTargetRuleConfig

    @property
    def requires(self) -> tuple[str, ...]:
        return (n.MARGIN,) if self.config.margin_weight > 0 else ()

    def __call__(self, candidates: Candidates, context: RuleContext) -> Candidates:
        f = np.ones(len(candidates))
        if self.config.categories:
            listed = self.config.categories
            if len(listed) <= _SMALL_SET:  # a comparison per listed category, in C
                for c, multiplier in listed.items():
                    f[_member(candidates.categories, frozenset((c,)))] *= multiplier
            else:
                f *= np.fromiter((listed.get(c, 1.0) if isinstance(c, str) else 1.0
                                  for c in candidates.categories.tolist()), dtype=np.float64, count=len(candidates))
        if self.config.margin_weight > 0:
            m = np.nan_to_num(np.asarray(candidates.column(n.MARGIN), dtype=np.float64), nan=0.0)
            f *= np.exp(self.config.margin_weight * m)
        if np.all(f == 1.0):
            return candidates
        return candidates.with_scores(_boost(candidates.scores, f)).ranked()


class BlockRule(Rule):
    """Regulatory block of items and categories.

    Scoped by `countries` (compared case-insensitively; a request with no
    country is blocked too, failing closed) and/or by a request `flag`; with
    both, both must hold.
    """

    kind = "filter"
    config_class = BlockRuleConfig

    def __init__(self, config: BlockRuleConfig, name: str | None = None):
        super().__init__(config, name)
        self._items, self._categories = frozenset(config.items), frozenset(config.categories)
        self._countries = None if config.countries is None else frozenset(c.casefold() for c in config.countries)

    def applies(self, context: RuleContext) -> bool:
        """Whether the block is in force for this request."""
        in_country = self._countries is None or context.country is None or context.country.casefold() in self._countries
        return in_country and (self.config.flag is None or self.config.flag in context.flags)

    def __call__(self, candidates: Candidates, context: RuleContext) -> Candidates:
        if not self.applies(context):
            return candidates
        hit = _member(candidates.ids, self._items) | _member(candidates.categories, self._categories)
        return candidates.take(~hit) if hit.any() else candidates


def place_pins(candidates: Candidates, pins: Sequence[tuple[str, int]]
               ) -> tuple[Candidates, list[tuple[int, int] | None]]:
    """Move each pinned item that is a candidate to its 1-based position, all at once.

    Unpinned items keep their relative order around the pins. Pins past the
    end of the list take its last free places, in position order (as close
    as the list allows); positions should be distinct (a repeated one is
    treated as past the end, so no item is lost).

    Args:
        candidates: (m,) candidates.
        pins: (item_id, position) pairs.

    Returns:
        The reordered candidates (itself when nothing moves) and, per pin,
        (old, new) 0-based index of its item, or None when it is not a candidate.

    Raises:
        ValueError: an item pinned more than once (`RuleChain` refuses such pins when it is built).
    """
    if not pins:
        return candidates, []
    if len({item for item, _ in pins}) != len(pins):  # RuleChain refuses such pins when built
        seen: set[str] = set()
        twice = sorted({item for item, _ in pins if item in seen or seen.add(item)})
        raise ValueError(f"place_pins: items pinned more than once: {twice}")
    ids = candidates.ids
    index: dict[str, int] = {}  # each pinned item's first place among the candidates
    if len(pins) <= _SMALL_SET:  # a comparison per pinned item, in C (the loop over ids cost ~0.1 ms at 500)
        for item in dict.fromkeys(item for item, _ in pins):
            at = np.flatnonzero(np.asarray(ids == item, dtype=bool))
            if len(at):
                index[item] = int(at[0])
    else:
        wanted = {item for item, _ in pins}
        for i, item in enumerate(ids.tolist()):
            if item in wanted:
                index.setdefault(item, i)
    present = sorted((pos - 1, index[item]) for item, pos in pins if item in index)
    if not present:
        return candidates, [None] * len(pins)
    m = len(candidates)
    order = np.full(m, -1, dtype=np.intp)
    over: list[int] = []
    for p, i in present:
        if p < m and order[p] < 0:
            order[p] = i
        else:
            over.append(i)
    free = np.flatnonzero(order < 0)
    if over:  # past the end (or a repeated position): the last free places, in position order
        order[free[len(free) - len(over):]] = over
    pinned = np.zeros(m, dtype=bool)
    pinned[[i for _, i in present]] = True
    slots = np.flatnonzero(order < 0)
    order[slots] = np.flatnonzero(~pinned)[:len(slots)]  # the others keep their relative order
    new_at = {i: int(np.flatnonzero(order == i)[-1]) for i in {i for _, i in present}}
    moves = [(index[item], new_at[index[item]]) if item in index else None for item, _ in pins]
    if all(m is None or m[0] == m[1] for m in moves):
        return candidates, moves
    return candidates.take(order), moves


class PinRule(Rule):
    """A contractual pin: `item` at exactly `position` (1-based) while active.

    Alone it places one pin; in a :class:`RuleChain` every pin is placed
    together after all other rules and diversity.
    """

    kind = "reorder"
    config_class = PinRuleConfig

    def __call__(self, candidates: Candidates, context: RuleContext) -> Candidates:
        if not self.config.active(context.now):
            return candidates
        return place_pins(candidates, [(self.config.item, self.config.position)])[0]


#: rule type -> class (a dotted path to any Rule subclass works too)
RULES: dict[str, str] = {
    "out_of_stock": "serving.rules.OutOfStockRule",
    "promotion": "serving.rules.PromotionRule",
    "margin_target": "serving.rules.MarginTargetRule",
    "block": "serving.rules.BlockRule",
    "pin": "serving.rules.PinRule",
}


def rule_class(type_: str) -> type[Rule]:
    """The Rule class for a type alias or a dotted path.

    Raises:
        RuleWiringError: not importable or not a Rule subclass.
    """
    return load_class(RULES, type_, Rule, RuleWiringError, "rule")


def build_rule(config: BaseModel, name: str, where: str = "rules") -> Rule:
    """One rule from its parsed config (a custom rule's `params` are validated by its `config_class`).

    Raises:
        RuleWiringError: naming `where`, for an unimportable class or bad params.
    """
    cls = rule_class(config.type)  # type: ignore[attr-defined]
    if isinstance(config, CustomRuleConfig):
        params_cls = getattr(cls, "config_class", None)
        params: Any = config.params
        if params_cls is not None:
            try:
                params = params_cls.model_validate(config.params)
            except ValidationError as e:
                errs = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
                raise RuleWiringError(f"{where}.params: {errs}") from None
        return cls(params, name)
    return cls(config, name)


class RuleChain:
    """The configured rules (and diversity) as one serving stage.

    Args:
        rules: in declared order.
        diversity: the diversity stage, or None.

    Raises:
        RuleWiringError: repeated names, or two pins claiming the same item or
            position in overlapping windows.
    """

    def __init__(self, rules: Sequence[Rule] = (), diversity: Diversifier | None = None):
        self.rules = tuple(rules)
        self.diversity = diversity if diversity is not None and diversity.config.method != "none" else None
        names = [r.name for r in self.rules] + ([Diversifier.name] if self.diversity else [])
        dup = sorted({x for x in names if names.count(x) > 1})
        if dup:
            raise RuleWiringError(f"rules: names must be unique, repeated: {dup}")
        self._body = [r for r in self.rules if not isinstance(r, PinRule)]
        self._pins = [r for r in self.rules if isinstance(r, PinRule)]
        for i, a in enumerate(self._pins):
            for b in self._pins[i + 1:]:
                ca, cb = a.config, b.config
                if (ca.item == cb.item or ca.position == cb.position) and ca.overlaps(cb):
                    raise RuleWiringError(f"rules: pins {a.name!r} and {b.name!r} clash in overlapping windows")

    @classmethod
    def from_config(cls, rules: Sequence[BaseModel], diversity: DiversityConfig | None = None) -> "RuleChain":
        """Build from `config.rules` and `config.diversity`.

        Raises:
            RuleWiringError: naming `rules.<i>` for an unimportable class or bad params.
        """
        labels = rule_names(list(rules))
        built = [build_rule(c, nm, f"rules.{i}") for i, (c, nm) in enumerate(zip(rules, labels))]
        return cls(built, Diversifier(diversity) if diversity is not None else None)

    @property
    def names(self) -> tuple[str, ...]:
        """Every label `apply` can report as fired (rules, then `diversity` when on)."""
        return tuple(r.name for r in self.rules) + ((Diversifier.name,) if self.diversity else ())

    @property
    def required_columns(self) -> frozenset[str]:
        """Candidate columns serving must fill before :meth:`apply`."""
        stages: list[Any] = [*self.rules, *([self.diversity] if self.diversity else [])]
        return frozenset(c for s in stages for c in s.requires)

    @property
    def insertable_items(self) -> tuple[str, ...]:
        """Items of `insert: true` pins (active or not)."""
        return tuple(p.config.item for p in self._pins if p.config.insert)

    def check_columns(self, available: Iterable[str]) -> None:
        """Fail at build time when serving cannot fill a column a rule reads.

        Raises:
            RuleWiringError: naming each rule and the missing column.
        """
        have = set(available)
        stages: list[Any] = [*self.rules, *([self.diversity] if self.diversity else [])]
        missing = [f"{s.name} needs {c!r}" for s in stages for c in s.requires if c not in have]
        if missing:
            raise RuleWiringError(f"rules: candidates will lack columns: {'; '.join(missing)} "
                                  f"(available: {sorted(have) or 'none'})")

    def add_pinned(self, candidates: Candidates, context: RuleContext,
                   categories: Mapping[str, object] | None = None) -> Candidates:
        """Append the items of active `insert: true` pins that no source retrieved.

        Call it before filling the columns, so inserted items get stock and
        margin like any candidate and the filters can still drop them. They
        get the lowest score present (0.0 for an empty list) and source `pin`.

        Args:
            candidates: (m,) without columns.
            context: the request (pin windows).
            categories: item id -> category, for the inserted items.

        Raises:
            ValueError: the candidates already carry columns.
        """
        have = set(candidates.ids.tolist())
        new = self.pins_to_insert(context, have.__contains__)
        if not new:
            return candidates
        if candidates.columns:
            raise ValueError("add_pinned must run before candidate columns are filled")
        return candidates.append(self.pinned(new, candidates.scores, categories))

    def pins_to_insert(self, context: RuleContext, present: Callable[[str], bool]) -> list[str]:
        """Items of the active `insert: true` pins that `present` says the list lacks, in declared order."""
        return [p.config.item for p in self._pins
                if p.config.insert and p.config.active(context.now) and not present(p.config.item)]

    @staticmethod
    def pinned(items: Sequence[str], scores: np.ndarray, categories: Mapping[str, object] | None = None,
               columns: Mapping[str, np.ndarray] | None = None) -> Candidates:
        """Inserted pin items as candidates: source `pin`, the lowest of `scores` (the list's; 0.0 when it has
        none), their categories, and `columns` when given."""
        low = float(np.nanmin(scores)) if len(scores) and not np.isnan(scores).all() else 0.0
        cats = [(categories or {}).get(i) for i in items]
        return Candidates.from_lists(items, [low] * len(items), PIN_SOURCE, cats, columns)

    def apply(self, candidates: Candidates, context: RuleContext, k: int) -> tuple[Candidates, list[str]]:
        """Run the chain and cut to `k`.

        Args:
            candidates: (m,) ranked candidates carrying :attr:`required_columns`.
            context: request time, country and flags.
            k: the list length served.

        Returns:
            At most k candidates in served order, and the names of the rules
            (and `diversity`) that changed the top k's ids or order, in the order they ran.

        Raises:
            KeyError: a required column is missing (see :meth:`check_columns`).
        """
        fired: list[str] = []
        c = candidates
        for rule in self._body:
            out = rule(c, context)
            if out is not c and top_changed(c, out, k):
                fired.append(rule.name)
            c = out
        if self.diversity is not None:
            out = self.diversity(c, k)
            if out is not c and top_changed(c, out, k):
                fired.append(Diversifier.name)
            c = out
        active = [p for p in self._pins if p.config.active(context.now)]
        if active:
            out, moves = place_pins(c, [(p.config.item, p.config.position) for p in active])
            # a pin fired when its item moved into, out of or within the top k
            fired += [p.name for p, m in zip(active, moves) if m is not None and m[0] != m[1] and min(m) < k]
            c = out
        return c.head(k), fired

    def __repr__(self) -> str:
        return f"RuleChain({list(self.names)})"
