"""The exported bundle: its layout, integrity check and loaders.

Where it sits: the bottom layer shared by `pipelines/export.py` (writes a
bundle) and `serving/` and `cartwise evaluate` (read one). A bundle is a
directory `<work_dir>/bundles/<version>/`; `<work_dir>/bundles/CURRENT` names
the one in service. Every file is listed in `manifest.json` with its sha256
and checked on load; nothing is loaded with pickle or Keras deserialization
(SavedModel functions, ScaNN's own serialization, parquet, JSON, npy without
pickle).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

MANIFEST = "manifest.json"
CURRENT = "CURRENT"
QUERY_TOWER = "query_tower"
CANDIDATE_TOWER = "candidate_tower"
INDEX_DIR = "scann"
ITEMS = "items.parquet"
EMBEDDINGS = "item_embeddings.npy"
POPULAR = "popular.json"
HISTORY = "user_history.parquet"


class BundleError(RuntimeError):
    """A bundle that is missing, incomplete or altered; the message says which file."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` except the manifest, by relative path."""
    return {str(p.relative_to(root)): _sha256(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def verify(root: Path) -> dict:
    """Check a bundle against its manifest.

    Returns:
        The manifest.

    Raises:
        BundleError: the manifest is missing, a file is missing, extra or altered.
    """
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{root}: no {MANIFEST}; not a complete bundle")
    manifest = json.loads(mpath.read_text())
    expected = manifest.get("files", {})
    actual = file_hashes(root)
    for rel, digest in expected.items():
        if rel not in actual:
            raise BundleError(f"{root}: {rel} listed in the manifest is missing")
        if actual[rel] != digest:
            raise BundleError(f"{root}: {rel} does not match its sha256 in the manifest")
    extra = sorted(set(actual) - set(expected))
    if extra:
        raise BundleError(f"{root}: files not in the manifest: {extra[:5]}")
    return manifest


def current_bundle(bundles_dir: Path) -> Path:
    """The bundle CURRENT points at.

    Raises:
        BundleError: no CURRENT pointer, or it names a missing directory.
    """
    pointer = bundles_dir / CURRENT
    if not pointer.is_file():
        raise BundleError(f"{pointer} not found: run `cartwise export` first")
    path = bundles_dir / pointer.read_text().strip()
    if not path.is_dir():
        raise BundleError(f"{pointer} names {path.name}, which does not exist")
    return path


def load_tower(path: Path) -> Callable[[dict], np.ndarray]:
    """Load a saved tower; returns `embed(inputs) -> float32 [B, D]`.

    Args:
        path: a SavedModel directory written by `pipelines/train_retrieval.py`.
    """
    import tensorflow as tf

    module = tf.saved_model.load(str(path))
    spec = module.embed.input_signature[0] if hasattr(module.embed, "input_signature") else None

    def embed(inputs: dict) -> np.ndarray:
        feed = {}
        for k, v in inputs.items():
            if spec is not None and k not in spec:
                continue
            if spec is not None and spec[k].dtype == tf.string:
                feed[k] = tf.constant(np.asarray(v, dtype=object).astype(str), dtype=tf.string)
            else:
                feed[k] = tf.constant(np.asarray(v, dtype=np.float32))
        return module.embed(feed).numpy()

    embed.inputs = sorted(spec) if spec is not None else None  # type: ignore[attr-defined]
    return embed


def load_searcher(path: Path):
    """Load a ScaNN pybind searcher serialized with `searcher.serialize(path, relative_path=True)`.

    Raises:
        BundleError: the directory holds a pickled docid file (never unpickled here).
    """
    from scann.scann_ops.py import scann_ops_pybind

    if (path / "scann_docids.pkl").exists():
        raise BundleError(f"{path}: scann_docids.pkl present; cartwise never loads pickles")

    return scann_ops_pybind.load_searcher(str(path))


@dataclass
class LoadedBundle:
    """A verified bundle in memory: towers, searcher, item table, fallbacks."""

    root: Path
    manifest: dict
    embed_query: Callable[[dict], np.ndarray]
    searcher: object
    item_ids: np.ndarray
    items: "object"  # pandas.DataFrame, imported lazily
    popular: list[str]
    history: "object"  # pandas.DataFrame of (user_id, item_id, last_purchase, purchases)

    @property
    def version(self) -> str:
        return self.manifest["version"]


def load_bundle(root: Path) -> LoadedBundle:
    """Verify and load a bundle.

    Raises:
        BundleError: verification failed or the index does not match the item table.
    """
    import pandas as pd

    manifest = verify(root)
    items = pd.read_parquet(root / ITEMS)
    emb = np.load(root / EMBEDDINGS, allow_pickle=False)
    if len(items) != emb.shape[0] or manifest.get("index", {}).get("items") != len(items):
        raise BundleError(f"{root}: index has {manifest.get('index', {}).get('items')} items, table {len(items)}")
    return LoadedBundle(
        root=root,
        manifest=manifest,
        embed_query=load_tower(root / QUERY_TOWER),
        searcher=load_searcher(root / INDEX_DIR),
        item_ids=items["item_id"].astype(str).to_numpy(),
        items=items,
        popular=json.loads((root / POPULAR).read_text()),
        history=pd.read_parquet(root / HISTORY),
    )
