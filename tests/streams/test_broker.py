"""Integration: the real Faust agents on the real embedded Tansu broker give the
same breaks, postings and balances as the pure core."""

from __future__ import annotations

from typing import Any

import pytest

from tally.core.pipeline import CALLBACKS, TRANSACTIONS, Envelope, LocalPipeline, partition_for
from tests.streams.streamrun import run_stream, stream_settings

pytestmark = pytest.mark.broker


def txn(eid: str, txn_id: str, status: str, at: str, **kw: Any) -> Envelope:
    v = {
        "event_id": eid,
        "txn_id": txn_id,
        "type": kw.pop("type", "payment"),
        "merchant_id": kw.pop("merchant", "m1"),
        "channel_id": kw.pop("channel", "wechat"),
        "amount": kw.pop("amount", "100.00"),
        "currency": kw.pop("currency", "CNY"),
        "status": status,
        "occurred_at": at,
        **kw,
    }
    return Envelope(TRANSACTIONS, txn_id, v)


def cb(eid: str, txn_id: str, source: str, status: str, at: str, **kw: Any) -> Envelope:
    v = {
        "event_id": eid,
        "txn_id": txn_id,
        "channel_id": kw.pop("channel", "wechat"),
        "channel_txn_id": kw.pop("ctid", f"ch-{txn_id}"),
        "source": source,
        "status": status,
        "amount": kw.pop("amount", "100.00"),
        "currency": kw.pop("currency", "CNY"),
        "fee": kw.pop("fee", "0.60"),
        "occurred_at": at,
        **kw,
    }
    return Envelope(CALLBACKS, txn_id, v)


def scenario() -> list[Envelope]:
    d = "2026-11-24T10:"
    return [
        # a clean payment with a platform coupon (S11): channel collects 90.00
        txn("a1", "ok-1", "pending", d + "00:00+08:00", coupon_amount="10.00"),
        cb("a2", "ok-1", "sync", "success", d + "00:01+08:00", amount="90.00"),
        txn("a3", "ok-1", "success", d + "00:01+08:00", coupon_amount="10.00"),
        cb("a4", "ok-1", "notify", "success", d + "00:02+08:00", amount="90.00"),
        # S6 amount mismatch
        txn("b1", "amt-1", "pending", d + "00:03+08:00"),
        cb("b2", "amt-1", "notify", "success", d + "00:04+08:00", amount="99.99"),
        # S1 two channel successes for one order
        txn("c1", "dup-1", "pending", d + "00:05+08:00"),
        cb("c2", "dup-1", "notify", "success", d + "00:06+08:00", ctid="X1"),
        cb("c3", "dup-1", "notify", "success", d + "00:07+08:00", ctid="X2"),
        # S2 reversal after success, via a reversal order (cross-partition link)
        txn("d1", "sale-1", "pending", d + "00:08+08:00"),
        cb("d2", "sale-1", "notify", "success", d + "00:09+08:00"),
        txn("d3", "sale-1", "success", d + "00:09+08:00"),
        txn("d4", "rev-1", "success", d + "00:10+08:00", type="reversal", original_txn_id="sale-1"),
        # S5 orphan: evidence for an order that never arrives
        cb("e1", "ghost-1", "notify", "success", d + "00:11+08:00"),
        # S4 pending forever
        txn("f1", "stuck-1", "pending", d + "00:12+08:00"),
        # a refund of the clean payment
        txn(
            "g1",
            "rf-1",
            "pending",
            d + "00:13+08:00",
            type="refund",
            original_txn_id="ok-1",
            amount="20.00",
        ),
        cb("g2", "rf-1", "notify", "refunded", d + "00:14+08:00", amount="20.00", fee=None),
        # a malformed message and a re-delivery
        Envelope(CALLBACKS, "bad-1", "{not json"),
        cb("a4", "ok-1", "notify", "success", d + "00:02+08:00", amount="90.00"),
        # event time moves on in every partition: timers for orphan and pending fire
        *tail_orders(d + "05:00+08:00"),
    ]


def net_by_order(postings: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    net: dict[str, dict[str, int]] = {}
    for p in postings:
        legs = net.setdefault(p["txn_id"], {})
        for leg in p["legs"]:
            k = f"{leg['account']}|{leg['bucket']}|{leg['component']}"
            legs[k] = legs.get(k, 0) + leg["amount_minor"]
    return {t: {k: v for k, v in legs.items() if v} for t, legs in net.items()}


def tail_orders(at: str, partitions: int = 4) -> list[Envelope]:
    out: list[Envelope] = []
    covered: set[int] = set()
    i = 0
    while len(covered) < partitions:
        t = f"tail-{i}"
        p = partition_for(t, partitions)
        if p not in covered:
            covered.add(p)
            out += [
                txn(f"{t}-1", t, "pending", at),
                cb(f"{t}-2", t, "notify", "success", at),
                txn(f"{t}-3", t, "success", at),
            ]
        i += 1
    return out


async def test_stream_matches_pure_core(broker) -> None:
    events = scenario()
    local = LocalPipeline(partitions=4, clock=lambda: 0)
    local.feed_all(events)
    # no wall-clock ticks: the comparison is about event time only
    s = stream_settings(broker, idle_tick_seconds=3600)
    res = await run_stream(s, [events])

    assert res.break_set() == local.break_set()
    assert {k for k, _ in res.break_set()} >= {
        "amount_mismatch",
        "duplicate_success",
        "reversal_after_success",
        "orphan_callback",
        "pending_timeout",
    }
    assert len(res.dead_letters) == 1
    assert res.dead_letters[0]["code"] == "bad_json"
    assert res.dead_letters[0]["topic"] == s.topic_callbacks
    # postings on the topic add up, order by order, to the pure core's: the path
    # may differ (the two input topics interleave differently) but not the result
    assert net_by_order(res.postings) == net_by_order([p.to_json() for p in local.postings])
    # the worker's balance table equals the pure core's balances
    expect = {k: {a: v for a, v in b.amounts.items() if v} for k, b in local.book.balances.items()}
    assert res.balance_figures() == expect
    # status queries were requested for the stuck order before it timed out
    stuck = [q for q in res.queries if q["txn_id"] == "stuck-1"]
    assert [q["attempt"] for q in sorted(stuck, key=lambda q: q["attempt"])] == [1, 2, 3]
