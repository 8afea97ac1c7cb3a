"""Hostile input messages (tally.chaos.hostile, .hostile_check): each one processed or
dead-lettered with a documented reason, never an exception, the balance invariants
after each; hypothesis-generated messages the same; a sample through a real worker on
the embedded broker. Extreme timestamps (RFC 3339, outside the range an event may carry)
were a known bug kept as strict xfails; now dead-lettered, they are ordinary tests
(docs/reliability.md, "Hostile inputs")."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.broker import EmbeddedBroker
from tally.chaos.hostile import KINDS, STREAM_KINDS, Hostile, as_key, dump
from tally.chaos.hostile_check import Checker, check_inputs, check_stream, stream_messages, traffic
from tally.core.deadletter import REASON_CODES
from tally.core.pipeline import CALLBACKS, TRANSACTIONS, LocalPipeline

DOCS = Path(__file__).parents[2] / "docs" / "events.md"
TEMPLATES = traffic(300, 5)
VALID_TXN = next(e.value for e in TEMPLATES if e.topic == TRANSACTIONS)
VALID_CB = next(e.value for e in TEMPLATES if e.topic == CALLBACKS)


def test_reason_codes_are_the_documented_ones() -> None:
    text = DOCS.read_text()
    table = text.split("## Dead-letter reason codes", 1)[1].split("\n## ", 1)[0]
    assert set(re.findall(r"^\| `([a-z_]+)` \|", table, re.M)) == set(REASON_CODES)


def test_seeded_generator_every_kind_processed_or_dead_lettered() -> None:
    f = check_inputs(1000, seed=3, extreme_times=False)
    assert f.hostile == 1000 and set(f.kinds) == set(KINDS)
    assert not f.exceptions, f.exceptions[:3]
    assert not f.invariant_violations and not f.undocumented
    assert not f.unexpected, f.unexpected[:3]
    assert f.processed + f.dead_lettered == f.messages
    assert f.invariant_checks > 100  # the invariants were checked, not skipped
    assert {"bad_json", "too_large", "key_mismatch", "bad_amount", "wrong_type"} <= set(f.codes)


# ------------------------------------------------------------ hypothesis

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**40), 10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)
_ids = st.sampled_from(("", " ", "x" * 65, "\u200b", "\ud800", "é", "ok-1")) | st.text(max_size=70)


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, str | None, bytes]:
    """(topic, key, value): a valid message with fields replaced, dropped or added, its
    text cut or flipped, or anything at all."""
    topic = draw(st.sampled_from((TRANSACTIONS, CALLBACKS)))
    d: dict[str, Any] = dict(VALID_TXN if topic == TRANSACTIONS else VALID_CB)
    d["txn_id"] = d["event_id"] = f"hy-{draw(st.integers(0, 10**6))}"
    how = draw(st.sampled_from(("replace", "drop", "add", "cut", "flip", "raw", "deep")))
    if how == "replace":
        name = draw(st.sampled_from(sorted(d)))
        d[name] = draw(_json | _ids | st.sampled_from(("1e9999", "-0", "NaN", "1" * 30)))
    elif how == "drop":
        d.pop(draw(st.sampled_from(sorted(d))))
    elif how == "add":
        d[draw(st.text(max_size=10))] = draw(_json)
    value = dump(d)
    if how == "cut":
        value = value[: draw(st.integers(0, len(value)))]
    elif how == "flip":
        i = draw(st.integers(0, len(value) - 1))
        value = value[:i] + bytes([value[i] ^ draw(st.integers(1, 255))]) + value[i + 1 :]
    elif how == "raw":
        value = draw(st.binary(max_size=300))
    elif how == "deep":
        depth = draw(st.integers(1, 30_000))
        value = b"[" * depth + b"]" * depth
    key = draw(st.sampled_from((str(d.get("txn_id")), None, "other")) | _ids)
    return topic, None if key is None else as_key(key), value


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(messages(), min_size=1, max_size=3))
def test_generated_messages_never_raise_and_keep_the_invariants(
    batch: list[tuple[str, str | None, bytes]],
) -> None:
    checker = Checker(partitions=2)
    for env in TEMPLATES[:10]:
        checker.feed(env)
    for topic, key, value in batch:
        outcome = checker.feed(Hostile("hypothesis", topic, key, value, "any"))
        assert outcome != "exception", checker.f.exceptions
        assert outcome == "processed" or outcome in REASON_CODES
    for env in TEMPLATES[10:20]:  # valid traffic after them is processed
        assert checker.feed(env) == "processed"
    f = checker.f
    assert not f.invariant_violations and not f.undocumented


# ------------------------- extreme timestamps (were strict xfails: a known bug, fixed)


def _dead_lettered_alone(pipe: LocalPipeline) -> None:
    assert pipe.processed == 0 and len(pipe.dead_letters) == 1
    dl = pipe.dead_letters[0]
    assert dl.code == "bad_timestamp" and dl.field == "occurred_at"
    assert "1970-01-02T00:00:00Z" in dl.reason and "2100-01-01T00:00:00Z" in dl.reason
    # valid traffic on the same partition after it is processed, timers included
    for env in TEMPLATES[:20]:
        before = pipe.processed
        pipe.feed_envelope(env)
        assert pipe.processed == before + 1
    pipe.tick(3_600_000)
    assert len(pipe.dead_letters) == 1


@pytest.mark.parametrize(
    "at", ["9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "0001-01-01T00:00:00+23:59"]
)
def test_extreme_but_valid_timestamps_are_processed_or_dead_lettered(at: str) -> None:
    pipe = LocalPipeline(partitions=1, clock=lambda: 0)
    value = json.dumps(VALID_TXN | {"txn_id": "x1", "event_id": "x1", "occurred_at": at})
    pipe.feed(TRANSACTIONS, "x1", value.encode())
    _dead_lettered_alone(pipe)


def test_a_timestamp_before_the_epoch_is_processed_or_dead_lettered() -> None:
    pipe = LocalPipeline(partitions=1, clock=lambda: 0)
    d = VALID_TXN | {"txn_id": "x1", "event_id": "x1", "occurred_at": "1969-12-31T23:59:59Z"}
    pipe.feed(TRANSACTIONS, "x1", json.dumps(d).encode())
    _dead_lettered_alone(pipe)


@pytest.mark.parametrize("at", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00Z"])
def test_an_extreme_timestamp_on_a_callback_is_dead_lettered(at: str) -> None:
    pipe = LocalPipeline(partitions=1, clock=lambda: 0)
    d = VALID_CB | {"event_id": "c1", "occurred_at": at}
    pipe.feed(CALLBACKS, d["txn_id"], json.dumps(d).encode())
    _dead_lettered_alone(pipe)


def test_seeded_generator_with_the_extreme_timestamps() -> None:
    f = check_inputs(300, seed=5)  # extreme_times included
    assert not f.exceptions, f.exceptions[:3]
    assert not f.invariant_violations and not f.undocumented
    assert not f.unexpected, f.unexpected[:3]
    assert f.processed + f.dead_lettered == f.messages


# ---------------------------------------------------------- the real worker


@pytest.mark.broker
async def test_hostile_sample_through_a_real_worker(broker: EmbeddedBroker, tmp_path: Path) -> None:
    messages = stream_messages(300, 4, extreme_times=False)
    assert {m.kind for m in messages if isinstance(m, Hostile)} >= set(STREAM_KINDS) - {
        "weird_time"
    }
    f = await check_stream(broker.url, messages, drain_timeout=120, data_dir=str(tmp_path))
    assert f.ok, (f.problems, f.crashed)
    assert f.consumed == len(messages) and f.sentinel_processed
    assert f.dead_letters == f.expected and sum(f.dead_letters.values()) > 100
