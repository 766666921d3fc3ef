"""The query tower's NumPy pass (models/towers.NumpyQueryTower) against the SavedModel it is read from.

Serving embeds each shopper with `query_embedder`, which runs the tower in NumPy only when that gives the
SavedModel's own embeddings on probe inputs; otherwise the SavedModel is kept. Real saved towers here
(small, untrained: random weights), loaded as a bundle loads them (`cartwise.bundle.load_tower`).
"""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from cartwise.bundle import load_tower
from models.retrieval import EmbeddingModule
from models.towers import NumpyQueryTower, QueryTower, query_embedder

pytestmark = pytest.mark.integration

D = 8
USERS = ["U1", "U2", "U3"]
CATS = ["shoes", "toys", "books"]
DEVICES = ["mobile", "desktop"]
FLOATS = ["purchases", "revenue", "days"]
STRINGS = ["user_id", "session_category", "session_device"]


def inputs(n: int, seed: int, floats=FLOATS, strings=STRINGS) -> dict:
    """Known and unknown users, categories and devices (and the missing tokens), counts and a negative value."""
    rng = np.random.default_rng(seed)
    pools = {"user_id": [*USERS, "U9", "", "unknown"], "session_category": [*CATS, "garden", "unknown"],
             "session_device": [*DEVICES, "tablet", ""]}
    out = {s: rng.choice(pools[s], n).astype(object) for s in strings}
    for f in floats:
        out[f] = (rng.poisson(3.0, n) * rng.lognormal(0.0, 1.5, n)).astype(np.float32)
    if floats:
        out[floats[0]][::7] = -1.0  # below zero: the tower clips at 0 before log1p
    return out


def saved(tmp_path, tower: QueryTower, strings=STRINGS, floats=FLOATS):
    tower({k: tf.constant(v) for k, v in inputs(4, 0, floats, strings).items()})  # build
    path = tmp_path / "query_tower"
    tf.saved_model.save(EmbeddingModule(tower, strings, floats), str(path))
    return load_tower(path)


def tower(cls=QueryTower, floats=FLOATS, context=True) -> QueryTower:
    tf.random.set_seed(0)
    vocabs = {"session_category": CATS, "session_device": DEVICES} if context else None
    return cls(USERS, floats, D, context_vocabs=vocabs)


def test_numpy_pass_gives_the_saved_towers_embeddings(tmp_path):
    embed = saved(tmp_path, tower())
    served = query_embedder(embed, embed.module, STRINGS, FLOATS, inputs(100, 1))
    assert served.engine == "numpy" and served.engine_reason is None
    x = inputs(300, 2)
    expected = embed(x)
    np.testing.assert_allclose(served(x), expected, rtol=1e-5, atol=1e-5)
    assert served(x).dtype == np.float32 and served(x).shape == (300, D)
    # not a trivial tower: users, unknown users and sessions differ
    assert len({tuple(np.round(r, 5)) for r in expected}) > 50
    one = {k: v[:1] for k, v in x.items()}  # one shopper per call, as serving calls it
    np.testing.assert_allclose(served(one), expected[:1], rtol=1e-5, atol=1e-5)


def test_a_tower_with_the_id_path_only_runs_in_numpy_too(tmp_path):
    embed = saved(tmp_path, tower(floats=[], context=False), strings=["user_id"], floats=[])
    x = inputs(50, 3, floats=[], strings=["user_id"])
    served = query_embedder(embed, embed.module, ["user_id"], [], x)
    assert served.engine == "numpy", served.engine_reason
    np.testing.assert_allclose(served(x), embed(x), rtol=1e-5, atol=1e-5)
    unknown = served({"user_id": np.array(["nobody"], dtype=object)})
    np.testing.assert_array_equal(unknown, np.zeros((1, D), np.float32))  # OOV: the id path is zeroed


class TanhQueryTower(QueryTower):
    """A feature MLP with an activation NumpyQueryTower does not assume (activations are not in a SavedModel)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.feature_mlp = tf.keras.Sequential([tf.keras.layers.Dense(2 * D, activation="tanh"),
                                                tf.keras.layers.Dense(D)])


def test_a_tower_the_numpy_pass_does_not_reproduce_keeps_tensorflow(tmp_path):
    embed = saved(tmp_path, tower(TanhQueryTower))
    served = query_embedder(embed, embed.module, STRINGS, FLOATS, inputs(100, 1))
    assert served.engine == "tensorflow" and "differ" in served.engine_reason
    x = inputs(40, 5)
    np.testing.assert_array_equal(served(x), embed(x))


def test_inputs_named_in_another_order_are_caught_by_the_probe(tmp_path):
    """The input order is not in the SavedModel; the check, not the construction, catches a wrong one."""
    embed = saved(tmp_path, tower())
    swapped = [FLOATS[1], FLOATS[0], FLOATS[2]]
    served = query_embedder(embed, embed.module, STRINGS, swapped, inputs(100, 1))
    assert served.engine == "tensorflow" and "differ" in served.engine_reason
    reversed_context = [STRINGS[0], STRINGS[2], STRINGS[1]]
    served = query_embedder(embed, embed.module, reversed_context, FLOATS, inputs(100, 1))
    # same widths, so the pass builds; each value is looked up in the other input's table
    assert served.engine == "tensorflow" and "differ" in served.engine_reason


def test_without_a_probe_or_with_a_tower_of_another_shape_tensorflow_is_kept(tmp_path):
    embed = saved(tmp_path, tower())
    assert query_embedder(embed, embed.module, STRINGS, FLOATS, None).engine == "tensorflow"
    served = query_embedder(embed, embed.module, STRINGS, FLOATS[:2], inputs(20, 1))  # one float too few
    assert served.engine == "tensorflow" and "feature MLP takes" in served.engine_reason
    with pytest.raises(ValueError, match="expected layers"):
        NumpyQueryTower(embed.module, [*STRINGS, "session_weather"], FLOATS)


@pytest.mark.parametrize("floats, context", [([], True), (FLOATS, False)])
def test_towers_with_context_only_or_numbers_only_run_in_numpy(tmp_path, floats, context):
    strings = STRINGS if context else ["user_id"]
    embed = saved(tmp_path, tower(floats=floats, context=context), strings=strings, floats=floats)
    x = inputs(80, 4, floats=floats, strings=strings)
    served = query_embedder(embed, embed.module, strings, floats, x)
    assert served.engine == "numpy", served.engine_reason
    np.testing.assert_allclose(served(x), embed(x), rtol=1e-5, atol=1e-5)
    empty = {k: v[:0] for k, v in x.items()}  # a batch of none
    assert served(empty).shape == embed(empty).shape == (0, D)


def test_a_lookup_with_more_than_one_oov_row_keeps_tensorflow(tmp_path):
    """TensorFlow hashes unseen values across several OOV rows; the NumPy pass knows one, so it is refused
    whatever the probe shows."""

    class TwoOov(QueryTower):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.id_path.lookup = tf.keras.layers.StringLookup(vocabulary=USERS, num_oov_indices=2,
                                                               mask_token=None)
            self.id_path.embedding = tf.keras.layers.Embedding(len(USERS) + 2, D)

    embed = saved(tmp_path, tower(TwoOov))
    served = query_embedder(embed, embed.module, STRINGS, FLOATS, inputs(100, 1))
    assert served.engine == "tensorflow" and "one OOV row" in served.engine_reason


def test_no_module_keeps_the_function_without_calling_it():
    calls = []

    def fake(x):
        calls.append(x)
        return np.zeros((1, D), np.float32)

    served = query_embedder(fake, None, STRINGS, FLOATS, inputs(10, 1))
    assert served.engine == "tensorflow" and "no SavedModel" in served.engine_reason and not calls
    served(inputs(1, 2))
    assert len(calls) == 1
