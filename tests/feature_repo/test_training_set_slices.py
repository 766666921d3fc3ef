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


def test_a_first_slice_with_only_empty_lists_does_not_fix_their_type(monkeypatch, tmp_path):
    """The lists' Arrow types come from the feature definitions: a first slice whose session lists are all
    empty (list<null> if inferred) still lets the next slice write its item ids."""
    import numpy as np

    first = pd.DataFrame({n.EVENT_ID: ["e1"], n.SESSION_VIEWED: [[]], n.TEXT_EMBEDDING: [np.zeros(2, np.float32)]})
    second = pd.DataFrame({n.EVENT_ID: ["e2"], n.SESSION_VIEWED: [np.array(["I1", "I2"], dtype=object)],
                           n.TEXT_EMBEDDING: [np.ones(2, np.float32)]})
    monkeypatch.setattr(build_dataset, "join_in_chunks", lambda *a, **k: iter([(first, {}), (second, {})]))
    write_training_set(None, pd.DataFrame({n.EVENT_ID: ["e1", "e2"]}), tmp_path / "t.parquet")
    got = pd.read_parquet(tmp_path / "t.parquet")
    assert [list(v) for v in got[n.SESSION_VIEWED]] == [[], ["I1", "I2"]]
    assert not list(tmp_path.glob("*.partial"))


def test_a_failed_build_leaves_the_previous_training_set_in_place(monkeypatch, tmp_path):
    path = tmp_path / "train.parquet"
    pd.DataFrame({n.EVENT_ID: ["old"]}).to_parquet(path)

    def failing(*a, **k):
        yield pd.DataFrame({n.EVENT_ID: ["e1"]}), {}
        raise RuntimeError("the store went away")

    monkeypatch.setattr(build_dataset, "join_in_chunks", failing)
    with pytest.raises(RuntimeError, match="went away"):
        write_training_set(None, pd.DataFrame({n.EVENT_ID: ["e1", "e2"]}), path)
    assert pd.read_parquet(path)[n.EVENT_ID].tolist() == ["old"] and not list(tmp_path.glob("*.partial"))
    with pytest.raises(ValueError, match="no entity rows"):
        write_training_set(None, pd.DataFrame({n.EVENT_ID: []}), path)
