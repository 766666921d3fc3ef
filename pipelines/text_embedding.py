"""Description embeddings for cold-start items: TF-IDF of product text, reduced by truncated SVD.

Where it sits: ingest (item catalog with titles) -> **text_embedding** ->
the `item_content` feature table (feature_repo/feature_tables.py) -> the
candidate tower and content-similarity retrieval. Computed here from the
shop's own text; no model is downloaded.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.sparse.linalg import svds

from feature_repo import names as n

TOKEN = re.compile(r"[A-Z0-9]+(?:'[A-Z]+)?")


def tokenize(text: str) -> list[str]:
    """Upper-cased word tokens of one title (numbers kept: '12' in 'SET OF 12' carries meaning)."""
    return TOKEN.findall(str(text).upper())


def text_embeddings(items: pd.DataFrame, dim: int = 16, min_df: int = 2, seed: int = 0) -> pd.DataFrame:
    """Embed every item's title into `dim` dimensions.

    TF-IDF (smooth idf, l2-normalized rows, terms in at least `min_df` titles)
    then the top singular vectors; each row is scaled to unit length. Signs
    are fixed (largest coordinate of each component positive), so the result
    is deterministic.

    Args:
        items: catalog with item_id and title.
        dim: embedding size.
        min_df: minimum document frequency of a term.
        seed: start vector seed of the sparse solver (large catalogs).

    Returns:
        item_id and names.TEXT_EMBEDDING (list of `dim` floats; zeros for a title with no known term).
    """
    docs = [tokenize(t) for t in items[n.TITLE].fillna("")]
    df: dict[str, int] = {}
    for toks in docs:
        for t in set(toks):
            df[t] = df.get(t, 0) + 1
    vocab = {t: i for i, t in enumerate(sorted(t for t, c in df.items() if c >= min_df))}
    rows, cols, vals = [], [], []
    for r, toks in enumerate(docs):
        counts: dict[int, int] = {}
        for t in toks:
            if t in vocab:
                counts[vocab[t]] = counts.get(vocab[t], 0) + 1
        for c, v in counts.items():
            rows.append(r)
            cols.append(c)
            vals.append(float(v))
    n_docs = len(docs)
    m = sparse.csr_matrix((vals, (rows, cols)), shape=(n_docs, max(len(vocab), 1)))
    idf = np.log((1 + n_docs) / (1 + np.array([df[t] for t in sorted(vocab, key=vocab.get)] or [0]))) + 1
    m = m.multiply(idf[None, :]).tocsr()
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    m = sparse.diags(1 / np.where(norms > 0, norms, 1)) @ m
    k = max(1, min(dim, min(m.shape) - 1))
    if min(m.shape) <= k + 1:  # too small for the sparse solver
        u, s, _ = np.linalg.svd(m.toarray(), full_matrices=False)
        u, s = u[:, :k], s[:k]
    else:  # truncated: only k components, whatever the catalog size; a fixed start vector keeps it repeatable
        v0 = np.random.default_rng(seed).standard_normal(min(m.shape))
        u, s, _ = svds(m, k=k, v0=v0)
        order = np.argsort(-s)
        u, s = u[:, order], s[order]
    emb = u * s
    signs = np.sign(emb[np.abs(emb).argmax(axis=0), np.arange(emb.shape[1])])
    emb = emb * np.where(signs == 0, 1, signs)
    if emb.shape[1] < dim:
        emb = np.hstack([emb, np.zeros((emb.shape[0], dim - emb.shape[1]))])
    lengths = np.linalg.norm(emb, axis=1, keepdims=True)
    emb = (emb / np.where(lengths > 0, lengths, 1)).astype("float32")
    return pd.DataFrame({n.ITEM_ID: items[n.ITEM_ID].astype(object).to_numpy(),
                         n.TEXT_EMBEDDING: [row.tolist() for row in emb]})
