"""Crash safety of export: `kill -9` at each crash point never exposes a partial bundle.

Each run starts `cartwise export` in a subprocess with CARTWISE_CRASH_AT=<point>,
which SIGKILLs itself there (pipelines/export.py CRASH_POINTS). Meanwhile a
reader thread plays serving: it repeatedly resolves CURRENT and verifies every
sha256 of the bundle it names. After the kill, CURRENT must name a complete,
loadable bundle (the old one before the pointer moved, the new one after),
and the next export must remove every orphan (staging dirs, temp files,
bundles renamed into place but never made CURRENT).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cartwise import bundle as b
from pipelines import export
from tests.conftest import quiet
from tests.shop_copy import copy_shop

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
#: Points after which CURRENT already names the new bundle.
AFTER_POINTER = {"current_replaced", "history_written"}


class Reader(threading.Thread):
    """Serving's view during a crash: resolve CURRENT, verify the bundle, again and again."""

    def __init__(self, bundles: Path):
        super().__init__(daemon=True)
        self.bundles, self.stop, self.seen, self.errors = bundles, threading.Event(), set(), []
        self.checks = 0

    def run(self):
        while not self.stop.is_set():
            try:
                root = b.current_bundle(self.bundles)
                self.seen.add(b.verify(root)["version"])
                self.checks += 1
            except Exception as e:  # any partial state serving could see
                self.errors.append(f"{type(e).__name__}: {e}")
            time.sleep(0.03)  # often enough to catch a window, light enough to leave the cores to export


def crash_export(config_path: Path, point: str) -> subprocess.Popen:
    env = {**os.environ, b.CRASH_ENV: point, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen([sys.executable, "-m", "cartwise", "export", "--config", str(config_path)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def check_points(runs: list[tuple]) -> list[dict]:
    """Crash one export per (config, config path, point) concurrently (separate work dirs, so imports
    overlap), check what serving saw, then clean each up with a normal export."""
    started = []
    for cfg, path, point in runs:
        bundles = cfg.work_dir / "bundles"
        reader = Reader(bundles)
        reader.start()
        started.append((cfg, point, b.current_version(bundles), reader, crash_export(path, point)))
    results = []
    for cfg, point, old, reader, proc in started:
        _, err = proc.communicate(timeout=600)
        reader.stop.set()
        reader.join()
        bundles = cfg.work_dir / "bundles"
        assert proc.returncode == -signal.SIGKILL, f"export did not die at {point}: {proc.returncode}\n{err[-2000:]}"
        assert not reader.errors, reader.errors[:3]
        assert reader.checks > 0
        after = b.current_version(bundles)
        b.load_bundle(bundles / after)  # complete and loadable, golden queries replayed
        if point in AFTER_POINTER:
            assert after != old
        else:
            assert after == old
        assert reader.seen <= {old, after}
        leftovers = sorted(p.name for p in bundles.iterdir() if p.name.startswith(".") or
                           (p.is_dir() and p.name not in b.read_history(bundles)))
        manifest = export.run(cfg, log=quiet)  # the next export cleans what the crash left
        names = sorted(p.name for p in bundles.iterdir())
        hist = b.read_history(bundles)
        assert not [x for x in names if x.startswith(".")], names
        assert all(x in hist for x in names if (bundles / x).is_dir()), (names, hist)
        assert b.current_version(bundles) == manifest["version"] == hist[-1]
        results.append({"point": point, "old": old, "after_crash": after, "leftovers": leftovers,
                        "reader_checks": reader.checks, "serving_saw": sorted(reader.seen)})
    return results


FAST_POINTS = ("index_serialized", "renamed", "current_tmp_written")


def test_kill_9_during_export_leaves_old_or_new_bundle(trained_shop, tmp_path):
    cfg, *_ = trained_shop
    runs = []
    for i, point in enumerate(FAST_POINTS):
        (tmp_path / point).mkdir()
        runs.append((*copy_shop(cfg, tmp_path / point), point))
    results = {r["point"]: r for r in check_points(runs)}
    assert any(x.startswith(".staging-") for x in results["index_serialized"]["leftovers"])
    # a complete bundle renamed into place but never made CURRENT is an orphan too
    assert any(not x.startswith(".") for x in results["renamed"]["leftovers"])
    assert any(x.startswith(".CURRENT") for x in results["current_tmp_written"]["leftovers"])


@pytest.mark.slow
def test_crash_matrix_every_point_three_runs(trained_shop, tmp_path):
    """Every crash point, three runs each, two at a time (one per core)."""
    cfg, *_ = trained_shop
    shops = [copy_shop(cfg, _mk(tmp_path / f"shop{i}")) for i in range(2)]
    jobs = [(point, run) for point in export.CRASH_POINTS for run in range(3)]
    results = []
    for i in range(0, len(jobs), 2):
        batch = jobs[i:i + 2]
        results += check_points([(*shops[j], point) for j, (point, _) in enumerate(batch)])
    assert len(results) == 3 * len(export.CRASH_POINTS) >= 24
    print("\ncrash matrix:", *(f"{r['point']}: serving saw {r['serving_saw']} in {r['reader_checks']} checks, "
                               f"leftovers {r['leftovers']}" for r in results), sep="\n  ")


def _mk(p: Path) -> Path:
    p.mkdir()
    return p
