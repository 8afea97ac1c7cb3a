"""Break ids are stable: replaying a log, twice or on another partition count, gives
the same breaks; time-based breaks follow event time, not the wall clock."""

from __future__ import annotations

from typing import Any

import pytest

from tally.core.breaks import break_id
from tally.core.events import iso_ms, parse_timestamp
from tally.core.pipeline import LocalPipeline
from tally.core.policy import ChannelPolicy
from tests.core.break_cases import (
    SEC,
    cb,
    feed,
    kinds,
    only,
    pipeline,
    run,
    txn,
)

# --------------------------------------------------- ids, replay, event time


def _scenario() -> list[dict[str, Any]]:
    return [
        txn("A", "success", 0),
        cb("A", "notify", "success", 1, ctid="a1"),
        cb("A", "notify", "success", 20, ctid="a2"),  # duplicate_success
        txn("B", "success", 2),
        cb("B", "notify", "failed", 3),  # status_conflict
        txn("C", "pending", 4),  # pending_timeout later
        cb("D", "notify", "success", 5),  # orphan_callback later
        txn("E", "success", 6, coupon="10.00"),
        cb("E", "notify", "success", 7, amount="100.00"),  # amount_mismatch
        txn("F", "success", 8),
        cb("F", "notify", "success", 9),
        txn("G", "success", 10, type="reversal", original="F"),  # reversal_after_success
        cb("G", "notify", "success", 11),
        txn("H", "pending", "2026-03-02T15:59:00Z"),
        cb("H", "notify", "success", "2026-03-02T16:00:30Z"),  # late_callback
    ]


def test_break_ids_are_stable_and_replay_is_identical() -> None:
    first = run(_scenario())
    second = run(_scenario())
    assert first.breaks_by_kind() == {
        "amount_mismatch": 1,
        "duplicate_success": 1,
        "late_callback": 1,
        "orphan_callback": 1,
        "pending_timeout": 1,
        "reversal_after_success": 1,
        "status_conflict": 1,
    }
    # the time-based ones fired from the late H events' event time, not the wall clock
    assert [b.to_json() for b in first.breaks.values()] == [
        b.to_json() for b in second.breaks.values()
    ]
    assert [q.to_json() for q in first.queries] == [q.to_json() for q in second.queries]
    for b in first.breaks.values():
        assert b.break_id == break_id(b.kind, b.txn_id)
        assert b.detected_at_ms == 0  # no wall clock in the in-memory pipeline


def test_replaying_the_same_log_twice_into_one_pipeline_adds_nothing() -> None:
    pipe = run(_scenario())
    before = {k: b.to_json() for k, b in pipe.breaks.items()}
    postings = len(pipe.postings)
    queries = len(pipe.queries)
    out = feed(pipe, *_scenario())
    assert not out.breaks and not out.postings and not out.queries
    assert pipe.duplicates == len(_scenario())
    assert {k: b.to_json() for k, b in pipe.breaks.items()} == before
    assert (len(pipe.postings), len(pipe.queries)) == (postings, queries)


def test_time_based_breaks_follow_event_time_not_the_wall_clock() -> None:
    """Messages from 2017 processed now: timers fire by their own clock, once the
    watermark passes the due time, and not a moment before."""
    base = parse_timestamp("2017-08-04T06:00:00Z", "t")

    def old(sec: float) -> str:
        return iso_ms(base + int(sec * SEC))

    pipe = pipeline(wx=ChannelPolicy(sla_seconds=30, query_interval_seconds=15, max_queries=3))
    feed(pipe, txn("C", "pending", old(0)), cb("D", "notify", "success", old(0)))
    # the wall clock is years ahead, yet nothing is due by event time
    assert pipe.queries == [] and kinds(pipe) == []
    feed(pipe, txn("Z", "success", old(79)), cb("Z", "notify", "success", old(79)))  # wm 74 s
    assert [q.requested_at_ms - base for q in pipe.queries] == [30_000, 45_000, 60_000]
    assert kinds(pipe) == ["orphan_callback"]  # grace 60 s passed; timeout due at 75 s
    feed(pipe, txn("Y", "success", old(81)), cb("Y", "notify", "success", old(81)))  # wm 76 s
    assert kinds(pipe) == ["orphan_callback", "pending_timeout"]
    assert only(pipe, "pending_timeout").event_time_ms == base + 75_000


@pytest.mark.parametrize("partitions", [1, 3, 8])
def test_breaks_do_not_depend_on_the_partition_count(partitions: int) -> None:
    reference = run(_scenario(), tick_s=3600)
    pipe = LocalPipeline(partitions=partitions, clock=lambda: 0)
    feed(pipe, *_scenario())
    pipe.tick(3600 * SEC)
    assert pipe.break_set() == reference.break_set()
    assert set(pipe.breaks) == set(reference.breaks)


def test_a_shared_channel_txn_gives_the_same_claims_and_break_in_either_arrival_order() -> None:
    """Two workers can deliver the success claims of one channel transaction in either
    order: the earlier claim by event time owns the key, the other is flagged once,
    and the break is the same."""
    from tally.core.realtime import ChannelTxnIndex, SuccessClaim

    a = SuccessClaim("wechat", "W1", "o-a", "m1", "CNY", 100, 1_000)
    b = SuccessClaim("wechat", "W1", "o-b", "m2", "CNY", 100, 2_000)
    outcomes = []
    for order in ((a, b), (b, a)):
        claims: dict[str, object] = {}
        index = ChannelTxnIndex(claims)  # type: ignore[arg-type]
        found = [index.on_claim(c) for c in (*order, *order)]  # each delivered twice
        breaks = [x for x in found if x is not None]
        assert len(breaks) == 1
        outcomes.append(
            ({k: v.txn_id for k, v in claims.items()}, breaks[0].break_id, breaks[0].txn_id)  # type: ignore[attr-defined]
        )
    assert outcomes[0] == outcomes[1]
    table, _, owner = outcomes[0]
    assert table == {"wechat/W1": "o-a", "wechat/W1|o-b": "o-b"} and owner == "o-b"
