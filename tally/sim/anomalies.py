"""The anomalies the traffic simulator injects: each builds one order (two for
`shared_channel_txn`) so that it raises exactly one real-time break, and records the
`(break_kind, txn_id)` it must raise (`OrderGen.expect`). Rates: `SimConfig.rates`,
fractions of orders.

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
                          that can show it (`late_channels`)
"""

from __future__ import annotations

from tally.sim.orders import OrderGen

__all__ = [
    "amount_mismatch",
    "currency_mismatch",
    "duplicate_success",
    "late_callback",
    "late_channels",
    "orphan_callback",
    "pending_timeout",
    "reversal_after_success",
    "shared_channel_txn",
    "status_conflict",
]


def status_conflict(g: OrderGen, t: int) -> None:
    """Ours success / channel failed, ours closed / notify success (S5), or the
    channel's sync and notify disagree."""
    o = g.payment(t)
    fast = g.fast(g.policy(o.channel_id))
    v = g.rng.randrange(3)
    o.txn("pending", t)
    ts = t + g.r(150, 1500)
    if v == 0:  # we hold success, the channel says failed
        if g.rng.random() < 0.5:
            o.cb("sync", "pending", ts)
        o.txn("success", ts + g.r(20, 500))
        o.cb("notify", "failed", ts + g.r(600, fast))
    elif v == 1:  # S5: we closed the order, the channel notifies success
        tc = t + g.r(2000, 10_000)
        o.txn("closed", tc)
        o.cb("notify", "success", tc + g.r(500, fast), fee=o.fee)
    else:  # the channel's witnesses disagree
        o.cb("sync", "success", ts)
        o.txn("success", ts + g.r(20, 300))
        o.cb("notify", "failed", ts + g.r(500, fast))
    g.expect("status_conflict", o.txn_id)
    g.emit(o)


def amount_mismatch(g: OrderGen, t: int) -> None:
    """The channel reports another amount, or ignores the platform coupon (S11)."""
    if g.rng.random() < 0.3:  # S11: the channel ignored the platform coupon
        o = g.payment(t, coupon=True)
        g.succeed(o, t)
        for s in o.callbacks():
            s.amount = o.amount
        g.counts["amount_mismatch_coupon"] += 1
    else:
        o = g.payment(t)
        g.succeed(o, t)
        s = o.callbacks("notify")[-1]
        delta = g.r(1, max(1, min(100, o.collect // 10)))
        s.amount = (
            o.collect - delta if o.collect > delta and g.rng.random() < 0.5 else (o.collect + delta)
        )
    g.expect("amount_mismatch", o.txn_id)
    g.emit(o)


def currency_mismatch(g: OrderGen, t: int) -> None:
    """One witness reports another currency."""
    only = g.cfg.currency_mismatch_channels
    o = g.payment(t, channel=g.rng.choice(only) if only else None)
    g.succeed(o, t)
    others = [c for c in g.currencies if c != o.currency] or [
        "USD" if o.currency != "USD" else "CNY"
    ]
    s = g.rng.choice(o.callbacks())
    s.currency = g.rng.choice(others)
    g.expect("currency_mismatch", o.txn_id)
    g.emit(o)


def duplicate_success(g: OrderGen, t: int) -> None:
    """S1: a retried sale succeeds a second time at the channel."""
    o = g.payment(t, pos=g.rng.random() < 0.5)
    g.succeed(o, t, sync=True)
    s = o.cb("notify", "success", o.last + g.r(2000, 10_000), fee=o.fee)
    s.ctid = g.ctid(o.channel_id)
    g.expect("duplicate_success", o.txn_id)
    g.emit(o)


def shared_channel_txn(g: OrderGen, t: int) -> None:
    """One channel_txn_id reported as success on two orders: the break belongs to
    the later claim by event time; b starts after a's last message, so b's claims
    are later both in event time and in arrival."""
    a = g.payment(t)
    g.succeed(a, t)
    tb = a.last + g.r(2000, 20_000)
    b = g.payment(tb, channel=a.channel_id)
    b.ctid = a.ctid
    g.succeed(b, tb)
    g.expect("shared_channel_txn", b.txn_id)
    g.emit(a)
    g.emit(b)


def reversal_after_success(g: OrderGen, t: int) -> None:
    """S2: receipt printed, success reported, then a reversal arrives."""
    if g.rng.random() < 0.5:
        o = g.payment(t, pos=True, coupon=False)
        g.succeed(o, t, sync=True)
        tr = o.last + g.r(2000, 30_000)
        r = g.follow_up(o, "reversal", tr, o.amount)
        g.succeed(r, tr, sync=True)
        g.emit(r)
        g.counts["reversal_after_success_order"] += 1
    else:
        o = g.payment(t)
        g.succeed(o, t)
        o.cb("notify", "reversed", o.last + g.r(2000, 30_000))
        g.counts["reversal_after_success_notify"] += 1
    g.expect("reversal_after_success", o.txn_id)
    g.emit(o)


def orphan_callback(g: OrderGen, t: int) -> None:
    """S5: evidence for an order that never reaches us."""
    o = g.payment(t)
    if g.rng.random() < 0.8:
        o.cb("notify", "success", t, fee=o.fee)
    else:
        o.cb("notify", "failed", t)
    grace = g.policy(o.channel_id).orphan_grace_seconds * 1000
    g.need_until = max(g.need_until, t + grace + g.cfg.allowed_lateness_ms)
    g.expect("orphan_callback", o.txn_id)
    g.emit(o, clamp=False)


def pending_timeout(g: OrderGen, t: int) -> None:
    """S4: the channel never answers, not even our status queries."""
    o = g.payment(t)
    pol = g.policy(o.channel_id)
    o.txn("pending", t)
    if g.rng.random() < 0.7:
        o.cb("sync", "pending", t + g.r(150, 1500))
    if g.rng.random() < 0.2:  # we believed the front end; the channel never confirms
        o.txn("success", t + g.r(200, 2000))
    due = t + (pol.sla_seconds + pol.max_queries * pol.query_interval_seconds) * 1000
    g.need_until = max(g.need_until, due + g.cfg.allowed_lateness_ms)
    g.expect("pending_timeout", o.txn_id)
    g.emit(o)


def late_callback(g: OrderGen, t: int, channel: str) -> None:
    """S12: created just before the channel's cutoff, final answer just after it
    (but within the SLA)."""
    o = g.payment(t, channel=channel)
    pol = g.policy(channel)
    cut = g.cutoff(channel, t)
    vmax = min(8000, pol.sla_seconds * 1000 - (cut - t) - 1000)
    o.txn("pending", t)
    if g.rng.random() < 0.6:
        o.cb("sync", "pending", min(t + g.r(150, 1500), cut - 1))
    tf = cut + g.r(0, vmax)
    if g.rng.random() < 0.85:
        o.cb("notify", "success", tf, fee=o.fee)
        o.txn("success", tf + g.r(20, 300))
    else:
        o.cb("notify", "failed", tf)
        o.txn("failed", tf + g.r(20, 300))
    g.expect("late_callback", o.txn_id)
    g.emit(o, clamp=False)


def late_channels(g: OrderGen, t: int) -> list[str]:
    """Channels whose cutoff is close enough after `t` for a late_callback order."""
    window = g.cfg.late_window_seconds * 1000
    out = []
    for ch in g.channels:
        c = g.next_cut.get(ch)
        if c is None or t >= c:
            c = g.next_cut[ch] = g.cutoff(ch, t)
        u = c - t
        if 1000 <= u <= window and g.policy(ch).sla_seconds * 1000 - u - 1000 >= 300:
            out.append(ch)
    return out
