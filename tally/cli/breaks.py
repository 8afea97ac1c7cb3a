"""`tally breaks`: real-time breaks in ClickHouse and the suspense entries they are
parked in (S9); `register(main)` adds the group.

tally breaks [--date D] [--kind K] [--channel C] [--merchant M] [--format F]
tally breaks suspense|open [--channel C] [--date D] [--all] [--format F]
tally breaks export [--open|--all] [--channel C] [--date D] [--format csv|json] [--out F]
tally breaks resolve ID --action A --reason TEXT --by NAME [--link OTHER]
tally breaks resolve --file resolutions.csv [--check]
tally breaks history ID
"""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

from tally.cli.common import FORMATS, CliState, cell, check_date, db, emit, pass_state


@click.group("breaks", invoke_without_command=True)
@click.option("--date", "day", callback=check_date, help="business date, e.g. 2026-11-24")
@click.option("--kind", help="break kind, e.g. amount_mismatch")
@click.option("--channel", help="channel id")
@click.option("--merchant", help="merchant id")
@click.option("--limit", type=int, default=None, help="at most this many (oldest first)")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.pass_context
def breaks_cmd(
    ctx: click.Context,
    day: str | None,
    kind: str | None,
    channel: str | None,
    merchant: str | None,
    limit: int | None,
    fmt: str,
) -> None:
    """Real-time breaks stored in ClickHouse, oldest first; `suspense`, `export`,
    `resolve` and `history` work through the suspense entries (S9)."""
    if ctx.invoked_subcommand is not None:
        return
    from sinks import queries

    with db(ctx.ensure_object(CliState).settings) as conn:
        rows = queries.breaks(
            conn, day=day, kind=kind, channel=channel, merchant=merchant, limit=limit
        )
    cols = [
        "business_date",
        "event_time",
        "kind",
        "txn_id",
        "merchant_id",
        "channel_id",
        "currency",
        "amount",
        "channel_amount",
        "detail",
    ]
    if fmt == "csv":
        cols = ["break_id", *cols]
    emit(rows, fmt, cols)
    if fmt == "table":
        click.echo(f"({len(rows):,} breaks)", err=True)


WRITE_OFF_ACTIONS = click.Choice(["refunded", "channel_confirmed", "loss_accepted", "linked"])


def _age(seconds: int) -> str:
    d, rest = divmod(int(seconds), 86400)
    h, rest = divmod(rest, 3600)
    return f"{d}d {h}h" if d else f"{h}h {rest // 60}m"


@breaks_cmd.command("suspense")
@click.option("--channel", help="channel id")
@click.option("--date", "day", callback=check_date, help="the business date entries are posted to")
@click.option("--all", "include_closed", is_flag=True, help="written-off and cleared entries too")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@pass_state
def breaks_suspense(
    state: CliState, channel: str | None, day: str | None, include_closed: bool, fmt: str
) -> None:
    """Suspense entries (open ones unless --all), oldest first, with amount and age;
    real-time breaks not yet parked are parked first."""
    from recon import suspense

    with db(state.settings) as conn:
        suspense.sync_breaks(conn)
        rows = suspense.listing(
            conn,
            channel=channel,
            day=date.fromisoformat(day) if day else None,
            include_closed=include_closed,
        )
    for r in rows:
        r["amount"] = queries_money(r["amount"], r["currency"])
        r["age"] = _age(r["age_seconds"])
        r.pop("actions", None)
    emit(
        rows,
        fmt,
        [
            "entry_id",
            "business_date",
            "channel_id",
            "merchant_id",
            "txn_id",
            "kinds",
            "currency",
            "amount",
            "age",
            "state",
        ],
    )
    if fmt == "table":
        total: dict[str, Any] = {}
        for r in rows:
            if r["state"] == "open":
                total[r["currency"]] = total.get(r["currency"], 0) + Decimal(r["amount"] or 0)
        sums = ", ".join(f"{queries_money(v, c)} {c}" for c, v in sorted(total.items()))
        click.echo(f"({len(rows):,} entries; open amount {sums or '0'})", err=True)


breaks_cmd.add_command(breaks_suspense, "open")


@breaks_cmd.command("export")
@click.option("--open/--all", "only_open", default=True, help="open entries only (default)")
@click.option("--channel", help="channel id")
@click.option("--date", "day", callback=check_date, help="the business date entries are posted to")
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="file (default: stdout)"
)
@pass_state
def breaks_export(
    state: CliState,
    only_open: bool,
    channel: str | None,
    day: str | None,
    fmt: str,
    out: Path | None,
) -> None:
    """The suspense entries (real-time and end-of-day breaks) with what a person
    needs to decide and empty action, reason, by, link columns: fill them in and
    apply the file with `tally breaks resolve --file` (docs/reconciliation.md)."""
    from recon import bulk

    with db(state.settings) as conn:
        rows = bulk.export_rows(
            conn,
            channel=channel,
            day=date.fromisoformat(day) if day else None,
            include_closed=not only_open,
        )
    if fmt == "json":
        text = json.dumps(rows, indent=2, ensure_ascii=False) + "\n"
    else:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(bulk.EXPORT_COLUMNS)
        for r in rows:
            w.writerow([r[c] or "" for c in bulk.EXPORT_COLUMNS])
        text = buf.getvalue()
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        click.echo(f"wrote {len(rows):,} entries to {out}", err=True)


@breaks_cmd.command("resolve")
@click.argument("entry", required=False)
@click.option("--action", type=WRITE_OFF_ACTIONS, help="the business action")
@click.option("--reason", help="why (kept for ever)")
@click.option("--by", "actor", help="who resolves it")
@click.option("--link", help="with --action linked: the entry this one is linked to")
@click.option(
    "--file",
    "path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="resolutions file (CSV or JSON: entry, action, reason, by[, link]), applied whole",
)
@click.option("--check", is_flag=True, help="with --file: validate only, write nothing")
@pass_state
def breaks_resolve(
    state: CliState,
    entry: str | None,
    action: str | None,
    reason: str | None,
    actor: str | None,
    link: str | None,
    path: Path | None,
    check: bool,
) -> None:
    """Write a suspense entry off (ENTRY: entry id, break id or txn_id), or every
    entry of a file (--file). Appends actions; nothing is deleted, and an entry is
    written off once. A file is validated whole first: one bad line and nothing is
    applied."""
    if path is not None:
        given = [
            n
            for n, v in (
                ("ENTRY", entry),
                ("--action", action),
                ("--reason", reason),
                ("--by", actor),
                ("--link", link),
            )
            if v
        ]
        if given:
            raise click.UsageError(
                f"--file takes every decision from the file: drop {', '.join(given)}"
            )
        _resolve_file(state, path, check)
        return
    if check:
        raise click.UsageError("--check goes with --file")
    missing = [
        n
        for n, v in (("ENTRY", entry), ("--action", action), ("--reason", reason), ("--by", actor))
        if v is None
    ]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (or give --file)")
    assert entry is not None and action is not None and reason is not None and actor is not None
    from recon import suspense

    with db(state.settings) as conn:
        try:
            e, a = suspense.resolve(conn, entry, action, reason, actor, link=link)
        except suspense.SuspenseError as exc:
            raise click.ClickException(str(exc)) from None
    amount = queries_money(e.amount, e.currency)
    what = e.txn_id or e.channel_txn_id
    linked = f" to {a.linked_to}" if a.linked_to else ""
    click.echo(
        f"suspense entry {e.entry_id} ({what}, {', '.join(e.kinds)}, {amount} {e.currency}) "
        f"written off: {a.action}{linked} by {a.actor}: {a.reason}"
    )


def _resolve_file(state: CliState, path: Path, check: bool) -> None:
    from recon import bulk

    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"{path}: not UTF-8 ({exc})") from None
    except OSError as exc:
        raise click.ClickException(f"{path}: {exc.strerror or exc}") from None
    t0 = time.monotonic()
    with db(state.settings) as conn:
        try:
            plan = bulk.apply(conn, text, check=check)
        except bulk.BulkError as exc:
            shown = exc.problems[:50]
            more = len(exc.problems) - len(shown)
            raise click.ClickException(
                f"{path}: {len(exc.problems):,} problems, nothing was applied:\n"
                + "\n".join(f"  {p}" for p in shown)
                + (f"\n  ... and {more:,} more" if more > 0 else "")
            ) from None
    seconds = time.monotonic() - t0
    done = "would write off" if check else "wrote off"
    click.echo(
        f"{path}: {done} {len(plan.actions):,} entries"
        + ("" if check else " in one insert")
        + f" ({len(plan.already):,} already applied, {plan.undecided:,} undecided lines "
        f"left open; {seconds:.2f}s)"
    )


@breaks_cmd.command("history")
@click.argument("entry")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@pass_state
def breaks_history(state: CliState, entry: str, fmt: str) -> None:
    """A suspense entry and every action on it, oldest first."""
    from recon import suspense
    from tally.core.events import iso_ms

    with db(state.settings) as conn:
        try:
            e, actions = suspense.history(conn, entry)
        except suspense.SuspenseError as exc:
            raise click.ClickException(str(exc)) from None
    acts = [
        {
            "at": iso_ms(a.at_ms),
            "action": a.action,
            "actor": a.actor,
            "reason": a.reason,
            "linked_to": a.linked_to,
            "action_id": a.action_id,
        }
        for a in actions
    ]
    st = suspense.state(actions)
    doc = {
        "entry_id": e.entry_id,
        "state": "open" if st.open else (st.closed_by.action if st.closed_by else ""),
        "channel_id": e.channel_id,
        "merchant_id": e.merchant_id,
        "txn_id": e.txn_id,
        "channel_txn_id": e.channel_txn_id,
        "business_date": e.business_date.isoformat(),
        "kinds": list(e.kinds),
        "break_ids": list(e.break_ids),
        "currency": e.currency,
        "amount": queries_money(e.amount, e.currency),
        "opened_at": iso_ms(e.opened_at_ms),
        "actions": acts,
    }
    if fmt == "json":
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
        return
    for k, v in doc.items():
        if k != "actions":
            click.echo(f"{k:<16}{cell(v)}")
    click.echo("\nactions:")
    if acts:
        emit(acts, "table", ["at", "action", "actor", "reason", "linked_to"])
    else:
        click.echo("(none)")


def queries_money(amount: Any, currency: str | None) -> str | None:
    from sinks.queries import money

    return money(None if amount is None else Decimal(amount), currency)


def register(main: click.Group) -> None:
    """Add `tally breaks` to `tally`."""
    main.add_command(breaks_cmd)
