"""The simulated day's statements and oracle (tally/sim/statements.py, tally/sim/day.py):
seeded injections classed as intended, real-time anomalies' end-of-day classes, the
rules on hand-made items. Pure: no files, no ClickHouse."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from tally.core.policy import ChannelPolicy, Policies
from tally.sim.config import ANOMALIES, SimConfig
from tally.sim.day import StatementDay, simulate_statements
from tally.sim.statements import LedgerItem, Line, StatementAnomalies, expected_classes

TZ = ZoneInfo("Asia/Shanghai")
START = datetime(2026, 3, 1, 23, 55, tzinfo=TZ)
NONE = StatementAnomalies(missing=0, extra=0, amount=0, fee=0, status=0, carried=0)


def simulate_day(config: SimConfig, anomalies: StatementAnomalies) -> StatementDay:
    return simulate_statements(config, anomalies=anomalies, clock=lambda: 0)


def cfg(**kw: object) -> SimConfig:
    base: dict[str, object] = {
        "events": 3000,
        "seed": 9,
        "start": START,
        "orders_per_second": 2.0,
        "rates": {"late_callback": 0.5},
    }
    return SimConfig(**(base | kw))  # type: ignore[arg-type]


def test_a_clean_day_matches_everything() -> None:
    clean = cfg(rates=dict.fromkeys(ANOMALIES, 0), malformed_rate=0, duplicate_delivery_rate=0)
    day = simulate_day(clean, anomalies=NONE)
    assert day.injected == {}
    assert set(day.expected.values()) == {"matched"}
    # every ledger item has its line, on its own day
    assert len(day.expected) == len(day.ledger) == sum(len(v) for v in day.statements.values())
    assert day.statements == day.truthful


def test_real_time_anomalies_get_their_end_of_day_class() -> None:
    day = simulate_day(cfg(), anomalies=NONE)
    by_txn = {k[2]: c for k, c in day.expected.items()}
    kinds: dict[str, set[str]] = {}
    for b in day.pipeline.breaks.values():
        kinds.setdefault(b.txn_id, set()).add(b.kind)
    # an orphan's success is long; a late callback (final answer just after the
    # cutoff) is carried on both days; ours success / channel never answered: short
    seen = set()
    for txn, ks in kinds.items():
        cls = {c for (_, _, k), c in day.expected.items() if k == txn}
        if "orphan_callback" in ks and cls:
            assert cls == {"long"}
            seen.add("orphan_callback")
        if "late_callback" in ks and cls:
            assert cls == {"carried"}
            assert sum(1 for (_, _, k) in day.expected if k == txn) == 2
            seen.add("late_callback")
        if "pending_timeout" in ks and txn in by_txn:
            assert by_txn[txn] == "short"
            seen.add("pending_timeout")
    assert {"orphan_callback", "late_callback"} <= seen


def test_injections_are_seeded_and_classed_as_intended() -> None:
    a = simulate_day(cfg(), anomalies=StatementAnomalies(seed=4))
    b = simulate_day(cfg(), anomalies=StatementAnomalies(seed=4))
    c = simulate_day(cfg(), anomalies=StatementAnomalies(seed=5))
    assert a.statements == b.statements and a.expected == b.expected
    assert a.injected != c.injected
    intended = {
        "missing_line": "short",
        "extra_line": "long",
        "changed_amount": "amount_mismatch",
        "changed_fee": "fee_mismatch",
        "wrong_kind": "status_mismatch",
        "moved_across_cutoff": "carried",
    }
    assert set(a.counts) == set(intended)
    for k, cause in a.injected.items():
        assert a.expected[k] == intended[cause], (k, cause)
    # a moved line is within the carry window on its new day
    for (ch, d, key), cause in a.injected.items():
        if cause != "moved_across_cutoff":
            continue
        pol = a.policies[ch]
        day = date.fromisoformat(d)
        cuts = (pol.cutoff_ms(day - timedelta(days=1)), pol.cutoff_ms(day))
        for ln in a.statements[(ch, day)]:
            if ln.key == key:
                assert min(abs(ln.occurred_at_ms - x) for x in cuts) <= 180_000
    with pytest.raises(ValueError, match="fraction"):
        StatementAnomalies(missing=1.5)


def test_formats_without_fees_see_no_fee_mismatch() -> None:
    day = simulate_day(cfg(), anomalies=StatementAnomalies(seed=1))
    plain = day.expected_for(fee_stated=False)
    assert "fee_mismatch" in day.expected.values() and "fee_mismatch" not in plain.values()
    changed = {k for k, c in day.injected.items() if c == "changed_fee"}
    assert {plain[k] for k in changed} == {"matched"}


def _policies() -> Policies:
    return Policies({"wx": ChannelPolicy(carry_window_seconds=60)})


def _item(txn: str, d: date, at_ms: int, amount: int = 1000) -> LedgerItem:
    return LedgerItem("wx", d, txn, f"C{txn}", "m1", "payment", "CNY", amount, 6, at_ms)


def _line(txn: str, d: date, at_ms: int, amount: int = 1000, **kw: object) -> Line:
    base: dict[str, object] = {
        "channel_id": "wx",
        "business_date": d,
        "txn_id": txn,
        "channel_txn_id": f"C{txn}",
        "kind": "payment",
        "status": "success",
        "currency": "CNY",
        "amount": amount,
        "fee": 6,
        "occurred_at_ms": at_ms,
    }
    return Line(**(base | kw))  # type: ignore[arg-type]


def test_the_rules_on_hand_made_items() -> None:
    pol = _policies()["wx"]
    d1, d2 = date(2026, 3, 1), date(2026, 3, 2)
    cut = pol.cutoff_ms(d1)
    mid = cut - 6 * 3600_000
    ledger = [
        _item("a", d1, mid),  # matched
        _item("b", d1, mid),  # amount
        _item("c", d1, mid),  # fee
        _item("d", d1, mid),  # kind
        _item("e", d1, mid),  # missing -> short
        _item("f", d1, cut - 30_000),  # its line on d2 -> carried (both days)
        _item("g", d1, cut - 30_000),  # near, nowhere -> short
        _item("h", d2, cut + 10_000),  # its line on d1 -> carried (both days)
        _item("i", d1, mid),  # matched by channel txn id (the line quotes no txn_id)
    ]
    s1 = [
        _line("a", d1, mid),
        _line("b", d1, mid, amount=999),
        _line("c", d1, mid, fee=7),
        _line("d", d1, mid, kind="refund"),
        _line("h", d1, cut - 5_000),
        _line("", d1, mid, channel_txn_id="Ci"),
        _line("x", d1, mid),  # long
        _line("", d1, mid, channel_txn_id="Cy"),  # long, keyed by channel txn id
    ]
    s2 = [_line("f", d2, cut + 20_000)]
    got = expected_classes(ledger, {("wx", d1): s1, ("wx", d2): s2}, _policies())
    want = {
        ("wx", "2026-03-01", "a"): "matched",
        ("wx", "2026-03-01", "b"): "amount_mismatch",
        ("wx", "2026-03-01", "c"): "fee_mismatch",
        ("wx", "2026-03-01", "d"): "status_mismatch",
        ("wx", "2026-03-01", "e"): "short",
        ("wx", "2026-03-01", "f"): "carried",
        ("wx", "2026-03-01", "g"): "short",
        ("wx", "2026-03-01", "h"): "carried",
        ("wx", "2026-03-01", "i"): "matched",
        ("wx", "2026-03-01", "x"): "long",
        ("wx", "2026-03-01", "Cy"): "long",
        ("wx", "2026-03-02", "f"): "carried",
        ("wx", "2026-03-02", "h"): "carried",
    }
    assert got == want
    # the neighbouring statement not loaded: a near item is carried until it is
    only = expected_classes(ledger, {("wx", d1): s1}, _policies())
    assert only[("wx", "2026-03-01", "g")] == "carried"
    assert only[("wx", "2026-03-01", "e")] == "short"
