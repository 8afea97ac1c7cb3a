"""`tally recon run` scenarios on chDB and clickhouse-server 18.16: every class on one
day and a re-run changes nothing, a re-delivery with two corrected lines changes
exactly those two results, a neighbouring statement loaded later, the CLI."""

from __future__ import annotations

import json
from decimal import Decimal as D
from typing import Any

import pytest
from click.testing import CliRunner

from recon import run as R
from sinks.backend import Backend
from sinks.schema import migrate
from tally.cli import main
from tally.core.eod import LedgerOrder, StatementLine, classify
from tests.clickhouse import connect_to, env_of
from tests.recon.test_run import (
    CTX,
    DAY,
    NEXT,
    POLICY,
    insert_orders,
    insert_statement,
    line,
    order,
    stored,
)

pytestmark = pytest.mark.clickhouse


def _day_scenario(db: Backend, channel: str) -> tuple[list[LedgerOrder], list[StatementLine]]:
    orders = [
        order("A"),
        order("B", coupon_amount=D("10")),
        order("C"),
        order("E", fee=D("0.30")),
        order("G", type="refund", amount=D("20"), fee=None),
        order("H"),  # short
        order("F", our_status="failed"),  # long
        order("N", created_at_ms=CTX.end_cutoff_ms - 30_000),  # carried (D+1 not loaded)
    ]
    lines = [
        line(1, "A"),
        line(2, "", channel_txn_id="XB", amount=D("90")),
        line(3, "C", amount=D("99")),
        line(4, "E", fee=D("0.60")),
        line(5, "G", kind="refund", amount=D("20"), status="failed", fee=None),
        line(6, "F"),
    ]
    insert_orders(db, channel, orders)
    insert_statement(db, channel, DAY, lines)
    return orders, lines


def test_a_day_every_class_and_rerun_is_identical(db: Backend) -> None:
    orders, lines = _day_scenario(db, "up")
    first = R.run(db, "up", DAY, POLICY, now_ms=CTX.end_cutoff_ms + 10 * 3600_000)
    got = {r.item_key: r.cls for r in stored(db, "up", first.run_id)}
    assert got == {
        "A": "matched",
        "B": "matched",
        "C": "amount_mismatch",
        "E": "fee_mismatch",
        "G": "status_mismatch",
        "H": "short",
        "F": "long",
        "N": "carried",
    }
    assert first.previous_run is None and first.ledger_items == 7 and first.statement_items == 6
    assert first.summary["matched"]["CNY"] == (2, D("190"))
    assert stored(db, "up", first.run_id) == classify(CTX, orders, lines)
    # the same inputs again: the same results, no change reported
    second = R.run(db, "up", DAY, POLICY, now_ms=CTX.end_cutoff_ms + 11 * 3600_000)
    assert second.run_id != first.run_id and second.previous_run == first.run_id
    assert second.changes == []
    assert stored(db, "up", second.run_id) == stored(db, "up", first.run_id)
    assert second.summary == first.summary
    runs = db.query("SELECT run_id, counts FROM {db}.recon_runs FINAL WHERE channel_id = 'up'")
    assert len(runs) == 2 and json.loads(runs[0]["counts"])["matched"] == 2


def test_redelivery_with_two_corrected_lines_changes_exactly_those_two(db: Backend) -> None:
    _orders, lines = _day_scenario(db, "wx")
    first = R.run(db, "wx", DAY, POLICY)
    corrected = [
        line(3, "C") if x.line_no == 3 else line(4, "E", fee=D("0.30")) if x.line_no == 4 else x
        for x in lines
    ]
    insert_statement(db, "wx", DAY, corrected, delivery=2)
    # a third delivery being loaded (no version row yet) is not used
    insert_statement(db, "wx", DAY, [], delivery=3, finished=False)
    second = R.run(db, "wx", DAY, POLICY)
    assert second.delivery == 2 and second.previous_run == first.run_id
    assert [(c.item_key, c.old, c.new) for c in second.changes] == [
        ("C", "amount_mismatch", "matched"),
        ("E", "fee_mismatch", "matched"),
    ]
    before = {r.item_key: r for r in stored(db, "wx", first.run_id)}
    after = {r.item_key: r for r in stored(db, "wx", second.run_id)}
    assert {k for k in before if before[k] != after[k]} == {"C", "E"}
    # and once more: nothing changes
    assert R.run(db, "wx", DAY, POLICY).changes == []


def test_neighbouring_statement_loaded_later_turns_carried_into_short(db: Backend) -> None:
    _day_scenario(db, "al")
    assert {r.item_key: r.cls for r in stored(db, "al", R.run(db, "al", DAY, POLICY).run_id)}[
        "N"
    ] == "carried"
    insert_statement(db, "al", NEXT, [line(1, "Z")])
    out = R.run(db, "al", DAY, POLICY)
    assert [(c.item_key, c.old, c.new) for c in out.changes] == [("N", "carried", "short")]
    insert_statement(db, "al", NEXT, [line(1, "Z"), line(2, "N")], delivery=2)
    out = R.run(db, "al", DAY, POLICY)
    assert [(c.item_key, c.old, c.new) for c in out.changes] == [("N", "short", "carried")]


def test_no_statement_is_refused(db: Backend) -> None:
    insert_orders(db, "x", [order("A")])
    with pytest.raises(R.ReconError, match="no statement loaded for channel 'x' on 2026-11-24"):
        R.run(db, "x", DAY, POLICY)
    assert R.channels_of(db, DAY) == ["x"]


def test_cli_recon_run(storage: dict[str, Any]) -> None:
    db = connect_to(storage)
    migrate(db)
    _day_scenario(db, "up")
    insert_orders(db, "wx", [order("W")])  # ledger, no statement: skipped
    db.close()
    env = {
        **env_of(storage),
        "TALLY_CHANNELS": json.dumps({"up": {"cutoff": "23:00", "carry_window_seconds": 180}}),
    }
    r = CliRunner().invoke(main, ["recon", "run", "--date", DAY.isoformat()], env=env)
    assert r.exit_code == 0, r.output
    assert "up 2026-11-24: statement delivery 1" in r.stdout
    assert "amount_mismatch  1      CNY       100.00" in r.stdout
    assert "first run of this day" in r.stdout
    assert "skipped wx: no statement loaded" in r.stderr
    r = CliRunner().invoke(
        main, ["recon", "run", "--date", DAY.isoformat(), "--channel", "up", "--json"], env=env
    )
    doc = json.loads(r.stdout)
    [run] = doc["runs"]
    assert run["counts"]["short"] == 1 and run["changes"] == [] and run["previous_run"]
    r = CliRunner().invoke(
        main,
        ["recon", "results", "--date", DAY.isoformat(), "--channel", "up", "--format", "json"],
        env=env,
    )
    rows = json.loads(r.stdout)
    assert {x["item_key"]: x["class"] for x in rows}["C"] == "amount_mismatch"
    assert next(x for x in rows if x["item_key"] == "C")["statement_amount"] == "99.00"
    r = CliRunner().invoke(
        main, ["recon", "run", "--date", DAY.isoformat(), "--channel", "wx"], env=env
    )
    assert r.exit_code == 1 and "no statement loaded for channel 'wx'" in r.output
    r = CliRunner().invoke(main, ["recon", "runs", "--format", "json"], env=env)
    assert len(json.loads(r.stdout)) == 2
