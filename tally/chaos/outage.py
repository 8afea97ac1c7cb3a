"""Outages, for real: the ClickHouse server stopped mid-run, and the embedded broker
restarted mid-run (its memory lost).

`clickhouse_outage`: a clickhouse-server process (Debian's 18.16 binary, its own
config and data directory), a worker and the sink in this process, simulated traffic
fed at a steady rate. Mid-run the server is stopped for `seconds` — killed and
started again on the same data directory (`how="kill"`), or frozen with SIGSTOP and
thawed with SIGCONT (`how="freeze"`: connections hang instead of being refused) —
while the traffic keeps flowing. After the drain, what ClickHouse holds (read with
FINAL, as every query does) is compared with everything on the output topics: every
result stored once, none missing, none twice.

`broker_restart`: `tally run` (workers and sink, a child process) on an embedded
broker of its own; mid-feed the broker is stopped (its memory, inputs and outputs
alike, is gone), a fresh one started, and `tally run` started on it — which restores
the tables from ClickHouse (sinks/restore.py) — and every input is fed again, as an
upstream re-sending its messages would. What ClickHouse then holds is compared with a
reference run of the same inputs on event time: breaks, each order's position and
status, balances, dead letters and status queries; and the outputs the old broker held
but the sink had not stored when it stopped are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sinks.backend import ClickHouseError, connect
from sinks.runner import SinkRunner
from streams.app import create_app
from streams.broker import EmbeddedBroker, ensure_topics
from streams.produce import produce
from streams.worker import WorkerRunner
from tally.chaos import deadletters
from tally.chaos.replay import (
    NO_TICKS,
    Compared,
    compare_shapes,
    isolated,
    outputs_of,
    raw_replayed,
    retarget,
    run_log,
    settings_env,
    stored_duplicates,
    stored_shape,
    topic_shape,
)
from tally.chaos.soak import child, end_child, lags
from tally.config import Settings
from tally.sim.traffic import SimConfig, generate

_CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{root}/log/server.log</log>
  <errorlog>{root}/log/server.err.log</errorlog><size>10M</size><count>2</count></logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>{tcp}</tcp_port>
  <http_port>{http}</http_port>
  <path>{root}/data/</path>
  <tmp_path>{root}/tmp/</tmp_path>
  <user_files_path>{root}/user_files/</user_files_path>
  <format_schema_path>{root}/format_schemas/</format_schema_path>
  <users_config>{root}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>268435456</mark_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
"""
_USERS = """<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users><default><password></password>
    <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
  <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
  </interval></default></quotas>
</yandex>
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """clickhouse-server as a child process, with its own config and data directory
    under `root` (kept across `kill9` and `start`, as a restarted server's would be)."""

    def __init__(self, root: Path, binary: str | None = None) -> None:
        found = binary or shutil.which("clickhouse-server")
        if not found:
            raise RuntimeError(
                "clickhouse-server is not installed (Debian: apt-get install clickhouse-server)"
            )
        self.binary = found
        self.root = root
        self.tcp_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        for d in ("log", "data", "tmp", "user_files", "format_schemas"):
            (root / d).mkdir(parents=True, exist_ok=True)
        cfg = _CONFIG.format(root=root, tcp=self.tcp_port, http=free_port())
        (root / "config.xml").write_text(cfg)
        (root / "users.xml").write_text(_USERS)

    def url(self, database: str) -> str:
        return f"clickhouse://default@127.0.0.1:{self.tcp_port}/{database}"

    def start(self, timeout: float = 60.0) -> Server:
        out = open(self.root / "log" / "stdout.log", "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [self.binary, f"--config-file={self.root / 'config.xml'}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.root,
        )
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"clickhouse-server exited with {self.proc.returncode}")
            with socket.socket() as sock:
                sock.settimeout(1)
                if sock.connect_ex(("127.0.0.1", self.tcp_port)) == 0:
                    return self
            time.sleep(0.2)
        self.kill9()
        raise RuntimeError(f"clickhouse-server did not listen within {timeout:.0f}s")

    def kill9(self) -> None:
        """SIGKILL, as a crash would: no shutdown, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a frozen server dies too
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def freeze(self, frozen: bool) -> None:
        """SIGSTOP / SIGCONT: the process stops answering; its sockets stay open."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout:.0f}s: {what}")
        await asyncio.sleep(0.25)


def traffic(s: Settings, events: int, seed: int) -> list[Any]:
    cfg = SimConfig(events=events, seed=seed, id_prefix=f"O{uuid.uuid4().hex[:6]}-")
    return retarget(generate(cfg, s.policies()).envelopes, s)


# ------------------------------------------------------- ClickHouse stopped


@dataclass
class OutageResult:
    how: str
    events: int
    outage_seconds: float  # server down, from the stop to the restart
    catch_up_seconds: float  # from the restart until the sink had stored everything
    consumed_during: int  # input messages the workers read while the server was down
    max_buffered: int  # most messages the sink held at once
    retries: int
    rows_written: int  # rows the sink inserted, replays included
    stored: dict[str, int]  # distinct rows per table, as queries see them
    compared: Compared
    duplicates: dict[str, int]  # identities shown more than once after FINAL
    lag_after: int
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            self.compared.missing == 0
            and self.compared.extra == 0
            and self.compared.changed == 0
            and not any(self.duplicates.values())
            and self.lag_after == 0
        )

    def line(self) -> str:
        c = self.compared
        return (
            f"ClickHouse outage ({self.how}): {self.outage_seconds:.1f}s down, "
            f"{self.events:,} events ({self.consumed_during:,} read while down); "
            f"{sum(self.stored.values()):,} rows stored ({self.rows_written:,} written, "
            f"{self.retries} retries, at most {self.max_buffered:,} messages held); "
            f"missing {c.missing}, extra {c.extra}, changed {c.changed}, duplicates "
            f"{sum(self.duplicates.values())}; sink lag after {self.lag_after}; caught up "
            f"{self.catch_up_seconds:.1f}s after the restart; {'OK' if self.ok else 'FAILED'}"
        )


async def clickhouse_outage(
    s: Settings,
    server: Server,
    seconds: float,
    events: int,
    rate: float | None = None,
    how: str = "kill",
    seed: int = 11,
) -> OutageResult:
    """The server stopped for `seconds` while `events` are fed at `rate` (default:
    spread over three times the outage); see the module doc."""
    db = f"outage_{uuid.uuid4().hex[:8]}"
    s = isolated(
        s,
        "outage",
        clickhouse_url=server.url(db),
        clickhouse_database=db,
        sink_batch_size=2000,
        sink_batch_seconds=0.5,
        sink_retry_max_seconds=2.0,
    )
    rate = rate or max(events / (3 * seconds), 100.0)
    envelopes = traffic(s, events, seed)
    worker = WorkerRunner(create_app(s))
    sink = SinkRunner(s, progress_seconds=10)
    await worker.start()
    await sink.start()
    feed = asyncio.ensure_future(produce(s.bootstrap_servers(), envelopes, rate=rate))
    try:
        down = await _outage(worker, sink, server, seconds, how, started=time.monotonic())
        await feed
        await worker.wait_idle(3.0)
        await worker.stop()  # nothing more to store (idle ticks would add watermarks)
        await sink.wait_caught_up(600)
        caught_up = time.monotonic()
        lag_after = await sink.lag()
    finally:
        feed.cancel()
        await sink.stop()
        await worker.stop()
    db_ = connect(s)
    try:
        stored = stored_shape(db_)
        expected = topic_shape(await _topics(s))
        return OutageResult(
            how=how,
            events=len(envelopes),
            outage_seconds=down["seconds"],
            catch_up_seconds=caught_up - down["restarted"],
            consumed_during=down["consumed"],
            max_buffered=sink.stats.max_buffered,
            retries=sink.stats.retries,
            rows_written=sum(sink.stats.rows.values()),
            stored={k: len(v) for k, v in stored.items()},
            compared=compare_shapes(expected, stored),
            duplicates=stored_duplicates(db_),
            lag_after=lag_after,
            figures={
                "rate": rate,
                "sink_outages": sink.stats.outages,
                "raw_replayed_rows": raw_replayed(db_),
            },
        )
    finally:
        with contextlib.suppress(ClickHouseError):
            db_.execute("DROP DATABASE IF EXISTS {db}")
        db_.close()


async def _topics(s: Settings) -> dict[str, dict[str, str]]:
    out, _ = await outputs_of(s)
    return out


async def _outage(
    worker: WorkerRunner,
    sink: SinkRunner,
    server: Server,
    seconds: float,
    how: str,
    started: float,
) -> dict[str, Any]:
    """Wait for the sink to have written a few batches, stop the server for
    `seconds`, start it again."""

    async def some_stored() -> bool:
        worker._check_running()
        return sink.stats.batches >= 3 and time.monotonic() - started >= seconds / 2

    await until(some_stored, 300, "the sink to write its first batches")
    stats = worker.tally.stats
    consumed = sum(stats.consumed.values())
    t0 = time.monotonic()
    if how == "freeze":
        server.freeze(True)
    else:
        server.kill9()
    await asyncio.sleep(seconds)
    during = sum(stats.consumed.values()) - consumed
    if how == "freeze":
        server.freeze(False)
    else:
        await asyncio.to_thread(server.start)
    restarted = time.monotonic()
    return {"seconds": restarted - t0, "restarted": restarted, "consumed": during}


# ------------------------------------------------------- the broker restarted

# exact, against the reference (dead letters by what was refused: tally.chaos.deadletters)
COMPARED = ("breaks", "positions", "orders", "balances", "dead_letters")
COUNTED = ("status_queries",)  # which orders get one depends on the interleaving


@dataclass
class RestartResult:
    events: int
    fed_first: int  # inputs the first broker received before it stopped
    unprocessed_at_stop: int  # of them, not yet processed by the worker
    unstored_at_stop: dict[str, int]  # per output topic: held by the broker, not stored
    restored: str  # the restore's own report
    stored_after_first: dict[str, int]
    compared: Compared  # ClickHouse at the end vs the reference run
    counted: dict[str, tuple[int, int]]  # stored, reference
    seconds: float
    legs_only_missing: bool  # every stored posting leg sum is the reference's
    dead_letters_twice: int = 0  # refused on both brokers (fed twice): two ids, one message

    @property
    def ok(self) -> bool:
        c = self.compared
        return c.missing == 0 and c.extra == 0 and c.changed == 0

    def line(self) -> str:
        c = self.compared
        unstored = sum(self.unstored_at_stop.values())
        counted = ", ".join(f"{k} {a:,} (reference {b:,})" for k, (a, b) in self.counted.items())
        return (
            f"broker restart: {self.events:,} events, broker stopped after {self.fed_first:,} "
            f"({self.unprocessed_at_stop:,} not yet processed, {unstored:,} output messages "
            f"not yet stored); restored; every input fed again: against the reference "
            f"missing {c.missing}, extra {c.extra}, changed {c.changed}"
            + (f" ({c.brief()})" if c.count else "")
            + f"; {counted}; dead letters refused on both brokers {self.dead_letters_twice}; "
            + ("no stored posting leg wrong" if self.legs_only_missing else "a stored leg WRONG")
            + f"; {'OK' if self.ok else 'DIFFERENT'}"
        )


async def broker_restart(
    s: Settings,
    server: Server,
    events: int,
    rate: float,
    work: Path,
    cut: float = 0.6,
    seed: int = 23,
) -> RestartResult:
    """See the module doc. `s` names the broker of the reference run; `work` holds
    the two embedded brokers' logs and the children's."""
    t0 = time.monotonic()
    raw = generate(
        SimConfig(events=events, seed=seed, id_prefix=f"B{uuid.uuid4().hex[:6]}-"), s.policies()
    ).envelopes
    ref = isolated(s, "ref", idle_tick_seconds=NO_TICKS)
    await run_log(ref, retarget(raw, ref))
    ref_out = await _topics(ref)
    reference = topic_shape(ref_out)
    reference["dead_letters"] = deadletters.from_topic(ref_out["dead_letters"])
    db = f"restart_{uuid.uuid4().hex[:8]}"
    base = isolated(
        s,
        "restart",
        idle_tick_seconds=NO_TICKS,
        clickhouse_url=server.url(db),
        clickhouse_database=db,
    )
    n = int(len(raw) * cut)
    first = await _first_broker(base, retarget(raw, base)[:n], rate, work)
    second = EmbeddedBroker("127.0.0.1", free_port(), str(work))
    await asyncio.to_thread(second.start)
    try:
        s2 = base.model_copy(update={"broker": second.url})
        await ensure_topics(
            s2.bootstrap_servers(), [s2.topic_transactions, s2.topic_callbacks], s2.partitions
        )
        await produce(s2.bootstrap_servers(), retarget(raw, s2))
        restored = await asyncio.to_thread(_run_until_idle, s2, work / "second.log")
    finally:
        second.stop()
    db_ = connect(base)
    try:
        stored = stored_shape(db_)
        stored["dead_letters"], dead_rows = deadletters.stored(db_)
    finally:
        with contextlib.suppress(ClickHouseError):
            db_.execute("DROP DATABASE IF EXISTS {db}")
        db_.close()
    return RestartResult(
        events=len(raw),
        fed_first=n,
        unprocessed_at_stop=first["unprocessed"],
        unstored_at_stop=first["unstored"],
        restored=restored,
        stored_after_first=first["stored"],
        compared=compare_shapes(reference, stored, COMPARED),
        counted={k: (len(stored[k]), len(reference[k])) for k in COUNTED},
        seconds=time.monotonic() - t0,
        legs_only_missing=_only_missing(reference["positions"], stored["positions"]),
        dead_letters_twice=dead_rows - len(stored["dead_letters"]),
    )


def _only_missing(ref: dict[str, str], got: dict[str, str]) -> bool:
    """Whether each order's stored position is the reference's less some legs: what
    differs was lost, nothing is wrong or doubled."""
    for k, v in got.items():
        want = json.loads(ref.get(k, "{}"))
        if any(want.get(leg) != n for leg, n in json.loads(v).items()):
            return False
    return True


async def _first_broker(
    s: Settings, envelopes: list[Any], rate: float, work: Path
) -> dict[str, Any]:
    """`tally run` on a broker of its own, fed at `rate`; the broker stopped as soon
    as the last envelope is acknowledged (the worker and the sink mid-way)."""
    broker = EmbeddedBroker("127.0.0.1", free_port(), str(work))
    await asyncio.to_thread(broker.start)
    s = s.model_copy(update={"broker": broker.url})
    log_path = work / "first.log"
    run = child(["tally", "run"], settings_env(s), log_path)
    try:
        await until(lambda: _started(run, log_path), 180, "tally run to start")
        await produce(s.bootstrap_servers(), envelopes, rate=rate)
        unprocessed, unstored = await lags(s)
    finally:
        broker.stop()  # its memory is gone: inputs, outputs, changelogs, offsets
        await asyncio.to_thread(end_child, run, 60.0)
    db = connect(s)
    try:
        stored = {k: len(v) for k, v in stored_shape(db).items()}
    finally:
        db.close()
    return {"unprocessed": unprocessed, "unstored": unstored, "stored": stored}


async def _started(run: subprocess.Popen[bytes], path: Path) -> bool:
    text = path.read_text(errors="replace") if path.exists() else ""
    if run.poll() is not None:
        raise RuntimeError(f"tally run exited ({run.returncode}): {text[-2000:]}")
    return "tally workers running" in text


def _run_until_idle(s: Settings, log_path: Path) -> str:
    """`tally run --until-idle 5` (it restores from ClickHouse first); the restore's
    report line."""
    p = child(["tally", "run", "--until-idle", "5"], settings_env(s), log_path)
    try:
        p.wait(1800)
    finally:
        end_child(p, 10.0)
    text = log_path.read_text(errors="replace")
    if p.returncode != 0:
        raise RuntimeError(f"tally run on the fresh broker failed ({p.returncode}): {text[-2000:]}")
    return next((ln for ln in text.splitlines() if ln.startswith("restore")), "no restore report")
