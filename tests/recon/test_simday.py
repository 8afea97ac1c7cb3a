"""The simulated day's statement files (recon/simday.py): every format keeps what the
comparison reads, and `tally simulate --statements`. The day and its oracle alone:
tests/sim/test_statement_day.py."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from recon.simday import StatementAnomalies, simulate_day
from recon.statements import FORMATS, StatementLine, parse
from tally.cli import main
from tally.sim.traffic import SimConfig

TZ = ZoneInfo("Asia/Shanghai")
START = datetime(2026, 3, 1, 23, 55, tzinfo=TZ)


def cfg(**kw: object) -> SimConfig:
    base: dict[str, object] = {
        "events": 3000,
        "seed": 9,
        "start": START,
        "orders_per_second": 2.0,
        "rates": {"late_callback": 0.5},
    }
    return SimConfig(**(base | kw))  # type: ignore[arg-type]


def test_every_format_keeps_what_the_comparison_reads() -> None:
    single = simulate_day(
        cfg(currencies={"CNY": 1}, rates={"currency_mismatch": 0, "late_callback": 0.5}),
        anomalies=StatementAnomalies(seed=2),
    )
    multi = simulate_day(cfg(), anomalies=StatementAnomalies(seed=2))
    assert len({ln.currency for v in multi.statements.values() for ln in v}) > 1

    def essence(x: StatementLine) -> tuple[object, ...]:
        return (
            x.txn_id,
            x.channel_txn_id,
            x.kind,
            x.status,
            x.currency,
            x.amount,
            x.fee,
            x.occurred_at_ms // 1000,
        )

    for fmt in FORMATS:
        day = single if fmt in ("alipay", "mt940", "camt053") else multi
        files = day.files(fmt)
        assert len(files) == len(day.days)
        for ch, d, name, data in files:
            st = parse(data, fmt, file_name=name, channel_id=ch)
            want = day.statement(ch, d, fmt)
            assert [essence(x) for x in st.lines] == [essence(x) for x in want.lines], name
    with pytest.raises(ValueError):
        multi.files("mt940")


def test_tally_simulate_statements(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        main,
        [
            "simulate",
            "--events",
            "3000",
            "--seed",
            "3",
            "--out",
            str(tmp_path / "events"),
            "--statements",
            str(tmp_path / "st"),
        ],
        env={"TALLY_DATA_DIR": str(tmp_path)},
    )
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "st" / "expected-recon.json").read_text(encoding="utf-8"))
    assert set(doc["files"]) == set(FORMATS) and doc["skipped"] == {}
    for fmt, names in doc["files"].items():
        for name in names:
            data = (tmp_path / "st" / name).read_bytes()
            parse(data, fmt, file_name=name)
    assert sum(doc["counts"].values()) == len(doc["items"])
    assert {i["class"] for i in doc["items"] if i["cause"] == "extra_line"} <= {"long"}
    assert (tmp_path / "events" / "events.jsonl").exists()
