"""Clearing arithmetic (`tally.core.ledger`): the postings each case produces and the
balances they add up to."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import pytest

from tally.core.events import iso_ms, parse_timestamp
from tally.core.ledger import (
    Balance,
    BalanceBook,
    ImbalanceError,
    Posting,
    assert_balanced,
    assert_nets_to_zero,
    diff,
    invariant_sums,
    leg_key,
    position,
    repost,
)
from tally.core.orders import OrderState, OrderView, Standing
from tally.core.pipeline import CALLBACKS, TRANSACTIONS, LocalPipeline
from tally.core.policy import ChannelPolicy, Mode, Policies

T0 = parse_timestamp("2026-03-02T02:00:00Z", "t0")


def at(seconds: float) -> str:
    return iso_ms(T0 + int(seconds * 1000))


def txn(
    txn_id: str,
    status: str,
    t: float,
    *,
    type: str = "payment",
    amount: str = "100.00",
    currency: str = "CNY",
    coupon: str | None = None,
    original: str | None = None,
) -> dict[str, Any]:
    d: dict[str, Any] = {
        "event_id": f"{txn_id}:{status}:{t}",
        "txn_id": txn_id,
        "type": type,
        "merchant_id": "m1",
        "channel_id": "wx",
        "amount": amount,
        "currency": currency,
        "status": status,
        "occurred_at": at(t),
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
    t: float,
    *,
    amount: str = "100.00",
    currency: str = "CNY",
    fee: str | None = None,
) -> dict[str, Any]:
    return {
        "event_id": f"{txn_id}:{source}:{status}:{t}",
        "txn_id": txn_id,
        "channel_id": "wx",
        "channel_txn_id": f"ch-{txn_id}",
        "source": source,
        "status": status,
        "amount": amount,
        "currency": currency,
        "fee": fee,
        "occurred_at": at(t),
    }


def pipeline(policy: ChannelPolicy | None = None) -> LocalPipeline:
    return LocalPipeline(policies=Policies({"wx": policy or ChannelPolicy()}), clock=lambda: 0)


def feed(pipe: LocalPipeline, *msgs: dict[str, Any]) -> list[Posting]:
    """Feed messages; return every posting they caused (including those of the
    original order a reversal reports to)."""
    start = len(pipe.postings)
    for m in msgs:
        topic = CALLBACKS if "source" in m else TRANSACTIONS
        pipe.feed(topic, m["txn_id"], json.dumps(m).encode())
        pipe.book.check()
    assert not pipe.dead_letters
    return pipe.postings[start:]


def legs(p: Posting) -> dict[str, int]:
    return dict(p.legs)


def balance(pipe: LocalPipeline, account: str, currency: str = "CNY") -> Balance:
    return pipe.book.balances[f"{account}|{currency}"]


def assert_zero_sum_per_bucket(p: Posting) -> None:
    sums: dict[str, int] = defaultdict(int)
    for k, v in p.legs.items():
        sums[k.split("|")[1]] += v
    assert all(v == 0 for v in sums.values()), p.legs


PROVISIONAL_PAYMENT = {
    "channel:wx|provisional|gross": 8500,
    "coupon:wx|provisional|coupon": 1500,
    "merchant:m1|provisional|gross": -10000,
}


# ------------------------------------------------------------- per case


def test_payment_with_coupon_and_fee() -> None:
    """S11 + fee: provisional on our success, then confirmed by the notify, which
    reports the fee; the move empties the provisional bucket."""
    pipe = pipeline()
    [p1] = feed(pipe, txn("P1", "success", 0, coupon="15.00"))
    assert (p1.posting_id, p1.seq, p1.reason) == ("P1:1", 1, "provisional")
    assert legs(p1) == PROVISIONAL_PAYMENT
    [p2] = feed(pipe, cb("P1", "notify", "success", 2, amount="85.00", fee="0.60"))
    assert (p2.posting_id, p2.reason, p2.event_time_ms) == ("P1:2", "confirmed", T0 + 2000)
    assert legs(p2) == {
        "channel:wx|provisional|gross": -8500,
        "coupon:wx|provisional|coupon": -1500,
        "merchant:m1|provisional|gross": 10000,
        "channel:wx|confirmed|gross": 8500,
        "coupon:wx|confirmed|coupon": 1500,
        "merchant:m1|confirmed|gross": -10000,
        "merchant:m1|confirmed|fee": 60,
        "fees:wx|confirmed|fee": -60,
    }
    for p in (p1, p2):
        assert_zero_sum_per_bucket(p)
    assert pipe.orders["P1"].posted == {
        "channel:wx|confirmed|gross": 8500,
        "coupon:wx|confirmed|coupon": 1500,
        "merchant:m1|confirmed|gross": -10000,
        "merchant:m1|confirmed|fee": 60,
        "fees:wx|confirmed|fee": -60,
    }
    assert balance(pipe, "merchant:m1").summary() == {
        "account": "merchant:m1",
        "currency": "CNY",
        "provisional": "0.00",
        "confirmed": "99.40",
        "gross": "100.00",
        "refunds": "0.00",
        "fees": "-0.60",
        "coupon_funding": "0.00",
        "net": "99.40",
        "postings": 2,
    }
    assert balance(pipe, "channel:wx").summary()["net"] == "85.00"
    assert balance(pipe, "coupon:wx").summary()["coupon_funding"] == "15.00"
    assert balance(pipe, "fees:wx").summary()["net"] == "0.60"


def test_posting_json_round_trip() -> None:
    pipe = pipeline()
    feed(
        pipe,
        txn("P1", "success", 0, coupon="15.00"),
        cb("P1", "notify", "success", 2, amount="85.00", fee="0.60"),
    )
    for p in pipe.postings:
        out = p.to_json()
        assert Posting.from_json(out) == p
        amounts = {(x["account"], x["bucket"], x["component"]): x["amount"] for x in out["legs"]}
        if p.seq == 2:
            assert amounts[("merchant:m1", "confirmed", "fee")] == "0.60"
            assert amounts[("merchant:m1", "provisional", "gross")] == "100.00"
            assert amounts[("merchant:m1", "confirmed", "gross")] == "-100.00"
        assert out["business_date"] == "2026-03-02"


def test_refund() -> None:
    pipe = pipeline()
    feed(pipe, txn("P1", "success", 0), cb("P1", "notify", "success", 1, fee="0.60"))
    assert feed(pipe, txn("F1", "pending", 10, type="refund", original="P1", amount="40.00")) == []
    [p] = feed(pipe, cb("F1", "notify", "success", 11, amount="40.00"))
    assert p.reason == "confirmed"
    assert legs(p) == {"channel:wx|confirmed|refund": -4000, "merchant:m1|confirmed|refund": 4000}
    m = balance(pipe, "merchant:m1").summary()
    assert (m["gross"], m["refunds"], m["fees"], m["net"]) == ("100.00", "-40.00", "-0.60", "59.40")
    ch = balance(pipe, "channel:wx").summary()
    assert (ch["gross"], ch["refunds"], ch["net"]) == ("100.00", "-40.00", "60.00")


def test_reversal_zeroes_the_original() -> None:
    pipe = pipeline()
    feed(
        pipe,
        txn("P1", "success", 0, coupon="15.00"),
        cb("P1", "notify", "success", 1, amount="85.00", fee="0.60"),
    )
    posted = dict(pipe.orders["P1"].posted)
    out = feed(pipe, txn("R1", "success", 30, type="reversal", original="P1"))
    [p] = out
    assert (p.txn_id, p.reason, p.seq) == ("P1", "none", 3)
    assert legs(p) == {k: -v for k, v in posted.items()}
    assert pipe.orders["P1"].posted == {}
    assert pipe.orders["R1"].posted == {}  # a reversal has no position of its own
    for b in pipe.book.balances.values():
        assert b.total() == 0, b.account


def test_reversal_before_the_original_arrives() -> None:
    pipe = pipeline()
    assert feed(pipe, txn("R1", "success", 0, type="reversal", original="P1")) == []
    assert feed(pipe, txn("P1", "pending", -1), cb("P1", "sync", "success", 1)) == []
    assert pipe.orders["P1"].posted == {}


def test_reversal_whose_outcome_flips_back_still_zeroes_the_original() -> None:
    """Regression: the reversal R reports success, then failed (an older channel
    failure arrives), then success again (a newer channel success). The original
    must end reversed, as it does when R's messages arrive in event-time order.
    The link's id used to be only (reversal, status), so the second "success" was
    dropped as a duplicate and the original stayed counted."""
    sale = [txn("P1", "success", 0), cb("P1", "notify", "success", 1)]
    r_ours = txn("R1", "success", 30, type="reversal", original="P1")
    r_failed = cb("R1", "notify", "failed", 10)
    r_success = cb("R1", "query", "success", 20)
    for order in ([r_ours, r_failed, r_success], [r_failed, r_success, r_ours]):
        pipe = pipeline()
        feed(pipe, *sale, *order)
        assert pipe.orders["P1"].posted == {}, [m["event_id"] for m in order]
        assert pipe.orders["P1"].reversal is not None
        assert pipe.orders["P1"].reversal.status == "success"
        assert all(b.total() == 0 for b in pipe.book.balances.values())


def test_failure_after_provisional_success() -> None:
    pipe = pipeline()
    [p1] = feed(pipe, txn("P1", "success", 0, coupon="15.00"))
    assert legs(p1) == PROVISIONAL_PAYMENT
    [p2] = feed(pipe, cb("P1", "notify", "failed", 3, amount="85.00"))
    assert p2.reason == "none"
    assert legs(p2) == {k: -v for k, v in PROVISIONAL_PAYMENT.items()}
    assert all(b.total() == 0 for b in pipe.book.balances.values())
    assert balance(pipe, "merchant:m1").postings == 2


@pytest.mark.parametrize(
    ("mode", "expected"), [(Mode.PESSIMISTIC, []), (Mode.OPTIMISTIC, ["provisional"])]
)
def test_s10_pending_payment(mode: Mode, expected: list[str]) -> None:
    pipe = pipeline(ChannelPolicy(mode=mode))
    assert [p.reason for p in feed(pipe, txn("P1", "pending", 0))] == expected
    # either way the channel's success ends confirmed with the same balances
    feed(pipe, cb("P1", "notify", "success", 1))
    assert balance(pipe, "merchant:m1").summary()["confirmed"] == "100.00"
    assert balance(pipe, "merchant:m1").summary()["provisional"] == "0.00"


def test_s3_verified_success_moves_provisional_to_confirmed() -> None:
    pipe = pipeline(ChannelPolicy(query_before_final_success=True))
    reasons = [
        p.reason for p in feed(pipe, txn("P1", "success", 0), cb("P1", "sync", "success", 1))
    ]
    assert reasons == ["provisional"]
    [p] = feed(pipe, cb("P1", "query", "success", 2))
    assert p.reason == "confirmed"
    s = balance(pipe, "merchant:m1").summary()
    assert (s["provisional"], s["confirmed"]) == ("0.00", "100.00")


def test_failed_and_closed_orders_post_nothing() -> None:
    pipe = pipeline(ChannelPolicy(mode=Mode.OPTIMISTIC))
    feed(pipe, txn("P1", "pending", 0), txn("P1", "closed", 600))
    feed(pipe, txn("P2", "failed", 0), cb("P2", "sync", "failed", 0))
    assert all(b.total() == 0 for b in pipe.book.balances.values())


def test_jpy_and_kwd_balances() -> None:
    pipe = pipeline()
    feed(
        pipe,
        txn("J1", "success", 0, currency="JPY", amount="1000", coupon="100"),
        cb("J1", "notify", "success", 1, currency="JPY", amount="900", fee="6"),
    )
    feed(
        pipe,
        txn("K1", "success", 0, currency="KWD", amount="12.345"),
        cb("K1", "notify", "success", 1, currency="KWD", amount="12.345", fee="0.012"),
    )
    j = balance(pipe, "merchant:m1", "JPY").summary()
    assert (j["gross"], j["fees"], j["net"]) == ("1000", "-6", "994")
    assert balance(pipe, "coupon:wx", "JPY").summary()["coupon_funding"] == "100"
    k = balance(pipe, "merchant:m1", "KWD").summary()
    assert (k["gross"], k["fees"], k["net"]) == ("12.345", "-0.012", "12.333")
    sums = invariant_sums(pipe.book.balances.values())
    assert sums[("JPY", "confirmed")] == {"merchant": 994, "fees": 6, "channel": 900, "coupon": 100}
    assert sums[("KWD", "confirmed")] == {
        "merchant": 12333,
        "fees": 12,
        "channel": 12345,
        "coupon": 0,
    }


def test_merchant_net_is_gross_minus_refunds_minus_fees() -> None:
    """Clearing (清分): what the merchant is owed across several orders."""
    pipe = pipeline()
    feed(
        pipe,
        txn("P1", "success", 0, amount="100.00", coupon="10.00"),
        cb("P1", "notify", "success", 1, amount="90.00", fee="0.60"),
        txn("P2", "success", 2, amount="50.00"),
        cb("P2", "notify", "success", 3, amount="50.00", fee="0.30"),
        txn("P3", "success", 4, amount="20.00"),  # provisional: no channel word yet
        txn("F1", "success", 5, type="refund", original="P1", amount="25.00"),
        cb("F1", "notify", "success", 6, amount="25.00"),
    )
    m = balance(pipe, "merchant:m1").summary()
    assert m == {
        "account": "merchant:m1",
        "currency": "CNY",
        "provisional": "20.00",
        "confirmed": "124.10",
        "gross": "170.00",
        "refunds": "-25.00",
        "fees": "-0.90",
        "coupon_funding": "0.00",
        "net": "144.10",
        "postings": 7,
    }
    ch = balance(pipe, "channel:wx").summary()
    assert (ch["gross"], ch["refunds"], ch["net"]) == ("160.00", "-25.00", "135.00")
    assert balance(pipe, "fees:wx").summary()["fees"] == "0.90"


# ----------------------------------------------------------- primitives


def _state(**kw: Any) -> OrderState:
    st = OrderState(
        "P1",
        type="payment",
        merchant_id="m1",
        channel_id="wx",
        amount=10000,
        currency="CNY",
        our_status="success",
    )
    for k, v in kw.items():
        setattr(st, k, v)
    return st


def _view(standing: Standing, fee: int = 0) -> OrderView:
    return OrderView(standing, False, False, True, False, fee)


def test_position_and_diff() -> None:
    st = _state(coupon_amount=1000)
    assert position(st, _view(Standing.NONE)) == {}
    prov = position(st, _view(Standing.PROVISIONAL))
    assert prov == {
        leg_key("channel:wx", "provisional", "gross"): 9000,
        leg_key("coupon:wx", "provisional", "coupon"): 1000,
        leg_key("merchant:m1", "provisional", "gross"): -10000,
    }
    conf = position(st, _view(Standing.CONFIRMED, fee=50))
    assert sum(conf.values()) == 0 and len(conf) == 5
    d = diff(conf, prov)
    assert sum(d.values()) == 0
    assert diff(prov, prov) == {}
    assert position(_state(type="refund"), _view(Standing.CONFIRMED)) == {
        "channel:wx|confirmed|refund": -10000,
        "merchant:m1|confirmed|refund": 10000,
    }
    assert position(_state(type="reversal"), _view(Standing.CONFIRMED)) == {}
    assert position(_state(type=None), _view(Standing.CONFIRMED)) == {}


def test_balance_book_applies_each_posting_once() -> None:
    p = Posting(
        "P1:1",
        "P1",
        1,
        "m1",
        "wx",
        "CNY",
        "confirmed",
        {"channel:wx|confirmed|gross": 500, "merchant:m1|confirmed|gross": -500},
        T0,
    )
    book = BalanceBook()
    assert book.apply(p) is True
    assert book.apply(p) is False
    book.apply_all([p, p])
    assert book.balances["merchant:m1|CNY"].total() == -500
    assert book.balances["merchant:m1|CNY"].postings == 1
    book.check()
    again = Balance.from_json(book.balances["merchant:m1|CNY"].to_json())
    assert again == book.balances["merchant:m1|CNY"]


def test_imbalance_is_detected() -> None:
    book = BalanceBook()
    book.apply(
        Posting(
            "X:1",
            "X",
            1,
            "m1",
            "wx",
            "CNY",
            "confirmed",
            {"channel:wx|confirmed|gross": 500, "merchant:m1|confirmed|gross": -499},
            T0,
        )
    )
    with pytest.raises(ImbalanceError, match="CNY confirmed"):
        book.check()
    # buckets and currencies balance separately
    cross = [
        Balance("channel:wx", "CNY", {"provisional|gross": 100}),
        Balance("merchant:m1", "CNY", {"confirmed|gross": -100}),
    ]
    with pytest.raises(ImbalanceError):
        assert_balanced(cross)
    cross_cur = [
        Balance("channel:wx", "CNY", {"confirmed|gross": 100}),
        Balance("merchant:m1", "USD", {"confirmed|gross": -100}),
    ]
    with pytest.raises(ImbalanceError):
        assert_balanced(cross_cur)


def test_repost_refuses_a_posting_that_does_not_net_to_zero() -> None:
    """The writing side of the invariant: each posting nets to zero per bucket when
    `repost` writes it. A stored position that lost a leg (crafted here) would make
    the next posting unbalanced: it is refused, naming the posting, and not counted."""
    st = _state()
    first = repost(st, _view(Standing.PROVISIONAL), T0)
    assert first is not None and first.posting_id == "P1:1"
    del st.posted[leg_key("merchant:m1", "provisional", "gross")]  # half of a pair lost
    with pytest.raises(ImbalanceError, match=r"posting P1:2 .*CNY provisional -10000"):
        repost(st, _view(Standing.CONFIRMED), T0 + 1)
    assert st.posting_seq == 1  # the order's state did not move either
    assert_nets_to_zero("ok", "CNY", first.legs)
    with pytest.raises(AssertionError, match=r"posting X:1 .*CNY confirmed \+1"):
        assert_nets_to_zero(
            "X:1", "CNY", {"channel:wx|confirmed|gross": 500, "merchant:m1|confirmed|gross": -499}
        )


def test_balances_are_the_sum_of_the_orders_positions() -> None:
    """The identity the stream uses to correct a balance shard after a crash: over a
    simulated stream with every anomaly, the balances the postings built equal the sum
    of the orders' current positions, per account and currency."""
    from tally.core.ledger import balances_from_positions
    from tally.core.pipeline import LocalPipeline
    from tally.sim.traffic import SimConfig, generate

    pipe = LocalPipeline(partitions=4, clock=lambda: 0)
    pipe.feed_all(generate(SimConfig(events=6_000, seed=3)).envelopes)
    built = {k: b.figures() for k, b in pipe.book.balances.items() if b.figures()}
    assert built and balances_from_positions(pipe.orders.values()) == built
