"""Clearing (清分, S11, S14): what each merchant is owed for a business day, the
arithmetic. Plain functions over plain dataclasses, no I/O: `recon.settle` reads the
items and the postings from ClickHouse and calls these.

For one business date D (the channel-local date of each order, as the stream keeps it)
and per merchant and currency, over the orders the channel **confirmed** (standing
`confirmed` in `order_states`: the confirmed bucket of the balances, S10; provisional
items are shown apart and never paid):

    gross           sum of A over successful payments (A: the order amount, coupon
                    included: the merchant is owed the whole order amount, S11)
    coupon_funding  sum of C over those payments: the part of gross that the platform's
                    marketing account pays (a platform-funded coupon; the channel
                    collected A - C). Informational: already inside gross, never
                    added again
    refunds         sum of R over successful refunds
    fees            sum of F over successful payments (the channel fee charged on to
                    the merchant)
    net payable     gross - refunds - fees

All figures are positive numbers from the merchant's side: `net` is what we owe it.
They are the negated confirmed balance of the account `merchant:<id>` restricted to
the postings of business date D (tally/core/ledger.py: a payment posts gross -A and fee
+F to the merchant, a refund posts refund +R; the coupon leg +C sits on
`coupon:<channel>`, not on the merchant), so

    net == -(sum of confirmed `merchant:<id>` postings with business_date D)

and `recon.settle.posted_totals` reads exactly that sum for `disagreements`.

Hold-back (S14: a channel break puts the dependent settlement line at risk): a payment
with an open suspense entry (a break found in real time or at the end of the day, not
yet written off) is not paid: `held_items` counts those payments and `held_amount` is
their A - F. A refund under suspense stays deducted (the conservative side: the
merchant is never paid more than the undisputed figure). `payable` = net - held_amount.

Money is integer minor units here; `to_minor_units` converts Decimals exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from tally.core.money import exponent, format_minor

__all__ = [
    "MerchantSettlement",
    "SettleItem",
    "Settlement",
    "disagreements",
    "settlement",
    "to_minor_units",
    "totals",
]


def to_minor_units(amount: Decimal | None, currency: str) -> int:
    """A ClickHouse Decimal in major units to exact integer minor units."""
    if amount is None:
        return 0
    scaled = amount.scaleb(exponent(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} {currency} has more digits than the currency has")
    return int(scaled)


@dataclass(frozen=True, slots=True)
class SettleItem:
    """One confirmed order of the day, as settlement sees it (minor units)."""

    txn_id: str
    merchant_id: str
    channel_id: str
    currency: str
    kind: str  # payment | refund
    amount: int  # A for a payment, R for a refund
    coupon: int = 0  # C (payments)
    fee: int = 0  # F (payments)

    @property
    def net(self) -> int:
        """What the item adds to the merchant's payable."""
        return self.amount - self.fee if self.kind == "payment" else -self.amount


@dataclass(slots=True)
class MerchantSettlement:
    merchant_id: str
    currency: str
    payments: int = 0
    refund_count: int = 0
    gross: int = 0
    refunds: int = 0
    fees: int = 0
    coupon_funding: int = 0
    held_items: int = 0
    held_amount: int = 0
    held_txn_ids: list[str] = field(default_factory=list)

    @property
    def net(self) -> int:
        return self.gross - self.refunds - self.fees

    @property
    def payable(self) -> int:
        return self.net - self.held_amount

    def add(self, item: SettleItem, held: bool) -> None:
        if item.kind == "payment":
            self.payments += 1
            self.gross += item.amount
            self.fees += item.fee
            self.coupon_funding += item.coupon
            if held:
                self.held_items += 1
                self.held_amount += item.net
                self.held_txn_ids.append(item.txn_id)
        elif item.kind == "refund":
            self.refund_count += 1
            self.refunds += item.amount
        else:
            raise ValueError(
                f"{item.txn_id}: settlement takes payments and refunds, not {item.kind}"
            )

    def to_json(self) -> dict[str, Any]:
        """Money as decimal strings in the currency's digits."""
        c = self.currency
        d = asdict(self)
        for k in ("gross", "refunds", "fees", "coupon_funding", "held_amount"):
            d[k] = format_minor(d[k], c)
        d["net"] = format_minor(self.net, c)
        d["payable"] = format_minor(self.payable, c)
        d["held_txn_ids"] = sorted(self.held_txn_ids)
        return d


def settlement(items: Iterable[SettleItem], held: Iterable[str] = ()) -> list[MerchantSettlement]:
    """Pure: per (merchant, currency), sorted; `held` are txn ids with an open suspense
    entry."""
    held_ids = set(held)
    out: dict[tuple[str, str], MerchantSettlement] = {}
    for it in items:
        k = (it.merchant_id, it.currency)
        m = out.get(k)
        if m is None:
            m = out[k] = MerchantSettlement(it.merchant_id, it.currency)
        m.add(it, it.txn_id in held_ids)
    return [out[k] for k in sorted(out)]


def totals(rows: Iterable[MerchantSettlement]) -> list[MerchantSettlement]:
    """One line per currency: the sum over merchants (merchant_id '*')."""
    out: dict[str, MerchantSettlement] = {}
    for r in rows:
        t = out.get(r.currency)
        if t is None:
            t = out[r.currency] = MerchantSettlement("*", r.currency)
        for k in (
            "payments",
            "refund_count",
            "gross",
            "refunds",
            "fees",
            "coupon_funding",
            "held_items",
            "held_amount",
        ):
            setattr(t, k, getattr(t, k) + getattr(r, k))
        t.held_txn_ids.extend(r.held_txn_ids)
    return [out[c] for c in sorted(out)]


def disagreements(
    rows: Iterable[MerchantSettlement], posted: Mapping[tuple[str, str], Mapping[str, int]]
) -> list[str]:
    """Pure: where settlement and the stream's postings differ (empty when they agree).
    gross = -gross legs, fees = fee legs, refunds = -refund legs."""
    mine = {(r.merchant_id, r.currency): r for r in rows}
    out = []
    for k in sorted(set(mine) | {k for k, v in posted.items() if any(v.values())}):
        r = mine.get(k)
        p = posted.get(k, {})
        want = {
            "gross": p.get("gross", 0),
            "refunds": -p.get("refund", 0),
            "fees": -p.get("fee", 0),
            "net": p.get("net", 0),
        }
        have = (
            {"gross": r.gross, "refunds": r.refunds, "fees": r.fees, "net": r.net}
            if r is not None
            else dict.fromkeys(want, 0)
        )
        for name, v in want.items():
            if have[name] != v:
                out.append(f"{k[0]} {k[1]} {name}: settlement {have[name]}, postings {v}")
    return out


@dataclass
class Settlement:
    day: str
    channel: str | None
    merchants: list[MerchantSettlement]
    totals: list[MerchantSettlement]
    disagreements: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "business_date": self.day,
            "channel": self.channel,
            "merchants": [m.to_json() for m in self.merchants],
            "totals": [t.to_json() for t in self.totals],
            "agrees_with_postings": not self.disagreements,
            "disagreements": self.disagreements,
        }
