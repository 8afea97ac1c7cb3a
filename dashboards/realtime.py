"""Real time: what the stream workers do right now (Prometheus), plus the latest breaks
from ClickHouse. For the on-call engineer."""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import dashboard as dash

from dashboards.common import (
    CH,
    JOB,
    SqlVariable,
    database_variable,
    grid,
    in_all,
    new_dashboard,
    prom,
    prom_label_variable,
    single,
    steps,
    time_bucket,
    ts,
)

UID = "tally-realtime"
CH_ = 'channel=~"$channel"'

MERCHANTS = SqlVariable(
    "merchant",
    "Merchant",
    """
SELECT DISTINCT assumeNotNull(merchant_id) AS value
FROM ${database}.breaks
WHERE $__timeFilter(event_time) AND merchant_id IS NOT NULL
ORDER BY value
LIMIT 1000
""",
    "merchants with breaks in the time range (ClickHouse); filters the ClickHouse panels",
)

LATEST_BREAKS = CH(
    f"""
SELECT event_time AS time, kind, channel, merchant, txn_id, currency, amount,
       channel_amount, detail
FROM (
    SELECT event_time, event_time_ms, kind, channel_id AS channel, merchant_id AS merchant,
           txn_id, currency, amount, channel_amount, detail
    FROM ${{database}}.breaks FINAL
    WHERE $__timeFilter(event_time)
)
WHERE {in_all("channel", "channel")} AND {in_all("merchant", "merchant")}
ORDER BY event_time_ms DESC
LIMIT 200
""",
    {
        "time": "DateTime",
        "kind": "String",
        "channel": "Nullable(String)",
        "merchant": "Nullable(String)",
        "txn_id": "String",
        "currency": "Nullable(String)",
        "amount": "Nullable(Decimal)",
        "channel_amount": "Nullable(Decimal)",
        "detail": "String",
    },
)

BREAKS_OVER_TIME = CH(
    f"""
SELECT {time_bucket("event_time")} AS time, kind, count() AS breaks
FROM (
    SELECT event_time, kind, channel_id AS channel, merchant_id AS merchant
    FROM ${{database}}.breaks FINAL
    WHERE $__timeFilter(event_time)
)
WHERE {in_all("channel", "channel")} AND {in_all("merchant", "merchant")}
GROUP BY time, kind
ORDER BY time, kind
""",
    {"time": "DateTime", "kind": "String", "breaks": "UInt64"},
    kind="timeseries",
)

DEAD_LETTERS_STORED = CH(
    """
SELECT code AS reason, source_topic AS topic, count() AS messages, max(dead_at) AS last_seen
FROM ${database}.dead_letters FINAL
WHERE $__timeFilter(dead_at)
GROUP BY reason, topic
ORDER BY messages DESC
""",
    {"reason": "String", "topic": "String", "messages": "UInt64", "last_seen": "DateTime"},
)


def build() -> Any:
    d = new_dashboard(
        UID,
        "tally — Real time",
        "The stream workers now: throughput, latency, consumer lag, breaks, pending orders, "
        "dead letters and the ClickHouse sink (Prometheus), with the latest breaks from "
        "ClickHouse. Panels are described in docs/observability.md.",
        ["realtime"],
    )
    d = d.time("now-1h", "now").refresh("30s")
    d = d.with_variable(
        prom_label_variable(
            "channel",
            "Channel",
            "tally_breaks_total",
            "payment channels the workers have seen (Prometheus label)",
        )
    )
    d = d.with_variable(MERCHANTS.builder()).with_variable(database_variable())
    d = _health(d)
    d = _throughput(d)
    d = _lag(d)
    d = _breaks(d)
    d = _breaks_stored(d)
    d = _dead_letters(d)
    d = _sink(d)
    d = _sink_health(d)
    return d


def _health(d: Any) -> Any:
    """Row "Health": workers up, dead letters, pending past SLA, consumer lag."""
    d = d.with_row(dash.Row("Health"))
    d = d.with_panel(
        single(
            "Workers up",
            "tally processes Prometheus scrapes successfully (job `tally`). Red when one "
            "is down (alert TallyWorkerDown).",
            [prom(f'sum(up{{job="{JOB}"}})', "up"), prom(f'count(up{{job="{JOB}"}})', "of", "B")],
            "none",
            steps((None, "red"), (1, "green")),
        )
    )
    d = d.with_panel(
        single(
            "Dead letters in range",
            "Input messages rejected over the dashboard's time range (any is an alert: "
            "TallyDeadLetters). The reasons are below.",
            [
                prom(
                    "sum(increase(tally_dead_letters_total[$__range]))",
                    "dead letters",
                    instant=True,
                )
            ],
            "none",
            steps((None, "green"), (1, "red")),
        )
    )
    d = d.with_panel(
        single(
            "Pending past SLA",
            "Open orders older than their channel's SLA, not yet timed out (alert "
            "TallyPendingBacklogOverSla above 25 for 5 minutes).",
            [prom(f"sum(tally_pending_orders_over_sla{{{CH_}}})", "orders")],
            "none",
            steps((None, "green"), (1, "yellow"), (25, "red")),
        )
    )
    d = d.with_panel(
        single(
            "Consumer lag",
            "Messages on the input topics not yet read by the workers.",
            [prom("sum(tally_consumer_lag_messages)", "messages")],
            "none",
            steps((None, "green"), (1000, "yellow"), (10000, "red")),
        )
    )
    return d


def _throughput(d: Any) -> Any:
    """Row "Throughput and latency": events in and out, processing latency."""
    d = d.with_row(dash.Row("Throughput and latency"))
    d = d.with_panel(
        ts(
            "Events in",
            "Messages read per second by topic: the inputs (transactions, callbacks) and "
            "the internal topics (links, ticks, success claims).",
            [
                prom(
                    "sum by (topic) (rate(tally_events_consumed_total[$__rate_interval]))",
                    "{{topic}}",
                )
            ],
            "ops",
        )
    )
    d = d.with_panel(
        ts(
            "Events out",
            "Messages sent per second by topic: breaks, postings, status queries, dead "
            "letters, order states, balance snapshots and the internal topics.",
            [
                prom(
                    "sum by (topic) (rate(tally_events_produced_total[$__rate_interval]))",
                    "{{topic}}",
                )
            ],
            "ops",
        )
    )
    d = d.with_panel(
        ts(
            "Processing latency p50 / p99",
            "From the broker timestamp of the message that revealed a break or caused a "
            "posting to the output being sent. Yellow at 200 ms (an aggregated payment's "
            "whole budget), red at 500 ms (people notice).",
            [
                prom(
                    "histogram_quantile(0.5, sum by (le, output) "
                    "(rate(tally_processing_latency_seconds_bucket[$__rate_interval])))",
                    "p50 {{output}}",
                ),
                prom(
                    "histogram_quantile(0.99, sum by (le, output) "
                    "(rate(tally_processing_latency_seconds_bucket[$__rate_interval])))",
                    "p99 {{output}}",
                    "B",
                ),
            ],
            "s",
            steps((None, "green"), (0.2, "yellow"), (0.5, "red")),
            show_thresholds=True,
        )
    )
    return d


def _lag(d: Any) -> Any:
    """Event time to output, consumer lag by topic, status queries."""
    d = d.with_panel(
        ts(
            "Event time to output p50 / p99",
            "From the event time of the evidence to the output: includes the channel's "
            "and the producer's delay and, for pending_timeout / orphan_callback, the "
            "SLA or grace period the timer waited on purpose.",
            [
                prom(
                    "histogram_quantile(0.5, sum by (le, output) "
                    "(rate(tally_event_latency_seconds_bucket[$__rate_interval])))",
                    "p50 {{output}}",
                ),
                prom(
                    "histogram_quantile(0.99, sum by (le, output) "
                    "(rate(tally_event_latency_seconds_bucket[$__rate_interval])))",
                    "p99 {{output}}",
                    "B",
                ),
            ],
            "s",
        )
    )
    d = d.with_panel(
        ts(
            "Consumer lag by topic",
            "Messages not yet read, per input topic (summed over partitions and workers). "
            "Growing lag for 10 minutes is the alert TallyConsumerLagGrowing.",
            [prom("sum by (topic) (tally_consumer_lag_messages)", "{{topic}}")],
            "none",
            steps((None, "green"), (1000, "yellow"), (10000, "red")),
            show_thresholds=True,
        )
    )
    d = d.with_panel(
        ts(
            "Status queries requested",
            "Requests per minute to query a pending order at its channel (S4, and S3 "
            "where a sync success must be verified).",
            [
                prom(
                    f"sum by (channel) (rate(tally_status_queries_total{{{CH_}}}"
                    "[$__rate_interval])) * 60",
                    "{{channel}}",
                )
            ],
            "cpm",
        )
    )
    return d


def _breaks(d: Any) -> Any:
    """Row "Breaks and pending orders": the Prometheus panels."""
    d = d.with_row(dash.Row("Breaks and pending orders"))
    d = d.with_panel(
        ts(
            "Breaks by kind",
            "Real-time breaks per minute by kind, for the selected channels. A 5-minute "
            "rate above 3x the hourly one is the alert TallyBreakRateSpike.",
            [
                prom(
                    f"sum by (kind) (rate(tally_breaks_total{{{CH_}}}[$__rate_interval])) * 60",
                    "{{kind}}",
                )
            ],
            "cpm",
            stacked=True,
        )
    )
    d = d.with_panel(
        ts(
            "Breaks by channel",
            "Real-time breaks per minute by channel.",
            [
                prom(
                    f"sum by (channel) (rate(tally_breaks_total{{{CH_}}}[$__rate_interval])) * 60",
                    "{{channel}}",
                )
            ],
            "cpm",
            stacked=True,
        )
    )
    d = d.with_panel(
        ts(
            "Pending orders by age",
            "Open orders (known, no final answer) by wall-clock age since creation, for "
            "the selected channels.",
            [prom(f"sum by (age) (tally_pending_orders{{{CH_}}})", "{{age}}")],
            "none",
            stacked=True,
            bars=True,
        )
    )
    d = d.with_panel(
        ts(
            "Pending past SLA by channel",
            "Open orders older than the channel's SLA and not yet timed out.",
            [prom(f"sum by (channel) (tally_pending_orders_over_sla{{{CH_}}})", "{{channel}}")],
            "none",
            steps((None, "green"), (25, "red")),
            show_thresholds=True,
        )
    )
    return d


def _breaks_stored(d: Any) -> Any:
    """The breaks as stored in ClickHouse."""
    d = d.with_panel(
        ts(
            "Breaks stored (ClickHouse)",
            "Breaks per interval by kind as stored in ClickHouse, for the selected "
            "channels and merchants (the source finance works from).",
            [BREAKS_OVER_TIME],
            "none",
            stacked=True,
            bars=True,
            w=24,
        )
    )
    d = d.with_panel(
        grid(
            "Latest breaks (ClickHouse)",
            "The 200 newest breaks in the time range for the selected channels and "
            "merchants, with our amount and the channel's. `tally orders show TXN_ID` "
            "has the evidence trail.",
            [LATEST_BREAKS],
            w=24,
            h=10,
        )
    )
    return d


def _dead_letters(d: Any) -> Any:
    """Row "Dead letters"."""
    d = d.with_row(dash.Row("Dead letters"))
    d = d.with_panel(
        ts(
            "Dead letters by reason",
            "Messages dead-lettered per interval by reason (docs/events.md lists them).",
            [
                prom(
                    "sum by (reason) (increase(tally_dead_letters_total[$__rate_interval]))",
                    "{{reason}}",
                )
            ],
            "none",
            steps((None, "green"), (1, "red")),
            bars=True,
        )
    )
    d = d.with_panel(
        grid(
            "Dead letters stored (ClickHouse)",
            "Dead letters in the time range by reason and source topic; the rows hold the "
            "original bytes and the field at fault.",
            [DEAD_LETTERS_STORED],
        )
    )
    return d


def _sink(d: Any) -> Any:
    """Row "ClickHouse sink": rows, batch sizes, insert latency."""
    d = d.with_row(dash.Row("ClickHouse sink"))
    d = d.with_panel(
        ts(
            "Rows written",
            "Rows inserted into ClickHouse per second, by table.",
            [prom("sum by (table) (rate(tally_sink_rows_total[$__rate_interval]))", "{{table}}")],
            "ops",
            w=8,
        )
    )
    d = d.with_panel(
        ts(
            "Batch size p50 / p99",
            "Messages per batch (at most TALLY_SINK_BATCH_SIZE).",
            [
                prom(
                    "histogram_quantile(0.5, sum by (le) "
                    "(rate(tally_sink_batch_messages_bucket[$__rate_interval])))",
                    "p50",
                ),
                prom(
                    "histogram_quantile(0.99, sum by (le) "
                    "(rate(tally_sink_batch_messages_bucket[$__rate_interval])))",
                    "p99",
                    "B",
                ),
            ],
            "none",
            w=8,
        )
    )
    d = d.with_panel(
        ts(
            "Batch insert latency p50 / p99",
            "Time to insert one batch into every table.",
            [
                prom(
                    "histogram_quantile(0.5, sum by (le) "
                    "(rate(tally_sink_batch_seconds_bucket[$__rate_interval])))",
                    "p50",
                ),
                prom(
                    "histogram_quantile(0.99, sum by (le) "
                    "(rate(tally_sink_batch_seconds_bucket[$__rate_interval])))",
                    "p99",
                    "B",
                ),
            ],
            "s",
            steps((None, "green"), (1, "yellow"), (5, "red")),
            w=8,
        )
    )
    return d


def _sink_health(d: Any) -> Any:
    """Sink failures, retries, buffer and ClickHouse up."""
    d = d.with_panel(
        ts(
            "Sink failures and retries",
            "Failed ClickHouse calls by kind and the retries they caused; any failure for "
            "2 minutes is the alert TallySinkFailing.",
            [
                prom(
                    "sum by (kind) (increase(tally_sink_insert_failures_total[$__rate_interval]))",
                    "failures {{kind}}",
                ),
                prom(
                    "sum(increase(tally_sink_retries_total[$__rate_interval]))",
                    "retries",
                    "B",
                ),
            ],
            "none",
            steps((None, "green"), (1, "red")),
        )
    )
    d = d.with_panel(
        ts(
            "Sink buffer and ClickHouse",
            "Messages the sink holds in memory (at most one batch) and whether its last "
            "ClickHouse call succeeded (1) or it is retrying (0).",
            [
                prom("sum(tally_sink_buffered_messages)", "buffered"),
                prom("min(tally_sink_clickhouse_up)", "ClickHouse up", "B"),
            ],
            "none",
        )
    )
    return d
