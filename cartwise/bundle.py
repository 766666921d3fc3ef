"""The exported bundle: its layout, integrity check, publication pointers and loaders.

Where it sits: the bottom layer shared by `pipelines/export.py` and
`pipelines/update_index.py` (write a bundle), `serving/` (loads and hot-swaps
one), `cartwise evaluate` and `cartwise rollback`. A bundle is a directory
`<work_dir>/bundles/<version>/`; `<work_dir>/bundles/CURRENT` names the one in
service and `HISTORY` lists every published version in publication order
(rollback walks it backwards). Every file is listed in `manifest.json` with
its sha256 and checked on load; the loader then checks that the ScaNN index
is the one over item_embeddings.npy (datapoints, width, every row's score)
and replays the golden queries the bundle carries (required since bundle
format 2, :func:`bundle_format`) before serving it. Nothing is loaded with pickle or Keras
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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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
    # the fixed signature's concrete function, called directly: the tf.function call matches the inputs
    # against its signature on every call (a query-tower call took 0.33 ms that way, 0.18 ms directly:
    # /tmp profile on the demo bundle, 2026-11-27)
    call = module.embed.get_concrete_function() if spec is not None else module.embed

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
        return call(feed).numpy()

    embed.module = module  # type: ignore[attr-defined]  # the concrete function's variables live with it
    embed.inputs = sorted(spec) if spec is not None else None  # type: ignore[attr-defined]
    #: one row of neutral inputs ("" and 0.0): a probe query of the tower's output size
    embed.example_inputs = ({k: [""] if v.dtype == tf.string else [0.0]  # type: ignore[attr-defined]
                             for k, v in spec.items()} if spec is not None else None)
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
    #: what :func:`load_bundle` checked: `{"format", "index", "golden"}` (golden None in a format-1 bundle)
    checks: dict | None = None
    #: the golden queries' query-tower inputs (real users' features as of the export) as `embed_query` takes
    #: them, read by the golden replay; None without golden queries. Serving checks its NumPy pass of the
    #: query tower on them (`models.towers.query_embedder`)
    golden_inputs: dict[str, np.ndarray] | None = None

    @property
    def version(self) -> str:
        return self.manifest["version"]


#: Bundle formats. 1: written before golden queries existed (no `golden/`); loads without a replay.
#: 2: golden queries in `golden/`, replayed at every load; a format-2 bundle without them is refused.
#: Manifests carry no format number yet (export does not write one); :func:`bundle_format` infers it.
FORMAT_GOLDEN = 2
#: manifest keys and files that came with golden queries or later: a manifest with any of them is format 2
_FORMAT2_KEYS = ("golden", "candidate_inputs", "validation", "serving_tables", "index_update")
_FORMAT2_FILES = (f"{GOLDEN_DIR}/", f"{REFERENCE_DIR}/", ITEM_FEATURES, BOUGHT_TOGETHER, CONTENT_EMBEDDINGS)
#: seeded random queries that every load searches over all of the index's rows (see :func:`index_problems`)
PROBE_QUERIES = 2
#: golden queries scored by brute force at a time (bounds the [queries, items] score matrix)
SCORE_CHUNK = 32
#: an exactly scoring index (brute force, or re-ordered in float) must return each score within this
#: fraction of the query's largest |score| (+ the same absolute) of the dot product with item_embeddings.npy;
#: float32 summation order differs by ~1e-6 relative, a wrong row by the scores' spread
SCORE_RTOL = 1e-4


def bundle_format(manifest: dict) -> int:
    """The bundle format of a manifest: its `format` field when it has one, else inferred.

    Golden queries came in the same change as the manifest's `golden`,
    `candidate_inputs` and `validation` fields and the `reference/` and
    `item_features.parquet` files, and every later addition
    (`serving_tables`, `index_update`, co-purchase and content tables) came
    after them; a manifest with none of these predates golden queries.
    """
    if "format" in manifest:
        return int(manifest["format"])
    files = manifest.get("files", {})
    if any(k in manifest for k in _FORMAT2_KEYS) or any(f.startswith(_FORMAT2_FILES) for f in files):
        return FORMAT_GOLDEN
    return 1


def load_bundle(root: Path) -> LoadedBundle:
    """Verify and load a bundle, check that its index matches its model, then replay its golden queries.

    Every check runs on the loaded objects serving will use, and a failure
    is a BundleError naming the bundle and the file:

    - items.parquet, item_embeddings.npy and the manifest's `index.items`
      agree on the number of items;
    - the ScaNN index (`scann/`, :func:`index_problems`) holds exactly that
      many datapoints, takes queries of item_embeddings.npy's width and
      scores every row as item_embeddings.npy does;
    - the query tower outputs embeddings of that width;
    - golden queries replay (:func:`check_golden`): the tower reproduces
      them, the index reaches the recorded recall and returns the dot
      products with item_embeddings.npy as scores. They are required from
      bundle format 2 on (:func:`bundle_format`); a format-1 bundle (written
      before they existed) loads without a replay.

    Raises:
        BundleError: verification failed or one of the checks above.
    """
    import pandas as pd

    manifest = verify(root)
    items = pd.read_parquet(root / ITEMS)
    emb = np.load(root / EMBEDDINGS, allow_pickle=False)
    n_index = manifest.get("index", {}).get("items")
    if emb.ndim != 2 or len(items) != emb.shape[0] or n_index != len(items):
        raise BundleError(f"{root}: index has {n_index} items (manifest), table {len(items)} ({ITEMS}), "
                          f"{EMBEDDINGS} shape {emb.shape}")
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
    fmt = bundle_format(manifest)
    problems, searchable, index_stats = index_problems(root, loaded.searcher, emb, loaded.item_ids)
    golden = None
    if (root / GOLDEN_DIR / GOLDEN_EXPECTED).is_file():
        golden, more = _replay_golden(loaded, emb, search=searchable)
        problems += more
    else:  # the query tower's output size, from one query of neutral inputs
        example = getattr(loaded.embed_query, "example_inputs", None)
        width = loaded.embed_query(example).shape[-1] if example is not None else emb.shape[1]
        if width != emb.shape[1]:
            raise BundleError(_width_message(root, width, emb.shape[1]))
    if problems:
        raise BundleError(f"{root}: the index in {INDEX_DIR}/ does not match {EMBEDDINGS} and {ITEMS}: "
                          + "; ".join(problems))
    if golden is None and fmt >= FORMAT_GOLDEN:
        raise BundleError(
            f"{root}: no golden queries ({GOLDEN_DIR}/{GOLDEN_EXPECTED}); every bundle written since they exist "
            f"(format {FORMAT_GOLDEN}, as this manifest is) carries them and is refused without them, so this one "
            "was altered or written by other code. Re-export it: `cartwise export` (towers, index and golden "
            "queries), or `cartwise index update` while it is CURRENT (same towers, new index and golden queries)")
    loaded.checks = {"format": fmt, "index": index_stats, "golden": golden}
    return loaded


def _width_message(root: Path, tower: int, items: int) -> str:
    return (f"{root}: {QUERY_TOWER}/ outputs {tower}-d query embeddings, but {EMBEDDINGS} and the index in "
            f"{INDEX_DIR}/ hold {items}-d item embeddings (towers of another model)")


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


def reorder_depth(k: int, reorder: int, per_neighbor: int | None) -> int:
    """Candidates a tree + AH index re-orders exactly for a query of `k` neighbours.

    `per_neighbor` x k, capped at `reorder`, and never fewer than k (ScaNN
    returns at most the re-ordered candidates); `per_neighbor` 0 or None (a
    bundle exported before the setting existed) re-orders `reorder`.
    Re-ordering reads each candidate's float vector: at 100k x 32-d
    (benchmarks/bench_index.py's mixture, 2026-11-27), a query of 10 that
    re-ordered 200 instead of 50 candidates took 20-31 us instead of 13-21
    (7-10 us more) for 0.003-0.035 more recall@10.
    """
    k, reorder = int(k), int(reorder)
    if not per_neighbor:
        return max(k, reorder)
    return max(k, min(reorder, int(per_neighbor) * k))


def configured_reorder(index: Mapping[str, Any], k: int) -> int:
    """The re-ordering depth the tree + AH index's settings give a query of `k` neighbours
    (:func:`reorder_depth` of its `reorder` and `reorder_per_neighbor`): what a query re-orders without a
    calibrated depth, and the most calibration may choose."""
    return reorder_depth(k, index["reorder"], index.get("reorder_per_neighbor"))


def query_reorder(index: Mapping[str, Any] | None, k: int) -> int | None:
    """`pre_reorder_num_neighbors` for a query of `k` neighbours on the index that `index` describes.

    Args:
        index: the index parameters (`build_searcher`'s, a bundle manifest's `index`).
        k: neighbours asked for.

    Returns:
        The calibrated depth (`reorder_by_k`, :func:`pipelines.build_index.calibrate_search`) at the calibrated
        count :func:`query_leaves` reads (the smallest >= k), never fewer than k; past the largest calibrated
        count, and for an index calibrated before depths were (a bundle with `leaves_by_k` only) or not at all,
        :func:`configured_reorder`; None for an exact (brute-force) index or none.
    """
    if not index or index.get("type") != "tree_ah":
        return None
    count = _calibrated_count(index, k)
    depth = (index.get("reorder_by_k") or {}).get(str(count)) if count is not None else None
    return max(int(k), int(depth)) if depth is not None else configured_reorder(index, k)


def query_leaves(index: Mapping[str, Any] | None, k: int) -> int | None:
    """`leaves_to_search` for a query of `k` neighbours on the index that `index` describes.

    The calibrated leaves (`leaves_by_k`, :func:`pipelines.build_index.calibrate_search`) of the smallest
    calibrated neighbour count >= k (calibrated together with that count's re-ordering depth,
    :func:`query_reorder`). None (the searcher's own `num_leaves_to_search`) past the largest calibrated count,
    for an uncalibrated index (a bundle exported before calibration, `target_recall: null`) and for an exact one.
    """
    if not index or index.get("type") != "tree_ah":
        return None
    count = _calibrated_count(index, k)
    return int(index["leaves_by_k"][str(count)]) if count is not None else None


def _calibrated_count(index: Mapping[str, Any], k: int) -> int | None:
    """The smallest neighbour count >= k the index was calibrated at (`leaves_by_k`, whose counts
    `reorder_by_k` shares); None past the largest or without calibration. Leaves and depth are read at this one
    count, so a query never pairs one count's leaves with another's depth."""
    counts = [int(c) for c in (index.get("leaves_by_k") or {}) if int(c) >= k]
    return min(counts) if counts else None


def search_kwargs(index: Mapping[str, Any] | None, k: int) -> dict[str, int]:
    """Keyword arguments of a ScaNN `search` / `search_batched` call for `k` neighbours on the index that `index`
    describes: the re-ordering depth (:func:`query_reorder`) and the leaves searched (:func:`query_leaves`); {}
    for an exact index. Serving, evaluation, the export gate, the bundle's golden replay and the benchmarks
    all ask through this one function."""
    depth, leaves = query_reorder(index, k), query_leaves(index, k)
    return {**({"pre_reorder_num_neighbors": depth} if depth else {}),
            **({"leaves_to_search": leaves} if leaves else {})}


def _exact_scores(searcher) -> bool:
    """Whether the searcher returns exact float dot products: brute force or exact re-ordering, in float.

    After `reorder` ScaNN re-scores the candidates on the original vectors
    (scann/dataset.npy), so the scores it returns are exact; asymmetric
    hashing alone, or fixed-point (int8) scoring, returns approximations.
    """
    import re

    try:
        config = str(searcher.config())
    except Exception:  # noqa: BLE001 - an unknown searcher: compare nothing rather than guess
        return False
    if re.search(r"fixed_point\s*\{\s*enabled:\s*true", config):
        return False
    return "brute_force" in config or "exact_reordering" in config


def _index_width(root: Path, searcher) -> int | None:
    """The vector width the index was built for (scann/dataset.npy's header, else the AH config), if known."""
    import re

    try:
        return int(np.load(root / INDEX_DIR / "dataset.npy", mmap_mode="r", allow_pickle=False).shape[1])
    except Exception:  # noqa: BLE001 - no float dataset (AH only): try the config
        pass
    try:
        m = re.search(r"input_dim:\s*(\d+)", str(searcher.config()))
    except Exception:  # noqa: BLE001
        return None
    return int(m.group(1)) if m else None


def _rows(rows, item_ids: np.ndarray | None, n: int = 3) -> str:
    rows = sorted(rows)
    shown = [f"{r} ({item_ids[r]})" if item_ids is not None else str(r) for r in rows[:n]]
    return ", ".join(shown) + (f", ... {len(rows) - n} more" if len(rows) > n else "")


def index_problems(root: Path, searcher, embeddings: np.ndarray,
                   item_ids: np.ndarray | None = None) -> tuple[list[str], bool, dict]:
    """Exact checks that a loaded ScaNN searcher is the index over `embeddings`, row for row.

    - Row count: `searcher.size()` (the datapoints it holds) equals the
      embeddings' rows (items.parquet's, checked before).
    - Dimension: :data:`PROBE_QUERIES` seeded random queries of the
      embeddings' width go through the searcher; ScaNN raises on another
      width.
    - Rows: the probes search every row (`final_num_neighbors`,
      `pre_reorder_num_neighbors` and `leaves_to_search` all the datapoint
      count), no returned id may be past the item table, and, when the index
      scores exactly (:func:`_exact_scores`), each returned score must be the
      dot product with that row of `embeddings`: a row swapped, shifted or
      from other embeddings shows. One pass over the rows per probe, like a
      brute-force query (about 0.1 s at 1M x 64).

    Returns:
        (problems, searchable: the searcher takes queries of this width, stats).
    """
    n, d = embeddings.shape
    problems = []
    size = int(searcher.size())
    stats = {"datapoints": size, "dimension": d, "probes": PROBE_QUERIES, "exact_scores": _exact_scores(searcher)}
    if size != n:
        problems.append(f"it holds {size:,} datapoints, {ITEMS} and {EMBEDDINGS} have {n:,} rows")
    if size == 0:
        return problems, False, stats
    probes = np.random.default_rng(0).standard_normal((PROBE_QUERIES, d)).astype(np.float32)
    try:
        ids, scores = searcher.search_batched(probes, final_num_neighbors=size, pre_reorder_num_neighbors=size,
                                              leaves_to_search=size)
    except RuntimeError as e:
        width = _index_width(root, searcher)
        built = f"was built for {width}-d vectors" if width is not None else "does not take them"
        problems.append(f"it {built}, {EMBEDDINGS} rows are {d}-d (a {d}-d query failed in ScaNN: {e})")
        return problems, False, stats
    ids, scores = np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float32)
    past = ids >= n
    if past.any():
        problems.append(f"it returns row ids up to {int(ids.max())}, past the {n:,} rows of {ITEMS}")
    if stats["exact_scores"]:
        exact = probes @ embeddings.T
        wrong: set[int] = set()
        for p in range(PROBE_QUERIES):
            got = ids[p][~past[p]]
            tol = SCORE_RTOL * (1.0 + float(np.abs(exact[p]).max()))
            off = np.abs(exact[p][got] - scores[p][~past[p]]) > tol
            wrong.update(got[off].tolist())
        if wrong:
            problems.append(f"it scores {len(wrong):,} of its rows unlike {EMBEDDINGS} (rows {_rows(wrong, item_ids)}"
                            "): built over other or reordered embeddings")
    return problems, True, stats


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Row ids of the k highest scores, ties to the lower id (as `np.argsort(-scores, kind="stable")[:k]`)."""
    n = len(scores)
    if k >= n:
        return np.arange(n)
    kth = np.partition(scores, n - k)[n - k]
    above = np.flatnonzero(scores > kth)
    return np.concatenate([above, np.flatnonzero(scores == kth)[: k - len(above)]])


def exact_top_k(embeddings: np.ndarray, queries: np.ndarray, k: int, budget: int = 1 << 25) -> np.ndarray:
    """Exact inner-product top-k rows per query, best first, ties to the lower row (as :func:`_top_k`, the golden
    replay's rule): float32 matmul in blocks of about `budget` scores, then a partition per query.

    Returns:
        int64 [Q, min(k, N)].
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    queries = np.asarray(queries, dtype=np.float32).reshape(-1, embeddings.shape[1])
    n = embeddings.shape[0]
    k = min(k, n)
    out = np.empty((len(queries), k), np.int64)
    block = max(1, budget // max(n, 1))
    for lo in range(0, len(queries), block):
        for i, row in enumerate(queries[lo:lo + block] @ embeddings.T, start=lo):
            top = _top_k(row, k)
            out[i] = top[np.lexsort((top, -row[top]))]
    return out


def _replay_golden(b: LoadedBundle, embeddings: np.ndarray, search: bool = True) -> tuple[dict, list[str]]:
    """The golden replay of :func:`check_golden`; tower failures raise, index mismatches are returned.

    Args:
        search: run the index part (False when the searcher does not take queries of this width).

    Returns:
        (stats, problems of the index).
    """
    import pandas as pd

    g = b.root / GOLDEN_DIR
    spec = json.loads((g / GOLDEN_EXPECTED).read_text())
    inputs = pd.read_parquet(g / GOLDEN_INPUTS)
    stored = np.load(g / GOLDEN_QUERIES, allow_pickle=False)
    if stored.ndim != 2 or stored.shape[0] != len(inputs):
        raise BundleError(f"{b.root}: {GOLDEN_DIR}/{GOLDEN_QUERIES} has shape {stored.shape} for "
                          f"{len(inputs)} golden inputs")
    stats = {"queries": int(len(inputs)), "max_abs_diff": 0.0, "recall": 1.0, "score_max_abs_diff": 0.0}
    if len(inputs) == 0:
        return stats, []
    feed = {c: inputs[c].to_numpy(dtype=object) for c in spec["strings"]}
    feed.update({c: inputs[c].to_numpy(dtype=np.float32) for c in spec["floats"]})
    b.golden_inputs = feed  # kept: serving checks its NumPy pass of the query tower on them
    q = b.embed_query(feed)
    n, d = embeddings.shape
    if q.shape[1] != d:
        raise BundleError(_width_message(b.root, q.shape[1], d))
    if q.shape != stored.shape:
        raise BundleError(f"{b.root}: query tower does not reproduce the golden embeddings: it outputs shape "
                          f"{q.shape}, {GOLDEN_DIR}/{GOLDEN_QUERIES} holds {stored.shape}")
    diff = float(np.max(np.abs(q - stored)))
    stats["max_abs_diff"] = diff
    if not np.allclose(q, stored, rtol=1e-4, atol=1e-4):
        raise BundleError(f"{b.root}: query tower does not reproduce the golden embeddings (max |diff| {diff:.3g})")
    if not search:
        return stats, []
    k = min(int(spec["k"]), n)
    stored = np.ascontiguousarray(stored, dtype=np.float32)
    # searching as the export gate did (and serving, for k)
    got, dist = b.searcher.search_batched(stored, final_num_neighbors=k, **search_kwargs(b.manifest.get("index"), k))
    got, dist = np.asarray(got, dtype=np.int64), np.asarray(dist, dtype=np.float32)
    exact_scores = _exact_scores(b.searcher)
    overlap, wrong, worst = 0, set(), 0.0
    for start in range(0, len(stored), SCORE_CHUNK):
        for i, row in enumerate(stored[start:start + SCORE_CHUNK] @ embeddings.T, start=start):
            ids, ok = got[i], got[i] < n
            overlap += len(set(ids.tolist()) & set(_top_k(row, k).tolist()))
            if exact_scores and ok.any():
                err = np.abs(row[ids[ok]] - dist[i][ok])
                worst = max(worst, float(err.max()))
                wrong.update(ids[ok][err > SCORE_RTOL * (1.0 + float(np.abs(row).max()))].tolist())
    recall = overlap / (k * len(stored))
    stats.update(recall=recall, score_max_abs_diff=worst)
    problems = []
    if recall < float(spec["min_recall"]):
        problems.append(f"its recall@{k} on {len(stored)} golden queries is {recall:.3f} < {spec['min_recall']} "
                        f"against brute force over {EMBEDDINGS}")
    if wrong:
        problems.append(f"on golden queries it scores {len(wrong):,} rows unlike {EMBEDDINGS} "
                        f"(rows {_rows(wrong, b.item_ids)}; max |diff| {worst:.3g})")
    return stats, problems


def check_golden(b: LoadedBundle, embeddings: np.ndarray) -> dict:
    """Replay the golden queries stored in the bundle on the loaded towers and index.

    The query tower must reproduce the stored query embeddings (and output
    `embeddings`' width); the loaded index's top-k must reach the manifest's
    recall against brute force over the stored item embeddings, and, when
    the index scores exactly (brute force or re-ordering), the scores it
    returns must be the dot products of the golden queries with those rows
    of `embeddings`. This catches a tower or index that verifies byte-wise
    but does not load into the same function (e.g. a library upgrade), and
    an index over other or reordered item rows.

    Returns:
        `{"queries", "max_abs_diff", "recall", "score_max_abs_diff"}`.

    Raises:
        BundleError: a mismatch.
    """
    stats, problems = _replay_golden(b, embeddings)
    if problems:
        raise BundleError(f"{b.root}: the index in {INDEX_DIR}/ does not match {EMBEDDINGS}: " + "; ".join(problems))
    return stats
