"""The records tally reads: our `Transaction` (one state of an order) and the
channel's `Callback` (one piece of evidence about it), with the enums of their fields.

In: field values already checked (`tally.core.events` parses and validates the
messages). Out: frozen records and their JSON form (amounts as decimal strings,
times as RFC 3339), the form producers write.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from tally.core.eventtime import from_epoch_ms, iso_ms
from tally.core.money import format_minor


class OrderType(StrEnum):
    """What an order is (domain.md, "Actors and evidence")."""

    PAYMENT = "payment"
    REFUND = "refund"  # money back after a completed sale; names its original
    REVERSAL = "reversal"  # cancels a sale that did not complete; names its original


class OrderStatus(StrEnum):
    """Our status of an order: created pending, later success, failed or closed."""

    PENDING = "pending"
    SUCCESS = "success"
    FAILED = "failed"
    CLOSED = "closed"


class EvidenceSource(StrEnum):
    """The three witnesses a channel offers about an order."""

    SYNC = "sync"  # the synchronous response to our request
    NOTIFY = "notify"  # the asynchronous notification (callback)
    QUERY = "query"  # the answer to our status query


class ChannelStatus(StrEnum):
    """What a piece of channel evidence says about an order."""

    PENDING = "pending"
    SUCCESS = "success"
    FAILED = "failed"
    REVERSED = "reversed"
    REFUNDED = "refunded"  # it had succeeded, and was refunded


# the enums' values, as the validators and the fast path test them (plain strings)
TXN_TYPES = tuple(t.value for t in OrderType)
TXN_STATUSES = tuple(s.value for s in OrderStatus)
CALLBACK_SOURCES = tuple(s.value for s in EvidenceSource)
CALLBACK_STATUSES = tuple(s.value for s in ChannelStatus)


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
