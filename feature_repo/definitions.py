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

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64, String

from feature_repo import names as n

#: Snapshots are cumulative ("as of the end of day D"), valid until replaced.
SNAPSHOT_TTL = timedelta(days=3650)

user = Entity(name=n.USER_ENTITY, join_keys=[n.USER_ID], value_type=ValueType.STRING,
              description="A shopper with a customer id (guests are not users).")
item = Entity(name=n.ITEM_ENTITY, join_keys=[n.ITEM_ID], value_type=ValueType.STRING,
              description="A product (normalized, upper-case id).")

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
    user_purchase_stats_source = FileSource(
        name="user_purchase_stats_source",
        path=str(data_dir / "user_purchase_stats.parquet"),
        timestamp_field=n.EVENT_TIMESTAMP,
        created_timestamp_column=n.CREATED_TIMESTAMP,
    )
    item_purchase_stats_source = FileSource(
        name="item_purchase_stats_source",
        path=str(data_dir / "item_purchase_stats.parquet"),
        timestamp_field=n.EVENT_TIMESTAMP,
        created_timestamp_column=n.CREATED_TIMESTAMP,
    )
    item_content_source = FileSource(
        name="item_content_source",
        path=str(data_dir / "item_content.parquet"),
        timestamp_field=n.EVENT_TIMESTAMP,
        created_timestamp_column=n.CREATED_TIMESTAMP,
    )

    user_purchase_stats = FeatureView(
        name=n.USER_STATS_VIEW,
        entities=[user],
        ttl=SNAPSHOT_TTL,
        schema=[
            Field(name=n.USER_PURCHASE_COUNT, dtype=Int64, description="purchase lines so far"),
            Field(name=n.USER_ORDER_COUNT, dtype=Int64, description="distinct orders so far"),
            Field(name=n.USER_REVENUE, dtype=Float64, description="sum of quantity x unit price so far"),
            Field(name=n.USER_AVG_ORDER_VALUE, dtype=Float64, description="revenue / orders"),
            Field(name=n.USER_DISTINCT_ITEMS, dtype=Int64, description="distinct items bought so far"),
            Field(name=n.USER_DAYS_ACTIVE, dtype=Int64, description="distinct days with a purchase"),
        ],
        online=True,
        source=user_purchase_stats_source,
        description="Cumulative purchase statistics of a user as of the end of each day with purchases.",
    )

    item_purchase_stats = FeatureView(
        name=n.ITEM_STATS_VIEW,
        entities=[item],
        ttl=SNAPSHOT_TTL,
        schema=[
            Field(name=n.ITEM_PURCHASE_COUNT, dtype=Int64, description="purchase lines so far (guests included)"),
            Field(name=n.ITEM_BUYER_COUNT, dtype=Int64, description="distinct customers so far"),
            Field(name=n.ITEM_REVENUE, dtype=Float64, description="revenue so far"),
        ],
        online=True,
        source=item_purchase_stats_source,
        description="Cumulative sales statistics of an item as of the end of each day with sales.",
    )

    item_content = FeatureView(
        name="item_content",
        entities=[item],
        ttl=SNAPSHOT_TTL,
        schema=[
            Field(name=n.CATEGORY, dtype=String, description="category derived by the adapter"),
            Field(name=n.PRICE, dtype=Float64, description="catalog price"),
        ],
        online=True,
        source=item_content_source,
        description="Content of an item known from its first appearance (cold-start features).",
    )

    retrieval_query_v1 = FeatureService(
        name=n.RETRIEVAL_QUERY_SERVICE,
        features=[user_purchase_stats],
        description="Features of the retrieval query tower (user side).",
    )
    retrieval_candidate_v1 = FeatureService(
        name=n.RETRIEVAL_CANDIDATE_SERVICE,
        features=[item_content, item_purchase_stats],
        description="Features of the retrieval candidate tower (item side).",
    )

    return {k: v for k, v in locals().items() if k != "data_dir"}


def all_objects(data_dir: Path | None = None) -> list:
    """Every Feast object of the repo, for `FeatureStore.apply` from code.

    Args:
        data_dir: where the tables are (default: `feature_repo/data/`).
    """
    objs = _DEFAULT if data_dir is None else build(Path(data_dir).resolve())
    return [user, item, *objs.values()]


# Module-level objects, so `feast apply` inside feature_repo/ finds them.
_DEFAULT = build(Path(__file__).resolve().parent / "data")
user_purchase_stats_source = _DEFAULT["user_purchase_stats_source"]
item_purchase_stats_source = _DEFAULT["item_purchase_stats_source"]
item_content_source = _DEFAULT["item_content_source"]
user_purchase_stats = _DEFAULT["user_purchase_stats"]
item_purchase_stats = _DEFAULT["item_purchase_stats"]
item_content = _DEFAULT["item_content"]
retrieval_query_v1 = _DEFAULT["retrieval_query_v1"]
retrieval_candidate_v1 = _DEFAULT["retrieval_candidate_v1"]
