"""The generic statement CSV, for channels without a format of their own.

UTF-8, comma-separated, RFC 4180 quoting, this header exactly:

    txn_id,channel_txn_id,original_txn_id,kind,status,currency,amount,fee,coupon_amount,occurred_at

then one line per item, optionally a trailer `#total,<count>,<amount sum>,<fee sum>`.
`fee` and `coupon_amount` may be empty (not stated). `occurred_at` is RFC 3339 with
an offset. Every line, the last included, ends with a line end (a file cut short
is refused). See docs/statements.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import BinaryIO

from recon.statements import fields as F
from recon.statements.model import KINDS, STATUSES, Statement, StatementLine, Totals
from tally.core.events import InvalidEvent, parse_timestamp

FORMAT = "csv"
TIME_FIELD = "occurred_at"
CTID_FIELD = "channel_txn_id"
COLUMNS = (
    "txn_id",
    "channel_txn_id",
    "original_txn_id",
    "kind",
    "status",
    "currency",
    "amount",
    "fee",
    "coupon_amount",
    "occurred_at",
)
HEADER = ",".join(COLUMNS)
BOM = b"\xef\xbb\xbf"
_FORMULA = frozenset(F.FORMULA_START)
_KINDS = frozenset(KINDS)
_STATUSES = frozenset(STATUSES)


def sniff(data: bytes) -> bool:
    return data.removeprefix(b"\xef\xbb\xbf").startswith(HEADER.encode())


def scan(data: bytes, file_name: str, env: Statement) -> Iterator[StatementLine]:
    where = F.Where(file_name)
    text = F.decode_utf8(where, data, "generic statement CSV")
    if text and not text.endswith("\n"):
        n = text.count("\n") + 1
        raise where.error(n, None, "truncated: the last line has no line end")
    yield from _scan_lines(where, iter(F.physical_lines(text)), env)


def scan_file(f: BinaryIO, file_name: str, env: Statement) -> Iterator[StatementLine]:
    """`scan` reading `f` a line at a time (the encoding and the last line end are
    checked first, in a pass over the file: the same refusals in the same order)."""
    where = F.Where(file_name)
    newlines, last = F.check_utf8_file(where, f, "generic statement CSV")
    f.seek(0)
    empty = f.read(4) in (b"", BOM)
    if not empty and last != b"\n":
        raise where.error(newlines + 1, None, "truncated: the last line has no line end")
    yield from _scan_lines(where, F.file_lines(f), env)


def _scan_lines(where: F.Where, lines: Iterator[str], env: Statement) -> Iterator[StatementLine]:
    head = next(lines, None)
    if head != HEADER:
        got = head[:80] if head is not None else "(empty file)"
        raise where.error(1, None, f"the header must be exactly {HEADER!r}, found {got!r}")
    total = Decimal(0)
    fees = Decimal(0)
    count = 0
    trailer: tuple[int, list[str]] | None = None
    for line_no, raw in enumerate(lines, start=2):
        if trailer is not None:
            raise where.error(line_no, None, "content after the #total trailer")
        if raw.startswith("#total,"):
            trailer = (line_no, raw.split(","))
            continue
        if not raw:
            raise where.error(line_no, None, "empty line")
        v = F.split_simple(raw)
        if len(v) != len(COLUMNS):
            raise where.error(line_no, None, f"expected {len(COLUMNS)} fields, found {len(v)}")
        line = _item(where, line_no, raw, v)
        total += line.amount
        if line.fee is not None:
            fees += line.fee
        count += 1
        yield line
    if trailer is None:
        env.declared = None
        return
    line_no, t = trailer
    if len(t) != 4:
        raise where.error(line_no, "#total", "expected #total,<count>,<amount sum>,<fee sum>")
    if F.count(where, line_no, "#total count", t[1]) != count:
        raise where.error(line_no, "#total count", f"declares {t[1][:20]!r}, the file has {count}")
    a = F.amount(where, line_no, "#total amount", t[2])
    if a != total:
        raise where.error(
            line_no,
            "#total amount",
            f"declares {t[2]}, the lines add up to {total} (off by {a - total})",
        )
    f = F.amount(where, line_no, "#total fee", t[3], signed=True)
    if f != fees:
        raise where.error(
            line_no,
            "#total fee",
            f"declares {t[3]}, the lines add up to {fees} (off by {f - fees})",
        )
    env.declared = Totals(count=count, amount=a, fee=f, items=(("#total", ",".join(t[1:])),))


def _item(where: F.Where, line_no: int, raw: str, v: list[str]) -> StatementLine:
    txn, ctid, orig, kind, status, cur, amt, fee, cpn, at = v
    if txn[:1] in _FORMULA or ctid[:1] in _FORMULA or orig[:1] in _FORMULA:
        for name, value in (("txn_id", txn), ("channel_txn_id", ctid), ("original_txn_id", orig)):
            F.text(where, line_no, name, value)
    if not ctid:
        raise where.error(line_no, "channel_txn_id", "empty")
    if kind not in _KINDS:
        raise where.error(line_no, "kind", f"{kind[:20]!r} is not one of {', '.join(KINDS)}")
    if status not in _STATUSES:
        raise where.error(line_no, "status", f"{status[:20]!r} is not one of {', '.join(STATUSES)}")
    F.currency(where, line_no, "currency", cur)
    amount = F.amount(where, line_no, "amount", amt, cur, positive=True)
    fee_d = F.amount(where, line_no, "fee", fee, signed=kind != "payment") if fee else None
    cpn_d = F.amount(where, line_no, "coupon_amount", cpn, cur) if cpn else None
    try:
        occurred = parse_timestamp(at, "occurred_at")
    except InvalidEvent as exc:
        raise where.error(line_no, "occurred_at", exc.message) from None
    return StatementLine(
        line_no=line_no,
        txn_id=txn,
        channel_txn_id=ctid,
        original_txn_id=orig,
        kind=kind,
        status=status,
        currency=cur,
        amount=amount,
        fee=fee_d,
        coupon_amount=cpn_d,
        merchant_ref="",
        occurred_at_ms=occurred,
        raw=raw,
    )


def _cell(s: str) -> str:
    if any(c in s for c in ',"\n\r'):
        return '"' + s.replace('"', '""') + '"'
    return s


def write(statement: Statement, *, trailer: bool = True) -> bytes:
    out = [HEADER]
    total = fees = Decimal(0)
    for x in statement.lines:
        fee = "" if x.fee is None else F.fmt_fee(x.fee) if x.fee >= 0 else "-" + F.fmt_fee(-x.fee)
        cpn = "" if x.coupon_amount is None else F.fmt_amount(x.coupon_amount, x.currency)
        out.append(
            ",".join(
                (
                    _cell(x.txn_id),
                    _cell(x.channel_txn_id),
                    _cell(x.original_txn_id),
                    x.kind,
                    x.status,
                    x.currency,
                    F.fmt_amount(x.amount, x.currency),
                    fee,
                    cpn,
                    F.utc_iso(x.occurred_at_ms),
                )
            )
        )
        total += x.amount
        fees += x.fee or 0
    if trailer:
        f = F.fmt_fee(fees) if fees >= 0 else "-" + F.fmt_fee(-fees)
        out.append(f"#total,{len(statement.lines)},{F.fmt_fee(total)},{f}")
    return ("\n".join(out) + "\n").encode("utf-8")
