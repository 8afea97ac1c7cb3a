"""Reading a statement file whole and checking it (pure): its business date, every
line against the day and the others."""

from __future__ import annotations

import collections
from collections.abc import Callable
from datetime import date, timedelta

from recon.statements import MODULES, detect, scan
from recon.statements import fields as F
from recon.statements.model import KINDS, STATUSES, Statement, StatementError, StatementLine
from tally.core.money import EXPONENTS
from tally.core.policy import ChannelPolicy

_KINDS, _STATUSES = frozenset(KINDS), frozenset(STATUSES)
_FORMULA = frozenset(F.FORMULA_START)


def day_bounds(policy: ChannelPolicy, day: date) -> tuple[int, int]:
    """[start, end) of a business day in epoch ms."""
    return policy.cutoff_ms(day - timedelta(days=1)), policy.cutoff_ms(day)


def _label(fmt: str, attr: str, default: str) -> str:
    mod = MODULES.get(fmt)
    return str(getattr(mod, attr, default)) if mod else default


def derive_date(statement: Statement, policy: ChannelPolicy, requested: date | None) -> date:
    """The statement's business date: what the file declares (MT940 :62F:, camt.053
    CLBD, Alipay 起始日期) or else `requested` (--date), or else a date in the file
    name, or else the business date most of the lines have. A declared date that
    differs from `requested` is an error."""
    where = F.Where(statement.file_name)
    declared = statement.business_date
    if declared is not None:
        if requested is not None and requested != declared:
            raise where.error(
                None,
                "business date",
                f"the file is for {declared}, not --date {requested}",
            )
        return declared
    if requested is not None:
        return requested
    named = F.date_in_name(statement.file_name)
    if named is not None:
        return named
    if not statement.lines:
        raise where.error(None, "business date", "an empty file without a date: give --date")
    sample = statement.lines[:10_000]
    votes = collections.Counter(policy.business_date(x.occurred_at_ms) for x in sample)
    return votes.most_common(1)[0][0]


class LineChecks:
    """What `validate` checks of one line, in its order: `before_time` (kind, status,
    currency, amount, channel txn id, formulas), `time` (the business day and the carry
    window), then `duplicate` (the key seen on an earlier line). Each raises
    StatementError. The streamed loader (recon/statements/spool.py) runs them apart;
    `time` needs the business day first (`set_day`)."""

    def __init__(self, statement: Statement) -> None:
        self.where = F.Where(statement.file_name)
        fmt = statement.format
        self.time_field = _label(fmt, "TIME_FIELD", "occurred_at")
        self.ctid_field = _label(fmt, "CTID_FIELD", "channel_txn_id")
        self.start = self.end = self.carry = 0

    def set_day(self, policy: ChannelPolicy, business_date: date) -> None:
        self.policy = policy
        self.business_date = business_date
        self.start, self.end = day_bounds(policy, business_date)
        self.carry = policy.carry_window_seconds * 1000

    def in_day(self, t: int) -> bool:
        start, end, carry = self.start, self.end, self.carry
        return start <= t < end or abs(t - start) <= carry or abs(t - end) <= carry

    def before_time(self, x: StatementLine) -> None:
        where, ln = self.where, x.line_no
        if x.kind not in _KINDS:
            raise where.error(ln, "kind", f"{x.kind!r} is not one of {', '.join(KINDS)}")
        if x.status not in _STATUSES:
            raise where.error(ln, "status", f"{x.status!r} is not one of {', '.join(STATUSES)}")
        if x.currency not in EXPONENTS:
            raise where.error(ln, "currency", f"{x.currency!r} is not a known ISO 4217 currency")
        if x.amount <= 0:
            raise where.error(ln, "amount", f"{x.amount} must be greater than zero")
        if not x.channel_txn_id:
            raise where.error(ln, self.ctid_field, "empty")
        if (
            x.txn_id[:1] in _FORMULA
            or x.channel_txn_id[:1] in _FORMULA
            or x.original_txn_id[:1] in _FORMULA
            or x.merchant_ref[:1] in _FORMULA
        ):
            for name in ("txn_id", "channel_txn_id", "original_txn_id", "merchant_ref"):
                F.text(where, ln, name, getattr(x, name))

    def time(self, ln: int, t: int) -> None:
        if not self.in_day(t):
            policy = self.policy
            got = policy.business_date(t)
            raise self.where.error(
                ln,
                self.time_field,
                f"{F.utc_iso(t)} is business date {got} for this channel, not "
                f"{self.business_date} (and not within the {policy.carry_window_seconds} s "
                "carry window of the cutoff)",
            )

    def duplicate(self, ln: int, first: int, kind: str, channel_txn_id: str) -> StatementError:
        return self.where.error(
            ln,
            self.ctid_field,
            f"duplicate of line {first}: {kind} {channel_txn_id!r} appears twice",
        )


def dup_key(x: StatementLine) -> tuple[str, str, str]:
    """What two lines of a statement must not share."""
    return (x.kind, x.channel_txn_id, x.txn_id if x.kind != "payment" else "")


def validate(
    statement: Statement,
    policy: ChannelPolicy,
    business_date: date,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Checks every line against the business day and the others (pure). Raises
    StatementError on the first problem."""
    checks = LineChecks(statement)
    checks.set_day(policy, business_date)
    seen: dict[tuple[str, str, str], int] = {}
    for n, x in enumerate(statement.lines, start=1):
        ln = x.line_no
        checks.before_time(x)
        checks.time(ln, x.occurred_at_ms)
        key = dup_key(x)
        first = seen.get(key)
        if first is not None:
            raise checks.duplicate(ln, first, x.kind, x.channel_txn_id)
        seen[key] = ln
        if progress is not None and n % 10_000 == 0:
            progress(10_000)
    if progress is not None:
        progress(len(statement.lines) % 10_000)


def read_statement(
    data: bytes,
    *,
    channel: str,
    fmt: str | None = None,
    file_name: str = "",
    progress: Callable[[int], None] | None = None,
) -> Statement:
    """Parse a file fully (format checks included), reporting progress per line."""
    fmt = fmt or detect(data, file_name)
    if fmt not in MODULES:
        raise StatementError(f"unknown format {fmt!r}", file_name=file_name)
    env, lines = scan(data, fmt, file_name=file_name, channel_id=channel)
    out: list[StatementLine] = []
    append = out.append
    for n, line in enumerate(lines, start=1):
        append(line)
        if progress is not None and n % 10_000 == 0:
            progress(10_000)
    if progress is not None:
        progress(len(out) % 10_000)
    env.lines = out
    return env
