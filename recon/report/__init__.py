"""`tally recon report`: the morning view of a business day as one HTML file.

For people who will not open Grafana: one self-contained file (no scripts, no
external stylesheets, fonts or images; charts are inline SVG drawn here), every text
from the database escaped. Sections:

1. reconciliation results of the latest run of each channel for the date: items and
   amounts by class and channel (amounts per currency, never added across currencies);
2. suspense: the open entries (all days) by age as of the report time, in buckets
   <1d, 1–3d, 3–7d, >7d, counts and amounts per currency;
3. settlement totals of the date per currency (recon.settle), with the payments held
   back by open suspense entries;
4. statement arrival: per channel, the deliveries loaded for the date and when;
5. tolerance and proposed matches (after the results): money matched within the
   channels' tolerances (items, amount and fee differences summed per channel and
   currency, the largest items), and the `proposed` lines with their best candidates,
   scores, and our amount and time next to the statement's, for a person to accept
   or reject (`tally recon accept|reject`);
6. funds and merchant payouts (after the settlement totals): the latest settlement
   run on or after the date, money expected vs arrived per channel and currency and
   its breaks; the latest merchant payout run of the date, payable vs paid per
   currency, and per merchant the breaks and the hold-backs explained.

It prints on A4 portrait (`@page`), no chart split across pages (`break-inside:
avoid`; a chart is at most 640 px wide, within the page's 186 mm); the tests open
it in headless Chromium (tests/recon/test_report_browser.py).

`build(db, day, now_ms)` reads everything (SQL, recon.report.read), `render(data)` is
pure (recon.report.render, one module per group of sections).
"""

from recon.report.html import bar_chart
from recon.report.model import (
    AGING_BUCKETS,
    BREAKS,
    CLASSES,
    SHOWN,
    Candidate,
    ProposedLine,
    ReportData,
    aging_bucket,
)
from recon.report.read import build
from recon.report.render import render

__all__ = [
    "AGING_BUCKETS",
    "BREAKS",
    "CLASSES",
    "SHOWN",
    "Candidate",
    "ProposedLine",
    "ReportData",
    "aging_bucket",
    "bar_chart",
    "build",
    "render",
]
