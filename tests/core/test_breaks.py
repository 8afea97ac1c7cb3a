"""Real-time breaks (domain.md, cases S1-S13) raised by `Reconciler` through the
in-memory `LocalPipeline`: each kind exactly once for its case, in any arrival
order where the rules say so, with stable ids, on event time only."""

from __future__ import annotations

import hashlib
import itertools
import json
from datetime import time
from typing import Any

import pytest

from tally.core.breaks import Break, break_id
from tally.core.events import iso_ms, parse_timestamp
from tally.core.pipeline import CALLBACKS, TRANSACTIONS, LocalPipeline
from tally.core.policy import ChannelPolicy, Mode, Policies
from tally.core.realtime import Outputs

T0 = parse_timestamp("2026-03-02T02:00:00Z", "t0")  # 10:00 in Shanghai
SEC = 1000


def at(seconds: float) -> str:
    return iso_ms(T0 + int(seconds * SEC))


def ms(seconds: float) -> int:
    return T0 + int(seconds * SEC)


def txn(
    txn_id: str,
    status: str,
    t: float | str,
    *,
    type: str = "payment",
    amount: str = "100.00",
    currency: str = "CNY",
    channel: str = "wx",
    merchant: str = "m1",
    coupon: str | None = None,
    original: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    occurred = t if isinstance(t, str) else at(t)
    d: dict[str, Any] = {
        "event_id": event_id or f"{txn_id}:{status}:{occurred}",
        "txn_id": txn_id,
        "type": type,
        "merchant_id": merchant,
        "channel_id": channel,
        "amount": amount,
        "currency": currency,
        "status": status,
        "occurred_at": occurred,
    }
    if coupon is not None:
        d["coupon_amount"] = coupon
    if original is not None:
        d["original_txn_id"] = original
    return d


def cb(
    txn_id: str,
    source: str,
    status: str,
    t: float | str,
    *,
    amount: str = "100.00",
    currency: str = "CNY",
    channel: str = "wx",
    ctid: str | None = None,
    fee: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    occurred = t if isinstance(t, str) else at(t)
    ctid = ctid or f"ch-{txn_id}"
    return {
        "event_id": event_id or f"{txn_id}:{source}:{status}:{ctid}:{occurred}",
        "txn_id": txn_id,
        "channel_id": channel,
        "channel_txn_id": ctid,
        "source": source,
        "status": status,
        "amount": amount,
        "currency": currency,
        "fee": fee,
        "occurred_at": occurred,
    }


def feed(pipe: LocalPipeline, *msgs: dict[str, Any]) -> Outputs:
    total = Outputs()
    for m in msgs:
        topic = CALLBACKS if "source" in m else TRANSACTIONS
        total.extend(pipe.feed(topic, m["txn_id"], json.dumps(m).encode()))
    assert not pipe.dead_letters, [d.reason for d in pipe.dead_letters]
    return total


def pipeline(**channels: ChannelPolicy) -> LocalPipeline:
    return LocalPipeline(policies=Policies(channels), clock=lambda: 0)


def kinds(pipe: LocalPipeline, txn_id: str | None = None) -> list[str]:
    return sorted(b.kind for b in pipe.breaks.values() if txn_id is None or b.txn_id == txn_id)


def only(pipe: LocalPipeline, kind: str) -> Break:
    found = [b for b in pipe.breaks.values() if b.kind == kind]
    assert len(found) == 1, (kind, kinds(pipe))
    return found[0]


def run(msgs: list[dict[str, Any]], tick_s: float = 0, **channels: ChannelPolicy) -> LocalPipeline:
    pipe = pipeline(**channels)
    feed(pipe, *msgs)
    if tick_s:
        pipe.tick(int(tick_s * SEC))
    return pipe


def assert_same_breaks_in_every_order(
    msgs: list[dict[str, Any]], expected: list[str], **channels: ChannelPolicy
) -> None:
    for perm in itertools.permutations(msgs):
        pipe = run(list(perm), 0, **channels)
        assert kinds(pipe) == expected, ([m["event_id"] for m in perm], kinds(pipe))


# ------------------------------------------------------------- clean orders


def test_a_clean_payment_raises_nothing() -> None:
    msgs = [
        txn("P1", "pending", 0),
        cb("P1", "sync", "success", 1),
        txn("P1", "success", 1),
        cb("P1", "notify", "success", 2, fee="0.60"),
    ]
    assert_same_breaks_in_every_order(msgs, [])
    pipe = run(msgs, tick_s=3600)
    assert kinds(pipe) == [] and pipe.queries == []


def test_a_clean_failure_raises_nothing() -> None:
    msgs = [txn("P1", "pending", 0), cb("P1", "sync", "failed", 1), txn("P1", "failed", 1)]
    assert_same_breaks_in_every_order(msgs, [])
    assert run(msgs, tick_s=3600).queries == []


# ----------------------------------------------------- S1 duplicate_success


def test_s1_retried_sale_succeeds_twice_on_one_order() -> None:
    """POS: debited, no receipt, the sale is retried and both succeed."""
    msgs = [
        txn("P1", "success", 0),
        cb("P1", "sync", "success", 1, ctid="ch-a"),
        cb("P1", "notify", "success", 2, ctid="ch-a"),  # same channel txn: not a duplicate
        cb("P1", "notify", "success", 40, ctid="ch-b"),  # the retry also succeeded
    ]
    assert_same_breaks_in_every_order(msgs, ["duplicate_success"])
    pipe = run(msgs)
    b = only(pipe, "duplicate_success")
    assert b.txn_id == "P1" and "ch-a" in b.detail and "ch-b" in b.detail
    assert b.break_id == break_id("duplicate_success", "P1")
    # more successes of the same pair raise nothing new
    feed(pipe, cb("P1", "query", "success", 50, ctid="ch-b"))
    assert kinds(pipe) == ["duplicate_success"]


def test_s1_one_channel_transaction_on_two_orders() -> None:
    msgs = [
        txn("P1", "success", 0),
        txn("P2", "success", 30),
        cb("P1", "notify", "success", 2, ctid="ch-shared"),
        cb("P2", "notify", "success", 32, ctid="ch-shared"),
        cb("P2", "query", "success", 33, ctid="ch-shared"),
    ]
    # the later claim by event time owns the break, whatever the arrival order
    expected_id = hashlib.sha256(b"duplicate_success|P2|shared:wx/ch-shared:P1").hexdigest()[:24]
    for perm in itertools.permutations(msgs):
        pipe = run(list(perm))
        b = only(pipe, "duplicate_success")
        assert b.break_id == expected_id
        assert b.txn_id == "P2" and "ch-shared" in b.detail
        assert kinds(pipe) == ["duplicate_success"]


# ------------------------------------------------ S2 reversal_after_success


def test_s2_reversal_order_after_success_both_arrival_orders() -> None:
    msgs = [
        txn("P1", "success", 0),
        cb("P1", "notify", "success", 1),
        txn("R1", "success", 60, type="reversal", original="P1"),
    ]
    assert_same_breaks_in_every_order(msgs, ["reversal_after_success"])
    b = only(run(msgs), "reversal_after_success")
    assert b.txn_id == "P1" and "R1" in b.detail
    assert b.break_id == break_id("reversal_after_success", "P1")


def test_s2_channel_reverses_a_success_both_arrival_orders() -> None:
    msgs = [
        txn("P1", "success", 0),
        cb("P1", "notify", "success", 1),
        cb("P1", "notify", "reversed", 60),
    ]
    assert_same_breaks_in_every_order(msgs, ["reversal_after_success"])


def test_s2_pending_reversal_already_counts_and_is_raised_once() -> None:
    pipe = run([txn("P1", "success", 0), cb("P1", "notify", "success", 1)])
    feed(pipe, txn("R1", "pending", 60, type="reversal", original="P1"))
    assert kinds(pipe) == ["reversal_after_success"]
    feed(pipe, txn("R1", "success", 61, type="reversal", original="P1"))
    assert kinds(pipe) == ["reversal_after_success"]


def test_s1_reversal_of_an_incomplete_sale_is_not_a_break() -> None:
    """The sale never completed on our side (pending): the reversal is the normal
    S1 path, not reversal_after_success."""
    msgs = [
        txn("P1", "pending", 0),
        txn("R1", "success", 5, type="reversal", original="P1"),
    ]
    assert_same_breaks_in_every_order(msgs, [])


def test_failed_reversal_is_not_a_break() -> None:
    msgs = [
        txn("P1", "success", 0),
        cb("P1", "notify", "success", 1),
        txn("R1", "failed", 60, type="reversal", original="P1"),
    ]
    assert_same_breaks_in_every_order(msgs, [])


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


# --------------------------------------------------- S6 / S11 mismatches


def test_s6_amount_mismatch_both_arrival_orders() -> None:
    msgs = [txn("P1", "success", 0), cb("P1", "notify", "success", 1, amount="99.99")]
    assert_same_breaks_in_every_order(msgs, ["amount_mismatch"])
    b = only(run(msgs), "amount_mismatch")
    assert (b.amount, b.channel_amount) == (10000, 9999)
    assert b.to_json()["amount"] == "100.00" and b.to_json()["channel_amount"] == "99.99"


def test_s6_currency_mismatch_both_arrival_orders() -> None:
    msgs = [
        txn("P1", "success", 0, currency="USD", amount="10.00"),
        cb("P1", "notify", "success", 1, currency="HKD", amount="78.00"),
    ]
    assert_same_breaks_in_every_order(msgs, ["currency_mismatch"])
    b = only(run(msgs), "currency_mismatch")
    assert "HKD" in b.detail and b.currency == "USD"


def test_s6_each_mismatch_raised_once_per_order() -> None:
    pipe = run(
        [
            txn("P1", "success", 0),
            cb("P1", "sync", "success", 1, amount="90.00"),
            cb("P1", "notify", "success", 2, amount="80.00"),
            cb("P1", "query", "success", 3, amount="80.00", currency="EUR"),
        ]
    )
    assert kinds(pipe) == ["amount_mismatch", "currency_mismatch"]


def test_s11_coupon_channel_collects_amount_minus_coupon() -> None:
    ok = [
        txn("P1", "success", 0, amount="100.00", coupon="15.00"),
        cb("P1", "notify", "success", 1, amount="85.00"),
    ]
    assert_same_breaks_in_every_order(ok, [])
    full_amount = [
        txn("P1", "success", 0, amount="100.00", coupon="15.00"),
        cb("P1", "notify", "success", 1, amount="100.00"),
    ]
    assert_same_breaks_in_every_order(full_amount, ["amount_mismatch"])
    b = only(run(full_amount), "amount_mismatch")
    assert (b.amount, b.channel_amount) == (10000, 10000)
    assert "expected 8500" in b.detail


def test_s6_jpy_and_kwd_amounts_compare_in_minor_units() -> None:
    msgs = [
        txn("J1", "success", 0, currency="JPY", amount="1000"),
        cb("J1", "notify", "success", 1, currency="JPY", amount="1000.00"),
        txn("K1", "success", 0, currency="KWD", amount="1.5"),
        cb("K1", "notify", "success", 1, currency="KWD", amount="1.500"),
        txn("K2", "success", 0, currency="KWD", amount="1.5"),
        cb("K2", "notify", "success", 1, currency="KWD", amount="1.501"),
    ]
    pipe = run(msgs)
    assert kinds(pipe) == ["amount_mismatch"]
    assert only(pipe, "amount_mismatch").to_json()["channel_amount"] == "1.501"


# ------------------------------------------------------- status_conflict


@pytest.mark.parametrize(
    ("ours", "channel"), [("success", "failed"), ("failed", "success"), ("closed", "success")]
)
def test_status_conflict_ours_vs_channel(ours: str, channel: str) -> None:
    msgs = [txn("P1", "pending", 0), txn("P1", ours, 2), cb("P1", "notify", channel, 1)]
    assert_same_breaks_in_every_order(msgs, ["status_conflict"])


def test_status_conflict_between_channel_witnesses() -> None:
    msgs = [txn("P1", "pending", 0), cb("P1", "sync", "success", 1), cb("P1", "query", "failed", 2)]
    assert_same_breaks_in_every_order(msgs, ["status_conflict"])


def test_s5_long_in_real_time_is_a_status_conflict() -> None:
    """The channel says success for an order we hold as failed (S5 long)."""
    pipe = run([txn("P1", "failed", 0), cb("P1", "notify", "success", 30)])
    assert kinds(pipe) == ["status_conflict"]


# ------------------------------------------------------- S12 late_callback


UNIONPAY = ChannelPolicy(cutoff=time(23, 0), timezone="Asia/Shanghai")


def test_s12_late_callback_across_a_2300_cutoff() -> None:
    # 22:58 local (14:58Z): business day 2026-03-02, which closes at 23:00 local
    order = txn("U1", "pending", "2026-03-02T14:58:00Z", channel="unionpay")
    late = cb("U1", "notify", "success", "2026-03-02T15:00:30Z", channel="unionpay")
    assert_same_breaks_in_every_order([order, late], ["late_callback"], unionpay=UNIONPAY)
    b = only(run([order, late], unionpay=UNIONPAY), "late_callback")
    assert b.business_date == "2026-03-02" and b.txn_id == "U1"
    assert "2026-03-02T15:00:00.000Z" in b.detail  # the cutoff, in UTC


def test_s12_before_the_2300_cutoff_is_not_late() -> None:
    order = txn("U1", "pending", "2026-03-02T14:58:00Z", channel="unionpay")
    in_time = cb("U1", "notify", "success", "2026-03-02T14:59:59.999Z", channel="unionpay")
    assert_same_breaks_in_every_order([order, in_time], [], unionpay=UNIONPAY)


def test_s12_order_after_the_2300_cutoff_belongs_to_the_next_day() -> None:
    order = txn("U1", "pending", "2026-03-02T15:00:10Z", channel="unionpay")  # 23:00:10
    confirm = cb("U1", "notify", "success", "2026-03-02T16:10:00Z", channel="unionpay")
    pipe = run([order, confirm], unionpay=UNIONPAY)
    assert kinds(pipe) == []
    assert pipe.orders["U1"].business_date == "2026-03-03"


def test_s12_late_callback_across_a_midnight_cutoff() -> None:
    # default policy: cutoff at midnight Shanghai time (16:00Z)
    order = txn("W1", "pending", "2026-03-02T15:59:50Z")  # 23:59:50
    late = cb("W1", "notify", "success", "2026-03-02T16:00:05Z")  # 00:00:05 next day
    assert_same_breaks_in_every_order([order, late], ["late_callback"])
    b = only(run([order, late]), "late_callback")
    assert b.business_date == "2026-03-02"
    in_time = cb("W1", "notify", "success", "2026-03-02T15:59:59Z")
    assert_same_breaks_in_every_order([order, in_time], [])


def test_s12_late_pending_evidence_is_not_final_word() -> None:
    order = txn("W1", "pending", "2026-03-02T15:59:50Z")
    pending = cb("W1", "query", "pending", "2026-03-02T16:00:05Z")
    assert_same_breaks_in_every_order([order, pending], [])


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
