"""Column and object names shared by every layer (STYLE.md section 7).

Where it sits: the bottom of the data flow. The canonical event log and item
catalog written by ingest, the feature tables, the Feast definitions, the
training set, the models' inputs and the serving responses all use these
names, so a rename happens here once.
"""

# --- canonical event log (pipelines/ingest writes it) ---
EVENT_ID = "event_id"
USER_ID = "user_id"
ITEM_ID = "item_id"
SESSION_ID = "session_id"
EVENT_TYPE = "event_type"
EVENT_TIMESTAMP = "event_timestamp"
QUANTITY = "quantity"
UNIT_PRICE = "unit_price"
DEVICE = "device"
COUNTRY = "country"
SOURCE = "source"
IS_GUEST = "is_guest"

EVENT_COLUMNS = (
    EVENT_ID, USER_ID, ITEM_ID, SESSION_ID, EVENT_TYPE, EVENT_TIMESTAMP,
    QUANTITY, UNIT_PRICE, DEVICE, COUNTRY, SOURCE, IS_GUEST,
)

# event types
VIEW, CLICK, ADD_TO_CART, PURCHASE, RETURN = "view", "click", "add_to_cart", "purchase", "return"
EVENT_TYPES = (VIEW, CLICK, ADD_TO_CART, PURCHASE, RETURN)

# --- canonical item catalog ---
TITLE = "title"
CATEGORY = "category"
PRICE = "price"
IN_STOCK = "in_stock"
MARGIN = "margin"
FIRST_SEEN = "first_seen"

ITEM_COLUMNS = (ITEM_ID, TITLE, CATEGORY, PRICE, IN_STOCK, MARGIN, FIRST_SEEN)

# --- quarantine (rows that could not be ingested, with the reason) ---
SOURCE_FILE = "source_file"
SOURCE_ROW = "source_row"
REASON = "reason"
RAW = "raw"

QUARANTINE_COLUMNS = (SOURCE_FILE, SOURCE_ROW, REASON, RAW)

# --- feature tables ---
CREATED_TIMESTAMP = "created_timestamp"

USER_PURCHASE_COUNT = "user_purchase_count"
USER_ORDER_COUNT = "user_order_count"
USER_REVENUE = "user_revenue"
USER_AVG_ORDER_VALUE = "user_avg_order_value"
USER_DISTINCT_ITEMS = "user_distinct_items"
USER_DAYS_ACTIVE = "user_days_active"
USER_FEATURES = (
    USER_PURCHASE_COUNT, USER_ORDER_COUNT, USER_REVENUE,
    USER_AVG_ORDER_VALUE, USER_DISTINCT_ITEMS, USER_DAYS_ACTIVE,
)

ITEM_PURCHASE_COUNT = "item_purchase_count"
ITEM_BUYER_COUNT = "item_buyer_count"
ITEM_REVENUE = "item_revenue"
ITEM_FEATURES = (ITEM_PURCHASE_COUNT, ITEM_BUYER_COUNT, ITEM_REVENUE)

# --- training set ---
WEIGHT = "weight"

# --- Feast object names ---
USER_ENTITY = "user"
ITEM_ENTITY = "item"
USER_STATS_VIEW = "user_purchase_stats"
ITEM_STATS_VIEW = "item_purchase_stats"
RETRIEVAL_QUERY_SERVICE = "retrieval_query_v1"
RETRIEVAL_CANDIDATE_SERVICE = "retrieval_candidate_v1"
