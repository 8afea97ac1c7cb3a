"""Running the workers in-process: start the Faust worker on an asyncio loop, detect
"drained and quiet" for `--until-idle`, stop cleanly, and summarise the run from the
output topics (so the summary is right however many workers took part)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP

from streams.broker import ensure_topics
from streams.handles import Tally
from tally.core.ledger import BalanceBook, Posting

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    seconds: float = 0.0
    events_in: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    breaks_by_kind: dict[str, int] = field(default_factory=dict)
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)
    status_queries: int = 0
    postings: int = 0
    top_balances: list[dict[str, Any]] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)
    invariant_holds: bool = True

    @property
    def events(self) -> int:
        return sum(self.events_in.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 2),
            "events": self.events,
            "events_in": self.events_in,
            "events_per_second": round(self.events / self.seconds, 1) if self.seconds else 0,
            "duplicates_ignored": self.duplicates,
            "breaks": sum(self.breaks_by_kind.values()),
            "breaks_by_kind": self.breaks_by_kind,
            "dead_letters": sum(self.dead_letters_by_reason.values()),
            "dead_letters_by_reason": self.dead_letters_by_reason,
            "status_queries": self.status_queries,
            "postings": self.postings,
            "invariant_holds": self.invariant_holds,
            "latency_ms": self.latency_ms,
            "top_balances": self.top_balances,
        }

    def render(self) -> str:
        lines = [
            f"processed {self.events:,} events in {self.seconds:.1f}s "
            f"({self.events / self.seconds if self.seconds else 0:,.0f}/s); "
            f"{self.duplicates:,} duplicate deliveries ignored",
            f"breaks: {sum(self.breaks_by_kind.values()):,}",
        ]
        lines += [f"  {k:<24}{v:>8,}" for k, v in sorted(self.breaks_by_kind.items())]
        lines.append(f"dead letters: {sum(self.dead_letters_by_reason.values()):,}")
        lines += [f"  {k:<24}{v:>8,}" for k, v in sorted(self.dead_letters_by_reason.items())]
        lines.append(f"status queries requested: {self.status_queries:,}")
        lines.append(
            f"postings: {self.postings:,}  (double-entry invariant "
            f"{'holds' if self.invariant_holds else 'BROKEN'})"
        )
        if self.latency_ms:
            lines.append(
                "event-to-break latency: "
                + ", ".join(f"{k} {v:,.0f} ms" for k, v in self.latency_ms.items())
            )
        if self.top_balances:
            lines.append("top balances (confirmed / provisional):")
            for b in self.top_balances:
                lines.append(
                    f"  {b['account']:<22}{b['currency']:<5}"
                    f"{b['confirmed']:>16}{b['provisional']:>16}"
                )
        return "\n".join(lines)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    if len(values) == 1:
        return {"p50": values[0], "p99": values[0]}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": q[49], "p99": q[98]}


async def end_offsets(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps: list[TopicPartition] = []
        for t in topics:
            parts = consumer.partitions_for_topic(t)
            if parts is None:
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(t) or set()
            tps += [TopicPartition(t, p) for p in parts]
        ends = await consumer.end_offsets(tps) if tps else {}
        return {(tp.topic, tp.partition): off for tp, off in ends.items()}
    finally:
        await consumer.stop()


async def read_topic(bootstrap: str, topic: str, idle_ms: int = 1500) -> list[Any]:
    """Every message of a topic from the beginning to its current end, as JSON."""
    ends = await end_offsets(bootstrap, [topic])
    targets = {TopicPartition(t, p): off for (t, p), off in ends.items() if off > 0}
    out: list[Any] = []
    if not targets:
        return out
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
    )
    await consumer.start()
    try:
        consumer.assign(list(targets))
        await consumer.seek_to_beginning(*targets)
        remaining = dict(targets)
        while remaining:
            batch = await consumer.getmany(timeout_ms=idle_ms, max_records=10000)
            if not batch:
                break
            for tp, msgs in batch.items():
                for m in msgs:
                    out.append(json.loads(m.value))
                if msgs and msgs[-1].offset + 1 >= remaining.get(tp, 0):
                    remaining.pop(tp, None)
    finally:
        await consumer.stop()
    return out


async def summarize(tally: Tally, seconds: float, top: int = 8) -> RunSummary:
    s = tally.settings
    bootstrap = s.bootstrap_servers()
    breaks = await read_topic(bootstrap, s.topic_breaks)
    dead = await read_topic(bootstrap, s.topic_dead_letter)
    queries = await read_topic(bootstrap, s.topic_status_queries)
    postings = await read_topic(bootstrap, s.topic_postings)
    by_kind: Counter[str] = Counter()
    for b in {b["break_id"]: b for b in breaks}.values():
        by_kind[b["kind"]] += 1
    dl: Counter[str] = Counter()
    for d in {d["dead_letter_id"]: d for d in dead}.values():
        dl[d["code"]] += 1
    book = BalanceBook()
    for p in postings:
        book.apply(Posting.from_json(p))
    try:
        book.check()
        holds = True
    except AssertionError:
        holds = False
    ranked = sorted(
        (b for b in book.balances.values() if b.kind in ("merchant", "channel")),
        key=lambda b: (b.kind != "channel", -abs(b.total())),
    )
    stats = tally.stats
    return RunSummary(
        seconds=seconds,
        events_in={
            k: v
            for k, v in stats.consumed.items()
            if k in (s.topic_transactions, s.topic_callbacks)
        },
        duplicates=stats.duplicates,
        breaks_by_kind=dict(sorted(by_kind.items())),
        dead_letters_by_reason=dict(sorted(dl.items())),
        status_queries=len({q["query_id"] for q in queries}),
        postings=len(book.applied),
        top_balances=[b.summary() for b in ranked[:top]],
        latency_ms=percentiles(stats.latencies_ms),
        invariant_holds=holds,
    )


class WorkerRunner:
    """Start/stop a Faust worker inside the current asyncio loop."""

    def __init__(self, tally: Tally, loglevel: str | None = None) -> None:
        self.tally = tally
        self.loglevel = loglevel or tally.settings.log_level
        self.worker: faust.Worker | None = None
        self._task: asyncio.Task[Any] | None = None
        self.started_at = 0.0

    async def start(self, ready_timeout: float = 60.0) -> None:
        s = self.tally.settings
        await ensure_topics(s.bootstrap_servers(), self.tally.all_topics, s.partitions)
        self.worker = faust.Worker(
            self.tally.app,
            loglevel=self.loglevel,
            quiet=True,
            redirect_stdouts=False,
            override_logging=False,
            loop=asyncio.get_running_loop(),
        )
        self.worker.spinner = None  # no terminal spinner: our output is the summary
        self.started_at = time.monotonic()
        self._task = asyncio.ensure_future(self.worker.start())
        try:
            await self.wait_ready(ready_timeout)
        except BaseException:
            await self.stop()  # a start given up leaves no worker behind: the process can exit
            raise

    async def wait_ready(self, timeout: float) -> None:
        """Until the worker has its partitions and has restored its tables. Gives up
        after `timeout` seconds **without progress**: a recovery that is still reading
        its changelogs (a large state after a restart) is waited for."""
        app = self.tally.app
        deadline = time.monotonic() + timeout
        remaining: int | None = None
        while time.monotonic() < deadline:
            if self._task is not None and self._task.done():
                exc = self._task.exception()
                raise RuntimeError(f"the worker stopped while starting: {exc!r}")
            with contextlib.suppress(Exception):
                if (
                    app.consumer.assignment()
                    and not app.rebalancing
                    and app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
                ):
                    return
            now = _recovery_remaining(app)
            if now is not None and remaining is not None and now < remaining:
                deadline = time.monotonic() + timeout  # still restoring: moving on
            remaining = now
            await asyncio.sleep(0.2)
        raise TimeoutError(f"the worker was not ready within {timeout:.0f}s without progress")

    async def wait_idle(self, quiet_seconds: float, poll: float = 0.5) -> None:
        """Until every input topic is consumed to its end and nothing arrived for
        `quiet_seconds`."""
        s = self.tally.settings
        stats = self.tally.stats
        topics = self.tally.input_topics
        assigned: set[tuple[str, int]] = set()
        while True:
            await asyncio.sleep(poll)
            self._check_running()
            if time.monotonic() - stats.last_activity < quiet_seconds:
                continue
            assigned = {
                (tp.topic, tp.partition) for tp in self.tally.app.assignor.assigned_actives()
            }
            ends = await end_offsets(s.bootstrap_servers(), topics)
            behind = [tp for tp, end in ends.items() if tp in assigned and end > self._done(tp)]
            if not behind and time.monotonic() - stats.last_activity >= quiet_seconds:
                return

    async def wait_stopped(self, alongside: asyncio.Future[Any] | None = None) -> None:
        """Until SIGINT/SIGTERM (or the worker stops by itself, or `alongside` fails)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            while not stop.is_set():
                self._check_running()
                if alongside is not None and alongside.done() and alongside.exception():
                    raise RuntimeError(f"the feeder failed: {alongside.exception()!r}")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _done(self, tp: tuple[str, int]) -> int:
        """The next offset of an input partition this worker has nothing left to do
        before: what it processed, or, for a partition it has read nothing of since
        it started (all of it processed before, by this or another worker), the
        group's committed offset."""
        pos = self.tally.stats.positions.get(tp)
        if pos is not None:
            return pos
        committed = getattr(self.tally.app.consumer, "_committed_offset", {}).get(TP(*tp))
        return 0 if committed is None else int(committed)

    def _check_running(self) -> None:
        if self._task is not None and self._task.done():
            exc = None if self._task.cancelled() else self._task.exception()
            crashed = getattr(self.tally.app, "_crash_reason", None)
            raise RuntimeError(
                f"the worker stopped unexpectedly: {exc or crashed or 'no error reported'!r}"
            )

    async def stop(self) -> None:
        if self.worker is not None:
            with contextlib.suppress(Exception):
                # no batch begins after this; the ones begun become durable, offsets
                # included (what was fetched but not processed is read again)
                self.tally.app.flow_control.suspend()
                await asyncio.wait_for(self.tally.settled(), 30.0)
            with contextlib.suppress(Exception):
                await self.worker.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self.worker = None

    async def run_until_idle(
        self, quiet_seconds: float, during: Callable[[], Awaitable[None]] | None = None
    ) -> RunSummary:
        await self.start()
        t0 = time.monotonic()
        try:
            if during is not None:
                await during()
            await self.wait_idle(quiet_seconds)
            # the processing time, not the quiet tail
            elapsed = max(self.tally.stats.last_activity - t0, 1e-3)
        finally:
            await self.stop()
        return await summarize(self.tally, elapsed)


def _recovery_remaining(app: Any) -> int | None:
    """Changelog records the worker still has to read to restore its tables, if known."""
    try:
        return int(app.tables.recovery.active_remaining_total())
    except Exception:
        return None
