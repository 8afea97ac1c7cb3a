"""Worker processes of this tree on a fresh embedded broker: the machinery of the
crash storms (`tally.chaos.storm`) and of the scale-out tests.

A `Cluster` is a fresh embedded Tansu broker (memory only) and the `python -m tally
run --no-sink` worker processes of one consumer group, started with this tree's code
(cwd = the cluster's directory, PYTHONPATH = the tree `tally` is imported from) and
killed with SIGKILL (their whole process group) or stopped with SIGTERM. `feed`
produces simulated traffic at fixed partitions and returns where each message
landed; `committed`, `drained` and `Progress` follow the group's committed input
offsets against the true log ends (`streams.offsets`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.broker import EmbeddedBroker, ensure_topics
from streams.offsets import EndProbe, log_ends
from tally.config import Settings
from tally.core.pipeline import Envelope, partition_for

ROOT = Path(__file__).resolve().parents[2]  # the tree whose code the workers run
PARTITIONS = 4
APP = "tally"
EXTERNAL = ("payments.transactions", "payments.callbacks")  # what is fed
INPUTS = (*EXTERNAL, f"{APP}-links", f"{APP}-success-claims")  # what the group consumes
OUTPUTS = ("payments.breaks", "payments.postings", "payments.order-states", "payments.balances")

Position = tuple[str, int, int]  # (topic, partition, offset) of a fed message


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def feed(bootstrap: str, envelopes: list[Envelope]) -> list[Position]:
    """Every run gets the same messages at the same partitions and offsets: keyed
    ones by Kafka's partitioner, keyless ones (malformed input) round-robin, not at
    random, so that dead-letter ids (topic:partition:offset) agree between runs.
    Returns where each message landed, in the order of `envelopes`."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        futures = []
        for i, e in enumerate(envelopes):
            p = partition_for(e.key, PARTITIONS) if e.key is not None else i % PARTITIONS
            key = e.key.encode() if e.key is not None else None
            futures.append(await producer.send(e.topic, e.value_bytes(), key=key, partition=p))
        sent = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(m.topic, m.partition, m.offset) for m in sent]


# ----------------------------------------------------------------- the workers

_ASSIGNED = re.compile(r"Setting newly assigned partitions (\{.*\}) for group")
_TP = re.compile(r"TopicPartition\(topic='([^']+)', partition=(\d+)\)")
_READY = "[^---Recovery]: Worker ready"
_GAVE_UP = "the worker was not ready within"
_MARKS = {
    "Revoking previously assigned partitions": "rejoining",
    "Setting newly assigned partitions": "restoring",
    _READY: "ready",
}
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", re.M)
_STAMP_FORMAT = "%Y-%m-%d %H:%M:%S,%f"


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.monotonic)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def assigned(self) -> set[int] | None:
        """Input partitions of its latest assignment, once that is recovered and
        running ("Worker ready" after it); None while rebalancing."""
        text = self.text()
        found = list(_ASSIGNED.finditer(text))
        if not found or "Worker ready" not in text[found[-1].end() :]:
            return None
        return {int(p) for t, p in _TP.findall(found[-1].group(1)) if t == EXTERNAL[0]}

    def phase(self) -> str:
        """What its log says it is doing: starting (not in the group yet), rejoining
        (waiting for the group's assignment), restoring (assigned: recovering its
        tables from their changelogs, seeking), ready (running)."""
        text = self.text()
        at = {name: text.rfind(mark) for mark, name in _MARKS.items()}
        latest = max(at, key=lambda k: at[k])
        return latest if at[latest] >= 0 else "starting"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def restore_seconds(self) -> float | None:
        """From its latest assignment to "Worker ready", by the log's timestamps."""
        text = self.text()
        a = text.rfind("Setting newly assigned partitions")
        r = text.find(_READY, a)
        if a < 0 or r < 0:
            return None
        stamps = [m for m in _STAMP.finditer(text) if m.start() <= r]
        at_a = [m for m in stamps if m.start() <= a]
        if not at_a:
            return None
        t0 = datetime.strptime(at_a[-1].group(1), _STAMP_FORMAT)
        return (datetime.strptime(stamps[-1].group(1), _STAMP_FORMAT) - t0).total_seconds()

    def tail(self, n: int = 3000) -> str:
        return self.text()[-n:]

    def failed(self) -> str | None:
        """Why it stopped working by itself: it exited (not by SIGKILL), or it gave up
        waiting for its recovery (`streams.worker.WorkerRunner.start`), whether or not
        it exited after that."""
        if _GAVE_UP in self.text():
            state = "still running" if self.alive() else f"exited {self.proc.returncode}"
            return f"{self.name} gave up its start ('{_GAVE_UP} ...', {state})"
        if not self.alive() and self.proc.returncode != -signal.SIGKILL:
            return f"{self.name} exited by itself with {self.proc.returncode}"
        return None

    def check_alive(self) -> None:
        reason = self.failed()
        if reason is not None:
            raise WorkerFailed(self, reason)
        if not self.alive():
            raise RuntimeError(f"{self.name} was killed")


class WorkerFailed(RuntimeError):
    """A worker stopped working by itself (`Worker.failed`): a finding, not a kill."""

    def __init__(self, worker: Worker, reason: str) -> None:
        super().__init__(f"{reason}: {worker.tail()}")
        self.worker = worker
        self.reason = reason


@dataclass
class Cluster:
    """A fresh embedded broker and N worker processes of one consumer group."""

    tmp: Path
    broker: EmbeddedBroker = field(init=False)
    workers: list[Worker] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.broker = EmbeddedBroker("127.0.0.1", free_port(), str(self.tmp))

    @property
    def settings(self) -> Settings:
        return Settings(_env_file=None, broker=self.broker.url, app_id=APP)

    def env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
        old = base.get("PYTHONPATH")
        return {
            **base,
            "PYTHONPATH": str(ROOT) + (os.pathsep + old if old else ""),
            "TALLY_BROKER": self.broker.url,
            "TALLY_APP_ID": APP,
            "TALLY_PARTITIONS": str(PARTITIONS),
            "TALLY_WEB_PORT": "0",  # several workers on one host
            "TALLY_METRICS_PORT": "0",
            "TALLY_IDLE_TICK_SECONDS": "3600",  # event time only: results are comparable
            "TALLY_LOG_LEVEL": "info",
            "TALLY_DATA_DIR": str(self.tmp),
        }

    def code_of_workers(self) -> str:
        """Where a worker process's `streams` package comes from."""
        out = subprocess.run(
            [sys.executable, "-c", "import streams, tally; print(streams.__file__)"],
            env=self.env(),
            cwd=self.tmp,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return out.stdout.strip()

    def start_worker(self) -> Worker:
        name = f"w{len(self.workers)}"
        log = self.tmp / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tally", "run", "--no-sink"],
                env=self.env(),
                cwd=self.tmp,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        w = Worker(name, proc, log)
        self.workers.append(w)
        return w

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.alive()]

    async def balanced(self, timeout: float = 90.0) -> dict[str, set[int]]:
        """Until the live workers share every input partition, each recovered."""
        deadline = time.monotonic() + timeout
        while True:
            live = self.live()
            got = {w.name: w.assigned() for w in live}
            parts = [p for p in got.values() if p is not None]
            if len(parts) == len(live) and sorted(x for p in parts for x in p) == list(
                range(PARTITIONS)
            ):
                return {k: v for k, v in got.items() if v is not None}
            for w in self.workers:
                if (reason := w.failed()) is not None:
                    raise WorkerFailed(w, reason)
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers not balanced within {timeout}s: {got}")
            await asyncio.sleep(0.5)

    def kill9(self, w: Worker) -> None:
        os.killpg(w.proc.pid, signal.SIGKILL)
        w.proc.wait(10)

    def kill_workers(self) -> None:
        """SIGKILL every worker still alive (its whole process group)."""
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

    def stop(self) -> None:
        """SIGTERM to every worker (SIGKILL after 30 s), then the broker."""
        for w in self.live():
            os.killpg(w.proc.pid, signal.SIGTERM)
        for w in self.workers:
            try:
                w.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(w.proc.pid, signal.SIGKILL)
                w.proc.wait(10)
        self.broker.stop()


async def start_cluster(tmp: Path) -> Cluster:
    tmp.mkdir(parents=True, exist_ok=True)
    c = Cluster(tmp)
    await asyncio.to_thread(c.broker.start)
    return c


async def prefeed(c: Cluster, traffic: list[Envelope]) -> list[Position]:
    """All the input on the broker before the first worker starts (the workers then
    always have a backlog); returns where each message landed."""
    await ensure_topics(c.broker.bootstrap, EXTERNAL, PARTITIONS)
    return await feed(c.broker.bootstrap, traffic)


# --------------------------------------------------------------- the offsets


async def committed(bootstrap: str, topics: tuple[str, ...] = INPUTS) -> dict[Any, int]:
    """The group's committed offset per (topic, partition) of `topics`, where one is."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=APP, enable_auto_commit=False)
    await c.start()
    try:
        out = {}
        for t in topics:
            for p in range(PARTITIONS):
                off = await c.committed(TopicPartition(t, p))
                if off is not None:
                    out[(t, p)] = off
        return out
    finally:
        await c.stop()


async def offsets_at_end(bootstrap: str) -> tuple[int, int, dict[Any, tuple[Any, int]]]:
    """(input partitions whose committed offset is their true log end, input
    partitions, the others with (committed, end))."""
    ends = {
        (tp.topic, tp.partition): o for tp, o in (await log_ends(bootstrap, list(INPUTS))).items()
    }
    done = await committed(bootstrap)
    behind = {tp: (done.get(tp), end) for tp, end in ends.items() if done.get(tp, 0) != end}
    return len(ends) - len(behind), len(ends), behind


async def drained(
    c: Cluster, timeout: float = 180.0, check: Callable[[], None] | None = None
) -> None:
    """Until the group has committed every input partition to its true end and the
    output topics stopped growing (two polls alike); `check` is called every poll."""
    bootstrap = c.broker.bootstrap
    deadline = time.monotonic() + timeout
    last: dict[Any, int] | None = None
    while True:
        await asyncio.sleep(1.5)
        if check is not None:
            check()
        _, _, behind = await offsets_at_end(bootstrap)
        outs = {
            (tp.topic, tp.partition): o
            for tp, o in (await log_ends(bootstrap, list(OUTPUTS))).items()
        }
        if not behind and outs == last:
            return
        last = outs
        if time.monotonic() > deadline:
            raise TimeoutError(f"not drained within {timeout}s; behind: {behind}")


class Progress:
    """The group's committed position in the fed input topics (the worker commits
    after each batch: its consumed position, a little behind), and their true end."""

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
