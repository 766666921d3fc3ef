"""Feast objects of cartwise: entities, sources, feature views, services.

Where it sits: the feature layer's contract. `pipelines/build_features.py`
writes the tables these sources point at and applies these objects (built
by :func:`build` for the run's data directory); `pipelines/build_dataset.py`
joins them point in time; `serving/` reads the same views online.

All Feast objects live in this one module on purpose: `feast apply` imports
every file of the repo as a top-level module, so an object imported from a
sibling file would be registered twice under one name. Shared names come from
`feature_repo.names`, which holds no Feast objects.
"""
from datetime import timedelta
from pathlib import Path

import pandas as pd
from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, RequestSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Array, Bool, Float32, Float64, Int64, String

from feature_repo import names as n

#: Snapshots are written wherever a value changes ("as of midnight D") and are
#: valid until replaced, so they never expire: ttl 0 is Feast's "no TTL".
SNAPSHOT_TTL = timedelta(0)

user = Entity(name=n.USER_ENTITY, join_keys=[n.USER_ID], value_type=ValueType.STRING,
              description="A shopper with a customer id (guests are not users).")
item = Entity(name=n.ITEM_ENTITY, join_keys=[n.ITEM_ID], value_type=ValueType.STRING,
              description="A product (normalized, upper-case id).")
session = Entity(name=n.SESSION_ENTITY, join_keys=[n.SESSION_ID], value_type=ValueType.STRING,
                 description="A visit: the session id of the event log (an invoice on Online Retail).")
category = Entity(name=n.CATEGORY_ENTITY, join_keys=[n.CATEGORY_KEY], value_type=ValueType.STRING,
                  description="A product category.")

def window_ttl(windows) -> timedelta:
    """TTL of a windowed view: exact, not an approximation.

    A row is written wherever a window's value changes, including the
    midnight its last day leaves the longest window (value 0, conversion at
    its prior); so a row older than the longest window + 1 day can only mean
    that state, which is also what a missing value is filled with
    (pipelines/build_dataset.FILL_VALUES). The bound keeps Feast's point-in-time join
    from pairing each entity row with the entity's whole history.
    """
    return timedelta(days=max(windows) + 1)


#: A session's state is of no use an hour after its last event.
SESSION_TTL = timedelta(hours=1)

def _file_source(data_dir: Path, table: str) -> FileSource:
    return FileSource(name=f"{table}_source", path=str(data_dir / f"{table}.parquet"),
                      timestamp_field=n.EVENT_TIMESTAMP, created_timestamp_column=n.CREATED_TIMESTAMP)


def build(data_dir: Path) -> dict:
    """Every source, view and service, with sources reading tables in `data_dir`.

    Paths are absolute: Feast's DuckDB offline store reads a relative
    FileSource path against the process's working directory, not the repo
    (feast 0.67, `duckdb._read_data_source`), so a run's repo passes its own
    absolute data directory here.

    Args:
        data_dir: directory holding the parquet tables of `feature_repo/feature_tables.py`.

    Returns:
        Objects by variable name (entities excluded: they are module-level).
    """
    user_purchase_stats_source = _file_source(data_dir, "user_purchase_stats")
    item_purchase_stats_source = _file_source(data_dir, "item_purchase_stats")
    item_content_source = _file_source(data_dir, "item_content")
    user_profile_source = _file_source(data_dir, "user_profile")
    user_purchase_windows_source = _file_source(data_dir, "user_purchase_windows")
    item_activity_windows_source = _file_source(data_dir, "item_activity_windows")
    user_item_history_source = _file_source(data_dir, "user_item_history")
    user_category_history_source = _file_source(data_dir, "user_category_history")
    session_context_batch_source = _file_source(data_dir, "session_context")
    session_push_source = PushSource(name=n.SESSION_PUSH_SOURCE, batch_source=session_context_batch_source,
                                     description="Session state written online through the push source (serving.features.push_session_state).")

    user_purchase_stats = FeatureView(
        name=n.USER_STATS_VIEW, entities=[user], ttl=SNAPSHOT_TTL, online=True, source=user_purchase_stats_source,
        schema=[
            Field(name=n.USER_PURCHASE_COUNT, dtype=Int64, description="purchase lines so far"),
            Field(name=n.USER_ORDER_COUNT, dtype=Int64, description="distinct orders so far"),
            Field(name=n.USER_REVENUE, dtype=Float64, description="sum of quantity x unit price so far"),
            Field(name=n.USER_AVG_ORDER_VALUE, dtype=Float64, description="revenue / orders"),
            Field(name=n.USER_DISTINCT_ITEMS, dtype=Int64, description="distinct items bought so far"),
            Field(name=n.USER_DAYS_ACTIVE, dtype=Int64, description="distinct days with a purchase"),
        ],
        description="Cumulative purchase statistics of a user as of the end of each day with purchases.",
    )
    user_profile = FeatureView(
        name=n.USER_PROFILE_VIEW, entities=[user], ttl=SNAPSHOT_TTL, online=True, source=user_profile_source,
        schema=[
            Field(name=n.USER_VIEWS, dtype=Int64, description="views and clicks so far"),
            Field(name=n.USER_CARTS, dtype=Int64, description="add-to-carts so far"),
            Field(name=n.USER_VIEW_TO_PURCHASE, dtype=Float64, description="purchases / views (0 without views)"),
            Field(name=n.USER_LAST_PURCHASE_UNIX, dtype=Int64, description="time of the last purchase (0: none)"),
            Field(name=n.USER_PREFERRED_DEVICE, dtype=String, description="most frequent device"),
            Field(name=n.USER_TOP_CATEGORY, dtype=String, description="category with the highest recency-weighted purchases"),
            Field(name=n.USER_TOP_CATEGORY_SHARE, dtype=Float64, description="its share of the recency-weighted purchases"),
        ],
        description="Funnel counts, recency and tastes of a user.",
    )
    user_purchase_windows = FeatureView(
        name=n.USER_WINDOWS_VIEW, entities=[user], ttl=window_ttl(n.WINDOWS_USER), online=True,
        source=user_purchase_windows_source,
        schema=[Field(name=f, dtype=Int64 if "purchases" in f else Float64) for f in n.USER_WINDOW_FEATURES],
        description="Purchases and revenue over the last 7 / 30 / 90 days (a row wherever a window changes).",
    )
    item_purchase_stats = FeatureView(
        name=n.ITEM_STATS_VIEW, entities=[item], ttl=SNAPSHOT_TTL, online=True, source=item_purchase_stats_source,
        schema=[
            Field(name=n.ITEM_PURCHASE_COUNT, dtype=Int64, description="purchase lines so far (guests included)"),
            Field(name=n.ITEM_BUYER_COUNT, dtype=Int64, description="distinct customers so far"),
            Field(name=n.ITEM_REVENUE, dtype=Float64, description="revenue so far"),
            Field(name=n.ITEM_REPEAT_RATE, dtype=Float64,
                  description="share of its customers who bought it on two or more days, beta prior"),
        ],
        description="Cumulative sales statistics of an item as of the end of each day with sales.",
    )
    item_activity_windows = FeatureView(
        name=n.ITEM_WINDOWS_VIEW, entities=[item], ttl=window_ttl(n.WINDOWS_ITEM), online=True,
        source=item_activity_windows_source,
        schema=[Field(name=f, dtype=Float64 if "conversion" in f else Int64) for f in n.ITEM_WINDOW_FEATURES],
        description="Purchases, add-to-carts and views over 7 and 30 days; smoothed conversion.",
    )
    item_content = FeatureView(
        name=n.ITEM_CONTENT_VIEW, entities=[item], ttl=SNAPSHOT_TTL, online=True, source=item_content_source,
        schema=[
            Field(name=n.CATEGORY, dtype=String, description="category derived by the adapter"),
            Field(name=n.PRICE, dtype=Float64, description="catalog price"),
            Field(name=n.PRICE_BAND, dtype=String, description="catalog price quintile p0..p4"),
            Field(name=n.IN_STOCK, dtype=Bool, description="in stock (true when the source has no stock)"),
            Field(name=n.MARGIN, dtype=Float64, description="margin share (NaN when unknown)"),
            Field(name=n.FIRST_SEEN_UNIX, dtype=Int64, description="first appearance"),
            Field(name=n.TEXT_EMBEDDING, dtype=Array(Float32), description="TF-IDF + SVD of the product text"),
        ],
        description="Content of every item, events or not (cold-start features).",
    )
    user_item_history = FeatureView(
        name=n.USER_ITEM_VIEW, entities=[user, item], ttl=SNAPSHOT_TTL, online=True, source=user_item_history_source,
        schema=[Field(name=f, dtype=Int64) for f in n.USER_ITEM_FEATURES],
        description="How many times and how recently this user bought, carted, viewed this item.",
    )
    user_category_history = FeatureView(
        name=n.USER_CATEGORY_VIEW, entities=[user, category], ttl=SNAPSHOT_TTL, online=True,
        source=user_category_history_source,
        schema=[Field(name=f, dtype=Int64) for f in n.USER_CATEGORY_FEATURES],
        description="How many times and how recently this user bought or viewed in this category.",
    )
    session_context = FeatureView(
        name=n.SESSION_VIEW, entities=[session], ttl=SESSION_TTL, online=True, source=session_push_source,
        schema=[
            Field(name=n.SESSION_CATEGORY, dtype=String, description="category of the last item touched"),
            Field(name=n.SESSION_VIEWED, dtype=Array(String), description="last items viewed in the session"),
            Field(name=n.SESSION_CARTED, dtype=Array(String), description="items added to the cart"),
            Field(name=n.SESSION_DEVICE, dtype=String, description="device"),
            Field(name=n.SESSION_HOUR, dtype=Int64, description="hour of the last event (UTC)"),
            Field(name=n.SESSION_WEEKDAY, dtype=Int64, description="weekday of the last event, Monday = 0"),
        ],
        description="The current session, written in real time through the push source.",
    )

    request_context = RequestSource(name="request_context", schema=[Field(name=n.REQUEST_TS, dtype=Int64)])

    @on_demand_feature_view(
        sources=[request_context, user_purchase_stats, user_profile, item_content],
        schema=[Field(name="request_hour", dtype=Int64), Field(name="request_weekday", dtype=Int64),
                Field(name="days_since_last_purchase", dtype=Float64), Field(name="item_age_days", dtype=Float64),
                Field(name="price_to_user_aov", dtype=Float64)],
        mode="pandas",
    )
    def request_features(inputs: pd.DataFrame) -> pd.DataFrame:
        """Request-time features: hour and weekday of the request, recency, item age, price vs the user's AOV
        (the arithmetic: feature_repo/request_time.py, shared with serving)."""
        # Feast rebuilds the UDF from its source text with only pd/np in scope, without this module's globals
        # (feast-dev/feast#6815): local imports only
        from feature_repo import request_time

        return request_time.on_frame(request_time.request_features, inputs)

    @on_demand_feature_view(
        sources=[request_context, user_purchase_stats, user_item_history, user_category_history],
        schema=[Field(name=f, dtype=Float64) for f in n.RANKING_REQUEST_FEATURES],
        mode="pandas",
    )
    def ranking_request_features(inputs: pd.DataFrame) -> pd.DataFrame:
        """Ranking features that depend on the request time: days since this user last (and first) bought
        this item and this category (-1: never), the category's share of the user's purchase lines, and the
        user's mean interval between purchase days of the item (-1: fewer than two). Arithmetic:
        feature_repo/request_time.py, shared with serving."""
        from feature_repo import request_time  # run from source text by Feast: no module globals (see above)

        return request_time.on_frame(request_time.ranking_request_features, inputs)

    retrieval_query_v1 = FeatureService(
        name=n.RETRIEVAL_QUERY_SERVICE, features=[user_purchase_stats],
        description="Features of the retrieval query tower (user side).",
    )
    retrieval_candidate_v1 = FeatureService(
        name=n.RETRIEVAL_CANDIDATE_SERVICE, features=[item_content, item_purchase_stats],
        description="Features of the retrieval candidate tower (item side).",
    )
    ranking_v1 = FeatureService(
        name=n.RANKING_SERVICE,
        features=[user_purchase_stats, user_profile, user_purchase_windows, item_purchase_stats,
                  item_activity_windows, item_content, user_item_history, user_category_history,
                  request_features, ranking_request_features],
        description="Features of the ranking model: user, item, user x item history and request context.",
    )

    return {k: v for k, v in locals().items() if k != "data_dir"}


def is_numeric(field) -> bool:
    """Whether a Feast field is a number or a flag (not text, not a list): a model's float input."""
    kind = str(field.dtype)
    return any(k in kind for k in ("Int", "Float", "Bool")) and "Array" not in kind


def ranking_views() -> dict:
    """The `ranking_v1` service's views by name (feature view projections: `.features` lists the fields)."""
    return {p.name: p for p in ranking_v1.feature_view_projections}


def numeric_refs(views) -> list[str]:
    """`view:feature` references of the numeric fields of the named ranking views."""
    proj = ranking_views()
    return [f"{v}:{f.name}" for v in views for f in proj[v].features if is_numeric(f)]


def all_objects(data_dir: Path | None = None) -> list:
    """Every Feast object of the repo, for `FeatureStore.apply` from code.

    Args:
        data_dir: where the tables are (default: `feature_repo/data/`).
    """
    objs = _DEFAULT if data_dir is None else build(Path(data_dir).resolve())
    return [user, item, session, category, *objs.values()]


# Module-level objects, so `feast apply` inside feature_repo/ finds them.
_DEFAULT = build(Path(__file__).resolve().parent / "data")
globals().update(_DEFAULT)
