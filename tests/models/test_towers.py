"""The towers and the retrieval model on hand-made batches (TensorFlow only, no Feast, no files).

Untrained towers already have the properties that do not depend on what
was learned: an unseen id is embedded from its content / session alone,
id dropout acts only in training, and the logQ correction changes the loss
exactly when the sampling probabilities are not uniform.
"""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from models.retrieval import EmbeddingModule, RetrievalModel
from models.towers import CandidateTower, QueryTower

pytestmark = pytest.mark.integration

D = 8
TEXT = 4
CATS = ["shoes", "toys", "books"]


def candidate_tower(**kw) -> CandidateTower:
    tf.random.set_seed(0)
    return CandidateTower(["I1", "I2", "I3"], {"category": CATS, "price_band": ["p0", "p1"]}, ["price"],
                          {"text": TEXT}, D, **kw)


def query_tower(**kw) -> QueryTower:
    tf.random.set_seed(0)
    return QueryTower(["U1", "U2"], ["purchases"], D,
                      context_vocabs={"session_category": CATS, "session_device": ["mobile", "desktop"]}, **kw)


def items(ids, cats, text=None, bands=None, price=None):
    b = len(ids)
    return {"item_id": tf.constant(ids), "category": tf.constant(cats),
            "price_band": tf.constant(bands or ["p0"] * b),
            "price": tf.constant(price or [3.0] * b, tf.float32),
            "text": tf.constant(text if text is not None else np.zeros((b, TEXT)), tf.float32)}


def users(ids, cats, devices=None, purchases=None):
    b = len(ids)
    return {"user_id": tf.constant(ids), "session_category": tf.constant(cats),
            "session_device": tf.constant(devices or ["unknown"] * b),
            "purchases": tf.constant(purchases or [0.0] * b, tf.float32)}


def test_cold_items_are_embedded_from_their_content():
    tower = candidate_tower()
    text = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]], np.float32)
    e = tower(items(["new-a", "new-b", "new-c", "new-d"], ["shoes", "shoes", "shoes", "toys"], text)).numpy()
    assert e.shape == (4, D)
    # same content, different unseen ids: the same (content-only) embedding
    np.testing.assert_array_equal(e[0], e[1])
    # different text or different category: different embeddings
    assert not np.allclose(e[0], e[2]) and not np.allclose(e[0], e[3])


def test_a_known_id_adds_its_own_embedding_and_dropout_acts_only_in_training():
    tower = candidate_tower(id_dropout=0.5, seed=3)
    batch = items(["I1"] * 64 + ["new"] * 64, ["toys"] * 128)
    cold = tower(items(["new"], ["toys"])).numpy()[0]
    e = tower(batch).numpy()
    assert not np.allclose(e[0], cold)  # known id: content + id embedding
    np.testing.assert_allclose(e[64:], np.tile(cold, (64, 1)), rtol=1e-6)
    t = tower(batch, training=True).numpy()
    dropped = np.all(np.isclose(t[:64], cold, atol=1e-6), axis=1)
    assert 10 < dropped.sum() < 54  # ~half of the known rows lose their id path (binomial(64, 0.5))
    np.testing.assert_allclose(t[64:], np.tile(cold, (64, 1)), rtol=1e-6)  # unseen ids are never "kept"


def test_shorter_text_vectors_are_zero_padded_and_longer_ones_truncated():
    tower = candidate_tower()
    full = tower(items(["x"], ["toys"], np.array([[0.5, 0.0, 0.0, 0.0]], np.float32))).numpy()
    short = {**items(["x"], ["toys"]), "text": tf.constant([[0.5]], tf.float32)}
    long = {**items(["x"], ["toys"]), "text": tf.constant([[0.5, 0.0, 0.0, 0.0, 9.0, 9.0]], tf.float32)}
    np.testing.assert_allclose(tower(short).numpy(), full, rtol=1e-6)
    np.testing.assert_allclose(tower(long).numpy(), full, rtol=1e-6)


def test_unknown_user_is_embedded_from_the_session_context():
    tower = query_tower()
    e = tower(users(["someone-new"] * 4, ["shoes", "toys", "unknown", "never-seen-category"])).numpy()
    assert not np.allclose(e[0], e[1])  # different session categories, different embeddings
    np.testing.assert_array_equal(e[2], e[3])  # "unknown" and an unseen value share the OOV row
    # the device is context too, and a missing context input means "unknown"
    d = tower(users(["x", "x"], ["shoes", "shoes"], ["mobile", "desktop"])).numpy()
    assert not np.allclose(d[0], d[1])
    no_ctx = tower({"user_id": tf.constant(["x"]), "purchases": tf.constant([0.0])}).numpy()
    np.testing.assert_allclose(no_ctx[0], tower(users(["x"], ["unknown"])).numpy()[0], rtol=1e-6)
    # a known user adds their id embedding to the same context
    k = tower(users(["U1", "someone-new"], ["shoes", "shoes"])).numpy()
    assert not np.allclose(k[0], k[1])


def test_logq_correction_changes_the_loss_only_for_unequal_probabilities():
    q, c = query_tower(), candidate_tower()
    batch = {**users(["U1", "U2", "U1"], ["shoes", "toys", "books"], purchases=[1.0, 5.0, 0.0]),
             **items(["I1", "I2", "I3"], ["shoes", "toys", "books"]), "weight": tf.constant([1.0, 2.0, 1.0])}
    plain = RetrievalModel(q, c).compute_loss(batch).numpy()
    corrected = RetrievalModel(q, c, sampling_probability="p")
    uniform = corrected.compute_loss({**batch, "p": tf.constant([1 / 3] * 3)}).numpy()
    skewed = corrected.compute_loss({**batch, "p": tf.constant([0.8, 0.1, 0.1])}).numpy()
    # subtracting the same log(p) from every logit leaves the softmax unchanged
    assert uniform == pytest.approx(plain, rel=1e-5)
    assert abs(skewed - plain) > 1e-3


def test_embedding_module_signature_takes_strings_floats_and_vectors():
    tower = candidate_tower()
    module = EmbeddingModule(tower, ["item_id", "category", "price_band"], ["price"], ["text"])
    spec = module.embed.input_signature[0]
    assert spec["text"].shape.as_list() == [None, None] and spec["price"].shape.as_list() == [None]
    batch = items(["I1", "new"], ["toys", "books"], np.ones((2, TEXT), np.float32))
    np.testing.assert_allclose(module.embed(batch).numpy(), tower(batch).numpy(), rtol=1e-6)


def test_dropout_share_is_validated():
    with pytest.raises(ValueError, match="dropout"):
        candidate_tower(id_dropout=1.0)
