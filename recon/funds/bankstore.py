"""Bank statements in ClickHouse, one version per (account, statement date): the same
file again writes nothing, another file for the same account and date is the next
delivery and supersedes the earlier ones (readers take the highest delivery with a
version row; entries are written before the version row)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from recon.funds.bank import BankStatement
from sinks.backend import Backend

VERSION_COLUMNS = (
    "account",
    "statement_date",
    "delivery",
    "checksum",
    "format",
    "file_name",
    "entry_count",
    "currency",
    "opening",
    "closing",
    "loaded_at_ms",
    "loaded_by",
)
ENTRY_COLUMNS = (
    "account",
    "statement_date",
    "delivery",
    "entry_no",
    "line_no",
    "direction",
    "amount",
    "currency",
    "value_date",
    "booking_date",
    "entry_ref",
    "bank_ref",
    "customer_ref",
    "remittance",
    "booked",
    "raw",
)


@dataclass
class BankLoad:
    status: str  # loaded | already_loaded
    account: str
    statement_date: date
    delivery: int
    format: str
    file_name: str
    entries: int
    credits: Decimal
    debits: Decimal
    opening: Decimal
    closing: Decimal
    superseded: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "account": self.account,
            "statement_date": self.statement_date.isoformat(),
            "delivery": self.delivery,
            "format": self.format,
            "file_name": self.file_name,
            "entries": self.entries,
            "credits": str(self.credits),
            "debits": str(self.debits),
            "opening": str(self.opening),
            "closing": str(self.closing),
            "superseded": self.superseded,
        }


def bank_versions(db: Backend, account: str, day: date) -> list[dict[str, Any]]:
    return db.query(
        "SELECT delivery, checksum FROM {db}.bank_statement_versions FINAL "
        "WHERE account = %(a)s AND statement_date = toDate(%(d)s) ORDER BY delivery",
        {"a": account, "d": day.isoformat()},
    )


def store_bank_statement(
    db: Backend, st: BankStatement, account: str, *, loaded_by: str = "", now_ms: int | None = None
) -> BankLoad:
    """Store a parsed, checked bank statement as a new version of (account, date)."""
    versions = bank_versions(db, account, st.statement_date)
    same = [v for v in versions if v["checksum"] == st.checksum]
    if same:
        return _load("already_loaded", st, account, int(same[0]["delivery"]), [])
    # past the highest delivery and any entries of an interrupted load
    top = db.query(
        "SELECT max(delivery) AS m FROM {db}.bank_entries "
        "WHERE account = %(a)s AND statement_date = toDate(%(d)s)",
        {"a": account, "d": st.statement_date.isoformat()},
    )
    delivery = (
        max([int(v["delivery"]) for v in versions] + [int(top[0]["m"] or 0) if top else 0]) + 1
    )
    _write(db, st, account, delivery, loaded_by, now_ms)
    return _load("loaded", st, account, delivery, [int(v["delivery"]) for v in versions])


def _load(
    status: str, st: BankStatement, account: str, delivery: int, superseded: list[int]
) -> BankLoad:
    booked = [e for e in st.entries if e.booked]
    return BankLoad(
        status=status,
        account=account,
        statement_date=st.statement_date,
        delivery=delivery,
        format=st.format,
        file_name=st.file_name,
        entries=len(st.entries),
        credits=sum((e.amount for e in booked if e.direction == "C"), Decimal(0)),
        debits=sum((e.amount for e in booked if e.direction == "D"), Decimal(0)),
        opening=st.opening,
        closing=st.closing,
        superseded=superseded,
    )


def _write(
    db: Backend,
    st: BankStatement,
    account: str,
    delivery: int,
    loaded_by: str,
    now_ms: int | None,
) -> None:
    """The entries first, then the version row that makes them visible."""
    db.insert(
        "bank_entries",
        ENTRY_COLUMNS,
        [
            (
                account,
                st.statement_date,
                delivery,
                e.entry_no,
                e.line_no,
                e.direction,
                e.amount,
                e.currency,
                e.value_date,
                e.booking_date,
                e.ref,
                e.bank_ref,
                e.customer_ref,
                e.remittance,
                int(e.booked),
                e.raw,
            )
            for e in st.entries
        ],
    )
    db.insert(
        "bank_statement_versions",
        VERSION_COLUMNS,
        [
            (
                account,
                st.statement_date,
                delivery,
                st.checksum,
                st.format,
                st.file_name,
                len(st.entries),
                st.currency,
                st.opening,
                st.closing,
                int(time.time() * 1000) if now_ms is None else now_ms,
                loaded_by,
            )
        ],
    )
