"""Reading the report's data (SQL): `build(db, day, now_ms)`."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from recon.funds import merchants, store
from recon.report.model import (
    AGING_BUCKETS,
    SHOWN,
    Candidate,
    ProposedLine,
    ReportData,
    Summary,
    Tolerated,
    aging_bucket,
)
from recon.run import candidates_in, channels_of, latest_run, run_summary, tolerated_of
from recon.settle import settle
from recon.suspense import open_entries
from sinks.backend import Backend
from tally.core.events import iso_ms


def build(db: Backend, day: date, now_ms: int) -> ReportData:
    channels = channels_of(db, day)
    runs: dict[str, dict[str, Any]] = {}
    by_class: dict[str, Summary] = {}
    tolerated: dict[str, Tolerated] = {}
    not_reconciled = []
    for ch in channels:
        run_id = latest_run(db, ch, day)
        if run_id is None:
            not_reconciled.append(ch)
            continue
        meta = db.query(
            "SELECT statement_delivery, finished_at_ms FROM {db}.recon_runs FINAL "
            "WHERE channel_id = %(c)s AND business_date = toDate(%(d)s) AND run_id = %(r)s",
            {"c": ch, "d": day.isoformat(), "r": run_id},
        )
        runs[ch] = {
            "run_id": run_id,
            "delivery": int(meta[0]["statement_delivery"]) if meta else 0,
            "finished_at": iso_ms(int(meta[0]["finished_at_ms"])) if meta else "",
        }
        by_class[ch] = run_summary(db, ch, day, run_id)
        tolerated[ch] = tolerated_of(db, ch, day, run_id)

    aging: dict[str, dict[str, tuple[int, Decimal]]] = {b: {} for b in AGING_BUCKETS}
    n_open = 0
    for e in open_entries(db, now_ms=now_ms):
        n_open += 1
        b = aging_bucket(max(0, now_ms - int(e.opened_at_ms)))
        n, a = aging[b].get(e.currency, (0, Decimal(0)))
        aging[b][e.currency] = (n + 1, a + Decimal(e.amount))

    arrivals = db.query(
        "SELECT channel_id, delivery, format, file_name, line_count, total_amount, "
        "checksum, loaded_at_ms, loaded_by FROM {db}.statement_versions FINAL "
        "WHERE business_date = toDate(%(d)s) ORDER BY channel_id, delivery",
        {"d": day.isoformat()},
    )
    have = {r["channel_id"] for r in arrivals}
    proposed, n_proposed = _proposed(db, day, runs)
    funds_run, funds, payouts_run, payouts = _funds(db, day)
    return ReportData(
        day=day,
        as_of_ms=now_ms,
        channels=channels,
        runs=runs,
        by_class=by_class,
        aging=aging,
        open_entries=n_open,
        settlement=settle(db, day),
        arrivals=arrivals,
        missing_statements=[c for c in channels if c not in have],
        not_reconciled=not_reconciled,
        tolerated={ch: t for ch, t in tolerated.items() if t},
        tolerated_items=_tolerated_items(db, day, runs),
        proposed=proposed,
        proposed_count=n_proposed,
        funds_run=funds_run,
        funds=funds,
        payouts_run=payouts_run,
        payouts=payouts,
    )


def _funds(
    db: Backend, day: date
) -> tuple[dict[str, Any], list[dict[str, Any]], str, list[dict[str, Any]]]:
    """The latest settlement run on or after `day` (its credits come after the
    business day) and its results; the latest merchant payout run of `day` and its."""
    runs = db.query(
        "SELECT run_id, run_date FROM {db}.settlement_runs FINAL "
        "WHERE run_date >= toDate(%(d)s) ORDER BY run_date DESC, started_at_ms DESC LIMIT 1",
        {"d": day.isoformat()},
    )
    funds_run, funds = {}, []
    if runs:
        funds_run = {"run_id": runs[0]["run_id"], "run_date": runs[0]["run_date"]}
        funds = store.stored_results(db, runs[0]["run_date"], runs[0]["run_id"])
    payouts_run = merchants.previous_run(db, day) or ""
    payouts = merchants.stored_results(db, day, payouts_run) if payouts_run else []
    return funds_run, funds, payouts_run, payouts


def _runs_where(runs: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    return "run_id IN %(runs)s", {"runs": tuple(r["run_id"] for r in runs.values()) or ("",)}


def _tolerated_items(db: Backend, day: date, runs: dict[str, dict[str, Any]]) -> list[Any]:
    """The SHOWN items matched with the largest differences (amount + fee)."""
    where, params = _runs_where(runs)

    def absolute(x: str) -> str:
        return f"if({x} < 0, -{x}, {x})"  # abs() of a Decimal: not on 18.16

    return db.query(
        "SELECT channel_id, item_key, currency, ledger_amount, statement_amount, "
        "amount_difference, ledger_fee, statement_fee, fee_difference, match_method "
        "FROM {db}.recon_results FINAL WHERE business_date = toDate(%(d)s) AND "
        f"{where} AND (amount_difference != 0 OR fee_difference != 0) ORDER BY "
        f"{absolute('amount_difference')} + {absolute('fee_difference')} DESC, channel_id, "
        f"item_key LIMIT {SHOWN}",
        {"d": day.isoformat(), **params},
    )


def _proposed(
    db: Backend, day: date, runs: dict[str, dict[str, Any]]
) -> tuple[list[ProposedLine], int]:
    """The first SHOWN proposed lines of the latest runs with their candidates (our
    amount and time read from the orders), and how many there are."""
    where, params = _runs_where(runs)
    params["d"] = day.isoformat()
    n = db.query(
        "SELECT count() AS n FROM {db}.recon_results FINAL WHERE business_date = "
        f"toDate(%(d)s) AND {where} AND class = 'proposed'",
        params,
    )
    rows = db.query(
        "SELECT channel_id, item_key, statement_line, currency, statement_amount, detail "
        "FROM {db}.recon_results FINAL WHERE business_date = toDate(%(d)s) AND "
        f"{where} AND class = 'proposed' ORDER BY channel_id, statement_line, item_key "
        f"LIMIT {SHOWN}",
        params,
    )
    if not rows:
        return [], int(n[0]["n"]) if n else 0
    txns = sorted({t for r in rows for t, _ in candidates_in(r["detail"])})
    orders = {
        o["txn_id"]: o
        for o in db.query(
            "SELECT txn_id, type, amount, coupon_amount, created_at_ms FROM (SELECT txn_id, "
            "type, amount, coupon_amount, created_at_ms FROM {db}.order_states FINAL) "
            "WHERE txn_id IN %(t)s",
            {"t": tuple(txns) or ("",)},
        )
    }
    lines = {
        (r["channel_id"], int(r["line_no"])): r
        for ch, run in runs.items()
        for r in db.query(
            "SELECT channel_id, line_no, txn_id, channel_txn_id, occurred_at_ms FROM "
            "{db}.statement_lines FINAL WHERE channel_id = %(c)s AND business_date = "
            "toDate(%(d)s) AND delivery = %(v)s AND line_no IN %(n)s",
            {
                "c": ch,
                "d": day.isoformat(),
                "v": int(run["delivery"]),
                "n": tuple(
                    int(x["statement_line"])
                    for x in rows
                    if x["channel_id"] == ch and x["statement_line"] is not None
                )
                or (0,),
            },
        )
    }

    def candidate(txn: str, score: int) -> Candidate:
        o = orders.get(txn)
        if o is None:
            return Candidate(txn, score, None, None)
        amount = None if o["amount"] is None else Decimal(o["amount"])
        if amount is not None and o["type"] == "payment" and o["coupon_amount"] is not None:
            amount -= Decimal(o["coupon_amount"])
        created = None if o["created_at_ms"] is None else int(o["created_at_ms"])
        return Candidate(txn, score, amount, created)

    out = []
    for r in rows:
        no = None if r["statement_line"] is None else int(r["statement_line"])
        ln = lines.get((r["channel_id"], no)) if no is not None else None
        out.append(
            ProposedLine(
                channel_id=r["channel_id"],
                item_key=r["item_key"],
                line_no=no,
                reference=(ln["txn_id"] or ln["channel_txn_id"]) if ln else "",
                occurred_at_ms=int(ln["occurred_at_ms"]) if ln else None,
                currency=r["currency"],
                amount=None if r["statement_amount"] is None else Decimal(r["statement_amount"]),
                candidates=tuple(candidate(t, sc) for t, sc in candidates_in(r["detail"])),
            )
        )
    return out, int(n[0]["n"]) if n else len(out)
