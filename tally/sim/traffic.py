"""Traffic simulator: a payment platform's input streams with a known answer.

`generate(cfg, policies)` produces the messages a platform would write to
`payments.transactions` (our own order records) and `payments.callbacks` (channel
evidence: sync responses, notifications, query answers), keyed by `txn_id` and
interleaved in event-time order. Besides ordinary traffic it injects anomalies
(`tally.sim.anomalies`), each built so that it produces exactly one real-time break,
and records the resulting `(break_kind, txn_id)` pairs in `Simulation.expected`: the
oracle that tests, the benchmark and demos compare the pipeline's breaks against. It
also injects malformed messages (`tally.sim.malformed`: all must end as dead letters)
and re-delivers some messages unchanged (they must change nothing). What to simulate
is a `SimConfig` (`tally.sim.config`).

Ordinary traffic (this module; none of it may raise a break):
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
import time as _time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tally.core.events import iso_ms
from tally.core.pipeline import TRANSACTIONS, Envelope
from tally.core.policy import Policies
from tally.sim import anomalies
from tally.sim.config import (
    ANOMALIES,
    BREAK_KIND,
    DEFAULT_ANOMALY_RATES,
    EST_MESSAGES_PER_ORDER,
    SimConfig,
    Simulation,
    default_start,
)
from tally.sim.malformed import MALFORMED_VARIANTS, malformed
from tally.sim.orders import OrderGen

__all__ = [
    "ANOMALIES",
    "BREAK_KIND",
    "DEFAULT_ANOMALY_RATES",
    "MALFORMED_VARIANTS",
    "LiveStream",
    "SimConfig",
    "Simulation",
    "default_start",
    "describe",
    "generate",
    "live_stream",
    "read_jsonl",
    "write_jsonl",
]

# Orders that must follow a timer's deadline so every partition's watermark passes it.
_TAIL_ORDERS = 200
_TAIL_MIN_MS = 10_000

# one kind of order: `unit(g, t)` builds one, created at event time t, and emits it
Unit = Callable[[OrderGen, int], None]


# -------------------------------------------------------------- ordinary orders


def plain(g: OrderGen, t: int) -> None:
    """A successful payment; now and then our record lags the channel's evidence."""
    o = g.payment(t)
    g.succeed(o, t)
    pol = g.policy(o.channel_id)
    if pol.orphan_grace_seconds >= 20 and g.rng.random() < g.cfg.late_record_rate:
        d = g.r(1000, 12_000)  # our record lags the channel's evidence (topic lag)
        for s in o.steps:
            if s.topic == TRANSACTIONS:
                s.delay = d
        g.counts["late_record"] += 1
    g.counts["payment_success"] += 1
    g.emit(o)


def failed(g: OrderGen, t: int) -> None:
    """A payment the channel declines (in the sync answer, or by a later notify)."""
    o = g.payment(t)
    pol = g.policy(o.channel_id)
    o.txn("pending", t)
    ts = t + g.r(150, 1500)
    if g.rng.random() < 0.7:
        o.cb("sync", "failed", ts)
    else:
        if g.rng.random() < 0.5:
            o.cb("sync", "pending", ts)
        ts += g.r(500, g.fast(pol))
        o.cb("notify", "failed", ts)
    o.txn("failed", ts + g.r(20, 300))
    g.counts["payment_failed"] += 1
    g.emit(o)


def closed(g: OrderGen, t: int) -> None:
    """The payer never paid; we close the order, the channel never says more."""
    o = g.payment(t)
    pol = g.policy(o.channel_id)
    o.txn("pending", t)
    if g.rng.random() < 0.5:
        o.cb("sync", "pending", t + g.r(150, 1500))
    o.txn("closed", t + g.r(2000, max(2000, min(25_000, pol.sla_seconds * 1000 - 2000))))
    g.counts["payment_closed"] += 1
    g.emit(o)


def query_resolved(g: OrderGen, t: int) -> None:
    """S4 resolved: no answer until we query; the query answer decides."""
    o = g.payment(t)
    pol = g.policy(o.channel_id)
    o.txn("pending", t)
    o.cb("sync", "pending", t + g.r(150, 1500))
    sla = pol.sla_seconds * 1000
    lo, hi = sla + 1500, sla + pol.max_queries * pol.query_interval_seconds * 1000 - 3000
    ta = t + (g.r(lo, hi) if hi >= lo else max(2000, sla - 2000))
    if g.rng.random() < 0.85:
        o.cb("query", "success", ta, fee=o.fee)
        o.txn("success", ta + g.r(20, 300))
    else:
        o.cb("query", "failed", ta)
        o.txn("failed", ta + g.r(20, 300))
    g.counts["query_resolved"] += 1
    g.emit(o)


def refund(g: OrderGen, t: int) -> None:
    """S13: a refund of an earlier payment, accepted first, final later."""
    rng = g.rng
    o = g.payment(t)
    g.succeed(o, t)
    tr = o.last + g.r(2000, 120_000)
    r = g.follow_up(o, "refund", tr, g.r(1, o.collect))
    pol = g.policy(o.channel_id)
    r.txn("pending", tr)
    ta = tr + g.r(150, 1500)
    r.cb("sync", "pending", ta)  # "accepted"
    if rng.random() < 0.3:
        r.cb("notify", "pending", ta + g.r(1000, 30_000))
    tf = ta + g.r(5000, min(180_000, pol.refund_sla_seconds * 1000 // 2))
    if rng.random() < 0.92:
        r.cb("notify", "success", tf)
        r.txn("success", tf + g.r(20, 300))
        tro = tf + g.r(100, 2000)
        if rng.random() < 0.3 and tro < g.cutoff(o.channel_id, o.created_ms):
            o.cb("notify", "refunded", tro)  # the channel also marks the sale refunded
            g.counts["refunded_notify"] += 1
        g.counts["refund"] += 1
    else:
        r.cb("notify", "failed", tf)
        r.txn("failed", tf + g.r(20, 300))
        g.counts["refund_failed"] += 1
    g.emit(o)
    g.emit(r)


def reversal(g: OrderGen, t: int) -> None:
    """S1: the POS got no answer, printed no receipt and reversed the sale. The
    sale stays pending at our side (then failed/closed); not a break."""
    rng = g.rng
    o = g.payment(t, pos=True, coupon=False)
    o.txn("pending", t)
    if rng.random() < 0.6:
        o.cb("sync", "pending", t + g.r(150, 1500))
    tr = t + g.r(1000, 3000)
    if rng.random() < 0.25:  # the reversal failed; re-sent with the next transaction
        r1 = g.follow_up(o, "reversal", tr, o.amount)
        r1.txn("pending", tr)
        ts = tr + g.r(150, 1000)
        r1.cb("sync", "failed", ts)
        r1.txn("failed", ts + g.r(20, 300))
        g.emit(r1)
        tr = ts + g.r(1000, 4000)
        g.counts["reversal_resent"] += 1
    r = g.follow_up(o, "reversal", tr, o.amount)
    ts = g.succeed(r, tr, sync=True)
    o.txn(rng.choice(("failed", "closed")), ts + g.r(100, 2000))
    g.counts["reversal"] += 1
    g.emit(o)
    g.emit(r)


# ------------------------------------------------------------------ the stream


class _Gen(OrderGen):
    """Orders one after another, at the configured rates, until the stream is long
    enough (`run`) or without end (`live`)."""

    def __init__(self, cfg: SimConfig, policies: Policies) -> None:
        super().__init__(cfg, policies)
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
        self.table: list[tuple[float, Unit]] = [
            (rates["status_conflict"], anomalies.status_conflict),
            (rates["amount_mismatch"], anomalies.amount_mismatch),
            (rates["currency_mismatch"], anomalies.currency_mismatch),
            (rates["duplicate_success"], anomalies.duplicate_success),
            (rates["shared_channel_txn"], anomalies.shared_channel_txn),
            (rates["reversal_after_success"], anomalies.reversal_after_success),
            (rates["orphan_callback"], anomalies.orphan_callback),
            (rates["pending_timeout"], anomalies.pending_timeout),
            (cfg.failed_rate, failed),
            (cfg.closed_rate, closed),
            (cfg.refund_rate, refund),
            (cfg.reversal_rate, reversal),
            (cfg.query_resolved_rate, query_resolved),
        ]

    def unit(self, t: int) -> None:
        """One order created at `t`: a late callback near a cutoff at its rate, else
        the kind the rate table draws (a timed anomaly only where traffic follows)."""
        rng = self.rng
        late = self.cfg.rates["late_callback"]
        if late > 0:
            chans = anomalies.late_channels(self, t)
            if chans and rng.random() < late:
                anomalies.late_callback(self, t, rng.choice(chans))
                return
        x = rng.random()
        for rate, build in self.table:
            if x < rate:
                if build is anomalies.pending_timeout and not self.room(t, self.timeout_rel):
                    break
                if build is anomalies.orphan_callback and not self.room(t, self.orphan_rel):
                    break
                build(self, t)
                return
            x -= rate
        plain(self, t)

    def room(self, t: int, rel: int) -> bool:
        """Whether enough traffic follows `t + rel` for every watermark to pass it."""
        return t + rel + self.tail_ms <= self.t_end_est

    def run(self, n_malformed: int, duplicates: int) -> int:
        """Generate ordinary traffic and anomalies; returns the last order's start."""
        cfg = self.cfg
        target = max(1, cfg.events - n_malformed - duplicates)
        gap_us = max(1, round(1_000_000 / cfg.orders_per_second))
        t_us = self.start_ms * 1000
        units = 0
        t = self.start_ms
        while True:
            t = t_us // 1000
            if self.valid >= target and t > self.need_until + self.tail_ms:
                return t
            avg = self.valid / units if units >= 50 else EST_MESSAGES_PER_ORDER
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
                    malformed(self, variant, code, emit_ms)
                    self.counts["malformed"] += 1
                    for item in self.out:
                        heapq.heappush(heap, item)
                    self.out.clear()
            per_order = (self.valid / units if units >= 50 else EST_MESSAGES_PER_ORDER) * (
                1 + cfg.duplicate_delivery_rate + cfg.malformed_rate
            )
            gap_us = max(1, round(1_000_000 * per_order / rate))
            t_us += rng.randint(gap_us // 2, gap_us * 3 // 2)


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
        malformed(g, variant, code, g.r(g.start_ms, last))

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
        orders_per_second=rate / EST_MESSAGES_PER_ORDER,
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
