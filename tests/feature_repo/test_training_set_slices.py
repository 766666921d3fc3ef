"""The training set joined slice by slice (pipelines/build_dataset.write_training_set: bounded memory on a
large log) is the training set joined in one go, on the synthetic shop's real Feast repo."""
from __future__ import annotations

import pandas as pd
import pytest

from feature_repo import names as n
from pipelines import build_dataset
from pipelines.build_dataset import sample_negatives, train_cutoff, training_entities, write_training_set
from pipelines.build_features import open_store

pytestmark = pytest.mark.integration


def test_sliced_join_writes_the_same_rows_as_one_join(trained_shop, tmp_path):
    cfg, events, items, results = trained_shop
    one = pd.read_parquet(cfg.work_dir / "dataset" / "train.parquet")  # the stage's own output: one slice
    assert results["dataset"]["rows"] == len(one) < build_dataset.JOIN_CHUNK_ROWS
    entities = training_entities(events, cfg, train_cutoff(cfg), items)
    entities[n.LABEL] = 1
    entities = pd.concat([entities, sample_negatives(entities, items, cfg.objective.negatives_per_positive,
                                                     cfg.model.seed)], ignore_index=True)
    rows = max(1, len(entities) // 7 + 3)  # seven slices, the last one shorter
    fills = write_training_set(open_store(cfg.work_dir / "feature_store"), entities, tmp_path / "t.parquet", rows)
    sliced = pd.read_parquet(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(sliced, one, check_exact=True)
    assert fills == results["dataset"]["filled_missing"]
    assert sum(fills.values()) > 0  # the slices' fill counts are summed, not the last slice's
