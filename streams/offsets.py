"""Where a topic-partition really ends.

Kafka's ListOffsets(latest) answers the log end offset. The embedded Tansu broker
answers the base offset of the *last record batch* + 1 instead: after one produce
request carrying records 0..9 it reports 1, not 10 (its Fetch responses carry the
right high watermark). `log_ends` asks ListOffsets, then reads the last batch of
every non-empty partition to find the true end; on Apache Kafka the two agree.

The same Tansu behaviour cut Faust's changelog recovery short: Faust reads a
changelog up to the ListOffsets answer and leaves the rest of the last batch
unapplied, so a worker taking a partition over missed the last updates of some
orders and balances. `recover_to_true_log_ends()` (installed by
`streams.app.create_app`) makes Faust ask `EndProbe` instead; on Apache Kafka that
is the same answer, one fetch later. (`sinks.restore` also ends every changelog
partition with a batch of one record, for Faust versions this cannot patch.)
"""

from __future__ import annotations

import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition


class EndProbe:
    """A group-less consumer that finds true log end offsets (see the module doc)."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
        )
        await self.consumer.start()

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None

    async def partitions(self, topics: list[str]) -> list[TopicPartition]:
        assert self.consumer is not None
        existing = await self.consumer.topics()
        tps: list[TopicPartition] = []
        for t in topics:
            if t in existing:
                tps += [TopicPartition(t, p) for p in self.consumer.partitions_for_topic(t) or ()]
        return tps

    async def ends(
        self, tps: list[TopicPartition], timeout: float = 5.0
    ) -> dict[TopicPartition, int]:
        assert self.consumer is not None
        c = self.consumer
        if not tps:
            return {}
        listed: dict[TopicPartition, int] = await c.end_offsets(tps)
        out = dict(listed)
        todo = {tp: off for tp, off in listed.items() if off > 0}
        if not todo:
            return out
        c.assign(list(todo))
        for tp, off in todo.items():
            c.seek(tp, off - 1)  # the last batch starts there (Tansu) or is that record
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            batch = await c.getmany(*todo, timeout_ms=200)
            for tp, msgs in batch.items():
                hw = c.highwater(tp)
                last = msgs[-1].offset + 1 if msgs else 0
                out[tp] = max(out[tp], last, hw or 0)
                if msgs:
                    todo.pop(tp, None)
        if todo:
            raise TimeoutError(f"could not read the last batch of {sorted(map(str, todo))}")
        return out


async def log_ends(bootstrap: str, topics: list[str]) -> dict[TopicPartition, int]:
    """True end offsets of every partition of `topics` (missing topics are left out)."""
    probe = EndProbe(bootstrap)
    await probe.start()
    try:
        return await probe.ends(await probe.partitions(topics))
    finally:
        await probe.stop()


async def first_offset_from(
    bootstrap: str, topic: str, partition: int, offset: int, timeout: float = 5.0
) -> int | None:
    """The offset of the first message at or after `offset` in a topic-partition
    (None: none arrived within `timeout`). Offsets that hold no message (transaction
    markers, compacted records) are skipped by a fetch, as by any consumer."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await c.start()
    try:
        tp = TopicPartition(topic, partition)
        c.assign([tp])
        c.seek(tp, offset)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await c.getmany(tp, timeout_ms=200, max_records=1)
            for msgs in batch.values():
                if msgs:
                    return int(msgs[0].offset)
        return None
    finally:
        await c.stop()


async def read_to_end(bootstrap: str, topic: str, timeout: float = 60.0) -> list[Any]:
    """Every record of `topic` from the beginning to its true end (see `log_ends`), in
    partition order. (`streams.worker.read_topic` stops at the ListOffsets answer,
    which on Tansu can leave out the last batch of a partition.)"""
    ends = {tp: off for tp, off in (await log_ends(bootstrap, [topic])).items() if off > 0}
    if not ends:
        return []
    c = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
    )
    await c.start()
    out: dict[TopicPartition, list[Any]] = {tp: [] for tp in ends}
    try:
        c.assign(list(ends))
        await c.seek_to_beginning(*ends)
        todo = dict(ends)
        deadline = time.monotonic() + timeout
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: could not read to the end within {timeout}s")
            batch = await c.getmany(*todo, timeout_ms=500, max_records=20_000)
            for tp, msgs in batch.items():
                end = ends[tp]
                out[tp] += [m for m in msgs if m.offset < end]
                if msgs and msgs[-1].offset + 1 >= end:
                    todo.pop(tp, None)
    finally:
        await c.stop()
    return [m for tp in sorted(out, key=lambda t: t.partition) for m in out[tp]]


_PATCHED = False


def recover_to_true_log_ends() -> None:
    """Make Faust's end-offset lookup (used to know where a changelog's recovery
    ends) return true log ends (`EndProbe`), outside transactions. Idempotent; if the
    probe fails, Faust's own answer is used."""
    global _PATCHED
    if _PATCHED:
        return
    from faust.transport.drivers import aiokafka as driver

    thread = driver.AIOKafkaConsumerThread
    original = thread._highwaters

    async def _highwaters(self: Any, partitions: list[Any]) -> Any:
        consumer = self._ensure_consumer()
        if self.consumer.in_transaction or not partitions:
            return await original(self, partitions)
        probe = EndProbe(consumer._client._bootstrap_servers)
        try:
            await probe.start()
            ends = await probe.ends([TopicPartition(tp.topic, tp.partition) for tp in partitions])
            return {tp: ends[TopicPartition(tp.topic, tp.partition)] for tp in partitions}
        except Exception as exc:  # never worse than Faust's own lookup
            import logging

            logging.getLogger(__name__).warning(
                "true log ends unavailable (%s); using ListOffsets", exc
            )
            return await original(self, partitions)
        finally:
            await probe.stop()

    thread._highwaters = _highwaters  # type: ignore[method-assign]
    _PATCHED = True
