"""A bank account statement (format-free): its entries and balances."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from recon.statements import fields as F


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
