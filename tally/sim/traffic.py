"""Traffic simulator: a payment platform's input streams with a known answer.

`generate(cfg, policies)` produces the messages a platform would write to
`payments.transactions` (our own order records) and `payments.callbacks` (channel
evidence: sync responses, notifications, query answers), keyed by `txn_id` and
interleaved in event-time order. Besides ordinary traffic it injects anomalies,
each built so that it produces exactly one real-time break, and records the
resulting `(break_kind, txn_id)` pairs in `Simulation.expected`: the oracle that
tests, the benchmark and demos compare the pipeline's breaks against. It also
injects malformed messages (all must end as dead letters) and re-delivers some
messages unchanged (they must change nothing).

Ordinary traffic (none of it may raise a break):
  * payments: pending -> sync -> our success -> notify (with the channel fee);
    some channels answer asynchronously (no sync, or sync `pending`); channels whose
    policy verifies a sync success (S3) also answer a status query;
  * platform-funded coupons (S11: the channel collects amount - coupon);
  * failed payments, payments we close ourselves without a channel answer;
  * pendings resolved by a `query` answer after the SLA (S4), before the last query;
  * refunds of earlier payments, first only accepted, final minutes later (S13);
  * legitimate POS reversals (S1): the sale stays pending at our side, the reversal
    succeeds, sometimes only on the second try;
  * our own record delivered a few seconds after the channel's evidence (S5 in
    time: within the orphan grace period).
  Every order's final evidence lands before the cutoff of its business day (times
  of an order near a cutoff are compressed to fit) and within the channel's SLA.

Anomalies (`SimConfig.rates`, fractions of orders):
  status_conflict         ours success / channel failed; ours closed / notify
                          success (S5); sync success / notify failed
  amount_mismatch         one witness reports another amount, or the full amount
                          of a coupon order (S11)
  currency_mismatch       one witness reports another currency
  duplicate_success       two successes with different channel_txn_id (S1)
  shared_channel_txn      a second order reuses a channel_txn_id: the break is
                          duplicate_success on the *second* order (its claim is the
                          later one by event time and by arrival)
  reversal_after_success  a POS reversal order, or a `reversed` notify, for an
                          order we hold as success (S2)
  orphan_callback         evidence for a txn_id whose order never arrives
  pending_timeout         no final answer, status queries unanswered (S4)
  late_callback           final evidence after the channel's cutoff (S12); its
                          rate is the fraction of orders created in the last
                          `late_window_seconds` before a cutoff, the only orders
                          that can show it

`live_stream(rate, policies)` yields the same kind of traffic without end, its event
time following the wall clock when consumed at `rate` messages per second (for
`tally run --simulate`).

Time: event time starts at `SimConfig.start` (by default shortly before the coming
midnight of Asia/Shanghai, yesterday's business day, so the stream crosses the
default midnight cutoff) and advances by `orders_per_second`. Timers in
`tally.core.realtime` fire only when a partition's watermark (latest event time less
the allowed lateness) passes them; the simulator places pending_timeout and
orphan_callback orders only where enough traffic follows, and extends the stream
until it has, so feeding the envelopes is enough: no `tick` is needed, and a later
`tick` changes nothing because every ordinary order is resolved. (That holds for
any partition count that the last ~200 orders cover, i.e. well beyond 16.)

Money is integer minor units throughout; floats only drive random choices.
"""

from __future__ import annotations

import heapq
import json
import random
import re
import time as _time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from tally.core.events import (
    DEFAULT_MAX_BYTES,
    Callback,
    InvalidEvent,
    Transaction,
    iso_ms,
    parse_callback,
    parse_transaction,
    to_epoch_ms,
)
from tally.core.money import exponent, format_minor, is_currency
from tally.core.pipeline import CALLBACKS, TRANSACTIONS, Envelope
from tally.core.policy import ChannelPolicy, Policies

__all__ = [
    "ANOMALIES",
    "BREAK_KIND",
    "DEFAULT_ANOMALY_RATES",
    "MALFORMED_VARIANTS",
    "LiveStream",
    "SimConfig",
    "Simulation",
    "generate",
    "live_stream",
    "read_jsonl",
    "write_jsonl",
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
_FALLBACK_FEE_BPS = 50

# Order amounts in major units: (low, high, weight); JPY amounts are x100.
_AMOUNT_BANDS = ((1, 10, 30), (10, 100, 40), (100, 1000, 25), (1000, 20000, 5))
_AMOUNT_SCALE = {"JPY": 100, "KRW": 1000}

# Messages per order, for estimates before any are generated.
_EST_MESSAGES_PER_ORDER = 4.4
# Orders that must follow a timer's deadline so every partition's watermark passes it.
_TAIL_ORDERS = 200
_TAIL_MIN_MS = 10_000


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
    span_s = events / (orders_per_second * _EST_MESSAGES_PER_ORDER)
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


# --------------------------------------------------------------- order scripts


@dataclass(slots=True)
class _Step:
    at: int  # event time, epoch ms
    topic: str
    status: str
    source: str = ""  # callbacks only
    amount: int = 0
    currency: str = ""
    ctid: str = ""
    fee: int | None = None
    delay: int = 0  # delivery delay: emitted at `at + delay`


@dataclass(slots=True)
class _Order:
    txn_id: str
    type: str
    merchant_id: str
    channel_id: str
    amount: int
    currency: str
    created_ms: int
    coupon: int = 0
    original: str | None = None
    terminal: str | None = None
    ctid: str = ""
    fee: int | None = None
    steps: list[_Step] = field(default_factory=list)

    @property
    def collect(self) -> int:
        """What the channel collects: the amount less the platform coupon (S11)."""
        return self.amount - self.coupon

    @property
    def last(self) -> int:
        return max(s.at for s in self.steps)

    def txn(self, status: str, at: int) -> _Step:
        s = _Step(at, TRANSACTIONS, status)
        self.steps.append(s)
        return s

    def cb(self, source: str, status: str, at: int, *, fee: int | None = None) -> _Step:
        s = _Step(at, CALLBACKS, status, source, self.collect, self.currency, self.ctid, fee)
        self.steps.append(s)
        return s

    def callbacks(self, source: str | None = None) -> list[_Step]:
        return [
            s for s in self.steps if s.topic == CALLBACKS and (source is None or s.source == source)
        ]


# ------------------------------------------------------------------- generator


class _Gen:
    def __init__(self, cfg: SimConfig, policies: Policies) -> None:
        assert cfg.start is not None
        self.cfg = cfg
        self.policies = policies
        self.rng = random.Random(cfg.seed)
        assert cfg.id_prefix is not None
        self.tag = cfg.id_prefix
        self.start_ms = to_epoch_ms(cfg.start)
        self.out: list[tuple[int, int, Envelope]] = []
        self._seq = 0
        self.valid = 0
        self.expected: set[tuple[str, str]] = set()
        self.counts: Counter[str] = Counter()
        self._ids: Counter[str] = Counter()
        self._cutoffs: dict[tuple[str, date], int] = {}
        self._next_cut: dict[str, int] = {}
        self.channels = list(dict.fromkeys(cfg.channels))
        self.pos = [c for c in self.channels if c in cfg.pos_channels] or self.channels
        self.currencies = list(cfg.currencies)
        self.currency_weights = [cfg.currencies[c] for c in self.currencies]
        self.max_at = self.start_ms  # latest event time of a well-formed message
        self.need_until = 0  # latest timer deadline (event time incl. lateness)
        self.t_end_est = 0
        gap_ms = 1000 / cfg.orders_per_second
        self.tail_ms = max(_TAIL_MIN_MS, int(_TAIL_ORDERS * gap_ms))
        lateness = cfg.allowed_lateness_ms
        pols = [policies[c] for c in self.channels]
        self.timeout_rel = (
            max((p.sla_seconds + p.max_queries * p.query_interval_seconds) * 1000 for p in pols)
            + lateness
            + 1000
        )
        self.orphan_rel = max(p.orphan_grace_seconds * 1000 for p in pols) + lateness + 1000
        rates = cfg.rates
        self.table: list[tuple[float, Callable[[int], None]]] = [
            (rates["status_conflict"], self.u_status_conflict),
            (rates["amount_mismatch"], self.u_amount_mismatch),
            (rates["currency_mismatch"], self.u_currency_mismatch),
            (rates["duplicate_success"], self.u_duplicate_success),
            (rates["shared_channel_txn"], self.u_shared_channel_txn),
            (rates["reversal_after_success"], self.u_reversal_after_success),
            (rates["orphan_callback"], self.u_orphan_callback),
            (rates["pending_timeout"], self.u_pending_timeout),
            (cfg.failed_rate, self.u_failed),
            (cfg.closed_rate, self.u_closed),
            (cfg.refund_rate, self.u_refund),
            (cfg.reversal_rate, self.u_reversal),
            (cfg.query_resolved_rate, self.u_query_resolved),
        ]

    # ------------------------------------------------------------ helpers

    def r(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, max(lo, hi))

    def policy(self, channel: str) -> ChannelPolicy:
        return self.policies[channel]

    def new_id(self, letter: str) -> str:
        self._ids[letter] += 1
        return f"{self.tag}{letter}{self._ids[letter]:08d}"

    def ctid(self, channel: str) -> str:
        self._ids["ctid:" + channel] += 1
        return f"{channel[:2].upper()}-{self.tag}{self._ids['ctid:' + channel]:010d}"

    def cutoff(self, channel: str, at_ms: int) -> int:
        """End of the business day (of `channel`) that `at_ms` belongs to."""
        pol = self.policy(channel)
        d = pol.business_date(at_ms)
        c = self._cutoffs.get((channel, d))
        if c is None:
            c = self._cutoffs[(channel, d)] = pol.cutoff_ms(d)
        return c

    def fast(self, pol: ChannelPolicy) -> int:
        """Upper bound for a notify delay that keeps an order inside its SLA."""
        return max(600, min(8000, pol.sla_seconds * 1000 // 2 - 1500))

    def amount(self, currency: str) -> int:
        lo, hi, _ = self.rng.choices(_AMOUNT_BANDS, [b[2] for b in _AMOUNT_BANDS])[0]
        unit = 10 ** exponent(currency) * _AMOUNT_SCALE.get(currency, 1)
        return self.rng.randrange(lo * unit, hi * unit)

    def fee(self, channel: str, collect: int) -> int:
        bps = self.cfg.fee_bps.get(channel, _FALLBACK_FEE_BPS)
        return (collect * bps + 5000) // 10000

    def payment(
        self,
        t: int,
        *,
        channel: str | None = None,
        pos: bool = False,
        coupon: bool | None = None,
        currency: str | None = None,
    ) -> _Order:
        """A new payment order (no steps yet). coupon: None = at the configured rate."""
        rng = self.rng
        ch = channel or rng.choice(self.pos if pos else self.channels)
        m = rng.randrange(self.cfg.merchants)
        cur = currency or rng.choices(self.currencies, self.currency_weights)[0]
        amount = self.amount(cur)
        if amount < 2:
            amount = 2
        o = _Order(
            txn_id=self.new_id("P"),
            type="payment",
            merchant_id=f"M{m:05d}",
            channel_id=ch,
            amount=amount,
            currency=cur,
            created_ms=t,
            terminal=f"T{m:05d}{rng.randint(1, 3):02d}" if ch in self.cfg.pos_channels else None,
            ctid=self.ctid(ch),
        )
        if coupon is None:
            coupon = not pos and rng.random() < self.cfg.coupon_rate
        if coupon:
            o.coupon = rng.randint(1, max(1, amount // 5))
            self.counts["coupon"] += 1
        o.fee = self.fee(ch, o.collect)
        self.counts["orders"] += 1
        return o

    def follow_up(self, o: _Order, type_: str, t: int, amount: int) -> _Order:
        """A refund or reversal of `o`, created at `t`."""
        self.counts["orders"] += 1
        return _Order(
            txn_id=self.new_id("R" if type_ == "refund" else "V"),
            type=type_,
            merchant_id=o.merchant_id,
            channel_id=o.channel_id,
            amount=amount,
            currency=o.currency,
            created_ms=t,
            original=o.txn_id,
            terminal=o.terminal,
            ctid=self.ctid(o.channel_id),
        )

    def succeed(self, o: _Order, t: int, *, sync: bool | None = None) -> int:
        """pending -> channel success -> our success, confirmed by a notify (and by a
        query answer on channels that verify a sync success, S3). Returns the time of
        the first success evidence. sync: None = synchronous unless async by rate."""
        rng = self.rng
        pol = self.policy(o.channel_id)
        fast = self.fast(pol)
        o.txn("pending", t)
        ts = t + self.r(150, 1500)
        if sync is None:
            sync = rng.random() >= self.cfg.async_rate
        if sync:
            o.cb("sync", "success", ts)
            o.txn("success", ts + self.r(20, 300))
            if pol.query_before_final_success:
                q = max(1000, min(5000, pol.query_interval_seconds * 1000 // 2))
                o.cb("query", "success", ts + self.r(min(2000, q), q), fee=o.fee)
            o.cb("notify", "success", ts + self.r(500, fast), fee=o.fee)
            return ts
        self.counts["async"] += 1
        if rng.random() < 0.5:
            o.cb("sync", "pending", ts)
        tn = ts + self.r(500, fast)
        o.cb("notify", "success", tn, fee=o.fee)
        o.txn("success", tn + self.r(20, 300))
        return tn

    def expect(self, anomaly: str, txn_id: str) -> None:
        self.expected.add((BREAK_KIND[anomaly], txn_id))
        self.counts[anomaly] += 1

    # ------------------------------------------------------------- output

    def put(self, emit_ms: int, env: Envelope) -> None:
        self._seq += 1
        self.out.append((emit_ms, self._seq, env))

    def emit(self, o: _Order, *, clamp: bool = True) -> None:
        """Write an order's steps as envelopes. With `clamp`, an order whose channel
        evidence would land at or after the cutoff of its business day has its times
        compressed to end before it (ordinary orders must not be late_callback)."""
        if clamp:
            cut = self.cutoff(o.channel_id, o.created_ms)
            cbs = [s.at for s in o.steps if s.topic == CALLBACKS]
            if cbs and max(cbs) >= cut:
                base, hi = o.created_ms, o.last
                span = cut - 1 - base
                for s in o.steps:
                    s.at = base + (s.at - base) * span // (hi - base)
                self.counts["compressed_before_cutoff"] += 1
        for i, s in enumerate(o.steps):
            eid = f"{o.txn_id}.{i}"
            value: dict[str, Any]
            if s.topic == TRANSACTIONS:
                value = Transaction(
                    event_id=eid,
                    txn_id=o.txn_id,
                    type=o.type,
                    merchant_id=o.merchant_id,
                    channel_id=o.channel_id,
                    amount=o.amount,
                    currency=o.currency,
                    status=s.status,
                    original_txn_id=o.original,
                    occurred_at_ms=s.at,
                    coupon_amount=o.coupon,
                    terminal_id=o.terminal,
                ).to_json()
            else:
                value = Callback(
                    event_id=eid,
                    txn_id=o.txn_id,
                    channel_id=o.channel_id,
                    channel_txn_id=s.ctid,
                    source=s.source,
                    status=s.status,
                    amount=s.amount,
                    currency=s.currency,
                    fee=s.fee,
                    occurred_at_ms=s.at,
                ).to_json()
            self.put(s.at + s.delay, Envelope(s.topic, o.txn_id, value))
            self.valid += 1
            self.max_at = max(self.max_at, s.at)

    # -------------------------------------------------------- ordinary units

    def u_plain(self, t: int) -> None:
        o = self.payment(t)
        self.succeed(o, t)
        pol = self.policy(o.channel_id)
        if pol.orphan_grace_seconds >= 20 and self.rng.random() < self.cfg.late_record_rate:
            d = self.r(1000, 12_000)  # our record lags the channel's evidence (topic lag)
            for s in o.steps:
                if s.topic == TRANSACTIONS:
                    s.delay = d
            self.counts["late_record"] += 1
        self.counts["payment_success"] += 1
        self.emit(o)

    def u_failed(self, t: int) -> None:
        o = self.payment(t)
        pol = self.policy(o.channel_id)
        o.txn("pending", t)
        ts = t + self.r(150, 1500)
        if self.rng.random() < 0.7:
            o.cb("sync", "failed", ts)
        else:
            if self.rng.random() < 0.5:
                o.cb("sync", "pending", ts)
            ts += self.r(500, self.fast(pol))
            o.cb("notify", "failed", ts)
        o.txn("failed", ts + self.r(20, 300))
        self.counts["payment_failed"] += 1
        self.emit(o)

    def u_closed(self, t: int) -> None:
        """The payer never paid; we close the order, the channel never says more."""
        o = self.payment(t)
        pol = self.policy(o.channel_id)
        o.txn("pending", t)
        if self.rng.random() < 0.5:
            o.cb("sync", "pending", t + self.r(150, 1500))
        o.txn("closed", t + self.r(2000, max(2000, min(25_000, pol.sla_seconds * 1000 - 2000))))
        self.counts["payment_closed"] += 1
        self.emit(o)

    def u_query_resolved(self, t: int) -> None:
        """S4 resolved: no answer until we query; the query answer decides."""
        o = self.payment(t)
        pol = self.policy(o.channel_id)
        o.txn("pending", t)
        o.cb("sync", "pending", t + self.r(150, 1500))
        sla = pol.sla_seconds * 1000
        lo, hi = sla + 1500, sla + pol.max_queries * pol.query_interval_seconds * 1000 - 3000
        ta = t + (self.r(lo, hi) if hi >= lo else max(2000, sla - 2000))
        if self.rng.random() < 0.85:
            o.cb("query", "success", ta, fee=o.fee)
            o.txn("success", ta + self.r(20, 300))
        else:
            o.cb("query", "failed", ta)
            o.txn("failed", ta + self.r(20, 300))
        self.counts["query_resolved"] += 1
        self.emit(o)

    def u_refund(self, t: int) -> None:
        """S13: a refund of an earlier payment, accepted first, final later."""
        rng = self.rng
        o = self.payment(t)
        self.succeed(o, t)
        tr = o.last + self.r(2000, 120_000)
        r = self.follow_up(o, "refund", tr, self.r(1, o.collect))
        pol = self.policy(o.channel_id)
        r.txn("pending", tr)
        ta = tr + self.r(150, 1500)
        r.cb("sync", "pending", ta)  # "accepted"
        if rng.random() < 0.3:
            r.cb("notify", "pending", ta + self.r(1000, 30_000))
        tf = ta + self.r(5000, min(180_000, pol.refund_sla_seconds * 1000 // 2))
        if rng.random() < 0.92:
            r.cb("notify", "success", tf)
            r.txn("success", tf + self.r(20, 300))
            tro = tf + self.r(100, 2000)
            if rng.random() < 0.3 and tro < self.cutoff(o.channel_id, o.created_ms):
                o.cb("notify", "refunded", tro)  # the channel also marks the sale refunded
                self.counts["refunded_notify"] += 1
            self.counts["refund"] += 1
        else:
            r.cb("notify", "failed", tf)
            r.txn("failed", tf + self.r(20, 300))
            self.counts["refund_failed"] += 1
        self.emit(o)
        self.emit(r)

    def u_reversal(self, t: int) -> None:
        """S1: the POS got no answer, printed no receipt and reversed the sale. The
        sale stays pending at our side (then failed/closed); not a break."""
        rng = self.rng
        o = self.payment(t, pos=True, coupon=False)
        o.txn("pending", t)
        if rng.random() < 0.6:
            o.cb("sync", "pending", t + self.r(150, 1500))
        tr = t + self.r(1000, 3000)
        if rng.random() < 0.25:  # the reversal failed; re-sent with the next transaction
            r1 = self.follow_up(o, "reversal", tr, o.amount)
            r1.txn("pending", tr)
            ts = tr + self.r(150, 1000)
            r1.cb("sync", "failed", ts)
            r1.txn("failed", ts + self.r(20, 300))
            self.emit(r1)
            tr = ts + self.r(1000, 4000)
            self.counts["reversal_resent"] += 1
        r = self.follow_up(o, "reversal", tr, o.amount)
        ts = self.succeed(r, tr, sync=True)
        o.txn(rng.choice(("failed", "closed")), ts + self.r(100, 2000))
        self.counts["reversal"] += 1
        self.emit(o)
        self.emit(r)

    # --------------------------------------------------------------- anomalies

    def u_status_conflict(self, t: int) -> None:
        o = self.payment(t)
        fast = self.fast(self.policy(o.channel_id))
        v = self.rng.randrange(3)
        o.txn("pending", t)
        ts = t + self.r(150, 1500)
        if v == 0:  # we hold success, the channel says failed
            if self.rng.random() < 0.5:
                o.cb("sync", "pending", ts)
            o.txn("success", ts + self.r(20, 500))
            o.cb("notify", "failed", ts + self.r(600, fast))
        elif v == 1:  # S5: we closed the order, the channel notifies success
            tc = t + self.r(2000, 10_000)
            o.txn("closed", tc)
            o.cb("notify", "success", tc + self.r(500, fast), fee=o.fee)
        else:  # the channel's witnesses disagree
            o.cb("sync", "success", ts)
            o.txn("success", ts + self.r(20, 300))
            o.cb("notify", "failed", ts + self.r(500, fast))
        self.expect("status_conflict", o.txn_id)
        self.emit(o)

    def u_amount_mismatch(self, t: int) -> None:
        if self.rng.random() < 0.3:  # S11: the channel ignored the platform coupon
            o = self.payment(t, coupon=True)
            self.succeed(o, t)
            for s in o.callbacks():
                s.amount = o.amount
            self.counts["amount_mismatch_coupon"] += 1
        else:
            o = self.payment(t)
            self.succeed(o, t)
            s = o.callbacks("notify")[-1]
            delta = self.r(1, max(1, min(100, o.collect // 10)))
            s.amount = (
                o.collect - delta
                if o.collect > delta and self.rng.random() < 0.5
                else (o.collect + delta)
            )
        self.expect("amount_mismatch", o.txn_id)
        self.emit(o)

    def u_currency_mismatch(self, t: int) -> None:
        only = self.cfg.currency_mismatch_channels
        o = self.payment(t, channel=self.rng.choice(only) if only else None)
        self.succeed(o, t)
        others = [c for c in self.currencies if c != o.currency] or [
            "USD" if o.currency != "USD" else "CNY"
        ]
        s = self.rng.choice(o.callbacks())
        s.currency = self.rng.choice(others)
        self.expect("currency_mismatch", o.txn_id)
        self.emit(o)

    def u_duplicate_success(self, t: int) -> None:
        """S1: a retried sale succeeds a second time at the channel."""
        o = self.payment(t, pos=self.rng.random() < 0.5)
        self.succeed(o, t, sync=True)
        s = o.cb("notify", "success", o.last + self.r(2000, 10_000), fee=o.fee)
        s.ctid = self.ctid(o.channel_id)
        self.expect("duplicate_success", o.txn_id)
        self.emit(o)

    def u_shared_channel_txn(self, t: int) -> None:
        """One channel_txn_id reported as success on two orders: the break belongs to
        the later claim by event time; b starts after a's last message, so b's claims
        are later both in event time and in arrival."""
        a = self.payment(t)
        self.succeed(a, t)
        tb = a.last + self.r(2000, 20_000)
        b = self.payment(tb, channel=a.channel_id)
        b.ctid = a.ctid
        self.succeed(b, tb)
        self.expect("shared_channel_txn", b.txn_id)
        self.emit(a)
        self.emit(b)

    def u_reversal_after_success(self, t: int) -> None:
        """S2: receipt printed, success reported, then a reversal arrives."""
        if self.rng.random() < 0.5:
            o = self.payment(t, pos=True, coupon=False)
            self.succeed(o, t, sync=True)
            tr = o.last + self.r(2000, 30_000)
            r = self.follow_up(o, "reversal", tr, o.amount)
            self.succeed(r, tr, sync=True)
            self.emit(r)
            self.counts["reversal_after_success_order"] += 1
        else:
            o = self.payment(t)
            self.succeed(o, t)
            o.cb("notify", "reversed", o.last + self.r(2000, 30_000))
            self.counts["reversal_after_success_notify"] += 1
        self.expect("reversal_after_success", o.txn_id)
        self.emit(o)

    def u_orphan_callback(self, t: int) -> None:
        """S5: evidence for an order that never reaches us."""
        o = self.payment(t)
        if self.rng.random() < 0.8:
            o.cb("notify", "success", t, fee=o.fee)
        else:
            o.cb("notify", "failed", t)
        grace = self.policy(o.channel_id).orphan_grace_seconds * 1000
        self.need_until = max(self.need_until, t + grace + self.cfg.allowed_lateness_ms)
        self.expect("orphan_callback", o.txn_id)
        self.emit(o, clamp=False)

    def u_pending_timeout(self, t: int) -> None:
        """S4: the channel never answers, not even our status queries."""
        o = self.payment(t)
        pol = self.policy(o.channel_id)
        o.txn("pending", t)
        if self.rng.random() < 0.7:
            o.cb("sync", "pending", t + self.r(150, 1500))
        if self.rng.random() < 0.2:  # we believed the front end; the channel never confirms
            o.txn("success", t + self.r(200, 2000))
        due = t + (pol.sla_seconds + pol.max_queries * pol.query_interval_seconds) * 1000
        self.need_until = max(self.need_until, due + self.cfg.allowed_lateness_ms)
        self.expect("pending_timeout", o.txn_id)
        self.emit(o)

    def u_late_callback(self, t: int, channel: str) -> None:
        """S12: created just before the channel's cutoff, final answer just after it
        (but within the SLA)."""
        o = self.payment(t, channel=channel)
        pol = self.policy(channel)
        cut = self.cutoff(channel, t)
        vmax = min(8000, pol.sla_seconds * 1000 - (cut - t) - 1000)
        o.txn("pending", t)
        if self.rng.random() < 0.6:
            o.cb("sync", "pending", min(t + self.r(150, 1500), cut - 1))
        tf = cut + self.r(0, vmax)
        if self.rng.random() < 0.85:
            o.cb("notify", "success", tf, fee=o.fee)
            o.txn("success", tf + self.r(20, 300))
        else:
            o.cb("notify", "failed", tf)
            o.txn("failed", tf + self.r(20, 300))
        self.expect("late_callback", o.txn_id)
        self.emit(o, clamp=False)

    def late_channels(self, t: int) -> list[str]:
        """Channels whose cutoff is close enough after `t` for a late_callback order."""
        window = self.cfg.late_window_seconds * 1000
        out = []
        for ch in self.channels:
            c = self._next_cut.get(ch)
            if c is None or t >= c:
                c = self._next_cut[ch] = self.cutoff(ch, t)
            u = c - t
            if 1000 <= u <= window and self.policy(ch).sla_seconds * 1000 - u - 1000 >= 300:
                out.append(ch)
        return out

    # ------------------------------------------------------------- the stream

    def unit(self, t: int) -> None:
        rng = self.rng
        late = self.cfg.rates["late_callback"]
        if late > 0:
            chans = self.late_channels(t)
            if chans and rng.random() < late:
                self.u_late_callback(t, rng.choice(chans))
                return
        x = rng.random()
        for rate, build in self.table:
            if x < rate:
                if build == self.u_pending_timeout and not self.room(t, self.timeout_rel):
                    break
                if build == self.u_orphan_callback and not self.room(t, self.orphan_rel):
                    break
                build(t)
                return
            x -= rate
        self.u_plain(t)

    def room(self, t: int, rel: int) -> bool:
        return t + rel + self.tail_ms <= self.t_end_est

    def run(self, malformed: int, duplicates: int) -> int:
        """Generate ordinary traffic and anomalies; returns the last order's start."""
        cfg = self.cfg
        target = max(1, cfg.events - malformed - duplicates)
        gap_us = max(1, round(1_000_000 / cfg.orders_per_second))
        t_us = self.start_ms * 1000
        units = 0
        t = self.start_ms
        while True:
            t = t_us // 1000
            if self.valid >= target and t > self.need_until + self.tail_ms:
                return t
            avg = self.valid / units if units >= 50 else _EST_MESSAGES_PER_ORDER
            remaining = max(0.0, (target - self.valid) / avg)
            self.t_end_est = t + int(remaining * gap_us / 1000)
            self.unit(t)
            units += 1
            t_us += self.rng.randint(gap_us // 2, gap_us * 3 // 2)

    def live(self, rate: float) -> Iterator[Envelope]:
        """Endless traffic in event-time order, for a consumer taking `rate` messages
        per second: the order rate follows the measured messages per order, so event
        time keeps pace with the wall clock. Every order's messages are generated when
        it starts and merged through a heap, so no message is emitted before an
        earlier one (a refund's answer minutes later does not run the watermark ahead
        of the orders that follow)."""
        cfg, rng = self.cfg, self.rng
        heap: list[tuple[int, int, Envelope]] = []
        self.t_end_est = 2**62  # never short of room for timed anomalies
        t_us = self.start_ms * 1000
        units = 0
        variants = list(MALFORMED_VARIANTS)
        while True:
            t = t_us // 1000
            self.unit(t)
            units += 1
            for item in self.out:
                heapq.heappush(heap, item)
            self.out.clear()
            while heap and heap[0][0] <= t:
                emit_ms, _, env = heapq.heappop(heap)
                yield env
                if not isinstance(env.value, dict):
                    continue
                if rng.random() < cfg.duplicate_delivery_rate:
                    self._seq += 1
                    dup = Envelope(env.topic, env.key, dict(env.value))
                    heapq.heappush(heap, (emit_ms + self.r(100, 3000), self._seq, dup))
                    self.counts["duplicates"] += 1
                if rng.random() < cfg.malformed_rate:
                    variant, code = rng.choice(variants)
                    self.malformed(variant, code, emit_ms)
                    self.counts["malformed"] += 1
                    for item in self.out:
                        heapq.heappush(heap, item)
                    self.out.clear()
            per_order = (self.valid / units if units >= 50 else _EST_MESSAGES_PER_ORDER) * (
                1 + cfg.duplicate_delivery_rate + cfg.malformed_rate
            )
            gap_us = max(1, round(1_000_000 * per_order / rate))
            t_us += rng.randint(gap_us // 2, gap_us * 3 // 2)

    # -------------------------------------------------------------- malformed

    def malformed(self, variant: str, code: str, at: int) -> None:
        o = self.payment(at, coupon=False)
        self.counts["orders"] -= 1
        o.txn_id = self.new_id("X")
        key: str | None = o.txn_id
        txn: dict[str, Any] = Transaction(
            event_id=f"{o.txn_id}.0",
            txn_id=o.txn_id,
            type="payment",
            merchant_id=o.merchant_id,
            channel_id=o.channel_id,
            amount=o.amount,
            currency=o.currency,
            status="pending",
            original_txn_id=None,
            occurred_at_ms=at,
            terminal_id=o.terminal,
        ).to_json()
        cb: dict[str, Any] = Callback(
            event_id=f"{o.txn_id}.1",
            txn_id=o.txn_id,
            channel_id=o.channel_id,
            channel_txn_id=o.ctid,
            source="notify",
            status="success",
            amount=o.amount,
            currency=o.currency,
            fee=o.fee,
            occurred_at_ms=at,
        ).to_json()
        topic = TRANSACTIONS
        d = txn
        value: str | bytes | None = None
        local = datetime.fromtimestamp(at / 1000, ZoneInfo(self.cfg.timezone))
        if variant in _CALLBACK_VARIANTS:
            topic, d = CALLBACKS, cb
        match variant:
            case "truncated_json":
                text = _dumps(d)
                value = text[: self.r(1, len(text) - 2)]
            case "empty":
                value = ""
            case "gbk_statement_line":  # an Alipay bill line (GBK) on the wrong topic
                value = "#支付宝交易记录明细查询,账号:[20881234]\r\n".encode("gbk")
            case "python_repr":
                value = repr(d)
            case "json_array":
                value = _dumps([d])
            case "json_string":
                value = json.dumps(o.txn_id)
            case "json_null":
                value = "null"
            case "missing_merchant_id":
                del d["merchant_id"]
            case "missing_channel_txn_id":
                del d["channel_txn_id"]
            case "null_amount":
                d["amount"] = None
            case "refund_without_original":
                d["type"] = "refund"
            case "amount_as_number":
                text = _dumps(d)
                value = text.replace(f'"amount":"{d["amount"]}"', f'"amount":{d["amount"]}')
            case "event_id_as_number":
                d["event_id"] = self.r(1, 10**9)
            case "occurred_at_as_epoch":
                d["occurred_at"] = at
            case "amount_with_comma":
                d["currency"], d["amount"] = "CNY", "12,34"
            case "amount_exponent":
                d["currency"], d["amount"] = "CNY", "1e3"
            case "amount_garbage":
                d["currency"], d["amount"] = "CNY", "12.34 CNY"
            case "too_many_decimals":
                d["currency"], d["amount"] = "CNY", "12.345"
            case "jpy_with_decimals":
                d["currency"], d["amount"] = "JPY", "1500.5"
            case "amount_too_large":
                d["currency"], d["amount"] = "CNY", "12345678901234.00"
            case "negative_amount":
                d["currency"], d["amount"] = "CNY", "-5.00"
            case "negative_fee":
                d["currency"], d["amount"], d["fee"] = "CNY", "5.00", "-0.10"
            case "unknown_type":
                d["type"] = "chargeback"
            case "unknown_status":
                d["status"] = "SUCCESS"
            case "unknown_source":
                d["source"] = "webhook"
            case "unknown_currency":
                d["currency"] = "RMB"
            case "lowercase_currency":
                d["currency"] = "cny"
            case "timestamp_without_offset":
                d["occurred_at"] = local.strftime("%Y-%m-%dT%H:%M:%S")
            case "timestamp_invalid_date":
                d["occurred_at"] = local.strftime("%Y-02-30T%H:%M:%S+08:00")
            case "timestamp_with_space":
                d["occurred_at"] = local.strftime("%Y-%m-%d %H:%M:%S+08:00")
            case "key_differs":
                key = self.new_id("X")
            case "key_missing":
                key = None
            case "txn_id_with_space":
                d["txn_id"] = key = o.txn_id[:3] + " " + o.txn_id[3:]
            case "txn_id_too_long":
                d["txn_id"] = key = o.txn_id + "0" * 65
            case "coupon_exceeds_amount":
                d["coupon_amount"] = format_minor(o.amount + 1, o.currency)
            case "original_is_self":
                d["type"], d["original_txn_id"] = "refund", o.txn_id
            case "too_large":
                d["memo"] = "x" * (self.cfg.max_message_bytes + self.r(1, 1000))
            case _:  # pragma: no cover - the variant table and this match agree
                raise AssertionError(variant)
        if value is None:
            value = _dumps(d)
        env = Envelope(topic, key, value)
        _must_fail(env, code, variant, self.cfg.max_message_bytes)
        self.put(at, env)
        self.counts["malformed:" + code] += 1


# (variant, the InvalidEvent code it must produce)
MALFORMED_VARIANTS: tuple[tuple[str, str], ...] = (
    ("truncated_json", "bad_json"),
    ("empty", "bad_json"),
    ("gbk_statement_line", "bad_json"),
    ("python_repr", "bad_json"),
    ("json_array", "not_object"),
    ("json_string", "not_object"),
    ("json_null", "not_object"),
    ("missing_merchant_id", "missing_field"),
    ("missing_channel_txn_id", "missing_field"),
    ("null_amount", "missing_field"),
    ("refund_without_original", "missing_field"),
    ("amount_as_number", "wrong_type"),
    ("event_id_as_number", "wrong_type"),
    ("occurred_at_as_epoch", "wrong_type"),
    ("amount_with_comma", "bad_amount"),
    ("amount_exponent", "bad_amount"),
    ("amount_garbage", "bad_amount"),
    ("too_many_decimals", "bad_amount"),
    ("jpy_with_decimals", "bad_amount"),
    ("amount_too_large", "bad_amount"),
    ("negative_amount", "negative_amount"),
    ("negative_fee", "negative_amount"),
    ("unknown_type", "unknown_enum"),
    ("unknown_status", "unknown_enum"),
    ("unknown_source", "unknown_enum"),
    ("unknown_currency", "bad_currency"),
    ("lowercase_currency", "bad_currency"),
    ("timestamp_without_offset", "bad_timestamp"),
    ("timestamp_invalid_date", "bad_timestamp"),
    ("timestamp_with_space", "bad_timestamp"),
    ("key_differs", "key_mismatch"),
    ("key_missing", "key_mismatch"),
    ("txn_id_with_space", "bad_id"),
    ("txn_id_too_long", "bad_id"),
    ("coupon_exceeds_amount", "inconsistent"),
    ("original_is_self", "inconsistent"),
    ("too_large", "too_large"),
)

_CALLBACK_VARIANTS = frozenset(
    {"missing_channel_txn_id", "occurred_at_as_epoch", "negative_fee", "unknown_source"}
)


def _dumps(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"))


def _must_fail(env: Envelope, code: str, variant: str, max_bytes: int) -> None:
    """A malformed message must be rejected with its code, also after a JSONL round
    trip (which turns raw bytes into text)."""
    for e in (env, Envelope.from_line(env.to_line())):
        parse = parse_transaction if e.topic == TRANSACTIONS else parse_callback
        try:
            parse(e.value_bytes(), e.key, check_key=True, max_bytes=max_bytes)
        except InvalidEvent as exc:
            if exc.code != code:
                raise AssertionError(f"malformed {variant}: got {exc.code}, want {code}") from exc
        else:
            raise AssertionError(f"malformed {variant} was accepted")


# ------------------------------------------------------------------ public API


def generate(cfg: SimConfig, policies: Policies | None = None) -> Simulation:
    """Simulate `cfg.events` input messages under `policies` (the pipeline's)."""
    policies = policies or Policies()
    g = _Gen(cfg, policies)
    n_bad = round(cfg.events * cfg.malformed_rate)
    n_dup = round(cfg.events * cfg.duplicate_delivery_rate)
    last = g.run(n_bad, n_dup)

    # duplicate deliveries: identical messages again, a little later
    n_dup = max(0, min(n_dup, cfg.events - g.valid - n_bad, g.valid))
    for i in sorted(g.rng.sample(range(g.valid), n_dup)):
        emit_ms, _, env = g.out[i]
        value = dict(env.value) if isinstance(env.value, dict) else env.value
        g.put(emit_ms + g.r(100, 3000), Envelope(env.topic, env.key, value))

    # malformed messages, spread over the stream, every variant in turn
    variants = list(MALFORMED_VARIANTS)
    g.rng.shuffle(variants)
    for i in range(n_bad):
        variant, code = variants[i % len(variants)]
        g.malformed(variant, code, g.r(g.start_ms, last))

    g.out.sort(key=lambda x: (x[0], x[1]))
    envelopes = [e for _, _, e in g.out]
    g.counts["malformed"] = n_bad
    g.counts["duplicates"] = n_dup
    g.counts["envelopes"] = len(envelopes)
    return Simulation(
        config=cfg,
        envelopes=envelopes,
        expected=g.expected,
        malformed=n_bad,
        duplicates=n_dup,
        counts=dict(sorted(g.counts.items())),
        start_ms=g.start_ms,
        end_ms=g.max_at,
    )


class LiveStream(Iterator[Envelope]):
    """An endless simulated stream (see `live_stream`). `expected` and `counts` grow as
    it is consumed; an anomaly is listed as soon as its order starts, before all of its
    messages have been yielded or its timers could fire."""

    def __init__(self, gen: _Gen, rate: float) -> None:
        self._gen = gen
        self._it = gen.live(rate)

    def __iter__(self) -> LiveStream:
        return self

    def __next__(self) -> Envelope:
        return next(self._it)

    @property
    def config(self) -> SimConfig:
        return self._gen.cfg

    @property
    def expected(self) -> set[tuple[str, str]]:
        return self._gen.expected

    @property
    def counts(self) -> dict[str, int]:
        return dict(sorted(self._gen.counts.items()))


def live_stream(
    rate: float,
    policies: Policies | None = None,
    *,
    seed: int | None = None,
    start: datetime | None = None,
    **config: Any,
) -> LiveStream:
    """Endless traffic for `tally run --simulate RATE`: consumed at `rate` messages per
    second, its event time follows the wall clock from `start` (default: now). Ids are
    prefixed with the start time, so runs against the same broker never collide.
    Further `SimConfig` fields (rates, channels, ...) may be given by name."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    now = start or datetime.now(UTC)
    start_s = int(now.timestamp())
    cfg = SimConfig(
        events=1,  # unused: the stream does not end
        seed=seed if seed is not None else _time.time_ns(),
        start=now,
        orders_per_second=rate / _EST_MESSAGES_PER_ORDER,
        id_prefix=config.pop("id_prefix", f"L{start_s:x}-"),
        **config,
    )
    return LiveStream(_Gen(cfg, policies or Policies()), rate)


def write_jsonl(sim: Simulation | Iterable[Envelope], path: str | Path) -> int:
    """One envelope per line (`Envelope.to_line`); returns the number of lines."""
    envelopes = sim.envelopes if isinstance(sim, Simulation) else sim
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for env in envelopes:
            f.write(env.to_line())
            f.write("\n")
            n += 1
    return n


def read_jsonl(path: str | Path) -> Iterator[Envelope]:
    """Envelopes from a file written by `write_jsonl` (or `tally produce` input);
    blank lines are skipped, errors name the line number."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield Envelope.from_line(line, lineno)


def describe(sim: Simulation) -> str:
    """A short human summary: sizes, event-time span, expected breaks by kind."""
    lines = [
        f"{len(sim.envelopes)} envelopes, {iso_ms(sim.start_ms)} .. {iso_ms(sim.end_ms)}",
        f"malformed {sim.malformed}, duplicate deliveries {sim.duplicates}",
        "expected breaks: " + ", ".join(f"{k} {n}" for k, n in sim.expected_by_kind().items()),
    ]
    return "\n".join(lines)
