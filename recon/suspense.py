"""Suspense and write-off (S9): every break parked with its amount until a business
action resolves it; nothing is ever deleted or updated in place.

- One entry per item: `entry_id(channel, item key)` where the item key is the order's
  txn_id (or the channel txn id for a statement line that names no order of ours). A
  real-time break on order X and the end-of-day result for X attach to the same entry:
  its `kinds` and `break_ids` list both, its amount is the largest at risk seen.
- `suspense_entries` is a ReplacingMergeTree(version): attaching evidence writes the
  entry again with version + 1 (the old version stays until a merge, FINAL hides it).
- `suspense_actions` is append-only. Write-offs (`refunded`, `channel_confirmed`,
  `loss_accepted`, `linked`) are done by people (`tally breaks resolve`); the runs
  append `cleared_by_rerun` when a later run shows the item matched or carried, and
  `reopened_by_rerun` when a run shows a cleared item broken again.
- An entry is open while its latest closing/reopening action is not a closing one.

The pure part (merging evidence into an entry, the state from the actions) is in
plain functions; the rest reads and writes ClickHouse.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from decimal import Decimal
from typing import Any

from sinks.backend import Backend
from tally.core.eod import BREAK_CLASSES, Result, at_risk

WRITE_OFFS = ("refunded", "channel_confirmed", "loss_accepted", "linked")
CLEARED = "cleared_by_rerun"
REOPENED = "reopened_by_rerun"
CLOSING = frozenset((*WRITE_OFFS, CLEARED))
OK_CLASSES = ("matched", "carried")

ENTRY_COLUMNS = (
    "entry_id",
    "version",
    "channel_id",
    "merchant_id",
    "txn_id",
    "channel_txn_id",
    "business_date",
    "kinds",
    "break_ids",
    "currency",
    "amount",
    "opened_at_ms",
    "updated_at_ms",
)
ACTION_COLUMNS = ("action_id", "entry_id", "action", "reason", "actor", "linked_to", "at_ms")


class SuspenseError(ValueError):
    """A write-off that cannot be made (unknown entry, already written off, ...)."""


def _h(*parts: str, n: int = 20) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:n]


def entry_id(channel_id: str, item_key: str) -> str:
    """The one entry of an item: a real-time break and the end-of-day result share it."""
    return "se-" + _h("suspense", channel_id, item_key)


def eod_break_id(channel_id: str, day: date, cls: str, item_key: str) -> str:
    """The id of an end-of-day break: stable across re-runs of the same day."""
    return f"eod:{channel_id}:{day.isoformat()}:{cls}:{item_key}"


# --------------------------------------------------------------------- pure


@dataclass(frozen=True)
class Entry:
    entry_id: str
    version: int
    channel_id: str
    merchant_id: str
    txn_id: str
    channel_txn_id: str
    business_date: date
    kinds: tuple[str, ...]
    break_ids: tuple[str, ...]
    currency: str
    amount: Decimal
    opened_at_ms: int
    updated_at_ms: int

    @property
    def item_key(self) -> str:
        return self.txn_id or self.channel_txn_id

    def row(self) -> tuple[Any, ...]:
        return (
            self.entry_id,
            self.version,
            self.channel_id,
            self.merchant_id,
            self.txn_id,
            self.channel_txn_id,
            self.business_date,
            list(self.kinds),
            list(self.break_ids),
            self.currency,
            self.amount,
            self.opened_at_ms,
            self.updated_at_ms,
        )


@dataclass(frozen=True)
class Evidence:
    """One sighting of a break on an item: a real-time break or an end-of-day result."""

    channel_id: str
    item_key: str
    txn_id: str
    channel_txn_id: str
    merchant_id: str
    kind: str
    break_id: str
    currency: str
    amount: Decimal
    business_date: date


@dataclass(frozen=True)
class Action:
    action_id: str
    entry_id: str
    action: str
    reason: str
    actor: str
    linked_to: str
    at_ms: int

    def row(self) -> tuple[Any, ...]:
        return tuple(getattr(self, c) for c in ACTION_COLUMNS)


def attach(entry: Entry | None, ev: Evidence, now_ms: int, post_to: date | None = None) -> Entry:
    """The entry with the evidence attached (a new entry when there is none). Returns
    the same object when nothing changes."""
    if entry is None:
        return Entry(
            entry_id=entry_id(ev.channel_id, ev.item_key),
            version=1,
            channel_id=ev.channel_id,
            merchant_id=ev.merchant_id,
            txn_id=ev.txn_id,
            channel_txn_id=ev.channel_txn_id,
            business_date=post_to or ev.business_date,
            kinds=(ev.kind,),
            break_ids=(ev.break_id,),
            currency=ev.currency,
            amount=ev.amount,
            opened_at_ms=now_ms,
            updated_at_ms=now_ms,
        )
    new = replace(
        entry,
        merchant_id=entry.merchant_id or ev.merchant_id,
        txn_id=entry.txn_id or ev.txn_id,
        channel_txn_id=entry.channel_txn_id or ev.channel_txn_id,
        kinds=tuple(sorted({*entry.kinds, ev.kind})),
        break_ids=tuple(sorted({*entry.break_ids, ev.break_id})),
        currency=entry.currency or ev.currency,
        amount=max(entry.amount, ev.amount),
    )
    if new == entry:
        return entry
    return replace(new, version=entry.version + 1, updated_at_ms=max(now_ms, entry.updated_at_ms))


@dataclass(frozen=True)
class State:
    open: bool
    closed_by: Action | None  # the closing action in force, if closed


def state(actions: Iterable[Action]) -> State:
    """Open unless the latest closing or reopening action is a closing one."""
    last: Action | None = None
    for a in sorted(actions, key=lambda a: (a.at_ms, a.action_id)):
        if a.action in CLOSING or a.action == REOPENED:
            last = a
    if last is None or last.action == REOPENED:
        return State(True, None)
    return State(False, last)


def evidence_of_result(r: Result, channel_id: str, day: date) -> Evidence:
    return Evidence(
        channel_id=channel_id,
        item_key=r.item_key,
        txn_id=r.txn_id,
        channel_txn_id=r.channel_txn_id,
        merchant_id=r.merchant_id,
        kind=r.cls,
        break_id=eod_break_id(channel_id, day, r.cls, r.item_key),
        currency=r.currency,
        amount=at_risk(r),
        business_date=day,
    )


# ------------------------------------------------------------- ClickHouse I/O


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


def _auto(entry: Entry, action: str, run_id: str, reason: str, now_ms: int) -> Action:
    return Action(
        action_id="sa-" + _h(entry.entry_id, action, run_id),
        entry_id=entry.entry_id,
        action=action,
        reason=reason,
        actor="tally recon run",
        linked_to="",
        at_ms=now_ms,
    )


@dataclass
class _Sync:
    entries: dict[str, Entry]
    actions: dict[str, list[Action]]
    now_ms: int
    written: list[Entry] = field(default_factory=list)
    appended: list[Action] = field(default_factory=list)
    counts: dict[str, int] = field(
        default_factory=lambda: {"opened": 0, "updated": 0, "cleared": 0, "reopened": 0}
    )

    def add(self, ev: Evidence, post_to: date | None, reopen_by: str) -> None:
        old = self.entries.get(entry_id(ev.channel_id, ev.item_key))
        new = attach(old, ev, self.now_ms, post_to)
        if new is not old:
            self.entries[new.entry_id] = new
            self.written.append(new)
            self.counts["opened" if old is None else "updated"] += 1
        st = state(self.actions.get(new.entry_id, []))
        if (
            old is not None
            and not st.open
            and st.closed_by is not None
            and st.closed_by.action == CLEARED
            and (new is not old or reopen_by.startswith("run "))
        ):
            a = _auto(new, REOPENED, reopen_by, f"{reopen_by}: {ev.kind} again", self.now_ms)
            self._append(a)
            self.counts["reopened"] += 1

    def clear(self, entry: Entry, run_id: str, cls: str) -> None:
        if state(self.actions.get(entry.entry_id, [])).open:
            self._append(_auto(entry, CLEARED, run_id, f"run {run_id}: {cls}", self.now_ms))
            self.counts["cleared"] += 1

    def _append(self, a: Action) -> None:
        if any(x.action_id == a.action_id for x in self.actions.get(a.entry_id, [])):
            return
        self.actions.setdefault(a.entry_id, []).append(a)
        self.appended.append(a)

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
        sync.add(evidence_of_result(r, channel, day), post_to, f"run {run_id}")
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
        ev = Evidence(
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
        sync.add(ev, None, f"break {r['break_id']}")


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


# ------------------------------------------------------------------ write-off


class EntryIndex:
    """Entries found by entry id, by one of their break ids, or by their order's
    txn_id / channel txn id (in that order of preference); pure."""

    def __init__(self, entries: dict[str, Entry]) -> None:
        self.entries = entries
        self._by_break: dict[str, dict[str, Entry]] = {}
        self._by_txn: dict[str, dict[str, Entry]] = {}
        for e in entries.values():
            for b in e.break_ids:
                self._by_break.setdefault(b, {})[e.entry_id] = e
            for t in (e.txn_id, e.channel_txn_id):
                if t:
                    self._by_txn.setdefault(t, {})[e.entry_id] = e

    def find(self, ident: str) -> Entry | None:
        """The entry `ident` names; None when none; SuspenseError when several."""
        if ident in self.entries:
            return self.entries[ident]
        hits = self._by_break.get(ident) or self._by_txn.get(ident) or {}
        if len(hits) > 1:
            raise SuspenseError(
                f"{ident!r} names {len(hits)} suspense entries "
                f"({', '.join(sorted(hits))}): give the entry id"
            )
        return next(iter(hits.values()), None)


def find_entry(db: Backend, ident: str) -> Entry | None:
    """An entry by its id, by one of its break ids, or by its order's txn_id."""
    return EntryIndex(load_entries(db)).find(ident)


def unknown_entry(ident: str) -> str:
    return (
        f"no suspense entry {ident!r} (give an entry id, a break id or an order's "
        "txn_id; `tally breaks suspense --all` lists them)"
    )


def write_off_problems(
    action: str, reason: str, actor: str, link: str | None, *, cli: bool = True
) -> list[tuple[str, str]]:
    """What is wrong with a write-off's fields, as (field, message), field one of
    action, reason, by, link; pure. `cli`: name the command's options, else the
    columns of a resolutions file (recon/bulk.py)."""

    def opt(name: str) -> str:
        return f"--{name}" if cli else f"column {name}"

    out = []
    if action not in WRITE_OFFS:
        out.append(("action", f"unknown action {action!r}: one of {', '.join(WRITE_OFFS)}"))
    if not reason.strip():
        out.append(("reason", f"a write-off needs a reason ({opt('reason')})"))
    if not actor.strip():
        out.append(("by", f"a write-off needs who did it ({opt('by')})"))
    if action == "linked" and not link:
        out.append(("link", f"{opt('link')} OTHER is required with {opt('action')} linked"))
    elif action in WRITE_OFFS and action != "linked" and link:
        out.append(("link", f"{opt('link')} goes only with {opt('action')} linked"))
    return out


def closed_problem(entry: Entry, actions: Iterable[Action]) -> str | None:
    """Why no write-off can be appended to the entry (it is closed), or None; pure."""
    st = state(actions)
    if st.open or st.closed_by is None:
        return None
    c = st.closed_by
    return (
        f"suspense entry {entry.entry_id} is already closed: {c.action} by {c.actor} "
        f"at {_iso(c.at_ms)} ({c.reason}); history is append-only, nothing was written"
    )


def link_target(index: EntryIndex, entry: Entry, link: str) -> str:
    """The entry id a write-off links to; SuspenseError when there is none; pure."""
    target = index.find(link)
    if target is None:
        raise SuspenseError(f"--link {link!r}: no such suspense entry")
    if target.entry_id == entry.entry_id:
        raise SuspenseError("an entry cannot be linked to itself")
    return target.entry_id


def write_off_action(
    entry: Entry, action: str, reason: str, actor: str, linked_to: str, now_ms: int
) -> Action:
    """The action appended for a write-off (its checks made); pure."""
    return Action(
        action_id="sa-" + _h(entry.entry_id, action, str(now_ms), actor, reason),
        entry_id=entry.entry_id,
        action=action,
        reason=reason.strip(),
        actor=actor.strip(),
        linked_to=linked_to,
        at_ms=now_ms,
    )


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


def _iso(ms: int) -> str:
    from tally.core.events import iso_ms

    return iso_ms(ms)


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
                "opened_at": _iso(e.opened_at_ms),
                "opened_at_ms": e.opened_at_ms,
                "age_seconds": max(0, (now_ms - e.opened_at_ms) // 1000),
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
