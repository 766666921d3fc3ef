"""Typed parameters of the simulated shop and of a simulated A/B test.

Where it sits: beside the data flow, never inside it. A simulation file
(`simulator/default_world.yaml`, `simulator/headline.yaml`) is parsed here
into :class:`SimulationFile`; `simulator/world.py` builds shoppers and items
from its `world` section, `simulator/abtest.py` reads `history_days`,
`training`, `abtest`. Nothing in `pipelines/`, `models/` or `serving/`
imports this package: the models only ever see the event log the simulator
writes.

Like `cartwise.yaml`, every section forbids unknown keys and errors name the
file, the key path and the reason.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cartwise.config import ConfigError, read_yaml


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FunnelConfig(_Section):
    """Per-impression funnel: logits of click, add-to-cart given click, purchase given cart.

    click      = click_base + click_appeal * appeal(day) + click_relevance * affinity
                 - position_decay * rank + novelty_boost * unseen + category_match * in_session_category
    cart|click = cart_base + utility (+ ltv_cart_bonus for high-value shoppers)
    buy|cart   = checkout_base + checkout_utility * utility + context terms; 0 when out of stock
    utility    = utility_quality * quality + utility_affinity * affinity
                 - price_sensitivity * (log price - mean log price) - satiation * bought_recently
    """

    click_base: float = -4.1
    click_appeal: float = 1.0
    click_relevance: float = 0.35
    position_decay: float = 0.06
    category_match: float = 0.3
    cart_base: float = -2.6
    utility_quality: float = 1.2
    utility_affinity: float = 0.9
    checkout_base: float = 0.3
    checkout_utility: float = 0.5
    ltv_cart_bonus: float = 0.5
    weekend_checkout: float = 0.2
    evening_checkout: float = 0.1
    device_checkout: dict[str, float] = Field(default_factory=lambda: {"desktop": 0.2, "mobile": -0.2, "tablet": 0.0})
    satiation: float = 2.5
    return_probability: float = 0.08
    extra_quantity_rate: float = 0.3


class NoveltyConfig(_Section):
    """Novelty on the click side only.

    Items: appeal + item_boost * exp(-age_days / item_decay_days) for new launches.
    Shoppers: novelty_boost (in FunnelConfig terms, here `shopper_boost`) on an item the shopper
    was not shown in the last `memory_days` days, so any policy that starts showing
    different items gets a CTR spike that fades as its lists become familiar.
    """

    item_boost: float = 0.6
    item_decay_days: float = 10.0
    shopper_boost: float = 0.6
    memory_days: int = Field(7, ge=1, le=60)


class StockConfig(_Section):
    """Units per item at launch (Poisson mean), daily restock chance of a sold-out item and size."""

    initial_mean: float = Field(25.0, gt=0)
    restock_probability: float = Field(0.25, ge=0, le=1)
    restock_mean: float = Field(30.0, gt=0)


class WorldConfig(_Section):
    """The default world: a mid-size general shop; see README "Shop simulator".

    Attributes:
        shoppers: shoppers over the period (initial_share at the start, the rest arrive day by day).
        items: catalog size; `launched_share` exist at the start, the rest launch over `days`.
        days: length of the generated period; `start_date` its first day (UTC).
        appeal_utility_correlation: correlation of an item's click appeal and its purchase quality.
    """

    shoppers: int = Field(3000, ge=10)
    initial_share: float = Field(0.7, ge=0, le=1)
    items: int = Field(600, ge=10)
    categories: int = Field(8, ge=1, le=24)
    launched_share: float = Field(0.7, ge=0, le=1)
    days: int = Field(60, ge=1)
    start_date: dt.date = dt.date(2024, 1, 1)
    latent_dim: int = Field(8, ge=1, le=64)
    appeal_utility_correlation: float = Field(0.25, ge=-1, le=1)
    category_concentration: float = Field(0.4, gt=0)
    visits_per_week: float = Field(1.0, gt=0)
    visit_dispersion: float = Field(0.7, ge=0)
    weekend_factor: float = Field(1.4, gt=0)
    impressions_per_session: int = Field(12, ge=1, le=100)
    organic_category_share: float = Field(0.7, ge=0, le=1)
    ltv_high_share: float = Field(0.2, ge=0, le=1)
    price_log_mean: float = 3.0
    price_log_sd: float = Field(0.6, ge=0)
    price_sensitivity_mean: float = Field(0.8, ge=0)
    taste_drift_per_day: float = Field(0.02, ge=0)
    trend_amplitude: float = Field(0.3, ge=0)
    funnel: FunnelConfig = FunnelConfig()
    novelty: NoveltyConfig = NoveltyConfig()
    stock: StockConfig = StockConfig()
    #: log every impression as a `view` event; false logs clicks and what follows only (the funnel
    #: is simulated per impression either way, and the A/B harness counts impressions itself)
    log_impressions: bool = True
    #: rows per parquet row group when streaming the event log
    chunk_rows: int = Field(500_000, ge=1000)


class PolicyConfig(_Section):
    """One arm: a named baseline, an exported bundle, or a bundle trained on the simulated history.

    Attributes:
        policy: `bundle` (served by serving.pipeline.Recommender) or a baseline
            (`popular`, `random`, `repeat`) or `oracle` (ground-truth purchase
            probability; an upper bound for harness tests, never a real policy).
        name: label in reports.
        bundle: an exported bundle directory (policy `bundle`), or
        train: cartwise.yaml overrides to train a bundle on the simulated history
            (e.g. `{objective: {event_weights: {click: 1.0}}}`).
        exclude_purchased: passed to the recommender.
    """

    policy: Literal["bundle", "popular", "random", "repeat", "oracle"]
    name: str | None = None
    bundle: Path | None = None
    train: dict[str, Any] | None = None
    exclude_purchased: bool = True

    @model_validator(mode="after")
    def _bundle_source(self) -> "PolicyConfig":
        if self.policy == "bundle" and (self.bundle is None) == (self.train is None):
            raise ValueError("a bundle policy needs exactly one of `bundle` (a directory) or `train` (overrides)")
        if self.policy != "bundle" and (self.bundle is not None or self.train is not None):
            raise ValueError(f"`bundle` and `train` only apply to policy: bundle, not {self.policy}")
        return self

    @property
    def label(self) -> str:
        return self.name or self.policy


class ABTestConfig(_Section):
    """The experiment: arms, length, traffic, refresh cadence, analysis.

    Attributes:
        days: experiment length (after `history_days` of organic history).
        sessions_per_day: cap on experiment sessions a day (a random subset of the
            world's visits); null keeps every visit.
        k: list length each policy shows.
        treatment_share: share of shoppers (per stratum) assigned to treatment.
        refresh_days: every this many days, policies re-read the events so far
            (bundles: ingest -> build_features (re-materialize) -> export with the
            same towers); 0 never refreshes.
    """

    control: PolicyConfig = PolicyConfig(policy="popular")
    treatment: PolicyConfig = PolicyConfig(policy="random")
    days: int = Field(28, ge=1)
    sessions_per_day: int | None = Field(None, ge=1)
    k: int = Field(10, ge=1, le=100)
    treatment_share: float = Field(0.5, gt=0, lt=1)
    refresh_days: int = Field(7, ge=0)
    confidence: float = Field(0.95, gt=0, lt=1)


class SimulationFile(_Section):
    """A simulation file: the world, the organic history, training defaults, the experiment."""

    world: WorldConfig = WorldConfig()
    history_days: int | None = Field(None, ge=1)
    training: dict[str, Any] = Field(default_factory=dict)
    abtest: ABTestConfig = ABTestConfig()
    base_dir: Path = Field(default=Path("."), exclude=True)

    def resolve(self, p: Path | str) -> Path:
        p = Path(p)
        return p if p.is_absolute() else (self.base_dir / p).resolve()


def parse_simulation(raw: object, source: str = "<string>", base_dir: Path | None = None) -> SimulationFile:
    """Validate a loaded simulation document.

    Raises:
        ConfigError: naming `source`, the key path and the reason.
    """
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(raw).__name__}")
    if "simulation" in raw and isinstance(raw["simulation"], dict):
        raw = raw["simulation"]  # a `simulation:` section inside a larger file
    try:
        return SimulationFile.model_validate({**raw, "base_dir": base_dir or Path(".")})
    except ValidationError as e:
        lines = []
        for err in e.errors():
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"{source}: {'.'.join(str(p) for p in err['loc']) or '<root>'}: {msg}")
        raise ConfigError("\n".join(lines)) from None


def load_simulation(path: str | Path | None) -> SimulationFile:
    """Read a simulation file; None gives the documented default world."""
    if path is None:
        return parse_simulation({})
    path = Path(path)
    return parse_simulation(read_yaml(path, "simulation"), source=str(path), base_dir=path.resolve().parent)
