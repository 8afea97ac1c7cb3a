"""The fast path of `tally.core.events` (msgspec) against the hand-written validators:
same accepted messages, same values, every error left to the validators; and the fast
timestamp / iso_ms / murmur2 code against their references."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tally.core.events import (
    InvalidEvent,
    iso_ms,
    parse_callback,
    parse_timestamp,
    parse_transaction,
)
from tests.core.contract_cases import (
    BAD_CBS,
    BAD_TXNS,
    GOOD_CBS,
    GOOD_TXNS,
)

# ------------------------------------------------- fast path == the validators
#
# Well-formed messages are read by msgspec (`_fast_transaction` / `_fast_callback`);
# anything it does not accept goes through the hand-written validators. The fast path
# must accept exactly what they accept, with the same values, and leave every error
# to them.


def _slow(kind: str, raw: bytes | str, key: bytes | str | None) -> Any:
    from tally.core import events

    parse = events._parse_transaction if kind == "txn" else events._parse_callback
    try:
        return parse(raw, key, True, 64 * 1024)
    except InvalidEvent as exc:
        return (exc.code, exc.message, exc.field)


def _fast(kind: str, raw: bytes | str, key: bytes | str | None) -> Any:
    parse = parse_transaction if kind == "txn" else parse_callback
    try:
        return parse(raw, key, check_key=True)
    except InvalidEvent as exc:
        return (exc.code, exc.message, exc.field)


def _encodings(msg: dict[str, Any]) -> list[bytes | str]:
    text = json.dumps(msg)
    return [
        text,
        text.encode(),
        json.dumps(msg, ensure_ascii=False).encode(),
        text.encode("utf-16"),  # json.loads reads it, msgspec does not
        b"\xef\xbb\xbf" + text.encode(),  # a UTF-8 BOM
        text[:-1] + ', "x": NaN}',  # json.loads reads NaN, msgspec does not
        text[:-1] + ', "event_id": "dup-1"}',  # the last of duplicate keys wins
        text[:-1] + ', "txn_id": 7}',
        text.replace('"evt', '"\\u0065vt'),
    ]


@pytest.mark.parametrize(
    ("kind", "msg"),
    [("txn", m) for m in GOOD_TXNS]
    + [("cb", m) for m in GOOD_CBS]
    + [("txn", m) for m, _, _ in BAD_TXNS]
    + [("cb", m) for m, _, _ in BAD_CBS],
)
def test_fast_parse_agrees_with_the_validators(kind: str, msg: dict[str, Any]) -> None:
    txn_id = msg.get("txn_id")
    keys: list[bytes | str | None] = [None, "other", b"\xff"]
    if isinstance(txn_id, str):
        keys += [txn_id, txn_id.encode()]
    for raw in _encodings(msg):
        for key in keys:
            assert _fast(kind, raw, key) == _slow(kind, raw, key), (raw, key)


@pytest.mark.parametrize(
    "value",
    [
        "2026-03-02T10:00:00Z",
        "2026-03-02T10:00:00.1Z",
        "2026-03-02T10:00:00.12Z",
        "2026-03-02T10:00:00.123Z",
        "2026-03-02T10:00:00.999999999Z",
        "2026-03-02T23:59:59.999Z",
        "2026-03-02t10:00:00z",
        "2026-03-02T10:00:60Z",
        "2026-03-02T10:60:00Z",
        "2026-03-02T24:00:00Z",
        "2026-02-30T10:00:00Z",
        "2026-03-02T10:00:00.Z",
        "2026-03-02T10:00:0５Z",
        "2026-03-02T10:00:00.12aZ",
        "2026-03-02 10:00:00Z",
        "2026-03-02T10:00:00+08:00",
        "2026-03-02T10:00:00." + "0" * 30 + "Z",
        "1970-01-01T00:00:00.000Z",
    ],
)
def test_fast_timestamps_agree(value: str) -> None:
    from tally.core.validation import _parse_timestamp

    def outcome(f: Callable[[object, str], int]) -> Any:
        try:
            return f(value, "f")
        except InvalidEvent as exc:
            return (exc.code, exc.message)

    parse_timestamp("2026-03-02T10:00:00.000Z", "f")  # the hour and minute are now known
    assert outcome(parse_timestamp) == outcome(_parse_timestamp)
    assert outcome(parse_timestamp) == outcome(parse_timestamp)  # remembered the same


@given(st.integers(min_value=-(10**13), max_value=2**33 * 1000 + 10**9))
def test_iso_ms_agrees_with_strftime(ms: int) -> None:
    from tally.core.eventtime import _iso_ms_slow

    assert iso_ms(ms) == _iso_ms_slow(ms)


@given(st.binary(max_size=80))
def test_murmur2_is_kafkas(data: bytes) -> None:
    from aiokafka.partitioner import murmur2 as kafka_murmur2

    from tally.core.pipeline import murmur2

    assert murmur2(data) == kafka_murmur2(data)
