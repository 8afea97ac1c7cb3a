"""Producing envelopes to the broker with Kafka's default (murmur2) partitioner, so
that every message of one order lands on the partition its table lives on."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterable

from aiokafka import AIOKafkaProducer

from tally.core.pipeline import Envelope


async def produce(
    bootstrap: str,
    envelopes: Iterable[Envelope] | AsyncIterator[Envelope],
    *,
    topic: str | None = None,
    rate: float | None = None,
    progress: bool = False,
    total: int | None = None,
    max_request_size: int = 4 * 1024 * 1024,
) -> int:
    """Send envelopes (optionally all to `topic`), at most `rate` per second."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=5,
        max_batch_size=256 * 1024,
        max_request_size=max_request_size,
        acks="all",
        enable_idempotence=False,
    )
    await producer.start()
    sent = 0
    t0 = time.monotonic()
    pending: list[asyncio.Future[object]] = []
    try:
        async for env in _aiter(envelopes):
            key = env.key.encode() if env.key is not None else None
            fut = await producer.send(topic or env.topic, env.value_bytes(), key=key)
            pending.append(fut)
            sent += 1
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
            if rate:
                ahead = sent / rate - (time.monotonic() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            if progress and sent % 10000 == 0:
                _bar(sent, total, t0)
        await asyncio.gather(*pending)
        await producer.flush()
    finally:
        await producer.stop()
    if progress:
        _bar(sent, total, t0, end=True)
    return sent


async def _aiter(
    source: Iterable[Envelope] | AsyncIterator[Envelope],
) -> AsyncIterator[Envelope]:
    if isinstance(source, AsyncIterator):
        async for e in source:
            yield e
    else:
        for i, e in enumerate(source):
            if i % 2000 == 0:
                await asyncio.sleep(0)
            yield e


def _bar(done: int, total: int | None, t0: float, end: bool = False) -> None:
    rate = done / max(time.monotonic() - t0, 1e-6)
    if total:
        width = 30
        filled = int(width * done / total)
        line = (
            f"\rproducing [{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,} "
            f"({rate:,.0f}/s)"
        )
    else:
        line = f"\rproduced {done:,} ({rate:,.0f}/s)"
    sys.stderr.write(line + ("\n" if end else ""))
    sys.stderr.flush()
