"""Merchant payout reconciliation (S14), the pure part: the payout batch file, payout
references in bank debits, and the comparison of what was paid with what `tally
settle` computed. No I/O; `recon.funds.merchants` reads and writes ClickHouse.

The payout batch file is the platform's own record of what it paid its merchants for
one business date (`tally statements load FILE --kind payouts --date D`): UTF-8 CSV
(a BOM is accepted), a header line naming the five columns in any order, one payout a
line:

    merchant_id,amount,currency,value_date,payout_ref
    M00001,35000.00,CNY,2026-11-25,PO-20261124-M00001

`amount` is positive, in major units with at most the currency's digits;
`value_date` is ISO and not before the business date; `payout_ref` is unique in the
file. Any fault refuses the whole file with the line and column named.

A bank debit is a payout when its customer reference or remittance text holds a
payout reference `PO-YYYYMMDD-MERCHANT` (dashes optional: `PO20261124M001`), the date
being the business date paid.

Per merchant and currency of the business date, expected = max(payable, 0), payable
= net - held back (`recon.settle`: payments under an open suspense entry are not paid):

    payout_matched     paid == expected (nothing paid when nothing is payable)
    payout_short       0 < paid < expected
    payout_over        paid > expected (e.g. the net paid, hold-back ignored)
    payout_missing     expected > 0, nothing paid
    unexpected_payout  paid to a merchant and currency with no settlement that day

The four breaks go to suspense.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

from recon.settle import MerchantSettlement
from recon.statements.model import StatementError
from tally.core.money import MoneyError, format_minor, to_minor

CLASSES = (
    "payout_matched",
    "payout_short",
    "payout_over",
    "payout_missing",
    "unexpected_payout",
)
BREAK_CLASSES = frozenset(CLASSES[1:])
COLUMNS = ("merchant_id", "amount", "currency", "value_date", "payout_ref")
PAYOUT_REF = re.compile(
    r"\bPO-?(?P<date>\d{8})-?(?P<merchant>[A-Za-z][A-Za-z0-9_]*?)(?:-\d+)?\b", re.IGNORECASE
)


@dataclass(frozen=True, slots=True)
class Payout:
    """Money paid to a merchant for a business date (minor units)."""

    merchant_id: str
    currency: str
    amount: int
    value_date: date
    ref: str
    line_no: int = 0


@dataclass(frozen=True, slots=True)
class PayoutFile:
    business_date: date
    file_name: str
    checksum: str
    payouts: tuple[Payout, ...]


def _rows(
    reader: Any,
    text: str,
    names: list[str],
    err: Callable[[str, int | None, str | None], StatementError],
) -> Iterator[list[str]]:
    """The reader's rows; a csv.Error (e.g. a field over the size limit) as a
    StatementError naming the line and, when it can be told, the field (`names`: the
    header's columns, once read)."""
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            lines = text.splitlines()
            cells = lines[start - 1].split(",") if start <= len(lines) else []
            big = [i for i, c in enumerate(cells) if len(c) > csv.field_size_limit()]
            col = names[big[0]] if big and big[0] < len(names) else None
            raise err(f"not a CSV line: {exc}", start, col) from None
        yield row


def parse_payouts(data: bytes, business_date: date, file_name: str = "") -> PayoutFile:
    """Parse and check a payout batch file whole (see the module doc)."""

    def err(msg: str, line: int | None = None, col: str | None = None) -> StatementError:
        return StatementError(msg, file_name=file_name, line_no=line, field=col)

    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise err("not UTF-8", line) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    names: list[str] = []
    rows = _rows(reader, text, names, err)
    header = next(rows, None)
    if header is None:
        raise err("empty file: no header line", 1)
    names += [h.strip() for h in header]
    for col in COLUMNS:
        if col not in names:
            raise err(f"the header has no column {col!r} (it has {', '.join(names)})", 1, col)
    extra = [n for n in names if n not in COLUMNS]
    if extra or len(names) != len(COLUMNS):
        raise err(f"unknown or repeated columns: {', '.join(extra) or 'repeated'}", 1)
    at = {n: i for i, n in enumerate(names)}
    out: list[Payout] = []
    refs: dict[str, int] = {}
    line = reader.line_num
    for row in rows:
        start, line = line + 1, reader.line_num
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(COLUMNS):
            raise err(f"{len(row)} fields, the header has {len(COLUMNS)}", start)
        v = {n: row[i].strip() for n, i in at.items()}
        if not v["merchant_id"]:
            raise err("empty", start, "merchant_id")
        try:
            amount = to_minor(v["amount"], v["currency"])
        except MoneyError as exc:
            col = "currency" if "currency" in str(exc) else "amount"
            raise err(str(exc), start, col) from None
        if amount == 0:
            raise err("a payout of zero", start, "amount")
        try:
            value = date.fromisoformat(v["value_date"])
        except ValueError:
            msg = f"not a date (YYYY-MM-DD): {v['value_date'][:20]!r}"
            raise err(msg, start, "value_date") from None
        if value < business_date:
            raise err(f"{value} is before the business date {business_date}", start, "value_date")
        ref = v["payout_ref"]
        if not ref:
            raise err("empty", start, "payout_ref")
        if ref in refs:
            raise err(f"{ref!r} is already on line {refs[ref]}", start, "payout_ref")
        refs[ref] = start
        out.append(Payout(v["merchant_id"], v["currency"], amount, value, ref, start))
    return PayoutFile(business_date, file_name, hashlib.sha256(data).hexdigest(), tuple(out))


def write_payouts(payouts: Iterable[Payout]) -> bytes:
    """A payout batch file (the simulator's and the tests')."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for p in payouts:
        amount = format_minor(p.amount, p.currency)
        w.writerow((p.merchant_id, amount, p.currency, p.value_date.isoformat(), p.ref))
    return buf.getvalue().encode()


def payout_ref(business_date: date, merchant_id: str, n: int = 0) -> str:
    return f"PO-{business_date:%Y%m%d}-{merchant_id}" + (f"-{n}" if n else "")


def payout_of_debit(text: str, business_date: date) -> str | None:
    """The merchant a bank debit pays for `business_date`, from the payout reference
    in its text; None when it names none or another date."""
    for m in PAYOUT_REF.finditer(text):
        if m["date"] == f"{business_date:%Y%m%d}":
            return m["merchant"]
    return None


# --------------------------------------------------------------------- compare


@dataclass(frozen=True, slots=True)
class MerchantResult:
    item_key: str
    cls: str
    merchant_id: str
    currency: str
    net: int  # minor units; 0 when there is no settlement
    held_amount: int
    held_txn_ids: tuple[str, ...]
    expected: int | None  # None: no settlement that day
    paid: int | None  # None: nothing paid
    refs: tuple[str, ...]
    value_dates: tuple[date, ...]
    detail: str

    @property
    def difference(self) -> int:
        """paid - expected (0 when either is missing)."""
        if self.expected is None or self.paid is None:
            return 0
        return self.paid - self.expected

    @property
    def at_risk(self) -> int:
        if self.cls == "payout_missing":
            return self.expected or 0
        if self.cls == "unexpected_payout":
            return self.paid or 0
        return abs(self.difference)


def _held(m: MerchantSettlement) -> str:
    if not m.held_items:
        return ""
    ids = sorted(m.held_txn_ids)
    shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
    n = m.held_items
    return (
        f"{format_minor(m.held_amount, m.currency)} held back for {n} "
        f"payment{'s' if n != 1 else ''} under suspense ({shown})"
    )


def compare(
    settlements: Iterable[MerchantSettlement], payouts: Iterable[Payout], business_date: date
) -> list[MerchantResult]:
    """Classify each merchant and currency of the day (see the module doc)."""
    paid: dict[tuple[str, str], list[Payout]] = defaultdict(list)
    for p in payouts:
        paid[(p.merchant_id, p.currency)].append(p)
    owed = {(m.merchant_id, m.currency): m for m in settlements}
    out = []
    for key in sorted(owed.keys() | paid.keys()):
        merchant, cur = key
        got = sorted(paid.get(key, []), key=lambda p: (p.value_date, p.ref))
        total = sum(p.amount for p in got) if got else None
        m = owed.get(key)

        def fmt(minor: int, cur: str = cur) -> str:
            return format_minor(minor, cur)

        if m is None:
            assert total is not None
            cls = "unexpected_payout"
            detail = f"no settlement for {merchant} in {cur} on {business_date}"
            expected = None
        else:
            expected = max(m.payable, 0)
            held = _held(m)
            if total is None and expected == 0:
                cls = "payout_matched"
                detail = f"nothing payable (payable {fmt(m.payable)})"
            elif total is None:
                cls, detail = "payout_missing", f"{fmt(expected)} payable, nothing paid"
            elif total == expected:
                cls, detail = "payout_matched", f"paid {fmt(total)}"
            elif total < expected:
                cls, detail = "payout_short", f"{fmt(expected - total)} short"
            else:
                cls = "payout_over"
                detail = f"{fmt(total - expected)} over"
                if m.held_amount and total == m.net:
                    detail += ": the net paid, the hold-back ignored"
            if held:
                detail += f"; net {fmt(m.net)}, {held}"
        if len(got) > 1:
            detail += f"; {len(got)} payouts"
        out.append(
            MerchantResult(
                item_key=f"po:{merchant}:{cur}:{business_date.isoformat()}",
                cls=cls,
                merchant_id=merchant,
                currency=cur,
                net=m.net if m else 0,
                held_amount=m.held_amount if m else 0,
                held_txn_ids=tuple(sorted(m.held_txn_ids)) if m else (),
                expected=expected,
                paid=total,
                refs=tuple(p.ref for p in got),
                value_dates=tuple(sorted({p.value_date for p in got})),
                detail=detail,
            )
        )
    return out
