"""The soak (tally.chaos.soak): its flatness judge on made-up curves, and a short
live run that exercises the sampler (worker in this process, sink and feeder as child
processes), the CSV, the chart (`tally bench soak` draws it) and the table."""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker
from tally.chaos.soak import Sample, judge, soak, table
from tally.cli.outage import chart
from tests.streams.streamrun import stream_settings


def curve(
    n: int = 60, rss: float = 0.0, lag: float = 0.0, p99: float = 0.0, every: float = 5.0
) -> list[Sample]:
    """n samples `every` s apart; RSS, lag and p99 grow by the given amount per sample."""
    return [
        Sample(
            t_s=i * every,
            events=i * 500,
            orders=i * 150,
            rss_worker_mb=200 + rss * i + (i % 3) * 0.5,  # a little noise
            rss_sink_mb=300 + (i % 2) * 0.5,
            worker_lag=int(20 + lag * i + (i % 4)),
            sink_lag=int(300 + (i % 5) * 40),
            breaks=10,
            p50_ms=60.0,
            p99_ms=150.0 + p99 * i,
            max_ms=200.0 + p99 * i,
        )
        for i in range(n)
    ]


def test_judge_accepts_a_flat_run() -> None:
    v = judge(curve(), rate=100)
    assert v.flat, v.problems
    assert v.figures["rss_worker_mb_per_min"] < 1.0
    assert v.figures["samples"] == 60 and v.figures["window_minutes"] > 3


def test_judge_refuses_growing_memory_lag_and_latency() -> None:
    v = judge(curve(rss=0.5), rate=100)  # 6 MB/min
    assert not v.flat and any("worker RSS grows" in p for p in v.problems)
    # bytes per order held: 0.5 MB per 150 orders
    assert v.figures["worker_rss_bytes_per_order_held"] == pytest.approx(3495, rel=0.01)
    v = judge(curve(lag=30), rate=100)  # 30 messages more every 5 s
    assert not v.flat and any("worker lag grows" in p for p in v.problems)
    v = judge(curve(p99=100), rate=100)
    assert not v.flat and any("p99 latency grows" in p for p in v.problems)
    assert not judge(curve(n=2), rate=100).flat  # too few samples to say


@pytest.mark.broker
async def test_a_short_soak_samples_writes_and_judges(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    s = stream_settings(broker)
    samples, verdict = await soak(s, seconds=16, rate=100, out=tmp_path, interval=2)
    assert len(samples) >= 6
    assert [x.t_s for x in samples] == sorted(x.t_s for x in samples)
    assert all(x.rss_worker_mb > 20 and x.rss_sink_mb > 20 for x in samples)
    assert samples[-1].events >= 800  # ~1,600 fed; a loaded machine may lag behind
    assert samples[-1].orders > 100
    assert any(x.breaks for x in samples) and any(x.p99_ms for x in samples)
    assert set(verdict.figures) >= {"rss_worker_mb_per_min", "worker_lag_max", "sink_lag_max"}
    rows = list(csv.DictReader((tmp_path / "soak.csv").open()))
    assert len(rows) == len(samples) and float(rows[-1]["rss_sink_mb"]) > 0
    svg = ET.fromstring(chart(samples, rate=100))
    assert len(svg.findall(".//{http://www.w3.org/2000/svg}polyline")) == 6
    assert table(samples, every_s=5).count("\n") >= 4
