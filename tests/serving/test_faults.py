"""Fault tests (issue 6, item 7): the online store dying mid-run, a damaged or mismatched index, non-finite features.

Everything is real: a `redis-server` process on a loopback port that the test
kills (SIGKILL) and starts again, the synthetic shop's features built into it
and a bundle exported against it (`features.online_store: redis`), the HTTP
app over a real socket, and ScaNN indexes damaged on disk or rebuilt for the
wrong embeddings with the manifest re-hashed so that only the load-time
checks (index against model, golden replay) stand between them and serving.

Timing is asserted only as coarse bounds: every request answers within the
client's timeout (:data:`CLIENT_TIMEOUT`); while Redis is down, the circuit
breaker of `serving.features` makes every fallback after the first failed read
answer in under :data:`FAST_FALLBACK` (the redis-py retries it skips take
seconds), except the one half-open trial read per cool-down.

A behaviour the issue asks for that the code does not have yet is marked
`xfail(strict=True, raises=...)` with its own exception type
(:class:`NotAsDocumented`, :class:`NotImputed`), so a broken precondition
fails as usual instead of passing as an expected failure, and a fix makes it
XPASS, which fails the run until the mark is removed. None is marked now: the
index checks (dimension, row count, scores, golden queries required) are in
`cartwise.bundle.load_bundle`.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import re
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from cartwise import bundle as b
from cartwise.bundle import BundleError, load_bundle
from feature_repo import names as n
from pipelines import build_features, export
from pipelines.build_index import build_searcher
from pipelines.layout import Layout
from serving.app import create_app
from serving.features import REDIS_SERVING_TIMEOUTS, CircuitBreaker, OnlineStoreUnavailable
from serving.hotswap import BundleSlot
from serving.pipeline import FALLBACK_RANKING, FALLBACK_STORE, Recommender
from serving.server import BackgroundServer
from tests.conftest import quiet
from tests.shop_copy import copy_shop

pytestmark = pytest.mark.integration
#: the only timing asserted: every answer arrives within this (seconds)
CLIENT_TIMEOUT = 30.0
#: a fallback answered by the open breaker (no Redis call) takes well under this (seconds); a read that waits
#: for redis-py's 3 retries with backoff on a refused connection took 2.7-4.1 s before the breaker
FAST_FALLBACK = 1.0
#: users with online features in the synthetic shop (the load generator cycles through them)
USERS = [f"U{u:03d}" for u in range(12)]
K = 5


class NotAsDocumented(AssertionError):
    """The bundle loaded (or was refused without a BundleError) although its index does not match it."""


class NotImputed(AssertionError):
    """A non-finite online feature was not imputed: the request failed or answered non-finite scores."""


# --- a real redis-server that a test can kill and start again -----------------------------------------------


@pytest.fixture(scope="module")
def redis_shop(trained_shop, redis_server, tmp_path_factory):
    """A copy of the trained shop with `features.online_store: redis`: features built into the real Redis, a
    bundle exported against it, and its recommender."""
    cfg, *_ = trained_shop
    cfg2, _ = copy_shop(cfg, tmp_path_factory.mktemp("redis_shop"),
                        features={"online_store": "redis", "redis_connection_string": redis_server.url})
    # a fresh registry: the copy's says everything is materialized already, which would put nothing into Redis
    (Layout(cfg2.work_dir).feature_store / "data" / "registry.db").unlink()
    build_features.run(cfg2, log=quiet)
    root = cfg2.work_dir / "bundles" / export.run(cfg2, log=quiet)["version"]
    rec = Recommender.from_bundle_dir(root)
    online = rec.features.store.config.online_store
    # serving's copy of the config gets short socket timeouts; feature_store.yaml (materialization) does not
    assert online.type == "redis" and online.connection_string == ",".join(
        [redis_server.url, *(f"{k}={v}" for k, v in REDIS_SERVING_TIMEOUTS.items())]), online.connection_string
    return cfg2, root, rec


def wait_store_closed(rec) -> None:
    """Wait until the recommender's breaker lets reads through again (a previous test may have opened it)."""
    wait_for(rec.features.ping, "the online store read through a closed breaker",
             timeout=rec.features.breaker.cooldown + 30)


class Load(threading.Thread):
    """Sequential requests for known users over one keep-alive connection; every answer recorded in order."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stop = url, threading.Event()
        self.answers: list[tuple[str, tuple[str, ...], list[str]]] = []  # (user, flags, item sources)
        self.failures: list[str] = []
        self.seconds: list[float] = []  # per answer, printed (never asserted)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=CLIENT_TIMEOUT) as client:
            i = 0
            while not self.stop.is_set():
                user = USERS[i % len(USERS)]
                i += 1
                t0 = time.perf_counter()
                try:
                    r = client.post("/v1/recommend", json={"user_id": user, "k": K})
                except httpx.HTTPError as e:  # a timeout included: the only latency bound asserted
                    self.failures.append(f"{user}: {type(e).__name__}: {e}")
                    continue
                if r.status_code != 200:
                    self.failures.append(f"{user}: HTTP {r.status_code}: {r.text[:300]}")
                    continue
                body = r.json()
                self.answers.append((user, tuple(body["flags"]), [x["source"] for x in body["items"]]))
                self.seconds.append(time.perf_counter() - t0)
                time.sleep(0.02)

    def since(self, start: int) -> list:
        return self.answers[start:]


def wait_for(predicate, what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


# --- 1. the online store dies mid-run -----------------------------------------------------------------------


def test_redis_killed_mid_run_every_request_falls_back_then_recovers(redis_server, redis_shop):
    _, _, rec = redis_shop
    redis_server.ensure_running()
    wait_store_closed(rec)
    breaker = rec.features.breaker
    client_kwargs = rec.features.store._get_provider().online_store._get_client(
        rec.features.store.config.online_store).get_connection_kwargs()
    for key, value in REDIS_SERVING_TIMEOUTS.items():  # the timeouts reached redis-py
        assert client_kwargs[key] == value, (key, client_kwargs)
    with BackgroundServer(create_app(rec, max_k=20)) as srv, \
            httpx.Client(base_url=srv.url, timeout=CLIENT_TIMEOUT) as client:
        ready = client.get("/health/ready").json()
        assert ready["status"] == "ok" and ready["online_store"] == "ok", ready
        load = Load(srv.url)
        load.start()
        try:
            wait_for(lambda: len(load.answers) >= 3, "3 answers with Redis up")
            healthy = sorted(load.seconds[:3])
            redis_server.save()
            opened, trials = breaker.opened, breaker.trials
            redis_server.kill()
            killed_at = len(load.answers)

            # the first read after the kill waits for redis-py's retries, then opens the breaker
            wait_for(lambda: any(FALLBACK_STORE in f for _, f, _ in load.since(killed_at)),
                     "the first fallback answer from the load")
            assert breaker.opened == opened + 1 and breaker.state == "open", (breaker.opened, breaker.state)
            t0 = time.perf_counter()
            down = client.get("/health/ready")
            ready_down_s = time.perf_counter() - t0
            assert down.status_code == 200, down.text
            assert down.json()["status"] == "degraded" and down.json()["online_store"] == "unavailable", down.json()
            assert client.get("/health/live").json() == {"status": "ok"}
            t0 = time.perf_counter()
            one = client.post("/v1/recommend", json={"user_id": "U000", "k": K})
            one_s = time.perf_counter() - t0
            assert one.status_code == 200, one.text
            body = one.json()
            assert body["flags"] == [FALLBACK_STORE] and len(body["items"]) == K
            assert "two_tower" not in {x["source"] for x in body["items"]}  # no features, no user embedding
            if breaker.trials == trials:  # still inside the first cool-down: neither went to Redis
                assert ready_down_s < FAST_FALLBACK and one_s < FAST_FALLBACK, (ready_down_s, one_s)
            wait_for(lambda: sum(FALLBACK_STORE in f for _, f, _ in load.since(killed_at)) >= 6,
                     "6 fallback answers from the load while Redis is down")
            down_trials = breaker.trials - trials  # half-open reads while down: each may wait for the retries

            redis_server.start()  # same port, same data directory: loads the snapshot
            restarted_at, t_restart = len(load.answers), time.monotonic()
            # the next trial read (at most one cool-down after the last failure) closes the breaker
            wait_for(lambda: breaker.state == "closed", "the breaker to close after Redis came back",
                     timeout=breaker.cooldown + 10)
            closed_after = time.monotonic() - t_restart
            wait_for(lambda: sum(not f for _, f, _ in load.since(restarted_at)) >= 3,
                     "3 personalised answers after Redis came back")
            ready = client.get("/health/ready").json()
            assert ready["status"] == "ok" and ready["online_store"] == "ok", ready
            again = client.post("/v1/recommend", json={"user_id": "U000", "k": K}).json()
            assert again["flags"] == [] and "two_tower" in {x["source"] for x in again["items"]}
        finally:
            load.stop.set()
            load.join(timeout=CLIENT_TIMEOUT * 2)
    fallbacks = [s for (_, f, _), s in zip(load.answers, load.seconds) if f]
    print(f"\n{len(load.answers)} answers; healthy median {healthy[len(healthy) // 2]:.3f}s; "
          f"{len(fallbacks)} fallbacks: first {fallbacks[0]:.2f}s, rest median "
          f"{sorted(fallbacks[1:])[len(fallbacks[1:]) // 2]:.3f}s max {max(fallbacks[1:]):.3f}s; "
          f"/health/ready down {ready_down_s:.3f}s, one request down {one_s:.3f}s; {down_trials} trial read(s) "
          f"while down; breaker closed {closed_after:.2f}s after restart (cool-down {breaker.cooldown:.0f}s)")
    assert load.failures == []
    # up, down, up again: personalised answers, then only flagged fallbacks, then personalised again
    pattern = "".join("F" if flags else "U" for _, flags, _ in load.answers)
    assert re.fullmatch(r"U+F+U+", pattern), pattern
    for user, flags, sources in load.answers:
        assert len(sources) == K, (user, flags, sources)
        if flags == (FALLBACK_RANKING,):  # the store died between the user read and the ranker's own reads:
            continue                      # personal candidates in retrieval order, flagged (serving/ranking.py)
        if flags:
            assert flags == (FALLBACK_STORE,) and "two_tower" not in sources, (user, flags, sources)
        else:
            assert "two_tower" in sources, (user, sources)
    # fail fast: only the read that opened the breaker and the half-open trials while down may have waited
    slow = [s for s in fallbacks if s >= FAST_FALLBACK]
    assert len(fallbacks) - len(slow) >= 5 and len(slow) <= 1 + down_trials, (fallbacks, down_trials)


def test_breaker_fails_fast_then_lets_one_trial_read_through_per_cooldown():
    now = [0.0]
    br = CircuitBreaker(cooldown=5.0, clock=lambda: now[0])
    assert br.state == "closed" and br.allow() and br.allow()  # closed: everyone reads
    br.failed("ConnectionError: refused")
    assert br.state == "open" and not br.allow() and br.opened == 1
    assert "ConnectionError" in str(br.refusal()) and isinstance(br.refusal(), OnlineStoreUnavailable)
    now[0] = 4.9
    assert not br.allow()
    now[0] = 5.0
    assert br.state == "half_open"
    # half-open: of many threads at once exactly one gets the trial read
    barrier, got = threading.Barrier(8), []
    def ask():
        barrier.wait()
        got.append(br.allow())
    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [False] * 7 + [True] and br.trials == 1
    br.failed("ConnectionError: refused")  # the trial failed: open for another cool-down, not counted twice
    assert br.state == "open" and br.opened == 1 and not br.allow()
    now[0] = 10.0
    assert br.allow()
    br.released()  # the trial ended without a verdict: the next caller tries
    assert br.allow()
    br.succeeded()
    assert br.state == "closed" and br.allow() and br.allow() and br.last_error is None


# --- 2. a damaged or mismatched index -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(trained_shop):
    """The trained shop's exported bundle (read only here: damage is done to copies) and its recommender."""
    cfg, _, _, results = trained_shop
    root = cfg.work_dir / "bundles" / results["export"]["version"]
    return cfg, root, Recommender.from_bundle_dir(root)


def _copy(root: Path, dest: Path) -> Path:
    shutil.copytree(root, dest)
    return dest


def _rehash(root: Path, drop: tuple[str, ...] = ()) -> None:
    """Rewrite the manifest's sha256 list for the files as they are now (and drop manifest keys)."""
    m = json.loads((root / b.MANIFEST).read_text())
    m["files"] = b.file_hashes(root)
    for key in drop:
        m.pop(key, None)
    (root / b.MANIFEST).write_text(json.dumps(m))


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in (0, len(data) // 2, len(data) - 1):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _with_index(cfg, root: Path, dest: Path, embeddings: np.ndarray) -> Path:
    """A copy of `root` whose ScaNN index is built over `embeddings`, manifest re-hashed so verify() passes."""
    bad = _copy(root, dest)
    shutil.rmtree(bad / b.INDEX_DIR)
    (bad / b.INDEX_DIR).mkdir()
    searcher, _ = build_searcher(np.asarray(embeddings, dtype=np.float32), cfg.retrieval.index)
    searcher.serialize(str(bad / b.INDEX_DIR), relative_path=True)
    _rehash(bad)
    b.verify(bad)
    return bad


def _embeddings(root: Path) -> np.ndarray:
    return np.load(root / b.EMBEDDINGS, allow_pickle=False)


def _index_files(root: Path) -> list[str]:
    files = sorted(p.relative_to(root).as_posix() for p in (root / b.INDEX_DIR).rglob("*") if p.is_file())
    assert files, f"no index files under {root / b.INDEX_DIR}"
    return files


def test_flipped_or_deleted_index_file_is_refused_naming_it(served, tmp_path):
    _, root, _ = served
    for i, rel in enumerate(_index_files(root)):  # e.g. scann/dataset.npy, scann/scann_config.pb, ...
        flipped = _copy(root, tmp_path / f"flipped{i}")
        _flip(flipped / rel)
        deleted = _copy(root, tmp_path / f"deleted{i}")
        (deleted / rel).unlink()
        for load in (load_bundle, Recommender.from_bundle_dir):
            with pytest.raises(BundleError, match=re.escape(f"{rel} does not match its sha256")):
                load(flipped)
            with pytest.raises(BundleError, match=re.escape(f"{rel} listed in the manifest is missing")):
                load(deleted)


def test_hot_swap_to_a_damaged_or_mismatched_index_keeps_serving_the_old_bundle(served, tmp_path):
    cfg, root, rec = served
    emb = _embeddings(root)
    rel = f"{b.INDEX_DIR}/dataset.npy" if (root / b.INDEX_DIR / "dataset.npy").is_file() else _index_files(root)[0]
    flipped = _copy(root, tmp_path / "v99990101T000000000001-flipped")
    _flip(flipped / rel)
    deleted = _copy(root, tmp_path / "v99990101T000000000002-deleted")
    (deleted / rel).unlink()
    wide = _with_index(cfg, root, tmp_path / "v99990101T000000000003-wide",
                       np.random.default_rng(0).normal(size=(emb.shape[0], 2 * emb.shape[1])))
    fewer = _with_index(cfg, root, tmp_path / "v99990101T000000000004-fewer", emb[: len(emb) // 2])
    damaged = [(flipped, f"{rel} does not match its sha256"), (deleted, f"{rel} listed in the manifest is missing"),
               (wide, None), (fewer, "recall")]
    expected = {u: [i.item_id for i in rec.recommend(u, K).items] for u in USERS[:3]}

    slot = BundleSlot(rec)
    with BackgroundServer(create_app(slot, max_k=20)) as srv, \
            httpx.Client(base_url=srv.url, timeout=CLIENT_TIMEOUT) as client:
        for bad, reason in damaged:
            result = slot.reload(bad)
            assert not result.ok and slot.current is rec, (bad.name, result)
            ready = client.get("/health/ready").json()
            assert ready["status"] == "degraded" and ready["bundle_version"] == rec.version, ready
            assert bad.name in ready["alert"], ready
            if reason is not None:
                assert reason in ready["alert"], ready
            for user, items in expected.items():
                r = client.post("/v1/recommend", json={"user_id": user, "k": K})
                assert r.status_code == 200, r.text
                assert r.json()["bundle_version"] == rec.version and [x["item_id"] for x in r.json()["items"]] == items
        # a sound bundle again: swapped in, alert cleared
        good = slot.reload(root)
        assert good.ok and slot.alert is None, good
        ready = client.get("/health/ready").json()
        assert ready["status"] == "ok" and "alert" not in ready, ready


@pytest.mark.parametrize("case", ["half_the_items", "items_shifted"])
def test_index_built_for_other_items_is_refused_by_the_golden_replay(served, tmp_path, case):
    cfg, root, _ = served
    emb = _embeddings(root)
    other = emb[: len(emb) // 2] if case == "half_the_items" else np.roll(emb, len(emb) // 2, axis=0)
    bad = _with_index(cfg, root, tmp_path / case, other)
    for load in (load_bundle, Recommender.from_bundle_dir):
        with pytest.raises(BundleError, match="recall"):
            load(bad)


def _refused_with_bundle_error(bad: Path) -> None:
    """Return when loading `bad` raises a BundleError naming the index; raise NotAsDocumented otherwise."""
    try:
        rec = Recommender.from_bundle_dir(bad)
    except BundleError as e:
        assert any(w in str(e) for w in ("index", b.INDEX_DIR)), str(e)
        return
    except Exception as e:
        raise NotAsDocumented(f"refused, but by {type(e).__name__}: {e} (not a BundleError naming the index)") from e
    failing = []
    for user in USERS:
        try:
            rec.recommend(user, K)
        except Exception as e:  # noqa: BLE001 - what a request would hit
            failing.append(f"{type(e).__name__}: {e}")
    raise NotAsDocumented(f"{bad.name} loaded; {len(failing)}/{len(USERS)} requests then fail"
                          + (f" ({failing[0]})" if failing else " (served silently)"))


def test_index_for_another_embedding_size_is_refused_with_a_bundle_error(served, tmp_path):
    cfg, root, _ = served
    emb = _embeddings(root)
    wide = _with_index(cfg, root, tmp_path / "wide",
                       np.random.default_rng(0).normal(size=(emb.shape[0], 2 * emb.shape[1])))
    _refused_with_bundle_error(wide)


def test_index_with_more_rows_than_the_item_table_is_refused(served, tmp_path):
    cfg, root, _ = served
    emb = _embeddings(root)
    extra = np.vstack([emb, np.zeros((8, emb.shape[1]), dtype=np.float32)])  # 8 rows no item table row names
    _refused_with_bundle_error(_with_index(cfg, root, tmp_path / "extra_rows", extra))


def test_index_with_two_item_rows_swapped_is_refused(served, tmp_path):
    cfg, root, _ = served
    emb = _embeddings(root).copy()
    emb[[0, 1]] = emb[[1, 0]]
    _refused_with_bundle_error(_with_index(cfg, root, tmp_path / "swapped", emb))


def test_index_for_another_embedding_size_without_golden_queries_is_refused(served, tmp_path):
    cfg, root, _ = served
    emb = _embeddings(root)
    wide = _with_index(cfg, root, tmp_path / "wide_no_golden",
                       np.random.default_rng(0).normal(size=(emb.shape[0], 2 * emb.shape[1])))
    shutil.rmtree(wide / b.GOLDEN_DIR)
    _rehash(wide, drop=("golden",))
    b.verify(wide)
    _refused_with_bundle_error(wide)


# --- 3. non-finite online features --------------------------------------------------------------------------


def _write_raw_value(store, user: str, feature: str, value: float | str, view: str = n.USER_STATS_VIEW) -> None:
    """Write one feature value into the online store as a raw proto double (a string: as a string value), as a
    faulty upstream writer would; the view's other values of the user are kept as materialized.

    `FeatureStore.write_to_online_store` turns a NaN of a DataFrame into a
    missing value, so a NaN can only reach the store below it (the provider).
    """
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    fv = store.get_feature_view(view)
    key = EntityKeyProto(join_keys=[n.USER_ID], entity_values=[ValueProto(string_val=user)])
    provider = store._get_provider()
    (_, values), = provider.online_read(config=store.config, table=fv, entity_keys=[key])
    values = dict(values or {})
    values[feature] = ValueProto(string_val=value) if isinstance(value, str) else ValueProto(double_val=value)
    ts = dt.datetime(2012, 1, 1, tzinfo=dt.timezone.utc)  # newer than anything materialized
    provider.online_write_batch(store.config, fv, [(key, values, ts, ts)], None)


def _ask_with_a_bad_feature(redis_server, rec, user: str, value: float) -> httpx.Response:
    """Put `value` into `user`'s revenue in the real Redis, check serving reads it, ask over a real socket."""
    redis_server.ensure_running()
    wait_store_closed(rec)
    _write_raw_value(rec.features.store, user, n.USER_REVENUE, value)
    got = rec.features.get(user)
    assert got is not None and not math.isfinite(got[n.USER_REVENUE]), got  # the fault is in place, unfiltered
    with BackgroundServer(create_app(rec, max_k=20)) as srv:
        return httpx.post(f"{srv.url}/v1/recommend", json={"user_id": user, "k": K}, timeout=CLIENT_TIMEOUT)


@pytest.mark.parametrize("user, value", [("U042", math.nan), ("U043", math.inf)])
def test_non_finite_user_feature_is_imputed_counted_and_the_request_answers(redis_server, redis_shop, user, value):
    """A NaN or infinite revenue in the online store is served as the training default (0), reported in the
    response's warnings and counted on /metrics; the request answers with finite, personalised scores
    (an infinite value reaching the query tower would make the embedding NaN, which ScaNN refuses)."""
    _, _, rec = redis_shop
    before = rec.imputed.counts.get(n.USER_REVENUE, 0)
    r = _ask_with_a_bad_feature(redis_server, rec, user, value)  # users not among the load's USERS
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["flags"] == [] and len(body["items"]) == K, body
    assert all(math.isfinite(x["score"]) for x in body["items"]) and "two_tower" in {x["source"] for x in body["items"]}
    assert any(n.USER_REVENUE in w for w in body["warnings"]), body["warnings"]
    assert rec.imputed.counts[n.USER_REVENUE] == before + 1
    text = "\n".join(f"{m.name} {s.labels} {s.value}" for m in rec.registry.collect() for s in m.samples)
    assert "cartwise_imputed_features" in text and n.USER_REVENUE in text


@pytest.mark.parametrize("user, view, feature, value, where", [
    ("U044", n.USER_STATS_VIEW, n.USER_REVENUE, 1e300, "query"),  # finite, but infinite once cast to float32
    ("U045", n.USER_STATS_VIEW, n.USER_REVENUE, "n/a", "query"),  # not a number: float() raised, a 500
    ("U046", n.USER_PROFILE_VIEW, n.USER_VIEWS, math.inf, "ranker"),  # a field the ranker reads, the tower not
    ("U047", n.USER_PROFILE_VIEW, n.USER_VIEWS, 1e300, "ranker"),
])
def test_a_value_the_model_cannot_take_is_imputed_and_counted_wherever_it_is_read(
        redis_server, redis_shop, user, view, feature, value, where):
    """Values the query tower or the ranker cannot take, in any view the request reads: imputed with the
    training default and counted on /metrics; the request answers 200 with finite scores (a 500 from ScaNN or
    float(), or `"score": null` from the ranker, before)."""
    _, _, rec = redis_shop
    redis_server.ensure_running()
    wait_store_closed(rec)
    if where == "ranker":
        assert feature in rec.ranker.user_fields and feature not in rec.float_inputs
    before = rec.imputed.counts.get(feature, 0)
    _write_raw_value(rec.features.store, user, feature, value, view=view)
    with BackgroundServer(create_app(rec, max_k=20)) as srv:
        r = httpx.post(f"{srv.url}/v1/recommend", json={"user_id": user, "k": K}, timeout=CLIENT_TIMEOUT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == K and all(isinstance(x["score"], float) and math.isfinite(x["score"])
                                            for x in body["items"]), body
    assert rec.imputed.counts.get(feature, 0) == before + 1
    if where == "query":
        assert any(feature in w for w in body["warnings"]), body["warnings"]
