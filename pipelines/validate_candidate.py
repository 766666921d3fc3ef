"""Check a raw file against the blessed reference before it enters the pipeline.

Where it sits: raw file -> adapter (`pipelines/adapters/`) -> **validate
candidate** (validation/gate.py: GE suite from the reference + drift) ->
verdict JSON + HTML. The reference is the event-log profile stored in the
CURRENT bundle, i.e. what the last successful export was built from.
`cartwise validate --candidate FILE [--adapter NAME]` exits 0 (pass),
1 (blocked: drift or a failed expectation) or 2 (error: validation itself
failed, or there is no reference or no readable file).
"""
from __future__ import annotations

import json
from pathlib import Path

from cartwise import bundle as b
from cartwise.config import CartwiseConfig
from feature_repo import names as n
from pipelines.adapters.base import get_adapter
from pipelines.layout import Layout
from pipelines.progress import Log, default_log, step
from pipelines.validate_dataset import ValidationFailed
from validation import gate, report

STAGE = "validate"


class CandidateBlocked(ValidationFailed):
    """The candidate drifted from the reference or broke an expectation (exit code 1)."""


class CandidateError(RuntimeError):
    """Validation could not reach a verdict (exit code 2); the candidate is blocked as well."""


def reference_profile(config: CartwiseConfig) -> tuple[dict, str]:
    """The event-log profile of the CURRENT bundle.

    Raises:
        BundleError: no CURRENT bundle, it fails verification, or it carries no reference.
    """
    bundles = Layout(config.work_dir).bundles
    root = b.current_bundle(bundles)
    b.verify(root)
    path = root / b.REFERENCE_DIR / f"{gate.EVENT_LOG}.json"
    if not path.is_file():
        raise b.BundleError(f"{root.name} carries no {b.REFERENCE_DIR}/{gate.EVENT_LOG}.json; "
                            "run `cartwise export` once to bless a reference")
    return json.loads(path.read_text()), root.name


def quarantined(verdict: dict, rows: int, input_rows: int, limit: float | None) -> None:
    """Add to the event log's verdict how many of the file's rows its adapter quarantined, and block it past
    `limit` (`validation.drift.max_quarantine_share`; None blocks, as every drift threshold set to null): a
    file whose rows mostly fail to parse is not judged on the few that parse."""
    share = rows / input_rows if input_rows else 0.0
    verdict.update(input_rows=input_rows, quarantined=rows)
    if limit is None or share > limit:
        verdict["failures"].append({"feature": "<file>", "statistic": "quarantined_share", "value": share,
                                    "threshold": limit})
        if verdict["status"] == gate.PASS:
            verdict.update(status=gate.BLOCKED, success=False)


def run(config: CartwiseConfig, candidate: Path, adapter: str | None = None, out: Path | None = None,
        *, log: Log = default_log) -> dict:
    """Gate a raw file against the blessed reference and write the verdict.

    Args:
        config: parsed cartwise.yaml (`validation.drift` thresholds, `data.adapter`).
        candidate: the raw file.
        adapter: its format (default `data.adapter`).
        out: verdict JSON (default `<work_dir>/validation/candidate_<file>.json`); the HTML report goes beside it.

    Returns:
        The verdict (status pass).

    Raises:
        CandidateBlocked: status blocked.
        CandidateError: status error.
    """
    ref, version = reference_profile(config)
    candidate = Path(candidate)
    if not candidate.is_file():
        raise FileNotFoundError(f"{candidate}: candidate file not found")
    name = adapter or config.data.adapter
    # the whole file name but its compression and format suffixes: 2011-05.part1.csv and .part2.csv apart
    stem = candidate.name.removesuffix(".gz").removesuffix(".csv").removesuffix(".parquet")
    out = out or Layout(config.work_dir).root / "validation" / f"candidate_{stem}.json"
    with step(STAGE, f"{candidate.name} ({name}) vs the reference of bundle {version}", log) as s:
        try:
            read = get_adapter(name).read(candidate, config.data.on_malformed_value)
            events = read.events.drop_duplicates(n.EVENT_ID)
            frame = gate.event_log_frame(events, read.items)
            v = config.validation.drift
            one = gate.evaluate(frame, gate.EVENT_LOG, reference={**ref, "bundle": version},
                                thresholds=v.thresholds(), overrides=v.features, min_rows=1)
            quarantined(one, len(read.quarantine), read.input_rows, v.max_quarantine_share)
        except Exception as exc:  # an unreadable file is an error verdict too, written like the others
            one = {"dataset": gate.EVENT_LOG, "rows": 0, "status": gate.ERROR, "success": False, "failures": [],
                   "error": f"{type(exc).__name__}: {exc}"}
        verdict = gate.combine([one], candidate=str(candidate), adapter=name, reference_bundle=version)
        s["result"] = verdict["status"].upper()
    html = report.write(verdict, out, title=f"cartwise candidate check: {candidate.name}")
    log(f"[{STAGE}] verdict {out}, report {html}")
    if verdict["status"] == gate.ERROR:
        raise CandidateError(f"{candidate}: validation error (blocked):\n" + "\n".join(gate.summary_lines(verdict)))
    if verdict["status"] != gate.PASS:
        raise CandidateBlocked(f"{candidate}: blocked by the drift gate (verdict {out}):\n"
                               + "\n".join(gate.summary_lines(verdict)))
    return verdict
