"""tally: streaming real-time clearing and reconciliation for payment platforms.

The repository is layered; a package imports only the ones above it in this list
(checked by tests/test_layers.py):

    tally.core    the pure domain: events, orders, breaks, ledger, realtime, eod,
                  matching, suspense rules, clearing. Plain data and functions, no I/O.
    tally.config  the one settings object (TALLY_* environment), read at the edge
    tally.sim     simulated traffic with every anomaly injected
    streams       the Faust workers: input topics in, breaks/postings/... out
    sinks         output topics in, ClickHouse rows out; state restored from ClickHouse
    recon         statements in, end-of-day classes, suspense, settlement, report out
    tally.chaos   reliability runs: crashes, outages, replay, soak, hostile inputs
    tally.cli     the one `tally` command

`dashboards` (Grafana as code) stands apart: it uses only `tally.core` and
`tally.config`.
"""

__version__ = "0.1.0"
