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
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
    """Sizes and training settings of the retrieval towers."""

    embedding_size: int = Field(32, ge=2, le=1024)
    epochs: int = Field(3, ge=1, le=1000)
    batch_size: int = Field(2048, ge=8, le=1_000_000)
    learning_rate: float = Field(0.05, gt=0.0, le=10.0)
    seed: int = 42


class IndexConfig(_Section):
    """ScaNN index parameters; below `brute_force_below` items an exact search is built.

    Export fails when the index's recall@10 against brute force on golden
    queries is below `min_recall`.
    """

    num_leaves: int | None = Field(None, ge=2)
    num_leaves_to_search: int | None = Field(None, ge=1)
    reorder: int = Field(200, ge=1)
    brute_force_below: int = Field(2000, ge=0)
    min_recall: float = Field(0.9, ge=0.0, le=1.0)


class RetrievalConfig(_Section):
    """How many candidates to fetch and from which sources."""

    k: int = Field(100, ge=1, le=10_000)
    sources: list[Literal["two_tower", "popularity"]] = Field(
        default_factory=lambda: ["two_tower", "popularity"], min_length=1
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
        features: per-column overrides of the keys above, e.g. `{unit_price: {max_psi: 0.3}}`.
    """

    max_js_divergence: float | None = Field(0.05, ge=0.0, le=1.0)
    max_psi: float | None = Field(0.2, ge=0.0)
    max_ks: float | None = Field(0.05, ge=0.0, le=1.0)
    max_null_fraction_change: float | None = Field(0.02, ge=0.0, le=1.0)
    max_new_category_share: float | None = Field(0.005, ge=0.0, le=1.0)
    min_row_ratio: float | None = Field(0.5, ge=0.0)
    max_row_ratio: float | None = Field(20.0, gt=0.0)
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
        return self.model_dump(exclude={"features"})


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


class ServingConfig(_Section):
    """HTTP server settings."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    default_k: int = Field(10, ge=1, le=1000)
    max_k: int = Field(200, ge=1, le=10_000)


class CartwiseConfig(_Section):
    """The whole of `cartwise.yaml`, one typed section per stage."""

    data: DataConfig = DataConfig()
    features: FeaturesConfig = FeaturesConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    model: ModelConfig = ModelConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    validation: ValidationConfig = ValidationConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    serving: ServingConfig = ServingConfig()
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


def read_yaml(path: Path, what: str = "config") -> object:
    """The YAML document in `path`.

    Raises:
        ConfigError: the file is missing or is not YAML (naming the file).
    """
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
