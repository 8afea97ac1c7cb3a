"""The event contract: what tally reads from `payments.transactions` and
`payments.callbacks`, validated on the way in.

In: a message's value (bytes, text or a decoded dict) and its key. Out: a
`Transaction` (our record of an order) or a `Callback` (one piece of channel
evidence), or `InvalidEvent` with its reason code, which the caller turns into a
`DeadLetter` (`tally.core.deadletter`).

The JSON Schema files in `tally/schemas/` describe the same contract for producers;
`tests/core/test_events.py` checks that this validator and the schemas agree.
Validation is hand-written because it runs on every message (tens of thousands a
second) and must say exactly which field is wrong: the field checks are
`tally.core.validation`, the fast path for well-formed messages is below.

Unknown extra fields are ignored. Anything else that does not fit raises
`InvalidEvent`, whose `code` is a short machine-readable reason (used as a metric
label and in the dead-letter record) and whose message names the field.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import msgspec

from tally.core.deadletter import DEFAULT_MAX_BYTES, REASON_CODES, DeadLetter, InvalidEvent
from tally.core.eventtime import from_epoch_ms, iso_ms, to_epoch_ms
from tally.core.money import EXPONENTS, MoneyError, to_minor
from tally.core.records import (
    CALLBACK_SOURCES,
    CALLBACK_STATUSES,
    TXN_STATUSES,
    TXN_TYPES,
    Callback,
    ChannelStatus,
    Event,
    EvidenceSource,
    OrderStatus,
    OrderType,
    Transaction,
)
from tally.core.validation import (
    _ID_RE,
    EVENT_TIME_MAX_MS,
    EVENT_TIME_MIN_MS,
    EVENT_TIME_RANGE,
    MAX_ID_LENGTH,
    _amount,
    _currency,
    _enum,
    _envelope,
    _fast_timestamp,
    _ident,
    _require,
    parse_event_time,
    parse_timestamp,
)

# names other modules import from here (the contract's one address)
__all__ = [
    "CALLBACK_SOURCES",
    "CALLBACK_STATUSES",
    "DEFAULT_MAX_BYTES",
    "EVENT_TIME_MAX_MS",
    "EVENT_TIME_MIN_MS",
    "EVENT_TIME_RANGE",
    "MAX_ID_LENGTH",
    "REASON_CODES",
    "TXN_STATUSES",
    "TXN_TYPES",
    "Callback",
    "ChannelStatus",
    "DeadLetter",
    "Event",
    "EvidenceSource",
    "InvalidEvent",
    "OrderStatus",
    "OrderType",
    "Transaction",
    "from_epoch_ms",
    "iso_ms",
    "parse_callback",
    "parse_event_time",
    "parse_timestamp",
    "parse_transaction",
    "to_epoch_ms",
]

_PAYMENT = OrderType.PAYMENT.value


def parse_transaction(
    raw: bytes | str | dict[str, Any],
    key: bytes | str | None = None,
    *,
    check_key: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Transaction:
    if not isinstance(raw, dict) and len(raw) <= max_bytes:
        txn = _fast_transaction(raw, key, check_key)
        if txn is not None:
            return txn
    return _parse_transaction(raw, key, check_key, max_bytes)


def _parse_transaction(
    raw: bytes | str | dict[str, Any], key: bytes | str | None, check_key: bool, max_bytes: int
) -> Transaction:
    d, event_id, txn_id = _envelope(raw, key, check_key, max_bytes)
    txn_type = _enum(d, "type", TXN_TYPES)
    merchant_id = _ident(d, "merchant_id")
    channel_id = _ident(d, "channel_id")
    currency = _currency(d)
    amount = _amount(d, "amount", currency)
    status = _enum(d, "status", TXN_STATUSES)
    original = _ident(d, "original_txn_id", optional=True)
    if txn_type != _PAYMENT and original is None:
        raise InvalidEvent("missing_field", f"required for a {txn_type}", "original_txn_id")
    if original is not None and original == txn_id:
        raise InvalidEvent("inconsistent", "must differ from txn_id", "original_txn_id")
    occurred = parse_event_time(_require(d, "occurred_at"), "occurred_at")
    coupon = _amount(d, "coupon_amount", currency, optional=True) or 0
    if coupon > amount:
        raise InvalidEvent("inconsistent", "coupon exceeds the order amount", "coupon_amount")
    if coupon and txn_type != _PAYMENT:
        raise InvalidEvent("inconsistent", "only a payment carries a coupon", "coupon_amount")
    terminal = _ident(d, "terminal_id", optional=True)
    return Transaction(
        event_id=event_id,
        txn_id=txn_id,
        type=txn_type,
        merchant_id=merchant_id,
        channel_id=channel_id,
        amount=amount,
        currency=currency,
        status=status,
        original_txn_id=original,
        occurred_at_ms=occurred,
        coupon_amount=coupon,
        terminal_id=terminal,
    )


def parse_callback(
    raw: bytes | str | dict[str, Any],
    key: bytes | str | None = None,
    *,
    check_key: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Callback:
    if not isinstance(raw, dict) and len(raw) <= max_bytes:
        cb = _fast_callback(raw, key, check_key)
        if cb is not None:
            return cb
    return _parse_callback(raw, key, check_key, max_bytes)


def _parse_callback(
    raw: bytes | str | dict[str, Any], key: bytes | str | None, check_key: bool, max_bytes: int
) -> Callback:
    d, event_id, txn_id = _envelope(raw, key, check_key, max_bytes)
    channel_id = _ident(d, "channel_id")
    channel_txn_id = _ident(d, "channel_txn_id")
    source = _enum(d, "source", CALLBACK_SOURCES)
    status = _enum(d, "status", CALLBACK_STATUSES)
    currency = _currency(d)
    amount = _amount(d, "amount", currency)
    fee = _amount(d, "fee", currency, optional=True)
    occurred = parse_event_time(_require(d, "occurred_at"), "occurred_at")
    return Callback(
        event_id=event_id,
        txn_id=txn_id,
        channel_id=channel_id,
        channel_txn_id=channel_txn_id,
        source=source,
        status=status,
        amount=amount,
        currency=currency,
        fee=fee,
        occurred_at_ms=occurred,
    )


# ---------------------------------------------------------------------- fast path
#
# Well-formed messages, nearly all of them, are decoded by msgspec straight into
# typed structs and checked with the same rules as above. Whatever msgspec or these
# checks do not accept (bad JSON, a wrong type, a missing field, any rule broken,
# UTF-16 input, NaN ...) is parsed again by the validators above, which decide and
# say what is wrong: the fast path only ever accepts what they accept, with the
# same values.


class _TxnWire(msgspec.Struct, gc=False):
    event_id: str
    txn_id: str
    type: str
    merchant_id: str
    channel_id: str
    amount: str
    currency: str
    status: str
    occurred_at: str
    original_txn_id: str | None = None
    coupon_amount: str | None = None
    terminal_id: str | None = None


class _CallbackWire(msgspec.Struct, gc=False):
    event_id: str
    txn_id: str
    channel_id: str
    channel_txn_id: str
    source: str
    status: str
    amount: str
    currency: str
    occurred_at: str
    fee: str | None = None


def _transaction_maker() -> Callable[..., Transaction]:
    """`Transaction(...)` with every field given in order, built without the frozen
    dataclass __init__ (one `object.__setattr__` call per field): each slot is set
    through its descriptor. Same object, about half the cost."""
    new = object.__new__
    cls = Transaction
    (s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11) = (
        cls.__dict__[f.name].__set__ for f in fields(cls)
    )

    def make(
        event_id: str,
        txn_id: str,
        type: str,
        merchant_id: str,
        channel_id: str,
        amount: int,
        currency: str,
        status: str,
        original_txn_id: str | None,
        occurred_at_ms: int,
        coupon_amount: int,
        terminal_id: str | None,
    ) -> Transaction:
        o = new(cls)
        s0(o, event_id)
        s1(o, txn_id)
        s2(o, type)
        s3(o, merchant_id)
        s4(o, channel_id)
        s5(o, amount)
        s6(o, currency)
        s7(o, status)
        s8(o, original_txn_id)
        s9(o, occurred_at_ms)
        s10(o, coupon_amount)
        s11(o, terminal_id)
        return o

    return make


def _callback_maker() -> Callable[..., Callback]:
    """`Callback(...)` with every field given in order; see `_transaction_maker`."""
    new = object.__new__
    cls = Callback
    (s0, s1, s2, s3, s4, s5, s6, s7, s8, s9) = (cls.__dict__[f.name].__set__ for f in fields(cls))

    def make(
        event_id: str,
        txn_id: str,
        channel_id: str,
        channel_txn_id: str,
        source: str,
        status: str,
        amount: int,
        currency: str,
        fee: int | None,
        occurred_at_ms: int,
    ) -> Callback:
        o = new(cls)
        s0(o, event_id)
        s1(o, txn_id)
        s2(o, channel_id)
        s3(o, channel_txn_id)
        s4(o, source)
        s5(o, status)
        s6(o, amount)
        s7(o, currency)
        s8(o, fee)
        s9(o, occurred_at_ms)
        return o

    return make


_make_transaction = _transaction_maker()
_make_callback = _callback_maker()
_txn_decoder = msgspec.json.Decoder(_TxnWire)
_callback_decoder = msgspec.json.Decoder(_CallbackWire)
_ident_ok = _ID_RE.fullmatch
# four ids at once, joined by spaces (which no id may hold): one regex call, not four
_four_idents_ok = re.compile(r"(?:[\x21-\x7e]{1,64} ){3}[\x21-\x7e]{1,64}").fullmatch
_amounts: dict[tuple[str, str], int] = {}  # (amount, currency) -> minor units


def _fast_amount(value: str, currency: str) -> int | None:
    k = (value, currency)
    minor = _amounts.get(k)
    if minor is None:
        if currency not in EXPONENTS:
            return None
        try:
            minor = to_minor(value, currency)
        except MoneyError:
            return None
        if len(_amounts) >= 65536:
            _amounts.clear()
        _amounts[k] = minor
    return minor


def _decode(decoder: Any, raw: bytes | str) -> Any:
    """A message decoded into its Struct, or None when msgspec refuses it (the slow
    validators then say why)."""
    try:
        return decoder.decode(raw)
    except (msgspec.DecodeError, TypeError, RecursionError):
        return None


def _key_is(key: bytes | str | None, txn_id: str) -> bool:
    return key == txn_id.encode() if isinstance(key, bytes) else key == txn_id


def _fast_transaction(
    raw: bytes | str, key: bytes | str | None, check_key: bool
) -> Transaction | None:
    w = _decode(_txn_decoder, raw)
    if w is None:
        return None
    txn_id = w.txn_id
    if (
        not _four_idents_ok(f"{w.event_id} {txn_id} {w.merchant_id} {w.channel_id}")
        or (check_key and not _key_is(key, txn_id))
        or w.type not in TXN_TYPES
        or w.status not in TXN_STATUSES
    ):
        return None
    currency = w.currency
    amount = _fast_amount(w.amount, currency)
    if amount is None:
        return None
    original = w.original_txn_id
    if original is None:
        if w.type != _PAYMENT:
            return None
    elif not _ident_ok(original) or original == txn_id:
        return None
    occurred = _fast_timestamp(w.occurred_at)
    if occurred is None or not EVENT_TIME_MIN_MS <= occurred < EVENT_TIME_MAX_MS:
        return None
    coupon = 0
    if w.coupon_amount is not None:
        c = _fast_amount(w.coupon_amount, currency)
        if c is None or c > amount or (c and w.type != _PAYMENT):
            return None
        coupon = c
    terminal = w.terminal_id
    if terminal is not None and not _ident_ok(terminal):
        return None
    return _make_transaction(
        w.event_id,
        txn_id,
        w.type,
        w.merchant_id,
        w.channel_id,
        amount,
        currency,
        w.status,
        original,
        occurred,
        coupon,
        terminal,
    )


def _fast_callback(raw: bytes | str, key: bytes | str | None, check_key: bool) -> Callback | None:
    w = _decode(_callback_decoder, raw)
    if w is None:
        return None
    txn_id = w.txn_id
    if (
        not _four_idents_ok(f"{w.event_id} {txn_id} {w.channel_id} {w.channel_txn_id}")
        or (check_key and not _key_is(key, txn_id))
        or w.source not in CALLBACK_SOURCES
        or w.status not in CALLBACK_STATUSES
    ):
        return None
    currency = w.currency
    amount = _fast_amount(w.amount, currency)
    if amount is None:
        return None
    fee = None
    if w.fee is not None:
        fee = _fast_amount(w.fee, currency)
        if fee is None:
            return None
    occurred = _fast_timestamp(w.occurred_at)
    if occurred is None or not EVENT_TIME_MIN_MS <= occurred < EVENT_TIME_MAX_MS:
        return None
    return _make_callback(
        w.event_id,
        txn_id,
        w.channel_id,
        w.channel_txn_id,
        w.source,
        w.status,
        amount,
        currency,
        fee,
        occurred,
    )
