"""Settlement reconciliation, the pure part: when each channel owes us what, and which
bank credits pay it. No I/O; `recon.funds.store` reads and writes ClickHouse.

1. A channel statement's business date D settles `settlement_lag_days` working days
   later (`due_date`); a due date on a weekend (unless the channel pays on weekends)
   or on one of its holidays rolls to the next working day. So with T+1, Friday's,
   Saturday's and Sunday's collections are all due on Monday.
2. The net of a business day (`DayTotals.net`): gross - refunds - fees when fees are
   netted, gross - refunds when they are invoiced. Days due the same date form one
   expected settlement (`Expected`), per channel and currency.
3. `reconcile` assigns bank credits to expected settlements, per channel (the credit's
   remittance text matches the channel's reference pattern) and currency. A credit is
   a candidate for an expected settlement when its value date is between the due
   date and the end of the grace period (`settlement_grace_days` working days later).
   First exact amounts, in due-date order: one credit, or several that together make
   the amount (1:N, a split batch; one credit for several days after a weekend is the
   N:1 case, already one expected settlement). Then, for what is left, the credits of
   the earliest value date in the window, whatever their amount.
4. Classes: `settled` (the amount, on the due date), `settlement_late` (the amount,
   after the due date within the grace period; or nothing yet and the grace period
   not over), `settlement_short` / `settlement_over` (credits below / above the
   amount), `settlement_missing` (nothing by the end of the grace period),
   `unexpected_credit` (a credit no expected settlement takes: no channel's pattern,
   several channels', or nothing owed in its window). The breaks — short, over,
   missing, unexpected — go to suspense; late is not a break until the grace period
   ends (it then becomes missing, or settled by a late credit).
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from tally.core.policy import ChannelPolicy

CLASSES = (
    "settled",
    "settlement_late",
    "settlement_short",
    "settlement_over",
    "settlement_missing",
    "unexpected_credit",
)
BREAK_CLASSES = frozenset(
    ("settlement_short", "settlement_over", "settlement_missing", "unexpected_credit")
)
OK_CLASSES = ("settled", "settlement_late")
_MAX_SPLIT = 4  # credits that may together pay one expected settlement
_MAX_CANDIDATES = 12


# ------------------------------------------------------------------ calendar


def is_working_day(d: date, policy: ChannelPolicy) -> bool:
    if d in policy.settlement_holidays:
        return False
    return policy.settlement_weekends or d.weekday() < 5


def add_working_days(d: date, n: int, policy: ChannelPolicy) -> date:
    """`n` working days after `d` (n = 0: `d`, rolled forward to a working day)."""
    while n > 0:
        d += timedelta(days=1)
        if is_working_day(d, policy):
            n -= 1
    while not is_working_day(d, policy):
        d += timedelta(days=1)
    return d


def due_date(business_date: date, policy: ChannelPolicy) -> date:
    """When the channel pays a business date's collections into our bank."""
    return add_working_days(business_date, policy.settlement_lag_days, policy)


def grace_end(due: date, policy: ChannelPolicy) -> date:
    """The last value date on which a credit for `due` is late rather than missing."""
    return add_working_days(due, policy.settlement_grace_days, policy)


def reference_pattern(channel_id: str, policy: ChannelPolicy) -> re.Pattern[str]:
    text = policy.settlement_reference or rf"\b{re.escape(channel_id)}\b"
    return re.compile(text, re.IGNORECASE)


# ------------------------------------------------------------------- expected


@dataclass(frozen=True, slots=True)
class DayTotals:
    """What moved through a channel on one business date, in one currency."""

    channel_id: str
    business_date: date
    currency: str
    gross: Decimal  # collected by the channel (payments, after platform coupons)
    refunds: Decimal  # paid back
    fees: Decimal  # the channel's fees (refund fees returned already deducted)
    source: str  # statement (the statement in force) | ledger (no statement loaded)

    def net(self, fees: str) -> Decimal:
        out = self.gross - self.refunds
        return out - self.fees if fees == "netted" else out


@dataclass(frozen=True, slots=True)
class Expected:
    """One settlement a channel owes: every business date due on the same day."""

    channel_id: str
    currency: str
    due_date: date
    business_dates: tuple[date, ...]
    amount: Decimal
    sources: tuple[str, ...]  # per business date, as in DayTotals.source

    @property
    def key(self) -> str:
        return f"stl:{self.channel_id}:{self.currency}:{self.due_date.isoformat()}"


def expected_settlements(
    days: Iterable[DayTotals], policy_of: Callable[[str], ChannelPolicy]
) -> list[Expected]:
    """The expected settlements of business days, by channel, currency and due date.
    A day whose net is zero (nothing moved) owes nothing."""
    groups: dict[tuple[str, str, date], list[tuple[DayTotals, Decimal]]] = defaultdict(list)
    for t in days:
        p = policy_of(t.channel_id)
        net = t.net(p.settlement_fees)
        if net == 0:
            continue
        groups[(t.channel_id, t.currency, due_date(t.business_date, p))].append((t, net))
    out = []
    for (ch, cur, due), items in sorted(groups.items()):
        items.sort(key=lambda x: x[0].business_date)
        out.append(
            Expected(
                channel_id=ch,
                currency=cur,
                due_date=due,
                business_dates=tuple(t.business_date for t, _ in items),
                amount=sum((n for _, n in items), Decimal(0)),
                sources=tuple(t.source for t, _ in items),
            )
        )
    return out


# -------------------------------------------------------------------- credits


@dataclass(frozen=True, slots=True)
class Credit:
    """Money in on our bank account (a booked credit entry of a bank statement)."""

    account: str
    ref: str  # the entry's reference within the account (BankEntry.ref)
    value_date: date
    currency: str
    amount: Decimal
    remittance: str
    statement_date: date
    line_no: int = 0

    @property
    def key(self) -> str:
        return f"credit:{self.account}:{self.ref}"


def channels_of_credit(credit: Credit, patterns: Mapping[str, re.Pattern[str]]) -> list[str]:
    """The channels whose reference pattern the credit's remittance text matches."""
    return sorted(ch for ch, p in patterns.items() if p.search(credit.remittance))


def _stated_date(credit: Credit, pattern: re.Pattern[str]) -> date | None:
    """The business date a credit names, when the pattern has a `date` group."""
    m = pattern.search(credit.remittance)
    if m is None or "date" not in pattern.groupindex or not m["date"]:
        return None
    digits = re.sub(r"\D", "", m["date"])
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None


# --------------------------------------------------------------------- result


@dataclass(frozen=True, slots=True)
class Result:
    item_key: str
    cls: str
    channel_id: str  # "" for a credit no channel claims
    currency: str
    due_date: date | None
    business_dates: tuple[date, ...]
    expected: Decimal | None
    credited: Decimal | None
    refs: tuple[str, ...]  # the credits' references (account:ref)
    value_dates: tuple[date, ...]
    sources: tuple[str, ...]
    detail: str

    @property
    def difference(self) -> Decimal:
        """credited - expected (0 when either is missing)."""
        if self.expected is None or self.credited is None:
            return Decimal(0)
        return self.credited - self.expected

    @property
    def at_risk(self) -> Decimal:
        """The money a break puts at risk, for suspense."""
        if self.cls == "settlement_missing":
            return self.expected or Decimal(0)
        if self.cls == "unexpected_credit":
            return self.credited or Decimal(0)
        return abs(self.difference)


def _subset(cands: list[Credit], amount: Decimal) -> tuple[Credit, ...] | None:
    """The credits, among the earliest candidates, that together make `amount`
    exactly: fewest first, then earliest value date."""
    cands = cands[:_MAX_CANDIDATES]
    for n in range(1, min(_MAX_SPLIT, len(cands)) + 1):
        best: tuple[Credit, ...] | None = None
        for combo in itertools.combinations(cands, n):
            if sum((c.amount for c in combo), Decimal(0)) == amount and (
                best is None or max(c.value_date for c in combo) < max(c.value_date for c in best)
            ):
                best = combo
        if best is not None:
            return best
    return None


def reconcile(
    expected: Iterable[Expected],
    credits: Iterable[Credit],
    policy_of: Callable[[str], ChannelPolicy],
    channels: Iterable[str],
    as_of: date,
) -> list[Result]:
    """Classify every expected settlement due by `as_of` and every credit with a
    value date up to `as_of` (see the module doc). `channels`: those whose reference
    patterns claim credits."""
    patterns = {ch: reference_pattern(ch, policy_of(ch)) for ch in channels}
    exp = sorted(
        (e for e in expected if e.due_date <= as_of), key=lambda e: (e.due_date, e.channel_id)
    )
    all_credits = sorted(
        (c for c in credits if c.value_date <= as_of),
        key=lambda c: (c.value_date, c.account, c.ref),
    )
    owner: dict[str, str] = {}
    claimed_by: dict[str, list[str]] = {}
    for c in all_credits:
        chs = channels_of_credit(c, patterns)
        claimed_by[c.key] = chs
        if len(chs) == 1:
            owner[c.key] = chs[0]
    taken: dict[str, str] = {}  # credit key -> expected key
    assigned: dict[str, tuple[Credit, ...]] = {}

    def candidates(e: Expected) -> list[Credit]:
        p = policy_of(e.channel_id)
        last = grace_end(e.due_date, p)
        out = []
        for c in all_credits:
            if (
                c.key in taken
                or owner.get(c.key) != e.channel_id
                or c.currency != e.currency
                or not (e.due_date <= c.value_date <= last)
            ):
                continue
            stated = _stated_date(c, patterns[e.channel_id])
            if stated is not None and stated not in e.business_dates:
                continue
            out.append(c)
        return out

    for e in exp:  # exact amounts: one credit, or a split batch
        found = _subset(candidates(e), e.amount)
        if found:
            assigned[e.key] = found
            taken.update((c.key, e.key) for c in found)
    for e in exp:  # what is left: the credits of the earliest value date
        if e.key in assigned:
            continue
        cands = candidates(e)
        if cands:
            first = cands[0].value_date
            got = tuple(c for c in cands if c.value_date == first)
            assigned[e.key] = got
            taken.update((c.key, e.key) for c in got)
    out = [
        _expected_result(e, assigned.get(e.key, ()), policy_of(e.channel_id), as_of) for e in exp
    ]
    for c in all_credits:
        if c.key in taken:
            continue
        out.append(_unexpected_result(c, claimed_by[c.key]))
    return out


def _unexpected_result(c: Credit, chs: list[str]) -> Result:
    """A credit no expected settlement took, and why (`chs`: the channels claiming it)."""
    if not chs:
        why = "no channel's reference pattern matches the remittance text"
    elif len(chs) > 1:
        why = f"the remittance text matches several channels' patterns: {', '.join(chs)}"
    else:
        why = f"{chs[0]} owes nothing due between {c.value_date} and its grace period"
    return Result(
        item_key=c.key,
        cls="unexpected_credit",
        channel_id=chs[0] if len(chs) == 1 else "",
        currency=c.currency,
        due_date=None,
        business_dates=(),
        expected=None,
        credited=c.amount,
        refs=(f"{c.account}:{c.ref}",),
        value_dates=(c.value_date,),
        sources=(),
        detail=f"{why}: {c.remittance[:80]!r}",
    )


def _expected_result(
    e: Expected, got: tuple[Credit, ...], policy: ChannelPolicy, as_of: date
) -> Result:
    days = ", ".join(d.isoformat() for d in e.business_dates)
    credited = sum((c.amount for c in got), Decimal(0)) if got else None
    last = grace_end(e.due_date, policy)
    if not got:
        if as_of > last:
            cls, detail = "settlement_missing", f"no credit by {last} for business days {days}"
        else:
            cls, detail = "settlement_late", f"no credit yet; missing after {last} ({days})"
    else:
        arrived = max(c.value_date for c in got)
        assert credited is not None
        split = f" in {len(got)} credits" if len(got) > 1 else ""
        if credited < e.amount:
            cls, detail = "settlement_short", f"{e.amount - credited} short{split} ({days})"
        elif credited > e.amount:
            cls, detail = "settlement_over", f"{credited - e.amount} over{split} ({days})"
        elif arrived > e.due_date:
            cls, detail = "settlement_late", f"arrived {arrived}, due {e.due_date}{split} ({days})"
        else:
            cls, detail = "settled", f"business days {days}{split}"
    if "ledger" in e.sources:
        missing = [
            d.isoformat() for d, s in zip(e.business_dates, e.sources, strict=True) if s == "ledger"
        ]
        detail += f"; no statement for {', '.join(missing)}: expected from our ledger"
    return Result(
        item_key=e.key,
        cls=cls,
        channel_id=e.channel_id,
        currency=e.currency,
        due_date=e.due_date,
        business_dates=e.business_dates,
        expected=e.amount,
        credited=credited,
        refs=tuple(f"{c.account}:{c.ref}" for c in got),
        value_dates=tuple(sorted({c.value_date for c in got})),
        sources=e.sources,
        detail=detail,
    )
