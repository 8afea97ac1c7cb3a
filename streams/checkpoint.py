"""One batch of input messages, and the order in which its results become durable.

The reconcile and claims agents take their input in batches (`take_events`, bounded
by `TALLY_BATCH_MAX_EVENTS` and `TALLY_BATCH_MAX_MS`). While a batch is processed,
nothing leaves the process: its outputs are collected in an `Outbox` and the table
keys it changes are remembered by `TableWriter`s. Then `Checkpoint.commit` makes the
batch durable. For the reconcile agent, in this order and nowhere else:

  0. **Wait** until every earlier batch is complete (commits are pipelined: the
     agent processes the next batch meanwhile, but they are written one after the
     other). Mark the partitions this batch writes with the sequence number of the
     last complete batch (`sent|<partition>` in the watermarks table).
  1. **State.** One changelog record per changed table key, its value at the end of
     the batch, to the key's partition of the table's changelog topic (for orders
     and balance shards these are `payments.order-states` and `payments.balances`:
     the snapshots the sink stores); a changed order's record carries the *facts*
     the batch produced for it (breaks, postings, status queries, reversal links,
     success claims: `OrderState.outbox`, with the batch's sequence number).
     Acknowledged by the broker.
  2. **Outputs.** Every fact of the batch, and its dead letters, produced in bulk,
     one record batch per topic-partition. Acknowledged.
  3. **Input offsets.** The batch's input offsets (per topic-partition, the last
     offset processed + 1), committed to the consumer group — only if the batch
     was read in the group generation that is still current. Off the next batch's
     path: they join the offsets waiting, and one request commits all of them as
     soon as the previous request is answered. Faust itself commits none of these
     topics (the agents read them with acks off).

A batch is processed only if it was read in the current group generation, with
Faust's flow running: what was fetched before a rebalance is dropped unprocessed
(Faust skips such messages too) and read again from the committed offset by the
partition's next owner. When partitions are revoked, the worker waits until every
commit begun so far is complete (`settled`) before it rejoins the group, so the
next owner recovers the tables and reads the inputs from where this worker's
durable state ends. Within a generation, each partition's messages are processed in
offset order without holes (`streams.positions`), so a batch's offsets cover
exactly what it processed.

A worker killed at any moment (`kill -9`) comes back with input offsets no further
than its durable state, and with every fact of its durable state either sent or
still in the state's outboxes:

- killed before 1 completes: the batch's state is old (or, key by key, new: each
  record is whole); nothing of the batch was sent. The batch is re-read: orders
  whose state is old produce their facts again; orders whose state is new skip the
  events as duplicates — their facts are in their outbox (next point).
- killed between 1 and 3: the state is new, its outputs may be missing. When a
  worker is assigned the partition it sends again the outbox of every order whose
  `outbox_seq` is later than the partition's `sent|<p>` marker (`streams.agents`,
  `recover`). Every fact has a deterministic id (`break_id`, `posting_id`,
  `query_id`, ...): the ClickHouse sink keeps one row per id. A balance shard whose
  record got through while its orders' did not (or the reverse) is corrected from
  the orders' positions.

Why state first: re-reading a batch against old state interleaves the two input
topics differently from the first time (they are read independently), so the same
order can take different steps — different postings under the same posting ids. A
fact that was sent must therefore be one the durable state knows it produced.

Why not Faust's own offset commits: across a rebalance Faust acknowledges the
messages it skips as fetched in an older generation (unprocessed), and after a
commit that failed on a rebalance it keeps the refused offset as committed, so it
ignores the acknowledgements of the messages it reads again; the first lost an
event under the crash test, the second left a partition uncommitted forever.

The claims agent reads one topic; re-reading a batch gives the same facts in the
same order, so it commits its outputs first, then its state (`state_first=False`).

A commit that has begun is finished whatever happens to the agent (shutdown,
rebalance: it runs in a task of its own). A produce that fails is retried until it
is acknowledged; no input offset is committed meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import orjson

log = logging.getLogger(__name__)

Record = tuple[bytes | None, bytes | None]  # key, value (None: a table tombstone)
Offsets = dict[tuple[str, int], int]  # (topic, partition) -> the next offset to read
# commits input offsets read in a group generation; False if it cannot (a rebalance)
CommitOffsets = Callable[[Offsets, int | None], Awaitable[bool]]
_RETRY_FIRST_SECONDS = 0.2
_RETRY_MAX_SECONDS = 5.0


class Outbox:
    """The output messages of one batch, grouped by topic and partition in the order
    they were made (per-partition order is what Kafka keeps)."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, int], list[Record]] = {}

    def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None) -> None:
        tp = (topic, partition)
        records = self.records.get(tp)
        if records is None:
            records = self.records[tp] = []
        records.append((key, value))

    def __len__(self) -> int:
        return sum(len(r) for r in self.records.values())


class TableWriter(MutableMapping[Any, Any]):
    """A Faust table's in-memory store, written by one batch at a time.

    Reads and writes go straight to the store (a dict); each write remembers the key
    and the input partition it belongs to (`partition`, set by the agent for every
    message), so that `Checkpoint.commit` writes one changelog record per changed
    key, to the partition the table's key lives in, once per batch. Faust's own
    `table[key] = value` would send one changelog record per write, through a
    per-message future, to the partition of whatever event is current — wrong for a
    batch that spans partitions.
    """

    def __init__(
        self,
        table: Any,
        encode_key: Callable[[Any], bytes],
        encode: Callable[[Any, Any, int], bytes],
    ) -> None:
        self.table = table
        self.encode_key = encode_key
        self.encode = encode  # (key, value, partition) -> the record's value
        self.partition = 0
        self.dirty: dict[Any, int] = {}
        self._store: Any = None
        self._data: dict[Any, Any] | None = None
        self._key_partition: dict[Any, int] | None = None

    @property
    def data(self) -> dict[Any, Any]:
        if self._data is None or self._store is not self.table.data:
            self._store = self.table.data  # created by Faust when the table starts
            self._data = self._store.data  # the memory store's dict
            self._key_partition = getattr(self._store, "_key_partition", None)
        assert self._data is not None
        return self._data

    @property
    def changelog_topic(self) -> str:
        name: str = self.table.changelog_topic.get_topic_name()
        return name

    def __getitem__(self, key: Any) -> Any:
        return self.data[key]

    def get(self, key: Any, default: Any = None) -> Any:
        return self.data.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def __setitem__(self, key: Any, value: Any) -> None:
        self.data[key] = value
        self.dirty[key] = self.partition

    def __delitem__(self, key: Any) -> None:
        del self.data[key]
        self.dirty[key] = self.partition

    def __iter__(self) -> Iterator[Any]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def changelog(self, outbox: Outbox) -> None:
        """The batch's changed keys as changelog records (their value now), in
        `outbox`; the keys are then clean. Faust's recovery reads them back with the
        table's serializers: JSON keys, the table's value codec."""
        topic = self.changelog_topic
        data = self.data
        key_partition = self._key_partition
        encode, encode_key = self.encode, self.encode_key
        for key, partition in self.dirty.items():
            value = data.get(key)
            outbox.add(
                topic,
                partition,
                encode_key(key),
                None if value is None else encode(key, value, partition),
            )
            if key_partition is not None:  # Faust drops a revoked partition's keys by it
                key_partition[key] = partition
        self.dirty.clear()


class Checkpoint:
    """Makes batches durable, in order: `commit` is the only place results leave a
    worker.

    Two orders, chosen by the agent (module docstring):
    - `state_first` (the reconcile agent): state with its outbox, then outputs;
    - outputs first (the claims agent, whose replay is deterministic).

    Commits are pipelined: the agent goes on with its next batch while the broker
    acknowledges this one, but a commit starts writing only when every earlier one
    is complete; input offsets are its last step. `settled` waits for every commit
    begun so far (on a rebalance, before the worker rejoins the group)."""

    def __init__(
        self,
        producer: Callable[[], Any],
        tables: list[TableWriter],
        produced: Counter[str],
        produced_bytes: Counter[str],
        commit_offsets: CommitOffsets,
        *,
        state_first: bool,
        max_in_flight: int = 2,
    ) -> None:
        self._producer = producer  # the worker's aiokafka producer, once Faust started it
        self.commit_offsets = commit_offsets
        self.offsets: Offsets = {}  # of the batch being made: set by `consumed`
        self.tables = tables
        self.state_first = state_first
        self.outbox = Outbox()
        self.produced = produced
        self.produced_bytes = produced_bytes
        self.max_in_flight = max_in_flight
        self.commits = 0  # completed
        self.offsets_refused = 0  # offset commits refused (a rebalance)
        self.offset_commits = 0  # offset commits made (several batches' each, at times)
        self._offsets_pending: Offsets = {}
        self._offsets_generation: int | None = None
        self._offsets_task: asyncio.Task[None] | None = None
        self._offsets_queued = self._offsets_flushed = 0  # batches' offsets: queued, done
        self._offsets_changed = asyncio.Condition()
        self.seq = 0  # the latest batch's sequence number: grows, also across workers
        self._last: asyncio.Task[None] | None = None
        self._last_seq: int | None = None
        self._in_flight: list[asyncio.Task[None]] = []

    def begin(self) -> int:
        """A sequence number for the batch being made: larger than any before it
        (wall-clock nanoseconds, or one more than the largest seen)."""
        self.seq = max(time.time_ns(), self.seq + 1)
        return self.seq

    def consumed(self, topic: str, partition: int, offset: int) -> None:
        """The batch being made processed this input message (in offset order)."""
        self.offsets[(topic, partition)] = offset + 1

    def seen(self, seq: int) -> None:
        """A sequence number found in recovered state: later batches must be larger."""
        self.seq = max(self.seq, seq)

    async def commit(
        self,
        generation: int | None,
        done: Callable[[], None] | None = None,
        markers: Callable[[int, Outbox], None] | None = None,
    ) -> None:
        """Begin committing the batch made so far (its outbox and its tables' changed
        keys, encoded now) in a task of its own, which no cancellation of the caller
        stops. Returns once at most `max_in_flight` commits are unfinished
        (back-pressure). `done` is called when this commit is complete; `markers`
        (state first only) may add state records once every earlier commit is
        complete, given the sequence number of the last of them. `generation` is
        the consumer group generation the batch's input was read in."""
        outputs, self.outbox = self.outbox, Outbox()
        offsets, self.offsets = self.offsets, {}
        state = Outbox()
        for table in self.tables:
            table.changelog(state)
        task = asyncio.ensure_future(
            self._commit(outputs, state, offsets, generation, self._last, self._last_seq, markers)
        )
        if done is not None:
            task.add_done_callback(lambda t: None if t.cancelled() else done())
        self._last, self._last_seq = task, self.seq
        self._in_flight.append(task)
        while len(self._in_flight) > self.max_in_flight:
            await asyncio.shield(self._in_flight[0])

    async def _commit(
        self,
        outputs: Outbox,
        state: Outbox,
        offsets: Offsets,
        generation: int | None,
        previous: asyncio.Task[None] | None,
        previous_seq: int | None,
        markers: Callable[[int, Outbox], None] | None,
    ) -> None:
        try:
            if self.state_first:
                if previous is not None:
                    await previous  # every earlier batch: state and outputs acknowledged
                    if markers is not None and previous_seq is not None:
                        markers(previous_seq, state)
                await self.produce(state)  # 1. state with its outbox, acknowledged
                await self.produce(outputs)  # 2. outputs, acknowledged
            else:
                await self.produce(outputs)  # 1. outputs, acknowledged
                if previous is not None:
                    await previous
                await self.produce(state)  # 2. state changelog, acknowledged
            if offsets:
                self._queue_offsets(offsets, generation)  # 3. input offsets
            self.commits += 1
        finally:
            self._in_flight.remove(asyncio.current_task())  # type: ignore[arg-type]

    def _queue_offsets(self, offsets: Offsets, generation: int | None) -> None:
        """Step 3, off the path of the next batch: the batch's input offsets join
        those waiting (a later batch's offset for a partition replaces an earlier
        one: batches complete in order), committed in one request as soon as the
        previous request is answered."""
        if generation != self._offsets_generation:
            self._offsets_pending = {}  # an older generation's: refused anyway
        self._offsets_queued += 1
        self._offsets_pending.update(offsets)
        self._offsets_generation = generation
        if self._offsets_task is None or self._offsets_task.done():
            self._offsets_task = asyncio.ensure_future(self._flush_offsets())

    async def _flush_offsets(self) -> None:
        while self._offsets_pending:
            offsets, generation = self._offsets_pending, self._offsets_generation
            self._offsets_pending = {}
            queued = self._offsets_queued
            if await self.commit_offsets(offsets, generation):
                self.offset_commits += 1
            else:
                self.offsets_refused += 1  # the partitions' next owner reads them again
                log.info(
                    "input offsets of generation %s not committed (a rebalance): %s",
                    generation,
                    ", ".join(f"{t}[{p}]={o}" for (t, p), o in sorted(offsets.items())),
                )
            self._offsets_flushed = queued
            async with self._offsets_changed:
                self._offsets_changed.notify_all()

    async def settled(self) -> None:
        """Until every commit begun so far is complete, input offsets included: the
        latest of them, which completes only after every earlier one, then the offset
        commits. Commits begun meanwhile are not waited for (under steady load there
        always is one)."""
        if self._in_flight:
            await asyncio.shield(self._in_flight[-1])
        target = self._offsets_queued
        async with self._offsets_changed:
            await self._offsets_changed.wait_for(lambda: self._offsets_flushed >= target)

    async def produce(self, outbox: Outbox) -> None:
        """Every record of `outbox`, acknowledged; retried until it is."""
        pending = outbox.records
        delay = _RETRY_FIRST_SECONDS
        while pending:
            failed = await self._send(pending)
            if not failed:
                return
            log.warning(
                "producing to %d topic-partitions failed (%s); retrying in %.1fs",
                len(failed),
                "; ".join(sorted({repr(e) for e in failed.values()}))[:500],
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_SECONDS)
            pending = {tp: pending[tp] for tp in failed}

    async def _send(
        self, records: dict[tuple[str, int], list[Record]]
    ) -> dict[tuple[str, int], BaseException]:
        producer = self._producer()
        sent: list[tuple[tuple[str, int], int, int, asyncio.Future[Any]]] = []
        failed: dict[tuple[str, int], BaseException] = {}
        for tp, recs in records.items():
            topic, partition = tp
            try:
                batch = producer.create_batch()
                n = size = 0
                for key, value in recs:
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        fut = await producer.send_batch(batch, topic, partition=partition)
                        sent.append((tp, n, size, fut))
                        batch = producer.create_batch()
                        n = size = 0
                        if batch.append(key=key, value=value, timestamp=None) is None:
                            raise ValueError(
                                f"a message of {len(value or b'')} bytes does not fit a "
                                f"record batch for {topic}"
                            )
                    n += 1
                    size += len(value) if value is not None else 0
                sent.append(
                    (tp, n, size, await producer.send_batch(batch, topic, partition=partition))
                )
            except Exception as exc:
                failed[tp] = exc
        results = await asyncio.gather(*(f for *_, f in sent), return_exceptions=True)
        for (tp, n, size, _), result in zip(sent, results, strict=True):
            if isinstance(result, BaseException):
                failed[tp] = result
            else:
                self.produced[tp[0]] += n
                self.produced_bytes[tp[0]] += size
        return failed


def group_offsets(app: Any) -> CommitOffsets:
    """Step 3 for a Faust app: commit input offsets through its consumer (the
    consumer thread's commit: only partitions still assigned; a commit the group
    refuses because it rebalanced returns False), unless the group generation the
    batch was read in has passed."""
    from faust.types import TP

    async def commit(offsets: Offsets, generation: int | None) -> bool:
        if generation != app.consumer_generation_id:
            return False  # the partitions' owner reads the batch again
        tps = {TP(topic, partition): offset for (topic, partition), offset in offsets.items()}
        try:
            return bool(await app.consumer._commit(tps))
        except Exception as exc:  # e.g. the consumer stopped: the offsets stay behind
            log.warning("committing input offsets failed: %r", exc)
            return False

    return commit


def dumps(value: Any) -> bytes:
    """Output messages are JSON: compact, UTF-8, keys in the order the dicts give."""
    return orjson.dumps(value)
