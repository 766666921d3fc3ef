"""Ingest: every input row is accepted, a duplicate or quarantined; reruns change nothing."""
from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest

from cartwise.config import parse_config
from feature_repo import names as n
from pipelines import ingest
from pipelines.adapters.base import MalformedInputError
from pipelines.schema import conform_events, conform_items, conform_quarantine
from tests.pipelines import samples

DATA_FILES = (ingest.EVENTS_FILE, ingest.ITEMS_FILE, ingest.QUARANTINE_FILE)


def quiet(_msg: str) -> None:
    pass


def config(tmp_path, paths, **data):
    return parse_config({"data": {"paths": [str(p) for p in paths], "work_dir": "work", **data}}, base_dir=tmp_path)


def digests(cfg) -> dict[str, str]:
    d = cfg.work_dir / "ingest"
    return {f: hashlib.sha256((d / f).read_bytes()).hexdigest() for f in DATA_FILES}


def read(cfg, name: str) -> pd.DataFrame:
    return pd.read_parquet(cfg.work_dir / "ingest" / name)


def test_crafted_file_counts_by_hand(tmp_path):
    cfg = config(tmp_path, [samples.online_retail(tmp_path)])
    s = ingest.run(cfg, log=quiet)
    # derivation of every number: see the comments of tests/pipelines/samples.py OR_ROWS
    for key, value in samples.OR_EXPECTED.items():
        assert s[key] == value, key
    assert s["reconciled"] is True
    assert s["quarantined_by_reason"] == {
        "non-product code POST (POSTAGE)": 1, "stock adjustment: negative quantity outside a cancellation": 1,
        "non-positive unit price": 1, "non-product code GIFT_0001_20 (Dotcomgiftshop Gift Voucher £20.00)": 1}
    assert s["files"][0]["file"] == "retail.csv.gz" and s["files"][0]["accepted"] == 6
    assert json.loads((cfg.work_dir / "ingest" / ingest.SUMMARY_FILE).read_text())["accepted"] == 6

    events, items, q = read(cfg, ingest.EVENTS_FILE), read(cfg, ingest.ITEMS_FILE), read(cfg, ingest.QUARANTINE_FILE)
    assert len(events) == 6 and events[n.EVENT_ID].is_unique
    assert events[n.EVENT_TIMESTAMP].is_monotonic_increasing
    pd.testing.assert_frame_equal(conform_events(events), events)
    pd.testing.assert_frame_equal(conform_items(items), items)
    pd.testing.assert_frame_equal(conform_quarantine(q), q)
    assert items[n.ITEM_ID].tolist() == ["22633", "71053", "85123A", "DCGSSGIRL"]
    assert q[n.SOURCE_ROW].tolist() == [4, 6, 7, 11] and (q[n.SOURCE_FILE] == "retail.csv.gz").all()
    assert json.loads(q[n.RAW].iloc[0])["StockCode"] == "POST"  # the raw row is kept

    manifest = json.loads((cfg.work_dir / "ingest" / "manifest.json").read_text())
    assert manifest["inputs"]["files"][0]["rows"] == 12 and len(manifest["inputs"]["files"][0]["sha256"]) == 64
    assert manifest["config"]["adapter"] == "online_retail"


def test_second_ingest_is_a_no_op(tmp_path):
    cfg = config(tmp_path, [samples.online_retail(tmp_path)])
    ingest.run(cfg, log=quiet)
    before = digests(cfg)
    mtimes = {f: (cfg.work_dir / "ingest" / f).stat().st_mtime_ns for f in DATA_FILES}
    s = ingest.run(cfg, log=quiet)
    assert digests(cfg) == before
    assert {f: (cfg.work_dir / "ingest" / f).stat().st_mtime_ns for f in DATA_FILES} == mtimes  # not rewritten
    # 12 rows: the 6 accepted last time and the 2 in-file repeats are duplicates; the 4 stay quarantined
    assert (s["accepted"], s["duplicate"], s["quarantined"]) == (0, 8, 4)
    assert s["written"] == {f: False for f in DATA_FILES} and s["reconciled"] is True


def test_incremental_file_appends_only_new_events(tmp_path):
    first = samples.online_retail(tmp_path)
    ingest.run(config(tmp_path, [first]), log=quiet)
    second = samples.online_retail(tmp_path, name="retail_2.csv", rows=[
        samples.OR_ROWS[0],  # already ingested from the first file: duplicate
        "536400,85123A,WHITE HANGING HEART T-LIGHT HOLDER,1,2011-01-05 09:00:00,2.95,17850.0,United Kingdom",  # new
        "536401,21754,HOME BUILDING BLOCK WORD,2,2011-01-05 09:10:00,5.95,,United Kingdom",  # new item, guest
        "536402,M,Manual,1,2011-01-05 09:20:00,1.00,,United Kingdom",  # quarantined
    ])
    cfg = config(tmp_path, [second])
    s = ingest.run(cfg, log=quiet)
    assert (s["input_rows"], s["accepted"], s["duplicate"], s["quarantined"]) == (4, 2, 1, 1)
    events, items, q = read(cfg, ingest.EVENTS_FILE), read(cfg, ingest.ITEMS_FILE), read(cfg, ingest.QUARANTINE_FILE)
    assert len(events) == 6 + 2 and events[n.EVENT_ID].is_unique
    assert items[n.ITEM_ID].tolist() == ["21754", "22633", "71053", "85123A", "DCGSSGIRL"]
    heart = items.set_index(n.ITEM_ID).loc["85123A"]
    assert heart[n.FIRST_SEEN] == pd.Timestamp("2010-12-01 08:26", tz="UTC")  # earliest sighting kept
    assert q[[n.SOURCE_FILE, n.SOURCE_ROW]].values.tolist() == [
        ["retail.csv.gz", 4], ["retail.csv.gz", 6], ["retail.csv.gz", 7], ["retail.csv.gz", 11], ["retail_2.csv", 4]]
    assert s["store"] == {"events": 8, "items": 5, "quarantine": 5, "guest_purchases": 2}


def test_a_later_file_of_the_same_name_keeps_the_earlier_files_quarantine(tmp_path):
    """Two monthly exports of one name from two folders, in two runs, each with a quarantined row at the same row
    number for the same reason: both rows stay in the store (the second used to replace the first); the same
    file again changes nothing."""
    rows = ["536402,M,Manual,1,2011-01-05 09:20:00,1.00,,United Kingdom",
            "536403,M,Manual,1,2011-01-25 09:20:00,18.00,12345.0,France"]
    firsts = []
    for i, folder in enumerate(("a", "b")):
        (tmp_path / folder).mkdir()
        path = samples.online_retail(tmp_path / folder, name="2011-01.csv", rows=[rows[i]])
        s = ingest.run(config(tmp_path, [path]), log=quiet)
        assert (s["input_rows"], s["quarantined"]) == (1, 1)
        firsts.append(path)
    cfg = config(tmp_path, [firsts[1]])
    q = read(cfg, ingest.QUARANTINE_FILE)
    assert len(q) == 2 and q[n.SOURCE_FILE].eq("2011-01.csv").all() and q[n.SOURCE_ROW].eq(1).all()
    assert sorted(json.loads(r)["InvoiceNo"] for r in q[n.RAW]) == ["536402", "536403"]
    before = digests(cfg)
    ingest.run(cfg, log=quiet)
    assert digests(cfg) == before


def test_malformed_file_fails_or_quarantines(tmp_path):
    rows = list(samples.OR_ROWS)
    rows[4] = rows[4].replace(",-2,", ",abc,")  # row 5: Quantity "abc"
    path = samples.online_retail(tmp_path, rows, name="bad.csv")
    with pytest.raises(MalformedInputError) as e:
        ingest.run(config(tmp_path, [path]), log=quiet)
    assert "bad.csv" in str(e.value) and "'Quantity'" in str(e.value) and "row 5" in str(e.value)
    assert not (tmp_path / "work" / "ingest" / ingest.EVENTS_FILE).exists()  # nothing half-written

    s = ingest.run(config(tmp_path, [path], on_malformed_value="quarantine"), log=quiet)
    # as the clean file, but row 5 (the return) is quarantined instead of accepted
    assert (s["input_rows"], s["accepted"], s["duplicate"], s["quarantined"]) == (12, 5, 2, 5)
    assert s["quarantined_by_reason"]["malformed Quantity"] == 1


def test_missing_column_names_file_and_column(tmp_path):
    path = samples.online_retail(tmp_path, [r.rsplit(",", 1)[0] for r in samples.OR_ROWS], name="no_country.csv",
                                 header=samples.OR_HEADER.rsplit(",", 1)[0])
    with pytest.raises(MalformedInputError, match=r"no_country\.csv: column 'Country': missing required column"):
        ingest.run(config(tmp_path, [path]), log=quiet)


def test_missing_input_and_clashing_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        ingest.run(config(tmp_path, [tmp_path / "nowhere.csv"]), log=quiet)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    paths = [samples.online_retail(tmp_path / d, name="same.csv") for d in ("a", "b")]
    with pytest.raises(ValueError, match="share the file name"):
        ingest.run(config(tmp_path, paths), log=quiet)


@pytest.mark.parametrize("adapter, write, expected", [
    # see the derivations beside RR_ROWS and R46_ROWS in samples.py
    ("retailrocket", samples.retailrocket, {"input_rows": 7, "accepted": 5, "duplicate": 1, "quarantined": 1,
                                            "accepted_by_event_type": {"view": 3, "add_to_cart": 1, "purchase": 1}}),
    ("rees46", samples.rees46, {"input_rows": 7, "accepted": 5, "duplicate": 1, "quarantined": 1,
                                "accepted_by_event_type": {"view": 3, "add_to_cart": 1, "purchase": 1}}),
])
def test_funnel_formats_reconcile(tmp_path, adapter, write, expected):
    cfg = config(tmp_path, [write(tmp_path)], adapter=adapter)
    s = ingest.run(cfg, log=quiet)
    assert {k: s[k] for k in expected} == expected
    assert ingest.run(cfg, log=quiet)["accepted"] == 0


def test_canonical_reingest_of_own_output(tmp_path):
    cfg = config(tmp_path, [samples.online_retail(tmp_path)])
    ingest.run(cfg, log=quiet)
    # the ingest output is itself canonical: a second store built from it holds the same events and items
    again = parse_config({"data": {"adapter": "canonical", "work_dir": "copy",
                                   "paths": [str(cfg.work_dir / "ingest" / ingest.EVENTS_FILE)]}}, base_dir=tmp_path)
    s = ingest.run(again, log=quiet)
    assert (s["input_rows"], s["accepted"]) == (6, 6)
    copy = tmp_path / "copy" / "ingest"
    pd.testing.assert_frame_equal(pd.read_parquet(copy / ingest.EVENTS_FILE), read(cfg, ingest.EVENTS_FILE))
    pd.testing.assert_frame_equal(pd.read_parquet(copy / ingest.ITEMS_FILE), read(cfg, ingest.ITEMS_FILE))


# --- the shipped Online Retail file ------------------------------------------------------

NON_PRODUCT = {"POST", "DOT", "M", "C2", "D", "S", "AMAZONFEE", "BANK CHARGES", "CRUK", "PADS", "B",
               "22016", "23444", "23574"}  # the last three: a £100 voucher, next-day carriage, packing charge


@pytest.fixture(scope="module")
def real_ingest(tmp_path_factory):
    base = tmp_path_factory.mktemp("real")
    cfg = config(base, [samples.REAL_ONLINE_RETAIL])
    return cfg, ingest.run(cfg, log=quiet)


@pytest.fixture(scope="module")
def real_raw():
    return pd.read_csv(samples.REAL_ONLINE_RETAIL, dtype=str, keep_default_na=False)


def test_real_file_reconciles(real_ingest, real_raw):
    _, s = real_ingest
    assert s["input_rows"] == len(real_raw) == 370_931
    assert s["input_rows"] == s["accepted"] + s["duplicate"] + s["quarantined"] and s["reconciled"]
    assert s["accepted"] == sum(s["accepted_by_event_type"].values())
    assert s["quarantined"] == sum(s["quarantined_by_reason"].values())


def test_real_file_counts_match_an_independent_pandas_derivation(real_ingest, real_raw):
    cfg, s = real_ingest
    raw = real_raw
    code, inv = raw["StockCode"].str.upper(), raw["InvoiceNo"]
    qty, price = raw["Quantity"].astype(int), raw["UnitPrice"].astype(float)
    cancel = inv.str.startswith("C")
    keep = (~code.isin(NON_PRODUCT) & ~code.str.startswith("GIFT_0001_") & (inv.str[0].str.isdigit() | cancel)
            & (qty != 0) & ((qty > 0) != cancel) & (price > 0))
    # the README's 2,848 exact duplicate rows include 6 copies of rows that are quarantined anyway
    assert raw.duplicated().sum() == 2_848
    assert raw[keep].duplicated().sum() == s["duplicate"] == 2_842
    assert (~keep).sum() == s["quarantined"] == 4_196
    assert keep.sum() - 2_842 == s["accepted"] == 363_893
    guests = keep & ~cancel & raw["CustomerID"].eq("") & ~raw.duplicated()
    assert s["guest_purchases"] == guests.sum() > 0  # guest checkouts are kept
    assert s["quarantined_by_reason"]["stock adjustment: negative quantity outside a cancellation"] == 1_023


def test_real_file_catalog(real_ingest):
    cfg, s = real_ingest
    items, events = read(cfg, ingest.ITEMS_FILE), read(cfg, ingest.EVENTS_FILE)
    ids = items[n.ITEM_ID]
    assert (ids == ids.str.upper()).all() and (events[n.ITEM_ID] == events[n.ITEM_ID].str.upper()).all()
    assert not ids.isin(NON_PRODUCT).any() and not ids.str.startswith("GIFT_0001_").any()
    assert set(events[n.ITEM_ID]) == set(ids) and ids.is_unique
    assert ids.str.startswith("DCGS").any()  # dotcom products are real products
    assert (items[n.CATEGORY] == "other").mean() < 0.25
    assert items[n.TITLE].notna().all() and (items[n.PRICE] > 0).all()


def test_real_file_second_ingest_is_a_no_op(real_ingest):
    cfg, first = real_ingest
    before = digests(cfg)
    s = ingest.run(cfg, log=quiet)
    assert digests(cfg) == before
    assert (s["accepted"], s["duplicate"], s["quarantined"]) == (0, first["accepted"] + first["duplicate"],
                                                               first["quarantined"])
