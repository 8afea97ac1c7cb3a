"""ISO 20022 camt.053 bank statements (001.02 to 001.13): parsing (checked whole,
no DTD or entities) and writing (001.08)."""

from __future__ import annotations

import re
import xml.parsers.expat
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from recon.funds.bank.model import BankEntry, BankStatement, check_balance
from recon.statements import fields as F
from recon.statements.model import StatementError

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
    p = xml.parsers.expat.ParserCreate(namespace_separator="}")
    F.refuse_dtd(where, p)  # checked by expat after decoding, whatever the encoding
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
    except StatementError:  # a DOCTYPE or entity (refuse_dtd)
        raise
    except (ValueError, LookupError) as exc:  # a multi-byte or unknown encoding
        raise where.error(1, "encoding", f"encoding not supported: {exc}") from None
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


# balance code -> (signed amount, date, currency, line)
_Balances = dict[str, tuple[Decimal, date, str, int]]


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
    balances = _balances(where, st)
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
        entries.append(_entry(where, n, cur, len(entries) + 1))
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


def _balances(where: F.Where, st: _Node) -> _Balances:
    balances: _Balances = {}
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
    return balances


def _entry(where: F.Where, n: _Node, cur: str, entry_no: int) -> BankEntry:
    """One Ntry, checked."""
    fld = f"Ntry {entry_no}"
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
    value = _xml_date(where, n.get("ValDt"), "Ntry/ValDt", n.line) if n.get("ValDt") else booking
    ustrd = [u.text.strip() for u in n.all("NtryDtls/TxDtls/RmtInf/Ustrd")]
    strd = [u.text.strip() for u in n.all("NtryDtls/TxDtls/RmtInf/Strd/CdtrRefInf/Ref")]
    info = " ".join(x for x in [*ustrd, *strd, n.text_of("AddtlNtryInf")] if x)
    e2e = n.text_of("NtryDtls/TxDtls/Refs/EndToEndId")
    return BankEntry(
        entry_no=entry_no,
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
