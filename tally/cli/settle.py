"""`tally settle` and `tally recon report`; `register(main)` adds them.

tally settle --date D [--channel C] [--format table|csv|json]
tally recon report --date D --out report.html [--as-of RFC3339]

`recon report` joins the `recon` group that tally/cli/recon.py defines (the group object
itself, whatever the order of COMMAND_MODULES).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import click

from tally.cli.storage import FORMATS, _check_date, _db, emit

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
@click.option("--date", "day", required=True, callback=_check_date, help="business date")
@click.option("--channel", default=None, help="only this channel's orders")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def settle_cmd(day: str, channel: str | None, fmt: str) -> None:
    """Merchant settlement (清分) of a business date: per merchant and currency, gross,
    coupon funding, refunds, fees, net payable = gross - refunds - fees, and the
    payments held back by open suspense entries (payable = net - held).

    Only orders the channel confirmed count (S10). The figures are checked against the
    stream's confirmed merchant postings of the date; a difference is reported and
    makes the command fail."""
    from recon.settle import settle

    with _db() as db:
        s = settle(db, day, channel)
    if fmt == "json":
        import json

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
@click.option("--date", "day", required=True, callback=_check_date, help="business date")
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
def report_cmd(day: str, out: Path, as_of: str | None) -> None:
    """The morning report as one self-contained HTML file: results by class and
    channel, suspense aging, settlement totals, statement arrival, with charts."""
    import time

    from recon.report import build, render
    from tally.core.events import InvalidEvent, parse_timestamp

    try:
        now_ms = parse_timestamp(as_of, "--as-of") if as_of else int(time.time() * 1000)
    except InvalidEvent as exc:
        raise click.BadParameter(str(exc)) from None
    with _db() as db:
        data = build(db, date.fromisoformat(day), now_ms=now_ms)
    out.write_text(render(data), encoding="utf-8")
    click.echo(
        f"wrote {out} ({len(data.channels)} channels, {data.result_count:,} results, "
        f"{data.open_entries:,} open suspense entries)"
    )


@click.command("recon")
@click.option(
    "--rows",
    type=click.IntRange(min=100),
    default=1_000_000,
    show_default=True,
    help="ledger items, and as many statement lines",
)
@click.option(
    "--database",
    default="tally_bench_recon",
    show_default=True,
    help="ClickHouse database to build the data in (dropped and re-created)",
)
@click.option("--no-pandas", is_flag=True, help="time tally's SQL only")
@click.option("--keep", is_flag=True, help="keep the database afterwards (default: drop it)")
@click.option("--json", "as_json", is_flag=True)
def bench_recon_cmd(rows: int, database: str, no_pandas: bool, keep: bool, as_json: bool) -> None:
    """End-of-day reconciliation: N ledger items vs N statement lines generated in
    ClickHouse (chDB by default), tally's SQL next to a pandas merge of the same data."""
    import json

    from recon.bench import bench
    from sinks.backend import ClickHouseError, connect
    from tally.cli.main import _settings

    if not no_pandas:
        try:
            import pandas  # noqa: F401
        except ImportError:
            raise click.ClickException(
                "pandas is not installed: pip install -e '.[bench]' (or use --no-pandas)"
            ) from None
    s = _settings(clickhouse_database=database)
    db = connect(s)
    if db.database != database:
        raise click.ClickException(
            f"TALLY_CLICKHOUSE_URL names the database {db.database!r}; the benchmark drops "
            "its database, so give it a URL without one (it uses --database)"
        )
    if not as_json:
        click.echo(f"building {rows:,} + {rows:,} rows in {db.describe()} ...", err=True)
    try:
        r = bench(db, rows, s.policies()["bench"], pandas=not no_pandas)
        if not keep:
            db.execute("DROP DATABASE IF EXISTS {db}")
    except ClickHouseError as exc:
        raise click.ClickException(f"{db.describe()}: {exc}") from None
    finally:
        db.close()
    if as_json:
        click.echo(json.dumps(r.to_json(), indent=2))
    else:
        click.echo(
            f"built {rows:,} ledger items and {rows:,} statement lines in {r.build_seconds:.2f}s"
        )
        click.echo(
            f"with 1-cent amount and fee tolerances: {r.tolerance_seconds:.2f}s "
            f"({r.tolerance_seconds / r.sql_seconds:.2f}x exact-only), "
            f"matched {r.tolerance_counts.get('matched', 0):,}"
        )
        click.echo(f"tally recon run (ClickHouse SQL): {r.sql_seconds:.2f}s")
        if r.pandas_counts:
            click.echo(
                f"pandas: export {r.pandas_export_seconds:.2f}s + merge and classify "
                f"{r.pandas_merge_seconds:.2f}s = "
                f"{r.pandas_export_seconds + r.pandas_merge_seconds:.2f}s"
            )
        click.echo("classes: " + ", ".join(f"{k} {v:,}" for k, v in r.sql_counts.items()))
        click.echo("both agree with the generated mix" if r.agree else "DISAGREEMENT: see --json")
        click.echo(f"({r.machine})")
    if not r.agree:
        raise click.ClickException("the class counts differ from the generated mix")


def register(main: click.Group) -> None:
    main.add_command(settle_cmd)
    bench_group = main.commands.get("bench")
    if isinstance(bench_group, click.Group):
        bench_group.add_command(bench_recon_cmd)
    # attach to tally/cli/recon.py's group object itself, so that the order of the modules
    # in COMMAND_MODULES does not matter (registering it again adds the same object)
    group = main.commands.get("recon")
    if not isinstance(group, click.Group):
        try:
            from tally.cli.recon import recon_group as theirs
        except ImportError:  # pragma: no cover - tally/cli/recon.py is part of tally

            @click.group("recon")
            def theirs() -> None:
                """End-of-day reconciliation."""

        main.add_command(theirs)
        group = theirs
    group.add_command(report_cmd)
