"""Helpers of the real-time break tests: messages at seconds after T0 (10:00 in
Shanghai), a `LocalPipeline` fed with them, and what it raised."""

from __future__ import annotations

import itertools
import json
from typing import Any

from tally.core.breaks import Break
from tally.core.events import iso_ms, parse_timestamp
from tally.core.pipeline import CALLBACKS, TRANSACTIONS, LocalPipeline
from tally.core.policy import ChannelPolicy, Policies
from tally.core.realtime import Outputs

T0 = parse_timestamp("2026-03-02T02:00:00Z", "t0")  # 10:00 in Shanghai
SEC = 1000


def at(seconds: float) -> str:
    return iso_ms(T0 + int(seconds * SEC))


def ms(seconds: float) -> int:
    return T0 + int(seconds * SEC)


def txn(
    txn_id: str,
    status: str,
    t: float | str,
    *,
    type: str = "payment",
    amount: str = "100.00",
    currency: str = "CNY",
    channel: str = "wx",
    merchant: str = "m1",
    coupon: str | None = None,
    original: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    occurred = t if isinstance(t, str) else at(t)
    d: dict[str, Any] = {
        "event_id": event_id or f"{txn_id}:{status}:{occurred}",
        "txn_id": txn_id,
        "type": type,
        "merchant_id": merchant,
        "channel_id": channel,
        "amount": amount,
        "currency": currency,
        "status": status,
        "occurred_at": occurred,
    }
    if coupon is not None:
        d["coupon_amount"] = coupon
    if original is not None:
        d["original_txn_id"] = original
    return d


def cb(
    txn_id: str,
    source: str,
    status: str,
    t: float | str,
    *,
    amount: str = "100.00",
    currency: str = "CNY",
    channel: str = "wx",
    ctid: str | None = None,
    fee: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    occurred = t if isinstance(t, str) else at(t)
    ctid = ctid or f"ch-{txn_id}"
    return {
        "event_id": event_id or f"{txn_id}:{source}:{status}:{ctid}:{occurred}",
        "txn_id": txn_id,
        "channel_id": channel,
        "channel_txn_id": ctid,
        "source": source,
        "status": status,
        "amount": amount,
        "currency": currency,
        "fee": fee,
        "occurred_at": occurred,
    }


def feed(pipe: LocalPipeline, *msgs: dict[str, Any]) -> Outputs:
    total = Outputs()
    for m in msgs:
        topic = CALLBACKS if "source" in m else TRANSACTIONS
        total.extend(pipe.feed(topic, m["txn_id"], json.dumps(m).encode()))
    assert not pipe.dead_letters, [d.reason for d in pipe.dead_letters]
    return total


def pipeline(**channels: ChannelPolicy) -> LocalPipeline:
    return LocalPipeline(policies=Policies(channels), clock=lambda: 0)


def kinds(pipe: LocalPipeline, txn_id: str | None = None) -> list[str]:
    return sorted(b.kind for b in pipe.breaks.values() if txn_id is None or b.txn_id == txn_id)


def only(pipe: LocalPipeline, kind: str) -> Break:
    found = [b for b in pipe.breaks.values() if b.kind == kind]
    assert len(found) == 1, (kind, kinds(pipe))
    return found[0]


def run(msgs: list[dict[str, Any]], tick_s: float = 0, **channels: ChannelPolicy) -> LocalPipeline:
    pipe = pipeline(**channels)
    feed(pipe, *msgs)
    if tick_s:
        pipe.tick(int(tick_s * SEC))
    return pipe


def assert_same_breaks_in_every_order(
    msgs: list[dict[str, Any]], expected: list[str], **channels: ChannelPolicy
) -> None:
    for perm in itertools.permutations(msgs):
        pipe = run(list(perm), 0, **channels)
        assert kinds(pipe) == expected, ([m["event_id"] for m in perm], kinds(pipe))
