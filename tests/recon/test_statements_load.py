"""Loading statement files into ClickHouse, on chDB and on clickhouse-server: versions,
no-op reloads, re-deliveries, crash convergence, bad files leaving nothing behind,
and `tally statements load | list` through the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from recon.statements import Statement, StatementError, StatementLine, write
from recon.statements.checks import read_statement, validate
from recon.statements.insert import insert_lines, insert_statement
from recon.statements.load import latest_version, list_versions, load_file, store
from sinks.backend import Backend
from tally.config import Settings
from tests.clickhouse import env_of

pytestmark = pytest.mark.clickhouse
DATA = Path(__file__).parents[1] / "data" / "statements"
DAY = date(2026, 11, 24)
SAMPLES = {
    "wechat": ("wechat-2026-11-24.csv", "wechat", 4, "1353.50", "7.88"),
    "alipay": ("alipay-20261124.csv", "alipay", 3, "698.00", "3.58"),
    "mt940": ("bank-2026-11-24.sta", "unionpay", 4, "9900.50", "12.53"),
    "camt053": ("bank-camt053-2026-11-24.xml", "icbc", 3, "3320.00", "4.50"),
    "csv": ("psp-2026-11-24.csv", "psp", 3, "89.59", "0.78"),
}


def ms(s: str) -> int:
    return int(datetime.fromisoformat(s).timestamp() * 1000)


def pay(
    txn: str, ctid: str, at: str = "2026-11-24T10:00:00+08:00", amount: str = "10.00"
) -> StatementLine:
    return StatementLine(
        line_no=0,
        txn_id=txn,
        channel_txn_id=ctid,
        original_txn_id="",
        kind="payment",
        status="success",
        currency="CNY",
        amount=Decimal(amount),
        fee=Decimal("0.06"),
        coupon_amount=Decimal("0.00"),
        merchant_ref="",
        occurred_at_ms=ms(at),
    )


def wechat_file(*lines: StatementLine) -> bytes:
    return write(Statement("wechat", DAY, "wechat", list(lines)))


def counts(db: Backend) -> tuple[int, int]:
    lines = db.query("SELECT count() AS n FROM {db}.statement_lines")[0]["n"]
    versions = db.query("SELECT count() AS n FROM {db}.statement_versions")[0]["n"]
    return int(lines), int(versions)


def load(
    db: Backend, settings: Settings, data: bytes, name: str, channel: str = "wechat", **kw: Any
) -> Any:
    return load_file(db, settings, data, channel=channel, file_name=name, loaded_by="test", **kw)


# ------------------------------------------------------------------- loading


@pytest.mark.parametrize("fmt", list(SAMPLES))
def test_load_each_sample(db: Backend, settings: Settings, fmt: str) -> None:
    name, channel, n, amount, fee = SAMPLES[fmt]
    data = (DATA / name).read_bytes()
    r = load(db, settings, data, name, channel)
    assert (r.status, r.format, r.delivery, r.business_date, r.line_count) == (
        "loaded",
        fmt,
        1,
        DAY,
        n,
    )
    assert (r.total_amount, r.total_fee) == (Decimal(amount), Decimal(fee))
    v = latest_version(db, channel, DAY)
    assert v is not None and v["delivery"] == 1 and v["current"]
    assert (v["format"], v["file_name"], v["line_count"], v["loaded_by"]) == (fmt, name, n, "test")
    assert v["total_amount"] == Decimal(amount) and v["checksum"] == r.checksum
    stored = db.query(
        "SELECT * FROM {db}.statement_lines FINAL WHERE channel_id = %(c)s ORDER BY line_no",
        {"c": channel},
    )
    parsed = read_statement(data, channel=channel, file_name=name)
    assert len(stored) == n
    for row, x in zip(stored, parsed.lines, strict=True):
        assert row["business_date"] == DAY and row["delivery"] == 1
        got = (row["line_no"], row["txn_id"], row["channel_txn_id"], row["original_txn_id"])
        assert got == (x.line_no, x.txn_id, x.channel_txn_id, x.original_txn_id)
        assert (row["kind"], row["status"], row["currency"]) == (x.kind, x.status, x.currency)
        assert row["amount"] == x.amount and row["fee"] == x.fee
        assert row["coupon_amount"] == x.coupon_amount and row["merchant_ref"] == x.merchant_ref
        assert row["occurred_at_ms"] == x.occurred_at_ms and row["raw"] == x.raw  # newlines, tabs


def test_same_file_twice_is_a_no_op(db: Backend, settings: Settings) -> None:
    data = (DATA / "wechat-2026-11-24.csv").read_bytes()
    first = load(db, settings, data, "wechat-2026-11-24.csv")
    before = counts(db)
    again = load(db, settings, data, "renamed.csv")
    assert (again.status, again.delivery, again.current_delivery) == ("already_loaded", 1, 1)
    assert counts(db) == before == (4, 1)
    assert first.checksum == again.checksum


def test_redelivery_supersedes(db: Backend, settings: Settings) -> None:
    lines = [pay(f"P{i}", f"WX{i}", amount=f"{10 + i}.00") for i in range(5)]
    one = load(db, settings, wechat_file(*lines), "wechat-2026-11-24.csv")
    corrected = list(lines)
    corrected[1] = pay("P1", "WX1", amount="11.50")
    corrected[3] = pay("P3", "WX3", amount="13.01")
    two = load(db, settings, wechat_file(*corrected), "wechat-2026-11-24-v2.csv")
    assert (one.delivery, two.delivery, two.superseded) == (1, 2, [1])
    versions = list_versions(db, "wechat", DAY)
    assert [(v["delivery"], v["current"]) for v in versions] == [(1, False), (2, True)]
    v = latest_version(db, "wechat", "2026-11-24")
    assert v is not None and v["delivery"] == 2 and v["checksum"] == two.checksum
    rows = db.query(
        "SELECT delivery, txn_id, amount FROM {db}.statement_lines FINAL "
        "WHERE channel_id = 'wechat' ORDER BY delivery, line_no"
    )
    assert [r["amount"] for r in rows if r["delivery"] == 2] == [c.amount for c in corrected]
    assert len([r for r in rows if r["delivery"] == 1]) == 5  # history kept
    # the first file again: still a no-op, reported as superseded
    again = load(db, settings, wechat_file(*lines), "wechat-2026-11-24.csv")
    assert (again.status, again.delivery, again.current_delivery) == ("already_loaded", 1, 2)
    assert counts(db) == (10, 2)
    assert list_versions(db) == versions and list_versions(db, "other") == []


def test_crash_between_lines_and_version_converges(db: Backend, settings: Settings) -> None:
    data = wechat_file(*(pay(f"P{i}", f"WX{i}") for i in range(7)))
    st = read_statement(data, channel="wechat", file_name="wechat-2026-11-24.csv")
    crashed = store(db, st, DAY, write_version=False)  # the lines, then the process dies
    assert crashed.delivery == 1 and counts(db) == (7, 0)
    assert latest_version(db, "wechat", DAY) is None  # nothing visible to readers
    r = load(db, settings, data, "wechat-2026-11-24.csv")
    assert (r.status, r.delivery) == ("loaded", 1)  # same delivery number, same rows
    assert counts(db)[1] == 1
    n = db.query("SELECT count() AS n FROM {db}.statement_lines FINAL")[0]["n"]
    assert int(n) == 7  # the rows written twice are one row each
    assert load(db, settings, data, "x.csv").status == "already_loaded"


def test_orphans_of_another_file_are_skipped(db: Backend, settings: Settings) -> None:
    other = read_statement(
        wechat_file(*(pay(f"Q{i}", f"WQ{i}") for i in range(3))),
        channel="wechat",
        file_name="a.csv",
    )
    store(db, other, DAY, write_version=False)
    r = load(db, settings, wechat_file(pay("P1", "WX1")), "wechat-2026-11-24.csv")
    assert r.delivery == 2  # delivery 1 holds a crashed load of a different file
    v = latest_version(db, "wechat", DAY)
    assert v is not None and v["delivery"] == 2
    # readers join lines to the version in force
    rows = db.query(
        "SELECT l.txn_id AS txn_id FROM {db}.statement_lines AS l FINAL "
        "INNER JOIN (SELECT channel_id, business_date, max(delivery) AS delivery "
        "FROM {db}.statement_versions FINAL GROUP BY channel_id, business_date) AS v "
        "USING (channel_id, business_date, delivery)"
    )
    assert [x["txn_id"] for x in rows] == ["P1"]


def test_insert_in_batches_escapes_text(db: Backend) -> None:
    raw = "a\tb\\c\nd\re'\"f\x00g,`h"
    rows = [
        (
            "c",
            DAY,
            1,
            i,
            f"T{i}",
            f"C{i}",
            "",
            "payment",
            "success",
            "CNY",
            Decimal("1.0001"),
            None,
            Decimal("0.5"),
            "m",
            1795449600000 + i,
            raw,
        )
        for i in range(1, 6)
    ]
    assert insert_lines(db, rows, batch_rows=2) == 5
    got = db.query(
        "SELECT line_no, raw, amount, fee, coupon_amount FROM {db}.statement_lines ORDER BY line_no"
    )
    assert [r["line_no"] for r in got] == [1, 2, 3, 4, 5]
    assert all(r["raw"] == raw for r in got)
    assert got[0]["amount"] == Decimal("1.0001") and got[0]["fee"] is None
    assert got[0]["coupon_amount"] == Decimal("0.5")


def test_insert_statement_escapes_each_special_character(db: Backend) -> None:
    # the chDB path escapes only text that needs it: each special character alone,
    # plain text, non-ASCII text, in ids and in the raw text
    texts = ["plain", "微信,`支付", "a\tb", "a\\b", "a\nb", "a\rb", "a\x00b", "\t\\\n\r\x00"]
    lines = [
        replace(pay(f"T{i}{t}", f"C{i}{t}"), line_no=i, merchant_ref=t, raw=t)
        for i, t in enumerate(texts, start=1)
    ]
    st = Statement("c", DAY, "csv", lines)
    assert insert_statement(db, st, DAY, 1, batch_rows=3) == len(texts)
    got = db.query(
        "SELECT line_no, txn_id, channel_txn_id, merchant_ref, raw "
        "FROM {db}.statement_lines ORDER BY line_no"
    )
    assert [(r["txn_id"], r["channel_txn_id"], r["merchant_ref"], r["raw"]) for r in got] == [
        (x.txn_id, x.channel_txn_id, x.merchant_ref, x.raw) for x in lines
    ]


# ----------------------------------------------------------- cutoff and dates


def test_carry_window_near_the_cutoff(db: Backend, settings: Settings) -> None:
    # default policy: Asia/Shanghai, cutoff 00:00, carry window 180 s
    ok = wechat_file(
        pay("P1", "WX1", at="2026-11-24T00:01:00+08:00"),
        pay("P2", "WX2", at="2026-11-25T00:02:59+08:00"),  # next day, inside the window
        pay("P3", "WX3", at="2026-11-23T23:58:00+08:00"),  # previous day, inside
    )
    assert load(db, settings, ok, "wechat-2026-11-24.csv").line_count == 3
    late = wechat_file(pay("P4", "WX4"), pay("P5", "WX5", at="2026-11-25T00:03:01+08:00"))
    with pytest.raises(StatementError) as e:
        load(db, settings, late, "wechat-2026-11-24.csv")
    assert str(e.value) == (
        "wechat-2026-11-24.csv line 3, field 交易时间 (occurred_at): 2026-11-24T16:03:01Z is "
        "business date 2026-11-25 for this channel, not 2026-11-24 (and not within the "
        "180 s carry window of the cutoff)"
    )
    assert counts(db) == (3, 1)


def test_channel_cutoff_decides_the_business_day(db: Backend, storage: dict[str, Any]) -> None:
    s = Settings(_env_file=None, channels={"unionpay": {"cutoff": "23:00"}}, **storage)  # type: ignore[call-arg]
    late = wechat_file(pay("P1", "WX1", at="2026-11-23T23:30:00+08:00"))  # UnionPay's 24th
    assert load(db, s, late, "wechat-2026-11-24.csv", channel="unionpay").business_date == DAY
    with pytest.raises(
        StatementError, match="is business date 2026-11-23 for this channel, not 2026-11-24"
    ):
        load(db, s, late, "wechat-2026-11-24.csv", channel="wechat")


def test_business_date_from_the_file_name_or_the_lines(db: Backend, settings: Settings) -> None:
    data = wechat_file(pay("P1", "WX1"), pay("P2", "WX2"))
    assert load(db, settings, data, "bill.csv").business_date == DAY  # from the lines
    data2 = wechat_file(pay("P3", "WX3"))
    assert load(db, settings, data2, "wechat_20261124.csv").business_date == DAY
    with pytest.raises(StatementError, match=r"line 2, field 交易时间 .*not 2026-11-25"):
        load(db, settings, wechat_file(pay("P4", "WX4")), "bill.csv", day=date(2026, 11, 25))
    mt = (DATA / "bank-2026-11-24.sta").read_bytes()
    with pytest.raises(StatementError, match=r"the file is for 2026-11-24, not --date 2026-11-23"):
        load(db, settings, mt, "bank.sta", "unionpay", day=date(2026, 11, 23))


# ------------------------------------------------------------------ bad files


def _bad_files() -> dict[str, tuple[bytes, str, str]]:
    wx = (DATA / "wechat-2026-11-24.csv").read_bytes()
    ali = (DATA / "alipay-20261124.csv").read_bytes()
    text = wx.decode()
    return {
        "truncated": (text.split("总交易单数")[0].encode(), "wechat", r"line 6: truncated"),
        "utf8 as alipay": (
            ali.decode("gbk").encode("utf-8"),
            "alipay",
            r"line 1: wrong encoding: this file is UTF-8, Alipay bills are GBK",
        ),
        "gbk as wechat": (text.encode("gbk"), "wechat", r"line 1: wrong encoding"),
        "footer off by a cent": (
            text.replace("`7.88,", "`7.89,").encode(),
            "wechat",
            r"line 7, field 手续费总金额: declares 7.89, the rows add up to 7.88 \(off by 0.01\)",
        ),
        "another day": (
            wechat_file(pay("P1", "WX1"), pay("P2", "WX2", at="2026-11-23T12:00:00+08:00")),
            "wechat",
            r"line 3, field 交易时间 \(occurred_at\): 2026-11-23T04:00:00Z is business date "
            r"2026-11-23",
        ),
        "duplicate lines": (
            wechat_file(pay("P1", "WX1"), pay("P2", "WX2"), pay("P1", "WX1")),
            "wechat",
            r"line 4, field 微信订单号 / 微信退款单号 \(channel_txn_id\): duplicate of line 2",
        ),
        "formula": (
            text.replace("`拿铁 大杯", "`=1+2").encode(),
            "wechat",
            r"line 3, field 商品名称: '=1\+2' starts with '=': refused as a spreadsheet formula",
        ),
    }


BAD = _bad_files()


@pytest.mark.parametrize("case", list(BAD))
def test_bad_file_leaves_nothing(db: Backend, settings: Settings, case: str) -> None:
    data, fmt, pattern = BAD[case]
    name = "wechat-2026-11-24.csv"
    with pytest.raises(StatementError, match=pattern) as e:
        load(db, settings, data, name, channel=fmt, fmt=fmt)
    assert str(e.value).startswith(name)
    assert counts(db) == (0, 0)
    assert list_versions(db) == []


def test_validate_is_pure_and_reports_the_first_problem() -> None:
    policy = Settings(_env_file=None).policies()["wechat"]  # type: ignore[call-arg]
    a, b = replace(pay("P1", "C1"), line_no=1), replace(pay("P2", "C1"), line_no=2)
    validate(Statement("wechat", DAY, "csv", [a]), policy, DAY)
    with pytest.raises(StatementError, match="line 2, field channel_txn_id: duplicate of line 1"):
        validate(Statement("wechat", DAY, "csv", [a, b]), policy, DAY)
    # a refund and its payment share a channel id on Alipay: not duplicates
    r = replace(b, kind="refund", txn_id="R1", original_txn_id="P1")
    validate(Statement("wechat", DAY, "csv", [a, r]), policy, DAY)
    with pytest.raises(StatementError, match="line 2, field kind: 'chargeback'"):
        validate(Statement("wechat", DAY, "csv", [a, replace(r, kind="chargeback")]), policy, DAY)
    with pytest.raises(StatementError, match="line 2, field txn_id: '-R1'"):
        validate(Statement("wechat", DAY, "csv", [a, replace(r, txn_id="-R1")]), policy, DAY)


# ------------------------------------------------------------------------ CLI


def cli(env: dict[str, str], *args: str) -> Any:
    from tally.cli import main

    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_cli_load_and_list(storage: dict[str, Any], tmp_path: Path) -> None:
    env = env_of(storage)
    f = DATA / "bank-camt053-2026-11-24.xml"
    r = cli(env, "statements", "load", str(f), "--channel", "icbc", "--by", "ops")
    assert r.exit_code == 0, r.output
    assert "loaded camt053 statement of icbc for 2026-11-24 as delivery 1" in r.stdout
    assert "lines   3" in r.stdout and "amount  3320.00" in r.stdout
    r = cli(env, "statements", "load", str(f), "--channel", "icbc")
    assert r.exit_code == 0 and "already loaded as delivery 1 of icbc 2026-11-24" in r.stdout
    # a re-delivery, as JSON
    v2 = tmp_path / "icbc-2026-11-24-v2.xml"
    v2.write_bytes(
        f.read_bytes().replace(b"<MsgId>CAMT053-20261125-0001", b"<MsgId>CAMT053-20261125-0002")
    )
    r = cli(
        env, "statements", "load", str(v2), "--channel", "icbc", "--format", "camt053", "--json"
    )
    out = json.loads(r.stdout)
    assert (out["status"], out["delivery"], out["superseded"], out["lines"]) == (
        "loaded",
        2,
        [1],
        3,
    )
    r = cli(env, "statements", "list", "--format", "json")
    rows = json.loads(r.stdout)
    assert [(x["delivery"], x["current"], x["loaded_by"]) for x in rows] == [
        (1, False, "ops"),
        (2, True, rows[1]["loaded_by"]),
    ]
    table = cli(env, "statements", "list", "--channel", "icbc", "--date", "2026-11-24").stdout
    assert "icbc-2026-11-24-v2.xml" in table and table.splitlines()[0].startswith("channel_id")
    assert (
        cli(env, "statements", "list", "--channel", "nobody", "--format", "json").stdout.strip()
        == "[]"
    )


def test_cli_rejects_with_line_and_field(storage: dict[str, Any], tmp_path: Path) -> None:
    env = env_of(storage)
    bad = tmp_path / "wechat-2026-11-24.csv"
    bad.write_bytes((DATA / "wechat-2026-11-24.csv").read_bytes().replace(b"`0.27,", b"`abc,"))
    r = cli(env, "statements", "load", str(bad), "--channel", "wechat")
    assert r.exit_code == 1
    assert (
        "rejected, nothing loaded: wechat-2026-11-24.csv line 3, field 手续费 (fee): 'abc' is "
        "not an amount" in r.output
    )
    r = cli(env, "statements", "list", "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout) == []
    unknown = tmp_path / "x.txt"
    unknown.write_text("hello\n")
    r = cli(env, "statements", "load", str(unknown), "--channel", "wechat")
    assert r.exit_code == 1 and "unknown statement format" in r.output
