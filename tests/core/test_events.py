"""The event contract: the hand-written validators in `tally.core.events`, the JSON Schema
files in `tally/schemas/`, money parsing in `tally.core.money`, and the output records.

The schemas and the validators must agree on every message of the corpus below.
JSON Schema cannot express three rules, which the validator alone enforces (see
`VALIDATOR_ONLY`): coupon_amount <= amount, original_txn_id != txn_id, and the
transport rules (message key == txn_id, message size). Everything else, including
the number of decimal places per currency, the schemas express too.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from tally.core.events import (
    REASON_CODES,
    DeadLetter,
    InvalidEvent,
    iso_ms,
    parse_callback,
    parse_timestamp,
    parse_transaction,
    to_epoch_ms,
)
from tally.core.money import (
    EXPONENTS,
    MoneyError,
    exponent,
    format_minor,
    is_currency,
    to_decimal,
    to_minor,
)
from tally.core.pipeline import CALLBACKS, TRANSACTIONS, LocalPipeline
from tally.core.policy import ChannelPolicy, Mode, Policies

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "tally" / "schemas"


def load_schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / f"{name}.schema.json").read_text("utf-8"))
    return schema


def validator(name: str) -> Draft202012Validator:
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


TXN_SCHEMA = validator("transaction")
CB_SCHEMA = validator("callback")


def schema_ok(v: Draft202012Validator, msg: Any) -> bool:
    return not list(v.iter_errors(msg))


# ---------------------------------------------------------------- messages


def good_txn(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "event_id": "evt-0001",
        "txn_id": "T20260302-0001",
        "type": "payment",
        "merchant_id": "m-100",
        "channel_id": "wechat",
        "amount": "128.50",
        "currency": "CNY",
        "status": "pending",
        "occurred_at": "2026-03-02T18:00:00.123+08:00",
    }
    d.update(over)
    return d


def good_cb(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "event_id": "evt-cb-0001",
        "txn_id": "T20260302-0001",
        "channel_id": "wechat",
        "channel_txn_id": "4200001234202603021234567890",
        "source": "notify",
        "status": "success",
        "amount": "128.50",
        "currency": "CNY",
        "fee": "0.77",
        "occurred_at": "2026-03-02T10:00:02Z",
    }
    d.update(over)
    return d


def without(d: dict[str, Any], field: str) -> dict[str, Any]:
    out = dict(d)
    del out[field]
    return out


GOOD_TXNS: list[dict[str, Any]] = [
    good_txn(),
    good_txn(status="success", coupon_amount="10.00", terminal_id="POS-0042"),
    good_txn(original_txn_id=None, coupon_amount=None, terminal_id=None),
    good_txn(coupon_amount="128.50"),  # a coupon may cover the whole amount
    good_txn(coupon_amount="0"),
    good_txn(type="refund", original_txn_id="T20260301-0099", status="pending"),
    good_txn(type="refund", original_txn_id="T1", coupon_amount="0.00"),
    good_txn(type="reversal", original_txn_id="T20260301-0099", status="success"),
    good_txn(status="failed"),
    good_txn(status="closed"),
    good_txn(currency="JPY", amount="1000"),
    good_txn(currency="JPY", amount="1000.00"),  # trailing zeros are fine
    good_txn(currency="KWD", amount="1.234"),
    good_txn(currency="KWD", amount="1.2340"),
    good_txn(currency="CLF", amount="1.2345"),
    good_txn(amount="0"),
    good_txn(amount="9999999999999.99"),
    good_txn(amount="12.3"),
    good_txn(occurred_at="2026-03-02T10:00:00Z"),
    good_txn(occurred_at="2026-03-02t10:00:00z"),
    good_txn(occurred_at="2026-03-02T05:00:00-05:00"),
    good_txn(occurred_at="2026-03-02T10:00:00.123456789+00:00"),
    good_txn(event_id="!" * 64, txn_id="~" * 64),
    # unknown extra fields are ignored, whatever they hold
    good_txn(note="extra", nested={"a": [1, 2.5, None]}, amount_cents=12850, version=3),
]

GOOD_CBS: list[dict[str, Any]] = [
    good_cb(),
    good_cb(fee=None),
    without(good_cb(), "fee"),
    good_cb(fee="0"),
    *[good_cb(source=s) for s in ("sync", "notify", "query")],
    *[good_cb(status=s) for s in ("pending", "success", "failed", "reversed", "refunded")],
    good_cb(currency="JPY", amount="500", fee="3"),
    good_cb(currency="KWD", amount="2.125", fee="0.005"),
    good_cb(extra={"sign": "abc"}, raw="<xml/>"),
]

# (message, expected code, expected field)
Bad = tuple[dict[str, Any], str, str | None]

BAD_TXNS: list[Bad] = [
    *[
        (without(good_txn(), f), "missing_field", f)
        for f in (
            "event_id",
            "txn_id",
            "type",
            "merchant_id",
            "channel_id",
            "amount",
            "currency",
            "status",
            "occurred_at",
        )
    ],
    (good_txn(merchant_id=None), "missing_field", "merchant_id"),
    (good_txn(amount=None), "missing_field", "amount"),
    (good_txn(event_id=123), "wrong_type", "event_id"),
    (good_txn(txn_id=["T1"]), "wrong_type", "txn_id"),
    (good_txn(txn_id=""), "bad_id", "txn_id"),
    (good_txn(txn_id="T 1"), "bad_id", "txn_id"),
    (good_txn(txn_id="T1\n"), "bad_id", "txn_id"),
    (good_txn(txn_id="订单1"), "bad_id", "txn_id"),
    (good_txn(merchant_id="m" * 65), "bad_id", "merchant_id"),
    (good_txn(channel_id="wx\t"), "bad_id", "channel_id"),
    (good_txn(type="sale"), "unknown_enum", "type"),
    (good_txn(type="Payment"), "unknown_enum", "type"),
    (good_txn(type=1), "wrong_type", "type"),
    (good_txn(status="ok"), "unknown_enum", "status"),
    (good_txn(status="reversed"), "unknown_enum", "status"),
    (good_txn(currency="XXX"), "bad_currency", "currency"),
    (good_txn(currency="cny"), "bad_currency", "currency"),
    (good_txn(currency=156), "wrong_type", "currency"),
    (good_txn(amount=128.5), "wrong_type", "amount"),
    (good_txn(amount=12850), "wrong_type", "amount"),
    (good_txn(amount="-1.00"), "negative_amount", "amount"),
    (good_txn(amount="-0"), "negative_amount", "amount"),
    (good_txn(amount="1e3"), "bad_amount", "amount"),
    (good_txn(amount="12.345"), "bad_amount", "amount"),
    (good_txn(amount="12.34567"), "bad_amount", "amount"),
    (good_txn(amount=" 12"), "bad_amount", "amount"),
    (good_txn(amount="12\n"), "bad_amount", "amount"),
    (good_txn(amount="012"), "bad_amount", "amount"),
    (good_txn(amount="12."), "bad_amount", "amount"),
    (good_txn(amount=".5"), "bad_amount", "amount"),
    (good_txn(amount=""), "bad_amount", "amount"),
    (good_txn(amount="+1"), "bad_amount", "amount"),
    (good_txn(amount="1,000.00"), "bad_amount", "amount"),
    (good_txn(amount="1" * 14), "bad_amount", "amount"),
    (good_txn(amount="NaN"), "bad_amount", "amount"),
    (good_txn(currency="JPY", amount="100.5"), "bad_amount", "amount"),
    (good_txn(currency="KWD", amount="1.2345"), "bad_amount", "amount"),
    (good_txn(occurred_at="2026-03-02 10:00:00Z"), "bad_timestamp", "occurred_at"),
    (good_txn(occurred_at="2026-03-02T10:00:00"), "bad_timestamp", "occurred_at"),
    (good_txn(occurred_at="2026-03-02"), "bad_timestamp", "occurred_at"),
    (good_txn(occurred_at="20260302T100000Z"), "bad_timestamp", "occurred_at"),
    (good_txn(occurred_at="2026-03-02T10:00+08:00"), "bad_timestamp", "occurred_at"),
    (good_txn(occurred_at="2026-03-02T10:00:00+0800"), "bad_timestamp", "occurred_at"),
    (good_txn(occurred_at="2026-W10-1T10:00:00Z"), "bad_timestamp", "occurred_at"),
    (good_txn(occurred_at="2026-02-30T10:00:00Z"), "bad_timestamp", "occurred_at"),
    (good_txn(occurred_at="2026-03-02T24:00:00Z"), "bad_timestamp", "occurred_at"),
    (good_txn(occurred_at="2026-03-02T10:00:00.Z"), "bad_timestamp", "occurred_at"),
    (good_txn(occurred_at="2026-03-02T10:00:00." + "1" * 30 + "Z"), "bad_timestamp", "occurred_at"),
    (good_txn(occurred_at="yesterday T noon"), "bad_timestamp", "occurred_at"),
    (good_txn(occurred_at=1772445600), "wrong_type", "occurred_at"),
    (good_txn(type="refund"), "missing_field", "original_txn_id"),
    (good_txn(type="reversal", original_txn_id=None), "missing_field", "original_txn_id"),
    (good_txn(type="refund", original_txn_id="T 9"), "bad_id", "original_txn_id"),
    (good_txn(original_txn_id=7), "wrong_type", "original_txn_id"),
    (
        good_txn(type="refund", original_txn_id="T9", coupon_amount="1.00"),
        "inconsistent",
        "coupon_amount",
    ),
    (good_txn(coupon_amount="-1.00"), "negative_amount", "coupon_amount"),
    (good_txn(coupon_amount=5), "wrong_type", "coupon_amount"),
    (good_txn(coupon_amount="1.001"), "bad_amount", "coupon_amount"),
    (good_txn(currency="JPY", amount="1000", coupon_amount="0.5"), "bad_amount", "coupon_amount"),
    (good_txn(terminal_id=""), "bad_id", "terminal_id"),
    (good_txn(terminal_id=42), "wrong_type", "terminal_id"),
]

BAD_CBS: list[Bad] = [
    *[
        (without(good_cb(), f), "missing_field", f)
        for f in (
            "event_id",
            "txn_id",
            "channel_id",
            "channel_txn_id",
            "source",
            "status",
            "amount",
            "currency",
            "occurred_at",
        )
    ],
    (good_cb(channel_txn_id=None), "missing_field", "channel_txn_id"),
    (good_cb(channel_txn_id="has space"), "bad_id", "channel_txn_id"),
    (good_cb(source="push"), "unknown_enum", "source"),
    (good_cb(status="closed"), "unknown_enum", "status"),
    (good_cb(status=True), "wrong_type", "status"),
    (good_cb(amount="-128.50"), "negative_amount", "amount"),
    (good_cb(amount="128.505"), "bad_amount", "amount"),
    (good_cb(currency="RMB"), "bad_currency", "currency"),
    (good_cb(fee="-0.10"), "negative_amount", "fee"),
    (good_cb(fee=0.77), "wrong_type", "fee"),
    (good_cb(fee="0.001"), "bad_amount", "fee"),
    (good_cb(currency="JPY", amount="500", fee="0.5"), "bad_amount", "fee"),
    (good_cb(occurred_at="2026-03-02T10:00:02"), "bad_timestamp", "occurred_at"),
]

# Rules JSON Schema cannot express (cross-field comparisons): the schema accepts
# these, the validator rejects them.
VALIDATOR_ONLY: list[Bad] = [
    (good_txn(coupon_amount="128.51"), "inconsistent", "coupon_amount"),
    (good_txn(currency="JPY", amount="100", coupon_amount="101"), "inconsistent", "coupon_amount"),
    (good_txn(type="refund", original_txn_id="T20260302-0001"), "inconsistent", "original_txn_id"),
    (good_txn(original_txn_id="T20260302-0001"), "inconsistent", "original_txn_id"),
]


def _ids(cases: list[Bad]) -> list[str]:
    return [f"{code}-{field}-{i}" for i, (_, code, field) in enumerate(cases)]


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
    assert accepted == schema_ok(TXN_SCHEMA, msg), value


@given(value=st.text(max_size=70))
def test_schema_and_validator_agree_on_ids(value: str) -> None:
    msg = good_txn(merchant_id=value)
    try:
        parse_transaction(msg)
        accepted = True
    except InvalidEvent:
        accepted = False
    assert accepted == schema_ok(TXN_SCHEMA, msg), value


# -------------------------------------------------------------------- money


def test_money_basic_conversions() -> None:
    assert to_minor("12.34", "CNY") == 1234
    assert to_minor("12.3", "CNY") == 1230
    assert to_minor("12", "CNY") == 1200
    assert to_minor("0.01", "USD") == 1
    assert to_minor("12.3400", "CNY") == 1234
    assert to_minor("9999999999999.99", "CNY") == 999999999999999
    assert format_minor(1234, "CNY") == "12.34"
    assert format_minor(5, "CNY") == "0.05"
    assert format_minor(0, "CNY") == "0.00"
    assert format_minor(-1234, "CNY") == "-12.34"
    assert format_minor(-5, "CNY") == "-0.05"


def test_money_jpy_has_no_decimals() -> None:
    assert exponent("JPY") == 0
    assert to_minor("1000", "JPY") == 1000
    assert to_minor("1000.00", "JPY") == 1000
    assert format_minor(1000, "JPY") == "1000"
    assert format_minor(-7, "JPY") == "-7"
    with pytest.raises(MoneyError, match="more than 0 decimal places"):
        to_minor("1000.5", "JPY")


def test_money_kwd_has_three_decimals() -> None:
    assert exponent("KWD") == 3
    assert to_minor("1.234", "KWD") == 1234
    assert to_minor("1.5", "KWD") == 1500
    assert to_minor("0.001", "KWD") == 1
    assert format_minor(1234, "KWD") == "1.234"
    assert format_minor(1, "KWD") == "0.001"
    with pytest.raises(MoneyError):
        to_minor("1.2345", "KWD")


def test_money_exact_decimal_and_never_float() -> None:
    d = to_decimal(1234, "CNY")
    assert isinstance(d, Decimal) and d == Decimal("12.34")
    assert to_decimal(1234, "KWD") == Decimal("1.234")
    assert to_decimal(1234, "JPY") == Decimal("1234")
    # 0.1 + 0.2 is exact in minor units
    assert to_minor("0.1", "CNY") + to_minor("0.2", "CNY") == to_minor("0.3", "CNY")
    for not_a_string in (12.34, Decimal("12.34"), 1234, None):
        with pytest.raises(MoneyError, match="decimal string"):
            to_minor(not_a_string, "CNY")  # type: ignore[arg-type]


def test_money_rejections() -> None:
    for bad in ("-1", "1e2", "1.", ".1", "01", " 1", "1 ", "1\n", "1_000", "١٢", "1" * 14):
        with pytest.raises(MoneyError):
            to_minor(bad, "CNY")
    with pytest.raises(MoneyError, match="negative"):
        to_minor("-0.01", "CNY")
    with pytest.raises(MoneyError, match="unknown ISO 4217"):
        to_minor("1", "XYZ")
    with pytest.raises(MoneyError):
        exponent("usd")
    assert is_currency("CNY") and not is_currency("cny") and not is_currency(156)


def test_exponent_table_spot_checks() -> None:
    assert {c: EXPONENTS[c] for c in ("CNY", "USD", "EUR", "JPY", "KRW", "KWD", "BHD", "CLF")} == {
        "CNY": 2,
        "USD": 2,
        "EUR": 2,
        "JPY": 0,
        "KRW": 0,
        "KWD": 3,
        "BHD": 3,
        "CLF": 4,
    }
    assert all(re.fullmatch(r"[A-Z]{3}", c) for c in EXPONENTS)


@given(
    minor=st.integers(min_value=0, max_value=10**13 - 1),
    currency=st.sampled_from(sorted(EXPONENTS)),
)
def test_money_round_trip(minor: int, currency: str) -> None:
    s = format_minor(minor, currency)
    assert to_minor(s, currency) == minor
    assert Decimal(s) == to_decimal(minor, currency)
    assert format_minor(-minor, currency) == ("-" + s if minor else s)


# ---------------------------------------------------------------- outputs

T0 = parse_timestamp("2026-03-02T10:00:00Z", "t0")


def _at(seconds: float) -> str:
    return iso_ms(T0 + int(seconds * 1000))


def _feed(pipe: LocalPipeline, topic: str, msg: dict[str, Any]) -> None:
    pipe.feed(topic, msg["txn_id"], json.dumps(msg).encode())


def _rich_pipeline() -> LocalPipeline:
    """A run that produces every break kind, postings of every reason, status
    queries of both reasons and dead letters."""
    pipe = LocalPipeline(
        policies=Policies(
            {
                "unionpay": ChannelPolicy(cutoff="23:00", query_before_final_success=True),
                "opt": ChannelPolicy(mode=Mode.OPTIMISTIC),
            }
        ),
        clock=lambda: T0,
    )
    n = iter(range(10**6))

    def txn(tid: str, status: str, s: float, **kw: Any) -> None:
        _feed(
            pipe,
            TRANSACTIONS,
            good_txn(event_id=f"e{next(n)}", txn_id=tid, status=status, occurred_at=_at(s), **kw),
        )

    def cb(tid: str, source: str, status: str, s: float, **kw: Any) -> None:
        kw.setdefault("channel_txn_id", f"c-{tid}")
        _feed(
            pipe,
            CALLBACKS,
            good_cb(
                event_id=f"e{next(n)}",
                txn_id=tid,
                source=source,
                status=status,
                occurred_at=_at(s),
                **kw,
            ),
        )

    txn("P1", "success", 0, coupon_amount="8.50")
    cb("P1", "notify", "success", 1, amount="120.00", fee="0.72")  # confirmed, with fee
    txn("P2", "success", 0)
    cb("P2", "sync", "success", 1, channel_txn_id="a")
    cb("P2", "notify", "success", 2, channel_txn_id="b")  # duplicate_success
    cb("P3", "notify", "success", 2, channel_txn_id="a")  # one channel id on two orders
    txn("P4", "success", 0)
    cb("P4", "notify", "failed", 3)  # status_conflict, provisional -> none
    txn("P5", "success", 0, amount="10.00", currency="USD")
    cb("P5", "notify", "success", 3, amount="10.00", currency="EUR")  # currency_mismatch
    txn("P6", "success", 0)
    cb("P6", "notify", "success", 3, amount="1.00")  # amount_mismatch
    txn("P7", "success", 0)
    txn("R7", "success", 4, type="reversal", original_txn_id="P7")  # reversal_after_success
    txn("P8", "success", 0, channel_id="unionpay")
    cb("P8", "sync", "success", 1, channel_id="unionpay")  # verify_success query
    txn("P9", "pending", 0, channel_id="opt")  # optimistic provisional, then sla queries
    txn("F1", "pending", 5, type="refund", original_txn_id="P1", amount="20.00")
    cb("F1", "notify", "success", 6, amount="20.00")
    txn("P10", "pending", 60)
    cb("P10", "notify", "success", 14 * 3600 + 60)  # after the midnight cutoff: late
    pipe.tick(3 * 3600 * 1000)  # orphan (P3), pending_timeout (P9, P10 ...)
    pipe.feed(TRANSACTIONS, b"T1", b"{oops")
    pipe.feed(TRANSACTIONS, None, json.dumps(good_txn()).encode())
    pipe.feed(CALLBACKS, b"T20260302-0001", json.dumps(good_cb(amount="-1")).encode())
    pipe.feed("payments.other", b"k", b"{}")
    return pipe


def test_outputs_validate_against_output_schemas() -> None:
    pipe = _rich_pipeline()
    kinds = set(pipe.breaks_by_kind())
    assert kinds == {
        "status_conflict",
        "amount_mismatch",
        "currency_mismatch",
        "duplicate_success",
        "reversal_after_success",
        "orphan_callback",
        "pending_timeout",
        "late_callback",
    }
    assert {p.reason for p in pipe.postings} == {"provisional", "confirmed", "none"}
    assert {q.reason for q in pipe.queries} == {"sla", "verify_success"}
    assert {d.code for d in pipe.dead_letters} == {
        "bad_json",
        "key_mismatch",
        "negative_amount",
        "unknown_topic",
    }
    checks: list[tuple[str, list[dict[str, Any]]]] = [
        ("break", [b.to_json() for b in pipe.breaks.values()]),
        ("posting", [p.to_json() for p in pipe.postings]),
        ("status-query", [q.to_json() for q in pipe.queries]),
        ("dead-letter", [d.to_json() for d in pipe.dead_letters]),
    ]
    for name, records in checks:
        v = validator(name)
        assert records
        for rec in records:
            errors = list(v.iter_errors(rec))
            assert not errors, (name, rec, errors)
            json.dumps(rec)  # JSON-ready


def test_stamped_break_validates() -> None:
    pipe = _rich_pipeline()
    b = next(iter(pipe.breaks.values()))
    b.detected_at_ms = T0 + 1
    assert schema_ok(validator("break"), b.to_json())
    assert b.to_json()["detected_at"] == "2026-03-02T10:00:00.001Z"


def test_output_schemas_catch_drift() -> None:
    pipe = _rich_pipeline()
    rec = next(iter(pipe.breaks.values())).to_json()
    assert not schema_ok(validator("break"), {**rec, "surprise": 1})
    assert not schema_ok(validator("break"), {**rec, "kind": "long"})
    p = pipe.postings[0].to_json()
    bad = copy.deepcopy(p)
    bad["legs"][0]["amount_minor"] = "12"
    assert not schema_ok(validator("posting"), bad)


def test_dead_letter_record() -> None:
    value = b"x" * 100
    err = InvalidEvent("bad_json", "not valid JSON")
    d = DeadLetter.of(
        topic=TRANSACTIONS,
        partition=3,
        offset=17,
        key=b"T1",
        value=value,
        error=err,
        dead_at_ms=T0,
        keep_bytes=10,
    )
    out = d.to_json()
    assert out["dead_letter_id"] == "payments.transactions:3:17"
    assert base64.b64decode(out["value_b64"]) == b"x" * 10
    assert base64.b64decode(out["key_b64"]) == b"T1"
    assert out["value_size"] == 100 and out["value_truncated"] is True
    assert out["value_sha256"] == hashlib.sha256(value).hexdigest()
    assert (out["code"], out["field"], out["dead_at"]) == ("bad_json", None, iso_ms(T0))
    assert schema_ok(validator("dead-letter"), out)
    whole = DeadLetter.of(
        topic=CALLBACKS, partition=0, offset=0, key=None, value=b"{}", error=err, dead_at_ms=T0
    ).to_json()
    assert whole["key_b64"] is None and whole["value_truncated"] is False
    assert schema_ok(validator("dead-letter"), whole)


def _codes_in_source() -> set[str]:
    """Codes raised literally anywhere in tally/ and streams/ (each one of
    `REASON_CODES`), plus that list (bad_amount / negative_amount are raised through a
    variable)."""
    codes: set[str] = set()
    for path in [*(ROOT / "tally").rglob("*.py"), *(ROOT / "streams").glob("*.py")]:
        codes |= set(re.findall(r'InvalidEvent\(\s*"([a-z_]+)"', path.read_text("utf-8")))
    assert codes <= set(REASON_CODES), codes - set(REASON_CODES)
    return codes | set(REASON_CODES)


def test_dead_letter_codes_documented() -> None:
    """Every reason code tally can raise is in the dead-letter schema and in
    docs/events.md, and the schema lists no other code."""
    codes = _codes_in_source()
    assert {"bad_json", "bad_amount", "negative_amount", "unknown_topic"} <= codes
    assert set(load_schema("dead-letter")["properties"]["code"]["enum"]) == codes
    doc = (ROOT / "docs" / "events.md").read_text("utf-8")
    for code in codes:
        assert f"`{code}`" in doc, code


def test_docs_examples_are_valid() -> None:
    """Every ```json block in docs/events.md parses; the ones marked as topic
    messages validate against their schema and the validator."""
    doc = (ROOT / "docs" / "events.md").read_text("utf-8")
    blocks = re.findall(r"<!-- example: ([\w-]+) -->\s*```json\n(.*?)```", doc, re.S)
    assert len(blocks) >= 8
    parsers: dict[str, Callable[[Any], Any]] = {
        "transaction": parse_transaction,
        "callback": parse_callback,
    }
    seen = set()
    for name, body in blocks:
        msg = json.loads(body)
        seen.add(name)
        errors = list(validator(name).iter_errors(msg))
        assert not errors, (name, errors)
        if name in parsers:
            parsers[name](msg)
    assert seen == {"transaction", "callback", "break", "posting", "status-query", "dead-letter"}


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
