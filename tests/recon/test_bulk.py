"""Bulk work on breaks: `tally breaks export` and `tally breaks resolve --file`.

The file's reading and checking (recon/bulk.py) are pure and tested here without
ClickHouse; the commands are tested through the CLI on chDB and clickhouse-server
18.16: the export lists the open entries (real-time and end-of-day) with empty
decision columns; a file with one bad line changes nothing and names the line and
the field; a good file applies; the same file again changes nothing; 1,000
resolutions go in one INSERT."""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import date
from decimal import Decimal as D
from typing import Any

import pytest
from click.testing import CliRunner

from recon import bulk as B
from recon import run as R
from recon import suspense as S
from sinks import rows as rows_
from sinks.backend import Backend
from sinks.schema import migrate
from tally.cli import main
from tests.clickhouse import connect_to, env_of
from tests.recon.test_run import DAY, POLICY
from tests.recon.test_suspense import NOW, realtime_break, scenario

# ------------------------------------------------------------------- pure

DAY0 = date(2026, 11, 24)


def entry(txn: str, kind: str = "short", break_id: str | None = None) -> S.Entry:
    ev = S.Sighting(
        "up", txn, txn, f"C{txn}", "m1", kind, break_id or f"b-{txn}", "CNY", D("5.00"), DAY0
    )
    return S.attach(None, ev, 1)


ENTRIES = {e.entry_id: e for e in [*(entry(t) for t in "ABCDEG"), entry("X", "long")]}
INDEX = S.EntryIndex(ENTRIES)


def eid(txn: str) -> str:
    return S.entry_id("up", txn)


def text(*rows: str, header: str = "entry,action,reason,by,link") -> str:
    return "\n".join((header, *rows)) + "\n"


def test_parse_reads_the_export_and_numbers_the_lines() -> None:
    t = (
        "\ufeffEntry,kinds,amount,Action,reason,by,detail\n"  # BOM, other columns, case
        f"{eid('A')},short,5.00,refunded,merchant refunded,ann,x\n"
        "\n"  # a blank line keeps its number
        f'{eid("B")},short,5.00,loss_accepted,"two\nlines",bob,\n'
        f"{eid('C')},short,5.00,,,,undecided\n"
    )
    p = B.parse(t)
    assert p.problems == [] and p.undecided == 1
    assert [(x.no, x.entry, x.action, x.reason, x.by, x.link) for x in p.lines] == [
        (2, eid("A"), "refunded", "merchant refunded", "ann", ""),
        (4, eid("B"), "loss_accepted", "two\nlines", "bob", ""),
    ]
    missing = B.parse("entry,action,who\n1,2,3\n")
    assert [str(x) for x in missing.problems] == [
        "line 1, field reason: no column 'reason' in the header (needs entry, action, reason, by)",
        "line 1, field by: no column 'by' in the header (needs entry, action, reason, by)",
    ]
    assert B.parse("").problems[0].message.startswith("the file is empty")


def test_parse_json_records() -> None:
    p = B.parse(
        json.dumps(
            [
                {"entry": "A", "action": "refunded", "reason": "r", "by": "ann", "amount": "5"},
                {"entry": "B", "action": "", "reason": "", "by": ""},
                7,
            ]
        )
    )
    assert [x.entry for x in p.lines] == ["A"] and p.undecided == 1 and p.unit == "record"
    assert [str(x) for x in p.problems] == ["record 3, field entry: not an object"]


def test_plan_checks_every_line_and_names_line_and_field() -> None:
    closed = S.write_off_action(ENTRIES[eid("X")], "refunded", "done", "zoe", "", 5)
    actions = {eid("X"): [closed]}
    t = text(
        f"{eid('A')},refunded,ok,ann,",  # 2: good
        "nope,refunded,ok,ann,",  # 3: unknown entry
        "B,deleted,,ann,",  # 4: unknown action, no reason (by txn id)
        f"{eid('C')},linked,same as A,ann,",  # 5: linked without link
        "b-A,loss_accepted,again,bob,",  # 6: A twice (by break id)
        "X,loss_accepted,late,bob,",  # 7: closed already, by another decision
        "CD,linked,itself,bob,D",  # 8: linked to itself (by channel txn id)
        f"{eid('E')},refunded,ok,,",  # 9: no by
        "G,refunded,r,ann,A",  # 10: a link with another action
    )
    with pytest.raises(B.BulkError) as exc:
        B.plan(B.parse(t), INDEX, actions, 100)
    got = [(p.no, p.field) for p in exc.value.problems]
    assert got == [
        (3, "entry"),
        (4, "action"),
        (4, "reason"),
        (5, "link"),
        (6, "entry"),
        (7, "action"),
        (8, "link"),
        (9, "by"),
        (10, "link"),
    ]
    msg = {(p.no, p.field): str(p) for p in exc.value.problems}
    assert msg[(3, "entry")].startswith("line 3, field entry: no suspense entry 'nope'")
    assert "unknown action 'deleted'" in msg[(4, "action")]
    assert "column link OTHER is required with column action linked" in msg[(5, "link")]
    assert f"entry {eid('A')} is decided on line 2 already" in msg[(6, "entry")]
    assert "already closed: refunded by zoe" in msg[(7, "action")]
    assert "cannot be linked to itself" in msg[(8, "link")]


def test_plan_of_a_good_file_and_the_same_file_again() -> None:
    t = text(
        f"{eid('A')},refunded,merchant refunded,ann,",
        "B,linked,same money as A,bob,A",
        f"{eid('C')},,,,",
    )
    p = B.plan(B.parse(t), INDEX, {}, 100)
    assert p.already == [] and p.undecided == 1
    assert [(a.entry_id, a.action, a.linked_to, a.at_ms) for a in p.actions] == [
        (eid("A"), "refunded", "", 100),
        (eid("B"), "linked", eid("A"), 100),
    ]
    # the same write-offs the single-entry resolve makes
    assert p.actions[0] == S.write_off_action(
        ENTRIES[eid("A")], "refunded", "merchant refunded", "ann", "", 100
    )
    # applied: the same file again appends nothing
    done = {a.entry_id: [a] for a in p.actions}
    again = B.plan(B.parse(t), INDEX, done, 200)
    assert again.actions == [] and again.already == [2, 3]
    # an entry reopened by a re-run after the write-off takes the decision again
    reopened = S.Action(
        "r1", eid("A"), S.REOPENED, "run x: short again", "tally recon run", "", 150
    )
    third = B.plan(B.parse(t), INDEX, {**done, eid("A"): [p.actions[0], reopened]}, 300)
    assert [a.entry_id for a in third.actions] == [eid("A")] and third.already == [3]


def test_an_ambiguous_identifier_is_a_problem() -> None:
    two = {e.entry_id: e for e in (entry("A", break_id="b1"), entry("B", break_id="b1"))}
    with pytest.raises(B.BulkError, match=r"line 2, field entry: 'b1' names 2 suspense entries"):
        B.plan(B.parse(text("b1,refunded,r,ann,")), S.EntryIndex(two), {}, 1)


# -------------------------------------------------------------- through the CLI


def _cli(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(main, list(args), env=env)


def _count(db: Backend, table: str) -> int:
    return int(db.query(f"SELECT count() AS n FROM {{db}}.{table}")[0]["n"])


def _snapshot(db: Backend) -> tuple[Any, ...]:
    return (
        sorted(a.row() for acts in S.load_actions(db).values() for a in acts),
        sorted(e.row() for e in S.load_entries(db).values()),
        _count(db, "suspense_actions"),
        _count(db, "suspense_entries"),
    )


def test_export_edit_resolve_through_the_cli(storage: dict[str, Any], tmp_path: Any) -> None:
    db = connect_to(storage)
    migrate(db)
    scenario(db)  # end of day: C amount_mismatch, H short, F long
    realtime_break(db, "pending_timeout", "Z")
    R.run(db, "up", DAY, POLICY, now_ms=NOW)
    env = env_of(storage)

    rows = _exported(env)

    # the person fills some lines in; line 4 (F) has a typo in the action
    def write(decisions: dict[str, tuple[str, str, str, str]]) -> str:
        return _write(rows, tmp_path, decisions)

    line_of = {x["txn_id"]: i + 2 for i, x in enumerate(rows)}
    good = {
        "C": ("channel_confirmed", "channel paid the difference", "ann", ""),
        "H": ("loss_accepted", "bank confirmed no debit", "ann", ""),
        "F": ("linked", "the same money as C", "bob", "C"),
    }
    before = _snapshot(db)
    bad = write({**good, "F": ("link", "the same money as C", "bob", "C")})
    r = _cli(env, "breaks", "resolve", "--file", bad)
    assert r.exit_code == 1
    assert "1 problems, nothing was applied" in r.output
    assert f"line {line_of['F']}, field action: unknown action 'link'" in r.output
    assert _snapshot(db) == before  # nothing changed: no action, no entry

    path = write(good)
    r = _cli(env, "breaks", "resolve", "--file", path, "--check")
    assert r.exit_code == 0 and "would write off 3 entries" in r.output, r.output
    assert _snapshot(db) == before
    r = _cli(env, "breaks", "resolve", "--file", path)
    assert r.exit_code == 0, r.output
    assert "wrote off 3 entries in one insert (0 already applied, 1 undecided" in r.output
    states = {
        x["txn_id"]: x["state"]
        for x in json.loads(_cli(env, "breaks", "export", "--all", "--format", "json").stdout)
    }
    assert states == {"C": "channel_confirmed", "H": "loss_accepted", "F": "linked", "Z": "open"}
    doc = json.loads(_cli(env, "breaks", "history", "F", "--format", "json").stdout)
    assert [(a["action"], a["actor"], a["linked_to"]) for a in doc["actions"]] == [
        ("linked", "bob", S.entry_id("up", "C"))
    ]
    after = _snapshot(db)

    _again(env, db, path, line_of, after, write)
    db.close()


def _exported(env: dict[str, str]) -> list[dict[str, str]]:
    """`tally breaks export --open`: every open entry, empty decisions, the details."""
    r = _cli(env, "breaks", "export", "--open", "--format", "csv")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert list(rows[0]) == list(B.EXPORT_COLUMNS)
    by_txn = {x["txn_id"]: x for x in rows}
    assert set(by_txn) == {"C", "H", "F", "Z"}
    assert all(x["action"] == x["reason"] == x["by"] == x["link"] == "" for x in rows)
    assert all(x["state"] == "open" for x in rows)
    assert by_txn["C"]["amount"] == "1.00" and by_txn["C"]["kinds"] == "amount_mismatch"
    assert by_txn["C"]["detail"] == (
        f"amount_mismatch {DAY}: ours 100.00, statement 99.00 CNY (amount or currency differs)"
    )
    assert by_txn["Z"]["detail"] == "pending_timeout: test"
    js = json.loads(_cli(env, "breaks", "export", "--format", "json").stdout)
    assert [x["entry"] for x in js] == [x["entry"] for x in rows]
    return rows


def _write(
    rows: list[dict[str, str]], tmp_path: Any, decisions: dict[str, tuple[str, str, str, str]]
) -> str:
    """The exported rows with the person's decisions filled in, as a file."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=B.EXPORT_COLUMNS, lineterminator="\n")
    w.writeheader()
    for x in rows:
        a, reason, by, link = decisions.get(x["txn_id"], ("", "", "", ""))
        w.writerow({**x, "action": a, "reason": reason, "by": by, "link": link})
    path = tmp_path / "resolutions.csv"
    path.write_text(buf.getvalue(), encoding="utf-8")
    return str(path)


def _again(
    env: dict[str, str],
    db: Backend,
    path: str,
    line_of: dict[str, int],
    after: tuple[Any, ...],
    write: Any,
) -> None:
    """The same file again changes nothing; a different decision on a closed entry is
    refused; the open entry is left; the single-entry form."""
    # the same file again: nothing changes
    r = _cli(env, "breaks", "resolve", "--file", path)
    assert (
        r.exit_code == 0 and "wrote off 0 entries" in r.output and "3 already applied" in r.output
    )
    assert _snapshot(db) == after
    # a different decision on a closed entry is refused, naming the line
    r = _cli(env, "breaks", "resolve", "--file", write({"H": ("refunded", "x", "cy", "")}))
    assert r.exit_code == 1
    assert f"line {line_of['H']}, field action: suspense entry" in r.output
    assert "already closed: loss_accepted by ann" in r.output
    assert _snapshot(db) == after
    # only the open entry is left to export
    left = list(csv.DictReader(io.StringIO(_cli(env, "breaks", "export").stdout)))
    assert [x["txn_id"] for x in left] == ["Z"]
    # the single-entry form is as before; --file excludes it
    r = _cli(env, "breaks", "resolve", "--file", path, "Z")
    assert r.exit_code == 2 and "drop ENTRY" in r.output
    r = _cli(env, "breaks", "resolve", "Z", "--action", "refunded")
    assert r.exit_code == 2 and "missing --reason, --by" in r.output


class Counting:
    """A backend that counts the INSERTs per table."""

    def __init__(self, db: Backend) -> None:
        self.db = db
        self.inserts: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)

    def insert(self, table: str, columns: Any, rows: Any) -> None:
        self.inserts[table] = self.inserts.get(table, 0) + 1
        self.db.insert(table, columns, rows)


def test_a_thousand_resolutions_in_one_insert(storage: dict[str, Any], tmp_path: Any) -> None:
    db = connect_to(storage)
    migrate(db)
    docs = [
        {
            "break_id": f"rt-pending_timeout-T{i:04d}",
            "kind": "pending_timeout",
            "txn_id": f"T{i:04d}",
            "merchant_id": "m1",
            "channel_id": "up",
            "currency": "CNY",
            "amount": f"{i + 1}.00",
            "channel_amount": None,
            "business_date": DAY.isoformat(),
            "event_time": "2026-11-24T10:00:00.000Z",
            "detected_at": "2026-11-24T10:00:00.001Z",
            "detail": "no answer after 3 queries",
            "evidence": [],
        }
        for i in range(1000)
    ]
    db.insert(
        "breaks", rows_.BREAKS.columns, [r for d in docs for r in rows_.BREAKS.rows(None, d, 0)]
    )
    env = env_of(storage)
    out = tmp_path / "all.csv"
    r = _cli(env, "breaks", "export", "--out", str(out))
    assert r.exit_code == 0 and "wrote 1,000 entries" in r.output, r.output
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert len(rows) == 1000
    for x in rows:
        x.update(action="channel_confirmed", reason="query answered: failed", by="ops")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=B.EXPORT_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    # one bad line among 1,000: nothing
    bad = [dict(x) for x in rows]
    bad[617]["by"] = ""
    bbuf = io.StringIO()
    bw = csv.DictWriter(bbuf, fieldnames=B.EXPORT_COLUMNS, lineterminator="\n")
    bw.writeheader()
    bw.writerows(bad)
    (tmp_path / "bad.csv").write_text(bbuf.getvalue(), encoding="utf-8")
    r = _cli(env, "breaks", "resolve", "--file", str(tmp_path / "bad.csv"))
    assert r.exit_code == 1 and "line 619, field by: a write-off needs who did it" in r.output
    assert _count(db, "suspense_actions") == 0

    # the good file, in process, counting the INSERTs: one
    counting = Counting(db)
    t0 = time.monotonic()
    plan = B.apply(counting, buf.getvalue())  # type: ignore[arg-type]
    seconds = time.monotonic() - t0
    assert len(plan.actions) == 1000 and counting.inserts == {"suspense_actions": 1}
    print(f"\n{db.name}: 1,000 resolutions validated and applied in {seconds:.2f}s")
    acts = S.load_actions(db)
    assert len(acts) == 1000 and {a.action for v in acts.values() for a in v} == {
        "channel_confirmed"
    }
    assert len({a.at_ms for v in acts.values() for a in v}) == 1
    # the same file again through the CLI: nothing more
    path = tmp_path / "good.csv"
    path.write_text(buf.getvalue(), encoding="utf-8")
    r = _cli(env, "breaks", "resolve", "--file", str(path))
    assert r.exit_code == 0 and "1,000 already applied" in r.output, r.output
    assert _count(db, "suspense_actions") == 1000
    assert _cli(env, "breaks", "export").stdout.strip() == ",".join(B.EXPORT_COLUMNS)
    db.close()
