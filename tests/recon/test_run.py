"""`tally recon run` for real on chDB and clickhouse-server 18.16: the SQL agrees with
the pure classifier on random days (property test). The helpers here (orders, lines,
statements inserted as stored) are shared with the scenario tests
(tests/recon/test_run_scenarios.py) and others."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import date, timedelta
from decimal import Decimal as D
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recon import run as R
from recon.statements.insert import LINE_COLUMNS
from recon.statements.load import VERSION_COLUMNS
from sinks.backend import Backend
from tally.core.eod import LedgerOrder, Result, StatementLine, classify
from tally.core.matching import Rules
from tally.core.policy import ChannelPolicy

pytestmark = pytest.mark.clickhouse

DAY = date(2026, 11, 24)
PREV, NEXT = DAY - timedelta(days=1), DAY + timedelta(days=1)
POLICY = ChannelPolicy(cutoff="23:00", carry_window_seconds=180)
CTX = R.day_of(POLICY, DAY)

ORDER_COLUMNS = (
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
    "our_status",
    "channel_txn_id",
    "standing",
    "reversed",
    "business_date",
    "created_at_ms",
    "updated_at_ms",
    "original_txn_id",
)


# ------------------------------------------------------------------ helpers


def insert_orders(
    db: Backend, channel: str, orders: Sequence[LedgerOrder], version: int = 1
) -> None:
    db.insert(
        "order_states",
        ORDER_COLUMNS,
        [
            (
                o.txn_id,
                version,
                1 if o.our_status else 0,
                o.type,
                o.merchant_id,
                channel,
                o.currency,
                o.amount,
                o.coupon_amount,
                o.fee,
                o.our_status or None,
                o.channel_txn_id or None,
                "confirmed" if o.our_status == "success" else "none",
                1 if o.reversed else 0,
                o.business_date,
                o.created_at_ms,
                version,
                o.original_txn_id or None,
            )
            for o in orders
        ],
    )


def insert_statement(
    db: Backend,
    channel: str,
    day: date,
    lines: Sequence[StatementLine],
    delivery: int = 1,
    *,
    finished: bool = True,
) -> None:
    """A statement version as the loader stores it: lines first, then the version row
    (finished=False: an unfinished load, lines without a version row)."""
    db.insert(
        "statement_lines",
        LINE_COLUMNS,
        [
            (
                channel,
                day,
                delivery,
                x.line_no,
                x.txn_id,
                x.channel_txn_id,
                "",
                x.kind,
                x.status,
                x.currency,
                x.amount,
                x.fee,
                None,
                "",
                x.occurred_at_ms,
                x.raw,
            )
            for x in lines
        ],
    )
    if finished:
        db.insert(
            "statement_versions",
            VERSION_COLUMNS,
            [
                (
                    channel,
                    day,
                    delivery,
                    f"sha-{channel}-{day}-{delivery}",
                    "generic",
                    "t.csv",
                    len(lines),
                    sum((x.amount for x in lines), D(0)),
                    sum((x.fee or D(0) for x in lines), D(0)),
                    1,
                    "test",
                )
            ],
        )


def stored(db: Backend, channel: str, run_id: str, day: date = DAY) -> list[Result]:
    return [Result.from_row(r) for r in R.results(db, channel, day, run_id)]


def order(txn: str, **kw: Any) -> LedgerOrder:
    base: dict[str, Any] = {
        "txn_id": txn,
        "type": "payment",
        "our_status": "success",
        "reversed": False,
        "currency": "CNY",
        "amount": D("100.00"),
        "coupon_amount": None,
        "fee": D("0.60"),
        "business_date": DAY,
        "created_at_ms": CTX.end_cutoff_ms - 5 * 3600_000,
        "channel_txn_id": "X" + txn,
        "merchant_id": "m1",
    }
    base.update(kw)
    return LedgerOrder(**base)


def line(no: int, txn: str, **kw: Any) -> StatementLine:
    base: dict[str, Any] = {
        "line_no": no,
        "kind": "payment",
        "status": "success",
        "currency": "CNY",
        "amount": D("100.00"),
        "fee": D("0.60"),
        "txn_id": txn,
        "channel_txn_id": "X" + txn if txn else "",
        "occurred_at_ms": CTX.end_cutoff_ms - 5 * 3600_000,
    }
    base.update(kw)
    return StatementLine(**base)


# ----------------------------------------------------- SQL == pure, randomly

_TIMES = st.sampled_from(
    [
        CTX.start_cutoff_ms - 200_000,
        CTX.start_cutoff_ms - 1,
        CTX.start_cutoff_ms + 180_000,
        CTX.start_cutoff_ms + 180_001,
        CTX.end_cutoff_ms - 5 * 3600_000,
        CTX.end_cutoff_ms - 180_000,
        CTX.end_cutoff_ms - 1,
        CTX.end_cutoff_ms,
        CTX.end_cutoff_ms + 100_000,
        CTX.end_cutoff_ms + 181_000,
    ]
)
_MONEY = st.sampled_from([D("1"), D("2"), D("2.5"), D("3")])


@st.composite
def orders_st(draw: Any) -> list[LedgerOrder]:
    out = []
    for i in range(draw(st.integers(0, 7))):
        out.append(
            LedgerOrder(
                txn_id=f"T{i}",
                type=draw(st.sampled_from(["payment"] * 4 + ["refund", "reversal"])),
                our_status=draw(st.sampled_from(["success"] * 6 + ["failed", "pending", ""])),
                reversed=draw(st.sampled_from([False] * 5 + [True])),
                currency=draw(st.sampled_from(["CNY", "CNY", "USD"])),
                amount=draw(_MONEY),
                coupon_amount=draw(st.sampled_from([None, D(0), D(1)])),
                fee=draw(st.sampled_from([None, D("0.5"), D(0)])),
                business_date=draw(st.sampled_from([PREV, DAY, DAY, DAY, DAY, NEXT])),
                created_at_ms=draw(_TIMES),
                channel_txn_id=draw(st.sampled_from([f"X{i}", f"X{i}", "", "X0"])),
                merchant_id=draw(st.sampled_from(["m1", "m2"])),
            )
        )
    return out


def lines_st(orders: list[LedgerOrder]) -> Any:
    @st.composite
    def make(draw: Any) -> list[StatementLine]:
        n = len(orders)
        ids = [o.txn_id for o in orders] + ["U1", ""]
        ctids = [o.channel_txn_id for o in orders] + ["Y1", ""]
        out = []
        for no in range(1, draw(st.integers(0, 7)) + 1):
            if n and draw(st.integers(0, 3)):  # a line about one of our orders, maybe altered
                o = orders[draw(st.integers(0, n - 1))]
                base = o.comparable_amount
                out.append(
                    StatementLine(
                        line_no=no,
                        kind=draw(st.sampled_from([o.type] * 8 + ["refund", "reversal"])),
                        status=draw(st.sampled_from(["success"] * 8 + ["failed", "reversed"])),
                        currency=draw(st.sampled_from([o.currency] * 8 + ["EUR"])),
                        amount=draw(st.sampled_from([base] * 3 + [base + D("0.01")])),
                        fee=draw(
                            st.sampled_from(
                                [
                                    o.fee,
                                    o.fee,
                                    None,
                                    D("0.7"),
                                    D("0.1"),
                                    None if o.fee is None else -o.fee,
                                ]
                            )
                        ),
                        txn_id=draw(st.sampled_from([o.txn_id, o.txn_id, ""])),
                        channel_txn_id=draw(st.sampled_from([o.channel_txn_id, ""])),
                        occurred_at_ms=draw(_TIMES),
                    )
                )
            else:
                out.append(
                    StatementLine(
                        line_no=no,
                        kind=draw(st.sampled_from(["payment", "refund", "reversal"])),
                        status=draw(st.sampled_from(["success", "success", "failed"])),
                        currency="CNY",
                        amount=draw(_MONEY),
                        fee=draw(st.sampled_from([None, D("0.5")])),
                        txn_id=draw(st.sampled_from(ids)),
                        channel_txn_id=draw(st.sampled_from(ctids)),
                        occurred_at_ms=draw(_TIMES),
                    )
                )
        return out

    return make()


@st.composite
def days_st(draw: Any) -> tuple[Any, ...]:
    orders = draw(orders_st())
    today = draw(lines_st(orders))
    prev = draw(st.one_of(st.none(), lines_st(orders)))
    nxt = draw(st.one_of(st.none(), lines_st(orders)))
    return orders, today, prev, nxt


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(days_st())
def test_sql_agrees_with_the_pure_classifier(db: Backend, day: tuple[Any, ...]) -> None:
    orders, today, prev, nxt = day
    channel = "p" + uuid.uuid4().hex[:8]
    insert_orders(db, channel, orders)
    insert_statement(db, channel, DAY, today)
    if prev is not None:
        insert_statement(db, channel, PREV, prev)
    if nxt is not None:
        insert_statement(db, channel, NEXT, nxt)
    out = R.run(db, channel, DAY, POLICY, sync_suspense=False)
    want = classify(CTX, orders, today, prev, nxt)
    assert stored(db, channel, out.run_id) == want
    assert out.counts() == {c: sum(r.cls == c for r in want) for c in out.counts()}
    assert out.ledger_items == sum(o.is_item_of(DAY) for o in orders)


# The same with matching rules on: tolerances, the time window (scored candidates,
# references in free text), combined payments, refunds of a payment over days.

_RULES = st.builds(
    ChannelPolicy,
    cutoff=st.just("23:00"),
    carry_window_seconds=st.just(180),
    amount_tolerance_minor=st.sampled_from([0, 1, 60]),
    amount_tolerance_bps=st.sampled_from([0, 100]),
    fee_tolerance_minor=st.sampled_from([0, 20]),
    match_window_seconds=st.sampled_from([0, 600, 20_000]),
    match_threshold=st.sampled_from([50, 70, 90]),
    combined_payments=st.booleans(),
)


@st.composite
def rich_days_st(draw: Any) -> tuple[Any, ...]:
    orders = draw(orders_st())
    # refunds of T0 (some of them over several days)
    orders = [
        o
        if o.type != "refund" or not draw(st.booleans())
        else LedgerOrder(
            **{**o.__dict__, "original_txn_id": "T0", "amount": draw(_MONEY) + draw(_MONEY)}
        )
        for o in orders
    ]
    today = draw(lines_st(orders))
    mangled = []
    for ln in today:  # cut a reference, move it into the free text, or drop it
        how = draw(st.sampled_from(["keep", "keep", "cut", "text", "drop"]))
        if how == "keep" or not ln.txn_id:
            mangled.append(ln)
            continue
        ref = {"cut": ln.txn_id[:1], "text": "", "drop": ""}[how]
        raw = f":86:/EREF/{ln.txn_id} PAYMENT" if how == "text" else "NONREF"
        mangled.append(
            StatementLine(**{**ln.__dict__, "txn_id": ref, "channel_txn_id": "", "raw": raw})
        )
    shared = [o for o in orders if o.channel_txn_id == "X0" and o.is_item_of(DAY)]
    if shared and draw(st.booleans()):  # one line over the orders sharing X0
        total = sum((o.comparable_amount for o in shared), D(0))
        mangled.append(
            StatementLine(
                line_no=len(mangled) + 1,
                kind="payment",
                status="success",
                currency=shared[0].currency,
                amount=total + draw(st.sampled_from([D(0), D(0), D("0.01")])),
                fee=draw(st.sampled_from([None, D("0.5")])),
                channel_txn_id="X0",
                occurred_at_ms=draw(_TIMES),
            )
        )
    return orders, mangled, draw(_RULES)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rich_days_st())
def test_sql_agrees_with_the_pure_classifier_under_matching_rules(
    db: Backend, day: tuple[Any, ...]
) -> None:
    orders, today, policy = day
    channel = "q" + uuid.uuid4().hex[:8]
    insert_orders(db, channel, orders)
    insert_statement(db, channel, DAY, today)
    out = R.run(db, channel, DAY, policy, sync_suspense=False)
    want = classify(CTX, orders, today, rules=Rules.of(policy))
    assert stored(db, channel, out.run_id) == want
    again = R.run(db, channel, DAY, policy, sync_suspense=False)
    assert stored(db, channel, again.run_id) == want
    assert again.changes == []
