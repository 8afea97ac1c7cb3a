"""Faust agents: thin shells around the domain core.

- `reconcile_{transactions,callbacks,links,ticks}`: one agent per input topic (all
  co-partitioned, keyed by txn_id) feeding one shared `Reconciler`; they send
  breaks, postings, status queries, dead letters and the internal messages below.
- postings are applied to the `balances` table shard of the message's partition.
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

from tally.clearing import Balance, balance_key, balances_from_positions
from tally.events import (
    DeadLetter,
    InvalidEvent,
    parse_callback,
    parse_transaction,
)
from tally.orders import view
from tally.pipeline import partition_for
from tally.realtime import Outputs, ReversalLink, SuccessClaim
from tally.snapshots import balance_snapshot, order_snapshot

if TYPE_CHECKING:
    from streams.app import Tally

log = logging.getLogger(__name__)
_LATENCY_SAMPLES = 200_000


def _dumps(d: dict[str, Any]) -> bytes:
    return json.dumps(d, separators=(",", ":"), ensure_ascii=False).encode()


def register_agents(t: Tally) -> None:
    app, s, topics, stats = t.app, t.settings, t.topics, t.stats
    metrics = t.metrics
    rec = t.reconciler
    balances = t.write_behind["balances"]  # written after the outputs, like the orders
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
        metrics.dead_letter(exc.code)

    def emit(out: Outputs, partition: int, ingested_ms: int) -> None:
        now_ms = int(time.time() * 1000)
        for b in out.breaks:
            b.detected_at_ms = now_ms
            b.trigger_ingested_at_ms = ingested_ms
            send("breaks", b.txn_id, b.to_json())
            stats.breaks[b.kind] += 1
            metrics.break_sent(b, now_ms, ingested_ms)
            if ingested_ms and len(stats.latencies_ms) < _LATENCY_SAMPLES:
                stats.latencies_ms.append(now_ms - ingested_ms)
        for posting in out.postings:
            send("postings", posting.txn_id, posting.to_json())
            metrics.posting_sent(posting, now_ms, ingested_ms)
            for account, legs in posting.legs_by_account():
                key = f"{balance_key(account, posting.currency)}|{partition}"
                bal = balances.get(key) or Balance(account, posting.currency)
                bal.apply(legs)
                balances[key] = bal
                metrics.balance_changed(key, bal)
        for q in out.queries:
            send("status-queries", q.txn_id, q.to_json())
            metrics.status_query(q.channel_id)
        for link in out.links:
            send("links", link.original_txn_id, link.to_json())
        for c in out.claims:
            send("success-claims", c.key, c.to_json())

    checked: set[int] = set()  # partitions whose balances were checked since assignment

    def _assigned(_app: Any, /, *_args: Any, signal: Any, **_kw: Any) -> None:
        checked.clear()  # recovered tables: check them again before the next message

    app.on_partitions_assigned.connect(_assigned)

    def heal_balances(partition: int) -> None:
        """Make the partition's balance shards agree with its orders' positions.

        A message changes an order and the balance shards of its postings; their
        changelogs are separate writes, so a worker killed between them comes back
        with an order that says "posted" and a shard that missed it (the replayed
        message is a duplicate for the order and posts nothing). The orders are the
        truth (`balances_from_positions`): a shard that differs is corrected, counted
        as one more posting (its version moves on), logged and published."""
        n = s.partitions
        states = [st for k, st in t.orders.items() if partition_for(k, n) == partition]
        want = balances_from_positions(states)
        have = {
            k.rsplit("|", 1)[0]: bal
            for k, bal in balances.items()
            if k.rsplit("|", 1)[1] == str(partition)
        }
        for key in sorted(want.keys() | have.keys()):
            old = have.get(key)
            figures = want.get(key, {})
            if (old.figures() if old is not None else {}) == figures:
                continue
            account, currency = key.rsplit("|", 1)
            bal = Balance(account, currency, dict(figures), (old.postings if old else 0) + 1)
            balances[f"{key}|{partition}"] = bal
            stats.balances_healed += 1
            log.warning(
                "balance %s of partition %d did not add up to its orders' positions "
                "(a crash between changelog writes): corrected from %s to %s",
                key,
                partition,
                old.figures() if old is not None else {},
                figures,
            )
        publish_snapshots(partition)
        balances.flush()

    def handle(kind: str, msg: Any) -> None:
        """One message of `kind` (transactions | callbacks | links | ticks) into the
        Reconciler; the four reconcile agents share it, their topics are co-partitioned."""
        p = msg.partition
        if p not in checked:
            heal_balances(p)
            checked.add(p)
        stats.seen(msg.topic, p, msg.offset, activity=kind != "ticks")
        try:
            if kind == "ticks":
                out = rec.on_tick(p, int(json.loads(msg.value)["advance_ms"]))
            elif kind == "links":
                out = rec.on_link(ReversalLink.from_json(json.loads(msg.value)), p)
            else:
                stats.partition_activity[p] = time.time()
                if kind == "transactions":
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
            return
        except Exception as exc:  # a bug must not stop the agent: park the message
            log.exception("reconcile failed on %s[%s]@%s", msg.topic, p, msg.offset)
            for buffered in t.write_behind.values():  # a half-applied message leaves no state
                buffered.pending.clear()
            dead_letter(msg, InvalidEvent("internal_error", f"{type(exc).__name__}: {exc}"))
            return
        if out.duplicate:
            stats.duplicates += 1
        emit(out, p, int(msg.timestamp * 1000))
        publish_snapshots(p)
        for buffered in t.write_behind.values():  # outputs first, then the state's changelog
            buffered.flush()

    def publish_snapshots(partition: int) -> None:
        """The orders and balance shards this message changed, for the sinks."""
        for state in t.write_behind["orders"].pending.values():
            channel = state.channel_id or (state.evidence[0].channel_id if state.evidence else "")
            v = view(state, rec.policies[channel])
            metrics.order_changed(state, v, rec.policies[channel])
            at = max([state.our_status_at_ms] + [e.occurred_at_ms for e in state.evidence])
            send("order-states", state.txn_id, order_snapshot(state, v, at))
        for key, bal in t.write_behind["balances"].pending.items():
            send("balances", key, balance_snapshot(key, bal, partition))

    def reconcile_agent(kind: str) -> Any:
        async def reconcile(stream: faust.StreamT[bytes]) -> None:
            async for event in stream.events():
                handle(kind, event.message)

        reconcile.__name__ = reconcile.__qualname__ = f"reconcile_{kind}"
        return app.agent(topics[kind], name=f"tally.reconcile.{kind}")(reconcile)

    reconcilers = {k: reconcile_agent(k) for k in ("transactions", "callbacks", "links", "ticks")}

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
                metrics.break_sent(b, b.detected_at_ms, int(msg.timestamp * 1000))

    @app.timer(interval=s.idle_tick_seconds, name="tally.idle_ticks")
    async def idle_ticks() -> None:
        now = time.time()
        assigned = app.assignor.assigned_actives()
        for p in sorted({tp.partition for tp in assigned if tp.topic == s.topic_transactions}):
            active = stats.partition_activity.get(p, started)
            if now - active < s.idle_tick_seconds:
                continue
            # idle means nothing left to read, not a stalled fetch of a backlog
            if not (t.caught_up(p, "transactions") and t.caught_up(p, "callbacks")):
                continue
            ref = max(active, stats.partition_ticked.get(p, started))
            advance_ms = int((now - ref) * 1000)
            if advance_ms > 0:
                send("ticks", None, {"advance_ms": advance_ms, "wall": now}, partition=p)
                stats.partition_ticked[p] = now

    t.agents.update(
        {f"reconcile_{k}": a for k, a in reconcilers.items()},
        claims=claims,
        idle_ticks=idle_ticks,
    )

    @app.on_partitions_revoked.connect
    async def _revoked(*args: Any, **kwargs: Any) -> None:
        # timers are rebuilt from the table for whatever this worker is assigned next
        rec.forget_partitions()
