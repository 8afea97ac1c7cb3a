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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import orjson
from faust.types import TP

from streams.checkpoint import dumps
from streams.offsets import first_offset_from
from streams.positions import Admit, InputPositions
from tally.core.events import (
    DeadLetter,
    InvalidEvent,
    parse_callback,
    parse_transaction,
)
from tally.core.ledger import Balance, balance_key, balances_from_positions
from tally.core.orders import view
from tally.core.pipeline import partition_for
from tally.core.realtime import Outputs, ReversalLink, SuccessClaim

if TYPE_CHECKING:
    from streams.app import Tally

log = logging.getLogger(__name__)
_LATENCY_SAMPLES = 200_000
_KINDS = ("transactions", "callbacks", "links", "ticks")
_REFILL_AGAIN_SECONDS = 2.0  # a hole at the same offset is read again after this long


def _spans(messages: Iterable[Any]) -> str:
    """Topic[partition]@first..last offsets (generation) of some messages, for a log."""
    spans: dict[tuple[str, int, Any], list[int]] = {}
    for m in messages:
        spans.setdefault((m.topic, m.partition, m.generation_id), []).append(m.offset)
    return ", ".join(
        f"{t}[{p}]@{min(o)}..{max(o)} (gen {g})" for (t, p, g), o in sorted(spans.items(), key=str)
    )


def register_agents(t: Tally) -> None:
    app, s, topics, stats = t.app, t.settings, t.topics, t.stats
    metrics = t.metrics
    rec = t.reconciler
    n = s.partitions
    orders, balances, watermarks = (
        t.writers["orders"],
        t.writers["balances"],
        t.writers["watermarks"],
    )
    writers = (orders, balances, watermarks)
    ck = t.checkpoint
    names = {k: topic.get_topic_name() for k, topic in topics.items() if k != "reconcile"}
    batch_max, batch_within = s.batch_max_events, s.batch_max_ms / 1000
    kinds = {names[k]: k for k in _KINDS}  # topic name -> transactions | callbacks | ...
    started = time.time()
    pending_latency: list[int] = []  # ingest times of the breaks of the batch being made
    facts: dict[str, list[list[Any]]] = {}  # the batch's facts by the order they belong to

    def output(
        kind: str, partition: int, key: str | None, value: dict[str, Any], into: Any = ck
    ) -> None:
        into.outbox.add(names[kind], partition, None if key is None else key.encode(), dumps(value))

    def dead_letter(msg: Any, exc: InvalidEvent, into: Any = ck) -> None:
        dl = DeadLetter.of(
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            key=msg.key,
            value=msg.value if isinstance(msg.value, bytes) else bytes(msg.value or b""),
            error=exc,
            dead_at_ms=int(time.time() * 1000),
        )
        key = dl.dead_letter_id
        output("dead-letter", partition_for(key, n), key, dl.to_json(), into)
        stats.dead_letters[exc.code] += 1
        metrics.dead_letter(exc.code)

    def fact(txn_id: str, kind: str, partition: int, key: str, value: dict[str, Any]) -> None:
        """An output that is a fact of order `txn_id`: sent, and kept in the order's
        outbox until the batch is committed (streams.checkpoint)."""
        output(kind, partition, key, value)
        found = facts.get(txn_id)
        if found is None:
            found = facts[txn_id] = []
        found.append([kind, partition, key, value])

    def emit(out: Outputs, partition: int, ingested_ms: int, now_ms: int) -> None:
        """A message's facts, each one message, to its key's partition."""
        for b in out.breaks:
            b.detected_at_ms = now_ms
            b.trigger_ingested_at_ms = ingested_ms
            fact(b.txn_id, "breaks", partition, b.txn_id, b.to_json())
            stats.breaks[b.kind] += 1
            metrics.break_sent(b, now_ms, ingested_ms)
            if ingested_ms:
                pending_latency.append(ingested_ms)
        for posting in out.postings:
            fact(posting.txn_id, "postings", partition, posting.txn_id, posting.to_json())
            metrics.posting_sent(posting, now_ms, ingested_ms)
            for account, legs in posting.legs_by_account():
                key = f"{balance_key(account, posting.currency)}|{partition}"
                bal = balances.get(key) or Balance(account, posting.currency)
                bal.apply(legs)
                balances[key] = bal
        for q in out.queries:
            fact(q.txn_id, "status-queries", partition, q.txn_id, q.to_json())
            metrics.status_query(q.channel_id)
        for link in out.links:
            original = link.original_txn_id
            fact(
                link.reversal_txn_id, "links", partition_for(original, n), original, link.to_json()
            )
        for c in out.claims:
            fact(c.txn_id, "success-claims", partition_for(c.key, n), c.key, c.to_json())

    def changed(seq: int) -> list[Any]:
        """The orders the batch changed, each with its outbox: the batch's facts of it.
        (Their changelog records, written by the commit, are the order-state and
        balance snapshots: `payments.order-states`, `payments.balances`.)"""
        states = []
        for txn_id in orders.dirty:
            state = orders.data[txn_id]
            state.outbox = facts.pop(txn_id, [])
            state.outbox_seq = seq
            states.append(state)
            channel = state.channel_id or (state.evidence[0].channel_id if state.evidence else "")
            policy = rec.policies[channel]
            metrics.order_changed(state, view(state, policy), policy)
        assert not facts, f"facts of orders the batch did not change: {sorted(facts)[:5]}"
        for key in balances.dirty:
            metrics.balance_changed(key, balances.data[key])
        return states

    def sent(states: list[Any], seq: int) -> Callable[[], None]:
        """After the batch's outputs are acknowledged its orders' outboxes are kept
        only in the changelog (a recovering worker reads the markers to skip them)."""

        def done() -> None:
            for state in states:
                if state.outbox_seq == seq:
                    state.outbox = []

        return done

    def markers(partitions: set[int]) -> Callable[[int, Any], None]:
        def write(completed_seq: int, state: Any) -> None:
            """Every batch up to `completed_seq` is acknowledged, outputs included:
            say so in the state of each partition this batch writes (`sent|<p>`)."""
            if not len(state):
                return  # the batch writes no state (duplicates only): nothing to mark
            for partition in sorted(partitions):
                key = f"sent|{partition}"
                if watermarks.data.get(key) == completed_seq:
                    continue
                watermarks.data[key] = completed_seq
                state.add(watermarks.changelog_topic, partition, dumps(key), dumps(completed_seq))

        return write

    checked: set[int] = set()  # partitions whose balances were checked since assignment

    def committed(tp: tuple[str, int]) -> int | None:
        """The offset the partition was sought to on assignment: the group's committed
        offset, or the start of its log if none (streams.app)."""
        key = TP(*tp)
        offset = app.consumer._committed_offset.get(key)  # type: ignore[attr-defined]
        if offset is None:
            offset = app.tally_start_offsets.get(key)  # type: ignore[attr-defined]
        return None if offset is None else int(offset)

    positions = InputPositions(committed)
    refills: set[asyncio.Task[None]] = set()
    refilled: dict[tuple[str, int], tuple[int | None, float]] = {}  # tp -> from, when

    def _assigned(_app: Any, /, *_args: Any, signal: Any, **_kw: Any) -> None:
        checked.clear()  # recovered tables: check them again before the next message
        positions.reset()  # read again from the committed offsets

    app.on_partitions_assigned.connect(_assigned)

    def heal_balances(partition: int, states: list[Any]) -> None:
        """Make the partition's balance shards agree with its orders' positions.

        A batch changes orders and the balance shards of their postings; the
        changelog records of one batch are separate writes, so a worker killed
        between them comes back with an order that says "posted" and a shard that
        missed it (the replayed message is a duplicate for the order and posts
        nothing), or the reverse. The orders are the truth
        (`balances_from_positions`): a shard that differs is corrected, counted as
        one more posting (its version moves on), logged and published."""
        want = balances_from_positions(states)
        suffix = f"|{partition}"
        have = {k[: -len(suffix)]: bal for k, bal in balances.data.items() if k.endswith(suffix)}
        balances.partition = partition
        for key in sorted(want.keys() | have.keys()):
            old = have.get(key)
            figures = want.get(key, {})
            if (old.figures() if old is not None else {}) == figures:
                continue
            account, currency = key.rsplit("|", 1)
            bal = Balance(account, currency, dict(figures), (old.postings if old else 0) + 1)
            balances[f"{key}{suffix}"] = bal
            stats.balances_healed += 1
            log.warning(
                "balance %s of partition %d did not add up to its orders' positions "
                "(a crash between changelog writes): corrected from %s to %s",
                key,
                partition,
                old.figures() if old is not None else {},
                figures,
            )

    def recover(partition: int) -> None:
        """Before a partition's first message after it is assigned (its tables just
        recovered): send again what its recovered state may hold unsent — the outbox
        of every order changed by a batch later than the partition's `sent|<p>`
        marker — and correct the balance shards from the orders' positions."""
        sent_seq = watermarks.data.get(f"sent|{partition}", 0)
        ck.seen(sent_seq)
        resent = 0
        states = [st for k, st in orders.data.items() if partition_for(k, n) == partition]
        for state in states:
            if state.outbox_seq <= sent_seq:
                if state.outbox:
                    state.outbox = []  # sent: kept in the changelog only
                continue
            ck.seen(state.outbox_seq)
            for kind, p, key, value in state.outbox:
                output(kind, p, key, value)
            resent += 1
        heal_balances(partition, states)
        stats.outboxes_resent += resent
        if resent:
            log.info("partition %d: sent again the outputs of %d orders", partition, resent)

    def handle(msg: Any, now_ms: int) -> None:
        """One message of any input topic into the Reconciler."""
        kind = kinds[msg.topic]
        p = msg.partition
        if p not in checked:
            recover(p)
            checked.add(p)
        stats.seen(msg.topic, p, msg.offset, activity=kind != "ticks")
        ck.consumed(msg.topic, p, msg.offset)
        for w in writers:
            w.partition = p
        try:
            if kind == "transactions":
                stats.partition_activity[p] = now_ms / 1000
                txn = parse_transaction(
                    msg.value, msg.key, check_key=True, max_bytes=s.max_message_bytes
                )
                out = rec.on_transaction(txn, p)
            elif kind == "callbacks":
                stats.partition_activity[p] = now_ms / 1000
                cb = parse_callback(
                    msg.value, msg.key, check_key=True, max_bytes=s.max_message_bytes
                )
                out = rec.on_callback(cb, p)
            elif kind == "links":
                out = rec.on_link(ReversalLink.from_json(orjson.loads(msg.value)), p)
            else:
                out = rec.on_tick(p, int(orjson.loads(msg.value)["advance_ms"]))
        except InvalidEvent as exc:
            dead_letter(msg, exc)
            return
        except Exception as exc:  # a bug must not stop the agent: park the message
            log.exception("reconcile failed on %s[%s]@%s", msg.topic, p, msg.offset)
            dead_letter(msg, InvalidEvent("internal_error", f"{type(exc).__name__}: {exc}"))
            return
        if out.duplicate:
            stats.duplicates += 1
        if out:
            emit(out, p, int(msg.timestamp * 1000), now_ms)

    def current(events: Sequence[Any]) -> tuple[int | None, list[Any]]:
        """The batch's messages to process: none during a rebalance, until Faust has
        sought the partitions to their committed offsets in this generation (it
        reads them again from there), none read in an earlier group generation —
        their partition's owner reads them again from the committed offsets
        (streams.checkpoint) — and, per partition, only the next offset each time
        (`streams.positions`): a message read again is dropped, a hole before a
        message makes the worker read the partition again."""
        generation = app.consumer_generation_id
        sought = app.tally_sought_generation  # type: ignore[attr-defined]
        if sought != generation or not app.flow_control.is_active():
            stale = [e.message for e in events]
            messages: list[Any] = []
        else:
            stale, messages = [], []
            for e in events:
                m = e.message
                if m.generation_id != generation:
                    stale.append(m)
                    continue
                tp = (m.topic, m.partition)
                first = tp not in positions.next
                verdict = positions.admit(tp, m.offset)
                if verdict is Admit.NEXT:
                    messages.append(m)
                    if first:
                        log.info(
                            "%s[%d]: reading from offset %d (group committed: %s)",
                            *tp,
                            m.offset,
                            committed(tp),
                        )
                elif verdict is Admit.SEEN:
                    stats.reread_dropped += 1
                else:
                    hole(m)
        if stale:
            stats.stale_dropped += len(stale)
            log.info(
                "left %d of %d messages for re-reading (read before a rebalance, "
                "generation now %s): %s",
                len(stale),
                len(events),
                generation,
                _spans(stale),
            )
        return generation, messages

    def hole(m: Any) -> None:
        """`m` is past its partition's next offset: the messages between never reached
        the agent. Read the partition again from the next offset (unless the log
        really holds nothing there)."""
        tp = (m.topic, m.partition)
        stats.hole_dropped += 1
        expected = positions.expected(tp)
        last_from, last_at = refilled.get(tp, (None, 0.0))
        recently = last_from == expected and time.monotonic() - last_at < _REFILL_AGAIN_SECONDS
        if tp in positions.refilling or recently:
            return  # being read again (what arrives meanwhile was fetched before)
        refilled[tp] = (expected, time.monotonic())
        positions.refilling.add(tp)
        log.warning(
            "%s[%d]: offset %d arrived before %s..%d: reading the partition again from %s",
            *tp,
            m.offset,
            expected,
            m.offset - 1,
            expected,
        )
        task = asyncio.ensure_future(refill(tp, m.offset))
        refills.add(task)  # kept until done (the loop holds tasks weakly)
        task.add_done_callback(refills.discard)

    async def refill(tp: tuple[str, int], seen: int) -> None:
        try:
            expected = positions.expected(tp)
            if expected is None:
                return
            first = await first_offset_from(s.bootstrap_servers(), *tp, expected)
            if first is not None and expected < first <= seen:
                log.info("%s[%d]: offsets %d..%d hold no message", *tp, expected, first - 1)
                positions.step_over(tp, first)
            stats.refills += 1
            await app.consumer.seek_wait({TP(*tp): positions.expected(tp) or expected})
        except Exception:
            log.exception("reading %s[%d] again failed", *tp)
        finally:
            positions.refilling.discard(tp)

    async def reconcile_batch(events: Sequence[Any]) -> None:
        """Process every message in order, snapshot what changed, commit."""
        t0 = time.perf_counter()
        now_ms = int(time.time() * 1000)
        generation, messages = current(events)
        if not messages:
            return
        partitions = set()
        for message in messages:
            handle(message, now_ms)
            partitions.add(message.partition)
        seq = ck.begin()
        states = changed(seq)
        t1 = time.perf_counter()
        latency, outboxes = record_latency(pending_latency[:]), sent(states, seq)
        pending_latency.clear()

        def done() -> None:
            latency()
            outboxes()

        await ck.commit(generation, done, markers(partitions))
        stats.batch(len(messages), len(partitions), t1 - t0, time.perf_counter() - t1)

    def record_latency(ingested: list[int]) -> Callable[[], None]:
        """Event-to-break latency: broker timestamp of the revealing message to the
        break's batch being committed (outputs and state acknowledged)."""

        def done() -> None:
            done_ms = time.time() * 1000
            room = _LATENCY_SAMPLES - len(stats.latencies_ms)
            stats.latencies_ms.extend(done_ms - ms for ms in ingested[:room])

        return done

    @app.agent(topics["reconcile"], name="tally.reconcile")
    async def reconcile(stream: Any) -> None:  # a faust.Stream: take_events
        async for events in stream.take_events(batch_max, batch_within):
            await reconcile_batch(events)

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
            dead_letter(msg, error, claims_ck)
            return
        if b is not None:
            b.detected_at_ms = now_ms
            output("breaks", partition_for(b.txn_id, n), b.txn_id, b.to_json(), claims_ck)
            stats.breaks[b.kind] += 1
            metrics.break_sent(b, now_ms, int(msg.timestamp * 1000))

    @app.agent(topics["success-claims"], name="tally.claims")
    async def claims(stream: Any) -> None:
        async for events in stream.take_events(batch_max, batch_within):
            now_ms = int(time.time() * 1000)
            generation, messages = current(events)
            if not messages:
                continue
            for message in messages:
                claim(message, now_ms)
            await claims_ck.commit(generation)

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
                await topics["ticks"].send(
                    value=dumps({"advance_ms": advance_ms, "wall": now}), partition=p
                )
                stats.produced[names["ticks"]] += 1
                stats.partition_ticked[p] = now

    t.agents.update(
        reconcile=reconcile,
        claims=claims,
        idle_ticks=idle_ticks,
    )

    @app.on_partitions_revoked.connect
    async def _revoked(*args: Any, **kwargs: Any) -> None:
        # before the worker rejoins the group: every batch processed so far durable,
        # its input offsets committed in the generation it was read in
        await t.settled()
        # timers are rebuilt from the table for whatever this worker is assigned next
        rec.forget_partitions()
