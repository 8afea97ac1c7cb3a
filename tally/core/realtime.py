"""Real-time reconciliation: one order's evidence in, breaks / postings / status
queries out. This is the whole per-order logic of the stream, with no I/O.

`Reconciler` is driven by the Faust agent in `streams.agents` (state store = a
Faust table) and directly by tests, the simulator's oracle and the benchmark
(state store = a dict). For every message it

  1. skips it if its event id was already applied to the order (idempotence);
  2. merges it into the `OrderState` (`tally.core.orders`);
  3. raises breaks the new state reveals (`tally.core.breaks`), each once;
  4. reposts the order's position if its standing changed (`tally.core.ledger`);
  5. arms the order's timers and advances the partition's event-time watermark
     (`tally.core.timers`), firing due timers: status queries, pending_timeout,
     orphan_callback.

In: `Transaction`s, `Callback`s, `ReversalLink`s (and `on_tick`'s idle advances).
Out: `Outputs` (`tally.core.outputs`): breaks, postings, status queries, links and
success claims; `ChannelTxnIndex` turns the claims into duplicate_success breaks.

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

from collections.abc import Callable, MutableMapping

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
from tally.core.events import Callback, Transaction
from tally.core.ledger import repost
from tally.core.orders import (
    OrderState,
    Standing,
    apply_callback,
    apply_reversal_link,
    apply_transaction,
    view,
)
from tally.core.outputs import Outputs, QueryReason, ReversalLink, StatusQuery, SuccessClaim
from tally.core.policy import Policies
from tally.core.records import ChannelStatus, EvidenceSource, OrderStatus, OrderType
from tally.core.timers import _ORPHAN, _QUERY, WATERMARK_PERSIST_STEP_MS, Timers

# names other modules import from here
__all__ = [
    "WATERMARK_PERSIST_STEP_MS",
    "ChannelTxnIndex",
    "Outputs",
    "QueryReason",
    "Reconciler",
    "ReversalLink",
    "StatusQuery",
    "SuccessClaim",
]
_PROVISIONAL = Standing.PROVISIONAL
# plain values, compared with what messages carry (see `tally.core.orders`)
_SUCCESS, _SYNC = ChannelStatus.SUCCESS.value, EvidenceSource.SYNC.value
_REFUND, _REVERSAL = OrderType.REFUND.value, OrderType.REVERSAL.value
_SLA, _VERIFY_SUCCESS = QueryReason.SLA.value, QueryReason.VERIFY_SUCCESS.value
_LINK_SUCCESS, _LINK_FAILED, _LINK_PENDING = (
    OrderStatus.SUCCESS.value,
    OrderStatus.FAILED.value,
    OrderStatus.PENDING.value,
)


class Reconciler(Timers):
    """One order's evidence in; breaks, postings, status queries, links and claims out
    (see the module docstring). Event time and timers: `tally.core.timers.Timers`."""

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
        super().__init__(orders, watermarks, allowed_lateness_ms, partition_of, caught_up)
        self.policies = policies

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
        first_success = cb.status == _SUCCESS
        if first_success:
            ctid = cb.channel_txn_id
            for ev in state.evidence:
                if ev.status == _SUCCESS and ev.channel_txn_id == ctid:
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
                and any(ev.status == _SUCCESS and ev.source == _SYNC for ev in state.evidence)
            ):
                self._query(state, event_time_ms, _VERIFY_SUCCESS, out)
                state.query_due_ms = event_time_ms + policy.query_interval_seconds * 1000
                self._push(partition, state.query_due_ms, _QUERY, state.txn_id)
            elif state.query_due_ms is None:
                assert state.created_at_ms is not None
                sla = policy.refund_sla_seconds if state.type == _REFUND else policy.sla_seconds
                state.query_due_ms = state.created_at_ms + sla * 1000
                self._push(partition, state.query_due_ms, _QUERY, state.txn_id)

        # a reversal order tells its original how it stands
        if state.type == _REVERSAL and state.original_txn_id:
            status = _LINK_SUCCESS if v.succeeded else _LINK_FAILED if v.failed else _LINK_PENDING
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
                self._query(state, due, _SLA, out)
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
