"""Replay from offset 0 (tally.chaos.replay): a simulated day through a worker, then
its whole input log through a fresh worker (new consumer group, empty tables, its own
output topics). Every order's position, the set of breaks and the dead letters must
be the same; the rest may differ where the two input topics of a partition were read
in another interleaving (measured at 100,000 events: docs/reliability.md), which the
comparison reports field by field."""

from __future__ import annotations

import json

import pytest

from streams.broker import EmbeddedBroker
from tally.chaos.replay import VARIES, differ, outcomes, replay
from tests.streams.streamrun import stream_settings

pytestmark = pytest.mark.broker


async def test_replay_from_offset_zero_gives_the_same_positions_breaks_and_dead_letters(
    broker: EmbeddedBroker,
) -> None:
    r = await replay(stream_settings(broker), events=2_000, seed=5)
    print("\n" + r.line())
    assert r.events >= 2_000
    assert r.counts["breaks"] > 5 and r.counts["postings"] > 300
    assert r.counts["dead_letters"] > 0  # malformed inputs: the same ids (topic:partition:offset)
    # what does not depend on the order the two input topics were read in: every
    # order's position (the sum of its postings), the set of breaks, the dead letters
    o = r.outcome_differences
    assert o["positions"].count == 0, o["positions"]
    assert o["breaks"].only_first == o["breaks"].only_second == 0, o["breaks"]
    assert o["dead_letters"].count == 0
    # byte for byte (less VARIES): the dead letters always
    assert r.differences["dead_letters"].count == 0
    assert r.differences["status_queries"].only_first == r.differences["status_queries"].only_second
    # nothing was sent twice by either run
    assert not any(r.duplicates[f"breaks ({w})"] for w in ("first", "replay"))


def test_differ_and_outcomes_name_what_differs() -> None:
    a = {"x": json.dumps({"kind": "k", "detail": "d"}), "y": "{}"}
    b = {"x": json.dumps({"kind": "k", "detail": "other"}), "z": "{}"}
    d = differ(a, b)
    assert (d.only_first, d.only_second, d.changed) == (1, 1, 1)
    assert d.fields == {"detail": 1}
    # two postings of one order that split its position differently have one outcome
    leg = {"account": "merchant:M1", "bucket": "confirmed", "component": "gross"}
    p1 = {"txn_id": "T", "currency": "CNY", "legs": [{**leg, "amount_minor": -100}]}
    p2 = {"txn_id": "T", "currency": "CNY", "legs": [{**leg, "amount_minor": -40}]}
    p3 = {"txn_id": "T", "currency": "CNY", "legs": [{**leg, "amount_minor": -60}]}
    empty: dict[str, dict[str, str]] = {
        k: {} for k in ("breaks", "order_states", "balances", "status_queries", "dead_letters")
    }
    one = outcomes({**empty, "postings": {"T:1": json.dumps(p1)}})
    two = outcomes({**empty, "postings": {"T:1": json.dumps(p2), "T:2": json.dumps(p3)}})
    assert one["positions"] == two["positions"]
    assert "detected_at" in VARIES["breaks"] and "dead_at" in VARIES["dead_letters"]
