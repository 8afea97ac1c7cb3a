"""End-of-day classification, the reference implementation: plain functions over plain
dataclasses, no I/O.

`recon.run` does the same comparison in ClickHouse SQL over millions of rows; this
module is what that SQL must agree with (tests/recon/test_run.py checks both on random
days) and what docs/reconciliation.md describes. Keep the two in step.

One channel C and business date D at a time:

- a *ledger item* is an order of C with business date D, type payment or refund, our
  status `success` and not reversed. Its comparable amount is what the channel moves:
  amount - coupon for a payment (S11), amount for a refund;
- the *statement* is the lines of the delivery in force of (C, D);
- a line belongs to a ledger item when it quotes the item's txn_id, else when its
  channel txn id is the item's (the smallest txn_id wins if two items share one);
- several lines of one item (a payment and its revocation, say): the first line that is
  not a plain success (a completed payment or refund) is compared, else the first
  line; the count goes into the detail;
- classes, by precedence: status_mismatch > amount_mismatch > fee_mismatch > matched
  for an item on both sides; short (ledger only) and long (a success line only) unless
  carried (S8): within the carry window of a cutoff of D and found on the neighbouring
  day's other side (or, for a ledger item, that day's statement is not loaded yet).

In: the `Day`, the channel's `LedgerOrder`s, the `StatementLine`s of D (and of D-1 and
D+1 when loaded), the channel's matching `Rules` and people's `Decisions`. Out: one
`Result` per item, its class an `EodClass` value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from tally.core.matching import (
    Decisions,
    Link,
    MatchMethod,
    Rules,
    excess_detail,
    find_links,
    line_key,
    refund_excess,
    residue,
)
from tally.core.records import ChannelStatus, OrderStatus, OrderType


class EodClass(StrEnum):
    """What the end-of-day comparison makes of an item (domain.md, "End-of-day
    classes"; docs/reconciliation.md). `CLASSES` lists them in this order; the report
    orders its columns itself (`recon/report/model.py`)."""

    MATCHED = "matched"
    STATUS_MISMATCH = "status_mismatch"
    AMOUNT_MISMATCH = "amount_mismatch"
    FEE_MISMATCH = "fee_mismatch"
    REFUND_EXCESS = "refund_excess"  # the refunds of a payment exceed it
    LONG = "long"  # the channel has a success, we have none
    SHORT = "short"  # we have a success, the statement does not
    PROPOSED = "proposed"  # a line with candidates for a person to accept
    CARRIED = "carried"  # near a cutoff, on the neighbouring day's other side (S8)


# the classes as plain strings, as results and rows carry them
CLASSES = tuple(c.value for c in EodClass)
# classes that are breaks (a suspense entry each): all but matched and carried
BREAK_CLASSES = frozenset(CLASSES) - {EodClass.MATCHED.value, EodClass.CARRIED.value}
_MATCHED, _CARRIED = EodClass.MATCHED.value, EodClass.CARRIED.value
_STATUS_MISMATCH = EodClass.STATUS_MISMATCH.value
_AMOUNT_MISMATCH = EodClass.AMOUNT_MISMATCH.value
_FEE_MISMATCH = EodClass.FEE_MISMATCH.value
_REFUND_EXCESS = EodClass.REFUND_EXCESS.value
_LONG, _SHORT, _PROPOSED = EodClass.LONG.value, EodClass.SHORT.value, EodClass.PROPOSED.value
KINDS = (OrderType.PAYMENT.value, OrderType.REFUND.value)
SUCCESS = OrderStatus.SUCCESS.value


@dataclass(frozen=True)
class LedgerOrder:
    """An order as `order_states FINAL` holds it (the columns recon reads)."""

    txn_id: str
    type: str  # payment | refund | reversal
    our_status: str  # pending | success | failed | closed ('' when our record is unseen)
    reversed: bool
    currency: str
    amount: Decimal
    coupon_amount: Decimal | None
    fee: Decimal | None
    business_date: date | None
    created_at_ms: int | None = None
    channel_txn_id: str = ""
    merchant_id: str = ""
    original_txn_id: str = ""  # a refund's payment

    def is_item_of(self, day: date) -> bool:
        return (
            self.business_date == day
            and self.type in KINDS
            and self.our_status == SUCCESS
            and not self.reversed
        )

    @property
    def comparable_amount(self) -> Decimal:
        """What the channel moves for it: a payment less the platform coupon (S11)."""
        if self.type == OrderType.PAYMENT:
            return self.amount - (self.coupon_amount or Decimal(0))
        return self.amount

    @property
    def status_text(self) -> str:
        return ChannelStatus.REVERSED.value if self.reversed else self.our_status


@dataclass(frozen=True)
class StatementLine:
    """A line of a statement version (`statement_lines`), normalised by the loader:
    kind payment | refund, status success or what the channel said otherwise."""

    line_no: int
    kind: str
    status: str
    currency: str
    amount: Decimal
    fee: Decimal | None = None
    txn_id: str = ""
    channel_txn_id: str = ""
    occurred_at_ms: int = 0
    raw: str = ""  # the line's text as the file has it (free-text references)

    @property
    def plain(self) -> bool:
        """A plain success: a payment or refund the channel completed."""
        return self.status == SUCCESS and self.kind in KINDS


@dataclass(frozen=True)
class Day:
    """What the classification needs to know about (C, D) besides the rows."""

    day: date
    start_cutoff_ms: int  # the cutoff between D-1 and D
    end_cutoff_ms: int  # the cutoff between D and D+1
    carry_ms: int  # the channel's carry window, in ms

    @property
    def prev(self) -> date:
        return self.day - timedelta(days=1)

    @property
    def next(self) -> date:
        return self.day + timedelta(days=1)

    def near_end(self, at_ms: int | None) -> bool:
        return at_ms is not None and abs(at_ms - self.end_cutoff_ms) <= self.carry_ms

    def near_start(self, at_ms: int | None) -> bool:
        return at_ms is not None and abs(at_ms - self.start_cutoff_ms) <= self.carry_ms


@dataclass(frozen=True)
class Result:
    item_key: str
    cls: str
    txn_id: str
    channel_txn_id: str
    merchant_id: str
    kind: str
    currency: str
    ledger_amount: Decimal | None
    statement_amount: Decimal | None
    ledger_fee: Decimal | None
    statement_fee: Decimal | None
    ledger_status: str
    statement_status: str
    statement_line: int  # 0: none
    detail: str
    # matched within tolerance: statement - ours (amount), |statement| - |ours| (fee)
    amount_difference: Decimal = Decimal(0)
    fee_difference: Decimal = Decimal(0)
    match_method: str = ""  # id | reference | combined | scored | accepted | ''
    score: int = 0  # scored / proposed: the (best) candidate's score

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> Result:
        """A `recon_results` row (as the backends return it) as a Result."""
        return cls(
            item_key=r["item_key"],
            cls=r["class"],
            txn_id=r["txn_id"],
            channel_txn_id=r["channel_txn_id"],
            merchant_id=r["merchant_id"],
            kind=r["kind"],
            currency=r["currency"],
            ledger_amount=r["ledger_amount"],
            statement_amount=r["statement_amount"],
            ledger_fee=r["ledger_fee"],
            statement_fee=r["statement_fee"],
            ledger_status=r["ledger_status"],
            statement_status=r["statement_status"],
            statement_line=int(r["statement_line"]),
            detail=r["detail"],
            amount_difference=Decimal(r.get("amount_difference", 0)),
            fee_difference=Decimal(r.get("fee_difference", 0)),
            match_method=r.get("match_method", ""),
            score=int(r.get("score", 0)),
        )


# The detail texts (the SQL builds the very same strings).


def carried_ledger_detail(neighbour: date, loaded: bool) -> str:
    if loaded:
        return f"near the cutoff; on the {neighbour.isoformat()} statement"
    return f"near the cutoff; the {neighbour.isoformat()} statement is not loaded yet"


def carried_statement_detail(neighbour: date) -> str:
    return f"near the cutoff; our order is on {neighbour.isoformat()}"


def _lines_note(n: int) -> str:
    return f" ({n} lines)" if n > 1 else ""


def _found_in(item: LedgerOrder, lines: Sequence[StatementLine] | None) -> bool:
    if lines is None:
        return True  # not loaded yet: carried until it is
    for ln in lines:
        if not ln.plain:
            continue
        if ln.txn_id and ln.txn_id == item.txn_id:
            return True
        if item.channel_txn_id and ln.channel_txn_id == item.channel_txn_id:
            return True
    return False


def _quoted_by(line: StatementLine, items: Iterable[LedgerOrder]) -> bool:
    for it in items:
        if line.txn_id and line.txn_id == it.txn_id:
            return True
        if line.channel_txn_id and line.channel_txn_id == it.channel_txn_id:
            return True
    return False


def classify(
    d: Day,
    orders: Iterable[LedgerOrder],
    statement: Sequence[StatementLine],
    prev_statement: Sequence[StatementLine] | None = None,
    next_statement: Sequence[StatementLine] | None = None,
    rules: Rules | None = None,
    decisions: Decisions | None = None,
) -> list[Result]:
    """Classify every item of (C, D), sorted by item key.

    `orders`: the channel's orders (any date and status; the items of D and of its
    neighbours are picked here, the others explain a `long` or are a refund's
    payment). `prev_statement` / `next_statement`: the lines in force for D-1 / D+1,
    None when not loaded. `rules`: the channel's matching rules (default: exact);
    `decisions`: what people accepted or rejected of proposed lines."""
    rules = rules or Rules()
    orders = list(orders)
    items = {o.txn_id: o for o in orders if o.is_item_of(d.day)}
    known = {o.txn_id: o for o in orders}
    prev_items = [o for o in orders if o.is_item_of(d.prev)]
    next_items = [o for o in orders if o.is_item_of(d.next)]
    links: dict[int, Link] = {}
    if rules.searching:
        links = find_links(*residue(items, statement), rules, decisions)
    groups, how = _group_lines(statement, items, links)

    out: list[Result] = []
    for key in sorted(set(items) | set(groups)):
        item = items.get(key)
        lines = sorted(groups.get(key, []), key=lambda x: (x.plain, x.line_no))
        first: StatementLine | None = lines[0] if lines else None
        n = len(lines)
        if item is not None and first is not None:
            method = how[(key, first.line_no)]
            out.append(_both_sides(d, key, item, first, n, method, links, rules, known))
        elif item is not None:
            out.append(_ledger_only(d, key, item, prev_statement, next_statement))
        else:
            assert first is not None
            if not first.plain:
                continue  # no money moved (or it was reversed), for an order we do not count
            link = links.get(first.line_no)
            out.append(_statement_only(d, key, first, n, link, known, prev_items, next_items))
    return out


def _group_lines(
    statement: Sequence[StatementLine], items: Mapping[str, LedgerOrder], links: Mapping[int, Link]
) -> tuple[dict[str, list[StatementLine]], dict[tuple[str, int], str]]:
    """The lines by item key, and how each line was resolved: (key, line_no) -> the
    match method ('' for a line that belongs to no item)."""
    by_ctid: dict[str, str] = {}
    for o in sorted(items.values(), key=lambda o: o.txn_id):
        if o.channel_txn_id and o.channel_txn_id not in by_ctid:
            by_ctid[o.channel_txn_id] = o.txn_id
    groups: dict[str, list[StatementLine]] = {}
    how: dict[tuple[str, int], str] = {}
    for ln in statement:
        link = links.get(ln.line_no)
        if link is not None and link.members:
            keys, method = list(link.members), link.method
        elif ln.txn_id and ln.txn_id in items:
            keys, method = [ln.txn_id], MatchMethod.ID.value
        elif ln.channel_txn_id and ln.channel_txn_id in by_ctid:
            keys, method = [by_ctid[ln.channel_txn_id]], MatchMethod.REFERENCE.value
        else:
            keys, method = [line_key(ln)], ""
        for key in keys:
            groups.setdefault(key, []).append(ln)
            how[(key, ln.line_no)] = method
    return groups, how


def _both_sides(
    d: Day,
    key: str,
    item: LedgerOrder,
    first: StatementLine,
    n: int,
    method: str,
    links: Mapping[int, Link],
    rules: Rules,
    known: Mapping[str, LedgerOrder],
) -> Result:
    """An item on both sides: status_mismatch > amount_mismatch > refund_excess >
    fee_mismatch > matched, comparing the item with its first line."""
    link = links.get(first.line_no)
    combined = link is not None and method == MatchMethod.COMBINED
    lead = not combined or (link is not None and link.members[0] == key)
    amt = link.group_amount if combined and link else item.comparable_amount
    our_fee = link.group_fee if combined and link else (item.fee or Decimal(0))
    adiff = fdiff = Decimal(0)
    excess = refund_excess(item, known, d.day)
    if first.status != SUCCESS or first.kind != item.type:
        cls = _STATUS_MISMATCH
        detail = f"statement: {first.kind} {first.status}; ours: {item.type} success"
    elif first.currency != item.currency or not rules.amount_ok(amt, first.amount):
        cls, detail = _AMOUNT_MISMATCH, "amount or currency differs"
    elif excess is not None:
        cls, detail = _REFUND_EXCESS, excess_detail(item.original_txn_id)
        adiff = first.amount - amt
    elif first.fee is not None and not rules.fee_ok(our_fee, first.fee):
        # refund lines state the fee given back as negative (WeChat, Alipay)
        cls, detail = _FEE_MISMATCH, "fee differs"
        adiff = first.amount - amt
    else:
        cls, detail = _MATCHED, ""
        adiff = first.amount - amt
        if first.fee is not None:
            fdiff = abs(first.fee) - abs(our_fee)
    if link is not None and method in (MatchMethod.COMBINED, MatchMethod.ACCEPTED):
        detail = (detail + "; " if detail else "") + link.detail
    r = _result(key, cls, detail + _lines_note(n), item, first)
    return _with_match(
        r,
        adiff if lead else Decimal(0),
        fdiff if lead else Decimal(0),
        method,
        link.score
        if link is not None and method in (MatchMethod.SCORED, MatchMethod.ACCEPTED)
        else 0,
    )


def _ledger_only(
    d: Day,
    key: str,
    item: LedgerOrder,
    prev_statement: Sequence[StatementLine] | None,
    next_statement: Sequence[StatementLine] | None,
) -> Result:
    """An item no line resolves to: short, unless carried (S8)."""
    detail = ""
    if d.near_end(item.created_at_ms) and _found_in(item, next_statement):
        detail = carried_ledger_detail(d.next, next_statement is not None)
    elif d.near_start(item.created_at_ms) and _found_in(item, prev_statement):
        detail = carried_ledger_detail(d.prev, prev_statement is not None)
    if detail:
        return _result(key, _CARRIED, detail, item, None)
    return _result(key, _SHORT, "not on the statement", item, None)


def _statement_only(
    d: Day,
    key: str,
    first: StatementLine,
    n: int,
    link: Link | None,
    known: Mapping[str, LedgerOrder],
    prev_items: Iterable[LedgerOrder],
    next_items: Iterable[LedgerOrder],
) -> Result:
    """A plain success line no item of the day claims: long, unless carried (S8) or
    proposed (a candidate for a person to accept)."""
    sc = 0
    if d.near_end(first.occurred_at_ms) and _quoted_by(first, next_items):
        cls, detail = _CARRIED, carried_statement_detail(d.next)
    elif d.near_start(first.occurred_at_ms) and _quoted_by(first, prev_items):
        cls, detail = _CARRIED, carried_statement_detail(d.prev)
    elif link is not None and link.method == MatchMethod.PROPOSED:
        cls, detail, sc = _PROPOSED, link.detail, link.score
    else:
        cls, detail = _LONG, "no success on our side"
        ours = known.get(key)
        if ours is not None and ours.status_text:
            detail += f" (ours: {ours.status_text})"
    ours = known.get(key)
    return Result(
        item_key=key,
        cls=cls,
        txn_id=first.txn_id,
        channel_txn_id=first.channel_txn_id,
        merchant_id=ours.merchant_id if ours is not None else "",
        kind=first.kind,
        currency=first.currency,
        ledger_amount=None,
        statement_amount=first.amount,
        ledger_fee=None,
        statement_fee=first.fee,
        ledger_status=ours.status_text if ours is not None else "",
        statement_status=first.status,
        statement_line=first.line_no,
        detail=detail + _lines_note(n),
        score=sc,
    )


def _with_match(r: Result, adiff: Decimal, fdiff: Decimal, method: str, sc: int) -> Result:
    return replace(r, amount_difference=adiff, fee_difference=fdiff, match_method=method, score=sc)


def _result(key: str, cls: str, detail: str, item: LedgerOrder, ln: StatementLine | None) -> Result:
    return Result(
        item_key=key,
        cls=cls,
        txn_id=item.txn_id,
        channel_txn_id=item.channel_txn_id or (ln.channel_txn_id if ln else ""),
        merchant_id=item.merchant_id,
        kind=item.type,
        currency=item.currency,
        ledger_amount=item.comparable_amount,
        statement_amount=ln.amount if ln else None,
        ledger_fee=item.fee,
        statement_fee=ln.fee if ln else None,
        ledger_status=SUCCESS,
        statement_status=ln.status if ln else "",
        statement_line=ln.line_no if ln else 0,
        detail=detail,
    )


def at_risk(r: Result) -> Decimal:
    """The amount a break puts at risk: the difference for an amount mismatch (the
    whole amount when only the currency differs), the fee difference for a fee
    mismatch, else the item's amount (ours, or the statement's for a long)."""
    la, sa = r.ledger_amount, r.statement_amount
    if r.cls == EodClass.FEE_MISMATCH:
        return abs((r.ledger_fee or Decimal(0)) - (r.statement_fee or Decimal(0)))
    if r.cls == EodClass.AMOUNT_MISMATCH and la is not None and sa is not None and la != sa:
        return abs(la - sa)
    if la is not None:
        return la
    return sa or Decimal(0)
