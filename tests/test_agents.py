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


async def test_a_balance_that_missed_its_orders_posting_is_corrected_after_recovery() -> None:
    """A worker killed between the orders' and the balances' changelog writes comes
    back with an order that says "posted" and a shard without it; the replayed message
    is a duplicate for the order and posts nothing. After the partitions are assigned
    (tables recovered), the first message of a partition makes its shards agree with
    its orders' positions again."""
    from tally.clearing import Balance, balances_from_positions

    # one partition: test_context puts every message on partition 0, whatever its key
    tally = create_app(Settings(_env_file=None, web_port=0, partitions=1))  # type: ignore[call-arg]
    tally.app.finalize()
    tally.app.flow_control.resume()
    txns = tally.agents["reconcile_transactions"]
    cbs = tally.agents["reconcile_callbacks"]
    async with txns.test_context() as t_agent, cbs.test_context() as c_agent:
        await t_agent.put(txn("e1", "o1", "pending", "2026-11-24T10:00:00+08:00"), key=b"o1")
        await c_agent.put(cb("e2", "o1", "success", "2026-11-24T10:00:02+08:00"), key=b"o1")
        right = {k: b.figures() for k, b in tally.balances.items()}
        assert right and tally.stats.balances_healed == 0
        # the crash, as the recovered store holds it: every shard lost the last posting
        store = tally.balances.data
        for k, b in list(tally.balances.items()):
            store[k] = Balance(b.account, b.currency, {}, b.postings)
        # ... and a shard no order accounts for
        store["merchant:m9|CNY|0"] = Balance("merchant:m9", "CNY", {"confirmed|gross": 5}, 7)
        await tally.app.on_partitions_assigned.send(set())  # recovery done, say
        # the replayed message: a duplicate for the order, it posts nothing itself
        await c_agent.put(cb("e2", "o1", "success", "2026-11-24T10:00:02+08:00"), key=b"o1")
    assert tally.stats.duplicates == 1
    assert {k: b.figures() for k, b in tally.balances.items() if b.figures()} == right
    assert tally.stats.balances_healed == len(right) + 1
    want = balances_from_positions(tally.orders.values())
    assert want == {k.rsplit("|", 1)[0]: v for k, v in right.items()}
    # a shard's version moves on when it is corrected: stored rows are replaced
    assert all(b.postings > 1 for b in tally.balances.values() if b.figures())
