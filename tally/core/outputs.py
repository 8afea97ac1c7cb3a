"""What the real-time reconciler emits for one message, besides breaks and postings:
status queries for the channel gateway, and two internal messages the stream routes
back to itself (a reversal's outcome to its original; a channel transaction id's
success claim to the cross-order index). `Outputs` gathers all of one message's.

In: values from `tally.core.realtime`. Out: frozen records with their JSON form
(`payments.status-queries`, the internal link and claim topics).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from tally.core.breaks import Break
from tally.core.eventtime import iso_ms
from tally.core.ledger import Posting


class QueryReason(StrEnum):
    """Why a status query is sent."""

    SLA = "sla"  # S4: no final status within the channel's SLA (then every interval)
    VERIFY_SUCCESS = "verify_success"  # S3: a sync success the channel must confirm


@dataclass(frozen=True, slots=True)
class StatusQuery:
    """S4/S3: a request for the channel gateway to query an order's status."""

    txn_id: str
    channel_id: str
    merchant_id: str | None
    channel_txn_id: str | None
    attempt: int
    reason: str  # a QueryReason value
    requested_at_ms: int  # event time

    @property
    def query_id(self) -> str:
        return f"{self.txn_id}:q{self.attempt}"

    def to_json(self) -> dict[str, Any]:
        return {
            "query_id": self.query_id,
            "txn_id": self.txn_id,
            "channel_id": self.channel_id,
            "merchant_id": self.merchant_id,
            "channel_txn_id": self.channel_txn_id,
            "attempt": self.attempt,
            "reason": self.reason,
            "requested_at": iso_ms(self.requested_at_ms),
        }


@dataclass(frozen=True, slots=True)
class ReversalLink:
    """Internal message from a reversal order to its original (keyed by the original)."""

    original_txn_id: str
    reversal_txn_id: str
    status: str  # pending | success | failed
    occurred_at_ms: int

    @property
    def event_id(self) -> str:
        return f"link:{self.reversal_txn_id}:{self.status}:{self.occurred_at_ms}"

    def to_json(self) -> dict[str, Any]:
        return {
            "original_txn_id": self.original_txn_id,
            "reversal_txn_id": self.reversal_txn_id,
            "status": self.status,
            "occurred_at_ms": self.occurred_at_ms,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ReversalLink:
        return cls(d["original_txn_id"], d["reversal_txn_id"], d["status"], d["occurred_at_ms"])


@dataclass(frozen=True, slots=True)
class SuccessClaim:
    """Internal message: a channel transaction id reported as success for an order
    (keyed by channel/channel_txn_id), to catch one id on two orders."""

    channel_id: str
    channel_txn_id: str
    txn_id: str
    merchant_id: str | None
    currency: str
    amount: int
    occurred_at_ms: int

    @property
    def key(self) -> str:
        return f"{self.channel_id}/{self.channel_txn_id}"

    def to_json(self) -> dict[str, Any]:
        return {
            "channel_id": self.channel_id,
            "channel_txn_id": self.channel_txn_id,
            "txn_id": self.txn_id,
            "merchant_id": self.merchant_id,
            "currency": self.currency,
            "amount": self.amount,
            "occurred_at_ms": self.occurred_at_ms,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SuccessClaim:
        return cls(**d)


@dataclass(slots=True)
class Outputs:
    breaks: list[Break] = field(default_factory=list)
    postings: list[Posting] = field(default_factory=list)
    queries: list[StatusQuery] = field(default_factory=list)
    links: list[ReversalLink] = field(default_factory=list)
    claims: list[SuccessClaim] = field(default_factory=list)
    duplicate: bool = False  # the message had been applied already

    def __init__(
        self,
        breaks: list[Break] | None = None,
        postings: list[Posting] | None = None,
        queries: list[StatusQuery] | None = None,
        links: list[ReversalLink] | None = None,
        claims: list[SuccessClaim] | None = None,
        duplicate: bool = False,
    ) -> None:
        # written out: one per message, the dataclass default factories cost more
        self.breaks = [] if breaks is None else breaks
        self.postings = [] if postings is None else postings
        self.queries = [] if queries is None else queries
        self.links = [] if links is None else links
        self.claims = [] if claims is None else claims
        self.duplicate = duplicate

    def extend(self, other: Outputs) -> None:
        self.breaks += other.breaks
        self.postings += other.postings
        self.queries += other.queries
        self.links += other.links
        self.claims += other.claims

    def __bool__(self) -> bool:
        return bool(self.breaks or self.postings or self.queries or self.links or self.claims)
