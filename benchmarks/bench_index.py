"""Index benchmark: the ScaNN searcher we ship against exact brute force, side by side in this process.

Not a test (timings never assert in the suite). Run:

    .venv/bin/python benchmarks/bench_index.py [--sizes 100000,1000000] [--dims 64,32]
        [--queries 1000] [--seed 0] [--out build/benchmarks/index.json]

For every size x dimension, synthetic clustered item embeddings (a Gaussian
mixture of `--clusters` components of uneven size, item norms log-normal like
a trained candidate tower's) and queries drawn from the same mixture:

1. Build: `pipelines.build_index.build_searcher` with `retrieval.index` and
   `retrieval.k` of cartwise.yaml (exactly what export ships: tree with SOAR
   + AH + re-ordering), and the same function in its brute-force mode (ScaNN
   `score_brute_force`, what it builds below `brute_force_below` items).
   The shipped searcher (and every `--variant`) is calibrated as export
   calibrates it (`pipelines.build_index.calibrate_search`: leaves and
   re-ordering depth per list length, to `target_recall`), on
   `calibration_queries` queries drawn from the mixture apart from the timed
   ones. `leaves_only`: the same searcher calibrated for its leaves alone at
   the configured re-ordering depth (as before the depth was calibrated
   too), timed beside it in the same loop.
2. Recall@10 (and @retrieval.k, what serving asks for at most) of
   `searcher.search`, one query at a time, against exact top-k from NumPy
   (float32 matmul + argpartition). Each query re-orders and searches what
   serving would for that many neighbours (`cartwise.bundle.search_kwargs`:
   the calibrated leaves and re-ordering depth, at most 50 candidates for 10
   and 200 for 200 by default).
3. Single-query latency p50 / p99 in microseconds, one query at a time as
   serving calls it, interleaved in blocks of 50 queries in a random order
   per block (every method sees the same machine load), every block started
   right after an untimed read of 64 MB, twice the L3 cache (every method
   starts every block from the same cold cache, whatever else is timed): the shipped searcher (k=10 and k=retrieval.k), NumPy
   brute force (matvec + argpartition + sort of the top k) and the
   brute-force searcher. The ratio is NumPy p50 / shipped p50 (also against
   the brute-force searcher). Goal: recall@10 >= 0.95 at >= 50x.
4. Batched throughput (queries/s) over all queries: ScaNN `search_batched`
   (one thread) against NumPy matmul in blocks of queries + argpartition
   (one BLAS thread, see below), and ScaNN `search_batched_parallel` (all cores).
5. NumPy brute force alone, query after query (p50 in `latency_us`
   `numpy_brute_force_alone`): the cache state interleaving takes away; not
   the ratio's baseline.
6. A sweep of `leaves_to_search` on the same shipped searcher, each with the
   calibrated re-ordering depth for 10 and with 20 (recall@10 and p50 per
   setting; not interleaved, so its ratios are rougher).

The mixture's defaults are calibrated on the demo's trained candidate tower
(3,648 items x 32): its log item norms have std 0.37 (`--norm-sigma 0.37`);
after removing the mean, an item's 10th nearest neighbour has cosine 0.91 on
average, the mixture at `--spread 0.3` gives 0.87 at that size. The mixture
is harder than the real embeddings in one respect: its centres are isotropic
(26 principal components for 90% of the variance; the trained tower: 6).

Ratios, not absolute timings, are the result: the machine is shared.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

# NumPy brute force runs on one BLAS thread, as ScaNN's single-query search does. On this shared 2-core
# machine two OpenBLAS threads made a 100k x 64 matvec 18x slower (p50 0.9 ms -> 16 ms: the threads
# spin while the other agents hold the cores), which would inflate every ratio. Override with the env.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cartwise.bundle import exact_top_k, query_leaves, query_reorder, search_kwargs  # noqa: E402
from cartwise.config import IndexConfig, load_config  # noqa: E402
from pipelines.build_index import (build_searcher, calibrate_search, default_num_leaves,  # noqa: E402
                                   recall_per_query)

K = 10
WARMUP = 20
BLOCK = 50
FLUSH_BYTES = 64 << 20  # read before every timed block: twice this CPU's 32 MB L3


class Mixture:
    """A Gaussian mixture of clustered embeddings: uneven cluster sizes, log-normal item norms.

    Args:
        dim: embedding size.
        clusters: number of components.
        rng: generator for the components.
        spread: per-dimension standard deviation inside a cluster (centres are N(0, 1)).
        norm_sigma: sigma of the log-normal item norm (0.37: 5th-95th percentile ratio ~3.4).
    """

    def __init__(self, dim: int, clusters: int, rng: np.random.Generator, spread: float = 0.3,
                 norm_sigma: float = 0.37):
        self.dim, self.spread, self.norm_sigma = dim, spread, norm_sigma
        self.centers = rng.standard_normal((clusters, dim)).astype(np.float32)
        w = rng.lognormal(0.0, 1.0, clusters)  # a few big categories, a long tail of small ones
        self.weights = w / w.sum()

    def sample(self, n: int, rng: np.random.Generator, items: bool = True, block: int = 200_000) -> np.ndarray:
        """`n` float32 rows: items get log-normal norms, queries unit norm (irrelevant to the ranking)."""
        out = np.empty((n, self.dim), np.float32)
        for lo in range(0, n, block):
            m = min(block, n - lo)
            c = rng.choice(len(self.weights), size=m, p=self.weights)
            x = self.centers[c] + self.spread * rng.standard_normal((m, self.dim), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            if items:
                x *= rng.lognormal(0.0, self.norm_sigma, (m, 1)).astype(np.float32)
            out[lo:lo + m] = x
        return out


def numpy_batched(emb: np.ndarray, queries: np.ndarray, k: int, budget: int = 1 << 25) -> np.ndarray:
    """The timed batched brute force: float32 matmul in blocks of queries + one argpartition per block (ties
    unordered; the ground truth is `cartwise.bundle.exact_top_k`)."""
    block = max(1, budget // emb.shape[0])
    out = np.empty((len(queries), k), np.int64)
    for lo in range(0, len(queries), block):
        s = queries[lo:lo + block] @ emb.T
        top = np.argpartition(s, -k, axis=1)[:, -k:]
        order = np.argsort(-np.take_along_axis(s, top, axis=1), axis=1, kind="stable")
        out[lo:lo + block] = np.take_along_axis(top, order, axis=1)
    return out


def numpy_search(emb: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """One query, exact: matvec + argpartition + sort of the top k (the brute-force path a service would write)."""
    s = emb @ q
    top = np.argpartition(s, -k)[-k:]
    return top[np.argsort(-s[top])]


def recall(got, exact: np.ndarray, k: int) -> float:
    return float(recall_per_query(got, exact, k).mean())


def pct_us(times: list[float]) -> dict:
    a = np.asarray(times) * 1e6
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "mean": float(a.mean())}


def bench_case(n: int, dim: int, n_queries: int, clusters: int, seed: int, index_cfg: IndexConfig, k_serve: int,
               spread: float, norm_sigma: float, variants: dict[str, dict] | None = None) -> dict:
    rng = np.random.default_rng([seed, n, dim])
    mix = Mixture(dim, clusters, rng, spread=spread, norm_sigma=norm_sigma)
    emb = mix.sample(n, rng, items=True)
    queries = mix.sample(n_queries + WARMUP, rng, items=False)
    warm, queries = queries[:WARMUP], queries[WARMUP:]
    # calibration queries, drawn apart from the timed ones (export calibrates on other users than its gate's)
    calibration = mix.sample(index_cfg.calibration_queries, rng, items=False)
    load_before = os.getloadavg()
    print(f"\n== {n:,} items x {dim}-d, {clusters} clusters, {n_queries} queries "
          f"(load {load_before[0]:.2f}) ==", flush=True)

    t = time.perf_counter()
    searcher, params = build_searcher(emb, index_cfg, k=k_serve)
    build_s = time.perf_counter() - t
    params_built = params
    t = time.perf_counter()
    params = calibrate_search(searcher, emb, calibration, params, k_serve, index_cfg.target_recall)
    calibrate_s = time.perf_counter() - t
    bf_cfg = index_cfg.model_copy(update={"brute_force_below": n + 1})
    t = time.perf_counter()
    bf_searcher, bf_params = build_searcher(emb, bf_cfg, k=k_serve)
    bf_build_s = time.perf_counter() - t
    assert params["type"] == "tree_ah" and bf_params["type"] == "brute_force", (params, bf_params)
    # the same searcher calibrated for its leaves alone at the configured depth (as before depths were calibrated):
    # timed in the same loop, so the gain of calibrating the depth too is measured on one tree (a tree differs
    # per build)
    others = {"leaves_only": (searcher, calibrate_search(searcher, emb, calibration, params_built, k_serve,
                                                         index_cfg.target_recall, shallower=()))}
    # --variant: other index settings, timed in the same interleaved loop
    for name, update in (variants or {}).items():
        if name in others:
            raise SystemExit(f"--variant {name}: the name of the built-in comparison; pick another")
        # validated like cartwise.yaml's section: a misspelt key fails instead of timing the shipped settings
        vcfg = IndexConfig.model_validate({**index_cfg.model_dump(), **update})
        vs, vp = build_searcher(emb, vcfg, k=k_serve)
        others[name] = vs, calibrate_search(vs, emb, calibration, vp, k_serve, vcfg.target_recall)
        if others[name][1]["type"] != "tree_ah":
            raise SystemExit(f"--variant {name}: builds an exact index at {n:,} items; only tree + AH variants")
    print(f"built: shipped {params} in {build_s:.1f}s (calibrated in {calibrate_s:.1f}s); brute-force searcher in "
          f"{bf_build_s:.2f}s", flush=True)

    t = time.perf_counter()
    exact = exact_top_k(emb, queries, max(K, k_serve))
    exact_s = time.perf_counter() - t

    # each query re-orders and searches what serving would for k neighbours (cartwise.bundle.search_kwargs)
    kw_k, kw_serve = search_kwargs(params, K), search_kwargs(params, k_serve)
    pre_k = query_reorder(params, K)
    pc = time.perf_counter
    methods = {
        "scann": lambda q: searcher.search(q, final_num_neighbors=K, **kw_k)[0],
        f"scann_k{k_serve}": lambda q: searcher.search(q, final_num_neighbors=k_serve, **kw_serve)[0],
        "numpy_brute_force": lambda q: numpy_search(emb, q, K),
        "scann_brute_force": lambda q: bf_searcher.search(q, final_num_neighbors=K)[0],
    }
    for name, (vs, vp) in others.items():
        for k in (K, k_serve):
            methods[f"{name}@{k}"] = (lambda s_, k_, kw: lambda q: s_.search(
                q, final_num_neighbors=k_, **kw)[0])(vs, k, search_kwargs(vp, k))
    for q in warm:  # page in, warm caches and thread pools
        for f in methods.values():
            f(q)
    got = {m: [None] * n_queries for m in methods}
    times = {m: [0.0] * n_queries for m in methods}
    names = list(methods)
    # Interleaved in blocks of BLOCK queries, in a new random order every block (every method sees the same
    # machine load), and every block starts from the same cache state whatever else is in the loop: right after
    # an untimed read of FLUSH_BYTES, twice this CPU's L3. A fixed rotation without it always ran the shipped
    # search after the same method, cold after the brute-force searcher's pass over its dataset, warm after
    # another search of the same index: 13-17% apart at identical settings. Blocks rather than single queries:
    # per-query interleaving doubled ScaNN's p50 at 1M. p99 includes block starts.
    order = np.random.default_rng([seed, n, dim, 2])
    flush = np.ones(FLUSH_BYTES // 4, np.float32)
    for lo in range(0, n_queries, BLOCK):
        for m in order.permutation(names).tolist():
            f, g, ts = methods[m], got[m], times[m]
            float(flush.sum())
            for i in range(lo, min(lo + BLOCK, n_queries)):
                t = pc(); g[i] = f(queries[i]); ts[i] = pc() - t
    del flush

    lat = {m: pct_us(times[m]) for m in names}
    # NumPy alone, query after query: its 4 x items x dim byte matrix stays in the caches as far as they hold it
    # (100k x 64-d is 25.6 MB), the state interleaving with the other methods takes away
    alone = []
    for q in queries:
        t = pc(); numpy_search(emb, q, K); alone.append(pc() - t)
    lat["numpy_brute_force_alone"] = pct_us(alone)

    thr = {}
    t = pc(); searcher.search_batched(queries, final_num_neighbors=K, **kw_k)
    thr["scann_batched_1thread"] = pc() - t
    t = pc(); searcher.search_batched_parallel(queries, final_num_neighbors=K, **kw_k)
    thr["scann_batched_parallel"] = pc() - t
    t = pc(); numpy_batched(emb, queries, K); thr["numpy_batched"] = pc() - t
    t = pc(); bf_searcher.search_batched_parallel(queries, final_num_neighbors=K)
    thr["scann_brute_force_batched_parallel"] = pc() - t
    qps = {name: n_queries / s for name, s in thr.items()}

    np_p50 = lat["numpy_brute_force"]["p50"]
    leaves = params["num_leaves"]
    sweep = []
    depths = sorted({d for d in (pre_k, 2 * K) if d})  # the calibrated re-ordering depth for 10 and 20 (once if equal)
    for lts in sorted({max(1, round(leaves * f)) for f in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)}
                      | {params["num_leaves_to_search"], query_leaves(params, K) or params["num_leaves_to_search"]}):
        for depth in depths:
            ts, g = [], []
            for q in queries:
                t = pc(); idx, _ = searcher.search(q, final_num_neighbors=K, leaves_to_search=lts,
                                                 pre_reorder_num_neighbors=depth)
                ts.append(pc() - t)
                g.append(idx)
            p50 = float(np.percentile(ts, 50)) * 1e6
            sweep.append({"leaves_to_search": lts, "pre_reorder": depth, "recall_at_10": recall(g, exact, K),
                          "p50_us": p50, "ratio_p50_vs_numpy": np_p50 / p50})
    print("sweep leaves_to_search, re-ordered -> recall@10 / p50 us / ratio: " + "; ".join(
        f"{w['leaves_to_search']}, {w['pre_reorder']} -> {w['recall_at_10']:.3f} / {w['p50_us']:.1f} / "
        f"{w['ratio_p50_vs_numpy']:.0f}x" for w in sweep), flush=True)

    r = {
        "items": n, "dim": dim, "clusters": clusters, "queries": n_queries, "k_serve": k_serve,
        "params": params, "search_kwargs": {str(K): kw_k, str(k_serve): kw_serve},
        "build_s": build_s, "calibrate_s": calibrate_s, "brute_force_build_s": bf_build_s, "exact_ground_truth_s": exact_s,
        "recall_at_10": recall(got["scann"], exact, K),
        f"recall_at_{k_serve}": recall(got[f"scann_k{k_serve}"], exact, k_serve),
        "recall_at_10_numpy_brute_force": recall(got["numpy_brute_force"], exact, K),
        "recall_at_10_scann_brute_force": recall(got["scann_brute_force"], exact, K),
        "latency_us": lat,
        "ratio_p50_vs_numpy": lat["numpy_brute_force"]["p50"] / lat["scann"]["p50"],
        "ratio_p99_vs_numpy": lat["numpy_brute_force"]["p99"] / lat["scann"]["p99"],
        "ratio_p50_vs_scann_brute_force": lat["scann_brute_force"]["p50"] / lat["scann"]["p50"],
        "throughput_qps": qps,
        "throughput_ratio_1thread_vs_numpy": qps["scann_batched_1thread"] / qps["numpy_batched"],
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "leaves_to_search_sweep": sweep,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
    }
    r["goal_met"] = r["recall_at_10"] >= 0.95 and r["ratio_p50_vs_numpy"] >= 50
    r["variants"] = {}
    for name, (_, vp) in others.items():
        v = {"params": vp, "recall_at_10": recall(got[f"{name}@{K}"], exact, K),
             f"recall_at_{k_serve}": recall(got[f"{name}@{k_serve}"], exact, k_serve),
             "latency_us": lat[f"{name}@{K}"], f"latency_us_k{k_serve}": lat[f"{name}@{k_serve}"]}
        v["ratio_p50_vs_numpy"] = lat["numpy_brute_force"]["p50"] / v["latency_us"]["p50"]
        v["goal_met"] = v["recall_at_10"] >= 0.95 and v["ratio_p50_vs_numpy"] >= 50
        r["variants"][name] = v
        print(f"  variant {name} ({leaves_text(vp, k_serve)} leaves): recall@10 "
              f"{v['recall_at_10']:.4f} at {v['latency_us']['p50']:.0f} us ({v['ratio_p50_vs_numpy']:.0f}x), "
              f"recall@{k_serve} {v[f'recall_at_{k_serve}']:.4f} at {v[f'latency_us_k{k_serve}']['p50']:.0f} us",
              flush=True)
    print(f"recall@10 {r['recall_at_10']:.4f}, recall@{k_serve} {r[f'recall_at_{k_serve}']:.4f}; "
          f"p50 {lat['scann']['p50']:.0f} us vs numpy {lat['numpy_brute_force']['p50']:.0f} us "
          f"({r['ratio_p50_vs_numpy']:.0f}x), vs ScaNN brute force {lat['scann_brute_force']['p50']:.0f} us "
          f"({r['ratio_p50_vs_scann_brute_force']:.0f}x); numpy alone (not interleaved) "
          f"{lat['numpy_brute_force_alone']['p50']:.0f} us", flush=True)
    del searcher, bf_searcher, emb, others
    return r


def leaves_text(params: dict, k_serve: int) -> str:
    """Leaves a query for 10 and for `k_serve` neighbours searches x candidates it re-orders, of all leaves:
    "16 x 30, 50 x 200 / 316"."""
    most = params["num_leaves_to_search"]
    return (f"{query_leaves(params, K) or most} x {query_reorder(params, K)}, "
            f"{query_leaves(params, k_serve) or most} x {query_reorder(params, k_serve)} / {params['num_leaves']}")


def table(results: list[dict]) -> str:
    ks = results[0]["k_serve"]
    cols = ["items", "dim", f"leaves x re-ordered k=10, {ks} / all leaves", "build s", "recall@10", f"recall@{ks}", "ScaNN p50 / p99 µs",
            f"ScaNN k={ks} p50 µs", "NumPy BF p50 / p99 µs", "ScaNN BF p50 / p99 µs",
            "ratio p50 vs NumPy / ScaNN BF",
            "batched q/s: ScaNN 1 thread / NumPy 1 thread (ratio) / ScaNN all cores", "goal"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---:|" * len(cols)]
    for r in results:
        lat, q, p = r["latency_us"], r["throughput_qps"], r["params"]
        row = [f"{r['items']:,}", str(r["dim"]), leaves_text(p, ks),
               f"{r['build_s']:.1f}", f"{r['recall_at_10']:.4f}", f"{r[f'recall_at_{ks}']:.4f}",
               f"{lat['scann']['p50']:.0f} / {lat['scann']['p99']:.0f}",
               f"{lat[f'scann_k{ks}']['p50']:.0f}",
               f"{lat['numpy_brute_force']['p50']:.0f} / {lat['numpy_brute_force']['p99']:.0f}",
               f"{lat['scann_brute_force']['p50']:.0f} / {lat['scann_brute_force']['p99']:.0f}",
               f"{r['ratio_p50_vs_numpy']:.0f}x / {r['ratio_p50_vs_scann_brute_force']:.0f}x",
               f"{q['scann_batched_1thread']:,.0f} / {q['numpy_batched']:,.0f} "
               f"({r['throughput_ratio_1thread_vs_numpy']:.0f}x) / {q['scann_batched_parallel']:,.0f}",
               "met" if r["goal_met"] else "NOT met"]
        lines.append("| " + " | ".join(row) + " |")
    if any(r.get("variants") for r in results):
        lines += ["", f"| items | dim | settings | leaves x re-ordered k=10, {ks} / all leaves | recall@10 | p50 µs | ratio p50 vs NumPy | "
                      f"recall@{ks} | k={ks} p50 µs | goal |", "|" + "---:|" * 10]
        for r in results:
            p = r["params"]
            rows = [("shipped", p, r["recall_at_10"], r["latency_us"]["scann"]["p50"], r["ratio_p50_vs_numpy"],
                     r[f"recall_at_{ks}"], r["latency_us"][f"scann_k{ks}"]["p50"], r["goal_met"])]
            rows += [(name, v["params"], v["recall_at_10"], v["latency_us"]["p50"], v["ratio_p50_vs_numpy"],
                      v[f"recall_at_{ks}"], v[f"latency_us_k{ks}"]["p50"], v["goal_met"])
                     for name, v in r.get("variants", {}).items()]
            for name, vp, r10, p50, ratio, rk, pk, met in rows:
                lines.append(f"| {r['items']:,} | {r['dim']} | {name} | {leaves_text(vp, ks)} | {r10:.4f} | {p50:.0f} | "
                             f"{ratio:.0f}x | {rk:.4f} | {pk:.0f} | {'met' if met else 'NOT met'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated item counts")
    p.add_argument("--dims", default="64,32", help="comma-separated embedding sizes")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--clusters", type=int, default=2000, help="mixture components (capped at items / 20)")
    p.add_argument("--spread", type=float, default=0.3, help="within-cluster std per dimension (centres N(0, 1))")
    p.add_argument("--norm-sigma", type=float, default=0.37, help="sigma of the log-normal item norms")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default=str(ROOT / "cartwise.yaml"), help="retrieval.index and retrieval.k from here")
    p.add_argument("--out", default=str(ROOT / "build" / "benchmarks" / "index.json"))
    p.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                   help='other retrieval.index settings timed beside the shipped ones in the same loop, e.g. '
                        '\'previous={"soar_lambda": null, "dims_per_block": 2, "reorder_per_neighbor": 0}\' '
                        '(repeatable; "{sqrt_leaves}" in the JSON stands for round(sqrt(leaves)) of the case)')
    args = p.parse_args(argv)
    variants = {}
    for spec in args.variant:
        name, _, raw = spec.partition("=")
        if not name or not raw:
            p.error(f"--variant {spec!r}: expected NAME=JSON")
        variants[name] = raw
    sizes = [int(s) for s in args.sizes.split(",")]
    dims = [int(d) for d in args.dims.split(",")]
    retrieval = load_config(args.config).retrieval
    import scann  # noqa: F401  (version for the record)
    from importlib.metadata import version

    started = dt.datetime.now(dt.timezone.utc)
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()}; {started:%Y-%m-%d %H:%M} UTC; "
          f"scann {version('scann')}, numpy {np.__version__}; index config {retrieval.index}, k {retrieval.k}")
    results = []
    for n in sizes:
        for d in dims:
            clusters = max(1, min(args.clusters, n // 20))
            leaves = retrieval.index.num_leaves or default_num_leaves(n)
            case_variants = {name: json.loads(raw.replace("{sqrt_leaves}", str(round(leaves ** 0.5))))
                             for name, raw in variants.items()}
            results.append(bench_case(n, d, args.queries, clusters, args.seed, retrieval.index, retrieval.k,
                                      args.spread, args.norm_sigma, case_variants))
    print()
    print(table(results))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "started_utc": started.isoformat(), "cpus": os.cpu_count(), "scann": version("scann"),
        "numpy": np.__version__, "args": vars(args), "index_config": retrieval.index.model_dump(),
        "k": retrieval.k, "goal": {"recall_at_10": 0.95, "ratio_p50_vs_numpy": 50}, "results": results,
    }, indent=2, default=float))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
