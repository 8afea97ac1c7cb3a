"""The event contract's test corpus, shared by the tests of `tests/core`: the JSON
Schemas of `tally/schemas/`, good messages, and bad ones with the reason code and field
the validator must name (`VALIDATOR_ONLY`: the rules the schemas cannot express)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

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
