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

from recon.funds.bank.camt053 import parse_camt053, write_camt053
from recon.funds.bank.model import BankEntry, BankStatement, check_balance, statement_of
from recon.funds.bank.mt940 import parse_mt940, write_mt940
from recon.statements.model import StatementError

__all__ = [
    "FORMATS",
    "BankEntry",
    "BankStatement",
    "check_balance",
    "detect",
    "parse",
    "parse_camt053",
    "parse_mt940",
    "statement_of",
    "write_camt053",
    "write_mt940",
]

FORMATS = ("mt940", "camt053")


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
