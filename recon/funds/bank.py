"""The platform's own bank account statements, as banks send them: SWIFT MT940 and
ISO 20022 camt.053 (001.02 to 001.13). Pure parsing, no I/O.

Unlike a channel statement (one line per order, `recon.statements`), a bank account
statement has one entry per movement of money: a channel's settlement credit, a
payout to a merchant, a fee. An entry carries what the bank knows: amount, credit or
debit, value date, booking date, the bank's reference and the remittance text, where
the channel's own reference is (e.g. `WECHATPAY STL 20261123 MCH 1900000109`). No
tally-specific codes are needed.

    statement = parse(data, file_name="bank-2026-11-24.sta")   # format detected
    statement.entries[0].remittance

MT940: `:20:` reference, `:25:` account, `:28C:` statement number, `:60F:`/`:60M:`
opening balance, `:61:` entries (value date YYMMDD, booking date MMDD, mark C / D /
RC / RD, amount with a decimal comma, transaction type, customer reference, `//`
bank reference, supplementary details on the next line), `:86:` remittance text
(continuation lines joined), `:62F:`/`:62M:` closing balance, whose date is the
statement's date; an optional SWIFT envelope `{1:...}{2:...}{4:` ... `-}`.

camt.053: Document/BkToCstmrStmt/Stmt with Acct (IBAN or Othr/Id, Ccy), Bal (OPBD or
PRCD opening, CLBD closing), TxsSummry (counts and sums, checked when present) and
Ntry (Amt Ccy, CdtDbtInd, RvslInd, Sts BOOK/PDNG, BookgDt, ValDt, AcctSvcrRef,
NtryDtls/TxDtls/Refs/EndToEndId, NtryDtls/TxDtls/RmtInf/Ustrd, AddtlNtryInf). Only
booked entries count in the balances and in reconciliation.

Both formats: opening balance + credits - debits must equal the closing balance, or
the file is refused whole, naming the line and field (`StatementError`).
"""

from __future__ import annotations

import hashlib
import itertools
import re
import xml.parsers.expat
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from recon.statements import fields as F
from recon.statements.model import StatementError

FORMATS = ("mt940", "camt053")


@dataclass(frozen=True, slots=True)
class BankEntry:
    """One movement of money on the account."""

    entry_no: int  # 1-based position in the statement
    line_no: int  # 1-based line of the file where the entry starts
    direction: str  # C: money in (a credit, or a reversed debit); D: money out
    amount: Decimal  # positive, major units
    currency: str
    value_date: date
    booking_date: date
    bank_ref: str  # the bank's reference (MT940 // part, camt.053 AcctSvcrRef), "" if none
    customer_ref: str  # MT940 customer reference, camt.053 EndToEndId ("" when NONREF)
    remittance: str  # remittance information / :86: text, as the bank wrote it
    booked: bool = True  # camt.053 Sts PDNG / INFO: False (not in the balances)
    raw: str = ""

    @property
    def signed(self) -> Decimal:
        return self.amount if self.direction == "C" else -self.amount

    @property
    def ref(self) -> str:
        """The entry's identity within its account: the bank's reference, or else
        the customer reference, or else its position in the statement."""
        return self.bank_ref or self.customer_ref or f"{self.booking_date:%Y%m%d}#{self.entry_no}"


@dataclass(slots=True)
class BankStatement:
    format: str  # mt940 | camt053
    account: str  # as the file names it (:25:, Acct/Id)
    statement_date: date  # the closing balance's date
    currency: str
    opening: Decimal
    closing: Decimal
    entries: list[BankEntry]
    reference: str = ""  # :20:, Stmt/Id
    file_name: str = ""
    checksum: str = ""
    meta: dict[str, str] = field(default_factory=dict)

    def credits(self) -> list[BankEntry]:
        return [e for e in self.entries if e.booked and e.direction == "C"]

    def debits(self) -> list[BankEntry]:
        return [e for e in self.entries if e.booked and e.direction == "D"]


def detect(data: bytes, file_name: str = "") -> str:
    head = data[:4096].removeprefix(b"\xef\xbb\xbf").lstrip()
    if b"camt.053" in head and head.startswith(b"<"):
        return "camt053"
    if head.startswith((b":20:", b"{1:")):
        return "mt940"
    raise StatementError(
        "not a bank statement: neither MT940 (starts with :20: or {1:) nor camt.053 XML",
        file_name=file_name,
        line_no=1,
    )


def parse(data: bytes, fmt: str | None = None, *, file_name: str = "") -> BankStatement:
    """A bank statement, checked whole (balances, summary, dates, amounts)."""
    fmt = fmt or detect(data, file_name)
    if fmt == "mt940":
        st = parse_mt940(data, file_name)
    elif fmt == "camt053":
        st = parse_camt053(data, file_name)
    else:
        raise ValueError(f"unknown bank statement format {fmt!r}: one of {', '.join(FORMATS)}")
    st.checksum = hashlib.sha256(data).hexdigest()
    return st


def check_balance(
    where: F.Where,
    opening: Decimal,
    entries: list[BankEntry],
    closing: Decimal,
    line: int,
    fld: str,
) -> None:
    net = sum((e.signed for e in entries if e.booked), Decimal(0))
    if opening + net != closing:
        raise where.error(
            line,
            fld,
            f"opening {opening} + entries {net} = {opening + net}, the statement says "
            f"{closing} (off by {closing - opening - net})",
        )


# --------------------------------------------------------------------- MT940

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


def parse_mt940(data: bytes, file_name: str = "") -> BankStatement:
    where = F.Where(file_name)
    text, skipped = _envelope(F.decode_utf8(where, data, "MT940"))
    # (tag, value with continuation lines, first line number, physical lines)
    fields_: list[tuple[str, list[str], int]] = []
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
    opening_f = [f for f in fields_ if f[0] in ("60F", "60M")]
    closing_f = [f for f in fields_ if f[0] in ("62F", "62M")]
    if not opening_f:
        raise where.error(None, ":60F: (opening balance)", "missing")
    if not closing_f:
        last = fields_[-1][2] + len(fields_[-1][1]) if fields_ else 1
        raise where.error(last, ":62F: (closing balance)", "truncated: no closing balance")

    def balance(f: tuple[str, list[str], int]) -> tuple[Decimal, date, str]:
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

    opening, _, cur = balance(opening_f[0])
    closing, closing_date, ccur = balance(closing_f[0])
    if ccur != cur:
        raise where.error(
            closing_f[0][2], f":{closing_f[0][0]}: currency", f"{ccur}, opening {cur}"
        )
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


# ------------------------------------------------------------------ camt.053

_DTD = re.compile(rb"<!(?:DOCTYPE|ENTITY)", re.IGNORECASE)
_CAMT_NS = re.compile(r"urn:iso:std:iso:20022:tech:xsd:camt\.053\.001\.(\d{2})")


@dataclass
class _Node:
    tag: str
    attrs: dict[str, str]
    line: int
    children: list[_Node] = field(default_factory=list)
    text: str = ""

    def all(self, path: str) -> list[_Node]:
        nodes = [self]
        for step in path.split("/"):
            nodes = [c for n in nodes for c in n.children if c.tag == step]
        return nodes

    def get(self, path: str) -> _Node | None:
        found = self.all(path)
        return found[0] if found else None

    def text_of(self, path: str) -> str:
        n = self.get(path)
        return n.text.strip() if n is not None else ""


def _tree(data: bytes, where: F.Where) -> _Node:
    """The XML as nodes with their line numbers (local names, namespaces dropped)."""
    bad = _DTD.search(data)
    if bad is not None:
        raise where.error(
            data[: bad.start()].count(b"\n") + 1,
            None,
            "refused: the XML declares a DTD or entities (not allowed in a statement)",
        )
    p = xml.parsers.expat.ParserCreate(namespace_separator="}")
    root = _Node("", {}, 0)
    stack = [root]

    def start(name: str, attrs: dict[str, str]) -> None:
        ns, _, local = name.rpartition("}")
        node = _Node(local, {**attrs, **({"xmlns": ns} if ns else {})}, p.CurrentLineNumber)
        stack[-1].children.append(node)
        stack.append(node)

    def end(_name: str) -> None:
        stack.pop()

    def chars(s: str) -> None:
        stack[-1].text += s

    p.StartElementHandler = start
    p.EndElementHandler = end
    p.CharacterDataHandler = chars
    try:
        p.Parse(data, True)
    except xml.parsers.expat.ExpatError as exc:
        raise where.error(exc.lineno, None, f"not well-formed XML: {exc}") from None
    if not root.children:
        raise where.error(1, None, "empty XML document")
    return root.children[0]


def _xml_date(where: F.Where, node: _Node | None, fld: str, line: int) -> date:
    if node is None:
        raise where.error(line, fld, "missing")
    v = node.text_of("Dt") or node.text_of("DtTm")[:10]
    try:
        return date.fromisoformat(v)
    except ValueError:
        raise where.error(node.line, fld, f"{v!r} is not a date") from None


def _xml_amount(where: F.Where, node: _Node | None, fld: str, line: int) -> tuple[Decimal, str]:
    if node is None:
        raise where.error(line, fld, "missing")
    cur = F.currency(where, node.line, f"{fld} Ccy", node.attrs.get("Ccy", ""))
    return F.amount(where, node.line, fld, node.text.strip(), cur), cur


def parse_camt053(data: bytes, file_name: str = "") -> BankStatement:
    where = F.Where(file_name)
    doc = _tree(data, where)
    m = _CAMT_NS.fullmatch(doc.attrs.get("xmlns", ""))
    if doc.tag != "Document" or m is None:
        raise where.error(doc.line, "Document xmlns", "not a camt.053.001 document")
    stmts = doc.all("BkToCstmrStmt/Stmt")
    if not stmts:
        raise where.error(doc.line, "BkToCstmrStmt/Stmt", "missing")
    if len(stmts) > 1:
        raise where.error(
            stmts[1].line, "Stmt", "a second statement in the file: load them one by one"
        )
    st = stmts[0]
    account = st.text_of("Acct/Id/IBAN") or st.text_of("Acct/Id/Othr/Id")
    if not account:
        raise where.error(st.line, "Stmt/Acct/Id", "missing (IBAN or Othr/Id)")
    balances: dict[str, tuple[Decimal, date, str, int]] = {}
    for bal in st.all("Bal"):
        code = bal.text_of("Tp/CdOrPrtry/Cd")
        v, cur = _xml_amount(where, bal.get("Amt"), f"Bal {code} Amt", bal.line)
        ind = bal.text_of("CdtDbtInd")
        if ind not in ("CRDT", "DBIT"):
            raise where.error(bal.line, f"Bal {code} CdtDbtInd", f"{ind!r}: CRDT or DBIT")
        balances[code] = (
            -v if ind == "DBIT" else v,
            _xml_date(where, bal.get("Dt"), f"Bal {code} Dt", bal.line),
            cur,
            bal.line,
        )
    opening = balances.get("OPBD") or balances.get("PRCD")
    closing = balances.get("CLBD")
    if opening is None:
        raise where.error(st.line, "Bal OPBD (opening balance)", "missing")
    if closing is None:
        raise where.error(st.line, "Bal CLBD (closing balance)", "missing")
    cur = st.text_of("Acct/Ccy") or opening[2]
    for code, b in balances.items():
        if b[2] != cur:
            raise where.error(b[3], f"Bal {code} Amt Ccy", f"{b[2]}, the account is in {cur}")
    entries: list[BankEntry] = []
    for n in st.all("Ntry"):
        fld = f"Ntry {len(entries) + 1}"
        amt, ecur = _xml_amount(where, n.get("Amt"), "Ntry/Amt", n.line)
        if ecur != cur:
            raise where.error(n.line, "Ntry/Amt Ccy", f"{ecur}, the account is in {cur}")
        if amt <= 0:
            raise where.error(n.line, "Ntry/Amt", f"{amt} must be greater than zero")
        ind = n.text_of("CdtDbtInd")
        if ind not in ("CRDT", "DBIT"):
            raise where.error(n.line, "Ntry/CdtDbtInd", f"{ind!r}: CRDT or DBIT ({fld})")
        reversal = n.text_of("RvslInd").lower() == "true"
        credit = (ind == "CRDT") != reversal
        sts = n.text_of("Sts/Cd") or n.text_of("Sts")
        if sts not in ("BOOK", "PDNG", "INFO", "FUTR"):
            raise where.error(n.line, "Ntry/Sts", f"{sts!r}: BOOK, PDNG, INFO or FUTR")
        booking = _xml_date(where, n.get("BookgDt"), "Ntry/BookgDt", n.line)
        value = (
            _xml_date(where, n.get("ValDt"), "Ntry/ValDt", n.line) if n.get("ValDt") else booking
        )
        ustrd = [u.text.strip() for u in n.all("NtryDtls/TxDtls/RmtInf/Ustrd")]
        strd = [u.text.strip() for u in n.all("NtryDtls/TxDtls/RmtInf/Strd/CdtrRefInf/Ref")]
        info = " ".join(x for x in [*ustrd, *strd, n.text_of("AddtlNtryInf")] if x)
        e2e = n.text_of("NtryDtls/TxDtls/Refs/EndToEndId")
        entries.append(
            BankEntry(
                entry_no=len(entries) + 1,
                line_no=n.line,
                direction="C" if credit else "D",
                amount=amt,
                currency=cur,
                value_date=value,
                booking_date=booking,
                bank_ref=n.text_of("AcctSvcrRef") or n.text_of("NtryRef"),
                customer_ref="" if e2e.upper() in ("", "NOTPROVIDED", "NONREF") else e2e,
                remittance=info,
                booked=sts == "BOOK",
            )
        )
    _check_summary(where, st, entries)
    check_balance(
        where, opening[0], entries, closing[0], closing[3], "Bal CLBD Amt (closing balance)"
    )
    return BankStatement(
        format="camt053",
        account=account,
        statement_date=closing[1],
        currency=cur,
        opening=opening[0],
        closing=closing[0],
        entries=entries,
        reference=st.text_of("Id"),
        file_name=file_name,
        meta={"version": "001." + m[1], "sequence": st.text_of("ElctrncSeqNb")},
    )


def _check_summary(where: F.Where, st: _Node, entries: list[BankEntry]) -> None:
    """TxsSummry, where the bank gives it: counts and sums of the entries."""
    s = st.get("TxsSummry")
    if s is None:
        return
    booked = [e for e in entries if e.booked]
    groups = {
        "TtlNtries": booked,
        "TtlCdtNtries": [e for e in booked if e.direction == "C"],
        "TtlDbtNtries": [e for e in booked if e.direction == "D"],
    }
    for name, group in groups.items():
        g = s.get(name)
        if g is None:
            continue
        count = g.text_of("NbOfNtries")
        if count and count != str(len(group)):
            raise where.error(
                g.line, f"TxsSummry/{name}/NbOfNtries", f"says {count}, the file has {len(group)}"
            )
        total = g.text_of("Sum")
        actual = sum((e.amount for e in group), Decimal(0))
        if total and Decimal(total) != actual:
            raise where.error(
                g.line, f"TxsSummry/{name}/Sum", f"says {total}, the entries sum to {actual}"
            )


# -------------------------------------------------------------------- writers


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


def _esc(v: str) -> str:
    return v.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_camt053(st: BankStatement) -> bytes:
    """A camt.053.001.08 document for one account and day."""
    cur = st.currency

    def bal(code: str, v: Decimal) -> str:
        return (
            f"<Bal><Tp><CdOrPrtry><Cd>{code}</Cd></CdOrPrtry></Tp>"
            f'<Amt Ccy="{cur}">{abs(v):.2f}</Amt>'
            f"<CdtDbtInd>{'DBIT' if v < 0 else 'CRDT'}</CdtDbtInd>"
            f"<Dt><Dt>{st.statement_date.isoformat()}</Dt></Dt></Bal>"
        )

    booked = [e for e in st.entries if e.booked]
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.08">',
        "<BkToCstmrStmt>",
        f"<GrpHdr><MsgId>{_esc(st.reference or 'STMT')}</MsgId>"
        f"<CreDtTm>{st.statement_date.isoformat()}T23:59:59+08:00</CreDtTm></GrpHdr>",
        "<Stmt>",
        f"<Id>{_esc(st.reference or 'STMT')}</Id>",
        f"<Acct><Id><Othr><Id>{_esc(st.account)}</Id></Othr></Id><Ccy>{cur}</Ccy></Acct>",
        bal("OPBD", st.opening),
        bal("CLBD", st.closing),
        f"<TxsSummry><TtlNtries><NbOfNtries>{len(booked)}</NbOfNtries>"
        f"<Sum>{sum((e.amount for e in booked), Decimal(0)):.2f}</Sum></TtlNtries></TxsSummry>",
    ]
    for e in st.entries:
        e2e = _esc(e.customer_ref or "NOTPROVIDED")
        lines.append(
            f'<Ntry><Amt Ccy="{cur}">{e.amount:.2f}</Amt>'
            f"<CdtDbtInd>{'CRDT' if e.direction == 'C' else 'DBIT'}</CdtDbtInd>"
            f"<Sts><Cd>{'BOOK' if e.booked else 'PDNG'}</Cd></Sts>"
            f"<BookgDt><Dt>{e.booking_date.isoformat()}</Dt></BookgDt>"
            f"<ValDt><Dt>{e.value_date.isoformat()}</Dt></ValDt>"
            f"<AcctSvcrRef>{_esc(e.bank_ref)}</AcctSvcrRef>"
            f"<NtryDtls><TxDtls><Refs><EndToEndId>{e2e}</EndToEndId></Refs>"
            f"<RmtInf><Ustrd>{_esc(e.remittance)}</Ustrd></RmtInf></TxDtls></NtryDtls></Ntry>"
        )
    lines += ["</Stmt>", "</BkToCstmrStmt>", "</Document>"]
    return ("\n".join(lines) + "\n").encode("utf-8")


def statement_of(
    account: str,
    day: date,
    entries: list[tuple[str, Decimal, date, str, str]],
    *,
    opening: Decimal = Decimal(0),
    currency: str = "CNY",
) -> BankStatement:
    """A statement from (direction, amount, value date, bank ref, remittance) rows,
    its closing balance computed (for writers and tests)."""
    es = [
        BankEntry(
            entry_no=i,
            line_no=0,
            direction=d,
            amount=a,
            currency=currency,
            value_date=v,
            booking_date=day,
            bank_ref=ref,
            customer_ref="",
            remittance=text,
        )
        for i, (d, a, v, ref, text) in enumerate(entries, start=1)
    ]
    closing = opening + sum((e.signed for e in es), Decimal(0))
    return BankStatement(
        format="mt940",
        account=account,
        statement_date=day,
        currency=currency,
        opening=opening,
        closing=closing,
        entries=es,
        reference=f"STMT{day:%Y%m%d}",
    )
