"""Faust agents: thin shells around the domain core.

- `reconcile`: transactions, callbacks, reversal links and idle ticks, keyed by
  txn_id, into `Reconciler`; sends breaks, postings, status queries, dead letters
  and the internal messages below.
- `balances`: posting legs keyed by account into the `balances` table.
- `claims`: success claims keyed by channel transaction id into `ChannelTxnIndex`.
- `idle_ticks` (timer): keeps an idle partition's event-time watermark moving with
  the wall clock, through the log, so replays stay deterministic.

A message that cannot be processed never stops an agent: it is sent to the
dead-letter topic with its reason and counted.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

import faust

from tally.clearing import Balance, balance_key
from tally.events import (
    DeadLetter,
    InvalidEvent,
    parse_callback,
    parse_transaction,
)
from tally.realtime import Outputs, ReversalLink, SuccessClaim

if TYPE_CHECKING:
    from streams.app import Tally

log = logging.getLogger(__name__)
_LATENCY_SAMPLES = 200_000


def _dumps(d: dict[str, Any]) -> bytes:
    return json.dumps(d, separators=(",", ":"), ensure_ascii=False).encode()


def register_agents(t: Tally) -> None:
    app, s, topics, stats = t.app, t.settings, t.topics, t.stats
    rec = t.reconciler
    names = {
        "transactions": s.topic_transactions,
        "callbacks": s.topic_callbacks,
        "links": t.internal("links"),
        "ticks": t.internal("ticks"),
    }
    source = app.topic(
        *names.values(),
        partitions=s.partitions,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    started = time.time()

    def send(
        topic: str, key: str | None, value: dict[str, Any], partition: int | None = None
    ) -> None:
        topics[topic].send_soon(
            key=None if key is None else key.encode(), value=_dumps(value), partition=partition
        )
        stats.produced[topic] += 1

    def dead_letter(msg: Any, exc: InvalidEvent) -> None:
        dl = DeadLetter.of(
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            key=msg.key,
            value=msg.value if isinstance(msg.value, bytes) else bytes(msg.value or b""),
            error=exc,
            dead_at_ms=int(time.time() * 1000),
        )
        send("dead-letter", dl.dead_letter_id, dl.to_json())
        stats.dead_letters[exc.code] += 1

    def emit(out: Outputs, src: str, offset: int, ingested_ms: int) -> None:
        now_ms = int(time.time() * 1000)
        for b in out.breaks:
            b.detected_at_ms = now_ms
            b.trigger_ingested_at_ms = ingested_ms
            send("breaks", b.txn_id, b.to_json())
            stats.breaks[b.kind] += 1
            if ingested_ms and len(stats.latencies_ms) < _LATENCY_SAMPLES:
                stats.latencies_ms.append(now_ms - ingested_ms)
        for i, p in enumerate(out.postings):
            send("postings", p.txn_id, p.to_json())
            for j, (account, legs) in enumerate(sorted(p.legs_by_account())):
                send(
                    "balance-legs",
                    balance_key(account, p.currency),
                    {
                        "src": src,
                        "pos": [offset, i, j],
                        "posting_id": p.posting_id,
                        "account": account,
                        "currency": p.currency,
                        "legs": legs,
                    },
                )
        for q in out.queries:
            send("status-queries", q.txn_id, q.to_json())
        for link in out.links:
            send("links", link.original_txn_id, link.to_json())
        for c in out.claims:
            send("success-claims", c.key, c.to_json())

    @app.agent(source, name="tally.reconcile")
    async def reconcile(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            msg = event.message
            topic, p = msg.topic, msg.partition
            stats.seen(topic, p, msg.offset, activity=topic != names["ticks"])
            try:
                if topic == names["ticks"]:
                    out = rec.on_tick(p, int(json.loads(msg.value)["advance_ms"]))
                elif topic == names["links"]:
                    out = rec.on_link(ReversalLink.from_json(json.loads(msg.value)), p)
                else:
                    stats.partition_activity[p] = time.time()
                    if topic == names["transactions"]:
                        txn = parse_transaction(
                            msg.value, msg.key, check_key=True, max_bytes=s.max_message_bytes
                        )
                        out = rec.on_transaction(txn, p)
                    else:
                        cb = parse_callback(
                            msg.value, msg.key, check_key=True, max_bytes=s.max_message_bytes
                        )
                        out = rec.on_callback(cb, p)
            except InvalidEvent as exc:
                dead_letter(msg, exc)
                continue
            except Exception as exc:  # a bug must not stop the agent: park the message
                log.exception("reconcile failed on %s[%s]@%s", topic, p, msg.offset)
                dead_letter(msg, InvalidEvent("internal_error", f"{type(exc).__name__}: {exc}"))
                continue
            if out.duplicate:
                stats.duplicates += 1
            emit(out, f"{topic}:{p}", msg.offset, int(msg.timestamp * 1000))

    @app.agent(topics["balance-legs"], name="tally.balances")
    async def balances(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            msg = event.message
            stats.seen(msg.topic, msg.partition, msg.offset)
            try:
                d = json.loads(msg.value)
                mark = f"{d['src']}>{msg.partition}"
                pos = list(d["pos"])
                last = t.balance_applied.get(mark)
                if last is not None and pos <= list(last):
                    stats.duplicates += 1
                    continue
                key = balance_key(d["account"], d["currency"])
                bal = t.balances.get(key) or Balance(d["account"], d["currency"])
                bal.apply({k: int(v) for k, v in d["legs"].items()})
                t.balances[key] = bal
                t.balance_applied[mark] = pos
            except Exception as exc:
                log.exception("balances failed on %s[%s]@%s", msg.topic, msg.partition, msg.offset)
                dead_letter(msg, InvalidEvent("internal_error", f"{type(exc).__name__}: {exc}"))

    @app.agent(topics["success-claims"], name="tally.claims")
    async def claims(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            msg = event.message
            stats.seen(msg.topic, msg.partition, msg.offset)
            try:
                b = t.index.on_claim(SuccessClaim.from_json(json.loads(msg.value)))
            except Exception as exc:
                log.exception("claims failed on %s[%s]@%s", msg.topic, msg.partition, msg.offset)
                dead_letter(msg, InvalidEvent("internal_error", f"{type(exc).__name__}: {exc}"))
                continue
            if b is not None:
                b.detected_at_ms = int(time.time() * 1000)
                send("breaks", b.txn_id, b.to_json())
                stats.breaks[b.kind] += 1

    @app.timer(interval=s.idle_tick_seconds, name="tally.idle_ticks")
    async def idle_ticks() -> None:
        now = time.time()
        assigned = app.assignor.assigned_actives()
        for p in sorted({tp.partition for tp in assigned if tp.topic == names["transactions"]}):
            active = stats.partition_activity.get(p, started)
            if now - active < s.idle_tick_seconds:
                continue
            ref = max(active, stats.partition_ticked.get(p, started))
            advance_ms = int((now - ref) * 1000)
            if advance_ms > 0:
                send("ticks", None, {"advance_ms": advance_ms, "wall": now}, partition=p)
                stats.partition_ticked[p] = now

    t.agents.update(reconcile=reconcile, balances=balances, claims=claims, idle_ticks=idle_ticks)

    @app.on_partitions_revoked.connect
    async def _revoked(*args: Any, **kwargs: Any) -> None:
        # timers are rebuilt from the table for whatever this worker is assigned next
        rec.forget_partitions()
