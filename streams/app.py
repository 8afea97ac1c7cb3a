"""The Faust application: topics, tables and agents, built by one factory.

    create_app(settings) -> Tally

Nothing happens at import time. The agents are thin: they parse, call the pure
domain core (`tally.realtime.Reconciler`, `tally.clearing.Balance`,
`tally.realtime.ChannelTxnIndex`) and send what it returns.

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

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import TP

from streams import codecs
from tally.clearing import Balance
from tally.config import Settings
from tally.orders import OrderState
from tally.pipeline import partition_for
from tally.realtime import ChannelTxnIndex, Reconciler


@dataclass
class WorkerStats:
    """In-process counters for summaries and `--until-idle`; Prometheus reads them too."""

    consumed: Counter[str] = field(default_factory=Counter)  # by topic
    produced: Counter[str] = field(default_factory=Counter)  # by topic
    dead_letters: Counter[str] = field(default_factory=Counter)  # by reason code
    breaks: Counter[str] = field(default_factory=Counter)  # by kind
    duplicates: int = 0
    balances_healed: int = 0  # shards corrected from the orders after a recovery
    last_activity: float = field(default_factory=time.monotonic)
    positions: dict[tuple[str, int], int] = field(default_factory=dict)  # next offset by TP
    partition_activity: dict[int, float] = field(default_factory=dict)  # wall, by partition
    partition_ticked: dict[int, float] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)  # ingest -> break, sampled

    def seen(self, topic: str, partition: int, offset: int, activity: bool = True) -> None:
        self.consumed[topic] += 1
        self.positions[(topic, partition)] = offset + 1
        if activity:
            self.last_activity = time.monotonic()


class WriteBehind(MutableMapping[str, Any]):
    """A table seen through a write buffer: the agents send a message's outputs first
    and only then write the changed state to the table (its changelog). A worker
    killed in between re-processes the message on restart and sends the same
    outputs again (same ids) instead of having recorded state whose outputs were lost.
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        self.pending: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key in self.pending:
            return self.pending[key]
        return self.table[key]

    def get(self, key: str, default: Any = None) -> Any:
        if key in self.pending:
            return self.pending[key]
        return self.table.get(key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        self.pending[key] = value

    def __delitem__(self, key: str) -> None:
        self.pending.pop(key, None)
        del self.table[key]

    def __iter__(self) -> Iterator[str]:
        yield from self.pending
        for k in self.table:
            if k not in self.pending:
                yield k

    def __len__(self) -> int:
        return len(set(self.table.keys()) | set(self.pending))

    def flush(self) -> None:
        for k, v in self.pending.items():
            self.table[k] = v
        self.pending.clear()


@dataclass
class Tally:
    """Everything `create_app` builds: the Faust app and handles on its parts."""

    settings: Settings
    app: faust.App
    topics: dict[str, faust.TopicT]
    orders: Any  # faust Table[str, OrderState]
    watermarks: Any
    balances: Any  # faust Table[str, Balance], sharded by input partition
    claims: Any
    reconciler: Reconciler
    index: ChannelTxnIndex
    stats: WorkerStats
    agents: dict[str, Any] = field(default_factory=dict)
    write_behind: dict[str, WriteBehind] = field(default_factory=dict)
    caught_up: Callable[[int, str], bool] = lambda _p, _s: True
    metrics: Any = None  # streams.metrics.WorkerMetrics

    @property
    def input_topics(self) -> list[str]:
        """Every topic some agent consumes (for lag / drain checks)."""
        s = self.settings
        return [
            s.topic_transactions,
            s.topic_callbacks,
            self.internal("links"),
            self.internal("success-claims"),
        ]

    @property
    def all_topics(self) -> list[str]:
        s = self.settings
        return [
            *self.input_topics,
            self.internal("ticks"),
            s.topic_breaks,
            s.topic_postings,
            s.topic_status_queries,
            s.topic_dead_letter,
            s.topic_order_states,
            s.topic_balances,
        ]

    def internal(self, name: str) -> str:
        return f"{self.settings.app_id}-{name}"


def create_app(settings: Settings | None = None) -> Tally:
    settings = settings or Settings()
    codecs.register()
    n = settings.partitions
    app = faust.App(
        settings.app_id,
        broker=settings.broker_url(),
        store="memory://",
        autodiscover=False,
        topic_partitions=n,
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
        consumer_max_fetch_size=4 * 1024 * 1024,
        key_serializer="raw",
        value_serializer="raw",
    )

    # Faust's producer buffer takes table changelogs and `send_soon` messages; its
    # default of 100 pauses the streams (with a warning) several times per batch.
    app.producer.buffer.max_messages = 5000

    def topic(name: str, internal: bool = False) -> faust.TopicT:
        return app.topic(
            name,
            partitions=n,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            internal=internal,
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
        "order-states": topic(settings.topic_order_states),
        "balances": topic(settings.topic_balances),
    }
    tables: dict[str, Any] = {}
    for name, codec in (
        ("orders", codecs.ORDER),
        ("watermarks", "json"),
        ("balances", codecs.BALANCE),
        ("channel-txn-claims", codecs.CLAIM),
    ):
        table: Any = app.Table(
            name,
            partitions=n,
            schema=faust.Schema(key_serializer="json", value_serializer=codec),
        )
        # Faust writes and reads a table's changelog with the table's own
        # key/value serializers (derived from key_type/value_type, "json" here),
        # not the schema's: without this, values went out as Faust JSON and a
        # recovered table held dicts instead of OrderState / Balance objects.
        table.key_serializer = "json"
        table.value_serializer = codec
        table.changelog_topic = table._new_changelog_topic()
        tables[name] = table
    orders = tables["orders"]
    stats = WorkerStats()
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
        if pos is None:  # nothing read here since start: where Faust seeked to
            read = getattr(app.consumer, "_read_offset", {}).get(TP(topic, partition))
            pos = 0 if read is None else read + 1
        return bool(pos >= hw)

    order_writes = WriteBehind(orders)
    watermark_writes = WriteBehind(tables["watermarks"])
    balance_writes = WriteBehind(tables["balances"])
    reconciler = Reconciler(
        settings.policies(),
        order_writes,
        watermark_writes,
        allowed_lateness_ms=int(settings.allowed_lateness_seconds * 1000),
        partition_of=lambda k: partition_for(k, n),
        caught_up=caught_up,
    )
    tally = Tally(
        settings=settings,
        app=app,
        topics=topics,
        orders=orders,
        watermarks=tables["watermarks"],
        balances=tables["balances"],
        claims=tables["channel-txn-claims"],
        reconciler=reconciler,
        index=ChannelTxnIndex(tables["channel-txn-claims"]),
        stats=stats,
        caught_up=caught_up,
        write_behind={
            "orders": order_writes,
            "watermarks": watermark_writes,
            "balances": balance_writes,
        },
    )

    from streams.agents import register_agents
    from streams.metrics import WorkerMetrics
    from streams.offsets import recover_to_true_log_ends

    recover_to_true_log_ends()  # Faust recovers each changelog to its real end

    tally.metrics = WorkerMetrics.install(tally)  # also serves them on TALLY_METRICS_PORT
    register_agents(tally)
    return tally


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
