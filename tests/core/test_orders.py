"""The order state machine (`tally.core.orders`): every transition of our status, the
merging of channel evidence, and `view()` under both policies (S10) and with
query_before_final_success (S3)."""

from __future__ import annotations

import itertools
from datetime import time

import pytest

from tally.core.events import Callback, Transaction, parse_timestamp
from tally.core.orders import (
    OrderState,
    OrderView,
    Standing,
    apply_callback,
    apply_reversal_link,
    apply_transaction,
    view,
)
from tally.core.policy import ChannelPolicy, Mode

T0 = parse_timestamp("2026-03-02T10:00:00Z", "t0")  # 18:00 in Shanghai
PESSIMISTIC = ChannelPolicy()
OPTIMISTIC = ChannelPolicy(mode=Mode.OPTIMISTIC)
VERIFY = ChannelPolicy(query_before_final_success=True)
VERIFY_OPTIMISTIC = ChannelPolicy(mode=Mode.OPTIMISTIC, query_before_final_success=True)
ALL_POLICIES = [PESSIMISTIC, OPTIMISTIC, VERIFY, VERIFY_OPTIMISTIC]


def s(seconds: float) -> int:
    return T0 + int(seconds * 1000)


def txn(
    status: str,
    at: float,
    *,
    txn_id: str = "T1",
    type: str = "payment",
    amount: int = 10000,
    coupon: int = 0,
    original: str | None = None,
    event_id: str | None = None,
) -> Transaction:
    return Transaction(
        event_id=event_id or f"{txn_id}:{status}:{at}",
        txn_id=txn_id,
        type=type,
        merchant_id="m1",
        channel_id="wx",
        amount=amount,
        currency="CNY",
        status=status,
        original_txn_id=original,
        occurred_at_ms=s(at),
        coupon_amount=coupon,
    )


def cb(
    source: str,
    status: str,
    at: float,
    *,
    amount: int = 10000,
    ctid: str = "c1",
    fee: int | None = None,
    event_id: str | None = None,
) -> Callback:
    return Callback(
        event_id=event_id or f"T1:{source}:{status}:{at}:{ctid}",
        txn_id="T1",
        channel_id="wx",
        channel_txn_id=ctid,
        source=source,
        status=status,
        amount=amount,
        currency="CNY",
        fee=fee,
        occurred_at_ms=s(at),
    )


def state_of(*events: Transaction | Callback, policy: ChannelPolicy = PESSIMISTIC) -> OrderState:
    st = OrderState("T1")
    for e in events:
        if isinstance(e, Transaction):
            apply_transaction(st, e, policy)
        else:
            apply_callback(st, e)
    return st


# ------------------------------------------------------------ our status


def test_new_order_is_unknown() -> None:
    st = OrderState("T1")
    assert not st.known and st.our_status is None and st.channel_final() is None
    v = view(st, PESSIMISTIC)
    assert v == OrderView(Standing.NONE, False, False, False, False, 0)


def test_first_transaction_sets_the_record() -> None:
    st = state_of(txn("pending", 0, coupon=500))
    assert st.known
    assert (st.type, st.merchant_id, st.channel_id) == ("payment", "m1", "wx")
    assert (st.amount, st.coupon_amount, st.currency) == (10000, 500, "CNY")
    assert st.our_status == "pending" and st.our_status_at_ms == s(0)
    assert st.created_at_ms == s(0)
    assert st.business_date == "2026-03-02"


@pytest.mark.parametrize("final", ["success", "failed", "closed"])
def test_pending_to_final(final: str) -> None:
    st = state_of(txn("pending", 0), txn(final, 5))
    assert st.our_status == final and st.our_status_at_ms == s(5)
    assert st.created_at_ms == s(0)


@pytest.mark.parametrize("final", ["success", "failed", "closed"])
def test_final_is_not_replaced_by_pending(final: str) -> None:
    later = state_of(txn(final, 5), txn("pending", 9))
    assert later.our_status == final
    earlier = state_of(txn(final, 5), txn("pending", 0))  # out of order: pending older
    assert earlier.our_status == final and earlier.our_status_at_ms == s(5)
    assert earlier.created_at_ms == s(0)


@pytest.mark.parametrize("final", ["success", "failed", "closed"])
def test_final_arriving_before_pending_is_kept_even_if_pending_is_older(final: str) -> None:
    # a final status always replaces pending, whichever time it carries
    st = state_of(txn("pending", 10), txn(final, 5))
    assert st.our_status == final
    assert st.created_at_ms == s(5)


def test_pending_refreshes_pending() -> None:
    st = state_of(txn("pending", 0), txn("pending", 3, event_id="again"))
    assert st.our_status == "pending" and st.our_status_at_ms == s(3)


@pytest.mark.parametrize(
    ("first", "second"), itertools.permutations(["success", "failed", "closed"], 2)
)
def test_between_two_finals_the_later_event_time_wins(first: str, second: str) -> None:
    in_order = state_of(txn(first, 1), txn(second, 2))
    reversed_arrival = state_of(txn(second, 2), txn(first, 1))
    assert in_order.our_status == second == reversed_arrival.our_status
    assert in_order.our_status_at_ms == s(2) == reversed_arrival.our_status_at_ms


def test_the_first_record_is_kept() -> None:
    st = state_of(txn("pending", 0, amount=10000), txn("success", 1, amount=99999))
    assert st.amount == 10000


def test_business_date_follows_the_earliest_event_across_the_cutoff() -> None:
    unionpay = ChannelPolicy(cutoff=time(23, 0))
    # 22:59:50 and 23:00:10 Shanghai time (14:59:50Z, 15:00:10Z)
    before = parse_timestamp("2026-03-02T14:59:50Z", "t")
    after = parse_timestamp("2026-03-02T15:00:10Z", "t")
    st = OrderState("T1")
    apply_transaction(st, _at(txn("success", 0), after), unionpay)
    assert st.business_date == "2026-03-03"
    apply_transaction(st, _at(txn("pending", 0), before), unionpay)
    assert st.business_date == "2026-03-02" and st.created_at_ms == before
    assert st.our_status == "success"


def _at(t: Transaction, ms: int) -> Transaction:
    return Transaction(
        event_id=f"{t.event_id}@{ms}",
        txn_id=t.txn_id,
        type=t.type,
        merchant_id=t.merchant_id,
        channel_id=t.channel_id,
        amount=t.amount,
        currency=t.currency,
        status=t.status,
        original_txn_id=t.original_txn_id,
        occurred_at_ms=ms,
        coupon_amount=t.coupon_amount,
    )


def test_transaction_clears_the_orphan_deadline() -> None:
    st = state_of(cb("notify", "success", 0))
    st.orphan_due_ms = s(60)
    apply_transaction(st, txn("pending", 1), PESSIMISTIC)
    assert st.orphan_due_ms is None


# -------------------------------------------------------------- evidence


def test_evidence_is_merged_in_arrival_order() -> None:
    st = state_of(cb("sync", "pending", 1), cb("notify", "success", 2, fee=60))
    assert [(e.source, e.status, e.seq) for e in st.evidence] == [
        ("sync", "pending", 0),
        ("notify", "success", 1),
    ]
    assert st.evidence[1].fee == 60 and st.evidence[1].channel_txn_id == "c1"


def test_channel_final_ignores_pending() -> None:
    st = state_of(cb("sync", "pending", 1))
    assert st.channel_final() is None
    apply_callback(st, cb("notify", "success", 2))
    apply_callback(st, cb("query", "pending", 3))
    final = st.channel_final()
    assert final is not None and final.status == "success"


def test_channel_final_is_the_latest_final_word_in_any_arrival_order() -> None:
    events = [cb("sync", "success", 1), cb("notify", "success", 2), cb("query", "failed", 3)]
    for perm in itertools.permutations(events):
        st = state_of(*perm)
        final = st.channel_final()
        assert final is not None and (final.source, final.status) == ("query", "failed")


def test_channel_final_tie_goes_to_the_later_arrival() -> None:
    st = state_of(cb("notify", "success", 2), cb("query", "failed", 2))
    final = st.channel_final()
    assert final is not None and final.status == "failed"
    st = state_of(cb("query", "failed", 2), cb("notify", "success", 2))
    final = st.channel_final()
    assert final is not None and final.status == "success"


def test_state_persistence_round_trip() -> None:
    st = state_of(txn("success", 0, coupon=100), cb("notify", "success", 1, fee=60))
    apply_reversal_link(st, "R1", "pending", s(3))
    st.seen.update({"a", "b"})
    st.raised.add("x")
    st.posted = {"channel:wx|confirmed|gross": 9900}
    again = OrderState.from_json(st.to_json())
    assert again == st
    assert again.channel_final() == st.channel_final()


# -------------------------------------------------------------------- view


@pytest.mark.parametrize(
    ("policy", "standing"),
    [
        (PESSIMISTIC, Standing.NONE),
        (OPTIMISTIC, Standing.PROVISIONAL),
        (VERIFY, Standing.NONE),
        (VERIFY_OPTIMISTIC, Standing.PROVISIONAL),
    ],
)
def test_s10_pending_without_evidence(policy: ChannelPolicy, standing: Standing) -> None:
    v = view(state_of(txn("pending", 0)), policy)
    assert v.standing is standing
    assert not v.resolved and not v.succeeded and not v.failed and not v.reversed


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_our_success_without_evidence_is_provisional(policy: ChannelPolicy) -> None:
    v = view(state_of(txn("success", 0)), policy)
    assert v.standing is Standing.PROVISIONAL
    assert v.succeeded and not v.resolved


@pytest.mark.parametrize("policy", ALL_POLICIES)
@pytest.mark.parametrize("final", ["failed", "closed"])
def test_our_failure_without_evidence(policy: ChannelPolicy, final: str) -> None:
    v = view(state_of(txn("pending", 0), txn(final, 1)), policy)
    assert v.standing is Standing.NONE
    assert v.resolved and v.failed and not v.succeeded


@pytest.mark.parametrize("policy", ALL_POLICIES)
@pytest.mark.parametrize("source", ["notify", "query"])
def test_notify_or_query_success_confirms(policy: ChannelPolicy, source: str) -> None:
    v = view(state_of(txn("pending", 0), cb(source, "success", 1, fee=60)), policy)
    assert v.standing is Standing.CONFIRMED
    assert v.resolved and v.succeeded and not v.failed
    assert v.fee == 60


@pytest.mark.parametrize("policy", [PESSIMISTIC, OPTIMISTIC])
def test_sync_success_confirms_without_verification(policy: ChannelPolicy) -> None:
    v = view(state_of(txn("success", 0), cb("sync", "success", 1)), policy)
    assert v.standing is Standing.CONFIRMED and v.resolved


@pytest.mark.parametrize("policy", [VERIFY, VERIFY_OPTIMISTIC])
def test_s3_sync_success_is_only_provisional(policy: ChannelPolicy) -> None:
    st = state_of(txn("success", 0), cb("sync", "success", 1))
    v = view(st, policy)
    assert v.standing is Standing.PROVISIONAL
    assert v.succeeded and not v.resolved
    # a query (or notify) success confirms
    apply_callback(st, cb("query", "success", 2))
    v = view(st, policy)
    assert v.standing is Standing.CONFIRMED and v.resolved


@pytest.mark.parametrize("policy", [VERIFY, VERIFY_OPTIMISTIC])
def test_s3_failed_query_answer_drops_the_order(policy: ChannelPolicy) -> None:
    st = state_of(txn("success", 0), cb("sync", "success", 1), cb("query", "failed", 2))
    v = view(st, policy)
    assert v.standing is Standing.NONE
    assert v.failed and v.resolved and not v.succeeded


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_channel_failure_wins_over_our_success(policy: ChannelPolicy) -> None:
    v = view(state_of(txn("success", 0), cb("notify", "failed", 1, fee=60)), policy)
    assert v.standing is Standing.NONE
    assert v.failed and v.resolved and not v.succeeded
    assert v.fee == 0  # a failed witness's fee does not count


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_channel_success_wins_over_our_failure(policy: ChannelPolicy) -> None:
    # the channel has the money: it counts (and breaks.detect reports the conflict)
    v = view(state_of(txn("failed", 0), cb("notify", "success", 1)), policy)
    assert v.standing is Standing.CONFIRMED and v.succeeded and not v.failed


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_latest_channel_word_decides(policy: ChannelPolicy) -> None:
    flip = state_of(txn("success", 0), cb("notify", "failed", 1), cb("query", "success", 2))
    assert view(flip, policy).standing is Standing.CONFIRMED
    flop = state_of(txn("success", 0), cb("notify", "success", 1), cb("query", "failed", 2))
    assert view(flop, policy).standing is Standing.NONE


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_refunded_counts_as_success(policy: ChannelPolicy) -> None:
    v = view(state_of(txn("success", 0), cb("notify", "refunded", 1, fee=60)), policy)
    assert v.standing is Standing.CONFIRMED and v.succeeded and v.fee == 60


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_channel_reversed(policy: ChannelPolicy) -> None:
    st = state_of(txn("success", 0), cb("notify", "success", 1), cb("notify", "reversed", 2))
    v = view(st, policy)
    assert v.reversed and v.resolved and v.standing is Standing.NONE


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_reversal_link(policy: ChannelPolicy) -> None:
    st = state_of(txn("success", 0), cb("notify", "success", 1))
    apply_reversal_link(st, "R1", "pending", s(2))
    assert view(st, policy).standing is Standing.CONFIRMED
    assert not view(st, policy).reversed
    apply_reversal_link(st, "R1", "success", s(3))
    v = view(st, policy)
    assert v.reversed and v.resolved and v.standing is Standing.NONE
    apply_reversal_link(st, "R1", "failed", s(4))
    assert view(st, policy).standing is Standing.CONFIRMED
    assert st.reversal is not None and st.reversal.txn_id == "R1"


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_unknown_order_never_counts(policy: ChannelPolicy) -> None:
    st = state_of(cb("notify", "success", 0))
    v = view(st, policy)
    assert v.standing is Standing.NONE and v.succeeded
    apply_transaction(st, txn("pending", 0), policy)
    assert view(st, policy).standing is Standing.CONFIRMED


def test_fee_is_the_latest_reported_on_success() -> None:
    st = state_of(txn("success", 0), cb("sync", "success", 1), cb("notify", "success", 2, fee=60))
    assert view(st, PESSIMISTIC).fee == 60
    apply_callback(st, cb("query", "success", 3, fee=None))  # silent about the fee
    assert view(st, PESSIMISTIC).fee == 60


def test_view_does_not_depend_on_evidence_arrival_order() -> None:
    events: list[Transaction | Callback] = [
        txn("pending", 0),
        txn("success", 1),
        cb("sync", "success", 1),
        cb("notify", "success", 2, fee=60),
        cb("query", "success", 3),
    ]
    for policy in ALL_POLICIES:
        views = {
            view(state_of(*perm, policy=policy), policy) for perm in itertools.permutations(events)
        }
        assert len(views) == 1


# ------------------------------------------------------------ view, remembered


def test_view_follows_every_change_of_its_inputs() -> None:
    """`view` remembers its answer on the state: any change of what it depends on
    (evidence appended, our status, our record, the reversal, the policy) is seen."""

    def fresh(st: OrderState, policy: ChannelPolicy) -> OrderView:
        return view(OrderState.from_json(st.to_json()), policy)  # nothing remembered

    st = OrderState("T1")
    steps = [
        lambda: apply_transaction(st, txn("pending", 0), PESSIMISTIC),
        lambda: apply_callback(st, cb("sync", "success", 1, fee=60)),
        lambda: apply_callback(st, cb("notify", "success", 2, fee=70)),
        lambda: apply_transaction(st, txn("success", 3), PESSIMISTIC),
        lambda: apply_reversal_link(st, "R1", "pending", s(4)),
        lambda: apply_reversal_link(st, "R1", "success", s(5)),
        lambda: apply_callback(st, cb("query", "failed", 6)),
    ]
    for step in steps:
        for policy in ALL_POLICIES:
            assert view(st, policy) == fresh(st, policy)
        step()
        for policy in reversed(ALL_POLICIES):
            assert view(st, policy) == fresh(st, policy)
            assert view(st, policy) is view(st, policy)


@pytest.mark.parametrize(
    "zone",
    ["Asia/Shanghai", "America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kathmandu"],
)
@pytest.mark.parametrize("cutoff", [time(0, 0), time(23, 0), time(1, 30), time(0, 0, 30)])
def test_business_date_iso_is_business_date(zone: str, cutoff: time) -> None:
    """The business date remembered per minute is the one computed for the instant,
    also around daylight-saving changes and cutoffs that fall in them."""
    from tally.core.policy import business_date, business_date_iso

    starts = [
        parse_timestamp(t, "t")
        for t in (
            "2026-03-08T04:00:00Z",  # New York springs forward
            "2026-11-01T03:00:00Z",  # and falls back
            "2026-03-29T00:00:00Z",  # London
            "2026-04-04T13:00:00Z",  # Lord Howe, half an hour
            "2026-03-02T14:00:00Z",
        )
    ]
    for t0 in starts:
        for at in range(t0, t0 + 4 * 3_600_000, 59_993):
            for ms in (at, at - at % 60_000, at - at % 60_000 + 59_999):
                assert (
                    business_date_iso(ms, zone, cutoff)
                    == business_date(ms, zone, cutoff).isoformat()
                )
