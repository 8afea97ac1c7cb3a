"""Benchmarks: `tally bench core` (the pure domain core, no broker) and
`tally bench stream` (the stream workers on a broker, next to their ceilings).

`tally bench stream` measures, on one broker, on the same input, back to back:

(a) a bare Faust agent: a `faust.App` built with exactly the options tally's app is
    built with (`create_app`'s, read back from the app it returns), one agent over
    the transactions and callbacks topics taking `stream.take_events(max, within)`
    batches (tally's batch size and time) and doing nothing with them: the
    framework's ceiling;
(b) tally, every check on (`create_app` + `WorkerRunner`): events/s, its ratio to
    (a), what it produces per input event (messages and bytes, plus the table
    changelogs), CPU per event;
(c) latency at a fixed offered rate: tally's event-to-break latency next to a plain
    aiokafka consumer's receive latency (the broker's floor), both measured from the
    message's broker timestamp, with the same `fetch_max_wait_ms`;
(d) optionally (`workers=2`) one vs two `python -m tally run --no-sink` processes in
    one consumer group.

Throughput runs: every event is produced first, then the worker is started. The
time is taken from the first consumed input message to the last one (worker
start-up and the first rebalance are excluded): a poller samples the count of
consumed input messages every few milliseconds and the process CPU time with it;
the events counted are those consumed between the first and the last sample that
saw the count change, and the CPU time is the process's over the same window.
Every run has its own topics and consumer group (`_isolated`).
"""

from streams.bench.common import BenchResult, Meter, bench_core, machine, machine_info, now_iso
from streams.bench.report import render, run_stream_bench
from streams.bench.single import (
    bare_app,
    bench_bare_faust,
    bench_plain_latency,
    bench_tally,
    bench_tally_latency,
    produced_figures,
)
from streams.bench.workers import bench_workers

__all__ = [
    "BenchResult",
    "Meter",
    "bare_app",
    "bench_bare_faust",
    "bench_core",
    "bench_plain_latency",
    "bench_tally",
    "bench_tally_latency",
    "bench_workers",
    "machine",
    "machine_info",
    "now_iso",
    "produced_figures",
    "render",
    "run_stream_bench",
]
