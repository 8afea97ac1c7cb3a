"""Real-time breaks (domain.md, cases S1-S13) raised by `Reconciler` through the
in-memory `LocalPipeline`: each kind exactly once for its case, in any arrival
order where the rules say so, with stable ids, on event time only."""

from __future__ import annotations

import hashlib
import itertools
from datetime import time

import pytest

from tally.core.breaks import break_id
from tally.core.policy import ChannelPolicy
from tests.core.break_cases import (
    assert_same_breaks_in_every_order,
    cb,
    feed,
    kinds,
    only,
    run,
    txn,
)

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
