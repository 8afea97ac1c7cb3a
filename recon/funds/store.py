"""Funds reconciliation in ClickHouse: settlement runs and their results, suspense.

`run_settlements` reads what is in force (`recon.funds.credits`: bank credits, the
day totals of the channel statements or the ledger), classifies with the pure
`recon.funds.settlement.reconcile`, stores a new run, reports what changed since the
previous run of the same date and parks the breaks in suspense (`recon.suspense`;
cleared again when a later run finds them settled). Bank statements are stored as
versions by `recon.funds.bankstore` (`store_bank_statement`, re-exported here).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from recon import suspense as S
from recon.funds.bankstore import BankLoad as BankLoad
from recon.funds.bankstore import store_bank_statement as store_bank_statement
from recon.funds.credits import day_totals, read_credits
from recon.funds.settlement import (
    BREAK_CLASSES,
    CLASSES,
    OK_CLASSES,
    Result,
    expected_settlements,
    reconcile,
)
from sinks.backend import Backend
from tally.core.policy import Policies

RUN_COLUMNS = (
    "run_id",
    "run_date",
    "window_start",
    "bank_deliveries",
    "counts",
    "started_at_ms",
    "finished_at_ms",
)
RESULT_COLUMNS = (
    "run_id",
    "run_date",
    "item_key",
    "class",
    "channel_id",
    "currency",
    "due_date",
    "business_dates",
    "expected_amount",
    "credited_amount",
    "difference",
    "credit_refs",
    "value_dates",
    "sources",
    "detail",
)
# days before --date whose settlements and credits a run looks at
WINDOW_DAYS = 10
# the suspense entry of a credit no channel claims
UNCLAIMED = "bank"


# ------------------------------------------------------------------------ runs


@dataclass
class Change:
    item_key: str
    old: str  # '' when the item is new
    new: str  # '' when it is gone
    old_credited: Decimal | None
    new_credited: Decimal | None

    def to_json(self) -> dict[str, Any]:
        return {
            "item_key": self.item_key,
            "old": self.old,
            "new": self.new,
            "old_credited": None if self.old_credited is None else str(self.old_credited),
            "new_credited": None if self.new_credited is None else str(self.new_credited),
        }


@dataclass
class SettlementRun:
    run_id: str
    run_date: date
    window_start: date
    results: list[Result]
    previous_run: str | None
    changes: list[Change]
    suspense: dict[str, int]
    deliveries: dict[str, int]

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(CLASSES, 0)
        for r in self.results:
            out[r.cls] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "run_date": self.run_date.isoformat(),
            "window_start": self.window_start.isoformat(),
            "counts": self.counts(),
            "previous_run": self.previous_run,
            "changes": [c.to_json() for c in self.changes],
            "suspense": self.suspense,
            "bank_deliveries": self.deliveries,
            "results": [result_json(r) for r in self.results],
        }


def result_json(r: Result) -> dict[str, Any]:
    return {
        "item_key": r.item_key,
        "class": r.cls,
        "channel_id": r.channel_id,
        "currency": r.currency,
        "due_date": r.due_date.isoformat() if r.due_date else None,
        "business_dates": [d.isoformat() for d in r.business_dates],
        "expected": None if r.expected is None else str(r.expected),
        "credited": None if r.credited is None else str(r.credited),
        "difference": str(r.difference),
        "credit_refs": list(r.refs),
        "value_dates": [d.isoformat() for d in r.value_dates],
        "sources": list(r.sources),
        "detail": r.detail,
    }


def latest_run(db: Backend, runs_table: str, day: date) -> str | None:
    """The latest run of `day` in `runs_table` (settlement_runs, merchant_recon_runs)."""
    rows = db.query(
        f"SELECT run_id FROM {{db}}.{runs_table} FINAL WHERE run_date = toDate(%(d)s) "
        "ORDER BY started_at_ms DESC, run_id DESC LIMIT 1",
        {"d": day.isoformat()},
    )
    return rows[0]["run_id"] if rows else None


def previous_run(db: Backend, day: date) -> str | None:
    return latest_run(db, "settlement_runs", day)


def stored_results(db: Backend, day: date, run_id: str | None = None) -> list[dict[str, Any]]:
    """The results of a run (default: the latest of the date)."""
    run_id = run_id or previous_run(db, day)
    if run_id is None:
        return []
    rows = db.query(
        "SELECT item_key, class, channel_id, currency, due_date, business_dates, "
        "expected_amount, credited_amount, difference, credit_refs, value_dates, sources, detail "
        "FROM {db}.settlement_results FINAL WHERE run_date = toDate(%(d)s) AND run_id = %(r)s "
        "ORDER BY item_key",
        {"d": day.isoformat(), "r": run_id},
    )
    return rows


def _diff(old: list[dict[str, Any]], new: list[Result]) -> list[Change]:
    before = {r["item_key"]: r for r in old}
    after = {r.item_key: r for r in new}
    out = []
    for key in sorted(before.keys() | after.keys()):
        o, n = before.get(key), after.get(key)
        oc = None if o is None or o["credited_amount"] is None else Decimal(o["credited_amount"])
        nc = None if n is None else n.credited
        ocls = o["class"] if o else ""
        ncls = n.cls if n else ""
        if ocls != ncls or oc != nc:
            out.append(Change(key, ocls, ncls, oc, nc))
    return out


def run_settlements(
    db: Backend,
    policies: Policies,
    day: date,
    *,
    window_days: int = WINDOW_DAYS,
    now_ms: int | None = None,
    dry_run: bool = False,
) -> SettlementRun:
    """Reconcile the settlements due and the credits received in the window of days
    ending at `day` (see the module doc)."""
    started = int(time.time() * 1000) if now_ms is None else now_ms
    start = day - timedelta(days=window_days)
    credits, used = read_credits(db, start, day)
    # business dates whose due date may fall in the window
    lag = max(
        [p.settlement_lag_days for p in policies.channels.values()]
        + [policies.default.settlement_lag_days]
    )
    totals = day_totals(db, start - timedelta(days=2 * lag + 14), day)
    channels = sorted({t.channel_id for t in totals} | set(policies.channels))
    expected = [
        e
        for e in expected_settlements(totals, lambda ch: policies[ch])
        if start <= e.due_date <= day
    ]
    results = reconcile(expected, credits, lambda ch: policies[ch], channels, day)
    prev = previous_run(db, day)
    changes = _diff(stored_results(db, day, prev), results) if prev else []
    run_id = f"{day.isoformat()}.settlements.{started}.{secrets.token_hex(3)}"
    outcome = SettlementRun(run_id, day, start, results, prev, changes, {}, used)
    if dry_run:
        return outcome
    finished = store_run(
        db,
        ("settlement_results", RESULT_COLUMNS, [_row(run_id, day, r) for r in results]),
        ("settlement_runs", RUN_COLUMNS, (run_id, day, start)),
        used,
        outcome.counts(),
        started,
        now_ms,
    )
    outcome.suspense = sync_suspense(db, run_id, day, results, now_ms=finished)
    return outcome


def store_run(
    db: Backend,
    results: tuple[str, Sequence[str], list[tuple[Any, ...]]],
    run: tuple[str, Sequence[str], tuple[Any, ...]],
    used: Any,
    counts: dict[str, int],
    started: int,
    now_ms: int | None,
) -> int:
    """Write a run's results, then its run row (the run's own columns, then what it
    used, its counts, when it started and finished); returns when it finished."""
    db.insert(*results)
    finished = int(time.time() * 1000) if now_ms is None else now_ms
    table, columns, head = run
    row = (*head, json.dumps(used, sort_keys=True), json.dumps(counts), started, finished)
    db.insert(table, columns, [row])
    return finished


def _row(run_id: str, day: date, r: Result) -> tuple[Any, ...]:
    return (
        run_id,
        day,
        r.item_key,
        r.cls,
        r.channel_id,
        r.currency,
        r.due_date,
        list(r.business_dates),
        r.expected,
        r.credited,
        r.difference,
        list(r.refs),
        list(r.value_dates),
        list(r.sources),
        r.detail,
    )


def sync_suspense(
    db: Backend, run_id: str, day: date, results: Iterable[Result], *, now_ms: int
) -> dict[str, int]:
    """An entry per break (short, over, missing, unexpected credit), cleared when a
    later run finds the item settled; the same machinery as `tally recon run`."""
    breaks, settled = [], []
    for r in results:
        channel = r.channel_id or UNCLAIMED
        if r.cls in BREAK_CLASSES:
            breaks.append(
                S.Sighting(
                    channel_id=channel,
                    item_key=r.item_key,
                    txn_id="",
                    channel_txn_id=r.item_key,
                    merchant_id="",
                    kind=r.cls,
                    break_id=f"stl:{day.isoformat()}:{r.cls}:{r.item_key}",
                    currency=r.currency,
                    amount=r.at_risk,
                    business_date=r.due_date or (r.value_dates[0] if r.value_dates else day),
                )
            )
        elif r.cls in OK_CLASSES:
            settled.append((channel, r.item_key, r.cls))
    return park(db, run_id, breaks, settled, now_ms=now_ms)


def park(
    db: Backend,
    run_id: str,
    breaks: Iterable[S.Sighting],
    settled: Iterable[tuple[str, str, str]],
    *,
    now_ms: int,
) -> dict[str, int]:
    """Park each break in suspense (a new entry, or evidence on the item's entry) and
    clear the open entry of each (channel, item key, class) a run found in order."""
    entries = S.load_entries(db)
    sync = S._Sync(entries, S.load_actions(db, list(entries)), now_ms)
    for ev in breaks:
        sync.add(ev, None, f"run {run_id}")
    for channel, item_key, cls in settled:
        e = sync.entries.get(S.entry_id(channel, item_key))
        if e is not None:
            sync.clear(e, run_id, cls)
    return sync.write(db)
