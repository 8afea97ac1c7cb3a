"""SWIFT MT940 customer statement, read with the `mt-940` package.

    :20:STMT20261124          transaction reference
    :25:CN0000000000000000    account
    :28C:1/1                  statement / sequence number
    :60F:C261124CNY0,00       opening balance (C credit / D debit, YYMMDD, currency)
    :61:2611241124C100,00NTRFT1//WE-1
    :86:/EREF/T1/CREF/WE-1/STAT/success/TIME/20261124T021530Z/FEE/CNY0,60/CPN/CNY1,00
    ...
    :62F:C261124CNY70,00      closing balance: its date is the business date

`:61:` is value date, entry date (MMDD), mark (C a payment, D a refund, RC a
reversal of a credit), amount (comma decimals), transaction type, customer
reference (our txn_id, at most 16 characters: `NONREF` when longer) and after `//`
the bank reference (the channel's txn id, same rule). `:86:` carries what has no
field of its own as slash codes (see `fields.INFO_CODES` and docs/statements.md):
/EREF/ our txn id, /CREF/ the channel's, /ORIG/ the original order, /STAT/ the
status when not `success`, /TIME/ the instant in UTC, /FEE/ and /CPN/ with their
currency, /MREF/ the merchant reference. Opening balance + entries must equal the
closing balance.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from typing import Any

from recon.statements import fields as F
from recon.statements.model import STATUSES, Statement, StatementLine, Totals

FORMAT = "mt940"
TIME_FIELD = "/TIME/ (occurred_at)"
CTID_FIELD = ":61: bank reference (channel_txn_id)"
_MARK_KIND = {"C": "payment", "D": "refund", "RC": "reversal"}
_KIND_MARK = {v: k for k, v in _MARK_KIND.items()}
_LINE61 = re.compile(
    r":61:(?P<value>\d{6})(?P<entry>\d{4})?(?P<mark>R?[DC])(?P<funds>[A-Z])?"
    r"(?P<amount>[0-9]{1,12},[0-9]{0,2})(?P<type>[A-Z][A-Z0-9]{3})"
    r"(?P<cref>(?:(?!//).){0,16})(?://(?P<bref>.{0,23}))?"
)
_INFO_MONEY = re.compile(r"([A-Z]{3})(-?[0-9]{1,13},[0-9]{0,4})")
_TAG = re.compile(r":[0-9]{2}[A-Z]?:")


def sniff(data: bytes) -> bool:
    head = data.removeprefix(b"\xef\xbb\xbf").lstrip()
    return head.startswith((b":20:", b"{1:"))


def _money(where: F.Where, line_no: int, field: str, value: str) -> tuple[str, Decimal]:
    m = _INFO_MONEY.fullmatch(value)
    if m is None:
        raise where.error(line_no, field, f"{value[:40]!r} is not like CNY0,60")
    cur = F.currency(where, line_no, field, m[1])
    num = m[2].replace(",", ".").rstrip(".")
    return cur, F.amount(where, line_no, field, num, signed=True)


def scan(data: bytes, file_name: str, env: Statement) -> Iterator[StatementLine]:
    import mt940

    where = F.Where(file_name)
    text = F.decode_utf8(where, data, "MT940")
    lines = F.physical_lines(text)
    if not any(x.startswith(":62F:") or x.startswith(":62M:") for x in lines):
        raise where.error(
            len(lines) + 1, ":62F: (closing balance)", "truncated: no closing balance"
        )
    if sum(1 for x in lines if x.startswith(":20:")) > 1:
        raise where.error(None, ":20:", "more than one statement in the file: load them one by one")
    entries = _entries(where, lines)
    try:
        parsed = mt940.parse(text, options=mt940.Options.all())
    except Exception as exc:  # the package raises RuntimeError / ValueError / KeyError
        raise where.error(None, None, f"not a valid MT940 statement: {exc}") from None
    head: dict[str, Any] = parsed.data
    opening = head.get("final_opening_balance") or head.get("opening_balance")
    closing = head.get("final_closing_balance") or head.get("closing_balance")
    if opening is None:
        raise where.error(None, ":60F: (opening balance)", "missing")
    if closing is None:
        raise where.error(None, ":62F: (closing balance)", "missing")
    cur = F.currency(where, None, ":60F: currency", str(opening.amount.currency))
    if len(parsed) != len(entries):
        raise where.error(
            None, ":61:", f"{len(entries)} :61: lines but the MT940 reader found {len(parsed)}"
        )
    env.business_date = date(closing.date.year, closing.date.month, closing.date.day)
    env.meta.update(
        reference=str(head.get("transaction_reference") or ""),
        account=str(head.get("account_identification") or ""),
        statement_number=str(head.get("statement_number") or "1"),
        opening_balance=str(opening.amount.amount),
    )
    net = Decimal(0)
    total = Decimal(0)
    fees = Decimal(0)
    any_fee = False
    for tx, (line_no, raw, m) in zip(parsed, entries, strict=True):
        line = _line(where, cur, tx.data, line_no, raw, m)
        net += line.amount if line.kind == "payment" else -line.amount
        total += line.amount
        if line.fee is not None:
            fees += line.fee
            any_fee = True
        yield line
    op = Decimal(opening.amount.amount)
    cl = Decimal(closing.amount.amount)
    if op + net != cl:
        close_line = next(i + 1 for i, x in enumerate(lines) if x.startswith(":62"))
        raise where.error(
            close_line,
            ":62F: (closing balance)",
            f"opening {op} + entries {net} = {op + net}, the statement says {cl} "
            f"(off by {cl - op - net})",
        )
    env.declared = Totals(
        count=None,
        amount=total,
        fee=fees if any_fee else None,
        items=(("opening", str(op)), ("closing", str(cl))),
    )


def _entries(where: F.Where, lines: list[str]) -> list[tuple[int, str, re.Match[str]]]:
    """Where each :61: starts and what belongs to it (its :86:), for line numbers."""
    entries: list[tuple[int, str, re.Match[str]]] = []
    for i, x in enumerate(lines):
        if x.startswith(":61:"):
            m = _LINE61.fullmatch(x)
            if m is None:
                raise where.error(i + 1, ":61: (statement line)", f"{x[:60]!r} is not a valid :61:")
            j = i + 1
            while j < len(lines) and not lines[j].startswith((":61:", ":62", ":64", ":65")):
                j += 1
            entries.append((i + 1, "\n".join(lines[i:j]), m))
    return entries


def _line(
    where: F.Where, cur: str, d: Any, line_no: int, raw: str, m: re.Match[str]
) -> StatementLine:
    """One entry: its :61: line (m), the reader's fields (d) and the :86: codes."""
    mark = m["mark"]
    kind = _MARK_KIND.get(mark)
    if kind is None:
        raise where.error(line_no, ":61: mark", f"{mark!r}: only C, D and RC are used")
    amt = F.amount(where, line_no, ":61: amount", m["amount"].replace(",", ".").rstrip("."), cur)
    if amt <= 0:
        raise where.error(line_no, ":61: amount", f"{m['amount']!r} must be greater than zero")
    signed = Decimal(d["amount"].amount)
    if abs(signed) != amt:
        raise where.error(line_no, ":61: amount", "the MT940 reader disagrees on the amount")
    info = F.parse_info(str(d.get("transaction_details") or ""))
    txn, ctid = _refs(where, line_no, info, m)
    status = info.get("STAT", "success")
    if status not in STATUSES:
        raise where.error(line_no, "/STAT/ (status)", f"{status[:20]!r} is not a status")
    if "TIME" in info:
        occurred = F.info_time_ms(where, line_no, "/TIME/ (occurred_at)", info["TIME"])
    else:
        vd = d["date"]
        occurred = F.noon_utc_ms(date(vd.year, vd.month, vd.day))
    fee = coupon = None
    if "FEE" in info:
        fcur, fee = _money(where, line_no, "/FEE/ (fee)", info["FEE"])
        if fcur != cur:
            raise where.error(line_no, "/FEE/ (fee)", f"in {fcur}, the statement is in {cur}")
    if "CPN" in info:
        ccur, coupon = _money(where, line_no, "/CPN/ (coupon_amount)", info["CPN"])
        if ccur != cur or coupon < 0:
            raise where.error(line_no, "/CPN/ (coupon_amount)", f"{info['CPN']!r}")
    return StatementLine(
        line_no=line_no,
        txn_id=txn,
        channel_txn_id=ctid,
        original_txn_id=info.get("ORIG", ""),
        kind=kind,
        status=status,
        currency=cur,
        amount=amt,
        fee=fee,
        coupon_amount=coupon,
        merchant_ref=info.get("MREF", ""),
        occurred_at_ms=occurred,
        raw=raw,
    )


def _refs(where: F.Where, line_no: int, info: dict[str, str], m: re.Match[str]) -> tuple[str, str]:
    """(txn_id, channel txn id): the :86: codes, else the :61: references."""
    cref = (m["cref"] or "").strip()
    bref = (m["bref"] or "").strip()
    for code, fname in (
        ("EREF", "txn_id"),
        ("CREF", "channel_txn_id"),
        ("ORIG", "original_txn_id"),
        ("MREF", "merchant_ref"),
    ):
        F.text(where, line_no, f"/{code}/ ({fname})", info.get(code, ""))
    F.text(where, line_no, ":61: customer reference (txn_id)", cref)
    F.text(where, line_no, ":61: bank reference (channel_txn_id)", bref)
    txn = info.get("EREF", "")
    if cref and cref != "NONREF":
        if txn and txn != cref:
            raise where.error(line_no, "/EREF/ (txn_id)", f"{txn!r} but :61: says {cref!r}")
        txn = txn or cref
    ctid = info.get("CREF", "")
    if bref and bref != "NONREF":
        if ctid and ctid != bref:
            raise where.error(
                line_no, "/CREF/ (channel_txn_id)", f"{ctid!r} but :61: says {bref!r}"
            )
        ctid = ctid or bref
    if not ctid:
        raise where.error(line_no, ":61: bank reference (channel_txn_id)", "empty")
    return txn, ctid


# -------------------------------------------------------------------- writer


def _num(v: Decimal) -> str:
    return F.fmt_fee(v).replace(".", ",")


def _balance(tag: str, d: date, cur: str, v: Decimal) -> str:
    mark = "D" if v < 0 else "C"
    return f":{tag}:{mark}{d:%y%m%d}{cur}{_num(abs(v))}"


def _wrap(info: str, width: int = 65) -> list[str]:
    return [info[i : i + width] for i in range(0, len(info), width)] or [""]


def write(statement: Statement) -> bytes:
    """An MT940 statement for the lines (one currency), CRLF line ends.

    meta: reference (:20:), account (:25:), statement_number (:28C:),
    opening_balance (default 0)."""
    if statement.business_date is None:
        raise ValueError("an MT940 statement needs the business date")
    d = statement.business_date
    meta = statement.meta
    currencies = {x.currency for x in statement.lines} or {meta.get("currency", "CNY")}
    if len(currencies) != 1:
        raise ValueError(f"an MT940 statement has one currency, not {sorted(currencies)}")
    cur = currencies.pop()
    opening = Decimal(meta.get("opening_balance", "0"))
    out = [
        f":20:{meta.get('reference') or f'STMT{d:%Y%m%d}'}",
        f":25:{meta.get('account') or 'CN0000000000000000'}",
        f":28C:{meta.get('statement_number', '1')}/1",
        _balance("60F", d, cur, opening),
    ]
    bal = opening
    for x in statement.lines:
        mark = _KIND_MARK[x.kind]
        bal += x.amount if x.kind == "payment" else -x.amount
        cref = x.txn_id if x.txn_id and len(x.txn_id) <= 16 else "NONREF"
        bref = x.channel_txn_id if len(x.channel_txn_id) <= 16 else "NONREF"
        out.append(f":61:{d:%y%m%d}{d:%m%d}{mark}{_num(x.amount)}NTRF{cref}//{bref}")
        info = f"/EREF/{x.txn_id}/CREF/{x.channel_txn_id}"
        if x.original_txn_id:
            info += f"/ORIG/{x.original_txn_id}"
        if x.status != "success":
            info += f"/STAT/{x.status}"
        info += f"/TIME/{F.format_info_time(x.occurred_at_ms)}"
        if x.fee is not None:
            info += f"/FEE/{cur}{_num(x.fee) if x.fee >= 0 else '-' + _num(-x.fee)}"
        if x.coupon_amount is not None:
            info += f"/CPN/{cur}{_num(x.coupon_amount)}"
        if x.merchant_ref:
            info += f"/MREF/{x.merchant_ref}"
        wrapped = _wrap(info)
        out.append(":86:" + wrapped[0])
        out.extend(wrapped[1:])
    out.append(_balance("62F", d, cur, bal))
    return ("\r\n".join(out) + "\r\n").encode("ascii")
