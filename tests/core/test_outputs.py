"""The output records (breaks, postings, status queries, dead letters) against their JSON
Schemas in `tally/schemas/`, the dead-letter reason codes against the schema and
docs/events.md, and the documented examples."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from tally.core.events import (
    REASON_CODES,
    DeadLetter,
    InvalidEvent,
    iso_ms,
    parse_callback,
    parse_timestamp,
    parse_transaction,
)
from tally.core.pipeline import CALLBACKS, TRANSACTIONS, LocalPipeline
from tally.core.policy import ChannelPolicy, Mode, Policies
from tests.core.contract_cases import (
    ROOT,
    good_cb,
    good_txn,
    load_schema,
    schema_ok,
    validator,
)

# ---------------------------------------------------------------- outputs

T0 = parse_timestamp("2026-03-02T10:00:00Z", "t0")


def _at(seconds: float) -> str:
    return iso_ms(T0 + int(seconds * 1000))


def _feed(pipe: LocalPipeline, topic: str, msg: dict[str, Any]) -> None:
    pipe.feed(topic, msg["txn_id"], json.dumps(msg).encode())


def _rich_pipeline() -> LocalPipeline:
    """A run that produces every break kind, postings of every reason, status
    queries of both reasons and dead letters."""
    pipe = LocalPipeline(
        policies=Policies(
            {
                "unionpay": ChannelPolicy(cutoff="23:00", query_before_final_success=True),
                "opt": ChannelPolicy(mode=Mode.OPTIMISTIC),
            }
        ),
        clock=lambda: T0,
    )
    n = iter(range(10**6))

    def txn(tid: str, status: str, s: float, **kw: Any) -> None:
        _feed(
            pipe,
            TRANSACTIONS,
            good_txn(event_id=f"e{next(n)}", txn_id=tid, status=status, occurred_at=_at(s), **kw),
        )

    def cb(tid: str, source: str, status: str, s: float, **kw: Any) -> None:
        kw.setdefault("channel_txn_id", f"c-{tid}")
        _feed(
            pipe,
            CALLBACKS,
            good_cb(
                event_id=f"e{next(n)}",
                txn_id=tid,
                source=source,
                status=status,
                occurred_at=_at(s),
                **kw,
            ),
        )

    txn("P1", "success", 0, coupon_amount="8.50")
    cb("P1", "notify", "success", 1, amount="120.00", fee="0.72")  # confirmed, with fee
    txn("P2", "success", 0)
    cb("P2", "sync", "success", 1, channel_txn_id="a")
    cb("P2", "notify", "success", 2, channel_txn_id="b")  # duplicate_success
    cb("P3", "notify", "success", 2, channel_txn_id="a")  # one channel id on two orders
    txn("P4", "success", 0)
    cb("P4", "notify", "failed", 3)  # status_conflict, provisional -> none
    txn("P5", "success", 0, amount="10.00", currency="USD")
    cb("P5", "notify", "success", 3, amount="10.00", currency="EUR")  # currency_mismatch
    txn("P6", "success", 0)
    cb("P6", "notify", "success", 3, amount="1.00")  # amount_mismatch
    txn("P7", "success", 0)
    txn("R7", "success", 4, type="reversal", original_txn_id="P7")  # reversal_after_success
    txn("P8", "success", 0, channel_id="unionpay")
    cb("P8", "sync", "success", 1, channel_id="unionpay")  # verify_success query
    txn("P9", "pending", 0, channel_id="opt")  # optimistic provisional, then sla queries
    txn("F1", "pending", 5, type="refund", original_txn_id="P1", amount="20.00")
    cb("F1", "notify", "success", 6, amount="20.00")
    txn("P10", "pending", 60)
    cb("P10", "notify", "success", 14 * 3600 + 60)  # after the midnight cutoff: late
    pipe.tick(3 * 3600 * 1000)  # orphan (P3), pending_timeout (P9, P10 ...)
    pipe.feed(TRANSACTIONS, b"T1", b"{oops")
    pipe.feed(TRANSACTIONS, None, json.dumps(good_txn()).encode())
    pipe.feed(CALLBACKS, b"T20260302-0001", json.dumps(good_cb(amount="-1")).encode())
    pipe.feed("payments.other", b"k", b"{}")
    return pipe


def test_outputs_validate_against_output_schemas() -> None:
    pipe = _rich_pipeline()
    kinds = set(pipe.breaks_by_kind())
    assert kinds == {
        "status_conflict",
        "amount_mismatch",
        "currency_mismatch",
        "duplicate_success",
        "reversal_after_success",
        "orphan_callback",
        "pending_timeout",
        "late_callback",
    }
    assert {p.reason for p in pipe.postings} == {"provisional", "confirmed", "none"}
    assert {q.reason for q in pipe.queries} == {"sla", "verify_success"}
    assert {d.code for d in pipe.dead_letters} == {
        "bad_json",
        "key_mismatch",
        "negative_amount",
        "unknown_topic",
    }
    checks: list[tuple[str, list[dict[str, Any]]]] = [
        ("break", [b.to_json() for b in pipe.breaks.values()]),
        ("posting", [p.to_json() for p in pipe.postings]),
        ("status-query", [q.to_json() for q in pipe.queries]),
        ("dead-letter", [d.to_json() for d in pipe.dead_letters]),
    ]
    for name, records in checks:
        v = validator(name)
        assert records
        for rec in records:
            errors = list(v.iter_errors(rec))
            assert not errors, (name, rec, errors)
            json.dumps(rec)  # JSON-ready


def test_stamped_break_validates() -> None:
    pipe = _rich_pipeline()
    b = next(iter(pipe.breaks.values()))
    b.detected_at_ms = T0 + 1
    assert schema_ok(validator("break"), b.to_json())
    assert b.to_json()["detected_at"] == "2026-03-02T10:00:00.001Z"


def test_output_schemas_catch_drift() -> None:
    pipe = _rich_pipeline()
    rec = next(iter(pipe.breaks.values())).to_json()
    assert not schema_ok(validator("break"), {**rec, "surprise": 1})
    assert not schema_ok(validator("break"), {**rec, "kind": "long"})
    p = pipe.postings[0].to_json()
    bad = copy.deepcopy(p)
    bad["legs"][0]["amount_minor"] = "12"
    assert not schema_ok(validator("posting"), bad)


def test_dead_letter_record() -> None:
    value = b"x" * 100
    err = InvalidEvent("bad_json", "not valid JSON")
    d = DeadLetter.of(
        topic=TRANSACTIONS,
        partition=3,
        offset=17,
        key=b"T1",
        value=value,
        error=err,
        dead_at_ms=T0,
        keep_bytes=10,
    )
    out = d.to_json()
    assert out["dead_letter_id"] == "payments.transactions:3:17"
    assert base64.b64decode(out["value_b64"]) == b"x" * 10
    assert base64.b64decode(out["key_b64"]) == b"T1"
    assert out["value_size"] == 100 and out["value_truncated"] is True
    assert out["value_sha256"] == hashlib.sha256(value).hexdigest()
    assert (out["code"], out["field"], out["dead_at"]) == ("bad_json", None, iso_ms(T0))
    assert schema_ok(validator("dead-letter"), out)
    whole = DeadLetter.of(
        topic=CALLBACKS, partition=0, offset=0, key=None, value=b"{}", error=err, dead_at_ms=T0
    ).to_json()
    assert whole["key_b64"] is None and whole["value_truncated"] is False
    assert schema_ok(validator("dead-letter"), whole)


def _codes_in_source() -> set[str]:
    """Codes raised literally anywhere in tally/ and streams/ (each one of
    `REASON_CODES`), plus that list (bad_amount / negative_amount are raised through a
    variable)."""
    codes: set[str] = set()
    for path in [*(ROOT / "tally").rglob("*.py"), *(ROOT / "streams").glob("*.py")]:
        codes |= set(re.findall(r'InvalidEvent\(\s*"([a-z_]+)"', path.read_text("utf-8")))
    assert codes <= set(REASON_CODES), codes - set(REASON_CODES)
    return codes | set(REASON_CODES)


def test_dead_letter_codes_documented() -> None:
    """Every reason code tally can raise is in the dead-letter schema and in
    docs/events.md, and the schema lists no other code."""
    codes = _codes_in_source()
    assert {"bad_json", "bad_amount", "negative_amount", "unknown_topic"} <= codes
    assert set(load_schema("dead-letter")["properties"]["code"]["enum"]) == codes
    doc = (ROOT / "docs" / "events.md").read_text("utf-8")
    for code in codes:
        assert f"`{code}`" in doc, code


def test_docs_examples_are_valid() -> None:
    """Every ```json block in docs/events.md parses; the ones marked as topic
    messages validate against their schema and the validator."""
    doc = (ROOT / "docs" / "events.md").read_text("utf-8")
    blocks = re.findall(r"<!-- example: ([\w-]+) -->\s*```json\n(.*?)```", doc, re.S)
    assert len(blocks) >= 8
    parsers: dict[str, Callable[[Any], Any]] = {
        "transaction": parse_transaction,
        "callback": parse_callback,
    }
    seen = set()
    for name, body in blocks:
        msg = json.loads(body)
        seen.add(name)
        errors = list(validator(name).iter_errors(msg))
        assert not errors, (name, errors)
        if name in parsers:
            parsers[name](msg)
    assert seen == {"transaction", "callback", "break", "posting", "status-query", "dead-letter"}
