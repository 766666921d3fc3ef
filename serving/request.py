"""Request-side types of the serving API: the request body, the session context, limits, strict JSON and errors.

Where it sits: between the HTTP app (`serving/app.py`), which reads the raw
body and turns :class:`BodyError` into a 4xx, and the pipeline
(`serving/pipeline.py`), which receives a validated :class:`SessionContext`.
Everything here is pure (no I/O), so the same rules hold for HTTP requests and
for in-process callers.

A body becomes a :class:`RecommendRequest` in two steps, each of which fails
with a list of :class:`ErrorItem` naming the offending field:

1. :func:`parse_json` decodes strict UTF-8 and parses JSON, rejecting what the
   standard library lets through: `NaN`/`Infinity` tokens, integers longer than
   :data:`MAX_INT_DIGITS` digits, duplicated keys and nesting deeper than
   :data:`MAX_JSON_DEPTH` (RFC 8259 leaves all four to the implementation;
   refusing them keeps every JSON parser that might see the body in agreement).
2. :func:`validate_request` validates the parsed object in pydantic strict mode
   (no coercion: `"10"` is not an integer, `1` is not a boolean), with unknown
   fields forbidden at every level.

Unknown item ids in `exclude`, `session.viewed` or `session.cart` are not an
error here: only malformed ones are (empty, too long, control characters).
"""
from __future__ import annotations

import datetime as dt
import json
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, \
    field_validator
from pydantic_core import PydanticCustomError

#: Largest request body in bytes, counted on the bytes received (not the Content-Length header).
MAX_BODY_BYTES = 64 * 1024
#: Longest id (user, item) and category, in characters.
MAX_ID_LENGTH = 128
#: Longest `session.device`, in characters.
MAX_DEVICE_LENGTH = 32
#: Longest `session.time` string, in characters.
MAX_TIME_LENGTH = 64
#: `session.time` range: request-time features are computed on pandas timestamps (years 1677-2262), and a shop's
#: requests happen now, so a time outside these bounds is a client bug, answered 422.
MIN_TIME = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
MAX_TIME = dt.datetime(2200, 1, 1, tzinfo=dt.timezone.utc)
#: Most ids in `exclude`.
MAX_EXCLUDE = 1000
#: Most ids in `session.viewed` and in `session.cart` each.
MAX_SESSION_ITEMS = 100
#: Deepest JSON nesting accepted (a valid body nests 3 deep: body -> session -> viewed).
MAX_JSON_DEPTH = 32
#: Most digits of a JSON integer (Python refuses to parse more than 4300, with a ValueError).
MAX_INT_DIGITS = 64
#: Upper bound on `k` whatever `serving.max_k` says (the config's own bound).
HARD_MAX_K = 10_000
#: Most error items in one response; the first ones found are kept.
MAX_ERRORS = 50

# C0 and C1 control characters. (Lone surrogates, legal in Python strings through JSON "\ud800" escapes but not
# encodable as UTF-8, are refused by pydantic itself as `string_unicode`.)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")


def _clean_text(value: str) -> str:
    m = _CONTROL.search(value)
    if m is not None:
        raise PydanticCustomError("string_control_character", "must not contain control characters: U+{code} at "
                                  "position {pos}", {"code": f"{ord(m.group()):04X}", "pos": m.start()})
    return value


def _parse_time(value: Any) -> dt.datetime | None:
    """ISO 8601 string (or a datetime from Python callers) -> aware UTC datetime; a naive time is taken as UTC."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        t = value
    elif isinstance(value, str):
        if len(value) > MAX_TIME_LENGTH:
            raise PydanticCustomError("datetime_format", "must be an ISO 8601 date-time of at most {max} characters",
                                      {"max": MAX_TIME_LENGTH})
        try:
            t = dt.datetime.fromisoformat(value)
        except ValueError as exc:
            reason = "not ISO 8601" if str(exc).startswith("Invalid isoformat") else str(exc).split(",")[0]
            raise PydanticCustomError("datetime_format", "must be an ISO 8601 date-time such as "
                                      "2024-05-01T14:30:00+02:00 ({reason})", {"reason": reason}) from None
    else:
        raise PydanticCustomError("datetime_type", "must be an ISO 8601 date-time string")
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    try:
        t = t.astimezone(dt.timezone.utc)
    except OverflowError:
        raise PydanticCustomError("datetime_range", "is out of range once converted to UTC") from None
    if not MIN_TIME <= t < MAX_TIME:
        raise PydanticCustomError("datetime_range", "must be from {lo} to before {hi} (UTC)",
                                  {"lo": MIN_TIME.date().isoformat(), "hi": MAX_TIME.date().isoformat()})
    return t


#: A user or item id: 1..128 characters, no control characters, no lone surrogates.
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH), AfterValidator(_clean_text)]
#: A short free-form token (device names are not an enum: a new device is not an error).
Device = Annotated[str, Field(min_length=1, max_length=MAX_DEVICE_LENGTH), AfterValidator(_clean_text)]
#: `session.time`: aware UTC datetime after validation.
Time = Annotated[dt.datetime | None, BeforeValidator(_parse_time)]


class SessionContext(BaseModel):
    """What the shopper is doing now; all fields optional. Used for cold start and context retrieval.

    Args:
        category: category of the page or item being browsed.
        viewed: item ids viewed in this session, oldest first. Unknown ids are
            ignored by the pipeline (with a warning), not rejected.
        cart: item ids in the cart. Same rule for unknown ids.
        device: e.g. `desktop`, `mobile`, `tablet`.
        time: when the request is made (ISO 8601); a naive time is taken as
            UTC; always an aware UTC datetime after validation.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    category: Id | None = Field(None, description="category being browsed")
    viewed: list[Id] = Field(default_factory=list, max_length=MAX_SESSION_ITEMS,
                             description=f"item ids viewed in the session, oldest first (at most {MAX_SESSION_ITEMS})")
    cart: list[Id] = Field(default_factory=list, max_length=MAX_SESSION_ITEMS,
                           description=f"item ids in the cart (at most {MAX_SESSION_ITEMS})")
    device: Device | None = Field(None, description="device, e.g. desktop, mobile, tablet")
    time: Time = Field(None, description="ISO 8601 date-time of the request; naive times are taken as UTC")


class RecommendRequest(BaseModel):
    """Body of `POST /v1/recommend`.

    Args:
        user_id: the shopper; omitted or null for an anonymous session.
        session: the current session, if the shop sends it.
        k: number of items, 1..`serving.max_k` (passed as the validation
            context `{"max_k": ...}`; :data:`HARD_MAX_K` without one).
        exclude: item ids never to return.
        exclude_purchased: also leave out items the user bought before.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    user_id: Id | None = Field(None, description="shopper id; omit or null for anonymous")
    session: SessionContext | None = Field(None, description="the current session")
    k: int = Field(10, ge=1, description="number of items, at most serving.max_k")
    exclude: list[Id] = Field(default_factory=list, max_length=MAX_EXCLUDE,
                              description=f"item ids never to return (at most {MAX_EXCLUDE})")
    exclude_purchased: bool = Field(False, description="leave out items the user bought before")

    @field_validator("k")
    @classmethod
    def _at_most_max_k(cls, k: int, info: ValidationInfo) -> int:
        limit = min((info.context or {}).get("max_k", HARD_MAX_K), HARD_MAX_K)
        if k > limit:
            raise PydanticCustomError("less_than_equal", "Input should be less than or equal to {le} (serving.max_k)",
                                      {"le": limit})
        return k


class ErrorItem(BaseModel):
    """One problem with a request.

    Args:
        loc: where: `["body", "session", "viewed", 3]`, `["body"]` for the whole
            body, `["header", "content-type"]`, `["path"]`, `["method"]`.
        field: `loc` as one string: `body.session.viewed[3]`, `body`,
            `header.content-type`; keys that are not identifiers are quoted,
            `body["a b"]`.
        type: machine-readable reason, e.g. `int_type`, `extra_forbidden`,
            `json_invalid`, `body_too_large`.
        msg: human-readable reason.
    """

    loc: list[str | int]
    field: str
    type: str
    msg: str


class ErrorResponse(BaseModel):
    """Body of every 4xx (and 5xx) answer: the problems found, at most :data:`MAX_ERRORS`."""

    detail: list[ErrorItem]


class BodyError(Exception):
    """A request body that cannot be served, with every problem found.

    Args:
        errors: the problems; each names its location.
        status: the HTTP status to answer with (413 too large, else 422).
    """

    def __init__(self, errors: list[ErrorItem], status: int = 422):
        super().__init__("; ".join(f"{e.field}: {e.msg}" for e in errors))
        self.errors, self.status = errors, status


def _short(key: Any) -> str | int:
    # an unknown key is echoed in the error; a 60 KiB key need not be
    return key if not isinstance(key, str) or len(key) <= MAX_ID_LENGTH else key[:MAX_ID_LENGTH] + "..."


def field_path(loc: tuple | list) -> str:
    """An error location as one string.

    Args:
        loc: keys and list indexes, e.g. `("body", "session", "viewed", 3)`.

    Returns:
        `body.session.viewed[3]`; a key that is not an identifier is
        JSON-quoted in brackets: `body["a b"]`.
    """
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


def error(loc: tuple | list, type_: str, msg: str) -> ErrorItem:
    """One problem, ready for an error response.

    Args:
        loc: where (keys longer than :data:`MAX_ID_LENGTH` are shortened).
        type_: machine-readable reason.
        msg: human-readable reason; never the offending value.

    Returns:
        The :class:`ErrorItem`, its `field` derived from `loc`.
    """
    loc = [_short(p) for p in loc]
    return ErrorItem(loc=loc, field=field_path(loc), type=type_, msg=msg)


class _Bad:
    """A JSON token parsed into a placeholder, reported with its path after parsing."""

    __slots__ = ("type", "msg")

    def __init__(self, type_: str, msg: str):
        self.type, self.msg = type_, msg


class _DupDict(dict):
    """A JSON object that had duplicated keys (which ones in `dups`)."""

    dups: list[str]


def _pairs(pairs: list[tuple[str, Any]]) -> dict:
    d = dict(pairs)
    if len(d) == len(pairs):
        return d
    seen: set[str] = set()
    dups: dict[str, None] = {}  # ordered, O(1) membership: a 64 KiB body can hold thousands of repeats
    for key, _ in pairs:
        if key in seen:
            dups[key] = None
        seen.add(key)
    d = _DupDict(d)
    d.dups = list(dups)[:MAX_ERRORS]
    return d


def _constant(token: str) -> _Bad:
    return _Bad("json_non_finite", f"{token} is not valid JSON; numbers must be finite")


def _int(token: str) -> int | _Bad:
    digits = len(token.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        return _Bad("json_number_too_large", f"integer with {digits} digits; at most {MAX_INT_DIGITS} are accepted")
    return int(token)


_decoder = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_constant, parse_int=_int)


def parse_json(body: bytes) -> Any:
    """Strict UTF-8 JSON -> Python object.

    Args:
        body: the raw request body.

    Returns:
        The parsed value (any JSON type).

    Raises:
        BodyError: empty body, invalid UTF-8, invalid JSON, a NaN/Infinity
            token, an integer over :data:`MAX_INT_DIGITS` digits, a duplicated
            key, or nesting over :data:`MAX_JSON_DEPTH`; each at its path.
    """
    if not body:
        raise BodyError([error(["body"], "missing", "the body is empty; send a JSON object")])
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError([error(["body"], "utf8_invalid", f"the body is not valid UTF-8 (byte {exc.start}: "
                                                         f"{exc.reason})")]) from None
    try:
        value = _decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise BodyError([error(["body"], "json_invalid", f"invalid JSON at line {exc.lineno} column {exc.colno} "
                                                         f"(char {exc.pos}): {exc.msg}")]) from None
    except RecursionError:
        raise BodyError([error(["body"], "json_too_deep", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")]) \
            from None
    errors = _check_tree(value)
    if errors:
        raise BodyError(errors)
    return value


def _field_of(loc: tuple) -> list:
    """The named field a deep path is in: keys up to the first list index, at most `body.session.<name>`."""
    keys: list = []
    for part in loc:
        if isinstance(part, int) or len(keys) == 3:
            break
        keys.append(part)
    return keys


def _check_tree(value: Any) -> list[ErrorItem]:
    """Placeholders, duplicated keys and depth, in document order, found iteratively (a deep body must not
    exhaust the stack)."""
    errors: list[ErrorItem] = []
    too_deep = False
    stack: list[tuple[Any, tuple, int]] = [(value, ("body",), 1)]
    while stack and len(errors) < MAX_ERRORS:
        node, loc, depth = stack.pop()
        if isinstance(node, _Bad):
            errors.append(error(loc, node.type, node.msg))
        elif isinstance(node, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                if not too_deep:  # one error, at the field the deep value sits in
                    errors.append(error(_field_of(loc), "json_too_deep",
                                        f"JSON nested deeper than {MAX_JSON_DEPTH} levels"))
                    too_deep = True
                continue
            if isinstance(node, _DupDict):
                errors.extend(error(loc + (k,), "json_duplicate_key", "key appears more than once in this object")
                              for k in node.dups)
            items = list(node.items() if isinstance(node, dict) else enumerate(node))
            stack.extend((v, loc + (k,), depth + 1) for k, v in reversed(items))
    return errors[:MAX_ERRORS]


def validate_request(value: Any, max_k: int = HARD_MAX_K) -> RecommendRequest:
    """A parsed body -> :class:`RecommendRequest` (strict, unknown fields forbidden).

    Args:
        value: the output of :func:`parse_json`.
        max_k: largest `k` allowed (`serving.max_k`).

    Raises:
        BodyError: every schema problem, each at its path under `body`.
    """
    try:
        return RecommendRequest.model_validate(value, context={"max_k": max_k})
    except ValidationError as exc:
        raise BodyError(errors_from_pydantic(exc.errors(include_url=False, include_input=False), ("body",))) \
            from None


def errors_from_pydantic(errors: list[dict], prefix: tuple = ()) -> list[ErrorItem]:
    """pydantic / FastAPI error dicts -> :class:`ErrorItem` list (at most :data:`MAX_ERRORS`).

    Args:
        errors: dicts with `loc`, `type` and `msg` (the input is not echoed).
        prefix: prepended to each `loc` (e.g. `("body",)`).

    Returns:
        The items, messages made JSON-minded (`model_type` says "JSON object").
    """
    out = []
    for e in errors[:MAX_ERRORS]:
        msg = e["msg"]
        # pydantic prefixes custom ValueErrors; the location already says what failed
        msg = msg[len("Value error, "):] if msg.startswith("Value error, ") else msg
        if e["type"] == "model_type":  # pydantic names the Python class; a client sent JSON
            msg = "Input should be a JSON object"
        elif e["type"] == "string_unicode":
            msg = "Input should be valid Unicode text (it holds a lone surrogate)"
        out.append(error(prefix + tuple(e["loc"]), e["type"], msg))
    return out
