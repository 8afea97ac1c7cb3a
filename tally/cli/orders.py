"""`tally balances` and `tally orders show`: the ledger's balances and an order's
evidence trail as ClickHouse holds them; `register(main)` adds them.

tally balances [--merchant M | --channel C] [--format F]
tally orders show TXN_ID [--format table|json]
"""

from __future__ import annotations

import json

import click

from tally.cli.common import FORMATS, CliState, db, emit, pass_state


@click.command("balances")
@click.option("--merchant", help="one merchant's account")
@click.option("--channel", help="a channel's accounts (channel, coupon funding, fees)")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@pass_state
def balances_cmd(state: CliState, merchant: str | None, channel: str | None, fmt: str) -> None:
    """Account balances: the sum of each account's shards' latest versions; a
    merchant's net is what we owe it, a channel's what it collected for us."""
    from sinks import queries

    if merchant and channel:
        raise click.UsageError("--merchant and --channel exclude each other")
    with db(state.settings) as conn:
        rows = queries.balances(conn, merchant=merchant, channel=channel)
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
@pass_state
def orders_show(state: CliState, txn_id: str, fmt: str) -> None:
    """An order's state and its full evidence trail, breaks, postings and queries."""
    from sinks import queries

    with db(state.settings) as conn:
        o = queries.order(conn, txn_id)
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


def register(main: click.Group) -> None:
    """Add `tally balances` and `tally orders` to `tally`."""
    main.add_command(balances_cmd)
    main.add_command(orders_group)
