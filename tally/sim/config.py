"""What the traffic simulator simulates (`SimConfig`) and what it returns
(`Simulation`): the anomalies it can inject, the channels, currencies and fees of
ordinary traffic, the rates of every kind of order."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from tally.core.events import DEFAULT_MAX_BYTES
from tally.core.money import is_currency
from tally.core.pipeline import Envelope

__all__ = [
    "ANOMALIES",
    "BREAK_KIND",
    "DEFAULT_ANOMALY_RATES",
    "EST_MESSAGES_PER_ORDER",
    "SimConfig",
    "Simulation",
    "default_start",
]

ANOMALIES: tuple[str, ...] = (
    "status_conflict",
    "amount_mismatch",
    "currency_mismatch",
    "duplicate_success",
    "shared_channel_txn",
    "reversal_after_success",
    "orphan_callback",
    "pending_timeout",
    "late_callback",
)

# anomaly -> the break kind it raises
BREAK_KIND: dict[str, str] = {a: a for a in ANOMALIES} | {"shared_channel_txn": "duplicate_success"}

DEFAULT_ANOMALY_RATES: dict[str, float] = {
    "status_conflict": 0.003,
    "amount_mismatch": 0.003,
    "currency_mismatch": 0.002,
    "duplicate_success": 0.002,
    "shared_channel_txn": 0.002,
    "reversal_after_success": 0.003,
    "orphan_callback": 0.002,
    "pending_timeout": 0.003,
    "late_callback": 0.05,  # of the orders in the window before a cutoff
}

DEFAULT_CHANNELS = ("wechat", "alipay", "unionpay", "icbc")
DEFAULT_POS_CHANNELS = ("unionpay", "icbc")
DEFAULT_CURRENCIES = {"CNY": 90, "USD": 4, "HKD": 4, "JPY": 2}  # relative weights
DEFAULT_FEE_BPS = {"wechat": 60, "alipay": 60, "unionpay": 38, "icbc": 25}
FALLBACK_FEE_BPS = 50  # a channel missing from `SimConfig.fee_bps`

# Messages per order, for estimates before any are generated.
EST_MESSAGES_PER_ORDER = 4.4


# ---------------------------------------------------------------------- config


@dataclass
class SimConfig:
    """What to simulate. Rates are fractions of orders unless stated."""

    events: int = 100_000  # target number of input messages (see `Simulation`)
    seed: int = 0
    merchants: int = 200
    channels: list[str] = field(default_factory=lambda: list(DEFAULT_CHANNELS))
    pos_channels: list[str] = field(default_factory=lambda: list(DEFAULT_POS_CHANNELS))
    currencies: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_CURRENCIES))
    fee_bps: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_FEE_BPS))
    # None: shortly before the coming midnight in `timezone` (see `default_start`)
    start: datetime | None = None
    timezone: str = "Asia/Shanghai"
    orders_per_second: float = 40.0  # of event time
    # anomaly rates; partial dicts are merged into DEFAULT_ANOMALY_RATES; 0 disables one
    rates: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_ANOMALY_RATES))
    malformed_rate: float = 0.005  # fraction of messages
    duplicate_delivery_rate: float = 0.01  # fraction of messages
    # ordinary traffic
    failed_rate: float = 0.06
    closed_rate: float = 0.02
    coupon_rate: float = 0.06  # of payments
    refund_rate: float = 0.05
    reversal_rate: float = 0.01  # legitimate POS reversals (S1)
    query_resolved_rate: float = 0.02  # S4 resolved by a query answer
    async_rate: float = 0.15  # of successful payments: notify decides, sync says nothing
    late_record_rate: float = 0.01  # our record arrives after the channel's evidence
    late_window_seconds: int = 20  # late_callback orders are created this close to a cutoff
    allowed_lateness_ms: int = 5000  # as in LocalPipeline / TALLY_ALLOWED_LATENESS_SECONDS
    max_message_bytes: int = DEFAULT_MAX_BYTES  # as LocalPipeline.max_message_bytes
    # prefix of txn ids and channel txn ids; None: "s<seed>-". Runs sharing a broker's
    # state need distinct prefixes (a replayed id is a re-delivery, not a new order).
    id_prefix: str | None = None
    # channels where a currency mismatch may happen (None: any). A channel whose
    # statement format holds one currency (Alipay's bill: CNY; MT940, camt.053: one
    # per account) cannot show a line in another: `tally demo` keeps them to WeChat
    currency_mismatch_channels: list[str] | None = None

    def __post_init__(self) -> None:
        if self.events <= 0:
            raise ValueError("events must be positive")
        if self.merchants <= 0:
            raise ValueError("merchants must be positive")
        if not self.channels:
            raise ValueError("at least one channel is needed")
        if self.currency_mismatch_channels is not None and not (
            self.currency_mismatch_channels
            and set(self.currency_mismatch_channels) <= set(self.channels)
        ):
            raise ValueError("currency_mismatch_channels: some of the channels, or None")
        if self.orders_per_second <= 0:
            raise ValueError("orders_per_second must be positive")
        if not self.currencies or any(w <= 0 for w in self.currencies.values()):
            raise ValueError("currencies needs positive weights")
        for c in self.currencies:
            if not is_currency(c):
                raise ValueError(f"unknown currency {c!r}")
        unknown = set(self.rates) - set(ANOMALIES)
        if unknown:
            raise ValueError(f"unknown anomalies {sorted(unknown)}; known: {', '.join(ANOMALIES)}")
        self.rates = DEFAULT_ANOMALY_RATES | self.rates
        rates = [
            *(v for k, v in self.rates.items() if k != "late_callback"),
            self.failed_rate,
            self.closed_rate,
            self.refund_rate,
            self.reversal_rate,
            self.query_resolved_rate,
        ]
        singles = [
            self.rates["late_callback"],
            self.malformed_rate,
            self.duplicate_delivery_rate,
            self.coupon_rate,
            self.async_rate,
            self.late_record_rate,
        ]
        if any(r < 0 or r > 1 for r in rates + singles):
            raise ValueError("rates are fractions between 0 and 1")
        if sum(rates) > 1:
            raise ValueError("order-kind rates add up to more than 1")
        if self.malformed_rate + self.duplicate_delivery_rate >= 1:
            raise ValueError("malformed + duplicate rates leave no room for real traffic")
        if self.id_prefix is None:
            self.id_prefix = f"s{self.seed}-"
        if not re.fullmatch(r"[\x21-\x7e]{0,24}", self.id_prefix):
            raise ValueError("id_prefix: at most 24 printable ASCII characters, no spaces")
        if self.max_message_bytes < 4096:
            raise ValueError("max_message_bytes below 4 KiB would reject ordinary messages")
        if self.start is None:
            self.start = default_start(self.events, self.orders_per_second, self.timezone)
        elif self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware")


def default_start(events: int, orders_per_second: float, zone: str = "Asia/Shanghai") -> datetime:
    """Yesterday's business day, late: the coming midnight in `zone` less 40 % of the
    stream's estimated event-time span, so the stream crosses the midnight cutoff
    whatever its size (100k events at 40 orders/s: 23:56:13)."""
    tz = ZoneInfo(zone)
    midnight = datetime.combine(datetime.now(tz).date(), time(0, 0), tzinfo=tz)
    span_s = events / (orders_per_second * EST_MESSAGES_PER_ORDER)
    return midnight - timedelta(seconds=max(1, int(span_s * 0.4)))


# ------------------------------------------------------------------ simulation


@dataclass
class Simulation:
    """Generated traffic and the answer the pipeline must give.

    `len(envelopes)` equals `config.events`, unless the last orders' messages or the
    tail that lets the last timers fire needed a few more.
    """

    config: SimConfig
    envelopes: list[Envelope]
    expected: set[tuple[str, str]]  # (break kind, txn_id)
    malformed: int  # deliberately bad messages: each must become a dead letter
    duplicates: int  # re-delivered identical messages: each must change nothing
    counts: dict[str, int]  # by order kind, anomaly, variant, malformed code
    start_ms: int
    end_ms: int  # latest event time in the stream

    def expected_by_kind(self) -> dict[str, int]:
        c = Counter(kind for kind, _ in self.expected)
        return dict(sorted(c.items()))
