"""One worker in this process: (a) a bare Faust agent, (b) tally, (c) latency at a
fixed offered rate, next to a plain aiokafka consumer's (`streams.bench`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, cast

import faust
from aiokafka import AIOKafkaConsumer

from streams.app import create_app
from streams.bench.common import (
    Meter,
    _isolated,
    _r,
    _retarget,
    batch_max_events,
    batch_max_ms,
)
from streams.broker import ensure_topics
from streams.handles import Tally
from streams.offsets import log_ends, read_to_end
from streams.produce import produce
from streams.worker import WorkerRunner, percentiles
from tally.config import Settings
from tally.core.pipeline import Envelope

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
