"""Typed view of `cartwise.yaml`: the one file a shop declares everything in
that is not a Feast definition.

Where it sits: the bottom layer. The CLI parses the file once with
:func:`load_config`; every stage (ingest, dataset, training, evaluation,
export, serving) then reads only its own section of the returned
:class:`CartwiseConfig`.

Every section forbids unknown keys, so a typo stops the run with the file, the
key path and the reason (:class:`ConfigError`) instead of being ignored.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cartwise.extensions import check_type, labels
from pydantic import AfterValidator, AwareDatetime, BeforeValidator, Discriminator, Tag

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "return")
ADAPTERS = ("online_retail", "retailrocket", "rees46", "canonical")


class ConfigError(ValueError):
    """A config file that cannot be used; the message names file, key path and reason."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """Where raw events come from and where every stage writes.

    Attributes:
        adapter: input format of `paths` (`online_retail`, `retailrocket`,
            `rees46`, `canonical`).
        paths: raw files, relative to the config file's directory unless absolute.
        work_dir: root of the stage directories (ingest/, features/, dataset/,
            model/, bundles/), relative to the config file.
        on_malformed_value: `fail` stops ingest at the first value that cannot
            be parsed (naming file, column and row); `quarantine` keeps going and
            quarantines such rows with the reason.
        include_guests_in_training: purchases without a customer id are always
            kept (item popularity uses them); this decides whether they also
            become user-level training rows (they cannot: no user to learn).
    """

    adapter: Literal["online_retail", "retailrocket", "rees46", "canonical"] = "online_retail"
    paths: list[Path] = Field(
        default_factory=lambda: [Path("data/online_retail/online_retail_2010-12-01_2011-09-30.csv.gz")],
        min_length=1,
    )
    work_dir: Path = Path("build")
    on_malformed_value: Literal["fail", "quarantine"] = "fail"
    include_guests_in_training: bool = False


class RecencyConfig(_Section):
    """Extra weight for recent behaviour: events in the last `window_days`
    before the training cut-off are multiplied by `multiplier`."""

    window_days: int = Field(7, ge=0, le=3650)
    multiplier: float = Field(4.0, ge=1.0, le=100.0)


class ObjectiveConfig(_Section):
    """What the models optimise: the label and the weight of each event type.

    Purchases are the label (weight 1.0); add-to-cart is a secondary signal;
    clicks and views are heavily down-weighted; returns count for nothing.
    """

    #: what retrieval learns from: `purchase` (every event type weighted in
    #: event_weights, purchases first) or `click` (click events only, each weighing
    #: its recency multiplier; the A/B test's baseline). `click` needs click events
    #: with event_weights.click > 0: training stops with the reason otherwise (Online
    #: Retail has purchases only)
    label: Literal["purchase", "click"] = "purchase"
    event_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "purchase": 1.0,
            "add_to_cart": 0.3,
            "click": 0.05,
            "view": 0.01,
            "return": 0.0,
        }
    )
    recency: RecencyConfig = RecencyConfig()
    #: a purchase line worth k x the median line weighs min(k, cap) more (1.0: off)
    value_weight_cap: float = Field(2.0, ge=1.0, le=100.0)
    #: sampled negatives per labelled row in the training set (for ranking; retrieval uses in-batch negatives)
    negatives_per_positive: int = Field(0, ge=0, le=100)

    @field_validator("event_weights")
    @classmethod
    def _known_event_types(cls, v: dict[str, float]) -> dict[str, float]:
        for k, w in v.items():
            if k not in EVENT_TYPES:
                raise ValueError(f"unknown event type {k!r}; expected one of {', '.join(EVENT_TYPES)}")
            if not (0.0 <= w <= 100.0):
                raise ValueError(f"weight for {k!r} must be in [0, 100], got {w}")
        return v


class ModelConfig(_Section):
    """Sizes and training settings of the retrieval towers.

    Attributes:
        logq_correction: subtract log(item's share of the training examples)
            from in-batch logits (popular items are sampled as negatives more often).
        item_id_dropout: share of training examples whose item id path is
            zeroed, so the content path alone embeds items never seen in training.
        user_id_dropout: the same for the user id (unknown users are embedded
            from their features and session context).
    """

    embedding_size: int = Field(32, ge=2, le=1024)
    epochs: int = Field(3, ge=1, le=1000)
    batch_size: int = Field(2048, ge=8, le=1_000_000)
    learning_rate: float = Field(0.05, gt=0.0, le=10.0)
    seed: int = 42
    logq_correction: bool = True
    item_id_dropout: float = Field(0.2, ge=0.0, lt=1.0)
    user_id_dropout: float = Field(0.1, ge=0.0, lt=1.0)


#: fewest calibration queries whose recall is trusted (pipelines.build_index.calibrate_search: fewer, no calibration)
MIN_CALIBRATION_QUERIES = 50


class IndexConfig(_Section):
    """ScaNN index parameters; below `brute_force_below` items an exact search is built.

    Above it (pipelines/build_index.py): a tree of `num_leaves` leaves
    (default about sqrt(items)), each item also filed in a second leaf chosen
    by SOAR (`soar_lambda`; None: one leaf per item), asymmetric hashing with
    `dims_per_block` dimensions per codebook (default: 1 below 64-d, else 2:
    at least 32 codebooks from 32-d up), then exact re-ordering of the best
    hashed candidates: a query for k neighbours re-orders at most
    `reorder_per_neighbor` x k of them, at most `reorder` unless k itself is
    more (`reorder_per_neighbor: 0` always re-orders `reorder`), see
    `cartwise.bundle.reorder_depth`. `num_leaves_to_search` is the most leaves a
    query searches (default 3 sqrt(leaves), at most 50). With `target_recall`,
    export and evaluation calibrate the search on the query tower's outputs
    for up to `calibration_queries` buyers (export: the most active after its
    200 golden users; evaluation: training buyers who are not test users):
    for list lengths 10, 20, 40, ... up to `retrieval.k` (evaluation: up to
    the length of its lists) and re-ordering depths of 2, 3 and
    `reorder_per_neighbor` candidates per neighbour (never more than the
    configured depth), the fewest leaves whose recall@k against brute force
    on them reached `target_recall` with two standard errors to spare; of
    those settings the cheapest (`pipelines.build_index.search_cost`) is
    kept, and the configured search where even it falls short (`leaves_by_k`
    and `reorder_by_k` in the manifest,
    `pipelines.build_index.calibrate_search`). A query for k neighbours
    searches the leaves and re-orders the candidates of the next calibrated
    length (past `retrieval.k`: the most leaves, `reorder_depth`). Fewer
    than 50 such buyers, or `target_recall: null`: every query searches the
    most at the configured depth. `reorder_per_neighbor: 0` also keeps the
    depth at `reorder` through calibration. Export fails when the
    index's recall@10 against brute force on golden queries is below
    `min_recall`.
    """

    num_leaves: int | None = Field(None, ge=2)
    num_leaves_to_search: int | None = Field(None, ge=1)
    soar_lambda: float | None = Field(1.5, gt=0.0)
    dims_per_block: int | None = Field(None, ge=1, le=8)
    reorder: int = Field(200, ge=1)
    reorder_per_neighbor: int = Field(5, ge=0)
    brute_force_below: int = Field(2000, ge=0)
    target_recall: float | None = Field(0.95, gt=0.0, le=1.0)
    calibration_queries: int = Field(1000, ge=MIN_CALIBRATION_QUERIES)
    min_recall: float = Field(0.9, ge=0.0, le=1.0)


SOURCE_TYPES = ("two_tower", "bought_together", "content", "repeat", "popular_in_category", "popularity")
#: most sources in `retrieval.sources` (serving records which sources found an item in one int64 bit mask)
MAX_SOURCES = 32


class _SourceBase(_Section):
    """Fields every retrieval source has (serving/sources.py).

    Attributes:
        name: the `source` label of the items it finds (responses, logs);
            default: the type, suffixed `_<place>` when the type repeats.
        quota: most candidates it adds per request; default: the candidate
            budget (`retrieval.k`, or the request's k when larger).
        weight: multiplies its scores after they are scaled to 0..1 within its
            own list (how sources compare; see serving/sources.py).
        fallback: only fills the merged list up to the candidate budget with
            items no other source found, and ranks below every non-fallback
            candidate.
    """

    name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    quota: int | None = Field(None, ge=1, le=10_000)
    weight: float = Field(1.0, gt=0.0, le=100.0)
    fallback: bool = False


class TwoTowerSourceConfig(_SourceBase):
    """Collaborative: the query tower's user embedding searched in the ScaNN index (known users only)."""

    type: Literal["two_tower"]


class BoughtTogetherSourceConfig(_SourceBase):
    """Co-purchase neighbours (the bundle's `bought_together.parquet`) of seed items, weighted per kind of seed.

    Attributes:
        cart_weight: weight of each cart item as a seed.
        viewed_weight: weight of each of the last `seed_items` viewed items.
        recent_weight: weight of each of the known user's `seed_items` latest purchases.
        seed_items: how many viewed items and how many past purchases seed it (each).
    """

    type: Literal["bought_together"]
    cart_weight: float = Field(1.0, ge=0.0, le=100.0)
    viewed_weight: float = Field(0.5, ge=0.0, le=100.0)
    recent_weight: float = Field(0.5, ge=0.0, le=100.0)
    seed_items: int = Field(5, ge=1, le=100)


class ContentSourceConfig(_SourceBase):
    """Items like what is being browsed: text-embedding cosine blended with same-category match.

    Attributes:
        seed_items: the last viewed items (else the cart) that form the query; a
            session category alone queries that category.
        text_weight: share of the text-embedding cosine in the score; the rest is
            the category match (1 when an item shares a seed's category).
    """

    type: Literal["content"]
    seed_items: int = Field(3, ge=1, le=100)
    text_weight: float = Field(0.5, ge=0.0, le=1.0)


class RepeatSourceConfig(_SourceBase):
    """The known user's own past purchases, purchase lines x 0.5 ** (age / half_life_days) at the bundle's as-of."""

    type: Literal["repeat"]
    half_life_days: float = Field(30.0, gt=0.0, le=3650.0)


class PopularInCategorySourceConfig(_SourceBase):
    """Best sellers of the categories in play: the session's category, the categories of the viewed and cart
    items, and the known user's `user_categories` most bought categories. A fallback unless set otherwise."""

    type: Literal["popular_in_category"]
    fallback: bool = True
    user_categories: int = Field(2, ge=0, le=100)


class PopularitySourceConfig(_SourceBase):
    """Best sellers of the last `evaluation.popularity_days` (the bundle's popular.json). A fallback unless set
    otherwise."""

    type: Literal["popularity"]
    fallback: bool = True


class CustomSourceConfig(_SourceBase):
    """A source class outside cartwise, by dotted path; `params` are validated by its `config_class` when serving
    builds the pipeline."""

    type: str = Field(pattern=r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$")
    params: dict[str, Any] = Field(default_factory=dict)


def _source_tag(v: object) -> str | None:
    t = v.get("type") if isinstance(v, dict) else getattr(v, "type", None)
    return "custom" if isinstance(t, str) and "." in t else t


def _known_source_type(v: object) -> object:
    # `sources: [two_tower, popularity]` (names only) stays valid: a bare name is that source with its defaults
    if isinstance(v, str):
        v = {"type": v}
    if isinstance(v, dict):
        check_type(v, "source", SOURCE_TYPES)
    elif not isinstance(v, BaseModel):
        raise ValueError("a source is a name or a mapping `{type: ..., quota: ..., <params>}`")
    return v


SourceConfig = Annotated[
    Union[
        Annotated[TwoTowerSourceConfig, Tag("two_tower")],
        Annotated[BoughtTogetherSourceConfig, Tag("bought_together")],
        Annotated[ContentSourceConfig, Tag("content")],
        Annotated[RepeatSourceConfig, Tag("repeat")],
        Annotated[PopularInCategorySourceConfig, Tag("popular_in_category")],
        Annotated[PopularitySourceConfig, Tag("popularity")],
        Annotated[CustomSourceConfig, Tag("custom")],
    ],
    Discriminator(_source_tag),
    BeforeValidator(_known_source_type),
]


def source_names(sources: list) -> list[str]:
    """The label of each source: its `name`, else its type (suffixed `_<place>` when the type repeats)."""
    return labels(sources)


def _check_sources(sources: list) -> list:
    if len(sources) > MAX_SOURCES:
        raise ValueError(f"at most {MAX_SOURCES} sources, got {len(sources)}")
    names = source_names(sources)
    dup = sorted({x for x in names if names.count(x) > 1})
    if dup:
        raise ValueError(f"source names must be unique, repeated: {dup}")
    return sources


def _default_sources() -> list:
    return [TwoTowerSourceConfig(type="two_tower"), PopularitySourceConfig(type="popularity")]


class RetrievalConfig(_Section):
    """How many candidates to fetch and from which sources (merged by serving/sources.py).

    Attributes:
        k: the candidate budget per request (the request's k when larger):
            fallback sources fill the merged list up to it.
        sources: in order (ties between sources go to the earlier one); each
            a bare type name (its defaults) or `{type, name, quota, weight,
            fallback, <params>}`; `type` may be a dotted path to a
            `serving.sources.Source` subclass (options under `params:`).
        index: the ScaNN index export builds.
    """

    k: int = Field(100, ge=1, le=10_000)
    sources: Annotated[list[SourceConfig], AfterValidator(_check_sources)] = Field(
        default_factory=_default_sources, min_length=1
    )
    index: IndexConfig = IndexConfig()


class DriftConfig(_Section):
    """Drift thresholds of the export gate against the blessed reference (`validation/drift.py`).

    Every statistic needs a threshold: setting one to null (here or in
    `features`) makes each check that needs it fail, so export is blocked
    rather than silently unguarded.

    Attributes:
        max_js_divergence: Jensen-Shannon divergence (base 2) of a categorical column.
        max_psi: population stability index of a numeric column over the reference deciles.
        max_ks: Kolmogorov-Smirnov distance of a numeric column on the reference's percentiles.
        max_null_fraction_change: absolute change of a column's null share.
        max_new_category_share: share of rows carrying categories the reference never saw.
        min_row_ratio: smallest rows (per day of data, when timestamped) relative to the reference.
        max_row_ratio: largest such ratio.
        max_quarantine_share: largest share of a candidate file's rows its adapter quarantines (`cartwise
            validate --candidate`; Online Retail's months: 0.8-1.4%).
        features: per-column overrides of the keys above but the last, e.g. `{unit_price: {max_psi: 0.3}}`.
    """

    max_js_divergence: float | None = Field(0.05, ge=0.0, le=1.0)
    max_psi: float | None = Field(0.2, ge=0.0)
    max_ks: float | None = Field(0.05, ge=0.0, le=1.0)
    max_null_fraction_change: float | None = Field(0.02, ge=0.0, le=1.0)
    max_new_category_share: float | None = Field(0.005, ge=0.0, le=1.0)
    min_row_ratio: float | None = Field(0.5, ge=0.0)
    max_row_ratio: float | None = Field(20.0, gt=0.0)
    max_quarantine_share: float | None = Field(0.05, ge=0.0, le=1.0)
    features: dict[str, dict[str, float | None]] = Field(default_factory=dict)

    @field_validator("features")
    @classmethod
    def _known_keys(cls, v: dict[str, dict[str, float | None]]) -> dict[str, dict[str, float | None]]:
        allowed = {"max_js_divergence", "max_psi", "max_ks", "max_null_fraction_change", "max_new_category_share",
                   "min_row_ratio", "max_row_ratio"}
        for feature, keys in v.items():
            bad = set(keys) - allowed
            if bad:
                raise ValueError(f"{feature}: unknown threshold(s) {sorted(bad)}; expected {sorted(allowed)}")
        return v

    def thresholds(self) -> dict[str, float | None]:
        """The global thresholds as a plain mapping (what `validation.drift.compare` takes)."""
        return self.model_dump(exclude={"features", "max_quarantine_share"})


class FeaturesConfig(_Section):
    """The online store and the content features (feature definitions themselves are code in feature_repo/).

    Attributes:
        online_store: `sqlite` (a file under the work dir; newest event time wins)
            or `redis` (a running server at `redis_connection_string`).
        redis_connection_string: `host:port[,db=N]` for Feast's Redis store.
        text_embedding_size: dimensions of the TF-IDF + SVD description embedding.
        max_age_hours: per feature view, how old a value may be at read time
            before serving treats it as missing (default: the view's TTL).
    """

    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_connection_string: str = "127.0.0.1:6379"
    text_embedding_size: int = Field(16, ge=1, le=512)
    max_age_hours: dict[str, float] = Field(default_factory=dict)

    @field_validator("max_age_hours")
    @classmethod
    def _positive_ages(cls, v: dict[str, float]) -> dict[str, float]:
        for view, hours in v.items():
            if hours <= 0:
                raise ValueError(f"{view}: max age must be positive, got {hours}")
        return v


class ValidationConfig(_Section):
    """Thresholds of the training-set suite and of the drift gate before export.

    A failing expectation or a drifted feature stops the run.
    """

    min_rows: int = Field(1000, ge=1)
    max_null_fraction: float = Field(0.0, ge=0.0, le=1.0)
    max_weight: float = Field(100.0, gt=0.0)
    drift: DriftConfig = DriftConfig()


class CandidateQuotas(_Section):
    """How many candidates each offline source adds per user (besides the user's own items, all kept)."""

    item_knn: int = Field(100, ge=0, le=10_000)
    ease: int = Field(100, ge=0, le=10_000)
    popularity: int = Field(50, ge=0, le=10_000)
    #: 0 by default: the ranker's training cut-offs come before the two-tower's training data ends, so its
    #: training rows cannot contain two-tower candidates without leaking; measured on Online Retail, adding
    #: 100 of them at evaluation changed NDCG@10 by less than the seed noise (0.4121 -> 0.4119 all items,
    #: 0.1427 -> 0.1422 new to user) and costs a larger feature join
    two_tower: int = Field(0, ge=0, le=10_000)


class RankingConfig(_Section):
    """The ranking model (DCN-v2 over point-in-time features) and how its training rows are made.

    Training rows are (user, candidate item) pairs at several cut-offs before
    the training end: the candidates come from sources fitted on the purchases
    before each cut-off, the features are read point in time at the cut-off
    through Feast, and the label is whether the user bought the item in the
    `label_days` that follow (the same horizon as the evaluation window).

    Attributes:
        enabled: rank the candidates (off: retrieval scores only).
        label_days: days after a cut-off in which a purchase makes a positive.
        cutoffs_days_before_end: training cut-offs, in days before the last
            one whose label window still fits before the training end.
        candidates: per-source quotas.
        cross_layers, hidden: DCN-v2 cross layers and MLP widths.
        epochs, batch_size, learning_rate, seed: training.
        new_item_slots: list positions reserved for items with no sales yet,
            chosen by content similarity to the user's items (exploration for
            cold items); 0 turns it off.
        new_item_first_position: the first reserved position (1-based).
        ease_max_items: the largest catalog (items sold before a cut-off) EASE
            is fitted on. EASE inverts a dense items x items matrix: memory
            grows with items^2 and time with items^3 (one float64 items x
            items matrix is 3.2 GB at 20,000 items, 80 GB at 100,000; the
            fit holds several at once). Above it EASE is not
            fitted anywhere: no EASE candidates, `ease_score` 0 in training,
            evaluation and serving alike, no EASE baseline in the report.
    """

    enabled: bool = True
    label_days: int = Field(61, ge=1, le=3650)
    cutoffs_days_before_end: list[int] = Field(default_factory=lambda: [0, 15, 31], min_length=1)
    candidates: CandidateQuotas = CandidateQuotas()
    cross_layers: int = Field(2, ge=0, le=8)
    hidden: list[int] = Field(default_factory=lambda: [128, 64], min_length=1)
    epochs: int = Field(2, ge=1, le=1000)
    batch_size: int = Field(4096, ge=8, le=1_000_000)
    learning_rate: float = Field(0.001, gt=0.0, le=10.0)
    seed: int = 42
    new_item_slots: int = Field(2, ge=0, le=100)
    new_item_first_position: int = Field(21, ge=1, le=10_000)
    ease_max_items: int = Field(20_000, ge=0)

    @field_validator("cutoffs_days_before_end")
    @classmethod
    def _non_negative(cls, v: list[int]) -> list[int]:
        if any(d < 0 for d in v):
            raise ValueError("cut-offs are days before the end: use values >= 0")
        return sorted(set(v))


class EvaluationConfig(_Section):
    """Time split and metrics.

    Training uses events up to and including `split_date` (UTC); the test
    window is the following days up to `test_end` (inclusive; open if null).
    """

    split_date: dt.date = dt.date(2011, 7, 31)
    test_end: dt.date | None = None
    k: list[int] = Field(default_factory=lambda: [10, 50], min_length=1)
    popularity_days: int = Field(90, ge=1)

    @field_validator("k")
    @classmethod
    def _positive_ks(cls, v: list[int]) -> list[int]:
        if any(k <= 0 for k in v):
            raise ValueError("every K must be positive")
        return sorted(set(v))

    @model_validator(mode="after")
    def _ordered(self) -> "EvaluationConfig":
        if self.test_end is not None and self.test_end <= self.split_date:
            raise ValueError("test_end must be after split_date")
        return self


RULE_TYPES = ("out_of_stock", "promotion", "margin_target", "block", "pin")


class _RuleBase(_Section):
    """Fields every business rule has."""

    #: label in logs, metrics and the `fired` list; default: the type, suffixed
    #: with its 1-based place in `rules` when the type occurs more than once
    name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")


class _TimedRule(_RuleBase):
    """A rule active in the half-open window [start, end) of the request time; open ends are unbounded."""

    start: AwareDatetime | None = None
    end: AwareDatetime | None = None

    @model_validator(mode="after")
    def _ordered_window(self) -> "_TimedRule":
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError("end must be after start")
        return self

    def active(self, now: dt.datetime) -> bool:
        """Whether `now` (timezone-aware) lies in [start, end)."""
        return (self.start is None or self.start <= now) and (self.end is None or now < self.end)

    def overlaps(self, other: "_TimedRule") -> bool:
        """Whether the two windows share an instant."""
        lo = [t for t in (self.start, other.start) if t is not None]
        hi = [t for t in (self.end, other.end) if t is not None]
        return not lo or not hi or max(lo) < min(hi)


def _quoted_ids(v: object) -> object:
    # YAML reads 22423 as an int and 01234 as octal 668: ask for quotes instead of guessing the id
    values = v if isinstance(v, list) else [v]
    for x in values:
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            raise ValueError(f"ids must be strings; quote {x!r} in YAML (an unquoted 01234 even reads as 668)")
    return v


Ids = Annotated[list[str], BeforeValidator(_quoted_ids)]
Id = Annotated[str, BeforeValidator(_quoted_ids)]


class OutOfStockRuleConfig(_RuleBase):
    """Drops candidates whose `in_stock` column is False (unknown stock counts as in stock)."""

    type: Literal["out_of_stock"]


class PromotionRuleConfig(_TimedRule):
    """Boosts listed items and categories by `factor` while the promotion runs (factor < 1 demotes)."""

    type: Literal["promotion"]
    items: Ids = Field(default_factory=list)
    categories: Ids = Field(default_factory=list)
    factor: float = Field(gt=0.0, le=100.0)

    @model_validator(mode="after")
    def _targets(self) -> "PromotionRuleConfig":
        if not self.items and not self.categories:
            raise ValueError("a promotion needs `items` or `categories`")
        return self


class MarginTargetRuleConfig(_RuleBase):
    """Re-weights scores towards margin: a multiplier per category and/or exp(margin_weight x margin)."""

    type: Literal["margin_target"]
    categories: dict[str, float] = Field(default_factory=dict)
    margin_weight: float = Field(0.0, ge=0.0, le=100.0)

    @model_validator(mode="after")
    def _something(self) -> "MarginTargetRuleConfig":
        bad = {c: f for c, f in self.categories.items() if not (0.0 < f <= 100.0)}
        if bad:
            raise ValueError(f"category multipliers must be in (0, 100], got {bad}")
        if not self.categories and self.margin_weight == 0.0:
            raise ValueError("a margin target needs `categories` multipliers or a positive `margin_weight`")
        return self


class BlockRuleConfig(_RuleBase):
    """Regulatory blocks: listed items and categories never appear, optionally only for some
    `countries` (a request without a country is blocked too: fail closed) and/or while a request `flag` is set."""

    type: Literal["block"]
    items: Ids = Field(default_factory=list)
    categories: Ids = Field(default_factory=list)
    countries: list[str] | None = Field(None, min_length=1)
    flag: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _targets(self) -> "BlockRuleConfig":
        if not self.items and not self.categories:
            raise ValueError("a block needs `items` or `categories`")
        return self


class PinRuleConfig(_TimedRule):
    """A contractual pin: `item` lands exactly at the 1-based `position` while active.

    Only a candidate moves; `insert: true` also lets serving add the item to the
    candidates before stock and blocks are checked (it is never shown if blocked
    or out of stock).
    """

    type: Literal["pin"]
    item: Id = Field(min_length=1)
    position: int = Field(ge=1, le=10_000)
    insert: bool = False


class CustomRuleConfig(_RuleBase):
    """A rule class outside cartwise, by dotted path; `params` are validated by its
    `config_class` when serving builds the rule chain."""

    type: str = Field(pattern=r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$")
    params: dict[str, Any] = Field(default_factory=dict)


def _rule_tag(v: object) -> str | None:
    t = v.get("type") if isinstance(v, dict) else getattr(v, "type", None)
    return "custom" if isinstance(t, str) and "." in t else t


def _known_rule_type(v: object) -> object:
    if isinstance(v, dict):
        check_type(v, "rule", RULE_TYPES)
    elif not isinstance(v, BaseModel):
        raise ValueError("a rule is a mapping `{type: ..., <params>}`")
    return v


RuleConfig = Annotated[
    Union[
        Annotated[OutOfStockRuleConfig, Tag("out_of_stock")],
        Annotated[PromotionRuleConfig, Tag("promotion")],
        Annotated[MarginTargetRuleConfig, Tag("margin_target")],
        Annotated[BlockRuleConfig, Tag("block")],
        Annotated[PinRuleConfig, Tag("pin")],
        Annotated[CustomRuleConfig, Tag("custom")],
    ],
    Discriminator(_rule_tag),
    BeforeValidator(_known_rule_type),
]


def rule_names(rules: list) -> list[str]:
    """The label of each rule: its `name`, else its type (suffixed `_<place>` when the type repeats)."""
    return labels(rules)


def _check_rules(rules: list) -> list:
    names = rule_names(rules)
    dup = sorted({x for x in names if names.count(x) > 1})
    if dup:
        raise ValueError(f"rule names must be unique, repeated: {dup}")
    pins = [(nm, r) for nm, r in zip(names, rules) if isinstance(r, PinRuleConfig)]
    for i, (na, a) in enumerate(pins):
        for nb, b in pins[i + 1:]:
            if (a.item == b.item or a.position == b.position) and a.overlaps(b):
                what = f"item {a.item!r}" if a.item == b.item else f"position {a.position}"
                raise ValueError(f"pins {na!r} and {nb!r} both claim {what} in overlapping windows")
    return rules


#: ordered business rules; applied in this order, pins last (see serving/rules.py)
RulesConfig = Annotated[list[RuleConfig], AfterValidator(_check_rules)]


class DiversityConfig(_Section):
    """Category spread of the final top K (serving/diversity.py), applied after the rules and before pins.

    Attributes:
        method: `none`; `max_per_category` (greedy: at most `max_per_category`
            items of one category in the top K, score order otherwise kept);
            `mmr` (maximal marginal relevance with `mmr_lambda`).
        max_per_category: N of the constraint.
        mmr_lambda: 1.0 is pure relevance, 0.0 pure novelty.
        similarity: what MMR compares: `category` (1 when equal, else 0) or
            `embedding` (cosine of the candidates' `embedding` column).
    """

    method: Literal["none", "max_per_category", "mmr"] = "none"
    max_per_category: int = Field(3, ge=1, le=1000)
    mmr_lambda: float = Field(0.7, ge=0.0, le=1.0)
    similarity: Literal["category", "embedding"] = "category"


class BudgetsConfig(_Section):
    """Per-stage time budgets of one request, in milliseconds (serving/pipeline.py, module docstring); `null` turns
    a stage's budget off. The defaults are generous (the demo's requests take a few ms): they only cut a request
    that is stuck.

    Attributes:
        features: each online-store read of a request (default off: the Redis socket timeouts and the circuit
            breaker of serving/features.py bound it already). Past it the request stops waiting: the user
            lookup goes on as if the store were unavailable (flag `fallback:features_over_budget`), a learned
            ranker's pair read keeps the retrieval order (flag `fallback:ranking_features_unavailable`); the
            read itself cannot be interrupted and finishes in the background. Set, each read runs on a worker
            thread.
        retrieval: the non-fallback sources, run in declared order; once spent, the ones not yet started are
            skipped (flag `budget:retrieval`, their names in `warnings`) and the fallbacks still fill the list.
            A source that has started is never interrupted.
        total: the request up to the rules, counted from its start. Past it the optional stage (diversity) is
            skipped (flag `budget:total`); the rules and pins always run.
    """

    features: float | None = Field(None, gt=0)
    retrieval: float | None = Field(1000.0, gt=0)
    total: float | None = Field(2000.0, gt=0)


class ServingConfig(_Section):
    """HTTP server settings, and the per-request time budgets (`budgets_ms`, :class:`BudgetsConfig`)."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    default_k: int = Field(10, ge=1, le=1000)
    max_k: int = Field(200, ge=1, le=10_000)
    #: share of the last `override_window` requests whose top item the rules
    #: changed above which serving warns (the model, not the rules, should change)
    override_alarm_rate: float = Field(0.15, ge=0.0, le=1.0)
    override_window: int = Field(1000, ge=1, le=1_000_000)
    #: no alarm before this many requests are in the window
    override_min_requests: int = Field(100, ge=1, le=1_000_000)
    budgets_ms: BudgetsConfig = BudgetsConfig()
    #: recommendations computed at once by one server process on a thread pool; further requests wait their
    #: turn in arrival order. The pipeline is CPU-bound Python (one interpreter lock): more threads than cores slow every
    #: request down; a store that answers slowly over the network is what more threads would help. 0 (the
    #: default): on the server's event loop itself, one at a time, no hand-off to a thread and back (about
    #: 1 ms a request less than 2 threads). With 0 everything waits while a request waits: /health answers
    #: behind a running recommendation, every request behind a Redis read up to its socket timeout or a
    #: `budgets_ms.features` wait; with a remote online store, use 1 or 2
    threads: int = Field(0, ge=0, le=64)
    #: the instant a request without `session.time` is served at (request-time features, repeat decay,
    #: staleness, promotion windows): `now`, the wall clock (a live shop), or `bundle`, the bundle's as-of
    #: instant (a log that ended in the past, such as the shipped Online Retail data: a demo, a replay)
    request_time: Literal["now", "bundle"] = "now"

    @model_validator(mode="after")
    def _alarm_reachable(self) -> "ServingConfig":
        if self.override_min_requests > self.override_window:
            raise ValueError("override_min_requests must not exceed override_window (the alarm could never fire)")
        return self


class CartwiseConfig(_Section):
    """The whole of `cartwise.yaml`, one typed section per stage."""

    data: DataConfig = DataConfig()
    features: FeaturesConfig = FeaturesConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    model: ModelConfig = ModelConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    ranking: RankingConfig = RankingConfig()
    validation: ValidationConfig = ValidationConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    serving: ServingConfig = ServingConfig()
    rules: RulesConfig = Field(default_factory=list)
    diversity: DiversityConfig = DiversityConfig()
    #: directory the file was read from; relative paths resolve against it
    base_dir: Path = Field(default=Path("."), exclude=True)

    def resolve(self, p: Path | str) -> Path:
        """An absolute path for `p`, relative paths taken from the config file's directory."""
        p = Path(p)
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    @property
    def work_dir(self) -> Path:
        return self.resolve(self.data.work_dir)


def _key_path(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "<root>"


def parse_config(raw: object, source: str = "<string>", base_dir: Path | None = None) -> CartwiseConfig:
    """Validate an already-loaded YAML document.

    Args:
        raw: the mapping read from YAML (None means all defaults).
        source: file name used in error messages.
        base_dir: directory relative paths resolve against.

    Raises:
        ConfigError: naming `source`, the key path and the reason.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    if "base_dir" in raw:
        raise ConfigError(f"{source}: base_dir: extra inputs are not permitted")
    try:
        cfg = CartwiseConfig.model_validate({**raw, "base_dir": base_dir or Path(".")})
    except ValidationError as e:
        lines = []
        for err in e.errors():
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            lines.append(f"{source}: {_key_path(err['loc'])}: {msg}")
        raise ConfigError("\n".join(lines)) from None
    return cfg


def load_config(path: str | Path) -> CartwiseConfig:
    """Read and validate `cartwise.yaml`.

    Args:
        path: the config file.

    Returns:
        The typed config; relative paths inside resolve against the file's directory.

    Raises:
        ConfigError: the file is missing, is not YAML, or fails validation.
    """
    path = Path(path)
    return parse_config(read_yaml(path, "config"), source=str(path), base_dir=path.resolve().parent)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that names a key twice (the safe loader keeps the last silently:
    a second `data:` section would replace the first)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path, what: str = "config") -> object:
    """The YAML document in `path`.

    Raises:
        ConfigError: the file is missing or is not YAML, or a mapping names a key twice (naming the file).
    """
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
