"""Adapters: a contract every format passes, then each format's rules on small hand-made files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feature_repo import names as n
from pipelines.adapters.base import ADAPTERS, Adapter, MalformedInputError, get_adapter
from pipelines.adapters.canonical import CanonicalAdapter
from pipelines.adapters.online_retail import OnlineRetailAdapter, derive_category
from pipelines.adapters.rees46 import Rees46Adapter
from pipelines.adapters.retailrocket import RetailRocketAdapter, sessionize
from pipelines.schema import conform_events, conform_items, conform_quarantine
from tests.pipelines import samples

UTC = "UTC"


def drop_column(header: str, rows: list[str], column: str) -> tuple[str, list[str]]:
    """The same CSV without one column (the sample values contain no commas)."""
    i = header.split(",").index(column)

    def cut(line: str) -> str:
        return ",".join(v for j, v in enumerate(line.split(",")) if j != i)

    return cut(header), [cut(r) for r in rows]


class AdapterContract:
    """What every adapter guarantees; subclasses say how to write a valid file of their format."""

    alias: str
    required_column: str

    def write(self, tmp_path: Path) -> Path:
        raise NotImplementedError

    def write_without(self, tmp_path: Path, column: str) -> Path:
        raise NotImplementedError

    @pytest.fixture
    def output(self, tmp_path):
        return get_adapter(self.alias).read(self.write(tmp_path), "fail")

    def test_alias_and_dotted_path_resolve(self):
        by_alias, by_path = get_adapter(self.alias), get_adapter(ADAPTERS[self.alias])
        assert isinstance(by_alias, Adapter) and type(by_alias) is type(by_path)

    def test_every_row_is_an_event_or_quarantined(self, output):
        assert output.input_rows == len(output.events) + len(output.quarantine)

    def test_frames_are_canonical(self, output):
        pd.testing.assert_frame_equal(conform_events(output.events), output.events)
        pd.testing.assert_frame_equal(conform_items(output.items), output.items)
        pd.testing.assert_frame_equal(conform_quarantine(output.quarantine), output.quarantine)

    def test_catalog_covers_every_event_item_once(self, output):
        assert set(output.events[n.ITEM_ID]) <= set(output.items[n.ITEM_ID])
        assert output.items[n.ITEM_ID].is_unique

    def test_event_ids_are_deterministic(self, tmp_path, output):
        again = get_adapter(self.alias).read(self.write(tmp_path), "fail")
        assert list(again.events[n.EVENT_ID]) == list(output.events[n.EVENT_ID])

    def test_quarantine_rows_point_into_the_file(self, tmp_path, output):
        q = output.quarantine
        assert (q[n.SOURCE_FILE] == self.write(tmp_path).name).all()
        assert q[n.SOURCE_ROW].between(1, output.input_rows).all() and q[n.SOURCE_ROW].is_unique

    def test_missing_column_names_file_and_column(self, tmp_path):
        path = self.write_without(tmp_path, self.required_column)
        with pytest.raises(MalformedInputError) as e:
            get_adapter(self.alias).read(path, "quarantine")
        assert path.name in str(e.value) and self.required_column in str(e.value)


# --- Online Retail ---------------------------------------------------------------------


class TestOnlineRetail(AdapterContract):
    alias, required_column = "online_retail", "UnitPrice"

    def write(self, tmp_path):
        return samples.online_retail(tmp_path)

    def write_without(self, tmp_path, column):
        header, rows = drop_column(samples.OR_HEADER, samples.OR_ROWS, column)
        return samples.online_retail(tmp_path, rows, header=header)

    def test_quarantine_reasons_by_row(self, output):
        got = dict(zip(output.quarantine[n.SOURCE_ROW], output.quarantine[n.REASON]))
        assert got == samples.OR_REASONS

    def test_events_by_hand(self, output):
        ev = output.events
        # rows 1, 2, 3, 5, 8, 9, 10, 12 pass; rows 3 and 12 repeat rows 2 and 1, so share their ids
        assert len(ev) == 8 and ev[n.EVENT_ID].duplicated().sum() == 2
        assert ev[n.EVENT_TYPE].value_counts().to_dict() == {"purchase": 7, "return": 1}
        ret = ev[ev[n.EVENT_TYPE] == n.RETURN].iloc[0]
        assert (ret[n.ITEM_ID], ret[n.QUANTITY], ret[n.SESSION_ID]) == ("85123A", 2, "C536379")
        assert set(ev[n.ITEM_ID]) == {"85123A", "71053", "22633", "DCGSSGIRL"}  # 85123a merged, upper case
        assert set(ev[n.USER_ID].dropna()) == {"17850", "13047"}  # no ".0"
        guest = ev[ev[n.ITEM_ID] == "22633"].iloc[0]
        assert guest[n.IS_GUEST] and pd.isna(guest[n.USER_ID])
        assert (ev[n.SOURCE] == "online_retail").all() and ev[n.DEVICE].isna().all()

    def test_uk_local_time_becomes_utc(self, output):
        ts = output.events.set_index(n.ITEM_ID)[n.EVENT_TIMESTAMP]
        assert ts["71053"].iloc[0] == pd.Timestamp("2010-12-01 08:26", tz=UTC)  # GMT = UTC in winter
        assert ts["DCGSSGIRL"] == pd.Timestamp("2011-06-01 11:00", tz=UTC)  # BST = UTC+1 in summer

    def test_dst_edges(self, tmp_path):
        rows = ["1,22633,X,1,2011-03-27 01:30:00,1.0,,UK",  # does not exist (clocks jump 01:00 -> 02:00): shifted
                "2,22633,X,1,2010-10-31 01:30:00,1.0,,UK"]  # happens twice: read as summer time (first pass)
        ts = OnlineRetailAdapter().read(samples.online_retail(tmp_path, rows), "fail").events[n.EVENT_TIMESTAMP]
        assert list(ts) == [pd.Timestamp("2011-03-27 01:00", tz=UTC), pd.Timestamp("2010-10-31 00:30", tz=UTC)]

    def test_catalog_by_hand(self, output):
        items = output.items.set_index(n.ITEM_ID)
        heart = items.loc["85123A"]
        # purchases 2.55 (row 1) and 2.95 (row 9); the duplicate row 12 does not count twice
        assert heart[n.PRICE] == pytest.approx(2.75)
        assert heart[n.TITLE] == "WHITE HANGING HEART T-LIGHT HOLDER" and heart[n.CATEGORY] == "candles & lighting"
        assert heart[n.FIRST_SEEN] == pd.Timestamp("2010-12-01 08:26", tz=UTC)
        assert items.loc["DCGSSGIRL", n.CATEGORY] == "party & baking"
        assert items[n.IN_STOCK].isna().all() and items[n.MARGIN].isna().all()

    def test_title_is_most_frequent_description_ties_alphabetical(self, tmp_path):
        rows = [f"{i},10001,{d},1,2011-01-01 10:00:00,{p},1.0,UK" for i, (d, p) in enumerate(
            [("B NAME", 1), ("B NAME", 2), ("A NAME", 3), ("A NAME", 4), ("", 5), ("", 6), ("", 7)])]
        rows.append("C9,10002,ONLY RETURNED,-1,2011-01-01 10:00:00,4.5,1.0,UK")
        items = OnlineRetailAdapter().read(samples.online_retail(tmp_path, rows), "fail").items.set_index(n.ITEM_ID)
        assert items.loc["10001", n.TITLE] == "A NAME"  # 2 vs 2 (empty ignored): alphabetical first
        assert items.loc["10001", n.PRICE] == pytest.approx(4.0)  # median of 1..7
        assert items.loc["10002", n.PRICE] == pytest.approx(4.5)  # never bought: median of its returns

    @pytest.mark.parametrize("row, column, value", [
        (3, "InvoiceDate", "2010-13-45 99:00:00"),
        (5, "Quantity", "abc"),
        (5, "Quantity", "٦"),  # an Arabic-Indic six: \d matched it, int() then failed outside the triage
        (7, "UnitPrice", "1,5"),
    ])
    def test_malformed_value_fails_with_file_column_row(self, tmp_path, row, column, value):
        rows = self._spoil(row, column, value)
        path = samples.online_retail(tmp_path, rows)
        with pytest.raises(MalformedInputError) as e:
            OnlineRetailAdapter().read(path, "fail")
        msg = str(e.value)
        assert path.name in msg and repr(column) in msg and f"row {row}" in msg and value in msg
        assert (e.value.column, e.value.row, e.value.value) == (column, row, value)

    def test_malformed_values_quarantined_on_request(self, tmp_path):
        rows = self._spoil(5, "Quantity", "abc")
        rows = self._spoil(3, "InvoiceDate", "yesterday", rows)
        out = OnlineRetailAdapter().read(samples.online_retail(tmp_path, rows), "quarantine")
        got = dict(zip(out.quarantine[n.SOURCE_ROW], out.quarantine[n.REASON]))
        assert got == {**samples.OR_REASONS, 3: "malformed InvoiceDate", 5: "malformed Quantity"}
        assert out.input_rows == len(out.events) + len(out.quarantine) == 12
        with pytest.raises(MalformedInputError, match="row 3"):  # fail mode reports the earliest row
            OnlineRetailAdapter().read(samples.online_retail(tmp_path, rows), "fail")

    def test_blank_line_and_byte_order_mark(self, tmp_path):
        rows = list(samples.OR_ROWS)
        rows.insert(2, "")
        path = samples.online_retail(tmp_path, rows, name="excel.csv")
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # spreadsheet exports start with a BOM
        out = OnlineRetailAdapter().read(path, "fail")  # neither stops a strict read
        got = dict(zip(out.quarantine[n.SOURCE_ROW], out.quarantine[n.REASON]))
        # the blank line is data row 3; the rows after it keep their line numbers (shifted by one)
        assert got == {3: "blank line", **{r + 1 if r >= 3 else r: why for r, why in samples.OR_REASONS.items()}}
        assert out.input_rows == 13 and len(out.events) == 8

    def test_a_stray_quote_swallows_no_line(self, tmp_path):
        """A description with an opening quote that never closes: pandas reads it on to the next quote, merging
        the lines between into one row of mixed values (counts still reconciled). Read line by line, that line
        alone is quarantined (its text kept) and every other line is read as itself, at its own row number."""
        rows = list(samples.OR_ROWS)
        rows[0] = rows[0].replace("WHITE HANGING", '"WHITE HANGING')
        fields = rows[4].split(",")
        fields[2] = f'"{fields[2]}"'  # a quoted description four lines down: where pandas' quoted field ends
        rows[4] = ",".join(fields)
        path = samples.online_retail(tmp_path, rows)
        out = OnlineRetailAdapter().read(path, "quarantine")
        got = dict(zip(out.quarantine[n.SOURCE_ROW], out.quarantine[n.REASON]))
        assert got.pop(1).startswith("broken quoting") and got == samples.OR_REASONS
        raw = json.loads(out.quarantine.loc[out.quarantine[n.SOURCE_ROW] == 1, n.RAW].item())
        assert raw["InvoiceNo"] == rows[0]  # the whole line, nothing lost
        assert out.input_rows == len(out.events) + len(out.quarantine) == 12
        clean = OnlineRetailAdapter().read(samples.online_retail(tmp_path, samples.OR_ROWS, name="clean.csv.gz"), "fail")
        assert sorted(out.events[n.EVENT_ID]) == sorted(clean.events[n.EVENT_ID].iloc[1:])  # the rest as clean
        with pytest.raises(MalformedInputError, match=r"row 1: broken quoting"):
            OnlineRetailAdapter().read(path, "fail")

    @pytest.mark.parametrize("row", [1, 6])
    def test_a_line_with_too_many_fields_is_that_line_alone(self, tmp_path, row):
        """An unquoted comma in one line: that line is quarantined with the count and every value (the extra
        one too); the others are read as they are. On the first data line pandas took the first column for an
        index and shifted every value of the file one column left."""
        rows = list(samples.OR_ROWS)
        rows[row - 1] = rows[row - 1].replace(" ", ", ", 1)
        path = samples.online_retail(tmp_path, rows)
        out = OnlineRetailAdapter().read(path, "quarantine")
        got = dict(zip(out.quarantine[n.SOURCE_ROW], out.quarantine[n.REASON]))
        assert got.pop(row) == "9 fields where the header has 8"
        assert got == {r: why for r, why in samples.OR_REASONS.items() if r != row}
        raw = out.quarantine.loc[out.quarantine[n.SOURCE_ROW] == row, n.RAW].item()
        assert '"_extra_1": "United Kingdom"' in raw
        assert out.input_rows == len(out.events) + len(out.quarantine) == 12
        assert set(out.events[n.ITEM_ID]) <= {r.split(",")[1] for r in samples.OR_ROWS}  # no shifted values
        with pytest.raises(MalformedInputError, match=f"row {row}: 9 fields where the header has 8"):
            OnlineRetailAdapter().read(path, "fail")

    @pytest.mark.parametrize("spoil, problem", [
        (lambda b: b[: len(b) // 2], "cannot read the file"),  # a truncated download
        (lambda b: b"not gzip at all" + b, "cannot read the file"),
    ])
    def test_a_damaged_archive_names_the_file(self, tmp_path, spoil, problem):
        path = samples.online_retail(tmp_path, samples.OR_ROWS * 200)
        path.write_bytes(spoil(path.read_bytes()))
        with pytest.raises(MalformedInputError, match=f"{path.name}: {problem}"):
            OnlineRetailAdapter().read(path, "quarantine")

    def test_a_header_naming_a_column_twice_is_refused(self, tmp_path):
        path = samples.online_retail(tmp_path, samples.OR_ROWS, header=samples.OR_HEADER + ",Country")
        with pytest.raises(MalformedInputError, match="'Country' twice"):
            OnlineRetailAdapter().read(path, "quarantine")

    @staticmethod
    def _spoil(row: int, column: str, value: str, rows: list[str] | None = None) -> list[str]:
        rows = list(samples.OR_ROWS if rows is None else rows)
        fields = rows[row - 1].split(",")
        fields[samples.OR_HEADER.split(",").index(column)] = f'"{value}"' if "," in value else value
        rows[row - 1] = ",".join(fields)
        return rows


@pytest.mark.parametrize("title, category", [
    ("CHRISTMAS CANDLE", "christmas"),  # first matching rule wins
    ("WHITE HANGING HEART T-LIGHT HOLDER", "candles & lighting"),
    ("JUMBO BAG RED RETROSPOT", "bags"),
    ("SET OF 3 CAKE TINS PANTRY DESIGN", "party & baking"),
    ("REGENCY CAKESTAND 3 TIER", "party & baking"),
    ("ASSORTED COLOUR BIRD ORNAMENT", "home decor"),
    ("LUNCH BOX I LOVE LONDON", "kitchen & dining"),
    ("PACK OF 72 RETROSPOT CAKE CASES", "party & baking"),
    ("SPACEBOY LUNCH BOX", "kitchen & dining"),  # a theme word loses to the object
    ("popcorn holder", "party & baking"),  # case-insensitive
    ("PENGUIN", "other"),  # whole words only: no PEN
    ("", "other"),
    (None, "other"),
])
def test_derive_category(title, category):
    assert derive_category(title) == category


# --- RetailRocket ----------------------------------------------------------------------


class TestRetailRocket(AdapterContract):
    alias, required_column = "retailrocket", "visitorid"

    def write(self, tmp_path):
        return samples.retailrocket(tmp_path)

    def write_without(self, tmp_path, column):
        header, rows = drop_column(samples.RR_HEADER, samples.RR_ROWS, column)
        return samples.retailrocket(tmp_path, rows, header=header)

    def test_types_sessions_quarantine(self, output):
        ev = output.events
        assert ev[n.EVENT_TYPE].tolist() == ["view", "add_to_cart", "view", "purchase", "view", "view"]
        assert ev[n.SESSION_ID].tolist() == ["7-1", "7-1", "7-2", "7-1", "8-1", "8-1"]
        assert ev[n.EVENT_ID].iloc[4] == ev[n.EVENT_ID].iloc[5]  # row 7 repeats row 5
        assert output.quarantine[n.SOURCE_ROW].tolist() == [6]
        assert output.quarantine[n.REASON].tolist() == ["unsupported event type 'click'"]
        assert (ev[n.QUANTITY] == 1).all() and ev[n.UNIT_PRICE].isna().all() and not ev[n.IS_GUEST].any()
        assert ev[n.EVENT_TIMESTAMP].iloc[0] == pd.Timestamp(samples.T0, unit="ms", tz=UTC)

    def test_catalog_placeholders(self, output):
        items = output.items.set_index(n.ITEM_ID)
        assert list(items.index) == ["100", "200", "300"]
        assert items.loc["300", n.TITLE] == "item 300" and (items[n.CATEGORY] == "unknown").all()
        assert items[n.PRICE].isna().all()

    def test_bad_timestamp_names_row(self, tmp_path):
        rows = list(samples.RR_ROWS)
        rows[1] = rows[1].replace(str(samples.T0 + 10 * samples.MIN), "2015-06-01")
        with pytest.raises(MalformedInputError, match=r"events\.csv: column 'timestamp', row 2"):
            RetailRocketAdapter().read(samples.retailrocket(tmp_path, rows), "fail")

    @pytest.mark.parametrize("stamp", [str(samples.T0 // 1000),  # seconds, not milliseconds: 1970 otherwise
                                       "9999999999999999",  # past 2262: pandas' clock overflowed
                                       "１４３３１９３１３２０００"])  # full-width digits match \d
    def test_a_timestamp_outside_the_format_is_quarantined_not_misread(self, tmp_path, stamp):
        rows = list(samples.RR_ROWS)
        rows[1] = rows[1].replace(str(samples.T0 + 10 * samples.MIN), stamp)
        out = RetailRocketAdapter().read(samples.retailrocket(tmp_path, rows), "quarantine")
        assert dict(zip(out.quarantine[n.SOURCE_ROW], out.quarantine[n.REASON]))[2] == "malformed timestamp"
        assert out.events[n.EVENT_TIMESTAMP].min() >= pd.Timestamp("2015-01-01", tz=UTC)
        with pytest.raises(MalformedInputError, match="row 2"):
            RetailRocketAdapter().read(samples.retailrocket(tmp_path, rows), "fail")

    def test_sessionize_gap(self):
        t = pd.to_datetime(["2015-01-01 10:00", "2015-01-01 10:31", "2015-01-01 10:00", "2015-01-01 10:20"])
        users = pd.Series(["a", "a", "b", "b"])
        # a: 31 min > 30 -> new session; b: 20 min -> same
        assert sessionize(users, pd.Series(t)).tolist() == ["a-1", "a-2", "b-1", "b-1"]


# --- REES46 ----------------------------------------------------------------------------


class TestRees46(AdapterContract):
    alias, required_column = "rees46", "user_session"

    def write(self, tmp_path):
        return samples.rees46(tmp_path)

    def write_without(self, tmp_path, column):
        header, rows = drop_column(samples.R46_HEADER, samples.R46_ROWS, column)
        return samples.rees46(tmp_path, rows, header=header)

    def test_types_sessions_quarantine(self, output):
        ev = output.events
        assert ev[n.EVENT_TYPE].tolist() == ["view", "add_to_cart", "purchase", "view", "view", "view"]
        assert ev[n.SESSION_ID].tolist() == ["s-a"] * 3 + ["s-b"] * 3
        assert ev[n.UNIT_PRICE].tolist() == [400.0, 410.0, 409.02, 35.79, 543.10, 543.10]
        assert ev[n.EVENT_ID].duplicated().sum() == 1
        assert output.quarantine[n.SOURCE_ROW].tolist() == [4]
        assert output.quarantine[n.REASON].tolist() == ["unsupported event type 'remove_from_cart'"]
        assert ev[n.EVENT_TIMESTAMP].iloc[0] == pd.Timestamp("2019-10-01 00:00", tz=UTC)

    def test_catalog(self, output):
        items = output.items.set_index(n.ITEM_ID)
        assert items.loc["1002098", [n.TITLE, n.CATEGORY, n.PRICE]].tolist() == [
            "samsung electronics.smartphone", "electronics", 409.02]
        assert items.loc["44600062", [n.TITLE, n.CATEGORY]].tolist() == ["shiseido", "cat_2103807459595387724"]
        assert items.loc["17200506", [n.TITLE, n.CATEGORY]].tolist() == ["furniture.living_room.sofa", "furniture"]

    def test_bad_time_quarantined_on_request(self, tmp_path):
        rows = list(samples.R46_ROWS)
        rows[4] = rows[4].replace("2019-10-01 00:04:00 UTC", "01/10/2019")
        path = samples.rees46(tmp_path, rows)
        with pytest.raises(MalformedInputError, match="column 'event_time', row 5"):
            Rees46Adapter().read(path, "fail")
        out = Rees46Adapter().read(path, "quarantine")
        assert sorted(out.quarantine[n.REASON]) == ["malformed event_time", "unsupported event type 'remove_from_cart'"]


# --- canonical -------------------------------------------------------------------------


def canonical_events() -> pd.DataFrame:
    ts = pd.Timestamp("2011-01-01 10:00", tz=UTC)
    return pd.DataFrame({
        n.EVENT_ID: ["e1", "e2", "e3", "e4"], n.USER_ID: ["u1", None, "u1", "u2"], n.ITEM_ID: ["A", "B", "A", "C"],
        n.SESSION_ID: ["s1", "s2", "s3", "s4"], n.EVENT_TYPE: ["purchase", "view", "wishlist", "add_to_cart"],
        n.EVENT_TIMESTAMP: [ts, ts, ts, ts + pd.Timedelta(hours=1)], n.QUANTITY: [1, 1, 1, 2],
        n.UNIT_PRICE: [2.0, np.nan, 2.0, 3.0], n.DEVICE: ["web", None, None, "app"], n.COUNTRY: ["UK"] * 4,
        n.SOURCE: ["shop"] * 4, n.IS_GUEST: [False, True, False, False],
    })


class TestCanonical(AdapterContract):
    alias, required_column = "canonical", n.DEVICE

    def write(self, tmp_path):
        path = tmp_path / "events.parquet"
        canonical_events().to_parquet(path, index=False)
        return path

    def write_without(self, tmp_path, column):
        path = tmp_path / "events.parquet"
        canonical_events().drop(columns=[column]).to_parquet(path, index=False)
        return path

    def test_unknown_event_type_quarantined(self, output):
        assert output.quarantine[n.REASON].tolist() == ["unsupported event type 'wishlist'"]
        assert output.events[n.EVENT_ID].tolist() == ["e1", "e2", "e4"]

    def test_items_file_beside_is_used(self, tmp_path):
        path = self.write(tmp_path)
        items = pd.DataFrame({n.ITEM_ID: ["A", "Z"], n.TITLE: ["Apple", "New thing"], n.CATEGORY: ["fruit", "new"],
                              n.PRICE: [2.0, 9.0], n.IN_STOCK: [True, True], n.MARGIN: [0.3, 0.5],
                              n.FIRST_SEEN: [None, pd.Timestamp("2011-02-01", tz=UTC)]})
        items.to_parquet(tmp_path / "items.parquet", index=False)
        got = CanonicalAdapter().read(path, "fail").items.set_index(n.ITEM_ID)
        assert got.loc["A", n.TITLE] == "Apple" and "Z" in got.index  # an item without events is kept
        assert got.loc["A", n.FIRST_SEEN] == pd.Timestamp("2011-01-01 10:00", tz=UTC)  # filled from events

    def test_csv_with_bad_quantity(self, tmp_path):
        df = canonical_events()
        df[n.QUANTITY] = df[n.QUANTITY].astype(str)
        df.loc[1, n.QUANTITY] = "two"
        path = tmp_path / "events.csv"
        df.to_csv(path, index=False)
        with pytest.raises(MalformedInputError, match="events.csv: column 'quantity', row 2: cannot parse value 'two'"):
            CanonicalAdapter().read(path, "fail")
        out = CanonicalAdapter().read(path, "quarantine")
        assert dict(zip(out.quarantine[n.SOURCE_ROW], out.quarantine[n.REASON])) == {
            2: "malformed quantity", 3: "unsupported event type 'wishlist'"}


    @pytest.mark.parametrize("column, value", [(n.QUANTITY, "1e30"), (n.UNIT_PRICE, "-1.0")])
    def test_a_quantity_past_int64_or_a_negative_price_is_malformed(self, tmp_path, column, value):
        """1e30 used to wrap to int64's minimum; a negative price was accepted."""
        df = canonical_events().astype({column: str})
        df.loc[1, column] = value
        path = tmp_path / "events.csv"
        df.to_csv(path, index=False)
        out = CanonicalAdapter().read(path, "quarantine")
        assert dict(zip(out.quarantine[n.SOURCE_ROW], out.quarantine[n.REASON]))[2] == f"malformed {column}"
        with pytest.raises(MalformedInputError, match=f"column '{column}', row 2"):
            CanonicalAdapter().read(path, "fail")

    def test_item_ids_of_the_items_file_are_read_as_the_events_are(self, tmp_path):
        """" A " in items.parquet and "A" in the events are one item (it used to be two, the event's with a
        placeholder title); ids that collide once stripped are refused."""
        path = self.write(tmp_path)
        items = pd.DataFrame({n.ITEM_ID: [" A ", "Z"], n.TITLE: ["Apple", "New"], n.CATEGORY: ["fruit", "new"],
                              n.PRICE: [2.0, 9.0], n.IN_STOCK: [True, True], n.MARGIN: [0.3, 0.5],
                              n.FIRST_SEEN: [None, None]})
        items.to_parquet(tmp_path / "items.parquet", index=False)
        got = CanonicalAdapter().read(path, "fail").items.set_index(n.ITEM_ID)
        assert got.loc["A", n.TITLE] == "Apple" and " A " not in got.index
        items.assign(**{n.ITEM_ID: [" Z", "Z"]}).to_parquet(tmp_path / "items.parquet", index=False)
        with pytest.raises(MalformedInputError, match="repeated item ids"):
            CanonicalAdapter().read(path, "fail")


def test_get_adapter_errors():
    with pytest.raises(ValueError, match="unknown adapter"):
        get_adapter("magento")
    with pytest.raises(ValueError, match="cannot import"):
        get_adapter("pipelines.adapters.nothing.Here")
    with pytest.raises(TypeError, match="not a subclass of Adapter"):
        get_adapter("pipelines.schema.conform_events")
    assert isinstance(get_adapter("pipelines.adapters.retailrocket.RetailRocketAdapter"), RetailRocketAdapter)


def test_unknown_on_malformed_mode(tmp_path):
    with pytest.raises(ValueError, match="on_malformed"):
        OnlineRetailAdapter().read(samples.online_retail(tmp_path), "ignore")
