"""From output-topic messages to ClickHouse rows.

Each topic a sink reads maps to one table; each message to zero or more rows
(a posting to one row per leg). Values are Python objects the backends insert
as they are: `Decimal` for money (never float), `date` for dates, `int` epoch
milliseconds (UTC) for timestamps, `None` for NULL.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from tally.core.breaks import evidence_trail
from tally.core.events import parse_timestamp
from tally.core.ledger import BUCKETS, COMPONENTS
from tally.core.money import to_decimal
from tally.core.orders import OrderState

Row = tuple[Any, ...]


class BadMessage(ValueError):
    """An output-topic message the sink cannot turn into rows."""


def _money(v: str | None) -> Decimal | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise BadMessage(f"amount must be a decimal string, got {type(v).__name__}")
    return Decimal(v)


def _date(v: str | None) -> date | None:
    return None if v is None else date.fromisoformat(v)


def _ms(v: str | None) -> int | None:
    return None if v is None else parse_timestamp(v, "time")


def _json(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


def order_version(events: int, queries_sent: int, breaks: int) -> int:
    """The version an order-state row is kept by: events applied, then status queries
    sent, then breaks raised. Each grows and every meaningful change of an order
    grows one of them (a timer firing sends a query or raises a break without a new
    event), so the latest state always has the highest version."""
    return (events << 40) | (min(queries_sent, (1 << 20) - 1) << 20) | min(breaks, (1 << 20) - 1)


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[str, ...]
    rows: Callable[[Any, Any, int], list[Row]]  # (key, value, partition) -> rows


def _order_evidence(d: dict[str, Any]) -> list[dict[str, Any]]:
    """The `evidence` column: the order's evidence trail (`tally.core.breaks.evidence_trail`).
    A snapshot carries it only inside `state` (the full `OrderState`); one published
    before that carries it as `evidence` too, stored as it is."""
    if "evidence" in d:
        return d["evidence"] or []
    try:
        return evidence_trail(OrderState.from_json(d["state"]))
    except (AssertionError, AttributeError) as exc:  # the others: rows_for
        raise BadMessage(f"order_states: state: {type(exc).__name__}: {exc}") from None


def _order_state(_key: Any, d: dict[str, Any], partition: int) -> list[Row]:
    breaks = list(d.get("breaks") or [])
    return [
        (
            d["txn_id"],
            order_version(int(d["version"]), int(d.get("queries_sent") or 0), len(breaks)),
            int(d["version"]),
            1 if d.get("known") else 0,
            d.get("type"),
            d.get("merchant_id"),
            d.get("channel_id"),
            d.get("currency"),
            _money(d.get("amount")),
            _money(d.get("coupon_amount")),
            _money(d.get("fee")),
            d.get("original_txn_id"),
            d.get("terminal_id"),
            d.get("our_status"),
            d.get("channel_status"),
            d.get("channel_txn_id"),
            d.get("standing") or "none",
            1 if d.get("resolved") else 0,
            1 if d.get("reversed") else 0,
            _date(d.get("business_date")),
            _ms(d.get("created_at")),
            _ms(d["updated_at"]),
            int(d.get("queries_sent") or 0),
            breaks,
            _json(_order_evidence(d)),
            _json(d["state"]),
            partition,
        )
    ]


ORDER_STATES = Table(
    "order_states",
    (
        "txn_id",
        "version",
        "events",
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
        "created_at_ms",
        "updated_at_ms",
        "queries_sent",
        "breaks",
        "evidence",
        "state",
        "shard",
    ),
    _order_state,
)


def _break(_key: Any, d: dict[str, Any], _p: int) -> list[Row]:
    return [
        (
            d["break_id"],
            d["kind"],
            d["txn_id"],
            d.get("merchant_id"),
            d.get("channel_id"),
            d.get("currency"),
            _money(d.get("amount")),
            _money(d.get("channel_amount")),
            _date(d.get("business_date")),
            _ms(d["event_time"]),
            _ms(d.get("detected_at")),
            d.get("detail") or "",
            _json(d.get("evidence") or []),
        )
    ]


BREAKS = Table(
    "breaks",
    (
        "break_id",
        "kind",
        "txn_id",
        "merchant_id",
        "channel_id",
        "currency",
        "amount",
        "channel_amount",
        "business_date",
        "event_time_ms",
        "detected_at_ms",
        "detail",
        "evidence",
    ),
    _break,
)


def _posting(_key: Any, d: dict[str, Any], _p: int) -> list[Row]:
    """One row per leg. A posting whose legs do not net to zero in each bucket (it
    has one currency) is not stored: a `BadMessage`, as any message that does not fit
    (the workers check the same when they make it: `tally.core.ledger`)."""
    at = _ms(d["event_time"])
    bd = _date(d.get("business_date"))
    out: list[Row] = []
    net: dict[str, int] = {}
    for leg in d["legs"]:
        minor = int(leg["amount_minor"])
        amount = _money(leg["amount"])
        if amount != to_decimal(minor, d["currency"]):
            raise BadMessage(f"posting {d['posting_id']}: amount and amount_minor disagree")
        net[leg["bucket"]] = net.get(leg["bucket"], 0) + minor
        out.append(
            (
                d["posting_id"],
                leg["account"],
                leg["bucket"],
                leg["component"],
                d["txn_id"],
                int(d["seq"]),
                d.get("merchant_id"),
                d.get("channel_id"),
                d["currency"],
                d["reason"],
                bd,
                at,
                leg["account"].split(":", 1)[0],
                amount,
                minor,
            )
        )
    unbalanced = {bucket: v for bucket, v in sorted(net.items()) if v}
    if unbalanced:
        raise BadMessage(
            f"posting {d['posting_id']}: legs do not net to zero per bucket in "
            f"{d['currency']}: {unbalanced} (minor units)"
        )
    return out


POSTINGS = Table(
    "postings",
    (
        "posting_id",
        "account",
        "bucket",
        "component",
        "txn_id",
        "seq",
        "merchant_id",
        "channel_id",
        "currency",
        "reason",
        "business_date",
        "event_time_ms",
        "account_kind",
        "amount",
        "amount_minor",
    ),
    _posting,
)

_AMOUNT_COLUMNS = tuple(f"{b}_{c}" for b in BUCKETS for c in COMPONENTS)


def _balance(_key: Any, d: dict[str, Any], _p: int) -> list[Row]:
    cur = d["currency"]
    minor = {k: int(v) for k, v in d["amounts_minor"].items()}
    amounts = tuple(to_decimal(minor.get(f"{b}|{c}", 0), cur) for b in BUCKETS for c in COMPONENTS)
    return [
        (
            d["account"],
            cur,
            int(d["shard"]),
            int(d["version"]),
            d["kind"],
            d["owner"],
            *amounts,
            _json(dict(sorted(minor.items()))),
        )
    ]


BALANCES = Table(
    "balances",
    ("account", "currency", "shard", "version", "kind", "owner", *_AMOUNT_COLUMNS, "amounts_minor"),
    _balance,
)


def _status_query(_key: Any, d: dict[str, Any], _p: int) -> list[Row]:
    return [
        (
            d["query_id"],
            d["txn_id"],
            d["channel_id"],
            d.get("merchant_id"),
            d.get("channel_txn_id"),
            int(d["attempt"]),
            d["reason"],
            _ms(d["requested_at"]),
        )
    ]


STATUS_QUERIES = Table(
    "status_queries",
    (
        "query_id",
        "txn_id",
        "channel_id",
        "merchant_id",
        "channel_txn_id",
        "attempt",
        "reason",
        "requested_at_ms",
    ),
    _status_query,
)


def _dead_letter(_key: Any, d: dict[str, Any], _p: int) -> list[Row]:
    return [
        (
            d["dead_letter_id"],
            d["topic"],
            int(d["partition"]),
            int(d["offset"]),
            d.get("key_b64"),
            d["value_b64"],
            int(d["value_size"]),
            1 if d.get("value_truncated") else 0,
            d.get("value_sha256") or "",
            d["code"],
            d.get("reason") or "",
            d.get("field"),
            _ms(d["dead_at"]),
        )
    ]


DEAD_LETTERS = Table(
    "dead_letters",
    (
        "dead_letter_id",
        "source_topic",
        "source_partition",
        "source_offset",
        "key_b64",
        "value_b64",
        "value_size",
        "value_truncated",
        "value_sha256",
        "code",
        "reason",
        "field",
        "dead_at_ms",
    ),
    _dead_letter,
)


# Faust table changelogs (key and value JSON, as the table serializers write them)


def _watermark(key: Any, value: Any, _p: int) -> list[Row]:
    if value is None or not str(key).isdigit():  # "sent|<p>": a checkpoint marker
        return []
    return [(int(key), int(value))]


WATERMARKS = Table("watermarks", ("partition", "watermark_ms"), _watermark)


def _claim(key: Any, value: Any, partition: int) -> list[Row]:
    if value is None:
        return []
    if isinstance(value, dict):  # written with Faust's JSON before the codec was used
        value = [value["txn_id"], value.get("merchant_id"), value["occurred_at_ms"]]
    txn_id, merchant_id, occurred_at_ms = value
    return [(str(key), txn_id, merchant_id, int(occurred_at_ms), partition)]


CLAIMS = Table(
    "channel_txn_claims",
    ("claim_key", "txn_id", "merchant_id", "occurred_at_ms", "shard"),
    _claim,
)

ALL = (
    ORDER_STATES,
    BREAKS,
    POSTINGS,
    BALANCES,
    STATUS_QUERIES,
    DEAD_LETTERS,
    WATERMARKS,
    CLAIMS,
)


def decode(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadMessage(f"not JSON: {exc}") from None


def rows_for(table: Table, key: bytes | None, value: bytes | None, partition: int) -> list[Row]:
    """Rows for one message; raises BadMessage when it does not fit."""
    return _rows_of(table, *_decoded(table, key, value), partition)


def _decoded(table: Table, key: bytes | None, value: bytes | None) -> tuple[Any, Any]:
    k = decode(key) if table in (WATERMARKS, CLAIMS) else None
    v = decode(value)
    if table not in (WATERMARKS, CLAIMS) and not isinstance(v, dict):
        raise BadMessage(f"{table.name}: a message must be a JSON object")
    return k, v


def _rows_of(table: Table, k: Any, v: Any, partition: int) -> list[Row]:
    try:
        return table.rows(k, v, partition)
    except BadMessage:
        raise
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        raise BadMessage(f"{table.name}: {type(exc).__name__}: {exc}") from None


# The facts an order's changelog record carries in its outbox (`[output, partition, key,
# value]`, the outputs its last batch made: streams.emit), by output, stored with it.
FACT_TABLES = {"breaks": BREAKS, "postings": POSTINGS, "status-queries": STATUS_QUERIES}


def rows_with_facts(
    table: Table, key: bytes | None, value: bytes | None, partition: int
) -> tuple[list[Row], list[tuple[Table, list[Row]]], list[str]]:
    """`rows_for`, and for an order's record also the rows of the facts in its outbox,
    each as the output topic's copy of it gives them (same ids: stored once), with the
    problem of each fact that does not fit (skipped; the record itself is stored).

    Why: the worker publishes an order's new state before the batch's outputs, and the
    sink reads the topics independently. Storing the facts with the state means a state
    in ClickHouse never lacks the outputs that made it — which a worker restored from
    ClickHouse onto an empty broker relies on (it takes those inputs as seen and would
    not make those outputs again: docs/storage.md, "Restoring a worker")."""
    k, v = _decoded(table, key, value)
    rows = _rows_of(table, k, v, partition)
    if table is not ORDER_STATES or not v.get("outbox"):
        return rows, [], []
    facts: list[tuple[Table, list[Row]]] = []
    problems: list[str] = []
    for fact in v["outbox"]:
        target = FACT_TABLES.get(fact[0]) if isinstance(fact, list) and len(fact) == 4 else None
        if target is None:
            continue  # internal (links, success claims), or not a fact
        try:
            fact_value = fact[3]
            if not isinstance(fact_value, dict):
                raise BadMessage(f"{target.name}: a message must be a JSON object")
            facts.append((target, _rows_of(target, None, fact_value, int(fact[1]))))
        except (BadMessage, TypeError, ValueError) as exc:
            problems.append(f"outbox fact of {v.get('txn_id')}: {exc}")
    return rows, facts, problems
