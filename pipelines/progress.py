"""Progress and elapsed time for long pipeline steps.

Where it sits: used by every script in `pipelines/` so a shop's data team
sees what runs and how long it took, in one format: `[stage] message (1.2s)`.
"""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator

Log = Callable[[str], None]


def default_log(msg: str) -> None:
    print(msg, file=sys.stdout, flush=True)


@contextlib.contextmanager
def step(stage: str, what: str, log: Log = default_log) -> Iterator[dict]:
    """Log the start and the end of a step with its elapsed time.

    Args:
        stage: pipeline stage name (`ingest`, `train`, ...).
        what: what the step does.
        log: where lines go.

    Yields:
        A dict the step may fill with a `result` string shown at the end.
    """
    info: dict = {}
    log(f"[{stage}] {what} ...")
    t0 = time.perf_counter()
    yield info
    dt = time.perf_counter() - t0
    extra = f": {info['result']}" if "result" in info else ""
    log(f"[{stage}] {what} done in {dt:.1f}s{extra}")
