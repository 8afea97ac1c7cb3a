"""Real-time break classification (差错), as plain functions over an order state.

Every rule looks at the whole merged state, so a break is found by whichever event
reveals it, in any arrival order, and found once: a break's id is derived from its
kind, the order and what distinguishes it, and an order remembers the ids it has
raised. Time-based kinds (orphan_callback, pending_timeout) are raised by the
timers in `tally.core.realtime`, which call `timed_break` here.

In: an order's `OrderState`, its `OrderView` and its channel's policy (or two success
claims on one channel transaction id). Out: `Finding`s, stamped into `Break` records
(`BreakKind`), with the evidence trail.

Kinds (domain.md):
  status_conflict        our final status and the channel's final word disagree, or
                         two channel witnesses give contradicting final statuses
  amount_mismatch        evidence amount differs from what the channel should
                         collect (order amount - platform coupon, S11)
  currency_mismatch      evidence currency differs from the order's
  duplicate_success      two channel successes with different channel_txn_id for
                         one order (S1), or one channel_txn_id on two orders
  reversal_after_success a reversal (order or channel status `reversed`) for an
                         order we reported as success (S2)
  orphan_callback        evidence for an order not seen within the grace period (S5)
  pending_timeout        no final status after the SLA and N unanswered queries (S4)
  late_callback          final evidence after the cutoff of the order's business
                         day (S12)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

import msgspec

from tally.core.eventtime import iso_ms
from tally.core.money import format_minor
from tally.core.orders import FINAL_CHANNEL, Evidence, OrderState, OrderView
from tally.core.policy import ChannelPolicy
from tally.core.records import ChannelStatus, OrderStatus

# plain values, compared with what messages carry (see `tally.core.orders`)
_SUCCESS, _FAILED = OrderStatus.SUCCESS.value, OrderStatus.FAILED.value
_CLOSED, _REVERSED = OrderStatus.CLOSED.value, ChannelStatus.REVERSED.value


class BreakKind(StrEnum):
    STATUS_CONFLICT = "status_conflict"
    AMOUNT_MISMATCH = "amount_mismatch"
    CURRENCY_MISMATCH = "currency_mismatch"
    DUPLICATE_SUCCESS = "duplicate_success"
    REVERSAL_AFTER_SUCCESS = "reversal_after_success"
    ORPHAN_CALLBACK = "orphan_callback"
    PENDING_TIMEOUT = "pending_timeout"
    LATE_CALLBACK = "late_callback"


def break_id(kind: str, txn_id: str, discriminator: str = "") -> str:
    """Stable identity: the same break found twice (replay, re-delivery, the end-of-day
    run finding what the stream found) has the same id."""
    raw = f"{kind}|{txn_id}|{discriminator}".encode()
    return hashlib.sha256(raw).hexdigest()[:24]


@dataclass(slots=True)
class Break:
    break_id: str
    kind: str
    txn_id: str
    merchant_id: str | None
    channel_id: str | None
    currency: str | None
    amount: int | None  # ours, minor units
    channel_amount: int | None  # the evidence's, minor units
    event_time_ms: int  # event time at which it was detected (deterministic)
    business_date: str | None
    detail: str
    evidence: list[dict[str, Any]] = field(default_factory=list)
    detected_at_ms: int = 0  # wall clock, set by the stream layer
    trigger_ingested_at_ms: int = 0  # broker timestamp of the revealing message

    def to_json(self) -> dict[str, Any]:
        cur = self.currency
        return {
            "break_id": self.break_id,
            "kind": self.kind,
            "txn_id": self.txn_id,
            "merchant_id": self.merchant_id,
            "channel_id": self.channel_id,
            "currency": cur,
            "amount": None
            if self.amount is None or cur is None
            else format_minor(self.amount, cur),
            "channel_amount": None
            if self.channel_amount is None or cur is None
            else format_minor(self.channel_amount, cur),
            "business_date": self.business_date,
            "event_time": iso_ms(self.event_time_ms),
            "detected_at": iso_ms(self.detected_at_ms) if self.detected_at_ms else None,
            "detail": self.detail,
            "evidence": self.evidence,
        }


@dataclass(frozen=True, slots=True)
class Finding:
    """A break candidate before it is stamped: kind, what distinguishes it, why."""

    kind: BreakKind
    discriminator: str
    detail: str
    channel_amount: int | None = None


def expected_channel_amount(state: OrderState) -> int:
    """What the channel should collect for the order: S11, the platform coupon is
    paid by the platform, not the payer."""
    return state.amount - state.coupon_amount


def detect(state: OrderState, v: OrderView, policy: ChannelPolicy) -> list[Finding]:
    """Event-driven findings for an order's current state (not yet de-duplicated)."""
    out: list[Finding] = []
    if not state.evidence and state.reversal is None:
        return out
    cutoff: int | None = None
    if state.type is not None and state.created_at_ms is not None:
        assert state.business_date is not None
        cutoff = policy.cutoff_ms_iso(state.business_date)
    w = _scan(state, cutoff)
    _money_findings(state, w, out)
    _status_findings(state, w, out)
    # S12: final evidence after the cutoff of the order's business day
    late = w.late
    if late is not None:
        assert cutoff is not None
        out.append(
            Finding(
                BreakKind.LATE_CALLBACK,
                "",
                f"{late.source} {late.status} at {iso_ms(late.occurred_at_ms)} "
                f"is after the {state.business_date} cutoff {iso_ms(cutoff)}",
            )
        )
    return out


class _Witnesses(NamedTuple):
    """For each rule, the first witness that fits it (one pass over the evidence)."""

    cur_off: Evidence | None  # currency differs from the order's
    amt_off: Evidence | None  # same currency, amount differs from expected
    succ: Evidence | None  # final success-like word
    fail: Evidence | None  # final failed word
    late: Evidence | None  # final word at or after the cutoff
    ids: set[str] | None  # channel txn ids that succeeded
    any_reversed: bool


def _scan(state: OrderState, cutoff: int | None) -> _Witnesses:
    known = state.type is not None
    currency = state.currency
    expected = state.amount - state.coupon_amount  # expected_channel_amount
    cur_off: Evidence | None = None
    amt_off: Evidence | None = None
    succ: Evidence | None = None
    fail: Evidence | None = None
    late: Evidence | None = None
    ids: set[str] | None = None
    first_id = ""
    any_reversed = False
    for ev in state.evidence:
        status = ev.status
        if known:
            if ev.currency != currency:
                if cur_off is None:
                    cur_off = ev
            elif amt_off is None and ev.amount != expected:
                amt_off = ev
        if status in FINAL_CHANNEL:
            if status == _REVERSED:
                any_reversed = True
            elif status == _FAILED:
                if fail is None:
                    fail = ev
            elif succ is None:  # success or refunded
                succ = ev
            if late is None and cutoff is not None and ev.occurred_at_ms >= cutoff:
                late = ev
        if status == _SUCCESS:
            if ids is None:
                first_id = ev.channel_txn_id
                ids = {first_id}
            elif ev.channel_txn_id != first_id:
                ids.add(ev.channel_txn_id)
    return _Witnesses(cur_off, amt_off, succ, fail, late, ids, any_reversed)


def _money_findings(state: OrderState, w: _Witnesses, out: list[Finding]) -> None:
    """S6: the evidence's currency or amount against the order's (S11: less the
    platform coupon)."""
    if w.cur_off is not None:
        out.append(
            Finding(
                BreakKind.CURRENCY_MISMATCH,
                "",
                f"{w.cur_off.source} says {w.cur_off.currency}, order is {state.currency}",
            )
        )
    if w.amt_off is not None:
        expected = state.amount - state.coupon_amount  # expected_channel_amount
        out.append(
            Finding(
                BreakKind.AMOUNT_MISMATCH,
                "",
                f"{w.amt_off.source} says {w.amt_off.amount} minor units, expected {expected}",
                channel_amount=w.amt_off.amount,
            )
        )


def _status_findings(state: OrderState, w: _Witnesses, out: list[Finding]) -> None:
    """Channel witnesses against each other and against our final status; S1 two
    channel transactions; S2 a reversal of an order reported as success."""
    ours = state.our_status
    succ, fail = w.succ, w.fail
    if succ is not None and fail is not None:
        out.append(
            Finding(
                BreakKind.STATUS_CONFLICT,
                "",
                f"channel {succ.source} says {succ.status}, {fail.source} says failed",
            )
        )
    elif succ is not None and ours in (_FAILED, _CLOSED):
        out.append(
            Finding(
                BreakKind.STATUS_CONFLICT,
                "",
                f"we hold the order {ours}, channel {succ.source} says {succ.status}",
            )
        )
    elif fail is not None and ours == _SUCCESS:
        out.append(
            Finding(
                BreakKind.STATUS_CONFLICT,
                "",
                f"we hold the order success, channel {fail.source} says failed",
            )
        )

    # S1: more than one channel transaction succeeded for this order
    if w.ids is not None and len(w.ids) > 1:
        out.append(
            Finding(
                BreakKind.DUPLICATE_SUCCESS,
                "",
                f"channel transactions {', '.join(sorted(w.ids))} all succeeded for one order",
            )
        )

    # S2: a reversal for an order we reported as success
    if ours == _SUCCESS:
        if state.reversal is not None and state.reversal.status != _FAILED:
            out.append(
                Finding(
                    BreakKind.REVERSAL_AFTER_SUCCESS,
                    "",
                    f"reversal {state.reversal.txn_id} ({state.reversal.status}) "
                    "for an order reported as success",
                )
            )
        elif w.any_reversed:
            out.append(
                Finding(
                    BreakKind.REVERSAL_AFTER_SUCCESS,
                    "",
                    "channel reversed an order reported as success",
                )
            )


def stamp(state: OrderState, f: Finding, event_time_ms: int) -> Break:
    return Break(
        break_id=break_id(f.kind, state.txn_id, f.discriminator),
        kind=f.kind.value,
        txn_id=state.txn_id,
        merchant_id=state.merchant_id,
        channel_id=state.channel_id or (state.evidence[0].channel_id if state.evidence else None),
        currency=state.currency or (state.evidence[0].currency if state.evidence else None),
        amount=state.amount if state.known else None,
        channel_amount=f.channel_amount
        if f.channel_amount is not None
        else (state.evidence[-1].amount if state.evidence else None),
        event_time_ms=event_time_ms,
        business_date=state.business_date,
        detail=f.detail,
        evidence=evidence_trail(state),
    )


def evidence_trail(state: OrderState) -> list[dict[str, Any]]:
    """Our record and every witness, for the break record and `tally orders show`."""
    trail: list[dict[str, Any]] = []
    if state.known:
        assert state.currency is not None
        trail.append(
            {
                "source": "order",
                "type": state.type,
                "status": state.our_status,
                "amount": format_minor(state.amount, state.currency),
                "coupon_amount": format_minor(state.coupon_amount, state.currency),
                "currency": state.currency,
                "at": iso_ms(state.our_status_at_ms),
            }
        )
    for ev in state.evidence:
        trail.append(
            {
                "source": ev.source,
                "status": ev.status,
                "amount": format_minor(ev.amount, ev.currency),
                "fee": None if ev.fee is None else format_minor(ev.fee, ev.currency),
                "currency": ev.currency,
                "channel_txn_id": ev.channel_txn_id,
                "at": iso_ms(ev.occurred_at_ms),
                "event_id": ev.event_id,
            }
        )
    if state.reversal is not None:
        trail.append(
            {
                "source": "reversal",
                "txn_id": state.reversal.txn_id,
                "status": state.reversal.status,
                "at": iso_ms(state.reversal.occurred_at_ms),
            }
        )
    return trail


# ---------------------------------------------------------- cross-order index


class ChannelTxnClaim(msgspec.Struct, gc=False):
    """Who first claimed a channel transaction id with a success (a msgspec struct: not
    tracked by the garbage collector, the index holds one per channel transaction)."""

    txn_id: str
    merchant_id: str | None
    occurred_at_ms: int


def duplicate_channel_txn(
    channel_id: str,
    channel_txn_id: str,
    first: ChannelTxnClaim,
    second_txn_id: str,
    second_merchant: str | None,
    currency: str,
    amount: int,
    event_time_ms: int,
) -> Break:
    """S1: one channel transaction id reported as success on two orders.

    The break belongs to the later of the two claims by event time (then txn id), and
    its id is built from the pair, so it does not depend on which claim arrived first.
    """
    second = ChannelTxnClaim(second_txn_id, second_merchant, event_time_ms)
    earlier, later = sorted((first, second), key=lambda c: (c.occurred_at_ms, c.txn_id))
    return Break(
        break_id=break_id(
            BreakKind.DUPLICATE_SUCCESS,
            later.txn_id,
            f"shared:{channel_id}/{channel_txn_id}:{earlier.txn_id}",
        ),
        kind=BreakKind.DUPLICATE_SUCCESS.value,
        txn_id=later.txn_id,
        merchant_id=later.merchant_id,
        channel_id=channel_id,
        currency=currency,
        amount=None,
        channel_amount=amount,
        event_time_ms=max(first.occurred_at_ms, event_time_ms),
        business_date=None,
        detail=f"channel transaction {channel_txn_id} succeeded on orders "
        f"{earlier.txn_id} and {later.txn_id}",
        evidence=[
            {"txn_id": c.txn_id, "merchant_id": c.merchant_id, "at": iso_ms(c.occurred_at_ms)}
            for c in (earlier, later)
        ],
    )
