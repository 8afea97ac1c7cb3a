"""Real-time breaks and status queries that time raises (S3 verification queries, S4
pending_timeout, S5 orphan_callback, S13 the refund SLA), through `LocalPipeline`: on
event time, in any arrival order."""

from __future__ import annotations

import pytest

from tally.core.breaks import break_id
from tally.core.policy import ChannelPolicy, Mode
from tests.core.break_cases import (
    SEC,
    at,
    cb,
    feed,
    kinds,
    ms,
    only,
    pipeline,
    run,
    txn,
)

# ------------------------------------------------ S3 verify before success


def test_s3_query_before_final_success() -> None:
    verify = ChannelPolicy(query_before_final_success=True)
    pipe = pipeline(unionpay=verify)
    feed(pipe, txn("P1", "success", 0, channel="unionpay"))
    assert pipe.queries == []
    out = feed(pipe, cb("P1", "sync", "success", 1, channel="unionpay", ctid="up-1"))
    # the verification query goes out at once, at the sync event's time
    assert [q.to_json() for q in out.queries] == [
        {
            "query_id": "P1:q1",
            "txn_id": "P1",
            "channel_id": "unionpay",
            "merchant_id": "m1",
            "channel_txn_id": "up-1",
            "attempt": 1,
            "reason": "verify_success",
            "requested_at": at(1),
        }
    ]
    assert kinds(pipe) == []
    # the query answers failed: the channel did not collect (short)
    feed(pipe, cb("P1", "query", "failed", 4, channel="unionpay", ctid="up-1"))
    b = only(pipe, "status_conflict")
    assert b.txn_id == "P1" and b.event_time_ms == ms(4)
    assert kinds(pipe) == ["status_conflict"]
    pipe.tick(3600 * SEC)
    assert len(pipe.queries) == 1  # resolved: no more queries, no timeout
    assert kinds(pipe) == ["status_conflict"]


def test_s3_sync_success_arriving_before_the_order_still_queries() -> None:
    verify = ChannelPolicy(query_before_final_success=True)
    pipe = pipeline(unionpay=verify)
    feed(pipe, cb("P1", "sync", "success", 1, channel="unionpay"))
    assert pipe.queries == []
    feed(pipe, txn("P1", "success", 0, channel="unionpay"))
    assert [(q.reason, q.attempt) for q in pipe.queries] == [("verify_success", 1)]
    feed(pipe, cb("P1", "query", "success", 3, channel="unionpay"))
    pipe.tick(3600 * SEC)
    assert kinds(pipe) == [] and len(pipe.queries) == 1


def test_s3_without_the_option_no_verification_query() -> None:
    pipe = run([txn("P1", "success", 0), cb("P1", "sync", "success", 1)], tick_s=3600)
    assert pipe.queries == [] and kinds(pipe) == []


# ------------------------------------------------------ S4 pending_timeout


@pytest.mark.parametrize("tick_steps", [1, 7])
def test_s4_pending_timeout_after_n_unanswered_queries(tick_steps: int) -> None:
    policy = ChannelPolicy(sla_seconds=30, query_interval_seconds=15, max_queries=3)
    pipe = pipeline(wx=policy)
    feed(pipe, txn("P1", "pending", 0))
    # however the watermark gets there, the queries carry their due event times
    for _ in range(tick_steps):
        pipe.tick(int(600 / tick_steps * SEC))
    assert [(q.attempt, q.reason, q.requested_at_ms) for q in pipe.queries] == [
        (1, "sla", ms(30)),
        (2, "sla", ms(45)),
        (3, "sla", ms(60)),
    ]
    assert [q.query_id for q in pipe.queries] == ["P1:q1", "P1:q2", "P1:q3"]
    b = only(pipe, "pending_timeout")
    assert b.txn_id == "P1" and b.event_time_ms == ms(75)
    assert b.break_id == break_id("pending_timeout", "P1")
    pipe.tick(3600 * SEC)
    assert len(pipe.queries) == 3 and kinds(pipe) == ["pending_timeout"]


def test_s4_queries_wait_for_the_sla() -> None:
    pipe = pipeline(wx=ChannelPolicy(sla_seconds=30, max_queries=2))
    feed(pipe, txn("P1", "pending", 0))
    pipe.tick(24 * SEC)  # watermark: 0 - 5 s lateness + 24 s = 19 s
    assert pipe.queries == []
    pipe.tick(12 * SEC)  # 31 s
    assert [q.requested_at_ms for q in pipe.queries] == [ms(30)]
    assert kinds(pipe) == []


def test_s4_an_answer_stops_the_queries() -> None:
    pipe = pipeline(wx=ChannelPolicy(sla_seconds=30, query_interval_seconds=15, max_queries=3))
    feed(pipe, txn("P1", "pending", 0))
    pipe.tick(40 * SEC)  # watermark 35 s: one query out
    assert len(pipe.queries) == 1
    feed(pipe, cb("P1", "query", "success", 38))
    pipe.tick(3600 * SEC)
    assert len(pipe.queries) == 1 and kinds(pipe) == []


def test_s4_pending_channel_answers_do_not_stop_the_clock() -> None:
    pipe = pipeline(wx=ChannelPolicy(sla_seconds=30, query_interval_seconds=15, max_queries=2))
    feed(pipe, txn("P1", "pending", 0), cb("P1", "sync", "pending", 1))
    pipe.tick(40 * SEC)
    feed(pipe, cb("P1", "query", "pending", 31))
    pipe.tick(3600 * SEC)
    assert [q.attempt for q in pipe.queries] == [1, 2]
    assert only(pipe, "pending_timeout").event_time_ms == ms(60)


@pytest.mark.parametrize("mode", [Mode.PESSIMISTIC, Mode.OPTIMISTIC])
def test_s4_applies_in_both_modes(mode: Mode) -> None:
    pipe = pipeline(wx=ChannelPolicy(mode=mode, max_queries=1))
    feed(pipe, txn("P1", "pending", 0))
    pipe.tick(3600 * SEC)
    assert kinds(pipe) == ["pending_timeout"]


# ------------------------------------------------------- S5 orphan_callback


def test_s5_orphan_after_the_grace_period() -> None:
    pipe = pipeline(wx=ChannelPolicy(orphan_grace_seconds=60))
    feed(pipe, cb("X1", "notify", "success", 0))
    pipe.tick(64 * SEC)  # watermark -5 + 64 = 59 s: still within the grace
    assert kinds(pipe) == []
    pipe.tick(2 * SEC)  # 61 s
    b = only(pipe, "orphan_callback")
    assert b.txn_id == "X1" and b.event_time_ms == ms(60)
    assert b.merchant_id is None and b.amount is None and b.channel_amount == 10000
    assert (b.channel_id, b.currency) == ("wx", "CNY")
    # more evidence for the unknown order, and the order itself later: still once
    feed(pipe, cb("X1", "query", "success", 200))
    pipe.tick(600 * SEC)
    feed(pipe, txn("X1", "success", -1))
    assert kinds(pipe) == ["orphan_callback"]


def test_s5_no_orphan_when_the_order_arrives_within_the_grace() -> None:
    pipe = pipeline(wx=ChannelPolicy(orphan_grace_seconds=60))
    feed(pipe, cb("X1", "notify", "success", 0))
    pipe.tick(50 * SEC)
    feed(pipe, txn("X1", "success", -2))  # our record was late on its topic
    pipe.tick(3600 * SEC)
    assert kinds(pipe) == []


def test_s5_orphan_driven_by_other_traffic() -> None:
    """The watermark moves with other orders' event times on the partition."""
    pipe = pipeline(wx=ChannelPolicy(orphan_grace_seconds=60))
    feed(pipe, cb("X1", "notify", "success", 0))
    feed(pipe, txn("P9", "success", 60), cb("P9", "notify", "success", 64))  # wm 59 s
    assert kinds(pipe) == []
    feed(pipe, txn("P8", "success", 66), cb("P8", "notify", "success", 66))  # wm 61 s
    assert kinds(pipe) == ["orphan_callback"]
    feed(pipe, txn("X1", "success", -1))
    assert kinds(pipe) == ["orphan_callback"]


# ------------------------------------------------------------- S13 refunds


def test_s13_refund_pending_within_the_refund_sla_is_not_a_timeout() -> None:
    policy = ChannelPolicy(sla_seconds=30, refund_sla_seconds=3600, max_queries=2)
    pipe = pipeline(wx=policy)
    feed(
        pipe,
        txn("P1", "success", 0),
        cb("P1", "notify", "success", 1),
        txn("F1", "pending", 10, type="refund", original="P1", amount="40.00"),
        cb("F1", "sync", "pending", 11, amount="40.00"),  # only "accepted" by the bank
    )
    pipe.tick(1800 * SEC)  # half an hour: a payment would long have timed out
    assert pipe.queries == [] and kinds(pipe) == []
    pipe.tick(1810 * SEC)  # watermark 11 - 5 + 3610 s: past the refund SLA, queries start
    assert [(q.txn_id, q.requested_at_ms) for q in pipe.queries] == [("F1", ms(3610))]
    pipe.tick(600 * SEC)
    assert only(pipe, "pending_timeout").txn_id == "F1"


def test_s13_refund_answered_within_the_sla() -> None:
    pipe = pipeline(wx=ChannelPolicy(refund_sla_seconds=3600))
    feed(
        pipe,
        txn("P1", "success", 0),
        cb("P1", "notify", "success", 1),
        txn("F1", "pending", 10, type="refund", original="P1", amount="40.00"),
    )
    pipe.tick(3000 * SEC)
    feed(pipe, cb("F1", "notify", "success", 3000, amount="40.00"))
    pipe.tick(86400 * SEC)
    assert pipe.queries == [] and kinds(pipe) == []
