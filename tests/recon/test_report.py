"""`tally recon report`: one self-contained HTML file, generated on a seeded simulated
day and parsed back (html.parser) for the figures it must show."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import date, datetime
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from recon.report import AGING_BUCKETS, CLASSES, ReportData, aging_bucket, bar_chart, build, render
from recon.settle import Settlement
from recon.simday import StatementAnomalies, simulate_day
from tally.config import Settings
from tally.core.events import iso_ms
from tally.sim.traffic import SimConfig
from tests.clickhouse import connect_to, drop_database, env_of, storage_values

pytest_plugins = ("tests.clickhouse",)

TZ = ZoneInfo("Asia/Shanghai")
T0 = int(datetime(2026, 3, 3, 9, 0, tzinfo=TZ).timestamp() * 1000)
DAY_MS = 86_400_000


class Page(HTMLParser):
    """Tables by id (rows of cell texts), SVG count, every tag and attribute seen."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self.tags: Counter[str] = Counter()
        self.attrs: list[tuple[str, str, str | None]] = []
        self.text: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        self.attrs.extend((tag, k, v) for k, v in attrs)
        if tag == "table":
            self._table = dict(attrs).get("id") or f"t{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse(html: str) -> Page:
    p = Page()
    p.feed(html)
    p.close()
    return p


def rows_of(page: Page, table: str) -> list[dict[str, str]]:
    head, *body = page.tables[table]
    return [dict(zip(head, r, strict=True)) for r in body]


# ------------------------------------------------------------------ pure


def test_aging_buckets() -> None:
    assert [aging_bucket(x) for x in (0, DAY_MS - 1, DAY_MS, 3 * DAY_MS - 1)] == [
        "<1d",
        "<1d",
        "1–3d",
        "1–3d",
    ]
    assert [aging_bucket(x) for x in (3 * DAY_MS, 7 * DAY_MS - 1, 7 * DAY_MS, 90 * DAY_MS)] == [
        "3–7d",
        "3–7d",
        ">7d",
        ">7d",
    ]


def test_every_text_is_escaped_and_nothing_is_fetched() -> None:
    evil = '<script>alert("x")</script>&'
    data = ReportData(
        day=date(2026, 3, 2),
        as_of_ms=T0,
        channels=[evil],
        runs={evil: {"run_id": "r", "delivery": 1, "finished_at": ""}},
        by_class={evil: {"long": {"CNY": (2, Decimal("3.10"))}}},
        aging={b: {} for b in AGING_BUCKETS},
        open_entries=0,
        settlement=Settlement("2026-03-02", None, [], [], []),
        arrivals=[
            {
                "channel_id": evil,
                "delivery": 1,
                "format": "csv",
                "file_name": evil + ".csv",
                "line_count": 2,
                "total_amount": Decimal("3.10"),
                "checksum": "ab" * 32,
                "loaded_at_ms": T0,
                "loaded_by": evil,
            }
        ],
    )
    html = render(data)
    assert "<script" not in html and "&lt;script&gt;" in html
    page = parse(html)
    assert page.tags["script"] == 0
    assert rows_of(page, "statement-arrival")[0]["file"] == evil + ".csv"
    assert rows_of(page, "results-by-class")[0]["channel"] == evil
    for tag, attr, value in page.attrs:
        assert attr not in ("src", "href") and not attr.startswith("on"), (tag, attr)
        assert "url(" not in (value or "")
    svg = bar_chart("a <b>", [("<x>", 3), ("y", 0)], unit=" &")
    assert "<x>" not in svg and "&lt;x&gt;" in svg and "a &lt;b&gt;" in svg


# ---------------------------------------------------------- on ClickHouse


def day_config(**extra: Any) -> SimConfig:
    """A small day across a midnight cutoff, many items near it (also the browser
    test's, tests/recon/test_report_browser.py)."""
    return SimConfig(
        events=4000,
        seed=31,
        start=datetime(2026, 3, 1, 23, 55, tzinfo=TZ),
        orders_per_second=2.0,
        rates={"late_callback": 0.5},
        **extra,
    )


@pytest.fixture(scope="module")
def reported(request: pytest.FixtureRequest) -> Any:
    """A simulated day stored in chDB, statements loaded, day 1 reconciled at T0 and day
    2 four days later; the report of day 1 as of day 2's run + 1 h."""
    from recon.run import run
    from recon.statements.load import load_file

    day = simulate_day(day_config(), anomalies=StatementAnomalies(seed=3))
    values = storage_values(request, "chdb")
    db = connect_to(values)
    day.store(db)
    settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    for ch, d, name, data in day.files("csv"):
        load_file(db, settings, data, channel=ch, file_name=name, fmt="csv", day=d)
    dates = sorted({d for _, d in day.days})
    for ch, d in day.days:
        at = T0 if d == dates[0] else T0 + 4 * DAY_MS
        run(db, ch, d, day.policies[ch], now_ms=at)
    as_of = T0 + 4 * DAY_MS + 3_600_000
    data = build(db, dates[0], now_ms=as_of)
    html = render(data)
    yield {"day": day, "db": db, "date": dates[0], "html": html, "as_of": as_of, "values": values}
    db.close()
    drop_database(values)


@pytest.mark.clickhouse
def test_the_report_shows_the_days_figures(reported: dict[str, Any]) -> None:
    from recon.settle import settle
    from recon.suspense import open_entries

    day, db, d = reported["day"], reported["db"], reported["date"]
    html: str = reported["html"]
    page = parse(html)
    # self-contained: no scripts, no external resources; inline SVG charts
    assert page.tags["script"] == 0 and page.tags["link"] == 0 and page.tags["img"] == 0
    assert page.tags["svg"] >= 4
    assert not [a for a in page.attrs if a[1] in ("src", "href")]

    # results by class and channel: the oracle's counts for the date
    want: dict[str, Counter[str]] = defaultdict(Counter)
    for (ch, dd, _), cls in day.expected.items():
        if dd == d.isoformat():
            want[ch][cls] += 1
    got = {r["channel"]: r for r in rows_of(page, "results-by-class")}
    for ch, counts in want.items():
        for cls in CLASSES:
            assert int(got[ch][cls].replace(",", "")) == counts[cls], (ch, cls)
        assert got[ch]["delivery"] == "1"
    total = sum(sum(c.values()) for c in want.values())
    assert sum(int(got["all"][c].replace(",", "")) for c in CLASSES) == total

    # suspense aging: day 1's entries are 4 days old, day 2's one hour
    entries = open_entries(db, now_ms=reported["as_of"], sync=False)
    buckets: dict[tuple[str, str], tuple[int, Decimal]] = {}
    for e in entries:
        k = (aging_bucket(reported["as_of"] - e.opened_at_ms), e.currency)
        n, a = buckets.get(k, (0, Decimal(0)))
        buckets[k] = (n + 1, a + e.amount)
    shown = {
        (r["age"], r["currency"]): (int(r["entries"].replace(",", "")), Decimal(r["amount"]))
        for r in rows_of(page, "suspense-aging")
        if r["currency"]
    }
    assert shown == buckets
    assert {b for b, _ in shown} == {"<1d", "3–7d"}

    # settlement totals per currency, as recon.settle computes them
    s = settle(db, d)
    st = {r["currency"]: r for r in rows_of(page, "settlement-totals")}
    assert set(st) == {t.currency for t in s.totals}
    for t in s.totals:
        j = t.to_json()
        r = st[t.currency]
        assert (r["gross"], r["refunds"], r["fees"], r["net payable"]) == (
            j["gross"],
            j["refunds"],
            j["fees"],
            j["net"],
        )
        assert (r["held amount"], r["payable after hold-back"]) == (j["held_amount"], j["payable"])
        assert r["coupon funding"] == j["coupon_funding"]
    assert "Agrees with the stream" in html

    # statement arrival: each channel's delivery 1, with its load time
    arrival = rows_of(page, "statement-arrival")
    assert sorted(r["channel"] for r in arrival) == sorted(want)
    versions = db.query(
        "SELECT channel_id, loaded_at_ms FROM {db}.statement_versions FINAL "
        "WHERE business_date = toDate(%(d)s)",
        {"d": d.isoformat()},
    )
    loaded = {r["channel_id"]: iso_ms(int(r["loaded_at_ms"])) for r in versions}
    for r in arrival:
        assert r["delivery"] == "1" and r["loaded at"] == loaded[r["channel"]]
        assert r["file"] == f"{r['channel']}-{d.isoformat()}.csv"


@pytest.mark.clickhouse
def test_tally_recon_report_writes_the_file(reported: dict[str, Any], tmp_path: Path) -> None:
    from tally.cli import main

    out = tmp_path / "report.html"
    res = CliRunner().invoke(
        main,
        [
            "recon",
            "report",
            "--date",
            reported["date"].isoformat(),
            "--out",
            str(out),
            "--as-of",
            iso_ms(reported["as_of"]),
        ],
        env=env_of(reported["values"]),
    )
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output
    page = parse(out.read_text(encoding="utf-8"))
    ref = parse(reported["html"])
    for t in ("results-by-class", "suspense-aging", "settlement-totals", "statement-arrival"):
        assert page.tables[t] == ref.tables[t]


# ------------------------------------- tolerated money and proposed matches


def test_tolerated_and_proposed_texts_are_escaped() -> None:
    from recon.report import Candidate, ProposedLine

    evil = "<b>&"
    data = ReportData(
        day=date(2026, 3, 2),
        as_of_ms=T0,
        channels=[evil],
        runs={},
        by_class={},
        aging={b: {} for b in AGING_BUCKETS},
        open_entries=0,
        settlement=Settlement("2026-03-02", None, [], [], []),
        arrivals=[],
        tolerated={evil: {"CNY": (1, Decimal("0.01"), Decimal("-0.02"))}},
        tolerated_items=[
            {
                "channel_id": evil,
                "item_key": evil,
                "currency": "CNY",
                "ledger_amount": Decimal("1"),
                "statement_amount": None,
                "amount_difference": Decimal("0.01"),
                "ledger_fee": None,
                "statement_fee": None,
                "fee_difference": Decimal("-0.02"),
                "match_method": evil,
            }
        ],
        proposed=[
            ProposedLine(
                evil, evil, 3, evil, T0, "CNY", Decimal("7"), (Candidate(evil, 60, None, None),)
            )
        ],
        proposed_count=1,
    )
    html = render(data)
    assert "<b>" not in html and "&lt;b&gt;&amp;" in html
    page = parse(html)
    assert rows_of(page, "tolerated")[0] == {
        "channel": evil,
        "currency": "CNY",
        "items": "1",
        "amount differences": "0.01",
        "fee differences": "-0.02",
    }
    assert rows_of(page, "proposed")[0]["candidate"] == evil
    assert rows_of(page, "tolerated-items")[0]["statement"] == "–"


def test_funds_and_payout_sections_sum_per_channel_and_escape() -> None:
    evil = "<i>&"
    data = ReportData(
        day=date(2026, 3, 2),
        as_of_ms=T0,
        channels=[],
        runs={},
        by_class={},
        aging={b: {} for b in AGING_BUCKETS},
        open_entries=0,
        settlement=Settlement("2026-03-02", None, [], [], []),
        arrivals=[],
        funds_run={"run_id": evil, "run_date": date(2026, 3, 4)},
        funds=[
            {"item_key": "stl:wx:CNY:1", "class": "settled", "channel_id": "wx",
             "currency": "CNY", "expected_amount": Decimal("100.00"),
             "credited_amount": Decimal("100.00"), "detail": ""},
            {"item_key": "stl:wx:CNY:2", "class": "settlement_short", "channel_id": "wx",
             "currency": "CNY", "expected_amount": Decimal("50.00"),
             "credited_amount": Decimal("46.00"), "detail": evil},
            {"item_key": evil, "class": "unexpected_credit", "channel_id": "",
             "currency": "CNY", "expected_amount": None,
             "credited_amount": Decimal("77.00"), "detail": evil},
        ],
        payouts_run="po-run",
        payouts=[
            {"merchant_id": "M1", "currency": "CNY", "class": "payout_matched", "net": "99.40",
             "held_amount": "4.97", "expected": "94.43", "paid": "94.43", "detail": "held"},
            {"merchant_id": "M2", "currency": "CNY", "class": "payout_matched", "net": "10.00",
             "held_amount": "0.00", "expected": "10.00", "paid": "10.00", "detail": ""},
            {"merchant_id": evil, "currency": "CNY", "class": "unexpected_payout",
             "net": "0.00", "held_amount": "0.00", "expected": None, "paid": "12.00",
             "detail": evil},
        ],
    )  # fmt: skip
    html = render(data)
    assert "<i>" not in html and "&lt;i&gt;&amp;" in html
    page = parse(html)
    assert rows_of(page, "funds-by-channel") == [
        {"channel": "(unclaimed)", "currency": "CNY", "expected": "0.00", "arrived": "77.00",
         "difference": "77.00", "in order": "0", "breaks": "1"},
        {"channel": "wx", "currency": "CNY", "expected": "150.00", "arrived": "146.00",
         "difference": "-4.00", "in order": "1", "breaks": "1"},
    ]  # fmt: skip
    assert [r["item"] for r in rows_of(page, "funds-breaks")] == ["stl:wx:CNY:2", evil]
    assert rows_of(page, "payouts-by-currency") == [
        {"currency": "CNY", "merchants": "3", "payable": "104.43", "paid": "116.43",
         "held back": "4.97", "breaks": "1"}
    ]  # fmt: skip
    # the breaks first, then the merchants paid less a hold-back; M2 (nothing held) not shown
    items = rows_of(page, "payout-items")
    assert [(r["merchant"], r["class"], r["payable"]) for r in items] == [
        (evil, "unexpected_payout", "–"),
        ("M1", "payout_matched", "94.43"),
    ]
    empty = render(ReportData(**{**data.__dict__, "funds_run": {}, "payouts_run": ""}))
    assert 'id="funds-none"' in empty and 'id="payouts-none"' in empty
