"""`tally statements load | list`: channel statement files into ClickHouse.

tally statements load FILE --channel C [--format F] [--date D] [--by NAME] [--json]
tally statements list [--channel C] [--date D] [--format table|json]
"""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import click

from recon.statements import FORMATS
from recon.statements.model import StatementError
from tally.cli import funds
from tally.cli.common import CliState, check_date, db, emit, pass_state


@click.group("statements")
def statements_group() -> None:
    """Channel statement files (对账单): load them, list the loaded versions."""


@contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    """A progress bar per phase on stderr, only when stderr is a terminal."""
    if not enabled:
        yield None
        return
    bars: dict[str, Any] = {}
    shown: dict[str, int] = {}

    def update(phase: str, done: int, total: int) -> None:
        bar = bars.get(phase)
        if bar is None:
            for other in bars.values():
                other.render_finish()
            bar = click.progressbar(length=max(total, 1), label=f"{phase:<8}", file=sys.stderr)
            bar.__enter__()
            bars[phase] = bar
            shown[phase] = 0
        bar.update(done - shown[phase])
        shown[phase] = done

    try:
        yield update
    finally:
        for bar in bars.values():
            bar.__exit__(None, None, None)


@statements_group.command("load")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--channel", help="channel id, e.g. wechat (a channel statement)")
@click.option(
    "--kind",
    type=click.Choice(["channel", "bank", "payouts"]),
    default="channel",
    show_default=True,
    help="a channel's statement (one line per order), our own bank account's "
    "statement (MT940 or camt.053: one entry per credit or debit), or our payout batch "
    "file for the merchants of business date --date (CSV: docs/reconciliation.md)",
)
@click.option("--account", help="bank account number as the file names it (with --kind bank)")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="statement format (default: detected from the content)",
)
@click.option(
    "--date",
    "day",
    callback=check_date,
    help="business date (default: from the file); must agree with a date the file declares",
)
@click.option("--by", "loaded_by", default=None, help="who loads it (default: the OS user)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@pass_state
def load_cmd(
    state: CliState,
    file: Path,
    channel: str | None,
    kind: str,
    account: str | None,
    fmt: str | None,
    day: str | None,
    loaded_by: str | None,
    as_json: bool,
) -> None:
    """Validate a statement file whole and store it as a new version (a channel
    statement is read in chunks, its lines spooled to a temporary file on disk).

    The same file again changes nothing; a different file for the same channel (or
    bank account) and date is the next delivery and supersedes the earlier ones. A
    bad file is refused with the line and field at fault, and nothing is stored."""
    from recon.statements.load import load_path

    who = loaded_by or _user()
    if kind == "payouts":
        if not day or channel or account or fmt:
            raise click.UsageError("--kind payouts takes --date D (the business date it pays)")
        funds.load_payouts(state, file.name, file.read_bytes(), day, who, as_json)
        return
    if kind == "bank":
        if not account or channel:
            raise click.UsageError("--kind bank takes --account ACCOUNT (and no --channel)")
        funds.load_bank(state, file.name, file.read_bytes(), account, fmt, day, who, as_json)
        return
    if not channel or account:
        raise click.UsageError("a channel statement takes --channel C (and no --account)")
    settings = state.settings
    with (
        db(settings, migrate_first=True) as conn,
        _progress(sys.stderr.isatty() and not as_json) as bar,
    ):
        try:
            result = load_path(  # read in chunks: a channel statement is not held whole
                conn,
                settings,
                file,
                channel=channel,
                file_name=file.name,
                fmt=fmt,
                day=date.fromisoformat(day) if day else None,
                loaded_by=who,
                progress=bar,
            )
        except StatementError as exc:
            raise click.ClickException(f"rejected, nothing loaded: {exc}") from None
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    r = result
    if r.status == "already_loaded":
        note = (
            ""
            if r.current_delivery == r.delivery
            else f" (superseded by delivery {r.current_delivery})"
        )
        click.echo(
            f"{file.name}: already loaded as delivery {r.delivery} of {r.channel_id} "
            f"{r.business_date}{note}; nothing changed"
        )
        return
    click.echo(
        f"{file.name}: loaded {r.format} statement of {r.channel_id} for {r.business_date} "
        f"as delivery {r.delivery}"
        + (f", superseding {', '.join(map(str, r.superseded))}" if r.superseded else "")
    )
    click.echo(f"  lines   {r.line_count:,}")
    click.echo(f"  amount  {r.total_amount}")
    click.echo(f"  fees    {r.total_fee}")
    click.echo(f"  sha256  {r.checksum}")
    click.echo(f"  ({r.seconds:.2f} s)", err=True)


@statements_group.command("list")
@click.option("--channel", help="channel id")
@click.option("--date", "day", callback=check_date, help="business date")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@pass_state
def list_cmd(state: CliState, channel: str | None, day: str | None, fmt: str) -> None:
    """Loaded statement versions; `current` marks the delivery in force."""
    from recon.statements.load import list_versions

    with db(state.settings) as conn:
        rows = list_versions(conn, channel, day)
    for r in rows:
        r["current"] = "yes" if r["current"] else ""
        if fmt == "json":
            r["current"] = bool(r["current"])
    cols = [
        "channel_id",
        "business_date",
        "delivery",
        "current",
        "format",
        "line_count",
        "total_amount",
        "total_fee",
        "file_name",
        "loaded_at",
        "loaded_by",
    ]
    if fmt == "json":
        for r in rows:
            r.pop("loaded_at_ms", None)
    emit(rows, fmt, cols)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in a container
        return ""


def register(main: click.Group) -> None:
    """Add `tally statements` to the `tally` command group."""
    main.add_command(statements_group)
