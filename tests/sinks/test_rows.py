"""The sink's reading side of the snapshot and posting messages, without a broker or
ClickHouse: what `sinks.rows` (and, through ClickHouse, `sinks.restore`) reads of the
order-state and balance messages is what their schemas describe (every example of
each schema is read), a message that does not fit is a `BadMessage`, and a posting
whose legs do not net to zero per bucket is not stored."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from sinks import rows as R
from sinks.runner import SinkRunner
from streams import codecs
from tally.config import Settings
from tally.core.ledger import Balance
from tally.core.orders import OrderState

SCHEMAS = Path(__file__).resolve().parents[2] / "tally" / "schemas"


def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / f"{name}.schema.json").read_text("utf-8"))
    Draft202012Validator.check_schema(loaded)
    return loaded


def valid(name: str, message: Any) -> bool:
    v = Draft202012Validator(schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER)
    return not list(v.iter_errors(message))


def rows(table: R.Table, message: Any, key: str = "k", partition: int = 0) -> list[R.Row]:
    return R.rows_for(table, key.encode(), json.dumps(message).encode(), partition)


def test_the_examples_are_valid_and_the_sink_reads_every_one() -> None:
    orders, balances = schema("order-state")["examples"], schema("balance")["examples"]
    assert len(orders) >= 2 and len(balances) >= 2
    assert {o["known"] for o in orders} == {True, False}
    assert any("outbox" in o for o in orders) and any("outbox" not in o for o in orders)
    for o in orders:
        assert valid("order-state", o)
        [row] = rows(R.ORDER_STATES, o, o["txn_id"], partition=3)
        stored = dict(zip(R.ORDER_STATES.columns, row, strict=True))
        assert stored["txn_id"] == o["txn_id"] and stored["events"] == o["version"]
        assert stored["shard"] == 3 and json.loads(stored["state"]) == o["state"]
        # what a restore reads back from the stored state, and a recovering worker
        # from the record itself
        assert OrderState.from_json(json.loads(stored["state"])).txn_id == o["txn_id"]
        assert codecs.order_from_record(o).txn_id == o["txn_id"]
    for b in balances:
        assert valid("balance", b)
        [row] = rows(R.BALANCES, b, b["key"])
        stored = dict(zip(R.BALANCES.columns, row, strict=True))
        assert (stored["account"], stored["shard"], stored["version"]) == (
            b["account"],
            b["shard"],
            b["version"],
        )
        assert json.loads(stored["amounts_minor"]) == b["amounts_minor"]
        restored = codecs.BalanceCodec()._loads(json.dumps(b).encode())
        assert isinstance(restored, Balance) and restored.amounts == b["amounts_minor"]


def _without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


def _order_mutants(o: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        _without(o, "txn_id"),
        _without(o, "state"),
        _without(o, "updated_at"),
        {**o, "amount": 100.5},  # money is a decimal string, never a number
        {**o, "updated_at": "yesterday"},
        {**o, "version": "three"},
    ]


def _balance_mutants(b: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        _without(b, "amounts_minor"),
        _without(b, "shard"),
        {**b, "amounts_minor": {"confirmed|gross": "12.00"}},
        {**b, "version": None},
    ]


def test_a_message_the_schema_refuses_is_a_bad_message_where_the_reader_looks() -> None:
    """Invalid in a field the sink reads: a `BadMessage` (the runner skips it, logs
    the reason and counts it). Fields the sink does not read it does not check."""
    order = schema("order-state")["examples"][0]
    for bad in _order_mutants(order):
        assert not valid("order-state", bad)
        with pytest.raises(R.BadMessage):
            rows(R.ORDER_STATES, bad)
    balance = schema("balance")["examples"][0]
    for bad in _balance_mutants(balance):
        assert not valid("balance", bad)
        with pytest.raises(R.BadMessage):
            rows(R.BALANCES, bad)
    with pytest.raises(R.BadMessage):
        rows(R.ORDER_STATES, [order])  # not an object


def posting(**legs: int) -> dict[str, Any]:
    """A CNY posting with legs `<account>__<bucket>__<component>=minor`."""
    out = []
    for name, minor in legs.items():
        account, bucket, component = name.split("__")
        out.append(
            {
                "account": account.replace("_", ":", 1),
                "bucket": bucket,
                "component": component,
                "amount": f"{minor / 100:.2f}",
                "amount_minor": minor,
            }
        )
    return {
        "posting_id": "o-1:1",
        "txn_id": "o-1",
        "seq": 1,
        "merchant_id": "m1",
        "channel_id": "wechat",
        "currency": "CNY",
        "reason": "confirmed",
        "business_date": "2026-11-24",
        "event_time": "2026-11-24T02:00:02.000Z",
        "legs": out,
    }


BALANCED = posting(
    channel_wechat__confirmed__gross=2000,
    merchant_m1__confirmed__gross=-2000,
    merchant_m1__confirmed__fee=60,
    fees_wechat__confirmed__fee=-60,
)
# the legs sum to zero overall, but not within each bucket
ACROSS_BUCKETS = posting(
    channel_wechat__provisional__gross=2000, merchant_m1__confirmed__gross=-2000
)
SHORT = posting(channel_wechat__confirmed__gross=2000, merchant_m1__confirmed__gross=-1999)


def test_an_unbalanced_posting_is_not_stored() -> None:
    assert valid("posting", BALANCED) and len(rows(R.POSTINGS, BALANCED)) == 4
    for bad in (ACROSS_BUCKETS, SHORT):
        assert valid("posting", bad)  # the schema cannot say it: the sink checks
        with pytest.raises(R.BadMessage, match="do not net to zero"):
            rows(R.POSTINGS, bad)


class _Message:
    def __init__(self, topic: str, offset: int, value: dict[str, Any]) -> None:
        self.topic, self.partition, self.offset = topic, 0, offset
        self.key, self.value = b"o-1", json.dumps(value).encode()


def test_the_runner_skips_an_unbalanced_posting_as_any_bad_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    runner = SinkRunner(s, backend=object())  # type: ignore[arg-type]
    unbalanced = copy.deepcopy(SHORT)
    unbalanced["posting_id"] = "o-1:2"
    raw = [
        (R.POSTINGS, _Message(s.topic_postings, 0, BALANCED)),
        (R.POSTINGS, _Message(s.topic_postings, 1, unbalanced)),
    ]
    with caplog.at_level(logging.ERROR, logger="tally.sinks"):
        batch = runner._rows(raw)
    assert [r[0] for r in batch["postings"]] == ["o-1:1"] * 4
    assert runner.stats.bad == {s.topic_postings: 1}
    assert f"sink skipped {s.topic_postings}[0]@1: posting o-1:2: legs do not net" in caplog.text


def test_an_orders_record_brings_the_facts_of_its_outbox() -> None:
    """The outputs an order's last batch made are stored with its state (same rows as
    the output topics' copies give, so stored once): a worker restored from ClickHouse
    onto an empty broker takes those inputs as seen and would not make them again
    (docs/storage.md, "Restoring a worker"; found by `tally bench outage`: postings
    the old broker held when it stopped were lost)."""
    [example] = [o for o in schema("order-state")["examples"] if o.get("outbox")]
    record = copy.deepcopy(example)
    brk = {
        "break_id": "0123456789abcdef01234567",
        "kind": "amount_mismatch",
        "txn_id": record["txn_id"],
        "merchant_id": "m1",
        "channel_id": "wechat",
        "currency": "CNY",
        "amount": "20.00",
        "channel_amount": "19.99",
        "business_date": "2026-11-24",
        "event_time": "2026-11-24T10:00:00.000Z",
        "detected_at": "2026-11-24T10:00:00.100Z",
        "detail": "the channel says 19.99",
        "evidence": [],
    }
    assert valid("break", brk)
    record["outbox"] = [
        ["postings", 2, record["txn_id"], BALANCED],
        ["breaks", 2, record["txn_id"], brk],
        ["success-claims", 1, "wx-1", {"txn_id": record["txn_id"]}],  # internal: not stored
        ["postings", 2, record["txn_id"], SHORT],  # does not fit: skipped, named
    ]
    raw = json.dumps(record).encode()
    state_rows, facts, problems = R.rows_with_facts(R.ORDER_STATES, b"k", raw, 2)
    assert state_rows == rows(R.ORDER_STATES, record, partition=2)
    assert [(t.name, r) for t, r in facts] == [
        ("postings", rows(R.POSTINGS, BALANCED)),
        ("breaks", rows(R.BREAKS, brk)),
    ]
    assert len(problems) == 1 and "do not net to zero" in problems[0]
    assert record["txn_id"] in problems[0]
    # the other tables' messages bring nothing more
    assert R.rows_with_facts(R.POSTINGS, b"k", json.dumps(BALANCED).encode(), 0)[1:] == ([], [])


def test_the_runner_stores_an_orders_facts_with_its_state() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    runner = SinkRunner(s, backend=object())  # type: ignore[arg-type]
    [example] = [o for o in schema("order-state")["examples"] if o.get("outbox")]
    record = {**copy.deepcopy(example), "outbox": [["postings", 0, "o-1", BALANCED]]}
    batch = runner._rows(
        [
            (R.ORDER_STATES, _Message(s.topic_order_states, 0, record)),
            (R.POSTINGS, _Message(s.topic_postings, 0, BALANCED)),  # the topic's copy
        ]
    )
    assert len(batch["order_states"]) == 1
    assert batch["postings"] == rows(R.POSTINGS, BALANCED) * 2  # same rows: stored once
    assert not runner.stats.bad
