"""Event time: an instant as epoch milliseconds (UTC), the form every record carries,
and its RFC 3339 text.

In: epoch milliseconds or a timezone-aware datetime. Out: the other one, or the text
`2026-11-25T04:45:26.123Z`. Parsing text back (with the contract's rules) is
`tally.core.validation.parse_timestamp`. No clock is read here: a time is always given.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def from_epoch_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def to_epoch_ms(dt: datetime) -> int:
    if dt.tzinfo is None:
        raise ValueError("naive datetime: tally keeps every timestamp timezone-aware")
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def _iso_ms_slow(ms: int) -> str:
    return from_epoch_ms(ms).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# iso_ms formats the time of day with integer arithmetic and keeps the date part per
# day. Up to 2**33 seconds (year 2242) `ms / 1000` as a float is within half a
# microsecond of the instant, so the strftime form above has exactly these digits;
# outside that range (and for anything that is not an int) it is used as is.
_ISO_FAST_LIMIT_MS = 2**33 * 1000
_DAY_MS = 86_400_000
_iso_days: dict[int, str] = {}


def iso_ms(ms: int) -> str:
    """RFC 3339 in UTC with millisecond precision: 2026-11-25T04:45:26.123Z."""
    if type(ms) is not int or not 0 <= ms < _ISO_FAST_LIMIT_MS:
        return _iso_ms_slow(ms)
    day, rem = divmod(ms, _DAY_MS)
    prefix = _iso_days.get(day)
    if prefix is None:
        if len(_iso_days) >= 4096:
            _iso_days.clear()
        prefix = _iso_days[day] = _iso_ms_slow(day * _DAY_MS)[:11]
    h, rem = divmod(rem, 3_600_000)
    m, rem = divmod(rem, 60_000)
    sec, milli = divmod(rem, 1000)
    return f"{prefix}{h:02d}:{m:02d}:{sec:02d}.{milli:03d}Z"
