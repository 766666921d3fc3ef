"""Small raw files in each adapter's format, written by the tests (the real
RetailRocket and REES46 data may not be shipped), with their expected counts."""
from __future__ import annotations

import gzip
from pathlib import Path

REAL_ONLINE_RETAIL = (Path(__file__).resolve().parents[2]
                      / "data/online_retail/online_retail_2010-12-01_2011-09-30.csv.gz")

OR_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"
# 12 data rows; the comment gives each row's fate.
OR_ROWS = [
    "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom",  # 1 purchase
    "536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850.0,United Kingdom",  # 2 purchase
    "536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850.0,United Kingdom",  # 3 duplicate of 2
    "536366,POST,POSTAGE,1,2010-12-01 08:28:00,18.00,12583.0,France",  # 4 quarantined: non-product code
    "C536379,85123A,WHITE HANGING HEART T-LIGHT HOLDER,-2,2010-12-01 09:41:00,2.55,17850.0,United Kingdom",  # 5 return
    "536380,21137,damaged,-5,2010-12-01 09:45:00,0,,United Kingdom",  # 6 quarantined: stock adjustment (first rule)
    "536381,22139,RETROSPOT TEA SET CERAMIC 11 PC,3,2010-12-01 10:00:00,0.0,,United Kingdom",  # 7 quarantined: price 0
    "536382,22633,HAND WARMER UNION JACK,12,2010-12-01 10:10:00,2.10,,United Kingdom",  # 8 guest purchase
    "536383,85123a,WHITE HANGING HEART T-LIGHT HOLDER,4,2010-12-01 10:20:00,2.95,13047.0,United Kingdom",  # 9 -> 85123A
    "536384,DCGSSGIRL,GIRLS PARTY BAG,1,2011-06-01 12:00:00,3.29,13047.0,United Kingdom",  # 10 purchase (BST)
    "536385,gift_0001_20,Dotcomgiftshop Gift Voucher £20.00,1,2010-12-01 10:40:00,17.02,,United Kingdom",  # 11 voucher
    "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom",  # 12 dup of 1
]
# quarantined: rows 4, 6, 7, 11 -> 4; duplicates: rows 3 and 12 -> 2; accepted: 12 - 4 - 2 = 6
# (purchases 1, 2, 8, 9, 10 -> 5; return 5 -> 1); guest purchases: row 8 -> 1;
# items: 85123A (rows 1, 5, 9), 71053, 22633, DCGSSGIRL -> 4.
OR_EXPECTED = {"input_rows": 12, "accepted": 6, "duplicate": 2, "quarantined": 4,
               "accepted_by_event_type": {"purchase": 5, "return": 1}, "guest_purchases": 1}
OR_REASONS = {
    4: "non-product code POST (POSTAGE)",
    6: "stock adjustment: negative quantity outside a cancellation",
    7: "non-positive unit price",
    11: "non-product code GIFT_0001_20 (Dotcomgiftshop Gift Voucher £20.00)",
}


def write_text(path: Path, header: str, rows: list[str]) -> Path:
    """Write a CSV (gzip-compressed when the name ends in .gz)."""
    text = "\n".join([header, *rows]) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def online_retail(tmp_path: Path, rows: list[str] | None = None, name: str = "retail.csv.gz",
                  header: str = OR_HEADER) -> Path:
    return write_text(tmp_path / name, header, OR_ROWS if rows is None else rows)


RR_HEADER = "timestamp,visitorid,event,itemid,transactionid,datetime"
T0 = 1433193132000  # 2015-06-01 21:12:12 UTC
MIN = 60_000
RR_ROWS = [
    f"{T0},7,view,100,,x",                     # 1 visitor 7: session 7-1
    f"{T0 + 10 * MIN},7,addtocart,100,,x",     # 2 10 min later: 7-1
    f"{T0 + 75 * MIN},7,view,300,,x",          # 3 35 min after row 4: 7-2 (rows are not in time order)
    f"{T0 + 40 * MIN},7,transaction,100,55,x",  # 4 exactly 30 min after row 2: still 7-1 (a gap must exceed 30)
    f"{T0 + 5 * MIN},8,view,200,,x",           # 5 visitor 8: 8-1
    f"{T0 + 6 * MIN},8,click,200,,x",          # 6 quarantined: unsupported event type
    f"{T0 + 5 * MIN},8,view,200,,y",           # 7 duplicate of 5 (the sampler's datetime column is ignored)
]
# 7 rows = 6 events (row 7 a duplicate of 5) + 1 quarantined (row 6); accepted 5: view 3 (1, 3, 5),
# add_to_cart 1, purchase 1; sessions 7-1 (rows 1, 2, 4), 7-2 (row 3), 8-1 (rows 5, 7); items 100, 200, 300.


def retailrocket(tmp_path: Path, rows: list[str] | None = None, header: str = RR_HEADER) -> Path:
    return write_text(tmp_path / "events.csv", header, RR_ROWS if rows is None else rows)


R46_HEADER = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
R46_ROWS = [
    "2019-10-01 00:00:00 UTC,view,1002098,2053013555631882655,electronics.smartphone,samsung,400.00,1,s-a",  # 1
    "2019-10-01 00:01:00 UTC,cart,1002098,2053013555631882655,electronics.smartphone,samsung,410.00,1,s-a",  # 2
    "2019-10-01 00:02:00 UTC,purchase,1002098,2053013555631882655,electronics.smartphone,samsung,409.02,1,s-a",  # 3
    "2019-10-01 00:03:00 UTC,remove_from_cart,1002098,2053013555631882655,electronics.smartphone,samsung,999,1,s-a",
    "2019-10-01 00:04:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,2,s-b",  # 5 no category code
    "2019-10-01 00:05:00 UTC,view,17200506,2053013559792632471,furniture.living_room.sofa,,543.10,2,s-b",  # 6
    "2019-10-01 00:05:00 UTC,view,17200506,2053013559792632471,furniture.living_room.sofa,,543.10,2,s-b",  # 7 dup
]
# 7 rows = 6 events (row 7 a duplicate of 6) + 1 quarantined (row 4, remove_from_cart); accepted 5:
# view 3 (rows 1, 5, 6), add_to_cart 1, purchase 1; items 1002098 (latest accepted price 409.02: row 4 is
# quarantined), 44600062 (no category code -> cat_<id>), 17200506 (no brand).


def rees46(tmp_path: Path, rows: list[str] | None = None, header: str = R46_HEADER) -> Path:
    return write_text(tmp_path / "2019-Oct.csv.gz", header, R46_ROWS if rows is None else rows)
