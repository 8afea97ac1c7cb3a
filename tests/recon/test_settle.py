"""Merchant settlement (清分) on a simulated day stored in ClickHouse (chDB and
clickhouse-server): the figures equal the stream's confirmed merchant postings of the
day, the pure pipeline's postings and balances, and the payments under open suspense
entries are held back. The arithmetic alone: tests/core/test_clearing.py."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from recon.run import run
from recon.settle import posted_totals, read_items, settle
from recon.simday import SimDay, StatementAnomalies, simulate_day
from recon.statements.load import load_file
from recon.suspense import open_entries
from tally.cli import main
from tally.config import Settings
from tally.core.ledger import split_leg
from tally.core.orders import Standing, view
from tally.sim.traffic import SimConfig
from tests.clickhouse import connect_to, drop_database, env_of, storage_values

pytest_plugins = ("tests.clickhouse",)

TZ = ZoneInfo("Asia/Shanghai")
NOW_MS = int(datetime(2026, 3, 3, 9, 0, tzinfo=TZ).timestamp() * 1000)


# ---------------------------------------------------------- on ClickHouse


@pytest.fixture(scope="module")
def day() -> SimDay:
    cfg = SimConfig(
        events=4000,
        seed=23,
        start=datetime(2026, 3, 1, 23, 52, tzinfo=TZ),
        orders_per_second=2.0,
        rates={"late_callback": 0.5},
    )
    return simulate_day(cfg, anomalies=StatementAnomalies(seed=2))


def _pipeline_figures(day: SimDay, d: date) -> dict[tuple[str, str], dict[str, int]]:
    """From the pure pipeline's postings: confirmed merchant legs of business date d,
    merchant's side."""
    out: dict[tuple[str, str], dict[str, int]] = defaultdict(
        lambda: {"gross": 0, "refunds": 0, "fees": 0, "net": 0}
    )
    for p in day.pipeline.postings:
        if p.business_date != d.isoformat():
            continue
        for k, v in p.legs.items():
            account, bucket, component = split_leg(k)
            if bucket != "confirmed" or not account.startswith("merchant:"):
                continue
            f = out[(account.split(":", 1)[1], p.currency)]
            name = {"gross": "gross", "refund": "refunds", "fee": "fees"}[component]
            f[name] += -v if component == "gross" else v
            f["net"] -= v
    return {k: v for k, v in out.items() if any(v.values())}


@pytest.fixture()
def stored(
    backend_kind: str, request: pytest.FixtureRequest, day: SimDay
) -> Iterator[dict[str, Any]]:
    values = storage_values(request, backend_kind)
    db = connect_to(values)
    day.store(db)
    db.close()
    yield values
    drop_database(values)


@pytest.mark.clickhouse
def test_settlement_equals_the_streams_postings_and_balances(
    stored: dict[str, Any], day: SimDay
) -> None:
    db = connect_to(stored)
    try:
        dates = sorted({d for _, d in day.days})
        all_days: dict[tuple[str, str], int] = defaultdict(int)
        for d in dates:
            s = settle(db, d)
            assert s.disagreements == []
            mine = {
                (m.merchant_id, m.currency): {
                    "gross": m.gross,
                    "refunds": m.refunds,
                    "fees": m.fees,
                    "net": m.net,
                }
                for m in s.merchants
            }
            assert mine == _pipeline_figures(day, d)
            posted = posted_totals(db, d)
            # a merchant whose confirmed legs of the day net to zero (a sale confirmed,
            # then reversed) has no settlement line
            assert {k: v["net"] for k, v in posted.items() if any(v.values())} == {
                k: v["net"] for k, v in mine.items()
            }
            # coupon funding: the platform-funded part of the confirmed payments
            coupons: dict[str, int] = defaultdict(int)
            for o in day.pipeline.orders.values():
                if o.known and o.type == "payment" and o.business_date == d.isoformat():
                    v = view(o, day.policies[o.channel_id or ""])
                    if v.standing is Standing.CONFIRMED:
                        assert o.currency is not None
                        coupons[o.currency] += o.coupon_amount
            assert {t.currency: t.coupon_funding for t in s.totals} == {
                c: coupons.get(c, 0) for c in {t.currency for t in s.totals}
            }
            for m in s.merchants:
                all_days[(m.merchant_id, m.currency)] += m.net
        # every posting has a business date: the days add up to the balances
        book = {
            (b.owner, b.currency): -b.total("confirmed")
            for b in day.pipeline.book.balances.values()
            if b.kind == "merchant" and b.total("confirmed")
        }
        assert {k: v for k, v in all_days.items() if v} == book
        # one channel only: the sum over channels is the whole
        d = dates[0]
        per_channel = sum(
            t.net for ch in sorted({c for c, _ in day.days}) for t in settle(db, d, ch).totals
        )
        assert per_channel == sum(t.net for t in settle(db, d).totals)
    finally:
        db.close()


@pytest.mark.clickhouse
def test_payments_under_open_suspense_are_held_back(
    request: pytest.FixtureRequest, day: SimDay
) -> None:
    values = storage_values(request, "chdb")
    db = connect_to(values)
    try:
        day.store(db)
        settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
        for ch, d, name, data in day.files("csv"):
            load_file(db, settings, data, channel=ch, file_name=name, fmt="csv", day=d)
        for ch, d in day.days:
            run(db, ch, d, day.policies[ch], now_ms=NOW_MS)
        open_txn = {e.txn_id or e.channel_txn_id for e in open_entries(db)}
        broken = {
            k[2] for k, c in day.expected.items() if c not in ("matched", "carried")
        }  # end-of-day breaks: open entries now
        assert broken <= open_txn
        held_total = 0
        for d in sorted({d for _, d in day.days}):
            s = settle(db, d)
            assert s.disagreements == []
            items = {i.txn_id: i for i in read_items(db, d)}
            want = {t for t, i in items.items() if i.kind == "payment" and t in open_txn}
            got = {t for m in s.merchants for t in m.held_txn_ids}
            assert got == want
            # every injected missing line / changed amount on a confirmed payment is held
            for (_, dd, key), cause in day.injected.items():
                if (
                    dd == d.isoformat()
                    and cause in ("missing_line", "changed_amount")
                    and key in items
                    and items[key].kind == "payment"
                ):
                    assert key in got, (key, cause)
            for m in s.merchants:
                held = [items[t] for t in m.held_txn_ids]
                assert m.held_amount == sum(i.amount - i.fee for i in held)
                assert m.payable == m.net - m.held_amount
            held_total += sum(t.held_items for t in s.totals)
        assert held_total > 0

        # the command line: the same figures
        env = env_of(values)
        d = sorted({d for _, d in day.days})[0]
        res = CliRunner().invoke(
            main, ["settle", "--date", d.isoformat(), "--format", "json"], env=env
        )
        assert res.exit_code == 0, res.output
        doc = json.loads(res.output)
        s = settle(db, d)
        assert doc["agrees_with_postings"] is True
        assert doc["totals"] == [t.to_json() for t in s.totals]
        assert len(doc["merchants"]) == len(s.merchants)
        table = CliRunner().invoke(main, ["settle", "--date", d.isoformat()], env=env)
        assert table.exit_code == 0 and "TOTAL" in table.output
        csv_out = CliRunner().invoke(
            main, ["settle", "--date", d.isoformat(), "--format", "csv"], env=env
        )
        assert csv_out.output.splitlines()[0].startswith("merchant_id,currency,payments")
        assert len(csv_out.output.splitlines()) == len(s.merchants) + 1
    finally:
        db.close()
        drop_database(values)
