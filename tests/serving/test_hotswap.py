"""Hot-swap under load over a real loopback socket, failed loads, the reload endpoint, tampering, rollback.

Two real bundles of the synthetic shop: A (the session's export) and B (the
same data, towers retrained with another seed, exported through the drift
gate against A). Their answers differ for most users, so a response whose
items came from one bundle and whose version from the other is detectable:
every response must equal, item for item, what its own version answers.
"""
from __future__ import annotations

import gc
import shutil
import threading
import time
import weakref

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from cartwise import bundle as b
from cartwise.bundle import BundleError, load_bundle
from pipelines import export, train_retrieval
from serving.app import create_app
from serving.hotswap import BundleSlot, CurrentWatcher
from serving.pipeline import Recommender
from serving.server import BackgroundServer, freeze_loaded_objects
from tests.conftest import SMALL, quiet
from tests.shop_copy import copy_shop

pytestmark = pytest.mark.integration
USERS = [f"U{u:03d}" for u in range(12)]
RATE = 20.0  # requests per second of the load generator


@pytest.fixture(scope="module")
def two_bundles(trained_shop, tmp_path_factory):
    cfg, *_ = trained_shop
    # bundle B: other retrieval towers and no ranker, so the two answer differently
    cfg2, _ = copy_shop(cfg, tmp_path_factory.mktemp("swap"), model={**SMALL["model"], "seed": 8},
                        ranking={**SMALL["ranking"], "enabled": False})
    bundles = cfg2.work_dir / "bundles"
    a = b.current_version(bundles)
    train_retrieval.run(cfg2, log=quiet)
    bv = export.run(cfg2, log=quiet)["version"]
    recs = {v: Recommender.from_bundle_dir(bundles / v) for v in (a, bv)}
    expected = {v: {u: [i.item_id for i in r.recommend(u, 5).items] for u in USERS} for v, r in recs.items()}
    return cfg2, bundles, a, bv, recs, expected


class Load(threading.Thread):
    """A load generator: RATE requests/s over one keep-alive connection, every response recorded."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stop, self.responses, self.failures = url, threading.Event(), [], []

    def run(self):
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i, t0 = 0, time.perf_counter()
            while not self.stop.is_set():
                user = USERS[i % len(USERS)]
                try:
                    r = client.post("/v1/recommend", json={"user_id": user, "k": 5})
                    if r.status_code != 200:
                        self.failures.append(f"HTTP {r.status_code}: {r.text[:200]}")
                    else:
                        body = r.json()
                        self.responses.append((user, body["bundle_version"], [x["item_id"] for x in body["items"]]))
                except Exception as e:
                    self.failures.append(f"{type(e).__name__}: {e}")
                i += 1
                # pace to RATE requests/s from the start, whatever each request took
                time.sleep(max(0.0, t0 + i / RATE - time.perf_counter()))
        self.elapsed = time.perf_counter() - t0


def swap_under_load(two_bundles, swaps: int) -> dict:
    cfg, bundles, a, bv, recs, expected = two_bundles
    b.point_current(bundles, a)
    slot = BundleSlot(recs[a], bundles_dir=bundles)
    with BackgroundServer(create_app(slot, max_k=20)) as srv, CurrentWatcher(slot, interval=0.05):
        load = Load(srv.url)
        load.start()
        time.sleep(0.5)
        for i in range(swaps):
            target = bv if slot.version == a else a
            b.point_current(bundles, target)
            deadline = time.monotonic() + 120
            while slot.version != target:
                assert time.monotonic() < deadline, f"swap {i} to {target} did not happen"
                time.sleep(0.02)
            time.sleep(0.3)  # let requests reach the new bundle
        load.stop.set()
        load.join()
    mixed = [(u, v) for u, v, items in load.responses if items != expected[v][u]]
    return {"requests": len(load.responses) + len(load.failures), "failures": load.failures, "mixed": mixed,
            "versions": sorted({v for _, v, _ in load.responses}), "rate": len(load.responses) / load.elapsed,
            "swaps": [s for s in slot.swaps], "elapsed": load.elapsed}


def test_bundles_answer_differently(two_bundles):
    _, _, a, bv, _, expected = two_bundles
    assert a != bv
    assert sum(expected[a][u] != expected[bv][u] for u in USERS) >= len(USERS) // 2


def test_three_swaps_under_load_no_failure_no_mixing(two_bundles):
    r = swap_under_load(two_bundles, 3)
    assert r["failures"] == [] and r["mixed"] == []
    assert len(r["swaps"]) == 3 and all(s.ok and s.drained for s in r["swaps"])
    assert r["versions"] == sorted(two_bundles[2:4]) and r["requests"] >= 20


@pytest.mark.slow
def test_twenty_swaps_under_load(two_bundles):
    r = swap_under_load(two_bundles, 20)
    print(f"\n20 swaps: {r['requests']} requests in {r['elapsed']:.1f}s ({r['rate']:.1f}/s), "
          f"failures {len(r['failures'])}, mixed {len(r['mixed'])}, versions {r['versions']}, "
          f"swap seconds {[round(s.seconds, 2) for s in r['swaps']]}")
    assert r["failures"] == [] and r["mixed"] == []
    assert len(r["swaps"]) == 20 and all(s.ok for s in r["swaps"])
    assert r["rate"] >= 0.75 * RATE


def _tampered_copy(src, dest, rel):
    shutil.copytree(src, dest)
    target = dest / rel
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    return dest


@pytest.mark.parametrize("rel", ["query_tower/saved_model.pb", "candidate_tower/variables/variables.index",
                                 "scann/dataset.npy", "items.parquet", "golden/queries.npy", "popular.json"])
def test_tampered_byte_is_refused_at_load(two_bundles, tmp_path, rel):
    _, bundles, a, *_ = two_bundles
    bad = _tampered_copy(bundles / a, tmp_path / a, rel)
    with pytest.raises(BundleError, match="does not match its sha256"):
        load_bundle(bad)


def test_pickle_files_and_golden_mismatch_are_refused_even_with_a_rehashed_manifest(two_bundles, tmp_path):
    import json

    _, bundles, a, *_ = two_bundles
    pkl = shutil.copytree(bundles / a, tmp_path / "pkl")
    (pkl / "scann" / "extra.pkl").write_bytes(b"\x80\x04K\x01.")
    m = json.loads((pkl / b.MANIFEST).read_text())
    m["files"] = b.file_hashes(pkl)
    (pkl / b.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="pickle"):
        load_bundle(pkl)
    # a manifest re-hashed after swapping in different golden embeddings: hashes pass, the replay does not
    gold = shutil.copytree(bundles / a, tmp_path / "gold")
    q = np.load(gold / "golden" / "queries.npy")
    np.save(gold / "golden" / "queries.npy", q + 0.5, allow_pickle=False)
    m = json.loads((gold / b.MANIFEST).read_text())
    m["files"] = b.file_hashes(gold)
    (gold / b.MANIFEST).write_text(json.dumps(m))
    b.verify(gold)
    with pytest.raises(BundleError, match="golden"):
        load_bundle(gold)


def test_failed_load_keeps_old_bundle_and_raises_alert(two_bundles, tmp_path):
    cfg, bundles, a, bv, recs, expected = two_bundles
    b.point_current(bundles, a)
    bad_name = "v99991231T000000000000-deadbeef"
    _tampered_copy(bundles / bv, bundles / bad_name, "scann/dataset.npy")
    try:
        slot = BundleSlot(recs[a], bundles_dir=bundles)
        watcher = CurrentWatcher(slot, interval=0.05)
        with BackgroundServer(create_app(slot, max_k=20)) as srv:
            b.write_atomic(bundles / b.CURRENT, bad_name + "\n")  # a pointer to a bundle damaged after publishing
            result = watcher.poll()
            assert result is not None and not result.ok and "sha256" in result.error
            assert watcher.poll() is None  # the same bad pointer is not retried in a loop
            ready = httpx.get(f"{srv.url}/health/ready").json()
            assert ready["status"] == "degraded" and bad_name in ready["alert"] and ready["bundle_version"] == a
            r = httpx.post(f"{srv.url}/v1/recommend", json={"user_id": "U001", "k": 5}).json()
            assert r["bundle_version"] == a and [x["item_id"] for x in r["items"]] == expected[a]["U001"]
            b.point_current(bundles, bv)
            assert watcher.poll().ok and slot.version == bv and slot.alert is None
            assert httpx.get(f"{srv.url}/health/ready").json()["status"] == "ok"
    finally:
        shutil.rmtree(bundles / bad_name)
        b.point_current(bundles, bv)


def test_reload_endpoint_needs_token_and_loopback(two_bundles):
    _, bundles, a, bv, recs, _ = two_bundles
    b.point_current(bundles, bv)
    slot = BundleSlot(recs[a], bundles_dir=bundles)
    app = create_app(slot, max_k=20, reload_token="s3cret")
    with BackgroundServer(app) as srv:
        assert httpx.post(f"{srv.url}/admin/reload").status_code == 403
        assert httpx.post(f"{srv.url}/admin/reload", headers={"X-Reload-Token": "wrong"}).status_code == 403
        r = httpx.post(f"{srv.url}/admin/reload", headers={"X-Reload-Token": "s3cret"}, timeout=60)
        assert r.status_code == 200 and r.json()["new_version"] == bv and slot.version == bv
    # TestClient's peer is "testclient", not a loopback address: refused even with the token
    assert TestClient(app).post("/admin/reload", headers={"X-Reload-Token": "s3cret"}).status_code == 403
    # no token configured: no endpoint at all
    assert TestClient(create_app(slot)).post("/admin/reload").status_code == 404


def test_rollback_points_current_back(two_bundles, capsys):
    from cartwise.cli import main

    cfg, bundles, a, bv, *_ = two_bundles
    b.point_current(bundles, bv)
    assert b.read_history(bundles)[-2:] == [a, bv]
    assert b.rollback(bundles) == (bv, a) and b.current_version(bundles) == a
    with pytest.raises(BundleError, match="no earlier"):
        b.rollback(bundles)
    b.point_current(bundles, bv)
    assert main(["rollback", "--config", str(cfg.base_dir / "cartwise.yaml")]) == 0
    assert f"{bv} -> {a}" in capsys.readouterr().out and b.current_version(bundles) == a
    b.point_current(bundles, bv)


def test_a_swap_frees_the_old_bundle_even_when_objects_were_frozen(two_bundles):
    """`cartwise serve` freezes what is loaded before serving (gc.freeze); a swap must not keep the old
    bundle alive in the frozen generation (serving.server.refreeze_after_swap)."""
    _, bundles, a, bv, _, _ = two_bundles
    slot = BundleSlot(Recommender.from_bundle_dir(bundles / a), bundles_dir=bundles)
    old = weakref.ref(slot.current)
    freeze_loaded_objects()
    try:
        assert gc.get_freeze_count() > 0
        assert slot.reload(bundles / bv).ok
        assert old() is None
        assert gc.get_freeze_count() > 0  # the new bundle's objects are frozen again
    finally:
        gc.unfreeze()
