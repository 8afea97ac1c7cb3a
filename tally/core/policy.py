"""Per-channel policy: how far to trust evidence, when to query, and the channel's
business day (日切).

Pure data and arithmetic; no I/O. `ChannelPolicy` objects come from the settings
(`TALLY_CHANNELS`, JSON) and fall back to `TALLY_DEFAULT_CHANNEL`.

In: a channel id (and an event time). Out: its `ChannelPolicy` (`Mode`: pessimistic or
optimistic, SLAs, query limits, matching tolerances), its business date for the time
and the cutoff instants of a business date.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Mode(StrEnum):
    """S10: how an order with uncertain outcome counts in the balances."""

    PESSIMISTIC = "pessimistic"  # failed until success is certain
    OPTIMISTIC = "optimistic"  # successful until failure is certain


class ChannelPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Mode = Mode.PESSIMISTIC
    query_before_final_success: bool = Field(
        False,
        description="S3: a sync success is only provisional until a query or notify "
        "confirms it; tally requests a status query at once.",
    )
    timezone: str = Field("Asia/Shanghai", description="the channel's local time zone")
    cutoff: time = Field(
        time(0, 0),
        description="local time at which the channel closes its business day; an "
        "item at or after it belongs to the next day (UnionPay: 23:00)",
    )
    carry_window_seconds: int = Field(
        180, ge=0, description="S8: items this close to the cutoff may match the neighbouring day"
    )
    sla_seconds: int = Field(30, gt=0, description="S4: time to a final status for a payment")
    refund_sla_seconds: int = Field(
        3600, gt=0, description="S13: refunds are often only accepted; final state comes later"
    )
    query_interval_seconds: int = Field(15, gt=0, description="time between status queries")
    max_queries: int = Field(3, ge=1, description="unanswered queries before pending_timeout")
    orphan_grace_seconds: int = Field(
        60, ge=0, description="S5: evidence for an unknown order waits this long for it"
    )
    # End-of-day matching rules (docs/reconciliation.md, "Matching rules"). The
    # defaults are exact matching: ids only, amounts and fees to the cent.
    amount_tolerance_minor: int = Field(
        0,
        ge=0,
        description="end of day: a statement amount this many minor units (hundredths) "
        "off ours still matches, with the difference recorded",
    )
    amount_tolerance_bps: int = Field(
        0,
        ge=0,
        description="end of day: ... or this many basis points of our amount, whichever is larger",
    )
    fee_tolerance_minor: int = Field(
        0, ge=0, description="end of day: a stated fee this many minor units off ours matches"
    )
    match_window_seconds: int = Field(
        0,
        ge=0,
        description="end of day: a line that quotes no usable id is matched by score with "
        "our orders booked within this many seconds of it; 0: no scored matching",
    )
    match_threshold: int = Field(
        90,
        ge=0,
        le=100,
        description="end of day: a scored candidate at or above this score (0-100) "
        "matches; below, the line is proposed for review",
    )
    combined_payments: bool = Field(
        False,
        description="end of day: one statement line whose channel txn id several of our "
        "orders share, with the sum of their amounts, matches them as one group "
        "(WeChat 合单支付, Alipay 合并支付)",
    )

    # Funds reconciliation (`tally recon settlements`, docs/reconciliation.md,
    # "Settlement"): when and how the channel pays what it collected into our bank.
    settlement_lag_days: int = Field(
        1,
        ge=0,
        description="settlement: business days from a statement's business date to the "
        "credit in our bank (T+1: 1; UnionPay's nightly clearing: 1)",
    )
    settlement_weekends: bool = Field(
        False,
        description="settlement: the channel pays on Saturdays and Sundays too; when "
        "false, a credit due on a weekend or holiday rolls to the next working day",
    )
    settlement_holidays: tuple[date, ...] = Field(
        (), description="settlement: dates on which the channel does not pay (rolled over)"
    )
    settlement_fees: Literal["netted", "invoiced"] = Field(
        "netted",
        description="settlement: fees deducted from the credit (netted) or billed "
        "separately (invoiced: the credit is gross - refunds)",
    )
    settlement_reference: str = Field(
        "",
        description="settlement: regular expression (case-insensitive) that finds the "
        "channel's credits in the bank's remittance text; empty: the channel id as a "
        "word",
    )
    settlement_grace_days: int = Field(
        2,
        ge=0,
        description="settlement: working days a credit may come after its due date "
        "(settlement_late) before it is settlement_missing",
    )

    @field_validator("settlement_reference")
    @classmethod
    def _pattern_compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"settlement_reference is not a regular expression: {exc}") from None
        return v

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        _zone(v)
        return v

    # ----------------------------------------------------------- business day

    def business_date(self, at_ms: int) -> date:
        """The channel's business date for an instant (epoch ms, UTC)."""
        return business_date(at_ms, self.timezone, self.cutoff)

    def cutoff_ms(self, business: date) -> int:
        """End of a business date, as epoch ms: the cutoff on that local date
        (midnight cutoff: the following midnight)."""
        return cutoff_ms(business, self.timezone, self.cutoff)

    def business_date_iso(self, at_ms: int) -> str:
        """`business_date(at_ms).isoformat()`, remembered per minute (see
        `_business_minutes`)."""
        return business_date_iso(at_ms, self.timezone, self.cutoff)

    def cutoff_ms_iso(self, business: str) -> int:
        """`cutoff_ms` of a business date given in ISO form ("2026-03-02"), remembered."""
        k = (business, self.timezone, self.cutoff)
        ms = _cutoffs.get(k)
        if ms is None:
            if len(_cutoffs) >= 4096:
                _cutoffs.clear()
            ms = _cutoffs[k] = cutoff_ms(date.fromisoformat(business), self.timezone, self.cutoff)
        return ms


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def business_date(at_ms: int, zone: str, cutoff: time) -> date:
    local = datetime.fromtimestamp(at_ms / 1000, tz=_zone(zone))
    d = local.date()
    if cutoff != time(0, 0) and local.time() >= cutoff:
        d += timedelta(days=1)
    return d


def cutoff_ms(business: date, zone: str, cutoff: time) -> int:
    if cutoff == time(0, 0):
        end = datetime.combine(business + timedelta(days=1), cutoff, tzinfo=_zone(zone))
    else:
        end = datetime.combine(business, cutoff, tzinfo=_zone(zone))
    return int(end.timestamp() * 1000)


# The business date of an instant, remembered per UTC minute when it is the same over
# the whole minute: with one UTC offset over the minute (a zone changes its offset at
# most once in months), the business date never decreases with time, so the same date
# at the minute's first and last millisecond is the date of all of it.
_business_minutes: dict[tuple[str, time, int], str] = {}


def business_date_iso(at_ms: int, zone: str, cutoff: time) -> str:
    k = (zone, cutoff, at_ms // 60_000)
    d = _business_minutes.get(k)
    if d is None:
        d = business_date(at_ms, zone, cutoff).isoformat()
        first = k[2] * 60_000
        last = first + 59_999
        tz = _zone(zone)
        if (
            business_date(first, zone, cutoff).isoformat() == d
            and business_date(last, zone, cutoff).isoformat() == d
            and datetime.fromtimestamp(first / 1000, tz=tz).utcoffset()
            == datetime.fromtimestamp(last / 1000, tz=tz).utcoffset()
        ):
            if len(_business_minutes) >= 65536:
                _business_minutes.clear()
            _business_minutes[k] = d
    return d


_cutoffs: dict[tuple[str, str, time], int] = {}


class Policies:
    """Lookup of channel policies with a default for channels not listed."""

    def __init__(
        self, channels: dict[str, ChannelPolicy] | None = None, default: ChannelPolicy | None = None
    ) -> None:
        self.channels = dict(channels or {})
        self.default = default or ChannelPolicy()

    def __getitem__(self, channel_id: str) -> ChannelPolicy:
        return self.channels.get(channel_id, self.default)
