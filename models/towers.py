"""Query and candidate towers of the two-tower retrieval model.

Where it sits: `pipelines/train_retrieval.py` builds them with vocabularies
and feature names from the training set; `RetrievalModel` wires them to the
TFRS retrieval task; training saves both towers (SavedModel) and evaluation
and export embed users and the catalog with them.

Both are plain Keras models over a dict of tensors (batch B): string
features of shape [B], float features of shape [B] and, for the candidate
tower, dense vectors of shape [B, T] (the description embedding).

Each tower is the sum of two paths:

* an **id path** (the learned id embedding; on the item side optionally its
  sales statistics), zeroed for an id outside the vocabulary and, during training,
  for a random share `id_dropout` of the examples;
* a **feature path** (user: history statistics and session context; item:
  category, price band, price and description embedding) that every id has.

Zeroing the id path on a random share of training examples trains the
feature path to stand on its own, so an item or user the model never saw is
embedded from what is known about it (its content, its session) instead of
from one shared out-of-vocabulary row (the input dropout of Volkovs et al.,
"DropoutNet", NeurIPS 2017). The feature path is an MLP over all features
plus, linearly, the embeddings of its categorical features (category, price
band; session category, device), so a category moves the embedding even in
a region of the inputs training saw little of (an anonymous session has
zero statistics).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from models.numpy_pass import checked

#: String values that mean "not known" and share the out-of-vocabulary row with unseen values.
MISSING_TOKENS = ("", "unknown", "nan", "None")


#: Stands in for an empty vocabulary (StringLookup refuses one); no input carries it.
_EMPTY_VOCAB = ("\x00",)


def _vocab(values: Sequence[str]) -> list[str]:
    # StringLookup refuses duplicates; "unknown" must fall into the OOV row (index 0)
    return sorted({str(v) for v in values} - set(MISSING_TOKENS)) or list(_EMPTY_VOCAB)


def _log_features(inputs, names: Sequence[str]) -> tf.Tensor:
    """[B, F]: log1p of the non-negative part of each float input (counts and money are heavy-tailed)."""
    return tf.stack([tf.math.log1p(tf.maximum(tf.cast(inputs[f], tf.float32), 0.0)) for f in names], axis=1)


def _mlp(embedding_size: int, name: str) -> tf.keras.Sequential:
    return tf.keras.Sequential(
        [tf.keras.layers.Dense(2 * embedding_size, activation="relu"), tf.keras.layers.Dense(embedding_size)],
        name=name,
    )


class _IdPath(tf.keras.layers.Layer):
    """Id embedding times a keep mask: 0 for out-of-vocabulary ids and, in training, for a random share.

    Args:
        vocab: known ids.
        embedding_size: D.
        dropout: share of training examples whose id path is zeroed.
        seed: op seed of the dropout draw.

    Call:
        ids: string [B] -> (embedding float [B, D], keep float [B, 1]).
    """

    def __init__(self, vocab: Sequence[str], embedding_size: int, dropout: float, seed: int | None, **kw):
        super().__init__(**kw)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"id dropout must be in [0, 1), got {dropout}")
        self.dropout, self.seed = float(dropout), seed
        self.lookup = tf.keras.layers.StringLookup(vocabulary=_vocab(vocab), mask_token=None)
        self.embedding = tf.keras.layers.Embedding(self.lookup.vocabulary_size(), embedding_size)

    def call(self, ids, training=False):
        idx = self.lookup(ids)
        keep = tf.cast(idx > 0, tf.float32)[:, None]
        if training and self.dropout > 0.0:
            draw = tf.random.uniform(tf.shape(keep), seed=self.seed)
            keep *= tf.cast(draw >= self.dropout, tf.float32)
        return self.embedding(idx) * keep, keep


class _StringEmbedding(tf.keras.layers.Layer):
    """A categorical feature as an embedding; missing and unseen values share the OOV row (index 0)."""

    def __init__(self, vocab: Sequence[str], embedding_size: int, **kw):
        super().__init__(**kw)
        self.lookup = tf.keras.layers.StringLookup(vocabulary=_vocab(vocab), mask_token=None)
        self.embedding = tf.keras.layers.Embedding(self.lookup.vocabulary_size(), embedding_size)

    def call(self, values):
        return self.embedding(self.lookup(values))


class QueryTower(tf.keras.Model):
    """User side: id path (user id) + feature path (history statistics, session context).

    An unknown user (id outside the vocabulary) with zero statistics is
    embedded from its session context alone (e.g. the category of the item
    being viewed, the device), so two anonymous sessions in different
    categories get different embeddings.

    Args:
        user_vocab: known user ids.
        numeric_features: names of float inputs (log1p-compressed inside).
        embedding_size: output size D.
        context_vocabs: session-context string inputs and their known values,
            e.g. `{"session_category": [...], "session_device": [...]}`; a
            missing input, "unknown" or an unseen value use the OOV row.
        id_dropout: share of training examples whose user id path is zeroed.
        id_key: name of the id input.
        seed: op seed of the dropout draw.

    Call:
        inputs: {id_key: string [B], <context>: string [B], <numeric>: float [B]} -> float [B, D].
    """

    def __init__(self, user_vocab: Sequence[str], numeric_features: Sequence[str], embedding_size: int, *,
                 context_vocabs: Mapping[str, Sequence[str]] | None = None, id_dropout: float = 0.0,
                 id_key: str = "user_id", seed: int | None = None, **kw):
        super().__init__(**kw)
        self.id_key = id_key
        self.numeric_features = list(numeric_features)
        self.context_features = list(context_vocabs or {})
        self.id_path = _IdPath(user_vocab, embedding_size, id_dropout, seed, name="user_id_path")
        self.context = {f: _StringEmbedding(v, embedding_size, name=f"{f}_embedding")
                        for f, v in (context_vocabs or {}).items()}
        self.feature_mlp = _mlp(embedding_size, "user_features") if (self.numeric_features or self.context) else None

    def call(self, inputs, training=False):
        emb, _ = self.id_path(inputs[self.id_key], training=training)
        if self.feature_mlp is None:
            return emb
        batch = tf.shape(inputs[self.id_key])[0]
        context = [self.context[f](inputs[f] if f in inputs else tf.fill([batch], "unknown"))
                   for f in self.context_features]
        numeric = [_log_features(inputs, self.numeric_features)] if self.numeric_features else []
        out = emb + self.feature_mlp(tf.concat(numeric + context, axis=1))
        # the context embeddings also enter linearly: an anonymous session (zero statistics, a
        # state few training rows are in) still moves with its category, whatever the MLP learned
        return out + tf.add_n(context) if context else out


class NumpyQueryTower:
    """The saved :class:`QueryTower`'s forward pass in NumPy float32, from the SavedModel's own variables and tables.

    Serving embeds one shopper per request, where TensorFlow's per-call dispatch costs more than the
    arithmetic: p50 0.28 ms a call through the saved signature's concrete function, 0.02 ms in NumPy (the
    demo bundle's tower on its golden users, one row a call, this 2-core machine, 2026-11-28 02:05 UTC;
    `benchmarks/bench_query_tower.py`).
    The vocabularies are read from the lookup tables (`LookupTableExportV2`; the restored layers keep no
    vocabulary list), the embeddings and the feature MLP's kernels and biases from the variables; what the
    SavedModel does not store (the input order, the activations, how the paths add up) is taken from the
    arguments and assumed as :class:`QueryTower` builds it, so :func:`query_embedder` uses this only after
    checking it against the SavedModel on probe inputs.

    Args:
        module: the loaded SavedModel (`models.retrieval.EmbeddingModule`: `module.tower` is the tower).
        strings: string inputs in the tower's order: the id, then the session context
            (`training_summary.json` `query_inputs.strings`).
        floats: float inputs in the tower's order (`query_inputs.floats`).

    Raises:
        ValueError: the tower does not have the expected parts.
    """

    def __init__(self, module, strings: Sequence[str], floats: Sequence[str]):
        if not strings:
            raise ValueError("query tower without an id input")
        tower = module.tower
        self.id_key, self.context_features, self.numeric_features = strings[0], list(strings[1:]), list(floats)
        try:
            self.ids, self.id_rows = self._lookup(tower.id_path)
            self.context = {f: self._lookup(tower.context[f]) for f in self.context_features}
            mlp = getattr(tower, "feature_mlp", None)  # None is not saved: a tower without feature inputs
            self.mlp = self._dense_layers(mlp) if mlp is not None else []
        except (AttributeError, KeyError) as e:
            raise ValueError(f"query tower without the expected layers: {type(e).__name__}: {e}") from None
        if (self.context_features or self.numeric_features) and not self.mlp:
            raise ValueError("query tower with feature inputs but no feature MLP")
        width = len(self.numeric_features) + sum(m.shape[1] for _, m in self.context.values())
        if self.mlp and self.mlp[0][0].shape[0] != width:
            raise ValueError(f"feature MLP takes {self.mlp[0][0].shape[0]} inputs, the arguments name {width}")

    @staticmethod
    def _lookup(layer) -> tuple[dict[str, int], np.ndarray]:
        """A lookup-and-embedding layer's vocabulary (value -> row; absent: the OOV row 0) and its embeddings."""
        keys, rows = tf.raw_ops.LookupTableExportV2(table_handle=layer.lookup.lookup_table.resource_handle,
                                                    Tkeys=tf.string, Tvalues=tf.int64)
        matrix = [v.numpy() for v in layer.embedding.variables]
        if len(matrix) != 1 or matrix[0].ndim != 2:
            raise ValueError(f"embedding layer with {len(matrix)} variables")
        vocab = {k.decode(): int(r) for k, r in zip(keys.numpy().tolist(), rows.numpy().tolist())}
        # one OOV row (0) and the vocabulary in rows 1..V, as `_vocab`'s StringLookup builds it; with more OOV
        # rows TensorFlow hashes unseen values across them, which this pass does not
        if sorted(vocab.values()) != list(range(1, len(vocab) + 1)) or len(matrix[0]) != len(vocab) + 1:
            raise ValueError(f"lookup of {len(vocab)} values into rows {min(vocab.values(), default=None)}.."
                             f"{max(vocab.values(), default=None)} of an embedding of {len(matrix[0])} rows: "
                             "not one OOV row and the vocabulary after it")
        return vocab, matrix[0].astype(np.float32)

    @staticmethod
    def _dense_layers(mlp) -> list[tuple[np.ndarray, np.ndarray]]:
        """The MLP's (kernel, bias) pairs in order (its variables come as kernel, bias, kernel, bias, ...)."""
        variables = list(mlp.variables)
        names = [v.name.split("/")[-1].split(":")[0] for v in variables]
        if len(variables) < 2 or len(variables) % 2 or names[0::2] != ["kernel"] * (len(names) // 2) \
                or names[1::2] != ["bias"] * (len(names) // 2):
            raise ValueError(f"feature MLP with variables {names}")
        layers = [(k.numpy().astype(np.float32), b.numpy().astype(np.float32))
                  for k, b in zip(variables[0::2], variables[1::2])]
        for (k0, _), (k1, _) in zip(layers, layers[1:]):
            if k0.shape[1] != k1.shape[0]:
                raise ValueError(f"feature MLP kernels of shapes {k0.shape} then {k1.shape}")
        return layers

    @staticmethod
    def _rows(vocab: dict[str, int], values) -> np.ndarray:
        # the SavedModel's `embed` is fed str(value) of each (cartwise.bundle.load_tower)
        keys = np.asarray(values, dtype=object).astype(str).tolist()
        return np.fromiter((vocab.get(k, 0) for k in keys), dtype=np.int64, count=len(keys))

    def __call__(self, inputs: Mapping[str, object]) -> np.ndarray:
        """{id: [B], <context>: [B], <numeric>: [B]} -> float32 [B, D]."""
        missing = [f for f in (self.id_key, *self.context_features, *self.numeric_features) if f not in inputs]
        if missing:
            raise KeyError(f"the query tower needs inputs {missing}")
        rows = self._rows(self.ids, inputs[self.id_key])
        out = self.id_rows[rows] * (rows > 0)[:, None].astype(np.float32)
        if not self.mlp:
            return out
        context = [m[self._rows(vocab, inputs[f])] for f, (vocab, m) in self.context.items()]  # input order
        parts = list(context)
        if self.numeric_features:
            x = np.stack([np.asarray(inputs[f], dtype=np.float32) for f in self.numeric_features], axis=1)
            parts.insert(0, np.log1p(np.maximum(x, np.float32(0.0))))
        h = np.concatenate(parts, axis=1)
        for kernel, bias in self.mlp[:-1]:
            h = np.maximum(h @ kernel + bias, np.float32(0.0))
        kernel, bias = self.mlp[-1]
        out = out + (h @ kernel + bias)
        for c in context:
            out = out + c
        return out.astype(np.float32, copy=False)


def query_embedder(reference: Callable[[Mapping[str, object]], np.ndarray], module, strings: Sequence[str],
                   floats: Sequence[str], probe: Mapping[str, object] | None
                   ) -> Callable[[Mapping[str, object]], np.ndarray]:
    """The saved query tower as serving calls it: :class:`NumpyQueryTower` when it gives the SavedModel's own
    embeddings on `probe` (:func:`models.numpy_pass.checked`), else `reference`.

    Args:
        reference: the SavedModel's `embed` as loaded (`cartwise.bundle.load_tower`).
        module: the loaded SavedModel behind `reference` (None: `reference` is kept, nothing is called).
        strings: string inputs in the tower's order (the id first).
        floats: float inputs in the tower's order.
        probe: inputs like those serving passes (known users' features, session contexts); None keeps
            `reference`.

    Returns:
        inputs -> float32 [B, D], with `engine` and `engine_reason` (see `checked`).
    """
    return checked(reference, lambda: NumpyQueryTower(module, strings, floats), probe,
                   unavailable=None if module is not None else "no SavedModel behind the query tower's function")


class CandidateTower(tf.keras.Model):
    """Item side: id path (item id, optional sales statistics) + content path (category, price band, price, text).

    An item the model never saw (id outside the vocabulary) gets exactly the
    content path, which id dropout trained to rank on its own; sales
    statistics, if any, sit in the id path because a new item has none.

    Args:
        item_vocab: known item ids.
        content_vocabs: categorical content inputs and their known values,
            e.g. `{"category": [...], "price_band": [...]}`.
        content_floats: float content inputs (log1p-compressed), e.g. `["price"]`.
        vector_sizes: dense vector inputs and their width T, e.g.
            `{"item_text_embedding": 16}`; a shorter row (an item without
            text) is zero-padded, a longer one truncated.
        embedding_size: output size D.
        stats_floats: float sales statistics of the id path (log1p-compressed);
            zeroed with the id, so a new item's embedding never depends on them.
        id_dropout: share of training examples whose id path is zeroed.
        id_key: name of the id input.
        seed: op seed of the dropout draw.

    Call:
        inputs: {id_key: string [B], <content>: string [B], <floats>: float [B],
        <vector>: float [B, T]} -> float [B, D].
    """

    def __init__(self, item_vocab: Sequence[str], content_vocabs: Mapping[str, Sequence[str]],
                 content_floats: Sequence[str], vector_sizes: Mapping[str, int], embedding_size: int, *,
                 stats_floats: Sequence[str] = (), id_dropout: float = 0.0, id_key: str = "item_id",
                 seed: int | None = None, **kw):
        super().__init__(**kw)
        self.id_key = id_key
        self.content_strings = list(content_vocabs)
        self.content_floats = list(content_floats)
        self.vector_sizes = {k: int(v) for k, v in vector_sizes.items() if int(v) > 0}  # width 0: no data, ignored
        self.stats_floats = list(stats_floats)
        self.id_path = _IdPath(item_vocab, embedding_size, id_dropout, seed, name="item_id_path")
        self.content_embeddings = {f: _StringEmbedding(v, embedding_size, name=f"{f}_embedding")
                                   for f, v in content_vocabs.items()}
        has_content = self.content_strings or self.content_floats or self.vector_sizes
        self.content = _mlp(embedding_size, "item_content") if has_content else None
        self.stats = _mlp(embedding_size, "item_stats") if self.stats_floats else None

    def _vector(self, x, width: int) -> tf.Tensor:
        x = tf.cast(x, tf.float32)[:, :width]
        x = tf.pad(x, [[0, 0], [0, width - tf.shape(x)[1]]])
        return tf.ensure_shape(tf.reshape(x, [-1, width]), [None, width])  # the SavedModel signature leaves T free

    def call(self, inputs, training=False):
        out, keep = self.id_path(inputs[self.id_key], training=training)
        if self.stats is not None:
            out += self.stats(_log_features(inputs, self.stats_floats)) * keep
        if self.content is not None:
            categorical = [self.content_embeddings[f](inputs[f]) for f in self.content_strings]
            parts = list(categorical)
            if self.content_floats:
                parts.append(_log_features(inputs, self.content_floats))
            parts += [self._vector(inputs[f], w) for f, w in self.vector_sizes.items()]
            out += self.content(tf.concat(parts, axis=1))
            if categorical:
                # also linearly, as on the query side (cold items: NDCG@10 0.098 -> 0.116 on Online Retail)
                out += tf.add_n(categorical)
        return out
