"""`tally breaks | balances | orders show | db migrate | db status` reading what a real
stream run stored, on chDB and on the clickhouse-server."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from sinks.runner import SinkRunner
from sinks.schema import LATEST
from streams.app import create_app
from streams.produce import produce
from streams.worker import WorkerRunner
from tally.cli import main
from tally.cli.storage import register
from tally.config import Settings
from tests.clickhouse import (
    connect_to,
    drop_database,
    env_of,
    expected_results,
    get_chdb_dir,
    storage_values,
)
from tests.streams.streamrun import retarget, stream_settings
from tests.streams.test_broker import scenario

pytestmark = [pytest.mark.clickhouse, pytest.mark.broker]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(broker) -> dict[str, Any]:
    """One stream run of the broker test's scenario; what ClickHouse must hold."""
    s = stream_settings(broker, idle_tick_seconds=3600)

    async def go() -> dict[str, Any]:
        worker = WorkerRunner(create_app(s))
        await worker.start()
        try:
            await produce(s.bootstrap_servers(), retarget(scenario(), s))
            await worker.wait_idle(2.0)
        finally:
            await worker.stop()
        return await expected_results(s)

    return {"settings": s, "expected": asyncio.run(go())}


@pytest.fixture(scope="module", params=["chdb", "server"])
def stored(request: pytest.FixtureRequest, run: dict[str, Any]) -> Iterator[dict[str, str]]:
    """The run stored by a sink into a fresh database; the CLI's environment."""
    values = storage_values(request, request.param)
    s: Settings = run["settings"].model_copy(update=values)

    async def sink() -> None:
        r = SinkRunner(s, group_id=f"{s.app_id}-{values['clickhouse_database']}")
        await r.start()
        try:
            await r.wait_caught_up(60)
        finally:
            await r.stop()

    asyncio.run(sink())
    yield env_of(values)
    drop_database(values)


def cli(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_register_adds_the_commands() -> None:
    @click.group()
    def tally() -> None: ...

    register(tally)
    assert {"breaks", "balances", "orders", "db", "sink"} <= set(tally.commands)


def test_breaks(stored: dict[str, str], run: dict[str, Any]) -> None:
    r = cli(stored, "breaks", "--format", "json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert {b["break_id"] for b in rows} == run["expected"]["breaks"]
    assert [b["event_time"] for b in rows] == sorted(b["event_time"] for b in rows)
    amt = [b for b in rows if b["kind"] == "amount_mismatch"]
    assert len(amt) == 1 and amt[0]["txn_id"] == "amt-1"
    assert amt[0]["amount"] == "100.00" and amt[0]["channel_amount"] == "99.99"
    assert [e["source"] for e in amt[0]["evidence"]] == ["order", "notify"]

    only = json.loads(cli(stored, "breaks", "--kind", "amount_mismatch", "--format", "json").stdout)
    assert [b["break_id"] for b in only] == [amt[0]["break_id"]]
    day = json.loads(cli(stored, "breaks", "--date", "2026-11-24", "--format", "json").stdout)
    assert {b["break_id"] for b in day} == {
        b["break_id"] for b in rows if (b["business_date"] or b["event_time"][:10]) == "2026-11-24"
    } and day
    assert (
        json.loads(cli(stored, "breaks", "--date", "2020-01-01", "--format", "json").stdout) == []
    )
    m1 = json.loads(cli(stored, "breaks", "--merchant", "m1", "--format", "json").stdout)
    assert m1 and all(b["merchant_id"] == "m1" for b in m1)
    assert json.loads(cli(stored, "breaks", "--channel", "nope", "--format", "json").stdout) == []

    table = cli(stored, "breaks")
    assert table.exit_code == 0 and "amount_mismatch" in table.stdout
    assert f"({len(rows)} breaks)" in table.stderr
    lines = list(csv.DictReader(io.StringIO(cli(stored, "breaks", "--format", "csv").stdout)))
    assert len(lines) == len(rows) and lines[0]["break_id"] and "detail" in lines[0]
    bad = cli(stored, "breaks", "--date", "24/11/2026")
    assert bad.exit_code == 2 and "not a date" in bad.output


def test_balances(stored: dict[str, str], run: dict[str, Any]) -> None:
    rows = json.loads(cli(stored, "balances", "--format", "json").stdout)
    got = {(b["account"], b["currency"]): b for b in rows}
    assert set(got) == set(run["expected"]["balances"])
    for k, want in run["expected"]["balances"].items():
        assert {f: got[k][f] for f in want} == want
    m1 = json.loads(cli(stored, "balances", "--merchant", "m1", "--format", "json").stdout)
    assert [b["account"] for b in m1] == ["merchant:m1"]
    assert m1[0]["confirmed"] == got[("merchant:m1", "CNY")]["confirmed"]
    ch = json.loads(cli(stored, "balances", "--channel", "wechat", "--format", "json").stdout)
    assert {b["account"] for b in ch} == {"channel:wechat", "coupon:wechat", "fees:wechat"}
    table = cli(stored, "balances")
    assert "merchant:m1" in table.stdout and "confirmed" in table.stdout
    both = cli(stored, "balances", "--merchant", "m1", "--channel", "wechat")
    assert both.exit_code != 0 and "exclude each other" in both.output


def test_orders_show(stored: dict[str, str]) -> None:
    o = json.loads(cli(stored, "orders", "show", "ok-1", "--format", "json").stdout)
    assert o["our_status"] == "success" and o["standing"] == "confirmed"
    assert o["amount"] == "100.00" and o["coupon_amount"] == "10.00" and o["fee"] == "0.60"
    assert [e["source"] for e in o["evidence"]] == ["order", "sync", "notify"]
    assert o["position"] == {
        "channel:wechat|confirmed|gross": "90.00",
        "coupon:wechat|confirmed|coupon": "10.00",
        "fees:wechat|confirmed|fee": "-0.60",
        "merchant:m1|confirmed|fee": "0.60",
        "merchant:m1|confirmed|gross": "-100.00",
    }
    stuck = json.loads(cli(stored, "orders", "show", "stuck-1", "--format", "json").stdout)
    assert [q["attempt"] for q in stuck["status_queries"]] == [1, 2, 3]
    assert [b["kind"] for b in stuck["breaks"]] == ["pending_timeout"]
    text = cli(stored, "orders", "show", "amt-1").stdout
    for part in (
        "order",
        "evidence:",
        "notify",
        "99.99",
        "breaks:",
        "amount_mismatch",
        "postings:",
    ):
        assert part in text
    missing = cli(stored, "orders", "show", "no-such-order")
    assert missing.exit_code == 1 and "no order 'no-such-order'" in missing.output


def test_db_migrate_and_status(stored: dict[str, str], run: dict[str, Any]) -> None:
    r = cli(stored, "db", "migrate")
    assert r.exit_code == 0 and f"schema is at version {LATEST}" in r.stdout
    status = json.loads(cli(stored, "db", "status", "--json").stdout)
    assert status["schema_version"] == LATEST
    assert status["tables"]["breaks"]["distinct"] == len(run["expected"]["breaks"])
    assert "***" in status["target"] or "chDB" in status["target"]


def test_a_fresh_database_asks_for_migrate(request: pytest.FixtureRequest) -> None:
    values = storage_values(request, "chdb")
    r = cli(env_of(values), "breaks")
    assert r.exit_code == 1 and "tally db migrate" in r.output
    assert (
        f"schema migrated from version 0 to {LATEST}" in cli(env_of(values), "db", "migrate").stdout
    )
    assert cli(env_of(values), "breaks", "--format", "json").stdout.strip() == "[]"
    drop_database(values)
    connect_to(values).close()


def test_chdb_held_by_another_process_is_explained(request: pytest.FixtureRequest) -> None:
    """chDB allows one process per directory; this test process holds it open."""
    values = storage_values(request, "chdb")
    cli(env_of(values), "db", "migrate")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    r = subprocess.run(
        [sys.executable, "-m", "tally", "breaks"],
        env={**env, **env_of(values)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 1
    assert "Another process" in r.stderr and "TALLY_CLICKHOUSE_URL" in r.stderr
    assert str(get_chdb_dir(request)) in r.stderr
    drop_database(values)


def test_the_sql_in_docs_storage_md_runs(stored: dict[str, str], run: dict[str, Any]) -> None:
    """Every example query of docs/storage.md runs on this backend; the invariant
    query gives zeros."""
    import re

    text = (ROOT / "docs" / "storage.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sql\n(.+?)\n```", text, flags=re.S)
    assert len(blocks) >= 8
    values = {k.removeprefix("TALLY_").lower(): v for k, v in stored.items()}
    db = connect_to(values)
    try:
        for sql in blocks:
            sql = sql.strip().rstrip(";").replace("tally.", f"`{db.database}`.")
            sql = sql.replace("'m-0042'", "'m1'")
            rows = db.query(sql)
            if "must_be_zero" in sql:
                assert rows and all(r["must_be_zero"] == 0 for r in rows)
            if "FROM `" in sql and "breaks FINAL" in sql and "GROUP BY kind" in sql:
                assert sum(r["breaks"] for r in rows) >= 1
    finally:
        db.close()
