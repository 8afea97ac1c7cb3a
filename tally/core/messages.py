"""Snapshots the stream publishes for storage and recovery: an order's current state
(`payments.order-states`) and a balance shard's running totals (`payments.balances`).

Each carries a `version` that only grows for its key (applied events for an order,
postings for a balance shard), so a store can keep the latest and a replayed
snapshot is recognisable as such.

An order's snapshot carries its evidence once, inside `state` (`OrderState.to_json()`);
the evidence trail (`tally.core.breaks.evidence_trail`) is derived from it by the sink
(`sinks.rows`). Snapshots published before that also carry the trail as `evidence`,
and the sink still reads them.

In: an `OrderState` with its `OrderView`, or a `Balance`. Out: the snapshot as a JSON
dict, times as RFC 3339 text.
"""

from __future__ import annotations

from typing import Any

from tally.core.eventtime import iso_ms
from tally.core.ledger import Balance
from tally.core.money import format_minor
from tally.core.orders import OrderState, OrderView

# Seconds up to 2**32 (year 2106): there `iso_ms`, which divides by 1000 in floating
# point, is exact to the millisecond, and this gives the same text several times
# faster; outside, `iso_ms` itself.
_FAST_ISO_LIMIT_MS = (1 << 32) * 1000
_ISO_SECONDS: dict[int, str] = {}  # second -> "YYYY-MM-DDTHH:MM:SS", recently formatted


def _iso_ms(ms: int) -> str:
    """`tally.core.events.iso_ms(ms)`, faster: two per snapshot, on the hot path."""
    if not 0 <= ms < _FAST_ISO_LIMIT_MS:
        return iso_ms(ms)
    sec, milli = divmod(ms, 1000)
    head = _ISO_SECONDS.get(sec)
    if head is None:
        if len(_ISO_SECONDS) >= 4096:
            _ISO_SECONDS.clear()
        head = _ISO_SECONDS[sec] = iso_ms(sec * 1000)[:19]  # "YYYY-MM-DDTHH:MM:SS"
    return f"{head}.{milli:03d}Z"


def order_snapshot(state: OrderState, v: OrderView, event_time_ms: int) -> dict[str, Any]:
    """What `payments.order-states` carries for `state` after a change at event time
    `event_time_ms`; `v` is the order's view (`tally.core.orders.view`), already computed
    by the caller. Called once per changed order per batch: keep it cheap."""
    evidence = state.evidence
    final = state.channel_final() if evidence else None
    cur = state.currency or (evidence[0].currency if evidence else None)
    known = state.known
    if known and cur is not None:
        amount: str | None = format_minor(state.amount, cur)
        coupon: str | None = format_minor(state.coupon_amount, cur)
    else:
        amount = coupon = None
    created = state.created_at_ms
    return {
        "txn_id": state.txn_id,
        "version": len(state.seen),
        "known": known,
        "type": state.type,
        "merchant_id": state.merchant_id,
        "channel_id": state.channel_id or (evidence[0].channel_id if evidence else None),
        "currency": cur,
        "amount": amount,
        "coupon_amount": coupon,
        "fee": None if cur is None else format_minor(v.fee, cur),
        "original_txn_id": state.original_txn_id,
        "terminal_id": state.terminal_id,
        "our_status": state.our_status,
        "channel_status": None if final is None else final.status,
        "channel_txn_id": final.channel_txn_id
        if final is not None
        else (evidence[-1].channel_txn_id if evidence else None),
        "standing": v.standing.value,
        "resolved": v.resolved,
        "reversed": v.reversed,
        "business_date": state.business_date,
        "created_at": None if created is None else _iso_ms(created),
        "updated_at": _iso_ms(event_time_ms),
        "queries_sent": state.queries_sent,
        "breaks": sorted(state.raised),
        "state": state.to_json(with_outbox=False),  # the full state, for restoring a worker
    }


def balance_snapshot(key: str, b: Balance, partition: int) -> dict[str, Any]:
    return {
        "key": key,
        "account": b.account,
        "kind": b.kind,
        "owner": b.owner,
        "currency": b.currency,
        "shard": partition,
        "version": b.postings,
        "amounts_minor": dict(sorted(b.amounts.items())),
        **{k: v for k, v in b.summary().items() if k not in ("account", "currency", "postings")},
    }
