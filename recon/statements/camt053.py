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
`scan(data)` parses bytes in memory; `scan_file(f)` the same from a file a chunk at a
time (camt053_stream.py), entries dropped as they are read. The writer: camt053_write.py.
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
from typing import BinaryIO, cast

from recon.statements import camt053_stream as X
from recon.statements import fields as F
from recon.statements.camt053_stream import NTRY_END as _NTRY_END
from recon.statements.camt053_stream import NTRY_START as _NTRY_START
from recon.statements.camt053_stream import UTF16 as _UTF16
from recon.statements.camt053_write import NAMESPACES
from recon.statements.camt053_write import write as write
from recon.statements.model import STATUSES, Statement, StatementError, StatementLine, Totals

FORMAT = "camt053"
TIME_FIELD = "Ntry/BookgDt/DtTm (occurred_at)"
CTID_FIELD = "Ntry/AcctSvcrRef (channel_txn_id)"
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


def scan_file(f: BinaryIO, file_name: str, env: Statement) -> Iterator[StatementLine]:
    """`scan` of a binary file, read a chunk at a time: the same lines and refusals.
    Entries are cleared and dropped from their parent as they are read; their spans
    (line, raw text) are found by a second cursor over the file."""
    where = F.Where(file_name)
    X.prolog_file(f, where)
    codec = X.utf16_file(f)
    spans = X.Spans(X.Reader(f, codec))
    source = X.Reader(f, codec, text=True)
    parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("start", "end"))
    st = _Scan()
    stack: list[ET.Element] = []
    closed = False
    try:
        while True:
            for ev in parser.read_events():
                event, el = cast(tuple[str, ET.Element], ev)
                name = _local(el.tag)
                if event == "start":
                    stack.append(el)
                    _start(where, el, name, env, st)
                    continue
                stack.pop()
                if name == "Ntry":
                    line = _next_entry(where, el, st, spans)
                    st.add(line)
                    yield line
                    el.clear()
                    if stack:
                        stack[-1].remove(el)
                else:
                    _end(where, el, name, env, st)
            if closed:
                break
            chunk = source.read()
            if chunk:
                parser.feed(chunk)
            if source.done:
                parser.close()
                closed = True
    except ET.ParseError as exc:
        err_line, _col = exc.position
        raise where.error(
            err_line, None, f"not well-formed XML (truncated?): {str(exc).split(':')[0]}"
        ) from None
    _finish(where, env, st)


def _next_entry(where: F.Where, el: ET.Element, st: _Scan, spans: X.Spans) -> StatementLine:
    """`_read_entry` with the next span of the file."""
    k = st.n_entry
    span = spans.next() if spans.n == k else None
    line_no, phys, first, raw = span if span is not None else (k + 1, k + 1, k, "")
    st.n_entry += 1
    try:
        if not st.cur:
            raise where.error(line_no, "Acct Ccy", "the statement's currency is unknown")
        return _entry(where, line_no, el, st.cur, raw)
    except StatementError as exc:
        if line_no == phys:
            raise
        raise where.error(
            phys, exc.field, f"{exc.message} (entry {k - first + 1} on line {phys})"
        ) from None


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
