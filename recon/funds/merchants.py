"""Merchant payout reconciliation in ClickHouse: payout batch files as versions, the
payout debits of the bank statements in force, runs and their results, suspense.

A payout file is one version per business date: the same file again writes nothing,
another file for the same date is the next delivery and supersedes the earlier ones
(lines are written before the version row; readers take the highest delivery with a
version row). `run_merchants` compares the payouts with `recon.settle.settle` of the
date through the pure `recon.funds.payouts.compare`, stores a new run, reports what
changed since the previous run of the date and parks the breaks in suspense (channel
`payouts`, cleared again when a later run finds the merchant paid).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from recon import suspense as S
from recon.funds.credits import in_force
from recon.funds.payouts import (
    BREAK_CLASSES,
    CLASSES,
    MerchantResult,
    Payout,
    PayoutFile,
    compare,
    payout_of_debit,
)
from recon.funds.store import latest_run, park, store_run
from recon.settle import settle, to_minor_units
from sinks.backend import Backend
from tally.core.money import format_minor, to_decimal

VERSION_COLUMNS = (
    "business_date",
    "delivery",
    "checksum",
    "file_name",
    "line_count",
    "total",
    "loaded_at_ms",
    "loaded_by",
)
LINE_COLUMNS = (
    "business_date",
    "delivery",
    "line_no",
    "merchant_id",
    "currency",
    "amount",
    "value_date",
    "payout_ref",
)
RUN_COLUMNS = (
    "run_id",
    "run_date",
    "source",
    "deliveries",
    "counts",
    "started_at_ms",
    "finished_at_ms",
)
RESULT_COLUMNS = (
    "run_id",
    "run_date",
    "item_key",
    "class",
    "merchant_id",
    "currency",
    "net",
    "held_amount",
    "held_txn_ids",
    "expected_amount",
    "paid_amount",
    "difference",
    "payout_refs",
    "value_dates",
    "detail",
)
SUSPENSE_CHANNEL = "payouts"
SOURCES = ("file", "bank")
# days after the business date in which bank debits paying it are looked for
BANK_DAYS = 10


@dataclass
class PayoutLoad:
    status: str  # loaded | already_loaded
    business_date: date
    delivery: int
    file_name: str
    payouts: int
    totals: dict[str, str]  # currency -> total paid
    superseded: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "business_date": self.business_date.isoformat(),
            "delivery": self.delivery,
            "file_name": self.file_name,
            "payouts": self.payouts,
            "totals": self.totals,
            "superseded": self.superseded,
        }


def store_payouts(
    db: Backend, pf: PayoutFile, *, loaded_by: str = "", now_ms: int | None = None
) -> PayoutLoad:
    """Store a parsed, checked payout file as a new version of its business date."""
    d = pf.business_date
    versions = db.query(
        "SELECT delivery, checksum FROM {db}.payout_versions FINAL "
        "WHERE business_date = toDate(%(d)s) ORDER BY delivery",
        {"d": d.isoformat()},
    )
    sums: dict[str, int] = {}
    for p in pf.payouts:
        sums[p.currency] = sums.get(p.currency, 0) + p.amount
    totals = {c: format_minor(v, c) for c, v in sorted(sums.items())}

    def result(status: str, delivery: int, superseded: list[int]) -> PayoutLoad:
        return PayoutLoad(status, d, delivery, pf.file_name, len(pf.payouts), totals, superseded)

    same = [v for v in versions if v["checksum"] == pf.checksum]
    if same:
        return result("already_loaded", int(same[0]["delivery"]), [])
    top = db.query(
        "SELECT max(delivery) AS m FROM {db}.payout_lines WHERE business_date = toDate(%(d)s)",
        {"d": d.isoformat()},
    )
    delivery = (
        max([int(v["delivery"]) for v in versions] + [int(top[0]["m"] or 0) if top else 0]) + 1
    )
    db.insert(
        "payout_lines",
        LINE_COLUMNS,
        [
            (
                d,
                delivery,
                p.line_no,
                p.merchant_id,
                p.currency,
                to_decimal(p.amount, p.currency),
                p.value_date,
                p.ref,
            )
            for p in pf.payouts
        ],
    )
    grand = sum((to_decimal(p.amount, p.currency) for p in pf.payouts), Decimal(0))
    db.insert(
        "payout_versions",
        VERSION_COLUMNS,
        [
            (
                d,
                delivery,
                pf.checksum,
                pf.file_name,
                len(pf.payouts),
                grand,
                int(time.time() * 1000) if now_ms is None else now_ms,
                loaded_by,
            )
        ],
    )
    return result("loaded", delivery, [int(v["delivery"]) for v in versions])


# --------------------------------------------------------------------- reading


def file_payouts(db: Backend, day: date) -> tuple[list[Payout], dict[str, int]]:
    """The payouts of the payout file in force for business date `day`, and the
    delivery read."""
    rows = db.query(
        "SELECT delivery, line_no, merchant_id, currency, toString(amount) AS amount, "
        "value_date, payout_ref FROM {db}.payout_lines FINAL "
        "WHERE business_date BETWEEN toDate(%(a)s) AND toDate(%(b)s) AND "
        + in_force("payout_versions", "business_date", "business_date")
        + " ORDER BY line_no",
        {"a": day.isoformat(), "b": day.isoformat()},
    )
    used = {f"payouts/{day.isoformat()}": int(r["delivery"]) for r in rows[:1]}
    return [
        Payout(
            merchant_id=r["merchant_id"],
            currency=r["currency"],
            amount=to_minor_units(Decimal(r["amount"]), r["currency"]),
            value_date=r["value_date"],
            ref=r["payout_ref"],
            line_no=int(r["line_no"]),
        )
        for r in rows
    ], used


def bank_payouts(db: Backend, day: date) -> tuple[list[Payout], dict[str, int]]:
    """The booked debits of the bank statements in force whose payout reference names
    business date `day` (value dates from `day` to BANK_DAYS later)."""
    end = day + timedelta(days=BANK_DAYS)
    rows = db.query(
        "SELECT account, statement_date, delivery, entry_ref, customer_ref, remittance, "
        "value_date, currency, toString(amount) AS amount, line_no FROM {db}.bank_entries FINAL "
        "WHERE statement_date BETWEEN toDate(%(a)s) AND toDate(%(b)s) "
        "AND direction = 'D' AND booked = 1 AND value_date >= toDate(%(s)s) AND "
        + in_force("bank_statement_versions", "account, statement_date", "statement_date")
        + " ORDER BY account, statement_date, entry_ref",
        {"a": day.isoformat(), "b": (end + timedelta(days=7)).isoformat(), "s": day.isoformat()},
    )
    out, used = [], {}
    for r in rows:
        merchant = payout_of_debit(f"{r['customer_ref']} {r['remittance']}", day)
        if merchant is None:
            continue
        used[f"{r['account']}/{r['statement_date']}"] = int(r["delivery"])
        out.append(
            Payout(
                merchant_id=merchant,
                currency=r["currency"],
                amount=to_minor_units(Decimal(r["amount"]), r["currency"]),
                value_date=r["value_date"],
                ref=f"{r['account']}:{r['entry_ref']}",
                line_no=int(r["line_no"]),
            )
        )
    return out, used


# ------------------------------------------------------------------------ runs


def result_json(r: MerchantResult) -> dict[str, Any]:
    def money(v: int | None) -> str | None:
        return None if v is None else format_minor(v, r.currency)

    return {
        "item_key": r.item_key,
        "class": r.cls,
        "merchant_id": r.merchant_id,
        "currency": r.currency,
        "net": money(r.net),
        "held_amount": money(r.held_amount),
        "held_txn_ids": list(r.held_txn_ids),
        "expected": money(r.expected),
        "paid": money(r.paid),
        "difference": money(r.difference),
        "payout_refs": list(r.refs),
        "value_dates": [d.isoformat() for d in r.value_dates],
        "detail": r.detail,
    }


@dataclass
class MerchantRun:
    run_id: str
    run_date: date
    source: str
    results: list[MerchantResult]
    previous_run: str | None
    changes: list[dict[str, Any]]
    suspense: dict[str, int]
    deliveries: dict[str, int]
    disagreements: list[str]

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(CLASSES, 0)
        for r in self.results:
            out[r.cls] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "business_date": self.run_date.isoformat(),
            "source": self.source,
            "counts": self.counts(),
            "previous_run": self.previous_run,
            "changes": self.changes,
            "suspense": self.suspense,
            "deliveries": self.deliveries,
            "settlement_disagrees_with_postings": self.disagreements,
            "results": [result_json(r) for r in self.results],
        }


def previous_run(db: Backend, day: date) -> str | None:
    return latest_run(db, "merchant_recon_runs", day)


def stored_results(db: Backend, day: date, run_id: str | None = None) -> list[dict[str, Any]]:
    """A run's results (default: the latest of the date), money as strings."""
    run_id = run_id or previous_run(db, day)
    if run_id is None:
        return []
    return db.query(
        "SELECT item_key, class, merchant_id, currency, toString(net) AS net, "
        "toString(held_amount) AS held_amount, held_txn_ids, "
        "toString(expected_amount) AS expected, toString(paid_amount) AS paid, "
        "toString(difference) AS difference, payout_refs, value_dates, detail "
        "FROM {db}.merchant_recon_results FINAL "
        "WHERE run_date = toDate(%(d)s) AND run_id = %(r)s ORDER BY item_key",
        {"d": day.isoformat(), "r": run_id},
    )


def _paid(v: Any) -> Decimal | None:
    return None if v is None or v == "\\N" else Decimal(v)


def _diff(old: list[dict[str, Any]], new: list[MerchantResult]) -> list[dict[str, Any]]:
    before = {r["item_key"]: r for r in old}
    after = {r.item_key: r for r in new}
    out = []
    for key in sorted(before.keys() | after.keys()):
        o, n = before.get(key), after.get(key)
        op = _paid(o["paid"]) if o else None
        np_ = None if n is None or n.paid is None else to_decimal(n.paid, n.currency)
        oc, nc = (o["class"] if o else ""), (n.cls if n else "")
        if oc != nc or op != np_:
            out.append(
                {
                    "item_key": key,
                    "old": oc,
                    "new": nc,
                    "old_paid": None if op is None else str(op),
                    "new_paid": None if np_ is None else str(np_),
                }
            )
    return out


def run_merchants(
    db: Backend,
    day: date,
    *,
    source: str = "file",
    now_ms: int | None = None,
    dry_run: bool = False,
) -> MerchantRun:
    """Compare the payouts for business date `day` (from the payout file in force or
    the bank statements' payout debits) with `tally settle`'s figures (module doc)."""
    if source not in SOURCES:
        raise ValueError(f"source is file or bank, not {source!r}")
    started = int(time.time() * 1000) if now_ms is None else now_ms
    payouts, used = file_payouts(db, day) if source == "file" else bank_payouts(db, day)
    s = settle(db, day)
    results = compare(s.merchants, payouts, day)
    prev = previous_run(db, day)
    changes = _diff(stored_results(db, day, prev), results) if prev else []
    run_id = f"{day.isoformat()}.merchants.{started}.{secrets.token_hex(3)}"
    out = MerchantRun(run_id, day, source, results, prev, changes, {}, used, s.disagreements)
    if dry_run:
        return out
    finished = store_run(
        db,
        ("merchant_recon_results", RESULT_COLUMNS, [_row(run_id, day, r) for r in results]),
        ("merchant_recon_runs", RUN_COLUMNS, (run_id, day, source)),
        used,
        out.counts(),
        started,
        now_ms,
    )
    breaks = [
        S.Sighting(
            channel_id=SUSPENSE_CHANNEL,
            item_key=r.item_key,
            txn_id="",
            channel_txn_id=r.item_key,
            merchant_id=r.merchant_id,
            kind=r.cls,
            break_id=f"po:{day.isoformat()}:{r.cls}:{r.item_key}",
            currency=r.currency,
            amount=to_decimal(r.at_risk, r.currency),
            business_date=day,
        )
        for r in results
        if r.cls in BREAK_CLASSES
    ]
    ok = [(SUSPENSE_CHANNEL, r.item_key, r.cls) for r in results if r.cls not in BREAK_CLASSES]
    out.suspense = park(db, run_id, breaks, ok, now_ms=finished)
    return out


def _row(run_id: str, day: date, r: MerchantResult) -> tuple[Any, ...]:
    def dec(v: int | None) -> Decimal | None:
        return None if v is None else to_decimal(v, r.currency)

    return (
        run_id,
        day,
        r.item_key,
        r.cls,
        r.merchant_id,
        r.currency,
        dec(r.net),
        dec(r.held_amount),
        list(r.held_txn_ids),
        dec(r.expected),
        dec(r.paid),
        dec(r.difference),
        list(r.refs),
        list(r.value_dates),
        r.detail,
    )
