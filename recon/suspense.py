"""Suspense and write-off (S9) in ClickHouse: every break parked with its amount until
a business action resolves it; nothing is ever deleted or updated in place.

The rules (one entry per item, attaching a sighting, open/cleared/reopened, which
write-offs are valid) are in `tally.core.suspense`, re-exported here; this module
reads and writes them:

- `suspense_entries` is a ReplacingMergeTree(version): attaching a sighting writes the
  entry again with version + 1 (the old version stays until a merge, FINAL hides it).
- `suspense_actions` is append-only. Write-offs are done by people (`tally breaks
  resolve`, `resolve`); the runs append `cleared_by_rerun` and `reopened_by_rerun`
  (`sync_run`); real-time breaks are parked by `sync_breaks`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from sinks.backend import Backend
from tally.core.eod import BREAK_CLASSES, Result
from tally.core.events import iso_ms
from tally.core.suspense import (
    ACTION_COLUMNS,
    CLEARED,
    CLOSING,
    ENTRY_COLUMNS,
    OK_CLASSES,
    REOPENED,
    WRITE_OFFS,
    Action,
    Entry,
    EntryIndex,
    Sighting,
    State,
    SuspenseError,
    SuspenseUpdate,
    age_seconds,
    attach,
    closed_problem,
    entry_id,
    eod_break_id,
    link_target,
    sighting_of_result,
    state,
    unknown_entry,
    write_off_action,
    write_off_problems,
)

__all__ = [
    "ACTION_COLUMNS",
    "CLEARED",
    "CLOSING",
    "ENTRY_COLUMNS",
    "OK_CLASSES",
    "REOPENED",
    "WRITE_OFFS",
    "Action",
    "Entry",
    "EntryIndex",
    "OpenEntry",
    "Sighting",
    "State",
    "SuspenseError",
    "attach",
    "closed_problem",
    "entry_id",
    "eod_break_id",
    "find_entry",
    "history",
    "link_target",
    "listing",
    "load_actions",
    "load_entries",
    "open_entries",
    "parked_in_memory",
    "resolve",
    "sighting_of_result",
    "state",
    "sync_breaks",
    "sync_run",
    "unknown_entry",
    "write_off_action",
    "write_off_problems",
]


def _entry(r: dict[str, Any]) -> Entry:
    return Entry(
        entry_id=r["entry_id"],
        version=int(r["version"]),
        channel_id=r["channel_id"],
        merchant_id=r["merchant_id"],
        txn_id=r["txn_id"],
        channel_txn_id=r["channel_txn_id"],
        business_date=r["business_date"],
        kinds=tuple(r["kinds"]),
        break_ids=tuple(r["break_ids"]),
        currency=r["currency"],
        amount=Decimal(r["amount"]),
        opened_at_ms=int(r["opened_at_ms"]),
        updated_at_ms=int(r["updated_at_ms"]),
    )


def load_entries(db: Backend, channel: str | None = None) -> dict[str, Entry]:
    where, params = "", {}
    if channel is not None:
        where, params = " WHERE channel_id = %(c)s", {"c": channel}
    rows = db.query(
        f"SELECT {', '.join(ENTRY_COLUMNS)} FROM (SELECT {', '.join(ENTRY_COLUMNS)} "
        f"FROM {{db}}.suspense_entries FINAL){where}",
        params,
    )
    return {r["entry_id"]: _entry(r) for r in rows}


# ids per `IN (...)` list: ClickHouse refuses queries over max_query_size (256 KiB)
_IN_CHUNK = 2000


def _chunks(values: Sequence[str]) -> list[tuple[str, ...]]:
    return [tuple(values[i : i + _IN_CHUNK]) for i in range(0, len(values), _IN_CHUNK)]


def load_actions(db: Backend, entry_ids: Sequence[str] | None = None) -> dict[str, list[Action]]:
    if entry_ids is None:
        rows = _action_rows(db, "", {})
    else:
        rows = [
            r
            for chunk in _chunks(entry_ids)
            for r in _action_rows(db, " WHERE entry_id IN %(ids)s", {"ids": chunk})
        ]
    out: dict[str, list[Action]] = {}
    for r in sorted(rows, key=lambda r: (r["entry_id"], int(r["at_ms"]), r["action_id"])):
        a = Action(
            action_id=r["action_id"],
            entry_id=r["entry_id"],
            action=r["action"],
            reason=r["reason"],
            actor=r["actor"],
            linked_to=r["linked_to"],
            at_ms=int(r["at_ms"]),
        )
        out.setdefault(a.entry_id, []).append(a)
    return out


def _action_rows(db: Backend, where: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    return db.query(
        f"SELECT {', '.join(ACTION_COLUMNS)} FROM {{db}}.suspense_actions FINAL{where}", params
    )


class _Sync(SuspenseUpdate):
    """A `SuspenseUpdate` that stores what it changed."""

    def write(self, db: Backend) -> dict[str, int]:
        # entries first: an action never points at an entry that is not stored
        db.insert("suspense_entries", ENTRY_COLUMNS, [e.row() for e in self.written])
        db.insert("suspense_actions", ACTION_COLUMNS, [a.row() for a in self.appended])
        return self.counts


def _results(db: Backend, run_id: str, classes: Sequence[str], keys: Any = None) -> list[Result]:
    meta = db.query(
        "SELECT channel_id, business_date FROM {db}.recon_runs FINAL WHERE run_id = %(r)s",
        {"r": run_id},
    )
    if not meta:
        return []
    where = (
        "channel_id = %(c)s AND business_date = toDate(%(d)s) AND run_id = %(r)s AND class IN %(k)s"
    )
    params: dict[str, Any] = {
        "c": meta[0]["channel_id"],
        "d": meta[0]["business_date"].isoformat(),
        "r": run_id,
        "k": tuple(classes),
    }
    sql = (
        "SELECT item_key, class, txn_id, channel_txn_id, merchant_id, kind, currency, "
        "ledger_amount, statement_amount, ledger_fee, statement_fee, ledger_status, "
        "statement_status, statement_line, detail FROM {db}.recon_results FINAL "
        f"WHERE {where}"
    )
    if keys is None:
        rows = db.query(sql, params)
    else:
        rows = [
            r
            for chunk in _chunks(list(keys))
            for r in db.query(sql + " AND item_key IN %(keys)s", {**params, "keys": chunk})
        ]
    rows.sort(key=lambda r: r["item_key"])
    return [Result.from_row(r) for r in rows]


def sync_run(
    db: Backend,
    run_id: str,
    *,
    post_to: date | None = None,
    now_ms: int | None = None,
) -> dict[str, int]:
    """Suspense after a run: an entry for every break of the run (new ones dated
    `post_to`, default the run's day), `cleared_by_rerun` for open entries whose item
    the run found matched or carried, `reopened_by_rerun` for cleared ones broken
    again."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    meta = db.query(
        "SELECT channel_id, business_date FROM {db}.recon_runs FINAL WHERE run_id = %(r)s",
        {"r": run_id},
    )
    if not meta:
        raise SuspenseError(f"no run {run_id!r}")
    channel, day = meta[0]["channel_id"], meta[0]["business_date"]
    entries = load_entries(db, channel)
    sync = _Sync(entries, load_actions(db, list(entries)), now_ms)
    for r in _results(db, run_id, sorted(BREAK_CLASSES)):
        sync.add(sighting_of_result(r, channel, day), post_to, f"run {run_id}")
    keys = {e.item_key for e in entries.values() if e.item_key}
    for r in _results(db, run_id, OK_CLASSES, keys=sorted(keys)):
        e = sync.entries.get(entry_id(channel, r.item_key))
        if e is not None:
            sync.clear(e, run_id, r.cls)
    return sync.write(db)


def _break_rows(db: Backend, day: date | None, channel: str | None) -> list[dict[str, Any]]:
    where = ["1 = 1"]
    params: dict[str, Any] = {}
    if day is not None:
        where.append("ifNull(business_date, toDate(event_time)) = toDate(%(d)s)")
        params["d"] = day.isoformat()
    if channel is not None:
        where.append("channel_id = %(c)s")
        params["c"] = channel
    return db.query(
        "SELECT break_id, kind, txn_id, ifNull(merchant_id, '') AS merchant_id, "
        "ifNull(channel_id, '') AS channel_id, ifNull(currency, '') AS currency, amount, "
        "channel_amount, ifNull(business_date, toDate(event_time)) AS day, event_time_ms "
        "FROM (SELECT break_id, kind, txn_id, merchant_id, channel_id, currency, amount, "
        "channel_amount, business_date, event_time, event_time_ms FROM {db}.breaks FINAL) "
        f"WHERE {' AND '.join(where)} ORDER BY event_time_ms, break_id",
        params,
    )


def _add_breaks(sync: _Sync, rows: list[dict[str, Any]]) -> None:
    for r in rows:
        amount = r["amount"] if r["amount"] is not None else r["channel_amount"]
        seen = Sighting(
            channel_id=r["channel_id"],
            item_key=r["txn_id"],
            txn_id=r["txn_id"],
            channel_txn_id="",
            merchant_id=r["merchant_id"],
            kind=r["kind"],
            break_id=r["break_id"],
            currency=r["currency"],
            amount=Decimal(amount) if amount is not None else Decimal(0),
            business_date=r["day"],
        )
        sync.add(seen, None, f"break {r['break_id']}")


def sync_breaks(
    db: Backend,
    *,
    day: date | None = None,
    channel: str | None = None,
    now_ms: int | None = None,
) -> dict[str, int]:
    """An entry for every real-time break (of a day / channel), attached to the item's
    entry when there is one."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    rows = _break_rows(db, day, channel)
    if not rows:
        return {"opened": 0, "updated": 0, "cleared": 0, "reopened": 0}
    entries = load_entries(db, channel)
    sync = _Sync(entries, load_actions(db, list(entries)), now_ms)
    _add_breaks(sync, rows)
    return sync.write(db)


def parked_in_memory(db: Backend, now_ms: int) -> _Sync:
    """Every entry and action as `sync_breaks` would leave them, nothing written yet:
    `sync.written` / `sync.appended` are what it would write (recon/bulk.py validates
    a whole file against this before its first write)."""
    entries = load_entries(db)
    sync = _Sync(entries, load_actions(db, list(entries)), now_ms)
    _add_breaks(sync, _break_rows(db, None, None))
    return sync


def find_entry(db: Backend, ident: str) -> Entry | None:
    """An entry by its id, by one of its break ids, or by its order's txn_id."""
    return EntryIndex(load_entries(db)).find(ident)


def resolve(
    db: Backend,
    ident: str,
    action: str,
    reason: str,
    actor: str,
    *,
    link: str | None = None,
    now_ms: int | None = None,
) -> tuple[Entry, Action]:
    """Write an entry off: append the action. Refused (SuspenseError) for an unknown
    entry, an entry already written off or cleared, a link to nothing."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    problems = write_off_problems(action, reason, actor, link)
    if problems:
        raise SuspenseError(problems[0][1])
    sync_breaks(db, now_ms=now_ms)  # a real-time break not yet parked is resolvable too
    index = EntryIndex(load_entries(db))
    entry = index.find(ident)
    if entry is None:
        raise SuspenseError(unknown_entry(ident))
    closed = closed_problem(entry, load_actions(db, [entry.entry_id]).get(entry.entry_id, []))
    if closed:
        raise SuspenseError(closed)
    linked_to = link_target(index, entry, link) if link else ""
    a = write_off_action(entry, action, reason, actor, linked_to, now_ms)
    db.insert("suspense_actions", ACTION_COLUMNS, [a.row()])
    return entry, a


# ------------------------------------------------------------------- reading


@dataclass(frozen=True)
class OpenEntry:
    entry_id: str
    channel_id: str
    merchant_id: str
    txn_id: str
    channel_txn_id: str
    business_date: date
    kinds: tuple[str, ...]
    currency: str
    amount: Decimal
    opened_at_ms: int
    age_seconds: int


def listing(
    db: Backend,
    *,
    channel: str | None = None,
    day: date | None = None,
    include_closed: bool = False,
    now_ms: int | None = None,
) -> list[dict[str, Any]]:
    """Entries (open ones unless include_closed), oldest first, with state and age."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    entries = load_entries(db, channel)
    actions = load_actions(db, list(entries))
    out = []
    for e in sorted(entries.values(), key=lambda e: (e.opened_at_ms, e.entry_id)):
        if day is not None and e.business_date != day:
            continue
        st = state(actions.get(e.entry_id, []))
        if not st.open and not include_closed:
            continue
        out.append(
            {
                "entry_id": e.entry_id,
                "business_date": e.business_date.isoformat(),
                "channel_id": e.channel_id,
                "merchant_id": e.merchant_id,
                "txn_id": e.txn_id,
                "channel_txn_id": e.channel_txn_id,
                "kinds": list(e.kinds),
                "break_ids": list(e.break_ids),
                "currency": e.currency,
                "amount": e.amount,
                "opened_at": iso_ms(e.opened_at_ms),
                "opened_at_ms": e.opened_at_ms,
                "age_seconds": age_seconds(e, now_ms),
                "state": "open" if st.open else (st.closed_by.action if st.closed_by else ""),
                "actions": [a.row() for a in actions.get(e.entry_id, [])],
            }
        )
    return out


def open_entries(
    db: Backend,
    day: date | None = None,
    channel: str | None = None,
    *,
    now_ms: int | None = None,
    sync: bool = True,
) -> list[OpenEntry]:
    """The entries still open (what settlement holds back), of a business day (the
    day an entry is posted to) and/or channel. `sync` first parks real-time breaks not
    yet in suspense."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if sync:
        sync_breaks(db, day=day, channel=channel, now_ms=now_ms)
    return [
        OpenEntry(
            entry_id=r["entry_id"],
            channel_id=r["channel_id"],
            merchant_id=r["merchant_id"],
            txn_id=r["txn_id"],
            channel_txn_id=r["channel_txn_id"],
            business_date=date.fromisoformat(r["business_date"]),
            kinds=tuple(r["kinds"]),
            currency=r["currency"],
            amount=r["amount"],
            opened_at_ms=int(r["opened_at_ms"]),
            age_seconds=int(r["age_seconds"]),
        )
        for r in listing(db, channel=channel, day=day, now_ms=now_ms)
    ]


def history(db: Backend, ident: str) -> tuple[Entry, list[Action]]:
    entry = find_entry(db, ident)
    if entry is None:
        raise SuspenseError(f"no suspense entry {ident!r}")
    return entry, load_actions(db, [entry.entry_id]).get(entry.entry_id, [])
