"""The ClickHouse schema and the two backends, for real: the same migrations and
rows on chDB 26.x (in-process) and on Debian's clickhouse-server 18.16."""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from typing import Any

import pytest
from click.testing import CliRunner

from sinks import queries
from sinks import rows as R
from sinks.backend import Backend, ClickHouseUnavailable, NativeBackend
from sinks.schema import LATEST, MIGRATIONS, TABLES, migrate, schema_version
from tally.config import Settings
from tally.core.breaks import Break
from tally.core.events import (
    DeadLetter,
    InvalidEvent,
    parse_callback,
    parse_timestamp,
    parse_transaction,
)
from tally.core.ledger import Balance, Posting
from tally.core.messages import balance_snapshot, order_snapshot
from tally.core.orders import view
from tally.core.policy import Policies
from tally.core.realtime import Reconciler, StatusQuery
from tests.clickhouse import (
    PASSWORD,
    ClickHouseServer,
    need,
)

pytestmark = pytest.mark.clickhouse

T0 = parse_timestamp("2026-11-24T16:00:00.123Z", "t")


def _b(d: dict[str, Any]) -> bytes:
    return json.dumps(d).encode()


def store(db: Backend, table: R.Table, messages: list[dict[str, Any]], partition: int = 0) -> None:
    rows = [r for m in messages for r in R.rows_for(table, None, _b(m), partition)]
    db.insert(table.name, table.columns, rows)


def order_state_message(amount: str = "100.00", currency: str = "CNY") -> dict[str, Any]:
    orders: dict[str, Any] = {}
    rec = Reconciler(Policies(), orders)
    txn = {
        "event_id": "e1",
        "txn_id": "o-1",
        "type": "payment",
        "merchant_id": "m1",
        "channel_id": "wechat",
        "amount": amount,
        "currency": currency,
        "status": "success",
        "occurred_at": "2026-11-24T16:00:00.123Z",
        "coupon_amount": "0",
    }
    rec.on_transaction(parse_transaction(txn))
    rec.on_callback(
        parse_callback(
            {
                "event_id": "e2",
                "txn_id": "o-1",
                "channel_id": "wechat",
                "channel_txn_id": "wx-1",
                "source": "notify",
                "status": "success",
                "amount": amount,
                "currency": currency,
                "fee": "0.60" if currency == "CNY" else None,
                "occurred_at": "2026-11-24T16:00:01.456Z",
            }
        )
    )
    st = orders["o-1"]
    return order_snapshot(st, view(st, Policies()["wechat"]), T0 + 1333)


def test_ddl_uses_only_what_clickhouse_18_16_has() -> None:
    ddl = " ".join(s for m in MIGRATIONS for s in m.statements)
    for newer in ("DateTime64", "LowCardinality", " JSON", "Object(", "Map(", "Bool"):
        assert newer not in ddl
    assert [m.version for m in MIGRATIONS] == list(range(1, LATEST + 1))


def test_migrations_are_idempotent_and_record_the_version(backend: Backend) -> None:
    assert schema_version(backend) == 0
    assert migrate(backend) == (0, LATEST)
    assert migrate(backend) == (LATEST, LATEST)
    assert schema_version(backend) == LATEST
    recorded = backend.query(
        "SELECT version, name FROM {db}.schema_migrations FINAL ORDER BY version"
    )
    assert [r["version"] for r in recorded] == [m.version for m in MIGRATIONS]
    names = {
        r["name"]
        for r in backend.query(
            "SELECT name FROM system.tables WHERE database = %(d)s", {"d": backend.database}
        )
    }
    assert set(TABLES) | {"schema_migrations"} <= names


def test_values_round_trip_exactly(backend: Backend) -> None:
    migrate(backend)
    big = "9999999999999.9999"  # the largest amount the contract allows, in KWD-like 4 dp
    brk = Break(
        break_id="b1",
        kind="amount_mismatch",
        txn_id="o-1",
        merchant_id="m1",
        channel_id="wechat",
        currency="CLF",  # 4 decimals
        amount=99999999999999999,
        channel_amount=1,
        event_time_ms=T0,
        business_date="2026-11-25",
        detail="notify says 1, expected …",
        evidence=[{"source": "notify", "amount": "0.0001"}],
        detected_at_ms=T0 + 7,
    )
    store(backend, R.BREAKS, [brk.to_json()])
    got = queries.breaks(backend)
    assert len(got) == 1
    b = got[0]
    assert b["amount"] == big and b["channel_amount"] == "0.0001"
    assert b["event_time"] == "2026-11-24T16:00:00.123Z"
    assert b["detected_at"] == "2026-11-24T16:00:00.130Z"
    assert b["business_date"] == "2026-11-25"
    assert b["detail"] == "notify says 1, expected …"
    assert b["evidence"] == [{"source": "notify", "amount": "0.0001"}]
    raw = backend.query("SELECT amount, event_time FROM {db}.breaks FINAL")[0]
    assert raw["amount"] == Decimal(big) and isinstance(raw["amount"], Decimal)
    assert raw["event_time"].isoformat() == "2026-11-24T16:00:00+00:00"
    _postings_and_balances_round_trip(backend)
    _orders_queries_and_dead_letters_round_trip(backend)


def _postings_and_balances_round_trip(backend: Backend) -> None:
    # JPY has no minor unit, KWD three; negative legs
    p = Posting(
        posting_id="o-2:1",
        txn_id="o-2",
        seq=1,
        merchant_id="m1",
        channel_id="wechat",
        currency="KWD",
        reason="confirmed",
        legs={"channel:wechat|confirmed|gross": 12345, "merchant:m1|confirmed|gross": -12345},
        event_time_ms=T0,
        business_date=None,
    )
    store(backend, R.POSTINGS, [p.to_json()])
    legs = backend.query(
        "SELECT account, amount, amount_minor FROM {db}.postings FINAL ORDER BY account"
    )
    assert [(r["account"], r["amount"], r["amount_minor"]) for r in legs] == [
        ("channel:wechat", Decimal("12.345"), 12345),
        ("merchant:m1", Decimal("-12.345"), -12345),
    ]
    bal = Balance("merchant:m9", "JPY", {"confirmed|gross": -500, "provisional|fee": 3}, 2)
    store(backend, R.BALANCES, [balance_snapshot("merchant:m9|JPY|2", bal, 2)])
    [m9] = queries.balances(backend, merchant="m9")
    assert m9["confirmed"] == "500" and m9["provisional"] == "-3" and m9["net"] == "497"


def _orders_queries_and_dead_letters_round_trip(backend: Backend) -> None:
    # an order with a nullable-rich state
    store(backend, R.ORDER_STATES, [order_state_message()], partition=3)
    o = queries.order(backend, "o-1")
    assert o is not None
    assert o["amount"] == "100.00" and o["fee"] == "0.60" and o["standing"] == "confirmed"
    assert o["created_at"] == "2026-11-24T16:00:00.123Z"
    assert o["updated_at"] == "2026-11-24T16:00:01.456Z"
    assert [e["source"] for e in o["evidence"]] == ["order", "notify"]
    assert o["original_txn_id"] is None and o["terminal_id"] is None

    q = StatusQuery("o-3", "unionpay", None, None, 2, "sla", T0)
    store(backend, R.STATUS_QUERIES, [q.to_json()])
    dl = DeadLetter.of(
        topic="payments.callbacks",
        partition=1,
        offset=42,
        key=None,
        value=b"\xff{not json",
        error=InvalidEvent("bad_json", "not valid JSON"),
        dead_at_ms=T0,
    )
    store(backend, R.DEAD_LETTERS, [dl.to_json()])
    [d] = backend.query("SELECT * FROM {db}.dead_letters FINAL")
    assert d["dead_letter_id"] == "payments.callbacks:1:42" and d["key_b64"] is None
    assert d["code"] == "bad_json" and d["value_size"] == 10


def test_replays_and_stale_versions_show_once(backend: Backend) -> None:
    """What a replayed batch looks like to the queries: nothing twice, and the latest
    version of an order / balance shard wins even when an older one arrives later."""
    migrate(backend)
    newer = order_state_message()
    older = dict(newer, version=1, our_status="pending", breaks=[], queries_sent=0)
    store(backend, R.ORDER_STATES, [newer])
    store(backend, R.ORDER_STATES, [older, newer, older])
    brk = Break("b1", "late_callback", "o-1", "m1", "wechat", "CNY", 100, 100, T0, None, "late")
    store(backend, R.BREAKS, [brk.to_json()] * 3)
    legs = {"fees:wechat|confirmed|fee": -5, "merchant:m1|confirmed|fee": 5}  # nets to zero
    p = Posting("o-1:1", "o-1", 1, "m1", "wechat", "CNY", "confirmed", legs, T0)
    store(backend, R.POSTINGS, [p.to_json(), p.to_json()])
    b2 = Balance("fees:wechat", "CNY", {"confirmed|fee": -10}, 2)
    b1 = Balance("fees:wechat", "CNY", {"confirmed|fee": -5}, 1)
    store(backend, R.BALANCES, [balance_snapshot("fees:wechat|CNY|0", b, 0) for b in (b2, b1)])
    # stored twice at least (chDB also collapses within one inserted block)
    assert backend.query("SELECT count() AS n FROM {db}.order_states")[0]["n"] >= 2
    o = queries.order(backend, "o-1")
    assert o is not None and o["our_status"] == "success" and o["events_applied"] == 2
    assert len(queries.breaks(backend)) == 1
    assert len(o["postings"]) == 1 and o["postings"][0]["legs"][0]["amount"] == "-0.05"
    [fees] = queries.balances(backend, channel="wechat")
    assert fees["fees"] == "0.10" and fees["postings"] == 2
    stats = queries.counts(backend)
    assert stats["order_states"]["distinct"] == 1 and stats["breaks"]["distinct"] == 1


def test_order_version_orders_every_change() -> None:
    v = R.order_version
    assert v(2, 0, 0) > v(1, 3, 5)  # a new event beats timer changes of the old one
    assert v(2, 1, 0) > v(2, 0, 0)  # a status query sent by a timer
    assert v(2, 3, 1) > v(2, 3, 0)  # pending_timeout raised by a timer
    with pytest.raises(R.BadMessage):
        R.rows_for(R.BREAKS, None, b"[1, 2]", 0)
    with pytest.raises(R.BadMessage):
        R.rows_for(R.POSTINGS, None, b'{"posting_id": "x"}', 0)


def test_url_settings_and_the_password_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    url = "clickhouse://alice:p%40ss%3Aw0rd@db.example:9000/ledger?verify=false"
    b = NativeBackend.from_url(url)
    assert (b.host, b.port, b.user, b.database, b.secure) == (
        "db.example",
        9000,
        "alice",
        "ledger",
        False,
    )
    assert b._password == "p@ss:w0rd"
    assert "p%40ss" not in b.describe() and "w0rd" not in b.describe()
    tls = NativeBackend.from_url("clickhouses://bob@h/x")
    assert tls.secure and tls.port == 9440 and tls.describe() == "clickhouses://bob@h:9440/x"
    assert NativeBackend.from_url("clickhouse://h", secure=True).port == 9440
    with pytest.raises(ValueError, match="clickhouse://"):
        NativeBackend.from_url("http://h:8123")

    s = Settings(_env_file=None, clickhouse_url=url)  # type: ignore[call-arg]
    assert s.masked()["clickhouse_url"] == (
        "clickhouse://alice:***@db.example:9000/ledger?verify=false"
    )
    assert "w0rd" not in repr(s) and "w0rd" not in str(s)
    from tally.cli import main

    out = CliRunner().invoke(main, ["config"], env={"TALLY_CLICKHOUSE_URL": url})
    assert out.exit_code == 0 and "alice:***@db.example" in out.output
    assert "w0rd" not in out.output and "p%40ss" not in out.output

    # an unreachable server: the error and the logs name the host, never the password
    down = NativeBackend.from_url("clickhouse://alice:hunter2@127.0.0.1:1/x")
    down.connect_timeout = 0.5
    with caplog.at_level(logging.DEBUG), pytest.raises(ClickHouseUnavailable) as e:
        down.query("SELECT 1")
    assert "hunter2" not in str(e.value) and "hunter2" not in caplog.text


def test_tls_to_the_server(clickhouse_server: ClickHouseServer) -> None:
    need(clickhouse_server.tls_port is not None, "openssl is needed for the TLS test")
    assert clickhouse_server.cert is not None
    url = clickhouse_server.tls_url("default")
    unverified = NativeBackend.from_url(url + "?verify=false")
    assert unverified.query("SELECT 1 AS one") == [{"one": 1}]
    verified = NativeBackend.from_url(url, ca_certs=str(clickhouse_server.cert))
    assert verified.query("SELECT 2 AS two") == [{"two": 2}]
    untrusted = NativeBackend.from_url(url)  # self-signed, no CA given
    with pytest.raises(ClickHouseUnavailable):
        untrusted.query("SELECT 3")
    assert PASSWORD not in unverified.describe()
