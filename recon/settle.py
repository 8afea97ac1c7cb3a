"""Merchant settlement (清分, S11, S14) of a business day from ClickHouse: the
confirmed orders (`read_items`), the payments held back under an open suspense entry
(`held_txn_ids`) and the stream's merchant postings (`posted_totals`) to check
against. The arithmetic, and what the figures mean, is `tally.core.clearing`
(re-exported here).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date

from recon.suspense import open_entries
from sinks.backend import Backend
from tally.core.clearing import (
    MerchantSettlement,
    SettleItem,
    Settlement,
    disagreements,
    settlement,
    to_minor_units,
    totals,
)

__all__ = [
    "MerchantSettlement",
    "SettleItem",
    "Settlement",
    "disagreements",
    "held_txn_ids",
    "posted_totals",
    "read_items",
    "settle",
    "settlement",
    "to_minor_units",
    "totals",
]


def _where_channel(channel: str | None) -> str:
    return " AND channel_id = %(channel)s" if channel is not None else ""


def read_items(db: Backend, day: date | str, channel: str | None = None) -> list[SettleItem]:
    """The confirmed payments and refunds of business date `day` (order_states FINAL;
    filtered after FINAL, since standing changes between versions)."""
    sql = (
        "SELECT txn_id, merchant_id, channel_id, currency, type, amount, coupon_amount, fee "
        "FROM (SELECT txn_id, merchant_id, channel_id, currency, type, amount, coupon_amount,"
        " fee, standing, business_date, known FROM {db}.order_states FINAL) "
        "WHERE known = 1 AND standing = 'confirmed' AND type IN ('payment', 'refund') "
        "AND business_date = toDate(%(day)s)" + _where_channel(channel) + " ORDER BY txn_id"
    )
    out = []
    for r in db.query(sql, {"day": str(day), "channel": channel}):
        cur = r["currency"]
        out.append(
            SettleItem(
                txn_id=r["txn_id"],
                merchant_id=r["merchant_id"],
                channel_id=r["channel_id"],
                currency=cur,
                kind=r["type"],
                amount=to_minor_units(r["amount"], cur),
                coupon=to_minor_units(r["coupon_amount"], cur) if r["type"] == "payment" else 0,
                fee=to_minor_units(r["fee"], cur) if r["type"] == "payment" else 0,
            )
        )
    return out


def held_txn_ids(db: Backend, channel: str | None = None) -> set[str]:
    """Orders with an open suspense entry (recon.suspense.open_entries, which first
    parks real-time breaks not yet in suspense), whatever day the entry is posted to."""
    return {e.txn_id for e in open_entries(db, channel=channel) if e.txn_id}


def posted_totals(
    db: Backend, day: date | str, channel: str | None = None
) -> dict[tuple[str, str], dict[str, int]]:
    """The stream's side: per (merchant, currency), the confirmed `merchant:` postings of
    business date `day` by component, negated (merchant's side), minor units, plus
    `net` = their sum."""
    sql = (
        "SELECT merchant_id, currency, component, sum(amount_minor) AS minor FROM "
        "(SELECT merchant_id, channel_id, currency, component, amount_minor, bucket, "
        "account_kind, business_date FROM {db}.postings FINAL) "
        "WHERE account_kind = 'merchant' AND bucket = 'confirmed' "
        "AND business_date = toDate(%(day)s)" + _where_channel(channel) + " "
        "GROUP BY merchant_id, currency, component"
    )
    out: dict[tuple[str, str], dict[str, int]] = defaultdict(
        lambda: {"gross": 0, "refund": 0, "fee": 0, "coupon": 0, "net": 0}
    )
    for r in db.query(sql, {"day": str(day), "channel": channel}):
        k = (r["merchant_id"], r["currency"])
        out[k][r["component"]] -= int(r["minor"])
        out[k]["net"] -= int(r["minor"])
    return dict(out)


def settle(db: Backend, day: date | str, channel: str | None = None) -> Settlement:
    """Settlement of `day` (optionally one channel), checked against the postings."""
    rows = settlement(read_items(db, day, channel), held_txn_ids(db, channel))
    return Settlement(
        day=str(day),
        channel=channel,
        merchants=rows,
        totals=totals(rows),
        disagreements=disagreements(rows, posted_totals(db, day, channel)),
    )
