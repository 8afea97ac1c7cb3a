"""A simulated business day's channel statements and the reconciliation's answer, the
pure part (no files, no ClickHouse; `recon.simday` writes and stores them).

From the order states the pure stream topology leaves (`tally.core.pipeline`):

- the **ledger** (`ledger_items`): the orders the end-of-day comparison counts;
- each channel's **truthful statement** for each business day (`truthful_lines`),
  what the channel actually processed:
     * a payment whose channel's final word is success (or refunded) and that was not
       reversed: one `payment` line with the channel txn id, currency, amount and fee
       of the channel's latest success witness, dated by that witness (S11: the
       amount is what the channel collected, order amount less a platform coupon);
     * a refund the channel completed: one `refund` line for the refunded amount;
     * evidence of success for an order we never received (an orphan): a payment line;
     * nothing for failed, closed, pending, reversed orders and for reversal orders
       (a reversed sale and its reversal net to nothing on a statement);
     * an order charged twice (duplicate_success) shows one line, the final charge:
       the duplicate is the stream's break to resolve (S1), not the statement's;
- the **oracle** (`expected_classes`): the class of every item of every (channel,
  day), derived from the rules in docs/reconciliation.md independently of recon's SQL.
  Real-time anomalies keep their end-of-day class as the truthful statement gives it:
  e.g. ours success / channel failed -> short, an orphan's success -> long, a late
  callback (S12: final answer just after the cutoff) -> carried on both days.

`tally.sim.day` injects the statement-side anomalies and builds the day.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from tally.core.eod import EodClass
from tally.core.events import iso_ms
from tally.core.money import format_minor
from tally.core.orders import SUCCESS_LIKE, Evidence, OrderState, view
from tally.core.policy import ChannelPolicy, Policies

__all__ = [
    "CLASSES",
    "Key",
    "LedgerItem",
    "Line",
    "StatementAnomalies",
    "expected_classes",
    "last_time",
    "ledger_items",
    "truthful_lines",
]


# the classes the simulator's days give (never refund_excess or proposed), in the
# order of expected-recon.json's counts
CLASSES: tuple[str, ...] = tuple(
    c.value
    for c in (
        EodClass.MATCHED,
        EodClass.LONG,
        EodClass.SHORT,
        EodClass.AMOUNT_MISMATCH,
        EodClass.FEE_MISMATCH,
        EodClass.STATUS_MISMATCH,
        EodClass.CARRIED,
    )
)

Key = tuple[str, str, str]  # (channel, business date ISO, item key)


@dataclass(frozen=True, slots=True)
class LedgerItem:
    """An order the end-of-day comparison counts: payment or refund, ours success, not
    reversed. `amount` is comparable (payment: amount - coupon), minor units."""

    channel_id: str
    business_date: date
    txn_id: str
    channel_txn_id: str
    merchant_id: str
    kind: str
    currency: str
    amount: int
    fee: int
    at_ms: int  # created (what business_date derives from)


@dataclass(frozen=True, slots=True)
class Line:
    """A statement line (the columns of `statement_lines`), money in minor units."""

    channel_id: str
    business_date: date
    txn_id: str
    channel_txn_id: str
    kind: str  # payment | refund
    status: str  # success
    currency: str
    amount: int
    fee: int | None
    occurred_at_ms: int
    merchant_ref: str = ""
    original_txn_id: str = ""
    coupon_amount: int | None = None

    @property
    def key(self) -> str:
        return self.txn_id or self.channel_txn_id

    def to_json(self) -> dict[str, Any]:
        c = self.currency
        return {
            "channel_id": self.channel_id,
            "business_date": self.business_date.isoformat(),
            "txn_id": self.txn_id,
            "channel_txn_id": self.channel_txn_id,
            "original_txn_id": self.original_txn_id,
            "kind": self.kind,
            "status": self.status,
            "currency": c,
            "amount": format_minor(self.amount, c),
            "fee": None if self.fee is None else format_minor(self.fee, c),
            "coupon_amount": None
            if self.coupon_amount is None
            else format_minor(self.coupon_amount, c),
            "merchant_ref": self.merchant_ref,
            "occurred_at": iso_ms(self.occurred_at_ms),
        }


@dataclass
class StatementAnomalies:
    """Statement-side anomalies, as fractions of the items a statement matches (at
    least one of each kind with a non-zero rate, where an item qualifies)."""

    missing: float = 0.02
    extra: float = 0.02  # extra lines, as a fraction of the day's lines
    amount: float = 0.02
    fee: float = 0.02
    status: float = 0.01
    carried: float = 0.02  # moved across the cutoff: items within the carry window only
    seed: int = 0

    def __post_init__(self) -> None:
        for k in ("missing", "extra", "amount", "fee", "status", "carried"):
            v = getattr(self, k)
            if not 0 <= v <= 1:
                raise ValueError(f"{k}: a fraction between 0 and 1, got {v}")
        if self.missing + self.amount + self.fee + self.status > 1:
            raise ValueError("missing + amount + fee + status add up to more than 1")


# ------------------------------------------------------------- the ledger


def last_time(state: OrderState) -> int:
    """The latest time the order shows (our status, creation, the evidence)."""
    times = [state.our_status_at_ms, state.created_at_ms or 0]
    times += [e.occurred_at_ms for e in state.evidence]
    return max(times)


def ledger_items(orders: Iterable[OrderState], policies: Policies) -> list[LedgerItem]:
    out = []
    for s in orders:
        if not s.known or s.type not in ("payment", "refund") or s.our_status != "success":
            continue
        assert s.channel_id and s.currency and s.merchant_id and s.business_date
        v = view(s, policies[s.channel_id])
        if v.reversed:
            continue
        final = s.channel_final()
        ctid = (
            final.channel_txn_id
            if final is not None
            else (s.evidence[-1].channel_txn_id if s.evidence else "")
        )
        out.append(
            LedgerItem(
                channel_id=s.channel_id,
                business_date=date.fromisoformat(s.business_date),
                txn_id=s.txn_id,
                channel_txn_id=ctid,
                merchant_id=s.merchant_id,
                kind=s.type,
                currency=s.currency,
                amount=s.amount - s.coupon_amount if s.type == "payment" else s.amount,
                fee=v.fee,
                at_ms=s.created_at_ms or 0,
            )
        )
    return out


def _success_witness(state: OrderState) -> Evidence | None:
    """The channel's latest `success` witness (event time, then arrival)."""
    best: Evidence | None = None
    for ev in state.evidence:
        if ev.status == "success" and (
            best is None or (ev.occurred_at_ms, ev.seq) >= (best.occurred_at_ms, best.seq)
        ):
            best = ev
    return best


def truthful_lines(orders: Iterable[OrderState], policies: Policies) -> list[Line]:
    """What the channels processed (see the module docstring)."""
    out = []
    for s in orders:
        if not s.evidence:
            continue
        kind = s.type if s.known else "payment"
        if kind not in ("payment", "refund"):
            continue
        channel = s.channel_id or s.evidence[0].channel_id
        pol = policies[channel]
        v = view(s, pol)
        final = s.channel_final()
        if v.reversed or final is None or final.status not in SUCCESS_LIKE:
            continue
        w = _success_witness(s)
        if w is None:
            continue
        out.append(
            Line(
                channel_id=channel,
                business_date=pol.business_date(w.occurred_at_ms),
                txn_id=s.txn_id,
                channel_txn_id=w.channel_txn_id,
                kind=kind,
                status="success",
                currency=w.currency,
                amount=w.amount,
                fee=v.fee,
                occurred_at_ms=w.occurred_at_ms,
                merchant_ref=s.merchant_id or "",
                original_txn_id=s.original_txn_id or "",
                coupon_amount=(s.coupon_amount or None) if kind == "payment" else None,
            )
        )
    # one channel transaction is one line: a channel txn id that two of our orders
    # claim (shared_channel_txn) was charged once, for the earlier claim
    out.sort(key=lambda x: (x.occurred_at_ms, x.txn_id))
    seen: set[tuple[str, str, str]] = set()
    unique = []
    for ln in out:
        k = (ln.channel_id, ln.kind, ln.channel_txn_id)
        if k not in seen:
            seen.add(k)
            unique.append(ln)
    return unique


# ------------------------------------------------------------- the oracle


def expected_classes(
    ledger: Iterable[LedgerItem],
    statements: dict[tuple[str, date], list[Line]],
    policies: Policies,
) -> dict[Key, str]:
    """The class of every item of every loaded (channel, day), by the rules of
    docs/reconciliation.md: an item and the line quoting its txn_id (else its channel
    txn id) are compared: kind/status, then amount and currency, then the fee where
    the line states one; an item alone is short, a success line alone long, unless
    it is within the channel's carry window of a cutoff of its day and its
    counterpart is on the neighbouring day (or, for a ledger item, that day's
    statement is not loaded): carried."""
    by_day: dict[tuple[str, date], list[LedgerItem]] = defaultdict(list)
    for it in ledger:
        by_day[(it.channel_id, it.business_date)].append(it)
    out: dict[Key, str] = {}
    for (ch, d), lines in statements.items():
        out.update(_day_classes(_Day(ch, d, policies[ch]), lines, by_day, statements))
    return out


def _quotes(ln: Line, it: LedgerItem) -> bool:
    return bool(
        (ln.txn_id and ln.txn_id == it.txn_id)
        or (ln.channel_txn_id and ln.channel_txn_id == it.channel_txn_id)
    )


@dataclass(frozen=True)
class _Day:
    """One channel's business day: its cutoffs, its neighbours, the carry window."""

    channel: str
    day: date
    policy: ChannelPolicy

    @property
    def window_ms(self) -> int:
        return self.policy.carry_window_seconds * 1000

    def neighbours(self) -> tuple[tuple[int, date], tuple[int, date]]:
        """(cutoff, the day on its other side): the end of the day, then its start."""
        d = self.day
        start, end = self.policy.cutoff_ms(d - timedelta(days=1)), self.policy.cutoff_ms(d)
        return (end, d + timedelta(days=1)), (start, d - timedelta(days=1))


def _pair(
    day: _Day, lines: list[Line], items: dict[str, LedgerItem]
) -> tuple[dict[str, Line], list[Line]]:
    """The line of each item (by txn_id, else channel txn id), and the lines alone."""
    by_ctid: dict[str, str] = {}
    for it in sorted(items.values(), key=lambda x: x.txn_id):
        if it.channel_txn_id:
            by_ctid.setdefault(it.channel_txn_id, it.txn_id)
    paired: dict[str, Line] = {}
    alone: list[Line] = []
    for ln in lines:
        k = (
            ln.txn_id
            if ln.txn_id in items
            else by_ctid.get(ln.channel_txn_id)
            if ln.channel_txn_id
            else None
        )
        if k is None:
            alone.append(ln)
        elif k in paired:
            raise ValueError(
                f"two lines for {k} on {day.channel} {day.day}: the simulator makes one"
            )
        else:
            paired[k] = ln
    return paired, alone


def _compared(pl: Line, it: LedgerItem) -> str:
    if pl.status != "success" or pl.kind != it.kind:
        return EodClass.STATUS_MISMATCH
    if pl.currency != it.currency or pl.amount != it.amount:
        return EodClass.AMOUNT_MISMATCH
    if pl.fee is not None and pl.fee != it.fee:
        return EodClass.FEE_MISMATCH
    return EodClass.MATCHED


def _day_classes(
    day: _Day,
    lines: list[Line],
    by_day: dict[tuple[str, date], list[LedgerItem]],
    statements: dict[tuple[str, date], list[Line]],
) -> dict[Key, str]:
    ch, d, w = day.channel, day.day, day.window_ms
    items = {it.txn_id: it for it in by_day.get((ch, d), [])}
    paired, alone = _pair(day, lines, items)
    out: dict[Key, str] = {}
    for k, it in items.items():
        pl = paired.get(k)
        if pl is not None:
            cls = _compared(pl, it)
        else:
            cls = EodClass.SHORT
            for cut, other in day.neighbours():
                if abs(it.at_ms - cut) <= w:
                    nxt = statements.get((ch, other))
                    if nxt is None or any(x.status == "success" and _quotes(x, it) for x in nxt):
                        cls = EodClass.CARRIED
                        break
        out[(ch, d.isoformat(), k)] = cls
    for ln in alone:
        if ln.status != "success":
            continue
        cls = EodClass.LONG
        for cut, other in day.neighbours():
            if abs(ln.occurred_at_ms - cut) <= w and any(
                _quotes(ln, it) for it in by_day.get((ch, other), [])
            ):
                cls = EodClass.CARRIED
                break
        key = (ch, d.isoformat(), ln.key)
        if key in out:
            raise ValueError(f"two results for {key}: the simulator makes one")
        out[key] = cls
    return out
