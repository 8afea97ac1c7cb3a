"""End to end: a simulated day with injected statement anomalies reconciles with every
anomaly found and nothing else, for every statement format.

The ledger is what the stream stores (the pure pipeline's order states, breaks,
postings, balances, via the sink's row builders) in ClickHouse; the statement files
are written by the format writers, loaded with the loader, reconciled with
`recon.run`; the classes found must equal the oracle of `recon.simday` exactly.
Every format on chDB, two on the real clickhouse-server.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from recon.demo import scores
from recon.simday import SimDay, StatementAnomalies, simulate_day
from recon.statements import FORMATS
from tally.config import Settings
from tally.sim.traffic import SimConfig
from tests.clickhouse import connect_to, drop_database, storage_values

pytest_plugins = ("tests.clickhouse",)
pytestmark = pytest.mark.clickhouse

TZ = ZoneInfo("Asia/Shanghai")
NOW_MS = int(datetime(2026, 3, 3, 9, 0, tzinfo=TZ).timestamp() * 1000)
# formats that hold one currency per file (Alipay: CNY; MT940 and camt.053: one)
SINGLE_CURRENCY = {"alipay", "mt940", "camt053"}


def _day(single_currency: bool) -> SimDay:
    rates = {"late_callback": 0.5}
    extra: dict[str, Any] = {}
    if single_currency:
        rates["currency_mismatch"] = 0
        extra["currencies"] = {"CNY": 1}
    cfg = SimConfig(
        events=5000,
        seed=41,
        start=datetime(2026, 3, 1, 23, 50, tzinfo=TZ),
        orders_per_second=2.0,
        rates=rates,
        **extra,
    )
    return simulate_day(cfg, anomalies=StatementAnomalies(seed=5, carried=0.04))


@pytest.fixture(scope="module")
def days() -> dict[bool, SimDay]:
    return {False: _day(False), True: _day(True)}


def test_the_simulated_day_has_every_class_and_every_injection(days: dict[bool, SimDay]) -> None:
    for day in days.values():
        classes = set(day.expected.values())
        assert classes == {
            "matched",
            "long",
            "short",
            "amount_mismatch",
            "fee_mismatch",
            "status_mismatch",
            "carried",
        }
        assert set(day.counts) == {
            "missing_line",
            "extra_line",
            "changed_amount",
            "changed_fee",
            "wrong_kind",
            "moved_across_cutoff",
        }
        # real-time anomalies stay in the day and have their end-of-day class too
        natural = {k: c for k, c in day.expected.items() if c != "matched"}.keys() - set(
            day.injected
        )
        assert natural, "no end-of-day difference from the real-time anomalies"
        assert len(day.days) == 8  # 4 channels x 2 business days


def _load_and_run(
    values: dict[str, Any], day: SimDay, fmt: str
) -> tuple[Any, dict[tuple[str, date], str]]:
    from recon.run import run
    from recon.statements.load import load_file

    db = connect_to(values)
    day.store(db)
    settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    for ch, d, name, data in day.files(fmt):
        r = load_file(db, settings, data, channel=ch, file_name=name, fmt=fmt, day=d)
        assert r.status == "loaded", (name, r)
    runs = {}
    for ch, d in day.days:
        out = run(db, ch, d, day.policies[ch], now_ms=NOW_MS)
        runs[(ch, d)] = out.run_id
    return db, runs


def _found(db: Any, runs: dict[tuple[str, date], str]) -> set[tuple[str, str, str, str]]:
    from recon.run import results

    out = set()
    for (ch, d), run_id in runs.items():
        for r in results(db, ch, d, run_id):
            out.add((ch, d.isoformat(), r["item_key"], r["class"]))
    return out


CASES = [(fmt, "chdb") for fmt in FORMATS] + [("csv", "server"), ("mt940", "server")]


@pytest.fixture(params=CASES, ids=[f"{f}-{k}" for f, k in CASES])
def case(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, Any]]]:
    fmt, kind = request.param
    values = storage_values(request, kind)
    yield fmt, values
    drop_database(values)


def test_every_injected_anomaly_is_found_and_nothing_else(
    case: tuple[str, dict[str, Any]], days: dict[bool, SimDay]
) -> None:
    fmt, values = case
    day = days[fmt in SINGLE_CURRENCY]
    db, runs = _load_and_run(values, day, fmt)
    try:
        found = _found(db, runs)
    finally:
        db.close()
    expected = day.expected_set()
    precision, recall = scores(expected, found)
    print(
        f"\n{fmt}: {len(expected):,} items, {sum(1 for x in expected if x[3] != 'matched'):,} "
        f"not matched; precision {precision:.3f}, recall {recall:.3f}"
    )
    missing = sorted(expected - found)[:10]
    extra = sorted(found - expected)[:10]
    assert found == expected, f"missed {missing}, unexpected {extra}"
    assert precision == 1.0 and recall == 1.0


def test_a_redelivery_with_two_corrected_lines_changes_exactly_those_two(
    request: pytest.FixtureRequest, days: dict[bool, SimDay]
) -> None:
    from recon.run import results, run
    from recon.statements.load import load_file

    day = days[False]
    fmt = "wechat"
    values = storage_values(request, "chdb")
    db, runs = _load_and_run(values, day, fmt)
    try:
        # a statement with two changed lines (amount and fee); the channel corrects both
        ch, d = next(
            (ch, d)
            for ch, d in day.days
            if {"changed_amount", "changed_fee"}
            <= {c for (c2, d2, _), c in day.injected.items() if (c2, d2) == (ch, d.isoformat())}
        )
        fixed = {
            k: c
            for k, c in day.injected.items()
            if k[:2] == (ch, d.isoformat()) and c in ("changed_amount", "changed_fee")
        }
        keys = [
            next(k[2] for k, c in fixed.items() if c == "changed_amount"),
            next(k[2] for k, c in fixed.items() if c == "changed_fee"),
        ]
        truth = {ln.txn_id: ln for ln in day.truthful[(ch, d)]}
        corrected = [
            truth[ln.txn_id] if ln.txn_id in keys else ln for ln in day.statements[(ch, d)]
        ]
        fixed_day = replace(day, statements={**day.statements, (ch, d): corrected})
        st = fixed_day.statement(ch, d, fmt)
        from recon.statements import write

        settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
        name = f"{ch}-{d.isoformat()}-redelivered.csv"
        r = load_file(db, settings, write(st), channel=ch, file_name=name, fmt=fmt, day=d)
        assert r.status == "loaded" and r.delivery == 2
        before = {x["item_key"]: x["class"] for x in results(db, ch, d, runs[(ch, d)])}
        out = run(db, ch, d, day.policies[ch], now_ms=NOW_MS + 3_600_000)
        after = {x["item_key"]: x["class"] for x in results(db, ch, d, out.run_id)}
        assert out.previous_run == runs[(ch, d)]
        assert sorted(c.item_key for c in out.changes) == sorted(keys)
        assert {c.item_key: (c.old, c.new) for c in out.changes} == {
            keys[0]: ("amount_mismatch", "matched"),
            keys[1]: ("fee_mismatch", "matched"),
        }
        assert {k for k in before if before[k] != after.get(k)} == set(keys)
        assert before.keys() == after.keys()
        # and re-running again changes nothing
        again = run(db, ch, d, day.policies[ch], now_ms=NOW_MS + 7_200_000)
        assert again.changes == []
    finally:
        db.close()
        drop_database(values)


def test_bench_recon_smoke(request: pytest.FixtureRequest) -> None:
    """`tally bench recon` at a small size: both sides built in ClickHouse, the SQL and
    the pandas comparison agree with the generated mix (no timing asserted)."""
    from recon.bench import bench, expected_counts

    values = storage_values(request, "chdb")
    db = connect_to(values)
    try:
        r = bench(db, 2_345)
    finally:
        db.close()
        drop_database(values)
    assert r.sql_counts == r.pandas_counts == r.expected == expected_counts(2_345)
    assert r.expected["long"] == 24 + 24 and r.expected["matched"] == 2_345 - 5 * 24
    assert r.agree


def test_a_channel_with_its_own_cutoff_and_window(request: pytest.FixtureRequest) -> None:
    """UnionPay closes its day at 23:00 with a 120 s window; the others at midnight. The
    simulated hour crosses 23:00 only: unionpay has two business days, the others one."""
    from datetime import time

    from recon.run import run
    from recon.statements.load import load_file
    from tally.core.policy import ChannelPolicy

    channels = {"unionpay": ChannelPolicy(cutoff=time(23, 0), carry_window_seconds=120)}
    settings_values = storage_values(request, "chdb")
    settings = Settings(_env_file=None, channels=channels, **settings_values)  # type: ignore[call-arg]
    cfg = SimConfig(
        events=4000,
        seed=77,
        start=datetime(2026, 3, 1, 22, 55, tzinfo=TZ),
        orders_per_second=2.0,
        rates={"late_callback": 0.5},
    )
    day = simulate_day(cfg, settings.policies(), StatementAnomalies(seed=8, carried=0.05))
    assert [d.isoformat() for ch, d in day.days if ch == "unionpay"] == [
        "2026-03-01",
        "2026-03-02",
    ]
    assert {d.isoformat() for ch, d in day.days if ch != "unionpay"} == {"2026-03-01"}
    assert any(k[0] == "unionpay" for k, c in day.injected.items() if c == "moved_across_cutoff")
    db = connect_to(settings_values)
    try:
        day.store(db)
        for ch, d, name, data in day.files("csv"):
            load_file(db, settings, data, channel=ch, file_name=name, fmt="csv", day=d)
        runs = {
            (ch, d): run(db, ch, d, settings.policies()[ch], now_ms=NOW_MS).run_id
            for ch, d in day.days
        }
        assert _found(db, runs) == day.expected_set()
    finally:
        db.close()
        drop_database(settings_values)


def test_before_the_next_statement_arrives_near_items_are_carried(
    request: pytest.FixtureRequest, days: dict[bool, SimDay]
) -> None:
    """S8/S7: day 1 reconciled while day 2's statements are not loaded: items near the
    cutoff without a line are carried ("not loaded yet"); once day 2 arrives, a re-run
    of day 1 gives the full answer."""
    from recon.run import results, run
    from recon.simday import expected_classes
    from recon.statements.load import load_file

    day = days[False]
    d1 = min(d for _, d in day.days)
    values = storage_values(request, "chdb")
    db = connect_to(values)
    try:
        day.store(db)
        settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
        files = day.files("csv")
        for ch, d, name, data in files:
            if d == d1:
                load_file(db, settings, data, channel=ch, file_name=name, fmt="csv", day=d)
        only_d1 = {k: v for k, v in day.statements.items() if k[1] == d1}
        early = {(*k, c) for k, c in expected_classes(day.ledger, only_d1, day.policies).items()}
        full = {x for x in day.expected_set() if x[1] == d1.isoformat()}
        assert early != full  # some items wait for the next statement
        runs = {}
        for ch, d in only_d1:
            runs[(ch, d)] = run(db, ch, d, day.policies[ch], now_ms=NOW_MS).run_id
        assert _found(db, runs) == early
        for ch, d, name, data in files:
            if d != d1:
                load_file(db, settings, data, channel=ch, file_name=name, fmt="csv", day=d)
        changed = set()
        for ch, d in only_d1:
            out = run(db, ch, d, day.policies[ch], now_ms=NOW_MS + 3_600_000)
            runs[(ch, d)] = out.run_id
            changed |= {(ch, d.isoformat(), c.item_key, c.old, c.new) for c in out.changes}
            assert {r["item_key"] for r in results(db, ch, d, out.run_id)}
        assert _found(db, runs) == full
        # exactly the items whose class differs between the two answers changed
        e = {(x[0], x[1], x[2]): x[3] for x in early}
        f = {(x[0], x[1], x[2]): x[3] for x in full}
        assert changed == {(*k, e[k], f[k]) for k in e if e[k] != f[k]}
    finally:
        db.close()
        drop_database(values)
