"""Snapshots the stream publishes for storage and recovery: an order's current state
(`payments.order-states`) and a balance shard's running totals (`payments.balances`).

Each carries a `version` that only grows for its key (applied events for an order,
postings for a balance shard), so a store can keep the latest and a replayed
snapshot is recognisable as such.
"""

from __future__ import annotations

from typing import Any

from tally.breaks import evidence_trail
from tally.clearing import Balance
from tally.events import iso_ms
from tally.money import format_minor
from tally.orders import OrderState, OrderView


def order_snapshot(state: OrderState, v: OrderView, event_time_ms: int) -> dict[str, Any]:
    final = state.channel_final()
    cur = state.currency or (state.evidence[0].currency if state.evidence else None)

    def money(x: int | None) -> str | None:
        return None if x is None or cur is None else format_minor(x, cur)

    return {
        "txn_id": state.txn_id,
        "version": len(state.seen),
        "known": state.known,
        "type": state.type,
        "merchant_id": state.merchant_id,
        "channel_id": state.channel_id
        or (state.evidence[0].channel_id if state.evidence else None),
        "currency": cur,
        "amount": money(state.amount) if state.known else None,
        "coupon_amount": money(state.coupon_amount) if state.known else None,
        "fee": money(v.fee),
        "original_txn_id": state.original_txn_id,
        "terminal_id": state.terminal_id,
        "our_status": state.our_status,
        "channel_status": final.status if final is not None else None,
        "channel_txn_id": final.channel_txn_id
        if final is not None
        else (state.evidence[-1].channel_txn_id if state.evidence else None),
        "standing": v.standing.value,
        "resolved": v.resolved,
        "reversed": v.reversed,
        "business_date": state.business_date,
        "created_at": iso_ms(state.created_at_ms) if state.created_at_ms is not None else None,
        "updated_at": iso_ms(event_time_ms),
        "queries_sent": state.queries_sent,
        "breaks": sorted(state.raised),
        "evidence": evidence_trail(state),
        "state": state.to_json(),  # the full state, for restoring a worker
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
