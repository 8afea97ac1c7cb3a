"""The order state machine: one order merged with every piece of channel evidence.

An `OrderState` holds our record of the order (type, merchant, amount, our status)
and every witness the channel sent about it (`sync`, `notify`, `query` evidence),
plus the bookkeeping the stream needs (events already applied, breaks already
raised, what is currently posted to the balances, status queries sent).

Transitions are plain functions of (state, event) with no I/O:

    our status:      (none) -> pending -> success | failed | closed
    channel status:  derived from the evidence; the latest *final* witness
                     (success, failed, reversed, refunded) is the channel's word

`view(state, policy)` condenses a state into what the rest of tally needs: is the
order resolved, how does it count in the balances (S10: provisional vs confirmed),
is it reversed. Break rules live in `tally.core.breaks`, balance arithmetic in
`tally.core.ledger`.

In: `Transaction`s, `Callback`s and reversal outcomes for one order, and its channel's
`ChannelPolicy`. Out: the merged `OrderState` (with its JSON form, for the store) and
its `OrderView` (`Standing`: none, provisional or confirmed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgspec

from tally.core.policy import ChannelPolicy, Mode
from tally.core.records import Callback, ChannelStatus, EvidenceSource, OrderStatus, Transaction

# The enums' values as plain strings: the hot path compares the statuses a message
# carries (plain strings) with these, and a string against an enum member costs twice
# as much as against a string.
_PENDING, _SUCCESS = OrderStatus.PENDING.value, OrderStatus.SUCCESS.value
_FAILED, _CLOSED = OrderStatus.FAILED.value, OrderStatus.CLOSED.value
_REVERSED, _SYNC = ChannelStatus.REVERSED.value, EvidenceSource.SYNC.value
FINAL_OURS = frozenset({_SUCCESS, _FAILED, _CLOSED})
FINAL_CHANNEL = frozenset(
    s.value
    for s in (
        ChannelStatus.SUCCESS,
        ChannelStatus.FAILED,
        ChannelStatus.REVERSED,
        ChannelStatus.REFUNDED,
    )
)
# "refunded": it had succeeded
SUCCESS_LIKE = frozenset({ChannelStatus.SUCCESS.value, ChannelStatus.REFUNDED.value})


class Standing(StrEnum):
    """How an order counts in the balances right now."""

    NONE = "none"  # not counted (failed, closed, reversed, unknown, or pessimistic pending)
    PROVISIONAL = "provisional"  # believed successful, not yet confirmed by the channel
    CONFIRMED = "confirmed"  # the channel confirmed success


# enum members and values as plain module names: attribute access on an enum class
# and `.value` are slow on the hot path
_NONE, _PROVISIONAL, _CONFIRMED = Standing.NONE, Standing.PROVISIONAL, Standing.CONFIRMED
_OPTIMISTIC = Mode.OPTIMISTIC
STANDING_VALUE: dict[Standing, str] = {s: s.value for s in Standing}


class Evidence(msgspec.Struct, gc=False):
    """One witness statement from the channel.

    A msgspec struct rather than a dataclass: it holds only strings and numbers, so it
    need not be tracked by the garbage collector (an order keeps every witness, and a
    worker keeps every order), and it is cheaper to build."""

    event_id: str
    source: str
    status: str
    amount: int
    currency: str
    fee: int | None
    channel_id: str
    channel_txn_id: str
    occurred_at_ms: int
    seq: int  # arrival order within the order, for ties

    @classmethod
    def of(cls, cb: Callback, seq: int) -> Evidence:
        return cls(
            event_id=cb.event_id,
            source=cb.source,
            status=cb.status,
            amount=cb.amount,
            currency=cb.currency,
            fee=cb.fee,
            channel_id=cb.channel_id,
            channel_txn_id=cb.channel_txn_id,
            occurred_at_ms=cb.occurred_at_ms,
            seq=seq,
        )

    @property
    def final(self) -> bool:
        return self.status in FINAL_CHANNEL

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "source": self.source,
            "status": self.status,
            "amount": self.amount,
            "currency": self.currency,
            "fee": self.fee,
            "channel_id": self.channel_id,
            "channel_txn_id": self.channel_txn_id,
            "occurred_at_ms": self.occurred_at_ms,
            "seq": self.seq,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Evidence:
        return cls(**d)


@dataclass(slots=True)
class Reversal:
    """A reversal (冲正) order that targets this order, as last reported to it."""

    txn_id: str
    status: str  # pending | success | failed: the reversal's own outcome
    occurred_at_ms: int


@dataclass(slots=True)
class OrderState:
    txn_id: str
    # --- our record (None until the first transaction event arrives)
    type: str | None = None
    merchant_id: str | None = None
    channel_id: str | None = None
    amount: int = 0
    currency: str | None = None
    coupon_amount: int = 0
    original_txn_id: str | None = None
    terminal_id: str | None = None
    our_status: str | None = None
    our_status_at_ms: int = 0
    created_at_ms: int | None = None
    business_date: str | None = None  # channel-local business date, ISO
    # --- channel evidence, in arrival order
    evidence: list[Evidence] = field(default_factory=list)
    # --- reversal targeting this order, if any
    reversal: Reversal | None = None
    # --- bookkeeping
    seen: set[str] = field(default_factory=set)  # event ids applied (idempotence)
    raised: set[str] = field(default_factory=set)  # break ids already emitted
    posted: dict[str, int] = field(default_factory=dict)  # current position legs
    posting_seq: int = 0
    queries_sent: int = 0
    query_due_ms: int | None = None  # next status query / timeout check (event time)
    orphan_due_ms: int | None = None  # orphan_callback deadline (event time)
    last_link_status: str | None = None  # what we last told our original (reversals)
    # --- the stream's transactional outbox (streams.checkpoint; the pure core never
    # reads it): the facts the order's last committed change produced (breaks,
    # postings, status queries, links, claims as [topic kind, partition, key, JSON]),
    # stored with the state so that a worker that recovers the state can send them
    # again when it cannot know they reached the broker; `outbox_seq` names that change
    outbox: list[list[Any]] = field(default_factory=list)
    outbox_seq: int = 0
    # `view()`'s last answer, the policy and what else it was computed from (a tuple
    # of strings and ints: not tracked by the garbage collector); not part of the state
    _view: OrderView | None = field(default=None, repr=False, compare=False)
    _view_policy: ChannelPolicy | None = field(default=None, repr=False, compare=False)
    _view_of: tuple[int, str | None, bool, str | None] | None = field(
        default=None, repr=False, compare=False
    )

    # ------------------------------------------------------------------ views

    @property
    def known(self) -> bool:
        """True once our own record of the order has arrived."""
        return self.type is not None

    def channel_final(self) -> Evidence | None:
        """The channel's latest final word (by event time, then arrival)."""
        best: Evidence | None = None
        for ev in self.evidence:
            if ev.final and (
                best is None or (ev.occurred_at_ms, ev.seq) >= (best.occurred_at_ms, best.seq)
            ):
                best = ev
        return best

    # ------------------------------------------------------------- persistence

    def to_json(self, with_outbox: bool = True) -> dict[str, Any]:
        return {
            "txn_id": self.txn_id,
            "type": self.type,
            "merchant_id": self.merchant_id,
            "channel_id": self.channel_id,
            "amount": self.amount,
            "currency": self.currency,
            "coupon_amount": self.coupon_amount,
            "original_txn_id": self.original_txn_id,
            "terminal_id": self.terminal_id,
            "our_status": self.our_status,
            "our_status_at_ms": self.our_status_at_ms,
            "created_at_ms": self.created_at_ms,
            "business_date": self.business_date,
            "evidence": [e.to_json() for e in self.evidence],
            "reversal": None
            if self.reversal is None
            else [self.reversal.txn_id, self.reversal.status, self.reversal.occurred_at_ms],
            "seen": sorted(self.seen),
            "raised": sorted(self.raised),
            "posted": self.posted,
            "posting_seq": self.posting_seq,
            "queries_sent": self.queries_sent,
            "query_due_ms": self.query_due_ms,
            "orphan_due_ms": self.orphan_due_ms,
            "last_link_status": self.last_link_status,
            **({"outbox": self.outbox, "outbox_seq": self.outbox_seq} if with_outbox else {}),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> OrderState:
        d = dict(d)
        d["evidence"] = [Evidence.from_json(e) for e in d["evidence"]]
        rev = d.get("reversal")
        d["reversal"] = None if rev is None else Reversal(rev[0], rev[1], rev[2])
        d["seen"] = set(d["seen"])
        d["raised"] = set(d["raised"])
        return cls(**d)


# ------------------------------------------------------------------ transitions


def apply_transaction(state: OrderState, txn: Transaction, policy: ChannelPolicy) -> None:
    """Merge one of our own order events. A final status is never replaced by
    `pending`; between two final statuses the later one (event time) wins."""
    if state.type is None:
        state.type = txn.type
        state.merchant_id = txn.merchant_id
        state.channel_id = txn.channel_id
        state.amount = txn.amount
        state.currency = txn.currency
        state.coupon_amount = txn.coupon_amount
        state.original_txn_id = txn.original_txn_id
        state.terminal_id = txn.terminal_id
    if state.created_at_ms is None or txn.occurred_at_ms < state.created_at_ms:
        state.created_at_ms = txn.occurred_at_ms
        state.business_date = policy.business_date_iso(txn.occurred_at_ms)
    current = state.our_status
    if (
        current is None
        or (current == _PENDING and txn.status in FINAL_OURS)
        or (
            txn.status in FINAL_OURS
            and txn.status != current
            and txn.occurred_at_ms >= state.our_status_at_ms
        )
        or (current == _PENDING and txn.status == _PENDING)
    ):
        state.our_status = txn.status
        state.our_status_at_ms = txn.occurred_at_ms
    state.orphan_due_ms = None


def apply_callback(state: OrderState, cb: Callback) -> None:
    state.evidence.append(Evidence.of(cb, seq=len(state.evidence)))


def apply_reversal_link(
    state: OrderState, reversal_txn_id: str, status: str, occurred_at_ms: int
) -> None:
    """Record what a reversal order targeting this one reports about itself."""
    state.reversal = Reversal(reversal_txn_id, status, occurred_at_ms)


# ------------------------------------------------------------------------ views


@dataclass(frozen=True, slots=True)
class OrderView:
    standing: Standing
    resolved: bool  # no further channel answer is awaited
    reversed: bool
    succeeded: bool  # this order's own outcome is success (ours or channel's)
    failed: bool
    fee: int  # channel fee known for the order (0 when not reported)


def _confirming(ev: Evidence, policy: ChannelPolicy) -> bool:
    return ev.source != _SYNC or not policy.query_before_final_success


# OrderViews are immutable and few distinct ones occur: they are shared.
_views: dict[tuple[Standing, bool, bool, bool, bool, int], OrderView] = {}


def _order_view(
    standing: Standing, resolved: bool, reversed_: bool, succeeded: bool, failed: bool, fee: int
) -> OrderView:
    k = (standing, resolved, reversed_, succeeded, failed, fee)
    v = _views.get(k)
    if v is None:
        if len(_views) >= 4096:
            _views.clear()
        v = _views[k] = OrderView(standing, resolved, reversed_, succeeded, failed, fee)
    return v


def view(state: OrderState, policy: ChannelPolicy) -> OrderView:
    """What the order's state means now. Remembered on the state until something the
    view depends on changes (evidence is only ever appended; our status, our record
    and the reversal are replaced, never edited in place), so asking again for the
    same state and policy costs a comparison."""
    rev = state.reversal
    of = (
        len(state.evidence),
        state.our_status,
        state.type is None,
        None if rev is None else rev.status,
    )
    v = state._view
    if v is not None and state._view_policy is policy and state._view_of == of:
        return v
    v = state._view = _compute_view(state, policy)
    state._view_policy = policy
    state._view_of = of
    return v


def _compute_view(state: OrderState, policy: ChannelPolicy) -> OrderView:
    # one pass over the evidence: the channel's final word (as `channel_final`), the
    # latest success witness (event time) that names a fee, any confirming success
    final: Evidence | None = None
    fo = fs = 0
    fee = 0
    fee_o = fee_s = 0
    has_fee = False
    confirming_success = False
    sync_confirms = not policy.query_before_final_success
    for ev in state.evidence:
        status = ev.status
        if status in FINAL_CHANNEL:
            o = ev.occurred_at_ms
            if final is None or o > fo or (o == fo and ev.seq >= fs):
                final, fo, fs = ev, o, ev.seq
        if status in SUCCESS_LIKE:
            if sync_confirms or ev.source != _SYNC:
                confirming_success = True
            if ev.fee is not None:
                o = ev.occurred_at_ms
                if not has_fee or o > fee_o or (o == fee_o and ev.seq >= fee_s):
                    fee, fee_o, fee_s, has_fee = ev.fee, o, ev.seq, True
    rev = state.reversal
    reversed_ = (final is not None and final.status == _REVERSED) or (
        rev is not None and rev.status == _SUCCESS
    )
    if final is not None:
        channel_success = final.status in SUCCESS_LIKE
        confirmed = channel_success and confirming_success
        failed = final.status == _FAILED
    else:
        channel_success = confirmed = failed = False

    ours = state.our_status
    if state.type is None or reversed_:
        standing = _NONE
    elif confirmed:
        standing = _CONFIRMED
    elif channel_success:
        standing = _PROVISIONAL  # success not yet confirmed (S3)
    elif final is not None:
        standing = _NONE  # the channel said failed
    elif ours == _SUCCESS or (ours == _PENDING and policy.mode is _OPTIMISTIC):
        standing = _PROVISIONAL
    else:
        standing = _NONE

    ours_over = final is None and ours in (_FAILED, _CLOSED)
    resolved = (
        confirmed or failed or reversed_ or (final is not None and not channel_success) or ours_over
    )
    succeeded = confirmed or channel_success or (final is None and ours == _SUCCESS)
    failed = failed or ours_over
    k = (standing, resolved, reversed_, succeeded, failed, fee)  # as `_order_view`
    v = _views.get(k)
    if v is None:
        v = _order_view(standing, resolved, reversed_, succeeded, failed, fee)
    return v
