"""Commands that read and manage ClickHouse; `register(main)` adds them to `tally`.

tally breaks [--date D] [--kind K] [--channel C] [--merchant M] [--format F]
tally breaks suspense|open [--channel C] [--date D] [--all] [--format F]
tally breaks export [--open|--all] [--channel C] [--date D] [--format csv|json] [--out F]
tally breaks resolve ID --action A --reason TEXT --by NAME [--link OTHER]
tally breaks resolve --file resolutions.csv [--check]
tally breaks history ID
tally balances [--merchant M | --channel C] [--format F]
tally orders show TXN_ID [--format table|json]
tally db migrate | tally db status
tally sink [--until-caught-up]
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import sys
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from sinks.backend import Backend, ClickHouseError, connect
from tally.config import Settings

FORMATS = click.Choice(["table", "json", "csv"])


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = [
            f"  TALLY_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        ]
        raise click.ClickException("invalid settings:\n" + "\n".join(lines)) from None


def _demo_hint(s: Settings) -> str:
    """Where `tally demo` left its data, when it did, as the command to read it."""
    try:
        doc = json.loads((Path(s.data_dir) / "demo" / "demo.json").read_text(encoding="utf-8"))
        db = str(doc["database"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    if db == s.clickhouse_database:
        return ""
    return f"; the demo's results are in database {db}: `tally --database {db} {_command()}`"


def _command() -> str:
    """The running subcommand's path below `tally`, e.g. "breaks suspense"."""
    names = []
    ctx = click.get_current_context(silent=True)
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(names)) or "breaks"


@contextlib.contextmanager
def _db(migrate_first: bool = False) -> Iterator[Backend]:
    s = _settings()
    try:
        db = connect(s)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        if migrate_first:
            from sinks.schema import migrate

            migrate(db)
        else:
            from sinks.schema import schema_version

            if schema_version(db) == 0:
                raise click.ClickException(
                    f"no tally schema in {db.describe()}: run `tally db migrate` (or `tally run`)"
                    + _demo_hint(s)
                )
        yield db
    except ClickHouseError as exc:
        raise click.ClickException(f"{db.describe()}: {exc}") from None
    finally:
        db.close()


# ---------------------------------------------------------------------- output


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    return str(v)


def emit(rows: list[dict[str, Any]], fmt: str, columns: list[str]) -> None:
    """Print rows as an aligned table, JSON (all fields) or CSV (the columns)."""
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False, default=str))
        return
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([_cell(r.get(c)) for c in columns])
        click.echo(buf.getvalue(), nl=False)
        return
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    right = {i for i, c in enumerate(columns) if rows and _numeric(rows, c)}

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if i in right else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    click.echo(line(columns))
    click.echo(line(["-" * w for w in widths]))
    for row in cells:
        click.echo(line(row))


def _numeric(rows: list[dict[str, Any]], col: str) -> bool:
    for r in rows:
        v = r.get(col)
        if v is None:
            continue
        if isinstance(v, int):
            continue
        if isinstance(v, str) and v.lstrip("-").replace(".", "", 1).isdigit():
            continue
        return False
    return True


def _check_date(_ctx: Any, _param: Any, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date like 2026-11-24") from None
    return value


# -------------------------------------------------------------------- commands


@click.group("breaks", invoke_without_command=True)
@click.option("--date", "day", callback=_check_date, help="business date, e.g. 2026-11-24")
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

    with _db() as db:
        rows = queries.breaks(
            db, day=day, kind=kind, channel=channel, merchant=merchant, limit=limit
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
@click.option("--date", "day", callback=_check_date, help="the business date entries are posted to")
@click.option("--all", "include_closed", is_flag=True, help="written-off and cleared entries too")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def breaks_suspense(channel: str | None, day: str | None, include_closed: bool, fmt: str) -> None:
    """Suspense entries (open ones unless --all), oldest first, with amount and age;
    real-time breaks not yet parked are parked first."""
    from recon import suspense

    with _db() as db:
        suspense.sync_breaks(db)
        rows = suspense.listing(
            db,
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
@click.option("--date", "day", callback=_check_date, help="the business date entries are posted to")
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="file (default: stdout)"
)
def breaks_export(
    only_open: bool, channel: str | None, day: str | None, fmt: str, out: Path | None
) -> None:
    """The suspense entries (real-time and end-of-day breaks) with what a person
    needs to decide and empty action, reason, by, link columns: fill them in and
    apply the file with `tally breaks resolve --file` (docs/reconciliation.md)."""
    from recon import bulk

    with _db() as db:
        rows = bulk.export_rows(
            db,
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
def breaks_resolve(
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
        _resolve_file(path, check)
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

    with _db() as db:
        try:
            e, a = suspense.resolve(db, entry, action, reason, actor, link=link)
        except suspense.SuspenseError as exc:
            raise click.ClickException(str(exc)) from None
    amount = queries_money(e.amount, e.currency)
    what = e.txn_id or e.channel_txn_id
    linked = f" to {a.linked_to}" if a.linked_to else ""
    click.echo(
        f"suspense entry {e.entry_id} ({what}, {', '.join(e.kinds)}, {amount} {e.currency}) "
        f"written off: {a.action}{linked} by {a.actor}: {a.reason}"
    )


def _resolve_file(path: Path, check: bool) -> None:
    import time

    from recon import bulk

    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"{path}: not UTF-8 ({exc})") from None
    except OSError as exc:
        raise click.ClickException(f"{path}: {exc.strerror or exc}") from None
    t0 = time.monotonic()
    with _db() as db:
        try:
            plan = bulk.apply(db, text, check=check)
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
def breaks_history(entry: str, fmt: str) -> None:
    """A suspense entry and every action on it, oldest first."""
    from recon import suspense
    from tally.core.events import iso_ms

    with _db() as db:
        try:
            e, actions = suspense.history(db, entry)
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
            click.echo(f"{k:<16}{_cell(v)}")
    click.echo("\nactions:")
    if acts:
        emit(acts, "table", ["at", "action", "actor", "reason", "linked_to"])
    else:
        click.echo("(none)")


def queries_money(amount: Any, currency: str | None) -> str | None:
    from sinks.queries import money

    return money(None if amount is None else Decimal(amount), currency)


@click.command("balances")
@click.option("--merchant", help="one merchant's account")
@click.option("--channel", help="a channel's accounts (channel, coupon funding, fees)")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def balances_cmd(merchant: str | None, channel: str | None, fmt: str) -> None:
    """Account balances: the sum of each account's shards' latest versions; a
    merchant's net is what we owe it, a channel's what it collected for us."""
    from sinks import queries

    if merchant and channel:
        raise click.UsageError("--merchant and --channel exclude each other")
    with _db() as db:
        rows = queries.balances(db, merchant=merchant, channel=channel)
    emit(
        rows,
        fmt,
        [
            "account",
            "currency",
            "confirmed",
            "provisional",
            "gross",
            "refunds",
            "fees",
            "coupon_funding",
            "net",
            "postings",
        ],
    )


@click.group("orders")
def orders_group() -> None:
    """Orders as ClickHouse holds them."""


@orders_group.command("show")
@click.argument("txn_id")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def orders_show(txn_id: str, fmt: str) -> None:
    """An order's state and its full evidence trail, breaks, postings and queries."""
    from sinks import queries

    with _db() as db:
        o = queries.order(db, txn_id)
    if o is None:
        raise click.ClickException(f"no order {txn_id!r} in ClickHouse")
    if fmt == "json":
        click.echo(json.dumps(o, indent=2, ensure_ascii=False))
        return
    head = [
        ("order", o["txn_id"]),
        ("type", o["type"] or "(our record not seen)"),
        ("merchant", o["merchant_id"]),
        ("channel", o["channel_id"]),
        ("amount", f"{o['amount'] or ''} {o['currency'] or ''}".strip()),
        ("coupon", o["coupon_amount"]),
        ("fee", o["fee"]),
        ("original", o["original_txn_id"]),
        ("terminal", o["terminal_id"]),
        ("our status", o["our_status"]),
        ("channel status", o["channel_status"]),
        ("channel txn", o["channel_txn_id"]),
        ("standing", o["standing"]),
        ("resolved", "yes" if o["resolved"] else "no"),
        ("reversed", "yes" if o["reversed"] else "no"),
        ("business date", o["business_date"]),
        ("created", o["created_at"]),
        ("updated", o["updated_at"]),
        ("events applied", o["events_applied"]),
        ("status queries", o["queries_sent"]),
    ]
    for k, v in head:
        if v not in (None, ""):
            click.echo(f"{k:<16}{v}")
    click.echo("\nevidence:")
    emit(
        o["evidence"],
        "table",
        ["at", "source", "status", "amount", "fee", "currency", "channel_txn_id", "event_id"],
    )
    click.echo("\nbreaks:")
    if o["breaks"]:
        emit(o["breaks"], "table", ["event_time", "kind", "detail", "break_id"])
    else:
        click.echo("(none)")
    click.echo("\npostings:")
    legs = [
        {"posting_id": p["posting_id"], "reason": p["reason"], "event_time": p["event_time"], **leg}
        for p in o["postings"]
        for leg in p["legs"]
    ]
    if legs:
        emit(
            legs,
            "table",
            ["posting_id", "event_time", "reason", "account", "bucket", "component", "amount"],
        )
    else:
        click.echo("(none)")
    if o["status_queries"]:
        click.echo("\nstatus queries:")
        emit(o["status_queries"], "table", ["attempt", "requested_at", "reason", "query_id"])


@click.group("db")
def db_group() -> None:
    """The ClickHouse schema."""


@db_group.command("migrate")
def db_migrate() -> None:
    """Apply the pending schema migrations (idempotent)."""
    from sinks.schema import LATEST, migrate

    s = _settings()
    db = connect(s)
    try:
        before, after = migrate(db)
    except ClickHouseError as exc:
        raise click.ClickException(f"{db.describe()}: {exc}") from None
    finally:
        db.close()
    if before == after:
        click.echo(f"{db.describe()}: schema is at version {after} (latest {LATEST})")
    else:
        click.echo(f"{db.describe()}: schema migrated from version {before} to {after}")


@db_group.command("status")
@click.option("--json", "as_json", is_flag=True)
def db_status(as_json: bool) -> None:
    """Schema version and rows per table (stored, and distinct as queries see them)."""
    from sinks.queries import counts
    from sinks.schema import LATEST, schema_version

    with _db() as db:
        version = schema_version(db)
        c = counts(db)
        where = db.describe()
    if as_json:
        click.echo(json.dumps({"target": where, "schema_version": version, "tables": c}, indent=2))
        return
    click.echo(f"{where}: schema version {version} (latest {LATEST})")
    emit([{"table": t, **v} for t, v in c.items()], "table", ["table", "rows", "distinct"])


@click.command("sink")
@click.option(
    "--until-caught-up",
    is_flag=True,
    help="exit once everything on the output topics at start is stored",
)
@click.option("--group", default=None, help="consumer group (default: <TALLY_APP_ID>-sink)")
def sink_cmd(until_caught_up: bool, group: str | None) -> None:
    """Run only the ClickHouse sink (the stream workers run elsewhere)."""
    from sinks.runner import SinkRunner

    s = _settings()
    logging.basicConfig(
        level=s.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if s.embedded:
        from streams.broker import port_open

        if not port_open(s.embedded_broker_host, s.embedded_broker_port):
            raise click.ClickException(
                f"no broker at {s.broker_url()}: the sink reads the topics of a running "
                "`tally run`, or set TALLY_BROKER"
            )

    async def main() -> dict[str, Any]:
        runner = SinkRunner(s, group_id=group)
        await runner.start()
        click.echo(f"sink running ({runner.group_id}): {runner.db.describe()}", err=True)
        try:
            if until_caught_up:
                await runner.wait_caught_up()
            else:
                while True:
                    await asyncio.sleep(3600)
        finally:
            await runner.stop()
        return runner.stats.to_json()

    try:
        stats = asyncio.run(main())
    except KeyboardInterrupt:
        return
    click.echo(json.dumps(stats))


def register(main: click.Group) -> None:
    """Add the ClickHouse commands to the `tally` command group."""
    for cmd in (breaks_cmd, balances_cmd, orders_group, db_group, sink_cmd):
        main.add_command(cmd)
