"""Business rules: the contract every rule meets (hypothesis), each rule's own promise, the chain, and their config.

`RuleContract` is the family's contract mixin (STYLE.md sections 6 and 8): a
test class for a rule inherits it and says how to draw a rule; the mixin
checks the declared kind (a filter returns an ordered subset, a re-weight a
re-sorted permutation, a reorder a permutation with the same scores), that
the output is never longer than the input, and that the rule is pure.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from cartwise.config import (
    BlockRuleConfig, ConfigError, DiversityConfig, MarginTargetRuleConfig, OutOfStockRuleConfig, PinRuleConfig,
    PromotionRuleConfig, load_config, parse_config,
)
from serving import rules as rules_module
from serving.candidates import Candidates
from serving.rules import (
    BlockRule, MarginTargetRule, OutOfStockRule, PinRule, PromotionRule, Rule, RuleChain, RuleContext,
    RuleWiringError, place_pins,
)

ROOT = Path(__file__).resolve().parents[2]
UTC = dt.timezone.utc
CATS = ["mugs", "toys", "garden", "lamps"]
COUNTRIES = ["DE", "FR", "United Kingdom"]
FLAGS = ["age_unverified", "b2b"]
T0 = dt.datetime(2024, 11, 1, tzinfo=UTC)

# --- strategies ---

scores_st = st.floats(-10, 10, allow_nan=False, allow_infinity=False)


@st.composite
def candidates_st(draw, max_size: int = 30) -> Candidates:
    """Unique ids i0..i{m-1}, ranked scores (negatives included: two-tower dot products), some unknown
    categories, stock and margin columns with unknowns (None stock, NaN margin)."""
    m = draw(st.integers(0, max_size))
    scores = sorted(draw(st.lists(scores_st, min_size=m, max_size=m)), reverse=True)
    cats = draw(st.lists(st.sampled_from(CATS + [None]), min_size=m, max_size=m))
    stock = draw(st.lists(st.sampled_from([True, True, True, False, None]), min_size=m, max_size=m))
    margin = draw(st.lists(st.one_of(st.floats(-0.2, 0.8), st.just(float("nan"))), min_size=m, max_size=m))
    stock_col = np.empty(m, dtype=object)
    stock_col[:] = stock
    return Candidates.from_lists([f"i{j}" for j in range(m)], scores, "two_tower", cats,
                                 {"in_stock": stock_col, "margin": np.asarray(margin, dtype=float)})


context_st = st.builds(
    RuleContext,
    now=st.datetimes(dt.datetime(2024, 10, 1), dt.datetime(2024, 12, 31), timezones=st.just(UTC)),
    country=st.sampled_from(COUNTRIES + [None]),
    flags=st.frozensets(st.sampled_from(FLAGS)),
)
item_ids_st = st.lists(st.sampled_from([f"i{j}" for j in range(35)]), max_size=4, unique=True)
cat_list_st = st.lists(st.sampled_from(CATS), max_size=2, unique=True)
window_st = st.tuples(st.integers(0, 60), st.integers(1, 60)).map(
    lambda t: (T0 + dt.timedelta(days=t[0] - 30), T0 + dt.timedelta(days=t[0] - 30 + t[1])))


def _targets(draw) -> tuple[list[str], list[str]]:
    items, cats = draw(item_ids_st), draw(cat_list_st)
    if not items and not cats:
        items = ["i0"]
    return items, cats


@st.composite
def promotion_st(draw) -> PromotionRuleConfig:
    items, cats = _targets(draw)
    start, end = draw(window_st)
    return PromotionRuleConfig(type="promotion", items=items, categories=cats,
                               factor=draw(st.floats(0.1, 5.0)), start=start, end=end)


@st.composite
def block_st(draw) -> BlockRuleConfig:
    items, cats = _targets(draw)
    countries = draw(st.one_of(st.none(), st.lists(st.sampled_from(COUNTRIES), min_size=1, max_size=2)))
    return BlockRuleConfig(type="block", items=items, categories=cats, countries=countries,
                           flag=draw(st.one_of(st.none(), st.sampled_from(FLAGS))))


@st.composite
def margin_st(draw) -> MarginTargetRuleConfig:
    mult = draw(st.dictionaries(st.sampled_from(CATS), st.floats(0.2, 3.0), max_size=3))
    w = draw(st.floats(0.0, 3.0))
    if not mult and w == 0.0:
        w = 1.0
    return MarginTargetRuleConfig(type="margin_target", categories=mult, margin_weight=w)


@st.composite
def pin_st(draw) -> PinRuleConfig:
    start, end = draw(st.one_of(st.just((None, None)), window_st))
    return PinRuleConfig(type="pin", item=draw(st.sampled_from([f"i{j}" for j in range(35)])),
                         position=draw(st.integers(1, 40)), start=start, end=end)


def _stock_false(c: Candidates) -> set[str]:
    return {i for i, s in zip(c.ids, c.column("in_stock")) if s is False}


def _blocked(cfg: BlockRuleConfig, c: Candidates) -> set[str]:
    return {i for i, cat in zip(c.ids, c.categories) if i in cfg.items or cat in cfg.categories}


# --- the contract mixin ---

class RuleContract:
    """Inherit and set `rule_st`: a strategy drawing a rule of the class under test."""

    rule_st: st.SearchStrategy

    # one test body shared by every rule class is what a contract mixin is (hypothesis flags it)
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.differing_executors])
    @given(data=st.data(), cands=candidates_st(), ctx=context_st)
    def test_contract(self, data, cands, ctx):
        rule: Rule = data.draw(self.rule_st)
        before_ids, before_scores = cands.ids.copy(), cands.scores.copy()
        out = rule(cands, ctx)
        assert isinstance(out, Candidates)
        assert len(out) <= len(cands)
        # pure: input untouched, same answer twice
        assert np.array_equal(cands.ids, before_ids) and np.array_equal(cands.scores, before_scores)
        assert rule(cands, ctx).equals(out)
        pos = {i: j for j, i in enumerate(cands.ids)}
        old_score = dict(zip(cands.ids, cands.scores))
        out_ids = out.ids.tolist()
        if rule.kind == "filter":
            idx = [pos[i] for i in out_ids]
            assert idx == sorted(idx), "a filter keeps the order"
            assert all(old_score[i] == s for i, s in zip(out_ids, out.scores)), "a filter keeps the scores"
        else:
            assert sorted(out_ids) == sorted(cands.ids.tolist()), f"a {rule.kind} is a permutation"
        if rule.kind == "reweight" and out is not cands:
            assert np.all(np.diff(out.scores) <= 0), "a re-weight re-sorts by the new scores"
        if rule.kind == "reorder":
            assert all(old_score[i] == s for i, s in zip(out_ids, out.scores)), "a reorder keeps the scores"
        # columns travel with their rows
        for name, col in cands.columns.items():
            src = dict(zip(cands.ids, col.tolist()))
            assert all(src[i] == v or (v != v and src[i] != src[i]) for i, v in zip(out_ids, out.column(name).tolist()))


OOS = OutOfStockRule(OutOfStockRuleConfig(type="out_of_stock"))


class TestOutOfStockRule(RuleContract):
    rule_st = st.just(OOS)

    @given(cands=candidates_st(), ctx=context_st)
    def test_out_of_stock_never_appears_and_unknown_stock_stays(self, cands, ctx):
        out = OOS(cands, ctx)
        assert not _stock_false(cands) & set(out.ids)
        assert len(out) == len(cands) - len(_stock_false(cands))  # None (unknown) is kept

    def test_boolean_and_numeric_columns(self):
        rule = OutOfStockRule(OutOfStockRuleConfig(type="out_of_stock"))
        ctx = RuleContext(T0)
        c = Candidates.from_lists(["a", "b", "c"], [3, 2, 1], columns={"in_stock": np.array([True, False, True])})
        assert rule(c, ctx).ids.tolist() == ["a", "c"]
        c = Candidates.from_lists(["a", "b", "c"], [3, 2, 1], columns={"in_stock": np.array([1.0, np.nan, 0.0])})
        assert rule(c, ctx).ids.tolist() == ["a", "b"]  # NaN: unknown, kept
        all_in = Candidates.from_lists(["a"], [1], columns={"in_stock": np.array([True])})
        assert rule(all_in, ctx) is all_in

    def test_missing_column_names_it(self):
        with pytest.raises(KeyError, match="in_stock"):
            OOS(Candidates.from_lists(["a"], [1]), RuleContext(T0))


class TestPromotionRule(RuleContract):
    rule_st = promotion_st().map(PromotionRule)

    @settings(max_examples=150)
    @given(cfg=promotion_st(), cands=candidates_st(), ctx=context_st)
    def test_only_inside_its_window(self, cfg, cands, ctx):
        out = PromotionRule(cfg)(cands, ctx)
        inside = cfg.start <= ctx.now < cfg.end
        if not inside:
            assert out is cands
            return
        new = dict(zip(out.ids, out.scores))
        for i, cat, s in zip(cands.ids, cands.categories, cands.scores):
            hit = i in cfg.items or cat in cfg.categories
            if not hit:
                assert new[i] == s
            elif cfg.factor >= 1:
                assert new[i] >= s  # a boost never lowers a score, negative or not
            else:
                assert new[i] <= s

    def test_boost_moves_item_up_even_with_negative_scores(self):
        # scores -1, -2, -3; doubling 'c' gives -1.5 (divide negatives): c passes b
        c = Candidates.from_lists(["a", "b", "c"], [-1.0, -2.0, -3.0], categories=["x", "x", "y"])
        rule = PromotionRule(PromotionRuleConfig(type="promotion", categories=["y"], factor=2.0))
        out = rule(c, RuleContext(T0))
        assert out.ids.tolist() == ["a", "c", "b"] and out.scores.tolist() == [-1.0, -1.5, -2.0]

    def test_window_is_half_open(self):
        cfg = PromotionRuleConfig(type="promotion", items=["b"], factor=10.0, start=T0, end=T0 + dt.timedelta(days=1))
        c = Candidates.from_lists(["a", "b"], [2.0, 1.0])
        assert PromotionRule(cfg)(c, RuleContext(T0)).ids.tolist() == ["b", "a"]
        assert PromotionRule(cfg)(c, RuleContext(T0 + dt.timedelta(days=1))) is c
        assert PromotionRule(cfg)(c, RuleContext(T0 - dt.timedelta(seconds=1))) is c


class TestMarginTargetRule(RuleContract):
    rule_st = margin_st().map(MarginTargetRule)

    def test_known_answer(self):
        # a: 1.0 x 1.5 (garden) = 1.5; b: 1.2 x exp(1 x 0) = 1.2; c: 1.1 x exp(ln 2) = 2.2; d: NaN margin: 1.0
        c = Candidates.from_lists(["a", "b", "c", "d"], [1.0, 1.2, 1.1, 1.0],
                                  categories=["garden", "toys", "toys", None],
                                  columns={"margin": np.array([0.0, 0.0, np.log(2.0), np.nan])})
        rule = MarginTargetRule(MarginTargetRuleConfig(type="margin_target", categories={"garden": 1.5},
                                                       margin_weight=1.0))
        out = rule(c, RuleContext(T0))
        assert out.ids.tolist() == ["c", "a", "b", "d"]
        np.testing.assert_allclose(out.scores, [2.2, 1.5, 1.2, 1.0])
        assert rule.requires == ("margin",)
        assert MarginTargetRule(MarginTargetRuleConfig(type="margin_target", categories={"x": 2.0})).requires == ()


class TestBlockRule(RuleContract):
    rule_st = block_st().map(BlockRule)

    @settings(max_examples=150)
    @given(cfg=block_st(), cands=candidates_st(), ctx=context_st)
    def test_blocked_items_never_appear_where_it_applies(self, cfg, cands, ctx):
        out = BlockRule(cfg)(cands, ctx)
        in_country = cfg.countries is None or ctx.country is None or ctx.country in cfg.countries
        applies = in_country and (cfg.flag is None or cfg.flag in ctx.flags)
        if applies:
            assert not _blocked(cfg, cands) & set(out.ids)
            assert set(out.ids) == set(cands.ids) - _blocked(cfg, cands)
        else:
            assert out is cands

    def test_scopes(self):
        c = Candidates.from_lists(["a", "b"], [2, 1], categories=["alcohol", "toys"])
        rule = BlockRule(BlockRuleConfig(type="block", categories=["alcohol"], countries=["de"], flag="age_unverified"))
        assert rule(c, RuleContext(T0, "DE", {"age_unverified"})).ids.tolist() == ["b"]
        assert rule(c, RuleContext(T0, None, {"age_unverified"})).ids.tolist() == ["b"]  # unknown country: fail closed
        assert rule(c, RuleContext(T0, "FR", {"age_unverified"})) is c
        assert rule(c, RuleContext(T0, "DE")) is c


class TestPinRule(RuleContract):
    rule_st = pin_st().map(PinRule)

    @settings(max_examples=150)
    @given(cfg=pin_st(), cands=candidates_st(), ctx=context_st)
    def test_pin_lands_at_its_position(self, cfg, cands, ctx):
        out = PinRule(cfg)(cands, ctx)
        if cfg.active(ctx.now) and cfg.item in set(cands.ids):
            assert out.ids.tolist().index(cfg.item) == min(cfg.position, len(cands)) - 1
            rest = [i for i in out.ids if i != cfg.item]
            assert rest == [i for i in cands.ids if i != cfg.item]  # the others keep their order
        else:
            assert out is cands


def test_place_pins_all_at_once():
    # sequential placement would let the pin at 1 push the pin at 2 to 3; together both land
    c = Candidates.from_lists(list("abcdef"), [6, 5, 4, 3, 2, 1])
    out, moves = place_pins(c, [("e", 2), ("f", 1), ("z", 3), ("c", 9)])
    assert out.ids.tolist() == ["f", "e", "a", "b", "d", "c"]
    assert moves == [(4, 1), (5, 0), None, (2, 5)]
    assert place_pins(c, [("a", 1)])[0] is c
    # b's position 7 is past the end: it takes the last free place (5th), so a still lands exactly at 6
    out, _ = place_pins(c, [("b", 7), ("a", 6)])
    assert out.ids.tolist() == ["c", "d", "e", "f", "b", "a"]


def test_rule_context_needs_an_aware_time():
    with pytest.raises(ValueError, match="timezone-aware"):
        RuleContext(dt.datetime(2024, 1, 1))
    assert RuleContext(T0, flags=["b2b"]).flags == frozenset({"b2b"})


# --- the chain ---

@st.composite
def chain_configs_st(draw) -> list:
    rules = draw(st.lists(st.one_of(st.just(OutOfStockRuleConfig(type="out_of_stock")), promotion_st(), margin_st(),
                                    block_st()), max_size=5))
    pins, items, positions = [], set(), set()
    for p in draw(st.lists(pin_st(), max_size=3)):
        if p.item not in items and p.position not in positions:
            items.add(p.item)
            positions.add(p.position)
            pins.append(p)
    out = rules + pins
    return draw(st.permutations(out))


@settings(max_examples=200, deadline=None)
@given(cfgs=chain_configs_st(), div=st.sampled_from(["none", "max_per_category", "mmr"]), cands=candidates_st(),
       ctx=context_st, k=st.integers(1, 15))
def test_chain_properties(cfgs, div, cands, ctx, k):
    chain = RuleChain.from_config(cfgs, DiversityConfig(method=div, max_per_category=2))
    out, fired = chain.apply(cands, ctx, k)
    assert len(out) <= min(k, len(cands))
    assert set(out.ids) <= set(cands.ids) and len(set(out.ids)) == len(out)
    assert set(fired) <= set(chain.names)
    if any(c.type == "out_of_stock" for c in cfgs):
        assert not _stock_false(cands) & set(out.ids)
    for c in cfgs:
        if c.type == "block" and BlockRule(c).applies(ctx):
            assert not _blocked(c, cands) & set(out.ids)
    # every active pin whose item survived the filters sits exactly at its position (when the list reaches it)
    filtered = cands
    for c in cfgs:
        if c.type in ("out_of_stock", "block"):
            filtered = (OutOfStockRule(c) if c.type == "out_of_stock" else BlockRule(c))(filtered, ctx)
    survivors = set(filtered.ids)
    served = out.ids.tolist()
    for c in cfgs:
        if c.type == "pin" and c.active(ctx.now) and c.item in survivors and c.position <= min(k, len(filtered)):
            assert served[c.position - 1] == c.item
    if not cfgs and div == "none":
        assert out.equals(cands.head(k)) and fired == []


def test_chain_known_answer_and_fired():
    # ranked a..h. Declared order puts the pin first, but pins run last.
    # out_of_stock drops b (in the top 3: fires) and h; the DE block on toys drops c (fires): a d e f g.
    # promotion x1.1 on f: 0.4 -> 0.44, still behind e: the top 3 does not change, so it is silent.
    # max 1 per category in the top 3: d is a second mug, so e (garden) and f (lamps) come up: a e f | d g.
    # the pin puts f first: f a e.
    c = Candidates.from_lists(list("abcdefgh"), [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.2, 0.1],
                              categories=["mugs", "mugs", "toys", "mugs", "garden", "lamps", "lamps", "mugs"],
                              columns={"in_stock": np.array([True, False, True, True, True, True, True, False])})
    cfg = parse_config(yaml.safe_load("""
rules:
  - {type: pin, item: f, position: 1, name: contract_f}
  - {type: out_of_stock}
  - {type: block, categories: [toys], countries: [DE]}
  - {type: promotion, items: [f], factor: 1.1, start: 2024-11-01T00:00:00Z, end: 2024-12-01T00:00:00Z}
diversity: {method: max_per_category, max_per_category: 1}
"""))
    chain = RuleChain.from_config(cfg.rules, cfg.diversity)
    assert chain.names == ("contract_f", "out_of_stock", "block", "promotion", "diversity")
    assert chain.required_columns == {"in_stock"}
    ctx = RuleContext(T0 + dt.timedelta(days=3), "DE")
    out, fired = chain.apply(c, ctx, 3)
    assert out.ids.tolist() == ["f", "a", "e"]
    np.testing.assert_allclose(out.scores, [0.44, 0.9, 0.5])  # a pinned item keeps its score
    assert fired == ["out_of_stock", "block", "diversity", "contract_f"]
    # with k = 5 the promotion's effect is still invisible (f was already 4th of a d e f g)
    assert "promotion" not in chain.apply(c, ctx, 5)[1]
    out, fired = chain.apply(c, RuleContext(T0 + dt.timedelta(days=3), "FR"), 3)
    assert "block" not in fired and out.ids.tolist() == ["f", "a", "c"]


def test_insertable_pin_goes_through_stock_and_blocks():
    cfg = parse_config({"rules": [{"type": "out_of_stock"}, {"type": "block", "items": ["z"], "flag": "kids"},
                                  {"type": "pin", "item": "z", "position": 2, "insert": True}]})
    chain = RuleChain.from_config(cfg.rules)
    assert chain.insertable_items == ("z",)
    ctx = RuleContext(T0)
    base = Candidates.from_lists(["a", "b"], [0.5, -0.5], "two_tower", ["x", "y"])
    added = chain.add_pinned(base, ctx, {"z": "toys"})
    assert added.ids.tolist() == ["a", "b", "z"] and added.sources[-1] == "pin"
    assert added.scores[-1] == -0.5 and added.categories[-1] == "toys"
    assert chain.add_pinned(added, ctx) is added
    filled = added.with_columns(in_stock=np.array([True, True, True]))
    assert chain.apply(filled, ctx, 3)[0].ids.tolist() == ["a", "z", "b"]
    assert "z" not in chain.apply(filled, RuleContext(T0, flags={"kids"}), 3)[0].ids
    gone = added.with_columns(in_stock=np.array([True, True, False]))
    assert chain.apply(gone, ctx, 3)[0].ids.tolist() == ["a", "b"]
    with pytest.raises(ValueError, match="before candidate columns"):
        chain.add_pinned(base.with_columns(in_stock=np.array([True, True])), ctx)


def test_pins_to_insert_and_pinned():
    cfg = parse_config({"rules": [
        {"type": "pin", "name": "p1", "item": "z", "position": 1, "insert": True},
        {"type": "pin", "name": "p2", "item": "y", "position": 2, "insert": True,
         "start": (T0 + dt.timedelta(days=1)).isoformat()},
        {"type": "pin", "name": "p3", "item": "x", "position": 3},  # not insertable
        {"type": "pin", "name": "p4", "item": "w", "position": 4, "insert": True}]})
    chain = RuleChain.from_config(cfg.rules)
    ctx = RuleContext(T0)
    assert chain.pins_to_insert(ctx, lambda item: False) == ["z", "w"]  # declared order; y not active yet
    assert chain.pins_to_insert(ctx, {"w"}.__contains__) == ["z"]
    assert chain.pins_to_insert(RuleContext(T0 + dt.timedelta(days=2)), lambda item: False) == ["z", "y", "w"]
    got = chain.pinned(["z", "w"], np.array([0.7, np.nan, -0.2]), {"z": "toys"}, {"row": np.array([4, 9])})
    assert got.ids.tolist() == ["z", "w"] and got.scores.tolist() == [-0.2, -0.2]
    assert got.sources.tolist() == ["pin", "pin"] and got.categories.tolist() == ["toys", None]
    assert got.column("row").tolist() == [4, 9]
    assert chain.pinned(["z"], np.array([np.nan])).scores.tolist() == [0.0]  # no score present: 0.0
    assert chain.pinned(["z"], np.zeros(0)).scores.tolist() == [0.0]


def test_wiring_fails_at_build_time():
    chain = RuleChain.from_config(parse_config({"rules": [{"type": "out_of_stock"},
                                                          {"type": "margin_target", "margin_weight": 0.5}]}).rules,
                                  DiversityConfig(method="mmr", similarity="embedding"))
    with pytest.raises(RuleWiringError) as e:
        chain.check_columns(["in_stock"])
    assert "margin_target needs 'margin'" in str(e.value) and "diversity needs 'embedding'" in str(e.value)
    chain.check_columns(["in_stock", "margin", "embedding"])
    with pytest.raises(RuleWiringError, match="unique"):
        RuleChain([OutOfStockRule(OutOfStockRuleConfig(type="out_of_stock"))] * 2)
    pin = PinRuleConfig(type="pin", item="a", position=1)
    with pytest.raises(RuleWiringError, match="clash"):
        RuleChain([PinRule(pin, "p1"), PinRule(pin.model_copy(update={"item": "b"}), "p2")])


# --- a rule from outside cartwise, by dotted path ---

class KeepFirstConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int


class KeepFirstRule(Rule):
    """Keeps the first `n` candidates (a stand-in for a shop's own rule)."""

    kind = "filter"
    config_class = KeepFirstConfig

    def __call__(self, candidates, context):
        return candidates.head(self.config.n)


class TestKeepFirstRule(RuleContract):
    rule_st = st.integers(0, 10).map(lambda n: KeepFirstRule(KeepFirstConfig(n=n)))


def test_custom_rule_by_dotted_path():
    path = f"{__name__}.KeepFirstRule"
    cfg = parse_config({"rules": [{"type": path, "name": "first_two", "params": {"n": 2}}]})
    chain = RuleChain.from_config(cfg.rules)
    out, fired = chain.apply(Candidates.from_lists(list("abc"), [3, 2, 1]), RuleContext(T0), 3)
    assert out.ids.tolist() == ["a", "b"] and fired == ["first_two"]
    with pytest.raises(RuleWiringError, match=r"rules\.0\.params: n: "):
        RuleChain.from_config(parse_config({"rules": [{"type": path, "params": {"m": 2}}]}).rules)
    with pytest.raises(RuleWiringError, match="cannot import"):
        RuleChain.from_config(parse_config({"rules": [{"type": "nowhere.Rule"}]}).rules)
    with pytest.raises(RuleWiringError, match="not a serving.rules.Rule"):
        RuleChain.from_config(parse_config({"rules": [{"type": "serving.rules.place_pins"}]}).rules)


# --- config ---

ALL_RULES_YAML = """
rules:
  - type: out_of_stock
  - type: promotion
    name: black_friday
    categories: [garden]
    items: ["22423", 85123A]
    factor: 1.5
    start: 2024-11-29T00:00:00+01:00
    end: 2024-12-03T00:00:00+01:00
  - type: margin_target
    categories: {garden: 1.2, toys: 0.9}
    margin_weight: 0.5
  - type: block
    categories: [alcohol]
    countries: [DE, FR]
    flag: age_unverified
  - type: pin
    item: "21212"
    position: 3
    insert: true
diversity:
  method: mmr
  mmr_lambda: 0.6
"""


def test_each_rule_type_parses_from_yaml():
    cfg = parse_config(yaml.safe_load(ALL_RULES_YAML), source="c.yaml")
    oos, promo, margin, block, pin = cfg.rules
    assert isinstance(oos, OutOfStockRuleConfig)
    assert isinstance(promo, PromotionRuleConfig) and promo.items == ["22423", "85123A"] and promo.factor == 1.5
    assert promo.start == dt.datetime(2024, 11, 28, 23, tzinfo=UTC) and promo.name == "black_friday"
    assert isinstance(margin, MarginTargetRuleConfig) and margin.categories == {"garden": 1.2, "toys": 0.9}
    assert isinstance(block, BlockRuleConfig) and block.countries == ["DE", "FR"] and block.flag == "age_unverified"
    assert isinstance(pin, PinRuleConfig) and (pin.item, pin.position, pin.insert) == ("21212", 3, True)
    assert cfg.diversity.method == "mmr" and cfg.diversity.mmr_lambda == 0.6
    # a bundle stores the config as JSON; it must read back the same
    assert parse_config(cfg.model_dump(mode="json")).rules == cfg.rules
    assert RuleChain.from_config(cfg.rules, cfg.diversity).names == (
        "out_of_stock", "black_friday", "margin_target", "block", "pin", "diversity")


@pytest.mark.parametrize("doc, path, reason", [
    ("rules:\n  - type: boost\n    factor: 2\n", "rules.0", "unknown rule type 'boost'"),
    ("rules:\n  - items: [a]\n", "rules.0", "a rule needs a `type`"),
    ("rules:\n  - out_of_stock\n", "rules.0", "a rule is a mapping"),
    ("rules:\n  - type: out_of_stock\n  - {type: promotion, itms: [a], items: [b], factor: 2}\n",
     "rules.1.promotion.itms", "unknown key"),
    ("rules:\n  - {type: promotion, items: [a], factor: 0}\n", "rules.0.promotion.factor", "greater than 0"),
    ("rules:\n  - {type: promotion, factor: 2}\n", "rules.0.promotion", "needs `items` or `categories`"),
    ("rules:\n  - {type: promotion, items: [a], factor: 2, start: 2024-11-29 00:00:00}\n",
     "rules.0.promotion.start", "timezone"),
    ("rules:\n  - {type: promotion, items: [a], factor: 2, start: 2024-11-29T00:00:00Z, end: 2024-11-28T00:00:00Z}\n",
     "rules.0.promotion", "end must be after start"),
    ("rules:\n  - {type: block, items: [22423]}\n", "rules.0.block.items", "quote 22423"),
    ("rules:\n  - {type: block, items: [a], countries: []}\n", "rules.0.block.countries", "at least 1"),
    ("rules:\n  - {type: margin_target}\n", "rules.0.margin_target", "needs `categories`"),
    ("rules:\n  - {type: margin_target, categories: {toys: 0}}\n", "rules.0.margin_target", "(0, 100]"),
    ("rules:\n  - {type: pin, item: a, position: 0}\n", "rules.0.pin.position", "greater than or equal to 1"),
    ("rules:\n  - {type: pin, item: a, position: 1}\n  - {type: pin, item: b, position: 1}\n", "rules",
     "pins 'pin_1' and 'pin_2' both claim position 1"),
    ("rules:\n  - {type: pin, item: a, position: 1}\n  - {type: pin, item: a, position: 2}\n", "rules",
     "both claim item 'a'"),
    ("rules:\n  - {type: out_of_stock, name: x}\n  - {type: out_of_stock, name: x}\n", "rules", "unique"),
    ("rules:\n  - {type: my.Rule, param: {}}\n", "rules.0.custom.param", "unknown key"),
    ("diversity: {method: shuffle}\n", "diversity.method", "max_per_category"),
    ("diversity: {max_per_categry: 2}\n", "diversity.max_per_categry", "unknown key"),
    ("serving: {override_window: 50}\n", "serving", "override_min_requests must not exceed"),
    ("serving: {override_alarm_rate: 1.5}\n", "serving.override_alarm_rate", "less than or equal to 1"),
])
def test_bad_rules_name_the_key_path_and_reason(doc, path, reason):
    with pytest.raises(ConfigError) as e:
        parse_config(yaml.safe_load(doc), source="c.yaml")
    msg = str(e.value)
    assert f"c.yaml: {path}: " in msg and reason in msg, msg


def test_pins_in_disjoint_windows_may_share_a_position():
    doc = """
rules:
  - {type: pin, item: a, position: 1, end: 2024-12-01T00:00:00Z}
  - {type: pin, item: b, position: 1, start: 2024-12-01T00:00:00Z}
"""
    chain = RuleChain.from_config(parse_config(yaml.safe_load(doc)).rules)
    c = Candidates.from_lists(["x", "a", "b"], [3, 2, 1])
    assert chain.apply(c, RuleContext(dt.datetime(2024, 11, 30, tzinfo=UTC)), 3)[0].ids[0] == "a"
    assert chain.apply(c, RuleContext(dt.datetime(2024, 12, 1, tzinfo=UTC)), 3)[0].ids[0] == "b"


def test_shipped_config_builds_a_chain():
    cfg = load_config(ROOT / "cartwise.yaml")
    chain = RuleChain.from_config(cfg.rules, cfg.diversity)
    chain.check_columns(["in_stock", "margin"])
    assert cfg.serving.override_alarm_rate == 0.15 and cfg.serving.override_window == 1000


@pytest.mark.parametrize("size", [0, 1, 3, rules_module._SMALL_SET, rules_module._SMALL_SET + 1, 40])
def test_membership_is_set_membership_for_small_and_large_sets(size):
    """Item and category tests of the promotion and block rules: compared value by value up to `_SMALL_SET`
    wanted values, one set lookup per candidate above; both are `value in wanted`, missing categories too."""
    rng = np.random.default_rng(size)
    pool = [f"I{i}" for i in range(60)]
    values = np.array([None if r < 0.1 else pool[int(r * 600) % 60] for r in rng.random(500)], dtype=object)
    wanted = frozenset(rng.choice(pool, size, replace=False).tolist()) if size else frozenset()
    got = rules_module._member(values, wanted)
    assert got.dtype == bool and got.tolist() == [v in wanted for v in values.tolist()]
    assert size == 0 or got.any()


def _place_pins_reference(candidates: Candidates, pins):
    """place_pins as it was written first, one Python step per candidate: the oracle of the NumPy version."""
    if not pins:
        return candidates, []
    index: dict[str, int] = {}
    for i, item in enumerate(candidates.ids.tolist()):
        index.setdefault(item, i)
    present = sorted((pos - 1, index[item]) for item, pos in pins if item in index)
    if not present:
        return candidates, [None] * len(pins)
    m = len(candidates)
    order = [-1] * m
    over: list[int] = []
    for p, i in present:
        if p < m and order[p] < 0:
            order[p] = i
        else:
            over.append(i)
    free = [j for j in range(m) if order[j] < 0]
    for j, i in zip(free[len(free) - len(over):], over):
        order[j] = i
    pinned = {i for _, i in present}
    rest = (i for i in range(m) if i not in pinned)
    order = [i if i >= 0 else next(rest) for i in order]
    new_at = {i: j for j, i in enumerate(order) if i in pinned}
    moves = [(index[item], new_at[index[item]]) if item in index else None for item, _ in pins]
    if all(m is None or m[0] == m[1] for m in moves):
        return candidates, moves
    return candidates.take(np.asarray(order, dtype=np.intp)), moves


@settings(max_examples=300, deadline=None)
@given(m=st.integers(0, 40), data=st.data())
def test_place_pins_answers_what_the_loop_answered(m, data):
    """Few pins (compared in NumPy) and many (a dict over the ids); positions past the end, repeated
    positions and items that are no candidate included."""
    ids = [f"i{j}" for j in range(m)]
    c = Candidates.from_lists(ids, list(range(m, 0, -1)))
    pool = ids + ["ghost1", "ghost2"]
    n_pins = data.draw(st.sampled_from([0, 1, 2, 3, 5, rules_module._SMALL_SET + 4]))
    items = data.draw(st.lists(st.sampled_from(pool), min_size=n_pins, max_size=n_pins, unique=True)
                      if n_pins <= len(pool) else st.just(pool))
    pins = [(item, data.draw(st.integers(1, m + 3))) for item in items]
    got, got_moves = place_pins(c, pins)
    want, want_moves = _place_pins_reference(c, pins)
    assert got_moves == want_moves
    assert got.ids.tolist() == want.ids.tolist() and (got is c) == (want is c)


@pytest.mark.parametrize("n_listed", [1, 3, rules_module._SMALL_SET, rules_module._SMALL_SET + 5])
def test_margin_multipliers_are_the_listed_categorys(n_listed):
    """Compared per listed category up to `_SMALL_SET` of them, looked up per candidate above: either way each
    candidate's score is boosted by its own category's multiplier (1 for an unlisted or missing one)."""
    rng = np.random.default_rng(n_listed)
    names = [f"cat{j}" for j in range(40)]
    listed = {names[j]: float(rng.uniform(0.5, 3.0)) for j in rng.choice(40, n_listed, replace=False)}
    cats = [None if r < 0.05 else pd.NA if r < 0.08 else float("nan") if r < 0.1 else names[int(r * 400) % 40]
            for r in rng.random(300)]  # missing categories of every kind a frame can hold
    scores = rng.uniform(-1.0, 5.0, 300)
    c = Candidates.from_lists([f"i{j}" for j in range(300)], scores.tolist(), categories=cats)
    out = MarginTargetRule(MarginTargetRuleConfig(type="margin_target", categories=listed))(c, RuleContext(T0))
    multiplier = np.array([listed.get(x, 1.0) if isinstance(x, str) else 1.0 for x in cats])
    want = np.where(scores >= 0, scores * multiplier, scores / multiplier)
    got = dict(zip(out.ids.tolist(), out.scores.tolist()))
    np.testing.assert_allclose([got[f"i{j}"] for j in range(300)], want, rtol=1e-12)
    assert (multiplier != 1.0).any()


def test_an_item_pinned_twice_is_refused_by_name():
    c = Candidates.from_lists(list("abc"), [3, 2, 1])
    with pytest.raises(ValueError, match=r"pinned more than once: \['a'\]"):
        place_pins(c, [("a", 1), ("b", 3), ("a", 2)])
