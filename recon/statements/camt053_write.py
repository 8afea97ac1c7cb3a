"""The camt.053 writer: a document for a statement's lines (camt053.write)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from xml.sax.saxutils import escape

from recon.statements import fields as F
from recon.statements.model import Statement, StatementLine

NAMESPACES = {
    "001.02": "urn:iso:std:iso:20022:tech:xsd:camt.053.001.02",
    "001.08": "urn:iso:std:iso:20022:tech:xsd:camt.053.001.08",
}


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
