"""Suspense and write-off (S9) on chDB and clickhouse-server: one entry per item (a
real-time break and the end-of-day result on the same order), append-only actions,
write-off refused twice, cleared and reopened by re-runs, S7 posting, the CLI."""

from __future__ import annotations

import json
from datetime import date, timedelta
from decimal import Decimal as D
from typing import Any

import pytest
from click.testing import CliRunner

from recon import run as R
from recon import suspense as S
from sinks import rows as rows_
from sinks.backend import Backend
from sinks.schema import migrate
from tally.cli import main
from tests.clickhouse import connect_to, env_of
from tests.recon.test_run import CTX, DAY, POLICY, insert_orders, insert_statement, line, order

pytestmark = pytest.mark.clickhouse

NOW = CTX.end_cutoff_ms + 10 * 3600_000  # the next morning
HOUR = 3600_000


def realtime_break(db: Backend, kind: str, txn: str, channel: str = "up", **kw: Any) -> str:
    """A break as the sink stores it from payments.breaks."""
    doc = {
        "break_id": f"rt-{kind}-{txn}",
        "kind": kind,
        "txn_id": txn,
        "merchant_id": "m1",
        "channel_id": channel,
        "currency": "CNY",
        "amount": "100.00",
        "channel_amount": "99.00",
        "business_date": DAY.isoformat(),
        "event_time": "2026-11-24T10:00:00.000Z",
        "detected_at": "2026-11-24T10:00:00.001Z",
        "detail": "test",
        "evidence": [],
        **kw,
    }
    db.insert("breaks", rows_.BREAKS.columns, rows_.BREAKS.rows(None, doc, 0))
    return str(doc["break_id"])


def scenario(db: Backend) -> None:
    insert_orders(
        db,
        "up",
        [order("A"), order("C"), order("H"), order("F", our_status="failed")],
    )
    insert_statement(
        db, "up", DAY, [line(1, "A"), line(2, "C", amount=D("99")), line(3, "F", amount=D("7"))]
    )


def open_keys(db: Backend, **kw: Any) -> dict[str, tuple[str, ...]]:
    return {e.txn_id: e.kinds for e in S.open_entries(db, now_ms=NOW, **kw)}


# -------------------------------------------------------------- ClickHouse


def test_realtime_break_and_end_of_day_result_are_one_entry(db: Backend) -> None:
    scenario(db)
    rt = realtime_break(db, "amount_mismatch", "C")
    out = R.run(db, "up", DAY, POLICY, now_ms=NOW)
    entries = {e.txn_id: e for e in S.load_entries(db).values()}
    assert set(entries) == {"C", "H", "F"}  # amount_mismatch, short, long
    c = entries["C"]
    assert c.entry_id == S.entry_id("up", "C")
    assert c.kinds == ("amount_mismatch",)
    assert set(c.break_ids) == {rt, S.eod_break_id("up", DAY, "amount_mismatch", "C")}
    assert c.amount == D("100")  # the larger at risk: the real-time break's order amount
    assert entries["H"].amount == D("100") and entries["F"].amount == D("7")
    assert entries["H"].business_date == DAY
    # the real-time break is parked first, the end-of-day result joins it
    assert (out.suspense["breaks_opened"], out.suspense["opened"], out.suspense["updated"]) == (
        1,
        2,
        1,
    )
    # the same break again, another run: nothing new
    realtime_break(db, "amount_mismatch", "C")
    again = R.run(db, "up", DAY, POLICY, now_ms=NOW + HOUR)
    assert again.suspense["opened"] == 0 and again.suspense["updated"] == 0
    assert S.load_entries(db) == {e.entry_id: e for e in entries.values()}
    # a real-time break of another kind on the same order joins the same entry
    realtime_break(db, "late_callback", "C")
    assert S.sync_breaks(db, now_ms=NOW)["updated"] == 1
    c2 = S.load_entries(db)[c.entry_id]
    assert c2.kinds == ("amount_mismatch", "late_callback") and c2.version == c.version + 1
    open_ = S.open_entries(db, day=DAY, channel="up", now_ms=NOW + 2 * HOUR)
    assert {o.txn_id for o in open_} == {"C", "H", "F"}
    assert all(o.age_seconds == 2 * 3600 for o in open_ if o.txn_id == "H")


def test_resolve_is_append_only_and_once(db: Backend) -> None:
    scenario(db)
    R.run(db, "up", DAY, POLICY, now_ms=NOW)
    h = S.entry_id("up", "H")
    entry, act = S.resolve(db, h, "loss_accepted", "bank confirmed no debit", "alice", now_ms=NOW)
    assert entry.txn_id == "H" and act.action == "loss_accepted" and act.actor == "alice"
    assert "H" not in open_keys(db)
    with pytest.raises(S.SuspenseError, match="already closed: loss_accepted by alice"):
        S.resolve(db, h, "refunded", "again", "bob", now_ms=NOW + 1)
    with pytest.raises(S.SuspenseError, match="no suspense entry 'nope'"):
        S.resolve(db, "nope", "refunded", "x", "bob")
    with pytest.raises(S.SuspenseError, match="--link OTHER is required"):
        S.resolve(db, "C", "linked", "x", "bob")
    with pytest.raises(S.SuspenseError, match="needs a reason"):
        S.resolve(db, "C", "refunded", " ", "bob")
    # by txn_id, linked to another entry
    _, link = S.resolve(db, "F", "linked", "same money as C", "bob", link="C", now_ms=NOW + 2)
    assert link.linked_to == S.entry_id("up", "C")
    entry, history = S.history(db, h)
    assert [a.action for a in history] == ["loss_accepted"]
    # nothing was deleted: every row is still there, one action per write-off
    n = db.query("SELECT count() AS n FROM {db}.suspense_actions")[0]["n"]
    assert int(n) == 2
    assert {e.txn_id for e in S.load_entries(db).values()} == {"C", "H", "F"}
    # a later run finding H short again does not reopen a written-off entry
    R.run(db, "up", DAY, POLICY, now_ms=NOW + HOUR)
    assert "H" not in open_keys(db)


def test_rerun_clears_and_reopens_and_posts_to_today(db: Backend) -> None:
    scenario(db)
    realtime_break(db, "status_conflict", "A")  # A matches at end of day
    R.run(db, "up", DAY, POLICY, now_ms=NOW)
    assert set(open_keys(db)) == {"C", "H", "F"}  # A was cleared by the run
    a_hist = S.history(db, "A")[1]
    assert [x.action for x in a_hist] == [S.CLEARED] and "matched" in a_hist[0].reason
    # two days later the channel re-delivers: C corrected, A now missing
    later = NOW + 48 * HOUR
    insert_statement(
        db,
        "up",
        DAY,
        [line(2, "C"), line(3, "F", amount=D("7")), line(4, "", channel_txn_id="Q9")],
        delivery=2,
    )
    out = R.run(db, "up", DAY, POLICY, now_ms=later)
    assert {(c.item_key, c.old, c.new) for c in out.changes} == {
        ("A", "matched", "short"),
        ("C", "amount_mismatch", "matched"),
        ("Q9", "", "long"),
    }
    today = POLICY.business_date(later)
    assert today == DAY + timedelta(days=3) and out.posted_to == today
    assert out.suspense == {
        "opened": 1,  # Q9
        "updated": 1,  # A: short attached
        "cleared": 1,  # C
        "reopened": 1,  # A
        "breaks_opened": 0,
        "breaks_updated": 0,
        "breaks_cleared": 0,
        "breaks_reopened": 0,
    }
    entries = {e.item_key: e for e in S.load_entries(db).values()}
    assert entries["Q9"].business_date == today  # S7: a correction of a settled day
    assert entries["A"].business_date == DAY  # the entry it joined keeps its date
    assert set(open_keys(db)) == {"A", "H", "F", ""}  # "": Q9, a line naming no order
    assert [x.action for x in S.history(db, "A")[1]] == [S.CLEARED, S.REOPENED]
    assert [x.action for x in S.history(db, "C")[1]] == [S.CLEARED]
    assert {o.channel_txn_id for o in S.open_entries(db, day=today, now_ms=later)} == {"Q9"}


def test_cli_suspense_resolve_history(storage: dict[str, Any]) -> None:
    db = connect_to(storage)
    migrate(db)
    scenario(db)
    realtime_break(db, "pending_timeout", "Z", channel="up")
    R.run(db, "up", DAY, POLICY, now_ms=NOW)
    db.close()
    env = env_of(storage)

    def cli(*args: str) -> Any:
        return CliRunner().invoke(main, list(args), env=env)

    r = cli("breaks", "suspense", "--format", "json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert {x["txn_id"] for x in rows} == {"C", "H", "F", "Z"}
    assert all(x["state"] == "open" and x["age_seconds"] >= 0 for x in rows)
    table = cli("breaks", "open", "--channel", "up")
    assert "amount_mismatch" in table.stdout and "open amount" in table.stderr
    h = next(x["entry_id"] for x in rows if x["txn_id"] == "H")
    r = cli(
        "breaks", "resolve", h, "--action", "channel_confirmed", "--reason", "ok", "--by", "ann"
    )
    assert r.exit_code == 0, r.output
    assert f"suspense entry {h} (H, short, 100.00 CNY) written off: channel_confirmed" in r.stdout
    r = cli("breaks", "resolve", h, "--action", "refunded", "--reason", "x", "--by", "bob")
    assert r.exit_code == 1 and "already closed: channel_confirmed by ann" in r.output
    r = cli("breaks", "resolve", "nope", "--action", "refunded", "--reason", "x", "--by", "b")
    assert r.exit_code == 1 and "no suspense entry 'nope'" in r.output
    r = cli("breaks", "resolve", h, "--action", "deleted", "--reason", "x", "--by", "b")
    assert r.exit_code == 2
    r = cli(
        "breaks",
        "resolve",
        "rt-pending_timeout-Z",
        "--action",
        "refunded",
        "--reason",
        "r",
        "--by",
        "c",
    )
    assert r.exit_code == 0 and "(Z, pending_timeout" in r.stdout
    doc = json.loads(cli("breaks", "history", h, "--format", "json").stdout)
    assert doc["state"] == "channel_confirmed" and [a["actor"] for a in doc["actions"]] == ["ann"]
    assert {
        x["txn_id"] for x in json.loads(cli("breaks", "suspense", "--format", "json").stdout)
    } == {"C", "F"}
    every = json.loads(cli("breaks", "suspense", "--all", "--format", "json").stdout)
    assert len(every) == 4
    # the listing of real-time breaks is unchanged
    r = cli("breaks", "--format", "json")
    assert r.exit_code == 0 and [b["kind"] for b in json.loads(r.stdout)] == ["pending_timeout"]
    assert json.loads(cli("breaks", "--date", "2020-01-01", "--format", "json").stdout) == []
    assert date.fromisoformat(every[0]["business_date"]) == DAY
