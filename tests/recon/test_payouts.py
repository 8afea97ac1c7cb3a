"""Merchant payout reconciliation (S14): the payout batch file parsed and refused whole
with line and column named; payout references in bank debits; the pure comparison
with `tally settle`'s payable, every class and the hold-back explained; and through
the CLI on chDB and clickhouse-server 18.16, a simulated day: every injected payout
anomaly gets its class and nothing else does, the same file again changes nothing, a
refused file stores nothing, a re-delivered file changes exactly the affected result,
the bank statement's payout debits give the same classes, breaks go to suspense."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from recon.funds.bank import statement_of, write_mt940
from recon.funds.payouts import (
    Payout,
    compare,
    parse_payouts,
    payout_of_debit,
    payout_ref,
    write_payouts,
)
from recon.run import run
from recon.settle import MerchantSettlement, SettleItem, settle, settlement
from recon.simday import SimDay, StatementAnomalies, simulate_day
from recon.statements.load import load_file
from recon.statements.model import StatementError
from tally.cli import main
from tally.config import Settings
from tally.core.money import to_decimal
from tally.sim.traffic import SimConfig
from tests.clickhouse import connect_to, env_of

pytest_plugins = ("tests.clickhouse",)

D = Decimal
BD = date(2026, 11, 24)
TZ = ZoneInfo("Asia/Shanghai")
GOOD = (
    "merchant_id,amount,currency,value_date,payout_ref\n"
    "M001,350.00,CNY,2026-11-25,PO-20261124-M001\n"
    "M002,12,JPY,2026-11-25,PO-20261124-M002\n"
)


# ----------------------------------------------------------------- the file


def test_payout_file_parses_to_known_values() -> None:
    pf = parse_payouts(("\ufeff" + GOOD).encode(), BD, file_name="p.csv")
    assert [(p.line_no, p.merchant_id, p.currency, p.amount, p.value_date) for p in pf.payouts] == [
        (2, "M001", "CNY", 35000, date(2026, 11, 25)),
        (3, "M002", "JPY", 12, date(2026, 11, 25)),
    ]
    # columns in another order, a blank line at the end
    other = "payout_ref,merchant_id,currency,amount,value_date\nR1,M9,CNY,1.5,2026-11-24\n\n"
    (p,) = parse_payouts(other.encode(), BD).payouts
    assert (p.ref, p.merchant_id, p.amount) == ("R1", "M9", 150)
    # round trip through the writer
    assert parse_payouts(write_payouts(pf.payouts), BD).payouts == pf.payouts


@pytest.mark.parametrize(
    ("text", "line", "field", "why"),
    [
        ("merchant_id,amount,currency,value_date\n", 1, "payout_ref", "no column"),
        (GOOD + "M003,12.345,CNY,2026-11-25,R3\n", 4, "amount", "decimal places"),
        (GOOD + "M003,-5.00,CNY,2026-11-25,R3\n", 4, "amount", "negative"),
        (GOOD + "M003,0.00,CNY,2026-11-25,R3\n", 4, "amount", "zero"),
        (GOOD + "M003,5.00,XXY,2026-11-25,R3\n", 4, "currency", "currency"),
        (GOOD + "M003,5.00,CNY,2026-11-23,R3\n", 4, "value_date", "before the business"),
        (GOOD + "M003,5.00,CNY,25/11/2026,R3\n", 4, "value_date", "not a date"),
        (GOOD + ",5.00,CNY,2026-11-25,R3\n", 4, "merchant_id", "empty"),
        (GOOD + "M003,5.00,CNY,2026-11-25,PO-20261124-M001\n", 4, "payout_ref", "line 2"),
        (GOOD + "M003,5.00,CNY\n", 4, None, "3 fields"),
    ],
)
def test_payout_file_refused_whole_with_line_and_field(
    text: str, line: int, field: str | None, why: str
) -> None:
    with pytest.raises(StatementError) as e:
        parse_payouts(text.encode(), BD, file_name="p.csv")
    assert (e.value.line_no, e.value.field) == (line, field)
    assert why in str(e.value)


def test_payout_reference_in_bank_debits() -> None:
    assert payout_of_debit("PO20261124M001 PAYOUT TO MERCHANT M001", BD) == "M001"
    assert payout_of_debit("PAYOUT TO MERCHANT M002 PO-20261124-M002", BD) == "M002"
    assert payout_of_debit("PAYOUT PO-20261124-M00017-2", BD) == "M00017"
    assert payout_of_debit("PAYOUT PO-20261123-M002", BD) is None  # another day
    assert payout_of_debit("ACCOUNT MAINTENANCE FEE", BD) is None
    assert payout_ref(BD, "M5") == "PO-20261124-M5"
    assert payout_of_debit(payout_ref(BD, "M5", 2), BD) == "M5"


# ------------------------------------------------------------- comparison


def _pay(m: str, amount: int, ref: str, cur: str = "CNY") -> Payout:
    return Payout(m, cur, amount, BD + timedelta(days=1), ref)


def test_compare_every_class_and_the_hold_back() -> None:
    rows = settlement(
        [
            SettleItem("a1", "A", "wx", "CNY", "payment", 10000, fee=60),
            SettleItem("b1", "B", "wx", "CNY", "payment", 20000, fee=120),
            SettleItem("b2", "B", "wx", "CNY", "payment", 5000, fee=30),  # held
            SettleItem("c1", "C", "wx", "CNY", "payment", 3000, fee=18),
            SettleItem("d1", "D", "wx", "CNY", "payment", 4000, fee=24),
            SettleItem("e1", "E", "wx", "CNY", "payment", 1000, fee=6),  # held, all of it
            SettleItem("f1", "F", "wx", "CNY", "payment", 500, fee=3),
            SettleItem("f2", "F", "wx", "CNY", "refund", 800),  # payable < 0
            SettleItem("g1", "G", "wx", "CNY", "payment", 2000, fee=12),  # held
        ],
        held={"b2", "e1", "g1"},
    )
    payouts = [
        _pay("A", 9940, "PA"),  # matched
        _pay("B", 19880, "PB"),  # matched: net less the hold-back
        _pay("C", 2000, "PC1"),  # short (two payouts, 1.00 short)
        _pay("C", 882, "PC2"),
        # D: missing
        _pay("G", 1988, "PG"),  # over: the net paid, the hold-back ignored
        _pay("Z", 100, "PZ"),  # unexpected: no settlement
        _pay("A", 50, "PAU", "USD"),  # unexpected: another currency
    ]
    got = {(r.merchant_id, r.currency): r for r in compare(rows, payouts, BD)}
    assert {k: r.cls for k, r in got.items()} == {
        ("A", "CNY"): "payout_matched",
        ("A", "USD"): "unexpected_payout",
        ("B", "CNY"): "payout_matched",
        ("C", "CNY"): "payout_short",
        ("D", "CNY"): "payout_missing",
        ("E", "CNY"): "payout_matched",
        ("F", "CNY"): "payout_matched",
        ("G", "CNY"): "payout_over",
        ("Z", "CNY"): "unexpected_payout",
    }
    b = got[("B", "CNY")]
    assert (b.net, b.held_amount, b.expected, b.paid) == (24850, 4970, 19880, 19880)
    assert b.detail == "paid 198.80; net 248.50, 49.70 held back for 1 payment under suspense (b2)"
    c = got[("C", "CNY")]
    assert (c.difference, c.at_risk, c.refs) == (-100, 100, ("PC1", "PC2"))
    assert c.detail == "1.00 short; 2 payouts"
    assert got[("D", "CNY")].at_risk == 3976 and got[("D", "CNY")].paid is None
    assert got[("E", "CNY")].detail.startswith("nothing payable (payable 0.00); net 9.94")
    assert got[("F", "CNY")].expected == 0  # the merchant owes us: nothing to pay
    g = got[("G", "CNY")]
    assert (g.expected, g.paid, g.at_risk) == (0, 1988, 1988)
    assert "the net paid, the hold-back ignored" in g.detail and "(g1)" in g.detail
    z = got[("Z", "CNY")]
    assert (z.expected, z.paid, z.at_risk, z.item_key) == (None, 100, 100, "po:Z:CNY:2026-11-24")
    assert compare([], [], BD) == []
    assert compare([MerchantSettlement("Q", "CNY")], [], BD)[0].cls == "payout_matched"


# ---------------------------------------------------- CLI, both backends


@pytest.fixture(scope="module")
def sim() -> SimDay:
    cfg = SimConfig(
        events=1500,
        seed=29,
        start=datetime(2026, 11, 24, 9, 0, tzinfo=TZ),
        orders_per_second=2.0,
    )
    return simulate_day(cfg, anomalies=StatementAnomalies(seed=3))


def _cli(env: dict[str, str], *args: str, ok: bool = True) -> Any:
    r = CliRunner().invoke(main, list(args), env=env)
    if ok:
        assert r.exit_code == 0, r.output
    return r


def _run(env: dict[str, str], d: date, *extra: str) -> dict[str, Any]:
    out = _cli(env, "recon", "merchants", "--date", d.isoformat(), "--json", *extra).output
    doc: dict[str, Any] = json.loads(out)
    return doc


@pytest.mark.clickhouse
def test_cli_payouts_simulated_day(
    storage: dict[str, Any],
    sim: SimDay,
    tmp_path: Path,
) -> None:
    d, owed = _reconciled_day(storage, sim)
    held = [m for m in owed if m.held_amount]
    plain = [m for m in owed if not m.held_amount]
    assert held and len(plain) >= 4
    value = d + timedelta(days=1)
    injected = {
        plain[0].merchant_id: "payout_short",
        plain[1].merchant_id: "payout_missing",
        held[0].merchant_id: "payout_over",  # the net paid, the hold-back ignored
        "M99999": "unexpected_payout",
    }
    payouts = _payouts(d, value, owed, injected)
    env = env_of(storage)
    f = tmp_path / f"payouts-{d}.csv"
    f.write_bytes(write_payouts(payouts))
    r = _cli(env, "statements", "load", str(f), "--kind", "payouts", "--date", d.isoformat())
    assert "as delivery 1" in r.output and f"payouts  {len(payouts)}" in r.output

    run1 = _run(env, d)
    got = {r["merchant_id"]: r["class"] for r in run1["results"]}
    assert {m: c for m, c in got.items() if c != "payout_matched"} == injected
    assert set(got) == {m.merchant_id for m in settle_merchants(storage, d)} | {"M99999"}
    by = {r["merchant_id"]: r for r in run1["results"]}
    assert by[plain[0].merchant_id]["difference"] == "-1.00"
    over = by[held[0].merchant_id]
    assert D(over["paid"]) - D(over["expected"]) == D(over["held_amount"]) > 0
    assert "the hold-back ignored" in over["detail"] and "held back for" in over["detail"]
    assert run1["suspense"]["opened"] == 4
    # the table shows the breaks and the merchants paid less a hold-back
    table = _cli(env, "recon", "merchants", "--date", d.isoformat(), "--dry-run").output
    assert "[dry run: nothing stored]" in table and "payout_missing" in table

    # the same file again: nothing changes; the run again: nothing changes
    r = _cli(env, "statements", "load", str(f), "--kind", "payouts", "--date", d.isoformat())
    assert "already loaded as delivery 1" in r.output
    run2 = _run(env, d)
    assert run2["previous_run"] == run1["run_id"] and run2["changes"] == []
    assert run2["suspense"]["opened"] == 0

    # a refused file: the line and column named, nothing stored
    bad = tmp_path / "bad.csv"
    bad.write_bytes(f.read_bytes() + b"M00001,1.001,CNY,2026-11-25,RX\n")
    r = _cli(
        env, "statements", "load", str(bad), "--kind", "payouts", "--date", d.isoformat(), ok=False
    )
    assert r.exit_code != 0
    assert f"rejected, nothing loaded: bad.csv line {len(payouts) + 2}, field amount" in r.output

    fixed, run3 = _redelivered(env, tmp_path, d, payouts, plain[0].merchant_id)
    _from_bank(env, tmp_path, d, value, fixed, run3)
    _suspense_and_versions(storage, injected)


def _reconciled_day(storage: dict[str, Any], sim: SimDay) -> tuple[date, list[Any]]:
    """The simulated day stored, its statements loaded and reconciled; its first date
    and the merchants owed something that day."""
    db = connect_to(storage)
    try:
        sim.store(db)
        settings = Settings(_env_file=None, **storage)  # type: ignore[call-arg]
        for ch, d_, name, data in sim.files("csv"):
            load_file(db, settings, data, channel=ch, file_name=name, fmt="csv", day=d_)
        for ch, d_ in sim.days:
            run(db, ch, d_, sim.policies[ch], now_ms=0)
        d = sorted({d_ for _, d_ in sim.days})[0]
        owed = [m for m in settle(db, d).merchants if m.payable > 0]
    finally:
        db.close()
    return d, owed


def _payouts(d: date, value: date, owed: list[Any], injected: dict[str, str]) -> list[Payout]:
    """What we paid each merchant owed, with the injected anomalies."""
    payouts = []
    for m in owed:
        amount = {"payout_short": m.payable - 100, "payout_over": m.net}.get(
            injected.get(m.merchant_id, ""), m.payable
        )
        if injected.get(m.merchant_id) != "payout_missing":
            # a merchant paid in several currencies: one payout reference each
            n = sum(p.merchant_id == m.merchant_id for p in payouts)
            ref = payout_ref(d, m.merchant_id, n)
            payouts.append(Payout(m.merchant_id, m.currency, amount, value, ref))
    payouts.append(Payout("M99999", "CNY", 4200, value, payout_ref(d, "M99999")))
    return payouts


def _redelivered(
    env: dict[str, str], tmp_path: Path, d: date, payouts: list[Payout], short: str
) -> tuple[list[Payout], dict[str, Any]]:
    """A re-delivered file with the short payout corrected supersedes; the payouts
    and the run after it."""
    # a re-delivered file with the short payout corrected supersedes
    fixed = [
        Payout(p.merchant_id, p.currency, p.amount + 100, p.value_date, p.ref)
        if p.merchant_id == short
        else p
        for p in payouts
    ]
    f2 = tmp_path / f"payouts-{d}-2.csv"
    f2.write_bytes(write_payouts(fixed))
    r = _cli(env, "statements", "load", str(f2), "--kind", "payouts", "--date", d.isoformat())
    assert "as delivery 2, superseding 1" in r.output
    run3 = _run(env, d)
    key = f"po:{short}:CNY:{d}"
    assert [(c["item_key"], c["old"], c["new"]) for c in run3["changes"]] == [
        (key, "payout_short", "payout_matched")
    ]
    assert run3["suspense"]["cleared"] == 1

    return fixed, run3


def _from_bank(
    env: dict[str, str],
    tmp_path: Path,
    d: date,
    value: date,
    fixed: list[Payout],
    run3: dict[str, Any],
) -> None:
    # the bank statements' payout debits (an account per currency): the same classes
    accounts = {}
    for cur in sorted({p.currency for p in fixed}):
        debits = [
            ("D", to_decimal(p.amount, cur), p.value_date, f"B{i}", f"PAYOUT {p.ref}")
            for i, p in enumerate(fixed)
            if p.currency == cur
        ] + [("D", to_decimal(1500, "CNY"), value, "FEE", "ACCOUNT MAINTENANCE FEE")]
        account = f"62220210011122{len(accounts):05d}"
        st = statement_of(account, value, debits, opening=D("1000000.00"), currency=cur)
        bank = tmp_path / f"bank-{cur}.sta"
        bank.write_bytes(write_mt940(st))
        _cli(env, "statements", "load", str(bank), "--kind", "bank", "--account", account)
        accounts[f"{account}/{value}"] = 1
    from_bank = _run(env, d, "--source", "bank", "--dry-run")
    assert {r["item_key"]: r["class"] for r in from_bank["results"]} == {
        r["item_key"]: r["class"] for r in run3["results"]
    }
    assert from_bank["deliveries"] == accounts


def _suspense_and_versions(storage: dict[str, Any], injected: dict[str, str]) -> None:
    """One suspense entry per injected break, the short one cleared by the re-run;
    two payout file versions."""
    db = connect_to(storage)
    try:
        rows = db.query(
            "SELECT merchant_id, kinds FROM {db}.suspense_entries FINAL "
            "WHERE channel_id = 'payouts' ORDER BY merchant_id"
        )
        acts = db.query(
            "SELECT action FROM {db}.suspense_actions FINAL WHERE entry_id IN "
            "(SELECT entry_id FROM {db}.suspense_entries FINAL WHERE channel_id = 'payouts')"
        )
        versions = db.query("SELECT delivery FROM {db}.payout_versions FINAL ORDER BY delivery")
    finally:
        db.close()
    assert {r["merchant_id"]: list(r["kinds"]) for r in rows} == {
        m: [c] for m, c in injected.items()
    }
    assert [a["action"] for a in acts] == ["cleared_by_rerun"]
    assert [int(v["delivery"]) for v in versions] == [1, 2]


def settle_merchants(values: dict[str, Any], d: date) -> list[MerchantSettlement]:
    db = connect_to(values)
    try:
        return settle(db, d).merchants
    finally:
        db.close()
