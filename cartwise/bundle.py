"""The exported bundle: its layout, integrity check, publication pointers and loaders.

Where it sits: the bottom layer shared by `pipelines/export.py` and
`pipelines/update_index.py` (write a bundle), `serving/` (loads and hot-swaps
one), `cartwise evaluate` and `cartwise rollback`. A bundle is a directory
`<work_dir>/bundles/<version>/`; `<work_dir>/bundles/CURRENT` names the one in
service and `HISTORY` lists every published version in publication order
(rollback walks it backwards). Every file is listed in `manifest.json` with
its sha256 and checked on load; a bundle also carries golden queries that a
loader replays before serving it. Nothing is loaded with pickle or Keras
deserialization (SavedModel functions, ScaNN's own serialization, parquet,
JSON, npy without pickle); a pickle or Keras file in a bundle is refused.

Publication is crash-safe: a bundle is complete and fsynced in a staging
directory, renamed into place, and only then does CURRENT move, by writing a
temporary file, fsyncing it and renaming it over CURRENT. A reader of
CURRENT therefore sees either the old or the new complete bundle.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
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
PUBLISHED = "HISTORY"  # publication order of versions, one a line
ITEM_FEATURES = "item_features.parquet"  # candidate-tower inputs of every indexed item (index update diffs them)
REFERENCE_DIR = "reference"  # drift reference profiles of the data the bundle was built from
GOLDEN_DIR = "golden"  # golden queries replayed at load: inputs, their embeddings, the index's answers
GOLDEN_INPUTS, GOLDEN_QUERIES, GOLDEN_EXPECTED = "inputs.parquet", "queries.npy", "expected.json"
#: co-purchase neighbours: item_id, neighbour_id, score (cosine of basket counts), baskets; top-N per item
BOUGHT_TOGETHER = "bought_together.parquet"
#: float32 [items, d] description (TF-IDF + SVD) embeddings, rows in items.parquet order (d may be 0)
CONTENT_EMBEDDINGS = "item_content_embeddings.npy"
#: File kinds whose loaders can execute code (pickle) or rebuild arbitrary Keras objects; never in a bundle.
UNSAFE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".h5", ".keras", ".hdf5")
CRASH_ENV = "CARTWISE_CRASH_AT"


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
    unsafe = [rel for rel in actual if rel.endswith(UNSAFE_SUFFIXES)]
    if unsafe:
        raise BundleError(f"{root}: {unsafe[0]} is a pickle/Keras file; cartwise never loads those")
    return manifest


# --- crash-safe publication ----------------------------------------------------------


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL when `CARTWISE_CRASH_AT` names this point (crash-safety tests).

    SIGKILL, not an exception: nothing (finally blocks, atexit, buffered
    writes) runs, exactly as with `kill -9` or a power cut after the kernel
    has the data.
    """
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or a new entry inside it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root` (data before the rename that publishes it)."""
    for p in sorted(root.rglob("*"), key=lambda q: len(q.parts), reverse=True):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        elif p.is_dir():
            fsync_dir(p)
    fsync_dir(root)


def write_atomic(path: Path, text: str, crash_after_tmp: str | None = None) -> None:
    """Replace `path` with `text` atomically and durably (temp file, fsync, rename, fsync dir).

    Args:
        path: the file to replace.
        text: its new content.
        crash_after_tmp: crash point name checked between writing the temp file and the rename.
    """
    tmp = path.parent / f".{path.name}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    if crash_after_tmp:
        crash_point(crash_after_tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_history(bundles_dir: Path) -> list[str]:
    """Published versions, oldest first ([] when there is no HISTORY file)."""
    p = bundles_dir / PUBLISHED
    return [line.strip() for line in p.read_text().splitlines() if line.strip()] if p.is_file() else []


def current_version(bundles_dir: Path) -> str | None:
    """The version CURRENT names, or None."""
    p = bundles_dir / CURRENT
    return p.read_text().strip() or None if p.is_file() else None


def point_current(bundles_dir: Path, version: str, crash_after_tmp: str | None = None) -> None:
    """Atomically make CURRENT name `version` (which must be a verified bundle).

    Raises:
        BundleError: the bundle is missing or fails verification.
    """
    verify(bundles_dir / version)
    write_atomic(bundles_dir / CURRENT, version + "\n", crash_after_tmp=crash_after_tmp)


def record_published(bundles_dir: Path, version: str) -> None:
    """Append `version` to HISTORY (atomically rewritten)."""
    hist = [v for v in read_history(bundles_dir) if v != version] + [version]
    write_atomic(bundles_dir / PUBLISHED, "\n".join(hist) + "\n")


def rollback(bundles_dir: Path) -> tuple[str, str]:
    """Point CURRENT back at the bundle published before the current one (`cartwise rollback`).

    The target is verified first; a previous bundle that fails verification
    is skipped in favour of the one before it.

    Returns:
        (from_version, to_version).

    Raises:
        BundleError: no CURRENT, or no earlier verified bundle to go back to.
    """
    cur = current_version(bundles_dir)
    if cur is None:
        raise BundleError(f"{bundles_dir / CURRENT} not found: nothing to roll back")
    hist = read_history(bundles_dir)
    if cur not in hist:
        raise BundleError(f"{cur} is not in {bundles_dir / PUBLISHED}; cannot tell which bundle came before it")
    problems = []
    for prev in reversed(hist[:hist.index(cur)]):
        try:
            point_current(bundles_dir, prev)
            return cur, prev
        except BundleError as e:
            problems.append(str(e))
    raise BundleError(f"no earlier verified bundle than {cur} in {bundles_dir}" +
                      (f" ({'; '.join(problems[:3])})" if problems else ""))


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
        missing = sorted(set(spec) - set(inputs)) if spec is not None else []
        if missing:
            raise BundleError(f"{path}: the tower needs inputs {', '.join(missing)}, which the caller did not "
                              "give (a tower saved by another version of the training code?)")
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
    #: float32 [items, D] candidate-tower embeddings, rows in `item_ids` order
    item_embeddings: np.ndarray | None = None
    #: pandas.DataFrame of (item_id, neighbour_id, score, baskets); None in bundles written before it existed
    bought_together: "object" = None
    #: float32 [items, d] content embeddings, rows in `item_ids` order; None in bundles written before it existed
    content_embeddings: np.ndarray | None = None

    @property
    def version(self) -> str:
        return self.manifest["version"]


def load_bundle(root: Path) -> LoadedBundle:
    """Verify and load a bundle, then replay its golden queries.

    Raises:
        BundleError: verification failed, the index does not match the item
            table, or the loaded towers and index do not reproduce the golden
            answers recorded at export.
    """
    import pandas as pd

    manifest = verify(root)
    items = pd.read_parquet(root / ITEMS)
    emb = np.load(root / EMBEDDINGS, allow_pickle=False)
    if len(items) != emb.shape[0] or manifest.get("index", {}).get("items") != len(items):
        raise BundleError(f"{root}: index has {manifest.get('index', {}).get('items')} items, table {len(items)}")
    loaded = LoadedBundle(
        root=root,
        manifest=manifest,
        embed_query=load_tower(root / QUERY_TOWER),
        searcher=load_searcher(root / INDEX_DIR),
        item_ids=items["item_id"].astype(str).to_numpy(),
        items=items,
        popular=json.loads((root / POPULAR).read_text()),
        history=pd.read_parquet(root / HISTORY),
        item_embeddings=emb,
        bought_together=pd.read_parquet(root / BOUGHT_TOGETHER) if (root / BOUGHT_TOGETHER).is_file() else None,
        content_embeddings=_content_embeddings(root, len(items)),
    )
    if "golden" in manifest:
        check_golden(loaded, emb)
    return loaded


def _content_embeddings(root: Path, n_items: int) -> np.ndarray | None:
    """The bundle's content embeddings (None when absent).

    Raises:
        BundleError: their rows do not match the item table.
    """
    path = root / CONTENT_EMBEDDINGS
    if not path.is_file():
        return None
    emb = np.load(path, allow_pickle=False)
    if emb.ndim != 2 or emb.shape[0] != n_items:
        raise BundleError(f"{root}: {CONTENT_EMBEDDINGS} has shape {emb.shape} for {n_items} items")
    return emb


def check_golden(b: LoadedBundle, embeddings: np.ndarray) -> dict:
    """Replay the golden queries stored in the bundle on the loaded towers and index.

    The query tower must reproduce the stored query embeddings, and the
    loaded index's top-k must reach the manifest's recall against brute force
    over the stored item embeddings; this catches a tower or index that
    verifies byte-wise but does not load into the same function (e.g. a
    library upgrade).

    Returns:
        `{"queries", "max_abs_diff", "recall"}`.

    Raises:
        BundleError: a mismatch.
    """
    import pandas as pd

    g = b.root / GOLDEN_DIR
    spec = json.loads((g / GOLDEN_EXPECTED).read_text())
    inputs = pd.read_parquet(g / GOLDEN_INPUTS)
    stored = np.load(g / GOLDEN_QUERIES, allow_pickle=False)
    if len(inputs) == 0:
        return {"queries": 0, "max_abs_diff": 0.0, "recall": 1.0}
    feed = {c: inputs[c].to_numpy(dtype=object) for c in spec["strings"]}
    feed.update({c: inputs[c].to_numpy(dtype=np.float32) for c in spec["floats"]})
    q = b.embed_query(feed)
    diff = float(np.max(np.abs(q - stored)))
    if not np.allclose(q, stored, rtol=1e-4, atol=1e-4):
        raise BundleError(f"{b.root}: query tower does not reproduce the golden embeddings (max |diff| {diff:.3g})")
    k = min(int(spec["k"]), embeddings.shape[0])
    got, _ = b.searcher.search_batched(np.ascontiguousarray(stored, dtype=np.float32), final_num_neighbors=k)
    exact = np.argsort(-(stored @ embeddings.T), axis=1, kind="stable")[:, :k]
    recall = float(np.mean([len(set(a.tolist()) & set(e.tolist())) / k for a, e in zip(got, exact)]))
    if recall < float(spec["min_recall"]):
        raise BundleError(f"{b.root}: index recall@{k} on golden queries {recall:.3f} < {spec['min_recall']}")
    return {"queries": int(len(inputs)), "max_abs_diff": diff, "recall": recall}
