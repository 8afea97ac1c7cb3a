"""Clearing arithmetic (清分): what each order contributes to the running balances,
as double-entry postings, and the balances they add up to.

Every order has a *position*: the legs it currently contributes, each leg an
(account, bucket, component) with a signed amount in minor units. Accounts:

    channel:<id>         what the channel collected for us (asset, +)
    coupon:<channel>     platform-funded coupons owed by the marketing account (+)
    merchant:<id>        what we owe the merchant (liability, -)
    fees:<channel>       fees charged to merchants (income, -)

A payment of amount A with platform coupon C and channel fee F (S11):

    channel:<ch>   gross   +(A - C)
    coupon:<ch>    coupon  +C
    merchant:<m>   gross   -A
    merchant:<m>   fee     +F
    fees:<ch>      fee     -F

A refund of R:  channel:<ch> refund -R,  merchant:<m> refund +R.
A reversal moves its original's position to zero.

The bucket is the order's standing: `provisional` or `confirmed` (S10). When an
order's state changes, tally posts the difference between its new and old
position. Each position sums to zero per bucket, so every posting does too, and
at every moment:

    sum(merchant payable) + sum(fees) == sum(channel) + sum(coupon funding)

(payable and fees being the negated account balances). `BalanceBook.check()` and
the property tests hold tally to that after every event; `repost` checks each posting
nets to zero per bucket as it writes it (`assert_nets_to_zero`).

In: an order's state and view. Out: a `Posting` (the change of its position), and
`Balance`s, the postings applied per account and currency.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from tally.core.eventtime import iso_ms
from tally.core.money import format_minor
from tally.core.orders import STANDING_VALUE, OrderState, OrderView, Standing
from tally.core.records import OrderType
from tally.core.validation import parse_timestamp

_NONE = Standing.NONE
_PAYMENT, _REFUND = OrderType.PAYMENT.value, OrderType.REFUND.value

BUCKETS = ("provisional", "confirmed")
COMPONENTS = ("gross", "refund", "fee", "coupon")

Leg = tuple[str, str, str]  # (account, bucket, component)


def leg_key(account: str, bucket: str, component: str) -> str:
    return f"{account}|{bucket}|{component}"


def split_leg(key: str) -> Leg:
    a, b, c = key.split("|")
    return a, b, c


def position(state: OrderState, v: OrderView) -> dict[str, int]:
    """The legs an order contributes now, keyed by `leg_key`."""
    if v.standing is _NONE or state.type is None:
        return {}
    legs: dict[str, int] = {}
    if state.type == _PAYMENT:
        k_ch, k_coupon, k_m_gross, k_m_fee, k_fees = _payment_legs(
            state.channel_id, state.merchant_id, STANDING_VALUE[v.standing]
        )
        a, c, f = state.amount, state.coupon_amount, v.fee
        # five different legs: no two of them add up
        if a - c:
            legs[k_ch] = a - c
        if c:
            legs[k_coupon] = c
        if a:
            legs[k_m_gross] = -a
        if f:
            legs[k_m_fee] = f
            legs[k_fees] = -f
    elif state.type == _REFUND:
        k_ch, k_m = _refund_legs(state.channel_id, state.merchant_id, STANDING_VALUE[v.standing])
        if state.amount:
            legs[k_ch] = -state.amount
            legs[k_m] = state.amount
    # a reversal order has no position of its own: it zeroes its original's
    return legs


# The leg keys of an order depend on its channel, merchant and bucket only.
_LegKeys = tuple[str, ...]
_leg_keys: dict[tuple[str, str | None, str | None, str], _LegKeys] = {}


def _payment_legs(ch: str | None, m: str | None, bucket: str) -> _LegKeys:
    k = (_PAYMENT, ch, m, bucket)
    keys = _leg_keys.get(k)
    if keys is None:
        keys = _remember_legs(
            k,
            (
                leg_key(f"channel:{ch}", bucket, "gross"),
                leg_key(f"coupon:{ch}", bucket, "coupon"),
                leg_key(f"merchant:{m}", bucket, "gross"),
                leg_key(f"merchant:{m}", bucket, "fee"),
                leg_key(f"fees:{ch}", bucket, "fee"),
            ),
        )
    return keys


def _refund_legs(ch: str | None, m: str | None, bucket: str) -> _LegKeys:
    k = (_REFUND, ch, m, bucket)
    keys = _leg_keys.get(k)
    if keys is None:
        keys = _remember_legs(
            k,
            (
                leg_key(f"channel:{ch}", bucket, "refund"),
                leg_key(f"merchant:{m}", bucket, "refund"),
            ),
        )
    return keys


def _remember_legs(k: tuple[str, str | None, str | None, str], keys: _LegKeys) -> _LegKeys:
    if len(_leg_keys) >= 65536:
        _leg_keys.clear()
    _leg_keys[k] = keys
    return keys


def diff(new: dict[str, int], old: dict[str, int]) -> dict[str, int]:
    if not old:
        return {k: d for k, d in new.items() if d}
    out: dict[str, int] = {}
    for k in new.keys() | old.keys():
        d = new.get(k, 0) - old.get(k, 0)
        if d:
            out[k] = d
    return out


class Posting(msgspec.Struct, gc=False):
    """One balanced movement of the balances, caused by one change of one order.

    A msgspec struct rather than a dataclass: it holds strings, numbers and a dict of
    them, so it need not be tracked by the garbage collector."""

    posting_id: str  # <txn_id>:<seq>, stable across replays
    txn_id: str
    seq: int
    merchant_id: str | None
    channel_id: str | None
    currency: str
    reason: str  # the standing moved to: provisional | confirmed | none
    legs: dict[str, int]
    event_time_ms: int
    business_date: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "posting_id": self.posting_id,
            "txn_id": self.txn_id,
            "seq": self.seq,
            "merchant_id": self.merchant_id,
            "channel_id": self.channel_id,
            "currency": self.currency,
            "reason": self.reason,
            "business_date": self.business_date,
            "event_time": iso_ms(self.event_time_ms),
            "legs": [
                {
                    "account": a,
                    "bucket": b,
                    "component": c,
                    "amount": format_minor(amt, self.currency),
                    "amount_minor": amt,
                }
                for (a, b, c), amt in sorted((split_leg(k), v) for k, v in self.legs.items())
            ],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Posting:
        return cls(
            posting_id=d["posting_id"],
            txn_id=d["txn_id"],
            seq=d["seq"],
            merchant_id=d.get("merchant_id"),
            channel_id=d.get("channel_id"),
            currency=d["currency"],
            reason=d["reason"],
            legs={
                leg_key(x["account"], x["bucket"], x["component"]): int(x["amount_minor"])
                for x in d["legs"]
            },
            event_time_ms=parse_timestamp(d["event_time"], "event_time"),
            business_date=d.get("business_date"),
        )

    def legs_by_account(self) -> Iterator[tuple[str, dict[str, int]]]:
        """Group legs by account: what the balance agent applies per account key."""
        grouped: dict[str, dict[str, int]] = {}
        for k, v in self.legs.items():
            a, bc = _account_split(k)
            g = grouped.get(a)
            if g is None:
                grouped[a] = {bc: v}
            else:
                g[bc] = v
        yield from grouped.items()


_account_splits: dict[str, tuple[str, str]] = {}


def _account_split(key: str) -> tuple[str, str]:
    """A leg key as (account, "<bucket>|<component>"), remembered."""
    r = _account_splits.get(key)
    if r is None:
        a, b, c = split_leg(key)
        if len(_account_splits) >= 65536:
            _account_splits.clear()
        r = _account_splits[key] = (a, f"{b}|{c}")
    return r


def repost(state: OrderState, v: OrderView, event_time_ms: int) -> Posting | None:
    """Move the order's posted position to what its state now calls for."""
    if not state.posted and (v.standing is _NONE or state.type is None):
        return None  # nothing posted, nothing to post
    target = position(state, v)
    if target == state.posted:
        return None
    delta = diff(target, state.posted)
    if not delta:
        return None
    assert state.currency is not None
    seq = state.posting_seq + 1
    posting_id = f"{state.txn_id}:{seq}"
    assert_nets_to_zero(posting_id, state.currency, delta)  # before the state moves
    state.posting_seq = seq
    state.posted = target
    return Posting(
        posting_id=posting_id,
        txn_id=state.txn_id,
        seq=seq,
        merchant_id=state.merchant_id,
        channel_id=state.channel_id,
        currency=state.currency,
        reason=STANDING_VALUE[v.standing],
        legs=delta,
        event_time_ms=event_time_ms,
        business_date=state.business_date,
    )


def assert_nets_to_zero(posting_id: str, currency: str, legs: Mapping[str, int]) -> None:
    """The writing side of the double-entry invariant: a posting's legs (`leg_key` ->
    minor units, one currency) sum to zero in each bucket. `ImbalanceError` (an
    AssertionError) names the posting otherwise. Raised, not `assert`ed: it holds
    under `python -O` too."""
    sums: dict[str, int] = {}
    for k, v in legs.items():
        bucket = _bucket_of(k)
        sums[bucket] = sums.get(bucket, 0) + v
    off = {b: n for b, n in sums.items() if n}
    if off:
        raise ImbalanceError(
            f"posting {posting_id} does not net to zero: "
            + ", ".join(f"{currency} {b} {n:+d}" for b, n in sorted(off.items()))
        )


_buckets: dict[str, str] = {}


def _bucket_of(key: str) -> str:
    """A leg key's bucket, remembered."""
    b = _buckets.get(key)
    if b is None:
        if len(_buckets) >= 65536:
            _buckets.clear()
        b = _buckets[key] = split_leg(key)[1]
    return b


# ------------------------------------------------------------------ balances


@dataclass(slots=True)
class Balance:
    """Running balance of one account in one currency: amounts per bucket|component."""

    account: str
    currency: str
    amounts: dict[str, int] = field(default_factory=dict)  # "<bucket>|<component>"
    postings: int = 0

    def apply(self, legs: dict[str, int]) -> None:
        for k, v in legs.items():
            self.amounts[k] = self.amounts.get(k, 0) + v
        self.postings += 1

    def figures(self) -> dict[str, int]:
        """The non-zero amounts."""
        return {k: v for k, v in self.amounts.items() if v}

    def total(self, bucket: str | None = None, component: str | None = None) -> int:
        s = 0
        for k, v in self.amounts.items():
            b, c = k.split("|")
            if (bucket is None or b == bucket) and (component is None or c == component):
                s += v
        return s

    @property
    def kind(self) -> str:
        return self.account.split(":", 1)[0]

    @property
    def owner(self) -> str:
        return self.account.split(":", 1)[1]

    def summary(self) -> dict[str, Any]:
        """Human-facing figures, signed from the account holder's side: a merchant's
        `net` is what we owe it; a channel's `net` is what it collected for us."""
        sign = -1 if self.kind in ("merchant", "fees") else 1
        cur = self.currency
        by_bucket = {"provisional": 0, "confirmed": 0}
        by_component = {"gross": 0, "refund": 0, "fee": 0, "coupon": 0}
        net = 0
        for k, v in self.amounts.items():  # one pass: the same sums as total()
            b, c = k.split("|")
            by_bucket[b] = by_bucket.get(b, 0) + v
            by_component[c] = by_component.get(c, 0) + v
            net += v

        def fmt(x: int) -> str:
            return format_minor(sign * x, cur)

        return {
            "account": self.account,
            "currency": cur,
            "provisional": fmt(by_bucket["provisional"]),
            "confirmed": fmt(by_bucket["confirmed"]),
            "gross": fmt(by_component["gross"]),
            "refunds": fmt(by_component["refund"]),
            "fees": fmt(by_component["fee"]),
            "coupon_funding": fmt(by_component["coupon"]),
            "net": fmt(net),
            "postings": self.postings,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "currency": self.currency,
            "amounts": self.amounts,
            "postings": self.postings,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Balance:
        return cls(d["account"], d["currency"], dict(d["amounts"]), d["postings"])


def balance_key(account: str, currency: str) -> str:
    return f"{account}|{currency}"


def balances_from_positions(states: Iterable[OrderState]) -> dict[str, dict[str, int]]:
    """What the balances must hold given the orders' current positions: amounts
    (`<bucket>|<component>`, zeros left out) per `balance_key`. Each posting moves an
    order from its old position to its new one, so the postings applied to a balance
    add up to the sum of its orders' positions: a balance that differs missed (or
    doubled) a posting — after a crash between two changelog writes, say."""
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for st in states:
        if not st.posted or st.currency is None:
            continue
        for k, v in st.posted.items():
            account, bucket, component = split_leg(k)
            amounts = out[balance_key(account, st.currency)]
            c = f"{bucket}|{component}"
            amounts[c] = amounts.get(c, 0) + v
    return {k: nz for k, a in out.items() if (nz := {c: v for c, v in a.items() if v})}


class BalanceBook:
    """All balances, in memory: for tests, the simulator's oracle and summaries.
    The stream keeps the same `Balance` objects in a Faust table keyed by account."""

    def __init__(self) -> None:
        self.balances: dict[str, Balance] = {}
        self.applied: set[str] = set()

    def apply(self, p: Posting) -> bool:
        if p.posting_id in self.applied:
            return False
        self.applied.add(p.posting_id)
        # `Balance.apply` of each account's legs (`Posting.legs_by_account`), in one pass:
        # a balance counts one posting however many of its legs the posting moves
        cur = p.currency
        balances = self.balances
        touched: set[str] = set()
        for leg, v in p.legs.items():
            account, bc = _account_split(leg)
            k = f"{account}|{cur}"  # balance_key
            b = balances.get(k)
            if b is None:
                b = balances[k] = Balance(account, cur)
            amounts = b.amounts
            amounts[bc] = amounts.get(bc, 0) + v
            if k not in touched:
                touched.add(k)
                b.postings += 1
        return True

    def apply_all(self, postings: Iterable[Posting]) -> None:
        for p in postings:
            self.apply(p)

    def check(self) -> None:
        """The double-entry invariant, per currency and bucket."""
        assert_balanced(self.balances.values())


class ImbalanceError(AssertionError):
    """The double-entry invariant broken: by a posting, or by the balances."""


def invariant_sums(balances: Iterable[Balance]) -> dict[tuple[str, str], dict[str, int]]:
    """Per (currency, bucket): merchant payable, fees, channel, coupon funding."""
    sums: dict[tuple[str, str], dict[str, int]] = defaultdict(
        lambda: {"merchant": 0, "fees": 0, "channel": 0, "coupon": 0}
    )
    for b in balances:
        for bucket in BUCKETS:
            t = b.total(bucket)
            sign = -1 if b.kind in ("merchant", "fees") else 1
            sums[(b.currency, bucket)][b.kind] += sign * t
    return dict(sums)


def assert_balanced(balances: Iterable[Balance]) -> None:
    for (cur, bucket), s in invariant_sums(balances).items():
        if s["merchant"] + s["fees"] != s["channel"] + s["coupon"]:
            raise ImbalanceError(
                f"{cur} {bucket}: merchants {s['merchant']} + fees {s['fees']} != "
                f"channels {s['channel']} + coupon funding {s['coupon']}"
            )
