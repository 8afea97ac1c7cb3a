"""What a reconciliation run is: its rows' columns, its outcome, its errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from tally.core.eod import CLASSES, Day
from tally.core.policy import ChannelPolicy

RUN_COLUMNS = (
    "run_id",
    "channel_id",
    "business_date",
    "statement_delivery",
    "statement_checksum",
    "ledger_items",
    "statement_items",
    "counts",
    "started_at_ms",
    "finished_at_ms",
)
RESULT_COLUMNS = (
    "run_id",
    "channel_id",
    "business_date",
    "item_key",
    "class",
    "txn_id",
    "channel_txn_id",
    "merchant_id",
    "kind",
    "currency",
    "ledger_amount",
    "statement_amount",
    "ledger_fee",
    "statement_fee",
    "ledger_status",
    "statement_status",
    "statement_line",
    "detail",
    "amount_difference",
    "fee_difference",
    "match_method",
    "score",
)


class ReconError(RuntimeError):
    """A run that cannot be made (no statement, unknown run, ...)."""


def day_of(policy: ChannelPolicy, day: date) -> Day:
    return Day(
        day=day,
        start_cutoff_ms=policy.cutoff_ms(day - timedelta(days=1)),
        end_cutoff_ms=policy.cutoff_ms(day),
        carry_ms=policy.carry_window_seconds * 1000,
    )


@dataclass
class Change:
    item_key: str
    old: str  # '' when the item was not in the previous run
    new: str  # '' when it is not in this run
    currency: str
    old_amount: Decimal | None
    new_amount: Decimal | None
    old_statement_amount: Decimal | None
    new_statement_amount: Decimal | None

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in self.__dict__.items()}


@dataclass
class RunOutcome:
    run_id: str
    channel_id: str
    business_date: date
    delivery: int
    checksum: str
    ledger_items: int
    statement_items: int
    # class -> currency -> (count, amount)
    summary: dict[str, dict[str, tuple[int, Decimal]]]
    previous_run: str | None
    changes: list[Change]
    seconds: float
    neighbours: dict[str, int | None] = field(default_factory=dict)
    suspense: dict[str, int] = field(default_factory=dict)
    posted_to: date | None = None
    # currency -> (items, amount differences, fee differences) matched within tolerance
    tolerated: dict[str, tuple[int, Decimal, Decimal]] = field(default_factory=dict)
    dry_run: bool = False

    def counts(self) -> dict[str, int]:
        return {c: sum(n for n, _ in self.summary.get(c, {}).values()) for c in CLASSES}

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "channel_id": self.channel_id,
            "business_date": self.business_date.isoformat(),
            "statement_delivery": self.delivery,
            "statement_checksum": self.checksum,
            "neighbour_deliveries": self.neighbours,
            "ledger_items": self.ledger_items,
            "statement_items": self.statement_items,
            "counts": self.counts(),
            "amounts": {
                c: {cur: str(a) for cur, (_, a) in sorted(by.items())}
                for c, by in self.summary.items()
            },
            "previous_run": self.previous_run,
            "changes": [c.to_json() for c in self.changes],
            "suspense": self.suspense,
            "suspense_posted_to": self.posted_to.isoformat() if self.posted_to else None,
            "tolerated": {
                cur: {"items": n, "amount_difference": str(a), "fee_difference": str(f)}
                for cur, (n, a, f) in sorted(self.tolerated.items())
            },
            "dry_run": self.dry_run,
            "seconds": round(self.seconds, 3),
        }
