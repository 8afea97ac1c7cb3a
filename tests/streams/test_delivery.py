"""Integration, real Faust workers on the real embedded Tansu broker: at-least-once
delivery is harmless (the same events twice change nothing) and poison is parked
(1,000 malformed messages interleaved with good ones)."""

from __future__ import annotations

from collections import Counter

import pytest

from streams.app import create_app
from streams.worker import WorkerRunner
from tally.core.pipeline import CALLBACKS, TRANSACTIONS, Envelope, LocalPipeline
from tally.core.policy import Policies
from tally.sim.traffic import SimConfig, generate
from tests.streams.streamrun import StreamResult, run_stream, stream_settings

pytestmark = pytest.mark.broker


def net_balances(res: StreamResult) -> dict[str, dict[str, int]]:
    return res.balance_figures()


async def test_same_1000_events_twice_change_nothing(broker) -> None:
    sim = generate(
        SimConfig(events=1000, seed=3, malformed_rate=0.0, duplicate_delivery_rate=0.0),
        Policies(),
    )
    events = sim.envelopes
    assert len(events) >= 1000

    once = await run_stream(stream_settings(broker, idle_tick_seconds=3600), [events])
    twice = await run_stream(
        stream_settings(broker, idle_tick_seconds=3600), [events, list(events)]
    )

    assert once.break_set() == twice.break_set()
    assert once.break_set() == sim.expected
    assert net_balances(once) == net_balances(twice)
    assert net_balances(once)  # there is something to compare
    # the second delivery produced nothing at all: no posting, break, status query,
    # snapshot or dead letter
    first, second = twice.extra["produced_after_batch"]
    assert first == second
    # (how many status queries a pending order got before its answer arrived follows
    # how the two input topics were interleaved, docs/realtime.md: not compared)
    assert twice.tally.stats.duplicates >= len(events)
    assert not once.dead_letters and not twice.dead_letters


def one_mib_payloads(n: int) -> list[Envelope]:
    out = []
    for i in range(n):
        body = {"event_id": f"big-{i}", "txn_id": f"big-{i}", "memo": "x" * (1024 * 1024)}
        out.append(Envelope(TRANSACTIONS if i % 2 else CALLBACKS, f"big-{i}", body))
    return out


async def test_1000_malformed_messages_are_dead_lettered_and_good_ones_processed(
    broker,
) -> None:
    # ~1,000 malformed messages of every variant interleaved with good traffic, plus
    # a few 1 MiB payloads
    sim = generate(
        SimConfig(events=4000, seed=5, malformed_rate=0.26, duplicate_delivery_rate=0.0),
        Policies(),
    )
    big = one_mib_payloads(4)
    events = list(sim.envelopes)
    for i, env in enumerate(big):
        events.insert((i + 1) * len(events) // (len(big) + 1), env)
    malformed = sim.malformed + len(big)
    assert malformed >= 1000

    res = await run_stream(stream_settings(broker, idle_tick_seconds=3600), [events])

    # every bad one is in the dead-letter topic, with its reason
    assert len(res.dead_letters) == malformed
    reasons = Counter(d["code"] for d in res.dead_letters)
    assert reasons["too_large"] >= len(big)
    assert set(reasons) >= {
        "bad_json",
        "missing_field",
        "bad_amount",
        "negative_amount",
        "unknown_enum",
        "wrong_type",
        "too_large",
        "bad_currency",
        "bad_timestamp",
        "key_mismatch",
    }
    for d in res.dead_letters:
        assert d["reason"] and d["topic"] in (
            res.tally.settings.topic_transactions,
            res.tally.settings.topic_callbacks,
        )
        assert d["offset"] >= 0 and d["value_size"] >= 0
    big_letters = [d for d in res.dead_letters if d["value_size"] > 1024 * 1024]
    assert len(big_letters) == len(big) and all(d["value_truncated"] for d in big_letters)

    # every good one was processed: the stream found exactly the injected breaks and
    # its balances equal the pure core's over the same input
    assert res.break_set() == sim.expected
    local = LocalPipeline(partitions=4, clock=lambda: 0)
    local.feed_all(events)
    expect = {k: {a: v for a, v in b.amounts.items() if v} for k, b in local.book.balances.items()}
    assert net_balances(res) == expect
    consumed = sum(
        res.tally.stats.consumed[t]
        for t in (res.tally.settings.topic_transactions, res.tally.settings.topic_callbacks)
    )
    assert consumed == len(events)
    # no agent crashed (a crash would also have stopped the consumption above)
    assert res.tally.app.crash_reason is None
    agents = [a for name, a in res.tally.agents.items() if name != "idle_ticks"]
    assert agents and all(a.crash_reason is None for a in agents)


async def test_a_start_given_up_leaves_no_worker_behind(broker, tmp_path) -> None:
    """A worker not ready in time stops what it began, so its process can exit (and a
    supervisor restart it): found by `tally bench chaos`, where restarted workers gave
    up after 60 s of a large recovery and then hung, idle, outside the group."""
    runner = WorkerRunner(create_app(stream_settings(broker, data_dir=str(tmp_path))))
    with pytest.raises(TimeoutError, match="not ready within 0s without progress"):
        await runner.start(ready_timeout=0.0)
    assert runner.worker is None
    assert runner._task is not None and runner._task.done()
