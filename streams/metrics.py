"""Prometheus metrics of the stream workers.

    metrics = WorkerMetrics.install(tally)   # create_app does this

Served by `streams.exporter` (one HTTP endpoint per port and process, shared with
the sink's metrics, `sinks.metrics`). Every metric name starts with `tally_`, follows
the Prometheus conventions (base units, `_total` for counters, `_seconds` for
durations) and has only low-cardinality labels: topic, channel, break kind,
dead-letter reason, currency, bucket, age band. Never a merchant id, order id or
anything else per entity.

Money: balances are Decimal / integer minor units everywhere in tally. Prometheus
only stores float64, so `tally_channel_balance` converts an exact integer minor
amount to a float here, at the exporter edge, and nowhere else; nothing ever reads
these floats back into tally. A float64 is exact up to 2**53 minor units
(90 trillion CNY), beyond any channel balance, but treat the gauge as a display
figure: the books are in ClickHouse.

The gauges that describe state (open orders by age, channel balances, consumer lag)
are recomputed on the worker's event loop every `REFRESH_SECONDS` (never in the HTTP
thread, which only reads finished values), from bookkeeping updated as the agents
change orders and balances. After a rebalance they are rebuilt from the worker's
tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from streams.exporter import ExporterHandle, serve
from tally.core.breaks import BreakKind, break_id
from tally.core.deadletter import REASON_CODES
from tally.core.money import to_decimal
from tally.core.orders import view

if TYPE_CHECKING:
    from streams.handles import Tally
    from tally.core.breaks import Break
    from tally.core.ledger import Balance, Posting
    from tally.core.orders import OrderState, OrderView
    from tally.core.policy import ChannelPolicy

log = logging.getLogger(__name__)

REFRESH_SECONDS = 2.0

# Reasons a message goes to the dead-letter topic (docs/events.md, "Dead-letter reason
# codes"); each is exported from the start at 0 so that `increase()` sees the first one.
DEAD_LETTER_REASONS = REASON_CODES  # tally.core.deadletter: the one list

# open orders by wall-clock age since the order was created: (label, upper bound in s)
AGE_BANDS: tuple[tuple[str, float], ...] = (
    ("lt_1m", 60),
    ("1m_10m", 600),
    ("10m_1h", 3600),
    ("1h_1d", 86400),
    ("ge_1d", float("inf")),
)

# event time -> output: includes upstream delay and, for timer breaks, the SLA wait
EVENT_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
# broker append -> output sent: what the worker itself adds
PROCESSING_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def age_band(age_seconds: float) -> str:
    for label, upper in AGE_BANDS:
        if age_seconds < upper:
            return label
    return AGE_BANDS[-1][0]


def money_gauge(minor: int, currency: str) -> float:
    """The exporter edge: exact minor units -> float major units, for Prometheus only."""
    return float(to_decimal(minor, currency))


@dataclass
class _Open:
    channel: str
    created_ms: int
    sla_seconds: float
    timed_out: bool


class _StatsCollector(Collector):
    """Counters the worker already keeps in `WorkerStats`, read at scrape time (a copy
    of a dict is atomic under the GIL)."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    def collect(self) -> Iterator[Metric]:
        st = self.tally.stats
        c = CounterMetricFamily(
            "tally_events_consumed",
            "Messages read by the worker's agents, by topic (inputs and internal topics).",
            labels=["topic"],
        )
        for topic, n in sorted(dict(st.consumed).items()):
            c.add_metric([topic], n)
        yield c
        p = CounterMetricFamily(
            "tally_events_produced",
            "Messages sent by the worker and acknowledged by the broker, by topic (outputs, "
            "internal topics and table changelogs).",
            labels=["topic"],
        )
        for topic, n in sorted(dict(st.produced).items()):
            p.add_metric([topic], n)
        yield p
        d = CounterMetricFamily(
            "tally_duplicates",
            "Input messages ignored because their event was already applied (re-deliveries).",
        )
        d.add_metric([], st.duplicates)
        yield d


class WorkerMetrics:
    """The metrics of one stream worker (one `Tally` app)."""

    def __init__(self, tally: Tally, registry: CollectorRegistry | None = None) -> None:
        self.tally = tally
        self.registry = r = registry or CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        r.register(_StatsCollector(tally))
        self._events(r)
        self._state(r)
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason)
        for output in ("break", "posting"):
            self.processing.labels(output)
            self.event_latency.labels(output)
        self._channels: set[str] = set()
        for ch in tally.settings.channels:
            self._channel_seen(ch)
        self._open: dict[str, _Open] = {}
        # (channel, currency) -> partition -> (provisional, confirmed), minor units
        self._channel_shards: dict[tuple[str, str], dict[int, tuple[int, int]]] = {}
        self._assigned: frozenset[Any] | None = None
        self.handle: ExporterHandle | None = None

    def _events(self, r: CollectorRegistry) -> None:
        """What the agents count and time as they go."""
        self.breaks = Counter(
            "tally_breaks",
            "Real-time breaks raised, by kind and channel.",
            ["kind", "channel"],
            registry=r,
        )
        self.dead_letters = Counter(
            "tally_dead_letters",
            "Messages sent to the dead-letter topic, by reason code.",
            ["reason"],
            registry=r,
        )
        self.status_queries = Counter(
            "tally_status_queries",
            "Status queries requested from the channel gateway, by channel.",
            ["channel"],
            registry=r,
        )
        self.processing = Histogram(
            "tally_processing_latency_seconds",
            "From the triggering message's broker timestamp to the output being sent, "
            "by output (break, posting): the time the pipeline adds.",
            ["output"],
            buckets=PROCESSING_BUCKETS,
            registry=r,
        )
        self.event_latency = Histogram(
            "tally_event_latency_seconds",
            "From the event time of the evidence to the output being sent, by output "
            "(break, posting): end to end, including upstream delay and timer waits.",
            ["output"],
            buckets=EVENT_LATENCY_BUCKETS,
            registry=r,
        )

    def _state(self, r: CollectorRegistry) -> None:
        """The gauges `refresh` recomputes from the worker's state."""
        self.pending = Gauge(
            "tally_pending_orders",
            "Open orders (known, no final answer yet) held by this worker, by channel and "
            "wall-clock age since creation.",
            ["channel", "age"],
            registry=r,
        )
        self.over_sla = Gauge(
            "tally_pending_orders_over_sla",
            "Open orders older than their channel's SLA (sla_seconds, refund_sla_seconds "
            "for refunds) that have not yet timed out (pending_timeout), by channel.",
            ["channel"],
            registry=r,
        )
        self.lag = Gauge(
            "tally_consumer_lag_messages",
            "Messages on an assigned input topic-partition not yet read by this worker.",
            ["topic", "partition"],
            registry=r,
        )
        self.balance = Gauge(
            "tally_channel_balance",
            "Balance of a channel account (what it collected for us), in major units of "
            "`currency`, by bucket (provisional, confirmed), summed over this worker's "
            "shards. A float copy for display; the exact figures are in ClickHouse.",
            ["channel", "currency", "bucket"],
            registry=r,
        )
        self.partitions = Gauge(
            "tally_assigned_partitions",
            "Input topic partitions assigned to this worker.",
            registry=r,
        )
        self.refreshed = Gauge(
            "tally_metrics_refreshed_timestamp_seconds",
            "When the state gauges were last recomputed (Unix time).",
            registry=r,
        )

    # -------------------------------------------------------------- install

    @classmethod
    def install(cls, tally: Tally) -> WorkerMetrics:
        """Create the metrics of `tally` and a task of its app that serves them on
        TALLY_METRICS_PORT and refreshes the state gauges while the worker runs."""
        m = cls(tally)

        async def tally_metrics() -> None:
            m.handle = serve(m.registry, tally.settings.metrics_port, "stream worker")
            try:
                while True:
                    try:
                        m.refresh()
                    except Exception:  # metrics must never stop the worker
                        log.exception("refreshing the worker metrics failed")
                    await asyncio.sleep(REFRESH_SECONDS)
            finally:
                if m.handle is not None:
                    m.handle.close()
                    m.handle = None

        tally.app.task(tally_metrics)
        return m

    # ---------------------------------------------------- called by the agents

    def _channel_seen(self, channel: str) -> None:
        if channel in self._channels:
            return
        self._channels.add(channel)
        for kind in BreakKind:
            self.breaks.labels(kind.value, channel)
        self.over_sla.labels(channel)
        self.status_queries.labels(channel)
        for band, _ in AGE_BANDS:
            self.pending.labels(channel, band)

    def break_sent(self, b: Break, now_ms: int, ingested_ms: int) -> None:
        channel = b.channel_id or "unknown"
        self._channel_seen(channel)
        self.breaks.labels(b.kind, channel).inc()
        self._latency("break", b.event_time_ms, now_ms, ingested_ms)

    def posting_sent(self, p: Posting, now_ms: int, ingested_ms: int) -> None:
        self._latency("posting", p.event_time_ms, now_ms, ingested_ms)

    def _latency(self, output: str, event_ms: int, now_ms: int, ingested_ms: int) -> None:
        if ingested_ms:
            self.processing.labels(output).observe(max(0, now_ms - ingested_ms) / 1000)
        if event_ms:
            self.event_latency.labels(output).observe(max(0, now_ms - event_ms) / 1000)

    def dead_letter(self, reason: str) -> None:
        self.dead_letters.labels(reason).inc()

    def status_query(self, channel: str) -> None:
        self.status_queries.labels(channel or "unknown").inc()

    def order_changed(self, state: OrderState, v: OrderView, policy: ChannelPolicy) -> None:
        """Track the order as open (known, no final answer) or forget it."""
        if not state.known or v.resolved:
            self._open.pop(state.txn_id, None)
            return
        channel = state.channel_id or "unknown"
        self._channel_seen(channel)
        sla = policy.refund_sla_seconds if state.type == "refund" else policy.sla_seconds
        self._open[state.txn_id] = _Open(
            channel,
            state.created_at_ms or state.our_status_at_ms,
            float(sla),
            break_id(BreakKind.PENDING_TIMEOUT, state.txn_id) in state.raised,
        )

    def balance_changed(self, key: str, bal: Balance) -> None:
        """A balance shard (`<account>|<currency>|<partition>`) changed; channel
        accounts feed `tally_channel_balance`."""
        if bal.kind != "channel":
            return
        partition = int(key.rsplit("|", 1)[1])
        shards = self._channel_shards.setdefault((bal.owner, bal.currency), {})
        shards[partition] = (bal.total("provisional"), bal.total("confirmed"))
        prov = sum(s[0] for s in shards.values())
        conf = sum(s[1] for s in shards.values())
        self._channel_seen(bal.owner)
        self.balance.labels(bal.owner, bal.currency, "provisional").set(
            money_gauge(prov, bal.currency)
        )
        self.balance.labels(bal.owner, bal.currency, "confirmed").set(
            money_gauge(conf, bal.currency)
        )

    # ------------------------------------------------------------ refresh

    def refresh(self, now: float | None = None) -> None:
        """Recompute the state gauges (on the worker's event loop)."""
        now = time.time() if now is None else now
        t = self.tally
        try:
            assigned = frozenset(t.app.assignor.assigned_actives())
        except Exception:
            assigned = frozenset()
        if assigned != self._assigned and self._recovered():
            self._assigned = assigned
            self._rebuild()
        inputs = set(t.input_topics)
        self.partitions.set(sum(1 for tp in assigned if tp.topic == t.settings.topic_transactions))
        self.lag.clear()
        for tp in sorted(assigned):
            if tp.topic not in inputs:
                continue
            self.lag.labels(tp.topic, str(tp.partition)).set(self._lag_of(tp))
        counts: dict[tuple[str, str], int] = {}
        over: dict[str, int] = {}
        now_ms = int(now * 1000)
        for o in self._open.values():
            age = max(0.0, (now_ms - o.created_ms) / 1000)
            k = (o.channel, age_band(age))
            counts[k] = counts.get(k, 0) + 1
            if age > o.sla_seconds and not o.timed_out:
                over[o.channel] = over.get(o.channel, 0) + 1
        for ch in sorted(self._channels):
            for band, _ in AGE_BANDS:
                self.pending.labels(ch, band).set(counts.get((ch, band), 0))
            self.over_sla.labels(ch).set(over.get(ch, 0))
        self.refreshed.set(now)

    def _recovered(self) -> bool:
        with contextlib.suppress(Exception):
            return bool(self.tally.app.tables.recovery.completed.is_set())  # type: ignore[attr-defined]
        return False

    def _lag_of(self, tp: Any) -> int:
        t = self.tally
        try:
            hw = t.app.consumer.highwater(tp)
        except Exception:
            return 0
        if hw is None:
            return 0
        pos = t.stats.positions.get((tp.topic, tp.partition))
        if pos is None:
            read = getattr(t.app.consumer, "_read_offset", {}).get(tp)
            pos = 0 if read is None else read + 1
        return max(0, int(hw) - int(pos))

    def _rebuild(self) -> None:
        """After an assignment change: open orders and channel balances from the tables."""
        t = self.tally
        self._open.clear()
        self._channel_shards.clear()
        self.balance.clear()
        policies = t.reconciler.policies
        for _, state in list(t.orders.items()):
            if state.known:
                self.order_changed(
                    state,
                    view(state, policies[state.channel_id or ""]),
                    policies[state.channel_id or ""],
                )
        for key, bal in list(t.balances.items()):
            if bal.kind == "channel":
                self.balance_changed(key, bal)
