"""The simulator's funds side end to end: a simulated Friday and Saturday (settlements
roll over the weekend to Monday), the bank statements (MT940 and camt.053) and payout
files it writes, loaded and reconciled through the CLI on chDB and
clickhouse-server 18.16: every injected anomaly (a short credit, a missing credit, a
weekend roll-over, an unexpected credit, a short payout) gets its class and nothing
else does; the bank's payout debits give the same merchant classes as the file."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from recon.funds.simfunds import FundsSim, simulate_funds
from recon.report import build, render
from recon.simday import SimDay, simulate_day
from tally.cli import main
from tally.sim.traffic import SimConfig
from tests.clickhouse import connect_to, env_of
from tests.recon.test_report import parse, rows_of

pytest_plugins = ("tests.clickhouse",)

TZ = ZoneInfo("Asia/Shanghai")


@pytest.fixture(scope="module")
def sim() -> SimDay:
    cfg = SimConfig(
        events=1500,
        seed=31,
        start=datetime(2026, 11, 27, 23, 57, tzinfo=TZ),  # a Friday, into Saturday
        orders_per_second=2.0,
        rates={"currency_mismatch": 0},
        currencies={"CNY": 1},
    )
    return simulate_day(cfg)


@pytest.fixture(scope="module")
def funds(sim: SimDay) -> FundsSim:
    return simulate_funds(sim, seed=5)


def test_every_anomaly_is_injected_with_its_class(funds: FundsSim) -> None:
    assert funds.skipped == {}
    got = {c: funds.classes[k] for k, c in funds.causes.items()}
    assert got == {
        "short_credit": "settlement_short",
        "missing_credit": "settlement_missing",
        "weekend_rollover": "settled",
        "unexpected_credit": "unexpected_credit",
        "short_payout": "payout_short",
    }
    rolled = next(e for e in funds.expected if funds.causes.get(e.key) == "weekend_rollover")
    assert rolled.due_date.weekday() == 0 and len(rolled.business_dates) == 2  # Fri + Sat
    # everything else is in order
    rest = {c for k, c in funds.classes.items() if k not in funds.causes}
    assert rest == {"settled", "payout_matched"}


def _cli(env: dict[str, str], *args: str) -> Any:
    r = CliRunner().invoke(main, list(args), env=env)
    assert r.exit_code == 0, r.output
    return r


@pytest.mark.clickhouse
def test_simulated_funds_end_to_end(
    storage: dict[str, Any],
    sim: SimDay,
    funds: FundsSim,
    tmp_path: Path,
) -> None:
    db = connect_to(storage)
    try:
        sim.store(db)
    finally:
        db.close()
    env = env_of(storage)
    _load_files(env, sim, funds, tmp_path)
    want = funds.classes
    run = json.loads(
        _cli(
            env,
            "recon",
            "settlements",
            "--date",
            funds.run_as_of.isoformat(),
            "--window",
            str(funds.window_days),
            "--json",
        ).output
    )
    got = {r["item_key"]: r["class"] for r in run["results"]}
    assert got == {k: c for k, c in want.items() if not k.startswith("po:")}
    assert _merchant_classes(env, funds) == {k: c for k, c in want.items() if k.startswith("po:")}
    _check_the_report(storage, funds)


def _load_files(env: dict[str, str], sim: SimDay, funds: FundsSim, tmp_path: Path) -> None:
    """The day's statements (csv), the bank days alternately in MT940 and camt.053, and
    the payout files, loaded through the CLI."""
    for ch, _, name, data in sim.files("csv"):
        (tmp_path / name).write_bytes(data)
        _cli(env, "statements", "load", str(tmp_path / name), "--channel", ch, "--format", "csv")
    doc = funds.write_files(tmp_path / "funds")
    assert json.loads((tmp_path / "funds" / "expected-funds.json").read_text()) == doc
    for i, (sta, xml) in enumerate(
        zip(doc["files"]["mt940"], doc["files"]["camt053"], strict=True)
    ):
        f = tmp_path / "funds" / (xml if i % 2 else sta)
        r = _cli(env, "statements", "load", str(f), "--kind", "bank", "--account", funds.account)
        assert "as delivery 1" in r.output
    for name in doc["files"]["payouts"]:
        d = name.split("payouts-", 1)[1].removesuffix(".csv")
        path = str(tmp_path / "funds" / name)
        _cli(env, "statements", "load", path, "--kind", "payouts", "--date", d)


def _merchant_classes(env: dict[str, str], funds: FundsSim) -> dict[str, str]:
    """`tally recon merchants` of every payout date; the bank's payout debits give the
    same classes as the payout file."""
    merchants: dict[str, str] = {}
    for d in sorted(funds.payouts):
        out = json.loads(_cli(env, "recon", "merchants", "--date", d.isoformat(), "--json").output)
        merchants.update({r["item_key"]: r["class"] for r in out["results"]})
        bank = _cli(
            env,
            "recon",
            "merchants",
            "--date",
            d.isoformat(),
            "--source",
            "bank",
            "--json",
            "--dry-run",
        ).output
        assert {r["item_key"]: r["class"] for r in json.loads(bank)["results"]} == {
            r["item_key"]: r["class"] for r in out["results"]
        }
    return merchants


def _check_the_report(storage: dict[str, Any], funds: FundsSim) -> None:
    """The morning report of the first business date shows both sides."""
    want = funds.classes
    first = min(funds.payouts)
    db = connect_to(storage)
    try:
        page = parse(render(build(db, first, now_ms=0)))
    finally:
        db.close()
    by_channel = {r["channel"]: r for r in rows_of(page, "funds-by-channel")}
    short = next(e for e in funds.expected if funds.causes.get(e.key) == "short_credit")
    assert by_channel[short.channel_id]["difference"] == "-12.34"
    assert by_channel["(unclaimed)"]["arrived"] == "777.00"
    breaks = {r["item"]: r["class"] for r in rows_of(page, "funds-breaks")}
    assert breaks == {k: c for k, c in want.items() if c not in ("settled", "payout_matched")
                      and not k.startswith("po:")}  # fmt: skip
    paid_short = [r for r in rows_of(page, "payout-items") if r["class"] == "payout_short"]
    assert [f"po:{r['merchant']}:CNY:{first}" for r in paid_short] == [
        k for k, c in funds.causes.items() if c == "short_payout"
    ]
