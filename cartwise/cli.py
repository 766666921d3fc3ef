"""`cartwise`: one command; each subcommand is one pipeline step or a serving entry point.

Where it sits: the top layer. Subcommands only parse arguments, load
`cartwise.yaml` once and call the step's `run`; errors a user can fix are
printed as one message (file, key or column, reason) with exit code 2, a
failed validation with exit code 1. Set CARTWISE_DEBUG=1 for the traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

DEFAULT_CONFIG = "cartwise.yaml"


def _config(args):
    from cartwise.config import load_config

    return load_config(args.config)


def _ingest(args):
    from pipelines import ingest

    ingest.run(_config(args))


def _build_features(args):
    from pipelines import build_features

    build_features.run(_config(args), repo_dir=Path(args.repo) if args.repo else None,
                       materialize=not args.no_materialize)


def _build_dataset(args):
    from pipelines import build_dataset

    build_dataset.run(_config(args))


def _build_ranking_dataset(args):
    from pipelines import build_ranking_dataset

    build_ranking_dataset.run(_config(args))


def _train_ranking(args):
    from pipelines import train_ranking

    train_ranking.run(_config(args))


def _validate(args):
    if args.candidate:
        from pipelines import validate_candidate

        validate_candidate.run(_config(args), Path(args.candidate), adapter=args.adapter,
                               out=Path(args.out) if args.out else None)
        print("candidate passed the drift gate")
        return
    from pipelines import validate_dataset

    validate_dataset.run(_config(args))
    print("validation passed")


def _rollback(args):
    from cartwise.bundle import rollback

    cfg = _config(args)
    old, new = rollback(cfg.work_dir / "bundles")
    print(f"CURRENT: {old} -> {new}")


def _index(args):
    from pipelines import update_index

    m = update_index.run(_config(args))
    u = m["index_update"]
    print(f"published {m['version']} (from {u['parent']}): {u['new']} new, {u['changed']} changed, "
          f"{u['removed']} removed items re-indexed without retraining")


def _train(args):
    from pipelines import train_retrieval

    train_retrieval.run(_config(args))


def _evaluate(args):
    from pipelines import evaluate

    cfg = _config(args)
    if args.test_events:
        evaluate.run_on_file(cfg, Path(args.test_events), adapter=args.adapter,
                             out=Path(args.out) if args.out else None)
    else:
        evaluate.run(cfg)


def _export(args):
    from pipelines import export

    export.run(_config(args))


def _serve(args):
    import uvicorn

    from cartwise.bundle import current_bundle
    from serving.app import create_app
    from serving.pipeline import Recommender

    from serving.hotswap import BundleSlot, CurrentWatcher
    from serving.server import freeze_loaded_objects, limit_blas_threads

    cfg = _config(args)
    bundles = cfg.work_dir / "bundles"
    bundle = Path(args.bundle) if args.bundle else current_bundle(bundles)
    slot = BundleSlot(Recommender.from_bundle_dir(bundle), bundles_dir=bundles)
    token = os.environ.get(args.reload_token_env) if args.reload_token_env else None
    app = create_app(slot, max_k=cfg.serving.max_k, reload_token=token, threads=cfg.serving.threads)
    watcher = CurrentWatcher(slot, interval=args.watch).start() if args.watch else None
    print(f"serving bundle {bundle.name} on http://{args.host or cfg.serving.host}:{args.port or cfg.serving.port}"
          + (f", watching {bundles / 'CURRENT'} every {args.watch}s" if watcher else ""))
    freeze_loaded_objects()
    limit_blas_threads()
    try:
        uvicorn.run(app, host=args.host or cfg.serving.host, port=args.port or cfg.serving.port, log_level="info")
    finally:
        if watcher:
            watcher.stop()


def _recommend(args):
    from cartwise import batch

    df = batch.run(_config(args), Path(args.users), Path(args.out), k=args.k,
                   exclude_purchased=args.exclude_purchased, bundle_dir=Path(args.bundle) if args.bundle else None)
    users = df["user_id"].nunique()
    cold = df.loc[df["cold_start"], "user_id"].nunique()
    print(f"wrote {len(df):,} rows for {users:,} users ({cold:,} served by the cold-start route) to {args.out}")


def _overrides(args):
    from cartwise.batch import read_users
    from cartwise.bundle import current_bundle
    from pipelines import override_report
    from serving.pipeline import Recommender

    cfg = _config(args)
    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    users = read_users(Path(args.users)) if args.users else None
    rec = Recommender.from_bundle_dir(Path(args.bundle) if args.bundle else current_bundle(cfg.work_dir / "bundles"))
    override_report.run(cfg, rec, users=users, k=args.k, exclude_purchased=args.exclude_purchased)


def _demo(args):
    from cartwise import demo

    demo.run(_config(args))


def _simulate(args):
    from simulator.config import load_simulation
    from simulator.world import simulate

    sim = load_simulation(args.config)
    world = sim.world.model_copy(update={k: v for k, v in (("days", args.days),) if v is not None})
    simulate(world, args.seed, Path(args.out))


def _policy_option(value: str | None):
    """`popular` | `random` | `repeat` | `oracle` | `bundle:DIR` -> PolicyConfig (None: keep the file's)."""
    from simulator.config import PolicyConfig

    if value is None:
        return None
    if value.startswith("bundle:"):
        return PolicyConfig(policy="bundle", bundle=Path(value.removeprefix("bundle:")).resolve())
    return PolicyConfig(policy=value)


def _abtest(args):
    from simulator import abtest
    from simulator.config import load_simulation

    sim = load_simulation(args.config)
    update = {k: v for k, v in (("days", args.days), ("sessions_per_day", args.sessions_per_day),
                                ("refresh_days", args.refresh_days), ("control", _policy_option(args.control)),
                                ("treatment", _policy_option(args.treatment))) if v is not None}
    sim = sim.model_copy(update={"abtest": sim.abtest.model_copy(update=update)})
    res = abtest.run(sim, args.seed, Path(args.out))
    print(f"wrote {Path(args.out) / 'abtest.json'} and {Path(args.out) / 'report.html'} ({res['seconds']:.0f}s)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cartwise",
        description="Purchase-optimized recommendations: ingest -> features (Feast) -> point-in-time dataset -> "
                    "validation (Great Expectations) -> two-tower and ranking training (TFRS) -> evaluation -> "
                    "export (ScaNN bundle) -> serve (HTTP).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name, fn, help_):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--config", default=DEFAULT_CONFIG, help=f"cartwise.yaml to use (default: {DEFAULT_CONFIG})")
        sp.set_defaults(fn=fn)
        return sp

    cmd("ingest", _ingest, "Read the raw files in data.paths with data.adapter into the canonical event log and "
        "item catalog; every row ends accepted, duplicate or quarantined (with a reason), counts reconcile.")
    sp = cmd("build-features", _build_features, "Compute the feature tables, `feast apply` the definitions and "
             "materialize them to the online store.")
    sp.add_argument("--repo", help="Feast repo to populate (default: <work_dir>/feature_store; "
                    "`--repo feature_repo` fills the checked-in repo so `feast` commands work inside it)")
    sp.add_argument("--no-materialize", action="store_true", help="write the tables and `feast apply` only, leave "
                    "the online store untouched (offline training sets on a large log)")
    cmd("build-dataset", _build_dataset, "Build the point-in-time training set of weighted labelled events "
        "(Feast get_historical_features).")
    cmd("build-ranking-dataset", _build_ranking_dataset, "Build the ranking model's training rows: candidates "
        "at several cut-offs, features read point in time through Feast, labelled by the purchases that follow.")
    sp = cmd("validate", _validate, "Validate the training set with Great Expectations; exit 1 when an expectation "
             "fails. With --candidate, check a raw file against the blessed reference (the CURRENT bundle's "
             "data): exit 0 pass, 1 blocked, 2 error; writes a JSON verdict and an HTML report.")
    sp.add_argument("--candidate", help="raw file to check against the blessed reference")
    sp.add_argument("--adapter", help="format of --candidate (default: data.adapter)")
    sp.add_argument("--out", help="verdict JSON (default: <work_dir>/validation/candidate_<file>.json)")
    cmd("rollback", _rollback, "Point CURRENT back at the previously published bundle (verified first); a "
        "server started with --watch swaps to it.")
    sp = cmd("index", _index, "Index maintenance without retraining.")
    sp.add_argument("action", choices=["update"], help="update: embed new or changed items with the CURRENT "
                    "bundle's candidate tower and publish a new bundle")
    cmd("train", _train, "Train the two-tower retrieval model on the validated training set.")
    cmd("train-ranking", _train_ranking, "Train the DCN-v2 ranking model (purchase probability) on the ranking rows.")
    sp = cmd("evaluate", _evaluate, "Evaluate retrieval + ranking, the two-tower index alone and the baselines "
             "(popularity, repeat, item-kNN, EASE) on the time split of cartwise.yaml (metrics.json + "
             "report.html), or, with --test-events, the exported bundle on a later raw file.")
    sp.add_argument("--test-events", help="raw file of a later period to evaluate the CURRENT bundle on")
    sp.add_argument("--adapter", help="format of --test-events (default: data.adapter)")
    sp.add_argument("--out", help="metrics JSON to write (default: <work_dir>/evaluation/metrics_<file>.json)")
    cmd("export", _export, "Export a versioned bundle (towers, ScaNN index, manifest with sha256) and point "
        "CURRENT at it; refused without a passing validation verdict.")
    sp = cmd("serve", _serve, "Serve POST /v1/recommend, GET /health/live and /health/ready over HTTP.")
    sp.add_argument("--host", help="bind address (default: serving.host, 127.0.0.1)")
    sp.add_argument("--port", type=int, help="port (default: serving.port, 8000)")
    sp.add_argument("--bundle", help="bundle directory (default: the one CURRENT names)")
    sp.add_argument("--watch", type=float, metavar="SECONDS", help="poll CURRENT this often and hot-swap to the "
                    "bundle it names (verified and golden-checked first; a failed load keeps the old one)")
    sp.add_argument("--reload-token-env", metavar="VAR", help="enable POST /admin/reload (loopback only) with the "
                    "token in this environment variable, sent as the X-Reload-Token header")
    sp = cmd("recommend", _recommend, "Batch recommendations: one row per (user_id, rank, item_id, score) for "
             "every user in --users; unknown users get the cold-start answer, flagged.")
    sp.add_argument("--users", required=True, help="csv or parquet with a user_id column")
    sp.add_argument("--k", type=int, default=10, help="items per user (default: 10)")
    sp.add_argument("--out", required=True, help="output file, .csv or .parquet")
    sp.add_argument("--exclude-purchased", action="store_true", help="leave out items the user already bought")
    sp.add_argument("--bundle", help="bundle directory (default: the one CURRENT names)")
    sp = cmd("overrides", _overrides, "Measure how often the business rules override the model: one request per "
             "evaluation test user through the bundle's serving pipeline; the top-1 override rate, top-K overlap "
             "and per-rule figures go into the evaluation's metrics.json (rule_overrides) and report.html.")
    sp.add_argument("--bundle", help="bundle directory (default: the one CURRENT names)")
    sp.add_argument("--k", type=int, default=10, help="items per request (default: 10)")
    sp.add_argument("--users", help="csv or parquet with a user_id column (default: the evaluation's test users)")
    sp.add_argument("--exclude-purchased", action="store_true", help="leave out items the user already bought")
    cmd("demo", _demo, "Run every step end to end on the config, then fetch one recommendation over HTTP.")
    sp = sub.add_parser("simulate", help="Generate a simulated shop's event log and catalog (canonical schema).",
                        description="Generate a simulated shop's event log and item catalog in the canonical "
                        "schema (DIR/events.parquet, DIR/items.parquet; ground truth in DIR/truth/).")
    sp.add_argument("--config", help="simulation file (default: the built-in default world)")
    sp.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes identical files")
    sp.add_argument("--out", required=True, help="output directory")
    sp.add_argument("--days", type=int, help="days to generate (default: world.days)")
    sp.set_defaults(fn=_simulate)
    sp = sub.add_parser("abtest", help="Simulated A/B test of revenue per session between two policies.",
                        description="Simulated A/B test: organic history, bundles trained on it by the real "
                        "pipeline, then control vs treatment served in-process; writes DIR/abtest.json and "
                        "DIR/report.html.")
    sp.add_argument("--config", help="simulation file (default: the built-in default world, popular vs random)")
    sp.add_argument("--seed", type=int, default=0, help="world seed")
    sp.add_argument("--out", required=True, help="output directory")
    sp.add_argument("--days", type=int, help="experiment days (default: abtest.days)")
    sp.add_argument("--sessions-per-day", type=int, help="cap on experiment sessions a day")
    sp.add_argument("--refresh-days", type=int, help="refresh cadence in days (0: never)")
    sp.add_argument("--control", help="popular | random | repeat | oracle | bundle:DIR (default: the file's)")
    sp.add_argument("--treatment", help="popular | random | repeat | oracle | bundle:DIR (default: the file's)")
    sp.set_defaults(fn=_abtest)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # ibis (under Feast's DuckDB store) calls a duckdb API deprecated in duckdb 2.0; noise, not news.
    warnings.filterwarnings("ignore", message=r"fetch_arrow_table\(\) is deprecated", category=DeprecationWarning)
    from cartwise.bundle import BundleError
    from cartwise.config import ConfigError

    expected: tuple[type[BaseException], ...] = (ConfigError, BundleError, FileNotFoundError, ValueError)
    try:
        from pipelines.validate_dataset import ValidationFailed
    except ImportError:  # pragma: no cover
        ValidationFailed = ()  # type: ignore
    try:
        args.fn(args)
    except ValidationFailed as e:  # type: ignore[misc]
        if os.environ.get("CARTWISE_DEBUG"):
            raise
        print(f"cartwise {args.command}: {e}", file=sys.stderr)
        return 1
    except expected as e:
        if os.environ.get("CARTWISE_DEBUG"):
            raise
        print(f"cartwise {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if os.environ.get("CARTWISE_DEBUG"):
            raise
        print(f"cartwise {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
