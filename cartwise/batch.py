"""Batch recommendations for a list of users (`cartwise recommend`).

Where it sits: top layer; uses the same serving pipeline as the HTTP API
(`serving.pipeline.Recommender`) over the CURRENT bundle, so a batch file
and a live response agree for the same user and bundle.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from cartwise.bundle import current_bundle
from cartwise.config import CartwiseConfig
from serving.pipeline import Recommender

FORMATS = (".csv", ".parquet")


def read_users(path: Path) -> list[str]:
    """Distinct user ids of a csv or parquet file with a `user_id` column, in file order."""
    if path.suffix not in FORMATS:
        raise ValueError(f"{path}: users file must be .csv or .parquet")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: users file not found")
    df = pd.read_csv(path, dtype=str, keep_default_na=False) if path.suffix == ".csv" else pd.read_parquet(path)
    if "user_id" not in df.columns:
        raise ValueError(f"{path}: column 'user_id' is missing (columns: {list(df.columns)})")
    users = df["user_id"].astype(str).str.strip()
    empty = users.eq("") | users.isin(["nan", "None"])
    if empty.any():
        raise ValueError(f"{path}: user_id is empty in data row {int(empty.idxmax()) + 1}")
    return list(dict.fromkeys(users.tolist()))


def run(config: CartwiseConfig, users_file: Path, out: Path, k: int, exclude_purchased: bool = False,
        bundle_dir: Path | None = None) -> pd.DataFrame:
    """Write one row per (user_id, rank, item_id, score) for every listed user.

    Args:
        config: parsed cartwise.yaml (work_dir locates the CURRENT bundle).
        users_file: csv or parquet with a `user_id` column.
        out: output file; `.csv` or `.parquet` by extension.
        k: items per user.
        exclude_purchased: leave out items each user bought before.
        bundle_dir: a specific bundle instead of CURRENT.

    Returns:
        The written frame; `cold_start` is True for users served by the cold-start route.
    """
    if out.suffix not in FORMATS:
        raise ValueError(f"{out}: output must end in .csv or .parquet")
    if k < 1:
        raise ValueError(f"--k must be >= 1, got {k}")
    users = read_users(users_file)
    rec = Recommender.from_bundle_dir(bundle_dir or current_bundle(config.work_dir / "bundles"))
    rows = []
    for u in users:
        r = rec.recommend(u, k, exclude_purchased=exclude_purchased)
        cold = any(f.startswith(("cold_start", "fallback")) for f in r.flags)
        for rank, item in enumerate(r.items, start=1):
            rows.append({"user_id": u, "rank": rank, "item_id": item.item_id, "score": item.score,
                         "source": item.source, "cold_start": cold, "flags": ",".join(r.flags)})
    df = pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score", "source", "cold_start", "flags"])
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False) if out.suffix == ".csv" else df.to_parquet(out, index=False)
    return df
