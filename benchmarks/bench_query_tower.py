"""Query-tower benchmark: the SavedModel's `embed` against the NumPy pass serving uses, one shopper per call.

Not a test (timings never assert in the suite). Run:

    .venv/bin/python benchmarks/bench_query_tower.py [--bundle build/bundles/CURRENT] [--rounds 5]
        [--out build/benchmarks/query_tower.json]

Both are called as serving calls them (`serving.pipeline.Recommender._embed`): one row of the query
tower's inputs per call, here the bundle's golden users (real features as of the export). `tensorflow`
is the bundle's `embed_query` (`cartwise.bundle.load_tower`: the saved signature's concrete function);
`numpy` is what `models.towers.query_embedder` returns when its NumPy pass gives the SavedModel's own
embeddings on the probe (here the golden users; serving also checks them in sessions and session-only
shoppers, `serving.pipeline.Recommender._query_embedder`). Timing: in each round every method
runs over all golden users in turn, in a new random order of the methods per round (same machine load);
p50 per method over all rounds, and the ratio of the two p50s. The machine is shared: compare the
columns of one run, not runs.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # serving runs one BLAS thread
    os.environ.setdefault(_var, "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from cartwise.bundle import current_bundle, load_bundle  # noqa: E402
from models.towers import query_embedder  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=None, help="bundle directory (default: build/bundles/CURRENT)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "build" / "benchmarks" / "query_tower.json"))
    args = p.parse_args(argv)
    root = Path(args.bundle) if args.bundle else current_bundle(ROOT / "build" / "bundles")
    bundle = load_bundle(root)
    q = bundle.manifest["query_inputs"]
    golden = bundle.golden_inputs
    if golden is None:
        raise SystemExit(f"{root}: no golden queries to time the query tower on")
    served = query_embedder(bundle.embed_query, bundle.embed_query.module, q["strings"], q["floats"], golden)
    if served.engine != "numpy":
        raise SystemExit(f"{root}: serving would keep TensorFlow ({served.engine_reason}); nothing to compare")
    rows = len(golden[q["strings"][0]])
    one = [{name: values[i:i + 1] for name, values in golden.items()} for i in range(rows)]
    methods = {"tensorflow": bundle.embed_query, "numpy": served}
    diff = float(np.max(np.abs(served(golden) - bundle.embed_query(golden))))
    for f in methods.values():  # warm-up
        for x in one[:20]:
            f(x)
    times: dict[str, list[float]] = {m: [] for m in methods}
    order = np.random.default_rng(args.seed)
    pc = time.perf_counter
    started = dt.datetime.now(dt.timezone.utc)
    load = os.getloadavg()
    for _ in range(args.rounds):
        for m in order.permutation(list(methods)).tolist():
            f, ts = methods[m], times[m]
            for x in one:
                t = pc(); f(x); ts.append(pc() - t)
    p50 = {m: float(np.percentile(ts, 50)) * 1e6 for m, ts in times.items()}
    p99 = {m: float(np.percentile(ts, 99)) * 1e6 for m, ts in times.items()}
    result = {"started_utc": started.isoformat(), "bundle": str(root), "rows": rows, "rounds": args.rounds,
              "loadavg": [load, os.getloadavg()], "p50_us": p50, "p99_us": p99,
              "ratio_p50": p50["tensorflow"] / p50["numpy"], "max_abs_diff": diff}
    print(f"{root.name}: {rows} golden users x {args.rounds} rounds, one row a call (load {load[0]:.2f})")
    for m in methods:
        print(f"  {m:10s} p50 {p50[m]:7.1f} us  p99 {p99[m]:7.1f} us")
    print(f"  tensorflow / numpy p50: {result['ratio_p50']:.1f}x; max |difference| on the golden users {diff:.2g}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
