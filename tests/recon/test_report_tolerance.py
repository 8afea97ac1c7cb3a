"""`tally recon report`: tolerated money and proposed matches, on two channels
reconciled in ClickHouse (the report's tables parsed back with tests.recon.test_report)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from recon.report import build, render
from recon.run import run
from sinks.backend import Backend
from sinks.schema import migrate
from tally.cli import main
from tally.core.events import iso_ms
from tally.core.policy import ChannelPolicy
from tests.clickhouse import connect_to, env_of
from tests.recon.test_report import Page, parse, rows_of
from tests.recon.test_run import CTX, DAY, insert_orders, insert_statement, line, order

T0 = CTX.end_cutoff_ms - 5 * 3600_000
BASE = {"cutoff": "23:00", "carry_window_seconds": 180}
CHANNELS: dict[str, dict[str, Any]] = {
    "tol": {**BASE, "fee_tolerance_minor": 1, "amount_tolerance_bps": 5},
    "ref": {**BASE, "match_window_seconds": 600},
}


def seed(db: Backend) -> None:
    """tol: fees off by a cent both ways, an amount 0.50 below 1000 (within 5 bps);
    ref: a line with no usable reference and two candidates a second apart."""
    migrate(db)
    insert_orders(
        db,
        "tol",
        [
            order("F1", fee=Decimal("0.60")),
            order("F2", fee=Decimal("0.60")),
            order("A1", amount=Decimal("1000.00")),
            order("OK"),
        ],
    )
    insert_statement(
        db,
        "tol",
        DAY,
        [
            line(1, "F1", fee=Decimal("0.61")),
            line(2, "F2", fee=Decimal("0.59")),
            line(3, "A1", amount=Decimal("999.50")),  # 0.50 below: within 5 bps of 1000
            line(4, "OK"),
        ],
    )
    insert_orders(
        db,
        "ref",
        [
            order("TIE-1", amount=Decimal("7"), created_at_ms=T0, channel_txn_id=""),
            order("TIE-2", amount=Decimal("7"), created_at_ms=T0 + 1000, channel_txn_id=""),
        ],
    )
    insert_statement(
        db, "ref", DAY, [line(1, "", channel_txn_id="", amount=Decimal("7"), raw="NONREF")]
    )


@pytest.mark.clickhouse
def test_the_report_shows_tolerated_money_and_proposed_matches(
    storage: dict[str, Any],
    tmp_path: Path,
) -> None:
    """Two channels: one with a 1-cent fee and 5-basis-point amount tolerance
    (differences in both directions), one scoring lines with no usable reference
    (a tie left proposed, a single weak candidate proposed); the report sums the
    differences per channel and currency and lists every proposed line with its
    candidates, scores, and our amount and time next to the line's."""
    db = connect_to(storage)
    seed(db)
    for ch, pol in CHANNELS.items():
        run(db, ch, DAY, ChannelPolicy(**pol), now_ms=CTX.end_cutoff_ms + 3_600_000)
    data = build(db, DAY, now_ms=CTX.end_cutoff_ms + 7_200_000)
    db.close()

    assert data.tolerated == {"tol": {"CNY": (3, Decimal("-0.50"), Decimal("0.00"))}}
    page = parse(render(data))
    assert rows_of(page, "tolerated") == [
        {
            "channel": "tol",
            "currency": "CNY",
            "items": "3",
            "amount differences": "-0.50",
            "fee differences": "0.00",
        }
    ]
    items = rows_of(page, "tolerated-items")
    assert [(r["item"], r["amount difference"], r["fee difference"]) for r in items] == [
        ("A1", "-0.50", "0.00"),
        ("F1", "0.00", "0.01"),
        ("F2", "0.00", "-0.01"),
    ]
    assert (items[0]["ours"], items[0]["statement"]) == ("1000.00", "999.50")
    proposed = rows_of(page, "proposed")
    assert [(r["item"], r["candidate"], r["score"], r["our amount"]) for r in proposed] == [
        ("line:1", "TIE-1", "60", "7.00"),
        ("", "TIE-2", "59", "7.00"),  # a second further from the line
    ]
    assert proposed[0]["line"] == "1" and proposed[0]["line amount"] == "7.00"
    assert proposed[0]["our time"] == iso_ms(T0)
    assert proposed[1]["our time"] == iso_ms(T0 + 1000)
    assert proposed[0]["line time"] != ""
    _same_through_the_cli(storage, tmp_path, page)


def _same_through_the_cli(storage: dict[str, Any], tmp_path: Path, page: Page) -> None:
    """The same tables through `tally recon report`."""
    out = tmp_path / "r.html"
    env = {**env_of(storage), "TALLY_CHANNELS": json.dumps(CHANNELS)}
    res = CliRunner().invoke(
        main,
        [
            "recon",
            "report",
            "--date",
            DAY.isoformat(),
            "--out",
            str(out),
            "--as-of",
            iso_ms(CTX.end_cutoff_ms + 7_200_000),
        ],
        env=env,
    )
    assert res.exit_code == 0, res.output
    got = parse(out.read_text(encoding="utf-8"))
    for t in ("tolerated", "tolerated-items", "proposed"):
        assert got.tables[t] == page.tables[t]
