"""Clearing (清分), the arithmetic of tally/core/clearing.py: what each merchant is owed,
the payments held back, totals per currency, where settlement and postings differ."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tally.core.clearing import (
    SettleItem,
    Settlement,
    disagreements,
    settlement,
    to_minor_units,
    totals,
)


def test_settlement_arithmetic_and_hold_back() -> None:
    items = [
        # 100.00 with a 10.00 platform coupon and a 0.54 fee (the channel collected 90.00)
        SettleItem("p1", "m1", "wx", "CNY", "payment", 10000, coupon=1000, fee=54),
        SettleItem("p2", "m1", "wx", "CNY", "payment", 5000, fee=30),
        SettleItem("r1", "m1", "wx", "CNY", "refund", 2000),
        SettleItem("p3", "m1", "wx", "JPY", "payment", 1500, fee=9),
        SettleItem("p4", "m2", "up", "CNY", "payment", 700, fee=3),
        SettleItem("r2", "m2", "up", "CNY", "refund", 100),
    ]
    rows = settlement(items, held={"p2", "r2", "unknown"})
    by = {(r.merchant_id, r.currency): r for r in rows}
    m1 = by[("m1", "CNY")]
    assert (m1.payments, m1.refund_count) == (2, 1)
    assert (m1.gross, m1.coupon_funding, m1.refunds, m1.fees) == (15000, 1000, 2000, 84)
    assert m1.net == 15000 - 2000 - 84
    # the held payment is not paid: its A - F
    assert (m1.held_items, m1.held_amount, m1.payable) == (1, 4970, 12916 - 4970)
    m2 = by[("m2", "CNY")]
    # a refund under suspense stays deducted (the conservative side)
    assert (m2.net, m2.held_items, m2.held_amount, m2.payable) == (597, 0, 0, 597)
    jpy = by[("m1", "JPY")]
    assert jpy.to_json()["net"] == "1491" and m1.to_json()["payable"] == "79.46"
    t = {x.currency: x for x in totals(rows)}
    assert t["CNY"].net == m1.net + m2.net and t["CNY"].held_amount == 4970
    assert t["JPY"].gross == 1500
    with pytest.raises(ValueError, match="payments and refunds"):
        settlement([SettleItem("v1", "m1", "wx", "CNY", "reversal", 1)])


def test_disagreements_name_the_merchant_and_figure() -> None:
    rows = settlement([SettleItem("p1", "m1", "wx", "CNY", "payment", 1000, fee=6)])
    same = {("m1", "CNY"): {"gross": 1000, "refund": 0, "fee": -6, "coupon": 0, "net": 994}}
    assert disagreements(rows, same) == []
    off = {("m1", "CNY"): {"gross": 1000, "refund": 0, "fee": -7, "coupon": 0, "net": 993}}
    assert disagreements(rows, off) == [
        "m1 CNY fees: settlement 6, postings 7",
        "m1 CNY net: settlement 994, postings 993",
    ]
    other = {("m9", "USD"): {"gross": 5, "refund": 0, "fee": 0, "coupon": 0, "net": 5}}
    assert "m9 USD gross: settlement 0, postings 5" in disagreements(rows, other)


def test_decimals_become_exact_minor_units() -> None:
    assert to_minor_units(Decimal("12.34"), "CNY") == 1234
    assert to_minor_units(Decimal("1500"), "JPY") == 1500
    assert to_minor_units(None, "CNY") == 0
    with pytest.raises(ValueError, match="more digits than the currency has"):
        to_minor_units(Decimal("1.005"), "CNY")


def test_settlement_json_says_whether_it_agrees() -> None:
    rows = settlement([SettleItem("p1", "m1", "wx", "CNY", "payment", 1000, fee=6)])
    doc = Settlement("2026-11-24", None, rows, totals(rows), []).to_json()
    assert doc["agrees_with_postings"] and doc["totals"][0]["merchant_id"] == "*"
    assert doc["merchants"][0]["net"] == "9.94" and doc["merchants"][0]["held_txn_ids"] == []
