"""Prometheus metrics of the stream workers and the sink, and the exporter serving them.

    metrics = WorkerMetrics.install(tally)   # create_app does this
    sink_metrics = SinkMetrics()             # SinkRunner does this
    handle = EXPORTER.attach(registry, port) # one HTTP endpoint per port and process

Every metric name starts with `tally_`, follows the Prometheus conventions (base
units, `_total` for counters, `_seconds` for durations) and has only low-cardinality
labels: topic, channel, break kind, dead-letter reason, currency, bucket, age band,
ClickHouse table. Never a merchant id, order id or anything else per entity.

Each worker (`WorkerMetrics`) and each sink (`SinkMetrics`) keeps its own
`CollectorRegistry`; the exporter serves the union of the registries attached to a
port, so a `tally run` process with a worker and a sink answers on one port
(`TALLY_METRICS_PORT`, 9108; 0 turns the exporter off). Several processes on one
host need distinct ports.

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
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tally.core.breaks import BreakKind, break_id
from tally.core.money import to_decimal

if TYPE_CHECKING:
    from streams.app import Tally
    from tally.core.breaks import Break
    from tally.core.ledger import Balance, Posting
    from tally.core.orders import OrderState, OrderView
    from tally.core.policy import ChannelPolicy

log = logging.getLogger(__name__)

# no `<counter>_created` series: they double the exposition and no panel or rule uses them
disable_created_metrics()

REFRESH_SECONDS = 2.0

# Reasons a message goes to the dead-letter topic (docs/events.md, "Dead-letter reason
# codes"); each is exported from the start at 0 so that `increase()` sees the first one.
DEAD_LETTER_REASONS = (
    "too_large",
    "bad_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "bad_id",
    "unknown_enum",
    "bad_amount",
    "negative_amount",
    "bad_currency",
    "bad_timestamp",
    "key_mismatch",
    "inconsistent",
    "unknown_topic",
    "internal_error",
)

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
SINK_BATCH_BUCKETS = (1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 50000)
SINK_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def age_band(age_seconds: float) -> str:
    for label, upper in AGE_BANDS:
        if age_seconds < upper:
            return label
    return AGE_BANDS[-1][0]


def money_gauge(minor: int, currency: str) -> float:
    """The exporter edge: exact minor units -> float major units, for Prometheus only."""
    return float(to_decimal(minor, currency))


# ---------------------------------------------------------------------- exporter


class _Union(Collector):
    """The metrics of every registry attached to one port."""

    def __init__(self) -> None:
        self.registries: list[CollectorRegistry] = []
        self.lock = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        with self.lock:
            regs = list(self.registries)
        for r in regs:
            yield from r.collect()


@dataclass
class _Endpoint:
    port: int
    union: _Union
    server: Any
    thread: threading.Thread


class ExporterHandle:
    def __init__(self, exporter: Exporter, port: int, registry: CollectorRegistry) -> None:
        self.exporter = exporter
        self.port = port
        self.registry = registry
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.exporter._detach(self.port, self.registry)


class Exporter:
    """HTTP endpoints (`/metrics`, any path) per port, shared by the registries of one
    process; an endpoint stops when its last registry detaches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._endpoints: dict[int, _Endpoint] = {}

    def attach(
        self, registry: CollectorRegistry, port: int, addr: str = "0.0.0.0"
    ) -> ExporterHandle:
        """Serve `registry` on `port` (starting the endpoint if needed). Raises
        OSError when the port cannot be bound."""
        from prometheus_client import start_http_server

        with self._lock:
            ep = self._endpoints.get(port)
            if ep is None:
                union = _Union()
                server, thread = start_http_server(port, addr=addr, registry=union)
                ep = self._endpoints[port] = _Endpoint(port, union, server, thread)
            with ep.union.lock:
                ep.union.registries.append(registry)
        return ExporterHandle(self, port, registry)

    def _detach(self, port: int, registry: CollectorRegistry) -> None:
        with self._lock:
            ep = self._endpoints.get(port)
            if ep is None:
                return
            with ep.union.lock:
                with contextlib.suppress(ValueError):
                    ep.union.registries.remove(registry)
                empty = not ep.union.registries
            if empty:
                del self._endpoints[port]
                ep.server.shutdown()
                ep.server.server_close()
                ep.thread.join(5)

    def ports(self) -> list[int]:
        with self._lock:
            return sorted(self._endpoints)


EXPORTER = Exporter()


def serve(registry: CollectorRegistry, port: int, what: str) -> ExporterHandle | None:
    """Attach to the process's exporter; a port that cannot be bound is logged (the
    worker keeps running without metrics) rather than stopping the pipeline."""
    if port <= 0:
        return None
    try:
        handle = EXPORTER.attach(registry, port)
    except OSError as exc:
        log.error(
            "metrics of the %s are not exported: port %d: %s (set TALLY_METRICS_PORT to a "
            "free port, or 0 to turn the exporter off)",
            what,
            port,
            exc,
        )
        return None
    log.info("metrics of the %s on http://0.0.0.0:%d/metrics", what, port)
    return handle


# ------------------------------------------------------------------------ worker


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
        from tally.core.orders import view

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


# -------------------------------------------------------------------------- sink


class _SinkStatsCollector(Collector):
    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def collect(self) -> Iterator[Metric]:
        st = self.runner.stats
        c = CounterMetricFamily(
            "tally_sink_messages",
            "Messages the sink read from its topics, by topic.",
            labels=["topic"],
        )
        for topic, n in sorted(dict(st.consumed).items()):
            c.add_metric([topic], n)
        yield c
        rows = CounterMetricFamily(
            "tally_sink_rows",
            "Rows the sink inserted into ClickHouse, by table.",
            labels=["table"],
        )
        for table, n in sorted(dict(st.rows).items()):
            rows.add_metric([table], n)
        yield rows
        bad = CounterMetricFamily(
            "tally_sink_bad_messages",
            "Messages the sink skipped because they could not be turned into rows.",
            labels=["topic"],
        )
        for topic, n in sorted(dict(st.bad).items()):
            bad.add_metric([topic], n)
        yield bad
        g = GaugeMetricFamily(
            "tally_sink_buffered_messages", "Messages the sink holds, not yet in ClickHouse."
        )
        g.add_metric([], st.buffered)
        yield g
        up = GaugeMetricFamily(
            "tally_sink_clickhouse_up",
            "1 while the sink's last ClickHouse call succeeded, 0 while it is retrying.",
        )
        up.add_metric([], 0 if st.unavailable_since is not None else 1)
        yield up


class SinkMetrics:
    """The metrics of one `sinks.runner.SinkRunner`."""

    def __init__(self, runner: Any, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry(auto_describe=True)
        r.register(_SinkStatsCollector(runner))
        self.batch_messages = Histogram(
            "tally_sink_batch_messages",
            "Messages per batch written to ClickHouse.",
            buckets=SINK_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "tally_sink_batch_seconds",
            "Time to insert one batch into ClickHouse (every table), successful attempts.",
            buckets=SINK_LATENCY_BUCKETS,
            registry=r,
        )
        self.failures = Counter(
            "tally_sink_insert_failures",
            "Failed ClickHouse calls of the sink (each is retried), by kind: unreachable "
            "(connection) or failing (the server answered with an error).",
            ["kind"],
            registry=r,
        )
        self.retries = Counter(
            "tally_sink_retries",
            "Retries of the sink after a failed ClickHouse call.",
            registry=r,
        )
        for kind in ("unreachable", "failing"):
            self.failures.labels(kind)
        self.handle: ExporterHandle | None = None

    def batch_written(self, messages: int, seconds: float) -> None:
        self.batch_messages.observe(messages)
        self.batch_seconds.observe(seconds)

    def failed(self, kind: str) -> None:
        self.failures.labels(kind).inc()

    def retried(self) -> None:
        self.retries.inc()
