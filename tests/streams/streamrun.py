"""Run the real Faust workers against the real embedded broker, for integration tests:
fresh topics and consumer group per run, results read back from the output topics."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from streams.app import Tally, account_balances, create_app
from streams.broker import EmbeddedBroker
from streams.produce import produce
from streams.worker import WorkerRunner, read_topic
from tally.config import Settings
from tally.core.ledger import Balance
from tally.core.pipeline import TRANSACTIONS, Envelope


@dataclass
class StreamResult:
    breaks: list[dict[str, Any]]
    postings: list[dict[str, Any]]
    queries: list[dict[str, Any]]
    dead_letters: list[dict[str, Any]]
    balances: dict[str, Balance]  # the worker's balances table
    tally: Tally
    extra: dict[str, Any] = field(default_factory=dict)

    def break_set(self) -> set[tuple[str, str]]:
        return {(b["kind"], b["txn_id"]) for b in self.breaks}

    def balance_figures(self) -> dict[str, dict[str, int]]:
        return {k: {a: v for a, v in b.amounts.items() if v} for k, b in self.balances.items()}


def stream_settings(broker: EmbeddedBroker, **overrides: Any) -> Settings:
    run = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "broker": broker.url,
        "app_id": f"tally-test-{run}",
        "partitions": 4,
        "web_port": 0,
        "metrics_port": 0,
        "topic_transactions": f"t{run}.transactions",
        "topic_callbacks": f"t{run}.callbacks",
        "topic_breaks": f"t{run}.breaks",
        "topic_postings": f"t{run}.postings",
        "topic_status_queries": f"t{run}.status-queries",
        "topic_dead_letter": f"t{run}.dead-letter",
        "topic_order_states": f"t{run}.order-states",
        "topic_balances": f"t{run}.balances",
        "log_level": "warning",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def retarget(envelopes: Iterable[Envelope], s: Settings) -> list[Envelope]:
    """Point envelopes written for the default topic names at this run's topics."""
    out = []
    for e in envelopes:
        topic = s.topic_transactions if e.topic == TRANSACTIONS else s.topic_callbacks
        out.append(Envelope(topic, e.key, e.value))
    return out


async def run_stream(
    s: Settings,
    batches: Iterable[Iterable[Envelope]],
    quiet_seconds: float = 2.0,
) -> StreamResult:
    """Start a worker, produce each batch (waiting for idle after each), stop."""
    tally = create_app(s)
    runner = WorkerRunner(tally)
    await runner.start()
    after_batch: list[dict[str, int]] = []
    try:
        for batch in batches:
            await produce(s.bootstrap_servers(), retarget(batch, s))
            await runner.wait_idle(quiet_seconds)
            after_batch.append(dict(tally.stats.produced))
        balances = account_balances(tally.balances.items())
    finally:
        await runner.stop()
    bootstrap = s.bootstrap_servers()
    return StreamResult(
        breaks=list(
            {b["break_id"]: b for b in await read_topic(bootstrap, s.topic_breaks)}.values()
        ),
        postings=await read_topic(bootstrap, s.topic_postings),
        queries=await read_topic(bootstrap, s.topic_status_queries),
        dead_letters=await read_topic(bootstrap, s.topic_dead_letter),
        balances=balances,
        tally=tally,
        extra={"produced_after_batch": after_batch},
    )
