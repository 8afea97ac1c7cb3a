"""Helpers for tests/streams/test_crash.py: worker processes of *this* tree on a fresh embedded
broker, killed with SIGKILL at random moments while they are busy, and the results
read back from ClickHouse (chDB) for comparison.

Built on tests/streams/test_scale.py (`Cluster`, `feed`, `drained`, `committed`): only the
worker environment (PYTHONPATH), the kill loop and the ClickHouse read-out are new.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from sinks.backend import Backend
from sinks.runner import SinkRunner
from streams.broker import ensure_topics
from streams.offsets import EndProbe
from tally.core.pipeline import Envelope
from tests.clickhouse import connect_to
from tests.streams.test_scale import APP, PARTITIONS, Cluster, Worker, drained, feed

ROOT = Path(__file__).resolve().parents[2]  # the tree whose code the workers run
EXTERNAL = ("payments.transactions", "payments.callbacks")  # what the test feeds


class CrashCluster(Cluster):
    """`tests.streams.test_scale.Cluster` whose workers import the code of this tree (cwd and
    PYTHONPATH = ROOT), not whatever tree is pip-installed in editable mode."""

    def env(self) -> dict[str, str]:
        env = super().env()
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + old if old else "")
        return env

    def code_of_workers(self) -> str:
        """Where a worker process's `streams` package comes from."""
        out = subprocess.run(
            [sys.executable, "-c", "import streams, tally; print(streams.__file__)"],
            env=self.env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return out.stdout.strip()

    def kill_workers(self) -> None:
        """SIGKILL every worker still alive (its whole process group)."""
        import contextlib
        import signal

        for w in self.workers:
            if w.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    w.proc.wait(10)

    def kill_all(self) -> None:
        """Teardown: every worker, then the broker."""
        self.kill_workers()
        self.broker.stop()


async def start_cluster(tmp: Path) -> CrashCluster:
    tmp.mkdir(parents=True, exist_ok=True)
    c = CrashCluster(tmp)
    await asyncio.to_thread(c.broker.start)
    return c


async def prefeed(c: Cluster, traffic: list[Envelope]) -> int:
    """All the input on the broker before the first worker starts (the workers then
    always have a backlog); returns the number of input messages."""
    await ensure_topics(c.broker.bootstrap, EXTERNAL, PARTITIONS)
    await feed(c.broker.bootstrap, traffic)
    return len(traffic)


class Progress:
    """The group's committed position in the fed input topics (the worker commits
    every second: its consumed position, a little behind), and their true end."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.group = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=APP, enable_auto_commit=False
        )
        self.probe = EndProbe(bootstrap)
        self.tps = [TopicPartition(t, p) for t in EXTERNAL for p in range(PARTITIONS)]

    async def __aenter__(self) -> Progress:
        await self.group.start()
        await self.probe.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.group.stop()
        await self.probe.stop()

    async def position(self) -> int:
        total = 0
        for tp in self.tps:
            off = await self.group.committed(tp)
            total += off or 0
        return total

    async def end(self) -> int:
        return sum((await self.probe.ends(self.tps)).values())


@dataclass
class Kill:
    n: int
    delay_s: float  # from the worker's first commit after its start to the kill
    start_pos: int  # committed position when the worker was started
    kill_pos: int  # committed position just before the kill
    end: int  # input end offset (sum over partitions)
    moved_s: float  # seconds since the position last moved, at the kill
    up_s: float  # the worker's life, start to kill

    @property
    def left(self) -> int:
        return self.end - self.kill_pos


@dataclass
class CrashRun:
    kills: list[Kill] = field(default_factory=list)
    seconds: float = 0.0


async def run_with_kills(
    c: CrashCluster,
    kills: int,
    rng: random.Random,
    timeout: float = 600.0,
    max_delay: float = 12.0,
) -> CrashRun:
    """Start a worker; once its committed position moves (recovered, rebalanced,
    processing), wait a random delay and SIGKILL it, provided it is still busy: its
    position moved since its start and within the last 15 s (a commit took up to 7 s on
    a loaded 2-core machine), and input is left.
    Restart it (same settings, same consumer group) and repeat `kills` times; then
    let the last worker drain the input.

    The delay (from the worker's first commit) is drawn from uniform(0.05, 0.9) x
    min(max_delay, estimated seconds of input left / kills left), the estimate from
    the rate this worker commits at, so that every kill lands before the input runs
    out however fast the worker is; a worker that turns out faster than that estimate
    is killed as soon as the input left would last its remaining kills a second each at
    the rate it has shown since."""
    out = CrashRun()
    t0 = time.monotonic()
    deadline = t0 + timeout
    async with Progress(c.broker.bootstrap) as prog:
        end = await prog.end()
        for n in range(1, kills + 1):
            start_pos = await prog.position()
            w = c.start_worker()
            started = time.monotonic()
            p1, t1 = await _moved(prog, w, start_pos, deadline)
            p2, t2 = await _moved(prog, w, p1, deadline)
            rate = (p2 - p1) / max(t2 - t1, 1e-3)
            budget = (end - p2) / max(rate, 1.0) / (kills - n + 1)
            delay = rng.uniform(0.05, 0.9) * min(budget, max_delay)
            last_pos, last_move = p2, t2
            until = t2 + delay
            while (now := time.monotonic()) < until:
                await asyncio.sleep(min(0.2, until - now))
                pos = await prog.position()
                if pos != last_pos:
                    last_pos, last_move = pos, time.monotonic()
                _check_alive(w)
                # a worker faster than its first commits said: kill before the input
                # left for this and the remaining kills would run out within a second
                now_rate = (pos - p2) / max(time.monotonic() - t2, 1e-3)
                if end - pos <= now_rate * (kills - n + 1):
                    break
            kill_pos = await prog.position()
            if kill_pos != last_pos:
                last_pos, last_move = kill_pos, time.monotonic()
            moved_s = time.monotonic() - last_move
            c.kill9(w)
            k = Kill(
                n=n,
                delay_s=round(time.monotonic() - t1, 2),
                start_pos=start_pos,
                kill_pos=kill_pos,
                end=end,
                moved_s=round(moved_s, 2),
                up_s=round(time.monotonic() - started, 2),
            )
            print(f"  kill {n}: {k}", flush=True)
            out.kills.append(k)
            assert kill_pos > start_pos, f"kill {n}: the worker had not processed anything: {k}"
            assert kill_pos < end and moved_s < 15, f"kill {n}: the worker was idle: {k}"
        w = c.start_worker()
        await drained(c, timeout=max(60.0, deadline - time.monotonic()))
        assert await prog.position() == end
        _check_alive(w)
    out.seconds = time.monotonic() - t0
    return out


async def _moved(prog: Progress, w: Worker, since: int, deadline: float) -> tuple[int, float]:
    """Until the committed position differs from `since`: (position, when)."""
    while True:
        pos = await prog.position()
        if pos != since:
            return pos, time.monotonic()
        _check_alive(w)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{w.name}: position stuck at {since}: {_tail(w)}")
        await asyncio.sleep(0.1)


def _check_alive(w: Worker) -> None:
    if not w.alive():
        raise RuntimeError(f"{w.name} exited with {w.proc.returncode}: {_tail(w)}")


def _tail(w: Worker) -> str:
    return w.log.read_text(errors="replace")[-3000:]


async def run_uninterrupted(c: CrashCluster, timeout: float = 600.0) -> float:
    t0 = time.monotonic()
    w = c.start_worker()
    await drained(c, timeout=timeout)
    _check_alive(w)
    return time.monotonic() - t0


# ------------------------------------------------------------------ ClickHouse


async def sink_into(c: Cluster, values: dict[str, Any]) -> None:
    """Everything on the output topics into ClickHouse through the sink."""
    s = c.settings.model_copy(update={**values, "metrics_port": 0})
    sink = SinkRunner(s)
    await sink.start()
    try:
        await sink.wait_caught_up(300)
    finally:
        await sink.stop()


# table -> the identity its ReplacingMergeTree collapses on (ORDER BY)
IDENTITY = {
    "breaks": "break_id",
    "postings": "(posting_id, account, bucket, component)",
    "order_states": "txn_id",
    "balances": "(account, currency, shard)",
    "status_queries": "query_id",
    "dead_letters": "dead_letter_id",
}

BALANCE_FIGURES = ("provisional", "confirmed", "gross", "refunds", "fees", "coupon_funding", "net")


def read_stored(db: Backend) -> dict[str, Any]:
    """A run's results as ClickHouse sees them after the sink's de-duplication."""
    from sinks import queries

    # an order's final position: the sum of its postings' legs
    positions: dict[str, set[tuple[Any, ...]]] = {}
    for r in db.query(
        "SELECT txn_id, account, bucket, component, currency, sum(amount_minor) AS n "
        "FROM {db}.postings FINAL GROUP BY txn_id, account, bucket, component, currency"
    ):
        if int(r["n"]):
            positions.setdefault(r["txn_id"], set()).add(
                (r["account"], r["bucket"], r["component"], r["currency"], int(r["n"]))
            )
    # every stored leg, by order, to show what differs
    rows: dict[str, list[tuple[Any, ...]]] = {}
    for r in db.query(
        "SELECT txn_id, posting_id, account, bucket, component, amount_minor "
        "FROM {db}.postings FINAL ORDER BY posting_id, account, bucket, component"
    ):
        rows.setdefault(r["txn_id"], []).append(
            (r["posting_id"], r["account"], r["bucket"], r["component"], int(r["amount_minor"]))
        )
    legs: dict[tuple[str, str, str, str], int] = {}
    for r in db.query(
        "SELECT account, bucket, component, currency, sum(amount_minor) AS n "
        "FROM {db}.postings FINAL GROUP BY account, bucket, component, currency"
    ):
        if int(r["n"]):
            legs[(r["account"], r["bucket"], r["component"], r["currency"])] = int(r["n"])
    # every posting whole: its legs sum to zero per bucket and currency
    unbalanced = {
        r["posting_id"]
        for r in db.query(
            "SELECT posting_id, bucket, currency, sum(amount_minor) AS n FROM {db}.postings "
            "FINAL GROUP BY posting_id, bucket, currency HAVING n != 0"
        )
    }
    orders = {
        r["txn_id"]: (
            r["our_status"],
            r["channel_status"],
            r["standing"],
            int(r["resolved"]),
            tuple(sorted(r["breaks"])),
        )
        for r in db.query(
            "SELECT txn_id, our_status, channel_status, standing, resolved, breaks "
            "FROM {db}.order_states FINAL"
        )
    }
    balances = {
        (r["account"], r["currency"]): tuple(str(r[k]) for k in BALANCE_FIGURES)
        for r in queries.balances(db)
    }
    duplicates = {}
    raw_rows = {}
    for table, key in IDENTITY.items():
        (r,) = db.query(f"SELECT count() AS n, uniqExact({key}) AS u FROM {{db}}.{table} FINAL")
        duplicates[table] = int(r["n"]) - int(r["u"])
        (r,) = db.query(f"SELECT count() AS n FROM {{db}}.{table}")
        raw_rows[table] = int(r["n"])
    return {
        "breaks": {
            (r["break_id"], r["kind"], r["txn_id"])
            for r in db.query("SELECT break_id, kind, txn_id FROM {db}.breaks FINAL")
        },
        "positions": positions,
        "legs": legs,
        "postings": {
            r["posting_id"] for r in db.query("SELECT DISTINCT posting_id FROM {db}.postings FINAL")
        },
        "unbalanced_postings": unbalanced,
        "posting_rows": rows,
        "orders": orders,
        "balances": balances,
        "queries": {
            r["query_id"] for r in db.query("SELECT query_id FROM {db}.status_queries FINAL")
        },
        "dead_letters": {
            r["dead_letter_id"]
            for r in db.query("SELECT dead_letter_id FROM {db}.dead_letters FINAL")
        },
        "duplicates": duplicates,
        "raw_rows": raw_rows,
    }


async def stored_results_of(c: Cluster, values: dict[str, Any]) -> dict[str, Any]:
    await sink_into(c, values)
    db = connect_to(values)
    try:
        return read_stored(db)
    finally:
        db.close()


def differences(a: Any, b: Any) -> tuple[int, Any]:
    """(number of ids that differ, a few examples) between two id-keyed results."""
    if isinstance(a, dict):
        keys = sorted((k for k in set(a) | set(b) if a.get(k) != b.get(k)), key=str)
        return len(keys), {k: (a.get(k), b.get(k)) for k in keys[:3]}
    only_a, only_b = sorted(a - b, key=str), sorted(b - a, key=str)
    return len(only_a) + len(only_b), {
        "only_reference": only_a[:3],
        "only_crashed": only_b[:3],
        "counts": (len(only_a), len(only_b)),
    }
