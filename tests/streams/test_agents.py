"""The Faust agents in isolation, with Faust's own `agent.test_context()`: no broker,
the tables in memory, messages put straight into each agent's stream, and what the
checkpoints produce kept by `MemoryProducer` (the record batches as a broker would
get them: topic, partition, key, value)."""

from __future__ import annotations

import asyncio
import json
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from faust.types import TP
from jsonschema import Draft202012Validator

from streams.app import Tally, account_balances, create_app, early_reads_to_seek
from tally.config import Settings


class MemoryBatch(list[tuple[bytes | None, bytes | None]]):
    def append(self, *, key: bytes | None, value: bytes | None, timestamp: Any) -> bool:  # type: ignore[override]
        super().append((key, value))
        return True


class MemoryProducer:
    """The part of aiokafka's producer a checkpoint uses, in memory: every record
    batch is acknowledged at once and kept as (topic, partition, key, value)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, int, bytes | None, bytes | None]] = []
        self.committed: dict[tuple[str, int], int] = {}  # input offsets, as committed
        self.generations: list[Any] = []

    def create_batch(self) -> MemoryBatch:
        return MemoryBatch()

    async def send_batch(self, batch: list[Any], topic: str, *, partition: int) -> Any:
        self.records += [(topic, partition, k, v) for k, v in batch]
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def commit_offsets(self, offsets: dict[tuple[str, int], int], generation: Any) -> bool:
        """Step 3, as the consumer group would take it (in memory)."""
        self.committed.update(offsets)
        self.generations.append(generation)
        return True

    def on(self, topic: str) -> list[Any]:
        return [json.loads(v) for t, _p, _k, v in self.records if t == topic and v]


def in_memory(settings: Settings) -> Tally:
    t = create_app(settings)
    t.app.finalize()
    t.app.flow_control.resume()
    t.app.tally_sought_generation = t.app.consumer_generation_id  # as after Faust's seek
    producer = MemoryProducer()
    t.checkpoint._producer = t.claims_checkpoint._producer = lambda: producer
    t.checkpoint.commit_offsets = t.claims_checkpoint.commit_offsets = producer.commit_offsets
    t.extra = producer  # type: ignore[attr-defined]
    return t


async def put(
    tally: Tally, agent: Any, topic: str, value: bytes, key: bytes, partition: int = 0
) -> None:
    """Put a message of `topic` (transactions, callbacks, ...) into an agent's stream
    and wait until its batch is committed, as a broker delivers a message after the
    ones produced before it."""
    consumed = sum(tally.stats.consumed.values())
    commits = tally.checkpoint.commits + tally.claims_checkpoint.commits
    name = tally.topics[topic].get_topic_name()
    offsets = tally.__dict__.setdefault("test_offsets", {})  # per topic-partition, as a log
    offset = offsets.get((name, partition), 0)
    offsets[(name, partition)] = offset + 1
    message = agent.to_message(key, value, partition=partition, offset=offset)
    message.topic = name
    await agent.stream().channel.put(await agent.stream().channel.decode(message))
    async with asyncio.timeout(10):
        while (
            sum(tally.stats.consumed.values()) == consumed
            or tally.checkpoint.commits + tally.claims_checkpoint.commits == commits
        ):
            await asyncio.sleep(0.005)


@pytest.fixture()
def tally() -> Tally:
    return in_memory(Settings(_env_file=None, web_port=0))  # type: ignore[call-arg]


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


T0 = "2026-11-24T10:00:00+08:00"
T1 = "2026-11-24T10:00:01+08:00"
T2 = "2026-11-24T10:00:02+08:00"


async def feed(tally: Tally, agent: Any, *messages: tuple[str, bytes, str]) -> None:
    """(topic kind, value, key) messages, one after the other (`put`)."""
    for topic, value, key in messages:
        await put(tally, agent, topic, value, key=key.encode())


async def test_transactions_and_callbacks_merge_into_one_order(tally: Tally) -> None:
    async with tally.agents["reconcile"].test_context() as agent:
        await feed(
            tally,
            agent,
            ("transactions", txn("e1", "o1", "pending", T0), "o1"),
            ("callbacks", cb("e2", "o1", "success", T2), "o1"),
            ("transactions", txn("e3", "o1", "success", T2), "o1"),
        )
    state = tally.orders["o1"]
    assert state.our_status == "success"
    assert [e.status for e in state.evidence] == ["success"]
    assert state.posted  # confirmed and posted
    assert sum(state.posted.values()) == 0  # a balanced position
    assert not tally.stats.breaks


async def test_amount_mismatch_raised_once_and_redelivery_ignored(tally: Tally) -> None:
    bad = cb("e2", "o2", "success", T2, amount="99.00")
    async with tally.agents["reconcile"].test_context() as agent:
        await feed(
            tally,
            agent,
            ("transactions", txn("e1", "o2", "pending", T0), "o2"),
            ("callbacks", bad, "o2"),
            ("callbacks", bad, "o2"),  # the same event delivered twice
        )
    assert tally.stats.breaks == {"amount_mismatch": 1}
    assert tally.stats.duplicates == 1
    assert len(tally.orders["o2"].evidence) == 1


async def test_malformed_message_is_dead_lettered_and_agent_keeps_going(tally: Tally) -> None:
    async with tally.agents["reconcile"].test_context() as agent:
        await feed(
            tally,
            agent,
            ("callbacks", b"{not json", "x"),
            ("callbacks", cb("e1", "o3", "success", T0), "WRONG"),
            ("callbacks", cb("e2", "o3", "success", T0), "o3"),
        )
    assert tally.stats.dead_letters == {"bad_json": 1, "key_mismatch": 1}
    assert "o3" in tally.orders  # the good message after the bad ones was processed
    letters = tally.extra.on(tally.settings.topic_dead_letter)  # type: ignore[attr-defined]
    assert sorted(d["code"] for d in letters) == ["bad_json", "key_mismatch"]


async def test_postings_update_the_partition_balance_shards(tally: Tally) -> None:
    async with tally.agents["reconcile"].test_context() as agent:
        await feed(
            tally,
            agent,
            ("transactions", txn("e1", "o4", "success", T0), "o4"),
            ("callbacks", cb("e2", "o4", "success", T1), "o4"),
            ("callbacks", cb("e2", "o4", "success", T1), "o4"),
        )
    merchant = account_balances(tally.balances.items())["merchant:m1|CNY"]
    assert merchant.amounts == {
        "confirmed|gross": -10000,
        "confirmed|fee": 60,
        "provisional|gross": 0,
    }
    assert merchant.summary()["net"] == "99.40"
    assert merchant.summary()["provisional"] == "0.00"


def validator(name: str) -> Draft202012Validator:
    """The JSON Schema of an output topic (`tally/schemas/`, docs/events.md)."""
    schema = json.loads((files("tally.schemas") / f"{name}.schema.json").read_text("utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


async def test_every_message_the_worker_sends_validates_against_its_schema(tally: Tally) -> None:
    """What the worker emits on its output topics, snapshots included (the order
    states and balance shards are its tables' changelog records)."""
    async with tally.agents["reconcile"].test_context() as agent:
        await feed(
            tally,
            agent,
            ("transactions", txn("e1", "o5", "success", T0), "o5"),
            ("callbacks", cb("e2", "o5", "success", T1), "o5"),
            ("callbacks", cb("e3", "o6", "success", T1), "o6"),  # unknown order
            ("transactions", txn("e4", "o7", "pending", T0, amount="20.00"), "o7"),
            ("callbacks", cb("e5", "o7", "success", T2, amount="19.00"), "o7"),
            ("callbacks", b"{not json", "x"),
        )
    s = tally.settings
    topics = {
        s.topic_order_states: "order-state",
        s.topic_balances: "balance",
        s.topic_breaks: "break",
        s.topic_postings: "posting",
        s.topic_dead_letter: "dead-letter",
    }
    for topic, name in topics.items():
        messages = tally.extra.on(topic)  # type: ignore[attr-defined]
        assert messages, topic
        v = validator(name)
        for message in messages:
            errors = [e.message for e in v.iter_errors(message)]
            assert not errors, (name, message, errors)
    states = tally.extra.on(s.topic_order_states)  # type: ignore[attr-defined]
    assert {m["known"] for m in states} == {True, False}


async def test_claims_agent_flags_one_channel_txn_on_two_orders(tally: Tally) -> None:
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

    async with tally.agents["claims"].test_context() as agent:
        await feed(tally, agent, ("success-claims", claim("a"), "wechat/W1"))
        await feed(tally, agent, ("success-claims", claim("a"), "wechat/W1"))  # same order
        assert not tally.stats.breaks
        await feed(tally, agent, ("success-claims", claim("b"), "wechat/W1"))
    assert tally.stats.breaks == {"duplicate_success": 1}


async def test_a_balance_that_missed_its_orders_posting_is_corrected_after_recovery() -> None:
    """A worker killed between the orders' and the balances' changelog writes comes
    back with an order that says "posted" and a shard without it; the replayed message
    is a duplicate for the order and posts nothing. After the partitions are assigned
    (tables recovered), the first message of a partition makes its shards agree with
    its orders' positions again."""
    from tally.core.ledger import Balance, balances_from_positions

    # one partition: test_context puts every message on partition 0, whatever its key
    tally = in_memory(Settings(_env_file=None, web_port=0, partitions=1))  # type: ignore[call-arg]
    async with tally.agents["reconcile"].test_context() as agent:
        await feed(
            tally,
            agent,
            ("transactions", txn("e1", "o1", "pending", T0), "o1"),
            ("callbacks", cb("e2", "o1", "success", T2), "o1"),
        )
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
        await feed(tally, agent, ("callbacks", cb("e2", "o1", "success", T2), "o1"))
    assert tally.stats.duplicates == 1
    assert {k: b.figures() for k, b in tally.balances.items() if b.figures()} == right
    assert tally.stats.balances_healed == len(right) + 1
    want = balances_from_positions(tally.orders.values())
    assert want == {k.rsplit("|", 1)[0]: v for k, v in right.items()}
    # a shard's version moves on when it is corrected: stored rows are replaced
    assert all(b.postings > 1 for b in tally.balances.values() if b.figures())


async def test_facts_of_a_committed_state_whose_outputs_were_lost_are_sent_again() -> None:
    """A worker killed after a batch's state (order records with their outbox) was
    acknowledged and before its outputs were: the worker that recovers the state sends
    the outbox again, with the same ids, before the partition's first message."""
    from streams.codecs import OrderCodec

    tally = in_memory(Settings(_env_file=None, web_port=0, partitions=1))  # type: ignore[call-arg]
    s, producer = tally.settings, tally.extra  # type: ignore[attr-defined]
    async with tally.agents["reconcile"].test_context() as agent:
        await feed(
            tally,
            agent,
            ("transactions", txn("e1", "o1", "success", T0, amount="100.00"), "o1"),
            ("callbacks", cb("e2", "o1", "success", T1, amount="90.00"), "o1"),
        )
        sent = {p["posting_id"] for p in producer.on(s.topic_postings)}
        sent_breaks = {b["break_id"] for b in producer.on(s.topic_breaks)}
        assert sent and sent_breaks  # a posting and an amount_mismatch
        # the crash: the store holds the order as its last record says (with the outbox
        # of the batch that made it); the partition's marker is older than that batch
        records = [
            v for t, _p, k, v in producer.records if t == s.topic_order_states and k == b"o1"
        ]
        recovered = OrderCodec()._loads(records[-1])
        assert recovered.outbox and recovered.outbox_seq
        tally.orders.data["o1"] = recovered
        tally.watermarks.data["sent|0"] = recovered.outbox_seq - 1
        producer.records.clear()
        await tally.app.on_partitions_assigned.send(set())  # recovery done, say
        await feed(tally, agent, ("callbacks", cb("e2", "o1", "success", T1), "o1"))
    assert tally.stats.outboxes_resent == 1
    # the last batch's facts (the second posting, the break), with the ids they had
    outbox = {
        (kind, v.get("posting_id") or v.get("break_id")) for kind, _p, _k, v in recovered.outbox
    }
    assert outbox == {
        ("postings", "o1:2"),
        ("breaks", next(iter(sent_breaks))),
        ("success-claims", None),  # the claim of its channel transaction id
    }
    assert {p["posting_id"] for p in producer.on(s.topic_postings)} == {"o1:2"} < sent
    assert {b["break_id"] for b in producer.on(s.topic_breaks)} == sent_breaks


async def test_outputs_and_records_of_a_batch_go_to_their_keys_partitions() -> None:
    """In memory, 4 partitions: messages of several partitions in one agent; each
    output and each table record lands on the partition its key belongs to."""
    from tally.core.pipeline import partition_for

    tally = in_memory(Settings(_env_file=None, web_port=0, partitions=4))  # type: ignore[call-arg]
    s, producer = tally.settings, tally.extra  # type: ignore[attr-defined]
    keys = [f"o{i}" for i in range(12)]
    async with tally.agents["reconcile"].test_context() as agent:
        for i, k in enumerate(keys):
            p = partition_for(k, 4)
            await put(tally, agent, "transactions", txn(f"t{i}", k, "success", T0), k.encode(), p)
            await put(tally, agent, "callbacks", cb(f"c{i}", k, "success", T1), k.encode(), p)
    assert len({partition_for(k, 4) for k in keys}) > 1
    by_txn = {s.topic_order_states, s.topic_postings, s.topic_breaks}
    checked = 0
    for topic, partition, key, _value in producer.records:
        assert key is not None
        if topic in by_txn:
            assert partition == partition_for(key, 4), (topic, key)
        elif topic == s.topic_balances:
            assert key.decode().endswith(f"|{partition}"), (topic, key)
        else:
            continue
        checked += 1
    assert checked >= 2 * len(keys)


async def test_input_offsets_are_committed_after_the_batch_and_stale_reads_are_dropped(
    tally: Tally,
) -> None:
    """Step 3 of the commit: each input partition's next offset, in the group
    generation the batch was read in. A message fetched before a rebalance (an older
    generation) is not processed and its offset not committed: the partition's owner
    reads it again from the committed offset."""
    producer: Any = tally.extra  # type: ignore[attr-defined]
    app = tally.app
    app.consumer_generation_id = app.tally_sought_generation = 7
    async with tally.agents["reconcile"].test_context() as agent:
        await feed(
            tally,
            agent,
            ("transactions", txn("e1", "o1", "pending", T0), "o1"),
            ("callbacks", cb("e2", "o1", "success", T2), "o1"),
        )
        await tally.settled()  # step 3 runs off the batch's path
        transactions = tally.topics["transactions"].get_topic_name()
        callbacks = tally.topics["callbacks"].get_topic_name()
        assert producer.committed == {(transactions, 0): 1, (callbacks, 0): 1}
        assert set(producer.generations) == {7}

        # fetched in generation 7, processed after the group moved on to 8
        stale = agent.to_message(b"o9", txn("e9", "o9", "pending", T0), partition=0, offset=1)
        stale.topic = transactions
        app.consumer_generation_id = app.tally_sought_generation = 8
        commits = tally.checkpoint.commits
        await agent.stream().channel.put(await agent.stream().channel.decode(stale))
        await feed(tally, agent, ("transactions", txn("e3", "o1", "success", T2), "o1"))
    await tally.settled()
    assert tally.checkpoint.commits == commits + 1
    assert "o9" not in tally.orders
    assert tally.orders["o1"].our_status == "success"
    assert producer.committed[(transactions, 0)] == 2  # the stale read of offset 1 not
    assert producer.generations[-1] == 8


async def test_reads_left_before_the_seek_was_noted_are_sought_again(tally: Tally) -> None:
    """A message of the current generation that reaches the agent before the worker
    noted its seek to the committed offsets is left unprocessed (it may have been
    fetched before the seek) and its partition is noted; once the seek is noted the
    partition is sought again to its committed offset, so the message is read again
    even when nothing else arrives on that partition (tally-links[1] stayed at 8 of
    10 in a takeover on CI before this)."""
    app = tally.app
    links = tally.topics["links"].get_topic_name()
    app.consumer_generation_id, app.tally_sought_generation = 5, 4  # seek not noted yet
    app.consumer._committed_offset[TP(links, 1)] = 8
    async with tally.agents["reconcile"].test_context() as agent:
        early = agent.to_message(b"o1", txn("e1", "o1", "pending", T0), partition=1, offset=8)
        early.topic = links
        dropped = tally.stats.stale_dropped
        await agent.stream().channel.put(await agent.stream().channel.decode(early))
        async with asyncio.timeout(10):
            while tally.stats.stale_dropped == dropped:
                await asyncio.sleep(0.005)
    assert "o1" not in tally.orders
    assert app.tally_early_reads == {TP(links, 1): 5}
    assert early_reads_to_seek(app, 4) == {}  # another generation's seek: not this one's
    app.tally_early_reads[TP(links, 1)] = 5
    assert early_reads_to_seek(app, 5) == {TP(links, 1): 8}
    assert app.tally_early_reads == {}  # sought once


def test_faust_keeps_its_directory_under_the_data_dir(tmp_path: Path) -> None:
    """A worker leaves nothing in the directory it was started from: Faust's own
    directory (`<app id>-data` by default, relative to the working directory) is under
    TALLY_DATA_DIR."""
    data = tmp_path / "new" / "data"  # a fresh machine: not there yet
    t = create_app(Settings(data_dir=str(data), app_id="tally-dirs", web_port=0))
    assert Path(t.app.conf.datadir) == data / "faust" / "tally-dirs"
    assert Path(t.app.conf.appdir).is_relative_to(data)
    Path(t.app.conf.datadir).mkdir(exist_ok=True)  # what Faust does when it starts
    Path(t.app.conf.appdir).mkdir(exist_ok=True)
