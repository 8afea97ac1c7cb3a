"""The Prometheus metrics of the worker and the exporter: names and labels follow the
conventions (no per-merchant / per-order label), the figures agree with what the worker
did, balances are the exact amounts (converted only at the edge), the exporter shares a
port between registries and frees it when the last one leaves."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from streams.app import account_balances, create_app
from streams.broker import EmbeddedBroker
from streams.exporter import Exporter
from streams.metrics import AGE_BANDS, DEAD_LETTER_REASONS, age_band, money_gauge
from streams.produce import produce
from streams.worker import WorkerRunner
from tally.core.money import to_decimal
from tally.sim.traffic import SimConfig, generate
from tests.clickhouse import free_port
from tests.streams.streamrun import retarget, stream_settings

ROOT = Path(__file__).resolve().parents[2]
ALLOWED_LABELS = {
    "topic", "kind", "channel", "reason", "output", "age", "partition", "currency", "bucket",
    "table", "le", "version", "implementation", "major", "minor", "patchlevel",
}  # fmt: skip


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def port_closed(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    except OSError:
        return True
    return False


def test_dead_letter_reasons_are_the_documented_codes() -> None:
    doc = (ROOT / "docs" / "events.md").read_text(encoding="utf-8")
    section = doc.split("## Dead-letter reason codes", 1)[1].split("\n## ", 1)[0]
    assert set(re.findall(r"^\| `([a-z_]+)` \|", section, re.M)) == set(DEAD_LETTER_REASONS)


def test_age_bands_and_money_edge() -> None:
    assert [age_band(x) for x in (0, 59.9, 60, 3599, 86400, 10**7)] == [
        "lt_1m", "lt_1m", "1m_10m", "10m_1h", "ge_1d", "ge_1d",
    ]  # fmt: skip
    assert [b for b, _ in AGE_BANDS][-1] == "ge_1d"
    assert money_gauge(123456789, "CNY") == 1234567.89
    assert money_gauge(-5, "JPY") == -5.0


def test_exporter_shares_a_port_and_frees_it() -> None:
    ex = Exporter()
    a, b = CollectorRegistry(), CollectorRegistry()
    Counter("tally_test_a", "a", registry=a).inc(3)
    Counter("tally_test_b", "b", registry=b).inc(5)
    port = free_port()
    ha = ex.attach(a, port, addr="127.0.0.1")
    hb = ex.attach(b, port, addr="127.0.0.1")
    text = scrape(port)
    assert "tally_test_a_total 3.0" in text and "tally_test_b_total 5.0" in text
    ha.close()
    ha.close()  # idempotent
    text = scrape(port)
    assert "tally_test_a_total" not in text and "tally_test_b_total 5.0" in text
    hb.close()
    assert port_closed(port) and ex.ports() == []
    with pytest.raises(OSError):  # a port in use is an error to the caller
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            ex.attach(a, s.getsockname()[1], addr="127.0.0.1")


@pytest.mark.broker
async def test_worker_metrics_agree_with_the_run(broker: EmbeddedBroker) -> None:
    port = free_port()
    s = stream_settings(broker, metrics_port=port)
    sim = generate(SimConfig(events=2500, seed=21), s.policies())
    tally = create_app(s)
    runner = WorkerRunner(tally)
    await runner.start()
    try:
        await produce(s.bootstrap_servers(), retarget(sim.envelopes, s))
        await runner.wait_idle(2.0)
        await asyncio.sleep(2.5)  # one refresh of the state gauges
        text = await asyncio.to_thread(scrape, port)
        balances = account_balances(tally.balances.items())
    finally:
        await runner.stop()
    assert await asyncio.to_thread(port_closed, port)

    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, fam in families.items():
        assert name.startswith(("tally_", "process_", "python_")), name
        if fam.type == "counter":
            assert all(x.name.endswith("_total") for x in fam.samples), name
        for sample in fam.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, (name, sample.labels)
            assert not any("merchant" in k or "txn" in k for k in sample.labels)
    assert not any(
        n.endswith("_created") for n in (x.name for f in families.values() for x in f.samples)
    )

    def values(name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {
            tuple(sorted(x.labels.items())): x.value
            for x in families[name].samples
            if x.name == name + ("_total" if families[name].type == "counter" else "")
        }

    st = tally.stats
    consumed = {dict(k)["topic"]: v for k, v in values("tally_events_consumed").items()}
    assert consumed[s.topic_transactions] == st.consumed[s.topic_transactions]
    assert consumed[s.topic_callbacks] == st.consumed[s.topic_callbacks]
    produced = {dict(k)["topic"]: v for k, v in values("tally_events_produced").items()}
    assert produced[s.topic_breaks] == st.produced[s.topic_breaks] > 0
    by_kind: dict[str, float] = {}
    for k, v in values("tally_breaks").items():
        by_kind[dict(k)["kind"]] = by_kind.get(dict(k)["kind"], 0) + v
    assert {k: v for k, v in by_kind.items() if v} == dict(st.breaks)
    dead = {dict(k)["reason"]: v for k, v in values("tally_dead_letters").items()}
    assert set(DEAD_LETTER_REASONS) <= set(dead)
    assert {k: v for k, v in dead.items() if v} == dict(st.dead_letters)
    assert sum(dead.values()) == sim.malformed

    # the channel balance gauge is the exact balance, converted at the edge only
    gauge = values("tally_channel_balance")
    channels = [b for b in balances.values() if b.kind == "channel"]
    assert channels
    for b in channels:
        for bucket in ("provisional", "confirmed"):
            key = (("bucket", bucket), ("channel", b.owner), ("currency", b.currency))
            exact = to_decimal(b.total(bucket), b.currency)
            assert Decimal(repr(gauge[key])) == exact, (key, gauge[key], exact)

    # every open order is counted once in an age band; latency histograms observed
    pending = sum(values("tally_pending_orders").values())
    assert pending == len(tally.metrics._open)
    count = {
        x.labels["output"]: x.value
        for x in families["tally_processing_latency_seconds"].samples
        if x.name.endswith("_count")
    }
    assert count["break"] == sum(st.breaks.values()) and count["posting"] > 0
    lag = values("tally_consumer_lag_messages")
    assert lag and all(v >= 0 for v in lag.values())
