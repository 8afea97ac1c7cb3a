"""`tally bench stream --json` as a smoke test on the embedded broker: every figure is
there and sane. Speed is measured by the benchmark and never asserted here."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from streams.broker import EmbeddedBroker
from tally.cli import main

pytestmark = pytest.mark.broker


def _positive(x: Any) -> bool:
    return isinstance(x, int | float) and x > 0


def test_bench_stream_json_has_every_figure(
    broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TALLY_BROKER", broker.url)
    monkeypatch.setenv("TALLY_METRICS_PORT", "0")
    monkeypatch.setenv("TALLY_WEB_PORT", "0")
    result = CliRunner().invoke(
        main,
        ["bench", "stream", "--quick", "--rate", "2000", "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)

    assert r["date"] and r["broker"] == broker.bootstrap
    m = r["machine"]
    assert m["cores"] >= 1 and m["python"] and m["faust_streaming"] and m["aiokafka"]
    st = r["settings"]
    assert st["batch_max_events"] > 0 and st["batch_max_ms"] > 0
    assert st["consumer_fetch_max_wait_ms"] > 0 and st["worker_fetch_max_wait_ms"] > 0

    th = r["throughput"]
    fed = th["events_fed"]
    assert fed > 1000 and "first consumed input message" in th["timing"]
    bare, tally = th["bare_faust"], th["tally"]
    for run in (bare, tally):
        assert run["events"] == fed  # every event fed was consumed, once
        assert 0 < run["events_timed"] <= fed
        assert _positive(run["seconds"])
        assert _positive(run["events_per_second"])
        assert _positive(run["cpu_us_per_event"])
    assert _positive(th["tally_vs_bare"]) and _positive(th["cpu_tally_vs_bare"])
    for what in ("produced", "output", "changelog"):
        assert _positive(tally[f"{what}_messages_per_event"])
        assert _positive(tally[f"{what}_bytes_per_event"])
    assert tally["produced_messages_per_event"] == pytest.approx(
        tally["output_messages_per_event"] + tally["changelog_messages_per_event"], abs=0.002
    )
    assert tally["produced_bytes_source"]
    # postings, breaks, claims, ... (order-states and balances are table changelogs)
    assert sum(tally["produced_by_topic"].values()) > 0.1 * fed
    assert sum(tally["changelog_messages_by_topic"].values()) > 0
    assert sum(tally["produced_bytes_by_topic"].values()) > 0
    assert tally["breaks"] > 0 and tally["dead_letters"] > 0  # the simulation has both
    assert tally["startup_seconds"] >= 0 and _positive(tally["drained_seconds"])

    lat = r["latency"]
    assert lat["offered_rate"] == 2000 and lat["events_fed"] > 0
    plain, tlat = lat["plain_consumer"], lat["tally"]
    assert plain["events"] == plain["samples"] == lat["events_fed"]
    assert tlat["events"] == lat["events_fed"]
    assert plain["timestamp_type"]
    assert _positive(plain["achieved_feed_rate"]) and _positive(tlat["achieved_feed_rate"])
    assert tlat["samples"] > 0  # breaks with a latency
    for run in (plain, tlat):
        assert run["p50_ms"] is not None and run["p99_ms"] >= run["p50_ms"]
    assert _positive(lat["p99_tally_vs_plain"])
    assert lat["fetch_max_wait_ms"] == st["consumer_fetch_max_wait_ms"]
    assert "workers" not in r
