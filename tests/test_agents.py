"""The Faust agents in isolation, with Faust's own `agent.test_context()`: no broker,
the tables in memory, messages put straight into each agent's stream."""

from __future__ import annotations

import json
from typing import Any

import pytest

from streams.app import Tally, account_balances, create_app
from tally.config import Settings


@pytest.fixture()
def tally() -> Tally:
    t = create_app(Settings(_env_file=None, web_port=0))  # type: ignore[call-arg]
    t.app.finalize()
    t.app.flow_control.resume()
    return t


def txn(eid: str, txn_id: str, status: str, at: str, **kw: Any) -> bytes:
    return json.dumps(
        {
            "event_id": eid,
            "txn_id": txn_id,
            "type": "payment",
            "merchant_id": "m1",
            "channel_id": "wechat",
            "amount": kw.get("amount", "100.00"),
            "currency": "CNY",
            "status": status,
            "occurred_at": at,
        }
    ).encode()


def cb(eid: str, txn_id: str, status: str, at: str, **kw: Any) -> bytes:
    return json.dumps(
        {
            "event_id": eid,
            "txn_id": txn_id,
            "channel_id": "wechat",
            "channel_txn_id": kw.get("ctid", "c-" + txn_id),
            "source": kw.get("source", "notify"),
            "status": status,
            "amount": kw.get("amount", "100.00"),
            "currency": "CNY",
            "fee": "0.60",
            "occurred_at": at,
        }
    ).encode()


async def test_transactions_and_callbacks_merge_into_one_order(tally: Tally) -> None:
    txns = tally.agents["reconcile_transactions"]
    cbs = tally.agents["reconcile_callbacks"]
    async with txns.test_context() as t_agent, cbs.test_context() as c_agent:
        await t_agent.put(txn("e1", "o1", "pending", "2026-11-24T10:00:00+08:00"), key=b"o1")
        await c_agent.put(cb("e2", "o1", "success", "2026-11-24T10:00:02+08:00"), key=b"o1")
        await t_agent.put(txn("e3", "o1", "success", "2026-11-24T10:00:02+08:00"), key=b"o1")
    state = tally.orders["o1"]
    assert state.our_status == "success"
    assert [e.status for e in state.evidence] == ["success"]
    assert state.posted  # confirmed and posted
    assert sum(state.posted.values()) == 0  # a balanced position
    assert not tally.stats.breaks


async def test_amount_mismatch_raised_once_and_redelivery_ignored(tally: Tally) -> None:
    txns = tally.agents["reconcile_transactions"]
    cbs = tally.agents["reconcile_callbacks"]
    async with txns.test_context() as t_agent, cbs.test_context() as c_agent:
        await t_agent.put(txn("e1", "o2", "pending", "2026-11-24T10:00:00+08:00"), key=b"o2")
        bad = cb("e2", "o2", "success", "2026-11-24T10:00:02+08:00", amount="99.00")
        await c_agent.put(bad, key=b"o2")
        await c_agent.put(bad, key=b"o2")  # the same event delivered twice
    assert tally.stats.breaks == {"amount_mismatch": 1}
    assert tally.stats.duplicates == 1
    assert len(tally.orders["o2"].evidence) == 1


async def test_malformed_message_is_dead_lettered_and_agent_keeps_going(tally: Tally) -> None:
    cbs = tally.agents["reconcile_callbacks"]
    async with cbs.test_context() as agent:
        await agent.put(b"{not json", key=b"x")
        await agent.put(cb("e1", "o3", "success", "2026-11-24T10:00:00+08:00"), key=b"WRONG")
        await agent.put(cb("e2", "o3", "success", "2026-11-24T10:00:00+08:00"), key=b"o3")
    assert tally.stats.dead_letters == {"bad_json": 1, "key_mismatch": 1}
    assert "o3" in tally.orders  # the good message after the bad ones was processed


async def test_postings_update_the_partition_balance_shards(tally: Tally) -> None:
    txns = tally.agents["reconcile_transactions"]
    cbs = tally.agents["reconcile_callbacks"]
    async with txns.test_context() as t_agent, cbs.test_context() as c_agent:
        await t_agent.put(txn("e1", "o4", "success", "2026-11-24T10:00:00+08:00"), key=b"o4")
        await c_agent.put(cb("e2", "o4", "success", "2026-11-24T10:00:01+08:00"), key=b"o4")
        await c_agent.put(cb("e2", "o4", "success", "2026-11-24T10:00:01+08:00"), key=b"o4")
    merchant = account_balances(tally.balances.items())["merchant:m1|CNY"]
    assert merchant.amounts == {
        "confirmed|gross": -10000,
        "confirmed|fee": 60,
        "provisional|gross": 0,
    }
    assert merchant.summary()["net"] == "99.40"
    assert merchant.summary()["provisional"] == "0.00"


async def test_claims_agent_flags_one_channel_txn_on_two_orders(tally: Tally) -> None:
    claims = tally.agents["claims"]

    def claim(txn_id: str) -> bytes:
        return json.dumps(
            {
                "channel_id": "wechat",
                "channel_txn_id": "W1",
                "txn_id": txn_id,
                "merchant_id": "m1",
                "currency": "CNY",
                "amount": 100,
                "occurred_at_ms": 1,
            }
        ).encode()

    async with claims.test_context() as agent:
        await agent.put(claim("a"), key=b"wechat/W1")
        await agent.put(claim("a"), key=b"wechat/W1")  # same order again: fine
        assert not tally.stats.breaks
        await agent.put(claim("b"), key=b"wechat/W1")
    assert tally.stats.breaks == {"duplicate_success": 1}
