"""Batches that span partitions, on the real embedded broker with 4 partitions.

The reconcile agent takes messages of all four input topics and all its partitions
in one batch (`streams.agents`). Faust's own table writes would send every changelog
record to the partition of the batch's *current* event; tally's checkpoint sends
each record, and each output, to the partition its key belongs to. Checked here on
every message of every output topic and every changelog (the order-states and
balances topics are the orders' and balance shards' changelogs), then: a worker started in
another process recovers the tables from those changelogs and holds exactly the
state of the worker that wrote them.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.worker import end_offsets
from tally.config import Settings
from tally.core.pipeline import partition_for
from tally.sim.traffic import SimConfig, generate
from tests.streams.streamrun import run_stream, stream_settings

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4

# In another process: start a worker with the settings in the environment, wait
# until its tables are recovered, print them as JSON, stop. Its idle ticks are off
# (TALLY_IDLE_TICK_SECONDS) and everything is consumed, so it changes nothing.
DUMP = """
import asyncio, json, sys
from streams.app import create_app
from streams.worker import WorkerRunner
from tally.config import Settings

async def main():
    tally = create_app(Settings(_env_file=None))
    runner = WorkerRunner(tally)
    await runner.start()
    try:
        out = {
            "orders": {k: v.to_json(with_outbox=False) for k, v in tally.orders.items()},
            "balances": {k: v.to_json() for k, v in tally.balances.items()},
            "watermarks": dict(tally.watermarks.items()),
            "claims": {k: [v.txn_id, v.merchant_id, v.occurred_at_ms]
                       for k, v in tally.claims.items()},
        }
    finally:
        await runner.stop()
    sys.stdout.write("\\nDUMP " + json.dumps(out) + "\\n")

asyncio.run(main())
"""


async def read_all(bootstrap: str, topic: str) -> list[tuple[int, bytes | None, bytes | None]]:
    """(partition, key, value) of every message of `topic`, in offset order."""
    ends = await end_offsets(bootstrap, [topic])
    targets = {TopicPartition(t, p): end for (t, p), end in ends.items() if end > 0}
    out: list[tuple[int, bytes | None, bytes | None]] = []
    if not targets:
        return out
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        consumer.assign(list(targets))
        await consumer.seek_to_beginning(*targets)
        left = dict(targets)
        while left:
            got = await consumer.getmany(timeout_ms=2000, max_records=10_000)
            if not got:
                break
            for tp, msgs in got.items():
                out += [(tp.partition, m.key, m.value) for m in msgs]
                if msgs and msgs[-1].offset + 1 >= left.get(tp, 0):
                    left.pop(tp, None)
    finally:
        await consumer.stop()
    return out


def owner(topic: str, key: str, s: Settings) -> int:
    """The partition a message's key belongs to, by what the key names."""
    internal = f"{s.app_id}-"
    if topic == s.topic_balances:
        return int(key.rsplit("|", 1)[1])  # <account>|<currency>|<partition>
    if topic == f"{internal}watermarks-changelog":
        return int(key.rsplit("|", 1)[-1])  # <partition> or sent|<partition>
    if topic == f"{internal}channel-txn-claims-changelog":
        claim = key.split("|", 1)[0]  # <channel>/<id>[|<txn>]
        return partition_for(claim, PARTITIONS)
    return partition_for(key, PARTITIONS)  # txn id, original txn id, claim or letter id


@pytest.mark.asyncio
async def test_a_batch_spanning_partitions_writes_every_record_to_its_keys_partition(
    broker: Any,
) -> None:
    s = stream_settings(
        broker,
        partitions=PARTITIONS,
        idle_tick_seconds=3600,
        batch_max_events=5000,
        batch_max_ms=200.0,
    )
    sim = generate(SimConfig(events=4000, seed=41), s.policies())
    res = await run_stream(s, [sim.envelopes])
    stats = res.tally.stats
    assert stats.batches_spanning > 0, "no batch spanned partitions: nothing was tested"
    assert res.break_set() == sim.expected

    bootstrap = s.bootstrap_servers()
    internal = f"{s.app_id}-"
    topics = [
        s.topic_breaks,
        s.topic_postings,
        s.topic_status_queries,
        s.topic_dead_letter,
        s.topic_order_states,
        s.topic_balances,
        f"{internal}links",
        f"{internal}success-claims",
        f"{internal}watermarks-changelog",
        f"{internal}channel-txn-claims-changelog",
    ]
    checked: dict[str, int] = {}
    for topic in topics:
        for partition, key, _value in await read_all(bootstrap, topic):
            assert key is not None, f"a message without a key on {topic}"
            text = key.decode()
            if topic.endswith("-changelog"):
                text = orjson.loads(key)  # Faust's JSON keys
            assert partition == owner(topic, text, s), (topic, text, partition)
            checked[topic] = checked.get(topic, 0) + 1
    for topic in (s.topic_breaks, s.topic_postings, s.topic_order_states, s.topic_balances):
        assert checked.get(topic), f"nothing on {topic}: nothing was tested"
    assert checked[s.topic_order_states] >= len(res.tally.orders)

    # another process recovers the tables from the changelogs
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    env.update(
        {
            f"TALLY_{k.upper()}": str(v)
            for k, v in s.model_dump().items()
            if v is not None and isinstance(v, (str, int, float))
        }
    )
    env["TALLY_CHANNELS"] = json.dumps(s.model_dump(mode="json")["channels"])
    env["PYTHONPATH"] = str(ROOT)
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", DUMP],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=180,
    )
    out = proc.stdout.decode()
    assert proc.returncode == 0 and "\nDUMP " in out, proc.stderr.decode()[-3000:]
    recovered = json.loads(out.rsplit("\nDUMP ", 1)[1])

    t = res.tally
    assert recovered["orders"] == {k: v.to_json(with_outbox=False) for k, v in t.orders.items()}
    assert recovered["balances"] == {k: v.to_json() for k, v in t.balances.items()}
    assert recovered["watermarks"] == dict(t.watermarks.items())
    assert recovered["claims"] == {
        k: [v.txn_id, v.merchant_id, v.occurred_at_ms] for k, v in t.claims.items()
    }
    assert len(recovered["orders"]) > 1000
