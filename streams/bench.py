"""Benchmarks: `tally bench core` (the pure domain core, no broker) and
`tally bench stream` (the Faust workers on a broker, all checks on).

Stream throughput: all events are produced first, then one worker is started and
timed from its first consumed message to its last (input + internal topics).
Latency: a fresh run fed at a fixed rate while the worker runs; event-to-break
latency is the break's detection time minus the broker timestamp of the message
that revealed it.
"""

from __future__ import annotations

import asyncio
import os
import platform
import time
import uuid
from dataclasses import dataclass
from typing import Any

from streams.app import create_app
from streams.produce import produce
from streams.worker import WorkerRunner, percentiles
from tally.config import Settings
from tally.pipeline import TRANSACTIONS, Envelope, LocalPipeline


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


def bench_core(envelopes: list[Envelope], partitions: int = 4) -> BenchResult:
    pipe = LocalPipeline(partitions=partitions)
    raw = [(e.topic, e.key, e.value_bytes()) for e in envelopes]
    t0 = time.perf_counter()
    for topic, key, value in raw:
        pipe.feed(topic, key, value)
    dt = time.perf_counter() - t0
    return BenchResult(
        "core", len(raw), dt, {"breaks": len(pipe.breaks), "postings": len(pipe.postings)}
    )


def _isolated(s: Settings) -> Settings:
    """Fresh topics and consumer group, so runs do not see each other's data."""
    run = uuid.uuid4().hex[:6]
    return s.model_copy(
        update={
            "app_id": f"tally-bench-{run}",
            "topic_transactions": f"bench{run}.transactions",
            "topic_callbacks": f"bench{run}.callbacks",
            "topic_breaks": f"bench{run}.breaks",
            "topic_postings": f"bench{run}.postings",
            "topic_status_queries": f"bench{run}.status-queries",
            "topic_dead_letter": f"bench{run}.dead-letter",
            "topic_order_states": f"bench{run}.order-states",
            "topic_balances": f"bench{run}.balances",
            "web_port": 0,
        }
    )


def _retarget(envelopes: list[Envelope], s: Settings) -> list[Envelope]:
    return [
        Envelope(
            s.topic_transactions if e.topic == TRANSACTIONS else s.topic_callbacks, e.key, e.value
        )
        for e in envelopes
    ]


async def bench_stream_throughput(s: Settings, envelopes: list[Envelope]) -> BenchResult:
    s = _isolated(s)
    tally = create_app(s)
    runner = WorkerRunner(tally)
    from streams.broker import ensure_topics

    await ensure_topics(s.bootstrap_servers(), tally.all_topics, s.partitions)
    await produce(s.bootstrap_servers(), _retarget(envelopes, s))
    await runner.start()
    t0 = time.monotonic()
    try:
        await runner.wait_idle(2.0)
    finally:
        await runner.stop()
    stats = tally.stats
    first = t0
    seconds = max(stats.last_activity - first, 1e-3)
    inputs = stats.consumed[s.topic_transactions] + stats.consumed[s.topic_callbacks]
    return BenchResult(
        "stream-throughput",
        inputs,
        seconds,
        {
            "internal_messages": sum(stats.consumed.values()) - inputs,
            "breaks": sum(stats.breaks.values()),
            "breaks_by_kind": dict(stats.breaks),
            "dead_letters": sum(stats.dead_letters.values()),
            "partitions": s.partitions,
            "note": "includes worker start-up and rebalance (about 3 s)",
        },
    )


async def bench_stream_latency(s: Settings, envelopes: list[Envelope], rate: float) -> BenchResult:
    s = _isolated(s)
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
    return BenchResult(
        "stream-latency",
        len(envelopes),
        fed,
        {
            "offered_rate": rate,
            "achieved_feed_rate": round(len(envelopes) / fed, 1),
            "drained_after_seconds": round(tally.stats.last_activity - t0, 2),
            "breaks_sampled": len(tally.stats.latencies_ms),
            "latency_ms_p50": round(lat.get("p50", 0.0), 1),
            "latency_ms_p99": round(lat.get("p99", 0.0), 1),
        },
    )


def run_stream_bench(
    s: Settings, envelopes: list[Envelope], rate: float, latency_events: int
) -> list[BenchResult]:
    out = [asyncio.run(bench_stream_throughput(s, envelopes))]
    out.append(asyncio.run(bench_stream_latency(s, envelopes[:latency_events], rate)))
    return out
