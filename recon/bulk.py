"""Bulk work on breaks: `tally breaks export` writes the open suspense entries with
empty action / reason / by columns; a person fills them in; `tally breaks resolve
--file` applies the file.

The file is validated whole before anything is written: each line's entry exists
(an entry id, a break id or an order's txn_id, as `tally breaks resolve` takes),
its action is a write-off the entry's state accepts (recon.suspense: open, a known
action, a reason, who did it, a link with `linked` only and to another entry), no
entry is decided twice. A problem names the line and the field; one problem and
nothing is applied. ClickHouse has no transactions, so the write-offs go in one
INSERT after every check has passed.

Applying the same file again changes nothing: a line whose entry is already closed
by the same action, reason, by and link is counted as already applied. A line with
action, reason, by and link all empty is undecided and left as it is (an exported
file can be applied with only some lines filled in).

The pure part (reading the file, checking it against the entries) is in plain
functions; `apply` reads and writes ClickHouse.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from recon.suspense import (
    ACTION_COLUMNS,
    ENTRY_COLUMNS,
    Action,
    EntryIndex,
    SuspenseError,
    _chunks,
    closed_problem,
    link_target,
    listing,
    parked_in_memory,
    state,
    sync_breaks,
    unknown_entry,
    write_off_action,
    write_off_problems,
)
from sinks.backend import Backend
from sinks.queries import money

REQUIRED = ("entry", "action", "reason", "by")
# the export's columns: what a person needs to decide, then the decision to fill in
EXPORT_COLUMNS = (
    "entry",
    "business_date",
    "channel_id",
    "merchant_id",
    "txn_id",
    "channel_txn_id",
    "kinds",
    "currency",
    "amount",
    "age",
    "opened_at",
    "state",
    "detail",
    "action",
    "reason",
    "by",
    "link",
)
OPTIONAL = ("link",)
DECISION = ("action", "reason", "by", "link")


@dataclass(frozen=True)
class Line:
    """One decision of a resolutions file; `no` is its line (CSV, the header is line
    1) or record (JSON array, from 1) number."""

    no: int
    entry: str
    action: str
    reason: str
    by: str
    link: str = ""


@dataclass(frozen=True)
class Problem:
    no: int
    field: str
    message: str
    unit: str = "line"

    def __str__(self) -> str:
        return f"{self.unit} {self.no}, field {self.field}: {self.message}"


class BulkError(ValueError):
    """A resolutions file that cannot be applied; nothing was written."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


@dataclass
class Parsed:
    lines: list[Line]
    problems: list[Problem]
    undecided: int = 0
    unit: str = "line"


@dataclass
class Plan:
    """What applying a file does: `actions` to append (file order), the lines
    `already` applied by an earlier run of the same file, lines left undecided."""

    actions: list[Action] = field(default_factory=list)
    already: list[int] = field(default_factory=list)
    undecided: int = 0


# --------------------------------------------------------------------- pure


def _cell(v: Any) -> str:
    return "" if v is None else str(v).strip()


def parse(text: str) -> Parsed:
    """A resolutions file: CSV with a header (entry, action, reason, by, optional
    link; other columns, such as the export's, are ignored; a line is numbered where
    its record starts), or a JSON array of objects with those keys. Pure."""
    text = text.lstrip("\ufeff")
    if text.lstrip().startswith("["):
        return _parse_json(text)
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        return Parsed([], [Problem(1, "entry", "the file is empty: a header line is required")])
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        return Parsed(
            [],
            [
                Problem(1, c, f"no column {c!r} in the header (needs {', '.join(REQUIRED)})")
                for c in missing
            ],
        )
    col = {c: header.index(c) for c in (*REQUIRED, *OPTIONAL) if c in header}
    out = Parsed([], [])
    while True:
        no = reader.line_num + 1  # where the record starts (a quoted field may span lines)
        try:
            row = next(reader)
        except StopIteration:
            break
        if not any(x.strip() for x in row):
            continue  # a blank line
        values = {c: _cell(row[i]) if i < len(row) else "" for c, i in col.items()}
        _add(out, no, values)
    return out


def _parse_json(text: str) -> Parsed:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        return Parsed([], [Problem(1, "entry", f"not JSON: {exc}", "record")], unit="record")
    out = Parsed([], [], unit="record")
    for no, obj in enumerate(doc, start=1):
        if not isinstance(obj, dict):
            out.problems.append(Problem(no, "entry", "not an object", "record"))
            continue
        _add(out, no, {c: _cell(obj.get(c)) for c in (*REQUIRED, *OPTIONAL)})
    return out


def _add(out: Parsed, no: int, v: dict[str, str]) -> None:
    if not any(v.get(c) for c in DECISION):
        out.undecided += 1
        return
    out.lines.append(Line(no, v["entry"], v["action"], v["reason"], v["by"], v.get("link", "")))


def plan(
    parsed: Parsed,
    index: EntryIndex,
    actions: dict[str, list[Action]],
    now_ms: int,
) -> Plan:
    """Check every line against the entries and their actions; the write-offs to
    append, or BulkError with every problem (line and field named). Pure."""
    unit = parsed.unit
    problems = list(parsed.problems)
    out = Plan(undecided=parsed.undecided)
    seen: dict[str, int] = {}

    def bad(line: Line, fld: str, msg: str) -> None:
        problems.append(Problem(line.no, fld, msg, unit))

    for line in parsed.lines:
        fields = write_off_problems(line.action, line.reason, line.by, line.link, cli=False)
        for fld, msg in fields:
            bad(line, fld, msg)
        if not line.entry:
            bad(line, "entry", "empty: give an entry id, a break id or an order's txn_id")
            continue
        try:
            entry = index.find(line.entry)
        except SuspenseError as exc:
            bad(line, "entry", str(exc))
            continue
        if entry is None:
            bad(line, "entry", unknown_entry(line.entry))
            continue
        if entry.entry_id in seen:
            bad(
                line,
                "entry",
                f"entry {entry.entry_id} is decided on {unit} {seen[entry.entry_id]} "
                "already: one decision per entry",
            )
            continue
        seen[entry.entry_id] = line.no
        linked_to = ""
        if line.link and line.action == "linked":
            try:
                linked_to = link_target(index, entry, line.link)
            except SuspenseError as exc:
                bad(line, "link", str(exc))
                continue
        if fields:
            continue
        history = actions.get(entry.entry_id, [])
        closed = closed_problem(entry, history)
        if closed is None:
            out.actions.append(
                write_off_action(entry, line.action, line.reason, line.by, linked_to, now_ms)
            )
            continue
        by = state(history).closed_by
        if by is not None and (by.action, by.reason, by.actor, by.linked_to) == (
            line.action,
            line.reason,
            line.by,
            linked_to,
        ):
            out.already.append(line.no)  # this very decision, applied before
        else:
            bad(line, "action", closed)
    if problems:
        raise BulkError(sorted(problems, key=lambda p: (p.no, p.field)))
    return out


# ------------------------------------------------------------- ClickHouse I/O


def apply(db: Backend, text: str, *, now_ms: int | None = None, check: bool = False) -> Plan:
    """Validate a resolutions file whole, then (unless `check`) append its
    write-offs in one INSERT. Real-time breaks not yet parked are parked with it
    (as `tally breaks resolve` does), only when something is applied. Raises
    BulkError, having written nothing."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    parsed = parse(text)
    sync = parked_in_memory(db, now_ms)
    p = plan(parsed, EntryIndex(sync.entries), sync.actions, now_ms)
    if check or not p.actions:
        return p
    # entries first: an action never points at an entry that is not stored
    if sync.written:
        db.insert("suspense_entries", ENTRY_COLUMNS, [e.row() for e in sync.written])
    db.insert("suspense_actions", ACTION_COLUMNS, [a.row() for a in (*sync.appended, *p.actions)])
    return p


def export_rows(
    db: Backend,
    *,
    channel: str | None = None,
    day: date | None = None,
    include_closed: bool = False,
    now_ms: int | None = None,
) -> list[dict[str, Any]]:
    """The suspense entries as `tally breaks suspense` lists them (real-time breaks
    parked first), each with what its breaks say (`detail`: the real-time break's
    detail, the end-of-day class with our and the statement's amounts from the
    day's latest run) and empty action, reason, by, link to fill in."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    sync_breaks(db, now_ms=now_ms)
    rows = listing(db, channel=channel, day=day, include_closed=include_closed, now_ms=now_ms)
    details = _details(db, [b for r in rows for b in r["break_ids"]])
    out = []
    for r in rows:
        d, rest = divmod(int(r["age_seconds"]), 86400)
        out.append(
            {
                "entry": r["entry_id"],
                "business_date": r["business_date"],
                "channel_id": r["channel_id"],
                "merchant_id": r["merchant_id"],
                "txn_id": r["txn_id"],
                "channel_txn_id": r["channel_txn_id"],
                "kinds": " ".join(r["kinds"]),
                "currency": r["currency"],
                "amount": money(r["amount"], r["currency"]),
                "age": f"{d}d {rest // 3600}h" if d else f"{rest // 3600}h {rest % 3600 // 60}m",
                "opened_at": r["opened_at"],
                "state": r["state"],
                "detail": "; ".join(details[b] for b in r["break_ids"] if details.get(b)),
                "action": "",
                "reason": "",
                "by": "",
                "link": "",
            }
        )
    return out


def _details(db: Backend, break_ids: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    rt = [b for b in break_ids if not b.startswith("eod:")]
    for chunk in _chunks(sorted(set(rt))):
        for r in db.query(
            "SELECT break_id, kind, detail FROM {db}.breaks FINAL WHERE break_id IN %(ids)s",
            {"ids": chunk},
        ):
            out[r["break_id"]] = f"{r['kind']}: {r['detail']}" if r["detail"] else r["kind"]
    eod: dict[tuple[str, str, str], str] = {}  # (channel, day, item) -> break id
    for b in break_ids:
        if b.startswith("eod:"):
            _, ch, d, _cls, item = b.split(":", 4)
            eod[(ch, d, item)] = b
    items = sorted({k[2] for k in eod})
    for chunk in _chunks(items):
        for r in db.query(
            "SELECT channel_id, toString(business_date) AS d, item_key, class, detail, "
            "currency, ledger_amount, statement_amount FROM {db}.recon_results FINAL "
            "WHERE item_key IN %(ids)s AND run_id IN (SELECT argMax(run_id, started_at_ms) "
            "FROM {db}.recon_runs FINAL GROUP BY channel_id, business_date)",
            {"ids": chunk},
        ):
            bid = eod.get((r["channel_id"], r["d"], r["item_key"]))
            if bid is None:
                continue
            cur = r["currency"]
            ours = money(r["ledger_amount"], cur) or "none"
            theirs = money(r["statement_amount"], cur) or "none"
            text = f"{r['class']} {r['d']}: ours {ours}, statement {theirs} {cur}".rstrip()
            out[bid] = f"{text} ({r['detail']})" if r["detail"] else text
    return out
