"""The range of instants an input message's `occurred_at` may carry (docs/events.md,
"Timestamps"): from 1970-01-02T00:00:00Z inclusive to 2100-01-01T00:00:00Z exclusive,
whatever the offset; outside it `bad_timestamp` naming the field and the range. The
fast path (msgspec) and the validators refuse the same way, and every accepted
instant has a business date in every zone that Python and the store can hold."""

from __future__ import annotations

import json
from datetime import date, time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tally.core import events
from tally.core.events import (
    EVENT_TIME_MAX_MS,
    EVENT_TIME_MIN_MS,
    InvalidEvent,
    parse_callback,
    parse_event_time,
    parse_timestamp,
    parse_transaction,
)
from tally.core.policy import business_date, cutoff_ms
from tests.core.contract_cases import good_cb, good_txn

INSIDE = [
    "1970-01-02T00:00:00Z",
    "1970-01-02T00:00:00.000Z",
    "1970-01-02t00:00:00z",
    "1970-01-01T23:59:59.999-00:01",  # 1970-01-02T00:00:59.999Z
    "1970-01-02T23:58:00+23:58",  # 1970-01-02T00:00:00Z
    "2026-03-02T18:00:00.123+08:00",
    "2099-12-31T23:59:59.999Z",
    "2099-12-31T23:59:59.9999999Z",  # kept to the millisecond: .999
    "2100-01-01T23:58:59.999+23:59",  # 2099-12-31T23:59:59.999Z
]
OUTSIDE = [
    "1970-01-01T23:59:59.999Z",
    "1970-01-02T00:00:00.000+00:01",  # 1970-01-01T23:59:00Z
    "1970-01-01T00:00:00Z",
    "1969-12-31T23:59:59Z",
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+23:59",
    "2100-01-01T00:00:00Z",
    "2100-01-01T00:00:00.000Z",
    "2099-12-31T23:59:59.999-00:01",  # 2100-01-01T00:00:59.999Z
    "2099-12-31T23:59:59-23:59",
    "9000-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59-23:59",
]


def test_the_bounds_are_the_documented_instants() -> None:
    assert parse_timestamp("1970-01-02T00:00:00Z", "t") == EVENT_TIME_MIN_MS
    assert parse_timestamp("2100-01-01T00:00:00Z", "t") == EVENT_TIME_MAX_MS


@pytest.mark.parametrize("at", INSIDE)
def test_inside_the_range_accepted(at: str) -> None:
    ms = parse_timestamp(at, "t")
    assert EVENT_TIME_MIN_MS <= ms < EVENT_TIME_MAX_MS
    assert parse_event_time(at, "occurred_at") == ms
    assert parse_transaction(good_txn(occurred_at=at)).occurred_at_ms == ms
    assert parse_callback(good_cb(occurred_at=at)).occurred_at_ms == ms


@pytest.mark.parametrize("at", OUTSIDE)
def test_outside_the_range_bad_timestamp_naming_field_and_range(at: str) -> None:
    with pytest.raises(InvalidEvent) as e:
        parse_event_time(at, "occurred_at")
    assert e.value.code == "bad_timestamp" and e.value.field == "occurred_at"
    assert at in e.value.message
    assert "1970-01-02T00:00:00Z (inclusive)" in e.value.message
    assert "2100-01-01T00:00:00Z (exclusive)" in e.value.message


def _outcome(parse: Any, raw: Any) -> Any:
    try:
        return parse(raw, "K1", check_key=True)
    except InvalidEvent as exc:
        return (exc.code, exc.message, exc.field)


def _slow(kind: str, raw: Any) -> Any:
    parse = events._parse_transaction if kind == "txn" else events._parse_callback
    try:
        return parse(raw, "K1", True, 64 * 1024)
    except InvalidEvent as exc:
        return (exc.code, exc.message, exc.field)


@pytest.mark.parametrize("at", INSIDE + OUTSIDE)
@pytest.mark.parametrize("kind", ["txn", "cb"])
def test_fast_path_and_validators_agree_at_the_bounds(kind: str, at: str) -> None:
    msg = (good_txn if kind == "txn" else good_cb)(txn_id="K1", occurred_at=at)
    parse = parse_transaction if kind == "txn" else parse_callback
    # twice: the second time the fast path knows the hour and the minute
    for _ in range(2):
        for raw in (json.dumps(msg), json.dumps(msg).encode(), msg):
            got = _outcome(parse, raw)
            assert got == _slow(kind, raw)
            if at in OUTSIDE:
                assert isinstance(got, tuple) and got[0] == "bad_timestamp"
                assert got[2] == "occurred_at"
            else:
                assert not isinstance(got, tuple)


def test_parse_timestamp_itself_keeps_the_whole_rfc3339_range() -> None:
    # stored times, statement files and --as-of are read with it: not an event's range
    assert parse_timestamp("1970-01-01T00:00:00Z", "t") == 0
    assert parse_timestamp("1969-12-31T23:59:59Z", "t") == -1000


def test_year_zero_is_no_date_python_reads() -> None:
    with pytest.raises(InvalidEvent) as e:
        parse_transaction(good_txn(occurred_at="0000-01-01T00:00:00Z"))
    assert e.value.code == "bad_timestamp" and e.value.field == "occurred_at"


# every zone offset a channel can be in (Etc/GMT+12 is UTC-12, Etc/GMT-14 UTC+14)
ZONES = ["Etc/GMT+12", "Pacific/Pago_Pago", "America/Los_Angeles", "UTC", "Asia/Shanghai"]
ZONES += ["Pacific/Kiritimati", "Etc/GMT-14"]
CUTOFFS = [time(0, 0), time(0, 1), time(12, 0), time(23, 59)]


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("cutoff", CUTOFFS)
def test_business_dates_of_the_bounds_stay_in_python_and_the_store(zone: str, cutoff: time) -> None:
    for ms in (EVENT_TIME_MIN_MS, EVENT_TIME_MIN_MS + 1, EVENT_TIME_MAX_MS - 1):
        d = business_date(ms, zone, cutoff)
        # ClickHouse Date: 1970-01-01 .. 2149-06-06 (saturating outside)
        assert date(1970, 1, 1) <= d <= date(2100, 1, 2)
        assert cutoff_ms(d, zone, cutoff) > ms  # the day's end after the instant


@given(st.integers(EVENT_TIME_MIN_MS, EVENT_TIME_MAX_MS - 1), st.sampled_from(ZONES))
def test_any_accepted_instant_has_a_storable_business_date(ms: int, zone: str) -> None:
    d = business_date(ms, zone, time(23, 59))
    assert date(1970, 1, 1) <= d <= date(2100, 1, 2)
