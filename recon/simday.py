"""A simulated business day with its channel statement files and the reconciliation's
answer, for `tally simulate --statements`, `tally demo` and the end-of-day tests.

The day itself is pure (`tally.sim.day.simulate_statements`: traffic, the stream run
in memory, truthful statements, injected statement anomalies and the oracle; the
rules are in `tally.sim.statements`, re-exported here). `SimDay` adds what needs
recon and the sinks: the stream's results as the sink stores them (`SimDay.rows()`,
`SimDay.store(db)` inserts them into ClickHouse) and the statement files in every
format with `expected-recon.json` (`SimDay.write_files`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import fields
from datetime import date
from pathlib import Path
from typing import Any

from recon.statements import Statement, StatementLine, write
from sinks import rows as R
from sinks.schema import migrate
from tally.core.ledger import BalanceBook
from tally.core.messages import balance_snapshot, order_snapshot
from tally.core.money import to_decimal
from tally.core.orders import view
from tally.core.pipeline import partition_for
from tally.core.policy import Policies
from tally.sim.config import SimConfig, Simulation
from tally.sim.day import StatementDay, simulate_statements
from tally.sim.statements import (
    CLASSES,
    Key,
    LedgerItem,
    Line,
    StatementAnomalies,
    expected_classes,
    last_time,
    ledger_items,
    truthful_lines,
)

__all__ = [
    "CLASSES",
    "EXTENSIONS",
    "Key",
    "LedgerItem",
    "Line",
    "SimDay",
    "StatementAnomalies",
    "expected_classes",
    "file_name",
    "ledger_items",
    "simulate_day",
    "truthful_lines",
]

EXTENSIONS = {"wechat": "csv", "alipay": "csv", "mt940": "sta", "camt053": "xml", "csv": "csv"}


def file_name(channel: str, day: date, fmt: str) -> str:
    return f"{channel}-{day.isoformat()}.{EXTENSIONS.get(fmt, 'txt')}"


def simulate_day(
    config: SimConfig,
    policies: Policies | None = None,
    anomalies: StatementAnomalies | None = None,
    partitions: int = 4,
    sim: Simulation | None = None,
) -> SimDay:
    """`tally.sim.day.simulate_statements` on the wall clock, as a `SimDay`. `sim`: the
    traffic of `config` already generated, so as not to generate it twice."""
    day = simulate_statements(
        config, policies, anomalies, partitions, sim, clock=lambda: int(time.time() * 1000)
    )
    return SimDay(**{f.name: getattr(day, f.name) for f in fields(day)})


class SimDay(StatementDay):
    """The simulated day, with its ClickHouse rows and its statement files."""

    # ------------------------------------------------------------ ClickHouse

    def rows(self) -> dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]]]:
        """The stream's results as the sink stores them: table -> (columns, rows)."""
        pipe = self.pipeline

        def rows_of(table: R.Table, docs: Iterable[tuple[dict[str, Any], int]]) -> list[Any]:
            out: list[Any] = []
            for d, partition in docs:
                raw = json.dumps(d, separators=(",", ":")).encode()
                out.extend(R.rows_for(table, None, raw, partition))
            return out

        def orders() -> Iterator[tuple[dict[str, Any], int]]:
            for s in pipe.orders.values():
                ch = s.channel_id or (s.evidence[0].channel_id if s.evidence else "")
                v = view(s, self.policies[ch])
                yield order_snapshot(s, v, last_time(s)), partition_for(s.txn_id, pipe.partitions)

        book = BalanceBook()
        book.apply_all(pipe.postings)
        return {
            "order_states": (R.ORDER_STATES.columns, rows_of(R.ORDER_STATES, orders())),
            "breaks": (
                R.BREAKS.columns,
                rows_of(R.BREAKS, ((b.to_json(), 0) for b in pipe.breaks.values())),
            ),
            "postings": (
                R.POSTINGS.columns,
                rows_of(R.POSTINGS, ((p.to_json(), 0) for p in pipe.postings)),
            ),
            "balances": (
                R.BALANCES.columns,
                rows_of(
                    R.BALANCES,
                    ((balance_snapshot(k, b, 0), 0) for k, b in sorted(book.balances.items())),
                ),
            ),
            "status_queries": (
                R.STATUS_QUERIES.columns,
                rows_of(R.STATUS_QUERIES, ((q.to_json(), 0) for q in pipe.queries)),
            ),
        }

    def store(self, db: Any, batch: int = 5000) -> dict[str, int]:
        """Insert the ledger into ClickHouse (schema migrated first); idempotent."""
        migrate(db)
        n = {}
        for table, (cols, rows) in self.rows().items():
            for i in range(0, len(rows), batch):
                db.insert(table, cols, rows[i : i + batch])
            n[table] = len(rows)
        return n

    # ------------------------------------------------------------ files

    def statement(self, channel: str, day: date, fmt: str) -> Statement:
        """The (channel, day) statement as a `recon.statements.Statement` in `fmt`."""
        pol = self.policies[channel]
        lines = [
            StatementLine(
                line_no=i,
                txn_id=ln.txn_id,
                channel_txn_id=ln.channel_txn_id,
                original_txn_id=ln.original_txn_id,
                kind=ln.kind,
                status=ln.status,
                currency=ln.currency,
                amount=to_decimal(ln.amount, ln.currency),
                fee=None if ln.fee is None else to_decimal(ln.fee, ln.currency),
                coupon_amount=None
                if ln.coupon_amount is None
                else to_decimal(ln.coupon_amount, ln.currency),
                merchant_ref=ln.merchant_ref,
                occurred_at_ms=ln.occurred_at_ms,
            )
            for i, ln in enumerate(self.statements[(channel, day)], start=1)
        ]
        return Statement(
            channel_id=channel,
            business_date=day,
            format=fmt,
            lines=lines,
            file_name=file_name(channel, day, fmt),
            meta={"cutoff": pol.cutoff.strftime("%H:%M"), "currency": "CNY"},
        )

    def files(self, fmt: str) -> list[tuple[str, date, str, bytes]]:
        """(channel, day, file name, bytes) of every statement in format `fmt`.
        Formats that hold one currency (alipay: CNY; mt940, camt053: one per file)
        raise ValueError for a statement with another / several currencies."""
        out = []
        for ch, d in self.days:
            st = self.statement(ch, d, fmt)
            out.append((ch, d, st.file_name, write(st)))
        return out

    def write_files(self, directory: str | Path, formats: Iterable[str]) -> dict[str, Any]:
        """`<directory>/<format>/<channel>-<date>.<ext>` for every statement and format,
        and `<directory>/expected-recon.json` (the oracle; see `expected_json`).
        A format that cannot hold the day (several currencies in one file) is skipped
        and named under "skipped" with the reason."""
        root = Path(directory)
        written: dict[str, list[str]] = {}
        skipped: dict[str, str] = {}
        for fmt in formats:
            try:
                files = self.files(fmt)
            except ValueError as exc:
                skipped[fmt] = str(exc)
                continue
            (root / fmt).mkdir(parents=True, exist_ok=True)
            for _, _, name, data in files:
                (root / fmt / name).write_bytes(data)
            written[fmt] = [f"{fmt}/{name}" for _, _, name, _ in files]
        doc = {"files": written, "skipped": skipped, **self.expected_json()}
        root.mkdir(parents=True, exist_ok=True)
        (root / "expected-recon.json").write_text(
            json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        return doc
