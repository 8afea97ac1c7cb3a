"""Statement parsers and writers, pure: round trips per format (parse(write(x)) == x
and the bytes again) and the sample files under tests/data/statements parsed to known
values. Bad files: tests/recon/test_statements_refused.py."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recon.statements import (
    FORMATS,
    Statement,
    StatementError,
    StatementLine,
    detect,
    parse,
    write,
)
from recon.statements.fields import parse_info

DATA = Path(__file__).parents[1] / "data" / "statements"
DAY = date(2026, 11, 24)


def ms(s: str) -> int:
    """An RFC 3339 instant as epoch ms."""
    return int(datetime.fromisoformat(s).timestamp() * 1000)


def line(
    txn: str,
    ctid: str,
    kind: str = "payment",
    amount: str = "100.00",
    fee: str | None = "0.60",
    coupon: str | None = "0.00",
    orig: str = "",
    status: str = "success",
    at: str = "2026-11-24T10:15:30+08:00",
    mref: str = "",
    currency: str = "CNY",
) -> StatementLine:
    return StatementLine(
        line_no=0,
        txn_id=txn,
        channel_txn_id=ctid,
        original_txn_id=orig,
        kind=kind,
        status=status,
        currency=currency,
        amount=Decimal(amount),
        fee=None if fee is None else Decimal(fee),
        coupon_amount=None if coupon is None else Decimal(coupon),
        merchant_ref=mref,
        occurred_at_ms=ms(at),
    )


# What each format can say: the lines a round trip must keep exactly.
ROUND_TRIP: dict[str, list[StatementLine]] = {
    "wechat": [
        line("P1", "4200000001", mref="1900012345"),
        line("P2", "4200000002", amount="45.50", fee="0.27", coupon="5.00", mref="1900012345"),
        line("R1", "5000000001", "refund", "20.00", fee="-0.12", coupon=None, orig="P1"),
        line(
            "R2",
            "5000000002",
            "refund",
            "1.00",
            fee="0.00",
            coupon=None,
            orig="P2",
            status="pending",
        ),
        line("V1", "4200000003", "reversal", "12.00", coupon="0.00", orig="P9", status="reversed"),
        line("", "4200000004", "reversal", "13.00", coupon="1.00", orig="P8", status="reversed"),
    ],
    "alipay": [
        line("P1", "2026112422001400000001", coupon="10.00", fee="1.13", mref="S001"),
        line("P2", "2026112422001400000002", amount="459.00", fee="0.00", coupon="0.00"),
        line(
            "R1", "2026112422001400000001", "refund", "50.00", fee="-0.30", coupon=None, orig="P1"
        ),
        line("R2", "2026112422001400000001", "refund", "5.00", fee="0.00", coupon=None, orig="P1"),
    ],
    "mt940": [
        line("P1", "UP1", fee="12.00", coupon=None, mref="898310058120001"),
        line(
            "A-VERY-LONG-ORDER-ID-0000000001",
            "UP-A-VERY-LONG-CHANNEL-ID-1",
            fee=None,
            coupon="3.00",
        ),
        line("R1", "UP3", "refund", "30.00", fee="-0.10", coupon=None, orig="P1"),
        line("V1", "UP4", "reversal", "99.99", fee=None, coupon=None, orig="P1", status="reversed"),
        line("", "UP5", at="2026-11-24T10:15:30.123+08:00", fee="0.01", coupon=None),
    ],
    "camt053": [
        line("P1", "ICBC1", fee="3.75", coupon=None, mref="SHOP-0042"),
        line("P2", "ICBC2", fee=None, coupon="20.00", at="2026-11-24T10:15:30.250Z"),
        line("", "ICBC3", fee="0.00", coupon=None),
        line("R1", "ICBC4", "refund", "30.00", fee=None, coupon=None, orig="P1"),
        line("R2", "ICBC5", "refund", "3.00", fee=None, coupon=None, orig="P1", status="pending"),
        line(
            "V1", "ICBC6", "reversal", "9.00", fee=None, coupon=None, orig="P2", status="reversed"
        ),
    ],
    "csv": [
        line("P1", "PSP-1", coupon="3.40"),
        line("P2", "PSP-2", fee=None, coupon=None, currency="JPY", amount="1200"),
        line("P3", "PSP-3", amount="1.234", currency="KWD", fee="0.0125", coupon=None),
        line(
            "R1", "PSP-4", "refund", "10.00", fee="-0.06", coupon=None, orig="P1", status="failed"
        ),
        line(
            "V1", "PSP,5", "reversal", "10.00", fee=None, coupon=None, orig='P"2', status="reversed"
        ),
        line("", "PSP-6", at="2026-11-24T10:15:30.007Z", coupon=None),
    ],
}
DECLARES_DATE = {"alipay", "mt940", "camt053"}


def statement(fmt: str, lines: list[StatementLine], **meta: str) -> Statement:
    return Statement("ch", DAY, fmt, lines, meta=dict(meta))


def assert_round_trip(st_: Statement) -> Statement:
    data = write(st_)
    assert detect(data) == st_.format
    back = parse(data, st_.format, file_name="x", channel_id="ch")
    assert [x.essence() for x in back.lines] == [x.essence() for x in st_.lines]
    if st_.format in DECLARES_DATE:
        assert back.business_date == st_.business_date
    assert write(replace(back, business_date=st_.business_date)) == data  # the bytes again
    # the stored line numbers point at the items, the raw text is the item's text
    text = data.decode("gbk" if st_.format == "alipay" else "utf-8").splitlines()
    for x in back.lines:
        assert x.raw.splitlines()[0].strip() == text[x.line_no - 1].strip()
    return back


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip(fmt: str) -> None:
    back = assert_round_trip(statement(fmt, ROUND_TRIP[fmt]))
    assert back.declared is not None
    assert back.declared.amount == sum(x.amount for x in ROUND_TRIP[fmt])


def test_round_trip_camt_001_08() -> None:
    data = write(statement("camt053", ROUND_TRIP["camt053"], version="001.08"))
    assert b"camt.053.001.08" in data and b"<Sts><Cd>BOOK</Cd></Sts>" in data
    assert_round_trip(statement("camt053", ROUND_TRIP["camt053"], version="001.08"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_statement_round_trips(fmt: str) -> None:
    back = assert_round_trip(statement(fmt, []))
    assert back.lines == []


# ids start with a letter: WeChat writes "0" for an empty id column
_ids = st.from_regex(r"[A-Z][A-Z0-9_]{0,39}", fullmatch=True)
_cents = st.integers(min_value=1, max_value=10**10)


@st.composite
def _lines(draw: st.DrawFn, fmt: str) -> list[StatementLine]:
    n = draw(st.integers(min_value=0, max_value=12))
    out = []
    for i in range(n):
        kinds = ["payment", "refund"] + (["reversal"] if fmt != "alipay" else [])
        kind = draw(st.sampled_from(kinds))
        fee = Decimal(draw(st.integers(min_value=0, max_value=10**6))).scaleb(-2)
        if kind != "payment" and fmt != "camt053" and draw(st.booleans()):
            fee = -fee
        coupon = None
        if kind != "refund":
            coupon = Decimal(draw(st.integers(min_value=0, max_value=10**5))).scaleb(-2)
        if fmt == "wechat" and kind != "refund":
            coupon = coupon or Decimal("0.00")
        at = ms("2026-11-24T00:00:00+08:00") + draw(st.integers(0, 86_399)) * 1000
        status = {"payment": "success", "refund": "success", "reversal": "reversed"}[kind]
        out.append(
            StatementLine(
                line_no=0,
                txn_id=draw(_ids),
                channel_txn_id=f"C{i}-" + draw(_ids),
                original_txn_id="" if kind == "payment" else draw(_ids),
                kind=kind,
                status=status,
                currency="CNY",
                amount=Decimal(draw(_cents)).scaleb(-2),
                fee=fee,
                coupon_amount=coupon,
                merchant_ref="" if fmt == "csv" else draw(st.sampled_from(["", "M1", "S-002"])),
                occurred_at_ms=at,
            )
        )
    return out


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_property(fmt: str, data: st.DataObject) -> None:
    lines = data.draw(_lines(fmt))
    if fmt == "alipay":
        lines = [
            replace(x, fee=x.fee if x.kind == "refund" else abs(x.fee or Decimal(0))) for x in lines
        ]
    assert_round_trip(statement(fmt, lines))


# ------------------------------------------------------------------ samples


def sample(name: str) -> Statement:
    data = (DATA / name).read_bytes()
    return parse(data, detect(data), file_name=name, channel_id="ch")


def test_sample_wechat() -> None:
    s = sample("wechat-2026-11-24.csv")
    assert s.format == "wechat" and s.business_date is None  # the bill states no date
    assert [(x.line_no, x.kind, x.txn_id, x.amount, x.fee, x.coupon_amount) for x in s.lines] == [
        (2, "payment", "P00000001", Decimal("88.00"), Decimal("0.53"), Decimal("0")),
        (3, "payment", "P00000002", Decimal("45.50"), Decimal("0.27"), Decimal("5.00")),
        (4, "refund", "R00000001", Decimal("20.00"), Decimal("-0.12"), None),
        (5, "payment", "P00000003", Decimal("1200.00"), Decimal("7.20"), Decimal("0")),
    ]
    r = s.lines[2]
    assert (r.channel_txn_id, r.original_txn_id) == ("50000301232026112412345678", "P00000001")
    assert s.lines[0].occurred_at_ms == ms("2026-11-24T09:12:45+08:00")
    assert s.lines[0].merchant_ref == "1900012345"
    assert s.lines[0].raw.startswith("`2026-11-24 09:12:45,`wx8888888888888888")
    assert s.declared is not None
    assert (s.declared.count, s.declared.amount, s.declared.fee) == (
        4,
        Decimal("1353.50"),
        Decimal("7.88"),
    )


def test_sample_alipay() -> None:
    s = sample("alipay-20261124.csv")
    assert s.business_date == DAY and s.meta["account"] == "20881234567890120156"
    got = [
        (x.line_no, x.kind, x.txn_id, x.original_txn_id, x.amount, x.fee, x.coupon_amount)
        for x in s.lines
    ]
    assert got == [
        (6, "payment", "P10000001", "", Decimal("189.00"), Decimal("1.13"), Decimal("10.00")),
        (7, "payment", "P10000002", "", Decimal("459.00"), Decimal("2.75"), Decimal("0")),
        (8, "refund", "R10000001", "P10000001", Decimal("50.00"), Decimal("-0.30"), None),
    ]
    assert (
        s.lines[2].channel_txn_id == s.lines[0].channel_txn_id
    )  # Alipay refunds keep the trade no
    assert s.lines[0].occurred_at_ms == ms("2026-11-24T10:02:03+08:00")
    assert s.lines[0].merchant_ref == "S001" and "春季新款T恤" in s.lines[0].raw


def test_sample_mt940() -> None:
    s = sample("bank-2026-11-24.sta")
    assert s.business_date == DAY
    assert s.meta["account"] == "CN8801234567890123456" and s.meta["opening_balance"] == "50000.00"
    got = [
        (x.line_no, x.kind, x.status, x.txn_id, x.channel_txn_id, x.amount, x.fee) for x in s.lines
    ]
    assert got == [
        (
            5,
            "payment",
            "success",
            "P20000001",
            "UP2611240001",
            Decimal("8000.00"),
            Decimal("12.00"),
        ),
        (
            8,
            "payment",
            "success",
            "P20000002-SPLIT-A",
            "UP2611240002",
            Decimal("350.25"),
            Decimal("0.53"),
        ),
        (11, "refund", "success", "R20000001", "UP2611240003", Decimal("1200.00"), Decimal("0")),
        (14, "reversal", "reversed", "V20000001", "UP2611240004", Decimal("350.25"), None),
    ]
    assert s.lines[2].original_txn_id == "P20000000"
    assert s.lines[0].merchant_ref == "898310058120001"
    assert s.lines[0].occurred_at_ms == ms("2026-11-24T01:30:15+00:00")
    assert s.lines[0].raw.startswith(":61:2611241124C8000,00NTRFP20000001//UP2611240001\n:86:")


def test_sample_camt053() -> None:
    s = sample("bank-camt053-2026-11-24.xml")
    assert s.business_date == DAY and s.meta["version"] == "001.08"
    got = [
        (x.line_no, x.kind, x.txn_id, x.channel_txn_id, x.amount, x.fee, x.coupon_amount)
        for x in s.lines
    ]
    assert got == [
        (
            42,
            "payment",
            "P30000001",
            "ICBC20261124000001",
            Decimal("2500.00"),
            Decimal("3.75"),
            None,
        ),
        (
            59,
            "payment",
            "P30000002",
            "ICBC20261124000002",
            Decimal("500.00"),
            Decimal("0.75"),
            Decimal("20.00"),
        ),
        (76, "refund", "R30000001", "ICBC20261124000003", Decimal("320.00"), None, None),
    ]
    assert s.lines[2].original_txn_id == "P30000001"
    assert s.lines[1].occurred_at_ms == ms("2026-11-24T14:02:33+08:00")
    assert s.lines[0].raw.startswith("<Ntry>") and s.lines[0].raw.endswith("</Ntry>")


def test_camt053_entries_get_distinct_line_numbers_whatever_the_line_ends() -> None:
    data = (DATA / "bank-camt053-2026-11-24.xml").read_bytes()
    flat = re.sub(rb">\s*\n\s*<", b"><", data)  # no line breaks: entries share line 1
    cr = data.replace(b"\n", b"\r")
    utf16 = data.replace(b'"UTF-8"', b'"UTF-16"').decode().encode("utf-16")
    for d, want in ((flat, [1, 2, 3]), (cr, [42, 59, 76]), (utf16, [42, 59, 76])):
        s = parse(d, "camt053", file_name="f", channel_id="ch")
        assert [x.line_no for x in s.lines] == want
        assert [x.raw.startswith("<Ntry>") for x in s.lines] == [True] * 3
    # an error names the physical line and the entry's place on it
    bad = flat.replace(b"<EndToEndId>P30000002", b"<EndToEndId>-2+3")
    with pytest.raises(StatementError, match=r"line 1, field EndToEndId .*\(entry 2 on line 1\)"):
        parse(bad, "camt053", file_name="f", channel_id="ch")


def test_sample_generic_csv() -> None:
    s = sample("psp-2026-11-24.csv")
    got = [
        (x.line_no, x.kind, x.status, x.currency, x.amount, x.fee, x.coupon_amount) for x in s.lines
    ]
    assert got == [
        (2, "payment", "success", "CNY", Decimal("66.60"), Decimal("0.40"), Decimal("3.40")),
        (3, "payment", "success", "USD", Decimal("12.99"), Decimal("0.38"), None),
        (4, "refund", "pending", "CNY", Decimal("10.00"), None, None),
    ]
    assert s.lines[1].occurred_at_ms == ms("2026-11-24T00:00:00.250+00:00")


def test_detect_refuses_unknown_content() -> None:
    with pytest.raises(StatementError, match="unknown statement format"):
        detect(b"hello,world\n1,2\n", "x.txt")


def test_structured_info_survives_wrapping() -> None:
    assert parse_info("/EREF/T1/CREF/C\n1/FEE/CNY0,60") == {
        "EREF": "T1",
        "CREF": "C1",
        "FEE": "CNY0,60",
    }


def test_error_renders_file_line_and_field() -> None:
    e = StatementError(
        "'abc' is not an amount",
        file_name="wechat-2026-11-24.csv",
        line_no=17,
        field="手续费 (fee)",
    )
    assert str(e) == "wechat-2026-11-24.csv line 17, field 手续费 (fee): 'abc' is not an amount"
