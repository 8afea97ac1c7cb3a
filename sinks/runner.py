"""The sink: output topics -> ClickHouse, in batches, with an exactly-once effect.

    runner = SinkRunner(settings)
    await runner.start()              # next to the Faust worker, same event loop
    await runner.wait_caught_up()     # everything on the topics so far is stored
    await runner.stop()

One aiokafka consumer in the group `<app_id>-sink` reads the six output topics
(order states, breaks, postings, balance snapshots, status queries, dead letters)
and two Faust table changelogs (watermarks and channel transaction claims, kept so
that a worker on a fresh broker can be restored: `sinks.restore`).

Delivery: offsets are committed (auto-commit off) only after ClickHouse has
acknowledged every insert of the batch that held them. A crash or a retry between
the insert and the commit replays the batch: every row has a stable identity
(break_id, posting_id + leg, query_id, dead_letter_id, txn_id + version, balance
shard + version) and the tables are ReplacingMergeTree, which the queries read with
FINAL, so a replayed row never shows twice in a result.

Backpressure: a batch is at most `TALLY_SINK_BATCH_SIZE` messages and is written at
least every `TALLY_SINK_BATCH_SECONDS`. While ClickHouse is unreachable the sink
retries that batch with exponential backoff (capped at `TALLY_SINK_RETRY_MAX_SECONDS`)
and reads nothing more: the backlog waits in Kafka, not in memory. The stream
workers are not affected. When ClickHouse answers again the sink catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from sinks import rows as R
from sinks.backend import Backend, ClickHouseError, ClickHouseUnavailable, connect
from sinks.metrics import SinkMetrics
from sinks.schema import migrate
from streams.broker import ensure_topics
from streams.exporter import serve
from streams.handles import changelog_topic
from streams.offsets import EndProbe
from tally.config import Settings

log = logging.getLogger("tally.sinks")


def sink_group(settings: Settings) -> str:
    return f"{settings.app_id}-sink"


def sink_tables(settings: Settings) -> dict[str, R.Table]:
    """Topic -> table, for every topic the sink reads."""
    s = settings
    return {
        s.topic_order_states: R.ORDER_STATES,
        s.topic_breaks: R.BREAKS,
        s.topic_postings: R.POSTINGS,
        s.topic_balances: R.BALANCES,
        s.topic_status_queries: R.STATUS_QUERIES,
        s.topic_dead_letter: R.DEAD_LETTERS,
        changelog_topic(s, "watermarks"): R.WATERMARKS,
        changelog_topic(s, "channel-txn-claims"): R.CLAIMS,
    }


def output_topics(settings: Settings) -> list[str]:
    s = settings
    return [
        s.topic_order_states,
        s.topic_breaks,
        s.topic_postings,
        s.topic_balances,
        s.topic_status_queries,
        s.topic_dead_letter,
    ]


@dataclass
class SinkStats:
    consumed: Counter[str] = field(default_factory=Counter)  # messages, by topic
    rows: Counter[str] = field(default_factory=Counter)  # rows inserted, by table
    bad: Counter[str] = field(default_factory=Counter)  # messages skipped, by topic
    batches: int = 0
    retries: int = 0
    outages: int = 0
    commit_failures: int = 0
    max_buffered: int = 0  # most messages ever held in memory at once
    buffered: int = 0
    unavailable_since: float | None = None
    last_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "consumed": sum(self.consumed.values()),
            "rows": dict(sorted(self.rows.items())),
            "bad_messages": dict(self.bad),
            "batches": self.batches,
            "retries": self.retries,
            "outages": self.outages,
            "commit_failures": self.commit_failures,
            "max_buffered": self.max_buffered,
        }


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, runner: SinkRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.runner._on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.debug("sink assigned %d partitions", len(assigned))


class SinkRunner:
    """Consume the output topics and write them to ClickHouse (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend | None = None,
        *,
        group_id: str | None = None,
        progress_seconds: float = 10.0,
    ) -> None:
        self.settings = settings
        self.group_id = group_id or sink_group(settings)
        self.db = backend or connect(settings)
        self.tables = sink_tables(settings)
        self.batch_size = settings.sink_batch_size
        self.batch_seconds = settings.sink_batch_seconds
        self.retry_max = settings.sink_retry_max_seconds
        self.progress_seconds = progress_seconds
        self.stats = SinkStats()
        self.metrics = SinkMetrics(self)
        self.consumer: AIOKafkaConsumer | None = None
        self._probe: EndProbe | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._migrated = asyncio.Event()
        self._lock = asyncio.Lock()  # the buffer: taken by the loop or a revocation
        self._generation = 0  # bumped when a rebalance drops the buffer
        self._reset_buffer()
        self.committed: dict[TopicPartition, int] = {}
        self._last_progress = time.monotonic()

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        s = self.settings
        await ensure_topics(s.bootstrap_servers(), output_topics(s), s.partitions)
        pattern = "^(" + "|".join(re.escape(t) for t in self.tables) + ")$"
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers(),
            group_id=self.group_id,
            client_id=f"{s.app_id}-sink",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=16 * 1024 * 1024,
            metadata_max_age_ms=5000,  # notice the changelog topics once Faust makes them
            session_timeout_ms=6000,  # a killed sink's partitions move on after this
            heartbeat_interval_ms=1000,
            max_poll_interval_ms=3_600_000,  # a long ClickHouse outage is not a dead consumer
        )
        await self.consumer.start()
        self._probe = EndProbe(s.bootstrap_servers())
        await self._probe.start()
        self.consumer.subscribe(pattern=pattern, listener=_Rebalance(self))
        self._stopping = False
        self._task = asyncio.ensure_future(self._run())
        if self.metrics.handle is None:
            self.metrics.handle = serve(self.metrics.registry, s.metrics_port, "sink")
        log.info("sink started: %s -> %s", ", ".join(self.tables), self.db.describe())

    async def stop(self, timeout: float = 15.0) -> None:
        """Write what is buffered if ClickHouse answers (one attempt), commit, stop."""
        self._stopping = True
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        for c in (self.consumer, self._probe):
            if c is not None:
                with contextlib.suppress(Exception):
                    await c.stop()
        self.consumer = None
        self._probe = None
        self.db.close()
        if self.metrics.handle is not None:
            self.metrics.handle.close()
            self.metrics.handle = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def _check_alive(self) -> None:
        if self._task is not None and self._task.done():
            exc = None if self._task.cancelled() else self._task.exception()
            raise RuntimeError(f"the sink stopped: {exc!r}")

    async def wait_caught_up(self, timeout: float | None = None, poll: float = 0.3) -> None:
        """Until every message on the sink's topics at the time of the call is in
        ClickHouse (inserted and its offset committed). Raises TimeoutError."""
        assert self.consumer is not None, "start() first"
        deadline = None if timeout is None else time.monotonic() + timeout
        ends = await self._end_offsets()
        while True:
            self._check_alive()
            behind = await self._behind(ends)
            if not behind:
                return
            if deadline is not None and time.monotonic() > deadline:
                lag = sum(behind.values())
                raise TimeoutError(
                    f"the sink has not caught up within {timeout:.0f}s: {lag:,} messages behind"
                    + (f" (ClickHouse: {self.stats.last_error})" if self.stats.last_error else "")
                )
            await asyncio.sleep(poll)

    async def lag(self) -> int:
        """Messages on the sink's topics not yet in ClickHouse."""
        return sum((await self._behind(await self._end_offsets())).values())

    async def _end_offsets(self) -> dict[TopicPartition, int]:
        assert self._probe is not None
        return await self._probe.ends(await self._probe.partitions(list(self.tables)))

    async def _behind(self, ends: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        assert self.consumer is not None
        behind: dict[TopicPartition, int] = {}
        for tp, end in ends.items():
            if end <= 0:
                continue
            done = self.committed.get(tp)
            if done is None or done < end:
                # maybe another sink worker of the group owns it, or we never read it
                with contextlib.suppress(KafkaError):
                    c = await self.consumer.committed(tp)
                    done = max(done or 0, c or 0)
            if (done or 0) < end:
                behind[tp] = end - (done or 0)
        return behind

    # ------------------------------------------------------------------ loop

    def _reset_buffer(self) -> None:
        # messages as read; turned into rows in the writer thread, off the event loop
        # the Faust worker shares
        self._raw: list[tuple[R.Table, Any]] = []  # (table, ConsumerRecord)
        self._offsets: dict[TopicPartition, int] = {}  # next offset to commit
        self._starts: dict[TopicPartition, int] = {}  # first offset held
        self._buffered = 0
        self._first_at: float | None = None
        self.stats.buffered = 0

    async def _run(self) -> None:
        await self._migrate()
        assert self.consumer is not None
        while not self._stopping:
            room = self.batch_size - self._buffered
            if room > 0:
                wait = self.batch_seconds
                if self._first_at is not None:
                    wait = max(0.0, self._first_at + self.batch_seconds - time.monotonic())
                data = await self.consumer.getmany(
                    timeout_ms=int(min(wait, 0.5) * 1000), max_records=room
                )
                if data:
                    async with self._lock:
                        self._take(data)
            due = self._first_at is not None and (
                self._buffered >= self.batch_size
                or time.monotonic() - self._first_at >= self.batch_seconds
            )
            if due:
                async with self._lock:
                    await self._flush(retry=True)
            self._progress()
        async with self._lock:
            if self._buffered:
                await self._flush(retry=False)

    async def _migrate(self) -> None:
        attempt = 0
        while not self._stopping:
            try:
                before, after = await asyncio.to_thread(migrate, self.db)
                if after != before:
                    log.warning("ClickHouse schema migrated from version %d to %d", before, after)
                self._recovered()
                self._migrated.set()
                return
            except ClickHouseError as exc:
                self.metrics.failed(
                    "unreachable" if isinstance(exc, ClickHouseUnavailable) else "failing"
                )
                attempt += 1
                await self._backoff(attempt, exc, "applying the schema")

    def _take(self, data: dict[TopicPartition, list[Any]]) -> None:
        for tp, msgs in data.items():
            table = self.tables[tp.topic]
            for m in msgs:
                self.stats.consumed[tp.topic] += 1
                self._raw.append((table, m))
                self._starts.setdefault(tp, m.offset)
                self._offsets[tp] = m.offset + 1
                self._buffered += 1
        if self._first_at is None and self._buffered:
            self._first_at = time.monotonic()
        self.stats.buffered = self._buffered
        self.stats.max_buffered = max(self.stats.max_buffered, self._buffered)

    def _rows(self, raw: list[tuple[R.Table, Any]]) -> dict[str, list[R.Row]]:
        out: dict[str, list[R.Row]] = {}
        for table, m in raw:
            try:
                rows, facts, problems = R.rows_with_facts(table, m.key, m.value, m.partition)
            except R.BadMessage as exc:
                self.stats.bad[m.topic] += 1
                log.error("sink skipped %s[%d]@%d: %s", m.topic, m.partition, m.offset, exc)
                continue
            out.setdefault(table.name, []).extend(rows)
            for fact_table, fact_rows in facts:  # an order's outputs, stored with its state
                out.setdefault(fact_table.name, []).extend(fact_rows)
            for problem in problems:
                self.stats.bad[m.topic] += 1
                log.error("sink skipped %s[%d]@%d: %s", m.topic, m.partition, m.offset, problem)
        return out

    def _insert_all(self, batch: dict[str, list[R.Row]]) -> None:
        for t in R.ALL:
            rows = batch.get(t.name)
            if rows:
                self.db.insert(t.name, t.columns, rows)

    async def _flush(self, retry: bool) -> bool:
        """Insert the buffer, then commit its offsets. Retries while ClickHouse is
        unreachable (reading nothing more meanwhile) unless `retry` is false or the
        sink is stopping. Returns whether the buffer was written."""
        if not self._buffered:
            return True
        generation = self._generation
        batch = await asyncio.to_thread(self._rows, self._raw)
        offsets = dict(self._offsets)
        held = self._buffered
        attempt = 0
        while True:
            try:
                t0 = time.monotonic()
                await asyncio.to_thread(self._insert_all, batch)
                self.metrics.batch_written(held, time.monotonic() - t0)
                break
            except ClickHouseError as exc:
                self.metrics.failed(
                    "unreachable" if isinstance(exc, ClickHouseUnavailable) else "failing"
                )
                if not retry or self._stopping:
                    log.warning(
                        "sink could not write %d messages (%s); they stay uncommitted in "
                        "Kafka and are read again",
                        held,
                        exc,
                    )
                    self._drop_uncommitted()
                    return False
                attempt += 1
                await self._backoff(attempt, exc, f"writing {held:,} messages")
                if generation != self._generation:  # a rebalance dropped this buffer
                    self._reset_buffer()
                    return False
        for name, rows in batch.items():
            self.stats.rows[name] += len(rows)
        self.stats.batches += 1
        if self.stats.batches == 1:
            log.info(
                "sink wrote its first batch: %d messages, rows %s", held, dict(self.stats.rows)
            )
        await self._commit(offsets)
        self._recovered(held)
        self._reset_buffer()
        return True

    def _drop_uncommitted(self) -> None:
        """Forget the buffer and rewind to its first messages (read again later)."""
        assert self.consumer is not None
        for tp, start in self._starts.items():
            with contextlib.suppress(Exception):
                if tp in self.consumer.assignment():
                    self.consumer.seek(tp, start)
        self._reset_buffer()

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert self.consumer is not None
        try:
            await self.consumer.commit(offsets)
            self.committed.update(offsets)
        except KafkaError as exc:
            # the rows are in ClickHouse; re-reading them later only rewrites the same rows
            self.stats.commit_failures += 1
            log.warning("sink offset commit failed (%s): the batch will be read again", exc)

    async def _backoff(self, attempt: int, exc: ClickHouseError, doing: str) -> None:
        self.stats.retries += 1
        self.metrics.retried()
        self.stats.last_error = str(exc)
        now = time.monotonic()
        if self.stats.unavailable_since is None:
            self.stats.unavailable_since = now
            self.stats.outages += 1
        delay = min(self.retry_max, 0.25 * 2 ** min(attempt, 20)) * (0.8 + 0.4 * random.random())
        kind = "unreachable" if isinstance(exc, ClickHouseUnavailable) else "failing"
        log.warning(
            "ClickHouse %s while %s (attempt %d, down %.0fs): %s; consumption paused, "
            "retrying in %.1fs",
            kind,
            doing,
            attempt,
            now - self.stats.unavailable_since,
            exc,
            delay,
        )
        t_end = time.monotonic() + delay
        while not self._stopping and time.monotonic() < t_end:
            await asyncio.sleep(min(0.2, t_end - time.monotonic()))

    def _recovered(self, held: int = 0) -> None:
        if self.stats.unavailable_since is not None:
            down = time.monotonic() - self.stats.unavailable_since
            log.warning(
                "ClickHouse is back after %.1fs: wrote %d held messages; catching up",
                down,
                held,
            )
            self.stats.unavailable_since = None
            self.stats.last_error = None

    def _progress(self) -> None:
        now = time.monotonic()
        if now - self._last_progress < self.progress_seconds:
            return
        self._last_progress = now
        log.info(
            "sink progress: %d messages read, %d batches, rows %s",
            sum(self.stats.consumed.values()),
            self.stats.batches,
            dict(self.stats.rows),
        )

    async def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Before partitions move to another sink worker: write what is buffered (one
        attempt) so the new owner starts from our committed offsets; if ClickHouse
        is down, drop the buffer (the new owner reads those messages again)."""
        if self._lock.locked():
            self._generation += 1  # the loop is writing: it abandons that buffer
            return
        async with self._lock:
            if self._buffered:
                await self._flush(retry=False)
            self._generation += 1
            self._reset_buffer()
