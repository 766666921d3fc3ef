"""Shared fixtures: a tiny synthetic shop run through every real stage once per session."""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Timing is measured in benchmarks/, never in tests: on a shared 2-core machine one example can take
# longer than Hypothesis' default 200 ms deadline, which would fail a property that holds.
settings.register_profile("cartwise", deadline=None)
settings.load_profile("cartwise")

from cartwise.config import parse_config  # noqa: E402
from tests.synthetic import make_shop, write_ingest  # noqa: E402

SMALL = {
    "data": {"work_dir": "work"},
    "evaluation": {"split_date": "2011-04-10", "k": [5, 10]},
    "validation": {"min_rows": 100},
    "model": {"epochs": 5, "batch_size": 128, "embedding_size": 8, "learning_rate": 0.1, "seed": 7},
    "ranking": {"label_days": 30, "cutoffs_days_before_end": [0, 14], "epochs": 2, "batch_size": 256,
                "hidden": [16], "candidates": {"item_knn": 10, "ease": 10, "popularity": 10, "two_tower": 10}},
}


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="session")
def trained_shop(tmp_path_factory):
    """Config and stage results of the synthetic shop after every pipeline stage up to export."""
    from pipelines import (build_dataset, build_features, build_ranking_dataset, evaluate, export, train_ranking,
                           train_retrieval, validate_dataset)

    base = tmp_path_factory.mktemp("shop")
    cfg = parse_config(SMALL, base_dir=base)
    events, items = make_shop()
    write_ingest(cfg.work_dir, events, items)
    results = {}
    for name, mod in (("features", build_features), ("dataset", build_dataset), ("validate", validate_dataset),
                      ("train", train_retrieval), ("ranking_dataset", build_ranking_dataset),
                      ("train_ranking", train_ranking), ("evaluate", evaluate), ("export", export)):
        results[name] = mod.run(cfg, log=quiet)
    return cfg, events, items, results


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """A real redis-server on a free loopback port for one test module (tests/redis_server.py)."""
    from tests.redis_server import start_redis

    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.kill()
