"""Benchmark of the shop simulator's generation at scale (not a test).

Where it sits: outside the data flow; measures `simulator.world.simulate`
(vectorized NumPy per day, events streamed to parquet one day at a time).

    .venv/bin/python benchmarks/simulate_scale.py small   # 100k shoppers x 10k items x 30 days
    .venv/bin/python benchmarks/simulate_scale.py large   # 1M shoppers x 100k items x 30 days

Each size runs in a fresh process (so peak RSS is that run's alone) and
prints wall time, peak resident memory (ru_maxrss of the child) and rows
written. Everything else is the default world.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {"small": (100_000, 10_000, 30), "large": (1_000_000, 100_000, 30)}


def child(shoppers: int, items: int, days: int, out: str) -> None:
    from simulator.config import WorldConfig
    from simulator.world import simulate

    t0 = time.perf_counter()
    s = simulate(WorldConfig(shoppers=shoppers, items=items, days=days), seed=0, out=Path(out), log=lambda m: None)
    print(json.dumps({"seconds": time.perf_counter() - t0, "summary": s}))


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--child":
        child(int(argv[1]), int(argv[2]), int(argv[3]), argv[4])
        return
    for name in argv or ["small"]:
        shoppers, items, days = SIZES[name]
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, __file__, "--child", str(shoppers), str(items), str(days), tmp],
                               capture_output=True, text=True, check=True)
            wall = time.perf_counter() - t0
            peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            res = json.loads(p.stdout.strip().splitlines()[-1])
            size_mb = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file()) / 2**20
        rows = sum(res["summary"]["events"].values())
        print(f"{name}: {shoppers:,} shoppers x {items:,} items x {days} days: wall {wall:.1f}s "
              f"(generation {res['seconds']:.1f}s), peak RSS {peak_mb:,.0f} MB, {res['summary']['sessions']:,} "
              f"sessions, {rows:,} events, {size_mb:,.0f} MB on disk")


if __name__ == "__main__":
    main(sys.argv[1:])
