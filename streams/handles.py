"""The handles of one stream worker, shared by the app factory, its agents and metrics.

    Tally        the Faust app and its parts: topics, tables, table writers, the pure
                 core (Reconciler, ChannelTxnIndex), checkpoints, stats, metrics
    WorkerStats  in-process counters (summaries, `--until-idle`, Prometheus)
    TABLES       the tables and their codecs; `changelog_topic` names their changelogs

`streams.app.create_app` builds a `Tally`; `streams.agents` and `streams.metrics`
read it. Nothing here depends on either.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streams import codecs
from streams.checkpoint import Checkpoint, TableWriter
from tally.config import Settings
from tally.core.realtime import ChannelTxnIndex, Reconciler

if TYPE_CHECKING:
    import faust

    from streams.metrics import WorkerMetrics


@dataclass
class WorkerStats:
    """In-process counters for summaries and `--until-idle`; Prometheus reads them too."""

    consumed: Counter[str] = field(default_factory=Counter)  # by topic
    produced: Counter[str] = field(default_factory=Counter)  # messages acknowledged, by topic
    produced_bytes: Counter[str] = field(default_factory=Counter)  # their value bytes, by topic
    dead_letters: Counter[str] = field(default_factory=Counter)  # by reason code
    breaks: Counter[str] = field(default_factory=Counter)  # by kind
    duplicates: int = 0
    balances_healed: int = 0  # shards corrected from the orders after a recovery
    outboxes_resent: int = 0  # orders whose outputs were sent again after a recovery
    stale_dropped: int = 0  # messages fetched before a rebalance, left for re-reading
    reread_dropped: int = 0  # messages read again after a seek, processed before
    hole_dropped: int = 0  # messages past a hole in their partition's delivery
    refills: int = 0  # partitions read again from their next offset (a hole)
    last_activity: float = field(default_factory=time.monotonic)
    positions: dict[tuple[str, int], int] = field(default_factory=dict)  # next offset by TP
    partition_activity: dict[int, float] = field(default_factory=dict)  # wall, by partition
    partition_ticked: dict[int, float] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)  # ingest -> break, sampled

    batches: int = 0  # reconcile batches committed
    batch_events: int = 0  # input messages in them
    batches_spanning: int = 0  # ... of them with messages of more than one partition
    batch_seconds: float = 0.0  # processing them (parse, core, snapshots)
    commit_seconds: float = 0.0  # waiting for their outputs and state to be acknowledged

    def batch(self, events: int, partitions: int, processing: float, committing: float) -> None:
        self.batches += 1
        self.batches_spanning += partitions > 1
        self.batch_events += events
        self.batch_seconds += processing
        self.commit_seconds += committing

    def seen(self, topic: str, partition: int, offset: int, activity: bool = True) -> None:
        self.consumed[topic] += 1
        self.positions[(topic, partition)] = offset + 1
        if activity:
            self.last_activity = time.monotonic()


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
    writers: dict[str, TableWriter]  # the tables' stores, as the agents write them
    checkpoint: Checkpoint  # the reconcile agents' batches
    claims_checkpoint: Checkpoint  # the claims agent's batches
    agents: dict[str, Any] = field(default_factory=dict)
    caught_up: Callable[[int, str], bool] = lambda _p, _s: True
    metrics: WorkerMetrics | None = None

    async def settled(self) -> None:
        """Until every batch processed so far is durable, offsets included."""
        await self.checkpoint.settled()
        await self.claims_checkpoint.settled()

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


# the tables: name, key and value codecs (streams.codecs)
TABLES = (
    ("orders", codecs.TEXT, codecs.ORDER),
    ("watermarks", "json", "json"),
    ("balances", codecs.TEXT, codecs.BALANCE),
    ("channel-txn-claims", "json", codecs.CLAIM),
)


def changelog_topic(settings: Settings, table: str) -> str:
    """A table's changelog topic: `payments.order-states` for the orders and
    `payments.balances` for the balance shards (their records are the snapshots the
    sink stores), Faust's `<app>-<table>-changelog` for the others."""
    if table == "orders":
        return settings.topic_order_states
    if table == "balances":
        return settings.topic_balances
    return f"{settings.app_id}-{table}-changelog"
