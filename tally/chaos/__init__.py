"""Reliability runs: what tally survives, measured (docs/reliability.md).

In: the simulator's traffic and statement samples, worker and sink processes of this
tree, the embedded broker, ClickHouse. Out: figures (crashes, outages, hostile inputs
survived; what was lost: nothing) and a non-zero exit on any difference.

    storm    kill -9 storms: a simulated day uninterrupted vs. with workers killed
    outage   ClickHouse stopped mid-run; the broker restarted and restored
    replay   the whole input log again, from offset 0, into a fresh worker
    soak     a long run at half a worker's capacity: memory, lag and latency sampled
    hostile  generated hostile input messages and mutated statement files

Above `recon` and below `tally.cli` in the layers (tests/test_layers.py).
"""
