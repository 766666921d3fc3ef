"""Ingest: raw shop files -> the canonical event log, item catalog and quarantine.

Where it sits: the first arrow of the data flow. raw files (``data.paths``)
-> adapters (``pipelines/adapters/``) -> **ingest** -> ``<work_dir>/ingest/``
(``events.parquet``, ``items.parquet``, ``quarantine.parquet``,
``ingest_summary.json``, ``manifest.json``) -> feature tables -> training sets.

Ingest never loses a row. Every data row of every input ends as exactly one of

* accepted: a new event, appended to ``events.parquet``;
* duplicate: its event id was already accepted, earlier in this run or by a
  previous ingest into the same directory (ids are derived from the raw row,
  so an exact repeat of a row is a duplicate);
* quarantined: kept with its file name, 1-based row number, reason and raw
  values in ``quarantine.parquet``.

``input_rows == accepted + duplicate + quarantined`` is checked for each file
and for the run (:class:`ReconciliationError` if not) and recorded in
``ingest_summary.json``.

Reruns are no-ops: outputs are sorted deterministically (events by time then
id, items by id, quarantine by file, row, reason), carry no run timestamps,
and a data file whose content did not change is not rewritten, so a second
ingest of the same input leaves them byte-identical and reports 0 accepted.
A new file is ingested incrementally: only unseen event ids are appended, the
quarantine is merged (deduplicated by file name, row and reason) and the
catalog rebuilt from all accepted events plus the adapters' item attributes
(the latest non-null value of each attribute wins; ``first_seen`` is the
earliest sighting; an item with events but no catalog row gets ``"item <id>"``
/ ``"unknown"`` / its median unit price).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import pandas as pd

from cartwise.config import CartwiseConfig, ConfigError, load_config
from feature_repo import names as n
from pipelines.adapters.base import AdapterOutput, MalformedInputError, get_adapter
from pipelines.layout import Layout
from pipelines.manifest import sha256_file, write_json, write_manifest
from pipelines.schema import (EVENT_DTYPES, ITEM_DTYPES, QUARANTINE_DTYPES, conform_events, conform_items,
                              conform_quarantine)

STAGE = "ingest"
EVENTS_FILE, ITEMS_FILE, QUARANTINE_FILE = "events.parquet", "items.parquet", "quarantine.parquet"
SUMMARY_FILE = "ingest_summary.json"
# a quarantined row is the same row again only with the same values too: another run's file of the same name
# (a monthly export named alike from another folder) has other rows at the same row numbers
QUARANTINE_KEY = [n.SOURCE_FILE, n.SOURCE_ROW, n.REASON, n.RAW]


class ReconciliationError(RuntimeError):
    """Input rows do not equal accepted + duplicate + quarantined: a row was lost or counted twice."""


def run(config: CartwiseConfig, *, log: Callable[[str], None] = print) -> dict:
    """Ingest every file of ``config.data.paths`` into ``<work_dir>/ingest``.

    Args:
        config: parsed cartwise.yaml; reads its ``data`` section.
        log: where progress lines go.

    Returns:
        The run summary also written to ``ingest_summary.json``: totals,
        per-file counts, quarantine counts per reason, accepted counts per
        event type, guest purchases, store sizes and ``"reconciled": True``.

    Raises:
        FileNotFoundError: an input file does not exist.
        ValueError: two inputs share a file name (quarantine rows are keyed by it).
        MalformedInputError: an input cannot be read as its format (the
            message names file, column, row and value).
        ReconciliationError: counts do not add up.
    """
    t_run = time.perf_counter()
    data = config.data
    paths = [config.resolve(p) for p in data.paths]
    _check_inputs(paths)
    adapter = get_adapter(data.adapter)
    out_dir = Layout(config.work_dir).ingest
    previous = _read_store(out_dir)
    log(f"[ingest] adapter {data.adapter}, {len(paths)} file(s) -> {out_dir}"
        + (f" (store holds {len(previous['events']):,} events)" if len(previous["events"]) else ""))

    seen: set[str] = set(previous["events"][n.EVENT_ID].astype(str))
    new_events, new_items, new_quarantine, files = [], [], [], []
    for path in paths:
        t0 = time.perf_counter()
        out = adapter.read(path, data.on_malformed_value)
        read_s = time.perf_counter() - t0
        events = _check_output(out, path, data.adapter)
        dup = events[n.EVENT_ID].duplicated() | events[n.EVENT_ID].isin(seen)
        accepted = events[~dup]
        seen.update(accepted[n.EVENT_ID].astype(str))
        counts = {"file": path.name, "path": str(path), "input_rows": out.input_rows, "accepted": len(accepted),
                  "duplicate": int(dup.sum()), "quarantined": len(out.quarantine),
                  "seconds": round(time.perf_counter() - t0, 2)}
        _reconcile(counts, path.name)
        files.append(counts)
        new_events.append(accepted)
        new_items.append(out.items)
        new_quarantine.append(out.quarantine)
        log(f"[ingest] {path.name}: {out.input_rows:,} rows read in {read_s:.1f}s -> {counts['accepted']:,} accepted, "
            f"{counts['duplicate']:,} duplicate, {counts['quarantined']:,} quarantined")

    run_events = _concat(new_events, EVENT_DTYPES)
    run_quarantine = _concat(new_quarantine, QUARANTINE_DTYPES)
    t0 = time.perf_counter()
    events = _sort_events(_concat([previous["events"], run_events], EVENT_DTYPES))
    items = merge_catalog([previous["items"], *new_items], events)
    quarantine = _merge_quarantine(previous["quarantine"], run_quarantine)
    written = {
        EVENTS_FILE: _write_if_changed(events, out_dir / EVENTS_FILE),
        ITEMS_FILE: _write_if_changed(items, out_dir / ITEMS_FILE),
        QUARANTINE_FILE: _write_if_changed(quarantine, out_dir / QUARANTINE_FILE),
    }
    log(f"[ingest] merged and written in {time.perf_counter() - t0:.1f}s: "
        + ", ".join(f"{name} {'written' if w else 'unchanged'}" for name, w in written.items()))

    totals = {k: sum(f[k] for f in files) for k in ("input_rows", "accepted", "duplicate", "quarantined")}
    _reconcile(totals, "all inputs")
    purchases = run_events[run_events[n.EVENT_TYPE] == n.PURCHASE]
    summary = {
        "adapter": data.adapter,
        "on_malformed_value": data.on_malformed_value,
        **totals,
        "files": files,
        "quarantined_by_reason": dict(Counter(run_quarantine[n.REASON].astype(str)).most_common()),
        "accepted_by_event_type": {str(k): int(v) for k, v in run_events[n.EVENT_TYPE].value_counts().items()},
        "guest_purchases": int(purchases[n.IS_GUEST].sum()),
        "store": {"events": len(events), "items": len(items), "quarantine": len(quarantine),
                  "guest_purchases": int(((events[n.EVENT_TYPE] == n.PURCHASE) & events[n.IS_GUEST]).sum())},
        "written": written,
        "reconciled": True,
        "seconds": round(time.perf_counter() - t_run, 2),
    }
    write_json(out_dir / SUMMARY_FILE, summary)
    _write_manifest(out_dir, config, files, {EVENTS_FILE: events, ITEMS_FILE: items, QUARANTINE_FILE: quarantine})
    _log_summary(summary, log)
    return summary


def merge_catalog(catalogs: list[pd.DataFrame], events: pd.DataFrame) -> pd.DataFrame:
    """One catalog row per item from earlier catalogs and all accepted events.

    Args:
        catalogs: item frames, oldest first; for each attribute the latest
            non-null value wins.
        events: every accepted event (previous and new).

    Returns:
        Canonical items sorted by id: every item of ``catalogs`` and of
        ``events``; ``first_seen`` is the earliest of the catalogs' and the
        events' first sightings.
    """
    cat = _concat(catalogs, ITEM_DTYPES)
    attrs = cat.groupby(n.ITEM_ID, sort=True).last()  # last() skips nulls per column
    first_event = events.groupby(n.ITEM_ID)[n.EVENT_TIMESTAMP].min()
    ids = attrs.index.union(pd.Index(first_event.index)).sort_values()
    items = attrs.reindex(ids)
    missing = ~ids.isin(attrs.index)
    if missing.any():
        median_price = events.groupby(n.ITEM_ID)[n.UNIT_PRICE].median()
        items.loc[missing, n.TITLE] = "item " + ids[missing].astype(str)
        items.loc[missing, n.CATEGORY] = "unknown"
        items.loc[missing, n.PRICE] = median_price.reindex(ids[missing]).to_numpy()
    seen = pd.concat([cat.groupby(n.ITEM_ID)[n.FIRST_SEEN].min(), first_event], axis=1).min(axis=1)
    items[n.FIRST_SEEN] = seen.reindex(ids).to_numpy()
    return conform_items(items.rename_axis(n.ITEM_ID).reset_index())


# --- steps ---------------------------------------------------------------------------


def _check_inputs(paths: list[Path]) -> None:
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: input file not found (data.paths in the config)")
    names = Counter(p.name for p in paths)
    clash = [name for name, c in names.items() if c > 1]
    if clash:
        raise ValueError(f"inputs share the file name(s) {clash}: quarantine rows are keyed by file name; rename one")


def _check_output(out: AdapterOutput, path: Path, adapter: str) -> pd.DataFrame:
    """The adapter's events conformed; its own row accounting checked."""
    if out.input_rows != len(out.events) + len(out.quarantine):
        raise ReconciliationError(
            f"adapter {adapter} on {path.name}: {out.input_rows:,} input rows but {len(out.events):,} events "
            f"+ {len(out.quarantine):,} quarantined")
    conform_quarantine(out.quarantine)
    conform_items(out.items)
    return conform_events(out.events)


def _reconcile(c: dict, what: str) -> None:
    if c["input_rows"] != c["accepted"] + c["duplicate"] + c["quarantined"]:
        raise ReconciliationError(
            f"{what}: {c['input_rows']:,} input rows != {c['accepted']:,} accepted + {c['duplicate']:,} duplicate "
            f"+ {c['quarantined']:,} quarantined")


def _read_store(out_dir: Path) -> dict[str, pd.DataFrame]:
    """The previous ingest's outputs (empty frames where none)."""
    parts = {"events": (EVENTS_FILE, EVENT_DTYPES, conform_events), "items": (ITEMS_FILE, ITEM_DTYPES, conform_items),
             "quarantine": (QUARANTINE_FILE, QUARANTINE_DTYPES, conform_quarantine)}
    out = {}
    for key, (name, dtypes, conform) in parts.items():
        path = out_dir / name
        out[key] = conform(pd.read_parquet(path)) if path.is_file() else _empty(dtypes)
    return out


def _empty(dtypes: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in dtypes.items()})


def _concat(frames: list[pd.DataFrame], dtypes: dict[str, str]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return _empty(dtypes)
    return pd.concat(frames, ignore_index=True).astype(dtypes)


def _sort_events(events: pd.DataFrame) -> pd.DataFrame:
    return events.sort_values([n.EVENT_TIMESTAMP, n.EVENT_ID], kind="stable").reset_index(drop=True)


def _merge_quarantine(previous: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    q = _concat([previous, new], QUARANTINE_DTYPES).drop_duplicates(QUARANTINE_KEY, keep="last")
    return q.sort_values(QUARANTINE_KEY, kind="stable").reset_index(drop=True)


def _write_if_changed(df: pd.DataFrame, path: Path) -> bool:
    """Write ``df`` as parquet unless the file already holds exactly this content.

    Returns:
        True if the file was (re)written.
    """
    if path.is_file():
        old = pd.read_parquet(path)
        if list(old.columns) == list(df.columns) and old.astype(df.dtypes.to_dict()).equals(df):
            return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)
    return True


def _write_manifest(out_dir: Path, config: CartwiseConfig, files: list[dict], outputs: dict[str, pd.DataFrame]) -> None:
    inputs = [{"path": f["path"], "file": f["file"], "rows": f["input_rows"], "sha256": sha256_file(Path(f["path"]))}
              for f in files]
    write_manifest(
        out_dir, STAGE,
        inputs={"files": inputs},
        config=config.data,
        outputs={name: {"rows": len(df), "sha256": sha256_file(out_dir / name)} for name, df in outputs.items()},
    )


def _log_summary(s: dict, log: Callable[[str], None]) -> None:
    log(f"[ingest] {s['input_rows']:,} input rows = {s['accepted']:,} accepted + {s['duplicate']:,} duplicate "
        f"+ {s['quarantined']:,} quarantined (reconciled)")
    if s["accepted_by_event_type"]:
        log("[ingest] accepted by event type: "
            + ", ".join(f"{k} {v:,}" for k, v in s["accepted_by_event_type"].items())
            + f"; guest purchases {s['guest_purchases']:,}")
    for reason, count in list(s["quarantined_by_reason"].items())[:10]:
        log(f"[ingest]   quarantined {count:>8,}  {reason}")
    if len(s["quarantined_by_reason"]) > 10:
        log(f"[ingest]   ... {len(s['quarantined_by_reason']) - 10} more reasons in {SUMMARY_FILE}")
    st = s["store"]
    log(f"[ingest] store: {st['events']:,} events, {st['items']:,} items, {st['quarantine']:,} quarantined rows "
        f"({s['seconds']:.1f}s)")


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.ingest --config cartwise.yaml``; exit 2 on bad config or input."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cartwise.yaml")
    args = parser.parse_args(argv)
    try:
        run(load_config(args.config))
    except (ConfigError, MalformedInputError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
