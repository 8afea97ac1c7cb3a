"""Order scripts: the steps (our records and the channel's evidence) of one simulated
order, and `OrderGen`, the state every kind of order is built from (the seeded
random source, ids, business-day cutoffs, the envelopes written so far, the
expected breaks and the counts). The ordinary orders are in `tally.sim.traffic`,
the anomalies in `tally.sim.anomalies`, malformed messages in `tally.sim.malformed`.

Money is integer minor units throughout; floats only drive random choices.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from tally.core.events import Callback, Transaction, to_epoch_ms
from tally.core.money import exponent
from tally.core.pipeline import CALLBACKS, TRANSACTIONS, Envelope
from tally.core.policy import ChannelPolicy, Policies
from tally.sim.config import BREAK_KIND, FALLBACK_FEE_BPS, SimConfig

__all__ = ["OrderGen", "OrderScript", "Step"]

# Order amounts in major units: (low, high, weight); JPY amounts are x100.
_AMOUNT_BANDS = ((1, 10, 30), (10, 100, 40), (100, 1000, 25), (1000, 20000, 5))
_AMOUNT_SCALE = {"JPY": 100, "KRW": 1000}


@dataclass(slots=True)
class Step:
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
class OrderScript:
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
    steps: list[Step] = field(default_factory=list)

    @property
    def collect(self) -> int:
        """What the channel collects: the amount less the platform coupon (S11)."""
        return self.amount - self.coupon

    @property
    def last(self) -> int:
        return max(s.at for s in self.steps)

    def txn(self, status: str, at: int) -> Step:
        s = Step(at, TRANSACTIONS, status)
        self.steps.append(s)
        return s

    def cb(self, source: str, status: str, at: int, *, fee: int | None = None) -> Step:
        s = Step(at, CALLBACKS, status, source, self.collect, self.currency, self.ctid, fee)
        self.steps.append(s)
        return s

    def callbacks(self, source: str | None = None) -> list[Step]:
        return [
            s for s in self.steps if s.topic == CALLBACKS and (source is None or s.source == source)
        ]


class OrderGen:
    """What building orders needs: the random source, ids, cutoffs, and where the
    envelopes, the expected breaks and the counts go."""

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
        self.next_cut: dict[str, int] = {}
        self.channels = list(dict.fromkeys(cfg.channels))
        self.pos = [c for c in self.channels if c in cfg.pos_channels] or self.channels
        self.currencies = list(cfg.currencies)
        self.currency_weights = [cfg.currencies[c] for c in self.currencies]
        self.max_at = self.start_ms  # latest event time of a well-formed message
        self.need_until = 0  # latest timer deadline (event time incl. lateness)
        self.t_end_est = 0

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
        bps = self.cfg.fee_bps.get(channel, FALLBACK_FEE_BPS)
        return (collect * bps + 5000) // 10000

    def payment(
        self,
        t: int,
        *,
        channel: str | None = None,
        pos: bool = False,
        coupon: bool | None = None,
        currency: str | None = None,
    ) -> OrderScript:
        """A new payment order (no steps yet). coupon: None = at the configured rate."""
        rng = self.rng
        ch = channel or rng.choice(self.pos if pos else self.channels)
        m = rng.randrange(self.cfg.merchants)
        cur = currency or rng.choices(self.currencies, self.currency_weights)[0]
        amount = self.amount(cur)
        if amount < 2:
            amount = 2
        o = OrderScript(
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

    def follow_up(self, o: OrderScript, type_: str, t: int, amount: int) -> OrderScript:
        """A refund or reversal of `o`, created at `t`."""
        self.counts["orders"] += 1
        return OrderScript(
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

    def succeed(self, o: OrderScript, t: int, *, sync: bool | None = None) -> int:
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

    def emit(self, o: OrderScript, *, clamp: bool = True) -> None:
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
