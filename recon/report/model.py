"""What the report shows: the classes and age buckets, and the data read for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from recon.settle import Settlement
from tally.core.eod import BREAK_CLASSES, EodClass

# the classes of the results tables, in the report's order (tally.core.eod.EodClass;
# refund_excess and proposed are not columns: proposed lines have their own section)
CLASSES = tuple(
    c.value
    for c in (
        EodClass.MATCHED,
        EodClass.CARRIED,
        EodClass.SHORT,
        EodClass.LONG,
        EodClass.AMOUNT_MISMATCH,
        EodClass.FEE_MISMATCH,
        EodClass.STATUS_MISMATCH,
    )
)
BREAKS = tuple(c for c in CLASSES if c in BREAK_CLASSES)
AGING_BUCKETS = ("<1d", "1–3d", "3–7d", ">7d")
_DAY_MS = 86_400_000
SHOWN = 10  # tolerated items and proposed lines shown in full; the rest counted


def aging_bucket(age_ms: int) -> str:
    """<1d: under 24 h; 1–3d: 24 h up to 72 h; 3–7d: up to 168 h; >7d: beyond."""
    if age_ms < _DAY_MS:
        return AGING_BUCKETS[0]
    if age_ms < 3 * _DAY_MS:
        return AGING_BUCKETS[1]
    if age_ms < 7 * _DAY_MS:
        return AGING_BUCKETS[2]
    return AGING_BUCKETS[3]


# class -> currency -> (items, amount)
Summary = dict[str, dict[str, tuple[int, Decimal]]]
# currency -> (items matched with a difference, amount differences, fee differences)
Tolerated = dict[str, tuple[int, Decimal, Decimal]]


@dataclass(frozen=True)
class Candidate:
    txn_id: str
    score: int
    amount: Decimal | None  # what the channel should show for it (payment: less coupon)
    created_at_ms: int | None


@dataclass(frozen=True)
class ProposedLine:
    channel_id: str
    item_key: str
    line_no: int | None
    reference: str  # the id the line quotes, as it quotes it
    occurred_at_ms: int | None
    currency: str
    amount: Decimal | None
    candidates: tuple[Candidate, ...]  # best first


@dataclass
class ReportData:
    day: date
    as_of_ms: int
    channels: list[str]
    runs: dict[str, dict[str, Any]]  # channel -> run_id, delivery, when
    by_class: dict[str, Summary]  # channel -> summary
    aging: dict[str, dict[str, tuple[int, Decimal]]]  # bucket -> currency -> (n, amount)
    open_entries: int
    settlement: Settlement
    arrivals: list[dict[str, Any]]
    missing_statements: list[str] = field(default_factory=list)
    not_reconciled: list[str] = field(default_factory=list)
    tolerated: dict[str, Tolerated] = field(default_factory=dict)  # channel -> ...
    tolerated_items: list[dict[str, Any]] = field(default_factory=list)  # largest first
    proposed: list[ProposedLine] = field(default_factory=list)  # at most SHOWN
    proposed_count: int = 0
    funds_run: dict[str, Any] = field(default_factory=dict)  # run_id, run_date
    funds: list[dict[str, Any]] = field(default_factory=list)  # settlement results
    payouts_run: str = ""
    payouts: list[dict[str, Any]] = field(default_factory=list)  # merchant payout results

    @property
    def result_count(self) -> int:
        return sum(n for s in self.by_class.values() for by in s.values() for n, _ in by.values())
