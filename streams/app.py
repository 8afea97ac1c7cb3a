"""The Faust application: topics, tables and agents, built by one factory.

    create_app(settings) -> Tally

Nothing happens at import time. The agents are thin: they parse, call the pure
domain core (`tally.core.realtime.Reconciler`, `tally.core.ledger.Balance`,
`tally.core.realtime.ChannelTxnIndex`) and send what it returns.

Topology (all topics have `settings.partitions` partitions):

  payments.transactions ─┐                     ┌─> payments.breaks
  payments.callbacks    ─┤  reconcile          ├─> payments.postings
  <app>-links           ─┼─> tables: orders,  ─┼─> payments.status-queries
  <app>-ticks           ─┘   balances,         ├─> payments.dead-letter
                             watermarks        ├─> <app>-links  (keyed by original txn)
                                               └─> <app>-success-claims ─> claims

Balances are kept where the postings are made: the `balances` table holds, for each
partition of the input topics, the running balance of every account its orders
touched (key `<account>|<currency>|<partition>`). An account's balance is the sum of
its shards (`account_balances`). This avoids a repartition hop per posting, and a
posting is applied exactly when its order's state changes, in the same message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import faust
from faust.types import TP

from streams import codecs
from streams.agents import register_agents
from streams.checkpoint import Checkpoint, TableWriter, group_offsets
from streams.handles import TABLES, Tally, WorkerStats, changelog_topic
from streams.intake import sought_offset
from streams.metrics import WorkerMetrics
from streams.offsets import recover_to_true_log_ends
from tally.config import Settings
from tally.core.ledger import Balance
from tally.core.orders import OrderState
from tally.core.pipeline import partition_for
from tally.core.realtime import ChannelTxnIndex, Reconciler

log = logging.getLogger("streams.app")

__all__ = [
    "TABLES",
    "Tally",
    "WorkerStats",
    "account_balances",
    "changelog_topic",
    "create_app",
    "order_state",
]


def create_app(settings: Settings) -> Tally:
    codecs.register(settings.policies())
    app = _faust_app(settings)
    topics = _topics(app, settings)
    tables = _tables(app, settings)
    stats = WorkerStats()
    caught_up = _caught_up(app, settings, stats)
    writers = {
        name: TableWriter(tables[name], codecs.key_encoder(key_codec), codecs.encoder(codec))
        for name, key_codec, codec in TABLES
    }
    n = settings.partitions
    reconciler = Reconciler(
        settings.policies(),
        writers["orders"],
        writers["watermarks"],
        allowed_lateness_ms=int(settings.allowed_lateness_seconds * 1000),
        partition_of=lambda k: partition_for(k, n),
        caught_up=caught_up,
    )
    tally = Tally(
        settings=settings,
        app=app,
        topics=topics,
        orders=tables["orders"],
        watermarks=tables["watermarks"],
        balances=tables["balances"],
        claims=tables["channel-txn-claims"],
        reconciler=reconciler,
        index=ChannelTxnIndex(writers["channel-txn-claims"]),
        stats=stats,
        caught_up=caught_up,
        writers=writers,
        checkpoint=_checkpoint(app, stats, writers, "orders", "balances", "watermarks"),
        claims_checkpoint=_checkpoint(app, stats, writers, "channel-txn-claims"),
    )
    recover_to_true_log_ends()  # Faust recovers each changelog to its real end
    tally.metrics = WorkerMetrics.install(tally)  # also serves them on TALLY_METRICS_PORT
    register_agents(tally)
    return tally


def _faust_app(settings: Settings) -> faust.App:
    # Faust makes only the last level of its directory (mkdir without parents)
    (Path(settings.data_dir) / "faust").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=settings.broker_url(),
        store="memory://",
        # Faust's own directory (it keeps no table data here: the store is memory) under
        # TALLY_DATA_DIR, not `<app id>-data` in whatever directory the worker started in
        datadir=str(Path(settings.data_dir) / "faust" / "{conf.name}"),
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        topic_allow_declare=True,
        topic_disable_leader=True,
        processing_guarantee=settings.processing_guarantee,
        web_enabled=settings.web_port > 0,
        web_port=settings.web_port or 6066,
        web_bind="0.0.0.0",
        broker_rebalance_timeout=10,
        broker_session_timeout=10,
        broker_heartbeat_interval=1,
        broker_commit_every=2000,
        broker_commit_interval=1.0,
        stream_wait_empty=False,
        table_cleanup_interval=3600,
        producer_max_request_size=4 * 1024 * 1024,
        producer_max_batch_size=1024 * 1024,  # a checkpoint sends a record batch per partition
        consumer_max_fetch_size=4 * 1024 * 1024,
        key_serializer="raw",
        value_serializer="raw",
    )
    app.tally_fetch_max_wait_ms = settings.consumer_fetch_max_wait_ms  # type: ignore[attr-defined]
    use_fetch_max_wait()
    return app


def _topics(app: faust.App, settings: Settings) -> dict[str, faust.TopicT]:
    """The agents' topics by short name, and `reconcile`: the four co-partitioned
    inputs of the reconcile agent read as one stream."""

    def topic(name: str, internal: bool = False) -> faust.TopicT:
        return app.topic(
            name,
            partitions=settings.partitions,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            internal=internal,
            acks=False,  # input offsets are committed by streams.checkpoint, not Faust
        )

    prefix = settings.app_id
    topics = {
        "transactions": topic(settings.topic_transactions),
        "callbacks": topic(settings.topic_callbacks),
        "links": topic(f"{prefix}-links", internal=True),
        "ticks": topic(f"{prefix}-ticks", internal=True),
        "success-claims": topic(f"{prefix}-success-claims", internal=True),
        "breaks": topic(settings.topic_breaks),
        "postings": topic(settings.topic_postings),
        "status-queries": topic(settings.topic_status_queries),
        "dead-letter": topic(settings.topic_dead_letter),
    }
    app.tally_input_topics = frozenset(  # type: ignore[attr-defined]
        topics[k].get_topic_name()
        for k in ("transactions", "callbacks", "links", "ticks", "success-claims")
    )
    app.tally_sought_generation = None  # type: ignore[attr-defined]
    app.tally_start_offsets = {}  # type: ignore[attr-defined]
    app.tally_early_reads = {}  # type: ignore[attr-defined]
    unfiltered_input_reads()
    topics["reconcile"] = app.topic(
        *(topics[k].get_topic_name() for k in ("transactions", "callbacks", "links", "ticks")),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        acks=False,
    )
    return topics


def _tables(app: faust.App, settings: Settings) -> dict[str, Any]:
    """The tables (`TABLES`), each with its codecs and changelog topic."""
    tables: dict[str, Any] = {}
    for name, key_codec, codec in TABLES:
        table: Any = app.Table(
            name,
            partitions=settings.partitions,
            schema=faust.Schema(key_serializer=key_codec, value_serializer=codec),
        )
        # Faust reads a table's changelog with the table's own key/value serializers
        # (derived from key_type/value_type), not the schema's: set them, or a
        # recovered table holds dicts instead of OrderState / Balance objects.
        table.key_serializer = key_codec
        table.value_serializer = codec
        topic_name = changelog_topic(settings, name)
        table._changelog_topic_name = lambda topic_name=topic_name: topic_name
        registered = app.tables._changelogs  # type: ignore[attr-defined]
        registered.pop(table.changelog_topic.get_topic_name(), None)
        table.changelog_topic = table._new_changelog_topic()
        registered[topic_name] = table  # recovery and the assignor find the table by it
        tables[name] = table
    return tables


def _caught_up(
    app: faust.App, settings: Settings, stats: WorkerStats
) -> Callable[[int, str], bool]:
    inputs = {"transactions": settings.topic_transactions, "callbacks": settings.topic_callbacks}

    def caught_up(partition: int, source: str) -> bool:
        """Has this worker read everything there is on an input topic-partition? Only
        then may the other input's event time alone move the watermark. (Faust reads
        a backlog topic by topic, one can stall for seconds while the other runs.)"""
        topic = inputs[source]
        try:
            hw = app.consumer.highwater(TP(topic, partition))
        except Exception:
            return False
        if hw is None:
            return False
        pos = stats.positions.get((topic, partition))
        if pos is None:
            # nothing processed here since start: the group's committed offset (what
            # Faust has read ahead into a batch not yet processed does not count)
            committed = getattr(app.consumer, "_committed_offset", {}).get(TP(topic, partition))
            pos = 0 if committed is None else committed
        return bool(pos >= hw)

    return caught_up


def _checkpoint(
    app: faust.App, stats: WorkerStats, writers: dict[str, TableWriter], *tables: str
) -> Checkpoint:
    """The checkpoint of an agent writing `tables` (state first if it writes orders)."""

    def producer() -> Any:
        return app.producer._ensure_producer()  # type: ignore[attr-defined]

    return Checkpoint(
        producer,
        [writers[name] for name in tables],
        stats.produced,
        stats.produced_bytes,
        group_offsets(app),
        state_first="orders" in tables,
    )


_FETCH_WAIT_INSTALLED = False


def use_fetch_max_wait() -> None:
    """Make Faust's consumer wait `TALLY_CONSUMER_FETCH_MAX_WAIT_MS` for data instead
    of the 1,500 ms its aiokafka driver hard-codes: that wait is how long a quiet
    partition's new message can sit on the broker before the worker sees it.
    Idempotent; the value is read from each app (`app.tally_fetch_max_wait_ms`)."""
    global _FETCH_WAIT_INSTALLED
    if _FETCH_WAIT_INSTALLED:
        return
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    create = AIOKafkaConsumerThread._create_worker_consumer

    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        wait = getattr(self.app, "tally_fetch_max_wait_ms", None)
        if wait is not None:
            consumer._fetch_max_wait_ms = int(wait)  # read by AIOKafkaConsumer.start()
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]
    _FETCH_WAIT_INSTALLED = True


class _InputReads(dict[Any, Any]):
    """Faust's per-partition read offsets (`Consumer._read_offset`), except that the
    agents' input partitions are never filtered by them: Faust drops a fetched
    message below the last offset it handed on, and a message fetched before a
    seek can set that offset past the seek (the seek to the committed offsets after
    a rebalance races the fetch), so the partition's messages read again after the
    seek were dropped — a hole, or a partition stalled for good. The agents keep
    their own positions (`streams.positions`): a message read twice is dropped
    there, a hole is read again."""

    def __init__(self, topics: frozenset[str], offsets: Any) -> None:
        super().__init__(offsets)
        self.topics = topics

    def __missing__(self, tp: Any) -> None:
        return None

    def __getitem__(self, tp: Any) -> Any:
        return None if tp.topic in self.topics else super().__getitem__(tp)


_READS_INSTALLED = False


def early_reads_to_seek(app: Any, generation: int | None) -> dict[Any, int]:
    """Where to seek again the input partitions whose messages of `generation` the
    agents left for re-reading before the seek of `generation` was noted
    (`app.tally_early_reads`, filled by `streams.intake`): the group's committed
    offset, or the start of the log (`_seek_uncommitted_to_start`). Such a message may
    have been fetched *after* the seek (Faust resumes the input partitions before it
    seeks them, and the seek's answer reaches the loop after the fetcher could use it):
    nothing would read it again, and its partition would stay behind its log end for
    good (seen in the takeover test: `tally-links[1]` committed at 8 of 10). Messages
    read twice meanwhile are dropped by `streams.positions`. Clears the record."""
    early: dict[Any, int | None] = app.tally_early_reads
    tps = [tp for tp, g in early.items() if g == generation]
    early.clear()
    offsets = {tp: sought_offset(app, tp) for tp in tps}
    return {tp: o for tp, o in offsets.items() if o is not None}


async def _seek_uncommitted_to_start(consumer: Any) -> None:
    """Faust's seek to the committed offsets leaves a partition with no committed
    offset where it is — past whatever was fetched and dropped before (during a
    rebalance). Seek the agents' input partitions without one to the start of their
    log, and note that start (`app.tally_start_offsets`): the first message the
    agents take from such a partition must be there (`streams.positions`)."""
    app = consumer.app
    topics: frozenset[str] = getattr(app, "tally_input_topics", frozenset())
    committed = consumer._committed_offset
    tps = [tp for tp in consumer.assignment() if tp.topic in topics and committed.get(tp) is None]
    starts: dict[Any, int] = {}
    if tps:
        starts = {tp: int(o or 0) for tp, o in (await consumer.earliest_offsets(*tps)).items()}
        await consumer.seek_wait(starts)
    app.tally_start_offsets = starts


def unfiltered_input_reads() -> None:
    """Install `_InputReads` on every Faust consumer whose app names its input
    topics (`app.tally_input_topics`), and note each seek to the committed offsets
    (`app.tally_sought_generation`). Idempotent."""
    global _READS_INSTALLED
    if _READS_INSTALLED:
        return
    from faust.transport.consumer import Consumer

    init = Consumer.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        topics = getattr(self.app, "tally_input_topics", None)
        if topics:
            self._read_offset = _InputReads(topics, self._read_offset)

    Consumer.__init__ = __init__  # type: ignore[method-assign]

    perform_seek = Consumer.perform_seek

    async def _perform_seek(self: Any) -> None:
        """Faust's seek of every assigned partition to the group's committed offset,
        noted on the app with the generation it was made in
        (`app.tally_sought_generation`): until then a partition's messages may come
        from anywhere, and the agents leave them for re-reading."""
        generation = self.app.consumer_generation_id
        await perform_seek(self)
        await _seek_uncommitted_to_start(self)
        self.app.tally_sought_generation = generation
        again = early_reads_to_seek(self.app, generation)
        if again:
            log.info(
                "reading again from the committed offsets (read after the seek, before "
                "it was noted): %s",
                ", ".join(f"{tp.topic}[{tp.partition}]@{o}" for tp, o in sorted(again.items())),
            )
            await self.seek_wait(again)

    Consumer.perform_seek = _perform_seek  # type: ignore[method-assign]
    _READS_INSTALLED = True


def account_balances(shards: Iterable[tuple[str, Balance]]) -> dict[str, Balance]:
    """Sum balance shards (`<account>|<currency>|<partition>`) per account and currency."""
    total: dict[str, Balance] = {}
    for key, shard in shards:
        k = key.rsplit("|", 1)[0]
        b = total.get(k)
        if b is None:
            b = total[k] = Balance(shard.account, shard.currency)
        for component, amount in shard.amounts.items():
            b.amounts[component] = b.amounts.get(component, 0) + amount
        b.postings += shard.postings
    return total


def order_state(tally: Tally, txn_id: str) -> OrderState | None:
    value: OrderState | None = tally.orders.get(txn_id)
    return value
