"""Funds (settlement) reconciliation: bank statements as banks send them (MT940,
camt.053.001.08) parsed to known values and refused whole on a failed balance check;
the settlement calendar and the pure matching of credits to expected settlements;
and through the CLI on chDB and clickhouse-server 18.16, a simulated week with a
weekend: every injected anomaly gets its class and nothing else does, a re-delivered
bank statement changes exactly the affected result, breaks go to suspense."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from recon.funds.bank import parse, statement_of, write_camt053, write_mt940
from recon.funds.settlement import (
    Credit,
    DayTotals,
    due_date,
    expected_settlements,
    grace_end,
    reconcile,
)
from recon.statements import write as write_statement
from recon.statements.model import Statement, StatementError, StatementLine
from tally.cli import main
from tally.core.policy import ChannelPolicy
from tests.clickhouse import connect_to, env_of

pytest_plugins = ("tests.clickhouse",)

DATA = Path(__file__).parents[1] / "data" / "bank"
MT940 = DATA / "bank-mt940-2026-11-24.sta"
CAMT = DATA / "bank-camt053-2026-11-25.xml"
ACCOUNT = "6222021001112223334"
TZ = ZoneInfo("Asia/Shanghai")
D = Decimal


# ------------------------------------------------------------- bank formats


def test_mt940_sample_parses_to_known_values() -> None:
    st = parse(MT940.read_bytes(), file_name=MT940.name)
    assert (st.format, st.account, st.statement_date) == ("mt940", ACCOUNT, date(2026, 11, 24))
    assert (st.opening, st.closing, st.currency) == (D("1000000.00"), D("1243471.89"), "CNY")
    got = [(e.line_no, e.direction, e.amount, e.value_date, e.bank_ref) for e in st.entries]
    assert got == [
        (6, "C", D("58210.35"), date(2026, 11, 24), "BR26112400012345"),
        (8, "C", D("120400.00"), date(2026, 11, 24), "BR26112400012346"),
        (10, "D", D("35000.00"), date(2026, 11, 24), "BR26112400012347"),
        (12, "D", D("15.00"), date(2026, 11, 24), "BR26112400012348"),
        (14, "C", D("99876.54"), date(2026, 11, 25), "BR26112400012349"),
    ]
    assert st.entries[0].remittance == "TENPAY SETTLEMENT WECHATPAY MCH 1900000109 BATCH 20261123"
    assert st.entries[2].customer_ref == "PO20261124M001"
    assert st.entries[0].customer_ref == ""  # NONREF
    # a :86: wrapped at 65 characters is joined without a space
    assert st.entries[4].remittance.endswith("DATE 20261123 BATCH 0001")
    assert st.entries[4].booking_date == date(2026, 11, 24)
    assert [e.amount for e in st.credits()] == [D("58210.35"), D("120400.00"), D("99876.54")]


def test_camt053_sample_parses_to_known_values() -> None:
    st = parse(CAMT.read_bytes(), file_name=CAMT.name)
    assert (st.format, st.account, st.statement_date) == ("camt053", ACCOUNT, date(2026, 11, 25))
    assert (st.opening, st.closing) == (D("1243471.89"), D("1306843.10"))
    assert st.meta["version"] == "001.08"
    got = [
        (e.line_no, e.direction, e.amount, e.bank_ref, e.customer_ref, e.booked) for e in st.entries
    ]
    assert got == [
        (71, "C", D("61200.00"), "BR26112500020001", "", True),
        (112, "C", D("23300.00"), "BR26112500020002", "", True),
        (138, "D", D("21128.79"), "BR26112500020003", "PO-20261125-M002", True),
        (163, "C", D("5000.00"), "BR26112500020004", "", False),
    ]
    # several Ustrd are joined; the channel's reference is only in the remittance text
    assert st.entries[1].remittance == "ALIPAY SETTLEMENT 2088101122334455 20261124"
    assert st.entries[3].remittance == "INCOMING TRANSFER PENDING COMPLIANCE CHECK"
    assert [e.amount for e in st.credits()] == [D("61200.00"), D("23300.00")]  # booked only


def test_balance_check_refuses_the_file_with_line_and_field() -> None:
    bad = MT940.read_bytes().replace(b":62F:C261124CNY1243471,89", b":62F:C261124CNY1243471,98")
    with pytest.raises(StatementError) as e:
        parse(bad, file_name="bad.sta")
    assert (e.value.line_no, e.value.field) == (17, ":62F: (closing balance)")
    assert "off by 0.09" in str(e.value)
    bad = CAMT.read_bytes().replace(b">1306843.10<", b">1306843.00<")
    with pytest.raises(StatementError) as e:
        parse(bad, file_name="bad.xml")
    assert (e.value.line_no, e.value.field) == (41, "Bal CLBD Amt (closing balance)")
    bad = CAMT.read_bytes().replace(b"<Sum>84500.00</Sum>", b"<Sum>84500.01</Sum>")
    with pytest.raises(StatementError) as e:
        parse(bad, file_name="bad.xml")
    assert e.value.field == "TxsSummry/TtlCdtNtries/Sum"


def test_camt053_dtd_refused_whatever_the_encoding() -> None:
    text, dtd = CAMT.read_text(), '<!DOCTYPE d [<!ENTITY a "x">]><Document'
    utf16 = text.replace('"UTF-8"', '"UTF-16"', 1).replace("<Document", dtd, 1)
    euc = text.replace('"UTF-8"', '"EUC-JP"', 1).encode()
    for data, want in ((utf16.encode("utf-16"), (2, "DOCTYPE")), (euc, (1, "encoding"))):
        with pytest.raises(StatementError) as e:
            parse(data, "camt053")
        assert (e.value.line_no, e.value.field) == want


def test_mt940_errors_name_line_and_field() -> None:
    lines = MT940.read_bytes().split(b"\r\n")
    cut = b"\r\n".join(lines[:15])
    with pytest.raises(StatementError, match="no closing balance") as e:
        parse(cut, file_name="cut.sta")
    assert e.value.field == ":62F: (closing balance)"
    bad = MT940.read_bytes().replace(b":61:2611241124D15,00", b":61:2613241124D15,00")
    with pytest.raises(StatementError) as e:
        parse(bad, file_name="bad.sta")
    assert (e.value.line_no, e.value.field) == (12, ":61: value date")


def test_writers_round_trip() -> None:
    st = statement_of(
        ACCOUNT,
        date(2026, 11, 30),
        [
            ("C", D("100.50"), date(2026, 11, 30), "BR1", "TENPAY STL " + "X" * 80),
            ("D", D("20.00"), date(2026, 11, 30), "BR2", "PAYOUT M1 <&>"),
        ],
        opening=D("5"),
    )
    for write in (write_mt940, write_camt053):
        back = parse(write(st))
        assert back.closing == D("85.50")
        assert [(e.direction, e.amount, e.bank_ref, e.remittance) for e in back.entries] == [
            (e.direction, e.amount, e.bank_ref, e.remittance) for e in st.entries
        ]


# ------------------------------------------------------------------ calendar

T1 = ChannelPolicy(settlement_lag_days=1, settlement_grace_days=2)
MON, TUE, WED, THU, FRI, SAT, SUN = (date(2026, 11, 23) + timedelta(days=i) for i in range(7))
NEXT_MON = date(2026, 11, 30)


def test_due_dates_roll_over_weekends_and_holidays() -> None:
    assert [due_date(d, T1) for d in (MON, THU, FRI, SAT, SUN)] == [
        TUE,
        FRI,
        NEXT_MON,
        NEXT_MON,
        NEXT_MON,
    ]
    assert grace_end(THU, T1) == NEXT_MON  # Friday, Monday
    hol = T1.model_copy(update={"settlement_holidays": (NEXT_MON,)})
    assert due_date(FRI, hol) == NEXT_MON + timedelta(days=1)
    weekends = T1.model_copy(update={"settlement_weekends": True})
    assert due_date(FRI, weekends) == SAT
    assert due_date(MON, ChannelPolicy(settlement_lag_days=0)) == MON
    assert due_date(SAT, ChannelPolicy(settlement_lag_days=0)) == NEXT_MON


# ------------------------------------------------------------------ matching


def _t(
    ch: str, d: date, gross: str, fees: str = "0", refunds: str = "0", src: str = "statement"
) -> DayTotals:
    return DayTotals(ch, d, "CNY", D(gross), D(refunds), D(fees), src)


def _c(ref: str, amount: str, value: date, text: str) -> Credit:
    return Credit("ACC", ref, value, "CNY", D(amount), text, value)


def test_expected_nets_fees_or_not_and_groups_by_due_date() -> None:
    pol = {
        "wx": ChannelPolicy(),
        "ali": ChannelPolicy(settlement_fees="invoiced"),
    }
    days = [
        _t("wx", FRI, "100", "1", "10"),
        _t("wx", SAT, "50", "0.5"),
        _t("wx", SUN, "0"),  # nothing moved: owes nothing
        _t("ali", MON, "80", "2"),
    ]
    got = expected_settlements(days, pol.__getitem__)
    assert [(e.channel_id, e.due_date, e.business_dates, e.amount) for e in got] == [
        ("ali", TUE, (MON,), D("80")),
        ("wx", NEXT_MON, (FRI, SAT), D("138.5")),
    ]


def test_reconcile_every_class() -> None:
    pol = {
        "wx": ChannelPolicy(settlement_reference=r"TENPAY|WECHAT"),
        "ali": ChannelPolicy(settlement_reference=r"ALIPAY"),
    }
    days = [
        _t("wx", MON, "100"),  # due Tue, paid Tue: settled
        _t("wx", TUE, "200"),  # due Wed, 190 paid: short
        _t("wx", WED, "300"),  # due Thu, nothing: missing after Mon
        _t("wx", THU, "400", src="ledger"),  # due Fri, paid Mon: late; no statement
        _t("wx", FRI, "10"),
        _t("wx", SAT, "20"),
        _t("wx", SUN, "30"),  # Fri-Sun due next Mon, one credit of 60: settled
        _t("ali", MON, "70"),  # due Tue, 75 paid: over
        _t("ali", FRI, "90"),  # due next Mon, paid in two credits: settled (1:N)
        _t("ali", SAT, "5"),  # due next Mon ... included in the 95
    ]
    credits = [
        _c("1", "100", TUE, "TENPAY STL 20261123"),
        _c("2", "190", WED, "TENPAY STL 20261124"),
        _c("3", "75", TUE, "ALIPAY SETTLEMENT"),
        _c("4", "400", NEXT_MON, "WECHAT PAY STL"),
        _c("5", "60", NEXT_MON, "TENPAY STL WEEKEND"),
        _c("6", "50", NEXT_MON, "ALIPAY BATCH 1/2"),
        _c("7", "45", NEXT_MON, "ALIPAY BATCH 2/2"),
        _c("8", "12.34", THU, "INTEREST"),
        _c("9", "1", THU, "ALIPAY TENPAY"),
    ]
    exp = expected_settlements(days, pol.__getitem__)
    as_of = NEXT_MON + timedelta(days=1)
    got = {r.item_key: r for r in reconcile(exp, credits, pol.__getitem__, pol, as_of)}
    classes = {k: r.cls for k, r in got.items()}
    assert classes == {
        f"stl:wx:CNY:{TUE}": "settled",
        f"stl:wx:CNY:{WED}": "settlement_short",
        f"stl:wx:CNY:{THU}": "settlement_missing",
        f"stl:wx:CNY:{FRI}": "settlement_late",
        f"stl:wx:CNY:{NEXT_MON}": "settled",
        f"stl:ali:CNY:{TUE}": "settlement_over",
        f"stl:ali:CNY:{NEXT_MON}": "settled",
        "credit:ACC:8": "unexpected_credit",
        "credit:ACC:9": "unexpected_credit",
    }
    assert got[f"stl:wx:CNY:{WED}"].difference == D("-10")
    assert got[f"stl:wx:CNY:{WED}"].at_risk == D("10")
    assert got[f"stl:wx:CNY:{THU}"].at_risk == D("300")
    assert got[f"stl:ali:CNY:{NEXT_MON}"].refs == ("ACC:6", "ACC:7")
    assert got[f"stl:wx:CNY:{NEXT_MON}"].business_dates == (FRI, SAT, SUN)
    assert "expected from our ledger" in got[f"stl:wx:CNY:{FRI}"].detail
    assert "several channels" in got["credit:ACC:9"].detail
    # the day before the grace period ends the Thursday settlement is only late
    earlier = reconcile(exp, credits, pol.__getitem__, pol, FRI)
    assert {r.item_key: r.cls for r in earlier}[f"stl:wx:CNY:{THU}"] == "settlement_late"
    # not yet due: no result
    assert f"stl:wx:CNY:{NEXT_MON}" not in {r.item_key for r in earlier}


def test_reference_date_group_ties_a_credit_to_its_business_date() -> None:
    pol = {
        "wx": ChannelPolicy(
            settlement_reference=r"TENPAY STL (?P<date>\d{8})", settlement_grace_days=5
        )
    }
    days = [_t("wx", MON, "100"), _t("wx", TUE, "100")]
    # Monday's money comes late on Thursday, Tuesday's on time Wednesday: the amounts
    # are the same, the stated dates decide
    credits = [
        _c("a", "100", WED, "TENPAY STL 20261124"),
        _c("b", "100", THU, "TENPAY STL 20261123"),
    ]
    exp = expected_settlements(days, pol.__getitem__)
    got = {r.item_key: (r.cls, r.refs) for r in reconcile(exp, credits, pol.__getitem__, pol, THU)}
    assert got == {
        f"stl:wx:CNY:{TUE}": ("settlement_late", ("ACC:b",)),
        f"stl:wx:CNY:{WED}": ("settled", ("ACC:a",)),
    }


# ------------------------------------------------------- end to end (the CLI)

CHANNELS = {
    "wechat": {"settlement_reference": "TENPAY|WECHAT"},
    "alipay": {"settlement_reference": "ALIPAY", "settlement_fees": "invoiced"},
}


def _noon_ms(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, 12, tzinfo=TZ).timestamp() * 1000)


def _channel_statement(ch: str, d: date, amount: Decimal, fee: Decimal) -> bytes:
    line = StatementLine(
        line_no=0,
        txn_id=f"{ch}-{d:%m%d}",
        channel_txn_id=f"C-{ch}-{d:%m%d}",
        original_txn_id="",
        kind="payment",
        status="success",
        currency="CNY",
        amount=amount,
        fee=fee,
        coupon_amount=None,
        merchant_ref="",
        occurred_at_ms=_noon_ms(d),
    )
    return write_statement(Statement(ch, d, "csv", [line]))


def _cli(env: dict[str, str], *args: str, ok: bool = True) -> Any:
    r = CliRunner().invoke(main, list(args), env=env)
    if ok:
        assert r.exit_code == 0, r.output
    return r


def _classes(env: dict[str, str], day: date) -> dict[str, Any]:
    out = json.loads(_cli(env, "recon", "settlements", "--date", day.isoformat(), "--json").output)
    return out


def test_cli_simulated_week(storage: dict[str, Any], tmp_path: Path) -> None:
    env = {**env_of(storage), "TALLY_CHANNELS": json.dumps(CHANNELS)}
    net = _load_week_of_statements(env, tmp_path)
    weekend_wx = net[("wechat", FRI)] + net[("wechat", SAT)] + net[("wechat", SUN)]
    credits = _bank_credits(net)
    files = _load_bank_statements(env, tmp_path, credits)
    as_of = NEXT_MON + timedelta(days=1)  # Tuesday: Wednesday's grace period is over
    injected = {
        f"stl:wechat:CNY:{WED}": "settlement_short",
        f"stl:wechat:CNY:{THU}": "settlement_missing",
        f"credit:{ACCOUNT}:X1": "unexpected_credit",
    }
    run1 = _classes(env, as_of)
    got = {r["item_key"]: r["class"] for r in run1["results"]}
    breaks = {k: c for k, c in got.items() if c != "settled"}
    assert breaks == injected  # precision and recall 1.0
    settled = {k for k, c in got.items() if c == "settled"}
    assert settled == {
        f"stl:wechat:CNY:{TUE}",
        f"stl:wechat:CNY:{FRI}",
        f"stl:wechat:CNY:{NEXT_MON}",
        f"stl:alipay:CNY:{TUE}",
        f"stl:alipay:CNY:{WED}",
        f"stl:alipay:CNY:{THU}",
        f"stl:alipay:CNY:{FRI}",
        f"stl:alipay:CNY:{NEXT_MON}",
    }
    by = {r["item_key"]: r for r in run1["results"]}
    weekend = by[f"stl:wechat:CNY:{NEXT_MON}"]
    assert weekend["business_dates"] == [FRI.isoformat(), SAT.isoformat(), SUN.isoformat()]
    assert D(weekend["credited"]) == weekend_wx
    assert by[f"stl:alipay:CNY:{NEXT_MON}"]["credit_refs"] == [f"{ACCOUNT}:A5", f"{ACCOUNT}:A6"]
    assert D(by[f"stl:wechat:CNY:{WED}"]["difference"]) == D("-4.00")
    assert run1["suspense"]["opened"] == 3
    # the same again: nothing changes
    run2 = _classes(env, as_of)
    assert run2["previous_run"] == run1["run_id"] and run2["changes"] == []
    assert run2["suspense"]["opened"] == 0
    _refused_bank_files(env, tmp_path, files)
    _redelivered_wednesday(env, tmp_path, credits, as_of)
    _suspense_and_versions(storage, net)


def _load_week_of_statements(env: dict[str, str], tmp_path: Path) -> dict[tuple[str, date], D]:
    """Channel statements of the week: wechat nets 1000 + 10 * i - 6, alipay (fees
    invoiced) 500 + i. The net each channel owes per day."""
    week = [MON + timedelta(days=i) for i in range(7)]
    net: dict[tuple[str, date], Decimal] = {}
    for i, d in enumerate(week):
        for ch, amount, fee in (
            ("wechat", D(1000 + 10 * i), D(6)),
            ("alipay", D(500 + i), D("2.5")),
        ):
            f = tmp_path / f"{ch}-{d}.csv"
            f.write_bytes(_channel_statement(ch, d, amount, fee))
            _cli(env, "statements", "load", str(f), "--channel", ch, "--format", "csv")
            net[(ch, d)] = amount - fee if ch == "wechat" else amount
    return net


def _bank_credits(
    net: dict[tuple[str, date], D],
) -> dict[date, list[tuple[str, Decimal, date, str, str]]]:
    """The bank: what each day's statement shows, with the injected anomalies."""
    weekend_wx = net[("wechat", FRI)] + net[("wechat", SAT)] + net[("wechat", SUN)]
    weekend_ali = net[("alipay", FRI)] + net[("alipay", SAT)] + net[("alipay", SUN)]
    return {
        TUE: [
            ("C", net[("wechat", MON)], TUE, "W1", "TENPAY SETTLEMENT 20261123"),
            ("C", net[("alipay", MON)], TUE, "A1", "ALIPAY SETTLEMENT 20261123"),
            ("D", D("300.00"), TUE, "P1", "PAYOUT M001"),
        ],
        WED: [
            # injected: a short credit
            ("C", net[("wechat", TUE)] - D("4.00"), WED, "W2", "TENPAY SETTLEMENT 20261124"),
            ("C", net[("alipay", TUE)], WED, "A2", "ALIPAY SETTLEMENT 20261124"),
            # injected: an unexpected credit
            ("C", D("77.00"), WED, "X1", "INCOMING TRANSFER SUPPLIER REBATE"),
        ],
        THU: [
            # injected: wechat's Wednesday never comes (missing)
            ("C", net[("alipay", WED)], THU, "A3", "ALIPAY SETTLEMENT 20261125"),
        ],
        FRI: [
            ("C", net[("wechat", THU)], FRI, "W4", "TENPAY SETTLEMENT 20261126"),
            ("C", net[("alipay", THU)], FRI, "A4", "ALIPAY SETTLEMENT 20261126"),
        ],
        NEXT_MON: [
            # weekend roll-over: Friday to Sunday in one credit (wechat) / two (alipay)
            ("C", weekend_wx, NEXT_MON, "W5", "TENPAY SETTLEMENT 20261127-29"),
            ("C", weekend_ali - D(100), NEXT_MON, "A5", "ALIPAY SETTLEMENT 1/2"),
            ("C", D(100), NEXT_MON, "A6", "ALIPAY SETTLEMENT 2/2"),
        ],
    }


def _load_bank_statements(
    env: dict[str, str], tmp_path: Path, credits: dict[date, list[Any]]
) -> dict[date, Path]:
    """One bank statement a day, MT940 and camt.053 in turn, each loaded."""
    balance = D("10000.00")
    files: dict[date, Path] = {}
    for i, d in enumerate(sorted(credits)):
        st = statement_of(ACCOUNT, d, credits[d], opening=balance)
        balance = st.closing
        camt = i % 2 == 1
        f = tmp_path / (f"bank-{d}.xml" if camt else f"bank-{d}.sta")
        f.write_bytes(write_camt053(st) if camt else write_mt940(st))
        files[d] = f
        r = _cli(env, "statements", "load", str(f), "--kind", "bank", "--account", ACCOUNT)
        assert "as delivery 1" in r.output
    return files


def _refused_bank_files(env: dict[str, str], tmp_path: Path, files: dict[date, Path]) -> None:
    """A bank file that does not balance, or names another account: nothing stored."""
    # a refused bank file: nothing stored
    bad = tmp_path / "bad.sta"
    bad.write_bytes(files[TUE].read_bytes().replace(b"D300,00", b"D301,00"))
    r = _cli(env, "statements", "load", str(bad), "--kind", "bank", "--account", ACCOUNT, ok=False)
    assert r.exit_code != 0
    assert "rejected, nothing loaded: bad.sta line 11, field :62F: (closing balance)" in r.output
    wrong = _cli(
        env, "statements", "load", str(files[TUE]), "--kind", "bank", "--account", "X", ok=False
    )
    assert "field :25: (account)" in wrong.output


def _redelivered_wednesday(
    env: dict[str, str], tmp_path: Path, credits: dict[date, list[Any]], as_of: date
) -> None:
    """The bank re-delivers Wednesday's statement with the full credit: the short
    settlement is settled and its suspense entry cleared."""
    # the bank re-delivers Wednesday's statement with the full credit
    fixed = [
        (d_, a + D("4.00") if ref == "W2" else a, v, ref, t) for d_, a, v, ref, t in credits[WED]
    ]
    prev = statement_of(ACCOUNT, TUE, credits[TUE], opening=D("10000.00")).closing
    re_st = statement_of(ACCOUNT, WED, fixed, opening=prev)
    redelivered = tmp_path / "bank-wed-corrected.xml"
    redelivered.write_bytes(write_camt053(re_st))
    r = _cli(env, "statements", "load", str(redelivered), "--kind", "bank", "--account", ACCOUNT)
    assert "as delivery 2, superseding 1" in r.output
    run3 = _classes(env, as_of)
    assert [(c["item_key"], c["old"], c["new"]) for c in run3["changes"]] == [
        (f"stl:wechat:CNY:{WED}", "settlement_short", "settled")
    ]
    assert run3["suspense"]["cleared"] == 1


def _suspense_and_versions(storage: dict[str, Any], net: dict[tuple[str, date], D]) -> None:
    """Suspense: the short one cleared by the re-run, the other two open; one bank
    statement version a day, two for the re-delivered one."""
    db = connect_to(storage)
    try:
        rows = db.query(
            "SELECT channel_id, kinds, toString(amount) AS amount FROM {db}.suspense_entries FINAL "
            "ORDER BY channel_id, amount"
        )
        acts = db.query("SELECT action FROM {db}.suspense_actions FINAL")
        versions = db.query(
            "SELECT statement_date, count() AS n FROM {db}.bank_statement_versions FINAL "
            "GROUP BY statement_date ORDER BY statement_date"
        )
    finally:
        db.close()
    assert [(r["channel_id"], list(r["kinds"]), D(r["amount"])) for r in rows] == [
        ("bank", ["unexpected_credit"], D("77.00")),
        ("wechat", ["settlement_missing"], net[("wechat", WED)]),
        ("wechat", ["settlement_short"], D("4.00")),
    ]
    assert [a["action"] for a in acts] == ["cleared_by_rerun"]
    # the refused files stored nothing: one version a day, two for the re-delivered one
    assert [(v["statement_date"], int(v["n"])) for v in versions] == [
        (TUE, 1),
        (WED, 2),
        (THU, 1),
        (FRI, 1),
        (NEXT_MON, 1),
    ]
