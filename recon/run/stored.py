"""The stored runs of (channel, day): statement versions in force, run ids, the
summaries, tolerated money, differences between two runs, the results."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from recon.run.model import RESULT_COLUMNS, Change
from sinks.backend import Backend

# ---------------------------------------------------------------- statements


@dataclass(frozen=True)
class Delivery:
    delivery: int
    checksum: str


def deliveries(db: Backend, channel: str, days: list[date]) -> dict[date, Delivery]:
    """The statement version in force (highest delivery with a version row) per day."""
    rows = db.query(
        "SELECT business_date AS day, max(delivery) AS dl, argMax(checksum, delivery) AS sum "
        "FROM {db}.statement_versions FINAL WHERE channel_id = %(c)s "
        "AND business_date IN (" + ", ".join(f"toDate('{d.isoformat()}')" for d in days) + ") "
        "GROUP BY business_date",
        {"c": channel},
    )
    return {r["day"]: Delivery(int(r["dl"]), r["sum"]) for r in rows}


def channels_of(db: Backend, day: date) -> list[str]:
    """Channels with a statement or ledger items for a business date."""
    rows = db.query(
        "SELECT DISTINCT channel_id FROM {db}.statement_versions FINAL "
        "WHERE business_date = toDate(%(d)s)",
        {"d": day.isoformat()},
    ) + db.query(
        "SELECT DISTINCT assumeNotNull(channel_id) AS channel_id FROM (SELECT channel_id, "
        "business_date, our_status, type, reversed FROM {db}.order_states FINAL) "
        "WHERE business_date = toDate(%(d)s) AND our_status = 'success' AND reversed = 0 "
        "AND type IN ('payment', 'refund') AND isNotNull(channel_id)",
        {"d": day.isoformat()},
    )
    return sorted({r["channel_id"] for r in rows})


def new_run_id(channel: str, day: date, now_ms: int) -> str:
    return f"{day.isoformat()}.{channel}.{now_ms}.{secrets.token_hex(3)}"


def previous_run(db: Backend, channel: str, day: date, before: str | None = None) -> str | None:
    rows = db.query(
        "SELECT run_id FROM {db}.recon_runs FINAL WHERE channel_id = %(c)s "
        "AND business_date = toDate(%(d)s) AND run_id != %(r)s "
        "ORDER BY started_at_ms DESC, run_id DESC LIMIT 1",
        {"c": channel, "d": day.isoformat(), "r": before or ""},
    )
    return rows[0]["run_id"] if rows else None


def latest_run(db: Backend, channel: str, day: date) -> str | None:
    return previous_run(db, channel, day)


def tolerated_of(
    db: Backend, channel: str, day: date, run_id: str
) -> dict[str, tuple[int, Decimal, Decimal]]:
    """currency -> (items matched with a difference, amount differences summed, fee
    differences summed): tolerated money is still money."""
    rows = db.query(
        "SELECT currency, count() AS n, sum(amount_difference) AS a, "
        "sum(fee_difference) AS f FROM {db}.recon_results FINAL WHERE channel_id = %(c)s "
        "AND business_date = toDate(%(d)s) AND run_id = %(r)s "
        "AND (amount_difference != 0 OR fee_difference != 0) GROUP BY currency ORDER BY currency",
        {"c": channel, "d": day.isoformat(), "r": run_id},
    )
    return {r["currency"]: (int(r["n"]), Decimal(r["a"]), Decimal(r["f"])) for r in rows}


def run_summary(
    db: Backend, channel: str, day: date, run_id: str
) -> dict[str, dict[str, tuple[int, Decimal]]]:
    """class -> currency -> (items, amount: ours, else the statement's)."""
    rows = db.query(
        "SELECT class, currency, count() AS n, "
        "sum(ifNull(ledger_amount, ifNull(statement_amount, toDecimal64(0, 4)))) AS amount "
        "FROM {db}.recon_results FINAL WHERE channel_id = %(c)s AND business_date = toDate(%(d)s) "
        "AND run_id = %(r)s GROUP BY class, currency ORDER BY class, currency",
        {"c": channel, "d": day.isoformat(), "r": run_id},
    )
    out: dict[str, dict[str, tuple[int, Decimal]]] = {}
    for r in rows:
        out.setdefault(r["class"], {})[r["currency"]] = (int(r["n"]), Decimal(r["amount"]))
    return out


def diff(db: Backend, channel: str, day: date, old: str, new: str) -> list[Change]:
    """Items whose class or amounts differ between two runs of (channel, day)."""

    def pick(col: str, run: str) -> str:
        return f"anyIf({col}, run_id = %({run})s)"

    def text(col: str, run: str) -> str:
        return f"ifNull(toString({pick(col, run)}), '-')"

    money = ("ledger_amount", "statement_amount", "ledger_fee", "statement_fee")
    rows = db.query(
        "SELECT item_key, o, n, cur, oa, na, osa, nsa FROM ("
        f"SELECT item_key, {pick('class', 'o')} AS o, {pick('class', 'n')} AS n, "
        "any(currency) AS cur, "
        f"{pick('ledger_amount', 'o')} AS oa, {pick('ledger_amount', 'n')} AS na, "
        f"{pick('statement_amount', 'o')} AS osa, {pick('statement_amount', 'n')} AS nsa, "
        + ", ".join(f"{text(m, 'o')} AS o_{m}, {text(m, 'n')} AS n_{m}" for m in money)
        + " FROM {db}.recon_results FINAL WHERE channel_id = %(c)s "
        "AND business_date = toDate(%(d)s) AND run_id IN (%(o)s, %(n)s) GROUP BY item_key) "
        "WHERE o != n OR " + " OR ".join(f"o_{m} != n_{m}" for m in money) + " ORDER BY item_key",
        {"c": channel, "d": day.isoformat(), "o": old, "n": new},
    )
    return [
        Change(
            item_key=r["item_key"],
            old=r["o"],
            new=r["n"],
            currency=r["cur"],
            old_amount=r["oa"],
            new_amount=r["na"],
            old_statement_amount=r["osa"],
            new_statement_amount=r["nsa"],
        )
        for r in rows
    ]


def results(
    db: Backend, channel: str, day: date, run_id: str, cls: str | None = None
) -> list[dict[str, Any]]:
    where = "channel_id = %(c)s AND business_date = toDate(%(d)s) AND run_id = %(r)s"
    params: dict[str, Any] = {"c": channel, "d": day.isoformat(), "r": run_id}
    if cls:
        where += " AND class = %(k)s"
        params["k"] = cls
    return db.query(
        f"SELECT {', '.join(RESULT_COLUMNS)} FROM {{db}}.recon_results FINAL "
        f"WHERE {where} ORDER BY item_key",
        params,
    )
