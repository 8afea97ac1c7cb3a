"""The stream workers: Faust agents that reconcile orders against channel evidence
as it arrives.

In:  `payments.transactions` (our orders) and `payments.callbacks` (the channels'
     sync / notify / query answers), keyed by txn_id; the workers' own internal
     topics (`<app>-links`, `<app>-ticks`, `<app>-success-claims`) and, on recovery,
     their tables' changelogs.
Out: facts, one message each: `payments.breaks`, `payments.postings`,
     `payments.status-queries`, `payments.dead-letter`; snapshots, the changelogs of
     the orders and balances tables: `payments.order-states`, `payments.balances`
     (schemas in `tally/schemas/`, docs/events.md). Prometheus metrics on
     `TALLY_METRICS_PORT`.

The decisions are the pure core's (`tally.core`); this package moves messages, keeps
state in Faust tables and makes each batch durable (`streams.checkpoint`):

    handles     the worker's parts (Tally, WorkerStats), shared by the modules below
    app         create_app: the Faust app, its topics, tables and agents
    agents      the reconcile and claims agents, the idle-tick timer
    intake, emit, recovery    which messages a batch processes, what it sends,
                what a crash left unsent
    checkpoint, positions, offsets, codecs    durability, input positions, log ends,
                table records
    metrics, exporter    Prometheus metrics and their HTTP endpoint
    worker, broker, produce, bench    running a worker, a broker, feeding, benchmarks
"""
