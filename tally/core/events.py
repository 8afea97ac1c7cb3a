"""The event contract: what tally reads from `payments.transactions` and
`payments.callbacks`, validated on the way in.

The JSON Schema files in `tally/schemas/` describe the same contract for producers;
`tests/core/test_events.py` checks that this validator and the schemas agree. Validation
here is hand-written because it runs on every message (tens of thousands a second)
and must say exactly which field is wrong.

Unknown extra fields are ignored. Anything else that does not fit raises
`InvalidEvent`, whose `code` is a short machine-readable reason (used as a metric
label and in the dead-letter record) and whose message names the field.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from tally.core.money import EXPONENTS, MoneyError, format_minor, is_currency, to_minor

TXN_TYPES = ("payment", "refund", "reversal")
TXN_STATUSES = ("pending", "success", "failed", "closed")
CALLBACK_SOURCES = ("sync", "notify", "query")
CALLBACK_STATUSES = ("pending", "success", "failed", "reversed", "refunded")

MAX_ID_LENGTH = 64
_ID_RE = re.compile(r"^[\x21-\x7e]{1,64}$")  # printable ASCII, no spaces


class InvalidEvent(ValueError):
    """A message that does not satisfy the contract.

    `code` is one of: bad_json, too_large, not_object, missing_field, wrong_type,
    bad_id, unknown_enum, bad_amount, negative_amount, bad_currency, bad_timestamp,
    key_mismatch, inconsistent.
    """

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.code = code
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Transaction:
    """Our own record of an order (a payment, refund or reversal) at one moment."""

    event_id: str
    txn_id: str
    type: str
    merchant_id: str
    channel_id: str
    amount: int  # minor units
    currency: str
    status: str
    original_txn_id: str | None
    occurred_at_ms: int  # epoch milliseconds, UTC
    coupon_amount: int = 0  # minor units, platform-funded (S11)
    terminal_id: str | None = None

    @property
    def occurred_at(self) -> datetime:
        return from_epoch_ms(self.occurred_at_ms)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "txn_id": self.txn_id,
            "type": self.type,
            "merchant_id": self.merchant_id,
            "channel_id": self.channel_id,
            "amount": format_minor(self.amount, self.currency),
            "currency": self.currency,
            "status": self.status,
            "original_txn_id": self.original_txn_id,
            "occurred_at": iso_ms(self.occurred_at_ms),
        }
        if self.coupon_amount:
            out["coupon_amount"] = format_minor(self.coupon_amount, self.currency)
        if self.terminal_id is not None:
            out["terminal_id"] = self.terminal_id
        return out


@dataclass(frozen=True, slots=True)
class Callback:
    """One piece of channel evidence about an order: sync, notify or query."""

    event_id: str
    txn_id: str
    channel_id: str
    channel_txn_id: str
    source: str
    status: str
    amount: int  # minor units
    currency: str
    fee: int | None  # minor units; None when the channel did not say
    occurred_at_ms: int

    @property
    def occurred_at(self) -> datetime:
        return from_epoch_ms(self.occurred_at_ms)

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "txn_id": self.txn_id,
            "channel_id": self.channel_id,
            "channel_txn_id": self.channel_txn_id,
            "source": self.source,
            "status": self.status,
            "amount": format_minor(self.amount, self.currency),
            "currency": self.currency,
            "fee": None if self.fee is None else format_minor(self.fee, self.currency),
            "occurred_at": iso_ms(self.occurred_at_ms),
        }


Event = Transaction | Callback


# --------------------------------------------------------------------------- time

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


# ---------------------------------------------------------------------- validation


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
    except (ValueError, UnicodeDecodeError) as exc:
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


DEFAULT_MAX_BYTES = 64 * 1024


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
    if txn_type != "payment" and original is None:
        raise InvalidEvent("missing_field", f"required for a {txn_type}", "original_txn_id")
    if original is not None and original == txn_id:
        raise InvalidEvent("inconsistent", "must differ from txn_id", "original_txn_id")
    occurred = parse_timestamp(_require(d, "occurred_at"), "occurred_at")
    coupon = _amount(d, "coupon_amount", currency, optional=True) or 0
    if coupon > amount:
        raise InvalidEvent("inconsistent", "coupon exceeds the order amount", "coupon_amount")
    if coupon and txn_type != "payment":
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
    occurred = parse_timestamp(_require(d, "occurred_at"), "occurred_at")
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
    except (msgspec.DecodeError, TypeError):
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
        if w.type != "payment":
            return None
    elif not _ident_ok(original) or original == txn_id:
        return None
    occurred = _fast_timestamp(w.occurred_at)
    if occurred is None:
        return None
    coupon = 0
    if w.coupon_amount is not None:
        c = _fast_amount(w.coupon_amount, currency)
        if c is None or c > amount or (c and w.type != "payment"):
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
    if occurred is None:
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


# ----------------------------------------------------------------------- dead letters


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that was not processed, kept whole with the reason."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    code: str
    reason: str
    field: str | None
    dead_at_ms: int
    value_size: int = -1  # size of the original value when `value` was cut
    value_sha256: str = ""

    @classmethod
    def of(
        cls,
        *,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes,
        error: InvalidEvent,
        dead_at_ms: int,
        keep_bytes: int = DEFAULT_MAX_BYTES,
    ) -> DeadLetter:
        """Build a dead letter; values over `keep_bytes` are cut to that size (the
        record keeps the original size and SHA-256 so the cut is visible)."""
        return cls(
            topic=topic,
            partition=partition,
            offset=offset,
            key=key,
            value=value[:keep_bytes],
            code=error.code,
            reason=str(error),
            field=error.field,
            dead_at_ms=dead_at_ms,
            value_size=len(value),
            value_sha256=hashlib.sha256(value).hexdigest(),
        )

    @property
    def dead_letter_id(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"

    def to_json(self) -> dict[str, Any]:
        return {
            "dead_letter_id": self.dead_letter_id,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "key_b64": None if self.key is None else base64.b64encode(self.key).decode(),
            "value_b64": base64.b64encode(self.value).decode(),
            "value_size": self.value_size if self.value_size >= 0 else len(self.value),
            "value_truncated": 0 <= len(self.value) < self.value_size,
            "value_sha256": self.value_sha256,
            "code": self.code,
            "reason": self.reason,
            "field": self.field,
            "dead_at": iso_ms(self.dead_at_ms),
        }
