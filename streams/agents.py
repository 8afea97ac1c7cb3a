"""Faust agents: thin shells around the domain core, working a batch at a time.

- `reconcile`: one agent over the four co-partitioned input topics (transactions,
  callbacks, links, ticks; keyed by txn_id) feeding the `Reconciler`. It takes its
  input in batches that mix the topics and partitions: a batch is parsed and run
  through the pure core message by message, in order, then its results are made
  durable by `streams.checkpoint.Checkpoint.commit` (state, then outputs, then input
  offsets: the numbered steps are written out there). One agent, one batch at a
  time: the state a commit writes is exactly its batch's.
- postings are applied to the `balances` table shard of the message's partition.
- `claims`: success claims keyed by channel transaction id into `ChannelTxnIndex`,
  a batch at a time with its own checkpoint.
- `idle_ticks` (timer): keeps an idle partition's event-time watermark moving with
  the wall clock, through the log, so replays stay deterministic.

Within a batch, results are coalesced: one changelog record per changed table key —
and the `orders` and `balances` tables' changelogs are the `payments.order-states`
and `payments.balances` topics (`streams.codecs`), so that record is also the
snapshot the sink stores. Breaks, postings, status queries, links, claims and dead
letters are facts and stay one message each. Every message goes to the partition its
key belongs to, whichever partition the batch's other messages came from.

A message that cannot be processed never stops an agent: it is sent to the
dead-letter topic with its reason and counted.

The parts: `streams.intake` picks a batch's messages to process, `streams.emit`
sends their results, `streams.recovery` resends what a crash left unsent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from streams.checkpoint import dumps
from streams.emit import Emitter
from streams.intake import Intake
from streams.recovery import Recovery, sent
from tally.core.events import InvalidEvent, parse_callback, parse_transaction
from tally.core.orders import view
from tally.core.pipeline import partition_for
from tally.core.realtime import ReversalLink, SuccessClaim

if TYPE_CHECKING:
    from streams.handles import Tally
    from streams.metrics import WorkerMetrics

log = logging.getLogger(__name__)
_LATENCY_SAMPLES = 200_000
_KINDS = ("transactions", "callbacks", "links", "ticks")


class Reconcile:
    """The reconcile agent's batches: every message in order through the Reconciler,
    then a snapshot of what changed, then the commit."""

    def __init__(
        self, t: Tally, metrics: WorkerMetrics, emitter: Emitter, recovery: Recovery, intake: Intake
    ) -> None:
        self.t = t
        self.stats = t.stats
        self.metrics = metrics
        self.rec = t.reconciler
        self.ck = t.checkpoint
        self.orders = t.writers["orders"]
        self.balances = t.writers["balances"]
        self.writers = (self.orders, self.balances, t.writers["watermarks"])
        self.kinds = {emitter.names[k]: k for k in _KINDS}  # topic -> transactions | ...
        self.max_bytes = t.settings.max_message_bytes
        self.emitter = emitter
        self.emit = emitter.emit
        self.recovery = recovery
        self.checked = recovery.checked  # partitions recovered since the assignment
        self.intake = intake

    def handle(self, msg: Any, now_ms: int) -> None:
        """One message of any input topic into the Reconciler."""
        stats, rec = self.stats, self.rec
        kind = self.kinds[msg.topic]
        p = msg.partition
        if p not in self.checked:
            self.recovery.recover(p)
            self.checked.add(p)
        stats.seen(msg.topic, p, msg.offset, activity=kind != "ticks")
        self.ck.consumed(msg.topic, p, msg.offset)
        for w in self.writers:
            w.partition = p
        try:
            if kind == "transactions":
                stats.partition_activity[p] = now_ms / 1000
                txn = parse_transaction(
                    msg.value, msg.key, check_key=True, max_bytes=self.max_bytes
                )
                out = rec.on_transaction(txn, p)
            elif kind == "callbacks":
                stats.partition_activity[p] = now_ms / 1000
                cb = parse_callback(msg.value, msg.key, check_key=True, max_bytes=self.max_bytes)
                out = rec.on_callback(cb, p)
            elif kind == "links":
                out = rec.on_link(ReversalLink.from_json(orjson.loads(msg.value)), p)
            else:
                out = rec.on_tick(p, int(orjson.loads(msg.value)["advance_ms"]))
        except InvalidEvent as exc:
            self.emitter.dead_letter(msg, exc)
            return
        except Exception as exc:  # a bug must not stop the agent: park the message
            log.exception("reconcile failed on %s[%s]@%s", msg.topic, p, msg.offset)
            self.emitter.dead_letter(
                msg, InvalidEvent("internal_error", f"{type(exc).__name__}: {exc}")
            )
            return
        if out.duplicate:
            stats.duplicates += 1
        if out:
            self.emit(out, p, int(msg.timestamp * 1000), now_ms)

    def changed(self, seq: int) -> list[Any]:
        """The orders the batch changed, each with its outbox: the batch's facts of it.
        (Their changelog records, written by the commit, are the order-state and
        balance snapshots: `payments.order-states`, `payments.balances`.)"""
        orders, facts, metrics = self.orders, self.emitter.facts, self.metrics
        policies = self.rec.policies
        states = []
        for txn_id in orders.dirty:
            state = orders.data[txn_id]
            state.outbox = facts.pop(txn_id, [])
            state.outbox_seq = seq
            states.append(state)
            channel = state.channel_id or (state.evidence[0].channel_id if state.evidence else "")
            policy = policies[channel]
            metrics.order_changed(state, view(state, policy), policy)
        assert not facts, f"facts of orders the batch did not change: {sorted(facts)[:5]}"
        for key in self.balances.dirty:
            metrics.balance_changed(key, self.balances.data[key])
        return states

    async def batch(self, events: Sequence[Any]) -> None:
        """Process every message in order, snapshot what changed, commit."""
        t0 = time.perf_counter()
        now_ms = int(time.time() * 1000)
        generation, messages = self.intake.current(events)
        if not messages:
            return
        partitions = set()
        handle = self.handle
        for message in messages:
            handle(message, now_ms)
            partitions.add(message.partition)
        ck = self.ck
        seq = ck.begin()
        states = self.changed(seq)
        t1 = time.perf_counter()
        pending = self.emitter.pending_latency
        latency, outboxes = self.record_latency(pending[:]), sent(states, seq)
        pending.clear()

        def done() -> None:
            latency()
            outboxes()

        await ck.commit(generation, done, self.recovery.markers(partitions))
        self.stats.batch(len(messages), len(partitions), t1 - t0, time.perf_counter() - t1)

    def record_latency(self, ingested: list[int]) -> Callable[[], None]:
        """Event-to-break latency: broker timestamp of the revealing message to the
        break's batch being committed (outputs and state acknowledged)."""
        stats = self.stats

        def done() -> None:
            done_ms = time.time() * 1000
            room = _LATENCY_SAMPLES - len(stats.latencies_ms)
            stats.latencies_ms.extend(done_ms - ms for ms in ingested[:room])

        return done


def _claims(t: Tally, metrics: WorkerMetrics, emitter: Emitter, intake: Intake) -> Any:
    """The claims agent: success claims by channel transaction id into the
    `ChannelTxnIndex`, a batch at a time with its own checkpoint."""
    stats, s, n = t.stats, t.settings, t.settings.partitions
    claims_ck = t.claims_checkpoint
    claims_table = t.writers["channel-txn-claims"]

    def claim(msg: Any, now_ms: int) -> None:
        stats.seen(msg.topic, msg.partition, msg.offset)
        claims_ck.consumed(msg.topic, msg.partition, msg.offset)
        claims_table.partition = msg.partition
        try:
            b = t.index.on_claim(SuccessClaim.from_json(orjson.loads(msg.value)))
        except Exception as exc:
            log.exception("claims failed on %s[%s]@%s", msg.topic, msg.partition, msg.offset)
            error = InvalidEvent("internal_error", f"{type(exc).__name__}: {exc}")
            emitter.dead_letter(msg, error, claims_ck)
            return
        if b is not None:
            b.detected_at_ms = now_ms
            emitter.output("breaks", partition_for(b.txn_id, n), b.txn_id, b.to_json(), claims_ck)
            stats.breaks[b.kind] += 1
            metrics.break_sent(b, now_ms, int(msg.timestamp * 1000))

    @t.app.agent(t.topics["success-claims"], name="tally.claims")
    async def claims(stream: Any) -> None:
        async for events in stream.take_events(s.batch_max_events, s.batch_max_ms / 1000):
            now_ms = int(time.time() * 1000)
            generation, messages = intake.current(events)
            if not messages:
                continue
            for message in messages:
                claim(message, now_ms)
            await claims_ck.commit(generation)

    return claims


def _idle_ticks(t: Tally, names: dict[str, str]) -> Any:
    """The timer that keeps an idle partition's event-time watermark moving with the
    wall clock, through the log (a tick message), so replays stay deterministic."""
    app, s, stats = t.app, t.settings, t.stats
    started = time.time()

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
                # a tick is an input of the reconcile agents, not a result: sent on its own
                await t.topics["ticks"].send(
                    value=dumps({"advance_ms": advance_ms, "wall": now}), partition=p
                )
                stats.produced[names["ticks"]] += 1
                stats.partition_ticked[p] = now

    return idle_ticks


def register_agents(t: Tally) -> None:
    """The agents, the timer and the rebalance handlers of `t`'s app."""
    app, s = t.app, t.settings
    metrics = t.metrics
    assert metrics is not None, "the metrics are installed before the agents"
    emitter = Emitter(t, metrics)
    recovery = Recovery(t, emitter)
    intake = Intake(t)
    reconciling = Reconcile(t, metrics, emitter, recovery, intake)

    def _assigned(_app: Any, /, *_args: Any, signal: Any, **_kw: Any) -> None:
        recovery.checked.clear()  # recovered tables: check them again before the next message
        intake.positions.reset()  # read again from the committed offsets

    app.on_partitions_assigned.connect(_assigned)

    @app.agent(t.topics["reconcile"], name="tally.reconcile")
    async def reconcile(stream: Any) -> None:  # a faust.Stream: take_events
        async for events in stream.take_events(s.batch_max_events, s.batch_max_ms / 1000):
            await reconciling.batch(events)

    t.agents.update(
        reconcile=reconcile,
        claims=_claims(t, metrics, emitter, intake),
        idle_ticks=_idle_ticks(t, emitter.names),
    )

    @app.on_partitions_revoked.connect
    async def _revoked(*args: Any, **kwargs: Any) -> None:
        # before the worker rejoins the group: every batch processed so far durable,
        # its input offsets committed in the generation it was read in
        await t.settled()
        # timers are rebuilt from the table for whatever this worker is assigned next
        t.reconciler.forget_partitions()
