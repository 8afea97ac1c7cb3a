"""The sink on the real embedded broker with the real Faust workers, into chDB and
into a real clickhouse-server: every result stored, each exactly once, also when
every topic is replayed into ClickHouse a second time."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from aiokafka import TopicPartition

from sinks.runner import SinkRunner, sink_tables
from streams.app import account_balances, create_app
from streams.offsets import log_ends
from streams.produce import produce
from streams.worker import WorkerRunner
from tally.core.breaks import evidence_trail
from tally.core.messages import order_snapshot
from tally.core.orders import Evidence, OrderState, view
from tally.core.pipeline import Envelope
from tally.core.policy import Policies
from tests.clickhouse import (
    _summary,
    assert_same_results,
    connect_to,
    expected_results,
    stored_results,
)
from tests.streams.streamrun import retarget, stream_settings
from tests.streams.test_broker import scenario

pytestmark = [pytest.mark.clickhouse, pytest.mark.broker]


async def test_every_result_is_stored_exactly_once(
    broker, storage, backend_kind, caplog: pytest.LogCaptureFixture
) -> None:
    s = stream_settings(
        broker, idle_tick_seconds=3600, sink_batch_size=10, sink_batch_seconds=0.2, **storage
    )
    tally = create_app(s)
    worker = WorkerRunner(tally)
    sink = SinkRunner(s)
    await worker.start()
    await sink.start()
    try:
        # something no tally worker writes: the sink logs it, skips it, goes on
        await produce(s.bootstrap_servers(), [Envelope(s.topic_breaks, "x", "{not json")])
        # an order state as published before it left the trail to the sink: stored as is
        await produce(s.bootstrap_servers(), [Envelope(s.topic_order_states, "lg-1", LEGACY)])
        await produce(s.bootstrap_servers(), retarget(scenario(), s))
        await worker.wait_idle(2.0)
        with caplog.at_level(logging.ERROR, logger="tally.sinks"):
            await sink.wait_caught_up(60)
        balances = account_balances(tally.balances.items())
    finally:
        await sink.stop()
        await worker.stop()
    assert sink.stats.bad == {s.topic_breaks: 1}
    assert f"sink skipped {s.topic_breaks}" in caplog.text
    assert sink.stats.max_buffered <= 10 and sink.stats.batches >= 3

    expected = await expected_results(s)
    assert len(expected["breaks"]) >= 6 and expected["queries"] and expected["dead_letters"]
    db = connect_to(storage)
    try:
        stored = stored_results(db)
        assert_same_results(expected, stored)
        # ... and the balances are the worker's own balance table
        assert stored["balances"] == {
            (b.account, b.currency): _summary(b.summary()) for b in balances.values()
        }
        # watermarks and channel transaction claims are kept for restoring a worker
        assert db.query("SELECT count() AS n FROM {db}.watermarks FINAL")[0]["n"] == 4
        assert db.query("SELECT count() AS n FROM {db}.channel_txn_claims FINAL")[0]["n"] >= 8
        # each order's evidence trail, derived from its state by the sink (carried by
        # the old-style message)
        trails = {
            r["txn_id"]: (json.loads(r["evidence"]), json.loads(r["state"]))
            for r in db.query("SELECT txn_id, evidence, state FROM {db}.order_states FINAL")
        }
        assert trails.pop("lg-1")[0] == LEGACY["evidence"]
        assert len(trails) >= 8 and any(len(e) >= 3 for e, _ in trails.values())
        for evidence, state in trails.values():
            assert evidence == evidence_trail(OrderState.from_json(state))

        # every offset the sink committed is a topic's true end: nothing left behind
        ends = await log_ends(s.bootstrap_servers(), list(sink_tables(s)))
        assert {tp: off for tp, off in sink.committed.items() if off} == {
            tp: off for tp, off in ends.items() if off
        }

        # replay every topic into ClickHouse once more (another consumer group, as a
        # sink that lost all its commits would): no query result changes
        # (the replay writes every row once more: the same rows as the first sink, as
        # many as it wrote, and the tables' identities absorb them; count() without
        # FINAL depends on when ClickHouse merges parts, so it is not compared)
        rows_before = db.query("SELECT count() AS n FROM {db}.postings FINAL")[0]["n"]
        replay = SinkRunner(s, group_id=f"{s.app_id}-replay")
        await replay.start()
        try:
            await replay.wait_caught_up(60)
        finally:
            await replay.stop()
        assert replay.stats.rows == sink.stats.rows and replay.stats.rows["postings"] > 0
        assert db.query("SELECT count() AS n FROM {db}.postings FINAL")[0]["n"] == rows_before
        assert_same_results(expected, stored_results(db))
    finally:
        db.close()


async def test_wait_caught_up_sees_the_true_end_of_tansu_logs(broker, storage) -> None:
    """Tansu's ListOffsets reports the base offset of the last batch + 1; the sink must
    not call itself caught up one batch early."""
    s = stream_settings(broker, sink_batch_seconds=0.1, **storage)
    many = [
        Envelope(s.topic_dead_letter, f"k{i}", _dead_letter(i)) for i in range(500)
    ]  # one produce request: large batches
    await produce(s.bootstrap_servers(), many)
    ends = await log_ends(s.bootstrap_servers(), [s.topic_dead_letter])
    assert sum(ends.values()) == 500
    sink = SinkRunner(s)
    await sink.start()
    try:
        await sink.wait_caught_up(60)
    finally:
        await sink.stop()
    db = connect_to(storage)
    try:
        assert db.query("SELECT count() AS n FROM {db}.dead_letters FINAL")[0]["n"] == 500
    finally:
        db.close()
    assert (
        sum(sink.committed.get(TopicPartition(s.topic_dead_letter, p), 0) for p in range(4)) == 500
    )


def _dead_letter(i: int) -> dict[str, object]:
    return {
        "dead_letter_id": f"payments.callbacks:0:{i}",
        "topic": "payments.callbacks",
        "partition": 0,
        "offset": i,
        "key_b64": None,
        "value_b64": "e30=",
        "value_size": 2,
        "value_truncated": False,
        "value_sha256": "",
        "code": "missing_field",
        "reason": "event_id: required field is missing",
        "field": "event_id",
        "dead_at": "2026-11-24T16:00:00.000Z",
    }


def _legacy_order_state() -> dict[str, Any]:
    at = 1796227402513
    st = OrderState(
        "lg-1",
        evidence=[Evidence("lg-1.n", "notify", "success", 100, "CNY", 1, "wechat", "wx-lg", at, 0)],
        seen={"lg-1.n"},
    )
    trail = [{"source": "notify", "status": "success", "at": "2026-12-02T16:03:22.513Z"}]
    return {**order_snapshot(st, view(st, Policies()["wechat"]), at), "evidence": trail}


LEGACY = _legacy_order_state()
