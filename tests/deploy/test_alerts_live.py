"""A real Prometheus (Debian's `prometheus`) scrapes a live worker and sink processing
simulated traffic on the real embedded broker, evaluates the real alert rules, and the
PromQL of every Prometheus panel of the dashboards and every alert expression (without
its threshold: `<query> <op> <number>` -> `<query>`) returns data.

Dashboard variables are expanded as Grafana would for "All" (`$channel` -> `.*`, its
allValue), `$currency` -> CNY, `$__rate_interval` -> 10s (4 x the 1 s scrape interval
here, rounded up), `$__range` -> 1m.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashboards.build import DASHBOARDS, as_dict
from sinks.runner import SinkRunner
from streams.app import create_app
from streams.broker import EmbeddedBroker
from streams.produce import produce
from streams.worker import WorkerRunner
from tally.core.pipeline import TRANSACTIONS, Envelope
from tally.sim.traffic import live_stream
from tests.clickhouse import free_port, get_chdb_dir, need, unique_db
from tests.deploy.test_alerts import RULES, alerts, split_threshold
from tests.streams.streamrun import stream_settings

pytestmark = pytest.mark.broker

TRAFFIC_SECONDS = 25
RATE = 150  # messages per second


class Prometheus:
    def __init__(self, binary: str, root: Path, target_port: int) -> None:
        self.root = root
        self.port = free_port()
        (root / "data").mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in RULES],
            "scrape_configs": [
                {
                    "job_name": "tally",
                    "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
                }
            ],
        }
        (root / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.cmd = [
            binary,
            f"--config.file={root / 'prometheus.yml'}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        log = open(self.root / "prometheus.log", "wb")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("prometheus exited: " + self.log())
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1)
                return
            time.sleep(0.2)
        raise RuntimeError("prometheus not ready: " + self.log())

    def log(self) -> str:
        return (self.root / "prometheus.log").read_text(errors="replace")[-2000:]

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            doc = json.loads(r.read())
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str) -> list[Any]:
        data = self.api("query", query=expr)
        result: list[Any] = data["result"]
        return result

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture()
def prometheus_binary() -> Iterator[str]:
    found = shutil.which("prometheus")
    need(found is not None, "prometheus is not installed (Debian package `prometheus`)")
    assert found is not None
    yield found


def grafana_expand(expr: str) -> str:
    return (
        expr.replace("$__rate_interval", "10s")
        .replace("$__range", "1m")
        .replace("$channel", ".*")
        .replace("$currency", "CNY")
    )


def dashboard_promql() -> list[tuple[str, str]]:
    out = []
    for uid in DASHBOARDS:
        for p in as_dict(uid)["panels"]:
            for t in p.get("targets", []):
                if "expr" in t:
                    out.append((f"{uid} / {p['title']} / {t['refId']}", t["expr"]))
    return out


async def test_prometheus_scrapes_a_live_worker_and_every_query_returns_data(
    broker: EmbeddedBroker,
    prometheus_binary: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    port = free_port()
    s = stream_settings(
        broker,
        metrics_port=port,
        data_dir=str(get_chdb_dir(request)),
        clickhouse_database=unique_db(),
        sink_batch_seconds=0.5,
    )
    prom = Prometheus(prometheus_binary, tmp_path, port)
    tally = create_app(s)
    worker = WorkerRunner(tally)
    sink = SinkRunner(s)
    await worker.start()
    await sink.start()
    await asyncio.to_thread(prom.start)
    try:
        topics = {TRANSACTIONS: s.topic_transactions}

        def traffic() -> Iterator[Envelope]:
            for e in live_stream(RATE, s.policies(), seed=5):
                yield Envelope(topics.get(e.topic, s.topic_callbacks), e.key, e.value)

        feeder = asyncio.ensure_future(produce(s.bootstrap_servers(), traffic(), rate=RATE))
        await asyncio.sleep(TRAFFIC_SECONDS)
        feeder.cancel()
        with contextlib.suppress(BaseException):
            await feeder
        await asyncio.sleep(3)  # a few more scrapes and rule evaluations

        # the worker's own view and Prometheus' agree on what was consumed
        consumed = await asyncio.to_thread(
            prom.query, f'sum(tally_events_consumed_total{{topic="{s.topic_transactions}"}})'
        )
        assert consumed and float(consumed[0]["value"][1]) > RATE  # many seconds' worth
        targets = await asyncio.to_thread(prom.api, "targets")
        assert [t["health"] for t in targets["activeTargets"]] == ["up"]

        missing = []
        for where, expr in dashboard_promql():
            if not await asyncio.to_thread(prom.query, grafana_expand(expr)):
                missing.append(f"{where}: {expr}")
        for rule in alerts():
            query, _op, _value = split_threshold(str(rule["expr"]))
            if not await asyncio.to_thread(prom.query, query):
                missing.append(f"alert {rule['alert']}: {query}")
        assert not missing, "no data:\n" + "\n".join(missing)

        # every rule loaded and evaluated without error
        groups = (await asyncio.to_thread(prom.api, "rules"))["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) == len(alerts())
        assert all(r["health"] == "ok" for r in rules), [r.get("lastError") for r in rules]
        # what the traffic must have shown
        breaks = await asyncio.to_thread(prom.query, "sum(tally_breaks_total)")
        assert float(breaks[0]["value"][1]) > 0
        rows = await asyncio.to_thread(prom.query, "sum(tally_sink_rows_total)")
        assert float(rows[0]["value"][1]) > 0
    finally:
        prom.stop()
        await sink.stop()
        await worker.stop()
