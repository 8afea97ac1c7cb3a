"""Malformed messages: deliberately bad input, each variant built so that the parser
rejects it with one `InvalidEvent` code (`MALFORMED_VARIANTS`); every one must end as
a dead letter. `malformed` checks that the message fails as intended, also after a
JSONL round trip, before it is written."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from tally.core.events import (
    Callback,
    InvalidEvent,
    Transaction,
    parse_callback,
    parse_transaction,
)
from tally.core.money import format_minor
from tally.core.pipeline import CALLBACKS, TRANSACTIONS, Envelope
from tally.sim.orders import OrderGen, OrderScript

__all__ = ["MALFORMED_VARIANTS", "dumps", "malformed", "must_fail"]

# (variant, the InvalidEvent code it must produce)
MALFORMED_VARIANTS: tuple[tuple[str, str], ...] = (
    ("truncated_json", "bad_json"),
    ("empty", "bad_json"),
    ("gbk_statement_line", "bad_json"),
    ("python_repr", "bad_json"),
    ("json_array", "not_object"),
    ("json_string", "not_object"),
    ("json_null", "not_object"),
    ("missing_merchant_id", "missing_field"),
    ("missing_channel_txn_id", "missing_field"),
    ("null_amount", "missing_field"),
    ("refund_without_original", "missing_field"),
    ("amount_as_number", "wrong_type"),
    ("event_id_as_number", "wrong_type"),
    ("occurred_at_as_epoch", "wrong_type"),
    ("amount_with_comma", "bad_amount"),
    ("amount_exponent", "bad_amount"),
    ("amount_garbage", "bad_amount"),
    ("too_many_decimals", "bad_amount"),
    ("jpy_with_decimals", "bad_amount"),
    ("amount_too_large", "bad_amount"),
    ("negative_amount", "negative_amount"),
    ("negative_fee", "negative_amount"),
    ("unknown_type", "unknown_enum"),
    ("unknown_status", "unknown_enum"),
    ("unknown_source", "unknown_enum"),
    ("unknown_currency", "bad_currency"),
    ("lowercase_currency", "bad_currency"),
    ("timestamp_without_offset", "bad_timestamp"),
    ("timestamp_invalid_date", "bad_timestamp"),
    ("timestamp_with_space", "bad_timestamp"),
    ("key_differs", "key_mismatch"),
    ("key_missing", "key_mismatch"),
    ("txn_id_with_space", "bad_id"),
    ("txn_id_too_long", "bad_id"),
    ("coupon_exceeds_amount", "inconsistent"),
    ("original_is_self", "inconsistent"),
    ("too_large", "too_large"),
)

# variants made from a channel callback (the others from our order record)
_CALLBACK_VARIANTS = frozenset(
    {"missing_channel_txn_id", "occurred_at_as_epoch", "negative_fee", "unknown_source"}
)
# variants whose raw text is not the JSON of the message
_RAW_VARIANTS = frozenset(
    {
        "truncated_json",
        "empty",
        "gbk_statement_line",
        "python_repr",
        "json_array",
        "json_string",
        "json_null",
        "amount_as_number",
    }
)
# variants whose message key (and perhaps txn_id) is wrong
_KEY_VARIANTS = frozenset({"key_differs", "key_missing", "txn_id_with_space", "txn_id_too_long"})


def malformed(g: OrderGen, variant: str, code: str, at: int) -> None:
    """A malformed message of `variant` at event time `at`, written to `g`; it must be
    rejected with `code`."""
    o = g.payment(at, coupon=False)
    g.counts["orders"] -= 1
    o.txn_id = g.new_id("X")
    if variant in _CALLBACK_VARIANTS:
        topic, d = CALLBACKS, _callback(o, at)
    else:
        topic, d = TRANSACTIONS, _transaction(o, at)
    key: str | None = o.txn_id
    value: str | bytes | None = None
    if variant in _RAW_VARIANTS:
        value = _raw(g, variant, d, o.txn_id)
    elif variant in _KEY_VARIANTS:
        key = _key(g, variant, d, o.txn_id)
    else:
        _field(g, variant, d, o, at)
    if value is None:
        value = dumps(d)
    env = Envelope(topic, key, value)
    must_fail(env, code, variant, g.cfg.max_message_bytes)
    g.put(at, env)
    g.counts["malformed:" + code] += 1


def _transaction(o: OrderScript, at: int) -> dict[str, Any]:
    return Transaction(
        event_id=f"{o.txn_id}.0",
        txn_id=o.txn_id,
        type="payment",
        merchant_id=o.merchant_id,
        channel_id=o.channel_id,
        amount=o.amount,
        currency=o.currency,
        status="pending",
        original_txn_id=None,
        occurred_at_ms=at,
        terminal_id=o.terminal,
    ).to_json()


def _callback(o: OrderScript, at: int) -> dict[str, Any]:
    return Callback(
        event_id=f"{o.txn_id}.1",
        txn_id=o.txn_id,
        channel_id=o.channel_id,
        channel_txn_id=o.ctid,
        source="notify",
        status="success",
        amount=o.amount,
        currency=o.currency,
        fee=o.fee,
        occurred_at_ms=at,
    ).to_json()


def _raw(g: OrderGen, variant: str, d: dict[str, Any], txn_id: str) -> str | bytes:
    """The raw value of a variant that is not the JSON of a message."""
    match variant:
        case "truncated_json":
            text = dumps(d)
            return text[: g.r(1, len(text) - 2)]
        case "empty":
            return ""
        case "gbk_statement_line":  # an Alipay bill line (GBK) on the wrong topic
            return "#支付宝交易记录明细查询,账号:[20881234]\r\n".encode("gbk")
        case "python_repr":
            return repr(d)
        case "json_array":
            return dumps([d])
        case "json_string":
            return json.dumps(txn_id)
        case "json_null":
            return "null"
        case "amount_as_number":
            text = dumps(d)
            return text.replace(f'"amount":"{d["amount"]}"', f'"amount":{d["amount"]}')
        case _:  # pragma: no cover - _RAW_VARIANTS and this match agree
            raise AssertionError(variant)


def _key(g: OrderGen, variant: str, d: dict[str, Any], txn_id: str) -> str | None:
    """The message key of a variant whose key (or txn_id) is wrong."""
    match variant:
        case "key_differs":
            return g.new_id("X")
        case "key_missing":
            return None
        case "txn_id_with_space":
            d["txn_id"] = key = txn_id[:3] + " " + txn_id[3:]
            return key
        case "txn_id_too_long":
            d["txn_id"] = key = txn_id + "0" * 65
            return key
        case _:  # pragma: no cover - _KEY_VARIANTS and this match agree
            raise AssertionError(variant)


def _field(g: OrderGen, variant: str, d: dict[str, Any], o: OrderScript, at: int) -> None:
    """Spoil a field of the message `d` as the variant says."""
    local = datetime.fromtimestamp(at / 1000, ZoneInfo(g.cfg.timezone))
    match variant:
        case "missing_merchant_id":
            del d["merchant_id"]
        case "missing_channel_txn_id":
            del d["channel_txn_id"]
        case "null_amount":
            d["amount"] = None
        case "refund_without_original":
            d["type"] = "refund"
        case "event_id_as_number":
            d["event_id"] = g.r(1, 10**9)
        case "occurred_at_as_epoch":
            d["occurred_at"] = at
        case "amount_with_comma":
            d["currency"], d["amount"] = "CNY", "12,34"
        case "amount_exponent":
            d["currency"], d["amount"] = "CNY", "1e3"
        case "amount_garbage":
            d["currency"], d["amount"] = "CNY", "12.34 CNY"
        case "too_many_decimals":
            d["currency"], d["amount"] = "CNY", "12.345"
        case "jpy_with_decimals":
            d["currency"], d["amount"] = "JPY", "1500.5"
        case "amount_too_large":
            d["currency"], d["amount"] = "CNY", "12345678901234.00"
        case "negative_amount":
            d["currency"], d["amount"] = "CNY", "-5.00"
        case "negative_fee":
            d["currency"], d["amount"], d["fee"] = "CNY", "5.00", "-0.10"
        case "unknown_type":
            d["type"] = "chargeback"
        case "unknown_status":
            d["status"] = "SUCCESS"
        case "unknown_source":
            d["source"] = "webhook"
        case "unknown_currency":
            d["currency"] = "RMB"
        case "lowercase_currency":
            d["currency"] = "cny"
        case "timestamp_without_offset":
            d["occurred_at"] = local.strftime("%Y-%m-%dT%H:%M:%S")
        case "timestamp_invalid_date":
            d["occurred_at"] = local.strftime("%Y-02-30T%H:%M:%S+08:00")
        case "timestamp_with_space":
            d["occurred_at"] = local.strftime("%Y-%m-%d %H:%M:%S+08:00")
        case "coupon_exceeds_amount":
            d["coupon_amount"] = format_minor(o.amount + 1, o.currency)
        case "original_is_self":
            d["type"], d["original_txn_id"] = "refund", o.txn_id
        case "too_large":
            d["memo"] = "x" * (g.cfg.max_message_bytes + g.r(1, 1000))
        case _:  # pragma: no cover - the variant table and the matches agree
            raise AssertionError(variant)


def dumps(v: Any) -> str:
    """Compact JSON, as the platform writes it."""
    return json.dumps(v, separators=(",", ":"))


def must_fail(env: Envelope, code: str, variant: str, max_bytes: int) -> None:
    """A malformed message must be rejected with its code, also after a JSONL round
    trip (which turns raw bytes into text)."""
    for e in (env, Envelope.from_line(env.to_line())):
        parse = parse_transaction if e.topic == TRANSACTIONS else parse_callback
        try:
            parse(e.value_bytes(), e.key, check_key=True, max_bytes=max_bytes)
        except InvalidEvent as exc:
            if exc.code != code:
                raise AssertionError(f"malformed {variant}: got {exc.code}, want {code}") from exc
        else:
            raise AssertionError(f"malformed {variant} was accepted")
