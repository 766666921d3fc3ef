"""What a leaf and a re-ordered candidate cost a ScaNN query: the measurement behind `search_cost`.

Not a test (timings never assert in the suite). Run:

    .venv/bin/python benchmarks/search_cost.py [--cases 100000x32,1000000x64,100000x64] [--queries 600]
        [--rounds 3] [--seed 0] [--out build/benchmarks/search_cost.json]

`pipelines.build_index.calibrate_search` ranks the settings that reach the
recall target by `pipelines.build_index.search_cost`: the hashed points of
the leaves searched plus `REORDER_COST_IN_HASHED_POINTS` per re-ordered
candidate. This script measures that exchange rate on the shipped searcher
(`build_searcher` with cartwise.yaml's `retrieval.index`) over
benchmarks/bench_index.py's mixture: one query at a time, p50 over
`--queries` queries at 8 and 24 leaves x 20 and 80 re-ordered candidates,
the best of `--rounds` rounds (the machine is shared). The cost of a leaf is
the p50 slope over leaves, of a candidate the slope over candidates, both
averaged over the other setting; a leaf's cost over its hashed points (items
per leaf, twice with SOAR) gives the cost of a hashed point, and the
candidate's cost over that the exchange rate.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_index import Mixture  # noqa: E402
from cartwise.config import load_config  # noqa: E402
from pipelines.build_index import REORDER_COST_IN_HASHED_POINTS, build_searcher  # noqa: E402

LEAVES, DEPTHS = (8, 24), (20, 80)


def measure(n: int, dim: int, queries: int, rounds: int, seed: int, clusters: int, index_cfg) -> dict:
    rng = np.random.default_rng([seed, n, dim])
    mix = Mixture(dim, max(1, min(clusters, n // 20)), rng)
    emb = mix.sample(n, rng)
    qs = mix.sample(queries, rng, items=False)
    searcher, params = build_searcher(emb, index_cfg, k=10)
    if params["type"] != "tree_ah":
        raise SystemExit(f"{n:,} items: an exact index, nothing to measure")
    points = n * (2 if params.get("soar_lambda") else 1) / params["num_leaves"]
    grid: dict[tuple[int, int], float] = {}
    pc = time.perf_counter
    for _ in range(rounds):
        for leaves in LEAVES:
            for depth in DEPTHS:
                ts = []
                for q in qs:
                    t = pc()
                    searcher.search(q, final_num_neighbors=10, leaves_to_search=leaves,
                                    pre_reorder_num_neighbors=depth)
                    ts.append(pc() - t)
                p50 = float(np.percentile(ts, 50)) * 1e9
                grid[(leaves, depth)] = min(grid.get((leaves, depth), p50), p50)
    (l0, l1), (d0, d1) = LEAVES, DEPTHS
    per_leaf = ((grid[(l1, d0)] - grid[(l0, d0)]) + (grid[(l1, d1)] - grid[(l0, d1)])) / 2 / (l1 - l0)
    per_candidate = ((grid[(l0, d1)] - grid[(l0, d0)]) + (grid[(l1, d1)] - grid[(l1, d0)])) / 2 / (d1 - d0)
    per_point = per_leaf / points
    return {"items": n, "dim": dim, "num_leaves": params["num_leaves"], "hashed_points_per_leaf": points,
            "p50_ns": {f"{lv}x{d}": v for (lv, d), v in grid.items()}, "ns_per_leaf": per_leaf,
            "ns_per_hashed_point": per_point, "ns_per_reordered_candidate": per_candidate,
            "candidate_in_hashed_points": per_candidate / per_point}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="100000x32,1000000x64,100000x64", help="comma-separated ITEMSxDIM")
    p.add_argument("--queries", type=int, default=600)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clusters", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default=str(ROOT / "cartwise.yaml"))
    p.add_argument("--out", default=str(ROOT / "build" / "benchmarks" / "search_cost.json"))
    args = p.parse_args(argv)
    index_cfg = load_config(args.config).retrieval.index
    started = dt.datetime.now(dt.timezone.utc)
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()}; {started:%Y-%m-%d %H:%M} UTC; "
          f"shipped REORDER_COST_IN_HASHED_POINTS {REORDER_COST_IN_HASHED_POINTS}")
    results = []
    for case in args.cases.split(","):
        n, dim = (int(x) for x in case.lower().split("x"))
        r = measure(n, dim, args.queries, args.rounds, args.seed, args.clusters, index_cfg)
        results.append(r)
        print(f"{n:,} x {dim}-d ({r['num_leaves']} leaves, {r['hashed_points_per_leaf']:.0f} hashed points each): "
              f"a leaf {r['ns_per_leaf']:.0f} ns ({r['ns_per_hashed_point']:.2f} ns a point), a re-ordered "
              f"candidate {r['ns_per_reordered_candidate']:.0f} ns = {r['candidate_in_hashed_points']:.0f} hashed "
              "points", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"started_utc": started.isoformat(), "args": vars(args),
                               "shipped_constant": REORDER_COST_IN_HASHED_POINTS, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
