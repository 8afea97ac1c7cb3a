"""SWIFT MT940 bank statements: parsing (checked whole) and writing."""

from __future__ import annotations

import itertools
import re
from datetime import date
from decimal import Decimal

from recon.funds.bank.model import BankEntry, BankStatement, check_balance
from recon.statements import fields as F

_TAG = re.compile(r"^:(\d{2}[A-Z]?):(.*)$")
_BAL = re.compile(r"(?P<mark>[CD])(?P<date>\d{6})(?P<cur>[A-Z]{3})(?P<amount>\d{1,15},\d{0,2})")
_61 = re.compile(
    r"(?P<value>\d{6})(?P<entry>\d{4})?(?P<mark>R?[DC])(?P<funds>[A-Z])?"
    r"(?P<amount>\d{1,15},\d{0,2})(?P<type>[NFS][A-Z0-9]{3})"
    r"(?P<cref>(?:(?!//).){0,16})(?://(?P<bref>.{0,16}))?"
)


def _yymmdd(where: F.Where, line: int, fld: str, v: str) -> date:
    try:
        return date(2000 + int(v[:2]), int(v[2:4]), int(v[4:6]))
    except ValueError:
        raise where.error(line, fld, f"{v!r} is not a date (YYMMDD)") from None


def _mt_amount(where: F.Where, line: int, fld: str, v: str, cur: str) -> Decimal:
    num = v.replace(",", ".").rstrip(".")
    whole, _, frac = num.partition(".")
    num = (whole.lstrip("0") or "0") + ("." + frac if frac else "")
    return F.amount(where, line, fld, num, cur)


def _envelope(text: str) -> tuple[str, int]:
    """The text block of a SWIFT message (`{4:` ... `-}`) and how many lines come
    before it; the text unchanged when there is no envelope."""
    if not text.lstrip().startswith("{"):
        return text, 0
    start = text.find("{4:")
    if start < 0:
        return text, 0
    body = text[start + 3 :]
    end = body.rfind("-}")
    if end >= 0:
        body = body[:end]
    skipped = text[: start + 3].count("\n")
    if body.startswith("\r\n"):
        body, skipped = body[2:], skipped + 1
    elif body.startswith("\n"):
        body, skipped = body[1:], skipped + 1
    return body, skipped


def _booking(value: date, mmdd: str | None, where: F.Where, line: int) -> date:
    if not mmdd:
        return value
    month, day = int(mmdd[:2]), int(mmdd[2:])
    year = value.year
    if month == 12 and value.month == 1:
        year -= 1
    elif month == 1 and value.month == 12:
        year += 1
    try:
        return date(year, month, day)
    except ValueError:
        raise where.error(line, ":61: entry date", f"{mmdd!r} is not a date (MMDD)") from None


# (tag, value with continuation lines, first line number)
_Field = tuple[str, list[str], int]


def parse_mt940(data: bytes, file_name: str = "") -> BankStatement:
    where = F.Where(file_name)
    text, skipped = _envelope(F.decode_utf8(where, data, "MT940"))
    fields_ = _fields(where, text, skipped)
    opening_f = [f for f in fields_ if f[0] in ("60F", "60M")]
    closing_f = [f for f in fields_ if f[0] in ("62F", "62M")]
    if not opening_f:
        raise where.error(None, ":60F: (opening balance)", "missing")
    if not closing_f:
        last = fields_[-1][2] + len(fields_[-1][1]) if fields_ else 1
        raise where.error(last, ":62F: (closing balance)", "truncated: no closing balance")
    opening, _, cur = _balance(where, opening_f[0])
    closing, closing_date, ccur = _balance(where, closing_f[0])
    if ccur != cur:
        raise where.error(
            closing_f[0][2], f":{closing_f[0][0]}: currency", f"{ccur}, opening {cur}"
        )
    entries = _entries(where, fields_, cur)
    check_balance(
        where, opening, entries, closing, closing_f[0][2], f":{closing_f[0][0]}: (closing balance)"
    )
    head = {t: v for t, v, _ in fields_}
    return BankStatement(
        format="mt940",
        account=head["25"][0].strip(),
        statement_date=closing_date,
        currency=cur,
        opening=opening,
        closing=closing,
        entries=entries,
        reference=head["20"][0].strip(),
        file_name=file_name,
        meta={"statement_number": head.get("28C", [""])[0].strip()},
    )


def _fields(where: F.Where, text: str, skipped: int) -> list[_Field]:
    """The statement's fields, one statement with its reference and account."""
    fields_: list[_Field] = []
    for i, x in enumerate(F.physical_lines(text), start=1 + skipped):
        m = _TAG.match(x)
        if m:
            fields_.append((m[1], [m[2]], i))
        elif fields_:
            fields_[-1][1].append(x)
        elif x.strip():
            raise where.error(i, None, f"{x[:40]!r}: an MT940 statement starts with :20:")
    tags = [t for t, _, _ in fields_]
    if tags.count("20") > 1:
        line = [n for t, _, n in fields_ if t == "20"][1]
        raise where.error(line, ":20:", "a second statement in the file: load them one by one")
    for need, label in (("20", "transaction reference"), ("25", "account")):
        if need not in tags:
            raise where.error(None, f":{need}: ({label})", "missing")
    return fields_


def _balance(where: F.Where, f: _Field) -> tuple[Decimal, date, str]:
    tag, value, line = f
    m = _BAL.fullmatch(value[0].strip())
    if m is None:
        raise where.error(line, f":{tag}:", f"{value[0][:40]!r} is not like C261124CNY100,00")
    cur = F.currency(where, line, f":{tag}: currency", m["cur"])
    v = _mt_amount(where, line, f":{tag}: amount", m["amount"], cur)
    return (
        (-v if m["mark"] == "D" else v),
        _yymmdd(where, line, f":{tag}: date", m["date"]),
        cur,
    )


def _entries(where: F.Where, fields_: list[_Field], cur: str) -> list[BankEntry]:
    """The :61: entries, each with the :86: text that follows it."""
    entries: list[BankEntry] = []
    for k, (tag, value, line) in enumerate(fields_):
        if tag != "61":
            continue
        m = _61.fullmatch(value[0].strip())
        if m is None:
            raise where.error(
                line, ":61: (statement line)", f"{value[0][:60]!r} is not a valid :61:"
            )
        vd = _yymmdd(where, line, ":61: value date", m["value"])
        amt = _mt_amount(where, line, ":61: amount", m["amount"], cur)
        if amt <= 0:
            raise where.error(line, ":61: amount", f"{m['amount']!r} must be greater than zero")
        mark = m["mark"]
        direction = "C" if mark in ("C", "RD") else "D"
        info = ""
        nxt = fields_[k + 1] if k + 1 < len(fields_) else None
        if nxt is not None and nxt[0] == "86":
            parts = nxt[1]
            info = parts[0]
            for prev, part in itertools.pairwise(parts):
                info += ("" if len(prev) >= 65 else " ") + part
        cref = m["cref"].strip()
        bref = (m["bref"] or "").strip()
        entries.append(
            BankEntry(
                entry_no=len(entries) + 1,
                line_no=line,
                direction=direction,
                amount=amt,
                currency=cur,
                value_date=vd,
                booking_date=_booking(vd, m["entry"], where, line),
                bank_ref="" if bref.upper() == "NONREF" else bref,
                customer_ref="" if cref.upper() == "NONREF" else cref,
                remittance=info.strip(),
                raw="\n".join([":61:" + value[0], *value[1:]]),
            )
        )
    return entries


def _mt_num(v: Decimal) -> str:
    return f"{v:.2f}".replace(".", ",")


def write_mt940(st: BankStatement) -> bytes:
    """An MT940 file as a bank sends it (CRLF, :86: wrapped at 65 characters)."""

    def bal(tag: str, d: date, v: Decimal) -> str:
        return f":{tag}:{'D' if v < 0 else 'C'}{d:%y%m%d}{st.currency}{_mt_num(abs(v))}"

    out = [
        f":20:{st.reference or f'STMT{st.statement_date:%y%m%d}'}"[:20],
        f":25:{st.account}",
        f":28C:{st.meta.get('statement_number') or '1/1'}",
        bal("60F", st.statement_date, st.opening),
    ]
    for e in st.entries:
        cref = (e.customer_ref or "NONREF")[:16]
        bref = f"//{e.bank_ref[:16]}" if e.bank_ref else ""
        out.append(
            f":61:{e.value_date:%y%m%d}{e.booking_date:%m%d}{e.direction}"
            f"{_mt_num(e.amount)}NTRF{cref}{bref}"
        )
        text = e.remittance or "NONREF"
        out.append(":86:" + text[:65])
        out.extend(text[i : i + 65] for i in range(65, len(text), 65))
    out.append(bal("62F", st.statement_date, st.closing))
    out.append(bal("64", st.statement_date, st.closing))
    return ("\r\n".join(out) + "\r\n").encode("ascii")
