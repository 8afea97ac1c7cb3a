"""`tally settle` and `tally recon report`; `register(main)` adds them.

tally settle --date D [--channel C] [--format table|csv|json]
tally recon report --date D --out report.html [--as-of RFC3339]

`recon report` joins the `recon` group that tally/cli/recon.py defines.
"""

from __future__ import annotations

import json
import time
from datetime import date
from pathlib import Path

import click

from tally.cli.common import FORMATS, CliState, check_date, db, emit, pass_state

_SETTLE_COLUMNS = [
    "merchant_id",
    "currency",
    "payments",
    "refund_count",
    "gross",
    "coupon_funding",
    "refunds",
    "fees",
    "net",
    "held_items",
    "held_amount",
    "payable",
]


@click.command("settle")
@click.option("--date", "day", required=True, callback=check_date, help="business date")
@click.option("--channel", default=None, help="only this channel's orders")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@pass_state
def settle_cmd(state: CliState, day: str, channel: str | None, fmt: str) -> None:
    """Merchant settlement (清分) of a business date: per merchant and currency, gross,
    coupon funding, refunds, fees, net payable = gross - refunds - fees, and the
    payments held back by open suspense entries (payable = net - held).

    Only orders the channel confirmed count (S10). The figures are checked against the
    stream's confirmed merchant postings of the date; a difference is reported and
    makes the command fail."""
    from recon.settle import settle

    with db(state.settings) as conn:
        s = settle(conn, day, channel)
    if fmt == "json":
        click.echo(json.dumps(s.to_json(), indent=2, ensure_ascii=False))
    else:
        rows = [m.to_json() for m in s.merchants]
        if fmt == "table":
            rows += [{**t.to_json(), "merchant_id": "TOTAL"} for t in s.totals]
        emit(rows, fmt, _SETTLE_COLUMNS)
        if fmt == "table" and not s.disagreements:
            click.echo(
                f"({len(s.merchants):,} merchant lines, business date {day}"
                + (f", channel {channel}" if channel else "")
                + "; agrees with the stream's confirmed merchant postings)",
                err=True,
            )
    if s.disagreements:
        raise click.ClickException(
            "settlement disagrees with the stream's confirmed merchant postings:\n  "
            + "\n  ".join(s.disagreements[:20])
        )


@click.command("report")
@click.option("--date", "day", required=True, callback=check_date, help="business date")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("report.html"),
    show_default=True,
    help="the HTML file to write",
)
@click.option(
    "--as-of",
    "as_of",
    default=None,
    help="age suspense entries as of this RFC 3339 time (default: now)",
)
@pass_state
def report_cmd(state: CliState, day: str, out: Path, as_of: str | None) -> None:
    """The morning report as one self-contained HTML file: results by class and
    channel, suspense aging, settlement totals, statement arrival, with charts."""
    from recon.report import build, render
    from tally.core.events import InvalidEvent, parse_timestamp

    try:
        now_ms = parse_timestamp(as_of, "--as-of") if as_of else int(time.time() * 1000)
    except InvalidEvent as exc:
        raise click.BadParameter(str(exc)) from None
    with db(state.settings) as conn:
        data = build(conn, date.fromisoformat(day), now_ms=now_ms)
    out.write_text(render(data), encoding="utf-8")
    click.echo(
        f"wrote {out} ({len(data.channels)} channels, {data.result_count:,} results, "
        f"{data.open_entries:,} open suspense entries)"
    )


def register(main: click.Group) -> None:
    """Add `tally settle` to `tally` and `report` to its `recon` group (add that first:
    tally/cli/recon.py)."""
    main.add_command(settle_cmd)
    recon = main.commands["recon"]
    assert isinstance(recon, click.Group), "tally/cli/recon.py registers `recon` first"
    recon.add_command(report_cmd)
