"""Prometheus metrics of the sink (`sinks.runner.SinkRunner`).

    metrics = SinkMetrics(runner)     # SinkRunner does this; served by streams.exporter

Every metric name starts with `tally_sink_`, follows the Prometheus conventions and
has only low-cardinality labels (topic, ClickHouse table, failure kind). The counters
the runner already keeps in `SinkStats` are read at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streams.exporter import ExporterHandle

SINK_BATCH_BUCKETS = (1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 50000)
SINK_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


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
