"""Restoring worker state: Faust's own recovery (which the restore feeds) must give
back domain objects, and the restore does nothing when there is nothing to do.
(The full restart on a fresh broker is in test_sinks_faults.py.)"""

from __future__ import annotations

import pytest

from sinks.restore import restore_from_clickhouse
from streams.app import create_app
from streams.produce import produce
from streams.worker import WorkerRunner
from tally.core.breaks import ChannelTxnClaim
from tally.core.ledger import Balance
from tally.core.orders import OrderState
from tests.clickhouse import drop_database, storage_values
from tests.streams.streamrun import retarget, stream_settings
from tests.streams.test_broker import scenario

pytestmark = [pytest.mark.clickhouse, pytest.mark.broker]


async def test_a_restarted_worker_recovers_domain_objects(broker) -> None:
    """The tables' changelogs are written and read with the tally codecs, so a
    recovered table holds OrderState / Balance / ChannelTxnClaim, not dicts.

    (Not checked here: that it holds the *latest* values. On Tansu it may not: Faust
    recovers a changelog up to the ListOffsets answer, which Tansu gives as the last
    batch's base offset + 1, so the tail of a multi-record batch is not replayed.
    `sinks.restore` ends every changelog partition with a one-record batch for that
    reason; see test_sinks_faults.py.)"""
    s = stream_settings(broker, idle_tick_seconds=3600)
    first = WorkerRunner(create_app(s))
    await first.start()
    try:
        await produce(s.bootstrap_servers(), retarget(scenario(), s))
        await first.wait_idle(2.0)
        orders = set(first.tally.orders)
    finally:
        await first.stop()
    second = WorkerRunner(create_app(s))
    await second.start()
    try:
        t = second.tally
        assert all(isinstance(v, OrderState) for v in t.orders.values())
        assert all(isinstance(v, Balance) for v in t.balances.values())
        assert t.claims and all(isinstance(v, ChannelTxnClaim) for v in t.claims.values())
        assert set(t.orders) == orders
        # and the recovered worker works on them: an event already applied is known
        await produce(s.bootstrap_servers(), retarget(scenario()[:1], s))
        await second.wait_idle(1.0)
        assert second.tally.stats.duplicates == 1
    finally:
        await second.stop()


async def test_restore_with_nothing_stored_does_nothing(
    broker, request: pytest.FixtureRequest
) -> None:
    values = storage_values(request, "chdb")
    s = stream_settings(broker, **values)
    report = await restore_from_clickhouse(s)
    assert not report.restored and report.reason == "ClickHouse holds no state to restore"
    assert report.messages == 0 and "skipped" in report.render()
    drop_database(values)
