"""Alipay merchant bill (支付宝业务明细), a GBK-encoded CSV with `#` comment lines.

    #支付宝业务明细查询
    #账号：[20881234567890120156]
    #起始日期：[2026年11月24日 00:00:00]   终止日期：[2026年11月25日 00:00:00]
    #-----------------------------------------业务明细列表----------------------------------------
    支付宝交易号,商户订单号,业务类型,...,备注        header (25 columns)
    2026112422001412340000000001\t,T1\t,交易\t,...   one row per item, each value
                                                    followed by a tab
    #-----------------------------------------业务明细列表结束------------------------------------
    #交易合计：2笔，商家实收共300.00元，商家优惠共1.00元
    #退款合计：1笔，商家实收共-50.00元，商家优惠共0.00元
    #导出时间：[2026年11月25日 09:12:03]

Times are China Standard Time; amounts are CNY. 业务类型: 交易 (a payment) or 退款 (a
refund). The business date is the day between 起始日期 and 终止日期.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import BinaryIO

from recon.statements import fields as F
from recon.statements.model import Statement, StatementLine, Totals

FORMAT = "alipay"
TIME_FIELD = "完成时间 (occurred_at)"
CTID_FIELD = "支付宝交易号 (channel_txn_id)"

COLUMNS = (
    "支付宝交易号",
    "商户订单号",
    "业务类型",
    "商品名称",
    "创建时间",
    "完成时间",
    "门店编号",
    "门店名称",
    "操作员",
    "终端号",
    "对方账户",
    "订单金额（元）",
    "商家实收（元）",
    "支付宝红包（元）",
    "集分宝（元）",
    "支付宝优惠（元）",
    "商家优惠（元）",
    "券核销金额（元）",
    "券名称",
    "商家红包消费金额（元）",
    "卡消费金额（元）",
    "退款批次号/请求号",
    "服务费（元）",
    "分润（元）",
    "备注",
)
HEADER = ",".join(COLUMNS)
TITLE = "#支付宝业务明细查询"
RULE = "#" + "-" * 41 + "业务明细列表" + "-" * 40
END_RULE = "#" + "-" * 41 + "业务明细列表结束" + "-" * 36
_MODEL = {
    "支付宝交易号": "channel_txn_id",
    "商户订单号": "txn_id",
    "业务类型": "kind",
    "完成时间": "occurred_at",
    "门店编号": "merchant_ref",
    "商家实收（元）": "amount",
    "商家优惠（元）": "coupon_amount",
    "退款批次号/请求号": "txn_id",
    "服务费（元）": "fee",
}
_AMOUNT_COLS = frozenset(i for i, c in enumerate(COLUMNS) if c.endswith("（元）"))
_TIME_COLS = frozenset((4, 5))
_CN_TIME = re.compile(r"(\d{4})年(\d{2})月(\d{2})日 (\d{2}):(\d{2}):(\d{2})")
_TOTAL = re.compile(
    r"#(交易|退款)合计：(\d+)笔，商家实收共(-?[0-9.]+)元(?:，商家优惠共(-?[0-9.]+)元)?.*"
)


def label(column: str) -> str:
    m = _MODEL.get(column)
    return f"{column} ({m})" if m else column


def sniff(data: bytes) -> bool:
    head = data.removeprefix(b"\xef\xbb\xbf")
    return head.startswith(TITLE.encode("gbk")) or head.startswith(TITLE.encode("utf-8"))


def _decode(where: F.Where, data: bytes) -> str:
    try:
        data.decode("utf-8")
        if not data.isascii():
            raise where.error(
                1,
                None,
                "wrong encoding: this file is UTF-8, Alipay bills are GBK (was it "
                "converted or re-saved?)",
            )
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("gbk")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise where.error(line, None, "wrong encoding: not valid GBK") from None


def _cn_time(where: F.Where, line_no: int, field: str, value: str) -> datetime:
    m = _CN_TIME.fullmatch(value)
    if m is None:
        raise where.error(line_no, field, f"{value[:40]!r} is not like 2026年11月24日 00:00:00")
    try:
        y, mo, d, h, mi, sec = (int(g) for g in m.groups())
        return datetime(y, mo, d, h, mi, sec, tzinfo=F.CST)
    except ValueError as exc:
        raise where.error(line_no, field, f"{value!r}: {exc}") from None


def _check_file(where: F.Where, f: BinaryIO) -> None:
    """What `_decode` refuses, read from the start of `f` a chunk at a time (incremental
    UTF-8 and GBK decoders): UTF-8 that is not ASCII, then the line of the first byte
    that is not GBK (\\n is never part of a GBK character)."""
    f.seek(0)
    utf8 = codecs.getincrementaldecoder("utf-8")()
    gbk = codecs.getincrementaldecoder("gbk")()
    is_utf8 = is_gbk = is_ascii = True
    while chunk := f.read(F.CHUNK):
        is_ascii = is_ascii and chunk.isascii()
        is_utf8 = is_utf8 and _decodes(utf8, chunk, False)
        is_gbk = is_gbk and _decodes(gbk, chunk, False)
    if is_utf8 and _decodes(utf8, b"", True) and not is_ascii:
        raise where.error(
            1,
            None,
            "wrong encoding: this file is UTF-8, Alipay bills are GBK (was it "
            "converted or re-saved?)",
        )
    if not (is_gbk and _decodes(gbk, b"", True)):
        f.seek(0)
        line = 1
        for n, raw in enumerate(f, start=1):
            line = n
            if not _decodes(codecs.getincrementaldecoder("gbk")(), raw, True):
                break
        raise where.error(line, None, "wrong encoding: not valid GBK")


def _decodes(dec: codecs.IncrementalDecoder, chunk: bytes, final: bool) -> bool:
    try:
        dec.decode(chunk, final)
    except UnicodeDecodeError:
        return False
    return True


class _Lines:
    """The file's lines with a look at the next one; `i`: the 0-based index of the next."""

    def __init__(self, lines: Iterator[str]) -> None:
        self._lines = lines
        self.i = 0
        self.next: str | None = next(lines, None)

    def take(self) -> str:
        line = self.next
        assert line is not None
        self.next = next(self._lines, None)
        self.i += 1
        return line


def scan(data: bytes, file_name: str, env: Statement) -> Iterator[StatementLine]:
    where = F.Where(file_name)
    text = _decode(where, data)
    yield from _scan_lines(where, _Lines(iter(F.physical_lines(text))), env)


def scan_file(f: BinaryIO, file_name: str, env: Statement) -> Iterator[StatementLine]:
    """`scan` reading `f` a line at a time (its encoding checked first, in a pass over
    the file: the same refusals in the same order)."""
    where = F.Where(file_name)
    _check_file(where, f)
    yield from _scan_lines(where, _Lines(F.file_lines(f, "gbk")), env)


def _scan_lines(where: F.Where, lines: _Lines, env: Statement) -> Iterator[StatementLine]:
    if lines.next != TITLE:
        raise where.error(1, None, f"not an Alipay bill: it must start with {TITLE}")
    lines.take()
    _head(where, lines, env)
    i = lines.i
    if lines.next is None:
        raise where.error(i + 1, None, "truncated: the column header and rows are missing")
    if lines.next != HEADER:
        got = lines.next[:60]
        raise where.error(i + 1, None, f"expected the Alipay column header, found {got!r}")
    lines.take()
    n_cols = len(COLUMNS)
    counts = {"交易": 0, "退款": 0}
    collected = {"交易": Decimal(0), "退款": Decimal(0)}
    coupons = {"交易": Decimal(0), "退款": Decimal(0)}
    while lines.next is not None and not lines.next.startswith("#"):
        line_no = lines.i + 1
        raw = lines.take()
        cells = F.split_simple(raw)
        if len(cells) != n_cols:
            raise where.error(
                line_no, None, f"expected {n_cols} fields, found {len(cells)} (a broken row)"
            )
        v = [c.rstrip(" \t") for c in cells]
        for c, val in enumerate(v):
            if c not in _AMOUNT_COLS and c not in _TIME_COLS:
                F.text(where, line_no, label(COLUMNS[c]), val)
        line_ = _item(where, line_no, raw, v)
        counts[v[2]] += 1
        collected[v[2]] += Decimal(v[12])
        coupons[v[2]] += Decimal(v[16])
        yield line_
    if lines.next != END_RULE:
        raise where.error(
            lines.i + 1,
            None,
            "truncated: the line #-----业务明细列表结束----- is missing after the rows",
        )
    lines.take()
    declared = _footer(where, lines, env)
    _check_totals(where, lines.i, declared, counts, collected, coupons)
    pay, ref = declared["交易"], declared["退款"]
    env.declared = Totals(
        count=pay[0] + ref[0],
        amount=pay[1] - ref[1],
        fee=None,
        items=(("交易合计", f"{pay[0]}笔 {pay[1]}"), ("退款合计", f"{ref[0]}笔 {ref[1]}")),
    )


def _head(where: F.Where, lines: _Lines, env: Statement) -> None:
    """The `#` lines before the header (account, the day covered)."""
    while lines.next is not None and lines.next.startswith("#"):
        i = lines.i
        line = lines.take()
        if line.startswith("#账号："):
            env.meta["account"] = line[4:].strip("[]")
        elif line.startswith("#起始日期："):
            m = re.fullmatch(r"#起始日期：\[(.+?)\]\s+终止日期：\[(.+?)\]", line)
            if m is None:
                raise where.error(i + 1, "起始日期", "expected #起始日期：[...]   终止日期：[...]")
            start = _cn_time(where, i + 1, "起始日期", m[1])
            end = _cn_time(where, i + 1, "终止日期", m[2])
            if end - start != timedelta(days=1):
                raise where.error(
                    i + 1, "终止日期", f"the bill covers {m[1]} to {m[2]}: not one business day"
                )
            env.business_date = (
                (end - timedelta(seconds=1)).date()
                if (end.time().hour == end.time().minute == end.time().second == 0)
                else end.date()
            )
            env.meta["start"] = m[1]


# kind -> (count, 商家实收, 商家优惠 or None, line number) as the footer declares them
_Declared = dict[str, tuple[int, Decimal, Decimal | None, int]]


def _footer(where: F.Where, lines: _Lines, env: Statement) -> _Declared:
    """The `#` lines after the rows (to the end): the totals and the export time."""
    declared: _Declared = {}
    while lines.next is not None:
        i = lines.i
        line = lines.take()
        m = _TOTAL.fullmatch(line)
        if m:
            try:
                declared[m[1]] = (
                    int(m[2]),
                    Decimal(m[3]),
                    Decimal(m[4]) if m[4] else None,
                    i + 1,
                )
            except ArithmeticError:
                raise where.error(i + 1, f"{m[1]}合计", f"{line[:60]!r}: bad figures") from None
        elif line.startswith("#导出时间："):
            env.meta["exported"] = line[6:].strip("[]")
        elif not line.startswith("#"):
            raise where.error(i + 1, None, "unexpected content after the rows")
    return declared


def _check_totals(
    where: F.Where,
    n_lines: int,
    declared: _Declared,
    counts: dict[str, int],
    collected: dict[str, Decimal],
    coupons: dict[str, Decimal],
) -> None:
    """The footer's totals against the rows."""
    for kind in ("交易", "退款"):
        if kind not in declared:
            raise where.error(
                n_lines + 1, f"{kind}合计", f"truncated: the #{kind}合计 line is missing"
            )
        n, total, coupon, line_no = declared[kind]
        cnt, rows_sum, got_coupon = counts[kind], collected[kind], coupons[kind]
        if n != cnt:
            raise where.error(line_no, f"{kind}合计 (count)", f"declares {n}笔, the rows are {cnt}")
        if total != rows_sum:
            raise where.error(
                line_no,
                f"{kind}合计 商家实收 (amount)",
                f"declares {total}, the rows add up to {rows_sum} (off by {total - rows_sum})",
            )
        if coupon is not None and coupon != got_coupon:
            raise where.error(
                line_no,
                f"{kind}合计 商家优惠 (coupon_amount)",
                f"declares {coupon}, the rows add up to {got_coupon}",
            )


def _item(where: F.Where, line_no: int, raw: str, v: list[str]) -> StatementLine:
    for c in _AMOUNT_COLS:
        F.amount(where, line_no, label(COLUMNS[c]), v[c], "CNY", signed=True)
    occurred = F.local_time_ms(where, line_no, label("完成时间"), v[5])
    F.local_time_ms(where, line_no, label("创建时间"), v[4])
    collected = Decimal(v[12])
    fee = -Decimal(v[22])
    if not v[0]:
        raise where.error(line_no, label("支付宝交易号"), "empty")
    if v[2] == "交易":
        if collected <= 0:
            raise where.error(
                line_no, label("商家实收（元）"), f"{v[12]!r}: a payment collects more than zero"
            )
        if fee < 0:
            raise where.error(
                line_no, label("服务费（元）"), f"{v[22]!r}: a payment's fee is charged"
            )
        kind, txn, orig, cpn = "payment", v[1], "", Decimal(v[16])
    elif v[2] == "退款":
        if collected >= 0:
            raise where.error(
                line_no, label("商家实收（元）"), f"{v[12]!r}: a refund pays back (negative)"
            )
        if not v[21]:
            raise where.error(line_no, label("退款批次号/请求号"), "a refund row needs it")
        kind, txn, orig, cpn = "refund", v[21], v[1], None
    else:
        raise where.error(line_no, label("业务类型"), f"{v[2][:20]!r} is neither 交易 nor 退款")
    return StatementLine(
        line_no=line_no,
        txn_id=txn,
        channel_txn_id=v[0],
        original_txn_id=orig,
        kind=kind,
        status="success",
        currency="CNY",
        amount=abs(collected),
        fee=fee,
        coupon_amount=cpn,
        merchant_ref=v[6],
        occurred_at_ms=occurred,
        raw=raw,
    )


# -------------------------------------------------------------------- writer


def _cn(dt: datetime) -> str:
    return dt.strftime("%Y年%m月%d日 %H:%M:%S")


def write(statement: Statement) -> bytes:
    """The bill as Alipay delivers it: GBK, CRLF, values padded with a tab.

    Needs `statement.business_date`; the day runs from midnight China time unless
    `meta["cutoff"]` (HH:MM) says otherwise. `meta["exported"]` is the export time
    (default: 09:00 the next morning)."""
    if statement.business_date is None:
        raise ValueError("an Alipay bill needs the statement's business date")
    d = statement.business_date
    hh, mm = (int(x) for x in statement.meta.get("cutoff", "00:00").split(":"))
    if (hh, mm) == (0, 0):
        start = datetime(d.year, d.month, d.day, tzinfo=F.CST)
    else:
        start = datetime(d.year, d.month, d.day, hh, mm, tzinfo=F.CST) - timedelta(days=1)
    end = start + timedelta(days=1)
    exported = statement.meta.get("exported") or _cn(
        datetime(d.year, d.month, d.day, 9, tzinfo=F.CST) + timedelta(days=1)
    )
    out = [
        TITLE,
        f"#账号：[{statement.meta.get('account', '20881234567890120156')}]",
        f"#起始日期：[{_cn(start)}]   终止日期：[{_cn(end)}]",
        RULE,
        HEADER,
    ]
    n = {"交易": 0, "退款": 0}
    got = {"交易": Decimal(0), "退款": Decimal(0)}
    cpn = {"交易": Decimal(0), "退款": Decimal(0)}
    for line in statement.lines:
        kind, collected, coupon, row = _row(statement, line)
        n[kind] += 1
        got[kind] += collected
        cpn[kind] += coupon
        out.append(row)
    out.append(END_RULE)
    out.append(
        f"#交易合计：{n['交易']}笔，商家实收共{_signed(got['交易'])}元，"
        f"商家优惠共{_signed(cpn['交易'])}元"
    )
    out.append(
        f"#退款合计：{n['退款']}笔，商家实收共{_signed(got['退款'])}元，"
        f"商家优惠共{_signed(cpn['退款'])}元"
    )
    out.append(f"#导出时间：[{exported}]")
    return ("\r\n".join(out) + "\r\n").encode("gbk")


def _row(statement: Statement, line: StatementLine) -> tuple[str, Decimal, Decimal, str]:
    """(业务类型, 商家实收, 商家优惠, the row's text) of a line."""
    if line.currency != "CNY":
        raise ValueError(f"Alipay bills are in CNY, not {line.currency}")
    t = F.format_local_time(line.occurred_at_ms)
    fee = line.fee if line.fee is not None else Decimal(0)
    coupon = line.coupon_amount or Decimal(0)
    if line.kind == "payment":
        kind, collected, order, ours, refund_no = (
            "交易",
            line.amount,
            line.amount + coupon,
            line.txn_id,
            "",
        )
    elif line.kind == "refund":
        kind, collected, order, ours, refund_no = (
            "退款",
            -line.amount,
            -line.amount,
            line.original_txn_id,
            line.txn_id,
        )
        coupon = Decimal(0)
    else:
        raise ValueError("Alipay bills have no reversal rows (业务类型 交易 / 退款)")
    z = "0.00"
    cells = [
        line.channel_txn_id,
        ours,
        kind,
        statement.meta.get("body", "商品"),
        t,
        t,
        line.merchant_ref,
        "",
        "",
        "",
        "",
        F.fmt_amount(order, "CNY"),
        F.fmt_amount(collected, "CNY") if collected >= 0 else "-" + F.fmt_amount(-collected, "CNY"),
        z,
        z,
        z,
        F.fmt_amount(coupon, "CNY"),
        z,
        "",
        z,
        z,
        refund_no,
        _signed(-fee),
        z,
        "",
    ]
    if order < 0:
        cells[11] = "-" + F.fmt_amount(-order, "CNY")
    return kind, collected, coupon, ",".join(c + "\t" for c in cells)


def _signed(v: Decimal) -> str:
    return "-" + F.fmt_fee(-v) if v < 0 else F.fmt_fee(v)
