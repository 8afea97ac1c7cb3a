"""The event contract: the hand-written validators in `tally.core.events` and the JSON
Schema files in `tally/schemas/` (the corpus: `contract_cases.py`; money parsing:
`test_money.py`; the output records: `test_outputs.py`; the fast path: `test_fast_path.py`).

The schemas and the validators must agree on every message of the corpus below.
JSON Schema cannot express four rules, which the validator alone enforces (see
`VALIDATOR_ONLY`): coupon_amount <= amount, original_txn_id != txn_id, the
transport rules (message key == txn_id, message size), and the range of occurred_at's
instant (1970-01-02T00:00:00Z to 2100-01-01T00:00:00Z: `test_timestamps.py`).
Everything else, including the number of decimal places per currency, the schemas
express too.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from tally.core.events import (
    EVENT_TIME_MAX_MS,
    EVENT_TIME_MIN_MS,
    InvalidEvent,
    iso_ms,
    parse_callback,
    parse_timestamp,
    parse_transaction,
    to_epoch_ms,
)
from tally.core.money import (
    EXPONENTS,
    to_minor,
)
from tests.core.contract_cases import (
    BAD_CBS,
    BAD_TXNS,
    CB_SCHEMA,
    GOOD_CBS,
    GOOD_TXNS,
    TXN_SCHEMA,
    VALIDATOR_ONLY,
    _ids,
    good_cb,
    good_txn,
    load_schema,
    schema_ok,
)

# -------------------------------------------------------------- validator


@pytest.mark.parametrize("msg", GOOD_TXNS)
def test_good_transactions_accepted(msg: dict[str, Any]) -> None:
    t = parse_transaction(msg)
    assert t.txn_id == msg["txn_id"]
    assert t.event_id == msg["event_id"]
    assert isinstance(t.amount, int)
    assert t.amount == to_minor(msg["amount"], msg["currency"])
    # also from bytes and str, with the key checked
    raw = json.dumps(msg).encode()
    assert parse_transaction(raw, msg["txn_id"].encode(), check_key=True) == t
    assert parse_transaction(raw.decode(), msg["txn_id"], check_key=True) == t


@pytest.mark.parametrize("msg", GOOD_CBS)
def test_good_callbacks_accepted(msg: dict[str, Any]) -> None:
    c = parse_callback(msg)
    assert c.txn_id == msg["txn_id"]
    assert c.source == msg["source"] and c.status == msg["status"]
    fee = msg.get("fee")
    assert c.fee == (None if fee is None else to_minor(fee, msg["currency"]))
    raw = json.dumps(msg).encode()
    assert parse_callback(raw, msg["txn_id"].encode(), check_key=True) == c


@pytest.mark.parametrize(
    ("msg", "code", "field"), BAD_TXNS + VALIDATOR_ONLY, ids=_ids(BAD_TXNS + VALIDATOR_ONLY)
)
def test_bad_transactions_rejected(msg: dict[str, Any], code: str, field: str | None) -> None:
    with pytest.raises(InvalidEvent) as ei:
        parse_transaction(msg)
    assert (ei.value.code, ei.value.field) == (code, field)
    assert str(ei.value).startswith(f"{field}: ")


@pytest.mark.parametrize(("msg", "code", "field"), BAD_CBS, ids=_ids(BAD_CBS))
def test_bad_callbacks_rejected(msg: dict[str, Any], code: str, field: str | None) -> None:
    with pytest.raises(InvalidEvent) as ei:
        parse_callback(msg)
    assert (ei.value.code, ei.value.field) == (code, field)


def test_transaction_fields_parsed_exactly() -> None:
    t = parse_transaction(
        good_txn(coupon_amount="10.05", terminal_id="POS-1", status="success", unknown="x")
    )
    assert t.type == "payment" and t.status == "success"
    assert (t.amount, t.coupon_amount, t.currency) == (12850, 1005, "CNY")
    assert t.terminal_id == "POS-1" and t.original_txn_id is None
    # 18:00:00.123 in +08:00 is 10:00:00.123 UTC
    assert iso_ms(t.occurred_at_ms) == "2026-03-02T10:00:00.123Z"
    assert t.occurred_at_ms == to_epoch_ms(t.occurred_at)
    assert not hasattr(t, "unknown")


def test_extra_fields_do_not_change_the_parse() -> None:
    plain = parse_transaction(good_txn())
    extra = parse_transaction(good_txn(amount_minor=1, status_text="x", meta={"k": "v"}))
    assert plain == extra
    assert parse_callback(good_cb()) == parse_callback(good_cb(sign="..", trade_state="SUCCESS"))


def test_to_json_round_trips_through_parse_and_schema() -> None:
    for msg in GOOD_TXNS:
        t = parse_transaction(msg)
        out = t.to_json()
        assert parse_transaction(out) == t
        assert schema_ok(TXN_SCHEMA, out), out
    for msg in GOOD_CBS:
        c = parse_callback(msg)
        out = c.to_json()
        assert parse_callback(out) == c
        assert schema_ok(CB_SCHEMA, out), out


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "bad_json"),
        (b"", "bad_json"),
        (b"\xff", "bad_json"),
        (b"[1, 2]", "not_object"),
        (b'"a string"', "not_object"),
        (b"null", "not_object"),
        (b"12.5", "not_object"),
    ],
)
def test_raw_message_rejected(raw: bytes, code: str) -> None:
    for parse in (parse_transaction, parse_callback):
        with pytest.raises(InvalidEvent) as ei:
            parse(raw)
        assert ei.value.code == code
        assert ei.value.field is None


def test_message_size_limit() -> None:
    raw = json.dumps(good_txn(padding="x" * 200)).encode()
    with pytest.raises(InvalidEvent) as ei:
        parse_transaction(raw, max_bytes=100)
    assert ei.value.code == "too_large"
    assert parse_transaction(raw, max_bytes=len(raw)).txn_id == "T20260302-0001"


def test_key_must_be_the_txn_id() -> None:
    raw = json.dumps(good_txn()).encode()
    for key in (None, b"other", "T20260302-0002"):
        with pytest.raises(InvalidEvent) as ei:
            parse_transaction(raw, key, check_key=True)
        assert ei.value.code == "key_mismatch"
    with pytest.raises(InvalidEvent) as ei:
        parse_callback(json.dumps(good_cb()).encode(), b"T-else", check_key=True)
    assert ei.value.code == "key_mismatch"
    # without check_key the key is not looked at
    assert parse_transaction(raw, b"other").txn_id == "T20260302-0001"


def test_timestamp_parsing() -> None:
    assert parse_timestamp("1970-01-01T00:00:00Z", "f") == 0
    assert parse_timestamp("1970-01-01T08:00:00+08:00", "f") == 0
    assert parse_timestamp("1970-01-01T00:00:00.999999Z", "f") == 999  # floor to ms
    assert parse_timestamp("2026-03-02T10:00:00.5-00:30", "f") == parse_timestamp(
        "2026-03-02T10:30:00.500Z", "f"
    )
    assert iso_ms(parse_timestamp("2026-03-02T23:59:59.999+08:00", "f")) == (
        "2026-03-02T15:59:59.999Z"
    )


# -------------------------------------------------------- schema agreement


def test_format_checking_is_active() -> None:
    """Without rfc3339-validator the date-time format would silently pass everything."""
    checker = Draft202012Validator.FORMAT_CHECKER
    assert "date-time" in checker.checkers and "date" in checker.checkers
    assert not schema_ok(TXN_SCHEMA, good_txn(occurred_at="2026-03-02T10:00:00"))


@pytest.mark.parametrize("msg", GOOD_TXNS)
def test_schema_accepts_good_transaction(msg: dict[str, Any]) -> None:
    assert schema_ok(TXN_SCHEMA, msg), list(TXN_SCHEMA.iter_errors(msg))


@pytest.mark.parametrize("msg", GOOD_CBS)
def test_schema_accepts_good_callback(msg: dict[str, Any]) -> None:
    assert schema_ok(CB_SCHEMA, msg), list(CB_SCHEMA.iter_errors(msg))


@pytest.mark.parametrize(("msg", "code", "field"), BAD_TXNS, ids=_ids(BAD_TXNS))
def test_schema_rejects_bad_transaction(msg: dict[str, Any], code: str, field: str) -> None:
    assert not schema_ok(TXN_SCHEMA, msg)


@pytest.mark.parametrize(("msg", "code", "field"), BAD_CBS, ids=_ids(BAD_CBS))
def test_schema_rejects_bad_callback(msg: dict[str, Any], code: str, field: str) -> None:
    assert not schema_ok(CB_SCHEMA, msg)


@pytest.mark.parametrize(("msg", "code", "field"), VALIDATOR_ONLY, ids=_ids(VALIDATOR_ONLY))
def test_documented_exceptions_schema_cannot_express(
    msg: dict[str, Any], code: str, field: str
) -> None:
    """coupon_amount <= amount and original_txn_id != txn_id compare two fields, which
    JSON Schema cannot do: the schema accepts these, the validator rejects them."""
    assert schema_ok(TXN_SCHEMA, msg)
    with pytest.raises(InvalidEvent):
        parse_transaction(msg)


def test_schema_rejects_non_objects() -> None:
    for v in ([1], "x", None, 1):
        assert not schema_ok(TXN_SCHEMA, v) and not schema_ok(CB_SCHEMA, v)


def test_currency_lists_in_schemas_follow_money() -> None:
    """The currency enum and the per-exponent amount rules are generated from
    tally.core.money.EXPONENTS; regenerate them when that table changes."""
    for name in ("transaction", "callback"):
        schema = load_schema(name)
        assert schema["properties"]["currency"]["enum"] == sorted(EXPONENTS)
        groups = [
            b["if"]["properties"]["currency"]
            for b in schema["allOf"]
            if "currency" in b["if"]["properties"]
        ]
        listed = [g["enum"] for g in groups if "enum" in g]
        excluded = [g["not"]["enum"] for g in groups if "not" in g]
        for codes in listed:
            assert len({EXPONENTS[c] for c in codes}) == 1, f"{name}: mixed exponents"
        assert sorted(c for codes in listed for c in codes) == sorted(
            c for c, e in EXPONENTS.items() if e != 2
        )
        assert len(excluded) == 1 and sorted(excluded[0]) == sorted(
            c for c, e in EXPONENTS.items() if e != 2
        )


_ALPHABET = st.sampled_from(list("0123456789.-+ e\n"))


@given(
    amount=st.text(_ALPHABET, max_size=18),
    currency=st.sampled_from(["CNY", "JPY", "KWD", "CLF", "USD", "BHD", "KRW"]),
)
def test_schema_and_validator_agree_on_amounts(amount: str, currency: str) -> None:
    """Property: for any short string over the characters that matter, both sides
    give the same verdict, including the per-currency decimal places."""
    msg = good_cb(amount=amount, currency=currency, fee=None)
    try:
        parse_callback(msg)
        accepted = True
    except InvalidEvent:
        accepted = False
    assert accepted == schema_ok(CB_SCHEMA, msg), (amount, currency)


@given(
    value=st.text(st.sampled_from(list("0123456789-:TtZz+.")), min_size=18, max_size=30)
    | st.sampled_from(
        [
            "2026-03-02T10:00:00Z",
            "2026-13-02T10:00:00Z",
            "2026-03-02T10:61:00Z",
            "2026-03-02T10:00:00+25:00",
            "2026-03-02T10:00:00+08:60",
            "2024-02-29T10:00:00Z",
            "2025-02-29T10:00:00Z",
        ]
    )
)
def test_schema_and_validator_agree_on_timestamps(value: str) -> None:
    msg = good_txn(occurred_at=value)
    try:
        parse_transaction(msg)
        accepted = True
    except InvalidEvent:
        accepted = False
    # the range of the instant is the validator's alone (docs/events.md, "Rules the
    # schemas cannot express"; tests/core/test_timestamps.py)
    try:
        in_range = EVENT_TIME_MIN_MS <= parse_timestamp(value, "t") < EVENT_TIME_MAX_MS
    except InvalidEvent:
        in_range = True  # not a timestamp at all: the format decides
    assert accepted == (schema_ok(TXN_SCHEMA, msg) and in_range), value


@given(value=st.text(max_size=70))
def test_schema_and_validator_agree_on_ids(value: str) -> None:
    msg = good_txn(merchant_id=value)
    try:
        parse_transaction(msg)
        accepted = True
    except InvalidEvent:
        accepted = False
    assert accepted == schema_ok(TXN_SCHEMA, msg), value
