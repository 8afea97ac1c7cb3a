"""`render(data)`: the whole HTML document (pure)."""

from __future__ import annotations

from html import escape

from recon.report import sections
from recon.report.funds import funds_and_payouts
from recon.report.html import CSS
from recon.report.model import ReportData
from recon.report.tolerance import tolerance_and_proposed
from tally.core.events import iso_ms


def render(data: ReportData) -> str:
    """The whole HTML document (pure)."""
    day = data.day.isoformat()
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>tally reconciliation report {escape(day)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Reconciliation report — business date {escape(day)}</h1>",
        f'<p class="muted">as of {escape(iso_ms(data.as_of_ms))}; '
        f"{len(data.channels)} channels, {data.result_count:,} items reconciled, "
        f"{data.open_entries:,} open suspense entries</p>",
    ]
    if data.not_reconciled:
        out.append(
            '<p class="warn" id="not-reconciled">not reconciled yet: '
            + escape(", ".join(data.not_reconciled))
            + "</p>"
        )

    out.extend(sections.results(data))
    out.extend(tolerance_and_proposed(data))
    out.extend(sections.aging(data))
    out.extend(sections.settlement(data))
    out.extend(funds_and_payouts(data))
    out.extend(sections.arrival(data))
    out.append("</body></html>")
    return "\n".join(out) + "\n"
