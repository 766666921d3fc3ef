"""Query and candidate towers of the two-tower retrieval model.

Where it sits: `pipelines/train_retrieval.py` builds them with vocabularies
and feature names from the training set; `RetrievalModel` wires them to the
TFRS retrieval task; export saves the query tower (SavedModel) and the
candidate embeddings (ScaNN index).

Both are plain Keras models over a dict of 1-D tensors (batch B):
string ids of shape [B] and float features of shape [B].
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf


def _numeric_block(names: Sequence[str], embedding_size: int, name: str) -> tf.keras.layers.Layer:
    return tf.keras.Sequential(
        [tf.keras.layers.Dense(embedding_size, activation="relu"), tf.keras.layers.Dense(embedding_size)],
        name=name,
    )


class QueryTower(tf.keras.Model):
    """User side: a learned id embedding plus a projection of the user's features.

    Unknown ids map to one out-of-vocabulary row; serving sends unknown users
    to the cold-start route instead of relying on it.

    Args:
        user_vocab: known user ids.
        numeric_features: names of float inputs (log1p-compressed inside).
        embedding_size: output size D.

    Call:
        inputs: {"user_id": string [B], <numeric>: float [B] ...} -> float [B, D].
    """

    def __init__(self, user_vocab: Sequence[str], numeric_features: Sequence[str], embedding_size: int, **kw):
        super().__init__(**kw)
        self.numeric_features = list(numeric_features)
        self.lookup = tf.keras.layers.StringLookup(vocabulary=list(user_vocab), mask_token=None)
        self.embedding = tf.keras.layers.Embedding(len(user_vocab) + 1, embedding_size)
        self.numeric = _numeric_block(self.numeric_features, embedding_size, "user_numeric")

    def call(self, inputs):
        emb = self.embedding(self.lookup(inputs["user_id"]))
        if not self.numeric_features:
            return emb
        x = tf.stack([tf.math.log1p(tf.maximum(tf.cast(inputs[f], tf.float32), 0.0))
                      for f in self.numeric_features], axis=1)
        return emb + self.numeric(x)


class CandidateTower(tf.keras.Model):
    """Item side: id embedding + category embedding + projection of numeric item features.

    The category and numeric part give an item with few or no purchases an
    embedding near its peers (content), not only its id row.

    Args:
        item_vocab: known item ids.
        category_vocab: known categories.
        numeric_features: names of float inputs (log1p-compressed inside).
        embedding_size: output size D.

    Call:
        inputs: {"item_id": string [B], "category": string [B], <numeric>: float [B]} -> float [B, D].
    """

    def __init__(self, item_vocab: Sequence[str], category_vocab: Sequence[str],
                 numeric_features: Sequence[str], embedding_size: int, **kw):
        super().__init__(**kw)
        self.numeric_features = list(numeric_features)
        self.item_lookup = tf.keras.layers.StringLookup(vocabulary=list(item_vocab), mask_token=None)
        self.item_embedding = tf.keras.layers.Embedding(len(item_vocab) + 1, embedding_size)
        self.category_lookup = tf.keras.layers.StringLookup(vocabulary=list(category_vocab), mask_token=None)
        self.category_embedding = tf.keras.layers.Embedding(len(category_vocab) + 1, embedding_size)
        self.numeric = _numeric_block(self.numeric_features, embedding_size, "item_numeric")

    def call(self, inputs):
        out = self.item_embedding(self.item_lookup(inputs["item_id"]))
        out += self.category_embedding(self.category_lookup(inputs["category"]))
        if self.numeric_features:
            x = tf.stack([tf.math.log1p(tf.maximum(tf.cast(inputs[f], tf.float32), 0.0))
                          for f in self.numeric_features], axis=1)
            out += self.numeric(x)
        return out
