"""The order-state snapshot (`payments.order-states`) and its ClickHouse row: the
message carries the order's evidence once, inside `state`; the sink derives the
`evidence` column from it, and still stores snapshots published before that
(which carried the trail as `evidence` too) unchanged."""

from __future__ import annotations

import json
import random
from functools import cache
from typing import Any

import pytest

from sinks import rows as R
from tally.config import Settings
from tally.core.breaks import evidence_trail
from tally.core.events import iso_ms
from tally.core.messages import _FAST_ISO_LIMIT_MS, _iso_ms, order_snapshot
from tally.core.orders import OrderState, view
from tally.core.pipeline import LocalPipeline
from tally.sim.traffic import SimConfig, generate

FIELDS = {
    "txn_id",
    "version",
    "known",
    "type",
    "merchant_id",
    "channel_id",
    "currency",
    "amount",
    "coupon_amount",
    "fee",
    "original_txn_id",
    "terminal_id",
    "our_status",
    "channel_status",
    "channel_txn_id",
    "standing",
    "resolved",
    "reversed",
    "business_date",
    "created_at",
    "updated_at",
    "queries_sent",
    "breaks",
    "state",
}


def encode(d: dict[str, Any]) -> bytes:
    """As the workers publish it."""
    return json.dumps(d, separators=(",", ":"), ensure_ascii=False).encode()


@cache
def snapshots() -> list[tuple[dict[str, Any], list[dict[str, Any]], OrderState]]:
    """(snapshot, evidence trail, state) after every input message of simulated
    traffic: known and unknown orders, reversals, breaks, several sizes of trail."""
    policies = Settings().policies()
    pipe = LocalPipeline(policies=policies, clock=lambda: 0)
    out = []
    for env in generate(SimConfig(events=4000), policies).envelopes:
        pipe.feed_envelope(env)
        s = pipe.orders.get(env.key) if env.key else None
        if s is None:
            continue
        channel = s.channel_id or (s.evidence[0].channel_id if s.evidence else "")
        at = max([s.our_status_at_ms] + [e.occurred_at_ms for e in s.evidence])
        snap = json.loads(encode(order_snapshot(s, view(s, policies[channel]), at)))
        out.append((snap, evidence_trail(s), OrderState.from_json(s.to_json())))
    return out


def test_the_simulated_snapshots_cover_every_shape() -> None:
    states = [s for _, _, s in snapshots()]
    assert any(not s.known for s in states)  # evidence for an order not yet seen
    assert any(s.known and not s.evidence for s in states)
    assert any(s.reversal is not None for s in states)
    assert any(s.raised for s in states)
    assert any(len(s.evidence) >= 3 for s in states)
    assert any(s.evidence and s.evidence[-1].fee is not None for s in states)


def test_the_message_carries_the_evidence_once() -> None:
    for snap, _, state in snapshots():
        assert set(snap) == FIELDS
        assert snap["state"] == state.to_json(with_outbox=False)
        assert snap["breaks"] == sorted(state.raised)
        assert snap["version"] == len(state.seen)


def test_rows_are_those_of_a_snapshot_that_carries_the_trail() -> None:
    """The row of a new snapshot equals the row of the same order's snapshot as
    published before (with `evidence`), column for column."""
    for snap, trail, _ in snapshots():
        new = R.rows_for(R.ORDER_STATES, None, encode(snap), 2)
        old = R.rows_for(R.ORDER_STATES, None, encode({**snap, "evidence": trail}), 2)
        assert new == old
        (row,) = new
        assert json.loads(row[R.ORDER_STATES.columns.index("evidence")]) == trail


def test_a_snapshot_that_carries_the_trail_is_stored_as_it_is() -> None:
    snap, _, _ = next(x for x in snapshots() if x[2].evidence)
    carried = [{"source": "notify", "status": "success", "at": "2026-01-01T00:00:00.000Z"}]
    for evidence, stored in ((carried, carried), (None, []), ([], [])):
        (row,) = R.rows_for(R.ORDER_STATES, None, encode({**snap, "evidence": evidence}), 0)
        assert json.loads(row[R.ORDER_STATES.columns.index("evidence")]) == stored


@pytest.mark.parametrize(
    "state",
    [
        None,
        [],
        "x",
        {"txn_id": "o-1"},  # no evidence
        {"evidence": [{"event_id": "e1"}]},  # evidence without its fields
        {"evidence": ["e1"]},
        {"evidence": [], "seen": [], "raised": [], "txn_id": "o-1", "type": "payment"},
        {"evidence": [], "seen": [], "raised": [], "txn_id": "o-1", "colour": "red"},
    ],
)
def test_a_state_the_trail_cannot_come_from_is_a_bad_message(state: Any) -> None:
    snap, _, _ = snapshots()[0]
    with pytest.raises(R.BadMessage):
        R.rows_for(R.ORDER_STATES, None, encode({**snap, "state": state}), 0)


def test_the_message_is_smaller() -> None:
    new = [len(encode(snap)) for snap, _, _ in snapshots()]
    old = [len(encode({**snap, "evidence": trail})) for snap, trail, _ in snapshots()]
    assert sum(new) < 0.85 * sum(old)


def test_timestamps_are_those_of_iso_ms() -> None:
    rnd = random.Random(7)
    edges = [0, 1, 999, 1000, 1796227402513, _FAST_ISO_LIMIT_MS - 1, _FAST_ISO_LIMIT_MS]
    near = [_FAST_ISO_LIMIT_MS + d for d in (1, 999, 10**9)] + [-1, -999, -1000, -1001]
    spread = [rnd.randrange(0, _FAST_ISO_LIMIT_MS) for _ in range(20_000)]
    for ms in edges + near + spread:
        assert _iso_ms(ms) == iso_ms(ms), ms
