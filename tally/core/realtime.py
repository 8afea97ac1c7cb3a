"""Real-time reconciliation: one order's evidence in, breaks / postings / status
queries out. This is the whole per-order logic of the stream, with no I/O.

`Reconciler` is driven by the Faust agent in `streams.agents` (state store = a
Faust table) and directly by tests, the simulator's oracle and the benchmark
(state store = a dict). For every message it

  1. skips it if its event id was already applied to the order (idempotence);
  2. merges it into the `OrderState` (`tally.core.orders`);
  3. raises breaks the new state reveals (`tally.core.breaks`), each once;
  4. reposts the order's position if its standing changed (`tally.core.ledger`);
  5. arms the order's timers and advances the partition's event-time watermark,
     firing due timers: status queries, pending_timeout, orphan_callback.

Time is event time. A partition's watermark is the *smaller* of the latest
`occurred_at` seen on its two input topics (transactions, callbacks), less the
allowed lateness: the stream consumes the two topics independently, so one may run
ahead of the other, and a timer must not fire because our orders were read before
the channel's evidence for them. An input that is caught up (`caught_up` says so:
in the stream, the worker has read its topic-partition to the end) does not hold the
other back; with no `caught_up` hook (one ordered log, as in `LocalPipeline`) the
watermark simply follows the latest event. Wall clock only enters through these
idleness checks and `on_tick`, which the stream layer calls when a partition has
been idle, so replaying yesterday's log gives the same breaks as the live run did.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from tally.core.breaks import (
    Break,
    BreakKind,
    ChannelTxnClaim,
    Finding,
    break_id,
    detect,
    duplicate_channel_txn,
    stamp,
)
from tally.core.events import Callback, Transaction, iso_ms
from tally.core.ledger import Posting, repost
from tally.core.orders import (
    OrderState,
    Standing,
    apply_callback,
    apply_reversal_link,
    apply_transaction,
    view,
)
from tally.core.policy import Policies


@dataclass(frozen=True, slots=True)
class StatusQuery:
    """S4/S3: a request for the channel gateway to query an order's status."""

    txn_id: str
    channel_id: str
    merchant_id: str | None
    channel_txn_id: str | None
    attempt: int
    reason: str  # sla | verify_success
    requested_at_ms: int  # event time

    @property
    def query_id(self) -> str:
        return f"{self.txn_id}:q{self.attempt}"

    def to_json(self) -> dict[str, Any]:
        return {
            "query_id": self.query_id,
            "txn_id": self.txn_id,
            "channel_id": self.channel_id,
            "merchant_id": self.merchant_id,
            "channel_txn_id": self.channel_txn_id,
            "attempt": self.attempt,
            "reason": self.reason,
            "requested_at": iso_ms(self.requested_at_ms),
        }


@dataclass(frozen=True, slots=True)
class ReversalLink:
    """Internal message from a reversal order to its original (keyed by the original)."""

    original_txn_id: str
    reversal_txn_id: str
    status: str  # pending | success | failed
    occurred_at_ms: int

    @property
    def event_id(self) -> str:
        return f"link:{self.reversal_txn_id}:{self.status}:{self.occurred_at_ms}"

    def to_json(self) -> dict[str, Any]:
        return {
            "original_txn_id": self.original_txn_id,
            "reversal_txn_id": self.reversal_txn_id,
            "status": self.status,
            "occurred_at_ms": self.occurred_at_ms,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ReversalLink:
        return cls(d["original_txn_id"], d["reversal_txn_id"], d["status"], d["occurred_at_ms"])


@dataclass(frozen=True, slots=True)
class SuccessClaim:
    """Internal message: a channel transaction id reported as success for an order
    (keyed by channel/channel_txn_id), to catch one id on two orders."""

    channel_id: str
    channel_txn_id: str
    txn_id: str
    merchant_id: str | None
    currency: str
    amount: int
    occurred_at_ms: int

    @property
    def key(self) -> str:
        return f"{self.channel_id}/{self.channel_txn_id}"

    def to_json(self) -> dict[str, Any]:
        return {
            "channel_id": self.channel_id,
            "channel_txn_id": self.channel_txn_id,
            "txn_id": self.txn_id,
            "merchant_id": self.merchant_id,
            "currency": self.currency,
            "amount": self.amount,
            "occurred_at_ms": self.occurred_at_ms,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SuccessClaim:
        return cls(**d)


@dataclass(slots=True)
class Outputs:
    breaks: list[Break] = field(default_factory=list)
    postings: list[Posting] = field(default_factory=list)
    queries: list[StatusQuery] = field(default_factory=list)
    links: list[ReversalLink] = field(default_factory=list)
    claims: list[SuccessClaim] = field(default_factory=list)
    duplicate: bool = False  # the message had been applied already

    def __init__(
        self,
        breaks: list[Break] | None = None,
        postings: list[Posting] | None = None,
        queries: list[StatusQuery] | None = None,
        links: list[ReversalLink] | None = None,
        claims: list[SuccessClaim] | None = None,
        duplicate: bool = False,
    ) -> None:
        # written out: one per message, the dataclass default factories cost more
        self.breaks = [] if breaks is None else breaks
        self.postings = [] if postings is None else postings
        self.queries = [] if queries is None else queries
        self.links = [] if links is None else links
        self.claims = [] if claims is None else claims
        self.duplicate = duplicate

    def extend(self, other: Outputs) -> None:
        self.breaks += other.breaks
        self.postings += other.postings
        self.queries += other.queries
        self.links += other.links
        self.claims += other.claims

    def __bool__(self) -> bool:
        return bool(self.breaks or self.postings or self.queries or self.links or self.claims)


# Timer kinds kept in the per-partition heap.
_QUERY = 0
_ORPHAN = 1
WATERMARK_PERSIST_STEP_MS = 1000
_SOURCES = ("transactions", "callbacks")
_PROVISIONAL = Standing.PROVISIONAL
_partition_keys: dict[int, str] = {}


def _partition_key(partition: int) -> str:
    """The watermarks store's key of a partition."""
    key = _partition_keys.get(partition)
    if key is None:
        key = _partition_keys[partition] = str(partition)
    return key


def _always_caught_up(_partition: int, _source: str) -> bool:
    """No `caught_up` hook: one ordered log, every input counts as caught up."""
    return True


class Reconciler:
    def __init__(
        self,
        policies: Policies,
        orders: MutableMapping[str, OrderState],
        watermarks: MutableMapping[str, int] | None = None,
        *,
        allowed_lateness_ms: int = 5000,
        partition_of: Callable[[str], int] | None = None,
        caught_up: Callable[[int, str], bool] | None = None,
    ) -> None:
        self.policies = policies
        self.orders = orders
        self.watermarks: MutableMapping[str, int] = watermarks if watermarks is not None else {}
        self.lateness = allowed_lateness_ms
        self.caught_up = caught_up or _always_caught_up
        self._hw: dict[int, dict[str, int]] = {}  # latest event time per input topic
        self.partition_of = partition_of or (lambda _k: 0)
        self._wm: dict[int, int] = {}
        self._timers: dict[int, list[tuple[int, int, str]]] = {}

    # ----------------------------------------------------------------- inputs

    def on_transaction(self, txn: Transaction, partition: int = 0) -> Outputs:
        if partition not in self._timers:
            self._ensure_partition(partition)
        policy = self.policies[txn.channel_id]
        state = self.orders.get(txn.txn_id) or OrderState(txn.txn_id)
        if txn.event_id in state.seen:
            return Outputs(duplicate=True)
        state.seen.add(txn.event_id)
        apply_transaction(state, txn, policy)
        out = Outputs()
        self._settle(state, txn.occurred_at_ms, partition, out)
        self._observe(partition, "transactions", txn.occurred_at_ms, out)
        return out

    def on_callback(self, cb: Callback, partition: int = 0) -> Outputs:
        if partition not in self._timers:
            self._ensure_partition(partition)
        state = self.orders.get(cb.txn_id) or OrderState(cb.txn_id)
        if cb.event_id in state.seen:
            return Outputs(duplicate=True)
        state.seen.add(cb.event_id)
        first_success = cb.status == "success"
        if first_success:
            ctid = cb.channel_txn_id
            for ev in state.evidence:
                if ev.status == "success" and ev.channel_txn_id == ctid:
                    first_success = False
                    break
        apply_callback(state, cb)
        out = Outputs()
        if first_success:  # claim a channel transaction id once per order
            out.claims.append(
                SuccessClaim(
                    cb.channel_id,
                    cb.channel_txn_id,
                    cb.txn_id,
                    state.merchant_id,
                    cb.currency,
                    cb.amount,
                    cb.occurred_at_ms,
                )
            )
        if state.type is None and state.orphan_due_ms is None:
            grace = self.policies[cb.channel_id].orphan_grace_seconds * 1000
            state.orphan_due_ms = cb.occurred_at_ms + grace
            self._push(partition, state.orphan_due_ms, _ORPHAN, state.txn_id)
        self._settle(state, cb.occurred_at_ms, partition, out)
        self._observe(partition, "callbacks", cb.occurred_at_ms, out)
        return out

    def on_link(self, link: ReversalLink, partition: int = 0) -> Outputs:
        """A reversal order reports its outcome to the order it reverses."""
        if partition not in self._timers:
            self._ensure_partition(partition)
        state = self.orders.get(link.original_txn_id) or OrderState(link.original_txn_id)
        if link.event_id in state.seen:
            return Outputs(duplicate=True)
        state.seen.add(link.event_id)
        apply_reversal_link(state, link.reversal_txn_id, link.status, link.occurred_at_ms)
        out = Outputs()
        self._settle(state, link.occurred_at_ms, partition, out)
        return out

    def on_tick(self, partition: int, advance_ms: int) -> Outputs:
        """Wall clock kept the partition idle for `advance_ms`: move its watermark on."""
        self._ensure_partition(partition)
        hw = self._hw.setdefault(partition, {})
        if not hw or advance_ms <= 0:
            return Outputs()
        # idle: both inputs are caught up; event time moves on with the wall clock
        top = max(hw.values()) + advance_ms
        for source in _SOURCES:
            hw[source] = top
        return self._advance(partition, top - self.lateness)

    def watermark(self, partition: int = 0) -> int | None:
        return self._wm.get(partition)

    # --------------------------------------------------------------- settling

    def _settle(self, state: OrderState, event_time_ms: int, partition: int, out: Outputs) -> None:
        channel = state.channel_id or (state.evidence[0].channel_id if state.evidence else "")
        policy = self.policies[channel]
        v = view(state, policy)
        for f in detect(state, v, policy):
            self._raise(state, f, event_time_ms, out)
        posting = repost(state, v, event_time_ms)
        if posting is not None:
            out.postings.append(posting)

        # timers: status queries until the order is resolved (S4), at once for a
        # success that must be verified (S3)
        if v.resolved:
            state.query_due_ms = None
        elif state.type is not None and not self._timed_out(state):
            if (
                policy.query_before_final_success
                and state.queries_sent == 0
                and v.standing is _PROVISIONAL
                and any(ev.status == "success" and ev.source == "sync" for ev in state.evidence)
            ):
                self._query(state, event_time_ms, "verify_success", out)
                state.query_due_ms = event_time_ms + policy.query_interval_seconds * 1000
                self._push(partition, state.query_due_ms, _QUERY, state.txn_id)
            elif state.query_due_ms is None:
                assert state.created_at_ms is not None
                sla = policy.refund_sla_seconds if state.type == "refund" else policy.sla_seconds
                state.query_due_ms = state.created_at_ms + sla * 1000
                self._push(partition, state.query_due_ms, _QUERY, state.txn_id)

        # a reversal order tells its original how it stands
        if state.type == "reversal" and state.original_txn_id:
            status = "success" if v.succeeded else "failed" if v.failed else "pending"
            if status != state.last_link_status:
                state.last_link_status = status
                out.links.append(
                    ReversalLink(state.original_txn_id, state.txn_id, status, event_time_ms)
                )
        self.orders[state.txn_id] = state

    def _timed_out(self, state: OrderState) -> bool:
        raised = state.raised
        return bool(raised) and break_id(BreakKind.PENDING_TIMEOUT, state.txn_id) in raised

    def _raise(self, state: OrderState, f: Finding, event_time_ms: int, out: Outputs) -> None:
        if break_id(f.kind, state.txn_id, f.discriminator) in state.raised:
            return
        b = stamp(state, f, event_time_ms)
        state.raised.add(b.break_id)
        out.breaks.append(b)

    def _query(self, state: OrderState, at_ms: int, reason: str, out: Outputs) -> None:
        state.queries_sent += 1
        last_ctid = state.evidence[-1].channel_txn_id if state.evidence else None
        assert state.channel_id is not None
        out.queries.append(
            StatusQuery(
                state.txn_id,
                state.channel_id,
                state.merchant_id,
                last_ctid,
                state.queries_sent,
                reason,
                at_ms,
            )
        )

    # ----------------------------------------------------------------- timers

    def _push(self, partition: int, due: int, kind: int, txn_id: str) -> None:
        heapq.heappush(self._timers.setdefault(partition, []), (due, kind, txn_id))

    def _observe(self, partition: int, source: str, event_ms: int, out: Outputs) -> None:
        hw = self._hw.get(partition)
        if hw is None:
            hw = self._hw[partition] = {}
        if event_ms > hw.get(source, -1):
            hw[source] = event_ms
        top = max(hw.values())
        low = top
        caught_up = self.caught_up
        if caught_up is not _always_caught_up:
            for src in _SOURCES:
                v = hw.get(src)
                if (v is None or v < top) and not caught_up(partition, src):
                    if v is None:
                        self._advance_into(partition, None, out)  # wait for the other input
                        return
                    low = min(low, v)
        to_ms = low - self.lateness
        wm = self._wm.get(partition)
        if wm is not None and to_ms <= wm:
            heap = self._timers.get(partition)
            if not heap or heap[0][0] > wm:
                return  # the watermark stays, no timer is due
        self._advance_into(partition, to_ms, out)

    def _advance(self, partition: int, to_ms: int | None) -> Outputs:
        out = Outputs()
        self._advance_into(partition, to_ms, out)
        return out

    def _advance_into(self, partition: int, to_ms: int | None, out: Outputs) -> None:
        wm = self._wm.get(partition)
        if to_ms is not None and (wm is None or to_ms > wm):
            self._wm[partition] = wm = to_ms
            key = _partition_keys.get(partition) or _partition_key(partition)
            if to_ms - self.watermarks.get(key, 0) >= WATERMARK_PERSIST_STEP_MS:
                self.watermarks[key] = to_ms
        if wm is None:
            return
        # timers armed behind the watermark (their order arrived late) fire now: the
        # outcome depends on event time, not arrival order
        heap = self._timers.get(partition)
        while heap and heap[0][0] <= wm:
            due, kind, txn_id = heapq.heappop(heap)
            state = self.orders.get(txn_id)
            if state is None:
                continue
            if kind == _ORPHAN and state.orphan_due_ms == due:
                self._fire_orphan(state, due, out)
            elif kind == _QUERY and state.query_due_ms == due:
                self._fire_query(state, due, partition, out)

    def _fire_orphan(self, state: OrderState, due: int, out: Outputs) -> None:
        state.orphan_due_ms = None
        if not state.known:
            grace = self.policies[state.evidence[0].channel_id].orphan_grace_seconds
            self._raise(
                state,
                Finding(
                    BreakKind.ORPHAN_CALLBACK,
                    "",
                    f"channel evidence for an order not seen within {grace}s",
                ),
                due,
                out,
            )
        self.orders[state.txn_id] = state

    def _fire_query(self, state: OrderState, due: int, partition: int, out: Outputs) -> None:
        assert state.channel_id is not None
        policy = self.policies[state.channel_id]
        state.query_due_ms = None
        if not view(state, policy).resolved:
            if state.queries_sent < policy.max_queries:
                self._query(state, due, "sla", out)
                state.query_due_ms = due + policy.query_interval_seconds * 1000
                self._push(partition, state.query_due_ms, _QUERY, state.txn_id)
            else:
                self._raise(
                    state,
                    Finding(
                        BreakKind.PENDING_TIMEOUT,
                        "",
                        f"no final status; {state.queries_sent} status queries unanswered",
                    ),
                    due,
                    out,
                )
        self.orders[state.txn_id] = state

    # ----------------------------------------------------- recovery / rebalance

    def _ensure_partition(self, partition: int) -> None:
        if partition in self._timers:
            return
        self._timers[partition] = []
        persisted = self.watermarks.get(str(partition))
        if persisted is not None:
            self._wm[partition] = persisted
            self._hw[partition] = {src: persisted + self.lateness for src in _SOURCES}
        self.rebuild(partition, self._states_of(partition))

    def _states_of(self, partition: int) -> Iterable[OrderState]:
        for k, s in list(self.orders.items()):
            if self.partition_of(k) == partition:
                yield s

    def rebuild(self, partition: int, states: Iterable[OrderState]) -> None:
        """Re-arm the timers of a partition from its stored orders (after a restart
        or when the partition is assigned to this worker)."""
        heap: list[tuple[int, int, str]] = []
        for s in states:
            if s.query_due_ms is not None:
                heap.append((s.query_due_ms, _QUERY, s.txn_id))
            if s.orphan_due_ms is not None:
                heap.append((s.orphan_due_ms, _ORPHAN, s.txn_id))
        heapq.heapify(heap)
        self._timers[partition] = heap

    def forget_partitions(self) -> None:
        """Called on rebalance: timers are rebuilt lazily for whatever is assigned."""
        self._timers.clear()
        self._wm.clear()
        self._hw.clear()


# -------------------------------------------------------- cross-order index


class ChannelTxnIndex:
    """S1: one channel transaction id reported as success on two different orders.
    Keyed by `<channel>/<channel_txn_id>`; its store is a Faust table in the stream."""

    def __init__(self, claims: MutableMapping[str, ChannelTxnClaim]) -> None:
        self.claims = claims

    def on_claim(self, c: SuccessClaim) -> Break | None:
        first = self.claims.get(c.key)
        if first is None:
            self.claims[c.key] = ChannelTxnClaim(c.txn_id, c.merchant_id, c.occurred_at_ms)
            return None
        if first.txn_id == c.txn_id:
            return None
        seen = f"{c.key}|{c.txn_id}"  # each further order is flagged once
        if self.claims.get(seen) is not None:
            return None
        claim = ChannelTxnClaim(c.txn_id, c.merchant_id, c.occurred_at_ms)
        if (c.occurred_at_ms, c.txn_id) < (first.occurred_at_ms, first.txn_id):
            # the earlier claim by event time owns the key, whichever arrived first (two
            # workers can deliver the claims of one channel txn in either order); the
            # one it displaces is the further order, flagged once
            self.claims[c.key] = claim
            self.claims[f"{c.key}|{first.txn_id}"] = first
        else:
            self.claims[seen] = claim
        return duplicate_channel_txn(
            c.channel_id,
            c.channel_txn_id,
            first,
            c.txn_id,
            c.merchant_id,
            c.currency,
            c.amount,
            c.occurred_at_ms,
        )
