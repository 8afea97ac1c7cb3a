"""Statement parsers and writers, pure: bad files refused with the line and field at
fault, writers refusing what their format cannot say, local times."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from recon.statements import (
    StatementError,
    alipay,
    camt053,
    detect,
    generic_csv,
    parse,
    swift_mt940,
    wechat,
    write,
)
from tests.recon.test_statements_formats import DATA, line, statement


def refuse(data: bytes, fmt: str, pattern: str, name: str = "f") -> StatementError:
    with pytest.raises(StatementError) as info:
        parse(data, fmt, file_name=name)
    assert re.search(pattern, str(info.value)), str(info.value)
    return info.value


def wechat_text() -> str:
    return (DATA / "wechat-2026-11-24.csv").read_bytes().decode("utf-8")


def test_wechat_bad_fee_names_line_and_field() -> None:
    bad = wechat_text().replace("`0.27,", "`abc,")
    e = refuse(
        bad.encode(), "wechat", r"line 3, field 手续费 \(fee\): 'abc' is not an amount", "w.csv"
    )
    assert e.line_no == 3 and e.field == "手续费 (fee)" and e.file_name == "w.csv"


def test_wechat_truncated() -> None:
    text = wechat_text()
    refuse(text.split("总交易单数")[0].encode(), "wechat", r"line 6: truncated: the summary")
    cut = text.encode()[: len(text.encode()) // 2]
    cut = cut[: cut.rfind(b"`") - 3]  # cut inside a row, on a character boundary
    refuse(cut.decode("utf-8", "ignore").encode(), "wechat", r"fields, found|truncated")


def test_wechat_footer_off_by_one_cent() -> None:
    bad = wechat_text().replace("`1333.50,`20.00", "`1333.51,`20.00")
    refuse(bad.encode(), "wechat", r"line 7, field 应结订单总金额: declares 1333.51, .*1333.50")
    bad = wechat_text().replace("`4,`1333.50", "`5,`1333.50")
    refuse(bad.encode(), "wechat", r"line 7, field 总交易单数 \(count\): declares 5 rows")
    big = wechat_text().replace("`4,`1333.50", "`4" + "9" * (1 << 20) + ",`1333.50")
    refuse(big.encode(), "wechat", r"line 7, field 总交易单数 \(count\): '4999.* is not a count")


def test_wechat_in_gbk_is_wrong_encoding() -> None:
    refuse(wechat_text().encode("gbk"), "wechat", r"line 1: wrong encoding: .*UTF-8.*GBK")


def test_wechat_formula_in_a_text_field() -> None:
    bad = wechat_text().replace("`拿铁 大杯", '`=HYPERLINK("http://x")')
    refuse(bad.encode(), "wechat", r"line 3, field 商品名称: '=HYPERLINK.*formula")
    bad = wechat_text().replace("`table=7", "`@SUM(A1)")
    refuse(bad.encode(), "wechat", r"line 3, field 商户数据包: '@SUM")


def test_wechat_missing_backtick_and_bad_state() -> None:
    refuse(
        wechat_text().replace("`88.00,`0.00", "88.00,`0.00", 1).encode(),
        "wechat",
        r"line 2, field 应结订单金额 \(amount\).*back-tick",
    )
    refuse(
        wechat_text().replace("`NATIVE,`SUCCESS", "`NATIVE,`NOTPAY").encode(),
        "wechat",
        r"line 3, field 交易状态 \(kind\)",
    )
    refuse(
        wechat_text().replace("`CNY,`45.50", "`XXX,`45.50").encode(),
        "wechat",
        r"line 3, field 货币种类 \(currency\): 'XXX'",
    )
    refuse(
        wechat_text().replace("`2026-11-24 12:30:02", "`2026-11-31 12:30:02").encode(),
        "wechat",
        r"line 3, field 交易时间 \(occurred_at\)",
    )


def test_wechat_rows_checked_cell_by_cell_without_quotes() -> None:
    # rows without quotes take a fast path: it must refuse what the cell-by-cell
    # checks refuse, with the same line and field
    text = wechat_text()
    refuse(
        text.replace("`拿铁 大杯", "`-SUM(A1)").encode(),
        "wechat",
        r"line 3, field 商品名称: '-SUM\(A1\)' starts with '-'.*formula",
    )
    refuse(
        text.replace("`拿铁 大杯", "`\tx").encode(),
        "wechat",
        r"line 3, field 商品名称: '\\tx' starts with '\\t'",
    )
    refuse(
        text.replace("`P00000002", "`+P00000002").encode(),
        "wechat",
        r"line 3, field 商户订单号 \(txn_id\): '\+P00000002'",
    )
    refuse(
        text.replace("`拿铁 大杯", "`拿铁,大杯").encode(),
        "wechat",
        r"line 3: expected 27 fields, found 28",
    )
    refuse(
        text.replace("`拿铁 大杯", "`拿铁 `大杯").replace(",`table=7", ",table=7").encode(),
        "wechat",
        r"line 3, field 商户数据包: 'table=7' lacks the back-tick prefix",
    )
    refuse(
        text.replace("`0.60%,`50.50,`0.00,`", "`0.60%,`50.50,`0.00,").encode(),
        "wechat",
        r"line 3, field 费率备注: '' lacks the back-tick prefix",
    )
    refuse(
        text.replace("\r\n`2026-11-24 12:30:02", "\r\n \r\n`x").encode(), "wechat", "line 3: empty"
    )
    # a negative fee (a refund's) is not a formula; times read again give the same
    s = parse(text.replace("`2026-11-24 23:58:40", "`2026-11-24 09:12:45").encode(), "wechat")
    assert [x.fee for x in s.lines][2] == Decimal("-0.12")
    assert s.lines[0].occurred_at_ms == s.lines[3].occurred_at_ms
    # a bad time repeated: refused on its first line
    bad = text.replace("`2026-11-24 12:30:02", "`2026-11-24 24:30:02").replace(
        "`2026-11-24 23:58:40", "`2026-11-24 24:30:02"
    )
    refuse(bad.encode(), "wechat", r"line 3, field 交易时间 \(occurred_at\): .* valid time")


def alipay_bytes() -> bytes:
    return (DATA / "alipay-20261124.csv").read_bytes()


def test_alipay_utf8_is_wrong_encoding() -> None:
    utf8 = alipay_bytes().decode("gbk").encode("utf-8")
    assert detect(utf8) == "alipay"
    refuse(utf8, "alipay", r"line 1: wrong encoding: this file is UTF-8, Alipay bills are GBK")


def test_alipay_bad_files() -> None:
    text = alipay_bytes().decode("gbk")
    refuse(
        text.split("#交易合计")[0].encode("gbk"),
        "alipay",
        r"truncated: the #交易合计 line is missing",
    )
    refuse(
        text.split("\r\n#" + "-" * 41 + "业务明细列表结束")[0].encode("gbk"),
        "alipay",
        r"line 9: truncated: the line #-----业务明细列表结束",
    )
    refuse(text.split("支付宝交易号,")[0].encode("gbk"), "alipay", r"line 5: truncated")
    refuse(
        text.replace("商家实收共648.00元", "商家实收共648.01元").encode("gbk"),
        "alipay",
        r"line 10, field 交易合计 商家实收 \(amount\): declares 648.01",
    )
    refuse(
        text.replace("尺码不合适", "+1-800-CALL-ME").encode("gbk"),
        "alipay",
        r"line 8, field 备注: '\+1-800",
    )
    refuse(
        text.replace(",退款\t", ",冲正\t").encode("gbk"),
        "alipay",
        r"line 8, field 业务类型 \(kind\)",
    )
    refuse(
        text.replace("终止日期：[2026年11月25日", "终止日期：[2026年11月26日").encode("gbk"),
        "alipay",
        r"line 3, field 终止日期: .*not one business day",
    )


def mt940_text() -> str:
    return (DATA / "bank-2026-11-24.sta").read_text()


def test_mt940_bad_files() -> None:
    text = mt940_text()
    refuse(text.split(":62F:")[0].encode(), "mt940", r"field :62F: \(closing balance\): truncated")
    refuse(
        text.replace("C261124CNY56800,00", "C261124CNY56800,01").encode(),
        "mt940",
        r"line 17, field :62F: \(closing balance\): "
        r"opening 50000.00 \+ entries 6800.00 .*off by 0.01",
    )
    refuse(
        text.replace("C8000,00NTRF", "C8000,0.0NTRF").encode(),
        "mt940",
        r"line 5, field :61: \(statement line\)",
    )
    refuse(
        text.replace("/EREF/P20000001", "/EREF/=cmd|' /C calc'!A0").encode(),
        "mt940",
        r"line 5, field /EREF/ \(txn_id\): \"=cmd.*formula",
    )
    refuse(
        text.replace("/FEE/CNY\n12,00", "/FEE/USD\n12,00").encode(),
        "mt940",
        r"line 5, field /FEE/ \(fee\): in USD",
    )


def camt_text() -> str:
    return (DATA / "bank-camt053-2026-11-24.xml").read_text()


def test_camt_bad_files() -> None:
    text = camt_text()
    refuse(
        text[: text.index("<Ntry>", text.index("<Ntry>") + 10)].encode(),
        "camt053",
        r"line \d+: not well-formed XML \(truncated\?\)",
    )
    refuse(
        text.replace("<Sum>3320.00</Sum>", "<Sum>3320.01</Sum>").encode(),
        "camt053",
        r"TxsSummry/TtlNtries/Sum: declares 3320.01",
    )
    refuse(
        text.replace('<Amt Ccy="CNY">12680.00', '<Amt Ccy="CNY">12680.01').encode(),
        "camt053",
        r"Bal CLBD \(closing balance\).*off by 0.01",
    )
    refuse(
        text.replace("<EndToEndId>P30000002", "<EndToEndId>-2+3").encode(),
        "camt053",
        r"line 59, field EndToEndId \(txn_id\): '-2\+3'",
    )
    refuse(
        text.replace('<Amt Ccy="CNY">500.00', '<Amt Ccy="USD">500.00').encode(),
        "camt053",
        r"line 59, field Ntry/Amt \(amount\): currency 'USD'",
    )
    bomb = text.replace(
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<?xml version="1.0"?>\n<!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">]>',
    )
    refuse(bomb.encode(), "camt053", r"line 2, field DOCTYPE: refused: the XML declares a DTD")
    # checked after decoding: a UTF-16 document's DTD too; an encoding expat cannot read
    utf16 = bomb.replace('version="1.0"?>', 'version="1.0" encoding="UTF-16"?>', 1)
    utf16 = utf16.replace("</AcctSvcrRef>", "&a;</AcctSvcrRef>", 1)
    refuse(utf16.encode("utf-16"), "camt053", r"line 2, field DOCTYPE: refused")
    euc = text.replace('encoding="UTF-8"', 'encoding="EUC-JP"', 1).encode()
    refuse(euc, "camt053", r"line 1, field encoding: encoding not supported")


def csv_text() -> str:
    return (DATA / "psp-2026-11-24.csv").read_text()


def test_generic_csv_bad_files() -> None:
    text = csv_text()
    refuse(text[:-1].encode(), "csv", r"line 5: truncated: the last line has no line end")
    refuse(
        text.replace("#total,3,89.59", "#total,3,89.60").encode(),
        "csv",
        r"line 5, field #total amount: declares 89.60, .*89.59 \(off by 0.01\)",
    )
    refuse(
        text.replace("66.60,0.40", "-66.60,0.40").encode(),
        "csv",
        r"line 2, field amount: '-66.60' must not be negative",
    )
    refuse(
        text.replace("12.99", "12.999").encode(),
        "csv",
        r"line 3, field amount: '12.999' has more than 2 decimal places for USD",
    )
    refuse(text.replace("P40000002", "=1+1").encode(), "csv", r"line 3, field txn_id: '=1\+1'")
    refuse(
        text.replace("T08:00:00.250+08:00", "T08:00:00").encode(),
        "csv",
        r"line 3, field occurred_at",
    )
    refuse(text.replace(",pending,", ",done,").encode(), "csv", r"line 4, field status: 'done'")
    refuse(b"x,y\n", "csv", r"line 1: the header must be exactly")
    for count in ("\u00b2", "9" * 5000):  # a digit int() refuses; a number int() refuses
        refuse(
            text.replace("#total,3,", f"#total,{count},").encode(),
            "csv",
            r"line 5, field #total count: .* is not a count",
        )


def test_writers_refuse_what_their_format_cannot_say() -> None:
    with pytest.raises(ValueError, match="no reversal rows"):
        alipay.write(statement("alipay", [line("V", "C", "reversal", orig="P")]))
    with pytest.raises(ValueError, match="one currency"):
        swift_mt940.write(statement("mt940", [line("A", "1"), line("B", "2", currency="USD")]))
    with pytest.raises(ValueError, match="one currency"):
        camt053.write(statement("camt053", [line("A", "1"), line("B", "2", currency="USD")]))
    assert (
        generic_csv.write(statement("csv", []), trailer=False)
        == (generic_csv.HEADER + "\n").encode()
    )
    assert wechat.write(statement("wechat", [])).endswith(
        b"`0,`0.00,`0.00,`0.00,`0.00,`0.00,`0.00\r\n"
    )


def test_times_are_china_standard_time() -> None:
    s = parse(write(statement("wechat", [line("P", "C", at="2026-11-24T16:00:00Z")])), "wechat")
    assert "`2026-11-25 00:00:00," in s.lines[0].raw
    assert s.lines[0].occurred_at_ms == int(
        datetime(2026, 11, 24, 16, tzinfo=UTC).timestamp() * 1000
    )


def test_local_times_read_once_give_what_local_time_ms_gives() -> None:
    from recon.statements.fields import LocalTimes, Where, local_time_ms

    where = Where("f")
    times = LocalTimes(where)
    values = ["2026-11-24 10:15:30", "2026-11-24 10:15:59", "2026-11-24 10:15:00"]
    values += ["2026-11-24 10:16:01", "2026-11-24 10:15:30", "２０２６-11-24 10:15:30"]
    for v in values:
        assert times(2, "t", v) == local_time_ms(where, 2, "t", v)
    for bad in ("2026-11-24 10:15:60", "2026-11-31 10:15:30", "2026-11-24 10:15:3x"):
        with pytest.raises(StatementError) as want:
            local_time_ms(where, 5, "t", bad)
        for _ in range(2):  # refused each time, with the same message
            with pytest.raises(StatementError) as got:
                times(5, "t", bad)
            assert str(got.value) == str(want.value) and bad in str(got.value)
