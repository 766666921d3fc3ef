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

    build_features.run(_config(args), repo_dir=Path(args.repo) if args.repo else None)


def _build_dataset(args):
    from pipelines import build_dataset

    build_dataset.run(_config(args))


def _validate(args):
    from pipelines import validate_dataset

    validate_dataset.run(_config(args))
    print("validation passed")


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

    cfg = _config(args)
    bundle = Path(args.bundle) if args.bundle else current_bundle(cfg.work_dir / "bundles")
    app = create_app(Recommender.from_bundle_dir(bundle), max_k=cfg.serving.max_k)
    print(f"serving bundle {bundle.name} on http://{args.host or cfg.serving.host}:{args.port or cfg.serving.port}")
    uvicorn.run(app, host=args.host or cfg.serving.host, port=args.port or cfg.serving.port, log_level="info")


def _recommend(args):
    from cartwise import batch

    df = batch.run(_config(args), Path(args.users), Path(args.out), k=args.k,
                   exclude_purchased=args.exclude_purchased, bundle_dir=Path(args.bundle) if args.bundle else None)
    users = df["user_id"].nunique()
    cold = df.loc[df["cold_start"], "user_id"].nunique()
    print(f"wrote {len(df):,} rows for {users:,} users ({cold:,} served by the cold-start route) to {args.out}")


def _demo(args):
    from cartwise import demo

    demo.run(_config(args))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cartwise",
        description="Purchase-optimized recommendations: ingest -> features (Feast) -> point-in-time dataset -> "
                    "validation (Great Expectations) -> two-tower training (TFRS) -> evaluation -> "
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
    cmd("build-dataset", _build_dataset, "Build the point-in-time training set of weighted labelled events "
        "(Feast get_historical_features).")
    cmd("validate", _validate, "Validate the training set with Great Expectations; exit 1 when an expectation fails.")
    cmd("train", _train, "Train the two-tower retrieval model on the validated training set.")
    sp = cmd("evaluate", _evaluate, "Evaluate the model and the popularity and repeat-purchase baselines on the "
             "time split of cartwise.yaml, or, with --test-events, the exported bundle on a later raw file.")
    sp.add_argument("--test-events", help="raw file of a later period to evaluate the CURRENT bundle on")
    sp.add_argument("--adapter", help="format of --test-events (default: data.adapter)")
    sp.add_argument("--out", help="metrics JSON to write (default: <work_dir>/evaluation/metrics_<file>.json)")
    cmd("export", _export, "Export a versioned bundle (towers, ScaNN index, manifest with sha256) and point "
        "CURRENT at it; refused without a passing validation verdict.")
    sp = cmd("serve", _serve, "Serve POST /v1/recommend, GET /health/live and /health/ready over HTTP.")
    sp.add_argument("--host", help="bind address (default: serving.host, 127.0.0.1)")
    sp.add_argument("--port", type=int, help="port (default: serving.port, 8000)")
    sp.add_argument("--bundle", help="bundle directory (default: the one CURRENT names)")
    sp = cmd("recommend", _recommend, "Batch recommendations: one row per (user_id, rank, item_id, score) for "
             "every user in --users; unknown users get the cold-start answer, flagged.")
    sp.add_argument("--users", required=True, help="csv or parquet with a user_id column")
    sp.add_argument("--k", type=int, default=10, help="items per user (default: 10)")
    sp.add_argument("--out", required=True, help="output file, .csv or .parquet")
    sp.add_argument("--exclude-purchased", action="store_true", help="leave out items the user already bought")
    sp.add_argument("--bundle", help="bundle directory (default: the one CURRENT names)")
    cmd("demo", _demo, "Run every step end to end on the config, then fetch one recommendation over HTTP.")
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
