"""What a channel statement says, format-independent: pure dataclasses, no I/O.

A statement file (对账单) is parsed into a `Statement`: one `StatementLine` per item
the channel processed, plus what the file declares about itself (its business
date, the totals of its footer). The format modules (`wechat`, `alipay`,
`swift_mt940`, `camt053`, `generic_csv`) turn bytes into these and back; `load`
validates them and stores them in ClickHouse (`statement_versions`,
`statement_lines`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date
from decimal import Decimal
from typing import Any

KINDS = ("payment", "refund", "reversal")
# success: an ordinary completed item; refunded / reversed / failed / closed where the
# file says so; pending: a refund the channel has accepted but not finished (WeChat
# 退款状态 PROCESSING, camt.053 Sts PDNG).
STATUSES = ("success", "refunded", "reversed", "failed", "closed", "pending")


@dataclass(frozen=True, slots=True)
class StatementLine:
    """One item of a statement.

    amount: what moved through the channel, positive: for a payment the amount
    collected (order amount less a platform coupon), for a refund the amount paid
    back, for a reversal the amount reversed. fee: the channel's fee for the item as
    the file states it (positive: charged; a refund line may state the fee returned
    as a negative number); None when the format states no per-item fee.
    """

    line_no: int  # 1-based line of the file where the item starts
    txn_id: str  # our order id as the statement quotes it, "" when it does not
    channel_txn_id: str
    original_txn_id: str  # refunds and reversals: our original order id, else ""
    kind: str  # payment | refund | reversal
    status: str  # see STATUSES
    currency: str  # ISO 4217
    amount: Decimal
    fee: Decimal | None
    coupon_amount: Decimal | None
    merchant_ref: str  # the channel's merchant / store reference, "" when none
    occurred_at_ms: int  # epoch ms, UTC
    raw: str = ""  # the original text of the item

    def essence(self) -> StatementLine:
        """The line without where and how it was written (line number, raw text):
        what a round trip through a writer and its parser must preserve."""
        return replace(self, line_no=0, raw="")


@dataclass(frozen=True, slots=True)
class Totals:
    """What a footer / summary declares, in the file's own terms.

    count: number of detail items; amount: sum of `amount` over the items as the
    format defines it (see each format); fee: sum of fees. `items` keeps every
    declared figure by its name in the file, for messages and docs.
    """

    count: int | None = None
    amount: Decimal | None = None
    fee: Decimal | None = None
    items: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class Statement:
    channel_id: str
    business_date: date | None  # as the file declares it (None: derived at load)
    format: str  # wechat | alipay | mt940 | camt053 | csv
    lines: list[StatementLine]
    declared: Totals | None = None
    checksum: str = ""  # sha256 of the file's bytes, hex
    file_name: str = ""
    # format details a writer needs to reproduce a file (account, merchant number,
    # opening balance, camt version, ...); see each format
    meta: dict[str, str] = field(default_factory=dict)

    def essence(self) -> tuple[Any, ...]:
        return (
            self.channel_id,
            self.business_date,
            self.format,
            [line.essence() for line in self.lines],
        )


class StatementError(ValueError):
    """A statement file that cannot be accepted, with where and why.

    Renders like: `wechat-2026-11-24.csv line 17, field 手续费 (fee): 'abc' is not an
    amount`.
    """

    def __init__(
        self,
        message: str,
        *,
        file_name: str = "",
        line_no: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file_name = file_name
        self.line_no = line_no
        self.field = field
        super().__init__(self.render())

    def render(self) -> str:
        where = self.file_name or "statement"
        if self.line_no is not None:
            where += f" line {self.line_no}"
        if self.field:
            where += f", field {self.field}"
        return f"{where}: {self.message}"

    def __str__(self) -> str:
        return self.render()
