"""WeChat Pay merchant bill (微信支付 下载对账单, `bill_type=ALL`), UTF-8 CSV.

    交易时间,公众账号ID,商户号,...,费率备注          header (27 columns)
    `2026-11-24 10:15:30,`wx...,`1900000109,...   one row per item, every field
                                                  prefixed with a back-tick
    总交易单数,应结订单总金额,退款总金额,...          summary header
    `3,`300.00,`50.00,`0.00,`1.50,`301.00,`50.00   summary values

Times are China Standard Time. 交易状态: SUCCESS (a payment), REFUND (a refund,
final state in 退款状态), REVOKED (a payment cancelled: a reversal). See
docs/statements.md for the field mapping.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from decimal import Decimal
from typing import BinaryIO

from recon.statements import fields as F
from recon.statements.model import Statement, StatementLine, Totals

FORMAT = "wechat"
TIME_FIELD = "交易时间 (occurred_at)"
CTID_FIELD = "微信订单号 / 微信退款单号 (channel_txn_id)"

COLUMNS = (
    "交易时间",
    "公众账号ID",
    "商户号",
    "特约商户号",
    "设备号",
    "微信订单号",
    "商户订单号",
    "用户标识",
    "交易类型",
    "交易状态",
    "付款银行",
    "货币种类",
    "应结订单金额",
    "代金券金额",
    "微信退款单号",
    "商户退款单号",
    "退款金额",
    "充值券退款金额",
    "退款类型",
    "退款状态",
    "商品名称",
    "商户数据包",
    "手续费",
    "费率",
    "订单金额",
    "申请退款金额",
    "费率备注",
)
HEADER = ",".join(COLUMNS)
SUMMARY = (
    "总交易单数",
    "应结订单总金额",
    "退款总金额",
    "充值券退款总金额",
    "手续费总金额",
    "订单总金额",
    "申请退款总金额",
)
SUMMARY_HEADER = ",".join(SUMMARY)

# native column -> StatementLine field, for messages
_MODEL = {
    "交易时间": "occurred_at",
    "特约商户号": "merchant_ref",
    "微信订单号": "channel_txn_id",
    "商户订单号": "txn_id",
    "货币种类": "currency",
    "应结订单金额": "amount",
    "代金券金额": "coupon_amount",
    "微信退款单号": "channel_txn_id",
    "商户退款单号": "txn_id",
    "退款金额": "amount",
    "退款状态": "status",
    "交易状态": "kind",
    "手续费": "fee",
}
_COL = {name: i for i, name in enumerate(COLUMNS)}
_REFUND_STATUS = {
    "SUCCESS": "success",
    "PROCESSING": "pending",
    "FAIL": "failed",
    "FAILED": "failed",
    "CHANGE": "failed",
    "REFUNDCLOSE": "closed",
}
_REFUND_STATUS_OUT = {"success": "SUCCESS", "pending": "PROCESSING", "failed": "FAIL"}
# text columns checked for spreadsheet formulas (ids are checked too)
_TEXT = tuple(
    i
    for i, c in enumerate(COLUMNS)
    if c not in ("交易时间", "手续费", "费率") and not c.endswith("金额")
)


def label(column: str) -> str:
    m = _MODEL.get(column)
    return f"{column} ({m})" if m else column


_LABEL = {c: label(c) for c in COLUMNS}
_L_CUR, _L_TIME = _LABEL["货币种类"], _LABEL["交易时间"]
_L_SETTLE, _L_COUPON = _LABEL["应结订单金额"], _LABEL["代金券金额"]
_L_REFUND, _L_RECHARGE = _LABEL["退款金额"], _LABEL["充值券退款金额"]
_L_FEE, _L_ORDER, _L_APPLIED = _LABEL["手续费"], _LABEL["订单金额"], _LABEL["申请退款金额"]
# a text cell starting like a formula shows in the row as one of these
_FORMULA_CELLS = tuple(",`" + c for c in F.FORMULA_START)


def sniff(data: bytes) -> bool:
    return data.removeprefix(b"\xef\xbb\xbf").startswith("交易时间,公众账号ID".encode())


def _none(v: str) -> str:
    return "" if v == "0" else v


def scan(data: bytes, file_name: str, env: Statement) -> Iterator[StatementLine]:
    """Yield the bill's items; fills `env` (declared totals, meta); raises
    StatementError on the first problem, the footer checked after the last row."""
    where = F.Where(file_name)
    text = F.decode_utf8(where, data, "WeChat Pay bill")
    lines = F.physical_lines(text)
    del text  # the lines are all that is needed from here on
    yield from _scan_lines(where, iter(lines), env)


def scan_file(f: BinaryIO, file_name: str, env: Statement) -> Iterator[StatementLine]:
    """`scan` reading `f` a line at a time (its encoding checked first, in a pass over
    the file: the same refusals in the same order)."""
    where = F.Where(file_name)
    F.check_utf8_file(where, f, "WeChat Pay bill")
    yield from _scan_lines(where, F.file_lines(f), env)


def _scan_lines(where: F.Where, lines: Iterator[str], env: Statement) -> Iterator[StatementLine]:
    head = next(lines, None)
    if head != HEADER:
        got = head[:60] if head is not None else "(empty file)"
        raise where.error(1, None, f"not a WeChat Pay ALL bill: the header is {got!r}")
    n_cols = len(COLUMNS)
    sums = {"settle": Decimal(0), "refund": Decimal(0), "fee": Decimal(0)}
    sums.update(recharge=Decimal(0), order=Decimal(0), applied=Decimal(0))
    count = 0
    times = F.LocalTimes(where)
    amounts = F.Amounts(where)
    f0, f1, f2, f3, f4, f5 = _FORMULA_CELLS
    i = 1
    first_row = ""
    for raw in lines:
        line_no = i + 1
        if raw == SUMMARY_HEADER:
            break
        # fast path: no quotes, every one of the n_cols - 1 commas followed by a
        # back-tick, no cell starting like a formula; the same checks cell by cell
        # otherwise (they give the message)
        v = raw[1:].split(",`") if raw[:1] == "`" and '"' not in raw else []
        if len(v) != n_cols or raw.count(",") != n_cols - 1:
            v = _cells(where, line_no, raw)
        elif f0 in raw or f1 in raw or f2 in raw or f3 in raw or f4 in raw or f5 in raw:
            for c in _TEXT:
                F.text(where, line_no, _LABEL[COLUMNS[c]], v[c])
        yield _item(where, line_no, raw, v, sums, times, amounts)
        if not count:
            first_row = raw
        count += 1
        i += 1
    else:
        raise where.error(
            i + 1,
            None,
            "truncated: the summary (总交易单数,应结订单总金额,...) is missing after the last row",
        )
    env.declared = _footer(where, next(lines, None), i, count, sums)
    if next(lines, None) is not None:
        raise where.error(i + 3, None, "unexpected content after the summary")
    first = F.split_simple(first_row) if count else []
    if len(first) == n_cols:
        env.meta.setdefault("appid", first[1][1:])
        env.meta.setdefault("mch_id", first[2][1:])


def _cells(where: F.Where, line_no: int, raw: str) -> list[str]:
    """A row's values without their back-ticks, checked cell by cell."""
    if not raw.strip():
        raise where.error(line_no, None, "empty line inside the bill")
    cells = F.split_simple(raw)
    n_cols = len(COLUMNS)
    if len(cells) != n_cols:
        raise where.error(
            line_no,
            None,
            f"expected {n_cols} fields, found {len(cells)} (a truncated or broken row)",
        )
    v = []
    for c, cell in enumerate(cells):
        if not cell.startswith("`"):
            raise where.error(
                line_no, _LABEL[COLUMNS[c]], f"{cell[:40]!r} lacks the back-tick prefix"
            )
        v.append(cell[1:])
    for c in _TEXT:
        F.text(where, line_no, _LABEL[COLUMNS[c]], v[c])
    return v


def _item(
    where: F.Where,
    line_no: int,
    raw: str,
    v: list[str],
    sums: dict[str, Decimal],
    times: F.LocalTimes,
    amounts: F.Amounts,
) -> StatementLine:
    cur = F.currency(where, line_no, _L_CUR, v[11])
    occurred = times(line_no, _L_TIME, v[0])
    settle = amounts(line_no, _L_SETTLE, v[12], cur)
    coupon = amounts(line_no, _L_COUPON, v[13], cur)
    refund = amounts(line_no, _L_REFUND, v[16], cur)
    recharge = amounts(line_no, _L_RECHARGE, v[17], cur)
    fee = amounts(line_no, _L_FEE, v[22], None, True)
    order = amounts(line_no, _L_ORDER, v[24], cur)
    applied = amounts(line_no, _L_APPLIED, v[25], cur)
    sums["settle"] += settle
    sums["refund"] += refund
    sums["recharge"] += recharge
    sums["fee"] += fee
    sums["order"] += order
    sums["applied"] += applied
    state = v[9]
    if state == "SUCCESS":
        kind, status = "payment", "success"
        txn, ctid, orig, amt, cpn = v[6], v[5], "", settle, coupon
        amt_col = "应结订单金额"
    elif state == "REFUND":
        kind, cpn = "refund", None
        st = _REFUND_STATUS.get(v[19])
        if st is None:
            raise where.error(
                line_no, label("退款状态"), f"{v[19][:20]!r} is not SUCCESS/PROCESSING/FAIL"
            )
        status = st
        txn, ctid, orig, amt = v[15], v[14], v[6], refund
        amt_col = "退款金额"
        if not ctid or ctid == "0":
            raise where.error(line_no, label("微信退款单号"), "a REFUND row needs it")
    elif state == "REVOKED":
        kind, status = "reversal", "reversed"
        txn, ctid, orig, amt, cpn = _none(v[15]), v[5], v[6], settle, coupon
        amt_col = "应结订单金额"
    else:
        raise where.error(
            line_no, label("交易状态"), f"{state[:20]!r} is not SUCCESS, REFUND or REVOKED"
        )
    if amt <= 0:
        raise where.error(
            line_no, label(amt_col), f"{v[_COL[amt_col]]!r} must be greater than zero"
        )
    if not ctid:
        raise where.error(line_no, label("微信订单号"), "empty")
    if kind == "payment" and fee < 0:
        raise where.error(line_no, label("手续费"), f"{v[22]!r}: a payment's fee is not negative")
    return StatementLine(
        line_no=line_no,
        txn_id=txn,
        channel_txn_id=ctid,
        original_txn_id=orig,
        kind=kind,
        status=status,
        currency=cur,
        amount=amt,
        fee=fee,
        coupon_amount=cpn,
        merchant_ref=_none(v[3]),
        occurred_at_ms=occurred,
        raw=raw,
    )


def _footer(
    where: F.Where, values: str | None, i: int, count: int, sums: dict[str, Decimal]
) -> Totals:
    """The summary values (the line after the summary header, line i + 1, 0-based)."""
    if values is None:
        raise where.error(i + 2, None, "truncated: the summary values are missing")
    line_no = i + 2
    cells = F.split_simple(values)
    if len(cells) != len(SUMMARY) or not all(c.startswith("`") for c in cells):
        raise where.error(line_no, None, f"the summary needs {len(SUMMARY)} back-ticked values")
    vals = [c[1:] for c in cells]
    if F.count(where, line_no, "总交易单数 (count)", vals[0]) != count:
        raise where.error(
            line_no, "总交易单数 (count)", f"declares {vals[0]} rows, the bill has {count}"
        )
    checks = (
        ("应结订单总金额", "settle"),
        ("退款总金额", "refund"),
        ("充值券退款总金额", "recharge"),
        ("手续费总金额", "fee"),
        ("订单总金额", "order"),
        ("申请退款总金额", "applied"),
    )
    for k, (name, key) in enumerate(checks, start=1):
        declared = F.amount(where, line_no, name, vals[k], signed=key == "fee")
        if declared != sums[key]:
            raise where.error(
                line_no,
                name,
                f"declares {vals[k]}, the rows add up to {sums[key]} "
                f"(off by {declared - sums[key]})",
            )
    return Totals(
        count=count,
        amount=sums["settle"] + sums["refund"],
        fee=sums["fee"],
        items=tuple(zip(SUMMARY, vals, strict=True)),
    )


# -------------------------------------------------------------------- writer


def _openid(ctid: str) -> str:
    return "o" + hashlib.sha1(ctid.encode()).hexdigest()[:27]


def row(line: StatementLine, meta: dict[str, str]) -> list[str]:
    """The 27 fields of a line, without back-ticks."""
    cur = line.currency
    a = F.fmt_amount(line.amount, cur)
    zero = F.fmt_amount(Decimal(0), cur)
    cpn = line.coupon_amount or Decimal(0)
    fee = F.fmt_fee(line.fee if line.fee is not None else Decimal(0))
    common = [
        F.format_local_time(line.occurred_at_ms),
        meta.get("appid", "wx2421b1c4370ec43b"),
        meta.get("mch_id", "1900000109"),
        line.merchant_ref or "0",
        "",
    ]
    tail = [meta.get("body", "商品"), "", fee, meta.get("rate", "0.60%")]
    if line.kind == "payment" or line.kind == "reversal":
        is_pay = line.kind == "payment"
        return [
            *common,
            line.channel_txn_id,
            line.txn_id if is_pay else line.original_txn_id,
            _openid(line.channel_txn_id),
            meta.get("trade_type", "JSAPI"),
            "SUCCESS" if is_pay else "REVOKED",
            "OTHERS",
            cur,
            a,
            F.fmt_amount(cpn, cur),
            "0",
            "0" if is_pay else (line.txn_id or "0"),
            zero,
            zero,
            "",
            "",
            *tail,
            F.fmt_amount(line.amount + cpn, cur),
            zero,
            "",
        ]
    return [
        *common,
        "",  # the original's WeChat order id: not kept in a StatementLine
        line.original_txn_id,
        _openid(line.channel_txn_id),
        meta.get("trade_type", "JSAPI"),
        "REFUND",
        "OTHERS",
        cur,
        zero,
        zero,
        line.channel_txn_id,
        line.txn_id,
        a,
        zero,
        "ORIGINAL",
        _REFUND_STATUS_OUT.get(line.status, "SUCCESS"),
        *tail,
        zero,
        a,
        "",
    ]


def write(statement: Statement) -> bytes:
    """The bill exactly as WeChat Pay delivers it (UTF-8, CRLF line ends)."""
    out = [HEADER]
    n = 0
    settle = refund = fee = order = applied = Decimal(0)
    for line in statement.lines:
        r = row(line, statement.meta)
        out.append(",".join("`" + c for c in r))
        n += 1
        settle += Decimal(r[12])
        refund += Decimal(r[16])
        fee += Decimal(r[22])
        order += Decimal(r[24])
        applied += Decimal(r[25])
    cur = statement.lines[0].currency if statement.lines else "CNY"
    out.append(SUMMARY_HEADER)
    figures = [
        str(n),
        F.fmt_amount(settle, cur),
        F.fmt_amount(refund, cur),
        F.fmt_amount(Decimal(0), cur),
        F.fmt_fee(fee),
        F.fmt_amount(order, cur),
        F.fmt_amount(applied, cur),
    ]
    out.append(",".join("`" + c for c in figures))
    return ("\r\n".join(out) + "\r\n").encode("utf-8")
