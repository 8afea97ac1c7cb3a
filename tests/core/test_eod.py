"""The end-of-day classifier (tally/core/eod.py), pure: every class, precedence,
the cutoff window both ways, the neighbouring statement loaded or not."""

from __future__ import annotations

from datetime import date
from decimal import Decimal as D

from recon.run import day_of
from tally.core.eod import Day, LedgerOrder, Result, StatementLine, at_risk, classify
from tally.core.policy import ChannelPolicy

DAY = date(2026, 11, 24)
POLICY = ChannelPolicy(cutoff="23:00", carry_window_seconds=180)
CTX = day_of(POLICY, DAY)
END = CTX.end_cutoff_ms  # 2026-11-24 23:00 Asia/Shanghai
START = CTX.start_cutoff_ms  # 2026-11-23 23:00
NOON = END - 11 * 3600_000


def order(txn: str, **kw: object) -> LedgerOrder:
    base: dict[str, object] = {
        "txn_id": txn,
        "type": "payment",
        "our_status": "success",
        "reversed": False,
        "currency": "CNY",
        "amount": D("100.00"),
        "coupon_amount": None,
        "fee": D("0.60"),
        "business_date": DAY,
        "created_at_ms": NOON,
        "channel_txn_id": "X" + txn,
        "merchant_id": "m1",
    }
    base.update(kw)
    return LedgerOrder(**base)  # type: ignore[arg-type]


def line(no: int, txn: str, **kw: object) -> StatementLine:
    base: dict[str, object] = {
        "line_no": no,
        "kind": "payment",
        "status": "success",
        "currency": "CNY",
        "amount": D("100.00"),
        "fee": D("0.60"),
        "txn_id": txn,
        "channel_txn_id": "X" + txn if txn else "",
        "occurred_at_ms": NOON,
    }
    base.update(kw)
    return StatementLine(**base)  # type: ignore[arg-type]


def one(results: list[Result], key: str) -> Result:
    hits = [r for r in results if r.item_key == key]
    assert len(hits) == 1, results
    return hits[0]


def classes(results: list[Result]) -> dict[str, str]:
    return {r.item_key: r.cls for r in results}


def test_cutoffs_of_the_day() -> None:
    assert END - START == 86400_000
    assert POLICY.business_date(END - 1) == DAY and POLICY.business_date(END) != DAY
    assert CTX.carry_ms == 180_000


def test_matched_on_txn_id_or_channel_txn_id() -> None:
    rs = classify(
        CTX,
        [order("A"), order("B"), order("C", fee=None)],
        [line(1, "A"), line(2, "", channel_txn_id="XB"), line(3, "C", fee=None)],
    )
    assert classes(rs) == {"A": "matched", "B": "matched", "C": "matched"}
    b = one(rs, "B")
    assert b.txn_id == "B" and b.statement_line == 2 and b.ledger_amount == D("100")


def test_coupon_is_not_collected_by_the_channel() -> None:
    # S11: the channel collects amount - coupon
    rs = classify(CTX, [order("A", coupon_amount=D("10"))], [line(1, "A", amount=D("90.00"))])
    assert one(rs, "A").cls == "matched" and one(rs, "A").ledger_amount == D("90")
    rs = classify(CTX, [order("A", coupon_amount=D("10"))], [line(1, "A")])
    assert one(rs, "A").cls == "amount_mismatch"


def test_refund_compares_its_amount() -> None:
    o = order("R", type="refund", amount=D("20"), coupon_amount=D("5"), fee=None)
    rs = classify(CTX, [o], [line(1, "R", kind="refund", amount=D("20"), fee=None)])
    assert one(rs, "R").cls == "matched"


def test_status_mismatch() -> None:
    rs = classify(
        CTX,
        [order("A"), order("R", type="refund", fee=None)],
        [
            line(1, "A", kind="reversal", status="reversed"),
            line(2, "R", kind="refund", status="failed", fee=None),
        ],
    )
    assert classes(rs) == {"A": "status_mismatch", "R": "status_mismatch"}
    assert one(rs, "A").detail == "statement: reversal reversed; ours: payment success"


def test_payment_and_its_revocation_compare_the_revocation() -> None:
    rs = classify(
        CTX,
        [order("A")],
        [line(1, "A"), line(2, "", channel_txn_id="XA", kind="reversal", status="reversed")],
    )
    a = one(rs, "A")
    assert a.cls == "status_mismatch" and a.statement_line == 2 and "(2 lines)" in a.detail


def test_kind_disagrees_is_a_status_mismatch() -> None:
    rs = classify(CTX, [order("A")], [line(1, "A", kind="refund")])
    assert one(rs, "A").cls == "status_mismatch"


def test_amount_and_currency_mismatch() -> None:
    rs = classify(
        CTX,
        [order("A"), order("B")],
        [line(1, "A", amount=D("99.99")), line(2, "B", currency="USD")],
    )
    assert classes(rs) == {"A": "amount_mismatch", "B": "amount_mismatch"}
    assert at_risk(one(rs, "A")) == D("0.01")
    assert at_risk(one(rs, "B")) == D("100")


def test_fee_mismatch_only_when_the_statement_states_a_fee() -> None:
    rs = classify(
        CTX,
        [order("A"), order("B"), order("C", fee=None), order("E", fee=None)],
        [
            line(1, "A", fee=D("0.61")),
            line(2, "B", fee=None),
            line(3, "C", fee=D("0.10")),
            line(4, "E", fee=D("0")),
        ],
    )
    assert classes(rs) == {
        "A": "fee_mismatch",
        "B": "matched",
        "C": "fee_mismatch",  # our fee unknown counts as 0
        "E": "matched",
    }
    assert at_risk(one(rs, "A")) == D("0.01")


def test_precedence() -> None:
    rs = classify(
        CTX,
        [order("A"), order("B")],
        [
            line(1, "A", status="failed", amount=D("1"), fee=D("9")),
            line(2, "B", amount=D("1"), fee=D("9")),
        ],
    )
    assert classes(rs) == {"A": "status_mismatch", "B": "amount_mismatch"}


def test_long_and_short() -> None:
    rs = classify(
        CTX,
        [
            order("S"),  # ours, not on the statement
            order("F", our_status="failed"),
            order("V", reversed=True),
            order("P", our_status="pending"),
            order("Q", business_date=date(2026, 11, 20)),  # another day
        ],
        [
            line(1, "F"),
            line(2, "V"),
            line(3, "P"),
            line(4, "", channel_txn_id="ZZ"),  # order unknown
            line(5, "G", status="failed"),  # no money moved, no order: not an item
            line(6, "", channel_txn_id="", kind="reversal", status="success"),  # no item
        ],
    )
    assert classes(rs) == {"S": "short", "F": "long", "V": "long", "P": "long", "ZZ": "long"}
    assert one(rs, "F").detail == "no success on our side (ours: failed)"
    assert one(rs, "V").ledger_status == "reversed"
    assert one(rs, "ZZ").detail == "no success on our side" and one(rs, "ZZ").txn_id == ""
    assert at_risk(one(rs, "S")) == D("100") and at_risk(one(rs, "ZZ")) == D("100")


def test_carried_ledger_item_near_the_end_cutoff() -> None:
    near = order("N", created_at_ms=END - 60_000)
    far = order("F", created_at_ms=END - 600_000)
    # D+1 not loaded yet: near is carried, far is short
    rs = classify(CTX, [near, far], [])
    assert classes(rs) == {"N": "carried", "F": "short"}
    assert one(rs, "N").detail == "near the cutoff; the 2026-11-25 statement is not loaded yet"
    # D+1 loaded with N on it: carried
    rs = classify(CTX, [near, far], [], next_statement=[line(1, "N", occurred_at_ms=END + 1)])
    assert classes(rs) == {"N": "carried", "F": "short"}
    assert one(rs, "N").detail == "near the cutoff; on the 2026-11-25 statement"
    # found by channel txn id too
    rs = classify(CTX, [near], [], next_statement=[line(1, "", channel_txn_id="XN")])
    assert classes(rs) == {"N": "carried"}
    # D+1 loaded without it (or with it failed): short
    rs = classify(CTX, [near], [], next_statement=[line(1, "N", status="failed")])
    assert classes(rs) == {"N": "short"}


def test_carried_ledger_item_near_the_start_cutoff() -> None:
    near = order("N", created_at_ms=START + 30_000)
    rs = classify(CTX, [near], [], prev_statement=[line(1, "N")])
    assert classes(rs) == {"N": "carried"}
    rs = classify(CTX, [near], [], prev_statement=[])
    assert classes(rs) == {"N": "short"}
    # the window is +-carry around the cutoff, inclusive
    edge = order("E", created_at_ms=START + 180_000)
    out = order("O", created_at_ms=START + 180_001)
    assert classes(classify(CTX, [edge, out], [])) == {"E": "carried", "O": "short"}


def test_carried_statement_line_whose_order_is_on_the_neighbouring_day() -> None:
    nxt = date(2026, 11, 25)
    ours = order("N", business_date=nxt, created_at_ms=END + 5_000)
    # the statement of D lists it (the channel put it before its cutoff), our ledger
    # says D+1: carried on D
    rs = classify(CTX, [ours], [line(1, "N", occurred_at_ms=END - 5_000)])
    assert classes(rs) == {"N": "carried"}
    assert one(rs, "N").detail == "near the cutoff; our order is on 2026-11-25"
    # and, seen from D+1, our item has its counterpart on D's statement
    ctx_next = day_of(POLICY, nxt)
    rs = classify(ctx_next, [ours], [], prev_statement=[line(1, "N", occurred_at_ms=END - 5_000)])
    assert classes(rs) == {"N": "carried"}
    # far from the cutoff: long on D
    rs = classify(CTX, [ours], [line(1, "N", occurred_at_ms=NOON)])
    assert classes(rs) == {"N": "long"}
    # near the cutoff but the order is on no neighbouring day: long
    rs = classify(CTX, [], [line(1, "N", occurred_at_ms=END - 5_000)])
    assert classes(rs) == {"N": "long"}
    # previous day, near the start cutoff
    prv = order("P", business_date=date(2026, 11, 23))
    rs = classify(CTX, [prv], [line(1, "P", occurred_at_ms=START + 1)])
    assert classes(rs) == {"P": "carried"}


def test_shared_channel_txn_id_resolves_to_the_smallest_txn_id() -> None:
    rs = classify(
        CTX,
        [order("B", channel_txn_id="X"), order("A", channel_txn_id="X")],
        [line(1, "", channel_txn_id="X")],
    )
    assert classes(rs) == {"A": "matched", "B": "short"}


def test_lines_without_ids_are_items_of_their_own() -> None:
    rs = classify(CTX, [], [line(7, "", channel_txn_id="")])
    assert classes(rs) == {"line:7": "long"}


def test_deterministic_and_sorted() -> None:
    orders = [order(t) for t in "DCBA"]
    lines = [line(i, t) for i, t in enumerate("ABCD", 1)]
    a = classify(CTX, orders, lines)
    assert a == classify(CTX, list(reversed(orders)), list(reversed(lines)))
    assert [r.item_key for r in a] == sorted(r.item_key for r in a)


def test_day_neighbours() -> None:
    d = Day(DAY, START, END, 0)
    assert d.prev == date(2026, 11, 23) and d.next == date(2026, 11, 25)
    assert d.near_end(END) and not d.near_end(END + 1) and not d.near_end(None)


def test_a_refund_line_stating_the_fee_given_back_as_negative_matches() -> None:
    """WeChat and Alipay bills state the fee returned on a refund as negative; the
    fee is compared without its sign (a different fee still differs)."""
    rs = classify(
        CTX,
        [order("R", type="refund", fee=D("0.30")), order("S", type="refund", fee=D("0.30"))],
        [
            line(1, "R", kind="refund", fee=D("-0.30")),
            line(2, "S", kind="refund", fee=D("-0.40")),
        ],
    )
    assert classes(rs) == {"R": "matched", "S": "fee_mismatch"}
