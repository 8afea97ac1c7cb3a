"""What a settlement run reads from ClickHouse: the bank credits in force, and the day
totals of the channel statements (or else of the ledger)."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from recon.funds.settlement import Credit, DayTotals
from sinks.backend import Backend


def in_force(table: str, keys: str, date_col: str) -> str:
    return (
        f"({keys}, delivery) IN (SELECT {keys}, max(delivery) FROM {{db}}.{table} FINAL "
        f"WHERE {date_col} BETWEEN toDate(%(a)s) AND toDate(%(b)s) GROUP BY {keys})"
    )


def read_credits(db: Backend, start: date, end: date) -> tuple[list[Credit], dict[str, int]]:
    """Booked credits with a value date in [start, end] of the bank statements in
    force, and the deliveries read (account/date -> delivery)."""
    # a credit's statement date is at or after its value date, at most a few days
    rows = db.query(
        "SELECT account, statement_date, delivery, entry_ref, value_date, currency, "
        "toString(amount) AS amount, remittance, line_no FROM {db}.bank_entries FINAL "
        "WHERE statement_date BETWEEN toDate(%(a)s) AND toDate(%(b)s) "
        "AND direction = 'C' AND booked = 1 "
        "AND value_date BETWEEN toDate(%(s)s) AND toDate(%(e)s) AND "
        + in_force("bank_statement_versions", "account, statement_date", "statement_date"),
        {
            "a": (start - timedelta(days=7)).isoformat(),
            "b": (end + timedelta(days=7)).isoformat(),
            "s": start.isoformat(),
            "e": end.isoformat(),
        },
    )
    used: dict[str, int] = {}
    credits = []
    for r in rows:
        used[f"{r['account']}/{r['statement_date']}"] = int(r["delivery"])
        credits.append(
            Credit(
                account=r["account"],
                ref=r["entry_ref"],
                value_date=r["value_date"],
                currency=r["currency"],
                amount=Decimal(r["amount"]),
                remittance=r["remittance"],
                statement_date=r["statement_date"],
                line_no=int(r["line_no"]),
            )
        )
    return credits, used


def statement_totals(db: Backend, start: date, end: date) -> list[DayTotals]:
    """Per channel, business date and currency, what the statement in force says
    moved: payments collected (success, or refunded later), refunds paid, fees."""
    ok = (
        "((kind = 'payment' AND status IN ('success', 'refunded')) "
        "OR (kind = 'refund' AND status = 'success'))"
    )
    rows = db.query(
        "SELECT channel_id, business_date, currency, "
        "toString(sumIf(amount, kind = 'payment' AND status IN ('success', 'refunded'))) AS gross, "
        "toString(sumIf(amount, kind = 'refund' AND status = 'success')) AS refunds, "
        f"toString(sumIf(assumeNotNull(fee), {ok} AND isNotNull(fee))) AS fees "
        "FROM {db}.statement_lines FINAL "
        "WHERE business_date BETWEEN toDate(%(a)s) AND toDate(%(b)s) AND "
        + in_force("statement_versions", "channel_id, business_date", "business_date")
        + " GROUP BY channel_id, business_date, currency",
        {"a": start.isoformat(), "b": end.isoformat()},
    )
    return [_totals(r, "statement") for r in rows]


def ledger_totals(db: Backend, start: date, end: date) -> list[DayTotals]:
    """The same from our ledger (order_states), for days without a statement."""
    zero = "toDecimal64(0, 4)"
    rows = db.query(
        "SELECT ch AS channel_id, bd AS business_date, cur AS currency, "
        f"toString(sumIf(amt - ifNull(coupon_amount, {zero}), typ = 'payment')) AS gross, "
        "toString(sumIf(amt, typ = 'refund')) AS refunds, "
        f"toString(sum(ifNull(fee, {zero}))) AS fees FROM ("
        "SELECT assumeNotNull(channel_id) AS ch, assumeNotNull(business_date) AS bd, "
        "assumeNotNull(currency) AS cur, assumeNotNull(amount) AS amt, coupon_amount, fee, "
        "assumeNotNull(type) AS typ, our_status, reversed "
        "FROM {db}.order_states FINAL WHERE known = 1) "
        "WHERE our_status = 'success' AND reversed = 0 AND typ IN ('payment', 'refund') "
        "AND bd BETWEEN toDate(%(a)s) AND toDate(%(b)s) "
        "GROUP BY ch, bd, cur",
        {"a": start.isoformat(), "b": end.isoformat()},
    )
    return [_totals(r, "ledger") for r in rows]


def _totals(r: dict[str, Any], source: str) -> DayTotals:
    return DayTotals(
        channel_id=r["channel_id"],
        business_date=r["business_date"],
        currency=r["currency"],
        gross=Decimal(r["gross"]),
        refunds=Decimal(r["refunds"]),
        fees=Decimal(r["fees"]),
        source=source,
    )


def day_totals(db: Backend, start: date, end: date) -> list[DayTotals]:
    """Statement totals, and ledger totals for a channel and day with no statement."""
    st = statement_totals(db, start, end)
    have = {(t.channel_id, t.business_date) for t in st}
    return st + [
        t for t in ledger_totals(db, start, end) if (t.channel_id, t.business_date) not in have
    ]
