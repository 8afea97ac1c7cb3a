"""ISO 20022 camt.053 bank-to-customer statement (XML), versions 001.02 and 001.08.

    Document/BkToCstmrStmt/Stmt
      Bal (Tp/CdOrPrtry/Cd OPBD, CLBD; Amt Ccy; CdtDbtInd; Dt/Dt: the business date)
      TxsSummry (TtlNtries NbOfNtries, Sum, TtlNetNtry; TtlCdtNtries; TtlDbtNtries)
      Ntry: Amt Ccy, CdtDbtInd (CRDT a payment, DBIT a refund; RvslInd true a
            reversal), Sts (BOOK / PDNG; 001.08: Sts/Cd), BookgDt/DtTm (the instant),
            ValDt/Dt, AcctSvcrRef (the channel's txn id), Chrgs (the fee: 001.02 Amt,
            001.08 Rcrd/Amt), NtryDtls/TxDtls/Refs/EndToEndId (our txn id),
            TxDtls/AddtlTxInf (slash codes: /ORIG/ /STAT/ /CPN/ /MREF/)

Parsed with xml.etree; a document with a DTD or entity declarations is refused.
Opening balance + entries must equal the closing balance; the summary's counts and
sums must match the entries.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from xml.sax.saxutils import escape

from recon.statements import fields as F
from recon.statements.model import STATUSES, Statement, StatementError, StatementLine, Totals

FORMAT = "camt053"
TIME_FIELD = "Ntry/BookgDt/DtTm (occurred_at)"
CTID_FIELD = "Ntry/AcctSvcrRef (channel_txn_id)"
NAMESPACES = {
    "001.02": "urn:iso:std:iso:20022:tech:xsd:camt.053.001.02",
    "001.08": "urn:iso:std:iso:20022:tech:xsd:camt.053.001.08",
}
_NTRY_START = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?Ntry[\s>]")
_NTRY_END = re.compile(rb"</(?:[A-Za-z_][\w.-]*:)?Ntry>")
_UTF16 = {b"\xff\xfe": "utf-16", b"\xfe\xff": "utf-16", b"<\0": "utf-16-le", b"\0<": "utf-16-be"}
_AMOUNT = re.compile(r"(0|[1-9][0-9]{0,12})(\.[0-9]{1,5})?")


def sniff(data: bytes) -> bool:
    head = data[:4096]
    return b"camt.053" in head and b"<" in head


def _entry_spans(data: bytes) -> list[tuple[int, int, int, int]]:
    """(line number, physical line, start, end) of each <Ntry> element in the bytes: the
    line of its tag (LF, CRLF or CR ends, as expat counts), or one past the entry before
    when entries share a line (no line breaks): a distinct number, its row's key."""
    out: list[tuple[int, int, int, int]] = []
    line, pos, prev = 1, 0, 0
    for m in _NTRY_START.finditer(data):
        line += _line_ends(data, pos, m.start())
        pos = m.start()
        end = _NTRY_END.search(data, pos)
        prev = max(line, prev + 1)
        out.append((prev, line, pos, end.end() if end else len(data)))
    return out


def _line_ends(data: bytes, start: int, end: int) -> int:
    n, cr = data.count(b"\n", start, end), data.count(b"\r", start, end)
    return n + cr - data.count(b"\r\n", start, end) if cr else n


def _utf16(data: bytes) -> str | None:
    """The text of a UTF-16 document (BOM or `<` first), else None."""
    codec = _UTF16.get(data[:2])
    try:
        return data.decode(codec) if codec else None
    except UnicodeDecodeError:
        return None  # expat says where


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find(el: ET.Element, path: str) -> ET.Element | None:
    """Namespace-agnostic child lookup by a slash path of local names."""
    cur: ET.Element | None = el
    for name in path.split("/"):
        if cur is None:
            return None
        cur = next((c for c in cur if _local(c.tag) == name), None)
    return cur


def _text(el: ET.Element, path: str) -> str:
    found = _find(el, path)
    return (found.text or "").strip() if found is not None else ""


def _iso_ms(where: F.Where, line_no: int, field: str, value: str) -> int:
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise where.error(line_no, field, f"{value[:40]!r} is not an ISO date-time") from None
    if dt.tzinfo is None:
        raise where.error(line_no, field, f"{value!r} has no UTC offset")
    return int(dt.timestamp() * 1000)


def _amt(
    where: F.Where, line_no: int | None, field: str, el: ET.Element | None, cur: str
) -> Decimal:
    if el is None:
        raise where.error(line_no, field, "missing")
    v = (el.text or "").strip()
    ccy = el.get("Ccy", "")
    if ccy != cur:
        raise where.error(line_no, field, f"currency {ccy!r}, the statement is in {cur}")
    return F.amount(where, line_no, field, v, cur)


@dataclass
class _Scan:
    """What scan has seen so far: the document's figures and the entries' sums."""

    n_entry: int = 0
    stmt_count: int = 0
    cur: str = ""
    balances: dict[str, tuple[Decimal, date, int]] = field(default_factory=dict)
    summary: ET.Element | None = None
    net: Decimal = Decimal(0)
    total: Decimal = Decimal(0)
    fees: Decimal = Decimal(0)
    any_fee: bool = False
    n_cdt: int = 0
    n_dbt: int = 0
    sum_cdt: Decimal = Decimal(0)
    sum_dbt: Decimal = Decimal(0)

    def add(self, line: StatementLine) -> None:
        if line.kind == "payment":
            self.net += line.amount
            self.n_cdt += 1
            self.sum_cdt += line.amount
        else:
            self.net -= line.amount
            self.n_dbt += 1
            self.sum_dbt += line.amount
        self.total += line.amount
        if line.fee is not None:
            self.fees += line.fee
            self.any_fee = True


def scan(data: bytes, file_name: str, env: Statement) -> Iterator[StatementLine]:
    where = F.Where(file_name)
    F.xml_prolog(data, where)  # no DTD or entities, whatever the encoding
    text = _utf16(data)
    source: io.IOBase = io.StringIO(text) if text is not None else io.BytesIO(data)
    data = text.encode("utf-8") if text is not None else data
    spans = _entry_spans(data)
    st = _Scan()
    try:
        for event, el in ET.iterparse(source, events=("start", "end")):
            name = _local(el.tag)
            if event == "start":
                _start(where, el, name, env, st)
            elif name == "Ntry":
                line = _read_entry(where, el, st, spans, data)
                st.add(line)
                yield line
                el.clear()
            else:
                _end(where, el, name, env, st)
    except ET.ParseError as exc:
        err_line, _col = exc.position
        raise where.error(
            err_line, None, f"not well-formed XML (truncated?): {str(exc).split(':')[0]}"
        ) from None
    _finish(where, env, st)


def _read_entry(
    where: F.Where, el: ET.Element, st: _Scan, spans: list[tuple[int, int, int, int]], data: bytes
) -> StatementLine:
    """An entry closes: its line. An error names the physical line (and the entry's
    place on it when entries share the line)."""
    k = st.n_entry
    line_no, phys, s0, s1 = spans[k] if k < len(spans) else (k + 1, k + 1, 0, 0)
    st.n_entry += 1
    try:
        if not st.cur:
            raise where.error(line_no, "Acct Ccy", "the statement's currency is unknown")
        return _entry(where, line_no, el, st.cur, data[s0:s1].decode("utf-8", "replace"))
    except StatementError as exc:
        if line_no == phys:
            raise
        first = next(i for i, s in enumerate(spans) if s[1] == phys)
        raise where.error(
            phys, exc.field, f"{exc.message} (entry {k - first + 1} on line {phys})"
        ) from None


def _start(where: F.Where, el: ET.Element, name: str, env: Statement, st: _Scan) -> None:
    """An element opens: the document's namespace (version); one statement only."""
    if name == "Document":
        ns = el.tag[1:].split("}")[0] if el.tag.startswith("{") else ""
        if ns not in NAMESPACES.values():
            raise where.error(1, "Document xmlns", f"{ns!r} is not camt.053.001.02/08")
        env.meta["version"] = ns.rsplit(".", 2)[-2] + "." + ns.rsplit(".", 1)[-1]
    elif name == "Stmt":
        st.stmt_count += 1
        if st.stmt_count > 1:
            raise where.error(
                None,
                "Stmt",
                "more than one statement in the file: load them one by one",
            )


def _end(where: F.Where, el: ET.Element, name: str, env: Statement, st: _Scan) -> None:
    """An element other than an entry closes: account, balances, summary, statement."""
    if name == "Acct":
        st.cur = st.cur or _text(el, "Ccy")
        env.meta["account"] = _text(el, "Id/Othr/Id") or _text(el, "Id/IBAN")
    elif name == "Bal":
        code = _text(el, "Tp/CdOrPrtry/Cd")
        a = _find(el, "Amt")
        ccy = a.get("Ccy", "") if a is not None else ""
        st.cur = st.cur or ccy
        F.currency(where, None, f"Bal {code} Amt Ccy", st.cur)
        v = _amt(where, None, f"Bal {code} Amt", a, st.cur)
        if _text(el, "CdtDbtInd") == "DBIT":
            v = -v
        d_txt = _text(el, "Dt/Dt") or _text(el, "Dt/DtTm")[:10]
        try:
            d = date.fromisoformat(d_txt)
        except ValueError:
            raise where.error(None, f"Bal {code} Dt", f"{d_txt!r} is not a date") from None
        st.balances[code] = (v, d, 0)
    elif name == "TxsSummry":
        st.summary = el  # kept whole for the checks at the end
    elif name == "Stmt":
        env.meta["stmt_id"] = _text(el, "Id")
        el.clear()


def _finish(where: F.Where, env: Statement, st: _Scan) -> None:
    """After the last entry: the balances and the summary against the entries."""
    if st.stmt_count == 0:
        raise where.error(None, "Stmt", "no statement in the document")
    if "OPBD" not in st.balances or "CLBD" not in st.balances:
        raise where.error(None, "Bal", "needs an opening (OPBD) and a closing (CLBD) balance")
    op, cl = st.balances["OPBD"][0], st.balances["CLBD"][0]
    net = st.net
    env.business_date = st.balances["CLBD"][1]
    env.meta["opening_balance"] = str(op)
    if op + net != cl:
        raise where.error(
            None,
            "Bal CLBD (closing balance)",
            f"opening {op} + entries {net} = {op + net}, the statement says {cl} "
            f"(off by {cl - op - net})",
        )
    items: list[tuple[str, str]] = [("OPBD", str(op)), ("CLBD", str(cl))]
    if st.summary is not None:
        items += _check_summary(where, st.summary, st)
    env.declared = Totals(
        count=st.n_entry, amount=st.total, fee=st.fees if st.any_fee else None, items=tuple(items)
    )


def _check_summary(where: F.Where, summary: ET.Element, st: _Scan) -> list[tuple[str, str]]:
    """TxsSummry's counts, sums and net against the entries; its items for Totals."""
    items: list[tuple[str, str]] = []
    for path, n_got, s_got in (
        ("TtlNtries", st.n_cdt + st.n_dbt, st.sum_cdt + st.sum_dbt),
        ("TtlCdtNtries", st.n_cdt, st.sum_cdt),
        ("TtlDbtNtries", st.n_dbt, st.sum_dbt),
    ):
        part = _find(summary, path)
        if part is None:
            continue
        nb = _text(part, "NbOfNtries")
        if nb and F.count(where, None, f"TxsSummry/{path}/NbOfNtries", nb) != n_got:
            raise where.error(
                None, f"TxsSummry/{path}/NbOfNtries", f"declares {nb}, the entries are {n_got}"
            )
        s = _text(part, "Sum")
        if s:
            if not _AMOUNT.fullmatch(s):
                raise where.error(None, f"TxsSummry/{path}/Sum", f"{s[:40]!r} is not an amount")
            if Decimal(s) != s_got:
                raise where.error(
                    None,
                    f"TxsSummry/{path}/Sum",
                    f"declares {s}, the entries add up to {s_got} (off by {Decimal(s) - s_got})",
                )
        items.append((path, f"{nb} {s}"))
    net_el = _find(summary, "TtlNtries/TtlNetNtry")
    if net_el is not None:
        nv = _text(net_el, "Amt")
        if not _AMOUNT.fullmatch(nv):
            raise where.error(None, "TxsSummry/TtlNtries/TtlNetNtry/Amt", f"{nv!r}")
        signed = Decimal(nv) * (-1 if _text(net_el, "CdtDbtInd") == "DBIT" else 1)
        if signed != st.net:
            raise where.error(
                None,
                "TxsSummry/TtlNtries/TtlNetNtry",
                f"declares {signed}, the entries net to {st.net}",
            )
    return items


def _entry(where: F.Where, line_no: int, el: ET.Element, cur: str, raw: str) -> StatementLine:
    amt = _amt(where, line_no, "Ntry/Amt (amount)", _find(el, "Amt"), cur)
    if amt <= 0:
        raise where.error(line_no, "Ntry/Amt (amount)", f"{amt} must be greater than zero")
    ind = _text(el, "CdtDbtInd")
    rvsl = _text(el, "RvslInd").lower() == "true"
    if ind == "CRDT" and not rvsl:
        kind = "payment"
    elif ind == "DBIT":
        kind = "reversal" if rvsl else "refund"
    else:
        raise where.error(line_no, "Ntry/CdtDbtInd (kind)", f"{ind!r} (RvslInd {rvsl})")
    sts = _text(el, "Sts/Cd") or _text(el, "Sts")
    if sts not in ("BOOK", "PDNG", "INFO"):
        raise where.error(line_no, "Ntry/Sts (status)", f"{sts[:20]!r} is not BOOK or PDNG")
    tx = _find(el, "NtryDtls/TxDtls")
    info = F.parse_info(_text(tx, "AddtlTxInf")) if tx is not None else {}
    status = info.get("STAT") or ("success" if sts == "BOOK" else "pending")
    if status not in STATUSES:
        raise where.error(line_no, "AddtlTxInf /STAT/ (status)", f"{status[:20]!r}")
    dttm = _text(el, "BookgDt/DtTm")
    if dttm:
        occurred = _iso_ms(where, line_no, "Ntry/BookgDt/DtTm (occurred_at)", dttm)
    else:
        d = _text(el, "BookgDt/Dt") or _text(el, "ValDt/Dt")
        try:
            occurred = F.noon_utc_ms(date.fromisoformat(d))
        except ValueError:
            raise where.error(line_no, "Ntry/BookgDt (occurred_at)", f"{d[:30]!r}") from None
    fee = None
    chrgs = _find(el, "Chrgs")
    if chrgs is not None:
        recs = [c for c in chrgs if _local(c.tag) == "Rcrd"]
        amounts = [_find(r, "Amt") for r in recs] if recs else [_find(chrgs, "Amt")]
        fee = Decimal(0)
        for a in amounts:
            fee += _amt(where, line_no, "Ntry/Chrgs (fee)", a, cur)
    coupon = None
    if "CPN" in info:
        v = info["CPN"]
        if not v.startswith(cur):
            raise where.error(line_no, "AddtlTxInf /CPN/ (coupon_amount)", f"{v!r}")
        coupon = F.amount(where, line_no, "AddtlTxInf /CPN/ (coupon_amount)", v[3:], cur)
    txn = _text(tx, "Refs/EndToEndId") if tx is not None else ""
    if txn == "NOTPROVIDED":
        txn = ""
    ctid = _text(el, "AcctSvcrRef")
    if not ctid:
        raise where.error(line_no, "Ntry/AcctSvcrRef (channel_txn_id)", "empty")
    F.text(where, line_no, "EndToEndId (txn_id)", txn)
    F.text(where, line_no, "AcctSvcrRef (channel_txn_id)", ctid)
    F.text(where, line_no, "AddtlTxInf /ORIG/ (original_txn_id)", info.get("ORIG", ""))
    F.text(where, line_no, "AddtlTxInf /MREF/ (merchant_ref)", info.get("MREF", ""))
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


# -------------------------------------------------------------------- writer


def _a(v: Decimal, cur: str) -> str:
    return F.fmt_amount(v, cur)


def _bal(code: str, v: Decimal, cur: str, d: date) -> str:
    ind = "DBIT" if v < 0 else "CRDT"
    return (
        f"<Bal><Tp><CdOrPrtry><Cd>{code}</Cd></CdOrPrtry></Tp>"
        f'<Amt Ccy="{cur}">{_a(abs(v), cur)}</Amt><CdtDbtInd>{ind}</CdtDbtInd>'
        f"<Dt><Dt>{d.isoformat()}</Dt></Dt></Bal>"
    )


def write(statement: Statement) -> bytes:
    """A camt.053 document for the lines (one currency).

    meta: version (001.02 default, or 001.08), account, stmt_id, opening_balance,
    created (ISO date-time of creation, default the next day 09:00 +08:00)."""
    if statement.business_date is None:
        raise ValueError("a camt.053 statement needs the business date")
    d = statement.business_date
    meta = statement.meta
    version = meta.get("version", "001.02")
    ns = NAMESPACES[version]
    currencies = {x.currency for x in statement.lines} or {meta.get("currency", "CNY")}
    if len(currencies) != 1:
        raise ValueError(f"a camt.053 statement here has one currency, not {sorted(currencies)}")
    cur = currencies.pop()
    opening = Decimal(meta.get("opening_balance", "0"))
    created = meta.get("created") or f"{date.fromordinal(d.toordinal() + 1)}T09:00:00+08:00"
    stmt_id = meta.get("stmt_id") or f"STMT{d:%Y%m%d}"
    account = meta.get("account") or "CN0000000000000000"
    entries = [_ntry(x, cur, version, d) for x in statement.lines]
    credits = [x.amount for x in statement.lines if x.kind == "payment"]
    debits = [x.amount for x in statement.lines if x.kind != "payment"]
    s_c, s_d = sum(credits, Decimal(0)), sum(debits, Decimal(0))
    net = s_c - s_d
    closing = opening + net
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<Document xmlns="{ns}">',
        "<BkToCstmrStmt>",
        f"<GrpHdr><MsgId>{escape(stmt_id)}</MsgId><CreDtTm>{created}</CreDtTm></GrpHdr>",
        "<Stmt>",
        f"<Id>{escape(stmt_id)}</Id><CreDtTm>{created}</CreDtTm>",
        f"<Acct><Id><Othr><Id>{escape(account)}</Id></Othr></Id><Ccy>{cur}</Ccy></Acct>",
        _bal("OPBD", opening, cur, d),
        _bal("CLBD", closing, cur, d),
        _summary(cur, len(credits), s_c, len(debits), s_d),
        *entries,
        "</Stmt>",
        "</BkToCstmrStmt>",
        "</Document>",
    ]
    return ("\n".join(parts) + "\n").encode("utf-8")


def _summary(cur: str, n_c: int, s_c: Decimal, n_d: int, s_d: Decimal) -> str:
    net = s_c - s_d
    net_ind = "DBIT" if net < 0 else "CRDT"
    return (
        "<TxsSummry>"
        f"<TtlNtries><NbOfNtries>{n_c + n_d}</NbOfNtries><Sum>{_a(s_c + s_d, cur)}</Sum>"
        f"<TtlNetNtry><Amt>{_a(abs(net), cur)}</Amt><CdtDbtInd>{net_ind}</CdtDbtInd></TtlNetNtry>"
        "</TtlNtries>"
        f"<TtlCdtNtries><NbOfNtries>{n_c}</NbOfNtries><Sum>{_a(s_c, cur)}</Sum></TtlCdtNtries>"
        f"<TtlDbtNtries><NbOfNtries>{n_d}</NbOfNtries><Sum>{_a(s_d, cur)}</Sum></TtlDbtNtries>"
        "</TxsSummry>"
    )


def _ntry(x: StatementLine, cur: str, version: str, d: date) -> str:
    """One <Ntry> of a line."""
    if x.kind == "payment":
        ind, rv = "CRDT", ""
    else:
        ind = "DBIT"
        rv = "<RvslInd>true</RvslInd>" if x.kind == "reversal" else ""
    pending = x.status == "pending"
    sts_code = "PDNG" if pending else "BOOK"
    sts = f"<Sts><Cd>{sts_code}</Cd></Sts>" if version == "001.08" else f"<Sts>{sts_code}</Sts>"
    chrgs = ""
    if x.fee is not None:
        if x.fee < 0:
            raise ValueError("camt.053 charges are not negative")
        amt = f'<Amt Ccy="{cur}">{_a(x.fee, cur)}</Amt>'
        chrgs = (
            f"<Chrgs><Rcrd>{amt}</Rcrd></Chrgs>" if version == "001.08" else f"<Chrgs>{amt}</Chrgs>"
        )
    info = ""
    if x.original_txn_id:
        info += f"/ORIG/{x.original_txn_id}"
    if x.status not in ("success", "pending"):
        info += f"/STAT/{x.status}"
    if x.coupon_amount is not None:
        info += f"/CPN/{cur}{_a(x.coupon_amount, cur)}"
    if x.merchant_ref:
        info += f"/MREF/{x.merchant_ref}"
    addtl = f"<AddtlTxInf>{escape(info)}</AddtlTxInf>" if info else ""
    e2e = escape(x.txn_id) if x.txn_id else "NOTPROVIDED"
    return (
        "<Ntry>"
        f'<Amt Ccy="{cur}">{_a(x.amount, cur)}</Amt><CdtDbtInd>{ind}</CdtDbtInd>{rv}{sts}'
        f"<BookgDt><DtTm>{F.utc_iso(x.occurred_at_ms)}</DtTm></BookgDt>"
        f"<ValDt><Dt>{d.isoformat()}</Dt></ValDt>"
        f"<AcctSvcrRef>{escape(x.channel_txn_id)}</AcctSvcrRef>"
        "<BkTxCd><Prtry><Cd>PMNT</Cd></Prtry></BkTxCd>"
        f"{chrgs}"
        f"<NtryDtls><TxDtls><Refs><EndToEndId>{e2e}</EndToEndId></Refs>{addtl}</TxDtls></NtryDtls>"
        "</Ntry>"
    )
