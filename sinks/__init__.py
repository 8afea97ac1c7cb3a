"""The sink: the workers' output topics into ClickHouse, and ClickHouse back into a
fresh broker.

In:  `payments.order-states`, `payments.breaks`, `payments.postings`,
     `payments.balances`, `payments.status-queries`, `payments.dead-letter` and two
     table changelogs of the workers (watermarks, channel transaction claims).
Out: rows in ClickHouse (chDB or a server), each exactly once as the queries read
     them (`sinks.runner`: offsets committed after the insert; ReplacingMergeTree +
     FINAL); a message that does not fit (`sinks.rows.BadMessage`, e.g. a posting
     whose legs do not net to zero) is skipped, logged with its reason and counted.
     Back out: the stored state into the table changelogs of an empty broker
     (`sinks.restore`). What is stored is read by `recon`, the CLI (`sinks.queries`)
     and Grafana.

    runner      SinkRunner: consume, batch, insert, commit; retries while ClickHouse is down
    rows        message -> rows, per table
    backend     chDB or clickhouse-server behind one interface
    schema, migrations, cluster    the schema (applied in order), its DDL, a cluster's
    queries     what the CLI and dashboards read
    restore     ClickHouse -> changelog topics, for a worker on a fresh broker
    metrics     the sink's Prometheus metrics
"""
