"""Matching beyond exact ids, the pure part: tolerances, combined payments, scored
candidates for lines whose reference the statement mangled. Plain functions over the
dataclasses of `tally.core.eod`; no I/O.

Both reconciliation paths use this module: `tally.core.eod.classify` (the reference)
and `recon.run` (ClickHouse). `find_links` decides which statement lines that quote no
usable id belong to which of our orders; the run passes its decisions to the SQL as
*links*, the reference classifier applies them itself. docs/reconciliation.md,
"Matching rules", describes the rules and the scoring formula.

In: the lines no id resolves, the items no line resolves to, the shared channel txn ids
(`residue`), the channel's `Rules` and people's `Decisions`. Out: a `Link` per line it
could place, with its `MatchMethod` value (or proposed, with candidates).
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from tally.core.records import OrderStatus, OrderType

if TYPE_CHECKING:
    from tally.core.eod import LedgerOrder, StatementLine

CENT = Decimal("0.01")


class MatchMethod(StrEnum):
    """How a line was matched to an order (recon_results.match_method), or that it
    was only proposed."""

    ID = "id"  # the line quotes the order's txn id
    REFERENCE = "reference"  # its channel txn id, or an id found in its free text
    COMBINED = "combined"  # one line over several orders sharing a channel txn id
    SCORED = "scored"  # the clear best candidate by score
    ACCEPTED = "accepted"  # a person accepted a proposed candidate
    PROPOSED = "proposed"  # no match: candidates for a person to review


# methods a line is matched by (recon_results.match_method)
METHODS = tuple(m.value for m in MatchMethod if m is not MatchMethod.PROPOSED)
_REFERENCE, _COMBINED = MatchMethod.REFERENCE.value, MatchMethod.COMBINED.value
_SCORED, _ACCEPTED = MatchMethod.SCORED.value, MatchMethod.ACCEPTED.value
_PROPOSED = MatchMethod.PROPOSED.value
# score parts (docs/reconciliation.md)
AMOUNT_EXACT, AMOUNT_TOLERATED, TIME_MAX, REFERENCE = 40, 30, 20, 40
MIN_REF = 8  # a reference token shorter than this proves nothing
PROPOSED_SHOWN = 3  # candidates kept on a proposed line


@dataclass(frozen=True)
class Rules:
    """A channel's matching rules; the defaults are exact matching."""

    amount_tol: Decimal = Decimal(0)  # major units
    amount_bps: int = 0
    fee_tol: Decimal = Decimal(0)  # major units
    window_ms: int = 0  # 0: no scored matching
    threshold: int = 90
    combined: bool = False

    @classmethod
    def of(cls, policy: Any) -> Rules:
        """From a `tally.core.policy.ChannelPolicy` (minor units are hundredths)."""
        return cls(
            amount_tol=Decimal(policy.amount_tolerance_minor) * CENT,
            amount_bps=int(policy.amount_tolerance_bps),
            fee_tol=Decimal(policy.fee_tolerance_minor) * CENT,
            window_ms=int(policy.match_window_seconds) * 1000,
            threshold=int(policy.match_threshold),
            combined=bool(policy.combined_payments),
        )

    @property
    def searching(self) -> bool:
        """Does a run need to look for links (combined groups, scored candidates)?"""
        return self.combined or self.window_ms > 0

    def amount_ok(self, ours: Decimal, theirs: Decimal) -> bool:
        """Within the amount tolerance: |theirs - ours| <= the absolute tolerance, or
        <= amount_bps basis points of our amount (whichever is larger)."""
        diff = abs(theirs - ours)
        return diff <= self.amount_tol or diff * 10000 <= abs(ours) * self.amount_bps

    def fee_ok(self, ours: Decimal, theirs: Decimal) -> bool:
        """Fees compared without sign (a refund line states the fee given back as
        negative), within the fee tolerance."""
        return abs(abs(theirs) - abs(ours)) <= self.fee_tol


@dataclass(frozen=True)
class Candidate:
    txn_id: str
    score: int


@dataclass(frozen=True)
class Link:
    """What a line that quotes no usable id turned out to be.

    method: combined (members: the group), reference (an id found in the line's free
    text), scored, accepted (a person accepted it), proposed (members empty; the
    best candidates for review)."""

    line_no: int
    method: str
    members: tuple[str, ...] = ()
    score: int = 0
    candidates: tuple[Candidate, ...] = ()
    group_amount: Decimal = Decimal(0)  # combined: the members' amounts summed
    group_fee: Decimal = Decimal(0)  # combined: the members' fees summed (no sign)

    @property
    def detail(self) -> str:
        if self.method == MatchMethod.COMBINED:
            return "combined line: " + " + ".join(self.members)
        if self.method == MatchMethod.PROPOSED:
            return "proposed: " + ", ".join(f"{c.txn_id} ({c.score})" for c in self.candidates)
        if self.method == MatchMethod.ACCEPTED:
            return "accepted by a person"
        return ""


@dataclass(frozen=True)
class Group:
    """Orders of the day that share one channel txn id, and the lines that carry it
    without naming one of our orders."""

    channel_txn_id: str
    members: tuple[LedgerOrder, ...]
    lines: tuple[StatementLine, ...]
    quoted: bool  # a line of the day quotes a member's txn_id


@dataclass(frozen=True)
class Decision:
    """A person's answer to a proposed line (`tally recon accept|reject`)."""

    item_key: str
    action: str  # accept | reject
    txn_id: str


@dataclass
class Decisions:
    accepted: dict[str, str] = field(default_factory=dict)  # item key -> txn_id
    rejected: set[tuple[str, str]] = field(default_factory=set)  # (item key, txn_id)

    @classmethod
    def of(cls, rows: Iterable[Decision]) -> Decisions:
        """Decisions in the order they were made; a later one about the same line and
        candidate wins (an accept after a reject, or the reverse)."""
        out = cls()
        for d in rows:
            if d.action == "accept":
                out.accepted[d.item_key] = d.txn_id
                out.rejected.discard((d.item_key, d.txn_id))
            else:
                out.rejected.add((d.item_key, d.txn_id))
                if out.accepted.get(d.item_key) == d.txn_id:
                    del out.accepted[d.item_key]
        return out


def line_key(ln: StatementLine) -> str:
    """The item key of a line that belongs to no order (recon_results.item_key)."""
    return ln.txn_id or ln.channel_txn_id or f"line:{ln.line_no}"


_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def tokens(ln: StatementLine) -> list[str]:
    """The references a line offers: its txn id, its channel txn id, and every word of
    its free text (MT940 :86:, camt.053 AddtlTxInf, remarks) - longest first."""
    out = {t for t in (ln.txn_id, ln.channel_txn_id) if t and t.upper() != "NONREF"}
    out.update(t for t in _TOKEN.findall(ln.raw) if t.upper() != "NONREF")
    return sorted(out, key=lambda t: (-len(t), t))


def reference_hit(toks: Sequence[str], item: LedgerOrder) -> bool:
    """A token of at least MIN_REF characters that begins our txn id or channel txn id
    (a reference cut at 16 characters), or is it."""
    for t in toks:
        if len(t) < MIN_REF:
            break
        if item.txn_id.startswith(t) or (item.channel_txn_id and item.channel_txn_id.startswith(t)):
            return True
    return False


def score(ln: StatementLine, item: LedgerOrder, rules: Rules, toks: Sequence[str]) -> int | None:
    """0-100, or None when the order cannot be the line's (currency, kind, amount
    beyond tolerance, or booked outside the time window):

    amount 40 (equal) or 30 (within tolerance) + time 20 x (1 - |dt| / window),
    rounded down + reference 40 (a reference of the line begins our id)."""
    if ln.currency != item.currency or ln.kind != item.type:
        return None
    ours = item.comparable_amount
    if not rules.amount_ok(ours, ln.amount):
        return None
    dt = abs(ln.occurred_at_ms - (item.created_at_ms or 0))
    if item.created_at_ms is None or dt > rules.window_ms:
        return None
    s = AMOUNT_EXACT if ln.amount == ours else AMOUNT_TOLERATED
    s += TIME_MAX * (rules.window_ms - dt) // rules.window_ms
    if reference_hit(toks, item):
        s += REFERENCE
    return s


def residue(
    items: Mapping[str, LedgerOrder], statement: Sequence[StatementLine]
) -> tuple[list[StatementLine], list[LedgerOrder], list[Group]]:
    """What `find_links` looks at: the plain success lines no id
    resolves, the items no line resolves to, the shared channel txn ids."""
    by_ctid: dict[str, list[LedgerOrder]] = {}
    for o in sorted(items.values(), key=lambda o: o.txn_id):
        if o.channel_txn_id:
            by_ctid.setdefault(o.channel_txn_id, []).append(o)
    resolved: set[str] = set()
    free_lines = []
    carrying: dict[str, list[StatementLine]] = {}
    quoted: set[str] = set()
    for ln in statement:
        if ln.txn_id:
            quoted.add(ln.txn_id)
        if ln.txn_id and ln.txn_id in items:
            resolved.add(ln.txn_id)
        elif ln.channel_txn_id and ln.channel_txn_id in by_ctid:
            resolved.add(by_ctid[ln.channel_txn_id][0].txn_id)
            carrying.setdefault(ln.channel_txn_id, []).append(ln)
        elif ln.plain:
            free_lines.append(ln)
    free_items = [o for k, o in sorted(items.items()) if k not in resolved]
    groups = [
        Group(c, tuple(ms), tuple(carrying.get(c, ())), any(m.txn_id in quoted for m in ms))
        for c, ms in sorted(by_ctid.items())
        if len(ms) > 1
    ]
    return free_lines, free_items, groups


def find_links(
    free_lines: Iterable[StatementLine],
    free_items: Iterable[LedgerOrder],
    groups: Iterable[Group],
    rules: Rules,
    decisions: Decisions | None = None,
) -> dict[int, Link]:
    """Links for the lines of a day that no id resolves, by line number.

    free_lines: plain success lines whose txn id is not an item of the day and whose
    channel txn id is no item's; free_items: items of the day no line resolves to;
    groups: the day's shared channel txn ids (only used with rules.combined).

    In this order: combined groups; lines a person accepted; ids found in a line's
    free text; scored candidates, the best first (a tie, or a best below the
    threshold, leaves the line proposed). An order is linked to one line at most."""
    decisions = decisions or Decisions()
    out: dict[int, Link] = {}
    items = {o.txn_id: o for o in free_items}
    taken: set[str] = set()

    if rules.combined:
        for g in sorted(groups, key=lambda g: g.channel_txn_id):
            link = _combined(g, rules)
            if link is not None:
                out[link.line_no] = link
                taken.update(link.members)

    lines = sorted(free_lines, key=lambda x: x.line_no)
    if rules.window_ms <= 0:
        return out
    pending = _named_links(lines, items, taken, decisions, out)
    _scored_links(pending, items, taken, rules, decisions, out)
    return out


def _named_links(
    lines: Iterable[StatementLine],
    items: Mapping[str, LedgerOrder],
    taken: set[str],
    decisions: Decisions,
    out: dict[int, Link],
) -> list[tuple[StatementLine, list[str]]]:
    """Links for the lines a person accepted, then for the lines whose free text names
    one of the orders; the other lines with their tokens, for scoring."""
    pending: list[tuple[StatementLine, list[str]]] = []
    for ln in lines:
        want = decisions.accepted.get(line_key(ln))
        if want is not None and want in items and want not in taken:
            out[ln.line_no] = Link(ln.line_no, _ACCEPTED, (want,), 100)
            taken.add(want)
            continue
        toks = tokens(ln)
        exact = [t for t in toks if t in items and t not in taken]
        if exact:
            out[ln.line_no] = Link(ln.line_no, _REFERENCE, (exact[0],), 100)
            taken.add(exact[0])
            continue
        pending.append((ln, toks))
    return pending


def _scored_links(
    pending: Iterable[tuple[StatementLine, list[str]]],
    items: Mapping[str, LedgerOrder],
    taken: set[str],
    rules: Rules,
    decisions: Decisions,
    out: dict[int, Link],
) -> None:
    """Scored candidates, the best first: a clear best at or above the threshold is
    linked, otherwise the line is proposed with its best candidates."""
    # candidates by (currency, kind), in time order: a line looks at the window only
    index: dict[tuple[str, str], tuple[list[int], list[LedgerOrder]]] = {}
    for o in sorted(items.values(), key=lambda o: (o.created_at_ms or 0, o.txn_id)):
        if o.created_at_ms is None:
            continue
        at, os_ = index.setdefault((o.currency, o.type), ([], []))
        at.append(o.created_at_ms)
        os_.append(o)
    scored: list[tuple[StatementLine, list[Candidate]]] = []
    for ln, toks in pending:
        key = line_key(ln)
        cands = []
        at, os_ = index.get((ln.currency, ln.kind), ([], []))
        lo = bisect_left(at, ln.occurred_at_ms - rules.window_ms)
        hi = bisect_right(at, ln.occurred_at_ms + rules.window_ms)
        for it in os_[lo:hi]:
            if (key, it.txn_id) in decisions.rejected:
                continue
            s = score(ln, it, rules, toks)
            if s is not None:
                cands.append(Candidate(it.txn_id, s))
        if cands:
            cands.sort(key=lambda c: (-c.score, c.txn_id))
            scored.append((ln, cands))
    scored.sort(key=lambda x: (-x[1][0].score, x[0].line_no))
    for ln, cands in scored:
        free = [c for c in cands if c.txn_id not in taken]
        best = free[0] if free else None
        tie = len(free) > 1 and free[1].score == free[0].score
        if best is not None and best.score >= rules.threshold and not tie:
            out[ln.line_no] = Link(ln.line_no, _SCORED, (best.txn_id,), best.score)
            taken.add(best.txn_id)
        else:
            shown = tuple((free or cands)[:PROPOSED_SHOWN])
            out[ln.line_no] = Link(ln.line_no, _PROPOSED, (), shown[0].score, shown)


def _combined(g: Group, rules: Rules) -> Link | None:
    """One line over several orders: exactly one line carries the shared channel txn
    id, no line quotes a member, all are payments in the line's currency, and the line
    amount is the members' sum within tolerance."""
    if len(g.members) < 2 or len(g.lines) != 1 or g.quoted:
        return None
    ln = g.lines[0]
    if not ln.plain or ln.kind != OrderType.PAYMENT:
        return None
    if any(m.type != OrderType.PAYMENT or m.currency != ln.currency for m in g.members):
        return None
    total = sum((m.comparable_amount for m in g.members), Decimal(0))
    if not rules.amount_ok(total, ln.amount):
        return None
    fee = sum((abs(m.fee or Decimal(0)) for m in g.members), Decimal(0))
    members = tuple(sorted(m.txn_id for m in g.members))
    return Link(ln.line_no, _COMBINED, members, 100, group_amount=total, group_fee=fee)


def refund_excess(
    item: LedgerOrder, orders: Mapping[str, LedgerOrder], day: Any
) -> tuple[Decimal, Decimal] | None:
    """(refunded so far, payment amount) when the refunds of a refund item's original
    payment, counted up to `day` (our successful, not reversed refunds of the same
    original), exceed the payment; None otherwise."""
    orig = orders.get(item.original_txn_id) if item.original_txn_id else None
    if item.type != OrderType.REFUND or orig is None or orig.type != OrderType.PAYMENT:
        return None
    total = sum(
        (
            o.amount
            for o in orders.values()
            if o.type == OrderType.REFUND
            and o.original_txn_id == item.original_txn_id
            and o.our_status == OrderStatus.SUCCESS
            and not o.reversed
            and o.business_date is not None
            and o.business_date <= day
        ),
        Decimal(0),
    )
    return (total, orig.amount) if total > orig.amount else None


def excess_detail(original: str) -> str:
    return f"refunds of {original} exceed the payment"
