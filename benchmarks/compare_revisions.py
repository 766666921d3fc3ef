"""Serving benchmark of two code revisions: in-process recommend latency, side by side in one run.

Not a test (timings never assert in the suite). Run:

    .venv/bin/python benchmarks/compare_revisions.py --base REV [--bundle DIR] [--items 1000000]
        [--blocks 12] [--requests 400] [--out build/benchmarks/revisions.json]

What one change to the serving code buys, on this shared machine: `--base` (any git revision, checked out
into a temporary worktree) and the working tree each build the same Recommender from their own code, in a
process of their own (`benchmarks/bench_serving.py`'s synthetic catalog of `--items` items over the demo
bundle `--bundle`, or the demo bundle itself with `--items 0`; a 1M-item build takes ~40 s and 2.4 GB),
pass once over the requests untimed and freeze their objects as a server does. Then the two processes
time `Recommender.recommend` on the same `--requests` requests (bench_serving's request mix, seed 0) in
turns: `--blocks` blocks, each one pass of each process in a new random order, while the other waits; so
both see the machine's load of the same minute. Reported per revision over all blocks: p50, p99 and mean
in ms, and the ratios base / working tree; compare the columns of one run, not runs.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(root: str, bundle: str, items: int, requests: int) -> None:
    """Build the Recommender from the code under `root`, then time one pass over the requests per line read
    from stdin, printing the pass's times (ms) as a JSON line (runs in its own process)."""
    import gc
    import time

    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # as a server runs
        os.environ.setdefault(var, "1")
    sys.path[:0] = [root, str(Path(root) / "benchmarks")]
    import bench_serving as bs
    from serving.request import validate_request

    demo = bs._demo_recommender(bundle, None)
    work = tempfile.mkdtemp(prefix="revisions_")  # the synthetic ranking state lives here while timed
    try:
        rec = bs._synthetic_recommender(items, demo, 0, 500, Path(work))[0] if items else demo
        parsed = [validate_request(r, max_k=rec.config.serving.max_k) for r in bs._requests(rec, requests, 0)]

        def run() -> list[float]:
            out = []
            for q in parsed:
                t = time.perf_counter()
                rec.recommend(q.user_id, q.k, q.exclude, q.exclude_purchased, session=q.session)
                out.append((time.perf_counter() - t) * 1e3)
            return out

        run()
        gc.collect()
        gc.freeze()
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            if line.strip() != "run":
                break
            print(json.dumps({"ms": run(), "loadavg": os.getloadavg()[0]}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _read(proc: subprocess.Popen, name: str, log: Path) -> dict:
    """The child's next JSON line (other output is skipped); its stderr's tail if it ends instead."""
    for line in proc.stdout:
        if line.startswith("{"):
            return json.loads(line)
    tail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
    raise SystemExit(f"{name}: the child ended without answering (exit {proc.wait()}):\n{tail}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="git revision to compare the working tree with")
    p.add_argument("--bundle", default=None, help="demo bundle directory (default: build/bundles/CURRENT)")
    p.add_argument("--items", type=int, default=1_000_000, help="synthetic catalog size (0: the demo bundle)")
    p.add_argument("--blocks", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--out", default=str(ROOT / "build" / "benchmarks" / "revisions.json"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.bundle, args.items, args.requests)
        return
    if args.bundle is None:
        sys.path.insert(0, str(ROOT))
        from cartwise.bundle import current_bundle  # the parent needs no TensorFlow

        args.bundle = str(current_bundle(ROOT / "build" / "bundles"))
    base = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()
    started = dt.datetime.now(dt.timezone.utc)
    names = [f"base {base}", "working tree"]
    times: dict[str, list[float]] = {name: [] for name in names}
    loads = []
    with tempfile.TemporaryDirectory(prefix="revision_") as tmp:
        tree = Path(tmp) / base
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), base], cwd=ROOT, check=True,
                       capture_output=True)
        procs: dict[str, subprocess.Popen] = {}
        logs: dict[str, Path] = {}
        try:
            for name, root in zip(names, (tree, ROOT)):  # one at a time: a build takes both cores
                cmd = [sys.executable, __file__, "--child", str(root), "--bundle", args.bundle,
                       "--items", str(args.items), "--requests", str(args.requests), "--base", base]
                logs[name] = Path(tmp) / f"child_{len(logs)}.log"
                with open(logs[name], "w") as err:
                    procs[name] = subprocess.Popen(cmd, cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                   stderr=err, text=True)
                _read(procs[name], name, logs[name])
                print(f"{name}: built", flush=True)
            order = random.Random(args.seed)
            for b in range(args.blocks):
                for name in order.sample(names, len(names)):
                    procs[name].stdin.write("run\n")
                    procs[name].stdin.flush()
                    got = _read(procs[name], name, logs[name])
                    times[name] += got["ms"]
                    loads.append(got["loadavg"])
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.stdin.close()
                    proc.wait(timeout=60)
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    import numpy as np

    stats = {name: {"p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99)),
                    "mean_ms": float(np.mean(t)), "requests": len(t)} for name, t in times.items()}
    ratio = {k: stats[names[0]][k] / stats[names[1]][k] for k in ("p50_ms", "p99_ms", "mean_ms")}
    print(f"{args.blocks} blocks x {args.requests} requests each, load {min(loads):.2f}-{max(loads):.2f}")
    for name in names:
        st = stats[name]
        print(f"  {name:14s} p50 {st['p50_ms']:.2f} ms  p99 {st['p99_ms']:.2f}  mean {st['mean_ms']:.2f}")
    print(f"  base / working tree: p50 {ratio['p50_ms']:.2f}x  p99 {ratio['p99_ms']:.2f}x  "
          f"mean {ratio['mean_ms']:.2f}x")
    rows = {"stats": stats, "ratio_base_over_working_tree": ratio, "loadavg": [min(loads), max(loads)]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"started_utc": started.isoformat(), "base": base, "bundle": args.bundle,
                               "items": args.items, "requests": args.requests, "blocks": args.blocks, **rows},
                              indent=2))


if __name__ == "__main__":
    main()
