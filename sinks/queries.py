"""Reading the results back: what `tally breaks`, `tally balances` and
`tally orders show` print. Every query reads with FINAL, so a row replayed into
ClickHouse (a retried batch, a restarted sink) counts once.

Money comes back as Decimal and is shown with the currency's minor-unit digits;
timestamps as RFC 3339 UTC with milliseconds.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import date
from decimal import Decimal
from typing import Any

from sinks.backend import Backend
from sinks.migrations import TABLES
from tally.core.events import iso_ms
from tally.core.ledger import BUCKETS, COMPONENTS
from tally.core.money import MoneyError, exponent


def money(amount: Decimal | None, currency: str | None) -> str | None:
    """A Decimal in major units as the wire shows it ("12.30" for CNY)."""
    if amount is None:
        return None
    if amount == 0:
        amount = abs(amount)  # no "-0.00"
    try:
        exp = exponent(currency or "")
    except MoneyError:
        return str(amount.normalize())
    return str(amount.quantize(Decimal(1).scaleb(-exp)))


def _iso(ms: int | None) -> str | None:
    return None if ms is None else iso_ms(int(ms))


def _date(d: date | None) -> str | None:
    return None if d is None else d.isoformat()


def breaks(
    db: Backend,
    *,
    day: str | None = None,
    kind: str | None = None,
    channel: str | None = None,
    merchant: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Breaks, oldest first (event time). `day` is the business date (the UTC date of
    the event time for breaks without one)."""
    where = ["1 = 1"]
    params: dict[str, Any] = {}
    if day is not None:
        where.append("ifNull(business_date, toDate(event_time)) = toDate(%(day)s)")
        params["day"] = day
    if kind is not None:
        where.append("kind = %(kind)s")
        params["kind"] = kind
    if channel is not None:
        where.append("channel_id = %(channel)s")
        params["channel"] = channel
    if merchant is not None:
        where.append("merchant_id = %(merchant)s")
        params["merchant"] = merchant
    sql = (
        "SELECT break_id, kind, txn_id, merchant_id, channel_id, currency, amount, "
        "channel_amount, business_date, event_time_ms, detected_at_ms, detail, evidence "
        "FROM {db}.breaks FINAL WHERE " + " AND ".join(where) + " ORDER BY event_time_ms, break_id"
    )
    if limit:
        sql += f" LIMIT {int(limit)}"
    return [
        {
            "break_id": r["break_id"],
            "kind": r["kind"],
            "txn_id": r["txn_id"],
            "merchant_id": r["merchant_id"],
            "channel_id": r["channel_id"],
            "currency": r["currency"],
            "amount": money(r["amount"], r["currency"]),
            "channel_amount": money(r["channel_amount"], r["currency"]),
            "business_date": _date(r["business_date"]),
            "event_time": _iso(r["event_time_ms"]),
            "detected_at": _iso(r["detected_at_ms"]),
            "detail": r["detail"],
            "evidence": json.loads(r["evidence"]),
        }
        for r in db.query(sql, params)
    ]


_AMOUNTS = [f"{b}_{c}" for b in BUCKETS for c in COMPONENTS]


def balances(
    db: Backend, *, merchant: str | None = None, channel: str | None = None
) -> list[dict[str, Any]]:
    """Account balances: each account's balance is the sum of the latest version of
    each of its shards. Signed from the holder's side, as `Balance.summary()`: a
    merchant's `net` is what we owe it, a channel's what it collected for us."""
    where = "1 = 1"
    params: dict[str, Any] = {}
    if merchant is not None:
        where = "kind = 'merchant' AND owner = %(owner)s"
        params["owner"] = merchant
    elif channel is not None:
        where = "kind IN ('channel', 'coupon', 'fees') AND owner = %(owner)s"
        params["owner"] = channel
    sums = ", ".join(f"sum({c}) AS sum_{c}" for c in _AMOUNTS)
    sql = (
        f"SELECT account, currency, any(kind) AS account_kind, count() AS shards, "
        f"sum(version) AS postings, {sums} FROM {{db}}.balances FINAL WHERE {where} "
        "GROUP BY account, currency ORDER BY account, currency"
    )
    out = []
    for r in db.query(sql, params):
        sign = Decimal(-1) if r["account_kind"] in ("merchant", "fees") else Decimal(1)
        cur = r["currency"]

        def total(
            bucket: str | None = None, component: str | None = None, r: dict[str, Any] = r
        ) -> Decimal:
            s = Decimal(0)
            for b in BUCKETS:
                for c in COMPONENTS:
                    if (bucket is None or b == bucket) and (component is None or c == component):
                        s += r[f"sum_{b}_{c}"]
            return s

        def fmt(x: Decimal, cur: str = cur, sign: Decimal = sign) -> str | None:
            return money(sign * x, cur)

        out.append(
            {
                "account": r["account"],
                "currency": cur,
                "provisional": fmt(total("provisional")),
                "confirmed": fmt(total("confirmed")),
                "gross": fmt(total(component="gross")),
                "refunds": fmt(total(component="refund")),
                "fees": fmt(total(component="fee")),
                "coupon_funding": fmt(total(component="coupon")),
                "net": fmt(total()),
                "postings": int(r["postings"]),
                "shards": int(r["shards"]),
            }
        )
    return out


def order(db: Backend, txn_id: str) -> dict[str, Any] | None:
    """An order's latest state, its evidence trail, breaks, postings, status queries."""
    rows = db.query(
        "SELECT txn_id, version, events, known, type, merchant_id, channel_id, currency, "
        "amount, coupon_amount, fee, original_txn_id, terminal_id, our_status, "
        "channel_status, channel_txn_id, standing, resolved, reversed, business_date, "
        "created_at_ms, updated_at_ms, queries_sent, breaks, evidence "
        "FROM {db}.order_states FINAL WHERE txn_id = %(t)s",
        {"t": txn_id},
    )
    if not rows:
        return None
    r = rows[0]
    cur = r["currency"]
    postings, net = _postings_of(db, txn_id, cur)
    queries = db.query(
        "SELECT query_id, attempt, reason, requested_at_ms FROM {db}.status_queries FINAL "
        "WHERE txn_id = %(t)s ORDER BY attempt",
        {"t": txn_id},
    )
    return {
        "txn_id": r["txn_id"],
        "known": bool(r["known"]),
        "type": r["type"],
        "merchant_id": r["merchant_id"],
        "channel_id": r["channel_id"],
        "currency": cur,
        "amount": money(r["amount"], cur),
        "coupon_amount": money(r["coupon_amount"], cur),
        "fee": money(r["fee"], cur),
        "original_txn_id": r["original_txn_id"],
        "terminal_id": r["terminal_id"],
        "our_status": r["our_status"],
        "channel_status": r["channel_status"],
        "channel_txn_id": r["channel_txn_id"],
        "standing": r["standing"],
        "resolved": bool(r["resolved"]),
        "reversed": bool(r["reversed"]),
        "business_date": _date(r["business_date"]),
        "created_at": _iso(r["created_at_ms"]),
        "updated_at": _iso(r["updated_at_ms"]),
        "events_applied": int(r["events"]),
        "queries_sent": int(r["queries_sent"]),
        "evidence": json.loads(r["evidence"]),
        "breaks": breaks_of(db, txn_id),
        "postings": postings,
        "position": {k: money(v, cur) for k, v in sorted(net.items()) if v},
        "status_queries": [
            {
                "query_id": q["query_id"],
                "attempt": int(q["attempt"]),
                "reason": q["reason"],
                "requested_at": _iso(q["requested_at_ms"]),
            }
            for q in queries
        ],
    }


def _postings_of(
    db: Backend, txn_id: str, cur: str | None
) -> tuple[list[dict[str, Any]], dict[str, Decimal]]:
    """An order's postings with their legs, and its net position per account, bucket
    and component."""
    postings: dict[str, dict[str, Any]] = {}
    legs = db.query(
        "SELECT posting_id, seq, reason, event_time_ms, account, bucket, component, amount "
        "FROM {db}.postings FINAL WHERE txn_id = %(t)s ORDER BY seq, account, bucket, component",
        {"t": txn_id},
    )
    for leg in legs:
        p = postings.setdefault(
            leg["posting_id"],
            {
                "posting_id": leg["posting_id"],
                "seq": int(leg["seq"]),
                "reason": leg["reason"],
                "event_time": _iso(leg["event_time_ms"]),
                "legs": [],
            },
        )
        p["legs"].append(
            {
                "account": leg["account"],
                "bucket": leg["bucket"],
                "component": leg["component"],
                "amount": money(leg["amount"], cur),
            }
        )
    net: dict[str, Decimal] = defaultdict(Decimal)
    for leg in legs:
        net[f"{leg['account']}|{leg['bucket']}|{leg['component']}"] += leg["amount"]
    return list(postings.values()), net


def breaks_of(db: Backend, txn_id: str) -> list[dict[str, Any]]:
    rows = db.query(
        "SELECT break_id, kind, event_time_ms, detail FROM {db}.breaks FINAL "
        "WHERE txn_id = %(t)s ORDER BY event_time_ms, break_id",
        {"t": txn_id},
    )
    return [
        {
            "break_id": r["break_id"],
            "kind": r["kind"],
            "event_time": _iso(r["event_time_ms"]),
            "detail": r["detail"],
        }
        for r in rows
    ]


def counts(db: Backend) -> dict[str, dict[str, int]]:
    """Rows per table: stored (with not yet merged replays) and distinct (FINAL)."""
    out = {}
    for t in TABLES:
        raw = db.query(f"SELECT count() AS n FROM {{db}}.{t}")[0]["n"]
        final = db.query(f"SELECT count() AS n FROM {{db}}.{t} FINAL")[0]["n"]
        out[t] = {"rows": int(raw), "distinct": int(final)}
    return out
