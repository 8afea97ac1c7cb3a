"""Suspense and write-off (S9), the rules: which entry a break is parked on, what
attaching a sighting changes, whether an entry is open, cleared or reopened, and
whether a write-off may be made. Plain functions over plain dataclasses, no I/O;
`recon.suspense` reads and writes them in ClickHouse.

- One entry per item: `entry_id(channel, item key)` where the item key is the order's
  txn_id (or the channel txn id for a statement line that names no order of ours). A
  real-time break on order X and the end-of-day result for X attach to the same entry:
  its `kinds` and `break_ids` list both, its amount is the largest at risk seen.
- A `Sighting` is one observation of a break on an item (a real-time break or an
  end-of-day result): the grounds an entry is opened or updated on. (Not the
  channel's evidence about an order, `tally.core.orders.Evidence`.)
- Entries are versioned: attaching a sighting that changes an entry makes version + 1.
- Actions are append-only. Write-offs (`refunded`, `channel_confirmed`,
  `loss_accepted`, `linked`) are done by people; the runs append `cleared_by_rerun`
  when a later run shows the item matched or carried, and `reopened_by_rerun` when a
  run shows a cleared item broken again.
- An entry is open while its latest closing/reopening action is not a closing one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date
from decimal import Decimal
from typing import Any

from tally.core.eod import Result, at_risk
from tally.core.events import iso_ms

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
    "Sighting",
    "State",
    "SuspenseError",
    "SuspenseUpdate",
    "age_seconds",
    "attach",
    "auto_action",
    "closed_problem",
    "entry_id",
    "eod_break_id",
    "link_target",
    "sighting_of_result",
    "state",
    "unknown_entry",
    "write_off_action",
    "write_off_problems",
]

WRITE_OFFS = ("refunded", "channel_confirmed", "loss_accepted", "linked")
CLEARED = "cleared_by_rerun"
REOPENED = "reopened_by_rerun"
CLOSING = frozenset((*WRITE_OFFS, CLEARED))
OK_CLASSES = ("matched", "carried")

# the stored columns (tables suspense_entries and suspense_actions), in row order
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
class Sighting:
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


def attach(entry: Entry | None, seen: Sighting, now_ms: int, post_to: date | None = None) -> Entry:
    """The entry with the sighting attached (a new entry when there is none). Returns
    the same object when nothing changes."""
    if entry is None:
        return Entry(
            entry_id=entry_id(seen.channel_id, seen.item_key),
            version=1,
            channel_id=seen.channel_id,
            merchant_id=seen.merchant_id,
            txn_id=seen.txn_id,
            channel_txn_id=seen.channel_txn_id,
            business_date=post_to or seen.business_date,
            kinds=(seen.kind,),
            break_ids=(seen.break_id,),
            currency=seen.currency,
            amount=seen.amount,
            opened_at_ms=now_ms,
            updated_at_ms=now_ms,
        )
    new = replace(
        entry,
        merchant_id=entry.merchant_id or seen.merchant_id,
        txn_id=entry.txn_id or seen.txn_id,
        channel_txn_id=entry.channel_txn_id or seen.channel_txn_id,
        kinds=tuple(sorted({*entry.kinds, seen.kind})),
        break_ids=tuple(sorted({*entry.break_ids, seen.break_id})),
        currency=entry.currency or seen.currency,
        amount=max(entry.amount, seen.amount),
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


def sighting_of_result(r: Result, channel_id: str, day: date) -> Sighting:
    """The sighting of an end-of-day break: the run's result of an item."""
    return Sighting(
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


def age_seconds(entry: Entry, now_ms: int) -> int:
    """How long the entry has been open at `now_ms`, whole seconds, never negative."""
    return max(0, (now_ms - entry.opened_at_ms) // 1000)


def auto_action(entry: Entry, action: str, run_id: str, reason: str, now_ms: int) -> Action:
    """An action a run appends (cleared or reopened), the same id on every re-run."""
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
class SuspenseUpdate:
    """Entries and their actions, and what sightings and runs change in them:
    `written` are the entries to store again, `appended` the actions to append."""

    entries: dict[str, Entry]
    actions: dict[str, list[Action]]
    now_ms: int
    written: list[Entry] = field(default_factory=list)
    appended: list[Action] = field(default_factory=list)
    counts: dict[str, int] = field(
        default_factory=lambda: {"opened": 0, "updated": 0, "cleared": 0, "reopened": 0}
    )

    def add(self, seen: Sighting, post_to: date | None, reopen_by: str) -> None:
        """Park a sighting on its item's entry; reopen the entry when a run had
        cleared it and the item is broken again."""
        old = self.entries.get(entry_id(seen.channel_id, seen.item_key))
        new = attach(old, seen, self.now_ms, post_to)
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
            a = auto_action(
                new, REOPENED, reopen_by, f"{reopen_by}: {seen.kind} again", self.now_ms
            )
            self._append(a)
            self.counts["reopened"] += 1

    def clear(self, entry: Entry, run_id: str, cls: str) -> None:
        """The run found the item in order (`cls`): clear the entry if it is open."""
        if state(self.actions.get(entry.entry_id, [])).open:
            self._append(auto_action(entry, CLEARED, run_id, f"run {run_id}: {cls}", self.now_ms))
            self.counts["cleared"] += 1

    def _append(self, a: Action) -> None:
        if any(x.action_id == a.action_id for x in self.actions.get(a.entry_id, [])):
            return
        self.actions.setdefault(a.entry_id, []).append(a)
        self.appended.append(a)


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
        f"at {iso_ms(c.at_ms)} ({c.reason}); history is append-only, nothing was written"
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
