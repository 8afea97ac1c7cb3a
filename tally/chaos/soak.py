"""Soak: a long run at a steady rate (half of one worker's measured capacity), with
memory, lag and latency sampled every few seconds; they must stay flat.

Three processes, so that each one's memory is its own:

- the worker: this process (`WorkerRunner`, as `tally run --no-sink` runs it), so
  that event-to-break latency is read exactly from the worker's own samples (the
  broker timestamp of the message that revealed a break to the break's batch
  committed: `tally demo --live`'s measure);
- the sink: `python -m tally sink` in a child process (chDB in its own directory, or
  the configured ClickHouse server);
- the feeder: `python -m tally.chaos.soak feed` in a child process, the simulator's
  endless live stream (event time = wall clock) at the rate.

Every `interval` seconds (`Sample`): RSS of worker and sink (/proc/PID/status), the
worker's lag (true log ends of the inputs minus its next offsets), the sink's (true
log ends of its topics minus its committed offsets), events consumed, orders held,
and p50/p99/max latency of the breaks committed since the last sample. `judge`
decides flatness over the last two thirds of the samples (the first is warm-up).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import dataclasses
import itertools
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from sinks.runner import sink_group, sink_tables
from streams.app import Tally, create_app
from streams.bench import bench_tally
from streams.offsets import EndProbe
from streams.produce import produce
from streams.worker import WorkerRunner, percentiles
from tally.chaos.replay import isolated, settings_env
from tally.config import Settings
from tally.core.pipeline import TRANSACTIONS, Envelope
from tally.sim.traffic import SimConfig, generate, live_stream

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)


@dataclass
class Sample:
    t_s: float  # since the feed started
    events: int  # input messages consumed by the worker so far
    orders: int  # orders the worker holds (its orders table)
    rss_worker_mb: float
    rss_sink_mb: float
    worker_lag: int | None  # input messages not yet processed (None: the broker did
    sink_lag: int | None  # output messages not yet stored     not answer in time)
    breaks: int  # breaks committed in this interval (latency samples)
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None


@dataclass
class Verdict:
    flat: bool
    problems: list[str]
    figures: dict[str, Any]


def rss_mb(pid: int) -> float:
    """Resident set size of a process, MB (Linux /proc)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 for fewer than two points)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def judge(
    samples: list[Sample],
    rate: float,
    *,
    rss_mb_per_min: float = 1.0,
    lag_seconds: float = 5.0,
    p99_factor: float = 1.5,
) -> Verdict:
    """Flat, over the last two thirds of the run: RSS grows less than `rss_mb_per_min`
    (least-squares slope, worker and sink each); the lags grow by less than
    `lag_seconds` of input over that window and end below it; the p99 latency of the
    last third is at most `p99_factor` times the middle third's (+100 ms)."""
    tail = samples[len(samples) // 3 :]
    if len(tail) < 3:
        return Verdict(False, [f"too few samples to judge: {len(samples)}"], {})
    minutes = [s.t_s / 60 for s in tail]
    window_min = minutes[-1] - minutes[0]
    fig: dict[str, Any] = {"window_minutes": round(window_min, 2), "samples": len(samples)}
    problems: list[str] = []
    for who in ("worker", "sink"):
        ys = [getattr(s, f"rss_{who}_mb") for s in tail]
        k = slope(minutes, ys)
        fig[f"rss_{who}_mb_per_min"] = round(k, 3)
        fig[f"rss_{who}_mb"] = [round(ys[0], 1), round(ys[-1], 1)]
        if k > rss_mb_per_min:
            problems.append(f"{who} RSS grows {k:.2f} MB/min (limit {rss_mb_per_min})")
    held = slope([float(s.orders) for s in tail], [s.rss_worker_mb for s in tail])
    fig["worker_rss_bytes_per_order_held"] = round(held * 1024 * 1024) if held else None
    bound = rate * lag_seconds
    for who in ("worker", "sink"):
        pts = [
            (m, float(v))
            for m, s in zip(minutes, tail, strict=True)
            if (v := getattr(s, f"{who}_lag")) is not None
        ]
        if len(pts) < 3:
            problems.append(f"{who} lag: too few samples ({len(pts)})")
            continue
        ys = [y for _, y in pts]
        growth = slope([m for m, _ in pts], ys) * window_min
        fig[f"{who}_lag_growth"] = round(growth)
        fig[f"{who}_lag_max"] = int(max(ys))
        if growth > bound or ys[-1] > bound:
            problems.append(
                f"{who} lag grows by {growth:,.0f} messages, ends at {ys[-1]:,.0f} "
                f"(limit {bound:,.0f}: {lag_seconds:.0f} s of input)"
            )
    third = max(1, len(tail) // 2)
    mid = [s.p99_ms for s in tail[:third] if s.p99_ms is not None]
    last = [s.p99_ms for s in tail[third:] if s.p99_ms is not None]
    if mid and last:
        a, b = sum(mid) / len(mid), sum(last) / len(last)
        fig["p99_ms_middle_last"] = [round(a, 1), round(b, 1)]
        if b > p99_factor * a + 100:
            problems.append(f"p99 latency grows from {a:.0f} ms to {b:.0f} ms")
    return Verdict(not problems, problems, fig)


class Sampler:
    """Reads one `Sample` from the worker (in this process), the sink process and the
    broker."""

    def __init__(self, tally: Tally, sink_pid: int) -> None:
        self.tally = tally
        self.sink_pid = sink_pid
        s = tally.settings
        self.inputs = [s.topic_transactions, s.topic_callbacks]
        self.sink_topics = list(sink_tables(s))
        self.probe = EndProbe(s.bootstrap_servers())
        self.group = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers(),
            group_id=sink_group(s),
            enable_auto_commit=False,
        )
        self.t0 = time.monotonic()

    async def start(self) -> None:
        await self.probe.start()
        await self.group.start()
        self.t0 = time.monotonic()

    async def stop(self) -> None:
        for c in (self.probe, self.group):
            with contextlib.suppress(Exception):
                await c.stop()

    async def _lags(self) -> tuple[int, int]:
        tps = await self.probe.partitions(self.inputs + self.sink_topics)
        ends = await self.probe.ends(tps, timeout=15.0)
        pos = self.tally.stats.positions
        worker = sum(
            max(0, end - pos.get((tp.topic, tp.partition), 0))
            for tp, end in ends.items()
            if tp.topic in self.inputs
        )
        sink = await behind(
            self.group, {tp: e for tp, e in ends.items() if tp.topic not in self.inputs}
        )
        return worker, sum(sink.values())

    async def sample(self) -> Sample:
        stats = self.tally.stats
        n = len(stats.latencies_ms)
        window = stats.latencies_ms[:n]
        del stats.latencies_ms[:n]  # the worker keeps a bounded list: read it empty
        lat = percentiles(window)
        worker_lag: int | None = None
        sink_lag: int | None = None
        try:
            worker_lag, sink_lag = await self._lags()
        except (TimeoutError, KafkaError) as exc:  # a loaded machine: a gap in the curve
            log.warning("soak: no lag in this sample: %r", exc)
        return Sample(
            t_s=round(time.monotonic() - self.t0, 2),
            events=sum(v for k, v in stats.consumed.items() if k in self.inputs),
            orders=len(self.tally.orders),
            rss_worker_mb=round(rss_mb(os.getpid()), 1),
            rss_sink_mb=round(rss_mb(self.sink_pid), 1),
            worker_lag=worker_lag,
            sink_lag=sink_lag,
            breaks=len(window),
            p50_ms=_r(lat.get("p50")),
            p99_ms=_r(lat.get("p99")),
            max_ms=_r(max(window) if window else None),
        )


async def behind(group: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> dict[str, int]:
    """Per topic: messages up to `ends` past the group's committed offsets."""
    out: dict[str, int] = {}
    for tp, end in ends.items():
        done = await group.committed(tp) if end > 0 else end
        out[tp.topic] = out.get(tp.topic, 0) + max(0, end - (done or 0))
    return out


async def lags(s: Settings) -> tuple[int, dict[str, int]]:
    """(input messages the workers' group has not committed, and per sink topic the
    messages the sink's group has not committed: not stored yet)."""
    inputs = [s.topic_transactions, s.topic_callbacks]
    probe = EndProbe(s.bootstrap_servers())
    groups = [
        AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers(), group_id=g, enable_auto_commit=False
        )
        for g in (s.app_id, sink_group(s))
    ]
    await probe.start()
    try:
        for g in groups:
            await g.start()
        ends = await probe.ends(await probe.partitions(inputs + list(sink_tables(s))))
        worker = await behind(groups[0], {tp: e for tp, e in ends.items() if tp.topic in inputs})
        sink = await behind(groups[1], {tp: e for tp, e in ends.items() if tp.topic not in inputs})
        return sum(worker.values()), sink
    finally:
        for c in (probe, *groups):
            with contextlib.suppress(Exception):
                await c.stop()


def _tail(path: Path, n: int = 2000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def child(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    out = open(log_path, "ab")  # noqa: SIM115 - the child owns it
    p = subprocess.Popen(
        [sys.executable, "-m", *args],
        env={**base, **env},
        cwd=ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    out.close()
    return p


def end_child(p: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGINT (a clean stop: the sink writes what it holds), then SIGKILL."""
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGINT)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
    return int(p.returncode)


async def measure_capacity(s: Settings, events: int = 20_000, seed: int = 3) -> float:
    """One worker's throughput (events/s) on this broker: `tally bench stream`'s (b)."""
    sim = generate(SimConfig(events=events, seed=seed), s.policies())
    r = await bench_tally(s, sim.envelopes)
    rate = r.get("events_per_second") or 0.0
    if rate <= 0:
        raise RuntimeError(f"could not measure the capacity with {events:,} events: {r}")
    return float(rate)


async def soak(
    s: Settings, seconds: float, rate: float, out: Path, interval: float = 5.0
) -> tuple[list[Sample], Verdict]:
    """Feed `rate` events/s for `seconds` to a worker (here) and a sink (a child),
    sample every `interval` s; write soak.csv to `out`."""
    s = isolated(s, "soak")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tally-soak-") as data:
        # the sink child's own chDB directory (unless a ClickHouse server is configured)
        env = {**settings_env(s), "TALLY_DATA_DIR": data}
        samples = await _run(s, env, seconds, rate, Path(data), interval)
    verdict = judge(samples, rate)
    write_csv(samples, out / "soak.csv")
    return samples, verdict


async def _run(
    s: Settings, env: dict[str, str], seconds: float, rate: float, logs: Path, interval: float
) -> list[Sample]:
    tally = create_app(s)
    worker = WorkerRunner(tally)
    await worker.start()
    sink = child(["tally", "sink"], env, logs / "sink.log")
    feed = child(
        ["tally.chaos.soak", "feed", "--rate", str(rate), "--seconds", str(seconds)],
        env,
        logs / "feed.log",
    )
    sampler = Sampler(tally, sink.pid)
    samples: list[Sample] = []
    try:
        await sampler.start()
        while feed.poll() is None:
            # on a fixed schedule: the time a sample takes does not shift the next
            await asyncio.sleep(interval - (time.monotonic() - sampler.t0) % interval)
            worker._check_running()
            if sink.poll() is not None:
                raise RuntimeError(
                    f"the sink stopped ({sink.returncode}): {_tail(logs / 'sink.log')}"
                )
            samples.append(await sampler.sample())
        if feed.returncode != 0:
            raise RuntimeError(f"the feeder failed ({feed.returncode}): {_tail(logs / 'feed.log')}")
    finally:
        await sampler.stop()
        end_child(feed)
        end_child(sink)
        await worker.stop()
    return samples


def write_csv(samples: list[Sample], path: Path) -> None:
    names = [f.name for f in dataclasses.fields(Sample)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([names] + [[_c(getattr(x, n)) for n in names] for x in samples])


def _c(v: Any) -> Any:
    return "" if v is None else v


def table(samples: list[Sample], every_s: float = 300.0) -> str:
    """A Markdown table: one row per `every_s` seconds of the run (and the last)."""
    head = (
        "| minute | events | orders held | RSS worker MB | RSS sink MB | worker lag | "
        "sink lag | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|---|"
    )
    rows, next_t = [head], 0.0
    for i, smp in enumerate(samples):
        if smp.t_s >= next_t or i == len(samples) - 1:
            rows.append(
                f"| {smp.t_s / 60:.1f} | {smp.events:,} | {smp.orders:,} | "
                f"{smp.rss_worker_mb:,.0f} | {smp.rss_sink_mb:,.0f} | {_f(smp.worker_lag)} | "
                f"{_f(smp.sink_lag)} | {_f(smp.p50_ms)} | {_f(smp.p99_ms)} |"
            )
            next_t = smp.t_s + every_s
    return "\n".join(rows)


def _f(x: float | None) -> str:
    return "" if x is None else f"{x:,.0f}"


# ------------------------------------------------------------------ the feeder


def _feed_stream(s: Settings, rate: float, seconds: float) -> Iterator[Envelope]:
    topics = {TRANSACTIONS: s.topic_transactions}
    for e in itertools.islice(live_stream(rate, s.policies()), int(rate * seconds)):
        yield Envelope(topics.get(e.topic, s.topic_callbacks), e.key, e.value)


def feed_main(argv: list[str]) -> int:
    """`python -m tally.chaos.soak feed --rate R --seconds S`, settings from TALLY_*."""
    p = argparse.ArgumentParser(prog="tally.chaos.soak feed")
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--seconds", type=float, required=True)
    a, s = p.parse_args(argv), Settings()
    asyncio.run(produce(s.bootstrap_servers(), _feed_stream(s, a.rate, a.seconds), rate=a.rate))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["feed"]:
        sys.exit("usage: python -m tally.chaos.soak feed --rate R --seconds S")
    sys.exit(feed_main(sys.argv[2:]))
