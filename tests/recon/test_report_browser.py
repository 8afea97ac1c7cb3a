"""The morning report in a real browser: Debian's headless Chromium.

A simulated day is stored in chDB and taken through the demo's end of day
(`recon.demo.end_of_day`: statements in each channel's format, loaded, reconciled,
suspense, write-offs, settlement, report); then the report file is opened in
Chromium:

- the page loads with no console message at all (the report has no scripts; a page
  that logs one is caught, checked on a page made to);
- a screenshot of the whole page shows every bar of every chart: the bars drawn in
  the chart colour, counted in the PNG's pixels (Pillow), equal the bars with a
  non-zero value in the HTML;
- it prints to PDF on A4 portrait pages (Chromium's default is Letter) and no chart
  is taller or wider than the printable area, so `break-inside: avoid` keeps each on
  one page.

Chromium comes from Debian (`apt-get install chromium`; `.ci/run` installs it when
missing). Without it these tests are skipped, and fail under CI=true.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from recon.demo import CHANNEL_FORMATS, end_of_day
from recon.simday import StatementAnomalies, simulate_day
from recon.statements import FORMATS
from tally.config import Settings
from tests.clickhouse import connect_to, drop_database, need, storage_values
from tests.recon.test_report import day_config

pytest_plugins = ("tests.clickhouse",)

TZ = ZoneInfo("Asia/Shanghai")
BAR = (0x3B, 0x6F, 0xB6)  # svg .b in recon/report/html.py
A4_PT = (595.0, 842.0)  # 210 x 297 mm in points, as Chromium writes them (595.92 x 842.88)


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    need(
        found is not None,
        "Debian's chromium is not installed (apt-get install chromium; .ci/run does)",
    )
    assert found is not None
    return found


def browse(chromium: str, tmp: Path, url: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={tmp / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            *flags,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of a PNG (Pillow decodes it)."""
    from PIL import Image

    with Image.open(path) as img:
        rgb = img.convert("RGB")
        width, height = rgb.size
        data = rgb.tobytes()
    stride = width * 3
    return width, height, [data[y * stride : (y + 1) * stride] for y in range(height)]


def _has_bar(row: bytes) -> bool:
    target = bytes(BAR) * 2
    i = row.find(target)
    while i >= 0:
        if i % 3 == 0:
            return True
        i = row.find(target, i + 1)
    return False


def bar_bands(rows: list[bytes]) -> int:
    """Bands of consecutive pixel rows that hold a run of >= 2 bar-coloured pixels:
    one per bar drawn (bars are 18 px tall, 6 px apart)."""
    bands, inside = 0, False
    for row in rows:
        hit = _has_bar(row)
        if hit and not inside:
            bands += 1
        inside = hit
    return bands


def drawn_bars(html: str) -> int:
    """Bars with a non-zero width in the report's SVG charts."""
    return sum(1 for w in re.findall(r'<rect [^>]*width="(\d+)"[^>]*class="b"', html) if int(w))


@pytest.fixture(scope="module")
def report(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    # as the demo: its channels, CNY only (Alipay's bill, MT940 and camt.053 hold one
    # currency), currency mismatches on WeChat
    cfg = day_config(
        channels=list(CHANNEL_FORMATS),
        currencies={"CNY": 1},
        currency_mismatch_channels=["wechat"],
    )
    day = simulate_day(cfg, anomalies=StatementAnomalies(seed=3))
    values = storage_values(request, "chdb")
    db = connect_to(values)
    out = tmp_path_factory.mktemp("eod")
    try:
        day.store(db)
        settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
        now = int(datetime(2026, 3, 3, 9, 0, tzinfo=TZ).timestamp() * 1000)
        yield end_of_day(db, settings, day, out, now_ms=now)
    finally:
        db.close()
        drop_database(values)


def test_the_demo_end_of_day_finds_what_was_injected(report: Any) -> None:
    """The end of day the demo runs: every format of the channels used, the classes
    exactly the oracle's, write-offs made, settlement agreeing with the postings."""
    assert report.found == report.expected
    assert report.scores() == (1.0, 1.0)
    assert {s["format"] for s in report.statements} == set(FORMATS)
    assert not any(s["fallback"] for s in report.statements)
    assert all(s["status"] == "loaded" and Path(s["file"]).is_file() for s in report.statements)
    assert {w["action"] for w in report.written_off} == {
        "refunded",
        "loss_accepted",
        "channel_confirmed",
    }
    assert report.settlements and all(not s.disagreements for s in report.settlements.values())
    assert len(report.reports) == 2 and all(p.is_file() for p in report.reports.values())


def test_the_console_check_catches_a_page_that_logs(chromium: str, tmp_path: Path) -> None:
    page = tmp_path / "logs.html"
    page.write_text('<!DOCTYPE html><script>console.error("boom")</script>', encoding="utf-8")
    r = browse(chromium, tmp_path, page.as_uri(), "--dump-dom")
    assert r.returncode == 0, r.stderr[-2000:]
    assert any('"boom"' in m for m in console_messages(r.stderr))


def test_the_report_loads_without_console_messages(
    chromium: str, report: Any, tmp_path: Path
) -> None:
    for path in report.reports.values():
        r = browse(chromium, tmp_path, path.as_uri(), "--dump-dom")
        assert r.returncode == 0, r.stderr[-2000:]
        assert "Reconciliation report" in r.stdout and "</table>" in r.stdout
        assert console_messages(r.stderr) == []


def test_a_screenshot_shows_every_bar_of_every_chart(
    chromium: str, report: Any, tmp_path: Path
) -> None:
    for path in report.reports.values():
        html = path.read_text(encoding="utf-8")
        expected = drawn_bars(html)
        assert html.count("<svg") >= 4 and expected >= 8
        shot = tmp_path / f"{path.stem}.png"
        r = browse(
            chromium, tmp_path, path.as_uri(), "--window-size=1280,5000", f"--screenshot={shot}"
        )
        assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
        width, height, rows = read_png(shot)
        assert (width, height) == (1280, 5000)
        # the page ended above the bottom of the window: nothing was left out
        assert set(b"".join(rows[-40:])) == {0xFF}
        assert bar_bands(rows) == expected


def test_it_prints_on_a4_portrait_with_charts_within_a_page(
    chromium: str, report: Any, tmp_path: Path
) -> None:
    path = max(report.reports.values())
    html = path.read_text(encoding="utf-8")
    assert "@page{size:A4 portrait" in html and "break-inside:avoid" in html
    pdf = tmp_path / "report.pdf"
    r = browse(chromium, tmp_path, path.as_uri(), "--no-pdf-header-footer", f"--print-to-pdf={pdf}")
    assert r.returncode == 0 and pdf.is_file(), r.stderr[-2000:]
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF")
    boxes = re.findall(rb"/MediaBox\s*\[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", data)
    assert boxes, "no page in the PDF"
    for w, h in boxes:
        assert abs(float(w) - A4_PT[0]) < 2 and abs(float(h) - A4_PT[1]) < 2, (w, h)
    # printable area: A4 less 12 mm margins, in CSS px (96 per inch)
    page_w, page_h = (210 - 24) / 25.4 * 96, (297 - 24) / 25.4 * 96
    for w, h in re.findall(r'<svg [^>]*width="(\d+)" height="(\d+)"', html):
        assert int(w) <= page_w and int(h) <= page_h, (w, h)
