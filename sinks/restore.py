"""Restoring a worker's tables from ClickHouse, for a fresh (empty) broker.

The embedded Tansu broker keeps everything in memory: after a restart its topics,
and with them the Faust table changelogs, are gone. ClickHouse still has the
latest state of every order (`order_states.state` is `OrderState.to_json()`),
every balance shard, the persisted event-time watermarks and the channel
transaction claims. `restore_from_clickhouse` writes them into the changelog
topics, serialised exactly as the tables do (key: Faust's "json" serializer;
value: `streams.codecs`), each to the partition its key belongs to, so that
Faust's own recovery loads them when the worker starts:

    report = await restore_from_clickhouse(settings)   # before WorkerRunner.start()

It does nothing when a changelog topic already holds data (a durable Kafka, or a
broker that survived: Faust recovers from the changelogs as usual).

Every order is restored, not only the open ones: a late or re-delivered event for
a closed order must find its state (idempotence, what is already posted), or it
would be posted a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from sinks.backend import Backend, ClickHouseUnavailable, connect
from sinks.schema import migrate
from streams import codecs
from streams.broker import ensure_topics
from streams.handles import changelog_topic
from streams.offsets import log_ends
from tally.config import Settings
from tally.core.breaks import ChannelTxnClaim
from tally.core.ledger import Balance
from tally.core.orders import OrderState
from tally.core.pipeline import partition_for

log = logging.getLogger("tally.sinks")

# the tables of streams.app and their value codecs
_TABLES = {
    "orders": codecs.ORDER,
    "balances": codecs.BALANCE,
    "watermarks": "json",
    "channel-txn-claims": codecs.CLAIM,
}
_KEYS = {"orders": codecs.TEXT, "balances": codecs.TEXT}  # the others: JSON keys
_PAGE = 20_000
TOPIC_CONFIGS = {"cleanup.policy": "compact"}  # as Faust declares changelogs


class RestoreError(RuntimeError):
    pass


@dataclass
class RestoreReport:
    restored: bool = False
    reason: str = ""  # why nothing was restored, or what was
    orders: int = 0
    open_orders: int = 0  # not yet resolved: their timers are re-armed by the worker
    balances: int = 0  # balance shards
    watermarks: int = 0
    claims: int = 0
    messages: int = 0  # written to the changelog topics
    seconds: float = 0.0
    source: str = ""  # where the state came from (no password)
    by_topic: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "restored": self.restored,
            "reason": self.reason,
            "orders": self.orders,
            "open_orders": self.open_orders,
            "balance_shards": self.balances,
            "watermarks": self.watermarks,
            "claims": self.claims,
            "messages": self.messages,
            "seconds": round(self.seconds, 2),
            "source": self.source,
            "by_topic": self.by_topic,
        }

    def render(self) -> str:
        if not self.restored:
            return f"restore skipped: {self.reason}"
        return (
            f"restored from {self.source} in {self.seconds:.1f}s: {self.orders:,} orders "
            f"({self.open_orders:,} open), {self.balances:,} balance shards, "
            f"{self.watermarks} watermarks, {self.claims:,} channel transaction claims"
        )


async def restore_from_clickhouse(
    settings: Settings,
    *,
    backend: Backend | None = None,
    wait_seconds: float = 30.0,
) -> RestoreReport:
    """Write the state ClickHouse holds into the (empty) table changelog topics so
    that a worker starting on a fresh broker recovers it. Call before the Faust
    worker starts. Raises RestoreError when the stored state does not fit the
    settings, ClickHouseUnavailable when ClickHouse does not answer within
    `wait_seconds`."""
    t0 = time.monotonic()
    s = settings
    bootstrap = s.bootstrap_servers()
    topics = {name: changelog_topic(s, name) for name in _TABLES}
    ends = await log_ends(bootstrap, list(topics.values()))
    if any(off > 0 for off in ends.values()):
        return RestoreReport(
            reason="the table changelog topics already hold state; Faust recovers from them",
            seconds=time.monotonic() - t0,
        )
    db = backend or connect(s)
    report = RestoreReport(source=db.describe())
    try:
        await _migrate(db, wait_seconds)
        messages = await asyncio.to_thread(_collect, db, s, report)
    finally:
        if backend is None:
            db.close()
    if not messages:
        report.reason = "ClickHouse holds no state to restore"
        report.seconds = time.monotonic() - t0
        return report
    await _create_changelogs(bootstrap, list(topics.values()), s.partitions)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=5,
        max_batch_size=512 * 1024,
        max_request_size=4 * 1024 * 1024,
        acks="all",
        enable_idempotence=False,
    )
    await producer.start()
    try:
        await _send(producer, messages, topics, report)
    finally:
        await producer.stop()
    report.messages = sum(report.by_topic.values())
    report.restored = True
    report.reason = "restored from ClickHouse into the table changelog topics"
    report.seconds = time.monotonic() - t0
    log.warning(report.render())
    return report


async def _send(
    producer: AIOKafkaProducer,
    messages: list[Message],
    topics: dict[str, str],
    report: RestoreReport,
) -> None:
    """Send, ending each topic-partition with a batch of exactly one record: Tansu's
    ListOffsets answers the last batch's base offset + 1 as the end of the log, and
    Faust's recovery reads only up to that (see `streams.offsets`)."""
    last: dict[tuple[str, int], tuple[bytes, bytes]] = {}
    pending: list[asyncio.Future[Any]] = []
    for table, key, value, partition in messages:
        topic = topics[table]
        report.by_topic[topic] = report.by_topic.get(topic, 0) + 1
        held = last.get((topic, partition))
        last[(topic, partition)] = (key, value)
        if held is not None:
            pending.append(await producer.send(topic, held[1], key=held[0], partition=partition))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
    await asyncio.gather(*pending)
    await producer.flush()
    pending = [
        await producer.send(topic, value, key=key, partition=partition)
        for (topic, partition), (key, value) in last.items()
    ]
    await asyncio.gather(*pending)
    await producer.flush()


async def _migrate(db: Backend, wait_seconds: float) -> None:
    deadline = time.monotonic() + wait_seconds
    delay = 0.25
    while True:
        try:
            await asyncio.to_thread(migrate, db)
            return
        except ClickHouseUnavailable as exc:
            if time.monotonic() + delay > deadline:
                raise ClickHouseUnavailable(
                    f"cannot restore: ClickHouse did not answer within {wait_seconds:.0f}s: {exc}"
                ) from None
            log.warning("restore: %s; retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _key(table: str, k: str) -> bytes:
    return codecs.key_encoder(_KEYS.get(table, "json"))(k)


def _value(table: str, k: str, v: Any, partition: int) -> bytes:
    return codecs.encoder(_TABLES[table])(k, v, partition)


def _pages(db: Backend, sql: str, key: str) -> Iterator[dict[str, Any]]:
    """Keyset pagination over a FINAL read (`sql` has `%(after)s` and `%(limit)s`)."""
    after = ""
    while True:
        rows = db.query(sql, {"after": after, "limit": _PAGE})
        yield from rows
        if len(rows) < _PAGE:
            return
        after = rows[-1][key]


Message = tuple[str, bytes, bytes, int]  # table, key, value, partition


def _collect(db: Backend, s: Settings, report: RestoreReport) -> list[Message]:
    codecs.register(s.policies())
    n = s.partitions
    out: list[Message] = []
    for r in _pages(
        db,
        "SELECT txn_id, state, resolved FROM {db}.order_states FINAL "
        "WHERE txn_id > %(after)s ORDER BY txn_id LIMIT %(limit)s",
        "txn_id",
    ):
        state = OrderState.from_json(json.loads(r["state"]))
        p = partition_for(r["txn_id"], n)
        out.append(("orders", _key("orders", state.txn_id), _value("orders", "", state, p), p))
        report.orders += 1
        report.open_orders += 0 if r["resolved"] else 1
    for r in db.query(
        "SELECT account, currency, shard, version, amounts_minor FROM {db}.balances FINAL"
    ):
        shard = int(r["shard"])
        if shard >= n:
            raise RestoreError(
                f"ClickHouse holds balance shards of input partition {shard}, but "
                f"TALLY_PARTITIONS is {n}: restore with the partition count of the stored run"
            )
        amounts = {k: int(v) for k, v in json.loads(r["amounts_minor"]).items()}
        bal = Balance(r["account"], r["currency"], amounts, int(r["version"]))
        key = f"{r['account']}|{r['currency']}|{shard}"
        out.append(("balances", _key("balances", key), _value("balances", key, bal, shard), shard))
        report.balances += 1
    for r in db.query("SELECT partition, watermark_ms FROM {db}.watermarks FINAL"):
        p = int(r["partition"])
        if p >= n:
            continue
        wm = int(r["watermark_ms"])
        out.append(("watermarks", _key("watermarks", str(p)), _value("watermarks", "", wm, p), p))
        report.watermarks += 1
    for r in db.query(
        "SELECT claim_key, txn_id, merchant_id, occurred_at_ms, shard "
        "FROM {db}.channel_txn_claims FINAL"
    ):
        p = int(r["shard"])
        if p >= n:
            raise RestoreError(
                f"ClickHouse holds claims of partition {p}, but TALLY_PARTITIONS is {n}"
            )
        claim = ChannelTxnClaim(r["txn_id"], r["merchant_id"], int(r["occurred_at_ms"]))
        key = r["claim_key"]
        value = _value("channel-txn-claims", key, claim, p)
        out.append(("channel-txn-claims", _key("channel-txn-claims", key), value, p))
        report.claims += 1
    return out


async def _create_changelogs(bootstrap: str, names: list[str], partitions: int) -> None:
    """Create the changelog topics as Faust would (compacted), or check them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in names if t not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [
                        NewTopic(
                            t,
                            num_partitions=partitions,
                            replication_factor=1,
                            topic_configs=TOPIC_CONFIGS,
                        )
                        for t in missing
                    ]
                )
    finally:
        await admin.close()
    await ensure_topics(bootstrap, names, partitions)  # checks the partition counts
