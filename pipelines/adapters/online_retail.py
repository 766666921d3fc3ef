"""Adapter for the UCI "Online Retail" invoice-line CSV(.gz).

Where it sits: ``data/online_retail/*.csv.gz`` -> **this adapter** ->
canonical purchase / return events + item catalog -> ``pipelines/ingest.py``
-> feature tables -> training sets.

Columns: InvoiceNo, StockCode, Description, Quantity, InvoiceDate (UK local
time), UnitPrice (GBP), CustomerID (``17850.0``; empty for guests), Country.
Every value is read as the exact string in the file, then each row is triaged
in this order (the first rule that fires is the quarantine reason):

1. a value that cannot be parsed (empty InvoiceNo/StockCode, non-integer
   Quantity, unparseable InvoiceDate, non-numeric UnitPrice) -> raise
   :class:`MalformedInputError` or quarantine ``"malformed <Column>"``;
2. a non-product code (postage, manual adjustments, fees, discounts, samples,
   bad debt, gift vouchers; see :data:`NON_PRODUCT_CODES`) ->
   ``"non-product code <CODE> (<description>)"``. ``DCGS*`` codes are real
   products sold through the dotcom shop and are kept;
3. an invoice prefix other than digits or ``C`` (``A`` = bad-debt adjustment);
4. quantity 0; a negative quantity outside a ``C`` (cancellation) invoice,
   i.e. a stock adjustment ("damaged", "?", ...); a positive quantity on a
   cancellation;
5. a unit price <= 0.

Rows that pass become ``purchase`` events, or ``return`` events with
``quantity = abs(Quantity)`` for ``C`` invoices. Stock codes are upper-cased
(``85123a`` and ``85123A`` are the same product). A row without CustomerID
is a guest checkout: ``user_id`` null, ``is_guest`` true, kept.
Timestamps are localised to Europe/London (the non-existent spring-forward
hour shifted forward, the repeated autumn hour read as summer time) and
converted to UTC.

Catalog: one row per accepted item (exact duplicate rows counted once).
``title`` is the most frequent non-empty Description (ties: alphabetically
first; ``"item <code>"`` if it never had one), ``price`` the median unit price
of its purchases (of its returns if it was never bought), ``first_seen`` its
first event, ``in_stock`` unknown, ``margin`` NaN.

Categories (the file has none) come from the title, by :func:`derive_category`:
:data:`CATEGORY_RULES` is an ordered list of ``(category, keywords)``; a
keyword matches a whole word or phrase of the upper-cased title, optionally
followed by a plural ``S``/``ES`` (``CANDLE`` matches "CANDLES", not
"CANDLEHOLDER"); the first rule with a matching keyword wins, otherwise
``"other"``. A category may have several rules so that its precise words
win early and its vague words only late. The order resolves overlaps:
seasonal themes (a "CHRISTMAS CANDLE" is christmas), then candles, party
and baking, jewellery, unmistakable toys, decor objects whatever their motif
(a "KITCHEN METAL SIGN"), bags, kitchen, stationery, garden, storage, broad
decor words (HEART, HANGING, ...) and last the kids' design themes
(SPACEBOY, DOLLY GIRL: a "SPACEBOY LUNCH BOX" is kitchen). The keywords were
read off the titles of the shipped 2010-12..2011-09 file: about 2% of its
items end as "other".
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from feature_repo import names as n
from pipelines.adapters.base import Adapter, AdapterOutput, Triage, blank_to_null, event_ids, read_csv_strings
from pipelines.schema import conform_events, conform_items

COLUMNS = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country")

#: stock codes that are not products (checked on the upper-cased code)
NON_PRODUCT_CODES = frozenset({
    "POST",          # postage
    "DOT",           # dotcom postage
    "M",             # manual adjustment
    "C2",            # carriage
    "D",             # discount
    "S",             # samples
    "AMAZONFEE",     # marketplace fee
    "BANK CHARGES",  # bank charges
    "CRUK",          # charity commission
    "PADS",          # "PADS TO MATCH ALL CUSHIONS", sold at 0.001 to fix invoices
    "B",             # "Adjust bad debt"
    "22016",         # "Dotcomgiftshop Gift Voucher £100.00"
    "23444",         # "Next Day Carriage"
    "23574",         # "PACKING CHARGE"
})
NON_PRODUCT_PREFIXES = ("GIFT_0001_",)  # gift vouchers

#: accepted InvoiceDate formats: ISO (the shipped file) and the UCI spreadsheet export
DATE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%m/%d/%Y %H:%M")

CATEGORY_RULES: list[tuple[str, list[str]]] = [
    # seasonal themes first: a "CHRISTMAS CANDLE" is christmas
    ("christmas", ["CHRISTMAS", "XMAS", "ADVENT", "SANTA", "REINDEER", "SNOWFLAKE", "SNOWMAN", "NOEL", "NATIVITY",
                   "ANGEL", "BAUBLE", "STAR TREE", "STOCKING", "TINSEL", "MISTLETOE", "SLEIGH", "ROBIN"]),
    ("easter", ["EASTER", "BUNNY", "BUNNIES", "CHICK", "EGG HUNT"]),
    ("candles & lighting", ["CANDLE", "CANDLEHOLDER", "CANDLESTICK", "T-LIGHT", "TLIGHT", "TEALIGHT", "LANTERN",
                            "NIGHT LIGHT", "TABLE LIGHT", "LIGHT CHAIN", "LIGHT GARLAND", "LIGHTS", "LAMP",
                            "LAMPSHADE", "LED", "INCENSE", "CANDLEPOT", "NIGHTLIGHT", "LIGHTBULB", "OIL BURNER",
                            "CHANDELIER", "DISCO BALL", "TORCH"]),
    ("party & baking", ["PARTY", "CAKE", "CAKES", "BAKING", "BUNTING", "NAPKIN", "CUPCAKE", "CAKESTAND", "BIRTHDAY",
                        "PAPER CHAIN", "BALLOON", "PICNIC", "COOKIE CUTTER", "ICING", "MOULD", "BAKE", "PANCAKE",
                        "HONEYCOMB", "INVITES", "CONFETTI", "CRACKER", "SWEETIE", "POPCORN", "WEDDING",
                        "CHRISTENING", "DOILY", "DOILIES", "DOILEY", "PARASOLS"]),
    ("jewellery & accessories", ["NECKLACE", "NECKL", "BRACELET", "EARRINGS", "EARRING", "RING", "HAIR", "UMBRELLA",
                                 "BROOCH", "BANGLE", "DIAMANTE", "JEWELLERY", "JEWEL", "SCARF", "HAT", "GLOVES",
                                 "SLIPPER", "KEYRING", "KEY RING", "KEY FOB", "PENDANT", "HAIRCLIP", "HAIRBAND",
                                 "HAIR SLIDES", "HAIR COMB", "SUNGLASSES", "CHOKER", "LIPSTICK", "SOCKS", "SOCK",
                                 "LARIAT", "PHONE CHARM", "BAG CHARM", "HAND WARMER", "BADGE", "BADGES", "TIARA",
                                 "MITTENS", "PONCHO", "RAIN MAC", "SHOES", "COMPACT", "MAKE UP", "COSMETIC",
                                 "MANICURE", "NAIL", "BRACLET", "HEADPHONES", "EAR MUFF", "LIP GLOSS", "SHOWER CAP",
                                 "SOMBRERO", "TATTOOS", "PATCHES", "PURSE MIRROR", "JEWEL STAND", "DOG COLLAR"]),
    ("toys & kids", ["SOFT TOY", "DOLL", "SKITTLES", "JIGSAW", "GAME", "PUPPET", "TEDDY", "DOMINOES", "MARBLES",
                     "SPINNING TOP", "YOYO", "YO-YO", "KITE", "HELICOPTER", "FLYING DISC", "SKIPPING ROPE",
                     "BUBBLES", "PLAYHOUSE", "MAGIC DRAWING SLATE", "PAINT SET", "COLOURING SET", "STENCIL",
                     "RATTLE", "TOY", "BLOCKS", "WORD BLOCKS", "PLAYING CARDS", "STRESS BALL", "GLIDER", "ROUNDERS",
                     "BINGO", "SNAKES", "LADDERS", "TRAIN", "SOLDIER", "SPINNER", "WHISTLE", "FARM ANIMAL",
                     "ROCKING HORSE", "INFLATABLE", "CATAPULT", "PEA SHOOTER", "SWORD", "NINJA", "TEA SET"]),
    # objects that are decor whatever their motif: a "KITCHEN METAL SIGN", a "TEA TIME CLOCK"
    ("home decor", ["SIGN", "METAL SIGN", "DOOR SIGN", "CLOCK", "DOORMAT", "DOORSTOP", "CUSHION", "CUSHION COVER",
                    "PHOTO FRAME", "PICTURE FRAME", "FRAME", "MIRROR", "CURTAIN", "THROW", "HOT WATER BOTTLE",
                    "WALL ART", "PRINT", "WREATH"]),
    ("bags", ["BAG", "PURSE", "SHOPPER", "TOTE", "HANDBAG", "RUCKSACK", "BACKPACK", "WALLET", "LUGGAGE TAG",
              "PASSPORT COVER", "SATCHEL", "WASHBAG", "SACK", "HOLDALL", "SPONGE BAG", "POUCH"]),
    ("kitchen & dining", ["MUG", "CUP", "PLATE", "BOWL", "TEA", "JUG", "GLASS", "BOTTLE", "LUNCH BOX", "CUTLERY",
                          "TRAY", "SAUCER", "TEACUP", "TEAPOT", "COFFEE", "COASTER", "PLACEMAT", "SPOON", "FORK",
                          "KNIFE", "DISH", "EGG CUP", "TUMBLER", "BEAKER", "CANISTER", "KITCHEN", "CHOPSTICKS",
                          "TOAST", "SUGAR", "MILK", "FOOD COVER", "FOOD CONTAINER", "LUNCHBOX", "STRAWS", "SCALES",
                          "JAM", "PANTRY", "COOK", "GRINDER", "COLANDER", "FLASK", "PAN", "DRINKS", "POT HOLDER",
                          "TABLECLOTH", "WINE", "LOLLY", "TEA TOWEL", "APRON", "OVEN GLOVE", "OVEN MITT", "PLATTER",
                          "GOBLET", "CHALICE", "EGG COSY", "EGG WARMER", "EGG", "BISCUIT", "BISCUITS", "RECIPE",
                          "CHOPPING BOARD", "BREAD", "BUTTER", "CHEESE", "SALT", "PEPPER", "CRUET", "TRIVET",
                          "NAPKINS", "SNACK", "CAKE TIN", "TIFFIN", "SUNDAE", "MILKSHAKE", "APERITIF", "DRINKING",
                          "CORER", "WHISK", "TOASTRACK", "PLACE SETTING", "ROLLING PIN", "LADLE", "SIEVE"]),
    ("stationery & wrap", ["CARD", "WRAP", "PAPER", "NOTEBOOK", "NOTE BOOK", "PEN", "PENCIL", "STICKER", "ENVELOPE",
                           "RIBBON", "GIFT TAG", "TAG", "NOTE", "NOTEPAD", "DIARY", "CALENDAR", "JOURNAL", "ERASER",
                           "RUBBER", "RULER", "STAMP", "CRAYON", "CHALK", "CHALKBOARD", "TISSUE", "TISSUES", "BOOK",
                           "SKETCHBOOK", "PHOTO ALBUM", "ALBUM", "GIFTWRAP", "SCRAP", "PAD", "MEMO", "LETTER",
                           "WRAPPING", "BOOKMARK", "MAGNET", "MAGNETIC", "PAPERWEIGHT", "SHARPENER", "TAPE",
                           "TAPES", "CLIP", "CLIPS", "SCISSOR", "SCISSORS", "WRITING SET", "CANVAS", "CRAFT",
                           "SEWING", "KNITTING", "PIN CUSHION", "THREAD", "BUTTONS", "POSTCARD", "PICTURE BOOK",
                           "ORIGAMI", "GLUE", "NOTELETS", "HOLE PUNCH", "CALCULATOR", "P'WEIGHT", "STATIONERY",
                           "PAINT", "FELTCRAFT"]),
    ("garden", ["GARDEN", "PLANT", "PLANTER", "WATERING", "FLOWER POT", "SEED", "SEEDS", "HERB", "HERBS", "TROWEL",
                "SPADE", "GNOME", "BIRDHOUSE", "BIRD HOUSE", "BIRD FEEDER", "FEEDER", "BIRD TABLE", "WINDMILL",
                "GREENHOUSE", "PARASOL", "OUTDOOR", "NEST BOX", "HEN HOUSE", "WELLIES", "SWING", "HAMMOCK",
                "POTTING SHED", "TWINE", "THERMOMETER", "WHEELBARROW", "PLANT POT", "POTS", "GARDENERS",
                "BIRD BATH", "DOVECOTE"]),
    ("storage", ["BOX", "TIN", "BASKET", "JAR", "STORAGE", "DRAWER", "CHEST", "CRATE", "HAMPER", "TRUNK", "CADDY",
                 "HOLDER", "CASE", "CASES", "ORGANISER", "RACK", "BUCKET", "BIN", "TUB", "POT", "CABINET", "SHELF",
                 "SHELVES", "TRINKET", "CONTAINER", "PEG", "PEGS", "TIDY", "LOCKER", "SHOE RACK", "WICKER"]),
    ("home decor", ["PHOTOFRAME", "DECORATION", "HEART", "HANGING", "VASE", "COAT HANGER", "HANGER", "GARLAND",
                    "ORNAMENT", "PHOTO", "PICTURE", "WALL", "DOOR", "CHIME", "WINDCHIME", "BELL", "BLANKET",
                    "QUILT", "PLAQUE", "FLAG", "DECORATIVE", "FEATHER", "BIRDCAGE", "MOBILE", "DOOR STOP", "ROSE",
                    "FLOWER", "FLOWERS", "HOME", "LOVE", "HOOK", "KNOB", "BATH", "SOAP", "TOWEL", "FRIDGE",
                    "LAUNDRY", "FAN", "BUTTERFLY", "DOVE", "BIRD", "GLOBE", "CHARM", "STAND", "NUMBER TILE", "TILE",
                    "MAT", "FLYING DUCKS", "POUFFE", "TOADSTOOL", "ASHTRAY", "SHELL", "FLANNEL", "CHAIR", "STOOL",
                    "TABLE", "SCULPTURE", "FIGURE", "BUST", "ORB", "WOODEN STAR", "HEARTS", "LIPS", "KEY",
                    "WREATHS", "MATCHES", "SPOTTY", "DOORSIGN", "ARTIFICIAL", "BLOSSOM", "LETTERS", "ALPHABET",
                    "SPHERE", "OWL", "CAT", "DOG", "BEE", "DAISY", "DRESSING TABLE", "SPRAY", "SCENT", "FRAGRANCE",
                    "POTPOURRI", "BATHROOM", "BEDROOM", "PICNIC BLANKET"]),
    # broad kids' words last: a "SPACEBOY LUNCH BOX" is kitchen, a "CHILDRENS APRON" kitchen
    ("toys & kids", ["CHILDREN", "CHILDRENS", "CHILDS", "KIDS", "BABY", "CIRCUS", "DINOSAUR", "ROBOT", "PIRATE",
                     "MONSTER", "MONSTERS", "SPACEBOY", "DOLLY GIRL", "WOODEN", "SPACE", "TOOL SET", "TOOLS",
                     "CREEPY CRAWLIE"]),
]


@lru_cache(maxsize=None)
def _category_patterns() -> tuple[tuple[str, re.Pattern], ...]:
    out = []
    for category, keywords in CATEGORY_RULES:
        alts = "|".join(re.escape(k) for k in sorted(keywords, key=len, reverse=True))
        out.append((category, re.compile(rf"(?<![A-Z0-9])(?:{alts})(?:S|ES)?(?![A-Z0-9])")))
    return tuple(out)


def derive_category(title: str | None) -> str:
    """The category of a product title by the first matching rule of :data:`CATEGORY_RULES`.

    Args:
        title: product text (any case); None or empty gives ``"other"``.

    Returns:
        A category name, or ``"other"`` when no keyword matches.
    """
    if not isinstance(title, str) or not title.strip():
        return "other"
    text = " ".join(title.upper().split())
    for category, pattern in _category_patterns():
        if pattern.search(text):
            return category
    return "other"


def _parse_dates(values: pd.Series) -> pd.Series:
    ts = pd.to_datetime(values, format=DATE_FORMATS[0], errors="coerce")
    for fmt in DATE_FORMATS[1:]:
        missing = ts.isna()
        if missing.any():
            ts[missing] = pd.to_datetime(values[missing], format=fmt, errors="coerce")
    return ts


class OnlineRetailAdapter(Adapter):
    """UCI Online Retail invoice lines -> purchase / return events (see the module docstring)."""

    name = "online_retail"

    def read(self, path: Path, on_malformed: str) -> AdapterOutput:
        """Read one Online Retail CSV(.gz).

        Args:
            path: the file.
            on_malformed: ``"fail"`` or ``"quarantine"``.

        Returns:
            Events, catalog, quarantine and the input row count.

        Raises:
            MalformedInputError: a column is missing, or (``"fail"``) a value cannot be parsed.
        """
        raw = read_csv_strings(path, COLUMNS)
        tri = Triage(raw, path, on_malformed)
        invoice = raw["InvoiceNo"].str.strip()
        code = raw["StockCode"].str.strip().str.upper()
        desc = raw["Description"].str.strip()
        qty_text = raw["Quantity"].str.strip()
        qty_ok = qty_text.str.fullmatch(r"[+-]?[0-9]{1,15}")  # ASCII digits: \d also takes other scripts
        qty = pd.to_numeric(qty_text.where(qty_ok, "0")).astype("int64")
        ts = _parse_dates(raw["InvoiceDate"].str.strip())
        price = pd.to_numeric(raw["UnitPrice"].str.strip(), errors="coerce")

        tri.malformed("InvoiceNo", invoice.eq(""))
        tri.malformed("StockCode", code.eq(""))
        tri.malformed("Quantity", ~qty_ok)
        tri.malformed("InvoiceDate", ts.isna())
        tri.malformed("UnitPrice", ~np.isfinite(price))
        tri.raise_if_failing()

        non_product = code.isin(NON_PRODUCT_CODES) | code.str.startswith(NON_PRODUCT_PREFIXES)
        tri.flag(non_product, "non-product code " + code + " (" + desc.where(desc.ne(""), "no description") + ")")
        cancel = invoice.str.startswith("C")
        prefix = invoice.str[:1]
        tri.flag(~(prefix.str.isdigit() | cancel), "invoice prefix " + prefix + " (not a sale or cancellation)")
        tri.flag(qty.eq(0), "zero quantity")
        tri.flag(qty.lt(0) & ~cancel, "stock adjustment: negative quantity outside a cancellation")
        tri.flag(qty.gt(0) & cancel, "positive quantity on a cancellation invoice")
        tri.flag(price.le(0), "non-positive unit price")

        ok = tri.ok
        customer = raw["CustomerID"].str.strip().str.removesuffix(".0")  # written as a float: 17850.0
        utc = (ts[ok].dt.tz_localize("Europe/London", nonexistent="shift_forward", ambiguous=True)
               .dt.tz_convert("UTC"))
        events = conform_events(pd.DataFrame({
            n.EVENT_ID: event_ids(raw[ok], COLUMNS, self.name),
            n.USER_ID: blank_to_null(customer[ok]),
            n.ITEM_ID: code[ok],
            n.SESSION_ID: invoice[ok],
            n.EVENT_TYPE: np.where(cancel[ok], n.RETURN, n.PURCHASE),
            n.EVENT_TIMESTAMP: utc,
            n.QUANTITY: qty[ok].abs(),
            n.UNIT_PRICE: price[ok],
            n.DEVICE: None,
            n.COUNTRY: blank_to_null(raw["Country"].str.strip()[ok]),
            n.SOURCE: self.name,
            n.IS_GUEST: customer[ok].eq(""),
        }))
        items = _catalog(events, desc[ok].to_numpy())
        return AdapterOutput(events, items, tri.quarantine(), len(raw))


def _catalog(events: pd.DataFrame, descriptions: np.ndarray) -> pd.DataFrame:
    df = events[[n.EVENT_ID, n.ITEM_ID, n.EVENT_TYPE, n.UNIT_PRICE, n.EVENT_TIMESTAMP]].assign(desc=descriptions)
    df = df.drop_duplicates(n.EVENT_ID)  # an exact duplicate row must not weigh twice
    titles = (df[df["desc"] != ""].groupby([n.ITEM_ID, "desc"]).size().rename("count").reset_index()
              .sort_values([n.ITEM_ID, "count", "desc"], ascending=[True, False, True])
              .drop_duplicates(n.ITEM_ID).set_index(n.ITEM_ID)["desc"])
    bought = df[df[n.EVENT_TYPE] == n.PURCHASE].groupby(n.ITEM_ID)[n.UNIT_PRICE].median()
    returned = df[df[n.EVENT_TYPE] == n.RETURN].groupby(n.ITEM_ID)[n.UNIT_PRICE].median()
    items = df.groupby(n.ITEM_ID)[n.EVENT_TIMESTAMP].min().rename(n.FIRST_SEEN).reset_index()
    described = items[n.ITEM_ID].map(titles)
    items[n.CATEGORY] = [derive_category(t) for t in described]
    items[n.TITLE] = described.fillna("item " + items[n.ITEM_ID])
    items[n.PRICE] = items[n.ITEM_ID].map(bought).fillna(items[n.ITEM_ID].map(returned))
    items[n.IN_STOCK] = pd.NA
    items[n.MARGIN] = np.nan
    return conform_items(items)
