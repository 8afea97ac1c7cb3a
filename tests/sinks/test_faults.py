"""Faults, for real: ClickHouse killed with SIGKILL in the middle of a 100,000-event
run, the sink process killed with SIGKILL mid-batch, and a worker restarted on a
fresh (empty) embedded broker restored from ClickHouse. Afterwards every result is
in ClickHouse exactly once: the counts and sums equal the output topics'."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sinks.backend import Backend, ClickHouseError
from sinks.restore import restore_from_clickhouse
from sinks.runner import SinkRunner
from sinks.schema import TABLES, migrate
from streams.app import account_balances, create_app
from streams.broker import EmbeddedBroker
from streams.offsets import log_ends
from streams.produce import produce
from streams.worker import WorkerRunner, end_offsets
from tally.config import Settings
from tally.core.ledger import Balance, assert_balanced
from tally.sim.traffic import SimConfig, generate
from tests.clickhouse import (
    _summary,
    assert_same_results,
    connect_to,
    drop_database,
    env_of,
    expected_results,
    free_port,
    get_server,
    read_values,
    storage_values,
    stored_results,
)
from tests.streams.streamrun import retarget, stream_settings

pytestmark = [pytest.mark.clickhouse, pytest.mark.broker]
ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.25)


def count(db: Backend, table: str) -> int:
    return int(db.query(f"SELECT count() AS n FROM {{db}}.{table} FINAL")[0]["n"])


def stored_shards(db: Backend) -> list[Balance]:
    return [
        Balance(r["account"], r["currency"], json.loads(r["amounts_minor"]), int(r["version"]))
        for r in db.query(
            "SELECT account, currency, version, amounts_minor FROM {db}.balances FINAL"
        )
    ]


def sim_envelopes(events: int, seed: int, settings: Settings) -> list[Any]:
    cfg = SimConfig(events=events, seed=seed, id_prefix=f"f{uuid.uuid4().hex[:6]}-")
    return retarget(generate(cfg, settings.policies()).envelopes, settings)


# ------------------------------------------------------------- ClickHouse killed


async def test_clickhouse_killed_mid_run_loses_nothing_and_doubles_nothing(
    broker, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    server = get_server(request)
    values = storage_values(request, "server")
    s = stream_settings(
        broker,
        sink_batch_size=2000,
        sink_batch_seconds=0.5,
        sink_retry_max_seconds=2.0,
        **values,
    )
    envelopes = sim_envelopes(100_000, 11, s)
    tally = create_app(s)
    worker = WorkerRunner(tally)
    sink = SinkRunner(s, progress_seconds=5)
    db = connect_to(values)
    t0 = time.monotonic()
    await worker.start()
    await sink.start()
    feed = asyncio.ensure_future(produce(s.bootstrap_servers(), envelopes))
    try:

        async def some_stored() -> bool:
            try:
                return count(db, "order_states") >= 5000
            except ClickHouseError:
                return False  # not migrated yet

        await until(some_stored, 180, "5,000 order states in ClickHouse")
        with caplog.at_level(logging.INFO, logger="tally.sinks"):
            server.kill9()  # SIGKILL: no shutdown
            killed_at = time.monotonic()
            consumed = sum(tally.stats.consumed.values())
            await asyncio.sleep(8)
            # the stream agents kept going; the sink held one batch and read no more
            assert sum(tally.stats.consumed.values()) > consumed
            assert sink.stats.unavailable_since is not None and sink.stats.retries >= 2
            assert 0 < sink.stats.buffered <= s.sink_batch_size
            held = sink.stats.buffered
            await asyncio.sleep(2)
            assert sink.stats.buffered == held  # nothing more read while ClickHouse is down
            await asyncio.to_thread(server.start)
            await feed
            await worker.wait_idle(3.0)
            processed_at = time.monotonic()
            await sink.wait_caught_up(300)
        caught_up_at = time.monotonic()
    finally:
        feed.cancel()
        await sink.stop()
        await worker.stop()
    log_text = caplog.text
    assert "ClickHouse unreachable while writing" in log_text
    assert "consumption paused" in log_text and "ClickHouse is back after" in log_text
    assert sink.stats.max_buffered <= s.sink_batch_size
    assert sink.stats.outages == 1

    await _check_stored(s, db, values, tally, envelopes)
    print(
        f"\n100k run: {len(envelopes):,} events; ClickHouse down "
        f"{caught_up_at - killed_at:.1f}s incl. catch-up; stream idle after "
        f"{processed_at - t0:.1f}s, sink caught up {caught_up_at - processed_at:.1f}s later; "
        f"{sum(sink.stats.rows.values()):,} rows in {sink.stats.batches} batches, "
        f"{sink.stats.retries} retries, max {sink.stats.max_buffered:,} messages held"
    )


async def _check_stored(
    s: Settings, db: Backend, values: dict[str, Any], tally: Any, envelopes: list[Any]
) -> None:
    """ClickHouse holds the output topics' results exactly once (then dropped)."""
    expected = await expected_results(s)
    try:
        stored = stored_results(db)
        assert_same_results(expected, stored)
        assert_balanced(stored_shards(db))
        # the balances ClickHouse reports are the worker's own
        assert stored["balances"] == {
            (b.account, b.currency): _summary(b.summary())
            for b in account_balances(tally.balances.items()).values()
        }
        # every input event is represented: each malformed one as a dead letter, each
        # order by its state
        inputs = {e.key for e in envelopes if e.key}
        assert len(stored["dead_letters"]) == len(
            [v for _, v in await read_values(s.bootstrap_servers(), s.topic_dead_letter)]
        )
        assert len(stored["orders"]) >= 0.95 * len(inputs)
    finally:
        db.close()
        drop_database(values)


# ----------------------------------------------------------- sink process killed


def _sink_process(env: dict[str, str], group: str, log_path: Path) -> subprocess.Popen[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    out = open(log_path, "ab")  # noqa: SIM115 - the child owns it
    p = subprocess.Popen(
        [sys.executable, "-m", "tally", "sink", "--until-caught-up", "--group", group],
        env={**base, **env},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=out,
        start_new_session=True,
    )
    out.close()
    return p


def _cli_json(env: dict[str, str], *args: str) -> Any:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    r = subprocess.run(
        [sys.executable, "-m", "tally", *args],
        env={**base, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def outputs(broker) -> Settings:
    """Output topics of a 10,000-event stream run (the worker then stops)."""
    s = stream_settings(broker)

    async def go() -> None:
        worker = WorkerRunner(create_app(s))
        await worker.start()
        try:
            await produce(s.bootstrap_servers(), sim_envelopes(10_000, 5, s))
            await worker.wait_idle(3.0)
        finally:
            await worker.stop()

    asyncio.run(go())
    return s


@pytest.mark.parametrize("backend_kind", ["server", "chdb"])
async def test_sink_killed_mid_batch_shows_nothing_twice(
    outputs: Settings, backend_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    values = storage_values(request, backend_kind)
    if backend_kind == "chdb":
        # the sink process needs its own chDB directory (one process per directory)
        values["data_dir"] = str(tmp_path / "data")
    s = outputs.model_copy(update={k: v for k, v in values.items() if k != "clickhouse_url"})
    group = f"{s.app_id}-sink-{values['clickhouse_database']}"
    env = _sink_env(s, values)
    server_db: Backend | None = None
    if backend_kind == "server":
        server_db = connect_to(values)
        migrate(server_db)
        for t in TABLES:  # keep replayed rows visible: no background merges
            server_db.execute(f"SYSTEM STOP MERGES {{db}}.{t}")
    expected = await expected_results(s)
    logs = tmp_path / "sink.log"
    kills, replayed = await _kill_sink_mid_batch(env, group, logs, server_db)
    p = _sink_process(env, group, logs)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, logs.read_text()[-3000:]
    assert kills >= 2
    final_stats = json.loads(out.decode().strip().splitlines()[-1])
    if server_db is not None:
        _check_server_after_kills(server_db, values, expected, kills, replayed)
    else:
        _check_chdb_after_kills(env, expected)
    print(f"\nsink killed {kills}x; last run: {final_stats}")


def _sink_env(s: Settings, values: dict[str, Any]) -> dict[str, str]:
    """The environment of a sink process reading the outputs of `s` into `values`."""
    return env_of(
        {
            **values,
            "broker": s.broker,
            "app_id": s.app_id,
            "partitions": s.partitions,
            "topic_order_states": s.topic_order_states,
            "topic_breaks": s.topic_breaks,
            "topic_postings": s.topic_postings,
            "topic_balances": s.topic_balances,
            "topic_status_queries": s.topic_status_queries,
            "topic_dead_letter": s.topic_dead_letter,
            "sink_batch_size": 1000,
            "sink_batch_seconds": 0.2,
            "log_level": "info",
        }
    )


async def _kill_sink_mid_batch(
    env: dict[str, str], group: str, logs: Path, server_db: Backend | None
) -> tuple[int, bool]:
    """Start the sink and SIGKILL it while it writes, a few times: (kills, whether
    a replayed batch shows in the server's raw row counts)."""
    kills = 0
    replayed = False
    for delay in (0.5, 1.0, 0.3, 0.8, 0.4, 1.2):
        p = _sink_process(env, group, logs)
        # kill once the sink is writing: some time after its first batch went in
        deadline = time.monotonic() + 120
        seen = logs.read_text().count("first batch")
        while logs.read_text().count("first batch") == seen:
            if p.poll() is not None or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(delay)
        if p.poll() is not None:
            break  # it finished before the kill
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
        kills += 1
        if server_db is not None:
            raw = sum(
                int(server_db.query(f"SELECT count() AS n FROM {{db}}.{t}")[0]["n"])
                for t in ("order_states", "balances", "postings")
            )
            distinct = sum(count(server_db, t) for t in ("order_states", "balances", "postings"))
            replayed = replayed or raw > distinct
        if kills >= 3 and (replayed or server_db is None):
            break
    return kills, replayed


def _check_server_after_kills(
    server_db: Backend, values: dict[str, Any], expected: Any, kills: int, replayed: bool
) -> None:
    stored = stored_results(server_db)
    raw = {
        t: int(server_db.query(f"SELECT count() AS n FROM {{db}}.{t}")[0]["n"])
        for t in ("order_states", "balances", "postings")
    }
    # the replays are in the tables (merges are stopped), and no query shows them
    replayed = replayed or any(raw[t] > count(server_db, t) for t in raw)
    assert replayed, f"no batch was replayed in {kills} kills: {raw}"
    assert_same_results(expected, stored)
    for t in TABLES:
        server_db.execute(f"SYSTEM START MERGES {{db}}.{t}")
        server_db.execute(f"OPTIMIZE TABLE {{db}}.{t} FINAL")
    assert int(server_db.query("SELECT count() AS n FROM {db}.postings")[0]["n"]) == count(
        server_db, "postings"
    )
    server_db.close()
    drop_database(values)


def _check_chdb_after_kills(env: dict[str, str], expected: Any) -> None:
    # chDB: read back through the CLI in another process, as an operator would
    status = _cli_json(env, "db", "status", "--json")["tables"]
    assert status["breaks"]["distinct"] == len(expected["breaks"])
    assert status["status_queries"]["distinct"] == len(expected["queries"])
    assert status["dead_letters"]["distinct"] == len(expected["dead_letters"])
    assert status["order_states"]["distinct"] == len(expected["orders"])
    breaks = _cli_json(env, "breaks", "--format", "json")
    assert sorted(b["break_id"] for b in breaks) == sorted(expected["breaks"])
    balances = {
        (b["account"], b["currency"]): {k: b[k] for k in _summary_keys()}
        for b in _cli_json(env, "balances", "--format", "json")
    }
    assert balances == expected["balances"]


def _summary_keys() -> tuple[str, ...]:
    return (
        "provisional",
        "confirmed",
        "gross",
        "refunds",
        "fees",
        "coupon_funding",
        "net",
        "postings",
    )


# ------------------------------------------------------- restart on a fresh broker


async def _phase(s: Settings, envelopes: list[Any]) -> Any:
    worker = WorkerRunner(create_app(s))
    sink = SinkRunner(s)
    await worker.start()
    await sink.start()
    try:
        await produce(s.bootstrap_servers(), envelopes)
        await worker.wait_idle(2.0)
        await sink.wait_caught_up(120)
        return worker.tally
    finally:
        await sink.stop()
        await worker.stop()


@pytest.mark.parametrize("backend_kind", ["chdb"])
async def test_restart_on_a_fresh_broker_restores_balances(
    broker, backend_kind: str, request: pytest.FixtureRequest
) -> None:
    values = storage_values(request, backend_kind)
    # the uninterrupted run, on the suite's broker (no wall-clock ticks: event time only)
    ref_settings = stream_settings(broker, idle_tick_seconds=3600)
    raw = generate(
        SimConfig(events=6_000, seed=23, id_prefix=f"r{uuid.uuid4().hex[:6]}-"),
        ref_settings.policies(),
    ).envelopes
    ref_worker = WorkerRunner(create_app(ref_settings))
    await ref_worker.start()
    try:
        await produce(ref_settings.bootstrap_servers(), retarget(raw, ref_settings))
        await ref_worker.wait_idle(2.0)
        ref = ref_worker.tally
        ref_balances = {
            k: {a: v for a, v in b.amounts.items() if v}
            for k, b in account_balances(ref.balances.items()).items()
        }
        ref_orders = {k: (v.our_status, v.posted) for k, v in ref.orders.items()}
    finally:
        await ref_worker.stop()
    ref_breaks = {
        (d["kind"], d["txn_id"])
        for _, d in await read_values(ref_settings.bootstrap_servers(), ref_settings.topic_breaks)
    }

    # the same events, with a restart on an empty broker after 60 % of them
    cut = int(len(raw) * 0.6)
    first = EmbeddedBroker("127.0.0.1", free_port(), str(Path(values["data_dir"])))
    await asyncio.to_thread(first.start)
    s1 = stream_settings(first, idle_tick_seconds=3600, **values)
    try:
        await _phase(s1, retarget(raw[:cut], s1))
    finally:
        first.stop()
    second = EmbeddedBroker("127.0.0.1", free_port(), str(Path(values["data_dir"])))
    await asyncio.to_thread(second.start)
    s2 = s1.model_copy(update={"broker": second.url})
    try:
        report = await restore_from_clickhouse(s2)
        assert report.restored, report.reason
        assert report.orders > 500 and report.balances > 10 and report.watermarks == 4
        # each changelog partition ends with a one-record batch: Tansu's ListOffsets
        # (where Faust's recovery stops) is then the true end
        changelogs = [f"{s2.app_id}-{t}-changelog" for t in ("orders", "balances")]
        listed = await end_offsets(s2.bootstrap_servers(), changelogs)
        true_ends = await log_ends(s2.bootstrap_servers(), changelogs)
        assert listed == {(tp.topic, tp.partition): off for tp, off in true_ends.items()}
        again = await restore_from_clickhouse(s2)  # the changelogs hold state now
        assert not again.restored and "already hold state" in again.reason
        tally = await _phase(s2, retarget(raw[cut:], s2))
    finally:
        second.stop()
    balances = {
        k: {a: v for a, v in b.amounts.items() if v}
        for k, b in account_balances(tally.balances.items()).items()
    }
    assert balances == ref_balances
    assert {k: (v.our_status, v.posted) for k, v in tally.orders.items()} == ref_orders
    db = connect_to(values)
    try:
        stored = stored_results(db)
        assert stored["balances"] == {
            (b.account, b.currency): _summary(b.summary())
            for b in account_balances(tally.balances.items()).values()
        }
        got_breaks = {
            (r["kind"], r["txn_id"]) for r in db.query("SELECT kind, txn_id FROM {db}.breaks FINAL")
        }
        assert got_breaks == ref_breaks
    finally:
        db.close()
        drop_database(values)
