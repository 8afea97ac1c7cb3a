"""The event contract's field checks: one JSON object in, one field's value out.

In: a raw message (bytes, text or an already decoded dict) or one of its fields. Out:
the value in tally's form (ids as str, amounts in minor units, timestamps as epoch
milliseconds; an event's own timestamps only within `EVENT_TIME_RANGE`), or
`InvalidEvent` with a reason code (`tally.core.deadletter`) and a message that names
the field. `tally.core.events` builds its records with these; they
also decide every message the fast path there does not accept.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from tally.core.deadletter import InvalidEvent
from tally.core.eventtime import to_epoch_ms
from tally.core.money import MoneyError, is_currency, to_minor

MAX_ID_LENGTH = 64
_ID_RE = re.compile(r"^[\x21-\x7e]{1,64}$")  # printable ASCII, no spaces


# RFC 3339 `date-time` (section 5.6), the form the JSON Schema `date-time` format
# checks; datetime.fromisoformat alone also takes ISO 8601 forms outside it
# (20260101T100000Z, 10:00+08:00, +0800, week dates).
_RFC3339_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
)


def parse_timestamp(value: object, field: str) -> int:
    if type(value) is str:
        ms = _fast_timestamp(value)
        if ms is not None:
            return ms
    return _parse_timestamp(value, field)


# The usual form, `YYYY-MM-DDTHH:MM:SS[.fff...]Z`, is read with the epoch ms of its
# hour and of its minute remembered: an hour prefix is checked (and converted) once by
# the full parser below, the minutes, seconds and fraction are added here. Anything
# else, and anything this does not accept, goes through `_parse_timestamp`, which also
# says what is wrong.
_hours: dict[str, int] = {}  # "YYYY-MM-DDTHH" -> epoch ms
_minutes: dict[str, int] = {}  # "YYYY-MM-DDTHH:MM:" -> epoch ms
_SECONDS = {f"{s:02d}": s * 1000 for s in range(60)}
_MILLIS_Z = {f".{ms:03d}Z": ms for ms in range(1000)} | {"Z": 0}


def _fast_timestamp(value: str) -> int | None:
    base = _minutes.get(value[:17])
    if base is not None:
        sec = _SECONDS.get(value[17:19])
        if sec is not None:
            milli = _MILLIS_Z.get(value[19:])
            if milli is not None:
                return base + sec + milli
    return _timestamp_z(value)


def _timestamp_z(value: str) -> int | None:
    n = len(value)
    if (
        n > 40
        or n < 20
        or value[-1] != "Z"
        or value[13] != ":"
        or value[16] != ":"
        or not value.isascii()
    ):
        return None
    mm, ss = value[14:16], value[17:19]
    if not (mm.isdigit() and ss.isdigit()):
        return None
    if n == 20:
        milli = 0
    else:
        frac = value[20:-1]
        if value[19] != "." or not frac.isdigit():
            return None
        milli = int((frac + "00")[:3])
    m, s = int(mm), int(ss)
    if m > 59 or s > 59:
        return None
    prefix = value[:13]
    base = _hours.get(prefix)
    if base is None:
        try:
            base = _parse_timestamp(prefix + ":00:00Z", "")
        except InvalidEvent:
            return None
        if len(_hours) >= 4096:
            _hours.clear()
        _hours[prefix] = base
    base += m * 60_000
    if len(_minutes) >= 65536:
        _minutes.clear()
    _minutes[value[:17]] = base
    return base + s * 1000 + milli


def _parse_timestamp(value: object, field: str) -> int:
    if not isinstance(value, str):
        raise InvalidEvent("wrong_type", "must be an RFC 3339 string", field)
    if len(value) > 40 or not _RFC3339_RE.fullmatch(value.upper()):
        raise InvalidEvent("bad_timestamp", f"not an RFC 3339 timestamp: {value[:40]!r}", field)
    try:
        dt = datetime.fromisoformat(value.upper())
    except ValueError:
        raise InvalidEvent(
            "bad_timestamp", f"not an RFC 3339 timestamp: {value[:40]!r}", field
        ) from None
    if dt.tzinfo is None:
        raise InvalidEvent("bad_timestamp", f"needs a UTC offset: {value!r}", field)
    return to_epoch_ms(dt)


# The instants an event may carry: from 1970-01-02T00:00:00Z (inclusive) to
# 2100-01-01T00:00:00Z (exclusive). RFC 3339 allows years 0000-9999 with offsets up to
# 23:59, but what is done later with an event's time does not: its business date in
# the channel's zone (`datetime.fromtimestamp`) must stay within Python's years
# 1-9999, timers and watermarks start at -1 (an instant before the epoch is below
# them), and the ClickHouse store keeps business dates as `Date` (1970-01-01 ..
# 2149-06-06, saturating outside: 1969-12-31 is stored as 1970-01-01) and times as
# `DateTime` (up to 2106-02-07). From a day after the epoch, the business date is
# 1970-01-01 or later in every zone (none is more than 14 hours from UTC), and before
# 2100 it is at most 2100-01-02 (a cutoff moves it a day on): inside all of these.
EVENT_TIME_MIN_MS = 86_400_000  # 1970-01-02T00:00:00Z
EVENT_TIME_MAX_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z, exclusive
EVENT_TIME_RANGE = "from 1970-01-02T00:00:00Z (inclusive) to 2100-01-01T00:00:00Z (exclusive)"


def parse_event_time(value: object, field: str) -> int:
    """An event's timestamp field: `parse_timestamp`, and the instant within the range
    above, else `bad_timestamp` naming the field and the range."""
    ms = parse_timestamp(value, field)
    if not EVENT_TIME_MIN_MS <= ms < EVENT_TIME_MAX_MS:
        raise InvalidEvent(
            "bad_timestamp",
            f"{str(value)[:40]!r} is outside the accepted range, {EVENT_TIME_RANGE}",
            field,
        )
    return ms


def _require(d: dict[str, Any], field: str) -> Any:
    try:
        value = d[field]
    except KeyError:
        raise InvalidEvent("missing_field", "required field is missing", field) from None
    if value is None:
        raise InvalidEvent("missing_field", "required field is null", field)
    return value


def _ident(d: dict[str, Any], field: str, optional: bool = False) -> Any:
    value = d.get(field) if optional else _require(d, field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent("wrong_type", f"must be a string, got {type(value).__name__}", field)
    if not _ID_RE.fullmatch(value):
        raise InvalidEvent("bad_id", f"must be 1-{MAX_ID_LENGTH} printable ASCII characters", field)
    return value


def _enum(d: dict[str, Any], field: str, allowed: tuple[str, ...]) -> str:
    value = _require(d, field)
    if not isinstance(value, str):
        raise InvalidEvent("wrong_type", f"must be a string, got {type(value).__name__}", field)
    if value not in allowed:
        raise InvalidEvent(
            "unknown_enum", f"{value[:40]!r} is not one of {', '.join(allowed)}", field
        )
    return value


def _currency(d: dict[str, Any]) -> str:
    value = _require(d, "currency")
    if not isinstance(value, str):
        raise InvalidEvent("wrong_type", "must be a string", "currency")
    if not is_currency(value):
        raise InvalidEvent("bad_currency", f"{value[:10]!r} is not an ISO 4217 code", "currency")
    return value


def _amount(d: dict[str, Any], field: str, currency: str, optional: bool = False) -> Any:
    value = d.get(field) if optional else _require(d, field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(
            "wrong_type",
            f'must be a decimal string like "12.34", got {type(value).__name__}',
            field,
        )
    try:
        return to_minor(value, currency)
    except MoneyError as exc:
        code = "negative_amount" if value.startswith("-") else "bad_amount"
        raise InvalidEvent(code, str(exc), field) from None


def _object(raw: bytes | str | dict[str, Any], max_bytes: int) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if len(raw) > max_bytes:
        raise InvalidEvent("too_large", f"message is {len(raw)} bytes, limit {max_bytes}")
    try:
        d = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidEvent("bad_json", f"not valid JSON: {exc}") from None
    if not isinstance(d, dict):
        raise InvalidEvent("not_object", f"must be a JSON object, got {type(d).__name__}")
    return d


def _check_key(key: bytes | str | None, txn_id: str) -> None:
    if key is None:
        raise InvalidEvent("key_mismatch", "message has no key; the key must be the txn_id")
    k = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    if k != txn_id:
        raise InvalidEvent("key_mismatch", f"message key {k[:64]!r} differs from txn_id {txn_id!r}")


def _envelope(
    raw: bytes | str | dict[str, Any], key: bytes | str | None, check_key: bool, max_bytes: int
) -> tuple[dict[str, Any], str, str]:
    """What every input shares: a JSON object with an event id and the order's txn id,
    keyed by that txn id."""
    d = _object(raw, max_bytes)
    event_id = _ident(d, "event_id")
    txn_id = _ident(d, "txn_id")
    if check_key:
        _check_key(key, txn_id)
    return d, event_id, txn_id
