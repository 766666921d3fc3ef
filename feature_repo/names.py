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
ITEM_REPEAT_RATE = "item_repeat_rate"  # smoothed share of the item's customers who bought it on 2+ days
ITEM_FEATURES = (ITEM_PURCHASE_COUNT, ITEM_BUYER_COUNT, ITEM_REVENUE, ITEM_REPEAT_RATE)

# --- training set ---
WEIGHT = "weight"
LABEL = "label"            # 1 for a labelled event, 0 for a sampled negative
NEGATIVE = "negative"      # event_type of a sampled negative row

# --- Feast object names ---
USER_ENTITY = "user"
ITEM_ENTITY = "item"
USER_STATS_VIEW = "user_purchase_stats"
ITEM_STATS_VIEW = "item_purchase_stats"
RETRIEVAL_QUERY_SERVICE = "retrieval_query_v1"
RETRIEVAL_CANDIDATE_SERVICE = "retrieval_candidate_v1"

# --- feature tables added by the full feature layer (issue 4) ---
SESSION_ENTITY = "session"
CATEGORY_ENTITY = "category"
CATEGORY_KEY = "category_key"  # join key of the category entity (item_content already has a `category` feature)
WINDOWS_USER = (7, 30, 90)
WINDOWS_ITEM = (7, 30)

USER_VIEWS = "user_views"
USER_CARTS = "user_carts"
USER_VIEW_TO_PURCHASE = "user_view_to_purchase"
USER_LAST_PURCHASE_UNIX = "user_last_purchase_unix"
USER_PREFERRED_DEVICE = "user_preferred_device"
USER_TOP_CATEGORY = "user_top_category"
USER_TOP_CATEGORY_SHARE = "user_top_category_share"
USER_PROFILE_FEATURES = (USER_VIEWS, USER_CARTS, USER_VIEW_TO_PURCHASE, USER_LAST_PURCHASE_UNIX,
                         USER_PREFERRED_DEVICE, USER_TOP_CATEGORY, USER_TOP_CATEGORY_SHARE)
USER_WINDOW_FEATURES = tuple(f"user_{m}_{w}d" for m in ("purchases", "revenue") for w in WINDOWS_USER)
ITEM_WINDOW_FEATURES = (tuple(f"item_{m}_{w}d" for m in ("purchases", "carts", "views") for w in WINDOWS_ITEM)
                        + ("item_conversion_30d",))

PRICE_BAND = "price_band"
FIRST_SEEN_UNIX = "first_seen_unix"
TEXT_EMBEDDING = "item_text_embedding"

UI_PURCHASES, UI_CARTS, UI_VIEWS = "ui_purchases", "ui_carts", "ui_views"
UI_LAST_PURCHASE_UNIX, UI_LAST_SEEN_UNIX = "ui_last_purchase_unix", "ui_last_seen_unix"
UI_PURCHASE_DAYS = "ui_purchase_days"              # days on which the user bought the item (repeat habit)
UI_FIRST_PURCHASE_UNIX = "ui_first_purchase_unix"  # 0 when never bought
USER_ITEM_FEATURES = (UI_PURCHASES, UI_CARTS, UI_VIEWS, UI_LAST_PURCHASE_UNIX, UI_LAST_SEEN_UNIX,
                      UI_PURCHASE_DAYS, UI_FIRST_PURCHASE_UNIX)
UC_PURCHASES, UC_VIEWS, UC_LAST_PURCHASE_UNIX = "uc_purchases", "uc_views", "uc_last_purchase_unix"
USER_CATEGORY_FEATURES = (UC_PURCHASES, UC_VIEWS, UC_LAST_PURCHASE_UNIX)

SESSION_CATEGORY = "session_category"
SESSION_VIEWED = "session_viewed"
SESSION_CARTED = "session_carted"
SESSION_DEVICE = "session_device"
SESSION_HOUR = "session_hour"
SESSION_WEEKDAY = "session_weekday"
SESSION_FEATURES = (SESSION_CATEGORY, SESSION_VIEWED, SESSION_CARTED, SESSION_DEVICE, SESSION_HOUR, SESSION_WEEKDAY)
SESSION_MAX_ITEMS = 20

REQUEST_TS = "request_ts"  # request time, unix seconds (RequestSource)

USER_PROFILE_VIEW = "user_profile"
USER_WINDOWS_VIEW = "user_purchase_windows"
ITEM_WINDOWS_VIEW = "item_activity_windows"
ITEM_CONTENT_VIEW = "item_content"
USER_ITEM_VIEW = "user_item_history"
USER_CATEGORY_VIEW = "user_category_history"
SESSION_VIEW = "session_context"
SESSION_PUSH_SOURCE = "session_push_source"
RANKING_SERVICE = "ranking_v1"

# --- ranking (issue 5) ---
UI_DAYS_SINCE_PURCHASE = "ui_days_since_purchase"
UC_DAYS_SINCE_PURCHASE = "uc_days_since_purchase"
UC_SHARE = "uc_share"
UI_DAYS_SINCE_FIRST_PURCHASE = "ui_days_since_first_purchase"
UI_REPURCHASE_INTERVAL = "ui_repurchase_interval"  # mean days between the user's purchase days of the item
RANKING_REQUEST_FEATURES = (UI_DAYS_SINCE_PURCHASE, UC_DAYS_SINCE_PURCHASE, UC_SHARE, UI_DAYS_SINCE_FIRST_PURCHASE,
                            UI_REPURCHASE_INTERVAL)
RANKING_REQUEST_VIEW = "ranking_request_features"
# scores of the offline candidate sources, computed for every candidate (not only the ones a source found)
KNN_SCORE = "knn_score"                # item-kNN co-purchase: sum of cosine to the user's items
KNN_RECENT_SCORE = "knn_recent_score"  # same over the recency-weighted profile
EASE_SCORE = "ease_score"
REPEAT_SCORE = "repeat_score"                # the user's purchase lines of the item, 180-day half-life
REPEAT_RECENT_SCORE = "repeat_recent_score"  # same, 30-day half-life
SOURCE_SCORES = (KNN_SCORE, KNN_RECENT_SCORE, EASE_SCORE, REPEAT_SCORE, REPEAT_RECENT_SCORE)
CANDIDATE_SOURCE = "candidate_source"  # which source first proposed the pair (own, item_knn, ease, ...)
